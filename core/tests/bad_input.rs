//! Hostile and broken clients against the real server: malformed frames, bad HPACK indices,
//! oversized header lists, CONTINUATION floods, a message that never completes, clients that
//! vanish mid-request. Each gets the protocol's error (checked by code); meanwhile a well-behaved
//! connection keeps being served; afterwards the open-connection count returns to zero and, after
//! many rounds, RSS has not grown (nothing leaks per bad connection). Runs under both io drivers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{Ending, RawConn};
use metastore_net::frame::{self, kind, ErrorCode};

const T: Duration = Duration::from_secs(10);

fn health_check(c: &mut RawConn, id: u32) {
    c.grpc_call(id, "/grpc.health.v1.Health/Check", false);
    c.data(id, &RawConn::grpc_message(&[]), true);
    let t = c.trailers(id, T).expect("health check answered");
    assert!(t.iter().any(|(n, v)| n == "grpc-status" && v == "0"), "{t:?}");
}

type Attack = (&'static str, fn(SocketAddr) -> Ending, Ending);

fn attacks() -> Vec<Attack> {
    vec![
        (
            "not http at all",
            |a| {
                let mut c = RawConn::connect(a);
                c.send(b"\x16\x03\x01\x02\x00garbage that is no preface\r\n");
                c.ending(0, T)
            },
            Ending::GoAway(ErrorCode::PROTOCOL_ERROR),
        ),
        (
            "frame larger than SETTINGS_MAX_FRAME_SIZE",
            |a| {
                let mut c = RawConn::handshake(a);
                let mut b = Vec::new();
                frame::write_header(&mut b, 16_385, kind::DATA, 0, 1);
                b.extend_from_slice(&[0; 16_385]);
                c.send(&b);
                c.ending(1, T)
            },
            Ending::GoAway(ErrorCode::FRAME_SIZE_ERROR),
        ),
        (
            "bad HPACK index",
            |a| {
                let mut c = RawConn::handshake(a);
                let mut b = Vec::new();
                frame::write_header(&mut b, 2, kind::HEADERS, frame::flag::END_HEADERS, 1);
                b.extend_from_slice(&[0xff, 0x7f]);
                c.send(&b);
                c.ending(1, T)
            },
            Ending::GoAway(ErrorCode::COMPRESSION_ERROR),
        ),
        (
            "header list over the limit",
            |a| {
                let mut c = RawConn::handshake(a);
                let big = "x".repeat(4000);
                let mut fields = vec![(":method", "POST"), (":scheme", "http"), (":path", "/a.B/C")];
                for _ in 0..20 {
                    fields.push(("x-big", big.as_str()));
                }
                let block = c.block(&fields);
                let mut b = Vec::new();
                frame::write_header_block(&mut b, 1, &block, true, 16_384);
                c.send(&b);
                c.ending(1, T)
            },
            Ending::Rst(1, ErrorCode::PROTOCOL_ERROR),
        ),
        (
            "CONTINUATION flood",
            |a| {
                let mut c = RawConn::handshake(a);
                let mut b = Vec::new();
                frame::write_header(&mut b, 0, kind::HEADERS, 0, 1);
                for _ in 0..1000 {
                    frame::write_header(&mut b, 0, kind::CONTINUATION, 0, 1);
                }
                c.send(&b);
                c.ending(1, T)
            },
            Ending::GoAway(ErrorCode::ENHANCE_YOUR_CALM),
        ),
        (
            "message that never finishes, then the client vanishes",
            |a| {
                let mut c = RawConn::handshake(a);
                c.grpc_call(1, "/grpc.health.v1.Health/Check", false);
                let mut m = vec![0u8];
                m.extend_from_slice(&(1_000_000u32).to_be_bytes());
                m.extend_from_slice(&[1; 100]);
                c.data(1, &m, false);
                c.ending(1, Duration::from_millis(150))
            },
            Ending::Silent,
        ),
        (
            "half a frame, then the client vanishes",
            |a| {
                let mut c = RawConn::handshake(a);
                let mut b = Vec::new();
                frame::write_header(&mut b, 100, kind::DATA, 0, 1);
                b.extend_from_slice(&[0; 10]);
                c.send(&b);
                c.ending(1, Duration::from_millis(100))
            },
            Ending::Silent,
        ),
        (
            "HTTP/1.1 head without an end",
            |a| {
                let mut c = RawConn::connect(a);
                c.send(b"GET / HTTP/1.1\r\n");
                c.send(&vec![b'x'; 10_000]);
                c.ending(0, T)
            },
            Ending::Closed,
        ),
    ]
}

#[test]
fn bad_input_gets_protocol_errors_and_leaks_nothing() {
    for driver in common::DRIVERS {
        let srv = common::TestServer::start(driver, &[]);
        let mut good = RawConn::handshake(srv.addr);
        let mut id = 1;
        health_check(&mut good, id);
        let run_round = |good: &mut RawConn, id: &mut u32, check: bool| {
            for (name, attack, want) in attacks() {
                let got = attack(srv.addr);
                if check {
                    assert_eq!(got, want, "[{driver}] {name}");
                }
                *id += 2;
                health_check(good, *id);
            }
        };
        run_round(&mut good, &mut id, true);
        let rss_warm = srv.rss_kib();
        for _ in 0..20 {
            run_round(&mut good, &mut id, false);
        }
        let rss_after = srv.rss_kib();
        eprintln!("[{driver}] RSS after warm-up {rss_warm} KiB, after 20 rounds {rss_after} KiB");
        assert!(rss_after <= rss_warm + 8 * 1024, "[{driver}] RSS grew from {rss_warm} to {rss_after} KiB");
        drop(good);
        let back = common::wait_until(10, || srv.metric_sum("metastore_core_connections") == 0.0);
        assert!(back, "[{driver}] connections did not return to 0:\n{}", srv.metrics());
        srv.stop();
    }
}
