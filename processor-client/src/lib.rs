//! The processor-client: watches the gateway's configurations, starts and stops them
//! on the user server (over HTTP, or as gRPC calls whose streams it reads), and forwards the user server's events to the
//! transformer, answering 2xx only once the transformer has accepted each one.
//! [`run`] is the whole service; `main.rs` only reads the environment and calls it.

pub mod activity;
mod command;
pub mod config;
pub mod configs;
pub mod grpc;
pub mod id;
pub mod metrics;
pub mod routes;
pub mod sharing;
pub mod supervisor;
pub mod transformer_client;
pub mod user_server;
pub mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::transformer_client::TransformerClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::config::Protocol;
use crate::configs::Registry;
use crate::metrics::Metrics;
use crate::routes::AppState;
use crate::supervisor::{Driver, Shared, Supervisor};
use crate::user_server::{Health, UserServer};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bind(#[from] gateway_common::start::BindError),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Configurations(#[from] watch::WatchError),
    #[error(transparent)]
    Client(#[from] gateway_common::tls::ClientError),
    #[error(transparent)]
    Grpc(#[from] grpc::GrpcSetupError),
}

/// Binds the configured address and serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let listener =
        gateway_common::start::bind(config.listen, config.port, &config::CLIENT_HTTP_PORT).await?;
    serve(config, listener, shutdown).await
}

/// Serves on an already-bound listener (tests bind port 0). On shutdown: stop every
/// configuration on the user server (events still accepted meanwhile, so it can
/// flush), then stop accepting and finish in-flight requests.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let initial = watch::load(&config.config_map)?;
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::default());
    let sharing = config
        .sharing
        .as_ref()
        .map(|s| sharing::Sharing::new(s.replica.clone(), s.lease, metrics.clone()));
    let transformer = transformer_client(&config, sharing.as_ref())?;
    let tasks = Tasks::default();
    let (driver, probe) = match config.protocol {
        Protocol::Http => http_driver(&config, &registry, &metrics, &tasks.background)?,
        Protocol::Grpc(contract) => {
            let calls = grpc_calls(
                &config,
                contract,
                &registry,
                &metrics,
                &transformer,
                sharing.as_ref(),
            )?;
            (Driver::Grpc(Arc::new(calls)), None)
        }
    };
    let (watcher, running) = start_running(
        &config,
        initial,
        driver,
        &registry,
        &metrics,
        sharing.as_ref(),
        &tasks,
    );
    let state = Arc::new(AppState {
        registry,
        transformer,
        metrics,
        max_body_bytes: config.max_body_bytes,
        max_batch_events: config.max_batch_events,
        shutting_down: AtomicBool::new(false),
        sharing,
    });
    announce(&config, &listener)?;
    let stopping = state.clone();
    let timeout = config.shutdown_timeout;
    let stop = async move {
        shutdown.await;
        stopping.shutting_down.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + timeout;
        tasks.stop(deadline, running).await
    };
    let bearer = gateway_common::auth::Bearer(config.token.as_deref().map(Arc::from));
    let metrics = state.metrics.clone();
    let app = gateway_common::auth::guard(routes::router(&config.paths, state), bearer);
    gateway_common::server::serve(
        listener,
        app,
        config.listener.clone(),
        metrics.server.clone(),
        stop,
    )
    .await;
    if let Some(probe) = probe {
        let _ = probe.await;
    }
    let _ = watcher.await;
    tracing::info!("processor-client stopped");
    Ok(())
}

/// What the calls to a gRPC user server share: where it is and how its
/// events go on.
fn grpc_calls(
    config: &Config,
    contract: grpc::Contract,
    registry: &Arc<Registry>,
    metrics: &Arc<Metrics>,
    transformer: &TransformerClient,
    sharing: Option<&Arc<sharing::Sharing>>,
) -> Result<grpc::stream::Shared, RunError> {
    Ok(grpc::stream::Shared {
        registry: registry.clone(),
        server: grpc_server(config, contract)?,
        transformer: transformer.clone(),
        metrics: metrics.clone(),
        retry_base: config.retry_base,
        retry_cap: config.retry_cap,
        sharing: sharing.cloned(),
    })
}

/// The tasks that keep the configurations running, stopped in order at
/// shutdown: the supervisor that starts and stops them on the user server,
/// and the sharing with other replicas (when on).
struct Running {
    supervisor: JoinHandle<()>,
    sharing_task: Option<JoinHandle<()>>,
}

/// Starts watching the configurations (from `initial`; the watcher's task is
/// returned first) and supervising them through `driver`; shared with other
/// replicas first when sharing is on.
fn start_running(
    config: &Config,
    initial: watch::Snapshot,
    driver: Driver,
    registry: &Arc<Registry>,
    metrics: &Metrics,
    sharing: Option<&Arc<sharing::Sharing>>,
    tasks: &Tasks,
) -> (JoinHandle<()>, Running) {
    let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::new(initial));
    let watcher = tokio::spawn(watch::run(
        config.config_map.clone(),
        config.poll_interval,
        snap_tx,
        metrics.config_loads.clone(),
        tasks.background.clone(),
    ));
    let activity = Arc::new(activity::Activity::default());
    let (desired_rx, sharing_task) = match (sharing, &config.sharing) {
        (Some(sharing), Some(settings)) => {
            let (rx, task) = start_sharing(sharing, settings, registry, &activity, snap_rx, tasks);
            (rx, Some(task))
        }
        _ => (snap_rx, None),
    };
    let supervisor = tokio::spawn(
        Supervisor::new(driver, activity).run(desired_rx, tasks.supervisor_stop.clone()),
    );
    (
        watcher,
        Running {
            supervisor,
            sharing_task,
        },
    )
}

/// The client of the transformer: batching as configured, and each event's
/// claim sent with it when the configurations are shared.
fn transformer_client(
    config: &Config,
    sharing: Option<&Arc<sharing::Sharing>>,
) -> Result<TransformerClient, RunError> {
    let transformer = TransformerClient::new(
        &config.transformer_host,
        config.transformer_port,
        config.transformer_timeout,
        config.transformer_token.as_deref(),
    )?
    .with_batching(config.batch);
    Ok(match sharing {
        Some(sharing) => transformer.with_claims(sharing.clone()),
        None => transformer,
    })
}

/// The gRPC user server, as the settings name it.
fn grpc_server(config: &Config, contract: grpc::Contract) -> Result<grpc::GrpcServer, RunError> {
    Ok(grpc::GrpcServer::new(
        &config.server_host,
        config.server_port,
        contract,
        config.server_tls_ca.as_deref(),
        config.token.as_deref(),
        config.server_timeout,
    )?)
}

/// The HTTP user server's driver, and the probe that notices its restarts.
fn http_driver(
    config: &Config,
    registry: &Arc<Registry>,
    metrics: &Arc<Metrics>,
    background: &CancellationToken,
) -> Result<(Driver, Option<JoinHandle<()>>), RunError> {
    let health = Arc::new(Health::new(metrics.user_server_restarts.clone()));
    let user_server = UserServer::new(
        &config.server_host,
        config.server_port,
        &config.paths.start,
        &config.paths.stop,
        config.server_timeout,
        config.token.as_deref(),
        config.server_tls_ca.as_deref(),
    )?;
    let probe = tokio::spawn(user_server::probe_loop(
        user_server.clone(),
        health.clone(),
        config.probe_interval,
        background.clone(),
    ));
    let shared = Shared {
        registry: registry.clone(),
        user_server,
        health,
        metrics: metrics.clone(),
        retry_base: config.retry_base,
        retry_cap: config.retry_cap,
    };
    Ok((Driver::Http(Arc::new(shared)), Some(probe)))
}

/// With sharing, the supervisor sees only the configurations this replica
/// holds: the sharing task reads every snapshot and passes on the part it
/// claimed.
fn start_sharing(
    sharing: &Arc<sharing::Sharing>,
    settings: &sharing::Settings,
    registry: &Arc<Registry>,
    activity: &Arc<activity::Activity>,
    snapshots: tokio::sync::watch::Receiver<Arc<watch::Snapshot>>,
    tasks: &Tasks,
) -> (
    tokio::sync::watch::Receiver<Arc<watch::Snapshot>>,
    JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(watch::Snapshot::new()));
    let task = tokio::spawn(sharing::run(
        sharing.clone(),
        settings.clone(),
        registry.clone(),
        activity.clone(),
        sharing::Wiring {
            all: snapshots,
            desired: tx,
            stop_claiming: tasks.stop_claiming.clone(),
            release: tasks.release_claims.clone(),
        },
    ));
    (rx, task)
}

/// The start-up line: where it listens and what it drives.
fn announce(config: &Config, listener: &TcpListener) -> Result<(), RunError> {
    let local = listener.local_addr().map_err(RunError::Serve)?;
    tracing::info!(
        %local,
        gateway = %config.gateway_name,
        namespace = %config.namespace,
        user_server = %format!("{}:{}", config.server_host, config.server_port),
        protocol = ?config.protocol,
        transformer = %format!("{}:{}", config.transformer_host, config.transformer_port),
        configurations = %config.config_map.display(),
        "processor-client listening"
    );
    Ok(())
}

/// What the background tasks are told at shutdown, one signal each.
#[derive(Default)]
struct Tasks {
    /// The configuration watcher and the user server's probe.
    background: CancellationToken,
    /// Sharing: take no new claims.
    stop_claiming: CancellationToken,
    /// Sharing: hand every claim back (once its configuration has stopped).
    release_claims: CancellationToken,
    /// The supervisor: stop every configuration on the user server.
    supervisor_stop: CancellationToken,
}

impl Tasks {
    /// The shutdown order, all by `deadline` (counted from the signal):
    /// background tasks and new claims stop; every configuration is stopped
    /// on the user server (its events are still taken meanwhile, so it can
    /// flush); then the claims go back at once. The listener then closes
    /// intake and finishes the requests in flight by the same deadline.
    async fn stop(self, deadline: tokio::time::Instant, running: Running) -> tokio::time::Instant {
        let Running {
            supervisor,
            sharing_task: sharing,
        } = running;
        self.background.cancel();
        self.stop_claiming.cancel();
        self.supervisor_stop.cancel();
        if tokio::time::timeout_at(deadline, supervisor).await.is_err() {
            tracing::warn!("configurations did not all stop before the shutdown deadline");
        }
        self.release_claims.cancel();
        if let Some(task) = sharing {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("claims were not all handed back; they lapse within a lease");
            }
        }
        deadline
    }
}
