//! Admission: whether an event may enter the queues at all. Two bounds hold at
//! once: a count per watcher (`TRANSFORMER_QUEUE_CAPACITY`, all lanes of the
//! watcher together) and the bytes of every queued event across all watchers
//! (`TRANSFORMER_QUEUE_MAX_BYTES`). Admission is all-or-nothing across watchers:
//! an event is queued for every watcher or refused, and a refusal is a 503,
//! never growth. A producer that finds a queue full may wait a little for room
//! (a burst only slows it), except while the watcher is failing, when no room
//! is coming and the refusal is immediate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::cloudevent::CloudEvent;
use crate::store::StoreError;

/// Why an event was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the queue for watcher {watcher} is full")]
    Full { watcher: String },
    #[error("queued events already hold the memory budget of {max} bytes")]
    OverBudget { max: usize },
    #[error("no watcher {0} is configured")]
    UnknownWatcher(String),
    /// An earlier event of the same configuration in the same batch was
    /// refused; this one waits for it, so that order holds.
    #[error("an earlier event of this configuration in the batch was refused, and this one may not overtake it")]
    Behind,
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

impl Budget {
    /// Takes `size` bytes, or refuses. An event larger than the whole budget is
    /// still taken when nothing else is queued, so it can never starve.
    fn try_take(&self, size: usize) -> Result<(), Refused> {
        let before = self.used.fetch_add(size, Ordering::Relaxed);
        if before > 0 && before + size > self.max {
            self.used.fetch_sub(size, Ordering::Relaxed);
            return Err(Refused::OverBudget { max: self.max });
        }
        Ok(())
    }
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

/// One watcher's queued events, all its lanes together.
pub struct Slots {
    name: String,
    depth: AtomicUsize,
    capacity: usize,
    /// Woken once per event any of its lanes finishes.
    room: Notify,
}

impl Slots {
    pub fn new(name: &str, capacity: usize) -> Arc<Slots> {
        Arc::new(Slots {
            name: name.to_owned(),
            depth: AtomicUsize::new(0),
            capacity: capacity.max(1),
            room: Notify::new(),
        })
    }

    /// Counts an event that is queued whatever the bound (recovery at start).
    pub fn take_unchecked(&self) {
        self.depth.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives a slot back: its event was delivered, buried or never stored.
    pub fn release(&self) {
        self.depth.fetch_sub(1, Ordering::Relaxed);
        self.room.notify_one();
    }

    /// Wakes every producer waiting for room here, to look again: one of the
    /// watcher's lanes has started failing, and its producers are refused.
    pub fn wake_waiters(&self) {
        self.room.notify_waiters();
    }

    #[cfg(test)]
    fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}

/// The bounds every event passes before it is stored and queued.
pub struct Admission {
    budget: Arc<Budget>,
    /// `transformer_admission_waiting`: requests waiting for room now.
    waiting: Gauge,
}

impl Admission {
    pub fn new(max_bytes: usize, waiting: Gauge) -> Admission {
        Admission {
            budget: Arc::new(Budget {
                used: AtomicUsize::new(0),
                max: max_bytes.max(1),
                freed: Notify::new(),
            }),
            waiting,
        }
    }

    /// Wraps an event whose bytes [`Admission::reserve`] already took.
    pub fn admitted(&self, event: CloudEvent, size: usize) -> Arc<Admitted> {
        Arc::new(Admitted {
            event,
            size,
            budget: self.budget.clone(),
        })
    }

    /// Admits an event whatever the bounds: events stored by an earlier run are
    /// queued again at start, even if they are more than the bounds allow now.
    pub fn admit_unchecked(&self, event: CloudEvent) -> Arc<Admitted> {
        let size = event_size(&event);
        self.budget.used.fetch_add(size, Ordering::Relaxed);
        self.admitted(event, size)
    }

    /// Takes a slot of every target and `size` bytes, waiting up to `wait` for
    /// room. Waiting holds the producer's request open instead of answering 503
    /// at once: under a burst the producer is simply slowed, and no retry round
    /// trip is spent; only a queue that stays full refuses. While `stalled`
    /// says the event's lane is retrying a failed delivery no room is coming
    /// soon, so then the refusal is immediate: a producer facing a dead sensor
    /// is never held.
    pub async fn reserve(
        &self,
        targets: &[&Slots],
        stalled: impl Fn() -> bool,
        size: usize,
        wait: Duration,
    ) -> Result<(), Refused> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut counted: Option<WaitingGuard> = None;
        loop {
            let blocked = match reserve_slots(targets) {
                Ok(()) => match self.budget.try_take(size) {
                    Ok(()) => return Ok(()),
                    Err(refused) => {
                        release_slots(targets);
                        (refused, None)
                    }
                },
                Err((refused, full)) => (refused, Some(full)),
            };
            // Made before `stalled` is read: a lane that starts failing after the
            // read wakes every waiter of its watcher (Notify::notify_waiters
            // reaches a Notified from its making), and a slot freed meanwhile is
            // kept as a permit; so no wakeup is missed, and each is checked again.
            let woken = match blocked.1 {
                Some(i) => targets[i].room.notified(),
                None => self.budget.freed.notified(),
            };
            if stalled() || tokio::time::Instant::now() >= deadline {
                return Err(blocked.0);
            }
            if counted.is_none() {
                counted = Some(WaitingGuard::new(&self.waiting));
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(blocked.0);
            }
        }
    }
}

/// Reserves a slot in the queue of each target, or none of them; on refusal,
/// says which target's queue was full.
fn reserve_slots(targets: &[&Slots]) -> Result<(), (Refused, usize)> {
    for (i, w) in targets.iter().enumerate() {
        if w.depth.fetch_add(1, Ordering::Relaxed) >= w.capacity {
            for undo in &targets[..=i] {
                undo.depth.fetch_sub(1, Ordering::Relaxed);
            }
            let watcher = w.name.clone();
            return Err((Refused::Full { watcher }, i));
        }
    }
    Ok(())
}

/// Gives back the slots [`reserve_slots`] took.
pub fn release_slots(targets: &[&Slots]) {
    for w in targets {
        w.release();
    }
}

/// Counts a request in `transformer_admission_waiting` while it waits for room.
struct WaitingGuard(Gauge);

impl WaitingGuard {
    fn new(gauge: &Gauge) -> Self {
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
pub fn event_size(e: &CloudEvent) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(bytes: usize) -> CloudEvent {
        CloudEvent::from_gateway_event("gw", "t", "cfg", bytes::Bytes::from(vec![b'x'; bytes]))
    }

    fn admission(max_bytes: usize) -> Admission {
        Admission::new(max_bytes, Gauge::default())
    }

    const NOW: Duration = Duration::ZERO;

    #[tokio::test]
    async fn a_watcher_takes_up_to_its_capacity_whatever_the_lane() {
        let a = admission(usize::MAX);
        let w = Slots::new("http://a/", 3);
        for _ in 0..3 {
            a.reserve(&[&w], || false, 10, NOW).await.unwrap();
        }
        let refused = a.reserve(&[&w], || false, 10, NOW).await.unwrap_err();
        assert!(
            matches!(&refused, Refused::Full { watcher } if watcher == "http://a/"),
            "{refused}"
        );
        w.release();
        a.reserve(&[&w], || false, 10, NOW).await.unwrap();
        assert_eq!(w.depth(), 3);
    }

    #[tokio::test]
    async fn admission_is_all_or_nothing_across_watchers() {
        let a = admission(usize::MAX);
        let (free, full) = (Slots::new("free", 10), Slots::new("full", 1));
        a.reserve(&[&full], || false, 1, NOW).await.unwrap();
        let refused = a.reserve(&[&free, &full], || false, 1, NOW).await;
        assert!(matches!(refused, Err(Refused::Full { watcher }) if watcher == "full"));
        assert_eq!(
            (free.depth(), full.depth()),
            (0, 1),
            "the free slot was given back"
        );
    }

    #[tokio::test]
    async fn the_byte_budget_is_shared_and_returned_when_events_drop() {
        let a = admission(1000);
        let (w1, w2) = (Slots::new("a", 100), Slots::new("b", 100));
        a.reserve(&[&w1], || false, 600, NOW).await.unwrap();
        let held = a.admitted(event(0), 600);
        let refused = a.reserve(&[&w2], || false, 600, NOW).await;
        assert!(matches!(refused, Err(Refused::OverBudget { max: 1000 })));
        assert_eq!(w2.depth(), 0, "a byte refusal gives its slot back");
        drop(held);
        a.reserve(&[&w2], || false, 600, NOW).await.unwrap();
    }

    #[tokio::test]
    async fn an_event_larger_than_the_budget_is_taken_when_nothing_else_is_queued() {
        let a = admission(100);
        let w = Slots::new("a", 10);
        a.reserve(&[&w], || false, 5000, NOW).await.unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_is_waited_for_while_its_watcher_delivers() {
        let a = admission(usize::MAX);
        let w = Slots::new("a", 1);
        a.reserve(&[&w], || false, 1, NOW).await.unwrap();
        let freeing = {
            let w = w.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                w.release();
            })
        };
        a.reserve(&[&w], || false, 1, Duration::from_secs(30))
            .await
            .unwrap();
        freeing.await.unwrap();
        assert_eq!(a.waiting.get(), 0, "the waiting gauge is back to zero");
    }

    #[tokio::test]
    async fn a_stalled_lane_is_refused_at_once_and_a_wait_ends_at_its_deadline() {
        let a = admission(usize::MAX);
        let w = Slots::new("a", 1);
        a.reserve(&[&w], || false, 1, NOW).await.unwrap();
        let started = std::time::Instant::now();
        let stalled = a.reserve(&[&w], || true, 1, Duration::from_secs(30)).await;
        assert!(matches!(stalled, Err(Refused::Full { .. })));
        assert!(started.elapsed() < Duration::from_secs(10), "not held");
        let timed_out = a
            .reserve(&[&w], || false, 1, Duration::from_millis(20))
            .await;
        assert!(matches!(timed_out, Err(Refused::Full { .. })));
    }

    #[tokio::test]
    async fn a_wait_ends_in_a_refusal_when_the_lane_starts_failing() {
        let a = admission(usize::MAX);
        let w = Slots::new("a", 1);
        a.reserve(&[&w], || false, 1, NOW).await.unwrap();
        let stalled = std::sync::atomic::AtomicBool::new(false);
        let targets = [&*w];
        let waiting = a.reserve(
            &targets,
            || stalled.load(Ordering::Relaxed),
            1,
            Duration::from_secs(600),
        );
        let failing = async {
            while a.waiting.get() == 0 {
                tokio::task::yield_now().await;
            }
            stalled.store(true, Ordering::Relaxed);
            w.wake_waiters();
        };
        let (refused, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(waiting, failing)
        })
        .await
        .expect("refused at once, not held for the whole wait");
        assert!(matches!(refused, Err(Refused::Full { .. })));
        assert_eq!(w.depth(), 1, "the refused wait took no slot");
    }

    #[test]
    fn an_event_costs_its_data_and_attributes() {
        let small = event_size(&event(0));
        assert_eq!(event_size(&event(4096)), small + 4096);
        assert!(small > 128);
    }
}
