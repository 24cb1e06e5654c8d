//! The transformer's environment, read once at start. Every variable it reads is
//! declared here once, with its default and meaning ([`VARS`]); the docs' table and
//! `docker/` are checked against that list. A missing or malformed one is an
//! error that names it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_common::env::{self as shared, parse_duration, ConfigError, Env, Var};
use gateway_common::nats::NatsOptions;
use gateway_common::start::Settings;

use crate::triggers::Trigger;

mod vars;

use gateway_common::server::Limits as ListenerLimits;
pub use vars::VARS;
use vars::*;

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
    /// Waits grow by `base` each attempt (Knative's `linear`) rather than
    /// doubling; either way at most `cap`.
    pub linear: bool,
    /// A 429 or 503 with `Retry-After` waits as told, up to this; `None`:
    /// the backoff alone (Knative's `retryAfterMax`).
    pub retry_after_max: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// How to reach NATS: `NATS_URL` and its credentials and TLS.
    pub connection: NatsOptions,
    pub ty: NatsType,
    pub subject: String,
    pub stream: String,
    /// Content mode of the CloudEvents NATS binding; structured by default.
    pub ce_mode: CeMode,
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
    /// `TRANSFORMER_DEDUP_WINDOW`: how long named events are remembered;
    /// zero: not at all.
    pub dedup_window: Duration,
    /// `TRANSFORMER_DEDUP_MAX_IDS`: most names remembered at once.
    pub dedup_max_ids: usize,
    /// `TRANSFORMER_TOKEN`: when set, producers must send it as a bearer token.
    pub token: Option<String>,
    /// `WATCHER_TOKEN`: sent as a bearer token to every HTTP watcher, e.g. the
    /// `TRANSFORMER_TOKEN` of a gateway this one feeds.
    pub watcher_token: Option<String>,
    /// `WATCHER_TLS_CA`: a PEM file of CA certificates trusted for HTTPS watchers.
    pub watcher_tls_ca: Option<std::path::PathBuf>,
    /// `TRANSFORMER_TRIGGERS`, read and checked.
    pub triggers: Arc<Vec<Trigger>>,
    /// Where they were read from, watched for changes.
    pub triggers_path: Option<std::path::PathBuf>,
    /// How `nats:` subscribers of triggers reach NATS: the `NATS_*`
    /// settings, whether or not `EVENT_PROTOCOL` names NATS.
    pub trigger_nats: Option<NatsConfig>,
    /// `K_CE_OVERRIDES`: extensions added to every CloudEvent built here.
    pub ce_overrides: Vec<(String, String)>,
    /// `TRANSFORMER_HEADER_TIMEOUT`, `_IDLE_TIMEOUT`, `_BODY_TIMEOUT`,
    /// `_MAX_CONNECTIONS`: the bounds of the HTTP listener.
    pub listener: ListenerLimits,
}

/// `TRANSFORMER_FSYNC`: `never` (writes reach the OS before the 2xx), `always` (an
/// fsync before every 2xx), or a period such as `100ms`.
pub fn parse_fsync(raw: &str) -> Result<crate::store::Fsync, ConfigError> {
    use crate::store::Fsync;
    match raw.trim().to_ascii_lowercase().as_str() {
        "never" | "no" | "false" | "os" => Ok(Fsync::Never),
        "always" | "yes" | "true" => Ok(Fsync::Always),
        other => match parse_duration(FSYNC.name, other) {
            Ok(d) if !d.is_zero() => Ok(Fsync::Every(d)),
            _ => Err(ConfigError::Invalid {
                var: FSYNC.name,
                reason: format!("{other:?}; expected never, always, or a period like 100ms"),
            }),
        },
    }
}

/// `K_CE_OVERRIDES`: `{"extensions": {NAME: VALUE}}`, names as CloudEvents
/// has them, values strings (numbers and booleans as their text).
fn ce_overrides(raw: Option<&str>) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let invalid = |reason: String| ConfigError::Invalid {
        var: CE_OVERRIDES.name,
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(invalid(
            "expected a JSON object {\"extensions\": {...}}".into(),
        ));
    };
    if let Some(k) = obj.keys().find(|k| *k != "extensions") {
        return Err(invalid(format!("{k}: unknown key (only extensions)")));
    }
    let Some(map) = obj.get("extensions").and_then(|e| e.as_object()) else {
        return Ok(Vec::new());
    };
    let reserved = [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
        "data",
        "data_base64",
    ];
    map.iter()
        .map(|(k, v)| {
            if !crate::cloudevent::is_attribute_name(k) {
                return Err(invalid(format!(
                    "extensions.{k}: not a CloudEvents attribute name (a-z, 0-9)"
                )));
            }
            if reserved.contains(&k.as_str()) {
                return Err(invalid(format!(
                    "extensions.{k}: a context attribute, not an extension"
                )));
            }
            let text = crate::cloudevent::attribute_text(v)
                .ok_or_else(|| invalid(format!("extensions.{k}: a string, number or boolean")))?;
            Ok((k.clone(), text))
        })
        .collect()
}

fn parse_ce_mode(env: &Env, var: &Var) -> Result<CeMode, ConfigError> {
    match env.text(var)?.to_ascii_lowercase().as_str() {
        "binary" => Ok(CeMode::Binary),
        "structured" => Ok(CeMode::Structured),
        other => Err(ConfigError::Invalid {
            var: var.name,
            reason: format!("{other:?}; expected binary or structured"),
        }),
    }
}

/// `NATS_SUBJECT`: dot-separated tokens, none empty, none with white space or a
/// wildcard outside its placeholders (what they are replaced by is made a
/// token). A publish to `a..b`, `a.*` or `a.` is refused by NATS or reaches no
/// subscriber: every event would go to the dead letters.
fn subject_template(raw: &str) -> Result<String, ConfigError> {
    let bad = raw.is_empty()
        || raw.split('.').any(|token| {
            let literal = ["{gateway}", "{namespace}", "{src}", "{type}"]
                .iter()
                .fold(token.to_owned(), |t, p| t.replace(p, "x"));
            literal.is_empty()
                || literal
                    .chars()
                    .any(|c| c.is_whitespace() || c == '*' || c == '>')
        });
    if bad {
        return Err(ConfigError::Invalid {
            var: NATS_SUBJECT.name,
            reason: format!(
                "{raw:?} is not a subject template: dot-separated tokens, none empty, without \
                 white space, '*' or '>' (placeholders {{gateway}}, {{namespace}}, {{src}}, {{type}})"
            ),
        });
    }
    Ok(raw.to_owned())
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

impl Settings for Config {
    fn json_logs(&self) -> bool {
        self.json_logs
    }

    fn read(env: &Env) -> Result<Self, ConfigError> {
        let gateway_name = env.text(&shared::GATEWAY_NAME)?;
        let (http_enabled, nats_enabled) = protocols(env)?;
        let ty = nats_type(env)?;
        let nats = if nats_enabled {
            Some(NatsConfig {
                connection: NatsOptions::read(env)?,
                ty,
                subject: subject_template(&env.text(&NATS_SUBJECT)?)?,
                stream: nats_stream(env, &gateway_name)?,
                ce_mode: parse_ce_mode(env, &NATS_CE_MODE)?,
            })
        } else {
            None
        };
        let triggers_path = env.path(&TRIGGERS);
        let triggers = match &triggers_path {
            Some(path) => crate::triggers::load(path).map_err(|e| ConfigError::Invalid {
                var: TRIGGERS.name,
                reason: e.to_string(),
            })?,
            None => Vec::new(),
        };
        // Read whenever there are triggers: a reload may add a nats: one.
        let trigger_nats = match (&nats, triggers_path.is_some()) {
            (Some(n), true) => Some(n.clone()),
            (None, true) => Some(trigger_nats(env, &gateway_name, ty)?),
            (_, false) => None,
        };
        let port: u16 = env.number(&shared::TRANSFORMER_PORT)?;
        let data_dir = data_dir(env, &gateway_name, port)?;
        Ok(Config {
            event_type: env
                .optional(&EVENT_TYPE)
                .unwrap_or_else(|| gateway_name.clone()),
            namespace: env.text(&shared::GATEWAY_NAMESPACE)?,
            controller_instance_id: env.text(&shared::GATEWAY_CONTROLLER_INSTANCE_ID)?,
            listen: env.ip(&LISTEN_ADDRESS)?,
            port,
            sensor_watchers: env.urls(&SENSOR_WATCHERS)?,
            gateway_watchers: env.urls(&GATEWAY_WATCHERS)?,
            http_enabled,
            nats,
            ce_mode: parse_ce_mode(env, &CE_MODE)?,
            queue_capacity: env.positive(&QUEUE_CAPACITY)?,
            lanes: env.positive(&WATCHER_CONCURRENCY)?,
            max_body_bytes: env.positive(&MAX_BODY_BYTES)?,
            retry: retry_policy(env)?,
            shutdown_timeout: env.duration(&shared::SHUTDOWN_TIMEOUT)?,
            json_logs: env.json_logs()?,
            data_dir,
            fsync: parse_fsync(&env.text(&FSYNC)?)?,
            queue_max_bytes: env.positive(&QUEUE_MAX_BYTES)?,
            store_memtable_bytes: env.positive(&STORE_MEMTABLE_BYTES)?,
            admit_wait: env.duration(&ADMIT_WAIT)?,
            dedup_window: env.duration(&DEDUP_WINDOW)?,
            dedup_max_ids: env.positive(&DEDUP_MAX_IDS)?,
            token: env.token(&shared::TRANSFORMER_TOKEN)?,
            watcher_token: env.token(&WATCHER_TOKEN)?,
            watcher_tls_ca: env.path(&WATCHER_TLS_CA),
            listener: LISTENER.read(env)?,
            triggers: Arc::new(triggers),
            triggers_path,
            trigger_nats,
            ce_overrides: ce_overrides(env.optional(&CE_OVERRIDES).as_deref())?,
            gateway_name,
        })
    }
}

/// The NATS connection triggers with a `nats:` subscriber publish on when
/// `EVENT_PROTOCOL` does not name NATS: its subjects are the triggers'.
fn trigger_nats(env: &Env, gateway_name: &str, ty: NatsType) -> Result<NatsConfig, ConfigError> {
    Ok(NatsConfig {
        connection: NatsOptions::read(env)?,
        ty,
        subject: String::new(),
        stream: stream_name(&gateway_name.to_ascii_uppercase()),
        ce_mode: parse_ce_mode(env, &NATS_CE_MODE)?,
    })
}

/// `WATCHER_TIMEOUT` and `WATCHER_RETRY_*`: the delivery policy of the
/// watchers that do not set their own.
fn retry_policy(env: &Env) -> Result<RetryPolicy, ConfigError> {
    Ok(RetryPolicy {
        timeout: env.duration(&WATCHER_TIMEOUT)?,
        base: env.duration(&WATCHER_RETRY_BASE)?,
        cap: env.duration(&WATCHER_RETRY_CAP)?,
        attempts: env.number(&WATCHER_RETRY_ATTEMPTS)?,
        linear: false,
        retry_after_max: None,
    })
}

/// `EVENT_PROTOCOL`: whether HTTP, and whether NATS, are on.
fn protocols(env: &Env) -> Result<(bool, bool), ConfigError> {
    let mut http_enabled = false;
    let mut nats_enabled = false;
    for p in env
        .text(&EVENT_PROTOCOL)?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match p.to_ascii_uppercase().as_str() {
            "HTTP" => http_enabled = true,
            "NATS" => nats_enabled = true,
            other => {
                return Err(ConfigError::Invalid {
                    var: EVENT_PROTOCOL.name,
                    reason: format!("{other:?}; expected HTTP, NATS or HTTP,NATS"),
                })
            }
        }
    }
    if !http_enabled && !nats_enabled {
        return Err(ConfigError::Invalid {
            var: EVENT_PROTOCOL.name,
            reason: "names no protocol".into(),
        });
    }
    Ok((http_enabled, nats_enabled))
}

fn nats_type(env: &Env) -> Result<NatsType, ConfigError> {
    match env.text(&NATS_TYPE)?.to_ascii_lowercase().as_str() {
        "standard" => Ok(NatsType::Standard),
        "streaming" | "jetstream" => Ok(NatsType::Streaming),
        other => Err(ConfigError::Invalid {
            var: NATS_TYPE.name,
            reason: format!("{other:?}; expected Standard or Streaming"),
        }),
    }
}

/// `NATS_STREAM`, or the gateway's name upper-cased, made a valid stream name.
fn nats_stream(env: &Env, gateway_name: &str) -> Result<String, ConfigError> {
    match env.optional(&NATS_STREAM) {
        Some(s) if stream_name(&s) != s => Err(ConfigError::Invalid {
            var: NATS_STREAM.name,
            reason: format!("{s:?} may not contain whitespace, '.', '*', '>', '/' or a backslash"),
        }),
        Some(s) => Ok(s),
        None => Ok(stream_name(&gateway_name.to_ascii_uppercase())),
    }
}

/// Where the durable store lives: `TRANSFORMER_DATA_DIR`, or a directory
/// named after the gateway and port; none when `TRANSFORMER_DURABLE` is off.
fn data_dir(
    env: &Env,
    gateway_name: &str,
    port: u16,
) -> Result<Option<std::path::PathBuf>, ConfigError> {
    if !env.bool(&DURABLE)? {
        return Ok(None);
    }
    Ok(Some(env.path(&DATA_DIR).unwrap_or_else(|| {
        let safe: String = gateway_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        std::path::PathBuf::from(format!("gateway-data/transformer-{safe}-{port}"))
    })))
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
        for template in ["gw.*.{src}", "gw.>", "gw..{src}", "gw {src}", "{src}."] {
            let e = Config::from_vars(vars(&[
                ("GATEWAY_NAME", "g"),
                ("EVENT_PROTOCOL", "NATS"),
                ("NATS_SUBJECT", template),
            ]))
            .unwrap_err()
            .to_string();
            assert!(e.contains("NATS_SUBJECT"), "{template:?}: {e}");
        }
        for template in [
            "{gateway}.{src}",
            "events.{namespace}.{type}.{src}",
            "plain",
            "a-{src}_b",
        ] {
            Config::from_vars(vars(&[
                ("GATEWAY_NAME", "g"),
                ("EVENT_PROTOCOL", "NATS"),
                ("NATS_SUBJECT", template),
            ]))
            .unwrap_or_else(|e| panic!("{template:?}: {e}"));
        }
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
    fn the_default_of_each_variable_is_one_its_own_parser_takes() {
        let c = Config::from_vars(vars(&[("GATEWAY_NAME", "g")])).unwrap();
        assert_eq!(c.max_body_bytes, 1024 * 1024 + 4096);
        assert_eq!(c.queue_max_bytes, 32 << 20);
        assert_eq!(c.admit_wait, Duration::from_millis(500));
        assert_eq!(
            c.store_memtable_bytes as u64,
            crate::store::DEFAULT_MEMTABLE_BYTES
        );
        let names: std::collections::HashSet<&str> = VARS
            .iter()
            .chain(gateway_common::env::SHARED.iter())
            .map(|v| v.name)
            .collect();
        assert_eq!(names.len(), VARS.len() + 7, "each variable is listed once");
    }
}
