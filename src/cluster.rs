//! Scale-out (`[cluster]`): several server processes ("nodes") on one Postgres index and one S3
//! store. Each enabled camera is recorded by exactly one node, the holder of its lease
//! (`stream_leases`, SQL in `db::cluster`); the [`StreamManager`] of a node runs only the streams
//! it holds.
//!
//! **The lease pass** ([`Cluster::run`], every third of `lease_ms`, and at once when a stream
//! changes): one transaction renews this node's heartbeat and leases (and keeps a lease row per
//! enabled stream); leases missing from the renewal were lost and their cameras stop; then the
//! node evens out its share (`plan`): every live node should hold `floor(enabled streams / live
//! nodes)` cameras or one more. Above that it stops and releases the extra cameras (so a node
//! that joins gets its share); below it, it takes free or expired leases (`FOR UPDATE SKIP
//! LOCKED`). Nothing else moves, so a join or a departure moves only the cameras that have to.
//!
//! **No split brain**: a node stops all its cameras when it has not renewed for two thirds of the
//! lease (measured on its own clock from the moment the last successful renewal was *sent*), so it
//! has stopped before the lease expires in the database and anyone else can take it. Should a
//! stale node still write, its segment rows carry the old lease epoch and are refused
//! (`db::cluster::FenceCheck`).
//!
//! **Changes reach the holder at once**: a trigger on `streams` sends `NOTIFY stream_changed`
//! with the stream id; [`Cluster::listen`] applies the row if this node holds it and wakes the
//! lease pass (a new or enabled stream gets a lease row and an owner). Notifications are not
//! queued while disconnected, so every reconnection and every [`RESYNC`] the held streams are
//! re-read and applied (a no-op when nothing changed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::db::cluster::{self as sql, Fence, NodeRow};
use crate::db::{Db, DbError, streams};
use crate::manager::StreamManager;

/// Where a generated node id is kept, inside `[archive] directory` (beside the data it recorded).
pub const NODE_ID_FILE: &str = ".video-server-node-id";

/// Connections of the cluster's own pool: the listener holds one, the lease pass uses one, one
/// spare. Its own pool, so API load never delays a renewal.
const CLUSTER_CONNECTIONS: u32 = 3;

/// How often the held streams are re-read even without a notification (the safety net for a
/// notification lost while the listener was reconnecting).
pub const RESYNC: Duration = Duration::from_secs(30);

/// How long the listener waits before reconnecting after its connection failed.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// How long shutdown spends giving the leases back (the next owners otherwise wait for expiry).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Start-up failures of cluster mode.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster node id file {path}: {source}")]
    NodeIdFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster node id file {path} holds an invalid id {id:?}")]
    BadNodeId { path: String, id: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// This node's id: `[cluster] node_id`, else the id kept in `[archive] directory`
/// ([`NODE_ID_FILE`]), generated on first start.
pub fn resolve_node_id(config: &Config) -> Result<String, ClusterError> {
    if !config.cluster.node_id.is_empty() {
        return Ok(config.cluster.node_id.clone());
    }
    let dir = PathBuf::from(config.archive.directory());
    let path = dir.join(NODE_ID_FILE);
    let failed = |source| ClusterError::NodeIdFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_owned();
            if crate::config::valid_node_id(&id) {
                Ok(id)
            } else {
                Err(ClusterError::BadNodeId {
                    path: path.display().to_string(),
                    id,
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node-{}", &Uuid::new_v4().simple().to_string()[..12]);
            std::fs::create_dir_all(&dir).map_err(failed)?;
            write_new(&path, &id).map_err(failed)?;
            tracing::info!(node_id = %id, file = %path.display(), "cluster node id generated");
            Ok(id)
        }
        Err(e) => Err(failed(e)),
    }
}

/// Writes `id` into a file that must not exist yet, durably.
fn write_new(path: &Path, id: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(format!("{id}\n").as_bytes())?;
    f.sync_all()
}

/// This node's part in the cluster: its identity, the lease pass and the change listener.
pub struct Cluster {
    pub node_id: Arc<str>,
    /// The lease length (`[cluster] lease_ms`).
    pub lease: Duration,
    /// The cluster's own pool (see [`CLUSTER_CONNECTIONS`]).
    db: Db,
    /// The API pool's database, read for stream rows.
    manager: Arc<StreamManager>,
    /// How this node is reached, as registered in `nodes`.
    node: NodeRow,
    /// Wakes the lease pass before its next tick (a stream changed).
    wake: Notify,
    /// Set when the held streams must be re-read (the listener reconnected).
    resync: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// Registers the node (its row in `nodes`) and gives back any lease a previous run of it still
    /// holds, so every stream it records from now on is taken under a new epoch.
    pub async fn start(
        config: &Config,
        db: &Db,
        manager: Arc<StreamManager>,
        node_id: String,
        api_port: Option<u16>,
        video_port: u16,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let lease = config.cluster.lease();
        let db = db.sibling(CLUSTER_CONNECTIONS);
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let node = NodeRow {
            node_id: node_id.clone(),
            advertise_host: config.cluster.advertise_host.clone(),
            api_port: api_port.map(i32::from),
            video_port: i32::from(video_port),
            lease_ms,
            started_us: 0,
            heartbeat_us: 0,
        };
        sql::register_node(&db, &node).await?;
        let released = sql::release_all(&db, &node_id).await?;
        if released > 0 {
            tracing::info!(
                leases = released,
                "camera leases of this node's previous run released"
            );
        }
        tracing::info!(node_id = %node_id, advertise_host = %node.advertise_host,
            lease_ms, "cluster node registered");
        Ok(Arc::new(Cluster {
            node_id: node_id.into(),
            lease,
            db,
            manager,
            node,
            wake: Notify::new(),
            resync: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    /// How this node is registered (host and ports).
    pub fn node(&self) -> &NodeRow {
        &self.node
    }

    fn lease_ms(&self) -> i64 {
        self.node.lease_ms
    }

    /// The lease pass, until `cancel`; then this node's cameras are stopped and its leases given
    /// back.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let every = self.lease / 3;
        // Cameras must have stopped by the time the lease ends; renewals are sent every third of
        // the lease, so this leaves a third for stopping them.
        let fence_after = self.lease * 2 / 3;
        let mut last_ok: Option<Instant> = None;
        let mut last_resync = Instant::now();
        loop {
            let started = Instant::now();
            let holding = !self.manager.held().is_empty();
            let fence_at = last_ok.map(|t| t + fence_after);
            // A slow pass is given until the cameras would have to stop anyway (cancelling it
            // earlier would only turn a slow renewal into a failed one).
            let limit = match fence_at {
                Some(f) if holding => f,
                _ => started + 2 * every,
            };
            let resync = self.resync.swap(false, std::sync::atomic::Ordering::SeqCst)
                || started.duration_since(last_resync) >= RESYNC;
            match tokio::time::timeout_at(limit, self.pass(resync)).await {
                Ok(Ok(())) => {
                    last_ok = Some(started);
                    if resync {
                        last_resync = started;
                    }
                }
                Ok(Err(e)) => {
                    if resync {
                        self.resync.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    tracing::warn!(error = %e, "cluster lease pass failed")
                }
                Err(_) => {
                    if resync {
                        self.resync.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    tracing::warn!(
                        timeout_ms = limit.duration_since(started).as_millis() as u64,
                        "cluster lease pass timed out"
                    )
                }
            }
            let fence_at = last_ok.map(|t| t + fence_after);
            if fence_at.is_some_and(|f| Instant::now() >= f) && !self.manager.held().is_empty() {
                tracing::error!(
                    lease_ms = self.lease_ms(),
                    "camera leases not renewed for two thirds of their length: stopping every \
                     camera of this node before the leases expire"
                );
                self.drop_all().await;
                tracing::warn!("cameras stopped: this node holds no lease");
            }
            let mut next = started + every;
            if let Some(f) = fence_at
                && !self.manager.held().is_empty()
            {
                next = next.min(f);
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(next) => {}
            }
        }
        self.drop_all().await;
        let leave = async {
            sql::leave(&self.db, &self.node_id).await?;
            let n = sql::release_all(&self.db, &self.node_id).await?;
            sql::announce_free_leases(&self.db).await?;
            Ok::<_, DbError>(n)
        };
        match tokio::time::timeout(RELEASE_TIMEOUT, leave).await {
            Ok(Ok(n)) => tracing::info!(leases = n, "camera leases released"),
            Ok(Err(e)) => tracing::warn!(error = %e, "camera leases not released: they expire"),
            Err(_) => tracing::warn!("camera leases not released in time: they expire"),
        }
        self.db.close().await;
    }

    /// Stops every camera this node holds, all at once (each one's index writes may need a few
    /// seconds to drain; cameras stop recording at once). The database is not asked: the leases
    /// simply expire, or are released by the caller.
    async fn drop_all(&self) {
        let held = self.manager.held();
        let stops = held.iter().map(|(id, _)| async move {
            self.manager.lock(*id).await.release().await;
        });
        futures::future::join_all(stops).await;
    }

    /// One lease pass (see the module documentation).
    async fn pass(&self, resync: bool) -> Result<(), DbError> {
        let renewed: HashMap<Uuid, i64> =
            sql::heartbeat_and_renew(&self.db, &self.node_id, self.lease_ms())
                .await?
                .into_iter()
                .collect();
        let held = self.manager.held();
        // Lost: taken over after expiry, or the stream was disabled or deleted.
        for (id, fence) in &held {
            if renewed.get(id) != Some(&fence.epoch) {
                tracing::warn!(stream = %id, epoch = fence.epoch, "camera lease lost: stopping the camera");
                self.manager.lock(*id).await.release().await;
            }
        }
        // Renewed but not held here (a release that did not reach the database): give it back.
        for (id, epoch) in &renewed {
            if !held.iter().any(|(h, _)| h == id) {
                sql::release(&self.db, &self.node_id, *id, *epoch).await?;
            }
        }
        let held = self.manager.held();
        let shares = sql::shares(&self.db).await?;
        match plan(&shares, &self.node_id, held.len()) {
            Plan::Keep => {}
            Plan::GiveUp(n) => {
                // The newest leases by id order from the end: any choice moves as many cameras.
                for (id, fence) in held.iter().rev().take(n) {
                    tracing::info!(stream = %id, held = held.len(),
                        "camera lease given up to even out the cluster");
                    let lock = self.manager.lock(*id).await;
                    lock.release().await;
                    sql::release(&self.db, &self.node_id, *id, fence.epoch).await?;
                }
                sql::announce_free_leases(&self.db).await?;
            }
            Plan::Take(n) => {
                let want = i64::try_from(n).unwrap_or(i64::MAX);
                let taken = sql::take(&self.db, &self.node_id, self.lease_ms(), want).await?;
                for (id, epoch) in taken {
                    tracing::info!(stream = %id, epoch, "camera lease taken");
                    let lock = self.manager.lock(id).await;
                    lock.hold(Fence {
                        node_id: self.node_id.clone(),
                        epoch,
                    });
                    match streams::get(&self.db, id).await {
                        Ok(Some(rec)) => lock.apply(&rec.spec).await,
                        Ok(None) => lock.stop().await,
                        Err(e) => {
                            // Held without running: the next resync applies it.
                            self.resync.store(true, std::sync::atomic::Ordering::SeqCst);
                            return Err(e);
                        }
                    }
                }
            }
        }
        if resync {
            for (id, _) in self.manager.held() {
                self.apply_row(id).await?;
            }
        }
        Ok(())
    }

    /// Applies the stored row of a stream this node holds (a change made through any node).
    async fn apply_row(&self, id: Uuid) -> Result<(), DbError> {
        if !self.manager.holds_lease(id) {
            return Ok(());
        }
        let lock = self.manager.lock(id).await;
        match streams::get(&self.db, id).await? {
            Some(rec) => lock.apply(&rec.spec).await,
            None => lock.stop().await,
        }
        Ok(())
    }

    /// Listens for `stream_changed` notifications until `cancel`: the holder applies the change
    /// at once, and every node's lease pass runs (new or re-enabled streams get an owner).
    pub async fn listen(self: Arc<Self>, cancel: CancellationToken) {
        let Db::Postgres(pool) = &self.db else {
            return;
        };
        loop {
            let connected = async {
                let mut l = sqlx::postgres::PgListener::connect_with(pool).await?;
                l.listen("stream_changed").await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = tokio::select! {
                () = cancel.cancelled() => return,
                r = connected => match r {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for stream changes: retrying");
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(LISTEN_RETRY) => continue,
                        }
                    }
                },
            };
            // What changed while nobody listened is found by re-reading.
            self.resync.store(true, std::sync::atomic::Ordering::SeqCst);
            self.wake.notify_one();
            loop {
                let n = tokio::select! {
                    () = cancel.cancelled() => return,
                    n = listener.try_recv() => n,
                };
                match n {
                    Ok(Some(n)) => {
                        self.wake.notify_one();
                        let Ok(id) = Uuid::parse_str(n.payload()) else {
                            continue;
                        };
                        if let Err(e) = self.apply_row(id).await {
                            tracing::warn!(stream = %id, error = %e,
                                "cannot apply a stream change: retried at the next resync");
                            self.resync.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    // The connection was lost (and is re-established by the next call).
                    Ok(None) => {
                        self.resync.store(true, std::sync::atomic::Ordering::SeqCst);
                        self.wake.notify_one();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "stream change listener failed: reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

/// What a node does about its share in one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Keep,
    /// Stop and release this many cameras.
    GiveUp(usize),
    /// Take up to this many free or expired leases.
    Take(usize),
}

/// A node's move towards an even spread, from the shares of the live nodes: each should hold
/// `base = floor(streams / nodes)` or one more. A node above `base + 1` gives up the extras; a
/// node with one extra gives it up while another node is below `base` (a joiner); a node below
/// `base` takes up to `base`, and a node at `base` takes one more once nobody is below `base`.
/// Only cameras above a share move, so a join or a departure moves no more than needed (a few
/// extra moves can happen while nodes race for the last free leases; each pass converges).
fn plan(shares: &sql::Shares, me: &str, held: usize) -> Plan {
    let nodes = shares.live.len().max(1);
    let streams = usize::try_from(shares.streams).unwrap_or(0);
    let base = streams / nodes;
    let ceil = streams.div_ceil(nodes);
    // Leases nobody live holds (free, or expired with their node).
    let free = shares.streams - shares.live.iter().map(|(_, c)| c).sum::<i64>();
    let others_below_base = shares
        .live
        .iter()
        .any(|(n, c)| n != me && usize::try_from(*c).unwrap_or(0) < base);
    if held > ceil {
        Plan::GiveUp(held - ceil)
    } else if held > base && others_below_base {
        Plan::GiveUp(1)
    } else if free <= 0 {
        Plan::Keep
    } else if held < base {
        Plan::Take(base - held)
    } else if held < ceil && !others_below_base {
        Plan::Take(1)
    } else {
        Plan::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(streams: i64, live: &[(&str, i64)]) -> sql::Shares {
        sql::Shares {
            streams,
            live: live.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect(),
        }
    }

    #[test]
    fn ten_cameras_on_three_nodes_end_up_four_three_three() {
        // Everything free: each node first takes its base share...
        let s = shares(10, &[("a", 0), ("b", 0), ("c", 0)]);
        assert_eq!(plan(&s, "a", 0), Plan::Take(3));
        // ...and one more once nobody is below it.
        let s = shares(10, &[("a", 3), ("b", 3), ("c", 3)]);
        assert_eq!(plan(&s, "a", 3), Plan::Take(1));
        let s = shares(10, &[("a", 4), ("b", 3), ("c", 3)]);
        for (n, held) in [("a", 4), ("b", 3), ("c", 3)] {
            assert_eq!(plan(&s, n, held), Plan::Keep, "{n}");
        }
    }

    #[test]
    fn a_joiner_gets_its_share_and_nothing_else_moves() {
        // Two nodes with 5 each, a third joins: each gives up what is above 4, then one more
        // while the joiner is below 3.
        let s = shares(10, &[("a", 5), ("b", 5), ("c", 0)]);
        assert_eq!(plan(&s, "a", 5), Plan::GiveUp(1));
        assert_eq!(plan(&s, "c", 0), Plan::Keep, "nothing free yet");
        let s = shares(10, &[("a", 4), ("b", 4), ("c", 0)]);
        assert_eq!(plan(&s, "c", 0), Plan::Take(3));
        let s = shares(10, &[("a", 4), ("b", 4), ("c", 2)]);
        assert_eq!(plan(&s, "a", 4), Plan::GiveUp(1));
        assert_eq!(plan(&s, "c", 2), Plan::Keep);
        let s = shares(10, &[("a", 3), ("b", 4), ("c", 2)]);
        // b, not knowing whether c gets a's lease, gives up its extra too: the last free lease
        // goes to whoever takes it first (3, 3, 4 in some order).
        assert_eq!(plan(&s, "b", 4), Plan::GiveUp(1));
        assert_eq!(plan(&s, "c", 2), Plan::Take(1));
        let s = shares(10, &[("a", 3), ("b", 3), ("c", 3)]);
        assert_eq!(plan(&s, "c", 3), Plan::Take(1));
        let s = shares(10, &[("a", 4), ("b", 3), ("c", 3)]);
        assert_eq!(plan(&s, "a", 4), Plan::Keep);
    }

    #[test]
    fn survivors_take_over_a_departed_nodes_cameras() {
        let s = shares(10, &[("b", 3), ("c", 3)]);
        assert_eq!(plan(&s, "b", 3), Plan::Take(2));
        // Alone: everything.
        let s = shares(10, &[("b", 0)]);
        assert_eq!(plan(&s, "b", 0), Plan::Take(10));
        // No streams: nothing to hold.
        let s = shares(0, &[("b", 2)]);
        assert_eq!(plan(&s, "b", 2), Plan::GiveUp(2));
    }
}
