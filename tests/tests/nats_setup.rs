//! NATS not as the gateway needs it: a server that cannot be reached at all
//! (SIGTERM still stops each binary at once, and the processor-client lists
//! what there is to run meanwhile), and an operator's JetStream stream that
//! does not take the gateway's subjects (named in the error; the events go in
//! once it does).

use std::process::Command;
use std::time::Duration;

use gateway_tests::*;

#[tokio::test]
async fn a_stream_that_does_not_take_the_subjects_is_named_and_events_wait_for_it() {
    let mut g = Gateway::new(UserServerKind::Python);
    let nats = NatsServer::start(g.dir.path()).await;
    let js = nats.jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "TEST-GATEWAY".into(),
        subjects: vec!["other.>".into()],
        ..Default::default()
    })
    .await
    .expect("the operator's stream");
    for (k, v) in [
        ("EVENT_PROTOCOL", "NATS".to_owned()),
        ("NATS_URL", nats.url()),
        ("NATS_TYPE", "Streaming".to_owned()),
        ("WATCHER_RETRY_CAP", "200ms".to_owned()),
    ] {
        g.transformer_env.push((k.into(), v));
    }
    g.start_transformer().await;
    g.produce("alpha", 0..1).await;
    let said = "stream TEST-GATEWAY takes [\"other.>\"], not [\"test-gateway.>\"]";
    wait_for(
        "the transformer to name the stream and the subjects",
        || async {
            let log = g.transformer.as_ref().map(Proc::output).unwrap_or_default();
            (log.contains(said) && log.contains("JetStream publish: no stream found")).then_some(())
        },
    )
    .await;
    let mut stream = js.get_stream("TEST-GATEWAY").await.expect("stream");
    let mut config = stream.info().await.expect("info").config.clone();
    config.subjects.push("test-gateway.>".into());
    js.update_stream(config)
        .await
        .expect("the operator adds the subjects");
    wait_for("the event in the stream", || async {
        let mut stream = js.get_stream("TEST-GATEWAY").await.ok()?;
        let info = stream.info().await.ok()?;
        (info.state.messages == 1).then_some(())
    })
    .await;
}

/// Every binary that talks to NATS stops at once on SIGTERM while NATS cannot
/// be reached, rather than waiting for a reconnect (the ingress once waited for
/// ever, flushing to a server that was never there) or for the shutdown
/// deadline (the processor-client's sharing, opening its bucket).
#[tokio::test]
async fn sigterm_while_nats_is_unreachable_stops_each_binary_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let configs = dir.path().join("configmap");
    write_configmap(&configs, &[("a".to_owned(), "x".to_owned())].into());
    let mut cases = Vec::new();
    let mut ports = Vec::new();
    for name in ["ingress", "transformer", "processor-client"] {
        let port = free_port();
        ports.push(port);
        let mut cmd = Command::new(bin(name));
        cmd.env_clear()
            .env("NATS_URL", &nowhere)
            .env("GATEWAY_NAME", "unreachable")
            // Far beyond what the test waits: exiting within it proves
            // the process did not wait for its deadline.
            .env("SHUTDOWN_TIMEOUT", "120s")
            .env("RUST_LOG", "info");
        match name {
            "ingress" => cmd
                .env("INGRESS_PORT", port.to_string())
                .env("INGRESS_ADMIN_PORT", free_port().to_string())
                .env("INGRESS_LISTEN_ADDRESS", "127.0.0.1"),
            "transformer" => cmd
                .env("TRANSFORMER_PORT", port.to_string())
                .env("TRANSFORMER_LISTEN_ADDRESS", "127.0.0.1")
                .env("TRANSFORMER_DATA_DIR", dir.path().join("tr-data"))
                .env("EVENT_PROTOCOL", "NATS"),
            _ => cmd
                .env("GATEWAY_PROCESSOR_CLIENT_HTTP_PORT", port.to_string())
                .env("GATEWAY_PROCESSOR_CLIENT_LISTEN_ADDRESS", "127.0.0.1")
                .env("GATEWAY_PROCESSOR_CONFIG_MAP", &configs)
                .env(
                    "GATEWAY_PROCESSOR_SERVER_HTTP_PORT",
                    free_port().to_string(),
                )
                .env("GATEWAY_PROCESSOR_SHARING", "nats"),
        };
        let proc = Proc::spawn(name, cmd, dir.path());
        wait_port(port, name).await;
        cases.push((name, proc));
    }
    // Long enough for each to have tried NATS and be retrying.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Meanwhile the processor-client lists what there is to run, unclaimed.
    let pc_port = ports[2];
    let listed: serde_json::Value = http_client()
        .get(format!("http://127.0.0.1:{pc_port}/configs"))
        .send()
        .await
        .expect("GET /configs")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed[0]["src"], "a", "{listed}");
    assert_eq!(listed[0]["phase"], "Pending", "{listed}");
    for (_, proc) in &cases {
        proc.signal(libc::SIGTERM);
    }
    for (_, mut proc) in cases {
        proc.exits_cleanly(Duration::from_secs(30)).await;
    }
}
