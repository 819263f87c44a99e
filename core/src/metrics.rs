//! Metrics under etcd's names (reference §6.2) for what MetaStore has beyond the per-core
//! figures in `http.rs`: the server's identity and quota, the shard's operation and lease
//! counts, and the Prometheus client's process metrics (read from `/proc` at scrape time).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::reactor::Shared;

fn family(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn one(s: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(s, name, kind, help);
    let _ = writeln!(s, "{name} {value}");
}

/// Appends go-grpc-prometheus's `grpc_server_*` families as etcd exports them: every method
/// pre-initialised (`handled` with every code), each core's counts summed.
/// `/metastore.Bench/Null` appears only when it is served.
pub fn write_grpc(shared: &Shared, s: &mut String) {
    use metastore_net::grpc::{Code, HANDLING_BUCKETS};
    let methods: Vec<(usize, &(&str, &str, &str))> = crate::conn::METHODS
        .iter()
        .enumerate()
        .filter(|(_, (svc, _, _))| shared.cfg.bench_null || *svc != "metastore.Bench")
        .collect();
    let cores = || shared.stats.iter().map(|c| &*c.grpc);
    let labels =
        |(svc, m, t): &(&str, &str, &str)| format!("grpc_method=\"{m}\",grpc_service=\"{svc}\",grpc_type=\"{t}\"");
    type Get = fn(&metastore_net::grpc::CallStats, usize) -> u64;
    let simple: [(&str, &str, Get); 3] = [
        ("grpc_server_started_total", "Total number of RPCs started on the server.", |c, i| c.started(i)),
        ("grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.", |c, i| {
            c.received(i)
        }),
        ("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.", |c, i| c.sent(i)),
    ];
    for (name, help, get) in simple {
        family(s, name, "counter", help);
        for &(i, m) in &methods {
            let v: u64 = cores().map(|c| get(c, i)).sum();
            let _ = writeln!(s, "{name}{{{}}} {v}", labels(m));
        }
    }
    family(
        s,
        "grpc_server_handled_total",
        "counter",
        "Total number of RPCs completed on the server, regardless of success or failure.",
    );
    for &(i, m) in &methods {
        for (code, code_name) in Code::GO_NAMES.iter().enumerate() {
            let v: u64 = cores().map(|c| c.handled(i, code)).sum();
            let _ = writeln!(s, "grpc_server_handled_total{{grpc_code=\"{code_name}\",{}}} {v}", labels(m));
        }
    }
    if !shared.stats.first().is_some_and(|c| c.grpc.has_handling_time()) {
        return;
    }
    family(
        s,
        "grpc_server_handling_seconds",
        "histogram",
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
    );
    for &(i, m) in &methods {
        let l = labels(m);
        let mut buckets = [0u64; HANDLING_BUCKETS.len()];
        let mut sum_us = 0u64;
        for c in cores() {
            let (b, us) = c.handling_time(i);
            for (acc, v) in buckets.iter_mut().zip(b) {
                *acc += v;
            }
            sum_us += us;
        }
        // Every handled call was timed: the count is the handled total.
        let count: u64 = cores().map(|c| (0..Code::COUNT).map(|code| c.handled(i, code)).sum::<u64>()).sum();
        let mut cumulative = 0;
        for (le, b) in HANDLING_BUCKETS.iter().zip(buckets) {
            cumulative += b;
            let _ = writeln!(s, "grpc_server_handling_seconds_bucket{{{l},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(s, "grpc_server_handling_seconds_bucket{{{l},le=\"+Inf\"}} {count}");
        let _ = writeln!(s, "grpc_server_handling_seconds_sum{{{l}}} {}", sum_us as f64 / 1e6);
        let _ = writeln!(s, "grpc_server_handling_seconds_count{{{l}}} {count}");
    }
}

/// Appends etcd's server, MVCC, lease and process metrics.
pub fn write_etcd(shared: &Shared, s: &mut String) {
    let st = &shared.shard_stats;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    family(
        s,
        "etcd_server_version",
        "gauge",
        "Which version is running. 1 for 'server_version' label with current version.",
    );
    let _ = writeln!(s, "etcd_server_version{{server_version=\"{}\"}} 1", crate::shard::VERSION);
    family(
        s,
        "etcd_cluster_version",
        "gauge",
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
    );
    let _ = writeln!(s, "etcd_cluster_version{{cluster_version=\"3.5\"}} 1");
    family(
        s,
        "etcd_server_id",
        "gauge",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
    );
    let _ = writeln!(s, "etcd_server_id{{server_id=\"{:x}\"}} 1", shared.cfg.member_id());
    one(s, "etcd_server_is_learner", "gauge", "Whether or not this member is a learner. 1 if is, 0 otherwise.", 0);
    one(
        s,
        "etcd_server_quota_backend_bytes",
        "gauge",
        "Current backend storage quota size in bytes.",
        shared.cfg.quota_backend_bytes,
    );
    // A single voter elects itself once per start.
    one(s, "etcd_server_leader_changes_seen_total", "counter", "The number of leader changes seen.", 1);
    one(
        s,
        "etcd_server_proposals_pending",
        "gauge",
        "The current number of pending proposals to commit.",
        get(&st.proposals_pending),
    );
    let c = &st.counters;
    for (name, help, v) in [
        ("etcd_mvcc_range_total", "Total number of ranges seen by this member.", &c.ranges),
        ("etcd_mvcc_put_total", "Total number of puts seen by this member.", &c.puts),
        ("etcd_mvcc_delete_total", "Total number of deletes seen by this member.", &c.deletes),
        ("etcd_mvcc_txn_total", "Total number of txns seen by this member.", &c.txns),
        ("etcd_debugging_lease_granted_total", "The total number of granted leases.", &c.leases_granted),
        ("etcd_debugging_lease_revoked_total", "The total number of revoked leases.", &c.leases_revoked),
        ("etcd_debugging_lease_renewed_total", "The number of renewed leases seen by the leader.", &c.leases_renewed),
        ("etcd_debugging_server_lease_expired_total", "The total number of expired leases.", &c.leases_expired),
    ] {
        one(s, name, "counter", help, get(v));
    }
    one(s, "etcd_debugging_mvcc_keys_total", "gauge", "Total number of keys.", get(&st.keys));
    one(
        s,
        "etcd_debugging_mvcc_compact_revision",
        "gauge",
        "The revision of the last compaction in store.",
        get(&st.compact_revision),
    );
    write_process(s);
}

/// The Prometheus client's standard process metrics, and etcd's `os_fd_*`.
fn write_process(s: &mut String) {
    // SAFETY: sysconf with a valid name has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces) start at state (field 3).
        if let Some((_, rest)) = stat.rsplit_once(") ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // utime and stime are fields 14 and 15, starttime 22 (1-based), here 11, 12, 19.
            let cpu = (num(11) + num(12)) / ticks;
            one(s, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpu);
            let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
                t.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))
            });
            if let Some(boot) = boot {
                one(
                    s,
                    "process_start_time_seconds",
                    "gauge",
                    "Start time of the process since unix epoch in seconds.",
                    boot + num(19) / ticks,
                );
            }
        }
    }
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let f: Vec<u64> = statm.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        if f.len() >= 2 {
            one(s, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", f[0] * page);
            one(s, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", f[1] * page);
        }
    }
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur } else { 0 };
    one(s, "process_open_fds", "gauge", "Number of open file descriptors.", open);
    one(s, "process_max_fds", "gauge", "Maximum number of open file descriptors.", max);
    one(s, "os_fd_used", "gauge", "The number of used file descriptors.", open);
    one(s, "os_fd_limit", "gauge", "The file descriptor limit.", max);
}
