//! Progressive (non-fragmented) MP4 writing, for exports: `ftyp` + `moov` with complete sample
//! tables and edit lists, then one `mdat` whose payload the caller supplies separately.
//!
//! Built for constant-memory exports: [`TrackTables`] collects one track's sample tables sample by
//! sample (about 4 bytes per sample for `stsz`, the other tables run-length coded),
//! [`write_head`] encodes `ftyp` + `moov` + the `mdat` header once the payload's size is known, and
//! the payload itself (the samples' bytes) never passes through here. `moov` comes first ("fast
//! start"), so players can start before the download ends and seek with HTTP ranges.
//!
//! # Timeline
//!
//! Samples are pushed with their decode time on a timeline shared by all tracks, in each track's
//! own timescale; the movie timescale is that of the main track (video if any), so both name the
//! same instants. A track's first sample becomes its media time 0. The edit list then maps movie
//! time 0 to [`Presentation::start`]: with one edit whose `media_time` skips what comes before
//! (the frames between the preceding keyframe and the requested start, so the cut is
//! frame-accurate), or an empty edit first when the track starts after it (audio that begins a
//! few ms after the keyframe). Composition offsets are shifted so none is negative (`ctts`
//! version 0, which every player reads); the shift is added to the edit's `media_time`.

use std::num::NonZeroU32;

use bytes::{BufMut, Bytes, BytesMut};
use shiguredo_mp4::boxes::{
    Brand, Co64Box, CttsBox, CttsEntry, EdtsBox, ElstBox, ElstEntry, FtypBox, MoovBox, MvhdBox,
    StcoBox, StscBox, StscEntry, StssBox, StszBox, SttsBox, SttsEntry, TrakBox,
};
use shiguredo_mp4::{Either, Encode, FixedPointNumber, Mp4FileTime};

use super::fmp4::{build_trak, track_id};
use super::{MediaError, StreamParams, TrackKind, VideoCodec};

/// `media_time` of an empty edit (no media is shown for its duration).
const EMPTY_EDIT: i64 = -1;

/// One track's sample tables, built in decode order. See the module documentation.
#[derive(Debug, Clone)]
pub struct TrackTables {
    kind: TrackKind,
    timescale: u32,
    /// Timeline decode time of the first sample (track ticks): the track's media time 0.
    origin: Option<i64>,
    /// Media decode time of the last sample pushed.
    last_dts: i64,
    /// Duration of the last sample pushed; replaced by the real delta when another follows.
    last_duration: u32,
    stts: Vec<SttsEntry>,
    /// Composition offsets as pushed (possibly negative), run-length coded.
    ctts: Vec<CttsEntry>,
    min_cts: i64,
    sync: Vec<NonZeroU32>,
    sizes: Vec<u32>,
    /// Chunk start offsets, relative to the first byte of the `mdat` payload.
    chunk_offsets: Vec<u64>,
    stsc: Vec<StscEntry>,
    /// Samples in the chunk being filled.
    chunk_samples: u32,
    /// Sum of the finished samples' durations (track ticks).
    finished_duration: u64,
}

/// What the movie presents, in movie ticks (the main track's timescale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presentation {
    /// Movie ticks per second.
    pub movie_timescale: u32,
    /// Timeline position shown at movie time 0.
    pub start: i64,
    /// How long the movie lasts.
    pub duration: u64,
}

impl TrackTables {
    pub fn new(kind: TrackKind, timescale: u32) -> TrackTables {
        TrackTables {
            kind,
            timescale: timescale.max(1),
            origin: None,
            last_dts: 0,
            last_duration: 0,
            stts: Vec::new(),
            ctts: Vec::new(),
            min_cts: 0,
            sync: Vec::new(),
            sizes: Vec::new(),
            chunk_offsets: Vec::new(),
            stsc: Vec::new(),
            chunk_samples: 0,
            finished_duration: 0,
        }
    }

    pub fn kind(&self) -> TrackKind {
        self.kind
    }

    pub fn timescale(&self) -> u32 {
        self.timescale
    }

    /// Number of samples pushed.
    pub fn sample_count(&self) -> usize {
        self.sizes.len()
    }

    /// Timeline decode time of the first sample, if any.
    pub fn origin(&self) -> Option<i64> {
        self.origin
    }

    /// Media duration so far (track ticks), the last sample counted with its own duration.
    pub fn media_duration(&self) -> u64 {
        if self.sizes.is_empty() {
            0
        } else {
            self.finished_duration + u64::from(self.last_duration)
        }
    }

    /// Timeline position where the track's media ends (track ticks), if it has samples.
    pub fn timeline_end(&self) -> Option<i64> {
        Some(self.origin? + self.media_duration() as i64)
    }

    /// Starts a new chunk whose first sample is at `payload_offset` of the `mdat` payload. Samples
    /// pushed next belong to it and must follow each other in the payload.
    pub fn start_chunk(&mut self, payload_offset: u64) {
        self.close_chunk();
        self.chunk_offsets.push(payload_offset);
    }

    fn close_chunk(&mut self) {
        if self.chunk_samples == 0 {
            return;
        }
        let chunk_number = self.chunk_offsets.len() as u32;
        if self
            .stsc
            .last()
            .is_none_or(|e| e.sample_per_chunk != self.chunk_samples)
            && let Some(first_chunk) = NonZeroU32::new(chunk_number)
        {
            self.stsc.push(StscEntry {
                first_chunk,
                sample_per_chunk: self.chunk_samples,
                sample_description_index: NonZeroU32::MIN,
            });
        }
        self.chunk_samples = 0;
    }

    /// Appends a sample whose decode time on the timeline is `timeline_dts` (track ticks).
    ///
    /// Decode times must increase; a sample that would not come after the previous one (an overlap
    /// at a segment boundary) is placed one tick after it. The previous sample's duration becomes
    /// the difference, so the timestamps stay continuous; `duration` is kept for the last sample.
    pub fn push(
        &mut self,
        timeline_dts: i64,
        duration: u32,
        cts_offset: i64,
        sync: bool,
        size: u32,
    ) -> Result<(), MediaError> {
        if self.chunk_offsets.is_empty() {
            return Err(MediaError::Mux("sample pushed before any chunk".into()));
        }
        match self.origin {
            None => {
                self.origin = Some(timeline_dts);
                self.last_dts = 0;
            }
            Some(origin) => {
                let dts = (timeline_dts - origin).max(self.last_dts + 1);
                let delta = u32::try_from(dts - self.last_dts).map_err(|_| {
                    MediaError::Mux(format!("{:?} sample delta too large", self.kind))
                })?;
                add_run(&mut self.stts, delta);
                self.finished_duration += u64::from(delta);
                self.last_dts = dts;
            }
        }
        self.last_duration = duration;
        match self.ctts.last_mut() {
            Some(e) if e.sample_offset == cts_offset => e.sample_count += 1,
            _ => self.ctts.push(CttsEntry {
                sample_count: 1,
                sample_offset: cts_offset,
            }),
        }
        self.min_cts = self.min_cts.min(cts_offset);
        self.sizes.push(size);
        if sync && let Some(n) = NonZeroU32::new(self.sizes.len() as u32) {
            self.sync.push(n);
        }
        self.chunk_samples += 1;
        Ok(())
    }

    /// Amount added to every composition offset so none is negative.
    fn cts_shift(&self) -> i64 {
        (-self.min_cts).max(0)
    }

    /// The edit list that shows this track for `p`; empty when the track has no samples.
    pub fn edit_list(&self, p: &Presentation) -> Vec<ElstEntry> {
        let Some(origin) = self.origin else {
            return Vec::new();
        };
        let movie = i64::from(p.movie_timescale.max(1));
        let ts = i64::from(self.timescale);
        let to_movie = |ticks: i64| rescale(ticks, ts, movie);
        let shift = self.cts_shift();
        let start = rescale(p.start, movie, ts);
        let (empty, media_time) = if start >= origin {
            (0, start - origin + shift)
        } else {
            (to_movie(origin - start).max(0) as u64, shift)
        };
        let available = to_movie(self.media_duration() as i64 + shift - media_time).max(0) as u64;
        let duration = p
            .duration
            .saturating_sub(empty)
            .min(available)
            // An edit of duration 0 would mean "the rest of the media" to some players.
            .max(1);
        let rate = FixedPointNumber::new(1, 0);
        let mut out = Vec::with_capacity(2);
        if empty > 0 {
            out.push(ElstEntry {
                edit_duration: empty,
                media_time: EMPTY_EDIT,
                media_rate: rate,
            });
        }
        out.push(ElstEntry {
            edit_duration: duration,
            media_time,
            media_rate: rate,
        });
        out
    }

    /// Closes the tables and fills `trak`'s sample table (except chunk offsets), durations and
    /// edit list. Returns the chunk offsets, relative to the `mdat` payload.
    fn fill_trak(mut self, trak: &mut TrakBox, p: &Presentation) -> Vec<u64> {
        self.close_chunk();
        let edits = self.edit_list(p);
        trak.tkhd_box.duration = edits.iter().map(|e| e.edit_duration).sum();
        trak.edts_box = Some(EdtsBox {
            elst_box: Some(ElstBox { entries: edits }),
            unknown_boxes: Vec::new(),
        });
        trak.mdia_box.mdhd_box.duration = self.media_duration();
        let mut stts = std::mem::take(&mut self.stts);
        if !self.sizes.is_empty() {
            add_run(&mut stts, self.last_duration);
        }
        let shift = self.cts_shift();
        let ctts = (self.ctts.iter().any(|e| e.sample_offset != 0)).then(|| CttsBox {
            version: 0,
            entries: self
                .ctts
                .iter()
                .map(|e| CttsEntry {
                    sample_count: e.sample_count,
                    sample_offset: e.sample_offset + shift,
                })
                .collect(),
        });
        let stbl = &mut trak.mdia_box.minf_box.stbl_box;
        stbl.stts_box = SttsBox { entries: stts };
        stbl.ctts_box = ctts;
        // No `stss` means every sample is a sync sample (audio).
        stbl.stss_box = (self.sync.len() != self.sizes.len()).then(|| StssBox {
            sample_numbers: std::mem::take(&mut self.sync),
        });
        stbl.stsc_box = StscBox {
            entries: std::mem::take(&mut self.stsc),
        };
        stbl.stsz_box = StszBox::Variable {
            entry_sizes: std::mem::take(&mut self.sizes),
        };
        self.chunk_offsets
    }
}

fn add_run(stts: &mut Vec<SttsEntry>, delta: u32) {
    match stts.last_mut() {
        Some(e) if e.sample_delta == delta && e.sample_count < u32::MAX => e.sample_count += 1,
        _ => stts.push(SttsEntry {
            sample_count: 1,
            sample_delta: delta,
        }),
    }
}

/// `value` (in `from` ticks per second) in `to` ticks per second, rounded to nearest.
pub fn rescale(value: i64, from: i64, to: i64) -> i64 {
    if from == to || from == 0 {
        return value;
    }
    let num = i128::from(value) * i128::from(to);
    let den = i128::from(from);
    let q = num.div_euclid(den);
    let r = num.rem_euclid(den);
    (if 2 * r >= den { q + 1 } else { q }) as i64
}

/// Size of the `mdat` header for a payload of `payload_len` bytes (16 with a 64-bit size).
pub fn mdat_header_len(payload_len: u64) -> u64 {
    if payload_len + 8 > u64::from(u32::MAX) {
        16
    } else {
        8
    }
}

/// Encodes `ftyp` + `moov` + the `mdat` header for the `tracks` (video and/or audio of `params`)
/// and a payload of `payload_len` bytes that follows directly. Tracks without samples are left
/// out. Chunk offsets use `stco`, or `co64` when the file passes 4 GiB.
pub fn write_head(
    params: &StreamParams,
    tracks: Vec<TrackTables>,
    p: &Presentation,
    payload_len: u64,
) -> Result<Bytes, MediaError> {
    let tracks: Vec<TrackTables> = tracks
        .into_iter()
        .filter(|t| t.sample_count() > 0)
        .collect();
    // Track ids follow our init segments (video 1, audio 2 or 1), for the tracks present.
    let present = StreamParams {
        version: params.version,
        video: params
            .video
            .clone()
            .filter(|_| tracks.iter().any(|t| t.kind == TrackKind::Video)),
        audio: params
            .audio
            .clone()
            .filter(|_| tracks.iter().any(|t| t.kind == TrackKind::Audio)),
    };
    if tracks.is_empty() {
        return Err(MediaError::Mux("nothing to export".into()));
    }
    let mut traks = Vec::with_capacity(tracks.len());
    let mut relative_offsets = Vec::with_capacity(tracks.len());
    for t in tracks {
        let id = track_id(&present, t.kind)
            .ok_or_else(|| MediaError::Mux(format!("no {:?} parameters", t.kind)))?;
        let mut trak = build_trak(&present, t.kind, id)?;
        relative_offsets.push(t.fill_trak(&mut trak, p));
        traks.push(trak);
    }
    let ftyp = encode(&ftyp(params))?;
    let mdat_len = mdat_header_len(payload_len);

    // The moov's size does not depend on the offsets' values, only on stco vs co64: measure with
    // placeholders, then encode for real with the payload's position known.
    let mut moov = Moov {
        moov: build_moov(p, traks)?,
        relative_offsets,
    };
    set_offsets(&mut moov, 0, false)?;
    let mut co64 = false;
    let mut moov_len = encoded_len(&moov)?;
    if ftyp.len() as u64 + moov_len + mdat_len + payload_len > u64::from(u32::MAX) {
        co64 = true;
        set_offsets(&mut moov, 0, true)?;
        moov_len = encoded_len(&moov)?;
    }
    let payload_base = ftyp.len() as u64 + moov_len + mdat_len;
    set_offsets(&mut moov, payload_base, co64)?;
    let moov = encode(&moov.moov)?;
    if moov.len() as u64 != moov_len {
        return Err(MediaError::Mux("moov size changed between passes".into()));
    }
    let mut out = BytesMut::with_capacity(payload_base as usize);
    out.put_slice(&ftyp);
    out.put_slice(&moov);
    if mdat_len == 16 {
        out.put_u32(1);
        out.put_slice(b"mdat");
        out.put_u64(payload_len + 16);
    } else {
        out.put_u32((payload_len + 8) as u32);
        out.put_slice(b"mdat");
    }
    Ok(out.freeze())
}

/// The moov, and each trak's chunk offsets relative to the payload (written by [`set_offsets`]).
struct Moov {
    moov: MoovBox,
    relative_offsets: Vec<Vec<u64>>,
}

fn build_moov(p: &Presentation, trak_boxes: Vec<TrakBox>) -> Result<MoovBox, MediaError> {
    let epoch = Mp4FileTime::from_unix_time(std::time::Duration::ZERO);
    let duration = trak_boxes
        .iter()
        .map(|t| t.tkhd_box.duration)
        .max()
        .unwrap_or(0);
    Ok(MoovBox {
        mvhd_box: MvhdBox {
            creation_time: epoch,
            modification_time: epoch,
            timescale: NonZeroU32::new(p.movie_timescale)
                .ok_or_else(|| MediaError::Mux("movie timescale 0".into()))?,
            duration,
            rate: MvhdBox::DEFAULT_RATE,
            volume: MvhdBox::DEFAULT_VOLUME,
            matrix: MvhdBox::DEFAULT_MATRIX,
            next_track_id: trak_boxes.len() as u32 + 1,
        },
        trak_boxes,
        mvex_box: None,
        unknown_boxes: Vec::new(),
    })
}

fn set_offsets(m: &mut Moov, base: u64, co64: bool) -> Result<(), MediaError> {
    for (trak, rel) in m.moov.trak_boxes.iter_mut().zip(&m.relative_offsets) {
        let abs = rel.iter().map(|o| base + o);
        trak.mdia_box.minf_box.stbl_box.stco_or_co64_box = if co64 {
            Either::B(Co64Box {
                chunk_offsets: abs.collect(),
            })
        } else {
            Either::A(StcoBox {
                chunk_offsets: abs
                    .map(|o| {
                        u32::try_from(o)
                            .map_err(|_| MediaError::Mux(format!("chunk offset {o} needs co64")))
                    })
                    .collect::<Result<_, _>>()?,
            })
        };
    }
    Ok(())
}

fn ftyp(params: &StreamParams) -> FtypBox {
    let mut brands = vec![Brand::ISOM, Brand::ISO2];
    match params.video.as_ref().map(|v| v.codec) {
        Some(VideoCodec::H264) => brands.push(Brand::AVC1),
        Some(VideoCodec::H265) => brands.push(Brand::HVC1),
        None => {}
    }
    brands.push(Brand::MP41);
    FtypBox {
        major_brand: Brand::ISOM,
        minor_version: 512,
        compatible_brands: brands,
    }
}

fn encoded_len(m: &Moov) -> Result<u64, MediaError> {
    Ok(encode(&m.moov)?.len() as u64)
}

fn encode<T: Encode>(b: &T) -> Result<Vec<u8>, MediaError> {
    b.encode_to_vec()
        .map_err(|e| MediaError::Mux(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;
    use shiguredo_mp4::Decode;

    use super::*;
    use crate::media::codec::tests::{DEMO_AVCC, LC_48K_MONO};
    use crate::media::codec::{aac_params, h264_params};
    use crate::media::fmp4::top_level_boxes;

    fn params() -> StreamParams {
        StreamParams {
            version: 0,
            video: Some(h264_params(Bytes::from_static(DEMO_AVCC)).unwrap()),
            audio: Some(aac_params(Bytes::from_static(LC_48K_MONO)).unwrap()),
        }
    }

    fn edit(edit_duration: u64, media_time: i64) -> ElstEntry {
        ElstEntry {
            edit_duration,
            media_time,
            media_rate: FixedPointNumber::new(1, 0),
        }
    }

    /// Timeline 0 is the requested start. Video: 25 fps from a keyframe 0.5 s before it. Audio:
    /// 48 kHz AAC from 10 ms after it.
    fn tracks() -> (TrackTables, TrackTables) {
        let mut v = TrackTables::new(TrackKind::Video, 90_000);
        v.start_chunk(0);
        for i in 0..50 {
            v.push(-45_000 + i * 3600, 3600, 0, i % 25 == 0, 100)
                .unwrap();
        }
        let mut a = TrackTables::new(TrackKind::Audio, 48_000);
        a.start_chunk(5000);
        for i in 0..50 {
            a.push(480 + i * 1024, 1024, 0, true, 10).unwrap();
        }
        (v, a)
    }

    #[test]
    fn edit_lists_start_exactly_at_the_requested_time() {
        let (v, a) = tracks();
        let p = Presentation {
            movie_timescale: 90_000,
            start: 0,
            duration: 90_000,
        };
        // Video: skip the 0.5 s between the keyframe and the start.
        assert_eq!(v.edit_list(&p), vec![edit(90_000, 45_000)]);
        // Audio: 10 ms of nothing (900 movie ticks), then its first sample.
        assert_eq!(a.edit_list(&p), vec![edit(900, -1), edit(89_100, 0)]);
        // Never past the media: 2 s of video from 0.5 s in leaves 1.5 s.
        let long = Presentation {
            duration: 1_000_000,
            ..p
        };
        assert_eq!(v.edit_list(&long), vec![edit(135_000, 45_000)]);
        // 50 × 1024 samples = 96 000 movie ticks.
        assert_eq!(a.edit_list(&long), vec![edit(900, -1), edit(96_000, 0)]);
        // A later start moves into the media.
        let later = Presentation { start: 9000, ..p };
        assert_eq!(v.edit_list(&later), vec![edit(90_000, 54_000)]);
        // 51 200 - 4320 audio ticks of media left: 87 900 movie ticks.
        assert_eq!(a.edit_list(&later), vec![edit(87_900, 4320)]);
        assert!(
            TrackTables::new(TrackKind::Audio, 48_000)
                .edit_list(&p)
                .is_empty()
        );
    }

    #[test]
    fn negative_composition_offsets_are_shifted_into_the_edit() {
        let mut v = TrackTables::new(TrackKind::Video, 90_000);
        v.start_chunk(0);
        for (i, cts) in [3600, 10_800, -3600, 0, 7200, -3600]
            .into_iter()
            .enumerate()
        {
            v.push(i as i64 * 3600, 3600, cts, i == 0, 10).unwrap();
        }
        let p = Presentation {
            movie_timescale: 90_000,
            start: 3600,
            duration: 7200,
        };
        assert_eq!(v.edit_list(&p), vec![edit(7200, 7200)]);
        let head = write_head(&params(), vec![v], &p, 60).unwrap();
        let moov = moov_of(&head);
        let ctts = moov.trak_boxes[0]
            .mdia_box
            .minf_box
            .stbl_box
            .ctts_box
            .clone()
            .unwrap();
        let offsets: Vec<i64> = ctts.entries.iter().map(|e| e.sample_offset).collect();
        assert_eq!(offsets, vec![7200, 14_400, 0, 3600, 10_800, 0]);
    }

    #[test]
    fn overlaps_stay_monotonic_and_durations_follow_the_timeline() {
        let mut t = TrackTables::new(TrackKind::Audio, 48_000);
        assert!(t.push(0, 1024, 0, true, 1).is_err(), "no chunk yet");
        t.start_chunk(0);
        for dts in [100, 1124, 1000, 5000] {
            t.push(dts, 1024, 0, true, 1).unwrap();
        }
        assert_eq!(t.origin(), Some(100));
        // 1024, then 1 (the overlap placed one tick later), then up to 5000, then its own 1024.
        assert_eq!(t.media_duration(), 4900 + 1024);
        assert_eq!(t.timeline_end(), Some(100 + 4900 + 1024));
    }

    fn moov_of(head: &[u8]) -> MoovBox {
        let b = top_level_boxes(head)
            .map(Result::unwrap)
            .find(|b| &b.box_type == b"moov")
            .unwrap();
        MoovBox::decode(b.bytes(head).unwrap()).unwrap().0
    }

    #[test]
    fn head_holds_complete_tables_and_points_into_the_payload() {
        let (mut v, mut a) = tracks();
        // A second chunk of each track after the first two.
        v.start_chunk(5500);
        v.push(-45_000 + 50 * 3600, 3600, 0, true, 100).unwrap();
        a.start_chunk(15_500);
        a.push(480 + 50 * 1024, 1024, 0, true, 10).unwrap();
        let p = Presentation {
            movie_timescale: 90_000,
            start: 0,
            duration: 90_000,
        };
        let payload = 15_510;
        let head = write_head(&params(), vec![v, a], &p, payload).unwrap();
        let boxes: Vec<_> = top_level_boxes(&head).map(Result::unwrap).collect();
        let types: Vec<&[u8; 4]> = boxes.iter().map(|b| &b.box_type).collect();
        assert_eq!(types, [b"ftyp", b"moov", b"mdat"]);
        assert_eq!(boxes[2].size, payload + 8);
        assert_eq!(boxes[2].offset + 8, head.len());
        let base = head.len() as u64;

        let moov = moov_of(&head);
        assert_eq!(moov.mvhd_box.timescale.get(), 90_000);
        assert_eq!(moov.mvhd_box.duration, 90_000);
        assert!(moov.mvex_box.is_none(), "not fragmented");
        let [video, audio] = &moov.trak_boxes[..] else {
            panic!("two tracks")
        };
        assert_eq!((video.tkhd_box.track_id, audio.tkhd_box.track_id), (1, 2));
        let stbl = &video.mdia_box.minf_box.stbl_box;
        assert_eq!(video.mdia_box.mdhd_box.duration, 51 * 3600);
        assert_eq!(
            stbl.stts_box.entries,
            vec![SttsEntry {
                sample_count: 51,
                sample_delta: 3600
            }]
        );
        assert!(stbl.ctts_box.is_none());
        let sync: Vec<u32> = stbl
            .stss_box
            .as_ref()
            .unwrap()
            .sample_numbers
            .iter()
            .map(|n| n.get())
            .collect();
        assert_eq!(sync, vec![1, 26, 51]);
        let per_chunk: Vec<(u32, u32)> = stbl
            .stsc_box
            .entries
            .iter()
            .map(|e| (e.first_chunk.get(), e.sample_per_chunk))
            .collect();
        assert_eq!(per_chunk, vec![(1, 50), (2, 1)]);
        match &stbl.stsz_box {
            StszBox::Variable { entry_sizes } => assert_eq!(entry_sizes.len(), 51),
            other => panic!("{other:?}"),
        }
        match &stbl.stco_or_co64_box {
            Either::A(stco) => {
                assert_eq!(stco.chunk_offsets, vec![base as u32, base as u32 + 5500])
            }
            Either::B(_) => panic!("small file uses stco"),
        }
        let edits = &video
            .edts_box
            .as_ref()
            .unwrap()
            .elst_box
            .as_ref()
            .unwrap()
            .entries;
        assert_eq!(edits, &vec![edit(90_000, 45_000)]);
        // Audio: every sample is sync, so no stss.
        let stbl = &audio.mdia_box.minf_box.stbl_box;
        assert!(stbl.stss_box.is_none());
        match &stbl.stco_or_co64_box {
            Either::A(stco) => {
                assert_eq!(
                    stco.chunk_offsets,
                    vec![base as u32 + 5000, base as u32 + 15_500]
                )
            }
            Either::B(_) => panic!("small file uses stco"),
        }
    }

    #[test]
    fn huge_payloads_use_co64_and_a_large_mdat() {
        let (v, _) = tracks();
        let p = Presentation {
            movie_timescale: 90_000,
            start: 0,
            duration: 90_000,
        };
        let payload = 5 << 30;
        let head = write_head(&params(), vec![v], &p, payload).unwrap();
        let moov = moov_of(&head);
        assert_eq!(
            moov.trak_boxes.len(),
            1,
            "the empty audio track is left out"
        );
        match &moov.trak_boxes[0]
            .mdia_box
            .minf_box
            .stbl_box
            .stco_or_co64_box
        {
            Either::B(co64) => assert_eq!(co64.chunk_offsets, vec![head.len() as u64]),
            Either::A(_) => panic!("needs co64"),
        }
        let mdat = &head[head.len() - 16..];
        assert_eq!(&mdat[..8], &[0, 0, 0, 1, b'm', b'd', b'a', b't']);
        assert_eq!(
            u64::from_be_bytes(mdat[8..].try_into().unwrap()),
            payload + 16
        );
    }

    #[test]
    fn rescale_rounds_to_nearest() {
        assert_eq!(rescale(1024, 48_000, 90_000), 1920);
        assert_eq!(rescale(1, 90_000, 1_000_000), 11);
        assert_eq!(rescale(-1, 90_000, 1_000_000), -11);
        assert_eq!(rescale(-45_000, 90_000, 48_000), -24_000);
        assert_eq!(rescale(7, 5, 5), 7);
    }
}
