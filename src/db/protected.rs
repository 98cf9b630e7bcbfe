//! The `protected_ranges` table: time ranges of a stream's archive that retention must never
//! delete (evidence locks), and the queries retention uses to honour them.
//!
//! A segment is protected when it overlaps any protected range of its stream, even by a
//! microsecond: deleting it would cut a hole into the protected time. Retention can either ask per
//! segment or window ([`overlaps`]) or, better, filter its deletion candidates in SQL with
//! [`unprotected_segment_sql!`] so protected rows are never even selected.

use uuid::Uuid;

use super::{Db, DbUuid, Result, now_us, with_pool};

/// A `WHERE` condition true for the `segments` rows that no protected range overlaps, as a string
/// literal for `concat!`. The table must be referred to as `segments` (not aliased). Overlap is
/// half-open (`p.start < end && p.end > start`), and a zero-length segment lying inside a range is
/// protected too. The sub-query reads the `(stream_id, start_us)` index of `protected_ranges`,
/// which holds a handful of rows per stream.
macro_rules! unprotected_segment_sql {
    () => {
        "NOT EXISTS (SELECT 1 FROM protected_ranges pr \
         WHERE pr.stream_id = segments.stream_id \
         AND pr.start_us <= segments.end_us AND pr.end_us > segments.start_us \
         AND (pr.start_us < segments.end_us OR segments.start_us = segments.end_us))"
    };
}
pub(crate) use unprotected_segment_sql;

/// [`unprotected_segment_sql!`] as a constant, for queries built at run time.
pub const UNPROTECTED_SEGMENT_SQL: &str = unprotected_segment_sql!();

/// A protected range as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProtectedRange {
    pub id: i64,
    #[sqlx(try_from = "DbUuid")]
    pub stream_id: Uuid,
    /// Inclusive start, microseconds since the Unix epoch.
    pub start_us: i64,
    /// Exclusive end, microseconds since the Unix epoch; always after `start_us`.
    pub end_us: i64,
    pub reason: String,
    pub created_at_us: i64,
}

const COLUMNS: &str = "id, stream_id, start_us, end_us, reason, created_at_us";

/// Protects `[start_us, end_us)` of a stream's archive. The caller validates `start_us < end_us`
/// (the table's CHECK refuses the rest).
pub async fn insert(
    db: &Db,
    stream_id: Uuid,
    start_us: i64,
    end_us: i64,
    reason: &str,
) -> Result<ProtectedRange> {
    let sql = format!(
        "INSERT INTO protected_ranges (stream_id, start_us, end_us, reason, created_at_us) \
         VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    );
    let row = with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(DbUuid(stream_id))
        .bind(start_us)
        .bind(end_us)
        .bind(reason)
        .bind(now_us())
        .fetch_one(p)
        .await?);
    Ok(row)
}

/// Every protected range of a stream, ordered by start.
pub async fn list(db: &Db, stream_id: Uuid) -> Result<Vec<ProtectedRange>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM protected_ranges WHERE stream_id = $1 ORDER BY start_us, id"
    );
    let rows = with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(DbUuid(stream_id))
        .fetch_all(p)
        .await?);
    Ok(rows)
}

/// Removes one protected range of a stream; `false` when there is no such range (or it belongs to
/// another stream).
pub async fn delete(db: &Db, stream_id: Uuid, id: i64) -> Result<bool> {
    const SQL: &str = "DELETE FROM protected_ranges WHERE id = $1 AND stream_id = $2";
    let affected = with_pool!(db, p => sqlx::query(SQL)
        .bind(id)
        .bind(DbUuid(stream_id))
        .execute(p)
        .await?
        .rows_affected());
    Ok(affected > 0)
}

/// Whether any protected range of the stream overlaps `[start_us, end_us)`. Retention calls this
/// before deleting a segment (with the segment's bounds) when it does not filter in SQL.
pub async fn overlaps(db: &Db, stream_id: Uuid, start_us: i64, end_us: i64) -> Result<bool> {
    const SQL: &str = "SELECT EXISTS (SELECT 1 FROM protected_ranges \
        WHERE stream_id = $1 AND start_us < $2 AND end_us > $3)";
    let found: bool = with_pool!(db, p => sqlx::query_scalar(SQL)
        .bind(DbUuid(stream_id))
        .bind(end_us)
        .bind(start_us)
        .fetch_one(p)
        .await?);
    Ok(found)
}

/// Whether anything is indexed about a stream: a `streams` row, archive segments, or protected
/// ranges. The archive API answers 404 only for ids that are none of these, so the archive of a
/// deleted stream stays queryable (and protectable) while a mistyped id is reported.
pub async fn stream_known(db: &Db, stream_id: Uuid) -> Result<bool> {
    const SQL: &str = "SELECT EXISTS (SELECT 1 FROM streams WHERE id = $1) \
        OR EXISTS (SELECT 1 FROM segments WHERE stream_id = $1) \
        OR EXISTS (SELECT 1 FROM protected_ranges WHERE stream_id = $1)";
    let found: bool = with_pool!(db, p => sqlx::query_scalar(SQL)
        .bind(DbUuid(stream_id))
        .fetch_one(p)
        .await?);
    Ok(found)
}
