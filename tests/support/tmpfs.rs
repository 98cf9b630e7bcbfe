//! A size-limited tmpfs for disk-full tests (CI runs as root). Unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs of a fixed size.
pub struct Tmpfs {
    path: PathBuf,
    /// Keeps the mount point's parent directory alive.
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` at a new directory. Panics (with the reason) if mounting is
    /// not possible: these tests need root.
    pub fn mount(size_bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_bytes},mode=0755"))
            .arg("tmpfs")
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (the disk-full tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path, _dir: dir }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Free bytes (for unprivileged users) on the filesystem.
    pub fn free_bytes(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.path).expect("statvfs");
        st.f_bavail * st.f_frsize
    }

    /// Writes `name` with zeros until it is `bytes` long or the filesystem is full. Returns the
    /// size reached.
    pub fn fill(&self, name: &str, bytes: u64) -> u64 {
        use std::io::Write;
        let path = self.path.join(name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("ballast file");
        let chunk = vec![0u8; 64 * 1024];
        let mut len = f.metadata().expect("metadata").len();
        while len < bytes {
            let n = chunk.len().min((bytes - len) as usize);
            match f.write(&chunk[..n]) {
                Ok(0) | Err(_) => break,
                Ok(w) => len += w as u64,
            }
        }
        let _ = f.sync_all();
        f.metadata().map(|m| m.len()).unwrap_or(len)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
