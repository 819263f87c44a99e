//! A small HTTP/1.1 server codec for the plain endpoints served on the client port (health,
//! metrics, version): request heads in, responses out. Bodies of requests are skipped.

/// Longest request head accepted; etcd's endpoints take no large headers.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 << 10;
/// Largest request body skipped; anything bigger closes the connection.
pub const REQUEST_BODY_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
    /// From content-length; the caller skips this many bytes after the head.
    pub body_len: usize,
    /// `Connection: close`, or HTTP/1.0 without keep-alive.
    pub close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Not an HTTP/1.x request line, or a bad header.
    BadRequest,
    /// The head or body is over its limit.
    TooLarge,
}

/// Parses one request head. `Ok(None)` means more bytes are needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request<'_>>, Error> {
    let Some(end) = find_head_end(buf) else {
        return if buf.len() > REQUEST_HEAD_BYTES_MAX { Err(Error::TooLarge) } else { Ok(None) };
    };
    if end > REQUEST_HEAD_BYTES_MAX {
        return Err(Error::TooLarge);
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| Error::BadRequest)?;
    let mut lines = head.split("\r\n");
    let line = lines.next().ok_or(Error::BadRequest)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::BadRequest);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || !path.starts_with('/') {
        return Err(Error::BadRequest);
    }
    let mut close = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(Error::BadRequest),
    };
    let mut body_len = 0usize;
    for l in lines.filter(|l| !l.is_empty()) {
        let (name, value) = l.split_once(':').ok_or(Error::BadRequest)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().map_err(|_| Error::BadRequest)?;
            if body_len > REQUEST_BODY_BYTES_MAX {
                return Err(Error::TooLarge);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked request bodies are not needed by any endpoint here.
            return Err(Error::BadRequest);
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                close = true;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        }
    }
    Ok(Some(Request { method, path, head_len: end + 4, body_len, close }))
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends a complete response.
pub fn write_response(dst: &mut Vec<u8>, status: u16, content_type: &str, body: &[u8], close: bool) {
    use std::io::Write;
    let _ = write!(
        dst,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
        reason(status),
        body.len(),
        if close { "Connection: close\r\n" } else { "" },
    );
    dst.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_get() {
        let r = parse_request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nrest").unwrap().unwrap();
        assert_eq!((r.method, r.path, r.body_len, r.close), ("GET", "/health", 0, false));
        assert_eq!(r.head_len, 33);
    }

    #[test]
    fn incomplete_bad_and_large() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost"), Ok(None));
        assert_eq!(parse_request(b"get / HTTP/1.1\r\n\r\n"), Err(Error::BadRequest));
        assert_eq!(parse_request(b"GET / HTTP/2\r\n\r\n"), Err(Error::BadRequest));
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), Err(Error::BadRequest));
        assert_eq!(parse_request(&vec![b'a'; REQUEST_HEAD_BYTES_MAX + 1]), Err(Error::TooLarge));
        let r = parse_request(b"POST /x HTTP/1.0\r\ncontent-length: 3\r\n\r\nabc").unwrap().unwrap();
        assert_eq!((r.body_len, r.close), (3, true));
    }

    #[test]
    fn response_format() {
        let mut b = Vec::new();
        write_response(&mut b, 404, "text/plain; charset=utf-8", b"404 page not found\n", true);
        let s = String::from_utf8(b).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(s.contains("Content-Length: 19\r\n"));
        assert!(s.ends_with("\r\n\r\n404 page not found\n"));
    }
}
