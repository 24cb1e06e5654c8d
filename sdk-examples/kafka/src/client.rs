//! How a configuration becomes a librdkafka consumer: its settings (brokers,
//! group, TLS, SASL, at-least-once offset handling), and a context that turns
//! the client's own errors into what the configuration shows: refused
//! credentials end it in Error; an unreachable broker is waited out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use crate::spec::{Reading, Spec};

/// How long the first look at the brokers may take before they count as
/// unreachable for now.
pub const LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// The client's errors that retrying cannot mend, as words for the
/// configuration's Error message; everything else it logs and retries.
pub struct Alarms {
    fatal: mpsc::UnboundedSender<String>,
    /// The last error the client reported, for a failed look's message.
    last: Mutex<Option<(RDKafkaErrorCode, String)>>,
    /// The broker's refusal, once there was one (later errors, such as
    /// "all brokers down", follow it).
    refused: Mutex<Option<String>>,
    /// When each kind of error was last logged.
    said: Mutex<HashMap<i32, Instant>>,
    brokers: String,
}

/// How often one kind of client error is logged: librdkafka reports a
/// broker that is down for every connection attempt.
const SAY_EVERY: Duration = Duration::from_secs(60);

impl Alarms {
    fn new(brokers: &str) -> (Alarms, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let alarms = Alarms {
            fatal: tx,
            last: Mutex::new(None),
            refused: Mutex::new(None),
            said: Mutex::new(HashMap::new()),
            brokers: brokers.to_owned(),
        };
        (alarms, rx)
    }

    /// The last error the client reported.
    pub fn last(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The broker's refusal, if it refused this client.
    pub fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ClientContext for Alarms {
    // librdkafka's log goes to this server's log, below its own messages.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            // Connection failures come through `error` as well, once.
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(target: "librdkafka", %fac, "{message}")
            }
            _ => tracing::debug!(target: "librdkafka", %fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let Some(code) = error.rdkafka_error_code() else {
            tracing::warn!(brokers = %self.brokers, %error, %reason, "Kafka client error");
            return;
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((code, reason.to_owned()));
        let now = Instant::now();
        let say = {
            let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
            let due = said
                .get(&(code as i32))
                .is_none_or(|at| now.duration_since(*at) >= SAY_EVERY);
            if due {
                said.insert(code as i32, now);
            }
            due
        };
        if say {
            tracing::warn!(brokers = %self.brokers, %error, %reason, "Kafka client error (said once a minute)");
        }
        if is_refusal(code) {
            let words = refusal_words(&self.brokers, reason);
            *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(words.clone());
            let _ = self.fatal.send(words);
        }
    }
}

impl ConsumerContext for Alarms {}

/// Errors that say the broker refused this client as configured.
pub fn is_refusal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState
            | RDKafkaErrorCode::SSL
    )
}

/// The Error message of a refusal: librdkafka's reason names the mechanism
/// and the broker, never the password.
pub fn refusal_words(brokers: &str, reason: &str) -> String {
    format!("the Kafka broker at {brokers} refused this client: {reason}")
}

/// The librdkafka settings of `spec` for configuration `src`.
pub fn settings(spec: &Spec, src: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &spec.brokers)
        .set("client.id", "kafka-gateway")
        .set("group.id", spec.offsets_group(src))
        // At least once: an offset is stored only once the gateway took the
        // message and every earlier one of its partition; what is stored is
        // committed every second, on a rebalance and on close.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("reconnect.backoff.max.ms", "5000")
        .set("allow.auto.create.topics", "false")
        .set_log_level(RDKafkaLogLevel::Warning);
    match &spec.reading {
        Reading::Group {
            oldest, strategy, ..
        } => {
            c.set(
                "auto.offset.reset",
                if *oldest { "earliest" } else { "latest" },
            )
            .set("partition.assignment.strategy", *strategy);
        }
        Reading::Partition(_) => {
            c.set("auto.offset.reset", "latest");
        }
    }
    if let Some(v) = &spec.version {
        c.set("broker.version.fallback", v);
    }
    let protocol = match (spec.tls.is_some(), spec.sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    c.set("security.protocol", protocol);
    if let Some(tls) = &spec.tls {
        if let Some(ca) = &tls.ca {
            c.set("ssl.ca.pem", ca);
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            c.set("ssl.certificate.pem", cert).set("ssl.key.pem", key);
        }
        if tls.insecure_skip_verify {
            c.set("enable.ssl.certificate.verification", "false")
                .set("ssl.endpoint.identification.algorithm", "none");
        }
    }
    if let Some(sasl) = &spec.sasl {
        c.set("sasl.mechanism", sasl.mechanism)
            .set("sasl.username", &sasl.user)
            .set("sasl.password", &sasl.password);
    }
    c
}

/// The configuration's consumer, and the channel its refusals come on.
pub fn consumer(
    spec: &Spec,
    src: &str,
) -> Result<(StreamConsumer<Alarms>, mpsc::UnboundedReceiver<String>), String> {
    let (alarms, rx) = Alarms::new(&spec.brokers);
    settings(spec, src)
        .create_with_context(alarms)
        .map(|c| (c, rx))
        .map_err(|e| format!("the Kafka client cannot be set up: {e}"))
}

/// What a first look at the brokers found.
#[derive(Debug, PartialEq, Eq)]
pub enum Look {
    /// The topic is there (and the partition, when one is named).
    Ready,
    /// No broker answered: try again later.
    Unreachable(String),
    /// The broker refused the client, or the topic or partition is not there.
    Refused(String),
}

/// Asks the brokers for the topic's metadata (blocking: run it off the
/// async threads).
pub fn look(spec: &Spec, src: &str) -> Look {
    let (alarms, _rx) = Alarms::new(&spec.brokers);
    let consumer: BaseConsumer<Alarms> = match settings(spec, src).create_with_context(alarms) {
        Ok(c) => c,
        Err(e) => return Look::Refused(format!("the Kafka client cannot be set up: {e}")),
    };
    let found = consumer.fetch_metadata(Some(&spec.topic), LOOK_TIMEOUT);
    if found.is_err() {
        // The client's errors (a refused login) reach the context only
        // when its queue is served.
        let _ = consumer.poll(Duration::from_millis(100));
    }
    if let Some(words) = consumer.context().refused() {
        return Look::Refused(words);
    }
    let last = consumer.context().last();
    let metadata = match found {
        Ok(m) => m,
        Err(e) => {
            let why = last.map_or_else(|| e.to_string(), |(_, reason)| reason);
            return Look::Unreachable(format!(
                "no Kafka broker at {} answered within {} s: {why}",
                spec.brokers,
                LOOK_TIMEOUT.as_secs()
            ));
        }
    };
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == spec.topic) else {
        return Look::Refused(missing_topic(spec));
    };
    if let Some(e) = topic.error() {
        let code = RDKafkaErrorCode::from(e);
        return match code {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                Look::Refused(missing_topic(spec))
            }
            RDKafkaErrorCode::TopicAuthorizationFailed => Look::Refused(format!(
                "the Kafka broker at {} does not let this client read topic {:?}",
                spec.brokers, spec.topic
            )),
            other => Look::Unreachable(format!("topic {:?}: {other}", spec.topic)),
        };
    }
    if let Reading::Partition(p) = spec.reading {
        let count = topic.partitions().len();
        if usize::try_from(p).map_or(true, |p| p >= count) {
            return Look::Refused(format!(
                "partition: topic {:?} has {count} partitions (0 to {}); {p} is not one of them",
                spec.topic,
                count.saturating_sub(1)
            ));
        }
    }
    Look::Ready
}

fn missing_topic(spec: &Spec) -> String {
    format!(
        "topic: the Kafka broker at {} has no topic {:?}",
        spec.brokers, spec.topic
    )
}
