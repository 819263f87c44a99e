//! `h2_frames`: arbitrary client frames into a fresh [`Connection`], fed in fuzz-chosen chunks,
//! with a handler that answers every request (HEADERS, DATA, trailers) so that the send path,
//! the blocked-data queue and flow control are fuzzed along with the receive path.
//!
//! Input layout:
//!
//! | byte | meaning |
//! | --- | --- |
//! | 0 | socket read size: 0 = everything in one `recv`, else this many bytes per read |
//! | 1 | config: bits 0-1 receive windows (default, 64 KiB, 1 KiB/4 KiB, 16/64 bytes); bits 2-3 max concurrent streams (unlimited, 1, 2, 100); bit 4 header list limit 256; bit 5 header table 256; bit 6 also check that chunking changes nothing; bit 7 start a graceful drain after the first request |
//! | 2 | responses: bits 0-5 body size in KiB; bit 6 no responses at all; bit 7 end with trailers rather than END_STREAM on DATA |
//! | 3.. | what the client sends after the connection preface |
//!
//! Invariants: no panic; `recv` consumes at most its input; while open it leaves at most a
//! partial frame unconsumed (never a complete one: the caller would stall); once closed it
//! consumes everything and writes nothing more; the output is well formed for a client (see
//! [`Peer`]); and (bit 6) feeding the same bytes in one piece or in chunks gives the same
//! handler events and the same output.

use metastore_net::frame::{ErrorCode, FRAME_HEADER_LEN, PREFACE};
use metastore_net::h2::{Config, Connection, Handler, HeaderList};

use crate::wire::{frame_len, ClientModel, Peer};

/// Response bodies are slices of this.
static BODY: [u8; 64 << 10] = [b'x'; 64 << 10];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Headers(u32, Vec<(Vec<u8>, Vec<u8>)>, bool),
    Data(u32, Vec<u8>, bool),
    Reset(u32, u32),
}

#[derive(Default)]
struct Recorder {
    /// Streams opened during the current `recv`, answered after it returns.
    opened: Vec<u32>,
    /// Every event, when comparing runs.
    events: Option<Vec<Event>>,
}

impl Handler for Recorder {
    fn on_headers(&mut self, stream_id: u32, headers: &HeaderList, end_stream: bool) {
        self.opened.push(stream_id);
        if let Some(ev) = &mut self.events {
            let fields = headers.iter().map(|(n, v)| (n.to_vec(), v.to_vec()));
            ev.push(Event::Headers(stream_id, fields.collect(), end_stream));
        }
    }

    fn on_data(&mut self, stream_id: u32, data: &[u8], end_stream: bool) {
        if let Some(ev) = &mut self.events {
            ev.push(Event::Data(stream_id, data.to_vec(), end_stream));
        }
    }

    fn on_reset(&mut self, stream_id: u32, code: ErrorCode) {
        if let Some(ev) = &mut self.events {
            ev.push(Event::Reset(stream_id, code.0));
        }
    }
}

#[derive(Clone, Copy)]
struct Responses {
    body: usize,
    trailers: bool,
}

#[derive(Clone, Copy)]
struct Opts {
    chunk: usize,
    drain: bool,
    responses: Option<Responses>,
    record: bool,
}

pub fn config(b: u8) -> Config {
    let mut cfg = Config::default();
    match b & 3 {
        0 => {}
        1 => (cfg.stream_window_bytes, cfg.connection_window_bytes) = (65_535, 65_535),
        2 => (cfg.stream_window_bytes, cfg.connection_window_bytes) = (1024, 4096),
        _ => (cfg.stream_window_bytes, cfg.connection_window_bytes) = (16, 64),
    }
    cfg.max_concurrent_streams = match (b >> 2) & 3 {
        0 => u32::MAX,
        1 => 1,
        2 => 2,
        _ => 100,
    };
    if b & 0x10 != 0 {
        cfg.header_list_bytes_max = 256;
    }
    if b & 0x20 != 0 {
        cfg.header_table_bytes = 256;
    }
    cfg
}

pub fn run(data: &[u8]) {
    let [chunk, cfg_byte, resp, body @ ..] = data else {
        return;
    };
    let cfg = config(*cfg_byte);
    let mut stream = Vec::with_capacity(PREFACE.len() + body.len());
    stream.extend_from_slice(PREFACE);
    stream.extend_from_slice(body);
    let chunk = match *chunk {
        0 => stream.len().max(1),
        n => usize::from(n),
    };
    let responses =
        (resp & 0x40 == 0).then_some(Responses { body: usize::from(resp & 0x3f) << 10, trailers: resp & 0x80 != 0 });
    let drain = cfg_byte & 0x80 != 0;
    drive(&stream, &cfg, Opts { chunk, drain, responses, record: false });
    if cfg_byte & 0x40 != 0 {
        // Framing must not depend on how the bytes were split into reads.
        let opts = Opts { chunk, drain: false, responses: None, record: true };
        let chunked = drive(&stream, &cfg, opts);
        let whole = drive(&stream, &cfg, Opts { chunk: stream.len(), ..opts });
        assert!(chunked.0 == whole.0, "handler events depend on read sizes");
        assert!(chunked.1 == whole.1, "output depends on read sizes");
    }
}

/// Runs one connection over `stream`; returns the handler events (if recorded) and the output.
fn drive(stream: &[u8], cfg: &Config, opts: Opts) -> (Vec<Event>, Vec<u8>) {
    let mut conn = Connection::new(cfg.clone());
    let mut h = Recorder { opened: Vec::new(), events: opts.record.then(Vec::new) };
    let mut model = ClientModel::default();
    let mut peer = Peer::new(false);
    let mut all_out = Vec::new();
    let mut out = Vec::new();
    conn.take_out(&mut out);
    peer.feed(&out, &model);
    all_out.extend_from_slice(&out);
    out.clear();

    let mut pending: Vec<u8> = Vec::new();
    let mut consumed_total = 0usize;
    let mut drained = false;
    for piece in stream.chunks(opts.chunk) {
        pending.extend_from_slice(piece);
        let was_closed = conn.is_closed();
        let n = conn.recv(&pending, &mut h);
        assert!(n <= pending.len(), "recv consumed {n} of {} bytes", pending.len());
        if conn.is_closed() {
            assert_eq!(n, pending.len(), "closed connection left input unconsumed");
        } else {
            let rest = &pending[n..];
            if rest.len() >= FRAME_HEADER_LEN {
                let len = frame_len(rest);
                assert!(
                    FRAME_HEADER_LEN + len > rest.len(),
                    "recv left a complete frame unconsumed ({} of {} bytes left)",
                    rest.len(),
                    pending.len()
                );
            }
        }
        if was_closed {
            assert!(conn.out().is_empty(), "closed connection wrote more output");
        }
        let before = consumed_total;
        consumed_total += n;
        assert!(consumed_total >= before);
        model.feed(&pending[..n]);
        pending.drain(..n);

        let opened = std::mem::take(&mut h.opened);
        if let Some(r) = opts.responses {
            for &id in &opened {
                respond(&mut conn, id, r);
            }
        }
        if opts.drain && !drained && !opened.is_empty() {
            drained = true;
            conn.start_drain();
        }
        h.opened = opened;
        h.opened.clear();

        conn.take_out(&mut out);
        peer.feed(&out, &model);
        if opts.record {
            all_out.extend_from_slice(&out);
        }
        out.clear();
    }
    assert_eq!(consumed_total + pending.len(), stream.len());
    let _ = (conn.is_done(), conn.active_streams(), conn.blocked_bytes());
    (h.events.unwrap_or_default(), all_out)
}

fn respond(conn: &mut Connection, id: u32, r: Responses) {
    let body = &BODY[..r.body.min(BODY.len())];
    conn.send_headers(id, &[(b":status", b"200"), (b"content-type", b"application/grpc")], false);
    if r.trailers {
        conn.send_data(id, body, false);
        conn.send_trailers(id, &[(b"grpc-status", b"0")]);
    } else {
        conn.send_data(id, body, true);
    }
}
