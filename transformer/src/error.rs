//! Why the transformer cannot start or go on serving: each cause names what
//! to fix (a variable, a file, a trigger). Its own module, so that the
//! pieces that build the service (the root's `run`, the trigger wiring) can
//! all return it without importing each other.

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bind(#[from] gateway_common::start::BindError),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Nats(#[from] gateway_common::nats::ConnectError),
    #[error("{0}")]
    Tls(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Client(#[from] gateway_common::tls::ClientError),
    #[error("TRANSFORMER_TRIGGERS: trigger {trigger:?}: {why}")]
    Trigger { trigger: String, why: String },
}
