//! A binary's start, the same for the three: read the settings from the
//! environment (each variable declared once, in the binary's `config`),
//! start logging, bind the ports naming the variable that chose each, run
//! until SIGTERM or SIGINT, and report an error that stops it as one line.
//! `main.rs` is a call of [`main`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::process::ExitCode;

use tokio::net::TcpListener;

use crate::env::{ConfigError, Env, Var};

/// A binary's settings, read from its environment.
pub trait Settings: Sized {
    /// Reads every variable the binary declares; an error names the variable.
    fn read(env: &Env) -> Result<Self, ConfigError>;

    /// Whether logs are JSON lines (`LOG_FORMAT=json`).
    fn json_logs(&self) -> bool;

    /// [`Settings::read`] of the process's environment.
    fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env::from_process())
    }

    /// [`Settings::read`] of these variables (tests).
    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        Self::read(&Env::from_vars(vars))
    }
}

/// The future a binary's `run` takes: resolved by the first SIGTERM or SIGINT.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a binary: its settings from the environment, logging, then `run`
/// until a shutdown signal. Exits 0 after a clean stop, 1 after an error
/// (printed by [`crate::telemetry::failed`]).
pub async fn main<S, F, Fut, E>(run: F) -> ExitCode
where
    S: Settings,
    F: FnOnce(S, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let settings = match S::from_env() {
        Ok(s) => s,
        Err(e) => return crate::telemetry::failed(&e),
    };
    crate::telemetry::init(settings.json_logs());
    match run(settings, Box::pin(crate::shutdown::signal())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::telemetry::failed(&e),
    }
}

/// A port that cannot be listened on, named by its variable.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({var}): {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    /// The variable that chose the port.
    pub var: &'static str,
    pub source: std::io::Error,
}

/// Binds `ip:port`, `port` being what the variable `var` set.
pub async fn bind(ip: IpAddr, port: u16, var: &Var) -> Result<TcpListener, BindError> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr).await.map_err(|source| BindError {
        addr,
        var: var.name,
        source,
    })
}
