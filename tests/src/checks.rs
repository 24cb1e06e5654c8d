//! What the end-to-end tests check about delivered events: order per
//! configuration and start, and that nothing acknowledged went missing.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::Gateway;

/// A `{src, payload}` body whose payload is the JSON the test user servers send,
/// `{"src", "seq", "timeID"}`, so [`assert_ordered`] and the delivery checks read it.
pub fn event_body(src: &str, time_id: &str, seq: usize) -> String {
    use base64::Engine as _;
    let data = serde_json::json!({ "src": src, "seq": seq, "timeID": time_id });
    let payload = base64::engine::general_purpose::STANDARD.encode(data.to_string());
    serde_json::json!({ "src": src, "payload": payload }).to_string()
}

/// The event payloads the test user servers send, decoded from a sensor record.
pub fn payload(event: &Value) -> &Value {
    &event["data"]
}

/// Checks that, per configuration and start (`timeID`), the sequence numbers the
/// sensor saw first appear in increasing order: redeliveries may repeat an event,
/// but nothing may overtake.
pub fn assert_ordered(events: &[Value]) {
    let mut last: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for e in events {
        let d = payload(e);
        let key = (
            d["src"].as_str().unwrap_or("").to_owned(),
            d["timeID"].as_str().unwrap_or("").to_owned(),
        );
        let seq = d["seq"].as_i64().expect("seq in payload");
        if !seen.insert((key.clone(), seq)) {
            continue;
        }
        if let Some(prev) = last.get(&key) {
            assert!(seq > *prev, "event {seq} of {key:?} arrived after {prev}");
        }
        last.insert(key, seq);
    }
}

/// Every event the user server saw acknowledged (2xx) is at the sensor.
pub fn assert_acked_delivered(g: &Gateway) {
    let got: std::collections::HashSet<(String, String, i64)> = g
        .sensor_events()
        .iter()
        .map(|e| {
            let d = payload(e);
            (
                d["src"].as_str().unwrap_or("").to_owned(),
                d["timeID"].as_str().unwrap_or("").to_owned(),
                d["seq"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    for a in g.journal().iter().filter(|e| e["op"] == "acked") {
        let key = (
            a["src"].as_str().unwrap_or("").to_owned(),
            a["timeID"].as_str().unwrap_or("").to_owned(),
            a["seq"].as_i64().unwrap_or(-1),
        );
        assert!(
            got.contains(&key),
            "acknowledged event {key:?} never reached the sensor"
        );
    }
}
