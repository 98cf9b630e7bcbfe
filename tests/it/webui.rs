//! The built-in web UI, used the way an operator would in headless Chromium (e2e/ui.mjs): the
//! real binary with the shipped conf.toml, the GStreamer RTSP test server as the camera to add.
//!
//! Screenshots go to `target/tmp/ui-screenshots/`; with `UPDATE_SCREENSHOTS=1` they replace the
//! committed ones in `docs/screenshots/` (shown in the README).

use std::path::{Path, PathBuf};

use crate::e2e::{DEMO, shipped_setup};
use crate::support::binary::ServerProcess;
use crate::support::media::{RtspServer, ffprobe};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn screenshots_dir() -> PathBuf {
    if std::env::var("UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        root().join("docs/screenshots")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots")
    }
}

/// Runs e2e/ui.mjs with `scenarios` against the UI at `url`; returns its JSON verdict, failing the
/// test (with the runner's log) unless every scenario passed.
fn run_ui(url: &str, scenarios: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let mut all = vec![
        ("UI_URL", url),
        ("SCENARIOS", scenarios),
        ("STREAM_ID", DEMO),
    ];
    all.extend_from_slice(env);
    crate::support::browser::run_e2e("ui.mjs", &all, "web UI scenarios")
}

#[test]
fn operator_watches_adds_a_camera_scrubs_the_archive_and_exports() {
    let dir = tempfile::tempdir().expect("tmp");
    shipped_setup(dir.path());
    let rtsp = RtspServer::start(0);
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let shots = screenshots_dir();
    let export = dir.path().join("export.mp4");
    let v = run_ui(
        &format!("http://{}/", server.video),
        "grid,cameras,archive,phone,system,a11y",
        &[
            ("RTSP_URL", &rtsp.url("test")),
            ("SHOTS_DIR", &shots.display().to_string()),
            ("EXPORT_PATH", &export.display().to_string()),
        ],
    );
    let s = &v["scenarios"];
    // The grid played the demo over WebRTC (the first transport) at its real size.
    assert!(s["grid"]["frames"].as_u64().is_some_and(|f| f > 50), "{v}");
    assert!(
        s["grid"]["advanced"].as_f64().is_some_and(|a| a >= 1.0),
        "{v}"
    );
    assert_eq!(s["grid"]["transport"], "webrtc", "{v}");
    // A new user's wait: from the player's first connection to the first picture, over WebRTC
    // with no fallback. Issue 16 asks for < 0.5 s (measured here: see the printed value); the
    // bound leaves room for a loaded 2-core machine running other tests.
    let first = &s["grid"]["firstPicture"];
    eprintln!("grid: first picture {first}");
    assert_eq!(first["transport"], "webrtc", "{v}");
    assert_eq!(first["fallbacks"], 0, "{v}");
    assert!(first["ms"].as_f64().is_some_and(|ms| ms < 1500.0), "{v}");
    assert_eq!(s["grid"]["videoSize"], "640x360", "{v}");
    // The tests' picture checks (e2e/picture.mjs) judged the grid tile and the archive picture
    // against the demo clip; they passed, or the runner would have failed.
    assert!(
        s["grid"]["picture"]["framesInOrder"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{v}"
    );
    assert!(
        s["archive"]["picture"]["framesInOrder"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{v}"
    );
    // The form showed the API's own message next to the URL field.
    assert_eq!(
        s["cameras"]["urlError"], "source.url must start with rtsp:// or rtsps://",
        "{v}"
    );
    assert_eq!(s["cameras"]["videoSize"], "640x360", "{v}");
    assert_eq!(s["cameras"]["restartReason"], "Stream stopped", "{v}");
    // The archive label matched the clicked instant and moved with the picture.
    assert!(
        s["archive"]["labelErrorS"]
            .as_f64()
            .is_some_and(|e| e.abs() <= 2.0),
        "{v}"
    );
    assert_eq!(s["archive"]["snapshot"], "640x360", "{v}");
    // The timeline opened on the last 24 h and the zoom button brought it to 10 minutes.
    assert_eq!(s["archive"]["openSpanH"], 24, "{v}");
    assert_eq!(s["archive"]["zoomedSpanMin"], 10, "{v}");
    // A protected range was added, then edited (a new reason, an end 3 s earlier: one range
    // replacing the other) and removed.
    let protected_s = s["archive"]["protectedS"].as_f64().expect("protectedS");
    let edited_s = s["archive"]["protectedEditedS"]
        .as_f64()
        .expect("protectedEditedS");
    assert!(
        (protected_s - 3.0 - edited_s).abs() <= 1.0,
        "protected {protected_s} s, {edited_s} s after the edit"
    );
    // At phone width every page checked fit the screen with its controls usable.
    for page in ["grid", "camera", "cameras", "form"] {
        assert!(
            s["phone"][page]["scrollWidth"]
                .as_u64()
                .is_some_and(|w| w <= 390),
            "{page}: {v}"
        );
    }
    // The exported selection is a valid MP4 as long as the selection (±1 s).
    let selection_s = s["archive"]["selectionS"].as_f64().expect("selectionS");
    let probe = ffprobe(&export.display().to_string());
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("ffprobe found no duration: {probe}"));
    assert!(
        (duration - selection_s).abs() <= 1.0,
        "export lasts {duration} s for a {selection_s} s selection"
    );
    let video = probe["streams"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["codec_type"] == "video"))
        .unwrap_or_else(|| panic!("no video stream in the export: {probe}"));
    assert_eq!(video["codec_name"], "h264", "{probe}");

    // Loaded from the API listener, the same page reaches the video listener (CORS for our own
    // origins, WebSockets to the other port) and plays.
    let from_api = run_ui(&format!("{}/", server.api), "grid", &[]);
    assert_eq!(
        from_api["scenarios"]["grid"]["transport"], "webrtc",
        "{from_api}"
    );
    assert!(server.terminate());
}

/// The players a tile falls back to or must survive, each judged on its picture: a camera with
/// only the HLS output plays through the vendored hls.js (the demo clip, frames in order), and a
/// camera that switches from 640x360 to 320x180 mid-stream (same codec string, a new init
/// segment) keeps playing in its MSE tile at the new size.
#[test]
fn tiles_fall_back_to_hls_js_and_play_through_a_resolution_switch() {
    let dir = tempfile::tempdir().expect("tmp");
    shipped_setup(dir.path());
    // WebRTC off: the switch must go through the MSE player's new-init-segment path (with WebRTC
    // on, the tile would prefer it).
    let conf = std::fs::read_to_string(dir.path().join("conf.toml")).expect("conf");
    let conf = conf.replace("[webrtc]\nenabled = true\n", "[webrtc]\nenabled = false\n");
    assert!(
        conf.contains("[webrtc]\nenabled = false\n"),
        "the shipped conf.toml has a [webrtc] section"
    );
    std::fs::write(dir.path().join("conf.toml"), conf).expect("conf");
    let clip = crate::codec_switch::switching_clip(dir.path());
    let rtsp = RtspServer::start_with_file(0, &clip);
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let demo = dir.path().join("assets/demo.mp4");
    let v = run_ui(
        &format!("http://{}/", server.video),
        "fallback,switch",
        &[
            ("FILE_PATH", &demo.display().to_string()),
            ("SWITCH_RTSP_URL", &rtsp.url("file")),
        ],
    );
    eprintln!("fallback and switch: {v}");
    let f = &v["scenarios"]["fallback"];
    assert_eq!(f["transport"], "hls.js", "{v}");
    assert_eq!(f["hlsJs"], true, "{v}");
    assert_eq!(f["videoSize"], "640x360", "{v}");
    assert!(
        f["picture"]["framesInOrder"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{v}"
    );
    let sw = &v["scenarios"]["switch"];
    assert_eq!(sw["transport"], "mse", "{v}");
    let mut sizes: Vec<&str> = sw["sizes"]
        .as_array()
        .expect("sizes")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, ["320x180", "640x360"], "{v}");
    assert_ne!(sw["firstSize"], sw["newSize"], "{v}");
    assert!(sw["framesAfter"].as_u64().is_some_and(|n| n >= 10), "{v}");
    // The picture after the switch was judged (real, changing, real time) at the new size.
    assert!(
        sw["picture"]["window"].as_u64().is_some_and(|n| n >= 8),
        "{v}"
    );
    assert!(server.terminate());
}

/// With access control on, the page asks for a token (a wrong one is refused), keeps it for the
/// tab, plays live through signed URLs and exports through a signed link.
///
/// The tile's picture is judged against the demo clip (e2e/picture.mjs), like the grid's.
#[test]
fn with_auth_on_the_ui_asks_for_a_token_and_plays_through_signed_urls() {
    let dir = tempfile::tempdir().expect("tmp");
    shipped_setup(dir.path());
    let admin = "webui-e2e-admin-token-0123456789abcdef0123";
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, admin).expect("token file");
    let conf = std::fs::read_to_string(dir.path().join("conf.toml")).expect("conf");
    let conf = conf.replace(
        "[auth]\nenabled = false\n",
        &format!(
            "[auth]\nenabled = true\nadmin_token_file = \"{}\"\n",
            token_file.display()
        ),
    );
    assert!(
        conf.contains("admin_token_file"),
        "the shipped conf.toml has an [auth] section"
    );
    std::fs::write(dir.path().join("conf.toml"), conf).expect("conf");
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let v = run_ui(
        &format!("http://{}/", server.video),
        "auth",
        &[("TOKEN", admin)],
    );
    let a = &v["scenarios"]["auth"];
    assert!(
        a["refusedText"]
            .as_str()
            .is_some_and(|t| t.contains("refused")),
        "{v}"
    );
    assert_eq!(a["transport"], "webrtc", "{v}");
    assert!(
        a["picture"]["framesInOrder"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{v}"
    );
    assert!(
        a["signedExportUrl"]
            .as_str()
            .is_some_and(|u| u.contains("sig=")),
        "{v}"
    );
    assert!(server.terminate());
}

/// 16 tiles of the demo clip in the grid (4 × 4 at 1280 × 720) play smoothly: every tile decodes
/// and shows a moving picture without stalling. The numbers (decoded and shown frames per second
/// per tile, the longest stall) are printed; docs/benchmarks.md has a run. Every tile plays over
/// WebRTC, the player's first path (16 sessions).
#[test]
fn sixteen_demo_tiles_all_play() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut conf = crate::support::binary::base_config().replace(
        "[archive]\nserving = true\n",
        "[archive]\nserving = true\nrecording = false\n",
    );
    for i in 0..16u128 {
        let id = uuid::Uuid::from_u128(0x13bf3e5c_d537_4f10_98e8_9d0afca8b000 + i);
        conf.push_str(&format!(
            "\n[[local_files]]\nguid = \"{id}\"\nname = \"Demo {:02}\"\nfile = \"assets/demo.mp4\"\n\
             output_types = [\"mse\"]\nloop = true\n",
            i + 1
        ));
    }
    std::fs::write(dir.path().join("conf.toml"), conf).expect("conf");
    std::fs::create_dir_all(dir.path().join("assets")).expect("assets");
    std::fs::copy(
        crate::support::browser::demo_clip(),
        dir.path().join("assets/demo.mp4"),
    )
    .expect("demo");
    let server = ServerProcess::start(dir.path(), &["--conf", "conf.toml"], &[]);
    let shots = screenshots_dir();
    let v = run_ui(
        &format!("http://{}/", server.video),
        "tiles",
        &[
            ("TILES_EXPECTED", "16"),
            // The picture probe on the first tile only: drawing all 16 videos a few times a
            // second would skew the measurement.
            ("PICTURE_VIDEOS", "1"),
            ("MEASURE_S", "10"),
            ("SHOTS_DIR", &shots.display().to_string()),
        ],
    );
    let t = &v["scenarios"]["tiles"];
    eprintln!(
        "16 tiles: decoded fps per tile min {} median {} max {}, shown fps min {} median {}, \
         longest stall of a tile {} ms (of the whole page {} ms), dropped {} in {} s",
        t["minFps"],
        t["medianFps"],
        t["maxFps"],
        t["minShownFps"],
        t["medianShownFps"],
        t["maxStallMs"],
        t["pageMaxGapMs"],
        t["droppedTotal"],
        t["measureS"]
    );
    eprintln!("16 tiles per tile: {}", t["perTile"]);
    assert_eq!(t["tiles"], 16, "{v}");
    // Every tile over WebRTC, the player's first choice (measured: 25 decoded frames/s on each
    // of the 16, a little better than MSE's ~20 on this machine, so the grid needs no other
    // rule for many tiles).
    assert_eq!(t["transports"], serde_json::json!({"webrtc": 16}), "{v}");
    // Smooth: the clip is 25 fps; with 16 software decoders on a loaded 2-core machine the tiles
    // keep 18-23 decoded frames per second each and none goes 0.5 s without a new frame on screen
    // while the others play (docs/benchmarks.md). The floors leave room for a busier CI machine, yet a tile that
    // stutters (a stall of a second), crawls, or shows a frozen or blank picture (its counter
    // crops unchanged: a frozen clip still decodes at full rate) fails.
    assert!(
        t["medianFps"].as_f64().is_some_and(|f| f >= 12.0),
        "median tile {} fps: {v}",
        t["medianFps"]
    );
    // The browser itself may render nothing for a moment on a starved machine (every tile
    // waits alike; a shared headless browser skips a page's frames for a second at times): that
    // is not a tile stalling, but the page must not freeze for longer.
    assert!(
        t["pageMaxGapMs"].as_u64().is_some_and(|ms| ms <= 2000),
        "the page rendered nothing for {} ms: {v}",
        t["pageMaxGapMs"]
    );
    let measure_s = t["measureS"].as_f64().expect("measureS");
    for (i, tile) in t["perTile"].as_array().expect("perTile").iter().enumerate() {
        assert!(
            tile["fps"].as_f64().is_some_and(|f| f >= 8.0),
            "tile {i}: {v}"
        );
        assert!(
            tile["ownStallMs"].as_u64().is_some_and(|ms| ms <= 1000),
            "tile {i} stalled: {v}"
        );
        assert!(
            tile["advanced"]
                .as_f64()
                .is_some_and(|a| a >= 0.6 * measure_s),
            "tile {i}: {v}"
        );
        assert!(
            tile["cropPairs"].as_u64().is_some_and(|n| n >= 4),
            "tile {i}: {v}"
        );
        assert_eq!(
            tile["pictureChanges"], tile["cropPairs"],
            "tile {i}'s picture froze: {v}"
        );
        assert_eq!(tile["blankCrops"], 0, "tile {i} went blank: {v}");
    }
    // The first tile shows the demo clip (a frozen or black clip fails here).
    assert!(
        t["picture"]["framesInOrder"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{v}"
    );
    assert!(server.terminate());
}

// ---------------------------------------------------------------------------------------------
// What the UI relies on, checked on the routers: the page and its files on both listeners,
// `/api/v1/server`, `/api/v1/storage`, CORS for the server's own origins.

mod routes {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::json;
    use uuid::Uuid;
    use video_server::api::{AppState, ListenerPorts};

    use crate::both_engines;
    use crate::support::{Reply, TestDb, config, get, send, send_json, state};

    const PORTS: ListenerPorts = ListenerPorts {
        video: 18090,
        api: Some(18091),
    };

    async fn ui_state(t: &TestDb) -> AppState {
        let mut s = state(&t.db, config("[archive]\nserving = true\n")).await;
        s.listeners = PORTS;
        s
    }

    fn apps(s: &AppState) -> [(&'static str, axum::Router); 2] {
        [
            ("video", video_server::live::app(s.clone())),
            ("api", video_server::api::app(s.clone())),
        ]
    }

    both_engines!(
        async fn both_listeners_serve_the_page_its_files_and_server_info(t: &TestDb) {
            let s = ui_state(t).await;
            for (name, app) in apps(&s) {
                let req = Request::get("/")
                    .header("host", "nvr.lan:18090")
                    .body(Body::empty())
                    .expect("req");
                let Reply {
                    status,
                    headers: h,
                    body,
                } = send(app.clone(), req).await;
                assert_eq!(status, StatusCode::OK, "{name}");
                assert_eq!(h["content-type"], "text/html; charset=utf-8", "{name}");
                let csp = h["content-security-policy"].to_str().expect("csp");
                assert!(csp.contains("script-src 'self'"), "{name}: {csp}");
                assert!(csp.contains("ws://nvr.lan:18090"), "{name}: {csp}");
                assert!(csp.contains("http://nvr.lan:18091"), "{name}: {csp}");
                let html = String::from_utf8(body).expect("utf-8");
                assert!(html.contains("ui/js/app.js"), "{name}");

                // A module, with an ETag that revalidates to 304.
                let req = Request::get("/ui/js/player.js")
                    .body(Body::empty())
                    .expect("req");
                let Reply {
                    status,
                    headers: h,
                    body,
                } = send(app.clone(), req).await;
                assert_eq!(status, StatusCode::OK, "{name}");
                assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
                assert!(String::from_utf8_lossy(&body).contains("export class LivePlayer"));
                let etag = h["etag"].clone();
                let req = Request::get("/ui/js/player.js")
                    .header("if-none-match", etag)
                    .body(Body::empty())
                    .expect("req");
                let Reply { status, body, .. } = send(app.clone(), req).await;
                assert_eq!(status, StatusCode::NOT_MODIFIED, "{name}");
                assert!(body.is_empty());

                // hls.js is vendored, no CDN.
                let req = Request::get("/ui/vendor/hls.light.min.mjs")
                    .body(Body::empty())
                    .expect("req");
                let Reply { status, body, .. } = send(app.clone(), req).await;
                assert_eq!(status, StatusCode::OK, "{name}");
                assert!(
                    body.len() > 100_000,
                    "{name}: hls.js is {} bytes",
                    body.len()
                );

                for missing in ["/ui/nope.js", "/ui/../Cargo.toml", "/ui/%2e%2e/Cargo.toml"] {
                    let req = Request::get(missing).body(Body::empty()).expect("req");
                    let Reply { status, .. } = send(app.clone(), req).await;
                    assert_eq!(status, StatusCode::NOT_FOUND, "{name} {missing}");
                }

                let req = Request::get("/api/v1/server")
                    .body(Body::empty())
                    .expect("req");
                let Reply { status, body, .. } = send(app, req).await;
                assert_eq!(status, StatusCode::OK, "{name}");
                let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
                assert_eq!(v["name"], "video-server");
                assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
                assert_eq!(
                    v["listeners"],
                    json!({"video_port": 18090, "api_port": 18091})
                );
                assert_eq!(v["auth"], "off");
                assert_eq!(v["features"]["archive_serving"], true);
                // Router tests start no WebRTC engine (the real server does: tests/it/webrtc.rs).
                assert_eq!(v["features"]["webrtc"], false);
                let server_ms =
                    chrono::DateTime::parse_from_rfc3339(v["time"].as_str().expect("time"))
                        .expect("RFC 3339")
                        .timestamp_millis();
                assert!((server_ms - chrono::Utc::now().timestamp_millis()).abs() < 5_000);
            }
        }
    );

    both_engines!(
        async fn cors_allows_our_own_listener_origins_and_nothing_else_by_default(t: &TestDb) {
            let s = ui_state(t).await;
            for (name, app) in apps(&s) {
                for (origin, host, allowed) in [
                    ("http://nvr.lan:18090", "nvr.lan:18091", true),
                    ("http://nvr.lan:18091", "nvr.lan:18090", true),
                    ("http://evil.example:18090", "nvr.lan:18091", false),
                    ("http://nvr.lan:9999", "nvr.lan:18091", false),
                ] {
                    // A preflight for what the UI sends: PUT with JSON and a bearer token.
                    let req = Request::options("/api/v1/server")
                        .header("host", host)
                        .header("origin", origin)
                        .header("access-control-request-method", "PUT")
                        .header(
                            "access-control-request-headers",
                            "content-type,authorization",
                        )
                        .body(Body::empty())
                        .expect("req");
                    let Reply { headers: h, .. } = send(app.clone(), req).await;
                    let got = h
                        .get("access-control-allow-origin")
                        .map(|v| v.to_str().expect("ascii"));
                    assert_eq!(got, allowed.then_some(origin), "{name}: {origin} on {host}");
                    if allowed {
                        let headers = h["access-control-allow-headers"].to_str().expect("ascii");
                        assert!(headers.contains("authorization"), "{name}: {headers}");
                        assert!(
                            h["access-control-allow-methods"]
                                .to_str()
                                .expect("ascii")
                                .contains("PUT")
                        );
                    }
                }
            }
        }
    );

    both_engines!(
        async fn storage_sums_each_streams_recordings_from_the_runs(t: &TestDb) {
            let s = ui_state(t).await;
            let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo.mp4");
            let created = send_json(
                &s,
                "POST",
                "/api/v1/streams",
                &json!({"name": "Yard", "enabled": false,
                        "source": {"kind": "file", "path": demo.display().to_string()},
                        "retention": {"max_age_s": 86400}}),
            )
            .await;
            assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
            let yard: Uuid = created.json()["id"]
                .as_str()
                .expect("id")
                .parse()
                .expect("uuid");
            let gone = Uuid::new_v4();
            let base = 1_766_224_800_000_000i64;
            crate::v1_archive::record(t, yard, base, base + 30_000_000, 1000).await;
            crate::v1_archive::record(t, yard, base + 30_000_000, base + 60_000_000, 500).await;
            // A second run after a gap.
            crate::v1_archive::record(t, yard, base + 600_000_000, base + 630_000_000, 250).await;
            crate::v1_archive::record(t, gone, base, base + 10_000_000, 42).await;

            let r = get(&s, "/api/v1/storage").await;
            assert_eq!(r.status, StatusCode::OK);
            let v = r.json();
            assert_eq!(v["total_bytes"], 1792, "{v}");
            assert_eq!(v["retention"]["interval_s"], 60, "{v}");
            let streams = v["streams"].as_array().expect("streams");
            assert_eq!(streams.len(), 2, "{v}");
            let y = streams
                .iter()
                .find(|x| x["stream_id"] == yard.to_string())
                .expect("yard");
            assert_eq!(y["name"], "Yard");
            assert_eq!(y["bytes"], 1750);
            assert_eq!(y["segment_count"], 3);
            assert_eq!(y["first"], "2025-12-20T10:00:00.000Z");
            assert_eq!(y["last"], "2025-12-20T10:10:30.000Z");
            assert_eq!(y["max_age_s"], 86400);
            let g = streams
                .iter()
                .find(|x| x["stream_id"] == gone.to_string())
                .expect("gone");
            assert_eq!(
                g["name"],
                serde_json::Value::Null,
                "a deleted stream has no name"
            );
            assert_eq!(g["bytes"], 42);
        }
    );
}
