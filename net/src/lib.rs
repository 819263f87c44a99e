//! IO-free codecs for the wire: HTTP/2 (RFC 9113), HPACK (RFC 7541), gRPC framing, and a small
//! HTTP/1.1. Bytes go in, events come out; responses go in, bytes come out. Nothing here reads a
//! socket or a clock: time is passed in by the caller, which keeps every codec fuzzable.

pub mod frame;
pub mod grpc;
pub mod h2;
pub mod hpack;
pub mod http1;

/// What a new connection speaks, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 with prior knowledge: the connection preface.
    Http2,
    /// Anything else is treated as HTTP/1.x (health, metrics and version endpoints).
    Http1,
}

/// Decides the protocol once enough bytes are in; None while the first bytes still match the
/// HTTP/2 preface.
pub fn sniff(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(frame::PREFACE.len());
    if first[..n] != frame::PREFACE[..n] {
        return Some(Protocol::Http1);
    }
    (n == frame::PREFACE.len()).then_some(Protocol::Http2)
}
