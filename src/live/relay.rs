//! Cluster mode: live viewers on a node that does not hold the camera.
//!
//! A node keeps at most one upstream connection per stream another node holds ([`Relays`]): the
//! first local `/ws/live` viewer of such a stream opens the holder's `/ws/live` (its advertised
//! address, from `nodes`), and every later local viewer joins it. The upstream is authenticated as
//! a node, not as any viewer: a node proof (`auth::signing::NodeProof` over
//! [`live_relay_subject`](crate::auth::signing::live_relay_subject), the HMAC with the index's
//! signing key) that opens that one stream's live WebSocket on the holder. Each viewer is
//! authorised here, by its own token or signed URL, before it joins (the route policy), and its
//! session ends here when its credentials are revoked, as for a local stream.
//!
//! The upstream's init segments and fragments are read back into frames (`media::fmp4`) and
//! published into a hub of the relay's own, so local viewers are served exactly as viewers of a
//! local stream (`live::mse::serve_from_hub`): each its own timeline from 0, the GOP cache for a
//! late joiner, keyframe resync for a slow one, pings answered, the same wire format (`0x09` codec
//! message, init segment, fragments). A new init segment upstream (new codec parameters) is new
//! parameters in the hub, which reach every viewer as on the holder. The holder sees one viewer
//! per relaying node, whatever the number of viewers there; the upstream reads as fast as the
//! holder sends (publishing never waits), so a slow local viewer never slows the others.
//!
//! The upstream closes [`LINGER`] after its last local viewer left (a viewer reloading its page
//! finds it still open). When the holder stops the stream (disabled, failover) or vanishes
//! (killed, unreachable), every local viewer is closed as a viewer of a local stream would be:
//! with the holder's close frame when it sent one, else 1001 `Stream stopped`; viewers reconnect
//! (to whichever node they like: every node finds the new holder). A relayed request is marked
//! ([`RELAYED`]; a node's caller counts as relayed too) and never relayed again, so two nodes
//! that disagree for a moment about the holder cannot bounce a viewer between them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Utf8Bytes, WebSocket};
use axum::http::HeaderValue;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::AppState;
use crate::db::cluster::NodeRow;
use crate::hub::Hub;
use crate::media::fmp4;
use crate::media::{MediaError, StreamParams, TrackKind};
use crate::metrics::Metrics;

/// Header marking a request relayed by another node (never relayed again).
pub const RELAYED: &str = "x-video-server-relayed";

/// How long opening the upstream connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an upstream stays open after its last local viewer left.
pub const LINGER: Duration = Duration::from_secs(2);
/// Lifetime of the node proof an upstream opens with (checked once, when the holder accepts it).
const PROOF_TTL_S: i64 = 60;
/// How long closing an upstream may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// This node's relayed streams: at most one upstream per stream (one registry per video
/// listener, handed to the live route as a request extension).
pub struct Relays {
    feeds: Mutex<HashMap<Uuid, Arc<Feed>>>,
    metrics: Arc<Metrics>,
}

/// One upstream and the hub its frames are published into.
struct Feed {
    /// The node it reads from.
    holder: String,
    hub: Arc<Hub>,
    /// Local viewers attached (raised, and checked before retiring, under the registry's lock,
    /// so the upstream cannot retire while a viewer joins).
    viewers: AtomicUsize,
    /// Told when the last viewer left.
    idle: Notify,
    /// Cancelled when the upstream ended; `close` then says how viewers are closed.
    ended: CancellationToken,
    close: OnceLock<CloseFrame>,
}

impl Feed {
    /// Resolves with the close frame for viewers once the upstream has ended.
    async fn ended(&self) -> CloseFrame {
        self.ended.cancelled().await;
        self.close
            .get()
            .cloned()
            .unwrap_or_else(crate::wsproto::stopped_frame)
    }
}

/// A local viewer attached to a feed; detaches on drop.
struct Attached {
    feed: Arc<Feed>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.feed.viewers.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.feed.idle.notify_one();
        }
    }
}

impl Relays {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Relays> {
        Arc::new(Relays {
            feeds: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Feed>>> {
        // Never held across an await; a poisoned lock still guards a consistent map.
        self.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a viewer to the stream's upstream from `holder`, opening one if there is none
    /// (or only one from a node that no longer holds the stream, which ends by itself).
    fn attach(self: &Arc<Self>, state: &AppState, holder: &NodeRow, stream: Uuid) -> Attached {
        let mut feeds = self.lock();
        if let Some(feed) = feeds.get(&stream)
            && feed.holder == holder.node_id
            && !feed.ended.is_cancelled()
        {
            feed.viewers.fetch_add(1, Ordering::SeqCst);
            return Attached { feed: feed.clone() };
        }
        let feed = Arc::new(Feed {
            holder: holder.node_id.clone(),
            hub: Hub::new(),
            viewers: AtomicUsize::new(1),
            idle: Notify::new(),
            ended: CancellationToken::new(),
            close: OnceLock::new(),
        });
        feeds.insert(stream, feed.clone());
        self.metrics.relay_upstreams.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(run(
            state.clone(),
            self.clone(),
            feed.clone(),
            holder.clone(),
            stream,
        ));
        Attached { feed }
    }

    /// Takes `feed` out of the registry if no viewer is attached; `false` if one is.
    fn retire_if_idle(&self, stream: Uuid, feed: &Arc<Feed>) -> bool {
        let mut feeds = self.lock();
        if feed.viewers.load(Ordering::SeqCst) > 0 {
            return false;
        }
        Self::remove(&mut feeds, stream, feed);
        true
    }

    fn remove(feeds: &mut HashMap<Uuid, Arc<Feed>>, stream: Uuid, feed: &Arc<Feed>) {
        if feeds.get(&stream).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            feeds.remove(&stream);
        }
    }

    /// The upstream ended: no viewer joins it any more, and those attached are closed with `close`.
    fn end(&self, stream: Uuid, feed: &Arc<Feed>, close: CloseFrame) {
        Self::remove(&mut self.lock(), stream, feed);
        let _ = feed.close.set(close);
        feed.ended.cancel();
        self.metrics.relay_upstreams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one local viewer of `stream`, held by `holder`, from this node's shared upstream.
pub async fn serve(
    socket: WebSocket,
    state: &AppState,
    relays: &Arc<Relays>,
    holder: &NodeRow,
    stream: Uuid,
    max_message: usize,
) {
    let attached = relays.attach(state, holder, stream);
    let feed = attached.feed.clone();
    super::mse::serve_from_hub(socket, &feed.hub, feed.ended(), max_message).await;
}

/// The upstream task: reads the holder until it ends or the last viewer has been gone for
/// [`LINGER`].
async fn run(state: AppState, relays: Arc<Relays>, feed: Arc<Feed>, holder: NodeRow, stream: Uuid) {
    let close = pump(&state, &relays, &feed, &holder, stream).await;
    relays.end(stream, &feed, close);
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn pump(
    state: &AppState,
    relays: &Relays,
    feed: &Arc<Feed>,
    holder: &NodeRow,
    stream: Uuid,
) -> CloseFrame {
    let mut upstream = match open(state, holder, stream).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!(%stream, holder = %holder.node_id, error = %e,
                "cannot relay a live stream from its holder");
            return crate::wsproto::stopped_frame();
        }
    };
    tracing::debug!(%stream, holder = %holder.node_id, "relaying a live stream from its holder");
    let mut reader = Reader::default();
    let linger = tokio::time::sleep(Duration::MAX);
    tokio::pin!(linger);
    let mut lingering = false;
    loop {
        tokio::select! {
            message = upstream.next() => match message {
                Some(Ok(tungstenite::Message::Binary(b))) => {
                    if let Err(e) = reader.take(&feed.hub, b) {
                        tracing::warn!(%stream, holder = %holder.node_id, error = %e,
                            "cannot read the relayed stream");
                        close_upstream(&mut upstream).await;
                        return CloseFrame {
                            code: crate::wsproto::CLOSE_ERROR,
                            reason: Utf8Bytes::from_static("Can't read the relayed stream"),
                        };
                    }
                }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    tracing::debug!(%stream, holder = %holder.node_id, ?frame, "the holder ended the relayed stream");
                    return frame.map_or_else(crate::wsproto::stopped_frame, |f| CloseFrame {
                        code: u16::from(f.code),
                        reason: Utf8Bytes::from(f.reason.as_str()),
                    });
                }
                // Pings are answered by the library; `pong`s answer nothing we sent.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    tracing::info!(%stream, holder = %holder.node_id, "the relayed stream's holder went away");
                    return crate::wsproto::stopped_frame();
                }
            },
            () = feed.idle.notified() => {
                linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                lingering = true;
            }
            () = &mut linger, if lingering => {
                lingering = false;
                if relays.retire_if_idle(stream, feed) {
                    tracing::debug!(%stream, holder = %holder.node_id, "relay closed: no viewer left");
                    close_upstream(&mut upstream).await;
                    return crate::wsproto::stopped_frame();
                }
            }
        }
    }
}

/// Opens the holder's `/ws/live` for `stream` as a node: marked relayed, with a node proof.
async fn open(state: &AppState, holder: &NodeRow, stream: Uuid) -> Result<Upstream, String> {
    use crate::auth::signing::{NODE_PROOF_HEADER, live_relay_subject};
    let url = format!(
        "ws://{}/ws/live?stream_id={stream}",
        holder.video_authority()
    );
    let proof = state
        .auth
        .node_proof(&live_relay_subject(stream), PROOF_TTL_S)
        .await
        .map_err(|e| format!("no node proof: {e}"))?;
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    headers.insert(RELAYED, HeaderValue::from_static("1"));
    headers.insert(
        NODE_PROOF_HEADER,
        HeaderValue::from_str(&proof.to_header()).map_err(|e| e.to_string())?,
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Sends a close frame upstream (the holder's session ends at once) and waits briefly for its
/// answer.
async fn close_upstream(upstream: &mut Upstream) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, upstream.close(None)).await;
}

/// Turns the messages of a live session back into codec parameters and frames.
#[derive(Default)]
struct Reader {
    /// The parameters of the last init segment.
    params: Option<Arc<StreamParams>>,
    /// Parameter versions of this hub (each init segment is a new one).
    version: u64,
}

impl Reader {
    /// Reads one binary message into `hub`: the `0x09` codec message says nothing the init
    /// segment after it does not; an init segment is new parameters; a fragment is frames.
    fn take(&mut self, hub: &Hub, message: Bytes) -> Result<(), MediaError> {
        if message.first() == Some(&0x09) {
            return Ok(());
        }
        match message.get(4..8) {
            Some(b"ftyp") => {
                let mut params = fmp4::parse_init(&message)?;
                self.version += 1;
                params.version = self.version;
                let params = Arc::new(params);
                hub.set_params(params.clone());
                self.params = Some(params);
                Ok(())
            }
            Some(b"moof") => {
                let params = self.params.as_ref().ok_or_else(|| {
                    MediaError::InvalidMp4("a fragment before the init segment".into())
                })?;
                let frames = fmp4::parse_fragment_bytes(params, &message)?;
                // The holder's viewer muxer sends a video frame with the audio that came before
                // it: published in that order again (audio first), each track in decode order.
                let (video, audio): (Vec<_>, Vec<_>) = frames
                    .into_iter()
                    .partition(|f| f.track == TrackKind::Video);
                for frame in audio.into_iter().chain(video) {
                    hub.publish(frame);
                }
                Ok(())
            }
            _ => Err(MediaError::InvalidMp4(
                "a message that is neither codecs, init segment nor fragment".into(),
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hub::Delivery;
    use crate::live::mse::MseMuxer;
    use crate::media::codec::tests::{DEMO_AVCC, LC_48K_MONO};
    use crate::media::codec::{aac_params, h264_params};
    use crate::media::{Frame, TrackKind};

    fn frame(params: &Arc<StreamParams>, track: TrackKind, dts: i64, keyframe: bool) -> Frame {
        Frame {
            track,
            dts,
            duration: if track == TrackKind::Video {
                3600
            } else {
                1024
            },
            cts_offset: 0,
            keyframe,
            wallclock_us: 0,
            data: Bytes::from(vec![0, 0, 0, 2, 0x65, dts as u8]),
            params: params.clone(),
        }
    }

    /// What a holder's viewer is sent is read back into frames that a local viewer's muxer turns
    /// into the same messages (codec message, init segment, fragments with the same samples), a
    /// new init segment is new parameters, and a fragment before any init segment is refused.
    #[test]
    fn a_relayed_session_reads_back_into_the_same_messages() {
        let video = Arc::new(StreamParams {
            version: 7,
            video: Some(h264_params(Bytes::from_static(DEMO_AVCC)).unwrap()),
            audio: Some(aac_params(Bytes::from_static(LC_48K_MONO)).unwrap()),
        });
        let deliver = |f: Frame| Delivery {
            frame: f,
            discontinuity: false,
        };
        // The holder's side: a keyframe, audio, the next video frame.
        let mut holder = MseMuxer::new();
        let mut sent = Vec::new();
        for f in [
            frame(&video, TrackKind::Video, 0, true),
            frame(&video, TrackKind::Audio, 0, true),
            frame(&video, TrackKind::Audio, 1024, true),
            frame(&video, TrackKind::Video, 3600, false),
        ] {
            sent.extend(holder.push(deliver(f)).unwrap());
        }
        assert_eq!(sent.len(), 4, "codecs, init, two fragments");

        let hub = Hub::new();
        let mut sub = hub.subscribe(64);
        let mut reader = Reader::default();
        assert!(reader.take(&hub, sent[3].clone()).is_err(), "no init yet");
        for m in &sent {
            reader.take(&hub, m.clone()).unwrap();
        }
        let params = hub.params().borrow().clone().unwrap();
        assert!(params.same_codecs(&video));
        assert_eq!(params.version, 1);
        let mut local = MseMuxer::new();
        let mut again = Vec::new();
        while let Some(d) = sub.try_recv() {
            again.extend(local.push(d).unwrap());
        }
        assert_eq!(again, sent, "the same messages, byte for byte");

        // New parameters upstream (the audio track went away): a new version here.
        let video_only = StreamParams {
            audio: None,
            ..(*video).clone()
        };
        reader
            .take(&hub, fmp4::init_segment(&video_only).unwrap())
            .unwrap();
        let now = hub.params().borrow().clone().unwrap();
        assert_eq!(now.version, 2);
        assert!(now.same_codecs(&video_only));
        assert!(
            reader
                .take(&hub, Bytes::from_static(b"\0\0\0\x08free"))
                .is_err()
        );
    }
}
