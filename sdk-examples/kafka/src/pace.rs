//! `limitEventsPerSecond`: a pace of so many events a second, kept over any
//! window longer than a tenth of a second (a burst of at most a tenth of a
//! second's events), so that a rate measured over a few seconds holds within
//! a few percent. Nothing is dropped: the reader waits, and the broker keeps
//! the rest.

use std::time::Duration;

use tokio::time::Instant;

pub struct Pace {
    /// `None`: no limit.
    per_event: Option<Duration>,
    /// Events that may go at once.
    burst: u64,
    /// When the events granted so far would all have gone at the pace.
    due: Instant,
}

impl Pace {
    pub fn new(per_second: u64) -> Pace {
        let per_event =
            (per_second > 0).then(|| Duration::from_secs(1) / per_second.min(1_000_000_000) as u32);
        Pace {
            per_event,
            burst: (per_second / 10).max(1),
            due: Instant::now(),
        }
    }

    /// Waits until at least one event may go; grants up to `want` of them.
    pub async fn take(&mut self, want: u64) -> u64 {
        let Some(per_event) = self.per_event else {
            return want;
        };
        loop {
            let now = Instant::now();
            let ahead = self.due.saturating_duration_since(now);
            let ahead_events = ahead.as_nanos().div_ceil(per_event.as_nanos().max(1));
            let free = self
                .burst
                .saturating_sub(u64::try_from(ahead_events).unwrap_or(u64::MAX));
            if free > 0 {
                let granted = free.min(want).max(1);
                self.due = self.due.max(now) + per_event * granted as u32;
                return granted;
            }
            // One event's room opens when `due` is a burst minus one ahead.
            let wait = ahead.saturating_sub(per_event * (self.burst - 1) as u32);
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Gives back `unused` of the events granted (fewer were waiting).
    pub fn refund(&mut self, unused: u64) {
        if let Some(per_event) = self.per_event {
            let back = per_event.saturating_mul(u32::try_from(unused).unwrap_or(u32::MAX));
            self.due = self.due.checked_sub(back).unwrap_or(self.due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate_over_a_few_seconds() {
        let mut pace = Pace::new(200);
        let start = Instant::now();
        let mut sent = 0;
        while start.elapsed() < Duration::from_secs(5) {
            sent += pace.take(1000).await;
        }
        // 5 s at 200/s, plus at most one burst of 20.
        assert!((1000..=1020).contains(&sent), "{sent}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_is_sent_later() {
        let mut pace = Pace::new(10);
        assert_eq!(pace.take(5).await, 1);
        pace.refund(1);
        let start = Instant::now();
        assert_eq!(pace.take(5).await, 1);
        assert!(start.elapsed() < Duration::from_millis(5));
    }

    #[tokio::test]
    async fn no_limit_grants_everything() {
        let mut pace = Pace::new(0);
        assert_eq!(pace.take(1000).await, 1000);
    }
}
