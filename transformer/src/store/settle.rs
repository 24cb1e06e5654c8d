//! Crash recovery of the store, run once at open: finishes the two-step changes
//! a crash can interrupt. Burying writes the dead letter, then acknowledges
//! the event in the log; replaying appends the event to the log, then removes
//! the dead letter. Each order is chosen so a crash between the steps loses
//! nothing, and this module completes the second step.

use std::sync::atomic::Ordering;

use super::codec::{decode_dead, decode_event};
use super::dead::{key, split_key};
use super::{log, Store, StoreError};

impl Store {
    /// Finishes what a crash interrupted: an event buried as a dead letter but
    /// not yet acknowledged in the log is acknowledged now; a dead letter
    /// replayed into the log but not yet removed is removed now.
    pub(super) fn settle(&self, replayed: &log::Replayed) -> Result<(), StoreError> {
        let mut batch = self.batch();
        for (w, seq) in self.log().pending() {
            if self.dead.contains_key(key(w, seq))? {
                batch.ack(w, seq);
            }
        }
        batch.commit()?;
        self.settle_replays(replayed)?;
        Ok(())
    }

    /// A replay appends the dead letter's event to the log under a new seq,
    /// then removes the letter; after a crash between the two the event is
    /// queued and still listed as dead, and replaying it again would deliver
    /// it twice. The queued copy keeps the event's id, so a letter whose
    /// watcher has an event of that id queued is the leftover, and goes. Only
    /// read at open, and only when there are both dead letters and a queue.
    fn settle_replays(&self, replayed: &log::Replayed) -> Result<(), StoreError> {
        if replayed.events.is_empty() || self.dead.is_empty()? {
            return Ok(());
        }
        let mut queued = std::collections::HashSet::new();
        for (seq, (_, watchers, event)) in &replayed.events {
            let id = decode_event(event)?.id;
            for &w in watchers {
                if !self.dead.contains_key(key(w, *seq))? {
                    queued.insert((w, id.clone()));
                }
            }
        }
        let mut leftovers = Vec::new();
        for item in self.dead.iter() {
            let (k, v) = item.into_inner()?;
            let (w, seq) = split_key(&k)?;
            let letter = decode_dead(w, seq, &v)?;
            if queued.contains(&(w, letter.event.id)) {
                leftovers.push(k);
            }
        }
        for k in &leftovers {
            self.dead.remove(k.clone())?;
        }
        if !leftovers.is_empty() {
            self.dead_changed.store(true, Ordering::Relaxed);
            tracing::info!(
                letters = leftovers.len(),
                "removed dead letters whose replay was already queued before a crash"
            );
        }
        Ok(())
    }
}
