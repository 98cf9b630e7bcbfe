//! The stream model shared by the config loader, the database and the API: what a camera is.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// One camera or virtual camera, as stored in the `streams` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub id: Uuid,
    /// Free-form display name (ours; the Go original had none).
    pub name: String,
    pub source: Source,
    /// Live outputs, in the order they were configured (the Go `/status` keeps that order).
    pub outputs: Vec<OutputType>,
    /// `None` inherits `[on_demand] enabled`.
    pub on_demand: Option<bool>,
    /// Disabled streams stay in the database but do not run and are hidden from the Go routes.
    pub enabled: bool,
    /// Go per-stream log level (`v`, `vv`, `vvv`).
    pub verbose: String,
    pub archive: ArchiveSpec,
    pub retention: RetentionSpec,
}

impl StreamSpec {
    pub fn has_output(&self, o: OutputType) -> bool {
        self.outputs.contains(&o)
    }

    /// Whether `other` runs exactly like `self`: same source, outputs, on-demand and enabled
    /// flags, and recorder settings. Only the other fields differ (name, retention, S3 bucket and
    /// prefix, which the uploader reads from the row at upload time, the Go log level), so a
    /// running stream takes the new spec without restarting its source, viewers and recorder.
    pub fn same_media_path(&self, other: &StreamSpec) -> bool {
        let (a, b) = (&self.archive, &other.archive);
        self.id == other.id
            && self.source == other.source
            && self.outputs == other.outputs
            && self.on_demand == other.on_demand
            && self.enabled == other.enabled
            && a.recording == b.recording
            && a.ms_per_file == b.ms_per_file
            && a.storage == b.storage
            && a.directory == b.directory
    }
}

/// Where a stream's media comes from. `Debug` masks the URL's secrets (see [`crate::redact`]).
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    Rtsp {
        /// `rtsp://` or `rtsps://`, credentials may be embedded.
        url: String,
        transport: RtspTransport,
    },
    File {
        /// Path of an MP4 file (H.264/H.265 video, optional AAC).
        path: String,
        looping: bool,
    },
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Rtsp { .. } => "rtsp",
            Source::File { .. } => "file",
        }
    }

    /// The URL for display: RTSP URLs with their secrets masked, file paths as they are.
    pub fn display_url(&self) -> String {
        match self {
            Source::Rtsp { url, .. } => crate::redact::mask_url(url),
            Source::File { path, .. } => path.clone(),
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Rtsp { url, transport } => f
                .debug_struct("Rtsp")
                .field("url", &crate::redact::mask_url(url))
                .field("transport", transport)
                .finish(),
            Source::File { path, looping } => f
                .debug_struct("File")
                .field("path", path)
                .field("looping", looping)
                .finish(),
        }
    }
}

/// RTSP transport. TCP interleaved is the default: it crosses NAT and firewalls and never reorders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    #[default]
    Tcp,
    Udp,
}

impl RtspTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            RtspTransport::Tcp => "tcp",
            RtspTransport::Udp => "udp",
        }
    }
}

/// A live output type. The Go `/status` reports them as integers (its enum had no JSON names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputType {
    Mse,
    Hls,
}

impl OutputType {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputType::Mse => "mse",
            OutputType::Hls => "hls",
        }
    }

    /// The Go original's enum value: 2 = hls, 3 = mse.
    pub fn go_code(self) -> u8 {
        match self {
            OutputType::Hls => 2,
            OutputType::Mse => 3,
        }
    }
}

impl fmt::Display for OutputType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an output type name was refused. The messages are the Go original's, which clients may match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputTypeError {
    #[error("stream type is not supported. Type: '{0}'")]
    NotSupported(String),
    #[error("stream type does not exists. Type: '{0}'")]
    Unknown(String),
}

/// Parses an output type name case-insensitively, with the Go original's two error messages.
pub fn parse_output_type(name: &str) -> Result<OutputType, OutputTypeError> {
    match name.to_ascii_lowercase().as_str() {
        "mse" => Ok(OutputType::Mse),
        "hls" => Ok(OutputType::Hls),
        "rtsp" | "local_file" => Err(OutputTypeError::NotSupported(name.to_owned())),
        _ => Err(OutputTypeError::Unknown(name.to_owned())),
    }
}

/// Where archive segments go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    #[default]
    Filesystem,
    S3,
}

impl StorageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::Filesystem => "filesystem",
            StorageKind::S3 => "s3",
        }
    }

    pub fn parse(s: &str) -> Option<StorageKind> {
        match s {
            "filesystem" => Some(StorageKind::Filesystem),
            "s3" => Some(StorageKind::S3),
            _ => None,
        }
    }
}

/// Per-stream archive settings. `None` fields fall back to `[archive]` / `[s3]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveSpec {
    /// The stream records when this and `[archive] recording` are both true.
    pub recording: bool,
    pub ms_per_file: Option<u32>,
    pub storage: StorageKind,
    pub directory: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
}

/// Per-stream retention limits; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionSpec {
    pub max_age_s: Option<i64>,
    pub max_bytes: Option<i64>,
}

/// Live flags of one stream, as `/status` reports them (go-original.md §2.3).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStatus {
    /// Codecs are known after a dial or file open.
    pub status: bool,
    /// Last known reachability of the source.
    pub online: bool,
    /// The upstream loop is running (dialing or receiving).
    pub streaming: bool,
    /// Attached MSE viewers.
    pub viewers: u32,
    pub last_health_check: Option<chrono::DateTime<chrono::Utc>>,
    pub last_health_error: String,
    /// RFC 6381 codec strings of the tracks being delivered, in track order.
    pub codecs: Vec<String>,
    /// Tracks left out and why (e.g. G.711 audio, which fMP4/MSE cannot carry).
    pub skipped_tracks: Vec<String>,
    /// Times a lagging consumer (viewer, HLS writer, recorder) was skipped ahead to a keyframe.
    pub lag_skips: u64,
    /// The codec parameters being delivered (`None` while the source has none).
    pub params: Option<std::sync::Arc<crate::media::StreamParams>>,
    /// Source sessions started (dials or file opens) by this runtime; every one after the first
    /// is a reconnect.
    pub source_sessions: u64,
    /// Source sessions that ended with an error (each followed by a backoff and a retry).
    pub source_failures: u64,
}
