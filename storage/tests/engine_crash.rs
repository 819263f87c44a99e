//! The MVCC store on the log, crashed at random moments and recovered from checkpoint + log
//! replay, against a model. A driver does what the raft layer does: each write request (put,
//! range delete, compaction) is appended as a log entry, the batch is flushed, and only then is
//! the request applied (its history records go to a later batch); now and then, once history is
//! durable, a checkpoint is written. After a power cut on the fault-injecting disk, recovery must
//! give a store equal to the model's replay of every acknowledged request (plus, at most, the
//! whole in-flight batch): same revision, same current keys, same reads at every uncompacted
//! revision. Thousands of seeds; `ENGINE_SEED=<n>` replays one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use metastore_storage::engine::{
    encode_checkpoint, load_checkpoint, restore_store, write_checkpoint, CheckpointMeta, DurableHistory, Reader,
};
use metastore_storage::fault::{now, FaultDisk, Rng};
use metastore_storage::log::{kind, Location, Log, LogConfig};
use metastore_storage::mvcc::{History, MemHistory, RangeOptions, Store};

const LOG_DIR: &str = "/data/member/log";
const CKPT_DIR: &str = "/data/member/checkpoint";

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>, Vec<u8>),
    Compact(i64),
}

fn encode(index: u64, op: &Op, b: &mut Vec<u8>) {
    b.extend_from_slice(&index.to_le_bytes());
    let (t, a, c): (u8, &[u8], &[u8]) = match op {
        Op::Put(k, v) => (1, k, v),
        Op::Delete(k, e) => (2, k, e),
        Op::Compact(r) => {
            b.push(3);
            b.extend_from_slice(&r.to_le_bytes());
            return;
        }
    };
    b.push(t);
    b.extend_from_slice(&(a.len() as u32).to_le_bytes());
    b.extend_from_slice(a);
    b.extend_from_slice(c);
}

fn decode(p: &[u8]) -> (u64, Op) {
    let mut r = Reader::new(p);
    let index = r.u64().unwrap();
    let op = match r.u8().unwrap() {
        1 => Op::Put(r.blob().unwrap().to_vec(), r.rest().to_vec()),
        2 => Op::Delete(r.blob().unwrap().to_vec(), r.rest().to_vec()),
        _ => Op::Compact(r.i64().unwrap()),
    };
    (index, op)
}

fn apply<H: History>(s: &mut Store<H>, op: &Op) {
    match op {
        Op::Put(k, v) => {
            s.write().put(k, Some(v), None);
        }
        Op::Delete(k, e) => {
            s.write().delete_range(k, e);
        }
        // A compaction that etcd would refuse is a no-op on replay too.
        Op::Compact(r) => {
            let _ = s.compact(*r);
        }
    }
}

fn cfg() -> LogConfig {
    LogConfig { segment_bytes: 2048 }
}

struct Node {
    log: Rc<RefCell<Log<FaultDisk>>>,
    store: Store<DurableHistory<FaultDisk>>,
    applied: u64,
    /// Locations of entries not covered by a checkpoint, by index.
    entries: std::collections::BTreeMap<u64, Location>,
}

fn open(disk: &FaultDisk) -> Node {
    let mut img = load_checkpoint(disk, Path::new(CKPT_DIR)).unwrap();
    let (applied, replay_from) =
        img.as_ref().map_or((0, Location::default()), |i| (i.meta.applied_index, i.meta.replay_from));
    let mut replay = Vec::new();
    let (log, _) = Log::open(disk.clone(), Path::new(LOG_DIR), cfg(), |loc, k, p| {
        if let Some(i) = img.as_mut() {
            i.visit_log(loc, k, p)?;
        }
        if k == kind::RAFT_ENTRY && loc >= replay_from {
            let (index, op) = decode(p);
            if index > applied {
                replay.push((index, loc, op));
            }
        }
        Ok(())
    })
    .unwrap();
    let log = Rc::new(RefCell::new(log));
    let store = match img.as_mut() {
        Some(i) => restore_store(i, log.clone()).unwrap(),
        None => Store::with_history(DurableHistory::new(log.clone())),
    };
    let mut node = Node { log, store, applied, entries: Default::default() };
    for (index, loc, op) in replay {
        assert_eq!(index, node.applied + 1, "entries replay in order without gaps");
        apply(&mut node.store, &op);
        node.applied = index;
        node.entries.insert(index, loc);
    }
    node
}

impl Node {
    fn flush(&mut self, disk: &FaultDisk, fail: Option<u64>) -> bool {
        let Some(f) = self.log.borrow_mut().start_flush().unwrap() else { return true };
        match fail {
            Some(0) => disk.fail_write_after(1, 10),
            Some(1) => disk.fail_sync_after(1),
            _ => {}
        }
        let done = now(f.run());
        let r = self.log.borrow_mut().finish_flush(done);
        match r {
            Ok(durable) => {
                self.store.history_mut().on_durable(durable);
                true
            }
            Err(_) => false,
        }
    }

    fn checkpoint(&mut self, disk: &FaultDisk) {
        assert_eq!(self.store.history().unflushed(), 0);
        let replay_from = self.entries.range(self.applied + 1..).next().map_or(self.log.borrow().tail(), |(_, l)| *l);
        let meta = CheckpointMeta { applied_index: self.applied, replay_from, sections: vec![(7, b"x".to_vec())] };
        let img = encode_checkpoint(&self.store, &meta);
        write_checkpoint(disk, Path::new(CKPT_DIR), self.applied, &img).unwrap();
        self.entries = self.entries.split_off(&(self.applied + 1));
    }
}

fn key(rng: &mut Rng) -> Vec<u8> {
    let k = [b"a", b"b", b"c", b"d"][rng.below(4) as usize];
    let mut v = k.to_vec();
    if rng.below(2) == 0 {
        v.push(b'0' + rng.below(3) as u8);
    }
    v
}

/// Same visible state: revision, and every key at every revision from the compaction on.
fn assert_same<H1: History, H2: History>(a: &Store<H1>, b: &Store<H2>, ctx: &str) {
    assert_eq!(a.current_revision(), b.current_revision(), "{ctx}: revision");
    assert_eq!(a.compacted_revision(), b.compacted_revision(), "{ctx}: compacted");
    let from = a.compacted_revision().max(1);
    for rev in from..=a.current_revision() {
        let o = RangeOptions { rev, ..Default::default() };
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.range_each(b"\0", b"\0", &o, |r| x.push((r.key.to_vec(), r.value.to_vec(), r.version, r.create_revision)))
            .unwrap();
        b.range_each(b"\0", b"\0", &o, |r| y.push((r.key.to_vec(), r.value.to_vec(), r.version, r.create_revision)))
            .unwrap();
        assert_eq!(x, y, "{ctx}: keys at revision {rev}");
    }
}

fn run(seed: u64) -> &'static str {
    let mut rng = Rng::new(seed);
    let disk = FaultDisk::new();
    let mut node = open(&disk);
    let mut acked: Vec<Op> = Vec::new();
    let mut in_flight: Vec<Op> = Vec::new();
    let mut next_index = 1u64;
    let mut failed = false;
    let mut checkpoints = 0;
    for _ in 0..(10 + rng.below(120)) {
        if failed {
            break;
        }
        // One batch of 1-4 requests: append as entries, flush, then apply.
        let n = 1 + rng.below(4);
        let mut batch = Vec::new();
        for _ in 0..n {
            let op = match rng.below(10) {
                0..=5 => Op::Put(key(&mut rng), vec![b'v'; rng.below(40) as usize]),
                6 | 7 => {
                    let k = key(&mut rng);
                    let e = if rng.below(2) == 0 { Vec::new() } else { key(&mut rng) };
                    Op::Delete(k, e)
                }
                _ => Op::Compact(1 + rng.below(node.store.current_revision() as u64 + 1) as i64),
            };
            let index = next_index;
            next_index += 1;
            let loc = node.log.borrow_mut().append(kind::RAFT_ENTRY, |b| encode(index, &op, b)).unwrap();
            node.entries.insert(index, loc);
            batch.push(op);
        }
        if rng.below(8) == 0 {
            // Power goes with this batch written but not synced.
            in_flight = batch;
            if let Some(f) = node.log.borrow_mut().start_flush().unwrap() {
                now(f.write_without_sync());
            }
            break;
        }
        let fail = if rng.below(40) == 0 { Some(rng.below(2)) } else { None };
        if !node.flush(&disk, fail) {
            failed = true;
            in_flight = batch;
            break;
        }
        for op in &batch {
            apply(&mut node.store, op);
            node.applied += 1;
        }
        acked.extend(batch);
        if rng.below(10) == 0 {
            // Reads while running: recent history from memory, older from the log.
            let mut model = Store::with_history(MemHistory::default());
            for op in &acked {
                apply(&mut model, op);
            }
            assert_same(&model, &node.store, &format!("seed {seed} (live)"));
        }
        if rng.below(6) == 0 && node.flush(&disk, None) {
            node.checkpoint(&disk);
            checkpoints += 1;
        }
    }
    let after = if rng.below(4) == 0 { disk.crash_clean() } else { disk.crash(&mut Rng::new(seed ^ 77)) };
    let recovered = open(&after);
    let mut model = Store::with_history(MemHistory::default());
    for op in &acked {
        apply(&mut model, op);
    }
    let ctx = format!("seed {seed}");
    let whole = if recovered.applied as usize == acked.len() {
        assert_same(&model, &recovered.store, &ctx);
        false
    } else {
        assert_eq!(recovered.applied as usize, acked.len() + in_flight.len(), "{ctx}: only whole batches");
        for op in &in_flight {
            apply(&mut model, op);
        }
        assert_same(&model, &recovered.store, &ctx);
        true
    };
    // Recovery again from the recovered disk (its replayed history now in the log too).
    let mut node2 = recovered;
    node2.flush(&after, None);
    let again = open(&after.crash_clean());
    assert_same(&model, &again.store, &format!("{ctx} (second recovery)"));
    match (failed, whole, checkpoints > 0) {
        (true, _, _) => "a write or sync failed",
        (_, true, _) => "unsynced batch survived whole",
        (_, _, true) => "recovered from a checkpoint",
        _ => "recovered from the log alone",
    }
}

#[test]
fn acknowledged_writes_survive_crashes() {
    let mut outcomes = std::collections::BTreeMap::new();
    let seeds: Vec<u64> = match std::env::var("ENGINE_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => (1..=1500).collect(),
    };
    let all = seeds.len() > 1;
    for seed in seeds {
        *outcomes.entry(run(seed)).or_insert(0) += 1;
    }
    eprintln!("{outcomes:?}");
    if all {
        assert_eq!(outcomes.len(), 4, "every kind of ending happened: {outcomes:?}");
    }
}
