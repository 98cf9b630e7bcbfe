//! Documented behaviours that had no test (issue 15, "Test coverage map" in docs/testing.md), each
//! against the real components: the GStreamer RTSP test server as the camera, the server in
//! process on real sockets, SQLite and Postgres where the index takes part.
//!
//! README "Live video": on-demand streams start on an MSE viewer or an HLS request and stop
//! `idle_ms` after the last one; idle on-demand cameras are probed (`[on_demand] health_check`);
//! a viewer of a camera that never answers is closed with `Timeout waiting for codec
//! information`; a stopped stream (disabled, restarted, server shut down) closes its viewers with
//! 1001 `Stream stopped`; RTSP over UDP. README "Archive playback": `Too many archive sessions`,
//! `Failed to list archive segments`.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::e2e::DEMO;
use crate::support::InProcess;
use crate::support::media::{RtspServer, eventually, ffmpeg_decode_errors, watch_live, write_mp4};
use crate::support::ports::ClosedPort;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An `[[rtsp_streams]]` entry; `extra` are more `key = value` lines.
fn rtsp_entry(id: Uuid, url: &str, extra: &str) -> String {
    format!(
        "[[rtsp_streams]]\nguid = \"{id}\"\nurl = \"{url}\"\noutput_types = [\"mse\", \"hls\"]\n{extra}\n"
    )
}

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket upgrade")
        .0
}

/// Reads until the server's close frame; returns its code and reason (`None`: the connection
/// ended without one). Fails after `timeout`.
async fn close_of(ws: &mut Ws, timeout: Duration) -> Option<(u16, String)> {
    let read = async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(f)) => {
                    return f.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(timeout, read)
        .await
        .expect("the server closes the socket in time")
}

/// The first binary message (the `0x09` codec message of a live viewer), within `timeout`.
async fn first_binary(ws: &mut Ws, timeout: Duration) -> Vec<u8> {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return b.to_vec(),
                Some(Ok(Message::Close(f))) => panic!("closed before any media: {f:?}"),
                Some(Ok(_)) => {}
                other => panic!("connection ended before any media: {other:?}"),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .expect("media arrives in time")
}

/// How long after `since` the camera's client count reported 0 for good (the source's RTSP
/// session really closed), polling the test server's reports for up to `timeout`.
async fn camera_released(rtsp: &RtspServer, since: Instant, timeout: Duration) -> Duration {
    eventually("the camera connection to close", timeout, || {
        let history = rtsp.client_history();
        let &(at, n) = history.last()?;
        (n == 0 && at >= since).then_some(at.saturating_duration_since(since))
    })
    .await
}

// ----- on demand ----------------------------------------------------------------------------------

/// An on-demand camera is not pulled until someone watches; an MSE viewer starts it (the viewer
/// gets the codec message), and `idle_ms` after the viewer leaves the camera connection closes,
/// not before. The same for HLS: a playlist request starts it, and it stops `idle_ms` after the
/// last request.
#[tokio::test(flavor = "multi_thread")]
async fn on_demand_starts_for_mse_and_hls_and_stops_idle_ms_after_the_last_one() {
    const IDLE: Duration = Duration::from_millis(2500);
    let rtsp = RtspServer::start(0);
    let id = Uuid::new_v4();
    let s = InProcess::start(&format!(
        "[archive]\nrecording = false\n[on_demand]\nenabled = true\nidle_ms = {}\n\
         [hls]\nms_per_segment = 1000\n{}",
        IDLE.as_millis(),
        rtsp_entry(id, &rtsp.url("test"), "")
    ))
    .await;
    let streaming = || s.state.manager.status(id).map(|st| st.streaming);
    // Idle: listed, not pulled (the camera has reported its clients at least once).
    eventually(
        "the camera's first client report",
        Duration::from_secs(5),
        || (!rtsp.client_history().is_empty()).then_some(()),
    )
    .await;
    assert_eq!(rtsp.clients(), 0, "pulled without a viewer");
    assert_eq!(streaming(), Some(false));

    // 1. An MSE viewer starts it.
    let mut ws = connect(&format!("ws://{}/ws/live?stream_id={id}", s.video)).await;
    let codec = first_binary(&mut ws, Duration::from_secs(15)).await;
    assert_eq!(codec.first(), Some(&0x09), "the codec message");
    assert_eq!(streaming(), Some(true));
    eventually("the camera pulled", Duration::from_secs(5), || {
        (rtsp.clients() >= 1).then_some(())
    })
    .await;
    // The viewer leaves: the camera is released idle_ms later (the idle check runs every 250 ms).
    ws.send(Message::Close(None)).await.expect("close");
    drop(ws);
    let left = Instant::now();
    let after = camera_released(&rtsp, left, IDLE + Duration::from_secs(10)).await;
    assert!(
        after >= IDLE - Duration::from_millis(300),
        "released {after:?} after the viewer left, idle_ms is {IDLE:?}"
    );
    eventually("status not streaming", Duration::from_secs(5), || {
        (streaming() == Some(false)).then_some(())
    })
    .await;

    // 2. An HLS request starts it (the first playlist request waits for the first segment; a
    // camera slower than that gets a 404 and the player asks again).
    let playlist = format!("http://{}/hls/{id}.m3u8", s.video);
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let r = reqwest::get(&playlist).await.expect("playlist");
        if r.status() == 200 {
            break r.text().await.expect("text");
        }
        assert!(Instant::now() < deadline, "no playlist: {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(text.contains("#EXT-X-MAP"), "{text}");
    assert_eq!(streaming(), Some(true));
    // Requests keep it wanted: polled for longer than idle_ms, it stays up.
    // `last_request` is taken when the last answer has arrived: the server saw the request
    // before that, so the release delay measured from here is never longer than the real one.
    let polled_from = Instant::now();
    let mut last_request = polled_from;
    while polled_from.elapsed() < IDLE + Duration::from_secs(1) {
        let r = reqwest::get(&playlist).await.expect("playlist");
        last_request = Instant::now();
        assert_eq!(r.status(), 200);
        assert_eq!(streaming(), Some(true), "stopped while HLS is requested");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = camera_released(&rtsp, last_request, IDLE + Duration::from_secs(10)).await;
    assert!(
        after >= IDLE - Duration::from_millis(300),
        "released {after:?} after the last request, idle_ms is {IDLE:?}"
    );
    s.stop().await;
}

/// `[on_demand] health_check`: an idle on-demand camera is probed (RTSP DESCRIBE) every
/// `health_interval_ms` without being pulled: `online` follows the camera going down and coming
/// back, `last_health_error` names the failure's category, `last_health_check` moves on.
#[tokio::test(flavor = "multi_thread")]
async fn idle_on_demand_cameras_are_probed() {
    let mut rtsp = RtspServer::start(0);
    let closed = ClosedPort::new();
    let (id, dead) = (Uuid::new_v4(), Uuid::new_v4());
    let s = InProcess::start(&format!(
        "[archive]\nrecording = false\n[on_demand]\nenabled = true\nhealth_check = true\n\
         health_interval_ms = 300\nhealth_timeout_ms = 2000\n{}{}",
        rtsp_entry(id, &rtsp.url("test"), ""),
        rtsp_entry(dead, &format!("rtsp://127.0.0.1:{}/x", closed.port), "")
    ))
    .await;
    let status = |id: Uuid| s.state.manager.status(id).expect("listed");
    let online_since = |id: Uuid, since: chrono::DateTime<chrono::Utc>, want: bool| {
        let st = status(id);
        let checked = st.last_health_check.is_some_and(|t| t > since);
        (checked && st.online == want).then_some(st)
    };
    let t0 = chrono::Utc::now();
    let up = eventually("a successful probe", Duration::from_secs(10), || {
        online_since(id, t0, true)
    })
    .await;
    assert_eq!(up.last_health_error, "", "{up:?}");
    assert!(!up.streaming, "a probe does not start the stream");
    let refused = eventually("a failed probe", Duration::from_secs(10), || {
        online_since(dead, t0, false)
    })
    .await;
    assert!(!refused.last_health_error.is_empty(), "{refused:?}");
    assert!(!refused.streaming);

    // The camera goes down: the next probe says so.
    rtsp.command("down");
    let t1 = chrono::Utc::now();
    let down = eventually(
        "the outage seen by a probe",
        Duration::from_secs(10),
        || online_since(id, t1, false),
    )
    .await;
    assert!(!down.last_health_error.is_empty(), "{down:?}");
    // Back: online again, the error cleared.
    rtsp.command("up");
    let t2 = chrono::Utc::now();
    let back = eventually("the camera back", Duration::from_secs(10), || {
        online_since(id, t2, true)
    })
    .await;
    assert_eq!(back.last_health_error, "", "{back:?}");
    // Probes come and go: no session is held open between them.
    eventually(
        "no camera session between probes",
        Duration::from_secs(5),
        || (rtsp.clients() == 0).then_some(()),
    )
    .await;
    assert!(!status(id).streaming);
    s.stop().await;
}

// ----- close reasons -------------------------------------------------------------------------------

/// A viewer of a camera that never delivers codec parameters is closed after 10 s with the Go
/// reason, not left hanging.
#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_of_a_silent_camera_times_out_waiting_for_codecs() {
    let closed = ClosedPort::new();
    let id = Uuid::new_v4();
    let s = InProcess::start(&format!(
        "[archive]\nrecording = false\n{}",
        rtsp_entry(id, &format!("rtsp://127.0.0.1:{}/x", closed.port), "")
    ))
    .await;
    let mut ws = connect(&format!("ws://{}/ws/live?stream_id={id}", s.video)).await;
    let t = Instant::now();
    let close = close_of(&mut ws, Duration::from_secs(20)).await;
    assert_eq!(
        close,
        Some((1011, "Timeout waiting for codec information".to_owned()))
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "closed after {waited:?}, the wait is 10 s"
    );
    s.stop().await;
}

/// A stopped stream closes its viewers at once with 1001 `Stream stopped`: when it is disabled,
/// restarted with new settings through the API, and when the server shuts down.
#[tokio::test(flavor = "multi_thread")]
async fn viewers_get_1001_on_disable_restart_and_shutdown() {
    let s = InProcess::start("[archive]\nrecording = false\n").await;
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo.mp4");
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/api/v1/streams", s.api))
        .json(&json!({"name": "Demo", "outputs": ["mse"], "archive": {"recording": false},
                      "source": {"kind": "file", "path": demo.display().to_string(), "loop": true}}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let id: Uuid = r.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let url = format!("ws://{}/ws/live?stream_id={id}", s.video);
    let patch = |body: serde_json::Value| {
        c.patch(format!("{}/api/v1/streams/{id}", s.api))
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
    };
    let stopped = Some((1001, "Stream stopped".to_owned()));

    for (what, change) in [
        ("disabled", json!({"enabled": false})),
        ("restarted", json!({"on_demand": false})),
    ] {
        let mut ws = connect(&url).await;
        first_binary(&mut ws, Duration::from_secs(15)).await;
        let t = Instant::now();
        let r = patch(change).await.expect("patch");
        assert_eq!(r.status(), 200, "{what}");
        assert_eq!(
            close_of(&mut ws, Duration::from_secs(5)).await,
            stopped,
            "{what}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{what}: {:?}",
            t.elapsed()
        );
        if what == "disabled" {
            let r = patch(json!({"enabled": true})).await.expect("enable");
            assert_eq!(r.status(), 200);
        }
    }

    let mut ws = connect(&url).await;
    first_binary(&mut ws, Duration::from_secs(15)).await;
    let stop = tokio::spawn(s.stop());
    assert_eq!(
        close_of(&mut ws, Duration::from_secs(5)).await,
        stopped,
        "shutdown"
    );
    stop.await.expect("stopped");
}

// ----- UDP ----------------------------------------------------------------------------------------

/// `transport = "udp"`: the stream plays from a camera that offers RTP over UDP only (the test
/// server refuses interleaved TCP), and the same camera with the default TCP does not.
#[tokio::test(flavor = "multi_thread")]
async fn rtsp_over_udp_plays_from_a_udp_only_camera() {
    let rtsp = RtspServer::start_only("udp");
    let (udp, tcp) = (Uuid::new_v4(), Uuid::new_v4());
    let s = InProcess::start(&format!(
        "[archive]\nrecording = false\n{}{}",
        rtsp_entry(udp, &rtsp.url("test"), "transport = \"udp\""),
        rtsp_entry(tcp, &rtsp.url("test"), "")
    ))
    .await;
    let r = watch_live(&s.video, &udp.to_string(), Duration::from_secs(3)).await;
    assert_eq!(r.codecs, "avc1.42C01E");
    assert!(
        r.fragments.len() >= 50,
        "{} fragments in 3 s",
        r.fragments.len()
    );
    let path = write_mp4(s.dir.path(), "udp.mp4", &r);
    let errors = ffmpeg_decode_errors(&path.display().to_string());
    assert!(errors.is_empty(), "{errors}");
    // The control: TCP interleaved is refused by this camera.
    let st = eventually("the TCP stream to fail", Duration::from_secs(20), || {
        let st = s.state.manager.status(tcp)?;
        (!st.last_health_error.is_empty()).then_some(st)
    })
    .await;
    assert!(!st.status && !st.online, "{st:?}");
    s.stop().await;
}

// ----- archive playback errors ---------------------------------------------------------------------

/// `[archive] playback_max_sessions`: one session more is closed with 1013 `Too many archive
/// sessions on this server ...`; when a session ends, its slot is free again.
#[tokio::test(flavor = "multi_thread")]
async fn archive_sessions_beyond_the_limit_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&format!(
        "[archive]\nserving = true\nrecording = false\ndirectory = \"{}\"\n\
         playback_max_sessions = 1\nplayback_chunk_s = 5\nplayback_idle_s = 600\n",
        tmp.path().display()
    ))
    .await;
    let id = Uuid::new_v4();
    let wall0 = 1_760_000_000_000_000i64;
    crate::playback::synthesize(&s.state.db, tmp.path(), id, wall0, 1).await;
    let url = format!(
        "ws://{}/ws/archive?stream_id={id}&start={}&duration=20",
        s.video,
        wall0 / 1_000_000
    );
    // The first session holds the slot (it waits at its first `pause`).
    let mut first = connect(&url).await;
    let codec = first_binary(&mut first, Duration::from_secs(10)).await;
    assert_eq!(codec.first(), Some(&0x09));
    let mut second = connect(&url).await;
    // `[archive] playback_max_sessions` is the server-wide total of `[limits]`: over it, 1013
    // ("try again later") with the documented reason.
    assert_eq!(
        close_of(&mut second, Duration::from_secs(10)).await,
        Some((
            1013,
            "Too many archive sessions on this server (limit 1); try again later".to_owned()
        ))
    );
    // The first one leaves: a new session plays.
    first.send(Message::Close(None)).await.expect("close");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = connect(&url).await;
        match tokio::time::timeout(Duration::from_secs(10), again.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                assert_eq!(b.first(), Some(&0x09));
                break;
            }
            Ok(Some(Ok(Message::Close(Some(f)))))
                if f.reason.starts_with("Too many archive sessions")
                    && Instant::now() < deadline =>
            {
                // The first session's slot is released when its task notices the close.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("expected playback after the first session left: {other:?}"),
        }
    }
    s.stop().await;
}

crate::on_both_engines!(
    /// The index failing under a playback request closes it with `Failed to list archive
    /// segments` (the Go reason), and playback works again once the index does.
    async fn playback_with_a_broken_index_fails_with_the_go_reason(index: &Index) {
        let tmp = tempfile::tempdir().expect("tmp");
        let s = InProcess::start_with_db(
            &format!(
                "[archive]\nserving = true\nrecording = false\ndirectory = \"{}\"\n",
                tmp.path().display()
            ),
            Some(index.url.clone()),
        )
        .await;
        let id = Uuid::new_v4();
        let wall0 = 1_760_000_000_000_000i64;
        crate::playback::synthesize(&s.state.db, tmp.path(), id, wall0, 1).await;
        let url = format!(
            "ws://{}/ws/archive?stream_id={id}&start={}&duration=10",
            s.video,
            wall0 / 1_000_000
        );
        let rename = |from: &'static str, to: &'static str| {
            let db = s.state.db.clone();
            async move {
                let sql = format!("ALTER TABLE {from} RENAME TO {to}");
                video_server::with_pool!(&db, p => sqlx::query(sqlx::AssertSqlSafe(sql)).execute(p).await.map(drop))
                    .expect("rename");
            }
        };
        // The control: it plays.
        let mut ws = connect(&url).await;
        assert_eq!(
            first_binary(&mut ws, Duration::from_secs(10)).await.first(),
            Some(&0x09)
        );
        drop(ws);
        // The segment index is gone.
        rename("segments", "segments_away").await;
        let mut ws = connect(&url).await;
        assert_eq!(
            close_of(&mut ws, Duration::from_secs(10)).await,
            Some((1011, "Failed to list archive segments".to_owned()))
        );
        rename("segments_away", "segments").await;
        let mut ws = connect(&url).await;
        assert_eq!(
            first_binary(&mut ws, Duration::from_secs(10)).await.first(),
            Some(&0x09)
        );
        drop(ws);
        s.stop().await;
    }
);

// ----- keyframe watchdog ---------------------------------------------------------------------------

/// A camera that stops sending keyframes (here: one keyframe, then 30 s of P-frames) is
/// reconnected once no keyframe has arrived for 15 s, not left running on a picture no new viewer
/// can start from; `last_health_error` says `no_keyframe`.
#[tokio::test(flavor = "multi_thread")]
async fn a_camera_without_keyframes_for_15_s_is_reconnected() {
    let tmp = tempfile::tempdir().expect("tmp");
    let clip = tmp.path().join("one-keyframe.ts");
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-nostdin",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x180:rate=25",
        ])
        .args([
            "-t",
            "30",
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-pix_fmt",
            "yuv420p",
        ])
        .args([
            "-g",
            "100000",
            "-keyint_min",
            "100000",
            "-sc_threshold",
            "0",
            "-bf",
            "0",
        ])
        .args(["-f", "mpegts"])
        .arg(&clip)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every client of /file gets the clip from its start: one keyframe, then none for 30 s.
    let rtsp = RtspServer::start_with_file(0, &clip);
    let id = Uuid::new_v4();
    let s = InProcess::start(&format!(
        "[archive]\nrecording = false\n{}",
        rtsp_entry(id, &rtsp.url("file"), "")
    ))
    .await;
    let connected = eventually("the camera connection", Duration::from_secs(20), || {
        let history = rtsp.client_history();
        history.iter().find(|&&(_, n)| n >= 1).map(|&(at, _)| at)
    })
    .await;
    let error = eventually("the watchdog", Duration::from_secs(25), || {
        let st = s.state.manager.status(id)?;
        (!st.last_health_error.is_empty()).then_some(st.last_health_error)
    })
    .await;
    let fired = connected.elapsed();
    assert_eq!(error, "no_keyframe");
    assert!(
        fired >= Duration::from_secs(14) && fired < Duration::from_secs(20),
        "the watchdog fired {fired:?} after the camera connected (the clip lasts 30 s)"
    );
    // The camera connection was dropped, and a new one made (the next session).
    let dropped = eventually("the session closed", Duration::from_secs(5), || {
        rtsp.client_history()
            .iter()
            .position(|&(at, n)| at > connected && n == 0)
    })
    .await;
    eventually("a new session", Duration::from_secs(10), || {
        rtsp.client_history()[dropped..]
            .iter()
            .any(|&(_, n)| n >= 1)
            .then_some(())
    })
    .await;
    s.stop().await;
}

// ----- skipped tracks ------------------------------------------------------------------------------

/// A camera with G.711 audio (which fMP4 cannot carry): over MSE the video plays and the audio is
/// left out, and `skipped_tracks` of the stream's status says so, and that the track is forwarded
/// over WebRTC instead (`webrtc::chromium_receives_a_g711_cameras_sound_over_whep`).
#[tokio::test(flavor = "multi_thread")]
async fn g711_audio_is_left_out_of_mse_and_listed_as_forwarded_over_webrtc() {
    let rtsp = RtspServer::start(0);
    let id = Uuid::new_v4();
    let s = InProcess::start(&format!(
        "[archive]\nrecording = false\n{}",
        rtsp_entry(id, &rtsp.url("g711"), "")
    ))
    .await;
    let r = watch_live(&s.video, &id.to_string(), Duration::from_secs(2)).await;
    assert_eq!(r.codecs, "avc1.42C01E", "video only");
    let path = write_mp4(s.dir.path(), "g711.mp4", &r);
    let errors = ffmpeg_decode_errors(&path.display().to_string());
    assert!(errors.is_empty(), "{errors}");
    let v: serde_json::Value = reqwest::get(format!("{}/api/v1/streams/{id}/status", s.api))
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(v["codecs"], json!(["avc1.42C01E"]), "{v}");
    let skipped = v["skipped_tracks"].as_array().expect("skipped_tracks");
    assert_eq!(skipped.len(), 1, "{v}");
    let text = skipped[0].as_str().expect("text");
    assert!(
        text.starts_with("audio")
            && text.to_ascii_lowercase().contains("pcmu")
            && text.contains("MSE, HLS, recordings")
            && text.contains("forwarded over WebRTC"),
        "{v}"
    );
    s.stop().await;
}

// ----- start-up reconciliation ---------------------------------------------------------------------

/// The demo clip played in a loop as stream [`DEMO`] and recorded (when `recording`) in 2 s
/// segments under `archive`.
fn looping_demo_conf(archive: &std::path::Path, recording: bool) -> String {
    format!(
        "[archive]\nrecording = {recording}\nserving = true\nms_per_file = 2000\n\
         directory = \"{}\"\n[[local_files]]\nguid = \"{DEMO}\"\n\
         file = \"assets/demo.mp4\"\noutput_types = [\"mse\"]\nloop = true\n\
         archive = {{ recording = true }}\n",
        archive.display()
    )
}

/// Runs a server with `conf` until stream `id` has three complete segments, stops it, and
/// returns a connection to the index and the stream's complete rows.
async fn record_three_segments(
    index: &crate::support::Index,
    conf: &str,
    id: Uuid,
) -> (
    video_server::db::Db,
    Vec<video_server::db::segments::SegmentRow>,
) {
    let complete = |rows: Vec<video_server::db::segments::SegmentRow>| {
        rows.into_iter()
            .filter(|r| r.state == "complete")
            .collect::<Vec<_>>()
    };
    let s = InProcess::start_with_db(conf, Some(index.url.clone())).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while complete(crate::archive::all_segments(&s.state.db, id).await).len() < 3 {
        assert!(Instant::now() < deadline, "three segments recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop().await;
    let db = index.connect().await;
    let rows = complete(crate::archive::all_segments(&db, id).await);
    (db, rows)
}

crate::on_both_engines!(
    /// While the server is down a segment file vanishes and another one is copied in: at the next
    /// start the vanished one's row is marked `missing` (and its time leaves the ranges) and the
    /// copied-in file is indexed; the other rows are left alone.
    async fn startup_marks_vanished_files_missing_and_indexes_strays(index: &Index) {
        let tmp = tempfile::tempdir().expect("tmp");
        let archive = tmp.path().join("mp4");
        let conf = |recording: bool| looping_demo_conf(&archive, recording);
        let id: Uuid = DEMO.parse().expect("uuid");
        let (db, rows) = record_three_segments(index, &conf(true), id).await;
        let gone = &rows[1];
        std::fs::remove_file(&gone.storage_key).expect("remove a segment file");
        // Named an hour before the recording (files named after the start belong to this run's
        // recorders and are never taken for strays).
        let stray_start_s = rows[0].start_us / 1_000_000 - 3600;
        let stray = std::path::Path::new(&rows[0].storage_key)
            .with_file_name(format!("{DEMO}_{stray_start_s}.mp4"));
        std::fs::copy(&rows[0].storage_key, &stray).expect("copy a segment file in");

        // Restarted without recording: only the reconciliation changes the index.
        let s = InProcess::start_with_db(&conf(false), Some(index.url.clone())).await;
        let marked = async {
            loop {
                let row = video_server::db::segments::get(&db, gone.id)
                    .await
                    .expect("get");
                if row.as_ref().is_some_and(|r| r.state == "missing") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), marked)
            .await
            .expect("the vanished file's row marked missing");
        let stray_key = stray.display().to_string();
        let indexed = async {
            loop {
                let all = crate::archive::all_segments(&db, id).await;
                if let Some(r) = all.into_iter().find(|r| r.storage_key == stray_key) {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let row = tokio::time::timeout(Duration::from_secs(30), indexed)
            .await
            .expect("the copied-in file indexed");
        assert_eq!(row.state, "complete");
        assert_eq!(row.start_us, stray_start_s * 1_000_000);
        assert_eq!(row.media_duration_us, rows[0].media_duration_us, "{row:?}");
        // The others are as they were.
        for r in rows.iter().filter(|r| r.id != gone.id) {
            let now = video_server::db::segments::get(&db, r.id)
                .await
                .expect("get")
                .expect("row");
            assert_eq!(now.state, "complete", "{now:?}");
        }
        // The ranges leave the vanished segment's time out (a 2 s hole: the smallest gap_ms).
        let v: serde_json::Value = reqwest::get(format!(
            "{}/api/v1/streams/{DEMO}/ranges?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z\
             &gap_ms=1000",
            s.api
        ))
        .await
        .expect("ranges")
        .json()
        .await
        .expect("json");
        let ranges = v.to_string();
        let gone_start =
            chrono::DateTime::from_timestamp_micros(gone.start_us + 500_000).expect("time");
        for range in v["ranges"].as_array().unwrap_or_else(|| panic!("{ranges}")) {
            let start: chrono::DateTime<chrono::Utc> = range["start"]
                .as_str()
                .expect("start")
                .parse()
                .expect("time");
            let end: chrono::DateTime<chrono::Utc> =
                range["end"].as_str().expect("end").parse().expect("time");
            assert!(
                !(start <= gone_start && gone_start < end),
                "the vanished segment is still in the ranges: {ranges}"
            );
        }
        db.close().await;
        s.stop().await;
    }
);

crate::on_both_engines!(
    /// Reconciliation does not re-scan what it already knows (issue 13): a start after a clean
    /// pass looks into no directory that did not change since (no file looked up, no row's file
    /// checked), while a day directory in which a file vanished and another was copied in is
    /// still reconciled whole. The counters are the ones `/metrics` shows.
    async fn reconcile_skips_directories_unchanged_since_the_last_pass(index: &Index) {
        use std::sync::atomic::Ordering;
        let tmp = tempfile::tempdir().expect("tmp");
        let archive = tmp.path().join("mp4");
        let conf = |recording: bool| looping_demo_conf(&archive, recording);
        let id: Uuid = DEMO.parse().expect("uuid");
        // (directories skipped, files examined, rows examined) of the first pass of a start.
        let pass = |s: &InProcess| {
            let c = s.state.reconcile.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                while c.passes.load(Ordering::Relaxed) == 0 {
                    assert!(
                        Instant::now() < deadline,
                        "a reconciliation pass within 30 s"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (
                    c.dirs_skipped.load(Ordering::Relaxed),
                    c.files_examined.load(Ordering::Relaxed),
                    c.rows_examined.load(Ordering::Relaxed),
                )
            }
        };
        let (db, rows) = record_three_segments(index, &conf(true), id).await;
        // Changes within 2 s before a pass may not show in a directory's change time: they are
        // looked at again by the next pass, which this test is not about.
        tokio::time::sleep(Duration::from_millis(2500)).await;

        // The first pass that knows the root's id looks at everything.
        let s = InProcess::start_with_db(&conf(false), Some(index.url.clone())).await;
        let (_, files, examined) = pass(&s).await;
        assert!(files >= rows.len() as u64, "every file looked up: {files}");
        assert!(
            examined >= rows.len() as u64,
            "every row checked: {examined}"
        );
        s.stop().await;

        // Nothing changed since: nothing is looked at again.
        let s = InProcess::start_with_db(&conf(false), Some(index.url.clone())).await;
        let (skipped, files, examined) = pass(&s).await;
        assert_eq!((files, examined), (0, 0), "{skipped} directories skipped");
        assert!(
            skipped >= 2,
            "the camera and day directories skipped: {skipped}"
        );
        let metrics = reqwest::get(format!("{}/metrics", s.api))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains(&format!(
                "video_server_reconcile_directories_skipped_total {skipped}"
            )),
            "{metrics}"
        );
        assert!(
            metrics.contains("video_server_reconcile_rows_examined_total 0"),
            "{metrics}"
        );
        s.stop().await;

        // A file vanishes from the day directory and another is copied in.
        let gone = &rows[1];
        std::fs::remove_file(&gone.storage_key).expect("remove a segment file");
        let stray_start_s = rows[0].start_us / 1_000_000 - 3600;
        let stray = std::path::Path::new(&rows[0].storage_key)
            .with_file_name(format!("{DEMO}_{stray_start_s}.mp4"));
        std::fs::copy(&rows[0].storage_key, &stray).expect("copy a segment file in");
        let s = InProcess::start_with_db(&conf(false), Some(index.url.clone())).await;
        let (_, files, examined) = pass(&s).await;
        assert!(
            files >= rows.len() as u64,
            "the day directory's files: {files}"
        );
        assert!(
            examined >= rows.len() as u64,
            "the day directory's rows: {examined}"
        );
        let row = video_server::db::segments::get(&db, gone.id)
            .await
            .expect("get")
            .expect("row");
        assert_eq!(row.state, "missing", "{row:?}");
        let stray_key = stray.display().to_string();
        let all = crate::archive::all_segments(&db, id).await;
        let indexed = all
            .iter()
            .find(|r| r.storage_key == stray_key)
            .unwrap_or_else(|| panic!("the copied-in file indexed: {all:?}"));
        assert_eq!(indexed.state, "complete");
        for r in rows.iter().filter(|r| r.id != gone.id) {
            let now = video_server::db::segments::get(&db, r.id)
                .await
                .expect("get")
                .expect("row");
            assert_eq!(now.state, "complete", "{now:?}");
        }
        db.close().await;
        s.stop().await;
    }
);
