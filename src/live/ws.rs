//! WebSocket entry points: validation and the Go close reasons. Both handlers upgrade first and then
//! validate, like the original, so clients see a close frame with code 1011 and a reason.
//!
//! Limits (`[limits]`, [`crate::limits`]): a client message larger than `ws_max_message_bytes`
//! closes the connection with 1009 ([`CLOSE_TOO_BIG`](crate::wsproto::CLOSE_TOO_BIG)); a viewer or archive session over its
//! limit is upgraded and closed at once with 1013 ([`CLOSE_TRY_AGAIN`]) and a reason naming the
//! limit. (A browser's WebSocket API shows the close code and reason, but not the HTTP status of a
//! refused upgrade, so a 429/503 before the upgrade would reach a web page as a bare failure.)

use std::sync::Arc;

use axum::Extension;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use uuid::Uuid;

use super::relay::Relays;
use crate::api::AppState;
use crate::api::policy::query_param;
use crate::archive::playback::ArchiveRequest;
use crate::auth::Caller;
use crate::auth::scope::Action;
use crate::limits::Refusal;
use crate::stream::OutputType;
use crate::wsproto::{CLOSE_TRY_AGAIN, close_code, close_with};

/// Bytes the WebSocket layer reads from a socket at a time. Its default (128 KiB) is zero-filled
/// before every read attempt, and a live session attempts a read each time it wakes for a frame:
/// with hundreds of viewers that memset was two thirds of the server's CPU (docs/benchmarks.md,
/// "Profiles"; at 4 KiB it was still 1.5 % at 1000 viewers). Clients only send short text
/// (`ping`, `more`, close frames); a longer message still arrives, in several reads.
const READ_BUFFER_BYTES: usize = 512;

/// Applies `[limits] ws_max_message_bytes` to a connection about to be upgraded: a larger message
/// (or frame) is refused as soon as its header arrives, before it is buffered. Also sets the read
/// buffer ([`READ_BUFFER_BYTES`]).
fn limit_messages(ws: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    let max = state.limits.ws_max_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_BYTES)
}

/// The close reason of an archive session over a limit (both start as the earlier single limit's
/// `Too many archive sessions` did).
pub fn archive_reason(refusal: Refusal) -> String {
    match refusal {
        Refusal::PerKey { limit } => {
            format!("Too many archive sessions for this client (limit {limit}); try again later")
        }
        Refusal::Total { limit } => {
            format!("Too many archive sessions on this server (limit {limit}); try again later")
        }
    }
}

/// Closes a session refused by a limit.
async fn close_limited(mut socket: WebSocket, reason: String, client: String) {
    tracing::info!(client, reason, "WebSocket session refused by a limit");
    close_code(&mut socket, CLOSE_TRY_AGAIN, &reason).await;
}

/// `GET /ws/{anything}?stream_id=<uuid>`: live MSE.
pub async fn live(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(relays): Extension<Arc<Relays>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let stream_id = query_param(query.as_deref(), "stream_id").unwrap_or_default();
    // Opened by another node relaying the stream: never relayed again.
    let relayed = headers.contains_key(super::relay::RELAYED)
        || caller.credential == crate::auth::Credential::Node;
    let id = Uuid::parse_str(&stream_id).ok();
    // A place among the stream's viewers, taken before the upgrade and held by the session until
    // it ends, however it ends (or given back at once if the upgrade never completes).
    let place = id.map(|id| state.limits.viewers.try_enter(&id.to_string()));
    limit_messages(ws, &state).on_upgrade(move |socket| async move {
        let _viewer = match place {
            Some(Err(refusal)) => {
                return close_limited(
                    socket,
                    crate::limits::viewers_reason(refusal),
                    caller.client_key(),
                )
                .await;
            }
            Some(Ok(permit)) => Some(permit),
            None => None,
        };
        let max_message = state.limits.ws_max_message_bytes;
        until_revoked(
            state.clone(),
            caller,
            Action::Live,
            id,
            live_session(socket, state, relays, stream_id, max_message, relayed),
        )
        .await
    })
}

/// Runs a WebSocket session until it ends, or until the caller's credentials stop covering it
/// (`auth::Auth::revoked`): then the session is dropped, which closes the connection.
async fn until_revoked(
    state: AppState,
    caller: Caller,
    action: Action,
    id: Option<Uuid>,
    session: impl Future<Output = ()>,
) {
    let Some(id) = id else {
        // No stream: the session refuses the request itself at once.
        return session.await;
    };
    tokio::select! {
        () = session => {}
        () = state.auth.revoked(&caller, action, id) => {
            tracing::info!(stream = %id, client = caller.client_key(), %action, "session closed: credentials revoked");
        }
    }
}

async fn live_session(
    mut socket: WebSocket,
    state: AppState,
    relays: Arc<Relays>,
    raw_id: String,
    max_message: usize,
    relayed: bool,
) {
    let Ok(id) = Uuid::parse_str(&raw_id) else {
        close_with(&mut socket, &format!("Not valid UUID: '{raw_id}'")).await;
        return;
    };
    let Some(rt) = state
        .manager
        .runtime(id)
        .filter(|rt| rt.has_output(OutputType::Mse))
    else {
        // Cluster mode: another node records it; serve the viewer from this node's relay of it
        // (a relayed request is not relayed again).
        if !relayed && let Some(holder) = super::relay::other_holder(&state, id).await {
            return super::relay::serve(socket, &state, &relays, &holder, id, max_message).await;
        }
        // The original closes at once, without a close frame, for an unknown stream or one without
        // the mse output. Dropping the socket does exactly that.
        return;
    };
    super::mse::serve_viewer(socket, rt, max_message).await;
}

/// `GET /ws/archive?stream_id=<uuid>&start=<unix s>&duration=<s>`: archive playback.
pub async fn archive(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Response {
    let id = query_param(query.as_deref(), "stream_id").and_then(|s| Uuid::parse_str(&s).ok());
    // A session place of this client's, held until the session ends (see `live`).
    let client = caller.client_key();
    let place = state.limits.archive_sessions.try_enter(&client);
    limit_messages(ws, &state).on_upgrade(move |socket| async move {
        let _session = match place {
            Ok(permit) => permit,
            Err(refusal) => return close_limited(socket, archive_reason(refusal), client).await,
        };
        until_revoked(
            state.clone(),
            caller,
            Action::Archive,
            id,
            archive_session(socket, state, query),
        )
        .await
    })
}

/// Validates the query with the original's close reasons.
pub fn parse_archive_query(raw: Option<&str>) -> Result<ArchiveRequest, &'static str> {
    let stream_id = query_param(raw, "stream_id")
        .and_then(|s| Uuid::parse_str(&s).ok())
        .ok_or("Invalid stream_id")?;
    let start_s = query_param(raw, "start")
        .and_then(|s| s.trim().parse::<i64>().ok())
        // Reject times that cannot be microseconds in an i64 (or are before the epoch).
        .filter(|s| (0..=i64::MAX / 1_000_000 / 2).contains(s))
        .ok_or("Invalid start time (use Unix timestamp)")?;
    let duration_s = query_param(raw, "duration")
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|d| *d > 0)
        .map(|d| d.min(100 * 365 * 24 * 3600));
    Ok(ArchiveRequest {
        stream_id,
        start_s,
        duration_s,
    })
}

async fn archive_session(mut socket: WebSocket, state: AppState, query: Option<String>) {
    let req = match parse_archive_query(query.as_deref()) {
        Ok(r) => r,
        Err(reason) => {
            close_with(&mut socket, reason).await;
            return;
        }
    };
    if !state.config.archive.serving {
        close_with(
            &mut socket,
            "Archive not available: archive serving not enabled globally",
        )
        .await;
        return;
    }
    let meta = query_param(query.as_deref(), "meta").is_some_and(|m| m == "1" || m == "true");
    let ctx = crate::archive::playback::PlaybackContext {
        db: state.db.clone(),
        archive: state.archive.clone(),
        config: state.config.clone(),
        max_message: state.limits.ws_max_message_bytes,
    };
    crate::archive::playback::serve(socket, ctx, req, meta).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_query_validation_uses_go_reasons() {
        assert_eq!(parse_archive_query(None), Err("Invalid stream_id"));
        assert_eq!(
            parse_archive_query(Some("stream_id=nope&start=1")),
            Err("Invalid stream_id")
        );
        let id = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";
        assert_eq!(
            parse_archive_query(Some(&format!("stream_id={id}"))),
            Err("Invalid start time (use Unix timestamp)")
        );
        assert_eq!(
            parse_archive_query(Some(&format!("stream_id={id}&start=abc"))),
            Err("Invalid start time (use Unix timestamp)")
        );
        assert_eq!(
            parse_archive_query(Some(&format!("stream_id={id}&start=99999999999999999"))),
            Err("Invalid start time (use Unix timestamp)")
        );
        let ok = parse_archive_query(Some(&format!("stream_id={id}&start=100&duration=-5")))
            .expect("valid");
        assert_eq!(ok.start_s, 100);
        assert_eq!(ok.duration_s, None);
    }
}
