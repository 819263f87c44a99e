//! The committed seed corpora, generated: `corpus/<target>/seed-<name>`.
//!
//! `cargo test` (in `net/fuzz`) checks that the committed files are exactly these;
//! `METASTORE_FUZZ_WRITE_SEEDS=1 cargo test` rewrites them. Entries that a fuzzing run adds to a
//! corpus directory are named by libFuzzer after their SHA-1 and are not committed.

use metastore_net::frame::{self, flag, kind, setting};
use metastore_net::hpack::Encoder;

use crate::wire::{self, raw_frame};

pub const TARGETS: [&str; 3] = ["h2_frames", "hpack_decode", "grpc_messages"];

/// (file name, contents) of every seed of `target`.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let list = match target {
        "h2_frames" => h2_frames(),
        "hpack_decode" => hpack_decode(),
        "grpc_messages" => grpc_messages(),
        _ => Vec::new(),
    };
    list.into_iter().map(|(name, bytes)| (format!("seed-{name}"), bytes)).collect()
}

type Seeds = Vec<(&'static str, Vec<u8>)>;

const GET: &[(&[u8], &[u8])] =
    &[(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"localhost:2379")];

const POST: &[(&[u8], &[u8])] = &[
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/etcdserverpb.KV/Range"),
    (b":authority", b"localhost:2379"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"grpc-timeout", b"4999870u"),
];

fn block(enc: &mut Encoder, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    wire::header_block(enc, fields)
}

/// `[read size, config, responses]` then the frames after the preface.
fn h2(chunk: u8, cfg: u8, resp: u8, frames: &[u8]) -> Vec<u8> {
    let mut v = vec![chunk, cfg, resp];
    v.extend_from_slice(frames);
    v
}

fn grpc_message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn h2_frames() -> Seeds {
    let mut seeds = Seeds::new();

    // A GET with SETTINGS first, answered with 1 KiB and END_STREAM on DATA.
    let mut e = Encoder::new();
    let mut f = Vec::new();
    frame::write_settings(&mut f, &[]);
    wire::headers(&mut f, 1, &block(&mut e, GET), true, 16_384);
    seeds.push(("get", h2(0, 0, 0x01, &f)));

    // A gRPC call with a body over two DATA frames, trailers from the client too; the response
    // ends with trailers. Fed 7 bytes per read, and compared with a one-read run.
    let mut e = Encoder::new();
    let mut f = Vec::new();
    frame::write_settings(&mut f, &[(setting::ENABLE_PUSH, 0)]);
    wire::headers(&mut f, 1, &block(&mut e, POST), false, 16_384);
    let msg = grpc_message(b"\x0a\x03foo\x12\x04foo0");
    wire::data(&mut f, 1, &msg[..4], false);
    wire::data(&mut f, 1, &msg[4..], false);
    wire::headers(&mut f, 1, &block(&mut e, &[(b"x-end", b"1")]), true, 16_384);
    seeds.push(("grpc-call-chunked", h2(7, 0x40, 0x80, &f)));

    // A body with content-length, then a second request on stream 3 reusing the HPACK table.
    let mut e = Encoder::new();
    let mut f = Vec::new();
    let mut fields = POST.to_vec();
    fields.push((b"content-length", b"5"));
    wire::headers(&mut f, 1, &block(&mut e, &fields), false, 16_384);
    wire::data(&mut f, 1, b"hello", true);
    wire::headers(&mut f, 3, &block(&mut e, &fields[..3]), true, 16_384);
    seeds.push(("content-length-two-streams", h2(0, 0, 0x00, &f)));

    // One header block over HEADERS and two CONTINUATION frames.
    let mut e = Encoder::new();
    let mut f = Vec::new();
    let b = block(&mut e, POST);
    let (a, rest) = b.split_at(b.len() / 3);
    let (m, z) = rest.split_at(rest.len() / 2);
    raw_frame(&mut f, kind::HEADERS, 0, 1, a);
    raw_frame(&mut f, kind::CONTINUATION, 0, 1, m);
    raw_frame(&mut f, kind::CONTINUATION, flag::END_HEADERS, 1, z);
    wire::data(&mut f, 1, &grpc_message(b"x"), true);
    seeds.push(("continuation", h2(0, 0x40, 0x00, &f)));

    // Padded HEADERS with a priority, padded DATA, a PRIORITY frame.
    let mut e = Encoder::new();
    let mut f = Vec::new();
    let b = block(&mut e, POST);
    let mut p = vec![3u8]; // pad length
    p.extend_from_slice(&[0, 0, 0, 0, 16]); // depends on stream 0, weight 16
    p.extend_from_slice(&b);
    p.extend_from_slice(&[0; 3]);
    raw_frame(&mut f, kind::HEADERS, flag::PADDED | flag::PRIORITY | flag::END_HEADERS, 1, &p);
    let mut d = vec![2u8];
    d.extend_from_slice(&grpc_message(b"abc"));
    d.extend_from_slice(&[0; 2]);
    raw_frame(&mut f, kind::DATA, flag::PADDED | flag::END_STREAM, 1, &d);
    raw_frame(&mut f, kind::PRIORITY, 0, 5, &[0, 0, 0, 1, 200]);
    seeds.push(("padding-priority", h2(0, 0, 0x00, &f)));

    // Connection-level frames: SETTINGS with every known id, its ACK, PING, WINDOW_UPDATEs, an
    // unknown frame type, then a request.
    let mut e = Encoder::new();
    let mut f = Vec::new();
    frame::write_settings(
        &mut f,
        &[
            (setting::HEADER_TABLE_SIZE, 256),
            (setting::ENABLE_PUSH, 0),
            (setting::MAX_CONCURRENT_STREAMS, 100),
            (setting::INITIAL_WINDOW_SIZE, 1000),
            (setting::MAX_FRAME_SIZE, 20_000),
            (setting::MAX_HEADER_LIST_SIZE, 8192),
            (0x99, 1),
        ],
    );
    frame::write_settings_ack(&mut f);
    frame::write_ping(&mut f, false, *b"metaping");
    frame::write_ping(&mut f, true, *b"metapong");
    frame::write_window_update(&mut f, 0, 100_000);
    raw_frame(&mut f, 0xfa, 0xff, 0, b"unknown");
    wire::headers(&mut f, 1, &block(&mut e, GET), true, 16_384);
    frame::write_window_update(&mut f, 1, 5000);
    seeds.push(("settings-ping-window-update", h2(0, 0, 0x02, &f)));

    // Responses larger than the peer's windows: data waits for WINDOW_UPDATE and SETTINGS.
    let mut e = Encoder::new();
    let mut f = Vec::new();
    frame::write_settings(&mut f, &[(setting::INITIAL_WINDOW_SIZE, 10_000)]);
    wire::headers(&mut f, 1, &block(&mut e, GET), true, 16_384);
    wire::headers(&mut f, 3, &block(&mut e, GET), true, 16_384);
    frame::write_window_update(&mut f, 1, 30_000);
    frame::write_settings(&mut f, &[(setting::INITIAL_WINDOW_SIZE, 70_000)]);
    frame::write_window_update(&mut f, 0, 200_000);
    frame::write_window_update(&mut f, 3, 1);
    seeds.push(("flow-control-blocked", h2(50, 0, 0xbf, &f)));

    // Trailers held back by flow control leave when SETTINGS grants credit, before the
    // HEADER_TABLE_SIZE change that follows is acknowledged: they are encoded with the old
    // table. The second part of the stream comes in a later read.
    let mut e = Encoder::new();
    let mut f = Vec::new();
    frame::write_settings(&mut f, &[(setting::INITIAL_WINDOW_SIZE, 10_000), (setting::HEADER_TABLE_SIZE, 2576)]);
    wire::headers(&mut f, 1, &block(&mut e, GET), true, 16_384);
    wire::headers(&mut f, 3, &block(&mut e, GET), true, 16_384);
    frame::write_window_update(&mut f, 0, 500_000);
    let first_read = (frame::PREFACE.len() + f.len()) as u8;
    frame::write_settings(&mut f, &[(setting::INITIAL_WINDOW_SIZE, 8_000_000)]);
    frame::write_settings(&mut f, &[(setting::HEADER_TABLE_SIZE, 0)]);
    wire::headers(&mut f, 5, &block(&mut e, GET), true, 16_384);
    seeds.push(("trailers-flushed-before-table-size-ack", h2(first_read, 0, 0xbf, &f)));

    // Small receive windows (credit returned often), two concurrent streams at most, a reset.
    let mut e = Encoder::new();
    let mut f = Vec::new();
    wire::headers(&mut f, 1, &block(&mut e, POST), false, 16_384);
    wire::data(&mut f, 1, &[7; 10], false);
    wire::data(&mut f, 1, &[7; 6], false);
    wire::headers(&mut f, 3, &block(&mut e, POST), false, 16_384);
    wire::headers(&mut f, 5, &block(&mut e, POST), false, 16_384);
    frame::write_rst_stream(&mut f, 3, frame::ErrorCode::CANCEL);
    wire::data(&mut f, 1, &[], true);
    seeds.push(("small-windows-rst", h2(0, 0x0b, 0x40, &f)));

    // A graceful drain, then the client's GOAWAY.
    let mut e = Encoder::new();
    let mut f = Vec::new();
    wire::headers(&mut f, 1, &block(&mut e, POST), false, 16_384);
    wire::headers(&mut f, 3, &block(&mut e, GET), true, 16_384);
    wire::data(&mut f, 1, &grpc_message(b""), true);
    frame::write_goaway(&mut f, 0, frame::ErrorCode::NO_ERROR, b"bye");
    seeds.push(("drain-goaway", h2(0, 0x80, 0x81, &f)));

    // A connection error (DATA on stream 0) followed by more bytes, which must all be consumed.
    let mut f = Vec::new();
    wire::data(&mut f, 0, b"oops", false);
    frame::write_ping(&mut f, false, [0; 8]);
    seeds.push(("conn-error-then-more", h2(3, 0, 0x00, &f)));

    seeds
}

fn hpack(table: u8, list: u8, enc: u8, blocks: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![table, list, enc];
    for b in blocks {
        assert!(b.len() < 0xfe);
        v.push(b.len() as u8);
        v.extend_from_slice(b);
    }
    v
}

fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|c| match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => c - b'A' + 10,
        })
        .collect();
    digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

// One `push` per seed reads better than one long `vec!` here.
#[allow(clippy::vec_init_then_push)]
fn hpack_decode() -> Seeds {
    // RFC 7541 Appendix C.
    let c2_1 = unhex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
    let c2_2 = unhex("040c 2f73 616d 706c 652f 7061 7468");
    let c2_3 = unhex("1008 7061 7373 776f 7264 0673 6563 7265 74");
    let c2_4 = unhex("82");
    let c3 = [
        unhex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        unhex("8286 84be 5808 6e6f 2d63 6163 6865"),
        unhex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"),
    ];
    let c4 = [
        unhex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
        unhex("8286 84be 5886 a8eb 1064 9cbf"),
        unhex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
    ];
    let c5 = [
        unhex(
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
        ),
        unhex("4803 3330 37c1 c0bf"),
        unhex(
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
             3d31",
        ),
    ];
    let c6 = [
        unhex(
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        ),
        unhex("4883 640e ffc1 c0bf"),
        unhex(
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ),
    ];
    let as_slices = |v: &[Vec<u8>]| hpack(128, 0, 128, &v.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let as_slices_256 = |v: &[Vec<u8>]| hpack(8, 0, 8, &v.iter().map(Vec::as_slice).collect::<Vec<_>>());

    let mut seeds = Seeds::new();
    seeds.push(("c2-1-literal-indexed", hpack(128, 0, 128, &[&c2_1])));
    seeds.push(("c2-2-literal-not-indexed", hpack(128, 0, 128, &[&c2_2])));
    seeds.push(("c2-3-never-indexed", hpack(128, 0, 128, &[&c2_3])));
    seeds.push(("c2-4-indexed", hpack(128, 0, 1, &[&c2_4])));
    seeds.push(("c3-requests", as_slices(&c3)));
    seeds.push(("c4-requests-huffman", as_slices(&c4)));
    seeds.push(("c5-responses-table-256", as_slices_256(&c5)));
    seeds.push(("c6-responses-huffman-table-256", as_slices_256(&c6)));

    // Size updates at the start of a block (down to 0, then up), then a field; the limit lowered
    // between blocks with the 0xfe operation.
    let mut v = hpack(128, 0, 20, &[&c3[0], &[0x20, 0x3f, 0xe1, 0x1f, 0x82]]);
    v.extend_from_slice(&[0xfe, 2]);
    v.push(c3[1].len() as u8);
    v.extend_from_slice(&c3[1]);
    seeds.push(("size-updates-and-shrink", v));

    // What our encoder writes for a gRPC response and its trailers, with a small header list
    // limit (a long field crosses it).
    let mut e = Encoder::new();
    let mut resp = Vec::new();
    e.encode([(&b":status"[..], &b"200"[..]), (b"content-type", b"application/grpc")], &mut resp);
    let mut trailers = Vec::new();
    e.encode(
        [
            (&b"grpc-status"[..], &b"9"[..]),
            (b"grpc-message", b"etcdserver: mvcc: required revision has been compacted"),
            (b"authorization", b"token"),
        ],
        &mut trailers,
    );
    seeds.push(("our-response-and-trailers", hpack(128, 6, 128, &[&resp, &trailers])));

    // The rest of the input as one block (0xff), with an integer near the u32 limit.
    let mut v = vec![128, 0, 0, 0xff];
    v.extend_from_slice(&[0x82, 0x1f, 0xe1, 0xff, 0xff, 0xff, 0x0f]);
    seeds.push(("rest-is-one-block", v));

    seeds
}

fn grpc(flags: u8, max: u8, chunk: u8, segments: &[(bool, &[u8])]) -> Vec<u8> {
    let mut v = vec![flags, max, chunk];
    for &(second, s) in segments {
        assert!(s.len() < 0x80);
        v.push(if second { 0x80 } else { 0 } | s.len() as u8);
        v.extend_from_slice(s);
    }
    v
}

#[allow(clippy::vec_init_then_push)]
fn grpc_messages() -> Seeds {
    let m1 = grpc_message(b"\x0a\x03foo");
    let m2 = grpc_message(&[0x42; 40]);
    let empty = grpc_message(b"");
    let two: Vec<u8> = [m1.clone(), empty.clone()].concat();
    let mut seeds = Seeds::new();

    seeds.push(("unary", grpc(0x84, 0, 0, &[(false, &m1)])));
    seeds.push(("unary-echo-trailers", grpc(0xa8, 0, 0, &[(false, &m1)])));
    seeds.push((
        "message-over-three-frames",
        grpc(0x84, 0, 0, &[(false, &m2[..3]), (false, &m2[3..20]), (false, &m2[20..])]),
    ));
    seeds.push((
        "prefix-split-and-two-per-frame",
        grpc(0x84, 0, 5, &[(false, &two[..2]), (false, &two[2..]), (false, &[])]),
    ));
    seeds.push((
        "two-calls-interleaved",
        grpc(0xb4, 0, 0, &[(false, &m2[..10]), (true, &m1), (false, &m2[10..]), (true, &empty)]),
    ));
    seeds.push(("resource-exhausted-small-max", grpc(0x85, 8, 0, &[(false, &m1), (false, &m2[..30])])));
    // The call fails early (RST_STREAM(NO_ERROR) after the trailers) while the client's own
    // trailers are in flight: they must be ignored, not close the connection.
    seeds.push(("early-failure-then-client-trailers", grpc(0x89, 2, 0, &[(false, &m1), (false, &m2[..9])])));
    let mut compressed = m1.clone();
    compressed[0] = 1;
    seeds.push(("compressed-flag-gzip", grpc(0x06, 0, 0, &[(false, &compressed)])));
    seeds.push(("compressed-flag-identity", grpc(0x04, 0, 0, &[(false, &compressed)])));
    seeds.push(("unexpected-eof", grpc(0x84, 0, 0, &[(false, &m2[..12])])));
    let mut rejected = grpc_message(&[0xee, 1, 2]);
    rejected.extend_from_slice(&m1);
    seeds.push(("service-rejects", grpc(0xe4, 0, 3, &[(false, &rejected)])));
    seeds.push(("no-end-stream", grpc(0x20, 0, 1, &[(false, &two)])));
    seeds
}
