//! The log under crashes and disk faults, against a model of what was acknowledged. Random
//! appends and flushes (small segments, so batches rotate often) run on the fault-injecting
//! disk; at random moments the disk "loses power" (unsynced writes lost or torn at any byte,
//! unsynced directory changes lost), a write or a sync fails, or a bit flips at rest. Reopening
//! must then give back exactly every acknowledged record, in order, plus at most the one batch
//! that was in flight, whole — never part of a batch — and a flipped bit in acknowledged data must
//! stop recovery with the file and offset. Thousands of seeded cases; `LOG_SEED=<n>` replays one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use metastore_storage::fault::{now, FaultDisk, Rng};
use metastore_storage::log::{kind, Location, Log, LogConfig, LogError, RECORD_HEADER_BYTES};

const DIR: &str = "/data/log";

fn cfg() -> LogConfig {
    LogConfig { segment_bytes: 4096 }
}

fn open(disk: &FaultDisk) -> Result<(Log<FaultDisk>, Vec<Vec<u8>>), LogError> {
    let mut got = Vec::new();
    let (log, _) = Log::open(disk.clone(), Path::new(DIR), cfg(), |_, k, p| {
        assert!(k == kind::HISTORY || k == kind::RAFT_ENTRY, "only what we wrote");
        got.push(p.to_vec());
        Ok(())
    })?;
    Ok((log, got))
}

fn payload(rng: &mut Rng, n: u64) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1 => 500 + rng.below(3000) as usize,
        _ => rng.below(60) as usize,
    };
    let mut p = n.to_le_bytes().to_vec();
    p.extend((0..len).map(|i| (i as u64 ^ n) as u8));
    p
}

/// One case: returns how it ended, for coverage counting.
fn run(seed: u64) -> &'static str {
    let mut rng = Rng::new(seed);
    let disk = FaultDisk::new();
    let (mut log, got) = open(&disk).unwrap();
    assert!(got.is_empty());
    let mut acked: Vec<Vec<u8>> = Vec::new();
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut in_flight: Vec<Vec<u8>> = Vec::new();
    let mut flight = None;
    let mut n = 0u64;
    let mut failed = false;
    let steps = 20 + rng.below(200);
    for _ in 0..steps {
        match rng.below(10) {
            0..=5 if !failed => {
                let p = payload(&mut rng, n);
                n += 1;
                let k = if rng.below(2) == 0 { kind::HISTORY } else { kind::RAFT_ENTRY };
                let loc = log.append(k, |b| b.extend_from_slice(&p)).unwrap();
                assert!(loc >= log.durable());
                pending.push(p);
            }
            6 | 7 if !failed && flight.is_none() => {
                if let Some(f) = log.start_flush().unwrap() {
                    in_flight = std::mem::take(&mut pending);
                    flight = Some(f);
                }
            }
            8 if flight.is_some() => {
                match rng.below(60) {
                    0 => disk.fail_write_after(1, rng.below(200) as usize),
                    1 => disk.fail_sync_after(1),
                    _ => {}
                }
                let done = now(flight.take().unwrap().run());
                match log.finish_flush(done) {
                    Ok(_) => acked.append(&mut in_flight),
                    Err(LogError::Failed(_)) => {
                        failed = true;
                        assert!(log.append(kind::HISTORY, |_| {}).is_err(), "a failed log refuses appends");
                    }
                    Err(e) => panic!("seed {seed}: {e}"),
                }
            }
            _ => {}
        }
    }
    // A batch may have been written but not synced when the power went.
    if let Some(f) = flight.take() {
        if rng.below(2) == 0 {
            now(f.write_without_sync());
        }
    }
    // Power cut (or a clean crash, or a bit flipped in acknowledged data).
    let outcome = rng.below(10);
    let after = if outcome == 0 { disk.crash_clean() } else { disk.crash(&mut Rng::new(seed ^ 0x5eed)) };
    if outcome == 1 && !acked.is_empty() {
        // Flip a bit inside an acknowledged record's payload (not its batch's last commit, which
        // could be the torn tail's neighbour): recovery must refuse, naming file and offset.
        let files = after.files();
        let target = &files[0];
        let start = 32 + RECORD_HEADER_BYTES + 8;
        let len = after.file_len(target).unwrap();
        if len > start + 1 && acked[0].len() > 8 {
            after.flip_bit(target, start, (seed % 8) as u8);
            match open(&after) {
                Err(LogError::Corrupt { file, offset, .. }) => {
                    assert_eq!(&file, target, "seed {seed}");
                    assert_eq!(offset, 32, "seed {seed}: the first record is the bad one");
                    return "corruption detected";
                }
                Err(e) => panic!("seed {seed}: unexpected error {e}"),
                Ok((_, got)) => {
                    // The flipped record belonged to the last, unsynced batch in a torn tail.
                    assert!(got.len() < acked.len() + in_flight.len() + 1, "seed {seed}");
                    return "flip inside the torn tail";
                }
            }
        }
    }
    let (mut log2, got) = open(&after).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(got.len() >= acked.len(), "seed {seed}: lost acknowledged records ({} < {})", got.len(), acked.len());
    assert_eq!(&got[..acked.len()], &acked[..], "seed {seed}: acknowledged records differ");
    let extra = &got[acked.len()..];
    assert!(
        extra.is_empty() || extra == &in_flight[..],
        "seed {seed}: beyond the acknowledged records only the whole in-flight batch may survive"
    );
    // The reopened log keeps working and its new records survive the next crash.
    let p = b"after".to_vec();
    log2.append(kind::HISTORY, |b| b.extend_from_slice(&p)).unwrap();
    let f = log2.start_flush().unwrap().unwrap();
    let end: Location = log2.finish_flush(now(f.run())).unwrap();
    assert_eq!(log2.durable(), end);
    let (_, again) = open(&after.crash(&mut Rng::new(seed))).unwrap();
    assert_eq!(again.last(), Some(&p), "seed {seed}");
    assert_eq!(again.len(), got.len() + 1, "seed {seed}");
    if failed {
        "write or sync failed"
    } else if extra.is_empty() {
        "in-flight batch lost"
    } else {
        "in-flight batch survived"
    }
}

#[test]
fn acknowledged_records_survive_every_crash() {
    let mut outcomes = std::collections::BTreeMap::new();
    let fresh = std::env::var("LOG_SEED").ok().and_then(|s| s.parse().ok());
    let seeds: Vec<u64> = match fresh {
        Some(s) => vec![s],
        None => (1..=3000).collect(),
    };
    for seed in seeds {
        *outcomes.entry(run(seed)).or_insert(0) += 1;
    }
    eprintln!("{outcomes:?}");
    if fresh.is_none() {
        for o in ["corruption detected", "write or sync failed", "in-flight batch lost", "in-flight batch survived"] {
            assert!(outcomes.get(o).copied().unwrap_or(0) > 0, "no case ended with {o}: {outcomes:?}");
        }
    }
}

#[test]
fn a_torn_tail_is_cut_and_reported() {
    let disk = FaultDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    log.append(kind::HISTORY, |b| b.extend_from_slice(b"one")).unwrap();
    let f = log.start_flush().unwrap().unwrap();
    log.finish_flush(now(f.run())).unwrap();
    log.append(kind::HISTORY, |b| b.extend_from_slice(&[7u8; 300])).unwrap();
    let f = log.start_flush().unwrap().unwrap();
    now(f.write_without_sync());
    // Keep a torn prefix of the second batch: find a crash that does.
    for seed in 0..100 {
        let after = disk.crash(&mut Rng::new(seed));
        let mut count = 0;
        let (_, rec) = Log::open(after.clone(), Path::new(DIR), cfg(), |_, _, _| {
            count += 1;
            Ok(())
        })
        .unwrap();
        if let Some((loc, bytes)) = rec.torn_tail {
            assert_eq!(count, 1);
            assert!(bytes > 0);
            assert!(loc.offset > 32);
            // Reopening again finds a clean log.
            let (_, rec2) = Log::open(after, Path::new(DIR), cfg(), |_, _, _| Ok(())).unwrap();
            assert!(rec2.torn_tail.is_none());
            return;
        }
    }
    panic!("no crash left a torn tail");
}

#[test]
fn records_read_back_and_damage_is_named() {
    let disk = FaultDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    let a = log.append(kind::HISTORY, |b| b.extend_from_slice(b"alpha")).unwrap();
    let b = log.append(kind::RAFT_ENTRY, |b| b.extend_from_slice(b"beta")).unwrap();
    let f = log.start_flush().unwrap().unwrap();
    log.finish_flush(now(f.run())).unwrap();
    assert_eq!(log.read(a).unwrap(), (kind::HISTORY, b"alpha".to_vec()));
    assert_eq!(log.read(b).unwrap(), (kind::RAFT_ENTRY, b"beta".to_vec()));
    let file = disk.files()[0].clone();
    disk.flip_bit(&file, (b.offset + 10) as usize, 0);
    match log.read(b) {
        Err(LogError::Corrupt { offset, .. }) => assert_eq!(offset, b.offset),
        other => panic!("{other:?}"),
    }
    let msg = match open(&disk) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a flipped bit in a sealed batch must stop recovery"),
    };
    assert!(msg.contains("0000000000000001.seg") && msg.contains(&b.offset.to_string()), "{msg}");
    assert!(msg.contains("metastore repair"), "the error says the way out: {msg}");
}

#[test]
fn repair_cuts_at_the_first_bad_record_and_the_log_opens_again() {
    use metastore_storage::log::repair;
    let disk = FaultDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    let mut locs = Vec::new();
    for i in 0..40u8 {
        locs.push(log.append(kind::HISTORY, |b| b.extend_from_slice(&[i; 300])).unwrap());
        let f = log.start_flush().unwrap().unwrap();
        log.finish_flush(now(f.run())).unwrap();
    }
    assert!(disk.files().len() > 2, "several segments");
    // Damage a record in the middle of the second segment.
    let bad = locs.iter().find(|l| l.segment == 2).copied().unwrap();
    let file = disk.files().into_iter().find(|p| p.ends_with("0000000000000002.seg")).unwrap();
    disk.flip_bit(&file, bad.offset as usize + 20, 1);
    assert!(matches!(open(&disk), Err(LogError::Corrupt { .. })));
    let actions = repair(disk.clone(), Path::new(DIR)).unwrap();
    assert!(actions[0].contains("0000000000000002.seg") && actions[0].contains(&bad.offset.to_string()), "{actions:?}");
    assert!(actions.iter().any(|a| a.contains("removed 0000000000000003.seg")), "{actions:?}");
    let (_, got) = open(&disk).unwrap();
    let before_cut = locs.iter().filter(|l| **l < bad).count();
    assert_eq!(got.len(), before_cut, "everything before the bad record is kept");
    assert!(repair(disk.clone(), Path::new(DIR)).unwrap().is_empty(), "a second repair finds nothing");
}

#[test]
fn lazy_records_wait_for_a_batch_that_must_be_synced() {
    let disk = FaultDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    assert!(!log.needs_sync());
    let h = log.append_lazy(kind::HISTORY, |b| b.extend_from_slice(b"history")).unwrap();
    assert!(!log.needs_sync(), "a lazy record alone does not ask for a sync");
    let e = log.append(kind::RAFT_ENTRY, |b| b.extend_from_slice(b"entry")).unwrap();
    assert!(log.needs_sync());
    let syncs = disk.syncs();
    let f = log.start_flush().unwrap().unwrap();
    assert!(!log.needs_sync(), "the flush took both");
    log.finish_flush(now(f.run())).unwrap();
    assert_eq!(disk.syncs() - syncs, 1, "one sync carried the lazy record and the entry");
    assert_eq!(log.read(h).unwrap(), (kind::HISTORY, b"history".to_vec()));
    assert_eq!(log.read(e).unwrap(), (kind::RAFT_ENTRY, b"entry".to_vec()));
    let (_, got) = open(&disk).unwrap();
    assert_eq!(got, vec![b"history".to_vec(), b"entry".to_vec()]);
}
