//! Limits (issue 9, README "Limits"), against a real server: oversized WebSocket messages,
//! live viewers per stream and in total, archive sessions per client and in total, exports per
//! client and in total, and byte ranges at the edge of `u64`. Every limit is filled, overrun,
//! released and filled again (places are never leaked).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::playback::synthesize;
use crate::support::InProcess;
use crate::support::admin::{Auth, admin_token_section, create_token};
use crate::support::media::eventually;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const DEMO: &str = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";
const OTHER: &str = "0a6f4a8e-5e0e-4a57-9a3c-7d3f0c1d2e4f";
const ADMIN: &str = "limits-test-admin-token-0123456789abcdef";
const WALL0_US: i64 = 1_760_000_000_000_000;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn local_file(guid: &str) -> String {
    format!(
        "[[local_files]]\nguid = \"{guid}\"\nfile = \"assets/demo.mp4\"\noutput_types = [\"mse\"]\nloop = true\n"
    )
}

/// A new token for every stream with `actions`, made by the admin.
async fn token(s: &InProcess, name: &str, actions: &[&str]) -> String {
    create_token(&s.api, ADMIN, name, &["*"], actions).await.0
}

async fn connect(url: &str, bearer: Option<&str>) -> Ws {
    let mut req = url.into_client_request().expect("request");
    if let Some(t) = bearer {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    tokio_tungstenite::connect_async(req)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .0
}

/// What a session said first: its first binary message, or the close frame it ended with.
#[derive(Debug)]
enum First {
    Binary(Vec<u8>),
    Closed(Option<CloseFrame>),
}

async fn first(ws: &mut Ws) -> First {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the server answers within 20 s");
        match msg {
            Some(Ok(Message::Binary(b))) => return First::Binary(b.to_vec()),
            Some(Ok(Message::Close(f))) => return First::Closed(f),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("websocket error before any answer: {e}"),
            None => return First::Closed(None),
        }
    }
}

/// A session that started: its first message is `0x09` + codecs.
async fn started(ws: &mut Ws, what: &str) {
    match first(ws).await {
        First::Binary(b) => assert_eq!(b.first(), Some(&0x09), "{what}: first message"),
        First::Closed(f) => panic!("{what}: closed instead of playing: {f:?}"),
    }
}

/// A session refused with `code` and a reason starting with `reason`.
async fn refused(ws: &mut Ws, code: u16, reason: &str, what: &str) {
    match first(ws).await {
        First::Closed(Some(f)) => {
            assert_eq!(u16::from(f.code), code, "{what}: {f:?}");
            assert!(
                f.reason.as_str().starts_with(reason),
                "{what}: reason {:?}, expected {reason:?}",
                f.reason.as_str()
            );
        }
        other => panic!("{what}: expected close {code} {reason:?}, got {other:?}"),
    }
}

/// Reads until the server's close frame (ignoring media), while `payload` is sent on the side:
/// the server stops reading it after the frame header, so sending and reading must overlap.
async fn send_and_expect_close(ws: Ws, payload: Message) -> Option<CloseFrame> {
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        // The server may reset the connection before the whole message is written.
        let _ = tx.send(payload).await;
        tx
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let close = loop {
        match tokio::time::timeout_at(deadline, rx.next())
            .await
            .expect("closed within 20 s")
        {
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("no close frame, but: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    };
    sender.abort();
    close
}

fn assert_too_big(close: Option<CloseFrame>, what: &str) {
    let f = close.unwrap_or_else(|| panic!("{what}: close frame without a code"));
    assert_eq!(u16::from(f.code), 1009, "{what}: {f:?}");
    assert_eq!(
        f.reason.as_str(),
        "Message too big (limit 4096 bytes)",
        "{what}"
    );
}

/// A text message answered with `pong` (the session is alive and reads).
async fn pings(ws: &mut Ws, what: &str) {
    ws.send(Message::Text("ping".into())).await.expect("ping");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: no pong within 20 s"))
        {
            Some(Ok(Message::Text(t))) if t.as_str() == "pong" => return,
            Some(Ok(Message::Close(f))) => panic!("{what}: closed: {f:?}"),
            Some(Err(e)) => panic!("{what}: {e}"),
            None => panic!("{what}: ended"),
            Some(Ok(_)) => {}
        }
    }
}

/// Client messages of 4 KiB pass; one byte more, or 1 MiB, closes the session with 1009 and a
/// reason, on `/ws/live` and on `/ws/archive` (paused, waiting for `more`); the server keeps
/// answering and serving.
async fn oversized_websocket_messages_close_1009(auth: Auth) {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&format!(
        "[archive]\nserving = true\ndirectory = \"{}\"\nplayback_chunk_s = 2\n{}{}",
        tmp.path().display(),
        local_file(DEMO),
        auth.section(tmp.path())
    ))
    .await;
    let bearer = auth.bearer();
    let archived = Uuid::new_v4();
    synthesize(&s.state.db, tmp.path(), archived, WALL0_US, 1).await;
    let live = format!("ws://{}/ws/live?stream_id={DEMO}", s.video);
    let archive = format!(
        "ws://{}/ws/archive?stream_id={archived}&start={}",
        s.video,
        WALL0_US / 1_000_000
    );

    for (what, url) in [("live", &live), ("archive", &archive)] {
        // Exactly the limit is fine.
        let mut ws = connect(url, bearer).await;
        started(&mut ws, what).await;
        ws.send(Message::Binary(vec![7u8; 4096].into()))
            .await
            .expect("4 KiB");
        pings(&mut ws, &format!("{what} after 4 KiB")).await;
        // One byte more is not.
        let close = send_and_expect_close(ws, Message::Binary(vec![7u8; 4097].into())).await;
        assert_too_big(close, &format!("{what}, 4097 bytes"));
        // 1 MiB, as text, right after connecting.
        let ws = connect(url, bearer).await;
        let close = send_and_expect_close(ws, Message::Text("x".repeat(1 << 20).into())).await;
        assert_too_big(close, &format!("{what}, 1 MiB"));
    }
    // Still up: the API answers, and a new viewer gets video.
    let health = auth
        .http()
        .get(format!("{}/healthz", s.api))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let mut ws = connect(&live, bearer).await;
    started(&mut ws, "live after the oversized messages").await;
    drop(ws);
    let gate = s.state.limits.viewers.clone();
    eventually("viewer places given back", Duration::from_secs(20), || {
        (gate.in_use() == 0).then_some(())
    })
    .await;
    let _ = s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_websocket_messages_close_1009_and_the_server_stays_up() {
    oversized_websocket_messages_close_1009(Auth::Off).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_websocket_messages_close_1009_with_auth_on() {
    oversized_websocket_messages_close_1009(Auth::Admin(ADMIN)).await;
}

/// Viewers per stream and in total: over either limit, the upgrade is closed with 1013 and a
/// reason naming the limit; the places come back when viewers leave, however often.
async fn viewers_over_their_limits(auth: Auth) {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&format!(
        "[limits]\nviewers_per_stream = 2\nviewers_total = 3\n{}{}{}",
        local_file(DEMO),
        local_file(OTHER),
        auth.section(tmp.path())
    ))
    .await;
    let bearer = auth.bearer();
    let url = |id: &str| format!("ws://{}/ws/live?stream_id={id}", s.video);
    let gate = s.state.limits.viewers.clone();
    for round in 0..2 {
        let mut a1 = connect(&url(DEMO), bearer).await;
        started(&mut a1, "first viewer of A").await;
        let mut a2 = connect(&url(DEMO), bearer).await;
        started(&mut a2, "second viewer of A").await;
        let mut a3 = connect(&url(DEMO), bearer).await;
        refused(
            &mut a3,
            1013,
            "Too many viewers of this stream (limit 2)",
            "third viewer of A",
        )
        .await;
        let mut b1 = connect(&url(OTHER), bearer).await;
        started(&mut b1, "first viewer of B").await;
        let mut b2 = connect(&url(OTHER), bearer).await;
        refused(
            &mut b2,
            1013,
            "Too many viewers on this server (limit 3)",
            "a fourth viewer",
        )
        .await;
        assert_eq!(gate.in_use(), 3, "round {round}");
        // Leaving in every way there is: a close handshake, and a dropped connection.
        a1.close(None).await.expect("close");
        drop(a2);
        drop(b1);
        drop((a3, b2));
        eventually("viewer places given back", Duration::from_secs(20), || {
            (gate.in_use() == 0 && gate.keys() == 0).then_some(())
        })
        .await;
    }
    let _ = s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_over_their_limits_are_refused_and_places_come_back() {
    viewers_over_their_limits(Auth::Off).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_over_their_limits_are_refused_with_auth_on() {
    viewers_over_their_limits(Auth::Admin(ADMIN)).await;
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
async fn poll_until<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HLS viewers: HLS holds no connection, so a client counts as a viewer of a stream from a
/// request until the playlist's duration after its last one. A new HLS client over the stream's
/// viewer limit gets 503 with `Retry-After` (and the document says so); the holder keeps
/// fetching; an MSE viewer is refused while HLS clients hold the places; a client that stops
/// fetching gives its place back when its time lapses.
#[tokio::test(flavor = "multi_thread")]
async fn hls_viewers_count_until_they_stop_fetching() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&format!(
        "[limits]\nviewers_per_stream = 1\n\
         [hls]\nms_per_segment = 1000\nwindow_size = 5\n\
         [[local_files]]\nguid = \"{DEMO}\"\nfile = \"assets/demo.mp4\"\noutput_types = [\"mse\", \"hls\"]\nloop = true\n{}",
        admin_token_section(tmp.path(), ADMIN)
    ))
    .await;
    let alice = token(&s, "alice", &["live"]).await;
    let bob = token(&s, "bob", &["live"]).await;
    let c = http();
    let playlist = format!("http://{}/hls/{DEMO}.m3u8", s.video);
    let fetch = async |url: &str, bearer: &str| {
        c.get(url)
            .bearer_auth(bearer)
            .send()
            .await
            .expect("HLS request")
    };
    let text = poll_until(
        "alice's first playlist",
        Duration::from_secs(30),
        async || {
            let r = fetch(&playlist, &alice).await;
            match r.status().as_u16() {
                200 => Some(r.text().await.expect("text")),
                _ => None,
            }
        },
    )
    .await;
    let gate = s.state.limits.viewers.clone();
    assert_eq!(gate.in_use_by(DEMO), 1, "alice is a viewer");

    // Bob is refused while alice holds the stream's only place.
    let refused_hls = fetch(&playlist, &bob).await;
    assert_eq!(refused_hls.status(), 503);
    let retry = refused_hls
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|r| r > 0), "Retry-After: {retry:?}");
    let body: Value = refused_hls.json().await.expect("JSON");
    assert!(
        body["Error"]
            .as_str()
            .is_some_and(|e| e.starts_with("Too many viewers of this stream (limit 1)")),
        "{body}"
    );
    crate::support::assert_documented_retry_after("get", "/hls/{file}", "503");
    let mut ws = connect(
        &format!("ws://{}/ws/live?stream_id={DEMO}", s.video),
        Some(&bob),
    )
    .await;
    refused(
        &mut ws,
        1013,
        "Too many viewers of this stream (limit 1)",
        "MSE while HLS holds the place",
    )
    .await;

    // Alice keeps fetching (the playlist's segments too) and is never refused.
    let segment = text
        .lines()
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("a segment");
    let r = fetch(&format!("http://{}/hls/{segment}", s.video), &alice).await;
    assert_eq!(r.status(), 200);
    assert_eq!(fetch(&playlist, &alice).await.status(), 200);
    assert_eq!(gate.in_use_by(DEMO), 1);

    // Alice stops: within her lease (5 s: the playlist's duration) and a margin, bob gets in.
    poll_until(
        "alice's place to lapse",
        Duration::from_secs(20),
        async || (fetch(&playlist, &bob).await.status() == 200).then_some(()),
    )
    .await;
    assert_eq!(
        fetch(&playlist, &alice).await.status(),
        503,
        "now bob holds the place"
    );
    let _ = s.stop().await;
}

/// Archive sessions per client (by token) and in total: a client over its share is refused
/// while another client still plays; over the total, everyone is refused; closed sessions give
/// their places back.
#[tokio::test(flavor = "multi_thread")]
async fn archive_sessions_are_limited_per_client_and_in_total() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&format!(
        "[limits]\narchive_sessions_per_client = 2\narchive_sessions_total = 3\n\
         [archive]\nserving = true\ndirectory = \"{}\"\nplayback_chunk_s = 2\n{}",
        tmp.path().display(),
        admin_token_section(tmp.path(), ADMIN)
    ))
    .await;
    let id = Uuid::new_v4();
    synthesize(&s.state.db, tmp.path(), id, WALL0_US, 1).await;
    let alice = token(&s, "alice", &["archive"]).await;
    let bob = token(&s, "bob", &["archive"]).await;
    let url = format!(
        "ws://{}/ws/archive?stream_id={id}&start={}",
        s.video,
        WALL0_US / 1_000_000
    );
    let gate = s.state.limits.archive_sessions.clone();
    for round in 0..2 {
        // Sessions pause after 2 s of media and hold their place while paused.
        let mut a1 = connect(&url, Some(&alice)).await;
        started(&mut a1, "alice 1").await;
        let mut a2 = connect(&url, Some(&alice)).await;
        started(&mut a2, "alice 2").await;
        let mut a3 = connect(&url, Some(&alice)).await;
        refused(
            &mut a3,
            1013,
            "Too many archive sessions for this client (limit 2)",
            "alice 3",
        )
        .await;
        let mut b1 = connect(&url, Some(&bob)).await;
        started(&mut b1, "bob 1, while alice is refused").await;
        let mut b2 = connect(&url, Some(&bob)).await;
        refused(
            &mut b2,
            1013,
            "Too many archive sessions on this server (limit 3)",
            "bob 2",
        )
        .await;
        assert_eq!(
            (gate.in_use(), gate.in_use_by("ip:127.0.0.1")),
            (3, 0),
            "round {round}: counted by token, not by address"
        );
        a1.close(None).await.expect("close");
        drop((a2, a3, b1, b2));
        eventually("session places given back", Duration::from_secs(20), || {
            (gate.in_use() == 0 && gate.keys() == 0).then_some(())
        })
        .await;
    }
    let _ = s.stop().await;
}

/// A download whose body is not read: the server holds its export place while the body waits.
async fn open_export(url: &str, bearer: &str) -> reqwest::Response {
    http()
        .get(url)
        .bearer_auth(bearer)
        .send()
        .await
        .expect("export request")
}

/// Exports per client and in total: 429 (this client) and 503 (the server), with `Retry-After`
/// and a JSON error; abandoned downloads give their places back.
#[tokio::test(flavor = "multi_thread")]
async fn exports_over_their_limits_get_429_and_503_with_retry_after() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&format!(
        "[limits]\nexports_per_client = 1\nexports_total = 2\n\
         [archive]\nserving = true\ndirectory = \"{}\"\n{}",
        tmp.path().display(),
        admin_token_section(tmp.path(), ADMIN)
    ))
    .await;
    let id = Uuid::new_v4();
    // Long enough (about 45 MB) that a download not being read stays open: far more than the
    // socket buffers on both sides hold.
    let len_us = synthesize(&s.state.db, tmp.path(), id, WALL0_US, 40).await;
    create_archived_stream(&s, id, Some(ADMIN)).await;
    let url = format!(
        "{}/api/v1/streams/{id}/export.mp4?start={}&end={}",
        s.api,
        WALL0_US / 1_000_000,
        (WALL0_US + len_us) / 1_000_000
    );
    let tokens = [
        token(&s, "a", &["export"]).await,
        token(&s, "b", &["export"]).await,
        token(&s, "c", &["export"]).await,
    ];
    let gate = s.state.limits.exports.clone();
    for round in 0..2 {
        let a1 = open_export(&url, &tokens[0]).await;
        assert_eq!(a1.status(), 200, "round {round}");
        let a2 = open_export(&url, &tokens[0]).await;
        check_limited(a2, 429, "limit_reached").await;
        let b1 = open_export(&url, &tokens[1]).await;
        assert_eq!(
            b1.status(),
            200,
            "another client is not limited by the first"
        );
        let c1 = open_export(&url, &tokens[2]).await;
        check_limited(c1, 503, "server_busy").await;
        assert_eq!(gate.in_use(), 2);
        drop((a1, b1));
        eventually("export places given back", Duration::from_secs(30), || {
            (gate.in_use() == 0 && gate.keys() == 0).then_some(())
        })
        .await;
    }
    // A download read to the end gives its place back too.
    let whole = open_export(&url, &tokens[0]).await;
    assert_eq!(whole.status(), 200);
    let expected = whole.content_length().expect("length");
    let body = whole.bytes().await.expect("body");
    assert_eq!(body.len() as u64, expected);
    eventually(
        "place of a finished export",
        Duration::from_secs(20),
        || (gate.in_use() == 0).then_some(()),
    )
    .await;
    let _ = s.stop().await;
}

/// The export route needs the stream to exist: a disabled one, for the synthesized archive.
async fn create_archived_stream(s: &InProcess, id: Uuid, bearer: Option<&str>) {
    let mut req = http()
        .post(format!("{}/api/v1/streams", s.api))
        .json(&json!({
            "id": id,
            "name": "archived",
            "source": {"kind": "file", "path": "assets/demo.mp4"},
            "outputs": ["mse"],
            "enabled": false,
        }));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("create stream");
    let status = resp.status();
    assert_eq!(status, 201, "{}", resp.text().await.unwrap_or_default());
}

async fn check_limited(resp: reqwest::Response, status: u16, code: &str) {
    assert_eq!(resp.status().as_u16(), status);
    crate::support::assert_documented_retry_after(
        "get",
        "/api/v1/streams/{id}/export.mp4",
        &status.to_string(),
    );
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| s > 0), "Retry-After: {retry:?}");
    let body: Value = resp.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], json!(code), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("exports") && m.contains("try again")),
        "{body}"
    );
}

/// `Range` values at the edge of `u64` on an export: saturated, never wrapped.
#[tokio::test(flavor = "multi_thread")]
async fn export_ranges_saturate_at_the_edge_of_u64() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&format!(
        "[archive]\nserving = true\ndirectory = \"{}\"\n",
        tmp.path().display()
    ))
    .await;
    let id = Uuid::new_v4();
    let len_us = synthesize(&s.state.db, tmp.path(), id, WALL0_US, 1).await;
    create_archived_stream(&s, id, None).await;
    let url = format!(
        "{}/api/v1/streams/{id}/export.mp4?start={}&end={}",
        s.api,
        WALL0_US / 1_000_000,
        (WALL0_US + len_us) / 1_000_000
    );
    let whole = http().get(&url).send().await.expect("export");
    assert_eq!(whole.status(), 200);
    let whole = whole.bytes().await.expect("body");
    let len = whole.len() as u64;
    let max = u64::MAX;
    let cases = [
        (
            format!("bytes=0-{max}"),
            206,
            format!("bytes 0-{}/{len}", len - 1),
            0..len,
        ),
        (
            format!("bytes=100-{max}"),
            206,
            format!("bytes 100-{}/{len}", len - 1),
            100..len,
        ),
        (
            format!("bytes=-{max}"),
            206,
            format!("bytes 0-{}/{len}", len - 1),
            0..len,
        ),
        (format!("bytes={max}-"), 416, format!("bytes */{len}"), 0..0),
        (
            format!("bytes={max}-{max}"),
            416,
            format!("bytes */{len}"),
            0..0,
        ),
    ];
    for (range, status, content_range, bytes) in cases {
        let resp = http()
            .get(&url)
            .header("range", &range)
            .send()
            .await
            .expect("ranged export");
        assert_eq!(resp.status().as_u16(), status, "{range}");
        assert_eq!(
            resp.headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok()),
            Some(content_range.as_str()),
            "{range}"
        );
        let body = resp.bytes().await.expect("body");
        if status == 206 {
            assert_eq!(
                &body[..],
                &whole[bytes.start as usize..bytes.end as usize],
                "{range}"
            );
        }
    }
    // Past u64: not a range we can honour, so the whole file, as for any malformed value.
    let resp = http()
        .get(&url)
        .header("range", format!("bytes=0-{max}0"))
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 200);
    let _ = s.stop().await;
}
