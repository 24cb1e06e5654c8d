//! One configuration's consumer: connect, declare, bind, consume, and forward
//! each message to the gateway before acknowledging it to the broker. A lost
//! connection is retried forever with capped, jittered backoff (the
//! unacknowledged messages go back to the queue and come again); an answer
//! from the broker that retrying cannot change (no such queue, a declaration
//! that contradicts the existing one, refused credentials) ends the
//! configuration in Error with the broker's words.

use std::time::Duration;

use futures::StreamExt as _;
use gateway_sdk::{CancellationToken, EmitError, Emitter};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use crate::lost::Lost;
use crate::message::{self, Forwarded};
use crate::spec::Spec;

/// How long a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first and the longest wait between reconnection attempts.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How many forwarded message ids are remembered per configuration.
const REMEMBERED: usize = 4096;

/// Why a session ended.
enum Ended {
    /// The configuration was stopped.
    Stopped,
    /// The broker refused the configuration: no retry until it changes.
    Refused(String),
    /// The connection or channel was lost: try again.
    Lost(String),
}

/// One configuration's consumer, across its connections.
struct Consumer {
    spec: Spec,
    emitter: Emitter,
    stop: CancellationToken,
    /// Message ids forwarded lately, across reconnections.
    forwarded: Forwarded,
    /// Whether Running was reported (once, on the first subscription).
    announced: bool,
    /// Sessions lost in a row since the last subscription.
    failures: u32,
}

/// Runs the configuration until `stop` is cancelled or the broker refuses it.
pub async fn run(spec: Spec, emitter: Emitter, stop: CancellationToken) {
    let mut c = Consumer {
        spec,
        emitter,
        stop,
        forwarded: Forwarded::new(REMEMBERED),
        announced: false,
        failures: 0,
    };
    let src = c.emitter.config().src.clone();
    loop {
        match c.session().await {
            Ended::Stopped => return,
            Ended::Refused(why) => {
                tracing::warn!(%src, broker = %c.spec.where_(), %why, "the broker refused the configuration");
                let _ = c.emitter.error(&why).await;
                return;
            }
            Ended::Lost(why) => {
                c.failures = c.failures.saturating_add(1);
                let wait = gateway_sdk::backoff(c.failures, BACKOFF_BASE, BACKOFF_CAP);
                tracing::warn!(%src, broker = %c.spec.where_(), %why, retry_in = ?wait, "AMQP connection lost");
                tokio::select! {
                    _ = c.stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Sorts a broker error into "retry" or "refused".
fn classify(context: &str, e: lapin::Error) -> Ended {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
        let refused = match amqp.kind() {
            AMQPErrorKind::Soft(_) => true,
            AMQPErrorKind::Hard(h) => {
                matches!(h, AMQPHardError::NOTALLOWED | AMQPHardError::INVALIDPATH)
            }
        };
        let words = format!("{context}: {}", amqp.get_message().as_str());
        return if refused {
            Ended::Refused(words)
        } else {
            Ended::Lost(words)
        };
    }
    Ended::Lost(format!("{context}: {e}"))
}

/// A wait on the broker that the connection's loss ended.
fn gone(context: &str) -> Ended {
    Ended::Lost(format!("{context}: the connection was lost"))
}

impl Consumer {
    /// One connection: subscribe, then forward until it ends.
    async fn session(&mut self) -> Ended {
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.spec.tls_ca.clone(),
        };
        let runtime = match lapin::runtime::default_runtime() {
            Ok(r) => r,
            Err(e) => return Ended::Lost(format!("no runtime for the connection: {e}")),
        };
        let connect = lapin::Connect::connect_with_config(
            self.spec.uri.clone(),
            ConnectionProperties::default(),
            tls,
            runtime,
        );
        let conn = tokio::select! {
            _ = self.stop.cancelled() => return Ended::Stopped,
            c = tokio::time::timeout(CONNECT_TIMEOUT, connect) => match c {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return refused_login(e),
                Err(_) => return Ended::Lost(format!("no connection within {CONNECT_TIMEOUT:?}")),
            },
        };
        let lost = Lost::watch(&conn);
        // `consume` watches `stop` itself, so that a message the gateway took
        // is acknowledged before the connection closes.
        let ended = self.consume(&conn, &lost).await;
        // Closing returns whatever was delivered but not acknowledged to the queue.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), conn.close(200, "stopped".into())).await;
        ended
    }

    async fn consume(&mut self, conn: &Connection, lost: &Lost) -> Ended {
        let setup = tokio::select! {
            _ = self.stop.cancelled() => return Ended::Stopped,
            s = lost.unless(subscribe(conn, &self.spec)) => s.unwrap_or_else(|| Err(gone("subscribe"))),
        };
        let (queue, mut consumer) = match setup {
            Ok(s) => s,
            Err(ended) => return ended,
        };
        self.failures = 0;
        if !self.announced {
            if self.emitter.running().await.is_err() {
                return Ended::Stopped;
            }
            self.announced = true;
        }
        tracing::info!(src = %self.emitter.config().src, broker = %self.spec.where_(), queue = %queue, "consuming");
        loop {
            let next = tokio::select! {
                _ = self.stop.cancelled() => return Ended::Stopped,
                next = lost.unless(consumer.next()) => next,
            };
            let delivery = match next {
                None => return gone("delivery"),
                Some(None) => return Ended::Lost("the broker cancelled the consumer".into()),
                Some(Some(Err(e))) => return classify("delivery", e),
                Some(Some(Ok(d))) => d,
            };
            if let Some(ended) = self.forward(delivery, lost).await {
                return ended;
            }
        }
    }

    /// Forwards one message and settles it with the broker: acknowledged once
    /// the gateway took it, rejected (to the dead-letter exchange, if the queue
    /// has one) when the gateway refuses it for good. `Some` ends the session.
    async fn forward(&mut self, delivery: lapin::message::Delivery, lost: &Lost) -> Option<Ended> {
        let (spec, emitter) = (&self.spec, &self.emitter);
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned());
        // A redelivery of a message already taken (its ack went down with the
        // connection) is acknowledged without forwarding it again.
        let already =
            delivery.redelivered && id.as_deref().is_some_and(|i| self.forwarded.contains(i));
        if !already {
            let body = message::event(&delivery, spec.json_body).to_string();
            match emitter.emit(body.as_bytes()).await {
                Ok(_) => {}
                Err(EmitError::Stopped) => return Some(Ended::Stopped),
                Err(EmitError::Refused { status, body }) => {
                    tracing::warn!(src = %emitter.config().src, status, %body, "the gateway refused a message; rejecting it");
                    let nack = BasicNackOptions {
                        multiple: false,
                        requeue: false,
                    };
                    return match lost.unless(delivery.acker.nack(nack)).await {
                        None => Some(gone("basic.nack")),
                        Some(Ok(_)) => None,
                        Some(Err(e)) => Some(classify("basic.nack", e)),
                    };
                }
            }
            if let Some(id) = &id {
                self.forwarded.insert(id);
            }
        }
        match lost
            .unless(delivery.acker.ack(BasicAckOptions::default()))
            .await
        {
            None => return Some(gone("basic.ack")),
            Some(Err(e)) => return Some(classify("basic.ack", e)),
            Some(Ok(_)) => {}
        }
        self.stop.is_cancelled().then_some(Ended::Stopped)
    }
}

/// Refused credentials and untrusted certificates are the user's to fix;
/// anything else may pass.
fn refused_login(e: lapin::Error) -> Ended {
    let text = e.to_string();
    if text.contains("ACCESS_REFUSED") || text.contains("ACCESS-REFUSED") {
        return Ended::Refused("the broker refused the credentials (ACCESS_REFUSED)".into());
    }
    if text.contains("certificate") {
        return Ended::Refused(format!(
            "connect: {text} (an amqps:// broker with a private CA needs caFile)"
        ));
    }
    classify("connect", e)
}

/// Declares what the configuration names and starts consuming its queue.
async fn subscribe(conn: &Connection, spec: &Spec) -> Result<(String, lapin::Consumer), Ended> {
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| classify("channel", e))?;
    channel
        .basic_qos(spec.consume.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| classify("basic.qos", e))?;
    if let Some(b) = &spec.binding {
        let options = ExchangeDeclareOptions {
            passive: b.declare.passive,
            durable: b.declare.durable,
            auto_delete: b.declare.auto_delete,
            internal: b.declare.internal,
            nowait: false,
        };
        channel
            .exchange_declare(
                b.exchange.as_str().into(),
                b.kind.clone(),
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify(&format!("exchange {:?}", b.exchange), e))?;
    }
    let d = &spec.queue_declare;
    let options = QueueDeclareOptions {
        passive: d.passive,
        durable: d.durable,
        exclusive: d.exclusive,
        auto_delete: d.auto_delete,
        nowait: false,
    };
    let queue = channel
        .queue_declare(
            spec.queue.as_str().into(),
            options,
            spec.queue_arguments.clone(),
        )
        .await
        .map_err(|e| classify(&format!("queue {:?}", spec.queue), e))?
        .name()
        .clone();
    if let Some(b) = &spec.binding {
        channel
            .queue_bind(
                queue.clone(),
                b.exchange.as_str().into(),
                b.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify(&format!("binding to {:?}", b.exchange), e))?;
    }
    let options = BasicConsumeOptions {
        no_local: spec.consume.no_local,
        no_ack: false,
        exclusive: spec.consume.exclusive,
        nowait: false,
    };
    let consumer = channel
        .basic_consume(
            queue.clone(),
            spec.consume.consumer_tag.as_str().into(),
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|e| classify(&format!("consume {:?}", queue.as_str()), e))?;
    Ok((queue.as_str().to_owned(), consumer))
}
