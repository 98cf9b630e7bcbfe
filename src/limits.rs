//! Limits on what one stream, one client and the whole server may hold at once: live viewers,
//! archive playback sessions, exports (the `[limits]` config section, README "Limits").
//!
//! A [`Gate`] counts holders per key (a stream id, or a client as `auth::Caller::client_key`
//! names it) and in total. [`Gate::try_enter`] either hands out a [`Permit`] or says which limit
//! is reached; the permit gives its place back when dropped, so every exit path of a session or a
//! download (end, error, client gone, task cancelled) releases it. Nothing waits for a place:
//! a refused client is told to come back later (HTTP 429/503 with `Retry-After`, or a WebSocket
//! close reason).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::Config;

/// What a refused client is told to wait before trying again, in seconds (`Retry-After`).
pub const RETRY_AFTER_S: u64 = 10;

/// Why [`Gate::try_enter`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The key (client or stream) holds `limit` places already.
    PerKey { limit: usize },
    /// The server holds `limit` places already.
    Total { limit: usize },
}

/// Counts places per key and in total.
pub struct Gate {
    per_key: usize,
    total: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_key: HashMap<String, usize>,
    /// Places held by leases (HLS viewers), by `(key, holder)`: when each lapses.
    leases: HashMap<(String, String), Instant>,
    /// The earliest lapse among `leases` (sweeping is skipped until then).
    next_lapse: Option<Instant>,
}

impl Counts {
    fn take(&mut self, key: &str) {
        self.total += 1;
        *self.by_key.entry(key.to_owned()).or_insert(0) += 1;
    }

    fn give_back(&mut self, key: &str) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.by_key.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_key.remove(key);
            }
        }
    }

    /// Gives back the places of the leases that lapsed by `now`.
    fn sweep(&mut self, now: Instant) {
        if self.next_lapse.is_none_or(|t| now < t) {
            return;
        }
        let lapsed: Vec<(String, String)> = self
            .leases
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for lease in lapsed {
            self.leases.remove(&lease);
            self.give_back(&lease.0);
        }
        self.next_lapse = self.leases.values().min().copied();
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("per_key", &self.per_key)
            .field("total", &self.total)
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl Gate {
    /// At most `per_key` places per key and `total` in all (each at least 1).
    pub fn new(per_key: usize, total: usize) -> Arc<Gate> {
        Arc::new(Gate {
            per_key: per_key.max(1),
            total: total.max(1),
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // The counters stay consistent under a panic elsewhere (updates are single statements).
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for `key`. The key's own limit is checked first, so a client that holds its
    /// share hears that (429) rather than that the server is full (503).
    pub fn try_enter(self: &Arc<Self>, key: &str) -> Result<Permit, Refusal> {
        let mut c = self.counts();
        c.sweep(Instant::now());
        self.check(&c, key)?;
        c.take(key);
        Ok(Permit {
            gate: self.clone(),
            key: key.to_owned(),
        })
    }

    fn check(&self, c: &Counts, key: &str) -> Result<(), Refusal> {
        let held = c.by_key.get(key).copied().unwrap_or(0);
        if held >= self.per_key {
            return Err(Refusal::PerKey {
                limit: self.per_key,
            });
        }
        if c.total >= self.total {
            return Err(Refusal::Total { limit: self.total });
        }
        Ok(())
    }

    /// Takes or renews a place for `holder` under `key` that lapses `ttl` after `now` unless
    /// renewed: for clients that hold no connection (HLS players fetch files now and then). A
    /// holder that already has a lease under `key` is never refused; its lease is extended.
    pub fn try_lease(
        &self,
        key: &str,
        holder: &str,
        now: Instant,
        ttl: Duration,
    ) -> Result<(), Refusal> {
        let mut c = self.counts();
        c.sweep(now);
        let until = now + ttl;
        let lease = (key.to_owned(), holder.to_owned());
        if let Some(t) = c.leases.get_mut(&lease) {
            *t = until;
            return Ok(());
        }
        self.check(&c, key)?;
        c.take(key);
        c.leases.insert(lease, until);
        c.next_lapse = Some(c.next_lapse.map_or(until, |t| t.min(until)));
        Ok(())
    }

    /// Gives back the places of leases that lapsed by `now` (also done by every
    /// [`Gate::try_enter`] and [`Gate::try_lease`]).
    pub fn sweep(&self, now: Instant) {
        self.counts().sweep(now);
    }

    /// Places taken in all.
    pub fn in_use(&self) -> usize {
        self.counts().total
    }

    /// Places taken by `key`.
    pub fn in_use_by(&self, key: &str) -> usize {
        self.counts().by_key.get(key).copied().unwrap_or(0)
    }

    /// Keys holding places (for tests: released keys are forgotten, so the map cannot grow with
    /// every client ever seen).
    pub fn keys(&self) -> usize {
        self.counts().by_key.len()
    }
}

/// A place taken in a [`Gate`], given back on drop.
pub struct Permit {
    gate: Arc<Gate>,
    key: String,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").field("key", &self.key).finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.counts().give_back(&self.key);
    }
}

/// The server's gates, from `[limits]`.
#[derive(Debug)]
pub struct Limits {
    /// Largest WebSocket message (and frame) a client may send, in bytes.
    pub ws_max_message_bytes: usize,
    /// Live viewers (MSE and WebRTC sessions hold permits; HLS clients hold leases of
    /// [`Limits::hls_viewer_ttl`]), keyed by stream id.
    pub viewers: Arc<Gate>,
    /// How long an HLS client counts as a viewer after its last fetch of the stream's files.
    pub hls_viewer_ttl: Duration,
    /// Archive playback sessions, keyed by client.
    pub archive_sessions: Arc<Gate>,
    /// Exports being downloaded, keyed by client.
    pub exports: Arc<Gate>,
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        let l = &config.limits;
        Limits {
            ws_max_message_bytes: l.ws_max_message_bytes,
            viewers: Gate::new(l.viewers_per_stream, l.viewers_total),
            hls_viewer_ttl: hls_viewer_ttl(&config.hls),
            archive_sessions: Gate::new(
                l.archive_sessions_per_client,
                config.archive_sessions_total(),
            ),
            exports: Gate::new(l.exports_per_client, l.exports_total),
        }
    }
}

/// How long an HLS client counts as a viewer after its last request: the playlist's duration
/// (`[hls] window_size` segments of `ms_per_segment`), at least three segments. A player fetches
/// the playlist about once per segment, so while it plays it never lapses; one that stopped
/// holds its place for at most this long.
pub fn hls_viewer_ttl(hls: &crate::config::HlsConfig) -> Duration {
    let segments = u64::try_from(hls.window_size).unwrap_or(u64::MAX).max(3);
    Duration::from_millis(hls.ms_per_segment.saturating_mul(segments))
}

impl Limits {
    /// Counts an HLS request of `client` for `stream` as that client viewing the stream until
    /// [`Limits::hls_viewer_ttl`] after it: a new HLS client takes a place among the stream's
    /// viewers (refused over `viewers_per_stream` / `viewers_total` like an MSE or WebRTC
    /// viewer); a known one renews its place.
    pub fn hls_viewer(&self, stream: &str, client: &str) -> Result<(), Refusal> {
        self.viewers
            .try_lease(stream, client, Instant::now(), self.hls_viewer_ttl)
    }
}

/// Why a viewer over a limit is refused: the close reason of a live WebSocket, the error text of
/// a WHEP offer.
pub fn viewers_reason(refusal: Refusal) -> String {
    match refusal {
        Refusal::PerKey { limit } => {
            format!("Too many viewers of this stream (limit {limit}); try again later")
        }
        Refusal::Total { limit } => {
            format!("Too many viewers on this server (limit {limit}); try again later")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_key_then_total_and_drop_gives_places_back() {
        let gate = Gate::new(2, 3);
        let a1 = gate.try_enter("a").expect("a1");
        let a2 = gate.try_enter("a").expect("a2");
        assert_eq!(
            gate.try_enter("a").map(|_| ()),
            Err(Refusal::PerKey { limit: 2 })
        );
        let b1 = gate.try_enter("b").expect("b1");
        assert_eq!(
            gate.try_enter("c").map(|_| ()),
            Err(Refusal::Total { limit: 3 })
        );
        // A key at its own limit hears about its own limit, even when the server is full.
        assert_eq!(
            gate.try_enter("a").map(|_| ()),
            Err(Refusal::PerKey { limit: 2 })
        );
        assert_eq!((gate.in_use(), gate.in_use_by("a")), (3, 2));
        drop(a1);
        let c1 = gate.try_enter("c").expect("a place came back");
        drop((a2, b1, c1));
        assert_eq!((gate.in_use(), gate.keys()), (0, 0));
        // Open N, close, open N again.
        for _ in 0..3 {
            let held: Vec<Permit> = (0..3)
                .map(|i| gate.try_enter(&i.to_string()).expect("place"))
                .collect();
            assert_eq!(gate.in_use(), 3);
            drop(held);
            assert_eq!(gate.in_use(), 0);
        }
    }

    #[test]
    fn leases_count_like_permits_until_they_lapse() {
        let gate = Gate::new(2, 3);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        gate.try_lease("s", "a", t0, ttl).expect("a");
        // The same holder renews without taking another place.
        gate.try_lease("s", "a", t0 + Duration::from_secs(10), ttl)
            .expect("a renews");
        assert_eq!(gate.in_use_by("s"), 1);
        let permit = gate.try_enter("s").expect("a session");
        assert_eq!(
            gate.try_lease("s", "b", t0, ttl),
            Err(Refusal::PerKey { limit: 2 })
        );
        gate.try_lease("t", "b", t0, ttl).expect("b on t");
        assert_eq!(
            gate.try_lease("u", "c", t0, ttl),
            Err(Refusal::Total { limit: 3 })
        );
        // a renewed at t0+10 s: still held at t0+39 s, lapsed at t0+40 s; b lapsed at t0+30 s.
        gate.sweep(t0 + Duration::from_secs(39));
        assert_eq!((gate.in_use_by("s"), gate.in_use_by("t")), (2, 0));
        gate.sweep(t0 + Duration::from_secs(40));
        assert_eq!((gate.in_use(), gate.in_use_by("s")), (1, 1));
        drop(permit);
        assert_eq!((gate.in_use(), gate.keys()), (0, 0));
        // A lapsed holder comes back as a new one.
        gate.try_lease("s", "a", t0 + Duration::from_secs(41), ttl)
            .expect("a again");
        assert_eq!(gate.in_use(), 1);
    }

    #[test]
    fn hls_viewers_count_for_the_playlists_duration() {
        let mut hls = crate::config::HlsConfig {
            ms_per_segment: 2000,
            window_size: 5,
            ..Default::default()
        };
        assert_eq!(hls_viewer_ttl(&hls), Duration::from_secs(10));
        hls.window_size = 1;
        assert_eq!(hls_viewer_ttl(&hls), Duration::from_secs(6));
    }

    #[test]
    fn permits_moved_into_cancelled_tasks_are_released() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let gate = Gate::new(1, 1);
        rt.block_on(async {
            let permit = gate.try_enter("k").expect("place");
            let task = tokio::spawn(async move {
                let _held = permit;
                std::future::pending::<()>().await;
            });
            task.abort();
            let _ = task.await;
        });
        assert_eq!(gate.in_use(), 0);
        assert!(gate.try_enter("k").is_ok());
    }
}
