//! Where configurations' tasks run. A stopped configuration's task is not
//! dropped mid-step: it sees its stop token and has [`STOP_GRACE`] to settle
//! what it holds (acknowledge a message the gateway already took, close a
//! broker connection cleanly) before it is dropped. At shutdown the server
//! waits, within the same grace, for every task to finish. A configuration
//! started again (changed, or restarted by the gateway) begins only once its
//! previous task has finished, so that two runs of one source never overlap:
//! a queue consumer hands its unacknowledged messages back before the next
//! one subscribes, which keeps them in order.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a task may run on after its configuration was stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Cancelled when a supervised task has finished (or was dropped).
pub(crate) type Finished = CancellationToken;

/// Runs `task` on `tracker` until it returns, or until [`STOP_GRACE`] after
/// `stop` is cancelled; it begins once `after` (the previous run of the same
/// configuration) finished, or [`STOP_GRACE`] passed. Returns what tells
/// that this run finished.
pub(crate) fn supervise(
    tracker: &TaskTracker,
    task: impl Future<Output = ()> + Send + 'static,
    stop: CancellationToken,
    after: Option<Finished>,
) -> Finished {
    let finished = Finished::new();
    let guard = finished.clone().drop_guard();
    tracker.spawn(async move {
        let _guard = guard;
        if let Some(previous) = after {
            let _ = tokio::time::timeout(STOP_GRACE, previous.cancelled()).await;
        }
        tokio::select! {
            _ = task => {}
            _ = async {
                stop.cancelled().await;
                tokio::time::sleep(STOP_GRACE).await;
            } => {}
        }
    });
    finished
}

/// Waits, at most [`STOP_GRACE`], for every task on `tracker` to finish.
pub(crate) async fn drain(tracker: &TaskTracker) {
    tracker.close();
    let _ = tokio::time::timeout(STOP_GRACE, tracker.wait()).await;
}
