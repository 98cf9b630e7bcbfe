//! What the server is and how its storage is doing: `GET /api/v1/server` (version, listener
//! ports, auth, features and the server clock — what the web UI needs before anything else, so it
//! is also served on the video listener) and `GET /api/v1/storage` (archive bytes per stream, the
//! archive disk, retention settings).

use axum::Json;
use axum::extract::State;
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::archive::rfc3339_ms;
use super::error::{ApiError, ErrorBody};
use crate::archive::retention::{DiskSpace, Statvfs};
use crate::db::{runs, streams};

/// The ports of the two listeners, as bound.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListenersDto {
    /// Video listener: live `/ws/live`, archive `/ws/archive`, `/hls/`, the web UI.
    pub video_port: u16,
    /// API listener (REST, Go routes, OpenAPI, the web UI); `null` when `[api] enabled = false`.
    pub api_port: Option<u16>,
}

/// Optional parts of the server and whether they are on.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeaturesDto {
    /// `[archive] recording`: streams with recording on are recorded.
    pub recording: bool,
    /// `[archive] serving`: `/ws/archive` plays recordings.
    pub archive_serving: bool,
    /// An S3 store is configured (streams may use `archive.storage = "s3"`).
    pub s3: bool,
    /// WHEP/WebRTC live output is running (`[webrtc] enabled` and its UDP port bound).
    pub webrtc: bool,
}

/// Who this server is, for clients and the web UI.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerInfo {
    /// Always `video-server`.
    pub name: &'static str,
    /// The server's version (Cargo package version).
    pub version: &'static str,
    /// The server's clock now, RFC 3339 UTC with milliseconds (lets a client correct its own clock
    /// when it maps archive times).
    pub time: String,
    pub listeners: ListenersDto,
    /// `on` when requests need a bearer token or a signed URL, `off` otherwise.
    pub auth: &'static str,
    pub features: FeaturesDto,
}

/// Version, listener ports, auth mode, features and the server clock. Public and cheap; also
/// answered on the video listener so a page loaded from either listener finds the other.
#[utoipa::path(get, path = "/api/v1/server", tag = "ops",
    responses((status = 200, description = "Server information", body = ServerInfo)))]
pub async fn server_info(State(state): State<AppState>) -> Json<ServerInfo> {
    let c = &state.config;
    Json(ServerInfo {
        name: "video-server",
        version: env!("CARGO_PKG_VERSION"),
        time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        listeners: ListenersDto {
            video_port: state.listeners.video,
            api_port: state.listeners.api,
        },
        auth: if state.auth.enabled() { "on" } else { "off" },
        features: FeaturesDto {
            recording: c.archive.recording,
            archive_serving: c.archive.serving,
            s3: c.effective_s3().is_some(),
            webrtc: state.webrtc.is_running(),
        },
    })
}

/// Size and free space of the filesystem holding `[archive] directory`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiskDto {
    pub total_bytes: u64,
    /// Available to the server (unprivileged `statvfs` `f_bavail`).
    pub free_bytes: u64,
    /// The `[retention]` free-space floor for this disk, `null` when none is set.
    pub min_free_bytes: Option<u64>,
}

/// The server-wide retention settings (`[retention]`).
#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionSettingsDto {
    /// Seconds between retention passes.
    pub interval_s: u64,
    pub min_free_bytes: Option<u64>,
    pub min_free_percent: Option<f64>,
}

/// The archive of one stream (closed segments).
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamStorageDto {
    pub stream_id: Uuid,
    /// `null` when the stream was deleted and only its archive remains.
    pub name: Option<String>,
    pub bytes: i64,
    pub segment_count: i64,
    /// Start of the oldest recording, RFC 3339.
    pub first: String,
    /// End of the newest closed segment, RFC 3339.
    pub last: String,
    /// The stream's retention limits (`null`: unlimited, or the stream is deleted).
    pub max_age_s: Option<i64>,
    pub max_bytes: Option<i64>,
}

/// Archive storage: per stream, the disk, retention.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageDto {
    /// Bytes of closed segments of every stream.
    pub total_bytes: i64,
    /// The archive filesystem; `null` when it cannot be read (e.g. not created yet).
    pub disk: Option<DiskDto>,
    pub retention: RetentionSettingsDto,
    /// Streams with recordings, by id.
    pub streams: Vec<StreamStorageDto>,
}

/// Archive bytes per stream (from the `runs` table: a few rows per stream), free space of the
/// archive disk and the retention settings. Segments being recorded are not counted yet.
#[utoipa::path(get, path = "/api/v1/storage", tag = "archive",
    responses(
        (status = 200, description = "Storage use", body = StorageDto),
        (status = 500, description = "The index is unreachable", body = ErrorBody),
    ))]
pub async fn storage(State(state): State<AppState>) -> Result<Json<StorageDto>, ApiError> {
    let totals = runs::totals(&state.db).await?;
    let specs: std::collections::HashMap<Uuid, _> = streams::list_all(&state.db)
        .await?
        .into_iter()
        .map(|r| (r.spec.id, r.spec))
        .collect();
    let r = &state.config.retention;
    let dir = std::path::PathBuf::from(state.config.archive.directory());
    let disk = tokio::task::spawn_blocking(move || Statvfs.usage(&dir))
        .await
        .ok()
        .and_then(|u| {
            u.inspect_err(|e| tracing::debug!(error = %e, "archive disk not readable"))
                .ok()
        })
        .map(|u| DiskDto {
            total_bytes: u.total_bytes,
            free_bytes: u.free_bytes,
            min_free_bytes: r.min_free_bytes_of(u.total_bytes),
        });
    Ok(Json(StorageDto {
        total_bytes: totals.iter().map(|t| t.bytes).sum(),
        disk,
        retention: RetentionSettingsDto {
            interval_s: r.interval_s,
            min_free_bytes: r.min_free_bytes,
            min_free_percent: r.min_free_percent,
        },
        streams: totals
            .iter()
            .map(|t| {
                let spec = specs.get(&t.stream_id);
                StreamStorageDto {
                    stream_id: t.stream_id,
                    name: spec.map(|s| s.name.clone()),
                    bytes: t.bytes,
                    segment_count: t.segment_count,
                    first: rfc3339_ms(t.start_us, false),
                    last: rfc3339_ms(t.end_us, true),
                    max_age_s: spec.and_then(|s| s.retention.max_age_s),
                    max_bytes: spec.and_then(|s| s.retention.max_bytes),
                }
            })
            .collect(),
    }))
}
