//! WebSocket entry points: validation and the Go close reasons. Both handlers upgrade first and then
//! validate, like the original, so clients see a close frame with code 1011 and a reason.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use uuid::Uuid;

use crate::api::AppState;
use crate::stream::OutputType;

/// Close code the original uses for every error ("internal error").
pub const CLOSE_ERROR: u16 = 1011;

/// How long a new viewer waits for the stream's codecs before giving up (the original's 10 s).
pub const CODEC_WAIT: Duration = Duration::from_secs(10);

/// A query parameter by name (first occurrence), percent-decoded.
pub fn query_param(raw: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Longest wait for the client's answer to our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Sends a 1011 close frame with `reason` (cut to the 123 bytes a close frame can carry) and
/// completes the closing handshake ([`close`]).
pub async fn close_with(socket: &mut WebSocket, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code: CLOSE_ERROR,
        reason: Utf8Bytes::from(&reason[..end]),
    };
    close(socket, Some(frame)).await;
}

/// Sends a close frame, then reads (and drops) what the client still sends until its own close
/// frame arrives, for at most [`CLOSE_WAIT`]. Dropping the connection while client messages sit
/// unread (a `ping`, an archive client's last `more`) makes the kernel reset it, and a reset can
/// destroy our last messages before the client reads them: an archive session's final fragments,
/// its `eos`, or the close reason itself.
pub async fn close(socket: &mut WebSocket, frame: Option<CloseFrame>) {
    let handshake = async {
        // The peer may already be gone; nothing more to do then.
        if socket.send(Message::Close(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = socket.recv().await {}
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, handshake).await;
}

/// `GET /ws/{anything}?stream_id=<uuid>`: live MSE.
pub async fn live(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Response {
    let stream_id = query_param(query.as_deref(), "stream_id").unwrap_or_default();
    ws.on_upgrade(move |socket| live_session(socket, state, stream_id))
}

async fn live_session(mut socket: WebSocket, state: AppState, raw_id: String) {
    let Ok(id) = Uuid::parse_str(&raw_id) else {
        close_with(&mut socket, &format!("Not valid UUID: '{raw_id}'")).await;
        return;
    };
    let Some(rt) = state
        .manager
        .runtime(id)
        .filter(|rt| rt.has_output(OutputType::Mse))
    else {
        // The original closes at once, without a close frame, for an unknown stream or one without
        // the mse output. Dropping the socket does exactly that.
        return;
    };
    super::mse::serve_viewer(socket, rt).await;
}

/// `GET /ws/archive?stream_id=<uuid>&start=<unix s>&duration=<s>`: archive playback.
pub async fn archive(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Response {
    ws.on_upgrade(move |socket| archive_session(socket, state, query))
}

/// Archive request parameters after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveRequest {
    pub stream_id: Uuid,
    pub start_s: i64,
    /// `None` means "until now + 1 year", as in the original.
    pub duration_s: Option<i64>,
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
    crate::archive::playback::serve(socket, state, req, meta).await;
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
