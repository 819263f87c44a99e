//! The slow-request log: with `--experimental-warning-apply-duration` at its smallest, every
//! request is slow, and the server logs one warning per request with its method, the start of
//! its key and the stage that took the time; with the default (100 ms) a quick request is not
//! logged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;

fn traffic(url: String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([url], None).await.unwrap();
        c.put("slow/key-0123456789-0123456789", "v", None).await.unwrap();
        c.get("slow/key-0123456789-0123456789", None).await.unwrap();
    });
}

#[test]
fn slow_requests_are_logged_with_method_key_and_stage() {
    let srv = TestServer::start("uring", &["--experimental-warning-apply-duration", "1ns"]);
    traffic(srv.url());
    let log = srv.stop();
    let slow: Vec<&str> = log.lines().filter(|l| l.contains("slow request")).collect();
    let put = slow.iter().find(|l| l.contains("method=\"Put\"")).unwrap_or_else(|| panic!("no slow Put in:\n{log}"));
    assert!(put.contains("key_prefix=slow/key-0123456789-0123 "), "the key, cut to 24 bytes: {put}");
    assert!(put.contains("stage=\"write: raft proposal, fsync, commit and apply\""), "{put}");
    assert!(put.contains("took_ms="), "{put}");
    let range =
        slow.iter().find(|l| l.contains("method=\"Range\"")).unwrap_or_else(|| panic!("no slow Range in:\n{log}"));
    assert!(range.contains("stage=\"read on the shard\""), "{range}");

    let srv = TestServer::start("uring", &[]);
    traffic(srv.url());
    let log = srv.stop();
    assert!(!log.contains("slow request"), "a quick request was logged as slow:\n{log}");
}
