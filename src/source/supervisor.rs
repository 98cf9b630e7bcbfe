//! Keeps one stream's source running: reconnect with exponential backoff and jitter, start and
//! stop on demand, health probes while idle, and the status flags of `/status`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{SessionEnd, SessionSink, SourceError, StatusCell, lock_status};
use crate::hub::Hub;
use crate::stream::{Source, StreamSpec};

/// First retry delay after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay: a camera that is down is retried at least this often.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session that ran this long resets the backoff to the minimum.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// A file without `loop` plays again this long after its end: the Go original's restart pause
/// (2 s, then 5 s) before it started every ended session again.
pub const REPLAY_PAUSE: Duration = Duration::from_secs(7);

/// Who is watching a stream, for on-demand start and stop (go-original.md §6.6).
pub struct Demand {
    /// Recording or not on-demand: always wanted.
    permanent: bool,
    idle: Duration,
    viewers: AtomicU32,
    /// HLS requests (playlists and segments) since the runtime started, for metrics.
    hls_requests: AtomicU64,
    /// Last moment a viewer left or an HLS request came in.
    last_activity: Mutex<Instant>,
    changed: Notify,
}

impl Demand {
    pub fn new(permanent: bool, idle: Duration) -> Arc<Demand> {
        Arc::new(Demand {
            permanent,
            idle,
            viewers: AtomicU32::new(0),
            hls_requests: AtomicU64::new(0),
            last_activity: Mutex::new(Instant::now() - idle),
            changed: Notify::new(),
        })
    }

    fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Registers an MSE viewer; the returned guard unregisters it when dropped.
    pub fn viewer(self: &Arc<Self>) -> ViewerGuard {
        self.viewers.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        ViewerGuard {
            demand: self.clone(),
        }
    }

    /// An HLS request counts as activity for `idle`.
    pub fn hls_request(&self) {
        self.touch();
        self.changed.notify_waiters();
    }

    /// A new HLS request: activity, and counted (for metrics).
    pub fn hls_fetch(&self) {
        self.hls_requests.fetch_add(1, Ordering::Relaxed);
        self.hls_request();
    }

    /// HLS requests served since the runtime started.
    pub fn hls_requests(&self) -> u64 {
        self.hls_requests.load(Ordering::Relaxed)
    }

    pub fn viewers(&self) -> u32 {
        self.viewers.load(Ordering::SeqCst)
    }

    /// Whether the source should run now.
    pub fn wanted(&self) -> bool {
        self.permanent
            || self.viewers() > 0
            || self
                .last_activity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                < self.idle
    }

    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

/// One attached MSE viewer. Dropping it releases the stream (the idle timer starts).
pub struct ViewerGuard {
    demand: Arc<Demand>,
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.demand.touch();
        self.demand.viewers.fetch_sub(1, Ordering::SeqCst);
        self.demand.changed.notify_waiters();
    }
}

/// Health-probe settings for idle on-demand RTSP sources.
#[derive(Clone)]
pub struct HealthProbe {
    pub interval: Duration,
    pub timeout: Duration,
    /// Limits probes running at once across all streams.
    pub limiter: Arc<Semaphore>,
}

/// Everything one supervisor needs.
pub struct Supervisor {
    pub spec: StreamSpec,
    pub hub: Arc<Hub>,
    pub status: StatusCell,
    pub demand: Arc<Demand>,
    pub probe: Option<HealthProbe>,
    /// Where a file source may read from.
    pub files: Arc<crate::roots::FileRoots>,
}

/// The wait before reconnect attempt `failures + 1`: exponential from [`BACKOFF_MIN`], capped at
/// [`BACKOFF_MAX`], with "equal jitter" (half fixed, half random) so many cameras failing together
/// spread out. Always within `BACKOFF_MIN..=BACKOFF_MAX`, the documented 1 s to 30 s: the lower
/// half of the first steps is clamped up, so a flapping camera is never hammered faster.
pub fn backoff_delay(failures: u32) -> Duration {
    let exp = BACKOFF_MIN.saturating_mul(1u32 << failures.min(6));
    let base = exp.min(BACKOFF_MAX);
    let half = base / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    (half + Duration::from_millis(jitter)).clamp(BACKOFF_MIN, BACKOFF_MAX)
}

impl Supervisor {
    /// Runs until `cancel` fires. A file without `loop` plays again [`REPLAY_PAUSE`] after its end.
    pub async fn run(self, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            if !self.demand.wanted() {
                lock_status(&self.status).streaming = false;
                if !self.wait_for_demand(&cancel).await {
                    break;
                }
                continue;
            }
            {
                let mut st = lock_status(&self.status);
                st.streaming = true;
                st.source_sessions += 1;
            }
            self.hub.begin_session();
            let started = Instant::now();
            let mut sink = SessionSink::new(self.hub.clone(), self.status.clone());
            let result = tokio::select! {
                r = self.session(&mut sink, &cancel) => r,
                _ = self.until_idle() => Ok(SessionEnd::Cancelled),
            };
            drop(sink);
            self.hub.end_session();
            {
                let mut st = lock_status(&self.status);
                st.status = false;
                st.codecs.clear();
            }
            if started.elapsed() > HEALTHY_SESSION {
                failures = 0;
            }
            match result {
                Ok(SessionEnd::Finished) => {
                    tracing::info!(
                        replay_in_ms = REPLAY_PAUSE.as_millis() as u64,
                        "source finished (file without loop): played again after the pause"
                    );
                    lock_status(&self.status).streaming = false;
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(REPLAY_PAUSE) => {}
                    }
                }
                Ok(SessionEnd::Cancelled) => {
                    if cancel.is_cancelled() {
                        break;
                    }
                    tracing::info!("no viewers: source stopped (on demand)");
                }
                Err(e) => {
                    let delay = backoff_delay(failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "source failed");
                    {
                        let mut st = lock_status(&self.status);
                        st.online = false;
                        st.source_failures += 1;
                        // The category only: the text may quote what answered at the camera's
                        // address (the log has it).
                        st.last_health_error = e.category().as_str().to_owned();
                        st.last_health_check = Some(chrono::Utc::now());
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        let mut st = lock_status(&self.status);
        st.streaming = false;
        st.status = false;
    }

    async fn session(
        &self,
        sink: &mut SessionSink,
        cancel: &CancellationToken,
    ) -> Result<SessionEnd, SourceError> {
        match &self.spec.source {
            Source::Rtsp { url, transport } => {
                super::rtsp::run(url, *transport, sink, cancel).await
            }
            Source::File { path, looping } => {
                super::file::run(
                    &self.files,
                    std::path::Path::new(path),
                    *looping,
                    sink,
                    cancel,
                )
                .await
            }
        }
    }

    /// Resolves once nobody has wanted the stream for the idle period.
    async fn until_idle(&self) {
        if self.demand.is_permanent() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if !self.demand.wanted() {
                return;
            }
        }
    }

    /// Waits (probing health if configured) until someone wants the stream. Returns false when
    /// cancelled.
    async fn wait_for_demand(&self, cancel: &CancellationToken) -> bool {
        let mut next_probe = tokio::time::Instant::now();
        loop {
            let notified = self.demand.changed.notified();
            if self.demand.wanted() {
                return true;
            }
            let probe_at = next_probe;
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = notified => {}
                // Re-check periodically: HLS activity expires by time, not by notification.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = tokio::time::sleep_until(probe_at), if self.probe.is_some() => {
                    if let Some(p) = &self.probe {
                        next_probe = tokio::time::Instant::now() + p.interval;
                        self.probe_once(p).await;
                    }
                }
            }
        }
    }

    async fn probe_once(&self, p: &HealthProbe) {
        let result = match &self.spec.source {
            Source::Rtsp { url, .. } => {
                let Ok(_permit) = p.limiter.acquire().await else {
                    return;
                };
                super::rtsp::probe(url, p.timeout).await
            }
            Source::File { path, .. } => self
                .files
                .open(std::path::Path::new(path))
                .map(drop)
                .map_err(SourceError::from),
        };
        // The source may have started meanwhile; then its own flags win.
        if self.demand.wanted() {
            return;
        }
        let mut st = lock_status(&self.status);
        st.last_health_check = Some(chrono::Utc::now());
        match result {
            Ok(()) => {
                st.online = true;
                st.last_health_error.clear();
            }
            Err(e) => {
                tracing::info!(error = %e, "health probe failed");
                st.online = false;
                st.last_health_error = e.category().as_str().to_owned();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_the_documented_one_to_thirty_seconds() {
        // README "Live video": exponential backoff with jitter, 1 s to 30 s.
        assert_eq!(
            (BACKOFF_MIN, BACKOFF_MAX),
            (Duration::from_secs(1), Duration::from_secs(30))
        );
        let secs = |ms: u64| Duration::from_millis(ms);
        // The wait before reconnect attempt `failures + 1`: within [lo, hi] whatever the jitter.
        let expected = [
            (0, secs(1_000), secs(1_000)),
            (1, secs(1_000), secs(2_000)),
            (2, secs(2_000), secs(4_000)),
            (3, secs(4_000), secs(8_000)),
            (4, secs(8_000), secs(16_000)),
            (5, secs(15_000), secs(30_000)),
            (30, secs(15_000), secs(30_000)),
            (u32::MAX, secs(15_000), secs(30_000)),
        ];
        for (failures, lo, hi) in expected {
            for _ in 0..200 {
                let d = backoff_delay(failures);
                assert!(lo <= d && d <= hi, "{failures} failures: {d:?}");
            }
        }
    }

    #[test]
    fn demand_follows_viewers_and_idle_time() {
        // An hour of idle time: "still wanted" below cannot depend on how fast this runs.
        let d = Demand::new(false, Duration::from_secs(3600));
        assert!(!d.wanted(), "nobody asked yet");
        let g = d.viewer();
        assert!(d.wanted());
        assert_eq!(d.viewers(), 1);
        drop(g);
        assert_eq!(d.viewers(), 0);
        assert!(d.wanted(), "still wanted during the idle period");
        // No idle time: unwanted as soon as the last viewer leaves.
        let d0 = Demand::new(false, Duration::ZERO);
        let g = d0.viewer();
        assert!(d0.wanted());
        drop(g);
        assert!(!d0.wanted(), "idle time over");
        // An HLS request starts the idle period too.
        let d = Demand::new(false, Duration::from_secs(3600));
        assert!(!d.wanted());
        d.hls_request();
        assert!(d.wanted());
        assert!(Demand::new(true, Duration::ZERO).wanted());
    }
}
