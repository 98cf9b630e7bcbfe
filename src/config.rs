//! Configuration: the Go original's `conf.toml` / `conf.json` keys, plus our additions.
//!
//! The Go server's keys are accepted unchanged (see `shared/reference/go-original.md` §1) so an existing
//! config file keeps working. Its pitfalls are fixed here:
//! * any file path works (`./conf.toml`, `my.conf.toml`); the format is picked from the last extension;
//! * a missing or malformed file is an error that names the file and the offending key;
//! * ports default to 8090 (video) and 8091 (API) instead of "random";
//! * `ms_per_file` defaults to 30000 ms (the original's default was 30 ms);
//! * an invalid `guid` or output type is an error naming the entry, not a silent skip or a crash;
//! * a missing archive `type` means filesystem.
//!
//! Unknown keys are ignored, as in the original, but each one is reported as a warning so typos show up.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use uuid::Uuid;

use crate::stream::{
    ArchiveSpec, OutputType, RtspTransport, Source, StorageKind, StreamSpec, parse_output_type,
};

/// Environment variable that overrides `[database] url`.
pub const DATABASE_URL_ENV: &str = "VIDEO_SERVER_DATABASE_URL";

/// Environment variables that override `[cluster] node_id` and `[cluster] advertise_host`, so
/// several containers can share one config file.
pub const NODE_ID_ENV: &str = "VIDEO_SERVER_NODE_ID";
pub const ADVERTISE_HOST_ENV: &str = "VIDEO_SERVER_ADVERTISE_HOST";

/// Default database: a SQLite file next to the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/video-server.db";

/// Longest archive segment we accept (one hour: Go configs with 10-minute or hourly files must
/// start). Segments are the unit of time queries, so a cap keeps every "which segment holds time
/// T" lookup a bounded index range (DESIGN.md §4, `db::segments::MAX_SEGMENT_US`).
pub const MAX_MS_PER_FILE: u64 = 3_600_000;

/// Default `[archive] max_drift_ms`: how far the recorder's wall clock may drift from the
/// frames' receive times before it is re-anchored at the next segment.
pub const DEFAULT_MAX_DRIFT: std::time::Duration = std::time::Duration::from_millis(1000);

/// Segment lengths above this are accepted with a warning: retention deletes and S3 uploads whole
/// segments, and every time query scans further back, so 5 minutes or less is what we recommend.
pub const LONG_MS_PER_FILE: u64 = 300_000;

/// Shortest archive segment we accept: below a second, per-file overhead dominates.
pub const MIN_MS_PER_FILE: u64 = 1_000;

/// Default archive segment length when neither the stream nor `[archive]` sets one.
pub const DEFAULT_MS_PER_FILE: u64 = 30_000;

/// Errors while loading or validating a configuration file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: unsupported format (expected a .toml or .json file name)")]
    Format { path: PathBuf },
    #[error("config file {path}: key `{key}`: {message}")]
    Key {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}: {entry}: {message}")]
    Entry {
        path: PathBuf,
        entry: String,
        message: String,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole configuration file. Field names are the Go original's keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub api: ApiConfig,
    pub video: VideoConfig,
    pub hls: HlsConfig,
    pub archive: ArchiveConfig,
    pub on_demand: OnDemandConfig,
    pub cors: CorsConfig,
    pub rtsp_streams: Vec<RtspStreamEntry>,
    pub local_files: Vec<LocalFileEntry>,
    /// Ours: where the SQL index lives.
    pub database: DatabaseConfig,
    /// Ours: an S3-compatible object store for the archive. When absent but `[archive] minio_settings`
    /// has a host, the MinIO settings are mapped onto it.
    pub s3: Option<S3Config>,
    /// Ours: log output.
    pub log: LogConfig,
    /// Ours: archive retention (global free-disk floor and pass interval).
    pub retention: RetentionConfig,
    /// Ours: access control (tokens, signed URLs, audit).
    pub auth: AuthConfig,
    /// Ours: where file sources may be read from.
    pub sources: SourcesConfig,
    /// Ours: how much one stream, one client and the whole server may hold at once.
    pub limits: LimitsConfig,
    /// Ours: WebRTC playback over WHEP (README "WebRTC").
    pub webrtc: WebRtcConfig,
    /// Ours: several server processes on one Postgres index and one S3 store (issue 14).
    pub cluster: ClusterConfig,
    /// Where the file was read from (not a key). Relative paths in the file stay relative to the
    /// working directory, as in the original.
    #[serde(skip)]
    pub source_path: Option<PathBuf>,
    /// What loading found worth a warning (unknown keys, keys matched case-insensitively, long
    /// segments), logged by the binary once logging is set up.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// `[api]`: the REST API listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    /// The Go original defaults to off; we default to on when the key is absent, because the API is
    /// how cameras are managed. An explicit `enabled = false` is respected.
    pub enabled: Option<bool>,
    pub host: String,
    pub port: Option<u16>,
    pub mode: String,
    pub verbose: String,
}

impl ApiConfig {
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(8091)
    }
}

/// `[video]`: the media listener (MSE WebSocket, archive WebSocket, HLS files, web UI).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VideoConfig {
    pub host: String,
    pub port: Option<u16>,
    pub mode: String,
    pub verbose: String,
}

impl VideoConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(8090)
    }
}

/// `[hls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HlsConfig {
    pub ms_per_segment: u64,
    pub directory: String,
    pub window_size: usize,
    pub window_capacity: usize,
    /// Ours: `fmp4` (default, version-7 playlists with `EXT-X-MAP`) or `mpegts` (version-3
    /// playlists with `.ts` segments, as the Go original wrote, for players without fMP4).
    pub segment_format: SegmentFormat,
}

/// Container of live HLS segments (`[hls] segment_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentFormat {
    #[default]
    Fmp4,
    #[serde(alias = "ts", alias = "MPEGTS", alias = "MpegTS")]
    Mpegts,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            ms_per_segment: 10_000,
            directory: "./hls".into(),
            window_size: 5,
            window_capacity: 10,
            segment_format: SegmentFormat::Fmp4,
        }
    }
}

/// `[archive]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ArchiveConfig {
    /// Global switch: streams may record only when this is true.
    pub recording: bool,
    /// Global switch: archive ranges and playback are served only when this is true.
    pub serving: bool,
    /// Default archive directory for streams (`./mp4` when empty).
    pub directory: String,
    /// Default target segment length in ms (30000 when 0).
    pub ms_per_file: u64,
    pub minio_settings: MinioSettings,
    /// Ours: archive playback sends `pause` after this much media (the original's 5 minutes).
    pub playback_chunk_s: u64,
    /// Ours: a paused playback session is closed after this long without `more` (10 minutes).
    pub playback_idle_s: u64,
    /// Ours: most archive playback sessions at once (0 = default 64). `[limits]
    /// archive_sessions_total` wins when set.
    pub playback_max_sessions: usize,
    /// Ours: the recorder re-anchors a session's wall clock at the next segment boundary when the
    /// camera's timeline drifts from the server clock by more than this (default 1000; 0 turns
    /// re-anchoring off).
    pub max_drift_ms: Option<u64>,
    /// Ours: how often each storage root's marker is checked, and an unavailable root retried,
    /// in seconds (0 = default 30).
    pub root_check_s: u64,
    /// Ours: further directories a stream's `archive.directory` may lie under (besides
    /// `directory`). See [`Config::storage_roots`].
    pub roots: Vec<String>,
}

impl ArchiveConfig {
    pub fn directory(&self) -> &str {
        if self.directory.is_empty() {
            "./mp4"
        } else {
            &self.directory
        }
    }
    pub fn ms_per_file(&self) -> u64 {
        if self.ms_per_file == 0 {
            DEFAULT_MS_PER_FILE
        } else {
            self.ms_per_file
        }
    }

    pub fn playback_chunk(&self) -> std::time::Duration {
        std::time::Duration::from_secs(if self.playback_chunk_s == 0 {
            300
        } else {
            self.playback_chunk_s
        })
    }

    pub fn playback_idle(&self) -> std::time::Duration {
        std::time::Duration::from_secs(if self.playback_idle_s == 0 {
            600
        } else {
            self.playback_idle_s
        })
    }

    /// Drift that makes the recorder re-anchor its wall clock (`None`: never).
    pub fn max_drift(&self) -> Option<std::time::Duration> {
        match self.max_drift_ms {
            None => Some(DEFAULT_MAX_DRIFT),
            Some(0) => None,
            Some(ms) => Some(std::time::Duration::from_millis(ms)),
        }
    }

    pub fn root_check_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(if self.root_check_s == 0 {
            30
        } else {
            self.root_check_s
        })
    }

    pub fn max_playback_sessions(&self) -> usize {
        if self.playback_max_sessions == 0 {
            64
        } else {
            self.playback_max_sessions
        }
    }
}

/// `[archive] minio_settings = { ... }` of the Go original.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct MinioSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub default_bucket: String,
    pub default_path: String,
}

impl fmt::Debug for MinioSettings {
    // The password is never printed (the original's String() leaked it into logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MinioSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("default_bucket", &self.default_bucket)
            .field("default_path", &self.default_path)
            .finish()
    }
}

/// `[on_demand]`: pull a source only while someone watches.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OnDemandConfig {
    pub enabled: bool,
    pub idle_ms: i64,
    pub health_check: bool,
    pub health_interval_ms: i64,
    pub health_timeout_ms: i64,
}

impl Default for OnDemandConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            idle_ms: 30_000,
            health_check: false,
            health_interval_ms: 30_000,
            health_timeout_ms: 3_000,
        }
    }
}

/// `[webrtc]` (ours): live playback over WebRTC, offered with WHEP on the video listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WebRtcConfig {
    pub enabled: bool,
    /// The one UDP port every WebRTC session uses (0: any free port, for tests).
    pub udp_port: u16,
    /// Address the UDP socket binds to; empty means `[video] host`.
    pub host: String,
    /// Addresses put into the SDP answer's candidates (`IP`, `IP:port`, `name` or `name:port`;
    /// the port defaults to `udp_port`): the host or public address behind NAT or Docker. Empty:
    /// the bound address, or for a wildcard bind the host's outgoing address and 127.0.0.1.
    pub advertise: Vec<String>,
    /// Most WebRTC sessions at once (0: no limit).
    pub max_sessions: usize,
    /// Most WebRTC sessions of one stream at once (0: no limit).
    pub max_sessions_per_stream: usize,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            udp_port: 8189,
            host: String::new(),
            advertise: Vec::new(),
            max_sessions: 200,
            max_sessions_per_stream: 50,
        }
    }
}

/// `[cors]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CorsConfig {
    pub enabled: bool,
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
}

/// Per-stream `archive = { ... }` inline table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StreamArchiveEntry {
    pub recording: bool,
    pub ms_per_file: u64,
    pub directory: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub minio_bucket: String,
    pub minio_path: String,
}

/// One `[[rtsp_streams]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RtspStreamEntry {
    pub guid: String,
    pub url: String,
    /// Parsed and ignored, as in the original.
    #[serde(rename = "type")]
    pub kind: String,
    pub output_types: Vec<String>,
    pub verbose: String,
    pub on_demand: Option<bool>,
    pub archive: Option<StreamArchiveEntry>,
    /// Ours: a display name.
    pub name: Option<String>,
    /// Ours: `tcp` (default, interleaved) or `udp`.
    pub transport: Option<String>,
}

/// One `[[local_files]]` entry: an MP4 file played as a camera.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LocalFileEntry {
    pub guid: String,
    pub file: String,
    pub output_types: Vec<String>,
    #[serde(rename = "loop")]
    pub looping: bool,
    pub verbose: String,
    pub on_demand: Option<bool>,
    pub archive: Option<StreamArchiveEntry>,
    pub name: Option<String>,
}

/// `[database]` (ours).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://user:pass@host/db`.
    pub url: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_DATABASE_URL.into(),
        }
    }
}

/// `[s3]` (ours): an S3-compatible object store (MinIO, AWS, ...).
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:9000`; empty means the AWS endpoint for `region`.
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    /// Key prefix; objects are stored under `<prefix>/<stream-uuid>/<file>`.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by MinIO. Default true.
    pub path_style: Option<bool>,
    /// Further buckets a stream's `archive.bucket` may name (besides `bucket`).
    pub buckets: Vec<String>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("buckets", &self.buckets)
            .finish()
    }
}

/// Default `[cluster] lease_ms`: how long a camera stays with a node that stopped renewing, so the
/// longest recording gap a crashed node causes (plus up to a third of it until the next pass).
pub const DEFAULT_LEASE_MS: u64 = 10_000;

/// Shortest `[cluster] lease_ms`: leases are renewed every third of it, and a node stops its
/// cameras when two renewals in a row failed; below a few seconds a slow query would look like a
/// lost node.
pub const MIN_LEASE_MS: u64 = 3_000;

/// Longest `[cluster] lease_ms` (5 minutes): the gap a crashed node leaves is this long.
pub const MAX_LEASE_MS: u64 = 300_000;

/// `[cluster]` (ours): scale-out. Off by default: one process, as before.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// Run as one node of a cluster (needs a Postgres index and `[s3]`).
    pub enabled: bool,
    /// This node's name, unique in the cluster. Empty: an id generated on first start and kept in
    /// `[archive] directory` (`.video-server-node-id`), so a restarted node is the same node.
    /// `VIDEO_SERVER_NODE_ID` overrides it.
    pub node_id: String,
    /// The host name or IP address other nodes and clients reach this node at (with its `[api]`
    /// and `[video]` ports). Empty: `[video] host`, when that names one address.
    /// `VIDEO_SERVER_ADVERTISE_HOST` overrides it.
    pub advertise_host: String,
    /// Camera lease length in milliseconds (default 10000, at least 3000).
    pub lease_ms: Option<u64>,
}

impl ClusterConfig {
    /// The lease length.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.lease_ms.unwrap_or(DEFAULT_LEASE_MS))
    }
}

/// Whether a `[cluster] node_id` is acceptable: 1 to 64 of `A-Z a-z 0-9 . _ -` (it is shown in
/// URLs, logs and metrics labels as it is).
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `[log]` (ours).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `video_server=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

/// Environment variable holding an admin token to accept (bootstrap), as an alternative to
/// `[auth] admin_token_file`.
pub const ADMIN_TOKEN_ENV: &str = "VIDEO_SERVER_ADMIN_TOKEN";

/// Default longest lifetime of a signed URL (24 h).
pub const DEFAULT_MAX_SIGNED_TTL_S: u64 = 86_400;

/// Default age after which audit rows are deleted (90 days).
pub const DEFAULT_AUDIT_RETENTION_DAYS: u64 = 90;

/// `[auth]` (ours): access control. Off by default so Go configs keep working unchanged; when off,
/// every route is open (and a warning is logged at start if a listener is not on loopback).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Require a bearer token or a signed URL on every route except the public ones.
    pub enabled: bool,
    /// A file holding an admin token to accept (the first line; at least 32 characters). The
    /// `VIDEO_SERVER_ADMIN_TOKEN` environment variable does the same.
    pub admin_token_file: String,
    /// Longest `ttl_s` a signed URL may be given (default 86400).
    pub max_signed_ttl_s: u64,
    /// Delete audit rows older than this many days (default 90; 0 keeps them forever).
    pub audit_retention_days: u64,
    /// `/metrics` without a token (default false: it needs an admin token when auth is on).
    pub metrics_public: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            admin_token_file: String::new(),
            max_signed_ttl_s: DEFAULT_MAX_SIGNED_TTL_S,
            audit_retention_days: DEFAULT_AUDIT_RETENTION_DAYS,
            metrics_public: false,
        }
    }
}

/// Default for `[sources] max_file_bytes`: a file source is held in memory while it plays.
pub const DEFAULT_MAX_SOURCE_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// `[sources]` (ours): which files may become file-source cameras.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SourcesConfig {
    /// Directories whose regular files may be file sources. Absent: the `assets` directory beside
    /// the config file. Relative entries are relative to the working directory, like every other
    /// path in the file. See [`Config::file_roots`].
    pub file_roots: Option<Vec<String>>,
    /// Largest file a file source reads (default 512 MiB).
    pub max_file_bytes: Option<u64>,
}

impl SourcesConfig {
    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
            .filter(|b| *b > 0)
            .unwrap_or(DEFAULT_MAX_SOURCE_FILE_BYTES)
    }
}

/// `[limits]` (ours): what one stream, one client (its token, or its IP address, an IPv6 one by
/// its /64: `auth::Caller::client_key`) and the whole server may hold at once. Over a limit, a
/// request gets 429 (the client's own share) or 503 (the server's), with `Retry-After`; a
/// WebSocket is closed with code 1013 and a reason. Every limit is at least 1.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Largest WebSocket message a client may send (`/ws/live`, `/ws/archive`); a larger one
    /// closes the connection with code 1009. Clients only send `ping` and `more`.
    pub ws_max_message_bytes: usize,
    /// Live viewers (MSE, WebRTC, and HLS clients that fetched recently) of one stream.
    pub viewers_per_stream: usize,
    /// Live viewers (MSE, WebRTC and HLS) of all streams together.
    pub viewers_total: usize,
    /// Archive playback sessions of one client.
    pub archive_sessions_per_client: usize,
    /// Archive playback sessions in all (unset: `[archive] playback_max_sessions`, default 64).
    pub archive_sessions_total: Option<usize>,
    /// Exports (`export.mp4` downloads, each range request counts while it is sent) of one client.
    pub exports_per_client: usize,
    /// Exports in all.
    pub exports_total: usize,
}

/// Default `[limits] ws_max_message_bytes`.
pub const DEFAULT_WS_MAX_MESSAGE_BYTES: usize = 4096;
/// Smallest `[limits] ws_max_message_bytes` (a control frame's payload may be 125 bytes).
pub const MIN_WS_MAX_MESSAGE_BYTES: usize = 128;
/// Largest `[limits] ws_max_message_bytes` (axum's own default).
pub const MAX_WS_MAX_MESSAGE_BYTES: usize = 64 << 20;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            ws_max_message_bytes: DEFAULT_WS_MAX_MESSAGE_BYTES,
            viewers_per_stream: 100,
            viewers_total: 500,
            archive_sessions_per_client: 16,
            archive_sessions_total: None,
            exports_per_client: 4,
            exports_total: 16,
        }
    }
}

/// Default pause between two retention passes.
pub const DEFAULT_RETENTION_INTERVAL_S: u64 = 60;

/// `[retention]` (ours): the global part of archive retention. Per-stream limits (`max_age_s`,
/// `max_bytes`) live on the stream. The floor is checked on the filesystem that holds
/// `[archive] directory`; when it is crossed the oldest filesystem segments of all streams are
/// deleted until it is met again. Both floors may be set; the larger one wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// Keep at least this many bytes free for unprivileged users (`statvfs` `f_bavail`).
    pub min_free_bytes: Option<u64>,
    /// Keep at least this share (0..100) of the filesystem free.
    pub min_free_percent: Option<f64>,
    /// Seconds between passes (default 60; 0 means the default).
    pub interval_s: u64,
    /// Default `max_age_s` of streams that set none, and the limit for archives of deleted
    /// streams (seconds; unset: keep).
    pub max_age_s: Option<i64>,
    /// Default `max_bytes` of streams that set none, and the limit for archives of deleted
    /// streams (unset: no cap).
    pub max_bytes: Option<i64>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            min_free_bytes: None,
            min_free_percent: None,
            interval_s: DEFAULT_RETENTION_INTERVAL_S,
            max_age_s: None,
            max_bytes: None,
        }
    }
}

impl RetentionConfig {
    /// The free-space floor in bytes for a filesystem of `total_bytes`, if any floor is set.
    pub fn min_free_bytes_of(&self, total_bytes: u64) -> Option<u64> {
        let by_percent = self
            .min_free_percent
            .map(|p| (total_bytes as f64 * p / 100.0).ceil() as u64);
        match (self.min_free_bytes, by_percent) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0))),
        }
    }

    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(if self.interval_s == 0 {
            DEFAULT_RETENTION_INTERVAL_S
        } else {
            self.interval_s
        })
    }
}

impl Config {
    /// Reads and validates a config file. The format comes from the last extension of the name.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let mut config = match ext.as_deref() {
            Some("toml") => Self::parse_toml(path, &text)?,
            Some("json") => Self::parse_json(path, &text)?,
            _ => return Err(ConfigError::Format { path: path.into() }),
        };
        config.source_path = Some(path.to_owned());
        config.apply_env();
        config.validate()?;
        Ok(config)
    }

    fn parse_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let syntax = |message: String| ConfigError::Syntax {
            path: path.into(),
            message,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| syntax(e.to_string()))?;
        // One tree for both formats, so keys are matched the same way in both.
        let value = serde_json::to_value(table).map_err(|e| syntax(e.to_string()))?;
        Self::deserialize_reporting(path, value)
    }

    fn parse_json(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
                path: path.into(),
                message: e.to_string(),
            })?;
        Self::deserialize_reporting(path, value)
    }

    /// Deserializes a parsed file while tracking the key path of any error; keys are matched
    /// case-insensitively first, and every key matched that way or ignored is a warning.
    fn deserialize_reporting(
        path: &Path,
        mut value: serde_json::Value,
    ) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        fold_key_case(&mut value, "", &mut warnings);
        let mut unknown = Vec::new();
        let mut track = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
        let ignored = serde_ignored::Deserializer::new(value, &mut track);
        let result: Result<Config, _> = serde_path_to_error::deserialize(ignored);
        warnings.extend(
            unknown
                .into_iter()
                .map(|key| format!("unknown config key `{key}` ignored")),
        );
        result
            .map(|mut config| {
                config.warnings = warnings;
                config
            })
            .map_err(|e| {
                let key = e.path().to_string();
                let message = e.into_inner().to_string();
                if key == "." || key.is_empty() {
                    ConfigError::Syntax {
                        path: path.into(),
                        message,
                    }
                } else {
                    ConfigError::Key {
                        path: path.into(),
                        key,
                        message,
                    }
                }
            })
    }

    /// Parses TOML text as if it were a file called `name` (used by tests and the built-in default).
    pub fn from_toml_str(name: &str, text: &str) -> Result<Config, ConfigError> {
        let path = Path::new(name);
        let mut config = Self::parse_toml(path, text)?;
        config.apply_env();
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self) {
        if let Ok(url) = std::env::var(DATABASE_URL_ENV)
            && !url.trim().is_empty()
        {
            self.database.url = url;
        }
        if let Ok(id) = std::env::var(NODE_ID_ENV)
            && !id.trim().is_empty()
        {
            self.cluster.node_id = id.trim().to_owned();
        }
        if let Ok(host) = std::env::var(ADVERTISE_HOST_ENV)
            && !host.trim().is_empty()
        {
            self.cluster.advertise_host = host.trim().to_owned();
        }
    }

    fn path(&self) -> PathBuf {
        self.source_path.clone().unwrap_or_default()
    }

    fn validate(&mut self) -> Result<(), ConfigError> {
        let path = self.path();
        let invalid = |message: String| ConfigError::Invalid {
            path: path.clone(),
            message,
        };
        if self.hls.window_capacity == 0 {
            self.hls.window_capacity = 10;
        }
        if self.hls.window_size == 0 {
            self.hls.window_size = 5;
        }
        self.hls.window_size = self.hls.window_size.min(self.hls.window_capacity);
        if self.hls.ms_per_segment == 0 {
            self.hls.ms_per_segment = 10_000;
        }
        if self.hls.directory.is_empty() {
            self.hls.directory = "./hls".into();
        }
        if self.on_demand.idle_ms <= 0 {
            self.on_demand.idle_ms = 30_000;
        }
        if self.on_demand.health_interval_ms <= 0 {
            self.on_demand.health_interval_ms = 30_000;
        }
        if self.on_demand.health_timeout_ms <= 0 {
            self.on_demand.health_timeout_ms = 3_000;
        }
        if self.archive.ms_per_file > LONG_MS_PER_FILE {
            self.warnings.push(long_segments_warning(
                "archive.ms_per_file",
                self.archive.ms_per_file,
            ));
        }
        if self.archive.ms_per_file != 0
            && !(MIN_MS_PER_FILE..=MAX_MS_PER_FILE).contains(&self.archive.ms_per_file)
        {
            return Err(ConfigError::Key {
                path: path.clone(),
                key: "archive.ms_per_file".into(),
                message: format!(
                    "{} is out of range {MIN_MS_PER_FILE}..={MAX_MS_PER_FILE}",
                    self.archive.ms_per_file
                ),
            });
        }
        if self.cors.enabled && self.cors.allow_origins.is_empty() {
            return Err(ConfigError::Key {
                path: path.clone(),
                key: "cors.allow_origins".into(),
                message: "must list at least one origin when cors.enabled is true".into(),
            });
        }
        if self.cors.allow_credentials && self.cors.allow_origins.iter().any(|o| o == "*") {
            tracing::warn!(
                "cors.allow_credentials is ignored because allow_origins contains \"*\""
            );
            self.cors.allow_credentials = false;
        }
        match self.log.format.as_str() {
            "" | "text" | "json" => {}
            other => {
                return Err(ConfigError::Key {
                    path: path.clone(),
                    key: "log.format".into(),
                    message: format!("unknown format '{other}' (use text or json)"),
                });
            }
        }
        if self.database.url.trim().is_empty() {
            self.database.url = DEFAULT_DATABASE_URL.into();
        }
        if let Some(p) = self.retention.min_free_percent
            && !(0.0..100.0).contains(&p)
        {
            return Err(ConfigError::Key {
                path: path.clone(),
                key: "retention.min_free_percent".into(),
                message: format!("{p} is out of range 0..100"),
            });
        }
        if self.auth.max_signed_ttl_s == 0 {
            return Err(ConfigError::Key {
                path: path.clone(),
                key: "auth.max_signed_ttl_s".into(),
                message: "must be at least 1".into(),
            });
        }
        for (key, value) in [
            ("retention.max_age_s", self.retention.max_age_s),
            ("retention.max_bytes", self.retention.max_bytes),
        ] {
            if let Some(v) = value
                && v <= 0
            {
                return Err(ConfigError::Key {
                    path: path.clone(),
                    key: key.into(),
                    message: format!("{v} must be positive (leave it out for no limit)"),
                });
            }
        }
        self.validate_limits()?;
        self.validate_cluster()?;
        // Validate every stream now, so a bad entry stops start-up with a message naming it.
        let streams = self.streams()?;
        let mut seen = HashSet::new();
        for s in &streams {
            if !seen.insert(s.id) {
                return Err(invalid(format!("stream {} is configured twice", s.id)));
            }
            if let Some(ms) = s
                .archive
                .ms_per_file
                .filter(|ms| u64::from(*ms) > LONG_MS_PER_FILE)
            {
                let key = format!("stream {} archive.ms_per_file", s.id);
                self.warnings
                    .push(long_segments_warning(&key, u64::from(ms)));
            }
        }
        Ok(())
    }

    /// `[cluster]`: a cluster shares its index and its archive, so it needs Postgres (SQLite is one
    /// process's file) and an S3 store every node reaches.
    fn validate_cluster(&mut self) -> Result<(), ConfigError> {
        let path = self.path();
        let key_error = |key: &str, message: String| ConfigError::Key {
            path: path.clone(),
            key: key.into(),
            message,
        };
        let c = &mut self.cluster;
        if let Some(ms) = c.lease_ms
            && !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&ms)
        {
            return Err(key_error(
                "cluster.lease_ms",
                format!("{ms} is out of range {MIN_LEASE_MS}..={MAX_LEASE_MS}"),
            ));
        }
        if !c.node_id.is_empty() && !valid_node_id(&c.node_id) {
            return Err(key_error(
                "cluster.node_id",
                "use 1 to 64 letters, digits, '.', '_' or '-'".into(),
            ));
        }
        if !c.enabled {
            return Ok(());
        }
        let url = self.database.url.trim();
        if !(url.starts_with("postgres:") || url.starts_with("postgresql:")) {
            return Err(key_error(
                "cluster.enabled",
                "cluster mode needs a Postgres index ([database] url = \"postgres://...\"): \
                 a SQLite index serves one process"
                    .into(),
            ));
        }
        if self.effective_s3().is_none() {
            return Err(key_error(
                "cluster.enabled",
                "cluster mode needs S3 archive storage ([s3]): every node must reach every \
                 camera's archive"
                    .into(),
            ));
        }
        let c = &mut self.cluster;
        if c.advertise_host.trim().is_empty() {
            let video = self.video.host.trim();
            let unspecified = video
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified());
            if video.is_empty() || unspecified {
                return Err(key_error(
                    "cluster.advertise_host",
                    "required when [video] host listens on every interface: the address other \
                     nodes and clients reach this node at"
                        .into(),
                ));
            }
            c.advertise_host = video.to_owned();
        }
        Ok(())
    }

    fn validate_limits(&mut self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let key_error = |key: &str, message: String| ConfigError::Key {
            path: self.path(),
            key: format!("limits.{key}"),
            message,
        };
        if !(MIN_WS_MAX_MESSAGE_BYTES..=MAX_WS_MAX_MESSAGE_BYTES).contains(&l.ws_max_message_bytes)
        {
            return Err(key_error(
                "ws_max_message_bytes",
                format!(
                    "{} is out of range {MIN_WS_MAX_MESSAGE_BYTES}..={MAX_WS_MAX_MESSAGE_BYTES}",
                    l.ws_max_message_bytes
                ),
            ));
        }
        let pairs = [
            (
                "viewers_per_stream",
                l.viewers_per_stream,
                "viewers_total",
                l.viewers_total,
            ),
            (
                "archive_sessions_per_client",
                l.archive_sessions_per_client,
                "archive_sessions_total",
                self.archive_sessions_total(),
            ),
            (
                "exports_per_client",
                l.exports_per_client,
                "exports_total",
                l.exports_total,
            ),
        ];
        let mut warnings = Vec::new();
        for (part_key, part, total_key, total) in pairs {
            for (key, value) in [(part_key, part), (total_key, total)] {
                if value == 0 {
                    return Err(key_error(key, "must be at least 1".into()));
                }
            }
            if part > total {
                warnings.push(format!(
                    "limits.{part_key} ({part}) is above limits.{total_key} ({total}): the total \
                     is what applies"
                ));
            }
        }
        self.warnings.extend(warnings);
        Ok(())
    }

    /// Most archive playback sessions at once: `[limits] archive_sessions_total`, else `[archive]
    /// playback_max_sessions` (default 64).
    pub fn archive_sessions_total(&self) -> usize {
        self.limits
            .archive_sessions_total
            .unwrap_or_else(|| self.archive.max_playback_sessions())
    }

    /// The streams declared in the file, converted to our model. Config-file streams are seeds: see
    /// `db::streams::seed`.
    pub fn streams(&self) -> Result<Vec<StreamSpec>, ConfigError> {
        let path = self.path();
        let mut out = Vec::new();
        for (i, e) in self.rtsp_streams.iter().enumerate() {
            let entry = format!("rtsp_streams[{i}] (guid \"{}\")", e.guid);
            let err = |message: String| ConfigError::Entry {
                path: path.clone(),
                entry: entry.clone(),
                message,
            };
            let id = parse_guid(&e.guid).map_err(&err)?;
            let outputs = parse_outputs(&e.output_types).map_err(&err)?;
            let transport = match e.transport.as_deref().map(str::to_ascii_lowercase) {
                None => RtspTransport::Tcp,
                Some(t) if t == "tcp" => RtspTransport::Tcp,
                Some(t) if t == "udp" => RtspTransport::Udp,
                Some(t) => return Err(err(format!("unknown transport '{t}' (use tcp or udp)"))),
            };
            let archive = self
                .stream_archive(e.archive.as_ref(), true)
                .map_err(&err)?;
            out.push(StreamSpec {
                id,
                name: e.name.clone().unwrap_or_default(),
                source: Source::Rtsp {
                    url: e.url.clone(),
                    transport,
                },
                outputs,
                on_demand: e.on_demand,
                enabled: true,
                verbose: e.verbose.clone(),
                archive,
                retention: Default::default(),
            });
        }
        for (i, e) in self.local_files.iter().enumerate() {
            let entry = format!("local_files[{i}] (guid \"{}\")", e.guid);
            let err = |message: String| ConfigError::Entry {
                path: path.clone(),
                entry: entry.clone(),
                message,
            };
            let id = parse_guid(&e.guid).map_err(&err)?;
            let outputs = parse_outputs(&e.output_types).map_err(&err)?;
            if e.file.trim().is_empty() {
                return Err(err("`file` is empty".into()));
            }
            let archive = self
                .stream_archive(e.archive.as_ref(), false)
                .map_err(&err)?;
            out.push(StreamSpec {
                id,
                name: e.name.clone().unwrap_or_default(),
                source: Source::File {
                    path: e.file.clone(),
                    looping: e.looping,
                },
                outputs,
                on_demand: e.on_demand,
                enabled: true,
                verbose: e.verbose.clone(),
                archive,
                retention: Default::default(),
            });
        }
        Ok(out)
    }

    /// Converts a per-stream archive table, filling defaults from `[archive]` the way the original
    /// meant to (30000 ms, not 30 ms) and for file streams too.
    fn stream_archive(
        &self,
        entry: Option<&StreamArchiveEntry>,
        _rtsp: bool,
    ) -> Result<ArchiveSpec, String> {
        let Some(a) = entry else {
            return Ok(ArchiveSpec::default());
        };
        let storage = match a.kind.to_ascii_lowercase().as_str() {
            "" | "filesystem" | "fs" => StorageKind::Filesystem,
            "minio" | "s3" => StorageKind::S3,
            other => {
                return Err(format!(
                    "unsupported archive type '{other}' (use filesystem or minio)"
                ));
            }
        };
        let ms_per_file = match a.ms_per_file {
            0 => None,
            ms if (MIN_MS_PER_FILE..=MAX_MS_PER_FILE).contains(&ms) => Some(ms as u32),
            ms => {
                return Err(format!(
                    "archive.ms_per_file {ms} is out of range {MIN_MS_PER_FILE}..={MAX_MS_PER_FILE}"
                ));
            }
        };
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(ArchiveSpec {
            recording: a.recording,
            ms_per_file,
            storage,
            directory: non_empty(&a.directory),
            bucket: non_empty(&a.minio_bucket),
            prefix: non_empty(&a.minio_path),
        })
    }

    /// The S3 settings in force: `[s3]`, or the Go `minio_settings` mapped onto it.
    pub fn effective_s3(&self) -> Option<S3Config> {
        if let Some(s3) = &self.s3 {
            return Some(s3.clone());
        }
        let m = &self.archive.minio_settings;
        if m.host.is_empty() {
            return None;
        }
        let port = if m.port == 0 { 9000 } else { m.port };
        Some(S3Config {
            endpoint: format!("http://{}:{port}", m.host),
            region: "us-east-1".into(),
            access_key: m.user.clone(),
            secret_key: m.password.clone(),
            bucket: m.default_bucket.clone(),
            prefix: m.default_path.trim_matches('/').to_owned(),
            path_style: Some(true),
            buckets: Vec::new(),
        })
    }

    /// Directories whose files may be file sources (`[sources] file_roots`, by default the
    /// `assets` directory beside the config file), absolute but not canonicalised (they may not
    /// exist yet). The exact files named by `[[local_files]]` are allowed too
    /// ([`Config::config_files`]).
    pub fn file_roots(&self) -> Vec<PathBuf> {
        match &self.sources.file_roots {
            Some(roots) => roots
                .iter()
                .filter(|r| !r.trim().is_empty())
                .map(|r| absolute(Path::new(r)))
                .collect(),
            None => {
                let dir = self
                    .source_path
                    .as_deref()
                    .and_then(Path::parent)
                    .unwrap_or(Path::new(""));
                vec![absolute(&dir.join("assets"))]
            }
        }
    }

    /// The files named by `[[local_files]]` entries, absolute. The operator wrote them, so they
    /// may be file sources wherever they are (Go configs keep working); the API may only name
    /// these exact files outside [`Config::file_roots`].
    pub fn config_files(&self) -> Vec<PathBuf> {
        self.local_files
            .iter()
            .filter(|e| !e.file.trim().is_empty())
            .map(|e| absolute(Path::new(&e.file)))
            .collect()
    }

    /// Directories archive segments may be written to, absolute: `[archive] directory`, every
    /// `[archive] roots` entry, and every `archive.directory` of a stream in the config file (the
    /// operator wrote those). A stream's directory must lie under one of them; start-up repair and
    /// reconcile touch nothing else, and the free-space floor watches each one in use.
    pub fn storage_roots(&self) -> Vec<PathBuf> {
        let from_streams = self
            .rtsp_streams
            .iter()
            .filter_map(|e| e.archive.as_ref())
            .chain(self.local_files.iter().filter_map(|e| e.archive.as_ref()))
            .map(|a| a.directory.as_str());
        let mut roots: Vec<PathBuf> = std::iter::once(self.archive.directory())
            .chain(self.archive.roots.iter().map(String::as_str))
            .chain(from_streams)
            .filter(|d| !d.trim().is_empty())
            .map(|d| absolute(Path::new(d)))
            .collect();
        roots.dedup();
        let mut seen = HashSet::new();
        roots.retain(|r| seen.insert(r.clone()));
        roots
    }

    /// S3 buckets a stream may name: `[s3] bucket` (the default), `[s3] buckets`, and the
    /// `minio_bucket` of every stream in the config file. Empty without an object store.
    pub fn allowed_buckets(&self) -> Vec<String> {
        let Some(s3) = self.effective_s3() else {
            return Vec::new();
        };
        let from_streams = self
            .rtsp_streams
            .iter()
            .filter_map(|e| e.archive.as_ref())
            .chain(self.local_files.iter().filter_map(|e| e.archive.as_ref()))
            .map(|a| a.minio_bucket.clone());
        let mut seen = HashSet::new();
        std::iter::once(s3.bucket.clone())
            .chain(s3.buckets.iter().cloned())
            .chain(from_streams)
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty() && seen.insert(b.clone()))
            .collect()
    }

    /// Effective segment length for a stream.
    pub fn ms_per_file_for(&self, spec: &StreamSpec) -> u64 {
        spec.archive
            .ms_per_file
            .map(u64::from)
            .unwrap_or_else(|| self.archive.ms_per_file())
    }

    /// Whether a stream is pulled only while watched.
    pub fn on_demand_for(&self, spec: &StreamSpec) -> bool {
        spec.on_demand.unwrap_or(self.on_demand.enabled)
    }
}

/// `path` made absolute against the working directory (lexically; nothing is resolved).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn long_segments_warning(key: &str, ms: u64) -> String {
    format!(
        "`{key}` = {ms}: segments longer than {LONG_MS_PER_FILE} ms are accepted, but retention \
         and S3 uploads work in whole segments and time queries scan further back; \
         {LONG_MS_PER_FILE} or less is recommended"
    )
}

/// Matches keys case-insensitively, as the Go original's decoders did (BurntSushi/toml and
/// encoding/json fall back to a case-insensitive match): every object key that is not all lower
/// case is replaced by its lower-case form (all of ours are), with a warning naming it. A key
/// whose lower-case form is also present is left as it is (and then reported as unknown). Only
/// identifier-like keys are folded: the file has no maps keyed by user data.
fn fold_key_case(value: &mut serde_json::Value, path: &str, warnings: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            let folded: Vec<String> = map
                .keys()
                .filter(|k| {
                    k.bytes().any(|b| b.is_ascii_uppercase())
                        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && !map.contains_key(&k.to_ascii_lowercase())
                })
                .cloned()
                .collect();
            for key in folded {
                if let Some(v) = map.remove(&key) {
                    let lower = key.to_ascii_lowercase();
                    warnings.push(format!(
                        "config key `{path}{key}` matched as `{path}{lower}` (keys are \
                         case-insensitive, as in the Go original; write them in lower case)"
                    ));
                    map.insert(lower, v);
                }
            }
            for (k, v) in map.iter_mut() {
                fold_key_case(v, &format!("{path}{k}."), warnings);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                let prefix = path.strip_suffix('.').unwrap_or(path);
                fold_key_case(v, &format!("{prefix}[{i}]."), warnings);
            }
        }
        _ => {}
    }
}

fn parse_guid(guid: &str) -> Result<Uuid, String> {
    if guid.trim().is_empty() {
        return Err("`guid` is missing".into());
    }
    Uuid::parse_str(guid.trim()).map_err(|e| format!("`guid` is not a valid UUID: {e}"))
}

fn parse_outputs(types: &[String]) -> Result<Vec<OutputType>, String> {
    let mut out: Vec<OutputType> = Vec::new();
    for t in types {
        let ty = parse_output_type(t).map_err(|e| e.to_string())?;
        if !out.contains(&ty) {
            out.push(ty);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str("test.toml", text)
    }

    #[test]
    fn empty_file_gets_sane_defaults() {
        let c = toml("").expect("empty config is valid");
        assert_eq!(c.api.port(), 8091);
        assert_eq!(c.video.port(), 8090);
        assert!(c.api.is_enabled());
        assert_eq!(c.archive.ms_per_file(), 30_000);
        assert_eq!(c.hls.window_size, 5);
        assert_eq!(c.hls.window_capacity, 10);
        assert_eq!(c.on_demand.idle_ms, 30_000);
    }

    #[test]
    fn cluster_needs_postgres_and_s3_and_an_address() {
        let c = toml("").expect("valid");
        assert!(!c.cluster.enabled, "off by default");
        assert_eq!(c.cluster.lease(), std::time::Duration::from_millis(10_000));
        let pg = "[database]\nurl = \"postgres://u@127.0.0.1/db\"\n";
        let s3 = "[s3]\nendpoint = \"http://127.0.0.1:9000\"\nbucket = \"b\"\n";
        let video = "[video]\nhost = \"10.0.0.5\"\n";
        let on = "[cluster]\nenabled = true\n";
        let err = toml(&format!(
            "[database]\nurl = \"sqlite://x.db\"\n{s3}{video}{on}"
        ))
        .expect_err("SQLite");
        assert!(err.to_string().contains("needs a Postgres index"), "{err}");
        let err = toml(&format!("{pg}{video}{on}")).expect_err("no S3");
        assert!(
            err.to_string().contains("needs S3 archive storage"),
            "{err}"
        );
        let err = toml(&format!("{pg}{s3}{on}")).expect_err("no address");
        assert!(err.to_string().contains("cluster.advertise_host"), "{err}");
        let c = toml(&format!("{pg}{s3}{video}{on}")).expect("valid");
        assert_eq!(
            c.cluster.advertise_host, "10.0.0.5",
            "[video] host by default"
        );
        let c = toml(&format!(
            "{pg}{s3}{on}advertise_host = \"nvr-2.example\"\nnode_id = \"nvr-2\"\nlease_ms = 5000\n"
        ))
        .expect("valid");
        assert_eq!(c.cluster.node_id, "nvr-2");
        assert_eq!(c.cluster.lease(), std::time::Duration::from_millis(5_000));
        let err = toml("[cluster]\nlease_ms = 500\n").expect_err("short lease");
        assert!(err.to_string().contains("cluster.lease_ms"), "{err}");
        let err = toml("[cluster]\nnode_id = \"a b\"\n").expect_err("bad id");
        assert!(err.to_string().contains("cluster.node_id"), "{err}");
    }

    #[test]
    fn window_size_is_clamped_to_capacity() {
        let c = toml("[hls]\nwindow_size = 20\nwindow_capacity = 4\n").expect("valid");
        assert_eq!(c.hls.window_size, 4);
    }

    #[test]
    fn hls_segment_format_is_fmp4_unless_mpegts_is_asked_for() {
        assert_eq!(
            toml("").expect("valid").hls.segment_format,
            SegmentFormat::Fmp4
        );
        let c = toml("[hls]\nsegment_format = \"mpegts\"\n").expect("valid");
        assert_eq!(c.hls.segment_format, SegmentFormat::Mpegts);
        let err = toml("[hls]\nsegment_format = \"webm\"\n").expect_err("unknown format");
        assert!(err.to_string().contains("hls.segment_format"), "{err}");
    }

    #[test]
    fn bad_key_type_names_the_key() {
        let err = toml("[api]\nport = \"eighty\"\n").expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("test.toml"), "{msg}");
        assert!(msg.contains("api.port"), "{msg}");
    }

    #[test]
    fn invalid_guid_names_the_entry() {
        let err = toml("[[rtsp_streams]]\nguid = \"nope\"\nurl = \"rtsp://h/x\"\n")
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("rtsp_streams[0]"), "{msg}");
        assert!(msg.contains("nope"), "{msg}");
    }

    #[test]
    fn unsupported_output_type_names_the_entry() {
        let err = toml(
            "[[local_files]]\nguid = \"13bf3e5c-d537-4f10-98e8-9d0afca8b070\"\nfile = \"a.mp4\"\noutput_types = [\"mse\", \"rtsp\"]\n",
        )
        .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("local_files[0]"), "{msg}");
        assert!(msg.contains("stream type is not supported"), "{msg}");
    }

    #[test]
    fn archive_without_type_is_filesystem_and_default_length() {
        let c = toml(
            "[archive]\nrecording = true\n[[rtsp_streams]]\nguid = \"566bfe72-2a8a-4d4c-9b84-2e1b9b4b1a3c\"\nurl = \"rtsp://h/x\"\narchive = { recording = true }\n",
        )
        .expect("valid");
        let s = &c.streams().expect("valid")[0];
        assert_eq!(s.archive.storage, StorageKind::Filesystem);
        assert_eq!(c.ms_per_file_for(s), 30_000);
    }

    #[test]
    fn cors_without_origins_is_an_error_not_a_panic() {
        let err = toml("[cors]\nenabled = true\n").expect_err("must fail");
        assert!(err.to_string().contains("cors.allow_origins"));
    }

    #[test]
    fn duplicate_guid_is_an_error() {
        let err = toml(
            "[[rtsp_streams]]\nguid = \"566bfe72-2a8a-4d4c-9b84-2e1b9b4b1a3c\"\nurl = \"rtsp://h/x\"\n[[local_files]]\nguid = \"566BFE72-2a8a-4d4c-9b84-2e1b9b4b1a3c\"\nfile = \"a.mp4\"\n",
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("configured twice"));
    }

    #[test]
    fn minio_settings_map_onto_s3() {
        let c = toml(
            "[archive]\nminio_settings = { host = \"localhost\", port = 29199, user = \"u\", password = \"hunter2\", default_bucket = \"b\", default_path = \"/var/x\" }\n",
        )
        .expect("valid");
        let s3 = c.effective_s3().expect("mapped");
        assert_eq!(s3.endpoint, "http://localhost:29199");
        assert_eq!(s3.bucket, "b");
        assert_eq!(s3.prefix, "var/x");
        assert!(!format!("{:?}", c.archive.minio_settings).contains("hunter2"));
        assert!(!format!("{s3:?}").contains("hunter2"));
    }

    #[test]
    fn keys_match_case_insensitively_with_a_warning() {
        let c = toml(
            "[API]\nPort = 9000\n[video]\nHOST = \"127.0.0.1\"\n\
             [[RTSP_Streams]]\nGUID = \"566bfe72-2a8a-4d4c-9b84-2e1b9b4b1a3c\"\nUrl = \"rtsp://h/x\"\n\
             Output_Types = [\"MSE\"]\nArchive = { Recording = true }\n",
        )
        .expect("valid");
        assert_eq!(c.api.port(), 9000);
        assert_eq!(c.video.host, "127.0.0.1");
        let s = &c.streams().expect("streams")[0];
        assert_eq!(s.outputs, vec![OutputType::Mse]);
        assert!(s.archive.recording);
        for key in [
            "`API`",
            "`api.Port`",
            "`video.HOST`",
            "`rtsp_streams[0].archive.Recording`",
        ] {
            assert!(
                c.warnings.iter().any(|w| w.contains(key)),
                "{key}: {:?}",
                c.warnings
            );
        }
        // The same through JSON.
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("conf.json");
        std::fs::write(
            &path,
            r#"{"Api": {"Enabled": false}, "HLS": {"MS_per_segment": 4000}}"#,
        )
        .expect("write");
        let c = Config::load(&path).expect("valid");
        assert!(!c.api.is_enabled());
        assert_eq!(c.hls.ms_per_segment, 4000);
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("`hls.MS_per_segment`")),
            "{:?}",
            c.warnings
        );
        // An exact key wins over a differently cased duplicate, which is reported unknown.
        let c = toml("[api]\nport = 1\nPort = 2\n").expect("valid");
        assert_eq!(c.api.port(), 1);
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("unknown config key `api.Port`")),
            "{:?}",
            c.warnings
        );
        assert!(
            toml("[api]\nport = 1\n")
                .expect("valid")
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn hour_long_segments_are_accepted_with_a_warning() {
        let c = toml(
            "[archive]\nms_per_file = 3600000\n[[local_files]]\nguid = \"13bf3e5c-d537-4f10-98e8-9d0afca8b070\"\n\
             file = \"a.mp4\"\narchive = { ms_per_file = 600000 }\n",
        )
        .expect("valid");
        assert_eq!(c.archive.ms_per_file(), 3_600_000);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("archive.ms_per_file"));
        assert!(c.warnings[1].contains("13bf3e5c-d537-4f10-98e8-9d0afca8b070"));
        assert!(
            toml("[archive]\nms_per_file = 300000\n")
                .expect("valid")
                .warnings
                .is_empty()
        );
        let err = toml("[archive]\nms_per_file = 3600001\n").expect_err("too long");
        assert!(err.to_string().contains("archive.ms_per_file"), "{err}");
    }

    #[test]
    fn retention_floor_and_interval() {
        let c = toml("").expect("valid");
        assert_eq!(c.retention.min_free_bytes_of(1000), None);
        assert_eq!(c.retention.interval().as_secs(), 60);
        let c = toml("[retention]\nmin_free_bytes = 300\nmin_free_percent = 10\ninterval_s = 5\n")
            .expect("valid");
        assert_eq!(c.retention.min_free_bytes_of(1000), Some(300));
        assert_eq!(c.retention.min_free_bytes_of(10_000), Some(1000));
        assert_eq!(c.retention.interval().as_secs(), 5);
        let c = toml("[retention]\nmax_age_s = 86400\nmax_bytes = 1000\n").expect("valid");
        assert_eq!(
            (c.retention.max_age_s, c.retention.max_bytes),
            (Some(86400), Some(1000))
        );
        let err = toml("[retention]\nmax_age_s = 0\n").expect_err("must fail");
        assert!(err.to_string().contains("retention.max_age_s"), "{err}");
        let err = toml("[retention]\nmin_free_percent = 150\n").expect_err("must fail");
        assert!(
            err.to_string().contains("retention.min_free_percent"),
            "{err}"
        );
    }
}
