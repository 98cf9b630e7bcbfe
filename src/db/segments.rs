//! The `segments` table: one row per archive segment, and time-range queries over it.

use uuid::Uuid;

use super::{Db, DbUuid, Result, now_us, with_pool};
use crate::stream::StorageKind;

/// Lifecycle of a segment row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentState {
    /// The file is being written; `end_us` is advanced as fragments land.
    Recording,
    /// Closed and playable.
    Complete,
    /// The row outlived its file (found at start-up reconciliation).
    Missing,
    /// Retention is deleting it: the file may or may not still exist.
    Deleting,
}

impl SegmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentState::Recording => "recording",
            SegmentState::Complete => "complete",
            SegmentState::Missing => "missing",
            SegmentState::Deleting => "deleting",
        }
    }
}

/// What the recorder knows when it opens (or the importer finds) a segment.
#[derive(Debug, Clone)]
pub struct NewSegment {
    pub stream_id: Uuid,
    pub start_us: i64,
    pub end_us: i64,
    pub media_duration_us: i64,
    pub storage: StorageKind,
    pub storage_key: String,
    pub bytes: i64,
    pub state: SegmentState,
}

/// Inserts a segment row and returns its id.
pub async fn insert(db: &Db, s: &NewSegment) -> Result<i64> {
    const SQL: &str = "INSERT INTO segments (stream_id, start_us, end_us, media_duration_us, \
        storage, storage_key, bytes, state, created_at_us) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id";
    let now = now_us();
    let id: i64 = with_pool!(db, p => sqlx::query_scalar(SQL)
        .bind(DbUuid(s.stream_id))
        .bind(s.start_us)
        .bind(s.end_us)
        .bind(s.media_duration_us)
        .bind(s.storage.as_str())
        .bind(s.storage_key.as_str())
        .bind(s.bytes)
        .bind(s.state.as_str())
        .bind(now)
        .fetch_one(p)
        .await?);
    Ok(id)
}

/// A contiguous stretch of recording, `[start_us, end_us)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start_us: i64,
    pub end_us: i64,
}

/// Merges the playable segments of `stream_id` that overlap `[from_us, to_us)` into ranges; a hole
/// longer than `gap_us` between one segment's end and the next one's start starts a new range.
///
/// One indexed scan of `(stream_id, start_us)` plus a window function (gaps and islands). Segments
/// are capped in length (`config::MAX_MS_PER_FILE`), so the lower bound on `start_us` keeps the scan
/// inside the index range.
pub async fn ranges(
    db: &Db,
    stream_id: Uuid,
    from_us: i64,
    to_us: i64,
    gap_us: i64,
) -> Result<Vec<TimeRange>> {
    const SQL: &str = "
        SELECT MIN(start_us) AS start_us, MAX(end_us) AS end_us FROM (
            SELECT start_us, end_us,
                   SUM(new_run) OVER (ORDER BY start_us, id ROWS UNBOUNDED PRECEDING) AS run
            FROM (
                SELECT id, start_us, end_us,
                       CASE WHEN start_us - MAX(end_us) OVER (ORDER BY start_us, id
                                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) > $4
                            THEN 1 ELSE 0 END AS new_run
                FROM segments
                WHERE stream_id = $1 AND start_us >= $2 AND start_us < $3 AND end_us > $5
                  AND state IN ('recording', 'complete')
            ) AS marked
        ) AS numbered
        GROUP BY run
        ORDER BY 1";
    let lower = from_us.saturating_sub(crate::config::MAX_MS_PER_FILE as i64 * 1000 * 2);
    let rows: Vec<(i64, i64)> = with_pool!(db, p => sqlx::query_as(SQL)
        .bind(DbUuid(stream_id))
        .bind(lower)
        .bind(to_us)
        .bind(gap_us)
        .bind(from_us)
        .fetch_all(p)
        .await?);
    Ok(rows
        .into_iter()
        .map(|(start_us, end_us)| TimeRange { start_us, end_us })
        .collect())
}

/// Whether any playable segment of the stream overlaps `[from_us, to_us)`.
pub async fn any_in_range(db: &Db, stream_id: Uuid, from_us: i64, to_us: i64) -> Result<bool> {
    const SQL: &str = "SELECT EXISTS (SELECT 1 FROM segments WHERE stream_id = $1 \
        AND start_us >= $2 AND start_us < $3 AND end_us > $4 AND state IN ('recording', 'complete'))";
    let lower = from_us.saturating_sub(crate::config::MAX_MS_PER_FILE as i64 * 1000 * 2);
    let found: bool = with_pool!(db, p => sqlx::query_scalar(SQL)
        .bind(DbUuid(stream_id))
        .bind(lower)
        .bind(to_us)
        .bind(from_us)
        .fetch_one(p)
        .await?);
    Ok(found)
}
