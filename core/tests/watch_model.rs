//! A property test of Watch on the real server: seeded random interleavings of writes (puts,
//! deletes, two-key txns), compactions, watch creates (single keys and prefixes, from now, from a
//! past revision, from before the last compaction) and cancels, and SIGKILL restarts. A model
//! records every change the writes made (their revisions come back in the answers). Every
//! watcher must see exactly the model's events of its range from its start revision, in
//! revision order, without gaps or duplicates — or, if it started before the compaction point,
//! a created response and then a cancel carrying the compaction revision, nothing else. A
//! watcher canceled (or cut by a restart) must have seen a prefix of that. Failures print the
//! seed; `WATCH_MODEL_SEED=n` replays one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::rng::Rng;
use common::{TestServer, DRIVERS};
use etcd_client::{Client, CompactionOptions, EventType, Txn, TxnOp, WatchOptions};

/// One change as a watcher sees it: revision, key, PUT value or None for DELETE.
type Change = (i64, String, Option<String>);

#[derive(Debug, Default)]
struct Seen {
    created_rev: Option<i64>,
    compact: Option<i64>,
    events: Vec<Change>,
    /// Anything else (a cancel without compaction, an error): recorded to fail the check.
    other: Vec<String>,
}

struct Watcher {
    prefix: bool,
    key: String,
    start: i64,
    seen: Arc<Mutex<Seen>>,
    /// Ended by a cancel or a restart: only a prefix of its events is owed.
    ended: bool,
    task: tokio::task::JoinHandle<()>,
    /// The request side: dropping it ends the stream.
    stream: Option<etcd_client::WatchRequestSender>,
}

const KEYS: [&str; 6] = ["a/1", "a/2", "a/3", "b/1", "b/2", "c"];

async fn start_watch(c: &mut Client, key: &str, prefix: bool, start: i64) -> Watcher {
    let mut opts = WatchOptions::new().with_start_revision(start);
    if prefix {
        opts = opts.with_prefix();
    }
    let mut stream = c.watch(key, Some(opts)).await.unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    // The first answer (created) is read here, so the watcher exists before the next step.
    let first = stream.message().await.unwrap().unwrap();
    {
        let mut s = seen.lock().unwrap();
        assert!(first.created(), "{first:?}");
        s.created_rev = first.header().map(|h| h.revision());
    }
    let (sender, mut responses) = stream.split();
    let s2 = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(r)) = responses.message().await {
            let mut s = s2.lock().unwrap();
            if r.compact_revision() != 0 {
                s.compact = Some(r.compact_revision());
                continue;
            }
            if r.canceled() || r.created() {
                s.other.push(format!("{r:?}"));
                continue;
            }
            for e in r.events() {
                let kv = e.kv().unwrap();
                let v = (e.event_type() == EventType::Put).then(|| kv.value_str().unwrap().to_string());
                s.events.push((kv.mod_revision(), kv.key_str().unwrap().to_string(), v));
            }
        }
    });
    Watcher { prefix, key: key.to_string(), start, seen, ended: false, task, stream: Some(sender) }
}

fn expected(model: &[Change], w: &Watcher, created_rev: i64) -> Vec<Change> {
    let from = if w.start == 0 { created_rev + 1 } else { w.start };
    model
        .iter()
        .filter(|(rev, k, _)| *rev >= from && if w.prefix { k.starts_with(&w.key) } else { *k == w.key })
        .cloned()
        .collect()
}

/// What a run exercised: watchers, compaction cancels, restarts, events checked.
#[derive(Default, Debug)]
struct Stats {
    watchers: usize,
    compaction_cancels: usize,
    restarts: usize,
    events: usize,
}

async fn run(seed: u64, driver: &str) -> Stats {
    let mut stats = Stats::default();
    let mut rng = Rng::new(seed);
    let mut srv = TestServer::start(driver, &[]);
    let mut c = Client::connect([srv.url()], None).await.unwrap();
    let mut model: Vec<Change> = Vec::new();
    let mut compacted = 0i64;
    let mut current = c.put("zz", "0", None).await.unwrap().header().unwrap().revision();
    model.push((current, "zz".to_string(), Some("0".to_string())));
    let mut watchers: Vec<Watcher> = Vec::new();
    for step in 0..300 {
        match rng.below(100) {
            0..=44 => {
                let k = KEYS[rng.below(KEYS.len() as u64) as usize];
                let v = format!("{step}");
                current = c.put(k, v.clone(), None).await.unwrap().header().unwrap().revision();
                model.push((current, k.to_string(), Some(v)));
            }
            45..=54 => {
                let k = KEYS[rng.below(KEYS.len() as u64) as usize];
                let r = c.delete(k, None).await.unwrap();
                if r.deleted() > 0 {
                    current = r.header().unwrap().revision();
                    model.push((current, k.to_string(), None));
                }
            }
            55..=62 => {
                let (k1, k2) = ("a/1", "b/2");
                let v = format!("t{step}");
                let txn = Txn::new().and_then([TxnOp::put(k1, v.clone(), None), TxnOp::put(k2, v.clone(), None)]);
                current = c.txn(txn).await.unwrap().header().unwrap().revision();
                model.push((current, k1.to_string(), Some(v.clone())));
                model.push((current, k2.to_string(), Some(v)));
            }
            63..=64 if current > compacted + 5 => {
                let at = compacted + 1 + rng.below((current - compacted - 1) as u64) as i64;
                c.compact(at, Some(CompactionOptions::new().with_physical())).await.unwrap();
                compacted = at;
            }
            65..=84 => {
                let (key, prefix) = match rng.below(3) {
                    0 => ("a/", true),
                    1 => ("", true),
                    _ => (KEYS[rng.below(KEYS.len() as u64) as usize], false),
                };
                let start = match rng.below(3) {
                    0 => 0,
                    _ => 1 + rng.below(current as u64 + 1) as i64,
                };
                watchers.push(start_watch(&mut c, key, prefix, start).await);
            }
            85..=92 => {
                let live: Vec<usize> = (0..watchers.len()).filter(|i| !watchers[*i].ended).collect();
                if let Some(&i) = live.get(rng.below(live.len().max(1) as u64) as usize) {
                    let w = &mut watchers[i];
                    w.ended = true;
                    w.stream = None;
                    w.task.abort();
                }
            }
            93..=94 => {
                srv.kill9();
                stats.restarts += 1;
                for w in watchers.iter_mut() {
                    w.ended = true;
                    w.task.abort();
                    w.stream = None;
                }
                srv.restart();
                c = Client::connect([srv.url()], None).await.unwrap();
            }
            _ => {}
        }
    }
    // Let the watchers catch up: every live one must reach the model's last change of its range.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, w) in watchers.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (done, detail) = {
                let s = w.seen.lock().unwrap();
                let created = s.created_rev.unwrap();
                let want = expected(&model, w, created);
                let ctx = format!(
                    "seed {seed} [{driver}] watcher {i} ({}{} from {}, created at {created}, compacted {compacted})",
                    w.key,
                    if w.prefix { "*" } else { "" },
                    w.start
                );
                assert!(s.other.is_empty(), "{ctx}: unexpected responses {:?}", s.other);
                stats.events += s.events.len();
                if let Some(cr) = s.compact {
                    stats.compaction_cancels += 1;
                    assert!(
                        w.start != 0 && w.start < cr,
                        "{ctx}: compaction cancel {cr} for a watcher that was not behind it"
                    );
                    assert!(s.events.is_empty(), "{ctx}: events and a compaction cancel: {:?}", s.events);
                    (true, String::new())
                } else {
                    assert!(
                        s.events.len() <= want.len() && s.events[..] == want[..s.events.len()],
                        "{ctx}: not a prefix of the model's events\nseen: {:?}\nwant: {want:?}",
                        s.events
                    );
                    (
                        w.ended || s.events.len() == want.len(),
                        format!("{ctx}: saw {} of {} events", s.events.len(), want.len()),
                    )
                }
            };
            if done {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{detail}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for w in &watchers {
        w.task.abort();
    }
    stats.watchers = watchers.len();
    drop(watchers);
    let log = srv.stop();
    assert!(!log.contains("panicked"), "seed {seed} [{driver}] {log}");
    stats
}

#[test]
fn watchers_see_exactly_their_events() {
    let seeds: Vec<u64> = match std::env::var("WATCH_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("WATCH_MODEL_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut total = Stats::default();
    for seed in seeds {
        for driver in DRIVERS {
            let s = rt.block_on(run(seed, driver));
            eprintln!("seed {seed} [{driver}]: {s:?}");
            total.watchers += s.watchers;
            total.compaction_cancels += s.compaction_cancels;
            total.restarts += s.restarts;
            total.events += s.events;
        }
    }
    // The seeds must exercise what the property is about.
    if std::env::var("WATCH_MODEL_SEED").is_err() {
        assert!(
            total.watchers > 50 && total.compaction_cancels > 0 && total.restarts > 0 && total.events > 1000,
            "the default seeds no longer cover the cases: {total:?}"
        );
    }
}
