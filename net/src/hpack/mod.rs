//! HPACK header compression (RFC 7541) for HTTP/2.
//!
//! [`Decoder`] turns one header block (the HEADERS and CONTINUATION payloads, concatenated) into
//! a sequence of `(name, value)` callbacks, and [`Encoder`] does the reverse. Each side owns one
//! dynamic table per connection direction; both must see every header block, in order, for the
//! tables to stay in step with the peer's.
//!
//! The decoder reads bytes from the network, so it is written to never panic, to reject anything
//! RFC 7541 rejects with a [`DecodeError`] (a COMPRESSION_ERROR connection error in HTTP/2), and
//! to never let the peer make it hold more than the table size we advertised plus a scratch
//! buffer bounded by the block it was handed.

pub mod huffman;
mod table;

#[cfg(test)]
mod tests;

use table::{static_find, static_get, DynamicTable, ENTRY_OVERHEAD, STATIC_LEN};

/// Why a header block was rejected. Every variant is a COMPRESSION_ERROR (RFC 9113 §4.3) except
/// `HeaderListTooLarge`, after which the connection's HPACK state is still intact (the whole block
/// was processed) and the stream alone can be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The block ends in the middle of a representation.
    Truncated,
    /// An integer above `u32::MAX`, or with more than 5 continuation bytes.
    IntegerOverflow,
    /// Index 0, or an index beyond the static and dynamic tables.
    InvalidIndex,
    /// Huffman padding longer than 7 bits or not all ones, or an encoded EOS symbol.
    InvalidHuffman,
    /// A dynamic table size update above the limit we advertised (SETTINGS_HEADER_TABLE_SIZE).
    TableSizeUpdateTooLarge,
    /// A dynamic table size update after a header field of the same block (RFC 7541 §4.2).
    TableSizeUpdateNotAtStart,
    /// The sum of name + value + 32 over the block's fields exceeds the configured maximum.
    HeaderListTooLarge,
    /// A string literal whose declared length runs past the end of the block.
    StringTooLong,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self {
            Self::Truncated => "header block truncated mid-representation",
            Self::IntegerOverflow => "HPACK integer overflow",
            Self::InvalidIndex => "HPACK index out of range",
            Self::InvalidHuffman => "invalid Huffman-coded string",
            Self::TableSizeUpdateTooLarge => "dynamic table size update above the advertised limit",
            Self::TableSizeUpdateNotAtStart => "dynamic table size update after a header field",
            Self::HeaderListTooLarge => "header list larger than the advertised maximum",
            Self::StringTooLong => "string literal longer than the header block",
        };
        f.write_str(what)
    }
}

impl std::error::Error for DecodeError {}

/// The dynamic table size both ends assume before any SETTINGS (RFC 9113 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// The most table the encoder will use whatever the peer allows: larger tables cost memory per
/// connection and a longer lookup scan for little extra compression of gRPC's few headers.
pub const ENCODER_TABLE_SIZE_MAX: usize = 4096;

/// Header list size limit until [`Decoder::set_max_header_list_size`] is called. RFC 9113 leaves
/// the default unlimited, but one byte of an indexed field can expand to 4 KiB of header, so an
/// unlimited default would let a 16 KiB block stand for 64 MiB of fields.
pub const HEADER_LIST_SIZE_DEFAULT_MAX: usize = 64 * 1024;

/// Continuation bytes allowed after an integer's prefix: 5 carry 35 bits, enough for any `u32`.
const INTEGER_CONTINUATION_MAX: usize = 5;

/// Largest integer accepted: sizes and indices beyond this are nonsense on any real connection,
/// and capping them keeps arithmetic on them overflow-free on 32-bit targets too.
const INTEGER_VALUE_MAX: u64 = u32::MAX as u64;

/// Appends `value` as an HPACK integer (RFC 7541 §5.1) with an N-bit prefix; the bits of
/// `first_byte_flags` above the prefix are the representation's pattern (e.g. 0x80 for indexed).
pub fn encode_integer(value: usize, prefix_bits: u8, first_byte_flags: u8, dst: &mut Vec<u8>) {
    debug_assert!((1..=8).contains(&prefix_bits), "prefix of {prefix_bits} bits");
    let prefix_bits = prefix_bits.clamp(1, 8);
    let max_prefix = (1usize << prefix_bits) - 1;
    let flags = if prefix_bits == 8 { 0 } else { first_byte_flags & !(max_prefix as u8) };
    if value < max_prefix {
        dst.push(flags | value as u8);
        return;
    }
    dst.push(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        dst.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    dst.push(rest as u8);
}

/// Reads an HPACK integer with an N-bit prefix from the start of `src` (the bits above the prefix
/// are ignored). Returns the value and the number of bytes it took.
pub fn decode_integer(src: &[u8], prefix_bits: u8) -> Result<(usize, usize), DecodeError> {
    let prefix_bits = prefix_bits.clamp(1, 8);
    let max_prefix = (1u16 << prefix_bits) - 1;
    let first = *src.first().ok_or(DecodeError::Truncated)?;
    let prefix = u16::from(first) & max_prefix;
    if prefix < max_prefix {
        return Ok((usize::from(prefix), 1));
    }
    let mut value = u64::from(prefix);
    for i in 0..INTEGER_CONTINUATION_MAX {
        let b = *src.get(1 + i).ok_or(DecodeError::Truncated)?;
        value += u64::from(b & 0x7f) << (7 * i);
        if value > INTEGER_VALUE_MAX {
            return Err(DecodeError::IntegerOverflow);
        }
        if b & 0x80 == 0 {
            let value = usize::try_from(value).map_err(|_| DecodeError::IntegerOverflow)?;
            return Ok((value, 2 + i));
        }
    }
    Err(DecodeError::IntegerOverflow)
}

/// Where a decoded string lives: in the block itself (raw literal) or in the decoder's scratch
/// buffer (Huffman literal). Ranges rather than slices, so the scratch can keep growing while a
/// field's name is decoded and then its value.
#[derive(Clone, Copy)]
enum Str {
    Block(usize, usize),
    Scratch(usize, usize),
    /// A Huffman string that decodes to more than the caller's cap (not decoded to its end).
    Over,
}

/// Where a literal field's name comes from.
#[derive(Clone, Copy)]
enum Name {
    Static(&'static [u8]),
    /// 0-based dynamic table index.
    Dynamic(usize),
    Literal(Str),
}

/// The HPACK decoder of one HTTP/2 connection (it decodes what the peer's encoder sent).
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// The SETTINGS_HEADER_TABLE_SIZE we advertised and the peer acknowledged.
    max_table_size: usize,
    max_header_list_size: usize,
    /// Huffman-decoded strings of the field being decoded; cleared per field, never shrunk, so
    /// steady-state decoding does not allocate. Bounded by 8/5 of the block length.
    scratch: Vec<u8>,
}

impl Decoder {
    /// `max_table_size` is the SETTINGS_HEADER_TABLE_SIZE in force, and the table's initial
    /// capacity. On a new connection that is 4096 whatever we are about to advertise: the
    /// peer's first blocks may be encoded before it has seen our SETTINGS, so a different value
    /// belongs in [`Decoder::set_max_table_size`] once the peer acknowledges it.
    pub fn new(max_table_size: usize) -> Self {
        Self {
            table: DynamicTable::new(max_table_size),
            max_table_size,
            max_header_list_size: HEADER_LIST_SIZE_DEFAULT_MAX,
            scratch: Vec::new(),
        }
    }

    /// Changes the limit on the peer's size updates, once the peer acknowledged our SETTINGS.
    ///
    /// A lower limit also shrinks the table at once. The peer must open its next block with a size
    /// update to at most the new limit (§4.2), which evicts the same entries, so this changes
    /// nothing for a compliant peer; for one that omits the update, it keeps the table within
    /// what we advertised rather than rejecting the block.
    pub fn set_max_table_size(&mut self, max: usize) {
        self.max_table_size = max;
        if self.table.capacity() > max {
            self.table.set_capacity(max);
        }
    }

    /// Limit on the decoded header list: the sum of name + value + 32 over a block's fields.
    pub fn set_max_header_list_size(&mut self, max: usize) {
        self.max_header_list_size = max;
    }

    /// Current dynamic table size in RFC 7541 octets (name + value + 32 per entry).
    pub fn dynamic_table_size(&self) -> usize {
        self.table.size()
    }

    /// Decodes one complete header block, calling `f(name, value)` for each field in order.
    ///
    /// The slices are valid only during the call. On `HeaderListTooLarge` the whole block has still
    /// been processed (so the dynamic table is in step with the peer's) but `f` was not called for
    /// the field that crossed the limit nor for any after it. On any other error the block was
    /// malformed, the table state is undefined and the connection must be closed.
    pub fn decode(&mut self, block: &[u8], mut f: impl FnMut(&[u8], &[u8])) -> Result<(), DecodeError> {
        let Self { table, max_table_size, max_header_list_size, scratch } = self;
        let mut pos = 0;
        let mut seen_field = false;
        let mut list_size: usize = 0;
        let mut too_large = false;
        let mut emit = |list_size: &mut usize, name: &[u8], value: &[u8]| {
            *list_size = list_size.saturating_add(name.len() + value.len() + ENTRY_OVERHEAD);
            if *list_size > *max_header_list_size {
                too_large = true;
            }
            if !too_large {
                f(name, value);
            }
        };

        while let Some(&first) = block.get(pos) {
            let rest = block.get(pos..).unwrap_or_default();
            if first & 0x80 != 0 {
                // Indexed header field (§6.1).
                let (index, used) = decode_integer(rest, 7)?;
                pos += used;
                seen_field = true;
                let (name, value) = lookup(table, index)?;
                emit(&mut list_size, name, value);
                continue;
            }
            if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3).
                if seen_field {
                    return Err(DecodeError::TableSizeUpdateNotAtStart);
                }
                let (size, used) = decode_integer(rest, 5)?;
                pos += used;
                if size > *max_table_size {
                    return Err(DecodeError::TableSizeUpdateTooLarge);
                }
                table.set_capacity(size);
                continue;
            }
            // Literal header field (§6.2): with incremental indexing (01), else without (0000)
            // or never indexed (0001), which decode the same way.
            seen_field = true;
            let incremental = first & 0xc0 == 0x40;
            let (index, used) = decode_integer(rest, if incremental { 6 } else { 4 })?;
            pos += used;
            scratch.clear();
            // A Huffman string longer than this is not decoded to its end: it would put the list
            // over its limit (so it is never passed on) and, if it is to be indexed, it is larger
            // than the whole table (which it then empties, §4.4, whatever its bytes).
            let mut cap = max_header_list_size.saturating_sub(list_size.saturating_add(ENTRY_OVERHEAD));
            if incremental {
                cap = cap.max(table.capacity());
            }
            let name = if index == 0 {
                Name::Literal(read_string(block, &mut pos, scratch, cap)?)
            } else if index <= STATIC_LEN {
                Name::Static(static_get(index).ok_or(DecodeError::InvalidIndex)?.0)
            } else {
                let dyn_index = index - STATIC_LEN - 1;
                if dyn_index >= table.len() {
                    return Err(DecodeError::InvalidIndex);
                }
                Name::Dynamic(dyn_index)
            };
            let value = read_string(block, &mut pos, scratch, cap)?;
            if matches!(value, Str::Over) || matches!(name, Name::Literal(Str::Over)) {
                // The list is over its limit.
                list_size = usize::MAX;
                if incremental {
                    table.clear();
                }
                continue;
            }
            let value = resolve(block, scratch, value)?;
            match name {
                Name::Dynamic(i) => {
                    let (name, _) = table.get(i).ok_or(DecodeError::InvalidIndex)?;
                    emit(&mut list_size, name, value);
                    if incremental && !table.insert_with_name_of(i, value) {
                        return Err(DecodeError::InvalidIndex);
                    }
                }
                Name::Static(name) => {
                    emit(&mut list_size, name, value);
                    if incremental {
                        table.insert(name, value);
                    }
                }
                Name::Literal(s) => {
                    let name = resolve(block, scratch, s)?;
                    emit(&mut list_size, name, value);
                    if incremental {
                        table.insert(name, value);
                    }
                }
            }
        }
        if too_large || list_size > *max_header_list_size {
            return Err(DecodeError::HeaderListTooLarge);
        }
        Ok(())
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_TABLE_SIZE)
    }
}

/// The entry at 1-based HPACK `index` across the static then the dynamic table.
fn lookup(table: &DynamicTable, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
    if index <= STATIC_LEN {
        return static_get(index).ok_or(DecodeError::InvalidIndex);
    }
    table.get(index - STATIC_LEN - 1).ok_or(DecodeError::InvalidIndex)
}

/// Reads a string literal (§5.2) at `*pos`; a Huffman one is decoded onto the end of `scratch`,
/// unless it decodes to more than `cap` bytes: then `Str::Over`, its bytes skipped.
fn read_string(block: &[u8], pos: &mut usize, scratch: &mut Vec<u8>, cap: usize) -> Result<Str, DecodeError> {
    let rest = block.get(*pos..).unwrap_or_default();
    let huffman = rest.first().ok_or(DecodeError::Truncated)? & 0x80 != 0;
    let (len, used) = decode_integer(rest, 7)?;
    let start = *pos + used;
    let end = start.checked_add(len).ok_or(DecodeError::StringTooLong)?;
    let raw = block.get(start..end).ok_or(DecodeError::StringTooLong)?;
    *pos = end;
    if !huffman {
        return Ok(Str::Block(start, end));
    }
    let from = scratch.len();
    if !huffman::decode_capped(raw, scratch, cap)? {
        scratch.truncate(from);
        return Ok(Str::Over);
    }
    Ok(Str::Scratch(from, scratch.len()))
}

fn resolve<'a>(block: &'a [u8], scratch: &'a [u8], s: Str) -> Result<&'a [u8], DecodeError> {
    let found = match s {
        Str::Block(a, b) => block.get(a..b),
        Str::Scratch(a, b) => scratch.get(a..b),
        Str::Over => None,
    };
    // Unreachable: the ranges were checked when they were made.
    found.ok_or(DecodeError::Truncated)
}

/// How a literal field may be indexed (RFC 7541 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indexing {
    /// Add the field to the dynamic table (§6.2.1).
    Incremental,
    /// Do not add it (§6.2.2).
    Without,
    /// Do not add it, and ask intermediaries to never index it either (§6.2.3): for values an
    /// attacker could guess one probe at a time by watching compressed sizes (§7.1).
    Never,
}

/// A dynamic table size update owed at the start of the next block (§4.2).
#[derive(Debug, Clone, Copy)]
struct PendingSizeUpdate {
    /// Smallest size the peer allowed since the last block: must be signalled so that the peer's
    /// decoder evicts what it evicted when it lowered its limit.
    min: usize,
    last: usize,
}

/// The HPACK encoder of one HTTP/2 connection (it encodes what the peer's decoder will read).
#[derive(Debug)]
pub struct Encoder {
    table: DynamicTable,
    huffman: bool,
    pending: Option<PendingSizeUpdate>,
}

impl Encoder {
    /// An encoder whose table size is the HTTP/2 default, 4096.
    pub fn new() -> Self {
        Self { table: DynamicTable::new(DEFAULT_TABLE_SIZE.min(ENCODER_TABLE_SIZE_MAX)), huffman: true, pending: None }
    }

    /// Enables (the default) or disables Huffman coding of string literals. Enabled, a string is
    /// Huffman-coded unless that would make it longer.
    pub fn set_huffman(&mut self, on: bool) {
        self.huffman = on;
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed. The encoder uses
    /// `min(max, ENCODER_TABLE_SIZE_MAX)` from the next block on, which it opens with the size
    /// update(s) announcing it.
    pub fn set_max_table_size(&mut self, max: usize) {
        let size = max.min(ENCODER_TABLE_SIZE_MAX);
        match &mut self.pending {
            Some(p) => {
                p.min = p.min.min(size);
                p.last = size;
            }
            None if size != self.table.capacity() => {
                self.pending = Some(PendingSizeUpdate { min: size, last: size });
            }
            None => {}
        }
    }

    /// Current dynamic table size in RFC 7541 octets.
    pub fn dynamic_table_size(&self) -> usize {
        self.table.size()
    }

    /// Starts a header block: emits the pending dynamic table size update(s), if any. Must be
    /// called before the first field of every block ([`Encoder::encode`] does).
    pub fn begin_block(&mut self, dst: &mut Vec<u8>) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if p.min < p.last {
            encode_integer(p.min, 5, 0x20, dst);
            self.table.set_capacity(p.min);
        }
        encode_integer(p.last, 5, 0x20, dst);
        self.table.set_capacity(p.last);
    }

    /// Encodes a whole header block: pending size updates, then each field. Fields are indexed
    /// incrementally except credentials (see [`default_indexing`]).
    pub fn encode<'a>(&mut self, fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>, dst: &mut Vec<u8>) {
        self.begin_block(dst);
        for (name, value) in fields {
            self.encode_field(name, value, default_indexing(name, value), dst);
        }
    }

    /// Appends one field. A full match in the static or dynamic table becomes a one-index field
    /// (except with `Never`: referring to an entry would tell whoever planted it that the secret
    /// matched); otherwise a literal, naming the field by index when the name is in a table.
    ///
    /// With `Incremental`, the field is added to the dynamic table, unless it is larger than the
    /// whole table: adding it would only empty the table, so it is sent without indexing instead.
    pub fn encode_field(&mut self, name: &[u8], value: &[u8], indexing: Indexing, dst: &mut Vec<u8>) {
        let (static_full, static_name) = static_find(name, value);
        if indexing != Indexing::Never {
            if let Some(index) = static_full {
                encode_integer(index, 7, 0x80, dst);
                return;
            }
        }
        let (dyn_full, dyn_name) = self.table.find(name, value);
        if indexing != Indexing::Never {
            if let Some(i) = dyn_full {
                encode_integer(STATIC_LEN + 1 + i, 7, 0x80, dst);
                return;
            }
        }
        let name_index = static_name.or(dyn_name.map(|i| STATIC_LEN + 1 + i));
        let fits = name.len() + value.len() + ENTRY_OVERHEAD <= self.table.capacity();
        let indexing = match indexing {
            Indexing::Incremental if !fits => Indexing::Without,
            other => other,
        };
        let (prefix_bits, flags) = match indexing {
            Indexing::Incremental => (6, 0x40),
            Indexing::Without => (4, 0x00),
            Indexing::Never => (4, 0x10),
        };
        match name_index {
            Some(index) => encode_integer(index, prefix_bits, flags, dst),
            None => {
                dst.push(flags);
                self.encode_string(name, dst);
            }
        }
        self.encode_string(value, dst);
        if indexing == Indexing::Incremental {
            self.table.insert(name, value);
        }
    }

    fn encode_string(&self, s: &[u8], dst: &mut Vec<u8>) {
        if self.huffman {
            let len = huffman::encoded_len(s);
            // Ties go to Huffman, as in the RFC's examples (C.4, C.6).
            if len <= s.len() {
                encode_integer(len, 7, 0x80, dst);
                huffman::encode(s, dst);
                return;
            }
        }
        encode_integer(s.len(), 7, 0x00, dst);
        dst.extend_from_slice(s);
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

/// The indexing [`Encoder::encode`] uses: `Never` for credentials, whose values must not become
/// guessable through compression (RFC 7541 §7.1.3 singles out short cookies: long ones have too
/// much entropy to guess), `Incremental` for everything else.
pub fn default_indexing(name: &[u8], value: &[u8]) -> Indexing {
    /// Below this a cookie is considered guessable (the RFC's example threshold).
    const GUESSABLE_COOKIE_LEN_MAX: usize = 20;
    match name {
        b"authorization" | b"proxy-authorization" => Indexing::Never,
        b"cookie" if value.len() < GUESSABLE_COOKIE_LEN_MAX => Indexing::Never,
        _ => Indexing::Incremental,
    }
}
