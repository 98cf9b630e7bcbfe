//! A private PostgreSQL instance for fault tests: its own data directory (a temp dir), its own
//! port, started and stopped by the test. Tests that stop the database use this, never the shared
//! server the other tests run on.
//!
//! Needs the Debian `postgresql` package (`initdb`, `pg_ctl` under /usr/lib/postgresql/*/bin;
//! scripts/test installs it). As root, the server runs as the `postgres` user (it refuses root).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A private Postgres server. Stopped (immediately) and removed on drop.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    running: bool,
}

/// The directory holding `initdb` and `pg_ctl` (the newest installed version).
fn pg_bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .expect("initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    // The effective uid (second field of `Uid:`), without a libc binding.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs a Postgres tool, as the `postgres` user when we are root.
fn run(bin: &Path, tool: &str, args: &[&str]) -> std::process::Output {
    let exe = bin.join(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args)
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PrivatePostgres {
    /// Creates a cluster (trust authentication, database `test`) and starts it.
    pub fn start() -> PrivatePostgres {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("pg-private-")
            .tempdir()
            .expect("temp dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the private Postgres directory");
        }
        let data = dir.path().join("data");
        let out = run(
            &bin,
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = PrivatePostgres {
            bin,
            dir,
            port: 0,
            running: false,
        };
        // The port is free when chosen; should another process take it before the server binds
        // it, the start fails and we try another.
        for _ in 0..5 {
            pg.port = free_port();
            if pg.try_start() {
                pg.create_database("test");
                return pg;
            }
        }
        panic!("the private Postgres did not start: {}", pg.log());
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn try_start(&mut self) -> bool {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let out = run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.log_path().display().to_string(),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        self.running = out.status.success();
        self.running
    }

    /// Starts the server again on the same port and data directory (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        assert!(
            self.try_start(),
            "the private Postgres did not restart: {}",
            self.log()
        );
    }

    /// Stops the server: `fast` (clients disconnected, clean shutdown) or `immediate` (like a
    /// crash).
    pub fn stop(&mut self, mode: &str) {
        let out = self.pg_ctl_stop(mode);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    fn pg_ctl_stop(&self, mode: &str) -> std::process::Output {
        let data = self.data().display().to_string();
        run(
            &self.bin,
            "pg_ctl",
            &["-D", &data, "-m", mode, "-w", "stop"],
        )
    }

    /// The postmaster and every process it started (its backends and workers).
    fn processes(&self) -> Vec<u32> {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .expect("postmaster.pid (is the server running?)");
        let postmaster: u32 = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("postmaster pid");
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // `pid (comm) state ppid ...`: the parent is the second field after the name.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    fn signal_all(&self, signal: &str) {
        let pids: Vec<String> = self.processes().iter().map(u32::to_string).collect();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(&pids)
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pids:?}");
    }

    /// Freezes the server (SIGSTOP to every Postgres process): connections stay open and nothing
    /// answers, as when its host hangs or the network drops packets. [`thaw`](Self::thaw) resumes.
    pub fn freeze(&self) {
        self.signal_all("STOP");
    }

    /// Resumes a [`freeze`](Self::freeze)d server.
    pub fn thaw(&self) {
        self.signal_all("CONT");
    }

    fn create_database(&self, name: &str) {
        let out = run(
            &self.bin,
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ],
        );
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// URL of database `test` on this server.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/test", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            // A frozen server cannot stop: wake it first (harmless when it runs).
            if let Ok(pids) = std::panic::catch_unwind(|| self.processes()) {
                let _ = Command::new("kill")
                    .arg("-CONT")
                    .args(pids.iter().map(u32::to_string))
                    .status();
            }
            let _ = self.pg_ctl_stop("immediate");
        }
    }
}
