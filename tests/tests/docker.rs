//! `docker/` against the code: every compose service and Kubernetes container of a
//! gateway component sets only variables that component reads, and every variable
//! it requires. The variables read are taken from the code itself (each binary's
//! declared variables, and the SDK's settings), so neither side can drift.

use std::collections::{BTreeMap, BTreeSet};

use gateway_common::env::{Default, Var};
use gateway_tests::root;

/// The variables a binary reads, from its config module's own list: (VARIABLE, required).
fn declared(own: &[Var]) -> BTreeMap<String, bool> {
    own.iter()
        .chain(gateway_common::env::SHARED.iter())
        .map(|v| (v.name.to_owned(), v.default == Default::Required))
        .collect()
}

/// The variables of `own` alone (the ingress reads few of the shared ones).
fn declared_only(own: &[Var]) -> BTreeMap<String, bool> {
    own.iter()
        .map(|v| (v.name.to_owned(), v.default == Default::Required))
        .collect()
}

/// Variables the Rust SDK's user servers read, from its own list.
fn sdk_fields() -> BTreeMap<String, bool> {
    gateway_sdk::server::VARS
        .iter()
        .map(|(name, _)| (name.to_string(), false))
        .collect()
}

/// Read by every binary outside its RawEnv (tracing's filter).
const ALWAYS: [&str; 1] = ["RUST_LOG"];

fn check(place: &str, component: &str, set: &BTreeSet<String>, reads: &BTreeMap<String, bool>) {
    for var in set {
        assert!(
            reads.contains_key(var) || ALWAYS.contains(&var.as_str()),
            "{place}: {component} sets {var}, which it does not read"
        );
    }
    for (var, required) in reads {
        assert!(
            !required || set.contains(var),
            "{place}: {component} misses the required {var}"
        );
    }
}

fn components() -> BTreeMap<&'static str, BTreeMap<String, bool>> {
    BTreeMap::from([
        (
            "transformer",
            declared(
                &[
                    &transformer::config::VARS[..],
                    &gateway_common::nats::VARS[..],
                ]
                .concat(),
            ),
        ),
        (
            "processor-client",
            declared(
                &[
                    &processor_client::config::VARS[..],
                    &gateway_common::nats::VARS[..],
                ]
                .concat(),
            ),
        ),
        ("ingress", {
            let mut vars = declared_only(
                &[&ingress::config::VARS[..], &gateway_common::nats::VARS[..]].concat(),
            );
            for v in [
                gateway_common::env::SHUTDOWN_TIMEOUT,
                gateway_common::env::LOG_FORMAT,
            ] {
                vars.insert(v.name.to_owned(), false);
            }
            vars
        }),
        ("calendar", sdk_fields()),
    ])
}

/// The components of the compose file: the pod's, and the Kafka user server
/// of the `kafka` profile.
fn compose_components() -> BTreeMap<&'static str, BTreeMap<String, bool>> {
    let mut comps = components();
    let mut kafka = sdk_fields();
    kafka.insert(kafka_gateway::spec::SECRETS_DIR_VAR.to_owned(), false);
    comps.insert("kafka-gateway", kafka);
    comps
}

/// The components of the Kubernetes manifests: the pod's, and the resource
/// gateway's pod (`docker/k8s/resource-gateway.yaml`).
fn k8s_components() -> BTreeMap<&'static str, BTreeMap<String, bool>> {
    let mut comps = components();
    let mut resources = sdk_fields();
    resources.insert(resource_gateway::STATE_DIR_VAR.to_owned(), false);
    comps.insert("resource-gateway", resources);
    comps
}

fn yaml_docs(path: &str) -> Vec<serde_norway::Value> {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{path} does not parse: {e}"))
        })
        .collect()
}

#[test]
fn compose_services_set_what_the_code_reads() {
    let comps = compose_components();
    let compose = yaml_docs("docker/docker-compose.yaml").remove(0);
    let services = compose["services"].as_mapping().expect("services");
    let mut seen = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().unwrap_or("");
        let Some(target) = service["build"]["target"].as_str() else {
            continue;
        };
        let Some(reads) = comps.get(target) else {
            continue;
        };
        let mut set: BTreeSet<String> = service["environment"]
            .as_mapping()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        set.extend(dockerfile_env(target));
        check("docker-compose.yaml", name, &set, reads);
        for host_var in [
            "GATEWAY_PROCESSOR_SERVER_HOST",
            "TRANSFORMER_HOST",
            "GATEWAY_PROCESSOR_CLIENT_HOST",
        ] {
            if let Some(host) = service["environment"][host_var].as_str() {
                assert!(
                    services.contains_key(host),
                    "docker-compose.yaml: {name}: {host_var}={host} names no service"
                );
            }
        }
        seen.insert(target.to_owned());
    }
    assert_eq!(
        seen,
        comps.keys().map(|k| k.to_string()).collect(),
        "compose runs every component"
    );
}

/// `ENV` names set in the Dockerfile stage named `target`.
fn dockerfile_env(target: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docker/Dockerfile")).expect("Dockerfile");
    let mut stage = String::new();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("FROM ") {
            stage = rest.split(" AS ").nth(1).unwrap_or("").trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("ENV ") {
            if stage == target {
                out.insert(rest.split('=').next().unwrap_or("").trim().to_owned());
            }
        }
    }
    out
}

#[test]
fn kubernetes_containers_set_what_the_code_reads() {
    let comps = k8s_components();
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("docker/k8s")).expect("k8s dir") {
        let path = format!(
            "docker/k8s/{}",
            entry.expect("entry").file_name().to_string_lossy()
        );
        for doc in yaml_docs(&path) {
            let Some(containers) = doc["spec"]["template"]["spec"]["containers"].as_sequence()
            else {
                continue;
            };
            for c in containers {
                let name = c["name"].as_str().unwrap_or("");
                let Some(reads) = comps.get(name) else {
                    continue;
                };
                let mut set: BTreeSet<String> = c["env"]
                    .as_sequence()
                    .map(|s| {
                        s.iter()
                            .filter_map(|e| e["name"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                set.extend(dockerfile_env(name));
                check(&path, name, &set, reads);
                seen.insert(name.to_owned());
            }
        }
    }
    assert_eq!(
        seen,
        comps.keys().map(|k| k.to_string()).collect(),
        "the pod runs every component"
    );
}

#[test]
fn the_consistency_check_catches_a_stray_variable() {
    let reads = components()["transformer"].clone();
    let set: BTreeSet<String> = ["GATEWAY_NAME", "SENSOR_WATCHER"].map(str::to_owned).into();
    let caught = std::panic::catch_unwind(|| check("test", "transformer", &set, &reads));
    assert!(caught.is_err(), "a misspelt variable must fail the check");
}

/// The resource gateway's Role lets its service account get, list and watch
/// every kind of object its configurations watch, and the Deployment runs
/// under that account.
#[test]
fn the_resource_gateways_role_covers_what_it_watches() {
    let docs = yaml_docs("docker/k8s/resource-gateway.yaml");
    let of_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("a {kind}"))
    };
    let rules = of_kind("Role")["rules"].as_sequence().expect("rules");
    let binding = of_kind("RoleBinding");
    assert_eq!(
        binding["roleRef"]["name"],
        of_kind("Role")["metadata"]["name"]
    );
    let account = of_kind("ServiceAccount")["metadata"]["name"].clone();
    assert_eq!(binding["subjects"][0]["name"], account);
    assert_eq!(
        of_kind("Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        account
    );
    let has = |seq: &serde_norway::Value, want: &str| {
        seq.as_sequence()
            .is_some_and(|s| s.iter().any(|v| v.as_str() == Some(want)))
    };
    let configs = of_kind("ConfigMap")["data"].as_mapping().expect("data");
    assert!(!configs.is_empty());
    for (key, value) in configs {
        let spec = resource_gateway::Spec::parse(value.as_str().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{key:?}: {e}"));
        assert!(
            !spec.namespace.is_empty(),
            "{key:?}: a Role covers one namespace"
        );
        let covered = rules.iter().any(|r| {
            has(&r["apiGroups"], &spec.group)
                && has(&r["resources"], &spec.resource)
                && ["get", "list", "watch"].iter().all(|v| has(&r["verbs"], v))
        });
        assert!(
            covered,
            "{key:?}: no rule grants get, list, watch on {}",
            spec.describe()
        );
    }
}
