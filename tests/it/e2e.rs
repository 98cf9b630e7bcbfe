//! Browser end-to-end: headless Chromium plays the demo camera (the real binary with the shipped
//! conf.toml) through MSE over WebSocket and through hls.js, and the recorded archive through the
//! archive WebSocket, and sees the right picture: the demo clip's colour bars where they belong
//! and its frames in order at the frame rate (e2e/run.mjs, e2e/picture.mjs).
//!
//! `E2E_DEMO_CLIP=<file>` serves another clip in place of assets/demo.mp4 while the pictures are
//! still judged against the real one: with a frozen or black copy every test here must fail
//! (e2e/check-bad-clips.sh does that check).

use std::path::Path;

use crate::support::binary::ServerProcess;
use crate::support::browser::{PageSockets, demo_clip, run_e2e_with_pages};

pub(crate) const DEMO: &str = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs e2e/run.mjs for one page in `mode` (any picture that moves: `PICTURE=moving`); returns
/// its verdict, failing the test unless it passed.
pub(crate) fn run_browser_for(
    video: &str,
    pages: &PageSockets,
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
    run_e2e_with_pages("run.mjs", &env, &format!("{mode} playback"), pages)
}

/// What every run requires of the demo clip's picture.
const DEMO_PICTURE: &[(&str, &str)] = &[
    ("PICTURE", "demo"),
    ("EXPECT_SIZE", "640x360"),
    ("EXPECT_FPS", "25"),
];

/// Runs e2e/run.mjs with `jobs` (JSON objects of settings) at once in the shared browser, the
/// demo picture required of each; returns each job's verdict.
fn play_jobs(
    video: &str,
    pages: &PageSockets,
    stream_id: &str,
    jobs: serde_json::Value,
) -> Vec<serde_json::Value> {
    let jobs = jobs.to_string();
    let mut env = vec![
        ("VIDEO_ADDR", video),
        ("STREAM_ID", stream_id),
        ("TIMEOUT_S", "40"),
        ("JOBS", jobs.as_str()),
    ];
    env.extend_from_slice(DEMO_PICTURE);
    let verdict = run_e2e_with_pages("run.mjs", &env, "playback in Chromium", pages);
    let jobs = verdict["jobs"]
        .as_array()
        .expect("one verdict per job")
        .clone();
    for j in &jobs {
        assert!(j["frames"].as_u64().is_some_and(|f| f > 0), "{j}");
        assert!(j["advanced"].as_f64().is_some_and(|a| a >= 1.0), "{j}");
        assert_eq!(j["videoSize"], "640x360", "{j}");
        assert!(j["errors"].as_array().is_some_and(Vec::is_empty), "{j}");
        let p = &j["picture"];
        assert_eq!(p["ok"], true, "{j}");
        assert!(p["framesInOrder"].as_u64().is_some_and(|n| n >= 7), "{j}");
    }
    jobs
}

/// Copies the shipped config and the demo clip into `dir`, with ports set to 0 (free ports).
pub(crate) fn shipped_setup(dir: &Path) {
    let conf = std::fs::read_to_string(root().join("conf.toml")).expect("conf.toml");
    let conf = conf
        .replace("port = 8091", "port = 0")
        .replace("port = 8090", "port = 0")
        .replace("udp_port = 8189", "udp_port = 0");
    std::fs::write(dir.join("conf.toml"), conf).expect("write conf");
    std::fs::create_dir_all(dir.join("assets")).expect("assets dir");
    std::fs::copy(demo_clip(), dir.join("assets/demo.mp4")).expect("demo");
}

/// Replaces the shipped config's `[cors]` table in `dir` with one allowing the test pages.
fn allow_pages(dir: &Path, pages: &PageSockets) {
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
    let pages = PageSockets::bind(2);
    allow_pages(dir.path(), &pages);
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let jobs = play_jobs(
        &server.video,
        &pages,
        DEMO,
        serde_json::json!([{"NAME": "mse", "MODE": "mse"}, {"NAME": "hls", "MODE": "hls"}]),
    );
    assert_eq!(jobs[0]["codecs"], "avc1.4D401E,mp4a.40.2", "{}", jobs[0]);
    assert!(server.terminate());
}

crate::on_both_engines!(
    /// Archive playback in the browser from the index of either engine: pause/more cycles, `eos`,
    /// `endOfStream()`, and the element plays the requested range to its end.
    async fn chromium_plays_the_archive_to_its_end(index: &Index) {
        let tmp = tempfile::tempdir().expect("tmp");
        let pages = PageSockets::bind(1);
        let s = crate::support::InProcess::start_with_db(
            &format!(
                "[archive]\nserving = true\ndirectory = \"{}\"\nplayback_chunk_s = 3\n{}",
                tmp.path().display(),
                pages.cors_toml()
            ),
            Some(index.url.clone()),
        )
        .await;
        let id = uuid::Uuid::new_v4();
        let wall0 = 1_760_000_000_000_000i64;
        crate::playback::synthesize_from(&demo_clip(), &s.state.db, tmp.path(), id, wall0, 1).await;
        let video = s.video.clone();
        let start = (wall0 / 1_000_000).to_string();
        let jobs = serde_json::json!([{
            "MODE": "archive", "START": start, "DURATION": "10",
            "EXPECT_PAUSE": "1", "EXPECT_EOS": "1",
        }]);
        let jobs =
            tokio::task::spawn_blocking(move || play_jobs(&video, &pages, &id.to_string(), jobs))
                .await
                .expect("browser run");
        let j = &jobs[0];
        assert_eq!(j["stats"]["eos"], true, "{j}");
        assert_eq!(j["stats"]["endOfStream"], true, "{j}");
        assert_eq!(j["ended"], true, "{j}");
        // Every frame of the 10 s was given to the browser, and it played them all.
        let duration = j["duration"].as_f64().expect("duration");
        assert!((duration - 10.0).abs() < 0.1, "{j}");
        assert!(
            j["currentTime"]
                .as_f64()
                .is_some_and(|t| (t - duration).abs() < 0.1),
            "{j}"
        );
        assert!(j["stats"]["pauses"].as_u64().is_some_and(|n| n >= 3), "{j}");
        s.stop().await;
    }
);

/// With auth on, hls.js and the MSE client play the demo stream through signed URLs (the playlist
/// carries the signature on its segment and map URIs); without a signature nothing is served.
#[tokio::test(flavor = "multi_thread")]
async fn chromium_plays_signed_urls_with_auth_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let pages = PageSockets::bind(2);
    let (server, query) = signed_setup(dir.path(), &pages, "fmp4").await;
    let video = server.video.clone();
    let jobs = serde_json::json!([
        {"NAME": "mse", "MODE": "mse", "QUERY": query},
        {"NAME": "hls", "MODE": "hls", "QUERY": query},
    ]);
    let jobs = tokio::task::spawn_blocking(move || play_jobs(&video, &pages, DEMO, jobs))
        .await
        .expect("browser run");
    // Every playlist and segment request of hls.js went through the signature.
    let statuses = jobs[1]["proxy"]["statuses"]
        .as_object()
        .expect("proxy statuses");
    assert!(statuses.keys().all(|k| k == "200"), "{}", jobs[1]);
    assert!(server.terminate());
}

/// `[hls] segment_format = "mpegts"`: hls.js plays the demo stream from a version-3 playlist of
/// MPEG-TS segments (what legacy players need), through signed URLs with auth on.
#[tokio::test(flavor = "multi_thread")]
async fn chromium_plays_mpegts_hls_through_signed_urls() {
    let dir = tempfile::tempdir().expect("tmp");
    let pages = PageSockets::bind(1);
    let (server, query) = signed_setup(dir.path(), &pages, "mpegts").await;
    let playlist = reqwest::get(format!("http://{}/hls/{DEMO}.m3u8?{query}", server.video))
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(playlist.contains("#EXT-X-VERSION:3"), "{playlist}");
    assert!(!playlist.contains("EXT-X-MAP"), "{playlist}");
    let segments: Vec<&str> = playlist.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(!segments.is_empty(), "{playlist}");
    for uri in &segments {
        assert!(uri.contains(".ts?") && uri.ends_with(&query), "{uri}");
    }
    let video = server.video.clone();
    let jobs = serde_json::json!([{"NAME": "hls-ts", "MODE": "hls", "QUERY": query}]);
    let jobs = tokio::task::spawn_blocking(move || play_jobs(&video, &pages, DEMO, jobs))
        .await
        .expect("browser run");
    let statuses = jobs[0]["proxy"]["statuses"]
        .as_object()
        .expect("proxy statuses");
    assert!(statuses.keys().all(|k| k == "200"), "{}", jobs[0]);
    assert!(server.terminate());
}

/// The shipped setup with auth on and HLS segments in `segment_format`; returns the server and a
/// signed query for live viewing of the demo stream.
async fn signed_setup(
    dir: &Path,
    pages: &PageSockets,
    segment_format: &str,
) -> (ServerProcess, String) {
    shipped_setup(dir);
    allow_pages(dir, pages);
    let token_file = dir.join("admin.token");
    let admin = "e2e-admin-token-0123456789abcdef0123456789";
    std::fs::write(&token_file, admin).expect("token file");
    let path = dir.join("conf.toml");
    let conf = std::fs::read_to_string(&path).expect("conf");
    let shipped_format = "segment_format = \"fmp4\"\n";
    assert!(
        conf.contains(shipped_format),
        "the shipped [hls] segment_format"
    );
    let conf = conf.replace(
        shipped_format,
        &format!("segment_format = \"{segment_format}\"\n"),
    );
    assert!(
        conf.contains("[auth]\nenabled = false\n"),
        "the shipped [auth] table"
    );
    let conf = conf.replace(
        "[auth]\nenabled = false\n",
        &format!(
            "[auth]\nenabled = true\nadmin_token_file = \"{}\"\n",
            token_file.display()
        ),
    );
    std::fs::write(&path, conf).expect("conf");
    let server = ServerProcess::start(dir, &[], &[]);
    let c = reqwest::Client::new();
    let post = async |path: &str, token: &str, body: serde_json::Value| -> serde_json::Value {
        let r = c
            .post(format!("{}{path}", server.api))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.expect("json")
    };
    let viewer = post(
        "/api/v1/tokens",
        admin,
        serde_json::json!({"name": "wall", "streams": [DEMO], "actions": ["live"]}),
    )
    .await;
    let viewer = viewer["token"].as_str().expect("token").to_owned();
    let signed = post(
        &format!("/api/v1/streams/{DEMO}/sign"),
        &viewer,
        serde_json::json!({"actions": ["live"], "ttl_s": 600}),
    )
    .await;
    let query = signed["query"].as_str().expect("query").to_owned();
    let unsigned = c
        .get(format!("http://{}/hls/{DEMO}.m3u8", server.video))
        .send()
        .await
        .expect("get");
    assert_eq!(unsigned.status(), 401);
    (server, query)
}
