//! go-grpc-prometheus's `grpc_server_*` metrics, against etcd 3.4.23's: the same etcdctl
//! commands (puts, gets, a delete, a compaction, a read of a compacted revision that fails
//! OutOfRange, a watch) are run against both, and every KV and Watch series must come out with
//! the same labels and values. The MetaStore side is scraped from a `--listen-metrics-urls`
//! listener, which serves only /metrics and the health endpoints over HTTP/1.1; with
//! `--metrics extensive` the handling-time histogram counts every handled call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::etcd::{Etcd, INSTALL};
use common::{http_get, TestServer, DRIVERS};

const ETCDCTL: &str = "/usr/bin/etcdctl";

/// Runs etcdctl (API v3) against `url`; returns whether it succeeded.
fn etcdctl(url: &str, args: &[&str]) -> bool {
    Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", url, "--dial-timeout", "5s", "--command-timeout", "10s"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {ETCDCTL} ({e}): {INSTALL}"))
        .success()
}

/// The same commands against either server.
fn workload(url: &str) {
    for v in ["1", "2", "3"] {
        assert!(etcdctl(url, &["put", "k", v]));
    }
    assert!(etcdctl(url, &["get", "k"]));
    assert!(etcdctl(url, &["get", "k", "--prefix"]));
    assert!(etcdctl(url, &["compaction", "3"]));
    assert!(!etcdctl(url, &["get", "k", "--rev", "2"]), "a compacted revision fails");
    assert!(etcdctl(url, &["del", "k"]));
    // A watch that sees one event: two messages out (created, the event), one in.
    let mut w = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", url, "watch", "k", "--rev", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = w.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("DELETE") {
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert!(n > 0, "etcdctl watch ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    // Ends the stream from the client side (the call is then handled as Canceled).
    let pid = rustix::process::Pid::from_raw(w.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    w.wait().unwrap();
}

/// The `grpc_server_*` lines of `text` for KV and Watch methods (sorted).
fn grpc_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("grpc_server_") && !l.starts_with("grpc_server_handling_seconds"))
        .filter(|l| l.contains("grpc_service=\"etcdserverpb.KV\"") || l.contains("grpc_service=\"etcdserverpb.Watch\""))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    body
}

/// Polls until the watch's cancellation is counted (it lands after the client is gone).
fn scrape_settled(addr: SocketAddr) -> String {
    for _ in 0..100 {
        let m = scrape(addr);
        if m.lines().any(|l| {
            l.starts_with("grpc_server_handled_total{grpc_code=\"Canceled\",grpc_method=\"Watch\"") && l.ends_with(" 1")
        }) {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    scrape(addr)
}

#[test]
fn grpc_server_metrics_match_etcd() {
    let etcd = Etcd::start();
    workload(&etcd.url());
    let want = grpc_lines(&scrape_settled(etcd.client));
    drop(etcd);
    assert!(
        want.iter().any(|l| l.contains("grpc_code=\"OutOfRange\",grpc_method=\"Range\"") && l.ends_with(" 1")),
        "the oracle has the failed read: {want:#?}"
    );
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &["--listen-metrics-urls", "http://127.0.0.1:0", "--metrics", "extensive"]);
        let murls = std::fs::read_to_string(srv.dir.join("data").join("metrics-urls")).unwrap();
        let maddr: SocketAddr = murls.lines().next().unwrap().trim_start_matches("http://").parse().unwrap();
        assert_ne!(maddr, srv.addr);
        workload(&srv.url());
        let text = scrape_settled(maddr);
        let got = grpc_lines(&text);
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(g, w, "[{driver}] differs from etcd 3.4.23:\netcd:\n{want:#?}\nmetastore:\n{got:#?}");
        }
        assert_eq!(got.len(), want.len(), "[{driver}]\netcd:\n{want:#?}\nmetastore:\n{got:#?}");

        // --metrics extensive: every handled Range was timed.
        let count = text
            .lines()
            .find(|l| l.starts_with("grpc_server_handling_seconds_count{grpc_method=\"Range\""))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("[{driver}] no handling time for Range:\n{text}"));
        assert_eq!(count, "3", "[{driver}] two gets and the failed one");
        let inf = text
            .lines()
            .find(|l| l.starts_with("grpc_server_handling_seconds_bucket{grpc_method=\"Put\"") && l.contains("+Inf"))
            .unwrap();
        assert!(inf.ends_with(" 3"), "[{driver}] {inf}");

        // MetaStore's per-core figures: cross-core requests, the ring's depth, IO submissions.
        for name in ["metastore_core_shard_requests_total", "metastore_core_ring_depth"] {
            assert!(text.contains(&format!("{name}{{core=\"0\"}}")), "[{driver}] no {name}");
        }
        let io = common::parse_metric_sum(&text, "metastore_core_io_submissions_total");
        assert!(io >= 20.0, "[{driver}] {io} IO submissions for the session's calls and fsyncs");

        // The metrics port: /metrics and health, nothing else, no gRPC.
        assert_eq!(http_get(maddr, "/health").unwrap().0, 200, "[{driver}]");
        assert_eq!(http_get(maddr, "/readyz").unwrap().0, 200, "[{driver}]");
        assert_eq!(http_get(maddr, "/livez/serializable_read").unwrap().0, 200, "[{driver}]");
        assert_eq!(http_get(maddr, "/version").unwrap().0, 404, "[{driver}]");
        assert_eq!(http_get(srv.addr, "/version").unwrap().0, 200, "[{driver}]");
        assert!(!etcdctl(&format!("http://{maddr}"), &["get", "k", "--command-timeout", "2s"]), "[{driver}]");
        srv.stop();
    }
}
