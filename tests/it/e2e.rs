//! Browser end-to-end: the real binary with the shipped conf.toml, and headless Chromium playing the
//! demo camera through MSE over WebSocket and through hls.js (e2e/run.mjs).

use std::path::Path;

use crate::support::binary::ServerProcess;
use crate::support::browser::PageSocket;

pub(crate) const DEMO: &str = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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

pub(crate) fn run_browser_for(
    video: &str,
    pages: &PageSocket,
    stream_id: &str,
    mode: &str,
    extra: &[(&str, &str)],
) -> serde_json::Value {
    let mut env = vec![
        ("VIDEO_ADDR", video),
        ("STREAM_ID", stream_id),
        ("MODE", mode),
        ("TIMEOUT_S", "40"),
    ];
    env.extend_from_slice(extra);
    crate::support::browser::run_e2e_with_pages(
        "run.mjs",
        &env,
        &format!("{mode} playback"),
        Some(pages),
    )
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

/// Replaces the shipped config's `[cors]` table in `dir` with one allowing the test pages.
fn allow_pages(dir: &Path, pages: &PageSocket) {
    let path = dir.join("conf.toml");
    let conf = std::fs::read_to_string(&path).expect("conf");
    assert!(
        conf.contains("[cors]\nenabled = false\n"),
        "the shipped [cors] table"
    );
    let conf = conf.replace("[cors]\nenabled = false\n", &pages.cors_toml());
    std::fs::write(&path, conf).expect("conf");
}

#[test]
fn chromium_plays_the_demo_stream_via_mse_and_hls() {
    let dir = tempfile::tempdir().expect("tmp");
    shipped_setup(dir.path());
    let pages = PageSocket::bind();
    allow_pages(dir.path(), &pages);
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
