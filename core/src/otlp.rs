//! A minimal OTLP/gRPC client: one HTTP/2 connection with prior knowledge (h2c, as etcd's
//! exporter speaks to `--experimental-distributed-tracing-address`), one call at a time, over a
//! blocking socket. It runs on the trace exporter's own thread, never on a core.
//!
//! Each export is a unary `POST /opentelemetry.proto.collector.trace.v1.TraceService/Export`:
//! HEADERS (HPACK from `metastore_net::hpack`), the length-prefixed request in DATA frames sent
//! as the collector's flow-control windows allow, then the reply's headers, message and trailers
//! read until the stream ends. Every wait has the caller's deadline; anything unexpected drops the
//! connection (the next export opens a new one). Input from the collector is bounded: frames by
//! the default maximum frame size we advertise, header blocks and the reply's body by the limits
//! below.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use metastore_net::frame::{self, flag, kind, setting, ErrorCode, FrameHeader, FRAME_HEADER_LEN, FRAME_SIZE_DEFAULT};
use metastore_net::grpc::percent_decode;
use metastore_net::hpack;
use metastore_proto::opentelemetry::proto::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

/// The OTLP/gRPC trace export method.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Our receive window, per stream and for the connection: replies are a few bytes, so it is
/// never exhausted by one; the connection's is topped up as DATA arrives.
const RECV_WINDOW_BYTES: u32 = 1 << 20;
/// The largest frame we accept: the default, since we advertise no other.
const FRAME_BYTES_MAX: usize = FRAME_SIZE_DEFAULT as usize;
/// Most of a reply's body we keep (an ExportTraceServiceResponse is a few bytes).
const REPLY_BYTES_MAX: usize = 64 << 10;
/// Most bytes of one header block (HEADERS plus CONTINUATIONs) we collect.
const HEADER_BLOCK_BYTES_MAX: usize = 64 << 10;
/// The longest we wait for a TCP connection to one address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Past this stream ID the connection is replaced (IDs are 31 bits, odd from the client).
const STREAM_ID_MAX: u32 = (1 << 31) - 2;
const USER_AGENT: &str = concat!("metastore/", env!("CARGO_PKG_VERSION"), " otlp-grpc");

const _: () = assert!(REPLY_BYTES_MAX < RECV_WINDOW_BYTES as usize);

/// Why an export did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportError {
    /// Connecting, writing or reading failed, timed out, or the collector broke the protocol.
    Transport(String),
    /// The collector answered with a gRPC status other than OK.
    Status { code: u32, message: String },
}

impl ExportError {
    /// Whether the same request may succeed later: transport failures, and the codes the OTLP
    /// specification lists as retryable.
    pub fn retryable(&self) -> bool {
        match self {
            ExportError::Transport(_) => true,
            // CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS.
            ExportError::Status { code, .. } => matches!(code, 1 | 4 | 10 | 11 | 14 | 15),
        }
    }
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::Transport(e) => f.write_str(e),
            ExportError::Status { code, message } => write!(f, "the collector answered gRPC status {code}: {message}"),
        }
    }
}

fn transport(what: impl std::fmt::Display) -> ExportError {
    ExportError::Transport(what.to_string())
}

/// An OTLP/gRPC trace client for one collector address (`host:port`, resolved at each connect).
#[derive(Debug)]
pub struct Client {
    address: String,
    conn: Option<Conn>,
}

impl Client {
    pub fn new(address: &str) -> Self {
        Self { address: address.to_string(), conn: None }
    }

    /// Sends one encoded `ExportTraceServiceRequest`; returns how many spans the collector
    /// rejected (its partial success; 0 when it took them all). A connection that has gone stale
    /// since the last export (the collector closed it while idle) is replaced once.
    pub fn export(&mut self, request: &[u8], deadline: Instant) -> Result<i64, ExportError> {
        let reused = self.conn.is_some();
        match self.try_export(request, deadline) {
            Err(ExportError::Transport(_)) if reused && Instant::now() < deadline => self.try_export(request, deadline),
            r => r,
        }
    }

    /// Closes the connection, if any.
    pub fn close(&mut self) {
        self.conn = None;
    }

    fn try_export(&mut self, request: &[u8], deadline: Instant) -> Result<i64, ExportError> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self.conn.insert(Conn::open(&self.address, deadline)?),
        };
        let r = conn.call(&self.address, request, deadline);
        if matches!(r, Err(ExportError::Transport(_))) || conn.goaway || conn.next_stream_id > STREAM_ID_MAX {
            self.conn = None;
        }
        r
    }
}

/// What came back on the export's stream.
#[derive(Debug, Default)]
struct Reply {
    /// The first header block arrived (then any later one is the trailers).
    headers_seen: bool,
    http_status: Option<Vec<u8>>,
    grpc_status: Option<Vec<u8>>,
    grpc_message: Option<Vec<u8>>,
    body: Vec<u8>,
    ended: bool,
}

#[derive(Debug)]
struct Conn {
    sock: TcpStream,
    enc: hpack::Encoder,
    dec: hpack::Decoder,
    next_stream_id: u32,
    /// What the collector lets us send, on the connection and on the current stream.
    conn_send_window: i64,
    stream_send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    /// The collector sent GOAWAY: no new stream on this connection.
    goaway: bool,
    /// The collector's first SETTINGS arrived (its windows and frame size are known).
    settings_seen: bool,
    out: Vec<u8>,
    payload: Vec<u8>,
}

impl Conn {
    fn open(address: &str, deadline: Instant) -> Result<Self, ExportError> {
        let addrs = address.to_socket_addrs().map_err(|e| transport(format!("cannot resolve {address}: {e}")))?;
        let mut last = transport(format!("{address} resolves to no address"));
        let mut sock = None;
        for a in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&a, left.min(CONNECT_TIMEOUT)) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = transport(format!("cannot connect to {address} ({a}): {e}")),
            }
        }
        let Some(sock) = sock else { return Err(last) };
        // Small writes (a HEADERS frame, then DATA) must not wait for each other's ACKs.
        sock.set_nodelay(true).map_err(transport)?;
        let mut c = Conn {
            sock,
            enc: hpack::Encoder::new(),
            dec: hpack::Decoder::new(4096),
            next_stream_id: 1,
            conn_send_window: i64::from(frame::WINDOW_SIZE_DEFAULT),
            stream_send_window: 0,
            peer_initial_window: i64::from(frame::WINDOW_SIZE_DEFAULT),
            peer_max_frame: FRAME_BYTES_MAX,
            goaway: false,
            settings_seen: false,
            out: Vec::with_capacity(4096),
            payload: Vec::with_capacity(FRAME_BYTES_MAX),
        };
        c.out.extend_from_slice(frame::PREFACE);
        frame::write_settings(
            &mut c.out,
            &[(setting::ENABLE_PUSH, 0), (setting::INITIAL_WINDOW_SIZE, RECV_WINDOW_BYTES)],
        );
        frame::write_window_update(&mut c.out, 0, RECV_WINDOW_BYTES - frame::WINDOW_SIZE_DEFAULT);
        c.flush(deadline)?;
        // The server's preface is a SETTINGS frame: wait for it, so that the first export is sent
        // within the windows the collector asked for (as grpc-go's client waits before it sends).
        let mut none = Reply::default();
        while !c.settings_seen {
            c.read_frame(0, &mut none, deadline)?;
        }
        Ok(c)
    }

    /// One unary call: the request out, the reply in.
    fn call(&mut self, authority: &str, request: &[u8], deadline: Instant) -> Result<i64, ExportError> {
        let id = self.next_stream_id;
        self.next_stream_id += 2;
        self.stream_send_window = self.peer_initial_window;
        let mut block = Vec::with_capacity(256);
        let fields: [(&[u8], &[u8]); 7] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", EXPORT_PATH.as_bytes()),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", USER_AGENT.as_bytes()),
        ];
        self.enc.encode(fields, &mut block);
        frame::write_header_block(&mut self.out, id, &block, false, self.peer_max_frame);
        self.flush(deadline)?;

        let mut body = Vec::with_capacity(5 + request.len());
        body.push(0);
        body.extend_from_slice(&(request.len() as u32).to_be_bytes());
        body.extend_from_slice(request);
        let mut sent = 0;
        let mut reply = Reply::default();
        while sent < body.len() && !reply.ended {
            let window = self.conn_send_window.min(self.stream_send_window).max(0) as usize;
            let n = window.min(self.peer_max_frame).min(body.len() - sent);
            if n == 0 {
                // Wait for credit (WINDOW_UPDATE or SETTINGS), answering what else arrives.
                self.read_frame(id, &mut reply, deadline)?;
                continue;
            }
            let end = sent + n == body.len();
            frame::write_header(&mut self.out, n, kind::DATA, if end { flag::END_STREAM } else { 0 }, id);
            self.out.extend_from_slice(&body[sent..sent + n]);
            self.flush(deadline)?;
            sent += n;
            self.conn_send_window -= n as i64;
            self.stream_send_window -= n as i64;
        }
        if sent < body.len() {
            // The collector answered before taking the whole request (an error): stop sending.
            frame::write_rst_stream(&mut self.out, id, ErrorCode::CANCEL);
            self.flush(deadline)?;
        }
        while !reply.ended {
            self.read_frame(id, &mut reply, deadline)?;
        }
        reply_result(&reply)
    }

    fn flush(&mut self, deadline: Instant) -> Result<(), ExportError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(transport("export timed out"));
        }
        self.sock.set_write_timeout(Some(left)).map_err(transport)?;
        let r = self.sock.write_all(&self.out);
        self.out.clear();
        r.map_err(|e| transport(format!("write: {e}")))
    }

    fn read_exact(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), ExportError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(transport("export timed out"));
        }
        self.sock.set_read_timeout(Some(left)).map_err(transport)?;
        self.sock.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => transport("export timed out"),
            io::ErrorKind::UnexpectedEof => transport("the collector closed the connection"),
            _ => transport(format!("read: {e}")),
        })
    }

    /// Reads one frame (with its payload in `self.payload`).
    fn next_frame(&mut self, deadline: Instant) -> Result<FrameHeader, ExportError> {
        let mut h = [0u8; FRAME_HEADER_LEN];
        self.read_exact(&mut h, deadline)?;
        let hdr = FrameHeader::parse(&h);
        if hdr.len as usize > FRAME_BYTES_MAX {
            return Err(transport(format!("the collector sent a {}-byte frame, over our maximum", hdr.len)));
        }
        let mut payload = std::mem::take(&mut self.payload);
        payload.resize(hdr.len as usize, 0);
        let r = self.read_exact(&mut payload, deadline);
        self.payload = payload;
        r.map(|()| hdr)
    }

    /// Reads and handles one frame (a header block: all of its frames) for the call on `id`.
    fn read_frame(&mut self, id: u32, reply: &mut Reply, deadline: Instant) -> Result<(), ExportError> {
        let hdr = self.next_frame(deadline)?;
        match hdr.kind {
            kind::DATA => {
                if hdr.stream_id == 0 {
                    return Err(transport("DATA on stream 0"));
                }
                // Every DATA byte counts against our connection window: give it back at once.
                if hdr.len > 0 {
                    frame::write_window_update(&mut self.out, 0, hdr.len);
                    self.flush(deadline)?;
                }
                let data = unpad(hdr, &self.payload).ok_or_else(|| transport("bad DATA padding"))?;
                if hdr.stream_id == id {
                    if reply.body.len() + data.len() > REPLY_BYTES_MAX {
                        return Err(transport("the collector's reply is too large"));
                    }
                    reply.body.extend_from_slice(data);
                    reply.ended |= hdr.has(flag::END_STREAM);
                }
            }
            kind::HEADERS => {
                let end_stream = hdr.has(flag::END_STREAM);
                let mut block = header_fragment(hdr, &self.payload).ok_or_else(|| transport("bad HEADERS"))?.to_vec();
                let mut end_headers = hdr.has(flag::END_HEADERS);
                while !end_headers {
                    let c = self.next_frame(deadline)?;
                    if c.kind != kind::CONTINUATION || c.stream_id != hdr.stream_id {
                        return Err(transport("a header block not continued by CONTINUATION"));
                    }
                    if block.len() + self.payload.len() > HEADER_BLOCK_BYTES_MAX {
                        return Err(transport("the collector's header block is too large"));
                    }
                    block.extend_from_slice(&self.payload);
                    end_headers = c.has(flag::END_HEADERS);
                }
                // Decoded whatever the stream, to keep the HPACK table in step.
                let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
                self.dec
                    .decode(&block, |n, v| fields.push((n.to_vec(), v.to_vec())))
                    .map_err(|e| transport(format!("HPACK: {e}")))?;
                if hdr.stream_id == id {
                    let first = !reply.headers_seen;
                    reply.headers_seen = true;
                    for (n, v) in fields {
                        match &n[..] {
                            b":status" if first => reply.http_status = Some(v),
                            b"grpc-status" => reply.grpc_status = Some(v),
                            b"grpc-message" => reply.grpc_message = Some(v),
                            _ => {}
                        }
                    }
                    reply.ended |= end_stream;
                }
            }
            kind::RST_STREAM if hdr.stream_id == id => {
                let code = frame::read_u32(&self.payload, 0).unwrap_or(0);
                return Err(transport(format!("the collector reset the export (HTTP/2 error {code})")));
            }
            kind::SETTINGS if !hdr.has(flag::ACK) => {
                if hdr.stream_id != 0 || hdr.len % 6 != 0 {
                    return Err(transport("malformed SETTINGS"));
                }
                for s in self.payload.chunks_exact(6) {
                    let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                    match u16::from_be_bytes([s[0], s[1]]) {
                        setting::INITIAL_WINDOW_SIZE => {
                            let v = i64::from(value);
                            if v > frame::WINDOW_SIZE_MAX {
                                return Err(transport("INITIAL_WINDOW_SIZE over 2^31-1"));
                            }
                            self.stream_send_window += v - self.peer_initial_window;
                            self.peer_initial_window = v;
                        }
                        setting::MAX_FRAME_SIZE => {
                            if !(FRAME_SIZE_DEFAULT..=frame::FRAME_SIZE_LIMIT_MAX).contains(&value) {
                                return Err(transport("MAX_FRAME_SIZE out of range"));
                            }
                            self.peer_max_frame = value as usize;
                        }
                        setting::HEADER_TABLE_SIZE => self.enc.set_max_table_size(value as usize),
                        _ => {}
                    }
                }
                self.settings_seen = true;
                frame::write_settings_ack(&mut self.out);
                self.flush(deadline)?;
            }
            kind::PING if !hdr.has(flag::ACK) => {
                let mut p = [0u8; 8];
                if self.payload.len() != 8 {
                    return Err(transport("malformed PING"));
                }
                p.copy_from_slice(&self.payload);
                frame::write_ping(&mut self.out, true, p);
                self.flush(deadline)?;
            }
            kind::GOAWAY => {
                self.goaway = true;
                let last = frame::read_u32(&self.payload, 0).unwrap_or(0) & 0x7fff_ffff;
                if id > last {
                    return Err(transport("the collector sent GOAWAY before taking the export"));
                }
            }
            kind::WINDOW_UPDATE => {
                let inc = i64::from(frame::read_u32(&self.payload, 0).unwrap_or(0) & 0x7fff_ffff);
                if hdr.stream_id == 0 {
                    self.conn_send_window += inc;
                } else if hdr.stream_id == id {
                    self.stream_send_window += inc;
                }
            }
            kind::PUSH_PROMISE | kind::CONTINUATION => {
                return Err(transport("unexpected PUSH_PROMISE or CONTINUATION"));
            }
            // PRIORITY, acknowledgements, frames of other streams, unknown types: nothing to do.
            _ => {}
        }
        Ok(())
    }
}

/// A DATA payload without its padding.
fn unpad(hdr: FrameHeader, p: &[u8]) -> Option<&[u8]> {
    if !hdr.has(flag::PADDED) {
        return Some(p);
    }
    let (&pad, rest) = p.split_first()?;
    rest.get(..rest.len().checked_sub(pad as usize)?)
}

/// The header block fragment of a HEADERS payload (without padding and priority fields).
fn header_fragment(hdr: FrameHeader, p: &[u8]) -> Option<&[u8]> {
    let p = unpad(hdr, p)?;
    if hdr.has(flag::PRIORITY) {
        p.get(5..)
    } else {
        Some(p)
    }
}

/// The call's outcome from what came back.
fn reply_result(r: &Reply) -> Result<i64, ExportError> {
    if r.http_status.as_deref() != Some(b"200") {
        let s = r.http_status.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
        return Err(transport(format!("the collector answered HTTP status {s:?}, not gRPC")));
    }
    let code = r
        .grpc_status
        .as_deref()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| transport("the collector's reply has no grpc-status"))?;
    if code != 0 {
        let message = r.grpc_message.as_deref().map(percent_decode).unwrap_or_default();
        return Err(ExportError::Status { code, message });
    }
    // The reply's one message: `[flag, len u32 BE, message]`. A reply without one is taken as
    // a full success.
    let Some(msg) = r.body.get(5..) else { return Ok(0) };
    if r.body.first() != Some(&0) {
        return Ok(0);
    }
    let rejected =
        ExportTraceServiceResponse::decode(msg).ok().and_then(|m| m.partial_success).map_or(0, |p| p.rejected_spans);
    Ok(rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(len: usize, kind: u8, flags: u8) -> FrameHeader {
        FrameHeader { len: len as u32, kind, flags, stream_id: 1 }
    }

    #[test]
    fn padding_and_priority_are_stripped_with_bounds_checks() {
        assert_eq!(unpad(hdr(3, kind::DATA, 0), b"abc"), Some(&b"abc"[..]));
        assert_eq!(unpad(hdr(5, kind::DATA, flag::PADDED), b"\x02abXY"), Some(&b"ab"[..]));
        assert_eq!(unpad(hdr(2, kind::DATA, flag::PADDED), b"\x05a"), None);
        assert_eq!(unpad(hdr(0, kind::DATA, flag::PADDED), b""), None);
        assert_eq!(header_fragment(hdr(7, kind::HEADERS, flag::PRIORITY), b"\0\0\0\x01\x10ab"), Some(&b"ab"[..]));
        assert_eq!(header_fragment(hdr(3, kind::HEADERS, flag::PRIORITY), b"\0\0\0"), None);
    }

    #[test]
    fn reply_outcomes() {
        let ok = |body: Vec<u8>| Reply {
            headers_seen: true,
            http_status: Some(b"200".to_vec()),
            grpc_status: Some(b"0".to_vec()),
            body,
            ended: true,
            ..Default::default()
        };
        assert_eq!(reply_result(&ok(Vec::new())), Ok(0));
        let partial = ExportTraceServiceResponse {
            partial_success: Some(
                metastore_proto::opentelemetry::proto::collector::trace::v1::ExportTracePartialSuccess {
                    rejected_spans: 3,
                    error_message: "no".into(),
                },
            ),
        }
        .encode_to_vec();
        let mut body = vec![0];
        body.extend_from_slice(&(partial.len() as u32).to_be_bytes());
        body.extend_from_slice(&partial);
        assert_eq!(reply_result(&ok(body)), Ok(3));
        let mut failed = ok(Vec::new());
        failed.grpc_status = Some(b"14".to_vec());
        failed.grpc_message = Some(b"down %E2%9C%93".to_vec());
        let e = reply_result(&failed).unwrap_err();
        assert_eq!(e, ExportError::Status { code: 14, message: "down ✓".into() });
        assert!(e.retryable());
        failed.grpc_status = Some(b"3".to_vec());
        assert!(!reply_result(&failed).unwrap_err().retryable());
        let mut not_grpc = ok(Vec::new());
        not_grpc.http_status = Some(b"415".to_vec());
        assert!(matches!(reply_result(&not_grpc), Err(ExportError::Transport(_))));
        not_grpc.http_status = Some(b"200".to_vec());
        not_grpc.grpc_status = None;
        assert!(matches!(reply_result(&not_grpc), Err(ExportError::Transport(_))));
    }

    /// The server side of `GrpcConn` (our own codec) as a collector: records each Export
    /// message and answers it with `status`.
    #[derive(Default)]
    struct Sink {
        got: Vec<Vec<u8>>,
        ready: Vec<u32>,
    }

    impl metastore_net::grpc::Service for Sink {
        fn on_call(
            &mut self,
            _: u32,
            call: &metastore_net::grpc::CallHead<'_>,
        ) -> Result<(), metastore_net::grpc::Status> {
            assert_eq!(format!("/{}/{}", call.service, call.method), EXPORT_PATH);
            assert_eq!(call.headers.get(b"te"), Some(&b"trailers"[..]));
            Ok(())
        }
        fn on_message(&mut self, _: u32, m: &[u8]) -> Result<(), metastore_net::grpc::Status> {
            self.got.push(m.to_vec());
            Ok(())
        }
        fn on_half_close(&mut self, id: u32) {
            self.ready.push(id);
        }
        fn on_cancel(&mut self, _: u32) {}
        fn on_http(&mut self, _: &[u8], _: &[u8]) -> Option<metastore_net::grpc::HttpResponse> {
            None
        }
    }

    /// Serves one connection on `listener`: answers `statuses` in order, then returns what came.
    fn collector(
        listener: std::net::TcpListener,
        statuses: Vec<metastore_net::grpc::Status>,
    ) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
        std::thread::spawn(move || {
            use metastore_net::grpc::{Code, GrpcConn};
            let (mut sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            // Small windows: a large export must wait for our WINDOW_UPDATEs.
            let h2 = metastore_net::h2::Config {
                stream_window_bytes: 16 << 10,
                connection_window_bytes: 65_535,
                ..Default::default()
            };
            let mut conn = GrpcConn::new(metastore_net::grpc::Config { h2, ..Default::default() });
            let mut sink = Sink::default();
            let (mut input, mut chunk, mut out) = (Vec::new(), [0u8; 4096], Vec::new());
            let mut statuses = statuses.into_iter();
            loop {
                conn.h2.take_out(&mut out);
                sock.write_all(&out).unwrap();
                out.clear();
                let n = sock.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    return sink.got;
                }
                input.extend_from_slice(&chunk[..n]);
                let used = conn.recv(&input, &mut sink);
                input.drain(..used);
                for id in std::mem::take(&mut sink.ready) {
                    let Some(status) = statuses.next() else { return sink.got };
                    if status.code == Code::OK {
                        let reply = ExportTraceServiceResponse::default();
                        conn.reply(id, |b| reply.encode(b).unwrap());
                    } else {
                        conn.finish(id, &status);
                    }
                }
            }
        })
    }

    #[test]
    fn exports_wait_for_flow_control_credit_and_reuse_the_connection() {
        use metastore_net::grpc::{Code, Status};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = collector(listener, vec![Status::ok(), Status::ok(), Status::new(Code::UNAVAILABLE, "busy")]);
        let mut c = Client::new(&addr.to_string());
        let deadline = || Instant::now() + Duration::from_secs(20);
        // 200 KB: over the 16 KiB stream and 64 KiB connection windows several times.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(c.export(&big, deadline()), Ok(0));
        assert_eq!(c.export(b"small", deadline()), Ok(0));
        let e = c.export(b"third", deadline()).unwrap_err();
        assert_eq!(e, ExportError::Status { code: 14, message: "busy".into() });
        c.close();
        let got = server.join().unwrap();
        assert_eq!(got, [big, b"small".to_vec(), b"third".to_vec()], "one connection, every byte");
    }

    #[test]
    fn an_absent_collector_is_a_retryable_transport_error() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut c = Client::new(&format!("127.0.0.1:{port}"));
        let e = c.export(b"", Instant::now() + Duration::from_secs(2)).unwrap_err();
        assert!(e.retryable(), "{e}");
        assert!(e.to_string().contains("cannot connect"), "{e}");
    }
}
