//! The environment helpers both binaries read their settings with: envy with empty
//! values counted as unset, parsers for durations, URLs, addresses and switches, and
//! the one error type that names the variable at fault, so a bad setting stops the
//! process at start saying which variable to fix.

use std::net::IpAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// A variable that is missing or malformed, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required but not set")]
    Missing(String),
    #[error("environment variable {var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("environment is invalid: {0}")]
    Envy(String),
}

/// Reads `T` from the process environment with envy. Empty values count as unset, as
/// they do in most container runtimes' defaults, so `FOO=` falls back to the default.
pub fn load_env<T: DeserializeOwned>() -> Result<T, ConfigError> {
    load_from(std::env::vars())
}

/// [`load_env`] over an explicit list of variables, for tests.
pub fn load_from<T: DeserializeOwned>(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    envy::from_iter(vars.into_iter().filter(|(_, v)| !v.trim().is_empty())).map_err(|e| match e {
        envy::Error::MissingValue(field) => ConfigError::Missing(field.to_ascii_uppercase()),
        envy::Error::Custom(msg) => ConfigError::Envy(msg),
    })
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
                reason: format!("{s:?} is not a URL: {e}"),
            })?;
            match url.scheme() {
                "http" | "https" => Ok(url),
                other => Err(ConfigError::Invalid {
                    var,
                    reason: format!(
                        "{s:?} has scheme {other:?}; only http and https are supported"
                    ),
                }),
            }
        })
        .collect()
}

/// Parses a listen address; `0.0.0.0` by default so the process is reachable in a pod.
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

pub fn default_namespace() -> String {
    "default".into()
}

pub fn default_listen() -> String {
    "0.0.0.0".into()
}

pub fn default_port() -> u16 {
    9300
}

pub fn default_shutdown() -> String {
    "10s".into()
}

/// `LOG_FORMAT=json` asks for JSON lines; anything else (or unset) is human text.
pub fn parse_log_format(raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "text" | "pretty" => Ok(false),
        "json" => Ok(true),
        other => Err(ConfigError::Invalid {
            var: "LOG_FORMAT",
            reason: format!("{other:?}; expected text or json"),
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

/// The names of one listener's variables, so errors name the one at fault.
pub struct ListenerVars {
    pub header_timeout: &'static str,
    pub idle_timeout: &'static str,
    pub body_timeout: &'static str,
    pub max_connections: &'static str,
}

/// Parses a listener's header, idle and body timeouts and its connection
/// limit (their raw values, in that order): each must be above zero.
pub fn parse_listener(
    vars: &ListenerVars,
    header_timeout: &str,
    idle_timeout: &str,
    body_timeout: &str,
    max_connections: usize,
) -> Result<crate::server::Limits, ConfigError> {
    let timeout = |var: &'static str, value: &str| match parse_duration(var, value)? {
        d if d.is_zero() => Err(ConfigError::Invalid {
            var,
            reason: "must be longer than zero".into(),
        }),
        d => Ok(d),
    };
    if max_connections == 0 {
        return Err(ConfigError::Invalid {
            var: vars.max_connections,
            reason: "must be at least 1".into(),
        });
    }
    Ok(crate::server::Limits {
        header_timeout: timeout(vars.header_timeout, header_timeout)?,
        idle_timeout: timeout(vars.idle_timeout, idle_timeout)?,
        body_timeout: timeout(vars.body_timeout, body_timeout)?,
        max_connections,
    })
}

/// `*_HEADER_TIMEOUT`: how long a client may take to send a request head.
pub fn default_header_timeout() -> String {
    "10s".into()
}
/// `*_IDLE_TIMEOUT`: how long a connection may sit with nothing to do.
pub fn default_idle_timeout() -> String {
    "60s".into()
}
/// `*_BODY_TIMEOUT`: how long a client may take to send a request body.
pub fn default_body_timeout() -> String {
    "30s".into()
}
/// `*_MAX_CONNECTIONS`: connections open at once.
pub fn default_max_connections() -> usize {
    1024
}

/// A bearer token from `var`, as it will travel in `Authorization: Bearer …`:
/// surrounding white space is dropped; anything that cannot be sent in that
/// header (a line break, a control character, a space inside, non-ASCII) stops
/// the process at start instead of failing every request later.
pub fn parse_token(var: &'static str, raw: Option<String>) -> Result<Option<String>, ConfigError> {
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
