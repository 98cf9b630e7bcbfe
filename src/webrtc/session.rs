//! One WebRTC session: a task that owns its `Rtc`, feeds it datagrams and timeouts, sends what
//! it outputs through the shared socket, and writes the stream's video once ICE and DTLS are up
//! (the cached GOP first, as a burst, so the browser shows a picture without waiting for the
//! next keyframe), and the camera's G.711 audio when the answer accepted an audio m-line.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use str0m::media::{Frequency, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::h264::AnnexB;
use super::send::Outbox;
use super::{Datagram, Engine, SessionCounters};
use crate::hub::{Delivery, Subscription};
use crate::limits::Permit;
use crate::manager::StreamRuntime;
use crate::media::{G711Frame, TrackKind};

/// A session that has heard nothing from its browser for this long is closed. Browsers send a
/// consent check (STUN) every few seconds and RTCP receiver reports more often (RFC 7675 gives
/// up after 30 s).
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(15);
/// A session that is not connected this long after its answer is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest sleep between checks of the timers above.
const TICK: Duration = Duration::from_millis(500);
/// Deadlines already passed that one drain handles at once; past these it returns to the
/// select loop (which wakes at once for a passed deadline), so other work is not starved.
const MAX_DUE_PER_DRAIN: u32 = 8;
/// The cached GOP a session starts with is spread over this much time, each frame waiting its
/// share by size, rather than written at once: a 2 s GOP is a few hundred packets, and handed to
/// the socket in one go they overrun the browser's receive buffer, so the lost ones come back by
/// NACK and the picture freezes briefly (measured: `freezeCount` 1 under load). Short enough that
/// the picture is still up well within the first half second.
const BURST_SPREAD: Duration = Duration::from_millis(40);

/// Where a session sends the camera's G.711: the audio m-line, its payload type, and the hub's
/// G.711 frames.
pub(super) struct AudioOut {
    pub mid: Mid,
    pub pt: Pt,
    pub rx: broadcast::Receiver<G711Frame>,
}

pub(super) struct Session {
    pub id: Uuid,
    pub stream_id: Uuid,
    pub rtc: Rtc,
    pub engine: Arc<Engine>,
    pub rx: mpsc::Receiver<Datagram>,
    pub sub: Subscription,
    pub burst: VecDeque<Delivery>,
    /// Bytes of the burst's frames (their share of [`BURST_SPREAD`]).
    pub burst_bytes: usize,
    pub annexb: AnnexB,
    /// What the `Rtc` output in one drain, sent together.
    pub outbox: Outbox,
    pub params_version: u64,
    pub mid: Mid,
    pub pt: Pt,
    /// `None`: video only (the stream has no G.711, or the offer no audio for it).
    pub audio: Option<AudioOut>,
    pub counters: Arc<SessionCounters>,
    pub cancel: CancellationToken,
    pub rt: Arc<StreamRuntime>,
    /// The session's place among the stream's live viewers (`[limits]`), given back when it ends.
    pub _place: Permit,
}

impl Session {
    pub async fn run(mut self) {
        // Counts as a viewer: keeps an on-demand source running.
        let _viewer = self.rt.demand.viewer();
        let reason = self.serve().await;
        self.rtc.disconnect();
        // Sends what disconnecting produced (a DTLS close alert), best effort.
        let _ = self.drain().await;
        self.engine.remove(self.id, reason);
        self.cancel.cancel();
        tracing::info!(stream = %self.stream_id, session = %self.id, reason,
            frames = self.counters.frames.load(Ordering::Relaxed),
            keyframe_requests = self.counters.keyframe_requests.load(Ordering::Relaxed),
            nacks = self.counters.nacks.load(Ordering::Relaxed),
            "WebRTC session closed");
    }

    /// Runs until the session ends; returns why.
    async fn serve(&mut self) -> &'static str {
        let started = Instant::now();
        let mut last_heard = Instant::now();
        let mut connected = false;
        let mut params = self.rt.hub.params();
        let cancel = self.cancel.clone();
        let rt = self.rt.clone();
        // The stop signals and the timer are made once per session, not on every turn of the
        // loop (a turn per frame, datagram and timeout): re-registering waiters and a timer each
        // time is measurable per viewer (docs/benchmarks.md, "WebRTC").
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let stopped = rt.stopped();
        tokio::pin!(stopped);
        let timer = tokio::time::sleep_until(tokio::time::Instant::now() + TICK);
        tokio::pin!(timer);
        // When the next frame of the burst may be written (paced, see BURST_SPREAD).
        let mut burst_next = Instant::now();
        loop {
            let deadline = match self.drain().await {
                Ok(Some(d)) => d,
                Ok(None) => return "peer disconnected",
                Err(reason) => return reason,
            };
            if self.counters.connected.load(Ordering::Relaxed) {
                connected = true;
            } else if started.elapsed() > CONNECT_TIMEOUT {
                return "not connected in time";
            }
            if last_heard.elapsed() > SILENCE_TIMEOUT {
                return "browser silent (consent expired)";
            }
            let now = Instant::now();
            let mut wake = deadline.min(now + TICK);
            let pacing = connected && !self.burst.is_empty() && burst_next > now;
            if pacing {
                wake = wake.min(burst_next);
            }
            let wake = tokio::time::Instant::from_std(wake);
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                biased;
                () = &mut cancelled => return "closed (DELETE or shutdown)",
                () = &mut stopped => return "stream stopped",
                changed = params.changed() => {
                    if changed.is_err() || params.borrow().is_none() {
                        return "stream stopped";
                    }
                }
                d = self.rx.recv() => {
                    let Some(d) = d else { return "engine stopped" };
                    last_heard = Instant::now();
                    self.receive(d);
                }
                a = next_audio(&mut self.audio), if connected && self.audio.is_some() => {
                    match a {
                        Some(f) => {
                            if let Err(reason) = self.write_audio(f) {
                                return reason;
                            }
                        }
                        // The source ended its G.711 track: video goes on.
                        None => self.audio = None,
                    }
                }
                d = next_delivery(&mut self.burst, &mut self.sub), if connected && !pacing => {
                    let Some(d) = d else { return "stream stopped" };
                    if d.burst {
                        burst_next = Instant::now() + burst_share(d.bytes, self.burst_bytes);
                    }
                    if let Err(reason) = self.write(d.delivery) {
                        return reason;
                    }
                }
                () = &mut timer => {
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
                        tracing::debug!(session = %self.id, error = %e, "WebRTC timeout handling");
                        return "WebRTC error";
                    }
                }
            }
        }
    }

    fn receive(&mut self, d: Datagram) {
        let Ok(contents) = d.data.as_slice().try_into() else {
            return;
        };
        let input = Input::Receive(
            d.at,
            Receive {
                proto: Protocol::Udp,
                source: d.from,
                destination: self.engine.local_for(d.from),
                contents,
            },
        );
        if let Err(e) = self.rtc.handle_input(input) {
            // A malformed or unexpected datagram: dropped, the session goes on.
            tracing::debug!(session = %self.id, error = %e, "WebRTC input dropped");
        }
    }

    /// Hands one frame to the packetizer. The subscription is video-only; anything else is
    /// skipped (the muxed stream's audio is AAC, which WebRTC cannot carry).
    fn write(&mut self, d: Delivery) -> Result<(), &'static str> {
        let frame = d.frame;
        if frame.track != TrackKind::Video {
            return Ok(());
        }
        if d.discontinuity {
            self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        }
        if frame.params.version != self.params_version {
            let Some(video) = frame.params.video.as_ref() else {
                return Err("the stream has no video any more");
            };
            let next = AnnexB::new(video)
                .map_err(|_| "the stream changed to a codec WebRTC does not carry")?;
            if next.codec() != self.annexb.codec() {
                // The answer named one codec; a new session negotiates the other.
                return Err("the stream changed its video codec");
            }
            self.annexb = next;
            self.params_version = frame.params.version;
        }
        if frame.cts_offset != 0 {
            return Err("the stream started sending B-frames");
        }
        let au = self.annexb.access_unit(&frame.data);
        if au.is_empty() {
            return Ok(());
        }
        // RTP time is the presentation time at 90 kHz (the hub's video timescale); frames come in
        // decode order, which equals presentation order without B-frames.
        let pts = u64::try_from(frame.dts.saturating_add(i64::from(frame.cts_offset))).unwrap_or(0);
        let Some(writer) = self.rtc.writer(self.mid) else {
            return Err("the browser removed the video");
        };
        match writer.write(self.pt, Instant::now(), MediaTime::from_90khz(pts), au) {
            Ok(()) => {
                self.counters.frames.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(session = %self.id, error = %e, "WebRTC write");
                Err("WebRTC error")
            }
        }
    }

    /// Hands one G.711 frame to the packetizer; its RTP time is its presentation time at the
    /// codec's 8 kHz clock (the hub's G.711 timestamps are at the camera's clock rate, 8 kHz for
    /// every session that sends audio).
    fn write_audio(&mut self, f: G711Frame) -> Result<(), &'static str> {
        let Some(audio) = &self.audio else {
            return Ok(());
        };
        let (mid, pt) = (audio.mid, audio.pt);
        let pts = u64::try_from(f.pts).unwrap_or(0);
        let Some(writer) = self.rtc.writer(mid) else {
            // The browser removed the audio: video goes on.
            self.audio = None;
            return Ok(());
        };
        let time = MediaTime::new(pts, Frequency::EIGHT_KHZ);
        match writer.write(pt, Instant::now(), time, f.data.to_vec()) {
            Ok(()) => {
                self.counters.audio_frames.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(session = %self.id, error = %e, "WebRTC audio write");
                Err("WebRTC error")
            }
        }
    }

    /// Polls the `Rtc` until it waits: handles its events, then sends the datagrams it output
    /// together ([`Outbox`]). A deadline that has already passed (str0m asks for one to
    /// packetize a frame just written, or to send due feedback) is handled here at once rather
    /// than through another turn of the select loop. Returns when to poll again, `None` when the
    /// peer is gone, or why the session must end.
    async fn drain(&mut self) -> Result<Option<Instant>, &'static str> {
        let polled = self.poll_all();
        let sent = self
            .outbox
            .flush(&self.engine.socket, &self.engine.gso)
            .await;
        self.counters
            .packets
            .fetch_add(sent.datagrams, Ordering::Relaxed);
        self.counters.bytes.fetch_add(sent.bytes, Ordering::Relaxed);
        polled
    }

    fn poll_all(&mut self) -> Result<Option<Instant>, &'static str> {
        let mut due_handled = 0;
        loop {
            if !self.rtc.is_alive() {
                return Ok(None);
            }
            let out = self.rtc.poll_output().map_err(|e| {
                tracing::debug!(session = %self.id, error = %e, "WebRTC output");
                "WebRTC error"
            })?;
            match out {
                Output::Timeout(t) => {
                    let now = Instant::now();
                    if t > now || due_handled == MAX_DUE_PER_DRAIN {
                        return Ok(Some(t));
                    }
                    due_handled += 1;
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                        tracing::debug!(session = %self.id, error = %e, "WebRTC timeout handling");
                        return Err("WebRTC error");
                    }
                }
                Output::Transmit(t) => self.outbox.push(t.destination, t.contents.into()),
                Output::Event(e) => self.event(e)?,
            }
        }
    }

    fn event(&mut self, e: Event) -> Result<(), &'static str> {
        match e {
            Event::Connected => {
                self.counters.connected.store(true, Ordering::Relaxed);
                tracing::debug!(session = %self.id, "WebRTC connected");
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                return Err("ICE disconnected");
            }
            Event::KeyframeRequest(_) => {
                self.counters
                    .keyframe_requests
                    .fetch_add(1, Ordering::Relaxed);
            }
            Event::MediaEgressStats(s) if s.mid == self.mid => {
                self.counters.nacks.store(s.nacks, Ordering::Relaxed);
            }
            _ => {}
        }
        Ok(())
    }
}

/// The next G.711 frame; `None` once the source's G.711 track is gone. A session that fell
/// behind loses the oldest frames (a gap in the sound) and goes on.
async fn next_audio(audio: &mut Option<AudioOut>) -> Option<G711Frame> {
    let audio = audio.as_mut()?;
    loop {
        match audio.rx.recv().await {
            Ok(f) => return Some(f),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// A frame to send, and whether it came from the burst (and how big it is, for pacing).
struct Next {
    delivery: Delivery,
    burst: bool,
    bytes: usize,
}

/// The next frame: the cached GOP first, then the live queue. `None` once the hub is gone.
async fn next_delivery(burst: &mut VecDeque<Delivery>, sub: &mut Subscription) -> Option<Next> {
    if let Some(d) = burst.pop_front() {
        let bytes = d.frame.data.len();
        return Some(Next {
            delivery: d,
            burst: true,
            bytes,
        });
    }
    sub.recv().await.map(|delivery| Next {
        delivery,
        burst: false,
        bytes: 0,
    })
}

/// How long to wait after writing a burst frame of `bytes`: its share of [`BURST_SPREAD`] by size.
fn burst_share(bytes: usize, burst_bytes: usize) -> Duration {
    if burst_bytes == 0 {
        return Duration::ZERO;
    }
    let share = bytes.min(burst_bytes) as f64 / burst_bytes as f64;
    BURST_SPREAD.mul_f64(share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_is_spread_by_size_over_the_spread() {
        let sizes = [30_000usize, 3_000, 3_000, 4_000];
        let total: usize = sizes.iter().sum();
        let waits: Vec<Duration> = sizes.iter().map(|b| burst_share(*b, total)).collect();
        let sum: Duration = waits.iter().sum();
        assert!(
            sum <= BURST_SPREAD && BURST_SPREAD - sum < Duration::from_millis(1),
            "{sum:?}"
        );
        assert!(waits[0] > waits[1] * 9, "{waits:?}");
        assert_eq!(burst_share(10, 0), Duration::ZERO);
    }
}
