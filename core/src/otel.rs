//! Distributed tracing as etcd 3.5 does it (`--experimental-enable-distributed-tracing`): one
//! OpenTelemetry server span per sampled gRPC call, named and attributed as etcd's `otelgrpc`
//! interceptor names them (`etcdserverpb.KV/Range`, `rpc.system`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code`, status ERROR when the call fails), exported over OTLP/gRPC.
//!
//! Sampling is etcd's: OpenTelemetry's parent-based sampler around a trace-ID ratio of
//! `--experimental-distributed-tracing-sampling-rate` per million (never, at 0). A call whose W3C
//! `traceparent` metadata is valid follows its parent's decision: sampled, its span is the
//! parent's child in the parent's trace; not sampled, nothing is recorded.
//!
//! Where the cost goes: the decision is made when a call starts (`conn.rs`, `App::on_call`), on
//! the call's core; a call not sampled costs a header lookup (and with a rate above 0, one step of
//! a per-core random generator), no allocation and no clock read. A sampled call takes a slot in
//! its core's table of open spans and is marked for the codec (`CallHead::set_trace`), which tells
//! the core's [`CoreTracer`] when the call ends, whichever way it ends. The finished span goes into
//! the core's bounded ring to the exporter (full: dropped and counted in
//! `metastore_trace_spans_dropped_total`); a core never waits. One exporter thread drains every
//! ring, and sends batches of up to 512 spans at least once a second (`otlp.rs`), reconnecting
//! with backoff when the collector is away; while it is, spans wait in a bounded buffer and then
//! in the rings, where the overflow is dropped.
//!
//! Left out: span events per message and `net.peer.*` attributes (otelgrpc adds them), and
//! propagating the context further (MetaStore calls nothing downstream).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metastore_net::grpc::{CallObserver, Code};
use metastore_proto::opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest;
use metastore_proto::opentelemetry::proto::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use metastore_proto::opentelemetry::proto::resource::v1::Resource;
use metastore_proto::opentelemetry::proto::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use slab::Slab;
use tracing::{info, warn};

use crate::config::{Tracing, SAMPLING_RATE_MAX};
use crate::reactor::{CoreStats, Shared};

/// Finished spans one core's ring holds for the exporter (OpenTelemetry's default queue size);
/// more are dropped and counted.
pub const SPANS_BUFFERED_MAX: usize = 2048;
/// Sampled calls open at once on one core; more are not traced (and counted as dropped).
pub const OPEN_SPANS_MAX: usize = 16_384;
/// Spans per export request (OpenTelemetry's default batch).
pub const EXPORT_BATCH_MAX: usize = 512;
/// Spans the exporter holds while the collector is away; the rest wait in the rings.
pub const PENDING_MAX: usize = 2048;
/// The longest a finished span waits for its batch.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the exporter looks at the rings.
const TICK: Duration = Duration::from_millis(100);
/// The longest one export may take (OpenTelemetry's default), and the last one at shutdown.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const FINAL_EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Retry delays after a failed export, doubling.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest `tracestate` kept (W3C asks vendors to propagate at least 512 characters).
const TRACE_STATE_BYTES_MAX: usize = 512;
/// The instrumentation scope of our spans.
const SCOPE_NAME: &str = "metastore";

const _: () = assert!(EXPORT_BATCH_MAX <= PENDING_MAX);
const _: () = assert!(OPEN_SPANS_MAX < u32::MAX as usize);

/// W3C trace flags: sampled. OTLP `Span.flags`: whether the parent is remote is known, and is.
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// The caller's span, from W3C `traceparent` metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Parses `traceparent` as OpenTelemetry Go's TraceContext propagator does (etcd's): lowercase
/// hex `version-traceid-parentid-flags`; version `ff` is invalid; version `00` has exactly four
/// parts and flags of at most 2; later versions may append more; all-zero IDs are invalid. An
/// invalid value is ignored (the call is then a root).
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    let mut rest = v;
    let mut version = [0u8; 1];
    if !hex_part(&mut version, &mut rest) || version[0] == 0xff {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut flags = [0u8; 1];
    if !hex_part(&mut trace_id, &mut rest) || !hex_part(&mut span_id, &mut rest) || !hex_part(&mut flags, &mut rest) {
        return None;
    }
    if version[0] == 0 && (!rest.is_empty() || flags[0] > 2) {
        return None;
    }
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent { trace_id, span_id, sampled: flags[0] & 1 == 1 })
}

/// Takes the text up to the next `-` (or the end) from `rest` and decodes it into `dst`, which it
/// must fill exactly, from lowercase hex.
fn hex_part(dst: &mut [u8], rest: &mut &[u8]) -> bool {
    let (part, left) = match rest.iter().position(|&b| b == b'-') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (*rest, &[][..]),
    };
    *rest = left;
    if part.len() != dst.len() * 2 {
        return false;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (d, pair) in dst.iter_mut().zip(part.chunks_exact(2)) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => *d = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

/// The decision for calls without a valid parent: OpenTelemetry's `TraceIDRatioBased`, or
/// `NeverSample` at rate 0 (etcd's `determineSampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootSampler {
    Never,
    Always,
    /// Sampled when the trace ID's last 8 bytes, big-endian, shifted right once, are below this.
    Ratio(u64),
}

impl RootSampler {
    pub fn per_million(rate: u32) -> Self {
        match rate {
            0 => RootSampler::Never,
            r if r >= SAMPLING_RATE_MAX => RootSampler::Always,
            // As Go computes it: `uint64(fraction * (1 << 63))`.
            r => RootSampler::Ratio((f64::from(r) / f64::from(SAMPLING_RATE_MAX) * (1u64 << 63) as f64) as u64),
        }
    }

    pub fn samples(self, trace_id: &[u8; 16]) -> bool {
        match self {
            RootSampler::Never => false,
            RootSampler::Always => true,
            RootSampler::Ratio(bound) => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                (u64::from_be_bytes(low) >> 1) < bound
            }
        }
    }
}

/// A span's IDs and parentage, once the call is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
}

/// OpenTelemetry's `ParentBased(root)`: a valid parent decides (sampled: its child; not: none),
/// otherwise `root` decides on a new trace ID. IDs come from `rng`, drawn only when needed.
pub fn decide(parent: Option<&Parent>, root: RootSampler, rng: &mut Rng) -> Option<Ids> {
    let (trace_id, parent_span_id) = match parent {
        Some(p) if !p.sampled => return None,
        Some(p) => (p.trace_id, Some(p.span_id)),
        None if root == RootSampler::Never => return None,
        None => {
            let id = rng.trace_id();
            if !root.samples(&id) {
                return None;
            }
            (id, None)
        }
    };
    Some(Ids { trace_id, span_id: rng.span_id(), parent_span_id })
}

/// IDs for new traces and spans: splitmix64, seeded from the kernel's random source.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded(salt: u64) -> Self {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom writes at most `seed.len()` bytes into the buffer it is given.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let fallback = unix_nanos() ^ (u64::from(std::process::id()) << 32);
        let seed = if n == seed.len() as isize { u64::from_ne_bytes(seed) } else { fallback };
        Rng(seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random, valid (not all-zero) trace ID.
    pub fn trace_id(&mut self) -> [u8; 16] {
        loop {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&self.next().to_be_bytes());
            id[8..].copy_from_slice(&self.next().to_be_bytes());
            if id != [0; 16] {
                return id;
            }
        }
    }

    /// A random, valid span ID.
    pub fn span_id(&mut self) -> [u8; 8] {
        loop {
            let id = self.next().to_be_bytes();
            if id != [0; 8] {
                return id;
            }
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A finished span, on its way from a core to the exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanRecord {
    pub ids: Ids,
    pub trace_state: Option<Box<str>>,
    /// Index into [`crate::conn::METHODS`].
    pub method: u16,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// The call's gRPC status.
    pub code: u32,
    /// Its message, for a failed call.
    pub message: Option<Box<str>>,
}

/// A sampled call in progress.
#[derive(Debug)]
struct OpenSpan {
    ids: Ids,
    trace_state: Option<Box<str>>,
    method: u16,
    start_unix_ns: u64,
}

/// One core's tracer: decides at each call's start, keeps the open spans, and hands finished ones
/// to the exporter. Lives on its core (connections share it through `Rc`).
pub struct CoreTracer {
    shared: Arc<Shared>,
    core: usize,
    root: RootSampler,
    state: RefCell<TracerState>,
}

struct TracerState {
    rng: Rng,
    open: Slab<OpenSpan>,
    out: rtrb::Producer<SpanRecord>,
}

impl std::fmt::Debug for CoreTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreTracer").field("core", &self.core).field("root", &self.root).finish_non_exhaustive()
    }
}

impl CoreTracer {
    pub fn new(shared: Arc<Shared>, core: usize, out: rtrb::Producer<SpanRecord>) -> Self {
        let root = RootSampler::per_million(shared.cfg.tracing.sampling_rate_per_million);
        Self {
            shared,
            core,
            root,
            state: RefCell::new(TracerState { rng: Rng::seeded(core as u64 + 1), open: Slab::new(), out }),
        }
    }

    fn dropped(&self) {
        if let Some(s) = self.shared.stats.get(self.core) {
            CoreStats::add(&s.spans_dropped, 1);
        }
    }

    /// A call of `method` (an index into [`crate::conn::METHODS`]) starts, with `metadata` to
    /// look its headers up in: the token to mark it with (`CallHead::set_trace`) if it is sampled.
    pub fn start<'h>(&self, method: u16, metadata: impl Fn(&[u8]) -> Option<&'h [u8]>) -> Option<u32> {
        let parent = metadata(&b"traceparent"[..]).and_then(parse_traceparent);
        if parent.is_none() && self.root == RootSampler::Never {
            return None;
        }
        let Ok(mut st) = self.state.try_borrow_mut() else { return None };
        let ids = decide(parent.as_ref(), self.root, &mut st.rng)?;
        if st.open.len() >= OPEN_SPANS_MAX {
            drop(st);
            self.dropped();
            return None;
        }
        // The caller's vendor state travels with its trace (when printable and not too long).
        let trace_state = parent
            .and_then(|_| metadata(&b"tracestate"[..]))
            .filter(|v| !v.is_empty() && v.len() <= TRACE_STATE_BYTES_MAX && v.iter().all(|b| (0x20..0x7f).contains(b)))
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(Box::from);
        let token = st.open.insert(OpenSpan { ids, trace_state, method, start_unix_ns: unix_nanos() });
        Some(token as u32)
    }

    /// Spans open on this core (tests).
    pub fn open_spans(&self) -> usize {
        self.state.borrow().open.len()
    }
}

impl CallObserver for CoreTracer {
    fn on_end(&self, token: u32, code: Code, message: &str) {
        let Ok(mut st) = self.state.try_borrow_mut() else { return };
        let Some(open) = st.open.try_remove(token as usize) else { return };
        let rec = SpanRecord {
            ids: open.ids,
            trace_state: open.trace_state,
            method: open.method,
            start_unix_ns: open.start_unix_ns,
            end_unix_ns: unix_nanos().max(open.start_unix_ns),
            code: code.0,
            message: (code != Code::OK && !message.is_empty()).then(|| Box::from(message)),
        };
        if st.out.push(rec).is_err() {
            drop(st);
            self.dropped();
        }
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }) }
}

/// The OTLP span of a finished call, as otelgrpc (etcd 3.5's interceptor) makes it.
pub fn span_proto(s: &SpanRecord) -> Span {
    let (service, method, _) =
        crate::conn::METHODS.get(usize::from(s.method)).copied().unwrap_or(("unknown", "unknown", ""));
    let failed = s.code != Code::OK.0;
    let remote = if s.ids.parent_span_id.is_some() { FLAG_IS_REMOTE } else { 0 };
    Span {
        trace_id: s.ids.trace_id.to_vec(),
        span_id: s.ids.span_id.to_vec(),
        trace_state: s.trace_state.as_deref().unwrap_or_default().into(),
        parent_span_id: s.ids.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | remote,
        name: format!("{service}/{method}"),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns,
        attributes: vec![
            kv("rpc.system", any_value::Value::StringValue("grpc".into())),
            kv("rpc.service", any_value::Value::StringValue(service.into())),
            kv("rpc.method", any_value::Value::StringValue(method.into())),
            kv("rpc.grpc.status_code", any_value::Value::IntValue(i64::from(s.code))),
        ],
        status: Some(if failed {
            Status { message: s.message.as_deref().unwrap_or_default().into(), code: status::StatusCode::Error as i32 }
        } else {
            Status { message: String::new(), code: status::StatusCode::Unset as i32 }
        }),
        ..Default::default()
    }
}

/// The resource every span is exported under: `service.name` and, when set,
/// `service.instance.id` (etcd's `determineResourceWithIDKey`).
pub fn resource(cfg: &Tracing) -> Resource {
    let mut attributes = vec![kv("service.name", any_value::Value::StringValue(cfg.service_name.clone()))];
    if !cfg.instance_id.is_empty() {
        attributes.push(kv("service.instance.id", any_value::Value::StringValue(cfg.instance_id.clone())));
    }
    Resource { attributes, dropped_attributes_count: 0 }
}

/// One export request for `spans`.
pub fn export_request(resource: &Resource, spans: &[SpanRecord]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.iter().map(span_proto).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The rings from the cores to the exporter, one per core.
pub fn rings(cores: usize) -> (Vec<rtrb::Producer<SpanRecord>>, Vec<rtrb::Consumer<SpanRecord>>) {
    (0..cores).map(|_| rtrb::RingBuffer::new(SPANS_BUFFERED_MAX)).unzip()
}

/// The exporter thread: drains the cores' rings and sends batches to the collector.
#[derive(Debug)]
pub struct Exporter {
    thread: Option<JoinHandle<()>>,
    done: Arc<AtomicBool>,
    finished: std::sync::mpsc::Receiver<()>,
}

impl Exporter {
    pub fn start(cfg: &Tracing, rings: Vec<rtrb::Consumer<SpanRecord>>) -> std::io::Result<Self> {
        let done = Arc::new(AtomicBool::new(false));
        let (finished_tx, finished) = std::sync::mpsc::channel();
        let mut run = Run {
            rings,
            client: crate::otlp::Client::new(&cfg.address),
            address: cfg.address.clone(),
            resource: resource(cfg),
            done: done.clone(),
            pending: Vec::with_capacity(PENDING_MAX),
        };
        let thread = std::thread::Builder::new().name("metastore-trace-export".into()).spawn(move || {
            run.run();
            let _ = finished_tx.send(());
        })?;
        info!(address = %cfg.address, service_name = %cfg.service_name, instance_id = %cfg.instance_id,
            sampling_rate_per_million = cfg.sampling_rate_per_million, "distributed tracing enabled (OTLP/gRPC)");
        Ok(Self { thread: Some(thread), done, finished })
    }

    /// Once the cores have stopped: exports what is left (for at most a few seconds) and ends the
    /// thread. A thread still stuck after that (a name lookup that hangs) is left behind.
    pub fn finish(mut self) {
        self.done.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else { return };
        thread.thread().unpark();
        match self.finished.recv_timeout(FINAL_EXPORT_TIMEOUT + Duration::from_secs(2)) {
            Ok(()) => {
                let _ = thread.join();
            }
            Err(_) => warn!("the trace exporter did not finish in time; leaving it"),
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

struct Run {
    rings: Vec<rtrb::Consumer<SpanRecord>>,
    client: crate::otlp::Client,
    address: String,
    resource: Resource,
    done: Arc<AtomicBool>,
    pending: Vec<SpanRecord>,
}

impl Run {
    /// Moves finished spans from the rings into `pending`, round robin, up to its bound.
    fn drain(&mut self) {
        let mut more = true;
        while more && self.pending.len() < PENDING_MAX {
            more = false;
            for ring in &mut self.rings {
                if self.pending.len() >= PENDING_MAX {
                    break;
                }
                if let Ok(s) = ring.pop() {
                    self.pending.push(s);
                    more = true;
                }
            }
        }
    }

    fn run(&mut self) {
        let mut last_export = Instant::now();
        let mut retry_at: Option<Instant> = None;
        let mut backoff = BACKOFF_MIN;
        let mut failing = false;
        let mut final_deadline: Option<Instant> = None;
        loop {
            if final_deadline.is_none() && self.done.load(Ordering::Acquire) {
                final_deadline = Some(Instant::now() + FINAL_EXPORT_TIMEOUT);
            }
            self.drain();
            let now = Instant::now();
            let due = !self.pending.is_empty()
                && (self.pending.len() >= EXPORT_BATCH_MAX
                    || now.duration_since(last_export) >= FLUSH_INTERVAL
                    || final_deadline.is_some())
                && retry_at.is_none_or(|t| now >= t || final_deadline.is_some());
            if due {
                let n = self.pending.len().min(EXPORT_BATCH_MAX);
                let body = export_request(&self.resource, &self.pending[..n]).encode_to_vec();
                let deadline = final_deadline.unwrap_or(now + EXPORT_TIMEOUT);
                match self.client.export(&body, deadline) {
                    Ok(rejected) => {
                        if rejected > 0 {
                            warn!(rejected, sent = n, "the trace collector rejected some spans");
                        }
                        if failing {
                            info!(address = %self.address, "exporting spans again");
                        }
                        failing = false;
                        self.pending.drain(..n);
                        last_export = now;
                        retry_at = None;
                        backoff = BACKOFF_MIN;
                        continue;
                    }
                    Err(e) if e.retryable() && final_deadline.is_none() => {
                        if !failing {
                            warn!(address = %self.address, error = %e, "cannot export spans; retrying with backoff");
                        }
                        failing = true;
                        retry_at = Some(now + backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    Err(e) => {
                        warn!(address = %self.address, error = %e, spans = n, "cannot export spans; dropped them");
                        self.pending.drain(..n);
                        last_export = now;
                        if final_deadline.is_some() {
                            self.client.close();
                            return;
                        }
                    }
                }
            }
            if let Some(end) = final_deadline {
                let empty = self.pending.is_empty() && self.rings.iter().all(|r| r.is_empty());
                if empty || Instant::now() >= end {
                    self.client.close();
                    return;
                }
                continue;
            }
            std::thread::park_timeout(TICK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SID: &str = "00f067aa0ba902b7";

    fn tp(s: &str) -> Option<Parent> {
        parse_traceparent(s.as_bytes())
    }

    #[test]
    fn traceparent_as_opentelemetry_go_reads_it() {
        let p = tp(&format!("00-{TID}-{SID}-01")).unwrap();
        assert_eq!(p.trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
        assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(p.sampled);
        assert!(!tp(&format!("00-{TID}-{SID}-00")).unwrap().sampled);
        // Version 0 allows the random flag (2), nothing above, and no extra parts.
        assert!(!tp(&format!("00-{TID}-{SID}-02")).unwrap().sampled);
        assert_eq!(tp(&format!("00-{TID}-{SID}-03")), None);
        assert_eq!(tp(&format!("00-{TID}-{SID}-01-extra")), None);
        // Later versions may add parts, and their other flags are ignored.
        assert!(tp(&format!("01-{TID}-{SID}-09-what-comes")).unwrap().sampled);
        assert!(tp(&format!("fe-{TID}-{SID}-01")).is_some());
        assert_eq!(tp(&format!("ff-{TID}-{SID}-01")), None);
        // Lowercase hex only, exact lengths, no zero IDs.
        assert_eq!(tp(&format!("00-{}-{SID}-01", TID.to_uppercase())), None);
        assert_eq!(tp(&format!("00-{}-{SID}-01", &TID[1..])), None);
        assert_eq!(tp(&format!("00-{TID}-{SID}0-01")), None);
        assert_eq!(tp(&format!("00-{}-{SID}-01", "0".repeat(32))), None);
        assert_eq!(tp(&format!("00-{TID}-{}-01", "0".repeat(16))), None);
        assert_eq!(tp(&format!("00-{TID}-{SID}-0g")), None);
        assert_eq!(tp(&format!("0-{TID}-{SID}-01")), None);
        for junk in ["", "-", "00", "00-", "00--", "garbage", "00-xyz-abc-01", "\u{e9}\u{e9}-"] {
            assert_eq!(tp(junk), None, "{junk:?}");
        }
        assert_eq!(parse_traceparent(&[0xff; 60]), None);
    }

    #[test]
    fn root_sampler_is_the_trace_id_ratio() {
        let id = |low: u64| {
            let mut t = [0xab; 16];
            t[8..].copy_from_slice(&low.to_be_bytes());
            t
        };
        assert_eq!(RootSampler::per_million(0), RootSampler::Never);
        assert_eq!(RootSampler::per_million(1_000_000), RootSampler::Always);
        assert!(!RootSampler::Never.samples(&id(0)));
        assert!(RootSampler::Always.samples(&id(u64::MAX)));
        // Half: sampled when (low >> 1) < 2^62, i.e. low < 2^63.
        let half = RootSampler::per_million(500_000);
        assert_eq!(half, RootSampler::Ratio(1 << 62));
        assert!(half.samples(&id((1 << 63) - 1)));
        assert!(!half.samples(&id(1 << 63)));
        assert!(RootSampler::per_million(1).samples(&id(0)));
        assert!(!RootSampler::per_million(1).samples(&id(1 << 50)));
        // Over many random IDs the share is the rate.
        let mut rng = Rng::seeded(7);
        let tenth = RootSampler::per_million(100_000);
        let n = (0..100_000).filter(|_| tenth.samples(&rng.trace_id())).count();
        assert!((9_000..11_000).contains(&n), "{n} of 100000 sampled at 10%");
    }

    #[test]
    fn parent_based_decisions() {
        let mut rng = Rng::seeded(1);
        let parent = tp(&format!("00-{TID}-{SID}-01")).unwrap();
        // A sampled parent: its child, whatever the rate.
        for root in [RootSampler::Never, RootSampler::Always, RootSampler::per_million(1)] {
            let ids = decide(Some(&parent), root, &mut rng).unwrap();
            assert_eq!(ids.trace_id, parent.trace_id);
            assert_eq!(ids.parent_span_id, Some(parent.span_id));
            assert_ne!(ids.span_id, parent.span_id);
        }
        // A parent that is not sampled: never, even at the full rate.
        let unsampled = Parent { sampled: false, ..parent };
        assert_eq!(decide(Some(&unsampled), RootSampler::Always, &mut rng), None);
        // No parent: the root sampler, on a new trace.
        assert_eq!(decide(None, RootSampler::Never, &mut rng), None);
        let a = decide(None, RootSampler::Always, &mut rng).unwrap();
        let b = decide(None, RootSampler::Always, &mut rng).unwrap();
        assert_eq!(a.parent_span_id, None);
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.trace_id, [0; 16]);
        assert_ne!(a.span_id, [0; 8]);
    }

    fn record(code: u32, message: Option<&str>, parent: Option<[u8; 8]>) -> SpanRecord {
        SpanRecord {
            ids: Ids { trace_id: [1; 16], span_id: [2; 8], parent_span_id: parent },
            trace_state: parent.map(|_| Box::from("vendor=x")),
            method: 2, // etcdserverpb.KV/Range
            start_unix_ns: 1_000,
            end_unix_ns: 5_000,
            code,
            message: message.map(Box::from),
        }
    }

    fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a any_value::Value> {
        s.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()).and_then(|v| v.value.as_ref())
    }

    #[test]
    fn spans_are_named_and_attributed_as_otelgrpc_does() {
        assert_eq!(crate::conn::METHODS[2], ("etcdserverpb.KV", "Range", "unary"));
        let s = span_proto(&record(0, None, None));
        assert_eq!(s.name, "etcdserverpb.KV/Range");
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (1_000, 5_000));
        assert_eq!((s.trace_id.len(), s.span_id.len(), s.parent_span_id.len()), (16, 8, 0));
        assert_eq!(attr(&s, "rpc.system"), Some(&any_value::Value::StringValue("grpc".into())));
        assert_eq!(attr(&s, "rpc.service"), Some(&any_value::Value::StringValue("etcdserverpb.KV".into())));
        assert_eq!(attr(&s, "rpc.method"), Some(&any_value::Value::StringValue("Range".into())));
        assert_eq!(attr(&s, "rpc.grpc.status_code"), Some(&any_value::Value::IntValue(0)));
        assert_eq!(s.status.as_ref().unwrap().code, status::StatusCode::Unset as i32);
        assert_eq!(s.flags, FLAG_SAMPLED | FLAG_HAS_IS_REMOTE);

        let s = span_proto(&record(3, Some("etcdserver: key is not provided"), Some([9; 8])));
        assert_eq!(attr(&s, "rpc.grpc.status_code"), Some(&any_value::Value::IntValue(3)));
        let st = s.status.as_ref().unwrap();
        assert_eq!(
            (st.code, st.message.as_str()),
            (status::StatusCode::Error as i32, "etcdserver: key is not provided")
        );
        assert_eq!(s.parent_span_id, vec![9; 8]);
        assert_eq!(s.trace_state, "vendor=x");
        assert_eq!(s.flags, FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE);
    }

    fn tracer(rate: u32, ring: usize) -> (CoreTracer, rtrb::Consumer<SpanRecord>, Arc<Shared>) {
        let mut cfg = crate::config::Config::default();
        cfg.tracing.enabled = true;
        cfg.tracing.sampling_rate_per_million = rate;
        let shared = Arc::new(Shared {
            cfg,
            driver: "test",
            stats: vec![CoreStats::default()],
            stop: crate::reactor::StopSignal::new(1),
            shard_stats: Default::default(),
        });
        let (tx, rx) = rtrb::RingBuffer::new(ring);
        (CoreTracer::new(shared.clone(), 0, tx), rx, shared)
    }

    fn none(_: &[u8]) -> Option<&'static [u8]> {
        None
    }

    #[test]
    fn core_tracer_ends_each_span_once_and_counts_what_it_drops() {
        let dropped = |s: &Shared| s.stats[0].spans_dropped.load(Ordering::Relaxed);
        // Rate 0 and no parent: nothing, not even a slot.
        let (t, mut rx, _) = tracer(0, 4);
        assert_eq!(t.start(2, none), None);
        let sampled = format!("00-{TID}-{SID}-01");
        let with_parent = |name: &[u8]| match name {
            b"traceparent" => Some(sampled.as_bytes()),
            b"tracestate" => Some(&b"congo=t61rcWkgMzE"[..]),
            _ => None,
        };
        let tok = t.start(3, with_parent).unwrap();
        assert_eq!(t.open_spans(), 1);
        t.on_end(tok, Code::OK, "");
        t.on_end(tok, Code::INTERNAL, "twice"); // a second end of the same token: nothing
        assert_eq!(t.open_spans(), 0);
        let s = rx.pop().unwrap();
        assert_eq!((s.method, s.code, s.message.as_deref()), (3, 0, None));
        assert_eq!(s.ids.trace_id, parse_traceparent(sampled.as_bytes()).unwrap().trace_id);
        assert_eq!(s.trace_state.as_deref(), Some("congo=t61rcWkgMzE"));
        assert!(s.end_unix_ns >= s.start_unix_ns && s.start_unix_ns > 0);
        assert!(rx.pop().is_err());

        // Every call at the full rate; a ring of 2: the third finished span is dropped, counted.
        let (t, mut rx, shared) = tracer(1_000_000, 2);
        let toks: Vec<u32> = (0..3).map(|_| t.start(2, none).unwrap()).collect();
        t.on_end(toks[0], Code::OK, "");
        t.on_end(toks[1], Code::INVALID_ARGUMENT, "etcdserver: key is not provided");
        assert_eq!(dropped(&shared), 0);
        t.on_end(toks[2], Code::OK, "");
        assert_eq!(dropped(&shared), 1);
        let _ = rx.pop().unwrap();
        let failed = rx.pop().unwrap();
        assert_eq!((failed.code, failed.message.as_deref()), (3, Some("etcdserver: key is not provided")));
        assert_eq!(failed.ids.parent_span_id, None);
        t.on_end(12345, Code::OK, ""); // never issued: nothing
        assert_eq!(t.open_spans(), 0);
    }

    #[test]
    fn export_request_round_trips_with_the_resource() {
        let cfg = Tracing { service_name: "kv".into(), instance_id: "m1".into(), ..Tracing::default() };
        let req = export_request(&resource(&cfg), &[record(0, None, None), record(14, None, None)]);
        let back = ExportTraceServiceRequest::decode(&req.encode_to_vec()[..]).unwrap();
        assert_eq!(back, req);
        let rs = &back.resource_spans[0];
        let keys: Vec<(&str, &any_value::Value)> = rs
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|a| (a.key.as_str(), a.value.as_ref().unwrap().value.as_ref().unwrap()))
            .collect();
        assert_eq!(
            keys,
            [
                ("service.name", &any_value::Value::StringValue("kv".into())),
                ("service.instance.id", &any_value::Value::StringValue("m1".into()))
            ]
        );
        assert_eq!(rs.scope_spans[0].spans.len(), 2);
        // No instance ID: no attribute (etcd's determineResourceWithIDKey).
        assert_eq!(resource(&Tracing::default()).attributes.len(), 1);
    }
}
