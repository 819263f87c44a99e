//! `hpack_decode`: a sequence of header blocks into one [`Decoder`], each decoded list then
//! re-encoded by our [`Encoder`] and decoded again by a second decoder.
//!
//! Input layout:
//!
//! | byte | meaning |
//! | --- | --- |
//! | 0 | decoder table size, in units of 32 bytes (0..=8160) |
//! | 1 | header list limit, in units of 16 bytes (0 = the default 64 KiB) |
//! | 2 | encoder: bit 0 Huffman off; bits 1-7 the peer's table size in units of 64 bytes |
//! | 3.. | operations: a length byte `L` then `L` bytes of header block (`L` <= 0xfd); 0xfe then a byte `b`: `set_max_table_size(b * 32)`; 0xff: the rest of the input is one block |
//!
//! Invariants: no panic; the dynamic table never exceeds the limit in force; a decoded list
//! never exceeds the header list limit; re-encoding a decoded list and decoding it again gives
//! the same list, with the encoder's and the second decoder's tables in step.

use metastore_net::hpack::{DecodeError, Decoder, Encoder};

use crate::wire::Fields;

const OVERHEAD: usize = 32;

pub fn run(data: &[u8]) {
    let [table, list, enc_byte, ops @ ..] = data else {
        return;
    };
    let mut ops: &[u8] = ops;
    let mut max_table = usize::from(*table) * 32;
    let list_max = match *list {
        0 => metastore_net::hpack::HEADER_LIST_SIZE_DEFAULT_MAX,
        n => usize::from(n) * 16,
    };
    let mut dec = Decoder::new(max_table);
    dec.set_max_header_list_size(list_max);

    let mut enc = Encoder::new();
    enc.set_huffman(enc_byte & 1 == 0);
    enc.set_max_table_size(usize::from(enc_byte >> 1) * 64);
    let mut dec2 = Decoder::new(4096);
    dec2.set_max_header_list_size(usize::MAX);

    let mut fields = Fields::new();
    let mut again = Fields::new();
    let mut wire = Vec::new();
    while let Some((&op, rest)) = ops.split_first() {
        let block = match op {
            0xfe => {
                let Some((&b, rest)) = rest.split_first() else {
                    break;
                };
                max_table = usize::from(b) * 32;
                dec.set_max_table_size(max_table);
                assert!(dec.dynamic_table_size() <= max_table, "table not shrunk");
                ops = rest;
                continue;
            }
            0xff => {
                ops = &[];
                rest
            }
            n => {
                let (block, rest) = rest.split_at(usize::from(n).min(rest.len()));
                ops = rest;
                block
            }
        };

        fields.clear();
        let r = dec.decode(block, |n, v| fields.push((n.to_vec(), v.to_vec())));
        assert!(
            dec.dynamic_table_size() <= max_table,
            "dynamic table {} above its limit {max_table} ({r:?})",
            dec.dynamic_table_size()
        );
        let list: usize = fields.iter().map(|(n, v)| n.len() + v.len() + OVERHEAD).sum();
        assert!(list <= list_max, "header list of {list} bytes passed a {list_max} limit");
        match r {
            Ok(()) | Err(DecodeError::HeaderListTooLarge) => {}
            // The table is undefined now (a real connection closes), but decoding more blocks
            // must still be safe; the round trip below is on its own pair of tables.
            Err(_) => continue,
        }

        wire.clear();
        enc.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])), &mut wire);
        again.clear();
        let r2 = dec2.decode(&wire, |n, v| again.push((n.to_vec(), v.to_vec())));
        assert_eq!(r2, Ok(()), "our own encoding does not decode");
        assert!(fields == again, "round trip changed the header list");
        assert_eq!(enc.dynamic_table_size(), dec2.dynamic_table_size(), "encoder and decoder tables out of step");
        assert!(dec2.dynamic_table_size() <= 4096);
    }
}
