//! A lane: one worker that delivers its events to one watcher, one at a time,
//! in the order they were stored, retrying each with capped backoff until it is
//! delivered or its attempts run out. A configuration's events always share a
//! lane, so their order holds per watcher while configurations proceed in
//! parallel on the watcher's other lanes.
//!
//! A delivered event's acknowledgement goes to the store's writer, which commits
//! it with whatever else has arrived; an event whose retries ran out is buried
//! as a dead letter by the writer too, and the lane waits for that write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::admission::{Admitted, Slots};
use super::pacer::Pacer;
use super::writer::{Change, Writer};
use super::{Answer, Sink};
use crate::config::RetryPolicy;
use crate::metrics::WatcherMetrics;
use crate::store::{now_ms, DeadLetter, StoreError, WatcherId};
use gateway_common::backoff::Backoff;

/// The sending side of a lane, held by the dispatcher.
pub struct Lane {
    pub tx: mpsc::UnboundedSender<Queued>,
    /// Set while the lane's worker is retrying a failed delivery.
    pub stalled: Arc<AtomicBool>,
}

/// A stored event on its way down a lane.
pub struct Queued {
    pub admitted: Arc<Admitted>,
    pub seq: u64,
    pub accepted_at: Instant,
}

enum Outcome {
    Delivered,
    GaveUp {
        error: String,
        attempts: u32,
        answer: Option<Answer>,
    },
    Interrupted,
}

pub struct LaneWorker {
    pub rx: mpsc::UnboundedReceiver<Queued>,
    pub sink: Arc<dyn Sink>,
    pub watcher: WatcherId,
    pub slots: Arc<Slots>,
    pub stalled: Arc<AtomicBool>,
    pub policy: RetryPolicy,
    pub metrics: WatcherMetrics,
    /// Acknowledgements go to the store's writer, which commits them with
    /// whatever else has arrived; so a drained shutdown forgets every
    /// delivered event, and a crash at worst delivers a few again.
    pub writer: Writer,
    pub hard_stop: CancellationToken,
    /// The trigger's `rateLimit`, shared by its lanes.
    pub pace: Option<Arc<Pacer>>,
    /// Woken when a letter is buried: the trigger's dead-letter sink's
    /// forwarder.
    pub buried: Option<Arc<tokio::sync::Notify>>,
}

impl LaneWorker {
    pub async fn run(mut self) {
        let mut held = 0u64;
        loop {
            let queued = tokio::select! {
                biased;
                _ = self.hard_stop.cancelled() => break,
                q = self.rx.recv() => match q { Some(q) => q, None => return },
            };
            let outcome = self.deliver(&queued).await;
            let stored = match &outcome {
                Outcome::Delivered => {
                    self.metrics.delivered.inc();
                    self.metrics
                        .latency
                        .observe(queued.accepted_at.elapsed().as_secs_f64());
                    self.writer.ack(self.watcher, queued.seq);
                    Ok(())
                }
                Outcome::GaveUp {
                    error,
                    attempts,
                    answer,
                } => {
                    self.metrics.dead_lettered.inc();
                    tracing::error!(watcher = self.sink.name(), id = %queued.admitted.event.id, subject = ?queued.admitted.event.subject, attempts, %error, "delivery gave up; event dead-lettered");
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    self.writer.send(Change::Bury {
                        letter: Box::new(DeadLetter {
                            watcher: self.watcher,
                            seq: queued.seq,
                            watcher_name: self.sink.name().to_owned(),
                            error: error.clone(),
                            attempts: *attempts,
                            dead_at_ms: now_ms(),
                            event: queued.admitted.event.clone(),
                            code: answer.as_ref().map_or(0, |a| a.status),
                            data: answer.as_ref().map(|a| a.body.clone()).unwrap_or_default(),
                        }),
                        then: Box::new(move |written| {
                            let _ = tx.send(written);
                        }),
                    });
                    let buried = rx
                        .await
                        .unwrap_or_else(|_| Err(Arc::new(StoreError::WriterStopped)));
                    if let Some(wake) = &self.buried {
                        wake.notify_one();
                    }
                    buried
                }
                Outcome::Interrupted => {
                    held = 1;
                    break;
                }
            };
            if let Err(e) = stored {
                tracing::error!(watcher = self.sink.name(), error = %e, "cannot update the event store; the event may be delivered again after a restart");
            }
            self.slots.release();
            self.metrics.queue_depth.dec();
        }
        self.rx.close();
        let mut left = held;
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        if left > 0 {
            tracing::warn!(
                watcher = self.sink.name(),
                left,
                "delivery stopped; undelivered events stay stored for the next start"
            );
        }
    }

    /// Delivers one event, retrying as the policy says.
    async fn deliver(&self, queued: &Queued) -> Outcome {
        let mut backoff = Backoff::new(self.policy.base, self.policy.cap);
        let event = &queued.admitted.event;
        loop {
            if let Some(pace) = &self.pace {
                tokio::select! {
                    biased;
                    _ = self.hard_stop.cancelled() => return Outcome::Interrupted,
                    _ = pace.wait() => {}
                }
            }
            let result = tokio::select! {
                biased;
                _ = self.hard_stop.cancelled() => return Outcome::Interrupted,
                r = self.sink.deliver(event) => r,
            };
            let attempts = backoff.attempts() + 1;
            let stalled = matches!(&result, Err(e) if e.retryable);
            if stalled && !self.stalled.swap(true, Ordering::Relaxed) {
                // Producers already waiting for room would otherwise wait out
                // TRANSFORMER_ADMIT_WAIT for room that is not coming.
                self.slots.wake_waiters();
            } else if !stalled {
                self.stalled.store(false, Ordering::Relaxed);
            }
            match result {
                Ok(()) => return Outcome::Delivered,
                Err(e)
                    if e.retryable
                        && (self.policy.attempts == 0 || attempts < self.policy.attempts) =>
                {
                    self.metrics.retries.inc();
                    // Counts the attempt either way.
                    let doubling = backoff.next_delay();
                    let computed = if self.policy.linear {
                        (self.policy.base * attempts).min(self.policy.cap)
                    } else {
                        doubling
                    };
                    // A 429 or 503 saying when: as told, up to retryAfterMax.
                    let told = e
                        .answer
                        .as_ref()
                        .and_then(|a| a.retry_after)
                        .zip(self.policy.retry_after_max)
                        .map(|(told, max)| told.min(max));
                    let delay = told.unwrap_or(computed);
                    tracing::warn!(watcher = self.sink.name(), id = %event.id, attempt = attempts, ?delay, error = %e.message, "delivery failed; will retry");
                    tokio::select! {
                        biased;
                        _ = self.hard_stop.cancelled() => return Outcome::Interrupted,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(err) => {
                    return Outcome::GaveUp {
                        error: err.message,
                        attempts,
                        answer: err.answer,
                    }
                }
            }
        }
    }
}
