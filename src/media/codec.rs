//! Codec parameters from decoder configuration records: dimensions, RFC 6381 codec strings.
//!
//! Every constructor validates its input (hostile bytes give `Err`, never a panic) and stores the
//! record in canonical form: it is decoded and re-encoded by `shiguredo_mp4`, so the bytes we
//! keep are exactly the bytes [`super::fmp4::init_segment`] writes and
//! [`super::fmp4::parse_init`] reads back. That makes `StreamParams` comparisons (is this a new
//! codec setup?) byte-exact across a write/read round trip.
//!
//! Frames carry 4-byte NAL length prefixes (see [`super::Frame::data`]), so records announcing a
//! different NAL length size are rejected rather than silently mislabelled.

use bytes::Bytes;
use shiguredo_mp4::bitstream::{h264, h265};
use shiguredo_mp4::boxes::{AvccBox, HvccBox};
use shiguredo_mp4::{BoxType, Decode, Encode, Uint};

use super::{AudioParams, MediaError, VideoCodec, VideoParams};

/// `lengthSizeMinusOne` for the 4-byte NAL length prefixes our frames carry.
const NAL_LENGTH_SIZE_MINUS_ONE: u8 = 3;

/// H.265 NAL unit types of the parameter sets kept in an hvcC record.
const HEVC_NAL_VPS: u8 = 32;
const HEVC_NAL_SPS: u8 = 33;
const HEVC_NAL_PPS: u8 = 34;

/// Largest record we accept: parameter sets are a few hundred bytes; anything near the box size
/// limit is garbage.
const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Video parameters from an `AVCDecoderConfigurationRecord` (the body of an `avcC` box).
///
/// Width and height come from the first SPS (cropping applied); the codec string
/// `avc1.PPCCLL` is built from the record's profile, constraint and level bytes in upper-case hex,
/// as the Go original sent it (e.g. `avc1.42C01E`, `avc1.4D401E`).
pub fn h264_params(config_record: Bytes) -> Result<VideoParams, MediaError> {
    let mut avcc: AvccBox = decode_record(AvccBox::TYPE, &config_record, "avcC")?;
    if avcc.length_size_minus_one.get() != NAL_LENGTH_SIZE_MINUS_ONE {
        return Err(MediaError::Unsupported(format!(
            "avcC with {}-byte NAL lengths (only 4 is supported)",
            avcc.length_size_minus_one.get() + 1
        )));
    }
    let sps_bytes = avcc
        .sps_list
        .first()
        .ok_or_else(|| MediaError::InvalidParams("avcC has no SPS".into()))?;
    if avcc.pps_list.is_empty() {
        return Err(MediaError::InvalidParams("avcC has no PPS".into()));
    }
    let sps = h264::parse_sps(sps_bytes)
        .map_err(|e| MediaError::InvalidParams(format!("H.264 SPS: {e}")))?;

    // Records for High profiles must carry chroma format and bit depths; some writers omit
    // them. Fill them from the SPS so the canonical record is complete and encodable.
    if !matches!(avcc.avc_profile_indication, 66 | 77 | 88) {
        avcc.chroma_format
            .get_or_insert(Uint::new(sps.chroma_format_idc & 0b11));
        avcc.bit_depth_luma_minus8
            .get_or_insert(Uint::new(sps.bit_depth_luma_minus8 & 0b111));
        avcc.bit_depth_chroma_minus8
            .get_or_insert(Uint::new(sps.bit_depth_chroma_minus8 & 0b111));
    }

    let codec_string = format!(
        "avc1.{:02X}{:02X}{:02X}",
        avcc.avc_profile_indication, avcc.profile_compatibility, avcc.avc_level_indication
    );
    Ok(VideoParams {
        codec: VideoCodec::H264,
        config_record: encode_record(&avcc, "avcC")?,
        width: sps.width,
        height: sps.height,
        codec_string,
    })
}

/// Video parameters from one SPS and one PPS NAL unit (each with its NAL header byte; a leading
/// Annex B start code is tolerated). Used when parameter sets arrive in-band.
pub fn h264_params_from_sps_pps(sps: &[u8], pps: &[u8]) -> Result<VideoParams, MediaError> {
    let sps = strip_start_code(sps);
    let pps = strip_start_code(pps);
    let parsed =
        h264::parse_sps(sps).map_err(|e| MediaError::InvalidParams(format!("H.264 SPS: {e}")))?;
    if pps.is_empty() || pps[0] & 0x1f != 8 {
        return Err(MediaError::InvalidParams(
            "H.264 PPS: not a PPS NAL unit".into(),
        ));
    }
    let profile = parsed.profile_level_id;
    let high = !matches!(profile.profile_idc, 66 | 77 | 88);
    let avcc = AvccBox {
        avc_profile_indication: profile.profile_idc,
        profile_compatibility: profile.profile_iop,
        avc_level_indication: profile.level_idc,
        length_size_minus_one: Uint::new(NAL_LENGTH_SIZE_MINUS_ONE),
        sps_list: vec![sps.to_vec()],
        pps_list: vec![pps.to_vec()],
        chroma_format: high.then(|| Uint::new(parsed.chroma_format_idc & 0b11)),
        bit_depth_luma_minus8: high.then(|| Uint::new(parsed.bit_depth_luma_minus8 & 0b111)),
        bit_depth_chroma_minus8: high.then(|| Uint::new(parsed.bit_depth_chroma_minus8 & 0b111)),
        sps_ext_list: Vec::new(),
    };
    h264_params(encode_record(&avcc, "avcC")?)
}

/// Video parameters from an `HEVCDecoderConfigurationRecord` (the body of an `hvcC` box).
///
/// The record must hold a VPS, an SPS and a PPS (we always write `hvc1` sample entries, whose
/// parameter sets live out of band). The codec string follows ISO/IEC 14496-15 Annex E:
/// `hvc1.<space><profile>.<compat flags, bit-reversed hex>.<L|H><level>.<constraint bytes>` with
/// trailing zero constraint bytes dropped (at least one kept), e.g. `hvc1.1.6.L93.B0`.
pub fn h265_params(config_record: Bytes) -> Result<VideoParams, MediaError> {
    let hvcc: HvccBox = decode_record(HvccBox::TYPE, &config_record, "hvcC")?;
    if hvcc.length_size_minus_one.get() != NAL_LENGTH_SIZE_MINUS_ONE {
        return Err(MediaError::Unsupported(format!(
            "hvcC with {}-byte NAL lengths (only 4 is supported)",
            hvcc.length_size_minus_one.get() + 1
        )));
    }
    let first_nal = |nal_type: u8| {
        hvcc.nalu_arrays
            .iter()
            .filter(|a| a.nal_unit_type.get() == nal_type)
            .flat_map(|a| a.nalus.iter())
            .next()
    };
    if first_nal(HEVC_NAL_VPS).is_none() || first_nal(HEVC_NAL_PPS).is_none() {
        return Err(MediaError::InvalidParams("hvcC lacks a VPS or PPS".into()));
    }
    let sps_bytes = first_nal(HEVC_NAL_SPS)
        .ok_or_else(|| MediaError::InvalidParams("hvcC has no SPS".into()))?;
    let sps = h265::parse_sps(sps_bytes)
        .map_err(|e| MediaError::InvalidParams(format!("H.265 SPS: {e}")))?;

    Ok(VideoParams {
        codec: VideoCodec::H265,
        codec_string: hevc_codec_string(&hvcc),
        config_record: encode_record(&hvcc, "hvcC")?,
        width: sps.width,
        height: sps.height,
    })
}

/// The ISO/IEC 14496-15 Annex E codec string of an hvcC record, with the `hvc1` prefix.
fn hevc_codec_string(hvcc: &HvccBox) -> String {
    let space = match hvcc.general_profile_space.get() {
        1 => "A",
        2 => "B",
        3 => "C",
        _ => "",
    };
    let tier = if hvcc.general_tier_flag.get() == 0 {
        'L'
    } else {
        'H'
    };
    // The 32 compatibility flags are written in reverse bit order, leading zeros omitted.
    let compat = hvcc.general_profile_compatibility_flags.reverse_bits();
    // Six constraint bytes; trailing zero bytes may be dropped, but keep at least one (what
    // retina and shiguredo emit, and what browsers parse).
    let constraint = hvcc.general_constraint_indicator_flags.get().to_be_bytes();
    let constraint = &constraint[2..];
    let keep = constraint
        .iter()
        .rposition(|&b| b != 0)
        .map_or(1, |last| last + 1);
    let constraint_hex = constraint[..keep]
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(".");
    format!(
        "hvc1.{space}{}.{compat:X}.{tier}{}.{constraint_hex}",
        hvcc.general_profile_idc.get(),
        hvcc.general_level_idc
    )
}

/// Audio parameters from an MPEG-4 `AudioSpecificConfig`.
///
/// Handles the 5-bit object type with its escape (31 → 32 + 6 bits), the sampling frequency
/// index with its explicit 24-bit rate (index 15), and the channel configuration. For explicit
/// SBR/PS signalling (object type 5 or 29) the sample rate is the extension (output) rate, which
/// is what decoders produce and what MP4 writers use as the track timescale; the codec string
/// keeps the signalled type (`mp4a.40.5` for HE-AAC, `mp4a.40.29` for HE-AAC v2).
pub fn aac_params(asc: Bytes) -> Result<AudioParams, MediaError> {
    if asc.len() > MAX_RECORD_BYTES {
        return Err(MediaError::InvalidParams(
            "AudioSpecificConfig too long".into(),
        ));
    }
    let mut bits = BitReader::new(&asc);
    let object_type = read_object_type(&mut bits)?;
    let mut sample_rate = read_sample_rate(&mut bits)?;
    let channel_config = bits.read(4)? as u8;
    let mut channels = channel_count(channel_config)?;
    if matches!(object_type, 5 | 29) {
        // Explicit hierarchical SBR signalling: the extension rate, then the core object type.
        sample_rate = read_sample_rate(&mut bits)?;
        let core_type = read_object_type(&mut bits)?;
        if core_type == 0 {
            return Err(MediaError::InvalidParams(
                "AudioSpecificConfig: null core object type".into(),
            ));
        }
        if object_type == 29 && channels == 1 {
            // Parametric stereo decodes a mono core to two channels.
            channels = 2;
        }
    }
    Ok(AudioParams {
        codec_string: format!("mp4a.40.{object_type}"),
        asc,
        sample_rate,
        channels,
    })
}

fn read_object_type(bits: &mut BitReader<'_>) -> Result<u8, MediaError> {
    let object_type = match bits.read(5)? {
        0 => {
            return Err(MediaError::InvalidParams(
                "AudioSpecificConfig: null object type".into(),
            ));
        }
        31 => 32 + bits.read(6)?,
        t => t,
    };
    // At most 32 + 63 = 95, so the cast is lossless.
    Ok(object_type as u8)
}

fn read_sample_rate(bits: &mut BitReader<'_>) -> Result<u32, MediaError> {
    let rate = match bits.read(4)? {
        15 => bits.read(24)?,
        i => sample_rate_of_index(i as u8)?,
    };
    if rate == 0 {
        return Err(MediaError::InvalidParams(
            "AudioSpecificConfig: sample rate 0".into(),
        ));
    }
    Ok(rate)
}

/// The sampling frequency of an index (ISO/IEC 14496-3 Table 1.18, indexes 0..=12).
fn sample_rate_of_index(index: u8) -> Result<u32, MediaError> {
    const RATES: [u32; 13] = [
        96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025,
        8_000, 7_350,
    ];
    RATES.get(usize::from(index)).copied().ok_or_else(|| {
        MediaError::InvalidParams(format!(
            "AudioSpecificConfig: reserved sampling frequency index {index}"
        ))
    })
}

/// Channel count of an MPEG-4 channel configuration (ISO/IEC 14496-3 Table 1.19, with the
/// 23003-3 additions 11..=14).
fn channel_count(config: u8) -> Result<u16, MediaError> {
    Ok(match config {
        1..=6 => u16::from(config),
        7 | 12 | 14 => 8,
        11 => 7,
        13 => 24,
        0 => {
            return Err(MediaError::Unsupported(
                "AAC channel configuration 0 (program config element)".into(),
            ));
        }
        other => {
            return Err(MediaError::InvalidParams(format!(
                "AudioSpecificConfig: reserved channel configuration {other}"
            )));
        }
    })
}

/// The fields of an `AVCDecoderConfigurationRecord`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcRecordFields {
    pub profile_indication: u8,
    pub profile_compatibility: u8,
    pub level_indication: u8,
    pub length_size_minus_one: u8,
    /// SPS NAL units (with their header byte), in record order.
    pub sps: Vec<Bytes>,
    /// PPS NAL units, in record order.
    pub pps: Vec<Bytes>,
}

/// Splits an `AVCDecoderConfigurationRecord` into its fields.
pub fn avc_record_fields(config_record: &[u8]) -> Result<AvcRecordFields, MediaError> {
    let avcc: AvccBox = decode_record(AvccBox::TYPE, config_record, "avcC")?;
    let to_bytes = |list: &[Vec<u8>]| list.iter().map(|n| Bytes::copy_from_slice(n)).collect();
    Ok(AvcRecordFields {
        profile_indication: avcc.avc_profile_indication,
        profile_compatibility: avcc.profile_compatibility,
        level_indication: avcc.avc_level_indication,
        length_size_minus_one: avcc.length_size_minus_one.get(),
        sps: to_bytes(&avcc.sps_list),
        pps: to_bytes(&avcc.pps_list),
    })
}

/// The parameter sets of an `HEVCDecoderConfigurationRecord`, VPS first, then SPS, then PPS
/// (each NAL unit with its two-byte header), and its NAL length size minus one.
pub fn hevc_parameter_sets(config_record: &[u8]) -> Result<(u8, Vec<Bytes>), MediaError> {
    let hvcc: HvccBox = decode_record(HvccBox::TYPE, config_record, "hvcC")?;
    let mut out = Vec::new();
    for nal_type in [HEVC_NAL_VPS, HEVC_NAL_SPS, HEVC_NAL_PPS] {
        out.extend(
            hvcc.nalu_arrays
                .iter()
                .filter(|a| a.nal_unit_type.get() == nal_type)
                .flat_map(|a| a.nalus.iter())
                .map(|n| Bytes::copy_from_slice(n)),
        );
    }
    Ok((hvcc.length_size_minus_one.get(), out))
}

/// What an H.264 sequence parameter set says about the picture, read with `h264-reader` (the
/// parser retina uses, so both agree on every SPS a camera sends).
#[derive(Debug, Clone, PartialEq)]
pub struct H264SpsFields {
    pub id: u8,
    pub profile_idc: u8,
    /// The byte of `constraint_set0..5_flag` and the two reserved bits, as in the SPS.
    pub constraint_flags: u8,
    pub level_idc: u8,
    /// `pic_width_in_mbs_minus1 + 1`.
    pub width_in_mbs: u32,
    /// `pic_height_in_map_units_minus1 + 1` (map units are field macroblock rows for field
    /// coding).
    pub height_in_map_units: u32,
    /// `frame_crop_{left,right,top,bottom}_offset`, in crop units (0 without cropping).
    pub crop: [u32; 4],
    /// Picture size after cropping.
    pub width: u32,
    pub height: u32,
    /// `time_scale / (2 * num_units_in_tick)` from the VUI timing info, when present.
    pub frame_rate: Option<f64>,
}

/// Parses one SPS NAL unit (header byte included, emulation prevention bytes in place).
pub fn h264_sps_fields(sps_nal: &[u8]) -> Result<H264SpsFields, MediaError> {
    use h264_reader::nal::sps::SeqParameterSet;
    use h264_reader::rbsp::{BitReader, decode_nal};

    if sps_nal.len() > MAX_RECORD_BYTES || sps_nal.first().is_none_or(|h| h & 0x1f != 7) {
        return Err(MediaError::InvalidParams(
            "H.264 SPS: not an SPS NAL unit".into(),
        ));
    }
    let rbsp =
        decode_nal(sps_nal).map_err(|e| MediaError::InvalidParams(format!("H.264 SPS: {e}")))?;
    let sps = SeqParameterSet::from_bits(BitReader::new(&rbsp[..]))
        .map_err(|e| MediaError::InvalidParams(format!("H.264 SPS: {e:?}")))?;
    let (width, height) = sps
        .pixel_dimensions()
        .map_err(|e| MediaError::InvalidParams(format!("H.264 SPS: {e:?}")))?;
    let crop = sps.frame_cropping.as_ref().map_or([0; 4], |c| {
        [c.left_offset, c.right_offset, c.top_offset, c.bottom_offset]
    });
    Ok(H264SpsFields {
        id: sps.seq_parameter_set_id.id(),
        profile_idc: sps.profile_idc.into(),
        constraint_flags: sps.constraint_flags.into(),
        level_idc: sps.level_idc,
        width_in_mbs: sps.pic_width_in_mbs(),
        height_in_map_units: sps.pic_height_in_map_units(),
        crop,
        width,
        height,
        frame_rate: sps.fps().filter(|f| f.is_finite() && *f > 0.0),
    })
}

/// The leading fields of an MPEG-4 `AudioSpecificConfig`, as signalled (for HE-AAC: the SBR
/// object type and the core sampling frequency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfigFields {
    pub object_type: u8,
    /// `samplingFrequencyIndex`; 15 means an explicit rate.
    pub sample_rate_index: u8,
    pub sample_rate: u32,
    pub channel_config: u8,
}

/// Reads the object type, sampling frequency and channel configuration of an
/// `AudioSpecificConfig`.
pub fn aac_config_fields(asc: &[u8]) -> Result<AacConfigFields, MediaError> {
    let mut bits = BitReader::new(asc);
    let object_type = read_object_type(&mut bits)?;
    let sample_rate_index = bits.read(4)? as u8;
    let sample_rate = match sample_rate_index {
        15 => bits.read(24)?,
        i => sample_rate_of_index(i)?,
    };
    let channel_config = bits.read(4)? as u8;
    Ok(AacConfigFields {
        object_type,
        sample_rate_index,
        sample_rate,
        channel_config,
    })
}

/// Decodes a configuration record body by giving it the box header it lives under in an MP4.
fn decode_record<T: Decode>(box_type: BoxType, record: &[u8], name: &str) -> Result<T, MediaError> {
    if record.len() > MAX_RECORD_BYTES {
        return Err(MediaError::InvalidParams(format!("{name} record too long")));
    }
    let mut boxed = Vec::with_capacity(record.len() + 8);
    // Bounded by MAX_RECORD_BYTES above, so the size fits in 32 bits.
    boxed.extend_from_slice(&((record.len() + 8) as u32).to_be_bytes());
    boxed.extend_from_slice(box_type.as_bytes());
    boxed.extend_from_slice(record);
    let (decoded, used) =
        T::decode(&boxed).map_err(|e| MediaError::InvalidParams(format!("{name}: {e}")))?;
    if used != boxed.len() {
        return Err(MediaError::InvalidParams(format!("{name}: trailing bytes")));
    }
    Ok(decoded)
}

/// Encodes a configuration box and returns its body (the record without the box header).
fn encode_record<T: Encode>(b: &T, name: &str) -> Result<Bytes, MediaError> {
    let encoded = b
        .encode_to_vec()
        .map_err(|e| MediaError::InvalidParams(format!("{name}: {e}")))?;
    // Our records are far below 4 GiB, so the encoder wrote the 8-byte compact header.
    Ok(Bytes::from(encoded).slice(8..))
}

fn strip_start_code(nal: &[u8]) -> &[u8] {
    nal.strip_prefix(&[0, 0, 0, 1])
        .or_else(|| nal.strip_prefix(&[0, 0, 1]))
        .unwrap_or(nal)
}

/// MSB-first bit reader for the few fields of an AudioSpecificConfig we need.
struct BitReader<'a> {
    data: &'a [u8],
    bit_pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, bit_pos: 0 }
    }

    /// Reads `n` (at most 32) bits.
    fn read(&mut self, n: u32) -> Result<u32, MediaError> {
        let mut value = 0u32;
        for _ in 0..n {
            let byte = self
                .data
                .get(self.bit_pos / 8)
                .ok_or_else(|| MediaError::InvalidParams("AudioSpecificConfig truncated".into()))?;
            let bit = (byte >> (7 - self.bit_pos % 8)) & 1;
            value = (value << 1) | u32::from(bit);
            self.bit_pos += 1;
        }
        Ok(value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// The avcC record of `assets/demo.mp4` (H.264 Main, level 3.0, 640x360).
    pub(crate) const DEMO_AVCC: &[u8] = &[
        0x01, 0x4d, 0x40, 0x1e, 0xff, 0xe1, 0x00, 0x19, 0x67, 0x4d, 0x40, 0x1e, 0xd9, 0x00, 0xa0,
        0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f,
        0x16, 0x2e, 0x48, 0x01, 0x00, 0x04, 0x68, 0xeb, 0xcc, 0xb2,
    ];

    /// An hvcC record written by ffmpeg/x265 for a 320x180 Main-profile clip (level 2.0), with
    /// only its VPS, SPS and PPS arrays (the SEI array is dropped to keep this short).
    pub(crate) const X265_HVCC: &[u8] = &[
        0x01, 0x01, 0x60, 0x00, 0x00, 0x00, 0x90, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3c, 0xf0, 0x00,
        0xfc, 0xfd, 0xf8, 0xf8, 0x00, 0x00, 0x0f, 0x03, 0xa0, 0x00, 0x01, 0x00, 0x18, 0x40, 0x01,
        0x0c, 0x01, 0xff, 0xff, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00,
        0x00, 0x03, 0x00, 0x3c, 0x95, 0x98, 0x09, 0xa1, 0x00, 0x01, 0x00, 0x2b, 0x42, 0x01, 0x01,
        0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x3c,
        0xa0, 0x0a, 0x08, 0x0b, 0x9f, 0x79, 0x65, 0x66, 0x92, 0x4c, 0xaf, 0x01, 0x68, 0x08, 0x00,
        0x00, 0x03, 0x00, 0x08, 0x00, 0x00, 0x03, 0x00, 0xc8, 0x40, 0xa2, 0x00, 0x01, 0x00, 0x07,
        0x44, 0x01, 0xc1, 0x72, 0xb4, 0x62, 0x40,
    ];

    /// AAC-LC, 48 kHz, mono.
    pub(crate) const LC_48K_MONO: &[u8] = &[0x11, 0x88];

    /// A deterministic byte generator (xorshift64*) so fuzz-style tests are reproducible.
    pub(crate) struct Noise(u64);

    impl Noise {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed.max(1))
        }

        pub(crate) fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next_u64() as u8).collect()
        }
    }

    /// Packs (value, bit count) pairs MSB-first, zero-padding the last byte.
    fn pack_bits(fields: &[(u32, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut acc = 0u64;
        let mut n = 0u32;
        for &(value, bits) in fields {
            acc = (acc << bits) | u64::from(value);
            n += bits;
            while n >= 8 {
                out.push((acc >> (n - 8)) as u8);
                n -= 8;
            }
        }
        if n > 0 {
            out.push((acc << (8 - n)) as u8);
        }
        out
    }

    #[test]
    fn h264_demo_record() {
        let p = h264_params(Bytes::from_static(DEMO_AVCC)).unwrap();
        assert_eq!(p.codec, VideoCodec::H264);
        assert_eq!(p.codec_string, "avc1.4D401E");
        assert_eq!((p.width, p.height), (640, 360));
        // Main profile: the canonical record is the input itself.
        assert_eq!(&p.config_record[..], DEMO_AVCC);
        // Canonical form is a fixed point.
        assert_eq!(h264_params(p.config_record.clone()).unwrap(), p);
    }

    #[test]
    fn h264_from_sps_pps_matches_record() {
        let from_record = h264_params(Bytes::from_static(DEMO_AVCC)).unwrap();
        let sps = &DEMO_AVCC[8..8 + 0x19];
        let pps = &DEMO_AVCC[8 + 0x19 + 3..];
        assert_eq!(h264_params_from_sps_pps(sps, pps).unwrap(), from_record);
        let mut annexb = vec![0, 0, 0, 1];
        annexb.extend_from_slice(sps);
        assert_eq!(h264_params_from_sps_pps(&annexb, pps).unwrap(), from_record);
        assert!(h264_params_from_sps_pps(pps, sps).is_err());
    }

    #[test]
    fn h264_record_and_sps_fields() {
        let r = avc_record_fields(DEMO_AVCC).unwrap();
        assert_eq!(
            (
                r.profile_indication,
                r.profile_compatibility,
                r.level_indication
            ),
            (0x4d, 0x40, 0x1e)
        );
        assert_eq!(r.length_size_minus_one, 3);
        assert_eq!((r.sps.len(), r.pps.len()), (1, 1));
        assert_eq!(&r.sps[0][..], &DEMO_AVCC[8..8 + 0x19]);
        let f = h264_sps_fields(&r.sps[0]).unwrap();
        assert_eq!((f.id, f.profile_idc, f.level_idc), (0, 77, 30));
        assert_eq!(f.constraint_flags, 0x40);
        // 640x360: 40 x 23 macroblocks, 8 rows cropped at the bottom (4 units of 2 lines).
        assert_eq!((f.width_in_mbs, f.height_in_map_units), (40, 23));
        assert_eq!(f.crop, [0, 0, 0, 4]);
        assert_eq!((f.width, f.height), (640, 360));
        assert_eq!(f.frame_rate, Some(25.0));
        assert!(h264_sps_fields(&r.pps[0]).is_err(), "a PPS is not an SPS");
        assert!(h264_sps_fields(&r.sps[0][..6]).is_err(), "truncated");
    }

    #[test]
    fn aac_config_fields_as_signalled() {
        let f = aac_config_fields(LC_48K_MONO).unwrap();
        assert_eq!(
            f,
            AacConfigFields {
                object_type: 2,
                sample_rate_index: 3,
                sample_rate: 48_000,
                channel_config: 1
            }
        );
        // HE-AAC: the SBR object type and the core rate (24 kHz), as signalled first.
        let he = pack_bits(&[(5, 5), (6, 4), (2, 4), (3, 4), (2, 5), (0, 3)]);
        let f = aac_config_fields(&he).unwrap();
        assert_eq!(
            (f.object_type, f.sample_rate, f.channel_config),
            (5, 24_000, 2)
        );
        let explicit = pack_bits(&[(2, 5), (15, 4), (22_050, 24), (2, 4)]);
        let f = aac_config_fields(&explicit).unwrap();
        assert_eq!((f.sample_rate_index, f.sample_rate), (15, 22_050));
        assert!(aac_config_fields(&[0x11]).is_err());
        assert!(aac_config_fields(&pack_bits(&[(2, 5), (13, 4), (1, 4)])).is_err());
    }

    #[test]
    fn h264_rejects_other_nal_length_sizes() {
        let mut record = DEMO_AVCC.to_vec();
        record[4] = 0xfd; // lengthSizeMinusOne = 1
        assert!(matches!(
            h264_params(Bytes::from(record)),
            Err(MediaError::Unsupported(_))
        ));
    }

    #[test]
    fn h265_record() {
        let p = h265_params(Bytes::from_static(X265_HVCC)).unwrap();
        assert_eq!(p.codec, VideoCodec::H265);
        assert_eq!(p.codec_string, "hvc1.1.6.L60.90");
        assert_eq!((p.width, p.height), (320, 180));
        assert_eq!(h265_params(p.config_record.clone()).unwrap(), p);
    }

    #[test]
    fn hevc_codec_strings_follow_annex_e() {
        let mut hvcc: HvccBox = decode_record(HvccBox::TYPE, X265_HVCC, "hvcC").unwrap();
        hvcc.general_level_idc = 93;
        hvcc.general_constraint_indicator_flags = Uint::new(0xB0 << 40);
        assert_eq!(hevc_codec_string(&hvcc), "hvc1.1.6.L93.B0");
        hvcc.general_level_idc = 63;
        hvcc.general_constraint_indicator_flags = Uint::new(0x90 << 40);
        assert_eq!(hevc_codec_string(&hvcc), "hvc1.1.6.L63.90");
        // Main 10, high tier, profile space 0, two constraint bytes.
        hvcc.general_profile_idc = Uint::new(2);
        hvcc.general_profile_compatibility_flags = 0x2000_0000;
        hvcc.general_tier_flag = Uint::new(1);
        hvcc.general_level_idc = 120;
        hvcc.general_constraint_indicator_flags = Uint::new(0xB004_0000_0000);
        assert_eq!(hevc_codec_string(&hvcc), "hvc1.2.4.H120.B0.04");
        hvcc.general_constraint_indicator_flags = Uint::new(0);
        hvcc.general_profile_space = Uint::new(1);
        assert_eq!(hevc_codec_string(&hvcc), "hvc1.A2.4.H120.00");
    }

    #[test]
    fn aac_variants() {
        let lc = aac_params(Bytes::from_static(LC_48K_MONO)).unwrap();
        assert_eq!(lc.codec_string, "mp4a.40.2");
        assert_eq!((lc.sample_rate, lc.channels), (48_000, 1));

        // 44.1 kHz stereo LC.
        let p = aac_params(Bytes::from(pack_bits(&[(2, 5), (4, 4), (2, 4), (0, 3)]))).unwrap();
        assert_eq!(
            (p.codec_string.as_str(), p.sample_rate, p.channels),
            ("mp4a.40.2", 44_100, 2)
        );

        // HE-AAC with explicit SBR: 24 kHz core, 48 kHz output.
        let he = pack_bits(&[(5, 5), (6, 4), (2, 4), (3, 4), (2, 5), (0, 3)]);
        let p = aac_params(Bytes::from(he)).unwrap();
        assert_eq!(
            (p.codec_string.as_str(), p.sample_rate, p.channels),
            ("mp4a.40.5", 48_000, 2)
        );

        // HE-AAC v2 (PS): mono core, stereo output.
        let ps = pack_bits(&[(29, 5), (6, 4), (1, 4), (3, 4), (2, 5), (0, 3)]);
        let p = aac_params(Bytes::from(ps)).unwrap();
        assert_eq!((p.codec_string.as_str(), p.channels), ("mp4a.40.29", 2));

        // Escaped object type (31 → 32 + 10 = 42) and an explicit 24-bit rate.
        let esc = pack_bits(&[(31, 5), (10, 6), (15, 4), (22_050, 24), (6, 4)]);
        let p = aac_params(Bytes::from(esc)).unwrap();
        assert_eq!(
            (p.codec_string.as_str(), p.sample_rate, p.channels),
            ("mp4a.40.42", 22_050, 6)
        );

        // 7.1 channels.
        let p = aac_params(Bytes::from(pack_bits(&[(2, 5), (3, 4), (7, 4)]))).unwrap();
        assert_eq!(p.channels, 8);
    }

    #[test]
    fn aac_rejects_bad_configs() {
        for fields in [
            vec![(0, 5), (3, 4), (1, 4)],           // null object type
            vec![(2, 5), (13, 4), (1, 4)],          // reserved frequency index
            vec![(2, 5), (15, 4), (0, 24), (1, 4)], // explicit rate 0
            vec![(2, 5), (3, 4), (0, 4)],           // channel config 0 (PCE)
            vec![(2, 5), (3, 4), (9, 4)],           // reserved channel config
        ] {
            assert!(
                aac_params(Bytes::from(pack_bits(&fields))).is_err(),
                "{fields:?}"
            );
        }
        assert!(aac_params(Bytes::new()).is_err());
        assert!(aac_params(Bytes::from_static(&[0x11])).is_err());
    }

    #[test]
    fn hostile_input_never_panics() {
        let mut noise = Noise::new(0x5eed);
        let valid: [&[u8]; 3] = [DEMO_AVCC, X265_HVCC, LC_48K_MONO];
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for v in valid {
            // Every truncation and every single-byte corruption of the valid records.
            inputs.extend((0..v.len()).map(|n| v[..n].to_vec()));
            for i in 0..v.len() {
                let mut c = v.to_vec();
                c[i] ^= (noise.next_u64() as u8) | 1;
                inputs.push(c);
            }
        }
        for len in 0..300 {
            inputs.push(noise.bytes(len % 120));
        }
        for input in inputs {
            let b = Bytes::from(input);
            let _ = h264_params(b.clone());
            let _ = h265_params(b.clone());
            let _ = aac_params(b.clone());
            let half = b.len() / 2;
            let _ = h264_params_from_sps_pps(&b[..half], &b[half..]);
            let _ = avc_record_fields(&b);
            let _ = h264_sps_fields(&b);
            let _ = aac_config_fields(&b);
            // As an SPS NAL unit whatever the first byte says.
            let mut nal = b.to_vec();
            if let Some(h) = nal.first_mut() {
                *h = 0x67;
            }
            let _ = h264_sps_fields(&nal);
        }
        assert!(h264_params(Bytes::new()).is_err());
        assert!(h265_params(Bytes::from_static(&DEMO_AVCC[..10])).is_err());
    }
}
