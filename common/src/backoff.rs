//! Capped exponential backoff with full jitter, shared by every retry loop in the
//! gateway (deliveries to watchers, /start and /stop to user servers) so that a
//! restarted peer is not hit by a synchronised wave of retries.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base: base.max(Duration::from_millis(1)),
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The wait before the next attempt: a random point in `[ceiling/2, ceiling]`
    /// where the ceiling doubles per attempt up to the cap. Half the ceiling is kept
    /// as a floor so that a flapping peer is never retried in a tight loop.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let half = ceiling / 2;
        half + ceiling.mul_f64(fastrand::f64() * 0.5)
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_stays_under_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2), "{d:?}");
            assert!(d >= Duration::from_millis(50));
        }
        assert_eq!(b.attempts(), 31);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
