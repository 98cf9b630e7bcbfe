//! The `tokens` table: access tokens, stored as a digest of their secret.
//!
//! The scope columns are plain text (`'*'` or comma-separated ids, comma-separated actions) so both
//! engines store them alike; `auth::scope` parses them.

use super::{Db, Result, with_pool};

/// A token row. `secret_sha256` is the digest of the secret part; the secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub secret_sha256: Vec<u8>,
    pub admin: bool,
    /// `'*'` or comma-separated stream UUIDs (empty for admin tokens).
    pub streams: String,
    /// Comma-separated actions.
    pub actions: String,
    pub created_at_us: i64,
    pub expires_at_us: Option<i64>,
    /// The admin token that created this one; `None` when made by the CLI.
    pub created_by: Option<String>,
}

const COLUMNS: &str =
    "id, name, secret_sha256, admin, streams, actions, created_at_us, expires_at_us, created_by";

/// Stores a new token.
pub async fn insert(db: &Db, t: &TokenRow) -> Result<()> {
    let sql = format!("INSERT INTO tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
    with_pool!(db, p => sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&t.id)
        .bind(&t.name)
        .bind(&t.secret_sha256)
        .bind(t.admin)
        .bind(&t.streams)
        .bind(&t.actions)
        .bind(t.created_at_us)
        .bind(t.expires_at_us)
        .bind(&t.created_by)
        .execute(p)
        .await
        .map(|_| ())?);
    Ok(())
}

/// One token by id.
pub async fn get(db: &Db, id: &str) -> Result<Option<TokenRow>> {
    let sql = format!("SELECT {COLUMNS} FROM tokens WHERE id = $1");
    let row = with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(p)
        .await?);
    Ok(row)
}

/// Every token, oldest first. Operators hold tens of tokens, not millions: no paging.
pub async fn list(db: &Db) -> Result<Vec<TokenRow>> {
    let sql = format!("SELECT {COLUMNS} FROM tokens ORDER BY created_at_us, id");
    let rows = with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(p)
        .await?);
    Ok(rows)
}

/// Deletes a token; `false` when there is none with this id.
pub async fn delete(db: &Db, id: &str) -> Result<bool> {
    const SQL: &str = "DELETE FROM tokens WHERE id = $1";
    let n = with_pool!(db, p => sqlx::query(SQL).bind(id).execute(p).await?.rows_affected());
    Ok(n > 0)
}

/// Admin tokens that have not expired at `now_us` (to warn when auth is on and nobody could log in).
pub async fn count_usable_admins(db: &Db, now_us: i64) -> Result<i64> {
    const SQL: &str = "SELECT COUNT(*) FROM tokens WHERE admin \
        AND (expires_at_us IS NULL OR expires_at_us > $1)";
    let n: i64 = with_pool!(db, p => sqlx::query_scalar(SQL).bind(now_us).fetch_one(p).await?);
    Ok(n)
}
