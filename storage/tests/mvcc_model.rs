//! The MVCC store against a model that keeps a full copy of the keyspace at every revision:
//! random puts (with ignore_value/ignore_lease), range deletes, multi-op write requests and
//! compactions, each followed by reads at random revisions with random options (ranges, limits,
//! every sort, filters, count_only). Any difference in records, count, `more`, revisions or
//! errors fails with the seed, which replays the case (`MVCC_SEED=<n>`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use metastore_storage::mvcc::{prefix_end, KeyRange, MvccError, RangeOptions, SortOrder, SortTarget, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Kv {
    value: Vec<u8>,
    create: i64,
    modr: i64,
    version: i64,
    lease: i64,
}

/// Records, count, more.
type Ranged = (Vec<(Vec<u8>, Kv)>, i64, bool);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn key(&mut self) -> Vec<u8> {
        // A small keyspace so that keys collide, with some bytes that stress ordering.
        let alphabet: &[&[u8]] = &[b"a", b"b", b"c", b"\x00", b"\xff"];
        let len = 1 + self.below(3) as usize;
        (0..len).flat_map(|_| alphabet[self.below(alphabet.len() as u64) as usize].to_vec()).collect()
    }
    fn end(&mut self, key: &[u8]) -> Vec<u8> {
        match self.below(5) {
            0 => Vec::new(),
            1 => vec![0],
            2 => prefix_end(key),
            _ => self.key(),
        }
    }
}

struct Model {
    snaps: Vec<BTreeMap<Vec<u8>, Kv>>, // snaps[i] = state at revision i + 1
    compacted: i64,
}

impl Model {
    fn rev(&self) -> i64 {
        self.snaps.len() as i64
    }
    fn now(&self) -> &BTreeMap<Vec<u8>, Kv> {
        self.snaps.last().unwrap()
    }

    fn range(&self, key: &[u8], end: &[u8], o: &RangeOptions) -> Result<Ranged, MvccError> {
        let rev = if o.rev <= 0 { self.rev() } else { o.rev };
        if rev > self.rev() {
            return Err(MvccError::FutureRev);
        }
        if rev < self.compacted {
            return Err(MvccError::Compacted);
        }
        let snap = &self.snaps[rev as usize - 1];
        let r = KeyRange::new(key, end);
        let all: Vec<(Vec<u8>, Kv)> =
            snap.iter().filter(|(k, _)| r.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let count = all.len() as i64;
        if o.count_only {
            return Ok((vec![], count, false));
        }
        let mut v: Vec<(Vec<u8>, Kv)> = all
            .into_iter()
            .filter(|(_, kv)| o.min_mod_revision == 0 || kv.modr >= o.min_mod_revision)
            .filter(|(_, kv)| o.max_mod_revision == 0 || kv.modr <= o.max_mod_revision)
            .filter(|(_, kv)| o.min_create_revision == 0 || kv.create >= o.min_create_revision)
            .filter(|(_, kv)| o.max_create_revision == 0 || kv.create <= o.max_create_revision)
            .collect();
        let filtered = o.min_mod_revision != 0
            || o.max_mod_revision != 0
            || o.min_create_revision != 0
            || o.max_create_revision != 0;
        if o.limit > 0 && o.sort_order == SortOrder::None && !filtered {
            // etcd fetches limit + 1 records (key order) unless an order or a filter is given,
            // and sorts only those by a non-key target.
            v.truncate(o.limit as usize + 1);
        }
        let order = if o.sort_order == SortOrder::None && o.sort_target != SortTarget::Key {
            SortOrder::Ascend
        } else {
            o.sort_order
        };
        if order != SortOrder::None {
            let key_of = |x: &(Vec<u8>, Kv)| -> Vec<u8> {
                match o.sort_target {
                    SortTarget::Key => x.0.clone(),
                    SortTarget::Version => x.1.version.to_be_bytes().to_vec(),
                    SortTarget::Create => x.1.create.to_be_bytes().to_vec(),
                    SortTarget::Mod => x.1.modr.to_be_bytes().to_vec(),
                    SortTarget::Value => x.1.value.clone(),
                }
            };
            v.sort_by(|a, b| {
                let c = key_of(a).cmp(&key_of(b));
                if order == SortOrder::Descend {
                    c.reverse()
                } else {
                    c
                }
            });
        }
        let mut more = false;
        if o.limit > 0 && v.len() > o.limit as usize {
            v.truncate(o.limit as usize);
            more = true;
        }
        Ok((v, count, more))
    }
}

fn run(seed: u64, steps: usize) {
    let mut rng = Rng(seed | 1);
    let mut store = Store::new();
    let mut model = Model { snaps: vec![BTreeMap::new()], compacted: 0 };
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        match rng.below(10) {
            0..=3 => {
                // One write request of 1-3 ops on distinct keys (puts) or a delete.
                let mut w = store.write();
                let mut next = model.now().clone();
                let main = model.rev() + 1;
                let n = 1 + rng.below(3);
                let mut touched: Vec<Vec<u8>> = Vec::new();
                for _ in 0..n {
                    let key = rng.key();
                    if touched.contains(&key) {
                        continue;
                    }
                    touched.push(key.clone());
                    let prev = next.get(&key).cloned();
                    let ignore_value = prev.is_some() && rng.below(4) == 0;
                    let ignore_lease = prev.is_some() && rng.below(4) == 0;
                    let value = vec![b'v'; rng.below(4) as usize];
                    let lease = rng.below(3) as i64;
                    let got = w.put(&key, (!ignore_value).then_some(&value[..]), (!ignore_lease).then_some(lease));
                    assert_eq!(got.map(|r| r.value.to_vec()), prev.as_ref().map(|p| p.value.clone()), "{ctx}");
                    let kv = Kv {
                        value: if ignore_value { prev.as_ref().unwrap().value.clone() } else { value },
                        create: prev.as_ref().map_or(main, |p| p.create),
                        modr: main,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        lease: if ignore_lease { prev.as_ref().unwrap().lease } else { lease },
                    };
                    next.insert(key, kv);
                }
                w.commit();
                assert_eq!(store.last_events().len(), touched.len(), "{ctx}");
                model.snaps.push(next);
            }
            4..=5 => {
                let key = rng.key();
                let end = rng.end(&key);
                let r = KeyRange::new(&key, &end);
                let mut next = model.now().clone();
                let doomed: Vec<Vec<u8>> = next.keys().filter(|k| r.contains(k)).cloned().collect();
                let mut w = store.write();
                let got = w.delete_range(&key, &end);
                let got_keys: Vec<Vec<u8>> = got.iter().map(|r| r.key.to_vec()).collect();
                assert_eq!(got_keys, doomed, "{ctx}: deleted keys in key order");
                let changed = w.changed();
                w.commit();
                assert_eq!(changed, !doomed.is_empty(), "{ctx}");
                assert!(store.last_events().iter().all(|e| e.kv.tombstone && e.kv.mod_revision == model.rev() + 1));
                if !doomed.is_empty() {
                    for k in &doomed {
                        next.remove(k);
                    }
                    model.snaps.push(next);
                }
            }
            6 => {
                let at = 1 + rng.below(model.rev() as u64 + 1) as i64;
                let want = if at <= model.compacted {
                    Err(MvccError::Compacted)
                } else if at > model.rev() {
                    Err(MvccError::FutureRev)
                } else {
                    Ok(())
                };
                assert_eq!(store.compact(at), want, "{ctx}: compact {at}");
                if want.is_ok() {
                    model.compacted = at;
                }
            }
            _ => {}
        }
        assert_eq!(store.current_revision(), model.rev(), "{ctx}");
        assert_eq!(store.live_keys(), model.now().len(), "{ctx}");
        // Reads at random revisions with random options.
        for _ in 0..4 {
            let key = rng.key();
            let end = rng.end(&key);
            let targets =
                [SortTarget::Key, SortTarget::Version, SortTarget::Create, SortTarget::Mod, SortTarget::Value];
            let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
            let pick = |rng: &mut Rng, p: u64| {
                if rng.below(p) == 0 {
                    1 + rng.below(model.rev() as u64 + 1) as i64
                } else {
                    0
                }
            };
            let o = RangeOptions {
                rev: if rng.below(2) == 0 { 0 } else { rng.below(model.rev() as u64 + 2) as i64 },
                limit: if rng.below(2) == 0 { 0 } else { rng.below(4) as i64 },
                sort_order: orders[rng.below(3) as usize],
                sort_target: targets[rng.below(5) as usize],
                count_only: rng.below(6) == 0,
                min_mod_revision: pick(&mut rng, 5),
                max_mod_revision: pick(&mut rng, 5),
                min_create_revision: pick(&mut rng, 5),
                max_create_revision: pick(&mut rng, 5),
            };
            let mut out = Vec::new();
            let got = store.range(&key, &end, &o, &mut out).map(|r| {
                let kvs: Vec<(Vec<u8>, Kv)> = out
                    .iter()
                    .map(|r| {
                        (
                            r.key.to_vec(),
                            Kv {
                                value: r.value.to_vec(),
                                create: r.create_revision,
                                modr: r.mod_revision,
                                version: r.version,
                                lease: r.lease,
                            },
                        )
                    })
                    .collect();
                (kvs, r.count, r.more)
            });
            let want = model.range(&key, &end, &o);
            assert_eq!(got, want, "{ctx}: range {key:?}..{end:?} {o:?}");
            // The streaming form gives the same records and the same count and `more`.
            let mut streamed = Vec::new();
            let got_each =
                store.range_each(&key, &end, &o, |r| streamed.push(r.key.to_vec())).map(|r| (r.count, r.more));
            let want_keys: Vec<Vec<u8>> =
                want.as_ref().map(|(kvs, _, _)| kvs.iter().map(|(k, _)| k.clone()).collect()).unwrap_or_default();
            assert_eq!(got_each, want.as_ref().map(|(_, c, m)| (*c, *m)).map_err(|e| *e), "{ctx}: range_each {o:?}");
            if got_each.is_ok() {
                assert_eq!(streamed, want_keys, "{ctx}: range_each {o:?}");
            }
        }
    }
}

#[test]
fn store_matches_the_model() {
    let fixed = [1u64, 2, 3, 42, 0xdead_beef, 7_777_777];
    for seed in fixed {
        run(seed, 2_000);
    }
    let fresh = std::env::var("MVCC_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("fresh seed: MVCC_SEED={fresh}");
    run(fresh, 2_000);
}

#[test]
fn compaction_frees_history() {
    let mut store = Store::new();
    for i in 0..1000u32 {
        let mut w = store.write();
        w.put(format!("k{}", i % 10).as_bytes(), Some(&[0u8; 100]), None);
        w.commit();
    }
    assert_eq!(store.history_records(), 1000);
    let before = store.history_bytes();
    store.compact(store.current_revision()).unwrap();
    assert_eq!(store.history_records(), 10, "only the live version of each key remains");
    assert!(store.history_bytes() * 50 < before);
    let mut w = store.write();
    w.delete_range(b"k", &prefix_end(b"k"));
    w.commit();
    store.compact(store.current_revision()).unwrap();
    assert_eq!(store.history_records(), 0, "deleted keys leave nothing after compaction");
}

#[test]
fn reads_inside_a_write_see_its_changes_and_history_stays_put() {
    let mut store = Store::new();
    let mut w = store.write();
    w.put(b"a", Some(b"1"), None);
    drop(w);
    let mut w = store.write();
    assert_eq!(w.revision(), 3);
    w.put(b"a", Some(b"2"), None);
    w.put(b"b", Some(b"x"), None);
    let mut out = Vec::new();
    let r = w.store().range(b"a", b"c", &RangeOptions::default(), &mut out).unwrap();
    assert_eq!(r.rev, 3, "the request's own revision is current to its reads");
    let vals: Vec<&[u8]> = out.iter().map(|r| &r.value[..]).collect();
    assert_eq!(vals, [&b"2"[..], b"x"]);
    let mut out = Vec::new();
    w.store().range(b"a", b"c", &RangeOptions { rev: 2, ..Default::default() }, &mut out).unwrap();
    let vals: Vec<&[u8]> = out.iter().map(|r| &r.value[..]).collect();
    assert_eq!(vals, [&b"1"[..]], "the revision before the request is unchanged");
    let mut out = Vec::new();
    w.store().range(b"a", b"", &RangeOptions { rev: 3, ..Default::default() }, &mut out).unwrap();
    assert_eq!(out[0].value.as_ref(), b"2");
    drop(w);
    assert_eq!(store.current_revision(), 3);
    let mut out = Vec::new();
    assert!(store.range(b"a", b"", &RangeOptions { rev: 4, ..Default::default() }, &mut out).is_err());
}
