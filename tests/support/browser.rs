//! Runs the browser tests' node scripts (e2e/run.mjs, e2e/ui.mjs) and reads their verdict.
//!
//! Every run in this test process shares one Chromium (e2e/browser-server.mjs, started on first
//! use): a browser start costs seconds on this machine, a new context in a running browser does
//! not. The runners get it as `BROWSER_WS`; each run still opens its pages in fresh, isolated
//! contexts. The server exits when this process does (its stdin is a pipe from here). Set
//! `E2E_SHARED_BROWSER=0` to let every run start its own browser instead.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e")
}

/// The shared browser: its endpoint, and the server process (kept so its stdin stays open).
struct SharedBrowser {
    endpoint: String,
    _child: Mutex<Child>,
}

static SHARED: OnceLock<Option<SharedBrowser>> = OnceLock::new();

/// The shared browser's `ws://` endpoint (`None` when sharing is turned off).
fn shared_browser() -> Option<&'static str> {
    SHARED
        .get_or_init(|| {
            if std::env::var("E2E_SHARED_BROWSER").is_ok_and(|v| v == "0") {
                return None;
            }
            let mut child = Command::new("node")
                .current_dir(e2e_dir())
                .arg("browser-server.mjs")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start e2e/browser-server.mjs (node)");
            let stdout = child.stdout.take().expect("stdout piped");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let line = rx
                .recv_timeout(Duration::from_secs(90))
                .unwrap_or_else(|e| panic!("the shared browser did not start: {e}"));
            let endpoint = line
                .strip_prefix("READY ")
                .unwrap_or_else(|| panic!("unexpected line from browser-server.mjs: {line}"))
                .trim()
                .to_owned();
            Some(SharedBrowser {
                endpoint,
                _child: Mutex::new(child),
            })
        })
        .as_ref()
        .map(|b| b.endpoint.as_str())
}

/// Runs `node <script>` in `e2e/` with `env` and returns the JSON verdict on the last line of its
/// stdout, failing the test (with the script's stderr) unless it exited 0 with `"ok": true`.
/// `what` names the run in the failure message.
pub fn run_e2e(script: &str, env: &[(&str, &str)], what: &str) -> serde_json::Value {
    let (ok, verdict, stderr) = run_e2e_verdict(script, env);
    assert!(ok, "{what} failed: {verdict}\nstderr:\n{stderr}");
    verdict
}

/// As [`run_e2e`], without judging: `(passed, verdict, stderr)`. For tests that expect a run to
/// fail (a control showing the checks can).
pub fn run_e2e_verdict(script: &str, env: &[(&str, &str)]) -> (bool, serde_json::Value, String) {
    run_e2e_verdict_with_pages(script, env, None)
}

/// As [`run_e2e`], e2e/run.mjs serving its pages from `pages`.
pub fn run_e2e_with_pages(
    script: &str,
    env: &[(&str, &str)],
    what: &str,
    pages: &PageSockets,
) -> serde_json::Value {
    let (ok, verdict, stderr) = run_e2e_verdict_with_pages(script, env, Some(pages));
    assert!(ok, "{what} failed: {verdict}\nstderr:\n{stderr}");
    verdict
}

/// As [`run_e2e_verdict`], with the sockets for e2e/run.mjs's pages, if any.
pub fn run_e2e_verdict_with_pages(
    script: &str,
    env: &[(&str, &str)],
    pages: Option<&PageSockets>,
) -> (bool, serde_json::Value, String) {
    let e2e = e2e_dir();
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "e2e/node_modules missing: run `npm ci` in e2e/ (scripts/test does)"
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(&e2e).arg(script);
    if let Some(ws) = shared_browser() {
        cmd.env("BROWSER_WS", ws);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(pages) = pages {
        pages.pass_to(&mut cmd);
    }
    let out = cmd.output().expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = stdout.lines().last().unwrap_or("");
    let verdict: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("no JSON verdict from {script} ({e}); stdout:\n{stdout}\nstderr:\n{stderr}")
    });
    let ok = out.status.success() && verdict["ok"] == serde_json::json!(true);
    (ok, verdict, stderr)
}

/// The demo clip the browser tests serve: `assets/demo.mp4`, or `E2E_DEMO_CLIP` (e2e/README.md:
/// a frozen or black copy must make every browser test fail). The pictures are always judged
/// against the real `assets/demo.mp4`.
pub fn demo_clip() -> PathBuf {
    std::env::var_os("E2E_DEMO_CLIP")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo.mp4"))
}

/// Listening sockets e2e/run.mjs serves its test pages from (`PAGE_FDS`, one per job). The pages
/// are another origin than the server, whose cross-site check refuses WebSockets from foreign
/// origins; binding the sockets before the server starts lets a test list their origins in
/// `[cors] allow_origins` ([`PageSockets::cors_toml`]) with no window for another process to take
/// a port.
pub struct PageSockets(Vec<std::net::TcpListener>);

impl PageSockets {
    /// `n` sockets: one per job of the runs that will use them.
    pub fn bind(n: usize) -> PageSockets {
        PageSockets(
            (0..n)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a page socket"))
                .collect(),
        )
    }

    /// The `[cors]` table that lets the pages through.
    pub fn cors_toml(&self) -> String {
        let origins: Vec<String> = self
            .0
            .iter()
            .map(|l| {
                let port = l.local_addr().expect("addr").port();
                format!("\"http://127.0.0.1:{port}\"")
            })
            .collect();
        format!(
            "[cors]\nenabled = true\nallow_origins = [{}]\n",
            origins.join(", ")
        )
    }

    /// Hands the sockets to `cmd` as `PAGE_FDS` (inherited by that child only).
    fn pass_to(&self, cmd: &mut Command) {
        use std::os::fd::{AsRawFd, BorrowedFd};
        use std::os::unix::process::CommandExt;
        let fds: Vec<i32> = self.0.iter().map(AsRawFd::as_raw_fd).collect();
        let list: Vec<String> = fds.iter().map(i32::to_string).collect();
        cmd.env("PAGE_FDS", list.join(","));
        // SAFETY: runs in the forked child before exec and only clears FD_CLOEXEC on descriptors
        // this process owns (fcntl system calls, async-signal-safe; no allocation).
        unsafe {
            cmd.pre_exec(move || {
                for fd in &fds {
                    rustix::io::fcntl_setfd(
                        BorrowedFd::borrow_raw(*fd),
                        rustix::io::FdFlags::empty(),
                    )
                    .map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
    }
}
