//! `GET /api/v1/archive/uploads`: the S3 upload outbox at a glance (segments per `upload_state`)
//! and the uploader's counters.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::db::segments;

/// Segments per upload state.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadStateCountsDto {
    /// Filesystem-only segments, and S3 ones whose file vanished before upload.
    pub none: i64,
    /// Local files waiting for upload (including segments still being recorded).
    pub local: i64,
    /// Uploads in progress.
    pub uploading: i64,
    /// Segments stored in S3.
    pub remote: i64,
}

/// Counters of this process's uploader since it started.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploaderCountersDto {
    /// An uploader runs in this process (S3 is configured).
    pub running: bool,
    /// Segments uploaded.
    pub uploaded: u64,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
    /// Failed upload attempts (each one is retried with backoff).
    pub failed: u64,
    /// Segments whose local file was gone when their turn came (marked `missing`).
    pub missing: u64,
    /// Closed segments waiting for upload, as of the uploader's last look.
    pub pending: u64,
    /// Uploads running now.
    pub in_flight: u64,
    /// Failures since the last success; above 0 the uploader is backing off.
    pub consecutive_failures: u64,
    /// Buckets whose uploads wait after the object store failed (backoff per bucket: the other
    /// buckets go on).
    pub paused_buckets: u64,
    /// Streams whose uploads wait after failures of their own (backoff per stream: the other
    /// streams go on).
    pub paused_streams: u64,
}

/// The S3 upload outbox and uploader counters.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadsDto {
    /// Segments per `upload_state`, from the index.
    pub segments: UploadStateCountsDto,
    pub uploader: UploaderCountersDto,
}

/// S3 upload status: segments per upload state and the uploader's counters.
#[utoipa::path(get, path = "/api/v1/archive/uploads", tag = "archive",
    responses(
        (status = 200, description = "Upload status", body = UploadsDto),
        (status = 500, description = "The index is unreachable", body = ErrorBody),
    ))]
pub async fn upload_status(State(state): State<AppState>) -> Result<Json<UploadsDto>, ApiError> {
    let c = segments::upload_state_counts(&state.db).await?;
    let u = state.uploads.snapshot();
    Ok(Json(UploadsDto {
        segments: UploadStateCountsDto {
            none: c.none,
            local: c.local,
            uploading: c.uploading,
            remote: c.remote,
        },
        uploader: UploaderCountersDto {
            running: u.running,
            uploaded: u.uploaded,
            uploaded_bytes: u.uploaded_bytes,
            failed: u.failed,
            missing: u.missing,
            pending: u.pending,
            in_flight: u.in_flight,
            consecutive_failures: u.consecutive_failures,
            paused_buckets: u.paused_buckets,
            paused_streams: u.paused_streams,
        },
    }))
}
