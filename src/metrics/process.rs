//! The process: memory, file descriptors, CPU time and threads (Linux, from `/proc/self`; the
//! standard `process_*` names), tokio tasks, and stream runtime starts and stops.

use prometheus_client::registry::Unit;

use super::Sources;
use super::{Families, int, one};

/// What `/proc` says about this process.
#[derive(Debug, Default, Clone, PartialEq)]
struct ProcStats {
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
    threads: Option<u64>,
    start_time_s: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

/// The unit of the CPU times in `/proc` (`USER_HZ`: 100 on every architecture Linux runs us on;
/// the kernel converts to it whatever its own tick rate).
const USER_HZ: f64 = 100.0;

/// CPU time and start time from `/proc/self/stat` (the fields after the command name, which may
/// hold spaces and parentheses).
fn parse_stat(stat: &str, boot_time_s: Option<u64>) -> ProcStats {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return ProcStats::default();
    };
    // `rest` starts with field 3 (state); field n is at index n - 3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    ProcStats {
        cpu_seconds: num(14)
            .zip(num(15))
            .map(|(user, system)| (user + system) as f64 / USER_HZ),
        start_time_s: num(22)
            .zip(boot_time_s)
            .map(|(start, boot)| boot as f64 + start as f64 / USER_HZ),
        ..ProcStats::default()
    }
}

/// Memory and threads from `/proc/self/status` (`VmRSS`, `VmSize` in kB; `Threads`).
fn parse_status(status: &str, into: &mut ProcStats) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    into.resident_bytes = field("VmRSS:").map(|kb| kb * 1024);
    into.virtual_bytes = field("VmSize:").map(|kb| kb * 1024);
    into.threads = field("Threads:");
}

/// The soft `Max open files` limit from `/proc/self/limits`.
fn parse_max_fds(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(target_os = "linux")]
fn read_proc() -> ProcStats {
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .as_deref()
        .and_then(parse_boot_time);
    let mut stats = std::fs::read_to_string("/proc/self/stat")
        .map(|s| parse_stat(&s, boot))
        .unwrap_or_default();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        parse_status(&status, &mut stats);
    }
    stats.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    stats.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .as_deref()
        .and_then(parse_max_fds);
    stats
}

#[cfg(not(target_os = "linux"))]
fn read_proc() -> ProcStats {
    ProcStats::default()
}

pub fn encode(state: &Sources, out: &mut Families) -> std::fmt::Result {
    let p = read_proc();
    let int_of = |v: Option<u64>| v.map(|n| one(int(n))).into_iter().flatten();
    out.gauge(
        "process_resident_memory",
        "Resident memory size",
        Some(Unit::Bytes),
        int_of(p.resident_bytes),
    )?;
    out.gauge(
        "process_virtual_memory",
        "Virtual memory size",
        Some(Unit::Bytes),
        int_of(p.virtual_bytes),
    )?;
    out.gauge(
        "process_open_fds",
        "Open file descriptors",
        None,
        int_of(p.open_fds),
    )?;
    out.gauge(
        "process_max_fds",
        "Most open file descriptors allowed (soft limit)",
        None,
        int_of(p.max_fds),
    )?;
    out.gauge("process_threads", "OS threads", None, int_of(p.threads))?;
    out.counter_f64(
        "process_cpu",
        "User and system CPU time",
        Some(Unit::Seconds),
        p.cpu_seconds.map(one).into_iter().flatten(),
    )?;
    out.gauge_f64(
        "process_start_time",
        "Start time of the process since the Unix epoch",
        Some(Unit::Seconds),
        p.start_time_s.map(one).into_iter().flatten(),
    )?;

    // Tokio: tasks alive now (every stream, connection and upkeep task).
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let m = handle.metrics();
        out.gauge(
            "video_server_tokio_tasks",
            "Tokio tasks alive now",
            None,
            one(int(m.num_alive_tasks() as u64)),
        )?;
        out.gauge(
            "video_server_tokio_workers",
            "Tokio worker threads",
            None,
            one(int(m.num_workers() as u64)),
        )?;
    }

    // Stream runtimes.
    let c = state.manager.counters().snapshot();
    out.counter(
        "video_server_runtime_starts",
        "Stream runtimes started (a stream enabled, created, or restarted by a change)",
        None,
        one(c.started),
    )?;
    out.counter(
        "video_server_runtime_stops",
        "Stream runtimes stopped and awaited",
        None,
        one(c.stopped),
    )?;
    out.counter(
        "video_server_runtime_spec_updates",
        "Changes applied to a running stream without a restart (name, retention, ...)",
        None,
        one(c.spec_updates),
    )?;
    out.counter(
        "video_server_runtime_stop_timeouts",
        "Stops whose tasks did not finish in time and were aborted",
        None,
        one(c.stop_timeouts),
    )?;
    out.counter(
        "video_server_runtime_task_panics",
        "Stream tasks that ended with a panic",
        None,
        one(c.task_panics),
    )?;
    // Cluster mode only: how many cameras this node holds (an uneven spread, or a node at 0 while
    // others are full, shows here).
    if let Some(node) = state.manager.node_id() {
        out.gauge(
            "video_server_cluster_leases_held",
            "Camera leases this cluster node holds",
            None,
            [(
                super::labels([("node", &node)]),
                int(state.manager.held().len() as u64),
            )],
        )?;
        out.gauge(
            "video_server_relay_upstreams",
            "Upstream connections open to other nodes to relay live streams they hold (one per \
             stream at most, shared by this node's viewers of it)",
            None,
            one(int(state
                .metrics
                .relay_upstreams
                .load(std::sync::atomic::Ordering::Relaxed))),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        // A command name with spaces and a parenthesis, as the kernel writes it.
        let stat = "4242 (video (server) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                    17 0 12345 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let mut p = parse_stat(stat, Some(1_700_000_000));
        assert_eq!(p.cpu_seconds, Some(3.0));
        assert_eq!(p.start_time_s, Some(1_700_000_123.45));
        assert_eq!(parse_stat("garbage", None), ProcStats::default());
        parse_status(
            "Name:\tvideo-server\nVmSize:\t  987654 kB\nVmRSS:\t    2048 kB\nThreads:\t17\n",
            &mut p,
        );
        assert_eq!(p.threads, Some(17));
        assert_eq!(p.virtual_bytes, Some(987_654 * 1024));
        assert_eq!(p.resident_bytes, Some(2048 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_is_measured() {
        let p = read_proc();
        if cfg!(target_os = "linux") {
            assert!(p.resident_bytes.is_some_and(|b| b > 0), "{p:?}");
            assert!(p.open_fds.is_some_and(|n| n > 0), "{p:?}");
            assert!(p.cpu_seconds.is_some(), "{p:?}");
            assert!(p.start_time_s.is_some_and(|s| s > 1e9), "{p:?}");
        }
    }
}
