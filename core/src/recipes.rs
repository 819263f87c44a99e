//! etcd's Lock and Election services (`v3lockpb`, `v3electionpb`): the client-side recipes of
//! Go's `clientv3/concurrency` (Mutex, Election) that etcd runs inside its server, run here
//! inside the shard, which owns the store: each step's txn goes through raft like any client's,
//! and a step that waits for other keys to go (a lock's predecessors, a campaign's elder
//! candidates, an observer's next leader) is re-checked after every round of applied writes
//! instead of through a watch.
//!
//! The answers are etcd 3.4's: the owned key is `name/` + the lease ID in lower-case hex; a lock
//! taken without waiting reports its txn's header, one taken after waiting the header of the
//! read that found no predecessor; a campaign reports its first txn's header; errors of the
//! recipes are plain (gRPC Unknown) with Go's texts. Known difference: Observe reports the
//! leader's newest value when it looks, so two puts to the leader key in one round reach an
//! observer as one update (etcd's watch-based observer sends both).
//!
//! A client that goes while its Lock or Campaign waits (RST_STREAM, its deadline, a closed
//! connection) leaves no ghost: its connection's core sends the shard an `Abandon`, and the key
//! the call put is deleted through raft, as the recipes' error paths do in etcd (`Mutex.Lock`
//! unlocks, `Election.Campaign` resigns), so later waiters are not held up until its lease ends.

use metastore_net::grpc::{Code, Status};
use metastore_proto::etcdserverpb as pb;
use metastore_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use metastore_proto::etcdserverpb::request_op::Request;
use metastore_proto::etcdserverpb::response_op::Response;
use metastore_proto::v3electionpb as epb;
use metastore_proto::v3lockpb as lpb;
use metastore_storage::disk::Disk;
use metastore_storage::mvcc::{prefix_end, Hit, RangeOptions, SortOrder, SortTarget};
use prost::Message;

use super::{op, Outcome, Replies, Shard, ShardReply, Waiter};

/// A recipe's txn on its way through raft: what to do with its result.
#[derive(Debug)]
pub enum Step {
    Lock {
        waiter: Waiter,
        pfx: Vec<u8>,
        key: Vec<u8>,
    },
    Unlock {
        waiter: Waiter,
    },
    Campaign {
        waiter: Waiter,
        name: Vec<u8>,
        key: Vec<u8>,
        lease: i64,
        value: Vec<u8>,
    },
    /// A campaign found its key with another value and re-proclaimed it.
    CampaignProclaim {
        waiter: Waiter,
        name: Vec<u8>,
        key: Vec<u8>,
        lease: i64,
        rev: i64,
        header: pb::ResponseHeader,
    },
    Proclaim {
        waiter: Waiter,
    },
    Resign {
        waiter: Waiter,
    },
}

/// A recipe waiting for the store to change.
#[derive(Debug)]
pub enum Waiting {
    /// Until no key under `pfx` was created before `rev`.
    Lock {
        waiter: Waiter,
        pfx: Vec<u8>,
        key: Vec<u8>,
        rev: i64,
    },
    Campaign {
        waiter: Waiter,
        name: Vec<u8>,
        key: Vec<u8>,
        lease: i64,
        rev: i64,
        header: pb::ResponseHeader,
    },
    /// Until the leader under `pfx` differs from (`key`, `mod_rev`) (none sent yet: any leader).
    Observe {
        waiter: Waiter,
        pfx: Vec<u8>,
        key: Vec<u8>,
        mod_rev: i64,
    },
}

impl Step {
    pub fn waiter(&self) -> Waiter {
        match self {
            Step::Lock { waiter, .. }
            | Step::Unlock { waiter }
            | Step::Campaign { waiter, .. }
            | Step::CampaignProclaim { waiter, .. }
            | Step::Proclaim { waiter }
            | Step::Resign { waiter } => *waiter,
        }
    }
}

impl Waiting {
    pub fn waiter(&self) -> Waiter {
        match self {
            Waiting::Lock { waiter, .. } | Waiting::Campaign { waiter, .. } | Waiting::Observe { waiter, .. } => {
                *waiter
            }
        }
    }
}

/// What a lock's or election's name becomes: the prefix of its candidates' keys.
fn prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

fn owned_key(pfx: &[u8], lease: i64) -> Vec<u8> {
    let mut k = pfx.to_vec();
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

fn create_is(key: &[u8], rev: i64) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
    }
}

fn put(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

fn get(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp { request: Some(Request::RequestRange(pb::RangeRequest { key: key.to_vec(), ..Default::default() })) }
}

/// Go's `OpGet(pfx, WithFirstCreate()...)`: the oldest key under the prefix.
fn first_created(pfx: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestRange(pb::RangeRequest {
            key: pfx.to_vec(),
            range_end: prefix_end(pfx),
            limit: 1,
            sort_order: pb::range_request::SortOrder::Ascend as i32,
            sort_target: pb::range_request::SortTarget::Create as i32,
            ..Default::default()
        })),
    }
}

fn delete(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest { key: key.to_vec(), ..Default::default() })),
    }
}

fn range_kvs(r: &pb::ResponseOp) -> &[metastore_proto::mvccpb::KeyValue] {
    match &r.response {
        Some(Response::ResponseRange(rr)) => &rr.kvs,
        _ => &[],
    }
}

fn not_leader() -> Status {
    Status::new(Code::UNKNOWN, "election: not leader")
}

fn missing_leader() -> Status {
    Status::new(Code::UNKNOWN, "\"leader\" field must be provided")
}

fn to_kv(r: &Hit<'_>) -> metastore_proto::mvccpb::KeyValue {
    metastore_proto::mvccpb::KeyValue {
        key: r.key.to_vec(),
        create_revision: r.create_revision,
        mod_revision: r.mod_revision,
        version: r.version,
        value: r.value.to_vec(),
        lease: r.lease,
    }
}

/// Whether `w` is the call `gone` names (with `whole_conn`, any call of its connection).
fn same_call(w: Waiter, gone: Waiter, whole_conn: bool) -> bool {
    let (a, b) = match (w, gone) {
        (Waiter::Local(a), Waiter::Local(b)) => (a, b),
        (Waiter::Remote { ring: r1, call: a }, Waiter::Remote { ring: r2, call: b }) if r1 == r2 => (a, b),
        _ => return false,
    };
    a.conn_slot == b.conn_slot && a.conn_gen == b.conn_gen && (whole_conn || a.stream == b.stream)
}

/// Go's `Election.Resign`: the candidate's key goes if it is still the one created at `rev`.
fn resign_txn(key: &[u8], rev: i64) -> pb::TxnRequest {
    pb::TxnRequest { compare: vec![create_is(key, rev)], success: vec![delete(key)], failure: Vec::new() }
}

/// What an abandoned call is answered (no one reads it: the call has ended at its connection).
fn cancelled() -> Status {
    Status::new(Code::CANCELLED, "context canceled")
}

impl<D: Disk> Shard<D> {
    fn propose_step(&mut self, txn: &pb::TxnRequest, step: Step, waiter: Waiter) -> Outcome {
        match self.propose(op::TXN, txn, waiter) {
            Outcome::Pending => {
                // `propose` registered the waiter for the raw txn answer: the step takes it.
                let id = self.next_id - 1;
                self.waiters.remove(&id);
                self.steps.insert(id, step);
                Outcome::Pending
            }
            other => other,
        }
    }

    /// A recipe's second txn: its caller's one answer is already counted.
    fn propose_next_step(&mut self, txn: &pb::TxnRequest, step: Step, waiter: Waiter) -> Outcome {
        let o = self.propose_step(txn, step, waiter);
        if o == Outcome::Pending {
            self.answered(waiter);
        }
        o
    }

    pub(super) fn lock(&mut self, r: lpb::LockRequest, waiter: Waiter) -> Outcome {
        let pfx = prefix(&r.name);
        let key = owned_key(&pfx, r.lease);
        let txn = pb::TxnRequest {
            compare: vec![create_is(&key, 0)],
            success: vec![put(&key, b"", r.lease), first_created(&pfx)],
            failure: vec![get(&key), first_created(&pfx)],
        };
        self.propose_step(&txn, Step::Lock { waiter, pfx, key }, waiter)
    }

    pub(super) fn unlock(&mut self, r: lpb::UnlockRequest, waiter: Waiter) -> Outcome {
        let txn = pb::TxnRequest { compare: Vec::new(), success: vec![delete(&r.key)], failure: Vec::new() };
        self.propose_step(&txn, Step::Unlock { waiter }, waiter)
    }

    pub(super) fn campaign(&mut self, r: epb::CampaignRequest, waiter: Waiter) -> Outcome {
        let key = owned_key(&prefix(&r.name), r.lease);
        let txn = pb::TxnRequest {
            compare: vec![create_is(&key, 0)],
            success: vec![put(&key, &r.value, r.lease)],
            failure: vec![get(&key)],
        };
        let step = Step::Campaign { waiter, name: r.name, key, lease: r.lease, value: r.value };
        self.propose_step(&txn, step, waiter)
    }

    pub(super) fn proclaim(&mut self, r: epb::ProclaimRequest, waiter: Waiter) -> Outcome {
        let Some(l) = r.leader else { return Outcome::Error(missing_leader()) };
        let txn = pb::TxnRequest {
            compare: vec![create_is(&l.key, l.rev)],
            success: vec![put(&l.key, &r.value, l.lease)],
            failure: Vec::new(),
        };
        self.propose_step(&txn, Step::Proclaim { waiter }, waiter)
    }

    pub(super) fn resign(&mut self, r: epb::ResignRequest, waiter: Waiter) -> Outcome {
        let Some(l) = r.leader else { return Outcome::Error(missing_leader()) };
        let txn = pb::TxnRequest {
            compare: vec![create_is(&l.key, l.rev)],
            success: vec![delete(&l.key)],
            failure: Vec::new(),
        };
        self.propose_step(&txn, Step::Resign { waiter }, waiter)
    }

    /// The oldest candidate under `pfx`, now.
    fn leader_of(&self, pfx: &[u8]) -> Option<metastore_proto::mvccpb::KeyValue> {
        let opts = RangeOptions {
            limit: 1,
            sort_order: SortOrder::Ascend,
            sort_target: SortTarget::Create,
            ..Default::default()
        };
        let mut out = Vec::new();
        self.store.range(pfx, &prefix_end(pfx), &opts, &mut out).ok()?;
        out.first().map(to_kv)
    }

    /// Whether a key under `pfx` was created before revision `rev`.
    fn has_elder(&self, pfx: &[u8], rev: i64) -> bool {
        let opts = RangeOptions { max_create_revision: rev - 1, limit: 1, ..Default::default() };
        let mut out = Vec::new();
        self.store.range(pfx, &prefix_end(pfx), &opts, &mut out).is_ok_and(|_| !out.is_empty())
    }

    pub(super) fn leader(&mut self, r: epb::LeaderRequest, out: &mut Vec<u8>) -> Result<(), Status> {
        let kv = self.leader_of(&prefix(&r.name)).ok_or_else(|| Status::new(Code::UNKNOWN, "election: no leader"))?;
        let header = self.header(self.store.current_revision());
        epb::LeaderResponse { header, kv: Some(kv) }.encode_raw(out);
        Ok(())
    }

    /// Observe's next answer: at once if the leader differs from what the observer last got,
    /// else when it does.
    pub(super) fn observe(
        &mut self,
        name: &[u8],
        key: Vec<u8>,
        mod_rev: i64,
        waiter: Waiter,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let pfx = prefix(name);
        match self.leader_of(&pfx) {
            Some(kv) if !(kv.key == key && kv.mod_revision == mod_rev) => {
                let header = self.header(self.store.current_revision());
                epb::LeaderResponse { header, kv: Some(kv) }.encode_raw(out);
                Outcome::Encoded
            }
            _ => {
                if let Waiter::Remote { ring, .. } = waiter {
                    self.track(ring, 1);
                }
                self.waiting.push(Waiting::Observe { waiter, pfx, key, mod_rev });
                Outcome::Pending
            }
        }
    }

    /// A recipe's txn was applied (`r`; `out` holds its TxnResponse).
    pub(super) fn step_applied(&mut self, step: Step, r: Result<(), Status>, out: &[u8], replies: &mut Replies) {
        let waiter = step.waiter();
        // etcd runs these recipes through its Go client, whose errors are not gRPC statuses:
        // they reach the caller as Unknown, with the same text.
        let r = r.map_err(|e| Status::new(Code::UNKNOWN, e.message));
        let resp = r.and_then(|()| {
            pb::TxnResponse::decode(out).map_err(|e| Status::new(Code::INTERNAL, format!("recipe txn: {e}")))
        });
        let resp = match resp {
            Ok(t) => t,
            Err(e) => return self.finish(waiter, ShardReply::Error(e), replies),
        };
        let header = resp.header.unwrap_or_default();
        let mut b = Vec::new();
        match step {
            Step::Lock { waiter, pfx, key } => {
                let rev = if resp.succeeded {
                    header.revision
                } else {
                    range_kvs(&resp.responses[0]).first().map_or(header.revision, |kv| kv.create_revision)
                };
                let owner = resp.responses.get(1).map_or(&[][..], range_kvs);
                if owner.is_empty() || owner[0].create_revision == rev {
                    lpb::LockResponse { header: Some(header), key }.encode_raw(&mut b);
                    return self.finish(waiter, ShardReply::Encoded(b), replies);
                }
                self.waiting.push(Waiting::Lock { waiter, pfx, key, rev });
            }
            Step::Unlock { waiter } => {
                lpb::UnlockResponse { header: Some(header) }.encode_raw(&mut b);
                self.finish(waiter, ShardReply::Encoded(b), replies);
            }
            Step::Campaign { waiter, name, key, lease, value } => {
                if resp.succeeded {
                    let rev = header.revision;
                    self.waiting.push(Waiting::Campaign { waiter, name, key, lease, rev, header });
                    return;
                }
                let found = range_kvs(&resp.responses[0]).first().cloned();
                let rev = found.as_ref().map_or(header.revision, |kv| kv.create_revision);
                if found.is_some_and(|kv| kv.value != value) {
                    // Go's Campaign proclaims the new value first (its header stays the first txn's).
                    let txn = pb::TxnRequest {
                        compare: vec![create_is(&key, rev)],
                        success: vec![put(&key, &value, lease)],
                        failure: Vec::new(),
                    };
                    let step = Step::CampaignProclaim { waiter, name, key, lease, rev, header };
                    if let Outcome::Error(e) = self.propose_next_step(&txn, step, waiter) {
                        self.finish(waiter, ShardReply::Error(e), replies);
                    }
                    return;
                }
                self.waiting.push(Waiting::Campaign { waiter, name, key, lease, rev, header });
            }
            Step::CampaignProclaim { waiter, name, key, lease, rev, header } => {
                if !resp.succeeded {
                    return self.finish(waiter, ShardReply::Error(not_leader()), replies);
                }
                self.waiting.push(Waiting::Campaign { waiter, name, key, lease, rev, header });
            }
            Step::Proclaim { waiter } => {
                if !resp.succeeded {
                    return self.finish(waiter, ShardReply::Error(not_leader()), replies);
                }
                epb::ProclaimResponse { header: Some(header) }.encode_raw(&mut b);
                self.finish(waiter, ShardReply::Encoded(b), replies);
            }
            Step::Resign { waiter } => {
                epb::ResignResponse { header: Some(header) }.encode_raw(&mut b);
                self.finish(waiter, ShardReply::Encoded(b), replies);
            }
        }
    }

    fn finish(&mut self, waiter: Waiter, reply: ShardReply, replies: &mut Replies) {
        self.answered(waiter);
        replies.push(waiter, reply);
    }

    /// After a round of applied writes: the waiting recipes whose wait is over are answered.
    pub(super) fn check_waiting(&mut self, replies: &mut Replies) {
        if self.waiting.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.waiting);
        for w in waiting {
            match w {
                Waiting::Lock { waiter, pfx, key, rev } => {
                    if self.has_elder(&pfx, rev) {
                        self.waiting.push(Waiting::Lock { waiter, pfx, key, rev });
                        continue;
                    }
                    let header = self.header(self.store.current_revision());
                    let mut b = Vec::new();
                    lpb::LockResponse { header, key }.encode_raw(&mut b);
                    self.finish(waiter, ShardReply::Encoded(b), replies);
                }
                Waiting::Campaign { waiter, name, key, lease, rev, header } => {
                    if self.has_elder(&prefix(&name), rev) {
                        self.waiting.push(Waiting::Campaign { waiter, name, key, lease, rev, header });
                        continue;
                    }
                    let leader = epb::LeaderKey { name, key, rev, lease };
                    let mut b = Vec::new();
                    epb::CampaignResponse { header: Some(header), leader: Some(leader) }.encode_raw(&mut b);
                    self.finish(waiter, ShardReply::Encoded(b), replies);
                }
                Waiting::Observe { waiter, pfx, key, mod_rev } => match self.leader_of(&pfx) {
                    Some(kv) if !(kv.key == key && kv.mod_revision == mod_rev) => {
                        let header = self.header(self.store.current_revision());
                        let mut b = Vec::new();
                        epb::LeaderResponse { header, kv: Some(kv) }.encode_raw(&mut b);
                        self.finish(waiter, ShardReply::Encoded(b), replies);
                    }
                    _ => self.waiting.push(Waiting::Observe { waiter, pfx, key, mod_rev }),
                },
            }
        }
    }

    /// Calls whose clients went ([`super::ShardRequest::Abandon`]): a wait ends, answered
    /// CANCELLED (to no one: the call is gone), and its key is removed through raft as Go's
    /// recipes do on a cancelled context — `Mutex.Lock` deletes its key (`Unlock`),
    /// `Election.Campaign` resigns (deletes its key if still the one it created). A recipe txn
    /// still in flight is cleaned up once applied (etcd would keep a key whose txn the cancel
    /// overtook; no one is left to release it, so it goes too).
    pub(super) fn run_abandons(&mut self, replies: &mut Replies) {
        if self.abandons.is_empty() {
            return;
        }
        for (gone, whole_conn) in std::mem::take(&mut self.abandons) {
            let waiting = std::mem::take(&mut self.waiting);
            for w in waiting {
                if !same_call(w.waiter(), gone, whole_conn) {
                    self.waiting.push(w);
                    continue;
                }
                let waiter = w.waiter();
                match w {
                    Waiting::Lock { key, .. } => {
                        let del = pb::DeleteRangeRequest { key, ..Default::default() };
                        self.propose_unwaited(op::DELETE_RANGE, &del);
                    }
                    Waiting::Campaign { key, rev, .. } => self.propose_unwaited(op::TXN, &resign_txn(&key, rev)),
                    Waiting::Observe { .. } => {}
                }
                self.finish(waiter, ShardReply::Error(cancelled()), replies);
            }
            for (id, step) in &self.steps {
                if same_call(step.waiter(), gone, whole_conn) && !self.abandoned.contains(id) {
                    self.abandoned.push(*id);
                }
            }
        }
    }

    /// A recipe's txn was applied after its caller went: whatever it put is removed again (see
    /// [`Self::run_abandons`]).
    pub(super) fn step_abandoned(&mut self, step: Step, r: Result<(), Status>, out: &[u8], replies: &mut Replies) {
        let waiter = step.waiter();
        let resp = r.ok().and_then(|()| pb::TxnResponse::decode(out).ok());
        if let Some(resp) = resp {
            let header_rev = resp.header.as_ref().map_or(0, |h| h.revision);
            match step {
                Step::Lock { key, .. } => {
                    let del = pb::DeleteRangeRequest { key, ..Default::default() };
                    self.propose_unwaited(op::DELETE_RANGE, &del);
                }
                Step::Campaign { key, .. } => {
                    let rev = if resp.succeeded {
                        Some(header_rev)
                    } else {
                        resp.responses.first().and_then(|r| range_kvs(r).first()).map(|kv| kv.create_revision)
                    };
                    if let Some(rev) = rev {
                        self.propose_unwaited(op::TXN, &resign_txn(&key, rev));
                    }
                }
                Step::CampaignProclaim { key, rev, .. } if resp.succeeded => {
                    self.propose_unwaited(op::TXN, &resign_txn(&key, rev));
                }
                _ => {}
            }
        }
        self.finish(waiter, ShardReply::Error(cancelled()), replies);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use metastore_storage::fault::FaultDisk;

    use super::super::tests::{cfg, member, settle};
    use super::super::{CallRef, ReplyEnvelope, ShardRequest};
    use super::*;

    fn call(stream: u32) -> CallRef {
        CallRef { conn_slot: 3, conn_gen: 7, stream }
    }

    fn local(stream: u32) -> Waiter {
        Waiter::Local(call(stream))
    }

    fn remote(stream: u32) -> Waiter {
        Waiter::Remote { ring: 0, call: call(stream) }
    }

    fn shard() -> Shard<FaultDisk> {
        let mut s = Shard::open(FaultDisk::new(), &cfg(), member()).unwrap();
        settle(&mut s, &mut Replies::default());
        for id in [1, 2, 3] {
            let grant = pb::LeaseGrantRequest { ttl: 60, id };
            run(&mut s, ShardRequest::LeaseGrant(grant), local(100 + id as u32));
        }
        s
    }

    /// Executes one request and settles the shard; every reply it produced.
    fn run(s: &mut Shard<FaultDisk>, req: ShardRequest, w: Waiter) -> Vec<ReplyEnvelope> {
        let mut out = Vec::new();
        let o = s.execute(req, None, Instant::now(), w, &mut out);
        assert!(matches!(o, Outcome::Pending), "{o:?}");
        drain(s)
    }

    fn drain(s: &mut Shard<FaultDisk>) -> Vec<ReplyEnvelope> {
        let mut replies = Replies::default();
        settle(s, &mut replies);
        let mut all = replies.local;
        all.extend(replies.remote.into_iter().map(|(_, r)| r));
        all
    }

    fn lock(name: &str, lease: i64) -> ShardRequest {
        ShardRequest::Lock(lpb::LockRequest { name: name.into(), lease })
    }

    fn campaign(name: &str, lease: i64) -> ShardRequest {
        ShardRequest::Campaign(epb::CampaignRequest { name: name.into(), lease, value: b"v".to_vec() })
    }

    fn keys(s: &Shard<FaultDisk>, pfx: &str) -> Vec<String> {
        let mut out = Vec::new();
        let pfx = pfx.as_bytes();
        s.store.range(pfx, &prefix_end(pfx), &RangeOptions::default(), &mut out).unwrap();
        out.iter().map(|h| String::from_utf8_lossy(&h.key).into_owned()).collect()
    }

    fn answered(r: &[ReplyEnvelope], stream: u32) -> Option<&ShardReply> {
        r.iter().find(|e| e.call == call(stream)).map(|e| &e.reply)
    }

    fn is_cancelled(r: Option<&ShardReply>) -> bool {
        matches!(r, Some(ShardReply::Error(st)) if st.code == Code::CANCELLED)
    }

    /// A waiting Lock whose client went has its key deleted (through raft) and its wait ended;
    /// the next waiter gets the lock as soon as the holder unlocks.
    #[test]
    fn an_abandoned_lock_waiter_leaves_no_key() {
        let mut s = shard();
        let r = run(&mut s, lock("lk", 1), local(1));
        assert!(matches!(answered(&r, 1), Some(ShardReply::Encoded(_))), "the holder: {r:?}");
        let r = run(&mut s, lock("lk", 2), remote(2));
        assert!(r.is_empty(), "the second waits: {r:?}");
        assert_eq!(s.outstanding(0), 1);
        assert_eq!(keys(&s, "lk/"), ["lk/1", "lk/2"]);
        // A stranger's abandon (another stream, another ring) changes nothing.
        let r = run(&mut s, ShardRequest::Abandon { whole_conn: false }, remote(9));
        assert!(r.is_empty(), "{r:?}");
        let r = run(&mut s, ShardRequest::Abandon { whole_conn: false }, local(2));
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(keys(&s, "lk/"), ["lk/1", "lk/2"]);
        let r = run(&mut s, ShardRequest::Abandon { whole_conn: false }, remote(2));
        assert!(is_cancelled(answered(&r, 2)), "{r:?}");
        assert_eq!(s.outstanding(0), 0, "the answer owed is accounted for");
        assert_eq!(keys(&s, "lk/"), ["lk/1"]);
        let r = run(&mut s, lock("lk", 3), local(3));
        assert!(r.is_empty(), "{r:?}");
        let unlock = ShardRequest::Unlock(lpb::UnlockRequest { key: b"lk/1".to_vec() });
        let r = run(&mut s, unlock, local(4));
        assert!(matches!(answered(&r, 4), Some(ShardReply::Encoded(_))), "{r:?}");
        let Some(ShardReply::Encoded(b)) = answered(&r, 3) else { panic!("the third gets the lock: {r:?}") };
        assert_eq!(lpb::LockResponse::decode(&b[..]).unwrap().key, b"lk/3");
        assert!(s.waiting.is_empty() && s.steps.is_empty() && s.abandoned.is_empty());
    }

    /// A waiting candidate whose connection closed resigns: its key goes, the next candidate
    /// wins when the leader resigns; an observer of the same connection stops waiting too.
    #[test]
    fn an_abandoned_campaign_resigns() {
        let mut s = shard();
        let r = run(&mut s, campaign("el", 1), local(1));
        let Some(ShardReply::Encoded(b)) = answered(&r, 1) else { panic!("the first leads: {r:?}") };
        let leader = epb::CampaignResponse::decode(&b[..]).unwrap().leader.unwrap();
        assert!(run(&mut s, campaign("el", 2), local(2)).is_empty());
        let mut out = Vec::new();
        let observe = ShardRequest::Observe { name: b"el".to_vec(), key: leader.key.clone(), mod_rev: leader.rev };
        assert_eq!(s.execute(observe, None, Instant::now(), local(5), &mut out), Outcome::Pending);
        assert_eq!(keys(&s, "el/"), ["el/1", "el/2"]);
        // The whole connection went (any stream number).
        let r = run(&mut s, ShardRequest::Abandon { whole_conn: true }, local(0));
        assert!(is_cancelled(answered(&r, 2)) && is_cancelled(answered(&r, 5)), "{r:?}");
        assert_eq!(keys(&s, "el/"), ["el/1"]);
        assert!(run(&mut s, campaign("el", 3), Waiter::Local(CallRef { conn_gen: 8, ..call(3) })).is_empty());
        let resign = ShardRequest::Resign(epb::ResignRequest { leader: Some(leader) });
        let r = run(&mut s, resign, local(4));
        let Some(ShardReply::Encoded(b)) = r.iter().find(|e| e.call.stream == 3).map(|e| &e.reply) else {
            panic!("the third leads: {r:?}")
        };
        assert_eq!(epb::CampaignResponse::decode(&b[..]).unwrap().leader.unwrap().key, b"el/3");
    }

    /// An abandon that overtakes the recipe's first txn (still in raft) removes what the txn
    /// put once it is applied, whether the lock was free or not.
    #[test]
    fn an_abandon_overtaking_the_first_txn_cleans_up_after_it() {
        let mut s = shard();
        let mut out = Vec::new();
        for (stream, lease) in [(1, 1), (2, 2)] {
            assert_eq!(s.execute(lock("lk", lease), None, Instant::now(), local(stream), &mut out), Outcome::Pending);
        }
        let camp = campaign("el", 3);
        assert_eq!(s.execute(camp, None, Instant::now(), local(3), &mut out), Outcome::Pending);
        for stream in [1, 2, 3] {
            let o =
                s.execute(ShardRequest::Abandon { whole_conn: false }, None, Instant::now(), local(stream), &mut out);
            assert_eq!(o, Outcome::Pending);
        }
        let r = drain(&mut s);
        for stream in [1, 2, 3] {
            assert!(is_cancelled(answered(&r, stream)), "{stream}: {r:?}");
        }
        assert!(keys(&s, "lk/").is_empty() && keys(&s, "el/").is_empty());
        assert!(s.waiting.is_empty() && s.steps.is_empty() && s.abandoned.is_empty());
    }
}
