//! etcd's Lock and Election services (`v3lockpb`, `v3electionpb`, served on the client port),
//! through the Rust `etcd-client` crate's lock and election calls, with a real etcd 3.4.23 as the
//! oracle: one scripted session runs against etcd and against MetaStore on both io drivers and
//! the transcripts must match — owned keys, response revisions, leader keys and values, errors.
//! It covers an uncontended lock, a contended one that waits until the holder unlocks, a lock on
//! an unknown lease, a campaign, Leader, Proclaim, Observe following proclamations and a change
//! of leader, a second candidate that waits until the first resigns, a stale leader's Proclaim,
//! and Leader of an election nobody runs. Lease IDs are replaced by L1/L2 and revisions are
//! written relative to the session's first write.
//!
//! A second comparison covers callers that go while they wait: B's Lock (or Campaign) waits
//! behind A's and B goes — its call reset, its deadline (`grpc-timeout`) passed, or its
//! connection dropped — and its key must be deleted at once (etcd's recipes unlock / resign on
//! a cancelled context), so that C, asking afterwards, is served as soon as A lets go rather
//! than when B's lease runs out. (A passed deadline is answered Unknown "context deadline
//! exceeded" by etcd 3.4 — its recipe's context error, which its grpc-go sends as Unknown — and
//! so by MetaStore for these two calls.)
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

/// How client B goes while its Lock or Campaign waits.
#[derive(Debug, Clone, Copy)]
enum Gone {
    /// The `etcd-client` call's future is dropped: RST_STREAM(CANCEL).
    Reset,
    /// The call carries `grpc-timeout: 700m` and the server's deadline ends it.
    Deadline,
    /// B's TCP connection drops, without a GOAWAY or a reset.
    Cut,
}

/// The keys under `pfx`, in creation order, lease IDs as names, and the read's revision.
async fn keys(c: &mut Client, pfx: &str, n: &Norm) -> (Vec<String>, i64) {
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_sort(etcd_client::SortTarget::Create, etcd_client::SortOrder::Ascend);
    let r = c.get(pfx, Some(opts)).await.unwrap();
    (r.kvs().iter().map(|kv| n.text(kv.key())).collect(), n.rev(r.header().unwrap().revision()))
}

/// Polls the keys under `pfx` until there are `want` of them (at most 5 s).
async fn keys_until(c: &mut Client, pfx: &str, n: &Norm, want: usize) -> (Vec<String>, i64) {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let k = keys(c, pfx, n).await;
        if k.0.len() == want || tokio::time::Instant::now() > until {
            return k;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One client's Lock (or Campaign) waits behind A's, then B goes (`how`): its key must be
/// deleted at once (etcd's recipes clean up on a cancelled context), so that C, which asks
/// after, gets the lock (or leads) as soon as A unlocks (resigns) — not when B's lease ends.
async fn gone_session(url: String, addr: std::net::SocketAddr, campaign: bool, how: Gone) -> Vec<String> {
    let mut a = Client::connect([url.clone()], None).await.expect("connect");
    let mut out = Vec::new();
    let la = a.lease_grant(60, None).await.unwrap().id();
    let lb = a.lease_grant(60, None).await.unwrap().id();
    let lc = a.lease_grant(60, None).await.unwrap().id();
    let base = a.put("base", "x", None).await.unwrap().header().unwrap().revision();
    let n = Norm { base, leases: vec![(la, "LA"), (lb, "LB"), (lc, "LC")] };
    let name = format!("{}-{how:?}", if campaign { "el" } else { "lk" });
    let pfx = format!("{name}/");
    let tag = format!("[{name}]");

    // A holds.
    let mut held = None;
    if campaign {
        let r = a.campaign(name.as_str(), "a", la).await.unwrap();
        out.push(format!("{tag} A leads: rev={}", n.rev(r.header().unwrap().revision())));
        held = r.leader().cloned();
    } else {
        let r = a.lock(name.as_str(), Some(LockOptions::new().with_lease(la))).await.unwrap();
        out.push(format!("{tag} A locks: key={} rev={}", n.text(r.key()), n.rev(r.header().unwrap().revision())));
    }

    // B waits behind A, then goes.
    let (path, msg) = if campaign {
        let r = metastore_proto::v3electionpb::CampaignRequest {
            name: name.clone().into(),
            lease: lb,
            value: b"b".to_vec(),
        };
        ("/v3electionpb.Election/Campaign", prost::Message::encode_to_vec(&r))
    } else {
        let r = metastore_proto::v3lockpb::LockRequest { name: name.clone().into(), lease: lb };
        ("/v3lockpb.Lock/Lock", prost::Message::encode_to_vec(&r))
    };
    let b_ended = match how {
        Gone::Reset => {
            // The client stays connected (a clone of it is in the task): only the call is reset.
            let b = Client::connect([url.clone()], None).await.unwrap();
            let mut bc = b.clone();
            let (nm, camp) = (name.clone(), campaign);
            let task = tokio::spawn(async move {
                if camp {
                    bc.campaign(nm, "b", lb).await.map(|_| ())
                } else {
                    bc.lock(nm, Some(LockOptions::new().with_lease(lb))).await.map(|_| ())
                }
            });
            let (k, _) = keys_until(&mut a, &pfx, &n, 2).await;
            out.push(format!("{tag} B waits: keys={k:?} finished={}", task.is_finished()));
            task.abort();
            let aborted = task.await.is_err_and(|e| e.is_cancelled());
            // Checked before B's connection goes.
            let (k, rev) = keys_until(&mut a, &pfx, &n, 1).await;
            drop(b);
            format!("aborted={aborted}, then keys={k:?} rev={rev}")
        }
        Gone::Deadline => {
            let mut b = common::grpc::Client::connect(addr).await;
            let mut call = b.start(path, &msg, &[("grpc-timeout", "700m")]).await;
            let (k, _) = keys_until(&mut a, &pfx, &n, 2).await;
            out.push(format!("{tag} B waits: keys={k:?}"));
            let got = call.next(Duration::from_secs(10)).await;
            // Checked before B's connection goes.
            let (k, rev) = keys_until(&mut a, &pfx, &n, 1).await;
            drop(b);
            format!("answer={got:?} status={:?}, then keys={k:?} rev={rev}", call.status)
        }
        Gone::Cut => {
            let mut b = common::grpc::Client::connect(addr).await;
            let call = b.start(path, &msg, &[]).await;
            let (k, _) = keys_until(&mut a, &pfx, &n, 2).await;
            out.push(format!("{tag} B waits: keys={k:?}"));
            b.cut();
            drop(call);
            "connection cut".to_string()
        }
    };
    out.push(format!("{tag} B ended: {b_ended}"));
    let (k, rev) = keys_until(&mut a, &pfx, &n, 1).await;
    out.push(format!("{tag} after B went: keys={k:?} rev={rev}"));

    // C asks after B went; A lets go; C gets it at once.
    let mut c = Client::connect([url.clone()], None).await.unwrap();
    let nm = name.clone();
    let task = tokio::spawn(async move {
        if campaign {
            let r = c.campaign(nm, "c", lc).await?;
            Ok::<_, etcd_client::Error>((
                r.leader().map(|l| l.key().to_vec()).unwrap_or_default(),
                r.header().unwrap().revision(),
            ))
        } else {
            let r = c.lock(nm, Some(LockOptions::new().with_lease(lc))).await?;
            Ok((r.key().to_vec(), r.header().unwrap().revision()))
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    out.push(format!("{tag} C waits: {}", !task.is_finished()));
    if campaign {
        let r = a.resign(Some(ResignOptions::new().with_leader(held.unwrap()))).await.unwrap();
        out.push(format!("{tag} A resigns: rev={}", n.rev(r.header().unwrap().revision())));
    } else {
        let key = format!("{name}/{la:x}");
        let r = a.unlock(key).await.unwrap();
        out.push(format!("{tag} A unlocks: rev={}", n.rev(r.header().unwrap().revision())));
    }
    // Promptly: B's lease has 60 s left, a ghost key would hold C that long.
    match tokio::time::timeout(Duration::from_secs(3), task).await {
        Ok(r) => {
            let (key, rev) = r.unwrap().unwrap();
            out.push(format!("{tag} C gets it: key={} rev={}", n.text(&key), n.rev(rev)));
        }
        Err(_) => out.push(format!("{tag} C still waits 3 s after A let go")),
    }
    let (k, rev) = keys(&mut a, &pfx, &n).await;
    out.push(format!("{tag} keys at the end: {k:?} rev={rev}"));
    for l in [la, lb, lc] {
        a.lease_revoke(l).await.unwrap();
    }
    out
}

fn run_gone(url: String, addr: std::net::SocketAddr) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut out = Vec::new();
        for campaign in [false, true] {
            for how in [Gone::Reset, Gone::Deadline, Gone::Cut] {
                let s = gone_session(url.clone(), addr, campaign, how);
                out.extend(tokio::time::timeout(Duration::from_secs(30), s).await.expect("session ran over"));
            }
        }
        out
    })
}

/// Lock and Campaign callers that go while waiting (reset, deadline, dropped connection) leave
/// no ghost key behind, as in etcd 3.4.23: the transcripts match etcd's, and etcd's shows what
/// is claimed (B's key gone, C served at once).
#[test]
fn waiters_that_go_leave_no_key_as_in_etcd() {
    let etcd = Etcd::start();
    let want = run_gone(etcd.url(), etcd.client);
    drop(etcd);
    eprintln!("etcd's transcript:\n{}", want.join("\n"));
    for line in &want {
        if line.contains("after B went") {
            assert!(!line.contains("LB"), "etcd kept B's key: {line}");
        }
        assert!(!line.contains("C still waits"), "etcd: {line}");
    }
    assert_eq!(want.iter().filter(|l| l.contains("C gets it")).count(), 6, "{want:#?}");
    for driver in DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let got = run_gone(srv.url(), srv.addr);
        let log = srv.stop();
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(g, w, "[{driver}] line {i} differs from etcd 3.4.23\netcd:\n{want:#?}\nmetastore:\n{got:#?}");
        }
        assert_eq!(got.len(), want.len(), "[{driver}]\netcd:\n{want:#?}\nmetastore:\n{got:#?}");
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}
