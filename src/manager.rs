//! The stream manager: the one place that starts, stops and reports on running streams.
//!
//! **One owner per stream.** Every change of a stream is "write the row, then apply it", and both
//! steps run under that stream's lock ([`StreamManager::lock`] → [`StreamLock`]): the API (POST,
//! PUT, PATCH, DELETE, `enable_camera`, `disable_camera`), start-up and shutdown. Only a
//! [`StreamLock`] can start or stop a runtime, so two requests for one stream are applied one after
//! the other, in the order their rows were written, and the runtime matches the last row.
//!
//! **Exactly one runtime per stream.** A runtime being replaced is cancelled and awaited before
//! its successor starts: its RTSP session is closed, its recorder has closed its segment and its
//! HLS writer has stopped. A task that does not stop within [`STOP_TIMEOUT`] is logged as an error
//! and aborted, and still awaited: nothing keeps running unaccounted.
//!
//! A change that does not touch the media path (name, retention, S3 bucket or prefix; see
//! [`StreamSpec::same_media_path`]) only replaces the running spec: viewers, the source session and
//! the recorder carry on.
//!
//! The video listener finds a running stream's hub and demand tracker here (never in SQL) on its
//! hot path. Each running stream is a [`StreamRuntime`]: a hub, a source supervisor, and the output
//! tasks (HLS segmenter, recorder), all under one cancellation token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{OwnedMutexGuard, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::archive::recorder::{Recorder, RecorderConfig, RecorderStats};
use crate::archive::retention::RetentionTrigger;
use crate::config::Config;
use crate::db::Db;
use crate::db::cluster::Fence;
use crate::hub::Hub;
use crate::roots::{FileRoots, StorageRoots};
use crate::source::supervisor::{Demand, HealthProbe, Supervisor};
use crate::source::{StatusCell, lock_status};
use crate::stream::{OutputType, StreamSpec};

/// How long stopping a stream waits for its tasks before aborting them. Every task selects on
/// cancellation, so this is only hit by a bug (a task stuck in a blocking call or a loop without
/// an await); it is logged as an error and counted ([`RuntimeCounters::stop_timeouts`]).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Probes running at once across all streams (go-original.md §6.6: at most 8).
const MAX_PARALLEL_PROBES: usize = 8;

/// Connections reserved for the recorders' index writes (a pool of their own, so API load cannot
/// starve them). Each write is a short transaction; a few connections serve hundreds of cameras.
const RECORDER_CONNECTIONS: u32 = 4;

// Defined with the stream model, below both this module and `source` (which fills it in).
pub use crate::stream::StreamStatus;

/// Runtime starts and stops since the process started, for operators and `/metrics`.
#[derive(Debug, Default)]
pub struct RuntimeCounters {
    /// Runtimes started (a stream's source, outputs and recorder launched).
    pub started: AtomicU64,
    /// Runtimes stopped and awaited (replaced, disabled, deleted, or shut down).
    pub stopped: AtomicU64,
    /// Changes applied to a running stream without restarting it (name, retention, ...).
    pub spec_updates: AtomicU64,
    /// Stops whose tasks did not finish within [`STOP_TIMEOUT`] and were aborted.
    pub stop_timeouts: AtomicU64,
    /// Runtime tasks that ended with a panic (found when the runtime was awaited).
    pub task_panics: AtomicU64,
}

/// A copy of [`RuntimeCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeCounts {
    pub started: u64,
    pub stopped: u64,
    pub spec_updates: u64,
    pub stop_timeouts: u64,
    pub task_panics: u64,
}

impl RuntimeCounters {
    /// The counters, with `started` and `stopped` as they were at one moment however starts and
    /// stops race, so `started - stopped` is the number of runtimes alive then. Both only grow: a
    /// `stopped` read between two equal reads of `started` pairs with that value. Starts are rare,
    /// so the reads agree at once or after a retry; should they keep moving, `stopped` read before
    /// `started` still never exceeds it (a runtime starts before it stops; acquire loads against
    /// the release of [`bump`]).
    pub fn snapshot(&self) -> RuntimeCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Acquire);
        let (mut started, mut stopped) = (0, 0);
        for _ in 0..64 {
            let before = get(&self.started);
            stopped = get(&self.stopped);
            started = get(&self.started);
            if before == started {
                break;
            }
        }
        RuntimeCounts {
            started,
            stopped,
            spec_updates: get(&self.spec_updates),
            stop_timeouts: get(&self.stop_timeouts),
            task_panics: get(&self.task_panics),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::AcqRel);
}

/// One running stream.
pub struct StreamRuntime {
    /// The stream's current settings. Replaced in place by changes that do not touch the media
    /// path; a media-path change makes a new runtime instead.
    spec: RwLock<StreamSpec>,
    pub hub: Arc<Hub>,
    pub status: StatusCell,
    pub demand: Arc<Demand>,
    /// The recorder's counters, when the stream records.
    recorder: Option<Arc<RecorderStats>>,
    /// The HLS writer's counters, when the stream has an HLS output.
    hls: Option<Arc<crate::hls_writer::HlsStats>>,
    /// Cancels the supervisor and every output task of this stream.
    cancel: CancellationToken,
    /// The supervisor and output tasks, awaited (and aborted if stuck) on stop.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl StreamRuntime {
    /// Resolves once this runtime is stopped: the stream was deleted, disabled or restarted with
    /// new settings (a new runtime replaces it), or the server is shutting down.
    pub async fn stopped(&self) {
        self.cancel.cancelled().await;
    }

    /// The recorder's counters (segments written, index backlog, dropped bytes, clock
    /// corrections...), when the stream records.
    pub fn recorder_stats(&self) -> Option<Arc<RecorderStats>> {
        self.recorder.clone()
    }

    /// The HLS writer's counters (segments written, dropped bytes), when the stream has HLS.
    pub fn hls_stats(&self) -> Option<Arc<crate::hls_writer::HlsStats>> {
        self.hls.clone()
    }

    /// The stream's current settings.
    pub fn spec(&self) -> StreamSpec {
        self.spec.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the stream serves this live output (fixed for a runtime's life).
    pub fn has_output(&self, o: OutputType) -> bool {
        self.spec
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .has_output(o)
    }

    pub fn status(&self) -> StreamStatus {
        let mut st = lock_status(&self.status).clone();
        st.viewers = self.demand.viewers();
        st.lag_skips = self.hub.skips();
        st.params = self.hub.params().borrow().clone();
        st
    }
}

/// Owns the set of active streams. Cheap to share behind an `Arc`.
pub struct StreamManager {
    config: Arc<Config>,
    /// The index, for recorders: a pool of their own ([`RECORDER_CONNECTIONS`]).
    recorder_db: Db,
    /// Recorders ask retention for room through this when their disk is full.
    retention: RetentionTrigger,
    /// Active (enabled) streams by id. A std lock: never held across an await.
    streams: RwLock<HashMap<Uuid, Arc<StreamRuntime>>>,
    /// Per-stream owner locks ([`StreamManager::lock`]). An entry lives while someone holds or
    /// waits for it, so the map does not grow with every id a client ever sent.
    owners: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// Parent of every stream's token: cancelled on shutdown, after which nothing starts.
    root: CancellationToken,
    probe_limiter: Arc<Semaphore>,
    counters: RuntimeCounters,
    /// Where file sources may read from.
    files: Arc<FileRoots>,
    /// Where recorders may write.
    storage_roots: StorageRoots,
    /// Which storage roots are available: recorders pause while theirs is not.
    marked_roots: std::sync::OnceLock<Arc<crate::archive::markers::MarkedRoots>>,
    /// Cluster mode: the streams whose camera lease this node holds, each with the lease its
    /// recorder writes under. Only these run here; changed only under the stream's lock (by
    /// `crate::cluster`). `None` on a single node, where every enabled stream runs.
    holds: Option<Mutex<HashMap<Uuid, Fence>>>,
    /// Cluster mode: this node's id, once registered.
    node_id: std::sync::OnceLock<Arc<str>>,
}

/// Exclusive ownership of one stream: hold it across "write the row, then apply it". Obtained
/// from [`StreamManager::lock`]; released on drop.
pub struct StreamLock<'a> {
    manager: &'a StreamManager,
    id: Uuid,
    guard: Option<OwnedMutexGuard<()>>,
}

impl StreamLock<'_> {
    /// The stream this lock owns.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Makes the runtime match a stored spec: runs it when enabled (restarting only if the media
    /// path changed), stops it otherwise.
    pub async fn apply(&self, spec: &StreamSpec) {
        if spec.id != self.id {
            tracing::error!(lock = %self.id, spec = %spec.id, "spec applied under another stream's lock: ignored");
            return;
        }
        let m = self.manager;
        if !spec.enabled || !m.holds_lease(self.id) {
            m.stop_runtime(self.id).await;
            return;
        }
        if let Some(rt) = m.runtime(self.id) {
            let mut current = rt.spec.write().unwrap_or_else(|p| p.into_inner());
            if current.same_media_path(spec) {
                if *current != *spec {
                    *current = spec.clone();
                    bump(&m.counters.spec_updates);
                    tracing::info!(stream = %self.id, "stream settings updated without a restart");
                }
                return;
            }
        }
        m.stop_runtime(self.id).await;
        m.start_runtime(spec);
    }

    /// Stops the stream's runtime, if any, and waits until its tasks have finished.
    pub async fn stop(&self) {
        self.manager.stop_runtime(self.id).await;
    }

    /// Cluster mode: this node now holds the stream's camera lease (`fence`); the next
    /// [`apply`](Self::apply) runs it. Ignored on a single node.
    pub fn hold(&self, fence: Fence) {
        if let Some(holds) = &self.manager.holds {
            lock_holds(holds).insert(self.id, fence);
        }
    }

    /// Cluster mode: gives the stream's lease up. Stops the runtime first, so when this returns
    /// the camera is no longer recorded here and the lease may go to another node. Returns the
    /// lease that was held.
    pub async fn release(&self) -> Option<Fence> {
        let fence = self
            .manager
            .holds
            .as_ref()
            .and_then(|holds| lock_holds(holds).remove(&self.id));
        self.manager.stop_runtime(self.id).await;
        fence
    }
}

fn lock_holds(
    holds: &Mutex<HashMap<Uuid, Fence>>,
) -> std::sync::MutexGuard<'_, HashMap<Uuid, Fence>> {
    holds.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for StreamLock<'_> {
    fn drop(&mut self) {
        // Release first, then forget the entry if nobody else holds or waits for it (every
        // holder or waiter owns a clone of the `Arc`, taken under the map lock).
        drop(self.guard.take());
        let mut owners = self.manager.owners();
        if owners
            .get(&self.id)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            owners.remove(&self.id);
        }
    }
}

impl StreamManager {
    /// A manager whose recorders index through their own pool on `db`'s database.
    pub fn new(config: Arc<Config>, db: Db) -> Arc<Self> {
        Arc::new(Self {
            holds: config.cluster.enabled.then(Default::default),
            files: Arc::new(FileRoots::from_config(&config)),
            storage_roots: StorageRoots::from_config(&config),
            config,
            recorder_db: db.sibling(RECORDER_CONNECTIONS),
            retention: RetentionTrigger::default(),
            streams: RwLock::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            root: CancellationToken::new(),
            probe_limiter: Arc::new(Semaphore::new(MAX_PARALLEL_PROBES)),
            counters: RuntimeCounters::default(),
            marked_roots: std::sync::OnceLock::new(),
            node_id: std::sync::OnceLock::new(),
        })
    }

    /// Cluster mode: records this node's id (for the API's view of the cluster).
    pub fn attach_node_id(&self, id: Arc<str>) {
        if self.node_id.set(id).is_err() {
            tracing::warn!("cluster node id attached twice: the first stays");
        }
    }

    /// Cluster mode: this node's id; `None` on a single node.
    pub fn node_id(&self) -> Option<Arc<str>> {
        self.node_id.get().cloned()
    }

    /// Whether this node may run the stream: always on a single node; in cluster mode while it
    /// holds the stream's camera lease.
    pub fn holds_lease(&self, id: Uuid) -> bool {
        self.holds
            .as_ref()
            .is_none_or(|holds| lock_holds(holds).contains_key(&id))
    }

    /// Cluster mode: the leases this node holds, by stream (empty on a single node).
    pub fn held(&self) -> Vec<(Uuid, Fence)> {
        let mut all: Vec<_> = self
            .holds
            .as_ref()
            .map(|holds| {
                lock_holds(holds)
                    .iter()
                    .map(|(id, f)| (*id, f.clone()))
                    .collect()
            })
            .unwrap_or_default();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    fn fence_of(&self, id: Uuid) -> Option<Fence> {
        self.holds
            .as_ref()
            .and_then(|holds| lock_holds(holds).get(&id).cloned())
    }

    /// Recorders started from now on pause while their storage root is unavailable.
    pub fn attach_roots(&self, roots: Arc<crate::archive::markers::MarkedRoots>) {
        if self.marked_roots.set(roots).is_err() {
            tracing::warn!("storage roots attached twice: the first stays");
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What recorders wake when their disk is full; hand it to the retention task.
    pub fn retention_trigger(&self) -> RetentionTrigger {
        self.retention.clone()
    }

    /// Where file sources may read from (`[sources] file_roots`).
    pub fn files(&self) -> &Arc<FileRoots> {
        &self.files
    }

    /// Where recorders may write (`Config::storage_roots`).
    pub fn storage_roots(&self) -> &StorageRoots {
        &self.storage_roots
    }

    /// Runtime starts and stops so far.
    pub fn counters(&self) -> &RuntimeCounters {
        &self.counters
    }

    /// Waits for exclusive ownership of a stream. Requests for one stream queue here in arrival
    /// order (tokio's mutex is fair); other streams are not affected.
    pub async fn lock(&self, id: Uuid) -> StreamLock<'_> {
        let mutex = self.owners().entry(id).or_default().clone();
        let guard = mutex.lock_owned().await;
        StreamLock {
            manager: self,
            id,
            guard: Some(guard),
        }
    }

    /// Starts the runtime of an enabled spec. The caller holds the stream's lock and has stopped
    /// any previous runtime.
    fn start_runtime(&self, spec: &StreamSpec) {
        if self.root.is_cancelled() {
            tracing::debug!(stream = %spec.id, "shutting down: stream not started");
            return;
        }
        let c = &self.config;
        let on_demand = c.on_demand_for(spec);
        let mut records = spec.archive.recording && c.archive.recording;
        if records && !self.storage_roots.contains(&self.archive_dir(spec)) {
            // Only reachable with a row written before the roots were enforced (the API refuses
            // such directories): run the stream, but write nothing outside the roots.
            tracing::error!(stream = %spec.id, directory = %self.archive_dir(spec).display(),
                roots = %self.storage_roots.describe(),
                "archive directory lies outside the storage roots: not recording");
            records = false;
        }
        let demand = Demand::new(
            !on_demand || records,
            Duration::from_millis(u64::try_from(c.on_demand.idle_ms).unwrap_or(30_000)),
        );
        let probe = (on_demand && c.on_demand.health_check).then(|| HealthProbe {
            interval: Duration::from_millis(
                u64::try_from(c.on_demand.health_interval_ms).unwrap_or(30_000),
            ),
            timeout: Duration::from_millis(
                u64::try_from(c.on_demand.health_timeout_ms).unwrap_or(3_000),
            ),
            limiter: self.probe_limiter.clone(),
        });
        let hub = Hub::new();
        let status: StatusCell = Default::default();
        let cancel = self.root.child_token();
        let mut tasks = Vec::new();
        let span = tracing::info_span!("stream", id = %spec.id);
        let supervisor = Supervisor {
            spec: spec.clone(),
            hub: hub.clone(),
            status: status.clone(),
            demand: demand.clone(),
            probe,
            files: self.files.clone(),
        };
        tasks.push(tokio::spawn(
            supervisor.run(cancel.clone()).instrument(span.clone()),
        ));
        let mut hls_stats = None;
        if spec.has_output(OutputType::Hls) {
            let writer = crate::hls_writer::HlsWriter::new(
                spec.id,
                &c.hls,
                hub.subscribe(crate::hls_writer::QUEUE_FRAMES),
            );
            hls_stats = Some(writer.stats());
            tasks.push(tokio::spawn(
                writer.run(cancel.clone()).instrument(span.clone()),
            ));
        }
        let mut recorder_stats = None;
        if records {
            let recorder = Recorder::new(
                RecorderConfig {
                    stream_id: spec.id,
                    directory: self.archive_dir(spec),
                    ms_per_file: c.ms_per_file_for(spec),
                    storage: spec.archive.storage,
                },
                self.recorder_db.clone(),
                hub.subscribe_bounded(
                    crate::archive::recorder::QUEUE_FRAMES,
                    crate::archive::recorder::QUEUE_BYTES,
                ),
            )
            .with_max_drift(c.archive.max_drift())
            .with_retention(self.retention.clone())
            .with_fence(self.fence_of(spec.id));
            let recorder = match self.marked_roots.get() {
                Some(roots) => recorder.with_roots(roots.clone()),
                None => recorder,
            };
            recorder_stats = Some(recorder.stats());
            tasks.push(tokio::spawn(
                recorder.run(cancel.clone()).instrument(span.clone()),
            ));
        }
        let rt = Arc::new(StreamRuntime {
            spec: RwLock::new(spec.clone()),
            hub,
            status,
            demand,
            recorder: recorder_stats,
            hls: hls_stats,
            cancel,
            tasks: Mutex::new(tasks),
        });
        if let Some(old) = self.write().insert(spec.id, rt) {
            // Unreachable while every caller holds the stream's lock and stops first; should it
            // ever happen, the old runtime must not keep running unowned.
            tracing::error!(stream = %spec.id, "a runtime was replaced without being stopped: cancelling it");
            old.cancel.cancel();
        }
        bump(&self.counters.started);
        tracing::info!(stream = %spec.id, source = %spec.source.display_url(), on_demand, records, "stream started");
    }

    /// The archive directory of a stream: its own, else `[archive] directory`. Absolute, so the
    /// file paths stored in the index do not depend on the working directory of a later run.
    pub fn archive_dir(&self, spec: &StreamSpec) -> std::path::PathBuf {
        let dir = std::path::PathBuf::from(
            spec.archive
                .directory
                .as_deref()
                .unwrap_or(self.config.archive.directory()),
        );
        std::path::absolute(&dir).unwrap_or(dir)
    }

    /// Removes a stream's runtime and waits until its tasks have finished. The caller holds the
    /// stream's lock. Unknown ids are a no-op.
    async fn stop_runtime(&self, id: Uuid) {
        let Some(rt) = self.write().remove(&id) else {
            return;
        };
        rt.cancel.cancel();
        // From here the source session closes and the recorder writes nothing more; waiting for
        // the tasks may take a few seconds more (index writes drain).
        tracing::info!(stream = %id, "stream stopping");
        let handles = std::mem::take(&mut *rt.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        let mut all = futures::future::join_all(handles);
        let results = match tokio::time::timeout(STOP_TIMEOUT, &mut all).await {
            Ok(results) => results,
            Err(_) => {
                bump(&self.counters.stop_timeouts);
                tracing::error!(stream = %id, timeout_s = STOP_TIMEOUT.as_secs(),
                    "stream tasks did not stop after cancellation: aborting them");
                for a in &aborts {
                    a.abort();
                }
                loop {
                    match tokio::time::timeout(STOP_TIMEOUT, &mut all).await {
                        Ok(results) => break results,
                        // Abort takes effect at the task's next await; a task blocking a thread
                        // never reaches one. Keep waiting (and saying so) rather than start a
                        // second runtime next to it.
                        Err(_) => tracing::error!(stream = %id,
                            "aborted stream tasks are still running (blocked?): still waiting"),
                    }
                }
            }
        };
        for r in results {
            if let Err(e) = r
                && e.is_panic()
            {
                bump(&self.counters.task_panics);
                tracing::error!(stream = %id, error = %e, "a stream task panicked");
            }
        }
        bump(&self.counters.stopped);
        tracing::info!(stream = %id, "stream stopped");
    }

    /// A running stream.
    pub fn runtime(&self, id: Uuid) -> Option<Arc<StreamRuntime>> {
        self.read().get(&id).cloned()
    }

    /// Number of running streams.
    pub fn running(&self) -> usize {
        self.read().len()
    }

    /// The spec of an active stream.
    pub fn spec(&self, id: Uuid) -> Option<StreamSpec> {
        self.read().get(&id).map(|rt| rt.spec())
    }

    /// The live status of an active stream.
    pub fn status(&self, id: Uuid) -> Option<StreamStatus> {
        self.read().get(&id).map(|rt| rt.status())
    }

    /// Every running stream's runtime, ordered by id (metrics read their counters).
    pub fn runtimes(&self) -> Vec<(Uuid, Arc<StreamRuntime>)> {
        let mut all: Vec<_> = self
            .read()
            .iter()
            .map(|(id, rt)| (*id, rt.clone()))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    /// The recorders' connection pool (for metrics).
    pub fn recorder_db(&self) -> &Db {
        &self.recorder_db
    }

    /// Every active stream with its status, ordered by id.
    pub fn snapshot(&self) -> Vec<(StreamSpec, StreamStatus)> {
        let mut all: Vec<_> = self
            .read()
            .values()
            .map(|rt| (rt.spec(), rt.status()))
            .collect();
        all.sort_by_key(|(s, _)| s.id);
        all
    }

    /// Stops everything (graceful shutdown). Nothing starts afterwards; each stream is stopped
    /// under its lock, after a change being applied to it has finished.
    pub async fn shutdown(&self) {
        self.root.cancel();
        let ids: Vec<Uuid> = self.read().keys().copied().collect();
        for id in ids {
            self.lock(id).await.stop().await;
        }
        // Recorders have stopped and drained their index writes.
        self.recorder_db.close().await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Uuid, Arc<StreamRuntime>>> {
        // A poisoned lock means a panic happened while holding it; the map itself is still a
        // consistent HashMap, so keep serving rather than cascading the panic.
        self.streams.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Uuid, Arc<StreamRuntime>>> {
        self.streams.write().unwrap_or_else(|p| p.into_inner())
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One stream started and stopped over and over on one thread while another reads the
    /// counters: every snapshot sees zero or one runtime alive, never minus one or two.
    #[test]
    fn snapshots_pair_starts_with_stops() {
        use std::sync::atomic::AtomicBool;
        let counters = Arc::new(RuntimeCounters::default());
        let done = Arc::new(AtomicBool::new(false));
        let flipper = {
            let (counters, done) = (counters.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    bump(&counters.started);
                    bump(&counters.stopped);
                    n += 1;
                }
                n
            })
        };
        let mut seen = [0u64; 2];
        for _ in 0..1_000_000 {
            let n = counters.snapshot();
            let alive = n.started.checked_sub(n.stopped);
            assert!(matches!(alive, Some(0 | 1)), "{n:?}");
            seen[usize::from(alive == Some(1))] += 1;
        }
        done.store(true, Ordering::Relaxed);
        let flips = flipper.join().unwrap_or(0);
        let n = counters.snapshot();
        assert_eq!((n.started, n.stopped), (flips, flips));
        assert!(
            flips > 0 && seen[0] > 0,
            "both ran: {flips} flips, {seen:?}"
        );
    }
}
