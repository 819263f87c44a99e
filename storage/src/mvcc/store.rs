//! The store itself: reads, the write transaction, compaction.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use super::history::{History, MemHistory};
use super::key_index::KeyIndex;
use super::{KeyRange, MvccError, Record, Revision};

struct Entry {
    index: KeyIndex,
    /// The live record, None while the key is deleted (kept in `keys` until compaction).
    current: Option<Arc<Record>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// A Range's parameters beyond the key range (reference §2.2, §3.3).
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// Read at this revision; ≤ 0 means the current one.
    pub rev: i64,
    /// At most this many records; 0 = no limit.
    pub limit: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Only count; no records.
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeOut {
    /// The revision read at.
    pub rev: i64,
    /// Keys in the range at that revision, regardless of limit and filters.
    pub count: i64,
    /// More records matched than `limit` allowed.
    pub more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// The index entries of a key range, in key order.
enum Entries<'s> {
    One(Option<(&'s Arc<[u8]>, &'s Entry)>),
    Span(std::collections::btree_map::Range<'s, Arc<[u8]>, Entry>),
}

impl<'s> Iterator for Entries<'s> {
    type Item = (&'s Arc<[u8]>, &'s Entry);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Entries::One(x) => x.take(),
            Entries::Span(r) => r.next(),
        }
    }
}

/// One change of a write, for watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: Arc<Record>,
    pub prev: Option<Arc<Record>>,
}

/// One key as a checkpoint sees it: name, index, current record.
pub type KeyDump<'s> = (&'s [u8], &'s KeyIndex, Option<&'s Arc<Record>>);
/// One key as a checkpoint restores it.
pub type KeyState = (Arc<[u8]>, KeyIndex, Option<Arc<Record>>);

/// A record found by a read: the live one (borrowed) or one from history (read back).
pub enum Hit<'s> {
    Current(&'s Arc<Record>),
    Past(Arc<Record>),
}

impl std::ops::Deref for Hit<'_> {
    type Target = Arc<Record>;
    fn deref(&self) -> &Arc<Record> {
        match self {
            Hit::Current(r) => r,
            Hit::Past(r) => r,
        }
    }
}

pub struct Store<H: History = MemHistory> {
    rev: i64,
    /// While a write request that has changed something is open: its revision, which reads
    /// through it see as current.
    pending: i64,
    /// etcd's compactMainRev: the last compaction's revision, -1 before any (so that, as in
    /// etcd, a first compaction at revision 0 succeeds and a txn may read at revision -1).
    compacted: i64,
    keys: BTreeMap<Arc<[u8]>, Entry>,
    history: H,
    live_keys: usize,
    /// The last write request's changes (reused: no allocation per write once grown).
    events: Vec<Event>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store at revision 1, as etcd starts, with history in memory.
    pub fn new() -> Self {
        Self::with_history(MemHistory::default())
    }
}

impl<H: History> Store<H> {
    /// An empty store at revision 1 keeping history in `history`.
    pub fn with_history(history: H) -> Self {
        Self { rev: 1, pending: 0, compacted: -1, keys: BTreeMap::new(), history, live_keys: 0, events: Vec::new() }
    }

    /// Every key with its index and current record, in key order (for checkpoints).
    pub fn dump_keys(&self) -> Vec<KeyDump<'_>> {
        self.keys.iter().map(|(k, e)| (&k[..], &e.index, e.current.as_ref())).collect()
    }

    /// Replaces the state with a checkpoint's: revision, compaction and keys.
    pub fn load_state(&mut self, rev: i64, compacted: i64, keys: impl Iterator<Item = KeyState>) {
        self.rev = rev;
        self.compacted = compacted;
        self.live_keys = 0;
        // Collected at once: a checkpoint's keys come in order, which the map builds from in
        // one pass instead of a search per key.
        let live = &mut self.live_keys;
        self.keys = keys
            .map(|(k, index, current)| {
                *live += current.is_some() as usize;
                (k, Entry { index, current })
            })
            .collect();
    }

    pub fn history(&self) -> &H {
        &self.history
    }

    pub fn history_mut(&mut self) -> &mut H {
        &mut self.history
    }

    pub fn current_revision(&self) -> i64 {
        self.rev
    }

    /// The last compaction's revision (0 before any).
    pub fn compacted_revision(&self) -> i64 {
        self.compacted.max(0)
    }

    /// etcd's FirstRev: the last compaction's revision, -1 before any. A txn's Range with a
    /// non-zero revision below it fails as compacted — a negative one included.
    pub fn first_revision(&self) -> i64 {
        self.compacted
    }

    pub fn live_keys(&self) -> usize {
        self.live_keys
    }

    /// Approximate bytes held by history (every record still readable).
    pub fn history_bytes(&self) -> usize {
        self.history.bytes()
    }

    /// Records kept in history (every revision still readable).
    pub fn history_records(&self) -> usize {
        self.history.len()
    }

    /// Validates a read revision: ≤ 0 means current.
    pub fn read_revision(&self, rev: i64) -> Result<i64, MvccError> {
        let current = self.rev.max(self.pending);
        if rev <= 0 {
            return Ok(current);
        }
        if rev > current {
            return Err(MvccError::FutureRev);
        }
        if rev < self.compacted {
            return Err(MvccError::Compacted);
        }
        Ok(rev)
    }

    fn entries<'s>(&'s self, range: KeyRange<'_>) -> Entries<'s> {
        match range {
            KeyRange::Empty => Entries::One(None),
            KeyRange::One(k) => Entries::One(self.keys.get_key_value(k)),
            KeyRange::Span(start, end) => {
                let hi = match end {
                    Some(e) => Bound::Excluded(e),
                    None => Bound::Unbounded,
                };
                Entries::Span(self.keys.range::<[u8], _>((Bound::Included(start), hi)))
            }
        }
    }

    /// The record of a key at `rev` (already validated), if it existed then.
    fn at<'s>(&'s self, e: &'s Entry, rev: i64) -> Result<Option<Hit<'s>>, MvccError> {
        if e.index.modified.main <= rev {
            // Not modified since `rev`: its state then is its state now.
            return Ok(e.current.as_ref().map(Hit::Current));
        }
        let Some(found) = e.index.get(rev) else { return Ok(None) };
        Ok(self.history.get(found.modified)?.filter(|r| !r.tombstone).map(Hit::Past))
    }

    /// One key's current record.
    pub fn get(&self, key: &[u8]) -> Option<&Arc<Record>> {
        self.keys.get(key).and_then(|e| e.current.as_ref())
    }

    /// Reads a range (reference §3.3), appending the records to `out`.
    pub fn range<'s>(
        &'s self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
        out: &mut Vec<Hit<'s>>,
    ) -> Result<RangeOut, MvccError> {
        let rev = self.read_revision(opts.rev)?;
        let range = KeyRange::new(key, range_end);
        let filtered = opts.min_mod_revision != 0
            || opts.max_mod_revision != 0
            || opts.min_create_revision != 0
            || opts.max_create_revision != 0;
        let mut order = opts.sort_order;
        if order == SortOrder::None && opts.sort_target != SortTarget::Key {
            // etcd sorts by a non-key target ascending when no order is given.
            order = SortOrder::Ascend;
        }
        let sorted = order != SortOrder::None;
        // Without an explicit order or filters etcd fetches only limit + 1 records (to learn
        // `more`) — and then sorts just those when the target is not the key: a limited read
        // with sort_order NONE and a non-key target returns the first limit + 1 keys sorted and
        // truncated, not the range's smallest (etcd 3.4 and 3.5 alike).
        let fetch = if opts.limit > 0 && opts.sort_order == SortOrder::None && !filtered {
            opts.limit as usize + 1
        } else {
            usize::MAX
        };
        let start = out.len();
        let mut count = 0i64;
        for (_, e) in self.entries(range) {
            let Some(r) = self.at(e, rev)? else { continue };
            count += 1;
            if opts.count_only || out.len() - start >= fetch {
                continue;
            }
            let keep = (opts.min_mod_revision == 0 || r.mod_revision >= opts.min_mod_revision)
                && (opts.max_mod_revision == 0 || r.mod_revision <= opts.max_mod_revision)
                && (opts.min_create_revision == 0 || r.create_revision >= opts.min_create_revision)
                && (opts.max_create_revision == 0 || r.create_revision <= opts.max_create_revision);
            if keep {
                out.push(r);
            }
        }
        if sorted {
            // Stable over key order, so ties keep ascending keys in both directions (what etcd's
            // insertion sort does for the small results clients sort).
            let rs = &mut out[start..];
            let cmp: fn(&Hit<'s>, &Hit<'s>) -> std::cmp::Ordering = match opts.sort_target {
                SortTarget::Key => |a, b| a.key.cmp(&b.key),
                SortTarget::Version => |a, b| a.version.cmp(&b.version),
                SortTarget::Create => |a, b| a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => |a, b| a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => |a, b| a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                rs.sort_by(|a, b| cmp(b, a));
            } else {
                rs.sort_by(cmp);
            }
        }
        let mut more = false;
        if opts.limit > 0 && out.len() - start > opts.limit as usize {
            out.truncate(start + opts.limit as usize);
            more = true;
        }
        Ok(RangeOut { rev, count, more })
    }

    /// Reads a range like [`Store::range`], handing each record to `emit` in order. Without
    /// sorting or revision filters (the common case) nothing is collected on the way: records
    /// stream straight from the index.
    pub fn range_each(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
        mut emit: impl FnMut(&Arc<Record>),
    ) -> Result<RangeOut, MvccError> {
        let filtered = opts.min_mod_revision != 0
            || opts.max_mod_revision != 0
            || opts.min_create_revision != 0
            || opts.max_create_revision != 0;
        let sorted = opts.sort_order != SortOrder::None || opts.sort_target != SortTarget::Key;
        if filtered || sorted {
            let mut v = Vec::new();
            let out = self.range(key, range_end, opts, &mut v)?;
            v.iter().for_each(|h| emit(h));
            return Ok(out);
        }
        let rev = self.read_revision(opts.rev)?;
        let limit = if opts.limit > 0 { opts.limit } else { i64::MAX };
        let mut count = 0i64;
        for (_, e) in self.entries(KeyRange::new(key, range_end)) {
            let Some(r) = self.at(e, rev)? else { continue };
            if !opts.count_only && count < limit {
                emit(&r);
            }
            count += 1;
        }
        Ok(RangeOut { rev, count, more: !opts.count_only && count > limit })
    }

    /// Starts a write request; its changes share the next revision.
    pub fn write(&mut self) -> WriteTxn<'_, H> {
        let main = self.rev + 1;
        self.events.clear();
        WriteTxn { store: self, main, sub: 0 }
    }

    /// Drops history superseded before `at` (reference §3.7).
    pub fn compact(&mut self, at: i64) -> Result<(), MvccError> {
        if at <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if at > self.rev {
            return Err(MvccError::FutureRev);
        }
        let mut keep: HashSet<Revision> = HashSet::new();
        self.keys.retain(|_, e| {
            if let Some(r) = e.index.compact(at) {
                keep.insert(r);
            }
            !(e.index.is_empty() && e.current.is_none())
        });
        self.history.compact(at, &keep);
        self.compacted = at;
        Ok(())
    }

    /// The changes of the last write request, in execution order.
    pub fn last_events(&self) -> &[Event] {
        &self.events
    }

    /// HashKV: a CRC-32C over every record of history up to revision `rev` (0 = current), in
    /// revision order, each as its revision, key, value and metadata. Equal histories hash
    /// equal; the same call repeats its answer. Returns the hash, the revision hashed and the
    /// compacted revision.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        let rev = self.read_revision(rev)?;
        let mut crc = 0u32;
        for r in self.history.revisions_from(Revision::default()) {
            if r.main > rev {
                break;
            }
            let Some(rec) = self.history.get(r)? else { continue };
            let mut b = Vec::with_capacity(64 + rec.key.len() + rec.value.len());
            for v in [r.main, r.sub, rec.create_revision, rec.mod_revision, rec.version, rec.lease] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.push(rec.tombstone as u8);
            b.extend_from_slice(&(rec.key.len() as u32).to_le_bytes());
            b.extend_from_slice(&rec.key);
            b.extend_from_slice(&rec.value);
            crc = crc32c::crc32c_append(crc, &b);
        }
        Ok((crc, rev, self.compacted_revision()))
    }

    /// A key's record at revision `rev`, if it existed then and `rev` is readable (not
    /// compacted, not in the future).
    pub fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<Arc<Record>>, MvccError> {
        if rev <= 0 || rev < self.compacted {
            return Ok(None);
        }
        let rev = self.read_revision(rev)?;
        let Some(e) = self.keys.get(key) else { return Ok(None) };
        Ok(self.at(e, rev)?.map(|h| Arc::clone(&h)))
    }

    /// The changes to keys in `key`..`range_end` (Range's conventions) at revisions `from` up
    /// to (not including) `until`, in revision order, as watchers see them: puts and deletes,
    /// each with the key's previous record when `prev` is asked for (none for a creation, or
    /// when the revision before was compacted).
    pub fn events_between(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        until: i64,
        prev: bool,
    ) -> Result<Vec<Event>, MvccError> {
        let range = KeyRange::new(key, range_end);
        let mut out = Vec::new();
        for r in self.history.revisions_until(Revision { main: from, sub: 0 }, until) {
            let Some(rec) = self.history.get(r)? else { continue };
            if !range.contains(&rec.key) {
                continue;
            }
            let kind = if rec.tombstone { EventKind::Delete } else { EventKind::Put };
            let prev = if prev && (rec.tombstone || rec.version > 1) {
                self.get_at(&rec.key, rec.mod_revision - 1)?
            } else {
                None
            };
            out.push(Event { kind, kv: rec, prev });
        }
        Ok(out)
    }

    /// Records of history from revision `from` on, in revision order (watch replay).
    pub fn history_from(&self, from: i64) -> Result<Vec<Arc<Record>>, MvccError> {
        let mut out = Vec::new();
        for r in self.history.revisions_from(Revision { main: from, sub: 0 }) {
            if let Some(rec) = self.history.get(r)? {
                out.push(rec);
            }
        }
        Ok(out)
    }
}

/// One write request's changes, applied as they are made; they all carry revision `main`.
/// Reads through it see earlier changes of the same request.
pub struct WriteTxn<'s, H: History = MemHistory> {
    store: &'s mut Store<H>,
    main: i64,
    sub: i64,
}

impl<H: History> WriteTxn<'_, H> {
    /// The revision this request writes at.
    pub fn revision(&self) -> i64 {
        self.main
    }

    /// Whether anything has been changed so far.
    pub fn changed(&self) -> bool {
        self.sub > 0
    }

    /// The store's state as this request sees it (its own changes included).
    pub fn store(&self) -> &Store<H> {
        self.store
    }

    fn next_rev(&mut self) -> Revision {
        let r = Revision { main: self.main, sub: self.sub };
        self.sub += 1;
        self.store.pending = self.main;
        r
    }

    fn append(&mut self, rev: Revision, rec: Arc<Record>) {
        self.store.history.insert(rev, &rec);
    }

    /// Puts a key. `value`/`lease` of None keep the current ones (ignore_value / ignore_lease;
    /// the caller has checked the key exists). Returns the previous record.
    pub fn put(&mut self, key: &[u8], value: Option<&[u8]>, lease: Option<i64>) -> Option<Arc<Record>> {
        let rev = self.next_rev();
        let store = &mut *self.store;
        let (k, e) = match store.keys.get_key_value(key) {
            Some((k, _)) => {
                let k = k.clone();
                let e = store.keys.get_mut(key).expect("present: just looked up");
                (k, e)
            }
            None => {
                let k: Arc<[u8]> = Arc::from(key);
                let e = store.keys.entry(k.clone()).or_insert(Entry { index: KeyIndex::default(), current: None });
                (k, e)
            }
        };
        let prev = e.current.clone();
        let value: Arc<[u8]> = match (value, &prev) {
            (Some(v), _) => Arc::from(v),
            (None, Some(p)) => p.value.clone(),
            (None, None) => Arc::from(&b""[..]),
        };
        let rec = Arc::new(Record {
            key: k,
            value,
            create_revision: prev.as_ref().map_or(self.main, |p| p.create_revision),
            mod_revision: self.main,
            version: prev.as_ref().map_or(0, |p| p.version) + 1,
            lease: lease.unwrap_or_else(|| prev.as_ref().map_or(0, |p| p.lease)),
            tombstone: false,
        });
        e.index.put(rev);
        e.current = Some(rec.clone());
        if prev.is_none() {
            store.live_keys += 1;
        }
        self.append(rev, rec.clone());
        self.store.events.push(Event { kind: EventKind::Put, kv: rec, prev: prev.clone() });
        prev
    }

    /// Deletes every live key in the range, in key order; returns their previous records.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Vec<Arc<Record>> {
        let range = KeyRange::new(key, range_end);
        let victims: Vec<Arc<Record>> = self.store.entries(range).filter_map(|(_, e)| e.current.clone()).collect();
        for prev in &victims {
            let rev = self.next_rev();
            let store = &mut *self.store;
            let e = store.keys.get_mut(&prev.key[..]).expect("victim is indexed");
            e.index.tombstone(rev);
            e.current = None;
            store.live_keys -= 1;
            let tomb = Arc::new(Record {
                key: prev.key.clone(),
                value: Arc::from(&b""[..]),
                create_revision: 0,
                mod_revision: self.main,
                version: 0,
                lease: 0,
                tombstone: true,
            });
            self.append(rev, tomb.clone());
            self.store.events.push(Event { kind: EventKind::Delete, kv: tomb, prev: Some(prev.clone()) });
        }
        victims
    }

    /// Ends the request: if it changed anything, the store moves to its revision, and
    /// [`Store::last_events`] lists its changes. (Dropping the request ends it the same way: its
    /// changes are applied as they are made.)
    pub fn commit(self) {}
}

impl<H: History> Drop for WriteTxn<'_, H> {
    fn drop(&mut self) {
        if self.sub > 0 {
            self.store.rev = self.main;
        }
        self.store.pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &mut Store, k: &str, v: &str) {
        s.write().put(k.as_bytes(), Some(v.as_bytes()), None);
    }

    fn keys(s: &Store, opts: &RangeOptions) -> (Vec<String>, RangeOut) {
        let mut out = Vec::new();
        let r = s.range(b"\0", b"\0", opts, &mut out).unwrap();
        (out.iter().map(|r| String::from_utf8_lossy(&r.key).into_owned()).collect(), r)
    }

    /// etcd fetches limit + 1 records in key order unless an order or a filter is given, then
    /// sorts only those: with sort_order NONE and a non-key target the result is the first keys
    /// sorted, not the smallest by the target. Found by core/tests/differential.rs against etcd
    /// 3.4.23 (3.5 does the same).
    #[test]
    fn unordered_sort_by_target_sorts_only_the_first_limit_plus_one_keys() {
        let mut s = Store::new();
        for (k, v) in [("d", "1"), ("c", "2"), ("b", "3"), ("a", "4")] {
            put(&mut s, k, v);
        }
        // mod revisions: d=2, c=3, b=4, a=5.
        let opts =
            |order| RangeOptions { limit: 2, sort_order: order, sort_target: SortTarget::Mod, ..Default::default() };
        let (got, out) = keys(&s, &opts(SortOrder::None));
        assert_eq!(got, ["c", "b"], "a, b, c fetched; sorted by mod: c, b, a; truncated");
        assert_eq!((out.count, out.more), (4, true));
        let (got, _) = keys(&s, &opts(SortOrder::Ascend));
        assert_eq!(got, ["d", "c"], "an explicit order sorts the whole range");
        let filtered = RangeOptions { min_mod_revision: 1, ..opts(SortOrder::None) };
        assert_eq!(keys(&s, &filtered).0, ["d", "c"], "a filter fetches the whole range too");
    }

    /// etcd's compactMainRev starts at -1: a first compaction at revision 0 succeeds, one at -1
    /// fails as compacted, and the reported compacted revision stays 0 until a real one.
    #[test]
    fn compaction_bounds_are_etcds() {
        let mut s = Store::new();
        assert_eq!(s.first_revision(), -1);
        assert_eq!(s.compact(-1), Err(MvccError::Compacted));
        assert_eq!(s.compact(2), Err(MvccError::FutureRev));
        assert_eq!(s.compact(0), Ok(()));
        assert_eq!((s.first_revision(), s.compacted_revision()), (0, 0));
        assert_eq!(s.compact(0), Err(MvccError::Compacted), "the same revision twice");
        put(&mut s, "a", "1");
        assert_eq!(s.compact(1), Ok(()));
        assert_eq!(s.compacted_revision(), 1);
        assert_eq!(s.compact(1), Err(MvccError::Compacted));
    }

    /// Watch replay: the events of a range between two revisions, in order, with previous
    /// records when asked (none for creations, none once compacted away).
    #[test]
    fn events_between_replay_history_for_watchers() {
        let mut s = Store::new();
        put(&mut s, "a", "1"); // 2
        put(&mut s, "b", "1"); // 3
        put(&mut s, "a", "2"); // 4
        s.write().delete_range(b"a", b""); // 5
        {
            let mut w = s.write(); // 6: one revision, two changes
            w.put(b"a", Some(b"3"), None);
            w.put(b"c", Some(b"1"), None);
        }
        let show = |evs: Vec<Event>| -> Vec<(i64, char, String, Option<String>)> {
            evs.iter()
                .map(|e| {
                    let k = if e.kind == EventKind::Put { 'P' } else { 'D' };
                    let v = |r: &Record| {
                        format!("{}={}", String::from_utf8_lossy(&r.key), String::from_utf8_lossy(&r.value))
                    };
                    (e.kv.mod_revision, k, v(&e.kv), e.prev.as_deref().map(v))
                })
                .collect()
        };
        let got = show(s.events_between(b"a", b"", 1, 7, true).unwrap());
        assert_eq!(
            got,
            [
                (2, 'P', "a=1".into(), None),
                (4, 'P', "a=2".into(), Some("a=1".into())),
                (5, 'D', "a=".into(), Some("a=2".into())),
                (6, 'P', "a=3".into(), None),
            ]
        );
        let all = show(s.events_between(b"\0", b"\0", 4, 7, false).unwrap());
        assert_eq!(all.iter().map(|e| e.0).collect::<Vec<_>>(), [4, 5, 6, 6]);
        assert!(all.iter().all(|e| e.3.is_none()), "no previous records unless asked");
        assert_eq!(s.events_between(b"a", b"c", 3, 6, false).unwrap().len(), 3, "until is exclusive");
        assert_eq!(s.get_at(b"a", 4).unwrap().map(|r| r.value.to_vec()), Some(b"2".to_vec()));
        assert_eq!(s.get_at(b"a", 5).unwrap(), None, "deleted then");
        s.compact(4).unwrap();
        assert_eq!(s.get_at(b"a", 3).unwrap(), None, "compacted away");
        let got = show(s.events_between(b"a", b"", 5, 7, true).unwrap());
        assert_eq!(got[0], (5, 'D', "a=".into(), Some("a=2".into())), "revision 4 is the compaction point: kept");
    }
}
