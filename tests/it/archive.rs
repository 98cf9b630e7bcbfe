//! Archive recording against real sources: segments that play, rows that match files, crash
//! repair after `kill -9`, and ranges with real gaps on both engines.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;
use video_server::db::Db;
use video_server::db::segments::{self, SegmentRow};

use crate::support::InProcess;
use crate::support::binary::ServerProcess;
use crate::support::media::{RtspServer, eventually, ffmpeg_decode_errors, ffprobe};

pub(crate) const DEMO: &str = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";

pub(crate) fn archive_config(dir: &Path, ms_per_file: u64) -> String {
    format!(
        "[archive]\nrecording = true\nserving = true\nms_per_file = {ms_per_file}\ndirectory = \"{}\"\n",
        dir.join("mp4").display()
    )
}

pub(crate) fn demo_recording() -> String {
    format!(
        "[[local_files]]\nguid = \"{DEMO}\"\nfile = \"assets/demo.mp4\"\noutput_types = [\"mse\"]\nloop = true\n\
         archive = {{ recording = true }}\n"
    )
}

/// Every playable segment row of a stream, oldest first.
pub(crate) async fn all_segments(db: &Db, id: Uuid) -> Vec<SegmentRow> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = segments::page(db, id, 0, i64::MAX / 2, after, 1000)
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        after = Some((last.start_us, last.id));
        out.extend(page);
    }
    out
}

/// Every `.mp4` file under `dir`.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "mp4") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn probe_duration(path: &Path) -> f64 {
    let v = ffprobe(&path.display().to_string());
    let num = |k: &str| -> f64 {
        v["format"][k]
            .as_str()
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("{} has no {k}", path.display()))
    };
    num("duration") - num("start_time")
}

/// Rows and files agree, every file decodes, and ffprobe's durations match the rows.
pub(crate) fn check_rows_match_files(rows: &[SegmentRow], dir: &Path) {
    let files = files_under(dir);
    let mut keys: Vec<PathBuf> = rows.iter().map(|r| PathBuf::from(&r.storage_key)).collect();
    keys.sort();
    assert_eq!(keys, files, "index and files agree");
    for r in rows {
        assert_eq!(r.state, "complete", "{r:?}");
        let path = Path::new(&r.storage_key);
        assert_eq!(
            std::fs::metadata(path).expect("file").len() as i64,
            r.bytes,
            "{r:?}"
        );
        let errors = ffmpeg_decode_errors(&r.storage_key);
        assert!(errors.trim().is_empty(), "{}: {errors}", r.storage_key);
        let probed = probe_duration(path);
        let stored = r.media_duration_us as f64 / 1e6;
        assert!(
            (probed - stored).abs() < 0.1,
            "{}: ffprobe {probed} s, row {stored} s",
            r.storage_key
        );
        assert_eq!(r.end_us - r.start_us, r.media_duration_us);
    }
}

crate::on_both_engines!(
    async fn file_source_records_playable_segments_matching_wall_time(index: &Index) {
        let tmp = tempfile::tempdir().expect("tmp");
        let s = InProcess::start_with_db(
            &format!("{}{}", archive_config(tmp.path(), 3000), demo_recording()),
            Some(index.url.clone()),
        )
        .await;
        let id: Uuid = DEMO.parse().expect("uuid");
        let started = Instant::now();
        wait_for_segments(&s.state.db, id, 2, "3 segments").await;
        let recorded_wall = started.elapsed().as_secs_f64();
        let _dir = s.stop().await;
        let db = index.connect().await;
        let rows = all_segments(&db, id).await;
        assert!(rows.len() >= 3, "{} segments", rows.len());
        check_rows_match_files(&rows, &tmp.path().join("mp4"));
        // Back to back: one run, and the summed duration is the recorded wall time.
        for w in rows.windows(2) {
            assert_eq!(w[0].end_us, w[1].start_us, "segments are contiguous");
        }
        let total: f64 = rows.iter().map(|r| r.media_duration_us as f64 / 1e6).sum();
        assert!(
            (recorded_wall - total).abs() < 1.5,
            "recorded {total} s of media in {recorded_wall} s"
        );
        // Segments are cut near ms_per_file (at keyframes, every 1 s in the demo clip).
        for r in &rows[..rows.len() - 1] {
            let d = r.media_duration_us as f64 / 1e6;
            assert!((3.0..=4.1).contains(&d), "segment of {d} s");
        }
        db.close().await;
    }
);

#[tokio::test(flavor = "multi_thread")]
async fn rtsp_source_records_video_and_audio() {
    let rtsp = RtspServer::start(0);
    let tmp = tempfile::tempdir().expect("tmp");
    let id = "3e3f6d21-9d4f-4288-b131-6f405e7d8194";
    let s = InProcess::start(&format!(
        "{}[[rtsp_streams]]\nguid = \"{id}\"\nurl = \"{}\"\noutput_types = [\"mse\"]\narchive = {{ recording = true }}\n",
        archive_config(tmp.path(), 2000),
        rtsp.url("av")
    ))
    .await;
    let url = s.db_url.clone();
    eventually("segments are written", Duration::from_secs(30), || {
        (files_under(&tmp.path().join("mp4")).len() >= 3).then_some(())
    })
    .await;
    let _dir = s.stop().await;
    let db = Db::connect(&url).await.expect("db");
    let rows = all_segments(&db, id.parse().expect("uuid")).await;
    check_rows_match_files(&rows, &tmp.path().join("mp4"));
    let probe = ffprobe(&rows[0].storage_key);
    let codecs: Vec<&str> = probe["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .filter_map(|s| s["codec_name"].as_str())
        .collect();
    assert_eq!(codecs, vec!["h264", "aac"]);
}

/// Copies the demo clip next to a config for the real binary.
pub(crate) fn binary_setup(dir: &Path, ms_per_file: u64) {
    std::fs::create_dir_all(dir.join("assets")).expect("assets");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo.mp4"),
        dir.join("assets/demo.mp4"),
    )
    .expect("demo");
    let conf = format!(
        "{}[archive]\nrecording = true\nserving = true\nms_per_file = {ms_per_file}\ndirectory = \"mp4\"\n{}",
        crate::support::binary::base_config().replace("[archive]\nserving = true\n", ""),
        demo_recording()
    );
    std::fs::write(dir.join("conf.toml"), conf).expect("conf");
}

crate::on_both_engines!(
    async fn kill_9_loses_at_most_a_fragment_and_leaves_playable_files(index: &Index) {
        let dir = tempfile::tempdir().expect("tmp");
        binary_setup(dir.path(), 4000);
        let id: Uuid = DEMO.parse().expect("uuid");
        let env = [("VIDEO_SERVER_DATABASE_URL", index.url.as_str())];
        let db = index.connect().await;
        for round in 0..3 {
            let server = ServerProcess::start(dir.path(), &["--conf", "conf.toml"], &env);
            let before = all_segments(&db, id).await.len();
            let run_start_us = chrono::Utc::now().timestamp_micros();
            // Kill it while it records: once this run has closed a segment, at a different point of
            // the next one in each round.
            wait_for_segments(&db, id, before, "a segment of this run").await;
            tokio::time::sleep(Duration::from_millis(300 + round * 1100)).await;
            let killed_us = chrono::Utc::now().timestamp_micros();
            server.kill9();

            // Restart: repair runs before anything records again, and the reconciliation of
            // the archive with its files (in the background) indexes what the crash left.
            let server = ServerProcess::start(dir.path(), &["--conf", "conf.toml"], &env);
            server.wait_for_log(
                "archive reconciled with the files on disk",
                Duration::from_secs(30),
            );
            assert!(server.terminate(), "round {round}: graceful stop");
            let rows = all_segments(&db, id).await;
            check_rows_match_files(&rows, &dir.path().join("mp4"));
            // The killed run's segments: their media covers the run up to the kill, minus at most about
            // one fragment (1 s) plus the frame held back for its duration.
            let killed: Vec<&SegmentRow> = rows
                .iter()
                .skip(before)
                .filter(|r| r.start_us < killed_us && r.start_us >= run_start_us - 1_000_000)
                .collect();
            assert!(
                !killed.is_empty(),
                "round {round}: the killed run recorded something"
            );
            let first_start = killed[0].start_us;
            let recorded: i64 = killed.iter().map(|r| r.media_duration_us).sum();
            let lost_s = (killed_us - first_start - recorded) as f64 / 1e6;
            assert!(lost_s <= 1.3, "round {round}: lost {lost_s} s of media");
        }
        db.close().await;
    }
);

/// Complete segments of `id` in the index (polled: the recorder writes them as it goes).
async fn complete_segments(db: &Db, id: Uuid) -> Vec<SegmentRow> {
    all_segments(db, id)
        .await
        .into_iter()
        .filter(|r| r.state == "complete")
        .collect()
}

/// Waits until `id` has more than `n` complete segments; returns them.
async fn wait_for_segments(db: &Db, id: Uuid, n: usize, what: &str) -> Vec<SegmentRow> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = complete_segments(db, id).await;
        if rows.len() > n {
            return rows;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long the camera is off: longer than the Go route's merge of short holes (it bridges gaps
/// up to 2 x ms_per_file = 4 s here), so the hole must show as two ranges.
const CAMERA_OFF: Duration = Duration::from_secs(6);

crate::on_both_engines!(
    async fn ranges_show_a_real_gap(index: &Index) {
        let tmp = tempfile::tempdir().expect("tmp");
        let s = InProcess::start_with_db(
            &format!("{}{}", archive_config(tmp.path(), 2000), demo_recording()),
            Some(index.url.clone()),
        )
        .await;
        let id: Uuid = DEMO.parse().expect("uuid");
        let c = reqwest::Client::new();
        let uri = format!("{}/api/v1/streams/{DEMO}", s.api);
        let patch = |enabled: bool| {
            c.patch(&uri)
                .header("content-type", "application/merge-patch+json")
                .body(json!({ "enabled": enabled }).to_string())
                .send()
        };
        wait_for_segments(&s.state.db, id, 0, "a first segment").await;
        // Disabling stops the runtime before answering: the recorder has closed its segment.
        assert_eq!(patch(false).await.expect("disable").status(), 200);
        assert!(s.state.manager.status(id).is_none(), "stopped");
        let first_run = complete_segments(&s.state.db, id).await;
        let off_at = Instant::now();
        // The camera is off for a while: the hole in the recording is what this test is about.
        tokio::time::sleep(CAMERA_OFF).await;
        assert_eq!(patch(true).await.expect("enable").status(), 200);
        let rows =
            wait_for_segments(&s.state.db, id, first_run.len(), "a segment after the gap").await;
        let (run1_end, run2_start) = (
            first_run[first_run.len() - 1].end_us,
            rows[first_run.len()].start_us,
        );
        // (A segment's end includes its last frame's duration: up to a frame past the stop.)
        assert!(
            run2_start - run1_end >= CAMERA_OFF.as_micros() as i64 - 100_000,
            "the index shows the hole: {run1_end} .. {run2_start} (off for {:?})",
            off_at.elapsed()
        );
        let v: serde_json::Value = c
            .get(format!("{}/archive/{DEMO}/ranges", s.api))
            .send()
            .await
            .expect("ranges")
            .json()
            .await
            .expect("json");
        let ranges = v["ranges"].as_array().expect("ranges");
        assert_eq!(ranges.len(), 2, "{v}");
        assert_eq!(v["stream_id"], json!(DEMO));
        let t = |s: &serde_json::Value| {
            chrono::DateTime::parse_from_rfc3339(s.as_str().expect("time"))
                .expect("RFC 3339")
                .timestamp()
        };
        for r in ranges {
            let keys: Vec<&String> = r.as_object().expect("object").keys().collect();
            assert_eq!(keys, vec!["end", "start"]);
            assert!(r["start"].as_str().expect("s").ends_with('Z'), "UTC: {r}");
        }
        // Whole seconds, outwards: the start rounded down, the end up.
        assert_eq!(
            t(&ranges[0]["start"]),
            first_run[0].start_us.div_euclid(1_000_000),
            "{v}"
        );
        assert_eq!(
            t(&ranges[0]["end"]),
            (run1_end + 999_999).div_euclid(1_000_000),
            "{v}"
        );
        assert_eq!(
            t(&ranges[1]["start"]),
            run2_start.div_euclid(1_000_000),
            "{v}"
        );
        s.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread")]
async fn codec_change_and_discontinuity_start_new_segments() {
    use std::sync::Arc;
    use video_server::archive::recorder::{Recorder, RecorderConfig};
    use video_server::hub::Hub;
    use video_server::media::mp4file::Mp4File;
    use video_server::media::{StreamParams, TrackKind};

    let t = crate::support::sqlite().await;
    let dir = tempfile::tempdir().expect("tmp");
    let clip = Mp4File::open(Path::new("assets/demo.mp4")).expect("demo");
    let v1 = Arc::new(clip.params().clone());
    let v2 = Arc::new(StreamParams {
        version: v1.version + 1,
        audio: None,
        ..(*v1).clone()
    });
    let id = Uuid::new_v4();
    let hub = Hub::new();
    let recorder = Recorder::new(
        RecorderConfig {
            stream_id: id,
            directory: dir.path().to_owned(),
            ms_per_file: 60_000,
            storage: video_server::stream::StorageKind::Filesystem,
        },
        t.db.clone(),
        hub.subscribe(100_000),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(recorder.run(cancel.clone()));
    let wall0 = 1_800_000_000_000_000i64;
    let publish = |params: &Arc<StreamParams>, video_only: bool, secs: i64| {
        for f in clip.frames() {
            let ts = params.timescale(f.track);
            if f.dts >= secs * i64::from(ts) || (video_only && f.track == TrackKind::Audio) {
                continue;
            }
            let mut f = f.clone();
            f.wallclock_us = wall0 + f.dts * 1_000_000 / i64::from(ts);
            f.params = params.clone();
            hub.publish(f);
        }
    };
    publish(&v1, false, 4); // segment 1: video+audio
    hub.begin_session(); // a source restart: new segment
    publish(&v1, false, 3); // segment 2
    publish(&v2, true, 3); // codec change (audio gone): segment 3
    // Dropping the hub ends the recorder's queue: it writes every frame, then closes.
    drop(hub);
    task.await.expect("recorder task");
    drop(cancel);
    let rows = all_segments(&t.db, id).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    check_rows_match_files(&rows, dir.path());
    let audio_tracks = |r: &SegmentRow| {
        ffprobe(&r.storage_key)["streams"]
            .as_array()
            .expect("streams")
            .iter()
            .filter(|s| s["codec_type"] == json!("audio"))
            .count()
    };
    assert_eq!(audio_tracks(&rows[0]), 1);
    assert_eq!(audio_tracks(&rows[2]), 0);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_only_streams_do_not_record() {
    // The stream asks to record, but the global switch is off (the Go original recorded anyway);
    // the control is the same stream with the switch on. Both run until their stream has
    // published three segments' worth of frames (2 s segments).
    let id: Uuid = DEMO.parse().expect("uuid");
    let mut outcomes = Vec::new();
    for global in [false, true] {
        let tmp = tempfile::tempdir().expect("tmp");
        let conf = format!("{}{}", archive_config(tmp.path(), 2000), demo_recording()).replace(
            "recording = true\nserving",
            &format!("recording = {global}\nserving"),
        );
        let s = InProcess::start(&conf).await;
        let rt = s.state.manager.runtime(id).expect("running");
        // 6 s of the demo clip: 150 video and about 280 audio frames.
        eventually("6 s of frames published", Duration::from_secs(30), || {
            (rt.hub.published() >= 430).then_some(())
        })
        .await;
        let r = reqwest::get(format!("{}/archive/{DEMO}/ranges", s.api))
            .await
            .expect("ranges");
        let rows = complete_segments(&s.state.db, id).await;
        s.stop().await;
        outcomes.push((
            global,
            r.status().as_u16(),
            rows.len(),
            files_under(&tmp.path().join("mp4")).len(),
        ));
    }
    assert_eq!(outcomes[0], (false, 404, 0, 0), "{outcomes:?}");
    let (_, status, rows, files) = outcomes[1];
    assert!(
        status == 200 && rows >= 2 && files >= rows,
        "the control records: {outcomes:?}"
    );
}

crate::on_both_engines!(
    /// A stream with its own bucket (the Go `minio_bucket`, not `[s3] bucket`): its segments are
    /// uploaded there, and playback, export and retention all find them there.
    async fn s3_recording_in_the_streams_bucket_is_uploaded_played_exported_and_deleted(
        index: &Index,
    ) {
        s3_recording_in_the_streams_bucket(index).await;
    }
);

async fn s3_recording_in_the_streams_bucket(index: &crate::support::Index) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use video_server::archive::retention::Retention;
    use video_server::config::RetentionConfig;

    let s3 = crate::support::s3::S3Server::start().await;
    let c = s3.config("archive", "video");
    let tmp = tempfile::tempdir().expect("tmp");
    let conf = format!(
        "{}[s3]\nendpoint = \"{}\"\nregion = \"{}\"\naccess_key = \"{}\"\nsecret_key = \"{}\"\nbucket = \"{}\"\nprefix = \"{}\"\npath_style = true\n{}",
        archive_config(tmp.path(), 2000),
        c.endpoint,
        c.region,
        c.access_key,
        c.secret_key,
        c.bucket,
        c.prefix,
        demo_recording().replace(
            "recording = true }",
            "recording = true, type = \"minio\", minio_bucket = \"cams-own\" }"
        )
    );
    let s = InProcess::start_with_db(&conf, Some(index.url.clone())).await;
    let id: Uuid = DEMO.parse().expect("uuid");
    // Wait until a few closed segments have been uploaded.
    let mut remote = Vec::new();
    for _ in 0..200 {
        remote = all_segments(&s.state.db, id)
            .await
            .into_iter()
            .filter(|r| r.upload_state == "remote")
            .collect();
        if remote.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(remote.len() >= 3, "uploaded: {}", remote.len());
    let object_of = |r: &SegmentRow| s3.data_dir().join("cams-own").join(&r.storage_key);
    for r in &remote {
        assert_eq!(r.storage, "s3");
        assert_eq!(
            r.bucket.as_deref(),
            Some("cams-own"),
            "the row names the bucket"
        );
        assert!(
            r.storage_key.starts_with(&format!("video/{DEMO}/")),
            "{}",
            r.storage_key
        );
        assert!(
            object_of(r).is_file(),
            "object {} stored",
            object_of(r).display()
        );
        let in_default = s3.data_dir().join("archive").join(&r.storage_key);
        assert!(!in_default.exists(), "nothing in the [s3] bucket");
    }
    assert!(
        files_under(&tmp.path().join("mp4")).iter().all(|f| !remote
            .iter()
            .any(|r| f.ends_with(Path::new(&r.storage_key).file_name().expect("name")))),
        "local copies of uploaded segments are removed"
    );
    // Archive playback reads the uploaded segments from S3.
    let first = &remote[0];
    let last = &remote[remote.len() - 1];
    let start_s = first.start_us.div_euclid(1_000_000) + 1;
    let duration_s = (last.end_us - start_s * 1_000_000) / 1_000_000;
    let url = format!(
        "ws://{}/ws/archive?stream_id={DEMO}&start={start_s}&duration={duration_s}",
        s.video
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let mut all = Vec::new();
    let mut eos = false;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
        match m {
            Message::Binary(b) if b.first() != Some(&9) => all.extend_from_slice(&b),
            Message::Text(t) if t.as_str() == "eos" => {
                eos = true;
                break;
            }
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
    assert!(eos, "playback reached eos");
    let played = tmp.path().join("s3-played.mp4");
    std::fs::write(&played, &all).expect("write");
    let errors = ffmpeg_decode_errors(&played.display().to_string());
    assert!(errors.trim().is_empty(), "{errors}");
    // Export of the same range, from S3.
    let r = reqwest::get(format!(
        "{}/api/v1/streams/{DEMO}/export.mp4?start={start_s}&end={}",
        s.api,
        start_s + duration_s
    ))
    .await
    .expect("export");
    assert_eq!(r.status(), 200);
    let exported = tmp.path().join("s3-export.mp4");
    std::fs::write(&exported, r.bytes().await.expect("body")).expect("write");
    let probed = probe_duration(&exported);
    assert!(
        (probed - duration_s as f64).abs() < 0.1,
        "export {probed} s of {duration_s} s"
    );
    // The listing names the bucket of S3 segments only.
    let page: serde_json::Value = reqwest::get(format!(
        "{}/api/v1/streams/{DEMO}/segments?limit=1000",
        s.api
    ))
    .await
    .expect("segments")
    .json()
    .await
    .expect("json");
    let items = page["items"].as_array().expect("items");
    assert!(items.len() >= remote.len());
    for item in items {
        match item["storage"].as_str() {
            Some("s3") => assert_eq!(item["bucket"], json!("cams-own"), "{item}"),
            _ => assert!(item.get("bucket").is_none(), "{item}"),
        }
    }
    // Retention deletes from the stream's bucket. Run as if two hours had passed, with a one-hour
    // limit: the server's own pass (real time) deletes nothing meanwhile.
    let mut spec = video_server::db::streams::get(&s.state.db, id)
        .await
        .expect("get")
        .expect("stream row")
        .spec;
    spec.retention.max_age_s = Some(3600);
    video_server::db::streams::update(&s.state.db, &spec)
        .await
        .expect("update");
    let retention = Retention::new(
        s.state.db.clone(),
        s.state.archive.clone(),
        RetentionConfig::default(),
        tmp.path().join("mp4"),
    );
    let report = retention
        .run_once_at(video_server::db::now_us() + 7_200_000_000)
        .await
        .expect("retention pass");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.by_age >= remote.len() as u64, "{report:?}");
    for r in &remote {
        assert!(
            segments::get(&s.state.db, r.id)
                .await
                .expect("get")
                .is_none(),
            "row {} deleted",
            r.id
        );
        assert!(
            !object_of(r).exists(),
            "object {} deleted",
            object_of(r).display()
        );
    }
    let _ = s.stop().await;
}
