//! The run: worker threads, each a tokio current_thread runtime with a `LocalSet` that owns whole
//! connections and the clients on them (client i uses connection i mod conns; connection j
//! lives on thread j mod threads and dials endpoint j mod endpoints). Nothing is shared between
//! threads on a request's path: each thread has its own share of the operations (and of the
//! rate), its own histogram and error counts, and publishes two counters for the progress line.
//!
//! Phases, separated by barriers so that neither connecting nor the prefill is timed: all
//! threads connect and prefill; the main thread takes the CPU readings and the start instant;
//! all threads run their clients; the main thread draws progress until every thread is done, then
//! reads CPU again and merges the threads' results.
//!
//! Open loop (`--rate`): a thread's k-th operation is due at start + k / (the thread's rate). A
//! client that is free before that time sleeps until it and measures from when it actually sends
//! (so the timer's ~1 ms granularity is not charged to the server); a client that takes an
//! operation after its due time (every client was busy) sends at once and measures from the due
//! time, so the queueing that a slow server causes is counted, not omitted.
//!
//! The watch workloads plan their streams as clients (stream i on connection i mod conns) and
//! run as `watch.rs` describes; lease-keepalive's clients grant their leases in the untimed
//! setup and revoke them after the main thread has taken its final CPU readings.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::task::LocalSet;

use crate::args::{Config, Stop, Workload};
use crate::cpu;
use crate::grpc;
use crate::keys::KeyPicker;
use crate::report::{self, Measured, WatchMeasured};
use crate::watch::{self, WriterOut};
use crate::workload::{Client, Done, Shapes, Uris};

/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// How often the main thread checks whether the workers are done.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Significant digits of the latency histograms (0.1% resolution).
const HISTOGRAM_SIGFIG: u8 = 3;
/// The longest latency the histograms tell apart (1 hour, in ns); longer ones count as this.
/// Fixed bounds: recording never allocates (~260 KiB per histogram).
const LATENCY_NS_MAX: u64 = 3600 * 1_000_000_000;

pub fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, HISTOGRAM_SIGFIG).map_err(|e| format!("histogram: {e}"))
}

/// Which connections and clients one thread owns.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ThreadPlan {
    /// (endpoint index, global ids of the clients on this connection).
    pub conns: Vec<(usize, Vec<usize>)>,
}

impl ThreadPlan {
    pub fn clients(&self) -> usize {
        self.conns.iter().map(|c| c.1.len()).sum()
    }
}

/// Spreads connections over threads and endpoints, and clients over connections.
pub fn plan(conns: usize, clients: usize, threads: usize, endpoints: usize) -> Vec<ThreadPlan> {
    let mut by_conn: Vec<Vec<usize>> = vec![Vec::new(); conns];
    for c in 0..clients {
        by_conn[c % conns].push(c);
    }
    let mut plans = vec![ThreadPlan::default(); threads];
    for (j, ids) in by_conn.into_iter().enumerate() {
        plans[j % threads].conns.push((j % endpoints.max(1), ids));
    }
    plans
}

/// Operations `[start, end)` of thread `t`: the run's total split in proportion to its clients.
pub fn share(total: u64, clients_before: usize, clients_here: usize, clients: usize) -> (u64, u64) {
    let at = |c: usize| (u128::from(total) * c as u128 / clients.max(1) as u128) as u64;
    (at(clients_before), at(clients_before + clients_here))
}

/// A counter written by one thread and read by the progress line, on its own cache line.
#[repr(align(128))]
#[derive(Default)]
struct Counter(AtomicU64);

pub struct Shared {
    ready: Barrier,
    go: Barrier,
    start: OnceLock<Instant>,
    error: Mutex<Option<String>>,
    finished: Vec<Counter>,
    errors: Vec<Counter>,
    threads_done: AtomicUsize,
    /// Watch workloads: (puts that succeeded, when the last put ended), set once by the writer.
    pub writer_done: OnceLock<(u64, Instant)>,
    /// The main thread has taken its final CPU readings: cleanup may start.
    measured: AtomicBool,
}

impl Shared {
    fn fail(&self, e: String) {
        if let Ok(mut g) = self.error.lock() {
            g.get_or_insert(e);
        }
    }

    fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|g| g.clone())
    }
}

/// What one thread measured.
struct ThreadOut {
    hist: Histogram<u64>,
    errors: HashMap<String, u64>,
    finished: u64,
    conflicts: u64,
    calls: u64,
    last_done: Option<Instant>,
    /// Watch workloads: events this thread's watchers never had.
    missing: u64,
    /// Watch workloads, thread 0: the writer's figures.
    writer: Option<WriterOut>,
}

/// One thread's run state, shared by its clients (single-threaded: `Cell`/`RefCell`).
pub struct Local {
    index: usize,
    threads: usize,
    pub start: Instant,
    /// Next operation number of this thread, counted from 0; `limit` ends it in total mode.
    next: Cell<u64>,
    pub limit: Option<u64>,
    /// Sequential keys: the thread's first operation's number in the whole run (total mode).
    first_op: Option<u64>,
    pub end: Option<Instant>,
    /// Seconds between due times (open loop).
    pub interval_s: Option<f64>,
    pub hist: RefCell<Histogram<u64>>,
    errors: RefCell<HashMap<String, u64>>,
    finished: Cell<u64>,
    error_count: Cell<u64>,
    conflicts: Cell<u64>,
    last_done: Cell<Option<Instant>>,
    pub shared: Arc<Shared>,
}

impl Local {
    pub fn record_error(&self, msg: &str) {
        self.record_errors(msg, 1);
    }

    /// Counts `n` errors with the text `msg`.
    pub fn record_errors(&self, msg: &str, n: u64) {
        let mut errors = self.errors.borrow_mut();
        match errors.get_mut(msg) {
            Some(count) => *count += n,
            None => {
                errors.insert(msg.to_string(), n);
            }
        }
        self.error_count.set(self.error_count.get() + n);
        self.shared.errors[self.index].0.store(self.error_count.get(), Ordering::Relaxed);
    }

    /// Counts `n` operations (watch: events) finished at `at`.
    pub fn add_finished(&self, n: u64, at: Instant) {
        self.finished.set(self.finished.get() + n);
        self.shared.finished[self.index].0.store(self.finished.get(), Ordering::Relaxed);
        self.last_done.set(Some(at));
    }

    /// The number that picks a sequential key: the operation's place in the whole run (total
    /// mode), or interleaved over threads (duration mode).
    fn op_number(&self, k: u64) -> u64 {
        match self.first_op {
            Some(first) => first + k,
            None => k.wrapping_mul(self.threads as u64).wrapping_add(self.index as u64),
        }
    }
}

async fn client_loop(local: Rc<Local>, mut client: Client) -> Client {
    loop {
        let k = local.next.get();
        if local.limit.is_some_and(|limit| k >= limit) {
            break;
        }
        local.next.set(k + 1);
        let now = Instant::now();
        let begin = match local.interval_s {
            Some(interval) => {
                let due = local.start + Duration::from_secs_f64(k as f64 * interval);
                if local.end.is_some_and(|end| due >= end) {
                    break;
                }
                if due > now {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    due
                }
            }
            None => {
                if local.end.is_some_and(|end| now >= end) {
                    break;
                }
                now
            }
        };
        let result = client.op(local.op_number(k)).await;
        let done = Instant::now();
        let answered = match &result {
            Ok(_) => true,
            Err(e) => e.answered(),
        };
        if answered {
            let ns = done.saturating_duration_since(begin).as_nanos().min(u128::from(u64::MAX)) as u64;
            local.hist.borrow_mut().saturating_record(ns.max(1));
        }
        match &result {
            Ok(Done::Ok) => {}
            Ok(Done::Conflict) => local.conflicts.set(local.conflicts.get() + 1),
            Err(e) => local.record_error(e.message()),
        }
        local.add_finished(1, done);
        if result.as_ref().is_err_and(|e| e.is_fatal()) {
            break;
        }
    }
    client
}

/// Connects this thread's connections and builds its clients (on `local`).
async fn connect_all(cfg: &Config, plan: &ThreadPlan) -> Result<Vec<(usize, Client)>, String> {
    let shapes = Rc::new(Shapes::new(cfg)?);
    let mut clients = Vec::new();
    for (endpoint, ids) in &plan.conns {
        let authority = cfg.endpoints.get(*endpoint).map(|e| e.authority.as_str()).ok_or("no such endpoint")?;
        let (send, conn) = grpc::connect(authority).await?;
        // The connection runs until the runtime is dropped; its end is seen by the calls.
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        let uris = Rc::new(Uris::new(authority)?);
        for &id in ids {
            let seed = cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(id as u64);
            let picker = KeyPicker::new(cfg.key_space_size, cfg.sequential_keys, seed);
            clients.push((id, Client::new(send.clone(), uris.clone(), shapes.clone(), picker)));
        }
    }
    Ok(clients)
}

/// Puts every key of the key space once, key i by client i mod clients, untimed.
async fn prefill(cfg: &Config, clients: Vec<(usize, Client)>) -> Result<Vec<(usize, Client)>, String> {
    let space = cfg.key_space_size;
    let stride = cfg.clients as u64;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(id, mut client)| {
            tokio::task::spawn_local(async move {
                let mut index = id as u64;
                while index < space {
                    client.put(index).await.map_err(|e| format!("prefill: put of key {index}: {}", e.message()))?;
                    index += stride;
                }
                Ok::<_, String>((id, client))
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.map_err(|e| format!("prefill task: {e}"))??);
    }
    Ok(out)
}

/// Grants every client's lease (lease-keepalive), concurrently, untimed.
async fn grant_leases(cfg: &Config, clients: Vec<(usize, Client)>) -> Result<Vec<(usize, Client)>, String> {
    let ttl = cfg.lease_ttl;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(id, mut client)| {
            tokio::task::spawn_local(async move {
                client.grant_lease(ttl).await?;
                Ok::<_, String>((id, client))
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.map_err(|e| format!("lease grant task: {e}"))??);
    }
    Ok(out)
}

/// What a thread runs: request loops, or watch streams and perhaps the writer.
enum Jobs {
    Clients(Vec<(usize, Client)>),
    Watch(Box<watch::Prepared>),
}

struct Prepared {
    rt: tokio::runtime::Runtime,
    set: LocalSet,
    jobs: Jobs,
}

fn prepare(cfg: &Config, plan: &ThreadPlan, index: usize) -> Result<Prepared, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let set = LocalSet::new();
    let jobs = set.block_on(&rt, async {
        if cfg.watch.is_some() {
            return watch::prepare(cfg, plan, index).await.map(|w| Jobs::Watch(Box::new(w)));
        }
        let clients = connect_all(cfg, plan).await?;
        let clients = if cfg.prefill { prefill(cfg, clients).await? } else { clients };
        let clients =
            if cfg.workload == Workload::LeaseKeepAlive { grant_leases(cfg, clients).await? } else { clients };
        Ok::<_, String>(Jobs::Clients(clients))
    })?;
    Ok(Prepared { rt, set, jobs })
}

/// Runs a thread's request loops; returns the clients, for cleanup.
async fn run_clients(local: &Rc<Local>, clients: Vec<(usize, Client)>) -> Result<Vec<Client>, String> {
    let tasks: Vec<_> =
        clients.into_iter().map(|(_, c)| tokio::task::spawn_local(client_loop(local.clone(), c))).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.map_err(|e| format!("client task: {e}"))?);
    }
    Ok(out)
}

/// lease-keepalive, after the main thread's final CPU readings: revokes every lease, untimed.
async fn revoke_leases(local: &Local, clients: Vec<Client>) {
    let tasks: Vec<_> =
        clients.into_iter().map(|mut c| tokio::task::spawn_local(async move { c.revoke_lease().await })).collect();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => local.record_error(&e),
            Err(e) => local.record_error(&format!("lease revoke task: {e}")),
        }
    }
}

fn worker(
    index: usize,
    cfg: Arc<Config>,
    plan: ThreadPlan,
    clients_before: usize,
    shared: Arc<Shared>,
) -> Result<ThreadOut, String> {
    let prepared = prepare(&cfg, &plan, index);
    if let Err(e) = &prepared {
        shared.fail(e.clone());
    }
    shared.ready.wait();
    shared.go.wait();
    let Prepared { rt, set, mut jobs } = prepared?;
    if let Some(e) = shared.error() {
        return Err(e);
    }
    let start = *shared.start.get().ok_or("no start time")?;
    let here = plan.clients();
    let share_of = |x: f64| x * here as f64 / cfg.clients as f64;
    let (limit, first_op, end) = match cfg.stop {
        // The watch workloads' one writer makes every put.
        Stop::Total(total) if cfg.watch.is_some() => (Some(total), Some(0), None),
        Stop::Total(total) => {
            let (a, b) = share(total, clients_before, here, cfg.clients);
            (Some(b - a), Some(a), None)
        }
        Stop::Duration(d) => (None, None, Some(start + d)),
    };
    let interval_s = match (&cfg.watch, cfg.rate) {
        (Some(_), Some(r)) => Some(1.0 / r),
        (None, Some(r)) => Some(1.0 / share_of(r)),
        (_, None) => None,
    };
    let local = Rc::new(Local {
        index,
        threads: cfg.threads,
        start,
        next: Cell::new(0),
        limit,
        first_op,
        end,
        interval_s,
        hist: RefCell::new(histogram()?),
        errors: RefCell::new(HashMap::new()),
        finished: Cell::new(0),
        error_count: Cell::new(0),
        conflicts: Cell::new(0),
        last_done: Cell::new(None),
        shared: shared.clone(),
    });
    // Prefill and setup calls are not the run's.
    if let Jobs::Clients(clients) = &mut jobs {
        for (_, c) in clients.iter_mut() {
            c.calls = 0;
        }
    }
    let ran = set.block_on(&rt, async {
        match jobs {
            Jobs::Clients(clients) => run_clients(&local, clients).await.map(|c| (c, 0, None)),
            Jobs::Watch(w) => {
                let watch = cfg.watch.as_ref().ok_or("not a watch workload")?;
                watch::run(local.clone(), *w, watch).await.map(|(missing, writer)| (Vec::new(), missing, writer))
            }
        }
    });
    // Counted whatever happened, so that the main thread stops waiting.
    shared.threads_done.fetch_add(1, Ordering::SeqCst);
    let (clients, missing, writer) = ran?;
    let calls = match &writer {
        Some(w) => w.puts,
        None => clients.iter().map(|c| c.calls).sum(),
    };
    if cfg.workload == Workload::LeaseKeepAlive {
        while !shared.measured.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Its failures are errors of the run, though untimed.
        set.block_on(&rt, revoke_leases(&local, clients));
    }
    let out = ThreadOut {
        hist: local.hist.borrow().clone(),
        errors: local.errors.borrow().clone(),
        finished: local.finished.get(),
        conflicts: local.conflicts.get(),
        calls,
        last_done: local.last_done.get(),
        missing,
        writer,
    };
    drop(set);
    drop(rt);
    Ok(out)
}

/// Runs the benchmark `cfg` describes. The progress line is drawn when `cfg.progress` is set
/// and stderr is a terminal.
pub fn run(cfg: Config) -> Result<Measured, String> {
    let cfg = Arc::new(cfg);
    // Check the server's /proc entry before connecting anything.
    if let Some(pid) = cfg.server_pid {
        cpu::process_cpu_us(pid)?;
    }
    let plans = plan(cfg.conns, cfg.clients, cfg.threads, cfg.endpoints.len());
    let threads = plans.len();
    let shared = Arc::new(Shared {
        ready: Barrier::new(threads + 1),
        go: Barrier::new(threads + 1),
        start: OnceLock::new(),
        error: Mutex::new(None),
        finished: (0..threads).map(|_| Counter::default()).collect(),
        errors: (0..threads).map(|_| Counter::default()).collect(),
        threads_done: AtomicUsize::new(0),
        writer_done: OnceLock::new(),
        measured: AtomicBool::new(false),
    });
    let setup_started = Instant::now();
    let mut handles = Vec::new();
    let mut clients_before = 0;
    for (index, plan) in plans.into_iter().enumerate() {
        let (cfg, thread_shared) = (cfg.clone(), shared.clone());
        let before = clients_before;
        clients_before += plan.clients();
        let h = std::thread::Builder::new()
            .name(format!("bench-{index}"))
            .spawn(move || worker(index, cfg, plan, before, thread_shared))
            .map_err(|e| format!("spawn a worker thread: {e}"));
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The barriers count every thread: without this one, none can pass.
                shared.fail(e.clone());
                return Err(e);
            }
        }
    }
    shared.ready.wait();
    let setup = setup_started.elapsed();
    let readings = (|| -> Result<(u64, Option<u64>), String> {
        let server = cfg.server_pid.map(cpu::process_cpu_us).transpose()?;
        Ok((cpu::self_cpu_us(), server))
    })();
    if let Err(e) = &readings {
        shared.fail(e.clone());
    }
    let start = Instant::now();
    let _ = shared.start.set(start);
    shared.go.wait();
    if let Some(e) = shared.error() {
        for h in handles {
            let _ = h.join();
        }
        return Err(e);
    }
    let (client0, server0) = readings?;

    let progress = cfg.progress && std::io::stderr().is_terminal();
    let mut last_draw = (Instant::now(), 0u64);
    while shared.threads_done.load(Ordering::SeqCst) < threads && !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(POLL_INTERVAL);
        if progress && last_draw.0.elapsed() >= PROGRESS_INTERVAL {
            let ops: u64 = shared.finished.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
            let errors: u64 = shared.errors.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
            let now = Instant::now();
            let rate = (ops - last_draw.1) as f64 / now.duration_since(last_draw.0).as_secs_f64();
            // Watch: operations are events, one per watcher for each put.
            let per_put = cfg.watch.as_ref().map_or(1, |w| w.watchers) as f64;
            let done = match cfg.stop {
                Stop::Total(t) => ops as f64 / (t as f64 * per_put),
                Stop::Duration(d) => start.elapsed().as_secs_f64() / d.as_secs_f64(),
            };
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(report::progress_line(done, ops, rate, errors).as_bytes());
            let _ = err.flush();
            last_draw = (now, ops);
        }
    }
    let client1 = cpu::self_cpu_us();
    let server1 = cfg.server_pid.map(cpu::process_cpu_us).transpose();
    shared.measured.store(true, Ordering::SeqCst);
    if progress {
        let _ = std::io::stderr().write_all(b"\r\x1b[K");
    }

    let mut hist = histogram()?;
    let mut errors = BTreeMap::new();
    let (mut total, mut conflicts, mut calls, mut last) = (0, 0, 0, None::<Instant>);
    let (mut missing, mut writer) = (0, None);
    for h in handles {
        let out = h.join().map_err(|_| "a worker thread panicked".to_string())??;
        hist.add(&out.hist).map_err(|e| format!("histogram: {e:?}"))?;
        for (msg, n) in out.errors {
            *errors.entry(msg).or_insert(0) += n;
        }
        total += out.finished;
        conflicts += out.conflicts;
        calls += out.calls;
        last = last.max(out.last_done);
        missing += out.missing;
        writer = writer.or(out.writer);
    }
    // The timed part ends with the last answer (or delivery), and lasts at least --duration: an
    // open-loop run's last operation is due before the end, and the time after it is part of
    // the run all the same (else a paced run with few operations would overstate its rate).
    let span = |last: Option<Instant>| {
        let s = last.map_or_else(|| start.elapsed(), |l| l.saturating_duration_since(start));
        match cfg.stop {
            Stop::Duration(d) => s.max(d),
            Stop::Total(_) => s,
        }
    };
    let watch = match (&cfg.watch, writer) {
        (Some(_), Some(w)) => Some(WatchMeasured {
            puts: w.puts,
            puts_ok: w.ok,
            put_elapsed: span(w.last_done),
            put_hist: w.hist,
            missing,
        }),
        (Some(_), None) => return Err("the writer's thread returned no figures".into()),
        (None, _) => None,
    };
    let elapsed = span(last);
    let server_cpu_us = match (server0, server1?) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok(Measured {
        hist,
        total,
        errors,
        conflicts,
        calls,
        elapsed,
        client_cpu_us: client1.saturating_sub(client0),
        server_cpu_us,
        prefill: cfg.prefill.then_some((cfg.key_space_size, setup)),
        setup,
        watch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_spreads_connections_and_clients() {
        let p = plan(3, 7, 2, 2);
        assert_eq!(p.len(), 2);
        // conn 0: clients 0,3,6 on thread 0, endpoint 0; conn 1: 1,4 on thread 1, endpoint 1;
        // conn 2: 2,5 on thread 0, endpoint 0.
        assert_eq!(p[0].conns, vec![(0, vec![0, 3, 6]), (0, vec![2, 5])]);
        assert_eq!(p[1].conns, vec![(1, vec![1, 4])]);
        assert_eq!(p[0].clients() + p[1].clients(), 7);
        let one = plan(10, 1000, 1, 1);
        assert_eq!(one[0].conns.len(), 10);
        assert!(one[0].conns.iter().all(|c| c.1.len() == 100));
    }

    #[test]
    fn shares_cover_the_total_exactly() {
        let clients = [5usize, 2, 3];
        for total in [0u64, 1, 7, 10, 1001] {
            let mut before = 0;
            let mut sum = 0;
            let mut expect_start = 0;
            for &here in &clients {
                let (a, b) = share(total, before, here, 10);
                assert_eq!(a, expect_start, "shares are contiguous");
                sum += b - a;
                expect_start = b;
                before += here;
            }
            assert_eq!(sum, total);
        }
        assert_eq!(share(1000, 0, 5, 10), (0, 500));
    }
}
