//! The index and the archive's upkeep: connection pools, the S3 upload outbox (per stream) and
//! the uploader, retention, start-up repair and reconciliation, storage roots, playback sessions.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::registry::Unit;

use super::Sources;
use super::{Families, Labels, int, labels, one};
use crate::db::Db;
use crate::db::segments::{self, UploadQueue, UploadStateCounts};

/// How long a scrape waits for the index. A scrape must answer while the database is down (that
/// is when it matters most): past this, the index families are left out and
/// `video_server_index_up` is 0.
const INDEX_TIMEOUT: Duration = Duration::from_secs(2);

/// What a scrape asks the index (before encoding, which cannot wait).
#[derive(Debug, Default)]
pub struct IndexFacts {
    /// Both queries answered in time.
    up: bool,
    counts: Option<UploadStateCounts>,
    queues: Vec<UploadQueue>,
}

impl IndexFacts {
    /// Segments per upload state (one maintained row) and the outbox per stream (a small partial
    /// index): both cheap whatever the archive's size.
    pub async fn gather(db: &Db) -> IndexFacts {
        let ask = async {
            let counts = segments::upload_state_counts(db).await?;
            let queues = segments::upload_queues(db).await?;
            Ok::<_, crate::db::DbError>((counts, queues))
        };
        match tokio::time::timeout(INDEX_TIMEOUT, ask).await {
            Ok(Ok((counts, queues))) => IndexFacts {
                up: true,
                counts: Some(counts),
                queues,
            },
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: the index does not answer");
                IndexFacts::default()
            }
            Err(_) => {
                tracing::warn!("metrics: the index did not answer in time");
                IndexFacts::default()
            }
        }
    }
}

pub fn encode(
    state: &Sources,
    index: &IndexFacts,
    now_us: i64,
    out: &mut Families,
) -> std::fmt::Result {
    // The index.
    out.gauge(
        "video_server_index_up",
        "1 when the index answered this scrape's queries in time, else 0",
        None,
        one(i64::from(index.up)),
    )?;
    let mut pools = vec![("api", state.db.clone())];
    pools.extend(state.metrics.pools());
    let usage: Vec<(&str, (u32, u32))> =
        pools.iter().map(|(n, db)| (*n, db.pool_usage())).collect();
    out.gauge(
        "video_server_db_pool_connections",
        "Open connections, by pool (api: requests; recorder: index writes of recorders; \
         upkeep: retention and uploads)",
        None,
        usage
            .iter()
            .map(|(n, (open, _))| (labels([("pool", n)]), i64::from(*open))),
    )?;
    out.gauge(
        "video_server_db_pool_in_use_connections",
        "Connections executing a query or held by a transaction, by pool",
        None,
        usage
            .iter()
            .map(|(n, (_, busy))| (labels([("pool", n)]), i64::from(*busy))),
    )?;

    // The upload outbox.
    out.gauge(
        "video_server_archive_segments",
        "Segments in the index, by upload state (none: filesystem only; local: waiting for or \
         being recorded before upload; uploading; remote: in S3)",
        None,
        index.counts.iter().flat_map(|c| {
            [
                ("none", c.none),
                ("local", c.local),
                ("uploading", c.uploading),
                ("remote", c.remote),
            ]
            .map(|(s, n)| (labels([("upload_state", s)]), n))
        }),
    )?;
    let queue = |f: &dyn Fn(&UploadQueue) -> Option<f64>| -> Vec<(Labels, f64)> {
        index
            .queues
            .iter()
            .filter_map(|q| Some((labels([("stream", &q.stream_id.to_string())]), f(q)?)))
            .collect()
    };
    out.gauge_f64(
        "video_server_upload_queue_segments",
        "Closed segments of the stream waiting for upload to S3 (or being uploaded)",
        None,
        queue(&|q| Some(q.segments as f64)),
    )?;
    out.gauge_f64(
        "video_server_upload_queue_oldest_age",
        "Time since the oldest segment waiting for upload was closed",
        Some(Unit::Seconds),
        queue(&|q| Some((now_us - q.oldest_end_us).max(0) as f64 / 1e6)),
    )?;
    let u = state.uploads.snapshot();
    out.gauge(
        "video_server_uploader_running",
        "1 when this process runs the S3 uploader",
        None,
        one(i64::from(u.running)),
    )?;
    out.counter(
        "video_server_uploader_uploaded_segments",
        "Segments uploaded to S3",
        None,
        one(u.uploaded),
    )?;
    out.counter(
        "video_server_uploader_uploaded",
        "Bytes uploaded to S3",
        Some(Unit::Bytes),
        one(u.uploaded_bytes),
    )?;
    out.counter(
        "video_server_uploader_failures",
        "Upload attempts that failed (each is retried with backoff)",
        None,
        one(u.failed),
    )?;
    out.counter(
        "video_server_uploader_missing",
        "Segments whose local file was gone when their upload came",
        None,
        one(u.missing),
    )?;
    out.gauge(
        "video_server_uploader_in_flight",
        "Uploads running now",
        None,
        one(int(u.in_flight)),
    )?;
    out.gauge(
        "video_server_uploader_consecutive_failures",
        "Upload failures since the last success (above 0: backing off)",
        None,
        one(int(u.consecutive_failures)),
    )?;

    // Retention.
    let r = state.archive.retention.snapshot();
    out.counter(
        "video_server_retention_passes",
        "Retention passes, by trigger (emergency: a recorder found its disk full)",
        None,
        [
            (labels([("trigger", "any")]), r.passes),
            (labels([("trigger", "emergency")]), r.emergency_passes),
        ],
    )?;
    out.counter(
        "video_server_retention_deleted_segments",
        "Segments retention deleted, by reason",
        None,
        [
            ("purge", r.deleted_by_purge),
            ("age", r.deleted_by_age),
            ("bytes", r.deleted_by_bytes),
            ("free_space", r.deleted_by_free_space),
            ("interrupted", r.deleted_pending),
        ]
        .map(|(reason, n)| (labels([("reason", reason)]), n)),
    )?;
    out.counter(
        "video_server_retention_freed",
        "Bytes freed by retention",
        Some(Unit::Bytes),
        one(r.bytes_freed),
    )?;
    out.counter(
        "video_server_retention_failed_deletes",
        "Storage deletes that failed (each is retried)",
        None,
        one(r.failed_deletes),
    )?;
    out.gauge(
        "video_server_retention_below_floor",
        "1 when the last pass left a filesystem below its free-space floor",
        None,
        one(i64::from(r.below_floor)),
    )?;

    // Repair and reconciliation.
    let rc = state.reconcile.snapshot();
    out.counter(
        "video_server_reconcile_segments",
        "Segments start-up repair and reconciliation acted on, by outcome",
        None,
        [
            ("repaired", rc.repaired),
            ("removed_empty", rc.removed_empty),
            ("missing", rc.missing),
            ("restored", rc.restored),
            ("orphan_indexed", rc.orphans_indexed),
            ("unplayable", rc.unplayable),
            ("io_error", rc.io_errors),
            ("deferred", rc.deferred),
        ]
        .map(|(outcome, n)| (labels([("outcome", outcome)]), n)),
    )?;
    out.counter(
        "video_server_reconcile_passes",
        "Reconciliation passes over a storage root that finished",
        None,
        one(state.reconcile.passes.load(Ordering::Relaxed)),
    )?;
    for (name, help, c) in [
        (
            "video_server_reconcile_directories_skipped",
            "Archive directories reconciliation did not look into: unchanged since the root's last clean pass",
            &state.reconcile.dirs_skipped,
        ),
        (
            "video_server_reconcile_files_examined",
            "Segment files reconciliation looked up in the index",
            &state.reconcile.files_examined,
        ),
        (
            "video_server_reconcile_rows_examined",
            "Complete segment rows whose file reconciliation checked for",
            &state.reconcile.rows_examined,
        ),
    ] {
        out.counter(name, help, None, one(c.load(Ordering::Relaxed)))?;
    }

    // Storage roots (their last check; no I/O here).
    let roots = state.roots.all();
    out.gauge(
        "video_server_storage_root_available",
        "1 when the storage root's marker was present with the recorded id at its last check",
        None,
        roots.iter().map(|r| {
            (
                labels([("root", &r.name())]),
                i64::from(r.state().is_available()),
            )
        }),
    )?;
    out.counter(
        "video_server_storage_root_unavailable_checks",
        "Marker checks that found the storage root unavailable",
        None,
        roots.iter().map(|r| {
            (
                labels([("root", &r.name())]),
                r.counters.unavailable_checks.load(Ordering::Relaxed),
            )
        }),
    )?;

    // Archive playback.
    let max = state.config.archive_sessions_total();
    out.gauge(
        "video_server_archive_playback_sessions",
        "Archive playback sessions running now",
        None,
        one(int(state.limits.archive_sessions.in_use() as u64)),
    )?;
    out.gauge(
        "video_server_archive_playback_sessions_limit",
        "Most archive playback sessions at once ([limits] archive_sessions_total)",
        None,
        one(int(max as u64)),
    )?;
    Ok(())
}
