//! The stream manager: the one place that starts, stops and reports on running streams.
//!
//! The API and the start-up code call [`StreamManager::start`], [`StreamManager::stop`] and
//! [`StreamManager::restart`]; the video listener finds a running stream's hub and demand tracker
//! here (never in SQL) on its hot path. Each running stream is a [`StreamRuntime`]: a hub, a source
//! supervisor, and the output tasks (HLS segmenter), all under one cancellation token.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::archive::recorder::{Recorder, RecorderConfig, RecorderStats};
use crate::archive::retention::RetentionTrigger;
use crate::config::Config;
use crate::db::Db;
use crate::hub::Hub;
use crate::source::supervisor::{Demand, HealthProbe, Supervisor};
use crate::source::{StatusCell, lock_status};
use crate::stream::{OutputType, StreamSpec};

/// How long `stop` waits for a stream's tasks to finish. Every task selects on cancellation, so
/// this is only hit by a bug; the stream is forgotten either way.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Probes running at once across all streams (go-original.md §6.6: at most 8).
const MAX_PARALLEL_PROBES: usize = 8;

/// Connections reserved for the recorders' index writes (a pool of their own, so API load cannot
/// starve them). Each write is a short transaction; a few connections serve hundreds of cameras.
const RECORDER_CONNECTIONS: u32 = 4;

/// Live flags of one stream, as `/status` reports them (go-original.md §2.3).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStatus {
    /// Codecs are known after a dial or file open.
    pub status: bool,
    /// Last known reachability of the source.
    pub online: bool,
    /// The upstream loop is running (dialing or receiving).
    pub streaming: bool,
    /// Attached MSE viewers.
    pub viewers: u32,
    pub last_health_check: Option<DateTime<Utc>>,
    pub last_health_error: String,
    /// RFC 6381 codec strings of the tracks being delivered, in track order.
    pub codecs: Vec<String>,
    /// Tracks left out and why (e.g. G.711 audio, which fMP4/MSE cannot carry).
    pub skipped_tracks: Vec<String>,
    /// Times a lagging consumer (viewer, HLS writer, recorder) was skipped ahead to a keyframe.
    pub lag_skips: u64,
}

/// One running stream.
pub struct StreamRuntime {
    pub spec: StreamSpec,
    pub hub: Arc<Hub>,
    pub status: StatusCell,
    pub demand: Arc<Demand>,
    /// The recorder's counters, when the stream records.
    recorder: Option<Arc<RecorderStats>>,
    /// The HLS writer's counters, when the stream has an HLS output.
    hls: Option<Arc<crate::live::hls_writer::HlsStats>>,
    /// Cancels the supervisor and every output task of this stream.
    cancel: CancellationToken,
    /// The supervisor and output tasks, to wait for on stop.
    tasks: TaskTracker,
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
    pub fn hls_stats(&self) -> Option<Arc<crate::live::hls_writer::HlsStats>> {
        self.hls.clone()
    }

    pub fn status(&self) -> StreamStatus {
        let mut st = lock_status(&self.status).clone();
        st.viewers = self.demand.viewers();
        st.lag_skips = self.hub.skips();
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
    /// Parent of every stream's token: cancelled on shutdown.
    root: CancellationToken,
    probe_limiter: Arc<Semaphore>,
}

impl StreamManager {
    /// A manager whose recorders index through their own pool on `db`'s database.
    pub fn new(config: Arc<Config>, db: Db) -> Arc<Self> {
        Arc::new(Self {
            config,
            recorder_db: db.sibling(RECORDER_CONNECTIONS),
            retention: RetentionTrigger::default(),
            streams: RwLock::new(HashMap::new()),
            root: CancellationToken::new(),
            probe_limiter: Arc::new(Semaphore::new(MAX_PARALLEL_PROBES)),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What recorders wake when their disk is full; hand it to the retention task.
    pub fn retention_trigger(&self) -> RetentionTrigger {
        self.retention.clone()
    }

    /// Starts a stream, replacing a running one with the same id. Disabled specs only stop.
    pub async fn start(&self, spec: &StreamSpec) {
        self.stop(spec.id).await;
        if !spec.enabled {
            return;
        }
        let c = &self.config;
        let on_demand = c.on_demand_for(spec);
        let records = spec.archive.recording && c.archive.recording;
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
        let tasks = TaskTracker::new();
        let span = tracing::info_span!("stream", id = %spec.id);
        let supervisor = Supervisor {
            spec: spec.clone(),
            hub: hub.clone(),
            status: status.clone(),
            demand: demand.clone(),
            probe,
        };
        tasks.spawn(supervisor.run(cancel.clone()).instrument(span.clone()));
        let mut hls_stats = None;
        if spec.has_output(OutputType::Hls) {
            let writer = crate::live::hls_writer::HlsWriter::new(
                spec.id,
                &c.hls,
                hub.subscribe(crate::live::hls_writer::QUEUE_FRAMES),
            );
            hls_stats = Some(writer.stats());
            tasks.spawn(writer.run(cancel.clone()).instrument(span.clone()));
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
            .with_retention(self.retention.clone());
            recorder_stats = Some(recorder.stats());
            tasks.spawn(recorder.run(cancel.clone()).instrument(span.clone()));
        }
        tasks.close();
        let rt = Arc::new(StreamRuntime {
            spec: spec.clone(),
            hub,
            status,
            demand,
            recorder: recorder_stats,
            hls: hls_stats,
            cancel,
            tasks,
        });
        self.write().insert(spec.id, rt);
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

    /// Stops a stream and waits (bounded) until its tasks have finished. Unknown ids are a no-op.
    pub async fn stop(&self, id: Uuid) {
        let Some(rt) = self.write().remove(&id) else {
            return;
        };
        rt.cancel.cancel();
        if tokio::time::timeout(STOP_TIMEOUT, rt.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!(stream = %id, "stream tasks did not stop in time");
        }
        tracing::info!(stream = %id, "stream stopped");
    }

    /// Applies new settings: stop, then start with the new spec.
    pub async fn restart(&self, spec: &StreamSpec) {
        self.start(spec).await;
    }

    /// A running stream.
    pub fn runtime(&self, id: Uuid) -> Option<Arc<StreamRuntime>> {
        self.read().get(&id).cloned()
    }

    /// The spec of an active stream.
    pub fn spec(&self, id: Uuid) -> Option<StreamSpec> {
        self.read().get(&id).map(|rt| rt.spec.clone())
    }

    /// The live status of an active stream.
    pub fn status(&self, id: Uuid) -> Option<StreamStatus> {
        self.read().get(&id).map(|rt| rt.status())
    }

    /// Every active stream with its status, ordered by id.
    pub fn snapshot(&self) -> Vec<(StreamSpec, StreamStatus)> {
        let mut all: Vec<_> = self
            .read()
            .values()
            .map(|rt| (rt.spec.clone(), rt.status()))
            .collect();
        all.sort_by_key(|(s, _)| s.id);
        all
    }

    /// Stops everything (graceful shutdown).
    pub async fn shutdown(&self) {
        self.root.cancel();
        let ids: Vec<Uuid> = self.read().keys().copied().collect();
        for id in ids {
            self.stop(id).await;
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
}
