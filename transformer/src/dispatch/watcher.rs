//! One bounded queue per watcher, split into lanes by ordering key. Each lane has one
//! worker that delivers its events in order, retrying with capped backoff, so order
//! holds per configuration and watcher while distinct configurations proceed in
//! parallel. Admission is all-or-nothing across watchers: an event is accepted only if
//! every watcher has room, which is what lets the transformer answer 2xx honestly.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{DeliveryError, Sink};
use crate::backoff::Backoff;
use crate::cloudevent::CloudEvent;
use crate::config::RetryPolicy;
use crate::metrics::{Metrics, WatcherMetrics};

/// The event was not accepted because this watcher's queue is full.
#[derive(Debug, thiserror::Error)]
#[error("queue for watcher {watcher} is full")]
pub struct QueueFull {
    pub watcher: String,
}

struct Queued {
    event: Arc<CloudEvent>,
    accepted_at: Instant,
}

struct WatcherQueue {
    name: String,
    lanes: Vec<mpsc::Sender<Queued>>,
    metrics: WatcherMetrics,
}

/// Fans events out to every watcher's queue. Dropping it (via [`Dispatcher::close`])
/// lets the workers drain what is queued and finish.
pub struct Dispatcher {
    watchers: Vec<WatcherQueue>,
}

/// The workers behind a [`Dispatcher`]; awaited at shutdown to drain the queues.
pub struct Workers {
    set: JoinSet<()>,
    hard_stop: CancellationToken,
}

impl Dispatcher {
    /// Starts `lanes` workers per sink. Capacity is per watcher and split across its
    /// lanes, so memory is bounded by `sinks × capacity` events.
    pub fn start(
        sinks: Vec<Arc<dyn Sink>>,
        capacity: usize,
        lanes: usize,
        policy: RetryPolicy,
        metrics: Arc<Metrics>,
    ) -> (Dispatcher, Workers) {
        let hard_stop = CancellationToken::new();
        let mut set = JoinSet::new();
        let lane_capacity = capacity.div_ceil(lanes).max(1);
        let watchers = sinks
            .into_iter()
            .map(|sink| {
                let wm = metrics.watcher(sink.name());
                let senders = (0..lanes)
                    .map(|_| {
                        let (tx, rx) = mpsc::channel(lane_capacity);
                        set.spawn(lane_worker(
                            rx,
                            sink.clone(),
                            policy.clone(),
                            wm.clone(),
                            hard_stop.clone(),
                        ));
                        tx
                    })
                    .collect();
                WatcherQueue { name: sink.name().to_owned(), lanes: senders, metrics: wm }
            })
            .collect();
        (Dispatcher { watchers }, Workers { set, hard_stop })
    }

    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// Queues the event for every watcher, or for none: if any watcher's lane is
    /// full, the reservations already made are released and the caller answers 503.
    pub fn try_dispatch(&self, event: Arc<CloudEvent>) -> Result<(), QueueFull> {
        let lane = lane_index(event.ordering_key(), self.watchers.first().map_or(1, |w| w.lanes.len()));
        let mut permits = Vec::with_capacity(self.watchers.len());
        for w in &self.watchers {
            match w.lanes[lane].try_reserve() {
                Ok(permit) => permits.push(permit),
                Err(_) => return Err(QueueFull { watcher: w.name.clone() }),
            }
        }
        let accepted_at = Instant::now();
        for (permit, w) in permits.into_iter().zip(&self.watchers) {
            permit.send(Queued { event: event.clone(), accepted_at });
            w.metrics.queue_depth.inc();
        }
        Ok(())
    }

    /// Stops intake; workers deliver what is queued and then exit.
    pub fn close(self) {}
}

impl Workers {
    /// Waits for the queues to drain; after `deadline`, interrupts retries and
    /// returns how many events were still undelivered.
    pub async fn drain(mut self, deadline: std::time::Duration) {
        let drained = tokio::time::timeout(deadline, async {
            while self.set.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(?deadline, "shutdown deadline passed with events still queued; stopping delivery");
            self.hard_stop.cancel();
            while self.set.join_next().await.is_some() {}
        }
    }
}

fn lane_index(key: &str, lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

async fn lane_worker(
    mut rx: mpsc::Receiver<Queued>,
    sink: Arc<dyn Sink>,
    policy: RetryPolicy,
    metrics: WatcherMetrics,
    hard_stop: CancellationToken,
) {
    loop {
        let queued = tokio::select! {
            biased;
            _ = hard_stop.cancelled() => break,
            q = rx.recv() => match q { Some(q) => q, None => return },
        };
        metrics.queue_depth.dec();
        if !deliver_with_retry(&*sink, &queued, &policy, &metrics, &hard_stop).await {
            break;
        }
    }
    let mut left = 0u64;
    rx.close();
    while rx.try_recv().is_ok() {
        left += 1;
        metrics.queue_depth.dec();
    }
    if left > 0 {
        tracing::error!(watcher = sink.name(), undelivered = left, "events left undelivered at shutdown");
    }
}

/// Delivers one event, retrying as the policy says. Returns false if interrupted by
/// the hard stop (the event is then counted as undelivered).
async fn deliver_with_retry(
    sink: &dyn Sink,
    queued: &Queued,
    policy: &RetryPolicy,
    metrics: &WatcherMetrics,
    hard_stop: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(policy.base, policy.cap);
    loop {
        let result = tokio::select! {
            biased;
            _ = hard_stop.cancelled() => {
                tracing::error!(watcher = sink.name(), id = %queued.event.id, "delivery interrupted by shutdown");
                return false;
            }
            r = sink.deliver(&queued.event) => r,
        };
        match result {
            Ok(()) => {
                metrics.delivered.inc();
                metrics.latency.observe(queued.accepted_at.elapsed().as_secs_f64());
                return true;
            }
            Err(DeliveryError { retryable: true, message })
                if policy.attempts == 0 || backoff.attempts() + 1 < policy.attempts =>
            {
                metrics.retries.inc();
                let delay = backoff.next_delay();
                tracing::warn!(watcher = sink.name(), id = %queued.event.id, attempt = backoff.attempts(), ?delay, error = %message, "delivery failed; will retry");
                tokio::select! {
                    biased;
                    _ = hard_stop.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(err) => {
                metrics.dead_lettered.inc();
                tracing::error!(watcher = sink.name(), id = %queued.event.id, subject = ?queued.event.subject, error = %err.message, "delivery gave up; event dead-lettered");
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_lane() {
        for lanes in 1..8 {
            assert_eq!(lane_index("a", lanes), lane_index("a", lanes));
            assert!(lane_index("anything", lanes) < lanes);
        }
    }
}
