//! Micro-benchmarks of the log's group commit: append a batch of records (each framed with its
//! CRC-32C), then flush it (commit record, one write) and sync it (one `fdatasync`), then record
//! the outcome — the work behind every acknowledged write. Batches of 1, 16 and 128 records of
//! 300 bytes (about a put's raft entry with an 8-byte key and a 256-byte value).
//!
//! - `std_disk`: through `StdDisk` (`pwrite` + `fdatasync`) in a fresh directory under
//!   `$METASTORE_BENCH_DIR`, else the system's temporary directory (put it on the disk you want
//!   to measure; the directory is removed afterwards). Mostly the disk's sync latency.
//! - `fault_disk`: through the in-memory `FaultDisk`, no system call: the CPU cost of framing,
//!   checksums and book-keeping (plus the fault model's own copies of the bytes), which the
//!   difference from `std_disk` separates from the cost of the sync.
//!
//! Run: `cargo bench -p metastore-storage --bench log`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use divan::counter::{BytesCount, ItemsCount};
use divan::{black_box, Bencher};
use metastore_storage::disk::{Disk, StdDisk};
use metastore_storage::fault::{self, FaultDisk};
use metastore_storage::log::{kind, Log, LogConfig};

fn main() {
    // 500 samples rather than divan's 100: steadier medians on a shared machine
    // (`-- --sample-count N` overrides it).
    divan::Divan::default().sample_count(500).config_with_args().main();
}

const BATCHES: [usize; 3] = [1, 16, 128];
const RECORD_BYTES: usize = 300;

fn open<D: Disk>(disk: D, dir: &Path) -> Log<D> {
    let (log, recovered) = Log::open(disk, dir, LogConfig::default(), |_, _, _| Ok(())).expect("log opens");
    assert_eq!(recovered.records, 0, "a fresh directory");
    log
}

/// One group commit of `batch` records; returns where the durable log now ends.
fn commit_batch<D: Disk>(log: &mut Log<D>, batch: usize, payload: &[u8]) -> u64 {
    for _ in 0..batch {
        log.append(kind::RAFT_ENTRY, |b| b.extend_from_slice(payload)).expect("append");
    }
    let flush = log.start_flush().expect("flush starts").expect("records are pending");
    let done = fault::now(flush.run());
    log.finish_flush(done).expect("write and sync succeed").offset
}

fn bench_disk<D: Disk>(b: Bencher, log: &mut Log<D>, batch: usize) {
    let payload: Vec<u8> = (0..RECORD_BYTES).map(|i| i as u8).collect();
    // The first batch creates the segment file: outside the timed part.
    commit_batch(log, 1, &payload);
    b.counter(ItemsCount::new(batch))
        .counter(BytesCount::new(batch * RECORD_BYTES))
        .bench_local(|| commit_batch(log, batch, black_box(&payload)));
}

/// A directory of its own for one benchmark, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let base = std::env::var_os("METASTORE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = base.join(format!("metastore-bench-log-{}-{tag}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the benchmark directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[divan::bench(args = BATCHES)]
fn std_disk(b: Bencher, batch: usize) {
    let dir = TempDir::new(&batch.to_string());
    let mut log = open(StdDisk, &dir.0);
    bench_disk(b, &mut log, batch);
}

#[divan::bench(args = BATCHES)]
fn fault_disk(b: Bencher, batch: usize) {
    let mut log = open(FaultDisk::new(), Path::new("/bench/log"));
    bench_disk(b, &mut log, batch);
}
