//! The server side of an HTTP/2 connection (RFC 9113) as a state machine without IO.
//!
//! `recv` takes bytes read from the socket and reports requests, body data and resets to a
//! [`Handler`]; `send_headers`, `send_data` and `send_trailers` append frames to the output
//! buffer, which the caller writes to the socket. Protocol errors are answered here: a stream
//! error with RST_STREAM, a connection error with GOAWAY, after which the connection is closed
//! ([`Connection::is_closed`]). Flow control is enforced both ways: data beyond the peer's windows
//! waits in its stream until WINDOW_UPDATE or SETTINGS give credit.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::frame::{self, flag, kind, setting, ErrorCode, FrameHeader, FRAME_HEADER_LEN, PREFACE};
use crate::hpack::{self, Indexing};
use crate::limit::TokenBucket;

/// Stream ids of recently closed streams remembered to tell "closed" from "never opened".
const RECENTLY_CLOSED_MAX: usize = 128;
/// CONTINUATION frames allowed after one HEADERS frame (a legitimate 64 KiB header block needs 4).
const CONTINUATION_FRAMES_MAX: usize = 64;
/// Header values longer than this are sent without indexing, so that unique long values (error
/// texts) do not churn the peer's dynamic table.
const INDEXED_VALUE_BYTES_MAX: usize = 64;
/// grpc-go's `maxPingStrikes`: the third PING that breaks the policy ends the connection.
pub const PING_STRIKES_MAX: u32 = 2;
/// grpc-go's `defaultPingTimeout`: without a stream (and `permit_without_stream` off), pings
/// closer together than this are strikes.
pub const PING_INTERVAL_WITHOUT_STREAMS: Duration = Duration::from_secs(2 * 60 * 60);

/// Keepalive enforcement as grpc-go's `keepalive.EnforcementPolicy` does it (etcd sets
/// `MinTime: --grpc-keepalive-min-time`, `PermitWithoutStream: false`): a PING that follows the
/// last one sooner than allowed is a strike, and after [`PING_STRIKES_MAX`] strikes the next one
/// gets GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings"). Sending HEADERS or DATA forgives the strikes
/// (the peer's BDP pings answer our data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingPolicy {
    pub min_interval: Duration,
    pub permit_without_stream: bool,
}

/// What this endpoint advertises and enforces.
#[derive(Debug, Clone)]
pub struct Config {
    /// SETTINGS_MAX_CONCURRENT_STREAMS; streams beyond it are refused with REFUSED_STREAM.
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: the receive window of each stream.
    pub stream_window_bytes: u32,
    /// The connection's receive window, raised by a WINDOW_UPDATE right after our SETTINGS.
    pub connection_window_bytes: u32,
    /// SETTINGS_MAX_FRAME_SIZE: the largest frame payload we accept.
    pub frame_bytes_max: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 accounting: name + value + 32 per field).
    pub header_list_bytes_max: u32,
    /// SETTINGS_HEADER_TABLE_SIZE for our HPACK decoder.
    pub header_table_bytes: u32,
    /// Keepalive enforcement; None answers every PING.
    pub ping_policy: Option<PingPolicy>,
    /// Streams the client may end before they are answered (RST_STREAM on an open stream, or a
    /// stream refused for MAX_CONCURRENT_STREAMS): `reset_burst` at once, refilled at
    /// `resets_per_sec`. Beyond that: GOAWAY(ENHANCE_YOUR_CALM) (rapid reset, CVE-2023-44487).
    pub reset_burst: u32,
    pub resets_per_sec: u32,
    /// Frames that make us work but carry no request (PING, SETTINGS, PRIORITY, unknown types,
    /// empty DATA): `idle_frame_burst` at once, refilled at `idle_frames_per_sec`. Beyond that:
    /// GOAWAY(ENHANCE_YOUR_CALM) (the ping, settings and empty-frame floods of CVE-2019-9512/5/8).
    pub idle_frame_burst: u32,
    pub idle_frames_per_sec: u32,
    /// Control frames we answer with (SETTINGS and PING acknowledgements, RST_STREAM) that may
    /// wait in the output before the caller takes it: a peer that keeps asking for them without
    /// reading gets GOAWAY(ENHANCE_YOUR_CALM) (Go's `maxQueuedControlFrames`).
    pub control_frames_queued_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // etcd advertises math.MaxUint32 (`--max-concurrent-streams`).
            max_concurrent_streams: u32::MAX,
            stream_window_bytes: 1 << 20,
            connection_window_bytes: 16 << 20,
            frame_bytes_max: frame::FRAME_SIZE_DEFAULT,
            header_list_bytes_max: 16 << 10,
            header_table_bytes: 4096,
            ping_policy: None,
            reset_burst: 1000,
            resets_per_sec: 200,
            idle_frame_burst: 10_000,
            idle_frames_per_sec: 1000,
            control_frames_queued_max: 10_000,
        }
    }
}

/// What the limits and defences did since [`Connection::take_events`] last asked (for the
/// caller's counters).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Events {
    /// Streams refused with REFUSED_STREAM: over SETTINGS_MAX_CONCURRENT_STREAMS.
    pub refused_streams: u32,
    /// Requests refused because their header list was over SETTINGS_MAX_HEADER_LIST_SIZE.
    pub header_lists_too_large: u32,
    /// GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings").
    pub too_many_pings: u32,
    /// GOAWAY for too many streams reset by the client or refused (rapid reset).
    pub rapid_resets: u32,
    /// GOAWAY for a flood of frames that carry no request.
    pub frame_floods: u32,
    /// GOAWAY for control frames piling up for a peer that does not read.
    pub control_queue_overflows: u32,
    /// GOAWAY for a header block of too many CONTINUATION frames or bytes.
    pub continuation_floods: u32,
    /// GOAWAY(COMPRESSION_ERROR): a bad HPACK block (e.g. a table size update over our limit).
    pub hpack_errors: u32,
}

/// The fields of one decoded header block, stored in one buffer (no allocation per field once
/// the buffers have grown).
#[derive(Debug, Default)]
pub struct HeaderList {
    buf: Vec<u8>,
    fields: Vec<[u32; 3]>, // name start, name end (= value start), value end
}

impl HeaderList {
    fn clear(&mut self) {
        self.buf.clear();
        self.fields.clear();
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(name);
        let mid = self.buf.len() as u32;
        self.buf.extend_from_slice(value);
        self.fields.push([start, mid, self.buf.len() as u32]);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(move |&[s, m, e]| (&self.buf[s as usize..m as usize], &self.buf[m as usize..e as usize]))
    }

    /// The first field with this name.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Receives what the peer sends. Callbacks must not block; they run inside [`Connection::recv`],
/// so replies are sent after it returns.
pub trait Handler {
    /// A new request's header block (validated per RFC 9113 §8.3). Trailers are reported as
    /// `on_data(id, &[], true)`.
    fn on_headers(&mut self, stream_id: u32, headers: &HeaderList, end_stream: bool);
    /// Request body bytes, in order. `end_stream` marks the end of the request.
    fn on_data(&mut self, stream_id: u32, data: &[u8], end_stream: bool);
    /// The stream is gone: reset by the peer, or by us after a stream error. Drop its work.
    fn on_reset(&mut self, stream_id: u32, code: ErrorCode);
}

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A header field kept past the call that supplied it.
type OwnedField = (Box<[u8]>, Box<[u8]>);

type StreamMap = HashMap<u32, Stream, BuildHasherDefault<IdHasher>>;

struct Stream {
    /// END_STREAM received.
    recv_closed: bool,
    /// END_STREAM sent or queued behind `pending`.
    send_closed: bool,
    send_window: i64,
    recv_unacked: u32,
    content_length: Option<u64>,
    received: u64,
    /// DATA payload waiting for flow-control credit.
    pending: Vec<u8>,
    pending_end: bool,
    /// Trailers queued behind `pending`; encoded only when they leave, to keep HPACK in order.
    pending_trailers: Option<Vec<OwnedField>>,
    queued: bool,
}

/// A header block being assembled from HEADERS + CONTINUATION frames.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    self_dependent: bool,
    frames: usize,
    buf: Vec<u8>,
}

/// Validation state while a header block is decoded.
#[derive(Default)]
struct Check {
    trailer: bool,
    malformed: bool,
    regular_seen: bool,
    method: Option<bool>, // Some(is_connect)
    scheme: bool,
    path: Option<bool>, // Some(non_empty)
    authority: Option<(u32, u32)>,
    host_mismatch: bool,
    content_length: Option<u64>,
}

pub struct Connection {
    cfg: Config,
    preface_seen: usize,
    closed: bool,
    draining: Option<u32>,
    peer_goaway: bool,
    decoder: hpack::Decoder,
    encoder: hpack::Encoder,
    peer_initial_window: u32,
    peer_frame_max: u32,
    streams: StreamMap,
    max_client_stream_id: u32,
    /// (stream id, reset by us): frames on streams we reset are ignored, others are errors.
    recently_closed: VecDeque<(u32, bool)>,
    send_window: i64,
    recv_window: i64,
    recv_unacked: u32,
    blocked: VecDeque<u32>,
    /// The bytes waiting in `blocked` streams.
    blocked_total: usize,
    block: Option<PendingBlock>,
    headers: HeaderList,
    /// content-length of the block just decoded, handed to the stream it opens.
    pending_content_length: Option<u64>,
    scratch: Vec<u8>,
    out: Vec<u8>,
    /// The time as the caller last told it ([`Connection::set_now`]).
    now: Instant,
    last_ping_at: Option<Instant>,
    ping_strikes: u32,
    /// HEADERS or DATA went out since the last PING: its strikes are forgiven.
    forgive_pings: bool,
    resets: TokenBucket,
    idle_frames: TokenBucket,
    /// Control frames written to `out` since the caller last took it.
    queued_control: usize,
    events: Events,
    events_pending: bool,
}

enum Flow {
    Continue,
    Stop,
}

impl Connection {
    pub fn new(cfg: Config) -> Self {
        let mut decoder = hpack::Decoder::new(cfg.header_table_bytes as usize);
        decoder.set_max_header_list_size(cfg.header_list_bytes_max as usize);
        let mut c = Self {
            preface_seen: 0,
            closed: false,
            draining: None,
            peer_goaway: false,
            decoder,
            encoder: hpack::Encoder::new(),
            peer_initial_window: frame::WINDOW_SIZE_DEFAULT,
            peer_frame_max: frame::FRAME_SIZE_DEFAULT,
            streams: StreamMap::default(),
            max_client_stream_id: 0,
            recently_closed: VecDeque::with_capacity(RECENTLY_CLOSED_MAX),
            send_window: frame::WINDOW_SIZE_DEFAULT as i64,
            recv_window: frame::WINDOW_SIZE_DEFAULT as i64,
            recv_unacked: 0,
            blocked: VecDeque::new(),
            blocked_total: 0,
            block: None,
            headers: HeaderList::default(),
            pending_content_length: None,
            scratch: Vec::new(),
            out: Vec::with_capacity(16 << 10),
            now: Instant::now(),
            last_ping_at: None,
            ping_strikes: 0,
            forgive_pings: false,
            resets: TokenBucket::new(cfg.resets_per_sec, cfg.reset_burst),
            idle_frames: TokenBucket::new(cfg.idle_frames_per_sec, cfg.idle_frame_burst),
            queued_control: 0,
            events: Events::default(),
            events_pending: false,
            cfg,
        };
        // The server's preface is its SETTINGS frame; it may be sent before the client's.
        let mut settings = vec![
            (setting::ENABLE_PUSH, 0),
            (setting::INITIAL_WINDOW_SIZE, c.cfg.stream_window_bytes),
            (setting::MAX_FRAME_SIZE, c.cfg.frame_bytes_max),
            (setting::MAX_HEADER_LIST_SIZE, c.cfg.header_list_bytes_max),
        ];
        if c.cfg.max_concurrent_streams != u32::MAX {
            settings.push((setting::MAX_CONCURRENT_STREAMS, c.cfg.max_concurrent_streams));
        } else {
            // etcd advertises the maximum explicitly; so do we.
            settings.push((setting::MAX_CONCURRENT_STREAMS, u32::MAX));
        }
        if c.cfg.header_table_bytes != 4096 {
            settings.push((setting::HEADER_TABLE_SIZE, c.cfg.header_table_bytes));
        }
        frame::write_settings(&mut c.out, &settings);
        let extra = c.cfg.connection_window_bytes.saturating_sub(frame::WINDOW_SIZE_DEFAULT);
        if extra > 0 {
            frame::write_window_update(&mut c.out, 0, extra);
            c.recv_window += extra as i64;
        }
        c
    }

    /// Bytes waiting to be written to the socket.
    pub fn out(&self) -> &[u8] {
        &self.out
    }

    /// Hands the pending output to the caller by swapping buffers (no copy); `spare` must be
    /// empty and comes back holding what to write.
    pub fn take_out(&mut self, spare: &mut Vec<u8>) {
        debug_assert!(spare.is_empty());
        std::mem::swap(&mut self.out, spare);
        self.queued_control = 0;
    }

    /// Tells the connection the time, for the policies that count it (pings, resets, idle
    /// frames). Until called, the time of [`Connection::new`] stands.
    /// The time last given to [`Connection::set_now`] (or the connection's creation).
    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// What the limits and defences did since the last call; None when nothing happened.
    pub fn take_events(&mut self) -> Option<Events> {
        if !self.events_pending {
            return None;
        }
        self.events_pending = false;
        Some(std::mem::take(&mut self.events))
    }

    fn event(&mut self, f: impl FnOnce(&mut Events)) {
        f(&mut self.events);
        self.events_pending = true;
    }

    /// The client's connection preface has arrived in full.
    pub fn preface_done(&self) -> bool {
        self.preface_seen == PREFACE.len()
    }

    /// The stream whose header block is being received (HEADERS without END_HEADERS so far).
    pub fn header_block_open(&self) -> Option<u32> {
        self.block.as_ref().map(|b| b.stream_id)
    }

    /// Writes RST_STREAM, counted as a queued control frame.
    fn write_rst(&mut self, id: u32, code: ErrorCode) {
        frame::write_rst_stream(&mut self.out, id, code);
        self.queued_control += 1;
    }

    /// A stream the client ended (or had refused) before it was answered: a rapid-reset client
    /// runs out of budget and is sent away.
    fn spend_reset(&mut self) -> Flow {
        if self.resets.take(self.now) {
            return Flow::Continue;
        }
        self.event(|e| e.rapid_resets += 1);
        self.conn_error(ErrorCode::ENHANCE_YOUR_CALM, "too many streams reset or refused")
    }

    fn hpack_error(&mut self) -> Flow {
        self.event(|e| e.hpack_errors += 1);
        self.conn_error(ErrorCode::COMPRESSION_ERROR, "HPACK decoding failed")
    }

    /// A connection error was sent (or the peer broke the preface): flush the output and close.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Nothing left to do: closed, or draining with no stream left. (A GOAWAY from the peer
    /// does not end the connection here: the peer closes it when it is done with it, and may
    /// still ping until then.)
    pub fn is_done(&self) -> bool {
        self.closed || (self.draining.is_some() && self.streams.is_empty())
    }

    /// The peer sent GOAWAY: it opens no more streams.
    pub fn peer_went_away(&self) -> bool {
        self.peer_goaway
    }

    pub fn active_streams(&self) -> usize {
        self.streams.len()
    }

    /// DATA bytes held back by flow control, across all streams.
    pub fn blocked_bytes(&self) -> usize {
        debug_assert!(
            self.blocked.len() > 64
                || self.blocked_total
                    == self
                        .blocked
                        .iter()
                        .filter_map(|id| self.streams.get(id))
                        .map(|s| s.pending.len())
                        .sum::<usize>()
        );
        self.blocked_total
    }

    /// Responses are waiting for the client's flow-control credit, or any response with a body
    /// would (the client grants streams no window at all).
    pub fn credit_starved(&self) -> bool {
        self.blocked_total > 0 || self.peer_initial_window == 0
    }

    /// Removes a stream, with whatever it had waiting for credit.
    fn drop_stream(&mut self, id: u32) -> bool {
        match self.streams.remove(&id) {
            Some(s) => {
                self.blocked_total -= s.pending.len();
                true
            }
            None => false,
        }
    }

    /// Graceful shutdown: GOAWAY(NO_ERROR) naming the last stream we accept; streams already
    /// open finish, later ones are ignored.
    pub fn start_drain(&mut self) {
        if self.closed || self.draining.is_some() {
            return;
        }
        let last = self.max_client_stream_id;
        self.draining = Some(last);
        frame::write_goaway(&mut self.out, last, ErrorCode::NO_ERROR, b"");
    }

    /// Sends a connection error and closes.
    pub fn abort(&mut self, code: ErrorCode, debug: &str) {
        self.conn_error(code, debug);
    }

    fn conn_error(&mut self, code: ErrorCode, debug: &str) -> Flow {
        if !self.closed {
            frame::write_goaway(&mut self.out, self.max_client_stream_id, code, debug.as_bytes());
            self.closed = true;
        }
        Flow::Stop
    }

    fn remember_closed(&mut self, id: u32, reset_by_us: bool) {
        if self.recently_closed.len() == RECENTLY_CLOSED_MAX {
            self.recently_closed.pop_front();
        }
        self.recently_closed.push_back((id, reset_by_us));
    }

    fn closed_state(&self, id: u32) -> Option<bool> {
        self.recently_closed.iter().rev().find(|(i, _)| *i == id).map(|&(_, r)| r)
    }

    /// Resets a stream (stream error, or the application giving up on it).
    pub fn reset_stream(&mut self, id: u32, code: ErrorCode) {
        if self.closed {
            return;
        }
        self.write_rst(id, code);
        if self.drop_stream(id) {
            self.remember_closed(id, true);
        }
    }

    fn stream_error(&mut self, id: u32, code: ErrorCode, h: &mut impl Handler) {
        let existed = self.streams.contains_key(&id);
        self.reset_stream(id, code);
        if existed {
            h.on_reset(id, code);
        }
    }

    /// Feeds bytes read from the socket. Returns how many were consumed; the rest (a partial
    /// frame) must be offered again with more bytes appended.
    pub fn recv(&mut self, input: &[u8], h: &mut impl Handler) -> usize {
        let mut pos = 0;
        if self.preface_seen < PREFACE.len() {
            let want = &PREFACE[self.preface_seen..];
            let n = want.len().min(input.len());
            if input[..n] != want[..n] {
                self.conn_error(ErrorCode::PROTOCOL_ERROR, "invalid connection preface");
                return input.len();
            }
            self.preface_seen += n;
            pos = n;
            if self.preface_seen < PREFACE.len() {
                return pos;
            }
        }
        while !self.closed {
            let Some(hdr_bytes) = input.get(pos..pos + FRAME_HEADER_LEN) else {
                break;
            };
            let mut arr = [0u8; FRAME_HEADER_LEN];
            arr.copy_from_slice(hdr_bytes);
            let hdr = FrameHeader::parse(&arr);
            if hdr.len > self.cfg.frame_bytes_max {
                self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE");
                break;
            }
            let start = pos + FRAME_HEADER_LEN;
            let Some(payload) = input.get(start..start + hdr.len as usize) else {
                break;
            };
            pos = start + hdr.len as usize;
            if let Flow::Stop = self.on_frame(hdr, payload, h) {
                break;
            }
        }
        if self.closed {
            input.len()
        } else {
            pos
        }
    }

    fn on_frame(&mut self, hdr: FrameHeader, payload: &[u8], h: &mut impl Handler) -> Flow {
        if let Some(block) = &self.block {
            if hdr.kind != kind::CONTINUATION || hdr.stream_id != block.stream_id {
                return self.conn_error(ErrorCode::PROTOCOL_ERROR, "expected CONTINUATION");
            }
        }
        if self.queued_control > self.cfg.control_frames_queued_max {
            self.event(|e| e.control_queue_overflows += 1);
            return self.conn_error(ErrorCode::ENHANCE_YOUR_CALM, "too many control frames queued: read them");
        }
        let no_request = match hdr.kind {
            kind::PING | kind::SETTINGS | kind::PRIORITY => true,
            kind::DATA => payload.is_empty() && !hdr.has(flag::END_STREAM),
            kind::HEADERS
            | kind::RST_STREAM
            | kind::PUSH_PROMISE
            | kind::GOAWAY
            | kind::WINDOW_UPDATE
            | kind::CONTINUATION => false,
            _ => true,
        };
        if no_request && !self.idle_frames.take(self.now) {
            self.event(|e| e.frame_floods += 1);
            return self.conn_error(ErrorCode::ENHANCE_YOUR_CALM, "too many frames without a request");
        }
        match hdr.kind {
            kind::DATA => self.on_data(hdr, payload, h),
            kind::HEADERS => self.on_headers(hdr, payload, h),
            kind::PRIORITY => self.on_priority(hdr, payload, h),
            kind::RST_STREAM => self.on_rst_stream(hdr, payload, h),
            kind::SETTINGS => self.on_settings(hdr, payload),
            kind::PUSH_PROMISE => self.conn_error(ErrorCode::PROTOCOL_ERROR, "client sent PUSH_PROMISE"),
            kind::PING => self.on_ping(hdr, payload),
            kind::GOAWAY => self.on_goaway(hdr, payload),
            kind::WINDOW_UPDATE => self.on_window_update(hdr, payload, h),
            kind::CONTINUATION => self.on_continuation(hdr, payload, h),
            _ => Flow::Continue, // unknown frame types are ignored (RFC 9113 §4.1)
        }
    }

    /// Strips padding; None if the padding is invalid.
    fn unpad(hdr: &FrameHeader, payload: &[u8]) -> Option<(usize, usize)> {
        if !hdr.has(flag::PADDED) {
            return Some((0, payload.len()));
        }
        let pad = *payload.first()? as usize;
        if pad >= payload.len() {
            return None;
        }
        Some((1, payload.len() - pad))
    }

    fn on_data(&mut self, hdr: FrameHeader, payload: &[u8], h: &mut impl Handler) -> Flow {
        let id = hdr.stream_id;
        if id == 0 {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "DATA on stream 0");
        }
        let Some((start, end)) = Self::unpad(&hdr, payload) else {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "invalid DATA padding");
        };
        let flow_len = payload.len() as u32;
        if flow_len as i64 > self.recv_window {
            return self.conn_error(ErrorCode::FLOW_CONTROL_ERROR, "connection window exceeded");
        }
        self.recv_window -= flow_len as i64;
        // Connection-level credit is returned whatever becomes of the stream.
        self.recv_unacked += flow_len;
        if self.recv_unacked > 0 && self.recv_unacked >= self.cfg.connection_window_bytes / 2 {
            frame::write_window_update(&mut self.out, 0, self.recv_unacked);
            self.recv_window += self.recv_unacked as i64;
            self.recv_unacked = 0;
        }
        let end_stream = hdr.has(flag::END_STREAM);
        let data = &payload[start..end];
        let stream_window = self.cfg.stream_window_bytes;
        let Some(s) = self.streams.get_mut(&id) else {
            if id > self.max_client_stream_id {
                return self.conn_error(ErrorCode::PROTOCOL_ERROR, "DATA on idle stream");
            }
            if self.closed_state(id) != Some(true) {
                self.write_rst(id, ErrorCode::STREAM_CLOSED);
            }
            return Flow::Continue;
        };
        if s.recv_closed {
            self.stream_error(id, ErrorCode::STREAM_CLOSED, h);
            return Flow::Continue;
        }
        // Our stream window: the client may not send more than it was granted.
        if s.recv_unacked as u64 + flow_len as u64 > stream_window as u64 {
            self.stream_error(id, ErrorCode::FLOW_CONTROL_ERROR, h);
            return Flow::Continue;
        }
        s.received += data.len() as u64;
        if let Some(cl) = s.content_length {
            if s.received > cl || (end_stream && s.received != cl) {
                self.stream_error(id, ErrorCode::PROTOCOL_ERROR, h);
                return Flow::Continue;
            }
        }
        if end_stream {
            s.recv_closed = true;
        } else {
            s.recv_unacked += flow_len;
            if s.recv_unacked > 0 && s.recv_unacked >= stream_window / 2 {
                frame::write_window_update(&mut self.out, id, s.recv_unacked);
                s.recv_unacked = 0;
            }
        }
        h.on_data(id, data, end_stream);
        if end_stream {
            self.maybe_finish(id);
        }
        Flow::Continue
    }

    fn on_headers(&mut self, hdr: FrameHeader, payload: &[u8], h: &mut impl Handler) -> Flow {
        let id = hdr.stream_id;
        if id == 0 {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "HEADERS on stream 0");
        }
        let Some((mut start, end)) = Self::unpad(&hdr, payload) else {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "invalid HEADERS padding");
        };
        let mut self_dependent = false;
        if hdr.has(flag::PRIORITY) {
            let Some(dep) = frame::read_u32(&payload[..end], start) else {
                return self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "HEADERS too short for priority");
            };
            if end < start + 5 {
                return self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "HEADERS too short for priority");
            }
            self_dependent = dep & 0x7fff_ffff == id;
            start += 5;
        }
        let fragment = &payload[start..end];
        let end_stream = hdr.has(flag::END_STREAM);
        if fragment.len() > self.cfg.header_list_bytes_max as usize {
            // Larger than the limit even encoded (possible when SETTINGS_MAX_FRAME_SIZE is above it).
            self.event(|e| e.continuation_floods += 1);
            return self.conn_error(ErrorCode::ENHANCE_YOUR_CALM, "header block too large");
        }
        if hdr.has(flag::END_HEADERS) {
            self.on_header_block(id, end_stream, self_dependent, fragment, h)
        } else {
            self.block =
                Some(PendingBlock { stream_id: id, end_stream, self_dependent, frames: 1, buf: fragment.to_vec() });
            Flow::Continue
        }
    }

    fn on_continuation(&mut self, hdr: FrameHeader, payload: &[u8], h: &mut impl Handler) -> Flow {
        let Some(mut block) = self.block.take() else {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "CONTINUATION without HEADERS");
        };
        block.frames += 1;
        if block.frames > CONTINUATION_FRAMES_MAX
            || block.buf.len() + payload.len() > self.cfg.header_list_bytes_max as usize
        {
            self.event(|e| e.continuation_floods += 1);
            return self.conn_error(ErrorCode::ENHANCE_YOUR_CALM, "header block too large");
        }
        block.buf.extend_from_slice(payload);
        if hdr.has(flag::END_HEADERS) {
            let r = self.on_header_block(block.stream_id, block.end_stream, block.self_dependent, &block.buf, h);
            // Keep the allocation for the next multi-frame block.
            block.buf.clear();
            self.scratch = block.buf;
            r
        } else {
            self.block = Some(block);
            Flow::Continue
        }
    }

    /// Decodes a block into `self.headers`, validating it. Ok(malformed) or Err on HPACK errors
    /// (which are connection errors: the decoder state is lost).
    fn decode_block(&mut self, block: &[u8], trailer: bool) -> Result<bool, hpack::DecodeError> {
        let headers = &mut self.headers;
        headers.clear();
        let mut c = Check { trailer, ..Check::default() };
        let r = self.decoder.decode(block, |name, value| check_field(&mut c, headers, name, value));
        match r {
            Ok(()) => {}
            Err(hpack::DecodeError::HeaderListTooLarge) => {
                self.events.header_lists_too_large += 1;
                self.events_pending = true;
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
        if !trailer && !c.malformed {
            match c.method {
                None => c.malformed = true,
                Some(true) => {
                    // CONNECT: only :method and :authority (RFC 9113 §8.5).
                    c.malformed |= c.scheme || c.path.is_some() || c.authority.is_none();
                }
                Some(false) => c.malformed |= !c.scheme || c.path != Some(true),
            }
            c.malformed |= c.host_mismatch;
        }
        self.pending_content_length = if trailer { None } else { c.content_length };
        Ok(c.malformed)
    }

    fn on_header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        self_dependent: bool,
        block: &[u8],
        h: &mut impl Handler,
    ) -> Flow {
        if let Some(s) = self.streams.get(&id) {
            // A second header block on an open stream: trailers.
            let recv_closed = s.recv_closed;
            let malformed = match self.decode_block(block, true) {
                Ok(m) => m,
                Err(_) => return self.hpack_error(),
            };
            if recv_closed {
                self.stream_error(id, ErrorCode::STREAM_CLOSED, h);
            } else if malformed || !end_stream || self_dependent {
                self.stream_error(id, ErrorCode::PROTOCOL_ERROR, h);
            } else {
                let s = self.streams.get_mut(&id).expect("stream present: checked above");
                s.recv_closed = true;
                if let Some(cl) = s.content_length {
                    if s.received != cl {
                        self.stream_error(id, ErrorCode::PROTOCOL_ERROR, h);
                        return Flow::Continue;
                    }
                }
                h.on_data(id, &[], true);
                self.maybe_finish(id);
            }
            return Flow::Continue;
        }
        if id.is_multiple_of(2) {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "even stream id from client");
        }
        if id <= self.max_client_stream_id {
            return match self.closed_state(id) {
                // We reset it: what the client had in flight is ignored (RFC 9113 §5.1), but the
                // block must still go through the decoder to keep the HPACK table in step.
                Some(true) => match self.decode_block(block, true) {
                    Ok(_) => Flow::Continue,
                    Err(_) => self.hpack_error(),
                },
                Some(false) => self.conn_error(ErrorCode::STREAM_CLOSED, "HEADERS on closed stream"),
                None => self.conn_error(ErrorCode::PROTOCOL_ERROR, "stream id not increasing"),
            };
        }
        self.max_client_stream_id = id;
        let malformed = match self.decode_block(block, false) {
            Ok(m) => m,
            Err(_) => return self.hpack_error(),
        };
        if let Some(last) = self.draining {
            if id > last {
                return Flow::Continue; // after our GOAWAY: ignored, the client retries elsewhere
            }
        }
        if malformed || self_dependent {
            self.write_rst(id, ErrorCode::PROTOCOL_ERROR);
            self.remember_closed(id, true);
            return Flow::Continue;
        }
        if self.streams.len() >= self.cfg.max_concurrent_streams as usize {
            self.event(|e| e.refused_streams += 1);
            self.write_rst(id, ErrorCode::REFUSED_STREAM);
            self.remember_closed(id, true);
            return self.spend_reset();
        }
        let content_length = self.pending_content_length.take();
        if end_stream && content_length.is_some_and(|cl| cl != 0) {
            self.write_rst(id, ErrorCode::PROTOCOL_ERROR);
            self.remember_closed(id, true);
            return Flow::Continue;
        }
        self.streams.insert(
            id,
            Stream {
                recv_closed: end_stream,
                send_closed: false,
                send_window: self.peer_initial_window as i64,
                recv_unacked: 0,
                content_length,
                received: 0,
                pending: Vec::new(),
                pending_end: false,
                pending_trailers: None,
                queued: false,
            },
        );
        h.on_headers(id, &self.headers, end_stream);
        Flow::Continue
    }

    fn on_priority(&mut self, hdr: FrameHeader, payload: &[u8], h: &mut impl Handler) -> Flow {
        if hdr.stream_id == 0 {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "PRIORITY on stream 0");
        }
        if payload.len() != 5 {
            self.stream_error(hdr.stream_id, ErrorCode::FRAME_SIZE_ERROR, h);
            return Flow::Continue;
        }
        if frame::read_u32(payload, 0).map(|d| d & 0x7fff_ffff) == Some(hdr.stream_id) {
            self.stream_error(hdr.stream_id, ErrorCode::PROTOCOL_ERROR, h);
        }
        Flow::Continue // priorities are accepted and ignored (RFC 9113 §5.3.2)
    }

    fn on_rst_stream(&mut self, hdr: FrameHeader, payload: &[u8], h: &mut impl Handler) -> Flow {
        let id = hdr.stream_id;
        if id == 0 {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "RST_STREAM on stream 0");
        }
        let Some(code) = frame::read_u32(payload, 0).filter(|_| payload.len() == 4) else {
            return self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "RST_STREAM length must be 4");
        };
        if id > self.max_client_stream_id {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "RST_STREAM on idle stream");
        }
        if self.drop_stream(id) {
            self.remember_closed(id, false);
            h.on_reset(id, ErrorCode(code));
            return self.spend_reset();
        }
        Flow::Continue
    }

    fn on_settings(&mut self, hdr: FrameHeader, payload: &[u8]) -> Flow {
        if hdr.stream_id != 0 {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "SETTINGS on a stream");
        }
        if hdr.has(flag::ACK) {
            if !payload.is_empty() {
                return self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "SETTINGS ACK with payload");
            }
            return Flow::Continue;
        }
        if !payload.len().is_multiple_of(6) {
            return self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6");
        }
        let mut initial_window = None;
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                setting::HEADER_TABLE_SIZE => self.encoder.set_max_table_size(value as usize),
                setting::ENABLE_PUSH if value > 1 => {
                    return self.conn_error(ErrorCode::PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1");
                }
                setting::INITIAL_WINDOW_SIZE => {
                    if value as i64 > frame::WINDOW_SIZE_MAX {
                        return self.conn_error(ErrorCode::FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large");
                    }
                    // Applied once, after the loop: a frame repeating it thousands of times
                    // costs one pass over the streams, not one per entry.
                    initial_window = Some(value);
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::FRAME_SIZE_DEFAULT..=frame::FRAME_SIZE_LIMIT_MAX).contains(&value) {
                        return self.conn_error(ErrorCode::PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range");
                    }
                    self.peer_frame_max = value;
                }
                _ => {} // MAX_CONCURRENT_STREAMS (we never push), MAX_HEADER_LIST_SIZE, unknown
            }
        }
        if let Some(value) = initial_window {
            let delta = value as i64 - self.peer_initial_window as i64;
            self.peer_initial_window = value;
            if delta != 0 {
                for s in self.streams.values_mut() {
                    s.send_window += delta;
                    if s.send_window > frame::WINDOW_SIZE_MAX {
                        return self.conn_error(ErrorCode::FLOW_CONTROL_ERROR, "stream window overflow");
                    }
                }
            }
        }
        frame::write_settings_ack(&mut self.out);
        self.queued_control += 1;
        self.flush_blocked();
        Flow::Continue
    }

    fn on_ping(&mut self, hdr: FrameHeader, payload: &[u8]) -> Flow {
        let Ok(data) = <[u8; 8]>::try_from(payload) else {
            return self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "PING length must be 8");
        };
        if hdr.stream_id != 0 {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "PING on a stream");
        }
        if hdr.has(flag::ACK) {
            return Flow::Continue;
        }
        frame::write_ping(&mut self.out, true, data);
        self.queued_control += 1;
        let Some(policy) = self.cfg.ping_policy else {
            return Flow::Continue;
        };
        // grpc-go's `handlePing`, after the acknowledgement is queued.
        let now = self.now;
        let last = self.last_ping_at.replace(now);
        if std::mem::take(&mut self.forgive_pings) {
            self.ping_strikes = 0;
            return Flow::Continue;
        }
        let interval = if self.streams.is_empty() && !policy.permit_without_stream {
            PING_INTERVAL_WITHOUT_STREAMS
        } else {
            policy.min_interval
        };
        if last.is_some_and(|at| now < at + interval) {
            self.ping_strikes += 1;
        }
        if self.ping_strikes > PING_STRIKES_MAX {
            self.event(|e| e.too_many_pings += 1);
            return self.conn_error(ErrorCode::ENHANCE_YOUR_CALM, "too_many_pings");
        }
        Flow::Continue
    }

    fn on_goaway(&mut self, hdr: FrameHeader, payload: &[u8]) -> Flow {
        if hdr.stream_id != 0 {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "GOAWAY on a stream");
        }
        if payload.len() < 8 {
            return self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "GOAWAY too short");
        }
        // The client opens no more streams; those in progress finish.
        self.peer_goaway = true;
        Flow::Continue
    }

    fn on_window_update(&mut self, hdr: FrameHeader, payload: &[u8], h: &mut impl Handler) -> Flow {
        let Some(raw) = frame::read_u32(payload, 0).filter(|_| payload.len() == 4) else {
            return self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "WINDOW_UPDATE length must be 4");
        };
        let inc = (raw & 0x7fff_ffff) as i64;
        let id = hdr.stream_id;
        if id == 0 {
            if inc == 0 {
                return self.conn_error(ErrorCode::PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
            }
            self.send_window += inc;
            if self.send_window > frame::WINDOW_SIZE_MAX {
                return self.conn_error(ErrorCode::FLOW_CONTROL_ERROR, "connection window overflow");
            }
            self.flush_blocked();
            return Flow::Continue;
        }
        if id > self.max_client_stream_id {
            return self.conn_error(ErrorCode::PROTOCOL_ERROR, "WINDOW_UPDATE on idle stream");
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Flow::Continue; // closed stream: ignored
        };
        if inc == 0 {
            self.stream_error(id, ErrorCode::PROTOCOL_ERROR, h);
            return Flow::Continue;
        }
        s.send_window += inc;
        if s.send_window > frame::WINDOW_SIZE_MAX {
            self.stream_error(id, ErrorCode::FLOW_CONTROL_ERROR, h);
            return Flow::Continue;
        }
        self.flush_blocked();
        Flow::Continue
    }

    // ----- sending -----

    fn encode_block(&mut self, fields: &[(&[u8], &[u8])]) {
        self.scratch.clear();
        self.encoder.begin_block(&mut self.scratch);
        for &(name, value) in fields {
            let indexing =
                if value.len() > INDEXED_VALUE_BYTES_MAX { Indexing::Without } else { Indexing::Incremental };
            self.encoder.encode_field(name, value, indexing, &mut self.scratch);
        }
    }

    fn write_block(&mut self, id: u32, end_stream: bool) {
        self.forgive_pings = true;
        let max = self.peer_frame_max as usize;
        frame::write_header_block(&mut self.out, id, &self.scratch, end_stream, max);
    }

    /// Sends a response header block. Ignored if the stream is gone (reset) or already ended.
    pub fn send_headers(&mut self, id: u32, fields: &[(&[u8], &[u8])], end_stream: bool) {
        if self.closed {
            return;
        }
        match self.streams.get_mut(&id) {
            Some(s) if !s.send_closed => {
                if end_stream {
                    s.send_closed = true;
                }
            }
            _ => return,
        }
        self.encode_block(fields);
        self.write_block(id, end_stream);
        if end_stream {
            self.maybe_finish(id);
        }
    }

    /// Sends body bytes, as far as the flow-control windows allow; the rest waits in the stream.
    pub fn send_data(&mut self, id: u32, data: &[u8], end_stream: bool) {
        if self.closed {
            return;
        }
        let conn_window = self.send_window;
        let max_frame = self.peer_frame_max as usize;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.send_closed {
            return;
        }
        if end_stream {
            s.send_closed = true;
        }
        if s.queued {
            s.pending.extend_from_slice(data);
            self.blocked_total += data.len();
            s.pending_end |= end_stream;
            return;
        }
        let credit = conn_window.min(s.send_window).max(0) as usize;
        let n = credit.min(data.len());
        self.forgive_pings |= n > 0;
        if n == data.len() {
            frame::write_data(&mut self.out, id, data, end_stream, max_frame);
        } else {
            // No empty DATA frame when there is no credit: clients count those as abuse (the
            // `h2` crate ends the connection with ENHANCE_YOUR_CALM after a few).
            if n > 0 {
                frame::write_data(&mut self.out, id, &data[..n], false, max_frame);
            }
            s.pending.extend_from_slice(&data[n..]);
            self.blocked_total += data.len() - n;
            s.pending_end = end_stream;
            s.queued = true;
            self.blocked.push_back(id);
        }
        s.send_window -= n as i64;
        self.send_window -= n as i64;
        if end_stream && n == data.len() {
            self.maybe_finish(id);
        }
    }

    /// Sends trailers (ending the stream), after any data still waiting for credit.
    pub fn send_trailers(&mut self, id: u32, fields: &[(&[u8], &[u8])]) {
        if self.closed {
            return;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.send_closed {
            return;
        }
        s.send_closed = true;
        if s.queued {
            s.pending_trailers = Some(fields.iter().map(|&(n, v)| (Box::from(n), Box::from(v))).collect());
            return;
        }
        self.encode_block(fields);
        self.write_block(id, true);
        self.maybe_finish(id);
    }

    /// Moves data that was waiting for credit, in the order the streams blocked.
    fn flush_blocked(&mut self) {
        let max_frame = self.peer_frame_max as usize;
        let mut rounds = self.blocked.len();
        while rounds > 0 && self.send_window > 0 {
            rounds -= 1;
            let Some(id) = self.blocked.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            let credit = self.send_window.min(s.send_window).max(0) as usize;
            let n = credit.min(s.pending.len());
            let all = n == s.pending.len();
            let end = all && s.pending_end && s.pending_trailers.is_none();
            if n > 0 || end {
                frame::write_data(&mut self.out, id, &s.pending[..n], end, max_frame);
                self.forgive_pings = true;
            }
            s.pending.drain(..n);
            self.blocked_total -= n;
            s.send_window -= n as i64;
            self.send_window -= n as i64;
            if !all {
                if self.send_window <= 0 {
                    // The connection window ran out: this stream goes on first when credit comes
                    // back. Sending later streams ahead of it could spend the whole window on
                    // bytes a client that reads in order does not release yet: a deadlock.
                    self.blocked.push_front(id);
                    break;
                }
                // Its own window ran out: the others may go on meanwhile.
                self.blocked.push_back(id);
                continue;
            }
            s.queued = false;
            s.pending = Vec::new();
            if let Some(trailers) = s.pending_trailers.take() {
                let fields: Vec<(&[u8], &[u8])> = trailers.iter().map(|(n, v)| (&n[..], &v[..])).collect();
                self.encode_block(&fields);
                self.write_block(id, true);
            }
            self.maybe_finish(id);
        }
    }

    /// Retires a stream whose response has fully left. If the client is still sending, it is told
    /// to stop with RST_STREAM(NO_ERROR) (RFC 9113 §8.1).
    fn maybe_finish(&mut self, id: u32) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if !s.send_closed || s.queued {
            return;
        }
        let recv_closed = s.recv_closed;
        self.drop_stream(id);
        if !recv_closed {
            frame::write_rst_stream(&mut self.out, id, ErrorCode::NO_ERROR);
        }
        self.remember_closed(id, !recv_closed);
    }
}

/// Validates one field (RFC 9113 §8.2 and §8.3) and stores it unless the block is already bad.
fn check_field(c: &mut Check, headers: &mut HeaderList, name: &[u8], value: &[u8]) {
    if c.malformed {
        return;
    }
    let bad_value = value.iter().any(|&b| b == 0 || b == b'\n' || b == b'\r')
        || value.first().is_some_and(|&b| b == b' ' || b == b'\t')
        || value.last().is_some_and(|&b| b == b' ' || b == b'\t');
    if name.is_empty() || bad_value {
        c.malformed = true;
        return;
    }
    if name[0] == b':' {
        if c.trailer || c.regular_seen {
            c.malformed = true;
            return;
        }
        match name {
            b":method" if c.method.is_none() => c.method = Some(value == b"CONNECT"),
            b":scheme" if !c.scheme => c.scheme = true,
            b":path" if c.path.is_none() => c.path = Some(!value.is_empty()),
            b":authority" if c.authority.is_none() => {
                let start = headers.buf.len() as u32 + name.len() as u32;
                c.authority = Some((start, start + value.len() as u32));
            }
            _ => {
                c.malformed = true;
                return;
            }
        }
    } else {
        c.regular_seen = true;
        if name.iter().any(|&b| b <= 0x20 || b.is_ascii_uppercase() || b >= 0x7f || b == b':') {
            c.malformed = true;
            return;
        }
        match name {
            b"connection" | b"proxy-connection" | b"keep-alive" | b"transfer-encoding" | b"upgrade" => {
                c.malformed = true;
                return;
            }
            b"te" if value != b"trailers" => {
                c.malformed = true;
                return;
            }
            b"content-length" => {
                let parsed = std::str::from_utf8(value).ok().and_then(|s| s.parse::<u64>().ok());
                match (parsed, c.content_length) {
                    (Some(v), None) => c.content_length = Some(v),
                    (Some(v), Some(old)) if v == old => {}
                    _ => {
                        c.malformed = true;
                        return;
                    }
                }
            }
            b"host" => {
                if let Some((s, e)) = c.authority {
                    if headers.buf.get(s as usize..e as usize) != Some(value) {
                        c.host_mismatch = true;
                    }
                }
            }
            _ => {}
        }
    }
    headers.push(name, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    #[derive(Default)]
    struct Opened(Vec<(u32, Fields)>);

    impl Handler for Opened {
        fn on_headers(&mut self, id: u32, headers: &HeaderList, _end_stream: bool) {
            let fields = headers.iter().map(|(n, v)| (n.to_vec(), v.to_vec()));
            self.0.push((id, fields.collect()));
        }
        fn on_data(&mut self, _: u32, _: &[u8], _: bool) {}
        fn on_reset(&mut self, _: u32, _: ErrorCode) {}
    }

    fn opened(cfg: Config) -> (Connection, Opened, Vec<u8>) {
        let mut conn = Connection::new(cfg);
        let mut input = PREFACE.to_vec();
        frame::write_settings(&mut input, &[]);
        let mut h = Opened::default();
        assert_eq!(conn.recv(&input, &mut h), input.len());
        let mut out = Vec::new();
        conn.take_out(&mut out);
        (conn, h, out)
    }

    fn goaway(out: &[u8]) -> Option<(ErrorCode, Vec<u8>)> {
        let mut pos = 0;
        while pos + FRAME_HEADER_LEN <= out.len() {
            let hdr = FrameHeader::parse(out[pos..pos + FRAME_HEADER_LEN].try_into().ok()?);
            let p = &out[pos + FRAME_HEADER_LEN..pos + FRAME_HEADER_LEN + hdr.len as usize];
            if hdr.kind == kind::GOAWAY {
                return Some((ErrorCode(frame::read_u32(p, 4)?), p[8..].to_vec()));
            }
            pos += FRAME_HEADER_LEN + hdr.len as usize;
        }
        None
    }

    fn ping() -> Vec<u8> {
        let mut b = Vec::new();
        frame::write_ping(&mut b, false, *b"12345678");
        b
    }

    fn request(enc: &mut hpack::Encoder, id: u32, end_stream: bool) -> Vec<u8> {
        let req: &[(&[u8], &[u8])] = &[(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc.S/M")];
        let mut block = Vec::new();
        enc.encode(req.iter().copied(), &mut block);
        let mut b = Vec::new();
        frame::write_header_block(&mut b, id, &block, end_stream, 16_384);
        b
    }

    #[test]
    fn pings_more_often_than_the_policy_allows_get_too_many_pings() {
        let policy = PingPolicy { min_interval: Duration::from_secs(5), permit_without_stream: false };
        let t0 = Instant::now();
        let (mut conn, mut h, _) = opened(Config { ping_policy: Some(policy), ..Config::default() });
        // Without a stream: the first ping is free, the next three are strikes; the third ends it.
        for i in 0..3 {
            conn.set_now(t0 + Duration::from_secs(60 * i));
            conn.recv(&ping(), &mut h);
            assert!(!conn.is_closed(), "ping {i}");
        }
        conn.set_now(t0 + Duration::from_secs(200));
        conn.recv(&ping(), &mut h);
        assert!(conn.is_closed());
        let (code, debug) = goaway(conn.out()).expect("GOAWAY");
        assert_eq!((code, debug.as_slice()), (ErrorCode::ENHANCE_YOUR_CALM, &b"too_many_pings"[..]));
        assert_eq!(conn.take_events().map(|e| e.too_many_pings), Some(1));

        // With a stream open, pings min_interval apart are fine, and data sent forgives strikes.
        let (mut conn, mut h, _) = opened(Config { ping_policy: Some(policy), ..Config::default() });
        let mut enc = hpack::Encoder::new();
        conn.recv(&request(&mut enc, 1, false), &mut h);
        for i in 0..10 {
            conn.set_now(t0 + Duration::from_secs(5 * i));
            conn.recv(&ping(), &mut h);
        }
        assert!(!conn.is_closed());
        for i in 0..10 {
            conn.send_data(1, b"x", false);
            conn.set_now(t0 + Duration::from_secs(60) + Duration::from_millis(i));
            conn.recv(&ping(), &mut h);
        }
        assert!(!conn.is_closed(), "a BDP ping after each DATA is no strike");
        for _ in 0..3 {
            conn.recv(&ping(), &mut h);
        }
        assert!(conn.is_closed());
    }

    #[test]
    fn rapid_reset_runs_out_of_budget() {
        let cfg = Config { reset_burst: 10, resets_per_sec: 1, ..Config::default() };
        let (mut conn, mut h, _) = opened(cfg);
        let mut enc = hpack::Encoder::new();
        for i in 0..11u32 {
            let id = 1 + 2 * i;
            let mut b = request(&mut enc, id, false);
            frame::write_rst_stream(&mut b, id, ErrorCode::CANCEL);
            conn.recv(&b, &mut h);
            assert_eq!(conn.is_closed(), i == 10, "reset {i}");
        }
        assert_eq!(goaway(conn.out()).map(|g| g.0), Some(ErrorCode::ENHANCE_YOUR_CALM));
        assert_eq!(conn.take_events().map(|e| e.rapid_resets), Some(1));
        // Refused streams count as well.
        let cfg = Config { reset_burst: 5, max_concurrent_streams: 1, ..Config::default() };
        let (mut conn, mut h, _) = opened(cfg);
        let mut enc = hpack::Encoder::new();
        for i in 0..7u32 {
            conn.recv(&request(&mut enc, 1 + 2 * i, false), &mut h);
        }
        assert!(conn.is_closed());
        let e = conn.take_events().unwrap();
        assert_eq!((e.refused_streams, e.rapid_resets), (6, 1));
    }

    #[test]
    fn control_frames_for_a_peer_that_does_not_read_are_bounded() {
        let cfg = Config { control_frames_queued_max: 100, ..Config::default() };
        let (mut conn, mut h, _) = opened(cfg.clone());
        let pings: Vec<u8> = (0..90).flat_map(|_| ping()).collect();
        conn.recv(&pings, &mut h);
        let mut out = Vec::new();
        conn.take_out(&mut out);
        conn.recv(&pings, &mut h);
        assert!(!conn.is_closed(), "the output was taken in between");
        conn.recv(&pings, &mut h);
        assert!(conn.is_closed());
        assert_eq!(goaway(conn.out()).map(|g| g.0), Some(ErrorCode::ENHANCE_YOUR_CALM));
        assert_eq!(conn.take_events().map(|e| e.control_queue_overflows), Some(1));
        // SETTINGS acknowledgements count too.
        let (mut conn, mut h, _) = opened(cfg);
        let mut b = Vec::new();
        for _ in 0..200 {
            frame::write_settings(&mut b, &[]);
        }
        conn.recv(&b, &mut h);
        assert!(conn.is_closed());
    }

    #[test]
    fn frames_without_requests_are_rate_limited() {
        let t0 = Instant::now();
        let cfg = Config { idle_frame_burst: 50, idle_frames_per_sec: 10, ..Config::default() };
        let (mut conn, mut h, _) = opened(cfg);
        conn.set_now(t0);
        let mut b = Vec::new();
        for _ in 0..48 {
            frame::write_header(&mut b, 5, kind::PRIORITY, 0, 3);
            b.extend_from_slice(&[0, 0, 0, 1, 16]);
        }
        conn.recv(&b, &mut h);
        assert!(!conn.is_closed());
        conn.set_now(t0 + Duration::from_secs(1)); // 10 more
        let mut b = Vec::new();
        // The client's SETTINGS took one: 1 left, and 10 more after a second.
        for _ in 0..11 {
            frame::write_header(&mut b, 0, 0xfa, 0, 0); // unknown type
        }
        conn.recv(&b, &mut h);
        assert!(!conn.is_closed());
        conn.recv(&ping(), &mut h);
        assert!(conn.is_closed());
        assert_eq!(conn.take_events().map(|e| e.frame_floods), Some(1));
    }

    #[test]
    fn initial_window_repeated_in_one_settings_frame_applies_once() {
        let (mut conn, mut h, _) = opened(Config::default());
        let mut enc = hpack::Encoder::new();
        conn.recv(&request(&mut enc, 1, true), &mut h);
        let entries: Vec<(u16, u32)> = (0..2000).map(|i| (setting::INITIAL_WINDOW_SIZE, 1000 + i)).collect();
        let mut b = Vec::new();
        frame::write_settings(&mut b, &entries);
        conn.recv(&b, &mut h);
        assert!(!conn.is_closed());
        assert_eq!(conn.streams.get(&1).map(|s| s.send_window), Some(2999));
    }

    /// Found by the `h2_frames`/`grpc_messages` fuzz targets: trailers the client had in flight
    /// when we ended the stream early (response sent, RST_STREAM(NO_ERROR)) closed the whole
    /// connection with STREAM_CLOSED instead of being ignored.
    #[test]
    fn trailers_after_our_early_response_are_ignored_but_decoded() {
        let mut conn = Connection::new(Config::default());
        let mut h = Opened::default();
        let mut enc = hpack::Encoder::new();
        let req: &[(&[u8], &[u8])] = &[(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc.S/M")];
        let mut input = PREFACE.to_vec();
        let mut block = Vec::new();
        enc.encode(req.iter().copied(), &mut block);
        frame::write_header_block(&mut input, 1, &block, false, 16_384);
        assert_eq!(conn.recv(&input, &mut h), input.len());
        conn.send_headers(1, &[(b":status", b"200"), (b"grpc-status", b"8")], true);

        // The client's trailers add an entry to the HPACK table; the next request uses it.
        let mut input = Vec::new();
        block.clear();
        enc.encode([(&b"x-trailer"[..], &b"late"[..])], &mut block);
        frame::write_header_block(&mut input, 1, &block, true, 16_384);
        block.clear();
        enc.encode(req.iter().copied().chain([(&b"x-trailer"[..], &b"late"[..])]), &mut block);
        assert_eq!(block.last(), Some(&0xbe), "indexed from the dynamic table");
        frame::write_header_block(&mut input, 3, &block, true, 16_384);
        assert_eq!(conn.recv(&input, &mut h), input.len());
        assert!(!conn.is_closed());
        let (id, fields) = h.0.last().unwrap();
        assert_eq!(*id, 3);
        assert_eq!(fields.last().unwrap(), &(b"x-trailer".to_vec(), b"late".to_vec()));
    }
}
