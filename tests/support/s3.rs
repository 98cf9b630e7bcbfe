//! A real S3-compatible server for tests: `s3s-fs` (SigV4, objects as plain files in a temp dir).
//! `scripts/test` installs it (`cargo install s3s-fs@0.14.1 --features binary`).
//!
//! Reached through a 127.0.0.1 port the test holds; [`S3Server::stop`] and
//! [`S3Server::restart`] simulate an outage behind the same endpoint and data directory. Killed
//! on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use video_server::config::S3Config;

use super::ports::{TcpProxy, listens_on};

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

/// A running (or stopped) s3s-fs behind a port the test holds ([`TcpProxy`]): the endpoint stays
/// the same across [`S3Server::stop`] and [`S3Server::restart`], and no other process can take it
/// meanwhile. s3s-fs itself listens on a port of its own, checked to be really its own
/// ([`listens_on`]) and chosen again if another process took it first.
pub struct S3Server {
    /// The port of the endpoint (the proxy's).
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    bin: PathBuf,
    data: tempfile::TempDir,
    proxy: TcpProxy,
    child: Option<Child>,
    spawns: u32,
}

impl S3Server {
    /// Starts a server with an empty data directory.
    pub async fn start() -> S3Server {
        let proxy = TcpProxy::start();
        let mut server = S3Server {
            port: proxy.port,
            endpoint: format!("http://127.0.0.1:{}", proxy.port),
            bin: binary(),
            data: tempfile::tempdir().expect("temp dir"),
            proxy,
            child: None,
            spawns: 0,
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

    /// Kills the server (an outage): connections to the endpoint are dropped from now on. The
    /// endpoint and the data stay.
    pub fn stop(&mut self) {
        self.proxy.set_backend(None);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory, behind the same endpoint.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait().await;
    }

    /// Spawns s3s-fs on a free port and waits until it is the one listening there; another port
    /// when the process exits (its port was taken) or someone else answers on it.
    async fn spawn_and_wait(&mut self) {
        let root = self.data_dir();
        std::fs::create_dir_all(&root).expect("data dir");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.spawns += 1;
            let port = free_port();
            let log =
                std::fs::File::create(self.data.path().join(format!("s3s-fs.{}.log", self.spawns)))
                    .expect("log file");
            let mut child = Command::new(&self.bin)
                .arg("--host")
                .arg("127.0.0.1")
                .arg("--port")
                .arg(port.to_string())
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
            let attempt_deadline = Instant::now() + Duration::from_secs(10);
            let listening = loop {
                if listens_on(child.id(), port) {
                    break true;
                }
                if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > attempt_deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if listening {
                self.child = Some(child);
                self.proxy.set_backend(Some(port));
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start listening; see the logs in {}",
                self.data.path().display()
            );
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
