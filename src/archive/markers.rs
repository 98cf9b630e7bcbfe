//! Storage roots: the archive directories, each identified by a marker file whose id is recorded
//! in the index (`storage_roots`).
//!
//! A missing file only means "gone" when the directory it lived in is the one the index knows.
//! An empty mount point (a disk not mounted yet), another disk, or an unreadable directory would
//! otherwise make every row look gone. So a root is **available** only while its marker file is
//! present and carries the recorded id; only then may reconciliation mark rows `missing`. An
//! unavailable root is logged, reported by `/readyz`, retried every `[archive] root_check_s`, and
//! reconciled as soon as its marker is back (rows marked missing earlier come back as well when
//! their files reappear; see `repair`).
//!
//! **Adoption**: a directory without a marker and without a recorded id gets a new marker when
//! the index has no file under it (a new root), or when at least one of the files the index has
//! under it is present (an archive from before markers existed). A directory whose indexed files
//! are all absent is not adopted: it looks like a disk that is not mounted.
//!
//! The roots are the allowed storage roots (`Config::storage_roots`: `[archive] directory`,
//! `[archive] roots`, config-file stream directories), every stream's own directory inside them,
//! and every root recorded before inside them (a stream may have moved to another directory; its
//! old rows still point into the old one). Nothing outside the allowed roots is ever touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::db::segments::{self, SegmentState};
use crate::db::{self, Db, DbError};

/// Name of the marker file in every storage root.
pub const MARKER_FILE: &str = ".video-server-root";

/// How long a marker read may take before the root counts as unavailable (a hung network mount).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Indexed files under an unmarked directory looked at for evidence that it is the right disk.
const ADOPTION_SAMPLE: u32 = 100;

/// What the marker check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootState {
    /// Not checked yet.
    Unknown,
    /// The marker is present and carries the recorded id.
    Available,
    /// The marker file is absent (a disk not mounted, or the marker removed).
    MarkerMissing,
    /// The marker carries another id, or cannot be parsed (another disk, another installation).
    MarkerMismatch,
    /// No marker, no recorded id, and none of the files the index has under it is present.
    NotAdopted,
    /// The marker cannot be read (an I/O error, or the check did not finish in time), or the
    /// index could not be asked.
    Unreadable,
}

impl RootState {
    /// The name `/readyz` and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            RootState::Unknown => "unknown",
            RootState::Available => "ok",
            RootState::MarkerMissing => "marker_missing",
            RootState::MarkerMismatch => "marker_mismatch",
            RootState::NotAdopted => "not_adopted",
            RootState::Unreadable => "unreadable",
        }
    }

    pub fn is_available(self) -> bool {
        self == RootState::Available
    }
}

/// Marker file content.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    id: Uuid,
    #[serde(default, skip_deserializing)]
    note: &'static str,
}

/// What reading a marker file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MarkerRead {
    Absent,
    Id(Uuid),
    Garbage,
}

/// A root's state when the index cannot be asked: the marker against the id known from an earlier
/// check; with no id known, the state stays what it was.
fn without_index(
    marker: &MarkerRead,
    was: RootState,
    known: Option<Uuid>,
) -> (RootState, Option<Uuid>) {
    let state = match (marker, known) {
        (MarkerRead::Id(m), Some(k)) if *m == k => RootState::Available,
        (MarkerRead::Id(_) | MarkerRead::Garbage, Some(_)) => RootState::MarkerMismatch,
        (MarkerRead::Absent, Some(_)) => RootState::MarkerMissing,
        (_, None) => was,
    };
    (state, known)
}

fn read_marker(dir: &Path) -> std::io::Result<MarkerRead> {
    match std::fs::read(dir.join(MARKER_FILE)) {
        Ok(bytes) => Ok(serde_json::from_slice::<Marker>(&bytes)
            .map(|m| MarkerRead::Id(m.id))
            .unwrap_or(MarkerRead::Garbage)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MarkerRead::Absent),
        Err(e) => Err(e),
    }
}

/// Writes a marker atomically (temp file, fsync, rename, fsync of the directory).
fn write_marker(dir: &Path, id: Uuid) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let marker = Marker {
        id,
        note: "video-server storage root marker: keep it; without it this directory is \
               treated as not mounted (README, Storage roots)",
    };
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(&marker).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(MARKER_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Counters of one root, for operators and `/metrics`.
#[derive(Debug, Default)]
pub struct RootCounters {
    /// Marker checks done.
    pub checks: AtomicU64,
    /// Checks that found the root unavailable.
    pub unavailable_checks: AtomicU64,
    /// Times the root went from unavailable (or unchecked) to available.
    pub became_available: AtomicU64,
}

/// One storage root.
#[derive(Debug)]
pub struct Root {
    pub path: PathBuf,
    /// How `/readyz` names it: `default` (`[archive] directory`), `archive.roots[<i>]`,
    /// `stream <id>`, or `root <id>` for a directory only the index still knows. Never the path.
    name: Mutex<String>,
    /// Streams whose own directory this is.
    streams: Mutex<Vec<Uuid>>,
    state: Mutex<(RootState, Option<Uuid>)>,
    /// Reconciled since it last became available.
    reconciled: AtomicBool,
    /// A marker read is running (a hung mount keeps at most one blocked thread per root).
    reading: AtomicBool,
    pub counters: RootCounters,
}

impl Root {
    fn new(path: PathBuf, name: String) -> Root {
        Root {
            path,
            name: Mutex::new(name),
            streams: Mutex::default(),
            state: Mutex::new((RootState::Unknown, None)),
            reconciled: AtomicBool::new(false),
            reading: AtomicBool::new(false),
            counters: RootCounters::default(),
        }
    }

    pub fn state(&self) -> RootState {
        lock(&self.state).0
    }

    pub fn name(&self) -> String {
        lock(&self.name).clone()
    }

    /// The id recorded for the root (learned at its first successful check).
    pub fn id(&self) -> Option<Uuid> {
        lock(&self.state).1
    }

    pub fn streams(&self) -> Vec<Uuid> {
        lock(&self.streams).clone()
    }

    /// The path as segment keys spell it.
    pub fn key(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    fn set_state(&self, state: RootState, id: Option<Uuid>) {
        let mut s = lock(&self.state);
        let was = s.0;
        *s = (state, id.or(s.1));
        drop(s);
        self.counters.checks.fetch_add(1, Ordering::Relaxed);
        if !state.is_available() {
            self.counters
                .unavailable_checks
                .fetch_add(1, Ordering::Relaxed);
            self.reconciled.store(false, Ordering::Relaxed);
        }
        if state.is_available() && !was.is_available() {
            self.counters
                .became_available
                .fetch_add(1, Ordering::Relaxed);
            if was != RootState::Unknown {
                tracing::info!(root = %self.path.display(), "storage root available again");
            }
        }
        if !state.is_available() && state != was {
            let id = lock(&self.state).1;
            tracing::error!(root = %self.path.display(), name = %self.name(), state = state.as_str(),
                marker = %self.path.join(MARKER_FILE).display(),
                expected_id = ?id,
                "storage root unavailable: its segments are kept as they are (not marked missing) \
                 until its marker is back; if the directory was emptied on purpose, write \
                 {{\"id\":\"<expected_id>\"}} into the marker file");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One root as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootReport {
    pub name: String,
    pub streams: Vec<Uuid>,
    pub state: RootState,
}

/// The registry of storage roots, shared by start-up repair, reconciliation, the uploader and
/// `/readyz`.
pub struct MarkedRoots {
    db: Db,
    config: Arc<Config>,
    roots: Mutex<Vec<Arc<Root>>>,
}

impl MarkedRoots {
    /// The roots in use, each checked once (markers written for new roots).
    pub async fn open(db: Db, config: Arc<Config>) -> Result<Arc<MarkedRoots>, DbError> {
        let roots = Arc::new(MarkedRoots {
            db,
            config,
            roots: Mutex::default(),
        });
        roots.refresh().await?;
        for root in roots.all() {
            roots.check(&root).await;
        }
        Ok(roots)
    }

    /// Every known root, deepest path first (so [`MarkedRoots::root_of`] finds the innermost).
    pub fn all(&self) -> Vec<Arc<Root>> {
        lock(&self.roots).clone()
    }

    /// The root holding a file: the deepest root whose directory contains it.
    pub fn root_of(&self, file: &Path) -> Option<Arc<Root>> {
        lock(&self.roots)
            .iter()
            .find(|r| file.starts_with(&r.path))
            .cloned()
    }

    /// Whether the root holding `file` is known and available: only then is a missing file gone.
    pub fn is_available_for(&self, file: &Path) -> bool {
        self.root_of(file).is_some_and(|r| r.state().is_available())
    }

    /// Whether a recorder may create a segment under `dir` now: false while the root holding it
    /// is known to be unavailable, or its marker file has vanished since the last check (a disk
    /// unmounted between checks: files created now would land on the mount point's filesystem,
    /// hidden once the disk returns). A directory in no known root, or one not checked yet, is
    /// writable (nothing to judge by). One `stat` of the marker per call.
    pub async fn writable(&self, dir: &Path) -> bool {
        let Some(root) = self.root_of(dir) else {
            return true;
        };
        let (state, id) = *lock(&root.state);
        match state {
            RootState::Unknown => true,
            // A new directory, not created yet: the check after the recorder creates it marks it.
            RootState::Available if id.is_none() => true,
            RootState::Available => tokio::time::timeout(
                CHECK_TIMEOUT,
                tokio::fs::try_exists(root.path.join(MARKER_FILE)),
            )
            .await
            .is_ok_and(|found| found.unwrap_or(false)),
            _ => false,
        }
    }

    /// Re-reads which directories are in use and adds new ones: the allowed storage roots
    /// ([`Config::storage_roots`]), every stream's own directory, and every root recorded
    /// earlier; only directories inside the allowed roots, since reconciliation touches nothing
    /// else.
    pub async fn refresh(&self) -> Result<(), DbError> {
        let allowed = crate::roots::StorageRoots::from_config(&self.config);
        // path -> (name, streams)
        let mut wanted: BTreeMap<PathBuf, (Option<String>, Vec<Uuid>)> = BTreeMap::new();
        let global = absolute(self.config.archive.directory());
        let extra: Vec<PathBuf> = self
            .config
            .archive
            .roots
            .iter()
            .map(|r| absolute(r))
            .collect();
        for dir in allowed.list() {
            let name = if *dir == global {
                Some("default".to_owned())
            } else {
                extra
                    .iter()
                    .position(|r| r == dir)
                    .map(|i| format!("archive.roots[{i}]"))
            };
            wanted.entry(dir.clone()).or_default().0 = name;
        }
        for rec in db::streams::list_all(&self.db).await? {
            if let Some(dir) = rec.spec.archive.directory.as_deref() {
                let dir = absolute(dir);
                if allowed.contains(&dir) {
                    wanted.entry(dir).or_default().1.push(rec.spec.id);
                }
            }
        }
        for row in db::roots::all(&self.db).await? {
            let dir = PathBuf::from(&row.path);
            if !allowed.contains(&dir) {
                continue;
            }
            let e = wanted.entry(dir).or_default();
            if e.0.is_none() && e.1.is_empty() {
                e.0 = Some(format!("root {}", row.id));
            }
        }
        let mut roots = lock(&self.roots);
        for (path, (name, mut streams)) in wanted {
            streams.sort_unstable();
            let name = name
                .or_else(|| streams.first().map(|s| format!("stream {s}")))
                .unwrap_or_default();
            match roots.iter().find(|r| r.path == path) {
                Some(r) => {
                    *lock(&r.name) = name;
                    *lock(&r.streams) = streams;
                }
                None => {
                    let r = Root::new(path, name);
                    *lock(&r.streams) = streams;
                    roots.push(Arc::new(r));
                }
            }
        }
        roots.sort_by_key(|r| std::cmp::Reverse(r.path.components().count()));
        Ok(())
    }

    /// Checks a root's marker against the index and records the result.
    ///
    /// The marker is read first (the disk's part), then compared with what the index recorded for
    /// the path. When the index cannot be asked (the database is down or does not answer), the
    /// marker is judged against the id this process knew from its last check: a database outage
    /// must not make a mounted disk look unavailable (that would pause every recorder on it, and
    /// recording is meant to go on through database outages).
    pub async fn check(&self, root: &Arc<Root>) -> RootState {
        let known = lock(&root.state).1;
        let Some(marker) = self.read_marker_of(root).await else {
            root.set_state(RootState::Unreadable, known);
            return RootState::Unreadable;
        };
        let (state, id) = match tokio::time::timeout(CHECK_TIMEOUT, self.judge(root, &marker)).await
        {
            Ok(Ok(found)) => found,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer in time".to_owned(),
                };
                tracing::warn!(root = %root.path.display(), %error,
                    "cannot ask the index about a storage root: judging its marker by the known id");
                without_index(&marker, root.state(), known)
            }
        };
        root.set_state(state, id);
        state
    }

    /// A quick re-check for a probe: a root whose id this process already knows is judged by a
    /// fresh read of its marker alone (the index was asked when the id was learned; the periodic
    /// [`check`](Self::check) keeps asking it), so `/readyz` does not wait on a slow database
    /// twice. Other roots get the full check.
    async fn recheck(&self, root: &Arc<Root>) -> RootState {
        let (was, known) = *lock(&root.state);
        if known.is_none() {
            return self.check(root).await;
        }
        let (state, id) = match self.read_marker_of(root).await {
            Some(marker) => without_index(&marker, was, known),
            None => (RootState::Unreadable, known),
        };
        root.set_state(state, id);
        state
    }

    /// Reads `root`'s marker file off the async threads, waiting at most [`CHECK_TIMEOUT`];
    /// `None` when it cannot be read or did not come in time (logged).
    async fn read_marker_of(&self, root: &Arc<Root>) -> Option<MarkerRead> {
        let read = tokio::time::timeout(CHECK_TIMEOUT, self.read_marker_blocking(root)).await;
        if read.is_err() {
            tracing::warn!(root = %root.path.display(), "reading the storage root marker timed out");
        }
        read.ok().flatten()
    }

    async fn read_marker_blocking(&self, root: &Arc<Root>) -> Option<MarkerRead> {
        if root.reading.swap(true, Ordering::AcqRel) {
            // The previous read has not returned (a hung mount): do not pile up threads on it.
            return None;
        }
        let dir = root.path.clone();
        let flag = root.clone();
        let read = tokio::task::spawn_blocking(move || {
            let r = read_marker(&dir);
            flag.reading.store(false, Ordering::Release);
            r
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match read {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(root = %root.path.display(), error = %e, "cannot read the storage root marker");
                None
            }
        }
    }

    /// The root's state from its marker and what the index recorded for its path.
    async fn judge(
        &self,
        root: &Arc<Root>,
        marker: &MarkerRead,
    ) -> Result<(RootState, Option<Uuid>), DbError> {
        let recorded = db::roots::by_path(&self.db, &root.key()).await?;
        Ok(match (*marker, recorded) {
            (MarkerRead::Id(m), Some(r)) if m == r.id => {
                db::roots::seen(&self.db, r.id).await?;
                (RootState::Available, Some(r.id))
            }
            (MarkerRead::Id(_) | MarkerRead::Garbage, Some(r)) => {
                (RootState::MarkerMismatch, Some(r.id))
            }
            (MarkerRead::Garbage, None) => (RootState::MarkerMismatch, None),
            (MarkerRead::Id(m), None) => {
                // A marked directory the index does not know at this path: adopt its id, unless
                // the id belongs to a root recorded elsewhere (a disk mounted at another path,
                // whose rows still point at the old one).
                if db::roots::by_id(&self.db, m).await?.is_some()
                    || !db::roots::insert(&self.db, m, &root.key()).await?
                {
                    (RootState::MarkerMismatch, None)
                } else {
                    tracing::info!(root = %root.path.display(), id = %m, "storage root adopted from its marker");
                    (RootState::Available, Some(m))
                }
            }
            (MarkerRead::Absent, Some(r)) => (RootState::MarkerMissing, Some(r.id)),
            (MarkerRead::Absent, None) => self.adopt(root).await?,
        })
    }

    /// A directory with neither marker nor recorded id: mark it when nothing the index has under it
    /// says it is the wrong (or an unmounted) disk.
    async fn adopt(&self, root: &Arc<Root>) -> Result<(RootState, Option<Uuid>), DbError> {
        let indexed = segments::under_dir(
            &self.db,
            &root.key(),
            &[
                SegmentState::Complete,
                SegmentState::Recording,
                SegmentState::Missing,
            ],
            None,
            ADOPTION_SAMPLE,
        )
        .await?;
        let keys: Vec<PathBuf> = indexed
            .iter()
            .map(|r| r.storage_key.clone().into())
            .collect();
        let any_present = blocking(move || keys.iter().any(|k| k.exists())).await;
        if !indexed.is_empty() && !any_present {
            return Ok((RootState::NotAdopted, None));
        }
        if indexed.is_empty() && !root.path.exists() {
            // Nothing recorded there yet and no directory: nothing to protect. The marker is
            // written by the first check after a recorder creates the directory.
            return Ok((RootState::Available, None));
        }
        let id = Uuid::new_v4();
        let dir = root.path.clone();
        let written = tokio::task::spawn_blocking(move || write_marker(&dir, id))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = written {
            tracing::error!(root = %root.path.display(), error = %e, "cannot write the storage root marker");
            return Ok((RootState::Unreadable, None));
        }
        if !db::roots::insert(&self.db, id, &root.key()).await? {
            // Another process recorded this directory first: its marker wins at the next check.
            return Ok((RootState::MarkerMismatch, None));
        }
        tracing::info!(root = %root.path.display(), id = %id, existing_files = !indexed.is_empty(),
            "storage root marked");
        Ok((RootState::Available, Some(id)))
    }

    /// Checks every root now (bounded by the check timeout) and reports them, for `/readyz`.
    pub async fn readiness(&self) -> Vec<RootReport> {
        let roots = self.all();
        let states =
            futures::future::join_all(roots.iter().map(|r| async move { self.recheck(r).await }))
                .await;
        let mut out: Vec<RootReport> = roots
            .iter()
            .zip(states)
            .map(|(r, state)| RootReport {
                name: r.name(),
                streams: r.streams(),
                state,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Roots that are available and not yet reconciled since they became so; marks them
    /// reconciled (the caller reconciles them now).
    pub fn take_unreconciled(&self) -> Vec<Arc<Root>> {
        self.all()
            .into_iter()
            .filter(|r| r.state().is_available() && !r.reconciled.swap(true, Ordering::AcqRel))
            .collect()
    }

    /// Puts a root back in the queue of [`MarkedRoots::take_unreconciled`] (its reconciliation
    /// was interrupted).
    pub fn reconcile_again(&self, root: &Root) {
        root.reconciled.store(false, Ordering::Release);
    }

    /// Every root's marker checked, every `[archive] root_check_s`, until cancelled. Roots are
    /// re-read from the config, streams and index each time (a stream may get a new directory).
    pub async fn check_all(&self) {
        match tokio::time::timeout(CHECK_TIMEOUT, self.refresh()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot list the storage roots"),
            Err(_) => {
                tracing::warn!("listing the storage roots timed out (the index does not answer)")
            }
        }
        for root in self.all() {
            self.check(&root).await;
        }
    }

    /// The pause between two rounds of checks.
    pub fn interval(&self) -> Duration {
        self.config.archive.root_check_interval()
    }

    /// Waits for the next round or cancellation; false when cancelled.
    pub async fn pause(&self, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(self.interval()) => true,
        }
    }
}

/// A configured directory made absolute, as the recorder stores paths.
fn absolute(dir: &str) -> PathBuf {
    let p = PathBuf::from(dir);
    std::path::absolute(&p).unwrap_or(p)
}

/// Runs blocking file work off the async threads; a panic in it gives `T::default()`.
async fn blocking<T: Send + Default + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_index_the_marker_is_judged_by_the_known_id() {
        let (k, other) = (Uuid::new_v4(), Uuid::new_v4());
        let was = RootState::Available;
        let judge = |m: MarkerRead, known| without_index(&m, was, known).0;
        assert_eq!(judge(MarkerRead::Id(k), Some(k)), RootState::Available);
        assert_eq!(
            judge(MarkerRead::Id(other), Some(k)),
            RootState::MarkerMismatch
        );
        assert_eq!(
            judge(MarkerRead::Garbage, Some(k)),
            RootState::MarkerMismatch
        );
        assert_eq!(judge(MarkerRead::Absent, Some(k)), RootState::MarkerMissing);
        // Nothing known: the state stays what it was.
        assert_eq!(
            without_index(&MarkerRead::Absent, RootState::Unknown, None).0,
            RootState::Unknown
        );
        assert_eq!(
            without_index(&MarkerRead::Id(k), RootState::Unknown, None),
            (RootState::Unknown, None)
        );
    }

    #[test]
    fn marker_round_trip_and_garbage() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(read_marker(dir.path()).expect("read"), MarkerRead::Absent);
        let id = Uuid::new_v4();
        write_marker(&dir.path().join("sub"), id).expect("write");
        assert_eq!(
            read_marker(&dir.path().join("sub")).expect("read"),
            MarkerRead::Id(id)
        );
        std::fs::write(dir.path().join(MARKER_FILE), b"{\"id\":\"nope\"}").expect("write");
        assert_eq!(read_marker(dir.path()).expect("read"), MarkerRead::Garbage);
        // An operator's hand-written marker is enough.
        std::fs::write(
            dir.path().join(MARKER_FILE),
            format!("{{\"id\":\"{id}\"}}\n"),
        )
        .expect("write");
        assert_eq!(read_marker(dir.path()).expect("read"), MarkerRead::Id(id));
    }
}
