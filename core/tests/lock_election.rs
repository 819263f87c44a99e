//! etcd's Lock and Election services (`v3lockpb`, `v3electionpb`, served on the client port),
//! through the Rust `etcd-client` crate's lock and election calls, with a real etcd 3.4.23 as the
//! oracle: one scripted session runs against etcd and against MetaStore on both io drivers and
//! the transcripts must match — owned keys, response revisions, leader keys and values, errors.
//! It covers an uncontended lock, a contended one that waits until the holder unlocks, a lock on
//! an unknown lease, a campaign, Leader, Proclaim, Observe following proclamations and a change
//! of leader, a second candidate that waits until the first resigns, a stale leader's Proclaim,
//! and Leader of an election nobody runs. Lease IDs are replaced by L1/L2 and revisions are
//! written relative to the session's first write.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::etcd::Etcd;
use common::{TestServer, DRIVERS};
use etcd_client::{Client, LeaderKey, LockOptions, ProclaimOptions, ResignOptions};

fn err(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => format!("other: {other}"),
    }
}

struct Norm {
    base: i64,
    leases: Vec<(i64, &'static str)>,
}

impl Norm {
    fn text(&self, b: &[u8]) -> String {
        let mut s = String::from_utf8_lossy(b).into_owned();
        for (id, name) in &self.leases {
            s = s.replace(&format!("{id:x}"), name);
        }
        s
    }
    fn rev(&self, r: i64) -> i64 {
        r - self.base
    }
}

async fn session(url: String) -> Vec<String> {
    let mut c = Client::connect([url.clone()], None).await.expect("connect");
    let mut out = Vec::new();
    let l1 = c.lease_grant(60, None).await.unwrap().id();
    let l2 = c.lease_grant(60, None).await.unwrap().id();
    let base = c.put("base", "x", None).await.unwrap().header().unwrap().revision();
    let n = Norm { base, leases: vec![(l1, "L1"), (l2, "L2")] };

    // Locks.
    let r = c.lock("lk", Some(LockOptions::new().with_lease(l1))).await.unwrap();
    let k1 = r.key().to_vec();
    out.push(format!("lock 1: key={} rev={}", n.text(&k1), n.rev(r.header().unwrap().revision())));
    let mut c2 = Client::connect([url.clone()], None).await.unwrap();
    let waiter = tokio::spawn(async move { c2.lock("lk", Some(LockOptions::new().with_lease(l2))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    out.push(format!("lock 2 waits: {}", !waiter.is_finished()));
    let u = c.unlock(k1.clone()).await.unwrap();
    out.push(format!("unlock 1: rev={}", n.rev(u.header().unwrap().revision())));
    let r = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap().unwrap();
    out.push(format!("lock 2: key={} rev={}", n.text(r.key()), n.rev(r.header().unwrap().revision())));
    c.unlock(r.key().to_vec()).await.unwrap();
    let bad = c.lock("lk", Some(LockOptions::new().with_lease(0x5555))).await.unwrap_err();
    out.push(format!("lock unknown lease: {}", err(bad)));
    let u = c.unlock("lk/nothing").await.unwrap();
    out.push(format!("unlock missing key: rev={}", n.rev(u.header().unwrap().revision())));

    // Election.
    let r = c.campaign("el", "v1", l1).await.unwrap();
    let lead = r.leader().unwrap().clone();
    out.push(format!(
        "campaign 1: name={} key={} rev={} lease={} header={}",
        n.text(lead.name()),
        n.text(lead.key()),
        n.rev(lead.rev()),
        n.text(format!("{:x}", lead.lease()).as_bytes()),
        n.rev(r.header().unwrap().revision())
    ));
    let l = c.leader("el").await.unwrap();
    let kv = l.kv().unwrap();
    out.push(format!(
        "leader: key={} value={} rev={}",
        n.text(kv.key()),
        kv.value_str().unwrap(),
        n.rev(l.header().unwrap().revision())
    ));
    let mut obs = c.observe("el").await.unwrap();
    let first = obs.message().await.unwrap().unwrap();
    out.push(format!("observe: {}", first.kv().unwrap().value_str().unwrap()));
    let p = c.proclaim("v2", Some(ProclaimOptions::new().with_leader(lead.clone()))).await.unwrap();
    out.push(format!("proclaim: rev={}", n.rev(p.header().unwrap().revision())));
    let next = tokio::time::timeout(Duration::from_secs(5), obs.message()).await.unwrap().unwrap().unwrap();
    out.push(format!("observe: {}", next.kv().unwrap().value_str().unwrap()));

    let mut c3 = Client::connect([url.clone()], None).await.unwrap();
    let second = tokio::spawn(async move { c3.campaign("el", "w", l2).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    out.push(format!("campaign 2 waits: {}", !second.is_finished()));
    let rs = c.resign(Some(ResignOptions::new().with_leader(lead.clone()))).await.unwrap();
    out.push(format!("resign: rev={}", n.rev(rs.header().unwrap().revision())));
    let r = tokio::time::timeout(Duration::from_secs(10), second).await.unwrap().unwrap().unwrap();
    let lead2 = r.leader().unwrap().clone();
    out.push(format!(
        "campaign 2: key={} rev={} header={}",
        n.text(lead2.key()),
        n.rev(lead2.rev()),
        n.rev(r.header().unwrap().revision())
    ));
    let next = tokio::time::timeout(Duration::from_secs(5), obs.message()).await.unwrap().unwrap().unwrap();
    let kv = next.kv().unwrap();
    out.push(format!("observe: key={} value={}", n.text(kv.key()), kv.value_str().unwrap()));
    let stale = c.proclaim("x", Some(ProclaimOptions::new().with_leader(lead.clone()))).await.unwrap_err();
    out.push(format!("proclaim by the old leader: {}", err(stale)));
    let rs = c.resign(Some(ResignOptions::new().with_leader(lead))).await.unwrap();
    out.push(format!("resign again: rev={}", n.rev(rs.header().unwrap().revision())));
    out.push(format!("leader of nothing: {}", err(c.leader("nobody").await.unwrap_err())));
    let stranger = LeaderKey::new().with_name("el").with_key("el/0").with_rev(1).with_lease(0);
    out.push(format!(
        "proclaim by a stranger: {}",
        err(c.proclaim("y", Some(ProclaimOptions::new().with_leader(stranger))).await.unwrap_err())
    ));
    c.resign(Some(ResignOptions::new().with_leader(lead2))).await.unwrap();
    out
}

fn run(url: String) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), session(url)).await.expect("session ran over") })
}

#[test]
fn lock_and_election_sessions_match_etcd() {
    let etcd = Etcd::start();
    let want = run(etcd.url());
    drop(etcd);
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
