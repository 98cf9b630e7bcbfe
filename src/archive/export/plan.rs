//! Planning an export: reads the headers of the segments overlapping the range (init segment
//! and `moof` boxes of our fragmented segments, the `moov` of imported progressive files, by
//! ranged reads through [`Storage`], never the sample data) and turns their samples into the
//! output's sample tables, its `ftyp` + `moov` + `mdat` header and the map of payload pieces that
//! [`ExportPlan`] streams from. The timeline rules (frame-accurate cut, collapsed gaps, the end at
//! a codec change) live in [`Assembler`], which does no I/O.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::{ExportError, ExportPlan, Piece, Source, StorageFor};
use crate::archive::storage::{Storage, StorageError};
use crate::db::segments::SegmentRow;
use crate::media::fmp4::{is_fragmented_init, parse_init, parse_moof};
use crate::media::mp4file::index_progressive;
use crate::media::progressive::{Presentation, TrackTables, rescale, write_head};
use crate::media::{StreamParams, TrackKind};

/// Segments whose headers are read concurrently while planning (hides storage latency, S3
/// especially, while keeping only a few segments' sample lists in memory).
const SEGMENT_READS_IN_FLIGHT: usize = 4;

/// First read of a segment and of each fragment header: enough for `ftyp`+`moov` and a `moof`
/// of about a second of video and audio. Later reads follow the last `moof`'s size.
const HEADER_READ: u64 = 4096;

/// Largest `moov` read while planning: far above the tables of 24 h of video with audio (~30
/// MB), so only a hostile file is refused.
const MAX_MOOV_BYTES: u64 = 256 * 1024 * 1024;

const MICROS: i64 = 1_000_000;

/// Plans the export of `[start_us, end_us)` from `rows` (see [`segments_in_range`]).
pub async fn plan(
    rows: &[SegmentRow],
    start_us: i64,
    end_us: i64,
    storage_for: &StorageFor,
) -> Result<ExportPlan, ExportError> {
    let mut sources = Vec::with_capacity(rows.len());
    for row in rows {
        let storage = storage_for(row).ok_or_else(|| ExportError::NoStorage {
            segment: row.id,
            storage: row.storage.clone(),
        })?;
        sources.push(Source {
            segment: row.id,
            storage,
            key: row.storage_key.clone(),
        });
    }
    let mut asm = Assembler::new(start_us, end_us);
    let jobs: Vec<ReadJob> = rows
        .iter()
        .zip(&sources)
        .map(|(row, src)| ReadJob {
            storage: src.storage.clone(),
            key: src.key.clone(),
            limit: u64::try_from(row.bytes).unwrap_or(0),
            segment: row.id,
        })
        .collect();
    // A named async fn over owned jobs: closures here trip the compiler's `Send` inference.
    let mut reads = futures::stream::iter(jobs)
        .map(read_job)
        .buffered(SEGMENT_READS_IN_FLIGHT);
    let mut index = 0u32;
    while let Some(seg) = reads.next().await {
        let row = &rows[index as usize];
        let seg = match seg {
            Ok(seg) => seg,
            // Retention removed it since the query: treat it as a gap.
            Err(ExportError::Storage {
                source: StorageError::NotFound { .. },
                ..
            }) => {
                tracing::warn!(segment = row.id, "segment vanished during an export plan");
                index += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if !asm.add_segment(index, row.start_us, &seg)? {
            break;
        }
        index += 1;
    }
    asm.finish(sources)
}

/// One segment's headers to read while planning.
struct ReadJob {
    storage: Arc<dyn Storage>,
    key: String,
    limit: u64,
    segment: i64,
}

async fn read_job(job: ReadJob) -> Result<SegmentSamples, ExportError> {
    read_segment(job.storage.as_ref(), &job.key, job.limit, job.segment).await
}

/// The samples of one segment file, located by their byte ranges.
#[derive(Debug, Clone)]
struct SegmentSamples {
    params: StreamParams,
    /// In file order (per fragment: the video run, then the audio run).
    samples: Vec<SegSample>,
}

/// A sample of a segment: times in the track's ticks from the segment's media time 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegSample {
    track: TrackKind,
    dts: i64,
    duration: u32,
    cts: i32,
    keyframe: bool,
    /// Offset in the segment file.
    offset: u64,
    size: u32,
}

/// Ranged reads of one object with a small read-ahead buffer.
struct RangedReader<'a> {
    storage: &'a dyn Storage,
    key: &'a str,
    segment: i64,
    /// Bytes usable: the row's size (a recording segment may hold a fragment being written after
    /// it, which the row does not count yet).
    limit: u64,
    buf: Bytes,
    buf_at: u64,
    read_ahead: u64,
}

impl RangedReader<'_> {
    /// Bytes `[pos, pos + len)` (which must lie within the limit).
    async fn get(&mut self, pos: u64, len: u64) -> Result<Bytes, ExportError> {
        if pos >= self.buf_at && pos + len <= self.buf_at + self.buf.len() as u64 {
            let at = (pos - self.buf_at) as usize;
            return Ok(self.buf.slice(at..at + len as usize));
        }
        let end = (pos + len.max(self.read_ahead)).min(self.limit);
        let data = self
            .storage
            .read(self.key, Some(pos..end))
            .await
            .map_err(|source| ExportError::Storage {
                segment: self.segment,
                source,
            })?;
        if (data.len() as u64) < len {
            return Err(self.unsupported(format!("short read at {pos}")));
        }
        self.buf = data;
        self.buf_at = pos;
        Ok(self.buf.slice(..len as usize))
    }

    fn unsupported(&self, reason: String) -> ExportError {
        ExportError::Unsupported {
            segment: self.segment,
            reason,
        }
    }
}

/// A box header read from a ranged reader: type, header length, total size.
pub(crate) fn box_header(b: &[u8]) -> Option<([u8; 4], u64, u64)> {
    let size32 = u32::from_be_bytes(b.get(0..4)?.try_into().ok()?);
    let box_type: [u8; 4] = b.get(4..8)?.try_into().ok()?;
    match size32 {
        1 => Some((
            box_type,
            16,
            u64::from_be_bytes(b.get(8..16)?.try_into().ok()?),
        )),
        0 => None, // "to the end of the file": never in our segments
        n => Some((box_type, 8, u64::from(n))),
    }
}

/// Reads the init and every complete fragment header of a segment we recorded, up to `limit`.
async fn read_segment(
    storage: &dyn Storage,
    key: &str,
    limit: u64,
    segment: i64,
) -> Result<SegmentSamples, ExportError> {
    let mut r = RangedReader {
        storage,
        key,
        segment,
        limit,
        buf: Bytes::new(),
        buf_at: 0,
        read_ahead: HEADER_READ,
    };
    let media = |source| ExportError::Media { segment, source };
    let mut params: Option<StreamParams> = None;
    let mut samples = Vec::new();
    let mut pos = 0u64;
    while pos + 8 <= limit {
        let head = r.get(pos, (limit - pos).min(16)).await?;
        let Some((box_type, header_len, size)) = box_header(&head) else {
            return Err(r.unsupported(format!("unreadable box header at {pos}")));
        };
        if size < header_len || pos + size > limit {
            // A torn or still-growing tail: the complete fragments before it are used.
            break;
        }
        let end = pos + size;
        match &box_type {
            b"moov" => {
                if size > MAX_MOOV_BYTES {
                    return Err(r.unsupported(format!("a moov box of {size} bytes")));
                }
                let moov = r.get(pos, size).await?;
                if !is_fragmented_init(&moov) {
                    // A progressive file (an imported Go segment): its sample tables say where
                    // every sample is, wherever the moov lies.
                    let (params, indexed) = index_progressive(&moov, limit).map_err(media)?;
                    let samples = indexed
                        .into_iter()
                        .map(|s| {
                            Ok(SegSample {
                                track: s.track,
                                dts: s.dts,
                                duration: s.duration,
                                cts: s.cts_offset,
                                keyframe: s.keyframe,
                                offset: s.range.start,
                                size: u32::try_from(s.range.end - s.range.start)
                                    .map_err(|_| r.unsupported("sample over 4 GiB".into()))?,
                            })
                        })
                        .collect::<Result<Vec<_>, ExportError>>()?;
                    return Ok(SegmentSamples { params, samples });
                }
                let init = r.get(0, end).await?;
                params = Some(parse_init(&init).map_err(media)?);
            }
            b"moof" => {
                let Some(params) = &params else {
                    return Err(r.unsupported("moof before moov".into()));
                };
                // The moof and the header of the mdat that must follow it.
                let with_mdat = r.get(pos, size + (limit - end).min(16)).await?;
                let Some((mdat_type, _, mdat_size)) =
                    with_mdat.get(size as usize..).and_then(box_header)
                else {
                    break;
                };
                if &mdat_type != b"mdat" || end + mdat_size > limit {
                    break;
                }
                let moof = &with_mdat[..size as usize];
                for s in parse_moof(params, moof, size + mdat_size).map_err(media)? {
                    samples.push(SegSample {
                        track: s.track,
                        dts: s.dts,
                        duration: s.duration,
                        cts: s.cts_offset,
                        keyframe: s.keyframe,
                        offset: pos + s.data.start,
                        size: u32::try_from(s.data.end - s.data.start)
                            .map_err(|_| r.unsupported("sample over 4 GiB".into()))?,
                    });
                }
                // Fragments are alike: read the next header in one go.
                r.read_ahead = (size + 16 + 512).max(HEADER_READ / 4);
                pos = end + mdat_size;
                continue;
            }
            // A progressive file's media data before its moov (as the Go muxer writes): skipped.
            _ => {}
        }
        pos = end;
    }
    let params = params.ok_or_else(|| r.unsupported("no moov box".into()))?;
    Ok(SegmentSamples { params, samples })
}

/// Turns segments' samples into sample tables and payload pieces. Pure: no I/O, so the timeline
/// arithmetic is unit-tested with synthetic segments.
#[derive(Debug)]
struct Assembler {
    start_us: i64,
    end_us: i64,
    /// Codec setup of the first segment used; the export stops at a segment with another.
    params: Option<StreamParams>,
    main: TrackKind,
    /// Ticks per second of the main track: the movie timescale and the timeline unit.
    movie_ts: u32,
    video: TrackTables,
    audio: TrackTables,
    /// Timeline position (movie ticks) of the next segment's media time 0: right after the
    /// previous segment's media, so gaps collapse. `None` until a segment was used.
    next_base: Option<i64>,
    /// Timeline position presented first (movie ticks; 0 is `start_us`).
    start_tl: Option<i64>,
    /// Timeline position where the presentation ends (movie ticks).
    end_tl: i64,
    /// Wall clock of the presentation's end (µs).
    end_wall_us: i64,
    payload_len: u64,
    pieces: Vec<Piece>,
    /// Track, source and end offset of the last sample appended (whether a chunk continues).
    last: Option<(TrackKind, u32, u64)>,
}

/// Whether `a_ticks / a_ts < b_ticks / b_ts` (exact).
fn earlier(a_ticks: i64, a_ts: u32, b_ticks: i64, b_ts: u32) -> bool {
    i128::from(a_ticks) * i128::from(b_ts) < i128::from(b_ticks) * i128::from(a_ts)
}

impl Assembler {
    fn new(start_us: i64, end_us: i64) -> Assembler {
        Assembler {
            start_us,
            end_us,
            params: None,
            main: TrackKind::Video,
            movie_ts: 1,
            video: TrackTables::new(TrackKind::Video, 1),
            audio: TrackTables::new(TrackKind::Audio, 1),
            next_base: None,
            start_tl: None,
            end_tl: 0,
            end_wall_us: start_us,
            payload_len: 0,
            pieces: Vec::new(),
            last: None,
        }
    }

    /// Adds the samples of segment `source` (which starts at `seg_start_us` on the wall clock).
    /// Returns `false` when the segment has another codec setup: the export ends before it.
    fn add_segment(
        &mut self,
        source: u32,
        seg_start_us: i64,
        seg: &SegmentSamples,
    ) -> Result<bool, ExportError> {
        match &self.params {
            Some(p) if !p.same_codecs(&seg.params) => return Ok(false),
            Some(_) => {}
            None => {
                let p = &seg.params;
                self.main = if p.video.is_some() {
                    TrackKind::Video
                } else {
                    TrackKind::Audio
                };
                self.movie_ts = p.timescale(self.main);
                self.video = TrackTables::new(TrackKind::Video, p.timescale(TrackKind::Video));
                self.audio = TrackTables::new(TrackKind::Audio, p.timescale(TrackKind::Audio));
                self.params = Some(p.clone());
            }
        }
        let main = self.main;
        let movie_ts = self.movie_ts;
        let ts = |t: TrackKind| seg.params.timescale(t);
        // Wall clock of `start`/`end` relative to this segment's media time 0.
        let start_rel_us = self.start_us - seg_start_us;
        let end_rel_us = self.end_us - seg_start_us;
        let before_end = |s: &SegSample| earlier(s.dts, ts(s.track), end_rel_us, MICROS as u32);

        // The first segment used starts at the last keyframe presented at or before `start`.
        let mut first_keep: Option<(i64, usize)> = None;
        if self.start_tl.is_none() {
            let keys = seg
                .samples
                .iter()
                .enumerate()
                .filter(|(_, s)| s.track == main && s.keyframe);
            let mut chosen = None;
            for (i, s) in keys {
                let pts = s.dts + i64::from(s.cts);
                if chosen.is_none() || !earlier(start_rel_us, MICROS as u32, pts, movie_ts) {
                    chosen = Some((i, s));
                }
                if earlier(start_rel_us, MICROS as u32, pts, movie_ts) {
                    break;
                }
            }
            let Some((i, key)) = chosen else {
                // No keyframe at all: nothing here can be decoded.
                return Ok(true);
            };
            first_keep = Some((key.dts, i));
        }
        let base = self
            .next_base
            .unwrap_or_else(|| rescale(seg_start_us - self.start_us, MICROS, i64::from(movie_ts)));
        if let Some((key_dts, key_index)) = first_keep {
            let key = &seg.samples[key_index];
            self.start_tl = Some((base + key_dts + i64::from(key.cts)).max(0));
        }
        let main_duration: i64 = seg
            .samples
            .iter()
            .filter(|s| s.track == main)
            .map(|s| i64::from(s.duration))
            .sum();

        for (i, s) in seg.samples.iter().enumerate() {
            if let Some((key_dts, key_index)) = first_keep {
                let keep = if s.track == main {
                    i >= key_index
                } else {
                    !earlier(s.dts, ts(s.track), key_dts, movie_ts)
                };
                if !keep {
                    continue;
                }
            }
            if !before_end(s) {
                continue;
            }
            let table = match s.track {
                TrackKind::Video => &mut self.video,
                TrackKind::Audio => &mut self.audio,
            };
            if self.last != Some((s.track, source, s.offset)) {
                table.start_chunk(self.payload_len);
            }
            let track_base = rescale(base, i64::from(movie_ts), i64::from(ts(s.track)));
            table
                .push(
                    track_base + s.dts,
                    s.duration,
                    i64::from(s.cts),
                    s.keyframe,
                    s.size,
                )
                .map_err(ExportError::Mux)?;
            let size = u64::from(s.size);
            match self.pieces.last_mut() {
                Some(p) if p.source == source && p.src + p.len == s.offset => p.len += size,
                _ => self.pieces.push(Piece {
                    out: self.payload_len,
                    source,
                    src: s.offset,
                    len: size,
                }),
            }
            self.payload_len += size;
            self.last = Some((s.track, source, s.offset + size));
        }
        // The presentation ends at `end`, or where the main track's media ends if sooner.
        let main_table = match main {
            TrackKind::Video => &self.video,
            TrackKind::Audio => &self.audio,
        };
        if let Some(media_end) = main_table.timeline_end() {
            let end_at = base + rescale(end_rel_us, MICROS, i64::from(movie_ts));
            self.end_tl = end_at.min(media_end);
            self.end_wall_us =
                seg_start_us + rescale(self.end_tl - base, i64::from(movie_ts), MICROS);
        }
        self.next_base = Some(base + main_duration);
        Ok(true)
    }

    /// Encodes the header; the plan reads the payload from `sources`.
    fn finish(self, sources: Vec<Source>) -> Result<ExportPlan, ExportError> {
        let (Some(params), Some(start_tl)) = (self.params, self.start_tl) else {
            return Err(ExportError::Empty);
        };
        if self.end_tl <= start_tl || self.payload_len == 0 {
            return Err(ExportError::Empty);
        }
        let p = Presentation {
            movie_timescale: self.movie_ts,
            start: start_tl,
            duration: (self.end_tl - start_tl) as u64,
        };
        let head = write_head(&params, vec![self.video, self.audio], &p, self.payload_len)
            .map_err(ExportError::Mux)?;
        let movie_ts = i64::from(self.movie_ts);
        let used: std::collections::BTreeSet<u32> = self.pieces.iter().map(|p| p.source).collect();
        Ok(ExportPlan {
            head,
            pieces: self.pieces,
            sources,
            payload_len: self.payload_len,
            start_us: self.start_us + rescale(start_tl, movie_ts, MICROS),
            end_us: self.end_wall_us,
            duration_us: rescale(p.duration as i64, movie_ts, MICROS),
            segments: used.len(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::archive::storage::fs::FsStorage;
    use crate::media::codec::tests::{DEMO_AVCC, LC_48K_MONO};
    use crate::media::codec::{aac_params, h264_params};

    const S: i64 = 1_000_000;
    /// Wall clock of the first test segment.
    const W0: i64 = 1_800_000_000 * S;

    fn av() -> StreamParams {
        StreamParams {
            version: 0,
            video: Some(h264_params(Bytes::from_static(DEMO_AVCC)).unwrap()),
            audio: Some(aac_params(Bytes::from_static(LC_48K_MONO)).unwrap()),
        }
    }

    /// A segment as the recorder writes one: 1 s fragments, each the second's 25 video frames
    /// (100 bytes, keyframe first) then its 48 kHz AAC frames (10 bytes), 1000 bytes of `moof`
    /// between fragments.
    fn segment(params: &StreamParams, seconds: i64) -> SegmentSamples {
        let mut samples = Vec::new();
        let mut offset = 1000;
        for f in 0..seconds {
            offset += 1000;
            for i in 0..25 {
                samples.push(SegSample {
                    track: TrackKind::Video,
                    dts: (f * 25 + i) * 3600,
                    duration: 3600,
                    cts: 0,
                    keyframe: i == 0,
                    offset,
                    size: 100,
                });
                offset += 100;
            }
            if params.audio.is_none() {
                continue;
            }
            for k in (0..).take_while(|k| k * 1024 < (f + 1) * 48_000) {
                if k * 1024 < f * 48_000 {
                    continue;
                }
                samples.push(SegSample {
                    track: TrackKind::Audio,
                    dts: k * 1024,
                    duration: 1024,
                    cts: 0,
                    keyframe: true,
                    offset,
                    size: 10,
                });
                offset += 10;
            }
        }
        SegmentSamples {
            params: params.clone(),
            samples,
        }
    }

    fn sources(n: usize) -> Vec<Source> {
        (0..n)
            .map(|i| Source {
                segment: i as i64,
                storage: Arc::new(FsStorage),
                key: format!("/nonexistent/{i}"),
            })
            .collect()
    }

    fn presentation(a: &Assembler) -> Presentation {
        let start = a.start_tl.unwrap();
        Presentation {
            movie_timescale: a.movie_ts,
            start,
            duration: (a.end_tl - start) as u64,
        }
    }

    fn edit(edit_duration: u64, media_time: i64) -> (u64, i64) {
        (edit_duration, media_time)
    }

    fn edits(t: &TrackTables, p: &Presentation) -> Vec<(u64, i64)> {
        t.edit_list(p)
            .iter()
            .map(|e| (e.edit_duration, e.media_time))
            .collect()
    }

    #[test]
    fn range_across_a_boundary_starts_at_the_keyframe_and_cuts_exactly() {
        let p = av();
        let (seg0, seg1) = (segment(&p, 4), segment(&p, 4));
        let mut a = Assembler::new(W0 + 2_500_000, W0 + 4 * S + 1_200_000);
        assert!(a.add_segment(0, W0, &seg0).unwrap());
        assert!(a.add_segment(1, W0 + 4 * S, &seg1).unwrap());
        assert_eq!(a.start_tl, Some(0));
        // The keyframe at 2.0 s is 0.5 s before the start; 1.5 s + 1.2 s are presented.
        assert_eq!(a.video.origin(), Some(-45_000));
        let pr = presentation(&a);
        assert_eq!(pr.duration, 243_000);
        assert_eq!(edits(&a.video, &pr), vec![edit(243_000, 45_000)]);
        // 50 frames from the keyframe, 30 before 1.2 s of the next segment.
        assert_eq!(a.video.sample_count(), 80);
        // Audio from the keyframe: frames 94..=187 (2.005 s..4 s), then 0..=56 (< 1.2 s).
        assert_eq!(a.audio.sample_count(), 94 + 57);
        assert_eq!(a.audio.origin(), Some(-120_000 + 94 * 1024));
        assert_eq!(
            edits(&a.audio, &pr),
            vec![edit(243_000, 120_000 - 94 * 1024)]
        );
        // One piece per whole fragment; the cut fragment's video and audio runs are apart.
        let pieces: Vec<(u32, u64)> = a.pieces.iter().map(|p| (p.source, p.len)).collect();
        let full = 2500 + 470;
        assert_eq!(
            pieces,
            vec![
                (0, full),
                (0, 2500 + 470),
                (1, 2500 + 470),
                (1, 500),
                (1, 100)
            ]
        );
        assert_eq!(a.payload_len, 80 * 100 + 151 * 10);
        assert_eq!(a.pieces.iter().map(|p| p.len).sum::<u64>(), a.payload_len);

        let plan = a.finish(sources(2)).unwrap();
        assert_eq!(plan.start_us, W0 + 2_500_000);
        assert_eq!(plan.end_us, W0 + 5_200_000);
        assert_eq!(plan.duration_us, 2_700_000);
        assert_eq!(plan.segments, 2);
        assert_eq!(plan.len(), plan.head_len() + 80 * 100 + 151 * 10);
    }

    #[test]
    fn gaps_collapse_and_timestamps_stay_continuous() {
        let p = av();
        let seg = segment(&p, 4);
        let w1 = W0 + 14 * S; // 10 s after the first segment ends
        let mut a = Assembler::new(W0 + 3_500_000, w1 + 2 * S);
        assert!(a.add_segment(0, W0, &seg).unwrap());
        assert!(a.add_segment(1, w1, &seg).unwrap());
        // 0.5 s of the first segment (from its 3 s keyframe, 0.5 s hidden), then 2 s.
        let pr = presentation(&a);
        assert_eq!((pr.start, pr.duration), (0, 225_000));
        assert_eq!(a.video.media_duration(), 75 * 3600, "no hole in the video");
        assert_eq!(a.video.timeline_end(), Some(-45_000 + 75 * 3600));
        let plan = a.finish(sources(2)).unwrap();
        assert_eq!((plan.start_us, plan.end_us), (W0 + 3_500_000, w1 + 2 * S));
        assert_eq!(plan.duration_us, 2_500_000);
    }

    #[test]
    fn a_codec_change_ends_the_export() {
        let p = av();
        let video_only = StreamParams {
            audio: None,
            ..p.clone()
        };
        let mut a = Assembler::new(W0 + S, W0 + 8 * S);
        assert!(a.add_segment(0, W0, &segment(&p, 4)).unwrap());
        assert!(
            !a.add_segment(1, W0 + 4 * S, &segment(&video_only, 4))
                .unwrap()
        );
        let plan = a.finish(sources(2)).unwrap();
        assert_eq!((plan.end_us, plan.duration_us), (W0 + 4 * S, 3 * S));
        assert_eq!(plan.segments, 1);
    }

    #[test]
    fn a_start_before_the_recording_begins_at_its_first_frame() {
        let p = av();
        let mut a = Assembler::new(W0 - 5 * S, W0 + S);
        assert!(a.add_segment(0, W0, &segment(&p, 4)).unwrap());
        let pr = presentation(&a);
        assert_eq!((pr.start, pr.duration), (450_000, 90_000));
        assert_eq!(edits(&a.video, &pr), vec![edit(90_000, 0)]);
        let plan = a.finish(sources(1)).unwrap();
        assert_eq!((plan.start_us, plan.end_us), (W0, W0 + S));
    }

    #[test]
    fn nothing_usable_is_empty() {
        let a = Assembler::new(W0, W0 + S);
        assert!(matches!(a.finish(sources(0)), Err(ExportError::Empty)));
        // A segment without keyframes cannot start an export.
        let mut seg = segment(&av(), 2);
        for s in &mut seg.samples {
            s.keyframe = s.track == TrackKind::Audio;
        }
        let mut a = Assembler::new(W0, W0 + S);
        assert!(a.add_segment(0, W0, &seg).unwrap());
        assert!(matches!(a.finish(sources(1)), Err(ExportError::Empty)));
    }

    fn av_frames(params: &Arc<StreamParams>, from: i64, seconds: i64) -> Vec<crate::media::Frame> {
        let mut frames = Vec::new();
        for i in from * 25..(from + seconds) * 25 {
            frames.push(crate::media::Frame {
                track: TrackKind::Video,
                dts: i * 3600,
                duration: 3600,
                cts_offset: 0,
                keyframe: i % 25 == 0,
                wallclock_us: 0,
                data: Bytes::from(vec![i as u8; 50 + (i % 7) as usize]),
                params: params.clone(),
            });
        }
        let first_audio = (from * 48_000 + 1023) / 1024;
        let end_audio = ((from + seconds) * 48_000 + 1023) / 1024;
        for k in first_audio..end_audio {
            frames.push(crate::media::Frame {
                track: TrackKind::Audio,
                dts: k * 1024,
                duration: 1024,
                cts_offset: 0,
                keyframe: true,
                wallclock_us: 0,
                data: Bytes::from(vec![0xa0; 8]),
                params: params.clone(),
            });
        }
        frames
    }

    #[tokio::test]
    async fn segment_headers_are_read_with_ranged_reads() {
        use crate::media::fmp4::{FragmentWriter, init_segment, parse_fragment};
        let params = Arc::new(av());
        let mut file = init_segment(&params).unwrap().to_vec();
        let mut w = FragmentWriter::new();
        let mut fragments = Vec::new();
        for f in 0..3 {
            let start = file.len();
            file.extend_from_slice(&w.write(&params, &av_frames(&params, f, 1)).unwrap());
            fragments.push(start..file.len());
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.mp4");
        // A torn fourth fragment after the three complete ones.
        let torn = w.write(&params, &av_frames(&params, 3, 1)).unwrap();
        let mut on_disk = file.clone();
        on_disk.extend_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(&path, &on_disk).unwrap();
        let key = path.to_str().unwrap();

        for limit in [file.len() as u64, on_disk.len() as u64] {
            let seg = read_segment(&FsStorage, key, limit, 7).await.unwrap();
            assert_eq!(seg.params, *params);
            let expected: Vec<crate::media::Frame> = fragments
                .iter()
                .flat_map(|r| parse_fragment(&params, &file[r.clone()]).unwrap())
                .collect();
            assert_eq!(seg.samples.len(), expected.len());
            for (s, f) in seg.samples.iter().zip(&expected) {
                assert_eq!(
                    (s.track, s.dts, s.duration, s.cts, s.keyframe),
                    (f.track, f.dts, f.duration, f.cts_offset, f.keyframe)
                );
                let at = s.offset as usize;
                assert_eq!(&file[at..at + s.size as usize], &f.data[..]);
            }
        }
        // The row's size bounds what is read: a limit inside the second fragment keeps one.
        let seg = read_segment(&FsStorage, key, fragments[1].end as u64 - 1, 7)
            .await
            .unwrap();
        assert_eq!(seg.samples.len(), 25 + 47);

        // Media data without a moov is refused; a missing file is NotFound.
        let prog = dir.path().join("prog.mp4");
        let mut data = vec![0, 0, 0, 16];
        data.extend_from_slice(b"mdat");
        data.extend_from_slice(&[0; 8]);
        std::fs::write(&prog, &data).unwrap();
        let err = read_segment(&FsStorage, prog.to_str().unwrap(), 16, 8)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ExportError::Unsupported { segment: 8, .. }),
            "{err}"
        );
        let err = read_segment(&FsStorage, "/nonexistent.mp4", 100, 9)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ExportError::Storage {
                    source: StorageError::NotFound { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    /// A progressive file (the demo clip, and the same with its moov moved behind a 64-bit mdat
    /// as the Go muxer writes) is indexed from its moov alone: the samples, times and bytes of
    /// every frame `Mp4File` reads from the whole file.
    #[tokio::test]
    async fn progressive_files_are_indexed_from_their_moov() {
        use crate::media::mp4file::Mp4File;
        let demo = std::fs::read("assets/demo.mp4").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.mp4");
        std::fs::write(&path, &demo).unwrap();
        let clip = Mp4File::open(&path).unwrap();
        let seg = read_segment(&FsStorage, path.to_str().unwrap(), demo.len() as u64, 3)
            .await
            .unwrap();
        assert!(seg.params.same_codecs(clip.params()));
        assert_eq!(seg.samples.len(), clip.frames_ref().len());
        for (s, f) in seg.samples.iter().zip(clip.frames_ref()) {
            assert_eq!(
                (s.track, s.dts, s.duration, s.cts, s.keyframe),
                (f.track, f.dts, f.duration, f.cts_offset, f.keyframe)
            );
            let at = s.offset as usize;
            assert_eq!(&demo[at..at + s.size as usize], &f.data[..]);
        }
    }
}
