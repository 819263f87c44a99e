//! Consensus for one shard: raft-rs (the Rust port of etcd's raft) driven without IO.
//!
//! The caller ticks, proposes and steps; [`RaftNode::process_ready`] turns raft's `Ready` into
//! records appended to the log (entries, hard state) and hands back the committed entries to
//! apply; the caller flushes the log (one write and one fdatasync for the whole batch) and then
//! reports it with [`RaftNode::on_persisted`]. Persistence is asynchronous: raft keeps working on
//! the next batch while one is being synced. A single member is a one-voter group on this same
//! path. raft-rs logs through slog; this crate routes that into `tracing`.

use std::collections::BTreeMap;
use std::fmt;

use metastore_storage::disk::Disk;
use metastore_storage::engine::Reader;
use metastore_storage::log::{kind, Location, Log, LogError};
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, RawNode, StateRole};

pub use raft::eraftpb;

/// Ticks without a leader's word before a follower campaigns (etcd: 1000 ms / 100 ms).
pub const ELECTION_TICKS: usize = 10;
pub const HEARTBEAT_TICKS: usize = 1;
/// Entries proposed but not yet committed, in bytes, beyond which proposals are refused.
pub const UNCOMMITTED_BYTES_MAX: u64 = 64 << 20;

#[derive(Debug)]
pub enum RaftError {
    Raft(raft::Error),
    Log(LogError),
    /// A proposal was refused: not the leader, or too much uncommitted.
    Dropped,
}

impl fmt::Display for RaftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RaftError::Raft(e) => write!(f, "raft: {e}"),
            RaftError::Log(e) => write!(f, "{e}"),
            RaftError::Dropped => f.write_str("proposal dropped"),
        }
    }
}

impl std::error::Error for RaftError {}

impl From<LogError> for RaftError {
    fn from(e: LogError) -> Self {
        RaftError::Log(e)
    }
}

// ----- record payloads -----

/// RAFT_ENTRY payload: index, term, type, context (length-prefixed), data (the rest).
pub fn encode_entry(b: &mut Vec<u8>, e: &Entry) {
    b.extend_from_slice(&e.index.to_le_bytes());
    b.extend_from_slice(&e.term.to_le_bytes());
    b.push(e.get_entry_type() as u8);
    b.extend_from_slice(&(e.context.len() as u32).to_le_bytes());
    b.extend_from_slice(&e.context);
    b.extend_from_slice(&e.data);
}

pub fn decode_entry(p: &[u8]) -> Result<Entry, String> {
    let mut r = Reader::new(p);
    let mut e = Entry { index: r.u64()?, term: r.u64()?, ..Default::default() };
    e.set_entry_type(match r.u8()? {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        t => return Err(format!("unknown entry type {t}")),
    });
    e.context = r.blob()?.to_vec().into();
    e.data = r.rest().to_vec().into();
    Ok(e)
}

/// HARD_STATE payload: term, vote, commit.
pub fn encode_hard_state(b: &mut Vec<u8>, hs: &HardState) {
    for v in [hs.term, hs.vote, hs.commit] {
        b.extend_from_slice(&v.to_le_bytes());
    }
}

pub fn decode_hard_state(p: &[u8]) -> Result<HardState, String> {
    let mut r = Reader::new(p);
    Ok(HardState { term: r.u64()?, vote: r.u64()?, commit: r.u64()?, ..Default::default() })
}

/// What raft needs from a checkpoint: the index and term it covers, and the membership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftCheckpoint {
    pub index: u64,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

impl RaftCheckpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&self.term.to_le_bytes());
        for list in [&self.voters, &self.learners] {
            b.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for v in list {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b
    }

    pub fn decode(p: &[u8]) -> Result<Self, String> {
        let mut r = Reader::new(p);
        let (index, term) = (r.u64()?, r.u64()?);
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = r.u32()?;
            for _ in 0..n {
                list.push(r.u64()?);
            }
        }
        let [voters, learners] = lists;
        Ok(RaftCheckpoint { index, term, voters, learners })
    }
}

/// What recovery found for raft: the checkpoint's part, the last hard state, and the entries
/// after the checkpoint with where they are in the log.
#[derive(Default)]
pub struct Recovered {
    pub checkpoint: Option<RaftCheckpoint>,
    pub hard_state: Option<HardState>,
    pub entries: Vec<(Location, Entry)>,
}

impl Recovered {
    /// Feeds one log record (from recovery's scan).
    pub fn visit(&mut self, loc: Location, k: u8, payload: &[u8]) -> Result<(), String> {
        let after = self.checkpoint.as_ref().map_or(0, |c| c.index);
        match k {
            kind::RAFT_ENTRY => {
                let e = decode_entry(payload)?;
                if e.index <= after {
                    return Ok(());
                }
                // A later term's entry replaces the uncommitted tail it conflicts with.
                while self.entries.last().is_some_and(|(_, last)| last.index >= e.index) {
                    self.entries.pop();
                }
                if let Some((_, last)) = self.entries.last() {
                    if last.index + 1 != e.index {
                        return Err(format!("raft entry {} follows entry {}", e.index, last.index));
                    }
                } else if e.index != after + 1 {
                    return Err(format!(
                        "first raft entry after the checkpoint is {}, expected {}",
                        e.index,
                        after + 1
                    ));
                }
                self.entries.push((loc, e));
            }
            kind::HARD_STATE => self.hard_state = Some(decode_hard_state(payload)?),
            _ => {}
        }
        Ok(())
    }
}

// ----- raft's view of the log -----

/// raft-rs's `Storage`: the entries since the last checkpoint, kept in memory (the log has them
/// durably), the hard state and the membership.
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry covered by a checkpoint.
    snap_index: u64,
    snap_term: u64,
    entries: Vec<Entry>,
}

impl LogStore {
    fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        let keep = (first.index - self.snap_index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
    }

    /// Drops the entries up to `index`; hands them back, to be freed where it costs nothing.
    fn compact(&mut self, index: u64) -> Vec<Entry> {
        if index <= self.snap_index {
            return Vec::new();
        }
        let n = ((index - self.snap_index) as usize).min(self.entries.len());
        if let Some(e) = self.entries.get(n.wrapping_sub(1)) {
            self.snap_term = e.term;
        }
        let rest = self.entries.split_off(n);
        self.snap_index = index;
        std::mem::replace(&mut self.entries, rest)
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snap_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        let lo = (low - self.snap_index - 1) as usize;
        let hi = (high - self.snap_index - 1) as usize;
        if hi > self.entries.len() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let mut out: Vec<Entry> = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index {
            return Ok(self.snap_term);
        }
        if idx < self.snap_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        self.entries
            .get((idx - self.snap_index - 1) as usize)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.snap_index + self.entries.len() as u64)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Snapshot transfer to peers comes with clusters; a single member never needs one.
        Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable))
    }
}

// ----- slog → tracing -----

struct TracingDrain;

struct KvToString(String);

impl slog::Serializer for KvToString {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        use slog::KV;
        let mut kv = KvToString(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Info => tracing::info!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Debug => tracing::debug!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Trace => tracing::trace!(target: "raft", "{msg}{}", kv.0),
        }
        Ok(())
    }
}

fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

// ----- the node -----

/// Entries a checkpoint made unnecessary, to be dropped (on any thread).
pub struct Compacted {
    _entries: Vec<Entry>,
    _locations: BTreeMap<u64, Location>,
}

pub struct RaftNode {
    raw: RawNode<LogStore>,
    id: u64,
    /// Where each entry not yet covered by a checkpoint is in the log.
    locations: BTreeMap<u64, Location>,
    /// The newest Ready whose records were appended to the log.
    last_ready: u64,
}

impl RaftNode {
    /// Starts the node from what recovery found, or bootstraps a new single-voter group.
    pub fn new(id: u64, rec: Recovered) -> Result<Self, RaftError> {
        Self::with_ticks(id, rec, ELECTION_TICKS, HEARTBEAT_TICKS)
    }

    /// As [`RaftNode::new`], with an election timeout and a heartbeat in ticks.
    pub fn with_ticks(id: u64, rec: Recovered, election: usize, heartbeat: usize) -> Result<Self, RaftError> {
        let ckpt = rec.checkpoint.clone().unwrap_or(RaftCheckpoint { voters: vec![id], ..Default::default() });
        let conf_state =
            ConfState { voters: ckpt.voters.clone(), learners: ckpt.learners.clone(), ..Default::default() };
        let mut store = LogStore {
            hard_state: rec.hard_state.clone().unwrap_or_default(),
            conf_state,
            snap_index: ckpt.index,
            snap_term: ckpt.term,
            entries: Vec::new(),
        };
        let mut locations = BTreeMap::new();
        let entries: Vec<Entry> = rec
            .entries
            .into_iter()
            .map(|(loc, e)| {
                locations.insert(e.index, loc);
                e
            })
            .collect();
        store.append(&entries);
        // The hard state may trail the entries (it is written in the same batch) or point past a
        // checkpoint; keep it within what the log has.
        let last = store.snap_index + store.entries.len() as u64;
        if store.hard_state.commit < store.snap_index {
            store.hard_state.commit = store.snap_index;
        }
        store.hard_state.commit = store.hard_state.commit.min(last);
        if store.hard_state.term < store.snap_term {
            store.hard_state.term = store.snap_term;
        }
        let cfg = raft::Config {
            id,
            election_tick: election,
            heartbeat_tick: heartbeat,
            applied: ckpt.index,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: UNCOMMITTED_BYTES_MAX,
            ..Default::default()
        };
        let raw = RawNode::new(&cfg, store, &logger()).map_err(RaftError::Raft)?;
        let mut node = RaftNode { raw, id, locations, last_ready: 0 };
        if node.voters() == [id] {
            // Alone: no one else can elect us, and waiting out an election timeout buys nothing.
            node.raw.campaign().map_err(RaftError::Raft)?;
        }
        Ok(node)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn voters(&self) -> Vec<u64> {
        self.raw.store().conf_state.voters.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn applied_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// Proposes a write; it comes back through `process_ready` once committed.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), RaftError> {
        self.raw.propose(Vec::new(), data).map_err(|e| match e {
            raft::Error::ProposalDropped => RaftError::Dropped,
            e => RaftError::Raft(e),
        })
    }

    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Handles one Ready: appends its entries and hard state to the log's pending batch and
    /// pushes the committed entries (to apply, in order) onto `committed`. Returns false if
    /// there was nothing to do. Peers' messages are not sent: a single member has none.
    pub fn process_ready<D: Disk>(&mut self, log: &mut Log<D>, committed: &mut Vec<Entry>) -> Result<bool, RaftError> {
        if !self.raw.has_ready() {
            return Ok(false);
        }
        let mut rd = self.raw.ready();
        committed.extend(rd.take_committed_entries());
        let entries = rd.take_entries();
        for e in &entries {
            let loc = log.append(kind::RAFT_ENTRY, |b| encode_entry(b, e))?;
            self.locations.split_off(&e.index);
            self.locations.insert(e.index, loc);
        }
        if let Some(hs) = rd.hs() {
            let prev = &self.raw.store().hard_state;
            // raft's MustSync: a new term or vote must be durable before anything is sent; a
            // commit index alone need not (recovery commits those entries again).
            if hs.term != prev.term || hs.vote != prev.vote || !entries.is_empty() {
                log.append(kind::HARD_STATE, |b| encode_hard_state(b, hs))?;
            } else {
                log.append_lazy(kind::HARD_STATE, |b| encode_hard_state(b, hs))?;
            }
            self.raw.mut_store().hard_state = hs.clone();
        }
        self.raw.mut_store().append(&entries);
        self.last_ready = rd.number();
        self.raw.advance_append_async(rd);
        Ok(true)
    }

    /// The newest Ready appended to the log: pass it to `on_persisted` once the flush that
    /// carries it has completed.
    pub fn last_ready(&self) -> u64 {
        self.last_ready
    }

    /// Readies up to `number` are durable.
    pub fn on_persisted(&mut self, number: u64) {
        if number > 0 {
            self.raw.on_persist_ready(number);
        }
    }

    /// Entries up to `index` have been applied.
    pub fn advance_applied(&mut self, index: u64) {
        self.raw.advance_apply_to(index);
    }

    /// Raft's part of a checkpoint at the applied index.
    pub fn checkpoint(&self, applied: u64) -> Result<RaftCheckpoint, RaftError> {
        let term = raft::Storage::term(self.raw.store(), applied).map_err(RaftError::Raft)?;
        let cs = &self.raw.store().conf_state;
        Ok(RaftCheckpoint { index: applied, term, voters: cs.voters.clone(), learners: cs.learners.clone() })
    }

    /// Where log replay must start for a checkpoint at `applied`: the first entry after it.
    pub fn replay_from(&self, applied: u64, tail: Location) -> Location {
        self.locations.range(applied + 1..).next().map_or(tail, |(_, l)| *l)
    }

    /// A checkpoint at `index` is durable: entries up to it are no longer needed in memory.
    /// What they held is handed back: freeing a hundred thousand entries takes the core tens
    /// of milliseconds, so the caller frees them on another thread.
    #[must_use = "the compacted entries: drop them off the serving thread"]
    pub fn compact(&mut self, index: u64) -> Compacted {
        let entries = self.raw.mut_store().compact(index);
        let rest = self.locations.split_off(&(index + 1));
        Compacted { _entries: entries, _locations: std::mem::replace(&mut self.locations, rest) }
    }

    /// Entries held in memory (since the last checkpoint).
    pub fn entries_in_memory(&self) -> usize {
        self.raw.store().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metastore_storage::fault::{now, FaultDisk};
    use metastore_storage::log::LogConfig;
    use std::path::Path;

    fn open(disk: &FaultDisk, ckpt: Option<RaftCheckpoint>) -> (Log<FaultDisk>, Recovered) {
        let mut rec = Recovered { checkpoint: ckpt, ..Default::default() };
        let (log, _) = Log::open(disk.clone(), Path::new("/d/log"), LogConfig { segment_bytes: 4096 }, |l, k, p| {
            rec.visit(l, k, p)
        })
        .unwrap();
        (log, rec)
    }

    /// Drives the node until nothing is left: ready → flush → persisted → ready...
    fn pump(node: &mut RaftNode, log: &mut Log<FaultDisk>, applied: &mut Vec<Vec<u8>>) {
        loop {
            let mut committed = Vec::new();
            let mut worked = false;
            while node.process_ready(log, &mut committed).unwrap() {
                worked = true;
            }
            for e in &committed {
                if !e.data.is_empty() {
                    applied.push(e.data.to_vec());
                }
                node.advance_applied(e.index);
            }
            if let Some(f) = log.start_flush().unwrap() {
                let n = node.last_ready();
                log.finish_flush(now(f.run())).unwrap();
                node.on_persisted(n);
                worked = true;
            }
            if !worked && committed.is_empty() {
                break;
            }
        }
    }

    #[test]
    fn a_single_member_commits_its_proposals_after_the_flush() {
        let disk = FaultDisk::new();
        let (mut log, rec) = open(&disk, None);
        let mut node = RaftNode::new(7, rec).unwrap();
        let mut applied = Vec::new();
        pump(&mut node, &mut log, &mut applied);
        assert!(node.is_leader(), "a lone voter leads at once");
        assert_eq!(node.leader_id(), 7);
        for i in 0..50u8 {
            node.propose(vec![i]).unwrap();
        }
        // Nothing is committed before the flush.
        let mut committed = Vec::new();
        node.process_ready(&mut log, &mut committed).unwrap();
        assert!(committed.iter().all(|e| e.data.is_empty()));
        pump(&mut node, &mut log, &mut applied);
        assert_eq!(applied, (0..50u8).map(|i| vec![i]).collect::<Vec<_>>());
        let term = node.term();
        // Restart: the entries come back and are applied again from the start (no checkpoint).
        drop(node);
        let disk = disk.crash_clean();
        let (mut log2, rec) = open(&disk, None);
        assert!(rec.entries.len() >= 51);
        let mut node = RaftNode::new(7, rec).unwrap();
        let mut again = Vec::new();
        pump(&mut node, &mut log2, &mut again);
        assert_eq!(again, applied, "committed entries are applied again in order after a restart");
        assert!(node.term() > term);
        // A checkpoint at the applied index: replay starts after it.
        let ck = node.checkpoint(node.applied_index()).unwrap();
        assert_eq!(ck.voters, vec![7]);
        let decoded = RaftCheckpoint::decode(&ck.encode()).unwrap();
        assert_eq!(decoded, ck);
        drop(node.compact(ck.index));
        node.propose(b"after".to_vec()).unwrap();
        pump(&mut node, &mut log2, &mut again);
        let (_, rec) = open(&disk, Some(ck.clone()));
        assert!(rec.entries.iter().all(|(_, e)| e.index > ck.index));
        let mut node = RaftNode::new(7, rec).unwrap();
        let (mut log3, _) = open(&disk, Some(ck));
        let mut third = Vec::new();
        pump(&mut node, &mut log3, &mut third);
        assert_eq!(third, vec![b"after".to_vec()]);
    }

    #[test]
    fn codecs_round_trip() {
        let e = Entry {
            index: 9,
            term: 3,
            data: b"payload".to_vec().into(),
            context: b"ctx".to_vec().into(),
            ..Default::default()
        };
        let mut b = Vec::new();
        encode_entry(&mut b, &e);
        assert_eq!(decode_entry(&b).unwrap(), e);
        assert!(decode_entry(&b[..10]).is_err());
        let hs = HardState { term: 4, vote: 7, commit: 11, ..Default::default() };
        let mut b = Vec::new();
        encode_hard_state(&mut b, &hs);
        assert_eq!(decode_hard_state(&b).unwrap(), hs);
    }
}
