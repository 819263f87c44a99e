//! Compaction really returns disk space, and a snapshot taken by the official tool restores into
//! a new member that holds every key. A real `metastore` process is written to by the Rust
//! `etcd-client` crate (100 MB of history over 20 MB of live data), compacted and defragmented by
//! etcdctl 3.4.23 (`compaction --physical`, `defrag`), and the data directory's allocated blocks
//! are measured before and after; `etcdctl snapshot save` then fetches a snapshot (etcdctl checks
//! its SHA-256 trailer), `metastore snapshot restore` makes a new data dir of it, and a server
//! started there must answer every key with the same value, revisions and version.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::etcd::INSTALL;
use common::TestServer;
use etcd_client::{Client, GetOptions};

const ETCDCTL: &str = "/usr/bin/etcdctl";
const KEYS: usize = 40;
const VERSIONS: usize = 5;
const VALUE_BYTES: usize = 500_000;

/// Runs etcdctl (API v3) against `url`; panics with its output unless it succeeds.
fn etcdctl(url: &str, args: &[&str]) -> String {
    let out = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", url, "--dial-timeout", "5s", "--command-timeout", "60s"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {ETCDCTL} ({e}): {INSTALL}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "etcdctl {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Bytes of disk the files under `dir` occupy (allocated blocks, not apparent length).
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() { disk_bytes(&e.path()) } else { m.blocks() * 512 };
    }
    total
}

fn value(key: usize, version: usize) -> Vec<u8> {
    let mut v = vec![b'a' + (key % 26) as u8; VALUE_BYTES];
    v[..8].copy_from_slice(&(version as u64).to_be_bytes());
    v
}

/// A key, its value, create and mod revision, version.
type Row = (Vec<u8>, Vec<u8>, i64, i64, i64);

/// Every key with its value and revisions (the response header's revision too).
fn everything(url: &str) -> (i64, Vec<Row>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Pages of a few keys at one revision: a client takes at most 4 MiB per message.
        let mut c = Client::connect([url], None).await.unwrap();
        let mut rows: Vec<Row> = Vec::new();
        let mut rev = 0;
        let mut from = Vec::new();
        loop {
            let mut opts = GetOptions::new().with_from_key().with_limit(4);
            if rev != 0 {
                opts = opts.with_revision(rev);
            }
            let r = c.get(from.clone(), Some(opts)).await.unwrap();
            if rev == 0 {
                rev = r.header().unwrap().revision();
            }
            rows.extend(r.kvs().iter().map(|kv| {
                (kv.key().to_vec(), kv.value().to_vec(), kv.create_revision(), kv.mod_revision(), kv.version())
            }));
            let Some(last) = rows.last() else { break };
            if !r.more() {
                break;
            }
            from = [&last.0[..], &[0]].concat();
        }
        (rev, rows)
    })
}

#[test]
fn compaction_and_defrag_shrink_the_data_dir_and_snapshots_restore() {
    let mut srv = TestServer::start("uring", &[]);
    let url = srv.url();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(30));
        let mut c = Client::connect([url.as_str()], Some(opts)).await.unwrap();
        for version in 0..VERSIONS {
            for key in 0..KEYS {
                c.put(format!("k/{key:03}"), value(key, version), None).await.unwrap();
            }
        }
        // Small keys too, some deleted: tombstones must survive compaction as absence.
        for i in 0..500 {
            c.put(format!("s/{i:04}"), format!("v{i}"), None).await.unwrap();
        }
        c.delete("s/00", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    });
    drop(rt);
    let data = srv.dir.join("data");
    let live = (KEYS * VALUE_BYTES) as u64;
    let written = (KEYS * VERSIONS * VALUE_BYTES) as u64;
    let before = disk_bytes(&data);
    assert!(before >= written, "{before} bytes on disk for {written} bytes written");

    let (rev, kvs) = everything(&url);
    etcdctl(&url, &["compaction", &rev.to_string(), "--physical"]);
    let out = etcdctl(&url, &["defrag"]);
    assert!(out.contains("Finished defragmenting etcd member"), "{out}");
    let after = disk_bytes(&data);
    eprintln!("data dir: {before} bytes before, {after} after compaction + defrag; {live} live value bytes");
    // The live records once in the log, the checkpoint only refers to them (FORMAT.md), plus
    // the preallocation step.
    assert!(
        after <= live * 3 / 2 + (8 << 20),
        "{after} bytes on disk after compaction and defrag for {live} live bytes"
    );
    assert_same("after compaction and defrag", (rev, &kvs), everything(&url));
    // The checkpoint defrag left refers to the relocated records: a start reads them back.
    srv.kill9();
    srv.restart();
    let url = srv.url();
    assert_same("after a restart", (rev, &kvs), everything(&url));

    let snap_dir = common::temp_dir("snap");
    let file = snap_dir.join("snap.db");
    let out = etcdctl(&url, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(out.contains("Snapshot saved at"), "{out}");
    let log = srv.stop();
    assert!(!log.contains("panicked"), "{log}");

    let restored = common::temp_dir("restored");
    let out = Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(restored.join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let srv = TestServer::start_in(restored, "epoll", &[]);
    assert_eq!(kvs.len(), KEYS + 500 - 100);
    assert_same("the restored member", (rev, &kvs), everything(&srv.url()));
    let log = srv.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// Compares two readings key by key, naming the first difference (not printing 500 kB values).
fn assert_same(what: &str, want: (i64, &[Row]), got: (i64, Vec<Row>)) {
    assert_eq!(got.0, want.0, "{what}: header revision");
    assert_eq!(got.1.len(), want.1.len(), "{what}: key count");
    for (w, g) in want.1.iter().zip(&got.1) {
        let key = String::from_utf8_lossy(&w.0);
        assert_eq!(g.0, w.0, "{what}: keys differ at {key}");
        assert!(g.1 == w.1, "{what}: the value of {key} differs");
        assert_eq!((g.2, g.3, g.4), (w.2, w.3, w.4), "{what}: revisions/version of {key}");
    }
}
