//! The HTTP/2 connection state machine, driven in-process by a scripted peer: every RFC 9113
//! rule the server enforces (stream states, flow control both ways, SETTINGS, CONTINUATION,
//! malformed header blocks) is provoked with hand-built frames and the server's exact answer
//! (RST_STREAM or GOAWAY and its code, or the data it sends) is checked. No sockets: bytes in,
//! frames out, so each case is deterministic and fast.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use metastore_net::frame::{self, flag, kind, ErrorCode, FrameHeader, PREFACE};
use metastore_net::h2::{Config, Connection, Handler, HeaderList};
use metastore_net::hpack;

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Headers(u32, Vec<(String, String)>, bool),
    Data(u32, Vec<u8>, bool),
    Reset(u32, ErrorCode),
}

#[derive(Default)]
struct Rec(Vec<Ev>);

impl Handler for Rec {
    fn on_headers(&mut self, id: u32, h: &HeaderList, end: bool) {
        let v = h.iter().map(|(n, v)| (String::from_utf8_lossy(n).into(), String::from_utf8_lossy(v).into())).collect();
        self.0.push(Ev::Headers(id, v, end));
    }
    fn on_data(&mut self, id: u32, d: &[u8], end: bool) {
        self.0.push(Ev::Data(id, d.to_vec(), end));
    }
    fn on_reset(&mut self, id: u32, code: ErrorCode) {
        self.0.push(Ev::Reset(id, code));
    }
}

#[derive(Debug)]
struct Frame {
    hdr: FrameHeader,
    payload: Vec<u8>,
}

/// A scripted client: builds frames, feeds them, and parses what the server wrote.
struct Peer {
    conn: Connection,
    rec: Rec,
    enc: hpack::Encoder,
    dec: hpack::Decoder,
    unparsed: Vec<u8>,
}

impl Peer {
    fn new(cfg: Config) -> Self {
        let mut p = Peer {
            conn: Connection::new(cfg),
            rec: Rec::default(),
            enc: hpack::Encoder::new(),
            dec: hpack::Decoder::new(4096),
            unparsed: Vec::new(),
        };
        p.feed(PREFACE);
        let mut b = Vec::new();
        frame::write_settings(&mut b, &[]);
        p.feed(&b);
        let frames = p.frames();
        assert_eq!(frames[0].hdr.kind, kind::SETTINGS, "server speaks first with SETTINGS");
        assert!(frames.iter().any(|f| f.hdr.kind == kind::SETTINGS && f.hdr.has(flag::ACK)));
        p
    }

    fn feed(&mut self, bytes: &[u8]) {
        let n = self.conn.recv(bytes, &mut self.rec);
        assert_eq!(n, bytes.len(), "whole frames must be consumed");
    }

    fn frames(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        self.conn.take_out(&mut out);
        self.unparsed.extend_from_slice(&out);
        let mut frames = Vec::new();
        let mut pos = 0;
        while self.unparsed.len() >= pos + 9 {
            let hdr = FrameHeader::parse(self.unparsed[pos..pos + 9].try_into().unwrap());
            let end = pos + 9 + hdr.len as usize;
            if self.unparsed.len() < end {
                break;
            }
            frames.push(Frame { hdr, payload: self.unparsed[pos + 9..end].to_vec() });
            pos = end;
        }
        self.unparsed.drain(..pos);
        frames
    }

    fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        self.enc.begin_block(&mut b);
        for (n, v) in fields {
            self.enc.encode_field(n.as_bytes(), v.as_bytes(), hpack::Indexing::Incremental, &mut b);
        }
        b
    }

    fn headers(&mut self, id: u32, fields: &[(&str, &str)], flags: u8) {
        let block = self.block(fields);
        let mut b = Vec::new();
        frame::write_header(&mut b, block.len(), kind::HEADERS, flags, id);
        b.extend_from_slice(&block);
        self.feed(&b);
    }

    fn request(&mut self, id: u32, end_stream: bool) {
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        self.headers(id, &req_fields(), flags);
    }

    fn raw(&mut self, len: usize, kind: u8, flags: u8, id: u32, payload: &[u8]) {
        let mut b = Vec::new();
        frame::write_header(&mut b, len, kind, flags, id);
        b.extend_from_slice(payload);
        self.feed(&b);
    }

    fn data(&mut self, id: u32, d: &[u8], end: bool) {
        let mut b = Vec::new();
        frame::write_header(&mut b, d.len(), kind::DATA, if end { flag::END_STREAM } else { 0 }, id);
        b.extend_from_slice(d);
        self.feed(&b);
    }

    fn settings(&mut self, s: &[(u16, u32)]) {
        let mut b = Vec::new();
        frame::write_settings(&mut b, s);
        self.feed(&b);
    }

    fn window_update(&mut self, id: u32, inc: u32) {
        let mut b = Vec::new();
        frame::write_header(&mut b, 4, kind::WINDOW_UPDATE, 0, id);
        b.extend_from_slice(&inc.to_be_bytes());
        self.feed(&b);
    }

    fn goaway_code(&mut self) -> Option<ErrorCode> {
        self.frames()
            .into_iter()
            .find(|f| f.hdr.kind == kind::GOAWAY)
            .map(|f| ErrorCode(frame::read_u32(&f.payload, 4).unwrap()))
    }

    fn rst_code(&mut self, id: u32) -> Option<ErrorCode> {
        self.frames()
            .into_iter()
            .find(|f| f.hdr.kind == kind::RST_STREAM && f.hdr.stream_id == id)
            .map(|f| ErrorCode(frame::read_u32(&f.payload, 0).unwrap()))
    }

    fn decode(&mut self, block: &[u8]) -> Vec<(String, String)> {
        let mut v = Vec::new();
        self.dec
            .decode(block, |n, val| {
                v.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(val).into_owned()))
            })
            .unwrap();
        v
    }
}

fn req_fields() -> Vec<(&'static str, &'static str)> {
    vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/a.B/C"),
        (":authority", "x"),
        ("content-type", "application/grpc"),
    ]
}

fn peer() -> Peer {
    Peer::new(Config::default())
}

#[test]
fn request_and_response_round_trip() {
    let mut p = peer();
    p.request(1, false);
    p.data(1, b"hello", true);
    assert!(matches!(&p.rec.0[0], Ev::Headers(1, f, false) if f.iter().any(|(n, v)| n == ":path" && v == "/a.B/C")));
    assert_eq!(p.rec.0[1], Ev::Data(1, b"hello".to_vec(), true));
    p.conn.send_headers(1, &[(b":status", b"200")], false);
    p.conn.send_data(1, b"world", false);
    p.conn.send_trailers(1, &[(b"grpc-status", b"0")]);
    let frames = p.frames();
    let kinds: Vec<u8> = frames.iter().map(|f| f.hdr.kind).collect();
    assert_eq!(kinds, [kind::HEADERS, kind::DATA, kind::HEADERS]);
    assert!(frames[2].hdr.has(flag::END_STREAM));
    let trailers = p.decode(&frames[2].payload.clone());
    assert_eq!(trailers, [("grpc-status".to_string(), "0".to_string())]);
    assert_eq!(p.conn.active_streams(), 0);
}

#[test]
fn ping_is_acked_with_the_same_payload() {
    let mut p = peer();
    p.raw(8, kind::PING, 0, 0, b"12345678");
    let f = p.frames();
    assert_eq!(f[0].hdr.kind, kind::PING);
    assert!(f[0].hdr.has(flag::ACK));
    assert_eq!(f[0].payload, b"12345678");
    p.raw(8, kind::PING, flag::ACK, 0, b"12345678");
    assert!(p.frames().is_empty(), "an ACK is not answered");
}

#[test]
fn connection_errors() {
    type Case = (&'static str, fn(&mut Peer), ErrorCode);
    let cases: &[Case] = &[
        ("ping on a stream", |p| p.raw(8, kind::PING, 0, 1, b"12345678"), ErrorCode::PROTOCOL_ERROR),
        ("short ping", |p| p.raw(7, kind::PING, 0, 0, b"1234567"), ErrorCode::FRAME_SIZE_ERROR),
        ("settings on a stream", |p| p.raw(0, kind::SETTINGS, 0, 1, b""), ErrorCode::PROTOCOL_ERROR),
        ("settings ack with payload", |p| p.raw(6, kind::SETTINGS, flag::ACK, 0, &[0; 6]), ErrorCode::FRAME_SIZE_ERROR),
        ("settings length", |p| p.raw(5, kind::SETTINGS, 0, 0, &[0; 5]), ErrorCode::FRAME_SIZE_ERROR),
        ("enable push 2", |p| p.settings(&[(2, 2)]), ErrorCode::PROTOCOL_ERROR),
        ("window too large", |p| p.settings(&[(4, 1 << 31)]), ErrorCode::FLOW_CONTROL_ERROR),
        ("frame size too small", |p| p.settings(&[(5, 16_383)]), ErrorCode::PROTOCOL_ERROR),
        ("frame size too large", |p| p.settings(&[(5, 1 << 24)]), ErrorCode::PROTOCOL_ERROR),
        ("data on stream 0", |p| p.data(0, b"x", false), ErrorCode::PROTOCOL_ERROR),
        ("data on idle stream", |p| p.data(1, b"x", false), ErrorCode::PROTOCOL_ERROR),
        ("headers on stream 0", |p| p.headers(0, &req_fields(), flag::END_HEADERS), ErrorCode::PROTOCOL_ERROR),
        ("even stream id", |p| p.headers(2, &req_fields(), flag::END_HEADERS), ErrorCode::PROTOCOL_ERROR),
        (
            "decreasing stream id",
            |p| {
                p.request(5, true);
                p.request(3, true);
            },
            ErrorCode::PROTOCOL_ERROR,
        ),
        ("rst on stream 0", |p| p.raw(4, kind::RST_STREAM, 0, 0, &[0; 4]), ErrorCode::PROTOCOL_ERROR),
        ("rst on idle stream", |p| p.raw(4, kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]), ErrorCode::PROTOCOL_ERROR),
        (
            "rst length",
            |p| {
                p.request(1, false);
                p.raw(3, kind::RST_STREAM, 0, 1, &[0; 3]);
            },
            ErrorCode::FRAME_SIZE_ERROR,
        ),
        ("window update 0 on connection", |p| p.window_update(0, 0), ErrorCode::PROTOCOL_ERROR),
        ("window update overflow", |p| p.window_update(0, (1 << 31) - 1), ErrorCode::FLOW_CONTROL_ERROR),
        ("window update on idle stream", |p| p.window_update(1, 1), ErrorCode::PROTOCOL_ERROR),
        ("window update length", |p| p.raw(3, kind::WINDOW_UPDATE, 0, 0, &[0; 3]), ErrorCode::FRAME_SIZE_ERROR),
        ("goaway on a stream", |p| p.raw(8, kind::GOAWAY, 0, 1, &[0; 8]), ErrorCode::PROTOCOL_ERROR),
        (
            "push promise",
            |p| p.raw(4, kind::PUSH_PROMISE, flag::END_HEADERS, 1, &[0, 0, 0, 2]),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "continuation without headers",
            |p| p.raw(0, kind::CONTINUATION, flag::END_HEADERS, 1, b""),
            ErrorCode::PROTOCOL_ERROR,
        ),
        ("frame over max size", |p| p.raw(16_385, kind::DATA, 0, 1, &[0; 16_385]), ErrorCode::FRAME_SIZE_ERROR),
        (
            "bad hpack",
            |p| p.raw(1, kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 1, b"\x40"),
            ErrorCode::COMPRESSION_ERROR,
        ),
        (
            "padding too long",
            |p| p.raw(2, kind::HEADERS, flag::END_HEADERS | flag::PADDED, 1, &[5, 0]),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "interleaved headers",
            |p| {
                let block = p.block(&req_fields());
                p.raw(block.len(), kind::HEADERS, 0, 1, &block);
                p.raw(8, kind::PING, 0, 0, b"12345678");
            },
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "continuation on another stream",
            |p| {
                let block = p.block(&req_fields());
                p.raw(block.len(), kind::HEADERS, 0, 1, &block);
                p.raw(0, kind::CONTINUATION, flag::END_HEADERS, 3, b"");
            },
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "headers on a closed stream",
            |p| {
                p.request(1, true);
                p.conn.send_headers(1, &[(b":status", b"200")], true);
                p.request(1, true);
            },
            ErrorCode::STREAM_CLOSED,
        ),
    ];
    for (name, act, code) in cases {
        let mut p = peer();
        act(&mut p);
        assert_eq!(p.goaway_code(), Some(*code), "{name}");
        assert!(p.conn.is_closed(), "{name}: a connection error closes");
        // After the error every byte is swallowed and nothing more is said.
        let n = p.conn.recv(b"garbage that is not a frame", &mut p.rec);
        assert_eq!(n, 27, "{name}");
        assert!(p.frames().is_empty(), "{name}");
    }
}

#[test]
fn malformed_requests_are_stream_errors() {
    let bad: &[&[(&str, &str)]] = &[
        &[(":method", "POST"), (":scheme", "http"), (":path", "/"), ("Upper", "x")],
        &[(":method", "POST"), (":scheme", "http"), (":path", "/"), ("bad name", "x")],
        &[(":method", "POST"), (":scheme", "http"), (":path", "/"), ("x", " leading")],
        &[(":method", "POST"), (":scheme", "http"), (":path", "/"), ("x", "a\rb")],
        &[(":method", "POST"), (":scheme", "http"), (":path", "/"), ("connection", "close")],
        &[(":method", "POST"), (":scheme", "http"), (":path", "/"), ("te", "gzip")],
        &[(":method", "POST"), (":scheme", "http"), (":path", "/"), (":status", "200")],
        &[(":method", "POST"), (":method", "POST"), (":scheme", "http"), (":path", "/")],
        &[(":method", "POST"), (":scheme", "http"), (":path", "")],
        &[(":scheme", "http"), (":path", "/")],
        &[(":method", "POST"), (":path", "/")],
        &[(":method", "POST"), (":scheme", "http")],
        &[(":method", "POST"), ("x", "y"), (":scheme", "http"), (":path", "/")],
        &[(":method", "CONNECT"), (":authority", "a:1"), (":scheme", "http")],
        &[(":method", "CONNECT")],
        &[(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "a"), ("host", "b")],
        &[(":method", "POST"), (":scheme", "http"), (":path", "/"), ("content-length", "x")],
    ];
    for fields in bad {
        let mut p = peer();
        p.headers(1, fields, flag::END_HEADERS | flag::END_STREAM);
        assert_eq!(p.rst_code(1), Some(ErrorCode::PROTOCOL_ERROR), "{fields:?}");
        assert!(p.rec.0.is_empty(), "{fields:?} must not reach the application");
        assert!(!p.conn.is_closed());
        // The connection (and its HPACK state) is intact: the next request is served.
        p.request(3, true);
        assert!(matches!(p.rec.0.last(), Some(Ev::Headers(3, _, true))), "{fields:?}");
    }
    // A well-formed CONNECT reaches the application.
    let mut p = peer();
    p.headers(1, &[(":method", "CONNECT"), (":authority", "a:1")], flag::END_HEADERS);
    assert!(matches!(p.rec.0.last(), Some(Ev::Headers(1, _, false))));
}

#[test]
fn content_length_must_match() {
    let mut p = peer();
    let mut f = req_fields();
    f.push(("content-length", "10"));
    p.headers(1, &f, flag::END_HEADERS);
    p.data(1, b"test", true);
    assert_eq!(p.rst_code(1), Some(ErrorCode::PROTOCOL_ERROR));
    assert_eq!(p.rec.0.last(), Some(&Ev::Reset(1, ErrorCode::PROTOCOL_ERROR)));
    let mut p = peer();
    p.headers(1, &f, flag::END_HEADERS | flag::END_STREAM);
    assert_eq!(p.rst_code(1), Some(ErrorCode::PROTOCOL_ERROR));
    let mut p = peer();
    f.pop();
    f.push(("content-length", "4"));
    p.headers(1, &f, flag::END_HEADERS);
    p.data(1, b"test", true);
    assert_eq!(p.rec.0.last(), Some(&Ev::Data(1, b"test".to_vec(), true)));
}

#[test]
fn stream_state_errors() {
    // DATA after the client ended the stream.
    let mut p = peer();
    p.request(1, true);
    p.data(1, b"x", true);
    assert_eq!(p.rst_code(1), Some(ErrorCode::STREAM_CLOSED));
    assert!(!p.conn.is_closed());
    // DATA after the client reset the stream.
    let mut p = peer();
    p.request(1, false);
    p.raw(4, kind::RST_STREAM, 0, 1, &8u32.to_be_bytes());
    assert_eq!(p.rec.0.last(), Some(&Ev::Reset(1, ErrorCode::CANCEL)));
    p.data(1, b"x", true);
    assert_eq!(p.rst_code(1), Some(ErrorCode::STREAM_CLOSED));
    // Trailers without END_STREAM.
    let mut p = peer();
    p.request(1, false);
    p.headers(1, &[("x-trailer", "1")], flag::END_HEADERS);
    assert_eq!(p.rst_code(1), Some(ErrorCode::PROTOCOL_ERROR));
    // Pseudo-header in trailers.
    let mut p = peer();
    p.request(1, false);
    p.headers(1, &[(":method", "POST")], flag::END_HEADERS | flag::END_STREAM);
    assert_eq!(p.rst_code(1), Some(ErrorCode::PROTOCOL_ERROR));
    // Valid trailers end the request.
    let mut p = peer();
    p.request(1, false);
    p.headers(1, &[("x-trailer", "1")], flag::END_HEADERS | flag::END_STREAM);
    assert_eq!(p.rec.0.last(), Some(&Ev::Data(1, vec![], true)));
    // PRIORITY: accepted and ignored; bad length or self-dependency is a stream error.
    let mut p = peer();
    p.raw(5, kind::PRIORITY, 0, 9, &[0, 0, 0, 1, 16]);
    assert!(p.frames().is_empty());
    p.raw(4, kind::PRIORITY, 0, 11, &[0; 4]);
    assert_eq!(p.rst_code(11), Some(ErrorCode::FRAME_SIZE_ERROR));
    p.raw(5, kind::PRIORITY, 0, 13, &[0, 0, 0, 13, 16]);
    assert_eq!(p.rst_code(13), Some(ErrorCode::PROTOCOL_ERROR));
    // A stream WINDOW_UPDATE of 0 is a stream error.
    let mut p = peer();
    p.request(1, false);
    p.window_update(1, 0);
    assert_eq!(p.rst_code(1), Some(ErrorCode::PROTOCOL_ERROR));
}

#[test]
fn concurrency_limit_refuses_streams() {
    let mut p = Peer::new(Config { max_concurrent_streams: 2, ..Config::default() });
    p.request(1, false);
    p.request(3, false);
    p.request(5, false);
    assert_eq!(p.rst_code(5), Some(ErrorCode::REFUSED_STREAM));
    assert_eq!(p.conn.active_streams(), 2);
}

#[test]
fn headers_and_continuation_are_reassembled() {
    let mut p = peer();
    let mut fields = req_fields();
    let long = "v".repeat(3000);
    fields.push(("x-long", &long));
    let block = p.block(&fields);
    let (a, rest) = block.split_at(10);
    let (b, c) = rest.split_at(rest.len() / 2);
    p.raw(a.len(), kind::HEADERS, flag::END_STREAM, 1, a);
    p.raw(b.len(), kind::CONTINUATION, 0, 1, b);
    assert!(p.rec.0.is_empty());
    p.raw(c.len(), kind::CONTINUATION, flag::END_HEADERS, 1, c);
    assert!(matches!(&p.rec.0[0], Ev::Headers(1, f, true) if f.iter().any(|(n, v)| n == "x-long" && v.len() == 3000)));
    // Padding and priority in HEADERS are understood.
    let block = p.block(&req_fields());
    let mut payload = vec![3u8];
    payload.extend_from_slice(&[0, 0, 0, 0, 255]);
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0; 3]);
    p.raw(payload.len(), kind::HEADERS, flag::END_HEADERS | flag::PADDED | flag::PRIORITY, 3, &payload);
    assert!(matches!(&p.rec.0[1], Ev::Headers(3, _, false)));
    // Padded DATA delivers only the data.
    p.raw(6, kind::DATA, flag::PADDED | flag::END_STREAM, 3, &[2, b'h', b'i', b'!', 0, 0]);
    assert_eq!(p.rec.0[2], Ev::Data(3, b"hi!".to_vec(), true));
}

#[test]
fn flow_control_holds_data_until_credit() {
    let mut p = peer();
    p.settings(&[(frame::setting::INITIAL_WINDOW_SIZE, 3)]);
    p.frames();
    p.request(1, true);
    p.conn.send_headers(1, &[(b":status", b"200")], false);
    p.conn.send_data(1, b"hello world", false);
    p.conn.send_trailers(1, &[(b"grpc-status", b"0")]);
    let f = p.frames();
    let data: Vec<&Frame> = f.iter().filter(|f| f.hdr.kind == kind::DATA).collect();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].payload, b"hel");
    assert!(!f.iter().any(|f| f.hdr.kind == kind::HEADERS && f.hdr.has(flag::END_STREAM)), "trailers wait behind data");
    assert_eq!(p.conn.blocked_bytes(), 8);
    // Lowering the initial window makes the stream's window negative: nothing may be sent.
    p.settings(&[(frame::setting::INITIAL_WINDOW_SIZE, 1)]);
    p.window_update(1, 2);
    let f = p.frames();
    assert!(!f.iter().any(|f| f.hdr.kind == kind::DATA), "window is -2 + 2 = 0");
    p.window_update(1, 100);
    let f = p.frames();
    let data: Vec<u8> = f.iter().filter(|f| f.hdr.kind == kind::DATA).flat_map(|f| f.payload.clone()).collect();
    assert_eq!(data, b"lo world");
    let last = f.last().unwrap();
    assert_eq!(last.hdr.kind, kind::HEADERS);
    assert!(last.hdr.has(flag::END_STREAM));
    assert_eq!(p.conn.active_streams(), 0);
    assert_eq!(p.conn.blocked_bytes(), 0);
}

#[test]
fn connection_window_is_shared_and_refilled() {
    let mut p = peer();
    // Our receive side: the server grants credit back as data is consumed.
    p.request(1, false);
    let chunk = vec![0u8; 16_384];
    for _ in 0..40 {
        p.data(1, &chunk, false);
    }
    let f = p.frames();
    assert!(f.iter().any(|f| f.hdr.kind == kind::WINDOW_UPDATE && f.hdr.stream_id == 1), "stream credit returned");
    // Exceeding the stream window is a stream error.
    let mut p = Peer::new(Config { stream_window_bytes: 10_000, ..Config::default() });
    p.request(1, false);
    p.data(1, &chunk[..10_000], false);
    p.frames();
    p.data(1, &chunk, false);
    assert_eq!(p.rst_code(1), Some(ErrorCode::FLOW_CONTROL_ERROR));
}

/// The streams' DATA payload bytes, in the order they left, as (stream, bytes) runs.
fn data_runs(frames: &[Frame]) -> Vec<(u32, usize)> {
    let mut runs: Vec<(u32, usize)> = Vec::new();
    for f in frames.iter().filter(|f| f.hdr.kind == kind::DATA && !f.payload.is_empty()) {
        match runs.last_mut() {
            Some((id, n)) if *id == f.hdr.stream_id => *n += f.payload.len(),
            _ => runs.push((f.hdr.stream_id, f.payload.len())),
        }
    }
    runs
}

#[test]
fn connection_credit_goes_to_streams_in_the_order_they_blocked() {
    // Regression: a stream cut short by the connection window went to the back of the queue, so
    // later streams took the next credit. A client that reads responses in order (and releases
    // connection credit only for what it read) then never gets the rest of the first: deadlock.
    let mut p = peer();
    let body = vec![1u8; 30_000];
    for id in [1, 3, 5, 7] {
        p.request(id, true);
        p.conn.send_headers(id, &[(b":status", b"200")], false);
        p.conn.send_data(id, &body, true);
    }
    // 65,535 bytes of connection credit: streams 1 and 3 whole, 5,535 bytes of stream 5.
    assert_eq!(data_runs(&p.frames()), [(1, 30_000), (3, 30_000), (5, 5_535)]);
    // No credit left: a response that must wait sends nothing, not an empty DATA frame (clients
    // count those as abuse).
    p.request(9, true);
    p.conn.send_headers(9, &[(b":status", b"200")], false);
    p.conn.send_data(9, b"later", true);
    assert!(!p.frames().iter().any(|f| f.hdr.kind == kind::DATA), "a DATA frame without credit");
    p.window_update(0, 10_000);
    assert_eq!(data_runs(&p.frames()), [(5, 10_000)], "stream 5 keeps its turn");
    p.window_update(0, 20_000);
    assert_eq!(data_runs(&p.frames()), [(5, 14_465), (7, 5_535)]);
    p.window_update(0, 1 << 20);
    assert_eq!(data_runs(&p.frames()), [(7, 24_465), (9, 5)]);
    assert_eq!(p.conn.active_streams(), 0);
    // A stream held by its own window lets the others use the connection's credit meanwhile.
    let mut p = peer();
    p.settings(&[(frame::setting::INITIAL_WINDOW_SIZE, 100)]);
    p.frames();
    for id in [1, 3] {
        p.request(id, true);
        p.conn.send_headers(id, &[(b":status", b"200")], false);
        p.conn.send_data(id, &body[..500], true);
    }
    assert_eq!(data_runs(&p.frames()), [(1, 100), (3, 100)]);
    p.window_update(3, 1000);
    assert_eq!(data_runs(&p.frames()), [(3, 400)]);
    p.window_update(1, 1000);
    assert_eq!(data_runs(&p.frames()), [(1, 400)]);
    assert_eq!(p.conn.active_streams(), 0);
}

#[test]
fn response_larger_than_frame_size_is_split() {
    let mut p = peer();
    p.request(1, true);
    p.conn.send_headers(1, &[(b":status", b"200")], false);
    let body = vec![7u8; 40_000];
    p.conn.send_data(1, &body, true);
    let f = p.frames();
    let data: Vec<&Frame> = f.iter().filter(|f| f.hdr.kind == kind::DATA).collect();
    assert!(data.iter().all(|f| f.payload.len() <= 16_384));
    assert_eq!(data.iter().map(|f| f.payload.len()).sum::<usize>(), 40_000);
    assert!(data.last().unwrap().hdr.has(flag::END_STREAM));
    // A larger peer frame size is honoured.
    let mut p = peer();
    p.settings(&[(frame::setting::MAX_FRAME_SIZE, 1 << 20), (frame::setting::INITIAL_WINDOW_SIZE, 1 << 20)]);
    p.window_update(0, 1 << 20);
    p.request(1, true);
    p.conn.send_data(1, &body, true);
    let f = p.frames();
    assert_eq!(f.iter().filter(|f| f.hdr.kind == kind::DATA).count(), 1);
}

#[test]
fn early_response_resets_the_unfinished_request() {
    let mut p = peer();
    p.request(1, false);
    p.conn.send_headers(1, &[(b":status", b"200"), (b"grpc-status", b"8")], true);
    assert_eq!(p.rst_code(1), Some(ErrorCode::NO_ERROR));
    // Data still in flight from the client is ignored, not answered.
    p.data(1, b"late", false);
    assert!(p.frames().is_empty());
    assert!(!p.conn.is_closed());
}

#[test]
fn graceful_drain() {
    let mut p = peer();
    p.request(1, false);
    p.conn.start_drain();
    let f = p.frames();
    let g = f.iter().find(|f| f.hdr.kind == kind::GOAWAY).unwrap();
    assert_eq!(frame::read_u32(&g.payload, 0), Some(1), "last stream id");
    assert_eq!(frame::read_u32(&g.payload, 4), Some(0), "NO_ERROR");
    assert!(!p.conn.is_done(), "stream 1 still runs");
    p.request(3, true);
    assert!(!p.rec.0.iter().any(|e| matches!(e, Ev::Headers(3, ..))), "streams after GOAWAY are ignored");
    p.data(1, b"x", true);
    p.conn.send_headers(1, &[(b":status", b"200")], true);
    assert!(p.conn.is_done());
}

#[test]
fn unknown_frames_and_flags_are_ignored() {
    let mut p = peer();
    p.raw(3, 0xfa, 0xff, 0, b"abc");
    p.raw(8, kind::PING, 0xfe, 0, b"abcdefgh"); // unknown flags, not ACK
    let f = p.frames();
    assert_eq!(f.len(), 1);
    assert!(f[0].hdr.has(flag::ACK));
    // The reserved bit of the stream id is ignored.
    let mut b = Vec::new();
    frame::write_header(&mut b, 8, kind::PING, 0, 0);
    b[5] |= 0x80;
    b.extend_from_slice(b"reserved");
    p.feed(&b);
    assert_eq!(p.frames()[0].payload, b"reserved");
}

#[test]
fn partial_frames_wait_for_more_bytes() {
    let mut conn = Connection::new(Config::default());
    let mut rec = Rec::default();
    let mut stream = PREFACE.to_vec();
    frame::write_settings(&mut stream, &[]);
    frame::write_ping(&mut stream, false, *b"abcdefgh");
    // Byte by byte: the preface and each frame are assembled across calls.
    let mut pending = Vec::new();
    for &b in &stream {
        pending.push(b);
        let n = conn.recv(&pending, &mut rec);
        pending.drain(..n);
    }
    assert!(pending.is_empty());
    let mut out = Vec::new();
    conn.take_out(&mut out);
    assert!(out.windows(8).any(|w| w == b"abcdefgh"));
}

#[test]
fn bad_preface_is_a_connection_error() {
    let mut conn = Connection::new(Config::default());
    let n = conn.recv(b"GET / HTTP/1.1\r\n\r\n", &mut Rec::default());
    assert_eq!(n, 18);
    assert!(conn.is_closed());
}

#[test]
fn continuation_flood_is_cut_off() {
    let mut p = peer();
    let block = p.block(&req_fields());
    p.raw(block.len(), kind::HEADERS, 0, 1, &block);
    for _ in 0..100 {
        if p.conn.is_closed() {
            break;
        }
        p.raw(0, kind::CONTINUATION, 0, 1, b"");
    }
    assert_eq!(p.goaway_code(), Some(ErrorCode::ENHANCE_YOUR_CALM));
}

#[test]
fn response_headers_use_the_dynamic_table() {
    let mut p = peer();
    for id in [1u32, 3, 5] {
        p.request(id, true);
        p.conn.send_headers(id, &[(b":status", b"200"), (b"content-type", b"application/grpc")], false);
        p.conn.send_trailers(id, &[(b"grpc-status", b"0")]);
    }
    let f = p.frames();
    let blocks: Vec<Vec<u8>> = f.iter().filter(|f| f.hdr.kind == kind::HEADERS).map(|f| f.payload.clone()).collect();
    assert_eq!(blocks.len(), 6);
    for b in &blocks {
        p.decode(b);
    }
    assert!(blocks[4].len() <= 2, "repeated response headers are indexed: {:?}", blocks[4]);
    assert_eq!(blocks[5].len(), 1, "repeated grpc-status: 0 is one byte");
}
