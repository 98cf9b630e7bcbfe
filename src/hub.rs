//! Per-stream fan-out from one source to many consumers (MSE viewers, the HLS segmenter, the
//! recorder).
//!
//! Invariants:
//! * [`Hub::publish`] never waits: every consumer has a bounded queue filled with `try_send`.
//! * A consumer whose queue is full is not given a partial GOP: it drops everything up to the next
//!   video keyframe (a *skip*, counted), and the first frame it gets afterwards carries
//!   `discontinuity = true`.
//! * The frames since the last video keyframe are cached, so a new consumer starts at once from the
//!   latest keyframe instead of waiting for the next one.
//! * Timestamps are continuous across source sessions: when a source reconnects, its new
//!   session-relative timestamps are shifted to continue after the previous session's last frame.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};

use crate::media::{Frame, G711Frame, G711Params, StreamParams, TrackKind};

/// Most frames kept in the GOP cache. A source with absurdly long GOPs (or audio without video)
/// would otherwise grow it without bound; past this the cache is dropped and new consumers wait for
/// the next keyframe.
const GOP_CACHE_MAX_FRAMES: usize = 1500;

/// Most bytes kept in the GOP cache, whatever the frame count: a 4K camera's GOP of a few seconds
/// fits; a source with tiny frame durations (thousands of frames per "second") or giant frames
/// cannot make it grow without bound. Past this the cache is dropped, as for the frame limit.
pub const GOP_CACHE_MAX_BYTES: usize = 32 * 1024 * 1024;

/// G.711 frames buffered for each WebRTC session (a camera packet is 20-40 ms of sound, so this is
/// several seconds); a session further behind loses the oldest (heard as a gap).
const G711_QUEUE: usize = 256;

/// Bytes a consumer's queue may hold when [`Hub::subscribe`] is given no byte limit.
pub const DEFAULT_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// What a consumer receives.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub frame: Frame,
    /// Frames were skipped before this one (the consumer lagged) or the source restarted: the
    /// timeline may jump here. Always a keyframe (or the first frame of an audio-only stream).
    pub discontinuity: bool,
}

/// How a consumer takes the audio frames of a stream that also has video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioWake {
    /// Each audio frame is queued as it comes (the recorder, the HLS segmenter).
    Each,
    /// Audio frames are held back and queued together just before the next video frame, so
    /// the consumer wakes once per video frame instead of once per frame of either track (an
    /// MSE viewer sends the audio with the next video frame anyway; AAC at 48 kHz is ~47
    /// frames a second beside 25 video frames).
    WithVideo,
    /// Audio frames are not delivered (WebRTC carries no AAC).
    Never,
}

/// Most audio frames a [`AudioWake::WithVideo`] consumer holds back (~1.4 s of AAC at 48 kHz);
/// past it they are queued without waiting for video (a camera whose video paused).
const HELD_AUDIO_MAX: usize = 64;

struct Slot {
    id: u64,
    tx: mpsc::Sender<Delivery>,
    audio: AudioWake,
    /// Audio frames held back for an [`AudioWake::WithVideo`] consumer (their bytes are counted
    /// in `queued_bytes`).
    held: Vec<Delivery>,
    /// Payload bytes in the queue (added here, taken off by [`Subscription::recv`]).
    queued_bytes: Arc<AtomicUsize>,
    /// The most `queued_bytes` may reach; a frame that would pass it is a lag like a full queue.
    max_bytes: usize,
    /// Frames are being dropped because this consumer lagged (counted in dropped bytes).
    lagging: bool,
    /// Waiting for the next sync point before sending anything.
    waiting_for_sync: bool,
    /// The next delivered frame must carry `discontinuity`.
    mark_next: bool,
}

/// Frames and bytes consumers did not get during one [`Hub::publish`].
#[derive(Default)]
struct Losses {
    skipped: u64,
    dropped: u64,
}

impl Slot {
    /// Hands `frame` to this consumer (`sync`: a point it may start from; `has_video`: the
    /// stream has video). Returns `false` once the consumer is gone.
    fn offer(&mut self, frame: &Frame, sync: bool, has_video: bool, losses: &mut Losses) -> bool {
        let len = frame.data.len();
        let side_audio = frame.track == TrackKind::Audio && has_video;
        if side_audio && self.audio == AudioWake::Never {
            return !self.tx.is_closed();
        }
        if self.waiting_for_sync {
            if !sync {
                if self.lagging {
                    losses.dropped += len as u64;
                }
                return !self.tx.is_closed();
            }
            self.waiting_for_sync = false;
        }
        let over = self
            .queued_bytes
            .load(Ordering::Relaxed)
            .saturating_add(len)
            > self.max_bytes;
        if over {
            self.lag(1, len, losses);
            return true;
        }
        let delivery = Delivery {
            frame: frame.clone(),
            discontinuity: self.mark_next,
        };
        // Counted before sending, so the receiver never takes off more than was added.
        self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        self.mark_next = false;
        self.lagging = false;
        if side_audio && self.audio == AudioWake::WithVideo && self.held.len() < HELD_AUDIO_MAX {
            self.held.push(delivery);
            return true;
        }
        // What was held back goes first, then this frame.
        let mut failed: Option<(bool, u64, usize)> = None;
        for d in self.held.drain(..).chain(std::iter::once(delivery)) {
            match failed.as_mut() {
                Some((_, frames, bytes)) => {
                    *frames += 1;
                    *bytes += d.frame.data.len();
                }
                None => {
                    let n = d.frame.data.len();
                    if let Err(e) = self.tx.try_send(d) {
                        let closed = matches!(e, mpsc::error::TrySendError::Closed(_));
                        failed = Some((closed, 1, n));
                    }
                }
            }
        }
        match failed {
            None => true,
            Some((true, _, _)) => false,
            Some((false, frames, bytes)) => {
                // Not delivered: no longer queued.
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                self.lag(frames, bytes, losses);
                true
            }
        }
    }

    /// This consumer lagged: it drops the rest of this GOP (`frames` of `bytes` now, counted)
    /// and what it held back.
    fn lag(&mut self, frames: u64, bytes: usize, losses: &mut Losses) {
        let held: usize = self.held.drain(..).map(|d| d.frame.data.len()).sum();
        self.queued_bytes.fetch_sub(held, Ordering::Relaxed);
        self.waiting_for_sync = true;
        self.mark_next = true;
        self.lagging = true;
        losses.skipped += frames;
        losses.dropped += (bytes + held) as u64;
    }
}

#[derive(Default)]
struct Inner {
    slots: Vec<Slot>,
    next_id: u64,
    /// Frames since the last video keyframe (or recent audio frames for audio-only streams).
    gop: Vec<Frame>,
    /// Payload bytes in `gop`.
    gop_bytes: usize,
    /// Shift applied to the current source session's timestamps, in µs.
    session_offset_us: i64,
    /// End of the last published frame (after shifting), in µs, per track.
    last_end_us: [i64; 2],
    has_video: bool,
}

/// The fan-out point of one stream.
pub struct Hub {
    inner: Mutex<Inner>,
    params: watch::Sender<Option<Arc<StreamParams>>>,
    /// Frames dropped because a consumer lagged (whole GOP tails), over the hub's life.
    skipped_frames: AtomicU64,
    /// Frames published.
    published_frames: AtomicU64,
    /// Payload bytes published.
    published_bytes: AtomicU64,
    /// Payload bytes consumers did not get because they lagged (their queue was full, in frames
    /// or bytes), summed over consumers.
    dropped_bytes: AtomicU64,
    /// Times the GOP cache was dropped for passing its frame or byte limit.
    gop_overflows: AtomicU64,
    /// The source's G.711 track, when it has one: not a [`TrackKind`] of the muxed stream (fMP4
    /// cannot carry it; MSE, HLS and the recorder never see it), only sent over WebRTC.
    g711: watch::Sender<Option<G711Params>>,
    g711_frames: broadcast::Sender<G711Frame>,
}

fn track_index(t: TrackKind) -> usize {
    match t {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
    }
}

fn to_us(ticks: i64, timescale: u32) -> i64 {
    ((i128::from(ticks) * 1_000_000) / i128::from(timescale.max(1))) as i64
}

fn from_us(us: i64, timescale: u32) -> i64 {
    ((i128::from(us) * i128::from(timescale)) / 1_000_000) as i64
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        let (params, _) = watch::channel(None);
        let (g711, _) = watch::channel(None);
        let (g711_frames, _) = broadcast::channel(G711_QUEUE);
        Arc::new(Hub {
            g711,
            g711_frames,
            inner: Mutex::new(Inner::default()),
            params,
            skipped_frames: AtomicU64::new(0),
            published_frames: AtomicU64::new(0),
            published_bytes: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            gop_overflows: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Never held across an await; a poisoned lock still guards consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest codec parameters (`None` until the source delivered them).
    pub fn params(&self) -> watch::Receiver<Option<Arc<StreamParams>>> {
        self.params.subscribe()
    }

    /// Publishes codec parameters ahead of the first frame (so viewers can be told early).
    pub fn set_params(&self, params: Arc<StreamParams>) {
        self.params.send_if_modified(|cur| {
            if cur.as_ref().is_some_and(|c| c.version == params.version) {
                false
            } else {
                *cur = Some(params.clone());
                true
            }
        });
    }

    /// A source (re)starts: its timestamps start again near zero. Later frames are shifted to
    /// continue after everything published so far, the GOP cache is dropped, and every consumer's
    /// next frame is marked as a discontinuity.
    pub fn begin_session(&self) {
        let mut inner = self.lock();
        let end = inner.last_end_us[0].max(inner.last_end_us[1]);
        inner.session_offset_us = end;
        inner.clear_gop();
        for slot in &mut inner.slots {
            slot.waiting_for_sync = true;
            slot.mark_next = true;
        }
    }

    /// The source ended: clears the codec parameters and the cache.
    pub fn end_session(&self) {
        self.lock().clear_gop();
        self.params.send_replace(None);
        self.g711.send_replace(None);
    }

    /// The source's G.711 track (from its SDP), or `None`: set by the source when a session
    /// starts, cleared when it ends.
    pub fn set_g711(&self, params: Option<G711Params>) {
        self.g711.send_if_modified(|cur| {
            let changed = *cur != params;
            *cur = params;
            changed
        });
    }

    /// The G.711 track now, if the source has one.
    pub fn g711(&self) -> Option<G711Params> {
        *self.g711.borrow()
    }

    /// Publishes G.711 samples (`pts` relative to the current source session, shifted here like
    /// every other timestamp) to the WebRTC sessions listening. Never blocks; no cache (a joining
    /// session starts with the next packet, 20-40 ms later).
    pub fn publish_g711(&self, mut frame: G711Frame) {
        let offset_us = self.lock().session_offset_us;
        frame.pts += from_us(offset_us, frame.params.clock_rate);
        // No receiver is not an error: nobody listens over WebRTC now.
        let _ = self.g711_frames.send(frame);
    }

    /// Listens to the G.711 frames published from now on.
    pub fn subscribe_g711(&self) -> broadcast::Receiver<G711Frame> {
        self.g711_frames.subscribe()
    }

    /// Publishes one frame (timestamps relative to the current session). Never blocks.
    pub fn publish(&self, mut frame: Frame) {
        self.set_params(frame.params.clone());
        let mut inner = self.lock();
        let timescale = frame.params.timescale(frame.track);
        frame.dts += from_us(inner.session_offset_us, timescale);
        let end_us = to_us(frame.dts + i64::from(frame.duration), timescale);
        let ti = track_index(frame.track);
        inner.last_end_us[ti] = inner.last_end_us[ti].max(end_us);
        let has_video = frame.params.video.is_some();
        inner.has_video = has_video;
        // A sync point: a video keyframe, or any frame of an audio-only stream.
        let sync = match frame.track {
            TrackKind::Video => frame.keyframe,
            TrackKind::Audio => !has_video,
        };
        let len = frame.data.len();
        if sync && (frame.track == TrackKind::Video || inner.gop.len() >= 50) {
            inner.clear_gop();
        }
        let fits = inner.gop.len() < GOP_CACHE_MAX_FRAMES
            && inner.gop_bytes.saturating_add(len) <= GOP_CACHE_MAX_BYTES;
        if fits && (sync || !inner.gop.is_empty()) {
            inner.gop.push(frame.clone());
            inner.gop_bytes += len;
        } else if !fits && !inner.gop.is_empty() {
            inner.clear_gop();
            self.gop_overflows.fetch_add(1, Ordering::Relaxed);
        }
        let mut losses = Losses::default();
        inner
            .slots
            .retain_mut(|slot| slot.offer(&frame, sync, has_video, &mut losses));
        drop(inner);
        self.published_frames.fetch_add(1, Ordering::Relaxed);
        self.published_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        if losses.skipped > 0 {
            self.skipped_frames
                .fetch_add(losses.skipped, Ordering::Relaxed);
        }
        if losses.dropped > 0 {
            self.dropped_bytes
                .fetch_add(losses.dropped, Ordering::Relaxed);
        }
    }

    /// Adds a consumer with room for `capacity` frames beyond the cached GOP it is primed with, so
    /// it can start immediately from the latest keyframe, and at most [`DEFAULT_QUEUE_BYTES`].
    /// Dropping the returned [`Subscription`] removes the consumer.
    pub fn subscribe(self: &Arc<Self>, capacity: usize) -> Subscription {
        self.subscribe_bounded(capacity, DEFAULT_QUEUE_BYTES)
    }

    /// [`Hub::subscribe`] with a byte limit on the queue: a frame that would take the queued
    /// payload past `max_bytes` makes the consumer lag like a full queue (skip to the next
    /// keyframe, counted), so large frames cannot fill memory before the frame limit is reached.
    pub fn subscribe_bounded(self: &Arc<Self>, capacity: usize, max_bytes: usize) -> Subscription {
        self.subscribe_with(capacity, max_bytes, AudioWake::Each)
    }

    /// [`Hub::subscribe_bounded`] taking the audio of a stream with video as `audio` says.
    pub fn subscribe_with(
        self: &Arc<Self>,
        capacity: usize,
        max_bytes: usize,
        audio: AudioWake,
    ) -> Subscription {
        let mut inner = self.lock();
        let skip_audio = audio == AudioWake::Never && inner.has_video;
        let (tx, rx) = mpsc::channel(capacity.max(2) + inner.gop.len());
        let id = inner.next_id;
        inner.next_id += 1;
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let mut waiting_for_sync = true;
        let mut mark_next = false;
        if !inner.gop.is_empty() {
            waiting_for_sync = false;
            for frame in &inner.gop {
                if skip_audio && frame.track == TrackKind::Audio {
                    continue;
                }
                let len = frame.data.len();
                if queued_bytes.load(Ordering::Relaxed) + len > max_bytes {
                    waiting_for_sync = true;
                    mark_next = true;
                    break;
                }
                let d = Delivery {
                    frame: frame.clone(),
                    discontinuity: false,
                };
                queued_bytes.fetch_add(len, Ordering::Relaxed);
                if tx.try_send(d).is_err() {
                    queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    waiting_for_sync = true;
                    mark_next = true;
                    break;
                }
            }
        }
        inner.slots.push(Slot {
            id,
            tx,
            audio,
            held: Vec::new(),
            queued_bytes: queued_bytes.clone(),
            max_bytes,
            lagging: false,
            waiting_for_sync,
            mark_next,
        });
        Subscription {
            id,
            hub: Arc::downgrade(self),
            rx,
            queued_bytes,
            max_bytes,
            batch_timer: None,
            busy: false,
        }
    }

    fn unsubscribe(&self, id: u64) {
        self.lock().slots.retain(|s| s.id != id);
    }

    /// Number of attached consumers.
    pub fn consumers(&self) -> usize {
        self.lock().slots.len()
    }

    /// Frames consumers missed because they lagged (each skip drops the rest of a GOP).
    pub fn skips(&self) -> u64 {
        self.skipped_frames.load(Ordering::Relaxed)
    }

    pub fn published(&self) -> u64 {
        self.published_frames.load(Ordering::Relaxed)
    }

    /// Payload bytes published (bytes in, for metrics).
    pub fn published_bytes(&self) -> u64 {
        self.published_bytes.load(Ordering::Relaxed)
    }

    /// Payload bytes consumers missed because they lagged (queue full in frames or bytes).
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes.load(Ordering::Relaxed)
    }

    /// Times the GOP cache passed its frame or byte limit and was dropped.
    pub fn gop_overflows(&self) -> u64 {
        self.gop_overflows.load(Ordering::Relaxed)
    }

    /// Frames and payload bytes in the GOP cache now.
    pub fn gop_cache(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.gop.len(), inner.gop_bytes)
    }
}

impl Inner {
    fn clear_gop(&mut self) {
        self.gop.clear();
        self.gop_bytes = 0;
    }
}

/// A consumer's end of the hub.
pub struct Subscription {
    id: u64,
    hub: Weak<Hub>,
    rx: mpsc::Receiver<Delivery>,
    /// Payload bytes in `rx` (shared with the hub's slot).
    queued_bytes: Arc<AtomicUsize>,
    /// The most `queued_bytes` may reach (the slot's limit).
    max_bytes: usize,
    /// The timer of [`Subscription::recv_batch`] (made on first use, then reset).
    batch_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last batch filled a quarter of the queue (in frames or bytes): the next one is taken
    /// without waiting, so a source with a very high frame rate cannot overrun the queue.
    busy: bool,
}

/// The pace of consumers that take frames in batches ([`Subscription::recv_batch`] with
/// [`next_batch_tick`]): the HLS segmenter writes whole segments, so waking it for every frame
/// (a task switch, often a thread wake-up, per frame) buys nothing.
pub const BATCH_PERIOD: Duration = Duration::from_millis(200);

/// The next [`BATCH_PERIOD`] tick, at the same phase everywhere in the process, so the batched
/// consumers of all streams wake together (one timer expiry, one thread wake-up for all).
pub fn next_batch_tick() -> tokio::time::Instant {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    let period = BATCH_PERIOD.as_nanos();
    let next = (start.elapsed().as_nanos() / period + 1) * period;
    let next = u64::try_from(next).unwrap_or(u64::MAX);
    tokio::time::Instant::from_std(start + Duration::from_nanos(next))
}

impl Subscription {
    /// The next frame; `None` once the hub is gone.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let d = self.rx.recv().await?;
        self.queued_bytes
            .fetch_sub(d.frame.data.len(), Ordering::Relaxed);
        Some(d)
    }

    /// The next frame if one is queued now (a live viewer writes what piled up in one go).
    pub fn try_recv(&mut self) -> Option<Delivery> {
        let d = self.rx.try_recv().ok()?;
        self.queued_bytes
            .fetch_sub(d.frame.data.len(), Ordering::Relaxed);
        Some(d)
    }

    /// Replaces `out` with every frame queued now, waiting for at least one; `false` once the
    /// hub is gone and the queue is empty. With `not_before`, first waits until then (unless
    /// the last batch filled a quarter of the queue), so a consumer that acts on whole
    /// fragments or segments wakes a few times a second instead of once per frame; live
    /// viewers pass `None`. Cancel safe: a frame is either in `out` or still in the queue.
    pub async fn recv_batch(
        &mut self,
        out: &mut Vec<Delivery>,
        not_before: Option<tokio::time::Instant>,
    ) -> bool {
        out.clear();
        if let Some(at) = not_before
            && !self.busy
            && at > tokio::time::Instant::now()
        {
            match &mut self.batch_timer {
                Some(t) => t.as_mut().reset(at),
                None => self.batch_timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            if let Some(t) = &mut self.batch_timer {
                t.as_mut().await;
            }
        }
        // Everything queued now (at least one frame), taken off in one go.
        let limit = self.rx.max_capacity().max(1);
        if self.rx.recv_many(out, limit).await == 0 {
            return false;
        }
        let bytes: usize = out.iter().map(|d| d.frame.data.len()).sum();
        let queued = self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.busy =
            out.len().saturating_mul(4) >= limit || queued.saturating_mul(4) >= self.max_bytes;
        true
    }

    /// Payload bytes waiting in this consumer's queue.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Frames waiting in this consumer's queue.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unsubscribe(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{StreamParams, VideoCodec, VideoParams};
    use bytes::Bytes;

    fn params() -> Arc<StreamParams> {
        Arc::new(StreamParams {
            version: 1,
            video: Some(VideoParams {
                codec: VideoCodec::H264,
                config_record: Bytes::from_static(b"x"),
                width: 2,
                height: 2,
                codec_string: "avc1.42C01E".into(),
            }),
            audio: None,
        })
    }

    /// G.711 goes only to its own listeners, shifted like the rest across source sessions; the
    /// muxed stream's consumers and the GOP cache never see it; the track ends with the session.
    #[test]
    fn g711_is_a_side_track_only_its_listeners_get() {
        use crate::media::{G711Frame, G711Law, G711Params};
        let hub = Hub::new();
        let p = params();
        let g = G711Params {
            law: G711Law::Pcmu,
            clock_rate: 8000,
            channels: 1,
        };
        hub.set_g711(Some(g));
        assert_eq!(hub.g711(), Some(g));
        let mut muxed = hub.subscribe(64);
        let mut audio = hub.subscribe_g711();
        for n in 0..25 {
            hub.publish(frame(&p, n, n == 0));
        }
        let packet = |pts| G711Frame {
            pts,
            data: Bytes::from_static(&[0xff; 160]),
            params: g,
        };
        hub.publish_g711(packet(160));
        assert_eq!(audio.try_recv().map(|f| f.pts), Ok(160));
        let mut got = 0;
        while let Some(d) = muxed.try_recv() {
            assert_eq!(d.frame.track, TrackKind::Video);
            got += 1;
        }
        assert_eq!(got, 25);
        assert_eq!(hub.gop_cache().0, 25);
        // A new source session: its G.711 continues after the first session's last frame (25
        // frames of 40 ms = 1 s = 8000 ticks at 8 kHz).
        hub.begin_session();
        hub.publish_g711(packet(0));
        assert_eq!(audio.try_recv().map(|f| f.pts), Ok(8000));
        hub.end_session();
        assert_eq!(hub.g711(), None);
    }

    fn frame(p: &Arc<StreamParams>, n: i64, key: bool) -> Frame {
        Frame {
            track: TrackKind::Video,
            dts: n * 3600,
            duration: 3600,
            cts_offset: 0,
            keyframe: key,
            wallclock_us: 0,
            data: Bytes::from(vec![n as u8]),
            params: p.clone(),
        }
    }

    #[tokio::test]
    async fn new_consumer_starts_at_the_cached_keyframe() {
        let hub = Hub::new();
        let p = params();
        for n in 0..30 {
            hub.publish(frame(&p, n, n % 25 == 0));
        }
        let mut sub = hub.subscribe(2);
        let first = sub.recv().await.expect("frame");
        assert!(first.frame.keyframe);
        assert_eq!(first.frame.dts, 25 * 3600);
        assert_eq!(sub.queued(), 4);
    }

    #[tokio::test]
    async fn lagging_consumer_skips_to_next_keyframe_without_partial_gops() {
        let hub = Hub::new();
        let p = params();
        let mut slow = hub.subscribe(10);
        let mut fast = hub.subscribe(1000);
        for n in 0..100 {
            hub.publish(frame(&p, n, n % 25 == 0));
        }
        // The fast consumer got everything from the first keyframe on.
        let mut got = 0;
        while let Ok(d) = fast.rx.try_recv() {
            assert!(!d.discontinuity);
            got += 1;
        }
        assert_eq!(got, 100);
        // The slow one got a prefix of the first GOP, then nothing until a keyframe it had room for.
        let mut seen = Vec::new();
        while let Ok(d) = slow.rx.try_recv() {
            seen.push(d);
        }
        assert_eq!(seen.len(), 10);
        assert!(seen[0].frame.keyframe);
        assert!(hub.skips() > 0);
        // After draining, the next delivery is a keyframe marked as a discontinuity.
        for n in 100..130 {
            hub.publish(frame(&p, n, n % 25 == 0));
        }
        let d = slow.rx.try_recv().expect("resumed");
        assert!(d.frame.keyframe && d.discontinuity);
        assert_eq!(d.frame.dts, 100 * 3600);
    }

    #[tokio::test]
    async fn sessions_continue_the_timeline_and_drop_closed_consumers() {
        let hub = Hub::new();
        let p = params();
        let mut sub = hub.subscribe(1000);
        for n in 0..10 {
            hub.publish(frame(&p, n, n == 0));
        }
        hub.begin_session();
        hub.publish(frame(&p, 0, true));
        let mut last = None;
        while let Ok(d) = sub.rx.try_recv() {
            last = Some(d);
        }
        let last = last.expect("frames");
        assert!(last.discontinuity);
        assert_eq!(
            last.frame.dts,
            10 * 3600,
            "continues after the previous session"
        );
        assert_eq!(hub.consumers(), 1);
        drop(sub);
        assert_eq!(hub.consumers(), 0);
    }
    fn sized(p: &Arc<StreamParams>, n: i64, key: bool, len: usize) -> Frame {
        Frame {
            dts: n,
            duration: 1,
            data: Bytes::from(vec![0u8; len]),
            ..frame(p, n, key)
        }
    }

    /// Tiny durations and large frames: the GOP cache stays under its byte limit (dropped and
    /// counted when a GOP outgrows it), whatever the frame count.
    #[tokio::test]
    async fn the_gop_cache_is_bounded_in_bytes() {
        let hub = Hub::new();
        let p = params();
        let len = 1024 * 1024;
        for n in 0..(GOP_CACHE_MAX_BYTES / len) as i64 + 20 {
            hub.publish(sized(&p, n, n == 0, len));
            assert!(hub.gop_cache().1 <= GOP_CACHE_MAX_BYTES);
        }
        assert_eq!(hub.gop_overflows(), 1);
        assert_eq!(hub.gop_cache(), (0, 0), "dropped until the next keyframe");
        hub.publish(sized(&p, 1000, true, len));
        assert_eq!(hub.gop_cache(), (1, len));
    }

    /// A consumer's queue is bounded in bytes too: past the limit it lags like a full queue (skip
    /// to the next keyframe), and the bytes it missed are counted.
    #[tokio::test]
    async fn consumer_queues_are_bounded_in_bytes_and_drops_are_counted() {
        let hub = Hub::new();
        let p = params();
        let len = 1000;
        let mut sub = hub.subscribe_bounded(1_000_000, 10 * len);
        for n in 0..50 {
            hub.publish(sized(&p, n, n % 25 == 0, len));
            assert!(sub.queued_bytes() <= 10 * len);
        }
        // Ten frames of the first GOP fitted; the other 15 and the whole second GOP (not taken
        // from the queue yet) were dropped.
        assert_eq!(sub.queued(), 10);
        assert_eq!(hub.dropped_bytes(), 40 * len as u64);
        let mut got = 0;
        while sub.queued() > 0 {
            sub.recv().await.expect("frame");
            got += 1;
        }
        assert_eq!((got, sub.queued_bytes()), (10, 0));
        // Room again: the next keyframe comes through, marked as a discontinuity.
        hub.publish(sized(&p, 50, true, len));
        let d = sub.recv().await.expect("resumed");
        assert!(d.discontinuity && d.frame.keyframe);
        assert_eq!(hub.published_bytes(), 51 * len as u64);
    }

    fn audio(p: &Arc<StreamParams>, n: i64) -> Frame {
        Frame {
            track: TrackKind::Audio,
            dts: n * 1024,
            duration: 1024,
            keyframe: false,
            data: Bytes::from(vec![0xa0; 10]),
            ..frame(p, n, false)
        }
    }

    fn tracks(sub: &mut Subscription) -> String {
        let mut out = String::new();
        while let Some(d) = sub.try_recv() {
            out.push(match d.frame.track {
                TrackKind::Video => 'v',
                TrackKind::Audio => 'a',
            });
        }
        out
    }

    /// Beside video, an `AudioWake::WithVideo` consumer gets the audio frames only when the
    /// next video frame comes (in their order, before it: nothing queued meanwhile, so nothing
    /// wakes it), or once too many are held; an `AudioWake::Never` one never gets them, not
    /// even from the GOP cache; `Each` gets every frame as it comes. Held bytes count against
    /// the queue's byte limit, and a lag drops them with the rest of the GOP, counted.
    #[tokio::test]
    async fn audio_beside_video_waits_for_the_next_video_frame_or_is_left_out() {
        let hub = Hub::new();
        let p = params();
        hub.publish(frame(&p, 0, true));
        hub.publish(audio(&p, 0));
        let mut each = hub.subscribe(1000);
        let mut with_video = hub.subscribe_with(1000, DEFAULT_QUEUE_BYTES, AudioWake::WithVideo);
        let mut never = hub.subscribe_with(1000, DEFAULT_QUEUE_BYTES, AudioWake::Never);
        // The cached GOP: the video-only consumer's copy has no audio.
        assert_eq!(tracks(&mut each), "va");
        assert_eq!(tracks(&mut with_video), "va");
        assert_eq!(tracks(&mut never), "v");
        hub.publish(audio(&p, 1));
        hub.publish(audio(&p, 2));
        assert_eq!(tracks(&mut each), "aa");
        assert_eq!((with_video.queued(), with_video.queued_bytes()), (0, 20));
        assert_eq!(tracks(&mut never), "");
        hub.publish(frame(&p, 1, false));
        assert_eq!(tracks(&mut with_video), "aav");
        assert_eq!(with_video.queued_bytes(), 0);
        assert_eq!(tracks(&mut never), "v");
        // Video pauses: held audio goes out once the hold is full.
        for n in 0..=HELD_AUDIO_MAX as i64 {
            hub.publish(audio(&p, 3 + n));
        }
        assert_eq!(with_video.queued(), HELD_AUDIO_MAX + 1);
        assert_eq!(tracks(&mut never), "");
        assert_eq!(hub.skips(), 0);

        // Held audio fills the byte limit: the consumer lags, the held frames are dropped with
        // the frame that did not fit, and it starts again at the next keyframe.
        let mut small = hub.subscribe_with(1000, 25, AudioWake::WithVideo);
        // The cached GOP's start, as far as 25 bytes go; then it waits for a keyframe.
        assert_eq!(tracks(&mut small), "vaa");
        hub.publish(frame(&p, 2, true));
        assert_eq!(tracks(&mut small), "v");
        hub.publish(audio(&p, 100));
        hub.publish(audio(&p, 101));
        let dropped = hub.dropped_bytes();
        hub.publish(audio(&p, 102));
        assert_eq!(hub.dropped_bytes() - dropped, 30);
        assert_eq!((small.queued(), small.queued_bytes()), (0, 0));
        hub.publish(frame(&p, 3, false));
        assert_eq!(tracks(&mut small), "");
        hub.publish(frame(&p, 4, true));
        let d = small.try_recv().expect("resumed");
        assert!(d.discontinuity && d.frame.keyframe);
    }

    /// A batched consumer sleeps until its time, then takes everything queued in one go; a
    /// batch that fills a quarter of the queue makes the next one come without waiting; the
    /// end of the hub ends the batches once the queue is empty.
    #[tokio::test]
    async fn batches_wait_for_their_time_and_take_everything_queued() {
        use tokio::time::Instant;
        let hub = Hub::new();
        let p = params();
        let mut sub = hub.subscribe(100);
        let mut batch = Vec::new();
        let at = Instant::now() + Duration::from_millis(300);
        let publisher = {
            let hub = hub.clone();
            let p = p.clone();
            tokio::spawn(async move {
                for n in 0..10 {
                    hub.publish(frame(&p, n, n == 0));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        assert!(sub.recv_batch(&mut batch, Some(at)).await);
        assert!(Instant::now() >= at, "woke before its time");
        assert_eq!(
            batch.len(),
            10,
            "everything published meanwhile, in one batch"
        );
        assert!(batch[0].frame.keyframe);
        assert_eq!(sub.queued_bytes(), 0);
        publisher.await.expect("publisher");
        // 30 frames of a queue of 100: past a quarter, so the batch after them does not wait.
        for n in 10..40 {
            hub.publish(frame(&p, n, n % 25 == 0));
        }
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(sub.recv_batch(&mut batch, Some(soon)).await);
        assert_eq!(batch.len(), 30);
        hub.publish(frame(&p, 40, false));
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(60);
        assert!(sub.recv_batch(&mut batch, Some(far)).await);
        assert_eq!(batch.len(), 1);
        assert!(t0.elapsed() < Duration::from_secs(5), "busy: no wait");
        // A small batch again: the next one waits for its time.
        hub.publish(frame(&p, 41, false));
        let t0 = Instant::now();
        assert!(
            sub.recv_batch(&mut batch, Some(t0 + Duration::from_millis(200)))
                .await
        );
        assert!(t0.elapsed() >= Duration::from_millis(200));
        drop(hub);
        assert!(
            !sub.recv_batch(&mut batch, None).await,
            "hub gone, queue empty"
        );
        assert!(batch.is_empty());
    }

    /// The shared tick is the same instant for every caller and at most one period away.
    #[tokio::test]
    async fn batch_ticks_share_one_phase() {
        let a = next_batch_tick();
        let b = next_batch_tick();
        let now = tokio::time::Instant::now();
        assert!(a > now - Duration::from_millis(1) && a <= now + BATCH_PERIOD);
        assert!(b == a || b == a + BATCH_PERIOD);
    }
}
