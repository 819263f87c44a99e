//! The client's wire: unary gRPC calls over the `h2` crate (not the server's own codec, so a bug
//! shared by both sides cannot hide). One TCP connection per [`connect`], Nagle off, the socket
//! wrapped in [`Coalesce`] so that everything `h2` writes in one turn leaves in one syscall, and
//! receive windows large enough that flow control never throttles a benchmark (the client
//! releases each DATA frame's credit as soon as it has copied it).
//!
//! A call sends HEADERS then the whole length-prefixed message with END_STREAM, reads the
//! response DATA into a reused buffer, and takes `grpc-status` from the trailers (or from the
//! headers of a trailers-only reply). A non-zero status is an error whose text is the code's name
//! and the percent-decoded `grpc-message`, e.g. `UNIMPLEMENTED: unknown service metastore.Bench`.
//!
//! A bidirectional stream ([`open`], for Watch and LeaseKeepAlive) sends HEADERS and leaves the
//! request side open: [`StreamCall::send`] queues one length-prefixed message without ending it
//! (it leaves with the next flush, coalesced with whatever else is written in that turn), and
//! [`StreamCall::message`] returns the next whole response message as it arrives, cut from a
//! reused buffer by a [`Deframer`] (messages may span DATA frames, and a frame may hold several).
//! Ending the stream, by the server or by a failure, is an error ([`CallError::Ended`]): nothing
//! more can come on it.

use std::future::poll_fn;

use bytes::{BufMut, Bytes};
use h2::client::{Connection, ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use http::header::{HeaderValue, CONTENT_TYPE, TE};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use tokio::net::TcpStream;

use crate::coalesce::Coalesce;

/// Each stream's receive window: no response here comes near it.
pub const STREAM_WINDOW_BYTES: u32 = 16 << 20;
/// The connection's receive window, shared by all its streams.
pub const CONN_WINDOW_BYTES: u32 = 256 << 20;
/// A response body larger than this is an error (a runaway range, not a benchmark).
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// The gRPC message prefix: compressed flag, then the length as u32 big-endian.
pub const GRPC_PREFIX_BYTES: usize = 5;

const _: () = assert!(RESPONSE_BYTES_MAX as u64 <= u32::MAX as u64);

pub type Sender = SendRequest<Bytes>;
pub type Conn = Connection<Coalesce<TcpStream>, Bytes>;

/// Opens one HTTP/2 connection (prior knowledge, h2c). The returned [`Conn`] must be polled
/// (spawned) for any call to make progress.
pub async fn connect(authority: &str) -> Result<(Sender, Conn), String> {
    let tcp = TcpStream::connect(authority).await.map_err(|e| format!("connect {authority}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("TCP_NODELAY on {authority}: {e}"))?;
    h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONN_WINDOW_BYTES)
        .enable_push(false)
        .handshake::<_, Bytes>(Coalesce::new(tcp))
        .await
        .map_err(|e| format!("HTTP/2 handshake with {authority}: {e}"))
}

/// The `:scheme`, `:authority` and `:path` of calls to `path` on `authority`.
pub fn uri(authority: &str, path: &str) -> Result<Uri, String> {
    format!("http://{authority}{path}").parse().map_err(|e| format!("bad URI for {authority}{path}: {e}"))
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The server answered with a non-zero `grpc-status` (or a non-200 HTTP status, or an
    /// answer that is not one well-formed gRPC message).
    Status(String),
    /// This stream was reset; the connection still works.
    Stream(String),
    /// The connection failed: no further call on it can succeed.
    Connection(String),
    /// A bidirectional stream ended (the server closed or reset it, with the status given):
    /// nothing more can be sent or received on it, though the connection may still work.
    Ended(String),
}

impl CallError {
    /// The text errors are grouped by in the report.
    pub fn message(&self) -> &str {
        match self {
            CallError::Status(m) | CallError::Stream(m) | CallError::Connection(m) | CallError::Ended(m) => m,
        }
    }

    /// Whether the client that met it cannot go on: its connection or its stream is gone.
    pub fn is_fatal(&self) -> bool {
        matches!(self, CallError::Connection(_) | CallError::Ended(_))
    }

    /// Whether the server answered (an error status is an answer; a reset or a dead connection
    /// is not).
    pub fn answered(&self) -> bool {
        matches!(self, CallError::Status(_))
    }
}

fn h2_error(e: h2::Error) -> CallError {
    if e.is_reset() {
        let reason = e.reason().map_or_else(|| e.to_string(), |r| format!("{r:?}"));
        CallError::Stream(format!("stream reset: {reason}"))
    } else {
        CallError::Connection(format!("connection: {e}"))
    }
}

fn request(uri: &Uri) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri.clone();
    let h = req.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(TE, HeaderValue::from_static("trailers"));
    req
}

/// One unary call: `body` is the whole request, gRPC prefix included. On success `out` holds
/// the response message (prefix stripped by [`message`]).
pub async fn unary(send: &mut Sender, uri: &Uri, body: Bytes, out: &mut Vec<u8>) -> Result<(), CallError> {
    out.clear();
    poll_fn(|cx| send.poll_ready(cx)).await.map_err(|e| CallError::Connection(format!("connection: {e}")))?;
    let (resp, mut tx) =
        send.send_request(request(uri), false).map_err(|e| CallError::Connection(format!("connection: {e}")))?;
    // The server may answer (and reset) before it takes the body: its answer says why.
    let _ = tx.send_data(body, true);
    let resp = resp.await.map_err(h2_error)?;
    if resp.status() != StatusCode::OK {
        return Err(CallError::Status(format!("HTTP {}", resp.status().as_u16())));
    }
    if resp.headers().contains_key("grpc-status") {
        // Trailers-only: the headers are the trailers, and there is no message.
        status(Some(resp.headers()))?;
        return Err(CallError::Status("no response message".into()));
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(h2_error)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if out.len() + chunk.len() > RESPONSE_BYTES_MAX {
            return Err(CallError::Status(format!("response larger than {RESPONSE_BYTES_MAX} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.map_err(h2_error)?;
    status(trailers.as_ref())?;
    check_message(out)
}

/// One bidirectional streaming call (see the module doc).
pub struct StreamCall {
    tx: SendStream<Bytes>,
    /// Until the response headers have come.
    resp: Option<ResponseFuture>,
    body: Option<RecvStream>,
    messages: Deframer,
}

/// Opens a bidirectional stream to `uri`: HEADERS go out with the first message sent. The
/// response headers are awaited by the first [`StreamCall::message`] (a gRPC server may send
/// them only with its first message).
pub async fn open(send: &mut Sender, uri: &Uri) -> Result<StreamCall, CallError> {
    poll_fn(|cx| send.poll_ready(cx)).await.map_err(|e| CallError::Connection(format!("connection: {e}")))?;
    let (resp, tx) =
        send.send_request(request(uri), false).map_err(|e| CallError::Connection(format!("connection: {e}")))?;
    Ok(StreamCall { tx, resp: Some(resp), body: None, messages: Deframer::default() })
}

fn ended(e: h2::Error) -> CallError {
    match h2_error(e) {
        CallError::Stream(m) => CallError::Ended(m),
        other => other,
    }
}

impl StreamCall {
    /// Queues `body` (one or more whole messages, gRPC prefix included) without ending the
    /// request side.
    pub fn send(&mut self, body: Bytes) -> Result<(), CallError> {
        self.tx.send_data(body, false).map_err(ended)
    }

    /// Ends the request side (END_STREAM) and waits for the server to end the stream, reading
    /// and dropping any message still on the way: a graceful close, not a reset (a server counts
    /// streams reset by the client against a rapid-reset budget). Returns how it ended.
    pub async fn finish(&mut self) -> CallError {
        if let Err(e) = self.tx.send_data(Bytes::new(), true) {
            return ended(e);
        }
        loop {
            if let Err(e) = self.message().await {
                return e;
            }
        }
    }

    /// The next response message (prefix stripped), as soon as it has wholly arrived.
    pub async fn message(&mut self) -> Result<&[u8], CallError> {
        if let Some(resp) = self.resp.take() {
            let resp = resp.await.map_err(ended)?;
            if resp.status() != StatusCode::OK {
                return Err(CallError::Ended(format!("HTTP {}", resp.status().as_u16())));
            }
            if resp.headers().contains_key("grpc-status") {
                // Trailers-only: the stream is over before any message.
                return Err(CallError::Ended(stream_status(Some(resp.headers()))));
            }
            self.body = Some(resp.into_body());
        }
        let Some(body) = self.body.as_mut() else {
            return Err(CallError::Ended("stream ended".into()));
        };
        loop {
            if let Some(len) = self.messages.next_len()? {
                return Ok(self.messages.take(len));
            }
            match body.data().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(ended)?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.messages.push(&chunk);
                }
                None => {
                    let trailers = body.trailers().await.map_err(ended)?;
                    self.body = None;
                    let mut why = stream_status(trailers.as_ref());
                    if self.messages.buffered() > 0 {
                        why = format!("{why} (inside a message)");
                    }
                    return Err(CallError::Ended(why));
                }
            }
        }
    }
}

/// How a stream's trailers ended it: `stream ended: OK`, or the error status.
fn stream_status(trailers: Option<&HeaderMap>) -> String {
    match status(trailers) {
        Ok(()) => "stream ended by the server: OK".into(),
        Err(e) => format!("stream ended by the server: {}", e.message()),
    }
}

/// Cuts length-prefixed gRPC messages out of the DATA received on a stream. Bytes are copied
/// once into a buffer that is reused (compacted in place) for the life of the stream.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
    /// Where the next message starts in `buf`.
    at: usize,
}

impl Deframer {
    /// Appends received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > 0 && self.at >= self.buf.len() / 2 {
            self.buf.copy_within(self.at.., 0);
            self.buf.truncate(self.buf.len() - self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes received and not yet taken (a partial message, or whole ones not taken).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.at
    }

    /// The length (prefix included) of the next message if it has wholly arrived; an error for
    /// a compressed or oversized one.
    pub fn next_len(&self) -> Result<Option<usize>, CallError> {
        let rest = &self.buf[self.at..];
        let Some(prefix) = rest.get(..GRPC_PREFIX_BYTES) else { return Ok(None) };
        if prefix[0] != 0 {
            return Err(CallError::Ended("compressed response message".into()));
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > RESPONSE_BYTES_MAX {
            return Err(CallError::Ended(format!("response message of {len} bytes")));
        }
        Ok((rest.len() >= GRPC_PREFIX_BYTES + len).then_some(GRPC_PREFIX_BYTES + len))
    }

    /// Takes the next message, `len` as [`Deframer::next_len`] gave it; returns it without
    /// its prefix.
    pub fn take(&mut self, len: usize) -> &[u8] {
        let from = self.at;
        self.at += len;
        &self.buf[from + GRPC_PREFIX_BYTES..from + len]
    }

    /// The next whole message without its prefix, if there is one.
    #[cfg(test)]
    pub fn next(&mut self) -> Result<Option<&[u8]>, CallError> {
        Ok(match self.next_len()? {
            Some(len) => Some(self.take(len)),
            None => None,
        })
    }
}

/// The message of a response that [`unary`] accepted.
pub fn message(out: &[u8]) -> &[u8] {
    out.get(GRPC_PREFIX_BYTES..).unwrap_or_default()
}

/// Exactly one uncompressed message.
fn check_message(out: &[u8]) -> Result<(), CallError> {
    let Some(prefix) = out.get(..GRPC_PREFIX_BYTES) else {
        return Err(CallError::Status("no response message".into()));
    };
    if prefix[0] != 0 {
        return Err(CallError::Status("compressed response message".into()));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if out.len() != GRPC_PREFIX_BYTES + len {
        return Err(CallError::Status(format!(
            "response body of {} bytes is not one message of {len}",
            out.len() - GRPC_PREFIX_BYTES
        )));
    }
    Ok(())
}

/// `Ok` for `grpc-status: 0`; the status as an error otherwise (missing trailers included).
fn status(trailers: Option<&HeaderMap>) -> Result<(), CallError> {
    let Some(t) = trailers else {
        return Err(CallError::Status("no trailers (grpc-status missing)".into()));
    };
    let Some(code) = t.get("grpc-status") else {
        return Err(CallError::Status("grpc-status missing from the trailers".into()));
    };
    let Some(code) = code.to_str().ok().and_then(|c| c.parse::<u32>().ok()) else {
        return Err(CallError::Status(format!("bad grpc-status {code:?}")));
    };
    if code == 0 {
        return Ok(());
    }
    let msg = t.get("grpc-message").map(|m| percent_decode(m.as_bytes())).unwrap_or_default();
    Err(CallError::Status(if msg.is_empty() {
        code_name(code).to_string()
    } else {
        format!("{}: {msg}", code_name(code))
    }))
}

/// gRPC status codes by name, as grpc-go and the spec spell them.
pub fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN_CODE")
}

/// `grpc-message` is percent-encoded (the gRPC HTTP/2 spec); a `%` not followed by two hex
/// digits is kept as it is.
pub fn percent_decode(s: &[u8]) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if let (Some(h), Some(l)) = (s.get(i + 1).copied().and_then(hex), s.get(i + 2).copied().and_then(hex)) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends `msg` to `buf` with its gRPC prefix.
pub fn frame(buf: &mut impl BufMut, msg: &impl prost::Message) {
    let len = msg.encoded_len();
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // Vec and BytesMut grow as needed: encoding into them cannot fail.
    let _ = msg.encode(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn statuses_become_named_errors() {
        assert_eq!(status(Some(&trailers(&[("grpc-status", "0")]))), Ok(()));
        assert_eq!(
            status(Some(&trailers(&[("grpc-status", "12"), ("grpc-message", "unknown%20service metastore.Bench")]))),
            Err(CallError::Status("UNIMPLEMENTED: unknown service metastore.Bench".into()))
        );
        assert_eq!(status(Some(&trailers(&[("grpc-status", "14")]))), Err(CallError::Status("UNAVAILABLE".into())));
        assert_eq!(status(Some(&trailers(&[("grpc-status", "99")]))), Err(CallError::Status("UNKNOWN_CODE".into())));
        assert!(status(Some(&trailers(&[("grpc-status", "x")]))).is_err());
        assert!(status(Some(&trailers(&[]))).is_err());
        assert!(status(None).is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"plain"), "plain");
        assert_eq!(percent_decode(b"a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode(b"%E2%82%AC"), "€");
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%zz%4"), "%zz%4");
    }

    #[test]
    fn messages_are_framed_and_checked() {
        let req = metastore_proto::etcdserverpb::RangeRequest { key: b"k".to_vec(), ..Default::default() };
        let mut buf = Vec::new();
        frame(&mut buf, &req);
        assert_eq!(buf, [0, 0, 0, 0, 3, 0x0a, 1, b'k']);
        assert_eq!(check_message(&buf), Ok(()));
        assert_eq!(message(&buf), &[0x0a, 1, b'k']);
        assert!(check_message(&buf[..7]).is_err());
        assert!(check_message(&[0, 0, 0]).is_err());
        assert!(check_message(&[1, 0, 0, 0, 0]).is_err());
        assert_eq!(check_message(&[0, 0, 0, 0, 0]), Ok(()));
        assert_eq!(message(&[]), &[] as &[u8]);
    }

    #[test]
    fn deframer_cuts_messages_across_and_within_chunks() {
        let mut wire = Vec::new();
        let msgs: Vec<Vec<u8>> = vec![vec![], b"a".to_vec(), vec![7; 300], b"xyz".to_vec()];
        for m in &msgs {
            wire.push(0);
            wire.extend_from_slice(&(m.len() as u32).to_be_bytes());
            wire.extend_from_slice(m);
        }
        // Every way of cutting the wire into two or three chunks gives the same messages.
        for cut1 in 0..=wire.len() {
            for cut2 in [cut1, (cut1 + 4).min(wire.len()), wire.len()] {
                let mut d = Deframer::default();
                let mut got = Vec::new();
                for chunk in [&wire[..cut1], &wire[cut1..cut2], &wire[cut2..]] {
                    d.push(chunk);
                    while let Some(m) = d.next().unwrap() {
                        got.push(m.to_vec());
                    }
                }
                assert_eq!(got, msgs, "cut at {cut1} and {cut2}");
                assert_eq!(d.buffered(), 0);
            }
        }
        // A partial message waits; the buffer is reused.
        let mut d = Deframer::default();
        d.push(&[0, 0, 0, 0, 2, b'h']);
        assert_eq!(d.next(), Ok(None));
        assert_eq!(d.buffered(), 6);
        d.push(b"i");
        assert_eq!(d.next(), Ok(Some(&b"hi"[..])));
        d.push(&[0, 0, 0]);
        assert_eq!(d.next(), Ok(None));
        assert_eq!(d.buffered(), 3);
        // Compressed and oversized messages end the stream.
        let mut d = Deframer::default();
        d.push(&[1, 0, 0, 0, 0]);
        assert!(matches!(d.next(), Err(CallError::Ended(m)) if m.contains("compressed")));
        let mut d = Deframer::default();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next(), Err(CallError::Ended(m)) if m.contains("bytes")));
    }

    #[test]
    fn stream_status_names_the_end() {
        assert_eq!(stream_status(Some(&trailers(&[("grpc-status", "0")]))), "stream ended by the server: OK");
        assert_eq!(
            stream_status(Some(&trailers(&[("grpc-status", "14"), ("grpc-message", "shutting%20down")]))),
            "stream ended by the server: UNAVAILABLE: shutting down"
        );
    }

    #[test]
    fn error_kinds() {
        assert!(CallError::Status("x".into()).answered());
        assert!(!CallError::Stream("x".into()).answered());
        assert!(CallError::Connection("x".into()).is_fatal());
        assert!(!CallError::Stream("x".into()).is_fatal());
        assert!(CallError::Ended("x".into()).is_fatal() && !CallError::Ended("x".into()).answered());
        assert_eq!(code_name(12), "UNIMPLEMENTED");
        assert!(uri("127.0.0.1:2379", "/etcdserverpb.KV/Put").is_ok());
    }
}
