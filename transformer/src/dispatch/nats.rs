//! NATS destinations. Core NATS publishes and forgets (at most once: a message
//! published while the server is away may be lost). JetStream publishes with the
//! CloudEvent `id` as `Nats-Msg-Id` and waits for the server's acknowledgement, so
//! the event stays in the transformer's durable queue until the stream has it, and a
//! retried publish is stored once. CloudEvents follow the NATS protocol binding, in
//! structured mode by default (the payload is the JSON event) or binary mode
//! (attributes in `ce-` headers, data as the payload).

use std::time::Duration;

use async_nats::client::PublishErrorKind;
use async_nats::header::{HeaderMap, HeaderName};
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::OnceCell;

use super::{DeliveryError, Sink};
use crate::cloudevent::{BinaryName, CloudEvent, ORIGIN_ID, STRUCTURED_CONTENT_TYPE};
use crate::config::{CeMode, NatsConfig, NatsType};
use crate::metrics::NatsMetrics;
use gateway_common::nats::{max_subject_len, request_reply_len};

/// The longest subject an event may have: beside the reply subject a
/// JetStream publish carries, it must fit on one NATS protocol line.
const MAX_SUBJECT: usize = max_subject_len(request_reply_len("_INBOX"));

/// Renders `NATS_SUBJECT` for one event: `{gateway}`, `{namespace}`, `{src}` and
/// `{type}` are replaced, with characters NATS forbids in a token made `_`. The
/// template is split into its parts once: replacing the placeholders in the
/// whole text for every event showed in the transformer's profile.
#[derive(Debug, Clone)]
pub struct SubjectTemplate {
    parts: Vec<Part>,
    /// What a stream must cover to hold every rendered subject.
    stream_subject: String,
}

/// A piece of a subject template: text (the gateway and namespace already in
/// it), or a placeholder filled from the event.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Type,
    Src,
}

impl SubjectTemplate {
    pub fn new(template: &str, gateway: &str, namespace: &str) -> Self {
        let gateway = token(gateway);
        let namespace = token(namespace);
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(c) = rest.chars().next() {
            let found = ["{gateway}", "{namespace}", "{type}", "{src}"]
                .into_iter()
                .find(|p| rest.starts_with(p));
            let Some(placeholder) = found else {
                text.push(c);
                rest = &rest[c.len_utf8()..];
                continue;
            };
            rest = &rest[placeholder.len()..];
            let part = match placeholder {
                "{gateway}" => {
                    text.push_str(&gateway);
                    continue;
                }
                "{namespace}" => {
                    text.push_str(&namespace);
                    continue;
                }
                "{type}" => Part::Type,
                _ => Part::Src,
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        SubjectTemplate {
            stream_subject: stream_subject(template, &gateway, &namespace),
            parts,
        }
    }

    pub fn render(&self, event: &CloudEvent) -> String {
        let src = event.subject.as_deref().unwrap_or(&event.source);
        let mut out = String::with_capacity(64 + src.len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Type => push_token(&mut out, &event.ty),
                Part::Src => {
                    for (i, t) in src.split('.').enumerate() {
                        if i > 0 {
                            out.push('.');
                        }
                        push_token(&mut out, t);
                    }
                }
            }
        }
        if out.is_empty() || out.starts_with('.') || out.ends_with('.') || out.contains("..") {
            tidy(&out)
        } else {
            out
        }
    }

    /// The subjects a stream must cover to hold every rendered subject.
    pub fn stream_subjects(&self) -> Vec<String> {
        vec![self.stream_subject.clone()]
    }
}

/// The template as a stream's subject: `{src}` as the last token becomes `>`
/// (a key may contain dots), elsewhere `*`.
fn stream_subject(template: &str, gateway: &str, namespace: &str) -> String {
    let tokens: Vec<&str> = template.split('.').collect();
    let last = tokens.len().saturating_sub(1);
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match *t {
            "{src}" if i == last => ">".to_owned(),
            "{src}" | "{type}" => "*".to_owned(),
            t => t
                .replace("{gateway}", gateway)
                .replace("{namespace}", namespace),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Whether every subject `pattern` matches is one `filter` matches too
/// (`*` one token, `>` the rest).
fn covers(filter: &str, pattern: &str) -> bool {
    let mut f = filter.split('.');
    let mut p = pattern.split('.');
    loop {
        match (f.next(), p.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// One subject token: no whitespace, `*`, `>` or `.`, and never empty.
fn token(s: &str) -> String {
    let mut t = String::with_capacity(s.len());
    push_token(&mut t, s);
    t
}

fn push_token(out: &mut String, s: &str) {
    if s.is_empty() {
        out.push('_');
        return;
    }
    out.extend(s.chars().map(|c| {
        if c.is_whitespace() || c == '*' || c == '>' || c == '.' {
            '_'
        } else {
            c
        }
    }));
}

/// Fills empty tokens left by leading, trailing or doubled dots.
fn tidy(subject: &str) -> String {
    subject
        .split('.')
        .map(|t| if t.is_empty() { "_" } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

/// The message for one event, in the binding's structured or binary mode.
fn message(mode: CeMode, event: &CloudEvent) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    match mode {
        CeMode::Structured => {
            headers.insert("content-type", STRUCTURED_CONTENT_TYPE);
            (headers, Bytes::from(event.to_structured_json()))
        }
        CeMode::Binary => {
            // Straight into NATS headers, with their names built at compile
            // time: through an HTTP header map first, each event's headers
            // were hashed twice, which showed in the transformer's profile.
            event.binary_headers(|name, value| {
                let name = match name {
                    BinaryName::SpecVersion => const { HeaderName::from_static("ce-specversion") },
                    BinaryName::Id => const { HeaderName::from_static("ce-id") },
                    BinaryName::Source => const { HeaderName::from_static("ce-source") },
                    BinaryName::Type => const { HeaderName::from_static("ce-type") },
                    BinaryName::Subject => const { HeaderName::from_static("ce-subject") },
                    BinaryName::Time => const { HeaderName::from_static("ce-time") },
                    BinaryName::DataSchema => const { HeaderName::from_static("ce-dataschema") },
                    // The one value not percent-encoded: a header line must
                    // not break, so none with a control character.
                    BinaryName::ContentType
                        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) =>
                    {
                        return
                    }
                    BinaryName::ContentType => const { HeaderName::from_static("content-type") },
                    BinaryName::Extension(ORIGIN_ID) => {
                        const { HeaderName::from_static("ce-originid") }
                    }
                    BinaryName::Extension(k) => match format!("ce-{k}").parse() {
                        Ok(n) => n,
                        Err(_) => return,
                    },
                };
                headers.insert(name, value.into_owned());
            });
            (headers, event.data.clone())
        }
    }
}

pub struct NatsSink {
    name: String,
    identity: String,
    client: async_nats::Client,
    jetstream: Option<jetstream::Context>,
    stream: String,
    subjects: SubjectTemplate,
    mode: CeMode,
    timeout: Duration,
    /// Set once the stream exists: what to tell the operator when it does
    /// not take this gateway's subjects.
    stream_ready: OnceCell<Option<String>>,
    metrics: NatsMetrics,
}

impl NatsSink {
    pub fn new(
        client: async_nats::Client,
        config: &NatsConfig,
        subjects: SubjectTemplate,
        timeout: Duration,
        metrics: NatsMetrics,
    ) -> Self {
        let label = |url: &str| match config.ty {
            NatsType::Standard => format!("nats:{url}"),
            NatsType::Streaming => format!("jetstream:{url}/{}", config.stream),
        };
        let jetstream = (config.ty == NatsType::Streaming).then(|| jetstream::new(client.clone()));
        NatsSink {
            // The name is a metrics label and is logged: no secret in it.
            name: label(&gateway_common::redact::urls(&config.connection.url)),
            identity: label(&config.connection.url),
            client,
            jetstream,
            stream: config.stream.clone(),
            subjects,
            mode: config.ce_mode,
            timeout,
            stream_ready: OnceCell::new(),
            metrics,
        }
    }

    /// Creates the stream when it is missing; an existing stream is left as the
    /// operator configured it, and one that does not take this gateway's
    /// subjects is said to be so, at once and with every failed publish.
    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<Option<&str>, DeliveryError> {
        self.stream_ready
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: self.stream.clone(),
                    subjects: self.subjects.stream_subjects(),
                    storage: stream::StorageType::File,
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                };
                let s = js.get_or_create_stream(config).await.map_err(|e| {
                    let e = e.to_string();
                    DeliveryError::retryable(match gateway_common::nats::without_jetstream(&e) {
                        Some(hint) => format!(
                            "JetStream stream {}: {e} ({hint}, or set NATS_TYPE=Standard)",
                            self.stream
                        ),
                        None => format!("JetStream stream {}: {e}", self.stream),
                    })
                })?;
                let has = s.cached_info().config.subjects.clone();
                tracing::info!(stream = %self.stream, subjects = ?has, "JetStream stream ready");
                let needed = self.subjects.stream_subjects();
                let missing: Vec<&String> = needed
                    .iter()
                    .filter(|n| !has.iter().any(|h| covers(h, n)))
                    .collect();
                if missing.is_empty() {
                    return Ok(None);
                }
                let hint = format!(
                    "stream {} takes {has:?}, not {missing:?}: add those subjects to it, or set \
                     NATS_STREAM to a stream that takes them (or NATS_SUBJECT to subjects it takes)",
                    self.stream
                );
                tracing::error!("{hint}");
                Ok(Some(hint))
            })
            .await
            .map(Option::as_deref)
    }

    async fn publish(&self, event: &CloudEvent) -> Result<(), DeliveryError> {
        let subject = self.subjects.render(event);
        // A subject too long for the server's protocol line would not be
        // refused alone: the server would close the connection (and the
        // retry would close it again). No retry can help such an event.
        if subject.len() > MAX_SUBJECT {
            self.metrics.failures.inc();
            return Err(DeliveryError::permanent(format!(
                "the subject for configuration key {:?} is {} bytes; NATS takes at most {MAX_SUBJECT}",
                event.subject.as_deref().unwrap_or_default(),
                subject.len()
            )));
        }
        let (headers, payload) = message(self.mode, event);
        let result = match &self.jetstream {
            None => {
                self.client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| {
                        let message = format!("NATS publish: {e}");
                        match e.kind() {
                            PublishErrorKind::MaxPayloadExceeded
                            | PublishErrorKind::InvalidSubject => DeliveryError::permanent(message),
                            PublishErrorKind::Send => DeliveryError::retryable(message),
                        }
                    })
            }
            Some(js) => {
                let hint = self.ensure_stream(js).await?;
                let publish = PublishMessage::build()
                    .payload(payload)
                    .headers(headers)
                    .message_id(&event.id);
                let acking = tokio::time::timeout(self.timeout, async {
                    let ack = js
                        .send_publish(subject, publish)
                        .await
                        .map_err(|e| e.to_string())?;
                    ack.await.map_err(|e| e.to_string())
                });
                // An acknowledgement due when the connection drops never
                // comes: retried at once (the stream drops the copy, by its
                // Nats-Msg-Id, if the first publish was stored), not after
                // the whole timeout.
                match self.metrics.connection.unless_lost(acking).await {
                    None => Err(DeliveryError::retryable(
                        "the NATS connection dropped before the JetStream acknowledgement came",
                    )),
                    Some(Ok(Ok(ack))) => {
                        self.metrics.acked.inc();
                        if ack.duplicate {
                            self.metrics.duplicates.inc();
                        }
                        Ok(())
                    }
                    Some(Ok(Err(e))) => Err(DeliveryError::retryable(match hint {
                        Some(hint) => format!("JetStream publish: {e} ({hint})"),
                        None => format!("JetStream publish: {e}"),
                    })),
                    Some(Err(_)) => Err(DeliveryError::retryable(format!(
                        "JetStream publish timed out after {:?} waiting for the acknowledgement",
                        self.timeout
                    ))),
                }
            }
        };
        match &result {
            Ok(()) => self.metrics.published.inc(),
            Err(_) => self.metrics.failures.inc(),
        };
        result
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn identity(&self) -> &str {
        &self.identity
    }

    fn deliver<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.publish(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_subject_covers_what_it_matches_all_of() {
        for (filter, pattern, covered) in [
            ("g.>", "g.>", true),
            (">", "g.>", true),
            ("g.*", "g.*", true),
            ("*.*", "g.*", true),
            ("g.>", "g.*.x", true),
            ("g.*", "g.>", false),
            ("other.>", "g.>", false),
            ("g.a.>", "g.>", false),
            ("g", "g.>", false),
            ("g.x", "g.x", true),
            ("g.x", "g.x.y", false),
        ] {
            assert_eq!(
                covers(filter, pattern),
                covered,
                "{filter} covers {pattern}"
            );
        }
    }

    fn ev(subject: &str) -> CloudEvent {
        CloudEvent::from_gateway_event("gw", "t", subject, Bytes::new())
    }

    #[test]
    fn subjects_render_and_stay_valid() {
        let t = SubjectTemplate::new("{gateway}.{src}", "my gw", "default");
        assert_eq!(t.render(&ev("alpha")), "my_gw.alpha");
        assert_eq!(
            t.render(&ev("webhook.fooConfig")),
            "my_gw.webhook.fooConfig"
        );
        assert_eq!(t.render(&ev("a b*>")), "my_gw.a_b__");
        assert_eq!(t.render(&ev(".x.")), "my_gw._.x._");
        assert_eq!(t.render(&ev("")), "my_gw._");
        assert_eq!(t.render(&ev("a..b")), "my_gw.a._.b");
        let u = SubjectTemplate::new("{type}.é.{src}{src}", "g", "n");
        assert_eq!(u.render(&ev("k")), "t.é.kk");
        let u = SubjectTemplate::new("{gateway}..{unknown}.", "g", "n");
        assert_eq!(u.render(&ev("k")), "g._.{unknown}._");
        assert_eq!(t.stream_subjects(), vec!["my_gw.>"]);
        let t = SubjectTemplate::new("events.{src}.{namespace}", "g", "prod");
        assert_eq!(t.render(&ev("k")), "events.k.prod");
        assert_eq!(t.stream_subjects(), vec!["events.*.prod"]);
    }

    #[test]
    fn binary_messages_carry_what_binary_http_carries() {
        let mut event = ev("a key");
        event
            .extensions
            .push(("traceparent".into(), "00-ab-cd-01".into()));
        let (headers, data) = message(CeMode::Binary, &event);
        assert_eq!(data, event.data);
        let http = event.to_binary_headers();
        assert_eq!(headers.len(), http.len());
        for (name, value) in &http {
            let nats = headers.get(name.as_str()).map(|v| v.as_str());
            assert_eq!(nats, value.to_str().ok(), "{name}");
        }
        assert_eq!(
            headers.get("ce-subject").map(|v| v.as_str()),
            Some("a%20key")
        );
        event.datacontenttype = Some("text/plain\r\nX: y".into());
        let (headers, _) = message(CeMode::Binary, &event);
        assert!(headers.get("content-type").is_none());
    }
}
