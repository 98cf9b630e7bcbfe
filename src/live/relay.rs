//! Cluster mode: live viewers on a node that does not hold the camera.
//!
//! A `/ws/live` viewer of a stream another node holds is relayed from that node: this node opens
//! the same WebSocket on the holder's video listener (its advertised address, from `nodes`) with
//! the viewer's own credentials (the `Authorization` header and the query, so a signed URL stays
//! valid: the signing key is in the shared index) and passes every message through unchanged, in
//! both directions. The wire format is therefore the holder's exactly (`0x09` codec message,
//! init segment, fragments, the viewer's `ping`s and their answers). A viewer that reads too
//! slowly stops this relay reading, and the holder resynchronises it at keyframes as it does any
//! slow viewer.
//!
//! When the holder stops the stream (disabled, failover) its close frame reaches the viewer as
//! sent; when the holder vanishes (killed, unreachable) the viewer gets close 1001 `Stream
//! stopped`, as for a local stream that stops, and reconnects (to whichever node it likes: every
//! node finds the new holder). A relayed request is marked ([`RELAYED`]) and never relayed again,
//! so two nodes that disagree for a moment about the holder cannot bounce a viewer between them.
//!
//! One upstream connection per viewer: simple and exact. Sharing one upstream among a node's
//! viewers of a stream (fewer bytes between nodes) is the next step (docs/scale-out.md).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::http::{HeaderMap, HeaderValue, header};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

use crate::api::AppState;
use crate::db::cluster::NodeRow;
use crate::wsproto::WRITE_TIMEOUT;

/// Header marking a request relayed by another node (never relayed again).
pub const RELAYED: &str = "x-video-server-relayed";

/// How long opening the upstream connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a relayed viewer needs from its own request.
#[derive(Debug, Clone, Default)]
pub struct Forward {
    /// The raw query (`stream_id`, and a signed URL's parameters).
    pub query: String,
    /// The viewer's `Authorization` header, if it sent one.
    pub authorization: Option<HeaderValue>,
    /// Whether this request was itself relayed (then it is not relayed again).
    pub relayed: bool,
}

impl Forward {
    pub fn from_request(query: Option<&str>, headers: &HeaderMap) -> Forward {
        Forward {
            query: query.unwrap_or_default().to_owned(),
            authorization: headers.get(header::AUTHORIZATION).cloned(),
            relayed: headers.contains_key(RELAYED),
        }
    }
}

/// The node holding `stream`'s lease when that is another node (cluster mode only). `None` on a
/// single node, for a stream nobody holds, or when the index cannot be asked.
pub async fn other_holder(state: &AppState, stream: Uuid) -> Option<NodeRow> {
    let me = state.manager.node_id()?;
    let owner = match crate::db::cluster::owner_of(&state.db, stream).await {
        Ok(owner) => owner?,
        Err(e) => {
            tracing::warn!(%stream, error = %e, "cannot look up the stream's holder");
            return None;
        }
    };
    (*owner.node_id != *me).then_some(owner)
}

/// Relays one live viewer from `holder` until either side ends the session.
pub async fn relay(mut viewer: WebSocket, holder: &NodeRow, forward: &Forward, stream: Uuid) {
    let url = format!(
        "ws://{}/ws/live?{}",
        holder.video_authority(),
        forward.query
    );
    let upstream = match open(&url, forward).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!(%stream, holder = %holder.node_id, error = %e,
                "cannot relay a live viewer from the stream's holder");
            crate::wsproto::close(&mut viewer, Some(crate::wsproto::stopped_frame())).await;
            return;
        }
    };
    tracing::debug!(%stream, holder = %holder.node_id, "live viewer relayed from the holder");
    let (mut up_tx, mut up_rx) = upstream.split();
    loop {
        tokio::select! {
            from_holder = up_rx.next() => {
                let message = match from_holder {
                    Some(Ok(tungstenite::Message::Binary(b))) => Message::Binary(b),
                    Some(Ok(tungstenite::Message::Text(t))) => Message::Text(Utf8Bytes::from(t.as_str())),
                    Some(Ok(tungstenite::Message::Close(frame))) => {
                        let frame = frame.map(|f| CloseFrame {
                            code: u16::from(f.code),
                            reason: Utf8Bytes::from(f.reason.as_str()),
                        });
                        crate::wsproto::close(&mut viewer, frame).await;
                        return;
                    }
                    // Pings are answered by the library; nothing else is meant for the viewer.
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        crate::wsproto::close(&mut viewer, Some(crate::wsproto::stopped_frame())).await;
                        return;
                    }
                };
                match tokio::time::timeout(WRITE_TIMEOUT, viewer.send(message)).await {
                    Ok(Ok(())) => {}
                    // The viewer is gone or stuck: dropping both connections ends it here and
                    // on the holder.
                    _ => return,
                }
            }
            from_viewer = viewer.recv() => {
                let message = match from_viewer {
                    Some(Ok(Message::Text(t))) => tungstenite::Message::text(t.as_str()),
                    Some(Ok(Message::Binary(b))) => tungstenite::Message::Binary(b),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        let _ = up_tx.send(tungstenite::Message::Close(None)).await;
                        return;
                    }
                    Some(Ok(_)) => continue,
                };
                if up_tx.send(message).await.is_err() {
                    crate::wsproto::close(&mut viewer, Some(crate::wsproto::stopped_frame())).await;
                    return;
                }
            }
        }
    }
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the holder's `/ws/live` with the viewer's credentials, marked as relayed.
async fn open(url: &str, forward: &Forward) -> Result<Upstream, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    if let Some(auth) = &forward.authorization {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    headers.insert(RELAYED, HeaderValue::from_static("1"));
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}
