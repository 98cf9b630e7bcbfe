//! Real media peers for tests: the GStreamer RTSP server, a WebSocket viewer, ffmpeg/ffprobe checks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// The GStreamer RTSP test server (tests/support/gst_rtsp_server.py). Killed on drop.
pub struct RtspServer {
    child: Child,
    pub port: u16,
    /// Every change of the number of connected clients, as the server reported it, with the time
    /// the line arrived.
    clients: std::sync::Arc<std::sync::Mutex<Vec<(Instant, usize)>>>,
}

impl RtspServer {
    /// Starts the server on `port` (0 = any free port) and waits for its READY line.
    pub fn start(port: u16) -> RtspServer {
        Self::start_with(port, &[])
    }

    /// As [`RtspServer::start`], also serving `file` at `/file` (an MP4, or an MPEG-TS file whose
    /// in-band parameter sets may change mid-file).
    pub fn start_with_file(port: u16, file: &Path) -> RtspServer {
        let file = file.to_str().expect("UTF-8 path");
        Self::start_with(port, &["--file", file])
    }

    /// As [`RtspServer::start`], with every mount requiring `user:pass` (`--auth`).
    pub fn start_with_auth(user_pass: &str) -> RtspServer {
        Self::start_with(0, &["--auth", user_pass])
    }

    /// As [`RtspServer::start`], offering only one RTP transport (`"udp"` or `"tcp"`, `--only`): a
    /// client asking for the other one is refused.
    pub fn start_only(transport: &str) -> RtspServer {
        Self::start_with(0, &["--only", transport])
    }

    fn start_with(port: u16, extra: &[&str]) -> RtspServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/gst_rtsp_server.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--exit-on-stdin-eof"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the GStreamer RTSP server (is python3-gi installed?)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let clients = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = clients.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("CLIENTS ") {
                    if let Ok(n) = n.trim().parse() {
                        sink.lock().expect("clients lock").push((Instant::now(), n));
                    }
                } else {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("RTSP server printed READY");
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected READY line: {line}"));
        RtspServer {
            child,
            port,
            clients,
        }
    }

    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{mount}", self.port)
    }

    /// Connected clients (RTSP connections) as last reported by the server.
    pub fn clients(&self) -> usize {
        self.client_history().last().map_or(0, |&(_, n)| n)
    }

    /// Every reported change of the client count so far, oldest first.
    pub fn client_history(&self) -> Vec<(Instant, usize)> {
        self.clients.lock().expect("clients lock").clone()
    }

    /// Sends a command (`kick`, `down`, `up`; see the script's docstring).
    pub fn command(&mut self, cmd: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin piped");
        writeln!(stdin, "{cmd}").expect("command sent");
        stdin.flush().expect("command flushed");
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One viewer's received messages.
#[derive(Debug, Default)]
pub struct Received {
    /// The codec list of the first message (without the 0x09 byte).
    pub codecs: String,
    pub init: Vec<u8>,
    pub fragments: Vec<Vec<u8>>,
    pub texts: Vec<String>,
}

/// The four-character type of the first box of `data`.
pub fn first_box(data: &[u8]) -> &str {
    data.get(4..8)
        .and_then(|t| std::str::from_utf8(t).ok())
        .unwrap_or("")
}

/// A WebSocket client on `host:port` with a 4 KiB receive buffer: what the server sends piles up
/// on its side as soon as the client stops reading (a slow viewer on a bad link).
pub async fn ws_with_tiny_rcvbuf(
    addr: &str,
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("upgrade")
        .0
}

/// Connects a live viewer and collects messages for `dur` (after the init segment).
pub async fn watch_live(video: &str, stream_id: &str, dur: Duration) -> Received {
    let url = format!("ws://{video}/ws/live?stream_id={stream_id}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let mut r = Received::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut stop_at: Option<tokio::time::Instant> = None;
    loop {
        let until = stop_at.unwrap_or(deadline);
        let msg = match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(Err(e))) => panic!("websocket error: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Binary(b) => {
                if r.codecs.is_empty() {
                    assert_eq!(b.first(), Some(&0x09), "first message is 0x09 + codecs");
                    r.codecs = String::from_utf8(b[1..].to_vec()).expect("ascii codecs");
                } else if r.init.is_empty() {
                    r.init = b.to_vec();
                    stop_at = Some(tokio::time::Instant::now() + dur);
                } else {
                    r.fragments.push(b.to_vec());
                }
            }
            Message::Text(t) => r.texts.push(t.to_string()),
            Message::Close(f) => panic!("server closed the viewer: {f:?}"),
            _ => {}
        }
    }
    let _ = ws.send(Message::Close(None)).await;
    r
}

/// Writes init + fragments to a file in `dir` and returns its path.
pub fn write_mp4(dir: &Path, name: &str, r: &Received) -> PathBuf {
    let path = dir.join(name);
    let mut all = r.init.clone();
    for f in &r.fragments {
        all.extend_from_slice(f);
    }
    std::fs::write(&path, all).expect("write mp4");
    path
}

/// Decodes a file or URL with ffmpeg; returns ffmpeg's error output (empty = clean).
pub fn ffmpeg_decode_errors(input: &str) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i", input, "-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        text.push_str(&format!("\nffmpeg exited with {}", out.status));
    }
    text
}

/// ffprobe's JSON description of a file or URL (streams and format).
pub fn ffprobe(input: &str) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
            input,
        ])
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed on {input}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
