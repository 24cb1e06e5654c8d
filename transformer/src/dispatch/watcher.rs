//! One queue per watcher, split into lanes by ordering key, backed by the durable
//! [`Store`]. Each lane has one worker that delivers its events in order with capped
//! backoff, so order holds per configuration and watcher while configurations
//! proceed in parallel. Admission is all-or-nothing across watchers and bounded in
//! count (per lane) and bytes (overall): a refused event is a 503, never growth.
//!
//! An event is written to the store before it is admitted, removed when its watcher
//! acknowledges it, and buried as a dead letter when its retries run out. What is
//! still stored when the process starts is queued again first, in its old order.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::writer::{Change, Finished, Then, Writer, Written};
use super::{DeliveryError, Sink};
use crate::cloudevent::CloudEvent;
use crate::config::RetryPolicy;
use crate::metrics::{Metrics, WatcherMetrics};
use crate::store::{encode_event, now_ms, DeadLetter, Store, StoreError, WatcherId};
use gateway_common::backoff::Backoff;

/// Why an event was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the queue for watcher {watcher} is full")]
    Full { watcher: String },
    #[error("queued events already hold the memory budget of {max} bytes")]
    OverBudget { max: usize },
    #[error("no watcher {0} is configured")]
    UnknownWatcher(String),
    /// Shared, because one failed write refuses every event of its batch.
    #[error(transparent)]
    Store(Arc<StoreError>),
}

/// Bytes held by queued events, bounded by `TRANSFORMER_QUEUE_MAX_BYTES`.
struct Budget {
    used: AtomicUsize,
    max: usize,
    /// Woken once per event that gives its bytes back, for producers waiting on room.
    freed: Notify,
}

/// An admitted event; its bytes return to the budget when the last watcher is done.
pub struct Admitted {
    pub event: CloudEvent,
    size: usize,
    budget: Arc<Budget>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.size, Ordering::Relaxed);
        self.budget.freed.notify_one();
    }
}

struct Queued {
    admitted: Arc<Admitted>,
    seq: u64,
    accepted_at: Instant,
}

struct Lane {
    tx: mpsc::UnboundedSender<Queued>,
    /// Set while the lane's worker is retrying a failed delivery.
    stalled: Arc<AtomicBool>,
}

struct WatcherQueue {
    name: String,
    id: WatcherId,
    lanes: Vec<Lane>,
    /// Events queued for this watcher, all lanes together: bounded by
    /// `TRANSFORMER_QUEUE_CAPACITY`, whichever configurations they belong to.
    depth: Arc<AtomicUsize>,
    /// Woken once per event any of its lanes finishes.
    room: Arc<Notify>,
    metrics: WatcherMetrics,
}

/// Fans events out to every watcher's queue. Dropping it lets the workers drain.
pub struct Dispatcher {
    /// Shared with the writer thread, which queues events once they are stored.
    watchers: Arc<[WatcherQueue]>,
    ids: Arc<[WatcherId]>,
    store: Arc<Store>,
    writer: Writer,
    budget: Arc<Budget>,
    capacity: usize,
    admit_wait: std::time::Duration,
    waiting: prometheus_client::metrics::gauge::Gauge,
    next_seq: AtomicU64,
    /// Held while a sequence number is taken, stored and queued, so the store's
    /// order and each lane's order agree.
    order: Vec<Mutex<()>>,
}

/// The workers behind a [`Dispatcher`]; awaited at shutdown to drain the queues.
pub struct Workers {
    set: JoinSet<()>,
    hard_stop: CancellationToken,
    writer: Finished,
}

pub struct Limits {
    /// Events queued per watcher, across its lanes.
    pub capacity: usize,
    pub lanes: usize,
    /// Bytes of event data held in memory across all queues.
    pub max_bytes: usize,
    /// How long an event may wait for room before it is refused.
    pub admit_wait: std::time::Duration,
}

impl Dispatcher {
    /// Starts `lanes` workers per sink and queues again what the store still holds.
    /// Stored events of watchers no longer configured become dead letters.
    pub fn start(
        sinks: Vec<Arc<dyn Sink>>,
        limits: Limits,
        policy: RetryPolicy,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> Result<(Dispatcher, Workers), StoreError> {
        let hard_stop = CancellationToken::new();
        let mut set = JoinSet::new();
        let (writer, finished) =
            Writer::start(store.clone(), metrics.store_write.clone()).map_err(StoreError::Log)?;
        let lanes = limits.lanes.max(1);
        let mut watchers = Vec::with_capacity(sinks.len());
        for sink in sinks {
            let id = store.register_watcher(sink.name())?;
            let wm = metrics.watcher(sink.name());
            let depth = Arc::new(AtomicUsize::new(0));
            let room = Arc::new(Notify::new());
            let lanes = (0..lanes)
                .map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let stalled = Arc::new(AtomicBool::new(false));
                    set.spawn(
                        LaneWorker {
                            rx,
                            sink: sink.clone(),
                            watcher: id,
                            depth: depth.clone(),
                            room: room.clone(),
                            stalled: stalled.clone(),
                            policy: policy.clone(),
                            metrics: wm.clone(),
                            writer: writer.clone(),
                            hard_stop: hard_stop.clone(),
                        }
                        .run(),
                    );
                    Lane { tx, stalled }
                })
                .collect();
            watchers.push(WatcherQueue {
                name: sink.name().to_owned(),
                id,
                lanes,
                depth,
                room,
                metrics: wm,
            });
        }
        let dispatcher = Dispatcher {
            ids: watchers.iter().map(|w| w.id).collect(),
            watchers: watchers.into(),
            writer,
            budget: Arc::new(Budget {
                used: AtomicUsize::new(0),
                max: limits.max_bytes.max(1),
                freed: Notify::new(),
            }),
            capacity: limits.capacity.max(1),
            admit_wait: limits.admit_wait,
            waiting: metrics.admission_waiting.clone(),
            next_seq: AtomicU64::new(store.max_seq()? + 1),
            order: (0..lanes).map(|_| Mutex::new(())).collect(),
            store,
        };
        dispatcher.recover()?;
        Ok((
            dispatcher,
            Workers {
                set,
                hard_stop,
                writer: finished,
            },
        ))
    }

    fn recover(&self) -> Result<(), StoreError> {
        let mut requeued = 0usize;
        let mut buried = 0usize;
        for (watcher, seq, event) in self.store.queued()? {
            match self.watchers.iter().find(|w| w.id == watcher) {
                Some(w) => {
                    let lane = self.lane_of(&event);
                    let admitted = self.admit_unchecked(event);
                    w.depth.fetch_add(1, Ordering::Relaxed);
                    w.metrics.queue_depth.inc();
                    let _ = w.lanes[lane].tx.send(Queued {
                        admitted,
                        seq,
                        accepted_at: Instant::now(),
                    });
                    requeued += 1;
                }
                None => {
                    self.store.bury(&DeadLetter {
                        watcher,
                        seq,
                        watcher_name: self.store.watcher_name(watcher),
                        error: "the watcher is no longer configured".into(),
                        attempts: 0,
                        dead_at_ms: now_ms(),
                        event,
                    })?;
                    buried += 1;
                }
            }
        }
        if requeued > 0 || buried > 0 {
            tracing::info!(
                requeued,
                buried,
                "recovered events stored by an earlier run"
            );
        }
        Ok(())
    }

    fn lane_of(&self, event: &CloudEvent) -> usize {
        lane_index(event.ordering_key(), self.order.len())
    }

    fn admit_unchecked(&self, event: CloudEvent) -> Arc<Admitted> {
        let size = event_size(&event);
        self.budget.used.fetch_add(size, Ordering::Relaxed);
        self.admitted(event, size)
    }

    /// Takes `size` bytes of the budget, or refuses. An event larger than the whole
    /// budget is still taken when nothing else is queued, so it can never starve.
    fn reserve_bytes(&self, size: usize) -> Result<(), Refused> {
        let before = self.budget.used.fetch_add(size, Ordering::Relaxed);
        if before > 0 && before + size > self.budget.max {
            self.budget.used.fetch_sub(size, Ordering::Relaxed);
            return Err(Refused::OverBudget {
                max: self.budget.max,
            });
        }
        Ok(())
    }

    /// Reserves a slot in the queue of each listed watcher, or none of them;
    /// on refusal, says which watcher's queue was full.
    fn reserve_slots(&self, watchers: &[&WatcherQueue]) -> Result<(), (Refused, usize)> {
        for (i, w) in watchers.iter().enumerate() {
            if w.depth.fetch_add(1, Ordering::Relaxed) >= self.capacity {
                for undo in &watchers[..=i] {
                    undo.depth.fetch_sub(1, Ordering::Relaxed);
                }
                return Err((
                    Refused::Full {
                        watcher: w.name.clone(),
                    },
                    i,
                ));
            }
        }
        Ok(())
    }

    /// Takes a slot for every target and the event's bytes, waiting up to
    /// `wait` for room. Waiting holds the producer's request open instead of
    /// answering 503 at once: under a burst the producer is simply slowed, and
    /// no retry round trip is spent; only a queue that stays full refuses. A
    /// lane whose watcher is failing will not make room soon, so then the
    /// refusal is immediate: a producer facing a dead sensor is never held.
    async fn reserve(
        &self,
        targets: &[&WatcherQueue],
        lane: usize,
        size: usize,
        wait: std::time::Duration,
    ) -> Result<(), Refused> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut counted: Option<WaitingGuard> = None;
        loop {
            let blocked = match self.reserve_slots(targets) {
                Ok(()) => match self.reserve_bytes(size) {
                    Ok(()) => return Ok(()),
                    Err(refused) => {
                        release_slots(targets);
                        (refused, None)
                    }
                },
                Err((refused, full)) => (refused, Some(full)),
            };
            let stalled = targets
                .iter()
                .any(|w| w.lanes[lane].stalled.load(Ordering::Relaxed));
            if stalled || tokio::time::Instant::now() >= deadline {
                return Err(blocked.0);
            }
            if counted.is_none() {
                counted = Some(WaitingGuard::new(&self.waiting));
            }
            // A wakeup that came between the check and here is kept by Notify as
            // a permit, so none is missed; each wakeup is then checked again.
            let woken = async {
                match blocked.1 {
                    Some(i) => targets[i].room.notified().await,
                    None => self.budget.freed.notified().await,
                }
            };
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(blocked.0);
            }
        }
    }

    /// Stores the event for every watcher and queues it, or refuses it whole. When
    /// this returns Ok the event is as durable as the fsync policy promises.
    pub async fn dispatch(&self, event: CloudEvent) -> Result<(), Refused> {
        self.dispatch_many(vec![event])
            .await
            .pop()
            .unwrap_or(Ok(()))
    }

    /// [`Dispatcher::dispatch`] for many events at once, with one outcome each, in
    /// order. Each event waits for room on its own; those admitted are stored with
    /// one write and one fsync between them, which is what makes a batch cheaper
    /// than its events one by one.
    pub async fn dispatch_many(&self, events: Vec<CloudEvent>) -> Vec<Result<(), Refused>> {
        let targets: Vec<&WatcherQueue> = self.watchers.iter().collect();
        if targets.is_empty() {
            return events.iter().map(|_| Ok(())).collect();
        }
        let plans: Vec<(usize, usize)> = events
            .iter()
            .map(|e| (self.lane_of(e), event_size(e)))
            .collect();
        let rooms = futures::future::join_all(
            plans
                .iter()
                .map(|&(lane, size)| self.reserve(&targets, lane, size, self.admit_wait)),
        )
        .await;
        let mut results = Vec::with_capacity(events.len());
        let mut admitted_at = Vec::new();
        let mut ready = Vec::new();
        for ((event, (lane, size)), room) in events.into_iter().zip(plans).zip(rooms) {
            match room {
                Ok(()) => {
                    admitted_at.push(results.len());
                    ready.push((lane, self.admitted(event, size)));
                    results.push(Ok(()));
                }
                Err(refused) => results.push(Err(refused)),
            }
        }
        if ready.is_empty() {
            return results;
        }
        let encoded: Vec<Vec<u8>> = ready
            .iter()
            .map(|(_, admitted)| encode_event(&admitted.event))
            .collect();
        let watchers = self.ids.clone();
        let stored = self
            .queue_stored(None, ready, |first, then| Change::Append {
                watchers,
                events: (first..).zip(encoded).collect(),
                then,
            })
            .await;
        if let Err(e) = stored {
            for i in admitted_at {
                results[i] = Err(Refused::Store(e.clone()));
            }
        }
        results
    }

    /// Queues a dead letter again for its watcher, after what is queued now.
    pub async fn replay(&self, letter: DeadLetter) -> Result<(), Refused> {
        let Some(index) = self.watchers.iter().position(|w| w.id == letter.watcher) else {
            return Err(Refused::UnknownWatcher(letter.watcher_name));
        };
        let targets = [&self.watchers[index]];
        let lane = self.lane_of(&letter.event);
        let size = event_size(&letter.event);
        // Replays take what room there is and stop; only producers wait.
        self.reserve(&targets, lane, size, std::time::Duration::ZERO)
            .await?;
        let ready = vec![(lane, self.admitted(letter.event.clone(), size))];
        self.queue_stored(Some(index), ready, |seq, then| Change::Resurrect {
            letter: Box::new(letter),
            seq,
            then,
        })
        .await
        .map_err(Refused::Store)
    }

    fn admitted(&self, event: CloudEvent, size: usize) -> Arc<Admitted> {
        Arc::new(Admitted {
            event,
            size,
            budget: self.budget.clone(),
        })
    }

    /// Gives admitted events their sequence numbers (from the first one passed
    /// to `change`), sends their store write to the writer thread under the
    /// lanes' order locks, and waits for it. The writer queues the events on
    /// their lanes of `only` that watcher (or of all) once they are stored, in
    /// the order they were sent, so the store's order and each lane's order
    /// agree. If the write fails, their slots are given back (their bytes go
    /// back when the events drop).
    async fn queue_stored(
        &self,
        only: Option<usize>,
        ready: Vec<(usize, Arc<Admitted>)>,
        change: impl FnOnce(u64, Then) -> Change,
    ) -> Written {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut lanes: Vec<usize> = ready.iter().map(|(lane, _)| *lane).collect();
        lanes.sort_unstable();
        lanes.dedup();
        let count = ready.len() as u64;
        let watchers = self.watchers.clone();
        {
            // Always taken in ascending order, so two batches never wait on each other.
            let _order: Vec<_> = lanes
                .iter()
                .map(|l| self.order[*l].lock().unwrap_or_else(|p| p.into_inner()))
                .collect();
            let first = self.next_seq.fetch_add(count, Ordering::Relaxed);
            let then: Then = Box::new(move |written: Written| {
                let targets: Vec<&WatcherQueue> = match only {
                    Some(i) => watchers.get(i).into_iter().collect(),
                    None => watchers.iter().collect(),
                };
                if written.is_ok() {
                    let accepted_at = Instant::now();
                    for (seq, (lane, admitted)) in (first..).zip(ready) {
                        for w in &targets {
                            w.metrics.queue_depth.inc();
                            let _ = w.lanes[lane].tx.send(Queued {
                                admitted: admitted.clone(),
                                seq,
                                accepted_at,
                            });
                        }
                    }
                } else {
                    for _ in &ready {
                        release_slots(&targets);
                    }
                }
                let _ = tx.send(written);
            });
            self.writer.send(change(first, then));
        }
        rx.await
            .unwrap_or_else(|_| Err(Arc::new(StoreError::WriterStopped)))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

/// Gives back the slots [`Dispatcher::reserve_slots`] took.
fn release_slots(watchers: &[&WatcherQueue]) {
    for w in watchers {
        w.depth.fetch_sub(1, Ordering::Relaxed);
        w.room.notify_one();
    }
}

/// Counts a request in `transformer_admission_waiting` while it waits for room.
struct WaitingGuard(prometheus_client::metrics::gauge::Gauge);

impl WaitingGuard {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        WaitingGuard(gauge.clone())
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What an event costs the memory budget: its data plus its attributes.
fn event_size(e: &CloudEvent) -> usize {
    e.data.len()
        + e.id.len()
        + e.source.len()
        + e.ty.len()
        + e.subject.as_ref().map_or(0, String::len)
        + e.extensions
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + 128
}

impl Workers {
    /// Waits for the queues to drain until `until`; then interrupts delivery
    /// (what is left stays in the store and is delivered after the next
    /// start), and gives the store's writer until `writer_until` to commit the
    /// last acknowledgements.
    pub async fn drain(mut self, until: tokio::time::Instant, writer_until: tokio::time::Instant) {
        let drained = tokio::time::timeout_at(until, async {
            while self.set.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown deadline passed with events still queued; they stay stored for the next start");
            self.hard_stop.cancel();
            while self.set.join_next().await.is_some() {}
        }
        // Every lane worker is gone, and with them the last senders of
        // acknowledgements: the writer commits what they sent and ends. Bounded,
        // so a sender kept alive by mistake cannot keep the process from exiting
        // (its acknowledgements would only mean redeliveries after the restart).
        if tokio::time::timeout_at(writer_until, self.writer.wait())
            .await
            .is_err()
        {
            tracing::warn!("the store's writer did not finish in time; the last acknowledgements may be delivered again after a restart");
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

enum Outcome {
    Delivered,
    GaveUp { error: String, attempts: u32 },
    Interrupted,
}

struct LaneWorker {
    rx: mpsc::UnboundedReceiver<Queued>,
    sink: Arc<dyn Sink>,
    watcher: WatcherId,
    depth: Arc<AtomicUsize>,
    room: Arc<Notify>,
    stalled: Arc<AtomicBool>,
    policy: RetryPolicy,
    metrics: WatcherMetrics,
    /// Acknowledgements go to the store's writer, which commits them with
    /// whatever else has arrived; so a drained shutdown forgets every
    /// delivered event, and a crash at worst delivers a few again.
    writer: Writer,
    hard_stop: CancellationToken,
}

impl LaneWorker {
    async fn run(mut self) {
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
                Outcome::GaveUp { error, attempts } => {
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
                        }),
                        then: Box::new(move |written| {
                            let _ = tx.send(written);
                        }),
                    });
                    rx.await
                        .unwrap_or_else(|_| Err(Arc::new(StoreError::WriterStopped)))
                }
                Outcome::Interrupted => {
                    held = 1;
                    break;
                }
            };
            if let Err(e) = stored {
                tracing::error!(watcher = self.sink.name(), error = %e, "cannot update the event store; the event may be delivered again after a restart");
            }
            self.depth.fetch_sub(1, Ordering::Relaxed);
            self.room.notify_one();
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
            let result = tokio::select! {
                biased;
                _ = self.hard_stop.cancelled() => return Outcome::Interrupted,
                r = self.sink.deliver(event) => r,
            };
            let attempts = backoff.attempts() + 1;
            self.stalled
                .store(matches!(&result, Err(e) if e.retryable), Ordering::Relaxed);
            match result {
                Ok(()) => return Outcome::Delivered,
                Err(DeliveryError {
                    retryable: true,
                    message,
                }) if self.policy.attempts == 0 || attempts < self.policy.attempts => {
                    self.metrics.retries.inc();
                    let delay = backoff.next_delay();
                    tracing::warn!(watcher = self.sink.name(), id = %event.id, attempt = attempts, ?delay, error = %message, "delivery failed; will retry");
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
                    }
                }
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
