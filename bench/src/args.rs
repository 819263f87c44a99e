//! Command-line parsing, by hand and in the style of etcd's `benchmark` tool: one workload name
//! and `--flag value` or `--flag=value` options in any order (etcd puts the global ones before the
//! workload and the workload's own after it; here every flag is accepted on either side). Boolean
//! flags take no value, or `=true`/`=false`. Every flag is checked here, so the run itself never
//! meets a value it cannot use.

use std::time::Duration;

/// The most connections one run opens.
pub const CONNS_MAX: usize = 10_000;
/// The most concurrent clients (sequential request loops) in one run.
pub const CLIENTS_MAX: usize = 1_000_000;
/// The most worker threads (one current_thread runtime each).
pub const THREADS_MAX: usize = 256;
/// Keys longer than this are refused: etcd's own limit on a request is 1.5 MiB.
pub const KEY_SIZE_MAX: usize = 64 * 1024;
/// Values longer than this are refused (etcd's default `--max-request-bytes`).
pub const VAL_SIZE_MAX: usize = 1536 * 1024;
/// The most watchers in one run.
pub const WATCHERS_MAX: usize = 1_000_000;
/// The bytes of a watch workload's value that carry the put's send time.
pub const STAMP_BYTES: usize = 8;
/// The longest lease TTL etcd grants (its `MaxLeaseTTL`, 9,000,000,000 s).
pub const LEASE_TTL_MAX: u64 = 9_000_000_000;

/// The flags that take a value (the rest are booleans).
const VALUE_FLAGS: &[&str] = &[
    "endpoints",
    "conns",
    "clients",
    "threads",
    "total",
    "duration",
    "rate",
    "key-size",
    "val-size",
    "value-size",
    "key-space-size",
    "consistency",
    "rw-ratio",
    "server-pid",
    "seed",
    "latency-out",
    "watchers",
    "watchers-per-stream",
    "drain-timeout",
    "lease-ttl",
];

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `KV/Put` of one key.
    Put,
    /// `KV/Range` of one key, linearizable or serializable (`--consistency`).
    Range,
    /// The Kubernetes update: `KV/Range` of the key for its mod_revision, then
    /// `KV/Txn{compare MOD == rev, success put}`. One operation is those two calls.
    TxnPut,
    /// Reads (`range`) and writes (`txn-put`) over one key space, `--rw-ratio` reads per write.
    TxnMixed,
    /// `/metastore.Bench/Null` with an empty message: the transport's ceiling.
    Null,
    /// One writer puts a key that `--watchers` watchers watch; latency is put-to-event.
    WatchLatency,
    /// The same machinery, led by events delivered per second (1,000 watchers by default).
    WatchFanout,
    /// Each client keeps its own lease alive on its own `LeaseKeepAlive` stream, one request
    /// at a time.
    LeaseKeepAlive,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range => "range",
            Workload::TxnPut => "txn-put",
            Workload::TxnMixed => "txn-mixed",
            Workload::Null => "null",
            Workload::WatchLatency => "watch-latency",
            Workload::WatchFanout => "watch-fanout",
            Workload::LeaseKeepAlive => "lease-keepalive",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "put" => Workload::Put,
            "range" => Workload::Range,
            "txn-put" => Workload::TxnPut,
            "txn-mixed" => Workload::TxnMixed,
            "null" => Workload::Null,
            "watch-latency" => Workload::WatchLatency,
            "watch-fanout" => Workload::WatchFanout,
            "lease-keepalive" => Workload::LeaseKeepAlive,
            _ => return None,
        })
    }

    /// Whether the workload reads keys that should exist: these prefill the key space by default.
    pub fn reads_keys(self) -> bool {
        matches!(self, Workload::Range | Workload::TxnPut | Workload::TxnMixed)
    }

    /// watch-latency and watch-fanout: one writer, many watchers, latency put-to-event.
    pub fn is_watch(self) -> bool {
        matches!(self, Workload::WatchLatency | Workload::WatchFanout)
    }
}

/// The watch workloads' shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    /// Watchers in all, each with its own watch ID.
    pub watchers: usize,
    /// Watchers created on one Watch stream (the last stream may hold fewer).
    pub per_stream: usize,
    /// `--watch-prefix`: watch the key space's prefix (its keys' shared leading zeros) and put
    /// keys picked from the key space, instead of one key.
    pub prefix: bool,
    /// How long the watchers may take, after the writer's last put, to get every event.
    pub drain_timeout: Duration,
}

impl Watch {
    /// Watch streams: the watchers, `per_stream` to a stream.
    pub fn streams(&self) -> usize {
        self.watchers.div_ceil(self.per_stream)
    }

    /// The watchers on stream `s` (every stream is full but perhaps the last).
    pub fn on_stream(&self, s: usize) -> usize {
        self.per_stream.min(self.watchers.saturating_sub(s * self.per_stream))
    }
}

/// When a run stops issuing requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this many operations in all.
    Total(u64),
    /// When this much time has passed since the start (requests in flight then still complete).
    Duration(Duration),
}

/// One server endpoint: `host:port`, what the TCP connection dials and `:authority` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub authority: String,
}

impl Endpoint {
    /// Accepts `http://host:port` (a trailing `/` is ignored) or a bare `host:port`, as etcd does.
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with("https://") {
            return Err(format!("endpoint {s}: TLS is not supported, use http://"));
        }
        let rest = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(format!("endpoint {s}: expected http://host:port"));
        };
        if host.is_empty() || rest.contains('/') || port.parse::<u16>().is_err() {
            return Err(format!("endpoint {s}: expected http://host:port"));
        }
        Ok(Endpoint { authority: rest.to_string() })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

/// Everything a run needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub workload: Workload,
    pub endpoints: Vec<Endpoint>,
    pub conns: usize,
    pub clients: usize,
    /// Worker threads; connections are spread over them round-robin.
    pub threads: usize,
    pub stop: Stop,
    /// Operations per second over all clients; `None` is a closed loop (each client sends its
    /// next request as soon as the previous one is answered).
    pub rate: Option<f64>,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space_size: u64,
    pub sequential_keys: bool,
    /// `--consistency s`: serializable ranges (served by the member without a quorum read).
    pub serializable: bool,
    /// txn-mixed: reads per write.
    pub rw_ratio: f64,
    pub prefill: bool,
    pub server_pid: Option<i32>,
    /// Print only the JSON line on stdout.
    pub json: bool,
    /// `--no-progress` was not given (the bar still needs stderr to be a terminal).
    pub progress: bool,
    /// Seeds the random key choice (and txn-mixed's read/write choice).
    pub seed: u64,
    /// `--latency-out FILE`: write the latency quantiles (every 1%, P99.9, P99.99, max) there
    /// as JSON, for latency CDF plots.
    pub latency_out: Option<String>,
    /// The watch workloads' watchers (`None` for the others). For them `clients` is the number
    /// of watch streams (what connections and threads are planned over) and the stop condition
    /// counts puts.
    pub watch: Option<Watch>,
    /// lease-keepalive: the TTL each client's lease is granted with, in seconds.
    pub lease_ttl: i64,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Run(Box<Config>),
    Help,
}

pub fn usage() -> &'static str {
    "\
Usage: metastore-bench [flags] <workload> [flags]

A load generator for the etcd v3 API (MetaStore or etcd), with its own HTTP/2 client.

Workloads:
  put          KV/Put of one key per request
  range        KV/Range of one key per request (--consistency l|s)
  txn-put      the Kubernetes update: Range the key for its mod_revision, then
               Txn{compare MOD == rev, success put}; one operation is both calls
  txn-mixed    range and txn-put over one key space, --rw-ratio reads per write
  null         /metastore.Bench/Null with an empty message: the transport's ceiling
  watch-latency
               one writer puts a key that --watchers watchers watch; each value starts
               with the put's send time, and every delivered event records put-to-event
               latency (receive time - send time)
  watch-fanout the same, led by events delivered per second (default 1000 watchers)
  lease-keepalive
               each client grants a lease (untimed), then sends LeaseKeepAlive requests on
               its own stream, one at a time; latency is request to response

Flags (etcd benchmark names; `--flag value` or `--flag=value`):
  --endpoints URLS        comma-separated http://host:port (default http://127.0.0.1:2379)
  --conns N               HTTP/2 connections, spread over the endpoints (default 1)
  --clients N             concurrent clients, spread over the connections; each one is a
                          sequential request loop (default 1)
  --threads N             worker threads, each a current_thread runtime owning whole
                          connections (default: min(conns, CPUs))
  --total N               operations in all (default 10000)
  --duration D            run for D instead (5s, 500ms, 2m; a bare number is seconds)
  --rate R                open loop: R operations/s over all clients, sent at fixed intervals;
                          latency counts from each request's scheduled time (default 0: closed loop)
  --key-size N            key bytes: zero-padded decimal, so sequential keys sort (default 8)
  --val-size N            value bytes (default 256)
  --key-space-size N      distinct keys (default 10000)
  --sequential-keys       key = operation number modulo the key space (default: random)
  --consistency l|s       range: linearizable or serializable (default l)
  --rw-ratio R            txn-mixed: reads per write (default 1)
  --prefill, --no-prefill put every key of the key space before timing, untimed
                          (default: on for range, txn-put and txn-mixed)
  --server-pid PID        report the server's CPU per request from /proc/PID/stat
  --seed N                seed for random keys (default 1)
  --latency-out FILE      also write latency quantiles (min, every 1%, P99.9, P99.99, max; µs)
                          to FILE as JSON, for CDF plots
  --json                  print only the JSON line on stdout
  --no-progress           no progress bar (it is shown only when stderr is a terminal)
  -h, --help              this text

Watch workloads (watch-latency, watch-fanout): one writer on its own connection, one put at a
time (closed loop) or paced by --rate (puts/s); --total (default 1000) and --duration count and
time the puts; --clients does not apply; --val-size at least 8 (the send time, ns since the
run's start, is the value's first 8 bytes). Watchers are created and their `created` answers
checked before timing; canceled and compacted answers are errors.
  --watchers N            watchers in all (default 1; watch-fanout: 1000)
  --watchers-per-stream N watchers sharing one Watch stream (default 1); the streams are
                          spread over --conns, so --conns is at most the number of streams
  --watch-prefix          watch the key space as a prefix (its keys' shared leading zeros) and
                          put keys picked from it (random, or --sequential-keys); default: one key
  --drain-timeout D       after the last put, how long the watchers may take to get every event;
                          events still missing then are errors (default 10s)

lease-keepalive:
  --lease-ttl S           TTL of each client's lease in seconds (default 60); the leases are
                          granted before and revoked after the timed part

Output: a summary (QPS, latency histogram and percentiles, errors by message, client and server
CPU per operation), then one JSON line on stdout. A gRPC error status counts as an answered
request (in QPS and latency) and as an error; a connection-level failure ends that client (and
a stream that ends, its keep-alive client or its watchers). For the watch workloads an operation
is a delivered event: QPS is events per second, latency is put-to-event, CPU is per event; puts
per second and put latency are reported beside them.
"
}

/// Parses the arguments after the program name.
pub fn parse<I, S>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut workload = None;
    let mut endpoints = vec![Endpoint { authority: "127.0.0.1:2379".into() }];
    let mut conns = 1usize;
    let mut clients = 1usize;
    let mut threads = None;
    let mut total = None;
    let mut duration = None;
    let mut rate = 0.0f64;
    let mut key_size = 8usize;
    let mut val_size = 256usize;
    let mut key_space_size = 10_000u64;
    let mut sequential_keys = false;
    let mut serializable = false;
    let mut rw_ratio = 1.0f64;
    let mut prefill = None;
    let mut server_pid = None;
    let mut json = false;
    let mut progress = true;
    let mut seed = 1u64;
    let mut latency_out = None;
    let mut clients_given = false;
    let mut watchers = None;
    let mut per_stream = None;
    let mut watch_prefix = None;
    let mut drain_timeout = None;
    let mut lease_ttl = None;

    let mut it = args.into_iter().map(Into::into);
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" || arg == "help" {
            return Ok(Command::Help);
        }
        let Some(flag) = arg.strip_prefix("--") else {
            if arg.starts_with('-') {
                return Err(format!("unknown flag {arg}"));
            }
            if workload.is_some() {
                return Err(format!("unexpected argument {arg:?} (one workload per run)"));
            }
            workload = Some(Workload::parse(&arg).ok_or_else(|| format!("unknown workload {arg:?}"))?);
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        // A boolean flag: bare, or with an inline true/false.
        let boolean = |inline: Option<String>| -> Result<bool, String> {
            match inline.as_deref() {
                None | Some("true") => Ok(true),
                Some("false") => Ok(false),
                Some(v) => Err(format!("--{name}: expected true or false, got {v:?}")),
            }
        };
        match name {
            "sequential-keys" => sequential_keys = boolean(inline)?,
            "json" => json = boolean(inline)?,
            "no-progress" => progress = !boolean(inline)?,
            "prefill" => prefill = Some(boolean(inline)?),
            "watch-prefix" => watch_prefix = Some(boolean(inline)?),
            "no-prefill" => prefill = Some(!boolean(inline)?),
            _ => {
                if !VALUE_FLAGS.contains(&name) {
                    return Err(format!("unknown flag --{name}"));
                }
                let value = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| format!("--{name} needs a value"))?,
                };
                match name {
                    "endpoints" => {
                        endpoints = value
                            .split(',')
                            .filter(|s| !s.trim().is_empty())
                            .map(Endpoint::parse)
                            .collect::<Result<_, _>>()?;
                        if endpoints.is_empty() {
                            return Err("--endpoints: no endpoint given".into());
                        }
                    }
                    "conns" => conns = number(name, &value, 1, CONNS_MAX as u64)? as usize,
                    "clients" => {
                        clients = number(name, &value, 1, CLIENTS_MAX as u64)? as usize;
                        clients_given = true;
                    }
                    "threads" => threads = Some(number(name, &value, 1, THREADS_MAX as u64)? as usize),
                    "total" => total = Some(number(name, &value, 1, u64::MAX)?),
                    "duration" => duration = Some(parse_duration(&value).map_err(|e| format!("--duration: {e}"))?),
                    "rate" => rate = float(name, &value)?,
                    "key-size" => key_size = number(name, &value, 1, KEY_SIZE_MAX as u64)? as usize,
                    "val-size" | "value-size" => val_size = number(name, &value, 0, VAL_SIZE_MAX as u64)? as usize,
                    "key-space-size" => key_space_size = number(name, &value, 1, u64::MAX)?,
                    "consistency" => {
                        serializable = match value.as_str() {
                            "l" | "linearizable" => false,
                            "s" | "serializable" => true,
                            _ => return Err(format!("--consistency: expected l or s, got {value:?}")),
                        }
                    }
                    "rw-ratio" => rw_ratio = float(name, &value)?,
                    "server-pid" => server_pid = Some(number(name, &value, 1, i32::MAX as u64)? as i32),
                    "seed" => seed = number(name, &value, 0, u64::MAX)?,
                    "latency-out" => {
                        if value.is_empty() {
                            return Err("--latency-out: expected a file name".into());
                        }
                        latency_out = Some(value);
                    }
                    "watchers" => watchers = Some(number(name, &value, 1, WATCHERS_MAX as u64)? as usize),
                    "watchers-per-stream" => {
                        per_stream = Some(number(name, &value, 1, WATCHERS_MAX as u64)? as usize);
                    }
                    "drain-timeout" => {
                        drain_timeout = Some(parse_duration(&value).map_err(|e| format!("--drain-timeout: {e}"))?);
                    }
                    "lease-ttl" => lease_ttl = Some(number(name, &value, 1, LEASE_TTL_MAX)? as i64),
                    _ => return Err(format!("unknown flag --{name}")),
                }
            }
        }
    }

    let workload = workload.ok_or(
        "no workload given (put, range, txn-put, txn-mixed, null, watch-latency, watch-fanout or lease-keepalive); \
         see --help",
    )?;
    let watch = if workload.is_watch() {
        if clients_given {
            return Err(format!(
                "--clients does not apply to {}: one writer puts, --watchers and --watchers-per-stream set the \
                 watchers",
                workload.name()
            ));
        }
        if val_size < STAMP_BYTES {
            return Err(format!("--val-size {val_size}: {} needs at least {STAMP_BYTES} bytes", workload.name()));
        }
        let default_watchers = if workload == Workload::WatchFanout { 1000 } else { 1 };
        let watchers = watchers.unwrap_or(default_watchers);
        let w = Watch {
            watchers,
            per_stream: per_stream.unwrap_or(1).min(watchers),
            prefix: watch_prefix.unwrap_or(false),
            drain_timeout: drain_timeout.unwrap_or(Duration::from_secs(10)),
        };
        if w.streams() < conns {
            return Err(format!(
                "--conns ({conns}) is more than the watch streams ({}): a connection needs a stream",
                w.streams()
            ));
        }
        clients = w.streams();
        Some(w)
    } else {
        let given = [
            ("watchers", watchers.is_some()),
            ("watchers-per-stream", per_stream.is_some()),
            ("watch-prefix", watch_prefix.is_some()),
            ("drain-timeout", drain_timeout.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|g| g.1) {
            return Err(format!("--{flag} is for watch-latency and watch-fanout, not {}", workload.name()));
        }
        None
    };
    if lease_ttl.is_some() && workload != Workload::LeaseKeepAlive {
        return Err(format!("--lease-ttl is for lease-keepalive, not {}", workload.name()));
    }
    if prefill == Some(true) && (watch.is_some() || workload == Workload::LeaseKeepAlive) {
        return Err(format!("--prefill does not apply to {}", workload.name()));
    }
    if clients < conns {
        return Err(format!("--clients ({clients}) must be at least --conns ({conns}): a connection needs a client"));
    }
    if !crate::keys::key_space_fits(key_size, key_space_size) {
        return Err(format!("--key-space-size {key_space_size} needs more than --key-size {key_size} decimal digits"));
    }
    let stop = match (duration, total) {
        (Some(d), None) => Stop::Duration(d),
        (None, t) => Stop::Total(t.unwrap_or(if watch.is_some() { 1000 } else { 10_000 })),
        (Some(_), Some(_)) => return Err("give --total or --duration, not both".into()),
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads.unwrap_or(cpus).min(conns);
    Ok(Command::Run(Box::new(Config {
        workload,
        endpoints,
        conns,
        clients,
        threads,
        stop,
        rate: (rate > 0.0).then_some(rate),
        key_size,
        val_size,
        key_space_size,
        sequential_keys,
        serializable,
        rw_ratio,
        prefill: prefill.unwrap_or(workload.reads_keys()),
        server_pid,
        json,
        progress,
        seed,
        latency_out,
        watch,
        lease_ttl: lease_ttl.unwrap_or(60),
    })))
}

fn number(name: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = value.trim().parse().map_err(|_| format!("--{name}: expected a whole number, got {value:?}"))?;
    if n < min || n > max {
        return Err(format!("--{name}: {n} is outside {min}..={max}"));
    }
    Ok(n)
}

fn float(name: &str, value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 => Ok(f),
        _ => Err(format!("--{name}: expected a number ≥ 0, got {value:?}")),
    }
}

/// `5s`, `500ms`, `250us`, `2m`, `1h`, or a bare number of seconds; fractions allowed (`1.5s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("expected a duration like 5s or 500ms, got {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use h, m, s, ms or us)")),
    };
    if !(secs > 0.0 && secs < 1e9) {
        return Err(format!("{s:?} is not a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Config {
        match parse(args.iter().copied()) {
            Ok(Command::Run(c)) => *c,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        match parse(args.iter().copied()) {
            Err(e) => e,
            other => panic!("{args:?} should fail: {other:?}"),
        }
    }

    #[test]
    fn defaults_match_etcd_published_benchmarks() {
        let c = run(&["put"]);
        assert_eq!(c.workload, Workload::Put);
        assert_eq!(c.endpoints, vec![Endpoint { authority: "127.0.0.1:2379".into() }]);
        assert_eq!((c.conns, c.clients, c.threads), (1, 1, 1));
        assert_eq!(c.stop, Stop::Total(10_000));
        assert_eq!((c.key_size, c.val_size, c.key_space_size), (8, 256, 10_000));
        assert_eq!(c.rate, None);
        assert!(!c.sequential_keys && !c.serializable && !c.prefill && !c.json && c.progress);
        assert!(run(&["range"]).prefill && run(&["txn-put"]).prefill && run(&["txn-mixed"]).prefill);
        assert!(!run(&["null"]).prefill);
    }

    #[test]
    fn etcd_style_flags_on_both_sides_of_the_workload() {
        let c = run(&[
            "--endpoints=http://127.0.0.1:1,localhost:2/",
            "--conns",
            "10",
            "--clients=100",
            "range",
            "--consistency",
            "s",
            "--key-size=16",
            "--val-size",
            "1",
            "--key-space-size",
            "1000",
            "--sequential-keys",
            "--no-prefill",
            "--duration=1.5s",
            "--rate",
            "2000",
            "--server-pid",
            "42",
            "--json",
            "--no-progress",
            "--threads=64",
        ]);
        assert_eq!(c.workload, Workload::Range);
        assert_eq!(
            c.endpoints.iter().map(Endpoint::url).collect::<Vec<_>>(),
            ["http://127.0.0.1:1", "http://localhost:2"]
        );
        assert_eq!((c.conns, c.clients), (10, 100));
        assert_eq!(c.threads, 10, "threads are capped at conns");
        assert!(c.serializable && c.sequential_keys && !c.prefill && c.json && !c.progress);
        assert_eq!((c.key_size, c.val_size, c.key_space_size), (16, 1, 1000));
        assert_eq!(c.stop, Stop::Duration(Duration::from_millis(1500)));
        assert_eq!(c.rate, Some(2000.0));
        assert_eq!(c.server_pid, Some(42));
        assert!(run(&["put", "--prefill"]).prefill);
        assert!(!run(&["put", "--sequential-keys=false"]).sequential_keys);
        assert!(!run(&["range", "--consistency=l"]).serializable);
        assert_eq!(run(&["txn-mixed", "--rw-ratio", "4"]).rw_ratio, 4.0);
        assert_eq!(run(&["put", "--rate=0"]).rate, None);
        assert_eq!(parse(["--help"]), Ok(Command::Help));
        assert_eq!(parse(["put", "-h"]), Ok(Command::Help));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert!(err(&[]).contains("no workload"));
        assert!(err(&["get"]).contains("unknown workload"));
        assert!(err(&["put", "range"]).contains("one workload"));
        assert!(err(&["put", "--bogus"]).contains("unknown flag --bogus"));
        assert!(err(&["put", "-x"]).contains("unknown flag"));
        assert!(err(&["put", "--conns"]).contains("needs a value"));
        assert!(err(&["put", "--conns", "0"]).contains("outside"));
        assert!(err(&["put", "--clients", "x"]).contains("whole number"));
        assert!(err(&["put", "--conns", "4", "--clients", "2"]).contains("at least --conns"));
        assert!(err(&["put", "--key-size", "2", "--key-space-size", "101"]).contains("decimal digits"));
        assert!(err(&["put", "--total", "5", "--duration", "1s"]).contains("not both"));
        assert!(err(&["put", "--duration", "5x"]).contains("unknown unit"));
        assert!(err(&["put", "--duration", "0"]).contains("positive"));
        assert!(err(&["put", "--rate", "-1"]).contains("≥ 0"));
        assert!(err(&["put", "--consistency", "x"]).contains("l or s"));
        assert!(err(&["put", "--json=yes"]).contains("true or false"));
        assert!(err(&["put", "--endpoints", "https://a:1"]).contains("TLS"));
        assert!(err(&["put", "--endpoints", "http://a"]).contains("host:port"));
        assert!(err(&["put", "--endpoints", "http://a:1/x"]).contains("host:port"));
        assert!(err(&["put", "--endpoints", ","]).contains("no endpoint"));
        assert!(err(&["put", "--latency-out"]).contains("needs a value"));
        assert!(err(&["put", "--latency-out="]).contains("file name"));
    }

    #[test]
    fn watch_and_lease_workloads() {
        let c = run(&["watch-latency"]);
        assert_eq!(c.workload, Workload::WatchLatency);
        let w = c.watch.clone().unwrap();
        assert_eq!((w.watchers, w.per_stream, w.prefix), (1, 1, false));
        assert_eq!(w.drain_timeout, Duration::from_secs(10));
        assert_eq!((c.clients, c.conns, c.stop, c.rate, c.prefill), (1, 1, Stop::Total(1000), None, false));
        let c = run(&["watch-fanout", "--conns", "10", "--watchers-per-stream", "10"]);
        let w = c.watch.clone().unwrap();
        assert_eq!((w.watchers, w.per_stream, w.streams(), c.clients), (1000, 10, 100, 100));
        let c = run(&[
            "watch-latency",
            "--watchers=10000",
            "--watchers-per-stream",
            "3",
            "--conns",
            "100",
            "--watch-prefix",
            "--drain-timeout",
            "500ms",
            "--rate",
            "50",
            "--duration",
            "2s",
            "--val-size",
            "8",
        ]);
        let w = c.watch.clone().unwrap();
        assert_eq!((w.streams(), w.on_stream(0), w.on_stream(3332), w.on_stream(3333)), (3334, 3, 3, 1));
        assert!(w.prefix && w.drain_timeout == Duration::from_millis(500));
        assert_eq!((c.rate, c.stop, c.val_size), (Some(50.0), Stop::Duration(Duration::from_secs(2)), 8));
        assert_eq!(
            run(&["watch-latency", "--watchers", "3", "--watchers-per-stream", "9"]).watch.unwrap().per_stream,
            3
        );
        let c = run(&["lease-keepalive", "--conns", "10", "--clients", "1000", "--lease-ttl", "30"]);
        assert_eq!(
            (c.workload, c.clients, c.lease_ttl, c.prefill, c.watch),
            (Workload::LeaseKeepAlive, 1000, 30, false, None)
        );
        assert_eq!(run(&["lease-keepalive"]).lease_ttl, 60);
        assert!(!run(&["watch-fanout"]).workload.reads_keys() && run(&["watch-fanout"]).workload.is_watch());
    }

    #[test]
    fn watch_and_lease_flags_are_refused_where_they_do_not_apply() {
        assert!(err(&["watch-latency", "--clients", "4"]).contains("--clients does not apply"));
        assert!(err(&["watch-fanout", "--val-size", "7"]).contains("at least 8"));
        assert!(err(&["watch-latency", "--conns", "2"]).contains("more than the watch streams (1)"));
        assert!(
            err(&["watch-fanout", "--watchers", "10", "--watchers-per-stream", "5", "--conns", "3"]).contains("(2)")
        );
        assert!(err(&["watch-latency", "--prefill"]).contains("--prefill does not apply"));
        assert!(err(&["lease-keepalive", "--prefill"]).contains("--prefill does not apply"));
        assert!(err(&["put", "--watchers", "2"]).contains("--watchers is for watch-latency"));
        assert!(err(&["range", "--watch-prefix"]).contains("--watch-prefix is for"));
        assert!(err(&["null", "--drain-timeout", "1s"]).contains("--drain-timeout is for"));
        assert!(err(&["put", "--lease-ttl", "5"]).contains("--lease-ttl is for lease-keepalive"));
        assert!(err(&["watch-latency", "--lease-ttl", "5"]).contains("--lease-ttl is for"));
        assert!(err(&["watch-latency", "--watchers", "0"]).contains("outside"));
        assert!(err(&["lease-keepalive", "--lease-ttl", "0"]).contains("outside"));
        assert!(err(&["watch-latency", "--drain-timeout", "x"]).contains("--drain-timeout"));
    }

    #[test]
    fn latency_out_names_a_file() {
        assert_eq!(run(&["put"]).latency_out, None);
        assert_eq!(run(&["put", "--latency-out", "cdf.json"]).latency_out.as_deref(), Some("cdf.json"));
        assert_eq!(run(&["--latency-out=a/b.json", "range"]).latency_out.as_deref(), Some("a/b.json"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
