//! The store's one writer on the delivery path: a dedicated thread that takes
//! new events, acknowledgements and replays from a channel and commits whatever
//! has arrived as one write, with at most one fsync.
//!
//! Why a thread of its own: a store write stalls for milliseconds when the
//! journal rotates or the disk is busy (measured on ext4 on a virtual disk: p99
//! 11–31 ms at half load, against 4–6 ms on tmpfs). Written from the request
//! handlers, such a stall froze one of the runtime's threads and, through the
//! lanes' order locks, every producer. Here it only delays the writes queued
//! behind it; they keep arriving during the stall and are then committed
//! together, so the stall is paid once for all of them.
//!
//! Order: changes are committed in the order they were sent, and each change's
//! `then` runs after its commit, in that same order, on this thread. The
//! dispatcher sends under its lanes' order locks and queues events for delivery
//! in `then`, so a lane's order is the store's order, and no event is delivered
//! (nor acknowledged) before it is stored.
//!
//! Acknowledgements do not wake the writer one by one: waking a parked thread
//! is a futex call on each side, and at ten thousand events a second that was
//! the writer's main cost (each ack woke it for a write of its own). They
//! collect in a buffer; the first one into an empty buffer wakes the writer,
//! which then waits up to [`ACK_LINGER`] for events to write them with. A
//! crash loses at most the acknowledgements of that moment: those events are
//! delivered again (at least once).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::oneshot;

use crate::store::seen::Remembered;
use crate::store::{DeadLetter, Fsync, Store, StoreError, WatcherId};

/// What the writer reports to a change once it is committed (and synced, under
/// `Fsync::Always`). Shared, because one failed write fails every change in it.
pub type Written = Result<(), Arc<StoreError>>;

/// Runs on the writer thread after the change's commit; it must not block.
pub type Then = Box<dyn FnOnce(Written) + Send>;

/// One change to the store.
pub enum Change {
    /// Encoded events, by sequence number, for every listed watcher, and the
    /// names of those that have one, for the deduplication journal.
    Append {
        /// Each event: its sequence number, its encoding, and the watchers
        /// that want it.
        events: Vec<(u64, Vec<u8>, Arc<[WatcherId]>)>,
        remembered: Vec<Remembered>,
        then: Then,
    },
    /// A dead letter back into its watcher's queue under a new sequence number.
    Resurrect {
        letter: Box<DeadLetter>,
        seq: u64,
        then: Then,
    },
    /// An event whose retries ran out, out of its watcher's queue and into the
    /// dead letters. Here rather than on the lane's task: it is an LSM insert
    /// and a log write, either of which can stall for milliseconds.
    Bury { letter: Box<DeadLetter>, then: Then },
}

impl Change {
    fn then(self) -> Then {
        match self {
            Change::Append { then, .. }
            | Change::Resurrect { then, .. }
            | Change::Bury { then, .. } => then,
        }
    }
}

/// Sends changes to the writer thread; clones share the one thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Message>,
    acks: Arc<Mutex<Vec<(WatcherId, u64)>>>,
}

enum Message {
    Change(Change),
    /// Acknowledgements are waiting in the buffer.
    Acks,
}

/// Resolves when the writer thread has written its last change and ended:
/// which is once every [`Writer`] is dropped.
pub struct Finished(oneshot::Receiver<()>);

/// Most changes committed as one write; bounds how long the first of them waits.
const MAX_GROUP: usize = 4096;

/// How long acknowledgements wait for events to be written with.
const ACK_LINGER: Duration = Duration::from_millis(1);

impl Writer {
    pub fn start(store: Arc<Store>, timing: Histogram) -> std::io::Result<(Writer, Finished)> {
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let acks = Arc::new(Mutex::new(Vec::new()));
        let pending = acks.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                write_changes(&store, &rx, &pending, &timing);
                let _ = done_tx.send(());
            })?;
        Ok((Writer { tx, acks }, Finished(done_rx)))
    }

    /// Records that `watcher` has `seq`, to be forgotten with the next write.
    pub fn ack(&self, watcher: WatcherId, seq: u64) {
        let was_empty = {
            let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
            acks.push((watcher, seq));
            acks.len() == 1
        };
        if was_empty {
            let _ = self.tx.send(Message::Acks);
        }
    }

    /// Sends a change. If the writer has stopped (only when the process is
    /// stopping), its `then` hears so at once.
    pub fn send(&self, change: Change) {
        if let Err(mpsc::SendError(Message::Change(change))) = self.tx.send(Message::Change(change))
        {
            (change.then())(Err(Arc::new(StoreError::WriterStopped)));
        }
    }
}

impl Finished {
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

fn write_changes(
    store: &Store,
    rx: &mpsc::Receiver<Message>,
    pending: &Mutex<Vec<(WatcherId, u64)>>,
    timing: &Histogram,
) {
    let always = store.fsync() == Fsync::Always;
    let mut group = Vec::new();
    let mut acks = Vec::new();
    let mut open = true;
    while open {
        match rx.recv() {
            Ok(Message::Change(change)) => group.push(change),
            Ok(Message::Acks) => {}
            // Every sender is gone: write the last acknowledgements and end.
            Err(_) => open = false,
        }
        gather(rx, &mut group, &mut open);
        if group.is_empty() && open {
            match rx.recv_timeout(ACK_LINGER) {
                Ok(Message::Change(change)) => group.push(change),
                Ok(Message::Acks) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
            gather(rx, &mut group, &mut open);
        }
        std::mem::swap(
            &mut acks,
            &mut *pending.lock().unwrap_or_else(|p| p.into_inner()),
        );
        if group.is_empty() && acks.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let mut batch = store.batch();
        let mut refused = Vec::new();
        for (i, change) in group.iter().enumerate() {
            match change {
                Change::Append {
                    events, remembered, ..
                } => {
                    for (seq, event, watchers) in events {
                        batch.append_one(watchers, *seq, event);
                    }
                    batch.remember(remembered);
                }
                Change::Resurrect { letter, seq, .. } => batch.resurrect(letter, *seq),
                Change::Bury { letter, .. } => {
                    if let Err(e) = batch.bury(letter) {
                        refused.push((i, Arc::new(e)));
                    }
                }
            }
        }
        for (watcher, seq) in &acks {
            batch.ack(*watcher, *seq);
        }
        let mut written = batch.commit();
        if always && written.is_ok() && !group.is_empty() {
            written = store.sync();
        }
        timing.observe(started.elapsed().as_secs_f64());
        let written = written.map_err(Arc::new);
        if let (Err(e), false) = (&written, acks.is_empty()) {
            tracing::error!(error = %e, events = acks.len(), "cannot update the event store; these delivered events may be delivered again after a restart");
        }
        acks.clear();
        let mut refused = refused.into_iter().peekable();
        for (i, change) in group.drain(..).enumerate() {
            let outcome = match refused.next_if(|(at, _)| *at == i) {
                Some((_, e)) => Err(e),
                None => written.clone(),
            };
            (change.then())(outcome);
        }
    }
}

/// Adds what is already waiting to `group`, up to [`MAX_GROUP`].
fn gather(rx: &mpsc::Receiver<Message>, group: &mut Vec<Change>, open: &mut bool) {
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(Message::Change(change)) => group.push(change),
            Ok(Message::Acks) => {}
            Err(mpsc::TryRecvError::Empty) => break,
            Err(mpsc::TryRecvError::Disconnected) => {
                *open = false;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{encode_event, watcher_id};

    #[tokio::test]
    async fn changes_are_committed_in_order_and_answered_after_their_commit() {
        let store = Arc::new(Store::temporary().unwrap());
        let (writer, finished) =
            Writer::start(store.clone(), Histogram::new([0.1].into_iter())).unwrap();
        let w = watcher_id("http://a/");
        let watchers: Arc<[WatcherId]> = Arc::from(vec![w]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ev = crate::cloudevent::CloudEvent::from_gateway_event(
            "gw",
            "t",
            "cfg",
            bytes::Bytes::from_static(b"x"),
        );
        let mut answers = Vec::new();
        for seq in 1..=100u64 {
            let (tx, rx) = oneshot::channel();
            let seen = seen.clone();
            let s = store.clone();
            writer.send(Change::Append {
                events: vec![(seq, encode_event(&ev), watchers.clone())],
                remembered: Vec::new(),
                then: Box::new(move |written| {
                    // Already readable when `then` runs.
                    let stored = s.queued().unwrap().iter().any(|(_, q, _)| *q == seq);
                    seen.lock().unwrap().push((seq, stored));
                    let _ = tx.send(written.is_ok());
                }),
            });
            answers.push(rx);
        }
        for rx in answers {
            assert!(rx.await.unwrap());
        }
        for seq in (2..=100).step_by(2) {
            writer.ack(w, seq);
        }
        drop(writer);
        finished.wait().await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, (1..=100).map(|s| (s, true)).collect::<Vec<_>>());
        let left: Vec<u64> = store.queued().unwrap().iter().map(|(_, s, _)| *s).collect();
        assert_eq!(left, (1..=100).filter(|s| s % 2 == 1).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_buried_event_leaves_the_queue_for_the_dead_letters_before_it_is_answered() {
        let store = Arc::new(Store::temporary().unwrap());
        let (writer, finished) =
            Writer::start(store.clone(), Histogram::new([0.1].into_iter())).unwrap();
        let w = store.register_watcher("http://a/", "http://a/").unwrap();
        let ev = crate::cloudevent::CloudEvent::from_gateway_event(
            "gw",
            "t",
            "cfg",
            bytes::Bytes::from_static(b"x"),
        );
        let (tx, rx) = oneshot::channel();
        writer.send(Change::Append {
            events: vec![
                (1, encode_event(&ev), Arc::from(vec![w])),
                (2, encode_event(&ev), Arc::from(vec![w])),
            ],
            remembered: Vec::new(),
            then: Box::new(move |written| {
                let _ = tx.send(written.is_ok());
            }),
        });
        assert!(rx.await.unwrap());
        let letter = DeadLetter {
            watcher: w,
            seq: 1,
            watcher_name: "http://a/".into(),
            error: "gave up".into(),
            attempts: 3,
            dead_at_ms: 1,
            event: ev,
            code: 0,
            data: Vec::new(),
        };
        let (tx, rx) = oneshot::channel();
        let s = store.clone();
        writer.send(Change::Bury {
            letter: Box::new(letter),
            then: Box::new(move |written| {
                let queued: Vec<u64> = s.queued().unwrap().iter().map(|(_, q, _)| *q).collect();
                let dead = s.dead_count().unwrap();
                let _ = tx.send((written.is_ok(), queued, dead));
            }),
        });
        assert_eq!(rx.await.unwrap(), (true, vec![2], 1));
        drop(writer);
        finished.wait().await;
        let dead = store.dead_letters(10).unwrap();
        assert_eq!((dead.len(), dead[0].seq, dead[0].attempts), (1, 1, 3));
    }
}
