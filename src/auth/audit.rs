//! The audit log's writer: requests record entries without waiting, a background task inserts
//! them in batches.
//!
//! [`AuditSink::record`] never blocks and never touches the database: it puts the entry on a
//! bounded queue ([`QUEUE_CAPACITY`]) and, when the queue is full (the database is slow or
//! down), drops it and counts the drop ([`AuditSink::dropped`]). The writer takes up to
//! [`BATCH`] entries at a time and inserts them in one transaction; it also deletes rows older
//! than `[auth] audit_retention_days` once an hour. On shutdown it writes what is queued, then
//! stops (the server closes the pool after it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::db::audit::{self, AuditRow};
use crate::db::{Db, now_us};

/// Entries waiting to be written. At a few hundred bytes each this bounds the queue to about a
/// megabyte; a full queue means the database has been unavailable for a while.
pub const QUEUE_CAPACITY: usize = 4_096;
/// Entries per insert transaction.
pub const BATCH: usize = 256;
/// How often old rows are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);
/// Attempts to write one batch before it is dropped (and counted).
const WRITE_ATTEMPTS: u32 = 3;
/// Most keys remembered for de-duplication; beyond it, stale keys are forgotten first.
const DEDUP_MAX_KEYS: usize = 10_000;

/// Identifies "the same thing again" for [`AuditSink::record_once_per`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DedupKey {
    client: String,
    route: String,
    stream: Option<uuid::Uuid>,
    status: i32,
}

/// The request side of the audit log.
#[derive(Debug)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditRow>,
    rx: Mutex<Option<mpsc::Receiver<AuditRow>>>,
    dropped: AtomicU64,
    recent: Mutex<HashMap<DedupKey, i64>>,
}

impl Default for AuditSink {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        AuditSink {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            recent: Mutex::new(HashMap::new()),
        }
    }
}

impl AuditSink {
    /// Queues an entry; drops (and counts) it when the queue is full.
    pub fn record(&self, row: AuditRow) {
        if self.tx.try_send(row).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per thousand drops: the log must not become the next bottleneck.
            if n % 1_000 == 1 {
                tracing::warn!(dropped = n, "audit queue full: entries dropped");
            }
        }
    }

    /// Queues an entry unless an entry with the same client, route, stream and status was
    /// queued less than `window_us` ago. For requests that come in streams of near-identical
    /// repeats (an HLS player's playlist refreshes, an export's Range requests, a client retrying
    /// without credentials), where one entry per window says all there is to say.
    pub fn record_once_per(&self, row: AuditRow, window_us: i64) {
        let key = DedupKey {
            client: row.client.clone(),
            route: row.route.clone(),
            stream: row.stream_id,
            status: row.status,
        };
        {
            let Ok(mut recent) = self.recent.lock() else {
                return self.record(row);
            };
            if recent
                .get(&key)
                .is_some_and(|at| row.at_us.saturating_sub(*at) < window_us)
            {
                return;
            }
            if recent.len() >= DEDUP_MAX_KEYS {
                recent.retain(|_, at| row.at_us.saturating_sub(*at) < window_us);
                if recent.len() >= DEDUP_MAX_KEYS {
                    recent.clear();
                }
            }
            recent.insert(key, row.at_us);
        }
        self.record(row);
    }

    /// Entries dropped because the queue was full (or a batch could not be written).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Starts the writer. Only the first call gets the queue; later calls return `None`.
    pub fn spawn_writer(
        self: &std::sync::Arc<Self>,
        db: Db,
        retention_days: u64,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let rx = self.rx.lock().ok()?.take()?;
        let sink = self.clone();
        Some(tokio::spawn(async move {
            sink.run_writer(db, rx, retention_days, stop).await;
        }))
    }

    async fn run_writer(
        &self,
        db: Db,
        mut rx: mpsc::Receiver<AuditRow>,
        retention_days: u64,
        stop: CancellationToken,
    ) {
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = prune.tick() => {
                    prune_old(&db, retention_days).await;
                    continue;
                }
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.write(&db, &batch, &stop).await;
        }
        // Shutting down: what is queued now is written once, then the writer ends.
        rx.close();
        let mut batch = Vec::new();
        while let Some(r) = rx.recv().await {
            batch.push(r);
            if batch.len() == BATCH {
                self.write(&db, &batch, &CancellationToken::new()).await;
                batch.clear();
            }
        }
        self.write(&db, &batch, &CancellationToken::new()).await;
    }

    async fn write(&self, db: &Db, batch: &[AuditRow], stop: &CancellationToken) {
        if batch.is_empty() {
            return;
        }
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=WRITE_ATTEMPTS {
            match audit::insert_batch(db, batch).await {
                Ok(()) => return,
                Err(e) if attempt < WRITE_ATTEMPTS => {
                    tracing::warn!(error = %e, rows = batch.len(), "audit write failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay *= 4;
                }
                Err(e) => {
                    tracing::error!(error = %e, rows = batch.len(), "audit entries lost: cannot write them");
                }
            }
        }
        self.dropped
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}

async fn prune_old(db: &Db, retention_days: u64) {
    if retention_days == 0 {
        return;
    }
    let keep_us = i64::try_from(retention_days.saturating_mul(86_400_000_000)).unwrap_or(i64::MAX);
    match audit::delete_before(db, now_us().saturating_sub(keep_us)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "old audit entries deleted"),
        Err(e) => tracing::warn!(error = %e, "cannot delete old audit entries"),
    }
}
