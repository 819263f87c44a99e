//! The KV service as the shard applies it (etcd's `applierV3backend`): Range, Put, DeleteRange,
//! Txn and Compact against the MVCC store, with responses encoded straight from the store's
//! records into the output buffer.

use std::sync::Arc;

use metastore_net::grpc::Status;
use metastore_proto::etcdserverpb::{
    compare, range_request, request_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    TxnRequest,
};
use metastore_storage::mvcc::{History, KeyRange, RangeOptions, Record, SortOrder, SortTarget, Store, WriteTxn};

use super::errors;
use super::pbw;

/// What every response header carries besides the revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub cluster_id: u64,
    pub member_id: u64,
    pub raft_term: u64,
}

/// A ResponseHeader. Inner txn responses carry only a revision (etcd leaves the rest unset).
#[derive(Debug, Clone, Copy, Default)]
pub struct Header {
    pub cluster_id: u64,
    pub member_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

impl Header {
    pub fn full(ids: &Ids, revision: i64) -> Self {
        Header { cluster_id: ids.cluster_id, member_id: ids.member_id, revision, raft_term: ids.raft_term }
    }

    fn inner(revision: i64) -> Self {
        Header { revision, ..Header::default() }
    }

    pub fn len(&self) -> usize {
        pbw::u64_field_len(1, self.cluster_id)
            + pbw::u64_field_len(2, self.member_id)
            + pbw::i64_field_len(3, self.revision)
            + pbw::u64_field_len(4, self.raft_term)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the header as message field `field` (present even when empty, as Go sends it).
    pub fn write(&self, buf: &mut Vec<u8>, field: u32) {
        pbw::message_header(buf, field, self.len());
        pbw::u64_field(buf, 1, self.cluster_id);
        pbw::u64_field(buf, 2, self.member_id);
        pbw::i64_field(buf, 3, self.revision);
        pbw::u64_field(buf, 4, self.raft_term);
    }

    fn field_len(&self, field: u32) -> usize {
        pbw::message_len(field, self.len())
    }
}

pub fn kv_len(r: &Record, keys_only: bool) -> usize {
    pbw::bytes_field_len(1, &r.key)
        + pbw::i64_field_len(2, r.create_revision)
        + pbw::i64_field_len(3, r.mod_revision)
        + pbw::i64_field_len(4, r.version)
        + if keys_only { 0 } else { pbw::bytes_field_len(5, &r.value) }
        + pbw::i64_field_len(6, r.lease)
}

/// Writes a `mvccpb.KeyValue` as message field `field`.
pub fn write_kv(buf: &mut Vec<u8>, field: u32, r: &Record, keys_only: bool) {
    pbw::message_header(buf, field, kv_len(r, keys_only));
    pbw::bytes_field(buf, 1, &r.key);
    pbw::i64_field(buf, 2, r.create_revision);
    pbw::i64_field(buf, 3, r.mod_revision);
    pbw::i64_field(buf, 4, r.version);
    if !keys_only {
        pbw::bytes_field(buf, 5, &r.value);
    }
    pbw::i64_field(buf, 6, r.lease);
}

fn kv_field_len(field: u32, r: &Record, keys_only: bool) -> usize {
    pbw::message_len(field, kv_len(r, keys_only))
}

/// The result of one op, kept until the whole response is encoded.
enum OpOut {
    Range { header: Header, recs: Vec<Arc<Record>>, count: i64, more: bool, keys_only: bool },
    Put { header: Header, prev: Option<Arc<Record>> },
    Delete { header: Header, deleted: i64, prevs: Vec<Arc<Record>> },
    Txn { header: Header, succeeded: bool, ops: Vec<OpOut> },
}

impl OpOut {
    /// Length of the response message itself (RangeResponse, PutResponse, ...).
    fn len(&self) -> usize {
        match self {
            OpOut::Range { header, recs, count, more, keys_only } => {
                header.field_len(1)
                    + recs.iter().map(|r| kv_field_len(2, r, *keys_only)).sum::<usize>()
                    + pbw::bool_field_len(3, *more)
                    + pbw::i64_field_len(4, *count)
            }
            OpOut::Put { header, prev } => header.field_len(1) + prev.as_ref().map_or(0, |p| kv_field_len(2, p, false)),
            OpOut::Delete { header, deleted, prevs } => {
                header.field_len(1)
                    + pbw::i64_field_len(2, *deleted)
                    + prevs.iter().map(|r| kv_field_len(3, r, false)).sum::<usize>()
            }
            OpOut::Txn { header, succeeded, ops } => {
                header.field_len(1)
                    + pbw::bool_field_len(2, *succeeded)
                    + ops
                        .iter()
                        .map(|o| pbw::message_len(3, pbw::message_len(o.response_op_field(), o.len())))
                        .sum::<usize>()
            }
        }
    }

    /// The ResponseOp oneof arm that carries this result.
    fn response_op_field(&self) -> u32 {
        match self {
            OpOut::Range { .. } => 1,
            OpOut::Put { .. } => 2,
            OpOut::Delete { .. } => 3,
            OpOut::Txn { .. } => 4,
        }
    }

    /// Writes the response message's fields (without an enclosing header).
    fn write(&self, buf: &mut Vec<u8>) {
        match self {
            OpOut::Range { header, recs, count, more, keys_only } => {
                header.write(buf, 1);
                for r in recs {
                    write_kv(buf, 2, r, *keys_only);
                }
                pbw::bool_field(buf, 3, *more);
                pbw::i64_field(buf, 4, *count);
            }
            OpOut::Put { header, prev } => {
                header.write(buf, 1);
                if let Some(p) = prev {
                    write_kv(buf, 2, p, false);
                }
            }
            OpOut::Delete { header, deleted, prevs } => {
                header.write(buf, 1);
                pbw::i64_field(buf, 2, *deleted);
                for r in prevs {
                    write_kv(buf, 3, r, false);
                }
            }
            OpOut::Txn { header, succeeded, ops } => {
                header.write(buf, 1);
                pbw::bool_field(buf, 2, *succeeded);
                for o in ops {
                    let arm = o.response_op_field();
                    let inner = o.len();
                    pbw::message_header(buf, 3, pbw::message_len(arm, inner));
                    pbw::message_header(buf, arm, inner);
                    o.write(buf);
                }
            }
        }
    }
}

pub fn range_options(r: &RangeRequest) -> RangeOptions {
    let order = range_request::SortOrder::try_from(r.sort_order);
    RangeOptions {
        rev: r.revision,
        limit: r.limit,
        sort_order: match order {
            Ok(range_request::SortOrder::Ascend) => SortOrder::Ascend,
            Ok(range_request::SortOrder::Descend) => SortOrder::Descend,
            _ => SortOrder::None,
        },
        sort_target: match (order, range_request::SortTarget::try_from(r.sort_target)) {
            // An order etcd does not know sorts nothing (it only sorts on ASCEND or DESCEND):
            // key order, whatever the target.
            (Err(_), _) => SortTarget::Key,
            (_, Ok(range_request::SortTarget::Version)) => SortTarget::Version,
            (_, Ok(range_request::SortTarget::Create)) => SortTarget::Create,
            (_, Ok(range_request::SortTarget::Mod)) => SortTarget::Mod,
            (_, Ok(range_request::SortTarget::Value)) => SortTarget::Value,
            _ => SortTarget::Key,
        },
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

/// Range: served from the store at the requested revision; header.revision is the current one.
/// Records are encoded as the index yields them, straight into `buf`.
pub fn range<H: History>(store: &Store<H>, ids: &Ids, r: &RangeRequest, buf: &mut Vec<u8>) -> Result<(), Status> {
    let header = Header::full(ids, store.current_revision());
    header.write(buf, 1);
    let out = store
        .range_each(&r.key, &r.range_end, &range_options(r), |rec| write_kv(buf, 2, rec, r.keys_only))
        .map_err(errors::mvcc)?;
    pbw::bool_field(buf, 3, out.more);
    pbw::i64_field(buf, 4, out.count);
    Ok(())
}

/// The lease table the KV service checks puts against (leases arrive with their own issue).
pub trait Leases {
    fn exists(&self, id: i64) -> bool;
}

/// No leases exist yet: every lease id is unknown.
pub struct NoLeases;

impl Leases for NoLeases {
    fn exists(&self, _id: i64) -> bool {
        false
    }
}

pub fn put<H: History>(
    store: &mut Store<H>,
    ids: &Ids,
    leases: &dyn Leases,
    r: &PutRequest,
    buf: &mut Vec<u8>,
) -> Result<(), Status> {
    if r.lease != 0 && !leases.exists(r.lease) {
        return Err(errors::lease_not_found());
    }
    let mut w = store.write();
    let out = put_in(&mut w, r)?;
    drop(w);
    let OpOut::Put { prev, .. } = out else { unreachable!("put_in returns Put") };
    Header::full(ids, store.current_revision()).write(buf, 1);
    if let Some(p) = prev {
        write_kv(buf, 2, &p, false);
    }
    Ok(())
}

fn put_in<H: History>(w: &mut WriteTxn<'_, H>, r: &PutRequest) -> Result<OpOut, Status> {
    if (r.ignore_value || r.ignore_lease) && w.store().get(&r.key).is_none() {
        return Err(errors::key_not_found());
    }
    let value = (!r.ignore_value).then_some(&r.value[..]);
    let lease = (!r.ignore_lease).then_some(r.lease);
    let prev = w.put(&r.key, value, lease);
    Ok(OpOut::Put { header: Header::inner(w.revision()), prev: prev.filter(|_| r.prev_kv) })
}

pub fn delete_range<H: History>(
    store: &mut Store<H>,
    ids: &Ids,
    r: &DeleteRangeRequest,
    buf: &mut Vec<u8>,
) -> Result<(), Status> {
    let mut w = store.write();
    let out = delete_in(&mut w, r);
    drop(w);
    let OpOut::Delete { deleted, prevs, .. } = out else { unreachable!("delete_in returns Delete") };
    Header::full(ids, store.current_revision()).write(buf, 1);
    pbw::i64_field(buf, 2, deleted);
    for p in &prevs {
        write_kv(buf, 3, p, false);
    }
    Ok(())
}

fn delete_in<H: History>(w: &mut WriteTxn<'_, H>, r: &DeleteRangeRequest) -> OpOut {
    let prevs = w.delete_range(&r.key, &r.range_end);
    let rev = if w.changed() { w.revision() } else { w.revision() - 1 };
    let deleted = prevs.len() as i64;
    OpOut::Delete { header: Header::inner(rev), deleted, prevs: if r.prev_kv { prevs } else { Vec::new() } }
}

fn range_in<H: History>(store: &Store<H>, read_rev: i64, r: &RangeRequest) -> Result<OpOut, Status> {
    let mut recs = Vec::new();
    let out = store.range(&r.key, &r.range_end, &range_options(r), &mut recs).map_err(errors::mvcc)?;
    Ok(OpOut::Range {
        header: Header::inner(read_rev),
        recs: recs.iter().map(|h| Arc::clone(h)).collect(),
        count: out.count,
        more: out.more,
        keys_only: r.keys_only,
    })
}

/// etcd's compareKV against one record (or the zero record of a missing key).
fn compare_kv(c: &Compare, r: Option<&Record>) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => b"",
            };
            r.map_or(&b""[..], |r| &r.value[..]).cmp(want)
        }
        Ok(t) => {
            let (have, want) = match (t, &c.target_union) {
                (CompareTarget::Version, Some(TargetUnion::Version(v))) => (r.map_or(0, |r| r.version), *v),
                (CompareTarget::Version, _) => (r.map_or(0, |r| r.version), 0),
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => {
                    (r.map_or(0, |r| r.create_revision), *v)
                }
                (CompareTarget::Create, _) => (r.map_or(0, |r| r.create_revision), 0),
                (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => (r.map_or(0, |r| r.mod_revision), *v),
                (CompareTarget::Mod, _) => (r.map_or(0, |r| r.mod_revision), 0),
                (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => (r.map_or(0, |r| r.lease), *v),
                (CompareTarget::Lease, _) => (r.map_or(0, |r| r.lease), 0),
                (CompareTarget::Value, _) => unreachable!("handled above"),
            };
            have.cmp(&want)
        }
        // An unknown target compares equal, like Go's zero result.
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

/// etcd's applyCompare: every key of the range must satisfy it; a missing key compares as zeros,
/// except against VALUE, which always fails.
fn apply_compare<H: History>(store: &Store<H>, c: &Compare) -> bool {
    let mut recs = Vec::new();
    if store.range(&c.key, &c.range_end, &RangeOptions::default(), &mut recs).is_err() {
        return false;
    }
    if recs.is_empty() {
        if c.target == compare::CompareTarget::Value as i32 {
            return false;
        }
        return compare_kv(c, None);
    }
    recs.iter().all(|r| compare_kv(c, Some(r)))
}

/// Which branch each txn takes, in pre-order of the txns on the chosen path, all decided
/// against the state before any op runs (etcd's compareToPath).
fn compare_to_path<H: History>(store: &Store<H>, t: &TxnRequest, path: &mut Vec<bool>) {
    let ok = t.compare.iter().all(|c| apply_compare(store, c));
    path.push(ok);
    for op in if ok { &t.success } else { &t.failure } {
        if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
            compare_to_path(store, inner, path);
        }
    }
}

/// What the ops of the chosen path before the one being checked do to a key, in execution
/// order: a put creates it, a delete range removes what it covers.
enum Effect<'a> {
    Put(&'a [u8]),
    Delete(&'a [u8], &'a [u8]),
}

/// Whether `key` exists when an op after `effects` runs: the last effect that touches it says,
/// else the store.
fn exists_after<H: History>(store: &Store<H>, effects: &[Effect<'_>], key: &[u8]) -> bool {
    for e in effects.iter().rev() {
        match *e {
            Effect::Put(k) if k == key => return true,
            Effect::Delete(k, end) if KeyRange::new(k, end).contains(key) => return false,
            _ => {}
        }
    }
    store.get(key).is_some()
}

/// Checks along the chosen path before anything runs: puts first (ignore_* needs the key,
/// leases must exist), then ranges (their revisions must be readable). Any failure fails the
/// whole txn with no change.
///
/// An ignore_* put's key must exist when the put runs, not just before the txn: a from-key
/// delete earlier in the txn can remove it (the duplicate-key rule does not see from-key
/// deletes). etcd 3.4.23 checks only the state before the txn, then fails that put while
/// applying the txn and panics ("unexpected error during txn"), taking the member down; here
/// the txn fails whole with etcd's "key not found" and changes nothing.
fn check_path<'t, H: History>(
    store: &Store<H>,
    leases: &dyn Leases,
    t: &'t TxnRequest,
    path: &[bool],
    at: &mut usize,
    puts: bool,
    effects: &mut Vec<Effect<'t>>,
) -> Result<(), Status> {
    let ok = path.get(*at).copied().unwrap_or(false);
    *at += 1;
    for op in if ok { &t.success } else { &t.failure } {
        match &op.request {
            Some(request_op::Request::RequestTxn(inner)) => check_path(store, leases, inner, path, at, puts, effects)?,
            Some(request_op::Request::RequestPut(p)) if puts => {
                if (p.ignore_value || p.ignore_lease) && !exists_after(store, effects, &p.key) {
                    return Err(errors::key_not_found());
                }
                if p.lease != 0 && !leases.exists(p.lease) {
                    return Err(errors::lease_not_found());
                }
                effects.push(Effect::Put(&p.key));
            }
            Some(request_op::Request::RequestDeleteRange(d)) if puts => {
                effects.push(Effect::Delete(&d.key, &d.range_end));
            }
            Some(request_op::Request::RequestRange(r)) if !puts => {
                if r.revision > store.current_revision() {
                    return Err(errors::future_rev());
                }
                // etcd's checkRange: a negative revision is compared too (and so fails once
                // anything, even revision 0, was compacted, or below -1 before that).
                if r.revision != 0 && r.revision < store.first_revision() {
                    return Err(errors::compacted());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether any op of either branch (nested txns included) is a put (what NOSPACE refuses).
pub fn txn_has_put(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(request_op::Request::RequestPut(_)) => true,
        Some(request_op::Request::RequestTxn(inner)) => txn_has_put(inner),
        _ => false,
    })
}

/// etcd's isTxnReadonly: every op of both branches is a Range.
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))))
}

fn apply_txn<H: History>(
    w: &mut WriteTxn<'_, H>,
    t: &TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> Result<OpOut, Status> {
    let ok = path.get(*at).copied().unwrap_or(false);
    *at += 1;
    let ops = if ok { &t.success } else { &t.failure };
    let mut outs = Vec::with_capacity(ops.len());
    for op in ops {
        let out = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                let read_rev = if w.changed() { w.revision() } else { w.revision() - 1 };
                range_in(w.store(), read_rev, r)?
            }
            Some(request_op::Request::RequestPut(p)) => put_in(w, p)?,
            Some(request_op::Request::RequestDeleteRange(d)) => delete_in(w, d),
            Some(request_op::Request::RequestTxn(inner)) => {
                let mut o = apply_txn(w, inner, path, at)?;
                if let OpOut::Txn { header, .. } = &mut o {
                    // etcd leaves a nested txn's header empty.
                    *header = Header::default();
                }
                o
            }
            None => return Err(errors::key_not_found()),
        };
        outs.push(out);
    }
    Ok(OpOut::Txn { header: Header::default(), succeeded: ok, ops: outs })
}

pub fn txn<H: History>(
    store: &mut Store<H>,
    ids: &Ids,
    leases: &dyn Leases,
    t: &TxnRequest,
    buf: &mut Vec<u8>,
) -> Result<(), Status> {
    let mut path = Vec::new();
    compare_to_path(store, t, &mut path);
    let read_only = txn_is_read_only(t);
    if !read_only {
        check_path(store, leases, t, &path, &mut 0, true, &mut Vec::new())?;
    }
    check_path(store, leases, t, &path, &mut 0, false, &mut Vec::new())?;
    let mut w = store.write();
    let out = apply_txn(&mut w, t, &path, &mut 0);
    drop(w);
    let mut out = out?;
    if let OpOut::Txn { header, .. } = &mut out {
        *header = Header::full(ids, store.current_revision());
    }
    out.write(buf);
    Ok(())
}

pub fn compact<H: History>(
    store: &mut Store<H>,
    ids: &Ids,
    r: &CompactionRequest,
    buf: &mut Vec<u8>,
) -> Result<(), Status> {
    store.compact(r.revision).map_err(errors::mvcc)?;
    Header::full(ids, store.current_revision()).write(buf, 1);
    Ok(())
}

/// Whether `op` is a request etcd proposes through raft (and so size-checks).
pub fn is_proposed_txn(t: &TxnRequest) -> bool {
    !txn_is_read_only(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metastore_proto::etcdserverpb as pb;
    use metastore_proto::etcdserverpb::RequestOp;
    use prost::Message;

    const IDS: Ids = Ids { cluster_id: 7, member_id: 9, raft_term: 2 };

    fn put_req(k: &str, v: &str) -> PutRequest {
        PutRequest { key: k.into(), value: v.into(), ..Default::default() }
    }

    fn do_put(s: &mut Store, k: &str, v: &str) -> pb::PutResponse {
        let mut b = Vec::new();
        put(s, &IDS, &NoLeases, &PutRequest { prev_kv: true, ..put_req(k, v) }, &mut b).unwrap();
        pb::PutResponse::decode(&b[..]).unwrap()
    }

    #[test]
    fn put_and_range_encode_like_prost() {
        let mut s = Store::new();
        let r = do_put(&mut s, "foo", "bar");
        assert_eq!(r.header.unwrap().revision, 2);
        assert!(r.prev_kv.is_none());
        let r = do_put(&mut s, "foo", "bar2");
        let prev = r.prev_kv.unwrap();
        assert_eq!((prev.create_revision, prev.mod_revision, prev.version), (2, 2, 1));
        let mut b = Vec::new();
        range(&s, &IDS, &RangeRequest { key: b"foo".to_vec(), ..Default::default() }, &mut b).unwrap();
        let got = pb::RangeResponse::decode(&b[..]).unwrap();
        let want = pb::RangeResponse {
            header: Some(pb::ResponseHeader { cluster_id: 7, member_id: 9, revision: 3, raft_term: 2 }),
            kvs: vec![metastore_proto::mvccpb::KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                version: 2,
                value: b"bar2".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(got, want);
        assert_eq!(b, want.encode_to_vec(), "byte-identical to prost's encoding");
    }

    #[test]
    fn txn_inner_headers_and_nesting() {
        let mut s = Store::new();
        do_put(&mut s, "a", "1");
        let t = TxnRequest {
            compare: vec![Compare {
                key: b"a".to_vec(),
                target: compare::CompareTarget::Value as i32,
                result: compare::CompareResult::Equal as i32,
                target_union: Some(compare::TargetUnion::Value(b"1".to_vec())),
                ..Default::default()
            }],
            success: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: b"a".to_vec(),
                        ..Default::default()
                    })),
                },
                RequestOp { request: Some(request_op::Request::RequestPut(put_req("b", "2"))) },
                RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: b"b".to_vec(),
                        ..Default::default()
                    })),
                },
                RequestOp {
                    request: Some(request_op::Request::RequestTxn(TxnRequest {
                        compare: vec![],
                        success: vec![RequestOp {
                            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                                key: b"zz".to_vec(),
                                ..Default::default()
                            })),
                        }],
                        failure: vec![],
                    })),
                },
            ],
            failure: vec![],
        };
        let mut b = Vec::new();
        txn(&mut s, &IDS, &NoLeases, &t, &mut b).unwrap();
        let r = pb::TxnResponse::decode(&b[..]).unwrap();
        assert!(r.succeeded);
        assert_eq!(r.header.unwrap().revision, 3);
        use pb::response_op::Response as R;
        let rs: Vec<R> = r.responses.into_iter().map(|o| o.response.unwrap()).collect();
        let R::ResponseRange(r0) = &rs[0] else { panic!() };
        assert_eq!(r0.header, Some(pb::ResponseHeader { revision: 2, ..Default::default() }));
        let R::ResponsePut(r1) = &rs[1] else { panic!() };
        assert_eq!(r1.header.as_ref().unwrap().revision, 3);
        let R::ResponseRange(r2) = &rs[2] else { panic!() };
        assert_eq!(r2.header.as_ref().unwrap().revision, 3, "reads after a write see the new revision");
        assert_eq!(r2.kvs[0].value, b"2");
        let R::ResponseTxn(r3) = &rs[3] else { panic!() };
        assert_eq!(r3.header, Some(pb::ResponseHeader::default()), "nested txn header is present and empty");
        let R::ResponseDeleteRange(d) = &r3.responses[0].response.as_ref().unwrap() else { panic!() };
        assert_eq!(d.header.as_ref().unwrap().revision, 3);
    }

    #[test]
    fn failed_precheck_changes_nothing() {
        let mut s = Store::new();
        let t = TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp { request: Some(request_op::Request::RequestPut(put_req("x", "1"))) },
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: b"missing".to_vec(),
                        ignore_value: true,
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![],
        };
        let mut b = Vec::new();
        assert_eq!(txn(&mut s, &IDS, &NoLeases, &t, &mut b), Err(errors::key_not_found()));
        assert_eq!(s.current_revision(), 1);
        assert!(s.get(b"x").is_none());
        // A lease that does not exist.
        let mut b = Vec::new();
        let p = PutRequest { lease: 5, ..put_req("k", "v") };
        assert_eq!(put(&mut s, &IDS, &NoLeases, &p, &mut b), Err(errors::lease_not_found()));
    }

    /// A from-key delete escapes the duplicate-key rule, so it can remove the key an ignore_*
    /// put after it needs: the txn must fail before anything runs, not after the delete (etcd
    /// 3.4.23 panics on it). Found by core/tests/differential.rs.
    #[test]
    fn ignore_put_after_a_from_key_delete_fails_whole() {
        let mut s = Store::new();
        do_put(&mut s, "b", "1");
        let del_all = RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: b"\0".to_vec(),
                range_end: b"\0".to_vec(),
                prev_kv: false,
            })),
        };
        let ignore_put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"b".to_vec(),
                ignore_lease: true,
                ..Default::default()
            })),
        };
        let t = TxnRequest { compare: vec![], success: vec![del_all.clone(), ignore_put.clone()], failure: vec![] };
        assert_eq!(crate::etcd::validate::txn(&t, 128), Ok(()), "the duplicate-key rule lets it through");
        assert_eq!(txn(&mut s, &IDS, &NoLeases, &t, &mut Vec::new()), Err(errors::key_not_found()));
        assert_eq!(s.current_revision(), 2, "nothing was deleted");
        assert!(s.get(b"b").is_some());
        // In a nested txn too; and the other order is fine (the put runs first).
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success: vec![del_all.clone()],
                failure: vec![],
            })),
        };
        let t = TxnRequest { compare: vec![], success: vec![nested, ignore_put.clone()], failure: vec![] };
        assert_eq!(txn(&mut s, &IDS, &NoLeases, &t, &mut Vec::new()), Err(errors::key_not_found()));
        assert_eq!(s.current_revision(), 2);
        let t = TxnRequest { compare: vec![], success: vec![ignore_put, del_all], failure: vec![] };
        assert_eq!(txn(&mut s, &IDS, &NoLeases, &t, &mut Vec::new()), Ok(()));
        assert_eq!(s.current_revision(), 3);
        assert!(s.get(b"b").is_none());
    }

    /// etcd sorts only on ASCEND or DESCEND (or NONE with a non-key target): an unknown order
    /// leaves the records in key order. Found by core/tests/differential.rs against etcd 3.4.23.
    #[test]
    fn unknown_sort_order_sorts_nothing() {
        let mut s = Store::new();
        do_put(&mut s, "b", "1");
        do_put(&mut s, "a", "2");
        for target in [range_request::SortTarget::Mod, range_request::SortTarget::Value] {
            let r = RangeRequest {
                key: b"a".to_vec(),
                range_end: b"c".to_vec(),
                sort_order: 7,
                sort_target: target as i32,
                ..Default::default()
            };
            let mut b = Vec::new();
            range(&s, &IDS, &r, &mut b).unwrap();
            let keys: Vec<Vec<u8>> =
                pb::RangeResponse::decode(&b[..]).unwrap().kvs.into_iter().map(|kv| kv.key).collect();
            assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()], "{target:?}");
        }
    }

    /// etcd's checkRange compares a txn Range's non-zero revision with the compacted revision
    /// (-1 before any compaction), negative ones included. Found by core/tests/differential.rs
    /// against etcd 3.4.23.
    #[test]
    fn txn_range_negative_revisions() {
        let mut s = Store::new();
        do_put(&mut s, "a", "1");
        let ranged_at = |rev: i64| TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b"a".to_vec(),
                    revision: rev,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let run = |s: &mut Store, rev: i64| txn(s, &IDS, &NoLeases, &ranged_at(rev), &mut Vec::new());
        assert_eq!(run(&mut s, -1), Ok(()), "not below -1: read at the current revision");
        assert_eq!(run(&mut s, -2), Err(errors::compacted()));
        assert_eq!(run(&mut s, 3), Err(errors::future_rev()));
        let mut b = Vec::new();
        compact(&mut s, &IDS, &CompactionRequest { revision: 0, physical: false }, &mut b).unwrap();
        assert_eq!(run(&mut s, -1), Err(errors::compacted()), "below the compaction at 0");
        assert_eq!(run(&mut s, 1), Ok(()));
    }

    #[test]
    fn compare_semantics_on_missing_keys() {
        let s = Store::new();
        let c =
            |target: compare::CompareTarget, result: compare::CompareResult, u: Option<compare::TargetUnion>| Compare {
                key: b"nope".to_vec(),
                target: target as i32,
                result: result as i32,
                target_union: u,
                ..Default::default()
            };
        use compare::{CompareResult as Res, CompareTarget as Tgt, TargetUnion as U};
        assert!(apply_compare(&s, &c(Tgt::Version, Res::Equal, Some(U::Version(0)))));
        assert!(apply_compare(&s, &c(Tgt::Create, Res::Equal, None)), "unset union compares with 0");
        assert!(!apply_compare(&s, &c(Tgt::Value, Res::Equal, Some(U::Value(vec![])))), "VALUE on a missing key fails");
        assert!(!apply_compare(&s, &c(Tgt::Mod, Res::Greater, Some(U::ModRevision(0)))));
        assert!(apply_compare(&s, &c(Tgt::Lease, Res::Less, Some(U::Lease(1)))));
    }
}
