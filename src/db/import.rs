//! Indexing segments that already exist on disk (the Go archive import).

use super::segments::NewSegment;
use super::{BeginWrite, Db, DbUuid, Result, with_pool};

/// Inserts a closed segment (state `complete`, whatever `s.state` says) with its init segment and
/// adds it to its stream's runs, in one transaction: the row and its run appear together or not
/// at all, so an interrupted import leaves the index consistent and a re-run fills the rest.
pub async fn insert_complete(db: &Db, s: &NewSegment, init_segment_id: Option<i64>) -> Result<i64> {
    let id: i64 = with_pool!(db, p => {
        let mut tx = p.begin_write().await?;
        let id = super::segments::insert_row!(
            &mut *tx, s, "complete", init_segment_id, "none", None::<i64>
        );
        super::runs::add_segment!(&mut *tx, DbUuid(s.stream_id), s.start_us, s.end_us, s.bytes);
        tx.commit().await?;
        id
    });
    Ok(id)
}
