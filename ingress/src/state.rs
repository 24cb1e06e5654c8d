//! What the ingress's handlers share: the NATS connection, the settings, the
//! metrics, the shutdown signal and the WebSocket inboxes open. Both the
//! request path ([`crate::proxy`]) and the WebSocket sessions ([`crate::ws`])
//! read it; neither reaches into the other.

use std::sync::Arc;

use crate::config::Config;
use crate::inbox::Inboxes;
use crate::metrics::Metrics;

pub struct AppState {
    pub client: async_nats::Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// Cancelled on shutdown: every WebSocket closes with 1001.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The inboxes of the WebSockets open (see [`crate::inbox::Inbox`]).
    pub inboxes: Inboxes,
}
