//! A lone client's put costs one fdatasync, as etcd's does: the raft entry is synced; what
//! applying it appends (the history record, the hard state's new commit index) goes out with the
//! next synced batch instead of a sync of its own (etcd's raft does not sync a commit-only hard
//! state either). Measured from the server's own counters (`metastore_writes_applied_total` and
//! the fsync histogram's count) over 300 sequential puts through the `etcd-client` crate; then a
//! SIGKILL and a restart must still find every put, with its history readable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, DRIVERS};
use etcd_client::{Client, GetOptions};

const PUTS: usize = 300;

fn puts(url: String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = Client::connect([url], None).await.unwrap();
        for i in 0..PUTS {
            c.put(format!("k{}", i % 10), format!("v{i}"), None).await.unwrap();
        }
    });
}

fn check_after_restart(url: String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = Client::connect([url], None).await.unwrap();
        let r = c.get("k", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(r.kvs().len(), 10);
        let last = r.kvs().iter().map(|kv| kv.mod_revision()).max().unwrap();
        // Every revision's history survived: the first put is still readable at its revision.
        let first = last - PUTS as i64 + 1;
        let h = c.get("k0", Some(GetOptions::new().with_revision(first))).await.unwrap();
        assert_eq!(h.kvs()[0].value_str().unwrap(), "v0");
    });
}

#[test]
fn a_lone_clients_put_costs_one_fsync() {
    for driver in DRIVERS {
        let mut srv = TestServer::start(driver, &[]);
        let writes0 = srv.metric_sum("metastore_writes_applied_total");
        let syncs0 = srv.metric_sum("etcd_disk_wal_fsync_duration_seconds_count");
        puts(srv.url());
        let writes = srv.metric_sum("metastore_writes_applied_total") - writes0;
        let syncs = srv.metric_sum("etcd_disk_wal_fsync_duration_seconds_count") - syncs0;
        eprintln!("[{driver}] {writes} writes, {syncs} fsyncs");
        assert_eq!(writes, PUTS as f64, "[{driver}]");
        // One per put, give or take the round in which the last history is written out.
        assert!(syncs <= writes + 2.0, "[{driver}] {syncs} fsyncs for {writes} sequential puts: more than one each");
        srv.kill9();
        srv.restart();
        check_after_restart(srv.url());
        srv.stop();
    }
}
