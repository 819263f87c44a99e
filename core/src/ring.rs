//! Bounded single-producer single-consumer rings between cores, with wake-ups both ways.
//!
//! The ring itself is `rtrb` (wait-free SPSC). What this adds is the wake-up: a consumer that
//! finds the ring empty parks its task's waker, and the producer wakes it after a push; a producer
//! that finds it full parks its waker, and the consumer wakes it after a pop. monoio's wakers
//! (with its `sync` feature) may be woken from another thread: that is the eventfd/io_uring kick.
//! A full ring is backpressure: the sender waits, it never queues without bound.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

struct Wakers {
    /// The consumer's task, waiting for an item.
    consumer: AtomicWaker,
    /// The producer's task, waiting for a free slot.
    producer: AtomicWaker,
}

pub struct Sender<T> {
    ring: rtrb::Producer<T>,
    wakers: Arc<Wakers>,
}

pub struct Receiver<T> {
    ring: rtrb::Consumer<T>,
    wakers: Arc<Wakers>,
}

/// A ring holding at most `capacity` items.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(capacity > 0, "a ring needs at least one slot");
    let (p, c) = rtrb::RingBuffer::new(capacity);
    let wakers = Arc::new(Wakers { consumer: AtomicWaker::new(), producer: AtomicWaker::new() });
    (Sender { ring: p, wakers: wakers.clone() }, Receiver { ring: c, wakers })
}

impl<T> Sender<T> {
    /// Pushes without waiting; gives the item back when the ring is full.
    pub fn try_send(&mut self, item: T) -> Result<(), T> {
        match self.ring.push(item) {
            Ok(()) => {
                self.wakers.consumer.wake();
                Ok(())
            }
            Err(rtrb::PushError::Full(item)) => Err(item),
        }
    }

    pub fn is_full(&self) -> bool {
        self.ring.is_full()
    }

    /// Free slots now.
    pub fn slots(&self) -> usize {
        self.ring.slots()
    }

    /// The receiver was dropped (its core stopped).
    pub fn is_closed(&self) -> bool {
        self.ring.is_abandoned()
    }

    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.ring.is_full() || self.ring.is_abandoned() {
            return Poll::Ready(());
        }
        self.wakers.producer.register(cx.waker());
        // Re-check: the consumer may have popped between the test and the registration.
        if !self.ring.is_full() || self.ring.is_abandoned() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Ready once more than `taken` slots are free (or the receiver is gone); otherwise wakes the
    /// task when the consumer takes an item.
    pub fn poll_slots_over(&mut self, taken: usize, cx: &mut Context<'_>) -> Poll<()> {
        if self.ring.slots() > taken || self.ring.is_abandoned() {
            return Poll::Ready(());
        }
        self.wakers.producer.register(cx.waker());
        if self.ring.slots() > taken || self.ring.is_abandoned() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Waits until there is a free slot (or the receiver is gone).
    pub async fn ready(&mut self) {
        poll_fn(|cx| self.poll_ready(cx)).await
    }
}

impl<T> Receiver<T> {
    pub fn try_recv(&mut self) -> Option<T> {
        let item = self.ring.pop().ok()?;
        self.wakers.producer.wake();
        Some(item)
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.ring.slots()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Polls for an item; `Ready(None)` once the sender is gone and the ring is drained.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(item) = self.try_recv() {
            return Poll::Ready(Some(item));
        }
        self.wakers.consumer.register(cx.waker());
        if let Some(item) = self.try_recv() {
            return Poll::Ready(Some(item));
        }
        if self.ring.is_abandoned() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Registers for a wake-up when an item arrives, without taking it.
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.ring.is_empty() || self.ring.is_abandoned() {
            return Poll::Ready(());
        }
        self.wakers.consumer.register(cx.waker());
        if !self.ring.is_empty() || self.ring.is_abandoned() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }
}

#[cfg(test)]
mod tests {
    //! The ring's two promises: nothing is lost or reordered across threads, and a full ring
    //! makes the sender wait (never grows), waking it when the consumer frees a slot.
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Wake;

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn full_ring_pushes_back_and_wakes_the_sender() {
        let (mut tx, mut rx) = channel::<u32>(2);
        assert!(tx.try_send(1).is_ok());
        assert!(tx.try_send(2).is_ok());
        assert_eq!(tx.try_send(3), Err(3));
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(tx.poll_ready(&mut cx).is_pending());
        assert_eq!(rx.try_recv(), Some(1));
        assert!(flag.0.load(Ordering::SeqCst), "pop must wake the waiting sender");
        assert!(tx.poll_ready(&mut cx).is_ready());
    }

    #[test]
    fn empty_ring_wakes_the_receiver() {
        let (mut tx, mut rx) = channel::<u32>(4);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx.try_send(7).unwrap();
        assert!(flag.0.load(Ordering::SeqCst));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(7)));
        drop(tx);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn cross_thread_order_is_kept() {
        const N: u64 = 200_000;
        let (mut tx, mut rx) = channel::<u64>(64);
        let producer = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                match tx.try_send(i) {
                    Ok(()) => i += 1,
                    Err(_) => std::thread::yield_now(),
                }
            }
        });
        let mut next = 0;
        while next < N {
            match rx.try_recv() {
                Some(v) => {
                    assert_eq!(v, next);
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.try_recv(), None);
    }
}
