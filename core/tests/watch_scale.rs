//! Watch at scale on the real server: 10,000 watchers on 100 streams over 20 connections (the
//! `etcd-client` crate), each on a key of its own, plus one stream (a raw HTTP/2 peer) whose
//! client never reads and whose watchers match every key with large values. Every watcher that
//! reads gets exactly its event; the stalled one costs the server a bounded buffer (it falls
//! back to history), so its RSS stays under 512 MiB; and once the writes are done the server
//! still serves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::raw::RawConn;
use common::{TestServer, DRIVERS};
use etcd_client::{Client, WatchOptions};
use metastore_proto::etcdserverpb as pb;
use prost::Message;

const CONNS: usize = 20;
const STREAMS_PER_CONN: usize = 5;
const WATCHERS_PER_STREAM: usize = 100;
const WATCHERS: usize = CONNS * STREAMS_PER_CONN * WATCHERS_PER_STREAM;
const RSS_MAX_KIB: u64 = 512 << 10;

fn key(i: usize) -> String {
    format!("s/{i:05}")
}

#[test]
fn ten_thousand_watchers_and_one_stalled_stream() {
    // One driver: the fan-out is the same code on both, and this is the suite's heaviest test.
    let driver = DRIVERS[0];
    let srv = TestServer::start(driver, &[]);
    // The stalled stream: ten watchers over every key, never read.
    let mut stalled = RawConn::handshake(srv.addr);
    stalled.grpc_call(1, "/etcdserverpb.Watch/Watch", false);
    for _ in 0..10 {
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: b"s/".to_vec(),
                range_end: b"s0".to_vec(),
                ..Default::default()
            })),
        };
        stalled.data(1, &RawConn::grpc_message(&create.encode_to_vec()), false);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let url = srv.url();
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for conn in 0..CONNS {
            let client = Client::connect([url.clone()], None).await.unwrap();
            for s in 0..STREAMS_PER_CONN {
                let mut client = client.clone();
                let first = (conn * STREAMS_PER_CONN + s) * WATCHERS_PER_STREAM;
                // Each stream: create its watchers, wait for every created, then for every event.
                let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
                tasks.push((
                    ready_rx,
                    tokio::spawn(async move {
                        let mut w = client.watch(key(first), None).await.unwrap();
                        for i in first + 1..first + WATCHERS_PER_STREAM {
                            w.watch(key(i), Some(WatchOptions::new())).await.unwrap();
                        }
                        let mut created = 0;
                        while created < WATCHERS_PER_STREAM {
                            let r = w.message().await.unwrap().unwrap();
                            assert!(r.created() && !r.canceled(), "{r:?}");
                            created += 1;
                        }
                        ready_tx.send(()).unwrap();
                        let mut got = [false; WATCHERS_PER_STREAM];
                        let mut n = 0;
                        while n < WATCHERS_PER_STREAM {
                            let r = tokio::time::timeout(Duration::from_secs(60), w.message())
                                .await
                                .expect("a watcher's event did not come")
                                .unwrap()
                                .unwrap();
                            for e in r.events() {
                                let k = e.kv().unwrap().key_str().unwrap();
                                let i: usize = k[2..].parse().unwrap();
                                assert_eq!(i - first, r.watch_id() as usize, "watcher {} got {k}", r.watch_id());
                                assert!(!got[i - first], "{k} delivered twice");
                                got[i - first] = true;
                                n += 1;
                            }
                        }
                        n
                    }),
                ));
            }
        }
        let mut running = Vec::new();
        for (ready, task) in tasks {
            ready.await.expect("a stream failed to create its watchers");
            running.push(task);
        }
        // Every key once, with a value big enough that the stalled stream's share (ten copies
        // of everything) is far beyond what the server buffers for one connection.
        let value = "v".repeat(2000);
        let mut writers = Vec::new();
        for wi in 0..4 {
            let mut c = Client::connect([url.clone()], None).await.unwrap();
            let value = value.clone();
            writers.push(tokio::spawn(async move {
                for i in (wi..WATCHERS).step_by(4) {
                    c.put(key(i), value.clone(), None).await.unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let mut total = 0;
        for t in running {
            total += t.await.unwrap();
        }
        assert_eq!(total, WATCHERS, "every watcher got its event");
    });
    drop(rt);
    let rss = srv.rss_kib();
    eprintln!("[{driver}] {WATCHERS} watchers + 1 stalled stream: server RSS {} MiB", rss >> 10);
    assert!(rss < RSS_MAX_KIB, "[{driver}] RSS {rss} KiB with a stalled watcher");
    assert!(common::http_get(srv.addr, "/metrics").is_ok(), "the server still serves");
    drop(stalled);
    let log = srv.stop();
    assert!(!log.contains("panicked"), "[{driver}] {log}");
}
