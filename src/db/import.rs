//! Indexing segments that already exist on disk (the Go archive import).

use super::segments::NewSegment;
use super::{Db, DbUuid, Result, now_us, with_pool};

/// Inserts a closed segment (state `complete`, whatever `s.state` says) with its init segment and
/// adds it to its stream's runs, in one transaction: the row and its run appear together or not
/// at all, so an interrupted import leaves the index consistent and a re-run fills the rest.
pub async fn insert_complete(db: &Db, s: &NewSegment, init_segment_id: Option<i64>) -> Result<i64> {
    const SQL: &str = "INSERT INTO segments (stream_id, start_us, end_us, media_duration_us, \
        storage, storage_key, bytes, state, created_at_us, init_segment_id, upload_state) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, 'complete', $8, $9, 'none') RETURNING id";
    let now = now_us();
    let id: i64 = with_pool!(db, p => {
        let mut tx = p.begin().await?;
        let id: i64 = sqlx::query_scalar(SQL)
            .bind(DbUuid(s.stream_id))
            .bind(s.start_us)
            .bind(s.end_us)
            .bind(s.media_duration_us)
            .bind(s.storage.as_str())
            .bind(s.storage_key.as_str())
            .bind(s.bytes)
            .bind(now)
            .bind(init_segment_id)
            .fetch_one(&mut *tx)
            .await?;
        super::runs::add_segment!(&mut *tx, DbUuid(s.stream_id), s.start_us, s.end_us, s.bytes);
        tx.commit().await?;
        id
    });
    Ok(id)
}
