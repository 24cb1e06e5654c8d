//! The processor-client's environment, read once at start with envy. Every variable of
//! the contract has its default here; a missing or malformed one is an error that
//! names it. Nothing else in the crate reads the environment.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use gateway_common::env::{
    default_body_timeout, default_header_timeout, default_idle_timeout, default_listen,
    default_max_connections, default_namespace, default_port, default_shutdown, load_from,
    parse_duration, parse_ip, parse_listener, parse_log_format, parse_token, ConfigError,
    ListenerVars,
};
use gateway_common::server::Limits as ListenerLimits;
use serde::Deserialize;

/// The processor-client's listener variables.
const LISTENER: ListenerVars = ListenerVars {
    header_timeout: "GATEWAY_PROCESSOR_CLIENT_HEADER_TIMEOUT",
    idle_timeout: "GATEWAY_PROCESSOR_CLIENT_IDLE_TIMEOUT",
    body_timeout: "GATEWAY_PROCESSOR_CLIENT_BODY_TIMEOUT",
    max_connections: "GATEWAY_PROCESSOR_CLIENT_MAX_CONNECTIONS",
};

/// The paths of the HTTP protocol between processor-client and user server.
#[derive(Debug, Clone)]
pub struct Paths {
    pub start: String,
    pub stop: String,
    pub event: String,
    pub running: String,
    pub error: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub gateway_name: String,
    pub namespace: String,
    pub controller_instance_id: String,
    pub config_map: PathBuf,
    pub server_host: String,
    pub server_port: u16,
    pub listen: IpAddr,
    pub port: u16,
    pub paths: Paths,
    pub transformer_host: String,
    pub transformer_port: u16,
    pub transformer_timeout: Duration,
    pub max_body_bytes: usize,
    pub server_timeout: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub probe_interval: Duration,
    pub poll_interval: Duration,
    pub shutdown_timeout: Duration,
    pub json_logs: bool,
    /// `GATEWAY_PROCESSOR_CLIENT_TOKEN`: when set, the user server must send it as
    /// a bearer token, and the processor-client sends it on `/start` and `/stop`.
    pub token: Option<String>,
    /// `TRANSFORMER_TOKEN`: sent to the transformer.
    pub transformer_token: Option<String>,
    /// `GATEWAY_PROCESSOR_BATCH`: whether concurrent events may go to the
    /// transformer in batches once it offers them.
    pub batch: bool,
    /// `GATEWAY_PROCESSOR_CLIENT_HEADER_TIMEOUT`, `_IDLE_TIMEOUT`,
    /// `_BODY_TIMEOUT`, `_MAX_CONNECTIONS`: the bounds of the HTTP listener.
    pub listener: ListenerLimits,
}

#[derive(Deserialize)]
struct RawEnv {
    gateway_name: String,
    #[serde(default = "default_namespace")]
    gateway_namespace: String,
    #[serde(default)]
    gateway_controller_instance_id: String,
    gateway_processor_config_map: String,
    gateway_processor_server_http_port: u16,
    #[serde(default = "default_server_host")]
    gateway_processor_server_host: String,
    #[serde(default = "default_client_port")]
    gateway_processor_client_http_port: u16,
    #[serde(default = "default_listen")]
    gateway_processor_client_listen_address: String,
    #[serde(default = "default_start")]
    gateway_http_config_start: String,
    #[serde(default = "default_stop")]
    gateway_http_config_stop: String,
    #[serde(default = "default_event")]
    gateway_http_config_event: String,
    #[serde(default = "default_running")]
    gateway_http_config_running: String,
    #[serde(default = "default_error")]
    gateway_http_config_error: String,
    #[serde(default = "default_port")]
    transformer_port: u16,
    #[serde(default = "default_server_host")]
    transformer_host: String,
    #[serde(default = "default_transformer_timeout")]
    transformer_timeout: String,
    #[serde(default = "default_batch")]
    gateway_processor_batch: bool,
    #[serde(default = "default_max_body")]
    gateway_processor_max_body_bytes: usize,
    #[serde(default = "default_server_timeout")]
    gateway_processor_server_timeout: String,
    #[serde(default = "default_retry_base")]
    gateway_processor_retry_base: String,
    #[serde(default = "default_retry_cap")]
    gateway_processor_retry_cap: String,
    #[serde(default = "default_probe")]
    gateway_processor_server_probe_interval: String,
    #[serde(default = "default_poll")]
    gateway_processor_config_poll_interval: String,
    #[serde(default = "default_shutdown")]
    shutdown_timeout: String,
    #[serde(default)]
    log_format: String,
    gateway_processor_client_token: Option<String>,
    transformer_token: Option<String>,
    #[serde(default = "default_header_timeout")]
    gateway_processor_client_header_timeout: String,
    #[serde(default = "default_idle_timeout")]
    gateway_processor_client_idle_timeout: String,
    #[serde(default = "default_body_timeout")]
    gateway_processor_client_body_timeout: String,
    #[serde(default = "default_max_connections")]
    gateway_processor_client_max_connections: usize,
}

fn default_server_host() -> String {
    "127.0.0.1".into()
}
fn default_client_port() -> u16 {
    9393
}
fn default_start() -> String {
    "/start".into()
}
fn default_stop() -> String {
    "/stop".into()
}
fn default_event() -> String {
    "/event".into()
}
fn default_running() -> String {
    "/activated".into()
}
fn default_error() -> String {
    "/error".into()
}
fn default_batch() -> bool {
    true
}
fn default_transformer_timeout() -> String {
    "10s".into()
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_server_timeout() -> String {
    "10s".into()
}
fn default_retry_base() -> String {
    "200ms".into()
}
fn default_retry_cap() -> String {
    "5s".into()
}
/// Short, because a user server that restarts quickly is only seen as down for the
/// moment its port is closed; a TCP connect on loopback costs microseconds.
fn default_probe() -> String {
    "50ms".into()
}
fn default_poll() -> String {
    "5s".into()
}

/// Paths the processor-client serves itself; configurable paths may not shadow them.
const FIXED_PATHS: [&str; 4] = ["/configs", "/healthz", "/readyz", "/metrics"];

fn check_path(var: &'static str, raw: String) -> Result<String, ConfigError> {
    let p = raw.trim().to_owned();
    if !p.starts_with('/') || p.contains(char::is_whitespace) || p.contains(['?', '#']) {
        return Err(ConfigError::Invalid {
            var,
            reason: format!("{raw:?} is not an absolute URL path like /event"),
        });
    }
    Ok(p)
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw: RawEnv = load_from(vars)?;
        if raw.gateway_name.trim().is_empty() {
            return Err(ConfigError::Missing("GATEWAY_NAME".into()));
        }
        let paths = Paths {
            start: check_path("GATEWAY_HTTP_CONFIG_START", raw.gateway_http_config_start)?,
            stop: check_path("GATEWAY_HTTP_CONFIG_STOP", raw.gateway_http_config_stop)?,
            event: check_path("GATEWAY_HTTP_CONFIG_EVENT", raw.gateway_http_config_event)?,
            running: check_path(
                "GATEWAY_HTTP_CONFIG_RUNNING",
                raw.gateway_http_config_running,
            )?,
            error: check_path("GATEWAY_HTTP_CONFIG_ERROR", raw.gateway_http_config_error)?,
        };
        let served = [
            ("GATEWAY_HTTP_CONFIG_EVENT", &paths.event),
            ("GATEWAY_HTTP_CONFIG_RUNNING", &paths.running),
            ("GATEWAY_HTTP_CONFIG_ERROR", &paths.error),
        ];
        for (i, (var, p)) in served.iter().enumerate() {
            let clash =
                FIXED_PATHS.contains(&p.as_str()) || served[..i].iter().any(|(_, q)| q == p);
            if clash {
                return Err(ConfigError::Invalid {
                    var,
                    reason: format!("{p} is already served by another endpoint"),
                });
            }
        }
        let server_host = raw.gateway_processor_server_host.trim().to_owned();
        let transformer_host = raw.transformer_host.trim().to_owned();
        if raw.gateway_processor_config_map.trim().is_empty() {
            return Err(ConfigError::Missing("GATEWAY_PROCESSOR_CONFIG_MAP".into()));
        }
        Ok(Config {
            gateway_name: raw.gateway_name,
            namespace: raw.gateway_namespace,
            controller_instance_id: raw.gateway_controller_instance_id,
            config_map: PathBuf::from(raw.gateway_processor_config_map.trim()),
            server_host,
            server_port: raw.gateway_processor_server_http_port,
            listen: parse_ip(
                "GATEWAY_PROCESSOR_CLIENT_LISTEN_ADDRESS",
                &raw.gateway_processor_client_listen_address,
            )?,
            port: raw.gateway_processor_client_http_port,
            paths,
            transformer_host,
            transformer_port: raw.transformer_port,
            transformer_timeout: parse_duration("TRANSFORMER_TIMEOUT", &raw.transformer_timeout)?,
            batch: raw.gateway_processor_batch,
            max_body_bytes: raw.gateway_processor_max_body_bytes.max(1),
            server_timeout: parse_duration(
                "GATEWAY_PROCESSOR_SERVER_TIMEOUT",
                &raw.gateway_processor_server_timeout,
            )?,
            retry_base: parse_duration(
                "GATEWAY_PROCESSOR_RETRY_BASE",
                &raw.gateway_processor_retry_base,
            )?,
            retry_cap: parse_duration(
                "GATEWAY_PROCESSOR_RETRY_CAP",
                &raw.gateway_processor_retry_cap,
            )?,
            probe_interval: parse_duration(
                "GATEWAY_PROCESSOR_SERVER_PROBE_INTERVAL",
                &raw.gateway_processor_server_probe_interval,
            )?
            .max(Duration::from_millis(5)),
            poll_interval: parse_duration(
                "GATEWAY_PROCESSOR_CONFIG_POLL_INTERVAL",
                &raw.gateway_processor_config_poll_interval,
            )?
            .max(Duration::from_millis(100)),
            shutdown_timeout: parse_duration("SHUTDOWN_TIMEOUT", &raw.shutdown_timeout)?,
            json_logs: parse_log_format(&raw.log_format)?,
            token: parse_token(
                "GATEWAY_PROCESSOR_CLIENT_TOKEN",
                raw.gateway_processor_client_token,
            )?,
            transformer_token: parse_token("TRANSFORMER_TOKEN", raw.transformer_token)?,
            listener: parse_listener(
                &LISTENER,
                &raw.gateway_processor_client_header_timeout,
                &raw.gateway_processor_client_idle_timeout,
                &raw.gateway_processor_client_body_timeout,
                raw.gateway_processor_client_max_connections,
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

    const BASE: [(&str, &str); 3] = [
        ("GATEWAY_NAME", "gw"),
        ("GATEWAY_PROCESSOR_CONFIG_MAP", "/cfg"),
        ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "8080"),
    ];

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::from_vars(vars(&BASE)).unwrap();
        assert_eq!(c.port, 9393);
        assert_eq!(c.server_host, "127.0.0.1");
        assert_eq!(c.transformer_port, 9300);
        assert_eq!(c.transformer_host, "127.0.0.1");
        assert_eq!(c.paths.start, "/start");
        assert_eq!(c.paths.stop, "/stop");
        assert_eq!(c.paths.event, "/event");
        assert_eq!(c.paths.running, "/activated");
        assert_eq!(c.paths.error, "/error");
        assert_eq!(c.max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn required_variables_are_named() {
        for missing in BASE.iter().map(|(k, _)| *k) {
            let list: Vec<_> = BASE
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            let e = Config::from_vars(vars(&list)).unwrap_err().to_string();
            assert!(e.contains(missing), "{e}");
        }
    }

    #[test]
    fn malformed_variables_are_named() {
        for (var, value) in [
            ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "eighty"),
            ("GATEWAY_PROCESSOR_CLIENT_HTTP_PORT", "70000"),
            ("GATEWAY_HTTP_CONFIG_EVENT", "event"),
            ("GATEWAY_HTTP_CONFIG_ERROR", "/configs"),
            ("GATEWAY_PROCESSOR_RETRY_CAP", "later"),
            ("GATEWAY_PROCESSOR_CLIENT_TOKEN", "abc\ndef"),
            ("GATEWAY_PROCESSOR_CLIENT_TOKEN", "two words"),
            ("TRANSFORMER_TOKEN", "caf\u{e9}"),
            ("GATEWAY_PROCESSOR_CLIENT_HEADER_TIMEOUT", "0s"),
            ("GATEWAY_PROCESSOR_CLIENT_IDLE_TIMEOUT", "soon"),
            ("GATEWAY_PROCESSOR_CLIENT_BODY_TIMEOUT", "-1"),
            ("GATEWAY_PROCESSOR_CLIENT_MAX_CONNECTIONS", "0"),
        ] {
            let mut list = BASE.to_vec();
            list.retain(|(k, _)| *k != var);
            list.push((var, value));
            let e = Config::from_vars(vars(&list)).unwrap_err().to_string();
            assert!(e.contains(var), "{var}: {e}");
        }
    }

    #[test]
    fn tokens_are_trimmed_and_listener_bounds_default() {
        let mut list = BASE.to_vec();
        list.push(("GATEWAY_PROCESSOR_CLIENT_TOKEN", " s3cr3t-token_~+/=\n"));
        let c = Config::from_vars(vars(&list)).unwrap();
        assert_eq!(c.token.as_deref(), Some("s3cr3t-token_~+/="));
        assert_eq!(c.listener.max_connections, 1024);
        assert_eq!(c.listener.header_timeout, Duration::from_secs(10));
    }
}
