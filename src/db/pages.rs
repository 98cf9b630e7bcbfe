//! Pages of archive rows for the API, fetched as **one row per page**.
//!
//! With SQLite, a 1000-segment page read row by row costs more in the driver than in the database:
//! every row is handed from the connection's worker thread to the caller on its own (about 5 ms
//! for 1000 rows on the benchmark machine, docs/benchmarks.md). So SQLite aggregates the page into
//! one JSON array (`json_group_array ... ORDER BY`), parsed here in one go, and the page costs what
//! its index range scan costs. Postgres sends rows efficiently and builds JSON slowly, so it sends
//! rows. Same rows and order as [`super::segments::page`]; the covering index
//! `segments_stream_page` (migrations 0003, 0004) serves the scan on both engines.

use serde::Deserialize;
use uuid::Uuid;

use super::segments::{page_filter, scan_start};
use super::{Db, DbError, DbUuid, Result};

/// One segment as the API lists it (no storage key: that is a server-side detail).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "SegmentTuple")]
pub struct SegmentItem {
    pub id: i64,
    pub start_us: i64,
    pub end_us: i64,
    pub media_duration_us: i64,
    pub bytes: i64,
    pub state: String,
    pub storage: String,
    pub upload_state: String,
    /// The bucket of an `s3` row (`None`: filesystem, or the `[s3]` bucket; see `SegmentRow`).
    pub bucket: Option<String>,
}

/// The JSON array each row is aggregated into, in column order.
type SegmentTuple = (
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
);

impl From<SegmentTuple> for SegmentItem {
    fn from(t: SegmentTuple) -> Self {
        SegmentItem {
            id: t.0,
            start_us: t.1,
            end_us: t.2,
            media_duration_us: t.3,
            bytes: t.4,
            state: t.5,
            storage: t.6,
            upload_state: t.7,
            bucket: t.8,
        }
    }
}

/// The page query: playable segments of `$1` overlapping `[$4, $3)` after the keyset position
/// `($5, $6)`, at most `$7`, ordered by `(start_us, id)`.
///
/// `$2` is the scan's lower bound: the window start less the longest segment (segments are capped
/// in length), or the cursor's start if later. Because it is never below `$5`, the keyset test
/// `(start_us, id) > ($5, $6)` reduces to `start_us > $5 OR id > $6`, which no planner mistakes
/// for a range bound. (Written as `start_us > $5 OR (start_us = $5 AND id > $6)`, SQLite derives
/// `start_us >= $5` from it and may seek from there instead of from `$2`: from the stream's first
/// segment on a first page.)
pub(crate) const PAGE_ROWS: &str = concat!(
    "SELECT id, start_us, end_us, media_duration_us, bytes, state, storage, upload_state, bucket \
     FROM segments ",
    page_filter!()
);

/// The SQLite page statement: [`PAGE_ROWS`] aggregated into one JSON array.
pub(crate) fn sqlite_page_sql() -> String {
    format!(
        "SELECT json_group_array(json_array(id, start_us, end_us, media_duration_us, \
         bytes, state, storage, upload_state, bucket) ORDER BY start_us, id) \
         FROM ({PAGE_ROWS}) AS page"
    )
}

/// A page of a stream's playable segments overlapping `[from_us, to_us)`, ordered by start (then
/// id), after the keyset position `after = (start_us, id)` of the previous page's last row.
pub async fn segments(
    db: &Db,
    stream_id: Uuid,
    from_us: i64,
    to_us: i64,
    after: Option<(i64, i64)>,
    limit: u32,
) -> Result<Vec<SegmentItem>> {
    let lower = scan_start(from_us);
    let (after_start, after_id) = after.unwrap_or((i64::MIN, i64::MIN));
    match db {
        Db::Sqlite(p) => {
            let json: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sqlite_page_sql()))
                .bind(DbUuid(stream_id))
                .bind(lower.max(after_start))
                .bind(to_us)
                .bind(from_us)
                .bind(after_start)
                .bind(after_id)
                .bind(i64::from(limit))
                .fetch_one(p)
                .await?;
            serde_json::from_str(&json)
                .map_err(|e| DbError::Corrupt(format!("segment page of stream {stream_id}: {e}")))
        }
        Db::Postgres(p) => {
            // Postgres streams rows over one connection efficiently, and building JSON there
            // costs more (json_agg: ~1.6 ms per 1000 rows) than decoding the rows here.
            let rows: Vec<SegmentTuple> = sqlx::query_as(PAGE_ROWS)
                .bind(DbUuid(stream_id))
                .bind(lower.max(after_start))
                .bind(to_us)
                .bind(from_us)
                .bind(after_start)
                .bind(after_id)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?;
            Ok(rows.into_iter().map(SegmentItem::from).collect())
        }
    }
}
