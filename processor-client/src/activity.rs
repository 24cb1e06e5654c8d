//! Which configurations may be running on the user server now, as far as the
//! supervisor is concerned. Sharing asks it before it hands a claim to another
//! replica: a configuration counts as quiet only once the supervisor has taken
//! in a snapshot without it *and* its task has finished stopping it. Knowing
//! the phase alone is not enough: a configuration just claimed may not have
//! reached the registry yet (its task not yet started), and a stop may take
//! longer than any fixed wait.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Shared between the supervisor, which writes it, and sharing, which reads it.
#[derive(Default)]
pub struct Activity {
    inner: Mutex<Seen>,
}

/// What the supervisor has taken in: the keys of the snapshot it applied last,
/// and one counter per key of the removals its tasks have not finished.
#[derive(Default)]
pub struct Seen {
    applied: BTreeSet<String>,
    /// The map's own `Arc` plus one per unfinished removal.
    stopping: HashMap<String, Arc<()>>,
}

/// A removal sent to a configuration's task, unfinished until dropped. Dropping
/// it takes no lock, so it may be dropped anywhere, the supervisor's lock held
/// or not.
pub struct Stopping {
    _count: Arc<()>,
}

impl Activity {
    /// Held by the supervisor while it takes the newest snapshot and acts on
    /// it, so that nobody sees the snapshot taken but not yet acted on.
    pub fn lock(&self) -> MutexGuard<'_, Seen> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `src` is not running here and nothing is left to stop it.
    pub fn is_quiet(&self, src: &str) -> bool {
        let seen = self.lock();
        !seen.applied.contains(src)
            && seen
                .stopping
                .get(src)
                .is_none_or(|count| Arc::strong_count(count) == 1)
    }
}

impl Seen {
    /// A removal of `src` about to be sent to its task.
    pub fn stopping(&mut self, src: &str) -> Stopping {
        // Forget finished ones as we go, so the map stays as small as what
        // is being stopped.
        self.stopping
            .retain(|_, count| Arc::strong_count(count) > 1);
        Stopping {
            _count: self.stopping.entry(src.to_owned()).or_default().clone(),
        }
    }

    /// The keys of the snapshot just acted on (after its removals were made).
    pub fn applied(&mut self, keys: impl IntoIterator<Item = String>) {
        self.applied = keys.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_once_removed_from_the_snapshot_and_its_stop_finished() {
        let activity = Activity::default();
        assert!(activity.is_quiet("a"), "never seen");
        activity.lock().applied(["a".to_owned()]);
        assert!(!activity.is_quiet("a"), "in the snapshot");
        let stop = {
            let mut seen = activity.lock();
            let stop = seen.stopping("a");
            seen.applied([]);
            stop
        };
        assert!(!activity.is_quiet("a"), "being stopped");
        let again = activity.lock().stopping("a");
        drop(stop);
        assert!(!activity.is_quiet("a"), "a second removal still open");
        drop(again);
        assert!(activity.is_quiet("a"));
        assert!(activity.is_quiet("b"));
    }
}
