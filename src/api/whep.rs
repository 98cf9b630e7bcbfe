//! WHEP (draft-ietf-wish-whep) endpoints: `POST /whep/{stream_id}` with an SDP offer answers
//! `201 Created` with the SDP answer and the session's `Location`; `DELETE` on that location ends
//! the session; `PATCH` (trickle ICE) is accepted and ignored, since the ICE-lite server learns
//! the browser's address from its checks; `OPTIONS` says what `POST` takes.
//!
//! Served on both listeners (the web UI uses the video listener), under the same access policy
//! as `/ws/live`: a bearer token or a signed URL with the `live` action on the stream.

use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ErrorBody, parse_id};
use crate::auth::Caller;
use crate::auth::scope::Action;
use crate::webrtc::OpenError;

/// Largest SDP offer accepted (browsers send a few KiB).
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// `Retry-After` when a stream is not live yet or the session limits are reached.
const RETRY_AFTER: Duration = Duration::from_secs(2);
const SDP: &str = "application/sdp";
const TRICKLE: &str = "application/trickle-ice-sdpfrag";
/// Says whether the session sends audio: `PCMU`, `PCMA`, or `none: <why>`.
const AUDIO_HEADER: &str = "x-webrtc-audio";

/// Whether the request's `Content-Type` is `expected` (parameters ignored).
fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

fn retry_after(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(RETRY_AFTER.as_secs()),
    );
    resp
}

/// Starts a WebRTC session (WHEP). Served on both listeners; the web UI uses the video
/// listener. The answer carries every server candidate (the server does not trickle) on the one
/// UDP port `[webrtc] udp_port`. H.264 video (H.265 where the offer has an H265 payload type), and a camera's G.711 audio when the offer has an
/// audio m-line with its codec (AAC has no WebRTC codec: AAC cameras are video-only).
#[utoipa::path(post, path = "/whep/{stream_id}", tag = "live",
    params(("stream_id" = Uuid, Path, description = "Stream UUID")),
    request_body(content = String, content_type = "application/sdp",
        description = "The browser's SDP offer (`recvonly` video; candidates optional)"),
    responses(
        (status = 201, description = "The SDP answer; `Location` names the session (for DELETE)",
            body = String, content_type = "application/sdp",
            headers(("Location" = String, description = "`/whep/{stream_id}/{session_id}`"),
                ("X-WebRTC-Audio" = String, description = "`PCMU` or `PCMA` when the session sends the camera's G.711 audio, else `none: <why>` (video only)"))),
        (status = 400, description = "Not an offer the server can answer (code `bad_offer`, \
            field `sdp`): not SDP text (RFC 8866) the parser reads, no receivable video m-line, \
            or no H.264 payload type with packetization-mode=1; or a blank body, or a bad id", body = ErrorBody),
        (status = 404, description = "No such stream", body = ErrorBody),
        (status = 409, description = "Not live yet, or the stream is disabled or stopped (`not_live`, `not_running`; both with `Retry-After`; in a cluster, `not_running` without it for a stream another node holds), or the stream sends B-frames, or H.265 and the offer has no H265 payload type (`b_frames`, `unsupported_codec`: use MSE or HLS)", body = ErrorBody),
        (status = 413, description = "Offer larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Not `application/sdp`", body = ErrorBody),
        (status = 503, description = "WebRTC is off or unavailable, or the session or viewer limits are reached (`[webrtc] max_sessions*`, `[limits] viewers_*`; `Retry-After`)", body = ErrorBody),
    ))]
pub async fn offer(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = match parse_id(&raw) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    if !content_type_is(&headers, SDP) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the offer must be sent with Content-Type: application/sdp",
        )
        .into_response();
    }
    if body.len() > MAX_OFFER_BYTES {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the offer is larger than {MAX_OFFER_BYTES} bytes"),
        )
        .into_response();
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return ApiError::bad_request("the offer is not UTF-8 text").into_response();
    };
    if text.trim().is_empty() {
        return ApiError::bad_request("the request has no SDP offer").into_response();
    }
    let Some(rt) = state.manager.runtime(id) else {
        return not_running(&state, id).await;
    };
    // A WebRTC session is a live viewer like an MSE one: it takes a place among the stream's
    // viewers (`[limits]`), held by the session until it ends.
    let place = match state.limits.viewers.try_enter(&id.to_string()) {
        Ok(p) => p,
        Err(refusal) => {
            return retry_after(
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too_many_viewers",
                    crate::limits::viewers_reason(refusal),
                )
                .into_response(),
            );
        }
    };
    match state.webrtc.open(id, rt, text, place) {
        Ok(crate::webrtc::Opened {
            id: session,
            answer,
            audio,
        }) => {
            // The session ends when the credential that opened it stops covering it.
            if let Some(ended) = state.webrtc.session_token(session) {
                let state = state.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = ended.cancelled() => {}
                        () = state.auth.revoked(&caller, Action::Live, id) => {
                            tracing::info!(stream = %id, %session, client = caller.client_key(),
                                "WebRTC session closed: credentials revoked");
                            ended.cancel();
                        }
                    }
                });
            }
            let location = format!("/whep/{id}/{session}");
            let mut resp = (StatusCode::CREATED, answer).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert(header::LOCATION, v);
            }
            // Whether the session sends sound: the codec, or `none: <why>` (video only).
            if let Ok(v) = HeaderValue::from_str(&audio) {
                h.insert(AUDIO_HEADER, v);
            }
            resp
        }
        Err(e) => open_error(e),
    }
}

/// The answer for a stream that does not run here: 409 + `Retry-After` when it exists but is
/// disabled or stopped (it may run again), 409 alone when another node of a cluster may hold it,
/// 404 when there is no such stream.
async fn not_running(state: &AppState, id: uuid::Uuid) -> Response {
    match crate::db::streams::get(&state.db, id).await {
        // In a cluster, another node may hold it: WebRTC is served by that node only (MSE over
        // `/ws/live` is relayed here), so no Retry-After: players move on to MSE at once.
        Ok(Some(rec)) if rec.spec.enabled && state.manager.node_id().is_some() => ApiError::new(
            StatusCode::CONFLICT,
            "not_running",
            format!(
                "stream {id} does not run on this node of the cluster; use its holder's WHEP URL, or /ws/live here"
            ),
        )
        .into_response(),
        Ok(Some(rec)) => {
            let message = if rec.spec.enabled {
                format!("stream {id} is not running on this server; try again later")
            } else {
                format!("stream {id} is disabled; it plays once it is enabled again")
            };
            retry_after(ApiError::new(StatusCode::CONFLICT, "not_running", message).into_response())
        }
        Ok(None) => ApiError::not_found(format!("stream {id} not found")).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// 404 for a session that is not open: `session_ended` with why and how long ago when it ended
/// recently, `not_found` otherwise.
fn no_session(state: &AppState, stream: uuid::Uuid, session: uuid::Uuid) -> Response {
    match state.webrtc.ended(stream, session) {
        Some(e) => ApiError::new(
            StatusCode::NOT_FOUND,
            "session_ended",
            format!(
                "WebRTC session ended {} s ago: {}",
                e.at.elapsed().as_secs(),
                e.reason
            ),
        )
        .into_response(),
        None => ApiError::not_found(format!("no WebRTC session {session} of stream {stream}"))
            .into_response(),
    }
}

fn open_error(e: OpenError) -> Response {
    let message = e.to_string();
    match e {
        OpenError::Unavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webrtc_unavailable",
            message,
        )
        .into_response(),
        OpenError::UnknownStream(_) => ApiError::not_found(message).into_response(),
        OpenError::NotLive(_) => {
            retry_after(ApiError::new(StatusCode::CONFLICT, "not_live", message).into_response())
        }
        OpenError::BFrames(_) => {
            ApiError::new(StatusCode::CONFLICT, "b_frames", message).into_response()
        }
        OpenError::Codec(..) => {
            ApiError::new(StatusCode::CONFLICT, "unsupported_codec", message).into_response()
        }
        OpenError::Busy(_) => retry_after(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_sessions",
                message,
            )
            .into_response(),
        ),
        OpenError::BadOffer(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_offer", message)
            .with_field("sdp")
            .into_response(),
    }
}

/// `OPTIONS /whep/{stream_id}` in front of the CORS layer, which answers every `OPTIONS` request
/// itself (as a preflight) before any route: a plain `OPTIONS` (no
/// `Access-Control-Request-Method`) gets the route's own answer ([`options_answer`]: 204, or 400
/// for a bad id), a preflight the CORS answer with `Accept-Post` added. Any other request passes.
pub async fn accept_post(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let raw_id = (req.method() == axum::http::Method::OPTIONS)
        .then(|| req.uri().path().strip_prefix("/whep/"))
        .flatten()
        .filter(|rest| !rest.contains('/'))
        .map(str::to_owned);
    let Some(raw_id) = raw_id else {
        return next.run(req).await;
    };
    if !req
        .headers()
        .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        // Decoded as the router's `Path` extractor would have (the id is then judged alike).
        let id = percent_encoding::percent_decode_str(&raw_id).decode_utf8_lossy();
        return options_answer(&id);
    }
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert("accept-post", HeaderValue::from_static(SDP));
    resp
}

// A plain `OPTIONS` is answered by `accept_post` in front of the CORS layer (the same answer as
// this handler's); a CORS preflight by the CORS rules. The handler is the route the document and
// the access policy are built from.
/// What `POST` takes (WHEP discovery and CORS).
#[utoipa::path(options, path = "/whep/{stream_id}", tag = "live",
    params(("stream_id" = Uuid, Path, description = "Stream UUID")),
    responses(
        (status = 200, description = "A CORS preflight (the request carries \
            `Access-Control-Request-Method`): the CORS answer, with `Accept-Post`",
            headers(("Accept-Post" = String, description = "`application/sdp`"))),
        (status = 204, description = "`Accept-Post: application/sdp`",
            headers(("Accept-Post" = String, description = "`application/sdp`"))),
        (status = 400, description = "Bad id", body = ErrorBody),
    ))]
pub async fn options(Path(raw): Path<String>) -> Response {
    options_answer(&raw)
}

/// The answer to a plain `OPTIONS /whep/{stream_id}`: 204 with `Accept-Post` and `Allow` for a
/// stream id of the right form (whether the stream exists is `POST`'s concern), 400 otherwise.
fn options_answer(raw_id: &str) -> Response {
    if let Err(e) = parse_id(raw_id) {
        return e.into_response();
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert("accept-post", HeaderValue::from_static(SDP));
    h.insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST"));
    resp
}

/// An offer with something other than white space in it (a blank one is refused with 400
/// before anything else is looked at). JSON Schema patterns are unanchored: one such character
/// anywhere.
pub const OFFER_PATTERN: &str = r"\S";

/// States in the document the rules on the offer that utoipa's attributes cannot express for a
/// text body: not empty, not blank ([`OFFER_PATTERN`]). Whether the text is an SDP offer with
/// H.264 video is judged by the SDP parser (400 `bad_offer`), which no schema can state.
pub fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, Schema};
    let schema = doc
        .paths
        .paths
        .get_mut("/whep/{stream_id}")
        .and_then(|item| item.post.as_mut())
        .and_then(|op| op.request_body.as_mut())
        .and_then(|body| match body {
            RefOr::T(body) => body.content.get_mut(SDP),
            RefOr::Ref(_) => None,
        })
        .and_then(|content| match content {
            RefOr::T(content) => content.schema.as_mut(),
            RefOr::Ref(_) => None,
        });
    if let Some(RefOr::T(Schema::Object(o))) = schema {
        o.min_length = Some(1);
        o.pattern = Some(OFFER_PATTERN.to_owned());
    }
}

fn session_ids(raw_stream: &str, raw_session: &str) -> Result<(uuid::Uuid, uuid::Uuid), ApiError> {
    let stream = parse_id(raw_stream)?;
    let session = uuid::Uuid::parse_str(raw_session).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("'{raw_session}' is not a valid session id: {e}"),
        )
        .with_field("session_id")
    })?;
    Ok((stream, session))
}

/// Ends a WebRTC session.
#[utoipa::path(delete, path = "/whep/{stream_id}/{session_id}", tag = "live",
    params(
        ("stream_id" = Uuid, Path, description = "Stream UUID"),
        ("session_id" = Uuid, Path, description = "Session UUID (from `Location`)"),
    ),
    responses(
        (status = 200, description = "The session is closing"),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 404, description = "No such session of this stream; `session_ended` with why when it ended (e.g. `stream stopped`, `browser silent (consent expired)`)", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Path((raw_stream, raw_session)): Path<(String, String)>,
) -> Response {
    let (stream, session) = match session_ids(&raw_stream, &raw_session) {
        Ok(ids) => ids,
        Err(e) => return e.into_response(),
    };
    if state.webrtc.close(stream, session) {
        StatusCode::OK.into_response()
    } else {
        no_session(&state, stream, session)
    }
}

/// Trickle ICE: accepted and ignored (the server is ICE-lite and learns the browser's address from
/// its connectivity checks). ICE restarts are not supported.
#[utoipa::path(patch, path = "/whep/{stream_id}/{session_id}", tag = "live",
    params(
        ("stream_id" = Uuid, Path, description = "Stream UUID"),
        ("session_id" = Uuid, Path, description = "Session UUID (from `Location`)"),
    ),
    request_body(content = String, content_type = "application/trickle-ice-sdpfrag"),
    responses(
        (status = 204, description = "Accepted (candidates are not needed)"),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 404, description = "No such session of this stream; `session_ended` with why when it ended", body = ErrorBody),
        (status = 415, description = "Not `application/trickle-ice-sdpfrag`", body = ErrorBody),
    ))]
pub async fn patch(
    State(state): State<AppState>,
    Path((raw_stream, raw_session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (stream, session) = match session_ids(&raw_stream, &raw_session) {
        Ok(ids) => ids,
        Err(e) => return e.into_response(),
    };
    if !content_type_is(&headers, TRICKLE) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "PATCH takes Content-Type: application/trickle-ice-sdpfrag",
        )
        .into_response();
    }
    if state.webrtc.has_session(stream, session) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        no_session(&state, stream, session)
    }
}
