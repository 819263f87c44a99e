//! Both ends of the wire, from the client's side: building the frames a client sends, and
//! checking the frames the server writes back.

use std::collections::{HashMap, HashSet};

use metastore_net::frame::{self, flag, kind, setting, FRAME_HEADER_LEN, PREFACE};
use metastore_net::hpack::{Decoder, Encoder};

/// A decoded header list, owned.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The 9-byte header's length field.
pub fn frame_len(hdr: &[u8]) -> usize {
    match hdr {
        [a, b, c, ..] => usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c),
        _ => 0,
    }
}

/// Appends one frame with an arbitrary payload.
pub fn raw_frame(dst: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    frame::write_header(dst, payload.len(), kind, flags, stream_id);
    dst.extend_from_slice(payload);
}

/// Encodes a header block with `enc` (which keeps the dynamic table across blocks, as a real
/// client's does).
pub fn header_block(enc: &mut Encoder, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    enc.encode(fields.iter().copied(), &mut block);
    block
}

/// HEADERS (+ CONTINUATION when the block exceeds `max_frame`).
pub fn headers(dst: &mut Vec<u8>, id: u32, block: &[u8], end_stream: bool, max_frame: usize) {
    frame::write_header_block(dst, id, block, end_stream, max_frame);
}

/// One DATA frame, whatever its size.
pub fn data(dst: &mut Vec<u8>, id: u32, payload: &[u8], end_stream: bool) {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    raw_frame(dst, kind::DATA, flags, id, payload);
}

/// What the client sent so far, as far as it bounds what the server may send back: the
/// flow-control credit it granted, the frame size and HPACK table size it allowed. Fed with the
/// bytes the server consumed (the preface first); after a connection error the server consumes
/// garbage too, which can only loosen these bounds, never tighten them.
#[derive(Debug)]
pub struct ClientModel {
    buf: Vec<u8>,
    preface_left: usize,
    /// 65535 plus every connection WINDOW_UPDATE increment.
    pub conn_credit: u64,
    /// Stream WINDOW_UPDATE increments, per stream.
    stream_increments: HashMap<u32, u64>,
    /// The largest SETTINGS_INITIAL_WINDOW_SIZE in force at any time.
    pub initial_window_max: u64,
    /// The largest SETTINGS_MAX_FRAME_SIZE in force at any time.
    pub frame_max: usize,
    /// Per SETTINGS frame the server processed (and so must acknowledge, in order): the last
    /// SETTINGS_HEADER_TABLE_SIZE in it. The server's encoder must respect a new value from the
    /// first header block after the ACK on (RFC 7541 §4.2, RFC 9113 §6.5.3).
    pub settings_table_sizes: Vec<Option<usize>>,
}

impl Default for ClientModel {
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            preface_left: PREFACE.len(),
            conn_credit: u64::from(frame::WINDOW_SIZE_DEFAULT),
            stream_increments: HashMap::new(),
            initial_window_max: u64::from(frame::WINDOW_SIZE_DEFAULT),
            frame_max: frame::FRAME_SIZE_DEFAULT as usize,
            settings_table_sizes: Vec::new(),
        }
    }
}

impl ClientModel {
    pub fn feed(&mut self, consumed: &[u8]) {
        let skip = self.preface_left.min(consumed.len());
        self.preface_left -= skip;
        self.buf.extend_from_slice(&consumed[skip..]);
        let mut pos = 0;
        while let Some(hdr) = self.buf.get(pos..pos + FRAME_HEADER_LEN) {
            let len = frame_len(hdr);
            let (kind, flags) = (hdr[3], hdr[4]);
            let id = frame::read_u32(hdr, 5).unwrap_or(0) & 0x7fff_ffff;
            let start = pos + FRAME_HEADER_LEN;
            let Some(payload) = self.buf.get(start..start + len) else {
                break;
            };
            match kind {
                kind::WINDOW_UPDATE if payload.len() == 4 => {
                    let inc = u64::from(frame::read_u32(payload, 0).unwrap_or(0) & 0x7fff_ffff);
                    if id == 0 {
                        self.conn_credit += inc;
                    } else {
                        *self.stream_increments.entry(id).or_default() += inc;
                    }
                }
                kind::SETTINGS if id == 0 && flags & flag::ACK == 0 && len.is_multiple_of(6) => {
                    let mut table_size = None;
                    for e in payload.chunks_exact(6) {
                        let key = u16::from_be_bytes([e[0], e[1]]);
                        let v = frame::read_u32(e, 2).unwrap_or(0);
                        match key {
                            setting::INITIAL_WINDOW_SIZE if i64::from(v) <= frame::WINDOW_SIZE_MAX => {
                                self.initial_window_max = self.initial_window_max.max(v.into());
                            }
                            setting::MAX_FRAME_SIZE
                                if (frame::FRAME_SIZE_DEFAULT..=frame::FRAME_SIZE_LIMIT_MAX).contains(&v) =>
                            {
                                self.frame_max = self.frame_max.max(v as usize);
                            }
                            setting::HEADER_TABLE_SIZE => table_size = Some(v as usize),
                            _ => {}
                        }
                    }
                    self.settings_table_sizes.push(table_size);
                }
                _ => {}
            }
            pos = start + len;
        }
        self.buf.drain(..pos);
    }

    pub fn stream_credit(&self, id: u32) -> u64 {
        self.initial_window_max + self.stream_increments.get(&id).copied().unwrap_or(0)
    }
}

/// The client's view of the server's output: every frame must be well formed, header blocks
/// must be contiguous and decode with a fresh client-side HPACK decoder, DATA must respect the
/// credit the client granted, nothing may follow END_STREAM on a stream nor a closing GOAWAY.
#[derive(Debug)]
pub struct Peer {
    buf: Vec<u8>,
    decoder: Decoder,
    block: Option<(u32, bool, Vec<u8>)>,
    conn_data: u64,
    stream_data: HashMap<u32, u64>,
    headers_seen: HashSet<u32>,
    ended: HashSet<u32>,
    closed: bool,
    /// SETTINGS ACKs received.
    acks: usize,
    /// Decoded header blocks per stream, when asked for.
    pub blocks: Option<HashMap<u32, Vec<Fields>>>,
    /// The last GOAWAY's error code.
    pub goaway: Option<u32>,
    /// RST_STREAM frames received: (stream, code).
    pub resets: Vec<(u32, u32)>,
}

impl Peer {
    pub fn new(keep_blocks: bool) -> Self {
        let mut decoder = Decoder::new(4096);
        decoder.set_max_header_list_size(usize::MAX);
        Self {
            buf: Vec::new(),
            decoder,
            block: None,
            conn_data: 0,
            stream_data: HashMap::new(),
            headers_seen: HashSet::new(),
            ended: HashSet::new(),
            closed: false,
            acks: 0,
            blocks: keep_blocks.then(HashMap::new),
            goaway: None,
            resets: Vec::new(),
        }
    }

    /// Checks a batch of server output. `model` is what the server had consumed when it wrote
    /// it. The server only writes whole frames, so a batch never ends mid-frame.
    pub fn feed(&mut self, out: &[u8], model: &ClientModel) {
        if out.is_empty() {
            return;
        }
        self.buf.extend_from_slice(out);
        let buf = std::mem::take(&mut self.buf);
        let mut pos = 0;
        while let Some(hdr) = buf.get(pos..pos + FRAME_HEADER_LEN) {
            let len = frame_len(hdr);
            let (kind, flags) = (hdr[3], hdr[4]);
            let raw_id = frame::read_u32(hdr, 5).unwrap_or(0);
            assert_eq!(raw_id & 0x8000_0000, 0, "reserved bit set in a server frame");
            let start = pos + FRAME_HEADER_LEN;
            let Some(payload) = buf.get(start..start + len) else {
                break;
            };
            self.frame(kind, flags, raw_id, payload, model);
            pos = start + len;
        }
        assert_eq!(pos, buf.len(), "server output ends in a partial frame");
        self.buf = buf;
        self.buf.clear();
    }

    fn frame(&mut self, kind: u8, flags: u8, id: u32, payload: &[u8], model: &ClientModel) {
        assert!(!self.closed, "server wrote a frame after its closing GOAWAY");
        let len = payload.len();
        if let Some((bid, _, _)) = &self.block {
            assert!(
                kind == kind::CONTINUATION && id == *bid,
                "header block of stream {bid} interrupted by frame type {kind} on stream {id}"
            );
        }
        match kind {
            kind::DATA => {
                assert_ne!(id, 0, "DATA on stream 0");
                assert_eq!(flags & !flag::END_STREAM, 0, "unexpected DATA flags {flags:#x}");
                assert!(len <= model.frame_max, "DATA of {len} bytes exceeds the frame size");
                assert!(self.headers_seen.contains(&id), "DATA before HEADERS on {id}");
                assert!(!self.ended.contains(&id), "DATA after END_STREAM on {id}");
                self.conn_data += len as u64;
                assert!(
                    self.conn_data <= model.conn_credit,
                    "connection window overrun: {} sent, {} granted",
                    self.conn_data,
                    model.conn_credit
                );
                let sent = self.stream_data.entry(id).or_default();
                *sent += len as u64;
                assert!(
                    *sent <= model.stream_credit(id),
                    "stream {id} window overrun: {sent} sent, {} granted",
                    model.stream_credit(id)
                );
                if flags & flag::END_STREAM != 0 {
                    self.ended.insert(id);
                }
            }
            kind::HEADERS => {
                assert!(id != 0 && id % 2 == 1, "HEADERS on stream {id}");
                assert_eq!(flags & !(flag::END_STREAM | flag::END_HEADERS), 0, "unexpected HEADERS flags {flags:#x}");
                assert!(len <= model.frame_max, "HEADERS exceeds the frame size");
                assert!(!self.ended.contains(&id), "HEADERS after END_STREAM on {id}");
                let end_stream = flags & flag::END_STREAM != 0;
                self.block = Some((id, end_stream, payload.to_vec()));
                if flags & flag::END_HEADERS != 0 {
                    self.finish_block();
                }
            }
            kind::CONTINUATION => {
                assert_eq!(flags & !flag::END_HEADERS, 0, "unexpected CONTINUATION flags");
                assert!(len <= model.frame_max, "CONTINUATION exceeds the frame size");
                let Some((_, _, buf)) = &mut self.block else {
                    panic!("CONTINUATION without HEADERS on stream {id}");
                };
                buf.extend_from_slice(payload);
                if flags & flag::END_HEADERS != 0 {
                    self.finish_block();
                }
            }
            kind::SETTINGS => {
                assert_eq!(id, 0, "SETTINGS on a stream");
                if flags & flag::ACK != 0 {
                    assert_eq!(len, 0, "SETTINGS ACK with payload");
                    let Some(&table_size) = model.settings_table_sizes.get(self.acks) else {
                        panic!("SETTINGS ACK #{} for a SETTINGS never sent", self.acks + 1);
                    };
                    self.acks += 1;
                    // The client's decoder limit changes when its SETTINGS is acknowledged.
                    if let Some(size) = table_size {
                        self.decoder.set_max_table_size(size);
                    }
                } else {
                    assert_eq!(len % 6, 0, "SETTINGS length");
                }
            }
            kind::PING => {
                assert_eq!(id, 0, "PING on a stream");
                assert_eq!(len, 8, "PING length");
                assert_eq!(flags, flag::ACK, "server PING that is not an ACK");
            }
            kind::GOAWAY => {
                assert_eq!(id, 0, "GOAWAY on a stream");
                let code = frame::read_u32(payload, 4);
                let Some(code) = code else {
                    panic!("GOAWAY of {len} bytes");
                };
                self.goaway = Some(code);
                if code != 0 {
                    self.closed = true;
                }
            }
            kind::RST_STREAM => {
                assert_ne!(id, 0, "RST_STREAM on stream 0");
                assert_eq!(len, 4, "RST_STREAM length");
                self.resets.push((id, frame::read_u32(payload, 0).unwrap_or(0)));
            }
            kind::WINDOW_UPDATE => {
                assert_eq!(len, 4, "WINDOW_UPDATE length");
                let inc = frame::read_u32(payload, 0).unwrap_or(0) & 0x7fff_ffff;
                assert_ne!(inc, 0, "WINDOW_UPDATE of 0 on stream {id}");
            }
            other => panic!("server sent frame type {other}"),
        }
    }

    fn finish_block(&mut self) {
        let Some((id, end_stream, block)) = self.block.take() else {
            return;
        };
        let mut fields = Fields::new();
        let r = self.decoder.decode(&block, |n, v| fields.push((n.to_vec(), v.to_vec())));
        if let Err(e) = r {
            panic!("server header block on stream {id} does not decode: {e:?}");
        }
        self.headers_seen.insert(id);
        if end_stream {
            self.ended.insert(id);
        }
        if let Some(blocks) = &mut self.blocks {
            blocks.entry(id).or_default().push(fields);
        }
    }

    pub fn ended(&self, id: u32) -> bool {
        self.ended.contains(&id)
    }
}
