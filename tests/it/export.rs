//! `GET /api/v1/streams/{id}/export.mp4`: exports of recorded segments play in ffmpeg, start on
//! the requested frame, last as long as asked, and honour Range, ETag and the error contract.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;
use video_server::db::Db;
use video_server::db::segments::{self, SegmentRow};

use crate::support::media::{ffmpeg_decode_errors, ffprobe};
use crate::support::{InProcess, TestDb};

const DEMO: &str = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";

/// One video frame of the demo clip (25 fps): the tolerance on durations.
const FRAME_S: f64 = 0.04;

/// Complete segments of a stream, oldest first.
async fn complete_segments(db: &Db, id: Uuid) -> Vec<SegmentRow> {
    segments::page(db, id, 0, i64::MAX / 2, None, 1000)
        .await
        .expect("segments")
        .into_iter()
        .filter(|r| r.state == "complete")
        .collect()
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Top-level box types of an MP4 file.
fn top_level_boxes(data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= data.len() {
        let size32 = u32::from_be_bytes(data[pos..pos + 4].try_into().expect("4 bytes"));
        let size = if size32 == 1 {
            u64::from_be_bytes(data[pos + 8..pos + 16].try_into().expect("8 bytes")) as usize
        } else {
            size32 as usize
        };
        out.push(String::from_utf8_lossy(&data[pos + 4..pos + 8]).into_owned());
        assert!(size >= 8, "box at {pos} of size {size}");
        pos += size;
    }
    assert_eq!(pos, data.len(), "boxes cover the file exactly");
    out
}

pub(crate) fn probed_duration(path: &Path) -> f64 {
    ffprobe(&path.display().to_string())["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("format duration")
}

pub(crate) fn codecs(path: &Path) -> Vec<String> {
    ffprobe(&path.display().to_string())["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .filter_map(|s| s["codec_name"].as_str().map(str::to_owned))
        .collect()
}

/// MD5 of the first decoded video frame, optionally after seeking `seek_s` (decoding from the
/// keyframe before it and dropping earlier frames, as `-ss` before `-i` does).
pub(crate) fn first_frame_md5(path: &Path, seek_s: Option<f64>) -> String {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin"]);
    if let Some(s) = seek_s {
        cmd.args(["-ss", &format!("{s:.3}")]);
    }
    let out = cmd
        .arg("-i")
        .arg(path)
        .args(["-map", "0:v", "-frames:v", "1", "-f", "framemd5", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .rfind(|l| !l.starts_with('#'))
        .and_then(|l| l.rsplit(',').next())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no frame in {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn export_of_recorded_segments_is_frame_accurate_with_ranges_and_etags() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&format!(
        "[archive]\nrecording = true\nserving = true\nms_per_file = 2000\ndirectory = \"{}\"\n\
         [[local_files]]\nguid = \"{DEMO}\"\nfile = \"assets/demo.mp4\"\noutput_types = [\"mse\"]\n\
         loop = true\narchive = {{ recording = true }}\n",
        tmp.path().join("mp4").display()
    ))
    .await;
    let id: Uuid = DEMO.parse().expect("uuid");
    let waited = Instant::now();
    let rows = loop {
        let rows = complete_segments(&s.state.db, id).await;
        if rows.len() >= 2 {
            break rows;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "two segments recorded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (a, b) = (&rows[0], &rows[1]);
    assert_eq!(a.end_us, b.start_us, "back to back");
    assert!(a.media_duration_us >= 2_000_000 && b.media_duration_us >= 2_000_000);

    // Mid-segment (on frame 33, between the keyframes at 1 s and 2 s) to 1.2 s into the next.
    let start_us = a.start_us + 1_320_000;
    let end_us = b.start_us + 1_200_000;
    let expected_s = (end_us - start_us) as f64 / 1e6;
    let c = reqwest::Client::new();
    let url = |start: &str, end: &str| {
        format!(
            "{}/api/v1/streams/{DEMO}/export.mp4?start={}&end={}",
            s.api,
            urlencode(start),
            urlencode(end)
        )
    };
    let export_url = url(&rfc3339(start_us), &rfc3339(end_us));

    let timer = Instant::now();
    let full = c.get(&export_url).send().await.expect("export");
    assert_eq!(full.status(), StatusCode::OK);
    let h = full.headers().clone();
    let body = full.bytes().await.expect("body").to_vec();
    let took = timer.elapsed();
    assert_eq!(h["content-type"], "video/mp4");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-length"], body.len().to_string().as_str());
    let etag = h["etag"].to_str().expect("etag").to_owned();
    let disposition = h["content-disposition"].to_str().expect("disposition");
    assert!(
        disposition.starts_with(&format!("attachment; filename=\"{DEMO}_"))
            && disposition.ends_with(".mp4\""),
        "{disposition}"
    );
    eprintln!(
        "export of {expected_s:.2} s: {} bytes in {:?}",
        body.len(),
        took
    );

    // One progressive MP4, moov first.
    assert_eq!(top_level_boxes(&body), ["ftyp", "moov", "mdat"]);
    let file = tmp.path().join("export.mp4");
    std::fs::write(&file, &body).expect("write");
    let errors = ffmpeg_decode_errors(&file.display().to_string());
    assert!(errors.trim().is_empty(), "{errors}");
    assert_eq!(codecs(&file), ["h264", "aac"]);
    let probed = probed_duration(&file);
    assert!(
        (probed - expected_s).abs() <= FRAME_S,
        "ffprobe {probed} s, asked for {expected_s} s"
    );
    // Frame-accurate: the first picture shown is the segment's picture at the start time.
    assert_eq!(
        first_frame_md5(&file, None),
        first_frame_md5(Path::new(&a.storage_key), Some(1.32))
    );

    // Unix seconds name the same range: same bytes, same ETag.
    let unix = |us: i64| format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
    let again = c
        .get(url(&unix(start_us), &unix(end_us)))
        .send()
        .await
        .expect("again");
    assert_eq!(again.headers()["etag"].to_str().expect("etag"), etag);
    assert_eq!(again.bytes().await.expect("body").to_vec(), body);

    // Byte ranges are exactly the slices of the whole file.
    let len = body.len() as u64;
    let mid = len / 2;
    for (spec, range) in [
        ("bytes=0-99".to_owned(), 0..100),
        (
            format!("bytes={}-{}", mid - 1000, mid + 300_000),
            (mid - 1000)..(mid + 300_001).min(len),
        ),
        ("bytes=-5000".to_owned(), (len - 5000)..len),
        (format!("bytes={}-", len - 1), (len - 1)..len),
        (format!("bytes=100-{}", len + 50), 100..len),
    ] {
        let r = c
            .get(&export_url)
            .header("range", &spec)
            .send()
            .await
            .expect("range");
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{spec}");
        let (lo, hi) = (range.start, range.end);
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {lo}-{}/{len}", hi - 1).as_str(),
            "{spec}"
        );
        assert_eq!(
            r.headers()["content-length"],
            (hi - lo).to_string().as_str()
        );
        let got = r.bytes().await.expect("body");
        assert!(got[..] == body[lo as usize..hi as usize], "{spec}");
    }
    let r = c
        .get(&export_url)
        .header("range", format!("bytes={len}-"))
        .send()
        .await
        .expect("416");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );
    // An If-Range naming another version gets the whole file.
    let r = c
        .get(&export_url)
        .header("range", "bytes=0-9")
        .header("if-range", "\"other\"")
        .send()
        .await
        .expect("if-range");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body").len() as u64, len);
    // An If-Range naming this version gets the range.
    let r = c
        .get(&export_url)
        .header("range", "bytes=0-9")
        .header("if-range", &etag)
        .send()
        .await
        .expect("if-range");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 0-9/{len}").as_str()
    );
    assert!(r.bytes().await.expect("body")[..] == body[..10]);

    // Conditional requests and ETags.
    let r = c
        .get(&export_url)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("304");
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"].to_str().expect("etag"), etag);
    assert!(r.bytes().await.expect("body").is_empty());
    let other = c
        .get(url(&rfc3339(start_us), &rfc3339(end_us - 400_000)))
        .send()
        .await
        .expect("other range");
    assert_eq!(other.status(), StatusCode::OK);
    assert_ne!(other.headers()["etag"].to_str().expect("etag"), etag);
    let head = c.head(&export_url).send().await.expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], len.to_string().as_str());

    // Errors, in the /api/v1 shape.
    let error = |r: reqwest::Response| async move {
        let status = r.status();
        let v: serde_json::Value = r.json().await.expect("error JSON");
        (
            status,
            v["error"]["code"].clone(),
            v["error"]["field"].clone(),
        )
    };
    let now = chrono::Utc::now().timestamp();
    for (query, status, code, field) in [
        (
            format!("start=yesterday&end={now}"),
            400,
            json!("bad_time"),
            json!("start"),
        ),
        (
            format!("start={now}&end=12:00"),
            400,
            json!("bad_time"),
            json!("end"),
        ),
        (format!("start={now}"), 400, json!("bad_query"), json!(null)),
        (
            format!("start={now}&end={now}"),
            422,
            json!("validation_failed"),
            json!("end"),
        ),
        (
            format!("start={}&end={now}", now - 86_401),
            422,
            json!("validation_failed"),
            json!("end"),
        ),
        (
            "start=946684800&end=946684900".to_owned(),
            404,
            json!("no_recording"),
            json!(null),
        ),
    ] {
        let r = c
            .get(format!(
                "{}/api/v1/streams/{DEMO}/export.mp4?{query}",
                s.api
            ))
            .send()
            .await
            .expect("bad request");
        assert_eq!(
            error(r).await,
            (StatusCode::from_u16(status).expect("status"), code, field),
            "{query}"
        );
    }
    let r = c
        .get(format!(
            "{}/api/v1/streams/{}/export.mp4?start={now}&end={}",
            s.api,
            Uuid::new_v4(),
            now + 1
        ))
        .send()
        .await
        .expect("unknown stream");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .get(format!(
            "{}/api/v1/streams/nope/export.mp4?start={now}&end={}",
            s.api,
            now + 1
        ))
        .send()
        .await
        .expect("bad id");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    s.stop().await;
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Records, through the real recorder, two sessions 6 s apart and then a session with another
/// codec setup: A [0,2) B [2,4) · gap · C [10,12) D [12,14) · E [14,16) video only.
async fn record_gap_and_codec_change(t: &TestDb, dir: &Path, id: Uuid, wall0: i64) {
    use video_server::archive::recorder::{Recorder, RecorderConfig};
    use video_server::hub::Hub;
    use video_server::media::mp4file::Mp4File;
    use video_server::media::{StreamParams, TrackKind};

    let clip = Mp4File::open(Path::new("assets/demo.mp4")).expect("demo");
    let av = Arc::new(clip.params().clone());
    let video_only = Arc::new(StreamParams {
        version: av.version + 1,
        audio: None,
        ..(*av).clone()
    });
    let hub = Hub::new();
    let recorder = Recorder::new(
        RecorderConfig {
            stream_id: id,
            directory: dir.to_owned(),
            ms_per_file: 2000,
            storage: video_server::stream::StorageKind::Filesystem,
        },
        t.db.clone(),
        hub.subscribe(100_000),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(recorder.run(cancel.clone()));
    let session = |params: &Arc<StreamParams>, at_us: i64, secs: i64| {
        hub.begin_session();
        for f in clip.frames() {
            let ts = i64::from(params.timescale(f.track));
            if f.dts >= secs * ts || (params.audio.is_none() && f.track == TrackKind::Audio) {
                continue;
            }
            let mut f = f.clone();
            f.wallclock_us = at_us + f.dts * 1_000_000 / ts;
            f.params = params.clone();
            hub.publish(f);
        }
    };
    session(&av, wall0, 4);
    session(&av, wall0 + 10_000_000, 4);
    session(&video_only, wall0 + 14_000_000, 2);
    // Every segment but the last is closed by the next session; the last when the recorder's
    // queue ends: dropping the hub closes it, and the recorder writes what is queued first.
    drop(hub);
    task.await.expect("recorder");
    drop(cancel);
}

crate::both_engines! {
    async fn gaps_close_up_and_codec_changes_end_the_export(t: &TestDb) {
        let dir = tempfile::tempdir().expect("tmp");
        let id = Uuid::new_v4();
        let wall0 = 1_800_000_000_000_000i64;
        record_gap_and_codec_change(t, dir.path(), id, wall0).await;
        let rows = complete_segments(&t.db, id).await;
        let starts: Vec<i64> = rows.iter().map(|r| (r.start_us - wall0) / 1_000_000).collect();
        assert_eq!(starts, [0, 2, 10, 12, 14], "{rows:?}");

        let state = crate::support::state(
            &t.db,
            crate::support::config("[archive]\nserving = true\n"),
        )
        .await;
        let created = crate::support::send_json(
            &state,
            "POST",
            "/api/v1/streams",
            &json!({
                "id": id,
                "enabled": false,
                "source": { "kind": "file", "path": "assets/demo.mp4" },
                "outputs": ["mse"],
            }),
        )
        .await;
        assert_eq!(created.status, 201, "{:?}", created.json());
        let export = |from_s: f64, to_s: f64| {
            let (state, dir) = (state.clone(), dir.path().to_owned());
            async move {
                let uri = format!(
                    "/api/v1/streams/{id}/export.mp4?start={}&end={}",
                    (wall0 as f64 / 1e6 + from_s),
                    (wall0 as f64 / 1e6 + to_s)
                );
                let r = crate::support::get(&state, &uri).await;
                assert_eq!(r.status, 200, "{uri}");
                let path = dir.join(format!("export_{from_s}_{to_s}.mp4"));
                std::fs::write(&path, &r.body).expect("write");
                let errors = ffmpeg_decode_errors(&path.display().to_string());
                assert!(errors.trim().is_empty(), "{errors}");
                path
            }
        };

        // 0.5 s before the gap and 1 s after it, back to back.
        let across_gap = export(3.5, 11.0).await;
        let d = probed_duration(&across_gap);
        assert!((d - 1.5).abs() <= FRAME_S, "{d}");
        assert_eq!(codecs(&across_gap), ["h264", "aac"]);

        // The video-only setup from 14 s on ends the export there.
        let across_change = export(13.0, 15.5).await;
        let d = probed_duration(&across_change);
        assert!((d - 1.0).abs() <= FRAME_S, "{d}");
        assert_eq!(codecs(&across_change), ["h264", "aac"]);

        // Inside the video-only setup: one track.
        let video_only = export(14.5, 15.5).await;
        assert_eq!(codecs(&video_only), ["h264"]);
        let d = probed_duration(&video_only);
        assert!((d - 1.0).abs() <= FRAME_S, "{d}");

        // Only in the gap: nothing recorded.
        let uri = format!(
            "/api/v1/streams/{id}/export.mp4?start={}&end={}",
            wall0 / 1_000_000 + 5,
            wall0 / 1_000_000 + 9
        );
        assert_eq!(crate::support::get(&state, &uri).await.status, 404);
    }
}

/// Peak resident memory of this process (kB), from `/proc/self/status`.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Throughput of a long export over HTTP (run by hand: `EXPORT_BENCH_MINUTES=10 cargo test --test
/// it -- --ignored export_throughput --nocapture`). Records that many minutes of the demo clip through the real recorder
/// as fast as it writes, then plans (HEAD) and downloads (GET, streamed and discarded) the export.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, not a check: run by hand"]
async fn export_throughput() {
    use video_server::archive::recorder::{Recorder, RecorderConfig};
    use video_server::hub::Hub;
    use video_server::media::mp4file::Mp4File;

    let minutes: i64 = std::env::var("EXPORT_BENCH_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    let s = InProcess::start("[archive]\nserving = true\n").await;
    let id = Uuid::new_v4();
    let dir = tempfile::tempdir().expect("tmp");
    let clip = Mp4File::open(Path::new("assets/demo.mp4")).expect("demo");
    let hub = Hub::new();
    let recorder = Recorder::new(
        RecorderConfig {
            stream_id: id,
            directory: dir.path().to_owned(),
            ms_per_file: 60_000,
            storage: video_server::stream::StorageKind::Filesystem,
        },
        s.state.db.clone(),
        hub.subscribe(1_000_000),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(recorder.run(cancel.clone()));
    let wall0 = 1_800_000_000_000_000i64;
    let clip_us = clip.duration_us();
    let loops = minutes * 60_000_000 / clip_us;
    let recording = Instant::now();
    for i in 0..loops {
        hub.begin_session();
        for f in clip.frames() {
            let mut f = f.clone();
            let ts = i64::from(f.params.timescale(f.track));
            f.wallclock_us = wall0 + i * clip_us + f.dts * 1_000_000 / ts;
            hub.publish(f);
        }
    }
    // The recorder's queue holds every frame; dropping the hub ends it once all are written.
    drop(hub);
    task.await.expect("recorder");
    drop(cancel);
    let rows = complete_segments(&s.state.db, id).await;
    // The recorder skips ahead when it cannot keep up: report what it actually wrote.
    eprintln!(
        "recorded {} segments, {:.1} min of media, {} MB, in {:?}",
        rows.len(),
        rows.iter().map(|r| r.media_duration_us).sum::<i64>() as f64 / 60e6,
        rows.iter().map(|r| r.bytes).sum::<i64>() / 1_000_000,
        recording.elapsed()
    );
    let c = reqwest::Client::new();
    let created = c
        .post(format!("{}/api/v1/streams", s.api))
        .json(&json!({
            "id": id,
            "enabled": false,
            "source": { "kind": "file", "path": "assets/demo.mp4" },
            "outputs": ["mse"],
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    let url = format!(
        "{}/api/v1/streams/{id}/export.mp4?start={}&end={}",
        s.api,
        wall0 / 1_000_000 + 1,
        wall0 / 1_000_000 + loops * clip_us / 1_000_000 - 1
    );
    let t = Instant::now();
    let head = c.head(&url).send().await.expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    let plan_time = t.elapsed();
    let rss_before = peak_rss_kb();
    let t = Instant::now();
    let mut r = c.get(&url).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let mut bytes = 0u64;
    while let Some(chunk) = r.chunk().await.expect("chunk") {
        bytes += chunk.len() as u64;
    }
    let total = t.elapsed();
    eprintln!(
        "export over {minutes} min: {:.1} MB; plan (HEAD) {plan_time:?}; GET {total:?} = {:.0} MB/s; \
         peak RSS {} → {} MB",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / total.as_secs_f64(),
        rss_before / 1024,
        peak_rss_kb() / 1024
    );
    s.stop().await;
}

/// Records `clip` (video only) through the real recorder as stream `id`, 2 s segments.
async fn record_clip(db: &Db, dir: &Path, id: Uuid, clip: &Path, wall0: i64) {
    use video_server::archive::recorder::{Recorder, RecorderConfig};
    use video_server::hub::Hub;
    use video_server::media::mp4file::Mp4File;

    let clip = Mp4File::open(clip).expect("clip");
    let hub = Hub::new();
    let recorder = Recorder::new(
        RecorderConfig {
            stream_id: id,
            directory: dir.to_owned(),
            ms_per_file: 2000,
            storage: video_server::stream::StorageKind::Filesystem,
        },
        db.clone(),
        hub.subscribe(100_000),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(recorder.run(cancel.clone()));
    for f in clip.frames() {
        let mut f = f.clone();
        f.wallclock_us = wall0 + f.dts * 1_000_000 / 90_000;
        hub.publish(f);
    }
    // Dropping the hub ends the recorder's queue: it writes every frame, then closes.
    drop(hub);
    task.await.expect("recorder");
    drop(cancel);
}

/// B-frames (negative composition offsets in the segments) and H.265 export frame-accurately.
#[tokio::test(flavor = "multi_thread")]
async fn bframes_and_h265_export_frame_accurately() {
    let t = crate::support::sqlite().await;
    let dir = tempfile::tempdir().expect("tmp");
    let state = crate::support::state(
        &t.db,
        crate::support::config(&format!(
            "[archive]\nserving = true\n[sources]\nfile_roots = [\"{}\"]\n",
            dir.path().display()
        )),
    )
    .await;
    let wall0 = 1_800_000_000_000_000i64;
    for (name, codec) in [
        ("bframes", &["-c:v", "libx264", "-bf", "3", "-g", "25"][..]),
        (
            "h265",
            &[
                "-c:v",
                "libx265",
                "-tag:v",
                "hvc1",
                "-x265-params",
                "keyint=25:min-keyint=25:bframes=2:log-level=error",
            ][..],
        ),
    ] {
        let src = dir.path().join(format!("{name}.mp4"));
        let out = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
            .arg("testsrc=size=320x180:rate=25")
            .args(["-t", "4", "-pix_fmt", "yuv420p"])
            .args(codec)
            .arg(&src)
            .output()
            .expect("ffmpeg");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = Uuid::new_v4();
        record_clip(&t.db, &dir.path().join("mp4"), id, &src, wall0).await;
        let rows = complete_segments(&t.db, id).await;
        assert_eq!(rows.len(), 2, "{name}: {rows:?}");
        let created = crate::support::send_json(
            &state,
            "POST",
            "/api/v1/streams",
            &json!({
                "id": id,
                "enabled": false,
                "source": { "kind": "file", "path": src },
                "outputs": ["mse"],
            }),
        )
        .await;
        assert_eq!(created.status, 201, "{:?}", created.json());

        // Segments are cut at the first keyframe *decoded* 2 s in (x265's 2 s keyframe decodes at
        // 1.96 s, so its cut comes at 2.92 s): stay inside the recorded media.
        let start_us = rows[0].start_us + 1_320_000;
        let end_us = (rows[1].start_us + 1_200_000).min(rows[1].end_us - 200_000);
        let r = crate::support::get(
            &state,
            &format!(
                "/api/v1/streams/{id}/export.mp4?start={}&end={}",
                urlencode(&rfc3339(start_us)),
                urlencode(&rfc3339(end_us))
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{name}");
        let file = dir.path().join(format!("{name}_export.mp4"));
        std::fs::write(&file, &r.body).expect("write");
        let errors = ffmpeg_decode_errors(&file.display().to_string());
        assert!(errors.trim().is_empty(), "{name}: {errors}");
        let expected = (end_us - start_us) as f64 / 1e6;
        let probed = probed_duration(&file);
        assert!(
            (probed - expected).abs() <= FRAME_S,
            "{name}: ffprobe {probed} s, asked for {expected} s"
        );
        assert_eq!(
            first_frame_md5(&file, None),
            first_frame_md5(Path::new(&rows[0].storage_key), Some(1.32)),
            "{name}: first picture"
        );
    }
    t.cleanup().await;
}
