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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::transformer_client::TransformerClient;
use tokio::net::TcpListener;
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
    #[error("cannot listen on {addr} ({var}): {source}")]
    Bind {
        addr: SocketAddr,
        /// The variable that chose the port.
        var: &'static str,
        source: std::io::Error,
    },
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
    let addr = SocketAddr::new(config.listen, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            addr,
            var: "GATEWAY_PROCESSOR_CLIENT_HTTP_PORT",
            source,
        })?;
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
    let mut transformer = TransformerClient::new(
        &config.transformer_host,
        config.transformer_port,
        config.transformer_timeout,
        config.transformer_token.as_deref(),
    )?
    .with_batching(config.batch);
    if let Some(sharing) = &sharing {
        transformer = transformer.with_claims(sharing.clone());
    }

    let background = CancellationToken::new();
    let (driver, probe) = match config.protocol {
        Protocol::Http => {
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
            (Driver::Http(Arc::new(shared)), Some(probe))
        }
        Protocol::Grpc(contract) => {
            let server = grpc::GrpcServer::new(
                &config.server_host,
                config.server_port,
                contract,
                config.server_tls_ca.as_deref(),
                config.token.as_deref(),
                config.server_timeout,
            )?;
            let shared = grpc::stream::Shared {
                registry: registry.clone(),
                server,
                transformer: transformer.clone(),
                metrics: metrics.clone(),
                retry_base: config.retry_base,
                retry_cap: config.retry_cap,
                sharing: sharing.clone(),
            };
            (Driver::Grpc(Arc::new(shared)), None)
        }
    };
    let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::new(initial));
    let watcher = tokio::spawn(watch::run(
        config.config_map.clone(),
        config.poll_interval,
        snap_tx,
        metrics.config_loads.clone(),
        background.clone(),
    ));
    // With sharing, the supervisor sees only the configurations this replica
    // holds; the sharing task decides which those are.
    let activity = Arc::new(activity::Activity::default());
    let stop_claiming = CancellationToken::new();
    let release_claims = CancellationToken::new();
    let (desired_rx, sharing_task) = match (&sharing, &config.sharing) {
        (Some(sharing), Some(settings)) => {
            let (tx, rx) = tokio::sync::watch::channel(Arc::new(watch::Snapshot::new()));
            let task = tokio::spawn(sharing::run(
                sharing.clone(),
                settings.clone(),
                registry.clone(),
                activity.clone(),
                snap_rx,
                tx,
                stop_claiming.clone(),
                release_claims.clone(),
            ));
            (rx, Some(task))
        }
        _ => (snap_rx, None),
    };
    let supervisor_stop = CancellationToken::new();
    let supervisor =
        tokio::spawn(Supervisor::new(driver, activity).run(desired_rx, supervisor_stop.clone()));

    let state = Arc::new(AppState {
        registry,
        transformer,
        metrics,
        max_body_bytes: config.max_body_bytes,
        max_batch_events: config.max_batch_events,
        shutting_down: AtomicBool::new(false),
        sharing,
    });
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
    // One deadline for the whole shutdown, counted from the signal: first
    // every configuration is stopped on the user server (its events are still
    // taken meanwhile, so it can flush), then intake closes and requests in
    // flight finish, all by SHUTDOWN_TIMEOUT.
    let stopping = state.clone();
    let timeout = config.shutdown_timeout;
    let stop = async move {
        shutdown.await;
        let deadline = tokio::time::Instant::now() + timeout;
        stopping.shutting_down.store(true, Ordering::Relaxed);
        background.cancel();
        stop_claiming.cancel();
        supervisor_stop.cancel();
        if tokio::time::timeout_at(deadline, supervisor).await.is_err() {
            tracing::warn!("configurations did not all stop before the shutdown deadline");
        }
        // Every configuration has stopped here: hand the claims back at once.
        release_claims.cancel();
        if let Some(task) = sharing_task {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("claims were not all handed back; they lapse within a lease");
            }
        }
        deadline
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
