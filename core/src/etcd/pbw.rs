//! A protobuf writer for responses built straight from store records: no intermediate message
//! structs, no allocation beyond the output buffer. Field order and proto3 default omission
//! follow what Go's encoder emits, so clients cannot tell the difference.

pub const VARINT: u32 = 0;
pub const LEN: u32 = 2;

pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn tag(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, ((field << 3) | wire) as u64);
}

fn tag_len(field: u32) -> usize {
    varint_len((field << 3) as u64)
}

/// An int64/uint64 field; zero is omitted (proto3). Negative int64 is a 10-byte varint.
pub fn u64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(buf, field, VARINT);
        varint(buf, v);
    }
}

pub fn u64_field_len(field: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        tag_len(field) + varint_len(v)
    }
}

pub fn i64_field(buf: &mut Vec<u8>, field: u32, v: i64) {
    u64_field(buf, field, v as u64)
}

pub fn i64_field_len(field: u32, v: i64) -> usize {
    u64_field_len(field, v as u64)
}

pub fn bool_field(buf: &mut Vec<u8>, field: u32, v: bool) {
    u64_field(buf, field, v as u64)
}

pub fn bool_field_len(field: u32, v: bool) -> usize {
    u64_field_len(field, v as u64)
}

/// A bytes/string field; empty is omitted.
pub fn bytes_field(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
    if !v.is_empty() {
        tag(buf, field, LEN);
        varint(buf, v.len() as u64);
        buf.extend_from_slice(v);
    }
}

pub fn bytes_field_len(field: u32, v: &[u8]) -> usize {
    if v.is_empty() {
        0
    } else {
        tag_len(field) + varint_len(v.len() as u64) + v.len()
    }
}

/// The header of an embedded message of `len` bytes (always written, even when empty: a set
/// message field is present on the wire).
pub fn message_header(buf: &mut Vec<u8>, field: u32, len: usize) {
    tag(buf, field, LEN);
    varint(buf, len as u64);
}

pub fn message_len(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_lengths_agree() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX, (-1i64) as u64] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
        let mut b = Vec::new();
        i64_field(&mut b, 2, -1);
        assert_eq!(b.len(), 11, "negative int64: tag + 10 bytes");
        assert_eq!(b.len(), i64_field_len(2, -1));
        let mut b = Vec::new();
        bytes_field(&mut b, 64, b"x");
        assert_eq!(b, [0x82, 0x04, 1, b'x']);
        assert_eq!(bytes_field_len(64, b"x"), 4);
        let mut b = Vec::new();
        message_header(&mut b, 1, 0);
        assert_eq!(b, [0x0a, 0]);
    }
}
