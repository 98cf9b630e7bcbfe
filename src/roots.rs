//! Where the server may read and write on behalf of its clients: the files a file source may play
//! ([`FileRoots`]) and the directories archive segments may go to ([`StorageRoots`]).
//!
//! A stream definition comes from the API, so its paths are hostile input: without these checks
//! `/etc/passwd` or `/proc/self/environ` become "cameras" and `archive.directory` writes wherever
//! the process may. Both checks resolve symbolic links and `..` the way the kernel does, and refuse
//! before touching a path that is not even lexically under a root (so the answer does not tell
//! whether a file exists elsewhere). A file source is checked once more on the opened file
//! descriptor (`/proc/self/fd`), so a symlink swapped in between check and open cannot escape.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use crate::config::Config;

/// Why a file source path is refused.
#[derive(Debug, thiserror::Error)]
pub enum FileAccessError {
    /// Outside every root (after resolving links), and not a file the config file names.
    #[error("{path}: outside the allowed file roots")]
    NotAllowed { path: String },
    /// A directory, device, FIFO, socket...
    #[error("{path}: not a regular file")]
    NotRegular { path: String },
    #[error("{path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// `path` made absolute and with `.` and `..` applied lexically (no file system access).
pub fn normalize(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `path` with symbolic links resolved as far as it exists: the longest existing ancestor is
/// canonicalised by the kernel, the missing rest (which cannot contain links) is appended
/// lexically.
pub fn resolve(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut rest: Vec<Component> = Vec::new();
    let mut base = abs.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(base) {
            let mut out = real;
            for c in rest.iter().rev() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    other => out.push(other),
                }
            }
            return out;
        }
        let Some(last) = base.components().next_back() else {
            return normalize(&abs);
        };
        rest.push(last);
        match base.parent() {
            Some(parent) => base = parent,
            None => return normalize(&abs),
        }
    }
}

/// Whether `path` lies under `root` (or is it), comparing whole components.
fn under(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}

/// The files a file source may read: regular files under `[sources] file_roots`, plus the exact
/// files the config file's `[[local_files]]` name. Roots are resolved at each check (they may be
/// created after start-up).
#[derive(Debug, Clone)]
pub struct FileRoots {
    roots: Vec<PathBuf>,
    config_files: Vec<PathBuf>,
    max_file_bytes: u64,
}

impl FileRoots {
    pub fn from_config(config: &Config) -> FileRoots {
        FileRoots::new(
            config.file_roots(),
            config.config_files(),
            config.sources.max_file_bytes(),
        )
    }

    pub fn new(roots: Vec<PathBuf>, config_files: Vec<PathBuf>, max_file_bytes: u64) -> Self {
        FileRoots {
            roots: roots.iter().map(|r| normalize(r)).collect(),
            config_files: config_files.iter().map(|f| normalize(f)).collect(),
            max_file_bytes,
        }
    }

    /// The roots as configured (absolute), for messages.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Largest file a file source reads.
    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }

    /// The roots for a message: `/srv/assets, /media/clips`, or a note that there are none.
    pub fn describe(&self) -> String {
        if self.roots.is_empty() {
            "none configured".to_owned()
        } else {
            self.roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    /// `path` (already normalised or canonical) is under a root or is a config-file file,
    /// comparing with both the roots as written and as resolved.
    fn allows(&self, path: &Path) -> bool {
        let resolved_roots = self
            .roots
            .iter()
            .filter_map(|r| std::fs::canonicalize(r).ok());
        let resolved_files = self
            .config_files
            .iter()
            .filter_map(|f| std::fs::canonicalize(f).ok());
        self.roots.iter().any(|r| under(path, r))
            || self.config_files.iter().any(|f| path == f)
            || resolved_roots.into_iter().any(|r| under(path, &r))
            || resolved_files.into_iter().any(|f| path == f)
    }

    /// Opens a file source's file for reading after checking it: lexically under a root (or a
    /// config-file file), still there once links are resolved, a regular file, and the opened
    /// descriptor is that very file. Opening is non-blocking, so a FIFO cannot hang the caller.
    pub fn open(&self, path: &Path) -> Result<File, FileAccessError> {
        let shown = path.display().to_string();
        let not_allowed = || FileAccessError::NotAllowed {
            path: shown.clone(),
        };
        if !self.allows(&normalize(path)) {
            return Err(not_allowed());
        }
        let real = std::fs::canonicalize(path).map_err(|source| FileAccessError::Unreadable {
            path: shown.clone(),
            source,
        })?;
        if !self.allows(&real) {
            return Err(not_allowed());
        }
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            &real,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FileAccessError::Unreadable {
            path: shown.clone(),
            source: e.into(),
        })?;
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|source| FileAccessError::Unreadable {
                path: shown.clone(),
                source,
            })?;
        if !meta.file_type().is_file() {
            return Err(FileAccessError::NotRegular { path: shown });
        }
        use std::os::fd::AsRawFd;
        if let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            && !self.allows(&opened)
        {
            return Err(not_allowed());
        }
        Ok(file)
    }
}

/// The directories archive segments may be written to ([`Config::storage_roots`]).
#[derive(Debug, Clone)]
pub struct StorageRoots {
    roots: Vec<PathBuf>,
}

impl StorageRoots {
    pub fn from_config(config: &Config) -> StorageRoots {
        StorageRoots::new(config.storage_roots())
    }

    pub fn new(roots: Vec<PathBuf>) -> StorageRoots {
        StorageRoots {
            roots: roots.iter().map(|r| normalize(r)).collect(),
        }
    }

    /// The roots, absolute.
    pub fn list(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The roots for a message.
    pub fn describe(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether `dir` lies under a root, both as written and with links resolved (so neither
    /// `..` nor a symlink inside a root leads out of it).
    pub fn contains(&self, dir: &Path) -> bool {
        let lexical = normalize(dir);
        let resolved = resolve(dir);
        self.roots
            .iter()
            .any(|r| under(&lexical, r) && under(&resolved, &resolve(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dir: &Path) -> FileRoots {
        FileRoots::new(
            vec![dir.join("assets")],
            vec![dir.join("extra/named.mp4")],
            1 << 20,
        )
    }

    #[test]
    fn file_roots_allow_only_regular_files_inside() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("assets/sub")).expect("mkdir");
        std::fs::create_dir_all(dir.join("extra")).expect("mkdir");
        std::fs::write(dir.join("assets/sub/a.mp4"), b"x").expect("write");
        std::fs::write(dir.join("extra/named.mp4"), b"x").expect("write");
        std::fs::write(dir.join("extra/other.mp4"), b"x").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", dir.join("assets/passwd")).expect("link");
        std::os::unix::fs::symlink(dir.join("assets/sub/a.mp4"), dir.join("assets/ok.mp4"))
            .expect("link");
        let r = roots(dir);
        assert!(r.open(&dir.join("assets/sub/a.mp4")).is_ok());
        assert!(r.open(&dir.join("assets/ok.mp4")).is_ok(), "a link inside");
        assert!(
            r.open(&dir.join("extra/named.mp4")).is_ok(),
            "named in config"
        );
        for bad in [
            dir.join("extra/other.mp4"),
            dir.join("assets/passwd"),
            dir.join("assets/../extra/other.mp4"),
            dir.join("assets/sub/../../extra/other.mp4"),
            PathBuf::from("/etc/passwd"),
            PathBuf::from("/proc/self/environ"),
        ] {
            assert!(
                matches!(r.open(&bad), Err(FileAccessError::NotAllowed { .. })),
                "{}",
                bad.display()
            );
        }
        assert!(matches!(
            r.open(&dir.join("assets/sub")),
            Err(FileAccessError::NotRegular { .. })
        ));
        assert!(matches!(
            r.open(&dir.join("assets/missing.mp4")),
            Err(FileAccessError::Unreadable { .. })
        ));
        // Outside the roots, a missing file is "not allowed" too: no existence oracle.
        assert!(matches!(
            r.open(Path::new("/nonexistent/x.mp4")),
            Err(FileAccessError::NotAllowed { .. })
        ));
    }

    #[test]
    fn a_fifo_inside_a_root_is_refused_without_blocking() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("assets")).expect("mkdir");
        let fifo = tmp.path().join("assets/pipe.mp4");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        assert!(matches!(
            roots(tmp.path()).open(&fifo),
            Err(FileAccessError::NotRegular { .. })
        ));
    }

    #[test]
    fn storage_roots_resolve_dots_and_links() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("mp4/cams")).expect("mkdir");
        std::fs::create_dir_all(dir.join("elsewhere")).expect("mkdir");
        std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("mp4/out")).expect("link");
        let r = StorageRoots::new(vec![dir.join("mp4")]);
        assert!(r.contains(&dir.join("mp4")));
        assert!(r.contains(&dir.join("mp4/cams/a")));
        assert!(r.contains(&dir.join("mp4/not/yet/made")));
        assert!(!r.contains(&dir.join("mp4/../elsewhere")));
        assert!(!r.contains(&dir.join("mp4/out")));
        assert!(!r.contains(&dir.join("mp4/out/deeper/new")));
        assert!(!r.contains(&dir.join("mp4/cams/../../elsewhere")));
        assert!(!r.contains(&dir.join("mp4x")), "whole components only");
        assert!(!r.contains(Path::new("/etc")));
    }

    #[test]
    fn normalize_applies_dots() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize(Path::new("/../..")), PathBuf::from("/"));
    }
}
