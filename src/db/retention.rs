//! Queries for archive retention: which segments may go (oldest first, never protected, never
//! being recorded or uploaded), how many bytes a stream holds, and the crash-consistent delete
//! (`complete` → `deleting` → row gone).
//!
//! Every candidate query is one range of the `(stream_id, start_us)` index, read oldest first with
//! a `LIMIT`; byte totals come from `runs` (a handful of rows per stream), never from a scan of
//! `segments`.
//!
//! **Runs invariant.** `runs` always equals what [`super::runs::rebuild`] derives from the
//! `complete` segments. Marking a segment `deleting` takes it out of that set, so [`mark_deleting`]
//! re-derives the runs that held it in the same transaction. Only the affected runs are re-derived
//! (an index range over their own time span), not the stream's whole history.

use uuid::Uuid;

use super::protected::unprotected_segment_sql;
use super::{BeginWrite, Db, DbUuid, Result, with_pool};

/// A segment retention may delete (or has marked `deleting`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Deletable {
    pub id: i64,
    #[sqlx(try_from = "DbUuid")]
    pub stream_id: Uuid,
    pub start_us: i64,
    pub end_us: i64,
    pub bytes: i64,
    /// `filesystem` or `s3`: which storage holds `storage_key`.
    pub storage: String,
    pub storage_key: String,
    /// The bucket of an `s3` row (`None`: filesystem, or the `[s3]` bucket).
    pub bucket: Option<String>,
    /// The state when read: `complete` or `missing` for candidates, `deleting` for pending rows.
    pub state: String,
}

/// Which segments a candidate query may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidateFilter<'a> {
    /// Only segments that start before this time (µs); `i64::MAX` for no bound.
    pub start_before_us: i64,
    /// Only segments that end at or before this time (µs); `i64::MAX` for no age bound.
    pub end_before_us: i64,
    /// Also return `missing` rows (their file is already gone; deleting them frees no bytes).
    pub include_missing: bool,
    /// Only segments in this storage (`filesystem`, `s3`); `None` for any.
    pub storage: Option<&'a str>,
}

/// The oldest segments of a stream that retention may delete, oldest first: `complete` (or
/// `missing`) rows, not being uploaded, not leased by a reader (`lease_until_us` passed, as of
/// `now_us`), that overlap no protected range of the stream.
///
/// Overlap is half-open: a segment `[start, end)` and a range `[p.start, p.end)` overlap when
/// `p.start < end && p.end > start`; a zero-length segment is protected when it lies inside a range.
pub async fn oldest_candidates(
    db: &Db,
    stream_id: Uuid,
    filter: CandidateFilter<'_>,
    limit: u32,
    now_us: i64,
) -> Result<Vec<Deletable>> {
    const SQL: &str = concat!(
        "SELECT id, stream_id, start_us, end_us, bytes, storage, storage_key, bucket, state
        FROM segments
        WHERE stream_id = $1 AND start_us < $2 AND start_us < $6 AND end_us <= $2
          AND (state = 'complete' OR (state = 'missing' AND $3))
          AND ($4 = '' OR storage = $4)
          AND upload_state <> 'uploading'
          AND (lease_until_us IS NULL OR lease_until_us <= $7)
          AND ",
        unprotected_segment_sql!(),
        "
        ORDER BY start_us, id
        LIMIT $5"
    );
    let rows = with_pool!(db, p => sqlx::query_as(SQL)
        .bind(DbUuid(stream_id))
        .bind(filter.end_before_us)
        .bind(filter.include_missing)
        .bind(filter.storage.unwrap_or(""))
        .bind(i64::from(limit))
        .bind(filter.start_before_us)
        .bind(now_us)
        .fetch_all(p)
        .await?);
    Ok(rows)
}

/// Bytes of a stream's `complete` segments, from its runs.
pub async fn stream_bytes(db: &Db, stream_id: Uuid) -> Result<i64> {
    const SQL: &str =
        "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM runs WHERE stream_id = $1";
    let total: i64 = with_pool!(db, p => sqlx::query_scalar(SQL)
        .bind(DbUuid(stream_id))
        .fetch_one(p)
        .await?);
    Ok(total)
}

/// Bytes of a stream's `complete` segments that overlap one of its protected ranges (each segment
/// counted once). Reads one index range of `segments` per protected range: segment length is
/// capped, so a segment overlapping `[p.start, p.end)` starts after `p.start - 2 × cap` (the same
/// bound the time queries in `segments` use).
pub async fn protected_bytes(db: &Db, stream_id: Uuid) -> Result<i64> {
    const SQL: &str = "
        SELECT CAST(COALESCE(SUM(s.bytes), 0) AS BIGINT) FROM segments s
        WHERE s.id IN (
            SELECT s2.id FROM protected_ranges p
            JOIN segments s2 ON s2.stream_id = p.stream_id
                AND s2.start_us >= p.start_us - $2 AND s2.start_us < p.end_us
            WHERE p.stream_id = $1 AND s2.state = 'complete'
              AND p.start_us <= s2.end_us
              AND (p.start_us < s2.end_us OR s2.start_us = s2.end_us))";
    let total: i64 = with_pool!(db, p => sqlx::query_scalar(SQL)
        .bind(DbUuid(stream_id))
        .bind(super::segments::MAX_SEGMENT_US)
        .fetch_one(p)
        .await?);
    Ok(total)
}

/// Streams that have closed segments (from `runs`, which holds a few rows per stream). Includes
/// streams whose row was deleted: their archive stays until retention removes it.
pub async fn streams_with_segments(db: &Db) -> Result<Vec<Uuid>> {
    const SQL: &str = "SELECT DISTINCT stream_id FROM runs";
    let ids: Vec<DbUuid> = with_pool!(db, p => sqlx::query_scalar(SQL).fetch_all(p).await?);
    let mut ids: Vec<Uuid> = ids.into_iter().map(Uuid::from).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Marks `candidates` `deleting` and re-derives the runs that held them, in one transaction.
/// A candidate whose row changed since it was read (another state, now being uploaded, now
/// leased by a reader, or now protected) is left alone. Returns the rows marked, in the order
/// given.
///
/// The lease check and the mark are one `UPDATE` of the row, and a reader takes its lease with an
/// `UPDATE` of the same row that checks the state: whichever commits second sees the other's write
/// (`db::leases`), so a leased segment is never marked and a marked one is never leased.
///
/// After this commits the segment is invisible to ranges and playback; its bytes may still exist
/// until [`delete_rows`] runs after the storage delete. A crash in between leaves the row
/// `deleting`, which [`pending`] finds at the next start.
pub async fn mark_deleting(
    db: &Db,
    candidates: &[Deletable],
    now_us: i64,
) -> Result<Vec<Deletable>> {
    const MARK: &str = concat!(
        "UPDATE segments SET state = 'deleting'
        WHERE id = $1 AND state = $2 AND upload_state <> 'uploading'
          AND (lease_until_us IS NULL OR lease_until_us <= $3) AND ",
        unprotected_segment_sql!()
    );
    let mut marked = Vec::with_capacity(candidates.len());
    with_pool!(db, p => {
        let mut tx = p.begin_write().await?;
        // (stream, run id, run start, run end) of every run that loses a segment.
        let mut touched: Vec<(Uuid, i64, i64, i64)> = Vec::new();
        for c in candidates {
            let done = sqlx::query(MARK)
                .bind(c.id)
                .bind(c.state.as_str())
                .bind(now_us)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if done == 0 {
                continue;
            }
            if c.state == "complete" {
                super::runs::note_touched!(&mut *tx, &mut touched, c.stream_id, c.start_us, c.end_us);
            }
            marked.push(c.clone());
        }
        super::runs::rederive_touched!(&mut *tx, touched);
        tx.commit().await?;
    });
    Ok(marked)
}

/// Deletes rows in state `deleting` (their bytes are gone). Other rows are never touched.
pub async fn delete_rows(db: &Db, ids: &[i64]) -> Result<u64> {
    const SQL: &str = "DELETE FROM segments WHERE id = $1 AND state = 'deleting'";
    let mut deleted = 0;
    with_pool!(db, p => {
        let mut tx = p.begin_write().await?;
        for id in ids {
            deleted += sqlx::query(SQL).bind(*id).execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
    });
    Ok(deleted)
}

/// Rows left `deleting` by an interrupted pass (a crash, or a storage delete that failed).
///
/// A scan of `segments` (there is no index on `state`): run at start-up and after a pass with
/// failures, not every pass.
pub async fn pending(db: &Db) -> Result<Vec<Deletable>> {
    const SQL: &str = "SELECT id, stream_id, start_us, end_us, bytes, storage, storage_key, bucket, \
        state FROM segments WHERE state = 'deleting' ORDER BY id";
    let rows = with_pool!(db, p => sqlx::query_as(SQL).fetch_all(p).await?);
    Ok(rows)
}

// ----- purges (`DELETE /api/v1/streams/{id}?purge=true`) ----------------------------------------

/// Deletes a stream's row (if there is one) and records that its archive is to be purged, in one
/// transaction, so a crash cannot leave a deleted stream whose purge was never recorded. A purge
/// already pending for the stream is moved to `requested_at_us`. Returns whether a stream row was
/// deleted.
pub async fn delete_and_purge(db: &Db, stream_id: Uuid, requested_at_us: i64) -> Result<bool> {
    const DELETE: &str = "DELETE FROM streams WHERE id = $1";
    const PURGE: &str = "INSERT INTO stream_purges (stream_id, requested_at_us) VALUES ($1, $2) \
        ON CONFLICT (stream_id) DO UPDATE SET requested_at_us = excluded.requested_at_us";
    let deleted = with_pool!(db, p => {
        let mut tx = p.begin_write().await?;
        let n = sqlx::query(DELETE)
            .bind(DbUuid(stream_id))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(PURGE)
            .bind(DbUuid(stream_id))
            .bind(requested_at_us)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        n > 0
    });
    Ok(deleted)
}

/// Purges waiting to be carried out: `(stream, requested_at_us)`.
pub async fn purges(db: &Db) -> Result<Vec<(Uuid, i64)>> {
    const SQL: &str =
        "SELECT stream_id, requested_at_us FROM stream_purges ORDER BY requested_at_us";
    let rows: Vec<(DbUuid, i64)> = with_pool!(db, p => sqlx::query_as(SQL).fetch_all(p).await?);
    Ok(rows.into_iter().map(|(id, at)| (id.0, at)).collect())
}

/// Whether a purge has anything left to delete: a segment of the stream that started before the
/// request and overlaps no protected range (protected ones stay: the purge is then done).
pub async fn purge_remaining(db: &Db, stream_id: Uuid, requested_at_us: i64) -> Result<bool> {
    const SQL: &str = concat!(
        "SELECT EXISTS (SELECT 1 FROM segments WHERE stream_id = $1 AND start_us < $2 AND ",
        unprotected_segment_sql!(),
        ")"
    );
    let found: bool = with_pool!(db, p => sqlx::query_scalar(SQL)
        .bind(DbUuid(stream_id))
        .bind(requested_at_us)
        .fetch_one(p)
        .await?);
    Ok(found)
}

/// Forgets a purge that is done (unless it was requested again meanwhile).
pub async fn purge_done(db: &Db, stream_id: Uuid, requested_at_us: i64) -> Result<()> {
    const SQL: &str = "DELETE FROM stream_purges WHERE stream_id = $1 AND requested_at_us = $2";
    with_pool!(db, p => sqlx::query(SQL)
        .bind(DbUuid(stream_id))
        .bind(requested_at_us)
        .execute(p)
        .await
        .map(|_| ()))?;
    Ok(())
}
