//! The recorder against sources that misbehave: a camera clock that drifts, frames with tiny
//! durations.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use video_server::archive::recorder::{Recorder, RecorderConfig, RecorderCounters};
use video_server::db::Db;
use video_server::db::segments::{self, SegmentRow};
use video_server::hub::Hub;
use video_server::media::mp4file::Mp4File;
use video_server::media::{Frame, TrackKind};
use video_server::stream::StorageKind;

use crate::archive::all_segments;
use crate::both_engines;

/// Runs a recorder over `frames` (published as fast as it takes them) and returns its counters
/// once it has closed everything.
async fn record(
    db: &Db,
    dir: &Path,
    id: Uuid,
    ms_per_file: u64,
    frames: impl Iterator<Item = Frame>,
) -> RecorderCounters {
    let hub = Hub::new();
    let recorder = Recorder::new(
        RecorderConfig {
            stream_id: id,
            directory: dir.to_owned(),
            ms_per_file,
            storage: StorageKind::Filesystem,
        },
        db.clone(),
        hub.subscribe_bounded(1_000_000, usize::MAX / 4),
    )
    .with_max_drift(Some(Duration::from_secs(1)));
    let stats = recorder.stats();
    let task = tokio::spawn(recorder.run(tokio_util::sync::CancellationToken::new()));
    for f in frames {
        hub.publish(f);
    }
    // Dropping the hub ends the recorder's queue: it records what is left, then closes.
    drop(hub);
    task.await.expect("recorder");
    stats.snapshot()
}

both_engines! {
    /// A camera clock running 2 % slow: the wall clock follows media time until the drift passes
    /// 1 s, then is re-anchored once at a segment boundary, and the correction is recorded.
    async fn a_drifting_camera_clock_is_reanchored_at_a_segment_boundary(t: &TestDb) {
        let dir = tempfile::tempdir().expect("tmp");
        let clip = Mp4File::open(Path::new("assets/demo.mp4")).expect("demo");
        let params = Arc::new(clip.params().clone());
        let id = Uuid::new_v4();
        let wall0 = 1_800_000_000_000_000i64;
        let loop_us = clip.duration_us();
        let frames = (0..3).flat_map(|l| {
            let params = params.clone();
            clip.frames().into_iter().map(move |mut f| {
                let ts = i64::from(params.timescale(f.track));
                f.dts += l * loop_us * ts / 1_000_000;
                let media_us = f.dts * 1_000_000 / ts;
                // Received 2 % later than the camera's timestamps say.
                f.wallclock_us = wall0 + media_us + media_us / 50;
                f.params = params.clone();
                f
            })
        });
        let stats = record(&t.db, dir.path(), id, 10_000, frames).await;
        assert_eq!(stats.clock_reanchors, 1, "{stats:?}");
        let rows: Vec<SegmentRow> = all_segments(&t.db, id).await;
        let corrections = segments::clock_corrections(&t.db, id, 0, i64::MAX)
            .await
            .expect("corrections");
        assert_eq!(corrections.len(), 1, "{corrections:?}");
        let (seg, start_us, correction_us) = corrections[0];
        assert_eq!(correction_us, stats.last_clock_correction_us);
        // Measured on the segment before: 2 % of its start, the first past 50 s.
        assert!(
            (1_000_000..=1_300_000).contains(&correction_us),
            "correction {correction_us} µs"
        );
        // Before the correction segments are back to back; at it the new segment starts later by
        // the correction, close to when its first frame really arrived.
        let at = rows.iter().position(|r| r.id == seg).expect("corrected row");
        for w in rows.windows(2) {
            let gap = w[1].start_us - w[0].end_us;
            if w[1].id == seg {
                assert_eq!(gap, correction_us);
            } else {
                assert!(gap.abs() < 50_000, "{w:?}");
            }
        }
        let media_at_start = rows[..at].iter().map(|r| r.media_duration_us).sum::<i64>();
        let received = wall0 + media_at_start + media_at_start / 50;
        assert!(
            (received - start_us).abs() < 300_000,
            "start {start_us} vs received {received}"
        );
    }
}

both_engines! {
    /// Frames lasting one tick never add up to a fragment's second: fragments are written by
    /// size instead, so the recorder's buffer stays bounded and every frame reaches the file.
    async fn tiny_frame_durations_are_written_by_size(t: &TestDb) {
        let dir = tempfile::tempdir().expect("tmp");
        let clip = Mp4File::open(Path::new("assets/demo.mp4")).expect("demo");
        let params = Arc::new(clip.params().clone());
        let video: Vec<Frame> = clip
            .frames()
            .into_iter()
            .filter(|f| f.track == TrackKind::Video)
            .collect();
        let id = Uuid::new_v4();
        let count = 3 * video_server::archive::recorder::FRAGMENT_MAX_FRAMES + 10;
        let frames = video.into_iter().cycle().take(count).enumerate().map(|(n, mut f)| {
            f.dts = n as i64;
            f.duration = 1;
            f.wallclock_us = 1_800_000_000_000_000 + n as i64;
            f.params = params.clone();
            f
        });
        let stats = record(&t.db, dir.path(), id, 2000, frames).await;
        assert!(stats.early_flushes >= 3, "{stats:?}");
        assert_eq!(stats.dropped_bytes, 0, "{stats:?}");
        let rows = all_segments(&t.db, id).await;
        let recorded: usize = rows
            .iter()
            .map(|r| {
                Mp4File::open(Path::new(&r.storage_key))
                    .expect("segment")
                    .frames()
                    .len()
            })
            .sum();
        // A segment starts at a keyframe: frames before the first one are not recorded.
        let first_key = clip
            .frames()
            .iter()
            .filter(|f| f.track == TrackKind::Video)
            .position(|f| f.keyframe)
            .expect("keyframe");
        assert_eq!(recorded, count - first_key, "every frame is in a file");
        assert!(rows.iter().all(|r| r.state == "complete"));
    }
}
