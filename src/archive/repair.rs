//! Start-up repair of the archive after a crash or `kill -9`.
//!
//! * Rows still `recording`: the file is scanned, a torn last fragment is cut off, the real end
//!   and size are stored and the row is marked complete (its run extended). A file with no complete
//!   fragment holds no media: it is removed with its row. A missing file marks the row `missing`.
//! * Segment files without a row (the process died between creating the file and inserting the
//!   row) are indexed.
//! * Complete rows whose file is gone are marked `missing`.

use std::path::{Path, PathBuf};

use crate::db::segments::{self, NewSegment, SegmentRow, SegmentState};
use crate::db::{Db, DbError};
use crate::media::fmp4::{self, split_fragments};
use crate::media::mp4file::Mp4File;
use crate::media::{MediaError, StreamParams, TrackKind};
use crate::stream::StorageKind;

/// What a repair pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Rows left `recording` that were closed (torn tails cut).
    pub repaired: u64,
    /// Rows (and files) removed because the file held no complete fragment.
    pub removed_empty: u64,
    /// Rows whose file is gone.
    pub missing: u64,
    /// Files without a row that were indexed.
    pub orphans_indexed: u64,
    /// Files without a row that could not be read (left in place, logged).
    pub orphans_unplayable: u64,
}

/// Errors that stop a repair pass (per-file problems are logged and counted instead).
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The playable part of one of our fMP4 segment files.
struct Scanned {
    valid_end: u64,
    media_us: i64,
    init: Vec<u8>,
    params: StreamParams,
}

/// Reads a segment file we wrote, cuts a torn tail off (on disk), and measures its media.
/// `Ok(None)`: no complete fragment.
fn scan_and_truncate(path: &Path) -> Result<Option<Scanned>, MediaError> {
    let data = std::fs::read(path)?;
    let layout = split_fragments(&data)?;
    if layout.fragments.is_empty() {
        return Ok(None);
    }
    let init = data[layout.init.clone()].to_vec();
    let params = fmp4::parse_init(&init)?;
    let main = if params.video.is_some() {
        TrackKind::Video
    } else {
        TrackKind::Audio
    };
    let ts = params.timescale(main);
    let mut ticks: i64 = 0;
    for r in &layout.fragments {
        for f in fmp4::parse_fragment(&params, &data[r.clone()])? {
            if f.track == main {
                ticks += i64::from(f.duration);
            }
        }
    }
    let valid_end = layout.valid_end as u64;
    if valid_end < data.len() as u64 {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(valid_end)?;
        f.sync_all()?;
    }
    Ok(Some(Scanned {
        valid_end,
        media_us: (i128::from(ticks) * 1_000_000 / i128::from(ts.max(1))) as i64,
        init,
        params,
    }))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Closes every segment left `recording` by a previous run. Call before recorders start. Files
/// outside the storage `roots` are never touched (their rows are left for an operator).
pub async fn repair_recording(
    db: &Db,
    roots: &crate::roots::StorageRoots,
) -> Result<RepairReport, RepairError> {
    let mut report = RepairReport::default();
    for row in segments::with_state(db, SegmentState::Recording).await? {
        if !roots.contains(Path::new(&row.storage_key)) {
            tracing::error!(segment = row.id, path = %row.storage_key,
                "segment left recording lies outside the storage roots: not repaired");
            continue;
        }
        repair_row(db, &row, &mut report).await?;
    }
    if report != RepairReport::default() {
        tracing::info!(?report, "archive repaired");
    }
    Ok(report)
}

async fn repair_row(
    db: &Db,
    row: &SegmentRow,
    report: &mut RepairReport,
) -> Result<(), RepairError> {
    let path = PathBuf::from(&row.storage_key);
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        segments::mark_missing(db, row.id).await?;
        report.missing += 1;
        return Ok(());
    }
    let p = path.clone();
    match blocking(move || scan_and_truncate(&p)).await {
        Some(Ok(Some(s))) => {
            segments::finalize(
                db,
                row.id,
                row.start_us + s.media_us,
                s.media_us,
                s.valid_end as i64,
            )
            .await?;
            report.repaired += 1;
        }
        Some(Ok(None)) | Some(Err(_)) | None => {
            tracing::warn!(path = %path.display(), "segment has no complete fragment: removed");
            let _ = tokio::fs::remove_file(&path).await;
            segments::delete(db, row.id).await?;
            report.removed_empty += 1;
        }
    }
    Ok(())
}

/// Parses `<uuid>_<unix-seconds>.mp4`.
pub fn parse_segment_name(name: &str) -> Option<(uuid::Uuid, i64)> {
    let stem = name.strip_suffix(".mp4")?;
    let (id, secs) = stem.rsplit_once('_')?;
    let id = uuid::Uuid::parse_str(id).ok()?;
    let secs: i64 = secs.parse().ok()?;
    (0..=i64::MAX / 1_000_000 / 2)
        .contains(&secs)
        .then_some((id, secs))
}

/// Segment files under `root` (`<root>/<uuid>/<day>/<file>`, or flat like the Go original).
fn segment_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_owned(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && depth < 2 {
                stack.push((path, depth + 1));
            } else if ft.is_file()
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| parse_segment_name(n).is_some())
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Indexes segment files under `roots` that have no row, and marks rows whose file is gone.
/// Runs in the background after start-up; it reads every file name once. Files named after
/// `started_us` belong to recorders of this run (their rows may be a moment behind) and are skipped.
pub async fn reconcile(
    db: &Db,
    roots: &[PathBuf],
    started_us: i64,
) -> Result<RepairReport, RepairError> {
    let mut report = RepairReport::default();
    for root in roots {
        let r = root.clone();
        let files = blocking(move || segment_files(&r))
            .await
            .unwrap_or_default();
        for path in files {
            let key = path.to_string_lossy().into_owned();
            let named_us = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_segment_name)
                .map_or(i64::MAX, |(_, secs)| secs * 1_000_000);
            if named_us >= started_us - 1_000_000 {
                continue;
            }
            if segments::key_exists(db, &key).await? {
                continue;
            }
            index_orphan(db, &path, &mut report).await?;
        }
    }
    // Complete filesystem rows whose file is gone, in keyset batches.
    let mut after = 0;
    loop {
        let rows = segments::local_files_after(db, after, 1000).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        for row in rows {
            if !tokio::fs::try_exists(&row.storage_key)
                .await
                .unwrap_or(true)
            {
                segments::mark_missing(db, row.id).await?;
                report.missing += 1;
            }
        }
    }
    if report != RepairReport::default() {
        tracing::info!(?report, "archive reconciled with the files on disk");
    }
    Ok(report)
}

async fn index_orphan(db: &Db, path: &Path, report: &mut RepairReport) -> Result<(), RepairError> {
    let Some((stream_id, secs)) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_name)
    else {
        return Ok(());
    };
    let p = path.to_owned();
    // Our own fMP4 files: cut a torn tail first. Anything else (e.g. a Go archive file) is read as
    // a whole MP4.
    let scanned = blocking(move || -> Result<(Vec<u8>, String, i64, u64), MediaError> {
        if let Ok(Some(s)) = scan_and_truncate(&p) {
            return Ok((s.init, s.params.codec_list(), s.media_us, s.valid_end));
        }
        let file = Mp4File::open(&p)?;
        let init = fmp4::init_segment(file.params())?.to_vec();
        let size = std::fs::metadata(&p)?.len();
        Ok((init, file.params().codec_list(), file.duration_us(), size))
    })
    .await;
    let Some(Ok((init, codecs, media_us, bytes))) = scanned else {
        tracing::warn!(path = %path.display(), "unindexed segment file is not playable: left in place");
        report.orphans_unplayable += 1;
        return Ok(());
    };
    if media_us <= 0 {
        report.orphans_unplayable += 1;
        return Ok(());
    }
    let init_id = segments::upsert_init(db, &codecs, &init).await?;
    let start_us = secs * 1_000_000;
    let id = segments::insert_recording(
        db,
        &NewSegment {
            stream_id,
            start_us,
            end_us: start_us,
            media_duration_us: 0,
            storage: StorageKind::Filesystem,
            storage_key: path.to_string_lossy().into_owned(),
            bytes: bytes as i64,
            state: SegmentState::Recording,
        },
        Some(init_id),
        "none",
    )
    .await?;
    segments::finalize(db, id, start_us + media_us, media_us, bytes as i64).await?;
    report.orphans_indexed += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names() {
        let id = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";
        assert_eq!(
            parse_segment_name(&format!("{id}_1700000000.mp4")),
            Some((id.parse().expect("uuid"), 1_700_000_000))
        );
        assert!(parse_segment_name(&format!("{id}_x.mp4")).is_none());
        assert!(parse_segment_name(&format!("{id}_-5.mp4")).is_none());
        assert!(parse_segment_name(&format!("{id}_1.mp4.tmp")).is_none());
        assert!(parse_segment_name("garbage_1.mp4").is_none());
        assert!(parse_segment_name(&format!("{id}_99999999999999999999.mp4")).is_none());
    }
}
