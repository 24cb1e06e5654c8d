//! What the gateway's binaries share, so that none of them reaches into another:
//! the wire format between producers, processor-client and transformer, the JSON
//! error answers, bearer-token access control, TLS for outgoing HTTPS, backoff,
//! telemetry, compressed request bodies, the shutdown signal, the environment
//! helpers (and near misses of the variables' names), URLs with their secrets
//! hidden for logs and labels, the listener every HTTP port is served by
//! (timeouts and a connection limit against hostile clients), and a bounded
//! read of another server's answer.

pub mod answer;
pub mod auth;
pub mod backoff;
pub mod coding;
pub mod endpoint;
pub mod env;
pub mod error;
pub mod media;
pub mod metrics;
pub mod nats;
pub mod redact;
pub mod server;
pub mod shutdown;
pub mod spelling;
pub mod start;
pub mod telemetry;
pub mod tls;
pub mod wire;
