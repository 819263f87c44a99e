//! etcd's Watch service, fanned out over the cores.
//!
//! The shard publishes each round's applied changes once, as one [`EventBatch`] shared by every
//! core that has watchers (a plain call on its own core, the reply ring for the others). Each
//! core's [`WatchHub`] owns the watchers of its connections — one owner per watch table, so
//! creates and cancels on many streams cannot race — matches the batch against them and writes
//! their responses straight into their connections' output.
//!
//! A watcher is *synced* when it has been sent every event of its range up to the revision
//! before its `next_rev`, and the batches that reach its core continue from there. Otherwise it
//! catches up by asking the shard for history ([`WatchSync`], at most [`SYNC_REVISIONS_MAX`]
//! revisions per answer) until it is synced. A watcher is unsynced when it is created (its
//! start revision may be in the past), when its core missed batches (the ring to it was full:
//! [`ShardReply::WatchLagged`]), and when its client does not read (its connection's output is
//! over [`BACKLOG_BYTES_MAX`]): it then waits, costing nothing, until the output drains below
//! [`BACKLOG_BYTES_RESUME`], and catches up from history. Neither the apply loop nor other
//! watchers ever wait for a slow one.
//!
//! Per watcher, an event is delivered only if its revision is at least `next_rev`, which then
//! moves past it: whatever order batches and history answers arrive in, nothing is sent twice,
//! and a batch that starts past `next_rev` (a gap) sends the watcher back to history.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use metastore_proto::etcdserverpb as pb;
use metastore_storage::mvcc::{Event, EventKind, History, MvccError, Store};

use crate::conn::Conn;
use crate::etcd::kv::{self, Header, Ids};
use crate::etcd::pbw;
use crate::reactor::{Core, Submit};
use crate::shard::{CallRef, Envelope, Outcome, ShardReply, ShardRequest};

/// Revisions of history one catch-up answer covers at most (etcd's watch batch).
pub const SYNC_REVISIONS_MAX: i64 = 1000;
/// A connection with more output than this (unsent or waiting for flow-control credit) gets no
/// more events: its watchers fall back to history.
pub const BACKLOG_BYTES_MAX: usize = 4 << 20;
/// ... and catch up once it is below this.
pub const BACKLOG_BYTES_RESUME: usize = 1 << 20;
/// How often a core looks for watchers to resume and progress notifications to send.
pub const TICK: Duration = Duration::from_millis(100);
/// The call of a reply that is not an answer (published changes).
pub const NO_CALL: CallRef = CallRef { conn_slot: u32::MAX, conn_gen: 0, stream: 0 };

/// Changes applied by the shard in one round, in revision order: every revision from `from_rev`
/// to `to_rev` that changed something.
#[derive(Debug, PartialEq, Eq)]
pub struct EventBatch {
    pub ids: Ids,
    pub from_rev: i64,
    pub to_rev: i64,
    pub events: Vec<Event>,
}

/// A watcher's request for history (and, with `create`, its registration's first step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSync {
    pub watch_id: i64,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// First revision wanted; 0: whatever comes after the current one.
    pub from_rev: i64,
    pub prev_kv: bool,
    pub create: bool,
}

/// The shard's answer to a [`WatchSync`].
#[derive(Debug, PartialEq, Eq)]
pub struct WatchSynced {
    pub watch_id: i64,
    pub create: bool,
    pub ids: Ids,
    pub current_rev: i64,
    /// Non-zero: the history asked for is compacted up to this revision.
    pub compact_rev: i64,
    /// The changes in range from the first revision asked for up to `next_rev`.
    pub events: Vec<Event>,
    /// Where the watcher continues: past the current revision once caught up.
    pub next_rev: i64,
}

/// Serves a [`WatchSync`] on the shard: at most [`SYNC_REVISIONS_MAX`] revisions of history.
pub fn sync<H: History>(store: &Store<H>, ids: &Ids, req: &WatchSync) -> WatchSynced {
    let current = store.current_revision();
    // etcd 3.4 compares a negative start revision with its compaction mark (-1 before any
    // compaction): below it, the watch is cancelled as compacted; -1 itself, before any
    // compaction, reads no history (the revision encodes as a huge key) and watches from now.
    let first = store.first_revision();
    if req.from_rev < first && first < 0 {
        return WatchSynced {
            watch_id: req.watch_id,
            create: req.create,
            ids: *ids,
            current_rev: current,
            compact_rev: first,
            events: Vec::new(),
            next_rev: 0,
        };
    }
    let from = if req.from_rev == 0 || (req.from_rev < 0 && first < 0) { current + 1 } else { req.from_rev };
    let mut out = WatchSynced {
        watch_id: req.watch_id,
        create: req.create,
        ids: *ids,
        current_rev: current,
        compact_rev: 0,
        events: Vec::new(),
        next_rev: from,
    };
    let compacted = store.compacted_revision();
    if from < compacted {
        out.compact_rev = compacted;
        return out;
    }
    if from > current {
        return out;
    }
    let until = from.saturating_add(SYNC_REVISIONS_MAX).min(current + 1);
    match store.events_between(&req.key, &req.range_end, from, until, req.prev_kv) {
        Ok(events) => {
            out.events = events;
            out.next_rev = until;
        }
        // Compacted meanwhile (or history unreadable): the watcher cannot be served.
        Err(MvccError::Compacted) => out.compact_rev = store.compacted_revision().max(1),
        Err(e) => {
            tracing::error!(error = %e, "watch: cannot read history");
            out.compact_rev = store.compacted_revision().max(1);
        }
    }
    out
}

// ----- the per-core hub -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its create is on its way to the shard: no response has been sent yet.
    Creating,
    /// A history request is in flight.
    Fetching,
    /// Needs history from `next_rev` (queued for a fetch).
    Queued,
    /// Its connection is backed up: waits until the output drains, then needs history.
    Slow,
    /// Gets the batches.
    Synced,
}

struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    next_rev: i64,
    state: State,
    /// When this watcher was last sent something (progress notifications go to idle ones).
    last_sent: Instant,
}

impl Watcher {
    fn wants(&self, e: &Event) -> bool {
        let kind_ok = match e.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        };
        kind_ok && metastore_storage::mvcc::KeyRange::new(&self.key, &self.range_end).contains(&e.kv.key)
    }
}

#[derive(Default)]
struct StreamState {
    /// The next automatically assigned watch ID (IDs are per stream, from 0).
    next_id: i64,
    ids: Vec<i64>,
}

/// One core's watchers, keyed by their stream and watch ID.
pub struct WatchHub {
    watchers: HashMap<(CallRef, i64), Watcher>,
    streams: HashMap<CallRef, StreamState>,
    /// Watchers waiting for a history request to be sent, in order.
    fetches: VecDeque<(CallRef, i64)>,
    /// The newest revision this core has seen applied (by a batch or a history answer): every
    /// synced watcher here has been sent all its events up to it.
    known_rev: i64,
    /// The revision up to which this core has received every batch, in order (0: none yet).
    contiguous: i64,
    /// Single-key watchers by key, and the range watchers: who a batch's events can concern.
    by_key: HashMap<Vec<u8>, Vec<(CallRef, i64)>>,
    ranged: Vec<(CallRef, i64)>,
    ids: Ids,
    /// `--max-request-bytes` + gRPC overhead: above this a response may be fragmented.
    fragment_bytes: usize,
    progress_interval: Duration,
    last_progress: Instant,
    /// Where the watcher count is published (`etcd_debugging_mvcc_watcher_total`).
    gauge: Option<(std::sync::Arc<crate::reactor::Shared>, usize)>,
}

/// A decoded WatchRequest, as the connection hands it over.
pub enum WatchCall {
    Create(pb::WatchCreateRequest),
    Cancel(i64),
    Progress,
}

impl WatchHub {
    pub fn new(
        fragment_bytes: usize,
        progress_interval: Duration,
        gauge: Option<(std::sync::Arc<crate::reactor::Shared>, usize)>,
    ) -> Self {
        Self {
            watchers: HashMap::new(),
            streams: HashMap::new(),
            fetches: VecDeque::new(),
            known_rev: 0,
            contiguous: 0,
            by_key: HashMap::new(),
            ranged: Vec::new(),
            ids: Ids { cluster_id: 0, member_id: 0, raft_term: 0 },
            fragment_bytes,
            progress_interval,
            last_progress: Instant::now(),
            gauge,
        }
    }

    fn counted(&self) {
        if let Some((shared, core)) = &self.gauge {
            shared.stats[*core].watchers.store(self.watchers.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn watchers(&self) -> usize {
        self.watchers.len()
    }

    pub fn has_fetches(&self) -> bool {
        !self.fetches.is_empty()
    }

    /// A message on a Watch stream. Responses that need no history go straight into `grpc`;
    /// a create is queued for the shard (the caller wakes the hub's task).
    pub fn request(&mut self, call: CallRef, req: WatchCall, current_rev: i64, out: &mut dyn FnMut(&[u8])) {
        match req {
            WatchCall::Create(c) => self.create(call, c, current_rev, out),
            WatchCall::Cancel(id) => {
                // A watcher canceled by a compaction keeps its ID until the client cancels it,
                // as in etcd's watchStream: that cancel is answered too.
                let known = self.watchers.contains_key(&(call, id))
                    || self.streams.get(&call).is_some_and(|s| s.ids.contains(&id));
                if known {
                    self.remove(call, id);
                    let mut b = Vec::new();
                    // The current revision, as etcd: no event of this watcher follows, so it
                    // need not wait for what this core has delivered (unlike a progress answer).
                    let rev = current_rev.max(self.known_rev);
                    encode_control(&mut b, &Header::full(&self.ids, rev), id, false, true, 0, "");
                    out(&b);
                }
                // An unknown ID gets no answer (etcd 3.4 and 3.5).
            }
            WatchCall::Progress => {
                // etcd 3.4 answers every progress request with the current revision; here it is
                // the newest revision whose events this core has delivered, so that no event at
                // or below it can follow.
                let mut b = Vec::new();
                encode_control(&mut b, &Header::full(&self.ids, self.rev_or(current_rev)), -1, false, false, 0, "");
                out(&b);
            }
        }
    }

    fn rev_or(&self, current_rev: i64) -> i64 {
        if self.known_rev > 0 {
            self.known_rev
        } else {
            current_rev
        }
    }

    fn create(&mut self, call: CallRef, c: pb::WatchCreateRequest, current_rev: i64, out: &mut dyn FnMut(&[u8])) {
        let mut key = c.key;
        if key.is_empty() {
            key = vec![0];
        }
        let mut range_end = c.range_end;
        // Refusals carry the current revision, as etcd's (no event follows them).
        let reject = |hub: &Self, reason: &str, out: &mut dyn FnMut(&[u8])| {
            let mut b = Vec::new();
            encode_control(&mut b, &Header::full(&hub.ids, current_rev.max(hub.known_rev)), -1, true, true, 0, reason);
            out(&b);
        };
        if range_end == [0] {
            range_end.clear();
            range_end.push(0);
        } else if !range_end.is_empty() && range_end <= key {
            return reject(self, "mvcc: watcher range is empty", out);
        }
        let stream = self.streams.entry(call).or_default();
        let id = if c.watch_id == 0 {
            while stream.ids.contains(&stream.next_id) {
                stream.next_id += 1;
            }
            let id = stream.next_id;
            stream.next_id += 1;
            id
        } else if stream.ids.contains(&c.watch_id) {
            return reject(self, "mvcc: duplicate watch ID provided on the WatchStream", out);
        } else {
            c.watch_id
        };
        stream.ids.push(id);
        let filters = |f: pb::watch_create_request::FilterType| c.filters.contains(&(f as i32));
        let w = Watcher {
            key,
            range_end,
            prev_kv: c.prev_kv,
            no_put: filters(pb::watch_create_request::FilterType::Noput),
            no_delete: filters(pb::watch_create_request::FilterType::Nodelete),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            next_rev: c.start_revision,
            state: State::Creating,
            last_sent: Instant::now(),
        };
        if w.range_end.is_empty() {
            self.by_key.entry(w.key.clone()).or_default().push((call, id));
        } else {
            self.ranged.push((call, id));
        }
        self.watchers.insert((call, id), w);
        self.counted();
        self.fetches.push_back((call, id));
    }

    /// The next history request to send to the shard.
    pub fn next_fetch(&mut self) -> Option<Envelope> {
        while let Some((call, id)) = self.fetches.pop_front() {
            let Some(w) = self.watchers.get_mut(&(call, id)) else { continue };
            let create = w.state == State::Creating;
            if !create && w.state != State::Queued {
                continue;
            }
            if !create {
                w.state = State::Fetching;
            }
            let req = WatchSync {
                watch_id: id,
                key: w.key.clone(),
                range_end: w.range_end.clone(),
                from_rev: w.next_rev,
                prev_kv: w.prev_kv,
                create,
            };
            return Some(Envelope { call, deadline: None, req: ShardRequest::WatchSync(Box::new(req)) });
        }
        None
    }

    /// Puts back a request the ring had no room for (it goes first next time).
    pub fn unfetch(&mut self, env: &Envelope) {
        if let ShardRequest::WatchSync(s) = &env.req {
            if let Some(w) = self.watchers.get_mut(&(env.call, s.watch_id)) {
                if w.state == State::Fetching {
                    w.state = State::Queued;
                }
                self.fetches.push_front((env.call, s.watch_id));
            }
        }
    }

    /// The shard's answer to a history request, for a watcher of the connection whose output
    /// `out` writes to (`backlog`: that connection's output bytes now).
    pub fn synced(&mut self, call: CallRef, r: WatchSynced, backlog: usize, out: &mut dyn FnMut(&[u8])) {
        self.ids = r.ids;
        self.known_rev = self.known_rev.max(r.current_rev);
        let Some(w) = self.watchers.get_mut(&(call, r.watch_id)) else { return };
        let header = Header::full(&r.ids, r.current_rev);
        let mut b = Vec::new();
        if r.create {
            encode_control(&mut b, &header, r.watch_id, true, false, 0, "");
            out(&b);
            b.clear();
        }
        if r.compact_rev != 0 {
            // etcd's compaction notice carries revision 0 in its header.
            encode_control(&mut b, &Header::full(&r.ids, 0), r.watch_id, false, true, r.compact_rev, "");
            out(&b);
            // The watcher goes, its ID stays taken until the client cancels it (etcd keeps it in
            // its watchStream: a create reusing it is a duplicate).
            self.forget(call, r.watch_id);
            self.counted();
            return;
        }
        let events: Vec<&Event> =
            r.events.iter().filter(|e| e.kv.mod_revision >= w.next_rev.max(1) && w.wants(e)).collect();
        if !events.is_empty() {
            encode_events(&mut b, &header, r.watch_id, &events, w.prev_kv, w.fragment, self.fragment_bytes, out);
            w.last_sent = Instant::now();
        }
        w.next_rev = r.next_rev;
        if backlog > BACKLOG_BYTES_MAX {
            w.state = State::Slow;
        } else if r.next_rev <= r.current_rev || r.next_rev <= self.contiguous {
            // More history to come (or batches past this answer already went by here).
            w.state = State::Queued;
            self.fetches.push_back((call, r.watch_id));
        } else {
            w.state = State::Synced;
        }
    }

    /// Where a synced watcher really is: batches with none of its events move it on without
    /// touching it, so its position is the later of its own and the core's.
    fn position(w: &Watcher, contiguous: i64) -> i64 {
        w.next_rev.max(contiguous + 1)
    }

    /// Synced watchers positioned before `rev` go back to history from where they are.
    fn unsync_before(&mut self, rev: i64) {
        let c = self.contiguous;
        for (k, w) in self.watchers.iter_mut() {
            if w.state == State::Synced && Self::position(w, c) < rev {
                w.next_rev = Self::position(w, c);
                w.state = State::Queued;
                self.fetches.push_back(*k);
            }
        }
    }

    /// The shard missed sending this core the batches up to `upto`: the watchers that needed
    /// them catch up from history.
    pub fn lagged(&mut self, upto: i64) {
        self.unsync_before(upto + 1);
        self.contiguous = self.contiguous.max(upto);
    }

    /// A batch of applied changes: each synced watcher gets the events of its range. Only the
    /// watchers an event can concern are looked at (an index by key for single-key watchers,
    /// the range watchers scanned), so a batch costs its events times their matches, not the
    /// number of watchers.
    pub fn batch(&mut self, core: &Core, b: &EventBatch) {
        self.ids = b.ids;
        self.known_rev = self.known_rev.max(b.to_rev);
        if self.watchers.is_empty() {
            self.contiguous = self.contiguous.max(b.to_rev);
            return;
        }
        if b.from_rev > self.contiguous + 1 {
            // Revisions before this batch never reached this core (the first batch, or after a
            // lag): whoever is positioned before it catches up from history.
            self.unsync_before(b.from_rev);
        }
        let before = self.contiguous;
        self.contiguous = self.contiguous.max(b.to_rev);
        // (watcher, event index) pairs, then grouped by watcher; sorted, so that each
        // connection is looked up once and each watcher's events keep their order.
        let mut hits: Vec<((CallRef, i64), usize)> = Vec::new();
        for (i, e) in b.events.iter().enumerate() {
            if let Some(ws) = self.by_key.get(&e.kv.key[..]) {
                hits.extend(ws.iter().map(|k| (*k, i)));
            }
            for k in &self.ranged {
                if self.watchers.get(k).is_some_and(|w| w.wants(e)) {
                    hits.push((*k, i));
                }
            }
        }
        if hits.is_empty() {
            return;
        }
        hits.sort_unstable();
        let header = Header::full(&b.ids, b.to_rev);
        let mut conn: Option<(u32, u32, Option<Rc<Conn>>)> = None;
        let mut buf = Vec::new();
        let mut picked: Vec<&Event> = Vec::new();
        let now = Instant::now();
        let mut at = 0;
        while at < hits.len() {
            let k = hits[at].0;
            let end = at + hits[at..].iter().take_while(|(w, _)| *w == k).count();
            let group = &hits[at..end];
            at = end;
            let Some(w) = self.watchers.get_mut(&k) else { continue };
            if w.state != State::Synced {
                continue;
            }
            let from = Self::position(w, before);
            picked.clear();
            picked.extend(group.iter().map(|(_, i)| &b.events[*i]).filter(|e| e.kv.mod_revision >= from && w.wants(e)));
            if picked.is_empty() {
                continue;
            }
            if conn.as_ref().is_none_or(|(s, g, _)| (*s, *g) != (k.0.conn_slot, k.0.conn_gen)) {
                conn = Some((k.0.conn_slot, k.0.conn_gen, core.conn(k.0.conn_slot, k.0.conn_gen)));
            }
            let Some((_, _, Some(c))) = &conn else { continue };
            if c.output_backlog() > BACKLOG_BYTES_MAX {
                // A client that does not read: this watcher waits and then catches up from
                // history; nothing more is buffered for it.
                w.state = State::Slow;
                w.next_rev = from;
                continue;
            }
            w.next_rev = b.to_rev + 1;
            buf.clear();
            let (prev_kv, fragment, bytes) = (w.prev_kv, w.fragment, self.fragment_bytes);
            w.last_sent = now;
            c.send_messages(k.0.stream, |out| {
                encode_events(&mut buf, &header, k.1, &picked, prev_kv, fragment, bytes, out)
            });
        }
    }

    /// Periodic work: slow watchers whose connection drained go back to history; idle synced
    /// watchers that asked for progress notifications get one every interval.
    pub fn tick(&mut self, core: &Core, now: Instant) {
        for (k, w) in self.watchers.iter_mut() {
            if w.state == State::Slow
                && core.conn(k.0.conn_slot, k.0.conn_gen).is_some_and(|c| c.output_backlog() < BACKLOG_BYTES_RESUME)
            {
                w.state = State::Queued;
                self.fetches.push_back(*k);
            }
        }
        if now.duration_since(self.last_progress) < self.progress_interval.min(Duration::from_secs(1)) {
            return;
        }
        self.last_progress = now;
        let header = Header::full(&self.ids, self.known_rev);
        let mut b = Vec::new();
        for (k, w) in self.watchers.iter_mut() {
            if !w.progress_notify
                || w.state != State::Synced
                || now.duration_since(w.last_sent) < self.progress_interval
            {
                continue;
            }
            let Some(c) = core.conn(k.0.conn_slot, k.0.conn_gen) else { continue };
            b.clear();
            encode_control(&mut b, &header, k.1, false, false, 0, "");
            c.send_messages(k.0.stream, |out| out(&b));
            w.last_sent = now;
        }
    }

    /// Drops a watcher from the table and the index.
    fn forget(&mut self, call: CallRef, id: i64) {
        let Some(w) = self.watchers.remove(&(call, id)) else { return };
        if w.range_end.is_empty() {
            if let Some(ws) = self.by_key.get_mut(&w.key) {
                ws.retain(|k| *k != (call, id));
                if ws.is_empty() {
                    self.by_key.remove(&w.key);
                }
            }
        } else {
            self.ranged.retain(|k| *k != (call, id));
        }
    }

    fn remove(&mut self, call: CallRef, id: i64) {
        self.forget(call, id);
        if let Some(s) = self.streams.get_mut(&call) {
            s.ids.retain(|i| *i != id);
        }
        self.counted();
    }

    /// A Watch stream ended: its watchers go.
    pub fn remove_stream(&mut self, call: CallRef) {
        if let Some(s) = self.streams.remove(&call) {
            for id in s.ids {
                self.forget(call, id);
            }
            self.counted();
        }
    }

    /// A connection closed: every watcher of its streams goes.
    pub fn remove_conn(&mut self, slot: u32, gen: u32) {
        let calls: Vec<CallRef> =
            self.streams.keys().filter(|c| c.conn_slot == slot && c.conn_gen == gen).copied().collect();
        for c in calls {
            self.remove_stream(c);
        }
    }
}

// ----- encoding -----

fn event_len(e: &Event, prev_kv: bool) -> usize {
    let kind = if e.kind == EventKind::Delete { pbw::u64_field_len(1, 1) } else { 0 };
    let prev = match (&e.prev, prev_kv) {
        (Some(p), true) => pbw::message_len(3, kv::kv_len(p, false)),
        _ => 0,
    };
    kind + pbw::message_len(2, kv::kv_len(&e.kv, false)) + prev
}

fn write_event(buf: &mut Vec<u8>, e: &Event, prev_kv: bool) {
    pbw::message_header(buf, 11, event_len(e, prev_kv));
    if e.kind == EventKind::Delete {
        pbw::u64_field(buf, 1, 1);
    }
    kv::write_kv(buf, 2, &e.kv, false);
    if let (Some(p), true) = (&e.prev, prev_kv) {
        kv::write_kv(buf, 3, p, false);
    }
}

/// A WatchResponse without events (created, canceled, progress).
fn encode_control(
    buf: &mut Vec<u8>,
    header: &Header,
    watch_id: i64,
    created: bool,
    canceled: bool,
    compact_rev: i64,
    reason: &str,
) {
    header.write(buf, 1);
    pbw::i64_field(buf, 2, watch_id);
    pbw::bool_field(buf, 3, created);
    pbw::bool_field(buf, 4, canceled);
    pbw::i64_field(buf, 5, compact_rev);
    pbw::bytes_field(buf, 6, reason.as_bytes());
}

/// WatchResponses carrying `events` (one, or fragments when asked for and the response is
/// larger than `fragment_bytes`: each fragment at least one event, all but the last flagged).
#[allow(clippy::too_many_arguments)]
fn encode_events(
    buf: &mut Vec<u8>,
    header: &Header,
    watch_id: i64,
    events: &[&Event],
    prev_kv: bool,
    fragment: bool,
    fragment_bytes: usize,
    out: &mut dyn FnMut(&[u8]),
) {
    let total: usize = events.iter().map(|e| event_len(e, prev_kv) + 8).sum();
    if !fragment || events.len() < 2 || total < fragment_bytes {
        buf.clear();
        header.write(buf, 1);
        pbw::i64_field(buf, 2, watch_id);
        for e in events {
            write_event(buf, e, prev_kv);
        }
        out(buf);
        return;
    }
    let mut i = 0;
    while i < events.len() {
        buf.clear();
        header.write(buf, 1);
        pbw::i64_field(buf, 2, watch_id);
        let start = buf.len();
        let mut n = 0;
        while i < events.len() && (n == 0 || buf.len() - start + event_len(events[i], prev_kv) < fragment_bytes) {
            write_event(buf, events[i], prev_kv);
            i += 1;
            n += 1;
        }
        if i < events.len() {
            pbw::bool_field(buf, 7, true);
        }
        out(buf);
    }
}

/// Decodes a WatchRequest's oneof.
pub fn decode_call(req: pb::WatchRequest) -> Option<WatchCall> {
    use pb::watch_request::RequestUnion;
    match req.request_union? {
        RequestUnion::CreateRequest(c) => Some(WatchCall::Create(c)),
        RequestUnion::CancelRequest(c) => Some(WatchCall::Cancel(c.watch_id)),
        RequestUnion::ProgressRequest(_) => Some(WatchCall::Progress),
    }
}

/// The hub's task on each core: sends history requests to the shard (answered inline when the
/// shard is on this core) and runs the periodic tick.
pub async fn watch_loop(core: Rc<Core>) {
    let mut last_tick = Instant::now();
    loop {
        // History requests, as long as the ring to the shard takes them.
        loop {
            let Some(env) = core.watch.borrow_mut().next_fetch() else { break };
            let call = env.call;
            let waker = std::future::poll_fn(|cx| std::task::Poll::Ready(cx.waker().clone())).await;
            match core.submit(env, &waker) {
                Submit::Done(Outcome::WatchSynced(r)) => {
                    if let Some(c) = core.conn(call.conn_slot, call.conn_gen) {
                        let backlog = c.output_backlog();
                        c.send_messages(call.stream, |out| core.watch.borrow_mut().synced(call, *r, backlog, out));
                    }
                }
                Submit::Done(_) | Submit::Sent => {}
                Submit::Full(env) => {
                    core.watch.borrow_mut().unfetch(&env);
                    wait_once().await;
                }
            }
        }
        // Requests calls send on their own.
        loop {
            let Some(env) = core.resubmits.borrow_mut().pop_front() else { break };
            let call = env.call;
            let waker = std::future::poll_fn(|cx| std::task::Poll::Ready(cx.waker().clone())).await;
            match core.submit(env, &waker) {
                Submit::Done(outcome) => {
                    let reply = match outcome {
                        Outcome::Encoded => ShardReply::Encoded(core.local_out.borrow().clone()),
                        Outcome::Error(e) => ShardReply::Error(e),
                        Outcome::DeadlineExceeded => ShardReply::DeadlineExceeded,
                        Outcome::Health(h) => ShardReply::Health(h),
                        Outcome::WatchSynced(r) => ShardReply::WatchSynced(r),
                        Outcome::Pending => continue,
                    };
                    core.local_out.borrow_mut().clear();
                    if let Some(c) = core.conn(call.conn_slot, call.conn_gen) {
                        c.on_shard_reply(&core, call.stream, reply);
                    }
                }
                Submit::Sent => {}
                Submit::Full(env) => {
                    core.resubmits.borrow_mut().push_front(env);
                    wait_once().await;
                }
            }
        }
        let now = Instant::now();
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            core.watch.borrow_mut().tick(&core, now);
            if core.watch.borrow().has_fetches() {
                continue;
            }
        }
        monoio::select! {
            _ = core.watch_wake.notified() => {}
            _ = monoio::time::sleep(TICK) => {}
        }
    }
}

/// Waits for one wake-up (`submit` registered this task for a free slot in the ring).
async fn wait_once() {
    let mut waited = false;
    std::future::poll_fn(|_| {
        if waited {
            std::task::Poll::Ready(())
        } else {
            waited = true;
            std::task::Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use metastore_storage::mvcc::Record;
    use std::sync::Arc;

    fn rec(key: &str, rev: i64) -> Arc<Record> {
        Arc::new(Record {
            key: Arc::from(key.as_bytes()),
            value: Arc::from(&b"v"[..]),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
            tombstone: false,
        })
    }

    #[test]
    fn fragments_hold_at_least_one_event_and_flag_all_but_the_last() {
        let evs: Vec<Event> =
            (1..=5).map(|i| Event { kind: EventKind::Put, kv: rec(&format!("k{i}"), i), prev: None }).collect();
        let refs: Vec<&Event> = evs.iter().collect();
        let header = Header::default();
        let mut msgs = Vec::new();
        let mut buf = Vec::new();
        encode_events(&mut buf, &header, 3, &refs, false, true, 1, &mut |m: &[u8]| {
            msgs.push(<pb::WatchResponse as prost::Message>::decode(m).unwrap())
        });
        assert_eq!(msgs.len(), 5);
        assert!(msgs[..4].iter().all(|m| m.fragment && m.events.len() == 1 && m.watch_id == 3));
        assert!(!msgs[4].fragment);
        msgs.clear();
        encode_events(&mut buf, &header, 3, &refs, false, false, 1, &mut |m: &[u8]| {
            msgs.push(<pb::WatchResponse as prost::Message>::decode(m).unwrap())
        });
        assert_eq!(msgs.len(), 1, "no fragments unless asked for");
        assert_eq!(msgs[0].events.len(), 5);
    }

    #[test]
    fn negative_start_revisions_answer_as_etcd_3_4() {
        let mut s: Store = Store::new();
        for i in 0..5 {
            s.write().put(b"k", Some(format!("{i}").as_bytes()), None);
        }
        let ids = Ids { cluster_id: 1, member_id: 2, raft_term: 3 };
        let req = |from_rev| WatchSync {
            watch_id: 0,
            key: b"k".to_vec(),
            range_end: Vec::new(),
            from_rev,
            prev_kv: false,
            create: true,
        };
        let current = s.current_revision();
        // Before any compaction: -1 watches from now, below -1 is compacted at -1.
        let r = sync(&s, &ids, &req(-1));
        assert_eq!((r.compact_rev, r.next_rev, r.events.len()), (0, current + 1, 0));
        let r = sync(&s, &ids, &req(-7));
        assert_eq!(r.compact_rev, -1);
        // After one: every negative revision is below it.
        s.compact(3).unwrap();
        for from in [-1, -7] {
            assert_eq!(sync(&s, &ids, &req(from)).compact_rev, 3, "from {from}");
        }
        let r = sync(&s, &ids, &req(4));
        assert_eq!((r.compact_rev, r.events.len() as i64), (0, current - 3));
    }

    /// A watcher canceled by a compaction keeps its ID, as in etcd's watchStream: a create
    /// reusing it is refused as a duplicate until the client cancels it (which is answered).
    #[test]
    fn a_compacted_watchers_id_stays_taken_until_the_client_cancels_it() {
        let mut hub = WatchHub::new(1 << 20, Duration::from_secs(600), None);
        let call = CallRef { conn_slot: 1, conn_gen: 1, stream: 1 };
        let mut got: Vec<pb::WatchResponse> = Vec::new();
        let take = |hub: &mut WatchHub, req: WatchCall| {
            let mut out = Vec::new();
            hub.request(call, req, 10, &mut |m: &[u8]| {
                out.push(<pb::WatchResponse as prost::Message>::decode(m).unwrap())
            });
            out
        };
        let create = |rev| {
            WatchCall::Create(pb::WatchCreateRequest {
                key: b"k".to_vec(),
                start_revision: rev,
                watch_id: 7,
                ..Default::default()
            })
        };
        assert!(take(&mut hub, create(2)).is_empty(), "the created answer waits for the shard");
        assert!(hub.next_fetch().is_some());
        let synced = WatchSynced {
            watch_id: 7,
            create: true,
            ids: Ids { cluster_id: 1, member_id: 2, raft_term: 3 },
            current_rev: 10,
            compact_rev: 5,
            events: Vec::new(),
            next_rev: 0,
        };
        hub.synced(call, synced, 0, &mut |m: &[u8]| {
            got.push(<pb::WatchResponse as prost::Message>::decode(m).unwrap())
        });
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].created && got[1].canceled && got[1].compact_revision == 5, "{got:?}");
        assert_eq!(hub.watchers(), 0);
        let dup = take(&mut hub, create(0));
        assert!(dup.len() == 1 && dup[0].canceled && dup[0].cancel_reason.contains("duplicate"), "{dup:?}");
        let c = take(&mut hub, WatchCall::Cancel(7));
        assert!(c.len() == 1 && c[0].canceled && c[0].watch_id == 7, "{c:?}");
        assert!(take(&mut hub, WatchCall::Cancel(7)).is_empty(), "once: then the ID is unknown");
        assert!(take(&mut hub, create(0)).is_empty(), "free again: accepted");
        assert_eq!(hub.watchers(), 1);
    }
}
