//! Repository functions of the S3 upload outbox (`segments.upload_state`), on both engines.

use uuid::Uuid;
use video_server::db::segments::{self, NewSegment, SegmentState, UploadStateCounts};
use video_server::db::{Db, pages, retention};
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
        assert!(n <= 20);
    }
);

/// The outbox queries must use the small partial index, not scan every segment ever recorded.
#[tokio::test]
async fn sqlite_outbox_queries_use_the_partial_index() {
    let t = crate::support::sqlite().await;
    let Db::Sqlite(pool) = &t.db else {
        unreachable!("sqlite")
    };
    // The same predicate as `segments::claim_uploads` / `count_ready_uploads`.
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT id FROM segments \
         WHERE upload_state IN ('local', 'uploading') AND upload_state = 'local' \
           AND state = 'complete' ORDER BY id LIMIT 1",
    )
    .fetch_all(pool)
    .await
    .expect("plan");
    let text: Vec<&str> = plan.iter().map(|r| r.3.as_str()).collect();
    assert!(
        text.iter().any(|d| d.contains("segments_upload_pending")),
        "{text:?}"
    );
    t.cleanup().await;
}

/// Segment pages list the bucket and stay index-only: migration 0004 rebuilt the covering index
/// with the column (the same query text as `db::pages`).
#[tokio::test]
async fn sqlite_segment_pages_stay_covered_with_the_bucket() {
    let t = crate::support::sqlite().await;
    let Db::Sqlite(pool) = &t.db else {
        unreachable!("sqlite")
    };
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT id, start_us, end_us, media_duration_us, bytes, state, \
         storage, upload_state, bucket FROM segments WHERE stream_id = $1 AND start_us >= $2 \
         AND start_us < $3 AND end_us > $4 AND state IN ('recording', 'complete') \
         AND (start_us > $5 OR id > $6) ORDER BY start_us, id LIMIT $7",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(0i64)
    .bind(i64::MAX)
    .bind(0i64)
    .bind(i64::MIN)
    .bind(i64::MIN)
    .bind(100i64)
    .fetch_all(pool)
    .await
    .expect("plan");
    let text: Vec<&str> = plan.iter().map(|r| r.3.as_str()).collect();
    assert!(
        text.iter()
            .any(|d| d.contains("COVERING INDEX segments_stream_page")),
        "{text:?}"
    );
    t.cleanup().await;
}

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
            end_before_us: i64::MAX,
            include_missing: false,
            storage: None,
        };
        let candidates = retention::oldest_candidates(db, s, filter, 10)
            .await
            .expect("candidates");
        let buckets: Vec<Option<&str>> = candidates.iter().map(|c| c.bucket.as_deref()).collect();
        assert_eq!(buckets, vec![Some("cams-own"), Some("archive"), None]);
        let marked = retention::mark_deleting(db, &candidates[..1])
            .await
            .expect("mark");
        assert_eq!(marked[0].bucket.as_deref(), Some("cams-own"));
        let pending = retention::pending(db).await.expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].bucket.as_deref(), Some("cams-own"));
    }
);
