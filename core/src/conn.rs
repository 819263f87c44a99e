//! A client connection: the thin loop that pumps a socket through the codecs, and the
//! per-connection application state (calls in progress, their deadlines).
//!
//! Two tasks per HTTP/2 connection share one `RefCell` (same thread, never held across an
//! await): the reader feeds socket bytes to the codec and dispatches complete requests; the
//! writer takes whatever output the codec has gathered (replies from any source) and writes it in
//! one call. The reader stops reading while the socket has not taken the output (over a bound)
//! or while a request waits for a slot in the ring to the shard: that is the backpressure. While
//! responses wait for the client's flow-control credit (over a bound) it reads on, since only the
//! client's WINDOW_UPDATEs can release them, but dispatches no new request.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::task::Poll;
use std::time::{Duration, Instant};

use metastore_net::frame::ErrorCode;
use metastore_net::grpc::{self, CallHead, Code, GrpcConn, HttpResponse, Status};
use metastore_net::limit::TokenBucket;
use metastore_net::{http1, sniff, Protocol};
use metastore_proto::health::health_check_response::ServingStatus;
use metastore_proto::health::{HealthCheckRequest, HealthCheckResponse};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use prost::Message;

use metastore_proto::etcdserverpb as pb;

use crate::config::Config;
use crate::etcd::{errors, kv, validate};
use crate::http;
use crate::notify::{yield_now, LocalNotify};
use crate::reactor::{Core, CoreStats, Shared, Submit};
use crate::shard::{CallRef, Envelope, Outcome, ShardReply, ShardRequest};

/// Bytes read from the socket per read call.
const READ_BYTES_MAX: usize = 64 << 10;
/// Most input fed to one connection's codec at a time: with more waiting, the connection lets
/// the core's other tasks run first, so one client's burst (a 64 KiB read of header blocks to
/// decode, say) holds up the others for at most this much work. A frame is never split: a
/// turn whose first frame is larger gets that frame whole.
const FEED_BYTES_MAX: usize = 16 << 10;
/// Output not yet taken by the socket above which the reader stops reading; output waiting for
/// the client's flow-control credit above which no new request is dispatched.
const OUT_BYTES_MAX: usize = 4 << 20;
/// Calls open on a connection whose responses wait for credit above which new calls are refused
/// with RESOURCE_EXHAUSTED, so that reading on (requests not dispatched) stays bounded.
const READY_MAX: usize = 4096;
/// Calls a connection may have at the shard while its responses wait for the client's credit:
/// with the 4 MiB above, what a client that grants no window can make us hold.
const INFLIGHT_WHILE_BLOCKED_MAX: u32 = 32;
/// How long, and how many bytes, we keep reading (and discarding) after ending a connection.
const LINGER_MS_MAX: u64 = 1_000;
const LINGER_BYTES_MAX: usize = 4 << 20;

const HEALTH: &str = "grpc.health.v1.Health";
/// How long after a slow or idle connection was told to go (GOAWAY) it is shut down whether or
/// not its output left (a client that does not read would otherwise keep it).
const CUT_GRACE: Duration = Duration::from_secs(1);

/// How often each front-door limit or defence acted on one core (single writer: that core).
#[derive(Default)]
pub struct DefenceStats {
    /// Connections closed as accepted: `--max-connections-per-core` reached.
    pub conns_rejected: AtomicU64,
    /// Streams refused with REFUSED_STREAM (`--max-concurrent-streams`).
    pub streams_refused: AtomicU64,
    /// Requests refused for a header list over `--max-header-list-size`.
    pub header_lists_too_large: AtomicU64,
    /// GOAWAY too_many_pings (`--grpc-keepalive-min-time`).
    pub too_many_pings: AtomicU64,
    /// GOAWAY for rapid reset (streams reset or refused beyond the budget).
    pub rapid_resets: AtomicU64,
    /// GOAWAY for floods of frames without a request (SETTINGS, PING, PRIORITY, empty DATA...).
    pub frame_floods: AtomicU64,
    /// GOAWAY for control frames piling up for a client that does not read.
    pub control_queue_overflows: AtomicU64,
    /// GOAWAY for CONTINUATION floods.
    pub continuation_floods: AtomicU64,
    /// GOAWAY COMPRESSION_ERROR (HPACK abuse, e.g. a table size update over our limit).
    pub hpack_errors: AtomicU64,
    /// Connections cut for taking too long over a preface, frame or header block (slowloris).
    pub header_timeouts: AtomicU64,
    /// Connections closed by `--idle-connection-timeout`.
    pub idle_closed: AtomicU64,
    /// Calls refused by `--request-rate-limit-per-connection`.
    pub rate_limited_conn: AtomicU64,
    /// Calls refused by `--request-rate-limit-per-core`.
    pub rate_limited_core: AtomicU64,
    /// Times a connection stopped taking calls because its responses wait for the client's
    /// flow-control credit (zero-window clients).
    pub flow_control_holds: AtomicU64,
    /// Calls refused while a connection was held so (RESOURCE_EXHAUSTED).
    pub flow_control_refused: AtomicU64,
}

impl DefenceStats {
    fn record(&self, e: &metastore_net::h2::Events) {
        let add = |c: &AtomicU64, n: u32| {
            if n > 0 {
                CoreStats::add(c, u64::from(n));
            }
        };
        add(&self.streams_refused, e.refused_streams);
        add(&self.header_lists_too_large, e.header_lists_too_large);
        add(&self.too_many_pings, e.too_many_pings);
        add(&self.rapid_resets, e.rapid_resets);
        add(&self.frame_floods, e.frame_floods);
        add(&self.control_queue_overflows, e.control_queue_overflows);
        add(&self.continuation_floods, e.continuation_floods);
        add(&self.hpack_errors, e.hpack_errors);
    }
}

/// A token bucket of `per_sec` calls a second (bursts of one second's worth); None when 0.
pub fn rate_bucket(per_sec: u32) -> Option<Rc<Cell<TokenBucket>>> {
    (per_sec > 0).then(|| Rc::new(Cell::new(TokenBucket::new(per_sec, per_sec))))
}

/// etcd's answer when it cannot take more requests.
fn too_many_requests() -> Status {
    Status::new(Code::RESOURCE_EXHAUSTED, "etcdserver: too many requests")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    HealthCheck,
    HealthWatch,
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
    Status,
    MemberList,
    Defragment,
    Alarm,
    Hash,
    HashKv,
    Snapshot,
    /// etcd's Watch: a bidirectional stream served by the core's [`crate::watch::WatchHub`].
    Watch,
    LeaseGrant,
    LeaseRevoke,
    /// A bidirectional stream: one response per request, in order.
    LeaseKeepAlive,
    LeaseTimeToLive,
    LeaseLeases,
    Lock,
    Unlock,
    Campaign,
    Proclaim,
    Leader,
    /// A server stream: each leader change, asked for one at a time.
    Observe,
    Resign,
    /// `/metastore.Bench/Null` (with `--experimental-bench-null`): answered on the connection's
    /// core with an empty message, no storage work: the transport's ceiling.
    Null,
}

/// The service of [`Method::Null`]: ours, not etcd's.
const BENCH: &str = "metastore.Bench";

/// Every method MetaStore serves, in [`Method`]'s order (a call's metrics tag is its index):
/// service, method and go-grpc-prometheus's `grpc_type`.
pub const METHODS: [(&str, &str, &str); 28] = [
    (HEALTH, "Check", "unary"),
    (HEALTH, "Watch", "server_stream"),
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
    (BENCH, "Null", "unary"),
];

/// Per-core call counters sized for [`METHODS`].
pub fn call_stats(handling_time: bool) -> std::sync::Arc<metastore_net::grpc::CallStats> {
    std::sync::Arc::new(metastore_net::grpc::CallStats::new(METHODS.len(), handling_time))
}

/// Maps a call to the method that serves it, or to grpc-go's answer for what we do not serve:
/// an unknown service, an unknown method, or a method the etcd API has and MetaStore does not
/// implement yet.
fn route(service: &str, method: &str, cfg: &Config) -> Result<Method, Status> {
    let m = match (service, method) {
        (BENCH, "Null") if cfg.bench_null => Method::Null,
        (HEALTH, "Check") => Method::HealthCheck,
        (HEALTH, "Watch") => Method::HealthWatch,
        ("etcdserverpb.KV", "Range") => Method::Range,
        ("etcdserverpb.KV", "Put") => Method::Put,
        ("etcdserverpb.KV", "DeleteRange") => Method::DeleteRange,
        ("etcdserverpb.KV", "Txn") => Method::Txn,
        ("etcdserverpb.KV", "Compact") => Method::Compact,
        ("etcdserverpb.Maintenance", "Status") => Method::Status,
        ("etcdserverpb.Maintenance", "Defragment") => Method::Defragment,
        ("etcdserverpb.Maintenance", "Alarm") => Method::Alarm,
        ("etcdserverpb.Maintenance", "Hash") => Method::Hash,
        ("etcdserverpb.Maintenance", "HashKV") => Method::HashKv,
        ("etcdserverpb.Maintenance", "Snapshot") => Method::Snapshot,
        ("etcdserverpb.Cluster", "MemberList") => Method::MemberList,
        ("etcdserverpb.Watch", "Watch") => Method::Watch,
        ("etcdserverpb.Lease", "LeaseGrant") => Method::LeaseGrant,
        ("etcdserverpb.Lease", "LeaseRevoke") => Method::LeaseRevoke,
        ("etcdserverpb.Lease", "LeaseKeepAlive") => Method::LeaseKeepAlive,
        ("etcdserverpb.Lease", "LeaseTimeToLive") => Method::LeaseTimeToLive,
        ("etcdserverpb.Lease", "LeaseLeases") => Method::LeaseLeases,
        ("v3lockpb.Lock", "Lock") => Method::Lock,
        ("v3lockpb.Lock", "Unlock") => Method::Unlock,
        ("v3electionpb.Election", "Campaign") => Method::Campaign,
        ("v3electionpb.Election", "Proclaim") => Method::Proclaim,
        ("v3electionpb.Election", "Leader") => Method::Leader,
        ("v3electionpb.Election", "Observe") => Method::Observe,
        ("v3electionpb.Election", "Resign") => Method::Resign,
        _ => {
            let Some(desc) = metastore_proto::SERVICES.iter().find(|d| d.name == service) else {
                return Err(Status::unknown_service(service));
            };
            if desc.methods.iter().any(|m| m.name == method) {
                return Err(errors::not_implemented(method));
            }
            return Err(Status::unknown_method(service, method));
        }
    };
    Ok(m)
}

fn decode<M: Message + Default>(message: &[u8]) -> Result<M, Status> {
    M::decode(message).map_err(|e| Status::new(Code::INTERNAL, format!("grpc: error unmarshalling request: {e}")))
}

/// Decodes and validates a request on the connection's core (etcd's thin handlers), so the
/// shard only sees requests that can be applied.
fn decode_request(method: Method, message: &[u8], cfg: &Config) -> Result<ShardRequest, Status> {
    // etcd size-checks what it proposes through raft: writes, not reads.
    let proposed = |len: usize| {
        if validate::proposal_bytes(len) > cfg.max_request_bytes as usize {
            Err(errors::request_too_large())
        } else {
            Ok(())
        }
    };
    Ok(match method {
        Method::HealthCheck | Method::HealthWatch => {
            ShardRequest::Health { service: decode::<HealthCheckRequest>(message)?.service }
        }
        Method::Range => {
            let r: pb::RangeRequest = decode(message)?;
            validate::range(&r)?;
            ShardRequest::Range(r)
        }
        Method::Put => {
            let r: pb::PutRequest = decode(message)?;
            validate::put(&r)?;
            proposed(message.len())?;
            ShardRequest::Put(r)
        }
        Method::DeleteRange => {
            let r: pb::DeleteRangeRequest = decode(message)?;
            validate::delete_range(&r)?;
            proposed(message.len())?;
            ShardRequest::DeleteRange(r)
        }
        Method::Txn => {
            let r: pb::TxnRequest = decode(message)?;
            validate::txn(&r, cfg.max_txn_ops as usize)?;
            if !kv::txn_is_read_only(&r) {
                proposed(message.len())?;
            }
            ShardRequest::Txn(r)
        }
        Method::Compact => {
            let r: pb::CompactionRequest = decode(message)?;
            proposed(message.len())?;
            ShardRequest::Compact(r)
        }
        Method::Status => {
            decode::<pb::StatusRequest>(message)?;
            ShardRequest::Status
        }
        Method::MemberList => {
            decode::<pb::MemberListRequest>(message)?;
            ShardRequest::MemberList
        }
        Method::Defragment => {
            decode::<pb::DefragmentRequest>(message)?;
            ShardRequest::Defragment
        }
        Method::Alarm => ShardRequest::Alarm(decode::<pb::AlarmRequest>(message)?),
        Method::Hash => {
            decode::<pb::HashRequest>(message)?;
            ShardRequest::Hash
        }
        Method::HashKv => ShardRequest::HashKv(decode::<pb::HashKvRequest>(message)?),
        Method::Snapshot => {
            decode::<pb::SnapshotRequest>(message)?;
            ShardRequest::Snapshot
        }
        Method::LeaseGrant => ShardRequest::LeaseGrant(decode::<pb::LeaseGrantRequest>(message)?),
        Method::LeaseRevoke => ShardRequest::LeaseRevoke(decode::<pb::LeaseRevokeRequest>(message)?),
        Method::LeaseKeepAlive => ShardRequest::LeaseKeepAlive(decode::<pb::LeaseKeepAliveRequest>(message)?.id),
        Method::LeaseTimeToLive => ShardRequest::LeaseTimeToLive(decode::<pb::LeaseTimeToLiveRequest>(message)?),
        Method::LeaseLeases => {
            decode::<pb::LeaseLeasesRequest>(message)?;
            ShardRequest::LeaseLeases
        }
        Method::Lock => ShardRequest::Lock(decode(message)?),
        Method::Unlock => ShardRequest::Unlock(decode(message)?),
        Method::Campaign => ShardRequest::Campaign(decode(message)?),
        Method::Proclaim => ShardRequest::Proclaim(decode(message)?),
        Method::Leader => ShardRequest::Leader(decode(message)?),
        Method::Resign => ShardRequest::Resign(decode(message)?),
        Method::Observe => {
            let r = decode::<metastore_proto::v3electionpb::LeaderRequest>(message)?;
            ShardRequest::Observe { name: r.name, key: Vec::new(), mod_rev: 0 }
        }
        // Answered on the connection's core (see `App::on_message`).
        Method::Null | Method::Watch => return Err(Status::new(Code::INTERNAL, "this method has no shard request")),
    })
}

struct CallCtx {
    method: Method,
    deadline: Option<Instant>,
    got_message: bool,
    /// A keep-alive stream's requests not answered yet.
    inflight: u32,
    /// The client has half-closed (a keep-alive stream then ends once every request is answered).
    half_closed: bool,
    /// Observe: the election's name.
    name: Vec<u8>,
}

/// Work found while decoding, carried out once the codec is no longer borrowed.
enum Work {
    Shard {
        stream: u32,
        req: ShardRequest,
    },
    Fail {
        stream: u32,
        status: Status,
    },
    /// A [`Method::Null`] call to answer with an empty message.
    Null {
        stream: u32,
    },
    /// A message on a Watch stream.
    Watch {
        stream: u32,
        call: crate::watch::WatchCall,
    },
}

/// The application side of one connection (implements the codec's `Service`).
struct App {
    slot: u32,
    gen: u32,
    shared: std::sync::Arc<Shared>,
    calls: HashMap<u32, CallCtx>,
    ready: VecDeque<Work>,
    arm: Vec<(Instant, u32)>,
    cancelled: Vec<u32>,
    /// Reset calls that may wait in the shard (see [`abandon`]).
    abandoned: Vec<u32>,
    /// Responses wait for the client's flow-control credit over the bound: requests are read
    /// but not dispatched.
    held: bool,
    core_id: usize,
    /// The time of the read being handled (set by the reader).
    now: Instant,
    /// Calls started so far (the idle sweep tells activity from it).
    calls_started: u64,
    /// Requests sent to the shard and not answered yet (replies the connection did not ask for,
    /// e.g. a watch's, may make it undercount: it saturates at 0).
    dispatched: u32,
    /// `--request-rate-limit-per-connection` and `--request-rate-limit-per-core`.
    bucket: Option<TokenBucket>,
    core_bucket: Option<Rc<Cell<TokenBucket>>>,
    /// `--experimental-enable-distributed-tracing`: the core's tracer, which samples calls.
    tracer: Option<Rc<crate::otel::CoreTracer>>,
}

impl App {
    fn call_ref(&self, stream: u32) -> CallRef {
        CallRef { conn_slot: self.slot, conn_gen: self.gen, stream }
    }
}

impl grpc::Service for App {
    fn on_call(&mut self, id: u32, call: &CallHead<'_>) -> Result<(), Status> {
        let stats = &self.shared.stats[self.core_id].defences;
        if self.held && self.calls.len() >= READY_MAX {
            CoreStats::add(&stats.flow_control_refused, 1);
            return Err(Status::new(
                Code::RESOURCE_EXHAUSTED,
                "too many requests waiting on this connection: read the responses first",
            ));
        }
        let method = route(call.service, call.method, &self.shared.cfg)?;
        call.set_tag(method as u16);
        if let Some(t) = &self.tracer {
            if let Some(token) = t.start(method as u16, |name| call.headers.get(name)) {
                call.set_trace(token);
            }
        }
        self.calls_started += 1;
        // Health checks are never rate limited: they are how operators see the overload.
        if !matches!(method, Method::HealthCheck | Method::HealthWatch) {
            if let Some(b) = &mut self.bucket {
                if !b.take(self.now) {
                    CoreStats::add(&stats.rate_limited_conn, 1);
                    return Err(too_many_requests());
                }
            }
            if let Some(cell) = &self.core_bucket {
                let mut b = cell.get();
                let ok = b.take(self.now);
                cell.set(b);
                if !ok {
                    CoreStats::add(&stats.rate_limited_core, 1);
                    return Err(too_many_requests());
                }
            }
        }
        let deadline = call.timeout.map(|t| Instant::now() + t);
        if let Some(at) = deadline {
            self.arm.push((at, id));
        }
        self.calls.insert(
            id,
            CallCtx { method, deadline, got_message: false, inflight: 0, half_closed: false, name: Vec::new() },
        );
        Ok(())
    }

    fn on_message(&mut self, id: u32, message: &[u8]) -> Result<(), Status> {
        let Some(call) = self.calls.get_mut(&id) else { return Ok(()) };
        if call.method == Method::Watch {
            call.got_message = true;
            let req = decode::<pb::WatchRequest>(message)?;
            // A request with none of create, cancel or progress is ignored, as etcd does.
            if let Some(call) = crate::watch::decode_call(req) {
                self.ready.push_back(Work::Watch { stream: id, call });
            }
            return Ok(());
        }
        if call.method == Method::LeaseKeepAlive {
            call.got_message = true;
            call.inflight += 1;
            let req = decode_request(call.method, message, &self.shared.cfg)?;
            self.ready.push_back(Work::Shard { stream: id, req });
            return Ok(());
        }
        if call.got_message {
            // Unary and server-streaming calls take one request; grpc-go reads only the first.
            return Ok(());
        }
        call.got_message = true;
        if call.method == Method::Observe {
            let r = decode::<metastore_proto::v3electionpb::LeaderRequest>(message)?;
            call.name.clone_from(&r.name);
        }
        if call.method == Method::Null {
            self.ready.push_back(Work::Null { stream: id });
            return Ok(());
        }
        let req = decode_request(call.method, message, &self.shared.cfg)?;
        self.ready.push_back(Work::Shard { stream: id, req });
        Ok(())
    }

    fn on_half_close(&mut self, id: u32) {
        if let Some(call) = self.calls.get_mut(&id).filter(|c| c.method == Method::LeaseKeepAlive) {
            // etcd ends a keep-alive stream with OK when the client closes its side.
            call.half_closed = true;
            if call.inflight == 0 {
                self.ready.push_back(Work::Fail { stream: id, status: Status::ok() });
            }
            return;
        }
        if let Some(call) = self.calls.get(&id) {
            // A Watch stream goes on after the client's half-close (etcd keeps sending).
            if !call.got_message && call.method != Method::Watch {
                // What grpc-go answers when a unary request has no message: io.EOF as Unknown.
                self.ready.push_back(Work::Fail { stream: id, status: Status::new(Code::UNKNOWN, "EOF") });
            }
        }
    }

    fn on_cancel(&mut self, id: u32) {
        if let Some(call) = self.calls.remove(&id) {
            self.cancelled.push(id);
            if waits_in_shard(&call) {
                self.abandoned.push(id);
            }
        }
    }

    fn on_http(&mut self, method: &[u8], path: &[u8]) -> Option<HttpResponse> {
        http::route(&self.shared, method, path)
    }
}

struct ConnState {
    grpc: GrpcConn,
    app: App,
    /// The socket is done (EOF, error, or a connection error was sent).
    closing: bool,
}

pub struct Conn {
    pub slot: u32,
    pub gen: u32,
    state: std::cell::RefCell<ConnState>,
    write_ready: LocalNotify,
    read_ready: LocalNotify,
    /// The socket, for shutting it down under a blocked read (slow and idle connections).
    fd: Cell<Option<RawFd>>,
    /// Since when the client owes the rest of a preface, frame or header block it started
    /// (None while it owes nothing, or while we are not reading).
    partial_since: Cell<Option<Instant>>,
    /// Since when the idle sweep has seen no call on it, and the calls started then.
    idle_since: Cell<Option<(Instant, u64)>>,
    /// When it was told to go by the sweep.
    cut_at: Cell<Option<Instant>>,
}

/// Why the sweep ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// `--read-header-timeout`: GOAWAY(ENHANCE_YOUR_CALM).
    Slow,
    /// `--idle-connection-timeout`: GOAWAY(NO_ERROR), as grpc-go's MaxConnectionIdle.
    Idle,
}

impl Conn {
    pub(crate) fn new(core: &Core, slot: u32, gen: u32) -> Self {
        let cfg = &core.shared.cfg;
        let gcfg = grpc::Config {
            h2: metastore_net::h2::Config {
                max_concurrent_streams: cfg.max_concurrent_streams,
                header_list_bytes_max: cfg.max_header_list_size,
                // etcd: `MinTime: --grpc-keepalive-min-time, PermitWithoutStream: false`.
                ping_policy: Some(metastore_net::h2::PingPolicy {
                    min_interval: cfg.grpc_keepalive_min_time,
                    permit_without_stream: false,
                }),
                ..Default::default()
            },
            recv_message_bytes_max: cfg.recv_message_bytes_max(),
            stats: (!cfg!(feature = "no-telemetry")).then(|| core.stats().grpc.clone()),
            observer: core.tracer.clone().map(|t| t as Rc<dyn grpc::CallObserver>),
        };
        Self {
            slot,
            gen,
            state: std::cell::RefCell::new(ConnState {
                grpc: GrpcConn::new(gcfg),
                app: App {
                    slot,
                    gen,
                    shared: core.shared.clone(),
                    calls: HashMap::new(),
                    ready: VecDeque::new(),
                    arm: Vec::new(),
                    cancelled: Vec::new(),
                    abandoned: Vec::new(),
                    held: false,
                    core_id: core.id,
                    now: Instant::now(),
                    calls_started: 0,
                    dispatched: 0,
                    bucket: rate_bucket(cfg.request_rate_per_connection).map(|b| b.get()),
                    core_bucket: core.request_bucket.clone(),
                    tracer: core.tracer.clone(),
                },
                closing: false,
            }),
            write_ready: LocalNotify::default(),
            read_ready: LocalNotify::default(),
            fd: Cell::new(None),
            partial_since: Cell::new(None),
            idle_since: Cell::new(None),
            cut_at: Cell::new(None),
        }
    }

    /// Tells a slow or idle connection to go, and wakes its reader by shutting the socket's
    /// read side (the writer still sends the GOAWAY).
    fn cut(&self, core: &Core, why: Cut) {
        let stats = &core.stats().defences;
        let mut st = self.state.borrow_mut();
        match why {
            Cut::Slow => {
                CoreStats::add(&stats.header_timeouts, 1);
                st.grpc.h2.abort(ErrorCode::ENHANCE_YOUR_CALM, "read header timeout");
            }
            Cut::Idle => {
                CoreStats::add(&stats.idle_closed, 1);
                st.grpc.h2.start_drain();
            }
        }
        st.closing = true;
        drop(st);
        self.cut_at.set(Some(Instant::now()));
        self.shutdown(libc::SHUT_RD);
        self.write_ready.notify();
        self.read_ready.notify();
    }

    fn shutdown(&self, how: libc::c_int) {
        if let Some(fd) = self.fd.get() {
            // SAFETY: `fd` is this connection's socket, open while the connection is registered
            // with its core (the halves that own it are dropped only after `remove_conn`, on this
            // thread); shutdown(2) neither closes nor frees it.
            unsafe {
                libc::shutdown(fd, how);
            }
        }
    }

    /// A reply from the shard for one of this connection's calls.
    pub fn on_shard_reply(&self, core: &Core, stream: u32, reply: ShardReply) {
        let mut st = self.state.borrow_mut();
        st.app.dispatched = st.app.dispatched.saturating_sub(1);
        st.apply_reply(core, stream, reply);
        drop(st);
        self.write_ready.notify();
    }

    /// Writes messages on `stream` (a streaming call's responses) and wakes the writer.
    pub fn send_messages(&self, stream: u32, f: impl FnOnce(&mut dyn FnMut(&[u8]))) {
        let mut st = self.state.borrow_mut();
        let grpc = &mut st.grpc;
        f(&mut |m: &[u8]| grpc.send_message(stream, |b| b.extend_from_slice(m)));
        drop(st);
        self.write_ready.notify();
    }

    /// Output bytes not yet taken by the socket or waiting for the client's credit.
    pub fn output_backlog(&self) -> usize {
        let st = self.state.borrow();
        st.grpc.h2.out().len() + st.grpc.h2.blocked_bytes()
    }

    /// Whether `stream` is still a call waiting on the deadline `at`.
    pub fn has_deadline(&self, stream: u32, at: Instant) -> bool {
        self.state.borrow().app.calls.get(&stream).is_some_and(|c| c.deadline == Some(at))
    }

    /// A deadline armed for `stream` passed.
    pub fn on_deadline(&self, core: &Core, stream: u32, at: Instant) {
        let mut st = self.state.borrow_mut();
        let Some(call) = st.app.calls.get(&stream).filter(|c| c.deadline == Some(at)) else {
            return;
        };
        let waits = waits_in_shard(call);
        // etcd's Lock and Campaign return their recipe's context error, which its grpc-go
        // (1.26) sends as Unknown.
        let status = match call.method {
            Method::Lock | Method::Campaign => Status::new(Code::UNKNOWN, "context deadline exceeded"),
            _ => deadline_exceeded(),
        };
        st.end_call(core, stream, &status);
        if waits {
            abandon(core, st.app.call_ref(stream), false);
        }
        drop(st);
        self.write_ready.notify();
    }

    /// Graceful shutdown: health watchers hear NOT_SERVING and end; GOAWAY goes out.
    pub fn drain(&self, core: &Core) {
        let mut st = self.state.borrow_mut();
        let watchers: Vec<(CallRef, bool)> = core
            .health_watchers
            .borrow()
            .iter()
            .filter(|(c, _)| c.conn_slot == self.slot && c.conn_gen == self.gen)
            .copied()
            .collect();
        for (call, known) in watchers {
            st.end_watch(core, call.stream, known);
        }
        let watches: Vec<u32> =
            st.app.calls.iter().filter(|(_, c)| c.method == Method::Watch).map(|(id, _)| *id).collect();
        for stream in watches {
            st.end_call(core, stream, &Status::new(Code::UNAVAILABLE, "etcdserver: server stopped"));
        }
        st.grpc.h2.start_drain();
        drop(st);
        self.write_ready.notify();
        self.read_ready.notify();
    }
}

#[cfg(test)]
impl Conn {
    /// Feeds client bytes and dispatches what they hold, as the reader task does; appends the
    /// output to `out`.
    pub(crate) fn feed_for_test(&self, core: &Core, input: &[u8], out: &mut Vec<u8>) {
        let mut st = self.state.borrow_mut();
        let ConnState { grpc, app, .. } = &mut *st;
        let used = grpc.recv(input, app);
        assert_eq!(used, input.len());
        assert!(st.process(core, std::task::Waker::noop()));
        drop(st);
        self.take_output_for_test(out);
    }

    /// Appends what the connection has to write to `out`.
    pub(crate) fn take_output_for_test(&self, out: &mut Vec<u8>) {
        // As the writer task does: swap buffers, so each side keeps its capacity.
        let mut st = self.state.borrow_mut();
        if out.is_empty() {
            st.grpc.h2.take_out(out);
        } else {
            let mut tmp = Vec::new();
            st.grpc.h2.take_out(&mut tmp);
            out.extend_from_slice(&tmp);
            tmp.clear();
            // Hand the (now empty) buffer back so the connection keeps its capacity.
            st.grpc.h2.take_out(&mut tmp);
        }
    }
}

/// Bytes of snapshot per message, as etcd sends them.
const SNAPSHOT_CHUNK_BYTES: usize = 32 << 10;

/// Streams a snapshot as etcd does: the data in 32 KiB blobs with the bytes still to come, then
/// one last message whose blob is the SHA-256 trailer (remaining 0).
fn send_snapshot(grpc: &mut GrpcConn, stream: u32, bytes: &[u8]) {
    let split = bytes.len().saturating_sub(metastore_storage::snapshot::TRAILER_BYTES);
    let (data, sha) = bytes.split_at(split);
    let mut sent = 0usize;
    for chunk in data.chunks(SNAPSHOT_CHUNK_BYTES) {
        sent += chunk.len();
        let msg = pb::SnapshotResponse {
            remaining_bytes: (data.len() - sent) as u64,
            blob: chunk.to_vec(),
            ..Default::default()
        };
        grpc.send_message(stream, |b| msg.encode_raw(b));
    }
    let last = pb::SnapshotResponse { remaining_bytes: 0, blob: sha.to_vec(), ..Default::default() };
    grpc.send_message(stream, |b| last.encode_raw(b));
    grpc.finish(stream, &Status::ok());
}

fn deadline_exceeded() -> Status {
    Status::new(Code::DEADLINE_EXCEEDED, "context deadline exceeded")
}

/// Whether a call may be waiting in the shard for the store to change (Lock, Campaign,
/// Observe): when its client goes, the shard must hear of it.
fn waits_in_shard(call: &CallCtx) -> bool {
    call.got_message && matches!(call.method, Method::Lock | Method::Campaign | Method::Observe)
}

/// Tells the shard that `call`'s client went (or every call of its connection, `whole_conn`):
/// a waiting Lock or Campaign then removes its key, as etcd's recipes do on a cancelled context.
/// Sent in order after the call's own requests (by the watch task, which also sends Observe's).
fn abandon(core: &Core, call: CallRef, whole_conn: bool) {
    core.resubmit(Envelope { call, deadline: None, req: ShardRequest::Abandon { whole_conn } });
}

fn encode_health(status: ServingStatus) -> impl FnOnce(&mut Vec<u8>) {
    move |buf| {
        // Encoding into a Vec cannot fail: it grows as needed.
        let _ = HealthCheckResponse { status: status as i32 }.encode(buf);
    }
}

impl ConnState {
    /// Carries out what the last `recv` found. Returns false while a request waits for a slot in
    /// the ring to the shard (the waker is registered for it).
    fn process(&mut self, core: &Core, waker: &std::task::Waker) -> bool {
        for (at, stream) in self.app.arm.drain(..) {
            core.arm_deadline(at, CallRef { conn_slot: self.app.slot, conn_gen: self.app.gen, stream });
        }
        if !self.app.cancelled.is_empty() {
            let (slot, gen) = (self.app.slot, self.app.gen);
            let cancelled = &self.app.cancelled;
            core.health_watchers
                .borrow_mut()
                .retain(|(c, _)| !(c.conn_slot == slot && c.conn_gen == gen && cancelled.contains(&c.stream)));
            let mut hub = core.watch.borrow_mut();
            for &stream in cancelled {
                hub.remove_stream(CallRef { conn_slot: slot, conn_gen: gen, stream });
            }
            drop(hub);
            self.app.cancelled.clear();
        }
        for stream in std::mem::take(&mut self.app.abandoned) {
            abandon(core, self.app.call_ref(stream), false);
        }
        while let Some(work) = self.app.ready.pop_front() {
            match work {
                Work::Fail { stream, status } => {
                    self.app.calls.remove(&stream);
                    self.grpc.finish(stream, &status);
                }
                Work::Null { stream } => {
                    if self.app.calls.remove(&stream).is_some() {
                        self.grpc.reply(stream, |_| {});
                    }
                }
                Work::Watch { stream, call } => {
                    if !self.app.calls.contains_key(&stream) {
                        continue;
                    }
                    let current = core.shared.shard_stats.revision.load(std::sync::atomic::Ordering::Relaxed) as i64;
                    let grpc = &mut self.grpc;
                    core.watch.borrow_mut().request(self.app.call_ref(stream), call, current, &mut |m| {
                        grpc.send_message(stream, |b| b.extend_from_slice(m))
                    });
                    core.watch_wake.notify();
                }
                Work::Shard { stream, req } => {
                    let Some(call) = self.app.calls.get(&stream) else {
                        continue;
                    };
                    // A client that grants no credit gets no more work done for it than the
                    // bounds say; the rest waits for its WINDOW_UPDATEs (read on meanwhile).
                    let h2 = &self.grpc.h2;
                    if h2.credit_starved()
                        && (h2.blocked_bytes() > OUT_BYTES_MAX || self.app.dispatched >= INFLIGHT_WHILE_BLOCKED_MAX)
                    {
                        self.app.ready.push_front(Work::Shard { stream, req });
                        return true;
                    }
                    let env = Envelope { call: self.app.call_ref(stream), deadline: call.deadline, req };
                    match core.submit(env, waker) {
                        Submit::Done(outcome) => {
                            // The shard is on this core: its response is in the core's buffer.
                            let out = core.local_out.borrow();
                            self.apply(core, stream, outcome, &out);
                            drop(out);
                            core.local_out.borrow_mut().clear();
                        }
                        Submit::Sent => self.app.dispatched += 1,
                        Submit::Full(env) => {
                            self.app.ready.push_front(Work::Shard { stream, req: env.req });
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    /// A reply that came back over the ring.
    fn apply_reply(&mut self, core: &Core, stream: u32, reply: ShardReply) {
        match reply {
            ShardReply::Encoded(bytes) => self.apply(core, stream, Outcome::Encoded, &bytes),
            ShardReply::Health(s) => self.apply(core, stream, Outcome::Health(s), &[]),
            ShardReply::Error(e) => self.apply(core, stream, Outcome::Error(e), &[]),
            ShardReply::DeadlineExceeded => self.apply(core, stream, Outcome::DeadlineExceeded, &[]),
            ShardReply::WatchSynced(r) => self.apply(core, stream, Outcome::WatchSynced(r), &[]),
            // Published to the core, not to a call: `Core::deliver` hands them to the hub.
            ShardReply::WatchEvents(_) | ShardReply::WatchLagged(_) => {}
        }
    }

    /// Answers a call with what the shard made of it (`encoded`: the response message).
    fn apply(&mut self, core: &Core, stream: u32, outcome: Outcome, encoded: &[u8]) {
        let Some(call) = self.app.calls.get(&stream) else { return };
        match (call.method, outcome) {
            (_, Outcome::DeadlineExceeded) => self.end_call(core, stream, &deadline_exceeded()),
            (_, Outcome::Error(e)) => self.end_call(core, stream, &e),
            (Method::HealthCheck, Outcome::Health(Some(s))) => {
                self.app.calls.remove(&stream);
                self.grpc.reply(stream, encode_health(s));
            }
            (Method::HealthCheck, Outcome::Health(None)) => {
                self.end_call(core, stream, &Status::new(Code::NOT_FOUND, "unknown service"));
            }
            (Method::HealthWatch, Outcome::Health(s)) => {
                let status = s.unwrap_or(ServingStatus::ServiceUnknown);
                self.grpc.send_message(stream, encode_health(status));
                let known = s.is_some();
                if core.is_draining() {
                    self.end_watch(core, stream, known);
                } else {
                    core.health_watchers.borrow_mut().push((self.app.call_ref(stream), known));
                }
            }
            (Method::Watch, Outcome::WatchSynced(r)) => {
                let backlog = self.grpc.h2.out().len() + self.grpc.h2.blocked_bytes();
                let grpc = &mut self.grpc;
                core.watch.borrow_mut().synced(self.app.call_ref(stream), *r, backlog, &mut |m| {
                    grpc.send_message(stream, |b| b.extend_from_slice(m))
                });
                core.watch_wake.notify();
            }
            (_, Outcome::WatchSynced(_)) => {}
            (Method::LeaseKeepAlive, Outcome::Encoded) => {
                self.grpc.send_message(stream, |b| b.extend_from_slice(encoded));
                if let Some(c) = self.app.calls.get_mut(&stream) {
                    c.inflight = c.inflight.saturating_sub(1);
                    if c.half_closed && c.inflight == 0 {
                        self.app.calls.remove(&stream);
                        self.grpc.finish(stream, &Status::ok());
                    }
                }
            }
            (Method::Observe, Outcome::Encoded) => {
                self.grpc.send_message(stream, |b| b.extend_from_slice(encoded));
                // Ask for the next change.
                let Ok(r) = metastore_proto::v3electionpb::LeaderResponse::decode(encoded) else { return };
                let Some(kv) = r.kv else { return };
                let name = self.app.calls.get(&stream).map(|c| c.name.clone()).unwrap_or_default();
                let req = ShardRequest::Observe { name, key: kv.key, mod_rev: kv.mod_revision };
                core.resubmit(Envelope { call: self.app.call_ref(stream), deadline: None, req });
            }
            (Method::Snapshot, Outcome::Encoded) => {
                self.app.calls.remove(&stream);
                send_snapshot(&mut self.grpc, stream, encoded);
            }
            (_, Outcome::Encoded) => {
                self.app.calls.remove(&stream);
                self.grpc.reply(stream, |b| b.extend_from_slice(encoded));
            }
            // Writes answer through the shard loop, never as an immediate outcome.
            (_, Outcome::Pending) => {}
            (_, Outcome::Health(_)) => {
                debug_assert!(false, "a health outcome for a non-health call");
                self.end_call(core, stream, &Status::new(Code::INTERNAL, "unexpected reply"));
            }
        }
    }

    /// Ends a Health.Watch at shutdown: a last NOT_SERVING for a known service, then UNAVAILABLE.
    fn end_watch(&mut self, core: &Core, stream: u32, known: bool) {
        if known {
            self.grpc.send_message(stream, encode_health(ServingStatus::NotServing));
        }
        self.end_call(core, stream, &Status::new(Code::UNAVAILABLE, "etcdserver: server stopped"));
    }

    fn end_call(&mut self, core: &Core, stream: u32, status: &Status) {
        let method = self.app.calls.remove(&stream).map(|c| c.method);
        let me = self.app.call_ref(stream);
        core.health_watchers.borrow_mut().retain(|(c, _)| *c != me);
        if method == Some(Method::Watch) {
            core.watch.borrow_mut().remove_stream(me);
        }
        self.grpc.finish(stream, status);
    }
}

/// Counts a core's open sockets for `--max-connections-per-core`.
struct SocketSlot(Rc<Core>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.sockets.set(self.0.sockets.get().saturating_sub(1));
    }
}

/// Reads once, within `deadline` if there is one; None on EOF, error or timeout.
async fn read_by(rd: &mut ReadHalf, buf: Vec<u8>, deadline: Option<Instant>) -> Option<Vec<u8>> {
    let (res, buf) = match deadline {
        None => rd.read(buf).await,
        Some(at) => {
            let left = at.checked_duration_since(Instant::now())?;
            monoio::time::timeout(left, rd.read(buf)).await.ok()?
        }
    };
    match res {
        Ok(n) if n > 0 => Some(buf),
        _ => None,
    }
}

/// Serves one accepted connection until it closes.
pub async fn serve(core: Rc<Core>, stream: TcpStream) {
    serve_on(core, stream, false).await;
}

/// A connection to a `--listen-metrics-urls` listener: HTTP/1.1 only, and only /metrics and the
/// health endpoints (etcd's metrics port).
pub async fn serve_metrics(core: Rc<Core>, stream: TcpStream) {
    serve_on(core, stream, true).await;
}

async fn serve_on(core: Rc<Core>, stream: TcpStream, metrics_only: bool) {
    let open = core.sockets.get();
    if open >= core.shared.cfg.max_connections_per_core {
        CoreStats::add(&core.stats().defences.conns_rejected, 1);
        return; // dropping the stream closes it
    }
    core.sockets.set(open + 1);
    let _slot = SocketSlot(core.clone());
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let (mut rd, wr) = stream.into_split();
    // Sniff the protocol from the first bytes, which must come within --read-header-timeout.
    let started = Instant::now();
    let deadline = core.shared.cfg.read_header_timeout.map(|t| started + t);
    let mut first = Vec::with_capacity(READ_BYTES_MAX);
    let proto = loop {
        let Some(buf) = read_by(&mut rd, Vec::with_capacity(READ_BYTES_MAX), deadline).await else {
            if deadline.is_some_and(|at| Instant::now() >= at) {
                CoreStats::add(&core.stats().defences.header_timeouts, 1);
            }
            return;
        };
        first.extend_from_slice(&buf);
        if let Some(p) = sniff(&first) {
            break p;
        }
    };
    match proto {
        Protocol::Http1 => serve_http1(&core, rd, wr, first, started, metrics_only).await,
        // The metrics port speaks no gRPC: dropping the stream closes it.
        Protocol::Http2 if metrics_only => {}
        Protocol::Http2 => serve_h2(core, rd, wr, first, fd, started).await,
    }
}

/// Every so often, on each core: cuts connections that have owed the rest of a preface, frame
/// or header block for longer than `--read-header-timeout`, and those without a call for
/// `--idle-connection-timeout`; shuts down those cut a while ago that are still there.
pub async fn sweep_loop(core: Rc<Core>) {
    let cfg = &core.shared.cfg;
    let (header, idle) = (cfg.read_header_timeout, cfg.idle_connection_timeout);
    let Some(shortest) = [header, idle].into_iter().flatten().min() else {
        return;
    };
    let every = (shortest / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        monoio::time::sleep(every).await;
        let now = Instant::now();
        for c in core.conns_snapshot() {
            if let Some(at) = c.cut_at.get() {
                if now.duration_since(at) >= CUT_GRACE {
                    c.shutdown(libc::SHUT_RDWR);
                }
                continue;
            }
            if let (Some(t), Some(since)) = (header, c.partial_since.get()) {
                if now.duration_since(since) >= t {
                    c.cut(&core, Cut::Slow);
                    continue;
                }
            }
            let Some(t) = idle else { continue };
            let (calls, started) = {
                let st = c.state.borrow();
                (st.app.calls.len() + st.grpc.h2.active_streams(), st.app.calls_started)
            };
            match c.idle_since.get() {
                _ if calls > 0 => c.idle_since.set(None),
                Some((_, seen)) if seen != started => c.idle_since.set(Some((now, started))),
                None => c.idle_since.set(Some((now, started))),
                Some((since, _)) if now.duration_since(since) >= t => c.cut(&core, Cut::Idle),
                Some(_) => {}
            }
        }
    }
}

type ReadHalf = monoio::io::OwnedReadHalf<TcpStream>;
type WriteHalf = monoio::io::OwnedWriteHalf<TcpStream>;

async fn serve_h2(core: Rc<Core>, mut rd: ReadHalf, wr: WriteHalf, first: Vec<u8>, fd: RawFd, started: Instant) {
    let conn = core.add_conn(|slot, gen| Rc::new(Conn::new(&core, slot, gen)));
    conn.fd.set(Some(fd));
    let defences = &core.stats().defences;
    // Since when the client owes the rest of what it started: the preface (since the accept),
    // a header block (since its HEADERS), a frame (since the last frame completed).
    let mut owed_since = Some(started);
    let mut block: Option<(u32, Instant)> = None;
    let mut frame_since: Option<Instant> = None;
    if core.is_draining() {
        conn.state.borrow_mut().grpc.h2.start_drain();
    }
    let writer = monoio::spawn(write_loop(core.clone(), conn.clone(), wr));
    conn.write_ready.notify(); // our SETTINGS
                               // `rbuf` receives each read; `pending` holds bytes not yet consumed (a partial frame).
    let mut pending = first;
    let mut rbuf = Vec::with_capacity(READ_BYTES_MAX);
    let mut peer_eof = false;
    'conn: loop {
        // Feed what we have: straight from the read buffer, or after a partial frame carried over.
        let all: &[u8] = if pending.is_empty() { &rbuf } else { &pending };
        let input = all.get(..FEED_BYTES_MAX).unwrap_or(all);
        // Whether whole frames are left over after this turn: fed before reading again.
        let mut more = false;
        if !input.is_empty() {
            let now = Instant::now();
            let mut st = conn.state.borrow_mut();
            let ConnState { grpc, app, .. } = &mut *st;
            grpc.h2.set_now(now);
            app.now = now;
            let mut used = grpc.recv(input, app);
            if used == 0 && input.len() < all.len() {
                // A frame larger than one turn's share: feed it whole.
                used = grpc.recv(all, app);
            }
            more = used > 0 && used < all.len();
            if let Some(e) = grpc.h2.take_events() {
                defences.record(&e);
            }
            let done = grpc.h2.is_closed();
            let preface_done = grpc.h2.preface_done();
            block = match (grpc.h2.header_block_open(), block) {
                (Some(id), Some((open, since))) if open == id => Some((open, since)),
                (Some(id), _) => Some((id, now)),
                (None, _) => None,
            };
            drop(st);
            if pending.is_empty() {
                pending.extend_from_slice(&rbuf[used..]);
            } else {
                pending.drain(..used);
            }
            rbuf.clear();
            frame_since = match frame_since {
                _ if pending.is_empty() => None,
                Some(since) if used == 0 => Some(since),
                _ => Some(now),
            };
            owed_since =
                [(!preface_done).then_some(started), block.map(|b| b.1), frame_since].into_iter().flatten().min();
            conn.write_ready.notify();
            if done {
                break;
            }
        }
        // Dispatch; wait while the ring to the shard is full or the output is backed up.
        loop {
            let blocked = poll_fn(|cx| {
                let mut st = conn.state.borrow_mut();
                if st.closing {
                    return Poll::Ready(None);
                }
                // Responses held back by the client's flow control: take no new work, but keep
                // reading, since only the client's WINDOW_UPDATEs (read from the socket) can
                // release them. Bytes the socket has not taken yet: stop reading.
                let held = st.grpc.h2.blocked_bytes() > OUT_BYTES_MAX;
                if held && !st.app.held {
                    CoreStats::add(&defences.flow_control_holds, 1);
                }
                st.app.held = held;
                if !held && !st.process(&core, cx.waker()) {
                    return Poll::Pending;
                }
                Poll::Ready(Some(st.grpc.h2.out().len() > OUT_BYTES_MAX))
            })
            .await;
            conn.write_ready.notify();
            match blocked {
                None => break 'conn,
                Some(false) => break,
                Some(true) => {
                    conn.read_ready.notified().await;
                    // Time spent not reading is not the client's.
                    owed_since = owed_since.map(|_| Instant::now());
                    block = block.map(|(id, _)| (id, Instant::now()));
                    frame_since = frame_since.map(|_| Instant::now());
                }
            }
        }
        if conn.state.borrow().grpc.h2.is_done() {
            break;
        }
        if more {
            // Whole frames are waiting: let the core's other connections have a turn first.
            yield_now().await;
            continue;
        }
        conn.partial_since.set(owed_since);
        CoreStats::add(&core.stats().io_submissions, 1);
        let (res, buf) = rd.read(rbuf).await;
        conn.partial_since.set(None);
        rbuf = buf;
        match res {
            Ok(0) | Err(_) => {
                peer_eof = true;
                break;
            }
            Ok(_) if pending.is_empty() => {}
            Ok(_) => {
                pending.extend_from_slice(&rbuf);
                rbuf.clear();
            }
        }
    }
    conn.state.borrow_mut().closing = true;
    conn.write_ready.notify();
    let _ = writer.await;
    if !peer_eof {
        linger(&mut rd, rbuf).await;
    }
    // Calls still open die with the connection.
    let mut st = conn.state.borrow_mut();
    if !st.app.abandoned.is_empty() || st.app.calls.values().any(waits_in_shard) {
        abandon(&core, st.app.call_ref(0), true);
    }
    st.app.calls.clear();
    drop(st);
    core.remove_conn(conn.slot, conn.gen);
}

/// After we end a connection (GOAWAY sent, write side shut), the peer may still be sending.
/// Closing with unread input makes the kernel send RST, which can destroy our last frames in
/// flight; so read and discard until the peer closes too, within a bound.
async fn linger(rd: &mut ReadHalf, mut buf: Vec<u8>) {
    let deadline = Instant::now() + std::time::Duration::from_millis(LINGER_MS_MAX);
    let mut total = 0usize;
    while total < LINGER_BYTES_MAX {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        buf.clear();
        match monoio::time::timeout(left, rd.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                total += n;
                buf = b;
            }
            _ => return,
        }
    }
}

async fn write_loop(core: Rc<Core>, conn: Rc<Conn>, mut wr: WriteHalf) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BYTES_MAX);
    loop {
        let finished = {
            let mut st = conn.state.borrow_mut();
            if st.grpc.h2.out().is_empty() {
                Some(st.closing || st.grpc.h2.is_done())
            } else {
                st.grpc.h2.take_out(&mut buf);
                None
            }
        };
        match finished {
            Some(true) => break,
            Some(false) => {
                conn.write_ready.notified().await;
                continue;
            }
            None => {}
        }
        CoreStats::add(&core.stats().io_submissions, 1);
        let (res, b) = wr.write_all(buf).await;
        buf = b;
        buf.clear();
        conn.read_ready.notify();
        if res.is_err() {
            conn.state.borrow_mut().closing = true;
            break;
        }
    }
    let _ = wr.shutdown().await;
    conn.read_ready.notify();
}

async fn serve_http1(
    core: &Core,
    mut rd: ReadHalf,
    mut wr: WriteHalf,
    first: Vec<u8>,
    started: Instant,
    metrics_only: bool,
) {
    let cfg = &core.shared.cfg;
    let mut buf = first;
    let mut out = Vec::new();
    // A request head must be complete within --read-header-timeout of its first byte; between
    // requests, --idle-connection-timeout applies.
    let mut head_since = Some(started);
    loop {
        match http1::parse_request(&buf) {
            Ok(Some(req)) => {
                let total = req.head_len + req.body_len;
                let close = req.close;
                let route = if metrics_only { http::route_metrics } else { http::route };
                let resp =
                    route(&core.shared, req.method.as_bytes(), req.path.as_bytes()).unwrap_or_else(http::not_found);
                http1::write_response(&mut out, resp.status, resp.content_type, &resp.body, close);
                // Skip the body, reading more if it has not all arrived.
                while buf.len() < total {
                    let (res, chunk) = rd.read(Vec::with_capacity(READ_BYTES_MAX)).await;
                    match res {
                        Ok(0) | Err(_) => return,
                        Ok(_) => buf.extend_from_slice(&chunk),
                    }
                }
                buf.drain(..total);
                head_since = None;
                let (res, o) = wr.write_all(out).await;
                out = o;
                out.clear();
                if res.is_err() || close {
                    let _ = wr.shutdown().await;
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                let status = if e == http1::Error::TooLarge { 413 } else { 400 };
                http1::write_response(&mut out, status, "text/plain; charset=utf-8", b"", true);
                let _ = wr.write_all(out).await;
                let _ = wr.shutdown().await;
                return;
            }
        }
        if !buf.is_empty() && head_since.is_none() {
            head_since = Some(Instant::now());
        }
        let deadline = match head_since {
            Some(since) => cfg.read_header_timeout.map(|t| since + t),
            None => cfg.idle_connection_timeout.map(|t| Instant::now() + t),
        };
        let Some(chunk) = read_by(&mut rd, Vec::with_capacity(READ_BYTES_MAX), deadline).await else {
            if deadline.is_some_and(|at| Instant::now() >= at) {
                let stats = &core.stats().defences;
                CoreStats::add(if head_since.is_some() { &stats.header_timeouts } else { &stats.idle_closed }, 1);
            }
            return;
        };
        if head_since.is_none() {
            head_since = Some(Instant::now());
        }
        buf.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests {
    //! Backpressure: when the ring to the shard is full, a connection's dispatch stops (and with
    //! it, its reading) instead of queueing; it resumes when a slot frees.
    use super::*;
    use crate::reactor::{CoreStats, ShardLink, StopSignal};
    use crate::{notify::WaitList, ring};
    use metastore_net::frame::{self, flag, kind, PREFACE};
    use metastore_net::hpack;
    use std::cell::RefCell;
    use std::sync::Arc;

    fn client_bytes(calls: u32) -> Vec<u8> {
        let mut b = PREFACE.to_vec();
        frame::write_settings(&mut b, &[]);
        let mut enc = hpack::Encoder::new();
        for i in 0..calls {
            let id = 1 + 2 * i;
            let mut block = Vec::new();
            enc.encode(
                [
                    (&b":method"[..], &b"POST"[..]),
                    (b":scheme", b"http"),
                    (b":path", b"/grpc.health.v1.Health/Check"),
                    (b"content-type", b"application/grpc"),
                ],
                &mut block,
            );
            frame::write_header(&mut b, block.len(), kind::HEADERS, flag::END_HEADERS, id);
            b.extend_from_slice(&block);
            frame::write_data(&mut b, id, &[0, 0, 0, 0, 0], true, 16_384);
        }
        b
    }

    #[test]
    fn the_metrics_table_lists_every_method_in_order() {
        let cfg = Config { bench_null: true, ..Config::default() };
        for (i, (service, method, _)) in METHODS.iter().enumerate() {
            let m = route(service, method, &cfg).unwrap_or_else(|e| panic!("{service}/{method}: {e:?}"));
            assert_eq!(m as usize, i, "{service}/{method}");
        }
        assert_eq!(Method::Null as usize, METHODS.len() - 1, "every method is in the table");
    }

    #[test]
    fn full_ring_stalls_dispatch_until_a_slot_frees() {
        let shared = Arc::new(Shared {
            cfg: crate::config::Config::default(),
            driver: "test",
            stats: vec![CoreStats::default(), CoreStats::default()],
            stop: StopSignal::new(2),
            shard_stats: Default::default(),
        });
        let (tx, mut shard_rx) = ring::channel(2);
        let (_reply_tx, reply_rx) = ring::channel(2);
        let link = ShardLink::Remote { tx: RefCell::new(tx), rx: RefCell::new(reply_rx), space: WaitList::default() };
        let core = Core::new(1, shared, link);
        let conn = core.add_conn(|slot, gen| Rc::new(Conn::new(&core, slot, gen)));
        let waker = std::task::Waker::noop();
        let mut st = conn.state.borrow_mut();
        let bytes = client_bytes(3);
        let ConnState { grpc, app, .. } = &mut *st;
        assert_eq!(grpc.recv(&bytes, app), bytes.len());
        assert!(!st.process(&core, waker), "the third request does not fit");
        assert_eq!(st.app.ready.len(), 1, "it waits in the connection, not in an unbounded queue");
        assert_eq!(shard_rx.len(), 2);
        let ShardLink::Remote { space, .. } = &core.link else { unreachable!() };
        assert!(!space.is_empty(), "the connection waits for a slot");
        assert_eq!(core.stats().ring_full_waits.load(std::sync::atomic::Ordering::Relaxed), 1);
        let first = shard_rx.try_recv().expect("a request");
        assert_eq!(first.call.stream, 1);
        assert!(st.process(&core, waker), "a slot freed: dispatch resumes");
        assert!(st.app.ready.is_empty());
        assert_eq!(shard_rx.len(), 2);
    }

    #[test]
    fn finished_calls_do_not_keep_their_deadlines() {
        crate::testing::run(async { finished_calls_do_not_keep_their_deadlines_in_rt() })
    }

    fn finished_calls_do_not_keep_their_deadlines_in_rt() {
        let shared = Arc::new(Shared {
            cfg: crate::config::Config::default(),
            driver: "test",
            stats: vec![CoreStats::default()],
            stop: StopSignal::new(1),
            shard_stats: Default::default(),
        });
        let dir = crate::testing::temp_dir("deadlines");
        let shard = crate::testing::shard(&dir);
        let link = ShardLink::Local { shard: RefCell::new(shard), inbound: RefCell::new(vec![]) };
        let core = Core::new(0, shared, link);
        let conn = core.add_conn(|slot, gen| Rc::new(Conn::new(&core, slot, gen)));
        let mut client = crate::test_client::Client::new();
        let mut out = Vec::new();
        let body = [0u8; 0];
        for _ in 0..3 * crate::reactor::TIMERS_SWEEP_MIN {
            client.call_with("/grpc.health.v1.Health/Check", &body, &[(b"grpc-timeout", b"1H")]);
            conn.feed_for_test(&core, &client.take(), &mut out);
            out.clear();
            core.sweep_deadlines();
        }
        assert!(
            core.timers_len() <= crate::reactor::TIMERS_SWEEP_MIN,
            "an hour-long deadline per finished call stays in the heap: {}",
            core.timers_len()
        );
    }
}
