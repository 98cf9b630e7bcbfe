//! Records one stream into archive segments: self-contained fragmented MP4 files, indexed in SQL.
//!
//! * A segment starts at a keyframe and is cut at the first keyframe after `ms_per_file`, at a
//!   codec change, and after a discontinuity (source restart or a lag skip); it is never longer
//!   than `ms_per_file` + [`MAX_OVERSHOOT`] (without a keyframe by then it is closed and the next
//!   one waits for one).
//! * The file is `ftyp`+`moov` first, then one `moof`+`mdat` about every second, each written and
//!   flushed to disk (`fdatasync`) before the index row is advanced: a crash loses at most the
//!   fragment in progress, and start-up repair (`archive::repair`) fixes the rest.
//! * The row is inserted (state `recording`) once the init segment is on disk, its end advanced as
//!   fragments land, and finalised (state `complete`, runs extended) when the file closes.
//! * Times: a segment's wall-clock start is anchored on the frame's receive time at the start of a
//!   session, then advanced by media time, so consecutive segments are exactly back to back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::segments::{self, NewSegment, SegmentState};
use crate::db::{Db, DbError};
use crate::hub::{Delivery, Subscription};
use crate::media::fmp4::{FragmentWriter, init_segment};
use crate::media::{Frame, MediaError, StreamParams, TrackKind};
use crate::stream::StorageKind;

/// Hub queue of a recorder, in frames: tens of seconds of video, so a slow disk stalls for a while
/// before frames are skipped (and a new segment started at the next keyframe).
pub const QUEUE_FRAMES: usize = 4096;

/// Target length of one fragment: the most a crash can lose.
pub const FRAGMENT: Duration = Duration::from_secs(1);

/// How far past `ms_per_file` a segment may run while no keyframe comes to cut it at. With
/// `config::MAX_MS_PER_FILE` this bounds every segment well inside
/// `db::segments::MAX_SEGMENT_US`, so "which segment holds time T" stays a bounded index range.
pub const MAX_OVERSHOOT: Duration = Duration::from_secs(300);

/// How often the row's end time is advanced while recording.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Recorder failures (each is logged; the recorder carries on with the next segment).
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
    #[error(transparent)]
    Db(#[from] DbError),
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
    id: i64,
    path: PathBuf,
    file: tokio::fs::File,
    params: Arc<StreamParams>,
    start_us: i64,
    /// Main-track dts of the first frame (ticks of the main track).
    first_dts: i64,
    /// Subtracted from each track's dts so the file's media time starts at 0 (video, audio ticks).
    offsets: [i64; 2],
    /// Media time written so far (µs), by the main track.
    media_us: i64,
    bytes: u64,
    pending: Vec<Frame>,
    pending_us: i64,
    last_progress: tokio::time::Instant,
}

/// One stream's recorder.
pub struct Recorder {
    cfg: RecorderConfig,
    db: Db,
    sub: Subscription,
    open: Option<Open>,
    writer: FragmentWriter,
    /// Wall clock (µs) of media time `anchor_dts_us` on the current session's timeline.
    anchor: Option<(i64, i64)>,
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

impl Recorder {
    pub fn new(cfg: RecorderConfig, db: Db, sub: Subscription) -> Recorder {
        Recorder {
            cfg,
            db,
            sub,
            open: None,
            writer: FragmentWriter::new(),
            anchor: None,
        }
    }

    /// Records until cancelled (then closes the open segment cleanly).
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let d = tokio::select! {
                _ = cancel.cancelled() => break,
                d = self.sub.recv() => match d {
                    Some(d) => d,
                    None => break,
                },
            };
            if let Err(e) = self.push(d).await {
                tracing::error!(error = %e, "recording error: segment closed");
                if let Err(e) = self.close().await {
                    tracing::error!(error = %e, "cannot close the segment");
                }
                self.open = None;
            }
        }
        if let Err(e) = self.close().await {
            tracing::error!(error = %e, "cannot close the last segment");
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
                self.anchor = None;
            }
        }
        // Wall-clock anchor of this session's timeline.
        let ts = f.params.timescale(f.track);
        let dts_us = ticks_to_us(f.dts, ts);
        let (anchor_wall, anchor_dts) = *self.anchor.get_or_insert((f.wallclock_us, dts_us));
        let wall_us = anchor_wall + (dts_us - anchor_dts);

        if let Some(o) = &self.open {
            let seg_us = if f.track == main {
                ticks_to_us(f.dts - o.first_dts, ts)
            } else {
                0
            };
            let target_us =
                i64::try_from(self.cfg.ms_per_file.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
            let too_long = seg_us >= target_us.saturating_add(MAX_OVERSHOOT.as_micros() as i64);
            if (sync && seg_us >= target_us) || too_long {
                self.close().await?;
            }
        }
        if self.open.is_none() {
            if !sync {
                return Ok(());
            }
            self.open_segment(&f, wall_us).await?;
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
        o.pending.push(f);
        if o.pending_us >= FRAGMENT.as_micros() as i64 {
            self.flush_fragment().await?;
        }
        Ok(())
    }

    async fn open_segment(&mut self, f: &Frame, start_us: i64) -> Result<(), RecordError> {
        let mut start = start_us;
        // Names are per second: bump the second until the name is free.
        let (path, mut file) = loop {
            let path = segment_path(&self.cfg.directory, self.cfg.stream_id, start);
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|source| RecordError::Io {
                        path: dir.to_owned(),
                        source,
                    })?;
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
        let init = init_segment(&f.params)?;
        let io = |source| RecordError::Io {
            path: path.clone(),
            source,
        };
        file.write_all(&init).await.map_err(io)?;
        file.sync_data().await.map_err(io)?;
        let init_id = segments::upsert_init(&self.db, &f.params.codec_list(), &init).await?;
        let upload_state = match self.cfg.storage {
            StorageKind::S3 => "local",
            StorageKind::Filesystem => "none",
        };
        let id = segments::insert_recording(
            &self.db,
            &NewSegment {
                stream_id: self.cfg.stream_id,
                start_us,
                end_us: start_us,
                media_duration_us: 0,
                storage: StorageKind::Filesystem,
                storage_key: path.to_string_lossy().into_owned(),
                bytes: init.len() as i64,
                state: SegmentState::Recording,
            },
            Some(init_id),
            upload_state,
        )
        .await?;
        tracing::debug!(segment = id, path = %path.display(), "segment opened");
        self.writer = FragmentWriter::new();
        self.open = Some(Open {
            id,
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
            last_progress: tokio::time::Instant::now(),
        });
        Ok(())
    }

    /// Writes the pending frames as one fragment, flushes it to disk, then advances the row.
    async fn flush_fragment(&mut self) -> Result<(), RecordError> {
        let Some(o) = self.open.as_mut() else {
            return Ok(());
        };
        if o.pending.is_empty() {
            return Ok(());
        }
        let data = self.writer.write(&o.params, &o.pending)?;
        let path = o.path.clone();
        let io = |source| RecordError::Io {
            path: path.clone(),
            source,
        };
        o.file.write_all(&data).await.map_err(io)?;
        o.file.sync_data().await.map_err(io)?;
        o.bytes += data.len() as u64;
        o.media_us += o.pending_us;
        o.pending.clear();
        o.pending_us = 0;
        if o.last_progress.elapsed() >= PROGRESS_EVERY {
            o.last_progress = tokio::time::Instant::now();
            segments::update_progress(
                &self.db,
                o.id,
                o.start_us + o.media_us,
                o.media_us,
                o.bytes as i64,
            )
            .await?;
        }
        Ok(())
    }

    /// Flushes and closes the open segment, if any, and marks it complete.
    async fn close(&mut self) -> Result<(), RecordError> {
        if self.open.is_none() {
            return Ok(());
        }
        let flushed = self.flush_fragment().await;
        let Some(o) = self.open.take() else {
            return flushed;
        };
        drop(o.file);
        if o.media_us == 0 {
            // Nothing but the init segment: not worth keeping.
            let _ = tokio::fs::remove_file(&o.path).await;
            segments::delete(&self.db, o.id).await?;
            return flushed;
        }
        segments::finalize(
            &self.db,
            o.id,
            o.start_us + o.media_us,
            o.media_us,
            o.bytes as i64,
        )
        .await?;
        tracing::debug!(
            segment = o.id,
            media_ms = o.media_us / 1000,
            "segment closed"
        );
        flushed
    }
}
