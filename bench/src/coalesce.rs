//! A write-coalescing socket wrapper for the `h2` client. `h2` hands its frames to the socket in
//! many small writes; without a buffer each is a `write` syscall, and PERF-NOTES measured that a
//! coalescing buffer roughly doubles what one client reaches against a trivial server (~57k →
//! ~120k QPS on 2 cores). [`Coalesce`] copies every write into one buffer and writes it out on
//! `poll_flush` (which `h2` calls once it has buffered everything it can), or early once
//! [`COALESCE_BYTES_MAX`] bytes wait.
//!
//! Two refinements, both measured causes of extra syscalls:
//! - It reports no vectored-write support. `h2` then copies a DATA payload under 1 KiB into its
//!   own frame buffer; with vectored IO it chains every payload of 256 bytes or more as a
//!   separate buffer and flushes after each one, so every request body (a 256-byte value) would
//!   leave in its own write.
//! - A flush that would write nothing but PING ACK frames is held back, so the ACK leaves with
//!   the next write (the next request, a few µs later under load). etcd (grpc-go) sends a PING with
//!   bursts of DATA to probe its flow-control window; answered one by one, these ACKs were about
//!   half of the client's writes. Holding one delays nothing that the server waits for: grpc-go
//!   only measures the round trip. `poll_shutdown` writes anything held.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered before they are written without waiting for a flush. The buffer holds at most
/// this plus one write from `h2` (at most a frame: 16 KiB plus header by default).
pub const COALESCE_BYTES_MAX: usize = 64 * 1024;

/// An HTTP/2 PING frame: 9-byte header plus 8 bytes of opaque data.
const PING_FRAME_BYTES: usize = 9 + 8;
const FRAME_TYPE_PING: u8 = 0x6;
const FLAG_ACK: u8 = 0x1;

/// Buffers writes to `T` (see the module doc). Reads pass straight through.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken already (a partial write leaves the rest).
    written: usize,
    /// Writes made to `inner`, for tests and diagnostics.
    inner_writes: u64,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T) -> Self {
        Coalesce { inner, buf: Vec::with_capacity(COALESCE_BYTES_MAX + 16 * 1024), written: 0, inner_writes: 0 }
    }

    /// Bytes buffered and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    #[cfg(test)]
    pub fn inner_writes(&self) -> u64 {
        self.inner_writes
    }

    #[cfg(test)]
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Whether what waits is one or more complete PING ACK frames and nothing else.
    fn only_ping_acks(&self) -> bool {
        let pending = &self.buf[self.written..];
        !pending.is_empty()
            && pending.len() % PING_FRAME_BYTES == 0
            && pending.chunks_exact(PING_FRAME_BYTES).all(|f| {
                f[..3] == [0, 0, 8] && f[3] == FRAME_TYPE_PING && f[4] & FLAG_ACK != 0 && f[5..9] == [0, 0, 0, 0]
            })
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            self.inner_writes += 1;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending() >= COALESCE_BYTES_MAX {
            // Full: the caller waits until the socket takes what is buffered.
            ready!(this.poll_drain(cx))?;
        }
        this.buf.extend_from_slice(data);
        if this.pending() >= COALESCE_BYTES_MAX {
            // Start writing now; what the socket does not take yet stays buffered (and a full
            // socket registers the waker, which at worst wakes the writer once for nothing).
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.only_ping_acks() {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    /// No: see the module doc (h2 would chain and flush each body of 256 bytes or more).
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// Records each write; takes at most `chunk` bytes per write, and refuses (Pending) while
    /// `blocked`.
    #[derive(Default)]
    struct Mock {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        shutdown: bool,
        chunk: Option<usize>,
        blocked: bool,
    }

    impl AsyncWrite for Mock {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.blocked {
                return Poll::Pending;
            }
            let n = this.chunk.map_or(data.len(), |c| c.min(data.len()));
            this.writes.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().shutdown = true;
            Poll::Ready(Ok(()))
        }
    }

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    fn write(c: &mut Coalesce<Mock>, data: &[u8]) {
        match Pin::new(c).poll_write(&mut cx(), data) {
            Poll::Ready(Ok(n)) => assert_eq!(n, data.len()),
            other => panic!("write: {other:?}"),
        }
    }

    fn flush(c: &mut Coalesce<Mock>) -> Poll<io::Result<()>> {
        Pin::new(c).poll_flush(&mut cx())
    }

    fn ping_ack(tag: u8) -> Vec<u8> {
        let mut f = vec![0, 0, 8, FRAME_TYPE_PING, FLAG_ACK, 0, 0, 0, 0];
        f.extend_from_slice(&[tag; 8]);
        f
    }

    #[test]
    fn writes_coalesce_until_flush() {
        let mut c = Coalesce::new(Mock::default());
        let mut want = Vec::new();
        for i in 0..100u8 {
            let frame = vec![i; 300];
            write(&mut c, &frame);
            want.extend_from_slice(&frame);
        }
        assert!(c.get_ref().writes.is_empty(), "nothing reaches the socket before a flush");
        assert_eq!(c.pending(), 30_000);
        assert!(flush(&mut c).is_ready());
        assert_eq!(c.get_ref().writes, vec![want], "one write carries everything");
        assert_eq!(c.get_ref().flushes, 1);
        assert_eq!(c.pending(), 0);
        assert_eq!(c.inner_writes(), 1);
        // An empty flush writes nothing.
        assert!(flush(&mut c).is_ready());
        assert_eq!(c.inner_writes(), 1);
        assert!(!c.is_write_vectored());
    }

    #[test]
    fn a_full_buffer_is_written_without_a_flush() {
        let mut c = Coalesce::new(Mock::default());
        let chunk = vec![7u8; 16 * 1024];
        for _ in 0..4 {
            write(&mut c, &chunk);
        }
        assert_eq!(c.get_ref().writes.len(), 1, "64 KiB buffered: written at once");
        assert_eq!(c.get_ref().writes[0].len(), COALESCE_BYTES_MAX);
        assert_eq!(c.get_ref().flushes, 0);
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn flush_drains_across_partial_and_blocked_writes() {
        let mut c = Coalesce::new(Mock { chunk: Some(1000), blocked: true, ..Mock::default() });
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        write(&mut c, &data);
        assert!(flush(&mut c).is_pending(), "a socket that takes nothing leaves the flush pending");
        assert_eq!(c.pending(), 5000);
        // A full buffer makes the next write wait too, rather than grow without bound.
        let big = vec![1u8; COALESCE_BYTES_MAX];
        write(&mut c, &big);
        assert!(Pin::new(&mut c).poll_write(&mut cx(), b"x").is_pending());
        c.inner.blocked = false;
        assert!(flush(&mut c).is_ready());
        assert_eq!(c.pending(), 0);
        let out: Vec<u8> = c.get_ref().writes.concat();
        assert_eq!(out.len(), 5000 + COALESCE_BYTES_MAX);
        assert_eq!(&out[..5000], &data[..]);
        assert!(c.get_ref().writes.iter().all(|w| w.len() <= 1000));
    }

    #[test]
    fn ping_acks_alone_wait_for_the_next_write() {
        let mut c = Coalesce::new(Mock::default());
        let ack = ping_ack(1);
        write(&mut c, &ack);
        assert!(flush(&mut c).is_ready());
        assert!(c.get_ref().writes.is_empty(), "a lone PING ACK is held");
        write(&mut c, &ping_ack(2));
        assert!(flush(&mut c).is_ready());
        assert!(c.get_ref().writes.is_empty(), "two are held too");
        write(&mut c, b"HEADERS");
        assert!(flush(&mut c).is_ready());
        assert_eq!(c.get_ref().writes, vec![[ack, ping_ack(2), b"HEADERS".to_vec()].concat()]);

        // A PING that is not an ACK (or anything else) is written at once.
        let mut ping = ping_ack(3);
        ping[4] = 0;
        write(&mut c, &ping);
        assert!(flush(&mut c).is_ready());
        assert_eq!(c.get_ref().writes.len(), 2);

        // Shutdown writes a held ACK.
        write(&mut c, &ping_ack(4));
        assert!(flush(&mut c).is_ready());
        assert_eq!(c.get_ref().writes.len(), 2);
        assert!(Pin::new(&mut c).poll_shutdown(&mut cx()).is_ready());
        assert_eq!(c.get_ref().writes.last(), Some(&ping_ack(4)));
        assert!(c.get_ref().shutdown);
    }
}
