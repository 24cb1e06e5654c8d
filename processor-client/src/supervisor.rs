//! Turns configuration snapshots into `/start` and `/stop` calls (or, for a gRPC
//! user server, into calls of its own: [`crate::grpc::stream`]). Each key has one
//! task that owns its lifecycle and handles commands in order, so a change is always
//! a stop of the old value followed by a start of the new one, and a key removed and
//! re-added never races itself. Tasks also watch the user server's liveness and start
//! their configuration again when it comes back from a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_common::backoff::Backoff;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::activity::{Activity, Seen};
use crate::command::Command;
use crate::configs::{ConfigData, Registry};
use crate::metrics::Metrics;
use crate::user_server::{Health, HealthState, Outcome, UserServer};
use crate::watch::Snapshot;

/// Everything a configuration task needs, shared by all of them.
pub struct Shared {
    pub registry: Arc<Registry>,
    pub user_server: UserServer,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

struct Handle {
    tx: mpsc::UnboundedSender<Command>,
    /// The value last applied, `None` after removal.
    value: Option<String>,
}

/// How configurations are run: over HTTP (`/start`, `/stop`) or as gRPC calls.
pub enum Driver {
    Http(Arc<Shared>),
    Grpc(Arc<crate::grpc::stream::Shared>),
}

/// Diffs snapshots against what runs and sends each key's task its commands.
pub struct Supervisor {
    driver: Driver,
    handles: HashMap<String, Handle>,
    tasks: JoinSet<()>,
    stop_all: CancellationToken,
    /// What it has taken in and not yet stopped, for sharing to read.
    activity: Arc<Activity>,
}

impl Supervisor {
    pub fn new(driver: Driver, activity: Arc<Activity>) -> Self {
        Supervisor {
            driver,
            handles: HashMap::new(),
            tasks: JoinSet::new(),
            stop_all: CancellationToken::new(),
            activity,
        }
    }

    /// Applies snapshots until `cancel`, then stops every started configuration (the
    /// user server should not keep producing events nobody will take) and returns.
    pub async fn run(
        mut self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        cancel: CancellationToken,
    ) {
        self.apply_newest(&mut snapshots);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = snapshots.changed() => {
                    if changed.is_err() { break; }
                    self.apply_newest(&mut snapshots);
                }
            }
        }
        self.stop_all.cancel();
        self.handles.clear();
        while self.tasks.join_next().await.is_some() {}
        // Every task has stopped its configuration and ended.
        self.activity.lock().applied([]);
    }

    /// Takes the newest snapshot and acts on it, all under the activity's
    /// lock: whoever asks whether a configuration is quiet sees either the
    /// snapshot before this one or this one with its removals sent.
    fn apply_newest(&mut self, snapshots: &mut watch::Receiver<Arc<Snapshot>>) {
        let activity = self.activity.clone();
        let mut seen = activity.lock();
        let desired = snapshots.borrow_and_update().clone();
        self.reconcile(&desired, &mut seen);
        seen.applied(desired.keys().cloned());
    }

    fn reconcile(&mut self, desired: &Snapshot, seen: &mut Seen) {
        for (src, value) in desired {
            match self.handles.get_mut(src) {
                Some(h) if h.value.as_deref() == Some(value.as_str()) => {}
                Some(h) => {
                    h.value = Some(value.clone());
                    let _ = h.tx.send(Command::Apply(value.clone()));
                }
                None => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let _ = tx.send(Command::Apply(value.clone()));
                    let stop_all = self.stop_all.clone();
                    match &self.driver {
                        Driver::Http(shared) => {
                            let task = ConfigTask::new(src.clone(), shared.clone(), rx, stop_all);
                            self.tasks.spawn(task.run())
                        }
                        Driver::Grpc(shared) => {
                            let task = crate::grpc::stream::StreamTask::new(
                                src.clone(),
                                shared.clone(),
                                rx,
                                stop_all,
                            );
                            self.tasks.spawn(task.run())
                        }
                    };
                    self.handles.insert(
                        src.clone(),
                        Handle {
                            tx,
                            value: Some(value.clone()),
                        },
                    );
                }
            }
        }
        for (src, h) in self.handles.iter_mut() {
            if h.value.is_some() && !desired.contains_key(src) {
                h.value = None;
                let _ = h.tx.send(Command::Remove(seen.stopping(src)));
            }
        }
    }
}

/// The lifecycle of one key.
struct ConfigTask {
    src: String,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Command>,
    health: watch::Receiver<HealthState>,
    stop_all: CancellationToken,
    /// The value to run, if any.
    current: Option<ConfigData>,
    /// Epoch of the user server in which the current start was accepted.
    started_epoch: Option<u64>,
    /// The user server refused the current value (4xx); wait for a new one.
    rejected: bool,
    backoff: Backoff,
}

impl ConfigTask {
    fn new(
        src: String,
        shared: Arc<Shared>,
        rx: mpsc::UnboundedReceiver<Command>,
        stop_all: CancellationToken,
    ) -> Self {
        let health = shared.health.subscribe();
        let backoff = Backoff::new(shared.retry_base, shared.retry_cap);
        ConfigTask {
            src,
            shared,
            rx,
            health,
            stop_all,
            current: None,
            started_epoch: None,
            rejected: false,
            backoff,
        }
    }

    async fn run(mut self) {
        loop {
            let mut retry_in = None;
            if let (Some(data), None, false) =
                (self.current.clone(), self.started_epoch, self.rejected)
            {
                retry_in = self.try_start(&data).await;
            }
            let sleep = async {
                match retry_in {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.stop_all.cancelled() => {
                    self.stop_current("the processor-client is shutting down").await;
                    return;
                }
                cmd = self.rx.recv() => match cmd {
                    None => {
                        self.stop_current("the processor-client is shutting down").await;
                        return;
                    }
                    Some(Command::Apply(value)) => {
                        self.stop_current("replaced by a changed value").await;
                        let data = ConfigData::new(&self.src, &value);
                        self.shared.registry.starting(&data, "starting");
                        self.current = Some(data);
                        self.rejected = false;
                        self.backoff.reset();
                    }
                    Some(Command::Remove(_stopping)) => {
                        self.stop_current("removed").await;
                        self.current = None;
                        self.rejected = false;
                    }
                },
                changed = self.health.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let state = *self.health.borrow_and_update();
                    self.on_health(state);
                }
                _ = sleep => {}
            }
        }
    }

    /// Reacts to the user server going away or coming back.
    fn on_health(&mut self, state: HealthState) {
        let Some(data) = self.current.as_mut() else {
            return;
        };
        match self.started_epoch {
            Some(epoch) if state.epoch > epoch => {
                self.started_epoch = None;
                data.time_id = crate::id::time_id();
                self.shared
                    .registry
                    .starting(data, "the user server restarted; starting again");
                self.backoff.reset();
            }
            Some(_) if !state.up => {
                self.shared.registry.pending(
                    &self.src,
                    "the user server is not listening; will start again when it returns",
                );
            }
            None if state.up => self.backoff.reset(),
            _ => {}
        }
    }

    /// One `/start`. Returns how long to wait before retrying, if it should be.
    async fn try_start(&mut self, data: &ConfigData) -> Option<Duration> {
        let outcome = self.shared.user_server.start(data).await;
        self.shared.metrics.user_server_call("start", &outcome);
        match outcome {
            Outcome::Accepted => {
                self.started_epoch = Some(self.shared.health.mark_up());
                self.backoff.reset();
                self.shared.registry.start_accepted(&self.src);
                tracing::info!(src = %self.src, id = %data.id, time_id = %data.time_id, "configuration started");
                None
            }
            Outcome::Rejected { status, body } => {
                self.rejected = true;
                let message = if body.is_empty() {
                    format!("the user server answered {status}")
                } else {
                    body
                };
                tracing::warn!(src = %self.src, status, %message, "user server refused the configuration");
                self.shared.registry.error(&self.src, &message);
                None
            }
            Outcome::Failed { message, refused } => {
                let delay = self.backoff.next_delay();
                if refused {
                    // Said once for all of them by the probe (user_server::probe_loop):
                    // a thousand configurations would otherwise fill the log.
                    self.shared.health.mark_down();
                    tracing::debug!(src = %self.src, error = %message, retry_in = ?delay, "start failed; will retry");
                } else {
                    tracing::warn!(src = %self.src, error = %message, retry_in = ?delay, "start failed; will retry");
                }
                self.shared
                    .registry
                    .pending(&self.src, &format!("start failed, retrying: {message}"));
                Some(delay)
            }
        }
    }

    /// Stops the current value if the user server had accepted it. A user server
    /// that is not listening has nothing to stop; 5xx is retried a few times.
    async fn stop_current(&mut self, why: &str) {
        let Some(data) = self.current.clone() else {
            return;
        };
        let was_started = self.started_epoch.take().is_some();
        if was_started {
            let mut backoff = Backoff::new(self.shared.retry_base, self.shared.retry_cap);
            for attempt in 1..=3 {
                let outcome = self.shared.user_server.stop(&data).await;
                self.shared.metrics.user_server_call("stop", &outcome);
                match outcome {
                    Outcome::Accepted => break,
                    Outcome::Rejected { status, body } => {
                        tracing::warn!(src = %self.src, status, %body, "user server refused the stop");
                        break;
                    }
                    Outcome::Failed { refused: true, .. } => break,
                    Outcome::Failed { message, .. } => {
                        tracing::warn!(src = %self.src, attempt, error = %message, "stop failed");
                        if attempt < 3 && !self.stop_all.is_cancelled() {
                            tokio::time::sleep(backoff.next_delay()).await;
                        }
                    }
                }
            }
            tracing::info!(src = %self.src, id = %data.id, why, "configuration stopped");
        }
        self.shared.registry.stopped(&self.src, why);
    }
}
