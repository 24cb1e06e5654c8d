//! One configuration of the Kafka source, parsed and checked before anything
//! connects, so that a mistake is a 400 naming the field (the configuration
//! shows as Error) rather than a consumer that retries forever. The field names
//! are those of Argo Events' Kafka event source, so its configurations carry
//! over; secrets come from files (a mounted Kubernetes Secret) or from the
//! server's environment, and no message ever shows one.
//!
//! ```yaml
//! url: kafka-0:9092,kafka-1:9092     # the bootstrap brokers
//! topic: orders
//! consumerGroup: {groupName: gateway, oldest: true, rebalanceStrategy: range}
//! # or, without a group: partition: "0"
//! jsonBody: true
//! limitEventsPerSecond: 500
//! tls: {caCertFile: /etc/kafka/ca.pem, clientCertFile: ..., clientKeyFile: ...}
//! sasl: {mechanism: SCRAM-SHA-512, userFromEnv: KAFKA_USER, passwordFile: /etc/kafka/password}
//! version: "3.7.0"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where Argo's secret selectors (`{name, key}`) are looked for: the
/// directory under which each Secret is mounted as `NAME/KEY`.
pub const SECRETS_DIR_VAR: &str = "KAFKA_SECRETS_DIR";
pub const DEFAULT_SECRETS_DIR: &str = "/etc/kafka-gateway/secrets";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    url: Option<String>,
    topic: Option<String>,
    partition: Option<Partition>,
    consumer_group: Option<RawGroup>,
    #[serde(default)]
    json_body: bool,
    #[serde(default)]
    limit_events_per_second: u64,
    tls: Option<RawTls>,
    sasl: Option<RawSasl>,
    version: Option<String>,
}

/// Argo writes the partition as a string; a number is taken too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Partition {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGroup {
    group_name: Option<String>,
    #[serde(default)]
    oldest: bool,
    rebalance_strategy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTls {
    ca_cert_file: Option<PathBuf>,
    ca_cert_secret: Option<SecretRef>,
    client_cert_file: Option<PathBuf>,
    client_cert_secret: Option<SecretRef>,
    client_key_file: Option<PathBuf>,
    client_key_secret: Option<SecretRef>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSasl {
    mechanism: Option<String>,
    user: Option<String>,
    user_file: Option<PathBuf>,
    user_from_env: Option<String>,
    user_secret: Option<SecretRef>,
    password_file: Option<PathBuf>,
    password_from_env: Option<String>,
    password_secret: Option<SecretRef>,
}

/// Argo's `SecretKeySelector`: the file `KEY` of the Secret `NAME` mounted
/// under [`SECRETS_DIR_VAR`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretRef {
    name: String,
    key: String,
    #[serde(default)]
    optional: bool,
}

/// How the configuration reads its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// As a member of a consumer group, sharing the partitions.
    Group {
        name: String,
        /// Start at the oldest message when the group has no offset yet
        /// (otherwise at the newest).
        oldest: bool,
        /// librdkafka's `partition.assignment.strategy`.
        strategy: &'static str,
    },
    /// One partition alone, no group membership. Offsets are still committed,
    /// under the group name [`Spec::offsets_group`], so a restart resumes.
    Partition(i32),
}

/// The SASL mechanisms offered.
pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

#[derive(Clone)]
pub struct Sasl {
    pub mechanism: &'static str,
    pub user: String,
    /// Never logged, never in a message.
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sasl({} as {})", self.mechanism, self.user)
    }
}

/// PEM texts.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub insecure_skip_verify: bool,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The bootstrap brokers, `host:port` comma-separated.
    pub brokers: String,
    pub topic: String,
    pub reading: Reading,
    pub json_body: bool,
    /// At most this many events a second; 0 is no limit.
    pub limit_per_second: u64,
    pub tls: Option<Tls>,
    pub sasl: Option<Sasl>,
    /// The broker version, as a hint for brokers that cannot say theirs.
    pub version: Option<String>,
}

impl Spec {
    /// Parses YAML or JSON; every error names the field at fault.
    pub fn parse(text: &str) -> Result<Spec, String> {
        let raw: RawSpec = serde_norway::from_str(text)
            .map_err(|e| format!("invalid Kafka configuration: {e}"))?;
        let brokers = brokers(raw.url.as_deref())?;
        let topic = raw.topic.ok_or("topic: the topic to read is missing")?;
        check_topic(&topic)?;
        let reading = match (raw.consumer_group, raw.partition) {
            (Some(_), Some(_)) => {
                return Err(
                    "give either consumerGroup (share the topic's partitions) or \
                     partition (read one partition alone), not both"
                        .into(),
                )
            }
            (None, None) => return Err("give consumerGroup (with groupName) or partition".into()),
            (Some(g), None) => group(g)?,
            (None, Some(p)) => Reading::Partition(partition(p)?),
        };
        let version = raw
            .version
            .map(|v| check_version(&v).map(|()| v))
            .transpose()?;
        Ok(Spec {
            brokers,
            topic,
            reading,
            json_body: raw.json_body,
            limit_per_second: raw.limit_events_per_second,
            tls: raw.tls.map(tls).transpose()?,
            sasl: raw.sasl.map(sasl).transpose()?,
            version,
        })
    }

    /// The group offsets are committed under: the consumer group, or for a
    /// single partition a name of the configuration's own.
    pub fn offsets_group(&self, src: &str) -> String {
        match &self.reading {
            Reading::Group { name, .. } => name.clone(),
            Reading::Partition(_) => format!("kafka-gateway.{src}"),
        }
    }
}

fn brokers(url: Option<&str>) -> Result<String, String> {
    let url = url.ok_or("url: the brokers (host:port, comma-separated) are missing")?;
    let mut list = Vec::new();
    for part in url.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        // Argo's examples sometimes carry a scheme; librdkafka wants none.
        let hostport = part
            .strip_prefix("tcp://")
            .or_else(|| part.strip_prefix("kafka://"))
            .unwrap_or(part);
        let ok = hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(format!("url: {part:?} is not host:port"));
        }
        list.push(hostport);
    }
    if list.is_empty() {
        return Err("url: no broker given".into());
    }
    Ok(list.join(","))
}

/// Kafka's own rule for topic names.
fn check_topic(topic: &str) -> Result<(), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty()
        || topic.len() > 249
        || !topic.chars().all(legal)
        || topic == "."
        || topic == ".."
    {
        return Err(format!(
            "topic: {topic:?} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
        ));
    }
    Ok(())
}

fn partition(p: Partition) -> Result<i32, String> {
    let n = match p {
        Partition::Number(n) => n,
        Partition::Text(t) => t
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("partition: {t:?} is not a partition number"))?,
    };
    i32::try_from(n)
        .ok()
        .filter(|n| *n >= 0)
        .ok_or(format!("partition: {n} is not a partition number"))
}

fn group(g: RawGroup) -> Result<Reading, String> {
    let name = g
        .group_name
        .filter(|n| !n.trim().is_empty())
        .ok_or("consumerGroup.groupName: the group's name is missing")?;
    let strategy = match g.rebalance_strategy.as_deref().unwrap_or("range") {
        "range" => "range",
        "roundrobin" => "roundrobin",
        // librdkafka's sticky assignor is the cooperative one.
        "sticky" => "cooperative-sticky",
        other => {
            return Err(format!(
                "consumerGroup.rebalanceStrategy: {other:?} is not one of range, roundrobin, sticky"
            ))
        }
    };
    Ok(Reading::Group {
        name,
        oldest: g.oldest,
        strategy,
    })
}

fn check_version(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split('.').collect();
    if (2..=4).contains(&parts.len()) && parts.iter().all(|p| p.parse::<u32>().is_ok()) {
        Ok(())
    } else {
        Err(format!(
            "version: {v:?} is not a Kafka version such as 3.7.0"
        ))
    }
}

fn tls(t: RawTls) -> Result<Tls, String> {
    let cert = pem(t.client_cert_file, t.client_cert_secret, "tls.clientCert")?;
    let key = pem(t.client_key_file, t.client_key_secret, "tls.clientKey")?;
    if cert.is_some() != key.is_some() {
        return Err("tls: give both the client certificate and its key, or neither".into());
    }
    Ok(Tls {
        ca: pem(t.ca_cert_file, t.ca_cert_secret, "tls.caCert")?,
        cert,
        key,
        insecure_skip_verify: t.insecure_skip_verify,
    })
}

/// A PEM text from `FIELDFile` or `FIELDSecret`.
fn pem(
    file: Option<PathBuf>,
    secret: Option<SecretRef>,
    field: &str,
) -> Result<Option<String>, String> {
    let path = match (file, secret) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{field}: give {field}File or {field}Secret, not both"
            ))
        }
        (Some(f), None) => f,
        (None, Some(s)) => match secret_path(&s) {
            Some(p) => p,
            None => return Ok(None),
        },
        (None, None) => return Ok(None),
    };
    let text = read_file(&path, field)?;
    if !text.contains("-----BEGIN") {
        return Err(format!("{field}: {} holds no PEM text", path.display()));
    }
    Ok(Some(text))
}

fn sasl(s: RawSasl) -> Result<Sasl, String> {
    let given = s.mechanism.as_deref().unwrap_or("PLAIN");
    let mechanism = MECHANISMS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(given))
        .ok_or(format!(
            "sasl.mechanism: {given:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
        ))?;
    let user = secret(
        "sasl.user",
        s.user,
        s.user_file,
        s.user_from_env,
        s.user_secret,
    )?;
    let password = secret(
        "sasl.password",
        None,
        s.password_file,
        s.password_from_env,
        s.password_secret,
    )?;
    Ok(Sasl {
        mechanism,
        user,
        password,
    })
}

/// A credential from exactly one of: the value itself (the user name only),
/// a file, a variable of the server's environment, or a mounted Secret.
fn secret(
    field: &str,
    value: Option<String>,
    file: Option<PathBuf>,
    env: Option<String>,
    selector: Option<SecretRef>,
) -> Result<String, String> {
    let given = [
        value.is_some(),
        file.is_some(),
        env.is_some(),
        selector.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(format!(
            "{field}: give one of {field}File, {field}FromEnv, {field}Secret"
        ));
    }
    let text = if let Some(v) = value {
        v
    } else if let Some(f) = file {
        read_file(&f, field)?
    } else if let Some(var) = env {
        std::env::var(&var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or(format!("{field}FromEnv: the variable {var} is not set"))?
    } else if let Some(s) = selector {
        let path = secret_path(&s).ok_or(format!(
            "{field}Secret: the secret {}/{} is marked optional and is not there",
            s.name, s.key
        ))?;
        read_file(&path, field)?
    } else {
        return Err(format!(
            "{field}: missing ({field}File, {field}FromEnv or {field}Secret)"
        ));
    };
    let text = text.trim_end_matches(['\r', '\n']).to_owned();
    if text.is_empty() {
        return Err(format!("{field}: empty"));
    }
    Ok(text)
}

/// The mounted file of a secret selector; `None` for an optional one that
/// is not there.
fn secret_path(s: &SecretRef) -> Option<PathBuf> {
    let dir = std::env::var(SECRETS_DIR_VAR)
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_SECRETS_DIR.to_owned());
    let path = Path::new(&dir).join(&s.name).join(&s.key);
    (!s.optional || path.exists()).then_some(path)
}

/// A file's text; the message names the field and the path, never the content.
fn read_file(path: &Path, field: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{field}: {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_configuration_as_argo_writes_it() {
        let s = Spec::parse(
            "url: tcp://k1:9092, k2:9093\ntopic: orders\njsonBody: true\n\
             consumerGroup: {groupName: g, oldest: true, rebalanceStrategy: sticky}\n\
             limitEventsPerSecond: 10\nversion: \"2.8.1\"",
        )
        .expect("parses");
        assert_eq!(s.brokers, "k1:9092,k2:9093");
        assert_eq!(
            s.reading,
            Reading::Group {
                name: "g".into(),
                oldest: true,
                strategy: "cooperative-sticky"
            }
        );
        assert_eq!(s.limit_per_second, 10);
        assert!(s.json_body);
        assert_eq!(s.offsets_group("x"), "g");
    }

    #[test]
    fn a_partition_as_text_or_number() {
        for p in ["\"3\"", "3"] {
            let s = Spec::parse(&format!("url: k:9092\ntopic: t\npartition: {p}")).expect("parses");
            assert_eq!(s.reading, Reading::Partition(3));
            assert_eq!(s.offsets_group("cfg"), "kafka-gateway.cfg");
        }
    }

    #[test]
    fn mistakes_name_the_field_and_never_a_secret() {
        std::env::set_var("KAFKA_SPEC_TEST_PASSWORD", "hunter2");
        let cases = [
            ("topic: t\npartition: 0", "url"),
            ("url: k:9092\npartition: 0", "topic"),
            ("url: k:9092\ntopic: bad/name\npartition: 0", "topic"),
            ("url: k:9092\ntopic: t", "consumerGroup"),
            ("url: k\ntopic: t\npartition: 0", "url"),
            ("url: k:9092\ntopic: t\npartition: x", "partition"),
            ("url: k:9092\ntopic: t\npartition: -1", "partition"),
            ("url: k:9092\ntopic: t\npartition: 0\nconsumerGroup: {groupName: g}", "not both"),
            ("url: k:9092\ntopic: t\nconsumerGroup: {oldest: true}", "groupName"),
            ("url: k:9092\ntopic: t\nconsumerGroup: {groupName: g, rebalanceStrategy: x}", "rebalanceStrategy"),
            ("url: k:9092\ntopic: t\npartition: 0\nfilter: {}", "filter"),
            ("url: k:9092\ntopic: t\npartition: 0\nversion: latest", "version"),
            ("url: k:9092\ntopic: t\npartition: 0\nsasl: {mechanism: GSSAPI}", "sasl.mechanism"),
            (
                "url: k:9092\ntopic: t\npartition: 0\nsasl: {user: u, passwordFromEnv: SURELY_UNSET_VAR}",
                "SURELY_UNSET_VAR",
            ),
            (
                "url: k:9092\ntopic: t\npartition: 0\nsasl: {user: u, passwordFile: /surely/not/here}",
                "sasl.password",
            ),
            (
                "url: k:9092\ntopic: t\npartition: 0\ntls: {clientCertFile: /surely/not/here}",
                "tls.clientCert",
            ),
        ];
        for (text, named) in cases {
            let e = Spec::parse(text).expect_err(text);
            assert!(e.contains(named), "{text}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let s = Spec::parse(
            "url: k:9092\ntopic: t\npartition: 0\n\
             sasl: {mechanism: scram-sha-512, user: u, passwordFromEnv: KAFKA_SPEC_TEST_PASSWORD}",
        )
        .expect("parses");
        let sasl = s.sasl.expect("sasl");
        assert_eq!(sasl.mechanism, "SCRAM-SHA-512");
        assert_eq!(sasl.password, "hunter2");
        assert!(!format!("{sasl:?}").contains("hunter2"));
    }
}
