//! What one operation sends, per workload. Requests are encoded once per shape: a put or a range
//! is a template (the framed message with a placeholder key) that each operation copies into a
//! reused buffer and patches with its key; only the txn of `txn-put`, whose compared revision
//! changes length, is encoded per operation, from a message kept per client and mutated in place.
//! lease-keepalive's clients each carry their [`Lease`]; the watch workloads are not request
//! loops and live in `watch.rs`.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use http::Uri;
use metastore_proto::etcdserverpb::{
    compare, request_op, Compare, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use prost::Message;

use crate::args::{Config, Workload};
use crate::grpc::{self, CallError, Sender};
use crate::keys::{self, KeyPicker};
use crate::lease::{self, Lease};

pub const PATH_PUT: &str = "/etcdserverpb.KV/Put";
pub const PATH_RANGE: &str = "/etcdserverpb.KV/Range";
pub const PATH_TXN: &str = "/etcdserverpb.KV/Txn";
/// The transport ceiling: MetaStore answers it behind a flag; anything else says UNIMPLEMENTED.
pub const PATH_NULL: &str = "/metastore.Bench/Null";
/// An empty message with its gRPC prefix.
const NULL_BODY: &[u8] = &[0, 0, 0, 0, 0];
/// Request bytes a client's buffer grows by when it runs out (requests are cut from it).
const POOL_BYTES: usize = 64 * 1024;

/// A framed request whose key sits at a known offset.
#[derive(Debug)]
struct Template {
    bytes: Vec<u8>,
    key_at: usize,
    key_size: usize,
}

impl Template {
    /// `msg` must carry `key` as its field 1, encoded first (as prost encodes PutRequest and
    /// RangeRequest): tag, length varint, then the key bytes.
    fn new(msg: &impl Message, key: &[u8]) -> Result<Self, String> {
        let mut bytes = Vec::new();
        grpc::frame(&mut bytes, msg);
        let key_at = grpc::GRPC_PREFIX_BYTES + 1 + prost::encoding::encoded_len_varint(key.len() as u64);
        if bytes.get(key_at..key_at + key.len()) != Some(key) {
            return Err("request template: the key is not where it was expected".into());
        }
        Ok(Template { bytes, key_at, key_size: key.len() })
    }

    /// The request for key `index`, cut from `pool`.
    fn fill(&self, pool: &mut BytesMut, index: u64) -> Bytes {
        reserve(pool, self.bytes.len());
        pool.extend_from_slice(&self.bytes);
        keys::write_key(&mut pool[self.key_at..self.key_at + self.key_size], index);
        pool.split().freeze()
    }
}

fn reserve(pool: &mut BytesMut, need: usize) {
    if pool.capacity() < need {
        pool.reserve(POOL_BYTES.max(need));
    }
}

/// The per-run shapes, shared by the clients of one thread.
#[derive(Debug)]
pub struct Shapes {
    workload: Workload,
    key_size: usize,
    value: Vec<u8>,
    /// txn-mixed: the probability that an operation is a read.
    read_fraction: f64,
    put: Template,
    range: Template,
}

impl Shapes {
    pub fn new(cfg: &Config) -> Result<Self, String> {
        let key = keys::key(cfg.key_size, 0);
        let value = vec![b'v'; cfg.val_size];
        let put = Template::new(&PutRequest { key: key.clone(), value: value.clone(), ..Default::default() }, &key)?;
        let range = Template::new(
            &RangeRequest { key: key.clone(), serializable: cfg.serializable, ..Default::default() },
            &key,
        )?;
        Ok(Shapes {
            workload: cfg.workload,
            key_size: cfg.key_size,
            value,
            read_fraction: cfg.rw_ratio / (cfg.rw_ratio + 1.0),
            put,
            range,
        })
    }

    /// The txn of `txn-put`: compare the key's mod_revision, then put.
    fn txn(&self) -> TxnRequest {
        let key = keys::key(self.key_size, 0);
        TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: key.clone(),
                target_union: Some(compare::TargetUnion::ModRevision(0)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key,
                    value: self.value.clone(),
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        }
    }
}

/// The URIs of one endpoint.
#[derive(Debug)]
pub struct Uris {
    put: Uri,
    range: Uri,
    txn: Uri,
    null: Uri,
    pub lease_grant: Uri,
    pub lease_keepalive: Uri,
    pub lease_revoke: Uri,
}

impl Uris {
    pub fn new(authority: &str) -> Result<Self, String> {
        Ok(Uris {
            put: grpc::uri(authority, PATH_PUT)?,
            range: grpc::uri(authority, PATH_RANGE)?,
            txn: grpc::uri(authority, PATH_TXN)?,
            null: grpc::uri(authority, PATH_NULL)?,
            lease_grant: grpc::uri(authority, lease::PATH_LEASE_GRANT)?,
            lease_keepalive: grpc::uri(authority, lease::PATH_LEASE_KEEPALIVE)?,
            lease_revoke: grpc::uri(authority, lease::PATH_LEASE_REVOKE)?,
        })
    }
}

/// How an operation that got its answers ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Ok,
    /// txn-put's compare failed: another client updated the key between the read and the txn.
    Conflict,
}

/// One client: a sequential request loop's state. Everything here is reused across operations.
pub struct Client {
    send: Sender,
    uris: Rc<Uris>,
    shapes: Rc<Shapes>,
    pool: BytesMut,
    out: Vec<u8>,
    txn: TxnRequest,
    pub picker: KeyPicker,
    /// gRPC calls made (txn-put makes two per operation; a keep-alive counts as one).
    pub calls: u64,
    /// lease-keepalive: this client's lease, once granted.
    lease: Option<Lease>,
}

impl Client {
    pub fn new(send: Sender, uris: Rc<Uris>, shapes: Rc<Shapes>, picker: KeyPicker) -> Self {
        let txn = shapes.txn();
        Client { send, uris, shapes, pool: BytesMut::new(), out: Vec::new(), txn, picker, calls: 0, lease: None }
    }

    /// lease-keepalive's untimed setup: grants this client's lease and opens its stream.
    pub async fn grant_lease(&mut self, ttl: i64) -> Result<(), String> {
        self.lease = Some(Lease::grant(&mut self.send, &self.uris, ttl).await?);
        Ok(())
    }

    /// Revokes the client's lease, if it has one (untimed, after the run).
    pub async fn revoke_lease(&mut self) -> Result<(), String> {
        match self.lease.take() {
            Some(l) => l.revoke(&mut self.send, &self.uris).await,
            None => Ok(()),
        }
    }

    async fn call(&mut self, which: Path, body: Bytes) -> Result<(), CallError> {
        self.calls += 1;
        let uri = match which {
            Path::Put => &self.uris.put,
            Path::Range => &self.uris.range,
            Path::Txn => &self.uris.txn,
            Path::Null => &self.uris.null,
        };
        grpc::unary(&mut self.send, uri, body, &mut self.out).await
    }

    /// Puts key `index` (also how the key space is prefilled).
    pub async fn put(&mut self, index: u64) -> Result<Done, CallError> {
        let body = self.shapes.put.fill(&mut self.pool, index);
        self.call(Path::Put, body).await?;
        Ok(Done::Ok)
    }

    async fn range(&mut self, index: u64) -> Result<Done, CallError> {
        let body = self.shapes.range.fill(&mut self.pool, index);
        self.call(Path::Range, body).await?;
        Ok(Done::Ok)
    }

    async fn txn_put(&mut self, index: u64) -> Result<Done, CallError> {
        self.range(index).await?;
        let read = RangeResponse::decode(grpc::message(&self.out))
            .map_err(|e| CallError::Status(format!("undecodable RangeResponse: {e}")))?;
        // A key that does not exist has mod_revision 0, and compares equal to 0.
        let rev = read.kvs.first().map_or(0, |kv| kv.mod_revision);
        if let Some(c) = self.txn.compare.first_mut() {
            keys::write_key(&mut c.key, index);
            c.target_union = Some(compare::TargetUnion::ModRevision(rev));
        }
        if let Some(RequestOp { request: Some(request_op::Request::RequestPut(p)) }) = self.txn.success.first_mut() {
            keys::write_key(&mut p.key, index);
        }
        reserve(&mut self.pool, grpc::GRPC_PREFIX_BYTES + self.txn.encoded_len());
        grpc::frame(&mut self.pool, &self.txn);
        let body = self.pool.split().freeze();
        self.call(Path::Txn, body).await?;
        let resp = TxnResponse::decode(grpc::message(&self.out))
            .map_err(|e| CallError::Status(format!("undecodable TxnResponse: {e}")))?;
        Ok(if resp.succeeded { Done::Ok } else { Done::Conflict })
    }

    /// One operation of the run's workload; `op_number` picks the key when keys are sequential.
    pub async fn op(&mut self, op_number: u64) -> Result<Done, CallError> {
        match self.shapes.workload {
            Workload::Null => self.call(Path::Null, Bytes::from_static(NULL_BODY)).await.map(|()| Done::Ok),
            Workload::Put => {
                let k = self.picker.pick(op_number);
                self.put(k).await
            }
            Workload::Range => {
                let k = self.picker.pick(op_number);
                self.range(k).await
            }
            Workload::TxnPut => {
                let k = self.picker.pick(op_number);
                self.txn_put(k).await
            }
            Workload::TxnMixed => {
                let k = self.picker.pick(op_number);
                if self.picker.rng().unit() < self.shapes.read_fraction {
                    self.range(k).await
                } else {
                    self.txn_put(k).await
                }
            }
            Workload::LeaseKeepAlive => {
                let Some(lease) = self.lease.as_mut() else {
                    return Err(CallError::Ended("no lease granted".into()));
                };
                self.calls += 1;
                lease.keepalive().await.map(|()| Done::Ok)
            }
            Workload::WatchLatency | Workload::WatchFanout => {
                Err(CallError::Ended("the watch workloads are not request loops".into()))
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Path {
    Put,
    Range,
    Txn,
    Null,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{parse, Command};

    fn shapes(args: &[&str]) -> Shapes {
        let Ok(Command::Run(cfg)) = parse(args.iter().copied()) else { panic!("{args:?}") };
        Shapes::new(&cfg).unwrap()
    }

    #[test]
    fn templates_encode_exactly_like_prost() {
        for key_size in [1usize, 8, 127, 128, 300] {
            let ks = key_size.to_string();
            let s = shapes(&["range", "--key-size", &ks, "--key-space-size", "10", "--consistency", "s"]);
            let mut pool = BytesMut::new();
            for index in [0u64, 7, 9] {
                let key = keys::key(key_size, index);
                let mut want = Vec::new();
                grpc::frame(&mut want, &PutRequest { key: key.clone(), value: vec![b'v'; 256], ..Default::default() });
                assert_eq!(&s.put.fill(&mut pool, index)[..], &want[..], "put, key size {key_size}");
                let mut want = Vec::new();
                grpc::frame(&mut want, &RangeRequest { key, serializable: true, ..Default::default() });
                assert_eq!(&s.range.fill(&mut pool, index)[..], &want[..], "range, key size {key_size}");
            }
        }
    }

    #[test]
    fn txn_put_compares_mod_revision_then_puts() {
        let s = shapes(&["txn-put", "--val-size", "3"]);
        let t = s.txn();
        assert_eq!(t.compare.len(), 1);
        assert_eq!(t.compare[0].target, compare::CompareTarget::Mod as i32);
        assert_eq!(t.compare[0].result, compare::CompareResult::Equal as i32);
        assert_eq!(t.compare[0].key, b"00000000");
        let Some(request_op::Request::RequestPut(p)) = &t.success[0].request else { panic!("{t:?}") };
        assert_eq!((&p.key[..], &p.value[..]), (&b"00000000"[..], &b"vvv"[..]));
        assert!(t.failure.is_empty());
    }

    #[test]
    fn read_fraction_from_rw_ratio() {
        assert_eq!(shapes(&["txn-mixed"]).read_fraction, 0.5);
        assert_eq!(shapes(&["txn-mixed", "--rw-ratio", "3"]).read_fraction, 0.75);
        assert_eq!(shapes(&["txn-mixed", "--rw-ratio", "0"]).read_fraction, 0.0);
    }
}
