//! MVCC on the log: history lives in the log (only its locations stay in memory), the key index
//! and current values in memory, and checkpoints bound recovery.
//!
//! Write requests are made durable by whoever drives the engine (the raft layer appends each
//! request as an entry and flushes before applying it); applying then appends the request's
//! history records, which become durable with a later batch. A record that is not durable yet is
//! kept in memory too, so reads never wait for the disk. Recovery = newest valid checkpoint,
//! then the log's records after it, handed to the driver to replay.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use crate::disk::{read_exact_at, Disk, DiskFile};
use crate::log::{kind, Location, Log, LogError};
use crate::mvcc::key_index::{Generation, KeyIndex};
use crate::mvcc::{History, KeyState, MvccError, Record, Revision, Store};

/// One history record in the log, and (until it is durable) in memory.
struct Slot {
    loc: Location,
    mem: Option<Arc<Record>>,
    bytes: u32,
}

/// History kept in the log.
pub struct DurableHistory<D: Disk> {
    log: Rc<RefCell<Log<D>>>,
    slots: BTreeMap<Revision, Slot>,
    /// Revisions whose records are not durable yet, in log order.
    unflushed: VecDeque<Revision>,
    bytes: usize,
    /// Bytes of live history per segment (what segment GC weighs).
    live: HashMap<u64, u64>,
}

/// The HISTORY record payload: the revision, the record's metadata, its key and value.
pub fn encode_history(buf: &mut Vec<u8>, rev: Revision, r: &Record) {
    for v in [rev.main, rev.sub, r.create_revision, r.mod_revision, r.version, r.lease] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.push(r.tombstone as u8);
    buf.extend_from_slice(&(r.key.len() as u32).to_le_bytes());
    buf.extend_from_slice(&r.key);
    buf.extend_from_slice(&r.value);
}

/// A little-endian reader over a payload; every read is bounds-checked.
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(format!("payload ends early: wanted {n} bytes, {} left", self.b.len()));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, String> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }
    /// A u32 length, then that many bytes.
    pub fn blob(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
}

pub fn decode_history(payload: &[u8]) -> Result<(Revision, Record), String> {
    let mut r = Reader::new(payload);
    let rev = Revision { main: r.i64()?, sub: r.i64()? };
    let (create_revision, mod_revision, version, lease) = (r.i64()?, r.i64()?, r.i64()?, r.i64()?);
    let tombstone = r.u8()? != 0;
    let key = Arc::from(r.blob()?);
    let value = Arc::from(r.rest());
    Ok((rev, Record { key, value, create_revision, mod_revision, version, lease, tombstone }))
}

impl<D: Disk> DurableHistory<D> {
    pub fn new(log: Rc<RefCell<Log<D>>>) -> Self {
        Self { log, slots: BTreeMap::new(), unflushed: VecDeque::new(), bytes: 0, live: HashMap::new() }
    }

    /// The log reached `durable`: records before it need not stay in memory.
    pub fn on_durable(&mut self, durable: Location) {
        while let Some(rev) = self.unflushed.front() {
            match self.slots.get_mut(rev) {
                Some(s) if s.loc < durable => {
                    s.mem = None;
                    self.unflushed.pop_front();
                }
                Some(_) => break,
                None => {
                    self.unflushed.pop_front();
                }
            }
        }
    }

    /// Records still only in memory.
    pub fn unflushed(&self) -> usize {
        self.unflushed.len()
    }

    /// Live history bytes per segment.
    pub fn live_bytes(&self) -> &HashMap<u64, u64> {
        &self.live
    }

    fn add_live(&mut self, loc: Location, bytes: u32) {
        *self.live.entry(loc.segment).or_insert(0) += bytes as u64;
    }

    fn sub_live(&mut self, loc: Location, bytes: u32) {
        if let Some(v) = self.live.get_mut(&loc.segment) {
            *v = v.saturating_sub(bytes as u64);
        }
    }

    /// Restores the slots of a checkpoint into a new history (in revision order: the map is
    /// built in one pass).
    fn restore_all(&mut self, slots: &[(Revision, Location, u32)]) {
        debug_assert!(self.slots.is_empty(), "restored into a new history only");
        for (_, loc, bytes) in slots {
            self.bytes += *bytes as usize;
            self.add_live(*loc, *bytes);
        }
        self.slots =
            slots.iter().map(|(rev, loc, bytes)| (*rev, Slot { loc: *loc, mem: None, bytes: *bytes })).collect();
    }

    /// Where the record at `rev` is in the log, once it is durable there.
    pub fn durable_location(&self, rev: Revision) -> Option<Location> {
        self.slots.get(&rev).filter(|s| s.mem.is_none() && s.loc.segment != u64::MAX).map(|s| s.loc)
    }

    /// Every (revision, location) held, in revision order.
    pub fn locations(&self) -> impl Iterator<Item = (Revision, Location, u32)> + '_ {
        self.slots.iter().map(|(r, s)| (*r, s.loc, s.bytes))
    }

    /// Moves every live record out of `segment` to the log's head (segment GC). The old copies
    /// stay readable until the segment is removed.
    pub fn relocate(&mut self, segment: u64) -> Result<usize, MvccError> {
        let revs: Vec<Revision> =
            self.slots.iter().filter(|(_, s)| s.loc.segment == segment).map(|(r, _)| *r).collect();
        for rev in &revs {
            let rec = self.get(*rev)?.ok_or(MvccError::Io)?;
            let Some(old) = self.slots.remove(rev) else { continue };
            self.sub_live(old.loc, old.bytes);
            self.bytes -= old.bytes as usize;
            self.insert(*rev, &rec);
        }
        Ok(revs.len())
    }
}

impl<D: Disk> History for DurableHistory<D> {
    fn insert(&mut self, rev: Revision, rec: &Arc<Record>) {
        // A failed log refuses the append; the record then lives in memory only, and the
        // failure stops writes at the next flush (the request itself is durable as a raft entry).
        // Lazy: the raft entry that made this record is durable already, and replay remakes it.
        let appended = self.log.borrow_mut().append_lazy(kind::HISTORY, |b| encode_history(b, rev, rec));
        let bytes = (rec.key.len() + rec.value.len() + 57 + crate::log::RECORD_HEADER_BYTES) as u32;
        let loc = appended.unwrap_or(Location { segment: u64::MAX, offset: u64::MAX });
        self.slots.insert(rev, Slot { loc, mem: Some(rec.clone()), bytes });
        self.unflushed.push_back(rev);
        self.bytes += bytes as usize;
        self.add_live(loc, bytes);
    }

    fn get(&self, rev: Revision) -> Result<Option<Arc<Record>>, MvccError> {
        let Some(s) = self.slots.get(&rev) else { return Ok(None) };
        if let Some(r) = &s.mem {
            return Ok(Some(r.clone()));
        }
        let (k, payload) = self.log.borrow().read(s.loc).map_err(|_| MvccError::Io)?;
        if k != kind::HISTORY {
            return Err(MvccError::Io);
        }
        let (got, rec) = decode_history(&payload).map_err(|_| MvccError::Io)?;
        if got != rev {
            return Err(MvccError::Io);
        }
        Ok(Some(Arc::new(rec)))
    }

    fn compact(&mut self, at: i64, keep: &HashSet<Revision>) {
        let doomed: Vec<Revision> = self
            .slots
            .range(..=Revision { main: at, sub: i64::MAX })
            .map(|(r, _)| *r)
            .filter(|r| !keep.contains(r))
            .collect();
        for r in doomed {
            if let Some(s) = self.slots.remove(&r) {
                self.bytes -= s.bytes as usize;
                self.sub_live(s.loc, s.bytes);
            }
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn revisions_from(&self, from: Revision) -> Vec<Revision> {
        self.slots.range(from..).map(|(r, _)| *r).collect()
    }

    fn revisions_until(&self, from: Revision, until: i64) -> Vec<Revision> {
        self.slots.range(from..Revision { main: until, sub: 0 }).map(|(r, _)| *r).collect()
    }
}

// ----- checkpoints -----

const CHECKPOINT_MAGIC: &[u8; 8] = b"MSTCKPT\0";
/// Version 2 may refer to a key's current record in the log instead of copying it; version 1
/// (always a copy) is still read.
const CHECKPOINT_VERSION: u32 = 2;
const CHECKPOINT_SUFFIX: &str = ".ckpt";
/// Checkpoints kept on disk: the newest only. An older one is no way out of a damaged newest:
/// the log segments it would replay from are removed once the newer one is durable. Keeping it
/// would only double the disk the live data takes.
pub const CHECKPOINTS_KEPT: usize = 1;

/// What a checkpoint holds besides the store: where replay starts and the driver's own state
/// (raft's applied index and term, membership, leases...), opaque here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointMeta {
    /// The raft index the store reflects.
    pub applied_index: u64,
    /// The first log location replay must read from.
    pub replay_from: Location,
    /// Opaque sections of the layers above, by tag.
    pub sections: Vec<(u32, Vec<u8>)>,
}

pub fn checkpoint_name(applied_index: u64) -> String {
    format!("{applied_index:016x}{CHECKPOINT_SUFFIX}")
}

/// How a keys section holds a key's current record (the byte after the key's generations).
mod current {
    /// The key is deleted: no current record.
    pub const NONE: u8 = 0;
    /// A u32 length and a history payload follow (snapshots; checkpoints for records not in the
    /// log).
    pub const INLINE: u8 = 1;
    /// The record is the history record at the key's modified revision, in the log at the
    /// location the history section gives (checkpoint version 2 only).
    pub const IN_LOG: u8 = 2;
}

/// The keys section shared by checkpoints and snapshots: every key's index generations and its
/// current record, copied, or (when `in_log` says the history record at that revision is
/// durable in the log) referred to.
pub fn encode_keys<H: History>(b: &mut Vec<u8>, store: &Store<H>, in_log: impl Fn(Revision) -> bool) {
    let keys = store.dump_keys();
    b.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    let mut rec = Vec::new();
    for (key, index, cur) in keys {
        b.extend_from_slice(&(key.len() as u32).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&index.modified.main.to_le_bytes());
        b.extend_from_slice(&index.modified.sub.to_le_bytes());
        b.extend_from_slice(&(index.generations.len() as u32).to_le_bytes());
        for g in &index.generations {
            b.extend_from_slice(&g.ver.to_le_bytes());
            b.extend_from_slice(&g.created.main.to_le_bytes());
            b.extend_from_slice(&g.created.sub.to_le_bytes());
            b.extend_from_slice(&(g.revs.len() as u32).to_le_bytes());
            for r in &g.revs {
                b.extend_from_slice(&r.main.to_le_bytes());
                b.extend_from_slice(&r.sub.to_le_bytes());
            }
        }
        match cur {
            None => b.push(current::NONE),
            Some(_) if in_log(index.modified) => b.push(current::IN_LOG),
            Some(r) => {
                b.push(current::INLINE);
                rec.clear();
                encode_history(&mut rec, Revision::default(), r);
                b.extend_from_slice(&(rec.len() as u32).to_le_bytes());
                b.extend_from_slice(&rec);
            }
        }
    }
}

/// A decoded keys section: the keys, and those whose current record is in the log (their
/// modified revision and position).
pub type DecodedKeys = (Vec<KeyState>, Vec<(Revision, usize)>);

/// Decodes a keys section. Keys whose current record is in the log (allowed only when
/// `in_log_allowed`) come back without it, listed in the second vector as (their modified
/// revision, their position in the first).
pub fn decode_keys(r: &mut Reader<'_>, in_log_allowed: bool) -> Result<DecodedKeys, String> {
    let nkeys = r.u64()?;
    let mut keys = Vec::new();
    let mut in_log = Vec::new();
    for _ in 0..nkeys {
        let key: Arc<[u8]> = Arc::from(r.blob()?);
        let modified = Revision { main: r.i64()?, sub: r.i64()? };
        let ngen = r.u32()?;
        let mut generations = Vec::new();
        for _ in 0..ngen {
            let ver = r.i64()?;
            let created = Revision { main: r.i64()?, sub: r.i64()? };
            let nrevs = r.u32()?;
            let mut revs = Vec::new();
            for _ in 0..nrevs {
                revs.push(Revision { main: r.i64()?, sub: r.i64()? });
            }
            generations.push(Generation { ver, created, revs });
        }
        let cur = match r.u8()? {
            current::NONE => None,
            current::INLINE => {
                let (_, mut rec) = decode_history(r.blob()?)?;
                rec.key = key.clone();
                Some(Arc::new(rec))
            }
            current::IN_LOG if in_log_allowed => {
                in_log.push((modified, keys.len()));
                None
            }
            other => return Err(format!("unknown current-record tag {other}")),
        };
        keys.push((key, KeyIndex { modified, generations }, cur));
    }
    Ok((keys, in_log))
}

/// Serialises the store's state and `meta` into one checkpoint image (format in FORMAT.md).
pub fn encode_checkpoint<D: Disk>(store: &Store<DurableHistory<D>>, meta: &CheckpointMeta) -> Vec<u8> {
    let mut b = Vec::with_capacity(4096);
    b.extend_from_slice(CHECKPOINT_MAGIC);
    b.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&meta.applied_index.to_le_bytes());
    b.extend_from_slice(&meta.replay_from.segment.to_le_bytes());
    b.extend_from_slice(&meta.replay_from.offset.to_le_bytes());
    b.extend_from_slice(&store.current_revision().to_le_bytes());
    b.extend_from_slice(&store.first_revision().to_le_bytes());
    let hist = store.history();
    encode_keys(&mut b, store, |rev| hist.durable_location(rev).is_some());
    // History: revision → location.
    b.extend_from_slice(&(hist.len() as u64).to_le_bytes());
    for (rev, loc, bytes) in hist.locations() {
        for v in [rev.main as u64, rev.sub as u64, loc.segment, loc.offset] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&bytes.to_le_bytes());
    }
    b.extend_from_slice(&(meta.sections.len() as u32).to_le_bytes());
    for (tag, data) in &meta.sections {
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&(data.len() as u64).to_le_bytes());
        b.extend_from_slice(data);
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The parts of a decoded checkpoint.
pub struct CheckpointImage {
    pub meta: CheckpointMeta,
    pub rev: i64,
    pub compacted: i64,
    pub keys: Vec<KeyState>,
    pub history: Vec<(Revision, Location, u32)>,
    /// Current records the checkpoint refers to in the log: (location, revision, position in
    /// `keys`), in location order. [`CheckpointImage::visit_log`] fills them in.
    pub(crate) in_log: Vec<(Location, Revision, usize)>,
    /// How many of `in_log` have been filled in (the log is visited in location order).
    pub(crate) in_log_filled: usize,
}

impl CheckpointImage {
    /// An image whose current records are all in `keys` already.
    pub fn new(
        meta: CheckpointMeta,
        rev: i64,
        compacted: i64,
        keys: Vec<KeyState>,
        history: Vec<(Revision, Location, u32)>,
    ) -> Self {
        Self { meta, rev, compacted, keys, history, in_log: Vec::new(), in_log_filled: 0 }
    }

    /// Every record the log's recovery hands out goes through here (in log order, before any
    /// filter on the replay location): the current records the checkpoint refers to are taken
    /// from them, at no extra read. Fails when the record there is not the one referred to.
    pub fn visit_log(&mut self, loc: Location, kind: u8, payload: &[u8]) -> Result<(), String> {
        let Some(&(want, rev, i)) = self.in_log.get(self.in_log_filled) else { return Ok(()) };
        if loc != want {
            // Earlier records are not wanted; a wanted one passed by is reported by
            // `restore_store` as missing.
            return Ok(());
        }
        let wrong = |why: String| {
            format!("the checkpoint's current record for revision {}/{} is not here: {why}", rev.main, rev.sub)
        };
        if kind != crate::log::kind::HISTORY {
            return Err(wrong(format!("record kind {kind}")));
        }
        let (got, mut rec) = decode_history(payload).map_err(wrong)?;
        if got != rev || rec.tombstone {
            return Err(wrong(format!("found revision {}/{} (tombstone: {})", got.main, got.sub, rec.tombstone)));
        }
        let slot = &mut self.keys[i];
        if rec.key[..] != slot.0[..] {
            return Err(wrong("found another key".into()));
        }
        rec.key = slot.0.clone();
        slot.2 = Some(Arc::new(rec));
        self.in_log_filled += 1;
        Ok(())
    }
}

pub fn decode_checkpoint(data: &[u8]) -> Result<CheckpointImage, String> {
    if data.len() < 4 {
        return Err("too short".into());
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader::new(body);
    if r.bytes(8)? != CHECKPOINT_MAGIC {
        return Err("not a checkpoint".into());
    }
    let version = r.u32()?;
    if version != 1 && version != CHECKPOINT_VERSION {
        return Err(format!("checkpoint format version {version}, this build reads 1 and {CHECKPOINT_VERSION}"));
    }
    r.u32()?;
    let applied_index = r.u64()?;
    let replay_from = Location { segment: r.u64()?, offset: r.u64()? };
    let rev = r.i64()?;
    let compacted = r.i64()?;
    let (keys, refs) = decode_keys(&mut r, version >= 2)?;
    let nhist = r.u64()?;
    let mut history = Vec::new();
    for _ in 0..nhist {
        let rev = Revision { main: r.i64()?, sub: r.i64()? };
        let loc = Location { segment: r.u64()?, offset: r.u64()? };
        history.push((rev, loc, r.u32()?));
    }
    let nsec = r.u32()?;
    let mut sections = Vec::new();
    for _ in 0..nsec {
        let tag = r.u32()?;
        let n = r.u64()? as usize;
        sections.push((tag, r.bytes(n)?.to_vec()));
    }
    if !r.is_empty() {
        return Err("trailing bytes".into());
    }
    // Each referred record's location: the references in revision order, merged with the
    // history (in revision order as written; checked as merged).
    let mut refs = refs;
    refs.sort_unstable_by_key(|(rev, _)| *rev);
    let mut in_log = Vec::with_capacity(refs.len());
    let mut h = history.iter().peekable();
    let mut last = None;
    for (rev, i) in refs {
        loop {
            match h.peek() {
                Some((r, _, _)) if last.is_some_and(|l| *r <= l) => return Err("history section out of order".into()),
                Some((r, _, _)) if *r < rev => last = h.next().map(|(r, _, _)| *r),
                _ => break,
            }
        }
        match h.peek() {
            Some((r, loc, _)) if *r == rev => in_log.push((*loc, rev, i)),
            _ => {
                return Err(format!(
                    "current record of revision {}/{} is not in the history section",
                    rev.main, rev.sub
                ))
            }
        }
    }
    in_log.sort_unstable_by_key(|(loc, _, _)| *loc);
    let mut img =
        CheckpointImage::new(CheckpointMeta { applied_index, replay_from, sections }, rev, compacted, keys, history);
    img.in_log = in_log;
    Ok(img)
}

/// Writes a checkpoint image durably: a temporary file, synced, renamed into place, the
/// directory synced; then drops all but the newest [`CHECKPOINTS_KEPT`]. Blocking: run it off
/// the serving path.
pub fn write_checkpoint<D: Disk>(disk: &D, dir: &Path, applied_index: u64, image: &[u8]) -> io::Result<PathBuf> {
    disk.create_dir_all(dir)?;
    let name = checkpoint_name(applied_index);
    let tmp = dir.join(format!("{name}.tmp"));
    let _ = disk.remove(&tmp);
    let f = disk.create(&tmp)?;
    f.write_at_blocking(image, 0)?;
    f.sync_data_blocking()?;
    drop(f);
    let path = dir.join(&name);
    disk.rename(&tmp, &path)?;
    disk.sync_dir(dir)?;
    let listed = disk.list(dir)?;
    // Temporary files of checkpoints whose writer was killed (one writer at a time: none is
    // being written now).
    let stale: Vec<&String> = listed.iter().filter(|n| n.ends_with(&format!("{CHECKPOINT_SUFFIX}.tmp"))).collect();
    let mut names: Vec<&String> = listed.iter().filter(|n| n.ends_with(CHECKPOINT_SUFFIX)).collect();
    names.sort();
    let old = &names[..names.len().saturating_sub(CHECKPOINTS_KEPT)];
    for n in old.iter().chain(&stale) {
        disk.remove(&dir.join(n))?;
    }
    if !old.is_empty() || !stale.is_empty() {
        disk.sync_dir(dir)?;
    }
    Ok(path)
}

/// The newest checkpoint, or None when there is none. A damaged one is an error naming the file
/// (recovery cannot fall back: the log before it is gone).
pub fn load_checkpoint<D: Disk>(disk: &D, dir: &Path) -> io::Result<Option<CheckpointImage>> {
    disk.create_dir_all(dir)?;
    let mut names: Vec<String> = disk.list(dir)?.into_iter().filter(|n| n.ends_with(CHECKPOINT_SUFFIX)).collect();
    names.sort();
    let Some(name) = names.last() else { return Ok(None) };
    let path = dir.join(name);
    let f = disk.open(&path)?;
    let mut data = vec![0u8; f.len()? as usize];
    read_exact_at(&f, &mut data, 0)?;
    decode_checkpoint(&data).map(Some).map_err(|why| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "checkpoint {} is damaged ({why}); the log before it is gone, so the member cannot \
                 recover from it: restore a snapshot (`metastore snapshot restore`) into a new data dir",
                path.display()
            ),
        )
    })
}

/// Rebuilds a store from a checkpoint image, with its history in `log`. The log must have been
/// opened with every record passed to [`CheckpointImage::visit_log`]; a current record the
/// checkpoint refers to that the log did not hold is an error. The image's keys are moved into
/// the store.
pub fn restore_store<D: Disk>(
    img: &mut CheckpointImage,
    log: Rc<RefCell<Log<D>>>,
) -> Result<Store<DurableHistory<D>>, String> {
    if let Some((loc, rev, _)) = img.in_log.get(img.in_log_filled) {
        return Err(format!(
            "the checkpoint refers to the current record of revision {}/{} at {loc}, which the log does not hold \
             (the log was cut or damaged); way out: restore a snapshot (`metastore snapshot restore`) into a new \
             data dir",
            rev.main, rev.sub
        ));
    }
    let mut history = DurableHistory::new(log);
    history.restore_all(&img.history);
    let mut store = Store::with_history(history);
    // The keys move into the store (a million keys' indexes are not worth copying).
    store.load_state(img.rev, img.compacted, std::mem::take(&mut img.keys).into_iter());
    Ok(store)
}

/// Errors opening the engine.
pub fn log_error(e: LogError) -> io::Error {
    io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{now, FaultDisk};
    use crate::log::LogConfig;

    const LOG: &str = "/m/log";

    fn open(disk: &FaultDisk, img: Option<&mut CheckpointImage>) -> Rc<RefCell<Log<FaultDisk>>> {
        let mut img = img;
        let (log, _) = Log::open(disk.clone(), Path::new(LOG), LogConfig::default(), |l, k, p| match img.as_mut() {
            Some(i) => i.visit_log(l, k, p),
            None => Ok(()),
        })
        .expect("open");
        Rc::new(RefCell::new(log))
    }

    fn flush(s: &mut Store<DurableHistory<FaultDisk>>, log: &Rc<RefCell<Log<FaultDisk>>>) {
        let f = log.borrow_mut().start_flush().expect("flush").expect("pending");
        let done = now(f.run());
        let durable = log.borrow_mut().finish_flush(done).expect("flushed");
        s.history_mut().on_durable(durable);
    }

    /// 200 keys of 1 KiB, each written twice, one deleted.
    fn sample(disk: &FaultDisk) -> (Store<DurableHistory<FaultDisk>>, Rc<RefCell<Log<FaultDisk>>>) {
        let log = open(disk, None);
        let mut s = Store::with_history(DurableHistory::new(log.clone()));
        for round in 0..2u8 {
            for i in 0..200 {
                s.write().put(format!("k{i:03}").as_bytes(), Some(&[round; 1024]), None);
            }
        }
        s.write().delete_range(b"k007", b"");
        flush(&mut s, &log);
        (s, log)
    }

    fn meta() -> CheckpointMeta {
        CheckpointMeta { applied_index: 9, replay_from: Location { segment: 1, offset: 32 }, sections: vec![] }
    }

    fn same(a: &Store<DurableHistory<FaultDisk>>, b: &Store<DurableHistory<FaultDisk>>) {
        let all = |s: &Store<DurableHistory<FaultDisk>>| {
            let mut v = Vec::new();
            s.range_each(b"\0", b"\0", &Default::default(), |r| v.push((r.key.to_vec(), r.value.to_vec(), r.version)))
                .expect("range");
            v
        };
        assert_eq!(all(a), all(b));
        assert_eq!(a.current_revision(), b.current_revision());
        assert_eq!(a.hash_kv(0).expect("hash"), b.hash_kv(0).expect("hash"));
    }

    #[test]
    fn a_checkpoint_refers_to_current_records_in_the_log() {
        let disk = FaultDisk::new();
        let (s, _log) = sample(&disk);
        let image = encode_checkpoint(&s, &meta());
        // The key index and history locations only: far less than the 199 live KiB.
        assert!(image.len() < 40_000, "checkpoint of {} bytes copies values", image.len());
        let mut img = decode_checkpoint(&image).expect("decode");
        assert_eq!(img.in_log.len(), 199);
        let log = open(&disk, Some(&mut img));
        let restored = restore_store(&mut img, log).expect("restore");
        same(&s, &restored);
        assert_eq!(restored.get(b"k001").expect("live").value[..], [1u8; 1024]);
    }

    #[test]
    fn records_not_yet_durable_are_copied() {
        let disk = FaultDisk::new();
        let (mut s, _log) = sample(&disk);
        s.write().put(b"k001", Some(b"new"), None);
        let mut img = decode_checkpoint(&encode_checkpoint(&s, &meta())).expect("decode");
        assert_eq!(img.in_log.len(), 198, "the unflushed put is inline");
        assert_eq!(
            img.keys.iter().find(|k| &k.0[..] == b"k001").and_then(|k| k.2.clone()).expect("inline").value[..],
            *b"new"
        );
        let log = open(&disk, Some(&mut img));
        assert_eq!(restore_store(&mut img, log).expect("restore").get(b"k001").expect("live").value[..], *b"new");
    }

    #[test]
    fn version_1_checkpoints_are_still_read() {
        let disk = FaultDisk::new();
        let (s, _log) = sample(&disk);
        // Version 1: every current record inline.
        let mut b = Vec::new();
        b.extend_from_slice(CHECKPOINT_MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        let v2 = encode_checkpoint(&s, &meta());
        b.extend_from_slice(&v2[16..56]);
        encode_keys(&mut b, &s, |_| false);
        let mut r = Reader::new(&v2[56..v2.len() - 4]);
        decode_keys(&mut r, true).expect("keys");
        b.extend_from_slice(r.rest());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let mut img = decode_checkpoint(&b).expect("version 1 decodes");
        assert!(img.in_log.is_empty());
        let log = open(&disk, Some(&mut img));
        same(&s, &restore_store(&mut img, log).expect("restore"));
        // A version 1 image may not refer to the log.
        let mut bad = v2[..v2.len() - 4].to_vec();
        bad[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&bad);
        bad.extend_from_slice(&crc.to_le_bytes());
        assert!(decode_checkpoint(&bad).err().expect("refs in v1").contains("current-record tag 2"));
    }

    #[test]
    fn a_referred_record_missing_from_the_log_fails_the_start() {
        let disk = FaultDisk::new();
        let (s, _log) = sample(&disk);
        let image = encode_checkpoint(&s, &meta());
        // A log that lost the records (an empty one in another place).
        let mut img = decode_checkpoint(&image).expect("decode");
        let (log, _) =
            Log::open(disk.clone(), Path::new("/other/log"), LogConfig::default(), |l, k, p| img.visit_log(l, k, p))
                .expect("open");
        let err = restore_store(&mut img, Rc::new(RefCell::new(log))).err().expect("missing records");
        assert!(err.contains("which the log does not hold") && err.contains("snapshot restore"), "{err}");
        // A location that holds another record.
        let mut img = decode_checkpoint(&image).expect("decode");
        img.in_log[0].1 = Revision { main: 999, sub: 0 };
        let r = Log::open(disk.clone(), Path::new(LOG), LogConfig::default(), |l, k, p| img.visit_log(l, k, p));
        assert!(r.is_err_and(|e| e.to_string().contains("current record for revision 999/0 is not here")));
    }
}
