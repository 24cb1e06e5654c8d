//! Prometheus metrics of the processor-client: events in and refused, calls to the
//! user server by outcome, user-server restarts, and configurations per phase.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use axum::http::StatusCode;
use gateway_common::error::ErrorCode;
use gateway_common::metrics::registered;

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

impl SharingMetrics {
    fn register(r: &mut Registry) -> Self {
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
            r.register(name, help, counter.clone());
        }
        r.register(
            "processor_sharing_owned",
            "Configurations this replica holds",
            sharing.owned.clone(),
        );
        sharing
    }
}

impl GrpcMetrics {
    fn register(r: &mut Registry) -> Self {
        GrpcMetrics {
            streams_open: registered(
                r,
                "processor_grpc_streams_open",
                "Calls to a gRPC user server whose stream is open",
                Gauge::default(),
            ),
            reconnects: registered(
                r,
                "processor_grpc_reconnects",
                "Calls to a gRPC user server opened again after a transient end",
                Counter::default(),
            ),
            messages_read: registered(
                r,
                "processor_grpc_messages_read",
                "Messages read from gRPC user servers' streams",
                Counter::default(),
            ),
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        Metrics {
            events_forwarded: registered(
                &mut r,
                "processor_events_forwarded",
                "Events the transformer accepted from this processor-client",
                Counter::default(),
            ),
            rejected: registered(
                &mut r,
                "processor_events_rejected",
                "Events refused, by reason (bad_request, unknown_src, too_large, not_owner, backpressure, transformer_unavailable)",
                Family::default(),
            ),
            calls: registered(
                &mut r,
                "processor_user_server_requests",
                "Requests to the user server by operation (start, stop) and outcome",
                Family::default(),
            ),
            user_server_restarts: registered(
                &mut r,
                "processor_user_server_restarts",
                "Times the user server came back after being seen down",
                Counter::default(),
            ),
            config_loads: registered(
                &mut r,
                "processor_config_loads",
                "Times the configurations were read (after a file notification, or by the slow poll)",
                Counter::default(),
            ),
            configs: registered(
                &mut r,
                "processor_configurations",
                "Configurations by phase",
                Family::default(),
            ),
            grpc: GrpcMetrics::register(&mut r),
            sharing: SharingMetrics::register(&mut r),
            server: gateway_common::server::ServerMetrics::register(&mut r, "processor"),
            registry: r,
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
