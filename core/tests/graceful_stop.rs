//! Graceful shutdown under load: eight writers put unique keys as fast as the server answers;
//! SIGTERM arrives in the middle. The server must exit cleanly within a bounded time (it drains:
//! GOAWAY, requests in flight finish, data is flushed), every put it acknowledged must be there
//! with its value after a restart, and a put that failed must have failed with an answer a client
//! can act on (the connection closing, or UNAVAILABLE) — never a success that is then lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, DRIVERS};
use etcd_client::{Client, GetOptions};

/// The drain must finish within this (etcd's own shutdown is bounded the same way).
const DRAIN_MAX: Duration = Duration::from_secs(10);

#[test]
fn sigterm_under_load_drains_and_loses_no_acknowledged_write() {
    for driver in DRIVERS {
        let mut srv = TestServer::start(driver, &[]);
        let url = srv.url();
        let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let acked2 = acked.clone();
        let load = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for w in 0..8 {
                    let url = url.clone();
                    let acked = acked2.clone();
                    tasks.push(tokio::spawn(async move {
                        let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(5));
                        let mut c = Client::connect([url], Some(opts)).await.unwrap();
                        let mut failures = Vec::new();
                        for n in 0.. {
                            let key = format!("g/{w}/{n:06}");
                            match c.put(key.clone(), key.clone(), None).await {
                                Ok(_) => acked.lock().unwrap().push(key),
                                Err(e) => {
                                    failures.push(e.to_string());
                                    break;
                                }
                            }
                        }
                        failures
                    }));
                }
                let mut failures = Vec::new();
                for t in tasks {
                    failures.extend(t.await.unwrap());
                }
                failures
            })
        });
        std::thread::sleep(Duration::from_millis(700));
        let took = srv.terminate();
        let failures = load.join().unwrap();
        eprintln!("[{driver}] drained in {took:?}; writers ended with: {failures:?}");
        assert!(took < DRAIN_MAX, "[{driver}] the drain took {took:?}");
        for f in &failures {
            let ok =
                f.contains("Unavailable") || f.contains("transport") || f.contains("connect") || f.contains("stopped");
            assert!(ok, "[{driver}] a put failed with an answer a client cannot act on: {f}");
        }
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() > 50, "[{driver}] only {} puts before the stop: no load", acked.len());
        srv.restart();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut c = Client::connect([srv.url()], None).await.unwrap();
            let got = c.get("g/", Some(GetOptions::new().with_prefix())).await.unwrap();
            let have: std::collections::BTreeMap<String, String> = got
                .kvs()
                .iter()
                .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string()))
                .collect();
            for k in &acked {
                assert_eq!(have.get(k), Some(k), "[{driver}] acknowledged put of {k} lost after SIGTERM");
            }
        });
        let log = srv.stop();
        assert!(!log.contains("panicked"), "[{driver}] {log}");
    }
}
