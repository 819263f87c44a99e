//! Micro-benchmarks of the MVCC store on its in-memory history (`Store<MemHistory>`), holding
//! 10,000 keys of 8 bytes with 256-byte values (etcd's benchmark sizes):
//!
//! - `put_overwrite`: one write request putting an existing key (a new revision, the key index
//!   and the current record updated, the old record kept in history); keys taken in turn.
//! - `put_new_key`: the same for keys not yet in the store (the index grows).
//! - `range_point`: a Range of one key at the current revision through `Store::range_each`
//!   (what the server's Range calls), records handed to a no-op.
//! - `range_100`: a Range of 100 consecutive keys the same way.
//!
//! History grows by one record per put; divan's few thousand iterations keep that small.
//!
//! Run: `cargo bench -p metastore-storage --bench mvcc`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use divan::{black_box, Bencher};
use metastore_storage::mvcc::{RangeOptions, Store};

fn main() {
    // 500 samples rather than divan's 100: steadier medians on a shared machine
    // (`-- --sample-count N` overrides it).
    divan::Divan::default().sample_count(500).config_with_args().main();
}

const KEYS: usize = 10_000;
const VALUE_BYTES: usize = 256;

/// `k` and 7 decimal digits (no allocation: it runs inside the timed part).
fn key(i: usize) -> [u8; 8] {
    let mut k = *b"k0000000";
    let mut n = i;
    for d in k[1..].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
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
    assert_eq!(s.live_keys(), KEYS);
    s
}

#[divan::bench]
fn put_overwrite(b: Bencher) {
    let mut s = store();
    let value = [b'w'; VALUE_BYTES];
    let mut i = 0;
    b.bench_local(|| {
        let k = key(i % KEYS);
        i += 1;
        let mut w = s.write();
        let prev = w.put(black_box(&k), Some(black_box(&value)), Some(0));
        w.commit();
        prev.is_some()
    });
}

#[divan::bench]
fn put_new_key(b: Bencher) {
    let mut s = store();
    let value = [b'w'; VALUE_BYTES];
    let mut i = KEYS;
    b.bench_local(|| {
        let k = key(i);
        i += 1;
        let mut w = s.write();
        let prev = w.put(black_box(&k), Some(black_box(&value)), Some(0));
        w.commit();
        prev.is_some()
    });
}

#[divan::bench]
fn range_point(b: Bencher) {
    let s = store();
    let k = key(KEYS / 2);
    let opts = RangeOptions::default();
    b.bench_local(|| {
        let mut bytes = 0;
        let out = s
            .range_each(black_box(&k), b"", &opts, |r| bytes += r.key.len() + r.value.len())
            .expect("current revision is readable");
        assert_eq!(out.count, 1);
        bytes
    });
}

#[divan::bench]
fn range_100(b: Bencher) {
    let s = store();
    let (start, end) = (key(KEYS / 2), key(KEYS / 2 + 100));
    let opts = RangeOptions::default();
    b.bench_local(|| {
        let mut bytes = 0;
        let out = s
            .range_each(black_box(&start), black_box(&end), &opts, |r| bytes += r.key.len() + r.value.len())
            .expect("current revision is readable");
        assert_eq!(out.count, 100);
        bytes
    });
}
