//! `grpc_messages`: a [`GrpcConn`] that receives a valid connection preface, SETTINGS and the
//! HEADERS of one or two gRPC calls, then DATA frames whose payloads are the fuzz input split at
//! fuzz-chosen boundaries, so that the 5-byte length-prefixed messages are reassembled across
//! any split (prefix cut in two, a message over many frames, several messages in one frame).
//!
//! Input layout:
//!
//! | byte | meaning |
//! | --- | --- |
//! | 0 | bit 0 `recv_message_bytes_max` = byte 1 (else 2 MiB); bit 1 `grpc-encoding: gzip`; bit 2 end the calls with END_STREAM; bit 3 end them with trailers; bit 4 a second call on stream 3; bit 5 echo every message back; bit 6 reject messages starting with 0xEE; bit 7 reply OK at half-close |
//! | 1 | the small `recv_message_bytes_max` |
//! | 2 | socket read size: 0 = everything in one `recv` |
//! | 3.. | segments: a control byte (bit 7 = stream 3, bits 0-6 = length) then that many bytes, sent as one DATA frame |
//!
//! Everything sent is valid HTTP/2, so the connection must never fail. Each call's messages must
//! be exactly those a straightforward parse of its DATA bytes gives (in particular their lengths
//! plus 5 per message never exceed the DATA bytes fed), the call must fail with the status that
//! parse predicts (RESOURCE_EXHAUSTED above the limit, INTERNAL or UNIMPLEMENTED for the
//! compressed flag, INTERNAL for a truncated message at END_STREAM), and the output must be well
//! formed for a client (see [`Peer`]).

use std::collections::HashMap;

use metastore_net::frame::{self, setting, PREFACE};
use metastore_net::grpc::{self, CallHead, Code, GrpcConn, HttpResponse, Service, Status};
use metastore_net::hpack::Encoder;

use crate::wire::{self, ClientModel, Peer};

const PATH: &[u8] = b"/svc.S/M";
const REJECT_MARK: u8 = 0xee;
const ECHO_BYTES_MAX: usize = 16;

#[derive(Default)]
struct Recorder {
    reject_marked: bool,
    calls: Vec<u32>,
    messages: HashMap<u32, Vec<Vec<u8>>>,
    half_closed: Vec<u32>,
    cancelled: Vec<u32>,
    /// Messages to echo once `recv` returns.
    echo: Vec<(u32, Vec<u8>)>,
    /// Calls to answer once `recv` returns.
    reply: Vec<u32>,
}

impl Service for Recorder {
    fn on_call(&mut self, id: u32, call: &CallHead<'_>) -> Result<(), Status> {
        assert_eq!((call.service, call.method), ("svc.S", "M"));
        assert!(call.timeout.is_some());
        assert!(!self.calls.contains(&id), "call {id} started twice");
        self.calls.push(id);
        Ok(())
    }

    fn on_message(&mut self, id: u32, message: &[u8]) -> Result<(), Status> {
        assert!(self.calls.contains(&id), "message for unknown call {id}");
        assert!(!self.half_closed.contains(&id), "message after half-close on {id}");
        self.messages.entry(id).or_default().push(message.to_vec());
        self.echo.push((id, message[..message.len().min(ECHO_BYTES_MAX)].to_vec()));
        if self.reject_marked && message.first() == Some(&REJECT_MARK) {
            return Err(Status::new(Code::INVALID_ARGUMENT, "rejected"));
        }
        Ok(())
    }

    fn on_half_close(&mut self, id: u32) {
        assert!(!self.half_closed.contains(&id), "half-closed twice: {id}");
        self.half_closed.push(id);
        self.reply.push(id);
    }

    fn on_cancel(&mut self, id: u32) {
        self.cancelled.push(id);
    }

    fn on_http(&mut self, _method: &[u8], _path: &[u8]) -> Option<HttpResponse> {
        panic!("a gRPC request was taken for plain HTTP");
    }
}

#[derive(Clone, Copy)]
struct Flags(u8);

impl Flags {
    fn small_max(self) -> bool {
        self.0 & 0x01 != 0
    }
    fn gzip(self) -> bool {
        self.0 & 0x02 != 0
    }
    fn end_stream(self) -> bool {
        self.0 & 0x04 != 0
    }
    fn trailers(self) -> bool {
        self.0 & 0x08 != 0
    }
    fn two_calls(self) -> bool {
        self.0 & 0x10 != 0
    }
    fn echo(self) -> bool {
        self.0 & 0x20 != 0
    }
    fn reject(self) -> bool {
        self.0 & 0x40 != 0
    }
    fn reply(self) -> bool {
        self.0 & 0x80 != 0
    }
}

/// What a call should come to, from a plain parse of its DATA bytes.
#[derive(Debug)]
struct Expected {
    messages: Vec<Vec<u8>>,
    /// Some(code) when the call must fail.
    failure: Option<u32>,
    half_close: bool,
}

fn expect(data: &[u8], ended: bool, max: usize, f: Flags) -> Expected {
    if f.gzip() {
        // A codec we lack fails the call at its start, before any message (as grpc-go does).
        return Expected { messages: Vec::new(), failure: Some(Code::UNIMPLEMENTED.0), half_close: false };
    }
    let mut messages = Vec::new();
    let mut pos = 0;
    let mut failure = None;
    let mut partial = false;
    while failure.is_none() {
        let rest = &data[pos..];
        let [flag, a, b, c, d, body @ ..] = rest else {
            partial = !rest.is_empty();
            break;
        };
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        if *flag != 0 {
            failure = Some(Code::INTERNAL.0);
            break;
        }
        if len > max {
            failure = Some(Code::RESOURCE_EXHAUSTED.0);
            break;
        }
        let Some(msg) = body.get(..len) else {
            partial = true;
            break;
        };
        messages.push(msg.to_vec());
        pos += 5 + len;
        if f.reject() && msg.first() == Some(&REJECT_MARK) {
            failure = Some(Code::INVALID_ARGUMENT.0);
        }
    }
    if failure.is_none() && ended && partial {
        failure = Some(Code::INTERNAL.0); // "unexpected EOF"
    }
    Expected { half_close: ended && failure.is_none(), messages, failure }
}

pub fn run(input: &[u8]) {
    let [flags, small_max, chunk, segments @ ..] = input else {
        return;
    };
    let mut segments: &[u8] = segments;
    let f = Flags(*flags);
    let max = if f.small_max() { usize::from(*small_max) } else { grpc::RECV_MESSAGE_BYTES_DEFAULT };
    let ids: &[u32] = if f.two_calls() { &[1, 3] } else { &[1] };

    // The client's bytes.
    let mut stream = Vec::with_capacity(256 + segments.len() * 2);
    stream.extend_from_slice(PREFACE);
    frame::write_settings(&mut stream, &[(setting::ENABLE_PUSH, 0)]);
    let mut enc = Encoder::new();
    for &id in ids {
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", PATH),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-timeout", b"5S"),
        ];
        if f.gzip() {
            fields.push((b"grpc-encoding", b"gzip"));
        }
        let block = wire::header_block(&mut enc, &fields);
        wire::headers(&mut stream, id, &block, false, 16_384);
    }
    let mut fed: HashMap<u32, Vec<u8>> = ids.iter().map(|&id| (id, Vec::new())).collect();
    while let Some((&ctl, rest)) = segments.split_first() {
        let id = if ctl & 0x80 != 0 && f.two_calls() { 3 } else { 1 };
        let (payload, rest) = rest.split_at(usize::from(ctl & 0x7f).min(rest.len()));
        segments = rest;
        wire::data(&mut stream, id, payload, false);
        fed.entry(id).or_default().extend_from_slice(payload);
    }
    let ended = f.end_stream() || f.trailers();
    for &id in ids {
        if f.trailers() {
            let block = wire::header_block(&mut enc, &[(b"x-trailer", b"1")]);
            wire::headers(&mut stream, id, &block, true, 16_384);
        } else if f.end_stream() {
            wire::data(&mut stream, id, &[], true);
        }
    }

    // The server.
    let mut conn = GrpcConn::new(grpc::Config { recv_message_bytes_max: max, ..grpc::Config::default() });
    let mut svc = Recorder { reject_marked: f.reject(), ..Recorder::default() };
    let mut model = ClientModel::default();
    let mut peer = Peer::new(true);
    let mut out = Vec::new();
    conn.h2.take_out(&mut out);
    peer.feed(&out, &model);
    out.clear();
    let chunk = match *chunk {
        0 => stream.len(),
        n => usize::from(n),
    };
    let mut pending = Vec::new();
    for piece in stream.chunks(chunk) {
        pending.extend_from_slice(piece);
        let n = conn.recv(&pending, &mut svc);
        assert!(n <= pending.len());
        assert!(!conn.h2.is_closed(), "valid input closed the connection");
        model.feed(&pending[..n]);
        pending.drain(..n);
        for (id, msg) in std::mem::take(&mut svc.echo) {
            if f.echo() {
                conn.send_message(id, |b| b.extend_from_slice(&msg));
            }
        }
        for id in std::mem::take(&mut svc.reply) {
            if f.reply() {
                conn.reply(id, |b| b.extend_from_slice(b"ok"));
            }
        }
        conn.h2.take_out(&mut out);
        peer.feed(&out, &model);
        out.clear();
    }
    assert!(pending.is_empty(), "input left unconsumed: {} bytes", pending.len());
    let unblocked = conn.h2.blocked_bytes() == 0;

    for &id in ids {
        let data = fed.get(&id).map(Vec::as_slice).unwrap_or_default();
        let got = svc.messages.get(&id).map(Vec::as_slice).unwrap_or_default();
        let framed: usize = got.iter().map(|m| m.len() + 5).sum();
        assert!(
            framed <= data.len(),
            "stream {id}: {} messages of {framed} framed bytes out of {} DATA bytes",
            got.len(),
            data.len()
        );
        let want = expect(data, ended, max, f);
        assert!(
            got == want.messages.as_slice(),
            "stream {id}: got {} messages, expected {}",
            got.len(),
            want.messages.len()
        );
        assert_eq!(svc.half_closed.contains(&id), want.half_close, "stream {id}: half-close");
        let status = peer
            .blocks
            .as_ref()
            .and_then(|b| b.get(&id))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|(n, _)| n == b"grpc-status")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .next_back();
        let want_status = match want.failure {
            Some(code) => Some(code),
            None if want.half_close && f.reply() => Some(Code::OK.0),
            None => None,
        };
        if unblocked {
            assert_eq!(status, want_status.map(|c| c.to_string()), "stream {id}: grpc-status");
            assert_eq!(peer.ended(id), want_status.is_some(), "stream {id}: response ended");
        }
        if want.failure.is_some() || (want.half_close && f.reply()) {
            assert!(!conn.is_open(id), "stream {id}: finished call still open");
        }
    }
}
