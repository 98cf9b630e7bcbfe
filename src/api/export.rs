//! `GET /api/v1/streams/{id}/export.mp4?start=&end=`: a time range of a stream's archive as one
//! standard MP4 download, with byte ranges, `ETag` and conditional requests.
//!
//! Planning and muxing live in `archive::export`; this module parses the request and speaks HTTP:
//! times are RFC 3339 or Unix seconds, a single `Range` (`a-b`, `a-`, `-n`) is answered with 206
//! (several ranges, or an `If-Range` that does not match, get the whole file), the `ETag` comes
//! from the stream, the range and the segments read (so `If-None-Match` is answered with 304
//! before any segment is opened).

use std::ops::Range;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::archive::{TimeError, parse_time};
use super::error::{ApiError, ApiQuery, ErrorBody, parse_id};
use crate::archive::export::{self, ExportError, MAX_RANGE_US};
use crate::archive::storage::StorageError;
use crate::auth::Caller;
use crate::db::segments::SegmentRow;
use crate::db::streams;
use crate::limits::Permit;

/// Query of the export route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Start of the range: RFC 3339 (`2026-05-01T12:00:00.5Z`) or Unix seconds (`1777636800.5`).
    pub start: String,
    /// End of the range (exclusive), same formats; at most 24 h after `start`.
    pub end: String,
}

/// The bytes of an MP4 file (how the OpenAPI document describes the download).
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Mp4File(pub Vec<u8>);

/// What the `Range` header asks for, for a file of a known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable `Range`: the whole file, 200.
    Full,
    /// One satisfiable range, 206.
    Part(Range<u64>),
    /// A syntactically valid range that lies outside the file, 416.
    Unsatisfiable,
}

/// Interprets a `Range` header value (RFC 9110 §14): one `bytes` range of the forms `a-b`, `a-`
/// or `-n`. Other units, several ranges and malformed values are ignored (the whole file).
pub fn parse_range(value: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if len > 0 => RangeRequest::Part(len.saturating_sub(n)..len),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        (a, "") => match num(a) {
            Some(a) if a < len => RangeRequest::Part(a..len),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        (a, b) => match (num(a), num(b)) {
            (Some(a), Some(b)) if a <= b => {
                if a < len {
                    // `b` may be u64::MAX: saturate, the range ends at the file's end anyway.
                    RangeRequest::Part(a..b.saturating_add(1).min(len))
                } else {
                    RangeRequest::Unsatisfiable
                }
            }
            _ => RangeRequest::Full,
        },
    }
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, `*` matches anything).
fn none_match(value: &str, etag: &str) -> bool {
    value.split(',').map(str::trim).any(|tag| {
        tag == "*"
            || tag.strip_prefix("W/").unwrap_or(tag) == etag.strip_prefix("W/").unwrap_or(etag)
    })
}

/// A wall-clock time for a file name: `20260501T120000Z`, with a fraction only when needed.
fn file_time(us: i64) -> String {
    let Some(t) = DateTime::<Utc>::from_timestamp_micros(us) else {
        return us.to_string();
    };
    let fmt = if us % 1_000_000 == 0 {
        "%Y%m%dT%H%M%SZ"
    } else if us % 1000 == 0 {
        "%Y%m%dT%H%M%S%.3fZ"
    } else {
        "%Y%m%dT%H%M%S%.6fZ"
    };
    t.format(fmt).to_string()
}

/// 400 for a time of the wrong shape (not the document's pattern); 422 for one of the right
/// shape that names no instant the archive can hold (before 1970, after 9999, February 30).
fn bad_time(field: &str, value: &str, e: &TimeError) -> ApiError {
    match e {
        TimeError::Unparsable => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_time",
            format!("{field} '{value}' is neither RFC 3339 nor Unix seconds"),
        )
        .with_field(field),
        TimeError::OutOfBounds | TimeError::NoSuchInstant => ApiError::invalid(
            field,
            format!("{field} '{value}' names no time between 1970 and 9999"),
        ),
    }
}

fn header_value(text: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(text).map_err(|e| ApiError::internal(&e))
}

/// Downloads a time range of the archive as one MP4 file.
///
/// The file starts at the keyframe before `start` and uses an edit list, so players begin
/// exactly at `start`; it ends with the last frame starting before `end`. Gaps in the recording
/// are closed up (timestamps stay continuous); a codec change inside the range ends the file at
/// the change. `moov` comes first, so playback can start before the download ends.
#[utoipa::path(get, path = "/api/v1/streams/{id}/export.mp4", tag = "archive",
    params(
        ("id" = Uuid, Path, description = "Stream UUID"),
        ExportQuery,
        ("Range" = Option<String>, Header, description = "One byte range: `bytes=a-b`, `bytes=a-` or `bytes=-n`"),
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer: 304 if unchanged"),
        ("If-Range" = Option<String>, Header, description = "Serve `Range` only if the `ETag` still matches"),
    ),
    responses(
        (status = 200, description = "The MP4 file (`Content-Disposition: attachment`)", content_type = "video/mp4", body = inline(Mp4File)),
        (status = 206, description = "The requested byte range (`Content-Range`)", content_type = "video/mp4", body = inline(Mp4File)),
        (status = 304, description = "Not modified (`If-None-Match` matched the `ETag`)"),
        (status = 400, description = "Bad id, or `start`/`end` neither RFC 3339 nor Unix seconds", body = ErrorBody),
        (status = 404, description = "No such stream, or nothing recorded in the range", body = ErrorBody),
        (status = 416, description = "The byte range lies outside the file (`Content-Range: bytes */size`)", body = ErrorBody),
        (status = 422, description = "`start` not before `end`, a range over 24 h, a time before 1970 or after 9999 or on a day that does not exist, or segments that cannot be exported", body = ErrorBody),
        (status = 429, description = "This client already has `[limits] exports_per_client` exports running (code `limit_reached`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 503, description = "The server already has `[limits] exports_total` exports running (code `server_busy`, with `Retry-After`); or a segment in the range cannot be read now: its object store, or the cluster node that recorded it and still holds the file, does not answer (code `storage_unavailable`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ))]
pub async fn export_mp4(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    // An unknown stream is a 404 before any parameter is judged (as on the other archive routes).
    if !state.config.archive.serving {
        return Err(ApiError::not_found(
            "archive not available: archive serving not enabled globally",
        ));
    }
    if streams::get(&state.db, id).await?.is_none() {
        return Err(ApiError::not_found(format!("stream {id} not found")));
    }
    // The archive routes' parser, so every archive endpoint accepts the same times.
    let start_us = parse_time(&q.start).map_err(|e| bad_time("start", &q.start, &e))?;
    let end_us = parse_time(&q.end).map_err(|e| bad_time("end", &q.end, &e))?;
    if start_us >= end_us {
        return Err(ApiError::invalid("end", "end must be after start"));
    }
    if end_us - start_us > MAX_RANGE_US {
        return Err(ApiError::invalid(
            "end",
            "an export covers at most 24 hours",
        ));
    }
    // A place among the exports running, held until the body has been sent (or the client has
    // gone: the body stream, and the permit in it, is dropped then).
    let permit = state
        .limits
        .exports
        .try_enter(&caller.client_key())
        .map_err(|refusal| ApiError::limited(refusal, "exports"))?;
    let mut rows = export::segments_in_range(&state.db, id, start_us, end_us).await?;
    // A read lease on every segment for the whole response: retention and the uploader leave
    // them alone until the body is sent (or the client leaves). A segment that could not be
    // leased is being deleted: the export is planned without it, before any byte is sent.
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let lease = state.archive.leases.acquire(&state.db, &ids).await?;
    rows.retain(|r| lease.covers(r.id));
    if rows.is_empty() {
        return Err(nothing_recorded());
    }
    let etag = export::etag(id, start_us, end_us, &rows);
    let header_str = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if header_str(header::IF_NONE_MATCH).is_some_and(|v| none_match(v, &etag)) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, header_value(&etag)?)],
        )
            .into_response());
    }

    let plan_key = export::plan_key(&etag, &rows);
    let cached = state.archive.export_plans.get(&plan_key);
    let plan = match cached {
        Some(plan) => plan,
        None => {
            let plan = plan_export(&state, &rows, start_us, end_us).await?;
            state.archive.export_plans.insert(plan_key, plan.clone());
            plan
        }
    };
    tracing::debug!(stream = %id, ?plan, "export planned");

    let len = plan.len();
    // A Range is honoured only if `If-Range` (when sent) names this very file.
    let range_header = match header_str(header::IF_RANGE) {
        Some(tag) if tag.trim() != etag => None,
        _ => header_str(header::RANGE),
    };
    let mut out = HeaderMap::new();
    out.insert(header::ETAG, header_value(&etag)?);
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let (status, range) = match parse_range(range_header, len) {
        RangeRequest::Full => (StatusCode::OK, 0..len),
        RangeRequest::Part(r) => {
            out.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {}-{}/{len}", r.start, r.end - 1))?,
            );
            (StatusCode::PARTIAL_CONTENT, r)
        }
        RangeRequest::Unsatisfiable => {
            out.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{len}"))?,
            );
            let err = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the export is {len} bytes long"),
            );
            return Ok((out, err).into_response());
        }
    };
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    out.insert(
        header::CONTENT_LENGTH,
        header_value(&(range.end - range.start).to_string())?,
    );
    out.insert(
        header::CONTENT_DISPOSITION,
        header_value(&format!(
            "attachment; filename=\"{id}_{}_{}.mp4\"",
            file_time(start_us),
            file_time(end_us)
        ))?,
    );
    let body = plan.stream(range).inspect_err(move |e| {
        // The status line is gone: the client sees the connection end early.
        tracing::warn!(stream = %id, segments = lease.ids().len(), error = %e,
            "export cut short");
    });
    // The permit lives in the body stream: it is given back when the stream is dropped (sent in
    // full, failed, or abandoned by the client).
    let body = body.map(move |chunk| {
        let _held: &Permit = &permit;
        chunk
    });
    Ok((status, out, Body::from_stream(body)).into_response())
}

/// Plans the export of `rows` (reading their fragment headers), with the HTTP errors.
async fn plan_export(
    state: &AppState,
    rows: &[SegmentRow],
    start_us: i64,
    end_us: i64,
) -> Result<Arc<export::ExportPlan>, ApiError> {
    let archive = state.archive.clone();
    let storage_for = move |row: &SegmentRow| archive.storage_for_row(row);
    match export::plan(rows, start_us, end_us, &storage_for).await {
        Ok(plan) => Ok(Arc::new(plan)),
        Err(ExportError::Empty) => Err(nothing_recorded()),
        Err(e @ (ExportError::Unsupported { .. } | ExportError::NoStorage { .. })) => {
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_exportable",
                e.to_string(),
            ))
        }
        // An object store or another cluster node that cannot be reached (or timed out): the
        // bytes exist but cannot be read now. The detail (keys, node) goes to the log only.
        Err(
            e @ ExportError::Storage {
                source: StorageError::Remote { .. },
                ..
            },
        ) => {
            tracing::warn!(error = %e, "export: a segment cannot be read right now");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "a segment in the range cannot be read right now (its object store or the \
                 cluster node that recorded it does not answer); try again later",
            ))
        }
        Err(e) => Err(ApiError::internal(&e)),
    }
}

fn nothing_recorded() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_recording",
        "nothing is recorded in this range",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        let r = |v: &str| parse_range(Some(v), 1000);
        assert_eq!(parse_range(None, 1000), Full);
        assert_eq!(r("bytes=0-99"), Part(0..100));
        assert_eq!(r("bytes=990-2000"), Part(990..1000));
        assert_eq!(r("bytes=500-"), Part(500..1000));
        assert_eq!(r("bytes=-100"), Part(900..1000));
        assert_eq!(r("bytes=-5000"), Part(0..1000));
        assert_eq!(r("bytes=1000-"), Unsatisfiable);
        assert_eq!(r("bytes=1000-1001"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        // The largest numbers there are saturate instead of overflowing.
        assert_eq!(r("bytes=0-18446744073709551615"), Part(0..1000));
        assert_eq!(r("bytes=999-18446744073709551615"), Part(999..1000));
        assert_eq!(r("bytes=18446744073709551615-"), Unsatisfiable);
        assert_eq!(
            r("bytes=18446744073709551615-18446744073709551615"),
            Unsatisfiable
        );
        assert_eq!(r("bytes=-18446744073709551615"), Part(0..1000));
        assert_eq!(
            parse_range(Some("bytes=0-18446744073709551615"), u64::MAX),
            Part(0..u64::MAX)
        );
        // Beyond u64: not a number we can honour, so the whole file (as for any malformed range).
        assert_eq!(r("bytes=0-18446744073709551616"), Full);
        assert_eq!(r("bytes=-99999999999999999999999"), Full);
        // Ignored: other units, several ranges, nonsense, reversed.
        for v in [
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=x-",
            "bytes=5-1",
            "bytes=",
            "bytes=-",
        ] {
            assert_eq!(r(v), Full, "{v}");
        }
    }

    #[test]
    fn etags_and_names() {
        assert!(none_match("\"a\"", "\"a\""));
        assert!(none_match("\"b\", W/\"a\"", "\"a\""));
        assert!(none_match("*", "\"a\""));
        assert!(!none_match("\"b\"", "\"a\""));
        assert_eq!(file_time(1_700_000_000_000_000), "20231114T221320Z");
        assert_eq!(file_time(1_700_000_000_500_000), "20231114T221320.500Z");
        assert_eq!(file_time(1_700_000_000_000_001), "20231114T221320.000001Z");
    }
}
