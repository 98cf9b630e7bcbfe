//! Archive retention on both engines: by age, by bytes and by the free-space floor, protected
//! ranges that survive each, crash-consistent deletes, and runs that equal a rebuild afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use video_server::archive::Archive;
use video_server::archive::retention::{DiskSpace, DiskUsage, Report, Retention};
use video_server::archive::storage::fs::FsStorage;
use video_server::archive::storage::{Storage, StorageError};
use video_server::config::RetentionConfig;
use video_server::db::retention::{CandidateFilter, mark_deleting, oldest_candidates};
use video_server::db::segments::{self, NewSegment, SegmentState};
use video_server::db::{Db, DbUuid, runs, streams};
use video_server::stream::{
    ArchiveSpec, OutputType, RetentionSpec, Source, StorageKind, StreamSpec,
};

use crate::both_engines;

/// "Now" for every pass: fixed, so ages are exact.
const NOW_US: i64 = 1_700_000_000_000_000;
const SECOND: i64 = 1_000_000;

async fn add_stream(db: &Db, retention: RetentionSpec) -> Uuid {
    let id = Uuid::new_v4();
    let spec = StreamSpec {
        id,
        name: String::new(),
        source: Source::File {
            path: "assets/demo.mp4".into(),
            looping: true,
        },
        outputs: vec![OutputType::Mse],
        on_demand: None,
        enabled: true,
        verbose: String::new(),
        archive: ArchiveSpec::default(),
        retention,
    };
    streams::insert(db, &spec, streams::Origin::Api)
        .await
        .expect("insert stream");
    id
}

/// A closed segment with a file of `bytes` bytes, inserted the way the recorder does it
/// (`recording`, then `finalize`, which maintains the runs).
pub(crate) async fn add_segment(
    db: &Db,
    dir: &Path,
    stream: Uuid,
    start_us: i64,
    len_us: i64,
    bytes: usize,
) -> (i64, PathBuf) {
    add_segment_for_upload(db, dir, stream, start_us, len_us, bytes, "none").await
}

/// As [`add_segment`], with an `upload_state` (`none`, or `local`: waiting for the S3 uploader).
async fn add_segment_for_upload(
    db: &Db,
    dir: &Path,
    stream: Uuid,
    start_us: i64,
    len_us: i64,
    bytes: usize,
    upload_state: &str,
) -> (i64, PathBuf) {
    let path = dir.join(format!("{stream}_{}.mp4", start_us / SECOND));
    std::fs::write(&path, vec![0u8; bytes]).expect("write segment file");
    let id = segments::insert_recording(
        db,
        &NewSegment {
            stream_id: stream,
            start_us,
            end_us: start_us,
            media_duration_us: 0,
            storage: StorageKind::Filesystem,
            storage_key: path.display().to_string(),
            bytes: 0,
            state: SegmentState::Recording,
        },
        None,
        upload_state,
    )
    .await
    .expect("insert segment");
    segments::finalize(db, id, start_us + len_us, len_us, bytes as i64)
        .await
        .expect("finalize segment");
    (id, path)
}

async fn protect(db: &Db, stream: Uuid, start_us: i64, end_us: i64) {
    const SQL: &str = "INSERT INTO protected_ranges (stream_id, start_us, end_us, reason, \
        created_at_us) VALUES ($1, $2, $3, 'evidence', 0)";
    video_server::with_pool!(db, p => sqlx::query(SQL)
        .bind(DbUuid(stream))
        .bind(start_us)
        .bind(end_us)
        .execute(p)
        .await
        .map(|_| ())
        .expect("insert protected range"));
}

async fn exists(db: &Db, id: i64) -> bool {
    segments::get(db, id).await.expect("get").is_some()
}

/// The maintained runs equal what a rebuild derives from the segments.
async fn assert_runs_consistent(db: &Db, stream: Uuid) {
    let maintained = runs::all(db, stream).await.expect("runs");
    runs::rebuild(db, stream).await.expect("rebuild");
    let rebuilt = runs::all(db, stream).await.expect("runs");
    assert_eq!(
        maintained, rebuilt,
        "runs of {stream} drifted from a rebuild"
    );
}

fn retention(db: &Db, dir: &Path, config: RetentionConfig) -> Retention {
    let archive = Archive::with_storages(Arc::new(FsStorage), None);
    Retention::new(db.clone(), Arc::new(archive), config, dir)
}

both_engines! {
    async fn deletes_by_age_but_keeps_protected_and_recording(t: &TestDb) {
        let db = &t.db;
        let dir = tempfile::tempdir().expect("tmp");
        let stream = add_stream(db, RetentionSpec { max_age_s: Some(300), max_bytes: None }).await;
        let other = add_stream(db, RetentionSpec::default()).await;
        // Ten contiguous 60 s segments ending at NOW: the first five end at or before NOW - 300 s.
        let base = NOW_US - 600 * SECOND;
        let mut segs = Vec::new();
        for i in 0..10 {
            segs.push(add_segment(db, dir.path(), stream, base + i * 60 * SECOND, 60 * SECOND, 100).await);
        }
        // An old segment of a stream without limits stays.
        let (kept_other, _) = add_segment(db, dir.path(), other, base, 60 * SECOND, 100).await;
        // Ten seconds inside segment 1 are protected.
        protect(db, stream, base + 70 * SECOND, base + 80 * SECOND).await;
        // A segment left `recording` long ago (a crash) is never deleted by retention.
        let stale = segments::insert_recording(db, &NewSegment {
            stream_id: stream,
            start_us: base - 120 * SECOND,
            end_us: base - 100 * SECOND,
            media_duration_us: 0,
            storage: StorageKind::Filesystem,
            storage_key: dir.path().join("stale.mp4").display().to_string(),
            bytes: 0,
            state: SegmentState::Recording,
        }, None, "none").await.expect("insert");

        let r = retention(db, dir.path(), RetentionConfig::default());
        let report = r.run_once_at(NOW_US).await.expect("pass");
        assert_eq!(report, Report { by_age: 4, bytes_freed: 400, ..Report::default() });
        for (i, (id, path)) in segs.iter().enumerate() {
            let kept = i == 1 || i >= 5;
            assert_eq!(exists(db, *id).await, kept, "segment {i}");
            assert_eq!(path.exists(), kept, "file of segment {i}");
        }
        assert!(exists(db, kept_other).await);
        assert!(exists(db, stale).await, "a recording segment is never deleted");
        // The run was split around the protected segment.
        let spans: Vec<(i64, i64)> = runs::all(db, stream).await.expect("runs")
            .iter().map(|r| (r.start_us, r.end_us)).collect();
        assert_eq!(spans, [(base + 60 * SECOND, base + 120 * SECOND), (base + 300 * SECOND, NOW_US)]);
        assert_runs_consistent(db, stream).await;
        assert_runs_consistent(db, other).await;

        // A second pass has nothing left to do.
        assert_eq!(r.run_once_at(NOW_US).await.expect("pass"), Report::default());
    }
}

both_engines! {
    async fn deletes_by_bytes_oldest_first_outside_protected_ranges(t: &TestDb) {
        let db = &t.db;
        let dir = tempfile::tempdir().expect("tmp");
        let stream = add_stream(db, RetentionSpec { max_age_s: None, max_bytes: Some(3000) }).await;
        let base = NOW_US - 3600 * SECOND;
        let mut segs = Vec::new();
        for i in 0..10 {
            segs.push(add_segment(db, dir.path(), stream, base + i * 10 * SECOND, 10 * SECOND, 1000).await);
        }
        // Segments 0 and 1 are protected: they stay and do not count against the cap.
        protect(db, stream, base, base + 20 * SECOND).await;

        let r = retention(db, dir.path(), RetentionConfig::default());
        let report = r.run_once_at(NOW_US).await.expect("pass");
        assert_eq!(report, Report { by_bytes: 5, bytes_freed: 5000, ..Report::default() });
        for (i, (id, path)) in segs.iter().enumerate() {
            let kept = i <= 1 || i >= 7;
            assert_eq!(exists(db, *id).await, kept, "segment {i}");
            assert_eq!(path.exists(), kept, "file of segment {i}");
        }
        assert_eq!(video_server::db::retention::stream_bytes(db, stream).await.expect("bytes"), 5000);
        assert_eq!(video_server::db::retention::protected_bytes(db, stream).await.expect("bytes"), 2000);
        assert_runs_consistent(db, stream).await;
        assert_eq!(r.run_once_at(NOW_US).await.expect("pass"), Report::default());
    }
}

both_engines! {
    /// A segment being uploaded (`upload_state = 'uploading'`: the uploader is reading its file)
    /// is never deleted, however old; once the upload is given up it ages out like the others.
    async fn segments_being_uploaded_are_kept_until_the_upload_ends(t: &TestDb) {
        let db = &t.db;
        let dir = tempfile::tempdir().expect("tmp");
        let stream = add_stream(db, RetentionSpec { max_age_s: Some(300), max_bytes: None }).await;
        let base = NOW_US - 3600 * SECOND;
        let mut segs = Vec::new();
        for i in 0..3 {
            segs.push(add_segment_for_upload(db, dir.path(), stream, base + i * 60 * SECOND, 60 * SECOND, 100, "local").await);
        }
        // The uploader takes the first two.
        let claimed = segments::claim_uploads(db, 0, 2).await.expect("claim");
        let claimed: Vec<i64> = claimed.iter().map(|r| r.id).collect();
        assert_eq!(claimed, [segs[0].0, segs[1].0]);

        let r = retention(db, dir.path(), RetentionConfig::default());
        let report = r.run_once_at(NOW_US).await.expect("pass");
        assert_eq!(report, Report { by_age: 1, bytes_freed: 100, ..Report::default() });
        for (i, (id, path)) in segs.iter().enumerate() {
            let kept = i < 2;
            assert_eq!(exists(db, *id).await, kept, "segment {i}");
            assert_eq!(path.exists(), kept, "file of segment {i}");
        }
        // The uploads fail and are released: the next pass deletes them.
        for id in &claimed {
            assert!(segments::release_upload(db, *id).await.expect("release"));
        }
        let report = r.run_once_at(NOW_US).await.expect("pass");
        assert_eq!(report, Report { by_age: 2, bytes_freed: 200, ..Report::default() });
        for (i, (id, path)) in segs.iter().enumerate() {
            assert!(!exists(db, *id).await, "segment {i}");
            assert!(!path.exists(), "file of segment {i}");
        }
        assert_runs_consistent(db, stream).await;
    }
}

/// A disk of `total` bytes whose only content is the files in `dir`.
struct FakeDisk {
    dir: PathBuf,
    total: u64,
}

impl DiskSpace for FakeDisk {
    fn usage(&self, _path: &Path) -> std::io::Result<DiskUsage> {
        let mut used = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            used += entry?.metadata()?.len();
        }
        Ok(DiskUsage {
            total_bytes: self.total,
            free_bytes: self.total.saturating_sub(used),
        })
    }
}

both_engines! {
    async fn free_space_floor_deletes_oldest_of_all_streams(t: &TestDb) {
        let db = &t.db;
        let dir = tempfile::tempdir().expect("tmp");
        let a = add_stream(db, RetentionSpec::default()).await;
        let b = add_stream(db, RetentionSpec::default()).await;
        // Interleaved in time: a0 b0 a1 b1 ... (stream b starts 5 s later), 1000 bytes each.
        let base = NOW_US - 3600 * SECOND;
        let mut a_segs = Vec::new();
        let mut b_segs = Vec::new();
        for i in 0..5 {
            a_segs.push(add_segment(db, dir.path(), a, base + i * 10 * SECOND, 10 * SECOND, 1000).await);
            b_segs.push(add_segment(db, dir.path(), b, base + 5 * SECOND + i * 10 * SECOND, 10 * SECOND, 1000).await);
        }
        // b0 is protected, so the oldest four deletable are a0 a1 b1 a2.
        protect(db, b, base + 5 * SECOND, base + 6 * SECOND).await;
        // 10 000 bytes used of 20 000: the floor of 13 500 free needs 3 500 more, four segments.
        let disk = Arc::new(FakeDisk { dir: dir.path().to_owned(), total: 20_000 });
        let config = RetentionConfig { min_free_bytes: Some(13_500), ..RetentionConfig::default() };
        let r = retention(db, dir.path(), config).with_disk(disk.clone());
        let report = r.run_once_at(NOW_US).await.expect("pass");
        assert_eq!(report, Report { by_free_space: 4, bytes_freed: 4000, ..Report::default() });
        let alive = |segs: &[(i64, PathBuf)]| segs.iter().map(|(_, p)| p.exists()).collect::<Vec<_>>();
        assert_eq!(alive(&a_segs), [false, false, false, true, true]);
        assert_eq!(alive(&b_segs), [true, false, true, true, true]);
        for (id, path) in a_segs.iter().chain(&b_segs) {
            assert_eq!(exists(db, *id).await, path.exists());
        }
        assert_eq!(disk.usage(dir.path()).expect("usage").free_bytes, 14_000);
        assert_runs_consistent(db, a).await;
        assert_runs_consistent(db, b).await;

        // A floor that cannot be met deletes everything deletable, keeps the protected segment,
        // and says so.
        let config = RetentionConfig { min_free_percent: Some(99.0), ..RetentionConfig::default() };
        let r = retention(db, dir.path(), config).with_disk(disk);
        let report = r.run_once_at(NOW_US).await.expect("pass");
        assert_eq!(report.by_free_space, 5);
        assert!(report.below_floor);
        assert!(b_segs[0].1.exists() && exists(db, b_segs[0].0).await);
        assert_eq!(runs::all(db, a).await.expect("runs"), []);
        assert_runs_consistent(db, b).await;
    }
}

both_engines! {
    async fn interrupted_deletes_are_finished_at_start(t: &TestDb) {
        let db = &t.db;
        let dir = tempfile::tempdir().expect("tmp");
        let stream = add_stream(db, RetentionSpec::default()).await;
        let base = NOW_US - 3600 * SECOND;
        let mut segs = Vec::new();
        for i in 0..4 {
            segs.push(add_segment(db, dir.path(), stream, base + i * 10 * SECOND, 10 * SECOND, 500).await);
        }
        // A pass marked segments 0 and 2, deleted the file of 0, and crashed.
        let filter = CandidateFilter { start_before_us: i64::MAX, end_before_us: i64::MAX, include_missing: false, storage: None };
        let candidates = oldest_candidates(db, stream, filter, 10, video_server::db::now_us()).await.expect("candidates");
        let chosen = [candidates[0].clone(), candidates[2].clone()];
        let marked = mark_deleting(db, &chosen, video_server::db::now_us()).await.expect("mark");
        assert_eq!(marked.len(), 2);
        std::fs::remove_file(&segs[0].1).expect("remove");
        // Marked rows are already out of the runs and the ranges.
        assert_runs_consistent(db, stream).await;
        let ranges = runs::ranges(db, stream, 0, i64::MAX, 0).await.expect("ranges");
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].start_us, base + 10 * SECOND);

        // Start-up: `run` finishes the pending deletes before its first pass (the token is
        // already cancelled, so it returns right after).
        let cancel = CancellationToken::new();
        cancel.cancel();
        retention(db, dir.path(), RetentionConfig::default()).run(cancel).await;
        let alive: Vec<bool> = segs.iter().map(|(_, p)| p.exists()).collect();
        assert_eq!(alive, [false, true, false, true]);
        for (i, (id, _)) in segs.iter().enumerate() {
            assert_eq!(exists(db, *id).await, i % 2 == 1, "segment {i}");
        }
        assert!(video_server::db::retention::pending(db).await.expect("pending").is_empty());
        assert_runs_consistent(db, stream).await;

        // Nothing is left for finish_pending to do.
        let r = retention(db, dir.path(), RetentionConfig::default());
        assert_eq!(r.finish_pending().await.expect("finish"), 0);
    }
}

/// A filesystem storage whose deletes fail while `fail` is set.
struct FlakyStorage {
    fail: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Storage for FlakyStorage {
    async fn read(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<bytes::Bytes, StorageError> {
        FsStorage.read(key, range).await
    }
    async fn size(&self, key: &str) -> Result<u64, StorageError> {
        FsStorage.size(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StorageError::Remote {
                key: key.to_owned(),
                message: "unavailable".into(),
            });
        }
        FsStorage.delete(key).await
    }
}

both_engines! {
    async fn failed_storage_deletes_are_retried(t: &TestDb) {
        let db = &t.db;
        let dir = tempfile::tempdir().expect("tmp");
        let stream = add_stream(db, RetentionSpec { max_age_s: Some(60), max_bytes: None }).await;
        let (id, path) = add_segment(db, dir.path(), stream, NOW_US - 600 * SECOND, 10 * SECOND, 100).await;
        let storage = Arc::new(FlakyStorage { fail: true.into() });
        let archive = Arc::new(Archive::with_storages(storage.clone(), None));
        let r = Retention::new(db.clone(), archive, RetentionConfig::default(), dir.path());

        let report = r.run_once_at(NOW_US).await.expect("pass");
        assert_eq!(report, Report { failed: 1, ..Report::default() });
        assert!(path.exists());
        let row = segments::get(db, id).await.expect("get").expect("row kept");
        assert_eq!(row.state, "deleting");
        assert_eq!(runs::all(db, stream).await.expect("runs"), []);

        // The store is back: the next pass finishes the delete.
        storage.fail.store(false, std::sync::atomic::Ordering::Relaxed);
        let report = r.run_once_at(NOW_US).await.expect("pass");
        assert_eq!(report, Report { finished: 1, bytes_freed: 100, ..Report::default() });
        assert!(!path.exists() && !exists(db, id).await);
    }
}

both_engines! {
    /// `[retention] max_age_s` / `max_bytes` are the limits of streams that set none, and of the
    /// archives of deleted streams (which have no settings left); a stream's own limit wins.
    async fn global_limits_age_out_streams_without_limits_and_deleted_streams(t: &TestDb) {
        let db = &t.db;
        let dir = tempfile::tempdir().expect("tmp");
        let plain = add_stream(db, RetentionSpec::default()).await;
        let own = add_stream(db, RetentionSpec { max_age_s: Some(10_000), max_bytes: None }).await;
        let deleted = add_stream(db, RetentionSpec::default()).await;
        let base = NOW_US - 600 * SECOND;
        let mut segs = Vec::new();
        for s in [plain, own, deleted] {
            for i in 0..4 {
                segs.push((s, add_segment(db, dir.path(), s, base + i * 120 * SECOND, 120 * SECOND, 100).await));
            }
        }
        assert!(streams::delete(db, deleted).await.expect("delete"));

        // Without global limits nothing goes (the deleted stream's archive stays).
        let none = retention(db, dir.path(), RetentionConfig::default());
        assert_eq!(none.run_once_at(NOW_US).await.expect("pass"), Report::default());

        // 300 s: the first two segments of `plain` and `deleted` ended by NOW - 300 s (the third
        // ends at NOW - 240 s and stays); `own` keeps its 10 000 s.
        let config = RetentionConfig { max_age_s: Some(300), ..RetentionConfig::default() };
        let r = retention(db, dir.path(), config);
        let report = r.run_once_at(NOW_US).await.expect("pass");
        assert_eq!(report.by_age, 4, "{report:?}");
        for (stream, (id, path)) in &segs {
            let i = segs.iter().filter(|(s, _)| s == stream).position(|(_, (x, _))| x == id).expect("index");
            let kept = *stream == own || i >= 2;
            assert_eq!(exists(db, *id).await, kept, "{stream} segment {i}");
            assert_eq!(path.exists(), kept);
        }
        for s in [plain, own, deleted] {
            assert_runs_consistent(db, s).await;
        }

        // A global byte cap, too: 100 bytes left of each stream without its own cap.
        let config = RetentionConfig { max_bytes: Some(100), ..RetentionConfig::default() };
        let report = retention(db, dir.path(), config).run_once_at(NOW_US).await.expect("pass");
        assert_eq!(report.by_bytes, 1 + 3 + 1, "{report:?}");
    }
}

both_engines! {
    /// `DELETE /api/v1/streams/{id}?purge=true` deletes the stream and, through retention, its
    /// archive, keeping what a protected range covers; without `purge` the archive stays.
    async fn purge_deletes_the_archive_but_keeps_protected_segments(t: &TestDb) {
        use crate::support::{call, config, state};
        let db = &t.db;
        let dir = tempfile::tempdir().expect("tmp");
        let purged = add_stream(db, RetentionSpec::default()).await;
        let kept = add_stream(db, RetentionSpec::default()).await;
        let base = NOW_US - 600 * SECOND;
        let mut segs = Vec::new();
        for s in [purged, kept] {
            for i in 0..5 {
                segs.push((s, add_segment(db, dir.path(), s, base + i * 60 * SECOND, 60 * SECOND, 100).await));
            }
        }
        protect(db, purged, base + 70 * SECOND, base + 80 * SECOND).await;
        let app = state(db, config("[archive]\nserving = true\n")).await;
        let del = |id: Uuid, q: &str| {
            let app = app.clone();
            let uri = format!("/api/v1/streams/{id}{q}");
            async move { call(&app, "DELETE", &uri, None, axum::body::Body::empty()).await }
        };
        assert_eq!(del(kept, "").await.status, 204);
        assert_eq!(del(purged, "?purge=true").await.status, 202);
        assert!(streams::get(db, purged).await.expect("get").is_none());
        assert_eq!(del(Uuid::new_v4(), "?purge=true").await.status, 404, "unknown archive");
        assert_eq!(del(purged, "?purge=maybe").await.status, 400);

        let r = retention(db, dir.path(), RetentionConfig::default());
        let report = r.run_once().await.expect("pass");
        assert_eq!(report.by_purge, 4, "{report:?}");
        for (stream, (id, path)) in &segs {
            let protected = *stream == purged && *id == segs[1].1.0;
            let survives = *stream == kept || protected;
            assert_eq!(exists(db, *id).await, survives);
            assert_eq!(path.exists(), survives);
        }
        assert_runs_consistent(db, purged).await;
        // Done: only protected footage is left, so the purge is forgotten.
        assert!(video_server::db::retention::purges(db).await.expect("purges").is_empty());
        assert_eq!(r.run_once().await.expect("pass"), Report::default());

        // Purging the archive of a stream deleted earlier works too.
        assert_eq!(del(kept, "?purge=true").await.status, 202);
        assert_eq!(r.run_once().await.expect("pass").by_purge, 5);
    }
}
