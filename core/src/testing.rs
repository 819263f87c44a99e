//! Helpers for in-process tests: a monoio runtime, a shard on a temporary directory, and a
//! hand-cranked shard loop (drive raft, flush, answer) for tests that run cores without their
//! background tasks.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::etcd::kv::Ids;
use crate::reactor::{Core, ShardLink};
use crate::shard::{MemberInfo, Replies, Shard, ShardConfig};

/// Runs a future on a fresh single-thread monoio runtime (epoll driver: works everywhere).
pub(crate) fn run<F: Future>(f: F) -> F::Output {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("runtime");
    rt.block_on(f)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty directory for a test's data.
pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("metastore-unit-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub(crate) fn member() -> MemberInfo {
    MemberInfo {
        ids: Ids { cluster_id: 1, member_id: 2, raft_term: 0 },
        name: "t".into(),
        peer_urls: vec![],
        client_urls: vec![],
    }
}

/// A shard on the real disk in `dir`; call inside `run`.
pub(crate) fn shard(dir: &std::path::Path) -> Shard {
    let cfg = ShardConfig {
        data_dir: dir.to_path_buf(),
        quota_bytes: 2 << 30,
        auto_compaction: None,
        snapshot_count: 100_000,
        slow_request: std::time::Duration::from_millis(100),
        log: Default::default(),
        tick_ms: 100,
        election_ticks: 10,
    };
    Shard::open(crate::disk::ReactorDisk, &cfg, member()).expect("open shard")
}

/// Cranks the shard loop by hand until raft has nothing left to persist or apply: flushes are
/// awaited, local answers delivered, remote ones pushed into their reply rings.
pub(crate) async fn pump(core: &Core) {
    let ShardLink::Local { shard, inbound } = &core.link else { return };
    loop {
        let mut replies = Replies::default();
        let flush = shard.borrow_mut().drive(&mut replies);
        if let Some(f) = flush {
            let done = f.run().await;
            shard.borrow_mut().flush_done(done, &mut replies);
        }
        let idle = replies.is_empty() && !shard.borrow().is_flushing() && !shard.borrow().raft().has_ready();
        for r in replies.local.drain(..) {
            core.deliver(r);
        }
        for (i, r) in replies.remote.drain(..) {
            let mut inbound = inbound.borrow_mut();
            assert!(inbound[i].1.try_send(r).is_ok());
        }
        if idle {
            return;
        }
    }
}
