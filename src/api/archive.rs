//! `/api/v1/streams/{id}/...` archive queries: recorded ranges, segment listing (keyset pages) and
//! protected ranges (retention locks).
//!
//! Every answer comes from indexed SQL (`runs`, `segments`, `protected_ranges`); nothing here
//! touches the storage. The archive outlives the stream row, so these routes answer for any id the
//! index knows anything about (a stream row, segments or protected ranges) and 404 only for ids it
//! has never seen. They do not depend on `[archive] serving`, which only governs the Go route.
//!
//! Times in queries and bodies are RFC 3339 (`2025-12-20T10:00:00Z`, any offset) or Unix seconds
//! (`1766224800`, fractions allowed); answers are RFC 3339 UTC with millisecond precision.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody, check_text, parse_id};
use crate::db::pages::{self, SegmentItem};
use crate::db::protected::{self, ProtectedRange};
use crate::db::runs;

/// Earliest instant accepted: the Unix epoch (the index stores microseconds since then).
pub const MIN_TIME_US: i64 = 0;
/// Latest instant accepted: 9999-12-31T23:59:59.999999Z, the end of RFC 3339's four-digit years.
pub const MAX_TIME_US: i64 = 253_402_300_799_999_999;
/// Longest window a query or protected range may span (100 years of 365.25 days). Longer is a
/// client bug (a unit mix-up, ms for s), refused with 422 rather than answered.
pub const MAX_SPAN_US: i64 = 36_525 * 86_400 * 1_000_000;
/// Default `end` of a query window: now plus this, so the segment being recorded is included even
/// with some clock skew between server and client (the Go original listed up to now + 24 h).
pub const DEFAULT_END_AHEAD_US: i64 = 86_400 * 1_000_000;

/// Default hole between segments that still counts as one range. Recorded segments are back to
/// back; imported Go archives have whole-second names, so a little slack merges them.
pub const DEFAULT_GAP_MS: i64 = 2_000;
/// Smallest `gap_ms`: the runs table already merges holes up to one second
/// (`db::runs::RUN_GAP_US`), so a smaller tolerance could not be honoured.
pub const MIN_GAP_MS: i64 = runs::RUN_GAP_US / 1_000;
/// Largest `gap_ms` (31 days): enough to merge whole days or weeks of a timeline.
pub const MAX_GAP_MS: i64 = 31 * 86_400 * 1_000;

/// Default and largest page of `GET .../segments`. A 1000-row page is answered in a few
/// milliseconds (docs/benchmarks.md); larger pages would only make latency less predictable.
pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1_000;

/// Longest `reason` of a protected range, in characters (what the document's `maxLength` counts).
pub const MAX_REASON_CHARS: usize = 1_024;

/// What a time in a query looks like (the OpenAPI `pattern` of every time parameter): Unix
/// seconds with an optional fraction, or RFC 3339 with an offset (an unencoded `+` arrives as a
/// space). A string of another shape is a 400; one of this shape that names no real instant
/// (`2025-02-30T00:00:00Z`), or one before 1970 or after 9999, a 422.
pub const TIME_PATTERN: &str = r"^[ \t\n\r\x0b\x0c]*([0-9]+(\.[0-9]+)?|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?([Zz]|[+ -]([01][0-9]|2[0-3]):[0-5][0-9]))[ \t\n\r\x0b\x0c]*$";

/// The white space [`parse_time`] ignores around a time (ASCII only, as [`TIME_PATTERN`] says).
const TIME_SPACE: [char; 6] = [' ', '\t', '\n', '\r', '\x0b', '\x0c'];

/// Why a time could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeError {
    /// Neither RFC 3339 nor Unix seconds.
    Unparsable,
    /// Parsed, but before 1970 or after year 9999.
    OutOfBounds,
    /// RFC 3339 in shape (it matches [`TIME_PATTERN`]) but no real instant, e.g. February 30.
    NoSuchInstant,
}

/// Parses RFC 3339 (any offset) or Unix seconds with an optional fraction into microseconds since
/// the epoch. A space where the offset's `+` belongs is read as `+`: an unencoded `+` in a query
/// string arrives as a space.
pub fn parse_time(raw: &str) -> Result<i64, TimeError> {
    let s = raw.trim_matches(TIME_SPACE);
    if s.is_empty() {
        return Err(TimeError::Unparsable);
    }
    if s.bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return parse_unix_seconds(s);
    }
    let parsed = DateTime::parse_from_rfc3339(s).or_else(|e| match s.rfind(' ') {
        Some(i) if i > 10 => DateTime::parse_from_rfc3339(&format!("{}+{}", &s[..i], &s[i + 1..])),
        _ => Err(e),
    });
    let t = parsed.map_err(|e| match e.kind() {
        chrono::format::ParseErrorKind::OutOfRange | chrono::format::ParseErrorKind::Impossible => {
            TimeError::NoSuchInstant
        }
        _ => TimeError::Unparsable,
    })?;
    let us = t.timestamp_micros();
    if (MIN_TIME_US..=MAX_TIME_US).contains(&us) {
        Ok(us)
    } else {
        Err(TimeError::OutOfBounds)
    }
}

/// `[-]digits[.digits]` seconds; more than six fraction digits are truncated to microseconds.
fn parse_unix_seconds(s: &str) -> Result<i64, TimeError> {
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits(whole)
        || !digits(frac)
        || (body.contains('.') && frac.is_empty())
    {
        return Err(TimeError::Unparsable);
    }
    if negative {
        // Well-formed, but before the epoch.
        return Err(TimeError::OutOfBounds);
    }
    let secs: i64 = whole.parse().map_err(|_| TimeError::OutOfBounds)?;
    let mut frac_us: i64 = 0;
    for (i, b) in frac.bytes().take(6).enumerate() {
        frac_us += i64::from(b - b'0') * 10i64.pow(5 - i as u32);
    }
    let us = secs
        .checked_mul(1_000_000)
        .and_then(|v| v.checked_add(frac_us))
        .ok_or(TimeError::OutOfBounds)?;
    if us > MAX_TIME_US {
        return Err(TimeError::OutOfBounds);
    }
    Ok(us)
}

/// Formats microseconds as RFC 3339 UTC with milliseconds, rounding down (`up = false`) or up, so a
/// range shown never looks shorter than what it covers.
pub fn rfc3339_ms(us: i64, up: bool) -> String {
    let ms = if up {
        us.div_euclid(1_000) + i64::from(us.rem_euclid(1_000) != 0)
    } else {
        us.div_euclid(1_000)
    };
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Milliseconds between two formatted bounds (consistent with [`rfc3339_ms`]'s rounding).
fn duration_ms(start_us: i64, end_us: i64) -> i64 {
    let start_ms = start_us.div_euclid(1_000);
    let end_ms = end_us.div_euclid(1_000) + i64::from(end_us.rem_euclid(1_000) != 0);
    end_ms - start_ms
}

/// A keyset position in a segment listing: the last row's `(start_us, id)`. Encoded as 32 hex
/// digits; clients treat it as opaque.
fn encode_cursor(start_us: i64, id: i64) -> String {
    format!("{:016x}{:016x}", start_us as u64, id as u64)
}

fn decode_cursor(raw: &str) -> Option<(i64, i64)> {
    if raw.len() != 32 || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let start = u64::from_str_radix(&raw[..16], 16).ok()? as i64;
    let id = u64::from_str_radix(&raw[16..], 16).ok()? as i64;
    Some((start, id))
}

/// 404 unless the index knows the stream (a row, archive segments or protected ranges).
async fn check_known(state: &AppState, id: Uuid) -> Result<(), ApiError> {
    if protected::stream_known(&state.db, id).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "stream {id} not found (no stream and no archive with this id)"
        )))
    }
}

/// Where a time came from: a query parameter (unparsable is a 400) or a JSON body (422, as for any
/// well-formed body with an invalid field).
#[derive(Clone, Copy)]
enum Origin {
    Query,
    Body,
}

fn time_arg(field: &str, raw: &str, origin: Origin) -> Result<i64, ApiError> {
    parse_time(raw).map_err(|e| match (e, origin) {
        (TimeError::Unparsable, Origin::Query) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_time",
            format!("{field} '{raw}' is neither RFC 3339 nor Unix seconds"),
        )
        .with_field(field),
        (TimeError::Unparsable, Origin::Body) => ApiError::invalid(
            field,
            format!("{field} '{raw}' is neither RFC 3339 nor Unix seconds"),
        ),
        (TimeError::OutOfBounds, _) => ApiError::invalid(
            field,
            format!("{field} '{raw}' is outside 1970-01-01T00:00:00Z..=9999-12-31T23:59:59Z"),
        ),
        (TimeError::NoSuchInstant, _) => ApiError::invalid(
            field,
            format!("{field} '{raw}' names no real instant (a day the month does not have)"),
        ),
    })
}

/// Checks a `[start, end)` window: start before end, at most [`MAX_SPAN_US`] long.
fn check_window(start_us: i64, end_us: i64) -> Result<(), ApiError> {
    if start_us >= end_us {
        return Err(ApiError::invalid(
            "start",
            format!(
                "start ({}) must be before end ({})",
                rfc3339_ms(start_us, false),
                rfc3339_ms(end_us, false)
            ),
        ));
    }
    if end_us - start_us > MAX_SPAN_US {
        return Err(ApiError::invalid(
            "end",
            "the window from start to end is longer than 100 years",
        ));
    }
    Ok(())
}

/// The window of a query: `start` defaults to the epoch (all time), `end` to now + 1 day.
fn query_window(start: Option<&str>, end: Option<&str>) -> Result<(i64, i64), ApiError> {
    let start_us = match start {
        Some(raw) => time_arg("start", raw, Origin::Query)?,
        None => MIN_TIME_US,
    };
    let end_us = match end {
        Some(raw) => time_arg("end", raw, Origin::Query)?,
        None => crate::db::now_us() + DEFAULT_END_AHEAD_US,
    };
    check_window(start_us, end_us)?;
    Ok((start_us, end_us))
}

/// [`query_window`] for stream `id`: a window of the right shape but invalid (422) is judged only
/// once the id is known, so an unknown id is a 404 whatever its window (the index is asked only
/// on this error path; valid windows are checked for the id by the query itself).
async fn known_window(
    state: &AppState,
    id: Uuid,
    start: Option<&str>,
    end: Option<&str>,
) -> Result<(i64, i64), ApiError> {
    match query_window(start, end) {
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => {
            check_known(state, id).await?;
            Err(e)
        }
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Ranges

/// Query of `GET /api/v1/streams/{id}/ranges`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangesQuery {
    /// Window start, RFC 3339 or Unix seconds (default: the epoch, i.e. all time).
    pub start: Option<String>,
    /// Window end (exclusive), RFC 3339 or Unix seconds (default: now + 1 day).
    pub end: Option<String>,
    /// Holes up to this many milliseconds are bridged (default 2000).
    #[param(minimum = 1000, maximum = 2678400000i64)]
    pub gap_ms: Option<i64>,
}

/// One recorded range, clipped to the query window.
#[derive(Debug, Serialize, ToSchema)]
pub struct RangeDto {
    /// RFC 3339 UTC, milliseconds.
    pub start: String,
    /// RFC 3339 UTC, milliseconds (exclusive).
    pub end: String,
    pub duration_ms: i64,
}

/// Body of `GET /api/v1/streams/{id}/ranges`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RangesResponse {
    pub stream_id: Uuid,
    /// Ordered by start, disjoint, separated by holes longer than `gap_ms`.
    pub ranges: Vec<RangeDto>,
}

/// Recorded time ranges of a stream within a window.
///
/// Answered from the `runs` table (a few rows per recording run, whatever the window) plus the
/// segment being recorded. Ranges are clipped to `[start, end)`.
#[utoipa::path(get, path = "/api/v1/streams/{id}/ranges", tag = "archive",
    params(("id" = Uuid, Path, description = "Stream UUID"), RangesQuery),
    responses(
        (status = 200, description = "Recorded ranges (possibly none)", body = RangesResponse),
        (status = 400, description = "Bad id, time or gap_ms", body = ErrorBody),
        (status = 404, description = "Neither a stream nor an archive has this id", body = ErrorBody),
        (status = 422, description = "start not before end, or a window over 100 years", body = ErrorBody),
    ))]
pub async fn stream_ranges(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<RangesQuery>,
) -> Result<Json<RangesResponse>, ApiError> {
    let id = parse_id(&raw)?;
    let (start_us, end_us) = known_window(&state, id, q.start.as_deref(), q.end.as_deref()).await?;
    let gap_ms = q.gap_ms.unwrap_or(DEFAULT_GAP_MS);
    if !(MIN_GAP_MS..=MAX_GAP_MS).contains(&gap_ms) {
        return Err(ApiError::bad_request(format!(
            "gap_ms must be within {MIN_GAP_MS}..={MAX_GAP_MS}"
        ))
        .with_field("gap_ms"));
    }
    let ranges = runs::ranges(&state.db, id, start_us, end_us, gap_ms * 1_000).await?;
    if ranges.is_empty() {
        // Recordings prove the id known; only an empty answer needs the check.
        check_known(&state, id).await?;
    }
    Ok(Json(RangesResponse {
        stream_id: id,
        ranges: ranges
            .into_iter()
            .map(|r| {
                let (s, e) = (r.start_us.max(start_us), r.end_us.min(end_us));
                RangeDto {
                    start: rfc3339_ms(s, false),
                    end: rfc3339_ms(e, true),
                    duration_ms: duration_ms(s, e),
                }
            })
            .collect(),
    }))
}

// ---------------------------------------------------------------------------------------------
// Segments

/// Query of `GET /api/v1/streams/{id}/segments`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SegmentsQuery {
    /// Window start, RFC 3339 or Unix seconds (default: all time).
    pub start: Option<String>,
    /// Window end (exclusive), RFC 3339 or Unix seconds (default: now + 1 day).
    pub end: Option<String>,
    /// `next_cursor` of the previous page (same `start` and `end`).
    #[param(pattern = "^[0-9a-fA-F]{32}$")]
    pub cursor: Option<String>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One archive segment.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentDto {
    pub id: i64,
    /// Wall-clock time of the first frame, RFC 3339 UTC, milliseconds.
    pub start: String,
    /// Wall-clock time just after the last frame (advances while `recording`).
    pub end: String,
    /// `end - start` in milliseconds.
    pub duration_ms: i64,
    /// Sum of the frame durations in the file, in milliseconds.
    pub media_duration_ms: i64,
    pub bytes: i64,
    /// `recording` or `complete` (other states are not listed).
    pub state: String,
    /// `filesystem` or `s3`.
    pub storage: String,
    /// S3 outbox state: `none`, `local`, `uploading` or `remote`.
    pub upload_state: String,
    /// The bucket holding an `s3` segment (the stream's own bucket, or `[s3]`'s). Absent for
    /// filesystem segments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
}

impl SegmentDto {
    /// The listed segment; an `s3` row without a bucket (uploaded before the index stored
    /// buckets) is in `default_bucket`, the `[s3]` one.
    fn new(r: &SegmentItem, default_bucket: Option<&str>) -> Self {
        let bucket = match r.storage.as_str() {
            "s3" => r.bucket.as_deref().or(default_bucket).map(str::to_owned),
            _ => None,
        };
        SegmentDto {
            id: r.id,
            start: rfc3339_ms(r.start_us, false),
            end: rfc3339_ms(r.end_us, true),
            duration_ms: duration_ms(r.start_us, r.end_us),
            media_duration_ms: r.media_duration_us / 1_000,
            bytes: r.bytes,
            state: r.state.clone(),
            storage: r.storage.clone(),
            upload_state: r.upload_state.clone(),
            bucket,
        }
    }
}

/// A page of segments.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentPage {
    pub stream_id: Uuid,
    /// Ordered by start time (then id).
    pub items: Vec<SegmentDto>,
    /// Pass as `cursor` (with the same window) for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Playable segments of a stream overlapping a window, a page at a time.
///
/// Keyset pagination on `(start, id)`: every page is one bounded index range scan, however deep,
/// and rows recorded meanwhile never shift a page.
#[utoipa::path(get, path = "/api/v1/streams/{id}/segments", tag = "archive",
    params(("id" = Uuid, Path, description = "Stream UUID"), SegmentsQuery),
    responses(
        (status = 200, description = "A page of segments", body = SegmentPage),
        (status = 400, description = "Bad id, time, cursor or limit", body = ErrorBody),
        (status = 404, description = "Neither a stream nor an archive has this id", body = ErrorBody),
        (status = 422, description = "start not before end, or a window over 100 years", body = ErrorBody),
    ))]
pub async fn list_segments(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<SegmentsQuery>,
) -> Result<Json<SegmentPage>, ApiError> {
    let id = parse_id(&raw)?;
    let (start_us, end_us) = known_window(&state, id, q.start.as_deref(), q.end.as_deref()).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(
            ApiError::bad_request(format!("limit must be within 1..={MAX_PAGE}"))
                .with_field("limit"),
        );
    }
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            decode_cursor(c).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_cursor",
                    "cursor is not a next_cursor this API returned",
                )
                .with_field("cursor")
            })
        })
        .transpose()?;
    // One extra row tells whether another page exists.
    let mut rows = pages::segments(&state.db, id, start_us, end_us, after, limit + 1).await?;
    if rows.is_empty() {
        // Segments prove the id known; only an empty page needs the check.
        check_known(&state, id).await?;
    }
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(r.start_us, r.id))
    } else {
        None
    };
    Ok(Json(SegmentPage {
        stream_id: id,
        items: rows
            .iter()
            .map(|r| SegmentDto::new(r, state.archive.default_bucket()))
            .collect(),
        next_cursor,
    }))
}

// ---------------------------------------------------------------------------------------------
// Protected ranges

/// A time in a JSON body: RFC 3339 text, Unix seconds as a number, or Unix seconds as text.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TimeValue {
    Seconds(i64),
    FractionalSeconds(f64),
    Text(String),
}

impl TimeValue {
    fn to_us(&self, field: &str) -> Result<i64, ApiError> {
        match self {
            TimeValue::Seconds(s) => time_arg(field, &s.to_string(), Origin::Body),
            // `Display` of an f64 never uses exponent notation, so this is plain decimal text.
            // -0.0 is zero (its text "-0" would read as a time before the epoch).
            TimeValue::FractionalSeconds(s) => {
                let s = if *s == 0.0 { 0.0 } else { *s };
                time_arg(field, &s.to_string(), Origin::Body)
            }
            TimeValue::Text(t) => time_arg(field, t, Origin::Body),
        }
    }
}

/// Body of `POST /api/v1/streams/{id}/protected-ranges`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProtectedRangeInput {
    /// Start of the protected time (inclusive).
    pub start: TimeValue,
    /// End of the protected time (exclusive); after `start`, at most 100 years later.
    pub end: TimeValue,
    /// Why (case number, incident); at most 1024 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub reason: String,
}

/// A protected range: retention never deletes segments overlapping it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProtectedRangeDto {
    pub id: i64,
    pub stream_id: Uuid,
    /// RFC 3339 UTC, milliseconds (rounded down).
    pub start: String,
    /// RFC 3339 UTC, milliseconds (rounded up).
    pub end: String,
    pub reason: String,
    /// RFC 3339 UTC.
    pub created_at: String,
}

impl From<&ProtectedRange> for ProtectedRangeDto {
    fn from(r: &ProtectedRange) -> Self {
        ProtectedRangeDto {
            id: r.id,
            stream_id: r.stream_id,
            start: rfc3339_ms(r.start_us, false),
            end: rfc3339_ms(r.end_us, true),
            reason: r.reason.clone(),
            created_at: rfc3339_ms(r.created_at_us, false),
        }
    }
}

/// The protected ranges of a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProtectedRangeList {
    /// Ordered by start.
    pub items: Vec<ProtectedRangeDto>,
}

/// Lists a stream's protected ranges.
#[utoipa::path(get, path = "/api/v1/streams/{id}/protected-ranges", tag = "archive",
    params(("id" = Uuid, Path, description = "Stream UUID")),
    responses(
        (status = 200, description = "Protected ranges", body = ProtectedRangeList),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 404, description = "Neither a stream nor an archive has this id", body = ErrorBody),
    ))]
pub async fn list_protected(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<ProtectedRangeList>, ApiError> {
    let id = parse_id(&raw)?;
    check_known(&state, id).await?;
    let rows = protected::list(&state.db, id).await?;
    Ok(Json(ProtectedRangeList {
        items: rows.iter().map(ProtectedRangeDto::from).collect(),
    }))
}

/// Protects a time range of a stream's archive from retention.
#[utoipa::path(post, path = "/api/v1/streams/{id}/protected-ranges", tag = "archive",
    params(("id" = Uuid, Path, description = "Stream UUID")),
    request_body = ProtectedRangeInput,
    responses(
        (status = 201, description = "Created; `Location` names the new range", body = ProtectedRangeDto),
        (status = 400, description = "Bad id or malformed JSON", body = ErrorBody),
        (status = 404, description = "Neither a stream nor an archive has this id", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid field (time, order, span, reason)", body = ErrorBody),
    ))]
pub async fn create_protected(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ApiJson(input): ApiJson<ProtectedRangeInput>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    // An unknown id is a 404 before any field is judged.
    check_known(&state, id).await?;
    let start_us = input.start.to_us("start")?;
    let end_us = input.end.to_us("end")?;
    check_window(start_us, end_us)?;
    check_text("reason", &input.reason, MAX_REASON_CHARS)?;
    let row = protected::insert(&state.db, id, start_us, end_us, &input.reason).await?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = format!("/api/v1/streams/{id}/protected-ranges/{}", row.id).parse() {
        headers.insert(header::LOCATION, v);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(ProtectedRangeDto::from(&row)),
    )
        .into_response())
}

/// Removes a protected range; retention may then delete what it covered.
#[utoipa::path(delete, path = "/api/v1/streams/{id}/protected-ranges/{range_id}", tag = "archive",
    params(
        ("id" = Uuid, Path, description = "Stream UUID"),
        ("range_id" = i64, Path, description = "Protected range id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Bad id or range id", body = ErrorBody),
        (status = 404, description = "No such protected range for this stream", body = ErrorBody),
    ))]
pub async fn delete_protected(
    State(state): State<AppState>,
    Path((raw, raw_range)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&raw)?;
    let range_id: i64 = raw_range.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("'{raw_range}' is not a protected range id"),
        )
        .with_field("range_id")
    })?;
    if protected::delete(&state.db, id, range_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "protected range {range_id} of stream {id} not found"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_both_notations() {
        assert_eq!(parse_time("1766224800"), Ok(1_766_224_800_000_000));
        assert_eq!(parse_time("1766224800.25"), Ok(1_766_224_800_250_000));
        assert_eq!(parse_time("1766224800.1234567"), Ok(1_766_224_800_123_456));
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(
            parse_time("2025-12-20T10:00:00Z"),
            Ok(1_766_224_800_000_000)
        );
        assert_eq!(
            parse_time("2025-12-20T13:00:00.5+03:00"),
            Ok(1_766_224_800_500_000)
        );
        // An unencoded '+' in a query string arrives as a space.
        assert_eq!(
            parse_time("2025-12-20T13:00:00 03:00"),
            Ok(1_766_224_800_000_000)
        );
    }

    #[test]
    fn bad_times_are_told_apart() {
        for bad in [
            "",
            " ",
            "x",
            "yesterday",
            "12:00",
            "1.",
            ".5",
            "1.2.3",
            "1e9",
            "1 2",
            "2023-11-14",
            "2025-13-01T00:00:00Z",
        ] {
            assert_eq!(parse_time(bad), Err(TimeError::Unparsable), "{bad:?}");
        }
        for out in [
            "-1",
            "-5",
            "1969-12-31T23:59:59Z",
            "99999999999999999999",
            "253402300800",
        ] {
            assert_eq!(parse_time(out), Err(TimeError::OutOfBounds), "{out:?}");
        }
        assert_eq!(parse_time("9999-12-31T23:59:59.999999Z"), Ok(MAX_TIME_US));
    }

    #[test]
    fn formatting_rounds_outwards() {
        assert_eq!(
            rfc3339_ms(1_766_224_800_000_000, false),
            "2025-12-20T10:00:00.000Z"
        );
        assert_eq!(
            rfc3339_ms(1_766_224_800_000_400, false),
            "2025-12-20T10:00:00.000Z"
        );
        assert_eq!(
            rfc3339_ms(1_766_224_800_000_400, true),
            "2025-12-20T10:00:00.001Z"
        );
        assert_eq!(duration_ms(1_000_400, 2_000_400), 1_001);
        assert_eq!(duration_ms(1_000_000, 2_000_000), 1_000);
    }

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        for (s, id) in [(0, 1), (1_766_224_800_000_000, 42), (i64::MAX, i64::MAX)] {
            assert_eq!(decode_cursor(&encode_cursor(s, id)), Some((s, id)));
        }
        for bad in [
            "",
            "abc",
            "zz00000000000000000000000000000z",
            &"0".repeat(33),
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }
}
