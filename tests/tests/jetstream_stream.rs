//! The JetStream stream the transformer publishes to, when the operator made
//! it: one that does not take the gateway's subjects is named in the error,
//! and the events go in once it does.

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
    let r = g
        .post(
            &g.tr_url("/"),
            "application/json",
            event_body("alpha", "t", 0),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
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
