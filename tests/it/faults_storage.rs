//! Fault injection for the archive's storage (issue 10, docs/reliability.md): the object store
//! stopped or the server killed while it uploads, and a storage root that goes away (its marker
//! missing) under the recorder and retention. Each test checks "nothing lost" from both sides:
//! the index rows and the files or objects.
//!
//! The short versions run in scripts/test; `FAULT_S3_OUTAGE_S` and `FAULT_S3_KILL_LOOPS` make the
//! long ones of docs/reliability.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;
use video_server::archive::markers::{MARKER_FILE, MarkedRoots};
use video_server::db::Db;
use video_server::db::segments::{self, SegmentRow};

use crate::archive::{DEMO, all_segments, archive_config, demo_recording, files_under};
use crate::faults_io::wait_for;
use crate::support::InProcess;
use crate::support::media::ffmpeg_decode_errors;
use crate::support::s3::S3Server;

/// `name` from the environment, else `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `[s3]` pointing at `server`, bucket `archive`, prefix `video`.
fn s3_section(server: &S3Server) -> String {
    let c = server.config("archive", "video");
    format!(
        "[s3]\nendpoint = \"{}\"\nregion = \"{}\"\naccess_key = \"{}\"\nsecret_key = \"{}\"\n\
         bucket = \"{}\"\nprefix = \"{}\"\npath_style = true\n",
        c.endpoint, c.region, c.access_key, c.secret_key, c.bucket, c.prefix
    )
}

/// The demo stream, archived to S3.
fn demo_to_s3() -> String {
    demo_recording().replace(
        "archive = { recording = true }",
        "archive = { recording = true, type = \"minio\" }",
    )
}

/// Every `.mp4` object in the bucket (s3s-fs keeps objects as plain files), as keys.
fn objects(bucket_dir: &Path) -> BTreeSet<String> {
    files_under(bucket_dir)
        .into_iter()
        .filter_map(|p| {
            p.strip_prefix(bucket_dir)
                .ok()
                .map(|k| k.display().to_string())
        })
        .collect()
}

/// "Nothing lost, nothing twice": every row's bytes are where the row says (an object of its key
/// and size for `s3` rows, its local file for the others), every object and every local file
/// belongs to exactly one row, no row is `missing`, and no two rows overlap in time (a segment
/// indexed twice would). Every object decodes. Returns (remote, local) row counts.
async fn index_equals_storage(
    db: &Db,
    stream: Uuid,
    local_dir: &Path,
    bucket_dir: &Path,
) -> (usize, usize) {
    let rows = all_segments(db, stream).await;
    let missing = segments::missing_after(db, 0, 10).await.expect("missing");
    assert!(missing.is_empty(), "rows marked missing: {missing:?}");
    let (remote, local): (Vec<&SegmentRow>, Vec<&SegmentRow>) =
        rows.iter().partition(|r| r.storage == "s3");
    let mut keys = BTreeSet::new();
    for r in &remote {
        assert_eq!(
            (r.state.as_str(), r.upload_state.as_str()),
            ("complete", "remote"),
            "{r:?}"
        );
        assert_eq!(r.bucket.as_deref(), Some("archive"), "{r:?}");
        let object = bucket_dir.join(&r.storage_key);
        let len = std::fs::metadata(&object)
            .unwrap_or_else(|e| panic!("object {}: {e}", object.display()))
            .len();
        assert_eq!(len as i64, r.bytes, "{r:?}");
        let errors = ffmpeg_decode_errors(&object.display().to_string());
        assert!(errors.trim().is_empty(), "{}: {errors}", r.storage_key);
        assert!(keys.insert(r.storage_key.clone()), "two rows, one object");
    }
    assert_eq!(
        objects(bucket_dir),
        keys,
        "objects in the bucket equal the uploaded rows (no orphan object)"
    );
    let mut local_keys: Vec<PathBuf> = local
        .iter()
        .map(|r| {
            assert_eq!(r.state, "complete", "{r:?}");
            assert_eq!(r.upload_state, "local", "{r:?}");
            let len = std::fs::metadata(&r.storage_key).expect("local file").len();
            assert_eq!(len as i64, r.bytes, "{r:?}");
            PathBuf::from(&r.storage_key)
        })
        .collect();
    local_keys.sort();
    assert_eq!(
        files_under(local_dir),
        local_keys,
        "local files equal the rows waiting for upload (no leftover copy of an uploaded one)"
    );
    let mut names = BTreeSet::new();
    for r in &rows {
        let name = Path::new(&r.storage_key)
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(names.insert(name), "a segment recorded twice: {r:?}");
    }
    for pair in rows.windows(2) {
        assert!(
            pair[1].start_us >= pair[0].end_us - 1_000,
            "overlapping segments (one indexed twice?): {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    (remote.len(), local.len())
}

/// Rows of the stream by upload state, when the index answers: (local and complete, uploading).
async fn queue(db: &Db, stream: Uuid) -> (Vec<i64>, usize) {
    let rows = all_segments(db, stream).await;
    let waiting = rows
        .iter()
        .filter(|r| r.state == "complete" && r.upload_state == "local")
        .map(|r| r.id)
        .collect();
    let uploading = rows
        .iter()
        .filter(|r| r.upload_state == "uploading")
        .count();
    (waiting, uploading)
}

// ----- kill -9 during S3 uploads ----------------------------------------------------------------

/// The real binary records the demo clip in 1 s segments to S3 (s3s-fs). Each round: the object
/// store is stopped so a backlog builds, started again, and the server is killed (`kill -9`) just
/// after the first upload of the backlog finished, while the next ones are in flight; it then
/// starts again. Afterwards every segment is in the bucket exactly once, every row points at its
/// object, and no local copy, orphan object or duplicate row is left.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_s3_uploads_leaves_every_segment_remote_exactly_once() {
    use crate::support::binary::ServerProcess;
    let mut s3 = S3Server::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    crate::archive::binary_setup(dir.path(), 1000);
    let conf = dir.path().join("conf.toml");
    let text = std::fs::read_to_string(&conf).expect("conf");
    std::fs::write(
        &conf,
        format!(
            "{}{}",
            text.replace(&demo_recording(), &demo_to_s3()),
            s3_section(&s3)
        ),
    )
    .expect("conf");
    let index = crate::support::Index::new(video_server::db::Engine::Sqlite).await;
    let env = [
        ("VIDEO_SERVER_DATABASE_URL", index.url.as_str()),
        ("RUST_LOG", "info,video_server::archive::uploader=debug"),
    ];
    let id: Uuid = DEMO.parse().expect("uuid");
    let rounds = env_or("FAULT_S3_KILL_LOOPS", 3);
    let mut before_kills: BTreeSet<i64> = BTreeSet::new();
    let mut in_flight_at_kill = Vec::new();
    for round in 0..rounds {
        s3.stop();
        let server = ServerProcess::start(dir.path(), &["--conf", "conf.toml"], &env);
        let db = index.connect().await;
        wait_for(
            "a backlog of 4 segments",
            Duration::from_secs(40),
            || async { (queue(&db, id).await.0.len() >= 4).then_some(()) },
        )
        .await;
        s3.restart().await;
        // Kill as soon as the first upload of the backlog is logged (a little later each round:
        // a different point of the uploads in flight), watching the log closely: the backlog
        // drains in a fraction of a second.
        let deadline = Instant::now() + Duration::from_secs(90);
        let uploaded = |line: &String| line.contains("\"segment uploaded\"");
        while !server.logs.lock().expect("logs").iter().any(uploaded) {
            assert!(
                Instant::now() < deadline,
                "no upload; logs:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(round % 4 * 5));
        server.kill9();
        let rows = all_segments(&db, id).await;
        let uploading = rows
            .iter()
            .filter(|r| r.upload_state == "uploading")
            .count();
        in_flight_at_kill.push(uploading);
        before_kills.extend(rows.iter().filter(|r| r.state == "complete").map(|r| r.id));
        db.close().await;
    }
    // Start once more and let the queue drain: every segment of the killed runs goes up.
    let server = ServerProcess::start(dir.path(), &["--conf", "conf.toml"], &env);
    let db = index.connect().await;
    let ids: Vec<i64> = before_kills.iter().copied().collect();
    let drained = wait_for(
        "every segment of the killed runs uploaded",
        Duration::from_secs(120),
        || async {
            let rows = all_segments(&db, id).await;
            let remote: BTreeSet<i64> = rows
                .iter()
                .filter(|r| r.upload_state == "remote")
                .map(|r| r.id)
                .collect();
            ids.iter().all(|i| remote.contains(i)).then_some(rows.len())
        },
    )
    .await;
    assert!(server.terminate(), "graceful stop");
    let reconciled = segments::max_id(&db).await.expect("max id");
    let (remote, local) = index_equals_storage(
        &db,
        id,
        &dir.path().join("mp4"),
        &s3.data_dir().join("archive"),
    )
    .await;
    db.close().await;
    eprintln!(
        "kill -9 during uploads x {rounds}: uploads in flight at each kill {in_flight_at_kill:?}; \
         {} segments of the killed runs, {drained} rows at the end ({remote} remote, {local} \
         local), max id {reconciled}",
        ids.len()
    );
    assert!(
        in_flight_at_kill.iter().any(|n| *n > 0),
        "at least one kill hit uploads in flight: {in_flight_at_kill:?}"
    );
}

// ----- the object store stopped -----------------------------------------------------------------

/// An in-process server records the demo clip in 1 s segments to S3; the object store is stopped
/// for `FAULT_S3_OUTAGE_S` (10 s here, 60 s by hand). Recording goes on (no gap), the upload queue
/// grows with every segment, every local file stays; after the store returns the queue drains and
/// every segment is in the bucket once.
#[tokio::test(flavor = "multi_thread")]
async fn s3_stopped_the_queue_grows_and_drains_and_nothing_is_lost() {
    let mut s3 = S3Server::start().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&format!(
        "{}{}{}",
        archive_config(tmp.path(), 1000),
        s3_section(&s3),
        demo_to_s3()
    ))
    .await;
    let id: Uuid = DEMO.parse().expect("uuid");
    let db = s.state.db.clone();
    wait_for("two segments uploaded", Duration::from_secs(30), || async {
        let rows = all_segments(&db, id).await;
        (rows.iter().filter(|r| r.upload_state == "remote").count() >= 2).then_some(())
    })
    .await;

    let outage = Duration::from_secs(env_or("FAULT_S3_OUTAGE_S", 10));
    s3.stop();
    let stopped = Instant::now();
    let mut peak = 0;
    // Watch the queue through the outage (the outage's length is the fault itself).
    while stopped.elapsed() < outage {
        let (waiting, _) = queue(&db, id).await;
        peak = peak.max(waiting.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (waiting, _) = queue(&db, id).await;
    peak = peak.max(waiting.len());
    let failed = s.state.uploads.snapshot().failed;
    let expected = (outage.as_secs() / 4) as usize;
    assert!(
        waiting.len() >= expected,
        "the queue grew during the outage: {} waiting (>= {expected})",
        waiting.len()
    );
    assert!(failed >= 1, "uploads were tried and failed");
    for r in all_segments(&db, id).await {
        if r.upload_state == "local" {
            assert!(Path::new(&r.storage_key).is_file(), "kept: {r:?}");
        }
    }

    s3.restart().await;
    let back = Instant::now();
    let queued = waiting.clone();
    wait_for(
        "the queue of the outage drained",
        Duration::from_secs(120),
        || async {
            let rows = all_segments(&db, id).await;
            let remote: BTreeSet<i64> = rows
                .iter()
                .filter(|r| r.upload_state == "remote")
                .map(|r| r.id)
                .collect();
            queued.iter().all(|i| remote.contains(i)).then_some(())
        },
    )
    .await;
    let drained_s = back.elapsed().as_secs_f64();
    let counters = s.state.uploads.snapshot();
    let dir = s.stop().await;
    let db = Db::connect(&format!(
        "sqlite://{}",
        dir.path().join("index.db").display()
    ))
    .await
    .expect("index");
    let (remote, local) = index_equals_storage(
        &db,
        id,
        &tmp.path().join("mp4"),
        &s3.data_dir().join("archive"),
    )
    .await;
    // Recording did not notice: the segments are back to back through the outage.
    let rows = all_segments(&db, id).await;
    for pair in rows.windows(2) {
        let gap = pair[1].start_us - pair[0].end_us;
        assert!(
            gap <= 50_000,
            "a hole of {gap} µs in the recording: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    db.close().await;
    eprintln!(
        "S3 stopped {} s: queue peaked at {peak} segments ({} at the end), {failed} failed \
         attempts, drained {drained_s:.1} s after the return; {remote} remote, {local} local; \
         {counters:?}",
        outage.as_secs(),
        waiting.len()
    );
}

// ----- a storage root that goes away ------------------------------------------------------------

/// The recorder opens no segment while its storage root's marker is missing (a disk unmounted
/// under it): no file is created meanwhile, `/readyz` says why, and recording resumes at the next
/// keyframe once the marker is back. Every file is indexed and plays.
#[tokio::test(flavor = "multi_thread")]
async fn the_recorder_pauses_while_its_root_is_unavailable_and_resumes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&format!(
        "{}root_check_s = 1\n{}",
        archive_config(tmp.path(), 1000),
        demo_recording()
    ))
    .await;
    let id: Uuid = DEMO.parse().expect("uuid");
    let mp4 = tmp.path().join("mp4");
    let recorder = || {
        s.state
            .manager
            .runtime(id)
            .and_then(|rt| rt.recorder_stats())
            .expect("recorder")
            .snapshot()
    };
    wait_for("two segments", Duration::from_secs(30), || async {
        (recorder().segments_written >= 2).then_some(())
    })
    .await;

    let marker = mp4.join(MARKER_FILE);
    let away = mp4.join("marker.away");
    std::fs::rename(&marker, &away).expect("marker away");
    wait_for("the recorder pausing", Duration::from_secs(10), || async {
        (recorder().root_paused == 1).then_some(())
    })
    .await;
    // The segment that was open when the marker went is closed at its end; nothing after it.
    let paused = recorder();
    let files = files_under(&mp4);
    wait_for("/readyz 503", Duration::from_secs(10), || async {
        let r = reqwest::get(format!("{}/readyz", s.api)).await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    // Three segment lengths: no file appears, no segment is written.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        assert_eq!(files_under(&mp4), files, "no file while the root is away");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still = recorder();
    assert_eq!(still.segments_written, paused.segments_written, "{still:?}");
    assert_eq!(still.root_paused, 1);
    assert!(still.dropped_bytes > paused.dropped_bytes, "{still:?}");

    std::fs::rename(&away, &marker).expect("marker back");
    let back = Instant::now();
    wait_for("two new segments", Duration::from_secs(20), || async {
        let r = recorder();
        (r.root_paused == 0 && r.segments_written >= still.segments_written + 2).then_some(())
    })
    .await;
    let resumed_s = back.elapsed().as_secs_f64();
    let end = recorder();
    let dir = s.stop().await;
    let db = Db::connect(&format!(
        "sqlite://{}",
        dir.path().join("index.db").display()
    ))
    .await
    .expect("index");
    let rows = all_segments(&db, id).await;
    db.close().await;
    crate::archive::check_rows_match_files(&rows, &mp4);
    assert_eq!(end.root_pauses, 1, "{end:?}");
    eprintln!(
        "root away: {} files kept, {} bytes dropped while paused, two segments {resumed_s:.1} s \
         after the marker returned",
        files.len(),
        end.dropped_bytes
    );
}

/// Retention leaves the segments of an unavailable root alone (by age, by purge, and deletes
/// that were interrupted) and deletes them once the root is back.
#[tokio::test]
async fn retention_skips_an_unavailable_root_until_it_returns() {
    use video_server::archive::Archive;
    use video_server::archive::retention::Retention;
    use video_server::archive::storage::fs::FsStorage;

    let t = crate::support::sqlite().await;
    let db = &t.db;
    let tmp = tempfile::tempdir().expect("tmp");
    let config = crate::support::config(&format!(
        "[archive]\ndirectory = \"{}\"\n[retention]\nmax_age_s = 60\n",
        tmp.path().display()
    ));
    let stream = Uuid::new_v4();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            crate::retention::add_segment(
                db,
                tmp.path(),
                stream,
                (1_000_000_000 + i * 10) * 1_000_000,
                1_000_000,
                1000,
            )
            .await,
        );
    }
    // A purge of another (deleted) stream's archive on the same root.
    let gone = Uuid::new_v4();
    let (purged, purged_path) = crate::retention::add_segment(
        db,
        tmp.path(),
        gone,
        video_server::db::now_us() - 10_000_000,
        1_000_000,
        1000,
    )
    .await;
    video_server::db::retention::delete_and_purge(db, gone, video_server::db::now_us())
        .await
        .expect("purge");
    let roots = MarkedRoots::open(db.clone(), Arc::new(config.clone()))
        .await
        .expect("roots");
    let retention = Retention::new(
        db.clone(),
        Arc::new(Archive::with_storages(Arc::new(FsStorage), None)),
        config.retention.clone(),
        tmp.path(),
    )
    .with_roots(roots.clone());

    let marker = tmp.path().join(MARKER_FILE);
    let away = tmp.path().join("marker.away");
    std::fs::rename(&marker, &away).expect("marker away");
    roots.check_all().await;
    let report = retention.run_once().await.expect("pass");
    assert_eq!(report.deleted(), 0, "{report:?}");
    assert!(report.deferred >= 1, "{report:?}");
    for (id, path) in ids.iter().chain([(purged, purged_path.clone())].iter()) {
        assert!(segments::get(db, *id).await.expect("get").is_some());
        assert!(path.exists());
    }

    std::fs::rename(&away, &marker).expect("marker back");
    roots.check_all().await;
    let report = retention.run_once().await.expect("pass");
    assert_eq!((report.by_age, report.by_purge), (4, 1), "{report:?}");
    for (id, path) in ids.iter().chain([(purged, purged_path)].iter()) {
        assert!(segments::get(db, *id).await.expect("get").is_none());
        assert!(!path.exists());
    }
    t.cleanup().await;
}

/// A crash between the uploader's commit (the row points at the object) and its removal of the
/// local file leaves a local copy without a row. Reconciliation removes it instead of indexing
/// the segment a second time; a file of that name but another size is left alone, unindexed.
#[tokio::test]
async fn a_local_copy_left_by_a_crash_after_upload_is_removed_not_indexed_twice() {
    use video_server::archive::repair::Reconciler;
    use video_server::db::segments::{NewSegment, SegmentState};
    use video_server::stream::StorageKind;

    let t = crate::support::sqlite().await;
    let db = &t.db;
    let tmp = tempfile::tempdir().expect("tmp");
    let config = crate::support::config(&format!(
        "[archive]\ndirectory = \"{}\"\n",
        tmp.path().display()
    ));
    let stream = Uuid::new_v4();
    let mut uploaded = Vec::new();
    for (i, secs) in [1_700_000_000i64, 1_700_000_010].into_iter().enumerate() {
        let path = tmp.path().join(format!("{stream}_{secs}.mp4"));
        let data = vec![7u8; 1000 + i];
        std::fs::write(&path, &data).expect("write");
        let new = NewSegment {
            stream_id: stream,
            start_us: secs * 1_000_000,
            end_us: secs * 1_000_000,
            media_duration_us: 0,
            storage: StorageKind::Filesystem,
            storage_key: path.display().to_string(),
            bytes: 0,
            state: SegmentState::Recording,
        };
        let id = segments::insert_recording(db, &new, None, "local")
            .await
            .expect("insert");
        segments::finalize(db, id, (secs + 1) * 1_000_000, 1_000_000, data.len() as i64)
            .await
            .expect("finalize");
        let claimed = segments::claim_uploads(db, id - 1, 1).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        let key = format!("video/{stream}/{stream}_{secs}.mp4");
        assert!(
            segments::complete_upload(db, id, "archive", &key)
                .await
                .expect("complete")
        );
        uploaded.push((id, path));
    }
    // The second file is not the uploaded copy: another size.
    std::fs::write(&uploaded[1].1, vec![1u8; 5]).expect("rewrite");

    let roots = MarkedRoots::open(db.clone(), Arc::new(config))
        .await
        .expect("roots");
    let root = roots.all().into_iter().next().expect("root");
    let reconciler = Reconciler::new(
        db.clone(),
        roots.clone(),
        video_server::db::now_us(),
        segments::max_id(db).await.expect("max id"),
    );
    let counters = reconciler.counters.clone();
    let done = reconciler
        .reconcile_root(&root, &tokio_util::sync::CancellationToken::new())
        .await
        .expect("reconcile");
    assert!(done);
    let report = counters.snapshot();
    assert_eq!(report.uploaded_copies, 1, "{report:?}");
    assert_eq!(report.orphans_indexed, 0, "{report:?}");
    assert!(!uploaded[0].1.exists(), "the leftover copy is removed");
    assert!(
        uploaded[1].1.exists(),
        "a file of another size is left alone"
    );
    let rows = all_segments(db, stream).await;
    assert_eq!(rows.len(), 2, "nothing indexed twice: {rows:?}");
    assert!(rows.iter().all(|r| r.storage == "s3"));
    t.cleanup().await;
}
