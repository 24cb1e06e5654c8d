//! Gateways watching gateways (`GATEWAY_WATCHERS`): a CloudEvent passes
//! through unchanged, gateways whose watchers form a loop deliver each event
//! once rather than sending it round for ever, and a watcher listed twice is
//! one watcher.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_tests::*;
use serde_json::Value;

#[tokio::test]
async fn structured_mode_and_a_gateway_watching_another() {
    let mut downstream = Gateway::new(UserServerKind::Python);
    downstream.name = "downstream".into();
    downstream.start_sensor().await;
    downstream.start_transformer().await;

    let mut g = Gateway::new(UserServerKind::Python);
    g.transformer_env
        .push(("CE_MODE".into(), "structured".into()));
    g.transformer_env
        .push(("GATEWAY_WATCHERS".into(), downstream.tr_url("/")));
    g.start_sensor().await;
    g.start_transformer().await;
    // A framework-independent producer posts straight to the transformer.
    let r = g
        .post(
            &g.tr_url("/"),
            "application/json",
            format!(r#"{{"src":"direct","payload":"{}"}}"#, {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(r#"{"hello":"world"}"#)
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json["id"]
        .as_str()
        .expect("the answer names the CloudEvent id")
        .to_owned();
    let here = g.wait_sensor(1).await;
    assert_eq!(here[0]["mode"], "structured");
    assert_eq!(here[0]["id"], id.as_str());
    assert_eq!(here[0]["data"]["hello"], "world");
    let there = downstream.wait_sensor(1).await;
    assert_eq!(there[0]["mode"], "binary");
    assert_eq!(
        there[0]["id"],
        id.as_str(),
        "a chained gateway relays the event unchanged"
    );
    assert_eq!(there[0]["source"], "test-gateway");
    assert_eq!(there[0]["subject"], "direct");
    assert_eq!(there[0]["data"]["hello"], "world");
    assert_eq!(
        there[0]["via"], "1.1 downstream (event-gateway)",
        "a delivery says which gateway sent it"
    );
}

/// The CloudEvents JSON format carries data that is not JSON (text, XML) as a
/// JSON string; relayed in binary mode, the body is that text, not the string
/// in quotes, and relayed in structured mode it is that string again (not
/// base64: a CloudEvents SDK hands the sensor text, not bytes).
#[tokio::test]
async fn a_structured_event_with_text_data_reaches_the_sensor_as_that_text() {
    for mode in ["binary", "structured"] {
        let mut g = Gateway::new(UserServerKind::Python);
        g.transformer_env.push(("CE_MODE".into(), mode.into()));
        g.start_sensor().await;
        g.start_transformer().await;
        for (id, ct, data) in [
            ("text", "text/plain", r#""hello, world""#),
            ("xml", "application/xml", r#""<a>1</a>""#),
            ("json", "application/json", r#""a JSON string""#),
        ] {
            let body = format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"producer","type":"t","datacontenttype":"{ct}","data":{data}}}"#
            );
            let r = g
                .post(&g.tr_url("/"), "application/cloudevents+json", body)
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
        let events = g.wait_sensor(3).await;
        let data = |id: &str| {
            let e = events.iter().find(|e| e["id"] == id).expect("delivered");
            assert_eq!(e["mode"], mode);
            match &e["data"]["base64"] {
                Value::String(b64) if mode == "binary" => {
                    use base64::Engine as _;
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .expect("base64");
                    Value::String(String::from_utf8(raw).expect("text"))
                }
                _ => e["data"].clone(),
            }
        };
        assert_eq!(data("text"), "hello, world", "{mode}");
        assert_eq!(data("xml"), "<a>1</a>", "{mode}");
        assert_eq!(data("json"), "a JSON string", "{mode}");
    }
}

/// How many times the sensor saw each event id.
fn counts(events: &[Value]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for e in events {
        *n.entry(e["id"].as_str().unwrap_or("").to_owned())
            .or_insert(0) += 1;
    }
    n
}

/// The sum of a metric over both transformers.
async fn both(a: &Gateway, b: &Gateway, name: &str) -> f64 {
    a.metric(&a.tr_url("/metrics"), name).await + b.metric(&b.tr_url("/metrics"), name).await
}

#[tokio::test]
async fn gateways_whose_watchers_form_a_loop_deliver_each_event_once() {
    // east watches west; west watches east and itself: every event of either
    // comes back to both, again and again, unless a gateway recognises it.
    let mut east = Gateway::new(UserServerKind::Python);
    east.name = "east".into();
    let mut west = Gateway::new(UserServerKind::Python);
    west.name = "west".into();
    east.transformer_env
        .push(("GATEWAY_WATCHERS".into(), west.tr_url("/")));
    west.transformer_env.push((
        "GATEWAY_WATCHERS".into(),
        format!("{},{}", east.tr_url("/"), west.tr_url("/")),
    ));
    for g in [&mut east, &mut west] {
        g.start_sensor().await;
        g.start_transformer().await;
    }
    const N: usize = 20;
    for seq in 0..N {
        east.produce("from-east", seq..seq + 1).await;
        west.produce("from-west", seq..seq + 1).await;
    }
    // A producer that posts the same CloudEvent twice (same source and id,
    // which CloudEvents lets a consumer take as one event): the gateway it
    // posts to remembers it (TRANSFORMER_DEDUP_WINDOW) and takes it once.
    for _ in 0..2 {
        let attributes = [("id", "reused"), ("source", "east"), ("type", "t")];
        let body = r#"{"src":"producer","seq":0,"timeID":"t"}"#;
        let status = east
            .post_binary_event(&attributes, "application/json", body)
            .await;
        assert_eq!(status, 200);
    }
    east.wait_sensor(2 * N + 1).await;
    west.wait_sensor(2 * N + 1).await;
    // Settled: nothing queued anywhere, and the loop no longer turns.
    let returned = wait_for("the loop to settle", || async {
        let queued = both(&east, &west, "transformer_queue_depth").await;
        let returned = both(&east, &west, "transformer_events_returned_total").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = both(&east, &west, "transformer_events_returned_total").await;
        (queued == 0.0 && returned == again).then_some(returned)
    })
    .await;
    assert!(returned > 0.0, "the loop was recognised");
    for (g, reused) in [(&east, 1), (&west, 1)] {
        let events = g.sensor_events();
        let counts = counts(&events);
        assert_eq!(
            events.len(),
            2 * N + reused,
            "{} got each event once: {counts:?}",
            g.name
        );
        assert_eq!(counts.len(), 2 * N + 1);
        assert_eq!(counts.get("reused"), Some(&reused));
        assert_ordered(&events);
    }
}

/// The same URL twice (a copy and paste, or a sensor listed as a gateway too)
/// is one watcher: each event goes to it once.
#[tokio::test]
async fn a_watcher_listed_twice_gets_each_event_once() {
    let mut g = Gateway::new(UserServerKind::Python);
    let sensor = g.sensor_url();
    g.transformer_env.extend([
        ("SENSOR_WATCHERS".into(), format!("{sensor},{sensor}")),
        ("GATEWAY_WATCHERS".into(), sensor.clone()),
    ]);
    g.start_sensor().await;
    g.start_transformer().await;
    g.produce("alpha", 0..3).await;
    g.wait_sensor(3).await;
    let delivered = wait_for("the queue to settle", || async {
        let url = g.tr_url("/metrics");
        let queued = g.metric(&url, "transformer_queue_depth").await;
        let delivered = g.metric(&url, "transformer_events_delivered_total").await;
        (queued == 0.0 && delivered >= 3.0).then_some(delivered)
    })
    .await;
    assert_eq!(delivered, 3.0);
    assert_eq!(g.sensor_events().len(), 3);
    let log = g.transformer.as_ref().map(Proc::output).unwrap_or_default();
    assert!(log.contains("listed more than once"), "{log}");
}
