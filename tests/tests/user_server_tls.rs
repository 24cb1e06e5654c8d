//! `GATEWAY_PROCESSOR_SERVER_TLS_CA` with an HTTP user server: `/start` and
//! `/stop` go over HTTPS to a server whose certificate a private CA signed, and
//! a CA file that cannot be read stops the processor-client naming the variable.

use std::process::Command;
use std::time::Duration;

use gateway_tests::*;

#[tokio::test]
async fn start_and_stop_go_over_https_verified_by_the_configured_ca() {
    let mut g = Gateway::new(UserServerKind::Python);
    let (ca, cert, key) = private_ca(g.dir.path());
    g.processor_env.push((
        "GATEWAY_PROCESSOR_SERVER_TLS_CA".into(),
        ca.display().to_string(),
    ));
    g.set_config("alpha", r#"{"count": 3}"#);
    g.start_sensor().await;
    g.start_transformer().await;
    let mut cmd = Command::new("python3");
    cmd.arg(support("user_server.py"))
        .arg("--port")
        .arg(g.us_port.to_string())
        .arg("--processor")
        .arg(format!("http://127.0.0.1:{}", g.pc_port))
        .arg("--journal")
        .arg(&g.journal)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key);
    g.start_user_server_with(cmd).await;
    g.start_processor().await;
    g.wait_phase("alpha", "Running").await;
    g.wait_sensor(3).await;
    g.remove_config("alpha");
    g.wait_journal("stop", "alpha", 1).await;
}

#[tokio::test]
async fn an_unreadable_ca_file_stops_the_processor_client_naming_the_variable() {
    let g = Gateway::new(UserServerKind::Python);
    let mut cmd = g.processor_command();
    cmd.env(
        "GATEWAY_PROCESSOR_SERVER_TLS_CA",
        g.dir.path().join("missing.pem"),
    );
    let mut p = Proc::spawn("processor-client", cmd, g.dir.path());
    let status = p
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("stops at start");
    assert!(!status.success());
    assert!(
        p.output().contains("GATEWAY_PROCESSOR_SERVER_TLS_CA"),
        "{}",
        p.output()
    );
}
