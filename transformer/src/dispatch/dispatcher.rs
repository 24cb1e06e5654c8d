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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::{event_size, release_slots, Admission, Admitted, Refused, Slots};
use super::lane::Queued;
use super::routing::{self, Fate, Route, Routing, Spawner, Targets, WatcherQueue};

use super::writer::{Change, Finished, Then, Writer, Written};
use crate::cloudevent::CloudEvent;
use crate::metrics::Metrics;
use crate::store::{encode_event, now_ms, DeadLetter, Store, StoreError, WatcherId};

/// An event's name in the deduplication journal (a hash of its `source` and
/// `id`); events without a name of their own have none.
pub type Name = [u8; 12];

/// Where an event of a batch goes: its lane, its size, and the watchers
/// that want it.
type Plan = (usize, usize, Targets);

/// A batch's events sorted by the room they got, before the admitted are
/// stored.
#[derive(Default)]
struct Sorted {
    /// One outcome per event, in order.
    results: Vec<Result<(), Refused>>,
    /// The places (in `results`) of the events admitted.
    admitted_at: Vec<usize>,
    /// The admitted events some watcher wants, with their lanes and watchers.
    ready: Vec<(usize, Arc<Admitted>, Targets)>,
    /// The names of the admitted events, with the second they were taken.
    remembered: Vec<(Name, u32)>,
    /// Configurations an event of which was refused.
    held_back: Vec<String>,
}

/// Fans events out to every watcher's queue. Dropping it lets the workers drain.
pub struct Dispatcher {
    /// The watchers now; each request reads one and keeps to it (the writer
    /// thread queues a request's events on the watchers it read).
    routing: RwLock<Arc<Routing>>,
    /// Starts the workers of watchers a reload adds.
    spawner: Spawner,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Counts the events no watcher wanted.
    for_nobody: prometheus_client::metrics::counter::Counter,
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
    workers: TaskTracker,
    hard_stop: CancellationToken,
    writer: Finished,
    /// The dead-letter sinks' forwarders: stopped first at shutdown (what
    /// they did not send stays stored).
    forwarders: TaskTracker,
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
        let (writer, finished) =
            Writer::start(store.clone(), metrics.store_write.clone()).map_err(StoreError::Log)?;
        let lanes = limits.lanes.max(1);
        let spawner = Spawner {
            store: store.clone(),
            writer: writer.clone(),
            metrics: metrics.clone(),
            lanes,
            capacity: limits.capacity,
            hard_stop: CancellationToken::new(),
            workers: TaskTracker::new(),
            forwarders: TaskTracker::new(),
            forwarding: CancellationToken::new(),
        };
        let watchers = routes
            .into_iter()
            .map(|r| spawner.start(r))
            .collect::<Result<Vec<_>, _>>()?;
        let workers = Workers {
            workers: spawner.workers.clone(),
            hard_stop: spawner.hard_stop.clone(),
            writer: finished,
            forwarders: spawner.forwarders.clone(),
            forwarding: spawner.forwarding.clone(),
        };
        let dispatcher = Dispatcher {
            routing: RwLock::new(Arc::new(Routing::new(watchers))),
            spawner,
            reloading: tokio::sync::Mutex::new(()),
            for_nobody: metrics.intake.for_nobody.clone(),
            writer,
            admission: Admission::new(limits.max_bytes, metrics.intake.admission_waiting.clone()),
            admit_wait: limits.admit_wait,
            next_seq: AtomicU64::new(store.max_seq()? + 1),
            order: (0..lanes).map(|_| Mutex::new(())).collect(),
            store,
        };
        dispatcher.recover()?;
        Ok((dispatcher, workers))
    }

    /// The watchers now.
    fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes a new set of triggers: unchanged ones keep their queues and
    /// workers; one whose filter alone changed keeps them with the new
    /// filter; one whose delivery changed hands its queue to new workers; a
    /// new one starts; a removed one is retired (what is queued for it
    /// becomes dead letters, nothing more is delivered to it). The watchers
    /// no trigger made are not touched. Events taken from now on see the
    /// new set.
    pub async fn reload(&self, routes: Vec<Route>) -> Result<(), StoreError> {
        let _one = self.reloading.lock().await;
        let current = self.routing();
        let (fates, retired) = routing::plan(&current.watchers, routes);
        let mut next = Vec::with_capacity(fates.len());
        for fate in fates {
            next.push(match fate {
                Fate::Keep(i) => current.watchers[i].clone(),
                Fate::Refilter(i, route) => self.spawner.refilter(&current.watchers[i], route),
                Fate::Replace(i, route) => {
                    self.spawner.replace(&current.watchers[i], route).await?
                }
                Fate::Start(route) => self.spawner.start(route)?,
            });
        }
        *self.routing.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Routing::new(next));
        for i in retired {
            Spawner::retire(&current.watchers[i]);
        }
        Ok(())
    }

    fn recover(&self) -> Result<(), StoreError> {
        let routing = self.routing();
        let mut requeued = 0usize;
        let mut buried = 0usize;
        for (watcher, seq, event) in self.store.queued()? {
            match routing.watchers.iter().find(|w| w.id == watcher) {
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

    fn lane_of(&self, event: &CloudEvent) -> usize {
        lane_index(event.ordering_key(), self.order.len())
    }

    /// Takes room for an event on `lane` of every target, waiting up to `wait`
    /// unless that lane of a target is retrying a failed delivery.
    async fn reserve(
        &self,
        routing: &Routing,
        targets: &[usize],
        lane: usize,
        size: usize,
        wait: std::time::Duration,
    ) -> Result<(), Refused> {
        let targets: Vec<&WatcherQueue> = targets.iter().map(|i| &*routing.watchers[*i]).collect();
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
        let routing = self.routing();
        if routing.watchers.is_empty() {
            return self.remember_only(events).await;
        }
        let plans: Vec<Plan> = events
            .iter()
            .map(|(e, _)| (self.lane_of(e), event_size(e), routing.targets_of(e)))
            .collect();
        // An event no watcher wants takes no room: it is stored for nobody.
        let rooms = futures::future::join_all(plans.iter().map(|(lane, size, targets)| async {
            if targets.is_empty() {
                return Ok(());
            }
            self.reserve(&routing, targets, *lane, *size, self.admit_wait)
                .await
        }))
        .await;
        let mut sorted = Sorted::default();
        let now = crate::dedup::now_secs();
        for ((event, plan), room) in events.into_iter().zip(plans).zip(rooms) {
            self.sort(&routing, &mut sorted, event, plan, room, now);
        }
        let Sorted {
            mut results,
            admitted_at,
            ready,
            remembered,
            ..
        } = sorted;
        if ready.is_empty() && remembered.is_empty() {
            return results;
        }
        let encoded: Vec<(Vec<u8>, Arc<[WatcherId]>)> = ready
            .iter()
            .map(|(_, admitted, targets)| (encode_event(&admitted.event), routing.ids_of(targets)))
            .collect();
        let stored = self
            .queue_stored(routing.clone(), ready, |first, then| Change::Append {
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

    /// Puts one event of a batch where its room says: admitted (to store, or
    /// for nobody), refused (holding back its configuration's later events),
    /// or refused as behind one refused before it (its room given back).
    fn sort(
        &self,
        routing: &Routing,
        sorted: &mut Sorted,
        (event, name): (CloudEvent, Option<Name>),
        (lane, size, targets): Plan,
        room: Result<(), Refused>,
        now: u32,
    ) {
        let key = event.ordering_key();
        match room {
            Ok(()) if sorted.held_back.iter().any(|k| k == key) => {
                let slots: Vec<&Slots> = targets
                    .iter()
                    .map(|i| &*routing.watchers[*i].slots)
                    .collect();
                release_slots(&slots);
                if !targets.is_empty() {
                    drop(self.admission.admitted(event, size));
                }
                sorted.results.push(Err(Refused::Behind));
            }
            Ok(()) => {
                sorted.admitted_at.push(sorted.results.len());
                sorted.remembered.extend(name.map(|n| (n, now)));
                if targets.is_empty() {
                    self.for_nobody.inc();
                } else {
                    let admitted = self.admission.admitted(event, size);
                    sorted.ready.push((lane, admitted, targets));
                }
                sorted.results.push(Ok(()));
            }
            Err(refused) => {
                sorted.held_back.push(key.to_owned());
                sorted.results.push(Err(refused));
            }
        }
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
                .queue_stored(self.routing(), Vec::new(), |_, then| Change::Append {
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
        let routing = self.routing();
        let Some(index) = routing.watchers.iter().position(|w| w.id == letter.watcher) else {
            return Err(Refused::UnknownWatcher(letter.watcher_name));
        };
        let targets: Targets = Arc::from([index]);
        let lane = self.lane_of(&letter.event);
        let size = event_size(&letter.event);
        // Replays take what room there is and stop; only producers wait.
        self.reserve(&routing, &targets, lane, size, std::time::Duration::ZERO)
            .await?;
        let ready = vec![(
            lane,
            self.admission.admitted(letter.event.clone(), size),
            targets,
        )];
        self.queue_stored(routing.clone(), ready, |seq, then| Change::Resurrect {
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
        routing: Arc<Routing>,
        ready: Vec<(usize, Arc<Admitted>, Targets)>,
        change: impl FnOnce(u64, Then) -> Change,
    ) -> Written {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut lanes: Vec<usize> = ready.iter().map(|(lane, _, _)| *lane).collect();
        lanes.sort_unstable();
        lanes.dedup();
        let count = ready.len() as u64;
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
                        for w in targets.iter().filter_map(|i| routing.watchers.get(*i)) {
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
                        for w in targets.iter().filter_map(|i| routing.watchers.get(*i)) {
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
    pub async fn drain(self, until: tokio::time::Instant, writer_until: tokio::time::Instant) {
        self.forwarding.cancel();
        self.forwarders.close();
        self.forwarders.wait().await;
        self.workers.close();
        let drained = tokio::time::timeout_at(until, self.workers.wait()).await;
        if drained.is_err() {
            tracing::warn!("shutdown deadline passed with events still queued; they stay stored for the next start");
            self.hard_stop.cancel();
            self.workers.wait().await;
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
