//! H.264 and H.265 for WebRTC: length-prefixed samples (as the hub carries them) to Annex-B
//! access units with the parameter sets in front of every keyframe (SPS and PPS before an H.264
//! IDR; VPS, SPS and PPS before an H.265 IRAP picture), and whether a stream may reorder frames
//! (B-frames). str0m's packetizers cut the access units into RTP packets (RFC 6184 for H.264,
//! RFC 7798 for H.265: single NAL unit packets, fragmentation units for NAL units larger than a
//! packet, parameter sets aggregated into one packet).

use bytes::Bytes;

use crate::media::codec::{AvcRecordFields, avc_record_fields, hevc_parameter_sets};
use crate::media::{Frame, MediaError, VideoCodec, VideoParams};

const START_CODE: [u8; 4] = [0, 0, 0, 1];
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
/// H.265 NAL unit types: IRAP pictures (BLA, IDR, CRA and the reserved IRAP types), parameter
/// sets and the access unit delimiter.
const HEVC_IRAP: std::ops::RangeInclusive<u8> = 16..=23;
const HEVC_VPS: u8 = 32;
const HEVC_SPS: u8 = 33;
const HEVC_PPS: u8 = 34;
const HEVC_AUD: u8 = 35;

/// Rewrites a stream's samples into Annex-B access units for str0m's packetizer.
#[derive(Debug, Clone)]
pub struct AnnexB {
    codec: VideoCodec,
    length_size: usize,
    /// The parameter sets put before every keyframe, in order (SPS, PPS; or VPS, SPS, PPS).
    params: Vec<Bytes>,
}

impl AnnexB {
    /// From the stream's video parameters (H.264 or H.265).
    pub fn new(video: &VideoParams) -> Result<AnnexB, MediaError> {
        match video.codec {
            VideoCodec::H264 => {
                let AvcRecordFields {
                    length_size_minus_one,
                    sps,
                    pps,
                    ..
                } = avc_record_fields(&video.config_record)?;
                if sps.is_empty() || pps.is_empty() {
                    return Err(MediaError::InvalidParams("avcC without SPS or PPS".into()));
                }
                Ok(AnnexB {
                    codec: VideoCodec::H264,
                    length_size: usize::from(length_size_minus_one & 3) + 1,
                    params: sps.into_iter().chain(pps).collect(),
                })
            }
            VideoCodec::H265 => {
                let (length_size_minus_one, params) = hevc_parameter_sets(&video.config_record)?;
                let has = |t: u8| params.iter().any(|p| hevc_type(p) == t);
                if !(has(HEVC_VPS) && has(HEVC_SPS) && has(HEVC_PPS)) {
                    return Err(MediaError::InvalidParams(
                        "hvcC without VPS, SPS or PPS".into(),
                    ));
                }
                Ok(AnnexB {
                    codec: VideoCodec::H265,
                    length_size: usize::from(length_size_minus_one & 3) + 1,
                    params,
                })
            }
        }
    }

    /// The codec the access units are of.
    pub fn codec(&self) -> VideoCodec {
        self.codec
    }

    /// The Annex-B access unit of one sample. In-band parameter sets and access unit delimiters
    /// are dropped; the record's parameter sets go before every keyframe, so a decoder can start
    /// at any of them. A sample whose lengths run past its end is cut at the last whole NAL unit.
    pub fn access_unit(&self, sample: &[u8]) -> Vec<u8> {
        let mut nals: Vec<&[u8]> = Vec::new();
        let mut rest = sample;
        while rest.len() > self.length_size {
            let (len_bytes, tail) = rest.split_at(self.length_size);
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            if len == 0 || len > tail.len() {
                break;
            }
            let (nal, tail) = tail.split_at(len);
            nals.push(nal);
            rest = tail;
        }
        // Which NAL units make a keyframe, and which are dropped (parameter sets, delimiters).
        let (keyframe, dropped): (NalTest, NalTest) = match self.codec {
            VideoCodec::H264 => (
                |n| h264_type(n) == NAL_IDR,
                |n| matches!(h264_type(n), NAL_SPS | NAL_PPS | NAL_AUD),
            ),
            VideoCodec::H265 => (
                |n| HEVC_IRAP.contains(&hevc_type(n)),
                |n| matches!(hevc_type(n), HEVC_VPS | HEVC_SPS | HEVC_PPS | HEVC_AUD),
            ),
        };
        let mut out = Vec::with_capacity(sample.len() + 64);
        if nals.iter().any(|n| keyframe(n)) {
            for p in &self.params {
                out.extend_from_slice(&START_CODE);
                out.extend_from_slice(p);
            }
        }
        for n in nals {
            if dropped(n) {
                continue;
            }
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(n);
        }
        out
    }
}

/// A test on one NAL unit.
type NalTest = fn(&[u8]) -> bool;

fn h264_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |h| h & 0x1f)
}

fn hevc_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |h| (h >> 1) & 0x3f)
}

/// Whether a stream sends frames out of presentation order (B-frames), which browsers decode at
/// about one frame per second over WebRTC: a frame with a composition offset, or an SPS whose
/// VUI allows reordering (`max_num_reorder_frames > 0`). Cameras that say nothing in their VUI
/// and use no offsets count as not reordering.
pub fn reorders(video: &VideoParams, frames: &[Frame]) -> bool {
    if frames.iter().any(|f| f.cts_offset != 0) {
        return true;
    }
    if video.codec == VideoCodec::H265 {
        // No SPS check for H.265 (cameras send no B-frames; the offsets above tell).
        return false;
    }
    let Ok(fields) = avc_record_fields(&video.config_record) else {
        return false;
    };
    fields
        .sps
        .iter()
        .any(|sps| max_num_reorder_frames(sps).is_some_and(|n| n > 0))
}

/// `max_num_reorder_frames` from an SPS's VUI bitstream restrictions, when present.
fn max_num_reorder_frames(sps_nal: &[u8]) -> Option<u32> {
    use h264_reader::nal::sps::SeqParameterSet;
    use h264_reader::rbsp::{BitReader, decode_nal};

    let rbsp = decode_nal(sps_nal).ok()?;
    let sps = SeqParameterSet::from_bits(BitReader::new(&rbsp[..])).ok()?;
    sps.vui_parameters?
        .bitstream_restrictions
        .map(|b| b.max_num_reorder_frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avcc(sps: &[u8], pps: &[u8]) -> Bytes {
        let mut r = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
        r.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        r.extend_from_slice(sps);
        r.push(1);
        r.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        r.extend_from_slice(pps);
        Bytes::from(r)
    }

    // The demo clip's SPS (640x360 Main, no B-frames) and PPS, and the SPS of an x264 stream
    // with `-bf 2`.
    const SPS: &[u8] = &[
        0x67, 0x4d, 0x40, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00,
        0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f, 0x16, 0x2e, 0x48,
    ];
    const SPS_BFRAMES: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x42, 0x99, 0x60,
    ];
    const PPS: &[u8] = &[0x68, 0xeb, 0xcc, 0xb2];

    fn params() -> VideoParams {
        VideoParams {
            codec: VideoCodec::H264,
            config_record: avcc(SPS, PPS),
            width: 640,
            height: 360,
            codec_string: "avc1.4D401E".into(),
        }
    }

    fn sample(nals: &[&[u8]]) -> Vec<u8> {
        let mut s = Vec::new();
        for n in nals {
            s.extend_from_slice(&(n.len() as u32).to_be_bytes());
            s.extend_from_slice(n);
        }
        s
    }

    #[test]
    fn idr_gets_sps_and_pps_and_in_band_copies_are_dropped() {
        let a = AnnexB::new(&params()).expect("params");
        let au = a.access_unit(&sample(&[&[0x09, 0xf0], SPS, PPS, &[0x65, 1, 2, 3]]));
        let mut want = Vec::new();
        for n in [SPS, PPS, &[0x65, 1, 2, 3][..]] {
            want.extend_from_slice(&START_CODE);
            want.extend_from_slice(n);
        }
        assert_eq!(au, want);
        let p = a.access_unit(&sample(&[&[0x41, 9, 9]]));
        assert_eq!(p, [0, 0, 0, 1, 0x41, 9, 9]);
    }

    #[test]
    fn truncated_samples_keep_their_whole_nal_units() {
        let a = AnnexB::new(&params()).expect("params");
        let mut s = sample(&[&[0x41, 1]]);
        s.extend_from_slice(&[0, 0, 0, 50, 0x41]);
        assert_eq!(a.access_unit(&s), [0, 0, 0, 1, 0x41, 1]);
        assert!(a.access_unit(&[0, 0]).is_empty());
        assert!(a.access_unit(&[]).is_empty());
    }

    #[test]
    fn b_frames_are_seen_in_the_sps_or_in_composition_offsets() {
        let p = params();
        assert!(!reorders(&p, &[]));
        let b = VideoParams {
            config_record: avcc(SPS_BFRAMES, PPS),
            ..params()
        };
        assert!(reorders(&b, &[]));
        let frame = Frame {
            track: crate::media::TrackKind::Video,
            dts: 0,
            duration: 3600,
            cts_offset: 7200,
            keyframe: false,
            wallclock_us: 0,
            data: Bytes::new(),
            params: std::sync::Arc::new(crate::media::StreamParams {
                version: 1,
                video: Some(p.clone()),
                audio: None,
            }),
        };
        assert!(reorders(&p, &[frame]));
    }

    #[test]
    fn h265_irap_pictures_get_vps_sps_and_pps() {
        use crate::media::codec::hevc_parameter_sets;
        use crate::media::codec::tests::X265_HVCC;
        let video =
            crate::media::codec::h265_params(Bytes::from_static(X265_HVCC)).expect("x265 record");
        let a = AnnexB::new(&video).expect("params");
        assert_eq!(a.codec(), VideoCodec::H265);
        let (_, sets) = hevc_parameter_sets(X265_HVCC).expect("sets");
        let types: Vec<u8> = sets.iter().map(|p| hevc_type(p)).collect();
        assert_eq!(types, [HEVC_VPS, HEVC_SPS, HEVC_PPS]);
        // An access unit delimiter, in-band VPS, an IDR_W_RADL slice (type 19) and a CRA (21).
        let aud: &[u8] = &[HEVC_AUD << 1, 0x01, 0x50];
        let idr: &[u8] = &[19 << 1, 0x01, 0xaf, 0x01];
        let cra: &[u8] = &[21 << 1, 0x01, 0xaf, 0x02];
        let trail: &[u8] = &[1 << 1, 0x01, 0xd0, 0x03];
        let mut want = Vec::new();
        for n in sets.iter().map(|b| &b[..]).chain([idr]) {
            want.extend_from_slice(&START_CODE);
            want.extend_from_slice(n);
        }
        assert_eq!(a.access_unit(&sample(&[aud, &sets[0], idr])), want);
        let au = a.access_unit(&sample(&[cra]));
        assert!(au.ends_with(cra) && au.len() > cra.len() + 40, "{au:?}");
        // A trailing picture goes alone.
        assert_eq!(
            a.access_unit(&sample(&[trail])),
            [&START_CODE[..], trail].concat()
        );
        // An avcC record is no hvcC.
        let mut wrong = params();
        wrong.codec = VideoCodec::H265;
        assert!(AnnexB::new(&wrong).is_err());
    }
}
