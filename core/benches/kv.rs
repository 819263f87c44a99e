//! Micro-benchmarks of the KV service's per-request CPU work outside the codec and the disk:
//!
//! - `request`: decoding and validating a PutRequest (8-byte key, 256-byte value) and a
//!   RangeRequest (one key) from their protobuf bytes, as the connection's core does before a
//!   request goes to the shard (prost decode, etcd's checks, and for a write the proposal size
//!   check; the same steps as `conn::decode_request`, through the public functions it calls).
//! - `response`: `kv::range`, the function the shard answers a Range with (it walks the store's
//!   index and encodes each record straight into the output buffer), over a store of 10,000
//!   keys, for 1 and 100 keys; the same response encoded from records already in hand (the
//!   encoding alone, with the `Header`/`write_kv`/`pbw` writers `kv::range` uses); prost's
//!   generic encoder on the same RangeResponse, for reference; the PutResponse (`kv::put`
//!   writes only its header); and `kv::put` whole (the MVCC write plus the response), what the
//!   shard does when it applies a put.
//!
//! Output buffers are reused (cleared, not freed) between iterations.
//!
//! Run: `cargo bench -p metastore-core --bench kv`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use divan::{black_box, Bencher};
use metastore_core::config::Config;
use metastore_core::etcd::kv::{self, Header, Ids, NoLeases};
use metastore_core::etcd::{pbw, validate};
use metastore_proto::etcdserverpb as pb;
use metastore_proto::mvccpb;
use metastore_storage::mvcc::{Record, Store};
use prost::Message;

fn main() {
    // 500 samples rather than divan's 100: steadier medians on a shared machine
    // (`-- --sample-count N` overrides it).
    divan::Divan::default().sample_count(500).config_with_args().main();
}

const KEYS: usize = 10_000;
const VALUE_BYTES: usize = 256;
const IDS: Ids = Ids { cluster_id: 0xcdf8_1819_4e3a_8c32, member_id: 0x8e9e_05c5_2164_694d, raft_term: 2 };

/// `k` and 7 decimal digits.
fn key(i: usize) -> Vec<u8> {
    format!("k{i:07}").into_bytes()
}

/// A store with `KEYS` keys, each put once.
fn store() -> Store {
    let mut s = Store::new();
    let value = [b'v'; VALUE_BYTES];
    for i in 0..KEYS {
        let mut w = s.write();
        w.put(&key(i), Some(&value), Some(0));
        w.commit();
    }
    s
}

fn range_request(n: usize) -> pb::RangeRequest {
    let start = KEYS / 2;
    let range_end = if n == 1 { Vec::new() } else { key(start + n) };
    pb::RangeRequest { key: key(start), range_end, ..Default::default() }
}

fn put_request() -> pb::PutRequest {
    pb::PutRequest { key: key(42), value: vec![b'w'; VALUE_BYTES], ..Default::default() }
}

mod request {
    use super::*;

    #[divan::bench]
    fn decode_validate_put(b: Bencher) {
        let bytes = put_request().encode_to_vec();
        let max = Config::default().max_request_bytes as usize;
        b.bench_local(|| {
            let message = black_box(&bytes[..]);
            let r = pb::PutRequest::decode(message).expect("a valid PutRequest");
            validate::put(&r).expect("a valid put");
            assert!(validate::proposal_bytes(message.len()) <= max, "under --max-request-bytes");
            r
        });
    }

    #[divan::bench]
    fn decode_validate_range(b: Bencher) {
        let bytes = range_request(1).encode_to_vec();
        b.bench_local(|| {
            let r = pb::RangeRequest::decode(black_box(&bytes[..])).expect("a valid RangeRequest");
            validate::range(&r).expect("a valid range");
            r
        });
    }
}

mod response {
    use super::*;

    const KVS: [usize; 2] = [1, 100];

    /// `kv::range` over the store: index walk plus encoding, the shard's whole Range.
    #[divan::bench(args = KVS)]
    fn range(b: Bencher, n: usize) {
        let s = store();
        let r = range_request(n);
        let mut buf = Vec::with_capacity(64 << 10);
        kv::range(&s, &IDS, &r, &mut buf).expect("range succeeds");
        let resp = pb::RangeResponse::decode(&buf[..]).expect("kv::range writes a RangeResponse");
        assert_eq!((resp.kvs.len(), resp.count), (n, n as i64));
        b.bench_local(|| {
            buf.clear();
            kv::range(&s, &IDS, black_box(&r), &mut buf).expect("range succeeds");
            buf.len()
        });
    }

    /// The same RangeResponse encoded from records already in hand: the encoding alone.
    #[divan::bench(args = KVS)]
    fn range_encode_only(b: Bencher, n: usize) {
        let s = store();
        let r = range_request(n);
        let mut recs: Vec<Arc<Record>> = Vec::new();
        s.range_each(&r.key, &r.range_end, &kv::range_options(&r), |rec| recs.push(rec.clone()))
            .expect("range succeeds");
        let rev = s.current_revision();
        let mut buf = Vec::with_capacity(64 << 10);
        let mut expected = Vec::new();
        kv::range(&s, &IDS, &r, &mut expected).expect("range succeeds");
        let encode = |buf: &mut Vec<u8>, recs: &[Arc<Record>]| {
            Header::full(&IDS, rev).write(buf, 1);
            for rec in recs {
                kv::write_kv(buf, 2, rec, false);
            }
            pbw::bool_field(buf, 3, false);
            pbw::i64_field(buf, 4, recs.len() as i64);
        };
        encode(&mut buf, &recs);
        assert_eq!(buf, expected, "the same bytes as kv::range");
        b.bench_local(|| {
            buf.clear();
            encode(&mut buf, black_box(&recs));
            buf.len()
        });
    }

    /// prost's generic encoder on the same response (built beforehand), for reference.
    #[divan::bench(args = KVS)]
    fn range_prost_reference(b: Bencher, n: usize) {
        let s = store();
        let r = range_request(n);
        let mut expected = Vec::new();
        kv::range(&s, &IDS, &r, &mut expected).expect("range succeeds");
        let resp = pb::RangeResponse::decode(&expected[..]).expect("kv::range writes a RangeResponse");
        assert!(resp.kvs.iter().all(|kv: &mvccpb::KeyValue| kv.value.len() == VALUE_BYTES));
        let mut buf = Vec::with_capacity(64 << 10);
        b.bench_local(|| {
            buf.clear();
            black_box(&resp).encode_raw(&mut buf);
            buf.len()
        });
    }

    /// A PutResponse without prev_kv: what `kv::put` writes after the store's write.
    #[divan::bench]
    fn put_encode_only(b: Bencher) {
        let mut buf = Vec::with_capacity(1024);
        b.bench_local(|| {
            buf.clear();
            Header::full(black_box(&IDS), black_box(100_042)).write(&mut buf, 1);
            buf.len()
        });
    }

    /// `kv::put` whole: the MVCC write (overwriting keys in turn) plus the PutResponse.
    #[divan::bench]
    fn put_apply(b: Bencher) {
        let mut s = store();
        let reqs: Vec<pb::PutRequest> = (0..KEYS).map(|i| pb::PutRequest { key: key(i), ..put_request() }).collect();
        let mut buf = Vec::with_capacity(1024);
        let mut i = 0;
        b.bench_local(|| {
            buf.clear();
            let r = &reqs[i % KEYS];
            i += 1;
            kv::put(&mut s, &IDS, &NoLeases, black_box(r), &mut buf).expect("put succeeds");
            buf.len()
        });
    }
}
