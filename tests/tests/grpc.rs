//! gRPC user servers end to end: a real grpcio server (Python, stubs generated
//! from `openapi/proto/` by grpcio-tools) serving the generic event source or
//! Argo v0.6's RunGateway, driven by the processor-client, through the
//! transformer to a sensor. Phases, statuses, restarts, many streams at once,
//! backpressure down to HTTP/2 flow control, TLS, tokens and SIGTERM.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use gateway_tests::*;
use serde_json::Value;

/// A gateway whose processor-client drives a gRPC user server of `contract`
/// (`grpc` or `grpc-v06`) on the user server's port.
fn grpc_gateway(contract: &str) -> Gateway {
    let mut g = Gateway::new(UserServerKind::Python);
    for (k, v) in [
        ("GATEWAY_PROCESSOR_SERVER_PROTOCOL", contract.to_owned()),
        ("GATEWAY_PROCESSOR_SERVER_GRPC_PORT", g.us_port.to_string()),
        ("GATEWAY_PROCESSOR_RETRY_BASE", "100ms".into()),
        ("GATEWAY_PROCESSOR_RETRY_CAP", "500ms".into()),
    ] {
        g.processor_env.push((k.into(), v));
    }
    g
}

fn grpc_server_command(g: &Gateway, contract: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(support("grpc_user_server.py"))
        .arg("--port")
        .arg(g.us_port.to_string())
        .arg("--contract")
        .arg(if contract == "grpc-v06" {
            "v06"
        } else {
            "generic"
        })
        .arg("--journal")
        .arg(&g.journal)
        .arg("--proto-dir")
        .arg(root().join("openapi").join("proto"));
    cmd
}

async fn start_grpc_server(g: &mut Gateway, contract: &str) {
    let cmd = grpc_server_command(g, contract);
    g.start_user_server_with(cmd).await;
}

/// Sensor, transformer, gRPC user server, processor-client.
async fn up(g: &mut Gateway, contract: &str) {
    g.start_sensor().await;
    g.start_transformer().await;
    start_grpc_server(g, contract).await;
    g.start_processor().await;
}

/// The sequence numbers the sensor holds for one call (`timeID`) of `src`.
fn seqs_of(events: &[Value], src: &str) -> Vec<(String, i64)> {
    events
        .iter()
        .filter(|e| e["subject"] == src)
        .map(|e| {
            let d = payload(e);
            (
                d["timeID"].as_str().unwrap_or("").to_owned(),
                d["seq"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

async fn every_event_arrives_in_order_with_the_key_as_subject(contract: &str) {
    let mut g = grpc_gateway(contract);
    g.set_config("alpha", r#"{"count": 25, "interval_ms": 1}"#);
    g.set_config("beta.dotted", r#"{"count": 25, "interval_ms": 1}"#);
    up(&mut g, contract).await;
    let events = g.wait_sensor(50).await;
    assert_ordered(&events);
    for src in ["alpha", "beta.dotted"] {
        let seqs: Vec<i64> = seqs_of(&events, src).into_iter().map(|(_, s)| s).collect();
        assert_eq!(seqs, (0..25).collect::<Vec<_>>(), "{src}");
        g.wait_phase(src, "Running").await;
        let starts = g.journal_of("start", src);
        assert_eq!(starts.len(), 1, "one call for {src}: {starts:?}");
        assert_eq!(starts[0]["auth"], Value::Null, "no token, no authorization");
    }
    assert!(events.iter().all(|e| e["specversion"] == "1.0"));
    let pc = g.pc_url("/metrics");
    assert_eq!(g.metric(&pc, "processor_grpc_streams_open").await, 2.0);
    assert!(g.metric(&pc, "processor_grpc_messages_read_total").await >= 50.0);
}

#[tokio::test]
async fn generic_contract_events_arrive_in_order_with_the_key_as_subject() {
    every_event_arrives_in_order_with_the_key_as_subject("grpc").await;
}

#[tokio::test]
async fn v06_run_gateway_events_arrive_in_order_with_the_key_as_subject() {
    every_event_arrives_in_order_with_the_key_as_subject("grpc-v06").await;
}

#[tokio::test]
async fn invalid_argument_is_an_error_not_retried_and_silence_is_retried_after_the_deadline() {
    let mut g = grpc_gateway("grpc");
    g.processor_env
        .push(("GATEWAY_PROCESSOR_SERVER_TIMEOUT".into(), "500ms".into()));
    g.set_config("bad", r#"{"reject": true}"#);
    g.set_config("mute", r#"{"silent": true}"#);
    g.set_config("good", r#"{"count": 3}"#);
    up(&mut g, "grpc").await;
    let bad = g.wait_phase("bad", "Error").await;
    assert!(
        bad["message"]
            .as_str()
            .unwrap_or("")
            .contains("reject requested"),
        "{bad}"
    );
    // A server that never sends response headers: cut off at the deadline and
    // called again, the configuration Pending with the reason.
    g.wait_journal("start", "mute", 3).await;
    let mute = g
        .configs()
        .await
        .into_iter()
        .find(|c| c["src"] == "mute")
        .expect("listed");
    assert_eq!(mute["phase"], "Pending", "{mute}");
    assert!(
        mute["message"]
            .as_str()
            .unwrap_or("")
            .contains("no response headers"),
        "{mute}"
    );
    // It says what to do: most servers hold the headers back until their
    // first event unless told.
    assert!(
        mute["message"]
            .as_str()
            .unwrap_or("")
            .contains("send_initial_metadata"),
        "{mute}"
    );
    g.wait_sensor(3).await;
    assert_eq!(g.journal_of("start", "bad").len(), 1, "not retried");
    // A changed value is tried again.
    g.set_config("bad", r#"{"count": 2}"#);
    g.wait_phase("bad", "Running").await;
    g.wait_sensor(5).await;
}

#[tokio::test]
async fn configurations_added_changed_and_removed_open_and_cancel_their_calls() {
    let mut g = grpc_gateway("grpc");
    g.set_config("alpha", r#"{"count": 2}"#);
    up(&mut g, "grpc").await;
    g.wait_phase("alpha", "Running").await;
    g.set_config("beta", r#"{"count": 2}"#);
    g.wait_phase("beta", "Running").await;
    g.set_config("alpha", r#"{"count": 3}"#);
    let ends = g.wait_journal("end", "alpha", 1).await;
    let starts = g.wait_journal("start", "alpha", 2).await;
    assert_eq!(
        ends[0]["call"], starts[0]["call"],
        "the old call was cancelled"
    );
    assert_eq!(starts[1]["config"], r#"{"count": 3}"#);
    g.remove_config("beta");
    g.wait_journal("end", "beta", 1).await;
    g.wait_phase("beta", "Stopped").await;
    // alpha: 2 events of the first call, 3 of the second.
    let events = g.wait_sensor(7).await;
    let calls: BTreeSet<String> = seqs_of(&events, "alpha")
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(calls.len(), 2);
    assert_ordered(&events);
}

#[tokio::test]
async fn a_killed_server_is_called_again_when_it_returns() {
    let mut g = grpc_gateway("grpc");
    g.set_config("alpha", r#"{"interval_ms": 20}"#);
    g.set_config("beta", r#"{"interval_ms": 20}"#);
    up(&mut g, "grpc").await;
    g.wait_phase("alpha", "Running").await;
    g.wait_sensor(10).await;
    g.user_server.as_mut().expect("server").kill();
    wait_for("alpha to leave Running", || async {
        let c = g.configs().await;
        c.iter()
            .find(|c| c["src"] == "alpha")
            .filter(|c| c["phase"] == "Pending")
            .map(|_| ())
    })
    .await;
    start_grpc_server(&mut g, "grpc").await;
    for src in ["alpha", "beta"] {
        g.wait_journal("start", src, 2).await;
        g.wait_phase(src, "Running").await;
    }
    let before = g.sensor_events().len();
    g.wait_sensor(before + 10).await;
    assert_ordered(&g.sensor_events());
    let pc = g.pc_url("/metrics");
    assert!(g.metric(&pc, "processor_grpc_reconnects_total").await >= 2.0);
}

/// The connection to the gRPC user server is reset (RST both ways) again and
/// again while both calls stream, by a relay between the processor-client and
/// the server: each time every call is made again, the configurations come
/// back to Running, and each call's events arrive in order.
#[tokio::test]
async fn connections_to_the_server_reset_again_and_again_are_called_again_each_time() {
    const CUTS: usize = 6;
    let mut g = grpc_gateway("grpc");
    let cutter = Cutter::start(g.us_port).await;
    g.processor_env.push((
        "GATEWAY_PROCESSOR_SERVER_GRPC_PORT".into(),
        cutter.port.to_string(),
    ));
    g.set_config("alpha", r#"{"interval_ms": 20}"#);
    g.set_config("beta", r#"{"interval_ms": 20}"#);
    up(&mut g, "grpc").await;
    for round in 0..CUTS {
        for src in ["alpha", "beta"] {
            g.wait_journal("start", src, round + 1).await;
            g.wait_phase(src, "Running").await;
        }
        let before = g.sensor_events().len();
        g.wait_sensor(before + 10).await;
        // Not mid-request: the client of a server stream sends little (a
        // window update now and then), so that would mostly wait.
        cutter.cut();
    }
    for src in ["alpha", "beta"] {
        g.wait_journal("start", src, CUTS + 1).await;
        g.wait_phase(src, "Running").await;
    }
    let before = g.sensor_events().len();
    g.wait_sensor(before + 10).await;
    assert_ordered(&g.sensor_events());
    let pc = g.pc_url("/metrics");
    assert!(g.metric(&pc, "processor_grpc_reconnects_total").await >= (2 * CUTS) as f64);
}

#[tokio::test]
async fn a_hundred_streams_at_once() {
    let mut g = grpc_gateway("grpc");
    for i in 0..100 {
        g.set_config(&format!("cfg-{i:03}"), r#"{"count": 5, "interval_ms": 5}"#);
    }
    up(&mut g, "grpc").await;
    let events = g.wait_sensor(500).await;
    assert_ordered(&events);
    for i in 0..100 {
        let src = format!("cfg-{i:03}");
        let seqs: Vec<i64> = seqs_of(&events, &src).into_iter().map(|(_, s)| s).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4], "{src}");
    }
    let pc = g.pc_url("/metrics");
    assert_eq!(g.metric(&pc, "processor_grpc_streams_open").await, 100.0);
}

#[tokio::test]
async fn a_sensor_down_holds_the_stream_and_every_number_arrives_in_order() {
    let mut g = grpc_gateway("grpc");
    // A small queue so that the transformer answers 503 soon, and events of
    // 4 KB so that HTTP/2's window holds only a few of them.
    g.transformer_env
        .push(("TRANSFORMER_QUEUE_CAPACITY".into(), "20".into()));
    g.transformer_env
        .push(("TRANSFORMER_ADMIT_WAIT".into(), "50ms".into()));
    g.start_sensor().await;
    std::fs::write(&g.fail_file, b"").expect("sensor down");
    g.start_transformer().await;
    start_grpc_server(&mut g, "grpc").await;
    g.set_config("alpha", r#"{"count": 400, "interval_ms": 0, "pad": 4000}"#);
    g.start_processor().await;
    let tr = g.tr_url("/metrics");
    wait_for("the transformer to refuse for a full queue", || async {
        (g.metric(&tr, "transformer_events_rejected_total").await >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = g.journal_of("sent", "alpha").len();
    assert!(
        sent < 200,
        "the server was held by flow control, not read ahead: {sent} of 400 handed to grpc"
    );
    std::fs::remove_file(&g.fail_file).expect("sensor up");
    let events = wait_for("all 400 at the sensor", || async {
        let seqs: BTreeSet<i64> = seqs_of(&g.sensor_events(), "alpha")
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        (seqs.len() >= 400).then(|| g.sensor_events())
    })
    .await;
    assert_ordered(&events);
    let seqs: BTreeSet<i64> = seqs_of(&events, "alpha")
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(seqs, (0..400).collect(), "every number, none lost");
    assert_eq!(
        g.journal_of("start", "alpha").len(),
        1,
        "one call throughout"
    );
}

#[tokio::test]
async fn tls_and_a_token_to_the_user_server_and_sigterm_cancels_every_call() {
    let mut g = grpc_gateway("grpc-v06");
    let (ca, cert, key) = private_ca(g.dir.path());
    g.processor_env.push((
        "GATEWAY_PROCESSOR_SERVER_TLS_CA".into(),
        ca.display().to_string(),
    ));
    g.processor_env
        .push(("SHUTDOWN_TIMEOUT".into(), "5s".into()));
    g.processor_env
        .push(("GATEWAY_PROCESSOR_CLIENT_TOKEN".into(), "s3cret".into()));
    g.set_config("alpha", r#"{"interval_ms": 10}"#);
    g.set_config("beta", r#"{"interval_ms": 10}"#);
    g.start_sensor().await;
    g.start_transformer().await;
    let mut cmd = grpc_server_command(&g, "grpc-v06");
    cmd.arg("--tls-cert").arg(&cert).arg("--tls-key").arg(&key);
    g.start_user_server_with(cmd).await;
    g.start_processor().await;
    g.wait_sensor(10).await;
    for src in ["alpha", "beta"] {
        let starts = g.wait_journal("start", src, 1).await;
        assert_eq!(starts[0]["auth"], "Bearer s3cret", "the token as metadata");
    }
    let pc = g.processor.as_mut().expect("processor");
    pc.signal(libc::SIGTERM);
    pc.exits_cleanly(Duration::from_secs(10)).await;
    for src in ["alpha", "beta"] {
        g.wait_journal("end", src, 1).await;
    }
}

/// The gRPC port pointed at an HTTP/1 server (the user server's HTTP port, a
/// server that is not gRPC): the configuration stays Pending with a message
/// that says where to look, not only "h2 protocol error".
#[tokio::test]
async fn a_grpc_port_with_an_http_server_behind_it_is_named() {
    let mut g = grpc_gateway("grpc");
    g.set_config("alpha", "{}");
    g.start_transformer().await;
    g.start_user_server().await; // the Python HTTP test server
    g.start_processor().await;
    wait_message(&g, "Pending", "GATEWAY_PROCESSOR_SERVER_GRPC_PORT").await;
}

/// A grpcio server of the other proto answers UNIMPLEMENTED ("Method not
/// found!"): the configuration is in Error with a message that names the
/// setting to change, both ways round.
#[tokio::test]
async fn a_server_of_the_other_proto_is_named_in_the_error() {
    for (called, served, hint) in [
        (
            "grpc-v06",
            "grpc",
            "GATEWAY_PROCESSOR_SERVER_PROTOCOL=grpc)",
        ),
        (
            "grpc",
            "grpc-v06",
            "GATEWAY_PROCESSOR_SERVER_PROTOCOL=grpc-v06)",
        ),
    ] {
        let mut g = grpc_gateway(called);
        g.set_config("alpha", "{}");
        g.start_transformer().await;
        start_grpc_server(&mut g, served).await;
        g.start_processor().await;
        wait_message(&g, "Error", hint).await;
    }
}

/// Waits for the one configuration to be in `phase` with `needle` in its
/// message (a message that says where to look).
async fn wait_message(g: &Gateway, phase: &str, needle: &str) {
    wait_for(
        "the configuration's message to name the setting",
        || async {
            let configs = g.configs().await;
            let message = configs.first()?["message"].as_str()?.to_owned();
            (configs[0]["phase"] == phase && message.contains(needle)).then_some(())
        },
    )
    .await;
}

/// The other way round: a gRPC user server on the HTTP port answers `/start`
/// in HTTP/2 frames; the configuration stays Pending, retried, with a message
/// that names the setting, not only "invalid HTTP version parsed".
#[tokio::test]
async fn a_grpc_server_called_over_http_is_named() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.set_config("alpha", "{}");
    g.start_transformer().await;
    start_grpc_server(&mut g, "grpc").await;
    g.start_processor().await;
    wait_message(&g, "Pending", "GATEWAY_PROCESSOR_SERVER_PROTOCOL=grpc").await;
}

/// An event the transformer refuses for good (over its body limit) is counted
/// as rejected, under the refusal's reason, and not as forwarded; the stream
/// goes on, and the next configuration's events are forwarded.
#[tokio::test]
async fn an_event_the_transformer_refuses_is_counted_as_rejected_not_forwarded() {
    let mut g = grpc_gateway("grpc");
    g.transformer_env
        .push(("TRANSFORMER_MAX_BODY_BYTES".into(), "2048".into()));
    g.set_config("big", r#"{"count": 3, "pad": 4000}"#);
    g.set_config("small", r#"{"count": 2}"#);
    up(&mut g, "grpc").await;
    g.wait_sensor(2).await;
    let metrics = g.pc_url("/metrics");
    let rejected = wait_for("three refusals counted", || async {
        let n = g
            .metric(
                &metrics,
                "processor_events_rejected_total{reason=\"too_large\"}",
            )
            .await;
        (n >= 3.0).then_some(n)
    })
    .await;
    assert_eq!(rejected, 3.0);
    assert_eq!(
        g.metric(&metrics, "processor_events_forwarded_total").await,
        2.0,
        "only the small configuration's events were forwarded"
    );
}
