//! The run's two watchers and what they received: an HTTP sensor (that the
//! nemesis can take down: it answers 503 meanwhile) and a JetStream consumer
//! (a durable pull consumer acknowledging each message). Each keeps, per
//! event, the CloudEvent ids it arrived as, and per configuration the
//! sequence numbers in the order they first arrived; and every delivery, so
//! that a failure can be shown event by event.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use futures::StreamExt as _;

/// One delivery, as the watcher saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub ce_id: String,
    /// The CloudEvent `time`: when the transformer took the event.
    pub ce_time: String,
    pub subject: String,
    pub seq: u64,
    /// Since the run started.
    pub at: Duration,
}

/// What one watcher received.
#[derive(Default)]
pub struct Received {
    /// Per event (the user's id, or for an unnamed event its configuration
    /// and sequence number): the CloudEvent ids it arrived as.
    pub by_event: HashMap<String, Vec<String>>,
    /// Per configuration: sequence numbers in order of first arrival.
    pub first_order: BTreeMap<String, Vec<u64>>,
    pub log: Vec<Delivery>,
}

impl Received {
    fn record(&mut self, origin: Option<&str>, d: Delivery) {
        let key = origin.map_or_else(|| format!("{}/{}", d.subject, d.seq), str::to_owned);
        let ids = self.by_event.entry(key).or_default();
        if ids.is_empty() {
            self.first_order
                .entry(d.subject.clone())
                .or_default()
                .push(d.seq);
        }
        ids.push(d.ce_id.clone());
        self.log.push(d);
    }
}

/// A watcher's record, shared with whoever checks it.
pub struct Watcher {
    pub name: &'static str,
    pub down: AtomicBool,
    pub got: Mutex<Received>,
    started: Instant,
}

impl Watcher {
    fn new(name: &'static str, started: Instant) -> Arc<Watcher> {
        Arc::new(Watcher {
            name,
            down: AtomicBool::new(false),
            got: Mutex::new(Received::default()),
            started,
        })
    }

    pub fn received(&self) -> std::sync::MutexGuard<'_, Received> {
        self.got.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, origin: Option<&str>, ce_id: &str, ce_time: &str, subject: &str, seq: u64) {
        let d = Delivery {
            ce_id: ce_id.to_owned(),
            ce_time: ce_time.to_owned(),
            subject: subject.to_owned(),
            seq,
            at: self.started.elapsed(),
        };
        self.received().record(origin.filter(|o| !o.is_empty()), d);
    }
}

fn seq_of(data: &serde_json::Value) -> u64 {
    data["seq"].as_u64().unwrap_or(u64::MAX)
}

/// The HTTP sensor (binary CloudEvents) on `port`.
pub async fn http_sensor(port: u16, started: Instant) -> Arc<Watcher> {
    let w = Watcher::new("http sensor", started);
    let state = w.clone();
    let app = Router::new().fallback(move |headers: axum::http::HeaderMap, body: Bytes| {
        let w = state.clone();
        async move {
            if w.down.load(Ordering::Relaxed) {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down");
            }
            let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
            let data = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
            w.record(
                Some(h("ce-originid")),
                h("ce-id"),
                h("ce-time"),
                h("ce-subject"),
                seq_of(&data),
            );
            (axum::http::StatusCode::OK, "ok")
        }
    });
    crate::serve(app, port).await;
    w
}

/// A durable pull consumer of the gateway's JetStream stream (structured
/// CloudEvents), acknowledging each message once recorded. It outlives
/// nats-server restarts: the client reconnects, and the message stream is
/// asked for again whenever it ends or fails.
pub async fn jetstream_consumer(
    nats_url: String,
    stream: String,
    started: Instant,
) -> Arc<Watcher> {
    let w = Watcher::new("jetstream consumer", started);
    let state = w.clone();
    tokio::spawn(async move {
        let client = loop {
            match async_nats::connect(&nats_url).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let js = async_nats::jetstream::new(client);
        loop {
            if let Err(e) = consume(&js, &stream, &state).await {
                eprintln!("jetstream consumer: {e}; again");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    w
}

/// Reads the stream until its messages end or fail.
async fn consume(
    js: &async_nats::jetstream::Context,
    stream: &str,
    w: &Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    let stream = js.get_stream(stream).await?;
    let consumer = stream
        .get_or_create_consumer(
            "chaos",
            pull::Config {
                durable_name: Some("chaos".into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(5),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let ce = serde_json::from_slice::<serde_json::Value>(&message.payload).unwrap_or_default();
        let s = |n: &str| ce[n].as_str().unwrap_or("").to_owned();
        w.record(
            Some(&s("originid")),
            &s("id"),
            &s("time"),
            &s("subject"),
            seq_of(&ce["data"]),
        );
        // A lost acknowledgement is a redelivery, which the checker counts.
        let _ = message.ack().await;
    }
    Ok(())
}
