//! One configuration of the AMQP source, parsed and checked before anything
//! connects, so that a mistake is a 400 naming the field (the configuration
//! shows as Error) rather than a consumer that retries forever. The field names
//! follow Argo Events' AMQP event source, so its configurations carry over.
//!
//! ```yaml
//! url: amqp://rabbitmq:5672/%2f     # or urlFromEnv: AMQP_URL (the default)
//! queue: orders                     # the queue to consume (declared if missing)
//! exchangeName: shop                # optional: bind the queue to this exchange
//! exchangeType: topic               #   direct, fanout, topic, headers or x-...
//! routingKey: "orders.#"            #   the binding key
//! exchangeDeclare: {durable: true, autoDelete: false, internal: false, passive: false}
//! queueDeclare: {durable: true, autoDelete: false, exclusive: false, passive: false,
//!                arguments: {x-queue-type: quorum}}
//! consume: {consumerTag: gateway, exclusive: false, noLocal: false, prefetch: 64}
//! auth: {username: guest, password: guest}   # or in the URL
//! jsonBody: true                    # the body is JSON: embed it, not a string
//! caFile: /etc/rabbitmq/ca.pem      # for amqps:// with a private CA
//! ```

use std::str::FromStr;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use serde::Deserialize;

/// The variable a configuration's URL comes from when it names none.
pub const DEFAULT_URL_VAR: &str = "AMQP_URL";
/// The URL when neither the configuration nor the environment names one.
pub const DEFAULT_URL: &str = "amqp://127.0.0.1:5672/%2f";
/// The heartbeat asked for when the URL names none (`?heartbeat=`), in
/// seconds. A connection gone silent (a partition, a paused broker) is found
/// only by missed heartbeats, after two intervals: RabbitMQ proposes 60 s.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    url: Option<String>,
    url_from_env: Option<String>,
    queue: Option<String>,
    exchange_name: Option<String>,
    exchange_type: Option<String>,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    exchange_declare: ExchangeDeclare,
    #[serde(default)]
    queue_declare: QueueDeclare,
    #[serde(default)]
    consume: Consume,
    auth: Option<Auth>,
    #[serde(default)]
    json_body: bool,
    /// PEM CA certificates to trust for an `amqps://` broker with a
    /// private CA (instead of the Mozilla roots).
    ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ExchangeDeclare {
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub passive: bool,
}

impl Default for ExchangeDeclare {
    fn default() -> Self {
        ExchangeDeclare {
            durable: true,
            auto_delete: false,
            internal: false,
            passive: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct QueueDeclare {
    pub name: Option<String>,
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive: bool,
    pub passive: bool,
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

impl Default for QueueDeclare {
    fn default() -> Self {
        QueueDeclare {
            name: None,
            durable: true,
            auto_delete: false,
            exclusive: false,
            passive: false,
            arguments: serde_json::Map::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Consume {
    pub consumer_tag: String,
    pub exclusive: bool,
    pub no_local: bool,
    /// Messages the broker may hand over before the first is acknowledged.
    pub prefetch: u16,
    /// Refused when true: see [`Spec::parse`].
    pub auto_ack: bool,
}

impl Default for Consume {
    fn default() -> Self {
        Consume {
            consumer_tag: String::new(),
            exclusive: false,
            no_local: false,
            prefetch: 64,
            auto_ack: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Auth {
    username: String,
    password: String,
}

/// The exchange a queue is bound to.
#[derive(Debug, Clone)]
pub struct Binding {
    pub exchange: String,
    pub kind: lapin::ExchangeKind,
    pub routing_key: String,
    pub declare: ExchangeDeclare,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Spec {
    /// With credentials: never log it, log [`Spec::where_`] instead.
    pub uri: AMQPUri,
    /// The queue's name; empty for a server-named queue (only with a binding).
    pub queue: String,
    pub queue_declare: QueueDeclare,
    pub queue_arguments: FieldTable,
    pub binding: Option<Binding>,
    pub consume: Consume,
    pub json_body: bool,
    /// The PEM text of `caFile`.
    pub tls_ca: Option<String>,
}

/// The broker's URL: `url`, or the variable `urlFromEnv` names, or else
/// the default variable, or the default URL.
fn url_of(url: Option<String>, from_env: Option<String>) -> Result<String, String> {
    match (url, from_env) {
        (Some(_), Some(_)) => Err("give either url or urlFromEnv, not both".into()),
        (Some(url), None) => Ok(url),
        (None, Some(var)) => std::env::var(&var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or(format!("urlFromEnv: the variable {var} is not set")),
        (None, None) => Ok(std::env::var(DEFAULT_URL_VAR)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_owned())),
    }
}

/// The URL parsed, with the default heartbeat and `auth`'s credentials.
fn uri_of(url: String, auth: Option<Auth>) -> Result<AMQPUri, String> {
    // The parser's message may quote the URL, password and all: say only
    // what shape is expected.
    let mut uri = AMQPUri::from_str(&url).map_err(|_| {
        "url is not an AMQP URL (amqp://user:password@host:port/vhost or amqps://...)".to_owned()
    })?;
    uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
    if let Some(auth) = auth {
        uri.authority.userinfo.username = auth.username;
        uri.authority.userinfo.password = auth.password;
    }
    Ok(uri)
}

/// Refuses what would lose messages or take none.
fn check_consume(consume: &Consume) -> Result<(), String> {
    if consume.auto_ack {
        return Err(
            "consume.autoAck: this server acknowledges each message only once \
                    the gateway has taken it, so that none is lost; remove autoAck"
                .into(),
        );
    }
    if consume.prefetch == 0 {
        return Err("consume.prefetch must be at least 1".into());
    }
    Ok(())
}

/// The queue `queue` and `queueDeclare.name` name (empty: the server names
/// one); they must not name two.
fn queue_of(queue: Option<String>, declared: Option<String>) -> Result<String, String> {
    match (queue, declared) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "queue ({a:?}) and queueDeclare.name ({b:?}) name different queues"
        )),
        (Some(q), _) | (None, Some(q)) => Ok(q),
        (None, None) => Ok(String::new()),
    }
}

/// The kind of `exchange` that `exchangeType` names; without one, only a
/// passive declaration (of an exchange that exists) will do.
fn exchange_kind(
    exchange: &str,
    kind: Option<&str>,
    declare: &ExchangeDeclare,
) -> Result<lapin::ExchangeKind, String> {
    match kind {
        Some("direct") => Ok(lapin::ExchangeKind::Direct),
        Some("fanout") => Ok(lapin::ExchangeKind::Fanout),
        Some("topic") => Ok(lapin::ExchangeKind::Topic),
        Some("headers") => Ok(lapin::ExchangeKind::Headers),
        Some(custom) if custom.starts_with("x-") => {
            Ok(lapin::ExchangeKind::Custom(custom.to_owned()))
        }
        Some(other) => Err(format!(
            "exchangeType {other:?}: expected direct, fanout, topic, headers or x-..."
        )),
        None if declare.passive => Ok(lapin::ExchangeKind::Direct),
        None => Err(format!(
            "exchangeName {exchange:?} needs an exchangeType (or exchangeDeclare.passive)"
        )),
    }
}

/// The PEM text of `caFile`, which must hold a certificate.
fn read_ca(path: &std::path::Path) -> Result<String, String> {
    let pem =
        std::fs::read_to_string(path).map_err(|e| format!("caFile {}: {e}", path.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "caFile {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(pem)
}

impl Spec {
    /// Parses YAML or JSON; every error names the field at fault.
    pub fn parse(text: &str) -> Result<Spec, String> {
        let raw: RawSpec =
            serde_norway::from_str(text).map_err(|e| format!("invalid AMQP configuration: {e}"))?;
        let uri = uri_of(url_of(raw.url, raw.url_from_env)?, raw.auth)?;
        check_consume(&raw.consume)?;
        let queue = queue_of(raw.queue, raw.queue_declare.name.clone())?;
        let binding = match raw.exchange_name.filter(|e| !e.is_empty()) {
            None => None,
            Some(exchange) => Some(Binding {
                kind: exchange_kind(
                    &exchange,
                    raw.exchange_type.as_deref(),
                    &raw.exchange_declare,
                )?,
                exchange,
                routing_key: raw.routing_key,
                declare: raw.exchange_declare,
            }),
        };
        if queue.is_empty() && binding.is_none() {
            return Err(
                "name a queue (queue or queueDeclare.name) or an exchangeName to bind one to"
                    .into(),
            );
        }
        let mut queue_declare = raw.queue_declare;
        if queue.is_empty() {
            // A server-named queue lives as long as this consumer.
            queue_declare.durable = false;
            queue_declare.exclusive = true;
            queue_declare.auto_delete = true;
            queue_declare.passive = false;
        }
        let queue_arguments = field_table(&queue_declare.arguments)
            .map_err(|e| format!("queueDeclare.arguments.{e}"))?;
        let tls_ca = raw.ca_file.as_deref().map(read_ca).transpose()?;
        Ok(Spec {
            uri,
            queue,
            queue_declare,
            queue_arguments,
            binding,
            consume: raw.consume,
            json_body: raw.json_body,
            tls_ca,
        })
    }

    /// Where the broker is, without credentials: for logs and messages.
    pub fn where_(&self) -> String {
        let a = &self.uri.authority;
        format!("{}:{}/{}", a.host, a.port, self.uri.vhost)
    }
}

/// Queue arguments (`x-message-ttl`, `x-queue-type`, ...) as AMQP values.
fn field_table(args: &serde_json::Map<String, serde_json::Value>) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => AMQPValue::LongLongInt(i),
                (None, Some(f)) => AMQPValue::Double(f),
                (None, None) => return Err(format!("{k}: {n} is out of range")),
            },
            _ => {
                return Err(format!(
                    "{k}: only strings, numbers and booleans are supported"
                ))
            }
        };
        table.insert(ShortString::from(k.as_str()), value);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_alone_is_enough_and_defaults_are_durable() {
        let s = Spec::parse("url: amqp://u:p@broker:5673/v\nqueue: orders").unwrap();
        assert_eq!(s.queue, "orders");
        assert!(s.queue_declare.durable && !s.queue_declare.exclusive);
        assert!(s.binding.is_none());
        assert_eq!(s.consume.prefetch, 64);
        assert_eq!(s.where_(), "broker:5673/v");
    }

    #[test]
    fn an_exchange_binding_with_a_server_named_queue() {
        let s = Spec::parse(
            r#"{"url": "amqp://h", "exchangeName": "shop", "exchangeType": "topic", "routingKey": "a.#"}"#,
        )
        .unwrap();
        let b = s.binding.unwrap();
        assert_eq!(
            (b.exchange.as_str(), b.routing_key.as_str()),
            ("shop", "a.#")
        );
        assert!(s.queue.is_empty() && s.queue_declare.exclusive && s.queue_declare.auto_delete);
    }

    #[test]
    fn auth_replaces_the_urls_credentials_and_arguments_are_typed() {
        let s = Spec::parse(
            "url: amqp://a:b@h/%2f\nqueue: q\nauth: {username: u, password: p}\nqueueDeclare: {arguments: {x-message-ttl: 1000, x-queue-type: quorum}}",
        )
        .unwrap();
        assert_eq!(s.uri.authority.userinfo.username, "u");
        assert_eq!(s.uri.authority.userinfo.password, "p");
        assert_eq!(s.queue_arguments.inner().len(), 2);
    }

    #[test]
    fn the_heartbeat_is_ten_seconds_unless_the_url_says() {
        let s = Spec::parse("url: amqp://h/%2f\nqueue: q").unwrap();
        assert_eq!(s.uri.query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        let s = Spec::parse("url: amqp://h/%2f?heartbeat=3\nqueue: q").unwrap();
        assert_eq!(s.uri.query.heartbeat, Some(3));
    }

    #[test]
    fn mistakes_name_the_field_and_never_the_password() {
        for (text, needle) in [
            ("queue: q\nconsume: {autoAck: true}", "autoAck"),
            ("url: amqp://h\n", "name a queue"),
            ("url: amqp://h\nexchangeName: e", "exchangeType"),
            (
                "url: amqp://h\nexchangeName: e\nexchangeType: fan",
                "exchangeType",
            ),
            (
                "url: amqp://h\nqueue: a\nqueueDeclare: {name: b}",
                "different queues",
            ),
            ("url: amqp://h\nqueue: q\ncolour: red", "unknown field"),
            (
                "url: amqp://h\nqueue: q\nconsume: {prefetch: 0}",
                "prefetch",
            ),
            (
                "urlFromEnv: SURELY_NOT_SET_ANYWHERE\nqueue: q",
                "SURELY_NOT_SET_ANYWHERE",
            ),
            (
                "url: amqp://h\nqueue: q\nqueueDeclare: {arguments: {x: [1]}}",
                "arguments.x",
            ),
            (
                "url: amqp://h\nqueue: q\ncaFile: /surely/not/here.pem",
                "caFile /surely/not/here.pem",
            ),
        ] {
            let e = Spec::parse(text).err().unwrap_or_default();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let e = Spec::parse("url: 'htp://user:s3cret@h'\nqueue: q").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
