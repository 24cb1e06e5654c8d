//! The Kafka user server (`sdk-examples/kafka`) against a real Kafka-protocol
//! broker (Tansu) started here, through the real processor-client and
//! transformer to the sensor: every message once, in order per partition,
//! each offset committed only after the gateway took it; the same messages
//! read again after a crash are known by their ids and delivered nowhere
//! twice; faults (broker down at start or restarted, a missing topic, bad
//! credentials, the configuration removed) shown as the configuration's phase.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use gateway_tests::*;
use serde_json::Value;

/// A gateway whose user server is the Kafka server, with `configs`.
async fn gateway(configs: &[(&str, String)]) -> Gateway {
    Gateway::up_with(configs, |_| {
        let mut server = Command::new(bin("kafka-gateway"));
        server.env("RUST_LOG", "info");
        server
    })
    .await
}

/// A configuration reading `topic` as a member of `group` from the oldest message.
fn group_config(brokers: &str, topic: &str, group: &str) -> String {
    format!(
        "url: {brokers}\ntopic: {topic}\njsonBody: true\n\
         consumerGroup: {{groupName: {group}, oldest: true}}\n"
    )
}

/// The events of `src` at the sensor.
fn events_of(g: &Gateway, src: &str) -> Vec<Value> {
    g.sensor_events()
        .into_iter()
        .filter(|e| e["subject"] == src)
        .collect()
}

/// `n` per partition, in arrival order.
fn numbers_by_partition(events: &[Value]) -> BTreeMap<i64, Vec<u64>> {
    let mut by: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for e in events {
        let d = payload(e);
        let p = d["partition"].as_i64().expect("partition");
        by.entry(p)
            .or_default()
            .push(d["body"]["n"].as_u64().expect("n"));
    }
    by
}

async fn wait_events(g: &Gateway, src: &str, n: usize, limit: Duration) -> Vec<Value> {
    wait_for_within(
        &format!("{n} events of {src} at the sensor"),
        limit,
        || async {
            let got = events_of(g, src);
            (got.len() >= n).then_some(got)
        },
    )
    .await
}

#[tokio::test]
async fn messages_arrive_once_in_order_named_topic_partition_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Tansu::start(dir.path()).await;
    broker.create_topic("orders", 2).await;
    let mut g = gateway(&[("orders", group_config(&broker.brokers(), "orders", "g1"))]).await;
    g.wait_phase("orders", "Running").await;
    broker.produce("orders", 0, 0..100).await;
    broker.produce("orders", 1, 100..150).await;
    let got = wait_events(&g, "orders", 150, DEADLINE).await;
    assert_eq!(got.len(), 150);
    let by = numbers_by_partition(&got);
    assert_eq!(by[&0], (0..100).collect::<Vec<_>>());
    assert_eq!(by[&1], (100..150).collect::<Vec<_>>());
    let first = got
        .iter()
        .find(|e| payload(e)["partition"] == 0 && payload(e)["offset"] == 0)
        .expect("offset 0 of partition 0");
    let d = payload(first);
    assert_eq!(d["topic"], "orders");
    assert_eq!(d["key"], "0");
    assert_eq!(d["body"], serde_json::json!({"n": 0}));
    assert!(
        d["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{d}"
    );
    assert_eq!(first["originid"], "orders/0/0");
}
