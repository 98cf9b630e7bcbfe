//! Indexing an existing Go archive directory (`video-server import-archive <dir>`).
//!
//! The Go server wrote `<stream-uuid>_<unix-seconds>.mp4` files, progressive MP4 with the `moov`
//! at the end, into one flat directory (go-original.md §5.2). Each file that opens as MP4 becomes
//! a `complete` segment row: start = the seconds in its name, end = start + media duration,
//! filesystem storage, its codec setup stored as an init segment. Nothing is moved or deleted.
//!
//! * **Storage key**: the file's canonical absolute path. The server may run from another working
//!   directory than the import command, so a relative path would point nowhere; the canonical
//!   path also makes a second import through a different spelling (`./mp4`, `mp4/`, a symlink)
//!   recognise the same file.
//! * **Idempotent**: a file whose key (canonical, or the path as found) is already indexed is
//!   skipped before it is read.
//! * **Unplayable files** (no `moov` because the Go writer was interrupted, truncated, garbage, no
//!   usable track, longer than the segment cap) are reported with the reason and counted, never
//!   fatal. A re-run after fixing or finishing them picks them up.
//! * Walks `dir` and its immediate subdirectories; other files are ignored.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::db::segments::MAX_SEGMENT_US;
use crate::db::segments::{NewSegment, SegmentState};
use crate::db::{self, Db, DbError};
use crate::media::fmp4::init_segment;
use crate::media::mp4file::Mp4File;
use crate::stream::StorageKind;

/// Errors that stop an import: the directory cannot be read, or the index fails. Bad files are
/// not errors (see [`Unplayable`]).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A Go archive file found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFile {
    /// The path as found under the directory given.
    pub path: PathBuf,
    pub stream_id: Uuid,
    /// Seconds since the Unix epoch, from the name.
    pub start_s: i64,
}

/// A file that could not be indexed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplayable {
    pub path: PathBuf,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Files indexed by this run.
    pub imported: u64,
    /// Files already indexed.
    pub skipped: u64,
    pub unplayable: Vec<Unplayable>,
    /// Sum of the imported files' sizes.
    pub bytes: u64,
}

/// Progress, reported as the import goes.
#[derive(Debug)]
pub enum ImportEvent<'a> {
    /// The directory has been listed: this many events follow (one per Go archive file, plus one
    /// per unreadable subdirectory).
    Found(usize),
    Imported(&'a GoFile),
    Skipped(&'a GoFile),
    Unplayable(&'a Unplayable),
}

/// Parses a Go archive file name, `<uuid>_<unix-seconds>.mp4`, into the stream and start second.
pub fn parse_go_name(name: &str) -> Option<(Uuid, i64)> {
    let stem = name.strip_suffix(".mp4")?;
    let (id, secs) = stem.rsplit_once('_')?;
    if id.len() != 36 || secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id = Uuid::try_parse(id).ok()?;
    let secs: i64 = secs.parse().ok()?;
    // Keeps `secs * 1_000_000` and the end time far from overflow (year ~292 000).
    (secs < i64::MAX / 1_000_000 / 2).then_some((id, secs))
}

/// Lists the Go archive files in `dir` and its immediate subdirectories, ordered by stream and
/// start. Subdirectories that cannot be read are returned as [`Unplayable`] entries.
pub fn scan(dir: &Path) -> Result<(Vec<GoFile>, Vec<Unplayable>), ImportError> {
    let meta = std::fs::metadata(dir).map_err(|source| ImportError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ImportError::NotADirectory(dir.to_owned()));
    }
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let mut subdirs = Vec::new();
    list_into(dir, &mut files, Some(&mut subdirs)).map_err(|source| ImportError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    for sub in subdirs {
        if let Err(e) = list_into(&sub, &mut files, None) {
            problems.push(Unplayable {
                path: sub,
                reason: format!("cannot read directory: {e}"),
            });
        }
    }
    files.sort_by(|a, b| (a.stream_id, a.start_s, &a.path).cmp(&(b.stream_id, b.start_s, &b.path)));
    Ok((files, problems))
}

/// Adds the Go files of one directory to `files`, and its subdirectories to `subdirs` if given.
fn list_into(
    dir: &Path,
    files: &mut Vec<GoFile>,
    mut subdirs: Option<&mut Vec<PathBuf>>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // Follows symlinks: a linked file or directory counts as what it points to.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Some(subdirs) = subdirs.as_deref_mut() {
                subdirs.push(path);
            }
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        let name = entry.file_name();
        if let Some((stream_id, start_s)) = name.to_str().and_then(parse_go_name) {
            files.push(GoFile {
                path,
                stream_id,
                start_s,
            });
        }
    }
    Ok(())
}

/// What the import needs from a file, read on a blocking thread.
struct Probe {
    key: String,
    bytes: u64,
    duration_us: i64,
    codecs: String,
    init: bytes::Bytes,
}

/// Reads one file: canonical path, size, duration and init segment; or why it is unplayable.
fn probe(path: &Path) -> Result<Probe, String> {
    let canonical = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve path: {e}"))?;
    let key = canonical
        .to_str()
        .ok_or("the path is not valid UTF-8")?
        .to_owned();
    let bytes = std::fs::metadata(&canonical)
        .map_err(|e| e.to_string())?
        .len();
    let file = Mp4File::open(&canonical).map_err(|e| {
        // Mp4File errors name the path; the report names it already.
        let msg = e.to_string();
        let prefix = format!("{}: ", canonical.display());
        msg.replacen(&prefix, "", 1)
    })?;
    if file.is_truncated() {
        return Err("truncated: the last fragment is torn".into());
    }
    let duration_us = file.duration_us();
    if duration_us <= 0 {
        return Err("no media (zero duration)".into());
    }
    if duration_us > MAX_SEGMENT_US {
        return Err(format!(
            "{:.1} s is longer than the {} s a segment may last",
            duration_us as f64 / 1e6,
            MAX_SEGMENT_US / 1_000_000
        ));
    }
    let init = init_segment(file.params()).map_err(|e| e.to_string())?;
    Ok(Probe {
        key,
        bytes,
        duration_us,
        codecs: file.params().codec_list(),
        init,
    })
}

/// Imports the Go archive files of `dir` (see the module documentation), calling `on_event` as it
/// goes. Fails only if the directory cannot be listed or the index fails.
pub async fn import_archive(
    db: &Db,
    dir: &Path,
    mut on_event: impl FnMut(ImportEvent<'_>),
) -> Result<ImportReport, ImportError> {
    let scan_dir = dir.to_owned();
    let (files, problems) = tokio::task::spawn_blocking(move || scan(&scan_dir))
        .await
        .map_err(|e| ImportError::Dir {
            path: dir.to_owned(),
            source: std::io::Error::other(e),
        })??;
    let mut report = ImportReport::default();
    on_event(ImportEvent::Found(files.len() + problems.len()));
    for p in problems {
        on_event(ImportEvent::Unplayable(&p));
        report.unplayable.push(p);
    }
    for file in &files {
        let as_found = file.path.to_string_lossy();
        if db::segments::key_exists(db, &as_found).await? {
            report.skipped += 1;
            on_event(ImportEvent::Skipped(file));
            continue;
        }
        let path = file.path.clone();
        let probed = tokio::task::spawn_blocking(move || probe(&path))
            .await
            .unwrap_or_else(|e| Err(format!("reading the file failed: {e}")));
        let p = match probed {
            Ok(p) => p,
            Err(reason) => {
                let bad = Unplayable {
                    path: file.path.clone(),
                    reason,
                };
                on_event(ImportEvent::Unplayable(&bad));
                report.unplayable.push(bad);
                continue;
            }
        };
        if db::segments::key_exists(db, &p.key).await? {
            report.skipped += 1;
            on_event(ImportEvent::Skipped(file));
            continue;
        }
        let init_id = db::segments::upsert_init(db, &p.codecs, &p.init).await?;
        let start_us = file.start_s * 1_000_000;
        let segment = NewSegment {
            stream_id: file.stream_id,
            start_us,
            end_us: start_us + p.duration_us,
            media_duration_us: p.duration_us,
            storage: StorageKind::Filesystem,
            storage_key: p.key,
            bytes: i64::try_from(p.bytes).unwrap_or(i64::MAX),
            state: SegmentState::Complete,
        };
        db::import::insert_complete(db, &segment, Some(init_id)).await?;
        report.imported += 1;
        report.bytes += p.bytes;
        on_event(ImportEvent::Imported(file));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_names() {
        let id = "566bfe72-2a8a-4d4c-9b84-2e1b9b4b1a3c";
        let uuid = Uuid::parse_str(id).expect("uuid");
        assert_eq!(
            parse_go_name(&format!("{id}_1700000000.mp4")),
            Some((uuid, 1_700_000_000))
        );
        for bad in [
            format!("{id}_1700000000.mp4.part"),
            format!("{id}_.mp4"),
            format!("{id}_-5.mp4"),
            format!("{id}_17x.mp4"),
            format!("{id}1700000000.mp4"),
            format!("{id}_99999999999999999999.mp4"),
            "566bfe722a8a4d4c9b842e1b9b4b1a3c_1700000000.mp4".to_owned(),
            "nope_1700000000.mp4".to_owned(),
            "index.m3u8".to_owned(),
        ] {
            assert_eq!(parse_go_name(&bad), None, "{bad}");
        }
    }
}
