//! A minimal unary gRPC client over the `h2` crate (an HTTP/2 implementation we did not write),
//! with prost for the messages: one connection, one call at a time. Talks to any gRPC server —
//! MetaStore or a real etcd — so that tests can send both the same bytes and compare what comes
//! back. A failed connect panics; a call that fails below gRPC answers [`NOT_GRPC`].
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Request};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A call that takes longer than this is a hang: the test fails instead of blocking CI.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Not a gRPC status code: the call failed below gRPC (see [`Client::unary`]).
pub const NOT_GRPC: u32 = 1000;

/// One HTTP/2 connection to a gRPC server. Must be used inside a tokio runtime.
pub struct Client {
    addr: SocketAddr,
    send: SendRequest<Bytes>,
    task: JoinHandle<Result<(), h2::Error>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        tcp.set_nodelay(true).unwrap();
        // Large windows: multi-megabyte responses need no window round trips.
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(1 << 20)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap_or_else(|e| panic!("HTTP/2 handshake with {addr}: {e}"));
        Client { addr, send, task: tokio::spawn(conn) }
    }

    /// A unary call: `Ok(response message)` on grpc-status 0, else `Err((code, message))`
    /// with the message percent-decoded as the gRPC spec says. A call that fails below gRPC (the
    /// connection or stream broke, the reply is not a well-formed gRPC reply, or no answer within
    /// a minute) is `Err((NOT_GRPC, what happened))`, so that a caller comparing two servers
    /// reports it like any other difference.
    pub async fn unary(&mut self, path: &str, req: &impl prost::Message) -> Result<Vec<u8>, (u32, String)> {
        self.unary_raw(path, &req.encode_to_vec()).await
    }

    /// As [`Client::unary`], for an already encoded request message.
    pub async fn unary_raw(&mut self, path: &str, message: &[u8]) -> Result<Vec<u8>, (u32, String)> {
        self.unary_with(path, message, &[]).await
    }

    /// As [`Client::unary_raw`], with extra request headers (e.g. `grpc-timeout`).
    pub async fn unary_with(
        &mut self,
        path: &str,
        message: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<Vec<u8>, (u32, String)> {
        let addr = self.addr;
        match tokio::time::timeout(CALL_TIMEOUT, self.call(path, message, headers)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => Err((NOT_GRPC, format!("{path} to {addr}: {e}"))),
            Err(_) => Err((NOT_GRPC, format!("{path} to {addr}: no answer within {CALL_TIMEOUT:?}"))),
        }
    }

    fn request(&self, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap()
    }

    async fn call(&mut self, path: &str, message: &[u8], headers: &[(&str, &str)]) -> CallResult {
        let req = self.request(path, headers);
        let mut send = self.send.clone().ready().await.map_err(|e| format!("connection not ready: {e}"))?;
        let (resp, mut tx) = send.send_request(req, false).map_err(|e| format!("send_request: {e}"))?;
        let mut body = Vec::with_capacity(5 + message.len());
        body.push(0);
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        // A server may answer (and reset the stream) before it has read the whole request, as
        // grpc-go does for errors: a failed send is not the result; the answer is.
        let _ = tx.send_data(Bytes::from(body), true);
        let resp = resp.await.map_err(|e| format!("response head: {e}"))?;
        let (parts, mut rx) = resp.into_parts();
        if parts.status.as_u16() != 200 {
            return Err(format!("HTTP status {}", parts.status));
        }
        let trailers_only = rx.is_end_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = rx.data().await {
            let chunk = chunk.map_err(|e| format!("response body: {e}"))?;
            let _ = rx.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
        }
        let trailers = if trailers_only { None } else { rx.trailers().await.map_err(|e| format!("trailers: {e}"))? };
        let status_map: &HeaderMap = match &trailers {
            Some(t) => t,
            None => &parts.headers,
        };
        let (code, msg) = status_of(status_map).ok_or("no grpc-status in the reply")?;
        if code != 0 {
            return Ok(Err((code, msg)));
        }
        let mut messages = split_messages(&buf)?;
        if messages.len() != 1 {
            return Err(format!("a unary reply with {} messages", messages.len()));
        }
        Ok(Ok(messages.pop().unwrap()))
    }

    /// Closes the connection and waits for it to end.
    pub async fn close(self) {
        drop(self.send);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    /// Sends a unary request and returns without waiting for the answer: the call stays open
    /// while the returned handle lives (dropping it resets the stream).
    pub async fn start(&mut self, path: &str, message: &[u8], headers: &[(&str, &str)]) -> Stream {
        let mut s = self.stream_with(path, headers).await;
        s.send(message);
        let _ = s.tx.send_data(Bytes::new(), true);
        s
    }

    /// Drops the TCP connection at once, as a client that dies does: no GOAWAY, no RST_STREAM.
    pub fn cut(self) {
        self.task.abort();
    }

    /// Opens a streaming call (e.g. Watch): messages go out with [`Stream::send`]; answers are
    /// read in order with [`Stream::next`].
    pub async fn stream(&mut self, path: &str) -> Stream {
        self.stream_with(path, &[]).await
    }

    async fn stream_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Stream {
        let req = self.request(path, headers);
        let mut send = self.send.clone().ready().await.expect("connection not ready");
        let (resp, tx) = send.send_request(req, false).expect("send_request");
        Stream { tx, resp: Some(Box::pin(resp)), rx: None, headers: None, buf: Vec::new(), status: None }
    }
}

type CallResult = Result<Result<Vec<u8>, (u32, String)>, String>;

/// One open streaming call.
pub struct Stream {
    tx: h2::SendStream<Bytes>,
    resp: Option<std::pin::Pin<Box<h2::client::ResponseFuture>>>,
    rx: Option<h2::RecvStream>,
    headers: Option<HeaderMap>,
    buf: Vec<u8>,
    /// The call's status once it ended (`NOT_GRPC` if it broke below gRPC).
    pub status: Option<(u32, String)>,
}

impl Stream {
    /// Sends one message (5-byte prefix added).
    pub fn send(&mut self, message: &[u8]) {
        let mut body = Vec::with_capacity(5 + message.len());
        body.push(0);
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        let _ = self.tx.send_data(Bytes::from(body), false);
    }

    /// The next message, or None if none came within `wait` or the call ended (then `status`
    /// says how). Cancel-safe: a message partly received stays for the next call.
    pub async fn next(&mut self, wait: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(wait, self.next_inner()).await.ok().flatten()
    }

    async fn next_inner(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(m) = take_message(&mut self.buf) {
                return Some(m);
            }
            if self.status.is_some() {
                return None;
            }
            if let Some(resp) = self.resp.as_mut() {
                let r = resp.as_mut().await;
                self.resp = None;
                match r {
                    Ok(r) => {
                        let (parts, body) = r.into_parts();
                        if body.is_end_stream() {
                            self.status = Some(status_of(&parts.headers).unwrap_or((NOT_GRPC, "no status".into())));
                            return None;
                        }
                        self.headers = Some(parts.headers);
                        self.rx = Some(body);
                    }
                    Err(e) => {
                        self.status = Some((NOT_GRPC, format!("response head: {e}")));
                        return None;
                    }
                }
            }
            let rx = self.rx.as_mut()?;
            match rx.data().await {
                Some(Ok(chunk)) => {
                    let _ = rx.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    self.status = Some((NOT_GRPC, format!("response body: {e}")));
                    return None;
                }
                None => {
                    let t = rx.trailers().await.ok().flatten();
                    self.status = Some(t.as_ref().and_then(status_of).unwrap_or((NOT_GRPC, "no trailers".into())));
                    return None;
                }
            }
        }
    }
}

/// Takes the first whole length-prefixed message off `buf`, if there is one.
fn take_message(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    let m = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Some(m)
}

fn status_of(map: &HeaderMap) -> Option<(u32, String)> {
    let code = map.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let msg = map.get("grpc-message").map(|v| percent_decode(v.as_bytes())).unwrap_or_default();
    Some((code, msg))
}

/// grpc-message is percent-encoded (`%XX` for bytes outside printable ASCII and for `%`).
fn percent_decode(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let hex = v.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        if let (b'%', Some(b)) = (v[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            out.push(b);
            i += 3;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a body into its length-prefixed gRPC messages.
fn split_messages(mut buf: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < 5 {
            return Err(format!("the body ends inside a message prefix: {buf:?}"));
        }
        if buf[0] != 0 {
            return Err("a compressed message, never asked for".into());
        }
        let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
        if buf.len() < 5 + len {
            return Err(format!("the body ends inside a message ({} of {len} bytes)", buf.len() - 5));
        }
        out.push(buf[5..5 + len].to_vec());
        buf = &buf[5 + len..];
    }
    Ok(out)
}
