//! The server started as a library, inside the test process (`server::start`), on 127.0.0.1:0
//! with both io drivers: the `etcd-client` crate puts, reads, runs a txn, watches and leases;
//! `/metrics`, `/health`, `/livez`, `/readyz` and `/version` answer on the client port and on a
//! `--listen-metrics-urls` listener; then a graceful stop. The other integration tests run the
//! `metastore` binary as a process; this one is what `scripts/coverage` counts for the server's
//! own modules (server, reactor, conn, http, metrics, watch).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http_get, parse_metric_sum, temp_dir, DRIVERS};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use metastore_core::config::{self, Command};
use metastore_core::server;

fn start(driver: &str, dir: &std::path::Path) -> server::Server {
    let data = dir.join("data");
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--listen-client-urls",
        "http://127.0.0.1:0",
        "--listen-metrics-urls",
        "http://127.0.0.1:0",
        "--io-driver",
        driver,
        "--cores",
        "2",
        "--metrics",
        "extensive",
    ];
    let Command::Serve(cfg) = config::parse(args, &[]).unwrap() else { panic!("not a serve command") };
    server::start(*cfg).unwrap()
}

async fn traffic(addr: SocketAddr) {
    let mut c = Client::connect([format!("http://{addr}")], None).await.unwrap();
    let mut stream = c.watch("k", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert!(first.created());
    for i in 0..20 {
        c.put(format!("k{i}"), format!("v{i}"), None).await.unwrap();
    }
    let r = c.get("k", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(r.kvs().len(), 20);
    let mut events = 0;
    while events < 20 {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
        events += m.events().iter().filter(|e| e.event_type() == EventType::Put).count();
    }
    let lease = c.lease_grant(60, None).await.unwrap();
    c.put("leased", "x", Some(etcd_client::PutOptions::new().with_lease(lease.id()))).await.unwrap();
    let ttl = c.lease_time_to_live(lease.id(), None).await.unwrap();
    assert!(ttl.ttl() > 0);
    c.lease_revoke(lease.id()).await.unwrap();
    assert_eq!(c.get("leased", None).await.unwrap().kvs().len(), 0);
    let status = c.status().await.unwrap();
    assert!(status.raft_index() > 0);
}

#[test]
fn the_library_server_serves_clients_and_http_and_stops() {
    for driver in DRIVERS {
        let dir = temp_dir("inproc");
        let srv = start(driver, &dir);
        let addr = srv.client_addrs[0];
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(traffic(addr));
        drop(rt);
        let murl = std::fs::read_to_string(dir.join("data").join("metrics-urls")).unwrap();
        let maddr: SocketAddr = murl.lines().next().unwrap().trim_start_matches("http://").parse().unwrap();
        for a in [addr, maddr] {
            let (status, m) = http_get(a, "/metrics").unwrap();
            assert_eq!(status, 200, "[{driver}]");
            assert!(parse_metric_sum(&m, "etcd_mvcc_put_total") >= 21.0, "[{driver}]");
            assert!(m.contains("grpc_server_handling_seconds_count{grpc_method=\"Put\""), "[{driver}]");
            for path in ["/health", "/livez", "/readyz", "/readyz?verbose"] {
                assert_eq!(http_get(a, path).unwrap().0, 200, "[{driver}] {path}");
            }
        }
        assert_eq!(http_get(addr, "/version").unwrap().0, 200, "[{driver}]");
        assert_eq!(http_get(maddr, "/version").unwrap().0, 404, "[{driver}]");
        srv.stop();
        srv.join();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
