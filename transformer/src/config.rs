//! The transformer's environment, read once at start with envy. Every variable of the
//! contract has its default here; a missing or malformed one is an error that names it.

use std::net::IpAddr;
use std::time::Duration;

use gateway_common::env::{
    default_body_timeout, default_header_timeout, default_idle_timeout, default_listen,
    default_max_connections, default_namespace, default_port, default_shutdown, load_env,
    load_from, parse_bool, parse_duration, parse_ip, parse_listener, parse_log_format, parse_token,
    parse_urls, ConfigError, ListenerVars,
};
use gateway_common::server::Limits as ListenerLimits;

/// The transformer's listener variables.
const LISTENER: ListenerVars = ListenerVars {
    header_timeout: "TRANSFORMER_HEADER_TIMEOUT",
    idle_timeout: "TRANSFORMER_IDLE_TIMEOUT",
    body_timeout: "TRANSFORMER_BODY_TIMEOUT",
    max_connections: "TRANSFORMER_MAX_CONNECTIONS",
};
use serde::Deserialize;

/// Transport to sensors: binary puts attributes in headers, structured sends one JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeMode {
    Binary,
    Structured,
}

/// `NATS_TYPE`: core publish, or JetStream with acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsType {
    Standard,
    Streaming,
}

/// The delivery policy each watcher's queue follows.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Per-attempt deadline: a sensor that accepts and never answers is cut off here.
    pub timeout: Duration,
    pub base: Duration,
    pub cap: Duration,
    /// Attempts before an event is dead-lettered; 0 means retry until shutdown.
    pub attempts: u32,
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub url: String,
    pub ty: NatsType,
    pub subject: String,
    pub stream: String,
    /// Content mode of the CloudEvents NATS binding; structured by default.
    pub ce_mode: CeMode,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub creds: Option<std::path::PathBuf>,
    pub tls_ca: Option<std::path::PathBuf>,
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    pub tls_required: bool,
}

/// The transformer's typed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway_name: String,
    pub namespace: String,
    pub controller_instance_id: String,
    pub listen: IpAddr,
    pub port: u16,
    pub event_type: String,
    pub sensor_watchers: Vec<reqwest::Url>,
    pub gateway_watchers: Vec<reqwest::Url>,
    pub http_enabled: bool,
    pub nats: Option<NatsConfig>,
    pub ce_mode: CeMode,
    pub queue_capacity: usize,
    pub lanes: usize,
    pub max_body_bytes: usize,
    pub retry: RetryPolicy,
    pub shutdown_timeout: Duration,
    pub json_logs: bool,
    /// Where the durable queue lives; `None` keeps it in a temporary directory.
    pub data_dir: Option<std::path::PathBuf>,
    pub fsync: crate::store::Fsync,
    pub queue_max_bytes: usize,
    /// The dead-letter store's memtable, in bytes (the queue itself is a log).
    pub store_memtable_bytes: usize,
    /// `TRANSFORMER_ADMIT_WAIT`: how long a producer's request may wait for room
    /// in a full queue before it gets 503.
    pub admit_wait: Duration,
    /// `TRANSFORMER_TOKEN`: when set, producers must send it as a bearer token.
    pub token: Option<String>,
    /// `WATCHER_TOKEN`: sent as a bearer token to every HTTP watcher, e.g. the
    /// `TRANSFORMER_TOKEN` of a gateway this one feeds.
    pub watcher_token: Option<String>,
    /// `WATCHER_TLS_CA`: a PEM file of CA certificates trusted for HTTPS watchers.
    pub watcher_tls_ca: Option<std::path::PathBuf>,
    /// `TRANSFORMER_HEADER_TIMEOUT`, `_IDLE_TIMEOUT`, `_BODY_TIMEOUT`,
    /// `_MAX_CONNECTIONS`: the bounds of the HTTP listener.
    pub listener: ListenerLimits,
}

#[derive(Deserialize)]
struct RawEnv {
    gateway_name: String,
    #[serde(default = "default_namespace")]
    gateway_namespace: String,
    #[serde(default)]
    gateway_controller_instance_id: String,
    #[serde(default = "default_listen")]
    transformer_listen_address: String,
    #[serde(default = "default_port")]
    transformer_port: u16,
    event_type: Option<String>,
    #[serde(default)]
    sensor_watchers: String,
    #[serde(default)]
    gateway_watchers: String,
    #[serde(default = "default_protocol")]
    event_protocol: String,
    #[serde(default = "default_nats_url")]
    nats_url: String,
    #[serde(default = "default_nats_type")]
    nats_type: String,
    #[serde(default = "default_nats_subject")]
    nats_subject: String,
    nats_stream: Option<String>,
    #[serde(default = "default_nats_ce_mode")]
    nats_ce_mode: String,
    nats_token: Option<String>,
    nats_user: Option<String>,
    nats_password: Option<String>,
    nats_creds: Option<String>,
    nats_tls_ca: Option<String>,
    nats_tls_cert: Option<String>,
    nats_tls_key: Option<String>,
    #[serde(default = "default_false")]
    nats_tls_required: String,
    #[serde(default = "default_ce_mode")]
    ce_mode: String,
    #[serde(default = "default_queue_capacity")]
    transformer_queue_capacity: usize,
    #[serde(default = "default_lanes")]
    watcher_concurrency: usize,
    #[serde(default = "default_max_body")]
    transformer_max_body_bytes: usize,
    #[serde(default = "default_timeout")]
    watcher_timeout: String,
    #[serde(default = "default_retry_base")]
    watcher_retry_base: String,
    #[serde(default = "default_retry_cap")]
    watcher_retry_cap: String,
    #[serde(default)]
    watcher_retry_attempts: u32,
    #[serde(default = "default_shutdown")]
    shutdown_timeout: String,
    #[serde(default)]
    log_format: String,
    transformer_data_dir: Option<String>,
    #[serde(default = "default_durable")]
    transformer_durable: String,
    #[serde(default = "default_fsync")]
    transformer_fsync: String,
    #[serde(default = "default_queue_max_bytes")]
    transformer_queue_max_bytes: usize,
    #[serde(default = "default_store_memtable_bytes")]
    transformer_store_memtable_bytes: usize,
    #[serde(default = "default_admit_wait")]
    transformer_admit_wait: String,
    transformer_token: Option<String>,
    watcher_token: Option<String>,
    watcher_tls_ca: Option<String>,
    #[serde(default = "default_header_timeout")]
    transformer_header_timeout: String,
    #[serde(default = "default_idle_timeout")]
    transformer_idle_timeout: String,
    #[serde(default = "default_body_timeout")]
    transformer_body_timeout: String,
    #[serde(default = "default_max_connections")]
    transformer_max_connections: usize,
}

/// Long enough to ride out a burst while the watchers catch up (the request is
/// simply answered later, which slows producers without a 503 round trip), short
/// enough that a dead sensor turns into 503s well inside any client's timeout.
fn default_admit_wait() -> String {
    "500ms".into()
}
fn default_durable() -> String {
    "true".into()
}
fn default_fsync() -> String {
    "never".into()
}
fn default_store_memtable_bytes() -> usize {
    crate::store::DEFAULT_MEMTABLE_BYTES as usize
}
fn default_queue_max_bytes() -> usize {
    32 * 1024 * 1024
}

/// `TRANSFORMER_FSYNC`: `never` (writes reach the OS before the 2xx), `always` (an
/// fsync before every 2xx), or a period such as `100ms`.
pub fn parse_fsync(raw: &str) -> Result<crate::store::Fsync, ConfigError> {
    use crate::store::Fsync;
    match raw.trim().to_ascii_lowercase().as_str() {
        "never" | "no" | "false" | "os" => Ok(Fsync::Never),
        "always" | "yes" | "true" => Ok(Fsync::Always),
        other => match parse_duration("TRANSFORMER_FSYNC", other) {
            Ok(d) if !d.is_zero() => Ok(Fsync::Every(d)),
            _ => Err(ConfigError::Invalid {
                var: "TRANSFORMER_FSYNC",
                reason: format!("{other:?}; expected never, always, or a period like 100ms"),
            }),
        },
    }
}

fn default_protocol() -> String {
    "HTTP".into()
}
fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_nats_type() -> String {
    "Standard".into()
}
fn default_nats_subject() -> String {
    "{gateway}.{src}".into()
}
fn default_ce_mode() -> String {
    "binary".into()
}
fn default_nats_ce_mode() -> String {
    "structured".into()
}
fn default_false() -> String {
    "false".into()
}

fn parse_ce_mode(var: &'static str, raw: &str) -> Result<CeMode, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "binary" => Ok(CeMode::Binary),
        "structured" => Ok(CeMode::Structured),
        other => Err(ConfigError::Invalid {
            var,
            reason: format!("{other:?}; expected binary or structured"),
        }),
    }
}

/// A JetStream stream name: none of whitespace, `.`, `*`, `>`, `/` or a backslash.
fn stream_name(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_whitespace() || ".*>/\\".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect()
}
fn default_queue_capacity() -> usize {
    10_000
}
/// Deliveries in flight per watcher. Each configuration keeps to one lane, so order
/// holds; more lanes let more configurations' events travel at once.
fn default_lanes() -> usize {
    16
}
/// Room for a 1 MiB event body from the processor-client plus its JSON envelope.
fn default_max_body() -> usize {
    1024 * 1024 + 4096
}
fn default_timeout() -> String {
    "5s".into()
}
fn default_retry_base() -> String {
    "100ms".into()
}
fn default_retry_cap() -> String {
    "5s".into()
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_raw(load_env()?)
    }

    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::from_raw(load_from(vars)?)
    }

    fn from_raw(raw: RawEnv) -> Result<Self, ConfigError> {
        if raw.gateway_name.trim().is_empty() {
            return Err(ConfigError::Missing("GATEWAY_NAME".into()));
        }
        let mut http_enabled = false;
        let mut nats_enabled = false;
        for p in raw
            .event_protocol
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match p.to_ascii_uppercase().as_str() {
                "HTTP" => http_enabled = true,
                "NATS" => nats_enabled = true,
                other => {
                    return Err(ConfigError::Invalid {
                        var: "EVENT_PROTOCOL",
                        reason: format!("{other:?}; expected HTTP, NATS or HTTP,NATS"),
                    })
                }
            }
        }
        if !http_enabled && !nats_enabled {
            return Err(ConfigError::Invalid {
                var: "EVENT_PROTOCOL",
                reason: "names no protocol".into(),
            });
        }
        let ty = match raw.nats_type.trim().to_ascii_lowercase().as_str() {
            "standard" => NatsType::Standard,
            "streaming" | "jetstream" => NatsType::Streaming,
            other => {
                return Err(ConfigError::Invalid {
                    var: "NATS_TYPE",
                    reason: format!("{other:?}; expected Standard or Streaming"),
                })
            }
        };
        let path = |v: &Option<String>| v.as_ref().map(std::path::PathBuf::from);
        let nats = if nats_enabled {
            let stream = match &raw.nats_stream {
                Some(s) if stream_name(s) != *s => {
                    return Err(ConfigError::Invalid {
                        var: "NATS_STREAM",
                        reason: format!(
                            "{s:?} may not contain whitespace, '.', '*', '>', '/' or a backslash"
                        ),
                    })
                }
                Some(s) => s.clone(),
                None => stream_name(&raw.gateway_name.to_ascii_uppercase()),
            };
            if raw.nats_user.is_some() != raw.nats_password.is_some() {
                return Err(ConfigError::Invalid {
                    var: if raw.nats_user.is_some() {
                        "NATS_PASSWORD"
                    } else {
                        "NATS_USER"
                    },
                    reason: "NATS_USER and NATS_PASSWORD go together".into(),
                });
            }
            if raw.nats_tls_cert.is_some() != raw.nats_tls_key.is_some() {
                return Err(ConfigError::Invalid {
                    var: if raw.nats_tls_cert.is_some() {
                        "NATS_TLS_KEY"
                    } else {
                        "NATS_TLS_CERT"
                    },
                    reason: "NATS_TLS_CERT and NATS_TLS_KEY go together".into(),
                });
            }
            Some(NatsConfig {
                url: raw.nats_url.clone(),
                ty,
                subject: raw.nats_subject.clone(),
                stream,
                ce_mode: parse_ce_mode("NATS_CE_MODE", &raw.nats_ce_mode)?,
                token: raw.nats_token.clone(),
                user: raw.nats_user.clone(),
                password: raw.nats_password.clone(),
                creds: path(&raw.nats_creds),
                tls_ca: path(&raw.nats_tls_ca),
                tls_cert: path(&raw.nats_tls_cert),
                tls_key: path(&raw.nats_tls_key),
                tls_required: parse_bool("NATS_TLS_REQUIRED", &raw.nats_tls_required)?,
            })
        } else {
            None
        };
        let ce_mode = parse_ce_mode("CE_MODE", &raw.ce_mode)?;
        let positive = |var: &'static str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    var,
                    reason: "must be at least 1".into(),
                })
            } else {
                Ok(v)
            }
        };
        let retry = RetryPolicy {
            timeout: parse_duration("WATCHER_TIMEOUT", &raw.watcher_timeout)?,
            base: parse_duration("WATCHER_RETRY_BASE", &raw.watcher_retry_base)?,
            cap: parse_duration("WATCHER_RETRY_CAP", &raw.watcher_retry_cap)?,
            attempts: raw.watcher_retry_attempts,
        };
        Ok(Config {
            event_type: raw.event_type.unwrap_or_else(|| raw.gateway_name.clone()),
            gateway_name: raw.gateway_name.clone(),
            namespace: raw.gateway_namespace,
            controller_instance_id: raw.gateway_controller_instance_id,
            listen: parse_ip(
                "TRANSFORMER_LISTEN_ADDRESS",
                &raw.transformer_listen_address,
            )?,
            port: raw.transformer_port,
            sensor_watchers: parse_urls("SENSOR_WATCHERS", &raw.sensor_watchers)?,
            gateway_watchers: parse_urls("GATEWAY_WATCHERS", &raw.gateway_watchers)?,
            http_enabled,
            nats,
            ce_mode,
            queue_capacity: positive("TRANSFORMER_QUEUE_CAPACITY", raw.transformer_queue_capacity)?,
            lanes: positive("WATCHER_CONCURRENCY", raw.watcher_concurrency)?,
            max_body_bytes: positive("TRANSFORMER_MAX_BODY_BYTES", raw.transformer_max_body_bytes)?,
            retry,
            shutdown_timeout: parse_duration("SHUTDOWN_TIMEOUT", &raw.shutdown_timeout)?,
            json_logs: parse_log_format(&raw.log_format)?,
            data_dir: if parse_bool("TRANSFORMER_DURABLE", &raw.transformer_durable)? {
                Some(std::path::PathBuf::from(
                    raw.transformer_data_dir.unwrap_or_else(|| {
                        let safe: String = raw
                            .gateway_name
                            .chars()
                            .map(|c| {
                                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                                    c
                                } else {
                                    '_'
                                }
                            })
                            .collect();
                        format!("gateway-data/transformer-{safe}-{}", raw.transformer_port)
                    }),
                ))
            } else {
                None
            },
            fsync: parse_fsync(&raw.transformer_fsync)?,
            queue_max_bytes: positive(
                "TRANSFORMER_QUEUE_MAX_BYTES",
                raw.transformer_queue_max_bytes,
            )?,
            store_memtable_bytes: positive(
                "TRANSFORMER_STORE_MEMTABLE_BYTES",
                raw.transformer_store_memtable_bytes,
            )?,
            admit_wait: parse_duration("TRANSFORMER_ADMIT_WAIT", &raw.transformer_admit_wait)?,
            token: parse_token("TRANSFORMER_TOKEN", raw.transformer_token)?,
            watcher_token: parse_token("WATCHER_TOKEN", raw.watcher_token)?,
            watcher_tls_ca: raw.watcher_tls_ca.map(std::path::PathBuf::from),
            listener: parse_listener(
                &LISTENER,
                &raw.transformer_header_timeout,
                &raw.transformer_idle_timeout,
                &raw.transformer_body_timeout,
                raw.transformer_max_connections,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::from_vars(vars(&[("GATEWAY_NAME", "webhook")])).unwrap();
        assert_eq!(c.port, 9300);
        assert_eq!(c.event_type, "webhook");
        assert_eq!(c.namespace, "default");
        assert!(c.http_enabled);
        assert!(c.nats.is_none());
        assert_eq!(c.ce_mode, CeMode::Binary);
        assert!(c.sensor_watchers.is_empty());
        assert_eq!(
            c.data_dir.unwrap(),
            std::path::PathBuf::from("gateway-data/transformer-webhook-9300")
        );
        assert_eq!(c.fsync, crate::store::Fsync::Never);
        assert_eq!(c.store_memtable_bytes, 1 << 20);
    }

    #[test]
    fn missing_and_malformed_variables_are_named() {
        let e = Config::from_vars(vars(&[])).unwrap_err().to_string();
        assert!(e.contains("GATEWAY_NAME"), "{e}");
        let e = Config::from_vars(vars(&[("GATEWAY_NAME", "g"), ("TRANSFORMER_PORT", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TRANSFORMER_PORT"), "{e}");
        let e = Config::from_vars(vars(&[
            ("GATEWAY_NAME", "g"),
            ("SENSOR_WATCHERS", "ftp://x"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("SENSOR_WATCHERS"), "{e}");
        let e = Config::from_vars(vars(&[("GATEWAY_NAME", "g"), ("CE_MODE", "weird")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CE_MODE"), "{e}");
        let e = Config::from_vars(vars(&[
            ("GATEWAY_NAME", "g"),
            ("TRANSFORMER_FSYNC", "sometimes"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("TRANSFORMER_FSYNC"), "{e}");
        let e = Config::from_vars(vars(&[("GATEWAY_NAME", "g"), ("WATCHER_TIMEOUT", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("WATCHER_TIMEOUT"), "{e}");
        let e = Config::from_vars(vars(&[
            ("GATEWAY_NAME", "g"),
            ("TRANSFORMER_STORE_MEMTABLE_BYTES", "0"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("TRANSFORMER_STORE_MEMTABLE_BYTES"), "{e}");
    }

    #[test]
    fn watchers_protocols_and_nats_defaults() {
        let c = Config::from_vars(vars(&[
            ("GATEWAY_NAME", "cal"),
            ("SENSOR_WATCHERS", "http://a:1/x, http://b:2/"),
            ("EVENT_PROTOCOL", "HTTP,NATS"),
            ("NATS_TYPE", "Streaming"),
            ("TRANSFORMER_PORT", ""),
        ]))
        .unwrap();
        assert_eq!(c.sensor_watchers.len(), 2);
        assert_eq!(c.port, 9300);
        let nats = c.nats.unwrap();
        assert_eq!(nats.stream, "CAL");
        assert_eq!(nats.subject, "{gateway}.{src}");
        assert_eq!(nats.ty, NatsType::Streaming);
    }

    #[test]
    fn unusable_tokens_and_listener_bounds_are_refused_naming_the_variable() {
        for (var, value) in [
            ("TRANSFORMER_TOKEN", "abc\ndef"),
            ("TRANSFORMER_TOKEN", "two words"),
            ("WATCHER_TOKEN", "caf\u{e9}"),
            ("TRANSFORMER_HEADER_TIMEOUT", "0s"),
            ("TRANSFORMER_IDLE_TIMEOUT", "soon"),
            ("TRANSFORMER_BODY_TIMEOUT", "-1"),
            ("TRANSFORMER_MAX_CONNECTIONS", "0"),
        ] {
            let e = Config::from_vars(vars(&[("GATEWAY_NAME", "g"), (var, value)]))
                .expect_err(var)
                .to_string();
            assert!(e.contains(var), "{var}={value:?}: {e}");
        }
        let c = Config::from_vars(vars(&[
            ("GATEWAY_NAME", "g"),
            ("TRANSFORMER_TOKEN", "  s3cr3t-token_~+/=\n"),
        ]))
        .unwrap();
        assert_eq!(c.token.as_deref(), Some("s3cr3t-token_~+/="));
        assert_eq!(c.listener.max_connections, 1024);
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(
            parse_duration("X", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("X", "2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("X", "-1").is_err());
    }
}
