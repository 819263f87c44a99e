//! Leases through the Rust `etcd-client` crate, with a real etcd 3.4.23 as the oracle: one
//! scripted session runs against etcd and against MetaStore on both io drivers and the
//! transcripts must match — grant with a chosen and a server-picked ID (shape only: IDs are
//! opaque), the TTL floor, the TTL ceiling's error, a duplicate ID's error; puts attaching and
//! moving keys; TimeToLive with keys; LeaseLeases; KeepAlive on one stream (answers in order,
//! TTL 0 for an unknown lease); revoke deleting every attached key in one revision (seen by a
//! watcher as DELETE events of one revision); revoke and put of an unknown lease failing with
//! etcd's error. Then, on MetaStore only: a lease left to expire takes its keys within TTL + 1 s
//! of the last keep-alive, in one revision, and a watcher sees the deletes; and leases survive a
//! SIGKILL and restart with their keys, getting a full TTL again (as etcd's leader does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{TestServer, DRIVERS};
use etcd_client::{Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions};

fn err(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => format!("other: {other}"),
    }
}

async fn session(url: String) -> Vec<String> {
    let mut c = Client::connect([url], None).await.expect("connect");
    let mut out = Vec::new();
    let base = c.put("l/base", "x", None).await.unwrap().header().unwrap().revision();

    let g = c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234))).await.unwrap();
    out.push(format!("grant chosen: id={:x} ttl={} err={:?}", g.id(), g.ttl(), g.error()));
    let auto = c.lease_grant(20, None).await.unwrap();
    out.push(format!("grant auto: positive={} ttl={}", auto.id() > 0, auto.ttl()));
    let small = c.lease_grant(1, None).await.unwrap();
    out.push(format!("grant ttl 1: ttl={}", small.ttl()));
    let zero = c.lease_grant(0, None).await.unwrap();
    out.push(format!("grant ttl 0: ttl={}", zero.ttl()));
    out.push(format!(
        "grant duplicate: {}",
        err(c.lease_grant(5, Some(LeaseGrantOptions::new().with_id(0x1234))).await.unwrap_err())
    ));
    out.push(format!("grant too large: {}", err(c.lease_grant(9_000_000_001, None).await.unwrap_err())));

    let mut w = c.watch("l/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    w.message().await.unwrap().unwrap(); // created
    c.put("l/a", "1", Some(PutOptions::new().with_lease(0x1234))).await.unwrap();
    c.put("l/b", "1", Some(PutOptions::new().with_lease(0x1234))).await.unwrap();
    c.put("l/c", "1", Some(PutOptions::new().with_lease(auto.id()))).await.unwrap();
    // Moved to the other lease, then detached.
    c.put("l/c", "2", Some(PutOptions::new().with_lease(0x1234))).await.unwrap();
    c.put("l/b", "2", None).await.unwrap();
    out.push(format!(
        "put unknown lease: {}",
        err(c.put("l/z", "1", Some(PutOptions::new().with_lease(0x999))).await.unwrap_err())
    ));
    let get = c.get("l/", Some(GetOptions::new().with_prefix())).await.unwrap();
    for kv in get.kvs() {
        let lease = match kv.lease() {
            0 => "none".to_string(),
            l if l == auto.id() => "auto".to_string(),
            l => format!("{l:x}"),
        };
        out.push(format!("key {} lease {lease}", kv.key_str().unwrap()));
    }

    let t = c.lease_time_to_live(0x1234, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    let mut keys: Vec<String> = t.keys().iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    keys.sort();
    out.push(format!(
        "ttl: id={:x} granted={} remaining_ok={} keys={keys:?}",
        t.id(),
        t.granted_ttl(),
        (28..=30).contains(&t.ttl())
    ));
    let t = c.lease_time_to_live(auto.id(), None).await.unwrap();
    out.push(format!("ttl auto without keys: granted={} keys={}", t.granted_ttl(), t.keys().len()));
    let t = c.lease_time_to_live(0x999, None).await.unwrap();
    out.push(format!("ttl unknown: id={:x} ttl={} granted={}", t.id(), t.ttl(), t.granted_ttl()));
    let mut ids: Vec<i64> = c.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
    ids.sort_unstable();
    let mut want = vec![0x1234, auto.id(), small.id(), zero.id()];
    want.sort_unstable();
    out.push(format!("leases listed: {}", ids == want));

    let (mut keeper, mut stream) = c.lease_keep_alive(0x1234).await.unwrap();
    for _ in 0..3 {
        keeper.keep_alive().await.unwrap();
        let r = stream.message().await.unwrap().unwrap();
        out.push(format!("keepalive: id={:x} ttl={}", r.id(), r.ttl()));
    }
    out.push(format!("keepalive unknown: {}", err(c.lease_keep_alive(0x999).await.map(|_| ()).unwrap_err())));

    let r = c.lease_revoke(0x1234).await.unwrap();
    let rev = r.header().unwrap().revision() - base;
    out.push(format!("revoke: rev +{rev}"));
    out.push(format!("revoke again: {}", err(c.lease_revoke(0x1234).await.unwrap_err())));
    // The watcher: the puts above, then the revocation's deletes in one revision.
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let r = tokio::time::timeout(Duration::from_secs(5), w.message()).await.unwrap().unwrap().unwrap();
        for e in r.events() {
            let kv = e.kv().unwrap();
            let kind = if e.event_type() == EventType::Put { "PUT" } else { "DELETE" };
            seen.push(format!("{kind} {} +{}", kv.key_str().unwrap(), kv.mod_revision() - base));
        }
    }
    out.push(format!("watched: {seen:?}"));
    let left = c.get("l/", Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    out.push(format!("left: {:?}", left.kvs().iter().map(|k| k.key_str().unwrap().to_string()).collect::<Vec<_>>()));
    for id in [auto.id(), small.id(), zero.id()] {
        let _ = c.lease_revoke(id).await;
    }
    out
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn lease_sessions_match_etcd() {
    let etcd = Etcd::start();
    let want = rt().block_on(session(etcd.url()));
    drop(etcd);
    eprintln!("etcd's transcript:\n{}", want.join("\n"));
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let got = rt().block_on(session(srv.url()));
        let log = srv.stop();
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(g, w, "[{driver}] line {i} differs from etcd 3.4.23\netcd:\n{want:#?}\nmetastore:\n{got:#?}");
        }
        assert_eq!(got.len(), want.len(), "[{driver}]\netcd:\n{want:#?}\nmetastore:\n{got:#?}");
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}

/// Expiry, decided by the server: keys go within TTL + 1 s of the last keep-alive, in one
/// revision, and a watcher sees the deletes. Then leases and their keys survive a SIGKILL, and
/// a restart gives each a full TTL again.
#[test]
fn leases_expire_on_time_and_survive_a_restart() {
    for driver in DRIVERS {
        let mut srv = TestServer::start(driver, &[]);
        rt().block_on(async {
            let mut c = Client::connect([srv.url()], None).await.unwrap();
            let id = c.lease_grant(2, None).await.unwrap().id();
            for k in ["e/1", "e/2", "e/3"] {
                c.put(k, "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
            }
            let mut w = c.watch("e/", Some(WatchOptions::new().with_prefix())).await.unwrap();
            w.message().await.unwrap().unwrap();
            let (mut keeper, mut ka) = c.lease_keep_alive(id).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            keeper.keep_alive().await.unwrap();
            ka.message().await.unwrap().unwrap();
            let last = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(10), w.message()).await.unwrap().unwrap().unwrap();
            let gone = last.elapsed();
            assert!(gone >= Duration::from_millis(1900), "[{driver}] expired early: {gone:?} after the keep-alive");
            assert!(gone <= Duration::from_secs(3), "[{driver}] expired late: {gone:?} after the keep-alive (TTL 2 s)");
            assert_eq!(r.events().len(), 3, "[{driver}] all three deletes in one response");
            let revs: Vec<i64> = r.events().iter().map(|e| e.kv().unwrap().mod_revision()).collect();
            assert!(r.events().iter().all(|e| e.event_type() == EventType::Delete));
            assert!(revs.windows(2).all(|p| p[0] == p[1]), "[{driver}] one revision: {revs:?}");
            let t = c.lease_time_to_live(id, None).await.unwrap();
            assert_eq!((t.ttl(), t.granted_ttl()), (-1, 0), "[{driver}] the lease is gone");
            // A lease for the restart.
            let keep = c.lease_grant(60, None).await.unwrap().id();
            c.put("r/1", "v", Some(PutOptions::new().with_lease(keep))).await.unwrap();
            keep
        });
        let keep = rt().block_on(async {
            let mut c = Client::connect([srv.url()], None).await.unwrap();
            let ids: Vec<i64> = c.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
            assert_eq!(ids.len(), 1);
            ids[0]
        });
        srv.kill9();
        srv.restart();
        rt().block_on(async {
            let mut c = Client::connect([srv.url()], None).await.unwrap();
            let t = c.lease_time_to_live(keep, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
            assert_eq!(t.granted_ttl(), 60, "[{driver}] the lease survived");
            assert!(t.ttl() >= 58, "[{driver}] a full TTL after the restart, got {}", t.ttl());
            assert_eq!(t.keys(), [b"r/1".to_vec()], "[{driver}] its key is still attached");
            c.lease_revoke(keep).await.unwrap();
            assert!(c.get("r/1", None).await.unwrap().kvs().is_empty(), "[{driver}] revoked with its key");
        });
        let log = srv.stop();
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}
