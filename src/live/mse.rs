//! Live MSE over WebSocket, in the Go original's message order (go-original.md §3.1):
//! binary `0x09`+codecs, binary init segment, then binary `moof`+`mdat` fragments starting at a
//! keyframe; text `ping` is answered with text `pong`.
//!
//! Improvements over the original: audio is kept; a change of codec parameters reaches viewers
//! ([`switch_messages`](crate::wsproto::switch_messages): a new init segment, preceded by a new `0x09` message only when the codec
//! list itself changed); one fragment per video frame for low latency; each viewer's timeline
//! starts at 0 and stays continuous when the viewer lagged and was skipped ahead to a keyframe.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::hub::{Delivery, Hub, Subscription};
use crate::manager::StreamRuntime;
use crate::media::fmp4::FragmentWriter;
use crate::media::{Frame, MediaError, StreamParams, TrackKind};
use crate::wsproto::{WRITE_TIMEOUT, close_read_error, close_with, switch_messages};

/// Queue between the hub and one viewer, in frames beyond the cached GOP it starts with (about
/// 5 s of 25 fps video, 2 s with audio). A live viewer further behind than that is better served by
/// skipping to the next keyframe than by watching ever older video.
pub const VIEWER_QUEUE: usize = 128;
/// No keyframe for this long: the connection is closed (the original's 10 s).
pub const KEYFRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new viewer waits for the stream's codecs before giving up (the original's 10 s).
pub const CODEC_WAIT: Duration = Duration::from_secs(10);
/// Audio-only streams: frames per fragment.
const AUDIO_ONLY_FRAMES_PER_FRAGMENT: usize = 4;
/// Most messages a viewer writes with one flush (frames that piled up in its queue); bounds the
/// WebSocket write buffer of a viewer that catches up.
const MAX_BATCH_MESSAGES: usize = 64;

/// Turns hub deliveries into the WebSocket messages of one viewer.
pub struct MseMuxer {
    params: Option<Arc<StreamParams>>,
    writer: FragmentWriter,
    /// Subtracted from each track's dts, in that track's ticks; `None` before the first keyframe.
    offsets: Option<[i64; 2]>,
    /// End of the last video (or audio-only) frame sent, after rebasing, in µs.
    last_end_us: i64,
    pending_audio: Vec<Frame>,
}

fn idx(t: TrackKind) -> usize {
    match t {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
    }
}

fn to_us(ticks: i64, ts: u32) -> i64 {
    (i128::from(ticks) * 1_000_000 / i128::from(ts.max(1))) as i64
}

fn from_us(us: i64, ts: u32) -> i64 {
    (i128::from(us) * i128::from(ts) / 1_000_000) as i64
}

impl Default for MseMuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl MseMuxer {
    pub fn new() -> Self {
        MseMuxer {
            params: None,
            writer: FragmentWriter::new(),
            offsets: None,
            last_end_us: 0,
            pending_audio: Vec::new(),
        }
    }

    /// Whether a keyframe has been sent (the stream is flowing to this viewer).
    pub fn started(&self) -> bool {
        self.offsets.is_some()
    }

    /// Feeds one delivery; returns the binary messages to send, in order.
    pub fn push(&mut self, d: Delivery) -> Result<Vec<Bytes>, MediaError> {
        let mut out = Vec::new();
        self.push_into(d, &mut out)?;
        Ok(out)
    }

    /// [`MseMuxer::push`] appending to `out` (a viewer reuses one vector for every frame).
    pub fn push_into(&mut self, d: Delivery, out: &mut Vec<Bytes>) -> Result<(), MediaError> {
        let mut f = d.frame;
        let has_video = f.params.video.is_some();
        let sync = match f.track {
            TrackKind::Video => f.keyframe,
            TrackKind::Audio => !has_video,
        };
        let new_codecs = self
            .params
            .as_ref()
            .is_none_or(|p| !p.same_codecs(&f.params));
        if new_codecs || d.discontinuity {
            if !sync {
                // Wait for a keyframe (with the new codecs, or after a skip).
                return Ok(());
            }
            self.pending_audio.clear();
            if new_codecs {
                out.extend(switch_messages(self.params.as_deref(), &f.params)?);
                self.params = Some(f.params.clone());
            }
            // Map this keyframe to where the viewer's timeline ended: time keeps running.
            let p = &f.params;
            let kf_us = to_us(f.dts, p.timescale(f.track));
            let shift_us = kf_us - self.last_end_us;
            self.offsets = Some([
                from_us(shift_us, p.timescale(TrackKind::Video)),
                from_us(shift_us, p.timescale(TrackKind::Audio)),
            ]);
        }
        let Some(offsets) = self.offsets else {
            return Ok(());
        };
        let Some(params) = self.params.clone() else {
            return Ok(());
        };
        f.dts -= offsets[idx(f.track)];
        if f.dts < 0 {
            // Audio captured before the first keyframe: nothing to attach it to.
            return Ok(());
        }
        let ts = params.timescale(f.track);
        match f.track {
            TrackKind::Audio if has_video => {
                self.pending_audio.push(f);
            }
            TrackKind::Audio => {
                self.last_end_us = to_us(f.dts + i64::from(f.duration), ts);
                self.pending_audio.push(f);
                if self.pending_audio.len() >= AUDIO_ONLY_FRAMES_PER_FRAGMENT {
                    let fragment = self.writer.write(&params, &self.pending_audio);
                    self.pending_audio.clear();
                    out.push(fragment?);
                }
            }
            TrackKind::Video => {
                self.last_end_us = to_us(f.dts + i64::from(f.duration), ts);
                // The audio since the last video frame rides with it (the vector is reused).
                self.pending_audio.push(f);
                let fragment = self.writer.write(&params, &self.pending_audio);
                self.pending_audio.clear();
                out.push(fragment?);
            }
        }
        Ok(())
    }
}

/// Serves one live viewer of a stream running here until it leaves, lags beyond repair, or the
/// stream stops (then close 1001 `Stream stopped`). A client message over `max_message` bytes
/// (the socket's configured limit) closes it with 1009.
pub async fn serve_viewer(socket: WebSocket, rt: Arc<StreamRuntime>, max_message: usize) {
    // Registered before codecs are known: this is what starts an on-demand source.
    let _viewer = rt.demand.viewer();
    let stopped = async {
        rt.stopped().await;
        crate::wsproto::stopped_frame()
    };
    serve_from_hub(socket, &rt.hub, stopped, max_message).await;
}

/// Serves one live viewer from `hub` (a local stream's, or the hub a relayed stream is published
/// into, `live::relay`) until it leaves, lags beyond repair, or `ended` resolves, with the close
/// frame the viewer is then sent.
pub async fn serve_from_hub(
    socket: WebSocket,
    hub: &Arc<Hub>,
    ended: impl Future<Output = CloseFrame>,
    max_message: usize,
) {
    // Audio rides with the next video frame anyway: waking for each audio frame would only
    // queue it in the muxer (for AAC at 48 kHz, about two wake-ups in three).
    let sub = hub.subscribe_with(
        VIEWER_QUEUE,
        crate::hub::DEFAULT_QUEUE_BYTES,
        crate::hub::AudioWake::WithVideo,
    );
    // The client's messages are read by a task of their own, so the session, woken for every
    // frame, never polls the socket for reading: each such poll registered wakers, checked the
    // socket's readiness and zero-filled the WebSocket layer's read buffer, ~7 % of the fan-out
    // cost at 1000 viewers (docs/benchmarks.md, "Profiles"). The halves are joined again to close.
    let (mut sink, stream) = socket.split();
    let (mut reader, mut from_client) = ClientReader::spawn(stream);
    let end = session(hub, sub, &mut sink, &mut from_client, ended).await;
    if matches!(end, Ending::Drop) {
        return;
    }
    // (A reader waiting to hand over an event gives up once nobody listens.)
    drop(from_client);
    let Some(mut socket) = reader.rejoin(sink).await else {
        return;
    };
    match end {
        Ending::Drop => {}
        Ending::Reason(reason) => close_with(&mut socket, reason).await,
        Ending::Frame(frame) => crate::wsproto::close(&mut socket, Some(frame)).await,
        Ending::ReadError(e) => close_read_error(&mut socket, &e, max_message).await,
    }
}

/// One live session on the socket's write half: waits for the stream's codecs, then sends its
/// frames, answering the client's `ping`s throughout; returns how it ends.
async fn session(
    hub: &Arc<Hub>,
    mut sub: Subscription,
    sink: &mut SplitSink<WebSocket, Message>,
    from_client: &mut mpsc::Receiver<ClientEvent>,
    ended: impl Future<Output = CloseFrame>,
) -> Ending {
    tokio::pin!(ended);
    {
        let mut params = hub.params();
        // (A bool, not the watch's guard: that guard must not live across the other arms'
        // awaits.)
        let codecs = async {
            let got = tokio::time::timeout(CODEC_WAIT, params.wait_for(Option::is_some)).await;
            matches!(got, Ok(Ok(_)))
        };
        tokio::pin!(codecs);
        loop {
            tokio::select! {
                got = &mut codecs => {
                    if got {
                        break;
                    }
                    return Ending::Reason("Timeout waiting for codec information");
                }
                // The viewer may leave while waiting (a failed `pong` does not end the wait).
                event = from_client.recv() => match event {
                    Some(ClientEvent::Ping) => {
                        let _ = send(sink, Message::Text("pong".into())).await;
                    }
                    Some(ClientEvent::Closed) | None => return Ending::Drop,
                    Some(ClientEvent::Failed(e)) => return Ending::ReadError(e),
                },
                frame = &mut ended => return Ending::Frame(frame),
            }
        }
    }
    let mut mux = MseMuxer::new();
    // The keyframe timer and the stop signal are set up once per session, not around every frame:
    // re-registering a timer and a cancellation waiter per frame and viewer was a visible part of
    // the fan-out cost (docs/benchmarks.md, "Profiles"). The timer is moved on lazily: when it
    // fires early because keyframes came meanwhile, it is set to the latest deadline.
    let mut keyframe_deadline = tokio::time::Instant::now() + KEYFRAME_TIMEOUT;
    let keyframe_timer = tokio::time::sleep_until(keyframe_deadline);
    tokio::pin!(keyframe_timer);
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        tokio::select! {
            event = from_client.recv() => match event {
                Some(ClientEvent::Ping) => {
                    if !send(sink, Message::Text("pong".into())).await {
                        return Ending::Reason("Can't write PONG message");
                    }
                }
                Some(ClientEvent::Closed) | None => return Ending::Drop,
                Some(ClientEvent::Failed(e)) => return Ending::ReadError(e),
            },
            d = sub.recv() => {
                let Some(d) = d else {
                    return Ending::Frame(crate::wsproto::stopped_frame());
                };
                // Frames already queued behind this one (a new viewer's cached GOP, a viewer
                // catching up) go out in the same write: one flush, one syscall.
                let mut next = Some(d);
                while let Some(d) = next {
                    if d.frame.track == TrackKind::Video && d.frame.keyframe {
                        keyframe_deadline = tokio::time::Instant::now() + KEYFRAME_TIMEOUT;
                    }
                    if let Err(e) = mux.push_into(d, &mut batch) {
                        tracing::warn!(error = %e, "cannot mux a fragment for a viewer");
                        return Ending::Reason("Can't write packet to the muxer");
                    }
                    next = if batch.len() < MAX_BATCH_MESSAGES { sub.try_recv() } else { None };
                }
                if !send_batch(sink, &mut batch).await {
                    return Ending::Reason("Can't write buffered message");
                }
            }
            frame = &mut ended => return Ending::Frame(frame),
            () = &mut keyframe_timer => {
                if keyframe_deadline > tokio::time::Instant::now() {
                    keyframe_timer.as_mut().reset(keyframe_deadline);
                } else {
                    // As in the original: no keyframe for 10 s closes the connection without a
                    // frame.
                    return Ending::Drop;
                }
            }
        }
    }
}

/// How a live session ends.
enum Ending {
    /// The connection is dropped without a close frame (the client left, or no keyframe came).
    Drop,
    /// Close 1000 with this reason (the original's reasons).
    Reason(&'static str),
    /// This close frame.
    Frame(CloseFrame),
    /// Reading the client's messages failed: 1009 for one over the limit, else a reason.
    ReadError(axum::Error),
}

/// What a live viewer's client sent, as far as the session cares.
enum ClientEvent {
    /// Text `ping` (answered with `pong`).
    Ping,
    /// The client closed the connection (or its close frame came).
    Closed,
    Failed(axum::Error),
}

/// The task reading a live viewer's messages; gives its half of the socket back on
/// [`ClientReader::rejoin`], and stops when dropped.
struct ClientReader {
    task: Option<tokio::task::JoinHandle<SplitStream<WebSocket>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ClientReader {
    fn spawn(mut stream: SplitStream<WebSocket>) -> (ClientReader, mpsc::Receiver<ClientEvent>) {
        let (tx, rx) = mpsc::channel(4);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    biased;
                    _ = &mut stopped => return stream,
                    msg = stream.next() => match msg {
                        Some(Ok(Message::Text(t))) if t.as_str() == "ping" => ClientEvent::Ping,
                        Some(Ok(Message::Close(_))) | None => ClientEvent::Closed,
                        Some(Err(e)) => ClientEvent::Failed(e),
                        Some(Ok(_)) => continue,
                    },
                };
                let last = !matches!(event, ClientEvent::Ping);
                if tx.send(event).await.is_err() || last {
                    return stream;
                }
            }
        });
        let reader = ClientReader {
            task: Some(task),
            stop: Some(stop),
        };
        (reader, rx)
    }

    /// Stops reading and joins the two halves again (`None` if the reader task failed).
    async fn rejoin(&mut self, sink: SplitSink<WebSocket, Message>) -> Option<WebSocket> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let stream = self.task.take()?.await.ok()?;
        sink.reunite(stream).ok()
    }
}

impl Drop for ClientReader {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Sends `batch` (emptied) with one flush at the end: the WebSocket layer buffers the messages
/// and writes them together. `WRITE_TIMEOUT` applies to the whole batch.
async fn send_batch<S>(socket: &mut S, batch: &mut Vec<Bytes>) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    if batch.is_empty() {
        return true;
    }
    let write = async {
        for m in batch.drain(..) {
            socket.feed(Message::Binary(m)).await?;
        }
        socket.flush().await
    };
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

async fn send<S>(socket: &mut S, m: Message) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, socket.send(m)).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hub::Delivery;
    use crate::media::codec::tests::{DEMO_AVCC, LC_48K_MONO};
    use crate::media::codec::{aac_params, h264_params};

    fn video_only(version: u64) -> Arc<StreamParams> {
        Arc::new(StreamParams {
            version,
            video: Some(h264_params(Bytes::from_static(DEMO_AVCC)).unwrap()),
            audio: None,
        })
    }

    fn keyframe(params: &Arc<StreamParams>, dts: i64) -> Delivery {
        Delivery {
            frame: Frame {
                track: TrackKind::Video,
                dts,
                duration: 3600,
                cts_offset: 0,
                keyframe: true,
                wallclock_us: 0,
                data: Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]),
                params: params.clone(),
            },
            discontinuity: false,
        }
    }

    fn kinds(messages: &[Bytes]) -> Vec<&'static str> {
        messages
            .iter()
            .map(|m| match m.get(4..8) {
                _ if m.first() == Some(&0x09) => "codecs",
                Some(b"ftyp") => "init",
                Some(b"moof") => "fragment",
                _ => "other",
            })
            .collect()
    }

    #[test]
    fn codec_message_only_when_the_codec_list_changes() {
        let first = video_only(1);
        // Same codec string, another picture size (a camera switching resolution).
        let mut resized = (*video_only(2)).clone();
        if let Some(v) = resized.video.as_mut() {
            v.width = 320;
            v.height = 180;
        }
        let resized = Arc::new(resized);
        // Audio appears: the codec list changes.
        let with_audio = Arc::new(StreamParams {
            version: 3,
            audio: Some(aac_params(Bytes::from_static(LC_48K_MONO)).unwrap()),
            ..(*resized).clone()
        });
        let mut mux = MseMuxer::new();
        let m = mux.push(keyframe(&first, 0)).unwrap();
        assert_eq!(kinds(&m), ["codecs", "init", "fragment"]);
        assert_eq!(&m[0][1..], b"avc1.4D401E");
        // A new version with identical codecs changes nothing on the wire.
        let m = mux.push(keyframe(&video_only(7), 3600)).unwrap();
        assert_eq!(kinds(&m), ["fragment"]);
        let m = mux.push(keyframe(&resized, 7200)).unwrap();
        assert_eq!(kinds(&m), ["init", "fragment"]);
        let m = mux.push(keyframe(&with_audio, 10_800)).unwrap();
        assert_eq!(kinds(&m), ["codecs", "init", "fragment"]);
        assert_eq!(&m[0][1..], b"avc1.4D401E,mp4a.40.2");
    }
}
