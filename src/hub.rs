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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

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

struct Slot {
    id: u64,
    tx: mpsc::Sender<Delivery>,
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
        let mut skipped = 0u64;
        let mut dropped = 0u64;
        inner.slots.retain_mut(|slot| {
            if slot.waiting_for_sync {
                if !sync {
                    if slot.lagging {
                        dropped += len as u64;
                    }
                    return !slot.tx.is_closed();
                }
                slot.waiting_for_sync = false;
            }
            let over = slot
                .queued_bytes
                .load(Ordering::Relaxed)
                .saturating_add(len)
                > slot.max_bytes;
            let sent = if over {
                Err(mpsc::error::TrySendError::Full(()))
            } else {
                let delivery = Delivery {
                    frame: frame.clone(),
                    discontinuity: slot.mark_next,
                };
                // Counted before sending, so the receiver never takes off more than was added.
                slot.queued_bytes.fetch_add(len, Ordering::Relaxed);
                slot.tx.try_send(delivery).map_err(|e| {
                    slot.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    match e {
                        mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
                        mpsc::error::TrySendError::Closed(_) => {
                            mpsc::error::TrySendError::Closed(())
                        }
                    }
                })
            };
            match sent {
                Ok(()) => {
                    slot.mark_next = false;
                    slot.lagging = false;
                    true
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    // Lagging: drop the rest of this GOP for this consumer.
                    slot.waiting_for_sync = true;
                    slot.mark_next = true;
                    slot.lagging = true;
                    skipped += 1;
                    dropped += len as u64;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(())) => false,
            }
        });
        drop(inner);
        self.published_frames.fetch_add(1, Ordering::Relaxed);
        self.published_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        if skipped > 0 {
            self.skipped_frames.fetch_add(skipped, Ordering::Relaxed);
        }
        if dropped > 0 {
            self.dropped_bytes.fetch_add(dropped, Ordering::Relaxed);
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
        let mut inner = self.lock();
        let (tx, rx) = mpsc::channel(capacity.max(2) + inner.gop.len());
        let id = inner.next_id;
        inner.next_id += 1;
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let mut waiting_for_sync = true;
        let mut mark_next = false;
        if !inner.gop.is_empty() {
            waiting_for_sync = false;
            for frame in &inner.gop {
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
}
