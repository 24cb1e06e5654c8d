//! The watchers an event can go to, and what starts and retires them. The
//! dispatcher reads one [`Routing`] per request; a reload of the triggers
//! builds the next one (keeping the watchers whose triggers did not change,
//! sharing the queue of those whose filter alone changed, handing the queue
//! of those whose delivery changed to new workers, retiring the removed) and
//! swaps it in whole.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::Slots;
use super::forward::{DeadLetterSink, Forwarder};
use super::lane::{Handover, Lane, LaneWorker, Queued, Retirement};
use super::pacer::Pacer;
use super::writer::Writer;
use super::Sink;
use crate::cloudevent::CloudEvent;
use crate::config::RetryPolicy;
use crate::metrics::{Metrics, WatcherMetrics};
use crate::store::{Store, StoreError, WatcherId};
use crate::triggers::Filter;

/// The watchers an event goes to, as indices into a [`Routing`]'s list.
pub type Targets = Arc<[usize]>;

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
    /// A trigger's name and what it was made of; `None` for the watchers of
    /// `SENSOR_WATCHERS`, `GATEWAY_WATCHERS` and NATS, which no reload touches.
    pub trigger: Option<TriggerKey>,
}

/// What tells a trigger's versions apart: the same name with the same
/// delivery keeps its queue and workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerKey {
    pub name: String,
    /// Subscriber, delivery settings, dead-letter sink and rate limit.
    pub delivery: String,
    pub filter: String,
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
            trigger: None,
        }
    }
}

pub struct WatcherQueue {
    pub id: WatcherId,
    pub lanes: Arc<[Lane]>,
    /// Events queued for this watcher, all lanes together: bounded by
    /// `TRANSFORMER_QUEUE_CAPACITY`, whichever configurations they belong to.
    pub slots: Arc<Slots>,
    pub metrics: WatcherMetrics,
    pub filter: Option<Arc<Filter>>,
    pub trigger: Option<TriggerKey>,
    /// One per lane: how a reload retires its worker.
    retire: Vec<mpsc::UnboundedSender<Retirement>>,
    /// Stops the dead-letter sink's forwarder, if it has one.
    forwarding: CancellationToken,
}

/// The watchers, as one request sees them.
pub struct Routing {
    pub watchers: Vec<Arc<WatcherQueue>>,
    pub ids: Arc<[WatcherId]>,
    /// Every watcher, for events when no watcher has a filter.
    pub all: Targets,
    filtered: bool,
}

impl Routing {
    pub fn new(watchers: Vec<Arc<WatcherQueue>>) -> Routing {
        Routing {
            ids: watchers.iter().map(|w| w.id).collect(),
            all: (0..watchers.len()).collect(),
            filtered: watchers.iter().any(|w| w.filter.is_some()),
            watchers,
        }
    }

    /// The watchers whose filters pass `event` (every one when none filters);
    /// each one passed over counts it.
    pub fn targets_of(&self, event: &CloudEvent) -> Targets {
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
    pub fn ids_of(&self, targets: &Targets) -> Arc<[WatcherId]> {
        if Arc::ptr_eq(targets, &self.all) {
            return self.ids.clone();
        }
        targets.iter().map(|i| self.watchers[*i].id).collect()
    }
}

/// What starting a watcher's workers takes.
pub struct Spawner {
    pub store: Arc<Store>,
    pub writer: Writer,
    pub metrics: Arc<Metrics>,
    pub lanes: usize,
    pub capacity: usize,
    pub hard_stop: CancellationToken,
    /// Every lane worker.
    pub workers: TaskTracker,
    /// Every dead-letter sink's forwarder, and what stops them all.
    pub forwarders: TaskTracker,
    pub forwarding: CancellationToken,
}

impl Spawner {
    /// A new watcher with its lanes and workers (and its forwarder).
    pub fn start(&self, route: Route) -> Result<Arc<WatcherQueue>, StoreError> {
        let id = self
            .store
            .register_watcher(route.sink.identity(), route.sink.name())?;
        let slots = Slots::new(route.sink.name(), self.capacity);
        let lanes = (0..self.lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel::<Queued>();
                let lane = Lane {
                    tx,
                    stalled: Arc::new(AtomicBool::new(false)),
                };
                (lane, (rx, None))
            })
            .collect();
        self.assemble(id, route, slots, lanes)
    }

    /// A changed trigger's new definition, taking over `old`'s queue: its
    /// workers hand their queues (and what they were delivering) over, and
    /// the new workers go on from there, in the same order.
    pub async fn replace(
        &self,
        old: &WatcherQueue,
        route: Route,
    ) -> Result<Arc<WatcherQueue>, StoreError> {
        let mut queues = Vec::with_capacity(old.retire.len());
        for retire in &old.retire {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if retire.send(Retirement::HandOver(tx)).is_err() {
                continue;
            }
            if let Ok(handed) = rx.await {
                queues.push(handed);
            }
        }
        old.forwarding.cancel();
        let lanes = old
            .lanes
            .iter()
            .map(|l| Lane {
                tx: l.tx.clone(),
                stalled: l.stalled.clone(),
            })
            .zip(queues)
            .collect();
        self.assemble(old.id, route, old.slots.clone(), lanes)
    }

    /// `old` with another filter: the same queue and workers.
    pub fn refilter(&self, old: &WatcherQueue, route: Route) -> Arc<WatcherQueue> {
        Arc::new(WatcherQueue {
            id: old.id,
            lanes: old.lanes.clone(),
            slots: old.slots.clone(),
            metrics: old.metrics.clone(),
            filter: route.filter,
            trigger: route.trigger,
            retire: old.retire.clone(),
            forwarding: old.forwarding.clone(),
        })
    }

    /// A removed trigger: its workers bury what is queued as dead letters,
    /// its forwarder stops.
    pub fn retire(old: &WatcherQueue) {
        for r in &old.retire {
            let _ = r.send(Retirement::Remove);
        }
        old.forwarding.cancel();
    }

    /// A worker for each lane, reading its queue (first the event it is
    /// given, if any), and the forwarder.
    fn assemble(
        &self,
        id: WatcherId,
        route: Route,
        slots: Arc<Slots>,
        lanes: Vec<(Lane, Handover)>,
    ) -> Result<Arc<WatcherQueue>, StoreError> {
        let Route {
            sink,
            filter,
            policy,
            pace,
            dead_letter_sink,
            trigger,
        } = route;
        let metrics = self.metrics.watcher(sink.name());
        let forwarding = self.forwarding.child_token();
        let buried = dead_letter_sink.map(|to| {
            let wake = Arc::new(tokio::sync::Notify::new());
            self.forwarders.spawn(
                Forwarder {
                    to,
                    watcher: id,
                    store: self.store.clone(),
                    wake: wake.clone(),
                    base: policy.base,
                    cap: policy.cap,
                    stop: forwarding.clone(),
                }
                .run(),
            );
            wake
        });
        let mut retire = Vec::with_capacity(lanes.len());
        let mut senders = Vec::with_capacity(lanes.len());
        for (lane, (rx, first)) in lanes {
            let (retire_tx, retire_rx) = mpsc::unbounded_channel();
            retire.push(retire_tx);
            self.workers.spawn(
                LaneWorker {
                    rx,
                    sink: sink.clone(),
                    watcher: id,
                    slots: slots.clone(),
                    stalled: lane.stalled.clone(),
                    policy: policy.clone(),
                    metrics: metrics.clone(),
                    writer: self.writer.clone(),
                    hard_stop: self.hard_stop.clone(),
                    pace: pace.clone(),
                    buried: buried.clone(),
                    retire: retire_rx,
                    first,
                }
                .run(),
            );
            senders.push(lane);
        }
        Ok(Arc::new(WatcherQueue {
            id,
            lanes: senders.into(),
            slots,
            metrics,
            filter,
            trigger,
            retire,
            forwarding,
        }))
    }
}

/// Which of `current` a reload keeps, refilters, replaces or retires, for
/// the triggers of `routes`.
pub enum Fate {
    Keep(usize),
    Refilter(usize, Route),
    Replace(usize, Route),
    Start(Route),
}

/// Matches each new route to the current watcher of its trigger's name;
/// returns the fates in the new order and the indices left to retire.
pub fn plan(current: &[Arc<WatcherQueue>], routes: Vec<Route>) -> (Vec<Fate>, Vec<usize>) {
    let mut fates = Vec::new();
    let mut kept: HashSet<usize> = HashSet::new();
    // The watchers no trigger made stay, first, as they are.
    for (i, w) in current.iter().enumerate() {
        if w.trigger.is_none() {
            fates.push(Fate::Keep(i));
            kept.insert(i);
        }
    }
    for route in routes {
        let Some(key) = route.trigger.clone() else {
            continue;
        };
        let old = current
            .iter()
            .position(|w| w.trigger.as_ref().is_some_and(|t| t.name == key.name));
        let fate = match old {
            Some(i) => {
                kept.insert(i);
                let t = current[i].trigger.as_ref();
                match t {
                    Some(t) if t.delivery == key.delivery && t.filter == key.filter => {
                        Fate::Keep(i)
                    }
                    Some(t) if t.delivery == key.delivery => Fate::Refilter(i, route),
                    _ => Fate::Replace(i, route),
                }
            }
            None => Fate::Start(route),
        };
        fates.push(fate);
    }
    let retired = (0..current.len()).filter(|i| !kept.contains(i)).collect();
    (fates, retired)
}
