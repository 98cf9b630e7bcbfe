//! Cluster coordination (migration 0008, Postgres only): the `nodes` table with heartbeats and
//! the camera leases in `stream_leases`.
//!
//! Every time here is the **database clock** (`clock_timestamp()`, µs), so nodes whose clocks
//! differ still agree on when a lease has expired. A node measures its own deadline for stopping
//! its cameras on its monotonic clock, from the moment it sent the renewal (see `crate::cluster`).
//!
//! Leases are taken with `FOR UPDATE SKIP LOCKED`: two nodes looking for free rows at once lock
//! different rows, and a row is only taken when it is still free once locked. Taking a lease
//! increments its epoch; segment rows are written with the epoch they were recorded under and
//! refused when the lease has moved on ([`check_fence`]).

use uuid::Uuid;

use super::{Db, DbError, Result};

/// The database clock in µs since the epoch, as a SQL expression.
macro_rules! db_now_us {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT"
    };
}

/// Who may write a stream's segment rows: the node holding its lease, under the lease's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub node_id: std::sync::Arc<str>,
    pub epoch: i64,
}

/// A node as `nodes` describes it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NodeRow {
    pub node_id: String,
    pub advertise_host: String,
    pub api_port: Option<i32>,
    pub video_port: i32,
    pub lease_ms: i64,
    pub started_us: i64,
    pub heartbeat_us: i64,
}

impl NodeRow {
    /// `host:port` of the node's video listener (IPv6 addresses in brackets).
    pub fn video_authority(&self) -> String {
        if self.advertise_host.contains(':') {
            format!("[{}]:{}", self.advertise_host, self.video_port)
        } else {
            format!("{}:{}", self.advertise_host, self.video_port)
        }
    }
}

/// A held lease: which node records a stream, until when, under which epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub stream_id: Uuid,
    pub owner: String,
    pub expires_us: i64,
    pub epoch: i64,
}

fn pg(db: &Db) -> Result<&sqlx::PgPool> {
    match db {
        Db::Postgres(p) => Ok(p),
        Db::Sqlite(_) => Err(DbError::NeedsPostgres),
    }
}

/// The database clock now (µs).
pub async fn now_us(db: &Db) -> Result<i64> {
    const SQL: &str = concat!("SELECT ", db_now_us!());
    Ok(sqlx::query_scalar(SQL).fetch_one(pg(db)?).await?)
}

/// A live cluster node on this index (heartbeat within its lease length), if any: a server
/// started without `[cluster]` on an index a cluster uses would record every camera a second time.
/// `None` on SQLite (no cluster there).
pub async fn live_node(db: &Db) -> Result<Option<String>> {
    const SQL: &str = concat!(
        "SELECT node_id FROM nodes WHERE heartbeat_us > ",
        db_now_us!(),
        " - lease_ms * 1000 ORDER BY node_id LIMIT 1"
    );
    match db {
        Db::Postgres(p) => Ok(sqlx::query_scalar(SQL).fetch_optional(p).await?),
        Db::Sqlite(_) => Ok(None),
    }
}

/// Registers this node (or updates its row after a restart) with a fresh heartbeat.
pub async fn register_node(db: &Db, node: &NodeRow) -> Result<()> {
    const SQL: &str = concat!(
        "INSERT INTO nodes (node_id, advertise_host, api_port, video_port, lease_ms, started_us, \
             heartbeat_us) VALUES ($1, $2, $3, $4, $5, ",
        db_now_us!(),
        ", ",
        db_now_us!(),
        ") ON CONFLICT (node_id) DO UPDATE SET advertise_host = EXCLUDED.advertise_host, \
             api_port = EXCLUDED.api_port, video_port = EXCLUDED.video_port, \
             lease_ms = EXCLUDED.lease_ms, started_us = EXCLUDED.started_us, \
             heartbeat_us = EXCLUDED.heartbeat_us"
    );
    sqlx::query(SQL)
        .bind(&node.node_id)
        .bind(&node.advertise_host)
        .bind(node.api_port)
        .bind(node.video_port)
        .bind(node.lease_ms)
        .execute(pg(db)?)
        .await?;
    Ok(())
}

/// Frees every lease `node_id` holds (at start, so a restarted node takes its streams again
/// under new epochs; at shutdown, after its cameras stopped, so others take them at once).
pub async fn release_all(db: &Db, node_id: &str) -> Result<u64> {
    const SQL: &str = "UPDATE stream_leases SET owner = NULL, expires_us = 0 WHERE owner = $1";
    Ok(sqlx::query(SQL)
        .bind(node_id)
        .execute(pg(db)?)
        .await?
        .rows_affected())
}

/// A node leaving on purpose (graceful shutdown): its heartbeat is set just past its liveness
/// window, so the other nodes stop counting it when they share the cameras out at once instead of
/// a lease later. The row stays (with a heartbeat `lease_ms` before the stop).
pub async fn leave(db: &Db, node_id: &str) -> Result<()> {
    const SQL: &str = concat!(
        "UPDATE nodes SET heartbeat_us = ",
        db_now_us!(),
        " - lease_ms * 1000 WHERE node_id = $1"
    );
    sqlx::query(SQL).bind(node_id).execute(pg(db)?).await?;
    Ok(())
}

/// Wakes every node's lease pass (their listeners take any `stream_changed` notification as a
/// reason to look): leases were just released and are free to take.
pub async fn announce_free_leases(db: &Db) -> Result<()> {
    sqlx::query("SELECT pg_notify('stream_changed', 'leases')")
        .execute(pg(db)?)
        .await?;
    Ok(())
}

/// Frees one lease if `node_id` still holds it under `epoch` (its camera has stopped).
pub async fn release(db: &Db, node_id: &str, stream_id: Uuid, epoch: i64) -> Result<()> {
    const SQL: &str = "UPDATE stream_leases SET owner = NULL, expires_us = 0 \
        WHERE stream_id = $1 AND owner = $2 AND epoch = $3";
    sqlx::query(SQL)
        .bind(stream_id)
        .bind(node_id)
        .bind(epoch)
        .execute(pg(db)?)
        .await?;
    Ok(())
}

/// One lease pass's bookkeeping in one transaction: the node's heartbeat, a lease row for every
/// enabled stream and none for the others, and the renewal of this node's leases. Returns the
/// leases renewed (`stream_id`, `epoch`): a lease this node thought it held and that is missing
/// here was lost (taken over after expiry, or its stream disabled).
pub async fn heartbeat_and_renew(
    db: &Db,
    node_id: &str,
    lease_ms: i64,
) -> Result<Vec<(Uuid, i64)>> {
    const BEAT: &str = concat!(
        "UPDATE nodes SET heartbeat_us = ",
        db_now_us!(),
        " WHERE node_id = $1"
    );
    const ADD: &str = "INSERT INTO stream_leases (stream_id, owner, expires_us, epoch) \
        SELECT id, NULL, 0, 0 FROM streams WHERE enabled ON CONFLICT (stream_id) DO NOTHING";
    const DROP: &str = "DELETE FROM stream_leases WHERE stream_id NOT IN \
        (SELECT id FROM streams WHERE enabled)";
    const RENEW: &str = concat!(
        "UPDATE stream_leases SET expires_us = ",
        db_now_us!(),
        " + $2 * 1000 WHERE owner = $1 AND expires_us > ",
        db_now_us!(),
        " RETURNING stream_id, epoch"
    );
    let p = pg(db)?;
    let mut tx = p.begin().await?;
    let beat = sqlx::query(BEAT).bind(node_id).execute(&mut *tx).await?;
    if beat.rows_affected() == 0 {
        return Err(DbError::Corrupt(format!(
            "node {node_id} has no row in `nodes`"
        )));
    }
    sqlx::query(ADD).execute(&mut *tx).await?;
    sqlx::query(DROP).execute(&mut *tx).await?;
    let renewed: Vec<(Uuid, i64)> = sqlx::query_as(RENEW)
        .bind(node_id)
        .bind(lease_ms)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(renewed)
}

/// The cluster as the lease pass sees it: how many streams are enabled, and for every live node
/// (heartbeat within its lease length) how many unexpired leases it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shares {
    pub streams: i64,
    /// `(node_id, leases held)` of the live nodes.
    pub live: Vec<(String, i64)>,
}

/// Reads [`Shares`].
pub async fn shares(db: &Db) -> Result<Shares> {
    const STREAMS: &str = "SELECT COUNT(*) FROM streams WHERE enabled";
    const LIVE: &str = concat!(
        "SELECT n.node_id, COUNT(l.stream_id) FROM nodes n \
         LEFT JOIN stream_leases l ON l.owner = n.node_id AND l.expires_us > ",
        db_now_us!(),
        " WHERE n.heartbeat_us > ",
        db_now_us!(),
        " - n.lease_ms * 1000 GROUP BY n.node_id ORDER BY n.node_id"
    );
    let p = pg(db)?;
    let streams: i64 = sqlx::query_scalar(STREAMS).fetch_one(p).await?;
    let live: Vec<(String, i64)> = sqlx::query_as(LIVE).fetch_all(p).await?;
    Ok(Shares { streams, live })
}

/// Takes up to `limit` free or expired leases for `node_id`, each under a new epoch. Rows another
/// node is taking at the same moment are skipped, not waited for.
pub async fn take(db: &Db, node_id: &str, lease_ms: i64, limit: i64) -> Result<Vec<(Uuid, i64)>> {
    const SQL: &str = concat!(
        "UPDATE stream_leases SET owner = $1, expires_us = ",
        db_now_us!(),
        " + $2 * 1000, epoch = epoch + 1 \
         WHERE stream_id IN ( \
             SELECT stream_id FROM stream_leases \
             WHERE owner IS NULL OR expires_us <= ",
        db_now_us!(),
        " ORDER BY stream_id LIMIT $3 FOR UPDATE SKIP LOCKED) \
           AND (owner IS NULL OR expires_us <= ",
        db_now_us!(),
        ") RETURNING stream_id, epoch"
    );
    Ok(sqlx::query_as(SQL)
        .bind(node_id)
        .bind(lease_ms)
        .bind(limit)
        .fetch_all(pg(db)?)
        .await?)
}

/// Every node, by id.
pub async fn nodes(db: &Db) -> Result<Vec<NodeRow>> {
    const SQL: &str = "SELECT node_id, advertise_host, api_port, video_port, lease_ms, \
        started_us, heartbeat_us FROM nodes ORDER BY node_id";
    Ok(sqlx::query_as(SQL).fetch_all(pg(db)?).await?)
}

/// Every held, unexpired lease, by stream.
pub async fn leases(db: &Db) -> Result<Vec<LeaseRow>> {
    const SQL: &str = concat!(
        "SELECT stream_id, owner, expires_us, epoch FROM stream_leases \
         WHERE owner IS NOT NULL AND expires_us > ",
        db_now_us!(),
        " ORDER BY stream_id"
    );
    let rows: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(SQL).fetch_all(pg(db)?).await?;
    Ok(rows
        .into_iter()
        .map(|(stream_id, owner, expires_us, epoch)| LeaseRow {
            stream_id,
            owner,
            expires_us,
            epoch,
        })
        .collect())
}

/// The owner of a stream's lease while it is held and unexpired.
pub async fn owner_of(db: &Db, stream_id: Uuid) -> Result<Option<NodeRow>> {
    const SQL: &str = concat!(
        "SELECT n.node_id, n.advertise_host, n.api_port, n.video_port, n.lease_ms, \
                n.started_us, n.heartbeat_us \
         FROM stream_leases l JOIN nodes n ON n.node_id = l.owner \
         WHERE l.stream_id = $1 AND l.expires_us > ",
        db_now_us!()
    );
    Ok(sqlx::query_as(SQL)
        .bind(stream_id)
        .fetch_optional(pg(db)?)
        .await?)
}

/// The node that recorded the filesystem segment stored at `storage_key`, with its address
/// (cluster mode: where another node reads a file not uploaded yet). `None` when no such row, or
/// the row names no node (recorded outside cluster mode) or a node `nodes` does not know.
pub async fn recording_node(db: &Db, storage_key: &str) -> Result<Option<NodeRow>> {
    const SQL: &str = "SELECT n.node_id, n.advertise_host, n.api_port, n.video_port, n.lease_ms, \
                n.started_us, n.heartbeat_us \
         FROM segments s JOIN nodes n ON n.node_id = s.node_id \
         WHERE s.storage_key = $1 AND s.storage = 'filesystem' LIMIT 1";
    Ok(sqlx::query_as(SQL)
        .bind(storage_key)
        .fetch_optional(pg(db)?)
        .await?)
}

/// Whether `storage_key` is a filesystem segment recorded by `node_id` (what the internal segment
/// endpoint serves, and nothing else).
pub async fn is_local_segment(db: &Db, storage_key: &str, node_id: &str) -> Result<bool> {
    const SQL: &str = "SELECT EXISTS (SELECT 1 FROM segments \
         WHERE storage_key = $1 AND storage = 'filesystem' AND node_id = $2)";
    Ok(sqlx::query_scalar(SQL)
        .bind(storage_key)
        .bind(node_id)
        .fetch_one(pg(db)?)
        .await?)
}

/// Checks a segment write's fence inside the transaction that writes the row (implemented for
/// both engines' connections, so the shared query code can call it; leases exist on Postgres
/// only, so a fence on SQLite is refused).
pub(crate) trait FenceCheck {
    /// Fails with [`DbError::Fenced`] unless `fence` (when given) still holds the stream's lease,
    /// and keeps the lease row share-locked until the transaction ends, so a takeover (which
    /// updates that row) waits for the write or comes before it.
    async fn check_fence(&mut self, stream_id: Uuid, fence: Option<&Fence>) -> Result<()>;
}

impl FenceCheck for sqlx::PgConnection {
    async fn check_fence(&mut self, stream_id: Uuid, fence: Option<&Fence>) -> Result<()> {
        const SQL: &str = "SELECT epoch FROM stream_leases \
            WHERE stream_id = $1 AND owner = $2 FOR SHARE";
        let Some(fence) = fence else { return Ok(()) };
        let epoch: Option<i64> = sqlx::query_scalar(SQL)
            .bind(stream_id)
            .bind(&*fence.node_id)
            .fetch_optional(&mut *self)
            .await?;
        if epoch == Some(fence.epoch) {
            Ok(())
        } else {
            Err(DbError::Fenced {
                stream: stream_id,
                epoch: fence.epoch,
            })
        }
    }
}

impl FenceCheck for sqlx::SqliteConnection {
    async fn check_fence(&mut self, _stream_id: Uuid, fence: Option<&Fence>) -> Result<()> {
        match fence {
            None => Ok(()),
            Some(_) => Err(DbError::NeedsPostgres),
        }
    }
}
