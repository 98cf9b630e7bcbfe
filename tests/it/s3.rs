//! S3 storage and the background uploader against a real S3-compatible server (s3s-fs), including
//! an outage in the middle, unreachable and silent endpoints, and vanished local files.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use video_server::archive::storage::s3::{S3Storage, S3Timeouts, object_key};
use video_server::archive::storage::{Storage, StorageError};
use video_server::archive::uploader::{UploadStats, Uploader, UploaderSettings};
use video_server::db::Db;
use video_server::db::segments::{self, NewSegment, SegmentState};
use video_server::db::streams::{self, Origin};
use video_server::stream::{ArchiveSpec, OutputType, Source, StorageKind, StreamSpec};

use crate::both_engines;
use crate::support::ports::ClosedPort;
use crate::support::s3::{S3Server, SilentServer};

/// Short timeouts: a dead endpoint fails a call in about a second.
fn test_timeouts() -> S3Timeouts {
    S3Timeouts {
        connect: Duration::from_millis(500),
        read: Duration::from_secs(2),
        operation: Duration::from_secs(3),
        max_attempts: 1,
    }
}

/// Backoff in tens of milliseconds so outage tests take seconds.
fn test_settings() -> UploaderSettings {
    UploaderSettings {
        concurrency: 2,
        poll_interval: Duration::from_millis(50),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(300),
        shutdown_grace: Duration::from_millis(500),
    }
}

/// Deterministic, incompressible-looking bytes.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// Polls `check` every 25 ms until it is true; panics after `timeout`.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn s3_stream(id: Uuid, bucket: Option<&str>, prefix: Option<&str>) -> StreamSpec {
    StreamSpec {
        id,
        name: "cam".into(),
        source: Source::File {
            path: "assets/demo.mp4".into(),
            looping: true,
        },
        outputs: vec![OutputType::Mse],
        on_demand: None,
        enabled: true,
        verbose: String::new(),
        archive: ArchiveSpec {
            recording: true,
            ms_per_file: None,
            storage: StorageKind::S3,
            directory: None,
            bucket: bucket.map(str::to_owned),
            prefix: prefix.map(str::to_owned),
        },
        retention: Default::default(),
    }
}

/// A closed segment the way the recorder leaves it for an S3 stream: the file at
/// `<dir>/<uuid>/<day>/<uuid>_<secs>.mp4` and a `complete` row with `upload_state = 'local'`.
async fn ready_segment(
    db: &Db,
    dir: &Path,
    stream: Uuid,
    secs: i64,
    data: &[u8],
) -> (i64, PathBuf) {
    let day = chrono::DateTime::from_timestamp(secs, 0)
        .expect("time")
        .format("%Y-%m-%d")
        .to_string();
    let folder = dir.join(stream.to_string()).join(day);
    std::fs::create_dir_all(&folder).expect("mkdir");
    let path = folder.join(format!("{stream}_{secs}.mp4"));
    std::fs::write(&path, data).expect("write segment");
    let start_us = secs * 1_000_000;
    let new = NewSegment {
        stream_id: stream,
        start_us,
        end_us: start_us,
        media_duration_us: 0,
        storage: StorageKind::Filesystem,
        storage_key: path.display().to_string(),
        bytes: 0,
        state: SegmentState::Recording,
    };
    let id = segments::insert_recording(db, &new, None, "local")
        .await
        .expect("insert");
    segments::finalize(db, id, start_us + 2_000_000, 2_000_000, data.len() as i64)
        .await
        .expect("finalize");
    (id, path)
}

async fn row(db: &Db, id: i64) -> segments::SegmentRow {
    segments::get(db, id).await.expect("get").expect("row")
}

async fn all_remote(db: &Db, ids: &[i64]) -> bool {
    for &id in ids {
        if row(db, id).await.upload_state != "remote" {
            return false;
        }
    }
    true
}

/// Starts an uploader on its own task; returns the task and its stop token.
fn start_uploader(
    db: &Db,
    s3: S3Storage,
    prefix: &str,
    stats: Arc<UploadStats>,
) -> (tokio::task::JoinHandle<()>, CancellationToken) {
    // Uploader logs go to the test's captured output (shown when a test fails).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("video_server=debug")
        .with_test_writer()
        .try_init();
    let cancel = CancellationToken::new();
    let uploader = Uploader::new(db.clone(), s3, prefix, test_settings(), stats);
    (tokio::spawn(uploader.run(cancel.clone())), cancel)
}

async fn stop_uploader(task: tokio::task::JoinHandle<()>, cancel: CancellationToken) {
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("uploader stops promptly")
        .expect("uploader task did not panic");
}

#[tokio::test]
async fn storage_round_trip_bucket_multipart_and_ranges() {
    let server = S3Server::start().await;
    let s3 = S3Storage::new(&server.config("made-here", ""), &test_timeouts()).expect("client");
    assert!(s3.ensure_bucket().await.expect("create"), "bucket is new");
    assert!(
        !s3.ensure_bucket().await.expect("exists"),
        "second time it exists"
    );
    assert!(server.data_dir().join("made-here").is_dir());

    let dir = tempfile::tempdir().expect("tmp");
    let small = bytes(100_000, 1);
    let big = bytes(20 * 1024 * 1024 + 12_345, 2); // above the multipart threshold: 3 parts
    std::fs::write(dir.path().join("small.mp4"), &small).expect("write");
    std::fs::write(dir.path().join("big.mp4"), &big).expect("write");
    assert_eq!(
        s3.put_file("cam/small.mp4", &dir.path().join("small.mp4"))
            .await
            .expect("put small"),
        small.len() as u64
    );
    assert_eq!(
        s3.put_file("cam/big.mp4", &dir.path().join("big.mp4"))
            .await
            .expect("put big"),
        big.len() as u64
    );

    let listed = s3.list("cam/").await.expect("list");
    let keys: Vec<(&str, u64)> = listed
        .iter()
        .map(|o| (o.key.as_str(), o.size_bytes))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("cam/big.mp4", big.len() as u64),
            ("cam/small.mp4", small.len() as u64)
        ]
    );
    assert!(s3.list("nothing/").await.expect("list").is_empty());

    assert_eq!(
        s3.size("cam/big.mp4").await.expect("size"),
        big.len() as u64
    );
    assert_eq!(
        &s3.read("cam/small.mp4", None).await.expect("read")[..],
        &small[..]
    );
    assert_eq!(
        &s3.read("cam/big.mp4", None).await.expect("read")[..],
        &big[..]
    );
    // Ranges are half-open here and inclusive on the wire; one crosses a part boundary.
    let part = 8 * 1024 * 1024u64;
    for r in [
        0..1,
        10..20,
        part - 5..part + 5,
        big.len() as u64 - 7..big.len() as u64,
    ] {
        let got = s3
            .read("cam/big.mp4", Some(r.clone()))
            .await
            .expect("range");
        assert_eq!(&got[..], &big[r.start as usize..r.end as usize], "{r:?}");
    }
    assert!(
        s3.read("cam/big.mp4", Some(5..5))
            .await
            .expect("empty")
            .is_empty()
    );
    assert!(
        s3.read("cam/small.mp4", Some(99_990..100_010))
            .await
            .is_err(),
        "a range past the end is an error, like on the filesystem"
    );

    s3.delete("cam/small.mp4").await.expect("delete");
    s3.delete("cam/small.mp4")
        .await
        .expect("deleting twice is fine");
    assert!(matches!(
        s3.read("cam/small.mp4", None).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        s3.size("cam/small.mp4").await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        s3.put_file("cam/x.mp4", &dir.path().join("absent.mp4"))
            .await,
        Err(StorageError::NotFound { .. })
    ));

    // Wrong secret: refused, and the error does not carry it.
    let mut bad = server.config("made-here", "");
    bad.secret_key = "not-the-secret".into();
    let bad = S3Storage::new(&bad, &test_timeouts()).expect("client");
    let err = bad
        .read("cam/big.mp4", None)
        .await
        .expect_err("auth enforced");
    assert!(!err.to_string().contains("not-the-secret"), "{err}");
}

both_engines!(
    async fn uploader_moves_ready_segments_and_removes_local_files(t: &TestDb) {
        let db = &t.db;
        let server = S3Server::start().await;
        let dir = tempfile::tempdir().expect("tmp");
        // One stream overrides bucket and prefix (with the Go-style leading slash); one has no row
        // any more, so `[s3]` bucket and prefix apply.
        let own = Uuid::new_v4();
        streams::insert(
            db,
            &s3_stream(own, Some("cams-a"), Some("/site-a/")),
            Origin::Api,
        )
        .await
        .expect("stream");
        let orphan = Uuid::new_v4();

        let mut expected = Vec::new(); // (id, bucket, key, data, path)
        for (i, stream) in [own, own, orphan, own].into_iter().enumerate() {
            let secs = 1_700_000_000 + i as i64 * 30;
            let data = bytes(50_000 + i * 1000, i as u64);
            let (id, path) = ready_segment(db, dir.path(), stream, secs, &data).await;
            let file = format!("{stream}_{secs}.mp4");
            let (bucket, key) = if stream == own {
                ("cams-a", format!("site-a/{stream}/{file}"))
            } else {
                ("default-bucket", format!("base/{stream}/{file}"))
            };
            assert_eq!(
                key,
                object_key(
                    if stream == own { "/site-a/" } else { "base" },
                    stream,
                    &file
                )
            );
            expected.push((id, bucket, key, data, path));
        }
        // Not ready: still recording; and a filesystem-only segment.
        let (recording_id, recording_path) = {
            let path = dir.path().join("rec.mp4");
            std::fs::write(&path, b"partial").expect("write");
            let new = NewSegment {
                stream_id: own,
                start_us: 1,
                end_us: 1,
                media_duration_us: 0,
                storage: StorageKind::Filesystem,
                storage_key: path.display().to_string(),
                bytes: 7,
                state: SegmentState::Recording,
            };
            let id = segments::insert_recording(db, &new, None, "local")
                .await
                .expect("insert");
            (id, path)
        };

        let stats = Arc::new(UploadStats::default());
        let s3 = S3Storage::new(&server.config("default-bucket", "base"), &test_timeouts())
            .expect("client");
        let (task, cancel) = start_uploader(db, s3.clone(), "base", stats.clone());
        let ids: Vec<i64> = expected.iter().map(|e| e.0).collect();
        wait_for("all segments remote", Duration::from_secs(20), || {
            all_remote(db, &ids)
        })
        .await;
        stop_uploader(task, cancel).await;

        for (id, bucket, key, data, path) in &expected {
            let r = row(db, *id).await;
            assert_eq!(r.storage, "s3", "on {}", t.engine_name());
            assert_eq!(&r.storage_key, key);
            assert_eq!(
                r.bucket.as_deref(),
                Some(*bucket),
                "the row names its bucket"
            );
            assert_eq!(r.state, "complete");
            assert!(
                !path.exists(),
                "local file removed after upload: {}",
                path.display()
            );
            let store = s3.for_bucket(bucket);
            assert_eq!(&store.read(key, None).await.expect("object")[..], &data[..]);
            let got = store.read(key, Some(100..1100)).await.expect("range");
            assert_eq!(&got[..], &data[100..1100]);
        }
        let listed: Vec<String> = s3
            .for_bucket("cams-a")
            .list("site-a/")
            .await
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        let mut want: Vec<String> = expected
            .iter()
            .filter(|e| e.1 == "cams-a")
            .map(|e| e.2.clone())
            .collect();
        want.sort();
        assert_eq!(listed, want);
        assert_eq!(s3.list("").await.expect("list").len(), 1);

        // The segment still being written is untouched.
        let r = row(db, recording_id).await;
        assert_eq!(
            (r.upload_state.as_str(), r.storage.as_str()),
            ("local", "filesystem")
        );
        assert!(recording_path.exists());

        let c = stats.snapshot();
        assert_eq!(c.uploaded, 4);
        assert_eq!(c.failed, 0);
        assert!(!c.running);
    }
);

#[tokio::test]
async fn outage_keeps_files_and_every_segment_arrives_after_restart() {
    let t = crate::support::sqlite().await;
    let db = &t.db;
    let mut server = S3Server::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cam = Uuid::new_v4();
    let stats = Arc::new(UploadStats::default());
    let s3 = S3Storage::new(&server.config("archive", "p"), &test_timeouts()).expect("client");
    let (task, cancel) = start_uploader(db, s3.clone(), "p", stats.clone());

    let mut all = Vec::new();
    for i in 0..2 {
        let (id, _) = ready_segment(
            db,
            dir.path(),
            cam,
            1_000 + i * 10,
            &bytes(30_000, i as u64),
        )
        .await;
        all.push(id);
    }
    wait_for("first segments uploaded", Duration::from_secs(10), || {
        all_remote(db, &all)
    })
    .await;

    // Outage: new segments wait locally while the uploader keeps retrying.
    server.stop();
    let mut during = Vec::new();
    for i in 2..6 {
        let data = bytes(30_000, i as u64);
        during.push((
            ready_segment(db, dir.path(), cam, 1_000 + i * 10, &data).await,
            data,
        ));
    }
    let failed_before = stats.snapshot().failed;
    wait_for("several failed attempts", Duration::from_secs(10), || {
        let s = stats.clone();
        async move { s.snapshot().failed >= failed_before + 3 }
    })
    .await;
    for ((id, path), _) in &during {
        let r = row(db, *id).await;
        assert_ne!(r.upload_state, "remote");
        assert_eq!(r.storage, "filesystem");
        assert!(path.exists(), "a failed upload never loses the local file");
    }
    assert!(stats.snapshot().consecutive_failures >= 3);

    server.restart().await;
    all.extend(during.iter().map(|((id, _), _)| *id));
    wait_for(
        "every segment uploaded after the outage",
        Duration::from_secs(10),
        || all_remote(db, &all),
    )
    .await;
    stop_uploader(task, cancel).await;
    for ((id, path), data) in &during {
        assert!(!path.exists());
        let key = row(db, *id).await.storage_key;
        assert_eq!(&s3.read(&key, None).await.expect("object")[..], &data[..]);
    }
    assert_eq!(s3.list("p/").await.expect("list").len(), 6);
    assert_eq!(stats.snapshot().consecutive_failures, 0);
    assert_eq!(
        segments::upload_state_counts(db)
            .await
            .expect("counts")
            .remote,
        6
    );
    t.cleanup().await;
}

/// A camera clock that went back makes the recorder name a new segment like one uploaded before
/// (it sees only local names, and the old file is gone after its upload). The upload must not
/// overwrite the older recording's object: the new segment gets an object name of its own, and
/// both objects keep their bytes.
#[tokio::test]
async fn a_reused_file_name_never_overwrites_an_uploaded_object() {
    let t = crate::support::sqlite().await;
    let db = &t.db;
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cam = Uuid::new_v4();
    streams::insert(db, &s3_stream(cam, None, None), Origin::Api)
        .await
        .expect("stream");
    let stats = Arc::new(UploadStats::default());
    let s3 = S3Storage::new(&server.config("archive", ""), &test_timeouts()).expect("client");
    let (task, cancel) = start_uploader(db, s3.clone(), "", stats.clone());
    let (old_bytes, new_bytes) = (bytes(7000, 1), bytes(9000, 2));
    let (old, old_path) = ready_segment(db, dir.path(), cam, 9_100, &old_bytes).await;
    let olds = [old];
    wait_for("the first upload", Duration::from_secs(10), || {
        all_remote(db, &olds)
    })
    .await;
    assert!(!old_path.exists(), "uploaded: the local file is gone");
    // The clock went back: a new segment under the same name.
    let (new, new_path) = ready_segment(db, dir.path(), cam, 9_100, &new_bytes).await;
    assert_eq!(new_path, old_path);
    let news = [new];
    wait_for("the second upload", Duration::from_secs(10), || {
        all_remote(db, &news)
    })
    .await;
    stop_uploader(task, cancel).await;
    let (old_row, new_row) = (row(db, old).await, row(db, new).await);
    assert_eq!(old_row.storage_key, format!("{cam}/{cam}_9100.mp4"));
    assert_eq!(
        new_row.storage_key,
        format!("{cam}/{cam}_9100~{new}.mp4"),
        "a distinct name for the second segment"
    );
    use video_server::archive::storage::Storage;
    for (r, want) in [(&old_row, &old_bytes), (&new_row, &new_bytes)] {
        let got = s3.read(&r.storage_key, None).await.expect("object");
        assert!(
            got.as_ref() == want.as_slice(),
            "{} kept its bytes",
            r.storage_key
        );
    }
    t.cleanup().await;
}

#[tokio::test]
async fn a_segment_that_keeps_failing_does_not_block_the_others() {
    let t = crate::support::sqlite().await;
    let db = &t.db;
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    // The oldest segment belongs to a stream whose bucket name S3 rejects.
    let bad = Uuid::new_v4();
    streams::insert(db, &s3_stream(bad, Some("Not_A_Bucket"), None), Origin::Api)
        .await
        .expect("stream");
    let (bad_id, bad_path) = ready_segment(db, dir.path(), bad, 9_000, b"x").await;
    let good = Uuid::new_v4();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            ready_segment(db, dir.path(), good, 9_010 + i, &bytes(5000, i as u64))
                .await
                .0,
        );
    }
    let stats = Arc::new(UploadStats::default());
    let s3 = S3Storage::new(&server.config("archive", ""), &test_timeouts()).expect("client");
    let (task, cancel) = start_uploader(db, s3, "", stats.clone());
    wait_for("the good segments", Duration::from_secs(10), || {
        all_remote(db, &ids)
    })
    .await;
    wait_for("a retry of the bad one", Duration::from_secs(5), || {
        let s = stats.clone();
        async move { s.snapshot().failed >= 2 }
    })
    .await;
    stop_uploader(task, cancel).await;
    let r = row(db, bad_id).await;
    assert_eq!(
        (r.upload_state.as_str(), r.storage.as_str()),
        ("local", "filesystem")
    );
    assert!(bad_path.exists());
    t.cleanup().await;
}

/// Backoff per bucket and per stream: a stream whose bucket S3 refuses and a stream whose local
/// file cannot be read both keep failing, each waiting on its own (seconds), while a third stream
/// on the working bucket uploads every new segment at once. With one backoff for everything (as
/// before), the good stream's segments waited out the others' delays.
#[tokio::test]
async fn a_failing_bucket_or_stream_does_not_stall_the_others() {
    let t = crate::support::sqlite().await;
    let db = &t.db;
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    // A bucket name S3 refuses: every upload to it fails (blamed on the bucket).
    let bad_bucket = Uuid::new_v4();
    streams::insert(
        db,
        &s3_stream(bad_bucket, Some("Not_A_Bucket"), None),
        Origin::Api,
    )
    .await
    .expect("stream");
    let (bad_bucket_id, bad_bucket_path) =
        ready_segment(db, dir.path(), bad_bucket, 9_000, b"x").await;
    // A local file that cannot be read (a directory in its place: EISDIR), on the good bucket:
    // blamed on the stream.
    let bad_file = Uuid::new_v4();
    let (bad_file_id, bad_file_path) = ready_segment(db, dir.path(), bad_file, 9_001, b"y").await;
    std::fs::remove_file(&bad_file_path).expect("rm");
    std::fs::create_dir(&bad_file_path).expect("dir in place of the file");

    let stats = Arc::new(UploadStats::default());
    let s3 = S3Storage::new(&server.config("archive", ""), &test_timeouts()).expect("client");
    let _ = tracing_subscriber::fmt()
        .with_env_filter("video_server=debug")
        .with_test_writer()
        .try_init();
    let cancel = CancellationToken::new();
    // Waits of 3 s and more: long enough that one shared backoff would hold up the good stream.
    let settings = UploaderSettings {
        backoff_min: Duration::from_secs(3),
        backoff_max: Duration::from_secs(10),
        ..test_settings()
    };
    let uploader = Uploader::new(db.clone(), s3.clone(), "", settings, stats.clone());
    let task = tokio::spawn(uploader.run(cancel.clone()));
    wait_for(
        "the bad bucket and the bad stream backing off",
        Duration::from_secs(10),
        || {
            let s = stats.clone();
            async move {
                let c = s.snapshot();
                c.failed >= 2 && c.paused_buckets == 1 && c.paused_streams == 2
            }
        },
    )
    .await;

    // The good stream: each new segment goes up well within the others' waits.
    let good = Uuid::new_v4();
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let (id, path) =
            ready_segment(db, dir.path(), good, 9_010 + i, &bytes(5000, i as u64)).await;
        let started = Instant::now();
        let one = [id];
        wait_for(
            "a good segment uploaded while the others back off",
            Duration::from_millis(2500),
            || all_remote(db, &one),
        )
        .await;
        slowest = slowest.max(started.elapsed());
        assert!(!path.exists());
    }
    // The failing ones were retried (their waits end), never lost, never uploaded.
    wait_for("retries of both", Duration::from_secs(15), || {
        let s = stats.clone();
        async move { s.snapshot().failed >= 4 }
    })
    .await;
    let c = stats.snapshot();
    stop_uploader(task, cancel).await;
    eprintln!("slowest good upload {slowest:?}; counters {c:?}");
    assert_eq!(c.uploaded, 5, "{c:?}");
    for (id, path) in [
        (bad_bucket_id, &bad_bucket_path),
        (bad_file_id, &bad_file_path),
    ] {
        let r = row(db, id).await;
        assert_eq!(
            (
                r.upload_state.as_str(),
                r.storage.as_str(),
                r.state.as_str()
            ),
            ("local", "filesystem", "complete")
        );
        assert!(path.exists());
    }
    assert_eq!(s3.list("").await.expect("list").len(), 5);
    t.cleanup().await;
}

#[tokio::test]
async fn unreachable_and_silent_endpoints_fail_in_bounded_time() {
    // A port nothing listens on, held so that nothing can start listening on it.
    let closed_port = ClosedPort::new();
    let closed = format!("http://127.0.0.1:{}", closed_port.port);
    let silent = SilentServer::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("seg.mp4");
    std::fs::write(&file, bytes(1000, 9)).expect("write");
    let timeouts = S3Timeouts {
        connect: Duration::from_millis(300),
        read: Duration::from_millis(300),
        operation: Duration::from_millis(600),
        max_attempts: 1,
    };
    for endpoint in [closed.as_str(), silent.endpoint.as_str()] {
        let cfg = video_server::config::S3Config {
            endpoint: endpoint.to_owned(),
            region: String::new(),
            access_key: "a".into(),
            secret_key: "b".into(),
            bucket: "xyz".into(),
            prefix: String::new(),
            path_style: None,
            buckets: Vec::new(),
        };
        let s3 = S3Storage::new(&cfg, &timeouts).expect("client");
        let bounded = |what: &str, start: Instant| {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{endpoint} {what}: {:?}",
                start.elapsed()
            )
        };
        let start = Instant::now();
        let err = s3.ensure_bucket().await.expect_err("no server");
        bounded("ensure_bucket", start);
        assert!(!err.to_string().is_empty());
        let start = Instant::now();
        assert!(s3.put_file("k", &file).await.is_err(), "{endpoint}");
        bounded("put_file", start);
        let start = Instant::now();
        assert!(s3.read("k", Some(0..10)).await.is_err(), "{endpoint}");
        bounded("read", start);
        let start = Instant::now();
        assert!(s3.size("k").await.is_err(), "{endpoint}");
        assert!(s3.list("").await.is_err(), "{endpoint}");
        assert!(s3.delete("k").await.is_err(), "{endpoint}");
        bounded("size, list, delete", start);
    }
}

#[tokio::test]
async fn uploader_stuck_on_a_silent_endpoint_stops_promptly_and_keeps_the_file() {
    let t = crate::support::sqlite().await;
    let db = &t.db;
    let silent = SilentServer::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cam = Uuid::new_v4();
    let (id, path) = ready_segment(db, dir.path(), cam, 5_000, &bytes(10_000, 3)).await;
    let cfg = video_server::config::S3Config {
        endpoint: silent.endpoint.clone(),
        region: String::new(),
        access_key: "a".into(),
        secret_key: "b".into(),
        bucket: "xyz".into(),
        prefix: String::new(),
        path_style: None,
        buckets: Vec::new(),
    };
    // Long call timeouts, so the upload is still hanging when we cancel.
    let timeouts = S3Timeouts {
        operation: Duration::from_secs(60),
        read: Duration::from_secs(60),
        ..test_timeouts()
    };
    let s3 = S3Storage::new(&cfg, &timeouts).expect("client");
    let stats = Arc::new(UploadStats::default());
    let (task, cancel) = start_uploader(db, s3, "", stats.clone());
    wait_for("the upload to start", Duration::from_secs(5), || {
        let s = stats.clone();
        async move { s.snapshot().in_flight == 1 }
    })
    .await;
    assert_eq!(row(db, id).await.upload_state, "uploading");
    let start = Instant::now();
    stop_uploader(task, cancel).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "grace is 500 ms: {:?}",
        start.elapsed()
    );
    let r = row(db, id).await;
    assert_eq!(r.upload_state, "local", "abandoned upload released");
    assert!(path.exists());
    t.cleanup().await;
}

both_engines!(
    async fn missing_local_file_is_marked_missing_and_others_still_upload(t: &TestDb) {
        let db = &t.db;
        let server = S3Server::start().await;
        let dir = tempfile::tempdir().expect("tmp");
        let cam = Uuid::new_v4();
        let (gone, gone_path) = ready_segment(db, dir.path(), cam, 7_000, b"soon gone").await;
        std::fs::remove_file(&gone_path).expect("rm");
        let (ok, _) = ready_segment(db, dir.path(), cam, 7_030, &bytes(2000, 4)).await;
        // A crash left this one `uploading`: start-up recovery must put it back and upload it.
        let (stuck, _) = ready_segment(db, dir.path(), cam, 7_060, &bytes(2000, 5)).await;
        assert_eq!(
            segments::claim_uploads(db, 0, 10)
                .await
                .expect("claim")
                .len(),
            3
        );
        assert!(segments::release_upload(db, gone).await.expect("release"));
        assert!(segments::release_upload(db, ok).await.expect("release"));

        let stats = Arc::new(UploadStats::default());
        let s3 = S3Storage::new(&server.config("bkt", ""), &test_timeouts()).expect("client");
        let (task, cancel) = start_uploader(db, s3.clone(), "", stats.clone());
        let both = [ok, stuck];
        wait_for("uploads", Duration::from_secs(10), || all_remote(db, &both)).await;
        wait_for("missing marked", Duration::from_secs(5), || async {
            row(db, gone).await.state == "missing"
        })
        .await;
        stop_uploader(task, cancel).await;
        let r = row(db, gone).await;
        assert_eq!(
            (r.state.as_str(), r.upload_state.as_str()),
            ("missing", "none")
        );
        assert_eq!(stats.snapshot().missing, 1);
        assert_eq!(stats.snapshot().uploaded, 2);
        assert_eq!(s3.list("").await.expect("list").len(), 2);
        assert_eq!(
            row(db, ok).await.storage_key,
            format!("{cam}/{cam}_7030.mp4"),
            "empty prefix: no leading slash"
        );
    }
);

both_engines!(
    async fn uploads_endpoint_reports_counts_and_counters(t: &TestDb) {
        let db = &t.db;
        let cam = Uuid::new_v4();
        crate::db_uploads::segment(db, cam, 100, "local", true).await;
        crate::db_uploads::segment(db, cam, 102, "local", true).await;
        crate::db_uploads::segment(db, cam, 104, "none", true).await;
        crate::db_uploads::segment(db, cam, 106, "local", true).await;
        segments::claim_uploads(db, 0, 1).await.expect("claim");
        let state = crate::support::state(db, crate::support::config("")).await;
        let r = crate::support::get(&state, "/api/v1/archive/uploads").await;
        assert_eq!(r.status, axum::http::StatusCode::OK);
        let v = r.json();
        assert_eq!(v["segments"]["local"], 2, "{v}");
        assert_eq!(v["segments"]["uploading"], 1);
        assert_eq!(v["segments"]["none"], 1);
        assert_eq!(v["segments"]["remote"], 0);
        assert_eq!(v["uploader"]["running"], false);
        assert_eq!(v["uploader"]["uploaded"], 0);
    }
);
