//! Writing a gateway user server in Rust. Implement [`ConfigExecutor`] (the seeds'
//! `StartConfig` / `StopConfig` / `Validate`, out of process) and call [`run`]: the
//! crate serves `/start` and `/stop` as the contract says, runs each configuration
//! as its own cancellable task, and hands it an [`Emitter`] that posts events to
//! the processor-client, waiting out 503 + `Retry-After` so nothing is dropped.
//! The same executor can instead serve a gRPC processor-client
//! (`GATEWAY_PROCESSOR_SERVER_PROTOCOL=grpc` or `grpc-v06`, [`grpc`]).

mod backoff;
mod emitter;
pub mod grpc;
mod logging;
mod pile;
pub mod server;
mod tasks;

pub use backoff::backoff;
pub use emitter::{EmitError, Emitter, Event};
pub use grpc::{serve_grpc, Contract};
pub use logging::init_logging;
pub use server::{run, serve, Settings};
pub use tasks::STOP_GRACE;
pub use tokio_util::sync::CancellationToken;

use serde::{Deserialize, Serialize};

/// What `/start` and `/stop` receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigData {
    pub id: String,
    #[serde(rename = "timeID")]
    pub time_id: String,
    pub src: String,
    pub config: String,
}

/// Why a configuration cannot start yet, or at all ([`ConfigExecutor::prepare`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unready {
    /// Not now (the broker cannot be reached): try again later.
    Later(String),
    /// Never as it stands (no such topic, refused credentials): the
    /// configuration is in Error until its value changes.
    Refused(String),
}

/// A kind of event source. One executor serves every configuration; the server
/// calls `start` once per start, on a task of its own, and cancels `stop` when the
/// configuration is stopped, changed or replaced.
pub trait ConfigExecutor: Send + Sync + 'static {
    /// Checks a configuration before it starts. An error becomes a 400 whose body
    /// the processor-client shows as the configuration's Error message.
    fn validate(&self, config: &ConfigData) -> Result<(), String>;

    /// Checks, before the start is answered, what the configuration needs
    /// outside this process (a broker it reads). [`Unready::Later`] answers 503
    /// (on gRPC UNAVAILABLE): the processor-client shows the configuration
    /// Pending with the reason and tries the start again; [`Unready::Refused`]
    /// answers as a failed `validate` does. Ready by default.
    fn prepare(
        &self,
        _config: &ConfigData,
    ) -> impl std::future::Future<Output = Result<(), Unready>> + Send {
        async { Ok(()) }
    }

    /// Runs the configuration until `stop` is cancelled, emitting its events.
    /// Once `stop` is cancelled the task has [`STOP_GRACE`] to return by
    /// itself (to settle what it holds) before it is dropped.
    fn start(
        &self,
        config: ConfigData,
        emitter: Emitter,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static;

    /// Called on `/stop`, after the configuration's task was cancelled: release
    /// what `start` could not release by itself. Does nothing by default.
    fn stop(&self, _config: &ConfigData) {}
}
