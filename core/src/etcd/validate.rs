//! Checks etcd makes before a request reaches the store (its `v3rpc/key.go`), on the
//! connection's core: empty keys, ignore_* misuse, txn size and the duplicate-key rule.

use std::collections::HashSet;

use metastore_net::grpc::Status;
use metastore_proto::etcdserverpb::{request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

use super::errors;

pub fn range(r: &RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(errors::value_provided());
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(errors::lease_provided());
    }
    Ok(())
}

pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(())
}

/// etcd's checkTxnRequest followed by checkIntervals on both branches.
pub fn txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), Status> {
    check_txn(r, max_txn_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), Status> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_txn_ops {
        return Err(errors::too_many_ops());
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(errors::empty_key());
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_txn_ops - opc)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), Status> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => range(r),
        Some(request_op::Request::RequestPut(r)) => put(r),
        Some(request_op::Request::RequestDeleteRange(r)) => delete_range(r),
        Some(request_op::Request::RequestTxn(r)) => check_txn(r, max_txn_ops),
        // etcd's quirk: an op with no arm set.
        None => Err(errors::key_not_found()),
    }
}

/// Deletes of one level, as (key, range_end) pairs.
type Dels<'a> = Vec<(&'a [u8], &'a [u8])>;

/// Whether a put of `key` falls inside one of the deletes, as etcd's interval tree decides it: a
/// delete is the plain byte-string interval [key, range_end) (a point without range_end). The
/// tree knows no "from key" convention, so a `"\0"` range_end is an end below every key: a
/// from-key (or all-keys) delete conflicts with no put, and neither does an empty range.
fn intersects(dels: &Dels<'_>, key: &[u8]) -> bool {
    dels.iter().any(|(k, end)| if end.is_empty() { *k == key } else { *k <= key && key < *end })
}

/// etcd's checkIntervals: no key put twice, and no key both put and deleted, within one list
/// of ops and the nested txns under it (the then and else of one nested txn are exclusive).
fn check_intervals(reqs: &[RequestOp]) -> Result<(HashSet<&[u8]>, Dels<'_>), Status> {
    let mut dels: Dels<'_> = reqs
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some((&d.key[..], &d.range_end[..])),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in reqs {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || intersects(&dels, k) {
                return Err(errors::duplicate_key());
            }
            puts.insert(k);
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || intersects(&dels, k) {
                return Err(errors::duplicate_key());
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in reqs {
        let Some(request_op::Request::RequestPut(p)) = &op.request else { continue };
        let k = &p.key[..];
        if puts.contains(k) || intersects(&dels, k) {
            return Err(errors::duplicate_key());
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

/// The size etcd checks against `--max-request-bytes`: the request wrapped in its internal raft
/// request (a header carrying a 9-byte request id, field 100, plus the request's own field tag).
pub fn proposal_bytes(message_len: usize) -> usize {
    const INTERNAL_HEADER_BYTES: usize = 13;
    INTERNAL_HEADER_BYTES + 1 + super::pbw::varint_len(message_len as u64) + message_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use metastore_proto::etcdserverpb::Compare;

    fn put_op(k: &str) -> RequestOp {
        RequestOp { request: Some(request_op::Request::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp { request: Some(request_op::Request::RequestTxn(TxnRequest { compare: vec![], success, failure })) }
    }
    fn check(success: Vec<RequestOp>) -> Result<(), Status> {
        txn(&TxnRequest { compare: vec![], success, failure: vec![] }, 128)
    }

    #[test]
    fn duplicate_key_rule() {
        assert!(check(vec![put_op("a"), put_op("b")]).is_ok());
        assert_eq!(check(vec![put_op("a"), put_op("a")]), Err(errors::duplicate_key()));
        assert_eq!(check(vec![del_op("a", "c"), put_op("b")]), Err(errors::duplicate_key()));
        assert_eq!(check(vec![put_op("b"), del_op("b", "")]), Err(errors::duplicate_key()));
        assert!(check(vec![del_op("a", "c"), del_op("b", "d")]).is_ok(), "overlapping deletes are fine");
        assert!(check(vec![del_op("a", "c"), put_op("c")]).is_ok(), "range end is exclusive");
        assert!(check(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]).is_ok(), "then/else exclusive");
        assert_eq!(check(vec![txn_op(vec![put_op("a")], vec![]), put_op("a")]), Err(errors::duplicate_key()));
        assert_eq!(check(vec![txn_op(vec![del_op("a", "")], vec![]), put_op("a")]), Err(errors::duplicate_key()));
        assert_eq!(check(vec![del_op("a", "b"), txn_op(vec![put_op("ab")], vec![])]), Err(errors::duplicate_key()));
    }

    /// etcd checks puts against deletes with an interval tree of plain byte strings, where the
    /// from-key end `"\0"` sorts below every key: such deletes (and empty ranges) never conflict.
    /// Found by core/tests/differential.rs against etcd 3.4.23.
    #[test]
    fn from_key_and_empty_deletes_conflict_with_no_put() {
        assert!(check(vec![del_op("a", "\0"), put_op("b")]).is_ok());
        assert!(check(vec![del_op("\0", "\0"), put_op("a")]).is_ok(), "all keys");
        assert!(check(vec![txn_op(vec![del_op("\0", "\0")], vec![]), put_op("bc")]).is_ok(), "nested");
        assert!(check(vec![del_op("a", "\0"), txn_op(vec![put_op("z")], vec![])]).is_ok());
        assert!(check(vec![del_op("c", "a"), put_op("b")]).is_ok(), "an empty range");
        assert_eq!(check(vec![del_op("a", "c"), put_op("b")]), Err(errors::duplicate_key()));
        assert_eq!(check(vec![del_op("\0", "b"), put_op("a")]), Err(errors::duplicate_key()));
    }

    #[test]
    fn op_count_and_empty_keys() {
        let ops: Vec<RequestOp> = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        assert_eq!(check(ops[..128].to_vec()), Ok(()));
        assert_eq!(check(ops), Err(errors::too_many_ops()));
        assert_eq!(check(vec![put_op("")]), Err(errors::empty_key()));
        assert_eq!(check(vec![RequestOp { request: None }]), Err(errors::key_not_found()));
        let c = Compare { key: vec![], ..Default::default() };
        assert_eq!(
            txn(&TxnRequest { compare: vec![c], success: vec![], failure: vec![] }, 128),
            Err(errors::empty_key())
        );
        // A nested txn gets the budget its parent left.
        let inner: Vec<RequestOp> = (0..100).map(|i| put_op(&format!("i{i}"))).collect();
        let outer: Vec<RequestOp> = (0..30).map(|i| put_op(&format!("o{i}"))).chain([txn_op(inner, vec![])]).collect();
        assert_eq!(check(outer), Err(errors::too_many_ops()));
    }

    #[test]
    fn put_checks() {
        assert_eq!(
            put(&PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ignore_value: true, ..Default::default() }),
            Err(errors::value_provided())
        );
        assert_eq!(
            put(&PutRequest { key: b"k".to_vec(), lease: 5, ignore_lease: true, ..Default::default() }),
            Err(errors::lease_provided())
        );
        assert!(proposal_bytes(1_000_000) < 1_572_864 && proposal_bytes(1_600_000) > 1_572_864);
    }
}
