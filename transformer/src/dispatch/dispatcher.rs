//! The dispatcher: fans each event out to every watcher's queue, backed by the
//! durable [`Store`]. Each watcher's queue is split into lanes by ordering key
//! ([`super::lane`]); admission bounds the queues ([`super::admission`]).
//!
//! An event is written to the store (by the writer thread) before it is queued
//! and before its producer is answered; it is removed when its watcher
//! acknowledges it, and buried as a dead letter when its retries run out. What
//! is still stored when the process starts is queued again first, in its old
//! order.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::admission::{event_size, release_slots, Admission, Admitted, Refused, Slots};
use super::forward::{DeadLetterSink, Forwarder};
use super::lane::{Lane, LaneWorker, Queued};
use super::pacer::Pacer;
use super::writer::{Change, Finished, Then, Writer, Written};
use super::Sink;
use crate::cloudevent::CloudEvent;
use crate::config::RetryPolicy;
use crate::metrics::{Metrics, WatcherMetrics};
use crate::store::{encode_event, now_ms, DeadLetter, Store, StoreError, WatcherId};
use crate::triggers::Filter;

/// An event's name in the deduplication journal (a hash of its `source` and
/// `id`); events without a name of their own have none.
pub type Name = [u8; 12];

/// The watchers an event goes to, as indices into the dispatcher's list.
type Targets = Arc<[usize]>;

/// A watcher: where its events go, which of them it wants, how each is retried.
pub struct Route {
    pub sink: Arc<dyn Sink>,
    /// `None`: every event.
    pub filter: Option<Arc<Filter>>,
    pub policy: RetryPolicy,
    /// A trigger's `rateLimit`.
    pub pace: Option<Arc<Pacer>>,
    /// A trigger's `deadLetterSink`.
    pub dead_letter_sink: Option<DeadLetterSink>,
}

impl Route {
    /// A watcher of every event, with `policy`.
    pub fn plain(sink: Arc<dyn Sink>, policy: RetryPolicy) -> Route {
        Route {
            sink,
            filter: None,
            policy,
            pace: None,
            dead_letter_sink: None,
        }
    }
}

struct WatcherQueue {
    id: WatcherId,
    lanes: Vec<Lane>,
    /// Events queued for this watcher, all lanes together: bounded by
    /// `TRANSFORMER_QUEUE_CAPACITY`, whichever configurations they belong to.
    slots: Arc<Slots>,
    metrics: WatcherMetrics,
    filter: Option<Arc<Filter>>,
}

/// Fans events out to every watcher's queue. Dropping it lets the workers drain.
pub struct Dispatcher {
    /// Shared with the writer thread, which queues events once they are stored.
    watchers: Arc<[WatcherQueue]>,
    ids: Arc<[WatcherId]>,
    /// Every watcher, for events when no watcher has a filter.
    all: Targets,
    filtered: bool,
    store: Arc<Store>,
    writer: Writer,
    admission: Admission,
    admit_wait: std::time::Duration,
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
    /// The dead-letter sinks' forwarders: stopped first at shutdown (what
    /// they did not send stays stored).
    forwarders: JoinSet<()>,
    forwarding: CancellationToken,
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
        routes: Vec<Route>,
        limits: Limits,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> Result<(Dispatcher, Workers), StoreError> {
        let hard_stop = CancellationToken::new();
        let forwarding = CancellationToken::new();
        let mut set = JoinSet::new();
        let mut forwarders = JoinSet::new();
        let (writer, finished) =
            Writer::start(store.clone(), metrics.store_write.clone()).map_err(StoreError::Log)?;
        let lanes = limits.lanes.max(1);
        let mut watchers = Vec::with_capacity(routes.len());
        for Route {
            sink,
            filter,
            policy,
            pace,
            dead_letter_sink,
        } in routes
        {
            let id = store.register_watcher(sink.identity(), sink.name())?;
            let buried = dead_letter_sink.map(|to| {
                let wake = Arc::new(tokio::sync::Notify::new());
                forwarders.spawn(
                    Forwarder {
                        to,
                        watcher: id,
                        store: store.clone(),
                        wake: wake.clone(),
                        base: policy.base,
                        cap: policy.cap,
                        stop: forwarding.clone(),
                    }
                    .run(),
                );
                wake
            });
            let wm = metrics.watcher(sink.name());
            let slots = Slots::new(sink.name(), limits.capacity);
            let lanes = (0..lanes)
                .map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let stalled = Arc::new(AtomicBool::new(false));
                    set.spawn(
                        LaneWorker {
                            rx,
                            sink: sink.clone(),
                            watcher: id,
                            slots: slots.clone(),
                            stalled: stalled.clone(),
                            policy: policy.clone(),
                            metrics: wm.clone(),
                            writer: writer.clone(),
                            hard_stop: hard_stop.clone(),
                            pace: pace.clone(),
                            buried: buried.clone(),
                        }
                        .run(),
                    );
                    Lane { tx, stalled }
                })
                .collect();
            watchers.push(WatcherQueue {
                id,
                lanes,
                slots,
                metrics: wm,
                filter,
            });
        }
        let dispatcher = Dispatcher {
            ids: watchers.iter().map(|w| w.id).collect(),
            all: (0..watchers.len()).collect(),
            filtered: watchers.iter().any(|w| w.filter.is_some()),
            watchers: watchers.into(),
            writer,
            admission: Admission::new(limits.max_bytes, metrics.admission_waiting.clone()),
            admit_wait: limits.admit_wait,
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
                forwarders,
                forwarding,
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
                    let admitted = self.admission.admit_unchecked(event);
                    w.slots.take_unchecked();
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
                        code: 0,
                        data: Vec::new(),
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

    /// The watchers whose filters pass `event` (every one when none filters);
    /// each one passed over counts it.
    fn targets_of(&self, event: &CloudEvent) -> Targets {
        if !self.filtered {
            return self.all.clone();
        }
        let mut wanted = Vec::with_capacity(self.watchers.len());
        for (i, w) in self.watchers.iter().enumerate() {
            match &w.filter {
                Some(f) if !f.matches(event) => {
                    w.metrics.filtered.inc();
                }
                _ => wanted.push(i),
            }
        }
        wanted.into()
    }

    /// The store's ids of `targets`.
    fn ids_of(&self, targets: &Targets) -> Arc<[WatcherId]> {
        if Arc::ptr_eq(targets, &self.all) {
            return self.ids.clone();
        }
        targets.iter().map(|i| self.watchers[*i].id).collect()
    }

    fn lane_of(&self, event: &CloudEvent) -> usize {
        lane_index(event.ordering_key(), self.order.len())
    }

    /// Takes room for an event on `lane` of every target, waiting up to `wait`
    /// unless that lane of a target is retrying a failed delivery.
    async fn reserve(
        &self,
        targets: &[usize],
        lane: usize,
        size: usize,
        wait: std::time::Duration,
    ) -> Result<(), Refused> {
        let targets: Vec<&WatcherQueue> = targets.iter().map(|i| &self.watchers[*i]).collect();
        let slots: Vec<&Slots> = targets.iter().map(|w| &*w.slots).collect();
        let stalled = || {
            targets
                .iter()
                .any(|w| w.lanes[lane].stalled.load(Ordering::Relaxed))
        };
        self.admission.reserve(&slots, stalled, size, wait).await
    }

    /// Stores the event for every watcher and queues it, or refuses it whole. When
    /// this returns Ok the event is as durable as the fsync policy promises.
    /// `name`, when the event has one, goes to the deduplication journal with it.
    pub async fn dispatch(&self, event: CloudEvent, name: Option<Name>) -> Result<(), Refused> {
        self.dispatch_many(vec![(event, name)])
            .await
            .pop()
            .unwrap_or(Ok(()))
    }

    /// [`Dispatcher::dispatch`] for many events at once, with one outcome each, in
    /// order. Each event waits for room on its own; those admitted are stored with
    /// one write and one fsync between them, which is what makes a batch cheaper
    /// than its events one by one. Once an event is refused, the later events
    /// of its configuration (its ordering key) in the batch are refused too:
    /// taking them would put them before it when its producer sends it again.
    pub async fn dispatch_many(
        &self,
        events: Vec<(CloudEvent, Option<Name>)>,
    ) -> Vec<Result<(), Refused>> {
        if self.watchers.is_empty() {
            return self.remember_only(events).await;
        }
        let plans: Vec<(usize, usize, Targets)> = events
            .iter()
            .map(|(e, _)| (self.lane_of(e), event_size(e), self.targets_of(e)))
            .collect();
        // An event no watcher wants takes no room: it is stored for nobody.
        let rooms = futures::future::join_all(plans.iter().map(|(lane, size, targets)| async {
            if targets.is_empty() {
                return Ok(());
            }
            self.reserve(targets, *lane, *size, self.admit_wait).await
        }))
        .await;
        let mut results = Vec::with_capacity(events.len());
        let mut admitted_at = Vec::new();
        let mut ready = Vec::new();
        let mut remembered = Vec::new();
        let mut held_back: Vec<String> = Vec::new();
        let now = crate::dedup::now_secs();
        for (((event, name), (lane, size, targets)), room) in
            events.into_iter().zip(plans).zip(rooms)
        {
            let key = event.ordering_key();
            match room {
                Ok(()) if held_back.iter().any(|k| k == key) => {
                    let slots: Vec<&Slots> =
                        targets.iter().map(|i| &*self.watchers[*i].slots).collect();
                    release_slots(&slots);
                    if !targets.is_empty() {
                        drop(self.admission.admitted(event, size));
                    }
                    results.push(Err(Refused::Behind));
                }
                Ok(()) => {
                    admitted_at.push(results.len());
                    remembered.extend(name.map(|n| (n, now)));
                    if !targets.is_empty() {
                        ready.push((lane, self.admission.admitted(event, size), targets));
                    }
                    results.push(Ok(()));
                }
                Err(refused) => {
                    held_back.push(key.to_owned());
                    results.push(Err(refused));
                }
            }
        }
        if ready.is_empty() && remembered.is_empty() {
            return results;
        }
        let encoded: Vec<(Vec<u8>, Arc<[WatcherId]>)> = ready
            .iter()
            .map(|(_, admitted, targets)| (encode_event(&admitted.event), self.ids_of(targets)))
            .collect();
        let stored = self
            .queue_stored(ready, |first, then| Change::Append {
                events: (first..)
                    .zip(encoded)
                    .map(|(seq, (bytes, ids))| (seq, bytes, ids))
                    .collect(),
                remembered,
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

    /// With no watcher, events are taken and delivered to nobody; their names
    /// are still remembered, so a repeat is still answered as one.
    async fn remember_only(
        &self,
        events: Vec<(CloudEvent, Option<Name>)>,
    ) -> Vec<Result<(), Refused>> {
        let now = crate::dedup::now_secs();
        let remembered: Vec<_> = events
            .iter()
            .filter_map(|(_, name)| name.map(|n| (n, now)))
            .collect();
        if !remembered.is_empty() {
            let stored = self
                .queue_stored(Vec::new(), |_, then| Change::Append {
                    events: Vec::new(),
                    remembered,
                    then,
                })
                .await;
            if let Err(e) = stored {
                return events
                    .iter()
                    .map(|_| Err(Refused::Store(e.clone())))
                    .collect();
            }
        }
        events.iter().map(|_| Ok(())).collect()
    }

    /// Queues a dead letter again for its watcher, after what is queued now.
    pub async fn replay(&self, letter: DeadLetter) -> Result<(), Refused> {
        let Some(index) = self.watchers.iter().position(|w| w.id == letter.watcher) else {
            return Err(Refused::UnknownWatcher(letter.watcher_name));
        };
        let targets: Targets = Arc::from([index]);
        let lane = self.lane_of(&letter.event);
        let size = event_size(&letter.event);
        // Replays take what room there is and stop; only producers wait.
        self.reserve(&targets, lane, size, std::time::Duration::ZERO)
            .await?;
        let ready = vec![(
            lane,
            self.admission.admitted(letter.event.clone(), size),
            targets,
        )];
        self.queue_stored(ready, |seq, then| Change::Resurrect {
            letter: Box::new(letter),
            seq,
            then,
        })
        .await
        .map_err(Refused::Store)
    }

    /// Gives admitted events their sequence numbers (from the first one passed
    /// to `change`), sends their store write to the writer thread under the
    /// lanes' order locks, and waits for it. The writer queues each event on
    /// its lane of each of its target watchers once they are stored, in the
    /// order they were sent, so the store's order and each lane's order
    /// agree. If the write fails, their slots are given back (their bytes go
    /// back when the events drop).
    async fn queue_stored(
        &self,
        ready: Vec<(usize, Arc<Admitted>, Targets)>,
        change: impl FnOnce(u64, Then) -> Change,
    ) -> Written {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut lanes: Vec<usize> = ready.iter().map(|(lane, _, _)| *lane).collect();
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
                if written.is_ok() {
                    let accepted_at = Instant::now();
                    for (seq, (lane, admitted, targets)) in (first..).zip(ready) {
                        for w in targets.iter().filter_map(|i| watchers.get(*i)) {
                            w.metrics.queue_depth.inc();
                            let _ = w.lanes[lane].tx.send(Queued {
                                admitted: admitted.clone(),
                                seq,
                                accepted_at,
                            });
                        }
                    }
                } else {
                    for (_, _, targets) in &ready {
                        for w in targets.iter().filter_map(|i| watchers.get(*i)) {
                            w.slots.release();
                        }
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

impl Workers {
    /// Waits for the queues to drain until `until`; then interrupts delivery
    /// (what is left stays in the store and is delivered after the next
    /// start), and gives the store's writer until `writer_until` to commit the
    /// last acknowledgements.
    pub async fn drain(mut self, until: tokio::time::Instant, writer_until: tokio::time::Instant) {
        self.forwarding.cancel();
        while self.forwarders.join_next().await.is_some() {}
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
