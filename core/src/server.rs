//! Starting and stopping the server: the io driver, the listening sockets (one per core per URL,
//! sharing the port through SO_REUSEPORT), the rings between cores, and one pinned thread per
//! core running its own monoio reactor.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use tracing::{info, warn};

use crate::config::{Config, IoDriver};
use crate::disk::ReactorDisk;
use crate::etcd::kv::Ids;
use crate::reactor::{self, Core, CoreStats, ShardLink, Shared, StopSignal, SHARD_RING_ENTRIES_MAX};
use crate::ring;
use crate::shard::{MemberInfo, Shard, ShardConfig};
use metastore_storage::log::LogConfig;

/// The core that owns the data shard (Stage 1: one shard).
pub const SHARD_CORE: usize = 0;
/// How long a graceful stop waits for connections to finish before closing them.
pub const DRAIN_MS_MAX: u64 = 5_000;
/// The file in the data dir holding the bound client URLs, one per line.
pub const CLIENT_URLS_FILE: &str = "client-urls";
/// The bound address of each `--listen-metrics-urls` entry, one URL per line.
pub const METRICS_URLS_FILE: &str = "metrics-urls";
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// The trace exporter (`--experimental-enable-distributed-tracing`), finished after the
    /// cores so that the spans of the last calls go out too.
    exporter: Option<crate::otel::Exporter>,
    /// The bound address of each `--listen-client-urls` entry.
    pub client_addrs: Vec<SocketAddr>,
}

impl Server {
    /// Starts the graceful stop on every core.
    pub fn stop(&self) {
        self.shared.stop.stop();
    }

    /// Waits until every core has stopped (and the spans they finished are exported).
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                warn!("a core thread panicked while stopping");
            }
        }
        if let Some(e) = self.exporter {
            e.finish();
        }
    }

    pub fn driver(&self) -> &'static str {
        self.shared.driver
    }
}

/// Resolves `--io-driver` against what the kernel allows.
pub fn resolve_driver(wanted: IoDriver) -> Result<IoDriver, StartError> {
    let uring = monoio::utils::detect_uring();
    match (wanted, uring) {
        (IoDriver::Uring, false) => Err(StartError(
            "--io-driver uring: io_uring is not available (the kernel lacks it, or a policy such as \
             kernel.io_uring_disabled or seccomp blocks it); use --io-driver epoll or auto"
                .into(),
        )),
        (IoDriver::Auto, true) | (IoDriver::Uring, true) => Ok(IoDriver::Uring),
        (IoDriver::Auto, false) | (IoDriver::Epoll, _) => Ok(IoDriver::Epoll),
    }
}

/// Binds one listening socket with SO_REUSEPORT.
fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, true)?;
    }
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, LISTEN_BACKLOG)?;
    Ok(std::net::TcpListener::from(fd))
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    }
}

fn write_urls(dir: &Path, file: &str, addrs: &[SocketAddr]) -> io::Result<()> {
    let body: String = addrs.iter().map(|a| format!("http://{a}\n")).collect();
    let tmp = dir.join(format!("{file}.tmp"));
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, dir.join(file))
}

pub fn start(cfg: Config) -> Result<Server, StartError> {
    let driver = resolve_driver(cfg.io_driver)?;
    let driver_name = match driver {
        IoDriver::Uring => "io_uring",
        _ => "epoll",
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| StartError(format!("cannot create data dir {}: {e}", cfg.data_dir.display())))?;
    let cores = cfg.cores;

    // One socket per core per URL. The first binds (port 0 picks a free port, never one shared
    // with another server); the others join that exact port.
    let mut per_core: Vec<Vec<(std::net::TcpListener, bool)>> = (0..cores).map(|_| Vec::new()).collect();
    let mut client_addrs = Vec::new();
    for url in &cfg.listen_client_urls {
        let first = bind_reuseport(url.addr).map_err(|e| StartError(format!("cannot listen on {url}: {e}")))?;
        let bound =
            first.local_addr().map_err(|e| StartError(format!("cannot read the bound address of {url}: {e}")))?;
        per_core[0].push((first, false));
        for listeners in per_core.iter_mut().skip(1) {
            let l = bind_reuseport(bound).map_err(|e| StartError(format!("cannot listen on {bound}: {e}")))?;
            listeners.push((l, false));
        }
        client_addrs.push(bound);
    }
    // Metrics listeners: one socket each, on the last core (away from the shard's, core 0).
    let mut metrics_addrs = Vec::new();
    for url in &cfg.listen_metrics_urls {
        let l = bind_reuseport(url.addr).map_err(|e| StartError(format!("cannot listen on {url}: {e}")))?;
        let bound = l.local_addr().map_err(|e| StartError(format!("cannot read the bound address of {url}: {e}")))?;
        per_core[cores - 1].push((l, true));
        metrics_addrs.push(bound);
    }
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        driver: driver_name,
        stats: (0..cores).map(|_| CoreStats::new(cfg.metrics_extensive)).collect(),
        stop: StopSignal::new(cores),
        shard_stats: Default::default(),
    });

    // Finished spans go from each core to the exporter thread, started once recovery succeeded.
    let (span_rings, span_consumers) =
        if cfg.tracing.enabled { crate::otel::rings(cores) } else { (Vec::new(), Vec::new()) };
    let mut span_rings = span_rings.into_iter();

    // Rings: every other core → shard core (requests), shard core → every other core (replies).
    let mut inbound = Vec::new();
    let mut links: Vec<Option<ShardLinkParts>> = (0..cores).map(|_| None).collect();
    for (i, link) in links.iter_mut().enumerate() {
        if i == SHARD_CORE {
            continue;
        }
        let (req_tx, req_rx) = ring::channel(SHARD_RING_ENTRIES_MAX);
        let (rep_tx, rep_rx) = ring::channel(SHARD_RING_ENTRIES_MAX);
        inbound.push((req_rx, rep_tx));
        *link = Some(ShardLinkParts::Remote(req_tx, rep_rx));
    }
    links[SHARD_CORE] = Some(ShardLinkParts::Local(inbound));

    let cpus = allowed_cpus();
    let mut threads = Vec::with_capacity(cores);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut ready_tx = Some(ready_tx);
    for (id, (listeners, link)) in per_core.into_iter().zip(links).enumerate() {
        let shared = shared.clone();
        let cpu = (!cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        let Some(link) = link else { continue };
        let ready = if id == SHARD_CORE { ready_tx.take() } else { None };
        let spans = span_rings.next();
        let t = std::thread::Builder::new()
            .name(format!("metastore-core-{id}"))
            .spawn(move || run_core(id, cpu, driver, shared, link, listeners, ready, spans))
            .map_err(|e| StartError(format!("cannot start core thread {id}: {e}")))?;
        threads.push(t);
    }
    // Recovery runs on the shard's core; nothing is announced until it has succeeded.
    let recovered = ready_rx.recv().unwrap_or_else(|_| Err("the shard's core stopped during recovery".into()));
    if let Err(e) = recovered {
        shared.stop.stop();
        for t in threads {
            let _ = t.join();
        }
        return Err(StartError(format!("cannot open the data in {}: {e}", cfg.data_dir.display())));
    }
    let exporter = if cfg.tracing.enabled {
        match crate::otel::Exporter::start(&cfg.tracing, span_consumers) {
            Ok(e) => Some(e),
            Err(e) => {
                shared.stop.stop();
                for t in threads {
                    let _ = t.join();
                }
                return Err(StartError(format!("cannot start the trace exporter thread: {e}")));
            }
        }
    } else {
        None
    };
    write_urls(&cfg.data_dir, CLIENT_URLS_FILE, &client_addrs)
        .map_err(|e| StartError(format!("cannot write {CLIENT_URLS_FILE} in {}: {e}", cfg.data_dir.display())))?;
    for a in &client_addrs {
        info!(address = %a, "serving client traffic insecurely (h2c gRPC and HTTP/1.1)");
    }
    if !metrics_addrs.is_empty() {
        write_urls(&cfg.data_dir, METRICS_URLS_FILE, &metrics_addrs)
            .map_err(|e| StartError(format!("cannot write {METRICS_URLS_FILE} in {}: {e}", cfg.data_dir.display())))?;
    }
    for a in &metrics_addrs {
        info!(address = %a, "serving /metrics and health checks insecurely (HTTP/1.1)");
    }
    info!(
        driver = driver_name,
        cores,
        data_dir = %cfg.data_dir.display(),
        name = %cfg.name,
        "metastore started"
    );
    Ok(Server { shared, threads, exporter, client_addrs })
}

enum ShardLinkParts {
    Local(Vec<(ring::Receiver<crate::shard::Envelope>, ring::Sender<crate::shard::ReplyEnvelope>)>),
    Remote(ring::Sender<crate::shard::Envelope>, ring::Receiver<crate::shard::ReplyEnvelope>),
}

fn shard_config(cfg: &Config) -> ShardConfig {
    ShardConfig {
        data_dir: cfg.data_dir.clone(),
        quota_bytes: cfg.quota_backend_bytes,
        auto_compaction: cfg.auto_compaction,
        snapshot_count: cfg.snapshot_count,
        slow_request: cfg.warning_apply_duration,
        log: LogConfig::default(),
        tick_ms: cfg.heartbeat_ms,
        election_ticks: (cfg.election_timeout_ms / cfg.heartbeat_ms.max(1)) as usize,
    }
}

fn member_info(cfg: &Config) -> MemberInfo {
    MemberInfo {
        // The term is raft's, filled in per response.
        ids: Ids { cluster_id: cfg.cluster_id(), member_id: cfg.member_id(), raft_term: 0 },
        name: cfg.name.clone(),
        peer_urls: cfg.initial_advertise_peer_urls.clone(),
        client_urls: cfg.advertise_client_urls.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_core(
    id: usize,
    cpu: Option<usize>,
    driver: IoDriver,
    shared: Arc<Shared>,
    link: ShardLinkParts,
    listeners: Vec<(std::net::TcpListener, bool)>,
    ready: Option<std::sync::mpsc::Sender<Result<(), String>>>,
    spans: Option<rtrb::Producer<crate::otel::SpanRecord>>,
) {
    if let Some(cpu) = cpu {
        if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
            warn!(core = id, cpu, error = ?e, "cannot pin core thread");
        }
    }
    let main = core_main(id, shared.clone(), link, listeners, ready, spans);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match driver {
        IoDriver::Uring => {
            RuntimeBuilder::<IoUringDriver>::new().enable_timer().build().map(|mut rt| rt.block_on(main))
        }
        _ => RuntimeBuilder::<LegacyDriver>::new().enable_timer().build().map(|mut rt| rt.block_on(main)),
    }));
    let Ok(result) = run else {
        // A panic outside one request's handling (applying entries, the loops themselves): this
        // core's state is unknown, and a half-working server could diverge from what it
        // acknowledged. Stop at once; every acknowledged write is on disk.
        tracing::error!(core = id, "a core panicked outside a request: stopping the server");
        std::process::abort();
    };
    if let Err(e) = result {
        tracing::error!(core = id, error = %e, "cannot start the core's reactor");
        // Without this core the server is not whole: stop the others too.
        shared.stop.stop();
    }
}

async fn core_main(
    id: usize,
    shared: Arc<Shared>,
    link: ShardLinkParts,
    listeners: Vec<(std::net::TcpListener, bool)>,
    ready: Option<std::sync::mpsc::Sender<Result<(), String>>>,
    spans: Option<rtrb::Producer<crate::otel::SpanRecord>>,
) {
    let link = match link {
        ShardLinkParts::Local(inbound) => {
            // The shard recovers here, inside this core's reactor, before anything is served.
            let mut opened = Shard::open(ReactorDisk, &shard_config(&shared.cfg), member_info(&shared.cfg));
            // Apply everything the log holds before announcing anything (see finish_recovery).
            if let Ok(s) = &mut opened {
                if let Err(e) = s.finish_recovery().await {
                    opened = Err(e);
                }
            }
            let shard = match opened {
                Ok(s) => {
                    if let Some(r) = &ready {
                        let _ = r.send(Ok(()));
                    }
                    s
                }
                Err(e) => {
                    if let Some(r) = &ready {
                        let _ = r.send(Err(e));
                    }
                    shared.stop.stop();
                    return;
                }
            };
            ShardLink::Local { shard: std::cell::RefCell::new(shard), inbound: std::cell::RefCell::new(inbound) }
        }
        ShardLinkParts::Remote(tx, rx) => ShardLink::Remote {
            tx: std::cell::RefCell::new(tx),
            rx: std::cell::RefCell::new(rx),
            space: Default::default(),
        },
    };
    let mut core = Core::new(id, shared.clone(), link);
    core.tracer = spans.map(|out| Rc::new(crate::otel::CoreTracer::new(shared.clone(), id, out)));
    let core = Rc::new(core);
    for (l, metrics) in listeners {
        match monoio::net::TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(accept_loop(core.clone(), l, metrics));
            }
            Err(e) => {
                tracing::error!(core = id, error = %e, "cannot register listener");
                shared.stop.stop();
            }
        }
    }
    monoio::spawn(reactor::timer_loop(core.clone()));
    monoio::spawn(reactor::reply_loop(core.clone()));
    monoio::spawn(reactor::shard_loop(core.clone()));
    monoio::spawn(crate::watch::watch_loop(core.clone()));
    shared.stop.wait(id).await;
    core.start_drain();
    monoio::select! {
        _ = core.drained.notified() => {}
        _ = monoio::time::sleep(Duration::from_millis(DRAIN_MS_MAX)) => {
            warn!(core = id, connections = core.conn_count(), "drain timed out; closing the remaining connections");
        }
    }
}

/// Accepts client connections, or with `metrics` those of a `--listen-metrics-urls` listener.
async fn accept_loop(core: Rc<Core>, listener: monoio::net::TcpListener, metrics: bool) {
    loop {
        monoio::select! {
            r = listener.accept() => match r {
                Ok((stream, _peer)) if metrics => {
                    monoio::spawn(crate::conn::serve_metrics(core.clone(), stream));
                }
                Ok((stream, _peer)) => {
                    monoio::spawn(crate::conn::serve(core.clone(), stream));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(core = core.id, error = %e, "accept failed");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = core.wait_drain() => return,
        }
    }
}
