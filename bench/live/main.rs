//! Live benchmarks of the real `video-server` binary (issue 13): ingest against ffmpeg, MSE fan-out,
//! time to first fragment, concurrent archive sessions and a bounded soak. Everything runs on
//! 127.0.0.1: the GStreamer RTSP test server (shared mounts: one encoder whatever the number of
//! cameras), the server under test in a temporary directory, ffmpeg, and the load client in this
//! process. CPU and memory are read from `/proc/<pid>` of the measured processes only.
//!
//! Run through `scripts/bench [scenario] [options]` (which appends the report to
//! docs/benchmarks.md); `cargo bench --bench live -- --help` lists the options.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

mod client;
mod procs;
mod startup;
mod webrtc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use client::Totals;
use procs::{RtspServer, Server, cpu_percent, load_average, sample};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "\
usage: cargo bench --bench live -- SCENARIO [options]

scenarios:
  smoke     ingest N=5 (with ffmpeg), fanout M=50 and webrtc M=5, short windows; fails only if the
            harness breaks
  ingest    N cameras: ffmpeg -c copy -f mp4 vs the server (recording only; mse+hls+recording+1 viewer)
  fanout    one camera to M MSE viewers
  webrtc    the demo clip to M WebRTC (WHEP) viewers, next to M MSE viewers in the same run
  ttff      time to first fragment, live (GOP cache) and archive, sequential sessions
  archive   S concurrent archive playback sessions: time to first fragment, memory per session
  soak      N cameras recorded and viewed; RSS, descriptors and CPU sampled over time
  startup   a server started twice on a large archive: listeners, reconciliation, RSS
  all       ingest, fanout, ttff, archive, soak, startup with their defaults

options:
  --cameras LIST      cameras per step (ingest: 1,10,50,100,200; soak: 20; archive: 1)
  --viewers LIST      viewers per step (fanout: 1,10,100,500,1000; webrtc: 10,50,100,200)
  --seconds S         measuring window per step (default 20; soak: total length, default 120)
  --sessions S        archive sessions (default 100) / ttff samples (default 100)
  --segment-ms MS     archive segment length for ttff/archive (default 10000)
  --ffmpeg-max N      ingest: run the ffmpeg reference only up to N cameras (default 50); above it the
                      ratio uses the per-camera ffmpeg CPU of the largest N measured in the same run
  --rows N            startup: segment rows in the index (default 10000000)
  --files N           startup: of which local files (default 1000000; smoke size: --rows 100000
                      --files 10000)
  --report FILE       append the markdown report to FILE
  --command TEXT      the command line to quote in the report
";

struct Opts {
    scenario: String,
    cameras: Option<Vec<usize>>,
    viewers: Option<Vec<usize>>,
    seconds: Option<u64>,
    sessions: usize,
    segment_ms: u64,
    ffmpeg_max: usize,
    rows: i64,
    files: i64,
    report: Option<PathBuf>,
    command: Option<String>,
}

fn list(v: &str) -> Vec<usize> {
    v.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {x}\n{USAGE}"))
        })
        .collect()
}

fn parse_args() -> Opts {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut o = Opts {
        scenario: String::new(),
        cameras: None,
        viewers: None,
        seconds: None,
        sessions: 100,
        segment_ms: 10_000,
        ffmpeg_max: 50,
        rows: 10_000_000,
        files: 1_000_000,
        report: None,
        command: None,
    };
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--cameras" => o.cameras = Some(list(&value())),
            "--viewers" => o.viewers = Some(list(&value())),
            "--seconds" => o.seconds = Some(value().parse().expect("--seconds")),
            "--sessions" => o.sessions = value().parse().expect("--sessions"),
            "--segment-ms" => o.segment_ms = value().parse().expect("--segment-ms"),
            "--ffmpeg-max" => o.ffmpeg_max = value().parse().expect("--ffmpeg-max"),
            "--rows" => o.rows = value().parse().expect("--rows"),
            "--files" => o.files = value().parse().expect("--files"),
            "--report" => o.report = Some(PathBuf::from(value())),
            "--command" => o.command = Some(value()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if !s.starts_with('-') && o.scenario.is_empty() => o.scenario = s.to_owned(),
            s => panic!("unknown argument {s}\n{USAGE}"),
        }
    }
    if o.scenario.is_empty() {
        o.scenario = "smoke".into();
    }
    o
}

/// Cameras served by one GStreamer RTSP server process (the load generator, one shared encoder per
/// mount). Above this, the cameras are spread over several source processes (each with its own
/// encoder; none of them is measured). One process serves 200 cameras connecting at once since
/// it listens with a deep backlog (tests/support/gst_rtsp_server.py); with GStreamer's default of
/// 5, connections beyond the backlog waited seconds for their first answer and the harness gave
/// up (docs/benchmarks.md, "Where we stand").
const CAMERAS_PER_SOURCE: usize = 200;

/// Everything a scenario needs: the RTSP source, a scratch directory, an HTTP client, the clock
/// tick rate.
struct Bench {
    root: PathBuf,
    rtsp: RtspServer,
    /// More sources for scenarios with more than `CAMERAS_PER_SOURCE` cameras.
    more_rtsp: Vec<RtspServer>,
    tmp: tempfile::TempDir,
    http: reqwest::Client,
    tck: f64,
    runs: usize,
}

/// The measured processes' use over one window.
struct Use {
    cpu_percent: f64,
    rss_kib: u64,
    fds: u64,
    /// The load client's (this process's) own CPU over the same window.
    client_cpu_percent: f64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

impl Bench {
    fn new() -> Bench {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let rtsp = RtspServer::start(&root);
        Bench {
            root,
            rtsp,
            more_rtsp: Vec::new(),
            tmp: tempfile::tempdir().expect("temp dir"),
            http: reqwest::Client::new(),
            tck: procs::clock_ticks_per_second(),
            runs: 0,
        }
    }

    fn url(&self, mount: &str) -> String {
        format!("{}{mount}", self.rtsp.base)
    }

    /// The source URL of camera `i` of `n`: the first source up to `CAMERAS_PER_SOURCE` cameras,
    /// else spread round-robin over `n / CAMERAS_PER_SOURCE` (rounded up) sources.
    fn camera_url(&mut self, i: usize, n: usize, mount: &str) -> String {
        let sources = n.div_ceil(CAMERAS_PER_SOURCE).max(1);
        while self.more_rtsp.len() + 1 < sources {
            self.more_rtsp.push(RtspServer::start(&self.root));
        }
        match i % sources {
            0 => self.url(mount),
            k => format!("{}{mount}", self.more_rtsp[k - 1].base),
        }
    }

    /// A new phase, with a fresh RTSP source process: once, after a phase's clients had left,
    /// the GStreamer server's shared `/av` media served none of the next phase's 50 ffmpeg
    /// clients arriving together (0 of 50 received within 110 s), while a new process serves
    /// them at once. The old source stops here (its clients are gone: the phase ended).
    fn scratch(&mut self, name: &str) -> PathBuf {
        self.more_rtsp.clear();
        self.rtsp = RtspServer::start(&self.root);
        self.runs += 1;
        self.tmp.path().join(format!("{}-{name}", self.runs))
    }

    /// Measures `pids` (and this process) over `window`.
    async fn measure(&self, pids: &[u32], window: Duration) -> Use {
        let me = std::process::id();
        let (b, cb) = (procs::sample_all(pids), sample(me).unwrap_or_default());
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let elapsed = t0.elapsed();
        let (a, ca) = (procs::sample_all(pids), sample(me).unwrap_or_default());
        Use {
            cpu_percent: cpu_percent(b, a, elapsed, self.tck),
            rss_kib: a.rss_kib,
            fds: a.fds,
            client_cpu_percent: cpu_percent(cb, ca, elapsed, self.tck),
        }
    }

    /// The server's use with its one stream received and no viewer: the baseline of a fan-out.
    async fn idle(&self, server: &Server, window: Duration) -> Use {
        server
            .wait_receiving(&self.http, 1, Duration::from_secs(30))
            .await;
        tokio::time::sleep(WARM_UP).await;
        self.measure(&[server.pid()], window).await
    }

    /// The server under test in a new scratch directory, with `n` cameras on `/av`; the server,
    /// the cameras' ids and the directory (its index is `index.db` there).
    fn server(
        &mut self,
        name: &str,
        n: usize,
        outputs: &str,
        recording: bool,
        extra: &str,
    ) -> (Server, Vec<uuid::Uuid>, PathBuf) {
        let dir = self.scratch(name);
        let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::new_v4()).collect();
        let mut conf = format!(
            "[api]\nhost = \"127.0.0.1\"\nport = 0\n[video]\nhost = \"127.0.0.1\"\nport = 0\n\
             [hls]\nms_per_segment = 2000\ndirectory = \"./hls\"\n\
             [archive]\nrecording = true\nserving = true\ndirectory = \"./mp4\"\n{extra}\n\
             [database]\nurl = \"sqlite://index.db\"\n\
             [limits]\nviewers_per_stream = 5000\nviewers_total = 20000\n\
             archive_sessions_per_client = 2000\narchive_sessions_total = 2000\n"
        );
        for (i, id) in ids.iter().enumerate() {
            let url = self.camera_url(i, n, "/av");
            conf.push_str(&format!(
                "\n[[rtsp_streams]]\nguid = \"{id}\"\nurl = \"{url}\"\noutput_types = [{outputs}]\n"
            ));
            if recording {
                conf.push_str("archive = { recording = true }\n");
            }
        }
        (Server::start(&dir, &conf), ids, dir)
    }
}

/// Live viewers of one server, all in this process.
struct Viewers {
    totals: Arc<Totals>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Option<Duration>>>,
}

impl Viewers {
    fn new() -> Viewers {
        Viewers {
            totals: Arc::default(),
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        }
    }

    fn add(&mut self, video: &str, stream: uuid::Uuid) {
        let url = format!("ws://{video}/ws/live?stream_id={stream}");
        self.tasks.push(tokio::spawn(client::live_viewer(
            url,
            self.totals.clone(),
            self.stop.clone(),
        )));
    }

    /// A WebRTC viewer (WHEP on the video listener) instead of an MSE one.
    fn add_whep(&mut self, http: &reqwest::Client, video: &str, stream: uuid::Uuid) {
        let url = format!("http://{video}/whep/{stream}");
        self.tasks.push(tokio::spawn(webrtc::whep_viewer(
            http.clone(),
            url,
            self.totals.clone(),
            self.stop.clone(),
        )));
    }

    /// Waits until every viewer got its first fragment.
    async fn wait_started(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let started = self.totals.started.load(Ordering::Relaxed) as usize;
            let ended = self.totals.ended.load(Ordering::Relaxed);
            assert!(
                ended == 0,
                "{ended} viewers were refused or closed by the server"
            );
            if started >= self.tasks.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {started} of {} viewers got a fragment within {within:?}",
                self.tasks.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> Vec<Duration> {
        self.stop.cancel();
        let mut firsts = Vec::new();
        for t in self.tasks {
            if let Ok(Some(d)) = t.await {
                firsts.push(d);
            }
        }
        firsts
    }
}

/// Hub skips and dropped bytes (all stages), read from `/metrics`.
async fn losses(server: &Server, http: &reqwest::Client) -> (f64, f64) {
    let m = server.metrics(http).await;
    (
        m.sum("video_server_stream_skipped_frames_total"),
        m.sum("video_server_stream_dropped_bytes_total"),
    )
}

const WARM_UP: Duration = Duration::from_secs(2);

struct IngestRow {
    what: &'static str,
    cameras: usize,
    usage: Use,
    /// Frames per second per camera received (ours) or MB/s written (ffmpeg).
    rate: String,
    losses: String,
    /// What the server's index says about the recording (see `index_continuity`).
    index: String,
}

/// Reads a stopped server's SQLite index: segments per camera and the longest gap between
/// consecutive segments of one camera (end of one to the start of the next), over `cameras`
/// cameras. "n/a" with the reason when the index cannot be read.
async fn index_continuity(db: &Path, cameras: usize) -> String {
    use sqlx::Row;
    let url = format!("sqlite://{}?mode=ro", db.display());
    let pool = match sqlx::SqlitePool::connect(&url).await {
        Ok(p) => p,
        Err(e) => return format!("n/a ({e})"),
    };
    let rows = sqlx::query(
        "SELECT stream_id, start_us, end_us, media_duration_us FROM segments \
         WHERE state IN ('complete', 'recording') ORDER BY stream_id, start_us",
    )
    .fetch_all(&pool)
    .await;
    pool.close().await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return format!("n/a ({e})"),
    };
    let mut streams = 0usize;
    let mut max_gap_us = 0i64;
    // Wall-clock time the segments span, and the media (sum of frame durations) in them.
    let (mut span_us, mut media_us) = (0i64, 0i64);
    let mut prev: Option<(String, i64)> = None;
    for r in &rows {
        let (id, start, end): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        span_us += end - start;
        media_us += r.get::<i64, _>(3);
        match &prev {
            Some((p, prev_end)) if *p == id => max_gap_us = max_gap_us.max(start - prev_end),
            _ => streams += 1,
        }
        prev = Some((id, end));
    }
    format!(
        "{streams}/{cameras} cameras recorded, {:.1} segments each, longest gap {:.0} ms, \
         media {:.2} % of the span",
        rows.len() as f64 / cameras.max(1) as f64,
        max_gap_us as f64 / 1000.0,
        media_us as f64 * 100.0 / span_us.max(1) as f64
    )
}

async fn ingest(
    b: &mut Bench,
    cameras: &[usize],
    ffmpeg_max: usize,
    window: Duration,
    out: &mut String,
) {
    out.push_str(&format!(
        "Ingest: N cameras pulling `{}` (640x360 25 fps H.264 + AAC, shared mount; above {CAMERAS_PER_SOURCE} cameras spread round-robin over one source process per {CAMERAS_PER_SOURCE} cameras), measured over \
         {} s after a {} s warm-up. CPU and RSS of the measured processes only (the ffmpeg \
         processes summed; the server process); \"client\" is the load client's own CPU. ffmpeg \
         runs up to {ffmpeg_max} cameras; above that, \"vs ffmpeg\" (marked *) compares with \
         ffmpeg's CPU per camera at the largest N measured in this run. \"index\" is read from the \
         server's SQLite index after it stopped: segments per camera and the longest gap between \
         one segment's end and the next one's start (a recording outage or lost frames at a \
         segment boundary would show there), and the media in the segments (sum of frame \
         durations) as a share of the wall-clock time they span (frames lost inside a segment \
         would lower it).\n\n\
         | configuration | N | CPU % of a core | per camera | vs ffmpeg | RSS MiB | per camera | fds | client CPU % | input | lost (skipped frames / dropped bytes) | index |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|\n",
        b.url("/av"),
        window.as_secs(),
        WARM_UP.as_secs()
    ));
    // ffmpeg's CPU per camera at the largest N it ran at (the reference above `ffmpeg_max`).
    let mut ffmpeg_ref: Option<f64> = None;
    for &n in cameras {
        let mut rows = Vec::new();
        // ffmpeg, one process per camera.
        if n <= ffmpeg_max {
            let dir = b.scratch(&format!("ffmpeg{n}"));
            let mut ff = procs::Ffmpeg::start(&b.url("/av"), n, &dir);
            // Generous: 50 ffmpeg processes probing their input at once on a loaded machine.
            ff.wait_receiving(Duration::from_secs(60 + n as u64));
            tokio::time::sleep(WARM_UP).await;
            let frames0 = ff.frames();
            let t0 = Instant::now();
            let usage = b.measure(&ff.pids(), window).await;
            let rate = (ff.frames() - frames0) as f64 / t0.elapsed().as_secs_f64() / n as f64;
            assert!(rate > 0.0, "ffmpeg muxed nothing during the window");
            rows.push(IngestRow {
                what: "ffmpeg -rtsp_transport tcp -i URL -c copy -f mp4",
                cameras: n,
                usage,
                rate: format!("{rate:.1} video frames/s per camera"),
                losses: "n/a".into(),
                index: "n/a".into(),
            });
        }
        for (what, outputs, viewers) in [
            ("server, outputs [], recording", "", false),
            (
                "server, outputs mse+hls, recording, 1 MSE viewer per camera",
                "\"mse\", \"hls\"",
                true,
            ),
        ] {
            let (server, ids, dir) = b.server("ingest", n, outputs, true, "ms_per_file = 30000");
            server
                .wait_receiving(&b.http, n, Duration::from_secs(60 + n as u64 / 2))
                .await;
            let mut v = Viewers::new();
            if viewers {
                for id in &ids {
                    v.add(&server.video, *id);
                }
                v.wait_started(Duration::from_secs(30 + n as u64 / 5)).await;
            }
            tokio::time::sleep(WARM_UP).await;
            let m0 = server.metrics(&b.http).await;
            let (skip0, drop0) = losses(&server, &b.http).await;
            let t0 = Instant::now();
            let usage = b.measure(&[server.pid()], window).await;
            let elapsed = t0.elapsed().as_secs_f64();
            let m1 = server.metrics(&b.http).await;
            let (skip1, drop1) = losses(&server, &b.http).await;
            let frames = m1.sum("video_server_stream_frames_total")
                - m0.sum("video_server_stream_frames_total");
            assert!(
                frames > 0.0,
                "the server received no frames during the window"
            );
            if viewers {
                assert_eq!(
                    v.totals.bad_starts.load(Ordering::Relaxed),
                    0,
                    "a viewer started mid-GOP"
                );
            }
            v.stop().await;
            rows.push(IngestRow {
                what,
                cameras: n,
                usage,
                rate: format!(
                    "{:.1} video+audio frames/s per camera",
                    frames / elapsed / n as f64
                ),
                losses: format!("{} / {}", skip1 - skip0, drop1 - drop0),
                index: String::new(),
            });
            server.stop();
            if let Some(row) = rows.last_mut() {
                row.index = index_continuity(&dir.join("index.db"), n).await;
            }
        }
        let (ffmpeg_per_camera, mark) = match rows.first() {
            Some(r) if r.what.starts_with("ffmpeg") => {
                let per = r.usage.cpu_percent / r.cameras as f64;
                ffmpeg_ref = Some(per);
                (Some(per), "")
            }
            _ => (ffmpeg_ref, "*"),
        };
        for r in &rows {
            let ratio = ffmpeg_per_camera.map_or_else(
                || "n/a".to_owned(),
                |f| format!("{:.2}x{mark}", r.usage.cpu_percent / r.cameras as f64 / f),
            );
            push_row(
                out,
                format!(
                    "| {} | {} | {:.2} | {:.3} | {} | {:.1} | {:.2} | {} | {:.2} | {} | {} | {} |\n",
                    r.what,
                    r.cameras,
                    r.usage.cpu_percent,
                    r.usage.cpu_percent / r.cameras as f64,
                    ratio,
                    mib(r.usage.rss_kib),
                    mib(r.usage.rss_kib) / r.cameras as f64,
                    r.usage.fds,
                    r.usage.client_cpu_percent,
                    r.rate,
                    r.losses,
                    r.index
                ),
            );
        }
    }
    out.push('\n');
}

/// Adds a table row to the report and prints it at once, so a long run that fails later still
/// shows what it measured.
fn push_row(out: &mut String, row: String) {
    eprint!("{row}");
    out.push_str(&row);
}

/// One measured step of a fan-out: the server's use over a window and what the viewers got.
struct Step {
    usage: Use,
    /// Messages, bytes, fragments and video samples per second per viewer (`Totals::snapshot`).
    per: [f64; 4],
    /// Frames the hub skipped for lagging viewers during the window.
    skipped: f64,
}

/// Waits until every viewer of `v` plays, lets them settle, and measures the server over `window`.
async fn step(b: &Bench, server: &Server, v: &Viewers, window: Duration) -> Step {
    let m = v.tasks.len();
    v.wait_started(Duration::from_secs(30 + m as u64 / 10))
        .await;
    tokio::time::sleep(WARM_UP).await;
    let (skip0, _) = losses(server, &b.http).await;
    let s0 = v.totals.snapshot();
    let t0 = Instant::now();
    let usage = b.measure(&[server.pid()], window).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let s1 = v.totals.snapshot();
    let (skip1, _) = losses(server, &b.http).await;
    let per = std::array::from_fn(|i| (s1[i] - s0[i]) as f64 / elapsed / m as f64);
    assert!(per[3] > 0.0, "viewers received no video");
    Step {
        usage,
        per,
        skipped: skip1 - skip0,
    }
}

async fn fanout(b: &mut Bench, viewers: &[usize], window: Duration, out: &mut String) {
    let (server, ids, _) = b.server("fanout", 1, "\"mse\"", false, "");
    let base = b.idle(&server, window).await;
    out.push_str(&format!(
        "Fan-out: one camera (`/av`, outputs mse, not recorded) to M MSE viewers in one client \
         process; {} s windows. With no viewer the server uses {:.2} % of a core and {:.1} MiB. \
         \"Per viewer\" is (CPU − CPU with no viewer) / M. Every viewer's first fragment starts \
         with a keyframe (checked); skipped frames are the hub's (a viewer that lagged).\n\n\
         | viewers | CPU % of a core | per viewer | RSS MiB | per viewer KiB | client CPU % | msg/s per viewer | kbit/s per viewer | video fps per viewer | skipped frames | mid-GOP starts |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        window.as_secs(),
        base.cpu_percent,
        mib(base.rss_kib)
    ));
    let mut v = Viewers::new();
    for &m in viewers {
        while v.tasks.len() < m {
            v.add(&server.video, ids[0]);
        }
        let Step {
            usage,
            per,
            skipped,
        } = step(b, &server, &v, window).await;
        push_row(
            out,
            format!(
                "| {m} | {:.2} | {:.4} | {:.1} | {:.0} | {:.2} | {:.1} | {:.0} | {:.1} | {skipped} | {} |\n",
                usage.cpu_percent,
                (usage.cpu_percent - base.cpu_percent) / m as f64,
                mib(usage.rss_kib),
                usage.rss_kib.saturating_sub(base.rss_kib) as f64 / m as f64,
                usage.client_cpu_percent,
                per[0],
                per[1] * 8.0 / 1000.0,
                per[3],
                v.totals.bad_starts.load(Ordering::Relaxed),
            ),
        );
        assert_eq!(
            v.totals.bad_starts.load(Ordering::Relaxed),
            0,
            "a viewer started mid-GOP"
        );
    }
    v.stop().await;
    server.stop();
    out.push('\n');
}

/// The demo stream to M WebRTC (WHEP) viewers and, in the same run, to M MSE viewers: for each
/// M the MSE viewers are measured, leave, then the WebRTC viewers are measured and leave, so both
/// kinds meet the same machine state. The source is the bundled demo clip played in a loop (the
/// bitrate the target names); its audio is AAC, which is not a WebRTC codec, so WebRTC
/// viewers get the video and MSE viewers both tracks.
async fn webrtc_fanout(b: &mut Bench, viewers: &[usize], window: Duration, out: &mut String) {
    let most = viewers.iter().max().copied().unwrap_or(1) + 10;
    let demo = uuid::Uuid::new_v4();
    let extra = format!(
        "[webrtc]\nudp_port = 0\nmax_sessions = {most}\nmax_sessions_per_stream = {most}\n\
         [[local_files]]\nguid = \"{demo}\"\nfile = \"{}\"\nloop = true\noutput_types = [\"mse\"]\n",
        b.root.join("assets/demo.mp4").display()
    );
    let (server, _, _) = b.server("webrtc", 0, "\"mse\"", false, &extra);
    let ids = [demo];
    let base = b.idle(&server, window).await;
    out.push_str(&format!(
        "WebRTC fan-out: the demo clip (`assets/demo.mp4` looped: 640×360, 25 fps, 2 s GOP, \
         H.264 + AAC; outputs mse, not recorded) to M WebRTC viewers (WHEP; str0m clients in one \
         process: ICE, DTLS, SRTP, depacketizing, no decoding) and, in the same run, to M MSE \
         viewers; {} s windows. With no viewer the server uses {:.2} % \
         of a core. \"Per viewer\" is (CPU − CPU with no viewer) / M. WebRTC viewers get the \
         video only (AAC is not a WebRTC codec); \"frames/s\" counts whole video frames as \
         received (a WebRTC viewer's first frame must be a keyframe: the GOP burst).\n\n\
         | viewers | kind | CPU % of a core | per viewer | RSS MiB | client CPU % | kbit/s per viewer | video frames/s per viewer | skipped frames | first frame p50 / max ms | bad starts |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        window.as_secs(),
        base.cpu_percent,
    ));
    for &m in viewers {
        for kind in ["MSE", "WebRTC"] {
            let mut v = Viewers::new();
            for _ in 0..m {
                if kind == "MSE" {
                    v.add(&server.video, ids[0]);
                } else {
                    v.add_whep(&b.http, &server.video, ids[0]);
                }
            }
            let Step {
                usage,
                per,
                skipped,
            } = step(b, &server, &v, window).await;
            let bad = v.totals.bad_starts.load(Ordering::Relaxed);
            let ended = v.totals.ended.load(Ordering::Relaxed);
            let mut firsts = v.stop().await;
            firsts.sort();
            push_row(
                out,
                format!(
                    "| {m} | {kind} | {:.2} | {:.4} | {:.1} | {:.2} | {:.0} | {:.1} | {skipped} | {:.0} / {:.0} | {bad} |\n",
                    usage.cpu_percent,
                    (usage.cpu_percent - base.cpu_percent) / m as f64,
                    mib(usage.rss_kib),
                    usage.client_cpu_percent,
                    per[1] * 8.0 / 1000.0,
                    per[3],
                    pct(&firsts, 0.5),
                    pct(&firsts, 1.0),
                ),
            );
            assert_eq!(
                ended, 0,
                "{ended} {kind} viewers were closed during the window"
            );
            assert_eq!(bad, 0, "a {kind} viewer started mid-GOP");
            // The sessions close (WHEP DELETE, WebSocket close) before the next step.
            tokio::time::sleep(WARM_UP).await;
        }
    }
    server.stop();
    out.push('\n');
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Waits until the recorder closed `segments` segments in total.
async fn wait_segments(server: &Server, http: &reqwest::Client, segments: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let m = server.metrics(http).await;
        if m.sum("video_server_recorder_segments_total") >= segments {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {segments} segments after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn ttff(b: &mut Bench, samples: usize, segment_ms: u64, out: &mut String) {
    let (server, ids, _) = b.server(
        "ttff",
        1,
        "\"mse\"",
        true,
        &format!("ms_per_file = {segment_ms}"),
    );
    server
        .wait_receiving(&b.http, 1, Duration::from_secs(30))
        .await;
    let recording_since = unix_now();
    let url = format!("ws://{}/ws/live?stream_id={}", server.video, ids[0]);
    let mut live = Vec::new();
    for _ in 0..samples {
        if let Some(d) = client::live_ttff(&url).await {
            live.push(d);
        }
    }
    assert!(!live.is_empty(), "no live viewer got a fragment");
    live.sort();
    // Archive: sessions over what has been recorded by now (two closed segments at least).
    wait_segments(
        &server,
        &b.http,
        2.0,
        Duration::from_millis(3 * segment_ms + 30_000),
    )
    .await;
    let recorded_s = (unix_now() - recording_since - 2).max(2);
    let mut archive = Vec::new();
    let resume = CancellationToken::new();
    resume.cancel();
    for i in 0..samples {
        let start = recording_since + 1 + (i as i64 * 7) % (recorded_s - 1).max(1);
        let url = format!(
            "ws://{}/ws/archive?stream_id={}&start={start}&duration=2",
            server.video, ids[0]
        );
        let r = client::archive_session(
            url,
            Arc::new(tokio::sync::Semaphore::new(0)),
            resume.clone(),
        )
        .await;
        if let Some(d) = r.first_fragment {
            archive.push(d);
        }
    }
    archive.sort();
    out.push_str(&format!(
        "Time to first fragment: from the start of the WebSocket connect to the first `moof`, \
         sessions one after another, one camera (`/av`). Live: served from the GOP cache. \
         Archive: `/ws/archive` 2 s ranges at different places in the last {recorded_s} s \
         ({} ms segments, SQLite index, filesystem).\n\n\
         | session | samples | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n\
         | live MSE | {} | {:.1} | {:.1} | {:.1} |\n| archive | {} | {:.1} | {:.1} | {:.1} |\n\n",
        segment_ms,
        live.len(),
        pct(&live, 0.5),
        pct(&live, 0.99),
        pct(&live, 1.0),
        archive.len(),
        pct(&archive, 0.5),
        pct(&archive, 0.99),
        pct(&archive, 1.0),
    ));
    assert!(!archive.is_empty(), "no archive session got a fragment");
    server.stop();
}

async fn archive(
    b: &mut Bench,
    cameras: usize,
    sessions: usize,
    segment_ms: u64,
    out: &mut String,
) {
    let record_s: i64 = 40;
    let (server, ids, _) = b.server(
        "archive",
        cameras,
        "",
        true,
        &format!("ms_per_file = {segment_ms}\nplayback_chunk_s = 5"),
    );
    server
        .wait_receiving(&b.http, cameras, Duration::from_secs(60))
        .await;
    let since = unix_now();
    let needed = (record_s * 1000 / segment_ms as i64).max(1) as f64 * cameras as f64;
    wait_segments(
        &server,
        &b.http,
        needed,
        Duration::from_secs(record_s as u64 + 60),
    )
    .await;
    tokio::time::sleep(WARM_UP).await;
    let before = server.sample();
    let paused = Arc::new(tokio::sync::Semaphore::new(0));
    let resume = CancellationToken::new();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..sessions {
        let start = since + 1 + (i as i64 * 3) % (record_s - 25).max(1);
        let url = format!(
            "ws://{}/ws/archive?stream_id={}&start={start}&duration=20",
            server.video,
            ids[i % ids.len()]
        );
        tasks.push(tokio::spawn(client::archive_session(
            url,
            paused.clone(),
            resume.clone(),
        )));
    }
    // Every session has sent its first 5 s and paused (or ended): all are open at once.
    let all = paused
        .acquire_many(sessions as u32)
        .await
        .expect("semaphore open");
    all.forget();
    let held = server.sample();
    resume.cancel();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("session task"));
    }
    let wall = t0.elapsed();
    let mut firsts: Vec<Duration> = results.iter().filter_map(|r| r.first_fragment).collect();
    firsts.sort();
    let eos = results.iter().filter(|r| r.reached_eos).count();
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let after = server.sample();
    out.push_str(&format!(
        "Archive: {sessions} concurrent `/ws/archive` sessions (20 s each, from {cameras} camera(s) \
         recorded for {record_s} s in {segment_ms} ms segments, filesystem, SQLite), all opened at \
         once; each pauses after 5 s of media (`playback_chunk_s = 5`) until every session has, \
         then reads to `eos`. Memory per session = (server RSS with all sessions open − before) / \
         sessions.\n\n\
         | sessions | first fragment p50 ms | p99 ms | max ms | reached eos | MB sent | all done in s | RSS before MiB | RSS all open MiB | per session KiB | fds before / open / after |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n\
         | {sessions} | {:.1} | {:.1} | {:.1} | {eos} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} / {} / {} |\n\n",
        pct(&firsts, 0.5),
        pct(&firsts, 0.99),
        pct(&firsts, 1.0),
        bytes as f64 / 1e6,
        wall.as_secs_f64(),
        mib(before.rss_kib),
        mib(held.rss_kib),
        held.rss_kib.saturating_sub(before.rss_kib) as f64 / sessions as f64,
        before.fds,
        held.fds,
        after.fds,
    ));
    assert_eq!(firsts.len(), sessions, "sessions without a fragment");
    server.stop();
}

async fn soak(b: &mut Bench, cameras: usize, total: Duration, out: &mut String) {
    let (server, ids, _) = b.server(
        "soak",
        cameras,
        "\"mse\", \"hls\"",
        true,
        "ms_per_file = 30000",
    );
    server
        .wait_receiving(&b.http, cameras, Duration::from_secs(60))
        .await;
    let mut v = Viewers::new();
    for id in &ids {
        v.add(&server.video, *id);
    }
    v.wait_started(Duration::from_secs(60)).await;
    let step = Duration::from_secs(10)
        .min(total / 4)
        .max(Duration::from_secs(1));
    let t0 = Instant::now();
    let mut rows: Vec<(f64, Use)> = Vec::new();
    let (skip0, drop0) = losses(&server, &b.http).await;
    while t0.elapsed() + step <= total + Duration::from_millis(500) {
        let u = b.measure(&[server.pid()], step).await;
        rows.push((t0.elapsed().as_secs_f64(), u));
    }
    let (skip1, drop1) = losses(&server, &b.http).await;
    let ended = v.totals.ended.load(Ordering::Relaxed);
    v.stop().await;
    out.push_str(&format!(
        "Soak: {cameras} cameras (`/av`), outputs mse+hls, recording (30 s segments), one MSE \
         viewer each, for {} s; the server sampled every {} s. Skipped frames {}, dropped bytes {}, \
         viewers ended early {ended}.\n\n\
         | t s | CPU % of a core | RSS MiB | fds |\n|---:|---:|---:|---:|\n",
        total.as_secs(),
        step.as_secs(),
        skip1 - skip0,
        drop1 - drop0
    ));
    // At most ~12 rows in the report, always the first and the last.
    let every = rows.len().div_ceil(12).max(1);
    for (i, (t, u)) in rows.iter().enumerate() {
        if i % every == 0 || i + 1 == rows.len() {
            out.push_str(&format!(
                "| {t:.0} | {:.2} | {:.1} | {} |\n",
                u.cpu_percent,
                mib(u.rss_kib),
                u.fds
            ));
        }
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let max_rss = rows.iter().map(|(_, u)| u.rss_kib).max().unwrap_or(0);
        out.push_str(&format!(
            "\nRSS first {:.1} MiB, last {:.1} MiB, max {:.1} MiB; fds first {}, last {}.\n\n",
            mib(first.1.rss_kib),
            mib(last.1.rss_kib),
            mib(max_rss),
            first.1.fds,
            last.1.fds
        ));
    }
    server.stop();
}

fn git(root: &Path, args: &[&str]) -> String {
    std::process::Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

#[tokio::main]
async fn main() {
    let o = parse_args();
    let load_before = load_average();
    let started = Instant::now();
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let mut b = Bench::new();
    let mut out = String::new();
    let window = Duration::from_secs(o.seconds.unwrap_or(20));
    let cameras = |d: &[usize]| o.cameras.clone().unwrap_or_else(|| d.to_vec());
    let viewers = |d: &[usize]| o.viewers.clone().unwrap_or_else(|| d.to_vec());
    let scenarios: Vec<&str> = match o.scenario.as_str() {
        "all" => vec!["ingest", "fanout", "ttff", "archive", "soak", "startup"],
        s => vec![s],
    };
    for s in scenarios {
        match s {
            "smoke" => {
                let w = Duration::from_secs(o.seconds.unwrap_or(5));
                ingest(&mut b, &cameras(&[5]), o.ffmpeg_max, w, &mut out).await;
                fanout(&mut b, &viewers(&[50]), w, &mut out).await;
                webrtc_fanout(&mut b, &[5], w, &mut out).await;
            }
            "ingest" => {
                let c = cameras(&[1, 10, 50, 100, 200]);
                ingest(&mut b, &c, o.ffmpeg_max, window, &mut out).await;
            }
            "fanout" => fanout(&mut b, &viewers(&[1, 10, 100, 500, 1000]), window, &mut out).await,
            "webrtc" => {
                webrtc_fanout(&mut b, &viewers(&[10, 50, 100, 200]), window, &mut out).await
            }
            "ttff" => ttff(&mut b, o.sessions, o.segment_ms, &mut out).await,
            "archive" => {
                let c = cameras(&[1]);
                archive(&mut b, c[0], o.sessions, o.segment_ms, &mut out).await;
            }
            "startup" => startup::startup(&mut b, o.rows, o.files, &mut out).await,
            "soak" => {
                let total = Duration::from_secs(o.seconds.unwrap_or(120));
                soak(&mut b, cameras(&[20])[0], total, &mut out).await;
            }
            other => panic!("unknown scenario {other}\n{USAGE}"),
        }
    }
    let commit = git(&b.root, &["rev-parse", "--short=10", "HEAD"]);
    let dirty = if git(&b.root, &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    let command = o
        .command
        .clone()
        .unwrap_or_else(|| format!("cargo bench --bench live -- {}", o.scenario));
    let report = format!(
        "\n#### `{}` — {date}\n\n`{command}` at commit `{commit}`{dirty}; {} build; {} cores; load \
         average before {load_before}, after {}; took {:.0} s.\n\n{out}",
        o.scenario,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        started.elapsed().as_secs_f64()
    );
    println!("{report}");
    if let Some(path) = &o.report {
        procs::append(path, &report);
    }
}
