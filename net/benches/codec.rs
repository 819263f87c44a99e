//! Micro-benchmarks of the wire codecs on a unary gRPC call's hot path:
//!
//! - `hpack`: encoding and decoding a typical gRPC request header block (grpc-go's fields for
//!   an etcd Put) and the response header and trailer blocks, dynamic tables warm (the steady
//!   state of a connection: every field indexed); plus decoding the request's first, cold block
//!   (Huffman-coded literals into an empty table), what a new connection costs once.
//! - `frame`: parsing one 9-byte frame header.
//! - `h2`: `Connection::recv` of a request (HEADERS + DATA with an 8-byte key, 256-byte value
//!   PutRequest); `GrpcConn::recv` of the same (what the server calls: adds the gRPC call's
//!   set-up and message framing); `GrpcConn::reply` of a unary response (HEADERS, the
//!   length-prefixed message and the trailers appended to the output buffer); and a whole round
//!   trip (request bytes in, response bytes out).
//!
//! Streams are opened and retired outside the timed part (divan's input generator), so each
//! timed iteration sees a connection in its steady state.
//!
//! Run: `cargo bench -p metastore-net --bench codec` (a name filter may follow `--`, e.g.
//! `cargo bench -p metastore-net --bench codec -- hpack`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;

use divan::{black_box, Bencher};
use metastore_net::frame::{self, setting, FrameHeader, FRAME_HEADER_LEN, PREFACE};
use metastore_net::grpc::{self, CallHead, GrpcConn, HttpResponse, Status};
use metastore_net::h2::{self, Connection, HeaderList};
use metastore_net::hpack::{self, Indexing};

fn main() {
    // 500 samples rather than divan's 100: steadier medians on a shared machine
    // (`-- --sample-count N` overrides it).
    divan::Divan::default().sample_count(500).config_with_args().main();
}

/// What grpc-go (etcd's clientv3) sends for a unary call.
const REQUEST_FIELDS: [(&[u8], &[u8]); 7] = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/etcdserverpb.KV/Put"),
    (b":authority", b"127.0.0.1:2379"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", b"grpc-go/1.59.0"),
    (b"te", b"trailers"),
];
/// What the server answers before the message, and after it.
const RESPONSE_FIELDS: [(&[u8], &[u8]); 2] = [(b":status", b"200"), (b"content-type", b"application/grpc")];
const TRAILER_FIELDS: [(&[u8], &[u8]); 1] = [(b"grpc-status", b"0")];
/// A trailers-only answer, to retire a stream outside the timed part.
const TRAILERS_ONLY: [(&[u8], &[u8]); 3] =
    [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"0")];

/// A PutRequest with an 8-byte key and a 256-byte value (etcd's benchmark sizes), as protobuf.
fn put_request() -> Vec<u8> {
    let mut m = vec![0x0a, 8];
    m.extend_from_slice(b"key00042");
    m.extend_from_slice(&[0x12, 0x80, 0x02]);
    m.extend(std::iter::repeat_n(b'v', 256));
    m
}

/// A PutResponse as the server sends it: a header with cluster id, member id, revision and raft
/// term (etcd's ids are random 64-bit numbers: 10-byte varints).
fn put_response() -> Vec<u8> {
    fn varint_field(m: &mut Vec<u8>, field: u8, mut v: u64) {
        m.push(field << 3);
        while v >= 0x80 {
            m.push(v as u8 | 0x80);
            v >>= 7;
        }
        m.push(v as u8);
    }
    let mut header = Vec::new();
    varint_field(&mut header, 1, 0xcdf8_1819_4e3a_8c32);
    varint_field(&mut header, 2, 0x8e9e_05c5_2164_694d);
    varint_field(&mut header, 3, 100_042);
    varint_field(&mut header, 4, 2);
    let mut m = vec![0x0a, header.len() as u8];
    m.extend_from_slice(&header);
    m
}

/// `(block, warm_block)`: the request header block as a client's encoder writes it on a new
/// connection, and every time after (all fields indexed).
fn request_blocks() -> (Vec<u8>, Vec<u8>) {
    let mut enc = hpack::Encoder::new();
    let mut cold = Vec::new();
    enc.encode(REQUEST_FIELDS, &mut cold);
    let mut warm = Vec::new();
    enc.encode(REQUEST_FIELDS, &mut warm);
    assert!(warm.len() < cold.len(), "the second block refers to the dynamic table");
    (cold, warm)
}

/// The server's way of encoding a block (`Connection::encode_block`: short values indexed).
fn encode_server_block(enc: &mut hpack::Encoder, fields: &[(&[u8], &[u8])], dst: &mut Vec<u8>) {
    enc.begin_block(dst);
    for &(name, value) in fields {
        enc.encode_field(name, value, Indexing::Incremental, dst);
    }
}

#[divan::bench_group(name = "hpack")]
mod hpack_benches {
    use super::*;

    #[divan::bench]
    fn encode_request_warm(b: Bencher) {
        let mut enc = hpack::Encoder::new();
        let mut dst = Vec::with_capacity(512);
        enc.encode(REQUEST_FIELDS, &mut dst);
        b.bench_local(|| {
            dst.clear();
            enc.encode(black_box(REQUEST_FIELDS), &mut dst);
            black_box(dst.len())
        });
    }

    #[divan::bench]
    fn encode_response_headers_and_trailers_warm(b: Bencher) {
        let mut enc = hpack::Encoder::new();
        let mut dst = Vec::with_capacity(512);
        encode_server_block(&mut enc, &RESPONSE_FIELDS, &mut dst);
        encode_server_block(&mut enc, &TRAILER_FIELDS, &mut dst);
        b.bench_local(|| {
            dst.clear();
            encode_server_block(&mut enc, black_box(&RESPONSE_FIELDS), &mut dst);
            encode_server_block(&mut enc, black_box(&TRAILER_FIELDS), &mut dst);
            black_box(dst.len())
        });
    }

    #[divan::bench]
    fn decode_request_warm(b: Bencher) {
        let (cold, warm) = request_blocks();
        let mut dec = hpack::Decoder::new(hpack::DEFAULT_TABLE_SIZE);
        dec.decode(&cold, |_, _| {}).expect("cold block decodes");
        let mut n = 0;
        dec.decode(&warm, |_, _| n += 1).expect("warm block decodes");
        assert_eq!(n, REQUEST_FIELDS.len());
        b.bench_local(|| {
            let mut bytes = 0;
            dec.decode(black_box(&warm), |name, value| bytes += name.len() + value.len()).expect("warm block decodes");
            black_box(bytes)
        });
    }

    /// The first request of a connection: literals, Huffman-decoded, inserted into the table.
    #[divan::bench]
    fn decode_request_cold(b: Bencher) {
        let (cold, _) = request_blocks();
        b.with_inputs(|| hpack::Decoder::new(hpack::DEFAULT_TABLE_SIZE)).bench_local_refs(|dec| {
            let mut bytes = 0;
            dec.decode(black_box(&cold), |name, value| bytes += name.len() + value.len()).expect("cold block decodes");
            black_box(bytes)
        });
    }

    #[divan::bench]
    fn decode_response_headers_and_trailers_warm(b: Bencher) {
        let mut enc = hpack::Encoder::new();
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        let mut cold_trailers = Vec::new();
        encode_server_block(&mut enc, &RESPONSE_FIELDS, &mut cold);
        encode_server_block(&mut enc, &TRAILER_FIELDS, &mut cold_trailers);
        let mut warm_trailers = Vec::new();
        encode_server_block(&mut enc, &RESPONSE_FIELDS, &mut warm);
        encode_server_block(&mut enc, &TRAILER_FIELDS, &mut warm_trailers);
        let mut dec = hpack::Decoder::new(hpack::DEFAULT_TABLE_SIZE);
        dec.decode(&cold, |_, _| {}).expect("cold headers decode");
        dec.decode(&cold_trailers, |_, _| {}).expect("cold trailers decode");
        b.bench_local(|| {
            let mut bytes = 0;
            dec.decode(black_box(&warm), |name, value| bytes += name.len() + value.len()).expect("warm headers decode");
            dec.decode(black_box(&warm_trailers), |name, value| bytes += name.len() + value.len())
                .expect("warm trailers decode");
            black_box(bytes)
        });
    }
}

/// Huffman decoding of a 16 KiB header value (printable ASCII), per call: what a header block at
/// the size limit costs to decode, the bound on one block's work.
#[divan::bench]
fn huffman_decode_16k(b: Bencher) {
    let value: Vec<u8> = (0..16 << 10).map(|i| b'a' + (i % 26) as u8).collect();
    let mut coded = Vec::new();
    hpack::huffman::encode(&value, &mut coded);
    let mut out = Vec::with_capacity(value.len());
    b.bench_local(|| {
        out.clear();
        hpack::huffman::decode(black_box(&coded), &mut out).expect("decodes");
        black_box(out.len())
    });
}

#[divan::bench_group(name = "frame")]
mod frame_benches {
    use super::*;

    #[divan::bench]
    fn parse_header(b: Bencher) {
        let mut buf = Vec::new();
        frame::write_data(&mut buf, 7, &put_request(), true, frame::FRAME_SIZE_DEFAULT as usize);
        let mut hdr = [0u8; FRAME_HEADER_LEN];
        hdr.copy_from_slice(&buf[..FRAME_HEADER_LEN]);
        b.bench(|| FrameHeader::parse(black_box(&hdr)));
    }
}

/// The client's side of a connection: its preface (with windows opened wide, so that replies
/// never wait for credit) and its requests, HEADERS + DATA on increasing stream ids.
struct Client {
    next_id: u32,
    cold_block: Vec<u8>,
    warm_block: Vec<u8>,
    message: Vec<u8>,
}

impl Client {
    fn new() -> Self {
        let (cold_block, warm_block) = request_blocks();
        let message = put_request();
        Self { next_id: 1, cold_block, warm_block, message }
    }

    fn preface(&self) -> Vec<u8> {
        let mut b = PREFACE.to_vec();
        frame::write_settings(&mut b, &[(setting::INITIAL_WINDOW_SIZE, frame::WINDOW_SIZE_MAX as u32)]);
        let extra = frame::WINDOW_SIZE_MAX as u32 - frame::WINDOW_SIZE_DEFAULT;
        frame::write_window_update(&mut b, 0, extra);
        b
    }

    /// The next request's bytes, and its stream id. The first uses the cold header block.
    fn request(&mut self) -> (Vec<u8>, u32) {
        let id = self.next_id;
        self.next_id += 2;
        let block = if id == 1 { &self.cold_block } else { &self.warm_block };
        let mut b = Vec::with_capacity(64 + self.message.len());
        let max = frame::FRAME_SIZE_DEFAULT as usize;
        frame::write_header_block(&mut b, id, block, false, max);
        let mut body = Vec::with_capacity(5 + self.message.len());
        body.push(0);
        body.extend_from_slice(&(self.message.len() as u32).to_be_bytes());
        body.extend_from_slice(&self.message);
        frame::write_data(&mut b, id, &body, true, max);
        (b, id)
    }
}

/// Records what an h2 connection reports.
#[derive(Default)]
struct Sink {
    opened: Vec<u32>,
    body_bytes: usize,
}

impl h2::Handler for Sink {
    fn on_headers(&mut self, stream_id: u32, headers: &HeaderList, _end_stream: bool) {
        debug_assert_eq!(headers.len(), REQUEST_FIELDS.len());
        self.opened.push(stream_id);
    }
    fn on_data(&mut self, _stream_id: u32, data: &[u8], _end_stream: bool) {
        self.body_bytes += data.len();
    }
    fn on_reset(&mut self, _stream_id: u32, _code: frame::ErrorCode) {}
}

/// Records what a gRPC connection reports.
#[derive(Default)]
struct App {
    opened: Vec<u32>,
    messages: usize,
}

impl grpc::Service for App {
    fn on_call(&mut self, id: u32, call: &CallHead<'_>) -> Result<(), Status> {
        self.opened.push(id);
        // Counted only where the connection has call stats (`grpc_round_trip_counted`).
        call.set_tag(0);
        Ok(())
    }
    fn on_message(&mut self, _id: u32, message: &[u8]) -> Result<(), Status> {
        self.messages += 1;
        black_box(message);
        Ok(())
    }
    fn on_half_close(&mut self, _id: u32) {}
    fn on_cancel(&mut self, _id: u32) {}
    fn on_http(&mut self, _method: &[u8], _path: &[u8]) -> Option<HttpResponse> {
        None
    }
}

/// An h2 connection past its preface and first (cold) request.
struct H2Bed {
    conn: Connection,
    sink: Sink,
    client: Client,
    spare: Vec<u8>,
}

impl H2Bed {
    fn new() -> Self {
        let mut bed = H2Bed {
            conn: Connection::new(h2::Config::default()),
            sink: Sink::default(),
            client: Client::new(),
            spare: Vec::new(),
        };
        let preface = bed.client.preface();
        assert_eq!(bed.conn.recv(&preface, &mut bed.sink), preface.len());
        let (first, _) = bed.client.request();
        assert_eq!(bed.conn.recv(&first, &mut bed.sink), first.len());
        assert_eq!(bed.sink.opened, [1]);
        assert_eq!(bed.sink.body_bytes, 5 + bed.client.message.len());
        bed.retire();
        bed
    }

    /// Answers every open stream (trailers-only) and drops the output.
    fn retire(&mut self) {
        for id in self.sink.opened.drain(..) {
            self.conn.send_headers(id, &TRAILERS_ONLY, true);
        }
        assert!(!self.conn.is_closed() && self.conn.active_streams() == 0);
        self.conn.take_out(&mut self.spare);
        self.spare.clear();
    }
}

/// A gRPC connection past its preface and first (cold) request.
struct GrpcBed {
    conn: GrpcConn,
    app: App,
    client: Client,
    response: Vec<u8>,
    spare: Vec<u8>,
}

impl GrpcBed {
    fn new() -> Self {
        Self::with_config(grpc::Config::default())
    }

    fn with_config(cfg: grpc::Config) -> Self {
        let mut bed = GrpcBed {
            conn: GrpcConn::new(cfg),
            app: App::default(),
            client: Client::new(),
            response: put_response(),
            spare: Vec::new(),
        };
        let preface = bed.client.preface();
        assert_eq!(bed.conn.recv(&preface, &mut bed.app), preface.len());
        let (first, _) = bed.client.request();
        assert_eq!(bed.conn.recv(&first, &mut bed.app), first.len());
        assert_eq!((bed.app.opened.as_slice(), bed.app.messages), (&[1][..], 1));
        bed.retire();
        bed
    }

    /// Answers every open call (a unary reply) and drops the output.
    fn retire(&mut self) {
        for id in std::mem::take(&mut self.app.opened) {
            self.conn.reply(id, |b| b.extend_from_slice(&self.response));
        }
        self.drop_out();
    }

    fn drop_out(&mut self) {
        assert!(!self.conn.h2.is_closed() && self.conn.h2.active_streams() == 0);
        assert_eq!(self.conn.h2.blocked_bytes(), 0, "replies never wait for credit here");
        self.conn.h2.take_out(&mut self.spare);
        self.spare.clear();
    }

    /// Receives a request outside the timed part; returns its stream id.
    fn open_call(&mut self) -> u32 {
        let (req, id) = self.client.request();
        assert_eq!(self.conn.recv(&req, &mut self.app), req.len());
        id
    }
}

#[divan::bench_group(name = "h2")]
mod h2_benches {
    use super::*;

    /// `h2::Connection::recv` of HEADERS (warm HPACK) + DATA (END_STREAM) opening a stream.
    #[divan::bench]
    fn connection_recv_request(b: Bencher) {
        let bed = RefCell::new(H2Bed::new());
        b.with_inputs(|| {
            let mut bed = bed.borrow_mut();
            bed.retire();
            bed.client.request().0
        })
        .bench_local_values(|req| {
            let bed = &mut *bed.borrow_mut();
            bed.conn.recv(&req, &mut bed.sink)
        });
    }

    /// `GrpcConn::recv` of the same request: the server's entry point (call set-up, the
    /// length-prefixed message handed to the service without a copy).
    #[divan::bench]
    fn grpc_recv_request(b: Bencher) {
        let bed = RefCell::new(GrpcBed::new());
        b.with_inputs(|| {
            let mut bed = bed.borrow_mut();
            bed.retire();
            bed.client.request().0
        })
        .bench_local_values(|req| {
            let bed = &mut *bed.borrow_mut();
            bed.conn.recv(&req, &mut bed.app)
        });
    }

    /// `GrpcConn::reply` with a PutResponse-sized message: HEADERS, DATA and trailers appended to
    /// the output buffer (the send path of a unary response).
    #[divan::bench]
    fn grpc_reply_unary(b: Bencher) {
        let bed = RefCell::new(GrpcBed::new());
        b.with_inputs(|| {
            let mut bed = bed.borrow_mut();
            bed.app.opened.clear();
            if bed.conn.h2.active_streams() == 0 {
                bed.drop_out();
            }
            bed.open_call()
        })
        .bench_local_values(|id| {
            let bed = &mut *bed.borrow_mut();
            let response = &bed.response;
            bed.conn.reply(id, |buf| buf.extend_from_slice(response));
        });
    }

    /// A whole unary exchange on the codec: request bytes in, reply out, output taken.
    #[divan::bench]
    fn grpc_round_trip(b: Bencher) {
        round_trip(b, GrpcBed::new());
    }

    /// The same with go-grpc-prometheus's per-method counters on (what the server ships with):
    /// the difference from `grpc_round_trip` is what the metrics cost per call in the codec.
    #[divan::bench]
    fn grpc_round_trip_counted(b: Bencher) {
        let stats = std::sync::Arc::new(grpc::CallStats::new(1, false));
        round_trip(b, GrpcBed::with_config(grpc::Config { stats: Some(stats), ..Default::default() }));
    }

    fn round_trip(b: Bencher, bed: GrpcBed) {
        let bed = RefCell::new(bed);
        b.with_inputs(|| bed.borrow_mut().client.request()).bench_local_values(|(req, id)| {
            let bed = &mut *bed.borrow_mut();
            bed.app.opened.clear();
            let n = bed.conn.recv(&req, &mut bed.app);
            let response = &bed.response;
            bed.conn.reply(id, |buf| buf.extend_from_slice(response));
            bed.conn.h2.take_out(&mut bed.spare);
            let out = bed.spare.len();
            bed.spare.clear();
            (n, out)
        });
    }
}
