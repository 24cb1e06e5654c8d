//! The environment, described once. Every variable a binary reads is a [`Var`]:
//! its name, its default and what it means, declared in that binary's config
//! module (the ones both binaries read are here). Settings are read through
//! [`Env`], which takes each default from the same [`Var`] and names the
//! variable in every error, so a bad setting stops the process at start saying
//! which variable to fix. The docs' tables and `docker/` are checked against
//! the same lists by tests, so none of them can drift from the code.
//!
//! Empty values count as unset, as they do in most container runtimes' defaults,
//! so `FOO=` falls back to the default.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A variable that is missing or malformed, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    #[error("environment variable {var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

/// What a variable is when it is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// Unset stops the process.
    Required,
    /// Unset means off / none.
    Empty,
    /// Unset means this value, parsed like a set one.
    Value(&'static str),
    /// Unset means a value derived from other settings, described for the docs.
    Derived(&'static str),
}

/// One environment variable: the single description of it that the code, the
/// docs and the container files follow.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    pub name: &'static str,
    pub default: Default,
    /// What it does, in Markdown, as the docs' table shows it.
    pub meaning: &'static str,
}

impl Var {
    pub const fn required(name: &'static str, meaning: &'static str) -> Var {
        Var {
            name,
            default: Default::Required,
            meaning,
        }
    }
    pub const fn optional(name: &'static str, meaning: &'static str) -> Var {
        Var {
            name,
            default: Default::Empty,
            meaning,
        }
    }
    pub const fn new(name: &'static str, default: &'static str, meaning: &'static str) -> Var {
        Var {
            name,
            default: Default::Value(default),
            meaning,
        }
    }
    pub const fn derived(name: &'static str, from: &'static str, meaning: &'static str) -> Var {
        Var {
            name,
            default: Default::Derived(from),
            meaning,
        }
    }
}

/// The variables of a process, read through their [`Var`]s.
pub struct Env {
    set: HashMap<String, String>,
    /// `*_PORT` variables whose value is a Kubernetes service link.
    links: HashMap<String, String>,
}

/// Kubernetes gives every pod, for each Service in its namespace, `NAME_PORT`
/// set to `tcp://CLUSTER_IP:PORT` (service links, on by default). A Service
/// named `ingress` or `transformer` so sets `INGRESS_PORT` or `TRANSFORMER_PORT`
/// in every pod started after it, the gateway's own included, which then
/// stopped at start on "not a number" after a mere restart. Such a value is
/// not the operator's: it counts as unset, with a warning.
fn is_service_link(name: &str, value: &str) -> bool {
    let Some(rest) = ["tcp://", "udp://", "sctp://"]
        .iter()
        .find_map(|scheme| value.trim().strip_prefix(scheme))
    else {
        return false;
    };
    name.ends_with("_PORT")
        && rest
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// Warnings the reading of the environment left for the log, which is set up
/// only after the settings are read; [`crate::telemetry::init`] logs them.
static NOTES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Takes the warnings left so far.
pub fn take_notes() -> Vec<String> {
    NOTES
        .lock()
        .map(|mut n| std::mem::take(&mut *n))
        .unwrap_or_default()
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Env {
        Env::from_vars(std::env::vars())
    }

    /// An explicit list of variables, for tests.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Env {
        let (links, set) = vars
            .into_iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .partition(|(k, v)| is_service_link(k, v));
        Env { set, links }
    }

    /// The value set, or the default value; `None` when neither.
    pub fn get(&self, var: &Var) -> Option<&str> {
        if let Some(link) = self.links.get(var.name) {
            let note = format!(
                "{}={link} looks like a Kubernetes service link (a Service named {}), not a \
                 setting: taken as unset. Set {} in the pod's env, or enableServiceLinks: false",
                var.name,
                var.name
                    .trim_end_matches("_PORT")
                    .to_ascii_lowercase()
                    .replace('_', "-"),
                var.name,
            );
            if let Ok(mut notes) = NOTES.lock() {
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
        match (self.set.get(var.name), var.default) {
            (Some(v), _) => Some(v.as_str()),
            (None, Default::Value(v)) => Some(v),
            (None, _) => None,
        }
    }

    /// The value, trimmed; a required variable that is unset is an error.
    pub fn text(&self, var: &Var) -> Result<String, ConfigError> {
        match self.get(var) {
            Some(v) => Ok(v.trim().to_owned()),
            None if var.default == Default::Required => Err(self.missing(var)),
            None => Ok(String::new()),
        }
    }

    /// The error for a variable that must be set and is not: missing, or set
    /// only by a Kubernetes service link.
    fn missing(&self, var: &Var) -> ConfigError {
        match self.links.get(var.name) {
            Some(link) => ConfigError::Invalid {
                var: var.name,
                reason: format!(
                    "{link:?} is a Kubernetes service link (a Service of that name), not a port; \
                     set the variable in the pod's env"
                ),
            },
            None => ConfigError::Missing(var.name),
        }
    }

    /// `var` as a [`Var`] that must be set here, whatever its default says (a
    /// variable required only in some modes), or the error naming it.
    pub fn require(&self, var: &Var) -> Result<Var, ConfigError> {
        match self.get(var) {
            Some(_) => Ok(*var),
            None => Err(self.missing(var)),
        }
    }

    /// The value, trimmed, if there is one.
    pub fn optional(&self, var: &Var) -> Option<String> {
        self.get(var).map(|v| v.trim().to_owned())
    }

    pub fn path(&self, var: &Var) -> Option<PathBuf> {
        self.optional(var).map(PathBuf::from)
    }

    /// A number (port, count, byte size) in its type's range.
    pub fn number<T>(&self, var: &Var) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let raw = self.text(var)?;
        raw.parse().map_err(|e| ConfigError::Invalid {
            var: var.name,
            reason: format!("{raw:?} is not a number in range: {e}"),
        })
    }

    /// A port to connect to, 1 to 65535: nothing listens on port 0. (A port to
    /// listen on may be 0, the kernel's pick, which the start-up log line names.)
    pub fn port(&self, var: &Var) -> Result<u16, ConfigError> {
        match self.number(var)? {
            0 => Err(ConfigError::Invalid {
                var: var.name,
                reason: "0 is no port to connect to; give one from 1 to 65535".into(),
            }),
            n => Ok(n),
        }
    }

    /// A count or size that must be at least 1.
    pub fn positive(&self, var: &Var) -> Result<usize, ConfigError> {
        match self.number(var)? {
            0 => Err(ConfigError::Invalid {
                var: var.name,
                reason: "must be at least 1".into(),
            }),
            n => Ok(n),
        }
    }

    pub fn duration(&self, var: &Var) -> Result<Duration, ConfigError> {
        parse_duration(var.name, &self.text(var)?)
    }

    /// A duration that must be longer than zero.
    pub fn timeout(&self, var: &Var) -> Result<Duration, ConfigError> {
        match self.duration(var)? {
            d if d.is_zero() => Err(ConfigError::Invalid {
                var: var.name,
                reason: "must be longer than zero".into(),
            }),
            d => Ok(d),
        }
    }

    pub fn bool(&self, var: &Var) -> Result<bool, ConfigError> {
        parse_bool(var.name, &self.text(var)?)
    }

    pub fn ip(&self, var: &Var) -> Result<IpAddr, ConfigError> {
        parse_ip(var.name, &self.text(var)?)
    }

    pub fn urls(&self, var: &Var) -> Result<Vec<reqwest::Url>, ConfigError> {
        parse_urls(var.name, &self.text(var)?)
    }

    pub fn token(&self, var: &Var) -> Result<Option<String>, ConfigError> {
        parse_token(var.name, self.get(var))
    }

    /// `LOG_FORMAT`: whether logs are JSON lines.
    pub fn json_logs(&self) -> Result<bool, ConfigError> {
        match self.text(&LOG_FORMAT)?.to_ascii_lowercase().as_str() {
            "" | "text" | "pretty" => Ok(false),
            "json" => Ok(true),
            other => Err(ConfigError::Invalid {
                var: LOG_FORMAT.name,
                reason: format!("{other:?}; expected text or json"),
            }),
        }
    }
}

/// Read by both binaries.
pub const GATEWAY_NAME: Var =
    Var::required("GATEWAY_NAME", "the gateway's name; CloudEvent `source`");
pub const GATEWAY_NAMESPACE: Var = Var::new(
    "GATEWAY_NAMESPACE",
    "default",
    "namespace, reported in logs",
);
pub const GATEWAY_CONTROLLER_INSTANCE_ID: Var =
    Var::optional("GATEWAY_CONTROLLER_INSTANCE_ID", "reported in logs");
pub const TRANSFORMER_PORT: Var =
    Var::new("TRANSFORMER_PORT", "9300", "the transformer's HTTP port");
pub const SHUTDOWN_TIMEOUT: Var = Var::new(
    "SHUTDOWN_TIMEOUT",
    "10s",
    "how long a SIGTERM may take: queues drain / configurations stop within it",
);
pub const LOG_FORMAT: Var = Var::new(
    "LOG_FORMAT",
    "text",
    "`json` for JSON lines; level from `RUST_LOG` (default `info`)",
);
pub const TRANSFORMER_TOKEN: Var = Var::optional(
    "TRANSFORMER_TOKEN",
    "see [Securing a gateway](deploy.md#securing-a-gateway)",
);

/// Every variable both binaries read, in the order the docs list them.
pub const SHARED: [Var; 7] = [
    GATEWAY_NAME,
    GATEWAY_NAMESPACE,
    GATEWAY_CONTROLLER_INSTANCE_ID,
    TRANSFORMER_PORT,
    SHUTDOWN_TIMEOUT,
    LOG_FORMAT,
    TRANSFORMER_TOKEN,
];

/// The four variables that bound one HTTP listener.
pub struct Listener {
    pub header_timeout: Var,
    pub idle_timeout: Var,
    pub body_timeout: Var,
    pub max_connections: Var,
}

/// How long a client may take to send a request's head, by default.
pub const HEADER_TIMEOUT: &str = "10s";
/// How long a kept-alive connection may sit with no request, by default.
pub const IDLE_TIMEOUT: &str = "60s";
/// How long a client may take to send a request's body, by default.
pub const BODY_TIMEOUT: &str = "30s";
/// Connections open at once, by default.
pub const MAX_CONNECTIONS: &str = "1024";

pub const HEADER_TIMEOUT_MEANING: &str = "how long a client may take to send a request's head (from its first byte); then the connection is closed";
pub const IDLE_TIMEOUT_MEANING: &str = "how long a kept-alive connection may sit with no request";
pub const BODY_TIMEOUT_MEANING: &str =
    "how long a client may take to send a request's body; then 408 `request_timeout`";
pub const MAX_CONNECTIONS_MEANING: &str =
    "connections open at once (see [Hostile clients](delivery.md#hostile-clients-and-full-disks))";

impl Listener {
    pub fn vars(&self) -> [Var; 4] {
        [
            self.header_timeout,
            self.idle_timeout,
            self.body_timeout,
            self.max_connections,
        ]
    }

    /// The listener's bounds: each timeout above zero, at least one connection.
    pub fn read(&self, env: &Env) -> Result<crate::server::Limits, ConfigError> {
        Ok(crate::server::Limits {
            header_timeout: env.timeout(&self.header_timeout)?,
            idle_timeout: env.timeout(&self.idle_timeout)?,
            body_timeout: env.timeout(&self.body_timeout)?,
            max_connections: env.positive(&self.max_connections)?,
        })
    }
}

/// The variables as the docs' Markdown table, `| variable | default | meaning |`.
pub fn markdown_table(vars: &[Var]) -> String {
    let mut out = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for v in vars {
        let default = match v.default {
            Default::Required => "required".to_owned(),
            Default::Empty => "empty".to_owned(),
            Default::Value(d) => format!("`{d}`"),
            Default::Derived(d) => d.to_owned(),
        };
        out.push_str(&format!("| `{}` | {default} | {} |\n", v.name, v.meaning));
    }
    out
}

/// Parses a human duration such as `250ms`, `5s` or `1m`; a bare number is seconds.
pub fn parse_duration(var: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(raw).map_err(|e| ConfigError::Invalid {
        var,
        reason: format!("{e} (expected a duration like 250ms, 5s or 1m)"),
    })
}

/// Splits a comma-separated list of URLs, checking each is an http(s) URL.
pub fn parse_urls(var: &'static str, raw: &str) -> Result<Vec<reqwest::Url>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let url = reqwest::Url::parse(s).map_err(|e| ConfigError::Invalid {
                var,
                reason: format!("{s:?} is not a URL: {e} (write it as http://HOST:PORT/PATH)"),
            })?;
            match url.scheme() {
                "http" | "https" => Ok(url),
                other => Err(ConfigError::Invalid {
                    var,
                    reason: format!(
                        "{s:?} has scheme {other:?}; only http and https are supported \
                         (write it as http://HOST:PORT/PATH)"
                    ),
                }),
            }
        })
        .collect()
}

/// Parses a listen address.
pub fn parse_ip(var: &'static str, raw: &str) -> Result<IpAddr, ConfigError> {
    raw.trim().parse().map_err(|e| ConfigError::Invalid {
        var,
        reason: format!("{raw:?} is not an IP address: {e}"),
    })
}

pub fn parse_bool(var: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(ConfigError::Invalid {
            var,
            reason: format!("{other:?}; expected true or false"),
        }),
    }
}

/// `host:port`, bracketing bare IPv6 addresses.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A bearer token from `var`, as it will travel in `Authorization: Bearer …`:
/// surrounding white space is dropped; anything that cannot be sent in that
/// header (a line break, a control character, a space inside, non-ASCII) stops
/// the process at start instead of failing every request later.
pub fn parse_token(var: &'static str, raw: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let token = raw.trim();
    if token.is_empty() {
        return Ok(None);
    }
    if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(ConfigError::Invalid {
            var,
            reason: format!(
                "holds {bad:?}, which cannot be sent in an Authorization header; a token is visible ASCII without spaces"
            ),
        });
    }
    Ok(Some(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(list: &[(&str, &str)]) -> Env {
        Env::from_vars(list.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_fill_in_and_empty_counts_as_unset() {
        let e = env(&[("TRANSFORMER_PORT", "  ")]);
        assert_eq!(e.number::<u16>(&TRANSFORMER_PORT).unwrap(), 9300);
        assert_eq!(e.text(&GATEWAY_NAMESPACE).unwrap(), "default");
        assert_eq!(e.optional(&GATEWAY_CONTROLLER_INSTANCE_ID), None);
        let missing = e.text(&GATEWAY_NAME).unwrap_err().to_string();
        assert!(missing.contains("GATEWAY_NAME"), "{missing}");
    }

    #[test]
    fn malformed_values_name_their_variable() {
        let e = env(&[
            ("TRANSFORMER_PORT", "70000"),
            ("SHUTDOWN_TIMEOUT", "soon"),
            ("LOG_FORMAT", "xml"),
            ("TRANSFORMER_TOKEN", "a b"),
        ]);
        let errors = [
            e.number::<u16>(&TRANSFORMER_PORT).unwrap_err(),
            e.duration(&SHUTDOWN_TIMEOUT).unwrap_err(),
            e.json_logs().unwrap_err(),
            e.token(&TRANSFORMER_TOKEN).unwrap_err(),
        ];
        for (err, var) in errors.iter().zip([
            "TRANSFORMER_PORT",
            "SHUTDOWN_TIMEOUT",
            "LOG_FORMAT",
            "TRANSFORMER_TOKEN",
        ]) {
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn kubernetes_service_links_count_as_unset() {
        let e = env(&[("TRANSFORMER_PORT", "tcp://10.96.0.12:9300")]);
        assert_eq!(e.number::<u16>(&TRANSFORMER_PORT).unwrap(), 9300);
        assert!(take_notes()
            .iter()
            .any(|n| n.contains("TRANSFORMER_PORT=tcp://10.96.0.12:9300")
                && n.contains("named transformer")));
        // Only a port variable, and only the link's exact shape.
        assert!(!is_service_link("NATS_URL", "tcp://10.0.0.1:4222"));
        assert!(!is_service_link("TRANSFORMER_PORT", "tcp://10.0.0.1"));
        assert!(is_service_link("INGRESS_PORT", "tcp://[fd00::1]:80"));
        let e = env(&[("TRANSFORMER_PORT", "http://x:1")]);
        assert!(e.number::<u16>(&TRANSFORMER_PORT).is_err());
    }

    #[test]
    fn port_zero_is_refused_naming_the_variable() {
        let e = env(&[("TRANSFORMER_PORT", "0")]);
        let err = e.port(&TRANSFORMER_PORT).unwrap_err().to_string();
        assert!(
            err.contains("TRANSFORMER_PORT") && err.contains("1 to 65535"),
            "{err}"
        );
        assert_eq!(env(&[]).port(&TRANSFORMER_PORT).unwrap(), 9300);
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

    #[test]
    fn the_table_shows_each_kind_of_default() {
        let table = markdown_table(&[
            GATEWAY_NAME,
            TRANSFORMER_PORT,
            GATEWAY_CONTROLLER_INSTANCE_ID,
            Var::derived("X", "`GATEWAY_NAME`", "m"),
        ]);
        assert!(table.contains("| `GATEWAY_NAME` | required |"));
        assert!(table.contains("| `TRANSFORMER_PORT` | `9300` |"));
        assert!(table.contains("| `GATEWAY_CONTROLLER_INSTANCE_ID` | empty |"));
        assert!(table.contains("| `X` | `GATEWAY_NAME` | m |"));
    }
}
