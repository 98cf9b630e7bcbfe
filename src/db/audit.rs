//! The `audit` table: who did what, written in batches by `auth::audit`, read newest first with a
//! keyset cursor (the row id).

use uuid::Uuid;

use super::{BeginWrite, Db, DbUuid, Result, with_pool};

/// One audit entry, as written and as read (`id` is 0 before insertion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub at_us: i64,
    pub token_id: Option<String>,
    /// `none`, `token`, `signed` or `bootstrap`.
    pub credential: String,
    /// `token:<id>` or `ip:<address>`.
    pub client: String,
    pub action: String,
    pub stream_id: Option<Uuid>,
    /// Method and route template, e.g. `DELETE /api/v1/streams/{id}`.
    pub route: String,
    /// HTTP status answered (101 for an opened WebSocket session).
    pub status: i32,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    at_us: i64,
    token_id: Option<String>,
    credential: String,
    client: String,
    action: String,
    stream_id: Option<DbUuid>,
    route: String,
    status: i32,
}

impl From<Row> for AuditRow {
    fn from(r: Row) -> Self {
        AuditRow {
            id: r.id,
            at_us: r.at_us,
            token_id: r.token_id,
            credential: r.credential,
            client: r.client,
            action: r.action,
            stream_id: r.stream_id.map(|u| u.0),
            route: r.route,
            status: r.status,
        }
    }
}

/// Inserts rows (their `id` is ignored) in one transaction.
pub async fn insert_batch(db: &Db, rows: &[AuditRow]) -> Result<()> {
    const SQL: &str = "INSERT INTO audit \
        (at_us, token_id, credential, client, action, stream_id, route, status) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    if rows.is_empty() {
        return Ok(());
    }
    with_pool!(db, p => {
        let mut tx = p.begin_write().await?;
        for r in rows {
            sqlx::query(SQL)
                .bind(r.at_us)
                .bind(&r.token_id)
                .bind(&r.credential)
                .bind(&r.client)
                .bind(&r.action)
                .bind(r.stream_id.map(DbUuid))
                .bind(&r.route)
                .bind(r.status)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    });
    Ok(())
}

/// Up to `limit` rows with an id below `before` (all rows when `None`), newest first.
pub async fn page(db: &Db, before: Option<i64>, limit: u32) -> Result<Vec<AuditRow>> {
    const SQL: &str = "SELECT id, at_us, token_id, credential, client, action, stream_id, route, \
        status FROM audit WHERE id < $1 ORDER BY id DESC LIMIT $2";
    let rows: Vec<Row> = with_pool!(db, p => sqlx::query_as(SQL)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(p)
        .await?);
    Ok(rows.into_iter().map(AuditRow::from).collect())
}

/// Deletes rows written before `cutoff_us`; returns how many.
pub async fn delete_before(db: &Db, cutoff_us: i64) -> Result<u64> {
    const SQL: &str = "DELETE FROM audit WHERE at_us < $1";
    let n = with_pool!(db, p => sqlx::query(SQL).bind(cutoff_us).execute(p).await?.rows_affected());
    Ok(n)
}
