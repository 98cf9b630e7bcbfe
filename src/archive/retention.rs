//! Archive retention: deletes the oldest segments of each stream past its `max_age_s` or over its
//! `max_bytes`, and the oldest segments of all streams while the archive filesystem has less free
//! space than the `[retention]` floor.
//!
//! Rules, in the order a pass applies them:
//! 1. **Age** (per stream): segments that *ended* more than `max_age_s` ago.
//! 2. **Bytes** (per stream): oldest first while the stream's unprotected `complete` segments hold
//!    more than `max_bytes`. Protected segments are kept and do not count against the cap: a long
//!    evidence lock must not make the camera's new recordings vanish as soon as they close (the
//!    disk as a whole is guarded by the free-space floor).
//! 3. **Free space** (global): oldest filesystem segments of any stream, while the filesystem of
//!    `[archive] directory` has less free space than the floor. S3 objects free no local disk and
//!    are never deleted for this reason.
//!
//! Never deleted: segments overlapping a protected range of their stream, the segment being
//! recorded, and segments being uploaded (`upload_state = 'uploading'`, so the uploader never
//! reads a file retention is removing).
//!
//! **Crash-consistent delete**: mark the row `deleting` and take it out of the runs (one
//! transaction) → delete the bytes through the row's storage → delete the row. A crash between
//! the steps leaves a `deleting` row, invisible to ranges and playback, which
//! [`Retention::finish_pending`] completes at the next start (deleting a missing file or object
//! is not an error). A storage delete that fails leaves the row `deleting` too; the next pass
//! retries it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::Archive;
use crate::config::RetentionConfig;
use crate::db::retention::{self as q, CandidateFilter, Deletable};
use crate::db::{self, Db, DbError};
use crate::stream::{RetentionSpec, StorageKind};

/// Segments read and marked per step. Small enough that one transaction is short (SQLite has one
/// writer: the recorder waits while we hold it), large enough that a big backlog goes quickly.
const BATCH: u32 = 100;

/// Storage deletes in flight at once (S3 deletes are round trips; local ones are cheap anyway).
const DELETE_CONCURRENCY: usize = 8;

/// Free-space rounds per pass: each round deletes about the measured deficit and measures again.
/// Bounded so a disk filled by someone else costs at most this many batches per interval.
const MAX_FLOOR_ROUNDS: usize = 8;

/// Errors that stop a pass. Storage failures on single segments do not: they are counted in
/// [`Report::failed`] and retried.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot read free space of {path}: {source}")]
    Disk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Wakes retention outside its schedule: a recorder found its disk full (an emergency pass on that
/// directory's filesystem), or an archive is to be purged. Cheap to clone; every clone reaches the
/// same retention task.
#[derive(Debug, Clone, Default)]
pub struct RetentionTrigger(Arc<TriggerInner>);

#[derive(Debug, Default)]
struct TriggerInner {
    wake: Notify,
    /// Directories whose filesystem is full, in the order reported (deduplicated).
    full: Mutex<Vec<PathBuf>>,
}

impl RetentionTrigger {
    /// A write under `dir` failed for lack of space: free room on its filesystem now.
    pub fn disk_full(&self, dir: &Path) {
        let mut full = self.0.full.lock().unwrap_or_else(|p| p.into_inner());
        if !full.iter().any(|d| d == dir) {
            full.push(dir.to_owned());
        }
        drop(full);
        self.0.wake.notify_one();
    }

    /// Runs a pass now (e.g. a purge was requested).
    pub fn wake(&self) {
        self.0.wake.notify_one();
    }

    fn take_full(&self) -> Vec<PathBuf> {
        std::mem::take(&mut *self.0.full.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn woken(&self) {
        self.0.wake.notified().await
    }
}

/// Size and free space of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    pub total_bytes: u64,
    /// Space available to unprivileged users (what the recorder, not running as root, can use).
    pub free_bytes: u64,
}

/// Reads how full the filesystem holding a path is. A trait so tests can fake a small disk.
pub trait DiskSpace: Send + Sync {
    fn usage(&self, path: &Path) -> std::io::Result<DiskUsage>;
}

/// The real reading: `statvfs(2)` through `rustix` (a safe wrapper, already in the dependency
/// tree through `tempfile`; `nix` would bring a second libc binding for one call).
#[derive(Debug, Default, Clone, Copy)]
pub struct Statvfs;

impl DiskSpace for Statvfs {
    fn usage(&self, path: &Path) -> std::io::Result<DiskUsage> {
        let st = rustix::fs::statvfs(path)?;
        Ok(DiskUsage {
            total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
            free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
        })
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// `deleting` rows left by a crash or an earlier failure, now finished.
    pub finished: u64,
    pub by_age: u64,
    pub by_bytes: u64,
    pub by_free_space: u64,
    /// Sum of the deleted rows' `bytes`.
    pub bytes_freed: i64,
    /// Storage deletes that failed; the rows stay `deleting` and are retried.
    pub failed: u64,
    /// The free-space floor is still not met (nothing deletable was left, or deletions did not
    /// free enough space).
    pub below_floor: bool,
}

impl Report {
    /// Segments deleted by this pass, for any reason.
    pub fn deleted(&self) -> u64 {
        self.finished + self.by_age + self.by_bytes + self.by_free_space
    }
}

/// Why a segment is being deleted (for the report).
#[derive(Debug, Clone, Copy)]
enum Reason {
    Pending,
    Age,
    Bytes,
    FreeSpace,
}

/// The retention task. Build it once; [`Retention::run`] loops until cancelled, tests call
/// [`Retention::run_once_at`].
pub struct Retention {
    db: Db,
    /// Where each row's bytes are (the same registry playback and export read through).
    archive: Arc<Archive>,
    config: RetentionConfig,
    /// The free-space floor is measured on the filesystem holding this directory.
    archive_dir: PathBuf,
    disk: Arc<dyn DiskSpace>,
    /// Set when a storage delete failed, so the next pass looks for `deleting` rows again (a scan,
    /// so not done on every pass).
    retry_pending: AtomicBool,
    /// Wakes the loop between scheduled passes (a full disk, a purge).
    trigger: RetentionTrigger,
}

impl Retention {
    pub fn new(
        db: Db,
        archive: Arc<Archive>,
        config: RetentionConfig,
        archive_dir: impl Into<PathBuf>,
    ) -> Retention {
        Retention {
            db,
            archive,
            config,
            archive_dir: archive_dir.into(),
            disk: Arc::new(Statvfs),
            retry_pending: AtomicBool::new(false),
            trigger: RetentionTrigger::default(),
        }
    }

    /// Runs a pass whenever `trigger` is pulled, besides the schedule.
    pub fn with_trigger(mut self, trigger: RetentionTrigger) -> Retention {
        self.trigger = trigger;
        self
    }

    /// Replaces the free-space reading (tests).
    pub fn with_disk(mut self, disk: Arc<dyn DiskSpace>) -> Retention {
        self.disk = disk;
        self
    }

    /// Finishes rows left `deleting` (call at start-up): deletes their bytes if still there, then
    /// the rows. Their runs were already updated when they were marked. Returns how many rows
    /// were finished; rows whose storage delete fails stay for a later pass.
    pub async fn finish_pending(&self) -> Result<u64, RetentionError> {
        let mut report = Report::default();
        self.finish_pending_into(&mut report).await?;
        Ok(report.finished)
    }

    async fn finish_pending_into(&self, report: &mut Report) -> Result<(), RetentionError> {
        let pending = q::pending(&self.db).await?;
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "finishing interrupted segment deletes"
            );
        }
        for chunk in pending.chunks(BATCH as usize) {
            self.delete_marked(chunk.to_vec(), Reason::Pending, report)
                .await?;
        }
        Ok(())
    }

    /// One pass at the current time.
    pub async fn run_once(&self) -> Result<Report, RetentionError> {
        self.run_once_at(db::now_us()).await
    }

    /// One pass as if the time were `now_us`: age, then bytes per stream, then the free-space
    /// floor.
    pub async fn run_once_at(&self, now_us: i64) -> Result<Report, RetentionError> {
        let mut report = Report::default();
        if self.retry_pending.swap(false, Ordering::Relaxed) {
            self.finish_pending_into(&mut report)
                .await
                .inspect_err(|_| self.retry_pending.store(true, Ordering::Relaxed))?;
        }
        for rec in db::streams::list_all(&self.db).await? {
            let RetentionSpec {
                max_age_s,
                max_bytes,
            } = rec.spec.retention;
            let id = rec.spec.id;
            if let Some(age_s) = max_age_s {
                let cutoff = now_us.saturating_sub(age_s.saturating_mul(1_000_000));
                self.delete_older(id, cutoff, &mut report)
                    .instrument(tracing::info_span!("stream", id = %id))
                    .await?;
            }
            if let Some(max) = max_bytes {
                self.delete_over_cap(id, max, &mut report)
                    .instrument(tracing::info_span!("stream", id = %id))
                    .await?;
            }
        }
        self.keep_free_space(&mut report).await?;
        Ok(report)
    }

    /// Finishes pending deletes, then runs a pass every `[retention] interval_s` until `cancel`.
    /// A pass interrupted by cancellation leaves at most a batch of `deleting` rows, finished at
    /// the next start.
    pub async fn run(self, cancel: CancellationToken) {
        async move {
            match self.finish_pending().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "interrupted deletes finished"),
                Err(e) => tracing::warn!(error = %e, "cannot finish interrupted deletes"),
            }
            let mut ticker = tokio::time::interval(self.config.interval());
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = ticker.tick() => {}
                    _ = self.trigger.woken() => {
                        let full = self.trigger.take_full();
                        if !full.is_empty() {
                            tracing::warn!(dirs = ?full, "a recorder found its disk full: retention pass now");
                        }
                    }
                }
                let result = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = self.run_once() => r,
                };
                match result {
                    Ok(r) if r.deleted() > 0 || r.failed > 0 || r.below_floor => tracing::info!(
                        by_age = r.by_age,
                        by_bytes = r.by_bytes,
                        by_free_space = r.by_free_space,
                        finished = r.finished,
                        bytes_freed = r.bytes_freed,
                        failed = r.failed,
                        below_floor = r.below_floor,
                        "retention pass"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention pass failed"),
                }
            }
        }
        .instrument(tracing::info_span!("retention"))
        .await
    }

    /// The storage filter for candidate queries: rows in a storage we cannot reach are never
    /// marked (they would stay `deleting` forever).
    fn reachable(&self) -> Option<&'static str> {
        if self.archive.has_s3() {
            None
        } else {
            Some(StorageKind::Filesystem.as_str())
        }
    }

    /// Deletes every segment of the stream that ended at or before `cutoff_us`, oldest first.
    async fn delete_older(
        &self,
        stream: Uuid,
        cutoff_us: i64,
        report: &mut Report,
    ) -> Result<(), RetentionError> {
        let filter = CandidateFilter {
            end_before_us: cutoff_us,
            include_missing: true,
            storage: self.reachable(),
        };
        loop {
            let batch = q::oldest_candidates(&self.db, stream, filter, BATCH).await?;
            if batch.is_empty() || !self.mark_and_delete(batch, Reason::Age, report).await? {
                return Ok(());
            }
        }
    }

    /// Deletes the stream's oldest segments while its unprotected bytes exceed `max_bytes`.
    async fn delete_over_cap(
        &self,
        stream: Uuid,
        max_bytes: i64,
        report: &mut Report,
    ) -> Result<(), RetentionError> {
        let filter = CandidateFilter {
            end_before_us: i64::MAX,
            include_missing: false,
            storage: self.reachable(),
        };
        loop {
            let held = q::stream_bytes(&self.db, stream).await?
                - q::protected_bytes(&self.db, stream).await?;
            let mut excess = held - max_bytes;
            if excess <= 0 {
                return Ok(());
            }
            let batch = q::oldest_candidates(&self.db, stream, filter, BATCH).await?;
            let mut chosen = Vec::new();
            for c in batch {
                if excess <= 0 {
                    break;
                }
                excess -= c.bytes;
                chosen.push(c);
            }
            if chosen.is_empty() || !self.mark_and_delete(chosen, Reason::Bytes, report).await? {
                return Ok(());
            }
        }
    }

    /// Deletes the oldest filesystem segments of all streams while free space is below the floor.
    async fn keep_free_space(&self, report: &mut Report) -> Result<(), RetentionError> {
        let filter = CandidateFilter {
            end_before_us: i64::MAX,
            include_missing: false,
            storage: Some(StorageKind::Filesystem.as_str()),
        };
        for _ in 0..MAX_FLOOR_ROUNDS {
            let Some(deficit) = self.free_space_deficit().await? else {
                return Ok(());
            };
            // The oldest candidates of every stream, merged by start time.
            let mut pool = Vec::new();
            for stream in q::streams_with_segments(&self.db).await? {
                pool.extend(q::oldest_candidates(&self.db, stream, filter, BATCH).await?);
            }
            pool.sort_by_key(|c| (c.start_us, c.id));
            let mut wanted = i64::try_from(deficit).unwrap_or(i64::MAX);
            let mut chosen = Vec::new();
            for c in pool {
                if wanted <= 0 || chosen.len() >= BATCH as usize {
                    break;
                }
                wanted -= c.bytes;
                chosen.push(c);
            }
            let failed_before = report.failed;
            if chosen.is_empty()
                || !self
                    .mark_and_delete(chosen, Reason::FreeSpace, report)
                    .await?
                // Deletes that fail free nothing: hiding more segments would not help.
                || report.failed > failed_before
            {
                break;
            }
        }
        report.below_floor = self.free_space_deficit().await?.is_some();
        if report.below_floor {
            tracing::warn!(dir = %self.archive_dir.display(), "free space is still below the floor");
        }
        Ok(())
    }

    /// How many bytes are missing to meet the floor, or `None` when it is met (or not set).
    async fn free_space_deficit(&self) -> Result<Option<u64>, RetentionError> {
        if self.config.min_free_bytes.is_none() && self.config.min_free_percent.is_none() {
            return Ok(None);
        }
        let (disk, dir) = (self.disk.clone(), self.archive_dir.clone());
        let usage = tokio::task::spawn_blocking(move || disk.usage(&dir))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| RetentionError::Disk {
                path: self.archive_dir.clone(),
                source,
            })?;
        let floor = self
            .config
            .min_free_bytes_of(usage.total_bytes)
            .unwrap_or(0);
        Ok((usage.free_bytes < floor).then(|| floor - usage.free_bytes))
    }

    /// Marks `batch` deleting, then deletes what was marked. Returns whether anything was marked
    /// (false ends the caller's loop: the candidates changed under us).
    async fn mark_and_delete(
        &self,
        batch: Vec<Deletable>,
        reason: Reason,
        report: &mut Report,
    ) -> Result<bool, RetentionError> {
        let marked = q::mark_deleting(&self.db, &batch).await?;
        if marked.is_empty() {
            return Ok(false);
        }
        self.delete_marked(marked, reason, report).await?;
        Ok(true)
    }

    /// Deletes the bytes of rows already marked `deleting`, then the rows whose bytes are gone.
    async fn delete_marked(
        &self,
        marked: Vec<Deletable>,
        reason: Reason,
        report: &mut Report,
    ) -> Result<(), RetentionError> {
        /// How one storage delete went.
        enum Outcome {
            Deleted,
            /// Worth retrying at the next pass.
            Failed,
            /// The row's storage is not configured: only a restart with it configured helps, so
            /// the row waits for the next start-up.
            NoStorage,
        }
        let results: Vec<(Deletable, Outcome)> = futures::stream::iter(marked)
            .map(|row| async move {
                let storage = self
                    .archive
                    .storage_for(&row.storage, row.bucket.as_deref());
                let outcome = match storage {
                    Some(storage) => match storage.delete(&row.storage_key).await {
                        Ok(()) => Outcome::Deleted,
                        Err(e) => {
                            tracing::warn!(segment = row.id, error = %e, "cannot delete segment");
                            Outcome::Failed
                        }
                    },
                    None => {
                        tracing::warn!(
                            segment = row.id,
                            storage = row.storage,
                            bucket = ?row.bucket,
                            "segment storage is not configured; left for a later start"
                        );
                        Outcome::NoStorage
                    }
                };
                (row, outcome)
            })
            .buffered(DELETE_CONCURRENCY)
            .collect()
            .await;
        let mut done = Vec::new();
        for (row, outcome) in results {
            match outcome {
                Outcome::Deleted => done.push(row),
                Outcome::Failed => {
                    report.failed += 1;
                    self.retry_pending.store(true, Ordering::Relaxed);
                }
                Outcome::NoStorage => report.failed += 1,
            }
        }
        let ids: Vec<i64> = done.iter().map(|r| r.id).collect();
        q::delete_rows(&self.db, &ids).await?;
        for row in &done {
            tracing::debug!(
                segment = row.id,
                stream = %row.stream_id,
                start_us = row.start_us,
                key = row.storage_key,
                ?reason,
                "segment deleted"
            );
            report.bytes_freed += row.bytes;
        }
        let n = done.len() as u64;
        match reason {
            Reason::Pending => report.finished += n,
            Reason::Age => report.by_age += n,
            Reason::Bytes => report.by_bytes += n,
            Reason::FreeSpace => report.by_free_space += n,
        }
        Ok(())
    }
}
