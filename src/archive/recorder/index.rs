//! The recorder's index writer: applies segment rows in the background, retrying through database
//! outages, so writing files never waits for SQL.
//!
//! The recorder describes each segment's life here (opened, advanced, completed or discarded) and
//! goes on writing. A task applies the changes in order, oldest segment first, with backoff on
//! errors (200 ms doubling to 2 s, so a database that comes back is caught up within seconds).
//! Changes to one segment coalesce: only its latest progress is written, and a segment that
//! completes before its row exists is inserted complete in one transaction.
//!
//! Memory is bounded: past [`MAX_QUEUED`] segments the oldest one is let go (counted in
//! [`RecorderStats`]); its file is complete on disk, and start-up repair indexes it (a file with no
//! row) or closes its row (a row left `recording`). Every statement is idempotent (see
//! `db::segments::insert_recorded`), so a retry after a lost answer never duplicates anything.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::stats::RecorderStats;
use crate::db::cluster::Fence;
use crate::db::segments::{self, RecordedSegment, SegmentState};
use crate::db::{Db, DbError};

/// Segments whose index work may wait in memory. At one segment per `ms_per_file` (30 s by
/// default) this rides out hours of database outage; each entry holds an init segment (a few KiB).
pub const MAX_QUEUED: usize = 1024;

/// First retry delay after a failed index write, doubled per failure up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest retry delay: a database that comes back is noticed within about this long.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How long the writer keeps trying after the recorder stopped (shutdown, stream restart) before it
/// leaves what is left to start-up repair. Shorter than the manager's stop timeout.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// A warning at most this often while the database stays unavailable.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// How far a segment's row should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub end_us: i64,
    pub media_us: i64,
    pub bytes: i64,
}

/// How a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Closed with media: the row becomes `complete`.
    Complete,
    /// Closed without media (its file is already removed): no row should remain.
    Discard,
}

struct Entry {
    /// The recorder's handle on this segment.
    seq: u64,
    /// The row, once inserted.
    row: Option<i64>,
    insert: Arc<RecordedSegment>,
    /// What the row should say.
    latest: Progress,
    /// What the row says (once inserted).
    written: Option<Progress>,
    end: Option<End>,
}

#[derive(Default)]
struct State {
    entries: VecDeque<Entry>,
    next_seq: u64,
    /// The recorder has stopped: drain, then exit.
    closing: bool,
}

/// One database statement to run for the oldest segment with work.
#[derive(Debug, Clone)]
enum Job {
    Insert {
        seq: u64,
        insert: Arc<RecordedSegment>,
        progress: Progress,
        complete: bool,
    },
    Progress {
        seq: u64,
        row: i64,
        progress: Progress,
        fence: Option<Fence>,
    },
    Finalize {
        seq: u64,
        row: i64,
        progress: Progress,
        fence: Option<Fence>,
    },
    Delete {
        seq: u64,
        row: i64,
    },
}

impl State {
    /// The next statement to run, if any (discarded segments that never got a row are dropped
    /// here: nothing to undo).
    fn next_job(&mut self) -> Option<Job> {
        while let Some(e) = self.entries.front() {
            if e.row.is_none() && e.end == Some(End::Discard) {
                self.entries.pop_front();
                continue;
            }
            break;
        }
        // Only the oldest entry is worked on, so rows are written in recording order (runs grow
        // at their end). Every entry but the newest is closed.
        let e = self.entries.front()?;
        let job = match (e.row, e.end) {
            (None, end) => Job::Insert {
                seq: e.seq,
                insert: e.insert.clone(),
                progress: e.latest,
                complete: end == Some(End::Complete),
            },
            (Some(row), Some(End::Discard)) => Job::Delete { seq: e.seq, row },
            (Some(row), Some(End::Complete)) => Job::Finalize {
                seq: e.seq,
                row,
                progress: e.latest,
                fence: e.insert.fence.clone(),
            },
            (Some(row), None) if e.written != Some(e.latest) => Job::Progress {
                seq: e.seq,
                row,
                progress: e.latest,
                fence: e.insert.fence.clone(),
            },
            (Some(_), None) => return None,
        };
        Some(job)
    }

    fn entry(&mut self, seq: u64) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.seq == seq)
    }

    /// Records that `job` succeeded (`row`: the id an insert returned).
    fn done(&mut self, job: &Job, row: Option<i64>) {
        let finished = match job {
            Job::Insert {
                seq,
                progress,
                complete,
                ..
            } => {
                if *complete {
                    Some(*seq)
                } else {
                    if let Some(e) = self.entry(*seq) {
                        e.row = row;
                        e.written = Some(*progress);
                    }
                    None
                }
            }
            Job::Progress { seq, progress, .. } => {
                if let Some(e) = self.entry(*seq) {
                    e.written = Some(*progress);
                }
                None
            }
            Job::Finalize { seq, .. } | Job::Delete { seq, .. } => Some(*seq),
        };
        if let Some(seq) = finished {
            self.entries.retain(|e| e.seq != seq);
        }
    }
}

/// The recorder's side of the index writer.
pub struct SegmentIndex {
    state: Mutex<State>,
    wake: Notify,
    stats: Arc<RecorderStats>,
}

impl SegmentIndex {
    pub fn new(stats: Arc<RecorderStats>) -> Arc<SegmentIndex> {
        Arc::new(SegmentIndex {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            stats,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Never held across an await; the queue is consistent after any panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self, state: &State) {
        self.stats.set_index_pending(state.entries.len());
        self.wake.notify_one();
    }

    /// A segment file was created (its init segment is on disk): its row is to be inserted.
    /// Returns the handle for later calls.
    pub fn open(&self, insert: RecordedSegment) -> u64 {
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let s = &insert.segment;
        let latest = Progress {
            end_us: s.end_us,
            media_us: s.media_duration_us,
            bytes: s.bytes,
        };
        st.entries.push_back(Entry {
            seq,
            row: None,
            insert: Arc::new(insert),
            latest,
            written: None,
            end: None,
        });
        while st.entries.len() > MAX_QUEUED {
            if let Some(old) = st.entries.pop_front() {
                self.stats.index_dropped(1);
                tracing::warn!(
                    file = %old.insert.segment.storage_key,
                    "index writes queued for too long: segment left for start-up repair"
                );
            }
        }
        self.changed(&st);
        seq
    }

    /// The segment's row should reach `progress`.
    pub fn progress(&self, seq: u64, progress: Progress) {
        let mut st = self.lock();
        if let Some(e) = st.entry(seq) {
            e.latest = progress;
        }
        self.changed(&st);
    }

    /// The segment closed with media up to `progress`.
    pub fn complete(&self, seq: u64, progress: Progress) {
        let mut st = self.lock();
        if let Some(e) = st.entry(seq) {
            e.latest = progress;
            e.end = Some(End::Complete);
        }
        self.changed(&st);
    }

    /// The segment closed without media and its file was removed.
    pub fn discard(&self, seq: u64) {
        let mut st = self.lock();
        if let Some(e) = st.entry(seq) {
            e.end = Some(End::Discard);
        }
        self.changed(&st);
    }

    /// No more segments will come: the writer drains what is queued (for at most
    /// [`DRAIN_TIMEOUT`]) and exits.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closing = true;
        self.changed(&st);
    }

    /// Segments with index work waiting.
    pub fn queued(&self) -> usize {
        self.lock().entries.len()
    }

    /// Applies queued changes until [`close`](Self::close) and the queue is empty (or the drain
    /// time is over).
    pub async fn run_writer(self: Arc<Self>, db: Db) {
        let mut failures: u32 = 0;
        let mut drain_deadline: Option<Instant> = None;
        let mut outage_since: Option<Instant> = None;
        let mut last_warn: Option<Instant> = None;
        loop {
            let wake = self.wake.notified();
            let (job, closing) = {
                let mut st = self.lock();
                let job = st.next_job();
                self.stats.set_index_pending(st.entries.len());
                (job, st.closing)
            };
            if closing && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
            }
            let Some(job) = job else {
                if closing {
                    break;
                }
                wake.await;
                continue;
            };
            let attempt = run_job(&db, &job);
            let result = match drain_deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, attempt).await {
                    Ok(r) => r,
                    Err(_) => break,
                },
                None => attempt.await,
            };
            match result {
                Ok(row) => {
                    if let Some(since) = outage_since.take() {
                        tracing::info!(
                            retries = failures,
                            outage_ms = since.elapsed().as_millis() as u64,
                            queued = self.queued(),
                            "index writes resumed"
                        );
                    }
                    failures = 0;
                    let mut st = self.lock();
                    st.done(&job, row);
                    self.stats.set_index_pending(st.entries.len());
                }
                Err(DbError::Fenced { stream, epoch }) => {
                    // Another node holds the stream now: nothing of this lease may be indexed,
                    // ever (the cluster task stops this recorder). The files are kept, renamed
                    // out of reconciliation's way (`*.mp4.fenced`): indexed at the next start
                    // they could overlap the new holder's segments.
                    let dropped: Vec<String> = {
                        let mut st = self.lock();
                        let keys = st
                            .entries
                            .drain(..)
                            .map(|e| e.insert.segment.storage_key.clone())
                            .collect();
                        self.stats.set_index_pending(0);
                        keys
                    };
                    self.stats.index_dropped(dropped.len() as u64);
                    tracing::error!(%stream, epoch, segments = dropped.len(),
                        "segment rows refused: this node's lease on the stream has moved on");
                    for key in dropped {
                        let fenced = format!("{key}.fenced");
                        if let Err(e) = tokio::fs::rename(&key, &fenced).await {
                            tracing::warn!(file = %key, error = %e, "cannot set a fenced segment file aside");
                        }
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.stats.index_error();
                    let now = Instant::now();
                    outage_since.get_or_insert(now);
                    if last_warn.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                        last_warn = Some(now);
                        tracing::warn!(error = %e, queued = self.queued(),
                            "cannot index segments; recording goes on and the index is retried");
                    }
                    let delay = retry_delay(failures);
                    if drain_deadline.is_some_and(|d| now + delay >= d) {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
        let left = {
            let mut st = self.lock();
            let n = st.entries.len();
            st.entries.clear();
            self.stats.set_index_pending(0);
            n
        };
        if left > 0 {
            self.stats.index_dropped(left as u64);
            tracing::warn!(
                segments = left,
                "index not reachable at stop: segments left for start-up repair"
            );
        }
    }
}

fn retry_delay(failures: u32) -> Duration {
    RETRY_MIN
        .saturating_mul(1u32 << failures.saturating_sub(1).min(8))
        .min(RETRY_MAX)
}

async fn run_job(db: &Db, job: &Job) -> Result<Option<i64>, DbError> {
    match job {
        Job::Insert {
            insert,
            progress,
            complete,
            ..
        } => {
            let mut r = (**insert).clone();
            r.segment.end_us = progress.end_us;
            r.segment.media_duration_us = progress.media_us;
            r.segment.bytes = progress.bytes;
            r.segment.state = if *complete {
                SegmentState::Complete
            } else {
                SegmentState::Recording
            };
            segments::insert_recorded(db, &r).await.map(Some)
        }
        Job::Progress {
            row,
            progress,
            fence,
            ..
        } => segments::update_progress_fenced(
            db,
            *row,
            progress.end_us,
            progress.media_us,
            progress.bytes,
            fence.as_ref(),
        )
        .await
        .map(|()| None),
        Job::Finalize {
            row,
            progress,
            fence,
            ..
        } => segments::finalize_fenced(
            db,
            *row,
            progress.end_us,
            progress.media_us,
            progress.bytes,
            fence.as_ref(),
        )
        .await
        .map(|()| None),
        Job::Delete { row, .. } => segments::delete(db, *row).await.map(|()| None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::segments::NewSegment;
    use crate::stream::StorageKind;

    fn insert(start_us: i64) -> RecordedSegment {
        RecordedSegment {
            segment: NewSegment {
                stream_id: uuid::Uuid::nil(),
                start_us,
                end_us: start_us,
                media_duration_us: 0,
                storage: StorageKind::Filesystem,
                storage_key: format!("/a/{start_us}.mp4"),
                bytes: 10,
                state: SegmentState::Recording,
            },
            codecs: "avc1".into(),
            init: bytes::Bytes::from_static(b"init"),
            upload_state: "none",
            clock_correction_us: None,
            fence: None,
        }
    }

    fn p(end_us: i64) -> Progress {
        Progress {
            end_us,
            media_us: end_us,
            bytes: end_us,
        }
    }

    #[test]
    fn changes_coalesce_and_apply_in_order() {
        let index = SegmentIndex::new(Default::default());
        let a = index.open(insert(0));
        index.progress(a, p(5));
        index.complete(a, p(10));
        let b = index.open(insert(10));
        index.progress(b, p(12));
        let c = index.open(insert(20));
        index.discard(c);
        let mut st = index.lock();
        // A completed segment without a row is inserted complete, with its latest progress.
        let job = st.next_job().expect("job");
        assert!(
            matches!(&job, Job::Insert { seq, progress, complete: true, .. } if *seq == a && *progress == p(10)),
            "{job:?}"
        );
        st.done(&job, Some(1));
        let job = st.next_job().expect("job");
        assert!(matches!(&job, Job::Insert { seq, complete: false, .. } if *seq == b));
        st.done(&job, Some(2));
        // b is open and its row is current: nothing until it changes.
        assert!(st.next_job().is_none(), "the open segment waits");
        drop(st);
        index.complete(b, p(15));
        let mut st = index.lock();
        let job = st.next_job().expect("job");
        assert!(matches!(&job, Job::Finalize { row: 2, progress, .. } if *progress == p(15)));
        st.done(&job, None);
        // c never had a row: it leaves without a statement.
        assert!(st.next_job().is_none());
        assert!(st.entries.is_empty());
    }

    #[test]
    fn a_discarded_segment_with_a_row_is_deleted() {
        let index = SegmentIndex::new(Default::default());
        let a = index.open(insert(0));
        let mut st = index.lock();
        let job = st.next_job().expect("insert");
        st.done(&job, Some(7));
        drop(st);
        index.discard(a);
        let job = index.lock().next_job().expect("delete");
        assert!(matches!(job, Job::Delete { row: 7, .. }));
    }

    #[test]
    fn the_queue_is_bounded_and_counts_what_it_lets_go() {
        let stats: Arc<RecorderStats> = Default::default();
        let index = SegmentIndex::new(stats.clone());
        for i in 0..(MAX_QUEUED as i64 + 5) {
            let s = index.open(insert(i * 10));
            index.complete(s, p(i * 10 + 10));
        }
        assert_eq!(index.queued(), MAX_QUEUED);
        assert_eq!(stats.snapshot().index_dropped, 5);
        // The oldest went first.
        let job = index.lock().next_job().expect("job");
        assert!(matches!(job, Job::Insert { seq: 5, .. }), "{job:?}");
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay(1), RETRY_MIN);
        assert_eq!(retry_delay(2), RETRY_MIN * 2);
        assert_eq!(retry_delay(100), RETRY_MAX);
    }
}
