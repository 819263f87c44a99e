//! HTTP/2 frame layout (RFC 9113 §4 and §6): the 9-byte header, type and flag constants, error
//! codes, and writers for the frames a server emits. Parsing of payloads lives with the
//! connection state machine, which knows what each frame means in context.

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const FRAME_HEADER_LEN: usize = 9;
/// The frame size every peer must accept, and the lower bound of SETTINGS_MAX_FRAME_SIZE.
pub const FRAME_SIZE_DEFAULT: u32 = 16_384;
/// The upper bound of SETTINGS_MAX_FRAME_SIZE (2^24 - 1).
pub const FRAME_SIZE_LIMIT_MAX: u32 = (1 << 24) - 1;
/// Largest flow-control window (2^31 - 1).
pub const WINDOW_SIZE_MAX: i64 = (1 << 31) - 1;
/// The initial window of every stream and of the connection before SETTINGS say otherwise.
pub const WINDOW_SIZE_DEFAULT: u32 = 65_535;

pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// HTTP/2 error codes (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const NO_ERROR: Self = Self(0x0);
    pub const PROTOCOL_ERROR: Self = Self(0x1);
    pub const INTERNAL_ERROR: Self = Self(0x2);
    pub const FLOW_CONTROL_ERROR: Self = Self(0x3);
    pub const SETTINGS_TIMEOUT: Self = Self(0x4);
    pub const STREAM_CLOSED: Self = Self(0x5);
    pub const FRAME_SIZE_ERROR: Self = Self(0x6);
    pub const REFUSED_STREAM: Self = Self(0x7);
    pub const CANCEL: Self = Self(0x8);
    pub const COMPRESSION_ERROR: Self = Self(0x9);
    pub const CONNECT_ERROR: Self = Self(0xa);
    pub const ENHANCE_YOUR_CALM: Self = Self(0xb);
    pub const INADEQUATE_SECURITY: Self = Self(0xc);
    pub const HTTP_1_1_REQUIRED: Self = Self(0xd);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// With the reserved bit cleared, as RFC 9113 §4.1 says receivers must.
    pub stream_id: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Reads a big-endian u32 at `at`, or None when the slice is too short.
pub fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

pub fn write_header(dst: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
    debug_assert!(len <= FRAME_SIZE_LIMIT_MAX as usize);
    let l = (len as u32).to_be_bytes();
    dst.extend_from_slice(&[l[1], l[2], l[3], kind, flags]);
    dst.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
}

pub fn write_settings(dst: &mut Vec<u8>, settings: &[(u16, u32)]) {
    write_header(dst, settings.len() * 6, kind::SETTINGS, 0, 0);
    for &(id, value) in settings {
        dst.extend_from_slice(&id.to_be_bytes());
        dst.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn write_settings_ack(dst: &mut Vec<u8>) {
    write_header(dst, 0, kind::SETTINGS, flag::ACK, 0);
}

pub fn write_ping(dst: &mut Vec<u8>, ack: bool, payload: [u8; 8]) {
    write_header(dst, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    dst.extend_from_slice(&payload);
}

pub fn write_window_update(dst: &mut Vec<u8>, stream_id: u32, increment: u32) {
    debug_assert!(increment > 0 && increment as i64 <= WINDOW_SIZE_MAX);
    write_header(dst, 4, kind::WINDOW_UPDATE, 0, stream_id);
    dst.extend_from_slice(&increment.to_be_bytes());
}

pub fn write_rst_stream(dst: &mut Vec<u8>, stream_id: u32, code: ErrorCode) {
    write_header(dst, 4, kind::RST_STREAM, 0, stream_id);
    dst.extend_from_slice(&code.0.to_be_bytes());
}

pub fn write_goaway(dst: &mut Vec<u8>, last_stream_id: u32, code: ErrorCode, debug: &[u8]) {
    write_header(dst, 8 + debug.len(), kind::GOAWAY, 0, 0);
    dst.extend_from_slice(&(last_stream_id & 0x7fff_ffff).to_be_bytes());
    dst.extend_from_slice(&code.0.to_be_bytes());
    dst.extend_from_slice(debug);
}

/// Writes `payload` as DATA frames of at most `max_frame` bytes each; END_STREAM (if asked)
/// goes on the last one. An empty payload with `end_stream` is one empty DATA frame.
pub fn write_data(dst: &mut Vec<u8>, stream_id: u32, payload: &[u8], end_stream: bool, max_frame: usize) {
    debug_assert!(max_frame > 0);
    if payload.is_empty() {
        if end_stream {
            write_header(dst, 0, kind::DATA, flag::END_STREAM, stream_id);
        }
        return;
    }
    let mut chunks = payload.chunks(max_frame).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let flags = if last && end_stream { flag::END_STREAM } else { 0 };
        write_header(dst, chunk.len(), kind::DATA, flags, stream_id);
        dst.extend_from_slice(chunk);
    }
}

/// Writes an encoded header block as HEADERS plus as many CONTINUATION frames as the peer's
/// maximum frame size needs.
pub fn write_header_block(dst: &mut Vec<u8>, stream_id: u32, block: &[u8], end_stream: bool, max_frame: usize) {
    debug_assert!(max_frame > 0);
    let end = if end_stream { flag::END_STREAM } else { 0 };
    if block.len() <= max_frame {
        write_header(dst, block.len(), kind::HEADERS, end | flag::END_HEADERS, stream_id);
        dst.extend_from_slice(block);
        return;
    }
    let mut chunks = block.chunks(max_frame).enumerate().peekable();
    while let Some((i, chunk)) = chunks.next() {
        let last = chunks.peek().is_none();
        let eh = if last { flag::END_HEADERS } else { 0 };
        if i == 0 {
            write_header(dst, chunk.len(), kind::HEADERS, end | eh, stream_id);
        } else {
            write_header(dst, chunk.len(), kind::CONTINUATION, eh, stream_id);
        }
        dst.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_clears_reserved_bit() {
        let mut b = Vec::new();
        write_header(&mut b, 0x12345, kind::HEADERS, flag::END_HEADERS, 7);
        b[5] |= 0x80;
        let arr: [u8; 9] = b[..9].try_into().unwrap();
        let h = FrameHeader::parse(&arr);
        assert_eq!(h.len, 0x12345);
        assert_eq!(h.kind, kind::HEADERS);
        assert!(h.has(flag::END_HEADERS));
        assert_eq!(h.stream_id, 7);
    }

    #[test]
    fn data_is_split_at_max_frame() {
        let mut b = Vec::new();
        write_data(&mut b, 1, &[7u8; 10], true, 4);
        // 3 frames: 4 + 4 + 2 bytes, END_STREAM only on the last.
        assert_eq!(b.len(), 3 * 9 + 10);
        assert_eq!(b[4], 0);
        assert_eq!(b[9 + 4 + 4], 0);
        assert_eq!(b[2 * 13 + 4], flag::END_STREAM);
    }

    #[test]
    fn header_block_uses_continuation() {
        let mut b = Vec::new();
        write_header_block(&mut b, 3, &[1u8; 9], true, 4);
        assert_eq!(b[3], kind::HEADERS);
        assert_eq!(b[4], flag::END_STREAM);
        assert_eq!(b[13 + 3], kind::CONTINUATION);
        assert_eq!(b[26 + 3], kind::CONTINUATION);
        assert_eq!(b[26 + 4], flag::END_HEADERS);
    }

    #[test]
    fn read_u32_is_bounds_checked() {
        assert_eq!(read_u32(&[0, 0, 1], 0), None);
        assert_eq!(read_u32(&[0, 0, 0, 1, 9], 1), Some(0x109));
        assert_eq!(read_u32(&[0, 0, 0, 1], usize::MAX), None);
    }
}
