//! Wiring: open the index, seed streams, start the runtime and both listeners, shut down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::archive::markers::MarkedRoots;
use crate::archive::repair::Reconciler;
use crate::config::Config;
use crate::db::{self, Db, streams};
use crate::live;
use crate::manager::StreamManager;

/// Connections reserved for the upkeep tasks (retention, S3 uploader): a pool of their own, so
/// API load cannot hold them back (nor they the API).
const UPKEEP_CONNECTIONS: u32 = 3;

/// Start-up failures. Each names what could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(
        "the index is used by a cluster (node {0} is live): set [cluster] enabled = true on this \
         server too, or it would record the cluster's cameras a second time"
    )]
    ClusterRunning(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running server: its bound addresses, and the handle to wait for it to stop.
pub struct Running {
    pub video_addr: SocketAddr,
    pub api_addr: Option<SocketAddr>,
    pub state: AppState,
    tracker: TaskTracker,
}

impl Running {
    /// Waits until both listeners have drained and the runtime has stopped.
    pub async fn wait(self) {
        self.tracker.wait().await;
    }
}

/// Opens the database and applies migrations.
pub async fn open_db(config: &Config) -> Result<Db, ServerError> {
    let db = Db::connect(&config.database.url).await?;
    db.migrate().await?;
    Ok(db)
}

/// Binds a listener. An empty `host` means every interface, IPv6 and IPv4, as the Go original's
/// `:port` did: one dual-stack `[::]` socket (IPv4 clients arrive as v4-mapped addresses), or
/// `0.0.0.0` where the machine has no IPv6.
async fn bind(what: &'static str, host: &str, port: u16) -> Result<TcpListener, ServerError> {
    let failed = |addr: String| move |source| ServerError::Bind { what, addr, source };
    if host.is_empty() {
        match dual_stack(port) {
            Ok(listener) => return Ok(listener),
            Err(e) => tracing::info!(error = %e, what, "no IPv6 listener: listening on IPv4 only"),
        }
        return TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(failed(format!("0.0.0.0:{port}")));
    }
    TcpListener::bind((host, port))
        .await
        .map_err(failed(format!("{host}:{port}")))
}

/// A listening `[::]:port` socket that also accepts IPv4 (`IPV6_V6ONLY` off).
fn dual_stack(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    // What tokio's own bind does on Unix: a restarted server can take its port back at once.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    let addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// `listener` with `TCP_NODELAY` on every accepted connection. Live video is many small writes (a
/// fragment per frame, `pong`); with Nagle's algorithm a write's last partial packet waits for
/// the acknowledgement of the previous one, which the client's delayed ACK holds back up to 40 ms.
/// (A named type rather than `impl Listener`, so axum can give handlers the peer address.)
fn without_nagle(
    listener: TcpListener,
) -> axum::serve::TapIo<TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt;
    fn no_delay(tcp: &mut tokio::net::TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
    }
    listener.tap_io(no_delay as fn(&mut tokio::net::TcpStream))
}

/// Starts everything and returns once both listeners accept connections. Cancelling `shutdown`
/// stops the listeners (in-flight requests finish), then the streams.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, ServerError> {
    let config = Arc::new(config);
    let db = Db::connect(&config.database.url).await?;
    // A SQLite index is one process's: a second server on it stops here, before migrating.
    // Held until the server has stopped (dropped by the shutdown task below).
    let index_lock = db::lock_sqlite(&config.database.url)?;
    db.migrate().await?;
    if !config.cluster.enabled
        && let Some(node) = db::cluster::live_node(&db).await?
    {
        return Err(ServerError::ClusterRunning(node));
    }
    let seeded = streams::seed(&db, &config.streams()?).await?;
    if seeded > 0 {
        tracing::info!(
            count = seeded,
            "streams from the config file added to the database"
        );
    }
    let started_us = db::now_us();
    // Rows up to here were made by earlier runs; a `recording` one among them is a crash's.
    let max_id = db::segments::max_id(&db).await?;
    // Which archive directories are the ones the index knows (markers), before anything trusts
    // a missing file.
    let roots = MarkedRoots::open(db.clone(), config.clone()).await?;
    // Close what a crash left open before any recorder opens new segments.
    crate::archive::repair::repair_recording(&db, &roots, max_id)
        .await
        .map_err(|crate::archive::repair::RepairError::Db(e)| ServerError::Db(e))?;
    let manager = StreamManager::new(config.clone(), db.clone());
    manager.attach_roots(roots.clone());
    for rec in streams::list_all(&db).await? {
        if rec.spec.enabled {
            manager.lock(rec.spec.id).await.apply(&rec.spec).await;
        }
    }
    // Index stray segment files, mark vanished ones, restore returned ones, and retry roots that
    // are unavailable: in the background, until shutdown (awaited before the pool closes).
    let reconciler = Reconciler::new(db.clone(), roots.clone(), started_us, max_id);
    let reconcile = reconciler.counters.clone();
    let reconcile_task = tokio::spawn(reconciler.run(shutdown.child_token()));
    let auth = crate::auth::Auth::new(&config.auth, db.clone()).await?;
    let tracker = TaskTracker::new();
    let video_listener = bind("video", &config.video.host, config.video.port()).await?;
    let video_addr = local_addr(&video_listener)?;
    let api_listener = if config.api.is_enabled() {
        Some(bind("api", &config.api.host, config.api.port()).await?)
    } else {
        None
    };
    let api_addr = api_listener.as_ref().map(local_addr).transpose()?;
    if !config.auth.enabled {
        for addr in exposed_without_auth(&[Some(video_addr), api_addr]) {
            tracing::warn!(
                %addr,
                "AUTH IS OFF on a listener that is not loopback-only: anyone who can reach {addr} \
                 can watch, export, change and delete cameras. Set [auth] enabled = true \
                 (README \"Security\")"
            );
        }
    }
    let node_id = if config.cluster.enabled {
        Some(crate::cluster::resolve_node_id(&config)?)
    } else {
        None
    };
    let mut archive = crate::archive::Archive::new(&config);
    if let Some(id) = &node_id {
        // Filesystem segments other nodes have not uploaded yet are read through them.
        match crate::archive::storage::peer::PeerReads::new(
            db.clone(),
            auth.clone(),
            id.as_str().into(),
        ) {
            Ok(peers) => archive = archive.with_peer_reads(peers),
            Err(e) => tracing::error!(error = %e, "segments local to other nodes cannot be read"),
        }
    }
    let state = AppState {
        config: config.clone(),
        db: db.clone(),
        manager: manager.clone(),
        archive: Arc::new(archive),
        uploads: Default::default(),
        roots: roots.clone(),
        reconcile,
        listeners: api::ListenerPorts {
            video: video_addr.port(),
            api: api_addr.map(|a| a.port()),
        },
        auth,
        limits: Arc::new(crate::limits::Limits::new(&config)),
        metrics: Default::default(),
        webrtc: Arc::new(
            crate::webrtc::WebRtc::start(&config.webrtc, &config.video.host, shutdown.clone())
                .await,
        ),
    };
    state
        .metrics
        .add_pool("recorder", manager.recorder_db().clone());
    // Cluster mode: register this node and start taking camera leases; until then no stream runs.
    let cluster_tasks = if let Some(node_id) = node_id {
        let cluster = crate::cluster::Cluster::start(
            &config,
            &db,
            manager.clone(),
            node_id,
            api_addr.map(|a| a.port()),
            video_addr.port(),
        )
        .await?;
        manager.attach_node_id(cluster.node_id.clone());
        vec![
            tokio::spawn(cluster.clone().listen(shutdown.child_token())),
            tokio::spawn(cluster.run(shutdown.child_token())),
        ]
    } else {
        Vec::new()
    };
    // Stopped after the listeners have drained, so the last requests' entries are written.
    let audit_stop = CancellationToken::new();
    let audit_writer = state.auth.spawn_audit_writer(audit_stop.clone());

    let mut listeners = Vec::new();
    let video_app = live::app(state.clone());
    let token = shutdown.clone();
    listeners.push(tokio::spawn(async move {
        let result = axum::serve(
            without_nagle(video_listener),
            video_app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(token.cancelled_owned())
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "video listener failed");
        }
    }));
    tracing::info!(addr = %video_addr, "video listener ready");

    if let Some(listener) = api_listener {
        let api_app = api::app(state.clone());
        let token = shutdown.clone();
        listeners.push(tokio::spawn(async move {
            let result = axum::serve(
                without_nagle(listener),
                api_app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(token.cancelled_owned())
            .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "api listener failed");
            }
        }));
        if let Some(addr) = api_addr {
            tracing::info!(addr = %addr, "api listener ready");
        }
    } else {
        tracing::info!("api listener disabled ([api] enabled = false)");
    }

    // Archive retention: finishes interrupted deletes, then a pass every `[retention] interval_s`
    // and whenever a recorder finds its disk full.
    let upkeep_db = db.sibling(UPKEEP_CONNECTIONS);
    state.metrics.add_pool("upkeep", upkeep_db.clone());
    let retention = crate::archive::retention::Retention::new(
        upkeep_db.clone(),
        state.archive.clone(),
        config.retention.clone(),
        config.archive.directory(),
    )
    .with_trigger(manager.retention_trigger())
    .with_roots(roots.clone())
    .own_files_only(config.cluster.enabled);
    tracker.spawn(retention.run(shutdown.child_token()));

    // The S3 upload outbox, when an object store is configured.
    let uploader = match config.effective_s3() {
        Some(s3) => match crate::archive::uploader::spawn_uploader(
            upkeep_db.clone(),
            &s3,
            state.uploads.clone(),
            roots.clone(),
            manager.node_id(),
            shutdown.child_token(),
        ) {
            Ok((handle, _waker)) => Some(handle),
            Err(e) => {
                tracing::error!(error = %e, "S3 uploader not started");
                None
            }
        },
        None => None,
    };

    // Once shutdown is requested and the listeners have drained, stop the streams and close the pool.
    let token = shutdown.clone();
    let (m, d, u) = (manager.clone(), db.clone(), upkeep_db);
    tracker.spawn(async move {
        token.cancelled().await;
        for l in listeners {
            if let Err(e) = step("listeners drain", l).await {
                tracing::error!(error = %e, "listener task panicked");
            }
        }
        // Cluster mode: this node's cameras stop and their leases are given back, so the other
        // nodes take them at once instead of after expiry.
        for t in cluster_tasks {
            if let Err(e) = step("cluster leave", t).await {
                tracing::error!(error = %e, "cluster task panicked");
            }
        }
        step("streams stop", m.shutdown()).await;
        // Start-up work (repair, reconciliation, indexing) finishes its step or stops here, before
        // the pool closes under it.
        if let Err(e) = step("start-up reconciliation stops", reconcile_task).await {
            tracing::error!(error = %e, "reconciliation task panicked");
        }
        // Recorders have closed their segments; let in-flight uploads finish or release their rows.
        if let Some(u) = uploader
            && let Err(e) = step("uploads settle", u).await
        {
            tracing::error!(error = %e, "uploader task panicked");
        }
        audit_stop.cancel();
        if let Some(w) = audit_writer
            && let Err(e) = step("audit entries written", w).await
        {
            tracing::error!(error = %e, "audit writer panicked");
        }
        step("upkeep pool closes", u.close()).await;
        step("index pool closes", d.close()).await;
        drop(index_lock);
    });
    tracker.close();

    Ok(Running {
        video_addr,
        api_addr,
        state,
        tracker,
    })
}

/// How long a shutdown step may take before a warning names it (it is still awaited: stopping
/// recorders and uploads early could lose footage).
const SLOW_SHUTDOWN_STEP: Duration = Duration::from_secs(5);

/// Awaits one step of the graceful shutdown, warning every [`SLOW_SHUTDOWN_STEP`] while it is
/// still running, so a stop that hangs says where.
async fn step<F: std::future::Future>(what: &'static str, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let started = tokio::time::Instant::now();
    loop {
        match tokio::time::timeout(SLOW_SHUTDOWN_STEP, &mut fut).await {
            Ok(out) => return out,
            Err(_) => tracing::warn!(
                step = what,
                waited_ms = started.elapsed().as_millis() as u64,
                "shutdown is still waiting for this step"
            ),
        }
    }
}

/// The listener addresses reachable from other machines (not loopback).
pub fn exposed_without_auth(addrs: &[Option<SocketAddr>]) -> Vec<SocketAddr> {
    addrs
        .iter()
        .flatten()
        .filter(|a| !a.ip().is_loopback())
        .copied()
        .collect()
}

fn local_addr(l: &TcpListener) -> Result<SocketAddr, ServerError> {
    l.local_addr().map_err(|source| ServerError::Bind {
        what: "listener",
        addr: "?".into(),
        source,
    })
}
