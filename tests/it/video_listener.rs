//! The video listener's routes exist and refuse bad input the way the Go original did.

use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::InProcess;

const DEMO: &str = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";

struct Server;

impl Server {
    async fn start(extra: &str) -> InProcess {
        InProcess::start(&format!(
            "{extra}\n[[local_files]]\nguid = \"{DEMO}\"\nfile = \"assets/demo.mp4\"\noutput_types = [\"hls\"]\nloop = true\n"
        ))
        .await
    }
}

/// Connects and returns the first message (or `None` when the server closes without a frame).
async fn first_message(url: &str) -> Option<Message> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let next = tokio::time::timeout(std::time::Duration::from_secs(15), ws.next())
        .await
        .expect("server answers in time");
    match next {
        Some(Ok(m)) => Some(m),
        _ => None,
    }
}

fn close_reason(m: Option<Message>) -> (u16, String) {
    match m {
        Some(Message::Close(Some(f))) => (u16::from(f.code), f.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn live_ws_close_reasons() {
    let s = Server::start("").await;
    let m = first_message(&format!("ws://{}/ws/live?stream_id=bad-id", s.video)).await;
    assert_eq!(
        close_reason(m),
        (1011, "Not valid UUID: 'bad-id'".to_owned())
    );
    let m = first_message(&format!("ws://{}/ws/anything", s.video)).await;
    assert_eq!(close_reason(m), (1011, "Not valid UUID: ''".to_owned()));
    // Unknown stream, and a stream without the mse output: closed at once without a close frame.
    let unknown = uuid::Uuid::new_v4();
    let m = first_message(&format!("ws://{}/ws/live?stream_id={unknown}", s.video)).await;
    assert!(m.is_none(), "expected a bare close, got {m:?}");
    let m = first_message(&format!("ws://{}/ws/live?stream_id={DEMO}", s.video)).await;
    assert!(
        m.is_none(),
        "hls-only stream: expected a bare close, got {m:?}"
    );
    assert_eq!(u16::from(CloseCode::Error), 1011);
    // A plain GET (no upgrade) is a 4xx, not a crash.
    let r = reqwest::get(format!("http://{}/ws/live?stream_id={DEMO}", s.video))
        .await
        .expect("get");
    assert!(r.status().is_client_error());
    s.stop().await;
}

#[tokio::test]
async fn archive_ws_close_reasons() {
    let s = Server::start("[archive]\nserving = true\n").await;
    let cases = [
        ("", "Invalid stream_id"),
        ("stream_id=xyz&start=1", "Invalid stream_id"),
        (
            &*format!("stream_id={DEMO}"),
            "Invalid start time (use Unix timestamp)",
        ),
        (
            &*format!("stream_id={DEMO}&start=yesterday"),
            "Invalid start time (use Unix timestamp)",
        ),
        (
            &*format!("stream_id={DEMO}&start=-5"),
            "Invalid start time (use Unix timestamp)",
        ),
        (
            &*format!("stream_id={DEMO}&start=1700000000&duration=60"),
            "No segments found for this time range",
        ),
        (
            &*format!("stream_id={DEMO}&start=1700000000&duration=bogus"),
            "No segments found for this time range",
        ),
    ];
    for (query, reason) in cases {
        let m = first_message(&format!("ws://{}/ws/archive?{query}", s.video)).await;
        assert_eq!(close_reason(m), (1011, reason.to_owned()), "{query}");
    }
    s.stop().await;

    let s = Server::start("[archive]\nserving = false\n").await;
    let m = first_message(&format!(
        "ws://{}/ws/archive?stream_id={DEMO}&start=1",
        s.video
    ))
    .await;
    assert_eq!(
        close_reason(m),
        (
            1011,
            "Archive not available: archive serving not enabled globally".to_owned()
        )
    );
    // Export is refused too (README, Export: 404 with `[archive] serving = false`).
    let r = reqwest::get(format!(
        "{}/api/v1/streams/{DEMO}/export.mp4?start=1700000000&end=1700000010",
        s.api
    ))
    .await
    .expect("export");
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        v["error"]["message"], "archive not available: archive serving not enabled globally",
        "{v}"
    );
    s.stop().await;
}

#[tokio::test]
async fn hls_names_are_validated() {
    let s = Server::start("").await;
    let c = reqwest::Client::new();
    for bad in ["nope.m3u8", "x", "13bf3e5c-d537-4f10-98e8.m3u8"] {
        let r = c
            .get(format!("http://{}/hls/{bad}", s.video))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 400, "{bad}");
        let v: serde_json::Value = r.json().await.expect("json");
        assert!(v["Error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    for bad in [
        format!("{DEMO}..m3u8"),
        format!("{DEMO}%2F..%2F..%2Fetc%2Fpasswd"),
        format!("{DEMO}.sh"),
    ] {
        let r = c
            .get(format!("http://{}/hls/{bad}", s.video))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 400, "{bad}");
    }
    // Any UUID version is accepted as a name; an unknown stream is a 404 with the Go key.
    let v1 = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
    let r = c
        .get(format!("http://{}/hls/{v1}.m3u8", s.video))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(v.get("Error").is_some());
    s.stop().await;
}
