//! The `storage_roots` table: archive directories and the id written into their marker file
//! (`archive::markers` reads and writes the markers).

use uuid::Uuid;

use super::{Db, DbUuid, Result, now_us, with_pool};

/// A storage root as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RootRow {
    #[sqlx(try_from = "DbUuid")]
    pub id: Uuid,
    pub path: String,
    pub created_at_us: i64,
    pub last_seen_us: i64,
}

/// Every recorded root, by path.
pub async fn all(db: &Db) -> Result<Vec<RootRow>> {
    const SQL: &str =
        "SELECT id, path, created_at_us, last_seen_us FROM storage_roots ORDER BY path";
    let rows = with_pool!(db, p => sqlx::query_as(SQL).fetch_all(p).await?);
    Ok(rows)
}

/// The root recorded for a directory.
pub async fn by_path(db: &Db, path: &str) -> Result<Option<RootRow>> {
    const SQL: &str =
        "SELECT id, path, created_at_us, last_seen_us FROM storage_roots WHERE path = $1";
    let row = with_pool!(db, p => sqlx::query_as(SQL).bind(path).fetch_optional(p).await?);
    Ok(row)
}

/// The root that owns a marker id (possibly at another path: a disk mounted elsewhere).
pub async fn by_id(db: &Db, id: Uuid) -> Result<Option<RootRow>> {
    const SQL: &str =
        "SELECT id, path, created_at_us, last_seen_us FROM storage_roots WHERE id = $1";
    let row = with_pool!(db, p => sqlx::query_as(SQL).bind(DbUuid(id)).fetch_optional(p).await?);
    Ok(row)
}

/// Records a root. Returns false when the path or the id is already recorded (another process
/// adopted it first; read it back with [`by_path`]).
pub async fn insert(db: &Db, id: Uuid, path: &str) -> Result<bool> {
    const SQL: &str = "INSERT INTO storage_roots (id, path, created_at_us, last_seen_us) \
        VALUES ($1, $2, $3, $3) ON CONFLICT DO NOTHING";
    let now = now_us();
    let n = with_pool!(db, p => sqlx::query(SQL)
        .bind(DbUuid(id))
        .bind(path)
        .bind(now)
        .execute(p)
        .await?
        .rows_affected());
    Ok(n == 1)
}

/// Notes that the root's marker was just found and matched.
pub async fn seen(db: &Db, id: Uuid) -> Result<()> {
    const SQL: &str = "UPDATE storage_roots SET last_seen_us = $2 WHERE id = $1";
    let now = now_us();
    with_pool!(db, p => sqlx::query(SQL).bind(DbUuid(id)).bind(now).execute(p).await.map(|_| ()))?;
    Ok(())
}

/// When the last clean reconciliation pass over the root started listing it (`None`: none yet).
pub async fn reconciled_from(db: &Db, id: Uuid) -> Result<Option<i64>> {
    const SQL: &str = "SELECT reconciled_from_us FROM storage_roots WHERE id = $1";
    let found: Option<Option<i64>> = with_pool!(db, p => sqlx::query_scalar(SQL)
        .bind(DbUuid(id))
        .fetch_optional(p)
        .await?);
    Ok(found.flatten())
}

/// Records that a reconciliation pass that started listing the root at `from_us` finished cleanly.
pub async fn set_reconciled_from(db: &Db, id: Uuid, from_us: i64) -> Result<()> {
    const SQL: &str = "UPDATE storage_roots SET reconciled_from_us = $2 WHERE id = $1";
    with_pool!(db, p => sqlx::query(SQL).bind(DbUuid(id)).bind(from_us).execute(p).await.map(|_| ()))?;
    Ok(())
}
