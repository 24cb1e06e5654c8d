//! The processor-client's environment, read once at start. Every variable it reads
//! is declared here once, with its default and meaning ([`VARS`]); the docs' table
//! and `docker/` are checked against that list. A missing or malformed one is an
//! error that names it. Nothing else in the crate reads the environment.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use gateway_common::env::{self as shared, ConfigError, Env, Listener, Var};
use gateway_common::server::Limits as ListenerLimits;
use gateway_common::start::Settings;

use crate::grpc::Contract;

/// How the user server is driven (`GATEWAY_PROCESSOR_SERVER_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /start` and `/stop`; the server posts events back.
    Http,
    /// One streaming call per configuration.
    Grpc(Contract),
}

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
    /// The user server's port for [`Config::protocol`].
    pub server_port: u16,
    pub protocol: Protocol,
    /// `GATEWAY_PROCESSOR_SHARING=nats`: how this replica shares the
    /// configurations with the others.
    pub sharing: Option<crate::sharing::Settings>,
    /// `GATEWAY_PROCESSOR_SERVER_TLS_CA`: TLS to the user server.
    pub server_tls_ca: Option<PathBuf>,
    pub listen: IpAddr,
    pub port: u16,
    pub paths: Paths,
    pub transformer_host: String,
    pub transformer_port: u16,
    pub transformer_timeout: Duration,
    pub max_body_bytes: usize,
    /// `GATEWAY_PROCESSOR_MAX_BATCH_EVENTS`: most events in one `POST /events`.
    pub max_batch_events: usize,
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

const CONFIG_MAP: Var = Var::required(
    "GATEWAY_PROCESSOR_CONFIG_MAP",
    "a directory with one file per configuration (ConfigMap volume layout, `..data` swaps included; files starting with `.` are skipped) or one YAML/JSON file mapping key to value (a ConfigMap manifest's `data` and text `binaryData` work too; non-string values are passed as JSON text)",
);
const SERVER_HTTP_PORT: Var = Var::derived(
    "GATEWAY_PROCESSOR_SERVER_HTTP_PORT",
    "required with `http`",
    "the user server's HTTP port",
);
const PROTOCOL: Var = Var::new(
    "GATEWAY_PROCESSOR_SERVER_PROTOCOL",
    "http",
    "how the user server is driven: `http` (`/start` and `/stop`), `grpc` (the generic event source) or `grpc-v06` (Argo v0.6's RunGateway); see [gRPC user servers](grpc.md)",
);
const SERVER_GRPC_PORT: Var = Var::derived(
    "GATEWAY_PROCESSOR_SERVER_GRPC_PORT",
    "required with `grpc*`",
    "the user server's gRPC port (`GATEWAY_PROCESSOR_SERVER_HTTP_PORT` is then not needed)",
);
const SERVER_TLS_CA: Var = Var::optional(
    "GATEWAY_PROCESSOR_SERVER_TLS_CA",
    "PEM file of the CA that signed the user server's certificate: TLS to it (HTTPS, or gRPC over TLS), verified; empty: plaintext (HTTP/1.1, or HTTP/2 for gRPC)",
);
const SERVER_HOST: Var = Var::new(
    "GATEWAY_PROCESSOR_SERVER_HOST",
    "127.0.0.1",
    "the user server's host",
);
pub const CLIENT_HTTP_PORT: Var = Var::new(
    "GATEWAY_PROCESSOR_CLIENT_HTTP_PORT",
    "9393",
    "the processor-client's own port",
);
const LISTEN_ADDRESS: Var = Var::new(
    "GATEWAY_PROCESSOR_CLIENT_LISTEN_ADDRESS",
    "0.0.0.0",
    "the address it listens on",
);
const START: Var = Var::new(
    "GATEWAY_HTTP_CONFIG_START",
    "/start",
    "path on the user server",
);
const STOP: Var = Var::new(
    "GATEWAY_HTTP_CONFIG_STOP",
    "/stop",
    "path on the user server",
);
const EVENT: Var = Var::new(
    "GATEWAY_HTTP_CONFIG_EVENT",
    "/event",
    "path on the processor-client for events",
);
const RUNNING: Var = Var::new(
    "GATEWAY_HTTP_CONFIG_RUNNING",
    "/activated",
    "path on the processor-client for running notices",
);
const ERROR: Var = Var::new(
    "GATEWAY_HTTP_CONFIG_ERROR",
    "/error",
    "path on the processor-client for error notices",
);
const TRANSFORMER_HOST: Var = Var::new("TRANSFORMER_HOST", "127.0.0.1", "the transformer's host");
const TRANSFORMER_TIMEOUT: Var = Var::new(
    "TRANSFORMER_TIMEOUT",
    "10s",
    "how long an event may wait for the transformer's answer",
);
const BATCH: Var = Var::new(
    "GATEWAY_PROCESSOR_BATCH",
    "true",
    "send concurrent events to the transformer in batches once it offers them (see [Behaviour](behaviour.md)); `false`: one `POST /` per event, always",
);
const MAX_BODY_BYTES: Var = Var::new(
    "GATEWAY_PROCESSOR_MAX_BODY_BYTES",
    "1048576",
    "largest request body; larger gets 413",
);
const MAX_BATCH_EVENTS: Var = Var::new(
    "GATEWAY_PROCESSOR_MAX_BATCH_EVENTS",
    "1000",
    "most events in one `POST /events` (within the body limit); more gets 413",
);
const SERVER_TIMEOUT: Var = Var::new(
    "GATEWAY_PROCESSOR_SERVER_TIMEOUT",
    "10s",
    "per-request timeout of `/start` and `/stop`",
);
const RETRY_BASE: Var = Var::new(
    "GATEWAY_PROCESSOR_RETRY_BASE",
    "200ms",
    "first backoff of a failing `/start`",
);
const RETRY_CAP: Var = Var::new(
    "GATEWAY_PROCESSOR_RETRY_CAP",
    "5s",
    "longest backoff of a failing `/start`",
);
/// Short, because a user server that restarts quickly is only seen as down for the
/// moment its port is closed; a TCP connect on loopback costs microseconds.
const PROBE_INTERVAL: Var = Var::new(
    "GATEWAY_PROCESSOR_SERVER_PROBE_INTERVAL",
    "50ms",
    "how often the user server's port is probed to notice a restart",
);
const POLL_INTERVAL: Var = Var::new(
    "GATEWAY_PROCESSOR_CONFIG_POLL_INTERVAL",
    "5s",
    "re-read of the configurations behind file notifications",
);
const SHARING: Var = Var::new(
    "GATEWAY_PROCESSOR_SHARING",
    "off",
    "`nats`: the configurations are shared out among every processor-client of the same `GATEWAY_NAMESPACE` and `GATEWAY_NAME` on the NATS at `NATS_URL`, each running on one of them (see [Replicas](replicas.md)); `off`: this one runs them all",
);
const REPLICA_ID: Var = Var::derived(
    "GATEWAY_PROCESSOR_REPLICA_ID",
    "the host name",
    "this replica's name in the sharing bucket and in `/configs` (letters, digits, `-` and `_`); a host name another live replica of the gateway goes by (several on one host) becomes `HOST-PID`, a name set here waits until its namesake is gone",
);
const LEASE: Var = Var::new(
    "GATEWAY_PROCESSOR_LEASE",
    "10s",
    "how long a replica's claim on a configuration lasts without renewal (at least 1s); a dead replica's configurations move within two leases",
);
const CLIENT_TOKEN: Var = Var::optional(
    "GATEWAY_PROCESSOR_CLIENT_TOKEN",
    "see [Securing a gateway](deploy.md#securing-a-gateway)",
);

/// The processor-client's listener variables.
const LISTENER: Listener = Listener {
    header_timeout: Var::new(
        "GATEWAY_PROCESSOR_CLIENT_HEADER_TIMEOUT",
        shared::HEADER_TIMEOUT,
        shared::HEADER_TIMEOUT_MEANING,
    ),
    idle_timeout: Var::new(
        "GATEWAY_PROCESSOR_CLIENT_IDLE_TIMEOUT",
        shared::IDLE_TIMEOUT,
        shared::IDLE_TIMEOUT_MEANING,
    ),
    body_timeout: Var::new(
        "GATEWAY_PROCESSOR_CLIENT_BODY_TIMEOUT",
        shared::BODY_TIMEOUT,
        shared::BODY_TIMEOUT_MEANING,
    ),
    max_connections: Var::new(
        "GATEWAY_PROCESSOR_CLIENT_MAX_CONNECTIONS",
        shared::MAX_CONNECTIONS,
        shared::MAX_CONNECTIONS_MEANING,
    ),
};

/// Every variable only the processor-client reads, in the order the docs list
/// them; it also reads [`shared::SHARED`].
pub const VARS: [Var; 31] = [
    CONFIG_MAP,
    PROTOCOL,
    SERVER_HTTP_PORT,
    SERVER_GRPC_PORT,
    SERVER_TLS_CA,
    SERVER_HOST,
    CLIENT_HTTP_PORT,
    LISTEN_ADDRESS,
    START,
    STOP,
    EVENT,
    RUNNING,
    ERROR,
    TRANSFORMER_HOST,
    TRANSFORMER_TIMEOUT,
    BATCH,
    MAX_BODY_BYTES,
    MAX_BATCH_EVENTS,
    SERVER_TIMEOUT,
    RETRY_BASE,
    RETRY_CAP,
    PROBE_INTERVAL,
    POLL_INTERVAL,
    CLIENT_TOKEN,
    SHARING,
    REPLICA_ID,
    LEASE,
    LISTENER.header_timeout,
    LISTENER.idle_timeout,
    LISTENER.body_timeout,
    LISTENER.max_connections,
];

/// The shortest lease that makes sense: claims are renewed every quarter
/// lease, each renewal a NATS round trip, and a replica must stop its
/// configurations before its claims lapse.
const MIN_LEASE: Duration = Duration::from_secs(1);

fn lease(env: &Env) -> Result<Duration, ConfigError> {
    let lease = env.timeout(&LEASE)?;
    if lease < MIN_LEASE {
        return Err(ConfigError::Invalid {
            var: LEASE.name,
            reason: format!("{lease:?} is too short; at least {MIN_LEASE:?}"),
        });
    }
    Ok(lease)
}

/// `GATEWAY_PROCESSOR_REPLICA_ID`, or the host name with anything but letters,
/// digits, `-` and `_` made `_`.
fn replica_id(env: &Env) -> Result<String, ConfigError> {
    let valid = |id: &str| {
        !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if let Some(id) = env.optional(&REPLICA_ID) {
        return if valid(&id) {
            Ok(id)
        } else {
            Err(ConfigError::Invalid {
                var: REPLICA_ID.name,
                reason: format!("{id:?}; use letters, digits, - and _"),
            })
        };
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let id: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() {
        return Err(ConfigError::Missing(REPLICA_ID.name));
    }
    Ok(id)
}

/// Where a user server posts many events at once (beside the event path).
pub const EVENTS_PATH: &str = "/events";

/// Paths the processor-client serves itself; configurable paths may not shadow them.
const FIXED_PATHS: [&str; 5] = ["/configs", EVENTS_PATH, "/healthz", "/readyz", "/metrics"];

fn check_path(env: &Env, var: &Var) -> Result<String, ConfigError> {
    let raw = env.text(var)?;
    let p = raw.trim().to_owned();
    if !p.starts_with('/') || p.contains(char::is_whitespace) || p.contains(['?', '#']) {
        return Err(ConfigError::Invalid {
            var: var.name,
            reason: format!("{raw:?} is not an absolute URL path like /event"),
        });
    }
    Ok(p)
}

/// `GATEWAY_HTTP_CONFIG_*`: each an absolute path, and the three the
/// processor-client serves apart from each other and from its fixed ones.
fn read_paths(env: &Env) -> Result<Paths, ConfigError> {
    let paths = Paths {
        start: check_path(env, &START)?,
        stop: check_path(env, &STOP)?,
        event: check_path(env, &EVENT)?,
        running: check_path(env, &RUNNING)?,
        error: check_path(env, &ERROR)?,
    };
    let served = [
        (EVENT.name, &paths.event),
        (RUNNING.name, &paths.running),
        (ERROR.name, &paths.error),
    ];
    for (i, (var, p)) in served.iter().enumerate() {
        let clash = FIXED_PATHS.contains(&p.as_str()) || served[..i].iter().any(|(_, q)| q == p);
        if clash {
            return Err(ConfigError::Invalid {
                var,
                reason: format!("{p} is already served by another endpoint"),
            });
        }
    }
    Ok(paths)
}

/// How the user server is driven: HTTP, or one of the gRPC contracts.
fn read_protocol(env: &Env) -> Result<Protocol, ConfigError> {
    match env.text(&PROTOCOL)?.to_ascii_lowercase().as_str() {
        "http" => Ok(Protocol::Http),
        "grpc" => Ok(Protocol::Grpc(Contract::Generic)),
        "grpc-v06" => Ok(Protocol::Grpc(Contract::V06)),
        other => Err(ConfigError::Invalid {
            var: PROTOCOL.name,
            reason: format!("{other:?}; expected http, grpc or grpc-v06"),
        }),
    }
}

/// Sharing the configurations with other replicas over NATS, or not.
fn read_sharing(
    env: &Env,
    gateway_name: &str,
) -> Result<Option<crate::sharing::Settings>, ConfigError> {
    match env.text(&SHARING)?.to_ascii_lowercase().as_str() {
        "off" | "" => Ok(None),
        "nats" => Ok(Some(crate::sharing::Settings {
            replica: replica_id(env)?,
            replica_from_env: env.optional(&REPLICA_ID).is_some(),
            lease: lease(env)?,
            nats: gateway_common::nats::NatsOptions::read(env)?,
            bucket: crate::sharing::bucket_name(
                &env.text(&shared::GATEWAY_NAMESPACE)?,
                gateway_name,
            ),
        })),
        other => Err(ConfigError::Invalid {
            var: SHARING.name,
            reason: format!("{other:?}; expected off or nats"),
        }),
    }
}

impl Settings for Config {
    fn json_logs(&self) -> bool {
        self.json_logs
    }

    fn read(env: &Env) -> Result<Self, ConfigError> {
        let gateway_name = env.text(&shared::GATEWAY_NAME)?;
        let paths = read_paths(env)?;
        let protocol = read_protocol(env)?;
        let sharing = read_sharing(env, &gateway_name)?;
        let config = Config {
            sharing,
            gateway_name,
            namespace: env.text(&shared::GATEWAY_NAMESPACE)?,
            controller_instance_id: env.text(&shared::GATEWAY_CONTROLLER_INSTANCE_ID)?,
            config_map: PathBuf::from(env.text(&CONFIG_MAP)?),
            server_host: env.text(&SERVER_HOST)?,
            server_port: match protocol {
                Protocol::Http => env.port(&env.require(&SERVER_HTTP_PORT)?)?,
                Protocol::Grpc(_) => env.port(&env.require(&SERVER_GRPC_PORT)?)?,
            },
            protocol,
            server_tls_ca: env.path(&SERVER_TLS_CA),
            listen: env.ip(&LISTEN_ADDRESS)?,
            port: env.number(&CLIENT_HTTP_PORT)?,
            paths,
            transformer_host: env.text(&TRANSFORMER_HOST)?,
            transformer_port: env.port(&shared::TRANSFORMER_PORT)?,
            transformer_timeout: env.duration(&TRANSFORMER_TIMEOUT)?,
            batch: env.bool(&BATCH)?,
            max_body_bytes: env.positive(&MAX_BODY_BYTES)?,
            max_batch_events: env.positive(&MAX_BATCH_EVENTS)?,
            server_timeout: env.duration(&SERVER_TIMEOUT)?,
            retry_base: env.duration(&RETRY_BASE)?,
            retry_cap: env.duration(&RETRY_CAP)?,
            probe_interval: env.duration(&PROBE_INTERVAL)?.max(Duration::from_millis(5)),
            poll_interval: env
                .duration(&POLL_INTERVAL)?
                .max(Duration::from_millis(100)),
            shutdown_timeout: env.duration(&shared::SHUTDOWN_TIMEOUT)?,
            json_logs: env.json_logs()?,
            token: env.token(&CLIENT_TOKEN)?,
            transformer_token: env.token(&shared::TRANSFORMER_TOKEN)?,
            listener: LISTENER.read(env)?,
        };
        config.not_itself()?;
        Ok(config)
    }
}

impl Config {
    /// The user server or the transformer on this host at the processor-client's
    /// own port would be the processor-client itself: it would send `/start`
    /// (or its events) to itself and get its own 404s back.
    fn not_itself(&self) -> Result<(), ConfigError> {
        let here = |host: &str| {
            matches!(
                host,
                "localhost" | "127.0.0.1" | "::1" | "[::1]" | "0.0.0.0"
            ) && (self.listen.is_unspecified() || self.listen.is_loopback())
        };
        let clash = |var: &'static str| ConfigError::Invalid {
            var,
            reason: format!(
                "port {} on this host is the processor-client's own \
                 (GATEWAY_PROCESSOR_CLIENT_HTTP_PORT); give each its own port",
                self.port
            ),
        };
        if here(&self.server_host) && self.server_port == self.port {
            return Err(clash(match self.protocol {
                Protocol::Http => SERVER_HTTP_PORT.name,
                Protocol::Grpc(_) => SERVER_GRPC_PORT.name,
            }));
        }
        if here(&self.transformer_host) && self.transformer_port == self.port {
            return Err(clash(shared::TRANSFORMER_PORT.name));
        }
        Ok(())
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

    /// [`BASE`] with `set` added, each replacing a variable of the same name.
    fn with(set: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let mut list = BASE.to_vec();
        list.retain(|(k, _)| set.iter().all(|(s, _)| s != k));
        list.extend_from_slice(set);
        Config::from_vars(vars(&list))
    }

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
            ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "0"),
            ("TRANSFORMER_PORT", "0"),
            ("GATEWAY_HTTP_CONFIG_EVENT", "event"),
            ("GATEWAY_HTTP_CONFIG_ERROR", "/configs"),
            ("GATEWAY_HTTP_CONFIG_EVENT", "/events"),
            ("GATEWAY_PROCESSOR_RETRY_CAP", "later"),
            ("GATEWAY_PROCESSOR_CLIENT_TOKEN", "abc\ndef"),
            ("GATEWAY_PROCESSOR_CLIENT_TOKEN", "two words"),
            ("TRANSFORMER_TOKEN", "caf\u{e9}"),
            ("GATEWAY_PROCESSOR_CLIENT_HEADER_TIMEOUT", "0s"),
            ("GATEWAY_PROCESSOR_CLIENT_IDLE_TIMEOUT", "soon"),
            ("GATEWAY_PROCESSOR_CLIENT_BODY_TIMEOUT", "-1"),
            ("GATEWAY_PROCESSOR_CLIENT_MAX_CONNECTIONS", "0"),
        ] {
            let e = with(&[(var, value)]).unwrap_err().to_string();
            assert!(e.contains(var), "{var}: {e}");
        }
    }

    #[test]
    fn the_processor_clients_own_port_is_no_user_server_or_transformer() {
        for (var, value) in [
            ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "9393"),
            ("TRANSFORMER_PORT", "9393"),
        ] {
            let e = with(&[(var, value)]).unwrap_err().to_string();
            assert!(e.contains(var) && e.contains("own"), "{var}: {e}");
        }
        // On another host the same port is another process.
        with(&[
            ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "9393"),
            ("GATEWAY_PROCESSOR_SERVER_HOST", "user-server"),
        ])
        .unwrap();
    }

    #[test]
    fn tokens_are_trimmed_and_listener_bounds_default() {
        let c = with(&[("GATEWAY_PROCESSOR_CLIENT_TOKEN", " s3cr3t-token_~+/=\n")]).unwrap();
        assert_eq!(c.token.as_deref(), Some("s3cr3t-token_~+/="));
        assert_eq!(c.listener.max_connections, 1024);
        assert_eq!(c.listener.header_timeout, Duration::from_secs(10));
    }
}
