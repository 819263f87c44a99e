//! watch-latency and watch-fanout: one writer, many watchers, latency from put to event.
//!
//! Setup (untimed): the watch streams (`--watchers` / `--watchers-per-stream` of them) are spread
//! over the connections like clients (stream i on connection i mod conns), and the connections
//! over the threads; each stream creates its watchers one after another, each create's
//! `created` answer checked (created, not canceled, no compaction, no events) before the next.
//! Thread 0 also opens the writer's own connection.
//!
//! The run: the writer (on thread 0) puts the watched key one put at a time, closed loop or paced
//! by `--rate`; each value starts with the put's send time, in ns since the run's start
//! `Instant` (common to all threads). Each stream's reader task takes every `WatchResponse` as
//! it arrives, reads it in place (`wire.rs`) and records, for each PUT event, the receive time
//! minus that stamp: the put-to-event latency of that delivery. Canceled or compacted answers,
//! other events and undecodable responses are errors; a stream that ends is an error (its
//! watchers' remaining events then count as missing).
//!
//! The end: when the writer stops it publishes how many puts succeeded. Each thread then waits
//! until every one of its watchers has had an event for each of them, or until
//! `--drain-timeout` after the last put; what has not come by then is counted as missing, an
//! error. A thread's events per second run from the start to its last delivery.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use http::Uri;
use metastore_proto::etcdserverpb::{watch_request, PutRequest, WatchCreateRequest, WatchRequest};

use crate::args::{Config, Watch, STAMP_BYTES};
use crate::grpc::{self, Sender, StreamCall};
use crate::keys::{self, KeyPicker};
use crate::run::{self, Local, ThreadPlan};
use crate::wire::{self, EVENT_PUT};
use crate::workload::PATH_PUT;

pub const PATH_WATCH: &str = "/etcdserverpb.Watch/Watch";
/// How often a thread checks whether its watchers have had every event.
const MONITOR_INTERVAL: Duration = Duration::from_millis(5);
/// Request bytes the writer's buffer grows by when it runs out.
const POOL_BYTES: usize = 64 * 1024;

/// The prefix every key of the key space shares: the leading zeros of the zero-padded index
/// (`--key-size` 8, 10,000 keys: `0000`). Empty when the indexes use every digit.
pub fn key_prefix(key_size: usize, space: u64) -> Vec<u8> {
    let digits = (space.max(2) - 1).ilog10() as usize + 1;
    vec![b'0'; key_size.saturating_sub(digits)]
}

/// etcd's range end for a prefix: the prefix with its last byte below 0xff incremented and
/// what follows dropped; `\0` (every key) for an empty or all-0xff prefix.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The watched `(key, range_end)`: key 0 alone, or the key space's prefix (`--watch-prefix`).
pub fn watched(cfg: &Config, watch: &Watch) -> (Vec<u8>, Vec<u8>) {
    if !watch.prefix {
        return (keys::key(cfg.key_size, 0), Vec::new());
    }
    let prefix = key_prefix(cfg.key_size, cfg.key_space_size);
    let end = prefix_end(&prefix);
    (if prefix.is_empty() { vec![0] } else { prefix }, end)
}

/// The framed create request every watcher sends.
pub fn create_request(key: &[u8], range_end: &[u8]) -> Bytes {
    let req = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            ..Default::default()
        })),
    };
    let mut buf = Vec::new();
    grpc::frame(&mut buf, &req);
    Bytes::from(buf)
}

/// Checks a create's answer; returns the watch ID.
pub fn check_created(msg: &[u8]) -> Result<i64, String> {
    let head = wire::watch_response(msg, |_| {})?;
    if head.canceled {
        return Err(format!("canceled: {}", String::from_utf8_lossy(head.cancel_reason)));
    }
    if !head.created {
        return Err("the first answer is not `created`".into());
    }
    if head.compact_revision != 0 || head.events != 0 || head.watch_id < 0 {
        return Err(format!(
            "unexpected created answer (watch ID {}, compact revision {}, {} events)",
            head.watch_id, head.compact_revision, head.events
        ));
    }
    Ok(head.watch_id)
}

/// The writer's framed put, encoded once: each put copies it, patches the key (prefix mode) and
/// the value's first [`STAMP_BYTES`] with its send time.
#[derive(Debug)]
pub struct StampedPut {
    bytes: Vec<u8>,
    key_at: usize,
    key_size: usize,
    stamp_at: usize,
}

impl StampedPut {
    pub fn new(key_size: usize, val_size: usize) -> Result<Self, String> {
        let key = keys::key(key_size, 0);
        let mut value = vec![b'v'; val_size];
        value[..STAMP_BYTES].fill(0);
        let mut bytes = Vec::new();
        grpc::frame(&mut bytes, &PutRequest { key: key.clone(), value: value.clone(), ..Default::default() });
        let varint = |n: usize| prost::encoding::encoded_len_varint(n as u64);
        let key_at = grpc::GRPC_PREFIX_BYTES + 1 + varint(key_size);
        let stamp_at = key_at + key_size + 1 + varint(val_size);
        if bytes.get(key_at..key_at + key_size) != Some(&key[..]) || bytes.get(stamp_at..) != Some(&value[..]) {
            return Err("put template: the key or value is not where it was expected".into());
        }
        Ok(StampedPut { bytes, key_at, key_size, stamp_at })
    }

    /// The put of key `index` stamped `ns`, cut from `pool`.
    pub fn fill(&self, pool: &mut BytesMut, index: u64, ns: u64) -> Bytes {
        if pool.capacity() < self.bytes.len() {
            pool.reserve(POOL_BYTES.max(self.bytes.len()));
        }
        pool.extend_from_slice(&self.bytes);
        keys::write_key(&mut pool[self.key_at..self.key_at + self.key_size], index);
        wire::write_stamp(&mut pool[self.stamp_at..], ns);
        pool.split().freeze()
    }
}

/// The writer and its connection.
pub struct Writer {
    send: Sender,
    uri: Uri,
    put: StampedPut,
    pool: BytesMut,
    out: Vec<u8>,
    /// Prefix mode: picks each put's key from the key space.
    picker: Option<KeyPicker>,
}

/// What the writer did.
pub struct WriterOut {
    /// Put latency (send to answer) of answered puts, ns.
    pub hist: Histogram<u64>,
    /// Puts finished, answered or not, and those that succeeded.
    pub puts: u64,
    pub ok: u64,
    pub last_done: Option<Instant>,
}

/// One thread's watch streams (with their watcher counts) and, on thread 0, the writer.
pub struct Prepared {
    streams: Vec<(StreamCall, u64)>,
    writer: Option<Writer>,
}

/// Opens one watch stream and creates `watchers` watchers on it, checking each `created`.
async fn open_stream(send: &mut Sender, uri: &Uri, create: &Bytes, watchers: usize) -> Result<StreamCall, String> {
    let mut call = grpc::open(send, uri).await.map_err(|e| format!("watch stream: {}", e.message()))?;
    for _ in 0..watchers {
        call.send(create.clone()).map_err(|e| format!("watch create: {}", e.message()))?;
        let msg = call.message().await.map_err(|e| format!("watch create: {}", e.message()))?;
        check_created(msg).map_err(|e| format!("watch create: {e}"))?;
    }
    Ok(call)
}

/// Connects thread `index`'s connections, creates its watchers and (thread 0) the writer.
pub async fn prepare(cfg: &Config, plan: &ThreadPlan, index: usize) -> Result<Prepared, String> {
    let watch = cfg.watch.as_ref().ok_or("not a watch workload")?;
    let (key, range_end) = watched(cfg, watch);
    let create = create_request(&key, &range_end);
    let mut tasks = Vec::new();
    for (endpoint, ids) in &plan.conns {
        let authority = cfg.endpoints.get(*endpoint).map(|e| e.authority.as_str()).ok_or("no such endpoint")?;
        let (send, conn) = grpc::connect(authority).await?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        let uri = grpc::uri(authority, PATH_WATCH)?;
        for &s in ids {
            let (mut send, uri, create, n) = (send.clone(), uri.clone(), create.clone(), watch.on_stream(s));
            tasks.push(tokio::task::spawn_local(async move {
                open_stream(&mut send, &uri, &create, n).await.map(|c| (c, n as u64))
            }));
        }
    }
    let mut streams = Vec::with_capacity(tasks.len());
    for t in tasks {
        streams.push(t.await.map_err(|e| format!("watch setup task: {e}"))??);
    }
    let writer = if index == 0 {
        let authority = cfg.endpoints.first().map(|e| e.authority.as_str()).ok_or("no endpoint")?;
        let (send, conn) = grpc::connect(authority).await?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        let seed = cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Some(Writer {
            send,
            uri: grpc::uri(authority, PATH_PUT)?,
            put: StampedPut::new(cfg.key_size, cfg.val_size)?,
            pool: BytesMut::new(),
            out: Vec::new(),
            picker: watch.prefix.then(|| KeyPicker::new(cfg.key_space_size, cfg.sequential_keys, seed)),
        })
    } else {
        None
    };
    Ok(Prepared { streams, writer })
}

/// One stream's watchers and the events they have had.
struct StreamState {
    watchers: u64,
    delivered: Cell<u64>,
}

fn ns_since(start: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(start).as_nanos().min(u128::from(u64::MAX)) as u64
}

/// What one `WatchResponse` held, its latencies recorded.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reading {
    /// PUT events with a stamp: deliveries.
    delivered: u64,
    /// Other events (DELETE), and PUTs whose value holds no stamp: errors.
    not_put: u64,
    unstamped: u64,
    /// A canceled, compacted, unexpected or undecodable response: an error.
    error: Option<String>,
}

/// Reads one response received `now_ns` after the start, recording each delivery's put-to-event
/// latency in `hist`.
fn read_response(msg: &[u8], now_ns: u64, hist: &mut Histogram<u64>) -> Reading {
    let mut r = Reading::default();
    let head = wire::watch_response(msg, |ev| {
        if ev.kind != EVENT_PUT {
            r.not_put += 1;
        } else if let Some(sent) = wire::stamp(ev.value) {
            hist.saturating_record(now_ns.saturating_sub(sent).max(1));
            r.delivered += 1;
        } else {
            r.unstamped += 1;
        }
    });
    r.error = match head {
        Err(e) => Some(format!("watch: undecodable WatchResponse: {e}")),
        Ok(h) if h.canceled && h.compact_revision > 0 => Some("watch: compacted (canceled)".into()),
        Ok(h) if h.canceled => Some(format!("watch: canceled: {}", String::from_utf8_lossy(h.cancel_reason))),
        Ok(h) if h.compact_revision > 0 => Some("watch: compacted".into()),
        Ok(h) if h.created => Some("watch: unexpected created answer".into()),
        Ok(_) => None,
    };
    r
}

/// Reads one stream's responses until it ends (or the thread stops polling it).
async fn read_stream(local: Rc<Local>, mut call: StreamCall, state: Rc<StreamState>) {
    loop {
        let msg = match call.message().await {
            Ok(m) => m,
            Err(e) => {
                local.record_error(&format!("watch: {}", e.message()));
                return;
            }
        };
        let now = Instant::now();
        let r = read_response(msg, ns_since(local.start, now), &mut local.hist.borrow_mut());
        if let Some(e) = &r.error {
            local.record_error(e);
        }
        if r.not_put > 0 {
            local.record_errors("watch: event other than PUT", r.not_put);
        }
        if r.unstamped > 0 {
            local.record_errors("watch: event value without a send time", r.unstamped);
        }
        if r.delivered > 0 {
            state.delivered.set(state.delivered.get() + r.delivered);
            local.add_finished(r.delivered, now);
        }
    }
}

/// The writer: one put at a time until the run's count or duration, closed loop or paced; then
/// publishes how many puts succeeded and when the last ended.
async fn write(local: Rc<Local>, mut w: Writer) -> Result<WriterOut, String> {
    let mut out = WriterOut { hist: run::histogram()?, puts: 0, ok: 0, last_done: None };
    let mut k = 0u64;
    loop {
        if local.limit.is_some_and(|limit| k >= limit) {
            break;
        }
        let now = Instant::now();
        let begin = match local.interval_s {
            Some(interval) => {
                let due = local.start + Duration::from_secs_f64(k as f64 * interval);
                if local.end.is_some_and(|end| due >= end) {
                    break;
                }
                if due > now {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    due
                }
            }
            None => {
                if local.end.is_some_and(|end| now >= end) {
                    break;
                }
                now
            }
        };
        let index = w.picker.as_mut().map_or(0, |p| p.pick(k));
        k += 1;
        // The stamp is the actual send time: put-to-event does not include the writer's lateness.
        let body = w.put.fill(&mut w.pool, index, ns_since(local.start, Instant::now()));
        let result = grpc::unary(&mut w.send, &w.uri, body, &mut w.out).await;
        let done = Instant::now();
        out.puts += 1;
        out.last_done = Some(done);
        match &result {
            Ok(()) => out.ok += 1,
            Err(e) => local.record_error(&format!("put: {}", e.message())),
        }
        if result.as_ref().map_or_else(|e| e.answered(), |()| true) {
            out.hist.saturating_record(ns_since(begin, done).max(1));
        }
        if result.is_err_and(|e| e.is_fatal()) {
            break;
        }
    }
    let _ = local.shared.writer_done.set((out.ok, out.last_done.unwrap_or_else(Instant::now)));
    Ok(out)
}

/// Waits until the writer is done and then until every watcher of `streams` has had an event
/// for each successful put, or the drain timeout; returns the events still missing.
async fn settle(local: &Local, streams: &[Rc<StreamState>], drain: Duration) -> u64 {
    loop {
        tokio::time::sleep(MONITOR_INTERVAL).await;
        let Some(&(puts_ok, last_put)) = local.shared.writer_done.get() else { continue };
        let missing: u64 = streams.iter().map(|s| (s.watchers * puts_ok).saturating_sub(s.delivered.get())).sum();
        if missing == 0 || Instant::now() >= last_put + drain {
            return missing;
        }
    }
}

/// Runs one thread's share: its readers, the writer on thread 0, until its watchers have settled.
/// Returns the events missing on this thread and, on thread 0, what the writer did.
pub async fn run(local: Rc<Local>, prepared: Prepared, watch: &Watch) -> Result<(u64, Option<WriterOut>), String> {
    let mut states = Vec::with_capacity(prepared.streams.len());
    for (call, watchers) in prepared.streams {
        let state = Rc::new(StreamState { watchers, delivered: Cell::new(0) });
        states.push(state.clone());
        tokio::task::spawn_local(read_stream(local.clone(), call, state));
    }
    let writer = prepared.writer.map(|w| tokio::task::spawn_local(write(local.clone(), w)));
    let missing = settle(&local, &states, watch.drain_timeout).await;
    if missing > 0 {
        local.record_errors(
            &format!("events not delivered within {} of the last put", fmt_duration(watch.drain_timeout)),
            missing,
        );
    }
    let writer = match writer {
        Some(h) => Some(h.await.map_err(|e| format!("writer task: {e}"))??),
        None => None,
    };
    Ok((missing, writer))
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s} s")
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{parse, Command};
    use metastore_proto::etcdserverpb::WatchResponse;
    use prost::Message;

    fn cfg(args: &[&str]) -> Config {
        let Ok(Command::Run(cfg)) = parse(args.iter().copied()) else { panic!("{args:?}") };
        *cfg
    }

    #[test]
    fn prefixes_and_their_ends() {
        assert_eq!(key_prefix(8, 10_000), b"0000");
        assert_eq!(key_prefix(8, 10_001), b"000");
        assert_eq!(key_prefix(8, 1), b"0000000");
        assert_eq!(key_prefix(8, 100_000_000), b"");
        assert_eq!(key_prefix(3, 1000), b"");
        assert_eq!(prefix_end(b"0000"), b"0001");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
        let c = cfg(&["watch-latency"]);
        assert_eq!(watched(&c, c.watch.as_ref().unwrap()), (b"00000000".to_vec(), Vec::new()));
        let c = cfg(&["watch-fanout", "--watch-prefix", "--key-space-size", "100"]);
        assert_eq!(watched(&c, c.watch.as_ref().unwrap()), (b"000000".to_vec(), b"000001".to_vec()));
        let c = cfg(&["watch-fanout", "--watch-prefix", "--key-size", "2", "--key-space-size", "100"]);
        assert_eq!(watched(&c, c.watch.as_ref().unwrap()), (vec![0], vec![0]));
    }

    #[test]
    fn create_request_is_what_prost_encodes() {
        let body = create_request(b"0000", b"0001");
        let req = WatchRequest::decode(grpc::message(&body)).unwrap();
        let Some(watch_request::RequestUnion::CreateRequest(c)) = req.request_union else { panic!("{req:?}") };
        assert_eq!((&c.key[..], &c.range_end[..]), (&b"0000"[..], &b"0001"[..]));
        assert!(!c.prev_kv && c.start_revision == 0 && c.watch_id == 0 && c.filters.is_empty());
    }

    #[test]
    fn stamped_puts_encode_exactly_like_prost() {
        for (key_size, val_size) in [(8usize, 8usize), (8, 256), (1, 127), (200, 128), (16, 5000)] {
            let t = StampedPut::new(key_size, val_size).unwrap();
            let mut pool = BytesMut::new();
            for (index, ns) in [(0u64, 0u64), (7, 1_234_567_890), (9, u64::MAX)] {
                let body = t.fill(&mut pool, index, ns);
                let mut value = vec![b'v'; val_size];
                wire::write_stamp(&mut value, ns);
                let mut want = Vec::new();
                grpc::frame(&mut want, &PutRequest { key: keys::key(key_size, index), value, ..Default::default() });
                assert_eq!(&body[..], &want[..], "key size {key_size}, value size {val_size}");
                let put = PutRequest::decode(grpc::message(&body)).unwrap();
                assert_eq!(wire::stamp(&put.value), Some(ns));
            }
        }
    }

    #[test]
    fn created_answers_are_checked() {
        let enc = |r: WatchResponse| r.encode_to_vec();
        assert_eq!(check_created(&enc(WatchResponse { watch_id: 3, created: true, ..Default::default() })), Ok(3));
        let e = check_created(&enc(WatchResponse {
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: "etcdserver: duplicate".into(),
            ..Default::default()
        }))
        .unwrap_err();
        assert!(e.contains("canceled: etcdserver: duplicate"), "{e}");
        assert!(check_created(&enc(WatchResponse { watch_id: 1, ..Default::default() })).is_err());
        assert!(
            check_created(&enc(WatchResponse { created: true, compact_revision: 5, ..Default::default() })).is_err()
        );
        assert!(check_created(&[0xff]).is_err());
    }

    #[test]
    fn responses_record_deliveries_and_count_cancels_as_errors() {
        use metastore_proto::mvccpb::{event::EventType, Event, KeyValue};
        let event = |kind: EventType, value: Vec<u8>| Event {
            r#type: kind as i32,
            kv: Some(KeyValue { key: b"k".to_vec(), mod_revision: 9, value, ..Default::default() }),
            prev_kv: None,
        };
        let stamped = |ns: u64| {
            let mut v = vec![b'v'; 16];
            wire::write_stamp(&mut v, ns);
            v
        };
        let mut hist = run::histogram().unwrap();
        let msg = WatchResponse {
            watch_id: 1,
            events: vec![
                event(EventType::Put, stamped(1_000)),
                event(EventType::Put, stamped(500_000)),
                event(EventType::Put, b"short".to_vec()),
                event(EventType::Delete, Vec::new()),
            ],
            ..Default::default()
        }
        .encode_to_vec();
        let r = read_response(&msg, 1_001_000, &mut hist);
        assert_eq!(r, Reading { delivered: 2, not_put: 1, unstamped: 1, error: None });
        assert_eq!(hist.len(), 2);
        assert!(hist.equivalent(hist.min(), 501_000) && hist.equivalent(hist.max(), 1_000_000), "{hist:?}");
        // A stamp from the future (it cannot be) counts as 1 ns, not a wrapped-around latency.
        let msg = WatchResponse { events: vec![event(EventType::Put, stamped(5_000))], ..Default::default() };
        assert_eq!(read_response(&msg.encode_to_vec(), 10, &mut hist).delivered, 1);
        assert_eq!(hist.min(), 1);

        let mut error = |r: WatchResponse| read_response(&r.encode_to_vec(), 0, &mut hist).error;
        assert_eq!(
            error(WatchResponse { canceled: true, cancel_reason: "gone".into(), ..Default::default() }),
            Some("watch: canceled: gone".into())
        );
        assert_eq!(
            error(WatchResponse { canceled: true, compact_revision: 3, ..Default::default() }),
            Some("watch: compacted (canceled)".into())
        );
        assert_eq!(error(WatchResponse { compact_revision: 3, ..Default::default() }), Some("watch: compacted".into()));
        assert_eq!(
            error(WatchResponse { created: true, ..Default::default() }),
            Some("watch: unexpected created answer".into())
        );
        // A progress notification (no events) is neither a delivery nor an error.
        assert_eq!(error(WatchResponse { watch_id: -1, ..Default::default() }), None);
        assert!(read_response(&[0xff], 0, &mut run::histogram().unwrap()).error.unwrap().contains("undecodable"));
    }

    #[test]
    fn durations_for_messages() {
        assert_eq!(fmt_duration(Duration::from_secs(10)), "10 s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250 ms");
    }
}
