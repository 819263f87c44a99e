//! The multi-version store with etcd's semantics (`../shared/etcd-v3-reference.md` §3.1–3.7):
//! an empty store is at revision 1; every write request that changes something takes the next
//! revision (all its changes share it, with sub-revisions in execution order); historical reads
//! at any uncompacted revision; compaction drops superseded history and frees it.
//!
//! State: `keys` maps each key to its [`key_index::KeyIndex`] (the revisions of each
//! incarnation) and its current record; `log` holds every record by revision (what the
//! log-structured engine will hold on disk). Current reads touch only `keys`; historical reads go
//! through the key index to the log.

pub mod history;
pub mod key_index;
mod store;

pub use history::{History, MemHistory};
pub use store::{
    Event, EventKind, Hit, KeyDump, KeyState, RangeOptions, RangeOut, SortOrder, SortTarget, Store, WriteTxn,
};

/// A revision: `main` is the store revision of the write request, `sub` orders the changes
/// within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// A key's state at one revision: what a Range returns and what history keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: std::sync::Arc<[u8]>,
    pub value: std::sync::Arc<[u8]>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    /// A delete: only `key` and `mod_revision` are meaningful.
    pub tombstone: bool,
}

impl Record {
    /// Bytes this record costs in memory, roughly (for dbSize accounting).
    pub fn cost_bytes(&self) -> usize {
        self.key.len() + self.value.len() + RECORD_OVERHEAD_BYTES
    }
}

/// Book-keeping per record beyond its key and value (index entries, revision, metadata).
pub const RECORD_OVERHEAD_BYTES: usize = 96;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MvccError {
    /// The revision asked for has been compacted away.
    Compacted,
    /// The revision asked for is beyond the current one.
    FutureRev,
    /// History could not be read back from disk.
    Io,
}

impl std::fmt::Display for MvccError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MvccError::Compacted => "mvcc: required revision has been compacted",
            MvccError::FutureRev => "mvcc: required revision is a future revision",
            MvccError::Io => "mvcc: history could not be read back from disk",
        })
    }
}

impl std::error::Error for MvccError {}

/// How a (key, range_end) pair selects keys (reference §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// Exactly this key.
    One(&'a [u8]),
    /// `start <= key < end`; `end == None` means no upper bound.
    Span(&'a [u8], Option<&'a [u8]>),
    /// Nothing (range_end at or before key).
    Empty,
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        if range_end.is_empty() {
            KeyRange::One(key)
        } else if range_end == b"\0" {
            KeyRange::Span(key, None)
        } else if range_end <= key {
            KeyRange::Empty
        } else {
            KeyRange::Span(key, Some(range_end))
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::One(key) => k == key,
            KeyRange::Span(start, end) => k >= start && end.is_none_or(|e| k < e),
            KeyRange::Empty => false,
        }
    }
}

/// The range_end that selects every key with this prefix (etcdctl `--prefix`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            let n = end.len() - 1;
            end[n] = last + 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ranges() {
        assert!(KeyRange::new(b"a", b"").contains(b"a"));
        assert!(!KeyRange::new(b"a", b"").contains(b"ab"));
        let r = KeyRange::new(b"a", b"c");
        assert!(r.contains(b"a") && r.contains(b"b\xff") && !r.contains(b"c"));
        let r = KeyRange::new(b"b", b"\0");
        assert!(r.contains(b"b") && r.contains(b"zzz") && !r.contains(b"a"));
        assert!(KeyRange::new(b"\0", b"\0").contains(b"\0"));
        assert_eq!(KeyRange::new(b"b", b"a"), KeyRange::Empty);
        assert_eq!(KeyRange::new(b"b", b"b"), KeyRange::Empty);
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix_end(b"aa"), b"ab");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
