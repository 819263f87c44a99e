//! One core: its reactor's tasks and the state they share. Everything here lives on one thread
//! (`Rc`/`RefCell`, no locks); the only ways in from other threads are the rings to and from the
//! shard and the stop signal.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use slab::Slab;

use crate::config::Config;
use crate::conn::Conn;
use crate::notify::{LocalNotify, WaitList};
use crate::ring::{Receiver, Sender};
use crate::shard::{CallRef, Envelope, Outcome, Replies, ReplyEnvelope, Shard, ShardReply, Waiter};

/// Requests in flight from one core to the shard, and replies back. A full ring stops the
/// connections that want to send more from reading.
pub const SHARD_RING_ENTRIES_MAX: usize = 1024;
/// Smallest deadline heap that is swept for finished calls.
pub const TIMERS_SWEEP_MIN: usize = 4096;
/// Items one task takes from a ring before yielding to the core's other tasks.
pub const RING_BATCH_MAX: usize = 256;

/// Counters of one core: written by that core only (relaxed single-writer), summed by readers.
pub struct CoreStats {
    pub conns_open: AtomicU64,
    pub conns_accepted: AtomicU64,
    pub ring_full_waits: AtomicU64,
    pub shard_requests_sent: AtomicU64,
    /// Requests in this core's ring to the shard, as of the last send or reply round (a gauge).
    pub ring_depth: AtomicU64,
    /// IO operations this core submitted: socket reads and writes, and on the shard's core the
    /// log's writes and fdatasyncs (io_uring submissions under the io_uring driver).
    pub io_submissions: AtomicU64,
    /// Watchers on this core's connections.
    pub watchers: AtomicU64,
    /// The front door's limits and defences: how often each acted (see `conn::Defences`).
    pub defences: crate::conn::DefenceStats,
    /// go-grpc-prometheus's per-method counters of the calls on this core's connections.
    pub grpc: Arc<metastore_net::grpc::CallStats>,
    /// Finished spans dropped because the ring to the trace exporter was full, or sampled calls
    /// not traced because too many were open (`--experimental-enable-distributed-tracing`).
    pub spans_dropped: AtomicU64,
}

impl Default for CoreStats {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Core {
    /// Publishes how full this core's ring to the shard is, given its free slots.
    fn note_ring_depth(&self, free: usize) {
        if !cfg!(feature = "no-telemetry") {
            let depth = SHARD_RING_ENTRIES_MAX.saturating_sub(free) as u64;
            self.stats().ring_depth.store(depth, Ordering::Relaxed);
        }
    }
}

impl CoreStats {
    /// `handling_time`: keep `grpc_server_handling_seconds` too (`--metrics extensive`).
    pub fn new(handling_time: bool) -> Self {
        Self {
            conns_open: Default::default(),
            conns_accepted: Default::default(),
            ring_full_waits: Default::default(),
            shard_requests_sent: Default::default(),
            ring_depth: Default::default(),
            io_submissions: Default::default(),
            watchers: Default::default(),
            defences: Default::default(),
            grpc: crate::conn::call_stats(handling_time),
            spans_dropped: Default::default(),
        }
    }

    pub fn add(c: &AtomicU64, n: u64) {
        if cfg!(feature = "no-telemetry") {
            return;
        }
        // Single writer: a load and a store, no read-modify-write on a contended line.
        c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
    pub fn sub(c: &AtomicU64, n: u64) {
        if cfg!(feature = "no-telemetry") {
            return;
        }
        c.store(c.load(Ordering::Relaxed).saturating_sub(n), Ordering::Relaxed);
    }
}

/// Set once by the main thread; each core waits on its own waker.
pub struct StopSignal {
    flag: AtomicBool,
    wakers: Vec<AtomicWaker>,
}

impl StopSignal {
    pub fn new(cores: usize) -> Self {
        Self { flag: AtomicBool::new(false), wakers: (0..cores).map(|_| AtomicWaker::new()).collect() }
    }

    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            w.wake();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub async fn wait(&self, core: usize) {
        poll_fn(|cx| {
            if self.is_stopped() {
                return Poll::Ready(());
            }
            self.wakers[core].register(cx.waker());
            if self.is_stopped() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// What all cores share, read-only after start (stats are per-core atomics).
pub struct Shared {
    pub cfg: Config,
    pub driver: &'static str,
    pub stats: Vec<CoreStats>,
    pub stop: StopSignal,
    /// The shard's figures, written by its core only.
    pub shard_stats: ShardStats,
}

/// Upper bounds (seconds) of the fsync-duration histogram buckets: etcd's
/// `etcd_disk_wal_fsync_duration_seconds` buckets (1 ms doubling, 14 of them).
pub const FSYNC_BUCKETS: [f64; 14] =
    [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192];

/// What the shard counts (single writer: the shard's core; relaxed atomics).
#[derive(Default)]
pub struct ShardStats {
    /// Batches synced: one fdatasync each.
    pub fsyncs: AtomicU64,
    pub fsync_us_total: AtomicU64,
    /// Per bucket of [`FSYNC_BUCKETS`] (not cumulative), plus one for larger.
    pub fsync_buckets: [AtomicU64; 15],
    /// Client write requests applied (what group commit divides by fsyncs).
    pub writes_applied: AtomicU64,
    pub raft_committed: AtomicU64,
    pub raft_applied: AtomicU64,
    pub raft_term: AtomicU64,
    pub db_bytes: AtomicU64,
    pub db_bytes_in_use: AtomicU64,
    pub revision: AtomicU64,
    /// Active alarms: bit 0 NOSPACE, bit 1 CORRUPT.
    pub alarms: AtomicU64,
    /// 1 once the data disk failed (writes refused until a restart).
    pub disk_failed: AtomicU64,
    /// Requests whose handling panicked (each answered INTERNAL; the server went on).
    pub request_panics: AtomicU64,
    /// Counts published from the shard's [`crate::shard::Counters`] each round.
    pub counters: crate::shard::Counters<AtomicU64>,
    pub keys: AtomicU64,
    pub compact_revision: AtomicU64,
    pub proposals_pending: AtomicU64,
    /// When the shard loop last went round (ms since `ShardStats::epoch`): a stuck shard shows.
    pub loop_at_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl ShardStats {
    pub const ALARM_NOSPACE: u64 = 1;
    pub const ALARM_CORRUPT: u64 = 2;

    /// Milliseconds since the first call (a clock shared by the shard and the health checks).
    pub fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    pub fn record_fsync(&self, took: Duration) {
        CoreStats::add(&self.fsyncs, 1);
        CoreStats::add(&self.fsync_us_total, took.as_micros() as u64);
        let secs = took.as_secs_f64();
        let i = FSYNC_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(FSYNC_BUCKETS.len());
        CoreStats::add(&self.fsync_buckets[i], 1);
    }
}

/// How this core reaches the shard. (One per core, made once: the size difference between the
/// variants costs nothing.)
#[allow(clippy::large_enum_variant)]
pub enum ShardLink {
    /// The shard lives here: requests are plain calls. `inbound` pairs each other core's
    /// request ring with the reply ring back to it.
    Local {
        shard: RefCell<Shard>,
        inbound: RefCell<Vec<(Receiver<Envelope>, Sender<ReplyEnvelope>)>>,
    },
    Remote {
        tx: RefCell<Sender<Envelope>>,
        rx: RefCell<Receiver<ReplyEnvelope>>,
        space: WaitList,
    },
}

pub enum Submit {
    /// Answered at once (the shard is on this core); the response is in `Core::local_out`.
    Done(Outcome),
    /// On its way; the reply arrives through `deliver`.
    Sent,
    /// The ring is full; the caller's waker is registered for a free slot.
    Full(Envelope),
}

pub struct Core {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub link: ShardLink,
    conns: RefCell<Slab<(u32, Rc<Conn>)>>,
    next_gen: Cell<u32>,
    timers: RefCell<BinaryHeap<Reverse<(Instant, CallRef)>>>,
    /// Heap size at which finished calls' deadlines are swept out (entries stay until their
    /// time otherwise, and a client with long deadlines would grow the heap without bound).
    timers_sweep_at: Cell<usize>,
    timer_notify: LocalNotify,
    /// Health.Watch streams on this core: (call, whether its service name is known).
    pub health_watchers: RefCell<Vec<(CallRef, bool)>>,
    draining: Cell<bool>,
    drain_waiters: WaitList,
    pub drained: LocalNotify,
    /// Where the shard encodes responses for connections on its own core (reused, no copy
    /// through a ring).
    pub local_out: RefCell<Vec<u8>>,
    /// Wakes the shard loop: a local write to propose, a flush or checkpoint that finished.
    pub shard_wake: LocalNotify,
    flushed: RefCell<Option<metastore_storage::log::Flushed>>,
    /// This core's watchers.
    pub watch: RefCell<crate::watch::WatchHub>,
    /// Wakes the watch task: history requests to send.
    pub watch_wake: LocalNotify,
    /// Requests a streaming call sends on its own (Observe's next leader), sent by the watch task.
    pub resubmits: RefCell<std::collections::VecDeque<Envelope>>,
    /// Sockets open on this core, whatever they speak (for `--max-connections-per-core`).
    pub sockets: Cell<u32>,
    /// `--request-rate-limit-per-core`: the bucket all this core's connections draw from.
    pub request_bucket: Option<Rc<Cell<metastore_net::limit::TokenBucket>>>,
    /// `--experimental-enable-distributed-tracing`: this core's tracer (None: off).
    pub tracer: Option<Rc<crate::otel::CoreTracer>>,
}

impl Core {
    pub fn new(id: usize, shared: Arc<Shared>, link: ShardLink) -> Self {
        Self {
            id,
            shared: shared.clone(),
            link,
            conns: RefCell::new(Slab::new()),
            next_gen: Cell::new(1),
            timers: RefCell::new(BinaryHeap::new()),
            timers_sweep_at: Cell::new(TIMERS_SWEEP_MIN),
            timer_notify: LocalNotify::default(),
            health_watchers: RefCell::new(Vec::new()),
            draining: Cell::new(false),
            drain_waiters: WaitList::default(),
            drained: LocalNotify::default(),
            local_out: RefCell::new(Vec::with_capacity(64 << 10)),
            shard_wake: LocalNotify::default(),
            flushed: RefCell::new(None),
            watch: RefCell::new(crate::watch::WatchHub::new(
                shared.cfg.recv_message_bytes_max(),
                shared.cfg.watch_progress_notify_interval,
                Some((shared.clone(), id)),
            )),
            watch_wake: LocalNotify::default(),
            resubmits: RefCell::new(std::collections::VecDeque::new()),
            sockets: Cell::new(0),
            request_bucket: crate::conn::rate_bucket(shared.cfg.request_rate_per_core),
            tracer: None,
        }
    }

    pub fn stats(&self) -> &CoreStats {
        &self.shared.stats[self.id]
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Resolves once this core starts draining (any number of tasks may wait).
    pub async fn wait_drain(&self) {
        poll_fn(|cx| {
            if self.draining.get() {
                return Poll::Ready(());
            }
            self.drain_waiters.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Registers a new connection; returns its slot and generation.
    pub fn add_conn(&self, make: impl FnOnce(u32, u32) -> Rc<Conn>) -> Rc<Conn> {
        let gen = self.next_gen.get();
        self.next_gen.set(gen.wrapping_add(1).max(1));
        let mut conns = self.conns.borrow_mut();
        let entry = conns.vacant_entry();
        let slot = entry.key() as u32;
        let conn = make(slot, gen);
        entry.insert((gen, conn.clone()));
        CoreStats::add(&self.stats().conns_open, 1);
        CoreStats::add(&self.stats().conns_accepted, 1);
        conn
    }

    pub fn remove_conn(&self, slot: u32, gen: u32) {
        let mut conns = self.conns.borrow_mut();
        if conns.get(slot as usize).is_some_and(|(g, _)| *g == gen) {
            conns.remove(slot as usize);
            CoreStats::sub(&self.stats().conns_open, 1);
        }
        let empty = conns.is_empty();
        drop(conns);
        self.health_watchers.borrow_mut().retain(|(c, _)| !(c.conn_slot == slot && c.conn_gen == gen));
        self.watch.borrow_mut().remove_conn(slot, gen);
        if empty && self.draining.get() {
            self.drained.notify();
        }
    }

    pub fn conn(&self, slot: u32, gen: u32) -> Option<Rc<Conn>> {
        let conns = self.conns.borrow();
        conns.get(slot as usize).filter(|(g, _)| *g == gen).map(|(_, c)| c.clone())
    }

    pub fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// This core's HTTP/2 connections (for the sweep of slow and idle ones).
    pub fn conns_snapshot(&self) -> Vec<Rc<Conn>> {
        self.conns.borrow().iter().map(|(_, (_, c))| c.clone()).collect()
    }

    /// Counts a batch written and synced in `took`: its write and its fdatasync.
    fn flushed_in(&self, took: Duration) {
        CoreStats::add(&self.stats().io_submissions, 2);
        self.shared.shard_stats.record_fsync(took);
    }

    /// Sends a request to the shard, or runs it here when the shard is local.
    pub fn submit(&self, env: Envelope, waker: &Waker) -> Submit {
        match &self.link {
            ShardLink::Local { shard, .. } => {
                let mut out = self.local_out.borrow_mut();
                out.clear();
                let waiter = Waiter::Local(env.call);
                match crate::shard::execute_guarded(
                    shard,
                    env.req,
                    env.deadline,
                    Instant::now(),
                    waiter,
                    &mut out,
                    &self.shared,
                ) {
                    Outcome::Pending => {
                        // A write on its way through raft: the shard loop takes it from here.
                        self.shard_wake.notify();
                        Submit::Sent
                    }
                    outcome => Submit::Done(outcome),
                }
            }
            ShardLink::Remote { tx, space, .. } => {
                let sent = tx.borrow_mut().try_send(env);
                match sent {
                    Ok(()) => {
                        CoreStats::add(&self.stats().shard_requests_sent, 1);
                        self.note_ring_depth(tx.borrow().slots());
                        Submit::Sent
                    }
                    Err(env) => {
                        CoreStats::add(&self.stats().ring_full_waits, 1);
                        space.register(waker);
                        Submit::Full(env)
                    }
                }
            }
        }
    }

    /// Queues a request that a call sends without a client message (the watch task sends it).
    pub fn resubmit(&self, env: Envelope) {
        self.resubmits.borrow_mut().push_back(env);
        self.watch_wake.notify();
    }

    /// A reply for one of this core's calls, or changes published to its watchers.
    pub fn deliver(&self, r: ReplyEnvelope) {
        match r.reply {
            ShardReply::WatchEvents(batch) => {
                self.watch.borrow_mut().batch(self, &batch);
                return;
            }
            ShardReply::WatchLagged(upto) => {
                self.watch.borrow_mut().lagged(upto);
                self.watch_wake.notify();
                return;
            }
            _ => {}
        }
        if let Some(conn) = self.conn(r.call.conn_slot, r.call.conn_gen) {
            conn.on_shard_reply(self, r.call.stream, r.reply);
        }
    }

    /// Arms a deadline for a call; the timer task answers DEADLINE_EXCEEDED when it passes.
    pub fn arm_deadline(&self, at: Instant, call: CallRef) {
        let mut timers = self.timers.borrow_mut();
        let earliest = timers.peek().is_none_or(|Reverse((t, _))| at < *t);
        timers.push(Reverse((at, call)));
        if earliest || timers.len() >= self.timers_sweep_at.get() {
            self.timer_notify.notify();
        }
    }

    /// Drops deadlines of calls that have ended; runs when the heap has doubled since the last
    /// sweep, so its cost is amortised over the pushes.
    pub(crate) fn sweep_deadlines(&self) {
        if self.timers.borrow().len() < self.timers_sweep_at.get() {
            return;
        }
        let entries = std::mem::take(&mut *self.timers.borrow_mut()).into_vec();
        let live: Vec<_> = entries
            .into_iter()
            .filter(|Reverse((at, call))| {
                self.conn(call.conn_slot, call.conn_gen).is_some_and(|c| c.has_deadline(call.stream, *at))
            })
            .collect();
        let n = live.len();
        *self.timers.borrow_mut() = BinaryHeap::from(live);
        self.timers_sweep_at.set((2 * n).max(TIMERS_SWEEP_MIN));
    }

    pub fn timers_len(&self) -> usize {
        self.timers.borrow().len()
    }

    /// Fires expired deadlines; returns how long until the next one.
    fn fire_deadlines(&self, now: Instant) -> Option<Duration> {
        loop {
            let next = {
                let mut timers = self.timers.borrow_mut();
                match timers.peek() {
                    None => return None,
                    Some(Reverse((t, _))) if *t > now => return Some(*t - now),
                    Some(_) => timers.pop().map(|Reverse(x)| x),
                }
            };
            if let Some((at, call)) = next {
                if let Some(conn) = self.conn(call.conn_slot, call.conn_gen) {
                    conn.on_deadline(self, call.stream, at);
                }
            }
        }
    }

    /// Starts the graceful drain: watchers learn NOT_SERVING, connections get GOAWAY.
    pub fn start_drain(&self) {
        self.draining.set(true);
        self.drain_waiters.wake_all();
        if let ShardLink::Local { shard, .. } = &self.link {
            shard.borrow_mut().shutdown();
        }
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().map(|(_, (_, c))| c.clone()).collect();
        for c in &conns {
            c.drain(self);
        }
        if conns.is_empty() {
            self.drained.notify();
        }
    }
}

/// The deadline task: sleeps until the earliest deadline, or until an earlier one is armed.
/// (It also starts the task that closes slow and idle connections.)
pub async fn timer_loop(core: Rc<Core>) {
    monoio::spawn(crate::conn::sweep_loop(core.clone()));
    loop {
        core.sweep_deadlines();
        match core.fire_deadlines(Instant::now()) {
            None => core.timer_notify.notified().await,
            Some(wait) => {
                monoio::select! {
                    _ = monoio::time::sleep(wait) => {}
                    _ = core.timer_notify.notified() => {}
                }
            }
        }
    }
}

/// On cores without the shard: delivers replies, and wakes connections waiting for ring space.
pub async fn reply_loop(core: Rc<Core>) {
    let ShardLink::Remote { tx, rx, space } = &core.link else {
        return;
    };
    let mut batch = Vec::with_capacity(RING_BATCH_MAX);
    loop {
        let open = poll_fn(|cx| {
            let mut rx = rx.borrow_mut();
            while batch.len() < RING_BATCH_MAX {
                match rx.try_recv() {
                    Some(r) => batch.push(r),
                    None => break,
                }
            }
            if !space.is_empty() && tx.borrow_mut().poll_ready(cx).is_ready() {
                space.wake_all();
            }
            core.note_ring_depth(tx.borrow().slots());
            if !batch.is_empty() {
                return Poll::Ready(true);
            }
            match rx.poll_readable(cx) {
                Poll::Ready(()) if rx.is_empty() => Poll::Ready(false), // shard core gone
                Poll::Ready(()) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        for r in batch.drain(..) {
            core.deliver(r);
        }
        if !open {
            return;
        }
    }
}

/// On the shard's core: takes requests from every other core's ring (only as many as their reply
/// rings can take answers for), serves reads at once, proposes writes, drives raft (one flush in
/// flight at a time, while the next batch gathers), answers applied writes, and writes
/// checkpoints on a helper thread.
pub async fn shard_loop(core: Rc<Core>) {
    let ShardLink::Local { shard, inbound } = &core.link else {
        return;
    };
    // The checkpoint being written, if any: its result arrives on this ring.
    let mut ckpt_rx: Option<crate::ring::Receiver<(u64, std::io::Result<()>)>> = None;
    // Answers that found their reply ring full (never, while the reservation holds).
    let mut overflow: Vec<(usize, ReplyEnvelope)> = Vec::new();
    let mut last_tick = Instant::now();
    let tick = Duration::from_millis(shard.borrow().tick_ms());
    loop {
        let mut replies = Replies::default();
        // Requests from the other cores.
        {
            let mut inbound = inbound.borrow_mut();
            let now = Instant::now();
            for (i, (rx, tx)) in inbound.iter_mut().enumerate() {
                let mut n = 0;
                // A request is taken only while its answer is sure to fit in the reply ring: the
                // free slots must exceed the answers owed (writes pending, answers queued).
                let mut queued = overflow.iter().filter(|(r, _)| *r == i).count();
                while n < RING_BATCH_MAX && tx.slots() > shard.borrow().outstanding(i) + queued {
                    let Some(env) = rx.try_recv() else { break };
                    n += 1;
                    let mut out = Vec::with_capacity(1024);
                    let waiter = Waiter::Remote { ring: i, call: env.call };
                    let outcome = crate::shard::execute_guarded(
                        shard,
                        env.req,
                        env.deadline,
                        now,
                        waiter,
                        &mut out,
                        &core.shared,
                    );
                    let reply = match outcome {
                        Outcome::Pending => continue,
                        Outcome::Encoded => ShardReply::Encoded(out),
                        Outcome::Health(h) => ShardReply::Health(h),
                        Outcome::Error(e) => ShardReply::Error(e),
                        Outcome::DeadlineExceeded => ShardReply::DeadlineExceeded,
                        Outcome::WatchSynced(r) => ShardReply::WatchSynced(r),
                    };
                    queued += 1;
                    replies.remote.push((i, ReplyEnvelope { call: env.call, reply }));
                }
            }
        }
        // Raft: ticks, readies, committed entries; the next flush.
        if last_tick.elapsed() >= tick {
            last_tick = Instant::now();
            let mut s = shard.borrow_mut();
            s.raft_tick();
            s.auto_compact(last_tick);
            s.expire_leases(last_tick);
        }
        if let Some(done) = core.flushed.borrow_mut().take() {
            shard.borrow_mut().flush_done(done, &mut replies);
        }
        let flush = shard.borrow_mut().drive(&mut replies);
        let inline = shard.borrow().sync_inline();
        match flush {
            Some(flush) if inline => {
                // A lone write: nothing to serve meanwhile, so no hand-off (Shard::sync_inline).
                let started = Instant::now();
                let done = flush.run_blocking();
                core.flushed_in(started.elapsed());
                shard.borrow_mut().flush_done(done, &mut replies);
                // What the batch committed is applied (and answered) by the next round's drive.
                core.shard_wake.notify();
            }
            Some(flush) => {
                let c = core.clone();
                monoio::spawn(async move {
                    let started = Instant::now();
                    let done = flush.run().await;
                    c.flushed_in(started.elapsed());
                    *c.flushed.borrow_mut() = Some(done);
                    c.shard_wake.notify();
                });
            }
            None => {}
        }
        shard.borrow().publish_stats(&core.shared.shard_stats);
        core.shared.shard_stats.loop_at_ms.store(core.shared.shard_stats.now_ms(), Ordering::Relaxed);
        // This core's watchers get the round's changes now, before anything else runs here.
        let local = shard.borrow_mut().take_local_batches();
        for b in local {
            core.watch.borrow_mut().batch(&core, &b);
        }
        // Checkpoints: encoded here, written on a helper thread.
        if let Some(rx) = &mut ckpt_rx {
            if let Some((index, r)) = rx.try_recv() {
                shard.borrow_mut().checkpoint_done(index, r, &mut replies);
                ckpt_rx = None;
            }
        }
        if ckpt_rx.is_none() {
            let due = shard.borrow_mut().checkpoint_due();
            if let Some((index, image)) = due {
                let dir = shard.borrow().checkpoint_dir().to_path_buf();
                let (mut tx, rx) = crate::ring::channel(1);
                let spawned = std::thread::Builder::new().name("metastore-checkpoint".into()).spawn(move || {
                    let disk = metastore_storage::disk::StdDisk;
                    let r = metastore_storage::engine::write_checkpoint(&disk, &dir, index, &image).map(|_| ());
                    let _ = tx.try_send((index, r));
                });
                match spawned {
                    Ok(_) => ckpt_rx = Some(rx),
                    Err(e) => shard.borrow_mut().checkpoint_done(index, Err(e), &mut replies),
                }
            }
        }
        // Answers: local ones straight to their connections, others into their reply rings
        // (which have room: requests are taken only while their answers fit).
        for r in replies.local.drain(..) {
            core.deliver(r);
        }
        {
            let mut inbound = inbound.borrow_mut();
            let earlier = std::mem::take(&mut overflow);
            for (i, r) in earlier.into_iter().chain(replies.remote.drain(..)) {
                if let Some((_, tx)) = inbound.get_mut(i) {
                    // Space was reserved when the request was taken; should a ring still be full,
                    // the answer waits for the next round rather than being lost.
                    if let Err(r) = tx.try_send(r) {
                        debug_assert!(false, "a reply ring is full although its space was reserved");
                        overflow.push((i, r));
                    }
                }
            }
            // Changes for the other cores' watchers, after the answers (a watcher's history
            // answer and the batches after it arrive in that order), in the room the answers
            // owed leave; the rest waits in the shard (bounded: beyond it the core is told it
            // lagged and its watchers catch up from history).
            for (i, (_, tx)) in inbound.iter_mut().enumerate() {
                let owed = shard.borrow().outstanding(i) + overflow.iter().filter(|(r, _)| *r == i).count();
                while tx.slots() > owed {
                    let Some(reply) = shard.borrow_mut().next_published(i) else { break };
                    let pushed = tx.try_send(ReplyEnvelope { call: crate::watch::NO_CALL, reply });
                    debug_assert!(pushed.is_ok(), "checked for room");
                }
            }
        }
        // Wait for more work: a ring, a local write, a flush or checkpoint, or the next tick.
        let wait = tick.saturating_sub(last_tick.elapsed());
        monoio::select! {
            _ = poll_fn(|cx| {
                let mut inbound = inbound.borrow_mut();
                let mut ready = false;
                for (i, (rx, tx)) in inbound.iter_mut().enumerate() {
                    let owed = shard.borrow().outstanding(i) + overflow.iter().filter(|(r, _)| *r == i).count();
                    let room = tx.poll_slots_over(owed, cx).is_ready();
                    if room && (rx.poll_readable(cx).is_ready() || shard.borrow().has_published(i)) {
                        ready = true;
                    }
                }
                if ckpt_rx.as_mut().is_some_and(|rx| rx.poll_readable(cx).is_ready()) {
                    ready = true;
                }
                if ready { Poll::Ready(()) } else { Poll::Pending }
            }) => {}
            _ = core.shard_wake.notified() => {}
            _ = monoio::time::sleep(wait) => {}
        }
        // Let this core's connections run between rounds.
        crate::notify::yield_now().await;
    }
}
