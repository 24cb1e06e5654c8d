//! A trigger's `rateLimit`: its deliveries (every attempt, on all of its
//! lanes) spaced evenly, one per `unit / requestsPerUnit`. Events wait in the
//! trigger's queue meanwhile; none is dropped.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct Pacer {
    interval: Duration,
    /// When the next delivery may start.
    next: Mutex<Instant>,
}

impl Pacer {
    pub fn new(per: Duration, requests: u32) -> Pacer {
        Pacer {
            interval: per / requests.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this delivery's turn.
    pub async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_deliveries_evenly() {
        let pacer = Pacer::new(Duration::from_secs(1), 20);
        let start = Instant::now();
        for _ in 0..41 {
            pacer.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
