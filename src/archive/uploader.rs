//! The S3 uploader: moves closed segments of S3 streams from local files to objects.
//!
//! The database is the outbox. The recorder writes every segment to a local file first; for a
//! stream archived to S3 the row starts with `upload_state = 'local'`. This loop:
//!
//! 1. at start, puts rows left `uploading` by a crash back to `local` (their files are still there);
//! 2. claims the oldest ready row (`state = 'complete'`, `upload_state = 'local'`) as `uploading`;
//! 3. uploads the file to `<bucket>/<prefix>/<stream-uuid>/<file name>` (the stream's bucket and
//!    prefix, else `[s3]`'s);
//! 4. in one statement points the row at the object (`storage = 's3'`, `bucket`, `storage_key`,
//!    `upload_state = 'remote'`), and only once that is committed removes the local file.
//!
//! A failure puts the row back to `local` and pauses, with exponential backoff and jitter, only
//! what it concerns ([`Blame`]): the **bucket** when the object store failed (unreachable, an error
//! answer, an invalid bucket name), the **stream** when its local file could not be read, and all
//! claiming only when the index failed. Rows of paused buckets and streams are skipped (looked at
//! with [`segments::ready_uploads`], never claimed), so one failing bucket or stream never stalls
//! the others. The local file is never touched on failure, so an outage of any length loses
//! nothing. A row whose local file has vanished is marked `missing`. At most [`UploaderSettings::concurrency`]
//! uploads run at once. Cancelling stops claiming at once; uploads in flight get
//! [`UploaderSettings::shutdown_grace`] to finish, then are abandoned and their rows released.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::storage::StorageError;
use super::storage::s3::{S3ConfigError, S3Storage, S3Timeouts, check_bucket_name, object_key};
use crate::config::S3Config;
use crate::db::segments::{self, SegmentRow};
use crate::db::{Db, DbError, streams};

/// Tuning of the upload loop. Tests shorten every duration.
#[derive(Debug, Clone)]
pub struct UploaderSettings {
    /// Uploads running at once. Two keep a link busy while one request waits on latency, without
    /// letting a backlog after an outage saturate the uplink the cameras also use.
    pub concurrency: usize,
    /// How often to look for new ready rows when nothing wakes the loop (see
    /// [`Uploader::waker`]).
    pub poll_interval: Duration,
    /// First retry delay after a failure; doubled per consecutive failure.
    pub backoff_min: Duration,
    /// Longest retry delay: an outage is noticed to be over within about this long.
    pub backoff_max: Duration,
    /// How long uploads in flight may run on after cancellation before they are abandoned.
    pub shutdown_grace: Duration,
}

impl Default for UploaderSettings {
    fn default() -> Self {
        Self {
            concurrency: 2,
            poll_interval: Duration::from_secs(2),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Uploader counters for status pages. Updated lock-free by the uploader, read by the API.
#[derive(Debug, Default)]
pub struct UploadStats {
    running: AtomicBool,
    uploaded: AtomicU64,
    uploaded_bytes: AtomicU64,
    failed: AtomicU64,
    missing: AtomicU64,
    pending: AtomicU64,
    in_flight: AtomicU64,
    consecutive_failures: AtomicU64,
    paused_buckets: AtomicU64,
    paused_streams: AtomicU64,
    /// Uploads given back because a reader leased the segment meanwhile (retried later).
    pub deferred_leased: AtomicU64,
}

/// A snapshot of [`UploadStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadCounters {
    /// An uploader loop is running in this process.
    pub running: bool,
    /// Segments uploaded since start.
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    /// Upload attempts that failed since start (each is retried).
    pub failed: u64,
    /// Segments whose local file was gone when their turn came.
    pub missing: u64,
    /// Ready segments not yet claimed, as of the loop's last look.
    pub pending: u64,
    /// Uploads running now.
    pub in_flight: u64,
    /// Failures since the last success (0 when healthy).
    pub consecutive_failures: u64,
    /// Buckets whose uploads are backing off after a failure of the object store.
    pub paused_buckets: u64,
    /// Streams whose uploads are backing off (every failed upload counts against its stream, and
    /// a failure of the object store against the bucket as well).
    pub paused_streams: u64,
}

impl UploadStats {
    pub fn snapshot(&self) -> UploadCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UploadCounters {
            running: self.running.load(Ordering::Relaxed),
            uploaded: get(&self.uploaded),
            uploaded_bytes: get(&self.uploaded_bytes),
            failed: get(&self.failed),
            missing: get(&self.missing),
            pending: get(&self.pending),
            in_flight: get(&self.in_flight),
            consecutive_failures: get(&self.consecutive_failures),
            paused_buckets: get(&self.paused_buckets),
            paused_streams: get(&self.paused_streams),
        }
    }
}

/// Errors of one upload attempt. Never contains credentials.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    /// The object store failed (after the bucket was resolved): blamed on the bucket.
    #[error(transparent)]
    Remote(StorageError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Config(#[from] S3ConfigError),
    #[error("segment {id}: storage key '{key}' has no file name")]
    BadKey { id: i64, key: String },
}

/// What a failed upload is blamed on: what backs off.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Blame {
    /// The object store behind this bucket (unreachable, an error answer, or an invalid bucket
    /// name): every stream uploading to it waits, and so does the stream itself (a stream whose
    /// uploads alone fail, e.g. for a prefix it may not write, then backs off on its own while
    /// the others' successes keep the bucket going).
    Bucket(String),
    /// This stream's local file (unreadable, or on an unavailable storage root) or row.
    Stream,
    /// The index: shared by everything, so all claiming waits.
    Index,
}

impl UploadError {
    fn blame(&self, bucket: Option<&str>) -> Blame {
        match (self, bucket) {
            (UploadError::Db(_), _) => Blame::Index,
            (UploadError::Remote(_) | UploadError::Config(_), Some(b)) => {
                Blame::Bucket(b.to_owned())
            }
            _ => Blame::Stream,
        }
    }
}

/// How one claimed row ended.
enum Outcome {
    Uploaded,
    Missing,
    /// The row changed under us (e.g. retention took it); nothing to count.
    Superseded,
    /// Failed and released back to `local` (or, if `released` is false, still `uploading` because
    /// the database failed too: the loop retries the release).
    Failed {
        released: bool,
        blame: Blame,
    },
}

/// What an upload task reports back to the loop.
struct Done {
    id: i64,
    stream: Uuid,
    /// The bucket the row was (to be) uploaded to, once resolved.
    bucket: Option<String>,
    outcome: Outcome,
}

/// Consecutive failures of one bucket or stream, and until when it waits.
#[derive(Debug, Default)]
struct Streak {
    failures: u32,
    until: Option<Instant>,
}

impl Streak {
    fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| now < t)
    }
}

/// Backoff per bucket and per stream: a stream's rows are skipped while the stream or its bucket
/// waits. A success of a stream ends both its own wait and its bucket's.
#[derive(Debug, Default)]
struct Pauses {
    buckets: HashMap<String, Streak>,
    streams: HashMap<Uuid, Streak>,
    /// The bucket each stream last uploaded to (or tried to): a stream not seen yet is tried once
    /// to find out.
    bucket_of: HashMap<Uuid, String>,
}

impl Pauses {
    fn paused(&self, stream: Uuid, now: Instant) -> bool {
        self.streams.get(&stream).is_some_and(|s| s.active(now))
            || self
                .bucket_of
                .get(&stream)
                .and_then(|b| self.buckets.get(b))
                .is_some_and(|s| s.active(now))
    }

    fn seen(&mut self, stream: Uuid, bucket: Option<&str>) {
        if let Some(b) = bucket
            && self.bucket_of.get(&stream).map(String::as_str) != Some(b)
        {
            self.bucket_of.insert(stream, b.to_owned());
        }
    }

    fn succeeded(&mut self, stream: Uuid, bucket: Option<&str>) {
        self.streams.remove(&stream);
        if let Some(b) = bucket {
            self.buckets.remove(b);
        }
    }

    /// Records a failure; returns the longest wait it started (for the log).
    fn failed(&mut self, s: &UploaderSettings, stream: Uuid, blame: &Blame) -> Duration {
        let now = Instant::now();
        let bump = |streak: &mut Streak| {
            streak.failures = streak.failures.saturating_add(1);
            let delay = backoff_delay(s, streak.failures);
            streak.until = Some(now + delay);
            delay
        };
        let own = bump(self.streams.entry(stream).or_default());
        match blame {
            Blame::Bucket(b) => own.max(bump(self.buckets.entry(b.clone()).or_default())),
            _ => own,
        }
    }

    /// When the next wait ends (to look at the queue again then).
    fn next_end(&self, now: Instant) -> Option<Instant> {
        self.buckets
            .values()
            .chain(self.streams.values())
            .filter_map(|s| s.until)
            .filter(|t| *t > now)
            .min()
    }

    /// Publishes how many buckets and streams are waiting now.
    fn publish(&self, stats: &UploadStats, now: Instant) {
        let buckets = self.buckets.values().filter(|s| s.active(now)).count();
        let streams = self.streams.values().filter(|s| s.active(now)).count();
        stats
            .paused_buckets
            .store(buckets as u64, Ordering::Relaxed);
        stats
            .paused_streams
            .store(streams as u64, Ordering::Relaxed);
    }
}

/// Ready rows looked at per query when looking for one whose stream and bucket are not waiting.
const LOOK_AHEAD: u32 = 100;

/// Everything the upload tasks share.
struct Inner {
    db: Db,
    /// Handle on the `[s3]` bucket; other buckets share its client.
    s3: S3Storage,
    /// `[s3] prefix`, used when a stream sets none.
    default_prefix: String,
    stats: Arc<UploadStats>,
    /// Buckets already checked or created by this process, so `ensure_bucket` runs once per bucket.
    /// An async lock held during the check: concurrent uploads to a new bucket create it once.
    ensured: tokio::sync::Mutex<HashSet<String>>,
    /// Storage roots: a local file that is absent only counts as gone when its root is available
    /// (otherwise the upload is retried later). `None`: every absence counts (tests of the
    /// uploader alone).
    roots: Option<Arc<super::markers::MarkedRoots>>,
    /// Cluster mode: this node's id; only the segments it recorded (on its disk) are uploaded here.
    node: Option<Arc<str>>,
}

/// The background uploader. Build it, optionally share its [`UploadStats`] and [`waker`], then
/// [`run`](Uploader::run) it on a task.
///
/// [`waker`]: Uploader::waker
pub struct Uploader {
    inner: Arc<Inner>,
    settings: UploaderSettings,
    wake: Arc<Notify>,
}

impl Uploader {
    /// An uploader over `s3` (bound to the `[s3]` bucket) with `default_prefix` for streams that
    /// set none.
    pub fn new(
        db: Db,
        s3: S3Storage,
        default_prefix: &str,
        settings: UploaderSettings,
        stats: Arc<UploadStats>,
    ) -> Uploader {
        Uploader {
            inner: Arc::new(Inner {
                db,
                s3,
                default_prefix: default_prefix.to_owned(),
                stats,
                ensured: tokio::sync::Mutex::new(HashSet::new()),
                roots: None,
                node: None,
            }),
            settings: UploaderSettings {
                concurrency: settings.concurrency.max(1),
                ..settings
            },
            wake: Arc::new(Notify::new()),
        }
    }

    /// An uploader from `[s3]` with default timeouts and settings.
    pub fn from_config(
        db: Db,
        cfg: &S3Config,
        stats: Arc<UploadStats>,
    ) -> Result<Uploader, S3ConfigError> {
        let s3 = S3Storage::new(cfg, &S3Timeouts::default())?;
        Ok(Uploader::new(
            db,
            s3,
            &cfg.prefix,
            UploaderSettings::default(),
            stats,
        ))
    }

    /// Checks the storage root of a local file found absent before marking its row missing.
    pub fn with_roots(mut self, roots: Arc<super::markers::MarkedRoots>) -> Uploader {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.roots = Some(roots),
            None => tracing::error!("uploader already shared: storage roots not attached"),
        }
        self
    }

    /// Cluster mode: uploads only the segments cluster node `node` (this one) recorded.
    pub fn with_node(mut self, node: Option<Arc<str>>) -> Uploader {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.node = node,
            None => tracing::error!("uploader already shared: cluster node not attached"),
        }
        self
    }

    /// The counters this uploader updates.
    pub fn stats(&self) -> Arc<UploadStats> {
        self.inner.stats.clone()
    }

    /// Call `notify_one()` on this (e.g. from the recorder after closing a segment) to look for
    /// work now instead of at the next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until `cancel` fires. Never panics on storage or database errors: they are logged and
    /// retried with backoff.
    pub async fn run(self, cancel: CancellationToken) {
        let span = tracing::info_span!("uploader", bucket = %self.inner.s3.bucket());
        self.run_inner(cancel).instrument(span).await
    }

    async fn run_inner(self, cancel: CancellationToken) {
        let Uploader {
            inner,
            settings,
            wake,
        } = self;
        let stats = inner.stats.clone();
        stats.running.store(true, Ordering::Relaxed);

        // Crash recovery, retried until it works: claiming before it would leave old rows stuck.
        let mut failures: u32 = 0;
        loop {
            match segments::reset_uploading_for(&inner.db, inner.node.as_deref()).await {
                Ok(0) => break,
                Ok(n) => {
                    tracing::info!(count = n, "interrupted uploads put back in the queue");
                    break;
                }
                Err(e) => {
                    failures += 1;
                    let delay = backoff_delay(&settings, failures);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                        "cannot reset interrupted uploads");
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            stats.running.store(false, Ordering::Relaxed);
                            return;
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }

        let mut tasks: JoinSet<Done> = JoinSet::new();
        // Which row each task is uploading, to release it if the task is aborted or panics.
        let mut rows_of_tasks: HashMap<tokio::task::Id, i64> = HashMap::new();
        // Rows whose release failed (database trouble): retried before claiming more.
        let mut unreleased: Vec<i64> = Vec::new();
        // Failures of the index: all claiming waits.
        let mut failures: u32 = 0;
        let mut retry_at: Option<Instant> = None;
        // Failures of a bucket or a stream: only their rows wait.
        let mut pauses = Pauses::default();
        // Id of the last row looked at: claiming continues after it, so a row that keeps failing
        // is retried once per round of the queue instead of blocking the rows behind it.
        let mut cursor: i64 = 0;
        // The queue was gone through from its start since the last wait without finding a row to
        // claim: wait instead of going round again.
        let mut went_round = false;

        loop {
            if cancel.is_cancelled() {
                break;
            }
            let backing_off = retry_at.is_some_and(|t| Instant::now() < t);
            if !backing_off && !unreleased.is_empty() {
                let mut still = Vec::new();
                for id in unreleased.drain(..) {
                    if let Err(e) = segments::release_upload(&inner.db, id).await {
                        tracing::warn!(segment = id, error = %e, "cannot release upload");
                        still.push(id);
                    }
                }
                unreleased = still;
            }
            let mut claimed_any = false;
            if !backing_off && unreleased.is_empty() && tasks.len() < settings.concurrency {
                let now = Instant::now();
                let claimed = match segments::ready_uploads_for(
                    &inner.db,
                    inner.node.as_deref(),
                    cursor,
                    LOOK_AHEAD,
                )
                .await
                {
                    Ok(ready) => {
                        match ready
                            .iter()
                            .find(|(_, stream)| !pauses.paused(*stream, now))
                        {
                            // Claims that row (or, if another uploader took it meanwhile, the
                            // next ready one).
                            Some(&(id, _)) => segments::claim_uploads_for(
                                &inner.db,
                                inner.node.as_deref(),
                                id - 1,
                                1,
                            )
                            .await
                            .map(Some),
                            None if ready.len() == LOOK_AHEAD as usize => {
                                // All waiting: look further.
                                cursor = ready.last().map_or(cursor, |r| r.0);
                                continue;
                            }
                            None => Ok(None),
                        }
                    }
                    Err(e) => Err(e),
                };
                match claimed {
                    Ok(Some(rows)) if !rows.is_empty() => {
                        for row in rows {
                            cursor = row.id;
                            if pauses.paused(row.stream_id, now) {
                                // Not the row looked at, and its stream waits: put it back.
                                if let Err(e) = segments::release_upload(&inner.db, row.id).await {
                                    tracing::warn!(segment = row.id, error = %e, "cannot release upload");
                                    unreleased.push(row.id);
                                }
                                continue;
                            }
                            claimed_any = true;
                            let id = row.id;
                            stats.in_flight.fetch_add(1, Ordering::Relaxed);
                            let handle = tasks.spawn(upload_one(inner.clone(), row));
                            rows_of_tasks.insert(handle.id(), id);
                        }
                        if !claimed_any {
                            continue;
                        }
                    }
                    // End of the queue: go round again from the oldest row, once.
                    Ok(_) if cursor > 0 && !went_round => {
                        cursor = 0;
                        went_round = true;
                        continue;
                    }
                    Ok(_) => cursor = 0,
                    Err(e) => {
                        failures += 1;
                        let delay = backoff_delay(&settings, failures);
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                            "cannot claim segments to upload");
                        retry_at = Some(Instant::now() + delay);
                    }
                }
            }
            if claimed_any {
                // Fill the remaining slots before waiting.
                went_round = false;
                continue;
            }
            went_round = false;
            if !backing_off && let Ok(n) = segments::count_ready_uploads(&inner.db).await {
                stats
                    .pending
                    .store(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
            }
            let now = Instant::now();
            pauses.publish(&stats, now);

            let mut deadline = match retry_at {
                Some(t) if now < t => t,
                _ => now + settings.poll_interval,
            };
            if let Some(t) = pauses.next_end(now) {
                deadline = deadline.min(t);
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (task, result) = match done {
                        Ok((task, done)) => (task, Some(done)),
                        Err(e) => (e.id(), None),
                    };
                    let row = rows_of_tasks.remove(&task);
                    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                    let Some(done) = result else {
                        // The task panicked: its row is still `uploading`.
                        tracing::error!(segment = ?row, "upload task panicked");
                        if let Some(id) = row {
                            unreleased.push(id);
                        }
                        continue;
                    };
                    pauses.seen(done.stream, done.bucket.as_deref());
                    match done.outcome {
                        Outcome::Uploaded => {
                            pauses.succeeded(done.stream, done.bucket.as_deref());
                            failures = 0;
                            retry_at = None;
                            stats.consecutive_failures.store(0, Ordering::Relaxed);
                        }
                        Outcome::Missing | Outcome::Superseded => {}
                        Outcome::Failed { released, blame } => {
                            let n = stats.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                            let delay = if blame == Blame::Index {
                                failures += 1;
                                let delay = backoff_delay(&settings, failures);
                                retry_at = Some(Instant::now() + delay);
                                delay
                            } else {
                                pauses.failed(&settings, done.stream, &blame)
                            };
                            tracing::info!(retry_in_ms = delay.as_millis() as u64,
                                stream = %done.stream, bucket = ?done.bucket, ?blame,
                                consecutive_failures = n, "uploads paused after a failure");
                            if !released {
                                unreleased.push(done.id);
                            }
                        }
                    }
                    pauses.publish(&stats, Instant::now());
                }
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }

        // Shutdown: let uploads in flight finish within the grace, then abandon the rest.
        if !tasks.is_empty() {
            tracing::info!(in_flight = tasks.len(), "waiting for uploads in flight");
            let grace = tokio::time::sleep(settings.shutdown_grace);
            tokio::pin!(grace);
            loop {
                tokio::select! {
                    done = tasks.join_next_with_id() => match done {
                        Some(Ok((task, done))) => {
                            rows_of_tasks.remove(&task);
                            if let Outcome::Failed { released: false, .. } = done.outcome {
                                unreleased.push(done.id);
                            }
                        }
                        Some(Err(e)) => {
                            if let Some(id) = rows_of_tasks.remove(&e.id()) {
                                unreleased.push(id);
                            }
                        }
                        None => break,
                    },
                    _ = &mut grace => {
                        tracing::warn!(abandoned = tasks.len(), "uploads abandoned at shutdown");
                        tasks.abort_all();
                        while tasks.join_next().await.is_some() {}
                        unreleased.extend(rows_of_tasks.drain().map(|(_, id)| id));
                        break;
                    }
                }
            }
        }
        for id in unreleased {
            // If this fails too, start-up recovery (`reset_uploading`) puts the row back.
            if let Err(e) = segments::release_upload(&inner.db, id).await {
                tracing::warn!(segment = id, error = %e, "cannot release upload at shutdown");
            }
        }
        stats.in_flight.store(0, Ordering::Relaxed);
        stats.paused_buckets.store(0, Ordering::Relaxed);
        stats.paused_streams.store(0, Ordering::Relaxed);
        stats.running.store(false, Ordering::Relaxed);
        tracing::info!("uploader stopped");
    }
}

/// Builds an uploader from `[s3]` and runs it on a new task until `cancel` fires. Returns the
/// task (await it after cancelling to let in-flight uploads finish) and the waker.
pub fn spawn_uploader(
    db: Db,
    cfg: &S3Config,
    stats: Arc<UploadStats>,
    roots: Arc<super::markers::MarkedRoots>,
    node: Option<Arc<str>>,
    cancel: CancellationToken,
) -> Result<(tokio::task::JoinHandle<()>, Arc<Notify>), S3ConfigError> {
    let uploader = Uploader::from_config(db, cfg, stats)?
        .with_roots(roots)
        .with_node(node);
    let waker = uploader.waker();
    Ok((tokio::spawn(uploader.run(cancel)), waker))
}

/// Delay before the next attempt after `failures` consecutive failures (1, 2, ...): `backoff_min`
/// doubled per failure, capped at `backoff_max`, with "equal jitter" (half fixed, half random) so
/// instances that failed together do not retry in lock-step.
fn backoff_delay(s: &UploaderSettings, failures: u32) -> Duration {
    let exp = s
        .backoff_min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let base = exp.min(s.backoff_max);
    let half = base / 2;
    let jitter_ms = rand::rng().random_range(0..=half.as_millis() as u64);
    // Never below the minimum: the documented range is backoff_min..=backoff_max (1 s to 60 s).
    (half + Duration::from_millis(jitter_ms)).clamp(s.backoff_min, s.backoff_max)
}

/// Uploads one claimed row and records the result. Returns how it ended.
async fn upload_one(inner: Arc<Inner>, row: SegmentRow) -> Done {
    let id = row.id;
    let span = tracing::info_span!("upload", segment = id, stream = %row.stream_id);
    let mut bucket = None;
    let outcome = async {
        match try_upload(&inner, &row, &mut bucket).await {
            Ok(outcome) => outcome,
            Err(e) => {
                inner.stats.failed.fetch_add(1, Ordering::Relaxed);
                let blame = e.blame(bucket.as_deref());
                tracing::warn!(error = %e, file = %row.storage_key, ?blame, "upload failed; will retry");
                match segments::release_upload(&inner.db, id).await {
                    Ok(_) => Outcome::Failed {
                        released: true,
                        blame,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot put the segment back in the queue");
                        Outcome::Failed {
                            released: false,
                            blame,
                        }
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
    Done {
        id,
        stream: row.stream_id,
        bucket,
        outcome,
    }
}

/// Uploads one row; `bucket` is set as soon as the row's bucket is known.
async fn try_upload(
    inner: &Inner,
    row: &SegmentRow,
    bucket_out: &mut Option<String>,
) -> Result<Outcome, UploadError> {
    let local = Path::new(&row.storage_key);
    let Some(file_name) = local.file_name().and_then(|n| n.to_str()) else {
        return Err(UploadError::BadKey {
            id: row.id,
            key: row.storage_key.clone(),
        });
    };
    match tokio::fs::metadata(local).await {
        Ok(m) if m.is_file() => {}
        // Checked here so that it is blamed on the stream, not on the bucket the upload would
        // fail against.
        Ok(_) => {
            return Err(StorageError::Io {
                key: row.storage_key.clone(),
                source: std::io::Error::other("not a regular file"),
            }
            .into());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return mark_missing(inner, row).await;
        }
        Err(e) => {
            return Err(StorageError::Io {
                key: row.storage_key.clone(),
                source: e,
            }
            .into());
        }
    }

    // The stream's own bucket and prefix win over `[s3]`'s; a deleted stream's leftovers use `[s3]`.
    let archive = streams::get(&inner.db, row.stream_id)
        .await?
        .map(|r| r.spec.archive);
    let bucket = archive
        .as_ref()
        .and_then(|a| a.bucket.as_deref())
        .filter(|b| !b.trim().is_empty())
        .map(str::trim);
    let prefix = archive
        .as_ref()
        .and_then(|a| a.prefix.as_deref())
        .unwrap_or(&inner.default_prefix);
    let store = match bucket {
        Some(b) if b != inner.s3.bucket() => inner.s3.for_bucket(b),
        _ => inner.s3.clone(),
    };
    *bucket_out = Some(store.bucket().to_owned());
    ensure_bucket(inner, &store).await?;

    let mut key = object_key(prefix, row.stream_id, file_name);
    if segments::key_taken_by_another(&inner.db, row.id, &key).await? {
        // The camera's clock went back and the recorder named a new segment like one uploaded
        // earlier (it can only see local names): writing to that key would overwrite the older
        // recording's object. This one gets a name of its own.
        let distinct = distinct_file_name(file_name, row.id);
        tracing::warn!(object = %key, segment = row.id, renamed = %distinct,
            "object key already holds another segment; uploading under a distinct name");
        key = object_key(prefix, row.stream_id, &distinct);
    }
    let bytes = match store.put_file(&key, local).await {
        Ok(n) => n,
        // Removed between the check above and the upload.
        Err(StorageError::NotFound { .. }) => return mark_missing(inner, row).await,
        // Reading the local file failed: the stream's problem, not the bucket's.
        Err(e @ StorageError::Io { .. }) => return Err(e.into()),
        Err(e) => return Err(UploadError::Remote(e)),
    };
    if !segments::complete_upload(&inner.db, row.id, store.bucket(), &key).await? {
        if segments::release_leased_upload(&inner.db, row.id).await? {
            // A reader (playback, export) leased it during the upload and may be reading the local
            // file: keep it local, drop the object, retry after the lease.
            inner.stats.deferred_leased.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                segment = row.id,
                "segment leased by a reader; upload retried later"
            );
            if let Err(e) = super::storage::Storage::delete(&store, &key).await {
                tracing::warn!(error = %e, "cannot remove the object of a deferred upload");
            }
            return Ok(Outcome::Superseded);
        }
        // Retention (or an operator) changed the row meanwhile and owns the local file now. The
        // object we just wrote is then referenced by nothing, unless another uploader (a second
        // instance on the same index) has taken the row over and writes or wrote the same key.
        let now = segments::get(&inner.db, row.id).await?;
        let taken_over = now.is_some_and(|r| {
            r.upload_state == "uploading"
                || (r.upload_state == "remote"
                    && r.storage_key == key
                    && r.bucket.as_deref() == Some(store.bucket()))
        });
        if !taken_over {
            tracing::info!(object = %key, "segment changed during upload; removing the object");
            if let Err(e) = super::storage::Storage::delete(&store, &key).await {
                tracing::warn!(error = %e, "cannot remove the orphan object");
            }
        }
        return Ok(Outcome::Superseded);
    }
    // The row now points at the object: only now may the local copy go.
    match tokio::fs::remove_file(local).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, file = %row.storage_key,
            "uploaded, but cannot remove the local file"),
    }
    inner.stats.uploaded.fetch_add(1, Ordering::Relaxed);
    inner
        .stats
        .uploaded_bytes
        .fetch_add(bytes, Ordering::Relaxed);
    tracing::debug!(bucket = %store.bucket(), object = %key, bytes, "segment uploaded");
    Ok(Outcome::Uploaded)
}

async fn mark_missing(inner: &Inner, row: &SegmentRow) -> Result<Outcome, UploadError> {
    if let Some(roots) = &inner.roots
        && !roots.is_available_for(Path::new(&row.storage_key))
    {
        // An unmounted disk is not a deleted file: retry once the root is back.
        return Err(StorageError::Io {
            key: row.storage_key.clone(),
            source: std::io::Error::other("its storage root is unavailable"),
        }
        .into());
    }
    tracing::warn!(file = %row.storage_key, "local file of a segment waiting for upload is gone; marking it missing");
    segments::mark_missing(
        &inner.db,
        std::slice::from_ref(row),
        segments::MissingBy::Uploader,
    )
    .await?;
    inner.stats.missing.fetch_add(1, Ordering::Relaxed);
    Ok(Outcome::Missing)
}

/// Creates the bucket the first time this process uploads to it.
async fn ensure_bucket(inner: &Inner, store: &S3Storage) -> Result<(), UploadError> {
    let mut known = inner.ensured.lock().await;
    if known.contains(store.bucket()) {
        return Ok(());
    }
    check_bucket_name(store.bucket())?;
    store.ensure_bucket().await.map_err(UploadError::Remote)?;
    known.insert(store.bucket().to_owned());
    Ok(())
}

/// `<stem>~<segment id>.<ext>`: the object name of a segment whose usual name is taken by another
/// segment's object. The id makes it unique; `~` cannot occur in the recorder's names.
pub(crate) fn distinct_file_name(file_name: &str, id: i64) -> String {
    match file_name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}~{id}.{ext}"),
        None => format!("{file_name}~{id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        // The documented values (README "S3 / MinIO archive"): 1 s to 60 s, doubling, with jitter.
        let s = UploaderSettings::default();
        assert_eq!(
            (s.backoff_min, s.backoff_max),
            (Duration::from_secs(1), Duration::from_secs(60))
        );
        let secs = |ms: u64| Duration::from_millis(ms);
        // After the n-th consecutive failure: within [lo, hi], whatever the jitter.
        let expected = [
            (1, secs(1_000), secs(1_000)),
            (2, secs(1_000), secs(2_000)),
            (3, secs(2_000), secs(4_000)),
            (4, secs(4_000), secs(8_000)),
            (5, secs(8_000), secs(16_000)),
            (6, secs(16_000), secs(32_000)),
            (7, secs(30_000), secs(60_000)),
            (20, secs(30_000), secs(60_000)),
            (1_000, secs(30_000), secs(60_000)),
        ];
        for (failures, lo, hi) in expected {
            for _ in 0..200 {
                let d = backoff_delay(&s, failures);
                assert!(lo <= d && d <= hi, "{failures} failures: {d:?}");
            }
        }
    }

    #[test]
    fn counters_snapshot() {
        let s = UploadStats::default();
        s.uploaded.fetch_add(3, Ordering::Relaxed);
        s.running.store(true, Ordering::Relaxed);
        let c = s.snapshot();
        assert!(c.running);
        assert_eq!(c.uploaded, 3);
        assert_eq!(c.failed, 0);
    }
}
