//! Query plans of the index's hot queries: the exact statements the request and upload paths run,
//! prefixed with `EXPLAIN`, so a test (or an operator) can check which index serves them on each
//! engine without keeping a copy of the SQL that could drift from the real one.
//!
//! A plan depends on the table's statistics: explain a table holding a realistic mix of rows
//! (and `ANALYZE`d), not an empty one, for which a sequential scan is rightly the cheapest plan.

use uuid::Uuid;

use super::{Db, DbUuid, Result, pages, segments};

/// Plan lines (SQLite: `EXPLAIN QUERY PLAN` details; Postgres: `EXPLAIN` text).
async fn explain<'q, F>(db: &Db, sql: &'q str, bind: F) -> Result<Vec<String>>
where
    F: Fn(Binder<'q>) -> Binder<'q>,
{
    match db {
        Db::Sqlite(p) => {
            let mut conn = p.acquire().await?;
            // A statement that reads the schema table first: SQLite computes an `EXPLAIN QUERY
            // PLAN` when preparing it, without a transaction that would notice another
            // connection's schema change (a dropped or new index).
            sqlx::query("SELECT COUNT(*) FROM sqlite_schema")
                .execute(&mut *conn)
                .await?;
            let q = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(format!(
                "EXPLAIN QUERY PLAN {sql}"
            )))
            // Never cached: SQLite computes this plan when the statement is prepared and would
            // not notice a later schema change.
            .persistent(false);
            let Binder::Sqlite(q) = bind(Binder::Sqlite(q)) else {
                unreachable!("the binder keeps its engine")
            };
            Ok(q.fetch_all(&mut *conn)
                .await?
                .into_iter()
                .map(|r| r.3)
                .collect())
        }
        Db::Postgres(p) => {
            let q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
                .persistent(false);
            let Binder::Postgres(q) = bind(Binder::Postgres(q)) else {
                unreachable!("the binder keeps its engine")
            };
            Ok(q.fetch_all(p).await?)
        }
    }
}

/// A statement being given its parameters, for either engine.
enum Binder<'q> {
    Sqlite(
        sqlx::query::QueryAs<
            'q,
            sqlx::Sqlite,
            (i64, i64, i64, String),
            sqlx::sqlite::SqliteArguments,
        >,
    ),
    Postgres(sqlx::query::QueryScalar<'q, sqlx::Postgres, String, sqlx::postgres::PgArguments>),
}

impl Binder<'_> {
    fn i64(self, v: i64) -> Self {
        match self {
            Binder::Sqlite(q) => Binder::Sqlite(q.bind(v)),
            Binder::Postgres(q) => Binder::Postgres(q.bind(v)),
        }
    }

    fn uuid(self, v: Uuid) -> Self {
        match self {
            Binder::Sqlite(q) => Binder::Sqlite(q.bind(DbUuid(v))),
            Binder::Postgres(q) => Binder::Postgres(q.bind(DbUuid(v))),
        }
    }
}

/// Plan of [`segments::claim_uploads`] (the uploader's claim of the oldest closed local rows).
pub async fn claim_uploads(db: &Db) -> Result<Vec<String>> {
    let sql = segments::claim_uploads_sql();
    explain(db, &sql, |q| q.i64(2).i64(0).i64(0)).await
}

/// Plan of [`segments::ready_uploads`] (the uploader's look at the queue before claiming).
pub async fn ready_uploads(db: &Db) -> Result<Vec<String>> {
    explain(db, segments::READY_UPLOADS_SQL, |q| {
        q.i64(100).i64(0).i64(0)
    })
    .await
}

/// Plan of [`segments::count_ready_uploads`].
pub async fn count_ready_uploads(db: &Db) -> Result<Vec<String>> {
    explain(db, segments::COUNT_READY_UPLOADS_SQL, |q| q).await
}

/// Plan of [`segments::upload_queues`] (the outbox per stream, for metrics).
pub async fn upload_queues(db: &Db) -> Result<Vec<String>> {
    explain(db, segments::UPLOAD_QUEUES_SQL, |q| q).await
}

/// Plan of the API's segment page ([`pages::segments`]): the first page of `stream_id`'s
/// segments overlapping `[from_us, to_us)`.
pub async fn segment_page(db: &Db, stream_id: Uuid, from: i64, to: i64) -> Result<Vec<String>> {
    let sql = match db {
        Db::Sqlite(_) => pages::sqlite_page_sql(),
        Db::Postgres(_) => pages::PAGE_ROWS.to_owned(),
    };
    explain(db, &sql, |q| {
        q.uuid(stream_id)
            .i64(segments::scan_start(from))
            .i64(to)
            .i64(from)
            .i64(i64::MIN)
            .i64(i64::MIN)
            .i64(100)
    })
    .await
}
