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
        let held = c.by_key.get(key).copied().unwrap_or(0);
        if held >= self.per_key {
            return Err(Refusal::PerKey {
                limit: self.per_key,
            });
        }
        if c.total >= self.total {
            return Err(Refusal::Total { limit: self.total });
        }
        c.total += 1;
        *c.by_key.entry(key.to_owned()).or_insert(0) += 1;
        Ok(Permit {
            gate: self.clone(),
            key: key.to_owned(),
        })
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
        let mut c = self.gate.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_key.remove(&self.key);
            }
        }
    }
}

/// The server's gates, from `[limits]`.
#[derive(Debug)]
pub struct Limits {
    /// Largest WebSocket message (and frame) a client may send, in bytes.
    pub ws_max_message_bytes: usize,
    /// Live viewers (MSE and WebRTC), keyed by stream id.
    pub viewers: Arc<Gate>,
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
            archive_sessions: Gate::new(
                l.archive_sessions_per_client,
                config.archive_sessions_total(),
            ),
            exports: Gate::new(l.exports_per_client, l.exports_total),
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
