//! The OpenAPI documents in `openapi/` against the code: validated by
//! openapi-spec-validator, exercised by schemathesis against a live transformer and
//! processor-client (no 5xx, no response outside its documented schema), and
//! cross-checked endpoint by endpoint (the code's own endpoint lists, which its
//! routers are built from) so that neither can drift from the other.

use gateway_common::start::Settings as _;
use std::collections::BTreeSet;
use std::process::Command;

use gateway_tests::*;

fn tool(name: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-m").arg(name);
    cmd
}

#[test]
fn documents_are_valid_openapi() {
    for doc in [
        "user-server.yaml",
        "processor-client.yaml",
        "transformer.yaml",
    ] {
        run_ok(
            tool("openapi_spec_validator").arg(root().join("openapi").join(doc)),
            &format!("openapi-spec-validator {doc}"),
        );
    }
}

/// (METHOD, path) pairs a document describes.
fn documented(doc: &str) -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(root().join("openapi").join(doc)).expect("read document");
    let spec: serde_norway::Value = serde_norway::from_str(&text).expect("parse document");
    let mut out = BTreeSet::new();
    if let Some(paths) = spec.get("paths").and_then(|p| p.as_mapping()) {
        for (path, item) in paths {
            for method in ["get", "post", "put", "delete", "patch"] {
                if item.get(method).is_some() {
                    out.insert((
                        method.to_uppercase(),
                        path.as_str().unwrap_or("").to_owned(),
                    ));
                }
            }
        }
    }
    out
}

/// (METHOD, path) pairs a binary serves: its own list of endpoints, which its
/// router is built from.
fn routed<S>(endpoints: Vec<gateway_common::endpoint::Endpoint<S>>) -> BTreeSet<(String, String)> {
    endpoints
        .iter()
        .map(|e| (e.method.to_string(), e.path.clone()))
        .collect()
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_routed() {
    // The notice paths at their defaults.
    let config = processor_client::config::Config::from_vars([
        ("GATEWAY_NAME".to_owned(), "g".to_owned()),
        ("GATEWAY_PROCESSOR_CONFIG_MAP".to_owned(), "/c".to_owned()),
        (
            "GATEWAY_PROCESSOR_SERVER_HTTP_PORT".to_owned(),
            "1".to_owned(),
        ),
    ])
    .expect("defaults");
    let pc_code = routed(processor_client::routes::endpoints(&config.paths));
    let tr_code = routed(transformer::routes::endpoints());
    assert_eq!(
        pc_code,
        documented("processor-client.yaml"),
        "processor-client routes vs openapi/processor-client.yaml"
    );
    assert_eq!(
        tr_code,
        documented("transformer.yaml"),
        "transformer routes vs openapi/transformer.yaml"
    );
    let user = documented("user-server.yaml");
    assert_eq!(
        user,
        [
            ("POST".to_owned(), "/start".to_owned()),
            ("POST".to_owned(), "/stop".to_owned())
        ]
        .into()
    );
}

fn schemathesis(doc: &str, url: &str) {
    let out = tool("schemathesis.cli")
        .args([
            "run",
            &root().join("openapi").join(doc).display().to_string(),
            "--url",
            url,
        ])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "negative_data_rejection",
        ])
        .args([
            "--max-examples",
            "40",
            "--seed",
            "7",
            "--request-timeout",
            "10",
            "--workers",
            "1",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems in {doc}:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_wrong_with_the_live_gateway() {
    let g = Gateway::up(UserServerKind::Python, &[("alpha", r#"{"count": 0}"#)]).await;
    g.wait_phase("alpha", "Running").await;
    let (tr, pc) = (g.tr_url(""), g.pc_url(""));
    tokio::task::spawn_blocking(move || {
        schemathesis("transformer.yaml", &tr);
        schemathesis("processor-client.yaml", &pc);
    })
    .await
    .expect("schemathesis");
    for port in [g.pc_port, g.tr_port] {
        let r = g
            .http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(r.status().as_u16(), 200, "still up after schemathesis");
    }
}
