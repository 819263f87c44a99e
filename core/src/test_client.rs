//! A scripted gRPC client for in-process tests: HPACK state of its own, frames built by hand.

use metastore_net::frame::{self, flag, kind, PREFACE};
use metastore_net::hpack;

/// A client writing requests on one connection, with its own HPACK state.
pub(crate) struct Client {
    enc: hpack::Encoder,
    next_id: u32,
    buf: Vec<u8>,
}

impl Client {
    pub(crate) fn new() -> Self {
        // Like a real client, it grants the server all the credit it needs, so responses never
        // wait for flow control (that path is not the steady state being measured).
        let mut buf = PREFACE.to_vec();
        frame::write_settings(&mut buf, &[(frame::setting::INITIAL_WINDOW_SIZE, 1 << 30)]);
        frame::write_window_update(&mut buf, 0, (1 << 31) - 1 - 65_535);
        Client { enc: hpack::Encoder::new(), next_id: 1, buf }
    }

    pub(crate) fn call(&mut self, path: &str, body: &[u8]) {
        self.call_with(path, body, &[]);
    }

    /// A call with extra request headers (e.g. `grpc-timeout`).
    pub(crate) fn call_with(&mut self, path: &str, body: &[u8], extra: &[(&[u8], &[u8])]) {
        let id = self.next_id;
        self.next_id += 2;
        let mut block = Vec::new();
        let fixed: [(&[u8], &[u8]); 5] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        self.enc.encode(fixed.into_iter().chain(extra.iter().copied()), &mut block);
        frame::write_header(&mut self.buf, block.len(), kind::HEADERS, flag::END_HEADERS, id);
        self.buf.extend_from_slice(&block);
        let mut m = vec![0u8];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(body);
        frame::write_data(&mut self.buf, id, &m, true, 16_384);
    }

    pub(crate) fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}
