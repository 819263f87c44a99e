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
    /// `--max-concurrent-streams`: HTTP/2 streams per connection (etcd default 2^32-1).
    pub max_concurrent_streams: u32,
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
    /// `--experimental-watch-progress-notify-interval`: how often idle watchers that asked for
    /// it get a progress notification (etcd default 10 minutes).
    pub watch_progress_notify_interval: std::time::Duration,
}

/// etcd's gRPC overhead allowance on top of `--max-request-bytes`.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// etcd's default backend quota (2 GiB).
pub const QUOTA_BYTES_DEFAULT: u64 = 2 << 30;
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
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            snapshot_count: 100_000,
            quota_backend_bytes: QUOTA_BYTES_DEFAULT,
            auto_compaction: None,
            bench_null: false,
            watch_progress_notify_interval: std::time::Duration::from_secs(600),
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
        name: "experimental-watch-progress-notify-interval",
        value: "DURATION",
        help: "Duration of periodic watch progress notifications. (default 10m0s)",
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

/// Parses the command line (without the program name).
pub fn parse_args<I, S>(args: I) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut cfg = Config::default();
    let mut data_dir: Option<PathBuf> = None;
    let mut compaction_mode = String::from("periodic");
    let mut compaction_retention = String::from("0");
    let mut seen: Vec<&'static str> = Vec::new();
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
        if seen.contains(&flag.name) {
            return err(format!("flag --{name} given more than once"));
        }
        seen.push(flag.name);
        let value = match inline {
            Some(v) => v,
            None if flag.value == BOOL => "true".into(),
            None => match it.next() {
                Some(v) => v,
                None => return err(format!("flag needs an argument: --{name}")),
            },
        };
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
            "experimental-watch-progress-notify-interval" => {
                let d = crate::compactor::parse_go_duration(&value).ok_or_else(|| {
                    ConfigError(format!("invalid value {value:?} for flag --{}: not a duration", flag.name))
                })?;
                if d < std::time::Duration::from_millis(100) {
                    return err(format!("--{} must be at least 100ms", flag.name));
                }
                cfg.watch_progress_notify_interval = d;
            }
            other => unreachable!("flag {other} listed but not handled"),
        }
    }
    cfg.data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{}.metastore", cfg.name)));
    cfg.auto_compaction = crate::compactor::parse(&compaction_mode, &compaction_retention).map_err(ConfigError)?;
    Ok(Command::Serve(Box::new(cfg)))
}

fn parse_bool(flag: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "true" | "1" | "t" | "T" | "TRUE" | "True" => Ok(true),
        "false" | "0" | "f" | "F" | "FALSE" | "False" => Ok(false),
        _ => err(format!("invalid boolean value {v:?} for -{flag}")),
    }
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

    fn serve(args: &[&str]) -> Config {
        match parse_args(args.iter().copied()).unwrap() {
            Command::Serve(c) => *c,
            other => panic!("{other:?}"),
        }
    }

    fn fails(args: &[&str]) -> String {
        parse_args(args.iter().copied()).unwrap_err().0
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
        assert!(matches!(parse_args(["--help"]), Ok(Command::Help)));
        assert!(matches!(parse_args(["-version"]), Ok(Command::Version)));
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

    #[test]
    fn help_lists_every_flag() {
        let u = usage();
        for f in FLAGS {
            assert!(u.contains(&format!("--{}", f.name)), "{}", f.name);
        }
    }
}
