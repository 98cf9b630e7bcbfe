//! The wall clock of a recording session: media time mapped to server time, re-anchored when the
//! camera's clock drifts.
//!
//! A session's wall clock is anchored on the receive time of its first frame and then advanced by
//! media time, so consecutive segments are exactly back to back. A camera clock that runs fast or
//! slow (seconds per day are common) would make that mapping drift away from real time. So the
//! recorder measures, per segment, how far each main-track frame's receive time is from where the
//! anchor puts it, and at the next segment boundary re-anchors by that offset when it exceeds
//! `[archive] max_drift_ms`.
//!
//! The offset used is the *smallest* of the segment (receive time minus mapped time): network and
//! buffering delays only ever make frames arrive later, so the earliest arrival is the closest to
//! the camera's real timing, and a burst of late frames never moves the clock. A frame buffered by
//! the camera before the session started also shows up here (it arrives early for its media time)
//! and is corrected the same way.

/// The anchor and drift measurement of one session.
#[derive(Debug, Default, Clone)]
pub struct SessionClock {
    /// Wall clock (µs) of media time `.1` (µs on the session's timeline).
    anchor: Option<(i64, i64)>,
    /// Smallest receive-time offset from the anchored time seen since the last boundary (µs).
    min_offset_us: Option<i64>,
}

impl SessionClock {
    /// Forgets the anchor (a new source session: its timeline is unrelated).
    pub fn reset(&mut self) {
        *self = SessionClock::default();
    }

    /// Wall clock (µs) of media time `dts_us`; the first call of a session anchors the clock on
    /// `received_us`.
    pub fn wall_us(&mut self, received_us: i64, dts_us: i64) -> i64 {
        let (wall, dts) = *self.anchor.get_or_insert((received_us, dts_us));
        wall + (dts_us - dts)
    }

    /// Notes the receive time of a main-track frame (ignored before the anchor, and for frames
    /// without a receive time).
    pub fn observe(&mut self, received_us: i64, dts_us: i64) {
        let Some((wall, dts)) = self.anchor else {
            return;
        };
        if received_us <= 0 {
            return;
        }
        let offset = received_us - (wall + (dts_us - dts));
        self.min_offset_us = Some(self.min_offset_us.map_or(offset, |m| m.min(offset)));
    }

    /// At a segment boundary: when the drift measured since the last boundary exceeds
    /// `max_drift_us`, moves the anchor by it and returns the correction (µs). Starts a new
    /// measurement either way.
    pub fn boundary(&mut self, max_drift_us: i64) -> Option<i64> {
        let offset = self.min_offset_us.take()?;
        let (wall, _) = self.anchor.as_mut()?;
        if offset.abs() <= max_drift_us {
            return None;
        }
        *wall += offset;
        Some(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn the_first_frame_anchors_and_media_time_advances_the_clock() {
        let mut c = SessionClock::default();
        assert_eq!(c.wall_us(100 * S, 5 * S), 100 * S);
        assert_eq!(c.wall_us(999 * S, 8 * S), 103 * S, "receive time ignored");
        c.reset();
        assert_eq!(c.wall_us(200 * S, 0), 200 * S);
    }

    #[test]
    fn drift_beyond_the_threshold_is_corrected_at_the_boundary() {
        let mut c = SessionClock::default();
        c.wall_us(100 * S, 0);
        // A camera clock 0.1 % slow: frames arrive later and later for their media time.
        for t in 0..=3000 {
            let media = t * S;
            c.observe(100 * S + media + media / 1000, media);
        }
        // At most 1 s: no correction for the first segment's window...
        assert_eq!(c.boundary(S), None);
        for t in 3000..=3600 {
            let media = t * S;
            c.observe(100 * S + media + media / 1000 + 50_000, media);
        }
        // ...then 3.05 s late at the earliest: re-anchored by that much.
        assert_eq!(c.boundary(S), Some(3 * S + 50_000));
        assert_eq!(c.wall_us(0, 3600 * S), 100 * S + 3600 * S + 3 * S + 50_000);
        // A new window starts empty.
        assert_eq!(c.boundary(S), None);
    }

    #[test]
    fn late_arrivals_never_move_the_clock_but_early_ones_do() {
        let mut c = SessionClock::default();
        c.wall_us(100 * S, 0);
        // Jitter: most frames on time, a few seconds-late bursts.
        for t in 1..100 {
            let late = if t % 10 == 0 { 5 * S } else { 0 };
            c.observe(100 * S + t * S + late, t * S);
        }
        assert_eq!(c.boundary(S), None, "late bursts are not drift");
        // The first frames were buffered by the camera and arrived 2 s early for their media time
        // (the anchor frame itself was late): the clock moves back.
        for t in 100..200 {
            c.observe(100 * S + t * S - 2 * S, t * S);
        }
        assert_eq!(c.boundary(S), Some(-2 * S));
    }

    #[test]
    fn frames_without_receive_time_or_anchor_are_ignored() {
        let mut c = SessionClock::default();
        c.observe(50 * S, 0);
        assert_eq!(c.boundary(S), None);
        c.wall_us(100 * S, 0);
        c.observe(0, 10 * S);
        assert_eq!(c.boundary(S), None);
    }
}
