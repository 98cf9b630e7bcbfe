//! Reading a whole MP4 file (progressive with `moov` at either end, or fragmented) into
//! [`StreamParams`] and [`Frame`]s: the looping file source and the Go archive import use it.
//!
//! The file is held in memory as one [`Bytes`]; frame payloads are zero-copy slices of it.
//! Sample tables are read with `shiguredo_mp4`'s `SampleTableAccessor` (progressive files) and
//! our own `moof` reader (fragmented files, including `tfhd` absolute base offsets as ffmpeg
//! writes them), so no sans-IO demuxer state machine is needed.
//!
//! Timestamps are converted to our timescales (video 90 kHz, audio its sample rate) from the
//! cumulative decode times, so rounding never drifts. The earliest track starts at dts 0; a track
//! that starts later (an empty edit, or a later first `tfdt` in a fragmented file) keeps its
//! offset so audio and video stay in sync. A video track's edit-list start (`media_time`, e.g.
//! two frames of B-frame delay) is subtracted from its composition offsets so presentation starts
//! at 0 (offsets may become negative; fragments carry signed offsets). Audio `media_time`
//! (encoder priming, ~1024 samples) is ignored.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use shiguredo_mp4::aux::SampleTableAccessor;
use shiguredo_mp4::boxes::{HdlrBox, MoovBox, TrakBox};

use super::fmp4::{
    self, FragmentTrack, RawSample, TrackParams, read_moof, top_level_boxes,
    track_params_from_entry,
};
use super::{Frame, MediaError, StreamParams, TrackKind, VIDEO_TIMESCALE};

/// Largest file we read into memory. Go archive segments and demo clips are far smaller; the
/// limit keeps a stray huge file from exhausting memory.
pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Most samples (all tracks) we index: 8 million is ~30 h of 25 fps video plus 48 kHz AAC and
/// costs ~1 GB of `Frame`s. A hostile sample table can claim billions of zero-byte samples.
const MAX_SAMPLES: usize = 8_000_000;

const MICROS_PER_SECOND: i128 = 1_000_000;

fn with_path(path: &Path, e: std::io::Error) -> MediaError {
    MediaError::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    ))
}

/// A whole MP4 file read into frames. See the module documentation for timestamp rules.
#[derive(Debug, Clone)]
pub struct Mp4File {
    params: Arc<StreamParams>,
    /// All frames in decode order, interleaved across tracks by time (video first on ties).
    frames: Vec<Frame>,
    duration_us: i64,
    skipped_tracks: Vec<String>,
    fragmented: bool,
    truncated: bool,
}

impl Mp4File {
    /// Reads and indexes the file at `path`. Files over [`MAX_FILE_BYTES`] are rejected.
    pub fn open(path: &Path) -> Result<Mp4File, MediaError> {
        let file = std::fs::File::open(path).map_err(|e| with_path(path, e))?;
        Self::read(file, path, MAX_FILE_BYTES)
    }

    /// Reads and indexes an open file, reading at most `max_bytes` (capped at
    /// [`MAX_FILE_BYTES`]). The size the file reports is not trusted: files in `/proc` report 0
    /// and can yield far more, so the reading itself stops one byte past the cap. `path` is only
    /// used in messages.
    pub fn read(file: std::fs::File, path: &Path, max_bytes: u64) -> Result<Mp4File, MediaError> {
        use std::io::Read;
        let max_bytes = max_bytes.min(MAX_FILE_BYTES);
        let mut data = Vec::new();
        file.take(max_bytes + 1)
            .read_to_end(&mut data)
            .map_err(|e| with_path(path, e))?;
        if data.len() as u64 > max_bytes {
            return Err(MediaError::Unsupported(format!(
                "{}: over the {max_bytes}-byte limit",
                path.display()
            )));
        }
        Self::from_bytes(Bytes::from(data)).map_err(|e| match e {
            MediaError::InvalidParams(m) => {
                MediaError::InvalidParams(format!("{}: {m}", path.display()))
            }
            MediaError::Unsupported(m) => {
                MediaError::Unsupported(format!("{}: {m}", path.display()))
            }
            MediaError::InvalidMp4(m) => MediaError::InvalidMp4(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Indexes an MP4 file already in memory.
    pub fn from_bytes(data: Bytes) -> Result<Mp4File, MediaError> {
        if data.len() as u64 > MAX_FILE_BYTES {
            return Err(MediaError::Unsupported(format!(
                "{} bytes is over the {MAX_FILE_BYTES}-byte limit",
                data.len()
            )));
        }
        let moov = fmp4::find_moov(&data)?;
        let mut skipped = Vec::new();
        let (mut tracks, total) = select_tracks(&moov, data.len() as u64, &mut skipped)?;
        let fragmented = moov.mvex_box.is_some();
        let truncated = fragmented && read_fragments(&data, &moov, &mut tracks, total)?;
        let (tracks, params) = used_tracks(tracks, &mut skipped)?;
        let params = Arc::new(params);
        let (per_track, duration_us) = timeline(&tracks)?;
        let mut per_track = per_track.into_iter().map(|samples| {
            samples
                .into_iter()
                .map(|s| {
                    let payload = data.slice(s.range.start as usize..s.range.end as usize);
                    s.frame(payload, &params)
                })
                .collect::<Vec<Frame>>()
        });
        let first = per_track.next().unwrap_or_default();
        let frames = match per_track.next() {
            Some(second) => interleave(first, second, |f| (f.dts, params.timescale(f.track))),
            None => first,
        };
        Ok(Mp4File {
            params,
            frames,
            duration_us,
            skipped_tracks: skipped,
            fragmented,
            truncated,
        })
    }

    /// Codec parameters (version 0) of the tracks used.
    pub fn params(&self) -> &StreamParams {
        &self.params
    }

    /// The shared `Arc` every frame's `params` points to.
    pub fn params_arc(&self) -> &Arc<StreamParams> {
        &self.params
    }

    /// Length of the longest track: its last frame's dts plus duration, in µs.
    pub fn duration_us(&self) -> i64 {
        self.duration_us
    }

    /// All frames in decode order, interleaved across tracks by time. Cloning is cheap: payloads
    /// are shared slices of the file.
    pub fn frames(&self) -> Vec<Frame> {
        self.frames.clone()
    }

    /// The frames without cloning.
    pub fn frames_ref(&self) -> &[Frame] {
        &self.frames
    }

    /// Tracks that were not used, each as `track <id>: <reason>`.
    pub fn skipped_tracks(&self) -> &[String] {
        &self.skipped_tracks
    }

    /// Whether the file is a fragmented MP4.
    pub fn is_fragmented(&self) -> bool {
        self.fragmented
    }

    /// Whether a fragmented file ended in a torn fragment (dropped; the frames before it are
    /// kept). A truncated progressive file is an error instead.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
}

/// One sample of a progressive file on the same timeline as [`Mp4File`]'s frames, located by its
/// byte range in the file instead of carrying its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedSample {
    pub track: TrackKind,
    pub dts: i64,
    pub duration: u32,
    pub cts_offset: i32,
    pub keyframe: bool,
    pub range: std::ops::Range<u64>,
}

impl IndexedSample {
    /// The frame of this sample, given its payload (the bytes of `range`).
    pub fn frame(&self, data: Bytes, params: &Arc<StreamParams>) -> Frame {
        Frame {
            track: self.track,
            dts: self.dts,
            duration: self.duration,
            cts_offset: self.cts_offset,
            keyframe: self.keyframe,
            wallclock_us: 0,
            data,
            params: params.clone(),
        }
    }
}

/// Indexes a progressive MP4 of `file_len` bytes from its `moov` box alone (`moov` holds the
/// box's bytes): the codec parameters (version 0) and every sample, interleaved by decode time,
/// with the timestamps [`Mp4File`] would give its frames. Exports use it to copy an imported
/// file's samples without reading the file whole. A fragmented file is `Unsupported`.
pub fn index_progressive(
    moov: &[u8],
    file_len: u64,
) -> Result<(StreamParams, Vec<IndexedSample>), MediaError> {
    let moov = fmp4::find_moov(moov)?;
    if moov.mvex_box.is_some() {
        return Err(MediaError::Unsupported("a fragmented MP4".into()));
    }
    let mut skipped = Vec::new();
    let (tracks, _) = select_tracks(&moov, file_len, &mut skipped)?;
    let (tracks, params) = used_tracks(tracks, &mut skipped)?;
    let (per_track, _) = timeline(&tracks)?;
    let mut per_track = per_track.into_iter();
    let first = per_track.next().unwrap_or_default();
    let samples = match per_track.next() {
        Some(second) => interleave(first, second, |s| (s.dts, params.timescale(s.track))),
        None => first,
    };
    Ok((params, samples))
}

/// The tracks of `moov` we use (the first video and the first audio track we can read), with
/// their progressive samples (a fragmented file may also have some in its moov), and how many
/// samples that is. Tracks left out are described in `skipped`.
fn select_tracks(
    moov: &MoovBox,
    file_len: u64,
    skipped: &mut Vec<String>,
) -> Result<(Vec<Track>, usize), MediaError> {
    let movie_timescale = moov.mvhd_box.timescale.get();
    let mut video: Option<Track> = None;
    let mut audio: Option<Track> = None;
    for (trak_index, trak) in moov.trak_boxes.iter().enumerate() {
        let id = trak.tkhd_box.track_id;
        match Track::from_trak(trak, trak_index, movie_timescale) {
            Ok(t) => {
                let slot = match t.kind {
                    TrackKind::Video => &mut video,
                    TrackKind::Audio => &mut audio,
                };
                if slot.is_some() {
                    skipped.push(format!("track {id}: another {:?} track is used", t.kind));
                } else {
                    *slot = Some(t);
                }
            }
            Err(reason) => skipped.push(format!("track {id}: {reason}")),
        }
    }
    if video.is_none() && audio.is_none() {
        return Err(MediaError::Unsupported(format!(
            "no H.264, H.265 or AAC track ({})",
            skipped.join("; ")
        )));
    }
    let mut tracks: Vec<Track> = video.into_iter().chain(audio).collect();
    let mut total = 0usize;
    for (index, t) in tracks.iter_mut().enumerate() {
        let trak = &moov.trak_boxes[t.trak_index];
        t.samples = stbl_samples(trak, index, file_len, MAX_SAMPLES - total)?;
        total += t.samples.len();
    }
    Ok((tracks, total))
}

/// Drops tracks without samples (noted in `skipped`); the parameters of those left.
fn used_tracks(
    mut tracks: Vec<Track>,
    skipped: &mut Vec<String>,
) -> Result<(Vec<Track>, StreamParams), MediaError> {
    tracks.retain(|t| {
        if t.samples.is_empty() {
            skipped.push(format!("track {}: no samples", t.track_id));
        }
        !t.samples.is_empty()
    });
    if tracks.is_empty() {
        return Err(MediaError::InvalidMp4("no samples".into()));
    }
    let params = StreamParams {
        version: 0,
        video: tracks.iter().find_map(|t| match &t.params {
            TrackParams::Video(v) => Some(v.clone()),
            TrackParams::Audio(_) => None,
        }),
        audio: tracks.iter().find_map(|t| match &t.params {
            TrackParams::Audio(a) => Some(a.clone()),
            TrackParams::Video(_) => None,
        }),
    };
    Ok((tracks, params))
}

/// A track we use, with its samples in its own timescale.
struct Track {
    kind: TrackKind,
    track_id: u32,
    /// Index of the `trak` in the `moov`.
    trak_index: usize,
    params: TrackParams,
    /// The track's media timescale (`mdhd`).
    timescale: u32,
    /// Our timescale for the kind: 90 kHz video, the sample rate for audio.
    target_timescale: u32,
    /// Presentation delay from leading empty edits, µs.
    empty_edit_us: i128,
    /// Media time where presentation starts (first non-empty edit), video only; 0 otherwise.
    media_time: i64,
    samples: Vec<RawSample>,
}

impl Track {
    /// Describes a `trak` we can use, or says why not.
    fn from_trak(trak: &TrakBox, trak_index: usize, movie_timescale: u32) -> Result<Track, String> {
        let handler = trak.mdia_box.hdlr_box.handler_type;
        let kind = match handler {
            HdlrBox::HANDLER_TYPE_VIDE => TrackKind::Video,
            HdlrBox::HANDLER_TYPE_SOUN => TrackKind::Audio,
            other => {
                return Err(format!(
                    "handler '{}' is neither video nor audio",
                    String::from_utf8_lossy(&other)
                ));
            }
        };
        let entries = &trak.mdia_box.minf_box.stbl_box.stsd_box.entries;
        let entry = entries.first().ok_or("no sample description")?;
        if entries.iter().any(|e| e != entry) {
            return Err("several different sample descriptions".into());
        }
        let params = track_params_from_entry(entry).map_err(|e| e.to_string())?;
        let target_timescale = match (&params, kind) {
            (TrackParams::Video(_), TrackKind::Video) => VIDEO_TIMESCALE,
            (TrackParams::Audio(a), TrackKind::Audio) => a.sample_rate,
            _ => return Err(format!("{kind:?} handler with a mismatched sample entry")),
        };

        // Leading empty edits delay the track; the first real edit says where media starts.
        let mut empty_edit_us = 0i128;
        let mut media_time = 0i64;
        if let Some(elst) = trak.edts_box.as_ref().and_then(|e| e.elst_box.as_ref()) {
            for edit in &elst.entries {
                if edit.media_time < 0 {
                    empty_edit_us += i128::from(edit.edit_duration) * MICROS_PER_SECOND
                        / i128::from(movie_timescale);
                } else {
                    media_time = edit.media_time;
                    break;
                }
            }
        }
        if kind == TrackKind::Audio {
            // Encoder priming: not worth shifting audio by ~21 ms.
            media_time = 0;
        }
        Ok(Track {
            kind,
            track_id: trak.tkhd_box.track_id,
            trak_index,
            params,
            timescale: trak.mdia_box.mdhd_box.timescale.get(),
            target_timescale,
            empty_edit_us,
            media_time,
            samples: Vec::new(),
        })
    }
}

/// Samples of a `trak`'s sample table, checked to lie within the file.
fn stbl_samples(
    trak: &TrakBox,
    index: usize,
    file_len: u64,
    budget: usize,
) -> Result<Vec<RawSample>, MediaError> {
    let id = trak.tkhd_box.track_id;
    let table = SampleTableAccessor::new(&trak.mdia_box.minf_box.stbl_box)
        .map_err(|e| MediaError::InvalidMp4(format!("track {id} sample table: {e}")))?;
    let count = table.sample_count() as usize;
    if count > budget {
        return Err(MediaError::Unsupported(format!(
            "track {id}: {count} samples is over the {MAX_SAMPLES} limit"
        )));
    }
    let mut samples = Vec::with_capacity(count);
    for s in table.samples() {
        let offset = s.data_offset();
        let size = u64::from(s.data_size());
        let end = offset
            .checked_add(size)
            .filter(|&end| end <= file_len)
            .ok_or_else(|| {
                MediaError::InvalidMp4(format!(
                    "track {id}: sample {} ({size} bytes at {offset}) lies beyond the end of the \
                     file ({file_len} bytes); truncated?",
                    s.index()
                ))
            })?;
        samples.push(RawSample {
            track: index,
            dts: s.timestamp(),
            duration: s.duration(),
            cts_offset: s.composition_time_offset().unwrap_or(0),
            keyframe: s.is_sync_sample(),
            data: offset as usize..end as usize,
        });
    }
    Ok(samples)
}

/// Appends the samples of every complete fragment to `tracks`. Returns whether the file ends in
/// a torn fragment or unreadable bytes (everything before them is kept).
fn read_fragments(
    data: &[u8],
    moov: &MoovBox,
    tracks: &mut [Track],
    mut total: usize,
) -> Result<bool, MediaError> {
    let trexes = moov
        .mvex_box
        .as_ref()
        .map(|m| m.trex_boxes.as_slice())
        .unwrap_or_default();
    let frag_tracks: Vec<FragmentTrack> = tracks
        .iter()
        .map(|t| {
            let trex = trexes.iter().find(|x| x.track_id == t.track_id);
            FragmentTrack {
                track_id: t.track_id,
                kind: t.kind,
                default_duration: trex.map_or(0, |x| x.default_sample_duration),
                default_size: trex.map_or(0, |x| x.default_sample_size),
                default_flags: trex.map_or(0, |x| x.default_sample_flags.get()),
            }
        })
        .collect();
    let mut next_dts: Vec<u64> = tracks
        .iter()
        .map(|t| {
            t.samples
                .last()
                .map_or(0, |s| s.dts.saturating_add(u64::from(s.duration)))
        })
        .collect();

    let mut boxes = top_level_boxes(data).peekable();
    while let Some(b) = boxes.next() {
        let Ok(b) = b else { return Ok(true) };
        if !b.is_complete_in(data.len()) {
            return Ok(true);
        }
        if &b.box_type != b"moof" {
            continue;
        }
        let mdat_follows = matches!(
            boxes.peek(),
            Some(Ok(m)) if &m.box_type == b"mdat" && m.is_complete_in(data.len())
        );
        match read_moof(data, &b, &frag_tracks, &mut next_dts) {
            Ok(samples) => {
                total += samples.len();
                if total > MAX_SAMPLES {
                    return Err(MediaError::Unsupported(format!(
                        "more than {MAX_SAMPLES} samples"
                    )));
                }
                for s in samples {
                    tracks[s.track].samples.push(s);
                }
            }
            Err(_) if !mdat_follows => return Ok(true),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Rescales `v` from timescale `from` to `to`, rounding to nearest (halves up).
fn rescale(v: i128, from: u32, to: u32) -> i128 {
    if from == to {
        return v;
    }
    (v * i128::from(to) * 2 + i128::from(from)).div_euclid(2 * i128::from(from))
}

/// Converts every track's samples to our timescales (one list per track, in decode order).
/// Returns them and the duration of the longest track in µs.
fn timeline(tracks: &[Track]) -> Result<(Vec<Vec<IndexedSample>>, i64), MediaError> {
    // Start of each track on the shared presentation timeline, µs.
    let starts: Vec<i128> = tracks
        .iter()
        .map(|t| {
            let first = t.samples.first().map_or(0, |s| s.dts);
            i128::from(first) * MICROS_PER_SECOND / i128::from(t.timescale) + t.empty_edit_us
        })
        .collect();
    let origin = starts.iter().copied().min().unwrap_or(0);

    let mut per_track: Vec<Vec<IndexedSample>> = Vec::with_capacity(tracks.len());
    let mut end_us = 0i128;
    for (t, start) in tracks.iter().zip(starts) {
        let (src, dst) = (t.timescale, t.target_timescale);
        let offset = rescale(start - origin, MICROS_PER_SECOND as u32, dst);
        let base = i128::from(t.samples.first().map_or(0, |s| s.dts));
        let rel = |s: &RawSample| i128::from(s.dts) - base;
        // Presentation starts at the edit's media time, but never shift a frame before 0.
        let min_pts = t
            .samples
            .iter()
            .map(|s| rel(s) + i128::from(s.cts_offset))
            .min()
            .unwrap_or(0);
        let shift = i128::from(t.media_time).clamp(0, min_pts.max(0));

        let mut frames = Vec::with_capacity(t.samples.len());
        for (i, s) in t.samples.iter().enumerate() {
            let dts = offset + rescale(rel(s), src, dst);
            let next_rel = match t.samples.get(i + 1) {
                Some(next) => rel(next),
                None => rel(s) + i128::from(s.duration),
            };
            let next = offset + rescale(next_rel, src, dst);
            let duration = u32::try_from(next - dts).map_err(|_| {
                MediaError::InvalidMp4(format!(
                    "track {}: decode times go backwards or jump at sample {i}",
                    t.track_id
                ))
            })?;
            let pts = offset + rescale(rel(s) + i128::from(s.cts_offset) - shift, src, dst);
            let cts_offset = i32::try_from(pts - dts).map_err(|_| {
                MediaError::InvalidMp4(format!(
                    "track {}: composition offset out of range at sample {i}",
                    t.track_id
                ))
            })?;
            frames.push(IndexedSample {
                track: t.kind,
                dts: i64::try_from(dts).map_err(|_| {
                    MediaError::InvalidMp4(format!("track {}: dts out of range", t.track_id))
                })?,
                duration,
                cts_offset,
                keyframe: s.keyframe,
                range: s.data.start as u64..s.data.end as u64,
            });
        }
        if let Some(last) = frames.last() {
            let end = i128::from(last.dts) + i128::from(last.duration);
            end_us = end_us.max(end * MICROS_PER_SECOND / i128::from(dst));
        }
        per_track.push(frames);
    }

    let duration_us = i64::try_from(end_us)
        .map_err(|_| MediaError::InvalidMp4("duration out of range".into()))?;
    Ok((per_track, duration_us))
}

/// Merges two tracks' samples by decode time (`time` gives a sample's decode time and its
/// timescale; compared across timescales); on equal times the first list's sample (video) comes
/// first.
fn interleave<T>(a: Vec<T>, b: Vec<T>, time: impl Fn(&T) -> (i64, u32)) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => {
                let ((dx, tx), (dy, ty)) = (time(x), time(y));
                i128::from(dx) * i128::from(ty) <= i128::from(dy) * i128::from(tx)
            }
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_a { a.next() } else { b.next() };
        out.extend(next);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::media::VideoCodec;
    use crate::media::codec::tests::Noise;
    use crate::media::fmp4::tests::{demo_path, ffmpeg};

    fn demo() -> Mp4File {
        Mp4File::open(&demo_path()).unwrap()
    }

    type FrameKey = (TrackKind, i64, u32, i32, bool, Bytes);

    /// The fields of a frame that come from the file (not `params`, which is a fresh `Arc`).
    fn key(f: &Frame) -> FrameKey {
        (
            f.track,
            f.dts,
            f.duration,
            f.cts_offset,
            f.keyframe,
            f.data.clone(),
        )
    }

    #[test]
    fn demo_file() {
        let file = demo();
        let p = file.params();
        assert_eq!(p.version, 0);
        assert_eq!(p.codec_list(), "avc1.4D401E,mp4a.40.2");
        let v = p.video.as_ref().unwrap();
        assert_eq!((v.codec, v.width, v.height), (VideoCodec::H264, 640, 360));
        let a = p.audio.as_ref().unwrap();
        assert_eq!((a.sample_rate, a.channels), (48_000, 1));
        assert!(file.skipped_tracks().is_empty());
        assert!(!file.is_fragmented() && !file.is_truncated());
        // 1126 AAC frames of 1024 samples outlast the 24 s of video.
        assert_eq!(file.duration_us(), 1126 * 1024 * 1_000_000 / 48_000);

        let frames = file.frames();
        let video: Vec<&Frame> = frames
            .iter()
            .filter(|f| f.track == TrackKind::Video)
            .collect();
        let audio: Vec<&Frame> = frames
            .iter()
            .filter(|f| f.track == TrackKind::Audio)
            .collect();
        assert_eq!((video.len(), audio.len()), (600, 1126));
        for (i, f) in video.iter().enumerate() {
            assert_eq!(
                (f.dts, f.duration, f.cts_offset),
                (i as i64 * 3600, 3600, 0)
            );
            assert_eq!(f.keyframe, i % 25 == 0, "frame {i}");
            assert_eq!(f.wallclock_us, 0);
            assert!(Arc::ptr_eq(&f.params, file.params_arc()));
            // AVCC: the first NAL length covers the start of the payload.
            assert!(f.data.len() > 4);
        }
        for (i, f) in audio.iter().enumerate() {
            assert_eq!(
                (f.dts, f.duration, f.keyframe),
                (i as i64 * 1024, 1024, true)
            );
        }
        // Interleaved by time.
        let times: Vec<i128> = frames
            .iter()
            .map(|f| i128::from(f.dts) * 1_000_000 / i128::from(p.timescale(f.track)))
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn moov_at_end_and_fragmented_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let demo = demo();
        let expected: Vec<_> = demo.frames_ref().iter().map(key).collect();

        let progressive = dir.path().join("moov_at_end.mp4");
        ffmpeg(&[
            "-i",
            demo_path().to_str().unwrap(),
            "-c",
            "copy",
            progressive.to_str().unwrap(),
        ]);
        let data = std::fs::read(&progressive).unwrap();
        let boxes: Vec<[u8; 4]> = fmp4::top_level_boxes(&data)
            .map(|b| b.unwrap().box_type)
            .collect();
        assert_eq!(boxes.last(), Some(b"moov"));
        let file = Mp4File::open(&progressive).unwrap();
        assert!(
            file.frames_ref()
                .iter()
                .map(key)
                .eq(expected.iter().cloned())
        );
        assert_eq!(file.params(), demo.params());

        let fragmented = dir.path().join("frag.mp4");
        ffmpeg(&[
            "-i",
            demo_path().to_str().unwrap(),
            "-c",
            "copy",
            "-movflags",
            "frag_keyframe+empty_moov",
            fragmented.to_str().unwrap(),
        ]);
        let file = Mp4File::open(&fragmented).unwrap();
        assert!(file.is_fragmented() && !file.is_truncated());
        assert_eq!(file.params(), demo.params());
        let got: Vec<_> = file.frames_ref().iter().map(key).collect();
        assert_eq!(got.len(), expected.len());
        let of_kind = |v: &[FrameKey], kind| {
            v.iter()
                .filter(|k| k.0 == kind)
                .cloned()
                .collect::<Vec<_>>()
        };
        for kind in [TrackKind::Video, TrackKind::Audio] {
            let (g, e) = (of_kind(&got, kind), of_kind(&expected, kind));
            assert_eq!(g.len(), e.len());
            for (i, (g, e)) in g.iter().zip(&e).enumerate() {
                // Same payload, flags and composition; ffmpeg's fragmenter stretches the first
                // video frame by the audio priming (274 ticks at 12.8 kHz = 1927 at 90 kHz),
                // so decode times may differ by that much.
                assert!(g.5 == e.5 && g.3 == e.3 && g.4 == e.4, "{kind:?} frame {i}");
                assert!(
                    (g.1 - e.1).abs() <= 1927,
                    "{kind:?} frame {i}: {} vs {}",
                    g.1,
                    e.1
                );
            }
        }

        // A torn fragmented file keeps the complete fragments.
        let data = Bytes::from(std::fs::read(&fragmented).unwrap());
        let torn = Mp4File::from_bytes(data.slice(..data.len() * 2 / 3)).unwrap();
        assert!(torn.is_truncated());
        let n = torn.frames_ref().len();
        assert!(n > 100 && n < expected.len() * 3 / 4, "{n}");
        assert!(
            torn.frames_ref()
                .iter()
                .map(key)
                .eq(got[..n].iter().cloned())
        );
    }

    #[test]
    fn delayed_track_keeps_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delayed.mp4");
        let demo = demo_path();
        ffmpeg(&[
            "-i",
            demo.to_str().unwrap(),
            "-itsoffset",
            "0.5",
            "-i",
            demo.to_str().unwrap(),
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c",
            "copy",
            "-t",
            "4",
            path.to_str().unwrap(),
        ]);
        let file = Mp4File::open(&path).unwrap();
        let first = |kind| {
            file.frames_ref()
                .iter()
                .find(|f| f.track == kind)
                .unwrap()
                .dts
        };
        assert_eq!(first(TrackKind::Video), 0);
        // 0.5 s at 48 kHz, less the ~1024 samples of priming ffmpeg folds into the empty edit.
        let audio_start = first(TrackKind::Audio);
        assert!(
            (audio_start - 24_000).abs() <= 2048,
            "audio starts at {audio_start}"
        );
    }

    #[test]
    fn unsupported_and_extra_tracks_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let demo = demo_path();
        let two_audio = dir.path().join("two_audio.mp4");
        ffmpeg(&[
            "-i",
            demo.to_str().unwrap(),
            "-map",
            "0",
            "-map",
            "0:a",
            "-c",
            "copy",
            "-t",
            "2",
            two_audio.to_str().unwrap(),
        ]);
        let file = Mp4File::open(&two_audio).unwrap();
        assert_eq!(
            file.skipped_tracks(),
            ["track 3: another Audio track is used"]
        );

        let mpeg4 = dir.path().join("mpeg4.mp4");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x90:rate=5",
            "-t",
            "1",
            "-c:v",
            "mpeg4",
            mpeg4.to_str().unwrap(),
        ]);
        let err = Mp4File::open(&mpeg4).unwrap_err();
        assert!(matches!(err, MediaError::Unsupported(_)), "{err}");
        assert!(err.to_string().contains("mp4v"), "{err}");

        let mixed = dir.path().join("mixed.mp4");
        ffmpeg(&[
            "-i",
            mpeg4.to_str().unwrap(),
            "-i",
            demo.to_str().unwrap(),
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c",
            "copy",
            "-t",
            "1",
            mixed.to_str().unwrap(),
        ]);
        let file = Mp4File::open(&mixed).unwrap();
        assert!(file.params().video.is_none() && file.params().audio.is_some());
        assert_eq!(file.skipped_tracks().len(), 1);
        assert!(file.skipped_tracks()[0].contains("mp4v"));
    }

    #[test]
    fn reading_stops_at_the_cap_whatever_the_reported_size() {
        // Like /proc/self/pagemap, /dev/zero reports 0 bytes and never ends.
        let zero = Path::new("/dev/zero");
        let file = std::fs::File::open(zero).expect("/dev/zero");
        assert_eq!(file.metadata().expect("meta").len(), 0);
        let err = Mp4File::read(file, zero, 1 << 20).expect_err("over the cap");
        assert!(err.to_string().contains("1048576-byte limit"), "{err}");
    }

    #[test]
    fn truncated_or_garbage_files_are_errors() {
        let data = Bytes::from(std::fs::read(demo_path()).unwrap());
        for cut in [
            0,
            7,
            8,
            31,
            32,
            40,
            1000,
            14_952,
            14_961,
            14_970,
            500_000,
            data.len() - 1,
        ] {
            assert!(
                Mp4File::from_bytes(data.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        let mut noise = Noise::new(7);
        for len in [0, 8, 64, 4096, 100_000] {
            assert!(Mp4File::from_bytes(Bytes::from(noise.bytes(len))).is_err());
        }
        // Corrupt bytes inside the moov: any outcome but a panic.
        for _ in 0..300 {
            let mut c = data[..20_000].to_vec();
            let at = 32 + (noise.next_u64() as usize) % 14_921;
            c[at] ^= (noise.next_u64() as u8) | 1;
            let _ = Mp4File::from_bytes(Bytes::from(c));
        }
        let missing = Mp4File::open(Path::new("/nonexistent/x.mp4")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/x.mp4"),
            "{missing}"
        );
    }
}
