//! One gateway on several replicas (`GATEWAY_PROCESSOR_SHARING=nats`): the
//! replicas of a gateway share its configurations through a JetStream key-value
//! bucket, each configuration running on exactly one of them.
//!
//! The bucket keeps every entry for one lease (`max_age`), so whatever is not
//! written again lapses by itself. Each replica, every quarter lease, announces
//! itself (`replicas.ID`), reads the bucket, renews its claims
//! (`claims.KEY`, compare-and-set on the key's revision), gives up what is over
//! its fair share (after its configuration has stopped) and claims unclaimed
//! configurations up to its share (create-if-absent). The supervisor only ever
//! sees the configurations this replica holds.
//!
//! Safety does not rest on the bucket alone. A claim is held, locally, until a
//! deadline counted on this process's monotonic clock from the moment the
//! renewal was sent, 0.7 of the lease later: before the entry can lapse in the
//! bucket. A watchdog drops every claim past its deadline (the configuration
//! is stopped), and the forwarding point refuses events of a configuration not
//! held ([`Sharing::may_forward`]), so a replica that could not renew (NATS
//! down, a partition) or was frozen (SIGSTOP, a paused VM) forwards nothing of
//! what another replica may already run.

mod handover;
mod identity;
mod keys;
mod listing;
pub mod plan;
mod round;

use handover::handover;
use keys::{claim_key, REPLICAS};
pub use listing::with_owners;
use round::{renew, tick};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::activity::Activity;
use crate::configs::Registry;
use crate::metrics::Metrics;
use crate::watch::Snapshot;
use gateway_common::nats::{ConnectionMetrics, NatsOptions};

/// How sharing is set up: `GATEWAY_PROCESSOR_REPLICA_ID`, `GATEWAY_PROCESSOR_LEASE`
/// and the NATS connection.
#[derive(Debug, Clone)]
pub struct Settings {
    pub replica: String,
    /// Whether `replica` was set (`GATEWAY_PROCESSOR_REPLICA_ID`) rather than
    /// the host name: only a host name gives way to a live namesake.
    pub replica_from_env: bool,
    pub lease: Duration,
    pub nats: NatsOptions,
    /// One bucket per gateway: its namespace and name.
    pub bucket: String,
}

/// The bucket of the gateway `name` in `namespace`.
pub fn bucket_name(namespace: &str, name: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("gateway_{}_{}", clean(namespace), clean(name))
}

/// What a claim says: who runs the configuration, and its phase there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClaimValue {
    pub owner: String,
    pub phase: String,
}

/// A claim this replica holds.
struct Held {
    revision: u64,
    /// Past this, the claim may have lapsed in the bucket: stop.
    valid_until: Instant,
}

/// This replica's side of the sharing, read by the routes and the supervisor.
pub struct Sharing {
    /// The name this replica goes by: as configured, until [`identity`] has
    /// found it taken by a live namesake and chosen another.
    replica: RwLock<String>,
    lease: Duration,
    held: Mutex<HashMap<String, Held>>,
    /// Every claim as last read: configuration to owner and phase.
    view: Mutex<BTreeMap<String, ClaimValue>>,
    /// Claims being given back: no longer held, not yet deleted.
    releasing: Mutex<BTreeSet<String>>,
    /// Of those, the ones (with their revisions) not yet passed on to be
    /// handed over.
    released: Mutex<Vec<(String, u64)>>,
    /// Every configuration of the gateway, as of the last round (`None`
    /// before the first).
    configurations: Mutex<Option<Arc<BTreeSet<String>>>>,
    metrics: Arc<Metrics>,
}

impl Sharing {
    pub fn new(replica: String, lease: Duration, metrics: Arc<Metrics>) -> Arc<Sharing> {
        Arc::new(Sharing {
            replica: RwLock::new(replica),
            lease,
            held: Mutex::new(HashMap::new()),
            view: Mutex::new(BTreeMap::new()),
            releasing: Mutex::new(BTreeSet::new()),
            released: Mutex::new(Vec::new()),
            configurations: Mutex::new(None),
            metrics,
        })
    }

    /// This replica's name in the bucket and in `/configs`.
    pub fn replica(&self) -> String {
        self.replica
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_replica(&self, name: String) {
        *self.replica.write().unwrap_or_else(|p| p.into_inner()) = name;
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether events of `src` may go to the transformer now: this replica
    /// holds its claim, by its own clock.
    pub fn may_forward(&self, src: &str) -> bool {
        self.held()
            .get(src)
            .is_some_and(|h| Instant::now() < h.valid_until)
    }

    /// Who runs each configuration, as last read from the bucket.
    pub fn owners(&self) -> BTreeMap<String, ClaimValue> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every configuration of the gateway, as of the last round (before the
    /// first, as read at start).
    pub fn configurations(&self) -> Option<Arc<BTreeSet<String>>> {
        self.configurations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether this replica holds `src` now.
    pub fn holds(&self, src: &str) -> bool {
        self.may_forward(src)
    }

    /// The bucket could not be read: who runs what elsewhere is not known.
    fn forget_view(&self) {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The configurations this replica holds (and may run) now.
    fn owned(&self) -> BTreeSet<String> {
        let now = Instant::now();
        self.held()
            .iter()
            .filter(|(_, h)| now < h.valid_until)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The claims a round gave up, to hand over now.
    fn take_released(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.released.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The claims held, with their revisions, to renew.
    fn held_revisions(&self) -> Vec<(String, u64)> {
        self.held()
            .iter()
            .map(|(s, h)| (s.clone(), h.revision))
            .collect()
    }

    /// How long a claim renewed (or made) at `sent` is held here: 0.7 of the
    /// lease, so it is dropped before the entry can lapse in the bucket.
    fn valid_until(&self, sent: Instant) -> Instant {
        sent + self.lease.mul_f64(0.7)
    }

    /// After a renewal sent at `sent`: keeps exactly the claims `renewed`, at
    /// their new revisions, until [`Sharing::valid_until`] of it.
    fn keep_renewed(&self, renewed: &HashMap<String, u64>, sent: Instant) {
        let valid_until = self.valid_until(sent);
        let mut held = self.held();
        let before = held.len();
        held.retain(|src, _| renewed.contains_key(src));
        self.metrics
            .sharing
            .losses
            .inc_by((before - held.len()) as u64);
        for (src, revision) in renewed {
            held.insert(
                src.clone(),
                Held {
                    revision: *revision,
                    valid_until,
                },
            );
        }
    }

    /// Drops every claim past its deadline; true if any was.
    fn expire(&self) -> bool {
        let now = Instant::now();
        let mut held = self.held();
        let before = held.len();
        held.retain(|src, h| {
            let keep = now < h.valid_until;
            if !keep {
                tracing::warn!(%src, "could not renew the claim in time; stopping the configuration");
            }
            keep
        });
        let lost = before - held.len();
        self.metrics.sharing.losses.inc_by(lost as u64);
        lost > 0
    }
}

/// How the sharing task is wired to the rest of the processor-client.
pub struct Wiring {
    /// Every configuration, as the watcher reads them.
    pub all: watch::Receiver<Arc<Snapshot>>,
    /// The ones this replica holds, for the supervisor.
    pub desired: watch::Sender<Arc<Snapshot>>,
    /// Shutdown has begun: claim nothing more.
    pub stop_claiming: CancellationToken,
    /// The supervisor has stopped every configuration: hand the claims back.
    pub release: CancellationToken,
}

/// Keeps this replica's share of the configurations until `stop_claiming`,
/// feeding the supervisor the ones it holds; then renews what it holds until
/// `release` (cancel it once the supervisor has stopped them) and gives back
/// every claim whose configuration `activity` says is quiet.
pub async fn run(
    sharing: Arc<Sharing>,
    settings: Settings,
    registry: Arc<Registry>,
    activity: Arc<Activity>,
    wiring: Wiring,
) {
    // Listed (unclaimed) from the start: until the bucket answers, `/configs`
    // shows what there is to run, not nothing.
    *sharing
        .configurations
        .lock()
        .unwrap_or_else(|p| p.into_inner()) =
        Some(Arc::new(wiring.all.borrow().keys().cloned().collect()));
    let watchdog = spawn_watchdog(&sharing, &wiring);
    let Some((store, connection)) = open_bucket(&settings, &sharing, &wiring.stop_claiming).await
    else {
        let _ = watchdog.await;
        return;
    };
    // A name another live processor-client of this gateway goes by is not
    // taken: two processes of one name would each run the other's claims.
    if identity::take_name(&sharing, &store, &settings, &wiring.stop_claiming)
        .await
        .is_none()
    {
        let _ = watchdog.await;
        return;
    }
    let replica = Replica {
        sharing,
        store,
        registry,
        activity,
        period: settings.lease / 4,
    };
    let mut handovers = tokio::task::JoinSet::new();
    replica
        .share(
            &connection,
            wiring.all,
            &wiring.desired,
            &wiring.stop_claiming,
            &mut handovers,
        )
        .await;
    // Shutdown: the supervisor stops the configurations, the claims renewed
    // meanwhile however long that takes (their events are still forwarded);
    // then they go back at once, so the other replicas take them without
    // waiting a lease.
    replica.renew_until(&wiring.release).await;
    let _ = watchdog.await;
    replica.give_back(handovers).await;
    tracing::info!("claims handed back");
}

/// Drops the claims this replica failed to renew in time (every 50 ms, until
/// `release`), so that the supervisor stops their configurations before
/// another replica may take them.
fn spawn_watchdog(sharing: &Arc<Sharing>, wiring: &Wiring) -> tokio::task::JoinHandle<()> {
    let sharing = sharing.clone();
    let all = wiring.all.clone();
    let desired = wiring.desired.clone();
    let stop = wiring.release.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if sharing.expire() {
                let all = all.borrow().clone();
                publish(&sharing, &all, &desired);
            }
        }
    })
}

/// A replica with its bucket open and its name taken.
struct Replica {
    sharing: Arc<Sharing>,
    store: kv::Store,
    registry: Arc<Registry>,
    activity: Arc<Activity>,
    /// A sharing round every quarter of the lease.
    period: Duration,
}

impl Replica {
    /// Sharing rounds, each period and whenever the configurations change,
    /// until `stop_claiming`; the claims given up are handed over on
    /// `handovers`, off the loop.
    async fn share(
        &self,
        connection: &ConnectionMetrics,
        mut all: watch::Receiver<Arc<Snapshot>>,
        desired: &watch::Sender<Arc<Snapshot>>,
        stop_claiming: &CancellationToken,
        handovers: &mut tokio::task::JoinSet<()>,
    ) {
        let mut last_ok = true;
        loop {
            let snapshot = all.borrow_and_update().clone();
            let ok = self.round(connection, &snapshot).await;
            if !ok {
                self.sharing.forget_view();
            }
            // Whatever part of the round was done: the supervisor runs what is
            // held now, and what was given up goes back once it has stopped,
            // off the loop, so that waiting for a stop never delays a renewal.
            publish(&self.sharing, &snapshot, desired);
            let releases = self.sharing.take_released();
            if !releases.is_empty() {
                handovers.spawn(handover(
                    self.sharing.clone(),
                    self.store.clone(),
                    self.registry.clone(),
                    self.activity.clone(),
                    releases,
                ));
            }
            while handovers.try_join_next().is_some() {}
            // The first failure after a good round is retried soon: a claim
            // outlives one lost round only if the next comes before its deadline
            // (0.7 of the lease). A longer outage is retried each period.
            let wait = if !ok && last_ok {
                self.period / 8
            } else {
                self.period
            };
            last_ok = ok;
            tokio::select! {
                _ = stop_claiming.cancelled() => break,
                _ = all.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One sharing round over `snapshot`, within a period; false (logged)
    /// when it failed. A round whose connection drops cannot expect its
    /// replies: it gives up at once rather than at the end of its time.
    async fn round(&self, connection: &ConnectionMetrics, snapshot: &Snapshot) -> bool {
        let round = tokio::time::timeout(
            self.period,
            tick(&self.sharing, &self.store, snapshot, &self.registry),
        );
        match connection.unless_lost(round).await {
            Some(Ok(Ok(()))) => true,
            Some(Ok(Err(e))) => {
                tracing::warn!(error = %e, "cannot reach the sharing bucket");
                false
            }
            Some(Err(_)) => {
                tracing::warn!("the sharing bucket did not answer in time");
                false
            }
            None => {
                tracing::warn!("the connection to NATS dropped during a round");
                false
            }
        }
    }

    /// Renews what is held, each period, until `release`.
    async fn renew_until(&self, release: &CancellationToken) {
        loop {
            tokio::select! {
                _ = release.cancelled() => break,
                _ = tokio::time::sleep(self.period) => {}
            }
            let sent = Instant::now();
            let held = self.sharing.held_revisions();
            // With NATS away a renewal waits for JetStream's timeout; the claims
            // go back as soon as the supervisor is done, not after it.
            tokio::select! {
                _ = release.cancelled() => break,
                renewed = renew(&self.sharing, &self.store, &self.registry, &held) => {
                    self.sharing.keep_renewed(&renewed, sent);
                }
            }
        }
    }

    /// Gives back every claim whose configuration has stopped here (one the
    /// supervisor could not stop in time keeps its claim until it lapses) and
    /// the replica's presence, and waits for the handovers under way.
    async fn give_back(&self, mut handovers: tokio::task::JoinSet<()>) {
        let held: Vec<(String, u64)> = self
            .sharing
            .held()
            .drain()
            .map(|(s, h)| (s, h.revision))
            .collect();
        let claims = held
            .iter()
            .filter(|(src, _)| self.activity.is_quiet(src))
            .map(|(src, revision)| {
                self.store
                    .delete_expect_revision(claim_key(src), Some(*revision))
            });
        let presence = self
            .store
            .delete(format!("{REPLICAS}{}", self.sharing.replica()));
        // All at once: with NATS away each waits for JetStream's request
        // timeout, and one after another they would use up the shutdown
        // deadline.
        let given_back = async { while handovers.join_next().await.is_some() {} };
        let _ = tokio::join!(futures::future::join_all(claims), presence, given_back);
    }
}

/// Tells the supervisor to run the configurations of `all` this replica
/// holds now (nothing if that has not changed).
fn publish(sharing: &Sharing, all: &Snapshot, desired: &watch::Sender<Arc<Snapshot>>) {
    let owned = sharing.owned();
    let mine: Snapshot = all
        .iter()
        .filter(|(k, _)| owned.contains(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    desired.send_if_modified(|current| {
        if **current == mine {
            false
        } else {
            *current = Arc::new(mine);
            true
        }
    });
}

/// Connects and opens (or creates) the bucket, retrying until it works; with
/// it, the connection's comings and goings.
async fn open_bucket(
    settings: &Settings,
    sharing: &Sharing,
    cancel: &CancellationToken,
) -> Option<(kv::Store, ConnectionMetrics)> {
    let metrics = ConnectionMetrics::default();
    let connection = metrics.clone();
    let name = format!("gateway-processor-client-{}", sharing.replica());
    let client = tokio::select! {
        _ = cancel.cancelled() => return None,
        c = gateway_common::nats::connect(&settings.nats, &name, metrics) => c,
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "sharing cannot connect to NATS; no configuration will run here");
            cancel.cancelled().await;
            return None;
        }
    };
    let js = async_nats::jetstream::new(client);
    loop {
        // Created by the first replica; the others open it.
        let attempt = async {
            match js.get_key_value(settings.bucket.clone()).await {
                Ok(store) => Ok(store),
                // The bucket's stream, made as `create_key_value` would make it:
                // that call first asks for account limits in a form older
                // nats-servers (2.9, Debian's) do not answer, so it is done here.
                Err(_) => match js.create_stream(bucket_stream(settings)).await {
                    Ok(_) => js
                        .get_key_value(settings.bucket.clone())
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
            }
        };
        // Each request waits up to JetStream's timeout while NATS is away;
        // a shutdown does not wait for them.
        let created = tokio::select! {
            _ = cancel.cancelled() => return None,
            created = attempt => created,
        };
        match created {
            Ok(store) => return Some((store, connection)),
            Err(e) => match gateway_common::nats::without_jetstream(&e) {
                Some(hint) => tracing::warn!(
                    error = %e,
                    bucket = %settings.bucket,
                    "cannot open the sharing bucket ({hint}); no configuration runs here until it can"
                ),
                None => tracing::warn!(
                    error = %e,
                    bucket = %settings.bucket,
                    "cannot open the sharing bucket; retrying"
                ),
            },
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(settings.lease / 4) => {}
        }
    }
}

/// The stream behind the bucket: one message per key, each kept for one lease.
fn bucket_stream(settings: &Settings) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream;
    stream::Config {
        name: format!("KV_{}", settings.bucket),
        subjects: vec![format!("$KV.{}.>", settings.bucket)],
        max_messages_per_subject: 1,
        max_age: settings.lease,
        discard: stream::DiscardPolicy::New,
        deny_delete: true,
        allow_rollup: true,
        allow_direct: true,
        duplicate_window: settings.lease,
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    }
}

impl crate::transformer_client::Claims for Sharing {
    /// Until when, on the wall clock, this replica holds the claim on `src`.
    fn claim_header(&self, src: &str) -> Option<(&'static str, reqwest::header::HeaderValue)> {
        let left = self
            .held()
            .get(src)?
            .valid_until
            .checked_duration_since(Instant::now())?;
        let until = gateway_common::wire::claim_until(left);
        Some((gateway_common::wire::CLAIM_HEADER, until.into()))
    }
}
