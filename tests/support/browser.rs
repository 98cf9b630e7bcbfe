//! Runs the browser tests' node scripts (e2e/run.mjs, e2e/ui.mjs) and reads their verdict.

use std::path::Path;
use std::process::Command;

/// Runs `node <script>` in `e2e/` with `env` and returns the JSON verdict on the last line of its
/// stdout, failing the test (with the script's stderr) unless it exited 0 with `"ok": true`.
/// `what` names the run in the failure message.
pub fn run_e2e(script: &str, env: &[(&str, &str)], what: &str) -> serde_json::Value {
    run_e2e_with_pages(script, env, what, None)
}

/// As [`run_e2e`], with the socket the script serves its test pages from (e2e/run.mjs).
pub fn run_e2e_with_pages(
    script: &str,
    env: &[(&str, &str)],
    what: &str,
    pages: Option<&PageSocket>,
) -> serde_json::Value {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "e2e/node_modules missing: run `npm ci` in e2e/ (scripts/test does)"
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(&e2e).arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(pages) = pages {
        pages.pass_to(&mut cmd);
    }
    let out = cmd.output().expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or("");
    let verdict: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("no JSON verdict from {script} ({e}); stdout:\n{stdout}\nstderr:\n{stderr}")
    });
    assert!(
        out.status.success() && verdict["ok"] == serde_json::json!(true),
        "{what} failed: {verdict}\nstderr:\n{stderr}"
    );
    verdict
}

/// The listening socket e2e/run.mjs serves its test pages from (`PAGE_FD`). The pages are
/// another origin than the server, whose cross-site check refuses WebSockets from foreign
/// origins; binding the socket before the server starts lets a test list the pages' origin in
/// `[cors] allow_origins` ([`PageSocket::cors_toml`]) with no window for another process to take
/// the port.
pub struct PageSocket(std::net::TcpListener);

impl PageSocket {
    pub fn bind() -> PageSocket {
        PageSocket(std::net::TcpListener::bind("127.0.0.1:0").expect("bind the page socket"))
    }

    /// The `[cors]` table that lets the pages through.
    pub fn cors_toml(&self) -> String {
        let port = self.0.local_addr().expect("addr").port();
        format!("[cors]\nenabled = true\nallow_origins = [\"http://127.0.0.1:{port}\"]\n")
    }

    /// Hands the socket to `cmd` as `PAGE_FD` (inherited by that child only).
    fn pass_to(&self, cmd: &mut Command) {
        use std::os::fd::{AsRawFd, BorrowedFd};
        use std::os::unix::process::CommandExt;
        let fd = self.0.as_raw_fd();
        cmd.env("PAGE_FD", fd.to_string());
        // SAFETY: runs in the forked child before exec and only clears FD_CLOEXEC on a descriptor
        // this process owns (one fcntl system call, async-signal-safe).
        unsafe {
            cmd.pre_exec(move || {
                rustix::io::fcntl_setfd(BorrowedFd::borrow_raw(fd), rustix::io::FdFlags::empty())
                    .map_err(std::io::Error::from)
            });
        }
    }
}
