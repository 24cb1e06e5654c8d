//! Operating a gateway: bearer tokens keep out whoever lacks them (and dispatch
//! nothing for them), W3C trace context travels from the producer to the sensor,
//! the metrics move as events flow, and a second Ctrl-C stops at once.

use std::time::Duration;

use gateway_tests::*;

#[tokio::test]
async fn wrong_or_missing_tokens_get_401_and_dispatch_nothing() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.processor_env
        .push(("GATEWAY_PROCESSOR_CLIENT_TOKEN".into(), "pc-secret".into()));
    g.processor_env
        .push(("TRANSFORMER_TOKEN".into(), "tr-secret".into()));
    g.transformer_env
        .push(("TRANSFORMER_TOKEN".into(), "tr-secret".into()));
    g.set_config("alpha", r#"{"count": 0}"#);
    g.start_all().await;
    let start = g.wait_journal("start", "alpha", 1).await;
    assert_eq!(
        start[0]["auth"], "Bearer pc-secret",
        "the user server can check who calls it"
    );

    let body = r#"{"src":"alpha","payload":"eyJrIjoxfQ=="}"#;
    let post = |url: String, token: Option<&'static str>| {
        let mut r = g
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    for (url, token) in [
        (g.pc_url("/event"), None),
        (g.pc_url("/event"), Some("wrong")),
        (g.pc_url("/event"), Some("tr-secret")),
        (g.tr_url("/"), None),
        (g.tr_url("/"), Some("pc-secret")),
    ] {
        let r = post(url.clone(), token).await.expect("post");
        assert_eq!(r.status().as_u16(), 401, "{url} with {token:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: serde_json::Value = r.json().await.expect("json error");
        assert_eq!(v["error"], "unauthorized");
    }
    let r = g
        .http
        .get(g.pc_url("/configs"))
        .send()
        .await
        .expect("configs");
    assert_eq!(
        r.status().as_u16(),
        401,
        "the configurations are not public either"
    );
    for url in [
        g.pc_url("/healthz"),
        g.tr_url("/healthz"),
        g.pc_url("/metrics"),
    ] {
        assert_eq!(
            g.http
                .get(&url)
                .send()
                .await
                .expect("probe")
                .status()
                .as_u16(),
            200,
            "{url} stays open"
        );
    }
    assert_eq!(
        post(g.pc_url("/event"), Some("pc-secret"))
            .await
            .expect("post")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        post(g.tr_url("/"), Some("tr-secret"))
            .await
            .expect("post")
            .status()
            .as_u16(),
        200
    );
    g.wait_sensor(2).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        g.sensor_events().len(),
        2,
        "only the authorised events were dispatched"
    );
}

#[tokio::test]
async fn traceparent_travels_from_the_producer_to_the_sensor() {
    let g = Gateway::up(UserServerKind::Python, &[("alpha", r#"{"count": 0}"#)]).await;
    g.wait_phase("alpha", "Running").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = g
        .http
        .post(g.pc_url("/event"))
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=1")
        .body(r#"{"src":"alpha","payload":"eyJrIjoxfQ=="}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 200);
    let events = g.wait_sensor(1).await;
    assert_eq!(
        events[0]["traceparent"], traceparent,
        "the sensor sees the producer's trace"
    );
}

#[tokio::test]
async fn metrics_move_as_events_flow() {
    let g = Gateway::up(UserServerKind::Python, &[("alpha", r#"{"count": 0}"#)]).await;
    g.wait_phase("alpha", "Running").await;
    let tr = g.tr_url("/metrics");
    let pc = g.pc_url("/metrics");
    let received = g.metric(&tr, "transformer_events_received_total").await;
    let delivered = g.metric(&tr, "transformer_events_delivered_total").await;
    let timed = g
        .metric(&tr, "transformer_delivery_duration_seconds_count")
        .await;
    let forwarded = g.metric(&pc, "processor_events_forwarded_total").await;
    for _ in 0..5 {
        let r = g
            .post(
                &g.pc_url("/event"),
                "application/json",
                r#"{"src":"alpha","payload":"eyJrIjoxfQ=="}"#,
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let r = g
        .post(&g.pc_url("/event"), "application/json", "not json")
        .await;
    assert_eq!(r.status, 400);
    g.wait_sensor(5).await;
    wait_for("the delivered counter to move", || async {
        (g.metric(&tr, "transformer_events_delivered_total").await >= delivered + 5.0).then_some(())
    })
    .await;
    assert_eq!(
        g.metric(&tr, "transformer_events_received_total").await,
        received + 5.0
    );
    assert_eq!(
        g.metric(&tr, "transformer_delivery_duration_seconds_count")
            .await,
        timed + 5.0
    );
    assert_eq!(
        g.metric(&pc, "processor_events_forwarded_total").await,
        forwarded + 5.0
    );
    let rejected = "processor_events_rejected_total{reason=\"bad_request\"}";
    assert!(g.metric(&pc, rejected).await >= 1.0);
    assert_eq!(
        g.metric(&pc, "processor_configurations{phase=\"Running\"}")
            .await,
        1.0
    );
    assert_eq!(g.metric(&tr, "transformer_queue_depth").await, 0.0);
}

#[tokio::test]
async fn https_sensor_with_a_private_ca_receives_events() {
    let mut g = Gateway::new(UserServerKind::Python);
    let (ca, cert, key) = private_ca(g.dir.path());
    g.sensor_tls = Some((cert, key));
    g.transformer_env
        .push(("WATCHER_TLS_CA".into(), ca.display().to_string()));
    g.start_sensor().await;
    g.start_transformer().await;
    assert!(g.sensor_url().starts_with("https://"));
    let r = g
        .post(
            &g.tr_url("/"),
            "application/json",
            r#"{"src":"secure","payload":"eyJrIjoxfQ=="}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = g.wait_sensor(1).await;
    assert_eq!(events[0]["subject"], "secure");
    assert_eq!(events[0]["data"]["k"], 1);
}

#[tokio::test]
async fn https_sensor_without_its_ca_is_not_trusted() {
    let mut g = Gateway::new(UserServerKind::Python);
    let (_, cert, key) = private_ca(g.dir.path());
    g.sensor_tls = Some((cert, key));
    g.transformer_env
        .push(("WATCHER_RETRY_BASE".into(), "10ms".into()));
    g.start_sensor().await;
    g.start_transformer().await;
    let r = g
        .post(
            &g.tr_url("/"),
            "application/json",
            r#"{"src":"secure","payload":""}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    let sensor = g.sensor_url();
    wait_for("failed deliveries to the untrusted sensor", || async {
        let retries = format!("transformer_delivery_retries_total{{watcher=\"{sensor}\"}}");
        (g.metric(&g.tr_url("/metrics"), &retries).await > 0.0).then_some(())
    })
    .await;
    assert!(
        g.sensor_events().is_empty(),
        "nothing reaches a sensor whose certificate is not trusted"
    );
}

/// Someone at a terminal presses Ctrl-C while the transformer drains to a
/// sensor that is down (it would wait out `SHUTDOWN_TIMEOUT`), then presses it
/// again: it stops at once, status 130, and what it took is delivered by its
/// next start.
#[tokio::test]
async fn a_second_ctrl_c_stops_at_once_and_loses_nothing_taken() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.transformer_env
        .push(("SHUTDOWN_TIMEOUT".into(), "120s".into()));
    g.start_transformer().await; // the sensor is down
    g.produce("alpha", 0..5).await;
    let tr = g.transformer.as_mut().expect("transformer");
    // A terminal signals the whole process group and scripts pass the signal
    // on: one Ctrl-C arrives twice at once, and that is not a second request.
    tr.signal(libc::SIGINT);
    tr.signal(libc::SIGTERM);
    wait_for("the transformer to begin its shutdown", || async {
        tr.output()
            .contains("received; shutting down")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(tr.is_running(), "still draining after one Ctrl-C relayed");
    tr.signal(libc::SIGINT);
    let status = tr
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("stopped at the second Ctrl-C, not after SHUTDOWN_TIMEOUT");
    assert_eq!(status.code(), Some(130), "{status}");
    g.start_sensor().await;
    g.start_transformer().await;
    let events = g.wait_sensor(5).await;
    assert_ordered(&events);
}
