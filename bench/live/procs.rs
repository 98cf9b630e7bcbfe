//! The processes a scenario runs (the GStreamer RTSP test server, the server under test, ffmpeg)
//! and what the harness reads about them from `/proc` and `/metrics`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// CPU time, resident memory and open descriptors of one process at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime of every thread, live and exited, in clock ticks (coarse: 10 ms).
    pub cpu_ticks: u64,
    /// On-CPU time of the threads alive now (`/proc/<pid>/task/*/schedstat`), in ns (precise,
    /// but a thread that exits takes its time with it).
    pub cpu_ns: u64,
    pub rss_kib: u64,
    /// The anonymous part of `rss_kib` (the rest is file pages: memory maps, the binary).
    pub rss_anon_kib: u64,
    pub fds: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Reads `/proc/<pid>/{stat,status,fd}`; `None` once the process is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces, hence the last ')'): state is
    // field 3 of stat(5), utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (rss_kib, rss_anon_kib) = (field("VmRSS:"), field("RssAnon:"));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let cpu_ns = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Some(ProcSample {
        cpu_ticks: utime + stime,
        cpu_ns,
        rss_kib,
        rss_anon_kib,
        fds,
    })
}

/// The sum of [`sample`] over several processes (ffmpeg runs one per camera).
pub fn sample_all(pids: &[u32]) -> ProcSample {
    pids.iter()
        .filter_map(|p| sample(*p))
        .fold(ProcSample::default(), |a, s| ProcSample {
            cpu_ticks: a.cpu_ticks + s.cpu_ticks,
            cpu_ns: a.cpu_ns + s.cpu_ns,
            rss_kib: a.rss_kib + s.rss_kib,
            rss_anon_kib: a.rss_anon_kib + s.rss_anon_kib,
            fds: a.fds + s.fds,
        })
}

/// Percent of one core used between two samples `elapsed` apart: from the threads' precise
/// `schedstat` times, unless the coarse tick count (which keeps exited threads' time) says clearly
/// more was used (threads exited during the window).
pub fn cpu_percent(before: ProcSample, after: ProcSample, elapsed: Duration, tck: f64) -> f64 {
    let precise_s = after.cpu_ns.saturating_sub(before.cpu_ns) as f64 / 1e9;
    let ticks_s = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / tck;
    let used_s = if ticks_s > precise_s * 1.1 + 2.0 / tck {
        ticks_s
    } else {
        precise_s
    };
    used_s / elapsed.as_secs_f64() * 100.0
}

/// `/proc/loadavg`'s first three numbers.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn stop_child(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SIGTERM first (a graceful stop, as an operator would), SIGKILL after 10 s.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Lines of a child's output, kept for error messages (the last few hundred).
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<VecDeque<String>>>);

impl Lines {
    fn follow(&self, out: impl std::io::Read + Send + 'static) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut l = lines.lock().unwrap_or_else(|p| p.into_inner());
                if l.len() >= 400 {
                    l.pop_front();
                }
                l.push_back(line);
            }
        });
    }

    fn find(&self, f: impl Fn(&str) -> Option<String>) -> Option<String> {
        let l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().find_map(|s| f(s))
    }

    fn dump(&self) -> String {
        let l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// `tests/support/gst_rtsp_server.py`: shared live mounts, one encoder per mount whatever the
/// number of clients, so the load generator's cost does not grow with the cameras.
pub struct RtspServer {
    child: Child,
    _stdin: ChildStdin,
    pub base: String,
}

impl RtspServer {
    pub fn start(root: &Path) -> RtspServer {
        let mut child = Command::new("/usr/bin/python3")
            .arg(root.join("tests/support/gst_rtsp_server.py"))
            .args(["--port", "0", "--host", "127.0.0.1", "--exit-on-stdin-eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "start tests/support/gst_rtsp_server.py (python3-gi, gir1.2-gst-rtsp-server-1.0)",
            );
        let stdin = child.stdin.take().expect("stdin piped");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // Read to the end (CLIENTS lines follow READY), so the server never blocks on stdout.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(base) = line.strip_prefix("READY ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(base.to_owned());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the RTSP test server printed no READY line within 30 s");
        RtspServer {
            child,
            _stdin: stdin,
            base,
        }
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// The `video-server` binary of this build, run in its own temporary directory on ephemeral
/// ports.
pub struct Server {
    child: Child,
    logs: Lines,
    pub api: String,
    pub video: String,
}

/// The binary under test: this build's, or `BENCH_SERVER_BIN` (to measure a saved copy of an
/// earlier build against this one with the same harness).
pub fn server_binary() -> PathBuf {
    std::env::var_os("BENCH_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_video-server")))
}

impl Server {
    /// Writes `conf` to `dir/conf.toml`, starts the server there and waits for both listeners.
    pub fn start(dir: &Path, conf: &str) -> Server {
        std::fs::create_dir_all(dir).expect("server directory");
        std::fs::write(dir.join("conf.toml"), conf).expect("write conf.toml");
        let mut child = Command::new(server_binary())
            .current_dir(dir)
            .args(["--conf", "conf.toml", "--log-format", "json"])
            .env("RUST_LOG", "info")
            .env_remove("VIDEO_SERVER_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn video-server");
        let logs = Lines::default();
        logs.follow(child.stderr.take().expect("stderr piped"));
        let deadline = Instant::now() + Duration::from_secs(120);
        let listener = |name: &'static str| {
            move |line: &str| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["message"].as_str() == Some(name))
                    .then(|| v["addr"].as_str().map(str::to_owned))
                    .flatten()
            }
        };
        loop {
            let api = logs.find(listener("api listener ready"));
            let video = logs.find(listener("video listener ready"));
            if let (Some(api), Some(video)) = (api, video) {
                return Server {
                    child,
                    logs,
                    api,
                    video,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("video-server exited with {status}:\n{}", logs.dump());
            }
            assert!(
                Instant::now() < deadline,
                "video-server not ready in 120 s:\n{}",
                logs.dump()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sample(&self) -> ProcSample {
        sample(self.pid()).unwrap_or_default()
    }

    pub async fn metrics(&self, http: &reqwest::Client) -> Metrics {
        let text = http
            .get(format!("http://{}/metrics", self.api))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("/metrics body");
        Metrics(text)
    }

    /// Waits until `n` streams have received frames (a deadline, not a sleep).
    pub async fn wait_receiving(&self, http: &reqwest::Client, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = self
                .metrics(http)
                .await
                .per_stream("video_server_stream_frames_total")
                .into_iter()
                .filter(|v| *v > 0.0)
                .count();
            if got >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {got} of {n} streams receive after {within:?}:\n{}",
                self.logs.dump()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn stop(mut self) {
        stop_child(&mut self.child);
    }

    /// The first of the kept log lines (the last few hundred) that `f` picks a value from.
    pub fn find_log(&self, f: impl Fn(&str) -> Option<String>) -> Option<String> {
        self.logs.find(f)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// A `/metrics` answer (Prometheus text).
pub struct Metrics(String);

impl Metrics {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = f64> + 'a {
        self.0.lines().filter_map(move |l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
    }

    /// The sum of a family over its label sets.
    pub fn sum(&self, name: &str) -> f64 {
        self.values(name).sum()
    }

    /// One value per label set (per stream for the stream families).
    pub fn per_stream(&self, name: &str) -> Vec<f64> {
        self.values(name).collect()
    }
}

/// `ffmpeg -rtsp_transport tcp -i URL -c copy -f mp4 OUT`: the reference ingest + record, one
/// process per camera. Its mp4 muxer keeps the media in memory until the end (the `moov` goes
/// last), so progress is read from `-progress FILE` (video frames muxed), not from the file size.
pub struct Ffmpeg {
    children: Vec<Child>,
    progress: Vec<PathBuf>,
}

impl Ffmpeg {
    pub fn start(url: &str, n: usize, dir: &Path) -> Ffmpeg {
        std::fs::create_dir_all(dir).expect("ffmpeg output directory");
        let mut children = Vec::new();
        let mut progress = Vec::new();
        for i in 0..n {
            let p = dir.join(format!("cam{i}.progress"));
            let child = Command::new("ffmpeg")
                .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
                .arg("-progress")
                .arg(&p)
                .args([
                    "-rtsp_transport",
                    "tcp",
                    "-i",
                    url,
                    "-c",
                    "copy",
                    "-f",
                    "mp4",
                ])
                .arg(dir.join(format!("cam{i}.mp4")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn ffmpeg");
            children.push(child);
            progress.push(p);
        }
        Ffmpeg { children, progress }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Video frames each process has muxed so far (its last `frame=` progress line).
    fn frames_each(&self) -> Vec<u64> {
        self.progress
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .rev()
                            .find_map(|l| l.strip_prefix("frame="))
                            .and_then(|v| v.trim().parse().ok())
                    })
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Video frames muxed by all processes.
    pub fn frames(&self) -> u64 {
        self.frames_each().iter().sum()
    }

    /// Waits until every process muxes frames.
    pub fn wait_receiving(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let receiving = self.frames_each().iter().filter(|f| **f > 0).count();
            if receiving == self.children.len() {
                return;
            }
            for c in &mut self.children {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("ffmpeg exited early with {status}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "only {receiving} of {} ffmpeg processes receive after {within:?}",
                self.children.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Ffmpeg {
    fn drop(&mut self) {
        // SIGTERM: ffmpeg tears its RTSP session down (the GStreamer server copes badly with
        // many clients vanishing at once); SIGKILL for any still there after 10 s.
        for c in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.children {
            stop_child(c);
        }
    }
}

/// Appends `text` to `path` (the report file).
pub fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the report file");
    f.write_all(text.as_bytes()).expect("append to the report");
}
