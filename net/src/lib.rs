//! IO-free codecs for the wire: HTTP/2 (RFC 9113), HPACK (RFC 7541), gRPC framing, and a small
//! HTTP/1.1. Bytes go in, events come out; responses go in, bytes come out. Nothing here reads a
//! socket or a clock: time is passed in by the caller, which keeps every codec fuzzable.

pub mod frame;
pub mod grpc;
pub mod h2;
pub mod hpack;
pub mod http1;
pub mod limit;

/// Bytes we look at to find an HTTP/1.x request line before deciding it is not one.
pub const SNIFF_BYTES_MAX: usize = 8 << 10;

/// What a new connection speaks, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 with prior knowledge: the connection preface.
    Http2,
    /// An HTTP/1.x request line (health, metrics and version endpoints).
    Http1,
}

/// Decides the protocol once enough bytes are in (None: need more). A connection that starts
/// with an HTTP/1.x request line is HTTP/1; anything else is HTTP/2, where a wrong preface is
/// answered with GOAWAY(PROTOCOL_ERROR) as RFC 9113 §3.4 asks.
pub fn sniff(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(frame::PREFACE.len());
    if first[..n] == frame::PREFACE[..n] {
        return (n == frame::PREFACE.len()).then_some(Protocol::Http2);
    }
    let Some(eol) = first.windows(2).position(|w| w == b"\r\n") else {
        return (first.len() > SNIFF_BYTES_MAX).then_some(Protocol::Http2);
    };
    let line = &first[..eol];
    let mut parts = line.split(|&b| b == b' ');
    let http1 = matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(m), Some(_), Some(b"HTTP/1.1" | b"HTTP/1.0"), None)
            if !m.is_empty() && m.iter().all(u8::is_ascii_uppercase)
    );
    Some(if http1 { Protocol::Http1 } else { Protocol::Http2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"PRI * HTTP/2.0"), None);
        assert_eq!(sniff(frame::PREFACE), Some(Protocol::Http2));
        assert_eq!(sniff(b"GET /health HTTP/1.1\r\nHost: x\r\n"), Some(Protocol::Http1));
        assert_eq!(sniff(b"GET /health HT"), None);
        assert_eq!(sniff(b"INVALID CONNECTION PREFACE\r\n\r\n"), Some(Protocol::Http2));
        assert_eq!(sniff(&[b'x'; SNIFF_BYTES_MAX + 1]), Some(Protocol::Http2));
    }
}
