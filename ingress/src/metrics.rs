//! Prometheus metrics of the ingress: requests by status, their latency, open
//! WebSockets, NATS (re)connects, and each listener's connections.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use gateway_common::nats::ConnectionMetrics;
use gateway_common::server::ServerMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<StatusLabel, Counter>,
    pub latency: Histogram,
    pub websockets_open: Gauge,
    pub nats: ConnectionMetrics,
    pub server: ServerMetrics,
    pub admin_server: ServerMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<StatusLabel, Counter>::default();
        registry.register(
            "ingress_requests",
            "HTTP requests answered, by status",
            requests.clone(),
        );
        let latency = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register(
            "ingress_request_duration_seconds",
            "Time from a request's head to its answer",
            latency.clone(),
        );
        let websockets_open = Gauge::default();
        registry.register(
            "ingress_websockets_open",
            "WebSocket connections open",
            websockets_open.clone(),
        );
        let nats = ConnectionMetrics::default();
        registry.register(
            "ingress_nats_connects",
            "Connections to NATS made (the first and every reconnect)",
            nats.connects.clone(),
        );
        registry.register(
            "ingress_nats_disconnects",
            "Connections to NATS lost",
            nats.disconnects.clone(),
        );
        let server = ServerMetrics::register(&mut registry, "ingress");
        let admin_server = ServerMetrics::register(&mut registry, "ingress_admin");
        Metrics {
            registry,
            requests,
            latency,
            websockets_open,
            nats,
            server,
            admin_server,
        }
    }

    pub fn encode(&self) -> String {
        gateway_common::metrics::encode_registry(&self.registry)
    }
}
