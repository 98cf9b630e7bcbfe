//! Live HLS: fMP4/CMAF segments (default) or MPEG-TS segments (`[hls] segment_format =
//! "mpegts"`, version-3 playlists as the Go original wrote) and a sliding-window playlist written
//! from a stream's hub.
//!
//! * Segments are cut at the first keyframe after `ms_per_segment` (the original's rule).
//! * `window_size` segments are listed; `window_capacity` are kept on disk (the original's ring).
//! * Every file is written to a temporary name and renamed, so readers never see partial files.
//! * Names carry a per-writer token (`<uuid>_<token>_<seq>.m4s`, or `.ts`), so a restarted stream never
//!   reuses a name and the delayed clean-up of an old writer cannot delete a new writer's files.
//! * A source restart or codec change starts a new segment with `EXT-X-DISCONTINUITY` (and a new
//!   `EXT-X-MAP` when the codecs changed; MPEG-TS segments carry their own PAT/PMT instead).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use m3u8_rs::{Map, MediaPlaylist, MediaSegment};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{HlsConfig, SegmentFormat};
use crate::hub::{Delivery, Subscription};
use crate::media::fmp4::{FragmentWriter, init_segment};
use crate::media::ts::TsWriter;
use crate::media::{Frame, StreamParams, TrackKind};

/// A validated HLS file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HlsName {
    pub stream_id: Uuid,
    /// The whole file name (safe to join onto the HLS directory).
    pub file: String,
    pub is_playlist: bool,
}

/// Why a name was refused; the text goes into `{"Error": ...}`.
pub fn parse_name(file: &str) -> Result<HlsName, String> {
    let head = file.get(..36).unwrap_or(file);
    let stream_id = Uuid::parse_str(head).map_err(|e| e.to_string())?;
    let rest = &file[head.len()..];
    if rest.is_empty()
        || rest.contains("..")
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!("invalid HLS file name '{file}'"));
    }
    let ext = rest.rsplit('.').next().unwrap_or("");
    if !matches!(ext, "m3u8" | "m4s" | "mp4" | "ts") {
        return Err(format!("invalid HLS file name '{file}'"));
    }
    Ok(HlsName {
        stream_id,
        file: file.to_owned(),
        is_playlist: ext == "m3u8",
    })
}

/// Hub queue of the segmenter, in frames: a couple of segments' worth, so a slow disk causes a
/// keyframe skip only after seconds of stall.
pub const QUEUE_FRAMES: usize = 2048;

/// A segment that never reaches a keyframe is abandoned past this many frames or bytes (bounds
/// memory when a source sends no keyframes); its frames are counted as dropped.
const MAX_SEGMENT_FRAMES: usize = 20_000;
pub const MAX_SEGMENT_BYTES: usize = 64 * 1024 * 1024;

/// A segment is cut at a keyframe once it holds this many frames or bytes, even before
/// `ms_per_segment`: a source with tiny frame durations never reaches the target duration, and
/// its segments must neither grow without bound nor be dropped.
const SOFT_SEGMENT_FRAMES: usize = 2_000;
pub const SOFT_SEGMENT_BYTES: usize = 16 * 1024 * 1024;

/// Counters of a stream's HLS writer (read by status pages and metrics).
#[derive(Debug, Default)]
pub struct HlsStats {
    segments_written: AtomicU64,
    dropped_segments: AtomicU64,
    dropped_bytes: AtomicU64,
    pending_bytes: AtomicU64,
}

impl HlsStats {
    /// Segments written since the writer started.
    pub fn segments_written(&self) -> u64 {
        self.segments_written.load(Ordering::Relaxed)
    }

    /// Segments abandoned because no keyframe came before the frame or byte limit.
    pub fn dropped_segments(&self) -> u64 {
        self.dropped_segments.load(Ordering::Relaxed)
    }

    /// Payload bytes of the abandoned segments.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes.load(Ordering::Relaxed)
    }

    /// Payload bytes of the segment being collected now.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes.load(Ordering::Relaxed)
    }
}

/// Playlist file name of a stream.
pub fn playlist_name(stream_id: Uuid) -> String {
    format!("{stream_id}.m3u8")
}

struct Listed {
    uri: String,
    duration_s: f32,
    discontinuity: bool,
    map: String,
    program_date_time: Option<DateTime<FixedOffset>>,
}

/// Writes one stream's HLS files.
pub struct HlsWriter {
    stream_id: Uuid,
    dir: PathBuf,
    target_ms: u64,
    window_size: usize,
    window_capacity: usize,
    sub: Subscription,
    /// Distinguishes this writer's files from any other writer's of the same stream.
    token: String,
    seq: u64,
    ring: VecDeque<Listed>,
    /// Discontinuities among segments that left the ring (EXT-X-DISCONTINUITY-SEQUENCE).
    dropped_discontinuities: u64,
    params: Option<Arc<StreamParams>>,
    init_uri: String,
    frames: Vec<Frame>,
    /// Payload bytes in `frames`.
    frames_bytes: usize,
    next_discontinuity: bool,
    format: SegmentFormat,
    writer: FragmentWriter,
    ts: TsWriter,
    stats: Arc<HlsStats>,
}

impl HlsWriter {
    pub fn new(stream_id: Uuid, cfg: &HlsConfig, sub: Subscription) -> HlsWriter {
        let token = format!("{:x}{:04x}", Utc::now().timestamp(), rand::random::<u16>());
        HlsWriter {
            stream_id,
            dir: PathBuf::from(&cfg.directory),
            target_ms: cfg.ms_per_segment.max(100),
            window_size: cfg.window_size.max(1),
            window_capacity: cfg.window_capacity.max(cfg.window_size).max(1),
            sub,
            token,
            seq: 0,
            ring: VecDeque::new(),
            dropped_discontinuities: 0,
            params: None,
            init_uri: String::new(),
            frames: Vec::new(),
            frames_bytes: 0,
            next_discontinuity: false,
            format: cfg.segment_format,
            writer: FragmentWriter::new(),
            ts: TsWriter::new(),
            stats: Default::default(),
        }
    }

    /// This writer's counters.
    pub fn stats(&self) -> Arc<HlsStats> {
        self.stats.clone()
    }

    fn prefix(&self) -> String {
        format!("{}_{}_", self.stream_id, self.token)
    }

    /// Consumes frames until cancelled, then schedules the removal of this writer's files.
    pub async fn run(mut self, cancel: CancellationToken) {
        if let Err(e) = tokio::fs::create_dir_all(&self.dir).await {
            tracing::error!(error = %e, dir = %self.dir.display(), "cannot create the HLS directory");
            return;
        }
        remove_stale(&self.dir, self.stream_id, &self.token).await;
        let mut batch = Vec::new();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            let more = tokio::select! {
                _ = &mut cancelled => false,
                // Segments are written whole: frames are taken in batches, a few times a second,
                // not with one wake-up per frame.
                more = self.sub.recv_batch(&mut batch, Some(crate::hub::next_batch_tick())) => more,
            };
            if !more {
                break;
            }
            for d in batch.drain(..) {
                if let Err(e) = self.push(d).await {
                    tracing::warn!(error = %e, "HLS segment not written");
                }
            }
        }
        // Keep the last files around for players that are still fetching them, then clean up.
        let delay = Duration::from_millis(self.target_ms * self.window_size as u64);
        let (dir, id, token) = (self.dir.clone(), self.stream_id, self.token.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            remove_own(&dir, id, &token).await;
        });
    }

    async fn push(&mut self, d: Delivery) -> Result<(), crate::media::MediaError> {
        let f = d.frame;
        let has_video = f.params.video.is_some();
        let sync = match f.track {
            TrackKind::Video => f.keyframe,
            TrackKind::Audio => !has_video,
        };
        let codec_change = self
            .params
            .as_ref()
            .is_none_or(|p| p.version != f.params.version || !p.same_codecs(&f.params));
        if d.discontinuity || codec_change {
            if !self.frames.is_empty() {
                self.finish_segment().await?;
            }
            if !self.ring.is_empty() || self.seq > 0 {
                self.next_discontinuity = true;
            }
        }
        if codec_change {
            if !sync {
                // Wait for a keyframe with the new parameters before anything else.
                return Ok(());
            }
            if self.format == SegmentFormat::Fmp4 {
                let init = init_segment(&f.params)?;
                let name = format!("{}init{}.mp4", self.prefix(), f.params.version);
                write_atomic(&self.dir.join(&name), &init).await?;
                self.init_uri = name;
            }
            self.params = Some(f.params.clone());
        }
        if self.frames.is_empty() && !sync {
            return Ok(());
        }
        if sync
            && !self.frames.is_empty()
            && (self.current_ms() >= self.target_ms
                || self.frames.len() >= SOFT_SEGMENT_FRAMES
                || self.frames_bytes >= SOFT_SEGMENT_BYTES)
        {
            self.finish_segment().await?;
        }
        if self.frames.len() >= MAX_SEGMENT_FRAMES
            || self.frames_bytes + f.data.len() > MAX_SEGMENT_BYTES
        {
            tracing::warn!(
                frames = self.frames.len(),
                bytes = self.frames_bytes,
                "no keyframe for too long: HLS segment dropped"
            );
            self.stats.dropped_segments.fetch_add(1, Ordering::Relaxed);
            self.stats
                .dropped_bytes
                .fetch_add((self.frames_bytes + f.data.len()) as u64, Ordering::Relaxed);
            self.frames.clear();
            self.frames_bytes = 0;
            self.stats.pending_bytes.store(0, Ordering::Relaxed);
            self.next_discontinuity = true;
            return Ok(());
        }
        self.frames_bytes += f.data.len();
        self.stats
            .pending_bytes
            .store(self.frames_bytes as u64, Ordering::Relaxed);
        self.frames.push(f);
        Ok(())
    }

    /// Duration of the current segment in ms.
    fn current_ms(&self) -> u64 {
        self.params.as_ref().map_or(0, |p| span_ms(p, &self.frames))
    }

    async fn finish_segment(&mut self) -> Result<(), crate::media::MediaError> {
        let frames = std::mem::take(&mut self.frames);
        self.frames_bytes = 0;
        self.stats.pending_bytes.store(0, Ordering::Relaxed);
        let Some(params) = self.params.clone() else {
            return Ok(());
        };
        if frames.is_empty() {
            return Ok(());
        }
        let (data, ext) = match self.format {
            SegmentFormat::Fmp4 => (self.writer.write(&params, &frames)?, "m4s"),
            SegmentFormat::Mpegts => (self.ts.write(&params, &frames)?.into(), "ts"),
        };
        self.seq += 1;
        let uri = format!("{}{:06}.{ext}", self.prefix(), self.seq);
        write_atomic(&self.dir.join(&uri), &data).await?;
        self.stats.segments_written.fetch_add(1, Ordering::Relaxed);
        let first_wallclock = frames[0].wallclock_us;
        self.ring.push_back(Listed {
            uri,
            duration_s: span_ms(&params, &frames) as f32 / 1000.0,
            discontinuity: std::mem::take(&mut self.next_discontinuity),
            map: self.init_uri.clone(),
            program_date_time: DateTime::<Utc>::from_timestamp_micros(first_wallclock)
                .filter(|_| first_wallclock > 0)
                .map(|t| t.fixed_offset()),
        });
        while self.ring.len() > self.window_capacity {
            if let Some(old) = self.ring.pop_front() {
                if old.discontinuity {
                    self.dropped_discontinuities += 1;
                }
                let _ = tokio::fs::remove_file(self.dir.join(&old.uri)).await;
            }
        }
        self.write_playlist().await
    }

    async fn write_playlist(&self) -> Result<(), crate::media::MediaError> {
        let skip = self.ring.len().saturating_sub(self.window_size);
        let hidden_discontinuities = self
            .ring
            .iter()
            .take(skip)
            .filter(|s| s.discontinuity)
            .count() as u64;
        let listed: Vec<&Listed> = self.ring.iter().skip(skip).collect();
        let mut segments = Vec::with_capacity(listed.len());
        let mut prev_map: Option<&str> = None;
        for s in &listed {
            let map = (!s.map.is_empty() && prev_map != Some(s.map.as_str())).then(|| Map {
                uri: s.map.clone(),
                ..Default::default()
            });
            prev_map = Some(s.map.as_str());
            segments.push(MediaSegment {
                uri: s.uri.clone(),
                duration: s.duration_s,
                discontinuity: s.discontinuity,
                map,
                program_date_time: s.program_date_time,
                ..Default::default()
            });
        }
        let target = listed
            .iter()
            .map(|s| s.duration_s.ceil() as u64)
            .max()
            .unwrap_or(1)
            .max(1);
        let mpegts = self.format == SegmentFormat::Mpegts;
        let playlist = MediaPlaylist {
            // Version 3 (decimal EXTINF) is all MPEG-TS segments need: what older players take.
            version: Some(if mpegts { 3 } else { 7 }),
            target_duration: target,
            media_sequence: self.seq - listed.len() as u64 + 1,
            discontinuity_sequence: self.dropped_discontinuities + hidden_discontinuities,
            independent_segments: !mpegts,
            segments,
            ..Default::default()
        };
        let mut text = Vec::new();
        playlist.write_to(&mut text)?;
        write_atomic(&self.dir.join(playlist_name(self.stream_id)), &text).await?;
        Ok(())
    }
}

/// Time covered by `frames` in ms, measured on the main track (video, else audio).
fn span_ms(p: &StreamParams, frames: &[Frame]) -> u64 {
    let main = if p.video.is_some() {
        TrackKind::Video
    } else {
        TrackKind::Audio
    };
    let mut it = frames.iter().filter(|f| f.track == main);
    let Some(first) = it.next() else { return 0 };
    let last = it.next_back().unwrap_or(first);
    let ticks = last.dts + i64::from(last.duration) - first.dts;
    u64::try_from(ticks).unwrap_or(0) * 1000 / u64::from(p.timescale(main).max(1))
}

/// Writes `data` to a temporary file next to `path`, then renames it over `path`.
pub async fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, data).await?;
    tokio::fs::rename(&tmp, path).await
}

/// Removes files of this stream left by other (older) writers.
async fn remove_stale(dir: &Path, id: Uuid, own_token: &str) {
    let own = format!("{id}_{own_token}_");
    remove_matching(dir, |name| {
        name.starts_with(&format!("{id}_")) && !name.starts_with(&own)
    })
    .await;
}

/// Removes this writer's files, and the playlist if it still lists them.
async fn remove_own(dir: &Path, id: Uuid, token: &str) {
    let own = format!("{id}_{token}_");
    let playlist = dir.join(playlist_name(id));
    if let Ok(text) = tokio::fs::read_to_string(&playlist).await
        && text.contains(&own)
    {
        let _ = tokio::fs::remove_file(&playlist).await;
    }
    remove_matching(dir, |name| name.starts_with(&own)).await;
}

async fn remove_matching(dir: &Path, pred: impl Fn(&str) -> bool) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(e)) = entries.next_entry().await {
        let name = e.file_name();
        if let Some(name) = name.to_str()
            && pred(name)
        {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::media::mp4file::Mp4File;

    fn writer(dir: &Path) -> HlsWriter {
        let cfg = HlsConfig {
            directory: dir.display().to_string(),
            ..Default::default()
        };
        HlsWriter::new(Uuid::new_v4(), &cfg, Hub::new().subscribe(10))
    }

    fn delivery(f: Frame) -> Delivery {
        Delivery {
            frame: f,
            discontinuity: false,
        }
    }

    /// A source whose frames last one tick never reaches `ms_per_segment`: segments are cut at a
    /// keyframe by frame count instead, so nothing grows without bound and nothing is dropped.
    #[tokio::test]
    async fn tiny_durations_are_cut_by_size_not_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        let clip = Mp4File::open(Path::new("assets/demo.mp4")).expect("demo");
        let video: Vec<Frame> = clip
            .frames()
            .into_iter()
            .filter(|f| f.track == TrackKind::Video)
            .collect();
        let mut w = writer(dir.path());
        let mut most_pending = 0;
        for (n, f) in video
            .iter()
            .cycle()
            .take(5 * SOFT_SEGMENT_FRAMES)
            .enumerate()
        {
            let mut f = f.clone();
            f.dts = n as i64;
            f.duration = 1;
            w.push(delivery(f)).await.expect("push");
            most_pending = most_pending.max(w.frames.len());
        }
        let stats = w.stats();
        assert!(
            stats.segments_written() >= 4,
            "{}",
            stats.segments_written()
        );
        assert_eq!(stats.dropped_segments(), 0);
        assert!(
            most_pending <= SOFT_SEGMENT_FRAMES + 100,
            "a GOP past the soft limit at most: {most_pending}"
        );
    }

    /// Without keyframes a segment is dropped at the byte limit, and the drop is counted.
    #[tokio::test]
    async fn a_segment_without_keyframes_is_dropped_at_the_byte_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let clip = Mp4File::open(Path::new("assets/demo.mp4")).expect("demo");
        let first = clip
            .frames()
            .into_iter()
            .find(|f| f.track == TrackKind::Video && f.keyframe)
            .expect("keyframe");
        let mut w = writer(dir.path());
        let big = bytes::Bytes::from(vec![0u8; 1024 * 1024]);
        for n in 0..(MAX_SEGMENT_BYTES / big.len() + 10) {
            let mut f = first.clone();
            f.keyframe = n == 0;
            f.dts = n as i64 * 3600;
            f.duration = 3600;
            f.data = big.clone();
            w.push(delivery(f)).await.expect("push");
            assert!(w.frames_bytes <= MAX_SEGMENT_BYTES);
        }
        let stats = w.stats();
        assert_eq!(stats.dropped_segments(), 1);
        assert!(stats.dropped_bytes() >= MAX_SEGMENT_BYTES as u64);
        assert!(stats.pending_bytes() <= MAX_SEGMENT_BYTES as u64);
    }
}
