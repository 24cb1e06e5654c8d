//! The user server's HTTP side: `/start` validates and starts a task per
//! configuration (replacing one already running for the same `src`), `/stop`
//! cancels it. Shutdown cancels every task and waits (a bounded time) for them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::emitter::{HttpLine, Line};
use crate::{ConfigData, ConfigExecutor, Emitter, Unready};

/// Where things are, from the contract's environment variables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `GATEWAY_PROCESSOR_SERVER_HTTP_PORT` (default 8080).
    pub port: u16,
    /// `http://HOST:PORT` of the processor-client: `GATEWAY_PROCESSOR_CLIENT_HOST`
    /// (default 127.0.0.1) and `GATEWAY_PROCESSOR_CLIENT_HTTP_PORT` (default 9393).
    pub processor_client: String,
    pub start_path: String,
    pub stop_path: String,
    pub event_path: String,
    pub running_path: String,
    pub error_path: String,
    /// `GATEWAY_PROCESSOR_SERVER_PROTOCOL`: `http` (default), or the gRPC
    /// contract to serve on [`Settings::grpc_port`].
    pub grpc: Option<crate::Contract>,
    /// `GATEWAY_PROCESSOR_SERVER_GRPC_PORT` (default 50051).
    pub grpc_port: u16,
}

/// A variable the SDK reads: its name and its default.
pub type Var = (&'static str, &'static str);

const SERVER_HTTP_PORT: Var = ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "8080");
const CLIENT_HOST: Var = ("GATEWAY_PROCESSOR_CLIENT_HOST", "127.0.0.1");
const CLIENT_HTTP_PORT: Var = ("GATEWAY_PROCESSOR_CLIENT_HTTP_PORT", "9393");
const CONFIG_START: Var = ("GATEWAY_HTTP_CONFIG_START", "/start");
const CONFIG_STOP: Var = ("GATEWAY_HTTP_CONFIG_STOP", "/stop");
const CONFIG_EVENT: Var = ("GATEWAY_HTTP_CONFIG_EVENT", "/event");
const CONFIG_RUNNING: Var = ("GATEWAY_HTTP_CONFIG_RUNNING", "/activated");
const CONFIG_ERROR: Var = ("GATEWAY_HTTP_CONFIG_ERROR", "/error");
const SERVER_PROTOCOL: Var = ("GATEWAY_PROCESSOR_SERVER_PROTOCOL", "http");
const SERVER_GRPC_PORT: Var = ("GATEWAY_PROCESSOR_SERVER_GRPC_PORT", "50051");

/// Every variable [`Settings::from_env`] reads, so that deployment files can
/// be checked against it.
pub const VARS: [Var; 10] = [
    SERVER_HTTP_PORT,
    CLIENT_HOST,
    CLIENT_HTTP_PORT,
    CONFIG_START,
    CONFIG_STOP,
    CONFIG_EVENT,
    CONFIG_RUNNING,
    CONFIG_ERROR,
    SERVER_PROTOCOL,
    SERVER_GRPC_PORT,
];

impl Settings {
    /// Reads the contract's variables; malformed ports fall back to an error naming them.
    pub fn from_env() -> Result<Settings, String> {
        let var = |(k, d): Var| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_owned())
        };
        let port = |v: Var| var(v).parse::<u16>().map_err(|e| format!("{}: {e}", v.0));
        Ok(Settings {
            port: port(SERVER_HTTP_PORT)?,
            processor_client: format!("http://{}:{}", var(CLIENT_HOST), port(CLIENT_HTTP_PORT)?),
            start_path: var(CONFIG_START),
            stop_path: var(CONFIG_STOP),
            event_path: var(CONFIG_EVENT),
            running_path: var(CONFIG_RUNNING),
            error_path: var(CONFIG_ERROR),
            grpc: match var(SERVER_PROTOCOL).as_str() {
                "http" => None,
                "grpc" => Some(crate::Contract::Generic),
                "grpc-v06" => Some(crate::Contract::V06),
                other => {
                    return Err(format!(
                    "GATEWAY_PROCESSOR_SERVER_PROTOCOL: {other:?}; expected http, grpc or grpc-v06"
                ))
                }
            },
            grpc_port: port(SERVER_GRPC_PORT)?,
        })
    }
}

struct Shared<E> {
    executor: Arc<E>,
    settings: Settings,
    client: reqwest::Client,
    /// Each source's latest run; a stopped one stays (cancelled) so that
    /// the next start waits for it to finish.
    running: Mutex<HashMap<String, Run>>,
    tasks: TaskTracker,
}

struct Run {
    stop: CancellationToken,
    finished: crate::tasks::Finished,
}

/// Serves `executor` on the port the environment names until SIGTERM or SIGINT:
/// over HTTP, or as the gRPC contract `GATEWAY_PROCESSOR_SERVER_PROTOCOL` names.
pub async fn run<E: ConfigExecutor>(executor: E) -> Result<(), String> {
    let settings = Settings::from_env()?;
    if let Some(contract) = settings.grpc {
        let listener = TcpListener::bind(("0.0.0.0", settings.grpc_port))
            .await
            .map_err(|e| format!("cannot listen on port {}: {e}", settings.grpc_port))?;
        return crate::grpc::serve_grpc(executor, contract, listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string());
    }
    let listener = TcpListener::bind(("0.0.0.0", settings.port))
        .await
        .map_err(|e| format!("cannot listen on port {}: {e}", settings.port))?;
    serve(executor, settings, listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// Serves on a bound listener until `shutdown`, then stops every configuration.
pub async fn serve<E: ConfigExecutor>(
    executor: E,
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        executor: Arc::new(executor),
        client: {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default()
        },
        settings: settings.clone(),
        running: Mutex::new(HashMap::new()),
        tasks: TaskTracker::new(),
    });
    let app = Router::new()
        .route(&settings.start_path, post(start::<E>))
        .route(&settings.stop_path, post(stop::<E>))
        .with_state(shared.clone());
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    for (_, run) in shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
    {
        run.stop.cancel();
    }
    crate::tasks::drain(&shared.tasks).await;
    result
}

async fn start<E: ConfigExecutor>(
    State(shared): State<Arc<Shared<E>>>,
    Json(config): Json<ConfigData>,
) -> Result<StatusCode, (StatusCode, String)> {
    shared
        .executor
        .validate(&config)
        .map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    shared
        .executor
        .prepare(&config)
        .await
        .map_err(|e| match e {
            Unready::Later(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
            Unready::Refused(why) => (StatusCode::BAD_REQUEST, why),
        })?;
    let token = CancellationToken::new();
    let s = &shared.settings;
    let emitter = Emitter {
        line: Line::Http(HttpLine {
            client: shared.client.clone(),
            base: s.processor_client.clone(),
            event_path: s.event_path.clone(),
            running_path: s.running_path.clone(),
            error_path: s.error_path.clone(),
            pile: HttpLine::pile(),
        }),
        config: config.clone(),
        stop: token.clone(),
    };
    tracing::info!(src = %config.src, id = %config.id, "configuration started");
    let src = config.src.clone();
    let task = shared.executor.start(config, emitter, token.clone());
    let mut running = shared.running.lock().unwrap_or_else(|p| p.into_inner());
    let after = running.get(&src).map(|previous| {
        previous.stop.cancel();
        previous.finished.clone()
    });
    let finished = crate::tasks::supervise(&shared.tasks, task, token.clone(), after);
    running.insert(
        src,
        Run {
            stop: token,
            finished,
        },
    );
    Ok(StatusCode::OK)
}

async fn stop<E: ConfigExecutor>(
    State(shared): State<Arc<Shared<E>>>,
    Json(config): Json<ConfigData>,
) -> StatusCode {
    let token = shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&config.src)
        .map(|run| run.stop.clone())
        .filter(|stop| !stop.is_cancelled());
    if let Some(token) = token {
        token.cancel();
        shared.executor.stop(&config);
        tracing::info!(src = %config.src, "configuration stopped");
    }
    StatusCode::OK
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
