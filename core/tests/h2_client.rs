//! The wire, as seen by an HTTP/2 client we did not write: the `h2` crate (the one under hyper and
//! tonic) drives the real `metastore` binary over TCP, on both io drivers. It guards against a
//! codec that only agrees with itself: a gRPC server that round-trips its own frames can still
//! mis-handle framing a real client produces (a message split over many DATA frames, a 5-byte
//! prefix cut in two, multi-megabyte messages that need the server to refill its receive windows),
//! overrun a client's small receive window, leak or wedge a stream the client cancels, or answer
//! errors in a shape real clients misread (trailers-only replies, HTTP 415, grpc-go's exact status
//! texts). Each test builds requests by hand (prost for the health messages, our own 5-byte gRPC
//! framing), asserts real values — status codes, exact messages, decoded health states, timing
//! bounds, and `/metrics` gauges — and finishes by checking that every connection the client
//! closed is gone from the server and that the server stops cleanly with no panic in its log.
//! `h2` itself fails a connection that breaks flow control or the frame rules, and every
//! connection here is closed through `Client::close`, which asserts it ended without error.
//! `connections_spread_over_cores` holds 100 connections open and checks through `/metrics` that
//! SO_REUSEPORT spread them over every core and that the per-core gauge returns to 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestServer, DRIVERS};
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, Request};
use metastore_proto::health::health_check_response::ServingStatus;
use metastore_proto::health::{HealthCheckRequest, HealthCheckResponse};
use prost::Message;
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

const CHECK: &str = "/grpc.health.v1.Health/Check";
const WATCH: &str = "/grpc.health.v1.Health/Watch";
const GRPC: &str = "application/grpc";
/// The default gRPC receive limit: etcd's 1.5 MiB `--max-request-bytes` + 512 KiB.
const RECV_LIMIT_DEFAULT: usize = 2 * 1024 * 1024;
/// Upper bound for one scenario on one driver; a hang fails the test instead of blocking CI.
const SCENARIO_SECS: u64 = 120;
const CONNECTIONS: &str = "metastore_core_connections";

const SERVING: i32 = ServingStatus::Serving as i32;
const SERVICE_UNKNOWN: i32 = ServingStatus::ServiceUnknown as i32;

// ----- harness -----

/// Runs `scenario` against a fresh server on each io driver, then checks that the connections the
/// client held are gone (the runtime, and so every socket, is dropped first) and that the server
/// stops cleanly without a panic.
fn on_each_driver<F, Fut>(extra: &[&str], scenario: F)
where
    F: Fn(&'static str, SocketAddr) -> Fut,
    Fut: Future<Output = ()>,
{
    for driver in DRIVERS {
        let srv = TestServer::start(driver, extra);
        eprintln!("[{driver}] server at {}", srv.addr);
        let started = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let done = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(SCENARIO_SECS), scenario(driver, srv.addr)).await
        });
        drop(rt);
        assert!(done.is_ok(), "[{driver}] scenario did not finish within {SCENARIO_SECS}s; server log:\n{}", srv.log());
        eprintln!("[{driver}] scenario took {:?}", started.elapsed());
        let closed = common::wait_until(10, || open_connections(&srv.metrics()) == 0.0);
        assert!(
            closed,
            "[{driver}] the client closed every connection but the server still counts {:?}",
            srv.per_core(CONNECTIONS)
        );
        let log = srv.stop();
        assert!(!log.contains("panicked"), "[{driver}] the server log shows a panic:\n{log}");
    }
}

fn open_connections(metrics: &str) -> f64 {
    common::parse_metric_sum(metrics, CONNECTIONS)
}

/// `/metrics` over HTTP/1.1, off the runtime thread so that the client's connections keep running.
async fn metrics(addr: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || common::http_get(addr, "/metrics")).await.unwrap().expect("GET /metrics").1
}

/// One HTTP/2 connection: the request handle and the task driving the connection.
struct Client {
    addr: SocketAddr,
    send: SendRequest<Bytes>,
    task: JoinHandle<Result<(), h2::Error>>,
}

async fn connect(addr: SocketAddr) -> Client {
    connect_with(addr, &h2::client::Builder::new()).await
}

async fn connect_with(addr: SocketAddr, builder: &h2::client::Builder) -> Client {
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    tcp.set_nodelay(true).unwrap();
    let (send, conn) = builder.handshake::<_, Bytes>(tcp).await.expect("HTTP/2 handshake");
    Client { addr, send, task: tokio::spawn(conn) }
}

impl Client {
    /// Opens a stream with `req` (the body follows through the returned `SendStream`).
    async fn start(&self, req: Request<()>) -> (ResponseFuture, SendStream<Bytes>) {
        let mut send = self.send.clone().ready().await.expect("connection ready");
        send.send_request(req, false).expect("send_request")
    }

    /// A gRPC call whose whole request body goes in one `send_data` with END_STREAM.
    async fn call(&self, path: &str, extra: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let (resp, mut tx) = self.start(grpc_request(self.addr, path, GRPC, extra)).await;
        // The server may answer (and reset) before taking the body: a send error is not the test.
        let _ = tx.send_data(Bytes::from(body), true);
        read_reply(resp).await
    }

    async fn check(&self, service: &str) -> Reply {
        self.call(CHECK, &[], grpc_frame(0, &health_req(service))).await
    }

    /// A plain HTTP GET over this connection.
    async fn get(&self, path: &str) -> (u16, RecvStream) {
        let req = Request::builder().method("GET").uri(format!("http://{}{path}", self.addr)).body(()).unwrap();
        let mut send = self.send.clone().ready().await.expect("connection ready");
        let (resp, _) = send.send_request(req, true).expect("send_request");
        let resp = resp.await.expect("response head");
        (resp.status().as_u16(), resp.into_body())
    }

    /// Closes the connection and asserts it ended cleanly: no GOAWAY with an error code, no
    /// protocol or flow-control error seen by `h2`. Every stream handle must be dropped first:
    /// `h2` keeps the connection until the last one is gone.
    async fn close(self) {
        drop(self.send);
        let r = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the connection did not close: a stream handle is still held")
            .expect("connection task");
        assert!(r.is_ok(), "the HTTP/2 connection ended with an error: {r:?}");
    }
}

fn grpc_request(addr: SocketAddr, path: &str, content_type: &str, extra: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn health_req(service: &str) -> Vec<u8> {
    HealthCheckRequest { service: service.into() }.encode_to_vec()
}

/// The gRPC length-prefixed message: flag, 4-byte big-endian length, message.
fn grpc_frame(flag: u8, msg: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + msg.len());
    v.push(flag);
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

fn varint_len(mut n: usize) -> usize {
    let mut l = 1;
    while n >= 0x80 {
        n >>= 7;
        l += 1;
    }
    l
}

fn put_varint(v: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        v.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    v.push(n as u8);
}

/// A HealthCheckRequest of exactly `len` bytes that decodes to `service: ""` (the server's own
/// name, SERVING): an unknown length-delimited field (number 100) of filler, then field 1 empty.
/// The server answers SERVING only if every byte arrived in order — a lost, doubled or shifted
/// byte breaks the protobuf or names another service.
fn padded_serving_req(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    for vl in 1..=5 {
        let Some(n) = len.checked_sub(2 + vl + 2) else {
            continue;
        };
        if varint_len(n) == vl {
            v.extend_from_slice(&[0xa2, 0x06]); // field 100, wire type 2
            put_varint(&mut v, n);
            v.extend((0..n).map(|i| (i % 251) as u8));
            v.extend_from_slice(&[0x0a, 0x00]); // field 1 (service) = ""
            assert_eq!(v.len(), len);
            assert_eq!(HealthCheckRequest::decode(&v[..]).unwrap().service, "");
            return v;
        }
    }
    panic!("no padding fits {len} bytes");
}

/// Reads a response body message by message, releasing flow-control capacity as it goes.
struct Body {
    rx: RecvStream,
    buf: Vec<u8>,
}

impl Body {
    async fn next_message(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.buf.len() >= 5 {
                assert_eq!(self.buf[0], 0, "the server sent a compressed-flag message");
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    let msg = self.buf[5..5 + len].to_vec();
                    self.buf.drain(..5 + len);
                    return Some(msg);
                }
            }
            match self.rx.data().await {
                Some(chunk) => {
                    let chunk = chunk.expect("response body");
                    self.rx.flow_control().release_capacity(chunk.len()).unwrap();
                    self.buf.extend_from_slice(&chunk);
                }
                None => {
                    assert!(self.buf.is_empty(), "the body ended inside a message: {:?}", self.buf);
                    return None;
                }
            }
        }
    }

    async fn next_health(&mut self) -> Option<i32> {
        let m = self.next_message().await?;
        Some(HealthCheckResponse::decode(&m[..]).unwrap().status)
    }
}

/// A finished gRPC exchange.
#[derive(Debug)]
struct Reply {
    http: u16,
    headers: HeaderMap,
    /// The response was one HEADERS frame with END_STREAM (no DATA, no trailer block).
    trailers_only: bool,
    messages: Vec<Vec<u8>>,
    trailers: Option<HeaderMap>,
}

impl Reply {
    /// `grpc-status` / `grpc-message` from the trailers, or from the headers of a trailers-only
    /// reply.
    fn status(&self) -> (u32, String) {
        let map = match &self.trailers {
            Some(t) => t,
            None => {
                assert!(self.trailers_only, "no trailers and not trailers-only: {self:?}");
                &self.headers
            }
        };
        let code = map
            .get("grpc-status")
            .unwrap_or_else(|| panic!("no grpc-status in {self:?}"))
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let msg = map.get("grpc-message").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (code, msg)
    }

    fn health(&self) -> Vec<i32> {
        self.messages.iter().map(|m| HealthCheckResponse::decode(&m[..]).unwrap().status).collect()
    }

    /// A successful unary Check: HEADERS (200, application/grpc), one SERVING message, trailers
    /// with grpc-status 0.
    fn assert_serving(&self) {
        assert_eq!(self.http, 200, "{self:?}");
        assert_eq!(self.headers.get("content-type").unwrap(), GRPC);
        assert!(!self.trailers_only, "{self:?}");
        assert_eq!(self.health(), vec![SERVING], "{self:?}");
        assert_eq!(self.status(), (0, String::new()), "{self:?}");
    }

    /// An error answered trailers-only, as grpc-go does when nothing was sent yet.
    fn assert_error(&self, http: u16, code: u32, message: &str) {
        assert!(self.trailers_only, "expected a trailers-only reply: {self:?}");
        assert!(self.messages.is_empty(), "{self:?}");
        assert_eq!(self.http, http, "{self:?}");
        assert_eq!(self.headers.get("content-type").unwrap(), GRPC);
        assert_eq!(self.status(), (code, message.to_string()), "{self:?}");
    }
}

async fn read_reply(resp: ResponseFuture) -> Reply {
    let resp = resp.await.expect("response head");
    let (parts, rx) = resp.into_parts();
    let trailers_only = rx.is_end_stream();
    let mut body = Body { rx, buf: Vec::new() };
    let mut messages = Vec::new();
    while let Some(m) = body.next_message().await {
        messages.push(m);
    }
    let trailers = body.rx.trailers().await.expect("trailers");
    Reply { http: parts.status.as_u16(), headers: parts.headers, trailers_only, messages, trailers }
}

/// Opens a Watch and reads its first message.
async fn open_watch(c: &Client, service: &str, extra: &[(&str, &str)]) -> (Body, SendStream<Bytes>) {
    let (resp, mut tx) = c.start(grpc_request(c.addr, WATCH, GRPC, extra)).await;
    tx.send_data(Bytes::from(grpc_frame(0, &health_req(service))), true).unwrap();
    let resp = resp.await.expect("watch response head");
    assert_eq!(resp.status(), 200);
    let mut body = Body { rx: resp.into_body(), buf: Vec::new() };
    let first = body.next_health().await;
    let want = if service.is_empty() { SERVING } else { SERVICE_UNKNOWN };
    assert_eq!(first, Some(want), "first Watch message for {service:?}");
    (body, tx)
}

/// Sends each chunk as its own DATA frame (h2 never merges `send_data` calls), pausing between
/// chunks when asked so that they also reach the server in separate reads, then END_STREAM on an
/// empty frame. The server may have answered a complete unary request already and reset the rest
/// with RST_STREAM(NO_ERROR), as grpc-go does (RFC 9113 §8.1), so that last frame may fail.
async fn send_chunks(mut tx: SendStream<Bytes>, chunks: &[&[u8]], pause: bool) -> SendStream<Bytes> {
    for c in chunks {
        tx.send_data(Bytes::copy_from_slice(c), false)
            .expect("the server ended the call before the request was complete");
        if pause {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let _ = tx.send_data(Bytes::new(), true);
    tx
}

// ----- tests -----

#[test]
fn unary_check_sequential_and_concurrent() {
    on_each_driver(&[], |driver, addr| async move {
        let c = connect(addr).await;
        for _ in 0..300 {
            c.check("").await.assert_serving();
        }
        // 100 calls in flight at once on the one connection. (Not many more: h2 ≥ 0.4.20 budgets
        // small DATA frames buffered unread — about 130 with its default 64 KiB connection window —
        // and past that the client itself sends GOAWAY(ENHANCE_YOUR_CALM, "too_many_data_frames").)
        let mut set = JoinSet::new();
        for _ in 0..100 {
            let (resp, mut tx) = c.start(grpc_request(addr, CHECK, GRPC, &[])).await;
            tx.send_data(Bytes::from(grpc_frame(0, &health_req(""))), true).unwrap();
            set.spawn(read_reply(resp));
        }
        let mut n = 0;
        while let Some(r) = set.join_next().await {
            r.unwrap().assert_serving();
            n += 1;
        }
        assert_eq!(n, 100);
        // A unary call that ends without a message: grpc-go's io.EOF as Unknown "EOF".
        let (resp, mut tx) = c.start(grpc_request(addr, CHECK, GRPC, &[])).await;
        tx.send_data(Bytes::new(), true).unwrap();
        drop(tx);
        read_reply(resp).await.assert_error(200, 2, "EOF");
        c.check("").await.assert_serving();
        let m = metrics(addr).await;
        assert_eq!(open_connections(&m), 1.0, "[{driver}] {m}");
        c.close().await;
    });
}

#[test]
fn request_split_across_data_frames() {
    on_each_driver(&[], |_driver, addr| async move {
        let c = connect(addr).await;
        let msg = grpc_frame(0, &padded_serving_req(300));

        // (a) Every byte in its own DATA frame, END_STREAM on an empty last frame.
        for pause in [false, true] {
            let (resp, tx) = c.start(grpc_request(addr, CHECK, GRPC, &[])).await;
            let chunks: Vec<&[u8]> = msg.chunks(1).collect();
            send_chunks(tx, &chunks, pause).await;
            read_reply(resp).await.assert_serving();
        }

        // (b) The 5-byte prefix cut in two at every possible place, the rest of the prefix
        // sharing a frame with the body; once back to back and once with pauses.
        for cut in 1..5 {
            for pause in [false, true] {
                let (resp, tx) = c.start(grpc_request(addr, CHECK, GRPC, &[])).await;
                send_chunks(tx, &[&msg[..cut], &msg[cut..]], pause).await;
                read_reply(resp).await.assert_serving();
            }
        }

        // (c) Prefix alone, then the body in uneven pieces, END_STREAM on the last data byte.
        let (resp, mut tx) = c.start(grpc_request(addr, CHECK, GRPC, &[])).await;
        tx.send_data(Bytes::copy_from_slice(&msg[..5]), false).unwrap();
        let body = &msg[5..];
        let mut at = 0;
        for (i, step) in [1usize, 7, 64, 2, 100].iter().cycle().enumerate() {
            let end = (at + step).min(body.len());
            let last = end == body.len();
            tx.send_data(Bytes::copy_from_slice(&body[at..end]), last).unwrap();
            if i % 3 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            at = end;
            if last {
                break;
            }
        }
        drop(tx);
        read_reply(resp).await.assert_serving();

        // (d) A Watch whose request arrives byte by byte still streams.
        let (resp, tx) = c.start(grpc_request(addr, WATCH, GRPC, &[])).await;
        let watch_msg = grpc_frame(0, &padded_serving_req(40));
        let chunks: Vec<&[u8]> = watch_msg.chunks(1).collect();
        let mut tx = send_chunks(tx, &chunks, true).await;
        let resp = resp.await.unwrap();
        let mut body = Body { rx: resp.into_body(), buf: Vec::new() };
        assert_eq!(body.next_health().await, Some(SERVING));
        tx.send_reset(Reason::CANCEL);
        drop((body, tx));

        // (e) An empty message split too: prefix 0,0,0,0,0 over three frames → service "".
        let (resp, tx) = c.start(grpc_request(addr, CHECK, GRPC, &[])).await;
        send_chunks(tx, &[&[0, 0], &[0], &[0, 0]], true).await;
        read_reply(resp).await.assert_serving();

        // (f) A message cut short by END_STREAM is an error, not a hang.
        let (resp, tx) = c.start(grpc_request(addr, CHECK, GRPC, &[])).await;
        send_chunks(tx, &[&msg[..3]], false).await;
        let r = read_reply(resp).await;
        assert_ne!(r.status().0, 0, "a truncated prefix was accepted: {r:?}");
        let (resp, tx) = c.start(grpc_request(addr, CHECK, GRPC, &[])).await;
        send_chunks(tx, &[&msg[..100]], false).await;
        let r = read_reply(resp).await;
        assert_ne!(r.status().0, 0, "a truncated message was accepted: {r:?}");

        c.check("").await.assert_serving();
        c.close().await;
    });
}

#[test]
fn large_requests_and_the_receive_limit() {
    on_each_driver(&[], |_driver, addr| async move {
        let c = connect(addr).await;

        // ~1.5 MB service name: reassembled over ~92 frames and past the 1 MiB stream window.
        let big = "s".repeat(1_500_000);
        c.check(&big).await.assert_error(200, 5, "unknown service");

        // Every byte must arrive: a 1.5 MB request that is SERVING only if intact.
        c.call(CHECK, &[], grpc_frame(0, &padded_serving_req(1_500_000))).await.assert_serving();

        // ... and the same bytes with the very last one changed are refused: the check above
        // would have noticed a corrupted reassembly.
        let mut bad = padded_serving_req(1_500_000);
        *bad.last_mut().unwrap() = 1; // field 1 now claims a byte that is not there
        let r = c.call(CHECK, &[], grpc_frame(0, &bad)).await;
        assert!(r.trailers_only, "{r:?}");
        let (code, msg) = r.status();
        assert_eq!(code, 13, "{r:?}");
        assert!(msg.starts_with("grpc: error unmarshalling request"), "{msg}");

        // 12 of them in a row is 18 MB on one connection: more than the server's 16 MiB
        // connection window, so it must have refilled that too.
        for _ in 0..12 {
            c.call(CHECK, &[], grpc_frame(0, &padded_serving_req(1_500_000))).await.assert_serving();
        }

        // The limit itself is allowed; one byte more is not.
        c.call(CHECK, &[], grpc_frame(0, &padded_serving_req(RECV_LIMIT_DEFAULT))).await.assert_serving();
        let over = padded_serving_req(RECV_LIMIT_DEFAULT + 1);
        c.call(CHECK, &[], grpc_frame(0, &over)).await.assert_error(
            200,
            8,
            &format!("grpc: received message larger than max ({} vs. {RECV_LIMIT_DEFAULT})", RECV_LIMIT_DEFAULT + 1),
        );

        // ~2.1 MB service name.
        let req = health_req(&"s".repeat(2_100_000));
        let len = req.len();
        c.call(CHECK, &[], grpc_frame(0, &req)).await.assert_error(
            200,
            8,
            &format!("grpc: received message larger than max ({len} vs. {RECV_LIMIT_DEFAULT})"),
        );
        // Refused early, the rest of that body was dropped without breaking the connection.
        c.check("").await.assert_serving();
        c.call(CHECK, &[], grpc_frame(0, &padded_serving_req(1_500_000))).await.assert_serving();
        c.close().await;
    });
}

#[test]
fn max_request_bytes_sets_the_receive_limit() {
    // --max-request-bytes 1048576 → limit 1048576 + 512 KiB = 1572864.
    const LIMIT: usize = 1_048_576 + 512 * 1024;
    on_each_driver(&["--max-request-bytes", "1048576"], |_driver, addr| async move {
        let c = connect(addr).await;
        c.call(CHECK, &[], grpc_frame(0, &padded_serving_req(LIMIT))).await.assert_serving();
        c.call(CHECK, &[], grpc_frame(0, &padded_serving_req(LIMIT + 1))).await.assert_error(
            200,
            8,
            &format!("grpc: received message larger than max ({} vs. {LIMIT})", LIMIT + 1),
        );
        c.check("").await.assert_serving();
        c.close().await;
    });
}

#[test]
fn responses_wait_for_a_small_client_window() {
    on_each_driver(&[], |driver, addr| async move {
        // A 1-byte stream window: every response byte needs its own WINDOW_UPDATE.
        let mut b = h2::client::Builder::new();
        b.initial_window_size(1);
        let c = connect_with(addr, &b).await;
        for _ in 0..20 {
            c.check("").await.assert_serving();
        }
        let mut set = JoinSet::new();
        for _ in 0..50 {
            let (resp, mut tx) = c.start(grpc_request(addr, CHECK, GRPC, &[])).await;
            tx.send_data(Bytes::from(grpc_frame(0, &health_req(""))), true).unwrap();
            set.spawn(read_reply(resp));
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().assert_serving();
        }
        let (w, mut tx) = open_watch(&c, "", &[]).await;
        tx.send_reset(Reason::CANCEL);
        drop((w, tx));
        // /version one byte per frame.
        let (status, rx) = c.get("/version").await;
        assert_eq!(status, 200);
        let mut body = Body { rx, buf: Vec::new() };
        let text = read_all(&mut body).await;
        drop(body);
        assert!(text.starts_with("{\"etcdserver\":") && text.ends_with('}'), "[{driver}] {text}");
        c.close().await;

        // The connection window (65,535 bytes, the least HTTP/2 allows) exhausted: 100 /metrics
        // responses are asked for and none is read until all heads are in, so the server must
        // park what does not fit and resume as the client releases capacity.
        let c = connect(addr).await;
        let mut bodies = Vec::new();
        for _ in 0..100 {
            let (status, rx) = c.get("/metrics").await;
            assert_eq!(status, 200);
            bodies.push(rx);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Read together, as each call's own reader would: /metrics (~80 KB) is larger than a
        // stream's window, so a client reading one body at a time depends on the order the
        // server spends the connection window in.
        let mut readers = JoinSet::new();
        for rx in bodies {
            readers.spawn(async move { read_all(&mut Body { rx, buf: Vec::new() }).await });
        }
        let mut total = 0;
        while let Some(text) = readers.join_next().await {
            let text = text.unwrap();
            assert!(text.ends_with("} 1\n"), "[{driver}] truncated /metrics: {text}");
            total += text.len();
        }
        assert!(total > 65_535, "only {total} bytes: the test did not exhaust the connection window");
        c.check("").await.assert_serving();
        c.close().await;
    });
}

/// A response bigger than the server's output bound (4 MiB) that the client takes slowly: the
/// server must keep reading while it waits for the client's credit (only WINDOW_UPDATEs, read
/// from the socket, release it; a server that stops reading there deadlocks, as `etcdctl snapshot
/// save` of a 20 MB store once did), take no new work meanwhile, refuse calls beyond its bound
/// with RESOURCE_EXHAUSTED instead of queueing without end, and answer what it queued once the
/// client reads.
#[test]
fn a_large_response_held_by_flow_control_does_not_stop_the_connection() {
    use metastore_proto::etcdserverpb::{PutRequest, RangeRequest, RangeResponse};
    const CALLS: usize = 5000;
    on_each_driver(&[], |driver, addr| async move {
        // Thousands of small answers arrive in one burst once the client reads: `h2` counts
        // small DATA frames buffered before the application takes them, and ends the connection
        // past a budget (half its window by default) whatever the server; raise it.
        let mut b = h2::client::Builder::new();
        b.data_frame_budget(64 << 20);
        let c = connect_with(addr, &b).await;
        for i in 0..4u8 {
            let put = PutRequest { key: vec![b'b', i], value: vec![i; 1_400_000], ..Default::default() };
            let r = c.call("/etcdserverpb.KV/Put", &[], grpc_frame(0, &put.encode_to_vec())).await;
            assert_eq!(r.status().0, 0, "[{driver}] {r:?}");
        }
        let range = RangeRequest { key: b"b".to_vec(), range_end: b"c".to_vec(), ..Default::default() };
        let (resp, mut tx) = c.start(grpc_request(addr, "/etcdserverpb.KV/Range", GRPC, &[])).await;
        tx.send_data(Bytes::from(grpc_frame(0, &range.encode_to_vec())), true).unwrap();
        let resp = resp.await.expect("range response head");
        // Nothing of the 5.6 MB body is read yet: the server holds what the window does not take.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut set = JoinSet::new();
        for _ in 0..CALLS {
            let (resp, mut tx) = c.start(grpc_request(addr, CHECK, GRPC, &[])).await;
            let _ = tx.send_data(Bytes::from(grpc_frame(0, &health_req(""))), true);
            set.spawn(read_reply(resp));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut body = Body { rx: resp.into_body(), buf: Vec::new() };
        let msg = body.next_message().await.expect("the range response");
        let r = RangeResponse::decode(&msg[..]).unwrap();
        assert_eq!(r.kvs.len(), 4, "[{driver}]");
        assert!(r.kvs.iter().all(|kv| kv.value.len() == 1_400_000), "[{driver}]");
        assert!(body.next_message().await.is_none());
        drop(body);
        drop(tx);
        let (mut serving, mut refused) = (0, 0);
        while let Some(r) = set.join_next().await {
            let r = r.unwrap();
            match r.status() {
                (0, _) => {
                    r.assert_serving();
                    serving += 1;
                }
                (8, m) if m.contains("too many requests waiting") => refused += 1,
                other => panic!("[{driver}] unexpected answer {other:?}: {r:?}"),
            }
        }
        eprintln!("[{driver}] {serving} checks answered, {refused} refused while the range was held");
        assert_eq!(serving + refused, CALLS);
        assert!(refused > 0, "[{driver}] {CALLS} calls queued while held: nothing bounds the queue");
        assert!(serving >= 4000, "[{driver}] only {serving} calls were queued and answered");
        c.check("").await.assert_serving();
        c.close().await;
    });
}

/// The rest of a plain (non-gRPC) body, releasing capacity as it arrives.
async fn read_all(body: &mut Body) -> String {
    while let Some(chunk) = body.rx.data().await {
        let chunk = chunk.expect("body");
        body.rx.flow_control().release_capacity(chunk.len()).unwrap();
        body.buf.extend_from_slice(&chunk);
    }
    String::from_utf8(std::mem::take(&mut body.buf)).unwrap()
}

#[test]
fn cancelled_calls_leave_the_server_healthy() {
    on_each_driver(&[], |driver, addr| async move {
        let c = connect(addr).await;
        let mut calls = 0usize;
        // A watch that is never cancelled: it must survive everything below.
        let (mut keeper, keeper_tx) = open_watch(&c, "", &[]).await;
        calls += 1;

        // One Watch: SERVING, then RST_STREAM(CANCEL); the connection still serves.
        let (body, mut tx) = open_watch(&c, "", &[]).await;
        calls += 1;
        tx.send_reset(Reason::CANCEL);
        drop((body, tx));
        c.check("").await.assert_serving();
        calls += 1;

        // 200 watches open at once (known and unknown services), then all cancelled.
        let mut open = Vec::new();
        for i in 0..200 {
            let service = if i % 2 == 0 { "" } else { "no.such.Service" };
            open.push(open_watch(&c, service, &[]).await);
            calls += 1;
        }
        for (_, tx) in &mut open {
            tx.send_reset(Reason::CANCEL);
        }
        drop(open);

        // 200 watches and 200 Checks reset right after sending, racing the server's reply.
        for path in [WATCH, CHECK] {
            for _ in 0..200 {
                let (resp, mut tx) = c.start(grpc_request(addr, path, GRPC, &[])).await;
                tx.send_data(Bytes::from(grpc_frame(0, &health_req(""))), true).unwrap();
                tx.send_reset(Reason::CANCEL);
                drop(resp);
                calls += 1;
            }
        }
        // Cancelled while the request body is still incomplete.
        for _ in 0..50 {
            let (resp, mut tx) = c.start(grpc_request(addr, CHECK, GRPC, &[])).await;
            tx.send_data(Bytes::from_static(&[0, 0, 0, 0, 9, 0x0a]), false).unwrap();
            tx.send_reset(Reason::CANCEL);
            drop(resp);
        }

        for _ in 0..100 {
            c.check("").await.assert_serving();
            calls += 1;
        }
        // The kept watch is still open: nothing more has arrived on it, and it has not ended.
        let more = tokio::time::timeout(Duration::from_millis(200), keeper.next_message()).await;
        assert!(more.is_err(), "[{driver}] the uncancelled watch got {more:?}");

        // A second connection holding watches, dropped without a goodbye (TCP close).
        let c2 = connect(addr).await;
        let mut held = Vec::new();
        for _ in 0..20 {
            held.push(open_watch(&c2, "", &[]).await);
            calls += 1;
        }
        c2.task.abort();
        drop(held);
        drop(c2.send);

        let ok = wait_for_metrics(addr, |m| open_connections(m) == 1.0).await;
        let m = metrics(addr).await;
        assert!(ok, "[{driver}] expected 1 connection open:\n{m}");
        let accepted = common::parse_metric_sum(&m, "metastore_core_connections_accepted_total");
        assert_eq!(accepted, 2.0, "[{driver}] {m}");
        let full = common::parse_metric_sum(&m, "metastore_core_ring_full_total");
        assert_eq!(full, 0.0, "[{driver}] {m}");
        let sent = common::parse_metric_sum(&m, "metastore_core_shard_requests_total");
        assert!(sent <= calls as f64, "[{driver}] {sent} shard requests for at most {calls} calls:\n{m}");
        c.check("").await.assert_serving();
        drop((keeper, keeper_tx));
        c.close().await;
    });
}

async fn wait_for_metrics(addr: SocketAddr, f: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if f(&metrics(addr).await) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[test]
fn deadlines() {
    on_each_driver(&[], |driver, addr| async move {
        let c = connect(addr).await;

        // A Watch with a 200 ms deadline: SERVING, then DEADLINE_EXCEEDED in the trailers.
        let t0 = Instant::now();
        let (mut body, tx) = open_watch(&c, "", &[("grpc-timeout", "200m")]).await;
        drop(tx);
        assert_eq!(body.next_message().await, None);
        let trailers = body.rx.trailers().await.unwrap().expect("trailers");
        let took = t0.elapsed();
        drop(body);
        assert_eq!(trailers.get("grpc-status").unwrap(), "4", "{trailers:?}");
        assert_eq!(trailers.get("grpc-message").unwrap(), "context deadline exceeded");
        assert!(
            took >= Duration::from_millis(150) && took <= Duration::from_secs(5),
            "[{driver}] a 200 ms deadline ended after {took:?}"
        );

        // Several at once with different deadlines all end, none before its time.
        let mut set = JoinSet::new();
        for ms in [100u64, 300, 500, 300, 100] {
            let (resp, mut tx) = c.start(grpc_request(addr, WATCH, GRPC, &[("grpc-timeout", &format!("{ms}m"))])).await;
            tx.send_data(Bytes::from(grpc_frame(0, &health_req(""))), true).unwrap();
            let t0 = Instant::now();
            set.spawn(async move {
                let r = read_reply(resp).await;
                (ms, t0.elapsed(), r)
            });
        }
        while let Some(r) = set.join_next().await {
            let (ms, took, r) = r.unwrap();
            assert_eq!(r.health(), vec![SERVING]);
            assert_eq!(r.status(), (4, "context deadline exceeded".into()));
            assert!(
                took >= Duration::from_millis(ms * 3 / 4) && took <= Duration::from_secs(5),
                "[{driver}] a {ms} ms deadline ended after {took:?}"
            );
        }

        // Unary calls with long deadlines work (the largest value the spec allows included).
        for t in ["99999999H", "99999999S", "5S", "1000000m", "99999999n"] {
            let r = c.call(CHECK, &[("grpc-timeout", t)], grpc_frame(0, &health_req(""))).await;
            r.assert_serving();
        }
        // A deadline that has passed before the call is served.
        let r = c.call(CHECK, &[("grpc-timeout", "1n")], grpc_frame(0, &health_req(""))).await;
        assert_eq!(r.status(), (4, "context deadline exceeded".into()), "{r:?}");

        // Malformed grpc-timeout (bad unit, over 8 digits, no digits): grpc-go answers HTTP 400
        // with Internal "malformed grpc-timeout: …" (its text after the colon differs).
        for bad in ["abc", "123456789S", "10x", "S"] {
            let r = c.call(CHECK, &[("grpc-timeout", bad)], grpc_frame(0, &health_req(""))).await;
            assert!(r.trailers_only, "{bad}: {r:?}");
            assert_eq!(r.http, 400, "{bad}: {r:?}");
            let (code, msg) = r.status();
            assert_eq!(code, 13, "{bad}: {r:?}");
            assert!(msg.starts_with("malformed grpc-timeout"), "{bad}: {msg}");
        }
        c.check("").await.assert_serving();
        c.close().await;
    });
}

#[test]
fn errors_are_trailers_only_with_grpc_go_texts() {
    on_each_driver(&[], |_driver, addr| async move {
        let c = connect(addr).await;
        let ok_body = || grpc_frame(0, &health_req(""));

        c.call("/foo.Bar/Baz", &[], ok_body()).await.assert_error(200, 12, "unknown service foo.Bar");
        c.call("/no.such.v1.Service/Get", &[], ok_body()).await.assert_error(
            200,
            12,
            "unknown service no.such.v1.Service",
        );
        c.call("/grpc.health.v1.Health/Nope", &[], ok_body()).await.assert_error(
            200,
            12,
            "unknown method Nope for service grpc.health.v1.Health",
        );
        // Unknown service named in a request with no body at all.
        let (resp, tx) = c.start(grpc_request(addr, "/foo.Bar/Baz", GRPC, &[])).await;
        drop(tx);
        read_reply(resp).await.assert_error(200, 12, "unknown service foo.Bar");

        // A compressed message under an encoding the server lacks: UNIMPLEMENTED.
        let gz = [("grpc-encoding", "gzip")];
        c.call(CHECK, &gz, grpc_frame(1, b"\x1f\x8b not really gzip")).await.assert_error(
            200,
            12,
            "grpc: Decompressor is not installed for grpc-encoding \"gzip\"",
        );
        // The compressed flag without an encoding, and an unknown flag: INTERNAL (grpc-go's texts).
        c.call(CHECK, &[], grpc_frame(1, b"x")).await.assert_error(
            200,
            13,
            "grpc: compressed flag set with identity or empty encoding",
        );
        c.call(CHECK, &[], grpc_frame(2, b"x")).await.assert_error(
            200,
            13,
            "grpc: received unexpected payload format 2",
        );

        // Not gRPC on a gRPC path: HTTP 415, as grpc-go's server answers.
        let (resp, mut tx) = c.start(grpc_request(addr, CHECK, "application/json", &[])).await;
        let _ = tx.send_data(Bytes::from_static(b"{}"), true);
        drop(tx);
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 415, "{resp:?}");
        drop(resp);

        // gRPC is POST only: grpc-go answers any other method with HTTP 405 and Internal.
        for method in ["GET", "PUT"] {
            let req = Request::builder()
                .method(method)
                .uri(format!("http://{addr}{CHECK}"))
                .header("content-type", GRPC)
                .header("te", "trailers")
                .body(())
                .unwrap();
            let (resp, mut tx) = c.start(req).await;
            let _ = tx.send_data(Bytes::from(ok_body()), true);
            drop(tx);
            read_reply(resp).await.assert_error(
                405,
                13,
                &format!("Received a HEADERS frame with :method \"{method}\" which should be POST"),
            );
        }

        // The subtype forms of the gRPC content type are gRPC.
        for ct in ["application/grpc+proto", "application/grpc;charset=utf-8"] {
            let (resp, mut tx) = c.start(grpc_request(addr, CHECK, ct, &[])).await;
            tx.send_data(Bytes::from(ok_body()), true).unwrap();
            read_reply(resp).await.assert_serving();
        }

        // The connection is fine after all of it.
        c.check("").await.assert_serving();
        c.close().await;
    });
}

/// Connections spread over the cores (SO_REUSEPORT): 100 connections, each with a call done and
/// all held open, show up in every core's gauge and leave it when closed.
#[test]
fn connections_spread_over_cores() {
    on_each_driver(&[], |driver, addr| async move {
        let mut clients = Vec::new();
        for _ in 0..100 {
            let c = connect(addr).await;
            c.check("").await.assert_serving();
            clients.push(c);
        }
        let m = metrics(addr).await;
        let per_core: Vec<f64> = m
            .lines()
            .filter_map(|l| l.strip_prefix(CONNECTIONS)?.strip_prefix("{core=\""))
            .map(|rest| rest.split_once("} ").unwrap().1.parse().unwrap())
            .collect();
        eprintln!("[{driver}] connections per core: {per_core:?}");
        let sum: f64 = per_core.iter().sum();
        assert!(sum >= 100.0, "[{driver}] {per_core:?}");
        if per_core.len() >= 2 {
            assert!(per_core.iter().all(|&n| n >= 1.0), "[{driver}] a core holds no connection: {per_core:?}");
        }
        for c in clients {
            c.close().await;
        }
        let ok = wait_for_metrics(addr, |m| open_connections(m) == 0.0).await;
        assert!(ok, "[{driver}] connections left open:\n{}", metrics(addr).await);
    });
}
