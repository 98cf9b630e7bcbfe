//! The load client: many WebSocket viewers in this one process, each reading and counting what it
//! gets (messages, bytes, fragments, video samples) and checking that its first fragment starts
//! with a keyframe. Nothing is decoded or copied beyond what the WebSocket library does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Counters shared by all viewers of a run.
#[derive(Default)]
pub struct Totals {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub fragments: AtomicU64,
    pub video_samples: AtomicU64,
    /// Viewers that got their first fragment.
    pub started: AtomicU64,
    /// Viewers whose first fragment did not start with a video keyframe (mid-GOP start).
    pub bad_starts: AtomicU64,
    /// Viewers that ended before they were told to (connection refused, closed by the server).
    pub ended: AtomicU64,
}

impl Totals {
    pub fn snapshot(&self) -> [u64; 4] {
        [
            self.messages.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.fragments.load(Ordering::Relaxed),
            self.video_samples.load(Ordering::Relaxed),
        ]
    }
}

/// What a `moof` says: video samples in it and whether the first video sample is a sync sample.
#[derive(Debug, PartialEq, Eq)]
pub struct FragmentInfo {
    pub video_samples: u32,
    pub first_video_sync: Option<bool>,
}

fn boxes(mut data: &[u8]) -> impl Iterator<Item = (&[u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 8 {
            return None;
        }
        let size = u32::from_be_bytes(data[0..4].try_into().ok()?) as usize;
        if size < 8 || size > data.len() {
            return None;
        }
        let kind: &[u8; 4] = data[4..8].try_into().ok()?;
        let body = &data[8..size];
        data = &data[size..];
        Some((kind, body))
    })
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the `moof` at the start of `message` (a `moof`+`mdat` message). `video_track` is the
/// video track's id (1 in our init segments), `None` for audio-only streams.
pub fn inspect_fragment(message: &[u8], video_track: Option<u32>) -> Option<FragmentInfo> {
    let (kind, moof) = boxes(message).next()?;
    if kind != b"moof" {
        return None;
    }
    let mut info = FragmentInfo {
        video_samples: 0,
        first_video_sync: None,
    };
    for (kind, traf) in boxes(moof) {
        if kind != b"traf" {
            continue;
        }
        let mut track = None;
        let mut default_flags = None;
        for (kind, b) in boxes(traf) {
            match kind {
                b"tfhd" => {
                    let flags = be32(b, 0)? & 0xFF_FFFF;
                    track = be32(b, 4);
                    // Optional fields in order: base data offset (8), description index,
                    // default duration, default size, default flags.
                    let mut at = 8;
                    for (bit, len) in [(0x1, 8), (0x2, 4), (0x8, 4), (0x10, 4)] {
                        if flags & bit != 0 {
                            at += len;
                        }
                    }
                    if flags & 0x20 != 0 {
                        default_flags = be32(b, at);
                    }
                }
                b"trun" if track.is_some() && track == video_track => {
                    let flags = be32(b, 0)? & 0xFF_FFFF;
                    let count = be32(b, 4)?;
                    let mut at = 8;
                    if flags & 0x1 != 0 {
                        at += 4;
                    }
                    let first = if flags & 0x4 != 0 {
                        be32(b, at)
                    } else if flags & 0x400 != 0 {
                        let skip = [0x100, 0x200].iter().filter(|f| flags & **f != 0).count() * 4;
                        be32(b, at + skip)
                    } else {
                        default_flags
                    };
                    if info.first_video_sync.is_none() && count > 0 {
                        // sample_is_non_sync_sample (bit 16 of the sample flags).
                        info.first_video_sync = first.map(|f| f & 0x1_0000 == 0);
                    }
                    info.video_samples += count;
                }
                _ => {}
            }
        }
    }
    Some(info)
}

/// One live MSE viewer: connects, then reads until `stop` (or the server ends it), counting into
/// `totals`. Returns the time from the start of the connect to the first fragment.
pub async fn live_viewer(
    url: String,
    totals: Arc<Totals>,
    stop: CancellationToken,
) -> Option<Duration> {
    let t0 = Instant::now();
    let ws = tokio::select! {
        r = tokio_tungstenite::connect_async(&url) => r,
        _ = stop.cancelled() => return None,
    };
    let Ok((mut ws, _)) = ws else {
        totals.ended.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let mut video_track = None;
    let mut first = None;
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = stop.cancelled() => break,
        };
        let data = match msg {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                totals.ended.fetch_add(1, Ordering::Relaxed);
                return first;
            }
            Some(Ok(_)) => continue,
        };
        totals.messages.fetch_add(1, Ordering::Relaxed);
        totals.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        if data.first() == Some(&0x09) {
            // The codec list: video (track 1) when it starts with a video codec.
            let list = &data[1..];
            video_track = (list.starts_with(b"avc1")
                || list.starts_with(b"hvc1")
                || list.starts_with(b"hev1"))
            .then_some(1);
            continue;
        }
        let Some(info) = inspect_fragment(&data, video_track) else {
            continue;
        };
        totals.fragments.fetch_add(1, Ordering::Relaxed);
        totals
            .video_samples
            .fetch_add(u64::from(info.video_samples), Ordering::Relaxed);
        if first.is_none() {
            first = Some(t0.elapsed());
            totals.started.fetch_add(1, Ordering::Relaxed);
            if video_track.is_some() && info.first_video_sync != Some(true) {
                totals.bad_starts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let _ = ws.close(None).await;
    first
}

/// Opens a live viewer and returns when its first fragment arrived (time to first fragment).
pub async fn live_ttff(url: &str) -> Option<Duration> {
    let t0 = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if b.get(4..8) == Some(b"moof") => {
                let took = t0.elapsed();
                let _ = ws.close(None).await;
                return Some(took);
            }
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
}

/// What one archive session did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ArchiveResult {
    pub first_fragment: Option<Duration>,
    pub fragments: u64,
    pub bytes: u64,
    pub reached_eos: bool,
    pub total: Duration,
}

/// One archive playback session (`/ws/archive`): reads to the first `pause`, waits for `resume`
/// (so a scenario can measure many sessions held open at once), answers `more`, reads to `eos`.
pub async fn archive_session(
    url: String,
    paused: Arc<tokio::sync::Semaphore>,
    resume: CancellationToken,
) -> ArchiveResult {
    let t0 = Instant::now();
    let mut r = ArchiveResult::default();
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
        paused.add_permits(1);
        return r;
    };
    let mut told_paused = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            _ => break,
        };
        match msg {
            Message::Binary(b) => {
                r.bytes += b.len() as u64;
                if b.get(4..8) == Some(b"moof") {
                    r.fragments += 1;
                    r.first_fragment.get_or_insert(t0.elapsed());
                }
            }
            Message::Text(t) if t.as_str() == "pause" => {
                if !told_paused {
                    told_paused = true;
                    paused.add_permits(1);
                    resume.cancelled().await;
                }
                if ws.send(Message::Text("more".into())).await.is_err() {
                    break;
                }
            }
            Message::Text(t) if t.as_str() == "eos" => {
                r.reached_eos = true;
                break;
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    if !told_paused {
        paused.add_permits(1);
    }
    r.total = t0.elapsed();
    let _ = ws.close(None).await;
    r
}
