//! The WebSocket protocol both session kinds speak, live MSE (`live::mse`) and archive playback
//! (`archive::playback`): the Go original's close codes and reasons, the closing handshake, the
//! codec (`0x09`) message and when to send it again, and the write deadline. Below both users,
//! so neither imports the other for it.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::{BufMut, Bytes, BytesMut};

use crate::media::fmp4::init_segment;
use crate::media::{MediaError, StreamParams};

/// Close code the original uses for every error ("internal error").
pub const CLOSE_ERROR: u16 = 1011;

/// Close code for a client message over `[limits] ws_max_message_bytes` ("message too big",
/// RFC 6455 §7.4.1).
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Close code for a session refused by a limit ("try again later", IANA WebSocket close codes).
pub const CLOSE_TRY_AGAIN: u16 = 1013;

/// Longest wait for the client's answer to our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Sends a 1011 close frame with `reason` (cut to the 123 bytes a close frame can carry) and
/// completes the closing handshake ([`close`]).
pub async fn close_with(socket: &mut WebSocket, reason: &str) {
    close_code(socket, CLOSE_ERROR, reason).await;
}

/// Sends a close frame with `code` and `reason` (cut to 123 bytes) and completes the closing
/// handshake ([`close`]).
pub async fn close_code(socket: &mut WebSocket, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    };
    close(socket, Some(frame)).await;
}

/// Whether a receive error is a client message (or frame) over the size limit.
pub fn is_too_big(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(tungstenite::Error::Capacity(_)) = e.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The close reason for a message over the limit.
pub fn too_big_reason(limit: usize) -> String {
    format!("Message too big (limit {limit} bytes)")
}

/// Ends a session whose client message could not be read: 1009 when it was too big, else the
/// original's 1011 `Can't read message`.
pub async fn close_read_error(socket: &mut WebSocket, err: &axum::Error, limit: usize) {
    if is_too_big(err) {
        tracing::info!(
            limit,
            "WebSocket closed: client message over the size limit"
        );
        close_code(socket, CLOSE_TOO_BIG, &too_big_reason(limit)).await;
    } else {
        close_with(socket, "Can't read message").await;
    }
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

/// Close code when the stream a viewer watches is stopped ("going away", RFC 6455).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// The close a live viewer gets when its stream stops (deleted, disabled, restarted, moved to
/// another node, server shutdown): 1001 `Stream stopped`.
pub fn stopped_frame() -> CloseFrame {
    CloseFrame {
        code: CLOSE_GOING_AWAY,
        reason: "Stream stopped".into(),
    }
}

/// A viewer whose socket accepts nothing for this long is dropped (the original's deadline).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first message of a session: `0x09` followed by the codec list.
pub fn codec_message(params: &StreamParams) -> Bytes {
    let list = params.codec_list();
    let mut b = BytesMut::with_capacity(1 + list.len());
    b.put_u8(0x09);
    b.put_slice(list.as_bytes());
    b.freeze()
}

/// The messages that move a session from the codec setup `current` (none at the start) to `next`.
///
/// The Go example clients create their one `SourceBuffer` from the first `0x09` message, ignore
/// any later one, and append every other binary message to that buffer (go-original.md §3.4). So
/// a `0x09` message is sent again only when the codec list changes (a buffer made for the old
/// list could not take the new media anyway); a new setup with the same codec list (another
/// resolution, new SPS/PPS) is announced by its init segment alone, which MSE accepts on the same
/// `SourceBuffer`.
pub fn switch_messages(
    current: Option<&StreamParams>,
    next: &StreamParams,
) -> Result<Vec<Bytes>, MediaError> {
    let mut out = Vec::with_capacity(2);
    if current.is_none_or(|c| c.codec_list() != next.codec_list()) {
        out.push(codec_message(next));
    }
    out.push(init_segment(next)?);
    Ok(out)
}
