//! Differential test of the KV service against a real etcd 3.4.23 (Debian's `etcd-server`). It
//! guards against every way MetaStore's answers can drift from etcd's that hand-written examples
//! miss: an option combination nobody thought of (a sorted, filtered, limited historical read in a
//! nested txn branch), a revision off by one after a delete that deleted nothing, an inner txn
//! header filled differently, an error with the right code but another text, a check done in
//! another order. A seeded generator (the seed is printed at the start and in every failure; three
//! fixed seeds plus one fresh seed per run, `DIFF_SEED` to replay one) builds random KV requests
//! over a small key space so that keys collide and ranges, prefixes and compares hit, and sends
//! the same sequence, one request at a time over one HTTP/2 connection each, to MetaStore and to
//! an etcd the test starts on free loopback ports (fresh stores, both at revision 1). Every
//! response is decoded and compared field by field — revisions included, only the cluster/member
//! ids and raft term of the top-level header zeroed (they legitimately differ; inner txn headers
//! carry none in etcd, so they compare exactly) — and every error by its gRPC code and exact
//! message. The test counts how often each option, outcome and error text was exercised and fails
//! if any stayed at zero, so a generator that quietly stops producing something is caught too.
//!
//! The oracle is etcd 3.4.23, the version MetaStore must match. Every difference this test has
//! found was an etcd behaviour that, as far as we know from its sources, 3.5 shares (the code
//! paths are the same); MetaStore now matches each:
//! - a delete whose range_end is `"\0"` (from-key, all keys) or that is empty never makes a put
//!   of the same txn a duplicate key (etcd's interval tree has no from-key convention);
//! - a limited Range with sort_order NONE and a non-key target sorts only the first limit + 1
//!   keys (etcd fetches everything only for an explicit order or a min/max filter);
//! - an unknown sort_order sorts nothing (key order, whatever the target);
//! - a txn's Range pre-check compares any non-zero revision, negative ones too, with the compacted
//!   revision, which is -1 before the first compaction (so -1 reads, -2 is compacted), and a
//!   first compaction at revision 0 succeeds.
//!
//! One request crashes etcd 3.4.23 and is never sent: a txn whose from-key delete removes the key
//! an ignore_value/ignore_lease put after it needs (see `strip_ignore_flags`). MetaStore fails that
//! txn whole with "etcdserver: key not found" instead (a unit test in `core/src/etcd/kv.rs`).
//!
//! One 3.4.23 property is not a contract and is compared loosely: the order of sort ties beyond
//! 12 records (see [`SORT_STABLE_MAX`] and [`canon_range`]).
//!
//! Not covered: requests prost cannot encode. etcd (gogoproto) tells an absent `range_end` from
//! one present with zero bytes and serves the latter as "from key" in a Range or a read-only txn
//! (writes lose the difference when re-encoded for raft); MetaStore decodes both as absent.
//!
//! `DIFF_SEED=<n>` replaces the fresh seed, `DIFF_REQUESTS=<n>` the requests per seed,
//! `DIFF_TRACE=1` prints every request and both answers; for hunting, `DIFF_EXTRA_SEEDS=<n>` runs
//! n more seeds and `DIFF_KEEP_GOING=1` reports the first difference of every seed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::grpc::Client;
use common::rng::Rng;
use common::TestServer;
use metastore_proto::etcdserverpb as pb;
use metastore_proto::mvccpb::KeyValue;
use pb::{compare, range_request, request_op, response_op};
use prost::Message;

/// Fixed seeds: the same sequences every run, so coverage never depends on luck.
const FIXED_SEEDS: [u64; 3] = [0x5EED_0001, 0xD1FF_E7CD, 0x3423];
/// Requests per seed under io_uring: 4 seeds × 5,000 = 20,000 per run (the acceptance text asks
/// for at least 10,000; against etcd on tmpfs they take about 4 s per seed).
const URING_REQUESTS_PER_SEED: usize = 5_000;
/// Requests for the shorter run under epoll (one fresh seed).
const EPOLL_REQUESTS: usize = 2_000;
/// Limits passed identically to both servers (etcd's defaults, spelled out so a changed default
/// on either side cannot make them disagree).
const MAX_TXN_OPS: usize = 128;
const MAX_REQUEST_BYTES: usize = 1_572_864;
/// etcd 3.4.23 as Debian builds it (go1.19) sorts with pdqsort, which runs insertion sort — a
/// stable sort — on at most 12 elements: ties keep the ascending key order the store returned,
/// in both directions (MetaStore does the same with a stable sort). Above 12 the order of equal
/// elements is pdqsort's and not a contract, so a sorted result over more than 12 records is
/// compared up to the order of ties: see [`canon_range`].
const SORT_STABLE_MAX: i64 = 12;

// ----- requests -----

#[derive(Debug, Clone)]
enum Req {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    Status,
    MemberList,
}

impl Req {
    fn kind(&self) -> &'static str {
        match self {
            Req::Range(_) => "Range",
            Req::Put(_) => "Put",
            Req::Delete(_) => "DeleteRange",
            Req::Txn(_) => "Txn",
            Req::Compact(_) => "Compact",
            Req::Status => "Status",
            Req::MemberList => "MemberList",
        }
    }

    fn path(&self) -> &'static str {
        match self {
            Req::Range(_) => "/etcdserverpb.KV/Range",
            Req::Put(_) => "/etcdserverpb.KV/Put",
            Req::Delete(_) => "/etcdserverpb.KV/DeleteRange",
            Req::Txn(_) => "/etcdserverpb.KV/Txn",
            Req::Compact(_) => "/etcdserverpb.KV/Compact",
            Req::Status => "/etcdserverpb.Maintenance/Status",
            Req::MemberList => "/etcdserverpb.Cluster/MemberList",
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Req::Range(r) => r.encode_to_vec(),
            Req::Put(r) => r.encode_to_vec(),
            Req::Delete(r) => r.encode_to_vec(),
            Req::Txn(r) => r.encode_to_vec(),
            Req::Compact(r) => r.encode_to_vec(),
            Req::Status => pb::StatusRequest {}.encode_to_vec(),
            Req::MemberList => pb::MemberListRequest::default().encode_to_vec(),
        }
    }
}

/// One generated request and what it exercises.
struct Step {
    req: Req,
    /// Options it uses, counted when etcd accepts it.
    tags: Vec<String>,
    /// What it provokes on purpose, counted when etcd rejects it.
    err_tag: Option<&'static str>,
}

/// What the generator knows about the store, learnt from etcd's answers.
#[derive(Debug, Clone, Copy)]
struct Model {
    rev: i64,
    /// The last successful compaction's revision.
    compacted: Option<i64>,
}

const SORT_ORDERS: [&str; 3] = ["none", "ascend", "descend"];
const SORT_TARGETS: [&str; 5] = ["key", "version", "create", "mod", "value"];
const CMP_TARGETS: [&str; 5] = ["version", "create", "mod", "value", "lease"];
const CMP_RESULTS: [&str; 4] = ["equal", "greater", "less", "not_equal"];
/// Keys outside the letters: the smallest and largest bytes, alone and inside keys.
const SPECIAL_KEYS: [&[u8]; 7] = [b"\0", b"\xff", b"a\xff", b"\xff\xff", b"a\0", b"b\0\xff", b"c\xff\xff"];
/// The key of the rare big values, deleted right after being written.
const BIG_KEY: &[u8] = b"bbig";
const BIG_OK: usize = 1_000_000;
const BIG_TOO_LARGE: usize = 1_600_000;

/// The range_end that selects every key with this prefix.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().unwrap() = last + 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// Whether `k` is in (key, range_end), by §3.2.
fn in_range(key: &[u8], end: &[u8], k: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == b"\0" {
        k >= key
    } else {
        key <= k && k < end
    }
}

/// Keeps the puts and deletes of one txn clear of each other (conservatively: across branches
/// and nesting levels), so that most txns get past the duplicate-key rule and execute; a txn
/// generated without it exercises the rule itself.
struct DupGuard {
    active: bool,
    puts: Vec<Vec<u8>>,
    dels: Vec<(Vec<u8>, Vec<u8>)>,
}

impl DupGuard {
    fn put_ok(&self, k: &[u8]) -> bool {
        !self.active || (!self.puts.iter().any(|p| p == k) && !self.dels.iter().any(|(s, e)| in_range(s, e, k)))
    }

    /// A delete may not cover a key already put anywhere in the txn (later puts are checked
    /// against it by `put_ok`). From-key ranges count as covering, though etcd would not mind.
    fn del_ok(&self, s: &[u8], e: &[u8]) -> bool {
        !self.active || !self.puts.iter().any(|k| in_range(s, e, k))
    }
}

fn has_from_key_delete(t: &pb::TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(request_op::Request::RequestDeleteRange(d)) => d.range_end == b"\0",
        Some(request_op::Request::RequestTxn(inner)) => has_from_key_delete(inner),
        _ => false,
    })
}

fn strip_ignore_flags(t: &mut pb::TxnRequest) {
    for op in t.success.iter_mut().chain(&mut t.failure) {
        match &mut op.request {
            Some(request_op::Request::RequestPut(p)) => {
                p.ignore_value = false;
                p.ignore_lease = false;
            }
            Some(request_op::Request::RequestTxn(inner)) => strip_ignore_flags(inner),
            _ => {}
        }
    }
}

struct Gen {
    rng: Rng,
    queued: VecDeque<Step>,
}

impl Gen {
    fn new(seed: u64) -> Self {
        Gen { rng: Rng::new(seed), queued: VecDeque::new() }
    }

    fn key(&mut self) -> Vec<u8> {
        if self.rng.pct(6) {
            return self.rng.pick(&SPECIAL_KEYS).to_vec();
        }
        let len = match self.rng.below(10) {
            0..=2 => 1,
            3..=6 => 2,
            _ => 3,
        };
        (0..len).map(|_| *self.rng.pick(b"abc")).collect()
    }

    fn value(&mut self) -> Vec<u8> {
        match self.rng.below(20) {
            0..=2 => Vec::new(),
            3..=15 => vec![b'v', b'0' + self.rng.below(5) as u8],
            _ => {
                let n = 1 + self.rng.below(5);
                (0..n).map(|_| *self.rng.pick(&[0u8, b'a', b'v', b'z', 0xff])).collect()
            }
        }
    }

    /// A (key, range_end) pair and the name of its kind.
    fn key_range(&mut self) -> (Vec<u8>, Vec<u8>, &'static str) {
        match self.rng.below(20) {
            0..=6 => (self.key(), Vec::new(), "single"),
            7..=11 => {
                let k = self.key();
                let k = if k.len() > 1 && self.rng.pct(50) { k[..1].to_vec() } else { k };
                let e = prefix_end(&k);
                (k, e, "prefix")
            }
            12..=13 => (self.key(), vec![0], "from_key"),
            14..=15 => (vec![0], vec![0], "all_keys"),
            // An explicit span; a quarter of them end at or before their start (empty).
            _ => {
                let (a, b) = (self.key(), self.key());
                let (a, b) = if a > b && self.rng.pct(75) { (b, a) } else { (a, b) };
                (a, b, "span")
            }
        }
    }

    /// A key range for a delete: mostly single keys, so that the store keeps some keys.
    fn delete_range(&mut self) -> (Vec<u8>, Vec<u8>, &'static str) {
        if self.rng.pct(50) {
            (self.key(), Vec::new(), "single")
        } else {
            self.key_range()
        }
    }

    /// A revision for a historical read: mostly readable ones, sometimes compacted or future
    /// ones, zero or negative.
    fn read_rev(&mut self, m: &Model, errors: bool) -> i64 {
        let floor = m.compacted.unwrap_or(1).max(1);
        match self.rng.below(20) {
            0..=11 => 0,
            12..=16 => self.rng.between(floor, m.rev),
            17 if errors => m.rev + 1 + self.rng.below(3) as i64,
            18 if errors => match m.compacted {
                Some(c) if c > 1 => self.rng.between(1, c - 1),
                _ => -(1 + self.rng.below(3) as i64),
            },
            19 => -(1 + self.rng.below(2) as i64),
            _ => floor,
        }
    }

    /// A revision to compare or filter against: near the current one.
    fn some_rev(&mut self, m: &Model) -> i64 {
        if self.rng.pct(20) {
            0
        } else {
            self.rng.between((m.rev - 15).max(1), m.rev + 1)
        }
    }

    fn range_req(&mut self, m: &Model, tags: &mut Vec<String>, errors: bool) -> pb::RangeRequest {
        let (key, range_end, kind) = self.key_range();
        tags.push(format!("range.{kind}"));
        let mut r = pb::RangeRequest { key, range_end, ..Default::default() };
        if self.rng.pct(45) {
            r.limit = 1 + self.rng.below(14) as i64;
            tags.push("range.limit".into());
        } else if self.rng.pct(4) {
            r.limit = -1 - self.rng.below(3) as i64;
            tags.push("range.negative_limit".into());
        }
        r.revision = self.read_rev(m, errors);
        if r.revision > 0 && r.revision < m.rev {
            tags.push("range.historical_rev".into());
        } else if r.revision < 0 {
            tags.push("range.negative_rev".into());
        }
        if self.rng.pct(50) {
            r.sort_order = self.rng.below(3) as i32;
            r.sort_target = self.rng.below(5) as i32;
            tags.push(format!(
                "range.sort.{}.{}",
                SORT_ORDERS[r.sort_order as usize], SORT_TARGETS[r.sort_target as usize]
            ));
            if self.rng.pct(2) {
                // An order etcd does not know: it fetches everything but sorts nothing. (An
                // unknown target is never sent: etcd 3.4 panics on it.)
                r.sort_order = 3 + self.rng.below(3) as i32;
                tags.push("range.sort.unknown_order".into());
            }
        }
        if self.rng.pct(15) {
            r.keys_only = true;
            tags.push("range.keys_only".into());
        }
        if self.rng.pct(10) {
            r.count_only = true;
            tags.push("range.count_only".into());
        }
        if self.rng.pct(30) {
            r.serializable = true;
            tags.push("range.serializable".into());
        }
        for (name, field) in [
            ("range.min_mod", &mut r.min_mod_revision),
            ("range.max_mod", &mut r.max_mod_revision),
            ("range.min_create", &mut r.min_create_revision),
            ("range.max_create", &mut r.max_create_revision),
        ] {
            if self.rng.pct(8) {
                *field = if self.rng.pct(10) { -1 } else { self.rng.between((m.rev - 20).max(1), m.rev + 1) };
                tags.push(name.into());
            }
        }
        r
    }

    fn put_req(&mut self, key: Vec<u8>, tags: &mut Vec<String>, err_tag: &mut Option<&'static str>) -> pb::PutRequest {
        let mut p = pb::PutRequest { key, value: self.value(), ..Default::default() };
        if p.value.is_empty() {
            tags.push("put.empty_value".into());
        }
        if self.rng.pct(40) {
            p.prev_kv = true;
            tags.push("put.prev_kv".into());
        }
        if self.rng.pct(10) {
            p.ignore_value = true;
            if self.rng.pct(85) {
                p.value.clear();
                tags.push("put.ignore_value".into());
            } else {
                p.value = b"x".to_vec();
                *err_tag = Some("put.ignore_value_with_value");
            }
        }
        if self.rng.pct(10) {
            p.ignore_lease = true;
            if self.rng.pct(85) {
                tags.push("put.ignore_lease".into());
            } else {
                p.lease = 1 + self.rng.below(1000) as i64;
                *err_tag = Some("put.ignore_lease_with_lease");
            }
        } else if self.rng.pct(3) {
            p.lease = 1 + self.rng.below(1000) as i64;
            *err_tag = Some("put.unknown_lease");
        }
        p
    }

    fn delete_req(
        &mut self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        kind: &str,
        tags: &mut Vec<String>,
    ) -> pb::DeleteRangeRequest {
        tags.push(format!("delete.{kind}"));
        let mut d = pb::DeleteRangeRequest { key, range_end, prev_kv: false };
        if self.rng.pct(40) {
            d.prev_kv = true;
            tags.push("delete.prev_kv".into());
        }
        d
    }

    fn compare(&mut self, m: &Model, tags: &mut Vec<String>) -> pb::Compare {
        let mut c = pb::Compare::default();
        if self.rng.pct(70) {
            c.key = self.key();
        } else {
            let (k, e, _) = self.key_range();
            c.key = k;
            c.range_end = e;
            if !c.range_end.is_empty() {
                tags.push("txn.cmp.range_end".into());
            }
        }
        c.target = self.rng.below(5) as i32;
        c.result = self.rng.below(4) as i32;
        tags.push(format!("txn.cmp.{}.{}", CMP_TARGETS[c.target as usize], CMP_RESULTS[c.result as usize]));
        let arm = match self.rng.below(100) {
            0..=79 => Some(c.target as u64),
            80..=89 => {
                tags.push("txn.cmp.unset_union".into());
                None
            }
            _ => {
                tags.push("txn.cmp.mismatched_union".into());
                Some((c.target as u64 + 1 + self.rng.below(4)) % 5)
            }
        };
        c.target_union = arm.map(|a| match a {
            0 => compare::TargetUnion::Version(self.rng.below(4) as i64),
            1 => compare::TargetUnion::CreateRevision(self.some_rev(m)),
            2 => compare::TargetUnion::ModRevision(self.some_rev(m)),
            3 => compare::TargetUnion::Value(self.value()),
            _ => compare::TargetUnion::Lease(if self.rng.pct(70) { 0 } else { 1 + self.rng.below(3) as i64 }),
        });
        if self.rng.pct(1) {
            // Out-of-range enum values: Go compares them as "equal" / lets them pass.
            if self.rng.pct(50) {
                c.target = 5 + self.rng.below(3) as i32;
            } else {
                c.result = 4 + self.rng.below(3) as i32;
            }
            tags.push("txn.cmp.unknown_enum".into());
        }
        c
    }

    fn op(&mut self, m: &Model, depth: u32, g: &mut DupGuard, tags: &mut Vec<String>) -> pb::RequestOp {
        use request_op::Request as R;
        let which = self.rng.below(100);
        let req = if which < 35 {
            None
        } else if which < 70 {
            (0..8).map(|_| self.key()).find(|k| g.put_ok(k)).map(|k| {
                g.puts.push(k.clone());
                // Inside a txn a provoked put error is one only if its branch runs.
                R::RequestPut(self.put_req(k, tags, &mut None))
            })
        } else if which < 88 {
            (0..8).map(|_| self.delete_range()).find(|(k, e, _)| g.del_ok(k, e)).map(|(k, e, kind)| {
                g.dels.push((k.clone(), e.clone()));
                R::RequestDeleteRange(self.delete_req(k, e, kind, tags))
            })
        } else if depth < 2 {
            tags.push("txn.nested".into());
            Some(R::RequestTxn(self.txn_body(m, depth + 1, g, tags)))
        } else {
            None
        };
        // Ranges fill in where a put or delete would have collided.
        let req = req.unwrap_or_else(|| {
            let errors = self.rng.pct(15);
            R::RequestRange(self.range_req(m, tags, errors))
        });
        pb::RequestOp { request: Some(req) }
    }

    fn txn_body(&mut self, m: &Model, depth: u32, g: &mut DupGuard, tags: &mut Vec<String>) -> pb::TxnRequest {
        let ncmp = *self.rng.pick(&[0, 1, 1, 1, 2, 2, 3]);
        let compare = (0..ncmp).map(|_| self.compare(m, tags)).collect();
        let ns = self.rng.below(5);
        let success = (0..ns).map(|_| self.op(m, depth, g, tags)).collect();
        let nf = self.rng.below(4);
        let failure = (0..nf).map(|_| self.op(m, depth, g, tags)).collect();
        pb::TxnRequest { compare, success, failure }
    }

    fn single_range(&mut self) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                key: self.key(),
                ..Default::default()
            })),
        }
    }

    fn txn(&mut self, m: &Model) -> Step {
        let mut tags = Vec::new();
        let mut err_tag = None;
        let roll = self.rng.below(1000);
        if roll < 20 {
            // 127, 128 or 129 entries in one list: etcd's limit is per list.
            let n = MAX_TXN_OPS - 1 + self.rng.below(3) as usize;
            let mut t = pb::TxnRequest::default();
            match self.rng.below(3) {
                0 => {
                    t.compare = (0..n)
                        .map(|_| pb::Compare {
                            key: self.key(),
                            target: compare::CompareTarget::Version as i32,
                            result: compare::CompareResult::Greater as i32,
                            target_union: Some(compare::TargetUnion::Version(0)),
                            range_end: Vec::new(),
                        })
                        .collect();
                    t.success = vec![self.single_range()];
                }
                1 => t.success = (0..n).map(|_| self.single_range()).collect(),
                _ => {
                    t.failure = (0..n).map(|_| self.single_range()).collect();
                    t.compare = vec![pb::Compare { key: b"a".to_vec(), ..Default::default() }];
                }
            }
            if n == MAX_TXN_OPS {
                tags.push("txn.ops_128".into());
            } else if n > MAX_TXN_OPS {
                err_tag = Some("txn.ops_129");
            }
            return Step { req: Req::Txn(t), tags, err_tag };
        }
        if roll < 30 {
            // A nested txn gets the budget its parent left: 128 - 101 = 27.
            let k = 26 + self.rng.below(3) as usize;
            let inner = pb::TxnRequest { success: (0..k).map(|_| self.single_range()).collect(), ..Default::default() };
            let mut success: Vec<pb::RequestOp> = (0..100).map(|_| self.single_range()).collect();
            success.push(pb::RequestOp { request: Some(request_op::Request::RequestTxn(inner)) });
            if k <= 27 {
                tags.push("txn.nested_budget".into());
            } else {
                err_tag = Some("txn.nested_over_budget");
            }
            return Step { req: Req::Txn(pb::TxnRequest { success, ..Default::default() }), tags, err_tag };
        }
        if roll < 33 {
            let put = pb::PutRequest { key: BIG_KEY.to_vec(), value: vec![b'x'; BIG_TOO_LARGE], ..Default::default() };
            let t = pb::TxnRequest {
                success: vec![pb::RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
                ..Default::default()
            };
            return Step { req: Req::Txn(t), tags, err_tag: Some("txn.too_large") };
        }
        let allow_dup = self.rng.pct(15);
        if allow_dup {
            tags.push("txn.dups_allowed".into());
        }
        let mut g = DupGuard { active: !allow_dup, puts: Vec::new(), dels: Vec::new() };
        let mut t = self.txn_body(m, 0, &mut g, &mut tags);
        if allow_dup && has_from_key_delete(&t) {
            // etcd 3.4.23 crashes on an ignore_* put whose key a from-key delete earlier in the
            // txn removed (the duplicate-key rule does not see from-key deletes; the put then
            // fails while the txn is applied: "panic: unexpected error during txn"). Not sent;
            // MetaStore's answer to it (the txn fails whole) is a unit test in etcd/kv.rs.
            strip_ignore_flags(&mut t);
        }
        if roll < 43 {
            // An op with no arm set, anywhere: etcd's "key not found" quirk.
            let list = if self.rng.pct(50) { &mut t.success } else { &mut t.failure };
            let at = self.rng.below(list.len() as u64 + 1) as usize;
            list.insert(at, pb::RequestOp { request: None });
            err_tag = Some("txn.op_without_arm");
        } else if roll < 53 {
            // An empty key in a compare or an op.
            if self.rng.pct(50) {
                t.compare.push(pb::Compare { key: Vec::new(), ..Default::default() });
                err_tag = Some("txn.compare_empty_key");
            } else {
                let op = match self.rng.below(3) {
                    0 => request_op::Request::RequestRange(pb::RangeRequest::default()),
                    1 => request_op::Request::RequestPut(pb::PutRequest::default()),
                    _ => request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest::default()),
                };
                t.failure.push(pb::RequestOp { request: Some(op) });
                err_tag = Some("txn.op_empty_key");
            }
        }
        if t.success.is_empty() && t.failure.is_empty() {
            tags.push("txn.no_ops".into());
        }
        Step { req: Req::Txn(t), tags, err_tag }
    }

    fn compact(&mut self, m: &Model) -> Step {
        let mut tags = Vec::new();
        let floor = m.compacted.unwrap_or(0);
        let (revision, err_tag) = match self.rng.below(20) {
            0..=9 => (self.rng.between((m.rev - 30).max(floor + 1), m.rev), None),
            10..=12 => match m.compacted {
                Some(c) => (self.rng.between(c - 3, c), Some("compact.compacted")),
                None => (self.rng.between(-2, 0), None),
            },
            13..=15 => (m.rev + 1 + self.rng.below(5) as i64, Some("compact.future")),
            _ => (self.rng.between(-1, m.rev), None),
        };
        let physical = self.rng.pct(50);
        if physical {
            tags.push("compact.physical".into());
        }
        Step { req: Req::Compact(pb::CompactionRequest { revision, physical }), tags, err_tag }
    }

    fn next(&mut self, m: &Model) -> Step {
        if let Some(s) = self.queued.pop_front() {
            return s;
        }
        let mut tags = Vec::new();
        let mut err_tag = None;
        let roll = self.rng.below(1000);
        let req = match roll {
            0..=299 => {
                let errors = self.rng.pct(40);
                Req::Range(self.range_req(m, &mut tags, errors))
            }
            300..=549 => {
                let key = self.key();
                Req::Put(self.put_req(key, &mut tags, &mut err_tag))
            }
            550..=649 => {
                let (k, e, kind) = self.delete_range();
                Req::Delete(self.delete_req(k, e, kind, &mut tags))
            }
            650..=934 => return self.txn(m),
            935..=954 => return self.compact(m),
            955..=961 => {
                tags.push("status".into());
                Req::Status
            }
            962..=968 => {
                tags.push("member_list".into());
                Req::MemberList
            }
            969..=974 => {
                let p =
                    pb::PutRequest { key: BIG_KEY.to_vec(), value: vec![b'y'; BIG_TOO_LARGE], ..Default::default() };
                err_tag = Some("put.too_large");
                Req::Put(p)
            }
            978..=979 => {
                // Reads are not proposed through raft, so etcd does not size-check them.
                if self.rng.pct(50) {
                    tags.push("range.big_key_not_size_checked".into());
                    Req::Range(pb::RangeRequest { key: vec![b'k'; BIG_TOO_LARGE], ..Default::default() })
                } else {
                    tags.push("txn.big_read_only_not_size_checked".into());
                    let c = pb::Compare {
                        key: b"a".to_vec(),
                        target: compare::CompareTarget::Value as i32,
                        target_union: Some(compare::TargetUnion::Value(vec![b'c'; BIG_TOO_LARGE])),
                        ..Default::default()
                    };
                    let t = pb::TxnRequest { compare: vec![c], success: vec![self.single_range()], failure: vec![] };
                    Req::Txn(t)
                }
            }
            975..=977 => {
                // A big value that fits, deleted by the next request so that later reads stay
                // small (historical reads may still meet it).
                let p = pb::PutRequest { key: BIG_KEY.to_vec(), value: vec![b'z'; BIG_OK], ..Default::default() };
                tags.push("put.big_value_ok".into());
                let d = pb::DeleteRangeRequest { key: BIG_KEY.to_vec(), ..Default::default() };
                self.queued.push_back(Step { req: Req::Delete(d), tags: vec![], err_tag: None });
                Req::Put(p)
            }
            _ => match self.rng.below(3) {
                0 => {
                    err_tag = Some("range.empty_key");
                    Req::Range(pb::RangeRequest { range_end: b"z".to_vec(), ..Default::default() })
                }
                1 => {
                    err_tag = Some("put.empty_key");
                    Req::Put(pb::PutRequest { value: b"v".to_vec(), ..Default::default() })
                }
                _ => {
                    err_tag = Some("delete.empty_key");
                    Req::Delete(pb::DeleteRangeRequest { prev_kv: true, ..Default::default() })
                }
            },
        };
        Step { req, tags, err_tag }
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

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum SortKey<'a> {
    Int(i64),
    Bytes(&'a [u8]),
}

fn sort_key(kv: &KeyValue, target: i32) -> SortKey<'_> {
    match range_request::SortTarget::try_from(target) {
        Ok(range_request::SortTarget::Version) => SortKey::Int(kv.version),
        Ok(range_request::SortTarget::Create) => SortKey::Int(kv.create_revision),
        Ok(range_request::SortTarget::Mod) => SortKey::Int(kv.mod_revision),
        Ok(range_request::SortTarget::Value) => SortKey::Bytes(&kv.value),
        _ => SortKey::Bytes(&kv.key),
    }
}

/// Only the field a record was sorted by.
fn sort_field_only(kv: &KeyValue, target: i32) -> KeyValue {
    match range_request::SortTarget::try_from(target) {
        Ok(range_request::SortTarget::Version) => KeyValue { version: kv.version, ..Default::default() },
        Ok(range_request::SortTarget::Create) => KeyValue { create_revision: kv.create_revision, ..Default::default() },
        Ok(range_request::SortTarget::Mod) => KeyValue { mod_revision: kv.mod_revision, ..Default::default() },
        Ok(range_request::SortTarget::Value) => KeyValue { value: kv.value.clone(), ..Default::default() },
        _ => KeyValue { key: kv.key.clone(), ..Default::default() },
    }
}

/// Whether etcd may have ordered ties of this (sorted) range unstably: it sorted more than
/// [`SORT_STABLE_MAX`] records by something other than the key. `count` is etcd's.
fn ties_unstable(req: &pb::RangeRequest, count: i64) -> bool {
    let none = range_request::SortOrder::None as i32;
    let key = range_request::SortTarget::Key as i32;
    if req.sort_target == key || req.count_only {
        return false; // keys are unique: no ties
    }
    // etcd fetches everything when an order or a filter is given, else limit + 1 records, and
    // sorts what it fetched (`sort_order` NONE with a non-key target sorts ascending).
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let sorted = if req.sort_order != none || filtered || req.limit <= 0 { count } else { count.min(req.limit + 1) };
    sorted > SORT_STABLE_MAX
}

/// Makes a sorted range result independent of how ties were ordered: records with equal sort
/// keys are put in key order; when the result was truncated (`more`), the last group of ties may
/// hold any of the tied records, so only its sort keys are kept. The sequence of sort keys, the
/// count, `more` and every record outside the last group stay exact. With `keys_only` a VALUE
/// sort key is not in the answer: the records are compared as a set, or only counted if
/// truncated.
fn canon_range(req: &pb::RangeRequest, r: &mut pb::RangeResponse) {
    let target = req.sort_target;
    let value_hidden = req.keys_only && target == range_request::SortTarget::Value as i32;
    if value_hidden {
        if r.more {
            r.kvs.iter_mut().for_each(|kv| *kv = KeyValue::default());
        } else {
            r.kvs.sort_by(|a, b| a.key.cmp(&b.key));
        }
        return;
    }
    let mut out: Vec<KeyValue> = Vec::with_capacity(r.kvs.len());
    let mut i = 0;
    while i < r.kvs.len() {
        let mut j = i + 1;
        while j < r.kvs.len() && sort_key(&r.kvs[j], target) == sort_key(&r.kvs[i], target) {
            j += 1;
        }
        let mut group = r.kvs[i..j].to_vec();
        if r.more && j == r.kvs.len() {
            group = group.iter().map(|kv| sort_field_only(kv, target)).collect();
        } else {
            group.sort_by(|a, b| a.key.cmp(&b.key));
        }
        out.extend(group);
        i = j;
    }
    r.kvs = out;
}

/// Canonicalises the sorted ranges of both answers alike, deciding from etcd's count.
fn canon_range_pair(req: &pb::RangeRequest, e: &mut pb::RangeResponse, m: &mut pb::RangeResponse, cov: &mut Coverage) {
    let sorted = req.sort_order != 0 || req.sort_target != 0;
    if !sorted || req.sort_target == 0 || e.kvs.is_empty() {
        return;
    }
    if ties_unstable(req, e.count) {
        cov.hit("range.sort_ties_loose");
        canon_range(req, e);
        canon_range(req, m);
    } else {
        cov.hit("range.sort_ties_exact");
    }
}

fn canon_txn_pair(req: &pb::TxnRequest, e: &mut pb::TxnResponse, m: &mut pb::TxnResponse, cov: &mut Coverage) {
    if e.succeeded != m.succeeded {
        return;
    }
    let ops = if e.succeeded { &req.success } else { &req.failure };
    for ((op, eo), mo) in ops.iter().zip(&mut e.responses).zip(&mut m.responses) {
        use request_op::Request as Q;
        use response_op::Response as A;
        match (&op.request, &mut eo.response, &mut mo.response) {
            (Some(Q::RequestRange(r)), Some(A::ResponseRange(a)), Some(A::ResponseRange(b))) => {
                canon_range_pair(r, a, b, cov)
            }
            (Some(Q::RequestTxn(t)), Some(A::ResponseTxn(a)), Some(A::ResponseTxn(b))) => canon_txn_pair(t, a, b, cov),
            _ => {}
        }
    }
}

/// Both answers decoded and normalised, as comparable debug text (equal iff the messages are).
fn normalise(req: &Req, e: &[u8], m: &[u8], cov: &mut Coverage) -> Result<(String, String), String> {
    fn dec<T: Message + Default>(b: &[u8], who: &str) -> Result<T, String> {
        T::decode(b).map_err(|err| format!("{who}'s answer does not decode: {err}"))
    }
    Ok(match req {
        Req::Range(r) => {
            let (mut a, mut b): (pb::RangeResponse, pb::RangeResponse) = (dec(e, "etcd")?, dec(m, "metastore")?);
            zero_ids(&mut a.header);
            zero_ids(&mut b.header);
            canon_range_pair(r, &mut a, &mut b, cov);
            (format!("{a:?}"), format!("{b:?}"))
        }
        Req::Put(_) => {
            let (mut a, mut b): (pb::PutResponse, pb::PutResponse) = (dec(e, "etcd")?, dec(m, "metastore")?);
            zero_ids(&mut a.header);
            zero_ids(&mut b.header);
            (format!("{a:?}"), format!("{b:?}"))
        }
        Req::Delete(_) => {
            let (mut a, mut b): (pb::DeleteRangeResponse, pb::DeleteRangeResponse) =
                (dec(e, "etcd")?, dec(m, "metastore")?);
            zero_ids(&mut a.header);
            zero_ids(&mut b.header);
            (format!("{a:?}"), format!("{b:?}"))
        }
        Req::Txn(t) => {
            let (mut a, mut b): (pb::TxnResponse, pb::TxnResponse) = (dec(e, "etcd")?, dec(m, "metastore")?);
            // Only the top-level header: etcd leaves the ids of inner headers unset (0), so
            // those compare exactly, ids included.
            zero_ids(&mut a.header);
            zero_ids(&mut b.header);
            canon_txn_pair(t, &mut a, &mut b, cov);
            (format!("{a:?}"), format!("{b:?}"))
        }
        Req::Compact(_) => {
            let (mut a, mut b): (pb::CompactionResponse, pb::CompactionResponse) =
                (dec(e, "etcd")?, dec(m, "metastore")?);
            zero_ids(&mut a.header);
            zero_ids(&mut b.header);
            (format!("{a:?}"), format!("{b:?}"))
        }
        // Only the revision is comparable: versions, sizes, indexes and ids legitimately differ.
        Req::Status => {
            let (a, b): (pb::StatusResponse, pb::StatusResponse) = (dec(e, "etcd")?, dec(m, "metastore")?);
            let rev = |s: &pb::StatusResponse| s.header.as_ref().map(|h| h.revision);
            (format!("Status revision {:?}", rev(&a)), format!("Status revision {:?}", rev(&b)))
        }
        Req::MemberList => {
            let (a, b): (pb::MemberListResponse, pb::MemberListResponse) = (dec(e, "etcd")?, dec(m, "metastore")?);
            (format!("{} member(s)", a.members.len()), format!("{} member(s)", b.members.len()))
        }
    })
}

/// Debug text with byte strings shown as `b"…"` instead of lists of numbers, cut to a length a
/// failure message can carry.
fn pretty(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('[') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let close = tail.find(']');
        let bytes: Option<Vec<u8>> = close.and_then(|c| {
            let inner = &tail[..c];
            if inner.is_empty() {
                return None;
            }
            inner.split(", ").map(|n| n.parse::<u8>().ok()).collect()
        });
        match (bytes, close) {
            (Some(b), Some(c)) => {
                let shown: String = if b.len() > 48 {
                    format!("{}…({} bytes)", b[..16].escape_ascii(), b.len())
                } else {
                    b.escape_ascii().to_string()
                };
                out.push_str(&format!("b\"{shown}\""));
                rest = &tail[c + 1..];
            }
            _ => {
                out.push('[');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    if out.len() > 6000 {
        let mut cut = 6000;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}… ({} chars)", &out[..cut], out.len())
    } else {
        out
    }
}

// ----- coverage -----

/// How often each option, outcome and error was exercised (by etcd's account).
#[derive(Default)]
struct Coverage {
    counts: BTreeMap<String, u64>,
}

impl Coverage {
    fn hit(&mut self, name: &str) {
        *self.counts.entry(name.to_string()).or_default() += 1;
    }

    fn get(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }

    /// Everything the acceptance text asks to see exercised.
    fn required() -> Vec<String> {
        let mut v: Vec<String> = [
            "range.single",
            "range.prefix",
            "range.from_key",
            "range.all_keys",
            "range.span",
            "range.limit",
            "range.more",
            "range.count_beyond_limit",
            "range.keys_only",
            "range.count_only",
            "range.min_mod",
            "range.max_mod",
            "range.min_create",
            "range.max_create",
            "range.historical_rev",
            "range.negative_rev",
            "range.negative_limit",
            "range.sort.unknown_order",
            "range.big_key_not_size_checked",
            "txn.big_read_only_not_size_checked",
            "range.serializable",
            "range.sort_ties_exact",
            "range.sort_ties_loose",
            "put.empty_value",
            "put.prev_kv",
            "put.prev_kv_returned",
            "put.ignore_value",
            "put.ignore_lease",
            "put.big_value_ok",
            "delete.single",
            "delete.prefix",
            "delete.from_key",
            "delete.all_keys",
            "delete.span",
            "delete.prev_kv",
            "delete.deleted_some",
            "delete.nothing_keeps_revision",
            "txn.succeeded",
            "txn.failed",
            "txn.nested",
            "txn.no_ops",
            "txn.read_only",
            "txn.changed",
            "txn.dups_allowed",
            "txn.ops_128",
            "txn.nested_budget",
            "txn.cmp.range_end",
            "txn.cmp.unset_union",
            "txn.cmp.mismatched_union",
            "txn.cmp.unknown_enum",
            "txn.inner_header.range",
            "txn.inner_header.put",
            "txn.inner_header.delete_range",
            "txn.inner_header.txn",
            "compact.ok",
            "compact.physical",
            "status",
            "member_list",
            // Provoked errors, by cause.
            "✗ put.ignore_value_with_value",
            "✗ put.ignore_lease_with_lease",
            "✗ put.unknown_lease",
            "✗ put.too_large",
            "✗ txn.ops_129",
            "✗ txn.nested_over_budget",
            "✗ txn.too_large",
            "✗ txn.op_without_arm",
            "✗ txn.compare_empty_key",
            "✗ txn.op_empty_key",
            "✗ compact.compacted",
            "✗ compact.future",
            "✗ range.empty_key",
            "✗ put.empty_key",
            "✗ delete.empty_key",
            // Error texts, by RPC.
            "Range ✗ etcdserver: key is not provided",
            "Range ✗ etcdserver: mvcc: required revision has been compacted",
            "Range ✗ etcdserver: mvcc: required revision is a future revision",
            "Put ✗ etcdserver: key is not provided",
            "Put ✗ etcdserver: key not found",
            "Put ✗ etcdserver: value is provided",
            "Put ✗ etcdserver: lease is provided",
            "Put ✗ etcdserver: requested lease not found",
            "Put ✗ etcdserver: request is too large",
            "DeleteRange ✗ etcdserver: key is not provided",
            "Txn ✗ etcdserver: key is not provided",
            "Txn ✗ etcdserver: key not found",
            "Txn ✗ etcdserver: value is provided",
            "Txn ✗ etcdserver: lease is provided",
            "Txn ✗ etcdserver: requested lease not found",
            "Txn ✗ etcdserver: too many operations in txn request",
            "Txn ✗ etcdserver: duplicate key given in txn request",
            "Txn ✗ etcdserver: mvcc: required revision has been compacted",
            "Txn ✗ etcdserver: mvcc: required revision is a future revision",
            "Txn ✗ etcdserver: request is too large",
            "Compact ✗ etcdserver: mvcc: required revision has been compacted",
            "Compact ✗ etcdserver: mvcc: required revision is a future revision",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for o in SORT_ORDERS {
            for t in SORT_TARGETS {
                v.push(format!("range.sort.{o}.{t}"));
            }
        }
        for t in CMP_TARGETS {
            for r in CMP_RESULTS {
                v.push(format!("txn.cmp.{t}.{r}"));
            }
        }
        v
    }

    fn merge(&mut self, other: &Coverage) {
        for (k, n) in &other.counts {
            *self.counts.entry(k.clone()).or_default() += n;
        }
    }

    fn table(&self) -> String {
        let required = Self::required();
        let mut s = String::new();
        for name in &required {
            s += &format!("{:>8}  {name}\n", self.get(name));
        }
        for (name, n) in &self.counts {
            if !required.contains(name) {
                s += &format!("{n:>8}  {name} (not required)\n");
            }
        }
        s
    }

    fn missing(&self) -> Vec<String> {
        Self::required().into_iter().filter(|n| self.get(n) == 0).collect()
    }
}

/// Outcome counters from etcd's (decoded, accepted) answer.
fn count_outcome(req: &Req, e: &[u8], before: &Model, cov: &mut Coverage) {
    match req {
        Req::Range(r) => {
            let a = pb::RangeResponse::decode(e).unwrap();
            count_range(r, &a, cov);
        }
        Req::Put(_) => {
            if pb::PutResponse::decode(e).unwrap().prev_kv.is_some() {
                cov.hit("put.prev_kv_returned");
            }
        }
        Req::Delete(_) => {
            let a = pb::DeleteRangeResponse::decode(e).unwrap();
            if a.deleted > 0 {
                cov.hit("delete.deleted_some");
            } else if a.header.unwrap().revision == before.rev {
                cov.hit("delete.nothing_keeps_revision");
            }
        }
        Req::Txn(t) => {
            let a = pb::TxnResponse::decode(e).unwrap();
            cov.hit(if a.succeeded { "txn.succeeded" } else { "txn.failed" });
            cov.hit(if a.header.unwrap().revision == before.rev { "txn.read_only" } else { "txn.changed" });
            count_txn(t, &a, cov);
        }
        Req::Compact(_) => cov.hit("compact.ok"),
        Req::Status | Req::MemberList => {}
    }
}

fn count_range(r: &pb::RangeRequest, a: &pb::RangeResponse, cov: &mut Coverage) {
    if a.more {
        cov.hit("range.more");
    }
    if r.limit > 0 && a.count > r.limit {
        cov.hit("range.count_beyond_limit");
    }
}

fn count_txn(t: &pb::TxnRequest, a: &pb::TxnResponse, cov: &mut Coverage) {
    let ops = if a.succeeded { &t.success } else { &t.failure };
    for (op, o) in ops.iter().zip(&a.responses) {
        use request_op::Request as Q;
        use response_op::Response as A;
        match (&op.request, &o.response) {
            (Some(Q::RequestRange(r)), Some(A::ResponseRange(x))) => {
                cov.hit("txn.inner_header.range");
                count_range(r, x, cov);
            }
            (_, Some(A::ResponsePut(_))) => cov.hit("txn.inner_header.put"),
            (_, Some(A::ResponseDeleteRange(_))) => cov.hit("txn.inner_header.delete_range"),
            (Some(Q::RequestTxn(i)), Some(A::ResponseTxn(x))) => {
                cov.hit("txn.inner_header.txn");
                count_txn(i, x, cov);
            }
            _ => {}
        }
    }
}

// ----- the run -----

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

fn requests_per_seed(default: usize) -> usize {
    std::env::var("DIFF_REQUESTS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Sends one seed's sequence to a fresh MetaStore and a fresh etcd; stops at the first
/// difference and returns it with the seed, the request and both answers.
fn run_seed(driver: &str, seed: u64, n: usize, cov: &mut Coverage) -> Result<(), String> {
    let started = Instant::now();
    let etcd = Etcd::start_tmpfs_with(&[
        "--max-txn-ops",
        &MAX_TXN_OPS.to_string(),
        "--max-request-bytes",
        &MAX_REQUEST_BYTES.to_string(),
    ]);
    let limits = [
        "--max-txn-ops".to_string(),
        MAX_TXN_OPS.to_string(),
        "--max-request-bytes".to_string(),
        MAX_REQUEST_BYTES.to_string(),
    ];
    let limits: Vec<&str> = limits.iter().map(|s| s.as_str()).collect();
    let srv = TestServer::start(driver, &limits);
    let boot = started.elapsed();
    eprintln!("[{driver}] seed {seed:#x}: {n} requests; etcd at {}, metastore at {}", etcd.client, srv.addr);
    let trace = std::env::var("DIFF_TRACE").is_ok();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut local = Coverage::default();
    let result: Result<(), String> = rt.block_on(async {
        let mut ec = Client::connect(etcd.client).await;
        let mut mc = Client::connect(srv.addr).await;
        // `/health` answered; still, the first call must not meet a member that is not ready.
        let ready = Instant::now() + Duration::from_secs(20);
        while let Err(e) = ec.unary(Req::Status.path(), &pb::StatusRequest {}).await {
            assert!(Instant::now() < ready, "etcd does not answer Status: {e:?}\n{}", etcd.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut gen = Gen::new(seed);
        let mut model = Model { rev: 1, compacted: None };
        for i in 0..n {
            let step = gen.next(&model);
            let body = step.req.encode();
            let path = step.req.path();
            let ea: Answer = ec.unary_raw(path, &body).await;
            let ma: Answer = mc.unary_raw(path, &body).await;
            let fail = |why: String| {
                format!(
                    "[{driver}] seed {seed:#x} (replay: DIFF_SEED={seed:#x}), request #{i} ({}): {why}\nrequest: {}",
                    step.req.kind(),
                    pretty(&format!("{:?}", step.req))
                )
            };
            if trace {
                eprintln!("#{i} {}\n  etcd: {ea:?}\n  ours: {ma:?}", pretty(&format!("{:?}", step.req)));
            }
            match (&ea, &ma) {
                (Ok(e), Ok(m)) => {
                    let (a, b) = normalise(&step.req, e, m, &mut local).map_err(&fail)?;
                    if a != b {
                        return Err(fail(format!(
                            "answers differ\n  etcd:      {}\n  metastore: {}",
                            pretty(&a),
                            pretty(&b)
                        )));
                    }
                    count_outcome(&step.req, e, &model, &mut local);
                    for t in &step.tags {
                        local.hit(t);
                    }
                    if let Some(t) = step.err_tag {
                        return Err(fail(format!("meant to provoke an error ({t}) but both accepted it")));
                    }
                    match &step.req {
                        Req::Compact(c) => model.compacted = Some(c.revision),
                        Req::MemberList => {}
                        _ => {
                            if let Some(h) = header_of(&step.req, e) {
                                model.rev = h.revision;
                            }
                        }
                    }
                }
                (Err(e), Err(m)) => {
                    if e != m {
                        return Err(fail(format!("errors differ\n  etcd:      {e:?}\n  metastore: {m:?}")));
                    }
                    local.hit(&format!("{} ✗ {}", step.req.kind(), e.1));
                    if let Some(t) = step.err_tag {
                        local.hit(&format!("✗ {t}"));
                    }
                }
                (Ok(e), Err(m)) => {
                    let shown = decoded(&step.req, e);
                    return Err(fail(format!(
                        "etcd accepted it, metastore did not\n  etcd:      {shown}\n  metastore: {m:?}"
                    )));
                }
                (Err(e), Ok(m)) => {
                    let shown = decoded(&step.req, m);
                    return Err(fail(format!(
                        "metastore accepted it, etcd did not\n  etcd:      {e:?}\n  metastore: {shown}"
                    )));
                }
            }
        }
        ec.close().await;
        mc.close().await;
        Ok(())
    });
    drop(rt);
    if let Err(msg) = result {
        return Err(format!(
            "{msg}\nmetastore log (tail):\n{}\netcd log (tail):\n{}",
            tail(&srv.log(), 40),
            tail(&etcd.log(), 40)
        ));
    }
    let log = srv.stop();
    assert!(!log.contains("panicked"), "[{driver}] seed {seed:#x}: the metastore log shows a panic:\n{log}");
    drop(etcd);
    cov.merge(&local);
    eprintln!(
        "[{driver}] seed {seed:#x}: {n} requests agree ({:?}, of which {boot:?} starting both servers)",
        started.elapsed()
    );
    Ok(())
}

/// Runs each seed; the first difference fails the test, or with `DIFF_KEEP_GOING` set (for
/// hunting differences) every seed runs and all differences are reported at the end.
fn run_seeds(driver: &str, seeds: &[u64], n: usize, cov: &mut Coverage) {
    let keep_going = std::env::var("DIFF_KEEP_GOING").is_ok();
    let mut diffs = Vec::new();
    for &seed in seeds {
        if let Err(msg) = run_seed(driver, seed, n, cov) {
            assert!(keep_going, "{msg}");
            eprintln!("{msg}\n");
            diffs.push(msg);
        }
    }
    assert!(diffs.is_empty(), "{} of {} seeds found a difference:\n\n{}", diffs.len(), seeds.len(), diffs.join("\n\n"));
}

fn header_of(req: &Req, b: &[u8]) -> Option<pb::ResponseHeader> {
    match req {
        Req::Range(_) => pb::RangeResponse::decode(b).ok()?.header,
        Req::Put(_) => pb::PutResponse::decode(b).ok()?.header,
        Req::Delete(_) => pb::DeleteRangeResponse::decode(b).ok()?.header,
        Req::Txn(_) => pb::TxnResponse::decode(b).ok()?.header,
        Req::Compact(_) => pb::CompactionResponse::decode(b).ok()?.header,
        Req::Status => pb::StatusResponse::decode(b).ok()?.header,
        Req::MemberList => None,
    }
}

fn decoded(req: &Req, b: &[u8]) -> String {
    let s = match req {
        Req::Range(_) => format!("{:?}", pb::RangeResponse::decode(b)),
        Req::Put(_) => format!("{:?}", pb::PutResponse::decode(b)),
        Req::Delete(_) => format!("{:?}", pb::DeleteRangeResponse::decode(b)),
        Req::Txn(_) => format!("{:?}", pb::TxnResponse::decode(b)),
        Req::Compact(_) => format!("{:?}", pb::CompactionResponse::decode(b)),
        Req::Status => format!("{:?}", pb::StatusResponse::decode(b)),
        Req::MemberList => format!("{:?}", pb::MemberListResponse::decode(b)),
    };
    pretty(&s)
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// The acceptance run: 10,000 requests under io_uring over three fixed seeds and a fresh one;
/// every counted option, outcome and error must have been exercised.
#[test]
fn kv_matches_etcd_uring() {
    let started = Instant::now();
    let fresh = fresh_seed();
    // `DIFF_EXTRA_SEEDS=<n>` adds n more seeds after the fresh one (for hunting differences).
    let extra: u64 = std::env::var("DIFF_EXTRA_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let seeds: Vec<u64> =
        FIXED_SEEDS.iter().copied().chain([fresh]).chain((1..=extra).map(|i| fresh.wrapping_add(i))).collect();
    let n = requests_per_seed(URING_REQUESTS_PER_SEED);
    eprintln!("[uring] seeds {:x?} (fresh: {fresh:#x}; replay with DIFF_SEED={fresh:#x}), {n} requests each", seeds);
    let mut cov = Coverage::default();
    run_seeds("uring", &seeds, n, &mut cov);
    eprintln!("[uring] coverage over seeds {seeds:x?}:\n{}", cov.table());
    let missing = cov.missing();
    assert!(missing.is_empty(), "[uring] seeds {seeds:x?}: never exercised: {missing:?}\n{}", cov.table());
    eprintln!("[uring] {} requests in {:?}", n * seeds.len(), started.elapsed());
}

/// The shorter run under epoll: one fresh seed (another than the uring run's; `DIFF_SEED`
/// replaces both).
#[test]
fn kv_matches_etcd_epoll() {
    let started = Instant::now();
    let seed = if std::env::var("DIFF_SEED").is_ok() { fresh_seed() } else { fresh_seed().rotate_left(17) ^ 0xE9011 };
    let n = requests_per_seed(EPOLL_REQUESTS).max(1_000);
    let mut cov = Coverage::default();
    run_seeds("epoll", &[seed], n, &mut cov);
    eprintln!("[epoll] seed {seed:#x}, {n} requests in {:?}; coverage:\n{}", started.elapsed(), cov.table());
    assert!(cov.get("txn.succeeded") > 0 && cov.get("range.single") > 0, "[epoll] seed {seed:#x}: {}", cov.table());
}
