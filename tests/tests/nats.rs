//! NATS dispatch against a real `nats-server` (Debian's, with JetStream) that the
//! tests start, kill, restart and cut off (a relay that resets the connection);
//! events are read back with the example JetStream sensor, which parses them
//! with the official CloudEvents SDK.

use std::collections::HashSet;

use gateway_tests::*;
use serde_json::Value;

async fn wait_lines(path: &std::path::Path, n: usize, what: &str) -> Vec<Value> {
    wait_for(what, || async {
        let v = read_jsonl(path);
        (v.len() >= n).then_some(v)
    })
    .await
}

fn streaming(g: &mut Gateway, nats: &NatsServer, protocol: &str) {
    for (k, v) in [
        ("EVENT_PROTOCOL", protocol),
        ("NATS_URL", &nats.url()),
        ("NATS_TYPE", "Streaming"),
    ] {
        g.transformer_env.push((k.into(), v.into()));
    }
}

/// Starts the transformer into `nats` with `env` added, posts one event, and
/// waits until `js` (a client the server accepts) sees it in the stream.
async fn one_event_reaches_the_stream(
    g: &mut Gateway,
    nats: &NatsServer,
    env: &[(&str, String)],
    js: async_nats::jetstream::Context,
) {
    streaming(
        g,
        nats,
        if env.iter().any(|(k, _)| *k == "SENSOR_WATCHERS") {
            "NATS,HTTP"
        } else {
            "NATS"
        },
    );
    for (k, v) in env {
        g.transformer_env.push((k.to_string(), v.clone()));
    }
    g.start_transformer().await;
    let r = g
        .post(
            &g.tr_url("/"),
            "application/json",
            r#"{"src":"a","payload":"eyJrIjoxfQ=="}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_for("the event in the stream", || async {
        (messages_in(&js).await == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn token_authentication_comes_from_the_environment() {
    let mut g = Gateway::new(UserServerKind::Python);
    let nats = NatsServer::start_with(g.dir.path(), &["--auth", "s3cret"]).await;
    let js = nats.jetstream().await;
    one_event_reaches_the_stream(&mut g, &nats, &[("NATS_TOKEN", "s3cret".into())], js).await;
}

#[tokio::test]
async fn user_and_password_come_from_the_environment() {
    let mut g = Gateway::new(UserServerKind::Python);
    let nats = NatsServer::start_with(g.dir.path(), &["--user", "gateway", "--pass", "pa55"]).await;
    let js = nats.jetstream().await;
    let env = [
        ("NATS_USER", "gateway".into()),
        ("NATS_PASSWORD", "pa55".into()),
    ];
    one_event_reaches_the_stream(&mut g, &nats, &env, js).await;
}

/// Credentials in the URLs themselves (`nats://user:password@host`,
/// `http://user:password@sensor`, a webhook's `?token=`) work, and never
/// show: not in a metrics label, a log line or a dead letter.
#[tokio::test]
async fn credentials_in_urls_work_and_are_never_shown() {
    let mut g = Gateway::new(UserServerKind::Python);
    let nats = NatsServer::start_with(g.dir.path(), &["--user", "gateway", "--pass", "pa55"]).await;
    let js = nats.jetstream().await;
    g.start_sensor().await;
    let with_password = nats.url().replace("nats://", "nats://gateway:pa55@");
    let sensor = g.sensor_url().replace("http://", "http://alice:s3nsor-pw@")
        + "?access_token=s3nsor-token&id=7";
    let env = [("NATS_URL", with_password), ("SENSOR_WATCHERS", sensor)];
    one_event_reaches_the_stream(&mut g, &nats, &env, js).await;
    g.wait_sensor(1).await;
    let metrics = http_client()
        .get(g.tr_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    assert!(metrics.contains("gateway:***@"), "{metrics}");
    assert!(metrics.contains("alice:***@"), "{metrics}");
    assert!(metrics.contains("?access_token=***&id=7"), "{metrics}");
    let log = g.transformer.as_ref().map(Proc::output).unwrap_or_default();
    for shown in [&metrics, &log] {
        assert!(
            !shown.contains("pa55")
                && !shown.contains("s3nsor-pw")
                && !shown.contains("s3nsor-token"),
            "{shown}"
        );
    }
}

/// Decentralized auth: a `.creds` file (a user's JWT and NKey seed) named by
/// NATS_CREDS, against a nats-server in operator mode that trusts only the
/// operator that signed the account that signed the user.
#[tokio::test]
async fn a_creds_file_authenticates_with_a_user_jwt_and_nkey() {
    let mut g = Gateway::new(UserServerKind::Python);
    let auth = g.dir.path().join("nats-auth");
    run_ok(
        std::process::Command::new("python3")
            .arg(support("nats_jwt.py"))
            .arg(&auth),
        "nats_jwt.py",
    );
    let (conf, creds) = (auth.join("operator.conf"), auth.join("user.creds"));
    let nats = NatsServer::start_with(g.dir.path(), &["-c", &path(&conf)]).await;
    // Nothing gets in without the creds.
    assert!(async_nats::connect(nats.url()).await.is_err());
    let client = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await
        .expect("read the creds")
        .connect(nats.url())
        .await
        .expect("connect with the creds");
    let env = [("NATS_CREDS", path(&creds))];
    one_event_reaches_the_stream(&mut g, &nats, &env, async_nats::jetstream::new(client)).await;
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// NATS over TLS with a server certificate from a private CA, trusted through
/// NATS_TLS_CA.
#[tokio::test]
async fn tls_to_nats_with_a_private_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut g = Gateway::new(UserServerKind::Python);
    let (ca, cert, key) = private_ca(g.dir.path());
    let args = ["--tls", "--tlscert", &path(&cert), "--tlskey", &path(&key)].map(String::from);
    let nats = NatsServer::start_with(g.dir.path(), &args.each_ref().map(String::as_str)).await;
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.clone())
        .require_tls(true)
        .connect(nats.url())
        .await
        .expect("a TLS connection trusting the private CA");
    let env = [("NATS_TLS_CA", path(&ca))];
    one_event_reaches_the_stream(&mut g, &nats, &env, async_nats::jetstream::new(client)).await;
}

/// Mutual TLS: the server verifies a client certificate, which the transformer
/// presents from NATS_TLS_CERT and NATS_TLS_KEY.
#[tokio::test]
async fn mutual_tls_to_nats_with_a_client_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut g = Gateway::new(UserServerKind::Python);
    let (ca, cert, key) = private_ca(g.dir.path());
    let (client_cert, client_key) = client_cert(g.dir.path());
    let args = [
        "--tlsverify",
        "--tlscert",
        &path(&cert),
        "--tlskey",
        &path(&key),
        "--tlscacert",
        &path(&ca),
    ]
    .map(String::from);
    let nats = NatsServer::start_with(g.dir.path(), &args.each_ref().map(String::as_str)).await;
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.clone())
        .add_client_certificate(client_cert.clone(), client_key.clone())
        .require_tls(true)
        .connect(nats.url())
        .await
        .expect("a mutual-TLS connection");
    let env = [
        ("NATS_TLS_CA", path(&ca)),
        ("NATS_TLS_CERT", path(&client_cert)),
        ("NATS_TLS_KEY", path(&client_key)),
    ];
    one_event_reaches_the_stream(&mut g, &nats, &env, async_nats::jetstream::new(client)).await;
}

async fn stream_messages(nats: &NatsServer) -> u64 {
    messages_in(&nats.jetstream().await).await
}

async fn messages_in(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream("TEST-GATEWAY").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Waits until the `n` events of `alpha` were acknowledged and are in the
/// stream, then reads the stream back: each stored once, in order.
async fn stream_holds_each_once_in_order(g: &Gateway, nats: &NatsServer, n: u64) {
    g.wait_journal("acked", "alpha", n as usize).await;
    wait_for(&format!("all {n} in the stream"), || async {
        (stream_messages(nats).await >= n).then_some(())
    })
    .await;
    assert_eq!(stream_messages(nats).await, n, "no event stored twice");
    let out = g.dir.path().join("all.jsonl");
    let _reader = nats_sensor(
        g,
        nats,
        &out,
        &["--stream", "TEST-GATEWAY", "--durable", "all"],
    );
    let stored = wait_lines(&out, n as usize, "reading the stream back").await;
    let seqs: HashSet<i64> = stored
        .iter()
        .map(|e| e["data"]["seq"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        seqs.len(),
        n as usize,
        "every acknowledged event is in the stream"
    );
    let ids: HashSet<&str> = stored
        .iter()
        .map(|e| e["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids.len(), stored.len(), "no event stored twice");
    assert_ordered(&stored);
}

#[tokio::test]
async fn core_nats_subscriber_gets_every_event_and_the_transformer_reconnects() {
    let mut g = Gateway::new(UserServerKind::Python);
    let mut nats = NatsServer::start(g.dir.path()).await;
    let (out, _sub) = into_core_nats(&mut g, &nats).await;
    g.set_config("alpha", r#"{"count": 20, "interval_ms": 2}"#);
    g.set_config("web.hook", r#"{"count": 20, "interval_ms": 2}"#);
    g.start_transformer().await;
    g.start_user_server().await;
    g.start_processor().await;
    let events = wait_lines(&out, 40, "40 events on core NATS").await;
    for e in &events {
        assert_eq!(e["source"], "test-gateway");
        assert_eq!(e["datacontenttype"], "application/json");
        let src = e["subject"].as_str().expect("subject");
        assert_eq!(
            e["nats_subject"].as_str().expect("nats subject"),
            format!("test-gateway.{src}")
        );
        assert_eq!(e["data"]["src"], src);
    }
    assert_ordered(&events);

    nats.kill();
    nats.restart().await;
    wait_for("the transformer to reconnect", || async {
        let connects = g
            .metric(&g.tr_url("/metrics"), "transformer_nats_connects_total")
            .await;
        (connects >= 2.0).then_some(())
    })
    .await;
    wait_for("the subscriber to reconnect", || async {
        let r = g
            .post(
                &g.tr_url("/"),
                "application/json",
                r#"{"src":"after","payload":"eyJzZXEiOjB9"}"#,
            )
            .await;
        assert_eq!(r.status, 200);
        read_jsonl(&out)
            .iter()
            .any(|e| e["subject"] == "after")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn jetstream_stores_each_event_once_and_a_durable_consumer_replays_from_a_sequence() {
    let mut g = Gateway::new(UserServerKind::Python);
    let nats = NatsServer::start(g.dir.path()).await;
    streaming(&mut g, &nats, "NATS");
    // The transformer's own memory of ids off, so that the repeat below
    // reaches JetStream, whose Nats-Msg-Id window is what this test checks.
    g.transformer_env
        .push(("TRANSFORMER_DEDUP_WINDOW".into(), "0".into()));
    g.start_transformer().await;
    let mut ids = Vec::new();
    for i in 0..9 {
        let payload = base64_json(&format!(r#"{{"n":{i}}}"#));
        // One configuration key: order is promised per configuration.
        let r = g
            .post(
                &g.tr_url("/"),
                "application/json",
                format!(r#"{{"src":"same","payload":"{payload}"}}"#),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        ids.push(r.json["id"].as_str().expect("id").to_owned());
    }
    // The same CloudEvent twice (a producer retrying): stored once.
    for _ in 0..2 {
        let attributes = [
            ("id", "the-same-id"),
            ("source", "elsewhere"),
            ("type", "t"),
            ("subject", "same"),
        ];
        let status = g
            .post_binary_event(&attributes, "text/plain", "twice")
            .await;
        assert_eq!(status, 200);
    }
    ids.push("the-same-id".into());
    wait_for("10 messages in the stream", || async {
        (stream_messages(&nats).await == 10).then_some(())
    })
    .await;
    let js = nats.jetstream().await;
    let stream = js.get_stream("TEST-GATEWAY").await.expect("stream");
    for (seq, id) in (1..=10u64).zip(&ids) {
        let msg = stream.get_raw_message(seq).await.expect("message");
        let msg_id = msg
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned());
        assert_eq!(
            msg_id.as_deref(),
            Some(id.as_str()),
            "Nats-Msg-Id of message {seq}"
        );
    }
    let duplicates = g
        .metric(&g.tr_url("/metrics"), "transformer_nats_duplicates_total")
        .await;
    assert_eq!(
        duplicates, 1.0,
        "the second publish was reported a duplicate"
    );

    let out = g.dir.path().join("replay.jsonl");
    let _replay = nats_sensor(
        &g,
        &nats,
        &out,
        &[
            "--stream",
            "TEST-GATEWAY",
            "--durable",
            "replay",
            "--start-seq",
            "5",
            "--count",
            "6",
        ],
    );
    let replayed = wait_lines(&out, 6, "the replay from sequence 5").await;
    let seqs: Vec<i64> = replayed
        .iter()
        .map(|e| e["stream_seq"].as_i64().expect("stream_seq"))
        .collect();
    assert_eq!(seqs, vec![5, 6, 7, 8, 9, 10]);
    assert_eq!(replayed[0]["id"], ids[4].as_str());
    assert_eq!(replayed[0]["data"]["n"], 4);
    assert_eq!(
        replayed[5]["data"], "twice",
        "text data survives the round trip as that text (the JSON format's data string)"
    );
}

#[tokio::test]
async fn nats_killed_mid_stream_keeps_every_acknowledged_event_in_jetstream() {
    let mut g = Gateway::new(UserServerKind::Python);
    let mut nats = NatsServer::start(g.dir.path()).await;
    streaming(&mut g, &nats, "NATS");
    g.transformer_env
        .push(("WATCHER_TIMEOUT".into(), "1s".into()));
    g.set_config("alpha", r#"{"count": 300, "interval_ms": 2}"#);
    g.start_transformer().await;
    g.start_user_server().await;
    g.start_processor().await;
    wait_for("events flowing into JetStream", || async {
        (stream_messages(&nats).await >= 40).then_some(())
    })
    .await;
    nats.kill();
    let at_kill = g.journal_of("acked", "alpha").len();
    wait_for("events acknowledged while NATS is down", || async {
        (g.journal_of("acked", "alpha").len() >= at_kill + 30).then_some(())
    })
    .await;
    nats.restart().await;
    stream_holds_each_once_in_order(&g, &nats, 300).await;
}

/// The transformer's connection to NATS is reset (RST both ways) again and
/// again while events stream into JetStream, by a relay between the two, each
/// time in the middle of a publish (dropped with the connection, or stored and
/// its acknowledgement lost): still every acknowledged event is stored once,
/// in order. A publish whose connection drops is retried at once, not after
/// WATCHER_TIMEOUT (5 s), so the cuts cost little time.
#[tokio::test]
async fn connections_to_nats_reset_again_and_again_store_each_event_once_in_order() {
    const EVENTS: u64 = 600;
    const EVERY: u64 = 30;
    let mut g = Gateway::new(UserServerKind::Python);
    let nats = NatsServer::start(g.dir.path()).await;
    let cutter = Cutter::start(nats.port).await;
    let through_cutter = format!("nats://127.0.0.1:{}", cutter.port);
    for (k, v) in [
        ("EVENT_PROTOCOL", "NATS"),
        ("NATS_URL", &through_cutter),
        ("NATS_TYPE", "Streaming"),
    ] {
        g.transformer_env.push((k.into(), v.into()));
    }
    g.set_config(
        "alpha",
        &format!(r#"{{"count": {EVENTS}, "interval_ms": 2}}"#),
    );
    g.start_transformer().await;
    g.start_user_server().await;
    g.start_processor().await;
    let mut cuts = 0;
    let mut next = EVERY;
    while next < EVENTS {
        wait_for(&format!("{next} events in the stream"), || async {
            (stream_messages(&nats).await >= next).then_some(())
        })
        .await;
        if cutter.cut_mid_request().await {
            cuts += 1;
        }
        next = stream_messages(&nats).await + EVERY;
    }
    stream_holds_each_once_in_order(&g, &nats, EVENTS).await;
    eprintln!("{cuts} cuts");
}

#[tokio::test]
async fn http_and_nats_together_a_dead_sensor_does_not_hold_back_nats() {
    let mut g = Gateway::new(UserServerKind::Node);
    let nats = NatsServer::start(g.dir.path()).await;
    streaming(&mut g, &nats, "HTTP,NATS");
    g.set_config("alpha", r#"{"count": 100, "interval_ms": 1}"#);
    g.start_transformer().await; // the HTTP sensor is down
    g.start_user_server().await;
    g.start_processor().await;
    g.wait_journal("acked", "alpha", 100).await;
    wait_for("all 100 in JetStream while the sensor is down", || async {
        (stream_messages(&nats).await >= 100).then_some(())
    })
    .await;
    assert!(g.sensor_events().is_empty());
    g.start_sensor().await;
    let events = g.wait_sensor(100).await;
    assert_ordered(&events);
}

fn base64_json(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// An event whose subject NATS cannot take (a producer's key of 5,000 bytes:
/// the protocol line would exceed the server's limit, and the server would
/// close the connection rather than refuse the one message) goes straight to
/// the dead letters, naming why; the connection stays, and the events after
/// it arrive.
#[tokio::test]
async fn a_subject_too_long_for_nats_is_a_dead_letter_not_a_lost_connection() {
    let mut g = Gateway::new(UserServerKind::Python);
    let nats = NatsServer::start(g.dir.path()).await;
    let (out, _sub) = into_core_nats(&mut g, &nats).await;
    g.start_transformer().await;
    let long = "k".repeat(5000);
    for src in [long.as_str(), "after"] {
        let body = format!(r#"{{"src":"{src}","payload":"eyJzZXEiOjB9"}}"#);
        let r = g.post(&g.tr_url("/"), "application/json", body).await;
        assert_eq!(r.status, 200);
    }
    let events = wait_lines(&out, 1, "the event after the long one").await;
    assert_eq!(events[0]["subject"], "after");
    let letters = g.wait_deadletters(1).await;
    let error = letters["deadletters"][0]["error"].as_str().expect("error");
    assert!(error.contains("NATS takes at most"), "{error}");
    let disconnects = g
        .metric(&g.tr_url("/metrics"), "transformer_nats_disconnects_total")
        .await;
    assert_eq!(disconnects, 0.0);
    let server_log = nats.proc.as_ref().map(|p| p.output()).unwrap_or_default();
    assert!(!server_log.contains("maximum control line"), "{server_log}");
}
