//! Archive playback over WebSocket, in the Go original's message order (go-original.md §3.2):
//! binary `0x09`+codecs, binary init segment, binary `moof`+`mdat` fragments as fast as the socket
//! takes them; text `pause` after [`ArchiveConfig::playback_chunk`] of media, resumed by the
//! client's text `more` (an early `more` is remembered); text `ping` → `pong`; text `eos` at the
//! end.
//!
//! Fixed faults of the original: every frame up to the end of the range is sent; one task owns the
//! socket (no concurrent writes); playback starts at the keyframe at or before `start`, not at the
//! start of the segment; a change of codec parameters between segments sends a new init segment
//! (and a new `0x09` only when the codec list changes, see [`switch_messages`]); a paused
//! session idles out; sessions are limited per client and in total (`live::ws::archive`). Segments are found with keyset pages through the index
//! (one bounded query per page), read through the segment's storage with the next one prefetched;
//! a corrupt segment is skipped with a log line.
//!
//! Gaps: media time runs on across gaps as in the original. With `meta=1` the server also sends
//! JSON text messages `{"type":"wallclock","media_time":<s>,"wallclock":"<RFC 3339>","gap":<bool>}`
//! at the start and at every gap, mapping media time to wall-clock time.
//!
//! [`ArchiveConfig::playback_chunk`]: crate::config::ArchiveConfig::playback_chunk

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::task::JoinHandle;

use crate::api::AppState;
use crate::db::segments::{self, SegmentRow};
use crate::live::mse::{WRITE_TIMEOUT, switch_messages};
use crate::live::ws::{ArchiveRequest, CLOSE_TOO_BIG, close_code, close_with, too_big_reason};
use crate::media::fmp4::{self, FragmentWriter};
use crate::media::{Frame, StreamParams, TrackKind};

/// Segments fetched per index query.
const PAGE: u32 = 32;

/// A hole between segments longer than this is a gap (reported with `meta=1`).
const GAP_US: i64 = 1_000_000;

/// A segment read and split into frames, ready to send.
struct Loaded {
    row: SegmentRow,
    params: Arc<StreamParams>,
    /// Frames in file order (grouped per fragment), media time from 0 at the segment start.
    fragments: Vec<Vec<Frame>>,
}

async fn load(state: &AppState, row: SegmentRow) -> Option<Loaded> {
    let storage = state.archive.storage_for_row(&row)?;
    let data = match storage.read(&row.storage_key, None).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(segment = row.id, error = %e, "archive segment unreadable: skipped");
            return None;
        }
    };
    let parsed = tokio::task::spawn_blocking(move || parse_segment(&data)).await;
    match parsed {
        Ok(Ok((params, fragments))) => Some(Loaded {
            row,
            params: Arc::new(params),
            fragments,
        }),
        Ok(Err(e)) => {
            tracing::warn!(segment = row.id, key = %row.storage_key, error = %e,
                "archive segment is corrupt: skipped");
            None
        }
        Err(_) => None,
    }
}

fn parse_segment(
    data: &Bytes,
) -> Result<(StreamParams, Vec<Vec<Frame>>), crate::media::MediaError> {
    let layout = match fmp4::split_fragments(data) {
        Ok(layout) => layout,
        // Not one of our fragmented segments: maybe a progressive MP4 from a Go archive indexed by
        // `import-archive` (moov at the end). Otherwise the fragmented parser's error says more.
        Err(e) => return parse_progressive(data).map_err(|_| e),
    };
    let params = fmp4::parse_init(&data[layout.init.clone()])?;
    let params_arc = Arc::new(params.clone());
    let mut fragments = Vec::with_capacity(layout.fragments.len());
    for r in layout.fragments {
        let bytes = data.slice(r);
        fragments.push(fmp4::parse_fragment_bytes(&params_arc, &bytes)?);
    }
    Ok((params, fragments))
}

/// The frames of a progressive MP4, in fragments of about a second of the main track.
fn parse_progressive(
    data: &Bytes,
) -> Result<(StreamParams, Vec<Vec<Frame>>), crate::media::MediaError> {
    let file = crate::media::mp4file::Mp4File::from_bytes(data.clone())?;
    let params = file.params().clone();
    let main = if params.video.is_some() {
        TrackKind::Video
    } else {
        TrackKind::Audio
    };
    let mut fragments: Vec<Vec<Frame>> = Vec::new();
    let mut second = None;
    for f in file.frames() {
        if f.track == main {
            let s = ticks_to_us(f.dts, params.timescale(main)).div_euclid(1_000_000);
            if second != Some(s) {
                second = Some(s);
                fragments.push(Vec::new());
            }
        }
        match fragments.last_mut() {
            Some(frag) => frag.push(f),
            // Frames of the other track before the first main one: a fragment of their own.
            None => fragments.push(vec![f]),
        }
    }
    Ok((params, fragments))
}

/// Pages through the index and keeps the next segment loading while one is sent.
struct SegmentFeed {
    state: AppState,
    req_from_us: i64,
    req_to_us: i64,
    stream_id: uuid::Uuid,
    cursor: Option<(i64, i64)>,
    queue: VecDeque<SegmentRow>,
    exhausted: bool,
    prefetch: Option<JoinHandle<Option<Loaded>>>,
}

impl SegmentFeed {
    async fn next_row(&mut self) -> Result<Option<SegmentRow>, crate::db::DbError> {
        if self.queue.is_empty() && !self.exhausted {
            let page = segments::page(
                &self.state.db,
                self.stream_id,
                self.req_from_us,
                self.req_to_us,
                self.cursor,
                PAGE,
            )
            .await?;
            if (page.len() as u32) < PAGE {
                self.exhausted = true;
            }
            if let Some(last) = page.last() {
                self.cursor = Some((last.start_us, last.id));
            }
            self.queue.extend(page);
        }
        Ok(self.queue.pop_front())
    }

    fn start_prefetch(&mut self, row: SegmentRow) {
        let state = self.state.clone();
        self.prefetch = Some(tokio::spawn(async move { load(&state, row).await }));
    }

    /// The next readable segment (skipping unreadable ones), with the one after it prefetching.
    async fn next(&mut self) -> Result<Option<Loaded>, crate::db::DbError> {
        loop {
            let current = match self.prefetch.take() {
                Some(h) => h.await.ok().flatten(),
                None => match self.next_row().await? {
                    Some(row) => load(&self.state, row).await,
                    None => return Ok(None),
                },
            };
            if let Some(row) = self.next_row().await? {
                self.start_prefetch(row);
            }
            match current {
                Some(l) => return Ok(Some(l)),
                None if self.prefetch.is_none() => return Ok(None),
                None => continue,
            }
        }
    }
}

impl Drop for SegmentFeed {
    fn drop(&mut self) {
        if let Some(h) = self.prefetch.take() {
            h.abort();
        }
    }
}

fn ticks_to_us(ticks: i64, ts: u32) -> i64 {
    (i128::from(ticks) * 1_000_000 / i128::from(ts.max(1))) as i64
}

fn us_to_ticks(us: i64, ts: u32) -> i64 {
    (i128::from(us) * i128::from(ts) / 1_000_000) as i64
}

fn wallclock_message(media_us: i64, wall_us: i64, gap: bool) -> String {
    let wall = DateTime::<Utc>::from_timestamp_micros(wall_us)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default();
    serde_json::json!({
        "type": "wallclock",
        "media_time": media_us as f64 / 1e6,
        "wallclock": wall,
        "wallclock_us": wall_us,
        "gap": gap,
    })
    .to_string()
}

/// Why a session ended early.
enum Stop {
    /// The client left (or a write failed): nothing more to send.
    Gone,
    /// Close with this 1011 reason.
    Reason(&'static str),
    /// The client sent a message over the size limit: close with 1009.
    TooBig,
}

/// One playback session: owns the socket.
struct Session {
    socket: WebSocket,
    /// A `more` arrived while not paused (remembered, one slot).
    more_pending: bool,
    idle: Duration,
}

impl Session {
    async fn send(&mut self, m: Message) -> Result<(), Stop> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.socket.send(m)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Stop::Gone),
        }
    }

    /// Handles one client message (ping/more); `Err` when the client is gone.
    async fn on_client(&mut self, msg: Option<Result<Message, axum::Error>>) -> Result<(), Stop> {
        match msg {
            Some(Ok(Message::Text(t))) => match t.as_str() {
                "ping" => self.send(Message::Text("pong".into())).await,
                "more" => {
                    self.more_pending = true;
                    Ok(())
                }
                _ => Ok(()),
            },
            Some(Err(e)) if crate::live::ws::is_too_big(&e) => Err(Stop::TooBig),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Err(Stop::Gone),
            Some(Ok(_)) => Ok(()),
        }
    }

    /// Sends a binary message while still answering pings.
    async fn send_media(&mut self, data: Bytes) -> Result<(), Stop> {
        // Drain anything the client sent so `more`/`ping` are never starved by a fast sender.
        while let Some(Some(msg)) = futures::FutureExt::now_or_never(self.socket.recv()) {
            self.on_client(Some(msg)).await?;
        }
        self.send(Message::Binary(data)).await
    }

    /// Sends `pause` and waits for `more` (or a remembered early one).
    async fn pause(&mut self) -> Result<(), Stop> {
        self.send(Message::Text("pause".into())).await?;
        let deadline = tokio::time::Instant::now() + self.idle;
        while !self.more_pending {
            tokio::select! {
                msg = self.socket.recv() => self.on_client(msg).await?,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Stop::Reason("Paused for too long"));
                }
            }
        }
        self.more_pending = false;
        Ok(())
    }
}

/// Runs one archive playback session after validation.
pub async fn serve(socket: WebSocket, state: AppState, req: ArchiveRequest, meta: bool) {
    let mut session = Session {
        socket,
        more_pending: false,
        idle: state.config.archive.playback_idle(),
    };
    let from_us = req.start_s * 1_000_000;
    let to_us = match req.duration_s {
        Some(d) => from_us.saturating_add(d * 1_000_000),
        None => crate::db::now_us() + 365 * 24 * 3600 * 1_000_000,
    };
    let mut feed = SegmentFeed {
        state: state.clone(),
        req_from_us: from_us,
        req_to_us: to_us,
        stream_id: req.stream_id,
        cursor: None,
        queue: VecDeque::new(),
        exhausted: false,
        prefetch: None,
    };
    match feed.next_row().await {
        Ok(Some(row)) => feed.queue.push_front(row),
        Ok(None) => {
            close_with(&mut session.socket, "No segments found for this time range").await;
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "archive segment query failed");
            close_with(&mut session.socket, "Failed to list archive segments").await;
            return;
        }
    }
    let chunk_us = state.config.archive.playback_chunk().as_micros() as i64;
    let result = stream_segments(&mut session, &mut feed, from_us, to_us, chunk_us, meta).await;
    match result {
        Ok(true) => {
            if session.send(Message::Text("eos".into())).await.is_ok() {
                crate::live::ws::close(&mut session.socket, None).await;
            }
        }
        Ok(false) => {
            close_with(&mut session.socket, "No valid archive segments found").await;
        }
        Err(Stop::Gone) => {}
        Err(Stop::Reason(r)) => close_with(&mut session.socket, r).await,
        Err(Stop::TooBig) => {
            let limit = state.limits.ws_max_message_bytes;
            tracing::info!(
                limit,
                "archive session closed: client message over the size limit"
            );
            close_code(&mut session.socket, CLOSE_TOO_BIG, &too_big_reason(limit)).await;
        }
    }
}

/// Sends every frame of the range. `Ok(false)` if no segment was readable.
async fn stream_segments(
    session: &mut Session,
    feed: &mut SegmentFeed,
    from_us: i64,
    to_us: i64,
    chunk_us: i64,
    meta: bool,
) -> Result<bool, Stop> {
    let mut writer = FragmentWriter::new();
    let mut current: Option<Arc<StreamParams>> = None;
    // Media time (µs) where the next segment's first frame goes, and the end of what was sent.
    let mut media_end_us: i64 = 0;
    let mut chunk_start_us: i64 = 0;
    let mut prev_wall_end: Option<i64> = None;
    let mut started = false;
    loop {
        let seg = match feed.next().await {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(e) => {
                tracing::error!(error = %e, "archive segment query failed");
                return Err(Stop::Reason("Failed to list archive segments"));
            }
        };
        let p = seg.params.clone();
        let main = if p.video.is_some() {
            TrackKind::Video
        } else {
            TrackKind::Audio
        };
        let wall = |f: &Frame| seg.row.start_us + ticks_to_us(f.dts, p.timescale(f.track));
        // The first segment starts at the keyframe at or before `from`.
        let mut skip_before_us = i64::MIN;
        if !started {
            let mut kf_us = None;
            for f in seg.fragments.iter().flatten() {
                if f.track == main && f.keyframe && wall(f) <= from_us.max(seg.row.start_us) {
                    kf_us = Some(ticks_to_us(f.dts, p.timescale(f.track)));
                }
            }
            skip_before_us = kf_us.unwrap_or(0);
        }
        let new_codecs = current.as_ref().is_none_or(|c| !c.same_codecs(&p));
        if new_codecs {
            let messages = switch_messages(current.as_deref(), &p)
                .map_err(|_| Stop::Reason("Failed to send init"))?;
            for m in messages {
                session.send_media(m).await?;
            }
            current = Some(p.clone());
        }
        // Where this segment's media time 0 lands on the session's timeline.
        let base_us = media_end_us - skip_before_us.max(0);
        if meta {
            let first_wall = seg.row.start_us + skip_before_us.max(0);
            let gap = prev_wall_end.is_some_and(|end| first_wall - end > GAP_US);
            if !started || gap {
                let m = wallclock_message(media_end_us, first_wall, gap);
                session.send(Message::Text(m.into())).await?;
            }
        }
        let mut seg_end_us = media_end_us;
        for frag in &seg.fragments {
            let mut out: Vec<Frame> = Vec::with_capacity(frag.len());
            for f in frag {
                let ts = p.timescale(f.track);
                let t_us = ticks_to_us(f.dts, ts);
                if t_us < skip_before_us || wall(f) >= to_us {
                    continue;
                }
                let mut f = f.clone();
                f.dts = us_to_ticks(base_us + t_us, ts);
                seg_end_us =
                    seg_end_us.max(base_us + t_us + ticks_to_us(i64::from(f.duration), ts));
                out.push(f);
            }
            if out.is_empty() {
                continue;
            }
            started = true;
            let data = writer
                .write(&p, &out)
                .map_err(|_| Stop::Reason("Can't write packet to the muxer"))?;
            session.send_media(data).await?;
            if seg_end_us - chunk_start_us >= chunk_us {
                session.pause().await?;
                chunk_start_us = seg_end_us;
            }
        }
        media_end_us = seg_end_us;
        prev_wall_end = Some(seg.row.end_us);
        if seg.row.end_us >= to_us {
            break;
        }
    }
    Ok(started)
}
