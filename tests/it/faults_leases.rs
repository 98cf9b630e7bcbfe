//! Fault test: export and playback of the oldest segment while retention deletes it. The readers
//! complete (their read leases keep the segment), or, once retention has taken it, get a clean
//! error before any body byte; never a truncated 200.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;
use video_server::archive::retention::Retention;
use video_server::config::RetentionConfig;
use video_server::db::segments::{self, SegmentRow};
use video_server::db::streams::{self, Origin};
use video_server::stream::{Source, StreamSpec};

use crate::support::InProcess;
use crate::support::media::{ffmpeg_decode_errors, ffprobe, first_box};

fn spec(id: Uuid) -> StreamSpec {
    StreamSpec {
        id,
        name: "Leases".into(),
        source: Source::File {
            path: "assets/demo.mp4".into(),
            looping: true,
        },
        outputs: vec![],
        on_demand: None,
        enabled: false,
        verbose: String::new(),
        archive: Default::default(),
        retention: Default::default(),
    }
}

async fn rows(db: &video_server::db::Db, id: Uuid) -> Vec<SegmentRow> {
    segments::page(db, id, 0, i64::MAX / 2, None, 1000)
        .await
        .expect("rows")
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        .replace('+', "%2B")
}

fn duration_s(path: &Path) -> f64 {
    let v = ffprobe(&path.display().to_string());
    let num = |k: &str| -> f64 {
        v["format"][k]
            .as_str()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0.0)
    };
    num("duration") - num("start_time")
}

/// `GET path` over a socket with a 4 KiB receive buffer: the status must be 200; returns the
/// connection, the `Content-Length` and the body bytes read with the headers.
async fn slow_get(api: &str, path: &str) -> (tokio::net::TcpStream, usize, Vec<u8>) {
    let addr = api.trim_start_matches("http://");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut tcp = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("request");
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut chunk))
            .await
            .expect("headers in time")
            .expect("read");
        assert!(n > 0, "connection closed in the headers");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("content-length");
    (tcp, length, buf[head_end..].to_vec())
}

/// Waits for the next WebSocket message (60 s at most).
async fn next_message<S>(ws: &mut S) -> Option<Message>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
        Ok(Some(Ok(m))) => Some(m),
        Ok(_) => None,
        Err(_) => panic!("playback stalled"),
    }
}

async fn readers_complete_while_retention_runs(index: &crate::support::Index) {
    let tmp = tempfile::tempdir().expect("tmp");
    // Playback pauses after 4 s of media: the session then sits inside the oldest segment.
    let s = InProcess::start_with_db(
        &format!(
            "[archive]\nserving = true\ndirectory = \"{}\"\nplayback_chunk_s = 4\n\
             playback_idle_s = 120\n",
            tmp.path().display()
        ),
        Some(index.url.clone()),
    )
    .await;
    let db = s.state.db.clone();
    let id = Uuid::new_v4();
    streams::insert(&db, &spec(id), Origin::Api)
        .await
        .expect("stream");
    let wall0 = 1_760_000_000_000_000i64;
    crate::playback::synthesize_segments(
        Path::new("assets/demo.mp4"),
        &db,
        tmp.path(),
        id,
        wall0,
        10,
        180_000,
    )
    .await;
    let before = rows(&db, id).await;
    assert!(before.len() >= 2, "{} segments", before.len());
    let oldest = before[0].clone();
    let oldest_s = oldest.media_duration_us as f64 / 1e6;

    // 1. An export of the oldest segment, read slowly: a client with a 4 KiB receive buffer
    //    reads the headers and a first chunk, then nothing (the server's copy blocks mid-body).
    let http = reqwest::Client::new();
    let export_path = format!(
        "/api/v1/streams/{id}/export.mp4?start={}&end={}",
        rfc3339(oldest.start_us),
        rfc3339(oldest.end_us)
    );
    let export_url = format!("{}{export_path}", s.api);
    let (mut export, length, mut body) = slow_get(&s.api, &export_path).await;
    assert!(body.len() < length, "the export is still being sent");

    // 2. Playback of the same segment, until its first `pause` (4 s in).
    let url = format!(
        "ws://{}/ws/archive?stream_id={id}&start={}&duration={}",
        s.video,
        oldest.start_us / 1_000_000,
        (oldest.end_us - oldest.start_us) / 1_000_000
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("ws");
    let mut played: Vec<u8> = Vec::new();
    loop {
        match next_message(&mut ws).await.expect("playing") {
            Message::Binary(b) if b.first() == Some(&9) => {}
            Message::Binary(b) if first_box(&b) == "ftyp" && !played.is_empty() => {}
            Message::Binary(b) => played.extend_from_slice(&b),
            Message::Text(t) if t.as_str() == "pause" => break,
            m => panic!("unexpected {m:?}"),
        }
    }
    assert_eq!(
        s.state.archive.leases.readers(oldest.id),
        2,
        "both readers hold the oldest segment"
    );
    assert_eq!(s.state.archive.leases.held_count(), 1);

    // 3. Retention wants everything (a maximum age of 1 s): all but the leased segment go.
    let retention = Retention::new(
        db.clone(),
        s.state.archive.clone(),
        RetentionConfig {
            max_age_s: Some(1),
            ..Default::default()
        },
        tmp.path(),
    );
    let report = retention.run_once().await.expect("retention");
    let after = rows(&db, id).await;
    assert_eq!(
        after.iter().map(|r| r.id).collect::<Vec<_>>(),
        [oldest.id],
        "only the leased segment is left"
    );
    assert_eq!(report.deleted() as usize, before.len() - 1);
    assert!(Path::new(&oldest.storage_key).exists(), "its file is kept");
    for r in &before[1..] {
        assert!(
            !Path::new(&r.storage_key).exists(),
            "{} deleted",
            r.storage_key
        );
    }

    // 4. Both readers go on to the end.
    export.read_to_end(&mut body).await.expect("body");
    assert_eq!(body.len(), length, "the whole export arrived");
    let exported = tmp.path().join("export.mp4");
    std::fs::write(&exported, &body).expect("write");
    let errors = ffmpeg_decode_errors(&exported.display().to_string());
    assert!(errors.trim().is_empty(), "export: {errors}");
    let secs = duration_s(&exported);
    assert!(
        (secs - oldest_s).abs() <= 0.1,
        "export {secs} s of {oldest_s} s"
    );

    ws.send(Message::Text("more".into())).await.expect("more");
    let mut eos = false;
    while let Some(m) = next_message(&mut ws).await {
        match m {
            Message::Binary(b) if b.first() == Some(&9) || first_box(&b) == "ftyp" => {}
            Message::Binary(b) => played.extend_from_slice(&b),
            Message::Text(t) if t.as_str() == "pause" => {
                ws.send(Message::Text("more".into())).await.expect("more");
            }
            Message::Text(t) if t.as_str() == "eos" => eos = true,
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(eos, "playback reached eos");
    let playback = tmp.path().join("playback.mp4");
    std::fs::write(&playback, &played).expect("write");
    let errors = ffmpeg_decode_errors(&playback.display().to_string());
    assert!(errors.trim().is_empty(), "playback: {errors}");
    let secs = duration_s(&playback);
    assert!(
        (secs - oldest_s).abs() <= 1.0,
        "played {secs} s of {oldest_s} s"
    );

    // 5. The readers are gone: their leases are cleared and the next pass deletes the segment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while video_server::db::leases::lease_until(&db, oldest.id)
        .await
        .expect("lease")
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "lease cleared after the readers left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.state.archive.leases.held_count(), 0);
    let report = retention.run_once().await.expect("retention");
    assert_eq!(report.deleted(), 1);
    assert!(rows(&db, id).await.is_empty());
    assert!(!Path::new(&oldest.storage_key).exists());

    // 6. Asked again now, both get a clean answer before any body byte.
    let gone = http.get(&export_url).send().await.expect("export");
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let json: serde_json::Value = gone.json().await.expect("json");
    assert_eq!(json["error"]["code"], "no_recording", "{json}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("ws");
    match next_message(&mut ws).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(f.reason.as_str(), "No segments found for this time range")
        }
        m => panic!("expected a close, got {m:?}"),
    }
    let _ = s.stop().await;
}

crate::on_both_engines!(
    async fn export_and_playback_of_the_oldest_segment_survive_retention(index: &Index) {
        readers_complete_while_retention_runs(index).await;
    }
);
