//! The ingress: HTTP and WebSocket traffic in, NATS request-reply out,
//! wire-compatible with h8s, so that the workloads behind it need no inbound network, only egress to
//! NATS. Each request becomes a NATS request on the subject [`subject`] maps it
//! to, with every header and the body; the reply's headers, body and
//! `X-H8S-Status` become the response. [`run`] is the whole service; `main.rs`
//! only reads the environment and calls it.

pub mod config;
pub mod hosts;
mod inbox;
mod metrics;
mod proxy;
mod state;
pub mod subject;
mod ws;

use std::future::Future;
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bind(#[from] gateway_common::start::BindError),
    #[error(transparent)]
    Nats(#[from] gateway_common::nats::ConnectError),
}

/// Binds the traffic and admin ports and serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    use gateway_common::start::bind;
    let traffic = bind(config.listen, config.port, &config::PORT).await?;
    let admin = bind(config.listen, config.admin_port, &config::ADMIN_PORT).await?;
    serve(config, traffic, admin, shutdown).await
}

/// Serves on bound listeners (tests bind port 0). On shutdown: stop accepting,
/// finish requests in flight until `SHUTDOWN_TIMEOUT`.
pub async fn serve(
    config: Config,
    traffic: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let client = gateway_common::nats::connect_with_inbox(
        &config.nats,
        "gateway-ingress",
        metrics.nats.clone(),
        Some(&config.inbox_prefix),
    )
    .await?;
    let websockets = tokio_util::sync::CancellationToken::new();
    let state = Arc::new(state::AppState {
        client: client.clone(),
        config: config.clone(),
        metrics: metrics.clone(),
        shutdown: websockets.clone(),
        inboxes: Default::default(),
    });
    announce(&config, &traffic, &admin);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let timeout = config.shutdown_timeout;
    let closing = websockets.clone();
    tokio::spawn(async move {
        shutdown.await;
        // WebSockets first: each closes with 1001 and its control message.
        closing.cancel();
        let _ = stop_tx.send(Some(tokio::time::Instant::now() + timeout));
    });
    let admin_server = tokio::spawn(gateway_common::server::serve(
        admin,
        admin_router(state.clone()),
        config.listener.clone(),
        metrics.admin_server.clone(),
        stopped(stop_rx.clone()),
    ));
    gateway_common::server::serve(
        traffic,
        proxy::router(state),
        config.listener.clone(),
        metrics.server.clone(),
        stopped(stop_rx.clone()),
    )
    .await;
    let _ = admin_server.await;
    // WebSockets still closing get until the deadline set at the signal.
    let deadline = stop_rx
        .borrow()
        .unwrap_or_else(|| tokio::time::Instant::now() + timeout);
    finish(&metrics, &client, deadline).await;
    tracing::info!("ingress stopped");
    Ok(())
}

/// A server's stop: the deadline set at the signal (now, if the signal's
/// sender is gone).
async fn stopped(
    mut rx: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
) -> tokio::time::Instant {
    loop {
        if let Some(deadline) = *rx.borrow_and_update() {
            return deadline;
        }
        if rx.changed().await.is_err() {
            return tokio::time::Instant::now();
        }
    }
}

/// Logs where the ingress listens and where it sends.
fn announce(config: &Config, traffic: &TcpListener, admin: &TcpListener) {
    let local = |l: &TcpListener| {
        l.local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
    };
    tracing::info!(
        traffic = %local(traffic),
        admin = %local(admin),
        nats = %gateway_common::redact::urls(&config.nats.url),
        prefix = %config.subject_prefix,
        "ingress listening"
    );
}

/// The admin port's routes: health, readiness (NATS connected), metrics.
fn admin_router(state: Arc<state::AppState>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(proxy::readyz))
        .route("/metrics", get(proxy::metrics))
        .with_state(state)
}

/// Waits, until `deadline`, for the WebSockets still closing, then sends what
/// is still buffered for NATS, unless NATS is away: then flushing would wait
/// for a reconnect that may never come.
async fn finish(metrics: &Metrics, client: &async_nats::Client, deadline: tokio::time::Instant) {
    while metrics.websockets_open.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if client.connection_state() == async_nats::connection::State::Connected {
        let _ = tokio::time::timeout_at(deadline, client.flush()).await;
    }
}
