//! Repository functions of the S3 upload outbox (`segments.upload_state`), on both engines.

use uuid::Uuid;
use video_server::db::segments::{self, NewSegment, SegmentState, UploadStateCounts};
use video_server::db::{Db, pages, plans, retention};
use video_server::stream::StorageKind;

use crate::both_engines;

/// Inserts a segment the way the recorder does (recording, then closed unless `close` is false)
/// with the given upload state, and returns its id.
pub async fn segment(db: &Db, stream: Uuid, start_s: i64, upload_state: &str, close: bool) -> i64 {
    let start_us = start_s * 1_000_000;
    let new = NewSegment {
        stream_id: stream,
        start_us,
        end_us: start_us,
        media_duration_us: 0,
        storage: StorageKind::Filesystem,
        storage_key: format!("/archive/{stream}/{stream}_{start_s}.mp4"),
        bytes: 0,
        state: SegmentState::Recording,
    };
    let id = segments::insert_recording(db, &new, None, upload_state)
        .await
        .expect("insert");
    if close {
        segments::finalize(db, id, start_us + 2_000_000, 2_000_000, 1000)
            .await
            .expect("finalize");
    }
    id
}

fn ids(rows: &[segments::SegmentRow]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

both_engines!(
    async fn claim_complete_release_missing(t: &TestDb) {
        let db = &t.db;
        let s = Uuid::new_v4();
        let a = segment(db, s, 1000, "local", true).await;
        let b = segment(db, s, 1002, "local", true).await;
        let _fs_only = segment(db, s, 1004, "none", true).await;
        let c = segment(db, s, 1006, "local", true).await;
        let recording = segment(db, s, 1008, "local", false).await;
        assert_eq!(segments::count_ready_uploads(db).await.expect("count"), 3);

        // Oldest first, only closed local rows, each claimed once.
        let first = segments::claim_uploads(db, 0, 2).await.expect("claim");
        assert_eq!(ids(&first), vec![a, b], "on {}", t.engine_name());
        assert!(first.iter().all(|r| r.upload_state == "uploading"));
        let rest = segments::claim_uploads(db, 0, 10).await.expect("claim");
        assert_eq!(ids(&rest), vec![c]);
        assert!(
            segments::claim_uploads(db, 0, 10)
                .await
                .expect("claim")
                .is_empty()
        );
        assert_eq!(segments::count_ready_uploads(db).await.expect("count"), 0);

        // A failure puts the row back; it is claimed again first.
        assert!(segments::release_upload(db, a).await.expect("release"));
        assert!(
            !segments::release_upload(db, a)
                .await
                .expect("release twice")
        );
        assert!(
            segments::claim_uploads(db, a, 1)
                .await
                .expect("claim after a")
                .is_empty(),
            "the cursor skips rows up to and including it"
        );
        assert_eq!(
            ids(&segments::claim_uploads(db, 0, 1).await.expect("claim")),
            vec![a]
        );

        // Success points the row at the object, once.
        assert!(
            segments::complete_upload(db, b, "cams-a", "p/k.mp4")
                .await
                .expect("complete")
        );
        assert!(
            !segments::complete_upload(db, b, "cams-a", "other")
                .await
                .expect("again")
        );
        let row = segments::get(db, b).await.expect("get").expect("row");
        assert_eq!(row.storage, "s3");
        assert_eq!(row.storage_key, "p/k.mp4");
        assert_eq!(row.bucket.as_deref(), Some("cams-a"));
        assert_eq!(row.upload_state, "remote");
        assert_eq!(row.state, "complete");
        // A row that is not being uploaded cannot be completed.
        assert!(
            !segments::complete_upload(db, recording, "cams-a", "x")
                .await
                .expect("complete")
        );

        // Crash recovery: everything in flight goes back to local.
        assert_eq!(segments::reset_uploading(db).await.expect("reset"), 2);
        assert_eq!(segments::reset_uploading(db).await.expect("reset"), 0);
        assert_eq!(segments::count_ready_uploads(db).await.expect("count"), 2);

        // A vanished file leaves the outbox.
        let row_c = segments::get(db, c).await.expect("get").expect("row");
        assert_eq!(
            segments::mark_missing(db, &[row_c], segments::MissingBy::Uploader)
                .await
                .expect("missing"),
            vec![c]
        );
        let row = segments::get(db, c).await.expect("get").expect("row");
        assert_eq!(row.state, "missing");
        assert_eq!(row.upload_state, "none");
        assert_eq!(
            ids(&segments::claim_uploads(db, 0, 10).await.expect("claim")),
            vec![a]
        );
        let row_b = segments::get(db, b).await.expect("get").expect("row");
        assert!(
            segments::mark_missing(db, &[row_b], segments::MissingBy::Uploader)
                .await
                .expect("remote row")
                .is_empty()
        );

        assert_eq!(
            segments::upload_state_counts(db).await.expect("counts"),
            UploadStateCounts {
                none: 2,
                local: 1,
                uploading: 1,
                remote: 1
            }
        );
        // The counts are kept by triggers (no table scan): deletes count too.
        segments::delete(db, c).await.expect("delete");
        segments::delete(db, b).await.expect("delete");
        assert_eq!(
            segments::upload_state_counts(db).await.expect("counts"),
            UploadStateCounts {
                none: 1,
                local: 1,
                uploading: 1,
                remote: 0
            }
        );
    }
);

both_engines!(
    async fn claimed_rows_are_not_claimed_by_a_concurrent_caller(t: &TestDb) {
        let db = &t.db;
        let s = Uuid::new_v4();
        for i in 0..20 {
            segment(db, s, 2000 + i * 2, "local", true).await;
        }
        let (x, y) = tokio::join!(
            segments::claim_uploads(db, 0, 12),
            segments::claim_uploads(db, 0, 12)
        );
        let mut all = ids(&x.expect("claim x"));
        all.extend(ids(&y.expect("claim y")));
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(
            all.len(),
            n,
            "a row was claimed twice on {}",
            t.engine_name()
        );
        // Every row is accounted for exactly once: claimed by one caller, or still waiting.
        // (The loser of the race may get fewer than it asked for, never a row twice.)
        assert!(n >= 12, "the first claim to commit fills its limit: {n}");
        assert_eq!(
            segments::count_ready_uploads(db).await.expect("count") + n as i64,
            20,
            "on {}",
            t.engine_name()
        );
        assert_eq!(
            segments::upload_state_counts(db)
                .await
                .expect("counts")
                .uploading,
            n as i64
        );
    }
);

both_engines!(
    /// The outbox queries use the small partial index instead of scanning every segment ever
    /// recorded, and segment pages read only the covering index: the plans of the production
    /// statements themselves (`db::plans`), on both engines.
    async fn hot_queries_use_their_indexes(t: &TestDb) {
        let db = &t.db;
        // A realistic table: 20 cameras' worth of segments, almost all uploaded or local-only,
        // a few waiting for upload.
        let fill = match db {
            Db::Sqlite(_) => {
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 19999) \
                INSERT INTO segments (stream_id, start_us, end_us, media_duration_us, storage, \
                  storage_key, bytes, state, upload_state, created_at_us) \
                SELECT printf('00000000-0000-4000-8000-%012d', i % 20), i * 1000000, i * 1000000 + 999999, \
                  999999, 'filesystem', 'k' || i, 1000, 'complete', \
                  CASE WHEN i % 500 = 0 THEN 'local' WHEN i % 2 = 0 THEN 'remote' ELSE 'none' END, 0 \
                FROM n"
            }
            Db::Postgres(_) => {
                "INSERT INTO segments (stream_id, start_us, end_us, media_duration_us, storage, \
                  storage_key, bytes, state, upload_state, created_at_us) \
                SELECT ('00000000-0000-4000-8000-' || lpad((i % 20)::text, 12, '0'))::uuid, \
                  i * 1000000::bigint, i * 1000000::bigint + 999999, \
                  999999, 'filesystem', 'k' || i, 1000, 'complete', \
                  CASE WHEN i % 500 = 0 THEN 'local' WHEN i % 2 = 0 THEN 'remote' ELSE 'none' END, 0 \
                FROM generate_series(0, 19999) AS i"
            }
        };
        let analyze = match db {
            Db::Sqlite(_) => "ANALYZE",
            // Also the visibility map, which index-only scans need.
            Db::Postgres(_) => "VACUUM ANALYZE segments",
        };
        for sql in [fill, analyze] {
            video_server::with_pool!(db, p => sqlx::query(sql).execute(p).await.map(|_| ()).expect(sql));
        }
        let claim = plans::claim_uploads(db).await.expect("plan");
        assert!(
            claim.iter().any(|l| l.contains("segments_upload_pending")),
            "{claim:?}"
        );
        let ready = plans::ready_uploads(db).await.expect("plan");
        assert!(
            ready.iter().any(|l| l.contains("segments_upload_pending")),
            "{ready:?}"
        );
        let count = plans::count_ready_uploads(db).await.expect("plan");
        assert!(
            count.iter().any(|l| l.contains("segments_upload_pending")),
            "{count:?}"
        );
        let queues = plans::upload_queues(db).await.expect("plan");
        assert!(
            queues.iter().any(|l| l.contains("segments_upload_pending")),
            "{queues:?}"
        );
        // Camera 1's first hour: 180 of its 1000 segments.
        let camera: Uuid = "00000000-0000-4000-8000-000000000001"
            .parse()
            .expect("uuid");
        let page = plans::segment_page(db, camera, 0, 3_600_000_000)
            .await
            .expect("plan");
        let covered = match db {
            Db::Sqlite(_) => "COVERING INDEX segments_stream_page",
            // Index-only when VACUUM could mark the pages all-visible, which other sessions'
            // open transactions on a shared test server can prevent; served by the index either way.
            Db::Postgres(_) => "Scan using segments_stream_page",
        };
        assert!(page.iter().any(|l| l.contains(covered)), "{page:?}");
        // The control: without its index the same statement is served otherwise, so the checks
        // above can fail.
        video_server::with_pool!(db, p => sqlx::query("DROP INDEX segments_stream_page")
            .execute(p)
            .await
            .map(|_| ())
            .expect("drop index"));
        let page = plans::segment_page(db, camera, 0, 3_600_000_000)
            .await
            .expect("plan");
        assert!(
            !page.iter().any(|l| l.contains("segments_stream_page")),
            "{page:?}"
        );
    }
);

both_engines!(
    async fn bucket_round_trips_through_upload_pages_and_retention(t: &TestDb) {
        let db = &t.db;
        let s = Uuid::new_v4();
        let own = segment(db, s, 2000, "local", true).await;
        let default = segment(db, s, 2002, "local", true).await;
        let local = segment(db, s, 2004, "none", true).await;
        assert_eq!(
            ids(&segments::claim_uploads(db, 0, 10).await.expect("claim")),
            vec![own, default]
        );
        assert!(
            segments::complete_upload(db, own, "cams-own", "v/a.mp4")
                .await
                .expect("own")
        );
        assert!(
            segments::complete_upload(db, default, "archive", "v/b.mp4")
                .await
                .expect("default")
        );

        // Every reader of segment rows sees the bucket: single rows, pages, retention candidates.
        let bucket_of = |rows: &[segments::SegmentRow], id| {
            rows.iter()
                .find(|r| r.id == id)
                .expect("listed")
                .bucket
                .clone()
        };
        let rows = segments::page(db, s, 0, i64::MAX / 2, None, 10)
            .await
            .expect("page");
        assert_eq!(
            bucket_of(&rows, own).as_deref(),
            Some("cams-own"),
            "on {}",
            t.engine_name()
        );
        assert_eq!(bucket_of(&rows, default).as_deref(), Some("archive"));
        assert_eq!(bucket_of(&rows, local), None);
        let got = segments::get(db, own).await.expect("get").expect("row");
        assert_eq!(
            (got.storage.as_str(), got.bucket.as_deref()),
            ("s3", Some("cams-own"))
        );

        // The API's page (one JSON row per page on SQLite, rows on Postgres).
        let items = pages::segments(db, s, 0, i64::MAX / 2, None, 10)
            .await
            .expect("items");
        let listed: Vec<(i64, &str, Option<&str>)> = items
            .iter()
            .map(|i| (i.id, i.storage.as_str(), i.bucket.as_deref()))
            .collect();
        assert_eq!(
            listed,
            vec![
                (own, "s3", Some("cams-own")),
                (default, "s3", Some("archive")),
                (local, "filesystem", None),
            ],
            "on {}",
            t.engine_name()
        );
        // The keyset continuation keeps it too.
        let second = pages::segments(db, s, 0, i64::MAX / 2, Some((items[0].start_us, own)), 1)
            .await
            .expect("second page");
        assert_eq!(second[0].bucket.as_deref(), Some("archive"));

        let filter = retention::CandidateFilter {
            start_before_us: i64::MAX,
            end_before_us: i64::MAX,
            include_missing: false,
            storage: None,
        };
        let candidates =
            retention::oldest_candidates(db, s, filter, 10, video_server::db::now_us())
                .await
                .expect("candidates");
        let buckets: Vec<Option<&str>> = candidates.iter().map(|c| c.bucket.as_deref()).collect();
        assert_eq!(buckets, vec![Some("cams-own"), Some("archive"), None]);
        let marked = retention::mark_deleting(db, &candidates[..1], video_server::db::now_us())
            .await
            .expect("mark");
        assert_eq!(marked[0].bucket.as_deref(), Some("cams-own"));
        let pending = retention::pending(db).await.expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].bucket.as_deref(), Some("cams-own"));
    }
);

both_engines!(
    /// Many recorders index their first segments at the same moment (a server starting 200
    /// cameras): every write transaction succeeds. On SQLite a deferred `BEGIN` whose transaction
    /// reads before it writes could not wait for the write lock once another connection had
    /// written meanwhile (`database is locked` at once, whatever the busy timeout); write
    /// transactions begin `IMMEDIATE` there, and wait their turn.
    async fn concurrent_recorders_all_index_their_segments(t: &TestDb) {
        let db = &t.db;
        let writers: Vec<_> = (0..64)
            .map(|i: i64| {
                let db = db.clone();
                tokio::spawn(async move {
                    let stream = Uuid::new_v4();
                    let start_us = 1_700_000_000_000_000 + i;
                    let record = segments::RecordedSegment {
                        segment: NewSegment {
                            stream_id: stream,
                            start_us,
                            end_us: start_us,
                            media_duration_us: 0,
                            storage: StorageKind::Filesystem,
                            storage_key: format!("/archive/{stream}/{stream}_{i}.mp4"),
                            bytes: 0,
                            state: SegmentState::Recording,
                        },
                        codecs: "avc1.42c01e".into(),
                        init: bytes::Bytes::from(vec![i as u8; 64]),
                        upload_state: "none",
                        clock_correction_us: None,
                        fence: None,
                    };
                    let id = segments::insert_recorded(&db, &record).await?;
                    segments::finalize(&db, id, start_us + 2_000_000, 2_000_000, 1000).await?;
                    Ok::<i64, video_server::db::DbError>(id)
                })
            })
            .collect();
        let mut failures = Vec::new();
        for w in writers {
            if let Err(e) = w.await.expect("writer task") {
                failures.push(e.to_string());
            }
        }
        assert!(failures.is_empty(), "on {}: {failures:?}", t.engine_name());
        let n: i64 = match db {
            Db::Sqlite(p) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM segments WHERE state = 'complete'")
                    .fetch_one(p)
                    .await
                    .expect("count")
            }
            Db::Postgres(p) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM segments WHERE state = 'complete'")
                    .fetch_one(p)
                    .await
                    .expect("count")
            }
        };
        assert_eq!(n, 64);
    }
);
