//! Browser end-to-end: the real binary with the shipped conf.toml, and headless Chromium playing the
//! demo camera through MSE over WebSocket and through hls.js (e2e/run.mjs).

use std::path::Path;
use std::process::Command;

use crate::support::binary::ServerProcess;

pub(crate) const DEMO: &str = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The listening socket e2e/run.mjs serves its pages from (`PAGE_FD`). It is bound before the
/// server starts, so the pages' origin can be listed in `[cors] allow_origins`: the server
/// refuses WebSockets from other origins, and the pages are another origin than the server.
pub(crate) struct PageSocket(std::net::TcpListener);

impl PageSocket {
    pub(crate) fn bind() -> PageSocket {
        PageSocket(std::net::TcpListener::bind("127.0.0.1:0").expect("bind the page socket"))
    }

    /// The `[cors]` table that lets the pages through.
    pub(crate) fn cors_toml(&self) -> String {
        let port = self.0.local_addr().expect("addr").port();
        format!("[cors]\nenabled = true\nallow_origins = [\"http://127.0.0.1:{port}\"]\n")
    }

    /// Hands the socket to `cmd` as `PAGE_FD` (inherited by the child only).
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

/// Runs e2e/run.mjs in one mode; returns its JSON verdict.
fn run_browser(
    video: &str,
    pages: &PageSocket,
    mode: &str,
    extra: &[(&str, &str)],
) -> serde_json::Value {
    run_browser_for(video, pages, DEMO, mode, extra)
}

fn run_browser_for(
    video: &str,
    pages: &PageSocket,
    stream_id: &str,
    mode: &str,
    extra: &[(&str, &str)],
) -> serde_json::Value {
    let e2e = root().join("e2e");
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "e2e/node_modules missing: run `npm ci` in e2e/ (scripts/test does)"
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(&e2e)
        .arg("run.mjs")
        .env("VIDEO_ADDR", video)
        .env("STREAM_ID", stream_id)
        .env("MODE", mode)
        .env("TIMEOUT_S", "40");
    pages.pass_to(&mut cmd);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    let verdict: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "no JSON verdict ({e}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && verdict["ok"] == serde_json::json!(true),
        "{mode} playback failed: {verdict}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verdict
}

/// Copies the shipped config and demo clip into `dir`, with ports set to 0 (free ports).
pub(crate) fn shipped_setup(dir: &Path) {
    let conf = std::fs::read_to_string(root().join("conf.toml")).expect("conf.toml");
    let conf = conf
        .replace("port = 8091", "port = 0")
        .replace("port = 8090", "port = 0");
    std::fs::write(dir.join("conf.toml"), conf).expect("write conf");
    std::fs::create_dir_all(dir.join("assets")).expect("assets dir");
    std::fs::copy(root().join("assets/demo.mp4"), dir.join("assets/demo.mp4")).expect("demo");
}

#[test]
fn chromium_plays_the_demo_stream_via_mse_and_hls() {
    let dir = tempfile::tempdir().expect("tmp");
    shipped_setup(dir.path());
    let pages = PageSocket::bind();
    let conf_path = dir.path().join("conf.toml");
    let conf = std::fs::read_to_string(&conf_path).expect("conf");
    assert!(
        conf.contains("[cors]\nenabled = false\n"),
        "the shipped [cors] table"
    );
    let conf = conf.replace("[cors]\nenabled = false\n", &pages.cors_toml());
    std::fs::write(&conf_path, conf).expect("conf");
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let mse = run_browser(&server.video, &pages, "mse", &[]);
    assert!(mse["frames"].as_u64().is_some_and(|f| f > 0), "{mse}");
    assert!(mse["advanced"].as_f64().is_some_and(|a| a >= 1.0), "{mse}");
    let hls = run_browser(&server.video, &pages, "hls", &[]);
    assert!(hls["frames"].as_u64().is_some_and(|f| f > 0), "{hls}");
    assert!(hls["advanced"].as_f64().is_some_and(|a| a >= 1.0), "{hls}");
    assert!(server.terminate());
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_plays_the_archive_through_a_pause_more_cycle() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pages = PageSocket::bind();
    let s = crate::support::InProcess::start(&format!(
        "[archive]\nserving = true\ndirectory = \"{}\"\nplayback_chunk_s = 20\n{}",
        tmp.path().display(),
        pages.cors_toml()
    ))
    .await;
    let id = uuid::Uuid::new_v4();
    let wall0 = 1_760_000_000_000_000i64;
    crate::playback::synthesize(&s.state.db, tmp.path(), id, wall0, 3).await;
    let video = s.video.clone();
    let start = (wall0 / 1_000_000).to_string();
    let verdict = tokio::task::spawn_blocking(move || {
        run_browser_for(
            &video,
            &pages,
            &id.to_string(),
            "archive",
            &[("START", &start), ("DURATION", "70"), ("EXPECT_PAUSE", "1")],
        )
    })
    .await
    .expect("browser run");
    assert!(
        verdict["frames"].as_u64().is_some_and(|f| f > 0),
        "{verdict}"
    );
    assert!(
        verdict["advanced"].as_f64().is_some_and(|a| a >= 1.0),
        "{verdict}"
    );
    let _ = s.stop().await;
}
