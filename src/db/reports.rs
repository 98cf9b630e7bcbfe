//! Readers for the reporting views (`report_stream_days`, `report_streams`, migration 0002).
//!
//! The views are meant for people with `psql` or `sqlite3` (README, "SQL reports"); these readers
//! give tests and tools the same numbers typed, identically on both engines (dates and timestamps
//! come back as the views' UTC text).

use uuid::Uuid;

use super::{Db, DbUuid, Result, with_pool};

/// One row of `report_stream_days`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StreamDay {
    #[sqlx(try_from = "DbUuid")]
    pub stream_id: Uuid,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub recorded_seconds: f64,
    pub bytes: i64,
    pub segment_count: i64,
    pub gap_count: i64,
}

/// Per-day rows of one stream, oldest day first.
pub async fn stream_days(db: &Db, stream_id: Uuid) -> Result<Vec<StreamDay>> {
    // CAST(day AS TEXT): a DATE in Postgres, already 'YYYY-MM-DD' text in SQLite.
    const SQL: &str = "SELECT stream_id, CAST(day AS TEXT) AS day, recorded_seconds, bytes, \
        segment_count, gap_count FROM report_stream_days WHERE stream_id = $1 ORDER BY day";
    let rows = with_pool!(db, p => sqlx::query_as(SQL)
        .bind(DbUuid(stream_id))
        .fetch_all(p)
        .await?);
    Ok(rows)
}

/// One row of `report_streams`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StreamSummary {
    #[sqlx(try_from = "DbUuid")]
    pub stream_id: Uuid,
    /// `None` when the stream row is gone (the archive outlives it).
    pub name: Option<String>,
    /// `YYYY-MM-DD HH:MM:SS`, UTC; `None` when nothing is recorded.
    pub first_recording: Option<String>,
    pub last_recording: Option<String>,
    pub first_start_us: Option<i64>,
    pub last_end_us: Option<i64>,
    pub total_bytes: i64,
    pub segment_count: i64,
    pub recorded_seconds: f64,
}

/// Every row of `report_streams`, ordered by stream id.
pub async fn streams(db: &Db) -> Result<Vec<StreamSummary>> {
    const SQL: &str = "SELECT stream_id, name, first_recording, last_recording, first_start_us, \
        last_end_us, total_bytes, segment_count, recorded_seconds FROM report_streams \
        ORDER BY stream_id";
    let rows = with_pool!(db, p => sqlx::query_as(SQL).fetch_all(p).await?);
    Ok(rows)
}
