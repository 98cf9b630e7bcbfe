//! The `signing_keys` table: the HMAC keys of signed player URLs.
//!
//! The key with the highest id signs. Rotation gives the previous current key an end of validity
//! (`valid_until_us`, now plus a grace period) and adds a new one, in one transaction.

use super::{BeginWrite, Db, Result, now_us, with_pool};

/// A signing key.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SigningKey {
    pub id: i64,
    pub secret: Vec<u8>,
    pub created_at_us: i64,
    /// `None` for the current key; otherwise signatures made with it verify until then.
    pub valid_until_us: Option<i64>,
}

impl std::fmt::Debug for SigningKey {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("created_at_us", &self.created_at_us)
            .field("valid_until_us", &self.valid_until_us)
            .finish_non_exhaustive()
    }
}

/// Creates key 1 with `secret` unless a key exists. Several processes starting at once on one
/// database all end up with the same key: the first insert wins, the others do nothing.
pub async fn ensure(db: &Db, secret: &[u8]) -> Result<()> {
    const SQL: &str = "INSERT INTO signing_keys (id, secret, created_at_us) \
        SELECT 1, $1, $2 WHERE NOT EXISTS (SELECT 1 FROM signing_keys) \
        ON CONFLICT (id) DO NOTHING";
    with_pool!(db, p => {
        sqlx::query(SQL).bind(secret).bind(now_us()).execute(p).await?;
    });
    Ok(())
}

/// The keys that verify at `at_us`, newest (the signing key) first.
pub async fn valid(db: &Db, at_us: i64) -> Result<Vec<SigningKey>> {
    const SQL: &str = "SELECT id, secret, created_at_us, valid_until_us FROM signing_keys \
        WHERE valid_until_us IS NULL OR valid_until_us > $1 ORDER BY id DESC";
    let rows = with_pool!(db, p => sqlx::query_as(SQL).bind(at_us).fetch_all(p).await?);
    Ok(rows)
}

/// Makes `secret` the signing key. Keys that were still open-ended stay valid for `grace_us` more
/// (0: they stop verifying at once). Returns the new key's id.
pub async fn rotate(db: &Db, secret: &[u8], grace_us: i64) -> Result<i64> {
    const RETIRE: &str = "UPDATE signing_keys SET valid_until_us = $1 WHERE valid_until_us IS NULL";
    const SHORTEN: &str = "UPDATE signing_keys SET valid_until_us = $1 WHERE valid_until_us > $1";
    const INSERT: &str = "INSERT INTO signing_keys (id, secret, created_at_us) \
        SELECT COALESCE(MAX(id), 0) + 1, $1, $2 FROM signing_keys RETURNING id";
    let now = now_us();
    let until = now.saturating_add(grace_us.max(0));
    let id = with_pool!(db, p => {
        let mut tx = p.begin_write().await?;
        sqlx::query(RETIRE).bind(until).execute(&mut *tx).await?;
        // A rotation with a shorter grace also cuts the grace of earlier rotations: "rotate with
        // grace 0" must end every old key at once (the answer to a leaked key).
        sqlx::query(SHORTEN).bind(until).execute(&mut *tx).await?;
        let id: i64 = sqlx::query_scalar(INSERT).bind(secret).bind(now).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        id
    });
    Ok(id)
}
