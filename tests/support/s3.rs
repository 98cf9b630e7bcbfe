//! A real S3-compatible server for tests: `s3s-fs` (SigV4, objects as plain files in a temp dir).
//! `scripts/test` installs it (`cargo install s3s-fs@0.14.1 --features binary`).
//!
//! Started on a free 127.0.0.1 port; [`S3Server::stop`] and [`S3Server::restart`] simulate an
//! outage on the same port and data directory. Killed on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use video_server::config::S3Config;

pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-0123456789";

/// The `s3s-fs` binary: on `PATH`, else in `~/.cargo/bin` (where `cargo install` puts it).
pub fn binary() -> PathBuf {
    let name = "s3s-fs";
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = cargo_home {
        let p = home.join("bin").join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "s3s-fs not found on PATH or in ~/.cargo/bin: run scripts/test, or \
         `cargo install s3s-fs@0.14.1 --features binary --locked`"
    );
}

/// A running (or stopped) s3s-fs.
pub struct S3Server {
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    bin: PathBuf,
    data: tempfile::TempDir,
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server with an empty data directory.
    pub async fn start() -> S3Server {
        let port = free_port();
        let mut server = S3Server {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            bin: binary(),
            data: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        server.spawn_and_wait().await;
        server
    }

    /// `[s3]` settings pointing at this server.
    pub fn config(&self, bucket: &str, prefix: &str) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            region: "us-east-1".into(),
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            bucket: bucket.into(),
            prefix: prefix.into(),
            path_style: Some(true),
            buckets: Vec::new(),
        }
    }

    /// Where the objects are stored (`<data>/<bucket>/<key>`).
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join("root")
    }

    /// Kills the server (an outage). The port and data stay.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait().await;
    }

    /// Spawns and waits until the port accepts connections. Retries the spawn if the process exits
    /// at once (the port can be briefly unavailable right after a kill).
    async fn spawn_and_wait(&mut self) {
        let root = self.data_dir();
        std::fs::create_dir_all(&root).expect("data dir");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let log = std::fs::File::create(self.data.path().join(format!("s3s-fs.{attempt}.log")))
                .expect("log file");
            let mut child = Command::new(&self.bin)
                .arg("--host")
                .arg("127.0.0.1")
                .arg("--port")
                .arg(self.port.to_string())
                .arg("--access-key")
                .arg(ACCESS_KEY)
                .arg("--secret-key")
                .arg(SECRET_KEY)
                .arg(&root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        Instant::now() < deadline,
                        "s3s-fs keeps exiting ({status}); see {}",
                        self.data.path().display()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("s3s-fs did not listen on {addr} within 15 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A TCP server that accepts connections and never answers: calls to it must time out.
pub struct SilentServer {
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    pub async fn start() -> SilentServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        SilentServer {
            endpoint: format!("http://{addr}"),
            task,
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
