//! Runs the real `video-server` binary in a temp dir on ephemeral ports and reads its JSON logs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running server process. Killed (SIGKILL) on drop if still running.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT` of the API listener.
    pub api: String,
    /// `127.0.0.1:PORT` of the video listener.
    pub video: String,
    /// Every log line so far (JSON objects, one per line).
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// The binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_video-server"))
}

impl ServerProcess {
    /// Starts the binary in `dir` with `args` and waits (up to 60 s) until both listeners are
    /// ready. The config should use port 0 for both listeners so the OS picks free ports.
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut cmd = Command::new(binary());
        cmd.current_dir(dir)
            .args(args)
            .arg("--log-format")
            .arg("json")
            .env("RUST_LOG", "info")
            .env_remove("VIDEO_SERVER_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn video-server");
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut api, mut video) = (None, None);
        while api.is_none() || video.is_none() {
            if Instant::now() > deadline {
                panic!(
                    "server did not become ready; logs:\n{}",
                    logs.lock().expect("log lock").join("\n")
                );
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "server exited early with {status}; logs:\n{}",
                    logs.lock().expect("log lock").join("\n")
                );
            }
            for line in logs.lock().expect("log lock").iter() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let addr = v["addr"].as_str().map(str::to_owned);
                match v["message"].as_str() {
                    Some("api listener ready") => api = addr,
                    Some("video listener ready") => video = addr,
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        ServerProcess {
            child,
            api: format!("http://{}", api.expect("api addr")),
            video: video.expect("video addr"),
            logs,
        }
    }

    /// SIGTERM, then wait for the exit (up to 30 s). Returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if status.is_some_and(|s| s.success()) {
            return true;
        }
        // The caller asserts on the result; the log tail says why the stop was not clean.
        let outcome = status.map_or("no exit within 30 s of SIGTERM (killed)".to_owned(), |s| {
            s.to_string()
        });
        let logs = self.logs.lock().expect("log lock");
        let tail = logs.len().saturating_sub(60);
        eprintln!(
            "server {pid}: {outcome}; last log lines:\n{}",
            logs[tail..].join("\n")
        );
        false
    }

    /// Sends `signal` (a `kill` name such as `TERM` or `INT`) without waiting.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// The exit status, once the process has exited within `timeout` (`None`: still running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (a crash, as far as the server can tell).
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (up to `timeout`) for a log line whose `message` is `message`; returns the line.
    pub fn wait_for_log(&self, message: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.logs.lock().expect("log lock").iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == message).then_some(v)
            });
            if let Some(v) = found {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {message:?} within {timeout:?}; logs:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's process id (e.g. to count its open files in `/proc/<pid>/fd`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal config with both listeners on ephemeral ports and a SQLite index in `dir`.
pub fn base_config() -> String {
    "[api]\nenabled = true\nhost = \"127.0.0.1\"\nport = 0\n\
     [video]\nhost = \"127.0.0.1\"\nport = 0\n\
     [archive]\nserving = true\n\
     [webrtc]\nudp_port = 0\n\
     [database]\nurl = \"sqlite://data/index.db\"\n"
        .to_owned()
}
