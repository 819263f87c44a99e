//! gRPC over HTTP/2 (grpc/grpc `doc/PROTOCOL-HTTP2.md`), without IO.
//!
//! [`GrpcConn`] wraps an HTTP/2 [`Connection`]: it sorts requests into gRPC calls and plain HTTP
//! requests, reassembles length-prefixed messages that span any number of DATA frames (handing
//! out a slice of the input when a message sits inside one frame), enforces the receive limit
//! before buffering, and answers protocol-level failures the way grpc-go does. Replies are
//! appended to the connection's output, so a unary reply's HEADERS, DATA and trailers leave in
//! one write.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frame::ErrorCode;
use crate::h2::{self, Connection, HeaderList};

/// etcd's gRPC receive limit: `--max-request-bytes` (1.5 MiB) + 512 KiB of grpc overhead.
pub const RECV_MESSAGE_BYTES_DEFAULT: usize = 2 * 1024 * 1024;
const PREFIX_LEN: usize = 5;
/// Most reserved up front for a message that spans frames; the rest grows with its data.
const REASSEMBLY_RESERVE_BYTES_MAX: usize = 64 << 10;

/// gRPC status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub u32);

impl Code {
    /// Codes 0 to 16.
    pub const COUNT: usize = 17;
    /// grpc-go's names (`codes.Code.String()`), what go-grpc-prometheus puts in `grpc_code`.
    pub const GO_NAMES: [&'static str; Self::COUNT] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    pub const OK: Self = Self(0);
    pub const CANCELLED: Self = Self(1);
    pub const UNKNOWN: Self = Self(2);
    pub const INVALID_ARGUMENT: Self = Self(3);
    pub const DEADLINE_EXCEEDED: Self = Self(4);
    pub const NOT_FOUND: Self = Self(5);
    pub const ALREADY_EXISTS: Self = Self(6);
    pub const PERMISSION_DENIED: Self = Self(7);
    pub const RESOURCE_EXHAUSTED: Self = Self(8);
    pub const FAILED_PRECONDITION: Self = Self(9);
    pub const ABORTED: Self = Self(10);
    pub const OUT_OF_RANGE: Self = Self(11);
    pub const UNIMPLEMENTED: Self = Self(12);
    pub const INTERNAL: Self = Self(13);
    pub const UNAVAILABLE: Self = Self(14);
    pub const DATA_LOSS: Self = Self(15);
    pub const UNAUTHENTICATED: Self = Self(16);
}

/// A call's outcome: code and message, sent as `grpc-status` / `grpc-message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: Cow<'static, str>,
}

impl Status {
    pub const fn ok() -> Self {
        Self { code: Code::OK, message: Cow::Borrowed("") }
    }

    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Self { code, message: message.into() }
    }

    /// grpc-go's answer for a service this server does not have.
    pub fn unknown_service(service: &str) -> Self {
        Self::new(Code::UNIMPLEMENTED, format!("unknown service {service}"))
    }

    /// grpc-go's answer for a method a known service does not have.
    pub fn unknown_method(service: &str, method: &str) -> Self {
        Self::new(Code::UNIMPLEMENTED, format!("unknown method {method} for service {service}"))
    }
}

/// Limits of the gRPC layer.
#[derive(Debug, Clone)]
pub struct Config {
    pub h2: h2::Config,
    /// Largest request message accepted; larger ones get RESOURCE_EXHAUSTED before buffering.
    pub recv_message_bytes_max: usize,
    /// Where calls are counted (calls the service tagged, see [`CallHead::set_tag`]).
    pub stats: Option<Arc<CallStats>>,
    /// Told how each call the service marked with [`CallHead::set_trace`] ended.
    pub observer: Option<Rc<dyn CallObserver>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            h2: h2::Config::default(),
            recv_message_bytes_max: RECV_MESSAGE_BYTES_DEFAULT,
            stats: None,
            observer: None,
        }
    }
}

/// Hears how marked calls end (tracing: a span ends with its call). For every call marked with
/// [`CallHead::set_trace`], `on_end` is called exactly once, whichever way the call goes:
/// finished by the service, failed by the codec, reset by the client, cut by a deadline, or
/// still open when the connection is dropped (then `CANCELLED`). Calls no one marked cost
/// nothing.
pub trait CallObserver: std::fmt::Debug {
    /// The call marked with `token` ended with `code` (and `message`, empty for OK).
    fn on_end(&self, token: u32, code: Code, message: &str);
}

/// Upper bounds (seconds) of the handling-time histogram: Prometheus' default buckets, which
/// go-grpc-prometheus uses for `grpc_server_handling_seconds`.
pub const HANDLING_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// go-grpc-prometheus's counters per method (a method is the tag its calls carry): started,
/// messages received and sent, handled by code, and optionally the handling time. Meant to be
/// written by one thread (every connection of one core shares one) and read by any: each
/// update is a relaxed load and store, no read-modify-write.
#[derive(Debug)]
pub struct CallStats {
    methods: usize,
    started: Box<[AtomicU64]>,
    received: Box<[AtomicU64]>,
    sent: Box<[AtomicU64]>,
    /// `methods x Code::COUNT`.
    handled: Box<[AtomicU64]>,
    /// `methods x (buckets, then the sum in microseconds)`, when handling time is kept.
    handling: Option<Box<[AtomicU64]>>,
}

const HANDLING_SLOTS: usize = HANDLING_BUCKETS.len() + 1;

fn zeros(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

fn bump(c: Option<&AtomicU64>, n: u64) {
    if let Some(c) = c {
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
}

impl CallStats {
    /// Counters for tags `0..methods`; `handling_time`: also the histogram (etcd's
    /// `--metrics=extensive`).
    pub fn new(methods: usize, handling_time: bool) -> Self {
        Self {
            methods,
            started: zeros(methods),
            received: zeros(methods),
            sent: zeros(methods),
            handled: zeros(methods * Code::COUNT),
            handling: handling_time.then(|| zeros(methods * HANDLING_SLOTS)),
        }
    }

    pub fn methods(&self) -> usize {
        self.methods
    }

    fn get(v: &[AtomicU64], i: usize) -> u64 {
        v.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn started(&self, tag: usize) -> u64 {
        Self::get(&self.started, tag)
    }

    pub fn received(&self, tag: usize) -> u64 {
        Self::get(&self.received, tag)
    }

    pub fn sent(&self, tag: usize) -> u64 {
        Self::get(&self.sent, tag)
    }

    pub fn handled(&self, tag: usize, code: usize) -> u64 {
        Self::get(&self.handled, tag * Code::COUNT + code)
    }

    /// Whether handling time is kept.
    pub fn has_handling_time(&self) -> bool {
        self.handling.is_some()
    }

    /// Calls per bucket of [`HANDLING_BUCKETS`] (not cumulative), and the total time in
    /// microseconds.
    pub fn handling_time(&self, tag: usize) -> ([u64; HANDLING_BUCKETS.len()], u64) {
        let mut b = [0; HANDLING_BUCKETS.len()];
        let Some(h) = &self.handling else { return (b, 0) };
        for (i, v) in b.iter_mut().enumerate() {
            *v = Self::get(h, tag * HANDLING_SLOTS + i);
        }
        (b, Self::get(h, tag * HANDLING_SLOTS + HANDLING_BUCKETS.len()))
    }

    fn on_handled(&self, tag: usize, code: Code, started: Option<Instant>, now: Instant) {
        bump(self.handled.get(tag * Code::COUNT + (code.0 as usize).min(Code::COUNT - 1)), 1);
        if let (Some(h), Some(t0)) = (&self.handling, started) {
            let took = now.saturating_duration_since(t0);
            let secs = took.as_secs_f64();
            // A call slower than the last bound is counted in +Inf only (count minus buckets).
            if let Some(i) = HANDLING_BUCKETS.iter().position(|&b| secs <= b) {
                bump(h.get(tag * HANDLING_SLOTS + i), 1);
            }
            bump(h.get(tag * HANDLING_SLOTS + HANDLING_BUCKETS.len()), took.as_micros() as u64);
        }
    }
}

/// A call's tag when the service gave none: not counted.
const NO_TAG: u16 = u16::MAX;

/// What the application sees of a new gRPC call.
pub struct CallHead<'a> {
    pub service: &'a str,
    pub method: &'a str,
    /// From `grpc-timeout`, if the client set one.
    pub timeout: Option<Duration>,
    /// All request headers (metadata such as `token` or `hasleader`).
    pub headers: &'a HeaderList,
    tag: Cell<u16>,
    trace: Cell<Option<u32>>,
}

impl CallHead<'_> {
    /// Counts this call, once accepted, under `tag` in [`Config::stats`].
    pub fn set_tag(&self, tag: u16) {
        self.tag.set(tag);
    }

    /// Reports this call's end to [`Config::observer`] under `token` (see [`CallObserver`]),
    /// even if the service then refuses it.
    pub fn set_trace(&self, token: u32) {
        self.trace.set(Some(token));
    }
}

/// A plain HTTP response (for requests that are not gRPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// The application's side. Callbacks run inside [`GrpcConn::recv`]; replies are sent after it
/// returns, through the `GrpcConn`.
pub trait Service {
    /// A new call. Returning an error answers it at once (trailers-only).
    fn on_call(&mut self, id: u32, call: &CallHead<'_>) -> Result<(), Status>;
    /// One complete request message.
    fn on_message(&mut self, id: u32, message: &[u8]) -> Result<(), Status>;
    /// The client finished sending (END_STREAM).
    fn on_half_close(&mut self, id: u32);
    /// The call is gone (RST_STREAM from the client, or a stream error): drop its work.
    fn on_cancel(&mut self, id: u32);
    /// A request that is not gRPC. `None` answers as grpc-go does: HTTP 415.
    fn on_http(&mut self, method: &[u8], path: &[u8]) -> Option<HttpResponse>;
}

enum CallKind {
    Grpc,
    /// A plain HTTP request, answered once its body has arrived.
    Http(Option<HttpResponse>),
}

struct Call {
    kind: CallKind,
    headers_sent: bool,
    /// The application accepted the call (`on_call` returned Ok) and so holds state for it.
    accepted: bool,
    /// A failure was answered; the rest of the request is ignored.
    failed: bool,
    /// Whether `grpc-encoding` named a codec (we only speak identity).
    encoding: Option<Box<str>>,
    prefix: [u8; PREFIX_LEN],
    prefix_len: usize,
    /// Length of the message being reassembled into `body`.
    body_len: Option<usize>,
    body: Vec<u8>,
    /// Where the call is counted ([`NO_TAG`]: nowhere), and since when (handling time).
    tag: u16,
    started: Option<Instant>,
    /// The [`CallObserver`]'s token, when the service marked the call.
    trace: Option<u32>,
}

type CallMap = HashMap<u32, Call>;

enum Action {
    Finish { id: u32, http_status: u16, status: Status },
    Http { id: u32, response: HttpResponse },
}

pub struct GrpcConn {
    pub h2: Connection,
    calls: CallMap,
    actions: Vec<Action>,
    scratch: Vec<u8>,
    recv_message_bytes_max: usize,
    stats: Option<Arc<CallStats>>,
    observer: Option<Rc<dyn CallObserver>>,
}

impl GrpcConn {
    pub fn new(cfg: Config) -> Self {
        Self {
            h2: Connection::new(cfg.h2),
            calls: CallMap::new(),
            actions: Vec::new(),
            scratch: Vec::with_capacity(4096),
            recv_message_bytes_max: cfg.recv_message_bytes_max,
            stats: cfg.stats,
            observer: cfg.observer,
        }
    }

    /// Feeds socket bytes; returns how many were consumed (see [`Connection::recv`]).
    pub fn recv(&mut self, input: &[u8], svc: &mut impl Service) -> usize {
        let mut adapter = Adapter {
            calls: &mut self.calls,
            actions: &mut self.actions,
            svc,
            recv_message_bytes_max: self.recv_message_bytes_max,
            stats: self.stats.as_deref(),
            observer: self.observer.as_deref(),
            now: self.h2.now(),
        };
        let n = self.h2.recv(input, &mut adapter);
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            match action {
                Action::Finish { id, http_status, status } => self.finish_with(id, http_status, &status),
                Action::Http { id, response } => self.send_http(id, &response),
            }
        }
        self.actions = actions;
        n
    }

    /// Whether the call is still open (not finished, not cancelled).
    pub fn is_open(&self, id: u32) -> bool {
        self.calls.contains_key(&id)
    }

    fn ensure_headers(&mut self, id: u32) -> bool {
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        if !call.headers_sent {
            call.headers_sent = true;
            self.h2.send_headers(id, &[(b":status", b"200"), (b"content-type", b"application/grpc")], false);
        }
        true
    }

    /// Sends one response message; `encode` appends the message bytes to the buffer it is given.
    pub fn send_message(&mut self, id: u32, encode: impl FnOnce(&mut Vec<u8>)) {
        if !self.ensure_headers(id) {
            return;
        }
        if let (Some(stats), Some(call)) = (&self.stats, self.calls.get(&id)) {
            bump(stats.sent.get(usize::from(call.tag)), 1);
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&[0; PREFIX_LEN]);
        encode(&mut self.scratch);
        let len = (self.scratch.len() - PREFIX_LEN) as u32;
        self.scratch[1..PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
        let scratch = std::mem::take(&mut self.scratch);
        self.h2.send_data(id, &scratch, false);
        self.scratch = scratch;
    }

    /// Ends the call with `status`: trailers after a response, trailers-only otherwise.
    pub fn finish(&mut self, id: u32, status: &Status) {
        self.finish_with(id, 200, status);
    }

    /// A unary reply: HEADERS, the message and the OK trailers, appended together.
    pub fn reply(&mut self, id: u32, encode: impl FnOnce(&mut Vec<u8>)) {
        self.send_message(id, encode);
        self.finish(id, &Status::ok());
    }

    fn finish_with(&mut self, id: u32, http_status: u16, status: &Status) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        self.handled(&call, status.code, &status.message);
        let code = itoa_u32(status.code.0);
        let message = percent_encode(&status.message);
        if call.headers_sent {
            let mut fields: [(&[u8], &[u8]); 2] = [(b"grpc-status", code.as_bytes()), (b"", b"")];
            let n = if message.is_empty() {
                1
            } else {
                fields[1] = (b"grpc-message", message.as_bytes());
                2
            };
            self.h2.send_trailers(id, &fields[..n]);
        } else {
            let http = itoa_u32(http_status as u32);
            let mut fields: [(&[u8], &[u8]); 4] = [
                (b":status", http.as_bytes()),
                (b"content-type", b"application/grpc"),
                (b"grpc-status", code.as_bytes()),
                (b"", b""),
            ];
            let n = if message.is_empty() {
                3
            } else {
                fields[3] = (b"grpc-message", message.as_bytes());
                4
            };
            // The call is removed already, so the stream must be reached through h2 directly.
            self.h2.send_headers(id, &fields[..n], true);
        }
    }

    /// Cancels a call from the server side (deadline passed): RST_STREAM(CANCEL), as grpc-go does
    /// after sending DEADLINE_EXCEEDED.
    pub fn cancel(&mut self, id: u32) {
        if let Some(call) = self.calls.remove(&id) {
            self.handled(&call, Code::DEADLINE_EXCEEDED, "");
            self.h2.reset_stream(id, ErrorCode::CANCEL);
        }
    }

    /// The call ended (it has just left `calls`, so this runs once per call).
    fn handled(&self, call: &Call, code: Code, message: &str) {
        if let (Some(token), Some(observer)) = (call.trace, &self.observer) {
            observer.on_end(token, code, message);
        }
        if let Some(stats) = &self.stats {
            if call.tag != NO_TAG {
                // The clock is read only for the histogram: calls end outside `recv` (a
                // shard's reply), where the time last passed in is stale.
                let now = if call.started.is_some() { Instant::now() } else { self.h2.now() };
                stats.on_handled(usize::from(call.tag), code, call.started, now);
            }
        }
    }

    fn send_http(&mut self, id: u32, r: &HttpResponse) {
        if self.calls.remove(&id).is_none() {
            return;
        }
        let status = itoa_u32(r.status as u32);
        let len = itoa_u32(r.body.len() as u32);
        self.h2.send_headers(
            id,
            &[
                (b":status", status.as_bytes()),
                (b"content-type", r.content_type.as_bytes()),
                (b"content-length", len.as_bytes()),
            ],
            r.body.is_empty(),
        );
        if !r.body.is_empty() {
            self.h2.send_data(id, &r.body, true);
        }
    }
}

impl Drop for GrpcConn {
    /// Calls still open when the connection goes end as their handlers would: Canceled.
    fn drop(&mut self) {
        if self.stats.is_some() || self.observer.is_some() {
            for call in self.calls.values() {
                if !call.failed {
                    self.handled(call, Code::CANCELLED, "");
                } else if let (Some(token), Some(observer)) = (call.trace, &self.observer) {
                    // Failed, but its answer never left (it is sent within `recv`, so this is
                    // only a safeguard): the observer still hears of its end.
                    observer.on_end(token, Code::CANCELLED, "");
                }
            }
        }
    }
}

struct Adapter<'a, S> {
    calls: &'a mut CallMap,
    actions: &'a mut Vec<Action>,
    svc: &'a mut S,
    recv_message_bytes_max: usize,
    stats: Option<&'a CallStats>,
    observer: Option<&'a dyn CallObserver>,
    now: Instant,
}

impl<S: Service> Adapter<'_, S> {
    /// Answers the call with an error; the application, if it held the call, is told to drop it.
    fn fail(&mut self, id: u32, http_status: u16, status: Status) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.failed {
            return;
        }
        call.failed = true;
        if call.accepted {
            self.svc.on_cancel(id);
        }
        self.actions.push(Action::Finish { id, http_status, status });
    }

    /// Splits `data` into messages. Returns the first failure.
    fn reassemble(&mut self, id: u32, mut data: &[u8]) -> Result<(), Status> {
        let max = self.recv_message_bytes_max;
        while !data.is_empty() {
            let Some(call) = self.calls.get_mut(&id) else {
                return Ok(());
            };
            if call.failed {
                return Ok(());
            }
            if let Some(want) = call.body_len {
                let n = (want - call.body.len()).min(data.len());
                call.body.extend_from_slice(&data[..n]);
                data = &data[n..];
                if call.body.len() == want {
                    call.body_len = None;
                    let body = std::mem::take(&mut call.body);
                    if let Some(stats) = self.stats {
                        bump(stats.received.get(usize::from(call.tag)), 1);
                    }
                    let r = self.svc.on_message(id, &body);
                    if let Some(call) = self.calls.get_mut(&id) {
                        call.body = body;
                        call.body.clear();
                    }
                    r?;
                }
                continue;
            }
            let n = (PREFIX_LEN - call.prefix_len).min(data.len());
            call.prefix[call.prefix_len..call.prefix_len + n].copy_from_slice(&data[..n]);
            call.prefix_len += n;
            data = &data[n..];
            if call.prefix_len < PREFIX_LEN {
                return Ok(());
            }
            call.prefix_len = 0;
            let flag = call.prefix[0];
            let len = u32::from_be_bytes([call.prefix[1], call.prefix[2], call.prefix[3], call.prefix[4]]) as usize;
            match (flag, &call.encoding) {
                (0, _) => {}
                (1, Some(enc)) => {
                    return Err(Status::new(
                        Code::UNIMPLEMENTED,
                        format!("grpc: Decompressor is not installed for grpc-encoding \"{enc}\""),
                    ));
                }
                (1, None) => {
                    return Err(Status::new(
                        Code::INTERNAL,
                        "grpc: compressed flag set with identity or empty encoding",
                    ));
                }
                (f, _) => {
                    return Err(Status::new(Code::INTERNAL, format!("grpc: received unexpected payload format {f}")));
                }
            }
            if len > max {
                return Err(Status::new(
                    Code::RESOURCE_EXHAUSTED,
                    format!("grpc: received message larger than max ({len} vs. {max})"),
                ));
            }
            if data.len() >= len {
                // The whole message is in this frame: no copy.
                let (msg, rest) = data.split_at(len);
                data = rest;
                if let Some(stats) = self.stats {
                    bump(stats.received.get(usize::from(call.tag)), 1);
                }
                self.svc.on_message(id, msg)?;
            } else {
                call.body.clear();
                // Grow as bytes arrive: a client may announce 2 MiB and send one byte.
                call.body.reserve(len.min(REASSEMBLY_RESERVE_BYTES_MAX));
                call.body_len = Some(len);
            }
        }
        Ok(())
    }
}

impl<S: Service> h2::Handler for Adapter<'_, S> {
    fn on_headers(&mut self, id: u32, headers: &HeaderList, end_stream: bool) {
        let content_type = headers.get(b"content-type").unwrap_or(b"");
        let path = headers.get(b":path").unwrap_or(b"");
        let is_grpc = content_type == b"application/grpc"
            || content_type.starts_with(b"application/grpc+")
            || content_type.starts_with(b"application/grpc;");
        let mut call = Call {
            kind: CallKind::Grpc,
            headers_sent: false,
            accepted: false,
            failed: false,
            encoding: None,
            prefix: [0; PREFIX_LEN],
            prefix_len: 0,
            body_len: None,
            body: Vec::new(),
            tag: NO_TAG,
            started: None,
            trace: None,
        };
        if !is_grpc {
            let method = headers.get(b":method").unwrap_or(b"");
            let response = self.svc.on_http(method, path);
            let known = response.is_some();
            call.kind = CallKind::Http(response);
            self.calls.insert(id, call);
            if !known {
                let ct = String::from_utf8_lossy(content_type);
                let status = Status::new(Code::INVALID_ARGUMENT, format!("invalid gRPC request content-type {ct:?}"));
                self.fail(id, 415, status);
            } else if end_stream {
                self.on_data(id, &[], true);
            }
            return;
        }
        if let Some(enc) = headers.get(b"grpc-encoding") {
            if enc != b"identity" {
                call.encoding = Some(String::from_utf8_lossy(enc).into());
            }
        }
        self.calls.insert(id, call);
        let timeout = match headers.get(b"grpc-timeout").map(parse_timeout) {
            None => None,
            Some(Some(t)) => Some(t),
            Some(None) => {
                let v = String::from_utf8_lossy(headers.get(b"grpc-timeout").unwrap_or(b""));
                let status = Status::new(Code::INTERNAL, format!("malformed grpc-timeout: {v:?}"));
                self.fail(id, 400, status);
                return;
            }
        };
        // gRPC is POST only; grpc-go answers any other method with HTTP 405 and Internal.
        let http_method = headers.get(b":method").unwrap_or(b"");
        if http_method != b"POST" {
            let m = String::from_utf8_lossy(http_method);
            let status = Status::new(
                Code::INTERNAL,
                format!("Received a HEADERS frame with :method {m:?} which should be POST"),
            );
            self.fail(id, 405, status);
            return;
        }
        let Some((service, method)) = split_path(path) else {
            let p = String::from_utf8_lossy(path);
            self.fail(id, 200, Status::new(Code::UNIMPLEMENTED, format!("malformed method name: {p:?}")));
            return;
        };
        let head = CallHead { service, method, timeout, headers, tag: Cell::new(NO_TAG), trace: Cell::new(None) };
        let accepted = self.svc.on_call(id, &head);
        let Some(call) = self.calls.get_mut(&id) else { return };
        // A call the service tagged is counted even if it refuses it (too many requests...),
        // as go-grpc-prometheus's interceptor counts what the handler returns.
        call.tag = head.tag.get();
        call.trace = head.trace.get();
        if let Some(stats) = self.stats {
            if call.tag != NO_TAG {
                bump(stats.started.get(usize::from(call.tag)), 1);
                if stats.handling.is_some() {
                    call.started = Some(self.now);
                }
            }
        }
        if let Err(status) = accepted {
            self.fail(id, 200, status);
            return;
        }
        call.accepted = true;
        // As grpc-go, once the method is known: a message codec we do not have fails the call
        // before any message is read (the gRPC compression spec's UNIMPLEMENTED).
        if let Some(enc) = &call.encoding {
            let status = Status::new(
                Code::UNIMPLEMENTED,
                format!("grpc: Decompressor is not installed for grpc-encoding \"{enc}\""),
            );
            self.fail(id, 200, status);
            return;
        }
        if end_stream {
            self.svc.on_half_close(id);
        }
    }

    fn on_data(&mut self, id: u32, data: &[u8], end_stream: bool) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.failed {
            return;
        }
        if let CallKind::Http(response) = &mut call.kind {
            if end_stream {
                if let Some(response) = response.take() {
                    self.actions.push(Action::Http { id, response });
                }
            }
            return;
        }
        if let Err(status) = self.reassemble(id, data) {
            self.fail(id, 200, status);
            return;
        }
        if end_stream {
            let Some(call) = self.calls.get(&id) else {
                return;
            };
            if call.failed {
                return;
            }
            if call.prefix_len != 0 || call.body_len.is_some() {
                self.fail(id, 200, Status::new(Code::INTERNAL, "unexpected EOF"));
                return;
            }
            self.svc.on_half_close(id);
        }
    }

    fn on_reset(&mut self, id: u32, _code: ErrorCode) {
        if let Some(call) = self.calls.remove(&id) {
            if call.accepted && !call.failed {
                self.svc.on_cancel(id);
                // What the handler returns when its client goes away.
                if let (Some(stats), true) = (self.stats, call.tag != NO_TAG) {
                    stats.on_handled(usize::from(call.tag), Code::CANCELLED, call.started, self.now);
                }
            }
            // Even a failed call: its answer (queued) will not find it, so this is its end.
            if let (Some(token), Some(observer)) = (call.trace, self.observer) {
                observer.on_end(token, Code::CANCELLED, "");
            }
        }
    }
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
pub fn split_path(path: &[u8]) -> Option<(&str, &str)> {
    let path = std::str::from_utf8(path).ok()?;
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.rsplit_once('/')?;
    if service.is_empty() || method.is_empty() {
        return None;
    }
    Some((service, method))
}

/// `grpc-timeout`: 1 to 8 ASCII digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |acc, d| acc * 10 + (d - b'0') as u64);
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes a duration as `grpc-timeout` (for clients and tests).
pub fn format_timeout(d: Duration) -> String {
    let us = d.as_micros();
    if us < 100_000_000 {
        format!("{us}u")
    } else {
        format!("{}m", d.as_millis().min(99_999_999))
    }
}

/// `grpc-message` encoding: bytes outside 0x20..=0x7e, and `%`, become `%XX`.
pub fn percent_encode(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b'%') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// Decodes `grpc-message` (lenient: a malformed escape is kept as is).
pub fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if let Some(v) = s.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()) {
                if let Ok(b) = u8::from_str_radix(v, 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(s[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decimal text of a u32 without allocating.
struct Itoa {
    buf: [u8; 10],
    start: usize,
}

impl Itoa {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_u32(mut n: u32) -> Itoa {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Itoa { buf, start: i }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_every_unit() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"4m"), Some(Duration::from_millis(4)));
        assert_eq!(parse_timeout(b"4999870u"), Some(Duration::from_micros(4_999_870)));
        assert_eq!(parse_timeout(b"6n"), Some(Duration::from_nanos(6)));
        assert_eq!(parse_timeout(b"99999999S"), Some(Duration::from_secs(99_999_999)));
        for bad in [&b""[..], b"S", b"123456789S", b"1x", b"-1S", b"1 S", b"1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_timeout(format_timeout(Duration::from_secs(5)).as_bytes()), Some(Duration::from_secs(5)));
    }

    #[test]
    fn paths() {
        assert_eq!(split_path(b"/etcdserverpb.KV/Range"), Some(("etcdserverpb.KV", "Range")));
        assert_eq!(split_path(b"/a/b/c"), Some(("a/b", "c")));
        assert_eq!(split_path(b"etcdserverpb.KV/Range"), None);
        assert_eq!(split_path(b"/Range"), None);
        assert_eq!(split_path(b"/svc/"), None);
    }

    #[test]
    fn grpc_message_percent_encoding() {
        assert_eq!(percent_encode("etcdserver: key is not provided"), "etcdserver: key is not provided");
        assert_eq!(percent_encode("50% ✓\n"), "50%25 %E2%9C%93%0A");
        assert_eq!(percent_decode(b"50%25 %E2%9C%93%0A"), "50% ✓\n");
        assert_eq!(percent_decode(b"bad %G1 %2"), "bad %G1 %2");
    }

    #[test]
    fn itoa() {
        for n in [0u32, 7, 10, 200, 415, u32::MAX] {
            assert_eq!(itoa_u32(n).as_bytes(), n.to_string().as_bytes());
        }
    }
}
