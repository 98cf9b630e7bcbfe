//! Archive retention: deletes the oldest segments of each stream past its `max_age_s` or over its
//! `max_bytes`, purged archives, and the oldest segments of all streams while a storage root's
//! filesystem has less free space than the `[retention]` floor.
//!
//! Rules, in the order a pass applies them:
//! 1. **Purges** (`DELETE /api/v1/streams/{id}?purge=true`): every segment of the stream that
//!    started before the request. The purge is forgotten once only protected segments are left.
//! 2. **Age** (per stream): segments that *ended* more than `max_age_s` ago.
//! 3. **Bytes** (per stream): oldest first while the stream's unprotected `complete` segments hold
//!    more than `max_bytes`. Protected segments are kept and do not count against the cap: a long
//!    evidence lock must not make the camera's new recordings vanish as soon as they close (the
//!    disk as a whole is guarded by the free-space floor).
//!    A stream without limits of its own takes `[retention] max_age_s` / `max_bytes`; so does the
//!    archive of a deleted stream (which has no settings left), so it ages out like the rest.
//! 4. **Free space** (per filesystem): oldest filesystem segments of any stream on that
//!    filesystem, while it has less free space than the floor. Every storage root in use counts
//!    (`[archive] directory`, `[archive] roots`, stream directories: `archive::markers`), once per
//!    filesystem; a root that is unavailable (its marker missing: a disk not mounted) is skipped,
//!    and so are its segments. S3 objects free no local disk and are never deleted for this.
//!
//! A segment whose file lies in an **unavailable storage root** is left alone by every rule (and
//! an interrupted delete of one waits): its file cannot be deleted while the disk is away, and a
//! row deleted without its file would leave the file to come back unindexed. The oldest such
//! segments stop a stream's age or bytes rule for the pass; they are dealt with once the root is
//! back.
//!
//! An **emergency pass** runs at once when a recorder finds its disk full
//! ([`RetentionTrigger::disk_full`]): the free-space rule on that filesystem, with a target of at
//! least [`emergency_free_bytes`] even when no floor is configured, so the recorder can resume.
//!
//! Never deleted: segments overlapping a protected range of their stream, the segment being
//! recorded, segments being uploaded (`upload_state = 'uploading'`, so the uploader never reads a
//! file retention is removing), and segments a reader holds a lease on (`lease_until_us`: archive
//! playback and export, in this process or another sharing the index).
//!
//! **Crash-consistent delete**: mark the row `deleting` and take it out of the runs (one
//! transaction) → delete the bytes through the row's storage → delete the row. A crash between
//! the steps leaves a `deleting` row, invisible to ranges and playback, which
//! [`Retention::finish_pending`] completes at the next start (deleting a missing file or object
//! is not an error). A storage delete that fails leaves the row `deleting` too; the next pass
//! retries it.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::Archive;
use super::markers::MarkedRoots;
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
    pub by_purge: u64,
    pub by_age: u64,
    pub by_bytes: u64,
    pub by_free_space: u64,
    /// Sum of the deleted rows' `bytes`.
    pub bytes_freed: i64,
    /// Storage deletes that failed; the rows stay `deleting` and are retried.
    pub failed: u64,
    /// The free-space floor is still not met on some filesystem (nothing deletable was left, or
    /// deletions did not free enough space).
    pub below_floor: bool,
    /// Segments due for deletion left alone because their storage root is unavailable.
    pub deferred: u64,
}

impl Report {
    /// Segments deleted by this pass, for any reason.
    pub fn deleted(&self) -> u64 {
        self.finished + self.by_purge + self.by_age + self.by_bytes + self.by_free_space
    }
}

/// Retention counters since start, for status pages and metrics (kept in [`Archive`]).
#[derive(Debug, Default)]
pub struct RetentionStats {
    passes: AtomicU64,
    emergency_passes: AtomicU64,
    deleted_by_purge: AtomicU64,
    deleted_by_age: AtomicU64,
    deleted_by_bytes: AtomicU64,
    deleted_by_free_space: AtomicU64,
    deleted_pending: AtomicU64,
    bytes_freed: AtomicU64,
    failed_deletes: AtomicU64,
    below_floor: AtomicBool,
}

/// A snapshot of [`RetentionStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionCounters {
    /// Passes run (scheduled and woken).
    pub passes: u64,
    /// Passes run because a recorder found its disk full.
    pub emergency_passes: u64,
    pub deleted_by_purge: u64,
    pub deleted_by_age: u64,
    pub deleted_by_bytes: u64,
    pub deleted_by_free_space: u64,
    /// Interrupted deletes finished.
    pub deleted_pending: u64,
    pub bytes_freed: u64,
    /// Storage deletes that failed (each retried).
    pub failed_deletes: u64,
    /// The last pass left a filesystem below its floor.
    pub below_floor: bool,
}

impl RetentionStats {
    pub fn snapshot(&self) -> RetentionCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RetentionCounters {
            passes: get(&self.passes),
            emergency_passes: get(&self.emergency_passes),
            deleted_by_purge: get(&self.deleted_by_purge),
            deleted_by_age: get(&self.deleted_by_age),
            deleted_by_bytes: get(&self.deleted_by_bytes),
            deleted_by_free_space: get(&self.deleted_by_free_space),
            deleted_pending: get(&self.deleted_pending),
            bytes_freed: get(&self.bytes_freed),
            failed_deletes: get(&self.failed_deletes),
            below_floor: self.below_floor.load(Ordering::Relaxed),
        }
    }

    fn add(&self, r: &Report, emergency: bool) {
        let add = |a: &AtomicU64, n: u64| a.fetch_add(n, Ordering::Relaxed);
        add(&self.passes, 1);
        if emergency {
            add(&self.emergency_passes, 1);
        }
        add(&self.deleted_by_purge, r.by_purge);
        add(&self.deleted_by_age, r.by_age);
        add(&self.deleted_by_bytes, r.by_bytes);
        add(&self.deleted_by_free_space, r.by_free_space);
        add(&self.deleted_pending, r.finished);
        add(&self.bytes_freed, u64::try_from(r.bytes_freed).unwrap_or(0));
        add(&self.failed_deletes, r.failed);
        self.below_floor.store(r.below_floor, Ordering::Relaxed);
    }
}

/// Why a segment is being deleted (for the report).
#[derive(Debug, Clone, Copy)]
enum Reason {
    Pending,
    Purge,
    Age,
    Bytes,
    FreeSpace,
}

/// Free space an emergency pass makes on a full filesystem, whatever the floor: enough for the
/// recorders to go on for a while (256 MiB), but at most 5 % of a small filesystem, and never
/// less than the 8 MiB a recorder wants before it resumes.
pub fn emergency_free_bytes(total_bytes: u64) -> u64 {
    (256 * 1024 * 1024u64)
        .min(total_bytes / 20)
        .max(8 * 1024 * 1024)
}

/// One filesystem holding storage roots, as the free-space rule sees it.
#[derive(Debug, Clone)]
struct Volume {
    /// Device id (`st_dev`) of the filesystem.
    dev: u64,
    /// The roots on it (available ones only); the first is the one measured.
    roots: Vec<PathBuf>,
}

/// The retention task. Build it once; [`Retention::run`] loops until cancelled, tests call
/// [`Retention::run_once_at`].
pub struct Retention {
    db: Db,
    /// Where each row's bytes are (the same registry playback and export read through).
    archive: Arc<Archive>,
    config: RetentionConfig,
    /// Without `roots`: the free-space floor is measured on the filesystem holding this directory.
    archive_dir: PathBuf,
    /// The storage roots in use and whether each is available (marker present).
    roots: Option<Arc<MarkedRoots>>,
    disk: Arc<dyn DiskSpace>,
    /// Set when a storage delete failed, so the next pass looks for `deleting` rows again (a scan,
    /// so not done on every pass).
    retry_pending: AtomicBool,
    /// Wakes the loop between scheduled passes (a full disk, a purge).
    trigger: RetentionTrigger,
    /// Cluster mode: leave filesystem rows outside this node's roots alone (another node's).
    own_files_only: bool,
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
            roots: None,
            disk: Arc::new(Statvfs),
            retry_pending: AtomicBool::new(false),
            trigger: RetentionTrigger::default(),
            own_files_only: false,
        }
    }

    /// Runs a pass whenever `trigger` is pulled, besides the schedule.
    pub fn with_trigger(mut self, trigger: RetentionTrigger) -> Retention {
        self.trigger = trigger;
        self
    }

    /// Cluster mode: filesystem segments outside this node's storage roots are other nodes'
    /// files, left to them.
    pub fn own_files_only(mut self, yes: bool) -> Retention {
        self.own_files_only = yes;
        self
    }

    /// Applies the free-space floor to every available storage root's filesystem (instead of
    /// only the one holding `archive_dir`), and leaves the segments of unavailable roots alone.
    pub fn with_roots(mut self, roots: Arc<MarkedRoots>) -> Retention {
        self.roots = Some(roots);
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

    /// One pass as if the time were `now_us`: purges, age and bytes per stream, then the
    /// free-space floor. (Leases are always judged by the real clock.)
    pub async fn run_once_at(&self, now_us: i64) -> Result<Report, RetentionError> {
        let mut report = Report::default();
        if self.retry_pending.swap(false, Ordering::Relaxed) {
            self.finish_pending_into(&mut report)
                .await
                .inspect_err(|_| self.retry_pending.store(true, Ordering::Relaxed))?;
        }
        for (id, requested_at_us) in q::purges(&self.db).await? {
            self.purge(id, requested_at_us, &mut report)
                .instrument(tracing::info_span!("stream", id = %id))
                .await?;
        }
        // Streams with settings, then archives whose stream row is gone (global limits only).
        let mut limits: Vec<(Uuid, RetentionSpec)> = Vec::new();
        let mut known = HashSet::new();
        for rec in db::streams::list_all(&self.db).await? {
            known.insert(rec.spec.id);
            limits.push((rec.spec.id, self.effective(rec.spec.retention)));
        }
        if self.config.max_age_s.is_some() || self.config.max_bytes.is_some() {
            for id in q::streams_with_segments(&self.db).await? {
                if !known.contains(&id) {
                    limits.push((id, self.effective(RetentionSpec::default())));
                }
            }
        }
        for (id, spec) in limits {
            let RetentionSpec {
                max_age_s,
                max_bytes,
            } = spec;
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
        for volume in self.volumes(&[]).await {
            self.keep_free_space(&volume, None, &mut report).await?;
        }
        Ok(report)
    }

    /// A stream's limits, each falling back to the `[retention]` default.
    fn effective(&self, own: RetentionSpec) -> RetentionSpec {
        RetentionSpec {
            max_age_s: own.max_age_s.or(self.config.max_age_s),
            max_bytes: own.max_bytes.or(self.config.max_bytes),
        }
    }

    /// An emergency pass: the free-space rule on the filesystems holding `dirs` (a recorder's
    /// write failed there for lack of space), with at least [`emergency_free_bytes`] as target.
    pub async fn free_space_now(&self, dirs: &[PathBuf]) -> Result<Report, RetentionError> {
        let mut report = Report::default();
        for volume in self.volumes(dirs).await {
            let usage = self.usage(&volume).await?;
            let floor = self
                .config
                .min_free_bytes_of(usage.total_bytes)
                .unwrap_or(0)
                .max(emergency_free_bytes(usage.total_bytes));
            self.keep_free_space(&volume, Some(floor), &mut report)
                .await?;
        }
        Ok(report)
    }

    /// Finishes pending deletes, then runs a pass every `[retention] interval_s`, and at once
    /// when woken (a full disk: an emergency pass first; a purge), until `cancel`. A pass
    /// interrupted by cancellation leaves at most a batch of `deleting` rows, finished at the next
    /// start.
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
                    _ = self.trigger.woken() => {}
                }
                let full = self.trigger.take_full();
                if !full.is_empty() {
                    tracing::warn!(dirs = ?full, "a recorder found its disk full: emergency retention pass");
                    let result = tokio::select! {
                        _ = cancel.cancelled() => break,
                        r = self.free_space_now(&full) => r,
                    };
                    self.log_pass(result, true);
                }
                let result = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = self.run_once() => r,
                };
                self.log_pass(result, false);
            }
        }
        .instrument(tracing::info_span!("retention"))
        .await
    }

    fn log_pass(&self, result: Result<Report, RetentionError>, emergency: bool) {
        match result {
            Ok(r) => {
                self.archive.retention.add(&r, emergency);
                if r.deleted() > 0 || r.failed > 0 || r.below_floor || r.deferred > 0 {
                    tracing::info!(
                        emergency,
                        by_purge = r.by_purge,
                        by_age = r.by_age,
                        by_bytes = r.by_bytes,
                        by_free_space = r.by_free_space,
                        finished = r.finished,
                        bytes_freed = r.bytes_freed,
                        failed = r.failed,
                        below_floor = r.below_floor,
                        deferred = r.deferred,
                        "retention pass"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, emergency, "retention pass failed"),
        }
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

    /// Carries out a purge: deletes the stream's segments that started before the request, then
    /// forgets the purge once nothing but protected segments is left (leased ones are retried at
    /// the next pass).
    async fn purge(
        &self,
        stream: Uuid,
        requested_at_us: i64,
        report: &mut Report,
    ) -> Result<(), RetentionError> {
        let filter = CandidateFilter {
            start_before_us: requested_at_us,
            end_before_us: i64::MAX,
            include_missing: true,
            storage: self.reachable(),
        };
        self.delete_matching(stream, filter, Reason::Purge, report)
            .await?;
        if !q::purge_remaining(&self.db, stream, requested_at_us).await? {
            q::purge_done(&self.db, stream, requested_at_us).await?;
            tracing::info!(stream = %stream, "archive purged");
        }
        Ok(())
    }

    /// Deletes every segment of the stream that ended at or before `cutoff_us`, oldest first.
    async fn delete_older(
        &self,
        stream: Uuid,
        cutoff_us: i64,
        report: &mut Report,
    ) -> Result<(), RetentionError> {
        let filter = CandidateFilter {
            start_before_us: cutoff_us,
            end_before_us: cutoff_us,
            include_missing: true,
            storage: self.reachable(),
        };
        self.delete_matching(stream, filter, Reason::Age, report)
            .await
    }

    /// Deletes every candidate of `filter`, a batch at a time, oldest first.
    async fn delete_matching(
        &self,
        stream: Uuid,
        filter: CandidateFilter<'_>,
        reason: Reason,
        report: &mut Report,
    ) -> Result<(), RetentionError> {
        loop {
            let batch = q::oldest_candidates(&self.db, stream, filter, BATCH, db::now_us()).await?;
            if batch.is_empty() || !self.mark_and_delete(batch, reason, report).await? {
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
            start_before_us: i64::MAX,
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
            let batch = q::oldest_candidates(&self.db, stream, filter, BATCH, db::now_us()).await?;
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

    /// The filesystems to keep free space on: those of the available storage roots (or of
    /// `archive_dir` without a root registry), each once. With `only` non-empty, just the ones
    /// holding those directories.
    async fn volumes(&self, only: &[PathBuf]) -> Vec<Volume> {
        let roots: Vec<PathBuf> = match &self.roots {
            Some(r) => r
                .all()
                .iter()
                .filter(|r| r.state().is_available())
                .map(|r| r.path.clone())
                .collect(),
            None => vec![self.archive_dir.clone()],
        };
        let wanted: Option<HashSet<u64>> = if only.is_empty() {
            None
        } else {
            let mut devs = HashSet::new();
            for d in only {
                if let Some(dev) = device_of(d).await {
                    devs.insert(dev);
                }
            }
            Some(devs)
        };
        let mut volumes: Vec<Volume> = Vec::new();
        for root in roots {
            let Some(dev) = device_of(&root).await else {
                continue;
            };
            if wanted.as_ref().is_some_and(|w| !w.contains(&dev)) {
                continue;
            }
            match volumes.iter_mut().find(|v| v.dev == dev) {
                Some(v) => v.roots.push(root),
                None => volumes.push(Volume {
                    dev,
                    roots: vec![root],
                }),
            }
        }
        volumes
    }

    /// Whether a segment file lies on `volume`: under one of its roots, and that root is the
    /// innermost root holding the file (a nested root may be another disk).
    fn on_volume(&self, volume: &Volume, key: &str) -> bool {
        let path = Path::new(key);
        match &self.roots {
            Some(r) => r
                .root_of(path)
                .is_some_and(|root| volume.roots.contains(&root.path)),
            None => true,
        }
    }

    async fn usage(&self, volume: &Volume) -> Result<DiskUsage, RetentionError> {
        let Some(dir) = volume.roots.first().cloned() else {
            return Ok(DiskUsage {
                total_bytes: 0,
                free_bytes: 0,
            });
        };
        let disk = self.disk.clone();
        let probe = dir.clone();
        tokio::task::spawn_blocking(move || disk.usage(&probe))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| RetentionError::Disk { path: dir, source })
    }

    /// How many bytes are missing to meet `floor` (the configured one when `None`) on `volume`,
    /// or `None` when it is met (or no floor is set).
    async fn deficit(
        &self,
        volume: &Volume,
        floor: Option<u64>,
    ) -> Result<Option<u64>, RetentionError> {
        if floor.is_none()
            && self.config.min_free_bytes.is_none()
            && self.config.min_free_percent.is_none()
        {
            return Ok(None);
        }
        let usage = self.usage(volume).await?;
        let floor = floor
            .or_else(|| self.config.min_free_bytes_of(usage.total_bytes))
            .unwrap_or(0);
        Ok((usage.free_bytes < floor).then(|| floor - usage.free_bytes))
    }

    /// Deletes the oldest filesystem segments on `volume` while its free space is below `floor`
    /// (the configured floor when `None`).
    async fn keep_free_space(
        &self,
        volume: &Volume,
        floor: Option<u64>,
        report: &mut Report,
    ) -> Result<(), RetentionError> {
        let filter = CandidateFilter {
            start_before_us: i64::MAX,
            end_before_us: i64::MAX,
            include_missing: false,
            storage: Some(StorageKind::Filesystem.as_str()),
        };
        for _ in 0..MAX_FLOOR_ROUNDS {
            let Some(deficit) = self.deficit(volume, floor).await? else {
                return Ok(());
            };
            // The oldest candidates of every stream on this filesystem, merged by start time.
            let now = db::now_us();
            let mut pool = Vec::new();
            for stream in q::streams_with_segments(&self.db).await? {
                let batch = q::oldest_candidates(&self.db, stream, filter, BATCH, now).await?;
                pool.extend(
                    batch
                        .into_iter()
                        .filter(|c| self.on_volume(volume, &c.storage_key)),
                );
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
        let below = self.deficit(volume, floor).await?.is_some();
        if below {
            report.below_floor = true;
            tracing::warn!(roots = ?volume.roots, "free space is still below the floor");
        }
        Ok(())
    }

    /// Whether a segment's file lies in a storage root that is unavailable (its marker missing:
    /// a disk not mounted). Such rows are left alone by every rule until the root is back: the
    /// file cannot be deleted now, and a row deleted without it would leave the file to come back
    /// unindexed.
    ///
    /// In cluster mode ([`Retention::own_files_only`]) a filesystem row outside this node's roots
    /// is another node's file, which only that node can delete: left alone the same way.
    fn on_unavailable_root(&self, row: &Deletable) -> bool {
        row.storage == StorageKind::Filesystem.as_str()
            && self
                .roots
                .as_ref()
                .is_some_and(|r| match r.root_of(Path::new(&row.storage_key)) {
                    Some(root) => !root.state().is_available(),
                    None => self.own_files_only,
                })
    }

    /// Marks `batch` deleting, then deletes what was marked. Returns whether anything was marked
    /// (false ends the caller's loop: the candidates changed under us, or the oldest ones wait
    /// for their storage root).
    async fn mark_and_delete(
        &self,
        batch: Vec<Deletable>,
        reason: Reason,
        report: &mut Report,
    ) -> Result<bool, RetentionError> {
        let (batch, waiting): (Vec<Deletable>, Vec<Deletable>) = batch
            .into_iter()
            .partition(|row| !self.on_unavailable_root(row));
        if !waiting.is_empty() {
            tracing::debug!(
                count = waiting.len(),
                ?reason,
                "segments on an unavailable storage root left until it is back"
            );
            report.deferred += waiting.len() as u64;
        }
        if batch.is_empty() {
            return Ok(false);
        }
        let marked = q::mark_deleting(&self.db, &batch, db::now_us()).await?;
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
            /// Its storage root is unavailable: the file stays until the root is back (the row
            /// stays `deleting`, retried at a later pass).
            RootUnavailable,
        }
        let results: Vec<(Deletable, Outcome)> = futures::stream::iter(marked)
            .map(|row| async move {
                if self.on_unavailable_root(&row) {
                    return (row, Outcome::RootUnavailable);
                }
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
                Outcome::RootUnavailable => {
                    report.deferred += 1;
                    self.retry_pending.store(true, Ordering::Relaxed);
                }
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
            Reason::Purge => report.by_purge += n,
            Reason::Age => report.by_age += n,
            Reason::Bytes => report.by_bytes += n,
            Reason::FreeSpace => report.by_free_space += n,
        }
        Ok(())
    }
}

/// Device id of the filesystem holding `dir` (or its nearest existing ancestor: a recorder's day
/// directory may not exist yet).
async fn device_of(dir: &Path) -> Option<u64> {
    for d in dir.ancestors() {
        if let Ok(m) = tokio::fs::metadata(d).await {
            return Some(m.dev());
        }
    }
    None
}
