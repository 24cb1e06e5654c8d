//! The SDK examples end to end: each runs as the user server of a real gateway
//! (or, for the framework-independent producer, straight into the transformer),
//! and its events reach the sensor as CloudEvents.

use std::collections::HashSet;
use std::process::Command;

use gateway_tests::*;

fn example(path: &str) -> std::path::PathBuf {
    root().join("sdk-examples").join(path)
}

fn ymd(days_from_today: i64) -> String {
    let d = time::OffsetDateTime::now_utc().date() + time::Duration::days(days_from_today);
    format!("{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day())
}

fn events_of<'a>(events: &'a [serde_json::Value], src: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["subject"] == src).collect()
}

#[tokio::test]
async fn calendar_fires_on_intervals_and_schedules_and_honours_exclusions() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.set_config("every-second", "interval: 1s\nuserPayload: {k: 1}");
    g.set_config("tokyo", "schedule: '* * * * * *'\ntimezone: Asia/Tokyo");
    g.set_config(
        "excluded",
        &format!(
            "schedule: '* * * * * *'\nrecurrence: ['EXDATE:{},{}']",
            ymd(0),
            ymd(1)
        ),
    );
    g.set_config("broken", "schedule: nonsense");
    g.start_sensor().await;
    g.start_transformer().await;
    g.start_user_server_with(Command::new(bin("calendar")))
        .await;
    g.start_processor().await;
    wait_for("three events of every-second and of tokyo", || async {
        let e = g.sensor_events();
        (events_of(&e, "every-second").len() >= 3 && events_of(&e, "tokyo").len() >= 3)
            .then_some(())
    })
    .await;
    let events = g.sensor_events();
    for e in events_of(&events, "every-second") {
        assert_eq!(e["data"]["userPayload"]["k"], 1);
        assert!(e["data"]["eventTime"]
            .as_str()
            .expect("eventTime")
            .ends_with("+00:00"));
    }
    for e in events_of(&events, "tokyo") {
        assert!(
            e["data"]["eventTime"]
                .as_str()
                .expect("eventTime")
                .ends_with("+09:00"),
            "{e}"
        );
    }
    assert!(
        events_of(&events, "excluded").is_empty(),
        "today and tomorrow are excluded"
    );
    let broken = g.wait_phase("broken", "Error").await;
    assert!(
        broken["message"].as_str().unwrap_or("").contains("cron"),
        "{broken}"
    );

    // A changed schedule is a stop and a start: no instant fires twice.
    g.set_config(
        "every-second",
        "schedule: '* * * * * *'\nuserPayload: {k: 2}",
    );
    wait_for("events of the changed schedule", || async {
        let e = g.sensor_events();
        (events_of(&e, "every-second")
            .iter()
            .filter(|e| e["data"]["userPayload"]["k"] == 2)
            .count()
            >= 3)
            .then_some(())
    })
    .await;
    let events = g.sensor_events();
    let times: Vec<&str> = events_of(&events, "every-second")
        .iter()
        .map(|e| e["data"]["eventTime"].as_str().unwrap_or(""))
        .collect();
    let unique: HashSet<&str> = times.iter().copied().collect();
    assert_eq!(
        unique.len(),
        times.len(),
        "an instant fired twice: {times:?}"
    );
    assert!(events_of(&events, "excluded").is_empty());
}

/// The status a request is answered with.
async fn status_of(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.expect("send").status().as_u16()
}

#[tokio::test]
async fn webhook_turns_matching_requests_into_events() {
    let mut g = Gateway::new(UserServerKind::Python);
    let hook = free_port();
    g.set_config(
        "orders",
        &format!(r#"{{"port": {hook}, "endpoint": "/orders", "method": "POST"}}"#),
    );
    g.set_config(
        "refunds",
        &format!("port: \"{hook}\"\nendpoint: \"/refunds\"\nmethod: \"PUT\""),
    );
    g.start_sensor().await;
    g.start_transformer().await;
    let mut cmd = Command::new("python3");
    cmd.arg(example("webhook/webhook.py"));
    g.start_user_server_with(cmd).await;
    g.start_processor().await;
    g.wait_phase("orders", "Running").await;
    g.wait_phase("refunds", "Running").await;
    wait_port(hook, "the webhook port").await;
    let url = |p: &str| format!("http://127.0.0.1:{hook}{p}");
    let order = g
        .http
        .post(url("/orders?x=1"))
        .header("x-order", "42")
        .body(r#"{"order":42}"#);
    assert_eq!(status_of(order).await, 200);
    // A sender retrying with the same Idempotency-Key: answered 200 each
    // time, delivered once.
    for _ in 0..2 {
        let refund = g
            .http
            .put(url("/refunds"))
            .header("idempotency-key", "refund-7")
            .body("plain");
        assert_eq!(status_of(refund).await, 200);
    }
    assert_eq!(status_of(g.http.get(url("/orders"))).await, 405);
    assert_eq!(status_of(g.http.post(url("/nowhere"))).await, 404);
    let events = g.wait_sensor(2).await;
    let order = events
        .iter()
        .find(|e| e["subject"] == "orders")
        .expect("order event");
    assert_eq!(order["data"]["method"], "POST");
    assert_eq!(order["data"]["path"], "/orders?x=1");
    assert_eq!(order["data"]["body"], r#"{"order":42}"#);
    assert_eq!(order["data"]["headers"]["x-order"], "42");
    let refund = events
        .iter()
        .find(|e| e["subject"] == "refunds")
        .expect("refund event");
    assert_eq!(refund["data"]["body"], "plain");
    assert_eq!(refund["originid"], "refund-7");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        g.sensor_events().len(),
        2,
        "the retried webhook is delivered once"
    );

    g.remove_config("orders");
    g.wait_phase("orders", "Stopped").await;
    assert_eq!(status_of(g.http.post(url("/orders"))).await, 404);
    g.remove_config("refunds");
    wait_for("the port to close with its last webhook", || async {
        std::net::TcpStream::connect(("127.0.0.1", hook))
            .is_err()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn framework_independent_producer_posts_straight_to_the_transformer() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.start_sensor().await;
    g.start_transformer().await;
    let out = run_ok(
        Command::new("bash")
            .arg(example("framework-independent/post-event.sh"))
            .args(["cli-source", r#"{"hello":"world"}"#])
            .env("TRANSFORMER_PORT", g.tr_port.to_string()),
        "post-event.sh",
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let events = g.wait_sensor(1).await;
    assert_eq!(
        events[0]["id"],
        id.as_str(),
        "the script prints the CloudEvent id"
    );
    assert_eq!(events[0]["subject"], "cli-source");
    assert_eq!(events[0]["data"]["hello"], "world");
    let refused = Command::new("bash")
        .arg(example("framework-independent/post-event.sh"))
        .args(["", "x"])
        .env("TRANSFORMER_PORT", g.tr_port.to_string())
        .output()
        .expect("run post-event.sh");
    assert!(!refused.status.success(), "an empty src is refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("usage"));
}

/// mosquitto on `port`, listening.
async fn start_mosquitto(port: u16, dir: &std::path::Path) -> Proc {
    let mosquitto_bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("mosquitto");
    let mut cmd = Command::new(mosquitto_bin);
    cmd.arg("-p").arg(port.to_string());
    let mosquitto = Proc::spawn("mosquitto", cmd, dir);
    wait_port(port, "mosquitto to listen").await;
    mosquitto
}

/// The stream example's configurations: MQTT `sensors/#`, NATS
/// `readings.>`, and one with a broker it does not know.
fn set_stream_configs(g: &Gateway, mqtt_port: u16, nats_url: &str) {
    g.set_config(
        "mqtt-in",
        &format!(
            r#"{{"broker": "mqtt", "url": "mqtt://127.0.0.1:{mqtt_port}", "topic": "sensors/#"}}"#
        ),
    );
    g.set_config(
        "nats-in",
        &format!(r#"{{"broker": "nats", "url": "{nats_url}", "subject": "readings.>"}}"#),
    );
    g.set_config("bad", r#"{"broker": "kafka"}"#);
}

/// One message on `topic`, QoS 1, through mosquitto_pub.
fn publish_mqtt(port: u16, topic: &str, msg: &str) {
    let ok = Command::new("mosquitto_pub")
        .args(["-p", &port.to_string(), "-q", "1", "-t", topic, "-m", msg])
        .status()
        .expect("mosquitto_pub");
    assert!(ok.success());
}

#[tokio::test]
async fn stream_server_turns_mqtt_and_nats_messages_into_events() {
    let mut g = Gateway::new(UserServerKind::Node);
    let mqtt_port = free_port();
    let _mosquitto = start_mosquitto(mqtt_port, g.dir.path()).await;
    let nats = NatsServer::start(g.dir.path()).await;
    set_stream_configs(&g, mqtt_port, &nats.url());
    g.start_sensor().await;
    g.start_transformer().await;
    let mut node = Command::new("node");
    node.arg(example("stream-node/stream.js"));
    g.start_user_server_with(node).await;
    g.start_processor().await;
    g.wait_phase("mqtt-in", "Running").await;
    g.wait_phase("nats-in", "Running").await;
    assert!(g.wait_phase("bad", "Error").await["message"]
        .as_str()
        .unwrap_or("")
        .contains("broker"));

    let publish_mqtt = |topic: &str, msg: &str| publish_mqtt(mqtt_port, topic, msg);
    let client = async_nats::connect(nats.url()).await.expect("nats");
    for i in 0..5 {
        publish_mqtt("sensors/kitchen", &format!("m{i}"));
        client
            .publish(format!("readings.r{i}"), format!("n{i}").into())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    let events = g.wait_sensor(10).await;
    let payloads = |src: &str| -> Vec<String> {
        events_of(&events, src)
            .iter()
            .map(|e| e["data"]["payload"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(payloads("mqtt-in"), ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(payloads("nats-in"), ["n0", "n1", "n2", "n3", "n4"]);
    assert_eq!(
        events_of(&events, "mqtt-in")[0]["data"]["topic"],
        "sensors/kitchen"
    );
    assert_eq!(
        events_of(&events, "nats-in")[2]["data"]["topic"],
        "readings.r2"
    );

    g.remove_config("mqtt-in");
    g.wait_phase("mqtt-in", "Stopped").await;
    publish_mqtt("sensors/kitchen", "after-stop");
    client
        .publish("readings.last", "n-last".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    wait_for("the NATS message after the MQTT stop", || async {
        g.sensor_events()
            .iter()
            .any(|e| e["data"]["payload"] == "n-last")
            .then_some(())
    })
    .await;
    assert!(
        !g.sensor_events()
            .iter()
            .any(|e| e["data"]["payload"] == "after-stop"),
        "stop unsubscribes"
    );
}

/// A ticker gRPC user server (the generic contract) through the gateway: ticks
/// arrive in order with the key as subject, and a configuration it refuses is
/// in Error.
async fn grpc_ticker_through_the_gateway(mut server: Command) {
    let mut g = Gateway::new(UserServerKind::Python);
    for (k, v) in [
        ("GATEWAY_PROCESSOR_SERVER_PROTOCOL", "grpc".to_owned()),
        ("GATEWAY_PROCESSOR_SERVER_GRPC_PORT", g.us_port.to_string()),
    ] {
        g.processor_env.push((k.into(), v));
    }
    g.set_config("hello", r#"{"intervalMs": 50, "message": "hi"}"#);
    g.set_config("broken", "not json");
    g.start_sensor().await;
    g.start_transformer().await;
    server.env("GATEWAY_PROCESSOR_SERVER_GRPC_PORT", g.us_port.to_string());
    g.start_user_server_with(server).await;
    g.start_processor().await;
    g.wait_phase("hello", "Running").await;
    let broken = g.wait_phase("broken", "Error").await;
    assert!(
        broken["message"]
            .as_str()
            .unwrap_or("")
            .contains("invalid configuration"),
        "{broken}"
    );
    let events = wait_for("five ticks of hello", || async {
        let e = g.sensor_events();
        (events_of(&e, "hello").len() >= 5).then_some(e)
    })
    .await;
    let ticks: Vec<i64> = events_of(&events, "hello")
        .iter()
        .map(|e| {
            assert_eq!(e["data"]["message"], "hi");
            e["data"]["tick"].as_i64().expect("tick")
        })
        .collect();
    assert_eq!(ticks[..5], [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn python_grpc_ticker_through_the_gateway() {
    let mut cmd = Command::new("python3");
    cmd.arg(example("python-grpc/user_server.py"));
    grpc_ticker_through_the_gateway(cmd).await;
}

#[tokio::test]
async fn node_grpc_ticker_through_the_gateway() {
    let mut cmd = Command::new("node");
    cmd.arg(example("node-grpc/server.js"));
    grpc_ticker_through_the_gateway(cmd).await;
}

#[tokio::test]
async fn calendar_serves_the_v06_run_gateway_contract() {
    let mut g = Gateway::new(UserServerKind::Python);
    for (k, v) in [
        ("GATEWAY_PROCESSOR_SERVER_PROTOCOL", "grpc-v06".to_owned()),
        ("GATEWAY_PROCESSOR_SERVER_GRPC_PORT", g.us_port.to_string()),
    ] {
        g.processor_env.push((k.into(), v));
    }
    g.set_config("every-second", "interval: 1s\nuserPayload: {k: 1}");
    g.set_config("broken", "schedule: nonsense");
    g.start_sensor().await;
    g.start_transformer().await;
    let mut calendar = Command::new(bin("calendar"));
    calendar
        .env("GATEWAY_PROCESSOR_SERVER_PROTOCOL", "grpc-v06")
        .env("GATEWAY_PROCESSOR_SERVER_GRPC_PORT", g.us_port.to_string());
    g.start_user_server_with(calendar).await;
    g.start_processor().await;
    g.wait_phase("every-second", "Running").await;
    g.wait_phase("broken", "Error").await;
    let events = wait_for("three events of every-second", || async {
        let e = g.sensor_events();
        (events_of(&e, "every-second").len() >= 3).then_some(e)
    })
    .await;
    for e in events_of(&events, "every-second") {
        assert_eq!(e["data"]["userPayload"]["k"], 1);
    }
    // Removing the configuration cancels its call, and the calendar stops it.
    g.remove_config("every-second");
    g.wait_phase("every-second", "Stopped").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let settled = events_of(&g.sensor_events(), "every-second").len();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        events_of(&g.sensor_events(), "every-second").len(),
        settled,
        "no more events after the call was cancelled"
    );
}

#[tokio::test]
async fn responders_in_python_and_rust_answer_through_the_ingress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let port = free_port();
    let ingress = ingress_command(port, free_port(), &nats.url());
    let _ingress = Proc::spawn("ingress", ingress, dir.path());
    wait_port(port, "the ingress").await;
    let http = http_client();
    let mut python = Command::new("python3");
    python
        .arg(example("responder-python/responder.py"))
        .env("NATS_URL", nats.url());
    let mut rust = Command::new(bin("responder-rust"));
    rust.env("NATS_URL", nats.url());
    for (name, cmd) in [("python", python), ("rust", rust)] {
        let responder = Proc::spawn(&format!("responder-{name}"), cmd, dir.path());
        let answer: serde_json::Value =
            wait_for(&format!("the {name} responder to answer"), || async {
                let r = http
                    .get(format!("http://127.0.0.1:{port}/greet/me"))
                    .header("host", "hello.example.com")
                    .send()
                    .await
                    .ok()?;
                if r.status() != 200 {
                    return None;
                }
                r.json().await.ok()
            })
            .await;
        assert_eq!(answer["from"], name);
        assert_eq!(answer["method"], "GET");
        assert_eq!(answer["path"], serde_json::json!(["greet", "me"]));
        drop(responder);
    }
}
