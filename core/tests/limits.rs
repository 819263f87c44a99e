//! The front door's limits and defences, each against a hostile client on a raw socket, under
//! both io drivers: MAX_CONCURRENT_STREAMS and MAX_HEADER_LIST_SIZE (advertised and enforced),
//! the per-core connection limit, the idle timeout, keepalive enforcement (too_many_pings), the
//! request-rate limits, rapid reset, CONTINUATION, SETTINGS and PING floods, HPACK abuse,
//! zero-window stalls and slowloris. Each checks the protocol's answer, the `metastore_*`
//! counter of the defence, and that a well-behaved connection is still served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::raw::{Ending, RawConn};
use common::TestServer;
use metastore_net::frame::{self, flag, kind, setting, ErrorCode, PREFACE};
use metastore_net::hpack;
use metastore_proto::etcdserverpb as pb;
use prost::Message;

const T: Duration = Duration::from_secs(10);

fn health_check(c: &mut RawConn, id: u32) {
    c.grpc_call(id, "/grpc.health.v1.Health/Check", false);
    c.data(id, &RawConn::grpc_message(&[]), true);
    let t = c.trailers(id, T).expect("health check answered");
    assert!(t.iter().any(|(n, v)| n == "grpc-status" && v == "0"), "{t:?}");
}

/// A fresh connection that gets one health check answered.
fn still_serves(addr: SocketAddr) {
    let mut c = RawConn::handshake(addr);
    health_check(&mut c, 1);
}

/// The server's SETTINGS (its first frame).
fn server_settings(c: &mut RawConn) -> Vec<(u16, u32)> {
    loop {
        let f = c.next_frame(T).expect("server SETTINGS");
        if f.hdr.kind == kind::SETTINGS && !f.hdr.has(flag::ACK) {
            return f
                .payload
                .chunks_exact(6)
                .map(|e| (u16::from_be_bytes([e[0], e[1]]), u32::from_be_bytes([e[2], e[3], e[4], e[5]])))
                .collect();
        }
    }
}

/// Reads until GOAWAY: its code and debug text; None if the connection closed or went silent.
fn goaway(c: &mut RawConn, timeout: Duration) -> Option<(ErrorCode, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let f = c.next_frame(left)?;
        if f.hdr.kind == kind::GOAWAY {
            let code = ErrorCode(frame::read_u32(&f.payload, 4).unwrap());
            return Some((code, String::from_utf8_lossy(&f.payload[8..]).into_owned()));
        }
    }
}

/// A unary call; its grpc-status and grpc-message.
fn unary(c: &mut RawConn, id: u32, path: &str, msg: &[u8]) -> (String, String) {
    c.grpc_call(id, path, false);
    c.data(id, &RawConn::grpc_message(msg), true);
    status_of(c.trailers(id, T).unwrap_or_else(|| panic!("{path} on stream {id} answered")))
}

fn status_of(t: Vec<(String, String)>) -> (String, String) {
    let get = |k: &str| t.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    (get("grpc-status"), get("grpc-message"))
}

fn metric(srv: &TestServer, name: &str) -> f64 {
    srv.metric_sum(name)
}

fn range_req(key: &[u8]) -> Vec<u8> {
    pb::RangeRequest { key: key.to_vec(), ..Default::default() }.encode_to_vec()
}

const RANGE: &str = "/etcdserverpb.KV/Range";

#[test]
fn streams_and_header_lists_are_advertised_and_enforced() {
    for driver in common::DRIVERS {
        let srv = TestServer::start(driver, &["--max-concurrent-streams", "4", "--max-header-list-size", "4096"]);
        let mut c = RawConn::handshake(srv.addr);
        let settings = server_settings(&mut c);
        assert!(settings.contains(&(setting::MAX_CONCURRENT_STREAMS, 4)), "[{driver}] {settings:?}");
        assert!(settings.contains(&(setting::MAX_HEADER_LIST_SIZE, 4096)), "[{driver}] {settings:?}");
        // Four calls left open; the fifth is refused.
        for id in [1, 3, 5, 7] {
            c.grpc_call(id, "/grpc.health.v1.Health/Check", false);
        }
        c.grpc_call(9, "/grpc.health.v1.Health/Check", false);
        assert_eq!(c.ending(9, T), Ending::Rst(9, ErrorCode::REFUSED_STREAM), "[{driver}]");
        // Once one finishes, a new one is taken.
        c.data(1, &RawConn::grpc_message(&[]), true);
        assert!(c.trailers(1, T).is_some());
        health_check(&mut c, 11);
        // A header list over 4096 bytes (one huge value, in CONTINUATION frames) is refused, and
        // the connection goes on: 6000 'a's Huffman-code to 3750 bytes, so the block is within
        // the limit encoded.
        let big = "a".repeat(6000);
        let block = c.block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/grpc.health.v1.Health/Check"),
            ("content-type", "application/grpc"),
            ("x-huge", &big),
        ]);
        let mut b = Vec::new();
        frame::write_header_block(&mut b, 13, &block, true, 4000);
        c.send(&b);
        assert_eq!(c.ending(13, T), Ending::Rst(13, ErrorCode::PROTOCOL_ERROR), "[{driver}]");
        health_check(&mut c, 15);
        assert!(metric(&srv, "metastore_streams_refused_total") >= 1.0, "[{driver}]");
        assert!(metric(&srv, "metastore_header_lists_too_large_total") >= 1.0, "[{driver}]");
        // A block over the limit even encoded is not decoded: the connection is sent away.
        let big = "v".repeat(6000);
        let block = c.block(&[(":method", "POST"), ("x-huge", &big)]);
        assert!(block.len() > 4096);
        let mut b = Vec::new();
        frame::write_header_block(&mut b, 17, &block, true, 4000);
        c.send(&b);
        assert_eq!(c.ending(17, T), Ending::GoAway(ErrorCode::ENHANCE_YOUR_CALM), "[{driver}]");
        srv.stop();
    }
}

#[test]
fn connection_limit_and_idle_timeout() {
    for driver in common::DRIVERS {
        let srv = TestServer::start(
            driver,
            &["--cores", "1", "--max-connections-per-core", "4", "--idle-connection-timeout", "600ms"],
        );
        // Three held connections plus one that keeps a call open: the core is full.
        let mut held: Vec<RawConn> = (0..3).map(|_| RawConn::handshake(srv.addr)).collect();
        for c in &mut held {
            health_check(c, 1);
        }
        let mut busy = RawConn::handshake(srv.addr);
        health_check(&mut busy, 1);
        busy.grpc_call(3, "/grpc.health.v1.Health/Check", false); // left open: not idle
        let mut extra = RawConn::handshake(srv.addr);
        assert!(extra.next_frame(T).is_none(), "[{driver}] a fifth connection is closed at once");
        // The idle ones are sent GOAWAY(NO_ERROR) after the timeout; the one with a call is not.
        let started = Instant::now();
        for c in &mut held {
            let g = goaway(c, T);
            assert_eq!(g.map(|g| g.0), Some(ErrorCode::NO_ERROR), "[{driver}]");
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "[{driver}] {took:?}");
        drop(held);
        assert!(common::wait_until(5, || metric(&srv, "metastore_idle_connections_closed_total") >= 3.0));
        assert!(metric(&srv, "metastore_connections_rejected_total") >= 1.0, "[{driver}]");
        busy.data(3, &RawConn::grpc_message(&[]), true);
        assert!(busy.trailers(3, T).is_some(), "[{driver}] the busy connection was kept");
        // With the idle ones gone, connections are taken again.
        still_serves(srv.addr);
        srv.stop();
    }
}

#[test]
fn pings_too_often_get_too_many_pings() {
    for driver in common::DRIVERS {
        let srv = TestServer::start(driver, &[]);
        // etcd's default policy (5 s, no pings without a call): the fourth ping goes too far.
        let mut c = RawConn::handshake(srv.addr);
        health_check(&mut c, 1);
        let mut b = Vec::new();
        for i in 0..4u8 {
            frame::write_ping(&mut b, false, [i; 8]);
        }
        c.send(&b);
        let g = goaway(&mut c, T);
        assert_eq!(g, Some((ErrorCode::ENHANCE_YOUR_CALM, "too_many_pings".into())), "[{driver}]");
        assert!(metric(&srv, "metastore_too_many_pings_total") >= 1.0, "[{driver}]");
        srv.stop();
        // With a call open, pings --grpc-keepalive-min-time apart are fine.
        let srv = TestServer::start(driver, &["--grpc-keepalive-min-time", "50ms"]);
        let mut c = RawConn::handshake(srv.addr);
        c.grpc_call(1, "/grpc.health.v1.Health/Check", false);
        for i in 0..8u8 {
            let mut b = Vec::new();
            frame::write_ping(&mut b, false, [i; 8]);
            c.send(&b);
            std::thread::sleep(Duration::from_millis(80));
        }
        c.data(1, &RawConn::grpc_message(&[]), true);
        assert!(c.trailers(1, T).is_some(), "[{driver}] pinging within the policy is fine");
        assert_eq!(metric(&srv, "metastore_too_many_pings_total"), 0.0, "[{driver}]");
        srv.stop();
    }
}

#[test]
fn request_rate_limits_answer_too_many_requests() {
    for driver in common::DRIVERS {
        let srv = TestServer::start(
            driver,
            &["--cores", "1", "--request-rate-limit-per-connection", "20", "--request-rate-limit-per-core", "30"],
        );
        let mut a = RawConn::handshake(srv.addr);
        let mut b = RawConn::handshake(srv.addr);
        let started = Instant::now();
        let (mut ok, mut limited) = (0, 0);
        for i in 0..40u32 {
            let c = if i % 2 == 0 { &mut a } else { &mut b };
            let id = 1 + 2 * (i / 2);
            match unary(c, id, RANGE, &range_req(b"k")) {
                (s, _) if s == "0" => ok += 1,
                (s, m) => {
                    assert_eq!((s.as_str(), m.as_str()), ("8", "etcdserver: too many requests"), "[{driver}]");
                    limited += 1;
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        // The core's bucket: 30 at once, 30 a second after.
        assert!(ok as f64 <= 30.0 + 30.0 * secs + 1.0 && limited > 0, "[{driver}] {ok} ok, {limited} limited");
        // One connection alone: 20 at once.
        let srv2 = TestServer::start(driver, &["--request-rate-limit-per-connection", "20"]);
        let mut c = RawConn::handshake(srv2.addr);
        let started = Instant::now();
        let answers: Vec<_> = (0..40u32).map(|i| unary(&mut c, 1 + 2 * i, RANGE, &range_req(b"k")).0).collect();
        let oks = answers.iter().filter(|s| *s == "0").count();
        let secs = started.elapsed().as_secs_f64();
        assert!(oks >= 20 && oks as f64 <= 20.0 + 20.0 * secs + 1.0, "[{driver}] {oks} ok in {secs:.2}s");
        // Health checks are never limited.
        for i in 0..30 {
            health_check(&mut c, 101 + 2 * i);
        }
        assert!(metric(&srv, "metastore_rate_limited_core_total") >= 1.0, "[{driver}]");
        assert!(metric(&srv2, "metastore_rate_limited_connection_total") >= 1.0, "[{driver}]");
        srv.stop();
        srv2.stop();
    }
}

/// HEADERS + RST_STREAM pairs as fast as the socket takes them (CVE-2023-44487).
fn rapid_reset(addr: SocketAddr) -> Option<(ErrorCode, String)> {
    let mut c = RawConn::handshake(addr);
    let mut b = Vec::new();
    for i in 0..5000u32 {
        let id = 1 + 2 * i;
        let block = c.block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.KV/Range"),
            ("content-type", "application/grpc"),
        ]);
        frame::write_header(&mut b, block.len(), kind::HEADERS, flag::END_HEADERS, id);
        b.extend_from_slice(&block);
        frame::write_rst_stream(&mut b, id, ErrorCode::CANCEL);
    }
    c.send(&b);
    goaway(&mut c, T)
}

#[test]
fn floods_get_enhance_your_calm() {
    for driver in common::DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let mut good = RawConn::handshake(srv.addr);
        health_check(&mut good, 1);
        let rss_before = srv.rss_kib();

        let g = rapid_reset(srv.addr);
        assert_eq!(g.map(|g| g.0), Some(ErrorCode::ENHANCE_YOUR_CALM), "[{driver}] rapid reset");
        assert!(metric(&srv, "metastore_rapid_reset_goaways_total") >= 1.0, "[{driver}]");
        health_check(&mut good, 3);

        // CONTINUATION flood: one header block that never ends.
        let mut c = RawConn::handshake(srv.addr);
        let mut b = Vec::new();
        frame::write_header(&mut b, 10, kind::HEADERS, 0, 1);
        b.extend_from_slice(&[0x82; 10]);
        for _ in 0..200 {
            frame::write_header(&mut b, 100, kind::CONTINUATION, 0, 1);
            b.extend_from_slice(&[0x82; 100]);
        }
        c.send(&b);
        assert_eq!(goaway(&mut c, T).map(|g| g.0), Some(ErrorCode::ENHANCE_YOUR_CALM), "[{driver}] continuation");
        assert!(metric(&srv, "metastore_continuation_flood_goaways_total") >= 1.0, "[{driver}]");
        health_check(&mut good, 5);

        // SETTINGS and PING floods from clients that do not read: the frames are refused long
        // before the unread acknowledgements could pile up.
        for (n, (what, frame_kind)) in [("settings", kind::SETTINGS), ("ping", kind::PING)].into_iter().enumerate() {
            let mut c = RawConn::handshake(srv.addr);
            let mut b = Vec::new();
            for i in 0..30_000u32 {
                if frame_kind == kind::SETTINGS {
                    frame::write_settings(&mut b, &[(setting::INITIAL_WINDOW_SIZE, 65_535 + (i % 2))]);
                } else {
                    frame::write_ping(&mut b, false, [i as u8; 8]);
                }
            }
            // Written from a helper thread, since the server may stop reading before all of it.
            let mut sock = c.sock.try_clone().unwrap();
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                let _ = sock.write_all(&b);
            });
            std::thread::sleep(Duration::from_millis(300));
            let g = goaway(&mut c, T);
            assert_eq!(g.map(|g| g.0), Some(ErrorCode::ENHANCE_YOUR_CALM), "[{driver}] {what} flood");
            writer.join().unwrap();
            health_check(&mut good, 7 + 2 * n as u32);
        }
        let floods = metric(&srv, "metastore_frame_flood_goaways_total")
            + metric(&srv, "metastore_control_queue_goaways_total")
            + metric(&srv, "metastore_too_many_pings_total");
        assert!(floods >= 2.0, "[{driver}] {floods}");

        // HPACK: a dynamic table size update above what we advertised ends the connection...
        let mut c = RawConn::handshake(srv.addr);
        let mut block = Vec::new();
        hpack::encode_integer(1 << 20, 5, 0x20, &mut block);
        block.push(0x83); // :method POST
        let mut b = Vec::new();
        frame::write_header_block(&mut b, 1, &block, true, 16_384);
        c.send(&b);
        assert_eq!(goaway(&mut c, T).map(|g| g.0), Some(ErrorCode::COMPRESSION_ERROR), "[{driver}] table size");
        assert!(metric(&srv, "metastore_hpack_errors_total") >= 1.0, "[{driver}]");
        // ...and churning the table with 4 KiB entries (each evicts all) costs the client only.
        let mut c = RawConn::handshake(srv.addr);
        let value = "z".repeat(4000);
        for i in 0..200u32 {
            let id = 1 + 2 * i;
            let name = format!("x-churn-{i}");
            let block = c.block(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/grpc.health.v1.Health/Check"),
                ("content-type", "application/grpc"),
                (&name, &value),
            ]);
            let mut b = Vec::new();
            frame::write_header_block(&mut b, id, &block, false, 16_384);
            c.send(&b);
            c.data(id, &RawConn::grpc_message(&[]), true);
        }
        assert!(c.trailers(399, T).is_some(), "[{driver}] the churning client is served");
        health_check(&mut good, 11);
        let rss_after = srv.rss_kib();
        eprintln!("[{driver}] RSS {rss_before} KiB before the floods, {rss_after} KiB after");
        assert!(rss_after < rss_before + 32 * 1024, "[{driver}] RSS grew from {rss_before} to {rss_after} KiB");
        srv.stop();
    }
}

#[test]
fn zero_window_client_is_bounded() {
    for driver in common::DRIVERS {
        let srv = TestServer::start(driver, &[]);
        let mut good = RawConn::handshake(srv.addr);
        let value = vec![b'v'; 256 << 10];
        let put = pb::PutRequest { key: b"big".to_vec(), value, ..Default::default() }.encode_to_vec();
        good.grpc_call(1, "/etcdserverpb.KV/Put", false);
        let msg = RawConn::grpc_message(&put);
        for (i, chunk) in msg.chunks(16_384).enumerate() {
            good.data(1, chunk, (i + 1) * 16_384 >= msg.len());
        }
        assert_eq!(status_of(good.trailers(1, T).unwrap()).0, "0");
        let rss_before = srv.rss_kib();
        // A client that grants no window at all, asking for the 256 KiB value 6000 times.
        let mut c = RawConn::connect(srv.addr);
        let mut b = PREFACE.to_vec();
        frame::write_settings(&mut b, &[(setting::INITIAL_WINDOW_SIZE, 0)]);
        let req = RawConn::grpc_message(&range_req(b"big"));
        c.send(&b);
        let mut b = Vec::new();
        let mut batches = Vec::new();
        for i in 0..6000u32 {
            if i == 3000 {
                batches.push(std::mem::take(&mut b));
            }
            let id = 1 + 2 * i;
            let block = c.block(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", RANGE),
                ("content-type", "application/grpc"),
            ]);
            frame::write_header(&mut b, block.len(), kind::HEADERS, flag::END_HEADERS, id);
            b.extend_from_slice(&block);
            frame::write_data(&mut b, id, &req, true, 16_384);
        }
        batches.push(b);
        // The second half after the first answers are stuck: the connection is held by then.
        for b in batches {
            c.send(&b);
            std::thread::sleep(Duration::from_millis(500));
        }
        // Read what comes (headers and refusals are not flow controlled) for a while.
        let mut refused = 0;
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Some(f) = c.next_frame(deadline.saturating_duration_since(Instant::now())) {
            if f.hdr.kind == kind::HEADERS && f.hdr.has(flag::END_STREAM) {
                refused += 1;
            }
        }
        let rss_after = srv.rss_kib();
        eprintln!("[{driver}] zero window: {refused} calls ended, RSS {rss_before} -> {rss_after} KiB");
        assert!(metric(&srv, "metastore_flow_control_holds_total") >= 1.0, "[{driver}]");
        assert!(metric(&srv, "metastore_flow_control_refused_total") >= 1.0, "[{driver}]");
        // Responses held for it: a few MiB (4 MiB of DATA + what was in flight), not 6000 x 256 KiB.
        assert!(rss_after < rss_before + 48 * 1024, "[{driver}] RSS grew from {rss_before} to {rss_after} KiB");
        health_check(&mut good, 3);
        drop(c);
        assert!(common::wait_until(10, || metric(&srv, "metastore_core_connections") == 1.0));
        srv.stop();
    }
}

#[test]
fn slowloris_is_cut_by_the_header_timeout() {
    for driver in common::DRIVERS {
        let srv = TestServer::start(driver, &["--read-header-timeout", "500ms"]);
        let mut good = RawConn::handshake(srv.addr);
        health_check(&mut good, 1);
        let started = Instant::now();
        // Four slow clients at once, each sending one byte every 100 ms of: the preface, a frame
        // header, a header block (HEADERS then CONTINUATIONs), an HTTP/1.1 request head.
        let slow: Vec<(&str, Vec<u8>, bool)> = {
            let mut frame_hdr = PREFACE.to_vec();
            frame::write_settings(&mut frame_hdr, &[]);
            let handshake = frame_hdr.len();
            frame::write_header(&mut frame_hdr, 4, kind::PING, 0, 0);
            let mut block = PREFACE.to_vec();
            frame::write_settings(&mut block, &[]);
            frame::write_header(&mut block, 1, kind::HEADERS, 0, 1);
            block.push(0x83);
            for _ in 0..40 {
                frame::write_header(&mut block, 1, kind::CONTINUATION, 0, 1);
                block.push(0x86);
            }
            let _ = handshake;
            vec![
                ("preface", PREFACE.to_vec(), true),
                ("frame", frame_hdr, true),
                ("header block", block, true),
                (
                    "http/1.1 head",
                    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n".to_vec(),
                    false,
                ),
            ]
        };
        let threads: Vec<_> = slow
            .into_iter()
            .map(|(what, bytes, h2)| {
                let addr = srv.addr;
                std::thread::spawn(move || {
                    let mut c = RawConn::connect(addr);
                    // The frame-sized parts go at once; the slow part byte by byte.
                    let fast = match what {
                        "frame" => bytes.len() - 9 + 1,
                        "header block" => PREFACE.len() + 9 + 9 + 1,
                        _ => 0,
                    };
                    c.send(&bytes[..fast]);
                    let mut sent = fast;
                    let t0 = Instant::now();
                    c.sock.set_nonblocking(true).unwrap();
                    let mut closed = false;
                    while sent < bytes.len() && t0.elapsed() < Duration::from_secs(8) {
                        std::thread::sleep(Duration::from_millis(100));
                        use std::io::Write;
                        if c.sock.write_all(&bytes[sent..sent + 1]).is_err() {
                            closed = true;
                            break;
                        }
                        sent += 1;
                        let mut buf = [0u8; 4096];
                        loop {
                            match c.sock.read(&mut buf) {
                                Ok(0) => {
                                    closed = true;
                                    break;
                                }
                                Ok(_) => continue,
                                Err(_) => break,
                            }
                        }
                        if closed {
                            break;
                        }
                    }
                    (what, h2, closed, sent, bytes.len(), t0.elapsed())
                })
            })
            .collect();
        for t in threads {
            let (what, _h2, closed, sent, total, took) = t.join().unwrap();
            eprintln!("[{driver}] slow {what}: closed={closed} after {sent}/{total} bytes in {took:?}");
            assert!(closed && sent < total, "[{driver}] slow {what} was not cut");
            assert!(took < Duration::from_secs(3), "[{driver}] slow {what} cut only after {took:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(6));
        health_check(&mut good, 3);
        assert!(metric(&srv, "metastore_header_timeouts_total") >= 4.0, "[{driver}]\n{}", srv.metrics());
        srv.stop();
    }
}
