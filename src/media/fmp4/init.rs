//! Init segments: building `ftyp`+`moov` from [`StreamParams`] and reading them back.

use std::num::NonZeroU32;

use bytes::Bytes;
use shiguredo_mp4::boxes::{
    AudioSampleEntryFields, Avc1Box, AvccBox, Brand, DinfBox, EsdsBox, FtypBox, HdlrBox, Hvc1Box,
    HvccBox, MdhdBox, MdiaBox, MediaHeader, MinfBox, MoovBox, Mp4aBox, MvexBox, MvhdBox,
    SampleEntry, SmhdBox, StblBox, StcoBox, StscBox, StsdBox, StszBox, SttsBox, TkhdBox, TrakBox,
    TrexBox, VisualSampleEntryFields, VmhdBox,
};
use shiguredo_mp4::descriptors::{
    DecoderConfigDescriptor, DecoderSpecificInfo, EsDescriptor, SlConfigDescriptor,
};
use shiguredo_mp4::{
    BaseBox, BoxType, Decode, Either, Encode, FixedPointNumber, LanguageCode, Mp4FileTime,
    SampleFlags, Uint,
};

use super::{top_level_boxes, track_id};
use crate::media::{
    AudioParams, MediaError, StreamParams, TrackKind, VIDEO_TIMESCALE, VideoCodec, VideoParams,
    codec,
};

/// Movie timescale of the `mvhd` (only durations in the init use it, and they are all 0).
const MOVIE_TIMESCALE: u32 = 1000;

/// Builds the initialization segment (`ftyp` + `moov`) for `params`.
pub fn init_segment(params: &StreamParams) -> Result<Bytes, MediaError> {
    let mut traks = Vec::new();
    let mut trexes = Vec::new();
    for kind in [TrackKind::Video, TrackKind::Audio] {
        let Some(id) = track_id(params, kind) else {
            continue;
        };
        traks.push(build_trak(params, kind, id)?);
        trexes.push(TrexBox {
            track_id: id,
            default_sample_description_index: 1,
            default_sample_duration: 0,
            default_sample_size: 0,
            default_sample_flags: SampleFlags::new(0),
        });
    }
    if traks.is_empty() {
        return Err(MediaError::Mux("stream has neither video nor audio".into()));
    }
    let epoch = Mp4FileTime::from_unix_time(std::time::Duration::ZERO);
    let moov = MoovBox {
        mvhd_box: MvhdBox {
            creation_time: epoch,
            modification_time: epoch,
            timescale: nonzero(MOVIE_TIMESCALE)?,
            duration: 0,
            rate: MvhdBox::DEFAULT_RATE,
            volume: MvhdBox::DEFAULT_VOLUME,
            matrix: MvhdBox::DEFAULT_MATRIX,
            next_track_id: traks.len() as u32 + 1,
        },
        trak_boxes: traks,
        mvex_box: Some(MvexBox {
            mehd_box: None,
            trex_boxes: trexes,
            unknown_boxes: Vec::new(),
        }),
        unknown_boxes: Vec::new(),
    };
    let mut brands = vec![Brand::ISO6, Brand::ISO5, Brand::new(*b"dash"), Brand::MP41];
    match params.video.as_ref().map(|v| v.codec) {
        Some(VideoCodec::H264) => brands.push(Brand::AVC1),
        Some(VideoCodec::H265) => brands.push(Brand::HVC1),
        None => {}
    }
    let ftyp = FtypBox {
        major_brand: Brand::ISO6,
        minor_version: 0,
        compatible_brands: brands,
    };
    let mut out = encode(&ftyp)?;
    out.extend_from_slice(&encode(&moov)?);
    Ok(Bytes::from(out))
}

pub(in crate::media) fn build_trak(
    params: &StreamParams,
    kind: TrackKind,
    id: u32,
) -> Result<TrakBox, MediaError> {
    let epoch = Mp4FileTime::from_unix_time(std::time::Duration::ZERO);
    let (entry, width, height, volume, handler, media_header) = match kind {
        TrackKind::Video => {
            let v = params
                .video
                .as_ref()
                .ok_or_else(|| MediaError::Mux("no video parameters".into()))?;
            let w = i16::try_from(v.width)
                .map_err(|_| MediaError::Mux(format!("video width {} too large", v.width)))?;
            let h = i16::try_from(v.height)
                .map_err(|_| MediaError::Mux(format!("video height {} too large", v.height)))?;
            (
                video_sample_entry(v)?,
                FixedPointNumber::new(w, 0),
                FixedPointNumber::new(h, 0),
                TkhdBox::DEFAULT_VIDEO_VOLUME,
                HdlrBox::HANDLER_TYPE_VIDE,
                MediaHeader::Vmhd(VmhdBox::default()),
            )
        }
        TrackKind::Audio => {
            let a = params
                .audio
                .as_ref()
                .ok_or_else(|| MediaError::Mux("no audio parameters".into()))?;
            (
                audio_sample_entry(a)?,
                FixedPointNumber::default(),
                FixedPointNumber::default(),
                TkhdBox::DEFAULT_AUDIO_VOLUME,
                HdlrBox::HANDLER_TYPE_SOUN,
                MediaHeader::Smhd(SmhdBox::default()),
            )
        }
    };
    let handler_name: &[u8] = match kind {
        TrackKind::Video => b"VideoHandler\0",
        TrackKind::Audio => b"SoundHandler\0",
    };
    Ok(TrakBox {
        tkhd_box: TkhdBox {
            flag_track_enabled: true,
            flag_track_in_movie: true,
            flag_track_in_preview: false,
            flag_track_size_is_aspect_ratio: false,
            creation_time: epoch,
            modification_time: epoch,
            track_id: id,
            duration: 0,
            layer: TkhdBox::DEFAULT_LAYER,
            alternate_group: TkhdBox::DEFAULT_ALTERNATE_GROUP,
            volume,
            matrix: TkhdBox::DEFAULT_MATRIX,
            width,
            height,
        },
        edts_box: None,
        mdia_box: MdiaBox {
            mdhd_box: MdhdBox {
                creation_time: epoch,
                modification_time: epoch,
                timescale: nonzero(params.timescale(kind))?,
                duration: 0,
                language: LanguageCode::UNDEFINED,
            },
            hdlr_box: HdlrBox {
                handler_type: handler,
                name: handler_name.to_vec(),
            },
            minf_box: MinfBox {
                media_header: Some(media_header),
                dinf_box: DinfBox::LOCAL_FILE,
                stbl_box: StblBox {
                    stsd_box: StsdBox {
                        entries: vec![entry],
                    },
                    stts_box: SttsBox {
                        entries: Vec::new(),
                    },
                    ctts_box: None,
                    cslg_box: None,
                    stsc_box: StscBox {
                        entries: Vec::new(),
                    },
                    stsz_box: StszBox::Variable {
                        entry_sizes: Vec::new(),
                    },
                    stco_or_co64_box: Either::A(StcoBox {
                        chunk_offsets: Vec::new(),
                    }),
                    stss_box: None,
                    sdtp_box: None,
                    unknown_boxes: Vec::new(),
                },
                unknown_boxes: Vec::new(),
            },
            unknown_boxes: Vec::new(),
        },
        unknown_boxes: Vec::new(),
    })
}

fn video_sample_entry(v: &VideoParams) -> Result<SampleEntry, MediaError> {
    let visual = VisualSampleEntryFields {
        data_reference_index: VisualSampleEntryFields::DEFAULT_DATA_REFERENCE_INDEX,
        width: v.width,
        height: v.height,
        horizresolution: VisualSampleEntryFields::DEFAULT_HORIZRESOLUTION,
        vertresolution: VisualSampleEntryFields::DEFAULT_VERTRESOLUTION,
        frame_count: VisualSampleEntryFields::DEFAULT_FRAME_COUNT,
        compressorname: VisualSampleEntryFields::NULL_COMPRESSORNAME,
        depth: VisualSampleEntryFields::DEFAULT_DEPTH,
    };
    Ok(match v.codec {
        VideoCodec::H264 => SampleEntry::Avc1(Avc1Box {
            visual,
            avcc_box: decode_child(AvccBox::TYPE, &v.config_record)?,
            unknown_boxes: Vec::new(),
        }),
        VideoCodec::H265 => SampleEntry::Hvc1(Hvc1Box {
            visual,
            hvcc_box: decode_child(HvccBox::TYPE, &v.config_record)?,
            unknown_boxes: Vec::new(),
        }),
    })
}

fn audio_sample_entry(a: &AudioParams) -> Result<SampleEntry, MediaError> {
    Ok(SampleEntry::Mp4a(Mp4aBox {
        audio: AudioSampleEntryFields {
            data_reference_index: AudioSampleEntryFields::DEFAULT_DATA_REFERENCE_INDEX,
            channelcount: a.channels,
            samplesize: AudioSampleEntryFields::DEFAULT_SAMPLESIZE,
            // A 16.16 field: rates above 65535 Hz do not fit and are written as 0, as usual;
            // the true rate is in the AudioSpecificConfig and the track timescale.
            samplerate: FixedPointNumber::new(u16::try_from(a.sample_rate).unwrap_or(0), 0),
        },
        esds_box: EsdsBox {
            es: EsDescriptor {
                es_id: EsDescriptor::MIN_ES_ID,
                stream_priority: EsDescriptor::LOWEST_STREAM_PRIORITY,
                depends_on_es_id: None,
                url_string: None,
                ocr_es_id: None,
                dec_config_descr: DecoderConfigDescriptor {
                    object_type_indication:
                        DecoderConfigDescriptor::OBJECT_TYPE_INDICATION_AUDIO_ISO_IEC_14496_3,
                    stream_type: DecoderConfigDescriptor::STREAM_TYPE_AUDIO,
                    up_stream: DecoderConfigDescriptor::UP_STREAM_FALSE,
                    buffer_size_db: Uint::new(0),
                    max_bitrate: 0,
                    avg_bitrate: 0,
                    dec_specific_info: Some(DecoderSpecificInfo {
                        payload: a.asc.to_vec(),
                    }),
                },
                sl_config_descr: SlConfigDescriptor,
            },
        },
        unknown_boxes: Vec::new(),
    }))
}

/// Reads back the [`StreamParams`] (version 0) of an init segment we wrote.
///
/// Track ids and timescales must follow our layout (video = 1 at 90 kHz, audio = 2 or 1 at its
/// sample rate), because [`parse_fragment`](super::parse_fragment) relies on it.
pub fn parse_init(init: &[u8]) -> Result<StreamParams, MediaError> {
    let moov = find_moov(init)?;
    let mut params = StreamParams {
        version: 0,
        video: None,
        audio: None,
    };
    let mut ids = Vec::new();
    for trak in &moov.trak_boxes {
        let entry = trak
            .mdia_box
            .minf_box
            .stbl_box
            .stsd_box
            .entries
            .first()
            .ok_or_else(|| MediaError::InvalidMp4("trak without sample entry".into()))?;
        let timescale = trak.mdia_box.mdhd_box.timescale.get();
        match track_params_from_entry(entry)? {
            TrackParams::Video(v) if params.video.is_none() => {
                check_timescale(timescale, VIDEO_TIMESCALE)?;
                params.video = Some(v);
            }
            TrackParams::Audio(a) if params.audio.is_none() => {
                check_timescale(timescale, a.sample_rate)?;
                params.audio = Some(a);
            }
            _ => {
                return Err(MediaError::Unsupported(
                    "init segment with two tracks of one kind".into(),
                ));
            }
        }
        ids.push((trak.mdia_box.hdlr_box.handler_type, trak.tkhd_box.track_id));
    }
    for (kind, handler) in [
        (TrackKind::Video, HdlrBox::HANDLER_TYPE_VIDE),
        (TrackKind::Audio, HdlrBox::HANDLER_TYPE_SOUN),
    ] {
        if let Some(expected) = track_id(&params, kind)
            && !ids.contains(&(handler, expected))
        {
            return Err(MediaError::Unsupported(format!(
                "init segment does not have {kind:?} as track {expected}"
            )));
        }
    }
    if params.video.is_none() && params.audio.is_none() {
        return Err(MediaError::InvalidMp4("init segment without tracks".into()));
    }
    Ok(params)
}

/// Whether `data` starts with the init of a fragmented MP4 (a `moov` with `mvex`): a file we
/// record into, as opposed to a progressive MP4 (a Go archive file, an import) whose media sits in
/// one `mdat` that [`super::split_fragments`] does not count as fragments.
pub fn is_fragmented_init(data: &[u8]) -> bool {
    find_moov(data).is_ok_and(|moov| moov.mvex_box.is_some())
}

fn check_timescale(actual: u32, expected: u32) -> Result<(), MediaError> {
    if actual == expected {
        Ok(())
    } else {
        Err(MediaError::Unsupported(format!(
            "track timescale {actual}, expected {expected}"
        )))
    }
}

/// Finds and decodes the first `moov` among the top-level boxes of `data`.
pub(in crate::media) fn find_moov(data: &[u8]) -> Result<MoovBox, MediaError> {
    for b in top_level_boxes(data) {
        let b = b?;
        if &b.box_type == b"moov" {
            let bytes = b
                .bytes(data)
                .ok_or_else(|| MediaError::InvalidMp4("moov box truncated".into()))?;
            let (moov, _) =
                MoovBox::decode(bytes).map_err(|e| MediaError::InvalidMp4(format!("moov: {e}")))?;
            return Ok(moov);
        }
    }
    Err(MediaError::InvalidMp4("no moov box".into()))
}

/// Codec parameters of one sample entry.
pub(in crate::media) enum TrackParams {
    Video(VideoParams),
    Audio(AudioParams),
}

/// Reads codec parameters from an `avc1`/`avc3`, `hvc1`/`hev1` or `mp4a` (MPEG-4 audio) sample
/// entry. Anything else is `Unsupported` with the four-character code in the message.
pub(in crate::media) fn track_params_from_entry(
    entry: &SampleEntry,
) -> Result<TrackParams, MediaError> {
    match entry {
        SampleEntry::Avc1(b) => Ok(TrackParams::Video(codec::h264_params(child_body(
            &b.avcc_box,
        )?)?)),
        SampleEntry::Hvc1(b) => Ok(TrackParams::Video(codec::h265_params(child_body(
            &b.hvcc_box,
        )?)?)),
        SampleEntry::Hev1(b) => Ok(TrackParams::Video(codec::h265_params(child_body(
            &b.hvcc_box,
        )?)?)),
        SampleEntry::Mp4a(b) => {
            let dc = &b.esds_box.es.dec_config_descr;
            if dc.object_type_indication
                != DecoderConfigDescriptor::OBJECT_TYPE_INDICATION_AUDIO_ISO_IEC_14496_3
            {
                return Err(MediaError::Unsupported(format!(
                    "mp4a with object type 0x{:02x} (not MPEG-4 AAC)",
                    dc.object_type_indication
                )));
            }
            let asc = dc.dec_specific_info.as_ref().ok_or_else(|| {
                MediaError::InvalidParams("mp4a without AudioSpecificConfig".into())
            })?;
            Ok(TrackParams::Audio(codec::aac_params(
                Bytes::copy_from_slice(&asc.payload),
            )?))
        }
        SampleEntry::Unknown(b) if b.box_type.as_bytes() == b"avc3" => {
            // shiguredo has no avc3 type: skip the 78-byte visual sample entry fields and find
            // the avcC child box ourselves.
            let children = b.payload.get(78..).unwrap_or_default();
            for child in top_level_boxes(children) {
                let child = child?;
                if &child.box_type == b"avcC"
                    && let Some(range) = child.payload_range(children.len())
                {
                    return Ok(TrackParams::Video(codec::h264_params(
                        Bytes::copy_from_slice(&children[range]),
                    )?));
                }
            }
            Err(MediaError::InvalidParams("avc3 without avcC".into()))
        }
        other => {
            let box_type = match other {
                SampleEntry::Unknown(b) => b.box_type,
                _ => BaseBox::box_type(other),
            };
            Err(MediaError::Unsupported(format!(
                "sample entry '{}'",
                String::from_utf8_lossy(box_type.as_bytes())
            )))
        }
    }
}

/// Body of an encoded child box (the configuration record without its 8-byte header).
fn child_body<T: Encode>(b: &T) -> Result<Bytes, MediaError> {
    let encoded = encode(b)?;
    Ok(Bytes::from(encoded).slice(8..))
}

/// Decodes a configuration record (box body) as the box type it belongs to.
fn decode_child<T: Decode>(box_type: BoxType, body: &[u8]) -> Result<T, MediaError> {
    let size = u32::try_from(body.len() + 8)
        .map_err(|_| MediaError::Mux("configuration record too large".into()))?;
    let mut boxed = Vec::with_capacity(body.len() + 8);
    boxed.extend_from_slice(&size.to_be_bytes());
    boxed.extend_from_slice(box_type.as_bytes());
    boxed.extend_from_slice(body);
    let (decoded, _) = T::decode(&boxed).map_err(|e| {
        MediaError::InvalidParams(format!(
            "{}: {e}",
            String::from_utf8_lossy(box_type.as_bytes())
        ))
    })?;
    Ok(decoded)
}

fn encode<T: Encode>(b: &T) -> Result<Vec<u8>, MediaError> {
    b.encode_to_vec()
        .map_err(|e| MediaError::Mux(e.to_string()))
}

fn nonzero(v: u32) -> Result<NonZeroU32, MediaError> {
    NonZeroU32::new(v).ok_or_else(|| MediaError::Mux("timescale 0".into()))
}
