//! The HPACK static table (RFC 7541 Appendix A) and the dynamic table (§2.3.2, §4) shared by the
//! encoder and the decoder.
//!
//! The dynamic table keeps every entry's bytes in one `Vec<u8>` and the entries as offsets in a
//! `VecDeque`, so that inserting does not allocate once the buffers have grown to fit the table:
//! the encoder inserts on the hot response path and the decoder on every request.

use std::collections::VecDeque;

/// RFC 7541 §4.1: the size of an entry is its name and value lengths plus 32.
pub(crate) const ENTRY_OVERHEAD: usize = 32;

/// Number of entries in the static table; dynamic indices start right after it.
pub(crate) const STATIC_LEN: usize = 61;

/// RFC 7541 Appendix A, index 1 first.
pub(crate) static STATIC_TABLE: [(&[u8], &[u8]); STATIC_LEN] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The static entry at 1-based `index`, if there is one.
pub(crate) fn static_get(index: usize) -> Option<(&'static [u8], &'static [u8])> {
    STATIC_TABLE.get(index.checked_sub(1)?).copied()
}

/// Static-table lookup for the encoder: `(full match, name match)` as 1-based indices.
///
/// A `match` on the name (rather than a scan of the 61 entries) keeps the common miss, a name
/// that is not in the table at all such as `grpc-status`, down to a few length comparisons.
pub(crate) fn static_find(name: &[u8], value: &[u8]) -> (Option<usize>, Option<usize>) {
    let (first, count) = match name {
        b":authority" => (1, 1),
        b":method" => (2, 2),
        b":path" => (4, 2),
        b":scheme" => (6, 2),
        b":status" => (8, 7),
        b"accept-charset" => (15, 1),
        b"accept-encoding" => (16, 1),
        b"accept-language" => (17, 1),
        b"accept-ranges" => (18, 1),
        b"accept" => (19, 1),
        b"access-control-allow-origin" => (20, 1),
        b"age" => (21, 1),
        b"allow" => (22, 1),
        b"authorization" => (23, 1),
        b"cache-control" => (24, 1),
        b"content-disposition" => (25, 1),
        b"content-encoding" => (26, 1),
        b"content-language" => (27, 1),
        b"content-length" => (28, 1),
        b"content-location" => (29, 1),
        b"content-range" => (30, 1),
        b"content-type" => (31, 1),
        b"cookie" => (32, 1),
        b"date" => (33, 1),
        b"etag" => (34, 1),
        b"expect" => (35, 1),
        b"expires" => (36, 1),
        b"from" => (37, 1),
        b"host" => (38, 1),
        b"if-match" => (39, 1),
        b"if-modified-since" => (40, 1),
        b"if-none-match" => (41, 1),
        b"if-range" => (42, 1),
        b"if-unmodified-since" => (43, 1),
        b"last-modified" => (44, 1),
        b"link" => (45, 1),
        b"location" => (46, 1),
        b"max-forwards" => (47, 1),
        b"proxy-authenticate" => (48, 1),
        b"proxy-authorization" => (49, 1),
        b"range" => (50, 1),
        b"referer" => (51, 1),
        b"refresh" => (52, 1),
        b"retry-after" => (53, 1),
        b"server" => (54, 1),
        b"set-cookie" => (55, 1),
        b"strict-transport-security" => (56, 1),
        b"transfer-encoding" => (57, 1),
        b"user-agent" => (58, 1),
        b"vary" => (59, 1),
        b"via" => (60, 1),
        b"www-authenticate" => (61, 1),
        _ => return (None, None),
    };
    let full = (first..first + count).find(|&i| static_get(i).is_some_and(|(_, v)| v == value));
    (full, Some(first))
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Offset of the name in `DynamicTable::bytes`; the value follows the name.
    off: usize,
    name_len: usize,
    value_len: usize,
}

impl Entry {
    fn end(&self) -> usize {
        self.off + self.name_len + self.value_len
    }

    fn size(&self) -> usize {
        self.name_len + self.value_len + ENTRY_OVERHEAD
    }
}

/// The dynamic table: a FIFO of entries, newest at the back, bounded by `capacity` RFC octets.
///
/// Entry bytes are appended to `bytes`; evicting only moves `head` past the oldest entry, and the
/// dead prefix is dropped (one `memmove` of the live bytes) once it is at least `capacity` long.
/// That keeps `bytes` under three times the capacity and makes the copying amortised O(1) per
/// inserted byte.
#[derive(Debug, Default)]
pub(crate) struct DynamicTable {
    entries: VecDeque<Entry>,
    bytes: Vec<u8>,
    /// Start of the oldest live entry's bytes; everything before it has been evicted.
    head: usize,
    /// Sum of the entries' RFC sizes.
    size: usize,
    /// Current maximum size (the last dynamic table size update, RFC 7541 §4.2).
    capacity: usize,
}

impl DynamicTable {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity, ..Self::default() }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Applies a dynamic table size update: evicts until the table fits.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.evict_to(capacity);
        if self.entries.is_empty() {
            // Nothing live: drop the dead bytes now rather than at the next insert.
            self.bytes.clear();
            self.head = 0;
        }
    }

    /// The entry at 0-based `index`, 0 being the newest (HPACK index 62).
    pub(crate) fn get(&self, index: usize) -> Option<(&[u8], &[u8])> {
        let newest = self.entries.len().checked_sub(1)?;
        let entry = self.entries.get(newest.checked_sub(index)?)?;
        self.entry_bytes(entry)
    }

    fn entry_bytes(&self, entry: &Entry) -> Option<(&[u8], &[u8])> {
        let value_off = entry.off + entry.name_len;
        let name = self.bytes.get(entry.off..value_off)?;
        let value = self.bytes.get(value_off..entry.end())?;
        Some((name, value))
    }

    /// Encoder lookup: `(full match, name match)` as 0-based indices, newest first so that the
    /// index (and so its encoding) is as small as possible.
    pub(crate) fn find(&self, name: &[u8], value: &[u8]) -> (Option<usize>, Option<usize>) {
        let mut name_match = None;
        for (i, entry) in self.entries.iter().rev().enumerate() {
            if entry.name_len != name.len() {
                continue;
            }
            let Some((n, v)) = self.entry_bytes(entry) else {
                continue;
            };
            if n != name {
                continue;
            }
            if v == value {
                return (Some(i), Some(i));
            }
            if name_match.is_none() {
                name_match = Some(i);
            }
        }
        (None, name_match)
    }

    /// Adds an entry (RFC 7541 §4.4): evicts the oldest entries until it fits; an entry larger
    /// than the whole table empties it and is not added.
    pub(crate) fn insert(&mut self, name: &[u8], value: &[u8]) {
        if !self.make_room(name.len() + value.len()) {
            return;
        }
        let off = self.bytes.len();
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        self.push(Entry { off, name_len: name.len(), value_len: value.len() });
    }

    /// Adds an entry whose name is that of the entry at 0-based `index`. The name is copied before
    /// evicting, because §4.4 allows the referenced entry itself to be evicted by this insertion.
    /// Returns false (and leaves the table alone) if there is no such entry.
    pub(crate) fn insert_with_name_of(&mut self, index: usize, value: &[u8]) -> bool {
        let Some(newest) = self.entries.len().checked_sub(1) else {
            return false;
        };
        let Some(source) = newest.checked_sub(index).and_then(|i| self.entries.get(i)).copied() else {
            return false;
        };
        let new_size = source.name_len + value.len() + ENTRY_OVERHEAD;
        if new_size > self.capacity {
            self.clear();
            return true;
        }
        // Compacting first keeps the source bytes where `extend_from_within` expects them.
        let Some(name_off) = source.off.checked_sub(self.compact_if_needed()) else {
            return false;
        };
        let name_range = name_off..name_off + source.name_len;
        if self.bytes.get(name_range.clone()).is_none() {
            return false;
        }
        let off = self.bytes.len();
        self.bytes.extend_from_within(name_range);
        self.bytes.extend_from_slice(value);
        self.evict_to(self.capacity - new_size);
        self.push(Entry { off, name_len: source.name_len, value_len: value.len() });
        true
    }

    /// Evicts and compacts so that an entry with `data_len` name+value bytes can be appended.
    /// Returns false if the entry cannot fit at all (the table is then empty).
    fn make_room(&mut self, data_len: usize) -> bool {
        let new_size = data_len + ENTRY_OVERHEAD;
        if new_size > self.capacity {
            self.clear();
            return false;
        }
        self.evict_to(self.capacity - new_size);
        if self.entries.is_empty() {
            self.bytes.clear();
            self.head = 0;
        }
        self.compact_if_needed();
        true
    }

    /// Drops the dead prefix of `bytes` once it is as large as the table itself; returns how far
    /// the live bytes moved down.
    fn compact_if_needed(&mut self) -> usize {
        if self.head == 0 || self.head < self.capacity {
            return 0;
        }
        let dead = self.head;
        self.bytes.drain(..dead);
        for entry in &mut self.entries {
            entry.off = entry.off.saturating_sub(dead);
        }
        self.head = 0;
        dead
    }

    fn push(&mut self, entry: Entry) {
        if self.entries.is_empty() {
            self.head = entry.off;
        }
        self.size += entry.size();
        self.entries.push_back(entry);
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            let Some(oldest) = self.entries.pop_front() else {
                break;
            };
            self.size -= oldest.size();
            self.head = oldest.end();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes.clear();
        self.head = 0;
        self.size = 0;
    }

    #[cfg(test)]
    pub(crate) fn bytes_len(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_find_agrees_with_the_table() {
        for (i, (name, value)) in STATIC_TABLE.iter().enumerate() {
            let index = i + 1;
            let (full, by_name) = static_find(name, value);
            assert_eq!(full, Some(index), "{}", String::from_utf8_lossy(name));
            let first = STATIC_TABLE.iter().position(|(n, _)| n == name).map(|p| p + 1);
            assert_eq!(by_name, first);
        }
        assert_eq!(static_find(b"grpc-status", b"0"), (None, None));
        assert_eq!(static_find(b":status", b"418"), (None, Some(8)));
        assert_eq!(static_get(0), None);
        assert_eq!(static_get(62), None);
        assert_eq!(static_get(61), Some((&b"www-authenticate"[..], &b""[..])));
    }

    #[test]
    fn eviction_and_compaction_keep_entries_intact() {
        let mut t = DynamicTable::new(200);
        for i in 0..1000u32 {
            let name = format!("n{}", i % 7);
            let value = format!("value-{i}");
            if i % 3 == 1 && t.len() > 2 {
                assert!(t.insert_with_name_of(2, value.as_bytes()));
                let expected_name = t.get(0).map(|(n, _)| n.to_vec());
                assert!(expected_name.is_some());
            } else {
                t.insert(name.as_bytes(), value.as_bytes());
                assert_eq!(t.get(0), Some((name.as_bytes(), value.as_bytes())));
            }
            assert!(t.size() <= 200);
            assert!(t.bytes_len() <= 3 * 200, "bytes {}", t.bytes_len());
            let sum: usize = (0..t.len()).map(|k| t.get(k).map(|(n, v)| n.len() + v.len() + 32).unwrap()).sum();
            assert_eq!(sum, t.size());
        }
    }

    #[test]
    fn name_of_an_entry_evicted_by_the_insertion_survives() {
        // 32 + 4 + 60 = 96: a second such entry cannot fit next to the first.
        let mut t = DynamicTable::new(150);
        t.insert(b"name", &[b'a'; 60]);
        assert!(t.insert_with_name_of(0, &[b'b'; 60]));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(0), Some((&b"name"[..], &[b'b'; 60][..])));
    }

    #[test]
    fn oversized_entry_empties_the_table() {
        let mut t = DynamicTable::new(64);
        t.insert(b"a", b"b");
        t.insert(b"x", &[0; 40]);
        assert_eq!((t.len(), t.size()), (0, 0));
        assert!(!t.insert_with_name_of(0, b"v"));
    }

    #[test]
    fn shrinking_evicts_oldest_first() {
        let mut t = DynamicTable::new(4096);
        t.insert(b"a", b"1");
        t.insert(b"b", b"2");
        t.insert(b"c", b"3");
        t.set_capacity(68);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(1), Some((&b"b"[..], &b"2"[..])));
        t.set_capacity(0);
        assert_eq!((t.len(), t.size(), t.bytes_len()), (0, 0, 0));
    }
}
