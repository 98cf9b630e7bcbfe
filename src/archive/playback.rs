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
//! (one bounded query per page); a corrupt segment is skipped with a log line.
//!
//! Reads: each segment is leased ([`crate::archive::leases`]: retention and the uploader leave it
//! alone while it plays) and opened once (a file handle on the filesystem), its `moov` read, then
//! its fragments are read one at a time by byte range (`moof` header, then the fragment), from the
//! filesystem or S3 alike. A session holds one fragment read and the fragment written from it,
//! plus the next segment's header (prefetched): memory is bounded by fragment size, whatever the
//! segment length ([`PlaybackStats::peak_session_bytes`]). Seeking into a segment scans its `moof`
//! boxes only. Imported progressive (Go) files are read the same way: their `moov` (wherever it
//! lies, often after the `mdat`) is read and turned into a sample index grouped in fragments of
//! about a second, and each fragment's samples are read by byte range (adjacent samples in one
//! read). The index, not the media, is what such a session holds for the whole segment.
//!
//! Gaps: media time runs on across gaps as in the original. With `meta=1` the server also sends
//! JSON text messages `{"type":"wallclock","media_time":<s>,"wallclock":"<RFC 3339>","gap":<bool>}`
//! at the start and at every gap, mapping media time to wall-clock time.
//!
//! [`ArchiveConfig::playback_chunk`]: crate::config::ArchiveConfig::playback_chunk

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::task::JoinHandle;

use crate::api::AppState;
use crate::archive::export::box_header;
use crate::archive::leases::Lease;
use crate::archive::storage::{Opened, Storage, StorageError};
use crate::db::segments::{self, SegmentRow};
use crate::live::mse::{WRITE_TIMEOUT, switch_messages};
use crate::live::ws::{ArchiveRequest, CLOSE_TOO_BIG, close_code, close_with, too_big_reason};
use crate::media::fmp4::{self, FragmentWriter};
use crate::media::mp4file::IndexedSample;
use crate::media::{Frame, MediaError, StreamParams, TrackKind};

/// Segments fetched per index query.
const PAGE: u32 = 32;

/// A hole between segments longer than this is a gap (reported with `meta=1`).
const GAP_US: i64 = 1_000_000;

/// What playback sessions read, for tests and metrics: memory per session is bounded by
/// fragments, never by segment length.
#[derive(Debug, Default)]
pub struct PlaybackStats {
    /// Bytes read from segment files and objects by all sessions.
    pub bytes_read: AtomicU64,
    /// Largest single read (bytes): one fragment, or an imported progressive file's `moov`.
    pub largest_read_bytes: AtomicU64,
    /// Most media bytes one session held at once (the fragment read plus the fragment written).
    pub peak_session_bytes: AtomicU64,
    /// Segments skipped because they could not be leased (gone, or being deleted).
    pub skipped_unleased: AtomicU64,
}

impl PlaybackStats {
    fn read(&self, n: usize) {
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        self.largest_read_bytes
            .fetch_max(n as u64, Ordering::Relaxed);
    }
}

/// First read of a segment and of each fragment: enough for `ftyp` + `moov`, or for a `moof` of
/// about a second of video and audio with the `mdat` header after it.
const HEAD_READ: u64 = 4096;

/// Largest `moov` of an imported progressive file read for playback (its sample tables: ~30 MB
/// for 24 h of video with audio). Larger is refused as hostile.
const MAX_MOOV_BYTES: u64 = 256 * 1024 * 1024;

/// Samples of a progressive file whose byte ranges are at most this far apart are fetched in one
/// read (the audio and video samples of a second are usually interleaved back to back).
const SAMPLE_READ_GAP: u64 = 64 * 1024;

/// A segment opened for playback: leased, its file held open and its codec setup read.
struct Loaded {
    row: SegmentRow,
    params: Arc<StreamParams>,
    body: Body,
    /// Keeps retention and the uploader away while the segment is played.
    _lease: Lease,
}

enum Body {
    /// One of our fragmented segments: fragments are read one at a time, by byte range, from
    /// `first` (the offset after the `moov`) up to `limit` (the row's size).
    Fragments {
        file: Arc<dyn Opened>,
        first: u64,
        limit: u64,
    },
    /// An imported progressive MP4 (Go archive, `moov` often at the end): its sample index, in
    /// fragments of about a second of the main track; samples are read by byte range, a fragment
    /// at a time.
    Progressive {
        file: Arc<dyn Opened>,
        fragments: Vec<Vec<IndexedSample>>,
    },
}

/// Reads `range` of `file`, counted in the stats.
async fn read_range(
    state: &AppState,
    file: &dyn Opened,
    range: std::ops::Range<u64>,
) -> Result<Bytes, StorageError> {
    let data = file.read_at(range).await?;
    state.archive.playback.read(data.len());
    Ok(data)
}

/// The top-level box at `pos` (its first bytes, type and size); `None` at the end or at a torn
/// tail past `limit`.
async fn box_at(
    state: &AppState,
    file: &dyn Opened,
    pos: u64,
    limit: u64,
) -> Result<Option<(Bytes, [u8; 4], u64)>, StorageError> {
    if pos + 8 > limit {
        return Ok(None);
    }
    let head = read_range(state, file, pos..(pos + HEAD_READ).min(limit)).await?;
    match box_header(&head) {
        Some((t, hl, size)) if size >= hl && pos + size <= limit => Ok(Some((head, t, size))),
        _ => Ok(None),
    }
}

/// The fragment starting at or after `pos` (other boxes are skipped): its offset, its first bytes
/// as read (at least the `moof` box and the `mdat` header), the `moof` size and the fragment's
/// end. `None` at the end of the complete fragments.
async fn fragment_head(
    state: &AppState,
    file: &dyn Opened,
    mut pos: u64,
    limit: u64,
) -> Result<Option<(u64, Bytes, u64, u64)>, StorageError> {
    loop {
        let Some((head, t, size)) = box_at(state, file, pos, limit).await? else {
            return Ok(None);
        };
        if &t != b"moof" {
            pos += size;
            continue;
        }
        let want = (size + 16).min(limit - pos);
        let head = if (head.len() as u64) < want {
            read_range(state, file, pos..pos + want).await?
        } else {
            head
        };
        let Some((mdat, _, mdat_size)) = head.get(size as usize..).and_then(box_header) else {
            return Ok(None);
        };
        let end = pos + size + mdat_size;
        if &mdat != b"mdat" || end > limit {
            return Ok(None);
        }
        return Ok(Some((pos, head, size, end)));
    }
}

async fn load(state: &AppState, row: SegmentRow) -> Option<Loaded> {
    let lease = match state.archive.leases.acquire_one(&state.db, row.id).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            state
                .archive
                .playback
                .skipped_unleased
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                segment = row.id,
                "archive segment deleted meanwhile: skipped"
            );
            return None;
        }
        Err(e) => {
            tracing::warn!(segment = row.id, error = %e, "cannot lease an archive segment: skipped");
            return None;
        }
    };
    let storage = state.archive.storage_for_row(&row)?;
    let (params, body) = match open_segment(state, &storage, &row).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::warn!(segment = row.id, key = %row.storage_key, error = %e,
                "archive segment is corrupt: skipped");
            return None;
        }
        Err(e) => {
            tracing::warn!(segment = row.id, key = %row.storage_key, error = %e,
                "archive segment unreadable: skipped");
            return None;
        }
    };
    Some(Loaded {
        row,
        params: Arc::new(params),
        body,
        _lease: lease,
    })
}

/// Opens a segment and reads its codec setup (storage errors outside, media errors inside).
async fn open_segment(
    state: &AppState,
    storage: &Arc<dyn Storage>,
    row: &SegmentRow,
) -> Result<Result<(StreamParams, Body), MediaError>, StorageError> {
    let file = crate::archive::storage::open(storage, &row.storage_key).await?;
    let limit = match u64::try_from(row.bytes) {
        Ok(n) if n > 0 => n,
        _ => storage.size(&row.storage_key).await?,
    };
    let mut pos = 0;
    let mut params = None;
    while let Some((head, t, size)) = box_at(state, file.as_ref(), pos, limit).await? {
        match &t {
            b"moov" => {
                if size > MAX_MOOV_BYTES {
                    return Ok(Err(MediaError::Unsupported(format!(
                        "a {size}-byte moov is over the {MAX_MOOV_BYTES}-byte limit"
                    ))));
                }
                // The moov box alone (`head` was read from its start).
                let moov = if head.len() as u64 >= size {
                    head.slice(..size as usize)
                } else {
                    read_range(state, file.as_ref(), pos..pos + size).await?
                };
                match fmp4::parse_init(&moov) {
                    Ok(p) => params = Some(p),
                    // Maybe a progressive file's `moov` (this parser wants fragments).
                    Err(e) => return progressive(file, moov, limit, e).await,
                }
            }
            b"moof" => {
                let Some(params) = params else {
                    return Ok(Err(MediaError::InvalidMp4("moof before moov".into())));
                };
                let body = Body::Fragments {
                    file,
                    first: pos,
                    limit,
                };
                return Ok(Ok((params, body)));
            }
            // Media outside a fragment: a progressive file, whose `moov` may come after it.
            b"mdat" if params.is_none() => {}
            _ => {}
        }
        pos += size;
    }
    match params {
        // An init segment and no complete fragment yet: nothing to play.
        Some(p) => {
            let body = Body::Fragments {
                file,
                first: limit,
                limit,
            };
            Ok(Ok((p, body)))
        }
        None => Ok(Err(MediaError::InvalidMp4("no moov box".into()))),
    }
}

/// A progressive MP4's body (see [`Body::Progressive`]) from its `moov` box; `e` is the
/// fragmented parser's error, reported if the file is not progressive either.
async fn progressive(
    file: Arc<dyn Opened>,
    moov: Bytes,
    limit: u64,
    e: MediaError,
) -> Result<Result<(StreamParams, Body), MediaError>, StorageError> {
    let indexed =
        tokio::task::spawn_blocking(move || crate::media::mp4file::index_progressive(&moov, limit))
            .await
            .map_err(|j| StorageError::Io {
                key: "progressive index".into(),
                source: std::io::Error::other(j),
            })?;
    Ok(indexed.map_err(|_| e).map(|(params, samples)| {
        let fragments = fragments_of_a_second(&params, samples);
        (params, Body::Progressive { file, fragments })
    }))
}

/// Groups samples (interleaved by decode time) into fragments of about a second of the main
/// track; samples of the other track before the first main one make a fragment of their own.
fn fragments_of_a_second(
    params: &StreamParams,
    samples: Vec<IndexedSample>,
) -> Vec<Vec<IndexedSample>> {
    let main = if params.video.is_some() {
        TrackKind::Video
    } else {
        TrackKind::Audio
    };
    let mut fragments: Vec<Vec<IndexedSample>> = Vec::new();
    let mut second = None;
    for sample in samples {
        if sample.track == main {
            let s = ticks_to_us(sample.dts, params.timescale(main)).div_euclid(1_000_000);
            if second != Some(s) {
                second = Some(s);
                fragments.push(Vec::new());
            }
        }
        match fragments.last_mut() {
            Some(frag) => frag.push(sample),
            None => fragments.push(vec![sample]),
        }
    }
    fragments
}

/// Reads the payloads of `samples` by byte range, samples at most [`SAMPLE_READ_GAP`] apart in
/// one read; the frames in the samples' order, and the bytes read.
async fn read_samples(
    state: &AppState,
    file: &dyn Opened,
    params: &Arc<StreamParams>,
    samples: &[IndexedSample],
) -> Result<(Vec<Frame>, usize), StorageError> {
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| samples[i].range.start);
    // Runs of nearby samples: (byte range, indices of the samples in it).
    let mut runs: Vec<(std::ops::Range<u64>, Vec<usize>)> = Vec::new();
    for i in order {
        let r = &samples[i].range;
        match runs.last_mut() {
            Some((run, members)) if r.start <= run.end.saturating_add(SAMPLE_READ_GAP) => {
                run.end = run.end.max(r.end);
                members.push(i);
            }
            _ => runs.push((r.clone(), vec![i])),
        }
    }
    let mut data: Vec<Option<Bytes>> = vec![None; samples.len()];
    let mut read = 0;
    for (run, members) in runs {
        let bytes = read_range(state, file, run.clone()).await?;
        read += bytes.len();
        for i in members {
            let r = &samples[i].range;
            let (from, to) = ((r.start - run.start) as usize, (r.end - run.start) as usize);
            data[i] = Some(
                bytes
                    .get(from..to)
                    .map(|_| bytes.slice(from..to))
                    .ok_or_else(|| StorageError::Io {
                        key: "progressive sample".into(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "short read of a sample",
                        ),
                    })?,
            );
        }
    }
    let frames = samples
        .iter()
        .zip(data)
        .map(|(s, d)| s.frame(d.unwrap_or_default(), params))
        .collect();
    Ok((frames, read))
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

/// Where a segment is read next: a byte offset (fragmented) or a fragment index (progressive).
#[derive(Debug, Clone, Copy)]
enum Cursor {
    At(u64),
    Index(usize),
}

impl Loaded {
    fn main_track(&self) -> TrackKind {
        if self.params.video.is_some() {
            TrackKind::Video
        } else {
            TrackKind::Audio
        }
    }

    fn start(&self) -> Cursor {
        match &self.body {
            Body::Fragments { first, .. } => Cursor::At(*first),
            Body::Progressive { .. } => Cursor::Index(0),
        }
    }

    /// Where to start for a session beginning at `from_us`: the fragment holding the last
    /// main-track keyframe at or before it, and that keyframe's media time (µs; 0 when there is
    /// none before it: the segment plays from its start). Fragmented segments are scanned by
    /// their `moof` boxes only. `None` if the segment cannot be read.
    async fn seek(&self, state: &AppState, from_us: i64) -> Option<(Cursor, i64)> {
        let main = self.main_track();
        let ts = self.params.timescale(main);
        let target = from_us.max(self.row.start_us);
        let at_or_before = |dts: i64| self.row.start_us + ticks_to_us(dts, ts) <= target;
        match &self.body {
            Body::Progressive { fragments, .. } => {
                let mut best = None;
                for (i, frag) in fragments.iter().enumerate() {
                    for f in frag {
                        if f.track == main && f.keyframe && at_or_before(f.dts) {
                            best = Some((Cursor::Index(i), ticks_to_us(f.dts, ts)));
                        }
                    }
                }
                Some(best.unwrap_or((Cursor::Index(0), 0)))
            }
            Body::Fragments { file, first, limit } => {
                let mut pos = *first;
                let mut best = None;
                loop {
                    let head = fragment_head(state, file.as_ref(), pos, *limit).await;
                    let (at, head, moof_len, end) = match head {
                        Ok(Some(h)) => h,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(segment = self.row.id, error = %e,
                                "archive segment unreadable: skipped");
                            return None;
                        }
                    };
                    let moof = head.slice(..moof_len as usize);
                    let samples = match fmp4::parse_moof(&self.params, &moof, end - at) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(segment = self.row.id, error = %e,
                                "archive segment is corrupt: skipped");
                            return None;
                        }
                    };
                    let mut past = false;
                    for s in samples.iter().filter(|s| s.track == main) {
                        if !at_or_before(s.dts) {
                            past = true;
                        } else if s.keyframe {
                            best = Some((Cursor::At(at), ticks_to_us(s.dts, ts)));
                        }
                    }
                    if past {
                        break;
                    }
                    pos = end;
                }
                Some(best.unwrap_or((Cursor::At(*first), 0)))
            }
        }
    }

    /// The frames of the fragment at `cursor` (moving it on) and the bytes read for them; `None`
    /// at the end of the segment, or when the rest cannot be read (logged).
    async fn next_fragment(
        &self,
        state: &AppState,
        cursor: &mut Cursor,
    ) -> Option<(Vec<Frame>, usize)> {
        match (&self.body, *cursor) {
            (Body::Progressive { file, fragments }, Cursor::Index(i)) => {
                *cursor = Cursor::Index(i + 1);
                let samples = fragments.get(i)?;
                match read_samples(state, file.as_ref(), &self.params, samples).await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::warn!(segment = self.row.id, error = %e,
                            "archive segment unreadable: rest skipped");
                        None
                    }
                }
            }
            (Body::Fragments { file, limit, .. }, Cursor::At(pos)) => {
                let read = async {
                    let Some((at, head, _, end)) =
                        fragment_head(state, file.as_ref(), pos, *limit).await?
                    else {
                        return Ok::<_, StorageError>(None);
                    };
                    // The rest of the fragment after the bytes already read with its header.
                    let have = at + head.len() as u64;
                    if have >= end {
                        return Ok(Some((head.slice(..(end - at) as usize), end)));
                    }
                    let rest = read_range(state, file.as_ref(), have..end).await?;
                    let mut whole = bytes::BytesMut::with_capacity((end - at) as usize);
                    whole.extend_from_slice(&head);
                    whole.extend_from_slice(&rest);
                    Ok(Some((whole.freeze(), end)))
                };
                let (bytes, end) = match read.await {
                    Ok(Some(v)) => v,
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::warn!(segment = self.row.id, error = %e,
                            "archive segment unreadable: rest skipped");
                        return None;
                    }
                };
                *cursor = Cursor::At(end);
                match fmp4::parse_fragment_bytes(&self.params, &bytes) {
                    Ok(frames) => Some((frames, bytes.len())),
                    Err(e) => {
                        tracing::warn!(segment = self.row.id, at = pos, error = %e,
                            "archive segment is corrupt: rest skipped");
                        None
                    }
                }
            }
            _ => None,
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
    let state = feed.state.clone();
    let mut writer = FragmentWriter::new();
    let mut current: Option<Arc<StreamParams>> = None;
    // Media time (µs) where the next segment's first frame goes, and the end of what was sent.
    let mut media_end_us: i64 = 0;
    let mut chunk_start_us: i64 = 0;
    let mut prev_wall_end: Option<i64> = None;
    let mut started = false;
    let mut peak: u64 = 0;
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
        let wall = |f: &Frame| seg.row.start_us + ticks_to_us(f.dts, p.timescale(f.track));
        // The first segment starts at the keyframe at or before `from`.
        let mut skip_before_us = i64::MIN;
        let mut cursor = seg.start();
        if !started {
            let Some((at, kf_us)) = seg.seek(&state, from_us).await else {
                continue;
            };
            cursor = at;
            skip_before_us = kf_us;
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
        while let Some((frag, read)) = seg.next_fragment(&state, &mut cursor).await {
            let mut out: Vec<Frame> = Vec::with_capacity(frag.len());
            for f in &frag {
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
            // What this session holds now: the fragment read and the one written from it.
            let held = (read + data.len()) as u64;
            if held > peak {
                peak = held;
                state
                    .archive
                    .playback
                    .peak_session_bytes
                    .fetch_max(held, Ordering::Relaxed);
            }
            drop((frag, out));
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
