//! User servers generated from `openapi/` by third-party generators: the generated
//! files must be exactly what the generators make from today's documents, and the
//! servers built on them must run through the gateway end to end.

use std::process::Command;

use gateway_tests::*;

fn example(dir: &str) -> std::path::PathBuf {
    root().join("sdk-examples").join(dir)
}

fn assert_same(generated: &std::path::Path, committed: &std::path::Path) {
    let a = std::fs::read_to_string(generated)
        .unwrap_or_else(|e| panic!("{}: {e}", generated.display()));
    let b = std::fs::read_to_string(committed)
        .unwrap_or_else(|e| panic!("{}: {e}", committed.display()));
    assert!(
        a == b,
        "{} differs from what the generator makes now; run the example's generate step and commit",
        committed.display()
    );
}

#[test]
fn python_stub_is_what_fastapi_code_generator_makes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("app");
    run_ok(
        Command::new("bash")
            .arg(example("python-generated").join("generate.sh"))
            .arg(&out),
        "fastapi-codegen",
    );
    for file in ["main.py", "models.py"] {
        assert_same(
            &out.join(file),
            &example("python-generated").join("app").join(file),
        );
    }
}

#[test]
fn typescript_types_are_what_openapi_typescript_makes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = example("node-typescript");
    for doc in ["user-server", "processor-client"] {
        let out = dir.path().join(format!("{doc}.ts"));
        run_ok(
            Command::new("npx")
                .current_dir(&node)
                .arg("openapi-typescript")
                .arg(root().join("openapi").join(format!("{doc}.yaml")))
                .arg("-o")
                .arg(&out),
            "openapi-typescript",
        );
        assert_same(&out, &node.join("src/generated").join(format!("{doc}.ts")));
    }
}

async fn through_the_gateway(mut g: Gateway, cmd: Command) {
    g.set_config("alpha", r#"{"count": 10, "interval_ms": 5}"#);
    g.set_config("refused", r#"{"reject": true}"#);
    g.start_sensor().await;
    g.start_transformer().await;
    g.start_user_server_with(cmd).await;
    g.start_processor().await;
    let events = g.wait_sensor(10).await;
    assert_ordered(&events);
    assert!(events
        .iter()
        .all(|e| e["subject"] == "alpha" && e["specversion"] == "1.0"));
    g.wait_phase("alpha", "Running").await;
    let refused = g.wait_phase("refused", "Error").await;
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or("")
            .contains("reject requested"),
        "{refused}"
    );
    g.remove_config("alpha");
    g.wait_phase("alpha", "Stopped").await;
}

#[tokio::test]
async fn generated_python_user_server_runs_through_the_gateway() {
    let g = Gateway::new(UserServerKind::Python);
    let mut cmd = Command::new("python3");
    cmd.current_dir(example("python-generated"))
        .args([
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
        ])
        .arg(g.us_port.to_string());
    through_the_gateway(g, cmd).await;
}

#[tokio::test]
async fn typescript_user_server_runs_through_the_gateway() {
    let node = example("node-typescript");
    run_ok(Command::new("npx").current_dir(&node).arg("tsc"), "tsc");
    let g = Gateway::new(UserServerKind::Node);
    let mut cmd = Command::new("node");
    cmd.arg(node.join("dist/server.js"));
    through_the_gateway(g, cmd).await;
}

/// The TypeScript example posting a thousand events as one `/events`, each
/// with its id: a thousand at the sensor, in order, each carrying its id.
#[tokio::test]
async fn typescript_user_server_sends_a_batch_of_a_thousand_with_ids() {
    let node = example("node-typescript");
    run_ok(Command::new("npx").current_dir(&node).arg("tsc"), "tsc");
    let mut g = Gateway::new(UserServerKind::Node);
    g.set_config(
        "bulk",
        r#"{"count": 1000, "batch": 1000, "interval_ms": 0}"#,
    );
    g.start_sensor().await;
    g.start_transformer().await;
    let mut cmd = Command::new("node");
    cmd.arg(node.join("dist/server.js"));
    g.start_user_server_with(cmd).await;
    g.start_processor().await;
    let events = g.wait_sensor(1000).await;
    assert_ordered(&events);
    let ids: std::collections::HashSet<&str> = events
        .iter()
        .filter_map(|e| e["originid"].as_str())
        .collect();
    assert_eq!(ids.len(), 1000, "each event carries its own id");
    assert!(
        g.metric(&g.pc_url("/metrics"), "processor_events_forwarded_total")
            .await
            >= 1000.0
    );
}
