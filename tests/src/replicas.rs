//! What the replica tests share: a replica's settings (a short lease), its
//! configurations, what its user server runs now, and the check that no
//! configuration ever ran on two replicas at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::{Gateway, NatsServer, UserServerKind};

/// Short, so the tests run in seconds.
pub const LEASE: Duration = Duration::from_secs(3);

/// A gateway (not started) that is the replica `id`, reading `configs`,
/// sharing through `nats`.
pub fn sharing(id: &str, nats: &NatsServer, configs: &[(String, String)]) -> Gateway {
    let mut g = Gateway::new(UserServerKind::Python);
    for (k, v) in [
        ("GATEWAY_PROCESSOR_SHARING", "nats".to_owned()),
        ("GATEWAY_PROCESSOR_REPLICA_ID", id.to_owned()),
        (
            "GATEWAY_PROCESSOR_LEASE",
            format!("{}ms", LEASE.as_millis()),
        ),
        ("NATS_URL", nats.url()),
        ("SHUTDOWN_TIMEOUT", "3s".to_owned()),
    ] {
        g.processor_env.push((k.into(), v));
    }
    for (k, v) in configs {
        g.set_config(k, v);
    }
    g
}

/// The configurations a user server runs now, by its journal (a gRPC
/// server's call ends with `end`, an HTTP server's run with `stop`).
pub fn open_calls(g: &Gateway) -> BTreeSet<String> {
    let mut open = BTreeSet::new();
    for e in g.journal() {
        let Some(src) = e["src"].as_str() else {
            continue;
        };
        match e["op"].as_str() {
            Some("start") => {
                open.insert(src.to_owned());
            }
            Some("end" | "stop") => {
                open.remove(src);
            }
            _ => {}
        }
    }
    open
}

/// `n` configurations of a ticking test server.
pub fn configs(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("cfg-{i:02}"), r#"{"interval_ms": 200}"#.to_owned()))
        .collect()
}

/// Every journal's start/stop intervals per configuration, across replicas:
/// none may overlap another replica's (a replica whose pod was killed is
/// closed at `killed`).
pub fn assert_never_twice(journals: &[(&str, Vec<Value>, Option<f64>)]) {
    let mut intervals: BTreeMap<String, Vec<(f64, f64, String)>> = BTreeMap::new();
    for (id, journal, killed) in journals {
        let mut open: BTreeMap<String, f64> = BTreeMap::new();
        for e in journal {
            let (Some(src), Some(at)) = (e["src"].as_str(), e["at"].as_f64()) else {
                continue;
            };
            match e["op"].as_str() {
                Some("start") => {
                    if let Some(since) = open.insert(src.to_owned(), at) {
                        // A start for a running src replaces it (a restart).
                        intervals.entry(src.to_owned()).or_default().push((
                            since,
                            at,
                            id.to_string(),
                        ));
                    }
                }
                Some("stop") => {
                    if let Some(since) = open.remove(src) {
                        intervals.entry(src.to_owned()).or_default().push((
                            since,
                            at,
                            id.to_string(),
                        ));
                    }
                }
                _ => {}
            }
        }
        let end = killed.unwrap_or(f64::MAX);
        for (src, since) in open {
            intervals
                .entry(src)
                .or_default()
                .push((since, end, id.to_string()));
        }
    }
    for (src, mut list) in intervals {
        list.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in list.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                a.2 == b.2 || b.0 >= a.1,
                "{src} ran on {} ({:.3}-{:.3}) and {} (from {:.3}) at once",
                a.2,
                a.0,
                a.1,
                b.2,
                b.0
            );
        }
    }
}
