//! Archive playback over WebSocket (the Go pause/more/eos protocol) against recorded segments.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;
use video_server::archive::recorder::{Recorder, RecorderConfig};
use video_server::db::Db;
use video_server::hub::Hub;
use video_server::media::mp4file::Mp4File;

use crate::support::InProcess;
use crate::support::media::{ffmpeg_decode_errors, ffprobe, first_box, ws_with_tiny_rcvbuf};

/// Records `loops` × the demo clip (24 s each) for `stream_id` as if it had been received from
/// `wall0_us` on, without real-time pacing. Returns the recorded length in µs.
pub async fn synthesize(db: &Db, dir: &Path, stream_id: Uuid, wall0_us: i64, loops: i64) -> i64 {
    synthesize_from(
        Path::new("assets/demo.mp4"),
        db,
        dir,
        stream_id,
        wall0_us,
        loops,
    )
    .await
}

/// As [`synthesize`], from any clip.
pub async fn synthesize_from(
    clip: &Path,
    db: &Db,
    dir: &Path,
    stream_id: Uuid,
    wall0_us: i64,
    loops: i64,
) -> i64 {
    synthesize_segments(clip, db, dir, stream_id, wall0_us, loops, 30_000).await
}

/// As [`synthesize_from`], cut into segments of `ms_per_file`.
pub async fn synthesize_segments(
    clip: &Path,
    db: &Db,
    dir: &Path,
    stream_id: Uuid,
    wall0_us: i64,
    loops: i64,
    ms_per_file: u64,
) -> i64 {
    let clip = Mp4File::open(clip).expect("clip");
    let params = Arc::new(clip.params().clone());
    let hub = Hub::new();
    let recorder = Recorder::new(
        RecorderConfig {
            stream_id,
            directory: dir.to_owned(),
            ms_per_file,
            storage: video_server::stream::StorageKind::Filesystem,
        },
        db.clone(),
        hub.subscribe(1_000_000),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(recorder.run(cancel.clone()));
    let loop_us = clip.duration_us();
    for l in 0..loops {
        for f in clip.frames() {
            let ts = i64::from(params.timescale(f.track));
            let mut f = f.clone();
            f.dts += l * loop_us * ts / 1_000_000;
            f.wallclock_us = wall0_us + f.dts * 1_000_000 / ts;
            f.params = params.clone();
            hub.publish(f);
        }
    }
    // Dropping the hub ends the recorder's queue: it records what is left, then closes.
    drop(hub);
    task.await.expect("recorder");
    drop(cancel);
    loops * loop_us
}

pub(crate) struct Played {
    pub codecs: Vec<String>,
    pub init: Vec<u8>,
    pub fragments: Vec<Vec<u8>>,
    pub texts: Vec<String>,
    pub close: Option<(u16, String)>,
}

/// Plays like the original's browser client: `more` on every `pause`.
pub(crate) async fn play(video: &str, query: &str, answer_more: bool, early_more: bool) -> Played {
    let url = format!("ws://{video}/ws/archive?{query}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    if early_more {
        ws.send(Message::Text("more".into())).await.expect("more");
    }
    ws.send(Message::Text("ping".into())).await.expect("ping");
    let mut p = Played {
        codecs: Vec::new(),
        init: Vec::new(),
        fragments: Vec::new(),
        texts: Vec::new(),
        close: None,
    };
    loop {
        let m = match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(_) => break,
            Err(_) => panic!("playback stalled"),
        };
        match m {
            Message::Binary(b) if b.first() == Some(&9) => {
                p.codecs.push(String::from_utf8_lossy(&b[1..]).into_owned())
            }
            Message::Binary(b) if first_box(&b) == "ftyp" && p.init.is_empty() => {
                p.init = b.to_vec();
            }
            Message::Binary(b) if first_box(&b) == "ftyp" => {}
            Message::Binary(b) => {
                assert_eq!(first_box(&b), "moof");
                p.fragments.push(b.to_vec());
            }
            Message::Text(t) => {
                if t.as_str() == "pause" && answer_more {
                    ws.send(Message::Text("more".into())).await.expect("more");
                }
                p.texts.push(t.to_string());
            }
            Message::Close(f) => {
                p.close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                break;
            }
            _ => {}
        }
    }
    p
}

/// Video frames recorded for `id` in `[from_us, to_us)`, counted by ffprobe in the segment files
/// (each file's packet times are media times from its row's start).
async fn recorded_video_frames(db: &Db, id: Uuid, from_us: i64, to_us: i64) -> usize {
    let rows = video_server::db::segments::page(db, id, 0, i64::MAX / 2, None, 1000)
        .await
        .expect("page");
    let mut n = 0;
    for r in &rows {
        let out = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "v",
                "-show_entries",
                "packet=pts_time",
            ])
            .args(["-of", "csv=p=0", &r.storage_key])
            .output()
            .expect("ffprobe");
        n += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().trim_end_matches(',').parse::<f64>().ok())
            .map(|t| r.start_us + (t * 1e6).round() as i64)
            .filter(|wall| (from_us..to_us).contains(wall))
            .count();
    }
    n
}

pub(crate) fn media_seconds(dir: &Path, name: &str, p: &Played) -> f64 {
    let path = dir.join(name);
    let mut all = p.init.clone();
    for f in &p.fragments {
        all.extend_from_slice(f);
    }
    std::fs::write(&path, all).expect("write");
    let errors = ffmpeg_decode_errors(&path.display().to_string());
    assert!(errors.trim().is_empty(), "ffmpeg: {errors}");
    let v = ffprobe(&path.display().to_string());
    let num = |k: &str| -> f64 {
        v["format"][k]
            .as_str()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0.0)
    };
    num("duration") - num("start_time")
}

fn server_config(dir: &Path, chunk_s: u64, idle_s: u64) -> String {
    format!(
        "[archive]\nserving = true\ndirectory = \"{}\"\nplayback_chunk_s = {chunk_s}\nplayback_idle_s = {idle_s}\n",
        dir.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn twelve_minutes_play_to_eos_with_pause_and_more() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&server_config(tmp.path(), 300, 600)).await;
    let id = Uuid::new_v4();
    let wall0 = 1_760_000_000_000_000i64;
    let len_us = synthesize(&s.state.db, tmp.path(), id, wall0, 30).await;
    assert!(len_us >= 12 * 60 * 1_000_000);
    let query = format!("stream_id={id}&start={}&duration=720", wall0 / 1_000_000);
    let p = play(&s.video, &query, true, false).await;
    assert_eq!(p.codecs, vec!["avc1.4D401E,mp4a.40.2".to_owned()]);
    assert!(p.texts.contains(&"pong".to_owned()), "{:?}", p.texts);
    assert_eq!(
        p.texts.iter().filter(|t| *t == "pause").count(),
        2,
        "{:?}",
        p.texts
    );
    assert_eq!(p.texts.last().map(String::as_str), Some("eos"));
    let secs = media_seconds(tmp.path(), "12min.mp4", &p);
    assert!((secs - 720.0).abs() <= 1.0, "played {secs} s of 720 s");
    let _ = s.stop().await;
}

crate::on_both_engines!(
    async fn starts_at_the_keyframe_before_start_and_reports_gaps_with_meta(index: &Index) {
        keyframe_start_and_gaps(index).await;
    }
);

async fn keyframe_start_and_gaps(index: &crate::support::Index) {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start_with_db(
        &server_config(tmp.path(), 300, 600),
        Some(index.url.clone()),
    )
    .await;
    let id = Uuid::new_v4();
    // Keyframes every second at x.5 s, so a start at a whole second falls mid-GOP.
    let wall0 = 1_760_000_000_500_000i64;
    let first = synthesize(&s.state.db, tmp.path(), id, wall0, 2).await;
    // A second recording 60 s after the first one ended.
    let wall1 = wall0 + first + 60_000_000;
    synthesize(&s.state.db, tmp.path(), id, wall1, 1).await;
    // Start 10.5 s in: playback begins at the keyframe at 10 s.
    let start_s = (wall0 + 10_500_000) / 1_000_000;
    let query = format!("stream_id={id}&start={start_s}&meta=1");
    let p = play(&s.video, &query, true, false).await;
    let metas: Vec<serde_json::Value> = p
        .texts
        .iter()
        .filter(|t| t.starts_with('{'))
        .map(|t| serde_json::from_str(t).expect("meta JSON"))
        .collect();
    assert_eq!(metas.len(), 2, "{metas:?}");
    let w0 = metas[0]["wallclock_us"].as_i64().expect("us");
    assert!(
        w0 <= start_s * 1_000_000 && w0 > start_s * 1_000_000 - 1_000_001,
        "{metas:?}"
    );
    assert_eq!(metas[0]["media_time"], serde_json::json!(0.0));
    assert_eq!(metas[1]["gap"], serde_json::json!(true));
    assert_eq!(
        metas[1]["wallclock_us"].as_i64(),
        Some(wall1),
        "gap start = second recording"
    );
    let expected_media = (wall0 + first - w0) as f64 / 1e6;
    let at = metas[1]["media_time"].as_f64().expect("media time");
    assert!(
        (at - expected_media).abs() < 0.05,
        "{at} vs {expected_media}"
    );
    let secs = media_seconds(tmp.path(), "gap.mp4", &p);
    assert!((secs - (expected_media + 24.0)).abs() <= 1.0, "{secs}");
    // Old clients (no meta=1) never see JSON.
    let p = play(
        &s.video,
        &format!("stream_id={id}&start={start_s}"),
        true,
        false,
    )
    .await;
    assert!(p.texts.iter().all(|t| !t.starts_with('{')));
    let _ = s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_segments_are_skipped_and_idle_pauses_time_out() {
    let tmp = tempfile::tempdir().expect("tmp");
    // A generous idle time for the skip check: under load the client may take seconds to read
    // 20 s of fragments before it sees (and answers) a `pause`.
    let s = InProcess::start(&server_config(tmp.path(), 20, 600)).await;
    let id = Uuid::new_v4();
    let wall0 = 1_760_000_000_000_000i64;
    synthesize(&s.state.db, tmp.path(), id, wall0, 3).await;
    // Corrupt the second segment.
    let mut after = None;
    let mut rows = Vec::new();
    loop {
        let page = video_server::db::segments::page(&s.state.db, id, 0, i64::MAX / 2, after, 100)
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        after = Some((last.start_us, last.id));
        rows.extend(page);
    }
    assert!(rows.len() >= 3);
    std::fs::write(&rows[1].storage_key, b"garbage, not an mp4").expect("corrupt");
    let query = format!("stream_id={id}&start={}", wall0 / 1_000_000);
    let p = play(&s.video, &query, true, false).await;
    assert_eq!(
        p.texts.last().map(String::as_str),
        Some("eos"),
        "texts {:?} close {:?}",
        p.texts,
        p.close
    );
    let secs = media_seconds(tmp.path(), "skip.mp4", &p);
    let expected = (rows.iter().map(|r| r.media_duration_us).sum::<i64>()
        - rows[1].media_duration_us) as f64
        / 1e6;
    assert!((secs - expected).abs() <= 1.0, "{secs} vs {expected}");
    let _ = s.stop().await;
}

/// A `more` sent before the server pauses is remembered: it answers the next `pause`. The same
/// client without it is closed once the pause outlasts the idle time.
#[tokio::test(flavor = "multi_thread")]
async fn an_early_more_is_remembered_and_an_unanswered_pause_times_out() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Chunks of 20 s, and a pause may last 2 s.
    let s = InProcess::start(&server_config(tmp.path(), 20, 2)).await;
    let id = Uuid::new_v4();
    let wall0 = 1_760_000_000_000_000i64;
    synthesize(&s.state.db, tmp.path(), id, wall0, 2).await;
    // 30 s: one pause (after the first 20 s), then the rest and `eos`.
    let query = format!("stream_id={id}&start={}&duration=30", wall0 / 1_000_000);
    // Sends `more` first and never answers a `pause`.
    let p = play(&s.video, &query, false, true).await;
    let pauses = p.texts.iter().filter(|t| *t == "pause").count();
    assert_eq!(pauses, 1, "texts {:?} close {:?}", p.texts, p.close);
    assert_eq!(
        p.texts.last().map(String::as_str),
        Some("eos"),
        "texts {:?} close {:?}",
        p.texts,
        p.close
    );
    let secs = media_seconds(tmp.path(), "early-more.mp4", &p);
    assert!((secs - 30.0).abs() <= 0.1, "played {secs} s of 30 s");
    // The control: no early `more`, no answer.
    let p = play(&s.video, &query, false, false).await;
    assert_eq!(
        p.texts.iter().filter(|t| *t == "pause").count(),
        1,
        "{:?}",
        p.texts
    );
    assert!(!p.texts.contains(&"eos".to_owned()), "{:?}", p.texts);
    assert_eq!(p.close, Some((1011, "Paused for too long".to_owned())));
    let _ = s.stop().await;
}

/// The end of a session survives a client that reads slowly and keeps talking: the server must
/// finish the closing handshake instead of dropping the connection with the client's messages
/// unread (the kernel then resets it and discards the tail still queued for the client).
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_chatty_client_still_gets_every_fragment_and_eos() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&server_config(tmp.path(), 300, 600)).await;
    let id = Uuid::new_v4();
    let wall0 = 1_760_000_000_000_000i64;
    synthesize(&s.state.db, tmp.path(), id, wall0, 3).await;
    let url = format!(
        "ws://{}/ws/archive?stream_id={id}&start={}&duration=60",
        s.video,
        wall0 / 1_000_000
    );
    let mut ws = ws_with_tiny_rcvbuf(&s.video, &url).await;
    // A slow client: it reads nothing at first (the server queues what the socket takes), then
    // little by little, and keeps talking.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut params, mut video_frames, mut texts) = (None, 0usize, Vec::new());
    let closed = loop {
        let m = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(other) => panic!("connection ended without a close frame: {other:?}, {texts:?}"),
            Err(_) => panic!("stalled"),
        };
        match m {
            Message::Binary(b) if first_box(&b) == "ftyp" => {
                params = Some(video_server::media::fmp4::parse_init(&b).expect("init segment"));
            }
            Message::Binary(b) if first_box(&b) == "moof" => {
                let p = params.as_ref().expect("the init segment comes first");
                video_frames += video_server::media::fmp4::parse_fragment(p, &b)
                    .expect("fragment parses")
                    .iter()
                    .filter(|f| f.track == video_server::media::TrackKind::Video)
                    .count();
                // Chatter the server has to read before it may close.
                let _ = ws.send(Message::Text("ping".into())).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Message::Text(t) => texts.push(t.to_string()),
            Message::Close(f) => break Some(f.map(|f| u16::from(f.code))),
            _ => {}
        }
    };
    assert_eq!(texts.last().map(String::as_str), Some("eos"), "{texts:?}");
    assert_eq!(closed, Some(None), "a normal close after eos");
    // Every video frame of the minute that was recorded (ffprobe counts them in the files).
    let to_us = wall0 + 60_000_000;
    assert_eq!(
        video_frames,
        recorded_video_frames(&s.state.db, id, wall0, to_us).await,
        "video frames of the minute"
    );
    let _ = s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_corrupt_segments_close_with_the_go_reason() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&server_config(tmp.path(), 300, 600)).await;
    let id = Uuid::new_v4();
    let wall0 = 1_760_000_000_000_000i64;
    synthesize(&s.state.db, tmp.path(), id, wall0, 1).await;
    let rows = video_server::db::segments::page(&s.state.db, id, 0, i64::MAX / 2, None, 100)
        .await
        .expect("page");
    assert!(!rows.is_empty());
    for r in &rows {
        std::fs::write(&r.storage_key, b"not an mp4").expect("corrupt");
    }
    let query = format!("stream_id={id}&start={}", wall0 / 1_000_000);
    let p = play(&s.video, &query, true, false).await;
    assert_eq!(
        p.close,
        Some((1011, "No valid archive segments found".to_owned()))
    );
    assert!(p.fragments.is_empty());
    let _ = s.stop().await;
}
