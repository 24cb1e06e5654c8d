//! A lane: one worker that delivers its events to one watcher, one at a time,
//! in the order they were stored, retrying each with capped backoff until it is
//! delivered or its attempts run out. A configuration's events always share a
//! lane, so their order holds per watcher while configurations proceed in
//! parallel on the watcher's other lanes.
//!
//! A delivered event's acknowledgement goes to the store's writer, which commits
//! it with whatever else has arrived; an event whose retries ran out is buried
//! as a dead letter by the writer too, and the lane waits for that write.
//!
//! A reload of the triggers retires a lane's worker: a removed trigger's
//! worker stops at once (an attempt in flight is abandoned) and buries what
//! is queued as dead letters; a changed trigger's worker hands its queue,
//! and the event it was delivering, to the worker of the new definition,
//! which goes on in the same order.

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

/// How a reload retires a lane's worker.
pub enum Retirement {
    /// The trigger was removed: what is queued becomes dead letters.
    Remove,
    /// The trigger changed: the queue goes to the new definition's worker.
    HandOver(tokio::sync::oneshot::Sender<Handover>),
}

/// A lane's queue, and the event its worker was delivering, if any.
pub type Handover = (mpsc::UnboundedReceiver<Queued>, Option<Queued>);

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
    /// A reload's retirement of this worker; closed when none can come.
    pub retire: mpsc::UnboundedReceiver<Retirement>,
    /// Delivered before the queue: what the worker of an earlier
    /// definition was delivering when it handed the queue over.
    pub first: Option<Queued>,
}

/// The next retirement, never once none can come.
async fn retirement(rx: &mut Option<mpsc::UnboundedReceiver<Retirement>>) -> Retirement {
    loop {
        match rx {
            Some(r) => match r.recv().await {
                Some(how) => return how,
                None => *rx = None,
            },
            None => std::future::pending::<()>().await,
        }
    }
}

impl LaneWorker {
    pub async fn run(mut self) {
        let mut held = 0u64;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut retire = Some(std::mem::replace(&mut self.retire, rx));
        drop(tx);
        loop {
            let queued = match self.first.take() {
                Some(q) => q,
                None => tokio::select! {
                    biased;
                    _ = self.hard_stop.cancelled() => break,
                    how = retirement(&mut retire) => return self.retired(how, None).await,
                    q = self.rx.recv() => match q { Some(q) => q, None => return },
                },
            };
            let outcome = tokio::select! {
                biased;
                how = retirement(&mut retire) => return self.retired(how, Some(queued)).await,
                o = self.deliver(&queued) => o,
            };
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
                    let buried = self.bury(&queued, error, *attempts, answer.as_ref()).await;
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

    /// Moves `queued` from the queue into the dead letters, and waits for it.
    async fn bury(
        &self,
        queued: &Queued,
        error: &str,
        attempts: u32,
        answer: Option<&Answer>,
    ) -> Result<(), Arc<StoreError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.send(Change::Bury {
            letter: Box::new(DeadLetter {
                watcher: self.watcher,
                seq: queued.seq,
                watcher_name: self.sink.name().to_owned(),
                error: error.to_owned(),
                attempts,
                dead_at_ms: now_ms(),
                event: queued.admitted.event.clone(),
                code: answer.map_or(0, |a| a.status),
                data: answer.map(|a| a.body.clone()).unwrap_or_default(),
            }),
            then: Box::new(move |written| {
                let _ = tx.send(written);
            }),
        });
        rx.await
            .unwrap_or_else(|_| Err(Arc::new(StoreError::WriterStopped)))
    }

    /// A reload retired this worker: hand the queue over, or bury it.
    async fn retired(mut self, how: Retirement, current: Option<Queued>) {
        match how {
            Retirement::HandOver(to) => {
                let (tx, rx) = mpsc::unbounded_channel();
                drop(tx);
                let queue = std::mem::replace(&mut self.rx, rx);
                let _ = to.send((queue, current));
            }
            Retirement::Remove => {
                let why = format!("the trigger {} was removed", self.sink.name());
                let mut next = current;
                loop {
                    let queued = match next.take() {
                        Some(q) => q,
                        None => tokio::select! {
                            biased;
                            _ = self.hard_stop.cancelled() => return,
                            q = self.rx.recv() => match q { Some(q) => q, None => return },
                        },
                    };
                    if let Err(e) = self.bury(&queued, &why, 0, None).await {
                        tracing::error!(watcher = self.sink.name(), error = %e, "cannot bury an event of a removed trigger; it stays queued for the next start");
                    }
                    self.metrics.dead_lettered.inc();
                    self.slots.release();
                    self.metrics.queue_depth.dec();
                }
            }
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
