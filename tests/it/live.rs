//! Live streaming against real sources: the looping demo file and the GStreamer RTSP server.
//! MSE over WebSocket (Go wire format), HLS, H.265, reconnects, viewer accounting, slow viewers.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use video_server::media::{TrackKind, fmp4};

use crate::support::InProcess;
use crate::support::media::{
    RtspServer, eventually, ffmpeg_decode_errors, ffprobe, first_box, watch_live, write_mp4,
    ws_with_tiny_rcvbuf,
};

const DEMO: &str = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";

fn demo_stream(outputs: &str) -> String {
    format!(
        "[[local_files]]\nguid = \"{DEMO}\"\nfile = \"assets/demo.mp4\"\noutput_types = {outputs}\nloop = true\n"
    )
}

fn rtsp_stream(id: &str, url: &str) -> String {
    format!(
        "[[rtsp_streams]]\nguid = \"{id}\"\nurl = \"{url}\"\noutput_types = [\"mse\", \"hls\"]\n"
    )
}

/// Checks the Go message order and returns the decoded frames' keyframe flag of the first fragment.
fn check_wire_format(r: &crate::support::media::Received) {
    assert_eq!(
        first_box(&r.init),
        "ftyp",
        "second message starts with ftyp"
    );
    assert!(r.init.windows(4).any(|w| w == b"moov"), "init has moov");
    assert!(r.init.windows(4).any(|w| w == b"mvex"), "init has mvex");
    assert!(!r.fragments.is_empty(), "fragments arrived");
    for f in &r.fragments {
        assert_eq!(first_box(f), "moof", "every later message is moof+mdat");
        assert!(f.windows(4).any(|w| w == b"mdat"));
    }
    let params = fmp4::parse_init(&r.init).expect("init parses");
    let first = fmp4::parse_fragment(&params, &r.fragments[0]).expect("fragment parses");
    let video = first
        .iter()
        .find(|f| f.track == video_server::media::TrackKind::Video);
    if let Some(v) = video {
        assert!(v.keyframe, "the first fragment starts at a keyframe");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn file_source_mse_go_wire_format_and_decodes() {
    let s = InProcess::start(&demo_stream("[\"mse\"]")).await;
    let r = watch_live(&s.video, DEMO, Duration::from_secs(3)).await;
    assert!(r.codecs.starts_with("avc1.4D"), "codecs {}", r.codecs);
    assert!(r.codecs.ends_with(",mp4a.40.2"), "audio kept: {}", r.codecs);
    // Upper-case hex, as the Go original sent.
    let profile = r.codecs.split(',').next().unwrap_or("");
    assert_eq!(profile, profile.to_uppercase().replace("AVC1", "avc1"));
    check_wire_format(&r);
    assert!(
        r.fragments.len() >= 50,
        "low-latency fragments: {}",
        r.fragments.len()
    );
    let path = write_mp4(s.dir.path(), "live.mp4", &r);
    let errors = ffmpeg_decode_errors(&path.display().to_string());
    assert!(errors.trim().is_empty(), "ffmpeg: {errors}");
    let probe = ffprobe(&path.display().to_string());
    let codecs: Vec<&str> = probe["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .filter_map(|s| s["codec_name"].as_str())
        .collect();
    assert_eq!(codecs, vec!["h264", "aac"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_gets_pong_and_viewers_are_counted() {
    let s = InProcess::start(&demo_stream("[\"mse\"]")).await;
    let url = format!("ws://{}/ws/live?stream_id={DEMO}", s.video);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    ws.send(Message::Text("ping".into())).await.expect("ping");
    let mut pong = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if m == Message::Text("pong".into()) {
            pong = true;
            break;
        }
    }
    assert!(pong, "text ping is answered with text pong");
    let id = DEMO.parse().expect("uuid");
    assert_eq!(s.state.manager.status(id).expect("status").viewers, 1);
    drop(ws);
    eventually("viewer count back to 0", Duration::from_secs(5), || {
        (s.state.manager.status(id)?.viewers == 0).then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rtsp_h264_aac_codec_string_and_decodes() {
    let rtsp = RtspServer::start(0);
    let id = "566bfe72-2a8a-4d4c-9b84-2e1b9b4b1a3c";
    let s = InProcess::start(&rtsp_stream(id, &rtsp.url("av"))).await;
    let r = watch_live(&s.video, id, Duration::from_secs(3)).await;
    assert_eq!(r.codecs, "avc1.42C01E,mp4a.40.2");
    check_wire_format(&r);
    let path = write_mp4(s.dir.path(), "av.mp4", &r);
    let errors = ffmpeg_decode_errors(&path.display().to_string());
    assert!(errors.trim().is_empty(), "ffmpeg: {errors}");
    // /status reports the codecs and the flags.
    let st: serde_json::Value = reqwest::get(format!("{}/status", s.api))
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    let e = &st["streams"][id];
    assert_eq!(e["status"], json!(true));
    assert_eq!(e["online"], json!(true));
    assert_eq!(e["streaming"], json!(true));
    let codecs: Vec<&serde_json::Value> = e["codecs"]
        .as_array()
        .expect("codecs")
        .iter()
        .map(|c| &c["codec"])
        .collect();
    assert_eq!(codecs, [&json!("avc1.42C01E"), &json!("mp4a.40.2")]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rtsp_h265_closed_and_open_gop() {
    let rtsp = RtspServer::start(0);
    let idr = "0b0c3a9e-6a1c-4f55-8f0e-3c1d2b4a5e61";
    let cra = "1c1d4b0f-7b2d-4066-9f1f-4d2e3c5b6f72";
    let s = InProcess::start(&format!(
        "{}{}",
        rtsp_stream(idr, &rtsp.url("h265")),
        rtsp_stream(cra, &rtsp.url("h265cra"))
    ))
    .await;
    for (id, name) in [(idr, "h265"), (cra, "h265cra")] {
        let r = watch_live(&s.video, id, Duration::from_secs(3)).await;
        assert!(
            r.codecs.starts_with("hvc1.") || r.codecs.starts_with("hev1."),
            "{}",
            r.codecs
        );
        check_wire_format(&r);
        let path = write_mp4(s.dir.path(), &format!("{name}.mp4"), &r);
        let probe = ffprobe(&path.display().to_string());
        assert_eq!(probe["streams"][0]["codec_name"], json!("hevc"), "{name}");
        let errors = ffmpeg_decode_errors(&path.display().to_string());
        assert!(errors.trim().is_empty(), "{name}: ffmpeg: {errors}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hls_playlist_is_valid_and_names_stay_unique_across_restarts() {
    let s = InProcess::start(&format!(
        "[hls]\nms_per_segment = 1000\nwindow_size = 3\nwindow_capacity = 5\n{}",
        demo_stream("[\"hls\"]")
    ))
    .await;
    let base = format!("http://{}/hls/{DEMO}.m3u8", s.video);
    // The first request waits for the first playlist.
    let r = reqwest::get(&base).await.expect("playlist");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/vnd.apple.mpegurl")
    );
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-cache")
    );
    let text = r.text().await.expect("text");
    assert!(text.contains("#EXT-X-VERSION:7"), "{text}");
    assert!(text.contains("#EXT-X-MAP:URI="), "{text}");
    // Once a few segments are listed, validate the playlist with ffmpeg over HTTP.
    eventually_async("3 segments listed", || async {
        let text = reqwest::get(&base).await.ok()?.text().await.ok()?;
        (text.lines().filter(|l| l.ends_with(".m4s")).count() >= 3).then_some(())
    })
    .await;
    let probe = ffprobe(&base);
    assert!(probe["streams"].as_array().is_some_and(|s| !s.is_empty()));
    // A live playlist never ends, so decode a snapshot of it to the end: the playlist with every
    // file it names, closed with EXT-X-ENDLIST.
    let snapshot = s.dir.path().join("snapshot");
    std::fs::create_dir_all(&snapshot).expect("mkdir");
    let text = reqwest::get(&base)
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    for line in text.lines() {
        let uri = if line.starts_with("#EXT-X-MAP:URI=") {
            line.trim_start_matches("#EXT-X-MAP:URI=")
                .trim_matches('"')
                .to_owned()
        } else if !line.starts_with('#') && !line.is_empty() {
            line.to_owned()
        } else {
            continue;
        };
        let body = reqwest::get(format!("http://{}/hls/{uri}", s.video))
            .await
            .expect("segment")
            .bytes()
            .await
            .expect("bytes");
        std::fs::write(snapshot.join(&uri), body).expect("write");
    }
    let local = snapshot.join("index.m3u8");
    std::fs::write(&local, format!("{text}#EXT-X-ENDLIST\n")).expect("write playlist");
    let local = local.display().to_string();
    let duration: f64 = ffprobe(&local)["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("duration");
    assert!(duration >= 2.0, "snapshot duration {duration}");
    let errors = ffmpeg_decode_errors(&local);
    assert!(errors.trim().is_empty(), "ffmpeg: {errors}");

    let names = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.ends_with(".m4s"))
            .map(str::to_owned)
            .collect()
    };
    let before = names(
        &reqwest::get(&base)
            .await
            .expect("get")
            .text()
            .await
            .expect("text"),
    );
    assert!(!before.is_empty());
    // Restart the stream through the API (off and on: a new runtime, a new HLS writer).
    let c = reqwest::Client::new();
    for enabled in [false, true] {
        let r = c
            .patch(format!("{}/api/v1/streams/{DEMO}", s.api))
            .header("content-type", "application/merge-patch+json")
            .body(format!(r#"{{"enabled":{enabled}}}"#))
            .send()
            .await
            .expect("patch");
        assert_eq!(r.status(), 200);
    }
    // The new writer's playlist: none of the old names, and none reused.
    let after = eventually_async("the restarted writer's playlist", || async {
        let text = reqwest::get(&base).await.ok()?.text().await.ok()?;
        let now = names(&text);
        (!now.is_empty() && now.iter().all(|n| !before.contains(n))).then_some(now)
    })
    .await;
    let prefix = |n: &str| n.rsplit_once('_').map(|(p, _)| p.to_owned());
    assert_ne!(prefix(&after[0]), prefix(&before[0]), "a new writer token");
    // Segment responses have the right type; a traversal attempt is refused.
    let seg = c
        .get(format!("http://{}/hls/{}", s.video, after[0]))
        .send()
        .await
        .expect("segment");
    assert_eq!(seg.status(), 200);
    assert_eq!(
        seg.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("video/iso.segment")
    );
    s.stop().await;
}

/// Video and audio packet times (pts, dts, duration in seconds) of one MPEG-TS file, by ffprobe
/// (which also says nothing on stderr: no continuity or PES errors).
fn ts_packets(path: &std::path::Path) -> Vec<(String, f64, f64, f64)> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json", "-show_entries"])
        .arg("packet=codec_type,pts_time,dts_time,duration_time")
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let num = |p: &serde_json::Value, k: &str| -> f64 {
        p[k].as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(f64::NAN)
    };
    v["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .map(|p| {
            (
                p["codec_type"].as_str().unwrap_or("").to_owned(),
                num(p, "pts_time"),
                num(p, "dts_time"),
                num(p, "duration_time"),
            )
        })
        .collect()
}

/// `[hls] segment_format = "mpegts"`: a version-3 playlist of `.ts` segments that ffmpeg reads
/// as H.264 + AAC without errors, each segment starting with a keyframe, and timestamps that run
/// on from one segment to the next.
#[tokio::test(flavor = "multi_thread")]
async fn hls_mpegts_segments_are_valid_and_continuous() {
    let s = InProcess::start(&format!(
        "[hls]\nms_per_segment = 1000\nwindow_size = 4\nwindow_capacity = 6\nsegment_format = \"mpegts\"\n{}",
        demo_stream("[\"hls\"]")
    ))
    .await;
    let base = format!("http://{}/hls/{DEMO}.m3u8", s.video);
    let text = eventually_async("4 segments listed", || async {
        let text = reqwest::get(&base).await.ok()?.text().await.ok()?;
        (text.lines().filter(|l| l.ends_with(".ts")).count() >= 4).then_some(text)
    })
    .await;
    assert!(text.contains("#EXT-X-VERSION:3"), "{text}");
    assert!(
        !text.contains("EXT-X-MAP") && !text.contains(".m4s"),
        "{text}"
    );
    let snapshot = s.dir.path().join("snapshot");
    std::fs::create_dir_all(&snapshot).expect("mkdir");
    let mut files = Vec::new();
    for uri in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let r = reqwest::get(format!("http://{}/hls/{uri}", s.video))
            .await
            .expect("segment");
        assert_eq!(r.status(), 200, "{uri}");
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("video/mp2t")
        );
        let body = r.bytes().await.expect("bytes");
        assert_eq!(body.len() % 188, 0, "{uri}: whole TS packets");
        let path = snapshot.join(uri);
        std::fs::write(&path, body).expect("write");
        files.push(path);
    }
    let local = snapshot.join("index.m3u8");
    std::fs::write(&local, format!("{text}#EXT-X-ENDLIST\n")).expect("write playlist");
    let local = local.display().to_string();
    let probe = ffprobe(&local);
    let codecs: Vec<&str> = probe["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .filter_map(|s| s["codec_name"].as_str())
        .collect();
    assert_eq!(codecs, ["h264", "aac"], "{probe}");
    assert_eq!(probe["format"]["format_name"], "hls", "{probe}");
    let errors = ffmpeg_decode_errors(&local);
    assert!(errors.trim().is_empty(), "ffmpeg: {errors}");
    // Per segment: starts with a video keyframe's time; the next starts where this one ended.
    let mut next_video: Option<f64> = None;
    let mut last_audio_end: Option<f64> = None;
    for f in &files {
        assert_eq!(
            ffmpeg_decode_errors(&f.display().to_string()).trim(),
            "",
            "{}",
            f.display()
        );
        let packets = ts_packets(f);
        let video: Vec<_> = packets.iter().filter(|p| p.0 == "video").collect();
        let audio: Vec<_> = packets.iter().filter(|p| p.0 == "audio").collect();
        assert!(video.len() >= 20 && !audio.is_empty(), "{}", f.display());
        let first_dts = video.iter().map(|p| p.2).fold(f64::INFINITY, f64::min);
        if let Some(expected) = next_video {
            assert!(
                (first_dts - expected).abs() < 0.002,
                "{}: video at {first_dts}, expected {expected}",
                f.display()
            );
        }
        let last = video
            .iter()
            .max_by(|a, b| a.2.total_cmp(&b.2))
            .expect("video");
        next_video = Some(last.2 + 0.04);
        let first_audio = audio.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        if let Some(end) = last_audio_end {
            assert!(
                (first_audio - end).abs() < 0.002,
                "{}: audio at {first_audio}, expected {end}",
                f.display()
            );
        }
        let a_last = audio
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("audio");
        last_audio_end = Some(a_last.1 + a_last.3);
        // Presentation starts after the PCR: the original's one-second offset.
        assert!(first_dts >= 1.0, "{}: {first_dts}", f.display());
    }
    s.stop().await;
}

/// A live viewer's messages after the codec message and init segment: every one a fragment, the
/// video timeline without a jump or a step back.
struct Timeline {
    params: video_server::media::StreamParams,
    /// End of the last video frame (dts + duration), in the video timescale.
    video_end: Option<i64>,
    fragments: usize,
}

impl Timeline {
    /// Reads the codec message and the init segment.
    async fn start(ws: &mut Ws) -> Timeline {
        let codecs = next_binary(ws).await;
        assert_eq!(
            codecs.first(),
            Some(&0x09),
            "first message is 0x09 + codecs"
        );
        let init = next_binary(ws).await;
        assert_eq!(
            first_box(&init),
            "ftyp",
            "second message is the init segment"
        );
        Timeline {
            params: fmp4::parse_init(&init).expect("init parses"),
            video_end: None,
            fragments: 0,
        }
    }

    /// Reads `n` more messages: each must be a fragment continuing the video timeline exactly
    /// (a new `0x09`, a new init segment or a timestamp jump fails).
    async fn follow(&mut self, ws: &mut Ws, n: usize) {
        for _ in 0..n {
            let b = next_binary(ws).await;
            assert_eq!(
                first_box(&b),
                "moof",
                "after {} fragments: message {:02x?}... is not a fragment",
                self.fragments,
                &b[..b.len().min(12)]
            );
            let frames = fmp4::parse_fragment(&self.params, &b).expect("fragment parses");
            for f in frames.iter().filter(|f| f.track == TrackKind::Video) {
                if let Some(end) = self.video_end {
                    // The muxer maps times through µs: allow its rounding, not a frame (3600).
                    assert!(
                        (f.dts - end).abs() <= 2,
                        "video timeline jumps from {end} to {} after {} fragments",
                        f.dts,
                        self.fragments
                    );
                }
                self.video_end = Some(f.dts + i64::from(f.duration));
            }
            self.fragments += 1;
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next binary message (text such as `pong` is skipped; a close or a 20 s silence fails).
async fn next_binary(ws: &mut Ws) -> Vec<u8> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return b.to_vec(),
            Ok(Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("expected a binary message: {other:?}"),
        }
    }
}

/// `EXT-X-PROGRAM-DATE-TIME` of each segment of a playlist, with whether a discontinuity
/// precedes it.
fn dated_segments(playlist: &str) -> Vec<(chrono::DateTime<chrono::FixedOffset>, bool)> {
    let mut out = Vec::new();
    let (mut date, mut disc) = (None, false);
    for line in playlist.lines() {
        if let Some(d) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            date = Some(chrono::DateTime::parse_from_rfc3339(d).expect("RFC 3339 date"));
        } else if line == "#EXT-X-DISCONTINUITY" {
            disc = true;
        } else if !line.starts_with('#') && !line.is_empty() {
            let d = date
                .take()
                .unwrap_or_else(|| panic!("{line} has no date:\n{playlist}"));
            out.push((d, std::mem::take(&mut disc)));
        }
    }
    out
}

/// A camera that goes away and comes back: the stream reconnects (backoff), a live viewer on the
/// same socket keeps receiving fragments on one continuous timeline (no new codec message or init
/// segment), and the HLS playlist marks the restart with a discontinuity, its segments dated with
/// the wall clock across the outage.
#[tokio::test(flavor = "multi_thread")]
async fn rtsp_fault_reconnects_and_viewers_keep_receiving() {
    let mut rtsp = RtspServer::start(0);
    let id = "2d2e5c10-8c3e-4177-a020-5e3f4d6c7083";
    let s = InProcess::start(&format!(
        "[hls]\nms_per_segment = 1000\nwindow_size = 10\nwindow_capacity = 12\n{}",
        rtsp_stream(id, &rtsp.url("test"))
    ))
    .await;
    let uuid = id.parse().expect("uuid");
    let url = format!("ws://{}/ws/live?stream_id={id}", s.video);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let mut timeline = Timeline::start(&mut ws).await;
    timeline.follow(&mut ws, 25).await;
    let playlist = format!("http://{}/hls/{id}.m3u8", s.video);
    let before = eventually_async("a playlist of 2 segments", || async {
        let text = reqwest::get(&playlist).await.ok()?.text().await.ok()?;
        (dated_segments(&text).len() >= 2).then_some(text)
    })
    .await;
    assert!(!before.contains("#EXT-X-DISCONTINUITY"), "{before}");

    // The camera drops every connection and refuses new ones, then comes back.
    rtsp.command("down");
    let down_at = chrono::Utc::now();
    eventually("status shows the outage", Duration::from_secs(30), || {
        let st = s.state.manager.status(uuid)?;
        (!st.online && !st.last_health_error.is_empty()).then_some(())
    })
    .await;
    rtsp.command("up");
    eventually("status back online", Duration::from_secs(40), || {
        let st = s.state.manager.status(uuid)?;
        (st.online && st.status).then_some(())
    })
    .await;
    // The same socket: fragments only, continuing the timeline.
    timeline.follow(&mut ws, 50).await;

    // HLS: the first segment after the restart follows a discontinuity and is dated after it.
    let after = eventually_async("a discontinuity in the playlist", || async {
        let text = reqwest::get(&playlist).await.ok()?.text().await.ok()?;
        let dated = dated_segments(&text);
        let i = dated.iter().position(|(_, disc)| *disc)?;
        (i > 0 && i + 1 < dated.len()).then_some(text)
    })
    .await;
    let dated = dated_segments(&after);
    let i = dated
        .iter()
        .position(|(_, disc)| *disc)
        .expect("discontinuity");
    let now = chrono::Utc::now();
    assert!(
        dated[i - 1].0 < down_at,
        "a segment from before the outage: {after}"
    );
    assert!(
        dated[i].0 >= down_at,
        "the restart's segment is dated after the outage began: {after}"
    );
    for w in dated.windows(2) {
        assert!(w[0].0 < w[1].0, "dates increase: {after}");
    }
    for (d, _) in &dated {
        let age = now.signed_duration_since(*d);
        assert!(
            age.num_seconds() >= 0 && age.num_seconds() < 60,
            "a wall-clock date: {d} ({after})"
        );
    }
    s.stop().await;
}

/// Polls an async `f` every 100 ms until it returns `Some`, or panics after 30 s.
async fn eventually_async<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_viewers_come_and_go_without_leaks() {
    let s = InProcess::start(&demo_stream("[\"mse\"]")).await;
    let uuid = DEMO.parse().expect("uuid");
    // Warm up once so the codecs are known.
    let _ = watch_live(&s.video, DEMO, Duration::from_millis(200)).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let rt = s.state.manager.runtime(uuid).expect("running");
    let tasks_before = metrics.num_alive_tasks();
    let url = format!("ws://{}/ws/live?stream_id={DEMO}", s.video);
    for i in 0..1000 {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        if i % 10 == 0 {
            // Some read a little, some leave at once.
            let _ = tokio::time::timeout(Duration::from_millis(50), ws.next()).await;
        }
        drop(ws);
    }
    eventually("every viewer gone", Duration::from_secs(20), || {
        let st = s.state.manager.status(uuid)?;
        (st.viewers == 0 && rt.hub.consumers() == 0).then_some(())
    })
    .await;
    let tasks_after = eventually("tasks settle", Duration::from_secs(10), || {
        let n = metrics.num_alive_tasks();
        (n <= tasks_before + 2).then_some(n)
    })
    .await;
    assert!(
        tasks_after <= tasks_before + 2,
        "{tasks_before} -> {tasks_after}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_drives_the_runtime() {
    let rtsp = RtspServer::start(0);
    let s = InProcess::start("").await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/api/v1/streams", s.api))
        .json(&json!({"source": {"kind": "rtsp", "url": rtsp.url("test")}, "outputs": ["mse"]}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let id: String = r.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let uuid = id.parse().expect("uuid");
    eventually("created stream runs", Duration::from_secs(20), || {
        s.state.manager.status(uuid)?.status.then_some(())
    })
    .await;
    let r = watch_live(&s.video, &id, Duration::from_secs(1)).await;
    assert_eq!(r.codecs, "avc1.42C01E");
    // Update: now the H.264+AAC mount; the runtime restarts with it.
    let r = c
        .patch(format!("{}/api/v1/streams/{id}", s.api))
        .json(&json!({"source": {"url": rtsp.url("av")}}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    eventually("updated stream has audio", Duration::from_secs(20), || {
        let st = s.state.manager.status(uuid)?;
        (st.codecs.len() == 2).then_some(())
    })
    .await;
    // Delete: the stream stops (bounded) and is gone; a viewer gets a close frame saying so.
    let url = format!("ws://{}/ws/live?stream_id={id}", s.video);
    let (mut viewer, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("viewer");
    let first = tokio::time::timeout(Duration::from_secs(10), viewer.next()).await;
    assert!(
        matches!(first, Ok(Some(Ok(Message::Binary(_))))),
        "{first:?}"
    );
    let r = c
        .delete(format!("{}/api/v1/streams/{id}", s.api))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    assert!(s.state.manager.status(uuid).is_none());
    let close = async {
        while let Some(Ok(m)) = viewer.next().await {
            if let Message::Close(f) = m {
                return f.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
        }
        None
    };
    let close = tokio::time::timeout(Duration::from_secs(10), close).await;
    assert_eq!(close, Ok(Some((1001, "Stream stopped".to_owned()))));
    s.stop().await;
}

/// Makes a short, high-bitrate H.264 clip (random noise compresses badly), so a viewer that reads
/// nothing fills its socket buffers within a second or two.
fn noise_clip(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("noise.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "nullsrc=s=640x360:r=25,geq=random(1)*255:128:128",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-keyint_min",
            "25",
            "-sc_threshold",
            "0",
            "-b:v",
            "20M",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&path)
        .status()
        .expect("ffmpeg");
    assert!(status.success());
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_viewer_does_not_delay_others_and_is_resynced_at_keyframes() {
    let s = InProcess::start("").await;
    let clip = noise_clip(s.dir.path());
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/api/v1/streams", s.api))
        .json(&json!({"source": {"kind": "file", "path": clip, "loop": true}, "outputs": ["mse"]}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let uuid: uuid::Uuid = id.parse().expect("uuid");
    eventually("stream runs", Duration::from_secs(20), || {
        s.state.manager.status(uuid)?.status.then_some(())
    })
    .await;

    // The slow viewer: a tiny receive buffer, and it reads nothing for 8 s.
    let url = format!("ws://{}/ws/live?stream_id={id}", s.video);
    let mut slow = ws_with_tiny_rcvbuf(&s.video, &url).await;

    // Meanwhile a normal viewer watches for 8 s and gets (nearly) every frame in real time.
    let fast = watch_live(&s.video, &id, Duration::from_secs(8)).await;
    assert!(
        fast.fragments.len() >= 150,
        "fast viewer got {} fragments in 8 s",
        fast.fragments.len()
    );
    let skips = s.state.manager.status(uuid).expect("status").lag_skips;
    assert!(skips > 0, "the slow viewer was skipped ahead");
    let st: serde_json::Value = c
        .get(format!("{}/api/v1/streams/{id}/status", s.api))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert!(st["lag_skips"].as_u64().is_some_and(|n| n > 0), "{st}");

    // Now the slow viewer reads what it was sent: whole GOP prefixes and a clean resync, so the
    // concatenation decodes without errors.
    let mut r = crate::support::media::Received::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, slow.next()).await {
        if let Message::Binary(b) = m {
            if r.codecs.is_empty() {
                r.codecs = String::from_utf8_lossy(&b[1..]).into_owned();
            } else if r.init.is_empty() {
                r.init = b.to_vec();
            } else {
                r.fragments.push(b.to_vec());
            }
        }
    }
    assert!(!r.fragments.is_empty(), "the slow viewer still receives");
    let path = write_mp4(s.dir.path(), "slow.mp4", &r);
    let errors = ffmpeg_decode_errors(&path.display().to_string());
    assert!(errors.trim().is_empty(), "slow viewer's stream: {errors}");
    s.stop().await;
}
