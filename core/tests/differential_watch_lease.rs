//! Differential test of Watch and Lease against a real etcd 3.4.23, the sibling of
//! `differential.rs` (which covers the KV service request by request). A seeded generator (the
//! seed is printed at the start and in every failure; fixed seeds plus one fresh seed per run,
//! `DIFF_SEED` to replay one) builds one random sequence over a small key space and sends it, in
//! lockstep, to MetaStore and to an etcd the test starts (fresh stores, both at revision 1):
//!
//! - writes that make events: puts (a third with a lease, granted or not), deletes (single,
//!   prefix, all keys), txns putting and deleting several keys in one revision, lease revokes
//!   deleting their keys in one revision, occasional compactions;
//! - lease calls: LeaseGrant with IDs from a small pool (so that duplicates and unknown IDs are
//!   hit) or picked by the server, TTLs from 60 s up to etcd's ceiling and one over it;
//!   LeaseRevoke; LeaseTimeToLive with and without keys; LeaseLeases;
//! - watches on a few streams, created at the start and at random points: single keys,
//!   prefixes, from-key, all keys and spans (empty ones too), from now, from a past revision
//!   (history, the compacted part too), from the future; `prev_kv`; NOPUT and NODELETE;
//!   server-picked and client-chosen IDs (duplicates too); cancels of known and unknown IDs;
//!   progress requests.
//!
//! Every unary answer is compared at once, field by field (only the member/cluster ids and raft
//! term zeroed), errors by code and text. Lease answers are normalised only where they
//! legitimately differ: a server-picked ID is shown as `auto#n` (n-th such grant on that
//! server), the remaining TTL of a live lease is compared within 2 s (the two servers grant a
//! few milliseconds apart), and TimeToLive's keys and LeaseLeases' IDs are sorted (etcd answers
//! them in Go map order).
//!
//! Watch responses are collected per stream and compared at the end, after every stream has
//! gone quiet, per watcher (the IDs are per stream and equal when created in the same order; a
//! difference in them shows at creation): its created and canceled responses (with their
//! header revision, compact revision and reason) exactly, and its events as a sequence of
//! revisions, each revision's events exactly. How a server batches revisions into responses is
//! not compared, but a revision split over two responses fails the test on either server.
//! Progress responses are dropped (their header revision is allowed to differ: see
//! ARCHITECTURE.md). A watcher the client canceled is compared up to the shorter of the two
//! (one must be a prefix of the other): what had reached the client before the cancel depends
//! on timing on both servers. The test waits for each create's and each known cancel's
//! answer before going on, and lets every stream go quiet before a compaction (so that no
//! watcher is still catching up from history when the compaction lands, which would cancel it on
//! one server and not the other).
//!
//! Not generated: leases short enough to expire during a run (expiry timing is the subject of
//! `core/tests/lease.rs`), KeepAlive (ditto), `progress_notify` and `fragment` (the session tests
//! in `core/tests/watch.rs` cover them).
//!
//! Differences this test found, now fixed in MetaStore:
//! - a watcher canceled by a compaction keeps its ID in etcd's watchStream until the client
//!   cancels it: a create reusing the ID is refused as a duplicate, and the client's cancel of
//!   it is answered (MetaStore freed the ID at once; a unit test in `core/src/watch.rs`);
//! - the answer to a cancel, and a refused create, carry the store's current revision (MetaStore
//!   sent the newest revision the stream's core had delivered, as for a progress answer, which
//!   can lag the write the client has just seen answered).
//!
//! The generator also cancels, now and then, a watcher whose compaction notice both servers
//! sent.
//!
//! `DIFF_SEED=<n>` replaces the fresh seed, `DIFF_STEPS=<n>` the steps per seed, `DIFF_TRACE=1`
//! prints every step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::grpc::{Client, Stream};
use common::rng::Rng;
use common::TestServer;
use metastore_proto::etcdserverpb as pb;
use metastore_proto::mvccpb;
use pb::watch_create_request::FilterType;
use pb::watch_request::RequestUnion;
use prost::Message;

const FIXED_SEEDS: [u64; 2] = [0x3A7C_0001, 0x00EA_5E5E];
/// Steps per seed (each a request to both servers, or a watch call on one stream of each).
const STEPS: usize = 1_500;
const STREAMS: usize = 3;
/// The leases the generator grants, revokes and attaches (chosen IDs).
const LEASES: [i64; 5] = [0x10, 0x11, 0x12, 0x3f00_0000_0000_0001, 0x7fff_ffff_ffff_fffe];
/// etcd's ceiling on a lease TTL (`MaxLeaseTTL`).
const TTL_MAX: i64 = 9_000_000_000;
/// Client-chosen watch IDs (so that duplicates happen).
const WATCH_IDS: [i64; 3] = [100, 101, 102];
/// How long a stream must stay silent to count as quiet (etcd's catch-up runs every 100 ms).
const QUIET: Duration = Duration::from_millis(250);

// ----- requests -----

#[derive(Debug, Clone)]
enum Req {
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Range(pb::RangeRequest),
    Compact(pb::CompactionRequest),
    Grant(pb::LeaseGrantRequest),
    Revoke(pb::LeaseRevokeRequest),
    Ttl(pb::LeaseTimeToLiveRequest),
    Leases,
    WatchCreate(usize, pb::WatchCreateRequest),
    WatchCancel(usize, i64),
    Progress(usize),
}

impl Req {
    fn path(&self) -> &'static str {
        match self {
            Req::Put(_) => "/etcdserverpb.KV/Put",
            Req::Delete(_) => "/etcdserverpb.KV/DeleteRange",
            Req::Txn(_) => "/etcdserverpb.KV/Txn",
            Req::Range(_) => "/etcdserverpb.KV/Range",
            Req::Compact(_) => "/etcdserverpb.KV/Compact",
            Req::Grant(_) => "/etcdserverpb.Lease/LeaseGrant",
            Req::Revoke(_) => "/etcdserverpb.Lease/LeaseRevoke",
            Req::Ttl(_) => "/etcdserverpb.Lease/LeaseTimeToLive",
            Req::Leases => "/etcdserverpb.Lease/LeaseLeases",
            Req::WatchCreate(..) | Req::WatchCancel(..) | Req::Progress(_) => "/etcdserverpb.Watch/Watch",
        }
    }

    fn encode(&self) -> Vec<u8> {
        let watch = |u: RequestUnion| pb::WatchRequest { request_union: Some(u) }.encode_to_vec();
        match self {
            Req::Put(r) => r.encode_to_vec(),
            Req::Delete(r) => r.encode_to_vec(),
            Req::Txn(r) => r.encode_to_vec(),
            Req::Range(r) => r.encode_to_vec(),
            Req::Compact(r) => r.encode_to_vec(),
            Req::Grant(r) => r.encode_to_vec(),
            Req::Revoke(r) => r.encode_to_vec(),
            Req::Ttl(r) => r.encode_to_vec(),
            Req::Leases => pb::LeaseLeasesRequest {}.encode_to_vec(),
            Req::WatchCreate(_, c) => watch(RequestUnion::CreateRequest(c.clone())),
            Req::WatchCancel(_, id) => watch(RequestUnion::CancelRequest(pb::WatchCancelRequest { watch_id: *id })),
            Req::Progress(_) => watch(RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
        }
    }
}

/// What the generator knows, learnt from etcd's answers.
#[derive(Default)]
struct Model {
    rev: i64,
    compacted: i64,
    /// Live watch IDs per stream.
    watches: Vec<Vec<i64>>,
    /// Watchers canceled by a compaction (both servers sent the notice): their IDs stay taken
    /// until the client cancels them.
    compacted_ids: Vec<Vec<i64>>,
    /// Watchers created below the compaction point whose notice has not been seen on both yet.
    doomed: Vec<Vec<(i64, usize, usize)>>,
}

fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut e = p.to_vec();
    while let Some(&last) = e.last() {
        if last < 0xff {
            *e.last_mut().unwrap() = last + 1;
            return e;
        }
        e.pop();
    }
    vec![0]
}

struct Gen {
    rng: Rng,
    /// Coverage tags of the step being generated.
    tags: Vec<&'static str>,
}

impl Gen {
    fn key(&mut self) -> Vec<u8> {
        let len = 1 + self.rng.below(2) as usize;
        (0..len).map(|_| *self.rng.pick(b"abc")).collect()
    }

    fn value(&mut self) -> Vec<u8> {
        vec![b'v', b'0' + self.rng.below(4) as u8]
    }

    fn lease(&mut self) -> i64 {
        if self.rng.pct(65) {
            0
        } else {
            self.tags.push("put.lease");
            *self.rng.pick(&LEASES)
        }
    }

    /// (key, range_end) for a delete or a watch.
    fn range(&mut self, kinds: u64) -> (Vec<u8>, Vec<u8>) {
        match self.rng.below(kinds) {
            0..=4 => (self.key(), Vec::new()),
            5..=7 => {
                let k = vec![*self.rng.pick(b"abc")];
                self.tags.push("range.prefix");
                let e = prefix_end(&k);
                (k, e)
            }
            8 => {
                self.tags.push("range.all");
                (vec![0], vec![0])
            }
            9 => {
                self.tags.push("range.from_key");
                (self.key(), vec![0])
            }
            _ => {
                self.tags.push("range.span");
                (self.key(), self.key())
            }
        }
    }

    fn put(&mut self) -> pb::PutRequest {
        let prev_kv = self.rng.pct(30);
        pb::PutRequest { key: self.key(), value: self.value(), lease: self.lease(), prev_kv, ..Default::default() }
    }

    fn next(&mut self, m: &Model) -> Req {
        self.tags.clear();
        let roll = self.rng.below(1000);
        match roll {
            0..=299 => Req::Put(self.put()),
            300..=379 => {
                let (key, range_end) = self.range(9);
                Req::Delete(pb::DeleteRangeRequest { key, range_end, prev_kv: self.rng.pct(30) })
            }
            380..=479 => {
                // Puts and deletes of distinct keys in one revision.
                let mut keys: Vec<Vec<u8>> = Vec::new();
                let mut ops = Vec::new();
                for _ in 0..1 + self.rng.below(4) {
                    let k = self.key();
                    if keys.contains(&k) {
                        continue;
                    }
                    keys.push(k.clone());
                    let request = if self.rng.pct(70) {
                        let mut p = self.put();
                        p.key = k;
                        pb::request_op::Request::RequestPut(p)
                    } else {
                        pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                            key: k,
                            prev_kv: self.rng.pct(30),
                            ..Default::default()
                        })
                    };
                    ops.push(pb::RequestOp { request: Some(request) });
                }
                let cmp = pb::Compare {
                    result: pb::compare::CompareResult::Greater as i32,
                    target: pb::compare::CompareTarget::Version as i32,
                    key: self.key(),
                    target_union: Some(pb::compare::TargetUnion::Version(0)),
                    ..Default::default()
                };
                let failure = vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(self.put())) }];
                Req::Txn(pb::TxnRequest { compare: vec![cmp], success: ops, failure })
            }
            480..=519 => {
                let (key, range_end) = self.range(9);
                Req::Range(pb::RangeRequest { key, range_end, ..Default::default() })
            }
            520..=524 if m.rev > m.compacted + 1 => {
                self.tags.push("compact");
                Req::Compact(pb::CompactionRequest {
                    revision: self.rng.between(m.compacted + 1, m.rev),
                    physical: false,
                })
            }
            525..=599 => {
                let id = if self.rng.pct(8) { 0 } else { *self.rng.pick(&LEASES) };
                let ttl = match self.rng.below(10) {
                    0..=5 => 60,
                    6 => 3600,
                    7 => TTL_MAX,
                    8 => TTL_MAX + 1,
                    _ => 600,
                };
                Req::Grant(pb::LeaseGrantRequest { ttl, id })
            }
            600..=639 => Req::Revoke(pb::LeaseRevokeRequest { id: *self.rng.pick(&LEASES) }),
            640..=689 => Req::Ttl(pb::LeaseTimeToLiveRequest { id: *self.rng.pick(&LEASES), keys: self.rng.pct(60) }),
            690..=709 => Req::Leases,
            710..=789 => {
                let s = self.rng.below(STREAMS as u64) as usize;
                let (key, range_end) = self.range(11);
                let start_revision = match self.rng.below(10) {
                    0..=3 => 0,
                    4..=7 => {
                        self.tags.push("watch.past");
                        if m.compacted > 0 && self.rng.pct(25) {
                            self.tags.push("watch.compacted");
                            self.rng.between(1, m.compacted - 1).max(1)
                        } else {
                            self.rng.between(m.compacted.max(1), m.rev)
                        }
                    }
                    8 => m.rev,
                    _ => {
                        self.tags.push("watch.future");
                        m.rev + self.rng.between(1, 3)
                    }
                };
                let mut filters = Vec::new();
                if self.rng.pct(15) {
                    filters.push(FilterType::Noput as i32);
                }
                if self.rng.pct(15) {
                    filters.push(FilterType::Nodelete as i32);
                }
                let watch_id = if self.rng.pct(20) { *self.rng.pick(&WATCH_IDS) } else { 0 };
                let prev_kv = self.rng.pct(40);
                let c = pb::WatchCreateRequest {
                    key,
                    range_end,
                    start_revision,
                    filters,
                    prev_kv,
                    watch_id,
                    ..Default::default()
                };
                Req::WatchCreate(s, c)
            }
            790..=814 => {
                let s = self.rng.below(STREAMS as u64) as usize;
                let live: Vec<i64> = m.watches[s].iter().chain(&m.compacted_ids[s]).copied().collect();
                let id = if live.is_empty() || self.rng.pct(10) { 999 } else { *self.rng.pick(&live) };
                Req::WatchCancel(s, id)
            }
            815..=829 => Req::Progress(self.rng.below(STREAMS as u64) as usize),
            _ => Req::Put(self.put()),
        }
    }
}

// ----- one server -----

struct Side {
    name: &'static str,
    kv: Client,
    streams: Vec<Stream>,
    /// The streams' connections (one each, as clients that watch have).
    _conns: Vec<Client>,
    /// Every watch response each stream got, in order.
    got: Vec<Vec<pb::WatchResponse>>,
    /// IDs this server picked for `id: 0` grants, in order.
    auto_leases: Vec<i64>,
}

impl Side {
    async fn open(name: &'static str, addr: std::net::SocketAddr) -> Self {
        let mut kv = Client::connect(addr).await;
        let (mut streams, mut conns) = (Vec::new(), Vec::new());
        for _ in 0..STREAMS {
            let mut c = Client::connect(addr).await;
            streams.push(c.stream("/etcdserverpb.Watch/Watch").await);
            conns.push(c);
        }
        let ready = Instant::now() + Duration::from_secs(20);
        while kv.unary("/etcdserverpb.Maintenance/Status", &pb::StatusRequest {}).await.is_err() {
            assert!(Instant::now() < ready, "{name} does not answer Status");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Side { name, kv, streams, _conns: conns, got: vec![Vec::new(); STREAMS], auto_leases: Vec::new() }
    }

    /// Reads one message from stream `s` within `wait`; false if none came.
    async fn pump(&mut self, s: usize, wait: Duration) -> Result<bool, String> {
        match self.streams[s].next(wait).await {
            Some(m) => {
                let r = pb::WatchResponse::decode(&m[..])
                    .map_err(|e| format!("{}: a watch response does not decode: {e}", self.name))?;
                self.got[s].push(r);
                Ok(true)
            }
            None => match &self.streams[s].status {
                Some(st) => Err(format!("{}: watch stream {s} ended: {st:?}", self.name)),
                None => Ok(false),
            },
        }
    }

    /// Reads stream `s` until a response satisfying `want` arrives (10 s at most); returns it.
    async fn until(
        &mut self,
        s: usize,
        want: impl Fn(&pb::WatchResponse) -> bool,
    ) -> Result<pb::WatchResponse, String> {
        let from = self.got[s].len();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.got[s][from..].iter().find(|r| want(r)) {
                return Ok(r.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{}: stream {s}: the awaited watch response did not come within 10 s", self.name));
            }
            self.pump(s, left).await?;
        }
    }

    /// Reads every stream until each has been silent for [`QUIET`].
    async fn quiet(&mut self) -> Result<(), String> {
        for s in 0..STREAMS {
            while self.pump(s, QUIET).await? {}
        }
        Ok(())
    }

    /// Takes whatever has already arrived, without waiting.
    async fn drain(&mut self) -> Result<(), String> {
        for s in 0..STREAMS {
            while self.pump(s, Duration::ZERO).await? {}
        }
        Ok(())
    }
}

// ----- comparison -----

type Answer = Result<Vec<u8>, (u32, String)>;

fn zero_ids(h: &mut Option<pb::ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

/// A unary answer as comparable text.
fn normalise(req: &Req, b: &[u8], side: &mut Side) -> Result<String, String> {
    fn dec<T: Message + Default>(b: &[u8]) -> Result<T, String> {
        T::decode(b).map_err(|e| format!("the answer does not decode: {e}"))
    }
    Ok(match req {
        Req::Put(_) => {
            let mut a: pb::PutResponse = dec(b)?;
            zero_ids(&mut a.header);
            format!("{a:?}")
        }
        Req::Delete(_) => {
            let mut a: pb::DeleteRangeResponse = dec(b)?;
            zero_ids(&mut a.header);
            format!("{a:?}")
        }
        Req::Txn(_) => {
            let mut a: pb::TxnResponse = dec(b)?;
            zero_ids(&mut a.header);
            format!("{a:?}")
        }
        Req::Range(_) => {
            let mut a: pb::RangeResponse = dec(b)?;
            zero_ids(&mut a.header);
            format!("{a:?}")
        }
        Req::Compact(_) => {
            let mut a: pb::CompactionResponse = dec(b)?;
            zero_ids(&mut a.header);
            format!("{a:?}")
        }
        Req::Grant(g) => {
            let mut a: pb::LeaseGrantResponse = dec(b)?;
            zero_ids(&mut a.header);
            let id = if g.id == 0 {
                side.auto_leases.push(a.id);
                format!("auto#{}", side.auto_leases.len())
            } else {
                format!("{:#x}", a.id)
            };
            format!("grant id={id} ttl={} error={:?} header={:?}", a.ttl, a.error, a.header)
        }
        Req::Revoke(_) => {
            let mut a: pb::LeaseRevokeResponse = dec(b)?;
            zero_ids(&mut a.header);
            format!("{a:?}")
        }
        Req::Ttl(_) => {
            let mut a: pb::LeaseTimeToLiveResponse = dec(b)?;
            zero_ids(&mut a.header);
            a.keys.sort();
            let ttl = if a.ttl > 0 { "live".to_string() } else { a.ttl.to_string() };
            format!(
                "ttl id={:#x} ttl={ttl} granted={} keys={:?} header={:?}",
                a.id,
                a.granted_ttl,
                a.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>(),
                a.header
            )
        }
        Req::Leases => {
            let mut a: pb::LeaseLeasesResponse = dec(b)?;
            zero_ids(&mut a.header);
            let mut ids: Vec<String> = a
                .leases
                .iter()
                .map(|l| match side.auto_leases.iter().position(|&x| x == l.id) {
                    Some(i) => format!("auto#{}", i + 1),
                    None => format!("{:#x}", l.id),
                })
                .collect();
            ids.sort();
            format!("leases {ids:?} header={:?}", a.header)
        }
        Req::WatchCreate(..) | Req::WatchCancel(..) | Req::Progress(_) => unreachable!("not unary"),
    })
}

/// The remaining TTLs of a TimeToLive answer pair, to be compared approximately.
fn ttls(req: &Req, e: &[u8], m: &[u8]) -> Option<(i64, i64)> {
    match req {
        Req::Ttl(_) => {
            let a = pb::LeaseTimeToLiveResponse::decode(e).ok()?;
            let b = pb::LeaseTimeToLiveResponse::decode(m).ok()?;
            Some((a.ttl, b.ttl))
        }
        _ => None,
    }
}

fn event_text(e: &mvccpb::Event) -> String {
    let kind = if e.r#type == mvccpb::event::EventType::Delete as i32 { "DELETE" } else { "PUT" };
    let kv = |kv: &mvccpb::KeyValue| {
        format!(
            "{:?}={:?} c={} m={} ver={} lease={:#x}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.lease
        )
    };
    let prev = e.prev_kv.as_ref().map(kv).unwrap_or_default();
    format!("{kind} {} prev=[{prev}]", e.kv.as_ref().map(kv).unwrap_or_default())
}

/// One watcher's life as a client sees it: its created response, its events by revision, and
/// how it ended.
#[derive(Default, Debug)]
struct Life {
    created: String,
    revs: Vec<(i64, Vec<String>)>,
    end: Option<String>,
    /// Ended by a client cancel: only a prefix of its events is owed.
    client_cancel: bool,
}

/// Sorts one stream's responses into its watchers' lives (by watch ID, in order), checking
/// that no revision is split over two responses.
fn lives(name: &str, s: usize, got: &[pb::WatchResponse]) -> Result<BTreeMap<i64, Vec<Life>>, String> {
    let mut by_id: BTreeMap<i64, Vec<Life>> = BTreeMap::new();
    for r in got {
        let progress = !r.created && !r.canceled && r.events.is_empty() && r.compact_revision == 0;
        if progress {
            continue;
        }
        let rev = r.header.as_ref().map_or(0, |h| h.revision);
        let lives = by_id.entry(r.watch_id).or_default();
        if r.created {
            lives.push(Life {
                created: format!("created canceled={} reason={:?} rev={rev}", r.canceled, r.cancel_reason),
                ..Default::default()
            });
            if r.canceled {
                lives.last_mut().unwrap().end = Some("refused".into());
            }
            continue;
        }
        // The client's cancel of a watcher a compaction canceled is answered (its ID was still
        // taken).
        let after_compaction = lives.last_mut().filter(|l| {
            l.end.as_ref().is_some_and(|e| e.starts_with("canceled compact=") && !e.starts_with("canceled compact=0 "))
        });
        if let Some(life) = after_compaction.filter(|_| r.canceled && r.compact_revision == 0 && r.events.is_empty()) {
            if let Some(end) = &mut life.end {
                end.push_str(&format!(", then the client's cancel answered at rev={rev}"));
            }
            continue;
        }
        let Some(life) = lives.last_mut().filter(|l| l.end.is_none()) else {
            return Err(format!("{name}: stream {s}: a response for watch {} that is not open: {r:?}", r.watch_id));
        };
        let mut first = true;
        for e in &r.events {
            let erev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            let text = event_text(e);
            match life.revs.last_mut() {
                Some((last, evs)) if *last == erev => {
                    if first {
                        return Err(format!(
                            "{name}: stream {s}: watch {}: the events of revision {erev} came in two responses",
                            r.watch_id
                        ));
                    }
                    evs.push(text);
                }
                Some((last, _)) if *last > erev => {
                    return Err(format!("{name}: stream {s}: watch {}: revision {erev} after {last}", r.watch_id))
                }
                _ => life.revs.push((erev, vec![text])),
            }
            first = false;
        }
        if r.canceled {
            life.client_cancel = r.compact_revision == 0 && r.cancel_reason.is_empty();
            life.end = Some(format!("canceled compact={} reason={:?} rev={rev}", r.compact_revision, r.cancel_reason));
        }
    }
    Ok(by_id)
}

/// Whether two deliveries of one revision differ only in a `prev_kv` that etcd left out and
/// MetaStore sent, the revision being at or below the last compaction. etcd 3.4 looks the
/// previous record up when it sends the event (a Range at the revision before, in the watch
/// stream's send loop), so a compaction applied in between makes that lookup fail and the field
/// go missing: a race inside etcd (the same seed agrees on one run and not the next).
fn prev_kv_raced(p: &(i64, Vec<String>), q: &(i64, Vec<String>), compacted: i64) -> bool {
    p.0 == q.0
        && p.0 <= compacted
        && p.1.len() == q.1.len()
        && p.1.iter().zip(&q.1).all(|(a, b)| {
            a == b
                || (a.ends_with(" prev=[]")
                    && b.split_once(" prev=[").is_some_and(|(head, _)| a == &format!("{head} prev=[]")))
        })
}

/// Compares the two servers' watch streams; the first difference. `compacted` is the last
/// compaction's revision (see [`prev_kv_raced`]).
fn compare_watches(e: &Side, m: &Side, compacted: i64) -> Result<usize, String> {
    let mut events = 0;
    for s in 0..STREAMS {
        let el = lives("etcd", s, &e.got[s])?;
        let ml = lives("metastore", s, &m.got[s])?;
        let ids: std::collections::BTreeSet<i64> = el.keys().chain(ml.keys()).copied().collect();
        for id in ids {
            let (a, b) = (el.get(&id).map_or(&[][..], |v| &v[..]), ml.get(&id).map_or(&[][..], |v| &v[..]));
            if a.len() != b.len() {
                return Err(format!(
                    "stream {s}, watch {id}: {} lives on etcd, {} on metastore\n  etcd:      {a:?}\n  metastore: {b:?}",
                    a.len(),
                    b.len()
                ));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let at = format!("stream {s}, watch {id} (life {i})");
                if x.created != y.created || x.end != y.end {
                    return Err(format!(
                        "{at}: created/ended differ\n  etcd:      {} / {:?}\n  metastore: {} / {:?}",
                        x.created, x.end, y.created, y.end
                    ));
                }
                let n = if x.client_cancel { x.revs.len().min(y.revs.len()) } else { x.revs.len().max(y.revs.len()) };
                for j in 0..n {
                    match (x.revs.get(j), y.revs.get(j)) {
                        (Some(p), Some(q)) if p == q || prev_kv_raced(p, q, compacted) => events += p.1.len(),
                        (p, q) => {
                            return Err(format!(
                                "{at}: revision #{j} differs\n  etcd:      {p:?}\n  metastore: {q:?}\n  etcd's revisions before: {:?}",
                                &x.revs[j.saturating_sub(3).min(x.revs.len())..j.min(x.revs.len())]
                            ))
                        }
                    }
                }
            }
        }
    }
    Ok(events)
}

// ----- the run -----

#[derive(Default)]
struct Coverage(BTreeMap<String, u64>);

impl Coverage {
    fn hit(&mut self, t: &str) {
        *self.0.entry(t.to_string()).or_default() += 1;
    }
    fn get(&self, t: &str) -> u64 {
        self.0.get(t).copied().unwrap_or(0)
    }
}

const REQUIRED: [&str; 25] = [
    "put.lease",
    "range.prefix",
    "range.all",
    "range.from_key",
    "range.span",
    "compact",
    "watch.past",
    "watch.compacted",
    "watch.future",
    "watch.created",
    "watch.refused",
    "watch.cancel_compacted",
    "watch.canceled",
    "watch.events",
    "grant.ok",
    "grant.auto",
    "Grant ✗ etcdserver: lease already exists",
    "Grant ✗ etcdserver: too large lease TTL",
    "Revoke ✗ etcdserver: requested lease not found",
    "Put ✗ etcdserver: requested lease not found",
    "revoke.ok",
    "revoke.deleted_keys",
    "ttl.live_with_keys",
    "ttl.unknown",
    "leases",
];

fn kind(req: &Req) -> &'static str {
    match req {
        Req::Put(_) => "Put",
        Req::Delete(_) => "Delete",
        Req::Txn(_) => "Txn",
        Req::Range(_) => "Range",
        Req::Compact(_) => "Compact",
        Req::Grant(_) => "Grant",
        Req::Revoke(_) => "Revoke",
        Req::Ttl(_) => "Ttl",
        Req::Leases => "Leases",
        Req::WatchCreate(..) => "WatchCreate",
        Req::WatchCancel(..) => "WatchCancel",
        Req::Progress(_) => "Progress",
    }
}

async fn run_steps(seed: u64, n: usize, e: &mut Side, m: &mut Side, cov: &mut Coverage) -> Result<(), String> {
    let trace = std::env::var("DIFF_TRACE").is_ok();
    let mut gen = Gen { rng: Rng::new(seed), tags: Vec::new() };
    let none = vec![Vec::new(); STREAMS];
    let mut model = Model {
        rev: 1,
        compacted: 0,
        watches: none.clone(),
        compacted_ids: none.clone(),
        doomed: vec![Vec::new(); STREAMS],
    };
    // Watches from the start: everything with prev_kv on stream 0, prefix "a" on stream 1.
    let start = [
        (0, pb::WatchCreateRequest { key: vec![0], range_end: vec![0], prev_kv: true, ..Default::default() }),
        (1, pb::WatchCreateRequest { key: b"a".to_vec(), range_end: b"b".to_vec(), ..Default::default() }),
    ];
    let mut steps: Vec<Req> = start.into_iter().map(|(s, c)| Req::WatchCreate(s, c)).collect();
    let mut i = 0;
    while i < n + 2 {
        let req = if steps.is_empty() { gen.next(&model) } else { steps.remove(0) };
        let at = |why: String| format!("step #{i} ({}): {why}\nrequest: {req:?}", kind(&req));
        if trace {
            eprintln!("#{i} {req:?}");
        }
        match &req {
            Req::WatchCreate(s, _) | Req::WatchCancel(s, _) | Req::Progress(s) => {
                let s = *s;
                let body = req.encode();
                let known_cancel = match &req {
                    Req::WatchCancel(_, id) => {
                        (model.watches[s].contains(id) || model.compacted_ids[s].contains(id)).then_some(*id)
                    }
                    _ => None,
                };
                let mut answers = Vec::new();
                for side in [&mut *e, &mut *m] {
                    side.streams[s].send(&body);
                    let r = match (&req, known_cancel) {
                        (Req::WatchCreate(..), _) => Some(side.until(s, |r| r.created).await.map_err(&at)?),
                        (_, Some(id)) => Some(
                            side.until(s, |r| r.canceled && r.watch_id == id && r.compact_revision == 0)
                                .await
                                .map_err(&at)?,
                        ),
                        _ => None,
                    };
                    answers.push(r);
                }
                if let (Some(a), Some(b)) = (&answers[0], &answers[1]) {
                    let show = |r: &pb::WatchResponse| {
                        let rev = r.header.as_ref().map_or(0, |h| h.revision);
                        format!(
                            "id={} created={} canceled={} reason={:?} compact={} rev={rev}",
                            r.watch_id, r.created, r.canceled, r.cancel_reason, r.compact_revision
                        )
                    };
                    if show(a) != show(b) {
                        return Err(at(format!(
                            "watch answers differ\n  etcd:      {}\n  metastore: {}",
                            show(a),
                            show(b)
                        )));
                    }
                    for t in &gen.tags {
                        cov.hit(t);
                    }
                    if a.created && a.canceled {
                        cov.hit("watch.refused");
                    } else if a.created {
                        cov.hit("watch.created");
                        // One from before the compaction point is about to be canceled by the
                        // server (asynchronously): it is not the client's to cancel.
                        let doomed = matches!(&req, Req::WatchCreate(_, c) if c.start_revision > 0 && c.start_revision < model.compacted);
                        if doomed {
                            model.doomed[s].push((a.watch_id, e.got[s].len(), m.got[s].len()));
                        } else {
                            model.watches[s].push(a.watch_id);
                        }
                    } else {
                        cov.hit("watch.canceled");
                        if model.compacted_ids[s].contains(&a.watch_id) {
                            cov.hit("watch.cancel_compacted");
                        }
                        model.watches[s].retain(|&w| w != a.watch_id);
                        model.compacted_ids[s].retain(|&w| w != a.watch_id);
                    }
                }
            }
            _ => {
                if matches!(req, Req::Compact(_)) {
                    // No watcher may still be catching up when a compaction lands.
                    e.quiet().await.map_err(&at)?;
                    m.quiet().await.map_err(&at)?;
                }
                let body = req.encode();
                let ea: Answer = e.kv.unary_raw(req.path(), &body).await;
                let ma: Answer = m.kv.unary_raw(req.path(), &body).await;
                match (&ea, &ma) {
                    (Ok(x), Ok(y)) => {
                        let (a, b) = (normalise(&req, x, e).map_err(&at)?, normalise(&req, y, m).map_err(&at)?);
                        if a != b {
                            return Err(at(format!("answers differ\n  etcd:      {a}\n  metastore: {b}")));
                        }
                        if let Some((p, q)) = ttls(&req, x, y) {
                            if (p - q).abs() > 2 {
                                return Err(at(format!(
                                    "remaining TTLs differ by more than 2 s: etcd {p}, metastore {q}"
                                )));
                            }
                        }
                        count(&req, x, &model, cov);
                        for t in &gen.tags {
                            cov.hit(t);
                        }
                        if let Req::Compact(c) = &req {
                            model.compacted = c.revision;
                        }
                        if let Some(rev) = header_rev(&req, x) {
                            model.rev = model.rev.max(rev);
                        }
                    }
                    (Err(x), Err(y)) => {
                        if x != y {
                            return Err(at(format!("errors differ\n  etcd:      {x:?}\n  metastore: {y:?}")));
                        }
                        cov.hit(&format!("{} ✗ {}", kind(&req), x.1));
                    }
                    _ => {
                        return Err(at(format!("one accepted, one refused\n  etcd:      {ea:?}\n  metastore: {ma:?}")))
                    }
                }
            }
        }
        if i % 64 == 0 {
            e.drain().await.map_err(&at)?;
            m.drain().await.map_err(&at)?;
            // Compaction notices seen on both: those IDs may now be canceled by the client.
            for s in 0..STREAMS {
                let noticed = |side: &Side, id: i64, from: usize| {
                    side.got[s][from..].iter().any(|r| r.canceled && r.compact_revision != 0 && r.watch_id == id)
                };
                let (ready, wait): (Vec<_>, Vec<_>) =
                    model.doomed[s].iter().copied().partition(|&(id, fe, fm)| noticed(e, id, fe) && noticed(m, id, fm));
                model.compacted_ids[s].extend(ready.into_iter().map(|d| d.0));
                model.doomed[s] = wait;
            }
        }
        i += 1;
    }
    e.quiet().await?;
    m.quiet().await?;
    let events = compare_watches(e, m, model.compacted)?;
    cov.0.insert("watch.events".into(), cov.get("watch.events") + events as u64);
    // The stores end equal too.
    let all = Req::Range(pb::RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() });
    let leases = Req::Leases;
    for req in [all, leases] {
        let (x, y) = (e.kv.unary_raw(req.path(), &req.encode()).await, m.kv.unary_raw(req.path(), &req.encode()).await);
        let (a, b) = (normalise(&req, &x.unwrap(), e)?, normalise(&req, &y.unwrap(), m)?);
        if a != b {
            return Err(format!("at the end, {} differs\n  etcd:      {a}\n  metastore: {b}", kind(&req)));
        }
    }
    Ok(())
}

fn header_rev(req: &Req, b: &[u8]) -> Option<i64> {
    let h = match req {
        Req::Put(_) => pb::PutResponse::decode(b).ok()?.header,
        Req::Delete(_) => pb::DeleteRangeResponse::decode(b).ok()?.header,
        Req::Txn(_) => pb::TxnResponse::decode(b).ok()?.header,
        Req::Range(_) => pb::RangeResponse::decode(b).ok()?.header,
        Req::Revoke(_) => pb::LeaseRevokeResponse::decode(b).ok()?.header,
        _ => None,
    };
    h.map(|h| h.revision)
}

/// Outcome counters from etcd's answer.
fn count(req: &Req, b: &[u8], before: &Model, cov: &mut Coverage) {
    match req {
        Req::Grant(g) => cov.hit(if g.id == 0 { "grant.auto" } else { "grant.ok" }),
        Req::Revoke(_) => {
            cov.hit("revoke.ok");
            if header_rev(req, b).is_some_and(|r| r > before.rev) {
                cov.hit("revoke.deleted_keys");
            }
        }
        Req::Ttl(t) => {
            let a = pb::LeaseTimeToLiveResponse::decode(b).unwrap();
            if a.ttl == -1 {
                cov.hit("ttl.unknown");
            } else if t.keys && !a.keys.is_empty() {
                cov.hit("ttl.live_with_keys");
            }
        }
        Req::Leases => cov.hit("leases"),
        _ => {}
    }
}

fn run_seed(driver: &str, seed: u64, n: usize, cov: &mut Coverage) -> Result<(), String> {
    let started = Instant::now();
    let etcd = Etcd::start_tmpfs();
    let srv = TestServer::start(driver, &[]);
    eprintln!("[{driver}] seed {seed:#x}: {n} steps; etcd at {}, metastore at {}", etcd.client, srv.addr);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = rt.block_on(async {
        let mut e = Side::open("etcd", etcd.client).await;
        let mut m = Side::open("metastore", srv.addr).await;
        run_steps(seed, n, &mut e, &mut m, cov).await
    });
    drop(rt);
    if let Err(msg) = result {
        return Err(format!(
            "[{driver}] seed {seed:#x} (replay: DIFF_SEED={seed:#x}): {msg}\nmetastore log (tail):\n{}",
            tail(&srv.log(), 30)
        ));
    }
    let log = srv.stop();
    assert!(!log.contains("panicked"), "[{driver}] seed {seed:#x}: the metastore log shows a panic:\n{log}");
    eprintln!("[{driver}] seed {seed:#x}: {n} steps agree ({:?})", started.elapsed());
    Ok(())
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn fresh_seed() -> u64 {
    match std::env::var("DIFF_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("DIFF_SEED={s:?} is not a number"))
        }
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    }
}

fn steps() -> usize {
    std::env::var("DIFF_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(STEPS)
}

/// Fixed seeds and a fresh one under io_uring; every counted case must have been exercised.
#[test]
fn watch_and_lease_match_etcd_uring() {
    let fresh = fresh_seed();
    let seeds: Vec<u64> = if std::env::var("DIFF_SEED").is_ok() {
        vec![fresh]
    } else {
        FIXED_SEEDS.iter().copied().chain([fresh]).collect()
    };
    eprintln!("[uring] seeds {seeds:x?} (fresh: {fresh:#x}; replay with DIFF_SEED={fresh:#x})");
    let mut cov = Coverage::default();
    for &seed in &seeds {
        if let Err(msg) = run_seed("uring", seed, steps(), &mut cov) {
            panic!("{msg}");
        }
    }
    let table: String = cov.0.iter().map(|(k, v)| format!("{v:>8}  {k}\n")).collect();
    eprintln!("[uring] coverage:\n{table}");
    let missing: Vec<&str> = REQUIRED.iter().copied().filter(|t| cov.get(t) == 0).collect();
    assert!(missing.is_empty(), "[uring] seeds {seeds:x?}: never exercised: {missing:?}\n{table}");
}

/// One fresh seed under epoll.
#[test]
fn watch_and_lease_match_etcd_epoll() {
    let seed = if std::env::var("DIFF_SEED").is_ok() { fresh_seed() } else { fresh_seed().rotate_left(17) ^ 0xE9011 };
    let mut cov = Coverage::default();
    if let Err(msg) = run_seed("epoll", seed, steps().min(800), &mut cov) {
        panic!("{msg}");
    }
    assert!(cov.get("watch.created") > 0 && cov.get("grant.ok") > 0, "[epoll] seed {seed:#x}: {:?}", cov.0);
}
