//! The Go original's API routes, with its exact JSON (go-original.md §2.1, §2.3).
//!
//! Differences from the original are fixes, not shape changes: streams persist, `/status` lists the
//! streams (v0.8 always sent `{}`), a missing `guid` is a 400 instead of registering the nil UUID, and
//! ranges come from the SQL index with real segment times.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::error::{GoError, GoLowerError, GoUpperError};
use crate::auth::Caller;
use crate::auth::scope::Action;
use crate::db::{runs, streams};
use crate::media::{StreamParams, VideoCodec, codec};
use crate::stream::{OutputType, RtspTransport, Source, StreamSpec, parse_output_type};

/// `{"stream_id": ...}` entry of `/list`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListEntry {
    pub stream_id: Uuid,
}

/// Body of `GET /list`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse {
    pub data: Vec<ListEntry>,
}

/// Lists the active streams (those in the caller's scope when auth is on).
#[utoipa::path(get, path = "/list", tag = "go-compatible",
    responses((status = 200, description = "Active stream ids", body = ListResponse)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<ListResponse> {
    let data = state
        .manager
        .snapshot()
        .into_iter()
        .filter(|(spec, _)| caller.sees(spec.id))
        .map(|(spec, _)| ListEntry { stream_id: spec.id })
        .collect();
    Json(ListResponse { data })
}

/// `{"host": ..., "port": ...}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

/// One stream in the status document. Field order is the Go struct's.
#[derive(Debug, Serialize, ToSchema)]
pub struct GoStreamStatus {
    pub url: String,
    pub status: bool,
    pub on_demand: bool,
    pub online: bool,
    pub streaming: bool,
    pub viewers: u32,
    /// RFC 3339; `0001-01-01T00:00:00Z` when never checked.
    pub last_health_check: String,
    pub last_health_error: String,
    /// 2 = hls, 3 = mse, in configured order.
    pub supported_output_types: Vec<u8>,
    /// `null` until the codecs are known.
    pub codecs: Option<Vec<GoCodec>>,
    /// Ours: tracks left out of the live outputs and why (e.g. G.711 audio).
    pub skipped_tracks: Vec<String>,
}

/// A codec of a running stream: our RFC 6381 string, plus the fields the original's media library
/// (vdk) put there, computed from the stream's real parameter sets: H.264 `Record`, `RecordInfo`,
/// `SPSInfo`; AAC `ConfigBytes`, `Config`. Other codecs (H.265) have the string only. Byte fields
/// are base64, as Go's JSON encodes `[]byte`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GoCodec {
    /// RFC 6381 codec string, e.g. `avc1.42C01E` or `mp4a.40.2`.
    pub codec: String,
    /// H.264: the `AVCDecoderConfigurationRecord` (avcC body), base64.
    #[serde(rename = "Record", skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// H.264: the record's fields.
    #[serde(rename = "RecordInfo", skip_serializing_if = "Option::is_none")]
    pub record_info: Option<GoAvcRecordInfo>,
    /// H.264: the first SPS, parsed.
    #[serde(rename = "SPSInfo", skip_serializing_if = "Option::is_none")]
    pub sps_info: Option<GoSpsInfo>,
    /// AAC: the `AudioSpecificConfig`, base64.
    #[serde(rename = "ConfigBytes", skip_serializing_if = "Option::is_none")]
    pub config_bytes: Option<String>,
    /// AAC: the config's fields.
    #[serde(rename = "Config", skip_serializing_if = "Option::is_none")]
    pub config: Option<GoAacConfig>,
}

/// vdk's `AVCDecoderConfRecord`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct GoAvcRecordInfo {
    #[serde(rename = "AVCProfileIndication")]
    pub avc_profile_indication: u8,
    pub profile_compatibility: u8,
    #[serde(rename = "AVCLevelIndication")]
    pub avc_level_indication: u8,
    pub length_size_minus_one: u8,
    /// SPS NAL units, base64 each.
    #[serde(rename = "SPS")]
    pub sps: Vec<String>,
    /// PPS NAL units, base64 each.
    #[serde(rename = "PPS")]
    pub pps: Vec<String>,
}

/// vdk's `SPSInfo`: what the first SPS says.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct GoSpsInfo {
    pub id: u8,
    pub profile_idc: u8,
    pub level_idc: u8,
    /// The constraint flags byte shifted right by 2 (`constraint_set0..5_flag` in the low six
    /// bits), as vdk reported it.
    pub constraint_set_flag: u8,
    /// Picture width in macroblocks.
    pub mb_width: u32,
    /// Picture height in map units (macroblock rows, or field macroblock rows for field coding).
    pub mb_height: u32,
    pub crop_left: u32,
    pub crop_right: u32,
    pub crop_top: u32,
    pub crop_bottom: u32,
    /// Picture size after cropping.
    pub width: u32,
    pub height: u32,
    /// Frames per second from the VUI timing info (`time_scale / (2 × num_units_in_tick)`,
    /// rounded down); 0 when the SPS has none.
    #[serde(rename = "FPS")]
    pub fps: u32,
}

/// vdk's `MPEG4AudioConfig`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct GoAacConfig {
    /// The signalled sampling frequency (for HE-AAC the core rate).
    pub sample_rate: u32,
    /// Bit mask of speaker positions (vdk's `ChannelLayout`: 1 front centre, 2 front left,
    /// 4 front right, 8 back centre, 16 back left, 32 back right, 64 side left, 128 side right,
    /// 256 LFE); 0 for channel configurations other than 1..=7.
    pub channel_layout: u16,
    /// MPEG-4 audio object type (2 = AAC-LC).
    pub object_type: u8,
    pub sample_rate_index: u8,
    pub channel_config: u8,
}

/// vdk's speaker masks of the MPEG-4 channel configurations 1..=7.
const GO_CHANNEL_LAYOUTS: [u16; 8] = [
    0,
    0x001,                                                         // front centre
    0x002 | 0x004,                                                 // front left, right
    0x001 | 0x002 | 0x004,                                         // + front centre
    0x001 | 0x002 | 0x004 | 0x008,                                 // + back centre
    0x001 | 0x002 | 0x004 | 0x010 | 0x020,                         // + back left, right
    0x001 | 0x002 | 0x004 | 0x010 | 0x020 | 0x100,                 // + LFE
    0x001 | 0x002 | 0x004 | 0x040 | 0x080 | 0x010 | 0x020 | 0x100, // 7.1
];

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl GoCodec {
    /// The entries for a stream's parameters, video first. Fields that cannot be read from the
    /// parameter sets are left out (the string is always there).
    pub fn from_params(p: &StreamParams) -> Vec<GoCodec> {
        let mut out = Vec::with_capacity(2);
        if let Some(v) = &p.video {
            let mut c = GoCodec::string_only(&v.codec_string);
            if v.codec == VideoCodec::H264 {
                c.record = Some(base64(&v.config_record));
                if let Ok(r) = codec::avc_record_fields(&v.config_record) {
                    c.sps_info = r
                        .sps
                        .first()
                        .and_then(|sps| codec::h264_sps_fields(sps).ok())
                        .map(|s| GoSpsInfo {
                            id: s.id,
                            profile_idc: s.profile_idc,
                            level_idc: s.level_idc,
                            constraint_set_flag: s.constraint_flags >> 2,
                            mb_width: s.width_in_mbs,
                            mb_height: s.height_in_map_units,
                            crop_left: s.crop[0],
                            crop_right: s.crop[1],
                            crop_top: s.crop[2],
                            crop_bottom: s.crop[3],
                            width: s.width,
                            height: s.height,
                            fps: s
                                .frame_rate
                                .map_or(0, |f| f.floor().min(f64::from(u32::MAX)) as u32),
                        });
                    c.record_info = Some(GoAvcRecordInfo {
                        avc_profile_indication: r.profile_indication,
                        profile_compatibility: r.profile_compatibility,
                        avc_level_indication: r.level_indication,
                        length_size_minus_one: r.length_size_minus_one,
                        sps: r.sps.iter().map(|n| base64(n)).collect(),
                        pps: r.pps.iter().map(|n| base64(n)).collect(),
                    });
                }
            }
            out.push(c);
        }
        if let Some(a) = &p.audio {
            let mut c = GoCodec::string_only(&a.codec_string);
            c.config_bytes = Some(base64(&a.asc));
            c.config = codec::aac_config_fields(&a.asc).ok().map(|f| GoAacConfig {
                sample_rate: f.sample_rate,
                channel_layout: GO_CHANNEL_LAYOUTS
                    .get(usize::from(f.channel_config))
                    .copied()
                    .unwrap_or(0),
                object_type: f.object_type,
                sample_rate_index: f.sample_rate_index,
                channel_config: f.channel_config,
            });
            out.push(c);
        }
        out
    }

    fn string_only(codec: &str) -> GoCodec {
        GoCodec {
            codec: codec.to_owned(),
            record: None,
            record_info: None,
            sps_info: None,
            config_bytes: None,
            config: None,
        }
    }
}

/// `"hls"` section of the status document.
#[derive(Debug, Serialize, ToSchema)]
pub struct GoHlsStatus {
    pub hls_ms_per_segment: u64,
    pub hls_window_size: usize,
    pub hls_window_capacity: usize,
}

/// `"on_demand"` section of the status document.
#[derive(Debug, Serialize, ToSchema)]
pub struct GoOnDemandStatus {
    pub enabled: bool,
    pub idle_ms: i64,
    pub health_check: bool,
    pub health_interval_ms: i64,
    pub health_timeout_ms: i64,
}

/// The whole application status (`GET /status`, and the body of enable/disable replies).
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusDocument {
    pub api: HostPort,
    pub video: HostPort,
    /// Keyed by stream UUID.
    pub streams: BTreeMap<String, GoStreamStatus>,
    pub hls: GoHlsStatus,
    pub on_demand: GoOnDemandStatus,
}

const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Builds the status document from the manager's live view: the streams in the caller's scope,
/// with their source URL only where the caller may `manage` the stream (`""` elsewhere).
pub fn status_document(state: &AppState, caller: &Caller) -> StatusDocument {
    let c = &state.config;
    let streams = state
        .manager
        .snapshot()
        .into_iter()
        .filter(|(spec, _)| caller.sees(spec.id))
        .map(|(spec, st)| {
            let entry = GoStreamStatus {
                url: if caller.can(Action::Manage, spec.id) {
                    spec.source.display_url()
                } else {
                    String::new()
                },
                status: st.status,
                on_demand: c.on_demand_for(&spec),
                online: st.online,
                streaming: st.streaming,
                viewers: st.viewers,
                last_health_check: st
                    .last_health_check
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                    .unwrap_or_else(|| GO_ZERO_TIME.into()),
                last_health_error: st.last_health_error,
                supported_output_types: spec.outputs.iter().map(|o| o.go_code()).collect(),
                codecs: match &st.params {
                    Some(p) => Some(GoCodec::from_params(p)),
                    None => (!st.codecs.is_empty())
                        .then(|| st.codecs.iter().map(|c| GoCodec::string_only(c)).collect()),
                },
                skipped_tracks: st.skipped_tracks,
            };
            (spec.id.to_string(), entry)
        })
        .collect();
    StatusDocument {
        api: HostPort {
            host: c.api.host.clone(),
            port: c.api.port(),
        },
        video: HostPort {
            host: c.video.host.clone(),
            port: c.video.port(),
        },
        streams,
        hls: GoHlsStatus {
            hls_ms_per_segment: c.hls.ms_per_segment,
            hls_window_size: c.hls.window_size,
            hls_window_capacity: c.hls.window_capacity,
        },
        on_demand: GoOnDemandStatus {
            enabled: c.on_demand.enabled,
            idle_ms: c.on_demand.idle_ms,
            health_check: c.on_demand.health_check,
            health_interval_ms: c.on_demand.health_interval_ms,
            health_timeout_ms: c.on_demand.health_timeout_ms,
        },
    }
}

/// The whole application status (the streams in the caller's scope when auth is on).
#[utoipa::path(get, path = "/status", tag = "go-compatible",
    responses((status = 200, description = "Status document", body = StatusDocument)))]
pub async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<StatusDocument> {
    Json(status_document(&state, &caller))
}

/// Body of `POST /enable_camera` and `POST /disable_camera` as the server reads it (the Go
/// binder's struct: unknown properties ignored, wrong types refused). The document describes the
/// two bodies separately ([`EnableCameraRequest`], [`DisableCameraRequest`]).
#[derive(Debug, Deserialize)]
pub struct CameraRequest {
    pub guid: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub output_types: Option<Vec<String>>,
    #[serde(default)]
    pub on_demand: Option<bool>,
}

/// An output type the Go routes take: `mse` or `hls`, in any case.
pub const GO_OUTPUT_TYPE_PATTERN: &str = "^([Mm][Ss][Ee]|[Hh][Ll][Ss])$";

/// Body of `POST /enable_camera`. Unknown properties are ignored, as the Go original did.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // describes the body for the document; `CameraRequest` reads it
pub struct EnableCameraRequest {
    /// Stream UUID (not the nil UUID).
    #[schema(value_type = String, format = Uuid)]
    pub guid: Uuid,
    /// `rtsp://` or `rtsps://` URL with a host (scheme in any case). Needed to create a stream;
    /// when `guid` names a known stream it may be left out: an enabled stream stays as it is, a
    /// disabled one is enabled again with its stored settings.
    #[schema(min_length = 1)]
    pub url: String,
    /// `mse` and/or `hls` (any case); other types are refused with 400.
    pub output_types: Option<Vec<String>>,
    /// Pull only while watched; absent or `null` inherits `[on_demand] enabled`.
    pub on_demand: Option<bool>,
}

/// Body of `POST /disable_camera`: only `guid` is used; the other properties of the enable body
/// are read (so they must have their types) and ignored, as are unknown ones.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // describes the body for the document; `CameraRequest` reads it
pub struct DisableCameraRequest {
    /// Stream UUID (not the nil UUID).
    #[schema(value_type = String, format = Uuid)]
    pub guid: Uuid,
    /// Ignored.
    pub url: Option<String>,
    /// Ignored.
    pub output_types: Option<Vec<String>>,
    /// Ignored.
    pub on_demand: Option<bool>,
}

const BAD_JSON: &str = "Bad JSON binding";

/// Parses the body the way the original's binder did: anything unparsable (an array or a value of
/// the wrong type included), and a guid that is not a UUID, is "Bad JSON binding". Unlike the
/// original, a missing guid is refused too, and UUIDs are taken only in their standard hyphenated
/// form (what the document's `format: uuid` says). The access policy reads the guid with this same
/// function.
pub(crate) fn parse_camera_request(body: &[u8]) -> Result<(Uuid, CameraRequest), GoError> {
    let bad = |detail: Option<&str>| {
        GoError::upper(
            StatusCode::BAD_REQUEST,
            match detail {
                Some(d) => format!("{BAD_JSON}: {d}"),
                None => BAD_JSON.to_owned(),
            },
        )
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad(None))?;
    let req: CameraRequest = super::strict_json::from_value(&value).map_err(|_| bad(None))?;
    let guid = match req.guid.as_deref() {
        None | Some("") => return Err(bad(Some("'guid' is required"))),
        Some(g) => super::error::parse_uuid(g).ok_or_else(|| bad(None))?,
    };
    if guid.is_nil() {
        return Err(bad(Some("'guid' must not be the nil UUID")));
    }
    Ok((guid, req))
}

/// Starts a camera (creating it when unknown). A stream that already runs is left unchanged.
#[utoipa::path(post, path = "/enable_camera", tag = "go-compatible",
    request_body = EnableCameraRequest,
    responses(
        (status = 200, description = "Status document", body = StatusDocument),
        (status = 400, description = "Bad body or output type", body = GoUpperError),
        (status = 403, description = "The guid is unknown (creating a stream) and the credential lacks `manage` on every stream", body = GoUpperError),
    ))]
pub async fn enable_camera(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<StatusDocument>, GoError> {
    let (id, req) = parse_camera_request(&body)?;
    let mut outputs: Vec<OutputType> = Vec::new();
    for t in req.output_types.iter().flatten() {
        let ty = parse_output_type(t)
            .map_err(|e| GoError::upper(StatusCode::BAD_REQUEST, e.to_string()))?;
        if !outputs.contains(&ty) {
            outputs.push(ty);
        }
    }
    let internal = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "enable_camera failed");
        GoError::upper(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
    };
    let owner = state.manager.lock(id).await;
    let existing = streams::get(&state.db, id)
        .await
        .map_err(|e| internal(&e))?;
    let url = req.url.as_deref().unwrap_or_default().trim();
    match existing {
        Some(rec) if rec.spec.enabled => {
            // Already running: the original changes nothing.
        }
        Some(rec) => {
            // Disabled: the original had deleted it, so it registered the body's camera afresh.
            let mut spec = rec.spec;
            spec.enabled = true;
            if !url.is_empty() {
                check_rtsp_url(url)?;
                // The URL `/status` showed (masked) keeps the stored password.
                let stored = match &spec.source {
                    Source::Rtsp { url, .. } => Some(url.as_str()),
                    Source::File { .. } => None,
                };
                let url = crate::redact::restore_masked(url, stored).map_err(|e| {
                    GoError::upper(StatusCode::BAD_REQUEST, format!("{BAD_JSON}: 'url': {e}"))
                })?;
                spec.source = Source::Rtsp {
                    url,
                    transport: RtspTransport::Tcp,
                };
                spec.outputs = outputs;
                spec.on_demand = req.on_demand;
            }
            if let Some(rec) = streams::update(&state.db, &spec)
                .await
                .map_err(|e| internal(&e))?
            {
                owner.apply(&rec.spec).await;
            }
        }
        None => {
            // Creating a stream, unlike changing one, needs `manage` on every stream.
            if !caller.grant.allows_everywhere(Action::Manage) {
                return Err(GoError::upper(
                    StatusCode::FORBIDDEN,
                    "creating a stream needs 'manage' on every stream ('*')",
                ));
            }
            check_rtsp_url(url)?;
            let spec = StreamSpec {
                id,
                name: String::new(),
                source: Source::Rtsp {
                    url: url.to_owned(),
                    transport: RtspTransport::Tcp,
                },
                outputs,
                on_demand: req.on_demand,
                enabled: true,
                verbose: String::new(),
                archive: Default::default(),
                retention: Default::default(),
            };
            match streams::insert(&state.db, &spec, streams::Origin::Api).await {
                Ok(rec) => owner.apply(&rec.spec).await,
                // Created meanwhile by a path that does not take the lock (another process on
                // the same index): that row wins; it runs from there.
                Err(crate::db::DbError::Conflict(_)) => {}
                Err(e) => return Err(internal(&e)),
            }
        }
    }
    Ok(Json(status_document(&state, &caller)))
}

/// The document's `RTSP_URL_PATTERN` rule: `rtsp://`/`rtsps://` with a host, no fragment, no
/// control characters.
fn check_rtsp_url(url: &str) -> Result<(), GoError> {
    let ok = !url.chars().any(char::is_control)
        && url::Url::parse(url)
            .map(|u| {
                matches!(u.scheme(), "rtsp" | "rtsps")
                    && u.host_str().is_some_and(|h| !h.is_empty())
                    && u.fragment().is_none()
            })
            .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(GoError::upper(
            StatusCode::BAD_REQUEST,
            format!("{BAD_JSON}: 'url' must be an rtsp:// or rtsps:// URL"),
        ))
    }
}

/// Stops a camera and marks it disabled (persisted). Unknown guids answer 200 like the original.
#[utoipa::path(post, path = "/disable_camera", tag = "go-compatible",
    request_body = DisableCameraRequest,
    responses(
        (status = 200, description = "Status document", body = StatusDocument),
        (status = 400, description = "Bad body", body = GoUpperError),
    ))]
pub async fn disable_camera(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<StatusDocument>, GoError> {
    let (id, _) = parse_camera_request(&body)?;
    let owner = state.manager.lock(id).await;
    streams::set_enabled(&state.db, id, false)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "disable_camera failed");
            GoError::upper(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
        })?;
    owner.stop().await;
    Ok(Json(status_document(&state, &caller)))
}

/// One recorded range.
#[derive(Debug, Serialize, ToSchema)]
pub struct GoRange {
    /// RFC 3339, UTC.
    pub start: String,
    /// RFC 3339, UTC.
    pub end: String,
}

/// Body of `GET /archive/{stream_id}/ranges`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GoRangesResponse {
    /// The id as given in the path.
    pub stream_id: String,
    pub ranges: Vec<GoRange>,
}

/// Formats microseconds as RFC 3339 UTC with whole seconds (what Go clients got), rounding `up` for
/// range ends so a range never looks shorter than the recording.
pub fn rfc3339_secs(us: i64, up: bool) -> String {
    let secs = if up {
        us.div_euclid(1_000_000) + i64::from(us.rem_euclid(1_000_000) != 0)
    } else {
        us.div_euclid(1_000_000)
    };
    DateTime::<Utc>::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Recorded time ranges of a stream, from the SQL index. As in the original, holes shorter than
/// twice the stream's `ms_per_file` do not split a range; `start` and `end` are real times.
#[utoipa::path(get, path = "/archive/{stream_id}/ranges", tag = "go-compatible",
    params(("stream_id" = Uuid, Path, description = "Stream UUID (the original answered any text; ours 400 `invalid stream_id` for a non-UUID)")),
    responses(
        (status = 200, description = "Recorded ranges", body = GoRangesResponse),
        (status = 400, description = "`invalid stream_id`", body = GoLowerError),
        (status = 404, description = "`no archive segments found` or `archive not available: ...`", body = GoLowerError),
    ))]
pub async fn archive_ranges(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Json<GoRangesResponse>, GoError> {
    let id = super::error::parse_uuid(&raw_id)
        .ok_or_else(|| GoError::lower(StatusCode::BAD_REQUEST, "invalid stream_id"))?;
    if !state.config.archive.serving {
        return Err(GoError::lower(
            StatusCode::NOT_FOUND,
            "archive not available: archive serving not enabled globally",
        ));
    }
    let failed = |e: crate::db::DbError| {
        tracing::error!(error = %e, stream = %id, "ranges query failed");
        GoError::lower(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed to list archive files",
        )
    };
    // The original merged files whose starts were within 2 x ms_per_file of the previous file's
    // assumed end, so its timelines show one range per recording period; the same tolerance on
    // real segment times (ends stay real). A stream deleted since has the global length.
    let ms_per_file = match streams::get(&state.db, id).await.map_err(failed)? {
        Some(rec) => state.config.ms_per_file_for(&rec.spec),
        None => state.config.archive.ms_per_file(),
    };
    let gap_us = i64::try_from(ms_per_file).unwrap_or(i64::MAX / 4_000) * 2_000;
    let now = crate::db::now_us();
    let ranges = runs::ranges(&state.db, id, 0, now + 24 * 3600 * 1_000_000, gap_us)
        .await
        .map_err(failed)?;
    if ranges.is_empty() {
        return Err(GoError::lower(
            StatusCode::NOT_FOUND,
            "no archive segments found",
        ));
    }
    Ok(Json(GoRangesResponse {
        stream_id: raw_id,
        ranges: ranges
            .into_iter()
            .map(|r| GoRange {
                start: rfc3339_secs(r.start_us, false),
                end: rfc3339_secs(r.end_us, true),
            })
            .collect(),
    }))
}
