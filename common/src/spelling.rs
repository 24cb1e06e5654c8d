//! Settings spelled almost right. A variable the gateway does not read is
//! ignored, so `NATS_URLS`, `SENSOR_WATCHER` or `nats_url` left the default in
//! force without a word, and the operator looked for the fault elsewhere. At
//! start every binary warns about each variable of its environment that is one
//! or two letters (or only case) away from one of the gateway's, naming the one
//! meant. Only near misses are named: a container's environment holds many
//! variables of other programs, which are none of the gateway's business.

/// Every variable any of the gateway's binaries reads, and those its SDK's user
/// servers read; a test keeps it equal to what the binaries declare.
pub const KNOWN: &[&str] = &[
    "CE_MODE",
    "EVENT_PROTOCOL",
    "EVENT_TYPE",
    "GATEWAY_CONTROLLER_INSTANCE_ID",
    "GATEWAY_HTTP_CONFIG_ERROR",
    "GATEWAY_HTTP_CONFIG_EVENT",
    "GATEWAY_HTTP_CONFIG_RUNNING",
    "GATEWAY_HTTP_CONFIG_START",
    "GATEWAY_HTTP_CONFIG_STOP",
    "GATEWAY_NAME",
    "GATEWAY_NAMESPACE",
    "GATEWAY_PROCESSOR_BATCH",
    "GATEWAY_PROCESSOR_CLIENT_BODY_TIMEOUT",
    "GATEWAY_PROCESSOR_CLIENT_HEADER_TIMEOUT",
    "GATEWAY_PROCESSOR_CLIENT_HTTP_PORT",
    "GATEWAY_PROCESSOR_CLIENT_IDLE_TIMEOUT",
    "GATEWAY_PROCESSOR_CLIENT_LISTEN_ADDRESS",
    "GATEWAY_PROCESSOR_CLIENT_MAX_CONNECTIONS",
    "GATEWAY_PROCESSOR_CLIENT_TOKEN",
    "GATEWAY_PROCESSOR_CONFIG_MAP",
    "GATEWAY_PROCESSOR_CONFIG_POLL_INTERVAL",
    "GATEWAY_PROCESSOR_LEASE",
    "GATEWAY_PROCESSOR_MAX_BATCH_EVENTS",
    "GATEWAY_PROCESSOR_MAX_BODY_BYTES",
    "GATEWAY_PROCESSOR_REPLICA_ID",
    "GATEWAY_PROCESSOR_RETRY_BASE",
    "GATEWAY_PROCESSOR_RETRY_CAP",
    "GATEWAY_PROCESSOR_SERVER_GRPC_PORT",
    "GATEWAY_PROCESSOR_SERVER_HOST",
    "GATEWAY_PROCESSOR_SERVER_HTTP_PORT",
    "GATEWAY_PROCESSOR_SERVER_PROBE_INTERVAL",
    "GATEWAY_PROCESSOR_SERVER_PROTOCOL",
    "GATEWAY_PROCESSOR_SERVER_TIMEOUT",
    "GATEWAY_PROCESSOR_SERVER_TLS_CA",
    "GATEWAY_PROCESSOR_SHARING",
    "GATEWAY_WATCHERS",
    "INGRESS_ADMIN_PORT",
    "INGRESS_BODY_TIMEOUT",
    "INGRESS_HEADER_TIMEOUT",
    "INGRESS_HOSTS",
    "INGRESS_IDLE_TIMEOUT",
    "INGRESS_INBOX_PREFIX",
    "INGRESS_LISTEN_ADDRESS",
    "INGRESS_MAX_BODY_BYTES",
    "INGRESS_MAX_CONNECTIONS",
    "INGRESS_PORT",
    "INGRESS_REQUEST_TIMEOUT",
    "INGRESS_SUBJECT_PREFIX",
    "LOG_FORMAT",
    "NATS_CE_MODE",
    "NATS_CREDS",
    "NATS_PASSWORD",
    "NATS_PING_INTERVAL",
    "NATS_STREAM",
    "NATS_SUBJECT",
    "NATS_TLS_CA",
    "NATS_TLS_CERT",
    "NATS_TLS_KEY",
    "NATS_TLS_REQUIRED",
    "NATS_TOKEN",
    "NATS_TYPE",
    "NATS_URL",
    "NATS_USER",
    "SENSOR_WATCHERS",
    "SHUTDOWN_TIMEOUT",
    "TRANSFORMER_ADMIT_WAIT",
    "TRANSFORMER_BODY_TIMEOUT",
    "TRANSFORMER_DATA_DIR",
    "TRANSFORMER_DEDUP_MAX_IDS",
    "TRANSFORMER_TRIGGERS",
    "K_CE_OVERRIDES",
    "TRANSFORMER_DEDUP_WINDOW",
    "TRANSFORMER_DURABLE",
    "TRANSFORMER_FSYNC",
    "TRANSFORMER_HEADER_TIMEOUT",
    "TRANSFORMER_HOST",
    "TRANSFORMER_IDLE_TIMEOUT",
    "TRANSFORMER_LISTEN_ADDRESS",
    "TRANSFORMER_MAX_BODY_BYTES",
    "TRANSFORMER_MAX_CONNECTIONS",
    "TRANSFORMER_PORT",
    "TRANSFORMER_QUEUE_CAPACITY",
    "TRANSFORMER_QUEUE_MAX_BYTES",
    "TRANSFORMER_STORE_MEMTABLE_BYTES",
    "TRANSFORMER_TIMEOUT",
    "TRANSFORMER_TOKEN",
    "WATCHER_CONCURRENCY",
    "WATCHER_RETRY_ATTEMPTS",
    "WATCHER_RETRY_BASE",
    "WATCHER_RETRY_CAP",
    "WATCHER_TIMEOUT",
    "WATCHER_TLS_CA",
    "WATCHER_TOKEN",
];

/// Read by the user servers of `sdk-examples/rust-sdk`, not by a binary.
pub const USER_SERVER_SIDE: &[&str] = &["GATEWAY_PROCESSOR_CLIENT_HOST"];

/// Names shorter than this are not compared: too many short names are two
/// letters from each other.
const SHORTEST: usize = 8;

/// The warnings for `names`: one for each that is not a gateway variable but
/// is within two edits of one, or differs from one only in case.
pub fn near_misses<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let known = || KNOWN.iter().chain(USER_SERVER_SIDE).copied();
    let mut notes = Vec::new();
    for name in names {
        if name.len() < SHORTEST || known().any(|k| k == name) {
            continue;
        }
        let upper = name.to_ascii_uppercase();
        let best = known()
            .map(|k| (strsim::levenshtein(&upper, k), k))
            .min_by_key(|(d, _)| *d);
        if let Some((distance, meant)) = best.filter(|(d, _)| *d <= 2) {
            notes.push(if distance == 0 {
                format!(
                    "environment variable {name} is not read: names are case-sensitive; the gateway reads {meant}"
                )
            } else {
                format!(
                    "environment variable {name} is not read; did you mean {meant}? (docs/environment.md lists every variable)"
                )
            });
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_named_with_what_was_meant() {
        let notes = near_misses([
            "NATS_URLS",
            "SENSOR_WATCHER",
            "nats_url",
            "GATEWAY_PROCESSOR_SEVER_HTTP_PORT",
            "TRANSFOMER_PORT",
        ]);
        assert_eq!(notes.len(), 5, "{notes:#?}");
        assert!(notes[0].contains("NATS_URLS is not read; did you mean NATS_URL?"));
        assert!(notes[1].contains("SENSOR_WATCHERS"));
        assert!(notes[2].contains(
            "nats_url is not read: names are case-sensitive; the gateway reads NATS_URL"
        ));
        assert!(notes[3].contains("GATEWAY_PROCESSOR_SERVER_HTTP_PORT"));
        assert!(notes[4].contains("TRANSFORMER_PORT"));
    }

    #[test]
    fn the_gateways_own_and_other_programs_variables_pass() {
        let notes = near_misses([
            "NATS_URL",
            "GATEWAY_PROCESSOR_CLIENT_HOST",
            "PATH",
            "HOSTNAME",
            "KUBERNETES_SERVICE_HOST",
            "GATEWAY_BIN_DIR",
            "SENSOR_PORT",
            "RUST_BACKTRACE",
            "TOKIO_WORKER_THREADS",
        ]);
        assert!(notes.is_empty(), "{notes:#?}");
    }
}
