//! The gRPC layer in-process: what a Service sees for each kind of request, and the exact
//! status (code, message, HTTP status, trailers-only or not) for every protocol failure grpc-go
//! answers itself: non-gRPC content types (415), malformed grpc-timeout, malformed paths,
//! compressed messages, oversize messages (checked on the prefix, before buffering), truncated
//! messages. Messages split across DATA frames at every byte boundary are reassembled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use metastore_net::frame::{self, flag, kind, FrameHeader, PREFACE};
use metastore_net::grpc::{self, CallHead, Code, GrpcConn, HttpResponse, Service, Status};
use metastore_net::hpack;

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Call(u32, String, String, Option<Duration>),
    Msg(u32, Vec<u8>),
    HalfClose(u32),
    Cancel(u32),
}

#[derive(Default)]
struct Svc {
    ev: Vec<Ev>,
    reject: Option<Status>,
    fail_messages: bool,
    /// Mark every call for the observer, with token `100 + id` (`CallHead::set_trace`).
    trace: bool,
}

impl Service for Svc {
    fn on_call(&mut self, id: u32, call: &CallHead<'_>) -> Result<(), Status> {
        self.ev.push(Ev::Call(id, call.service.into(), call.method.into(), call.timeout));
        if self.trace {
            call.set_trace(100 + id);
        }
        match &self.reject {
            Some(s) => Err(s.clone()),
            None => Ok(()),
        }
    }
    fn on_message(&mut self, id: u32, m: &[u8]) -> Result<(), Status> {
        self.ev.push(Ev::Msg(id, m.to_vec()));
        if self.fail_messages {
            return Err(Status::new(Code::INTERNAL, "bad message ✗"));
        }
        Ok(())
    }
    fn on_half_close(&mut self, id: u32) {
        self.ev.push(Ev::HalfClose(id));
    }
    fn on_cancel(&mut self, id: u32) {
        self.ev.push(Ev::Cancel(id));
    }
    fn on_http(&mut self, _method: &[u8], path: &[u8]) -> Option<HttpResponse> {
        (path == b"/ok").then(|| HttpResponse { status: 200, content_type: "text/plain", body: b"fine".to_vec() })
    }
}

struct Client {
    conn: GrpcConn,
    svc: Svc,
    enc: hpack::Encoder,
    dec: hpack::Decoder,
}

/// A response as the client sees it.
#[derive(Debug, Default)]
struct Resp {
    headers: Vec<Vec<(String, String)>>,
    data: Vec<u8>,
    ended: bool,
    rst: Option<u32>,
    header_frames: usize,
}

impl Resp {
    fn get(&self, name: &str) -> Option<String> {
        self.headers.iter().flatten().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }
}

impl Client {
    fn new(cfg: grpc::Config) -> Self {
        let mut c = Client {
            conn: GrpcConn::new(cfg),
            svc: Svc::default(),
            enc: hpack::Encoder::new(),
            dec: hpack::Decoder::new(4096),
        };
        let mut b = PREFACE.to_vec();
        frame::write_settings(&mut b, &[]);
        c.feed(&b);
        c.read();
        c
    }

    fn feed(&mut self, b: &[u8]) {
        assert_eq!(self.conn.recv(b, &mut self.svc), b.len());
    }

    fn headers(&mut self, id: u32, fields: &[(&str, &str)], end: bool) {
        let mut block = Vec::new();
        self.enc.begin_block(&mut block);
        for (n, v) in fields {
            self.enc.encode_field(n.as_bytes(), v.as_bytes(), hpack::Indexing::Incremental, &mut block);
        }
        let mut b = Vec::new();
        frame::write_header(
            &mut b,
            block.len(),
            kind::HEADERS,
            flag::END_HEADERS | if end { flag::END_STREAM } else { 0 },
            id,
        );
        b.extend_from_slice(&block);
        self.feed(&b);
    }

    fn call(&mut self, id: u32, path: &str, extra: &[(&str, &str)]) {
        let mut f =
            vec![(":method", "POST"), (":scheme", "http"), (":path", path), ("content-type", "application/grpc")];
        f.extend_from_slice(extra);
        self.headers(id, &f, false);
    }

    fn data(&mut self, id: u32, d: &[u8], end: bool) {
        let mut b = Vec::new();
        frame::write_header(&mut b, d.len(), kind::DATA, if end { flag::END_STREAM } else { 0 }, id);
        b.extend_from_slice(d);
        self.feed(&b);
    }

    /// Parses everything the server wrote, per stream.
    fn read(&mut self) -> std::collections::BTreeMap<u32, Resp> {
        let mut out = Vec::new();
        self.conn.h2.take_out(&mut out);
        let mut map = std::collections::BTreeMap::<u32, Resp>::new();
        let mut pos = 0;
        while pos + 9 <= out.len() {
            let h = FrameHeader::parse(out[pos..pos + 9].try_into().unwrap());
            let p = &out[pos + 9..pos + 9 + h.len as usize];
            pos += 9 + h.len as usize;
            let r = map.entry(h.stream_id).or_default();
            match h.kind {
                kind::HEADERS => {
                    let mut f = Vec::new();
                    self.dec
                        .decode(p, |n, v| {
                            f.push((String::from_utf8_lossy(n).into(), String::from_utf8_lossy(v).into()))
                        })
                        .unwrap();
                    r.headers.push(f);
                    r.header_frames += 1;
                    r.ended |= h.has(flag::END_STREAM);
                }
                kind::DATA => {
                    r.data.extend_from_slice(p);
                    r.ended |= h.has(flag::END_STREAM);
                }
                kind::RST_STREAM => r.rst = frame::read_u32(p, 0),
                _ => {}
            }
        }
        map
    }
}

fn msg(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn client() -> Client {
    Client::new(grpc::Config::default())
}

#[test]
fn unary_call_round_trip_in_one_write() {
    let mut c = client();
    c.call(1, "/pkg.Svc/Do", &[("grpc-timeout", "250m")]);
    c.data(1, &msg(b"ping"), true);
    assert_eq!(
        c.svc.ev,
        [
            Ev::Call(1, "pkg.Svc".into(), "Do".into(), Some(Duration::from_millis(250))),
            Ev::Msg(1, b"ping".to_vec()),
            Ev::HalfClose(1)
        ]
    );
    assert!(c.conn.is_open(1));
    c.conn.reply(1, |b| b.extend_from_slice(b"pong"));
    assert!(!c.conn.is_open(1));
    let r = c.read().remove(&1).unwrap();
    assert_eq!(r.get(":status").as_deref(), Some("200"));
    assert_eq!(r.get("content-type").as_deref(), Some("application/grpc"));
    assert_eq!(r.data, msg(b"pong"));
    assert_eq!(r.get("grpc-status").as_deref(), Some("0"));
    assert!(r.ended);
    assert_eq!(r.header_frames, 2);
}

#[test]
fn messages_are_reassembled_across_any_split() {
    let m1 = msg(&[7u8; 300]);
    let m2 = msg(b"");
    let m3 = msg(b"xyz");
    let all: Vec<u8> = [m1.clone(), m2, m3].concat();
    for cut in [1, 2, 3, 4, 5, 6, 7, 100, 305, 310, 311] {
        let mut c = client();
        c.call(1, "/a.B/C", &[]);
        for chunk in all.chunks(cut) {
            c.data(1, chunk, false);
        }
        c.data(1, b"", true);
        let msgs: Vec<Vec<u8>> =
            c.svc.ev.iter().filter_map(|e| if let Ev::Msg(_, m) = e { Some(m.clone()) } else { None }).collect();
        assert_eq!(msgs, [vec![7u8; 300], vec![], b"xyz".to_vec()], "cut {cut}");
        assert_eq!(c.svc.ev.last(), Some(&Ev::HalfClose(1)));
    }
}

#[test]
fn streaming_responses_then_trailers() {
    let mut c = client();
    c.call(1, "/a.B/Watch", &[]);
    c.data(1, &msg(b""), false);
    c.conn.send_message(1, |b| b.extend_from_slice(b"one"));
    c.conn.send_message(1, |b| b.extend_from_slice(b"two"));
    let r = c.read().remove(&1).unwrap();
    assert_eq!(r.data, [msg(b"one"), msg(b"two")].concat());
    assert!(!r.ended);
    c.conn.finish(1, &Status::new(Code::UNAVAILABLE, "50% gone\n"));
    let r = c.read().remove(&1).unwrap();
    assert_eq!(r.get("grpc-status").as_deref(), Some("14"));
    assert_eq!(r.get("grpc-message").as_deref(), Some("50%25 gone%0A"));
    assert_eq!(grpc::percent_decode(b"50%25 gone%0A"), "50% gone\n");
    assert!(r.ended);
    assert_eq!(r.rst, Some(0), "the client had not finished: RST_STREAM(NO_ERROR) follows the trailers");
}

#[test]
fn rejected_call_is_trailers_only() {
    let mut c = client();
    c.svc.reject = Some(Status::unknown_service("foo.Bar"));
    c.call(1, "/foo.Bar/Baz", &[]);
    let r = c.read().remove(&1).unwrap();
    assert_eq!(r.header_frames, 1);
    assert!(r.ended);
    assert_eq!(r.get(":status").as_deref(), Some("200"));
    assert_eq!(r.get("grpc-status").as_deref(), Some("12"));
    assert_eq!(r.get("grpc-message").as_deref(), Some("unknown service foo.Bar"));
    assert_eq!(Status::unknown_method("a.B", "C").message, "unknown method C for service a.B");
}

#[test]
fn protocol_failures_answered_like_grpc_go() {
    type Case = (&'static str, fn(&mut Client), &'static str, &'static str, &'static str);
    let cases: &[Case] = &[
        (
            "json content type",
            |c| {
                c.headers(
                    1,
                    &[
                        (":method", "POST"),
                        (":scheme", "http"),
                        (":path", "/a.B/C"),
                        ("content-type", "application/json"),
                    ],
                    true,
                )
            },
            "415",
            "3",
            "invalid gRPC request content-type \"application/json\"",
        ),
        (
            "malformed timeout",
            |c| c.call(1, "/a.B/C", &[("grpc-timeout", "1x")]),
            "400",
            "13",
            "malformed grpc-timeout: \"1x\"",
        ),
        ("malformed path", |c| c.call(1, "/nomethod", &[]), "200", "12", "malformed method name: \"/nomethod\""),
        (
            "compressed without encoding",
            |c| {
                c.call(1, "/a.B/C", &[]);
                c.data(1, &[1, 0, 0, 0, 1, 9], true);
            },
            "200",
            "13",
            "grpc: compressed flag set with identity or empty encoding",
        ),
        (
            "compressed with unknown encoding",
            |c| {
                c.call(1, "/a.B/C", &[("grpc-encoding", "gzip")]);
                c.data(1, &[1, 0, 0, 0, 1, 9], true);
            },
            "200",
            "12",
            "grpc: Decompressor is not installed for grpc-encoding \"gzip\"",
        ),
        (
            "unknown encoding, before any message",
            |c| c.call(1, "/a.B/C", &[("grpc-encoding", "gzip")]),
            "200",
            "12",
            "grpc: Decompressor is not installed for grpc-encoding \"gzip\"",
        ),
        (
            "bad flag byte",
            |c| {
                c.call(1, "/a.B/C", &[]);
                c.data(1, &[2, 0, 0, 0, 0], true);
            },
            "200",
            "13",
            "grpc: received unexpected payload format 2",
        ),
        (
            "message over the limit",
            |c| {
                c.call(1, "/a.B/C", &[]);
                c.data(1, &[0, 0, 0x20, 0, 1], false);
            },
            "200",
            "8",
            "grpc: received message larger than max (2097153 vs. 2097152)",
        ),
        (
            "truncated message",
            |c| {
                c.call(1, "/a.B/C", &[]);
                c.data(1, &[0, 0, 0, 0, 9, 1, 2], true);
            },
            "200",
            "13",
            "unexpected EOF",
        ),
        (
            "service error on a message",
            |c| {
                c.svc.fail_messages = true;
                c.call(1, "/a.B/C", &[]);
                c.data(1, &msg(b"x"), false);
            },
            "200",
            "13",
            "bad message %E2%9C%97",
        ),
    ];
    for (name, act, http, code, message) in cases {
        let mut c = client();
        act(&mut c);
        let r = c.read().remove(&1).unwrap_or_default();
        assert_eq!(r.header_frames, 1, "{name}: trailers-only");
        assert_eq!(r.get(":status").as_deref(), Some(*http), "{name}");
        assert_eq!(r.get("grpc-status").as_deref(), Some(*code), "{name}");
        assert_eq!(r.get("grpc-message").as_deref(), Some(*message), "{name}");
        assert!(r.ended, "{name}");
        assert!(!c.conn.is_open(1), "{name}");
        // A call the service had accepted is cancelled on its side.
        let accepted = c.svc.ev.iter().any(|e| matches!(e, Ev::Call(1, ..)));
        assert_eq!(accepted, c.svc.ev.contains(&Ev::Cancel(1)), "{name}: {:?}", c.svc.ev);
        // Late data on the finished call is ignored.
        c.data(1, &msg(b"late"), true);
        assert!(!c.svc.ev.iter().any(|e| matches!(e, Ev::Msg(_, m) if m == b"late")), "{name}");
    }
}

#[test]
fn limit_follows_config_and_is_checked_before_buffering() {
    let mut c = Client::new(grpc::Config { recv_message_bytes_max: 10, ..Default::default() });
    c.call(1, "/a.B/C", &[]);
    c.data(1, &msg(&[0; 10]), false);
    assert!(matches!(c.svc.ev.last(), Some(Ev::Msg(1, m)) if m.len() == 10));
    c.data(1, &[0, 0, 0, 0, 11], false);
    let r = c.read().remove(&1).unwrap();
    assert_eq!(r.get("grpc-message").as_deref(), Some("grpc: received message larger than max (11 vs. 10)"));
}

#[test]
fn client_reset_cancels_the_call() {
    let mut c = client();
    c.call(1, "/a.B/C", &[]);
    let mut b = Vec::new();
    frame::write_rst_stream(&mut b, 1, frame::ErrorCode::CANCEL);
    c.feed(&b);
    assert_eq!(c.svc.ev.last(), Some(&Ev::Cancel(1)));
    assert!(!c.conn.is_open(1));
    // Replies to a cancelled call go nowhere.
    c.conn.reply(1, |b| b.push(1));
    assert!(c.read().is_empty());
}

#[test]
fn server_cancel_resets_the_stream() {
    let mut c = client();
    c.call(1, "/a.B/C", &[]);
    c.conn.cancel(1);
    assert_eq!(c.read().remove(&1).unwrap().rst, Some(8));
}

#[test]
fn plain_http_requests() {
    let mut c = client();
    c.headers(1, &[(":method", "GET"), (":scheme", "http"), (":path", "/ok")], true);
    let r = c.read().remove(&1).unwrap();
    assert_eq!(r.get(":status").as_deref(), Some("200"));
    assert_eq!(r.get("content-length").as_deref(), Some("4"));
    assert_eq!(r.data, b"fine");
    assert!(r.ended);
    // A body is read to its end before the answer.
    c.headers(3, &[(":method", "POST"), (":scheme", "http"), (":path", "/ok")], false);
    assert!(c.read().is_empty());
    c.data(3, b"ignored", true);
    assert_eq!(c.read().remove(&3).unwrap().data, b"fine");
    // Unknown paths get grpc-go's 415 at once.
    c.headers(5, &[(":method", "GET"), (":scheme", "http"), (":path", "/nope")], false);
    let r = c.read().remove(&5).unwrap();
    assert_eq!(r.get(":status").as_deref(), Some("415"));
    assert_eq!(r.rst, Some(0));
}

#[test]
fn empty_request_stream() {
    let mut c = client();
    c.headers(
        1,
        &[(":method", "POST"), (":scheme", "http"), (":path", "/a.B/C"), ("content-type", "application/grpc+proto")],
        true,
    );
    assert_eq!(c.svc.ev, [Ev::Call(1, "a.B".into(), "C".into(), None), Ev::HalfClose(1)]);
}

/// What a `CallObserver` heard: (token, code, message) per ended call.
#[derive(Debug, Default)]
struct Ends(std::cell::RefCell<Vec<(u32, u32, String)>>);

impl grpc::CallObserver for Ends {
    fn on_end(&self, token: u32, code: Code, message: &str) {
        self.0.borrow_mut().push((token, code.0, message.to_string()));
    }
}

/// Tracing's hook: every marked call is reported exactly once, with the status it ended with,
/// whichever way it ends; unmarked calls never are.
#[test]
fn observer_hears_each_marked_call_end_once() {
    let ends = std::rc::Rc::new(Ends::default());
    let cfg = grpc::Config { observer: Some(ends.clone()), ..Default::default() };
    let mut c = Client::new(cfg);
    let took = |ends: &Ends| std::mem::take(&mut *ends.0.borrow_mut());

    // Not marked: nothing, however it ends.
    c.call(1, "/a.B/C", &[]);
    c.data(1, &msg(b"x"), true);
    c.conn.reply(1, |b| b.push(1));
    assert_eq!(took(&ends), []);

    c.svc.trace = true;
    // Replied.
    c.call(3, "/a.B/C", &[]);
    c.data(3, &msg(b"x"), true);
    c.conn.reply(3, |b| b.push(1));
    c.conn.reply(3, |b| b.push(1)); // a second answer to a finished call: no second end
    assert_eq!(took(&ends), [(103, 0, String::new())]);
    // Finished with an error by the service.
    c.call(5, "/a.B/C", &[]);
    c.conn.finish(5, &Status::new(Code::UNAVAILABLE, "gone"));
    assert_eq!(took(&ends), [(105, 14, "gone".to_string())]);
    // Refused by the service in on_call, after marking it.
    c.svc.reject = Some(Status::new(Code::RESOURCE_EXHAUSTED, "etcdserver: too many requests"));
    c.call(7, "/a.B/C", &[]);
    c.svc.reject = None;
    assert_eq!(took(&ends), [(107, 8, "etcdserver: too many requests".to_string())]);
    // Failed by the codec (a compressed message without grpc-encoding).
    c.call(9, "/a.B/C", &[]);
    c.data(9, &[1, 0, 0, 0, 0], false);
    assert_eq!(took(&ends), [(109, 13, "grpc: compressed flag set with identity or empty encoding".to_string())]);
    // Reset by the client.
    c.call(11, "/a.B/C", &[]);
    let mut b = Vec::new();
    frame::write_rst_stream(&mut b, 11, frame::ErrorCode::CANCEL);
    c.feed(&b);
    c.conn.finish(11, &Status::ok()); // the service's late answer: no second end
    assert_eq!(took(&ends), [(111, 1, String::new())]);
    // Cut by its deadline.
    c.call(13, "/a.B/C", &[]);
    c.conn.cancel(13);
    assert_eq!(took(&ends), [(113, 4, String::new())]);
    // Still open when the connection goes.
    c.call(15, "/a.B/C", &[]);
    c.call(17, "/a.B/C", &[]);
    assert_eq!(took(&ends), []);
    drop(c);
    let mut last = took(&ends);
    last.sort();
    assert_eq!(last, [(115, 1, String::new()), (117, 1, String::new())]);
}
