//! A raw HTTP/2 peer over a blocking socket, for sending what well-behaved clients never send.
//! Frames are built by hand; responses are parsed just enough to check codes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use metastore_net::frame::{self, kind, ErrorCode, FrameHeader, PREFACE};
use metastore_net::hpack;

pub struct RawFrame {
    pub hdr: FrameHeader,
    pub payload: Vec<u8>,
}

pub struct RawConn {
    pub sock: TcpStream,
    enc: hpack::Encoder,
    pub dec: hpack::Decoder,
    buf: Vec<u8>,
}

/// What the server ended a connection or stream with.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    GoAway(ErrorCode),
    Rst(u32, ErrorCode),
    /// EOF or reset without a GOAWAY.
    Closed,
    /// Nothing within the time limit.
    Silent,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> Self {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_nodelay(true).unwrap();
        RawConn { sock, enc: hpack::Encoder::new(), dec: hpack::Decoder::new(4096), buf: Vec::new() }
    }

    /// Connects and does the preface + SETTINGS exchange.
    pub fn handshake(addr: SocketAddr) -> Self {
        let mut c = Self::connect(addr);
        let mut b = PREFACE.to_vec();
        frame::write_settings(&mut b, &[]);
        c.send(&b);
        c
    }

    pub fn send(&mut self, b: &[u8]) {
        // The server may already have closed; that is for the caller's checks to see.
        let _ = self.sock.write_all(b);
    }

    pub fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        self.enc.begin_block(&mut b);
        for (n, v) in fields {
            self.enc.encode_field(n.as_bytes(), v.as_bytes(), hpack::Indexing::Incremental, &mut b);
        }
        b
    }

    /// HEADERS for a gRPC call to `path`.
    pub fn grpc_call(&mut self, id: u32, path: &str, end_stream: bool) {
        let fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        let block = self.block(&fields);
        let mut b = Vec::new();
        let flags = frame::flag::END_HEADERS | if end_stream { frame::flag::END_STREAM } else { 0 };
        frame::write_header(&mut b, block.len(), kind::HEADERS, flags, id);
        b.extend_from_slice(&block);
        self.send(&b);
    }

    pub fn data(&mut self, id: u32, payload: &[u8], end_stream: bool) {
        let mut b = Vec::new();
        frame::write_data(&mut b, id, payload, end_stream, 16_384);
        self.send(&b);
    }

    /// A grpc message (5-byte prefix + body).
    pub fn grpc_message(body: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Reads the next frame, or None on EOF/timeout.
    pub fn next_frame(&mut self, timeout: Duration) -> Option<RawFrame> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 9 {
                let hdr = FrameHeader::parse(self.buf[..9].try_into().unwrap());
                let end = 9 + hdr.len as usize;
                if self.buf.len() >= end {
                    let payload = self.buf[9..end].to_vec();
                    self.buf.drain(..end);
                    return Some(RawFrame { hdr, payload });
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            let mut tmp = [0u8; 65_536];
            match self.sock.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Reads until the server ends the stream `id` or the connection.
    pub fn ending(&mut self, id: u32, timeout: Duration) -> Ending {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Ending::Silent;
            };
            let Some(f) = self.next_frame(left) else {
                return if Instant::now() >= deadline { Ending::Silent } else { Ending::Closed };
            };
            match f.hdr.kind {
                kind::GOAWAY => return Ending::GoAway(ErrorCode(frame::read_u32(&f.payload, 4).unwrap())),
                kind::RST_STREAM if f.hdr.stream_id == id => {
                    return Ending::Rst(id, ErrorCode(frame::read_u32(&f.payload, 0).unwrap()))
                }
                kind::HEADERS => {
                    let _ = self.dec.decode(&f.payload, |_, _| {});
                }
                _ => {}
            }
        }
    }

    /// Reads frames until the HEADERS with END_STREAM on `id`; returns its decoded fields.
    pub fn trailers(&mut self, id: u32, timeout: Duration) -> Option<Vec<(String, String)>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let f = self.next_frame(left)?;
            if f.hdr.kind == kind::HEADERS {
                let mut fields = Vec::new();
                self.dec
                    .decode(&f.payload, |n, v| {
                        fields.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
                    })
                    .unwrap();
                if f.hdr.stream_id == id && f.hdr.has(frame::flag::END_STREAM) {
                    return Some(fields);
                }
            }
        }
    }
}
