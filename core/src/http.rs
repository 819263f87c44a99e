//! The plain HTTP endpoints served on the client port, over HTTP/1.1 and over HTTP/2 alike.
//! Each core's counters are read here with relaxed loads and summed per core label.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use metastore_net::grpc::HttpResponse;

use crate::reactor::Shared;

use crate::shard::VERSION as ETCD_API_VERSION;

/// The response for a known path; None for anything else.
/// What a `--listen-metrics-urls` listener serves: /metrics, /health, /livez and /readyz, as
/// etcd's metrics port (no /version, no gRPC).
pub fn route_metrics(shared: &Shared, method: &[u8], target: &[u8]) -> Option<HttpResponse> {
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    let served = path == b"/metrics"
        || path == b"/health"
        || [&b"/livez"[..], &b"/readyz"[..]].iter().any(|p| path == *p || path.starts_with(&[p, &b"/"[..]].concat()));
    if served {
        route(shared, method, target)
    } else {
        None
    }
}

pub fn route(shared: &Shared, method: &[u8], target: &[u8]) -> Option<HttpResponse> {
    let mut parts = target.splitn(2, |&b| b == b'?');
    let path = parts.next().unwrap_or(target);
    let query = std::str::from_utf8(parts.next().unwrap_or(b"")).unwrap_or("");
    if path == b"/health" {
        return Some(health(shared, method, query));
    }
    for (prefix, checks) in [(&b"/livez"[..], &LIVEZ[..]), (&b"/readyz"[..], &READYZ[..])] {
        if let Some(rest) = path.strip_prefix(prefix) {
            let only = match rest {
                b"" | b"/" => None,
                r => Some(std::str::from_utf8(&r[1..]).unwrap_or("")),
            };
            let name = std::str::from_utf8(prefix).unwrap_or("");
            return Some(checks_response(shared, name, checks, only, query));
        }
    }
    match path {
        b"/" => Some(HttpResponse {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            body: format!(
                "MetaStore {}: the etcd v3 API (gRPC, HTTP/2 with prior knowledge) on this port\n",
                env!("CARGO_PKG_VERSION")
            )
            .into_bytes(),
        }),
        // etcd's body: the server's version and the cluster's (one member: the same).
        b"/version" => Some(HttpResponse {
            status: 200,
            content_type: "application/json",
            body: format!("{{\"etcdserver\":\"{ETCD_API_VERSION}\",\"etcdcluster\":\"{ETCD_API_VERSION}\"}}")
                .into_bytes(),
        }),
        b"/metrics" => Some(HttpResponse {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics(shared).into_bytes(),
        }),
        _ => None,
    }
}

/// How long the shard loop may go without a round before reads count as failing (a stuck
/// shard: etcd's probe read would time out).
const SHARD_STUCK_MS: u64 = 5_000;

/// What stops the server from serving reads now, if anything.
fn read_problem(shared: &Shared) -> Option<String> {
    let st = &shared.shard_stats;
    let at = st.loop_at_ms.load(Ordering::Relaxed);
    let now = st.now_ms();
    if now.saturating_sub(at) > SHARD_STUCK_MS {
        return Some(format!("the shard has not gone round for {} ms", now - at));
    }
    None
}

fn query_values<'q>(query: &'q str, key: &str) -> impl Iterator<Item = &'q str> + 'q {
    let key = key.to_string();
    query.split('&').filter_map(move |kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// etcd 3.4's `/health`: GET only; 200 `{"health":"true"}`, or 503 `{"health":"false"}` with an
/// active alarm (unless `exclude=NOSPACE|CORRUPT`), a failed data disk or a stuck shard.
/// (etcd 3.5 adds a `reason` field; 3.4.23's body is kept, as its clients parse it.)
fn health(shared: &Shared, method: &[u8], query: &str) -> HttpResponse {
    if method != b"GET" {
        return HttpResponse {
            status: 405,
            content_type: "text/plain; charset=utf-8",
            body: b"Method Not Allowed\n".to_vec(),
        };
    }
    let st = &shared.shard_stats;
    let alarms = st.alarms.load(Ordering::Relaxed);
    let excluded = |name: &str| query_values(query, "exclude").any(|v| v == name);
    let alarm = (alarms & crate::reactor::ShardStats::ALARM_NOSPACE != 0 && !excluded("NOSPACE"))
        || (alarms & crate::reactor::ShardStats::ALARM_CORRUPT != 0 && !excluded("CORRUPT"));
    let bad = alarm || st.disk_failed.load(Ordering::Relaxed) != 0 || read_problem(shared).is_some();
    if bad {
        tracing::warn!(alarms, "/health: serving 503");
    }
    HttpResponse {
        status: if bad { 503 } else { 200 },
        content_type: "text/plain; charset=utf-8",
        body: if bad { br#"{"health":"false"}"#.to_vec() } else { br#"{"health":"true"}"#.to_vec() },
    }
}

type Check = (&'static str, fn(&Shared) -> Option<String>);

const LIVEZ: [Check; 1] = [("serializable_read", read_problem)];
const READYZ: [Check; 4] = [
    ("data_corruption", |s| {
        (s.shard_stats.alarms.load(Ordering::Relaxed) & crate::reactor::ShardStats::ALARM_CORRUPT != 0)
            .then(|| "alarm activated: CORRUPT".to_string())
    }),
    ("serializable_read", read_problem),
    ("linearizable_read", read_problem),
    ("non_learner", |_| None),
];

/// etcd 3.5's `/livez` and `/readyz` (3.4 has neither): "ok", or with `?verbose` one line per
/// check; 503 listing the failed checks. `exclude=<check>` skips one; `/<path>/<check>` runs one.
fn checks_response(shared: &Shared, path: &str, checks: &[Check], only: Option<&str>, query: &str) -> HttpResponse {
    let text = |status: u16, body: String| HttpResponse {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into_bytes(),
    };
    let mut lines = String::new();
    let mut failed = false;
    let mut matched = false;
    for (name, check) in checks {
        if only.is_some_and(|o| o != *name) {
            continue;
        }
        matched = true;
        if only.is_none() && query_values(query, "exclude").any(|v| v == *name) {
            let _ = writeln!(lines, "[+]{name} excluded: ok");
            continue;
        }
        match check(shared) {
            None => {
                let _ = writeln!(lines, "[+]{name} ok");
            }
            Some(why) => {
                failed = true;
                let _ = writeln!(lines, "[-]{name} failed: {why}");
            }
        }
    }
    if !matched {
        return not_found();
    }
    if failed {
        return text(503, format!("{lines}{path} check failed\n"));
    }
    if !query.split('&').any(|kv| kv.split('=').next() == Some("verbose")) {
        return text(200, "ok".into());
    }
    text(200, format!("{lines}{path} check passed\n"))
}

/// Go's ServeMux answer for an unknown path, as etcd gives it over HTTP/1.1.
pub fn not_found() -> HttpResponse {
    HttpResponse { status: 404, content_type: "text/plain; charset=utf-8", body: b"404 page not found\n".to_vec() }
}

/// name, type, help, and how to read the value from one core's counters.
type Series = (&'static str, &'static str, &'static str, fn(&crate::reactor::CoreStats) -> u64);

/// What each front-door limit and defence did, per core (README, Flags: "Limits at the front
/// door").
const DEFENCES: [Series; 15] = [
    (
        "metastore_connections_rejected_total",
        "counter",
        "Connections closed as they were accepted: --max-connections-per-core reached.",
        |c| c.defences.conns_rejected.load(Ordering::Relaxed),
    ),
    (
        "metastore_streams_refused_total",
        "counter",
        "HTTP/2 streams refused with REFUSED_STREAM: --max-concurrent-streams reached.",
        |c| c.defences.streams_refused.load(Ordering::Relaxed),
    ),
    (
        "metastore_header_lists_too_large_total",
        "counter",
        "Requests refused for a header list over --max-header-list-size.",
        |c| c.defences.header_lists_too_large.load(Ordering::Relaxed),
    ),
    (
        "metastore_too_many_pings_total",
        "counter",
        "Connections sent GOAWAY too_many_pings: pings more frequent than --grpc-keepalive-min-time.",
        |c| c.defences.too_many_pings.load(Ordering::Relaxed),
    ),
    (
        "metastore_rapid_reset_goaways_total",
        "counter",
        "Connections sent GOAWAY for resetting (or having refused) too many streams (rapid reset).",
        |c| c.defences.rapid_resets.load(Ordering::Relaxed),
    ),
    (
        "metastore_frame_flood_goaways_total",
        "counter",
        "Connections sent GOAWAY for a flood of frames carrying no request (SETTINGS, PING, PRIORITY, empty DATA).",
        |c| c.defences.frame_floods.load(Ordering::Relaxed),
    ),
    (
        "metastore_control_queue_goaways_total",
        "counter",
        "Connections sent GOAWAY for control frames piling up unread (SETTINGS/PING floods from a client that does not read).",
        |c| c.defences.control_queue_overflows.load(Ordering::Relaxed),
    ),
    (
        "metastore_continuation_flood_goaways_total",
        "counter",
        "Connections sent GOAWAY for a header block of too many CONTINUATION frames or bytes.",
        |c| c.defences.continuation_floods.load(Ordering::Relaxed),
    ),
    (
        "metastore_hpack_errors_total",
        "counter",
        "Connections sent GOAWAY COMPRESSION_ERROR (bad HPACK, e.g. a table size update over the limit).",
        |c| c.defences.hpack_errors.load(Ordering::Relaxed),
    ),
    (
        "metastore_header_timeouts_total",
        "counter",
        "Connections cut for not finishing a preface, frame, header block or HTTP/1.1 head within --read-header-timeout.",
        |c| c.defences.header_timeouts.load(Ordering::Relaxed),
    ),
    (
        "metastore_idle_connections_closed_total",
        "counter",
        "Connections closed by --idle-connection-timeout.",
        |c| c.defences.idle_closed.load(Ordering::Relaxed),
    ),
    (
        "metastore_rate_limited_connection_total",
        "counter",
        "Calls answered 'too many requests' by --request-rate-limit-per-connection.",
        |c| c.defences.rate_limited_conn.load(Ordering::Relaxed),
    ),
    (
        "metastore_rate_limited_core_total",
        "counter",
        "Calls answered 'too many requests' by --request-rate-limit-per-core.",
        |c| c.defences.rate_limited_core.load(Ordering::Relaxed),
    ),
    (
        "metastore_flow_control_holds_total",
        "counter",
        "Times a connection stopped taking calls while its responses waited for the client's flow-control credit.",
        |c| c.defences.flow_control_holds.load(Ordering::Relaxed),
    ),
    (
        "metastore_flow_control_refused_total",
        "counter",
        "Calls refused RESOURCE_EXHAUSTED on a connection held back by the client's flow control.",
        |c| c.defences.flow_control_refused.load(Ordering::Relaxed),
    ),
];

/// Prometheus text exposition of MetaStore's per-core figures.
pub fn metrics(shared: &Shared) -> String {
    let mut s = String::new();
    let series: [Series; 6] = [
        ("metastore_core_connections", "gauge", "Client HTTP/2 connections open on each core.", |c| {
            c.conns_open.load(Ordering::Relaxed)
        }),
        (
            "metastore_core_connections_accepted_total",
            "counter",
            "Client HTTP/2 connections accepted by each core.",
            |c| c.conns_accepted.load(Ordering::Relaxed),
        ),
        (
            "metastore_core_shard_requests_total",
            "counter",
            "Requests each core sent to the shard over its ring.",
            |c| c.shard_requests_sent.load(Ordering::Relaxed),
        ),
        (
            "metastore_core_ring_depth",
            "gauge",
            "Requests in each core's ring to the shard core (as of its last send or reply round).",
            |c| c.ring_depth.load(Ordering::Relaxed),
        ),
        (
            "metastore_core_io_submissions_total",
            "counter",
            "IO operations each core submitted (socket reads and writes; on the shard's core also the log's writes and fdatasyncs): io_uring submissions under the io_uring driver.",
            |c| c.io_submissions.load(Ordering::Relaxed),
        ),
        (
            "metastore_core_ring_full_total",
            "counter",
            "Times a request waited because the ring to the shard was full (backpressure).",
            |c| c.ring_full_waits.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, get) in series.into_iter().chain(DEFENCES) {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, c) in shared.stats.iter().enumerate() {
            let _ = writeln!(s, "{name}{{core=\"{i}\"}} {}", get(c));
        }
    }
    let st = &shared.shard_stats;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    // etcd's names where the figure is the same thing.
    let _ =
        writeln!(s, "# HELP etcd_disk_wal_fsync_duration_seconds The latency distributions of fsync called by WAL.");
    let _ = writeln!(s, "# TYPE etcd_disk_wal_fsync_duration_seconds histogram");
    let mut cumulative = 0;
    for (i, b) in crate::reactor::FSYNC_BUCKETS.iter().enumerate() {
        cumulative += get(&st.fsync_buckets[i]);
        let _ = writeln!(s, "etcd_disk_wal_fsync_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}");
    }
    cumulative += get(&st.fsync_buckets[crate::reactor::FSYNC_BUCKETS.len()]);
    let _ = writeln!(s, "etcd_disk_wal_fsync_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(s, "etcd_disk_wal_fsync_duration_seconds_sum {}", get(&st.fsync_us_total) as f64 / 1e6);
    let _ = writeln!(s, "etcd_disk_wal_fsync_duration_seconds_count {}", get(&st.fsyncs));
    for (name, kind, help, v) in [
        (
            "etcd_server_proposals_committed_total",
            "gauge",
            "The total number of consensus proposals committed.",
            get(&st.raft_committed),
        ),
        (
            "etcd_server_proposals_applied_total",
            "gauge",
            "The total number of consensus proposals applied.",
            get(&st.raft_applied),
        ),
        ("etcd_server_has_leader", "gauge", "Whether or not a leader exists. 1 is existence, 0 is not.", 1),
        ("etcd_server_is_leader", "gauge", "Whether or not this member is a leader. 1 if is, 0 otherwise.", 1),
        (
            "etcd_mvcc_db_total_size_in_bytes",
            "gauge",
            "Total size of the underlying database physically allocated in bytes.",
            get(&st.db_bytes),
        ),
        (
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "gauge",
            "Total size of the underlying database logically in use in bytes.",
            get(&st.db_bytes_in_use),
        ),
        ("etcd_debugging_mvcc_current_revision", "gauge", "The current revision of store.", get(&st.revision)),
        (
            "metastore_request_panics_total",
            "counter",
            "Requests whose handling panicked (each answered INTERNAL; the server went on).",
            get(&st.request_panics),
        ),
        (
            "etcd_debugging_mvcc_watcher_total",
            "gauge",
            "Total number of watchers.",
            shared.stats.iter().map(|c| get(&c.watchers)).sum(),
        ),
        (
            "metastore_writes_applied_total",
            "counter",
            "Client write requests applied (divided by the fsync count: writes per fsync).",
            get(&st.writes_applied),
        ),
    ] {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    let _ = writeln!(
        s,
        "# HELP metastore_trace_spans_dropped_total Spans not exported: the ring to the trace exporter was full, or too many sampled calls were open.\n# TYPE metastore_trace_spans_dropped_total counter"
    );
    for (i, c) in shared.stats.iter().enumerate() {
        let _ = writeln!(s, "metastore_trace_spans_dropped_total{{core=\"{i}\"}} {}", get(&c.spans_dropped));
    }
    crate::metrics::write_etcd(shared, &mut s);
    crate::metrics::write_grpc(shared, &mut s);
    let _ = writeln!(
        s,
        "# HELP metastore_io_driver The io driver of the reactors.\n# TYPE metastore_io_driver gauge\nmetastore_io_driver{{driver=\"{}\"}} 1",
        shared.driver
    );
    #[cfg(feature = "count-allocs")]
    crate::alloc_count::write_metric(&mut s);
    s
}
