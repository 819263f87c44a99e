//! The data shard: the one owner of the keyspace's state (Stage 1: one shard, on core 0).
//! Requests reach it as a plain call from its own core and over a ring from the others; it
//! answers every request exactly once.
//!
//! Reads are served at once from the applied state. Writes go through raft: proposed, appended
//! to the log with the rest of their batch, made durable by one fdatasync, committed, applied
//! (the only place that changes the MVCC store), and only then answered. While a batch syncs the
//! shard keeps serving reads and gathering the next batch.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use metastore_net::grpc::{Code, Status};
use metastore_proto::etcdserverpb as pb;
use metastore_proto::etcdserverpb::AlarmType;
use metastore_proto::health::health_check_response::ServingStatus;
use metastore_raft::eraftpb::Entry;
use metastore_raft::{RaftCheckpoint, RaftNode, Recovered};
use metastore_storage::disk::Disk;
use metastore_storage::engine::{self, CheckpointMeta, DurableHistory};
use metastore_storage::log::{Flush, Flushed, Location, Log, LogConfig};
use metastore_storage::mvcc::Store;
use prost::Message;

use crate::disk::ReactorDisk;
use crate::etcd::kv::{self, Header, Ids};
use crate::lease::LeaseTable;

#[path = "recipes.rs"]
mod recipes;
use crate::watch::{EventBatch, WatchSync, WatchSynced};

/// Which call a reply belongs to: a connection on some core (slab slot and generation, so a
/// reused slot never receives a stale reply) and the HTTP/2 stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallRef {
    pub conn_slot: u32,
    pub conn_gen: u32,
    pub stream: u32,
}

#[derive(Debug)]
pub enum ShardRequest {
    /// The serving status of a gRPC service name ("" = the whole server).
    Health {
        service: String,
    },
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    DeleteRange(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    Status,
    MemberList,
    Defragment,
    Alarm(pb::AlarmRequest),
    Hash,
    HashKv(pb::HashKvRequest),
    Snapshot,
    /// A watcher's history (and, at its creation, its core's subscription to changes).
    WatchSync(Box<WatchSync>),
    LeaseGrant(pb::LeaseGrantRequest),
    LeaseRevoke(pb::LeaseRevokeRequest),
    LeaseKeepAlive(i64),
    LeaseTimeToLive(pb::LeaseTimeToLiveRequest),
    LeaseLeases,
    Lock(metastore_proto::v3lockpb::LockRequest),
    Unlock(metastore_proto::v3lockpb::UnlockRequest),
    Campaign(metastore_proto::v3electionpb::CampaignRequest),
    Proclaim(metastore_proto::v3electionpb::ProclaimRequest),
    Leader(metastore_proto::v3electionpb::LeaderRequest),
    Resign(metastore_proto::v3electionpb::ResignRequest),
    /// A request whose handling panics (tests of the panic guard).
    #[cfg(test)]
    TestPanic,
    /// Observe's next leader: the one after `key` at `mod_rev` (empty: any).
    Observe {
        name: Vec<u8>,
        key: Vec<u8>,
        mod_rev: i64,
    },
    /// The client went (reset, deadline, closed connection) from a call that may wait in the
    /// shard (Lock, Campaign, Observe): the envelope's call, or with `whole_conn` every call of
    /// its connection. Its wait ends and the key it put is removed, as the error paths of Go's
    /// recipes do. Never answered.
    Abandon {
        whole_conn: bool,
    },
}

/// What the slow-request log says of a request: when the shard took it, its kind and the start
/// of its key (no allocation: a fixed prefix).
#[derive(Debug, Clone, Copy)]
pub struct Slow {
    at: Instant,
    what: &'static str,
    key: [u8; 24],
    key_len: u8,
}

impl Slow {
    fn new(at: Instant, what: &'static str, key: &[u8]) -> Self {
        let mut k = [0u8; 24];
        let n = key.len().min(k.len());
        k[..n].copy_from_slice(&key[..n]);
        Slow { at, what, key: k, key_len: n as u8 }
    }

    /// Logs the request if it took longer than `limit` (`stage`: where the time went).
    fn check(&self, limit: std::time::Duration, stage: &str) {
        let took = self.at.elapsed();
        if took >= limit {
            let key = String::from_utf8_lossy(&self.key[..self.key_len as usize]);
            tracing::warn!(
                method = self.what,
                key_prefix = %key.escape_debug(),
                took_ms = took.as_secs_f64() * 1e3,
                stage,
                "slow request"
            );
        }
    }
}

impl ShardRequest {
    /// The key a request is about, if one (its first), for logs.
    pub fn key(&self) -> &[u8] {
        match self {
            ShardRequest::Range(r) => &r.key,
            ShardRequest::Put(r) => &r.key,
            ShardRequest::DeleteRange(r) => &r.key,
            ShardRequest::Txn(t) => t.compare.first().map_or(&[][..], |c| &c.key[..]),
            _ => &[],
        }
    }

    /// The request's kind, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ShardRequest::Health { .. } => "Health",
            ShardRequest::Range(_) => "Range",
            ShardRequest::Put(_) => "Put",
            ShardRequest::DeleteRange(_) => "DeleteRange",
            ShardRequest::Txn(_) => "Txn",
            ShardRequest::Compact(_) => "Compact",
            ShardRequest::Status => "Status",
            ShardRequest::MemberList => "MemberList",
            ShardRequest::Defragment => "Defragment",
            ShardRequest::Alarm(_) => "Alarm",
            ShardRequest::Hash => "Hash",
            ShardRequest::HashKv(_) => "HashKV",
            ShardRequest::Snapshot => "Snapshot",
            ShardRequest::WatchSync(_) => "Watch",
            ShardRequest::LeaseGrant(_) => "LeaseGrant",
            ShardRequest::LeaseRevoke(_) => "LeaseRevoke",
            ShardRequest::LeaseKeepAlive(_) => "LeaseKeepAlive",
            ShardRequest::LeaseTimeToLive(_) => "LeaseTimeToLive",
            ShardRequest::LeaseLeases => "LeaseLeases",
            ShardRequest::Lock(_) => "Lock",
            ShardRequest::Unlock(_) => "Unlock",
            ShardRequest::Campaign(_) => "Campaign",
            ShardRequest::Proclaim(_) => "Proclaim",
            ShardRequest::Leader(_) => "Leader",
            ShardRequest::Resign(_) => "Resign",
            ShardRequest::Observe { .. } => "Observe",
            ShardRequest::Abandon { .. } => "Abandon",
            #[cfg(test)]
            ShardRequest::TestPanic => "TestPanic",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ShardReply {
    /// None: the name is not known.
    Health(Option<ServingStatus>),
    /// The response message, encoded.
    Encoded(Vec<u8>),
    /// The request failed with an etcd error.
    Error(Status),
    /// The request's deadline passed before the shard started it; it was dropped unexecuted.
    DeadlineExceeded,
    WatchSynced(Box<WatchSynced>),
    /// Changes published to a core's watchers (not an answer to a call).
    WatchEvents(Arc<EventBatch>),
    /// The core missed the published changes up to this revision (its ring was full).
    WatchLagged(i64),
}

/// How a request ended, when its response was encoded into a caller's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The response message is in the buffer.
    Encoded,
    /// A write on its way through raft; the reply comes later.
    Pending,
    Health(Option<ServingStatus>),
    Error(Status),
    DeadlineExceeded,
    WatchSynced(Box<WatchSynced>),
}

/// Who this member is, as Status and MemberList report it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub ids: Ids,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// Runs [`Shard::execute`], turning a panic into an INTERNAL answer for that one request (logged
/// and counted in `request_panics`); the shard goes on serving. A panic while applying committed
/// entries is not caught here: the core's thread aborts the process, since state could diverge.
pub fn execute_guarded<D: Disk>(
    shard: &RefCell<Shard<D>>,
    req: ShardRequest,
    deadline: Option<Instant>,
    now: Instant,
    waiter: Waiter,
    out: &mut Vec<u8>,
    shared: &crate::reactor::Shared,
) -> Outcome {
    let what = req.name();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        shard.borrow_mut().execute(req, deadline, now, waiter, out)
    }));
    r.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(request = what, panic = %msg, "a request panicked; answered INTERNAL, the server goes on");
        crate::reactor::CoreStats::add(&shared.shard_stats.request_panics, 1);
        out.clear();
        Outcome::Error(Status::new(
            Code::INTERNAL,
            "etcdserver: internal error (the request failed; see the server log)",
        ))
    })
}

/// What the shard counts for `/metrics` (etcd's `etcd_mvcc_*_total`, lease counters).
#[derive(Debug, Default)]
pub struct Counters<T> {
    pub ranges: T,
    pub puts: T,
    pub deletes: T,
    pub txns: T,
    pub leases_granted: T,
    pub leases_revoked: T,
    pub leases_renewed: T,
    pub leases_expired: T,
}

/// Capacity of a reply buffer sent across cores: fits a small response without regrowing.
const REPLY_BYTES_INITIAL: usize = 1024;

/// etcd's API level, reported by Status (clients check it is at least 3.4).
pub const VERSION: &str = "3.5.0";
/// What an empty store costs, so that dbSize is never 0 (etcd's empty bbolt file is 20 KiB).
const DB_BASE_BYTES: i64 = 20 << 10;

/// A request on its way to the shard.
#[derive(Debug)]
pub struct Envelope {
    pub call: CallRef,
    pub deadline: Option<Instant>,
    pub req: ShardRequest,
}

/// A reply on its way back to the connection's core.
#[derive(Debug)]
pub struct ReplyEnvelope {
    pub call: CallRef,
    pub reply: ShardReply,
}

/// Who waits for a write's reply.
#[derive(Debug, Clone, Copy)]
pub enum Waiter {
    /// A connection on the shard's own core.
    Local(CallRef),
    /// A connection on another core, reached through reply ring `ring`.
    Remote { ring: usize, call: CallRef },
}

/// Tunables of the shard's persistence.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub data_dir: PathBuf,
    /// `--quota-backend-bytes`: dbSize beyond which writes raise the NOSPACE alarm.
    pub quota_bytes: u64,
    pub auto_compaction: Option<crate::compactor::Mode>,
    /// Applied entries between checkpoints (`--snapshot-count`).
    pub snapshot_count: u64,
    /// Requests slower than this are logged (`--experimental-warning-apply-duration`).
    pub slow_request: std::time::Duration,
    pub log: LogConfig,
    /// Raft's tick (`--heartbeat-interval`), and its election timeout in ticks.
    pub tick_ms: u64,
    pub election_ticks: usize,
}

/// Write kinds in a raft entry's data (first byte; the request's protobuf follows).
mod op {
    pub const PUT: u8 = 1;
    pub const DELETE_RANGE: u8 = 2;
    pub const TXN: u8 = 3;
    pub const COMPACT: u8 = 4;
    pub const ALARM: u8 = 5;
    pub const LEASE_GRANT: u8 = 6;
    pub const LEASE_REVOKE: u8 = 7;
}

/// Checkpoint section tags.
pub const SECTION_RAFT: u32 = 1;
const SECTION_ALARMS: u32 = 2;
const SECTION_LEASES: u32 = 3;
/// etcd refuses proposals when apply lags commit by more than this many entries.
pub const UNAPPLIED_ENTRIES_MAX: u64 = 5_000;

/// Replies the shard produced, to be delivered once it is no longer borrowed.
#[derive(Default)]
pub struct Replies {
    pub local: Vec<ReplyEnvelope>,
    pub remote: Vec<(usize, ReplyEnvelope)>,
}

impl Replies {
    fn push(&mut self, w: Waiter, reply: ShardReply) {
        match w {
            Waiter::Local(call) => self.local.push(ReplyEnvelope { call, reply }),
            Waiter::Remote { ring, call } => self.remote.push((ring, ReplyEnvelope { call, reply })),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.is_empty()
    }
}

pub fn member_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member")
}

pub struct Shard<D: Disk = ReactorDisk> {
    serving: HashMap<String, ServingStatus>,
    member: MemberInfo,
    log: Rc<RefCell<Log<D>>>,
    store: Store<DurableHistory<D>>,
    raft: RaftNode,
    waiters: HashMap<u64, (Waiter, Slow)>,
    /// The request being executed (for the slow log of the write it may propose).
    current: Slow,
    /// `--experimental-warning-apply-duration`: requests slower than this are logged.
    slow_limit: std::time::Duration,
    next_id: u64,
    /// Set when the disk failed: writes are refused until a restart.
    failed: Option<String>,
    /// The raft Ready carried by the flush in flight.
    flushing_ready: Option<u64>,
    /// Requests taken since the last batch was handed out (see [`Shard::sync_inline`]).
    requests_since_flush: u32,
    /// Whether the batch last handed out served at most one request, with none besides.
    lone_batch: bool,
    /// Whether the batch last handed out may be synced inline.
    lone_flush: bool,
    checkpoint_dir: PathBuf,
    snapshot_count: u64,
    last_checkpoint: u64,
    checkpointing: bool,
    committed: Vec<Entry>,
    /// Requests taken from each inbound ring and not answered yet (bounded by the reply ring).
    outstanding: Vec<usize>,
    /// Client write requests applied (for metrics: writes per fsync).
    writes_applied: u64,
    /// Write a checkpoint as soon as history is durable, whatever `snapshot_count` says (GC and
    /// defragmentation need one).
    force_checkpoint: bool,
    /// Where the checkpoint being written starts replay.
    checkpoint_replay_from: Location,
    /// Where the last durable checkpoint starts replay: segments before it hold no entry
    /// recovery needs.
    replay_from: Location,
    /// Segments whose live records were copied forward; removed once a checkpoint pointing at
    /// the copies is durable.
    relocated: Vec<u64>,
    /// History was compacted: reclaim space at the next checkpoint.
    gc_wanted: bool,
    defrag: Defrag,
    /// Active alarms: (member, AlarmType). Changed only by applied raft entries.
    alarms: std::collections::BTreeSet<(u64, i32)>,
    quota_bytes: u64,
    compactor: Option<crate::compactor::Compactor>,
    /// Where applied changes go for watchers: this core's, and each other core's by ring.
    local_feed: Feed,
    feeds: Vec<Feed>,
    /// Changes applied this round, for the feeds (gathered only while a core subscribes).
    watch_events: Vec<metastore_storage::mvcc::Event>,
    /// The first revision of this round's changes.
    watch_from: i64,
    leases: LeaseTable,
    /// Lease IDs this member has picked (for the next one).
    lease_ids_picked: u64,
    last_expiry_check: Instant,
    /// Lock and election txns in flight (by proposal id), and recipes waiting for changes.
    steps: HashMap<u64, recipes::Step>,
    waiting: Vec<recipes::Waiting>,
    /// Calls whose clients went while they may wait here ([`ShardRequest::Abandon`]: the call
    /// and `whole_conn`), handled at the next `drive`.
    abandons: Vec<(Waiter, bool)>,
    /// Recipe txns in flight (by proposal id) whose callers went: cleaned up once applied.
    abandoned: Vec<u64>,
    tick_ms: u64,
    lease_ttl_min: i64,
    counters: Counters<u64>,
}

/// Batches of published changes a core has not taken yet. At most [`FEED_BATCHES_MAX`] wait;
/// beyond that they are dropped for a lag notice, and the core's watchers catch up from history.
#[derive(Default)]
struct Feed {
    subscribed: bool,
    queue: VecDeque<Arc<EventBatch>>,
    lagged_upto: Option<i64>,
}

const FEED_BATCHES_MAX: usize = 256;

/// Maintenance.Defragment's progress (`phase`, 0 when idle): 1, a checkpoint, then the head
/// sealed; 2, a checkpoint whose replay starts past every old segment, then the live history
/// copied out of each; 3, a checkpoint pointing at the copies, then the old segments removed and
/// the callers answered.
#[derive(Default)]
struct Defrag {
    waiters: Vec<Waiter>,
    phase: u8,
}

impl<D: Disk> Shard<D> {
    /// Opens (or creates) the shard's data: the newest checkpoint, then the log after it.
    pub fn open(disk: D, cfg: &ShardConfig, member: MemberInfo) -> Result<Self, String> {
        let dir = member_dir(&cfg.data_dir);
        let log_dir = dir.join("log");
        let checkpoint_dir = dir.join("checkpoint");
        let mut img = engine::load_checkpoint(&disk, &checkpoint_dir)
            .map_err(|e| format!("cannot read checkpoints in {}: {e}", checkpoint_dir.display()))?;
        let mut rec = Recovered::default();
        let mut replay_from = Default::default();
        let mut alarms = std::collections::BTreeSet::new();
        let mut leases = LeaseTable::default();
        if let Some(img) = &img {
            if let Some((_, a)) = img.meta.sections.iter().find(|(t, _)| *t == SECTION_ALARMS) {
                alarms = decode_alarms(a).map_err(|e| format!("checkpoint alarms section: {e}"))?;
            }
            if let Some((_, l)) = img.meta.sections.iter().find(|(t, _)| *t == SECTION_LEASES) {
                leases =
                    LeaseTable::decode(l, Instant::now()).map_err(|e| format!("checkpoint leases section: {e}"))?;
            }
            replay_from = img.meta.replay_from;
            let raft = img
                .meta
                .sections
                .iter()
                .find(|(t, _)| *t == SECTION_RAFT)
                .ok_or("the checkpoint has no raft section")?;
            rec.checkpoint =
                Some(RaftCheckpoint::decode(&raft.1).map_err(|e| format!("checkpoint raft section: {e}"))?);
        }
        let (log, found) = Log::open(disk, &log_dir, cfg.log, |loc, k, p| {
            if let Some(i) = img.as_mut() {
                i.visit_log(loc, k, p)?;
            }
            if loc >= replay_from {
                rec.visit(loc, k, p)
            } else {
                Ok(())
            }
        })
        .map_err(|e| e.to_string())?;
        if let Some((loc, bytes)) = found.torn_tail {
            tracing::warn!(%loc, bytes, "cut a torn tail off the log (a batch that was never acknowledged)");
        }
        let log = Rc::new(RefCell::new(log));
        let store = match img.as_mut() {
            Some(i) => engine::restore_store(i, log.clone())?,
            None => Store::with_history(DurableHistory::new(log.clone())),
        };
        for (_, _, current) in store.dump_keys() {
            if let Some(r) = current.filter(|r| r.lease != 0) {
                leases.attach(r.lease, r.key.clone());
            }
        }
        let last_checkpoint = rec.checkpoint.as_ref().map_or(0, |c| c.index);
        tracing::info!(
            checkpoint = last_checkpoint,
            revision = store.current_revision(),
            entries = rec.entries.len(),
            records = found.records,
            "recovered the shard"
        );
        let commit = rec.hard_state.as_ref().map_or(0, |h| h.commit);
        let raft =
            RaftNode::with_ticks(member.ids.member_id, rec, cfg.election_ticks.max(2), 1).map_err(|e| e.to_string())?;
        let mut serving = HashMap::new();
        // As etcd: the server as a whole ("") is registered, and SERVING once started.
        serving.insert(String::new(), ServingStatus::Serving);
        let mut shard = Self {
            serving,
            member,
            log,
            store,
            raft,
            waiters: HashMap::new(),
            current: Slow::new(Instant::now(), "", &[]),
            slow_limit: cfg.slow_request,
            next_id: 1,
            failed: None,
            flushing_ready: None,
            requests_since_flush: 0,
            lone_batch: false,
            lone_flush: false,
            checkpoint_dir,
            snapshot_count: cfg.snapshot_count.max(1),
            last_checkpoint,
            checkpointing: false,
            committed: Vec::new(),
            outstanding: Vec::new(),
            writes_applied: 0,
            force_checkpoint: false,
            checkpoint_replay_from: replay_from,
            replay_from,
            relocated: Vec::new(),
            gc_wanted: false,
            defrag: Defrag::default(),
            local_feed: Feed::default(),
            feeds: Vec::new(),
            watch_events: Vec::new(),
            watch_from: 0,
            leases,
            lease_ids_picked: 0,
            last_expiry_check: Instant::now(),
            steps: HashMap::new(),
            waiting: Vec::new(),
            abandons: Vec::new(),
            abandoned: Vec::new(),
            counters: Counters::default(),
            tick_ms: cfg.tick_ms.max(1),
            // etcd's minimum lease TTL: 1.5 election timeouts, in whole seconds rounded up.
            lease_ttl_min: ((cfg.tick_ms * cfg.election_ticks as u64 * 3).div_ceil(2000)).max(1) as i64,
            alarms,
            quota_bytes: cfg.quota_bytes,
            compactor: cfg.auto_compaction.map(|m| crate::compactor::Compactor::new(m, Instant::now())),
        };
        // Apply what the log says was committed before serving anything: a read must never see
        // less than what was acknowledged before the restart.
        let mut replies = Replies::default();
        while shard.raft.applied_index() < commit.min(shard.raft.commit_index()) {
            shard.process_readies(&mut replies)?;
            if !shard.raft.has_ready() {
                break;
            }
        }
        shard.process_readies(&mut replies)?;
        tracing::info!(
            applied = shard.raft.applied_index(),
            revision = shard.store.current_revision(),
            "replayed the log"
        );
        Ok(shard)
    }

    pub fn store(&self) -> &Store<DurableHistory<D>> {
        &self.store
    }

    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    /// Copies the shard's figures into the counters /metrics reads.
    pub fn publish_stats(&self, s: &crate::reactor::ShardStats) {
        use std::sync::atomic::Ordering::Relaxed;
        // What the server itself reads (watch positions, health) is published either way.
        s.revision.store(self.store.current_revision().max(0) as u64, Relaxed);
        s.writes_applied.store(self.writes_applied, Relaxed);
        s.raft_committed.store(self.raft.commit_index(), Relaxed);
        s.raft_applied.store(self.raft.applied_index(), Relaxed);
        s.raft_term.store(self.raft.term(), Relaxed);
        let db = DB_BASE_BYTES as u64 + self.log.borrow().disk_bytes();
        s.db_bytes.store(db, Relaxed);
        s.db_bytes_in_use.store((DB_BASE_BYTES as u64 + self.store.history_bytes() as u64).min(db), Relaxed);
        let mut alarms = 0;
        if self.alarm_active(AlarmType::Nospace) {
            alarms |= crate::reactor::ShardStats::ALARM_NOSPACE;
        }
        if self.alarm_active(AlarmType::Corrupt) {
            alarms |= crate::reactor::ShardStats::ALARM_CORRUPT;
        }
        s.alarms.store(alarms, Relaxed);
        s.disk_failed.store(self.failed.is_some() as u64, Relaxed);
        if cfg!(feature = "no-telemetry") {
            return;
        }
        let (c, o) = (&self.counters, &s.counters);
        for (from, to) in [
            (c.ranges, &o.ranges),
            (c.puts, &o.puts),
            (c.deletes, &o.deletes),
            (c.txns, &o.txns),
            (c.leases_granted, &o.leases_granted),
            (c.leases_revoked, &o.leases_revoked),
            (c.leases_renewed, &o.leases_renewed),
            (c.leases_expired, &o.leases_expired),
        ] {
            to.store(from, Relaxed);
        }
        s.keys.store(self.store.live_keys() as u64, Relaxed);
        s.compact_revision.store(self.store.compacted_revision().max(0) as u64, Relaxed);
        s.proposals_pending.store(self.waiters.len() as u64, Relaxed);
    }

    /// How often `raft_tick` is due.
    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    pub fn raft_tick(&mut self) {
        self.raft.tick();
    }

    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Marks every registered service NOT_SERVING (shutdown), as grpc-go's health server does.
    pub fn shutdown(&mut self) {
        for s in self.serving.values_mut() {
            *s = ServingStatus::NotServing;
        }
    }

    fn ids(&self) -> Ids {
        Ids { raft_term: self.raft.term(), ..self.member.ids }
    }

    /// Requests from inbound ring `ring` not answered yet.
    pub fn outstanding(&self, ring: usize) -> usize {
        self.outstanding.get(ring).copied().unwrap_or(0)
    }

    /// Executes one request. Reads are answered in `out` at once; writes are proposed and
    /// answered later (through `drive`). Work whose deadline has passed is dropped before it
    /// starts.
    pub fn execute(
        &mut self,
        req: ShardRequest,
        deadline: Option<Instant>,
        now: Instant,
        waiter: Waiter,
        out: &mut Vec<u8>,
    ) -> Outcome {
        debug_assert!(out.is_empty());
        self.requests_since_flush = self.requests_since_flush.saturating_add(1);
        if deadline.is_some_and(|d| d <= now) {
            return Outcome::DeadlineExceeded;
        }
        self.current = Slow::new(now, req.name(), req.key());
        let ids = self.ids();
        let r = match req {
            ShardRequest::Health { service } => {
                let s = self.serving.get(&service).copied();
                let s = if self.failed.is_some() { s.map(|_| ServingStatus::NotServing) } else { s };
                return Outcome::Health(s);
            }
            ShardRequest::Range(r) => {
                self.counters.ranges += 1;
                kv::range(&self.store, &ids, &r, out)
            }
            ShardRequest::Txn(t) if kv::txn_is_read_only(&t) => kv::txn(&mut self.store, &ids, &self.leases, &t, out),
            ShardRequest::LeaseGrant(mut r) => {
                if r.ttl > crate::lease::TTL_MAX {
                    return Outcome::Error(crate::etcd::errors::lease_ttl_too_large());
                }
                if self.alarm_active(AlarmType::Nospace) {
                    return Outcome::Error(nospace());
                }
                if r.id == 0 {
                    let ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    loop {
                        self.lease_ids_picked += 1;
                        r.id = crate::lease::new_id(self.member.ids.member_id, self.lease_ids_picked, ms);
                        if !kv::Leases::exists(&self.leases, r.id) {
                            break;
                        }
                    }
                }
                r.ttl = r.ttl.max(self.lease_ttl_min);
                return self.propose(op::LEASE_GRANT, &r, waiter);
            }
            ShardRequest::LeaseRevoke(r) => return self.propose(op::LEASE_REVOKE, &r, waiter),
            #[cfg(test)]
            ShardRequest::TestPanic => panic!("a test request that panics"),
            ShardRequest::Lock(r) => return self.lock(r, waiter),
            ShardRequest::Unlock(r) => return self.unlock(r, waiter),
            ShardRequest::Campaign(r) => return self.campaign(r, waiter),
            ShardRequest::Proclaim(r) => return self.proclaim(r, waiter),
            ShardRequest::Resign(r) => return self.resign(r, waiter),
            ShardRequest::Leader(r) => self.leader(r, out),
            ShardRequest::Observe { name, key, mod_rev } => return self.observe(&name, key, mod_rev, waiter, out),
            ShardRequest::Abandon { whole_conn } => {
                // Carried out at the next `drive` (its cleanup proposals and answers go there);
                // after a disk failure every waiter has been answered already.
                if self.failed.is_none() {
                    self.abandons.push((waiter, whole_conn));
                }
                return Outcome::Pending;
            }
            ShardRequest::LeaseKeepAlive(id) => {
                let ttl = self.leases.renew(id, now).unwrap_or(0);
                self.counters.leases_renewed += u64::from(ttl > 0);
                let header = self.header(self.store.current_revision());
                pb::LeaseKeepAliveResponse { header, id, ttl }.encode_raw(out);
                Ok(())
            }
            ShardRequest::LeaseTimeToLive(r) => {
                let header = self.header(self.store.current_revision());
                let resp = match self.leases.get(r.id) {
                    None => pb::LeaseTimeToLiveResponse { header, id: r.id, ttl: -1, granted_ttl: 0, keys: Vec::new() },
                    Some(l) => pb::LeaseTimeToLiveResponse {
                        header,
                        id: r.id,
                        ttl: self.leases.remaining(r.id, now).unwrap_or(0),
                        granted_ttl: l.ttl,
                        keys: if r.keys { l.keys.iter().map(|k| k.to_vec()).collect() } else { Vec::new() },
                    },
                };
                resp.encode_raw(out);
                Ok(())
            }
            ShardRequest::LeaseLeases => {
                let header = self.header(self.store.current_revision());
                let leases = self.leases.ids().map(|id| pb::LeaseStatus { id }).collect();
                pb::LeaseLeasesResponse { header, leases }.encode_raw(out);
                Ok(())
            }
            ShardRequest::Status => {
                self.status().encode_raw(out);
                Ok(())
            }
            ShardRequest::MemberList => {
                self.member_list().encode_raw(out);
                Ok(())
            }
            ShardRequest::Alarm(a) => return self.alarm(a, waiter, out),
            ShardRequest::HashKv(r) => {
                self.store.hash_kv(r.revision).map_err(crate::etcd::errors::mvcc).map(|(hash, _, compact)| {
                    // etcd 3.4 puts the current revision in the header, not the one hashed.
                    let header = self.header(self.store.current_revision());
                    pb::HashKvResponse { header, hash, compact_revision: compact, hash_revision: 0 }.encode_raw(out);
                })
            }
            // A consistent image of the whole state, history included, built here (the state
            // cannot change meanwhile: this core is busy with it).
            ShardRequest::Snapshot => metastore_storage::snapshot::encode(&self.store, &[])
                .map_err(crate::etcd::errors::mvcc)
                .map(|b| out.extend_from_slice(&b)),
            ShardRequest::Hash => self.store.hash_kv(0).map_err(crate::etcd::errors::mvcc).map(|(hash, _, _)| {
                pb::HashResponse { header: self.header(self.store.current_revision()), hash }.encode_raw(out);
            }),
            ShardRequest::Put(r) => {
                if let Some(e) = self.check_space(r.encoded_len()) {
                    return Outcome::Error(e);
                }
                return self.propose(op::PUT, &r, waiter);
            }
            ShardRequest::DeleteRange(r) => return self.propose(op::DELETE_RANGE, &r, waiter),
            ShardRequest::Txn(t) => {
                if kv::txn_has_put(&t) {
                    if let Some(e) = self.check_space(t.encoded_len()) {
                        return Outcome::Error(e);
                    }
                }
                return self.propose(op::TXN, &t, waiter);
            }
            ShardRequest::Compact(r) => return self.propose(op::COMPACT, &r, waiter),
            ShardRequest::Defragment => return self.defragment(waiter),
            ShardRequest::WatchSync(w) => {
                match waiter {
                    Waiter::Local(_) => self.local_feed.subscribed = true,
                    Waiter::Remote { ring, .. } => {
                        if self.feeds.len() <= ring {
                            self.feeds.resize_with(ring + 1, Feed::default);
                        }
                        self.feeds[ring].subscribed = true;
                    }
                }
                return Outcome::WatchSynced(Box::new(crate::watch::sync(&self.store, &ids, &w)));
            }
        };
        self.current.check(self.slow_limit, "read on the shard");
        match r {
            Ok(()) => Outcome::Encoded,
            Err(e) => {
                out.clear();
                Outcome::Error(e)
            }
        }
    }

    fn propose(&mut self, kind: u8, msg: &impl Message, waiter: Waiter) -> Outcome {
        if let Some(why) = &self.failed {
            return Outcome::Error(disk_failed(why));
        }
        if self.raft.commit_index().saturating_sub(self.raft.applied_index()) > UNAPPLIED_ENTRIES_MAX {
            return Outcome::Error(Status::new(Code::RESOURCE_EXHAUSTED, "etcdserver: too many requests"));
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut data = Vec::with_capacity(9 + msg.encoded_len());
        data.push(kind);
        data.extend_from_slice(&id.to_le_bytes());
        msg.encode_raw(&mut data);
        match self.raft.propose(data) {
            Ok(()) => {
                if let Waiter::Remote { ring, .. } = waiter {
                    self.track(ring, 1);
                }
                self.waiters.insert(id, (waiter, self.current));
                Outcome::Pending
            }
            Err(metastore_raft::RaftError::Dropped) => {
                Outcome::Error(Status::new(Code::UNAVAILABLE, "etcdserver: no leader"))
            }
            Err(e) => Outcome::Error(Status::new(Code::UNAVAILABLE, format!("etcdserver: {e}"))),
        }
    }

    /// etcd's quota: with NOSPACE active, or when this request would take dbSize over
    /// `--quota-backend-bytes` (which raises NOSPACE, through raft), puts fail.
    fn check_space(&mut self, request_bytes: usize) -> Option<Status> {
        if self.alarm_active(AlarmType::Nospace) {
            return Some(nospace());
        }
        let db = (DB_BASE_BYTES as u64) + self.log.borrow().disk_bytes();
        if db + request_bytes as u64 <= self.quota_bytes {
            return None;
        }
        tracing::warn!(db_size = db, quota = self.quota_bytes, "database space exceeded: raising the NOSPACE alarm");
        let a = pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: self.member.ids.member_id,
            alarm: AlarmType::Nospace as i32,
        };
        self.propose_unwaited(op::ALARM, &a);
        Some(nospace())
    }

    /// Proposes a write no client waits for (alarms, auto-compaction).
    fn propose_unwaited(&mut self, kind: u8, msg: &impl Message) {
        let id = self.next_id;
        self.next_id += 1;
        let mut data = vec![kind];
        data.extend_from_slice(&id.to_le_bytes());
        msg.encode_raw(&mut data);
        let _ = self.raft.propose(data);
    }

    /// The leader revokes expired leases, through raft (as a client's revoke would).
    pub fn expire_leases(&mut self, now: Instant) {
        if now.duration_since(self.last_expiry_check) < crate::lease::EXPIRY_CHECK || self.failed.is_some() {
            return;
        }
        self.last_expiry_check = now;
        for id in self.leases.expired(now, crate::lease::REVOKES_PER_CHECK) {
            self.counters.leases_expired += 1;
            tracing::debug!(lease = id, "lease expired: revoking");
            self.propose_unwaited(op::LEASE_REVOKE, &pb::LeaseRevokeRequest { id });
        }
    }

    /// Runs auto-compaction when it is due.
    pub fn auto_compact(&mut self, now: Instant) {
        let (current, compacted) = (self.store.current_revision(), self.store.compacted_revision());
        let Some(c) = &mut self.compactor else { return };
        if let Some(rev) = c.tick(now, current, compacted) {
            tracing::info!(revision = rev, "auto-compaction");
            self.propose_unwaited(op::COMPACT, &pb::CompactionRequest { revision: rev, physical: false });
        }
    }

    fn alarm_active(&self, t: AlarmType) -> bool {
        self.alarms.iter().any(|(_, a)| *a == t as i32)
    }

    /// Maintenance.Alarm: GET answers at once; ACTIVATE and DEACTIVATE go through raft.
    fn alarm(&mut self, a: pb::AlarmRequest, waiter: Waiter, out: &mut Vec<u8>) -> Outcome {
        use pb::alarm_request::AlarmAction;
        match AlarmAction::try_from(a.action) {
            Ok(AlarmAction::Get) => {
                let alarms = self
                    .alarms
                    .iter()
                    .filter(|(_, t)| a.alarm == AlarmType::None as i32 || *t == a.alarm)
                    .map(|&(member_id, alarm)| pb::AlarmMember { member_id, alarm })
                    .collect();
                pb::AlarmResponse { header: self.header(self.store.current_revision()), alarms }.encode_raw(out);
                Outcome::Encoded
            }
            Ok(_) => self.propose(op::ALARM, &a, waiter),
            Err(_) => Outcome::Error(Status::new(Code::INVALID_ARGUMENT, "etcdserver: unknown alarm action")),
        }
    }

    fn apply_alarm(&mut self, a: &pb::AlarmRequest, out: &mut Vec<u8>) {
        use pb::alarm_request::AlarmAction;
        let mut changed = Vec::new();
        let key = (a.member_id, a.alarm);
        match AlarmAction::try_from(a.action) {
            Ok(AlarmAction::Activate) if a.alarm != AlarmType::None as i32 => {
                if self.alarms.insert(key) {
                    tracing::warn!(member = a.member_id, alarm = a.alarm, "alarm raised");
                }
                changed.push(key);
            }
            Ok(AlarmAction::Deactivate) if self.alarms.remove(&key) => {
                tracing::info!(member = a.member_id, alarm = a.alarm, "alarm disarmed");
                changed.push(key);
            }
            _ => {}
        }
        let alarms = changed.into_iter().map(|(member_id, alarm)| pb::AlarmMember { member_id, alarm }).collect();
        pb::AlarmResponse { header: self.header(self.store.current_revision()), alarms }.encode_raw(out);
    }

    fn track(&mut self, ring: usize, add: usize) {
        if self.outstanding.len() <= ring {
            self.outstanding.resize(ring + 1, 0);
        }
        self.outstanding[ring] += add;
    }

    fn answered(&mut self, w: Waiter) {
        if let Waiter::Remote { ring, .. } = w {
            if let Some(n) = self.outstanding.get_mut(ring) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Moves raft forward: appends what it wants persisted to the log, applies what it has
    /// committed (answering their waiters into `replies`), and hands back the next flush if
    /// none is in flight.
    pub fn drive(&mut self, replies: &mut Replies) -> Option<Flush<D::File>> {
        if self.failed.is_some() {
            return None;
        }
        self.run_abandons(replies);
        if let Err(e) = self.process_readies(replies) {
            self.fail(e, replies);
            return None;
        }
        self.publish();
        self.check_waiting(replies);
        if self.flushing_ready.is_some() {
            return None;
        }
        // What was appended lazily (history, a commit index) waits for the next batch that must
        // be synced, unless a checkpoint waits for the log to be written out.
        if !self.log.borrow().needs_sync() && !self.checkpoint_wanted() {
            return None;
        }
        let started = self.log.borrow_mut().start_flush();
        match started {
            Ok(Some(f)) => {
                self.flushing_ready = Some(self.raft.last_ready());
                if self.requests_since_flush == 0 && self.waiters.is_empty() {
                    // A batch of the server's own (a tick's, a checkpoint's): no evidence
                    // either way.
                    self.lone_flush = self.lone_batch;
                } else {
                    let lone = self.requests_since_flush <= 1 && self.waiters.len() <= 1;
                    self.lone_flush = lone && self.lone_batch;
                    self.lone_batch = lone;
                }
                self.requests_since_flush = 0;
                Some(f)
            }
            Ok(None) => None,
            Err(e) => {
                self.fail(e.to_string(), replies);
                None
            }
        }
    }

    /// Whether the batch [`Shard::drive`] just handed out is best synced inline, blocking this
    /// core for the sync, rather than through io_uring (whose workers run the fdatasync on
    /// another thread and wake this one: on the machines measured that hand-off costs more
    /// than the sync). True when this batch and the one before each served at most one
    /// request, and no other request came since the one before was handed out: a lone client
    /// writing one key after another, where there is nothing to serve meanwhile. Any other
    /// traffic (more writers, whose next requests trickle in after a batch is answered, a read,
    /// a keep-alive) keeps the sync asynchronous, so that the core serves it while the batch
    /// syncs.
    pub fn sync_inline(&self) -> bool {
        self.lone_flush
    }

    /// Recovery's last step, before anything is served. The log may hold entries past its
    /// durable commit index: a batch is applied and answered once it is durable, and the hard
    /// state carrying its commit index goes out with the next batch, which a crash can stop.
    /// Those writes may have been acknowledged; this term's first entry commits them again once
    /// it is durable. Until they are applied the store is behind what clients were told, so no
    /// read may be served (and no new proposal may reuse a replayed entry's id) before this
    /// returns — as etcd, whose linearizable reads wait for this term's first entry.
    pub async fn finish_recovery(&mut self) -> Result<(), String> {
        let target = self.raft.last_index();
        let mut replies = Replies::default();
        while self.raft.applied_index() < target {
            if let Some(flush) = self.drive(&mut replies) {
                let done = flush.run().await;
                self.flush_done(done, &mut replies);
            } else if let Some(why) = &self.failed {
                return Err(why.clone());
            } else if self.raft.applied_index() >= target {
                // Applied in that drive, with nothing that needed a sync.
                break;
            } else if !self.raft.has_ready() {
                return Err(format!(
                    "recovery stalled: applied {} of the {target} entries in the log",
                    self.raft.applied_index()
                ));
            }
        }
        debug_assert!(replies.is_empty(), "no one waits for a replayed entry");
        tracing::info!(
            applied = self.raft.applied_index(),
            revision = self.store.current_revision(),
            "applied every recovered entry"
        );
        Ok(())
    }

    /// Handles raft's readies until it has none: appends what it wants persisted, applies what
    /// it has committed.
    fn process_readies(&mut self, replies: &mut Replies) -> Result<(), String> {
        loop {
            let mut committed = std::mem::take(&mut self.committed);
            let r = self.raft.process_ready(&mut self.log.borrow_mut(), &mut committed);
            for e in committed.drain(..) {
                self.apply(&e, replies);
                self.raft.advance_applied(e.index);
            }
            self.committed = committed;
            match r {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => return Err(format!("{e}")),
            }
        }
    }

    /// A flush completed (or failed).
    pub fn flush_done(&mut self, done: Flushed, replies: &mut Replies) {
        let ready = self.flushing_ready.take().unwrap_or(0);
        let r = self.log.borrow_mut().finish_flush(done);
        match r {
            Ok(durable) => {
                self.store.history_mut().on_durable(durable);
                self.raft.on_persisted(ready);
            }
            Err(e) => self.fail(e.to_string(), replies),
        }
    }

    pub fn is_flushing(&self) -> bool {
        self.flushing_ready.is_some()
    }

    /// The disk failed: nothing since the last good sync is known to be durable. Every waiting
    /// write is answered with an error (it may or may not survive a restart), and writes are
    /// refused from now on.
    fn fail(&mut self, why: String, replies: &mut Replies) {
        tracing::error!(error = %why, "the data disk failed: refusing writes until the server restarts");
        self.failed = Some(why.clone());
        let steps = std::mem::take(&mut self.steps).into_values().map(|s| s.waiter());
        let waiting = std::mem::take(&mut self.waiting).into_iter().map(|w| w.waiter());
        self.abandons.clear();
        self.abandoned.clear();
        let waiters: Vec<Waiter> =
            std::mem::take(&mut self.waiters).into_values().map(|(w, _)| w).chain(steps).chain(waiting).collect();
        for w in waiters {
            self.answered(w);
            replies.push(w, ShardReply::Error(disk_failed(&why)));
        }
    }

    /// Applies one committed entry: the only place the MVCC store changes.
    fn apply(&mut self, e: &Entry, replies: &mut Replies) {
        let Some((&kind, rest)) = e.data.split_first() else { return };
        let Some((id, msg)) = rest.split_first_chunk::<8>() else { return };
        let id = u64::from_le_bytes(*id);
        let ids = self.ids();
        let mut out = Vec::with_capacity(REPLY_BYTES_INITIAL);
        let rev_before = self.store.current_revision();
        match kind {
            op::PUT => self.counters.puts += 1,
            op::DELETE_RANGE => self.counters.deletes += 1,
            op::TXN => self.counters.txns += 1,
            _ => {}
        }
        let corrupt = self.alarm_active(AlarmType::Corrupt);
        let capped = self.alarm_active(AlarmType::Nospace);
        let r = match kind {
            op::PUT | op::DELETE_RANGE | op::TXN | op::COMPACT if corrupt => Err(corrupt_cluster()),
            op::PUT if capped => Err(nospace()),
            op::TXN if capped && pb::TxnRequest::decode(msg).is_ok_and(|t| kv::txn_has_put(&t)) => Err(nospace()),
            op::ALARM => pb::AlarmRequest::decode(msg).map_err(decode_error).map(|a| self.apply_alarm(&a, &mut out)),
            op::PUT => pb::PutRequest::decode(msg)
                .map_err(decode_error)
                .and_then(|r| kv::put(&mut self.store, &ids, &self.leases, &r, &mut out)),
            op::DELETE_RANGE => pb::DeleteRangeRequest::decode(msg)
                .map_err(decode_error)
                .and_then(|r| kv::delete_range(&mut self.store, &ids, &r, &mut out)),
            op::TXN => pb::TxnRequest::decode(msg)
                .map_err(decode_error)
                .and_then(|r| kv::txn(&mut self.store, &ids, &self.leases, &r, &mut out)),
            op::LEASE_GRANT => pb::LeaseGrantRequest::decode(msg).map_err(decode_error).and_then(|r| {
                if !self.leases.grant(r.id, r.ttl, Instant::now()) {
                    return Err(crate::etcd::errors::lease_exists());
                }
                self.counters.leases_granted += 1;
                let header = self.header(self.store.current_revision());
                pb::LeaseGrantResponse { header, id: r.id, ttl: r.ttl, error: String::new() }.encode_raw(&mut out);
                Ok(())
            }),
            op::LEASE_REVOKE => pb::LeaseRevokeRequest::decode(msg).map_err(decode_error).and_then(|r| {
                let keys = self.leases.revoke(r.id).ok_or_else(crate::etcd::errors::lease_not_found)?;
                self.counters.leases_revoked += 1;
                if !keys.is_empty() {
                    // Every attached key goes in one revision.
                    let mut w = self.store.write();
                    for k in &keys {
                        w.delete_range(k, b"");
                    }
                }
                pb::LeaseRevokeResponse { header: self.header(self.store.current_revision()) }.encode_raw(&mut out);
                Ok(())
            }),
            op::COMPACT => {
                let r = pb::CompactionRequest::decode(msg)
                    .map_err(decode_error)
                    .and_then(|r| kv::compact(&mut self.store, &ids, &r, &mut out));
                if r.is_ok() {
                    // History shrank: reclaim its space at a checkpoint soon.
                    self.gc_wanted = true;
                    self.force_checkpoint = true;
                }
                r
            }
            _ => Err(Status::new(Code::INTERNAL, format!("unknown write kind {kind} in raft entry {}", e.index))),
        };
        if self.store.current_revision() != rev_before {
            self.leases.track(self.store.last_events());
        }
        if self.store.current_revision() != rev_before && self.watched() {
            if self.watch_events.is_empty() {
                self.watch_from = rev_before + 1;
            }
            self.watch_events.extend_from_slice(self.store.last_events());
        }
        if let Some(step) = self.steps.remove(&id) {
            self.writes_applied += 1;
            if let Some(i) = self.abandoned.iter().position(|&a| a == id) {
                self.abandoned.swap_remove(i);
                self.step_abandoned(step, r, &out, replies);
            } else {
                self.step_applied(step, r, &out, replies);
            }
            return;
        }
        // Entries replayed at start (or proposed before a restart) have no one waiting.
        if let Some((w, slow)) = self.waiters.remove(&id) {
            slow.check(self.slow_limit, "write: raft proposal, fsync, commit and apply");
            self.writes_applied += 1;
            self.answered(w);
            replies.push(
                w,
                match r {
                    Ok(()) => ShardReply::Encoded(out),
                    Err(s) => ShardReply::Error(s),
                },
            );
        }
    }

    /// A checkpoint is due (enough entries applied since the last one, or one was asked for;
    /// none being written; all history durable): its image, and the applied index it covers.
    fn checkpoint_wanted(&self) -> bool {
        !self.checkpointing
            && (self.force_checkpoint || self.raft.applied_index() >= self.last_checkpoint + self.snapshot_count)
    }

    pub fn checkpoint_due(&mut self) -> Option<(u64, Vec<u8>)> {
        let applied = self.raft.applied_index();
        if self.checkpointing
            || self.failed.is_some()
            || !self.checkpoint_wanted()
            || self.store.history().unflushed() > 0
            || self.log.borrow().pending_bytes() > 0
            || self.flushing_ready.is_some()
        {
            return None;
        }
        let raft = self.raft.checkpoint(applied).ok()?;
        let tail = self.log.borrow().tail();
        let replay_from = self.raft.replay_from(applied, tail);
        let sections = vec![
            (SECTION_RAFT, raft.encode()),
            (SECTION_ALARMS, encode_alarms(&self.alarms)),
            (SECTION_LEASES, self.leases.encode()),
        ];
        let meta = CheckpointMeta { applied_index: applied, replay_from, sections };
        self.checkpointing = true;
        self.force_checkpoint = false;
        self.checkpoint_replay_from = replay_from;
        Some((applied, engine::encode_checkpoint(&self.store, &meta)))
    }

    /// The checkpoint at `index` is durable (or failed to be written). Space held by segments
    /// it made unnecessary is reclaimed.
    pub fn checkpoint_done(&mut self, index: u64, r: std::io::Result<()>, replies: &mut Replies) {
        self.checkpointing = false;
        if let Err(e) = r {
            tracing::warn!(index, error = %e, "could not write a checkpoint; will retry");
            self.force_checkpoint = true;
            return;
        }
        self.last_checkpoint = index;
        self.replay_from = self.checkpoint_replay_from;
        let compacted = self.raft.compact(index);
        // Freeing what the checkpoint covers took the core up to 94 ms at 80,000 writes a
        // second: it is done on a thread of its own (or here, should no thread start).
        let _ = std::thread::Builder::new().name("metastore-free".into()).spawn(move || drop(compacted));
        tracing::info!(index, "checkpoint written");
        if let Err(e) = self.collect_segments() {
            self.fail(e, replies);
            return;
        }
        match self.defrag.phase {
            1 => {
                // New writes go to a new segment; the next checkpoint's replay starts there, so
                // that the old head too is behind replay. (A batch being gathered keeps the head
                // open: try again after the next checkpoint.)
                if self.log.borrow_mut().seal_head() {
                    self.defrag.phase = 2;
                }
                self.force_checkpoint = true;
            }
            2 => {
                // Every sealed segment is behind replay now: copy their live history out. They
                // are removed once the next checkpoint is durable.
                if let Err(e) = self.relocate(true) {
                    self.fail(e, replies);
                    return;
                }
                self.defrag.phase = 3;
                self.force_checkpoint = true;
            }
            3 => {
                self.defrag.phase = 0;
                let header = Header::full(&self.ids(), self.store.current_revision());
                for w in std::mem::take(&mut self.defrag.waiters) {
                    let mut out = Vec::new();
                    header.write(&mut out, 1);
                    self.answered(w);
                    replies.push(w, ShardReply::Encoded(out));
                }
            }
            _ => {
                if std::mem::take(&mut self.gc_wanted) {
                    if let Err(e) = self.relocate(false) {
                        self.fail(e, replies);
                        return;
                    }
                    if !self.relocated.is_empty() {
                        self.force_checkpoint = true;
                    }
                }
            }
        }
    }

    /// Removes the segments no durable state needs: before replay's start and with no live
    /// history, or relocated before the last checkpoint.
    fn collect_segments(&mut self) -> Result<(), String> {
        let live = self.store.history().live_bytes().clone();
        let mut log = self.log.borrow_mut();
        let head = log.head();
        let relocated = std::mem::take(&mut self.relocated);
        for (seq, _) in log.segments() {
            if seq >= self.replay_from.segment || seq == head {
                continue;
            }
            if relocated.contains(&seq) || live.get(&seq).copied().unwrap_or(0) == 0 {
                log.remove_segment(seq).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Copies the live history of sealed segments behind replay to the head: all of them with
    /// dead records (`all`), or those less than half live. They are removed after the next
    /// checkpoint.
    fn relocate(&mut self, all: bool) -> Result<(), String> {
        let live = self.store.history().live_bytes().clone();
        let segments = self.log.borrow().segments();
        let head = self.log.borrow().head();
        for (seq, end) in segments {
            if seq >= self.replay_from.segment || seq == head {
                continue;
            }
            let l = live.get(&seq).copied().unwrap_or(0);
            if l == 0 || (!all && l * 2 >= end) || (all && l + 256 >= end) {
                continue;
            }
            self.store.history_mut().relocate(seq).map_err(|e| format!("relocating segment {seq}: {e}"))?;
            self.relocated.push(seq);
        }
        Ok(())
    }

    fn watched(&self) -> bool {
        self.local_feed.subscribed || self.feeds.iter().any(|f| f.subscribed)
    }

    /// Makes this round's changes one batch, queued for every subscribed core.
    fn publish(&mut self) {
        if self.watch_events.is_empty() {
            return;
        }
        let batch = Arc::new(EventBatch {
            ids: self.ids(),
            from_rev: self.watch_from,
            to_rev: self.store.current_revision(),
            events: std::mem::take(&mut self.watch_events),
        });
        for f in std::iter::once(&mut self.local_feed).chain(self.feeds.iter_mut()) {
            if !f.subscribed {
                continue;
            }
            if f.queue.len() >= FEED_BATCHES_MAX {
                f.queue.clear();
                f.lagged_upto = Some(batch.to_rev);
            } else {
                f.queue.push_back(batch.clone());
            }
        }
    }

    /// The batches for this core's own watchers.
    pub fn take_local_batches(&mut self) -> Vec<Arc<EventBatch>> {
        self.local_feed.queue.drain(..).collect()
    }

    /// Whether the core behind ring `ring` has published changes waiting.
    pub fn has_published(&self, ring: usize) -> bool {
        self.feeds.get(ring).is_some_and(|f| f.lagged_upto.is_some() || !f.queue.is_empty())
    }

    /// The next item for the core behind ring `ring`: a lag notice first, then batches.
    pub fn next_published(&mut self, ring: usize) -> Option<ShardReply> {
        let f = self.feeds.get_mut(ring)?;
        if let Some(upto) = f.lagged_upto.take() {
            return Some(ShardReply::WatchLagged(upto));
        }
        f.queue.pop_front().map(ShardReply::WatchEvents)
    }

    /// Maintenance.Defragment: answered when the space is reclaimed.
    fn defragment(&mut self, waiter: Waiter) -> Outcome {
        if let Some(why) = &self.failed {
            return Outcome::Error(disk_failed(why));
        }
        if let Waiter::Remote { ring, .. } = waiter {
            self.track(ring, 1);
        }
        self.defrag.waiters.push(waiter);
        if self.defrag.phase == 0 {
            self.defrag.phase = 1;
            self.force_checkpoint = true;
        }
        Outcome::Pending
    }

    pub fn checkpoint_dir(&self) -> &Path {
        &self.checkpoint_dir
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        let h = Header::full(&self.ids(), revision);
        Some(pb::ResponseHeader {
            cluster_id: h.cluster_id,
            member_id: h.member_id,
            revision: h.revision,
            raft_term: h.raft_term,
        })
    }

    /// Maintenance.Status as a one-member etcd reports it.
    pub fn status(&self) -> pb::StatusResponse {
        let log = self.log.borrow();
        let db = DB_BASE_BYTES + log.disk_bytes() as i64;
        let in_use = DB_BASE_BYTES + self.store.history_bytes() as i64;
        let mut errors: Vec<String> = self
            .alarms
            .iter()
            .map(|(m, a)| {
                let name = AlarmType::try_from(*a).map_or("UNKNOWN", |t| t.as_str_name());
                format!("memberID:{m} alarm:{name} ")
            })
            .collect();
        if let Some(why) = &self.failed {
            errors.push(format!("disk failure: {why}"));
        }
        pb::StatusResponse {
            header: self.header(self.store.current_revision()),
            version: VERSION.into(),
            db_size: db,
            leader: self.raft.leader_id(),
            raft_index: self.raft.commit_index(),
            raft_term: self.raft.term(),
            raft_applied_index: self.raft.applied_index(),
            errors,
            db_size_in_use: in_use.min(db),
            is_learner: false,
            ..Default::default()
        }
    }

    /// Cluster.MemberList: the single member (its header carries revision 0, as etcd's does).
    pub fn member_list(&self) -> pb::MemberListResponse {
        pb::MemberListResponse {
            header: self.header(0),
            members: vec![pb::Member {
                id: self.member.ids.member_id,
                name: self.member.name.clone(),
                peer_ur_ls: self.member.peer_urls.clone(),
                client_ur_ls: self.member.client_urls.clone(),
                is_learner: false,
            }],
        }
    }
}

fn nospace() -> Status {
    Status::new(Code::RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
}

fn corrupt_cluster() -> Status {
    Status::new(Code::DATA_LOSS, "etcdserver: corrupt cluster")
}

fn encode_alarms(alarms: &std::collections::BTreeSet<(u64, i32)>) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(alarms.len() as u32).to_le_bytes());
    for (m, a) in alarms {
        b.extend_from_slice(&m.to_le_bytes());
        b.extend_from_slice(&(*a as u32).to_le_bytes());
    }
    b
}

fn decode_alarms(p: &[u8]) -> Result<std::collections::BTreeSet<(u64, i32)>, String> {
    let mut r = engine::Reader::new(p);
    let n = r.u32()?;
    let mut set = std::collections::BTreeSet::new();
    for _ in 0..n {
        set.insert((r.u64()?, r.u32()? as i32));
    }
    Ok(set)
}

fn decode_error(e: prost::DecodeError) -> Status {
    Status::new(Code::INTERNAL, format!("etcdserver: cannot decode a raft entry: {e}"))
}

fn disk_failed(why: &str) -> Status {
    Status::new(
        Code::UNAVAILABLE,
        format!("etcdserver: the data disk failed, writes are refused until restart ({why})"),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use metastore_storage::fault::{now, FaultDisk};
    use std::time::Duration;

    pub(crate) fn member() -> MemberInfo {
        MemberInfo {
            ids: Ids { cluster_id: 1, member_id: 2, raft_term: 0 },
            name: "default".into(),
            peer_urls: vec!["http://localhost:2380".into()],
            client_urls: vec!["http://localhost:2379".into()],
        }
    }

    pub(crate) fn cfg() -> ShardConfig {
        ShardConfig {
            data_dir: PathBuf::from("/data"),
            quota_bytes: 2 << 30,
            auto_compaction: None,
            snapshot_count: 10,
            slow_request: std::time::Duration::from_millis(100),
            log: LogConfig { segment_bytes: 1 << 16 },
            tick_ms: 100,
            election_ticks: 10,
        }
    }

    /// Drives the shard until nothing is left to persist or apply.
    pub(crate) fn settle<D: Disk>(s: &mut Shard<D>, replies: &mut Replies) {
        while let Some(f) = s.drive(replies) {
            let done = now(f.run());
            s.flush_done(done, replies);
        }
    }

    fn shard(disk: &FaultDisk) -> Shard<FaultDisk> {
        let mut s = Shard::open(disk.clone(), &cfg(), member()).unwrap();
        settle(&mut s, &mut Replies::default());
        s
    }

    fn call(stream: u32) -> Waiter {
        Waiter::Local(CallRef { conn_slot: 0, conn_gen: 1, stream })
    }

    fn put(s: &mut Shard<FaultDisk>, k: &str, stream: u32) -> Vec<ReplyEnvelope> {
        let req = ShardRequest::Put(pb::PutRequest { key: k.into(), value: b"v".to_vec(), ..Default::default() });
        let mut out = Vec::new();
        assert_eq!(s.execute(req, None, Instant::now(), call(stream), &mut out), Outcome::Pending);
        let mut replies = Replies::default();
        settle(s, &mut replies);
        replies.local
    }

    /// A batch is synced inline only when a lone client writes one key after another: from the
    /// second lone batch in a row, and never while anything else goes on.
    #[test]
    fn a_lone_writer_is_synced_inline_and_other_traffic_is_not() {
        let disk = FaultDisk::new();
        let mut s = shard(&disk);
        // Executes `reqs`, then hands out the batch: whether it is to be synced inline.
        let mut stream = 0;
        let mut batch = |s: &mut Shard<FaultDisk>, puts: usize, reads: usize| -> bool {
            let mut out = Vec::new();
            for i in 0..reads {
                stream += 1;
                let r = pb::RangeRequest { key: format!("k{i}").into(), serializable: true, ..Default::default() };
                assert_eq!(
                    s.execute(ShardRequest::Range(r), None, Instant::now(), call(stream), &mut out),
                    Outcome::Encoded
                );
                out.clear();
            }
            for i in 0..puts {
                stream += 1;
                let req = ShardRequest::Put(pb::PutRequest { key: format!("k{i}").into(), ..Default::default() });
                assert_eq!(s.execute(req, None, Instant::now(), call(stream), &mut out), Outcome::Pending);
            }
            let mut replies = Replies::default();
            let f = s.drive(&mut replies).expect("a batch");
            let inline = s.sync_inline();
            s.flush_done(if inline { f.run_blocking() } else { now(f.run()) }, &mut replies);
            settle(s, &mut replies);
            assert_eq!(replies.local.len(), puts, "every put answered");
            inline
        };
        assert!(!batch(&mut s, 2, 0), "two writers");
        assert!(!batch(&mut s, 1, 0), "a lone put, but the batch before was not");
        assert!(batch(&mut s, 1, 0), "a lone writer");
        assert!(batch(&mut s, 1, 0), "still");
        assert!(!batch(&mut s, 2, 0), "two writers");
        assert!(!batch(&mut s, 1, 0), "lone again, but the batch before was not");
        assert!(batch(&mut s, 1, 0));
        assert!(!batch(&mut s, 1, 1), "a read came besides the put");
        assert!(!batch(&mut s, 1, 0));
        assert!(batch(&mut s, 1, 0));
        // Inline syncs are as durable as the others.
        let s2 = shard(&disk.crash_clean());
        assert_eq!(s2.store().current_revision(), s.store().current_revision());
    }

    /// A panic while handling one request answers it INTERNAL, is counted, and the shard goes
    /// on serving.
    #[test]
    fn a_panicking_request_is_answered_internal_and_the_shard_goes_on() {
        let disk = FaultDisk::new();
        let s = RefCell::new(shard(&disk));
        let shared = crate::reactor::Shared {
            cfg: crate::config::Config::default(),
            driver: "test",
            stats: vec![crate::reactor::CoreStats::default()],
            stop: crate::reactor::StopSignal::new(1),
            shard_stats: Default::default(),
        };
        let now = Instant::now();
        let mut out = Vec::new();
        let o = execute_guarded(&s, ShardRequest::TestPanic, None, now, call(1), &mut out, &shared);
        assert!(matches!(&o, Outcome::Error(st) if st.code == Code::INTERNAL), "{o:?}");
        assert!(out.is_empty());
        assert_eq!(shared.shard_stats.request_panics.load(std::sync::atomic::Ordering::Relaxed), 1);
        let health = ShardRequest::Health { service: String::new() };
        let o = execute_guarded(&s, health, None, now, call(2), &mut out, &shared);
        assert_eq!(o, Outcome::Health(Some(ServingStatus::Serving)), "the shard still serves");
        assert_eq!(put(&mut s.borrow_mut(), "after", 3).len(), 1, "and still writes");
    }

    #[test]
    fn health_status_and_unknown_names() {
        let disk = FaultDisk::new();
        let mut s = shard(&disk);
        let now = Instant::now();
        let mut out = Vec::new();
        let h = |service: &str| ShardRequest::Health { service: service.into() };
        assert_eq!(s.execute(h(""), None, now, call(1), &mut out), Outcome::Health(Some(ServingStatus::Serving)));
        assert_eq!(s.execute(h("nope"), None, now, call(1), &mut out), Outcome::Health(None));
        s.shutdown();
        assert_eq!(s.execute(h(""), None, now, call(1), &mut out), Outcome::Health(Some(ServingStatus::NotServing)));
    }

    #[test]
    fn expired_work_is_dropped_before_it_starts() {
        let disk = FaultDisk::new();
        let mut s = shard(&disk);
        let now = Instant::now();
        let past = now - Duration::from_millis(1);
        let mut out = Vec::new();
        let req = ShardRequest::Put(pb::PutRequest { key: b"k".to_vec(), ..Default::default() });
        assert_eq!(s.execute(req, Some(past), now, call(1), &mut out), Outcome::DeadlineExceeded);
        settle(&mut s, &mut Replies::default());
        assert_eq!(s.store().current_revision(), 1, "the expired put never ran");
    }

    #[test]
    fn writes_are_answered_after_their_batch_is_durable_and_survive_a_crash() {
        let disk = FaultDisk::new();
        let mut s = shard(&disk);
        let req = ShardRequest::Put(pb::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() });
        let mut out = Vec::new();
        assert_eq!(s.execute(req, None, Instant::now(), call(7), &mut out), Outcome::Pending);
        let mut replies = Replies::default();
        let f = s.drive(&mut replies).expect("a batch to flush");
        assert!(replies.is_empty(), "nothing is answered before the sync");
        assert_eq!(s.store().current_revision(), 1, "nothing is applied before the sync");
        s.flush_done(now(f.run()), &mut replies);
        settle(&mut s, &mut replies);
        assert_eq!(replies.local.len(), 1);
        assert_eq!(replies.local[0].call.stream, 7);
        let ShardReply::Encoded(b) = &replies.local[0].reply else { panic!("{:?}", replies.local[0].reply) };
        assert_eq!(pb::PutResponse::decode(&b[..]).unwrap().header.unwrap().revision, 2);
        for i in 0..30 {
            assert_eq!(put(&mut s, &format!("k{i}"), 9).len(), 1);
        }
        assert!(s.last_checkpoint == 0, "checkpoints are written by the core, not here");
        // Power cut: everything acknowledged is back.
        let after = disk.crash(&mut metastore_storage::fault::Rng::new(3));
        let s2 = shard(&after);
        assert_eq!(s2.store().current_revision(), 32);
        assert_eq!(s2.store().live_keys(), 31);
    }

    #[test]
    fn an_acknowledged_write_past_the_durable_commit_index_is_applied_before_serving() {
        let disk = FaultDisk::new();
        let mut s = shard(&disk);
        let req = ShardRequest::Put(pb::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() });
        let mut out = Vec::new();
        assert_eq!(s.execute(req, None, Instant::now(), call(7), &mut out), Outcome::Pending);
        let mut replies = Replies::default();
        let f = s.drive(&mut replies).expect("the put's batch");
        s.flush_done(now(f.run()), &mut replies);
        // Committed, applied and answered; the hard state with its commit index (and the
        // history record) wait, unsynced, for the next batch that must be synced: none comes
        // before the crash.
        let next = s.drive(&mut replies);
        assert_eq!(replies.local.len(), 1, "the put was acknowledged");
        assert!(next.is_none(), "nothing that must be durable is pending: no second sync");
        let mut s2 = Shard::open(disk.crash_clean(), &cfg(), member()).unwrap();
        assert_eq!(s2.store().current_revision(), 1, "open alone applies up to the durable commit index");
        now(s2.finish_recovery()).unwrap();
        assert_eq!(s2.store().current_revision(), 2, "the acknowledged put is there before anything is served");
        assert_eq!(s2.store().get(b"k").map(|r| r.value.to_vec()), Some(b"v".to_vec()));
    }

    #[test]
    fn checkpoints_bound_replay() {
        let disk = FaultDisk::new();
        let mut s = shard(&disk);
        for i in 0..25 {
            put(&mut s, &format!("k{i}"), 1);
        }
        let (index, image) = s.checkpoint_due().expect("due after snapshot_count entries");
        let dir = s.checkpoint_dir().to_path_buf();
        engine::write_checkpoint(&disk, &dir, index, &image).unwrap();
        s.checkpoint_done(index, Ok(()), &mut Replies::default());
        assert!(s.raft().entries_in_memory() < 5, "entries up to the checkpoint left memory");
        put(&mut s, "last", 1);
        let s2 = shard(&disk.crash_clean());
        assert_eq!(s2.store().current_revision(), s.store().current_revision());
        assert_eq!(s2.store().live_keys(), 26);
        // A second checkpoint replaces the first: one image of the live data on disk, not two.
        for i in 0..10 {
            put(&mut s, &format!("m{i}"), 1);
        }
        let (index, image) = s.checkpoint_due().expect("due again");
        engine::write_checkpoint(&disk, &dir, index, &image).unwrap();
        s.checkpoint_done(index, Ok(()), &mut Replies::default());
        let ckpts: Vec<PathBuf> = disk.files().into_iter().filter(|f| f.starts_with(&dir)).collect();
        assert_eq!(ckpts.len(), 1, "{ckpts:?}");
        // A damaged checkpoint stops the start, naming the file and the way out.
        let damaged = disk.crash_clean();
        assert!(damaged.flip_bit(&ckpts[0], 40, 3));
        let err = Shard::open(damaged, &cfg(), member()).err().expect("a damaged checkpoint must stop the start");
        assert!(err.contains(&ckpts[0].display().to_string()) && err.contains("snapshot restore"), "{err}");
    }

    #[test]
    fn a_failed_sync_refuses_writes_and_answers_the_waiting_ones() {
        let disk = FaultDisk::new();
        let mut s = shard(&disk);
        put(&mut s, "before", 1);
        let req = ShardRequest::Put(pb::PutRequest { key: b"lost".to_vec(), ..Default::default() });
        let mut out = Vec::new();
        assert_eq!(s.execute(req, None, Instant::now(), call(5), &mut out), Outcome::Pending);
        disk.fail_sync_after(1);
        let mut replies = Replies::default();
        settle(&mut s, &mut replies);
        assert!(s.is_failed());
        assert!(matches!(&replies.local[0].reply, ShardReply::Error(st) if st.message.contains("data disk failed")));
        let req = ShardRequest::Put(pb::PutRequest { key: b"x".to_vec(), ..Default::default() });
        assert!(matches!(s.execute(req, None, Instant::now(), call(6), &mut out), Outcome::Error(_)));
        let st = s.status();
        assert!(!st.errors.is_empty());
        // Restart: consistent, with the acknowledged write.
        let s2 = shard(&disk.crash_clean());
        assert_eq!(s2.store().get(b"before").map(|r| r.version), Some(1));
        assert!(!s2.is_failed());
    }

    #[test]
    fn status_and_member_list_describe_one_leader() {
        let disk = FaultDisk::new();
        let mut s = shard(&disk);
        put(&mut s, "k", 1);
        let st = s.status();
        assert_eq!(st.leader, 2);
        assert!(st.raft_index > 0 && st.raft_term > 0 && st.db_size > 0);
        assert_eq!(st.raft_applied_index, st.raft_index);
        assert_eq!(st.version, VERSION);
        let ml = s.member_list();
        assert_eq!(ml.header.unwrap().revision, 0);
        assert_eq!(ml.members.len(), 1);
        assert_eq!(ml.members[0].id, 2);
    }

    /// Settles the shard and writes every checkpoint it asks for, until it is idle.
    fn settle_all(s: &mut Shard<FaultDisk>, disk: &FaultDisk, replies: &mut Replies) {
        loop {
            settle(s, replies);
            let Some((index, image)) = s.checkpoint_due() else { break };
            let dir = s.checkpoint_dir().to_path_buf();
            let r = engine::write_checkpoint(disk, &dir, index, &image).map(|_| ());
            s.checkpoint_done(index, r, replies);
        }
    }

    #[test]
    fn compaction_and_defragment_give_the_space_back() {
        let disk = FaultDisk::new();
        let cfg = ShardConfig { log: LogConfig { segment_bytes: 8192 }, snapshot_count: 1_000_000, ..cfg() };
        let mut s = Shard::open(disk.clone(), &cfg, member()).unwrap();
        let mut replies = Replies::default();
        settle_all(&mut s, &disk, &mut replies);
        // Ten keys overwritten many times: lots of history, little live data.
        for i in 0..2000 {
            let req = ShardRequest::Put(pb::PutRequest {
                key: format!("key{}", i % 10).into_bytes(),
                value: vec![b'x'; 200],
                ..Default::default()
            });
            let mut out = Vec::new();
            s.execute(req, None, Instant::now(), call(1), &mut out);
            if i % 50 == 0 {
                settle_all(&mut s, &disk, &mut replies);
            }
        }
        settle_all(&mut s, &disk, &mut replies);
        let before = s.log.borrow().disk_bytes();
        let rev = s.store().current_revision();
        let mut out = Vec::new();
        let compact = ShardRequest::Compact(pb::CompactionRequest { revision: rev, physical: true });
        assert_eq!(s.execute(compact, None, Instant::now(), call(2), &mut out), Outcome::Pending);
        settle_all(&mut s, &disk, &mut replies);
        let after_compact = s.log.borrow().disk_bytes();
        assert_eq!(s.execute(ShardRequest::Defragment, None, Instant::now(), call(3), &mut out), Outcome::Pending);
        settle_all(&mut s, &disk, &mut replies);
        assert!(replies.local.iter().any(|r| r.call.stream == 3), "defragment answered");
        let after = s.log.borrow().disk_bytes();
        let live = s.store().history_bytes() as u64;
        eprintln!(
            "log bytes: {before} before, {after_compact} after compaction, {after} after defragment; live {live}"
        );
        assert!(after_compact < before / 2, "compaction alone reclaims the dead segments");
        assert!(after <= 2 * live + 2 * 8192, "at most about twice the live data after defragment");
        // The whole data dir: the log and the one checkpoint (an image of the live data).
        let total: usize = disk.files().iter().filter_map(|f| disk.file_len(f)).sum();
        assert!(total as u64 <= 3 * live + 4 * 8192, "{total} bytes in files for {live} live bytes");
        // Everything still reads back, and survives a restart.
        let want: Vec<_> =
            (0..10).map(|i| s.store().get(format!("key{i}").as_bytes()).map(|r| r.mod_revision)).collect();
        let s2 = Shard::open(disk.crash_clean(), &cfg, member()).unwrap();
        let got: Vec<_> =
            (0..10).map(|i| s2.store().get(format!("key{i}").as_bytes()).map(|r| r.mod_revision)).collect();
        assert_eq!(got, want);
        assert_eq!(s2.store().compacted_revision(), rev);
    }

    #[test]
    fn nospace_alarm_caps_writes_until_disarmed() {
        let disk = FaultDisk::new();
        let cfg = ShardConfig { quota_bytes: 100_000, log: LogConfig { segment_bytes: 8192 }, ..cfg() };
        let mut s = Shard::open(disk.clone(), &cfg, member()).unwrap();
        let mut replies = Replies::default();
        settle_all(&mut s, &disk, &mut replies);
        let put = |i: usize| {
            ShardRequest::Put(pb::PutRequest {
                key: format!("k{i}").into_bytes(),
                value: vec![1; 1000],
                ..Default::default()
            })
        };
        let mut refused = None;
        for i in 0..500 {
            let mut out = Vec::new();
            match s.execute(put(i), None, Instant::now(), call(1), &mut out) {
                Outcome::Pending => settle_all(&mut s, &disk, &mut replies),
                Outcome::Error(e) => {
                    refused = Some(e);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(refused, Some(nospace()), "the quota was reached");
        settle_all(&mut s, &disk, &mut replies);
        let get = pb::AlarmRequest { action: pb::alarm_request::AlarmAction::Get as i32, ..Default::default() };
        let mut out = Vec::new();
        assert_eq!(s.execute(ShardRequest::Alarm(get), None, Instant::now(), call(2), &mut out), Outcome::Encoded);
        let alarms = pb::AlarmResponse::decode(&out[..]).unwrap().alarms;
        assert_eq!(alarms, vec![pb::AlarmMember { member_id: 2, alarm: AlarmType::Nospace as i32 }]);
        assert!(s.status().errors.iter().any(|e| e.contains("alarm:NOSPACE")));
        // Reads and deletes still work; puts do not.
        let del = ShardRequest::DeleteRange(pb::DeleteRangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..Default::default()
        });
        let mut out = Vec::new();
        assert_eq!(s.execute(del, None, Instant::now(), call(3), &mut out), Outcome::Pending);
        settle_all(&mut s, &disk, &mut replies);
        assert!(matches!(replies.local.last().map(|r| &r.reply), Some(ShardReply::Encoded(_))));
        assert!(matches!(s.execute(put(9999), None, Instant::now(), call(4), &mut out), Outcome::Error(_)));
        // The alarm survives a restart.
        let s2 = Shard::open(disk.crash_clean(), &cfg, member()).unwrap();
        assert!(s2.alarm_active(AlarmType::Nospace));
        // Compaction and defragmentation give space back; disarming lifts the cap.
        let rev = s.store().current_revision();
        let mut out = Vec::new();
        s.execute(
            ShardRequest::Compact(pb::CompactionRequest { revision: rev, physical: true }),
            None,
            Instant::now(),
            call(5),
            &mut out,
        );
        s.execute(ShardRequest::Defragment, None, Instant::now(), call(6), &mut out);
        settle_all(&mut s, &disk, &mut replies);
        let disarm = pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Deactivate as i32,
            member_id: 2,
            alarm: AlarmType::Nospace as i32,
        };
        assert_eq!(s.execute(ShardRequest::Alarm(disarm), None, Instant::now(), call(7), &mut out), Outcome::Pending);
        settle_all(&mut s, &disk, &mut replies);
        assert!(!s.alarm_active(AlarmType::Nospace));
        let mut out = Vec::new();
        assert_eq!(s.execute(put(1), None, Instant::now(), call(8), &mut out), Outcome::Pending);
    }

    #[test]
    fn auto_compaction_by_revision_goes_through_raft() {
        let disk = FaultDisk::new();
        let cfg = ShardConfig { auto_compaction: Some(crate::compactor::Mode::Revision(5)), ..cfg() };
        let mut s = Shard::open(disk.clone(), &cfg, member()).unwrap();
        for i in 0..20 {
            put(&mut s, &format!("k{i}"), 1);
        }
        let current = s.store().current_revision();
        s.auto_compact(Instant::now());
        settle(&mut s, &mut Replies::default());
        assert_eq!(s.store().compacted_revision(), 0, "not due yet");
        s.auto_compact(Instant::now() + crate::compactor::REVISION_CHECK_INTERVAL + Duration::from_secs(1));
        settle(&mut s, &mut Replies::default());
        assert_eq!(s.store().compacted_revision(), current - 5);
        let s2 = Shard::open(disk.crash_clean(), &cfg, member()).unwrap();
        assert_eq!(s2.store().compacted_revision(), current - 5, "the compaction is durable");
    }

    fn hash_kv(s: &mut Shard<FaultDisk>, revision: i64) -> Result<u32, Status> {
        let mut out = Vec::new();
        match s.execute(ShardRequest::HashKv(pb::HashKvRequest { revision }), None, Instant::now(), call(1), &mut out) {
            Outcome::Encoded => Ok(pb::HashKvResponse::decode(&out[..]).unwrap().hash),
            Outcome::Error(e) => Err(e),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hash_kv_is_deterministic() {
        let (d1, d2) = (FaultDisk::new(), FaultDisk::new());
        let (mut a, mut b) = (shard(&d1), shard(&d2));
        for i in 0..20 {
            put(&mut a, &format!("k{}", i % 7), 1);
            put(&mut b, &format!("k{}", i % 7), 1);
        }
        let h = hash_kv(&mut a, 0).unwrap();
        assert_eq!(h, hash_kv(&mut a, 0).unwrap(), "repeatable");
        assert_eq!(h, hash_kv(&mut b, 0).unwrap(), "equal for equal histories");
        let at10 = hash_kv(&mut a, 10).unwrap();
        assert_ne!(at10, h);
        put(&mut a, "more", 1);
        assert_ne!(hash_kv(&mut a, 0).unwrap(), h);
        assert_eq!(hash_kv(&mut a, 10).unwrap(), at10, "a past revision keeps its hash");
        assert_eq!(hash_kv(&mut a, 1000), Err(crate::etcd::errors::future_rev()));
        // After a restart (history read back from the log) the hash is the same.
        let mut a2 = shard(&d1.crash_clean());
        assert_eq!(hash_kv(&mut a2, 10).unwrap(), at10);
    }
}
