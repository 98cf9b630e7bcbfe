//! Read leases on segment rows (`segments.lease_until_us`, migration 0007): a reader (archive
//! playback, export) moves the time forward while it reads; retention does not mark a leased row
//! `deleting` and the uploader neither claims it nor moves it to S3 until the time has passed.
//!
//! Taking a lease is one `UPDATE` of the row that also checks the row is still playable
//! (`recording` or `complete`); retention's mark is one `UPDATE` of the same row that checks the
//! lease has passed. Whichever commits second sees the other's write, so a leased segment is never
//! marked and a marked one is never leased. `archive::leases` counts the holders in this process,
//! renews the rows while any is held and clears them when the last one goes.

use super::{Db, Result, with_pool};

/// Ids per statement (bound parameters stay far below both engines' limits).
const CHUNK: usize = 500;

fn id_list(first_param: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("${}", first_param + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Leases the playable rows among `ids` until `until_us` (never moving an existing lease back).
/// Returns the ids leased; an id missing from the answer is gone, `missing` or being deleted.
pub async fn acquire(db: &Db, ids: &[i64], until_us: i64) -> Result<Vec<i64>> {
    let mut leased = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "UPDATE segments SET lease_until_us = \
                 CASE WHEN lease_until_us IS NULL OR lease_until_us < $1 THEN $1 \
                      ELSE lease_until_us END \
             WHERE id IN ({}) AND state IN ('recording', 'complete') RETURNING id",
            id_list(2, chunk.len())
        );
        let got: Vec<i64> = with_pool!(db, p => {
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(until_us);
            for id in chunk {
                q = q.bind(*id);
            }
            q.fetch_all(p).await?
        });
        leased.extend(got);
    }
    leased.sort_unstable();
    Ok(leased)
}

/// Moves the leases of `ids` forward to `until_us` (rows gone meanwhile are skipped).
pub async fn renew(db: &Db, ids: &[i64], until_us: i64) -> Result<()> {
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "UPDATE segments SET lease_until_us = $1 \
             WHERE id IN ({}) AND state IN ('recording', 'complete') \
               AND (lease_until_us IS NULL OR lease_until_us < $1)",
            id_list(2, chunk.len())
        );
        with_pool!(db, p => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(until_us);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(p).await?;
        });
    }
    Ok(())
}

/// Clears the lease of `id` if it still is the one this process wrote (`until_us`): a lease moved
/// further by someone else stays.
pub async fn release(db: &Db, id: i64, until_us: i64) -> Result<()> {
    const SQL: &str =
        "UPDATE segments SET lease_until_us = NULL WHERE id = $1 AND lease_until_us = $2";
    with_pool!(db, p => sqlx::query(SQL).bind(id).bind(until_us).execute(p).await.map(|_| ()))?;
    Ok(())
}

/// The lease time of a row (`None` when never leased, released, or the row is gone).
pub async fn lease_until(db: &Db, id: i64) -> Result<Option<i64>> {
    const SQL: &str = "SELECT lease_until_us FROM segments WHERE id = $1";
    let v: Option<Option<i64>> =
        with_pool!(db, p => sqlx::query_scalar(SQL).bind(id).fetch_optional(p).await?);
    Ok(v.flatten())
}
