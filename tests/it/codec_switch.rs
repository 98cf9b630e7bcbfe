//! A camera that switches resolution mid-stream (same codec string, new SPS/PPS): viewers get the
//! new init segment alone, never a second `0x09` message, live and in archive playback, so the Go
//! example clients (one SourceBuffer from the first `0x09`) keep playing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;
use video_server::media::fmp4;

use crate::support::InProcess;
use crate::support::media::{RtspServer, first_box};

/// Seconds of each half of the switching clip.
pub const HALF_S: u32 = 5;

/// Writes an MPEG-TS file: `HALF_S` seconds of 640x360 then `HALF_S` seconds of 320x180, both
/// H.264 Main level 3.0 (so one codec string, `avc1.4D401E`) with a keyframe every second and
/// continuous timestamps. Played by the RTSP test server's `/file` mount, it is a camera whose
/// parameter sets change mid-stream.
pub fn switching_clip(dir: &Path) -> PathBuf {
    clip_of_halves(
        dir,
        "switching.ts",
        [("640x360", "main"), ("320x180", "main")],
    )
}

/// Like [`switching_clip`], but the second half is H.264 High: the codec string changes too
/// (`avc1.4D401E` → `avc1.64001E`), as when a camera's encoder profile is changed.
pub fn codec_changing_clip(dir: &Path) -> PathBuf {
    clip_of_halves(
        dir,
        "codec-change.ts",
        [("640x360", "main"), ("320x180", "high")],
    )
}

/// Two `HALF_S`-second halves of `(size, H.264 profile)` (level 3.0, GOP 1 s, no B-frames) with
/// continuous timestamps, concatenated into one MPEG-TS file `name` under `dir`.
fn clip_of_halves(dir: &Path, name: &str, halves: [(&str, &str); 2]) -> PathBuf {
    let mut all = Vec::new();
    for (i, (size, profile)) in halves.iter().enumerate() {
        let part = dir.join(format!("{name}.half{i}.ts"));
        let offset = i as u32 * HALF_S;
        let status = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size={size}:rate=25:duration={HALF_S}"))
            .args(["-c:v", "libx264", "-profile:v", profile])
            .args(["-level", "3.0", "-g", "25"])
            .args(["-bf", "0", "-pix_fmt", "yuv420p", "-output_ts_offset"])
            .arg(offset.to_string())
            .args(["-f", "mpegts"])
            .arg(&part)
            .status()
            .expect("run ffmpeg");
        assert!(status.success(), "ffmpeg made {}", part.display());
        all.extend(std::fs::read(&part).expect("read half"));
    }
    let path = dir.join(name);
    std::fs::write(&path, all).expect("write clip");
    path
}

/// What one viewer received, in order.
#[derive(Debug, Default)]
pub struct Messages {
    /// Codec lists of the `0x09` messages.
    pub codec_messages: Vec<String>,
    /// (width, height) of each init segment.
    pub inits: Vec<(u16, u16)>,
    pub fragments: usize,
    /// Video frames in the fragments.
    pub frames: usize,
    /// The setup of the last init segment, to read fragments with.
    params: Option<std::sync::Arc<video_server::media::StreamParams>>,
    /// Whether the first video frame was a keyframe (`None` before any video frame).
    pub first_video_keyframe: Option<bool>,
    /// Binary messages that are none of the above.
    pub other: usize,
    pub texts: Vec<String>,
    /// The first box of the last binary message.
    pub last_box: String,
    /// The kinds of message in order of arrival, runs collapsed: `c` codec message, `i` init
    /// segment, `f` fragment (a switch reads `cif` + `if`, a codec change `cif` + `cif`).
    pub order: String,
}

impl Messages {
    pub fn take(&mut self, b: &[u8]) {
        self.last_box = first_box(b).to_owned();
        let kind = match (b.first(), first_box(b)) {
            (Some(0x09), _) => 'c',
            (_, "ftyp") => 'i',
            (_, "moof") => 'f',
            _ => '?',
        };
        if !self.order.ends_with(kind) {
            self.order.push(kind);
        }
        if b.first() == Some(&0x09) {
            self.codec_messages
                .push(String::from_utf8_lossy(&b[1..]).into_owned());
        } else if first_box(b) == "ftyp" {
            let p = fmp4::parse_init(b).expect("init segment parses");
            let v = p.video.as_ref().expect("video track");
            self.inits.push((v.width, v.height));
            self.params = Some(std::sync::Arc::new(p));
        } else if first_box(b) == "moof" {
            self.fragments += 1;
            let p = self.params.as_ref().expect("init before fragments");
            let frames = fmp4::parse_fragment(p, b).expect("fragment parses");
            let mut video = frames
                .iter()
                .filter(|f| f.track == video_server::media::TrackKind::Video)
                .peekable();
            if self.first_video_keyframe.is_none() {
                self.first_video_keyframe = video.peek().map(|f| f.keyframe);
            }
            self.frames += video.count();
        } else {
            self.other += 1;
        }
    }

    /// The distinct sizes in order of appearance.
    pub fn sizes(&self) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for s in &self.inits {
            if out.last() != Some(s) {
                out.push(*s);
            }
        }
        out
    }
}

/// A `[[rtsp_streams]]` entry pulling `url`. On-demand streams start the RTSP session (and so the
/// clip, from its beginning) when their first viewer arrives.
pub fn stream_entry(id: Uuid, url: &str, recording: bool, on_demand: bool) -> String {
    format!(
        "[[rtsp_streams]]\nguid = \"{id}\"\nurl = \"{url}\"\noutput_types = [\"mse\"]\n\
         on_demand = {on_demand}\narchive = {{ recording = {recording}, ms_per_file = 60000 }}\n"
    )
}

/// The RTSP test server playing the switching clip at `/file` (from the start for every client),
/// and that URL.
pub fn switching_source(tmp: &Path) -> (RtspServer, String) {
    source_of(&switching_clip(tmp))
}

/// The RTSP test server playing `clip` at `/file`, and that URL.
pub fn source_of(clip: &Path) -> (RtspServer, String) {
    let rtsp = RtspServer::start_with_file(0, clip);
    let url = format!("rtsp://127.0.0.1:{}/file", rtsp.port);
    (rtsp, url)
}

/// Our server with recording and serving on, archive under `tmp`, and `streams` (entries).
pub async fn start_server(tmp: &Path, streams: &str) -> InProcess {
    let archive = format!(
        "[archive]\nrecording = true\nserving = true\ndirectory = \"{}\"\n",
        tmp.join("mp4").display()
    );
    InProcess::start(&format!("{archive}{streams}")).await
}

/// What a viewer of the codec-changing clip must get: a `0x09` codec message for each codec (Main,
/// then High), each followed by its init segment (640x360, then 320x180) and fragments, nothing
/// else.
pub fn assert_codec_change(got: &Messages) {
    assert_eq!(
        got.codec_messages,
        vec!["avc1.4D401E".to_owned(), "avc1.64001E".to_owned()],
        "{got:?}"
    );
    assert_eq!(got.sizes(), vec![(640, 360), (320, 180)], "{got:?}");
    assert_eq!(got.order, "cifcif", "{got:?}");
    assert_eq!(got.other, 0, "{got:?}");
}

/// A live viewer of on-demand stream `id` on `video`: every message until a second of video
/// after the clip's switch has arrived (the clip switches after `HALF_S` s).
pub async fn watch_the_switch(video: &str, id: Uuid) -> Messages {
    let url = format!("ws://{video}/ws/live?stream_id={id}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let mut got = Messages::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut after_switch = 0;
    while after_switch < 25 {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no switch within 40 s: {got:?}"));
        match msg {
            Some(Ok(Message::Binary(b))) => got.take(&b),
            Some(Ok(Message::Text(t))) => got.texts.push(t.to_string()),
            Some(Ok(Message::Close(f))) => panic!("server closed the viewer: {f:?} {got:?}"),
            Some(Ok(_)) => {}
            other => panic!("viewer ended: {other:?} {got:?}"),
        }
        if got.sizes().len() >= 2 && got.last_box == "moof" {
            after_switch += 1;
        }
    }
    let _ = ws.send(Message::Close(None)).await;
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resolution_switch_sends_a_new_init_segment_without_a_codec_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_rtsp, url) = switching_source(tmp.path());
    let id = Uuid::new_v4();
    let s = start_server(tmp.path(), &stream_entry(id, &url, false, true)).await;
    let got = watch_the_switch(&s.video, id).await;
    assert_eq!(
        got.codec_messages,
        vec!["avc1.4D401E".to_owned()],
        "one codec message for one codec string: {got:?}"
    );
    assert_eq!(got.sizes(), vec![(640, 360), (320, 180)], "{got:?}");
    assert_eq!(got.order, "cifif", "{got:?}");
    assert!(got.frames > 50, "{got:?}");
    assert_eq!(got.other, 0, "{got:?}");
    let _ = s.stop().await;
}

/// A camera whose codec string changes (H.264 Main → High): the viewer gets a new `0x09` with the
/// new codec list, then the new init segment, then fragments (go-original.md §3.1: a client makes
/// a new SourceBuffer for a new codec message).
#[tokio::test(flavor = "multi_thread")]
async fn a_codec_change_sends_a_new_codec_message_then_the_init_segment() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_rtsp, url) = source_of(&codec_changing_clip(tmp.path()));
    let id = Uuid::new_v4();
    let s = start_server(tmp.path(), &stream_entry(id, &url, false, true)).await;
    assert_codec_change(&watch_the_switch(&s.video, id).await);
    let _ = s.stop().await;
}

/// The same codec change in Chromium through our MSE player (e2e/pages/mse.html): it tears its
/// MediaSource down on the second `0x09`, builds one for the new codec list, and plays on — the
/// picture keeps moving and time advances after the reset.
#[tokio::test(flavor = "multi_thread")]
async fn our_player_plays_through_a_codec_change_in_chromium() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_rtsp, url) = source_of(&codec_changing_clip(tmp.path()));
    let id = Uuid::new_v4();
    let pages = std::sync::Arc::new(crate::support::browser::PageSockets::bind(1));
    let streams = format!(
        "{}{}",
        stream_entry(id, &url, false, true),
        pages.cors_toml()
    );
    let s = start_server(tmp.path(), &streams).await;
    let video = s.video.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        crate::e2e::run_browser_for(
            &video,
            &pages,
            &id.to_string(),
            "mse",
            &[("EXPECT_RESET", "1"), ("PICTURE", "moving")],
        )
    })
    .await
    .expect("browser run");
    let stats = &verdict["stats"];
    assert!(stats["codecChanges"].as_u64() >= Some(1), "{verdict}");
    // The run ends as soon as playback advanced after a reset: the change seen is Main → High
    // (the clip starting over at its end would change back, but only after 10 s).
    assert!(stats["codecMessages"].as_u64() >= Some(2), "{verdict}");
    assert_eq!(stats["previousCodecs"], "avc1.4D401E", "{verdict}");
    assert!(
        verdict["errors"].as_array().is_some_and(Vec::is_empty),
        "{verdict}"
    );
    let _ = s.stop().await;
}

/// Waits until the stream's first two segments are complete (the recorder cuts a segment at the
/// switch; the second one closes when the clip ends); returns their `(start, end)` in Unix
/// seconds, rounded outwards.
pub async fn two_recorded_segments(api: &str, id: Uuid) -> (i64, i64) {
    let url = format!("{api}/api/v1/streams/{id}/segments");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let page: serde_json::Value = reqwest::get(&url)
            .await
            .expect("segments")
            .json()
            .await
            .expect("json");
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= 2 && items[..2].iter().all(|s| s["state"] == "complete") {
            let secs = |v: &serde_json::Value| {
                chrono::DateTime::parse_from_rfc3339(v.as_str().expect("time"))
                    .expect("rfc3339")
                    .timestamp_millis()
            };
            let start_ms = secs(&items[0]["start"]);
            let end_ms = secs(&items[1]["end"]);
            return (start_ms / 1000, (end_ms + 999) / 1000);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "two complete segments within 60 s: {page}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_playback_across_a_resolution_switch_sends_one_codec_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_rtsp, url) = switching_source(tmp.path());
    let id = Uuid::new_v4();
    let s = start_server(tmp.path(), &stream_entry(id, &url, true, false)).await;
    let (start, end) = two_recorded_segments(&s.api, id).await;
    let url = format!(
        "ws://{}/ws/archive?stream_id={id}&start={start}&duration={}",
        s.video,
        end - start
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let mut got = Messages::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !got.texts.iter().any(|t| t == "eos") {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no eos within 30 s: {got:?}"));
        match msg {
            Some(Ok(Message::Binary(b))) => got.take(&b),
            Some(Ok(Message::Text(t))) => got.texts.push(t.to_string()),
            other => panic!("session ended before eos: {other:?} {got:?}"),
        }
    }
    assert_eq!(
        got.codec_messages,
        vec!["avc1.4D401E".to_owned()],
        "{got:?}"
    );
    assert_eq!(got.sizes(), vec![(640, 360), (320, 180)], "{got:?}");
    // Both halves were played (25 fps); the source's first GOP may be cut.
    assert!(got.frames as u32 >= 2 * HALF_S * 25 - 30, "{got:?}");
    assert_eq!(got.other, 0, "{got:?}");
    let _ = s.stop().await;
}

/// The Go example clients' way of consuming the stream (e2e/pages/go-client.html: one
/// SourceBuffer from the first `0x09`, everything else appended to it) plays on through the
/// switch, live and in archive playback across segments with different parameters, in Chromium.
#[tokio::test(flavor = "multi_thread")]
async fn go_example_clients_play_through_a_resolution_switch_in_chromium() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_rtsp, url) = switching_source(tmp.path());
    let (live, recorded) = (Uuid::new_v4(), Uuid::new_v4());
    let streams = format!(
        "{}{}",
        stream_entry(live, &url, false, true),
        stream_entry(recorded, &url, true, false)
    );
    let pages = std::sync::Arc::new(crate::support::browser::PageSockets::bind(1));
    let s = start_server(tmp.path(), &format!("{streams}{}", pages.cors_toml())).await;
    let video = s.video.clone();
    let p = pages.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        crate::e2e::run_browser_for(
            &video,
            &p,
            &live.to_string(),
            "go-live",
            &[("EXPECT_SIZES", "2")],
        )
    })
    .await
    .expect("browser run");
    check_go_client(&verdict);

    let (start, end) = two_recorded_segments(&s.api, recorded).await;
    let video = s.video.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        crate::e2e::run_browser_for(
            &video,
            &pages,
            &recorded.to_string(),
            "go-archive",
            &[
                ("START", &start.to_string()),
                ("DURATION", &(end - start).to_string()),
                ("EXPECT_SIZES", "2"),
            ],
        )
    })
    .await
    .expect("browser run");
    check_go_client(&verdict);
    assert_eq!(verdict["stats"]["eos"], true, "{verdict}");
    let _ = s.stop().await;
}

fn check_go_client(verdict: &serde_json::Value) {
    let stats = &verdict["stats"];
    assert_eq!(
        stats["sizes"],
        serde_json::json!(["640x360", "320x180"]),
        "{verdict}"
    );
    assert_eq!(stats["ignoredCodecMessages"], 0, "{verdict}");
    assert_eq!(verdict["codecs"], "avc1.4D401E", "{verdict}");
    assert!(
        verdict["errors"].as_array().is_some_and(Vec::is_empty),
        "{verdict}"
    );
}
