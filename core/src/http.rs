//! The plain HTTP endpoints served on the client port, over HTTP/1.1 and over HTTP/2 alike.
//! Each core's counters are read here with relaxed loads and summed per core label.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use metastore_net::grpc::HttpResponse;

use crate::reactor::Shared;

use crate::shard::VERSION as ETCD_API_VERSION;

/// The response for a known path; None for anything else.
pub fn route(shared: &Shared, _method: &[u8], path: &[u8]) -> Option<HttpResponse> {
    let path = path.split(|&b| b == b'?').next().unwrap_or(path);
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

/// Go's ServeMux answer for an unknown path, as etcd gives it over HTTP/1.1.
pub fn not_found() -> HttpResponse {
    HttpResponse { status: 404, content_type: "text/plain; charset=utf-8", body: b"404 page not found\n".to_vec() }
}

/// name, type, help, and how to read the value from one core's counters.
type Series = (&'static str, &'static str, &'static str, fn(&crate::reactor::CoreStats) -> u64);

/// Prometheus text exposition of MetaStore's per-core figures.
pub fn metrics(shared: &Shared) -> String {
    let mut s = String::new();
    let series: [Series; 4] = [
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
            "metastore_core_ring_full_total",
            "counter",
            "Times a request waited because the ring to the shard was full (backpressure).",
            |c| c.ring_full_waits.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, c) in shared.stats.iter().enumerate() {
            let _ = writeln!(s, "{name}{{core=\"{i}\"}} {}", get(c));
        }
    }
    let _ = writeln!(
        s,
        "# HELP metastore_io_driver The io driver of the reactors.\n# TYPE metastore_io_driver gauge\nmetastore_io_driver{{driver=\"{}\"}} 1",
        shared.driver
    );
    s
}
