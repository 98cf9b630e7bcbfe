//! A local MP4 file played as a camera: frames paced in real time, optionally looping with
//! monotonically increasing timestamps.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{HealthCategory, SessionEnd, SessionSink, SourceError};
use crate::media::mp4file::Mp4File;
use crate::roots::FileRoots;

/// Opens `path` through the file roots and reads it whole (at most the roots' byte cap).
pub async fn load(files: &Arc<FileRoots>, path: &Path) -> Result<Mp4File, SourceError> {
    let (files, owned) = (files.clone(), path.to_owned());
    // Opening, reading and indexing the file is blocking work.
    tokio::task::spawn_blocking(move || -> Result<Mp4File, SourceError> {
        let file = files.open(&owned)?;
        Ok(Mp4File::read(file, &owned, files.max_file_bytes())?)
    })
    .await
    .map_err(|e| {
        SourceError::failed(
            HealthCategory::InvalidMedia,
            format!("file reader task failed: {e}"),
        )
    })?
}

/// Plays `path` into the sink until the end (or forever with `looping`), or until cancelled.
/// Cancellation takes effect at once, even in the middle of a pacing sleep.
pub async fn run(
    files: &Arc<FileRoots>,
    path: &Path,
    looping: bool,
    sink: &mut SessionSink,
    cancel: &CancellationToken,
) -> Result<SessionEnd, SourceError> {
    let file = load(files, path).await?;
    let params = Arc::new(file.params().clone());
    if params.video.is_none() && params.audio.is_none() {
        return Err(SourceError::NoTracks(format!(
            "{} has no H.264/H.265/AAC track",
            path.display()
        )));
    }
    {
        let mut st = super::lock_status(&sink.status);
        st.skipped_tracks = file.skipped_tracks().to_vec();
    }
    sink.announce(&params);
    let frames = file.frames();
    if frames.is_empty() {
        return Err(SourceError::NoTracks(format!(
            "{} has no samples",
            path.display()
        )));
    }
    let loop_us = file.duration_us().max(1);
    let start = Instant::now();
    let mut loop_index: i64 = 0;
    loop {
        let loop_offset_us = loop_index * loop_us;
        for frame in &frames {
            let ts = params.timescale(frame.track);
            let frame_us = (i128::from(frame.dts) * 1_000_000 / i128::from(ts.max(1))) as i64;
            let due_us = loop_offset_us + frame_us;
            let due = start + Duration::from_micros(u64::try_from(due_us).unwrap_or(0));
            tokio::select! {
                _ = cancel.cancelled() => return Ok(SessionEnd::Cancelled),
                _ = tokio::time::sleep_until(due) => {}
            }
            sink.check_watchdog()?;
            let mut f = frame.clone();
            f.dts += (i128::from(loop_offset_us) * i128::from(ts) / 1_000_000) as i64;
            f.wallclock_us = crate::db::now_us();
            f.params = params.clone();
            sink.publish(f);
        }
        if !looping {
            return Ok(SessionEnd::Finished);
        }
        loop_index += 1;
    }
}
