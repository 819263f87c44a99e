//! The HPACK Huffman code (RFC 7541 §5.2, Appendix B).
//!
//! The code in Appendix B is canonical: codes of one length are consecutive integers in symbol
//! order, and each length's first code follows from the previous length's last. So the only data
//! needed is the code length of each of the 257 symbols; the codes themselves, the decoding
//! tables, and everything else are computed from those lengths at compile time. A unit test checks
//! the computed codes against values copied from the RFC.
//!
//! Decoding keeps up to 64 bits of input in an accumulator. The next `FAST_BITS` bits index a table
//! that resolves every code of up to `FAST_BITS` bits (nearly all of the characters seen in
//! headers) in one step; longer codes fall back to the canonical "first code of each length"
//! comparison, which needs no tree and no allocation.

use super::DecodeError;

/// Number of symbols: the 256 byte values and EOS.
const SYMBOLS: usize = 257;

/// The end-of-string symbol, which must never appear in an encoded string (§5.2).
const EOS: u16 = 256;

/// Longest code in the table (EOS and a few control bytes).
const CODE_LEN_MAX: u32 = 30;

/// Width of the single-step decoding table's index: codes up to this length decode in one lookup.
const FAST_BITS: u32 = 12;

/// Longest padding §5.2 allows: anything longer must be rejected.
const PADDING_MAX: u32 = 7;

/// Code length in bits of each symbol, from RFC 7541 Appendix B (symbol 256 is EOS).
#[rustfmt::skip]
const CODE_LEN: [u8; SYMBOLS] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
];

/// Everything derived from `CODE_LEN`.
struct Tables {
    /// Code of each symbol, right-aligned.
    code: [u32; SYMBOLS],
    /// Per length: the first code of that length, right-aligned (0 when there is none).
    first: [u32; CODE_LEN_MAX as usize + 1],
    /// Per length: how many symbols have a code of that length.
    count: [u32; CODE_LEN_MAX as usize + 1],
    /// Per length: position in `sorted` of the first symbol with a code of that length.
    offset: [u32; CODE_LEN_MAX as usize + 1],
    /// Symbols ordered by (code length, symbol), i.e. by code.
    sorted: [u16; SYMBOLS],
    /// Indexed by the next `FAST_BITS` bits: `symbol | length << 9`, or 0 if the code is longer.
    fast: [u16; 1 << FAST_BITS],
}

const fn build_tables() -> Tables {
    let mut t = Tables {
        code: [0; SYMBOLS],
        first: [0; CODE_LEN_MAX as usize + 1],
        count: [0; CODE_LEN_MAX as usize + 1],
        offset: [0; CODE_LEN_MAX as usize + 1],
        sorted: [0; SYMBOLS],
        fast: [0; 1 << FAST_BITS],
    };
    let mut next_code: u32 = 0;
    let mut placed: usize = 0;
    let mut len: usize = 1;
    while len <= CODE_LEN_MAX as usize {
        t.first[len] = next_code;
        t.offset[len] = placed as u32;
        let mut sym = 0;
        while sym < SYMBOLS {
            if CODE_LEN[sym] as usize == len {
                t.code[sym] = next_code;
                t.sorted[placed] = sym as u16;
                placed += 1;
                t.count[len] += 1;
                if len <= FAST_BITS as usize && sym != EOS as usize {
                    let shift = FAST_BITS as usize - len;
                    let base = (next_code as usize) << shift;
                    let mut fill = 0;
                    while fill < 1 << shift {
                        t.fast[base + fill] = sym as u16 | (len as u16) << 9;
                        fill += 1;
                    }
                }
                next_code += 1;
            }
            sym += 1;
        }
        next_code <<= 1;
        len += 1;
    }
    t
}

const TABLES_C: Tables = build_tables();
static TABLES: Tables = TABLES_C;

/// Indexed by the next `FAST_BITS` bits: the one or two symbols whose codes fit in them, as
/// `sym1 | sym2 << 8 | count << 16 | bits << 20`; count 0 when the first code is longer. Text
/// codes are mostly 5 to 7 bits, so most steps decode two symbols.
static PAIRS: [u32; 1 << FAST_BITS] = build_pairs(&TABLES_C.fast);

const fn build_pairs(fast: &[u16; 1 << FAST_BITS]) -> [u32; 1 << FAST_BITS] {
    let mut t = [0u32; 1 << FAST_BITS];
    let mask = (1usize << FAST_BITS) - 1;
    let mut i = 0;
    while i < t.len() {
        let first = fast[i];
        if first != 0 {
            let (s1, l1) = ((first & 0x1ff) as u32, (first >> 9) as u32);
            // The second code may use only the bits the first left; a code depends on its own
            // prefix only, so a lookup with the rest zero-filled is right when it fits.
            let second = fast[(i << l1) & mask];
            let (s2, l2) = ((second & 0x1ff) as u32, (second >> 9) as u32);
            t[i] = if second != 0 && l1 + l2 <= FAST_BITS {
                s1 | s2 << 8 | 2 << 16 | (l1 + l2) << 20
            } else {
                s1 | 1 << 16 | l1 << 20
            };
        }
        i += 1;
    }
    t
}

/// Length in bytes of `src` once Huffman-encoded (padding included).
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src.iter().map(|&b| usize::from(CODE_LEN[usize::from(b)])).sum();
    bits.div_ceil(8)
}

/// Appends the Huffman encoding of `src` to `dst`, padded with the most significant bits of EOS.
pub fn encode(src: &[u8], dst: &mut Vec<u8>) {
    dst.reserve(encoded_len(src));
    // At most 7 pending bits plus one 30-bit code: always fits.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in src {
        let sym = usize::from(b);
        let len = u32::from(CODE_LEN[sym]);
        acc = (acc << len) | u64::from(TABLES.code[sym]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            dst.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        // Pad with ones: the leading bits of EOS.
        dst.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
}

/// Appends the decoding of `src` to `dst`.
///
/// Rejects, per §5.2, padding longer than 7 bits, padding that is not all ones, and a decoded EOS.
/// `dst` grows by at most `src.len() * 8 / 5 + 1` bytes (the shortest code is 5 bits).
pub fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), DecodeError> {
    decode_capped(src, dst, usize::MAX).map(|_| ())
}

/// [`decode`], but stops once more than `cap` bytes would be decoded: returns Ok(false) then, with
/// the first `cap` decoded bytes appended and the rest of `src` unexamined. This bounds the work a
/// peer can demand with a string the caller will not keep (a header list over its limit).
pub fn decode_capped(src: &[u8], dst: &mut Vec<u8>, cap: usize) -> Result<bool, DecodeError> {
    let start = dst.len();
    let room = (src.len() / 5 * 8 + 8).min(cap.saturating_add(1));
    dst.resize(start + room, 0);
    let out = dst.get_mut(start..).unwrap_or_default();
    let mut n = 0;
    let r = decode_into(src, out, &mut n);
    dst.truncate(start + n.min(cap));
    match r {
        Ok(()) if n > cap => Ok(false),
        Ok(()) => Ok(true),
        // The output ran out: only possible past `cap` (room covers any complete decoding).
        Err(None) => Ok(false),
        Err(Some(e)) => Err(e),
    }
}

/// Decodes into `out`, counting into `*n`; Err(None) when `out` is full.
#[inline]
fn decode_into(src: &[u8], out: &mut [u8], n: &mut usize) -> Result<(), Option<DecodeError>> {
    let mut input = src.iter();
    // The low `bits` bits of `acc` are input not yet decoded, oldest bit highest.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    loop {
        while bits <= 56 {
            let Some(&b) = input.next() else { break };
            acc = (acc << 8) | u64::from(b);
            bits += 8;
        }
        // With at least 30 bits in hand every code is complete: decode without refilling.
        while bits >= CODE_LEN_MAX {
            let pair = PAIRS[((acc >> (bits - FAST_BITS)) & ((1 << FAST_BITS) - 1)) as usize];
            if pair != 0 {
                if let Some([a, b]) = out.get_mut(*n..*n + 2) {
                    // Two slots written, one or two used (a spare one is overwritten next).
                    *a = pair as u8;
                    *b = (pair >> 8) as u8;
                    *n += ((pair >> 16) & 0xf) as usize;
                    bits -= pair >> 20;
                    continue;
                }
            }
            let (sym, len) = symbol(acc, bits);
            if sym == EOS {
                return Err(Some(DecodeError::InvalidHuffman));
            }
            *out.get_mut(*n).ok_or(None)? = sym as u8;
            *n += 1;
            bits -= len;
        }
        if input.len() > 0 {
            continue;
        }
        // The tail: fewer than 30 bits left, no more input.
        if bits == 0 {
            return Ok(());
        }
        let (sym, len) = symbol(acc, bits);
        if len > bits {
            // Only padding is left, or a code was cut short: the input ran out mid-symbol.
            let rest = acc & ((1 << bits) - 1);
            return if bits <= PADDING_MAX && rest == (1 << bits) - 1 {
                Ok(())
            } else {
                Err(Some(DecodeError::InvalidHuffman))
            };
        }
        if sym == EOS {
            return Err(Some(DecodeError::InvalidHuffman));
        }
        *out.get_mut(*n).ok_or(None)? = sym as u8;
        *n += 1;
        bits -= len;
    }
}

/// The symbol the undecoded bits start with, and its code's length (which may exceed `bits`
/// at the input's end: see [`peek`]).
#[inline(always)]
fn symbol(acc: u64, bits: u32) -> (u16, u32) {
    let fast = TABLES.fast[peek(acc, bits, FAST_BITS) as usize];
    if fast != 0 {
        (fast & 0x1ff, u32::from(fast >> 9))
    } else {
        decode_long(peek(acc, bits, CODE_LEN_MAX))
    }
}

/// The next `n` (≤ 32) undecoded bits; past the end of the input, the missing bits read as ones
/// so that a valid padding decodes as (a prefix of) EOS and is recognised as such.
#[inline]
fn peek(acc: u64, bits: u32, n: u32) -> u32 {
    let mask = (1u64 << n) - 1;
    let v = if bits >= n {
        acc >> (bits - n)
    } else {
        let missing = n - bits;
        (acc << missing) | ((1u64 << missing) - 1)
    };
    (v & mask) as u32
}

/// Decodes a code longer than `FAST_BITS` from the next 30 bits: the code has length `len` if its
/// first `len` bits, read as an integer, fall among that length's codes. Trying lengths in
/// increasing order is what makes the canonical property sufficient.
fn decode_long(next30: u32) -> (u16, u32) {
    let mut len = FAST_BITS + 1;
    while len <= CODE_LEN_MAX {
        let l = len as usize;
        let code = next30 >> (CODE_LEN_MAX - len);
        let rank = code.wrapping_sub(TABLES.first[l]);
        if rank < TABLES.count[l] {
            let pos = (TABLES.offset[l] + rank) as usize;
            return (TABLES.sorted.get(pos).copied().unwrap_or(EOS), len);
        }
        len += 1;
    }
    // Unreachable: the code is complete (Kraft sum 1), so every 30-bit string starts with a code.
    (EOS, CODE_LEN_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn codes_match_rfc_appendix_b() {
        // (symbol, code as hex aligned to LSB, length) spot checks, including every length.
        let rfc: &[(usize, u32, u8)] = &[
            (0, 0x1ff8, 13),
            (1, 0x7fffd8, 23),
            (9, 0xffffea, 24),
            (10, 0x3ffffffc, 30),
            (13, 0x3ffffffd, 30),
            (22, 0x3ffffffe, 30),
            (31, 0xffffffb, 28),
            (b' ' as usize, 0x14, 6),
            (b'!' as usize, 0x3f8, 10),
            (b'#' as usize, 0xffa, 12),
            (b'\'' as usize, 0x7fa, 11),
            (b'0' as usize, 0x0, 5),
            (b':' as usize, 0x5c, 7),
            (b'<' as usize, 0x7ffc, 15),
            (b'X' as usize, 0xfc, 8),
            (b'\\' as usize, 0x7fff0, 19),
            (b'^' as usize, 0x3ffc, 14),
            (b'a' as usize, 0x3, 5),
            (b'z' as usize, 0x7b, 7),
            (b'~' as usize, 0x1ffd, 13),
            (127, 0xffffffc, 28),
            (128, 0xfffe6, 20),
            (153, 0x1fffdc, 21),
            (199, 0x1ffffec, 25),
            (203, 0x7ffffde, 27),
            (220, 0xffffffd, 28),
            (249, 0xffffffe, 28),
            (254, 0x7fffff0, 27),
            (255, 0x3ffffee, 26),
            (256, 0x3fffffff, 30),
        ];
        for &(sym, code, len) in rfc {
            assert_eq!((TABLES.code[sym], CODE_LEN[sym]), (code, len), "symbol {sym}");
        }
        // The code is complete: the Kraft sum of 2^-len is exactly 1.
        let kraft: u64 = CODE_LEN.iter().map(|&l| 1u64 << (30 - u32::from(l))).sum();
        assert_eq!(kraft, 1 << 30);
    }

    #[test]
    fn rfc_appendix_c4_and_c6_strings() {
        let cases: &[(&str, &str)] = &[
            ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
            ("no-cache", "a8eb 1064 9cbf"),
            ("custom-key", "25a8 49e9 5ba9 7d7f"),
            ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
            ("302", "6402"),
            ("private", "aec3 771a 4b"),
            ("Mon, 21 Oct 2013 20:13:21 GMT", "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff"),
            ("https://www.example.com", "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"),
            ("gzip", "9bd9 ab"),
            (
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
                "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ),
        ];
        for &(plain, wire) in cases {
            let wire = hex(wire);
            let mut enc = Vec::new();
            encode(plain.as_bytes(), &mut enc);
            assert_eq!(enc, wire, "{plain}");
            assert_eq!(encoded_len(plain.as_bytes()), wire.len());
            let mut dec = Vec::new();
            decode(&wire, &mut dec).unwrap();
            assert_eq!(dec, plain.as_bytes());
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255u8).collect();
        for n in 0..=all.len() {
            let src = &all[..n];
            let mut enc = Vec::new();
            encode(src, &mut enc);
            let mut dec = Vec::new();
            decode(&enc, &mut dec).unwrap();
            assert_eq!(dec, src);
            // Reversed too, so every symbol is also seen at an odd bit alignment.
            let rev: Vec<u8> = src.iter().rev().copied().collect();
            enc.clear();
            encode(&rev, &mut enc);
            dec.clear();
            decode(&enc, &mut dec).unwrap();
            assert_eq!(dec, rev);
        }
    }

    #[test]
    fn rejects_bad_padding_and_eos() {
        let mut out = Vec::new();
        // '0' is 00000: a padding of 3 zero bits is not a prefix of EOS.
        assert_eq!(decode(&[0b0000_0000], &mut out), Err(DecodeError::InvalidHuffman));
        // '0' then 3 one bits: valid.
        out.clear();
        assert_eq!(decode(&[0b0000_0111], &mut out), Ok(()));
        assert_eq!(out, b"0");
        // A whole byte of padding is more than 7 bits.
        assert_eq!(decode(&[0xff], &mut out), Err(DecodeError::InvalidHuffman));
        assert_eq!(decode(&[0b0000_0111, 0xff], &mut out), Err(DecodeError::InvalidHuffman));
        // EOS itself (30 ones) followed by two padding ones.
        assert_eq!(decode(&[0xff; 4], &mut out), Err(DecodeError::InvalidHuffman));
        // A long code cut short by the end of input ('\\' is 19 bits; give 16 of them).
        assert_eq!(decode(&[0xff, 0xfe], &mut out), Err(DecodeError::InvalidHuffman));
        // Empty input is the empty string.
        out.clear();
        assert_eq!(decode(&[], &mut out), Ok(()));
        assert!(out.is_empty());
    }
}
