//! Prometheus metrics of the processor-client: events in and refused, calls to the
//! user server by outcome, user-server restarts, and configurations per phase.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use axum::http::StatusCode;
use gateway_common::error::ErrorCode;

use crate::configs::Registry as Configs;
use crate::user_server::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabel {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// The HTTP listener's connections.
    pub server: gateway_common::server::ServerMetrics,
    pub events_forwarded: Counter,
    rejected: Family<ReasonLabel, Counter>,
    calls: Family<CallLabel, Counter>,
    pub user_server_restarts: Counter,
    /// Reads of the configurations (notifications and the slow poll).
    pub config_loads: Counter,
    configs: Family<PhaseLabel, Gauge>,
    /// Streams of gRPC user servers.
    pub grpc: GrpcMetrics,
    /// Configurations shared with other replicas.
    pub sharing: SharingMetrics,
}

/// Claims on configurations shared among replicas.
#[derive(Clone, Default)]
pub struct SharingMetrics {
    pub claims: Counter,
    pub renewals: Counter,
    pub losses: Counter,
    pub handovers: Counter,
    pub owned: Gauge,
}

/// The gRPC user server's calls.
#[derive(Clone, Default)]
pub struct GrpcMetrics {
    pub streams_open: Gauge,
    pub reconnects: Counter,
    pub messages_read: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let events_forwarded = Counter::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let calls = Family::<CallLabel, Counter>::default();
        let user_server_restarts = Counter::default();
        let config_loads = Counter::default();
        let configs = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "processor_events_forwarded",
            "Events the transformer accepted from this processor-client",
            events_forwarded.clone(),
        );
        registry.register(
            "processor_events_rejected",
            "Events refused, by reason (bad_request, unknown_src, too_large, not_owner, backpressure, transformer_unavailable)",
            rejected.clone(),
        );
        registry.register(
            "processor_user_server_requests",
            "Requests to the user server by operation (start, stop) and outcome",
            calls.clone(),
        );
        registry.register(
            "processor_user_server_restarts",
            "Times the user server came back after being seen down",
            user_server_restarts.clone(),
        );
        registry.register(
            "processor_config_loads",
            "Times the configurations were read (after a file notification, or by the slow poll)",
            config_loads.clone(),
        );
        registry.register(
            "processor_configurations",
            "Configurations by phase",
            configs.clone(),
        );
        let grpc = GrpcMetrics::default();
        registry.register(
            "processor_grpc_streams_open",
            "Calls to a gRPC user server whose stream is open",
            grpc.streams_open.clone(),
        );
        registry.register(
            "processor_grpc_reconnects",
            "Calls to a gRPC user server opened again after a transient end",
            grpc.reconnects.clone(),
        );
        registry.register(
            "processor_grpc_messages_read",
            "Messages read from gRPC user servers' streams",
            grpc.messages_read.clone(),
        );
        let sharing = SharingMetrics::default();
        for (name, help, counter) in [
            (
                "processor_sharing_claims",
                "Configurations this replica claimed",
                &sharing.claims,
            ),
            (
                "processor_sharing_renewals",
                "Claims this replica renewed",
                &sharing.renewals,
            ),
            (
                "processor_sharing_losses",
                "Claims this replica lost (not renewed in time, or taken)",
                &sharing.losses,
            ),
            (
                "processor_sharing_handovers",
                "Claims this replica gave back to rebalance",
                &sharing.handovers,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "processor_sharing_owned",
            "Configurations this replica holds",
            sharing.owned.clone(),
        );
        let server = gateway_common::server::ServerMetrics::register(&mut registry, "processor");
        Metrics {
            server,
            registry,
            events_forwarded,
            rejected,
            calls,
            user_server_restarts,
            config_loads,
            configs,
            grpc,
            sharing,
        }
    }

    /// Counts an event refused with `code`, under its reason's label.
    pub fn refused(&self, code: ErrorCode) {
        self.reject(reject_reason(code));
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn user_server_call(&self, op: &'static str, outcome: &Outcome) {
        let outcome = match outcome {
            Outcome::Accepted => "accepted",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Failed { refused: true, .. } => "refused",
            Outcome::Failed { .. } => "failed",
        };
        self.calls.get_or_create(&CallLabel { op, outcome }).inc();
    }

    /// Refreshes the per-phase gauges and renders the text format.
    pub fn encode(&self, configs: &Configs) -> String {
        for (phase, n) in configs.count_by_phase() {
            self.configs
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str(),
                })
                .set(n);
        }
        gateway_common::metrics::encode_registry(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The label of `processor_events_rejected_total` for a refusal.
fn reject_reason(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NotOwner => "not_owner",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::UnknownSrc | ErrorCode::StoppedSrc => "unknown_src",
        ErrorCode::TransformerUnavailable => "transformer_unavailable",
        c if c.status() == StatusCode::SERVICE_UNAVAILABLE => "backpressure",
        _ => "bad_request",
    }
}
