//! Watch, as the Rust `etcd-client` crate (tonic) sees it, with a real etcd 3.4.23 as the
//! oracle: the same scripted session runs against etcd and against MetaStore on both io drivers,
//! and the transcripts — every created/canceled/progress response and every event with its
//! key, value, revisions, version and previous record — must be identical. Revisions are
//! written relative to the session's first write, so the servers' differing starting revisions
//! do not matter; events are listed one per line, so how a server groups revisions into
//! responses does not either (etcd may batch several; both must keep revision order).
//!
//! The session covers: prefix, single-key, from-key and all-keys watches; `prev_kv`; NOPUT and
//! NODELETE filters; several watchers on one stream with automatic (from 0) and client-chosen
//! IDs, a duplicate ID, an empty range; a watch from a past revision (history, across more than
//! one catch-up batch), from the future, and from a compacted revision; progress requests; cancel
//! of a known and an unknown ID; a txn's events arriving together; a second stream's IDs
//! starting again at 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::etcd::Etcd;
use common::{TestServer, DRIVERS};
use etcd_client::{
    Client, CompactionOptions, EventType, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};

/// How long a stream must stay silent before the session moves on.
const QUIET: Duration = Duration::from_millis(250);

struct Session {
    c: Client,
    base: i64,
    out: Vec<String>,
}

impl Session {
    fn rel(&self, rev: i64) -> i64 {
        if rev == 0 {
            0
        } else {
            rev - self.base
        }
    }

    fn describe(&mut self, tag: &str, r: &WatchResponse) {
        let control = r.created() || r.canceled() || r.compact_revision() != 0 || r.events().is_empty();
        if control {
            let rev = r.header().map_or(0, |h| h.revision());
            let line = format!(
                "{tag} id={} created={} canceled={} compact={} reason={:?} rev={}",
                r.watch_id(),
                r.created(),
                r.canceled(),
                self.rel(r.compact_revision()),
                r.cancel_reason(),
                self.rel(rev)
            );
            self.out.push(line);
        }
        for e in r.events() {
            let kv = e.kv().expect("an event has a kv");
            let show = |kv: &etcd_client::KeyValue, s: &Session| {
                format!(
                    "{}={} c={} m={} v={} l={}",
                    String::from_utf8_lossy(kv.key()),
                    String::from_utf8_lossy(kv.value()),
                    s.rel(kv.create_revision()),
                    s.rel(kv.mod_revision()),
                    kv.version(),
                    kv.lease()
                )
            };
            let kind = if e.event_type() == EventType::Put { "PUT" } else { "DELETE" };
            let line = format!(
                "{tag} id={} {kind} {} prev={}",
                r.watch_id(),
                show(kv, self),
                e.prev_kv().map_or("-".to_string(), |p| show(p, self))
            );
            self.out.push(line);
        }
    }

    /// Reads responses until the stream has been quiet for [`QUIET`]. What arrived is listed
    /// by watch ID (stably: each watcher's own order is kept), since the order in which a
    /// server serves different watchers of one stream is not part of the contract.
    async fn drain(&mut self, tag: &str, s: &mut WatchStream) {
        let start = self.out.len();
        self.read(tag, s).await;
        let id = |l: &String| l.split(" id=").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("").to_string();
        self.out[start..].sort_by_key(id);
    }

    async fn read(&mut self, tag: &str, s: &mut WatchStream) {
        loop {
            match tokio::time::timeout(QUIET, s.message()).await {
                Ok(Ok(Some(r))) => self.describe(tag, &r),
                Ok(Ok(None)) => {
                    self.out.push(format!("{tag} stream ended"));
                    return;
                }
                Ok(Err(e)) => {
                    self.out.push(format!("{tag} error {e}"));
                    return;
                }
                Err(_) => return,
            }
        }
    }

    async fn put(&mut self, k: &str, v: &str) -> i64 {
        self.c.put(k, v, None).await.unwrap().header().unwrap().revision()
    }
}

async fn session(url: String) -> Vec<String> {
    let c = Client::connect([url], None).await.expect("connect");
    let mut s = Session { c, base: 0, out: Vec::new() };
    s.base = s.put("w/a", "1").await;
    let base = s.base;

    // A prefix watch with previous records; changes of every kind, a txn's two puts together.
    let mut a = s.c.watch("w/", Some(WatchOptions::new().with_prefix().with_prev_key())).await.unwrap();
    s.drain("A", &mut a).await;
    s.put("w/a", "2").await;
    s.put("w/b", "1").await;
    s.c.delete("w/a", None).await.unwrap();
    let txn = Txn::new().and_then([TxnOp::put("w/c", "1", None), TxnOp::put("w/d", "1", None)]);
    s.c.txn(txn).await.unwrap();
    s.put("v/outside", "1").await;
    s.drain("A", &mut a).await;

    // More watchers on the same stream: history with a filter, chosen IDs, bad creates.
    a.watch("w/b", Some(WatchOptions::new().with_start_revision(base).with_filters([WatchFilterType::NoPut])))
        .await
        .unwrap();
    s.drain("A", &mut a).await;
    a.watch("w/x", Some(WatchOptions::new().with_watch_id(7))).await.unwrap();
    s.drain("A", &mut a).await;
    a.watch("w/y", Some(WatchOptions::new().with_watch_id(7))).await.unwrap();
    s.drain("A", &mut a).await;
    a.watch("w/z", Some(WatchOptions::new().with_range("w/a"))).await.unwrap();
    s.drain("A", &mut a).await;
    a.request_progress().await.unwrap();
    s.drain("A", &mut a).await;
    s.c.delete("w/b", None).await.unwrap();
    s.drain("A", &mut a).await;
    a.cancel(1).await.unwrap();
    s.drain("A", &mut a).await;
    a.cancel(99).await.unwrap();
    s.drain("A", &mut a).await;
    s.put("w/x", "1").await;
    s.put("w/b", "2").await;
    s.drain("A", &mut a).await;

    // A second stream: its IDs start at 0 again; a from-key watch, a NODELETE one, the future.
    let mut b = s.c.watch("w/c", Some(WatchOptions::new().with_from_key())).await.unwrap();
    s.drain("B", &mut b).await;
    b.watch("w/", Some(WatchOptions::new().with_prefix().with_filters([WatchFilterType::NoDelete]))).await.unwrap();
    s.drain("B", &mut b).await;
    let now = s.put("w/f", "0").await;
    s.drain("B", &mut b).await;
    b.watch("w/f", Some(WatchOptions::new().with_start_revision(now + 2))).await.unwrap();
    s.drain("B", &mut b).await;
    s.put("w/f", "1").await;
    s.put("w/f", "2").await;
    s.c.delete("w/c", Some(etcd_client::DeleteOptions::new().with_from_key())).await.unwrap();
    s.drain("B", &mut b).await;
    drop(b);

    // A negative start revision before any compaction: etcd 3.4 watches from now on with -1.
    // (Below -1 it cancels the watch as compacted, with its compaction mark as the revision:
    // -1 on a fresh etcd as `etcdctl -w json watch --rev=-7` shows, but -3 at this point of
    // this session, which we do not reproduce; MetaStore answers -1. The unit tests check it.)
    let mut n = s.c.watch("w/n", Some(WatchOptions::new().with_start_revision(-1))).await.unwrap();
    s.drain("N", &mut n).await;
    s.put("w/n", "1").await;
    s.drain("N", &mut n).await;
    drop(n);

    // History longer than one catch-up batch (1,000 revisions), from an all-keys watch.
    let from = s.put("h/0", "0").await;
    for i in 1..1500 {
        s.put(&format!("h/{}", i % 7), &i.to_string()).await;
    }
    let mut h = s.c.watch("", Some(WatchOptions::new().with_all_keys().with_start_revision(from))).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 1500 {
        let r = tokio::time::timeout(Duration::from_secs(10), h.message()).await.unwrap().unwrap().unwrap();
        for e in r.events() {
            seen.push(e.kv().unwrap().mod_revision() - from);
        }
    }
    s.out.push(format!(
        "H {} events, in order and dense: {}",
        seen.len(),
        seen.iter().enumerate().all(|(i, r)| *r == i as i64)
    ));
    s.drain("H", &mut h).await;
    drop(h);

    // Compaction: a watch from before it is created, then canceled with the compact revision.
    let current = s.put("w/g", "1").await;
    s.c.compact(current - 1, Some(CompactionOptions::new().with_physical())).await.unwrap();
    let mut c = s.c.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(base))).await.unwrap();
    s.drain("C", &mut c).await;
    c.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(current - 1))).await.unwrap();
    s.drain("C", &mut c).await;
    c.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(-1))).await.unwrap();
    s.drain("C", &mut c).await;
    s.out
}

fn run(url: String) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), session(url)).await.expect("session ran over") })
}

#[test]
fn watch_sessions_match_etcd() {
    let etcd = Etcd::start();
    let want = run(etcd.url());
    drop(etcd);
    assert!(want.iter().any(|l| l.contains("created=true")), "the oracle session is empty: {want:#?}");
    eprintln!("etcd's transcript:\n{}", want.join("\n"));
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let got = run(srv.url());
        let log = srv.stop();
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(g, w, "[{driver}] line {i} differs from etcd 3.4.23\netcd:\n{want:#?}\nmetastore:\n{got:#?}");
        }
        assert_eq!(got.len(), want.len(), "[{driver}]\netcd:\n{want:#?}\nmetastore:\n{got:#?}");
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}
