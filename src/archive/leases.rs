//! Read leases: archive playback and export hold one on every segment they read, so retention does
//! not delete it and the uploader does not move it to S3 (and delete the local file) under them.
//!
//! A lease lives in two places:
//! * **The row** (`segments.lease_until_us`, [`crate::db::leases`]): a time shortly ahead
//!   ([`LEASE_TTL`]), moved forward every [`RENEW_EVERY`] while the lease is held. Retention's mark
//!   and the uploader's claim and completion check it in the same statement that changes the row,
//!   so the check cannot race. This holds for S3 segments too (the object is not deleted while the
//!   row is leased) and for any process sharing the index. If this process dies, its leases simply
//!   run out after [`LEASE_TTL`].
//! * **This registry**: per segment, how many readers of this process hold it. The first reader
//!   writes the row, the last one to leave clears it (only if the row still holds the time this
//!   process wrote: a later writer's lease stays). One task renews every held row in one statement.
//!
//! Every time this process writes is unique and increasing ([`Leases::next_until`]), so clearing
//! "my" lease never clears one written after it. Several processes on one index (issue 14) would
//! each clear only their own value but could clear another process's shorter lease; a lease table
//! keyed by (segment, holder) replaces the column then (see ARCHITECTURE.md).
//!
//! Readers also keep the segment files they read open (export, playback): on the filesystem an
//! unlinked file stays readable through an open handle, so even a lease that ran out during a
//! database outage cannot cut a response short.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::db::{self, Db, DbError};

/// How far ahead a lease is written.
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often held leases are moved forward (well within [`LEASE_TTL`]: a renewal may fail twice).
pub const RENEW_EVERY: Duration = Duration::from_secs(15);

/// Readers of this process per segment, and the lease time last written for it.
#[derive(Debug, Clone, Copy)]
struct Held {
    readers: usize,
    until_us: i64,
}

/// The read leases of this process. Cheap to share (`Arc`).
#[derive(Default)]
pub struct Leases {
    held: Mutex<HashMap<i64, Held>>,
    /// Last lease time written (µs): every write is later than the one before.
    last_until: AtomicI64,
    /// Whether the renewal task runs.
    renewing: AtomicBool,
    /// Leases taken (segments) since start.
    pub acquired: AtomicU64,
    /// Segments a reader wanted but could not lease (gone, `missing` or being deleted).
    pub refused: AtomicU64,
    /// Renewals that failed (database trouble); the lease runs on until [`LEASE_TTL`] has passed.
    pub renew_failures: AtomicU64,
}

/// Leases held on some segments; dropping it releases them.
#[must_use = "the lease is released when dropped"]
pub struct Lease {
    leases: Arc<Leases>,
    db: Db,
    ids: Vec<i64>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("ids", &self.ids).finish()
    }
}

impl Lease {
    /// The segments leased (sorted).
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    /// Whether `id` is leased by this guard.
    pub fn covers(&self, id: i64) -> bool {
        self.ids.binary_search(&id).is_ok()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut self.ids);
        let to_clear = self.leases.forget(&ids);
        if to_clear.is_empty() {
            return;
        }
        // Clearing is a courtesy (the lease would run out anyway): without a runtime, skip it.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let db = self.db.clone();
            rt.spawn(async move {
                for (id, until) in to_clear {
                    if let Err(e) = db::leases::release(&db, id, until).await {
                        tracing::debug!(segment = id, error = %e, "cannot clear a read lease");
                    }
                }
            });
        }
    }
}

impl Leases {
    /// A lease time for a write now: [`LEASE_TTL`] ahead, and later than any written before.
    fn next_until(&self) -> i64 {
        let want = db::now_us() + LEASE_TTL.as_micros() as i64;
        let mut prev = self.last_until.load(Ordering::Acquire);
        loop {
            let next = want.max(prev + 1);
            match self.last_until.compare_exchange_weak(
                prev,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return next,
                Err(now) => prev = now,
            }
        }
    }

    /// Leases the playable segments among `ids`. The guard covers those it could lease; the others
    /// are gone, `missing` or being deleted (counted in [`Leases::refused`]).
    pub async fn acquire(self: &Arc<Self>, db: &Db, ids: &[i64]) -> Result<Lease, DbError> {
        let until = self.next_until();
        let leased = db::leases::acquire(db, ids, until).await?;
        self.acquired
            .fetch_add(leased.len() as u64, Ordering::Relaxed);
        self.refused.fetch_add(
            (ids.len() - leased.len().min(ids.len())) as u64,
            Ordering::Relaxed,
        );
        {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            for id in &leased {
                let e = held.entry(*id).or_insert(Held {
                    readers: 0,
                    until_us: until,
                });
                e.readers += 1;
                e.until_us = e.until_us.max(until);
            }
        }
        self.ensure_renewal(db);
        Ok(Lease {
            leases: self.clone(),
            db: db.clone(),
            ids: leased,
        })
    }

    /// Leases one segment: `None` when it can no longer be read.
    pub async fn acquire_one(self: &Arc<Self>, db: &Db, id: i64) -> Result<Option<Lease>, DbError> {
        let lease = self.acquire(db, &[id]).await?;
        Ok(lease.covers(id).then_some(lease))
    }

    /// Whether a reader of this process holds `id`.
    pub fn is_held(&self, id: i64) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&id)
    }

    /// Readers of this process holding `id`.
    pub fn readers(&self, id: i64) -> usize {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map_or(0, |h| h.readers)
    }

    /// Segments held by readers of this process.
    pub fn held_count(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Drops one reader of each of `ids`; returns the rows whose last reader left, with the time
    /// to clear.
    fn forget(&self, ids: &[i64]) -> Vec<(i64, i64)> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone = Vec::new();
        for id in ids {
            if let Some(e) = held.get_mut(id) {
                e.readers = e.readers.saturating_sub(1);
                if e.readers == 0 {
                    gone.push((*id, e.until_us));
                    held.remove(id);
                }
            }
        }
        gone
    }

    /// Starts the renewal task unless it runs. It stops by itself when nothing is held.
    fn ensure_renewal(self: &Arc<Self>, db: &Db) {
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.renewing.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        let db = db.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let until = this.next_until();
                let ids: Vec<i64> = {
                    let mut held = this.held.lock().unwrap_or_else(|e| e.into_inner());
                    if held.is_empty() {
                        // Stop under the lock: an `acquire` after this starts a new task.
                        this.renewing.store(false, Ordering::Release);
                        return;
                    }
                    for h in held.values_mut() {
                        h.until_us = h.until_us.max(until);
                    }
                    held.keys().copied().collect()
                };
                if let Err(e) = db::leases::renew(&db, &ids, until).await {
                    this.renew_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, segments = ids.len(), "cannot renew read leases");
                }
            }
        });
    }
}
