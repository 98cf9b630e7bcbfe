//! Counters of one stream's recorder, updated lock-free by the recorder and read by status pages
//! and metrics ([`RecorderStats::snapshot`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Live counters of a recorder. Shared (`Arc`) between the recorder, its index writer and readers.
#[derive(Debug, Default)]
pub struct RecorderStats {
    segments_written: AtomicU64,
    fragments_written: AtomicU64,
    bytes_written: AtomicU64,
    last_fragment_us: AtomicI64,
    last_frame_wallclock_us: AtomicI64,
    index_errors: AtomicU64,
    index_pending: AtomicU64,
    index_dropped: AtomicU64,
    write_errors: AtomicU64,
    disk_full: AtomicU64,
    dropped_bytes: AtomicU64,
    early_flushes: AtomicU64,
    clock_reanchors: AtomicU64,
    last_clock_correction_us: AtomicI64,
    root_paused: AtomicU64,
    root_pauses: AtomicU64,
}

/// A snapshot of [`RecorderStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderCounters {
    /// Segments closed with media since the recorder started.
    pub segments_written: u64,
    /// Fragments written and flushed to disk.
    pub fragments_written: u64,
    /// Bytes written to segment files (init segments included).
    pub bytes_written: u64,
    /// Server wall clock (µs) when the last fragment reached the disk; 0 before the first.
    pub last_fragment_us: i64,
    /// Receive time (µs) of the last frame the recorder took from its queue; `now` minus this is
    /// how far the recorder lags behind the camera.
    pub last_frame_wallclock_us: i64,
    /// Index writes that failed (each is retried).
    pub index_errors: u64,
    /// Segments whose index writes are waiting (a database outage shows here).
    pub index_pending: u64,
    /// Segments left to start-up repair because their index writes waited too long or the index
    /// was unreachable when the recorder stopped. Their files are complete on disk.
    pub index_dropped: u64,
    /// File writes that failed (the segment was closed at its last good fragment).
    pub write_errors: u64,
    /// Of those, how many because the disk was full.
    pub disk_full: u64,
    /// Media bytes not recorded: frames that arrived while the recorder backed off after a write
    /// failure, and the fragment being written when it failed.
    pub dropped_bytes: u64,
    /// Fragments written before their time because they reached the byte or frame limit (a
    /// source with tiny frame durations).
    pub early_flushes: u64,
    /// Times the session's wall clock was re-anchored because the camera drifted.
    pub clock_reanchors: u64,
    /// The last correction applied (µs; negative: the camera clock ran fast).
    pub last_clock_correction_us: i64,
    /// 1 while recording is paused because the storage root is unavailable (marker missing).
    pub root_paused: u64,
    /// Times recording paused for an unavailable storage root.
    pub root_pauses: u64,
}

impl RecorderStats {
    pub fn snapshot(&self) -> RecorderCounters {
        let u = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let i = |a: &AtomicI64| a.load(Ordering::Relaxed);
        RecorderCounters {
            segments_written: u(&self.segments_written),
            fragments_written: u(&self.fragments_written),
            bytes_written: u(&self.bytes_written),
            last_fragment_us: i(&self.last_fragment_us),
            last_frame_wallclock_us: i(&self.last_frame_wallclock_us),
            index_errors: u(&self.index_errors),
            index_pending: u(&self.index_pending),
            index_dropped: u(&self.index_dropped),
            write_errors: u(&self.write_errors),
            disk_full: u(&self.disk_full),
            dropped_bytes: u(&self.dropped_bytes),
            early_flushes: u(&self.early_flushes),
            clock_reanchors: u(&self.clock_reanchors),
            last_clock_correction_us: i(&self.last_clock_correction_us),
            root_paused: u(&self.root_paused),
            root_pauses: u(&self.root_pauses),
        }
    }

    pub(super) fn segment_written(&self) {
        self.segments_written.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn bytes_written(&self, n: u64, fragment: bool) {
        self.bytes_written.fetch_add(n, Ordering::Relaxed);
        if fragment {
            self.fragments_written.fetch_add(1, Ordering::Relaxed);
            self.last_fragment_us
                .store(crate::db::now_us(), Ordering::Relaxed);
        }
    }

    pub(super) fn frame_taken(&self, wallclock_us: i64) {
        self.last_frame_wallclock_us
            .store(wallclock_us, Ordering::Relaxed);
    }

    pub(super) fn index_error(&self) {
        self.index_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn set_index_pending(&self, n: usize) {
        self.index_pending.store(n as u64, Ordering::Relaxed);
    }

    pub(super) fn index_dropped(&self, n: u64) {
        self.index_dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn write_error(&self, disk_full: bool) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        if disk_full {
            self.disk_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn dropped(&self, bytes: u64) {
        self.dropped_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn early_flush(&self) {
        self.early_flushes.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn root_unavailable(&self, paused: bool) {
        self.root_paused.store(u64::from(paused), Ordering::Relaxed);
        if paused {
            self.root_pauses.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn clock_reanchored(&self, correction_us: i64) {
        self.clock_reanchors.fetch_add(1, Ordering::Relaxed);
        self.last_clock_correction_us
            .store(correction_us, Ordering::Relaxed);
    }
}
