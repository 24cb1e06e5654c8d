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

/// The content type of [`encode_registry`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
