//! Media fragments: writing `moof`+`mdat` and reading samples back out of a `moof`.

use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use shiguredo_mp4::Decode;
use shiguredo_mp4::boxes::MoofBox;

use super::{
    BoxHeader, NON_SYNC_BIT, SAMPLE_FLAGS_NON_SYNC, SAMPLE_FLAGS_SYNC, top_level_boxes, track_id,
};
use crate::media::{Frame, MediaError, StreamParams, TrackKind};

/// `tfhd` flags: default-base-is-moof (sample data offsets are relative to the `moof` start).
const TFHD_DEFAULT_BASE_IS_MOOF: u32 = 0x02_0000;
/// `trun` flags: data offset + per-sample duration, size, flags and composition offset.
const TRUN_FLAGS: u32 = 0x00_0F01;

/// Sizes of the fixed parts of the `moof` we write.
const MFHD_SIZE: usize = 16;
const TFHD_SIZE: usize = 16;
const TFDT_V1_SIZE: usize = 20;
const TRUN_HEADER_SIZE: usize = 20;
const TRUN_SAMPLE_SIZE: usize = 16;

/// Writes `moof`+`mdat` fragments; holds the `mfhd` sequence number (1, 2, … per writer).
#[derive(Debug, Default)]
pub struct FragmentWriter {
    /// Sequence number of the last fragment written (0 before the first).
    sequence_number: u32,
}

impl FragmentWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sequence number the next fragment will carry.
    pub fn next_sequence_number(&self) -> u32 {
        self.sequence_number.wrapping_add(1)
    }

    /// Writes one fragment holding `frames`.
    ///
    /// Frames may be interleaved across tracks; within a track they keep their order. Each
    /// track's `tfdt` is its first frame's `dts` (which must be ≥ 0); later samples of the track
    /// are placed by the durations, so `dts[i+1]` should equal `dts[i] + duration[i]` within
    /// one fragment (gaps belong between fragments). Only `params` decides track ids; the
    /// frames' own `params` are not consulted.
    pub fn write(&mut self, params: &StreamParams, frames: &[Frame]) -> Result<Bytes, MediaError> {
        if frames.is_empty() {
            return Err(MediaError::Mux("fragment without frames".into()));
        }
        // (track id, kind, frames of that kind) in track-id order; no allocation (this runs for
        // every frame of every live viewer).
        let mut tracks = [(0u32, TrackKind::Video, 0usize); 2];
        let mut n_tracks = 0;
        for kind in [TrackKind::Video, TrackKind::Audio] {
            let count = frames.iter().filter(|f| f.track == kind).count();
            if count == 0 {
                continue;
            }
            let id = track_id(params, kind).ok_or_else(|| {
                MediaError::Mux(format!(
                    "{kind:?} frame but the stream has no {kind:?} track"
                ))
            })?;
            tracks[n_tracks] = (id, kind, count);
            n_tracks += 1;
        }
        let tracks = &mut tracks[..n_tracks];
        tracks.sort_by_key(|(id, _, _)| *id);
        let of_kind = |kind: TrackKind| frames.iter().filter(move |f| f.track == kind);

        let moof_size = 8
            + MFHD_SIZE
            + tracks
                .iter()
                .map(|(_, _, count)| {
                    8 + TFHD_SIZE + TFDT_V1_SIZE + TRUN_HEADER_SIZE + TRUN_SAMPLE_SIZE * count
                })
                .sum::<usize>();
        let payload_size: usize = frames.iter().map(|f| f.data.len()).sum();
        let mdat_header_size = if payload_size + 8 > u32::MAX as usize {
            16
        } else {
            8
        };

        let sequence_number = self.next_sequence_number();
        let mut out = BytesMut::with_capacity(moof_size + mdat_header_size + payload_size);
        put_box_header(&mut out, moof_size, b"moof")?;
        put_box_header(&mut out, MFHD_SIZE, b"mfhd")?;
        out.put_u32(0); // version 0, flags 0
        out.put_u32(sequence_number);

        let mut data_offset = moof_size + mdat_header_size;
        for &(id, kind, count) in tracks.iter() {
            let trun_size = TRUN_HEADER_SIZE + TRUN_SAMPLE_SIZE * count;
            put_box_header(&mut out, 8 + TFHD_SIZE + TFDT_V1_SIZE + trun_size, b"traf")?;

            put_box_header(&mut out, TFHD_SIZE, b"tfhd")?;
            out.put_u32(TFHD_DEFAULT_BASE_IS_MOOF); // version 0
            out.put_u32(id);

            let base_dts = of_kind(kind).next().map_or(0, |f| f.dts);
            let base_dts = u64::try_from(base_dts)
                .map_err(|_| MediaError::Mux(format!("negative dts {base_dts}")))?;
            put_box_header(&mut out, TFDT_V1_SIZE, b"tfdt")?;
            out.put_u32(1 << 24); // version 1
            out.put_u64(base_dts);

            put_box_header(&mut out, trun_size, b"trun")?;
            out.put_u32((1 << 24) | TRUN_FLAGS); // version 1: signed composition offsets
            out.put_u32(count as u32);
            out.put_i32(i32::try_from(data_offset).map_err(|_| {
                MediaError::Mux(format!(
                    "fragment too large ({data_offset} bytes before data)"
                ))
            })?);
            for f in of_kind(kind) {
                let size = u32::try_from(f.data.len()).map_err(|_| {
                    MediaError::Mux(format!("sample of {} bytes too large", f.data.len()))
                })?;
                out.put_u32(f.duration);
                out.put_u32(size);
                out.put_u32(if f.keyframe {
                    SAMPLE_FLAGS_SYNC
                } else {
                    SAMPLE_FLAGS_NON_SYNC
                });
                out.put_i32(f.cts_offset);
                data_offset += f.data.len();
            }
        }
        debug_assert_eq!(out.len(), moof_size);

        if mdat_header_size == 16 {
            out.put_u32(1);
            out.put_slice(b"mdat");
            out.put_u64((payload_size + 16) as u64);
        } else {
            put_box_header(&mut out, payload_size + 8, b"mdat")?;
        }
        for &(_, kind, _) in tracks.iter() {
            for f in of_kind(kind) {
                out.put_slice(&f.data);
            }
        }
        self.sequence_number = sequence_number;
        Ok(out.freeze())
    }
}

fn put_box_header(out: &mut BytesMut, size: usize, box_type: &[u8; 4]) -> Result<(), MediaError> {
    let size = u32::try_from(size).map_err(|_| {
        MediaError::Mux(format!(
            "{} box of {size} bytes too large",
            String::from_utf8_lossy(box_type)
        ))
    })?;
    out.put_u32(size);
    out.put_slice(box_type);
    Ok(())
}

/// Per-track information needed to read fragments: id, kind and the `trex` defaults.
#[derive(Debug, Clone, Copy)]
pub(in crate::media) struct FragmentTrack {
    pub track_id: u32,
    pub kind: TrackKind,
    pub default_duration: u32,
    pub default_size: u32,
    pub default_flags: u32,
}

/// One sample read from a `moof`: times in the track's own timescale, data as a buffer range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::media) struct RawSample {
    /// Index into the `tracks` slice given to [`read_moof`].
    pub track: usize,
    pub dts: u64,
    pub duration: u32,
    pub cts_offset: i64,
    pub keyframe: bool,
    pub data: Range<usize>,
}

/// Reads the samples described by the `moof` box `moof` of `buf`.
///
/// `next_dts[i]` is where track `i` continues when a `traf` has no `tfdt`, and is advanced past
/// the samples read. Data offsets are resolved per ISO/IEC 14496-12 (explicit base data offset =
/// position in `buf`, default-base-is-moof, or the `moof`/previous `traf` data end) and checked
/// against `buf`. Tracks not in `tracks` are skipped.
pub(in crate::media) fn read_moof(
    buf: &[u8],
    moof: &BoxHeader,
    tracks: &[FragmentTrack],
    next_dts: &mut [u64],
) -> Result<Vec<RawSample>, MediaError> {
    let bytes = moof
        .bytes(buf)
        .ok_or_else(|| MediaError::InvalidMp4(format!("moof at {} truncated", moof.offset)))?;
    read_moof_at(
        bytes,
        moof.offset as u64,
        buf.len() as u64,
        tracks,
        next_dts,
    )?
    .into_iter()
    .map(|s| {
        Ok(RawSample {
            track: s.track,
            dts: s.dts,
            duration: s.duration,
            cts_offset: s.cts_offset,
            keyframe: s.keyframe,
            data: usize::try_from(s.data.start).map_err(overflow)?
                ..usize::try_from(s.data.end).map_err(overflow)?,
        })
    })
    .collect()
}

fn overflow(_: std::num::TryFromIntError) -> MediaError {
    MediaError::InvalidMp4("sample offset does not fit in memory".into())
}

/// A sample found by [`read_moof_at`]: like [`RawSample`], with 64-bit data positions.
struct MoofSample {
    track: usize,
    dts: u64,
    duration: u32,
    cts_offset: i64,
    keyframe: bool,
    data: Range<u64>,
}

/// Reads the samples described by the `moof` box `moof_bytes`, which starts at `moof_offset` of a
/// file whose data may be referenced up to `data_end`; see [`read_moof`]. Only the `moof` needs to
/// be in memory: positions are computed and bounds-checked, not read.
fn read_moof_at(
    moof_bytes: &[u8],
    moof_offset: u64,
    data_end: u64,
    tracks: &[FragmentTrack],
    next_dts: &mut [u64],
) -> Result<Vec<MoofSample>, MediaError> {
    let (decoded, _) = MoofBox::decode(moof_bytes)
        .map_err(|e| MediaError::InvalidMp4(format!("moof at {moof_offset}: {e}")))?;
    let mut samples = Vec::new();
    // Without an explicit base, the first traf's data starts at the moof, later ones where the
    // previous traf's data ended.
    let mut implicit_base = moof_offset;
    for traf in &decoded.traf_boxes {
        let tfhd = &traf.tfhd_box;
        let Some(index) = tracks.iter().position(|t| t.track_id == tfhd.track_id) else {
            continue;
        };
        let track = tracks[index];
        let base = match tfhd.base_data_offset {
            Some(b) => b,
            None if tfhd.default_base_is_moof => moof_offset,
            None => implicit_base,
        };
        let default_duration = tfhd
            .default_sample_duration
            .unwrap_or(track.default_duration);
        let default_size = tfhd.default_sample_size.unwrap_or(track.default_size);
        let default_flags = tfhd
            .default_sample_flags
            .map_or(track.default_flags, |f| f.get());
        let mut dts = traf
            .tfdt_box
            .as_ref()
            .map_or(next_dts[index], |t| t.base_media_decode_time);
        let mut pos = base;
        for trun in &traf.trun_boxes {
            if let Some(off) = trun.data_offset {
                pos = base.checked_add_signed(i64::from(off)).ok_or_else(|| {
                    MediaError::InvalidMp4(format!("trun data offset {off} out of range"))
                })?;
            }
            for (i, s) in trun.samples.iter().enumerate() {
                let size = u64::from(s.size.unwrap_or(default_size));
                let flags = match (i, trun.first_sample_flags) {
                    (0, Some(f)) => f.get(),
                    _ => s.flags.map_or(default_flags, |f| f.get()),
                };
                let end = pos
                    .checked_add(size)
                    .filter(|&e| e <= data_end)
                    .ok_or_else(|| {
                        MediaError::InvalidMp4(format!(
                            "sample of {size} bytes at {pos} lies beyond the data"
                        ))
                    })?;
                let duration = s.duration.unwrap_or(default_duration);
                samples.push(MoofSample {
                    track: index,
                    dts,
                    duration,
                    cts_offset: s.composition_time_offset.unwrap_or(0),
                    keyframe: flags & NON_SYNC_BIT == 0,
                    data: pos..end,
                });
                dts = dts
                    .checked_add(u64::from(duration))
                    .ok_or_else(|| MediaError::InvalidMp4("decode time overflow".into()))?;
                pos = end;
            }
        }
        next_dts[index] = dts;
        implicit_base = pos;
    }
    Ok(samples)
}

/// Reads the frames of one fragment we wrote (`moof`+`mdat`, optionally preceded by other
/// boxes such as `styp`), with the [`StreamParams`] of its init segment.
///
/// Frames come out per track in `traf` order (video first), each track in decode order, with
/// `wallclock_us` = 0. This convenience copies `fragment` once and wraps `params` in a new `Arc`;
/// [`parse_fragment_bytes`] shares both instead.
pub fn parse_fragment(params: &StreamParams, fragment: &[u8]) -> Result<Vec<Frame>, MediaError> {
    parse_fragment_bytes(&Arc::new(params.clone()), &Bytes::copy_from_slice(fragment))
}

/// Like [`parse_fragment`], but zero-copy: frame data are slices of `fragment` and every frame's
/// `params` is a clone of `params`.
pub fn parse_fragment_bytes(
    params: &Arc<StreamParams>,
    fragment: &Bytes,
) -> Result<Vec<Frame>, MediaError> {
    let moof = top_level_boxes(fragment)
        .find(|b| b.as_ref().map_or(true, |b| &b.box_type == b"moof"))
        .ok_or_else(|| MediaError::InvalidMp4("fragment without moof".into()))??;
    let tracks: Vec<FragmentTrack> = [TrackKind::Video, TrackKind::Audio]
        .into_iter()
        .filter_map(|kind| {
            Some(FragmentTrack {
                track_id: track_id(params, kind)?,
                kind,
                default_duration: 0,
                default_size: 0,
                default_flags: 0,
            })
        })
        .collect();
    let mut next_dts = vec![0; tracks.len()];
    let samples = read_moof(fragment, &moof, &tracks, &mut next_dts)?;
    samples
        .into_iter()
        .map(|s| {
            Ok(Frame {
                track: tracks[s.track].kind,
                dts: i64::try_from(s.dts)
                    .map_err(|_| MediaError::InvalidMp4(format!("dts {} too large", s.dts)))?,
                duration: s.duration,
                cts_offset: i32::try_from(s.cts_offset).map_err(|_| {
                    MediaError::InvalidMp4(format!("composition offset {}", s.cts_offset))
                })?,
                keyframe: s.keyframe,
                wallclock_us: 0,
                data: fragment.slice(s.data),
                params: params.clone(),
            })
        })
        .collect()
}

/// One sample of a fragment, located but not loaded (see [`parse_moof`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRef {
    pub track: TrackKind,
    /// Decode time in the track's timescale.
    pub dts: i64,
    /// Duration in the track's timescale.
    pub duration: u32,
    /// Presentation time minus decode time, in the track's timescale.
    pub cts_offset: i32,
    pub keyframe: bool,
    /// Where the sample's bytes are, relative to the first byte of the `moof`.
    pub data: Range<u64>,
}

/// Reads the sample table of one fragment we wrote from its `moof` box alone, so a reader can
/// plan which byte ranges to copy without loading the `mdat` (exports stream them afterwards).
///
/// `moof` holds exactly the `moof` box; `fragment_len` is the size of the `moof` plus the `mdat`
/// that follows it, against which sample positions are checked. Samples come out per track in
/// `traf` order (video first), each track in decode order.
pub fn parse_moof(
    params: &StreamParams,
    moof: &[u8],
    fragment_len: u64,
) -> Result<Vec<SampleRef>, MediaError> {
    match top_level_boxes(moof).next() {
        Some(Ok(b)) if &b.box_type == b"moof" && b.end() == moof.len() as u64 => {}
        _ => {
            return Err(MediaError::InvalidMp4(
                "expected exactly one moof box".into(),
            ));
        }
    }
    let tracks: Vec<FragmentTrack> = [TrackKind::Video, TrackKind::Audio]
        .into_iter()
        .filter_map(|kind| {
            Some(FragmentTrack {
                track_id: track_id(params, kind)?,
                kind,
                default_duration: 0,
                default_size: 0,
                default_flags: 0,
            })
        })
        .collect();
    let mut next_dts = vec![0; tracks.len()];
    read_moof_at(moof, 0, fragment_len, &tracks, &mut next_dts)?
        .into_iter()
        .map(|s| {
            Ok(SampleRef {
                track: tracks[s.track].kind,
                dts: i64::try_from(s.dts)
                    .map_err(|_| MediaError::InvalidMp4(format!("dts {} too large", s.dts)))?,
                duration: s.duration,
                cts_offset: i32::try_from(s.cts_offset).map_err(|_| {
                    MediaError::InvalidMp4(format!("composition offset {}", s.cts_offset))
                })?,
                keyframe: s.keyframe,
                data: s.data,
            })
        })
        .collect()
}
