//! The ingress's environment, read once at start. Every variable it reads is
//! declared here once with its default and meaning ([`VARS`]; the NATS
//! connection's are gateway-common's); a missing or malformed one stops it at
//! start naming the variable.

use std::net::IpAddr;
use std::time::Duration;

use gateway_common::env::{self as shared, ConfigError, Env, Listener, Var};
use gateway_common::nats::NatsOptions;
use gateway_common::server::Limits as ListenerLimits;
use gateway_common::start::Settings;

use crate::hosts::Hosts;

pub const PORT: Var = Var::new("INGRESS_PORT", "8080", "the HTTP port traffic comes in on");
const LISTEN_ADDRESS: Var = Var::new(
    "INGRESS_LISTEN_ADDRESS",
    "0.0.0.0",
    "the address it listens on",
);
pub const ADMIN_PORT: Var = Var::new(
    "INGRESS_ADMIN_PORT",
    "9090",
    "the port of `/healthz`, `/readyz` and `/metrics`, apart from the traffic",
);
const SUBJECT_PREFIX: Var = Var::new(
    "INGRESS_SUBJECT_PREFIX",
    "h8s",
    "first token of every request subject",
);
const INBOX_PREFIX: Var = Var::new(
    "INGRESS_INBOX_PREFIX",
    "_INBOX.h8s",
    "prefix of reply subjects",
);
const REQUEST_TIMEOUT: Var = Var::new(
    "INGRESS_REQUEST_TIMEOUT",
    "2s",
    "how long an HTTP request waits for its reply; then 504",
);
const HOSTS: Var = Var::optional(
    "INGRESS_HOSTS",
    "comma-separated host names served (others get 404), `*.example.com` for any one label more; empty: any",
);
const MAX_BODY_BYTES: Var = Var::new(
    "INGRESS_MAX_BODY_BYTES",
    "1048576",
    "largest request body; larger gets 413",
);

/// The ingress's listener variables.
const LISTENER: Listener = Listener {
    header_timeout: Var::new(
        "INGRESS_HEADER_TIMEOUT",
        shared::HEADER_TIMEOUT,
        shared::HEADER_TIMEOUT_MEANING,
    ),
    idle_timeout: Var::new(
        "INGRESS_IDLE_TIMEOUT",
        shared::IDLE_TIMEOUT,
        shared::IDLE_TIMEOUT_MEANING,
    ),
    body_timeout: Var::new(
        "INGRESS_BODY_TIMEOUT",
        shared::BODY_TIMEOUT,
        shared::BODY_TIMEOUT_MEANING,
    ),
    max_connections: Var::new(
        "INGRESS_MAX_CONNECTIONS",
        shared::MAX_CONNECTIONS,
        shared::MAX_CONNECTIONS_MEANING,
    ),
};

/// Every variable only the ingress reads; it also reads `SHUTDOWN_TIMEOUT`,
/// `LOG_FORMAT` and the NATS connection's.
pub const VARS: [Var; 12] = [
    PORT,
    LISTEN_ADDRESS,
    ADMIN_PORT,
    SUBJECT_PREFIX,
    INBOX_PREFIX,
    REQUEST_TIMEOUT,
    HOSTS,
    MAX_BODY_BYTES,
    LISTENER.header_timeout,
    LISTENER.idle_timeout,
    LISTENER.body_timeout,
    LISTENER.max_connections,
];

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: IpAddr,
    pub port: u16,
    pub admin_port: u16,
    pub subject_prefix: String,
    pub inbox_prefix: String,
    pub request_timeout: Duration,
    /// The hosts served; empty: any.
    pub hosts: Hosts,
    pub max_body_bytes: usize,
    pub nats: NatsOptions,
    pub shutdown_timeout: Duration,
    pub json_logs: bool,
    pub listener: ListenerLimits,
}

/// A NATS subject prefix: tokens of visible characters, no wildcards.
fn subject_prefix(env: &Env, var: &Var) -> Result<String, ConfigError> {
    let value = env.text(var)?;
    let ok = value.split('.').all(|t| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_graphic() && c != '*' && c != '>')
    });
    if ok {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            var: var.name,
            reason: format!(
                "{value:?} is not a subject prefix (dot-separated tokens, no wildcards)"
            ),
        })
    }
}

impl Settings for Config {
    fn json_logs(&self) -> bool {
        self.json_logs
    }

    fn read(env: &Env) -> Result<Self, ConfigError> {
        let config = Config {
            listen: env.ip(&LISTEN_ADDRESS)?,
            port: env.number(&PORT)?,
            admin_port: env.number(&ADMIN_PORT)?,
            subject_prefix: subject_prefix(env, &SUBJECT_PREFIX)?,
            inbox_prefix: subject_prefix(env, &INBOX_PREFIX)?,
            request_timeout: env.timeout(&REQUEST_TIMEOUT)?,
            hosts: Hosts::parse(HOSTS.name, &env.text(&HOSTS)?)?,
            max_body_bytes: env.positive(&MAX_BODY_BYTES)?,
            nats: NatsOptions::read(env)?,
            shutdown_timeout: env.duration(&shared::SHUTDOWN_TIMEOUT)?,
            json_logs: env.json_logs()?,
            listener: LISTENER.read(env)?,
        };
        // Port 0 (any free port, for tests) may be asked for twice.
        if config.port == config.admin_port && config.port != 0 {
            return Err(ConfigError::Invalid {
                var: ADMIN_PORT.name,
                reason: format!(
                    "{} is INGRESS_PORT too; the admin endpoints need a port of their own",
                    config.admin_port
                ),
            });
        }
        Ok(config)
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
        let c = Config::from_vars(vars(&[])).unwrap();
        assert_eq!((c.port, c.admin_port), (8080, 9090));
        assert_eq!(c.subject_prefix, "h8s");
        assert_eq!(c.inbox_prefix, "_INBOX.h8s");
        assert_eq!(c.request_timeout, Duration::from_secs(2));
        assert!(c.hosts.is_empty());
        assert_eq!(c.max_body_bytes, 1 << 20);
    }

    #[test]
    fn bad_values_are_named() {
        for (var, value) in [
            ("INGRESS_PORT", "http"),
            ("INGRESS_SUBJECT_PREFIX", "h8s.*"),
            ("INGRESS_INBOX_PREFIX", "a..b"),
            ("INGRESS_REQUEST_TIMEOUT", "0s"),
            ("INGRESS_MAX_BODY_BYTES", "0"),
            ("INGRESS_HOSTS", "example.com,a.*.b"),
            ("INGRESS_ADMIN_PORT", "8080"),
            ("NATS_USER", "only-user"),
        ] {
            let e = Config::from_vars(vars(&[(var, value)]))
                .unwrap_err()
                .to_string();
            let named = if var == "NATS_USER" {
                "NATS_PASSWORD"
            } else {
                var
            };
            assert!(e.contains(named), "{var}={value}: {e}");
        }
    }
}
