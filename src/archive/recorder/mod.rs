//! Records one stream into archive segments: self-contained fragmented MP4 files, indexed in SQL.
//!
//! * A segment starts at a keyframe and is cut at the first keyframe after `ms_per_file`, at a
//!   codec change, and after a discontinuity (source restart or a lag skip); it is never longer
//!   than `ms_per_file` + [`MAX_OVERSHOOT`] (without a keyframe by then it is closed and the next
//!   one waits for one).
//! * The file is `ftyp`+`moov` first, then one `moof`+`mdat` about every second, each written and
//!   flushed to disk (`fdatasync`) before the index is told: a crash loses at most the fragment in
//!   progress, and start-up repair (`archive::repair`) fixes the rest. The directory is fsynced
//!   after a file is created, so the file's name survives a power cut too.
//! * Frames are taken from the hub in batches, not one wake-up per frame: the recorder sleeps
//!   until the media time still missing from its fragment has passed, then takes the last few
//!   frames one by one, so each fragment is flushed as soon as its last frame is in.
//! * The index is written by a background task ([`index`]) that retries through database
//!   outages: files keep being written while the database is away, and the rows catch up when it
//!   returns. Nothing here waits for SQL.
//! * A write that fails (a full disk, an I/O error) closes the segment at its last good fragment
//!   (the torn bytes are cut off), asks retention for an emergency pass when the disk is full, and
//!   backs off (1 s doubling to 30 s) before opening a new segment at a keyframe once the
//!   filesystem has room again. No file is left holding only an init segment.
//! * While the storage root is unavailable (its marker missing: a disk not mounted, or unmounted
//!   under us) no new segment is opened: files created then would land on the mount point's own
//!   filesystem and be hidden once the disk returns. The recorder looks again every second and
//!   resumes at the next keyframe once the root is back; frames meanwhile are counted as dropped.
//! * Buffers are bounded in bytes as well as time: a fragment is written early when it reaches
//!   [`FRAGMENT_MAX_BYTES`] or [`FRAGMENT_MAX_FRAMES`], so a source with tiny frame durations
//!   cannot grow it without bound.
//! * Times: a segment's wall-clock start is anchored on the frame's receive time at the start of a
//!   session, then advanced by media time, so consecutive segments are exactly back to back; the
//!   anchor is corrected at a segment boundary when the camera drifts ([`clock`]).

pub mod clock;
pub mod index;
pub mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::retention::RetentionTrigger;
use crate::db::Db;
use crate::db::segments::{NewSegment, RecordedSegment, SegmentState};
use crate::hub::{Delivery, Subscription};
use crate::media::fmp4::{FragmentWriter, init_segment};
use crate::media::{Frame, MediaError, StreamParams, TrackKind};
use crate::stream::StorageKind;
use clock::SessionClock;
use index::{Progress, SegmentIndex};
pub use stats::{RecorderCounters, RecorderStats};

/// Hub queue of a recorder, in frames: tens of seconds of video, so a slow disk stalls for a while
/// before frames are skipped (and a new segment started at the next keyframe).
pub const QUEUE_FRAMES: usize = 4096;

/// Hub queue of a recorder, in bytes: the same tens of seconds at a high bitrate, so large frames
/// cannot fill memory before the frame limit is reached.
pub const QUEUE_BYTES: usize = 128 * 1024 * 1024;

/// Target length of one fragment: the most a crash can lose.
pub const FRAGMENT: Duration = Duration::from_secs(1);

/// A fragment is written early once its frames hold this many bytes (several seconds of a 4K
/// camera; only a source with broken durations gets here before [`FRAGMENT`]).
pub const FRAGMENT_MAX_BYTES: usize = 8 * 1024 * 1024;

/// ... or this many frames (a second is 25 to 100 frames per track).
pub const FRAGMENT_MAX_FRAMES: usize = 1000;

/// How far past `ms_per_file` a segment may run while no keyframe comes to cut it at (in media
/// time, and in wall-clock time since it was opened, for sources whose durations do not advance).
/// With `config::MAX_MS_PER_FILE` this bounds every segment well inside
/// `db::segments::MAX_SEGMENT_US`, so "which segment holds time T" stays a bounded index range.
pub const MAX_OVERSHOOT: Duration = Duration::from_secs(300);

/// A segment is cut at the next keyframe once its file holds this much, whatever its media
/// duration says (tiny durations must not make one file grow forever), and at once at twice this.
pub const MAX_SEGMENT_BYTES: u64 = 1024 * 1024 * 1024;

/// Below this much media time missing from the fragment, frames are taken one by one again.
const BATCH_MIN_WAIT: Duration = Duration::from_millis(20);

/// How often the row's end time is advanced while recording.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Back-off after a failed write: the first pause, doubled per consecutive failure up to the
/// longest. Frames arriving meanwhile are counted as dropped.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A new segment is opened after a full disk only when the filesystem has at least this much free
/// (or twice the last segment, if more): creating a file just to delete it again helps no one.
const RESUME_MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;

/// While the disk stays full, how often its free space is looked at again.
const DISK_FULL_POLL: Duration = Duration::from_secs(1);

/// Recorder failures (each is logged; the recorder closes the segment and carries on).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Media(#[from] MediaError),
}

impl RecordError {
    /// The write failed because the filesystem (or the user's quota) is full.
    fn is_disk_full(&self) -> bool {
        matches!(self, RecordError::Io { source, .. } if is_disk_full(source))
    }
}

/// Whether an I/O error means "no space left" (`ENOSPC`) or "quota exceeded" (`EDQUOT`).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Settings of one stream's recorder.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub stream_id: Uuid,
    /// Root directory; files go to `<root>/<uuid>/<YYYY-MM-DD>/<uuid>_<unix-seconds>.mp4`.
    pub directory: PathBuf,
    pub ms_per_file: u64,
    /// Where the segment ends up: S3 segments are queued for upload (`upload_state = 'local'`).
    pub storage: StorageKind,
}

/// The segment being written.
struct Open {
    /// Handle of the segment in the index writer.
    seq: u64,
    path: PathBuf,
    file: tokio::fs::File,
    params: Arc<StreamParams>,
    start_us: i64,
    /// Main-track dts of the first frame (ticks of the main track).
    first_dts: i64,
    /// Subtracted from each track's dts so the file's media time starts at 0 (video, audio ticks).
    offsets: [i64; 2],
    /// Media time on disk (µs), by the main track.
    media_us: i64,
    /// Bytes on disk (every fragment flushed).
    bytes: u64,
    pending: Vec<Frame>,
    pending_us: i64,
    pending_bytes: usize,
    opened: Instant,
    last_progress: Instant,
}

impl Open {
    fn progress(&self) -> Progress {
        Progress {
            end_us: self.start_us + self.media_us,
            media_us: self.media_us,
            bytes: self.bytes as i64,
        }
    }
}

/// Why the recorder is not writing (after a failed write).
#[derive(Debug, Default)]
struct Backoff {
    /// No new segment before this.
    until: Option<Instant>,
    failures: u32,
    /// Waiting for the disk to have room again.
    disk_full: bool,
}

/// One stream's recorder.
pub struct Recorder {
    cfg: RecorderConfig,
    db: Db,
    sub: Subscription,
    open: Option<Open>,
    writer: FragmentWriter,
    clock: SessionClock,
    max_drift_us: i64,
    index: Arc<SegmentIndex>,
    stats: Arc<RecorderStats>,
    retention: Option<RetentionTrigger>,
    backoff: Backoff,
    /// Bytes of the last segment closed (to judge whether a disk has room for the next).
    last_segment_bytes: u64,
    /// Storage roots: no segment is opened while the root holding the directory is unavailable.
    roots: Option<Arc<super::markers::MarkedRoots>>,
    /// The root was found unavailable; when to look again.
    root_down: Option<Instant>,
    /// In cluster mode, the camera lease this recording runs under: its rows are written only
    /// while the lease holds (`db::cluster`). `None` on a single node.
    fence: Option<crate::db::cluster::Fence>,
}

fn main_track(p: &StreamParams) -> TrackKind {
    if p.video.is_some() {
        TrackKind::Video
    } else {
        TrackKind::Audio
    }
}

fn ticks_to_us(ticks: i64, timescale: u32) -> i64 {
    (i128::from(ticks) * 1_000_000 / i128::from(timescale.max(1))) as i64
}

fn us_to_ticks(us: i64, timescale: u32) -> i64 {
    (i128::from(us) * i128::from(timescale) / 1_000_000) as i64
}

/// The file a segment starting at `start_us` goes to (without collision handling).
pub fn segment_path(root: &Path, stream_id: Uuid, start_us: i64) -> PathBuf {
    let secs = start_us.div_euclid(1_000_000);
    let day = DateTime::<Utc>::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".into());
    root.join(stream_id.to_string())
        .join(day)
        .join(format!("{stream_id}_{secs}.mp4"))
}

/// Flushes a directory's entries to disk (a new file's name, a new subdirectory).
async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

/// Free bytes for unprivileged users on the filesystem holding `dir`.
async fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use super::retention::{DiskSpace, Statvfs};
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || Statvfs.usage(&dir).map(|u| u.free_bytes))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

impl Recorder {
    /// A recorder writing to `cfg.directory` and indexing through `db` (give it connections of
    /// its own: `Db::sibling`).
    pub fn new(cfg: RecorderConfig, db: Db, sub: Subscription) -> Recorder {
        let stats: Arc<RecorderStats> = Default::default();
        Recorder {
            cfg,
            db,
            sub,
            open: None,
            writer: FragmentWriter::new(),
            clock: SessionClock::default(),
            max_drift_us: crate::config::DEFAULT_MAX_DRIFT.as_micros() as i64,
            index: SegmentIndex::new(stats.clone()),
            stats,
            retention: None,
            backoff: Backoff::default(),
            last_segment_bytes: 0,
            roots: None,
            root_down: None,
            fence: None,
        }
    }

    /// Pauses recording while the storage root holding the directory is unavailable.
    pub fn with_roots(mut self, roots: Arc<super::markers::MarkedRoots>) -> Recorder {
        self.roots = Some(roots);
        self
    }

    /// Counts into `stats` (shared with the stream's runtime, for status and metrics).
    pub fn with_stats(mut self, stats: Arc<RecorderStats>) -> Recorder {
        self.index = SegmentIndex::new(stats.clone());
        self.stats = stats;
        self
    }

    /// Re-anchors the wall clock when the camera drifts by more than this (`[archive]
    /// max_drift_ms`); `None` never re-anchors.
    pub fn with_max_drift(mut self, max_drift: Option<Duration>) -> Recorder {
        self.max_drift_us = max_drift.map_or(i64::MAX, |d| {
            i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
        });
        self
    }

    /// Writes every row under this camera lease (cluster mode).
    pub fn with_fence(mut self, fence: Option<crate::db::cluster::Fence>) -> Recorder {
        self.fence = fence;
        self
    }

    /// Asks this retention for an emergency pass when the disk is full.
    pub fn with_retention(mut self, trigger: RetentionTrigger) -> Recorder {
        self.retention = Some(trigger);
        self
    }

    /// This recorder's counters.
    pub fn stats(&self) -> Arc<RecorderStats> {
        self.stats.clone()
    }

    /// Records until cancelled (or the hub is gone), then closes the open segment and lets the
    /// index writer drain (bounded by [`index::DRAIN_TIMEOUT`]).
    pub async fn run(mut self, cancel: CancellationToken) {
        let writer = tokio::spawn(self.index.clone().run_writer(self.db.clone()));
        let mut batch = Vec::new();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            let at = self.next_batch_at();
            let more = tokio::select! {
                _ = &mut cancelled => false,
                more = self.sub.recv_batch(&mut batch, at) => more,
            };
            if !more {
                break;
            }
            self.take(&mut batch).await;
        }
        // What the hub queued before the stop still goes into the file.
        while let Some(d) = self.sub.try_recv() {
            batch.push(d);
        }
        self.take(&mut batch).await;
        if let Err(e) = self.close().await {
            self.failed(e).await;
        }
        self.index.close();
        if let Err(e) = writer.await {
            tracing::error!(error = %e, "index writer task failed");
        }
    }

    /// When to take the next batch of frames from the hub. Fragments are written once a second,
    /// so the recorder does not wake for every frame: while a fragment fills, it sleeps until
    /// the media time still missing from it has passed, then takes what arrived meanwhile (and,
    /// close to the end, frame by frame: the fragment is flushed as soon as its last frame is
    /// in, as before, so batching adds nothing to what a crash can lose). Without an open
    /// segment, at the process-wide [`crate::hub::BATCH_PERIOD`] ticks.
    fn next_batch_at(&self) -> Option<Instant> {
        let Some(o) = &self.open else {
            return Some(crate::hub::next_batch_tick());
        };
        let left_us = FRAGMENT.as_micros() as i64 - o.pending_us;
        (left_us >= BATCH_MIN_WAIT.as_micros() as i64)
            .then(|| Instant::now() + Duration::from_micros(left_us.unsigned_abs()))
    }

    /// Records a batch of frames taken from the hub (leaves `batch` empty).
    async fn take(&mut self, batch: &mut Vec<Delivery>) {
        if let Some(last) = batch.last() {
            self.stats.frame_taken(last.frame.wallclock_us);
        }
        for d in batch.drain(..) {
            if let Err(e) = self.push(d).await {
                self.failed(e).await;
            }
        }
    }

    async fn push(&mut self, d: Delivery) -> Result<(), RecordError> {
        let f = d.frame;
        let main = main_track(&f.params);
        let sync = f.track == main && (f.keyframe || main == TrackKind::Audio);
        let codec_change = self
            .open
            .as_ref()
            .is_some_and(|o| !o.params.same_codecs(&f.params));
        if d.discontinuity || codec_change {
            self.close().await?;
            if d.discontinuity {
                self.clock.reset();
            }
        }
        let ts = f.params.timescale(f.track);
        let dts_us = ticks_to_us(f.dts, ts);

        if let Some(o) = &self.open {
            let seg_us = if f.track == main {
                ticks_to_us(f.dts - o.first_dts, ts)
            } else {
                0
            };
            let target = Duration::from_millis(self.cfg.ms_per_file);
            let cap = target + MAX_OVERSHOOT;
            let too_long = seg_us >= cap.as_micros() as i64
                || o.bytes >= 2 * MAX_SEGMENT_BYTES
                || o.opened.elapsed() >= 2 * cap;
            let due = seg_us >= target.as_micros() as i64
                || o.bytes >= MAX_SEGMENT_BYTES
                || o.opened.elapsed() >= cap;
            if (sync && due) || too_long {
                self.close().await?;
            }
        }
        if self.open.is_none() {
            if !sync || !self.may_open().await {
                if self.backoff.until.is_some() || self.root_down.is_some() {
                    self.stats.dropped(f.data.len() as u64);
                }
                return Ok(());
            }
            let correction = self.clock.boundary(self.max_drift_us);
            if let Some(c) = correction {
                self.stats.clock_reanchored(c);
                tracing::warn!(
                    correction_ms = c / 1000,
                    "camera clock drifted from the server clock: wall clock re-anchored"
                );
            }
            let start_us = self.clock.wall_us(f.wallclock_us, dts_us);
            self.open_segment(&f, start_us, correction).await?;
        }
        if f.track == main {
            self.clock.observe(f.wallclock_us, dts_us);
        }
        let Some(o) = self.open.as_mut() else {
            return Ok(());
        };
        // Each file's media time starts at 0; audio sampled just before the keyframe is dropped.
        let mut f = f;
        f.dts -= o.offsets[usize::from(f.track == TrackKind::Audio)];
        if f.dts < 0 {
            return Ok(());
        }
        if f.track == main {
            o.pending_us += ticks_to_us(i64::from(f.duration), ts);
        }
        o.pending_bytes += f.data.len();
        o.pending.push(f);
        let by_time = o.pending_us >= FRAGMENT.as_micros() as i64;
        if by_time
            || o.pending_bytes >= FRAGMENT_MAX_BYTES
            || o.pending.len() >= FRAGMENT_MAX_FRAMES
        {
            if !by_time {
                self.stats.early_flush();
            }
            self.flush_fragment().await?;
        }
        Ok(())
    }

    /// Whether a new segment may be opened now (not backing off after a failed write, and room
    /// on the disk after a full one).
    async fn may_open(&mut self) -> bool {
        if !self.root_usable().await {
            return false;
        }
        let Some(until) = self.backoff.until else {
            return true;
        };
        if Instant::now() < until {
            return false;
        }
        if self.backoff.disk_full {
            let needed = RESUME_MIN_FREE_BYTES.max(2 * self.last_segment_bytes);
            match free_bytes(&self.cfg.directory).await {
                Ok(free) if free >= needed => {}
                Ok(free) => {
                    // Look again in a second (a statvfs is cheap): recording resumes soon
                    // after space returns.
                    tracing::debug!(free, needed, "disk still full: recording stays paused");
                    self.backoff.until = Some(Instant::now() + DISK_FULL_POLL);
                    return false;
                }
                // The directory may be gone (an unmounted disk): try, and fail properly.
                Err(_) => {}
            }
        }
        true
    }

    /// Whether the storage root is available (looked at once per segment, and every
    /// [`DISK_FULL_POLL`] while it is not).
    async fn root_usable(&mut self) -> bool {
        let Some(roots) = &self.roots else {
            return true;
        };
        if self.root_down.is_some_and(|next| Instant::now() < next) {
            return false;
        }
        let usable = roots.writable(&self.cfg.directory).await;
        match (usable, self.root_down.is_some()) {
            (false, false) => {
                self.stats.root_unavailable(true);
                tracing::error!(directory = %self.cfg.directory.display(),
                    "storage root unavailable (marker missing): recording paused until it is back");
            }
            (true, true) => {
                self.stats.root_unavailable(false);
                tracing::info!(directory = %self.cfg.directory.display(),
                    "storage root available again: recording resumes");
            }
            _ => {}
        }
        self.root_down = (!usable).then(|| Instant::now() + DISK_FULL_POLL);
        usable
    }

    /// Pauses recording after a failed write.
    fn back_off(&mut self, disk_full: bool) {
        self.backoff.failures = self.backoff.failures.saturating_add(1);
        let delay = BACKOFF_MIN
            .saturating_mul(1u32 << (self.backoff.failures - 1).min(8))
            .min(BACKOFF_MAX);
        self.backoff.until = Some(Instant::now() + delay);
        self.backoff.disk_full = disk_full;
    }

    /// Handles a failed write: the segment is already closed at its last good fragment; ask
    /// retention for room if the disk is full, and back off.
    async fn failed(&mut self, e: RecordError) {
        let disk_full = e.is_disk_full();
        self.stats.write_error(disk_full);
        if let Some(o) = self.open.take() {
            // A failure outside a write (e.g. muxing): close what is on disk.
            self.stats.dropped(o.pending_bytes as u64);
            self.end_segment(o).await;
        }
        self.back_off(disk_full);
        let retry_ms = self.backoff.until.map_or(0, |t| {
            t.saturating_duration_since(Instant::now()).as_millis() as u64
        });
        if disk_full {
            tracing::error!(error = %e, retry_ms, "disk full: segment closed, recording paused");
            if let Some(r) = &self.retention {
                r.disk_full(&self.cfg.directory);
            }
        } else {
            tracing::error!(error = %e, retry_ms, "recording error: segment closed, recording paused");
        }
    }

    async fn open_segment(
        &mut self,
        f: &Frame,
        start_us: i64,
        clock_correction_us: Option<i64>,
    ) -> Result<(), RecordError> {
        let mut start = start_us;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RecordError::Io { path, source }
        };
        // Names are per second: bump the second until the name is free.
        let (path, mut file) = loop {
            let path = segment_path(&self.cfg.directory, self.cfg.stream_id, start);
            let Some(dir) = path.parent() else {
                return Err(io(&path)(std::io::Error::other("no parent directory")));
            };
            if !tokio::fs::try_exists(dir).await.unwrap_or(false) {
                tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
                // The new day (and maybe stream) directory must survive a power cut too.
                for d in dir.ancestors().skip(1).take(2) {
                    sync_dir(d).await.map_err(io(d))?;
                }
            }
            match tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
            {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => start += 1_000_000,
                Err(source) => return Err(RecordError::Io { path, source }),
            }
        };
        let init = match init_segment(&f.params) {
            Ok(init) => init,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e.into());
            }
        };
        let written = async {
            file.write_all(&init).await?;
            // tokio writes in the background: `flush` reports a failed write (a full disk),
            // which `sync_data` would swallow.
            file.flush().await?;
            file.sync_data().await?;
            if let Some(dir) = path.parent() {
                sync_dir(dir).await?;
            }
            Ok::<(), std::io::Error>(())
        }
        .await;
        if let Err(source) = written {
            // Never leave a file holding a partial init segment (or only one).
            drop(file);
            let _ = tokio::fs::remove_file(&path).await;
            return Err(RecordError::Io { path, source });
        }
        self.stats.bytes_written(init.len() as u64, false);
        let upload_state = match self.cfg.storage {
            StorageKind::S3 => "local",
            StorageKind::Filesystem => "none",
        };
        let seq = self.index.open(RecordedSegment {
            segment: NewSegment {
                stream_id: self.cfg.stream_id,
                start_us,
                end_us: start_us,
                media_duration_us: 0,
                storage: StorageKind::Filesystem,
                storage_key: path.to_string_lossy().into_owned(),
                bytes: init.len() as i64,
                state: SegmentState::Recording,
            },
            codecs: f.params.codec_list(),
            init: init.clone(),
            upload_state,
            clock_correction_us,
            fence: self.fence.clone(),
        });
        tracing::debug!(path = %path.display(), "segment opened");
        self.writer = FragmentWriter::new();
        let now = Instant::now();
        self.open = Some(Open {
            seq,
            path,
            file,
            params: f.params.clone(),
            start_us,
            first_dts: f.dts,
            offsets: {
                let base_us = ticks_to_us(f.dts, f.params.timescale(f.track));
                [
                    us_to_ticks(base_us, f.params.timescale(TrackKind::Video)),
                    us_to_ticks(base_us, f.params.timescale(TrackKind::Audio)),
                ]
            },
            media_us: 0,
            bytes: init.len() as u64,
            pending: Vec::new(),
            pending_us: 0,
            pending_bytes: 0,
            opened: now,
            last_progress: now,
        });
        Ok(())
    }

    /// Writes the pending frames as one fragment, flushes it to disk, then tells the index. On a
    /// failed write the segment is closed at its last good fragment (see [`Recorder::failed`]).
    async fn flush_fragment(&mut self) -> Result<(), RecordError> {
        let Some(o) = self.open.as_mut() else {
            return Ok(());
        };
        if o.pending.is_empty() {
            return Ok(());
        }
        let data = self.writer.write(&o.params, &o.pending)?;
        let written = async {
            o.file.write_all(&data).await?;
            o.file.flush().await?;
            o.file.sync_data().await
        }
        .await;
        if let Err(source) = written {
            let path = o.path.clone();
            if let Some(o) = self.open.take() {
                self.stats.dropped(o.pending_bytes as u64);
                self.end_segment(o).await;
            }
            return Err(RecordError::Io { path, source });
        }
        o.bytes += data.len() as u64;
        o.media_us += o.pending_us;
        o.pending.clear();
        o.pending_us = 0;
        o.pending_bytes = 0;
        self.stats.bytes_written(data.len() as u64, true);
        self.backoff = Backoff::default();
        if o.last_progress.elapsed() >= PROGRESS_EVERY {
            o.last_progress = Instant::now();
            self.index.progress(o.seq, o.progress());
        }
        Ok(())
    }

    /// Flushes and closes the open segment, if any.
    async fn close(&mut self) -> Result<(), RecordError> {
        if self.open.is_none() {
            return Ok(());
        }
        self.flush_fragment().await?;
        if let Some(o) = self.open.take() {
            self.end_segment(o).await;
        }
        Ok(())
    }

    /// Ends a segment with what is on disk: cuts anything after the last good fragment (a write
    /// that failed half-way), then completes its row, or removes file and row when it holds no
    /// media.
    async fn end_segment(&mut self, o: Open) {
        let Open {
            seq,
            path,
            file,
            media_us,
            bytes,
            ..
        } = o;
        let progress = Progress {
            end_us: o.start_us + media_us,
            media_us,
            bytes: bytes as i64,
        };
        let cut = async {
            if file.metadata().await?.len() > bytes {
                file.set_len(bytes).await?;
                file.sync_all().await?;
            }
            Ok::<(), std::io::Error>(())
        }
        .await;
        drop(file);
        if let Err(e) = cut {
            // Start-up repair cuts it (the row's size is what playback and export trust).
            tracing::warn!(error = %e, path = %path.display(), "cannot cut a failed write off the segment");
        }
        if media_us == 0 {
            // Nothing but the init segment: not worth keeping.
            match tokio::fs::remove_file(&path).await {
                Ok(()) => self.index.discard(seq),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.index.discard(seq),
                Err(e) => {
                    // Keep the row pointing at it rather than leave an unindexed file.
                    tracing::warn!(error = %e, path = %path.display(), "cannot remove an empty segment");
                    self.index.complete(seq, progress);
                }
            }
            return;
        }
        self.last_segment_bytes = bytes;
        self.index.complete(seq, progress);
        self.stats.segment_written();
        tracing::debug!(path = %path.display(), media_ms = media_us / 1000, "segment closed");
    }
}
