//! Prometheus text for every binary's `/metrics`: each keeps its own registry of
//! what it counts, and they all encode it, and name its content type, the same way.

use prometheus_client::registry::Registry;

/// Encodes any registry; every binary encodes its own through it.
pub fn encode_registry(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// Registers `metric` under `name` and gives it back, for the caller to keep
/// (a metric's handles share one value).
pub fn registered<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

/// The content type of [`encode_registry`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
