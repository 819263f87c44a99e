//! The server's configuration: one typed structure with documented defaults, filled from etcd's
//! flags (Go `flag` syntax: `--name value`, `--name=value`, a single dash accepted). Every value
//! is validated here, at start, with one clear message per bad value; nothing else in the server
//! parses configuration.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// Which io driver each core's reactor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring where the kernel allows it, else epoll.
    Auto,
    Uring,
    Epoll,
}

impl fmt::Display for IoDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoDriver::Auto => "auto",
            IoDriver::Uring => "uring",
            IoDriver::Epoll => "epoll",
        })
    }
}

/// A client URL (`http://host:port`). `https://` is refused until TLS exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientUrl {
    pub host: String,
    pub addr: SocketAddr,
}

impl fmt::Display for ClientUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.addr)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `--name`: human-readable name of this member. Default `default`.
    pub name: String,
    /// `--data-dir`: where the data lives. Default `${name}.metastore`.
    pub data_dir: PathBuf,
    /// `--listen-client-urls`: where clients connect. Default `http://localhost:2379`.
    pub listen_client_urls: Vec<ClientUrl>,
    /// `--advertise-client-urls`: what this member tells clients. Default `http://localhost:2379`.
    pub advertise_client_urls: Vec<String>,
    /// `--cores`: reactor threads, one per core. Default: all online CPUs this process may use.
    pub cores: usize,
    /// `--io-driver`: `uring`, `epoll` or `auto` (default).
    pub io_driver: IoDriver,
    /// `--max-concurrent-streams`: HTTP/2 streams per connection (etcd default 2^32-1); more
    /// are refused with REFUSED_STREAM.
    pub max_concurrent_streams: u32,
    /// `--max-connections-per-core`: client connections one core serves at once; more are
    /// closed as they are accepted (MetaStore's; default 16384).
    pub max_connections_per_core: u32,
    /// `--max-header-list-size`: SETTINGS_MAX_HEADER_LIST_SIZE, advertised and enforced (bytes,
    /// RFC 9113 accounting; MetaStore's; default 16 KiB, gRPC C-core's hard metadata limit). A
    /// header block whose encoded size alone exceeds it closes the connection.
    pub max_header_list_size: u32,
    /// `--grpc-keepalive-min-time`: a client pinging more often (or, with no call open, at all
    /// within 2 hours) gets GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") after grpc-go's strikes
    /// (etcd default 5 s).
    pub grpc_keepalive_min_time: std::time::Duration,
    /// `--idle-connection-timeout`: a connection without a call for this long is sent GOAWAY
    /// and closed (grpc-go's MaxConnectionIdle; off by default, as in etcd).
    pub idle_connection_timeout: Option<std::time::Duration>,
    /// `--read-header-timeout`: how long a client may take to finish the connection preface, a
    /// frame or a header block it has started, or an HTTP/1.1 request head (slowloris); default
    /// 10 s, 0 = off.
    pub read_header_timeout: Option<std::time::Duration>,
    /// `--request-rate-limit-per-connection`: calls per second one connection may start (burst
    /// one second's worth); beyond it `etcdserver: too many requests`. 0 (default) = off.
    pub request_rate_per_connection: u32,
    /// `--request-rate-limit-per-core`: the same, over all connections of one core.
    pub request_rate_per_core: u32,
    /// `--max-request-bytes`: largest client request (etcd default 1.5 MiB); the gRPC receive
    /// limit is this plus 512 KiB, as in etcd.
    pub max_request_bytes: u32,
    /// `--max-txn-ops`: most operations in one txn (etcd default 128).
    pub max_txn_ops: u32,
    /// `--initial-cluster-token`: names the cluster; part of the member and cluster IDs.
    pub initial_cluster_token: String,
    /// `--initial-advertise-peer-urls`: this member's peer URLs as MemberList reports them.
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--snapshot-count`: applied entries between checkpoints (etcd default 100,000).
    pub snapshot_count: u64,
    /// `--quota-backend-bytes`: raise NOSPACE when the data grows past this (etcd default
    /// 2 GiB; 0 means the default).
    pub quota_backend_bytes: u64,
    /// `--auto-compaction-mode` and `--auto-compaction-retention` (default periodic, 0 = off).
    pub auto_compaction: Option<crate::compactor::Mode>,
    /// `--experimental-bench-null`: serve `/metastore.Bench/Null`, a call that does no storage
    /// work, for measuring the transport's ceiling (off by default; not part of the etcd API).
    pub bench_null: bool,
    /// `--listen-metrics-urls`: extra HTTP/1.1 listeners for /metrics and the health endpoints.
    pub listen_metrics_urls: Vec<ClientUrl>,
    /// `--metrics extensive` (default basic): also keep each method's handling-time histogram.
    pub metrics_extensive: bool,
    /// `--experimental-watch-progress-notify-interval`: how often idle watchers that asked for
    /// it get a progress notification (etcd default 10 minutes).
    pub watch_progress_notify_interval: std::time::Duration,
    /// `--heartbeat-interval` (ms, etcd default 100): raft's tick.
    pub heartbeat_ms: u64,
    /// `--election-timeout` (ms, etcd default 1000; at least 5 heartbeats, at most 50 s).
    pub election_timeout_ms: u64,
    /// `--log-level`: debug, info (default), warn or error (`RUST_LOG`, when set, wins).
    pub log_level: String,
    /// `--log-outputs`: where logs go.
    pub log_output: LogOutput,
    /// `--experimental-warning-apply-duration` (etcd default 100 ms): a request the shard takes
    /// longer than this to answer is logged as slow, with its method, key prefix and stage.
    pub warning_apply_duration: std::time::Duration,
    /// `--experimental-enable-distributed-tracing` and its companions: OpenTelemetry spans of
    /// gRPC calls, exported over OTLP/gRPC (off by default, as in etcd).
    pub tracing: Tracing,
    /// What parsing noticed and did not refuse (ignored flags, unknown variables): logged at start.
    pub warnings: Vec<String>,
}

/// etcd 3.5's distributed tracing settings (`--experimental-distributed-tracing-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracing {
    /// `--experimental-enable-distributed-tracing` (default false): export a span per sampled
    /// gRPC call.
    pub enabled: bool,
    /// `--experimental-distributed-tracing-address`: the collector's OTLP/gRPC endpoint,
    /// `host:port` (default `localhost:4317`), spoken to in plaintext (h2c), as etcd does.
    pub address: String,
    /// `--experimental-distributed-tracing-service-name` (default `etcd`): the resource's
    /// `service.name`.
    pub service_name: String,
    /// `--experimental-distributed-tracing-instance-id` (default none): the resource's
    /// `service.instance.id`, when set.
    pub instance_id: String,
    /// `--experimental-distributed-tracing-sampling-rate`: calls sampled per million that carry
    /// no sampling decision of their own (default 0: none). A call whose W3C `traceparent` says
    /// sampled is always sampled, one that says not sampled never is (OpenTelemetry's
    /// parent-based sampler, as etcd configures it).
    pub sampling_rate_per_million: u32,
}

/// The sampling rate's unit and upper bound: one million (etcd's `maxSamplingRatePerMillion`).
pub const SAMPLING_RATE_MAX: u32 = 1_000_000;

impl Default for Tracing {
    fn default() -> Self {
        Self {
            enabled: false,
            address: "localhost:4317".into(),
            service_name: "etcd".into(),
            instance_id: String::new(),
            sampling_rate_per_million: 0,
        }
    }
}

/// `--log-outputs`: `default`/`stderr`, `stdout`, or a file (appended to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    Stderr,
    Stdout,
    File(PathBuf),
}

/// etcd's gRPC overhead allowance on top of `--max-request-bytes`.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// etcd's default backend quota (2 GiB).
pub const QUOTA_BYTES_DEFAULT: u64 = 2 << 30;
/// `--max-header-list-size` below this is refused: a request's pseudo-headers alone need ~150.
pub const HEADER_LIST_SIZE_MIN: u32 = 1024;
/// `--cores` above this is refused: each core owns rings to every other, so cost grows as n².
pub const CORES_MAX: usize = 256;

impl Default for Config {
    fn default() -> Self {
        let localhost =
            ClientUrl { host: "localhost".into(), addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2379) };
        Self {
            name: "default".into(),
            data_dir: PathBuf::from("default.metastore"),
            listen_client_urls: vec![localhost],
            advertise_client_urls: vec!["http://localhost:2379".into()],
            cores: available_cpus(),
            io_driver: IoDriver::Auto,
            max_concurrent_streams: u32::MAX,
            max_connections_per_core: 16_384,
            max_header_list_size: 16 << 10,
            grpc_keepalive_min_time: std::time::Duration::from_secs(5),
            idle_connection_timeout: None,
            read_header_timeout: Some(std::time::Duration::from_secs(10)),
            request_rate_per_connection: 0,
            request_rate_per_core: 0,
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            snapshot_count: 100_000,
            quota_backend_bytes: QUOTA_BYTES_DEFAULT,
            auto_compaction: None,
            bench_null: false,
            listen_metrics_urls: Vec::new(),
            metrics_extensive: false,
            watch_progress_notify_interval: std::time::Duration::from_secs(600),
            warning_apply_duration: std::time::Duration::from_millis(100),
            tracing: Tracing::default(),
            heartbeat_ms: 100,
            election_timeout_ms: 1000,
            log_level: "info".into(),
            log_output: LogOutput::Stderr,
            warnings: Vec::new(),
        }
    }
}

impl Config {
    /// The gRPC receive limit derived from `--max-request-bytes`, as etcd derives it.
    pub fn recv_message_bytes_max(&self) -> usize {
        self.max_request_bytes as usize + GRPC_OVERHEAD_BYTES
    }

    /// This member's ID: derived, as etcd's is, from its peer URLs and the cluster token, so it
    /// is stable across restarts with the same configuration.
    pub fn member_id(&self) -> u64 {
        let mut urls = self.initial_advertise_peer_urls.clone();
        urls.sort();
        fnv1a(urls.join(",").as_bytes(), fnv1a(self.initial_cluster_token.as_bytes(), FNV_OFFSET))
    }

    /// The cluster's ID: derived from its members' IDs and the token.
    pub fn cluster_id(&self) -> u64 {
        fnv1a(&self.member_id().to_be_bytes(), fnv1a(self.initial_cluster_token.as_bytes(), FNV_OFFSET ^ 1))
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// How many CPUs this process may run on.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Serve(Box<Config>),
    Help,
    Version,
}

/// One flag: name, value placeholder, help text.
struct Flag {
    name: &'static str,
    value: &'static str,
    help: &'static str,
}

const FLAGS: &[Flag] = &[
    Flag { name: "name", value: "NAME", help: "Human-readable name for this member. (default \"default\")" },
    Flag { name: "data-dir", value: "DIR", help: "Path to the data directory. (default \"${name}.metastore\")" },
    Flag {
        name: "listen-client-urls",
        value: "URLS",
        help: "Comma-separated URLs to listen on for client traffic; port 0 binds a free port, which is \
               logged and written to DATA-DIR/client-urls. (default \"http://localhost:2379\")",
    },
    Flag {
        name: "advertise-client-urls",
        value: "URLS",
        help: "Comma-separated client URLs to advertise to the public. (default \"http://localhost:2379\")",
    },
    Flag { name: "cores", value: "N", help: "Reactor threads, one pinned per CPU. (default: all online CPUs)" },
    Flag {
        name: "io-driver",
        value: "uring|epoll|auto",
        help: "IO driver of each reactor; auto uses io_uring where the kernel allows it. (default \"auto\")",
    },
    Flag {
        name: "max-concurrent-streams",
        value: "N",
        help: "Maximum concurrent HTTP/2 streams per client connection. (default 4294967295)",
    },
    Flag {
        name: "max-connections-per-core",
        value: "N",
        help: "Maximum client connections each core serves at once; more are closed as they are accepted. (default 16384)",
    },
    Flag {
        name: "max-header-list-size",
        value: "BYTES",
        help: "HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE, advertised and enforced: a request with a larger header list is refused, a connection sending a header block larger than this even encoded is closed. (default 16384)",
    },
    Flag {
        name: "grpc-keepalive-min-time",
        value: "DURATION",
        help: "Minimum interval a client should wait before pinging the server; more frequent pings (or any within 2h with no call open) end the connection with GOAWAY too_many_pings after 3 strikes. (default 5s)",
    },
    Flag {
        name: "idle-connection-timeout",
        value: "DURATION",
        help: "Close (GOAWAY, then close) a client connection that has had no call open for this long; 0 disables. (default 0)",
    },
    Flag {
        name: "read-header-timeout",
        value: "DURATION",
        help: "Close a connection that takes longer than this to finish the preface, a frame or a header block it started, or an HTTP/1.1 request head (slowloris); 0 disables. (default 10s)",
    },
    Flag {
        name: "request-rate-limit-per-connection",
        value: "N",
        help: "Calls per second one connection may start (bursts of one second's worth); others are answered 'etcdserver: too many requests'; 0 disables. (default 0)",
    },
    Flag {
        name: "request-rate-limit-per-core",
        value: "N",
        help: "Calls per second all the connections of one core may start together, as above; 0 disables. (default 0)",
    },
    Flag {
        name: "max-request-bytes",
        value: "BYTES",
        help: "Maximum client request size in bytes the server will accept. (default 1572864)",
    },
    Flag {
        name: "max-txn-ops",
        value: "N",
        help: "Maximum number of operations permitted in a transaction. (default 128)",
    },
    Flag {
        name: "initial-cluster-token",
        value: "TOKEN",
        help: "Initial cluster token for the cluster during bootstrap. (default \"etcd-cluster\")",
    },
    Flag {
        name: "initial-advertise-peer-urls",
        value: "URLS",
        help: "This member's peer URLs to advertise to the rest of the cluster. (default \"http://localhost:2380\")",
    },
    Flag {
        name: "snapshot-count",
        value: "N",
        help: "Number of committed transactions to trigger a checkpoint of the data to disk. (default 100000)",
    },
    Flag {
        name: "auto-compaction-mode",
        value: "periodic|revision",
        help: "Interpret 'auto-compaction-retention' as hours or a duration when periodic, as a revision count when revision. (default \"periodic\")",
    },
    Flag {
        name: "auto-compaction-retention",
        value: "N|DURATION",
        help: "Auto compaction retention for the MVCC key-value store; 0 disables it. (default \"0\")",
    },
    Flag {
        name: "quota-backend-bytes",
        value: "BYTES",
        help: "Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB). (default 0)",
    },
    Flag {
        name: "config-file",
        value: "FILE",
        help: "Path to a YAML configuration file (etcd's keys); when given, other flags and environment variables are ignored.",
    },
    Flag { name: "heartbeat-interval", value: "MS", help: "Time (in milliseconds) of a heartbeat interval. (default 100)" },
    Flag {
        name: "election-timeout",
        value: "MS",
        help: "Time (in milliseconds) for an election to timeout; at least 5 heartbeats. (default 1000)",
    },
    Flag { name: "logger", value: "zap", help: "The logger: only \"zap\", etcd's default, is accepted. (default \"zap\")" },
    Flag {
        name: "log-level",
        value: "LEVEL",
        help: "Log level: debug, info, warn, error, panic or fatal (RUST_LOG, when set, wins). (default \"info\")",
    },
    Flag {
        name: "log-outputs",
        value: "OUTPUT",
        help: "Where logs go: default (stderr), stderr, stdout, or a file path. (default \"default\")",
    },
    Flag { name: "cert-file", value: "FILE", help: "Client TLS certificate: refused when set (TLS is not supported yet)." },
    Flag { name: "key-file", value: "FILE", help: "Client TLS key: refused when set (TLS is not supported yet)." },
    Flag { name: "trusted-ca-file", value: "FILE", help: "Client TLS CA: refused when set (TLS is not supported yet)." },
    Flag { name: "client-cert-auth", value: BOOL, help: "Client certificate auth: refused when true (TLS is not supported yet)." },
    Flag { name: "auto-tls", value: BOOL, help: "Self-signed client TLS: refused when true (TLS is not supported yet)." },
    Flag { name: "peer-cert-file", value: "FILE", help: "Peer TLS certificate: refused when set (TLS is not supported yet)." },
    Flag { name: "peer-key-file", value: "FILE", help: "Peer TLS key: refused when set (TLS is not supported yet)." },
    Flag { name: "peer-trusted-ca-file", value: "FILE", help: "Peer TLS CA: refused when set (TLS is not supported yet)." },
    Flag { name: "peer-client-cert-auth", value: BOOL, help: "Peer certificate auth: refused when true (TLS is not supported yet)." },
    Flag { name: "peer-auto-tls", value: BOOL, help: "Self-signed peer TLS: refused when true (TLS is not supported yet)." },
    Flag { name: "listen-peer-urls", value: "URLS", help: NO_EFFECT },
    Flag { name: "initial-cluster", value: "CLUSTER", help: NO_EFFECT },
    Flag { name: "initial-cluster-state", value: "new|existing", help: NO_EFFECT },
    Flag { name: "wal-dir", value: "DIR", help: NO_EFFECT },
    Flag { name: "listen-client-http-urls", value: "URLS", help: NO_EFFECT },
    Flag { name: "experimental-snapshot-catchup-entries", value: "N", help: NO_EFFECT },
    Flag { name: "initial-election-tick-advance", value: BOOL, help: NO_EFFECT },
    Flag { name: "pre-vote", value: BOOL, help: NO_EFFECT },
    Flag { name: "strict-reconfig-check", value: BOOL, help: NO_EFFECT },
    Flag { name: "grpc-keepalive-interval", value: "DURATION", help: NO_EFFECT },
    Flag { name: "grpc-keepalive-timeout", value: "DURATION", help: NO_EFFECT },
    Flag { name: "auth-token", value: "TOKEN", help: NO_EFFECT },
    Flag { name: "auth-token-ttl", value: "N", help: NO_EFFECT },
    Flag { name: "bcrypt-cost", value: "N", help: NO_EFFECT },
    Flag { name: "enable-grpc-gateway", value: BOOL, help: NO_EFFECT },
    Flag { name: "enable-pprof", value: BOOL, help: NO_EFFECT },
    Flag { name: "cors", value: "ORIGINS", help: NO_EFFECT },
    Flag { name: "host-whitelist", value: "HOSTS", help: NO_EFFECT },
    Flag { name: "enable-log-rotation", value: BOOL, help: NO_EFFECT },
    Flag { name: "log-rotation-config-json", value: "JSON", help: NO_EFFECT },
    Flag { name: "max-snapshots", value: "N", help: NO_EFFECT },
    Flag { name: "max-wals", value: "N", help: NO_EFFECT },
    Flag { name: "backend-batch-interval", value: "DURATION", help: NO_EFFECT },
    Flag { name: "backend-batch-limit", value: "N", help: NO_EFFECT },
    Flag { name: "backend-bbolt-freelist-type", value: "TYPE", help: NO_EFFECT },
    Flag { name: "socket-reuse-port", value: BOOL, help: NO_EFFECT },
    Flag { name: "socket-reuse-address", value: BOOL, help: NO_EFFECT },
    Flag { name: "force-new-cluster", value: BOOL, help: NO_EFFECT },
    Flag { name: "unsafe-no-fsync", value: BOOL, help: NO_EFFECT },
    Flag { name: "discovery", value: "URL", help: NO_EFFECT },
    Flag { name: "discovery-srv", value: "DOMAIN", help: NO_EFFECT },
    Flag { name: "discovery-fallback", value: "exit|proxy", help: NO_EFFECT },
    Flag { name: "discovery-proxy", value: "URL", help: NO_EFFECT },
    Flag { name: "proxy", value: "off", help: NO_EFFECT },
    Flag { name: "enable-v2", value: BOOL, help: NO_EFFECT },
    Flag { name: "v2-deprecation", value: "LEVEL", help: NO_EFFECT },
    Flag { name: "experimental-enable-v2v3", value: "PREFIX", help: NO_EFFECT },
    Flag { name: "experimental-compaction-batch-limit", value: "N", help: NO_EFFECT },
    Flag { name: "experimental-compaction-sleep-interval", value: "DURATION", help: NO_EFFECT },
    Flag { name: "experimental-enable-lease-checkpoint", value: BOOL, help: NO_EFFECT },
    Flag { name: "experimental-enable-lease-checkpoint-persist", value: BOOL, help: NO_EFFECT },
    Flag { name: "experimental-initial-corrupt-check", value: BOOL, help: NO_EFFECT },
    Flag { name: "experimental-corrupt-check-time", value: "DURATION", help: NO_EFFECT },
    Flag { name: "experimental-compact-hash-check-enabled", value: BOOL, help: NO_EFFECT },
    Flag { name: "experimental-compact-hash-check-time", value: "DURATION", help: NO_EFFECT },
    Flag {
        name: "experimental-warning-apply-duration",
        value: "DURATION",
        help: "Requests the shard takes longer than this to answer are logged as slow (method, key prefix, stage). (default 100ms)",
    },
    Flag { name: "experimental-txn-mode-write-with-shared-buffer", value: BOOL, help: NO_EFFECT },
    Flag { name: "experimental-stop-grpc-service-on-defrag", value: BOOL, help: NO_EFFECT },
    Flag { name: "experimental-downgrade-check-time", value: "DURATION", help: NO_EFFECT },
    Flag { name: "experimental-memory-mlock", value: BOOL, help: NO_EFFECT },
    Flag { name: "experimental-bootstrap-defrag-threshold-megabytes", value: "N", help: NO_EFFECT },
    Flag {
        name: "experimental-enable-distributed-tracing",
        value: BOOL,
        help: "Enable distributed tracing: a span per sampled gRPC call, exported with OpenTelemetry's OTLP/gRPC \
               to --experimental-distributed-tracing-address. (default false)",
    },
    Flag {
        name: "experimental-distributed-tracing-address",
        value: "HOST:PORT",
        help: "The OTLP/gRPC collector spans are sent to, in plaintext (if enabled with \
               experimental-enable-distributed-tracing flag). (default \"localhost:4317\")",
    },
    Flag {
        name: "experimental-distributed-tracing-service-name",
        value: "NAME",
        help: "The service.name of the exported spans; use the same for every member (if enabled with \
               experimental-enable-distributed-tracing flag). (default \"etcd\")",
    },
    Flag {
        name: "experimental-distributed-tracing-instance-id",
        value: "ID",
        help: "The service.instance.id of the exported spans, unique per member; unset when empty (if enabled \
               with experimental-enable-distributed-tracing flag). (default \"\")",
    },
    Flag {
        name: "experimental-distributed-tracing-sampling-rate",
        value: "N",
        help: "Calls to sample per million, 0 to 1000000, among those whose W3C traceparent metadata does not \
               decide: a call whose traceparent says sampled is traced as that trace's child, one that says not \
               sampled is not (if enabled with experimental-enable-distributed-tracing flag). (default 0)",
    },
    Flag { name: "experimental-peer-skip-client-san-verification", value: BOOL, help: NO_EFFECT },
    Flag { name: "raft-read-timeout", value: "DURATION", help: NO_EFFECT },
    Flag { name: "raft-write-timeout", value: "DURATION", help: NO_EFFECT },
    Flag { name: "client-crl-file", value: "FILE", help: NO_EFFECT },
    Flag { name: "client-cert-allowed-hostname", value: "HOST", help: NO_EFFECT },
    Flag { name: "peer-crl-file", value: "FILE", help: NO_EFFECT },
    Flag { name: "peer-cert-allowed-cn", value: "CN", help: NO_EFFECT },
    Flag { name: "peer-cert-allowed-hostname", value: "HOST", help: NO_EFFECT },
    Flag { name: "client-cert-file", value: "FILE", help: NO_EFFECT },
    Flag { name: "client-key-file", value: "FILE", help: NO_EFFECT },
    Flag { name: "peer-client-cert-file", value: "FILE", help: NO_EFFECT },
    Flag { name: "peer-client-key-file", value: "FILE", help: NO_EFFECT },
    Flag { name: "cipher-suites", value: "SUITES", help: NO_EFFECT },
    Flag { name: "tls-min-version", value: "VERSION", help: NO_EFFECT },
    Flag { name: "tls-max-version", value: "VERSION", help: NO_EFFECT },
    Flag { name: "self-signed-cert-validity", value: "N", help: NO_EFFECT },
    Flag {
        name: "experimental-watch-progress-notify-interval",
        value: "DURATION",
        help: "Duration of periodic watch progress notifications. (default 10m0s)",
    },
    Flag {
        name: "listen-metrics-urls",
        value: "URLS",
        help: "Comma-separated URLs of extra listeners serving /metrics, /health, /livez and /readyz over \
               HTTP/1.1 (port 0 binds a free port, written to DATA-DIR/metrics-urls). (default none)",
    },
    Flag {
        name: "metrics",
        value: "basic|extensive",
        help: "Set level of detail for exported metrics; extensive adds grpc_server_handling_seconds. \
               (default \"basic\")",
    },
    Flag {
        name: "experimental-bench-null",
        value: BOOL,
        help: "Serve /metastore.Bench/Null, a call that does no storage work (for measuring the transport; \
               not part of the etcd API). (default false)",
    },
];

/// The value placeholder of a boolean flag: `--flag` alone means true, `--flag=false` false.
const BOOL: &str = "[=true|false]";
/// How the help of a flag MetaStore accepts (so etcd command lines and config files work) but
/// does not act on yet ends; setting one logs a warning.
const NO_EFFECT: &str = "(accepted for etcd compatibility; no effect yet)";

/// The text of `metastore --help`.
pub fn usage() -> String {
    let mut s = String::from(
        "Usage: metastore [flags]\n\n  An etcd v3-compatible key-value store. With no flags it serves \
         http://localhost:2379 with data in ./default.metastore.\n\nFlags:\n",
    );
    for f in FLAGS {
        s.push_str(&format!("  --{} {}\n      {}\n", f.name, f.value, f.help));
    }
    s.push_str("  --help\n      Show this help.\n  --version\n      Print the version and exit.\n");
    s
}

/// A configuration error: one message naming the flag and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Where a setting came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Flag,
    Env,
    File,
}

/// Parses the command line (without the program name), with the process's environment.
pub fn parse_args<I, S>(args: I) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let env: Vec<(String, String)> = std::env::vars().collect();
    parse(args, &env)
}

/// Parses settings from the command line, the environment (`ETCD_<FLAG>`, or `METASTORE_<FLAG>`)
/// and a config file (`--config-file`), as etcd 3.5 does: a config file, when given, is the only
/// source (other flags and variables are ignored, with a warning); otherwise a variable is used
/// for a flag not on the command line, and one set for a flag that is there is an error.
pub fn parse<I, S>(args: I, env: &[(String, String)]) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut cli: Vec<(&'static Flag, String)> = Vec::new();
    let mut it = args.into_iter().map(Into::into);
    while let Some(arg) = it.next() {
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return err(format!("unexpected argument {arg:?}: flags start with --; see --help"));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        match name {
            "help" | "h" => return Ok(Command::Help),
            "version" => return Ok(Command::Version),
            _ => {}
        }
        let Some(flag) = FLAGS.iter().find(|f| f.name == name) else {
            return err(format!("flag provided but not defined: -{name}"));
        };
        if cli.iter().any(|(f, _)| f.name == flag.name) {
            return err(format!("flag --{name} given more than once"));
        }
        let value = match inline {
            Some(v) => v,
            None if flag.value == BOOL => "true".into(),
            None => match it.next() {
                Some(v) => v,
                None => return err(format!("flag needs an argument: --{name}")),
            },
        };
        cli.push((flag, value));
    }
    let mut warnings = Vec::new();
    let var = |prefix: &str, flag: &str| -> Option<(String, String)> {
        let key = format!("{prefix}{}", flag.to_uppercase().replace('-', "_"));
        env.iter().find(|(k, _)| *k == key).map(|(k, v)| (k.clone(), v.clone()))
    };
    let env_value = |flag: &Flag| -> Result<Option<(String, String)>, ConfigError> {
        match (var("ETCD_", flag.name), var("METASTORE_", flag.name)) {
            (Some((ek, ev)), Some((mk, mv))) if ev != mv => {
                err(format!("{ek}={ev:?} and {mk}={mv:?} disagree: set one of them (they are aliases)"))
            }
            (Some(e), _) => Ok(Some(e)),
            (None, m) => Ok(m),
        }
    };
    // Variables naming no flag: etcd warns about them (ETCD_VERSION aside, which it ignores).
    for (k, _) in env {
        let flag = k.strip_prefix("ETCD_").or_else(|| k.strip_prefix("METASTORE_"));
        if let Some(f) = flag {
            let name = f.to_lowercase().replace('_', "-");
            let ours = k.starts_with("METASTORE_TEST") || name == "version";
            if !ours && !FLAGS.iter().any(|fl| fl.name == name) {
                warnings.push(format!("unrecognized environment variable {k}"));
            }
        }
    }
    let file = match cli.iter().find(|(f, _)| f.name == "config-file") {
        Some((_, v)) => Some(v.clone()),
        None => env_value(flag_named("config-file"))?.map(|(_, v)| v),
    };
    let settings: Vec<(&'static Flag, String, Source)> = if let Some(path) = file {
        let others = cli.iter().filter(|(f, _)| f.name != "config-file").count();
        if others > 0 {
            warnings.push(format!("--config-file {path} is given: the {others} other flag(s) are ignored"));
        }
        if FLAGS.iter().any(|f| f.name != "config-file" && env_value(f).ok().flatten().is_some()) {
            warnings.push(format!("--config-file {path} is given: ETCD_*/METASTORE_* variables are ignored"));
        }
        read_config_file(&path)?.into_iter().map(|(f, v)| (f, v, Source::File)).collect()
    } else {
        let mut all: Vec<(&'static Flag, String, Source)> = Vec::new();
        for flag in FLAGS {
            let on_cli = cli.iter().find(|(f, _)| f.name == flag.name);
            match (on_cli, env_value(flag)?) {
                (Some(_), Some((k, _))) => {
                    return err(format!(
                        "conflicting environment variable {k:?} is shadowed by corresponding command-line flag \
                         (either unset environment variable or disable flag)"
                    ))
                }
                (Some((f, v)), None) => all.push((f, v.clone(), Source::Flag)),
                (None, Some((_, v))) => all.push((flag, v, Source::Env)),
                (None, None) => {}
            }
        }
        all
    };
    let mut cfg = Config::default();
    let mut data_dir: Option<PathBuf> = None;
    let mut compaction_mode = String::from("periodic");
    let mut compaction_retention = String::from("0");
    // Checked once every setting is in: etcd validates these only with tracing enabled.
    let mut sampling_rate: i64 = 0;
    for (flag, value, source) in settings {
        let name = flag.name;
        let value = if source == Source::Env { value.trim().to_string() } else { value };
        if flag.help.ends_with(NO_EFFECT) {
            check_kind(flag, &value)?;
            warnings.push(format!("--{name} is accepted for etcd compatibility and has no effect yet"));
            continue;
        }
        match flag.name {
            "name" => {
                if value.is_empty() {
                    return err("--name must not be empty");
                }
                cfg.name = value;
            }
            "data-dir" => {
                if value.is_empty() {
                    return err("--data-dir must not be empty");
                }
                data_dir = Some(PathBuf::from(value));
            }
            "listen-client-urls" => cfg.listen_client_urls = parse_urls("listen-client-urls", &value)?,
            "advertise-client-urls" => {
                let urls = parse_urls("advertise-client-urls", &value)?;
                cfg.advertise_client_urls = value.split(',').map(|s| s.trim().to_string()).collect();
                debug_assert_eq!(urls.len(), cfg.advertise_client_urls.len());
            }
            "cores" => {
                let n: usize = parse_num("cores", &value)?;
                if n == 0 || n > CORES_MAX {
                    return err(format!("--cores must be between 1 and {CORES_MAX}, got {n}"));
                }
                cfg.cores = n;
            }
            "io-driver" => {
                cfg.io_driver = match value.as_str() {
                    "auto" => IoDriver::Auto,
                    "uring" => IoDriver::Uring,
                    "epoll" => IoDriver::Epoll,
                    other => return err(format!("--io-driver must be uring, epoll or auto, got {other:?}")),
                }
            }
            "max-concurrent-streams" => {
                let n: u32 = parse_num("max-concurrent-streams", &value)?;
                if n == 0 {
                    return err("--max-concurrent-streams must be at least 1");
                }
                cfg.max_concurrent_streams = n;
            }
            "max-connections-per-core" => {
                let n: u32 = parse_num(name, &value)?;
                if n == 0 {
                    return err("--max-connections-per-core must be at least 1");
                }
                cfg.max_connections_per_core = n;
            }
            "max-header-list-size" => {
                let n: u32 = parse_num(name, &value)?;
                if n < HEADER_LIST_SIZE_MIN {
                    return err(format!("--max-header-list-size must be at least {HEADER_LIST_SIZE_MIN}, got {n}"));
                }
                cfg.max_header_list_size = n;
            }
            "grpc-keepalive-min-time" => cfg.grpc_keepalive_min_time = parse_duration(name, &value)?,
            "idle-connection-timeout" => {
                cfg.idle_connection_timeout = Some(parse_duration(name, &value)?).filter(|d| !d.is_zero());
            }
            "read-header-timeout" => {
                cfg.read_header_timeout = Some(parse_duration(name, &value)?).filter(|d| !d.is_zero());
            }
            "request-rate-limit-per-connection" => cfg.request_rate_per_connection = parse_num(name, &value)?,
            "request-rate-limit-per-core" => cfg.request_rate_per_core = parse_num(name, &value)?,
            "max-request-bytes" => {
                let n: u32 = parse_num("max-request-bytes", &value)?;
                if n == 0 {
                    return err("--max-request-bytes must be at least 1");
                }
                cfg.max_request_bytes = n;
            }
            "max-txn-ops" => {
                let n: u32 = parse_num("max-txn-ops", &value)?;
                if n == 0 {
                    return err("--max-txn-ops must be at least 1");
                }
                cfg.max_txn_ops = n;
            }
            "initial-cluster-token" => {
                if value.is_empty() {
                    return err("--initial-cluster-token must not be empty");
                }
                cfg.initial_cluster_token = value;
            }
            "initial-advertise-peer-urls" => {
                parse_urls("initial-advertise-peer-urls", &value)?;
                cfg.initial_advertise_peer_urls = value.split(',').map(|s| s.trim().to_string()).collect();
            }
            "snapshot-count" => {
                let n: u64 = parse_num("snapshot-count", &value)?;
                if n == 0 {
                    return err("--snapshot-count must be at least 1");
                }
                cfg.snapshot_count = n;
            }
            "auto-compaction-mode" => compaction_mode = value,
            "auto-compaction-retention" => compaction_retention = value,
            "quota-backend-bytes" => {
                let n: u64 = parse_num("quota-backend-bytes", &value)?;
                cfg.quota_backend_bytes = if n == 0 { QUOTA_BYTES_DEFAULT } else { n };
            }
            "experimental-bench-null" => cfg.bench_null = parse_bool(flag.name, &value)?,
            "listen-metrics-urls" => {
                cfg.listen_metrics_urls =
                    if value.is_empty() { Vec::new() } else { parse_urls("listen-metrics-urls", &value)? };
            }
            "metrics" => {
                cfg.metrics_extensive = match value.as_str() {
                    "basic" => false,
                    "extensive" => true,
                    _ => return err(format!("unknown metrics type {value:?}: use basic or extensive")),
                };
            }
            "experimental-watch-progress-notify-interval" => {
                let d = crate::compactor::parse_go_duration(&value).ok_or_else(|| {
                    ConfigError(format!("invalid value {value:?} for flag --{}: not a duration", flag.name))
                })?;
                if d < std::time::Duration::from_millis(100) {
                    return err(format!("--{} must be at least 100ms", flag.name));
                }
                cfg.watch_progress_notify_interval = d;
            }
            "experimental-enable-distributed-tracing" => cfg.tracing.enabled = parse_bool(name, &value)?,
            "experimental-distributed-tracing-address" => cfg.tracing.address = value,
            "experimental-distributed-tracing-service-name" => cfg.tracing.service_name = value,
            "experimental-distributed-tracing-instance-id" => cfg.tracing.instance_id = value,
            // Go's int flag: any integer parses; the range is checked below, as etcd does.
            "experimental-distributed-tracing-sampling-rate" => sampling_rate = parse_num(name, &value)?,
            "config-file" => {}
            "heartbeat-interval" => cfg.heartbeat_ms = parse_num(name, &value)?,
            "experimental-warning-apply-duration" => {
                cfg.warning_apply_duration = crate::compactor::parse_go_duration(&value)
                    .ok_or_else(|| ConfigError(format!("invalid value {value:?} for flag --{name}: not a duration")))?;
            }
            "election-timeout" => cfg.election_timeout_ms = parse_num(name, &value)?,
            "logger" => {
                if value != "zap" {
                    return err(format!("--logger: {value:?} is not supported (only \"zap\", etcd's default)"));
                }
            }
            "log-level" => {
                cfg.log_level = match value.as_str() {
                    "debug" | "info" | "warn" | "error" => value.clone(),
                    // Go's zap levels above error: logged as errors.
                    "dpanic" | "panic" | "fatal" => "error".into(),
                    other => {
                        return err(format!(
                            "--log-level: unknown level {other:?} (debug, info, warn, error, panic, fatal)"
                        ))
                    }
                }
            }
            "log-outputs" => {
                let outs: Vec<&str> = value.split(',').map(str::trim).collect();
                if outs.len() != 1 {
                    return err("--log-outputs: one output only (default, stderr, stdout or a file path)");
                }
                cfg.log_output = match outs[0] {
                    "default" | "stderr" => LogOutput::Stderr,
                    "stdout" => LogOutput::Stdout,
                    "" => return err("--log-outputs: empty output"),
                    path => LogOutput::File(PathBuf::from(path)),
                };
            }
            "cert-file"
            | "key-file"
            | "trusted-ca-file"
            | "peer-cert-file"
            | "peer-key-file"
            | "peer-trusted-ca-file" => {
                if !value.is_empty() {
                    return err(format!("--{name}: TLS is not supported yet; leave it unset and use http:// URLs"));
                }
            }
            "client-cert-auth" | "auto-tls" | "peer-client-cert-auth" | "peer-auto-tls" => {
                if parse_bool(name, &value)? {
                    return err(format!("--{name}: TLS is not supported yet"));
                }
            }
            other => unreachable!("flag {other} listed but not handled"),
        }
    }
    if cfg.heartbeat_ms == 0 {
        return err("--heartbeat-interval must be at least 1 ms");
    }
    if cfg.election_timeout_ms < 5 * cfg.heartbeat_ms {
        return err(format!(
            "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
            cfg.election_timeout_ms, cfg.heartbeat_ms
        ));
    }
    if cfg.election_timeout_ms > 50_000 {
        return err(format!(
            "--election-timeout[{}ms] is too long, and should be set less than 50000ms",
            cfg.election_timeout_ms
        ));
    }
    if cfg.tracing.enabled {
        validate_tracing(&cfg.tracing.address, sampling_rate)?;
    }
    cfg.tracing.sampling_rate_per_million = sampling_rate.clamp(0, i64::from(SAMPLING_RATE_MAX)) as u32;
    cfg.data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{}.metastore", cfg.name)));
    cfg.auto_compaction = crate::compactor::parse(&compaction_mode, &compaction_retention).map_err(ConfigError)?;
    cfg.warnings = warnings;
    Ok(Command::Serve(Box::new(cfg)))
}

/// etcd's checks of the tracing settings (its `validateTracingConfig`, with its messages), and
/// that the address is `host:port`: with tracing on, the rate lies in 0..=1,000,000.
fn validate_tracing(address: &str, rate: i64) -> Result<(), ConfigError> {
    let why = if rate < 0 {
        Some("tracing sampling rate must be positive".to_string())
    } else if rate > i64::from(SAMPLING_RATE_MAX) {
        Some(format!("tracing sampling rate must be less than {SAMPLING_RATE_MAX}"))
    } else {
        None
    };
    if let Some(why) = why {
        return err(format!("distributed tracing configurition is not valid: ({why})"));
    }
    let port = address.rsplit_once(':').filter(|(host, _)| !host.is_empty()).map(|(_, p)| p.parse::<u16>());
    if address.contains("://") || !matches!(port, Some(Ok(p)) if p != 0) {
        return err(format!(
            "--experimental-distributed-tracing-address: {address:?} is not HOST:PORT (e.g. localhost:4317)"
        ));
    }
    Ok(())
}

fn flag_named(name: &str) -> &'static Flag {
    FLAGS.iter().find(|f| f.name == name).unwrap_or(&FLAGS[0])
}

/// Checks a value against what its placeholder says it is (for flags accepted but not used).
fn check_kind(flag: &Flag, value: &str) -> Result<(), ConfigError> {
    match flag.value {
        BOOL => parse_bool(flag.name, value).map(|_| ()),
        "N" | "MS" | "BYTES" => parse_num::<u64>(flag.name, value).map(|_| ()),
        "DURATION" => crate::compactor::parse_go_duration(value)
            .map(|_| ())
            .ok_or_else(|| ConfigError(format!("invalid value {value:?} for flag --{}: not a duration", flag.name))),
        _ => Ok(()),
    }
}

/// Reads a YAML config file whose keys are flag names (etcd's format): scalars as the flag's
/// value, lists joined with commas, durations in integer nanoseconds.
fn read_config_file(path: &str) -> Result<Vec<(&'static Flag, String)>, ConfigError> {
    use yaml_rust2::{Yaml, YamlLoader};
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("--config-file {path}: {e}")))?;
    let docs = YamlLoader::load_from_str(&text).map_err(|e| ConfigError(format!("--config-file {path}: {e}")))?;
    let mut out = Vec::new();
    let Some(doc) = docs.first() else { return Ok(out) };
    let Yaml::Hash(map) = doc else {
        return err(format!("--config-file {path}: expected a mapping of flag names to values"));
    };
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            return err(format!("--config-file {path}: a key is not a string: {k:?}"));
        };
        if key == "client-transport-security" || key == "peer-transport-security" {
            // TLS: only an empty section is accepted until TLS exists.
            if let Yaml::Hash(h) = v {
                for (tk, tv) in h {
                    let set = match tv {
                        Yaml::String(s) => !s.is_empty(),
                        Yaml::Boolean(b) => *b,
                        Yaml::Null => false,
                        _ => true,
                    };
                    if set {
                        return err(format!(
                            "--config-file {path}: {key}.{} is set: TLS is not supported yet",
                            tk.as_str().unwrap_or("?")
                        ));
                    }
                }
            }
            continue;
        }
        let Some(flag) = FLAGS.iter().find(|f| f.name == key) else {
            return err(format!("--config-file {path}: unknown key {key:?}"));
        };
        if key == "config-file" {
            return err(format!("--config-file {path}: a config file cannot name another"));
        }
        let value = match v {
            Yaml::String(s) => s.clone(),
            Yaml::Integer(n) if flag.value == "DURATION" => format!("{n}ns"),
            Yaml::Integer(n) => n.to_string(),
            Yaml::Real(r) => r.clone(),
            Yaml::Boolean(b) => b.to_string(),
            Yaml::Array(items) => {
                let parts: Option<Vec<String>> = items.iter().map(|i| i.as_str().map(String::from)).collect();
                parts
                    .ok_or_else(|| ConfigError(format!("--config-file {path}: {key}: a list of strings expected")))?
                    .join(",")
            }
            // An empty value: the default.
            Yaml::Null => continue,
            other => return err(format!("--config-file {path}: {key}: unexpected value {other:?}")),
        };
        out.push((flag, value));
    }
    Ok(out)
}

fn parse_bool(flag: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "true" | "1" | "t" | "T" | "TRUE" | "True" => Ok(true),
        "false" | "0" | "f" | "F" | "FALSE" | "False" => Ok(false),
        _ => err(format!("invalid boolean value {v:?} for -{flag}")),
    }
}

fn parse_duration(flag: &str, v: &str) -> Result<std::time::Duration, ConfigError> {
    crate::compactor::parse_go_duration(v)
        .ok_or_else(|| ConfigError(format!("invalid value {v:?} for flag --{flag}: not a duration")))
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, ConfigError> {
    v.parse().map_err(|_| ConfigError(format!("invalid value {v:?} for flag --{flag}: not a number")))
}

/// Parses a comma-separated list of `http://host:port` URLs.
pub fn parse_urls(flag: &str, list: &str) -> Result<Vec<ClientUrl>, ConfigError> {
    let mut out = Vec::new();
    for raw in list.split(',').map(str::trim) {
        if raw.is_empty() {
            return err(format!("--{flag}: empty URL in {list:?}"));
        }
        out.push(parse_url(flag, raw)?);
    }
    Ok(out)
}

fn parse_url(flag: &str, raw: &str) -> Result<ClientUrl, ConfigError> {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return err(format!("--{flag}: {raw:?} is not a URL (expected http://host:port)"));
    };
    match scheme {
        "http" => {}
        "https" | "unixs" => {
            return err(format!("--{flag}: {raw:?} uses TLS, which MetaStore does not support yet; use an http:// URL"))
        }
        other => return err(format!("--{flag}: unsupported URL scheme {other:?} in {raw:?} (expected http)")),
    }
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains('/') {
        return err(format!("--{flag}: {raw:?} must not have a path"));
    }
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let Some((h, p)) = h.split_once("]:") else {
            return err(format!("--{flag}: {raw:?} needs a port"));
        };
        (h, p)
    } else {
        let Some((h, p)) = hostport.rsplit_once(':') else {
            return err(format!("--{flag}: {raw:?} needs a port"));
        };
        (h, p)
    };
    let port: u16 = port.parse().map_err(|_| ConfigError(format!("--{flag}: invalid port {port:?} in {raw:?}")))?;
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| ConfigError(format!("--{flag}: {raw:?}: the host must be an IP address or localhost")))?
    };
    Ok(ClientUrl { host: host.to_string(), addr: SocketAddr::new(ip, port) })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The process's own environment stays out of these tests.
    fn serve(args: &[&str]) -> Config {
        match parse(args.iter().copied(), &[]).unwrap() {
            Command::Serve(c) => *c,
            other => panic!("{other:?}"),
        }
    }

    fn fails(args: &[&str]) -> String {
        parse(args.iter().copied(), &[]).unwrap_err().0
    }

    #[test]
    fn defaults_match_etcd() {
        let c = serve(&[]);
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.metastore"));
        assert_eq!(c.listen_client_urls[0].addr, "127.0.0.1:2379".parse().unwrap());
        assert_eq!(c.io_driver, IoDriver::Auto);
        assert_eq!(c.max_concurrent_streams, u32::MAX);
        assert_eq!(c.recv_message_bytes_max(), 2 * 1024 * 1024);
        assert!(c.cores >= 1);
    }

    #[test]
    fn flag_syntaxes() {
        let c = serve(&["--name", "n1", "-cores=2", "--io-driver=epoll", "--listen-client-urls", "http://127.0.0.1:0"]);
        assert_eq!(c.name, "n1");
        assert_eq!(c.data_dir, PathBuf::from("n1.metastore"));
        assert_eq!(c.cores, 2);
        assert_eq!(c.io_driver, IoDriver::Epoll);
        assert_eq!(c.listen_client_urls[0].addr.port(), 0);
        let c = serve(&["--data-dir", "/x/y", "--listen-client-urls", "http://[::1]:1,http://localhost:2"]);
        assert_eq!(c.data_dir, PathBuf::from("/x/y"));
        assert_eq!(c.listen_client_urls.len(), 2);
        assert!(matches!(parse(["--help"], &[]), Ok(Command::Help)));
        assert!(matches!(parse(["-version"], &[]), Ok(Command::Version)));
    }

    #[test]
    fn errors_are_clear() {
        assert!(fails(&["--listen-client-urls", "https://127.0.0.1:2379"]).contains("TLS"));
        assert!(fails(&["--listen-client-urls", "127.0.0.1:2379"]).contains("not a URL"));
        assert!(fails(&["--listen-client-urls", "http://example.com:1"]).contains("IP address"));
        assert!(fails(&["--listen-client-urls", "http://127.0.0.1"]).contains("needs a port"));
        assert!(fails(&["--listen-client-urls", "http://127.0.0.1:99999"]).contains("invalid port"));
        assert!(fails(&["--io-driver", "kqueue"]).contains("uring, epoll or auto"));
        assert!(fails(&["--cores", "0"]).contains("between 1"));
        assert!(fails(&["--cores", "x"]).contains("not a number"));
        assert!(fails(&["--bogus"]).contains("not defined"));
        assert!(fails(&["--name"]).contains("needs an argument"));
        assert!(fails(&["--name", "a", "--name", "b"]).contains("more than once"));
        assert!(fails(&["stray"]).contains("unexpected argument"));
        assert!(fails(&["--max-concurrent-streams", "0"]).contains("at least 1"));
        assert!(fails(&["--experimental-bench-null=maybe"]).contains("invalid boolean value"));
        assert!(fails(&["--metrics", "verbose"]).contains("unknown metrics type"));
        assert!(fails(&["--listen-metrics-urls", "https://127.0.0.1:2381"]).contains("TLS"));
    }

    #[test]
    fn metrics_flags() {
        let c = serve(&[]);
        assert!(!c.metrics_extensive && c.listen_metrics_urls.is_empty());
        let c = serve(&["--metrics", "extensive", "--listen-metrics-urls", "http://127.0.0.1:0,http://127.0.0.1:2381"]);
        assert!(c.metrics_extensive);
        assert_eq!(c.listen_metrics_urls.len(), 2);
        assert!(!serve(&["--metrics=basic"]).metrics_extensive);
    }

    #[test]
    fn boolean_flags_take_no_value_or_an_inline_one() {
        assert!(!serve(&[]).bench_null);
        let c = serve(&["--experimental-bench-null", "--name", "x"]);
        assert!(c.bench_null);
        assert_eq!(c.name, "x", "the next argument is not taken as the flag's value");
        assert!(serve(&["--experimental-bench-null=true"]).bench_null);
        assert!(!serve(&["--experimental-bench-null=false"]).bench_null);
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn serve_env(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, String> {
        match parse(args.iter().copied(), &env(vars)) {
            Ok(Command::Serve(c)) => Ok(*c),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.0),
        }
    }

    #[test]
    fn environment_variables_as_etcd_reads_them() {
        let c = serve_env(&[], &[("ETCD_NAME", "e1"), ("METASTORE_MAX_TXN_OPS", "7")]).unwrap();
        assert_eq!((c.name.as_str(), c.max_txn_ops), ("e1", 7));
        // Both spellings of one setting: fine when they agree, an error when they do not.
        assert_eq!(serve_env(&[], &[("ETCD_NAME", "a"), ("METASTORE_NAME", "a")]).unwrap().name, "a");
        let e = serve_env(&[], &[("ETCD_NAME", "a"), ("METASTORE_NAME", "b")]).unwrap_err();
        assert!(e.contains("ETCD_NAME") && e.contains("METASTORE_NAME") && e.contains("disagree"), "{e}");
        // A flag and its variable: fatal, as in etcd 3.5.
        let e = serve_env(&["--name", "x"], &[("ETCD_NAME", "y")]).unwrap_err();
        assert!(e.contains("conflicting environment variable \"ETCD_NAME\" is shadowed"), "{e}");
        // Unknown variables warn; ETCD_VERSION is ignored quietly.
        let c = serve_env(&[], &[("ETCD_BOGUS", "1"), ("ETCD_VERSION", "1")]).unwrap();
        assert_eq!(c.warnings, ["unrecognized environment variable ETCD_BOGUS"]);
        assert!(serve_env(&[], &[("ETCD_MAX_TXN_OPS", "lots")]).unwrap_err().contains("not a number"));
    }

    #[test]
    fn front_door_limits() {
        let c = serve(&[]);
        assert_eq!(c.grpc_keepalive_min_time, std::time::Duration::from_secs(5));
        assert_eq!(
            (c.idle_connection_timeout, c.read_header_timeout),
            (None, Some(std::time::Duration::from_secs(10)))
        );
        assert_eq!((c.request_rate_per_connection, c.request_rate_per_core), (0, 0));
        assert_eq!((c.max_connections_per_core, c.max_header_list_size), (16_384, 16_384));
        let c = serve(&[
            "--grpc-keepalive-min-time=1s",
            "--idle-connection-timeout=90s",
            "--read-header-timeout=0",
            "--request-rate-limit-per-connection=100",
            "--request-rate-limit-per-core=1000",
            "--max-connections-per-core=7",
            "--max-header-list-size=4096",
        ]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.grpc_keepalive_min_time, std::time::Duration::from_secs(1));
        assert_eq!(
            (c.idle_connection_timeout, c.read_header_timeout),
            (Some(std::time::Duration::from_secs(90)), None)
        );
        assert_eq!((c.request_rate_per_connection, c.request_rate_per_core), (100, 1000));
        assert_eq!((c.max_connections_per_core, c.max_header_list_size), (7, 4096));
        assert_eq!(serve(&["--idle-connection-timeout", "0s"]).idle_connection_timeout, None);
        assert!(fails(&["--grpc-keepalive-min-time", "soon"]).contains("not a duration"));
        assert!(fails(&["--max-connections-per-core", "0"]).contains("at least 1"));
        assert!(fails(&["--max-header-list-size", "100"]).contains("at least 1024"));
        assert!(fails(&["--request-rate-limit-per-core", "-1"]).contains("not a number"));
    }

    #[test]
    fn raft_timing_is_validated_as_etcd_does() {
        let c = serve(&["--heartbeat-interval", "50", "--election-timeout", "500"]);
        assert_eq!((c.heartbeat_ms, c.election_timeout_ms), (50, 500));
        let e = fails(&["--heartbeat-interval", "100", "--election-timeout", "400"]);
        assert!(e.contains("should be at least as 5 times as --heartbeat-interval"), "{e}");
        assert!(fails(&["--election-timeout", "60000", "--heartbeat-interval", "1000"]).contains("too long"));
        assert!(fails(&["--heartbeat-interval", "0"]).contains("at least 1 ms"));
    }

    #[test]
    fn logging_flags() {
        let c = serve(&["--logger", "zap", "--log-level", "debug", "--log-outputs", "stdout"]);
        assert_eq!((c.log_level.as_str(), &c.log_output), ("debug", &LogOutput::Stdout));
        assert_eq!(serve(&["--log-level", "fatal"]).log_level, "error");
        assert_eq!(serve(&["--log-outputs", "/tmp/x.log"]).log_output, LogOutput::File("/tmp/x.log".into()));
        assert!(fails(&["--logger", "capnslog"]).contains("not supported"));
        assert!(fails(&["--log-level", "loud"]).contains("unknown level"));
        assert!(fails(&["--log-outputs", "stderr,stdout"]).contains("one output"));
    }

    #[test]
    fn distributed_tracing_flags() {
        // Off by default, with etcd's defaults.
        let c = serve(&[]);
        assert_eq!(c.tracing, Tracing::default());
        assert!(!c.tracing.enabled);
        assert_eq!(
            (c.tracing.address.as_str(), c.tracing.service_name.as_str(), c.tracing.instance_id.as_str()),
            ("localhost:4317", "etcd", "")
        );
        assert_eq!(c.tracing.sampling_rate_per_million, 0);
        let c = serve(&[
            "--experimental-enable-distributed-tracing",
            "--experimental-distributed-tracing-address=127.0.0.1:4318",
            "--experimental-distributed-tracing-service-name",
            "kv",
            "--experimental-distributed-tracing-instance-id",
            "m1",
            "--experimental-distributed-tracing-sampling-rate",
            "1000000",
        ]);
        assert!(c.warnings.is_empty(), "these flags act now: {:?}", c.warnings);
        let want = Tracing {
            enabled: true,
            address: "127.0.0.1:4318".into(),
            service_name: "kv".into(),
            instance_id: "m1".into(),
            sampling_rate_per_million: 1_000_000,
        };
        assert_eq!(c.tracing, want);
        // A host name is resolved when exporting (e.g. a collector's service name).
        let c = serve(&[
            "--experimental-enable-distributed-tracing=true",
            "--experimental-distributed-tracing-address",
            "otel-collector:4317",
        ]);
        assert_eq!(c.tracing.address, "otel-collector:4317");
        // Through the environment and a config file, as every flag.
        let c = serve_env(
            &[],
            &[
                ("ETCD_EXPERIMENTAL_ENABLE_DISTRIBUTED_TRACING", "true"),
                ("ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_SAMPLING_RATE", "10"),
            ],
        )
        .unwrap();
        assert!(c.tracing.enabled);
        assert_eq!(c.tracing.sampling_rate_per_million, 10);
        let f = write(
            "tracing.yaml",
            "experimental-enable-distributed-tracing: true\nexperimental-distributed-tracing-service-name: filed\n",
        );
        let c = serve_env(&["--config-file", &f], &[]).unwrap();
        assert!(c.tracing.enabled);
        assert_eq!(c.tracing.service_name, "filed");
        // Bad values, with etcd's messages where etcd has one.
        let on = "--experimental-enable-distributed-tracing";
        let e = fails(&[on, "--experimental-distributed-tracing-sampling-rate", "-1"]);
        assert_eq!(e, "distributed tracing configurition is not valid: (tracing sampling rate must be positive)");
        let e = fails(&[on, "--experimental-distributed-tracing-sampling-rate", "1000001"]);
        assert_eq!(
            e,
            "distributed tracing configurition is not valid: (tracing sampling rate must be less than 1000000)"
        );
        assert!(fails(&[on, "--experimental-distributed-tracing-sampling-rate", "often"]).contains("not a number"));
        assert!(fails(&["--experimental-enable-distributed-tracing=maybe"]).contains("invalid boolean value"));
        for bad in ["localhost", "http://localhost:4317", ":4317", "localhost:x", "localhost:0", "localhost:70000", ""]
        {
            let e = fails(&[on, "--experimental-distributed-tracing-address", bad]);
            assert!(e.contains("is not HOST:PORT"), "{bad:?}: {e}");
        }
        // As etcd: with tracing off, the other settings are not checked.
        let c = serve(&[
            "--experimental-distributed-tracing-sampling-rate",
            "-5",
            "--experimental-distributed-tracing-address",
            "x",
        ]);
        assert!(!c.tracing.enabled);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn accepted_etcd_flags_warn_and_tls_is_refused() {
        let c = serve(&["--initial-cluster-state", "new", "--pre-vote=false", "--grpc-keepalive-interval", "2h"]);
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("no effect yet"));
        assert!(fails(&["--grpc-keepalive-timeout", "soon"]).contains("not a duration"));
        assert!(fails(&["--cert-file", "a.pem"]).contains("TLS is not supported"));
        assert!(fails(&["--client-cert-auth"]).contains("TLS is not supported"));
    }

    fn write(name: &str, text: &str) -> String {
        let dir = std::env::temp_dir().join(format!("metastore-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    #[test]
    fn config_file_is_the_only_source_when_given() {
        let f = write(
            "a.yaml",
            "name: filed\nmax-txn-ops: 9\nlisten-client-urls: [http://127.0.0.1:0, http://127.0.0.1:1]\n\
             experimental-watch-progress-notify-interval: 2000000000\nenable-v2:\n",
        );
        let c = serve_env(&["--config-file", &f, "--name", "ignored"], &[("ETCD_MAX_TXN_OPS", "3")]).unwrap();
        assert_eq!((c.name.as_str(), c.max_txn_ops, c.listen_client_urls.len()), ("filed", 9, 2));
        assert_eq!(c.watch_progress_notify_interval, std::time::Duration::from_secs(2));
        assert_eq!(c.warnings.len(), 2, "other flags and variables are ignored, with warnings: {:?}", c.warnings);
        // Through its variable too.
        assert_eq!(serve_env(&[], &[("ETCD_CONFIG_FILE", &f)]).unwrap().name, "filed");
        let bad = write("b.yaml", "name: x\nbogus-key: 1\n");
        assert!(serve_env(&["--config-file", &bad], &[]).unwrap_err().contains("unknown key \"bogus-key\""));
        let tls = write("c.yaml", "client-transport-security:\n  cert-file: a.pem\n");
        assert!(serve_env(&["--config-file", &tls], &[]).unwrap_err().contains("TLS is not supported"));
        let broken = write("d.yaml", "name: [unclosed\n");
        assert!(serve_env(&["--config-file", &broken], &[]).unwrap_err().contains("--config-file"));
        let missing = serve_env(&["--config-file", "/nonexistent/metastore.yaml"], &[]).unwrap_err();
        assert!(missing.contains("No such file"), "{missing}");
        let weak = write("e.yaml", "heartbeat-interval: 100\nelection-timeout: 200\n");
        assert!(serve_env(&["--config-file", &weak], &[]).unwrap_err().contains("5 times"));
    }

    /// The examples in `configs/` parse and validate.
    #[test]
    fn example_configs_are_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let c = serve_env(&["--config-file", p.to_str().unwrap()], &[])
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert!(!c.name.is_empty());
                n += 1;
            }
        }
        assert!(n >= 2, "configs/ holds a single-node and a cluster example");
    }

    #[test]
    fn help_lists_every_flag() {
        let u = usage();
        for f in FLAGS {
            assert!(u.contains(&format!("--{}", f.name)), "{}", f.name);
        }
    }
}
