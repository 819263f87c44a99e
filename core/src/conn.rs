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

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use metastore_net::grpc::{self, CallHead, Code, GrpcConn, HttpResponse, Status};
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
use crate::notify::LocalNotify;
use crate::reactor::{Core, Shared, Submit};
use crate::shard::{CallRef, Envelope, Outcome, ShardReply, ShardRequest};

/// Bytes read from the socket per read call.
const READ_BYTES_MAX: usize = 64 << 10;
/// Output not yet taken by the socket above which the reader stops reading; output waiting for
/// the client's flow-control credit above which no new request is dispatched.
const OUT_BYTES_MAX: usize = 4 << 20;
/// Calls open on a connection whose responses wait for credit above which new calls are refused
/// with RESOURCE_EXHAUSTED, so that reading on (requests not dispatched) stays bounded.
const READY_MAX: usize = 4096;
/// How long, and how many bytes, we keep reading (and discarding) after ending a connection.
const LINGER_MS_MAX: u64 = 1_000;
const LINGER_BYTES_MAX: usize = 4 << 20;

const HEALTH: &str = "grpc.health.v1.Health";

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
    /// Responses wait for the client's flow-control credit over the bound: requests are read
    /// but not dispatched.
    held: bool,
}

impl App {
    fn call_ref(&self, stream: u32) -> CallRef {
        CallRef { conn_slot: self.slot, conn_gen: self.gen, stream }
    }
}

impl grpc::Service for App {
    fn on_call(&mut self, id: u32, call: &CallHead<'_>) -> Result<(), Status> {
        if self.held && self.calls.len() >= READY_MAX {
            return Err(Status::new(
                Code::RESOURCE_EXHAUSTED,
                "too many requests waiting on this connection: read the responses first",
            ));
        }
        let method = route(call.service, call.method, &self.shared.cfg)?;
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
        if self.calls.remove(&id).is_some() {
            self.cancelled.push(id);
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
}

impl Conn {
    pub(crate) fn new(core: &Core, slot: u32, gen: u32) -> Self {
        let cfg = &core.shared.cfg;
        let gcfg = grpc::Config {
            h2: metastore_net::h2::Config { max_concurrent_streams: cfg.max_concurrent_streams, ..Default::default() },
            recv_message_bytes_max: cfg.recv_message_bytes_max(),
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
                    held: false,
                },
                closing: false,
            }),
            write_ready: LocalNotify::default(),
            read_ready: LocalNotify::default(),
        }
    }

    /// A reply from the shard for one of this connection's calls.
    pub fn on_shard_reply(&self, core: &Core, stream: u32, reply: ShardReply) {
        let mut st = self.state.borrow_mut();
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
        let due = st.app.calls.get(&stream).is_some_and(|c| c.deadline == Some(at));
        if !due {
            return;
        }
        st.end_call(core, stream, &deadline_exceeded());
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
                    let env = Envelope { call: self.app.call_ref(stream), deadline: call.deadline, req };
                    match core.submit(env, waker) {
                        Submit::Done(outcome) => {
                            // The shard is on this core: its response is in the core's buffer.
                            let out = core.local_out.borrow();
                            self.apply(core, stream, outcome, &out);
                            drop(out);
                            core.local_out.borrow_mut().clear();
                        }
                        Submit::Sent => {}
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

/// Serves one accepted connection until it closes.
pub async fn serve(core: Rc<Core>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    // Sniff the protocol from the first bytes.
    let mut first = Vec::with_capacity(READ_BYTES_MAX);
    let proto = loop {
        let buf = Vec::with_capacity(READ_BYTES_MAX);
        let (res, buf) = rd.read(buf).await;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => first.extend_from_slice(&buf),
        }
        if let Some(p) = sniff(&first) {
            break p;
        }
    };
    match proto {
        Protocol::Http1 => serve_http1(&core, rd, wr, first).await,
        Protocol::Http2 => serve_h2(core, rd, wr, first).await,
    }
}

type ReadHalf = monoio::io::OwnedReadHalf<TcpStream>;
type WriteHalf = monoio::io::OwnedWriteHalf<TcpStream>;

async fn serve_h2(core: Rc<Core>, mut rd: ReadHalf, wr: WriteHalf, first: Vec<u8>) {
    let conn = core.add_conn(|slot, gen| Rc::new(Conn::new(&core, slot, gen)));
    if core.is_draining() {
        conn.state.borrow_mut().grpc.h2.start_drain();
    }
    let writer = monoio::spawn(write_loop(conn.clone(), wr));
    conn.write_ready.notify(); // our SETTINGS
                               // `rbuf` receives each read; `pending` holds bytes not yet consumed (a partial frame).
    let mut pending = first;
    let mut rbuf = Vec::with_capacity(READ_BYTES_MAX);
    let mut peer_eof = false;
    'conn: loop {
        // Feed what we have: straight from the read buffer, or after a partial frame carried over.
        let input: &[u8] = if pending.is_empty() { &rbuf } else { &pending };
        if !input.is_empty() {
            let mut st = conn.state.borrow_mut();
            let ConnState { grpc, app, .. } = &mut *st;
            let used = grpc.recv(input, app);
            let done = st.grpc.h2.is_closed();
            drop(st);
            if pending.is_empty() {
                pending.extend_from_slice(&rbuf[used..]);
            } else {
                pending.drain(..used);
            }
            rbuf.clear();
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
                Some(true) => conn.read_ready.notified().await,
            }
        }
        if conn.state.borrow().grpc.h2.is_done() {
            break;
        }
        let (res, buf) = rd.read(rbuf).await;
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

async fn write_loop(conn: Rc<Conn>, mut wr: WriteHalf) {
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

async fn serve_http1(core: &Core, mut rd: ReadHalf, mut wr: WriteHalf, first: Vec<u8>) {
    let mut buf = first;
    let mut out = Vec::new();
    loop {
        match http1::parse_request(&buf) {
            Ok(Some(req)) => {
                let total = req.head_len + req.body_len;
                let close = req.close;
                let resp = http::route(&core.shared, req.method.as_bytes(), req.path.as_bytes())
                    .unwrap_or_else(http::not_found);
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
        let (res, chunk) = rd.read(Vec::with_capacity(READ_BYTES_MAX)).await;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => buf.extend_from_slice(&chunk),
        }
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
