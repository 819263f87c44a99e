//! The HPACK decoder faces bytes chosen by the peer, so it must reject every malformed input
//! with the right `DecodeError` and never panic, index out of bounds or grow its dynamic table
//! beyond the advertised size. This test crafts inputs for each error variant, checks that an
//! oversized header list still keeps the dynamic table in step, and then feeds a few hundred
//! thousand pseudo-random and mutated blocks (seeded xorshift, so failures reproduce) to
//! long-lived decoders whose table limit also changes along the way.

use metastore_net::hpack::{self, huffman, DecodeError, Decoder, Encoder, Indexing};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn decode(d: &mut Decoder, block: &[u8]) -> Result<Fields, DecodeError> {
    let mut out = Vec::new();
    d.decode(block, |n, v| out.push((n.to_vec(), v.to_vec())))?;
    Ok(out)
}

fn err(block: &[u8]) -> DecodeError {
    decode(&mut Decoder::new(4096), block).expect_err("block should be rejected")
}

#[test]
fn each_error_variant_from_a_crafted_block() {
    // Truncated: an index whose continuation byte is missing; a literal without its name length;
    // a literal with a name but no value.
    assert_eq!(err(&[0x82, 0xff]), DecodeError::Truncated);
    assert_eq!(err(&[0x40]), DecodeError::Truncated);
    assert_eq!(err(&[0x00, 0x01, b'a']), DecodeError::Truncated);
    assert_eq!(err(&[0x3f]), DecodeError::Truncated);

    // IntegerOverflow: 127 + (2^28 - 1) + 15 * 2^28 > u32::MAX; and six continuation bytes.
    assert_eq!(err(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]), DecodeError::IntegerOverflow);
    assert_eq!(err(&[0xff, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]), DecodeError::IntegerOverflow);
    assert_eq!(err(&[0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0x7f]), DecodeError::IntegerOverflow);

    // InvalidIndex: index 0; first dynamic index of an empty table; a literal naming one.
    assert_eq!(err(&[0x80]), DecodeError::InvalidIndex);
    assert_eq!(err(&[0xbe]), DecodeError::InvalidIndex);
    assert_eq!(err(&[0x7e, 0x01, b'v']), DecodeError::InvalidIndex);
    assert_eq!(err(&[0x0f, 0x2f, 0x01, b'v']), DecodeError::InvalidIndex);

    // InvalidHuffman: a name of one all-ones byte is 8 bits of padding; 0x00 is a padding of zeros
    // after '0'; four 0xff bytes contain EOS.
    assert_eq!(err(&[0x00, 0x81, 0xff, 0x00]), DecodeError::InvalidHuffman);
    assert_eq!(err(&[0x00, 0x81, 0x00, 0x00]), DecodeError::InvalidHuffman);
    assert_eq!(err(&[0x10, 0x01, b'a', 0x84, 0xff, 0xff, 0xff, 0xff]), DecodeError::InvalidHuffman);

    // TableSizeUpdateTooLarge: 4097 when 4096 was advertised.
    assert_eq!(err(&[0x3f, 0xe2, 0x1f]), DecodeError::TableSizeUpdateTooLarge);
    let mut d = Decoder::new(4096);
    d.set_max_table_size(100);
    assert_eq!(decode(&mut d, &[0x3f, 0x46]), Err(DecodeError::TableSizeUpdateTooLarge));
    assert_eq!(decode(&mut d, &[0x3f, 0x45, 0x82]).unwrap().len(), 1);

    // TableSizeUpdateNotAtStart.
    assert_eq!(err(&[0x82, 0x20]), DecodeError::TableSizeUpdateNotAtStart);
    // ...while several at the start are fine.
    assert!(decode(&mut Decoder::new(4096), &[0x20, 0x3f, 0xe1, 0x1f, 0x82]).is_ok());

    // StringTooLong: a 5-byte name with one byte left; a huge declared length.
    assert_eq!(err(&[0x00, 0x05, b'a']), DecodeError::StringTooLong);
    assert_eq!(err(&[0x00, 0x7f, 0xff, 0xff, 0xff, 0x0f]), DecodeError::StringTooLong);
    assert_eq!(err(&[0x01, 0x85, 0xff]), DecodeError::StringTooLong);
}

#[test]
fn header_list_too_large_still_processes_the_whole_block() {
    let mut d = Decoder::new(4096);
    // :method GET is 7 + 3 + 32 = 42.
    d.set_max_header_list_size(100);
    let mut block = vec![0x82, 0x82];
    // Third field crosses the limit; then a literal with incremental indexing that must still land
    // in the table, since the peer's encoder added it to its own.
    block.extend_from_slice(&[0x82, 0x40, 0x03, b'x', b'-', b'a', 0x01, b'1']);
    let mut seen = 0;
    assert_eq!(d.decode(&block, |_, _| seen += 1), Err(DecodeError::HeaderListTooLarge));
    assert_eq!(seen, 2);
    assert_eq!(d.dynamic_table_size(), 3 + 1 + 32);
    // The next block can refer to that entry.
    assert_eq!(decode(&mut d, &[0xbe]).unwrap(), vec![(b"x-a".to_vec(), b"1".to_vec())]);
    // The limit is per block.
    assert!(decode(&mut d, &[0x82, 0x82]).is_ok());
}

#[test]
fn default_header_list_limit_bounds_indexed_amplification() {
    // One 4 KiB entry referenced once per byte: 16 KiB of block would be 64 MiB of fields.
    let mut e = Encoder::new();
    let mut block = Vec::new();
    e.encode_field(b"x", &vec![b'v'; 4000], Indexing::Incremental, &mut block);
    block.extend(std::iter::repeat_n(0xbe, 16 * 1024));
    let mut d = Decoder::new(4096);
    let mut bytes = 0usize;
    let r = d.decode(&block, |n, v| bytes += n.len() + v.len());
    assert_eq!(r, Err(DecodeError::HeaderListTooLarge));
    assert!(bytes <= hpack::HEADER_LIST_SIZE_DEFAULT_MAX);
}

/// Fragments that are each a plausible start of a representation, so random concatenations reach
/// deeper than uniformly random bytes would.
const PIECES: &[&[u8]] = &[
    &[0x82],
    &[0xbe],
    &[0xc0],
    &[0xff, 0x80, 0x01],
    &[0x40, 0x03, b'a', b'b', b'c', 0x02, b'x', b'y'],
    &[0x7e, 0x01, b'v'],
    &[0x44, 0x81, 0x63],
    &[0x00, 0x83, 0xf1, 0xe3, 0xc2, 0x00],
    &[0x10, 0x01, b'k', 0x7f, 0x10],
    &[0x20],
    &[0x3f, 0xe1, 0x1f],
    &[0x3f, 0x45],
    &[0x0f, 0x2f, 0x00],
    &[0x5f, 0x1d, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff],
];

#[test]
fn random_and_mutated_blocks_never_panic_and_respect_the_table_limit() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut decoder = Decoder::new(4096);
    let mut max = 4096;
    let mut block = Vec::new();
    let mut outcomes = [0usize; 2];
    for round in 0..300_000 {
        if round % 997 == 1 {
            // A new SETTINGS_HEADER_TABLE_SIZE was acknowledged.
            max = [0, 1, 64, 256, 4096, 65536][rng.below(6)];
            decoder.set_max_table_size(max);
            decoder.set_max_header_list_size([usize::MAX, 0, 100, 4096][rng.below(4)]);
        }
        if round % 50_021 == 50_020 {
            decoder = Decoder::new(4096);
            max = 4096;
        }
        block.clear();
        match round % 3 {
            0 => {
                let len = rng.below(48);
                block.extend((0..len).map(|_| rng.next() as u8));
            }
            1 => {
                for _ in 0..rng.below(8) {
                    block.extend_from_slice(PIECES[rng.below(PIECES.len())]);
                }
            }
            _ => {
                for _ in 0..rng.below(8) {
                    block.extend_from_slice(PIECES[rng.below(PIECES.len())]);
                }
                for _ in 0..=rng.below(3) {
                    if block.is_empty() {
                        break;
                    }
                    let i = rng.below(block.len());
                    block[i] ^= 1 << rng.below(8);
                }
                if !block.is_empty() && rng.below(4) == 0 {
                    block.truncate(rng.below(block.len()));
                }
            }
        }
        let r = decoder.decode(&block, |_, _| {});
        outcomes[r.is_ok() as usize] += 1;
        assert!(decoder.dynamic_table_size() <= max, "round {round}: table over {max}");
    }
    // Both paths were exercised a meaningful number of times.
    assert!(outcomes[0] > 10_000 && outcomes[1] > 10_000, "{outcomes:?}");
}

#[test]
fn random_huffman_input_never_panics_and_output_is_bounded() {
    let mut rng = XorShift(12345);
    let mut out = Vec::new();
    let mut ok = 0;
    for _ in 0..200_000 {
        let len = rng.below(40);
        let src: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        out.clear();
        if huffman::decode(&src, &mut out).is_ok() {
            ok += 1;
            // A valid decoding re-encodes to the same bytes: the code is prefix-free and the
            // padding is canonical.
            let mut again = Vec::new();
            huffman::encode(&out, &mut again);
            assert_eq!(again, src);
        }
        assert!(out.len() <= len * 8 / 5 + 1);
    }
    assert!(ok > 1000, "{ok}");
}
