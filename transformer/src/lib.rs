//! The transformer: takes events from the processor-client and from
//! framework-independent producers, wraps them as CloudEvents 1.0 and delivers them
//! to every watcher through a bounded queue of its own. [`run`] is the whole service;
//! `main.rs` only reads the environment and calls it.

pub mod cesql;
pub mod cloudevent;
pub mod config;
pub mod deadletters;
pub mod dedup;
pub mod dispatch;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod loops;
pub mod metrics;
pub mod reload;
pub mod routes;
pub mod state;
pub mod store;
pub mod triggers;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::dispatch::http::HttpSink;
use crate::dispatch::nats::{NatsSink, SubjectTemplate};
use crate::dispatch::{Dispatcher, Limits, Route, Sink};
pub use crate::error::RunError;
use crate::metrics::Metrics;
use crate::state::{AppState, Intake};
use crate::store::{Fsync, Store};
use tokio_util::sync::CancellationToken;

/// Binds the configured address and serves until `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let listener = gateway_common::start::bind(
        config.listen,
        config.port,
        &gateway_common::env::TRANSFORMER_PORT,
    )
    .await?;
    serve(config, listener, shutdown).await
}

/// Serves on an already-bound listener (tests bind port 0). On shutdown it stops
/// accepting, finishes in-flight requests, then lets the watcher queues drain until
/// `SHUTDOWN_TIMEOUT`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(match &config.data_dir {
        Some(dir) => Store::open_tuned(dir, config.fsync, config.store_memtable_bytes as u64)?,
        None => Store::temporary()?,
    });
    let dedup = open_dedup(&config, &store)?;
    let (routes, reach) = start_routes(&config, &metrics).await?;
    let trigger_views = reload::views(&config.triggers, &metrics);
    let limits = Limits {
        capacity: config.queue_capacity,
        lanes: config.lanes,
        max_bytes: config.queue_max_bytes,
        admit_wait: config.admit_wait,
    };
    let (dispatcher, workers) = Dispatcher::start(routes, limits, store.clone(), metrics.clone())?;
    let syncing = CancellationToken::new();
    if let Fsync::Every(period) = config.fsync {
        tokio::spawn(sync_every(store.clone(), period, syncing.clone()));
    }
    let state = Arc::new(AppState {
        gateway_name: config.gateway_name.clone(),
        event_type: config.event_type.clone(),
        max_body_bytes: config.max_body_bytes,
        metrics,
        intake: Intake::new(dispatcher),
        seen: Default::default(),
        dedup,
        ce_overrides: config.ce_overrides.clone(),
        triggers: std::sync::RwLock::new(trigger_views),
    });
    let watching = CancellationToken::new();
    if let Some(path) = config.triggers_path.clone() {
        tokio::spawn(reload::watch(path, reach, state.clone(), watching.clone()));
    }
    announce(&config, &listener)?;
    let deadline = Deadline::new(config.shutdown_timeout);
    let stop = deadline.at_signal(shutdown, state.clone());
    let bearer = gateway_common::auth::Bearer(config.token.as_deref().map(Arc::from));
    let app = gateway_common::auth::guard(routes::router(state.clone()), bearer);
    let server = state.metrics.server.clone();
    gateway_common::server::serve(listener, app, config.listener.clone(), server, stop).await;
    let (drained_by, hard_stop) = deadline.ends();
    watching.cancel();
    drop(state.intake.take());
    workers.drain(drained_by, hard_stop).await;
    syncing.cancel();
    if let Err(e) = store.sync() {
        tracing::error!(error = %e, "final fsync of the event store failed");
    }
    tracing::info!("transformer stopped");
    Ok(())
}

/// Every watcher's route: the plain ones (`SENSOR_WATCHERS`,
/// `GATEWAY_WATCHERS`, NATS) and the triggers'; with the reach that builds
/// the triggers' sinks again when they are reloaded.
async fn start_routes(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<(Vec<Route>, reload::Reach), RunError> {
    let mut routes: Vec<Route> = build_sinks(config, metrics)
        .await?
        .into_iter()
        .map(|sink| Route::plain(sink, config.retry.clone()))
        .collect();
    let reach = reload::Reach::new(config, metrics.clone())?;
    routes.extend(reach.routes(&config.triggers).await?);
    if routes.is_empty() {
        tracing::warn!(
            "no SENSOR_WATCHERS, GATEWAY_WATCHERS, TRANSFORMER_TRIGGERS or NATS: events will be accepted and dropped"
        );
    }
    Ok((routes, reach))
}

/// Logs where the transformer listens and what it delivers to.
fn announce(config: &Config, listener: &TcpListener) -> Result<(), RunError> {
    let local = listener.local_addr().map_err(RunError::Serve)?;
    tracing::info!(
        %local,
        gateway = %config.gateway_name,
        namespace = %config.namespace,
        sensors = config.sensor_watchers.len(),
        gateways = config.gateway_watchers.len(),
        triggers = config.triggers.len(),
        ce_mode = ?config.ce_mode,
        "transformer listening"
    );
    Ok(())
}

/// One deadline for the whole shutdown, counted from the signal: requests in
/// flight and the queues' drain share it, and the store's writer gets the
/// last tenth (at most a second) to commit the final acknowledgements.
struct Deadline {
    timeout: std::time::Duration,
    reserve: std::time::Duration,
    signalled: Arc<std::sync::OnceLock<tokio::time::Instant>>,
}

impl Deadline {
    fn new(timeout: std::time::Duration) -> Deadline {
        Deadline {
            timeout,
            reserve: (timeout / 10).min(std::time::Duration::from_secs(1)),
            signalled: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// The server's stop: once `shutdown` comes, the intake takes no more
    /// and the server has until the drain's deadline for what is in flight.
    fn at_signal(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        state: Arc<AppState>,
    ) -> impl Future<Output = tokio::time::Instant> + Send + 'static {
        let (signalled, drain) = (self.signalled.clone(), self.timeout - self.reserve);
        async move {
            shutdown.await;
            state.intake.close();
            let now = tokio::time::Instant::now();
            let _ = signalled.set(now);
            now + drain
        }
    }

    /// When the queues must have drained, and when the writer stops.
    fn ends(&self) -> (tokio::time::Instant, tokio::time::Instant) {
        let signalled = self
            .signalled
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now);
        (
            signalled + self.timeout - self.reserve,
            signalled + self.timeout,
        )
    }
}

/// The memory of named events (`TRANSFORMER_DEDUP_WINDOW`), given back what
/// an earlier run remembered: the store's journal, and the name of every
/// event still queued (stored, perhaps not yet journalled, when it crashed).
fn open_dedup(config: &Config, store: &Store) -> Result<Option<dedup::Dedup>, RunError> {
    if config.dedup_window.is_zero() {
        return Ok(None);
    }
    let memory = dedup::Dedup::new(config.dedup_window, config.dedup_max_ids);
    let now = dedup::now_secs();
    let journalled = store.open_journal(memory.window_secs(), now)?;
    let queued = store.queued()?;
    let restored = journalled.len() + queued.len();
    memory.restore(
        journalled
            .into_iter()
            .map(|(key, at)| (dedup::Key::from_bytes(key), at))
            .chain(
                queued
                    .iter()
                    .map(|(_, _, e)| (dedup::Key::of(&e.source, &e.id), now)),
            ),
        now,
    );
    if restored > 0 {
        tracing::info!(
            remembered = memory.remembered(),
            "event ids remembered from an earlier run"
        );
    }
    Ok(Some(memory))
}

/// The `TRANSFORMER_FSYNC=<period>` policy: a power loss loses at most one period.
async fn sync_every(store: Arc<Store>, period: std::time::Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.sync()).await {
            Ok(Err(e)) => tracing::error!(error = %e, "periodic fsync of the event store failed"),
            Err(e) => tracing::error!(error = %e, "periodic fsync task failed"),
            Ok(Ok(())) => {}
        }
    }
}

/// One sink per destination: each HTTP watcher, and NATS when `EVENT_PROTOCOL`
/// names it (one connection, made in the background).
async fn build_sinks(config: &Config, metrics: &Metrics) -> Result<Vec<Arc<dyn Sink>>, RunError> {
    let extra_roots = match &config.watcher_tls_ca {
        Some(path) => {
            gateway_common::tls::load_ca("WATCHER_TLS_CA", path).map_err(RunError::Tls)?
        }
        None => Vec::new(),
    };
    let client = HttpSink::client(extra_roots)?;
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if config.http_enabled {
        // A URL listed twice (a copy and paste, or one in both lists) is one
        // watcher: as two it got every event twice, under one queue's name.
        let mut listed = std::collections::HashSet::new();
        let via = loops::via(&config.gateway_name);
        for url in config
            .sensor_watchers
            .iter()
            .chain(&config.gateway_watchers)
        {
            if !listed.insert(url.as_str()) {
                tracing::warn!(
                    watcher = %gateway_common::redact::url(url.as_str()),
                    "listed more than once in SENSOR_WATCHERS and GATEWAY_WATCHERS; \
                     each event goes to it once"
                );
                continue;
            }
            sinks.push(Arc::new(
                HttpSink::new(
                    url.clone(),
                    config.ce_mode,
                    client.clone(),
                    config.retry.timeout,
                    via.clone(),
                )
                .with_token(config.watcher_token.as_deref())?,
            ));
        }
    }
    if let Some(nats) = &config.nats {
        let client = gateway_common::nats::connect(
            &nats.connection,
            "gateway-transformer",
            metrics.nats.connection.clone(),
        )
        .await?;
        let subjects = SubjectTemplate::new(&nats.subject, &config.gateway_name, &config.namespace);
        sinks.push(Arc::new(NatsSink::new(
            client,
            nats,
            subjects,
            config.retry.timeout,
            metrics.nats.clone(),
        )));
    }
    Ok(sinks)
}
