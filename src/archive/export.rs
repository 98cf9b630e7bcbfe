//! Exports: one standard MP4 (`moov` before `mdat`) covering a wall-clock range of a stream's
//! archive, planned from the segments' fragment headers and streamed by copying byte ranges.
//!
//! * **Plan.** The segments overlapping `[start, end)` are read in order through [`Storage`]:
//!   only their init segment and `moof` boxes (ranged reads), never the sample data. Their samples
//!   are appended to the sample tables of [`progressive`](crate::media::progressive), and each
//!   sample's bytes are remembered as a byte range of its segment file (one range per fragment).
//! * **Frame-accurate cut.** The export begins at the last keyframe presented at or before `start`;
//!   the edit list hides the frames before `start`, so playback starts exactly there. It ends with
//!   the last frame that starts before `end`, and the edit list ends the presentation at `end`.
//! * **Gaps** between segments are collapsed: timestamps stay continuous and the file is shorter
//!   than the wall-clock range (the recording before and after the gap plays back to back). At
//!   each boundary every track is re-anchored on the main track's timeline, so audio never drifts.
//! * **Codec changes**: a segment with another codec setup (a new init segment) ends the export
//!   there; [`ExportPlan::end_us`] tells where the presentation stopped.
//! * **Stream.** `ftyp` + `moov` + `mdat` header come from memory, the payload is copied from the
//!   segments in reads of at most [`COPY_CHUNK`] bytes; any byte range of the output maps onto
//!   segment byte ranges (HTTP Range). Memory is O(samples) for the tables (about 4 bytes per
//!   sample, plus 32 bytes per fragment), never O(bytes).
//!
//! Segments we recorded (fragmented MP4) and progressive files imported from a Go archive (`moov`
//! at either end, 32- or 64-bit `mdat`) are both read this way: for the latter only the `moov`
//! is read, and its sample tables locate the samples (one range per chunk of samples).
//!
//! Planning (reading the segments' headers, the timeline arithmetic) is in [`mod@plan`]; this module
//! holds what a request serves from: the plan, its cache and the byte copying.

mod plan;

pub(crate) use plan::box_header;
pub use plan::plan;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use uuid::Uuid;

use super::storage::{Opened, Storage, StorageError};
use crate::db::segments::{self, SegmentRow};
use crate::db::{Db, DbError};
use crate::media::MediaError;

/// Longest range one export may cover. Bounds the sample tables (24 h of 25 fps video with AAC
/// is ~6 M samples, ~30 MB of `moov`) and the planning work of one request.
pub const MAX_RANGE_US: i64 = 24 * 3600 * 1_000_000;

/// Largest read from a segment while streaming the payload: the memory one response holds.
pub const COPY_CHUNK: u64 = 256 * 1024;

/// Bumped when the output format changes, so clients' cached copies are not reused (`ETag`).
const FORMAT_VERSION: &str = "export-v1";

/// Why an export could not be planned or streamed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("segment {segment}: {source}")]
    Storage {
        segment: i64,
        #[source]
        source: StorageError,
    },
    #[error("segment {segment}: {source}")]
    Media {
        segment: i64,
        #[source]
        source: MediaError,
    },
    #[error("segment {segment}: no storage backend for '{storage}'")]
    NoStorage { segment: i64, storage: String },
    #[error("segment {segment} cannot be exported: {reason}")]
    Unsupported { segment: i64, reason: String },
    #[error("nothing recorded in the range")]
    Empty,
    #[error("cannot write the export: {0}")]
    Mux(MediaError),
}

/// Finds the storage backend holding a segment row's bytes (`Archive::storage_for_row` in the
/// server; tests pass their own).
pub type StorageFor = dyn Fn(&SegmentRow) -> Option<Arc<dyn Storage>> + Send + Sync;

/// The playable segments of `stream_id` overlapping `[start_us, end_us)`, in order, up to the
/// first change of codec setup (a different init segment), where the export stops.
pub async fn segments_in_range(
    db: &Db,
    stream_id: Uuid,
    start_us: i64,
    end_us: i64,
) -> Result<Vec<SegmentRow>, DbError> {
    let mut rows: Vec<SegmentRow> = Vec::new();
    let mut after = None;
    'pages: loop {
        let page = segments::page(db, stream_id, start_us, end_us, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.start_us, last.id));
        for row in page {
            if let (Some(first), Some(init)) = (
                rows.first().and_then(|r| r.init_segment_id),
                row.init_segment_id,
            ) && first != init
            {
                break 'pages;
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Entity tag of the export of `rows` for `[start_us, end_us)`: the same range over the same
/// segment files gives the same tag; a segment that grew, was replaced or removed changes it.
pub fn etag(stream_id: Uuid, start_us: i64, end_us: i64, rows: &[SegmentRow]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(FORMAT_VERSION.as_bytes());
    h.update(stream_id.as_bytes());
    h.update(start_us.to_be_bytes());
    h.update(end_us.to_be_bytes());
    for r in rows {
        h.update(r.id.to_be_bytes());
        h.update(r.bytes.to_be_bytes());
        h.update(r.init_segment_id.unwrap_or(-1).to_be_bytes());
    }
    let hex: String = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\"{hex}\"")
}

/// Plans kept by [`PlanCache`] at most, and the memory they may hold together.
const PLAN_CACHE_ENTRIES: usize = 16;
const PLAN_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Recently built plans, most recent first. A player fetching an export issues many `Range`
/// requests for the same file (moov first, then the payload, then seeks); each would otherwise
/// re-read every segment's fragment headers.
#[derive(Default)]
pub struct PlanCache {
    entries: std::sync::Mutex<std::collections::VecDeque<(String, Arc<ExportPlan>)>>,
}

impl PlanCache {
    /// The plan cached under `key` (see [`plan_key`]), if any.
    pub fn get(&self, key: &str) -> Option<Arc<ExportPlan>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = entries.iter().position(|(k, _)| k == key)?;
        let entry = entries.remove(i)?;
        let plan = entry.1.clone();
        entries.push_front(entry);
        Some(plan)
    }

    /// Keeps `plan` under `key`, dropping the least recently used plans over the budget.
    pub fn insert(&self, key: String, plan: Arc<ExportPlan>) {
        if plan.memory() > PLAN_CACHE_BYTES / 2 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(k, _)| *k != key);
        entries.push_front((key, plan));
        let mut total = 0;
        let keep = entries
            .iter()
            .take(PLAN_CACHE_ENTRIES)
            .take_while(|(_, p)| {
                total += p.memory();
                total <= PLAN_CACHE_BYTES
            })
            .count();
        entries.truncate(keep);
    }
}

/// Cache key of the plan for `rows`: the [`etag`] (what the file contains) plus where every
/// segment's bytes are read from, which changes when a segment moves to S3 after upload.
pub fn plan_key(etag: &str, rows: &[SegmentRow]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for r in rows {
        h.update(r.storage.as_bytes());
        h.update([0]);
        h.update(r.bucket.as_deref().unwrap_or("").as_bytes());
        h.update([0]);
        h.update(r.storage_key.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{etag}/{hex}")
}

/// One contiguous byte range of a segment copied into the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    /// Offset in the `mdat` payload.
    out: u64,
    /// Index into [`ExportPlan::sources`].
    source: u32,
    /// Offset in the segment file.
    src: u64,
    len: u64,
}

/// A segment the payload is copied from.
struct Source {
    segment: i64,
    storage: Arc<dyn Storage>,
    key: String,
}

/// A planned export: the file's header bytes and where every payload byte comes from.
pub struct ExportPlan {
    /// `ftyp` + `moov` + `mdat` header.
    head: Bytes,
    pieces: Vec<Piece>,
    sources: Vec<Source>,
    payload_len: u64,
    /// Wall clock presented first (µs): `start`, or later when the recording begins after it.
    pub start_us: i64,
    /// Wall clock where the presentation ends (µs): `end`, or earlier when the recording (or
    /// the codec setup) ends first. Gaps collapsed in between are not subtracted.
    pub end_us: i64,
    /// Length of the presentation (µs).
    pub duration_us: i64,
    /// Segments the payload is read from.
    pub segments: usize,
}

impl std::fmt::Debug for ExportPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportPlan")
            .field("len", &self.len())
            .field("head", &self.head.len())
            .field("pieces", &self.pieces.len())
            .field("start_us", &self.start_us)
            .field("end_us", &self.end_us)
            .field("duration_us", &self.duration_us)
            .finish()
    }
}

impl ExportPlan {
    /// Size of the whole output file.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.payload_len
    }

    /// Whether the output is empty (never, for a plan that was built).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory the plan holds (about): header, payload map and segment keys.
    fn memory(&self) -> usize {
        self.head.len()
            + self.pieces.len() * std::mem::size_of::<Piece>()
            + self
                .sources
                .iter()
                .map(|s| std::mem::size_of::<Source>() + s.key.len())
                .sum::<usize>()
    }

    /// Size of `ftyp` + `moov` + `mdat` header (where the payload starts).
    pub fn head_len(&self) -> u64 {
        self.head.len() as u64
    }

    /// Bytes `range` of the output (clamped to the file), in chunks of at most [`COPY_CHUNK`].
    /// Each segment is opened once for the response and its handle kept while its pieces are
    /// copied ([`super::storage::open`]: a file removed meanwhile stays readable).
    pub fn stream(
        self: Arc<Self>,
        range: Range<u64>,
    ) -> impl Stream<Item = Result<Bytes, ExportError>> + Send + 'static {
        let end = range.end.min(self.len());
        let open = OpenSource::default();
        futures::stream::try_unfold(
            (self, range.start, open),
            move |(plan, pos, mut open)| async move {
                if pos >= end {
                    return Ok(None);
                }
                let chunk = plan.read_at(pos, end, &mut open).await?;
                let next = pos + chunk.len() as u64;
                Ok(Some((chunk, (plan, next, open))))
            },
        )
    }

    /// Some bytes of the output starting at `pos` (before `end`): from the header, or one read of
    /// a segment covering the piece holding `pos` and as many following pieces of the same
    /// segment as fit in [`COPY_CHUNK`]. The holes between those pieces (the `moof` and `mdat`
    /// headers between fragments, frames cut before the start) are read and dropped: one large
    /// read costs far less than a round trip per piece, on S3 especially.
    async fn read_at(
        &self,
        pos: u64,
        end: u64,
        open: &mut OpenSource,
    ) -> Result<Bytes, ExportError> {
        let head_len = self.head_len();
        if pos < head_len {
            return Ok(self.head.slice(pos as usize..end.min(head_len) as usize));
        }
        let at = pos - head_len;
        let i = self.pieces.partition_point(|p| p.out + p.len <= at);
        let first = self
            .pieces
            .get(i)
            .ok_or_else(|| ExportError::Mux(MediaError::Mux(format!("no data at {pos}"))))?;
        let spans = read_spans(
            &self.pieces[i..],
            at - first.out,
            (end - pos).min(COPY_CHUNK),
        );
        let (Some(&(from, _)), Some(&(last_src, last_len))) = (spans.first(), spans.last()) else {
            return Err(ExportError::Mux(MediaError::Mux(format!(
                "no data at {pos}"
            ))));
        };
        let to = last_src + last_len;
        let source = &self.sources[first.source as usize];
        let storage_err = |e| ExportError::Storage {
            segment: source.segment,
            source: e,
        };
        let handle = match &open.current {
            Some((index, h)) if *index == first.source => h.clone(),
            _ => {
                let h = super::storage::open(&source.storage, &source.key)
                    .await
                    .map_err(storage_err)?;
                open.current = Some((first.source, h.clone()));
                h
            }
        };
        let bytes = handle.read_at(from..to).await.map_err(storage_err)?;
        if bytes.len() as u64 != to - from {
            return Err(ExportError::Unsupported {
                segment: source.segment,
                reason: format!(
                    "short read at {from}: {} of {} bytes",
                    bytes.len(),
                    to - from
                ),
            });
        }
        if spans.len() == 1 {
            return Ok(bytes);
        }
        let mut out = bytes::BytesMut::with_capacity(spans.iter().map(|s| s.1 as usize).sum());
        for (src, len) in spans {
            let at = (src - from) as usize;
            out.extend_from_slice(&bytes[at..at + len as usize]);
        }
        Ok(out.freeze())
    }
}

/// The segment a response is copying from, held open until it moves on to the next one (the
/// pieces come in segment order, so one handle at a time suffices).
#[derive(Default)]
struct OpenSource {
    current: Option<(u32, Arc<dyn Opened>)>,
}

/// Largest hole between two pieces that one read still spans (bytes read and dropped).
const MAX_READ_HOLE: u64 = 64 * 1024;

/// The source byte ranges `(offset, len)` one read serves, starting `skip` bytes into
/// `pieces[0]`: at most `max_out` output bytes, from pieces of the same source in increasing
/// order with holes of at most [`MAX_READ_HOLE`], the whole read within [`COPY_CHUNK`].
fn read_spans(pieces: &[Piece], skip: u64, max_out: u64) -> Vec<(u64, u64)> {
    let Some(first) = pieces.first() else {
        return Vec::new();
    };
    let from = first.src + skip;
    let mut out_len = (first.len - skip).min(max_out);
    let mut spans = vec![(from, out_len)];
    let mut src_end = from + out_len;
    for p in &pieces[1..] {
        if out_len >= max_out
            || p.source != first.source
            || p.src < src_end
            || p.src - src_end > MAX_READ_HOLE
        {
            break;
        }
        let take = p.len.min(max_out - out_len);
        if p.src + take - from > COPY_CHUNK {
            break;
        }
        spans.push((p.src, take));
        out_len += take;
        src_end = p.src + take;
    }
    spans
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::archive::storage::fs::FsStorage;

    const S: i64 = 1_000_000;
    const W0: i64 = 1_800_000_000 * S;

    #[test]
    fn one_read_spans_nearby_pieces_of_one_segment() {
        let piece = |out, source, src, len| Piece {
            out,
            source,
            src,
            len,
        };
        let pieces = [
            piece(0, 0, 1000, 500),
            piece(500, 0, 1600, 300),   // 100-byte hole: same read
            piece(800, 0, 200_000, 10), // hole over MAX_READ_HOLE: next read
            piece(810, 1, 300, 10),     // another segment
        ];
        assert_eq!(
            read_spans(&pieces, 0, COPY_CHUNK),
            vec![(1000, 500), (1600, 300)]
        );
        // Starting inside a piece, and stopping at the output limit inside the next one.
        assert_eq!(read_spans(&pieces, 200, 350), vec![(1200, 300), (1600, 50)]);
        assert_eq!(read_spans(&pieces[2..], 0, COPY_CHUNK), vec![(200_000, 10)]);
        // The read itself stays within COPY_CHUNK.
        let big = [piece(0, 0, 0, 250_000), piece(250_000, 0, 270_000, 10)];
        assert_eq!(read_spans(&big, 0, COPY_CHUNK), vec![(0, 250_000)]);
        // Pieces out of order in the source are never merged.
        let back = [piece(0, 0, 5000, 10), piece(10, 0, 100, 10)];
        assert_eq!(read_spans(&back, 0, COPY_CHUNK), vec![(5000, 10)]);
    }

    /// A plan of `seconds` whose payload is never read (the cache only counts its memory).
    fn small_plan(seconds: i64) -> Arc<ExportPlan> {
        let payload_len = seconds as u64 * 3000;
        Arc::new(ExportPlan {
            head: Bytes::from(vec![0; 1000]),
            pieces: vec![Piece {
                out: 0,
                source: 0,
                src: 1000,
                len: payload_len,
            }],
            sources: vec![Source {
                segment: 0,
                storage: Arc::new(FsStorage),
                key: "/nonexistent/0".into(),
            }],
            payload_len,
            start_us: W0,
            end_us: W0 + seconds * S,
            duration_us: seconds * S,
            segments: 1,
        })
    }

    #[test]
    fn plan_cache_keeps_the_most_recent_plans() {
        let cache = PlanCache::default();
        let first = small_plan(2);
        cache.insert("a".into(), first.clone());
        assert!(Arc::ptr_eq(&cache.get("a").unwrap(), &first));
        assert!(cache.get("b").is_none());
        for i in 0..PLAN_CACHE_ENTRIES {
            cache.insert(format!("k{i}"), small_plan(2));
            // `a` is used between inserts: it stays while the others rotate out.
            assert!(cache.get("a").is_some(), "{i}");
        }
        assert!(cache.get("k0").is_none(), "oldest unused plan dropped");
        assert!(cache.get(&format!("k{}", PLAN_CACHE_ENTRIES - 1)).is_some());
        // Re-inserting a key replaces its plan.
        let again = small_plan(3);
        cache.insert("a".into(), again.clone());
        assert!(Arc::ptr_eq(&cache.get("a").unwrap(), &again));
    }

    #[test]
    fn plan_key_follows_where_segments_live() {
        let row = |storage: &str, key: &str| SegmentRow {
            id: 7,
            stream_id: Uuid::nil(),
            start_us: W0,
            end_us: W0 + S,
            media_duration_us: S,
            storage: storage.into(),
            storage_key: key.into(),
            bucket: (storage == "s3").then(|| "archive".into()),
            bytes: 100,
            init_segment_id: Some(1),
            state: "complete".into(),
            upload_state: "remote".into(),
        };
        let local = [row("filesystem", "/mp4/x.mp4")];
        let remote = [row("s3", "prefix/x.mp4")];
        let tag = etag(Uuid::nil(), W0, W0 + S, &local);
        assert_eq!(
            tag,
            etag(Uuid::nil(), W0, W0 + S, &remote),
            "same content, same ETag"
        );
        assert_ne!(plan_key(&tag, &local), plan_key(&tag, &remote));
        assert_eq!(plan_key(&tag, &local), plan_key(&tag, &local));
    }
}
