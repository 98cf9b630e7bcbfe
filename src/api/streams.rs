//! `/api/v1/streams`: create, read, update (PUT and JSON merge-patch PATCH), delete, list, status.
//!
//! Every change is written to the database first, then applied to the running stream through the
//! [`StreamManager`](crate::manager::StreamManager), so it survives a restart.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody, check_text, parse_id};
use crate::auth::Caller;
use crate::auth::scope::{Action, Streams};
use crate::config::{MAX_MS_PER_FILE, MIN_MS_PER_FILE};
use crate::db::streams::{self, Origin, StreamRecord};
use crate::manager::StreamLock;
use crate::stream::{
    ArchiveSpec, OutputType, RetentionSpec, RtspTransport, Source, StorageKind, StreamSpec,
};

/// What the server takes as an RTSP source URL, as a pattern for the document: `rtsp://` or
/// `rtsps://` (any case), optional `user:password@`, a host (name or IPv4 address), an optional
/// port up to 65535, an optional path and query; no fragment and no control characters. The host
/// may hold percent-escapes (`%C3%AD`), as the URLs the API shows do after normalisation. Every
/// string it matches parses as a URL with a host. (Bracketed IPv6 literal hosts are accepted too;
/// the pattern leaves them out, so generated values stay valid.)
pub const RTSP_URL_PATTERN: &str = r"^\s*[Rr][Tt][Ss][Pp][Ss]?://([^\s\x00-\x1f\x7f-\x9f/?#@]*@)?([^\s\x00-\x1f\x7f-\x9f/?#@:<>\[\\\]^|%]|%[0-9A-Fa-f]{2})+(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})?)?([/?][^#\x00-\x1f\x7f-\x9f]*)?\s*$";

/// Where a stream's media comes from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceDto {
    /// An RTSP camera.
    Rtsp {
        /// `rtsp://[user:pass@]host[:port]/path` or `rtsps://...` (scheme in any case, a host,
        /// no control characters).
        #[schema(min_length = 1, max_length = 2048)]
        url: String,
        /// `tcp` (interleaved, default) or `udp`.
        #[serde(default)]
        transport: RtspTransport,
    },
    /// An MP4 file played as a camera.
    File {
        /// Path of the MP4 file on the server (under `[sources] file_roots`; 422 otherwise).
        #[schema(min_length = 1, max_length = 4096)]
        path: String,
        /// Start again at the end of the file.
        #[serde(default, rename = "loop")]
        looping: bool,
    },
}

/// A stream's source as the API shows it. Not [`SourceDto`]: the URL comes back masked
/// (`***` for secrets, `<redacted>` when it does not parse) and normalised by the URL parser
/// (host lower-cased and percent-encoded), so the request's rules on `url` do not hold for it.
/// Sent back in a PUT or PATCH, a masked URL keeps the stored secrets.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceView {
    /// An RTSP camera.
    Rtsp {
        /// The URL with its password and credential-like query values masked as `***`.
        url: String,
        /// `tcp` or `udp`.
        transport: RtspTransport,
    },
    /// An MP4 file played as a camera.
    File {
        /// Path of the MP4 file on the server.
        path: String,
        /// Start again at the end of the file.
        #[serde(rename = "loop")]
        looping: bool,
    },
}

/// Archive (recording) settings of a stream. Absent fields inherit `[archive]` / `[s3]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveDto {
    /// Record this stream (also requires `[archive] recording = true`).
    pub recording: bool,
    /// Target segment length in ms (at most 300000 recommended).
    #[schema(minimum = 1000, maximum = 3600000)]
    pub ms_per_file: Option<u32>,
    /// `filesystem` or `s3` (`s3` needs the server's `[s3]` settings; 422 otherwise).
    pub storage: StorageKind,
    /// Local directory for segments: under `[archive] directory` or one of `[archive] roots`
    /// (422 otherwise).
    #[schema(min_length = 1, max_length = 4096)]
    pub directory: Option<String>,
    /// S3 bucket (storage `s3`): `[s3] bucket` or one of `[s3] buckets` (422 otherwise).
    #[schema(min_length = 1, max_length = 63)]
    pub bucket: Option<String>,
    /// S3 key prefix (storage `s3`); no `..` path component (422).
    #[schema(min_length = 1, max_length = 512)]
    pub prefix: Option<String>,
}

/// Retention limits; absent means unlimited.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionDto {
    /// Delete segments older than this many seconds.
    #[schema(minimum = 1)]
    pub max_age_s: Option<i64>,
    /// Delete the oldest segments while the stream uses more than this many bytes.
    #[schema(minimum = 1)]
    pub max_bytes: Option<i64>,
}

fn yes() -> bool {
    true
}

/// A stream definition as clients send it (POST, PUT, and the target of a PATCH).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamInput {
    /// Optional on create (a random UUID is assigned); must match the path on PUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// Display name: at most 256 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub name: String,
    #[serde(deserialize_with = "super::strict_json::object")]
    pub source: SourceDto,
    /// Live outputs: `mse` and/or `hls`.
    #[serde(default)]
    pub outputs: Vec<OutputType>,
    /// Pull only while watched; `null` inherits `[on_demand] enabled`.
    #[serde(default)]
    pub on_demand: Option<bool>,
    /// A disabled stream is kept but not run.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub archive: ArchiveDto,
    #[serde(default)]
    pub retention: RetentionDto,
}

/// A stream as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamDto {
    pub id: Uuid,
    pub name: String,
    /// `null` unless the caller may `manage` the stream (with auth off: always shown).
    pub source: Option<SourceView>,
    pub outputs: Vec<OutputType>,
    pub on_demand: Option<bool>,
    pub enabled: bool,
    pub archive: ArchiveDto,
    pub retention: RetentionDto,
    /// `config` (seeded from the config file) or `api`.
    pub origin: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

fn rfc3339_us(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl StreamInput {
    fn from_spec(s: &StreamSpec) -> Self {
        StreamInput {
            id: Some(s.id),
            name: s.name.clone(),
            source: match &s.source {
                Source::Rtsp { url, transport } => SourceDto::Rtsp {
                    url: url.clone(),
                    transport: *transport,
                },
                Source::File { path, looping } => SourceDto::File {
                    path: path.clone(),
                    looping: *looping,
                },
            },
            outputs: s.outputs.clone(),
            on_demand: s.on_demand,
            enabled: s.enabled,
            archive: ArchiveDto {
                recording: s.archive.recording,
                ms_per_file: s.archive.ms_per_file,
                storage: s.archive.storage,
                directory: s.archive.directory.clone(),
                bucket: s.archive.bucket.clone(),
                prefix: s.archive.prefix.clone(),
            },
            retention: RetentionDto {
                max_age_s: s.retention.max_age_s,
                max_bytes: s.retention.max_bytes,
            },
        }
    }
}

impl From<&StreamRecord> for StreamDto {
    /// Secrets in the source URL are masked: they are write-only (see [`crate::redact`]).
    fn from(r: &StreamRecord) -> Self {
        let i = StreamInput::from_spec(&r.spec);
        let source = match i.source {
            SourceDto::Rtsp { url, transport } => SourceView::Rtsp {
                url: crate::redact::mask_url(&url),
                transport,
            },
            SourceDto::File { path, looping } => SourceView::File { path, looping },
        };
        StreamDto {
            id: r.spec.id,
            name: i.name,
            source: Some(source),
            outputs: i.outputs,
            on_demand: i.on_demand,
            enabled: i.enabled,
            archive: i.archive,
            retention: i.retention,
            origin: r.origin.as_str().to_owned(),
            created_at: rfc3339_us(r.created_at_us),
            updated_at: rfc3339_us(r.updated_at_us),
        }
    }
}

impl StreamDto {
    /// The stream as `caller` may see it: the source (URL, credentials, file path) only with
    /// `manage` on the stream.
    pub fn for_caller(r: &StreamRecord, caller: &Caller) -> Self {
        let mut dto = StreamDto::from(r);
        if !caller.can(Action::Manage, r.spec.id) {
            dto.source = None;
        }
        dto
    }
}

/// Longest name, URL and path, in characters (the document's `maxLength`).
const MAX_NAME_CHARS: usize = 256;
const MAX_URL_CHARS: usize = 2048;
const MAX_PATH_CHARS: usize = 4096;

fn check_optional(field: &str, value: &Option<String>, max: usize) -> Result<(), ApiError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(ApiError::invalid(
            field,
            format!("{field} must not be empty (omit it to inherit the default)"),
        )),
        Some(v) => check_text(field, v, max),
        None => Ok(()),
    }
}

/// Validates an input and turns it into a spec with the given id. `stored` is the stream as the
/// database holds it (PUT, PATCH): a source URL sent back with masked secrets keeps its secrets.
pub fn validate(
    state: &AppState,
    id: Uuid,
    input: StreamInput,
    stored: Option<&StreamSpec>,
) -> Result<StreamSpec, ApiError> {
    if id.is_nil() {
        return Err(ApiError::invalid("id", "id must not be the nil UUID"));
    }
    check_text("name", &input.name, MAX_NAME_CHARS)?;
    let source = match input.source {
        SourceDto::Rtsp { url, transport } => {
            let url = url.trim().to_owned();
            check_text("source.url", &url, MAX_URL_CHARS)?;
            let parsed = url::Url::parse(&url).map_err(|e| {
                ApiError::invalid("source.url", format!("source.url is not a URL: {e}"))
            })?;
            if !matches!(parsed.scheme(), "rtsp" | "rtsps") {
                return Err(ApiError::invalid(
                    "source.url",
                    "source.url must start with rtsp:// or rtsps://",
                ));
            }
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(ApiError::invalid("source.url", "source.url has no host"));
            }
            if parsed.fragment().is_some() {
                return Err(ApiError::invalid(
                    "source.url",
                    "source.url must not contain a fragment: percent-encode '#' in a password as %23",
                ));
            }
            let stored_url = match stored.map(|s| &s.source) {
                Some(Source::Rtsp { url, .. }) => Some(url.as_str()),
                _ => None,
            };
            let url = crate::redact::restore_masked(&url, stored_url)
                .map_err(|e| ApiError::invalid("source.url", format!("source.url: {e}")))?;
            Source::Rtsp { url, transport }
        }
        SourceDto::File { path, looping } => {
            check_text("source.path", &path, MAX_PATH_CHARS)?;
            if path.trim().is_empty() {
                return Err(ApiError::invalid("source.path", "source.path is empty"));
            }
            check_file_source(state, &path)?;
            Source::File { path, looping }
        }
    };
    let mut outputs = Vec::new();
    for o in input.outputs {
        if !outputs.contains(&o) {
            outputs.push(o);
        }
    }
    let a = input.archive;
    if let Some(ms) = a.ms_per_file
        && !(MIN_MS_PER_FILE..=MAX_MS_PER_FILE).contains(&u64::from(ms))
    {
        return Err(ApiError::invalid(
            "archive.ms_per_file",
            format!("archive.ms_per_file must be within {MIN_MS_PER_FILE}..={MAX_MS_PER_FILE}"),
        ));
    }
    check_optional("archive.directory", &a.directory, MAX_PATH_CHARS)?;
    if let Some(dir) = &a.directory {
        let roots = state.manager.storage_roots();
        if !roots.contains(std::path::Path::new(dir)) {
            return Err(ApiError::invalid(
                "archive.directory",
                format!(
                    "archive.directory must lie under [archive] directory or one of [archive] \
                     roots: {}",
                    roots.describe()
                ),
            ));
        }
    }
    check_optional("archive.bucket", &a.bucket, 63)?;
    if let Some(bucket) = &a.bucket {
        let allowed = state.config.allowed_buckets();
        if !allowed.iter().any(|b| b == bucket) {
            return Err(ApiError::invalid(
                "archive.bucket",
                if allowed.is_empty() {
                    "archive.bucket is set but the server has no [s3] settings".to_owned()
                } else {
                    format!(
                        "archive.bucket must be the [s3] bucket or one of [s3] buckets: {}",
                        allowed.join(", ")
                    )
                },
            ));
        }
    }
    check_optional("archive.prefix", &a.prefix, 512)?;
    if a.prefix
        .as_deref()
        .is_some_and(|p| p.split('/').any(|c| c == ".."))
    {
        return Err(ApiError::invalid(
            "archive.prefix",
            "archive.prefix must not contain '..'",
        ));
    }
    if a.storage == StorageKind::S3 && state.config.effective_s3().is_none() {
        return Err(ApiError::invalid(
            "archive.storage",
            "archive.storage is s3 but the server has no [s3] settings",
        ));
    }
    let r = input.retention;
    for (field, v) in [
        ("retention.max_age_s", r.max_age_s),
        ("retention.max_bytes", r.max_bytes),
    ] {
        if v.is_some_and(|v| v <= 0) {
            return Err(ApiError::invalid(
                field,
                format!("{field} must be positive"),
            ));
        }
    }
    Ok(StreamSpec {
        id,
        name: input.name,
        source,
        outputs,
        on_demand: input.on_demand,
        enabled: input.enabled,
        verbose: String::new(),
        archive: ArchiveSpec {
            recording: a.recording,
            ms_per_file: a.ms_per_file,
            storage: a.storage,
            directory: a.directory,
            bucket: a.bucket,
            prefix: a.prefix,
        },
        retention: RetentionSpec {
            max_age_s: r.max_age_s,
            max_bytes: r.max_bytes,
        },
    })
}

/// A file source must be a regular file under `[sources] file_roots` (or named by the config
/// file). The answer names the roots but says nothing about paths outside them.
fn check_file_source(state: &AppState, path: &str) -> Result<(), ApiError> {
    use crate::roots::FileAccessError;
    let files = state.manager.files();
    match files.open(std::path::Path::new(path)) {
        Ok(_) => Ok(()),
        Err(FileAccessError::NotAllowed { .. } | FileAccessError::NotRegular { .. }) => {
            Err(ApiError::invalid(
                "source.path",
                format!(
                    "source.path must be a regular file under one of the allowed roots \
                     ([sources] file_roots): {}",
                    files.describe()
                ),
            ))
        }
        Err(FileAccessError::Unreadable { .. }) => Err(ApiError::invalid(
            "source.path",
            format!("source.path '{path}' is not a readable file on the server"),
        )),
    }
}

async fn load(state: &AppState, id: Uuid) -> Result<StreamRecord, ApiError> {
    streams::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("stream {id} not found")))
}

/// Query of `GET /api/v1/streams`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    pub cursor: Option<String>,
}

/// A page of streams.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamPage {
    pub items: Vec<StreamDto>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Lists streams, ordered by id, a page at a time (those in the caller's scope when auth is on).
#[utoipa::path(get, path = "/api/v1/streams", tag = "streams",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of streams", body = StreamPage),
        (status = 400, description = "Bad query", body = ErrorBody),
    ))]
pub async fn list_streams(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<StreamPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be within 1..=1000").with_field("limit"));
    }
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            super::error::parse_uuid(c)
                .ok_or_else(|| ApiError::bad_request("cursor is not valid").with_field("cursor"))
        })
        .transpose()?;
    // Fetch one extra row to know whether another page exists.
    let g = &caller.grant;
    let mut rows = if g.admin || (g.streams == Streams::All && !g.actions.is_empty()) {
        streams::list_page(&state.db, after, limit + 1).await?
    } else if let (Streams::Only(ids), false) = (&g.streams, g.actions.is_empty()) {
        // A scoped token names at most a thousand streams: read them by id, in id order (the
        // order of the full listing, so cursors mean the same).
        let mut rows = Vec::new();
        for id in ids.iter().filter(|id| after.is_none_or(|a| **id > a)) {
            if rows.len() > limit as usize {
                break;
            }
            if let Some(r) = streams::get(&state.db, *id).await? {
                rows.push(r);
            }
        }
        rows
    } else {
        Vec::new()
    };
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.spec.id.to_string())
    } else {
        None
    };
    Ok(Json(StreamPage {
        items: rows
            .iter()
            .map(|r| StreamDto::for_caller(r, &caller))
            .collect(),
        next_cursor,
    }))
}

/// Creates a stream and starts it if enabled.
#[utoipa::path(post, path = "/api/v1/streams", tag = "streams",
    request_body = StreamInput,
    responses(
        (status = 201, description = "Created; `Location` names the new stream", body = StreamDto),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "A stream with this id exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
    ))]
pub async fn create_stream(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<StreamInput>,
) -> Result<Response, ApiError> {
    let id = input.id.unwrap_or_else(Uuid::new_v4);
    let spec = validate(&state, id, input, None)?;
    let owner = state.manager.lock(id).await;
    let rec = streams::insert(&state.db, &spec, Origin::Api).await?;
    owner.apply(&rec.spec).await;
    let mut headers = HeaderMap::new();
    if let Ok(v) = format!("/api/v1/streams/{id}").parse() {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, headers, Json(StreamDto::from(&rec))).into_response())
}

/// One stream.
#[utoipa::path(get, path = "/api/v1/streams/{id}", tag = "streams",
    params(("id" = Uuid, Path, description = "Stream UUID")),
    responses(
        (status = 200, description = "The stream", body = StreamDto),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 404, description = "No such stream", body = ErrorBody),
    ))]
pub async fn get_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Result<Json<StreamDto>, ApiError> {
    let id = parse_id(&raw)?;
    Ok(Json(StreamDto::for_caller(
        &load(&state, id).await?,
        &caller,
    )))
}

/// Stores a validated update and applies it. The caller holds the stream's lock.
async fn store_update(
    state: &AppState,
    owner: &StreamLock<'_>,
    input: StreamInput,
) -> Result<Json<StreamDto>, ApiError> {
    let id = owner.id();
    if input.id.is_some_and(|body_id| body_id != id) {
        return Err(ApiError::invalid(
            "id",
            "id in the body differs from the id in the path",
        ));
    }
    // An unknown id is a 404 before any field is judged (the nil id too: no stream has it).
    let stored = streams::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("stream {id} not found")))?;
    let spec = validate(state, id, input, Some(&stored.spec))?;
    let rec = streams::update(&state.db, &spec)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("stream {id} not found")))?;
    owner.apply(&rec.spec).await;
    Ok(Json(StreamDto::from(&rec)))
}

/// Replaces a stream's settings and restarts it with them.
#[utoipa::path(put, path = "/api/v1/streams/{id}", tag = "streams",
    params(("id" = Uuid, Path, description = "Stream UUID")),
    request_body = StreamInput,
    responses(
        (status = 200, description = "Updated", body = StreamDto),
        (status = 400, description = "Bad id or malformed JSON", body = ErrorBody),
        (status = 404, description = "No such stream", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
    ))]
pub async fn replace_stream(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ApiJson(input): ApiJson<StreamInput>,
) -> Result<Json<StreamDto>, ApiError> {
    let id = parse_id(&raw)?;
    let owner = state.manager.lock(id).await;
    store_update(&state, &owner, input).await
}

/// A JSON merge patch (RFC 7386) of a [`StreamInput`] as the document describes it: any of its
/// properties; `null` removes one (it takes its default again); objects merge property by
/// property. The patched stream must be a valid `StreamInput` (422 otherwise, `field` naming the
/// property).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // describes the body for the document; `patch_stream` merges it as JSON
pub struct StreamPatch {
    /// Must be the id in the path.
    pub id: Option<Uuid>,
    /// Display name: at most 256 characters, no control characters.
    #[schema(max_length = 256)]
    pub name: Option<String>,
    /// Properties of `source` to change (`kind`, `url`, `transport`, `path`, `loop`).
    #[schema(value_type = Option<Object>)]
    pub source: Option<serde_json::Value>,
    pub outputs: Option<Vec<OutputType>>,
    pub on_demand: Option<bool>,
    pub enabled: Option<bool>,
    /// Properties of `archive` to change.
    #[schema(value_type = Option<Object>)]
    pub archive: Option<serde_json::Value>,
    /// Properties of `retention` to change.
    #[schema(value_type = Option<Object>)]
    pub retention: Option<serde_json::Value>,
}

/// Changes some settings (JSON merge patch, RFC 7386) and restarts the stream with them.
#[utoipa::path(patch, path = "/api/v1/streams/{id}", tag = "streams",
    params(("id" = Uuid, Path, description = "Stream UUID")),
    request_body(content = StreamPatch, description = "JSON merge patch of a StreamInput",
        content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "Updated", body = StreamDto),
        (status = 400, description = "Bad id or malformed JSON", body = ErrorBody),
        (status = 404, description = "No such stream", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
    ))]
pub async fn patch_stream(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<StreamDto>, ApiError> {
    let id = parse_id(&raw)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime != "application/json" && mime != "application/merge-patch+json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type application/merge-patch+json or application/json",
        ));
    }
    let patch: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| super::error::bad_json(&e))?;
    if !patch.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "a merge patch must be a JSON object",
        ));
    }
    // Read, merge and write under the stream's lock, so concurrent patches cannot lose updates.
    let owner = state.manager.lock(id).await;
    let current = load(&state, id).await?;
    let mut doc = serde_json::to_value(StreamInput::from_spec(&current.spec))
        .map_err(|e| ApiError::internal(&e))?;
    merge_patch(&mut doc, &patch);
    let input: StreamInput =
        super::strict_json::from_value(&doc).map_err(super::error::shape_error)?;
    store_update(&state, &owner, input).await
}

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(map) = target {
        for (k, v) in patch_map {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Query of `DELETE /api/v1/streams/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Also delete the stream's recorded archive (every segment that started before now and
    /// overlaps no protected range), in the background. Without it the archive stays until
    /// retention ages it out (`[retention] max_age_s` / `max_bytes` apply to archives of deleted
    /// streams).
    #[serde(default)]
    pub purge: bool,
}

/// Stops and deletes a stream. Its recorded archive stays until retention removes it, unless
/// `purge=true`: then retention deletes it at once, in the background (crash-consistent, resumed
/// after a restart), keeping segments that overlap a protected range. `purge=true` also works for
/// an id whose stream row is already gone but whose archive remains.
#[utoipa::path(delete, path = "/api/v1/streams/{id}", tag = "streams",
    params(("id" = Uuid, Path, description = "Stream UUID"), DeleteQuery),
    responses(
        (status = 202, description = "Deleted; the archive purge has started (`purge=true`)"),
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad id or query", body = ErrorBody),
        (status = 404, description = "No such stream (nor, with `purge=true`, any archive of it)", body = ErrorBody),
    ))]
pub async fn delete_stream(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&raw)?;
    let owner = state.manager.lock(id).await;
    if !q.purge {
        if !streams::delete(&state.db, id).await? {
            return Err(ApiError::not_found(format!("stream {id} not found")));
        }
        owner.stop().await;
        return Ok(StatusCode::NO_CONTENT);
    }
    let has_row = streams::get(&state.db, id).await?.is_some();
    if !has_row && !crate::db::protected::stream_known(&state.db, id).await? {
        return Err(ApiError::not_found(format!("stream {id} not found")));
    }
    crate::db::retention::delete_and_purge(&state.db, id, crate::db::now_us()).await?;
    // The recorder closes its last segment (started before the purge request, so purged too).
    owner.stop().await;
    state.manager.retention_trigger().wake();
    tracing::info!(stream = %id, "stream deleted, archive purge requested");
    Ok(StatusCode::ACCEPTED)
}

/// Live status of one stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamStatusDto {
    pub id: Uuid,
    /// The stream is enabled and managed by the runtime.
    pub active: bool,
    /// Codecs are known (the source delivered media).
    pub status: bool,
    pub online: bool,
    pub streaming: bool,
    pub viewers: u32,
    /// The stream is being recorded (its and the server's recording settings are on).
    pub recording: bool,
    /// RFC 3339, or `null` if never checked.
    pub last_health_check: Option<String>,
    pub last_health_error: String,
    /// RFC 6381 codec strings.
    pub codecs: Vec<String>,
    /// Tracks left out of live outputs and why.
    pub skipped_tracks: Vec<String>,
    /// Times a lagging viewer (or writer) was skipped ahead to the next keyframe.
    pub lag_skips: u64,
}

/// Live status of one stream.
#[utoipa::path(get, path = "/api/v1/streams/{id}/status", tag = "streams",
    params(("id" = Uuid, Path, description = "Stream UUID")),
    responses(
        (status = 200, description = "Status", body = StreamStatusDto),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 404, description = "No such stream", body = ErrorBody),
    ))]
pub async fn stream_status(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<StreamStatusDto>, ApiError> {
    let id = parse_id(&raw)?;
    load(&state, id).await?;
    let st = state.manager.status(id);
    let active = st.is_some();
    let recording = state.config.archive.recording
        && state.manager.spec(id).is_some_and(|s| s.archive.recording);
    let st = st.unwrap_or_default();
    Ok(Json(StreamStatusDto {
        id,
        active,
        status: st.status,
        online: st.online,
        streaming: st.streaming,
        viewers: st.viewers,
        recording,
        last_health_check: st
            .last_health_check
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
        last_health_error: st.last_health_error,
        codecs: st.codecs,
        skipped_tracks: st.skipped_tracks,
        lag_skips: st.lag_skips,
    }))
}
