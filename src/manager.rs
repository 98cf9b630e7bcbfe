//! The stream manager: the one place that starts, stops and reports on running streams.
//!
//! The API and the start-up code call [`StreamManager::start`], [`StreamManager::stop`] and
//! [`StreamManager::restart`]; the video listener looks streams up here (never in SQL) on its hot
//! path. This version records the desired state and the status flags; the media runtime (sources,
//! hub, outputs) plugs in behind the same methods.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::Config;
use crate::stream::StreamSpec;

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
}

struct Entry {
    spec: StreamSpec,
    status: StreamStatus,
}

/// Owns the set of active streams. Cheap to share behind an `Arc`.
pub struct StreamManager {
    config: Arc<Config>,
    /// Active (enabled) streams by id. A std lock: it is never held across an await.
    streams: RwLock<HashMap<Uuid, Entry>>,
}

impl StreamManager {
    pub fn new(config: Arc<Config>) -> Arc<Self> {
        Arc::new(Self {
            config,
            streams: RwLock::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts a stream (or replaces a running one with the same id). Disabled specs are ignored.
    pub async fn start(&self, spec: &StreamSpec) {
        if !spec.enabled {
            self.stop(spec.id).await;
            return;
        }
        let streaming = !self.config.on_demand_for(spec);
        let mut map = self.write();
        let status = map.remove(&spec.id).map(|e| e.status).unwrap_or_default();
        map.insert(
            spec.id,
            Entry {
                spec: spec.clone(),
                status: StreamStatus {
                    streaming,
                    ..status
                },
            },
        );
        tracing::info!(stream = %spec.id, source = %spec.source.display_url(), "stream started");
    }

    /// Stops a stream and waits until it has stopped. Unknown ids are a no-op.
    pub async fn stop(&self, id: Uuid) {
        if self.write().remove(&id).is_some() {
            tracing::info!(stream = %id, "stream stopped");
        }
    }

    /// Applies new settings: stop, then start with the new spec.
    pub async fn restart(&self, spec: &StreamSpec) {
        self.stop(spec.id).await;
        self.start(spec).await;
    }

    /// The spec of an active stream.
    pub fn spec(&self, id: Uuid) -> Option<StreamSpec> {
        self.read().get(&id).map(|e| e.spec.clone())
    }

    /// The live status of an active stream.
    pub fn status(&self, id: Uuid) -> Option<StreamStatus> {
        self.read().get(&id).map(|e| e.status.clone())
    }

    /// Every active stream with its status, ordered by id.
    pub fn snapshot(&self) -> Vec<(StreamSpec, StreamStatus)> {
        let mut all: Vec<_> = self
            .read()
            .values()
            .map(|e| (e.spec.clone(), e.status.clone()))
            .collect();
        all.sort_by_key(|(s, _)| s.id);
        all
    }

    /// Stops everything (graceful shutdown).
    pub async fn shutdown(&self) {
        let ids: Vec<Uuid> = self.read().keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Uuid, Entry>> {
        // A poisoned lock means a panic happened while holding it; the map itself is still a
        // consistent HashMap, so keep serving rather than cascading the panic.
        self.streams.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Uuid, Entry>> {
        self.streams.write().unwrap_or_else(|p| p.into_inner())
    }
}
