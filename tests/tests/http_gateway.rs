//! The HTTP gateway end to end: real Python and Node user servers, the real
//! transformer and processor-client, and a sensor that parses every event with
//! the official CloudEvents SDK. Events, phases, bad input, backpressure and
//! outages; configurations and settings are in `configurations.rs`.

use std::collections::HashSet;
use std::time::Duration;

use gateway_tests::*;

async fn full_run(kind: UserServerKind) {
    let mut g = Gateway::new(kind);
    g.transformer_env
        .push(("EVENT_TYPE".into(), "test.event".into()));
    g.set_config("alpha", r#"{"count": 25, "interval_ms": 2}"#);
    g.set_config("beta", r#"{"count": 25, "interval_ms": 2}"#);
    g.start_all().await;

    let events = g.wait_sensor(50).await;
    g.wait_phase("alpha", "Running").await;
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), events.len(), "CloudEvent ids must be unique");
    for e in &events {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "test-gateway");
        assert_eq!(e["type"], "test.event");
        assert_eq!(e["datacontenttype"], "application/json");
        assert_eq!(e["mode"], "binary");
        assert!(e["time"].is_string());
        let data = payload(e);
        assert_eq!(
            e["subject"], data["src"],
            "subject is the configuration key"
        );
    }
    for src in ["alpha", "beta"] {
        let start = &g.journal_of("start", src)[0];
        let seqs: Vec<i64> = events
            .iter()
            .filter(|e| e["subject"] == src)
            .map(|e| payload(e)["seq"].as_i64().expect("seq"))
            .collect();
        assert_eq!(
            seqs,
            (0..25).collect::<Vec<_>>(),
            "{src}: every event, in order, intact"
        );
        let first = events.iter().find(|e| e["subject"] == src).expect("event");
        assert_eq!(
            payload(first)["id"],
            start["id"],
            "data carries the ConfigData id"
        );
        assert_eq!(start["config"], r#"{"count": 25, "interval_ms": 2}"#);
    }
    assert_acked_delivered(&g);
}

#[tokio::test]
async fn python_user_server_events_reach_sensor_as_cloudevents() {
    full_run(UserServerKind::Python).await;
}

#[tokio::test]
async fn node_user_server_events_reach_sensor_as_cloudevents() {
    full_run(UserServerKind::Node).await;
}

#[tokio::test]
async fn killed_user_server_gets_its_configurations_again() {
    let idle = r#"{"count": 0}"#;
    let mut g = Gateway::up(UserServerKind::Python, &[("alpha", idle), ("beta", idle)]).await;
    g.wait_journal("start", "alpha", 1).await;
    g.wait_journal("start", "beta", 1).await;
    g.wait_phase("alpha", "Running").await;

    g.user_server.as_mut().expect("user server").kill();
    g.start_user_server().await;
    let alpha = g.wait_journal("start", "alpha", 2).await;
    let beta = g.wait_journal("start", "beta", 2).await;
    assert_ne!(alpha[0]["timeID"], alpha[1]["timeID"]);
    assert_eq!(
        alpha[0]["id"], alpha[1]["id"],
        "same configuration, same id"
    );
    assert_eq!(beta[1]["config"], idle);
    g.wait_phase("alpha", "Running").await;
    g.wait_phase("beta", "Running").await;

    // And a user server that is down for a while, then returns.
    g.user_server.as_mut().expect("user server").kill();
    g.wait_phase("alpha", "Pending").await;
    g.start_user_server().await;
    g.wait_journal("start", "alpha", 3).await;
    g.wait_journal("start", "beta", 3).await;
    g.wait_phase("beta", "Running").await;
}

/// Until it listens, the configurations wait (each `/start` retried), and the
/// log says so once, not once per configuration and retry.
#[tokio::test]
async fn user_server_started_after_the_processor_client_gets_its_configurations() {
    let mut g = Gateway::new(UserServerKind::Node);
    g.set_config("late", r#"{"count": 3}"#);
    for i in 0..20 {
        g.set_config(&format!("idle-{i}"), r#"{"count": 0}"#);
    }
    g.processor_env
        .push(("GATEWAY_PROCESSOR_RETRY_BASE".into(), "50ms".into()));
    g.start_sensor().await;
    g.start_transformer().await;
    g.start_processor().await;
    g.wait_phase("late", "Pending").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = g.processor.as_ref().expect("processor-client").output();
    let warnings = out.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        out.contains("user server is not listening") && warnings <= 2,
        "{warnings} warnings:\n{out}"
    );
    g.start_user_server().await;
    g.wait_sensor(3).await;
    g.wait_phase("late", "Running").await;
}

#[tokio::test]
async fn sensor_outage_loses_nothing_and_keeps_order() {
    let mut g = Gateway::up(
        UserServerKind::Python,
        &[
            ("alpha", r#"{"count": 150, "interval_ms": 3}"#),
            ("beta", r#"{"count": 150, "interval_ms": 3}"#),
        ],
    )
    .await;
    g.wait_sensor(20).await;
    g.sensor.as_mut().expect("sensor").kill();
    let at_kill = g.journal_of("acked", "alpha").len();
    wait_for("events acknowledged while the sensor is down", || async {
        (g.journal_of("acked", "alpha").len() >= at_kill + 40).then_some(())
    })
    .await;
    g.start_sensor().await;
    g.wait_journal("acked", "alpha", 150).await;
    g.wait_journal("acked", "beta", 150).await;
    wait_for("every acknowledged event at the sensor", || async {
        let got: HashSet<(String, i64)> = g
            .sensor_events()
            .iter()
            .map(|e| {
                (
                    e["subject"].as_str().unwrap_or("").to_owned(),
                    payload(e)["seq"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        (got.len() >= 300).then_some(())
    })
    .await;
    assert_acked_delivered(&g);
    assert_ordered(&g.sensor_events());
}

#[tokio::test]
async fn sensor_answering_500_then_200_loses_nothing() {
    let g = Gateway::up(UserServerKind::Python, &[]).await;
    std::fs::write(&g.fail_file, "x").expect("fail file");
    g.set_config("alpha", r#"{"count": 60, "interval_ms": 2}"#);
    g.wait_journal("acked", "alpha", 60).await;
    assert!(
        g.sensor_events().is_empty(),
        "the sensor refused everything so far"
    );
    std::fs::remove_file(&g.fail_file).expect("remove fail file");
    let events = g.wait_sensor(60).await;
    assert_ordered(&events);
    assert_acked_delivered(&g);
}

#[tokio::test]
async fn running_and_error_notices_change_the_phase() {
    let g = Gateway::up(UserServerKind::Python, &[("only", r#"{"count": 0}"#)]).await;
    g.wait_phase("only", "Running").await;

    let r = g
        .post(
            &g.pc_url("/error"),
            "application/json",
            r#"{"src":"only","message":"disk full"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(g.wait_phase("only", "Error").await["message"], "disk full");

    let r = g
        .post(
            &g.pc_url("/activated"),
            "application/json",
            r#"{"src":"only"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    g.wait_phase("only", "Running").await;

    // Argo's form: plain text, naming the configuration by ?src= or not at all.
    let r = g
        .post(
            &g.pc_url("/error?src=only"),
            "text/plain",
            "lost connection",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        g.wait_phase("only", "Error").await["message"],
        "lost connection"
    );
    let r = g
        .post(&g.pc_url("/activated"), "application/octet-stream", "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    g.wait_phase("only", "Running").await;
    let r = g
        .post(&g.pc_url("/error"), "text/plain", "the only one")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        g.wait_phase("only", "Error").await["message"],
        "the only one"
    );
    // A message of 500,000 characters is kept to its first 2,048.
    let r = g
        .post(&g.pc_url("/error"), "text/plain", "x".repeat(500_000))
        .await;
    assert_eq!(r.status, 200, "{}", &r.text[..r.text.len().min(200)]);
    let kept = g.wait_phase("only", "Error").await["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(kept.starts_with(&"x".repeat(2048)), "{}", kept.len());
    assert!(
        kept.ends_with("… (497952 more characters)"),
        "{}",
        &kept[2000..]
    );

    let r = g
        .post(
            &g.pc_url("/activated"),
            "application/json",
            r#"{"src":"ghost"}"#,
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json["error"], "unknown_src");
    let r = g
        .post(
            &g.pc_url("/activated"),
            "application/json",
            r#"{"src":"only","id":"1"}"#,
        )
        .await;
    assert_eq!(
        r.status, 409,
        "a notice for an older id is refused: {}",
        r.text
    );
}

#[tokio::test]
async fn bad_input_gets_a_status_and_a_json_error() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.processor_env
        .push(("GATEWAY_PROCESSOR_MAX_BODY_BYTES".into(), "2048".into()));
    g.transformer_env
        .push(("TRANSFORMER_MAX_BODY_BYTES".into(), "2048".into()));
    g.set_config("alpha", r#"{"count": 0}"#);
    g.start_all().await;
    g.wait_phase("alpha", "Running").await;
    let big = format!(r#"{{"src":"alpha","payload":"{}"}}"#, "A".repeat(4096));
    let cases: Vec<(String, &str, String, u16, &str)> = vec![
        (
            g.pc_url("/event"),
            "application/json",
            "{not json".into(),
            400,
            "not a JSON object",
        ),
        (
            g.pc_url("/event"),
            "application/json",
            r#"["src"]"#.into(),
            400,
            "not a JSON object",
        ),
        (
            g.pc_url("/event"),
            "application/json",
            r#"{"payload":"aGk="}"#.into(),
            400,
            "\"src\"",
        ),
        (
            g.pc_url("/event"),
            "application/json",
            r#"{"src":"alpha","payload":"%%%"}"#.into(),
            400,
            "base64",
        ),
        (
            g.pc_url("/event"),
            "application/json",
            r#"{"src":"alpha","payload":5}"#.into(),
            400,
            "payload",
        ),
        (
            g.pc_url("/event"),
            "application/json",
            r#"{"src":"ghost","payload":"aGk="}"#.into(),
            404,
            "ghost",
        ),
        (
            g.pc_url("/event"),
            "application/json",
            big.clone(),
            413,
            "limit",
        ),
        (
            g.pc_url("/nowhere"),
            "application/json",
            "{}".into(),
            404,
            "/nowhere",
        ),
        (
            g.tr_url("/"),
            "application/json",
            "{not json".into(),
            400,
            "not a JSON object",
        ),
        (
            g.tr_url("/"),
            "application/json",
            r#"{"payload":"aGk="}"#.into(),
            400,
            "\"src\"",
        ),
        (
            g.tr_url("/"),
            "application/json",
            r#"{"src":"a","payload":"***"}"#.into(),
            400,
            "base64",
        ),
        (g.tr_url("/"), "application/json", big, 413, "limit"),
        (
            g.tr_url("/"),
            "application/cloudevents+json",
            r#"{"specversion":"1.0","source":"s","type":"t"}"#.into(),
            400,
            "id",
        ),
        (
            g.tr_url("/"),
            "application/cloudevents+json",
            r#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#.into(),
            400,
            "specversion",
        ),
        (
            g.tr_url("/"),
            "application/cloudevents+json",
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}"#
                .into(),
            400,
            "not both",
        ),
    ];
    for (url, ct, body, status, needle) in cases {
        let r = g.post(&url, ct, body.clone()).await;
        assert_eq!(r.status, status, "{url} {body:.60}: {}", r.text);
        let err = r.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no JSON error from {url}: {}", r.text));
        let detail = r.json["detail"].as_str().expect("detail");
        assert!(!err.is_empty());
        assert!(
            detail.contains(needle),
            "{url} {body:.60}: {detail:?} should mention {needle:?}"
        );
    }
    let r = g.http.get(g.tr_url("/")).send().await.expect("GET /");
    assert_eq!(r.status().as_u16(), 405);
    let binary_without_id = g
        .post_binary_event(&[("source", "s"), ("type", "t")], "text/plain", "x")
        .await;
    assert_eq!(binary_without_id, 400);
    for port in [g.pc_port, g.tr_port] {
        let r = g
            .http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(r.status().as_u16(), 200, "still up after bad input");
    }
    let r = g
        .http
        .get(g.pc_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status().as_u16(), 200);
    assert!(g.sensor_events().is_empty(), "nothing bad was dispatched");
}

#[tokio::test]
async fn octet_stream_events_from_argo_style_user_servers() {
    let g = Gateway::up(UserServerKind::Python, &[("raw", r#"{"count": 0}"#)]).await;
    g.wait_phase("raw", "Running").await;
    let r = g
        .post(
            &g.pc_url("/event?src=raw"),
            "application/octet-stream",
            vec![0u8, 1, 2, 255],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = g
        .post(
            &g.pc_url("/event"),
            "application/octet-stream",
            r#"{"src":"raw","payload":"eyJrIjoxfQ=="}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = g.wait_sensor(2).await;
    assert_eq!(events[0]["datacontenttype"], "application/octet-stream");
    assert_eq!(events[0]["data"]["base64"], "AAEC/w==");
    assert_eq!(events[1]["datacontenttype"], "application/json");
    assert_eq!(events[1]["data"]["k"], 1);
}

/// Python's `base64.encodebytes` and Java's MIME encoder break lines every 76
/// characters; the gateway takes that as those languages' decoders do.
#[tokio::test]
async fn mime_wrapped_base64_payloads_are_accepted() {
    let g = Gateway::up(UserServerKind::Python, &[("mime", r#"{"count": 0}"#)]).await;
    g.wait_phase("mime", "Running").await;
    let data = format!(r#"{{"text":"{}"}}"#, "x".repeat(100));
    let encoded = {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg("import base64,sys; sys.stdout.write(base64.encodebytes(sys.argv[1].encode()).decode())")
            .arg(&data)
            .output()
            .expect("python3");
        String::from_utf8(out.stdout).expect("ascii")
    };
    assert!(encoded.trim_end().contains('\n'), "wrapped: {encoded:?}");
    let body = serde_json::json!({"src": "mime", "payload": encoded}).to_string();
    let r = g.post(&g.pc_url("/event"), "application/json", body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = g.wait_sensor(1).await;
    assert_eq!(events[0]["data"]["text"], "x".repeat(100));
}

#[tokio::test]
async fn backpressure_answers_503_with_retry_after_and_loses_nothing() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.transformer_env
        .push(("TRANSFORMER_QUEUE_CAPACITY".into(), "5".into()));
    g.transformer_env
        .push(("WATCHER_CONCURRENCY".into(), "1".into()));
    g.set_config("flood", r#"{"count": 0}"#);
    g.start_transformer().await; // the sensor is not started: it is down
    g.start_user_server().await;
    g.start_processor().await;
    g.wait_phase("flood", "Running").await;
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..20 {
        let body = format!(
            r#"{{"src":"flood","payload":"{}"}}"#,
            base64_of(&format!(r#"{{"src":"flood","seq":{i},"timeID":"t"}}"#))
        );
        let r = g.post(&g.pc_url("/event"), "application/json", body).await;
        match r.status {
            200 => accepted += 1,
            503 => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    let refused = refused.expect("a full queue must answer 503");
    assert!(refused.retry_after.is_some(), "503 carries Retry-After");
    assert_eq!(refused.json["error"], "backpressure");
    let direct = g
        .post(
            &g.tr_url("/"),
            "application/json",
            r#"{"src":"flood","payload":""}"#,
        )
        .await;
    assert_eq!(direct.status, 503);
    assert!(direct.retry_after.is_some());
    g.start_sensor().await;
    let events = g.wait_sensor(accepted).await;
    assert_eq!(events.len(), accepted, "exactly the accepted events arrive");
    assert_ordered(&events);
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut g = Gateway::up(
        UserServerKind::Python,
        &[
            ("alpha", r#"{"interval_ms": 1}"#),
            ("beta", r#"{"interval_ms": 1}"#),
        ],
    )
    .await;
    g.wait_sensor(50).await;
    let pc = g.processor.as_mut().expect("processor-client");
    pc.signal(libc::SIGTERM);
    pc.exits_cleanly(Duration::from_secs(15)).await;
    g.wait_journal("stop", "alpha", 1).await;
    g.wait_journal("stop", "beta", 1).await;
    let tr = g.transformer.as_mut().expect("transformer");
    tr.signal(libc::SIGTERM);
    tr.exits_cleanly(Duration::from_secs(15)).await;
    assert_acked_delivered(&g);
    assert_ordered(&g.sensor_events());
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
