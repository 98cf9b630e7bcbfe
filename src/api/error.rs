//! The two error shapes the API answers with.
//!
//! * [`ApiError`]: our REST API, `{"error":{"code":"...","message":"...","field":"..."}}`.
//! * [`GoError`]: the Go-compatible routes, `{"Error":"..."}` or `{"error":"..."}` exactly as the
//!   original sent them (its key case differs between routes, and clients may depend on it).
//!
//! Internal failures are logged once here with their detail; clients get a generic message.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::DbError;
use crate::limits::{RETRY_AFTER_S, Refusal};

/// Error body of the `/api/v1` routes.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, machine- and human-readable.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `validation_failed`, `bad_json`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The offending field (dotted path), when one field is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An `/api/v1` error: status + body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Sent as `Retry-After` (seconds): the answer to a request over a limit.
    pub retry_after_s: Option<u64>,
}

/// A UUID in its standard hyphenated form (`8-4-4-4-12` hex digits, any case), the only one the
/// document's `format: uuid` admits; the other spellings `Uuid::parse_str` knows (braced, `urn:`,
/// 32 digits) are refused.
pub fn parse_uuid(raw: &str) -> Option<uuid::Uuid> {
    if raw.len() != 36 {
        return None;
    }
    uuid::Uuid::parse_str(raw).ok()
}

/// A stream id from the URL path; 400 `invalid_id` (field `id`) when it is not a UUID.
pub fn parse_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    parse_uuid(raw).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("'{raw}' is not a UUID (8-4-4-4-12 hex digits)"),
        )
        .with_field("id")
    })
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_s: None,
        }
    }

    /// A request over a limit (`[limits]`): 429 `limit_reached` when the client holds its share of
    /// `what` (e.g. "exports"), 503 `server_busy` when the server holds all of it; both with
    /// `Retry-After`.
    pub fn limited(refusal: Refusal, what: &str) -> Self {
        let (status, code, message) = match refusal {
            Refusal::PerKey { limit } => (
                StatusCode::TOO_MANY_REQUESTS,
                "limit_reached",
                format!(
                    "this client already has {limit} {what} running (the limit per client); \
                     try again when one has finished"
                ),
            ),
            Refusal::Total { limit } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                format!(
                    "the server already has {limit} {what} running (its limit); try again later"
                ),
            ),
        };
        let mut err = Self::new(status, code, message);
        err.retry_after_s = Some(RETRY_AFTER_S);
        err
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
        .with_field(field)
    }

    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error while serving a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                field: self.field,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Conflict(id) => ApiError::conflict(format!("stream {id} already exists")),
            other => ApiError::internal(&other),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_query", r.body_text())
    }
}

/// 400 `bad_json`: the body is not JSON.
pub fn bad_json(e: &serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_json",
        format!("Failed to parse the request body as JSON: {e}"),
    )
}

/// 422 `validation_failed` for a JSON value of the wrong shape (missing field, wrong type,
/// unknown field, an array where an object belongs), naming the offending field's path.
pub fn shape_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let mut err = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        format!("Failed to deserialize the JSON body into the target type: {e}"),
    );
    if path != "." && !path.is_empty() {
        err.field = Some(path);
    }
    err
}

/// Whether `Content-Type` is `application/json` or `application/<something>+json`.
pub fn is_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.split_once('/') {
        Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
        _ => false,
    }
}

/// A JSON request body, read as the OpenAPI document describes it ([`super::strict_json`]):
/// 415 `unsupported_media_type` without a JSON `Content-Type`, 413 `body_too_large` over the
/// body limit, 400 `bad_json` for text that is not JSON, 422 `validation_failed` (with `field`)
/// for JSON of the wrong shape.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Expected request with `Content-Type: application/json`",
            ));
        }
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                let status = r.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "body_too_large"
                } else {
                    "bad_request"
                };
                ApiError::new(status, code, r.body_text())
            })?;
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| bad_json(&e))?;
        super::strict_json::from_value(&value)
            .map(ApiJson)
            .map_err(shape_error)
    }
}

/// `axum::extract::Query` whose rejection is an [`ApiError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Which key the Go route used for its error message.
#[derive(Debug, Clone, Copy)]
pub enum GoKey {
    /// `{"Error": ...}`: enable_camera, disable_camera, HLS.
    Upper,
    /// `{"error": ...}`: archive ranges.
    Lower,
}

/// A Go-compatible error response.
#[derive(Debug)]
pub struct GoError {
    pub status: StatusCode,
    pub key: GoKey,
    pub message: String,
}

impl GoError {
    pub fn upper(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            key: GoKey::Upper,
            message: message.into(),
        }
    }

    pub fn lower(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            key: GoKey::Lower,
            message: message.into(),
        }
    }
}

/// `{"Error": "..."}` (for the OpenAPI document).
#[derive(Debug, Serialize, ToSchema)]
pub struct GoUpperError {
    #[serde(rename = "Error")]
    pub error: String,
}

/// `{"error": "..."}` (for the OpenAPI document).
#[derive(Debug, Serialize, ToSchema)]
pub struct GoLowerError {
    pub error: String,
}

impl IntoResponse for GoError {
    fn into_response(self) -> Response {
        match self.key {
            GoKey::Upper => (
                self.status,
                Json(GoUpperError {
                    error: self.message,
                }),
            )
                .into_response(),
            GoKey::Lower => (
                self.status,
                Json(GoLowerError {
                    error: self.message,
                }),
            )
                .into_response(),
        }
    }
}

/// Refuses a free-text field longer than `max` characters (what the document's `maxLength`
/// counts) or holding control characters (names, URLs, paths, reasons), with an error naming
/// the field.
pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("{field} is longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("{field} contains control characters"),
        ));
    }
    Ok(())
}
