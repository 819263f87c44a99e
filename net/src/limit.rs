//! Rate limiting without IO: a token bucket that is told the time rather than reading a clock.

use std::time::Instant;

/// A token bucket: `burst` tokens at most, refilled at `per_sec` tokens a second. Each
/// [`TokenBucket::take`] spends one. Plain data (`Copy`): one owner, no locks.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket. `burst` 0 is taken as 1 (a bucket that can never pay would refuse all).
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { per_sec: f64::from(per_sec), burst, tokens: burst, last: None }
    }

    /// Spends one token if there is one; false when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let secs = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + secs * self.per_sec).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(50)), "half a token");
        assert!(b.take(t0 + Duration::from_millis(110)));
        assert!(!b.take(t0 + Duration::from_millis(110)));
        // A long pause refills no more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(later)));
        assert!(!b.take(later));
        // A clock that goes back refills nothing.
        assert!(!b.take(t0));
    }
}
