//! RFC 7541 Appendix C, byte for byte: integers (C.1), single representations (C.2), and the
//! request and response sequences with and without Huffman coding (C.3 to C.6), checking the
//! decoded fields, the dynamic table after every block, and that our encoder, given the same
//! header lists and the same choices, produces exactly the RFC's bytes.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert_eq!(s.len() % 2, 0);
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Fields, DecodeError> {
    let mut out = Vec::new();
    d.decode(block, |n, v| out.push((n.to_vec(), v.to_vec())))?;
    Ok(out)
}

fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
}

fn table_entries(t: &DynamicTable) -> Vec<(String, String)> {
    (0..t.len())
        .map(|i| {
            let (n, v) = t.get(i).unwrap();
            (String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap())
        })
        .collect()
}

fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

#[test]
fn c1_integers() {
    // C.1.1: 10 with a 5-bit prefix.
    let mut buf = Vec::new();
    encode_integer(10, 5, 0, &mut buf);
    assert_eq!(buf, [0x0a]);
    assert_eq!(decode_integer(&buf, 5), Ok((10, 1)));
    // C.1.2: 1337 with a 5-bit prefix; the bits above the prefix are the caller's.
    buf.clear();
    encode_integer(1337, 5, 0xe0, &mut buf);
    assert_eq!(buf, [0xff, 0x9a, 0x0a]);
    assert_eq!(decode_integer(&buf, 5), Ok((1337, 3)));
    // C.1.3: 42 on an octet boundary.
    buf.clear();
    encode_integer(42, 8, 0, &mut buf);
    assert_eq!(buf, [42]);
    assert_eq!(decode_integer(&buf, 8), Ok((42, 1)));
}

#[test]
fn integer_edges() {
    for prefix in 1..=8u8 {
        for value in [0usize, 1, 30, 31, 127, 128, 254, 255, 256, 1 << 14, 1 << 21, u32::MAX as usize] {
            let mut buf = Vec::new();
            encode_integer(value, prefix, 0, &mut buf);
            assert_eq!(decode_integer(&buf, prefix), Ok((value, buf.len())), "{value} in {prefix}");
        }
    }
    // u32::MAX + 1 does not fit.
    let mut buf = Vec::new();
    encode_integer(u32::MAX as usize + 1, 5, 0, &mut buf);
    assert_eq!(decode_integer(&buf, 5), Err(DecodeError::IntegerOverflow));
    // Zero-valued continuation bytes still count towards the limit.
    assert_eq!(decode_integer(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], 5), Err(DecodeError::IntegerOverflow));
    assert_eq!(decode_integer(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x00], 5), Ok((31, 6)));
    assert_eq!(decode_integer(&[0x1f, 0x80], 5), Err(DecodeError::Truncated));
    assert_eq!(decode_integer(&[], 5), Err(DecodeError::Truncated));
}

#[test]
fn c2_single_representations() {
    // C.2.1: literal with indexing.
    let mut d = Decoder::new(4096);
    let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
    assert_eq!(decode_all(&mut d, &block).unwrap(), fields(&[("custom-key", "custom-header")]));
    assert_eq!(table_entries(&d.table), owned(&[("custom-key", "custom-header")]));
    assert_eq!(d.dynamic_table_size(), 55);
    let mut e = Encoder::new();
    e.set_huffman(false);
    let mut out = Vec::new();
    e.encode_field(b"custom-key", b"custom-header", Indexing::Incremental, &mut out);
    assert_eq!(out, block);

    // C.2.2: literal without indexing.
    let mut d = Decoder::new(4096);
    let block = hex("040c 2f73 616d 706c 652f 7061 7468");
    assert_eq!(decode_all(&mut d, &block).unwrap(), fields(&[(":path", "/sample/path")]));
    assert_eq!(d.dynamic_table_size(), 0);
    let mut out = Vec::new();
    e.encode_field(b":path", b"/sample/path", Indexing::Without, &mut out);
    assert_eq!(out, block);

    // C.2.3: literal never indexed.
    let mut d = Decoder::new(4096);
    let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
    assert_eq!(decode_all(&mut d, &block).unwrap(), fields(&[("password", "secret")]));
    assert_eq!(d.dynamic_table_size(), 0);
    let mut out = Vec::new();
    e.encode_field(b"password", b"secret", Indexing::Never, &mut out);
    assert_eq!(out, block);

    // C.2.4: indexed.
    let mut d = Decoder::new(4096);
    assert_eq!(decode_all(&mut d, &[0x82]).unwrap(), fields(&[(":method", "GET")]));
    assert_eq!(d.dynamic_table_size(), 0);
    let mut out = Vec::new();
    e.encode_field(b":method", b"GET", Indexing::Incremental, &mut out);
    assert_eq!(out, [0x82]);
}

/// One block of an Appendix C sequence: the wire bytes, the header list, the dynamic table after
/// it (newest first) and the table size.
struct Step {
    wire: &'static str,
    headers: &'static [(&'static str, &'static str)],
    table: &'static [(&'static str, &'static str)],
    size: usize,
}

fn run_sequence(table_size: usize, huffman: bool, steps: &[Step]) {
    let mut d = Decoder::new(table_size);
    let mut e = Encoder::new();
    e.set_huffman(huffman);
    if table_size != DEFAULT_TABLE_SIZE {
        // The RFC's examples assume both ends already agreed on the size; announce it in a block
        // of our own that the example does not show.
        e.set_max_table_size(table_size);
        let mut announce = Vec::new();
        e.begin_block(&mut announce);
        assert_eq!(decode_all(&mut d, &announce).unwrap(), Vec::new());
    }
    for (i, step) in steps.iter().enumerate() {
        let wire = hex(step.wire);
        assert_eq!(decode_all(&mut d, &wire).unwrap(), fields(step.headers), "step {i}");
        assert_eq!(table_entries(&d.table), owned(step.table), "step {i}");
        assert_eq!(d.dynamic_table_size(), step.size, "step {i}");

        let mut out = Vec::new();
        e.begin_block(&mut out);
        for (n, v) in step.headers {
            e.encode_field(n.as_bytes(), v.as_bytes(), Indexing::Incremental, &mut out);
        }
        assert_eq!(out, wire, "encoding step {i}");
        assert_eq!(table_entries(&e.table), owned(step.table), "encoder step {i}");
        assert_eq!(e.dynamic_table_size(), step.size);
    }
}

const REQ1: &[(&str, &str)] =
    &[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
const REQ2: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
    ("cache-control", "no-cache"),
];
const REQ3: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
];
const REQ_TABLE1: &[(&str, &str)] = &[(":authority", "www.example.com")];
const REQ_TABLE2: &[(&str, &str)] = &[("cache-control", "no-cache"), (":authority", "www.example.com")];
const REQ_TABLE3: &[(&str, &str)] =
    &[("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")];

#[test]
fn c3_requests_without_huffman() {
    run_sequence(
        4096,
        false,
        &[
            Step {
                wire: "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                headers: REQ1,
                table: REQ_TABLE1,
                size: 57,
            },
            Step { wire: "8286 84be 5808 6e6f 2d63 6163 6865", headers: REQ2, table: REQ_TABLE2, size: 110 },
            Step {
                wire: "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
                headers: REQ3,
                table: REQ_TABLE3,
                size: 164,
            },
        ],
    );
}

#[test]
fn c4_requests_with_huffman() {
    run_sequence(
        4096,
        true,
        &[
            Step { wire: "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", headers: REQ1, table: REQ_TABLE1, size: 57 },
            Step { wire: "8286 84be 5886 a8eb 1064 9cbf", headers: REQ2, table: REQ_TABLE2, size: 110 },
            Step {
                wire: "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
                headers: REQ3,
                table: REQ_TABLE3,
                size: 164,
            },
        ],
    );
}

const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
const DATE2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
const LOCATION: &str = "https://www.example.com";
const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
const RESP1: &[(&str, &str)] =
    &[(":status", "302"), ("cache-control", "private"), ("date", DATE1), ("location", LOCATION)];
const RESP2: &[(&str, &str)] =
    &[(":status", "307"), ("cache-control", "private"), ("date", DATE1), ("location", LOCATION)];
const RESP3: &[(&str, &str)] = &[
    (":status", "200"),
    ("cache-control", "private"),
    ("date", DATE2),
    ("location", LOCATION),
    ("content-encoding", "gzip"),
    ("set-cookie", COOKIE),
];
const RESP_TABLE1: &[(&str, &str)] =
    &[("location", LOCATION), ("date", DATE1), ("cache-control", "private"), (":status", "302")];
const RESP_TABLE2: &[(&str, &str)] =
    &[(":status", "307"), ("location", LOCATION), ("date", DATE1), ("cache-control", "private")];
const RESP_TABLE3: &[(&str, &str)] = &[("set-cookie", COOKIE), ("content-encoding", "gzip"), ("date", DATE2)];

#[test]
fn c5_responses_without_huffman() {
    run_sequence(
        256,
        false,
        &[
            Step {
                wire: "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
                       2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
                       6c65 2e63 6f6d",
                headers: RESP1,
                table: RESP_TABLE1,
                size: 222,
            },
            Step { wire: "4803 3330 37c1 c0bf", headers: RESP2, table: RESP_TABLE2, size: 222 },
            Step {
                wire: "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
                       54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
                       5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
                       3d31",
                headers: RESP3,
                table: RESP_TABLE3,
                size: 215,
            },
        ],
    );
}

#[test]
fn c6_responses_with_huffman() {
    run_sequence(
        256,
        true,
        &[
            Step {
                wire: "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
                       2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
                headers: RESP1,
                table: RESP_TABLE1,
                size: 222,
            },
            Step { wire: "4883 640e ffc1 c0bf", headers: RESP2, table: RESP_TABLE2, size: 222 },
            Step {
                wire: "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
                       77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
                       9587 3160 65c0 03ed 4ee5 b106 3d50 07",
                headers: RESP3,
                table: RESP_TABLE3,
                size: 215,
            },
        ],
    );
}

#[test]
fn size_updates_go_down_then_up() {
    let mut e = Encoder::new();
    let mut d = Decoder::new(4096);
    let mut out = Vec::new();
    e.encode([(&b"x-a"[..], &b"1"[..])], &mut out);
    decode_all(&mut d, &out).unwrap();
    assert_eq!(d.dynamic_table_size(), 36);

    // Peer lowers to 0 then raises to 8192 (we keep 4096): the block opens with 0 then 4096,
    // which empties the table on both sides.
    e.set_max_table_size(0);
    e.set_max_table_size(8192);
    out.clear();
    e.encode([(&b"x-a"[..], &b"1"[..])], &mut out);
    assert_eq!(&out[..4], &[0x20, 0x3f, 0xe1, 0x1f]);
    d.set_max_table_size(0);
    d.set_max_table_size(8192);
    assert_eq!(decode_all(&mut d, &out).unwrap(), fields(&[("x-a", "1")]));
    assert_eq!(d.dynamic_table_size(), 36);
    assert_eq!(e.dynamic_table_size(), 36);

    // No change, no update.
    e.set_max_table_size(4096);
    out.clear();
    e.begin_block(&mut out);
    assert!(out.is_empty());

    // A single decrease is announced once.
    e.set_max_table_size(100);
    out.clear();
    e.begin_block(&mut out);
    assert_eq!(out, [0x3f, 0x45]);
}

#[test]
fn steady_state_response_headers_become_one_byte_each() {
    let mut e = Encoder::new();
    let mut d = Decoder::default();
    let response: [(&[u8], &[u8]); 3] =
        [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"0")];
    let mut first = Vec::new();
    e.encode(response, &mut first);
    assert_eq!(first[0], 0x88);
    decode_all(&mut d, &first).unwrap();
    for _ in 0..3 {
        let mut block = Vec::new();
        e.encode(response, &mut block);
        assert_eq!(block.len(), 3, "{block:02x?}");
        let got = decode_all(&mut d, &block).unwrap();
        assert_eq!(got, fields(&[(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "0")]));
    }
}

#[test]
fn never_indexed_fields_are_not_matched_nor_added() {
    let mut e = Encoder::new();
    let mut out = Vec::new();
    e.encode_field(b"authorization", b"secret", Indexing::Incremental, &mut out);
    out.clear();
    // Even though the exact field is now in the table, a never-indexed literal is sent.
    e.encode_field(b"authorization", b"secret", Indexing::Never, &mut out);
    assert_eq!(out[0], 0x10 | 15);
    assert_eq!(out[1], 23 - 15);
    assert_eq!(e.dynamic_table_size(), 13 + 6 + 32);
    // encode() picks Never for credentials by itself.
    assert_eq!(default_indexing(b"authorization", b"Bearer x"), Indexing::Never);
    assert_eq!(default_indexing(b"cookie", b"a=b"), Indexing::Never);
    assert_eq!(default_indexing(b"cookie", &[b'a'; 40]), Indexing::Incremental);
    assert_eq!(default_indexing(b"grpc-status", b"0"), Indexing::Incremental);
}

#[test]
fn fields_larger_than_the_table_are_not_indexed() {
    let mut e = Encoder::new();
    let mut d = Decoder::default();
    let big = vec![b'v'; 5000];
    let mut out = Vec::new();
    e.encode([(&b"x-small"[..], &b"1"[..]), (&b"x-big"[..], &big[..])], &mut out);
    let got = decode_all(&mut d, &out).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].1, big);
    // The small entry survived: the big one was sent without indexing instead of flushing it.
    assert_eq!(e.dynamic_table_size(), 7 + 1 + 32);
    assert_eq!(d.dynamic_table_size(), 7 + 1 + 32);
}

#[test]
fn header_list_over_the_limit_is_refused_cheaply_and_keeps_the_tables_in_step() {
    let mut enc = Encoder::new();
    let mut dec = Decoder::new(DEFAULT_TABLE_SIZE);
    dec.set_max_header_list_size(1000);
    let block = |enc: &mut Encoder, list: &[(&str, String, Indexing)]| {
        let mut b = Vec::new();
        enc.begin_block(&mut b);
        for (n, v, i) in list {
            enc.encode_field(n.as_bytes(), v.as_bytes(), *i, &mut b);
        }
        b
    };
    // Just under the limit: passes whole (name 5 + value 900 + 32 + "x-a" field 36 < 1000).
    let b =
        block(&mut enc, &[("x-a", "1".into(), Indexing::Incremental), ("x-big", "h".repeat(900), Indexing::Without)]);
    assert_eq!(decode_all(&mut dec, &b).unwrap().len(), 2);
    // A Huffman value far over the limit, not indexed: refused; only the field before it counts.
    let b = block(
        &mut enc,
        &[("x-c", "3".into(), Indexing::Incremental), ("x-big", "h".repeat(100_000), Indexing::Without)],
    );
    assert!(b.len() < 100_000, "the value is Huffman-coded");
    assert_eq!(dec.decode(&b, |_, _| {}), Err(DecodeError::HeaderListTooLarge));
    assert_eq!(table_entries(&dec.table), owned(&[("x-c", "3"), ("x-a", "1")]));
    // Still in step.
    let list = [("x-d", "4".to_string(), Indexing::Incremental), ("x-e", "5".to_string(), Indexing::Incremental)];
    let b = block(&mut enc, &list);
    assert_eq!(decode_all(&mut dec, &b).unwrap(), fields(&[("x-d", "4"), ("x-e", "5")]));
    let b = block(&mut enc, &list);
    assert!(b.len() <= 3, "both fields are table references now: {b:?}");
    assert_eq!(decode_all(&mut dec, &b).unwrap(), fields(&[("x-d", "4"), ("x-e", "5")]));

    // An indexed literal larger than the whole table (our encoder would not index it, so by
    // hand): not decoded to its end, and the table is emptied as §4.4 says.
    let mut b = vec![0x40];
    encode_integer(6, 7, 0, &mut b);
    b.extend_from_slice(b"x-huge");
    let mut coded = Vec::new();
    huffman::encode("h".repeat(50_000).as_bytes(), &mut coded);
    encode_integer(coded.len(), 7, 0x80, &mut b);
    b.extend_from_slice(&coded);
    assert_eq!(dec.decode(&b, |_, _| {}), Err(DecodeError::HeaderListTooLarge));
    assert_eq!(table_entries(&dec.table), owned(&[]));
    // A table-sized one under a generous list limit is kept whole.
    dec.set_max_header_list_size(1 << 20);
    let mut b = vec![0x40];
    encode_integer(6, 7, 0, &mut b);
    b.extend_from_slice(b"x-fits");
    coded.clear();
    huffman::encode("h".repeat(4000).as_bytes(), &mut coded);
    encode_integer(coded.len(), 7, 0x80, &mut b);
    b.extend_from_slice(&coded);
    assert_eq!(decode_all(&mut dec, &b).unwrap().len(), 1);
    assert_eq!(dec.table.len(), 1);
}

#[test]
fn huffman_decode_capped_stops_at_the_cap() {
    let value = "abcdefgh".repeat(100);
    let mut coded = Vec::new();
    huffman::encode(value.as_bytes(), &mut coded);
    let mut out = Vec::new();
    assert_eq!(huffman::decode_capped(&coded, &mut out, 800), Ok(true));
    assert_eq!(out, value.as_bytes());
    out.clear();
    assert_eq!(huffman::decode_capped(&coded, &mut out, 799), Ok(false));
    assert_eq!(out, &value.as_bytes()[..799]);
    out.clear();
    assert_eq!(huffman::decode_capped(&coded, &mut out, 0), Ok(false));
    assert!(out.is_empty());
}
