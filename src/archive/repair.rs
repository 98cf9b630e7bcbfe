//! Start-up repair and reconciliation of the archive with the files on disk.
//!
//! Nothing here hides or deletes footage on a doubt:
//!
//! * **Only verified roots.** A file is only taken as gone when its storage root is available
//!   (marker present, `archive::roots`); rows under an unavailable root are left exactly as they
//!   are and dealt with once the root is back.
//! * **Rows left `recording`** by a crash (repaired before recorders start, or when their root comes
//!   back): the file is scanned; a torn tail is cut off, and so is everything from the first
//!   fragment that does not parse (the bytes cut after a corrupt fragment are kept beside the file
//!   as `<file>.cut-<offset>`); the real end and size are stored and the row closes (its run
//!   extended). A file is deleted with its row only on positive evidence that it holds no media:
//!   one of our fragmented files with no complete fragment at all. A read error, a file that is not
//!   ours, or a first fragment that does not parse leaves file and row alone (logged, retried at the
//!   next start).
//! * **Files without a row** (the process died between creating a file and inserting its row, or
//!   files copied in) are indexed, each in one transaction (row and run together). They are never
//!   modified or deleted, with one exception: the local copy of a segment whose upload to S3 was
//!   committed just before a crash (an S3 row of the same stream points at an object of the same
//!   name and size) is removed, as the uploader would have, instead of being indexed twice.
//! * **Complete rows whose file is gone** are marked `missing`, conditionally (the row must still
//!   be a filesystem row with that key and not be uploading, so the uploader moving it to S3 and
//!   deleting the local copy meanwhile is no race) and with `runs` in step.
//! * **Missing rows whose file is back** are restored (`complete`, runs extended), checked at every
//!   root check.
//!
//! [`Reconciler::run`] is a tracked task: server shutdown cancels it and waits for it before the
//! pool closes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use super::markers::{MarkedRoots, Root};
use crate::db::segments::{self, MissingBy, NewSegment, Restored, SegmentRow, SegmentState};
use crate::db::{Db, DbError};
use crate::media::fmp4::{self, is_fragmented_init, split_fragments};
use crate::media::mp4file::Mp4File;
use crate::media::{MediaError, StreamParams, TrackKind};
use crate::stream::StorageKind;

/// Rows checked per batch (one transaction marks a batch's missing rows).
const BATCH: u32 = 500;

/// What a repair or reconciliation pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Rows left `recording` that were closed (torn tails cut).
    pub repaired: u64,
    /// Rows (and files) removed because the file held no complete fragment.
    pub removed_empty: u64,
    /// Rows whose file is gone, marked `missing`.
    pub missing: u64,
    /// `missing` rows whose file came back, restored.
    pub restored: u64,
    /// Files without a row that were indexed.
    pub orphans_indexed: u64,
    /// Files (with or without a row) that hold no playable media we can index: left in place.
    pub unplayable: u64,
    /// Files that could not be read or checked (I/O errors): left in place, retried later.
    pub io_errors: u64,
    /// Rows left for later because their storage root is unavailable (or unknown).
    pub deferred: u64,
    /// Local copies of uploaded segments that a crash left behind (the row already pointed at
    /// the object, of the same size), removed as the uploader would have.
    pub uploaded_copies: u64,
}

impl RepairReport {
    fn is_empty(&self) -> bool {
        *self == RepairReport::default()
    }
}

/// Running totals of every pass since start, for operators and `/metrics`.
#[derive(Debug, Default)]
pub struct ReconcileCounters {
    pub repaired: AtomicU64,
    pub removed_empty: AtomicU64,
    pub missing: AtomicU64,
    pub restored: AtomicU64,
    pub orphans_indexed: AtomicU64,
    pub unplayable: AtomicU64,
    pub io_errors: AtomicU64,
    pub deferred: AtomicU64,
    pub uploaded_copies: AtomicU64,
    /// Passes over a root that finished.
    pub passes: AtomicU64,
    /// Directories whose entries a pass did not look at: unchanged since the root's last clean
    /// pass (their change time says so).
    pub dirs_skipped: AtomicU64,
    /// Segment files a pass looked up in the index (candidates for files without a row).
    pub files_examined: AtomicU64,
    /// Complete rows whose file a pass checked for.
    pub rows_examined: AtomicU64,
}

impl ReconcileCounters {
    fn add(&self, r: &RepairReport) {
        for (c, n) in [
            (&self.repaired, r.repaired),
            (&self.removed_empty, r.removed_empty),
            (&self.missing, r.missing),
            (&self.restored, r.restored),
            (&self.orphans_indexed, r.orphans_indexed),
            (&self.unplayable, r.unplayable),
            (&self.io_errors, r.io_errors),
            (&self.deferred, r.deferred),
            (&self.uploaded_copies, r.uploaded_copies),
        ] {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Directories skipped, files examined, rows examined so far.
    fn pass_stats(&self) -> PassStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PassStats(
            get(&self.dirs_skipped),
            get(&self.files_examined),
            get(&self.rows_examined),
        )
    }

    /// The totals as one report.
    pub fn snapshot(&self) -> RepairReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RepairReport {
            repaired: get(&self.repaired),
            removed_empty: get(&self.removed_empty),
            missing: get(&self.missing),
            restored: get(&self.restored),
            orphans_indexed: get(&self.orphans_indexed),
            unplayable: get(&self.unplayable),
            io_errors: get(&self.io_errors),
            deferred: get(&self.deferred),
            uploaded_copies: get(&self.uploaded_copies),
        }
    }
}

/// Directories skipped, files examined, rows examined (see [`ReconcileCounters`]).
#[derive(Debug, Clone, Copy)]
struct PassStats(u64, u64, u64);

impl PassStats {
    fn since(self, before: &PassStats) -> (u64, u64, u64) {
        (
            self.0.saturating_sub(before.0),
            self.1.saturating_sub(before.1),
            self.2.saturating_sub(before.2),
        )
    }
}

/// Errors that stop a pass (per-file problems are logged and counted instead).
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The playable part of one of our fMP4 segment files.
struct Scanned {
    valid_end: u64,
    media_us: i64,
    init: Vec<u8>,
    params: StreamParams,
}

/// What a segment file holds.
enum Scan {
    Media(Scanned),
    /// Positive evidence of no media: one of our fragmented files without a single complete
    /// fragment (or an empty file).
    Empty,
}

/// Why a file could not be scanned. Neither is evidence against the file.
enum ScanError {
    /// Reading (or cutting) it failed.
    Io(std::io::Error),
    /// Not one of our fragmented files, or its first fragment does not parse.
    NotOurs(MediaError),
}

impl From<std::io::Error> for ScanError {
    fn from(e: std::io::Error) -> Self {
        ScanError::Io(e)
    }
}

/// Reads one of our segment files and measures its playable prefix: every complete fragment up to
/// the first one that does not parse. With `cut`, the file is truncated there (the bytes after a
/// corrupt fragment are first saved beside it, since they may hold recoverable media).
fn scan_segment(path: &Path, cut: bool) -> Result<Scan, ScanError> {
    let data = std::fs::read(path)?;
    if data.is_empty() {
        return Ok(Scan::Empty);
    }
    let layout = split_fragments(&data).map_err(ScanError::NotOurs)?;
    let init = &data[layout.init.clone()];
    if !is_fragmented_init(init) {
        return Err(ScanError::NotOurs(MediaError::InvalidMp4(
            "not a fragmented MP4".into(),
        )));
    }
    let params = fmp4::parse_init(init).map_err(ScanError::NotOurs)?;
    if layout.fragments.is_empty() {
        return Ok(Scan::Empty);
    }
    let main = if params.video.is_some() {
        TrackKind::Video
    } else {
        TrackKind::Audio
    };
    let ts = params.timescale(main);
    let mut ticks: i64 = 0;
    let mut valid_end = layout.valid_end;
    let mut corrupt_at = None;
    for r in &layout.fragments {
        match fmp4::parse_fragment(&params, &data[r.clone()]) {
            Ok(frames) => {
                ticks += frames
                    .iter()
                    .filter(|f| f.track == main)
                    .map(|f| i64::from(f.duration))
                    .sum::<i64>();
            }
            Err(e) if r.start == layout.fragments[0].start => return Err(ScanError::NotOurs(e)),
            Err(e) => {
                tracing::warn!(path = %path.display(), offset = r.start, error = %e,
                    "corrupt fragment: the segment keeps the fragments before it");
                valid_end = r.start;
                corrupt_at = Some(r.start);
                break;
            }
        }
    }
    if cut && valid_end < data.len() {
        if let Some(offset) = corrupt_at {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".cut-{offset}"));
            let side = PathBuf::from(name);
            std::fs::write(&side, &data[offset..])?;
            std::fs::File::open(&side)?.sync_all()?;
        }
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(valid_end as u64)?;
        f.sync_all()?;
    }
    Ok(Scan::Media(Scanned {
        valid_end: valid_end as u64,
        media_us: (i128::from(ticks) * 1_000_000 / i128::from(ts.max(1))) as i64,
        init: init.to_vec(),
        params,
    }))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ScanError> + Send + 'static,
) -> Result<T, ScanError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ScanError::Io(std::io::Error::other(e))))
}

/// Whether a file exists: `None` when that cannot be told (an I/O error other than "not found").
async fn exists(path: &Path) -> Option<bool> {
    match tokio::fs::metadata(path).await {
        Ok(_) => Some(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(false),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot check a segment file");
            None
        }
    }
}

/// Closes every segment an earlier run left `recording` (rows up to `max_id`) whose root is
/// available. Call before recorders start; rows under unavailable roots are repaired when their
/// root comes back ([`Reconciler`]).
pub async fn repair_recording(
    db: &Db,
    roots: &MarkedRoots,
    max_id: i64,
) -> Result<RepairReport, RepairError> {
    let mut report = RepairReport::default();
    for row in segments::with_state(db, SegmentState::Recording).await? {
        if row.id <= max_id {
            repair_row(db, roots, &row, &mut report).await?;
        }
    }
    if !report.is_empty() {
        tracing::info!(?report, "archive repaired");
    }
    Ok(report)
}

async fn repair_row(
    db: &Db,
    roots: &MarkedRoots,
    row: &SegmentRow,
    report: &mut RepairReport,
) -> Result<(), RepairError> {
    let path = PathBuf::from(&row.storage_key);
    if !roots.is_available_for(&path) {
        report.deferred += 1;
        return Ok(());
    }
    match exists(&path).await {
        None => {
            report.io_errors += 1;
            return Ok(());
        }
        Some(false) => {
            let marked =
                segments::mark_missing(db, std::slice::from_ref(row), MissingBy::Reconcile).await?;
            report.missing += marked.len() as u64;
            return Ok(());
        }
        Some(true) => {}
    }
    let p = path.clone();
    match blocking(move || scan_segment(&p, true)).await {
        Ok(Scan::Media(s)) => {
            segments::finalize(
                db,
                row.id,
                row.start_us + s.media_us,
                s.media_us,
                s.valid_end as i64,
            )
            .await?;
            report.repaired += 1;
        }
        Ok(Scan::Empty) => {
            tracing::warn!(path = %path.display(), "segment has no complete fragment: removed");
            if let Err(e) = tokio::fs::remove_file(&path).await {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the empty segment file; row kept");
                report.io_errors += 1;
                return Ok(());
            }
            segments::delete(db, row.id).await?;
            report.removed_empty += 1;
        }
        Err(ScanError::Io(e)) => {
            tracing::error!(path = %path.display(), error = %e,
                "cannot read a segment left recording: file and row left as they are, retried at the next start");
            report.io_errors += 1;
        }
        Err(ScanError::NotOurs(e)) => {
            tracing::error!(path = %path.display(), error = %e,
                "a segment left recording has no playable fragment: file and row left as they are");
            report.unplayable += 1;
        }
    }
    Ok(())
}

/// Parses `<uuid>_<unix-seconds>.mp4`.
pub fn parse_segment_name(name: &str) -> Option<(uuid::Uuid, i64)> {
    let stem = name.strip_suffix(".mp4")?;
    let (id, secs) = stem.rsplit_once('_')?;
    let id = uuid::Uuid::parse_str(id).ok()?;
    let secs: i64 = secs.parse().ok()?;
    (0..=i64::MAX / 1_000_000 / 2)
        .contains(&secs)
        .then_some((id, secs))
}

/// A change made within this much before a pass started listing may not show in a directory's
/// change time (timestamp granularity, clocks read a moment apart): such a directory is looked at
/// again by the next pass.
const CHANGE_MARGIN_US: i64 = 2_000_000;

/// Deepest directory level of the layout `<root>/<uuid>/<day>/<file>` (the root is level 0). Files
/// directly in the root or a camera directory (the Go original's flat layout) are found too.
const DAY_DEPTH: u8 = 2;

/// When a directory last changed, in µs since the epoch: its *change* time (ctime), which moves
/// whenever an entry is created, removed or renamed in it and when the directory itself is renamed
/// or copied in, and which, unlike the modification time, no tool (`touch -d`, `cp -a`, `rsync
/// -t`) can set back. `None` where the platform has none: such a directory is always looked at.
#[cfg(unix)]
fn change_time_us(m: &std::fs::Metadata) -> Option<i64> {
    use std::os::unix::fs::MetadataExt;
    Some(
        m.ctime()
            .saturating_mul(1_000_000)
            .saturating_add(m.ctime_nsec() / 1_000),
    )
}

#[cfg(not(unix))]
fn change_time_us(_: &std::fs::Metadata) -> Option<i64> {
    None
}

/// What a pass found in one directory.
enum Looked {
    /// A day directory unchanged since the last clean pass: not read.
    Skipped,
    /// Read: its segment files and subdirectory names. `changed`: its entries must be reconciled
    /// (otherwise only its subdirectories are visited).
    Listed {
        changed: bool,
        files: Vec<PathBuf>,
        subdirs: Vec<String>,
    },
}

/// Stats and (unless it is an unchanged day directory) reads one directory of a root.
fn look(dir: &Path, depth: u8, since_us: Option<i64>, forced: bool) -> std::io::Result<Looked> {
    let meta = std::fs::metadata(dir)?;
    let changed = forced
        || since_us.is_none_or(|t| {
            change_time_us(&meta).is_none_or(|c| c >= t.saturating_sub(CHANGE_MARGIN_US))
        });
    if !changed && depth >= DAY_DEPTH {
        return Ok(Looked::Skipped);
    }
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let name = e.file_name();
        if ft.is_dir() && depth < DAY_DEPTH {
            subdirs.push(name.to_string_lossy().into_owned());
        } else if ft.is_file()
            && name
                .to_str()
                .is_some_and(|n| parse_segment_name(n).is_some())
        {
            files.push(e.path());
        }
    }
    files.sort();
    subdirs.sort();
    Ok(Looked::Listed {
        changed,
        files,
        subdirs,
    })
}

/// Reconciles storage roots with the index, in the background, for as long as the server runs:
/// each root once it is (again) available, and `missing` rows whose file came back at every
/// round of root checks.
pub struct Reconciler {
    db: Db,
    roots: Arc<MarkedRoots>,
    /// Files named from this time on belong to recorders of this run (their rows may be a moment
    /// or, during an index outage, a while behind): never indexed as orphans.
    started_us: i64,
    /// Rows up to this id were made by earlier runs (a `recording` one is a crash's leftover).
    max_id: i64,
    pub counters: Arc<ReconcileCounters>,
}

impl Reconciler {
    pub fn new(db: Db, roots: Arc<MarkedRoots>, started_us: i64, max_id: i64) -> Reconciler {
        Reconciler {
            db,
            roots,
            started_us,
            max_id,
            counters: Arc::default(),
        }
    }

    /// Runs until cancelled: reconciles available roots at once, then checks the roots every
    /// `[archive] root_check_s`.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            for root in self.roots.take_unreconciled() {
                match self.reconcile_root(&root, &cancel).await {
                    Ok(true) => {
                        self.counters.passes.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => self.roots.reconcile_again(&root),
                    Err(e) => {
                        tracing::warn!(root = %root.path.display(), error = %e, "archive reconciliation failed; retried later");
                        self.roots.reconcile_again(&root);
                    }
                }
                if cancel.is_cancelled() {
                    return;
                }
            }
            if let Err(e) = self.restore_returned(&cancel).await {
                tracing::warn!(error = %e, "cannot check missing segments");
            }
            if !self.roots.pause(&cancel).await {
                return;
            }
            self.roots.check_all().await;
        }
    }

    fn record(&self, what: &str, root: &Root, report: &RepairReport) {
        self.counters.add(report);
        if !report.is_empty() {
            tracing::info!(root = %root.path.display(), ?report, "{what}");
        }
    }

    /// Whether a segment key belongs to `root` (and not to a root nested in it).
    fn owns(&self, root: &Arc<Root>, key: &str) -> bool {
        self.roots
            .root_of(Path::new(key))
            .is_some_and(|r| Arc::ptr_eq(&r, root))
    }

    /// One root: leftovers of crashed recorders, files without rows, rows without files. Returns
    /// false when interrupted (cancelled, or the root became unavailable on the way).
    ///
    /// Incremental: a pass that finishes without I/O errors stores when it started listing the
    /// root (`storage_roots.reconciled_from_us`). The next pass skips every directory whose change
    /// time is older than that (less [`CHANGE_MARGIN_US`]): no entry of it was created, removed
    /// or renamed since, so its files and rows are as the last pass left them. A changed day
    /// directory is reconciled whole (its files against the index, its rows against its files);
    /// in a changed root or camera directory, the files directly in it and the rows of
    /// subdirectories that are gone are, and a subdirectory the index has no rows in (created,
    /// or moved in with its old times) is reconciled whole with everything below it.
    pub async fn reconcile_root(
        &self,
        root: &Arc<Root>,
        cancel: &CancellationToken,
    ) -> Result<bool, RepairError> {
        let began = std::time::Instant::now();
        let listing_from = crate::db::now_us();
        let since_us = match root.id() {
            Some(id) => crate::db::roots::reconciled_from(&self.db, id)
                .await?
                // A time ahead of the clock (set back since): trust nothing.
                .filter(|t| *t <= listing_from),
            None => None,
        };
        let mut report = RepairReport::default();
        for row in segments::with_state(&self.db, SegmentState::Recording).await? {
            if row.id <= self.max_id && self.owns(root, &row.storage_key) {
                repair_row(&self.db, &self.roots, &row, &mut report).await?;
            }
        }
        let nested: Vec<PathBuf> = self
            .roots
            .all()
            .into_iter()
            .filter(|r| r.path != root.path && r.path.starts_with(&root.path))
            .map(|r| r.path.clone())
            .collect();
        let before = self.counters.pass_stats();
        let mut stack = vec![(root.path.clone(), 0u8, false)];
        while let Some((dir, depth, forced)) = stack.pop() {
            if cancel.is_cancelled() {
                self.record("archive reconciliation interrupted", root, &report);
                return Ok(false);
            }
            let d = dir.clone();
            let looked = tokio::task::spawn_blocking(move || look(&d, depth, since_us, forced))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let (changed, files, subdirs) = match looked {
                Ok(Looked::Listed {
                    changed,
                    files,
                    subdirs,
                }) => (changed, files, subdirs),
                Ok(Looked::Skipped) => {
                    self.counters.dirs_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // Gone since its parent was read: the parent changed, so the next pass sees to it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read an archive directory");
                    report.io_errors += 1;
                    continue;
                }
            };
            let mut known = std::collections::HashSet::new();
            if changed {
                if !self
                    .reconcile_files(root, &files, &mut report, cancel)
                    .await?
                {
                    self.record("archive reconciliation interrupted", root, &report);
                    return Ok(false);
                }
                let done = if depth >= DAY_DEPTH {
                    self.check_rows_under(root, &dir, &mut report, cancel)
                        .await?
                } else {
                    self.check_rows_beside(root, &dir, &subdirs, &mut known, &mut report, cancel)
                        .await?
                };
                if !done {
                    self.record("archive reconciliation interrupted", root, &report);
                    return Ok(false);
                }
            } else {
                self.counters.dirs_skipped.fetch_add(1, Ordering::Relaxed);
            }
            for sub in subdirs.into_iter().rev() {
                let path = dir.join(&sub);
                if nested.contains(&path) {
                    continue;
                }
                let forced = forced || (changed && !known.contains(&sub));
                stack.push((path, depth + 1, forced));
            }
        }
        if report.io_errors == 0
            && let Some(id) = root.id()
        {
            crate::db::roots::set_reconciled_from(&self.db, id, listing_from).await?;
        }
        let stats = self.counters.pass_stats().since(&before);
        self.counters.add(&report);
        // Also when there was nothing to do: the end of a pass is observable (tests wait for it
        // before they stop a server whose archive must match its index; the bench times it).
        tracing::info!(root = %root.path.display(), ?report, incremental = since_us.is_some(),
            dirs_skipped = stats.0, files_examined = stats.1, rows_examined = stats.2,
            elapsed_ms = began.elapsed().as_millis() as u64,
            "archive reconciled with the files on disk");
        Ok(true)
    }

    /// Files directly in a changed directory: each one without a row is indexed (or, the local
    /// copy of an uploaded segment, removed). False when cancelled.
    async fn reconcile_files(
        &self,
        root: &Arc<Root>,
        files: &[PathBuf],
        report: &mut RepairReport,
        cancel: &CancellationToken,
    ) -> Result<bool, RepairError> {
        for path in files {
            if cancel.is_cancelled() {
                return Ok(false);
            }
            let key = path.to_string_lossy().into_owned();
            let named_us = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_segment_name)
                .map_or(i64::MAX, |(_, secs)| secs * 1_000_000);
            if named_us >= self.started_us - 1_000_000 || !self.owns(root, &key) {
                continue;
            }
            self.counters.files_examined.fetch_add(1, Ordering::Relaxed);
            if segments::key_exists(&self.db, &key).await? {
                continue;
            }
            if remove_uploaded_copy(&self.db, path, report).await? {
                continue;
            }
            index_orphan(&self.db, path, report).await?;
        }
        Ok(true)
    }

    /// Every complete row under a changed day directory, in key order, a batch at a time.
    async fn check_rows_under(
        &self,
        root: &Arc<Root>,
        dir: &Path,
        report: &mut RepairReport,
        cancel: &CancellationToken,
    ) -> Result<bool, RepairError> {
        let key = dir.to_string_lossy().into_owned();
        let mut after: Option<String> = None;
        loop {
            let rows = segments::under_dir(
                &self.db,
                &key,
                &[SegmentState::Complete],
                after.as_deref(),
                BATCH,
            )
            .await?;
            let Some(last) = rows.last() else {
                return Ok(true);
            };
            after = Some(last.storage_key.clone());
            if !self.check_rows(root, rows, report, cancel).await? {
                return Ok(false);
            }
        }
    }

    /// The complete rows of a changed root or camera directory that are not under one of its
    /// present `subdirs`: files directly in it, and files of subdirectories that are gone. The
    /// key range of a present subdirectory is jumped over (one index probe each; those are
    /// visited on their own), and the subdirectories the index has rows in are put in `known`.
    async fn check_rows_beside(
        &self,
        root: &Arc<Root>,
        dir: &Path,
        subdirs: &[String],
        known: &mut std::collections::HashSet<String>,
        report: &mut RepairReport,
        cancel: &CancellationToken,
    ) -> Result<bool, RepairError> {
        let present: std::collections::HashSet<&str> = subdirs.iter().map(String::as_str).collect();
        let (lo, hi) = segments::key_range(&dir.to_string_lossy());
        let (mut from, mut inclusive, mut limit) = (lo.clone(), true, 1);
        loop {
            let rows = segments::in_key_range(
                &self.db,
                &from,
                inclusive,
                &hi,
                &[SegmentState::Complete],
                limit,
            )
            .await?;
            let Some(last) = rows.last() else {
                return Ok(true);
            };
            (from, inclusive, limit) = (last.storage_key.clone(), false, BATCH);
            let mut check = Vec::new();
            for row in rows {
                let rest = row.storage_key.get(lo.len()..).unwrap_or("");
                if let Some((sub, _)) = rest.split_once('/')
                    && present.contains(sub)
                {
                    // Keys under `dir/sub/` sort before `dir/sub0`.
                    (from, inclusive, limit) = (format!("{lo}{sub}0"), true, 1);
                    known.insert(sub.to_owned());
                    break;
                }
                check.push(row);
            }
            if !self.check_rows(root, check, report, cancel).await? {
                return Ok(false);
            }
        }
    }

    /// Marks the rows whose file is gone `missing` (after checking the root again: a disk
    /// unmounted meanwhile must not turn into thousands of missing rows). False when interrupted.
    async fn check_rows(
        &self,
        root: &Arc<Root>,
        rows: Vec<SegmentRow>,
        report: &mut RepairReport,
        cancel: &CancellationToken,
    ) -> Result<bool, RepairError> {
        let mut gone = Vec::new();
        for row in rows {
            if !self.owns(root, &row.storage_key) {
                continue;
            }
            self.counters.rows_examined.fetch_add(1, Ordering::Relaxed);
            match exists(Path::new(&row.storage_key)).await {
                Some(false) => gone.push(row),
                Some(true) => {}
                None => report.io_errors += 1,
            }
        }
        if cancel.is_cancelled() {
            return Ok(false);
        }
        if gone.is_empty() {
            return Ok(true);
        }
        if !self.roots.check(root).await.is_available() {
            return Ok(false);
        }
        let marked = segments::mark_missing(&self.db, &gone, MissingBy::Reconcile).await?;
        for row in gone.iter().filter(|r| marked.contains(&r.id)) {
            tracing::warn!(segment = row.id, stream = %row.stream_id, path = %row.storage_key,
                "segment file is gone: row marked missing");
        }
        report.missing += marked.len() as u64;
        Ok(true)
    }

    /// Restores `missing` rows whose file is back, in available roots.
    pub async fn restore_returned(&self, cancel: &CancellationToken) -> Result<(), RepairError> {
        let mut report = RepairReport::default();
        let mut after = 0;
        loop {
            let rows = segments::missing_after(&self.db, after, BATCH).await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            let mut back = Vec::new();
            for row in rows {
                if cancel.is_cancelled() {
                    return Ok(());
                }
                let path = PathBuf::from(&row.storage_key);
                if row.storage != StorageKind::Filesystem.as_str()
                    || !self.roots.is_available_for(&path)
                {
                    continue;
                }
                if let Some(found) = measure_returned(&row, &path, &mut report).await {
                    back.push((row, found));
                }
            }
            if !back.is_empty() {
                let restored = segments::restore_missing(&self.db, &back).await?;
                for (row, _) in back.iter().filter(|(r, _)| restored.contains(&r.id)) {
                    tracing::info!(segment = row.id, stream = %row.stream_id, path = %row.storage_key,
                        "segment file is back: row restored");
                }
                report.restored += restored.len() as u64;
            }
        }
        self.counters.add(&report);
        Ok(())
    }
}

/// What a missing row's reappeared file holds, if it is complete: the row's own numbers when the
/// size matches; a longer file (a row that was still recording) is measured. A shorter one may
/// still be being copied back: left for a later round.
async fn measure_returned(
    row: &SegmentRow,
    path: &Path,
    report: &mut RepairReport,
) -> Option<Restored> {
    let size = tokio::fs::metadata(path).await.ok()?.len() as i64;
    let as_row = Restored {
        end_us: row.end_us,
        media_duration_us: row.media_duration_us,
        bytes: row.bytes,
    };
    if size == row.bytes {
        return Some(as_row);
    }
    if size < row.bytes {
        return None;
    }
    let p = path.to_owned();
    match blocking(move || scan_segment(&p, false)).await {
        Ok(Scan::Media(s)) if s.media_us > 0 => Some(Restored {
            end_us: row.start_us + s.media_us,
            media_duration_us: s.media_us,
            bytes: s.valid_end as i64,
        }),
        // A whole (progressive) file of another shape: trust its own duration.
        Err(ScanError::NotOurs(_)) => {
            let p = path.to_owned();
            let file =
                tokio::task::spawn_blocking(move || Mp4File::open(&p).map(|f| f.duration_us()))
                    .await
                    .ok()
                    .and_then(Result::ok)?;
            Some(Restored {
                end_us: row.start_us + file,
                media_duration_us: file,
                bytes: size,
            })
        }
        Err(ScanError::Io(_)) => {
            report.io_errors += 1;
            None
        }
        _ => {
            report.unplayable += 1;
            None
        }
    }
}

/// A file without a row may be the local copy of a segment that was uploaded just before a crash
/// (the row points at the object; the uploader removes the local file only after that commit).
/// Indexing it would record the segment twice, so it is removed instead, when an S3 row of the
/// same stream points at an object of the same name and size. Returns whether it was.
async fn remove_uploaded_copy(
    db: &Db,
    path: &Path,
    report: &mut RepairReport,
) -> Result<bool, RepairError> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(false);
    };
    let Some((stream_id, secs)) = parse_segment_name(name) else {
        return Ok(false);
    };
    let sizes = segments::uploaded_copy(db, stream_id, secs, name).await?;
    if sizes.is_empty() {
        return Ok(false);
    }
    match tokio::fs::metadata(path).await {
        Ok(m) if i64::try_from(m.len()).is_ok_and(|len| sizes.contains(&len)) => {}
        // Another size: not that segment's copy. Left alone (and not indexed: it would overlap
        // the uploaded one).
        Ok(_) => {
            tracing::warn!(path = %path.display(),
                "unindexed file named like an uploaded segment but of another size: left in place");
            report.unplayable += 1;
            return Ok(true);
        }
        Err(_) => return Ok(false),
    }
    match tokio::fs::remove_file(path).await {
        Ok(()) => {
            tracing::info!(path = %path.display(),
                "local copy of a segment uploaded before a crash removed");
            report.uploaded_copies += 1;
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e,
                "cannot remove the local copy of an uploaded segment");
            report.io_errors += 1;
        }
    }
    Ok(true)
}

/// Indexes a segment file that has no row, in one transaction. Our fragmented files are indexed
/// up to their last good fragment (the file is not modified: it may still be being copied in);
/// anything else is read as a whole MP4 (e.g. a Go archive file).
async fn index_orphan(db: &Db, path: &Path, report: &mut RepairReport) -> Result<(), RepairError> {
    let Some((stream_id, secs)) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_name)
    else {
        return Ok(());
    };
    let p = path.to_owned();
    let scanned = blocking(move || -> Result<(Vec<u8>, String, i64, u64), ScanError> {
        match scan_segment(&p, false) {
            Ok(Scan::Media(s)) => Ok((s.init, s.params.codec_list(), s.media_us, s.valid_end)),
            Ok(Scan::Empty) => Err(ScanError::NotOurs(MediaError::InvalidMp4(
                "no complete fragment".into(),
            ))),
            Err(ScanError::Io(e)) => Err(ScanError::Io(e)),
            Err(ScanError::NotOurs(_)) => {
                let file = Mp4File::open(&p).map_err(ScanError::NotOurs)?;
                let init = fmp4::init_segment(file.params())
                    .map_err(ScanError::NotOurs)?
                    .to_vec();
                let size = std::fs::metadata(&p)?.len();
                Ok((init, file.params().codec_list(), file.duration_us(), size))
            }
        }
    })
    .await;
    let (init, codecs, media_us, bytes) = match scanned {
        Ok(found) if found.2 > 0 => found,
        Err(ScanError::Io(e)) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read an unindexed segment file: left in place");
            report.io_errors += 1;
            return Ok(());
        }
        _ => {
            tracing::warn!(path = %path.display(), "unindexed segment file is not playable: left in place");
            report.unplayable += 1;
            return Ok(());
        }
    };
    let init_id = segments::upsert_init(db, &codecs, &init).await?;
    let start_us = secs * 1_000_000;
    crate::db::import::insert_complete(
        db,
        &NewSegment {
            stream_id,
            start_us,
            end_us: start_us + media_us,
            media_duration_us: media_us,
            storage: StorageKind::Filesystem,
            storage_key: path.to_string_lossy().into_owned(),
            bytes: bytes as i64,
            state: SegmentState::Complete,
        },
        Some(init_id),
    )
    .await?;
    report.orphans_indexed += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names() {
        let id = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";
        assert_eq!(
            parse_segment_name(&format!("{id}_1700000000.mp4")),
            Some((id.parse().expect("uuid"), 1_700_000_000))
        );
        assert!(parse_segment_name(&format!("{id}_x.mp4")).is_none());
        assert!(parse_segment_name(&format!("{id}_-5.mp4")).is_none());
        assert!(parse_segment_name(&format!("{id}_1.mp4.tmp")).is_none());
        assert!(parse_segment_name("garbage_1.mp4").is_none());
        assert!(parse_segment_name(&format!("{id}_99999999999999999999.mp4")).is_none());
    }
}
