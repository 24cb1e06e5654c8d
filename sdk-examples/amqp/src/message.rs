//! What one AMQP message becomes: the event's JSON (the shape Argo Events'
//! AMQP gateway sent, plus `redelivered` and `headers`), and the memory of
//! recently forwarded message ids that keeps a broker's redelivery of a
//! message already taken (its ack was lost with the connection) from reaching
//! the gateway twice.

use std::collections::{HashSet, VecDeque};

use base64::Engine as _;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{json, Map, Value};

/// The event for `delivery`. The body is embedded as JSON when `json_body` is
/// set and it parses, as a string when it is UTF-8, and as `bodyBase64`
/// otherwise.
pub fn event(delivery: &Delivery, json_body: bool) -> Value {
    let p = &delivery.properties;
    let text = |v: &Option<lapin::types::ShortString>| {
        v.as_ref().map_or(Value::Null, |s| Value::from(s.as_str()))
    };
    let mut e = json!({
        "contentType": text(p.content_type()),
        "contentEncoding": text(p.content_encoding()),
        "deliveryMode": p.delivery_mode().map_or(Value::Null, Value::from),
        "priority": p.priority().map_or(Value::Null, Value::from),
        "correlationId": text(p.correlation_id()),
        "replyTo": text(p.reply_to()),
        "expiration": text(p.expiration()),
        "messageId": text(p.message_id()),
        "timestamp": p.timestamp().map_or(Value::Null, Value::from),
        "type": text(p.kind()),
        "appId": text(p.app_id()),
        "exchange": delivery.exchange.as_str(),
        "routingKey": delivery.routing_key.as_str(),
        "redelivered": delivery.redelivered,
        "headers": p.headers().as_ref().map_or(Value::Null, table),
    });
    let body = &delivery.data;
    let parsed = json_body
        .then(|| serde_json::from_slice::<Value>(body).ok())
        .flatten();
    match (parsed, std::str::from_utf8(body)) {
        (Some(v), _) => e["body"] = v,
        (None, Ok(s)) => e["body"] = Value::from(s),
        (None, Err(_)) => {
            e["bodyBase64"] = base64::engine::general_purpose::STANDARD
                .encode(body)
                .into()
        }
    }
    e
}

/// Message headers as plain JSON: strings, numbers, booleans, nested tables
/// and arrays as themselves, anything else as its debug form.
fn table(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value(v)))
            .collect::<Map<_, _>>(),
    )
}

fn value(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::from(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::from(*f),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => table(t),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value).collect()),
        AMQPValue::Void => Value::Null,
        other => Value::from(format!("{other:?}")),
    }
}

/// The ids of the last `capacity` messages forwarded, oldest first out.
pub struct Forwarded {
    order: VecDeque<String>,
    set: HashSet<String>,
    capacity: usize,
}

impl Forwarded {
    pub fn new(capacity: usize) -> Forwarded {
        Forwarded {
            order: VecDeque::with_capacity(capacity),
            set: HashSet::with_capacity(capacity),
            capacity,
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    pub fn insert(&mut self, id: &str) {
        if self.capacity == 0 || !self.set.insert(id.to_owned()) {
            return;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_remembers_only_the_last_ones() {
        let mut f = Forwarded::new(2);
        for id in ["a", "b", "b", "c"] {
            f.insert(id);
        }
        assert!(!f.contains("a") && f.contains("b") && f.contains("c"));
    }

    #[test]
    fn header_values_become_plain_json() {
        let mut t = FieldTable::default();
        t.insert("n".into(), AMQPValue::LongInt(7));
        t.insert("s".into(), AMQPValue::LongString("x".into()));
        t.insert("b".into(), AMQPValue::Boolean(true));
        assert_eq!(table(&t), json!({"n": 7, "s": "x", "b": true}));
    }
}
