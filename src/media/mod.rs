//! Media types and formats: codec parameters, frames, fragmented-MP4 writing and MP4 reading,
//! progressive-MP4 writing for exports, MPEG-TS segments for legacy HLS players.
//!
//! This module knows nothing about HTTP, SQL or S3: bytes and frames in, frames and fMP4 out.
//!
//! Timescales: video tracks use 90 kHz (RTP's video clock); audio tracks use their sample rate.
//! Track ids in every init segment we write: video = 1, audio = 2 (audio alone = 1).

pub mod codec;
pub mod fmp4;
pub mod mp4file;
pub mod progressive;
pub mod ts;

use std::sync::Arc;

use bytes::Bytes;

/// Video timescale (ticks per second) used everywhere.
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// Errors from parsing or writing media. Messages say what was wrong with which input.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("invalid codec parameters: {0}")]
    InvalidParams(String),
    #[error("unsupported codec: {0}")]
    Unsupported(String),
    #[error("invalid MP4: {0}")]
    InvalidMp4(String),
    #[error("cannot write MP4: {0}")]
    Mux(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Which elementary stream a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    Video,
    Audio,
}

/// Video codecs we carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    H265,
}

/// Parameters of a video track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoParams {
    pub codec: VideoCodec,
    /// The decoder configuration record: `AVCDecoderConfigurationRecord` (avcC body) for H.264,
    /// `HEVCDecoderConfigurationRecord` (hvcC body) for H.265.
    pub config_record: Bytes,
    pub width: u16,
    pub height: u16,
    /// RFC 6381 codec string: `avc1.PPCCLL` (upper-case hex, as the Go original sent) or
    /// `hvc1.…`.
    pub codec_string: String,
}

/// Parameters of an AAC audio track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioParams {
    /// The MPEG-4 AudioSpecificConfig bytes.
    pub asc: Bytes,
    pub sample_rate: u32,
    pub channels: u16,
    /// `mp4a.40.<audio object type>`.
    pub codec_string: String,
}

/// The two G.711 companding laws (RTP static payload types 0 and 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum G711Law {
    /// µ-law (`PCMU`, payload type 0).
    Pcmu,
    /// A-law (`PCMA`, payload type 8).
    Pcma,
}

impl G711Law {
    /// The RTP encoding name (`PCMU`, `PCMA`).
    pub fn name(self) -> &'static str {
        match self {
            G711Law::Pcmu => "PCMU",
            G711Law::Pcma => "PCMA",
        }
    }
}

/// A camera's G.711 audio track. fMP4 (MSE, HLS, recordings) cannot carry it, so it is not part
/// of [`StreamParams`] and its frames never reach the muxers: the hub keeps it beside the other
/// tracks ([`crate::hub::Hub::publish_g711`]) for WebRTC, whose browsers all decode G.711.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct G711Params {
    pub law: G711Law,
    /// RTP clock rate from the camera's SDP (8000 for every camera seen; others are kept as said).
    pub clock_rate: u32,
    pub channels: u16,
}

/// A run of G.711 samples as the camera packetised it (one byte per sample and channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct G711Frame {
    /// Presentation time of the first sample, at `params.clock_rate` (continuous across source
    /// sessions once published, like the hub's other timestamps).
    pub pts: i64,
    pub data: Bytes,
    pub params: G711Params,
}

/// Parameters of everything a source delivers. A change of any parameter is a new value with a
/// higher `version`; consumers start a new init segment when the version changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamParams {
    pub version: u64,
    pub video: Option<VideoParams>,
    pub audio: Option<AudioParams>,
}

impl StreamParams {
    /// The comma-separated codec list sent to MSE clients (video first), e.g.
    /// `avc1.42C01E,mp4a.40.2`.
    pub fn codec_list(&self) -> String {
        self.video
            .iter()
            .map(|v| v.codec_string.as_str())
            .chain(self.audio.iter().map(|a| a.codec_string.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Timescale of a track.
    pub fn timescale(&self, track: TrackKind) -> u32 {
        match track {
            TrackKind::Video => VIDEO_TIMESCALE,
            TrackKind::Audio => self.audio.as_ref().map_or(48_000, |a| a.sample_rate),
        }
    }

    /// Same codecs, ignoring the version number.
    pub fn same_codecs(&self, other: &StreamParams) -> bool {
        self.video == other.video && self.audio == other.audio
    }
}

/// One access unit (a whole video picture or one AAC frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub track: TrackKind,
    /// Decode timestamp in the track's timescale; monotonically increasing within a track.
    pub dts: i64,
    /// Duration in the track's timescale (time until the next frame of the track).
    pub duration: u32,
    /// Presentation time minus decode time, in the track's timescale (B-frames).
    pub cts_offset: i32,
    /// A random-access point (IDR/CRA for video; every AAC frame is one).
    pub keyframe: bool,
    /// Wall-clock time the frame was received (or is due, for file sources), µs since the epoch.
    pub wallclock_us: i64,
    /// H.264/H.265: length-prefixed NAL units (4-byte big-endian lengths), no parameter sets
    /// needed in-band. AAC: raw frame (no ADTS header).
    pub data: Bytes,
    /// The parameters this frame is encoded with.
    pub params: Arc<StreamParams>,
}
