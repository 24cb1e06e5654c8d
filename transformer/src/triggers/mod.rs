//! Triggers: which watcher wants which event, and how it is delivered there.
//! `TRANSFORMER_TRIGGERS` names a YAML or JSON file, or a directory of them
//! laid out like a mounted ConfigMap; each document is a Knative Eventing
//! `Trigger` (`apiVersion: eventing.knative.dev/v1`, `kind: Trigger`,
//! `metadata.name`, `spec`) or a bare spec with a `name`. Everything is
//! checked when read: a mistake names the file, the trigger and the key.

pub mod duration;
pub mod filter;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value as Json};

pub use filter::Filter;

/// Where a trigger's events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscriber {
    /// An `http://` or `https://` URL.
    Http(String),
    /// `nats:SUBJECT`: a subject on the transformer's NATS connection.
    Nats(String),
}

impl Subscriber {
    /// As `GET /triggers` shows it: credentials in a URL as `***`.
    pub fn shown(&self) -> String {
        match self {
            Subscriber::Http(url) => gateway_common::redact::url(url),
            Subscriber::Nats(subject) => format!("nats:{subject}"),
        }
    }
}

/// Knative's `backoffPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffPolicy {
    /// `backoffDelay * attempt`.
    Linear,
    /// `backoffDelay * 2^attempt`.
    Exponential,
}

/// `spec.delivery`; what is not given comes from the `WATCHER_*` variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Retries after the first attempt.
    pub retry: Option<u32>,
    pub backoff_policy: Option<BackoffPolicy>,
    pub backoff_delay: Option<Duration>,
    /// Per attempt.
    pub timeout: Option<Duration>,
    /// The longest `Retry-After` of a 429 or 503 that is waited out as told.
    pub retry_after_max: Option<Duration>,
    pub dead_letter_sink: Option<Subscriber>,
}

/// Argo's `rateLimit`: at most `requests` deliveries per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per: Duration,
    pub requests: u32,
}

/// One checked trigger.
#[derive(Debug)]
pub struct Trigger {
    pub name: String,
    pub subscriber: Subscriber,
    /// `None`: every event.
    pub filter: Option<std::sync::Arc<Filter>>,
    pub delivery: Delivery,
    pub rate_limit: Option<RateLimit>,
    /// The file it was read from.
    pub file: PathBuf,
}

/// A trigger that cannot be used: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {why}", file.display(), trigger.as_ref().map(|t| format!(": trigger {t:?}")).unwrap_or_default())]
pub struct LoadError {
    pub file: PathBuf,
    pub trigger: Option<String>,
    /// Names the key at fault, and what is wrong with it.
    pub why: String,
}

/// Reads every trigger under `path` (a file, or a ConfigMap-like directory:
/// its regular files, not those starting with `.`), in file-name order.
pub fn load(path: &Path) -> Result<Vec<Trigger>, LoadError> {
    let files = files(path)?;
    let mut triggers: Vec<Trigger> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| LoadError {
            file: file.clone(),
            trigger: None,
            why: format!("cannot be read: {e}"),
        })?;
        for (i, doc) in documents(&text, &file)?.into_iter().enumerate() {
            let t = parse(&doc, &file).map_err(|(trigger, why)| LoadError {
                file: file.clone(),
                trigger: trigger.or_else(|| Some(format!("document {}", i + 1))),
                why,
            })?;
            if let Some(other) = triggers.iter().find(|o| o.name == t.name) {
                return Err(LoadError {
                    file: file.clone(),
                    trigger: Some(t.name.clone()),
                    why: format!(
                        "metadata.name: also the name of a trigger in {}",
                        other.file.display()
                    ),
                });
            }
            triggers.push(t);
        }
    }
    Ok(triggers)
}

fn files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let err = |why: String| LoadError {
        file: path.to_owned(),
        trigger: None,
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot be read: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| err(format!("cannot be listed: {e}")))? {
        let entry = entry.map_err(|e| err(format!("cannot be listed: {e}")))?;
        let name = entry.file_name();
        // A mounted ConfigMap's `..data` and `..2024_...` entries, and hidden files.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let p = entry.path();
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Each YAML document of `text` (JSON is YAML), empty ones left out.
fn documents(text: &str, file: &Path) -> Result<Vec<Json>, LoadError> {
    let mut docs = Vec::new();
    for (i, d) in serde_norway::Deserializer::from_str(text).enumerate() {
        let v: Json = serde::Deserialize::deserialize(d).map_err(|e| LoadError {
            file: file.to_owned(),
            trigger: Some(format!("document {}", i + 1)),
            why: format!("not YAML or JSON: {e}"),
        })?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// An error and, once known, the trigger's name.
type Failure = (Option<String>, String);

fn parse(doc: &Json, file: &Path) -> Result<Trigger, Failure> {
    let obj = doc.as_object().ok_or((
        None,
        "a trigger is a mapping (a Trigger, or a spec with a name)".to_owned(),
    ))?;
    let (name, spec) = if obj.contains_key("kind") || obj.contains_key("apiVersion") {
        knative(obj)?
    } else {
        let name = obj
            .get("name")
            .and_then(Json::as_str)
            .ok_or((None, "name: a bare spec needs a name".to_owned()))?;
        let mut spec = obj.clone();
        spec.remove("name");
        (name.to_owned(), spec)
    };
    check_name(&name).map_err(|why| (Some(name.clone()), why))?;
    spec_of(&name, &spec, file).map_err(|why| (Some(name.clone()), why))
}

/// A Knative `Trigger` document: its name and spec.
fn knative(obj: &Map<String, Json>) -> Result<(String, Map<String, Json>), Failure> {
    let api = obj.get("apiVersion").and_then(Json::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Json::as_str).unwrap_or("");
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Json::as_str)
        .map(str::to_owned);
    if api != "eventing.knative.dev/v1" {
        return Err((
            name,
            format!("apiVersion: {api:?}, expected eventing.knative.dev/v1"),
        ));
    }
    if kind != "Trigger" {
        return Err((name, format!("kind: {kind:?}, expected Trigger")));
    }
    let name = name.ok_or((None, "metadata.name: missing".to_owned()))?;
    let spec = obj
        .get("spec")
        .and_then(Json::as_object)
        .cloned()
        .ok_or((Some(name.clone()), "spec: missing".to_owned()))?;
    Ok((name, spec))
}

/// A Kubernetes object name: it becomes a metric label and a path segment.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "metadata.name: {name:?} is not a Kubernetes name (a-z, 0-9, '-', '.', at most 253)"
        ))
    }
}

const SPEC_KEYS: [&str; 6] = [
    "broker",
    "filter",
    "filters",
    "subscriber",
    "delivery",
    "rateLimit",
];

fn spec_of(name: &str, spec: &Map<String, Json>, file: &Path) -> Result<Trigger, String> {
    if let Some(k) = spec.keys().find(|k| !SPEC_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "spec.{k}: unknown key (known: {})",
            SPEC_KEYS.join(", ")
        ));
    }
    if spec.contains_key("broker") {
        return Err(
            "spec.broker: there is no broker here; the transformer itself routes \
                    each event to the triggers that want it (remove broker)"
                .into(),
        );
    }
    let subscriber = spec
        .get("subscriber")
        .ok_or("spec.subscriber: missing (uri: http://... or nats:SUBJECT)")?;
    let subscriber = destination(subscriber, "spec.subscriber")?;
    // Knative: `filters`, when given, replaces `filter`.
    let filter = match (spec.get("filters"), spec.get("filter")) {
        (Some(fs), _) => {
            let list = fs.as_array().ok_or("spec.filters: a list of filters")?;
            let parsed = list
                .iter()
                .enumerate()
                .map(|(i, f)| Filter::parse(f, &format!("spec.filters[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            (!parsed.is_empty()).then_some(Filter::All(parsed))
        }
        (None, Some(f)) => {
            let obj = f
                .as_object()
                .ok_or("spec.filter: a mapping with attributes")?;
            if let Some(k) = obj.keys().find(|k| *k != "attributes") {
                return Err(format!("spec.filter.{k}: unknown key (only attributes)"));
            }
            match obj.get("attributes") {
                None => None,
                Some(a) => {
                    let map = a
                        .as_object()
                        .ok_or("spec.filter.attributes: a map of attribute to value")?;
                    (!map.is_empty())
                        .then(|| Filter::attributes(map, "spec.filter.attributes"))
                        .transpose()?
                }
            }
        }
        (None, None) => None,
    };
    let delivery = match spec.get("delivery") {
        Some(d) => delivery(d)?,
        None => Delivery::default(),
    };
    let rate_limit = spec.get("rateLimit").map(rate_limit).transpose()?;
    Ok(Trigger {
        name: name.to_owned(),
        subscriber,
        filter: filter.map(std::sync::Arc::new),
        delivery,
        rate_limit,
        file: file.to_owned(),
    })
}

/// `{uri}` (a Knative Destination without `ref`).
fn destination(v: &Json, at: &str) -> Result<Subscriber, String> {
    let obj = v.as_object().ok_or(format!("{at}: a mapping with uri"))?;
    if obj.contains_key("ref") {
        return Err(format!(
            "{at}.ref: no Kubernetes API is consulted here to resolve a reference; give uri"
        ));
    }
    if let Some(k) = obj.keys().find(|k| *k != "uri") {
        return Err(format!("{at}.{k}: unknown key (only uri)"));
    }
    let uri = obj
        .get("uri")
        .and_then(Json::as_str)
        .ok_or(format!("{at}.uri: missing"))?;
    if let Some(subject) = uri.strip_prefix("nats:") {
        let valid = !subject.is_empty()
            && subject.split('.').all(|t| !t.is_empty())
            && !subject
                .chars()
                .any(|c| c.is_whitespace() || c == '*' || c == '>');
        return if valid {
            Ok(Subscriber::Nats(subject.to_owned()))
        } else {
            Err(format!(
                "{at}.uri: {uri:?} is not nats: followed by a NATS subject without wildcards"
            ))
        };
    }
    match reqwest::Url::parse(uri) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            Ok(Subscriber::Http(uri.to_owned()))
        }
        _ => Err(format!(
            "{at}.uri: {:?} is not an http(s):// URL or nats:SUBJECT",
            gateway_common::redact::url(uri)
        )),
    }
}

const DELIVERY_KEYS: [&str; 6] = [
    "retry",
    "backoffPolicy",
    "backoffDelay",
    "timeout",
    "retryAfterMax",
    "deadLetterSink",
];

fn delivery(v: &Json) -> Result<Delivery, String> {
    let obj = v.as_object().ok_or("spec.delivery: a mapping")?;
    if let Some(k) = obj.keys().find(|k| !DELIVERY_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "spec.delivery.{k}: unknown key (known: {})",
            DELIVERY_KEYS.join(", ")
        ));
    }
    let dur = |key: &str| -> Result<Option<Duration>, String> {
        obj.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or(format!(
                        "spec.delivery.{key}: an ISO 8601 duration as a string"
                    ))
                    .and_then(|s| {
                        duration::parse(s).map_err(|e| format!("spec.delivery.{key}: {e}"))
                    })
            })
            .transpose()
    };
    let retry = obj
        .get("retry")
        .map(|r| {
            r.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or("spec.delivery.retry: a number of retries, 0 or more")
        })
        .transpose()?;
    let backoff_policy = obj
        .get("backoffPolicy")
        .map(|p| match p.as_str() {
            Some("linear") => Ok(BackoffPolicy::Linear),
            Some("exponential") => Ok(BackoffPolicy::Exponential),
            _ => Err(format!(
                "spec.delivery.backoffPolicy: {p}, expected linear or exponential"
            )),
        })
        .transpose()?;
    let timeout = dur("timeout")?;
    if timeout.is_some_and(|t| t.is_zero()) {
        return Err("spec.delivery.timeout: must be more than zero".into());
    }
    Ok(Delivery {
        retry,
        backoff_policy,
        backoff_delay: dur("backoffDelay")?,
        timeout,
        retry_after_max: dur("retryAfterMax")?,
        dead_letter_sink: obj
            .get("deadLetterSink")
            .map(|d| destination(d, "spec.delivery.deadLetterSink"))
            .transpose()?,
    })
}

fn rate_limit(v: &Json) -> Result<RateLimit, String> {
    let obj = v
        .as_object()
        .ok_or("spec.rateLimit: a mapping with unit and requestsPerUnit")?;
    if let Some(k) = obj.keys().find(|k| *k != "unit" && *k != "requestsPerUnit") {
        return Err(format!(
            "spec.rateLimit.{k}: unknown key (unit, requestsPerUnit)"
        ));
    }
    let per = match obj.get("unit").and_then(Json::as_str).unwrap_or("Second") {
        "Second" => Duration::from_secs(1),
        "Minute" => Duration::from_secs(60),
        "Hour" => Duration::from_secs(3600),
        other => {
            return Err(format!(
                "spec.rateLimit.unit: {other:?}, expected Second, Minute or Hour"
            ))
        }
    };
    let requests = obj
        .get("requestsPerUnit")
        .and_then(Json::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or("spec.rateLimit.requestsPerUnit: a number above 0")?;
    Ok(RateLimit { per, requests })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write");
    }

    #[test]
    fn knative_documents_and_bare_specs_from_a_configmap_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "orders.yaml",
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: orders}\n\
             spec:\n  filters:\n    - prefix: {type: com.example.order}\n    - cesql: \"subject = 'cfg07'\"\n\
             \x20 subscriber: {uri: 'http://user:secret@orders:8080/'}\n\
             \x20 delivery: {retry: 3, backoffPolicy: linear, backoffDelay: PT0.2S, timeout: PT5S,\n\
             \x20            retryAfterMax: PT30S, deadLetterSink: {uri: 'nats:dead.orders'}}\n\
             ---\nname: audit\nsubscriber: {uri: 'nats:audit'}\nfilter: {attributes: {type: audit}}\n\
             rateLimit: {unit: Minute, requestsPerUnit: 600}\n",
        );
        write(
            dir.path(),
            "all.json",
            r#"{"name": "all", "subscriber": {"uri": "https://all.example/"}}"#,
        );
        write(dir.path(), ".hidden", "not: [a trigger");
        std::fs::create_dir(dir.path().join("..data")).expect("mkdir");
        let ts = load(dir.path()).expect("loads");
        let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["all", "orders", "audit"]);
        assert!(ts[0].filter.is_none());
        let orders = &ts[1];
        assert_eq!(orders.subscriber.shown(), "http://user:***@orders:8080/");
        assert_eq!(orders.delivery.retry, Some(3));
        assert_eq!(orders.delivery.backoff_policy, Some(BackoffPolicy::Linear));
        assert_eq!(
            orders.delivery.backoff_delay,
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            orders.delivery.retry_after_max,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            orders.delivery.dead_letter_sink,
            Some(Subscriber::Nats("dead.orders".into()))
        );
        assert_eq!(ts[2].subscriber, Subscriber::Nats("audit".into()));
        assert_eq!(
            ts[2].rate_limit,
            Some(RateLimit {
                per: Duration::from_secs(60),
                requests: 600
            })
        );
    }

    #[test]
    fn mistakes_name_the_file_the_trigger_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("name: a\nsubscriber: {uri: 'http://x/'}\nbroker: default", "\"a\": spec.broker"),
            ("name: a\nsubscriber: {ref: {kind: Service, name: x}}", "spec.subscriber.ref"),
            ("name: a\nsubscriber: {uri: 'ftp://x/'}", "spec.subscriber.uri"),
            ("name: a\nsubscriber: {uri: 'nats:a.*'}", "spec.subscriber.uri"),
            ("name: a", "spec.subscriber: missing"),
            ("name: A\nsubscriber: {uri: 'http://x/'}", "metadata.name"),
            ("subscriber: {uri: 'http://x/'}", "name: a bare spec needs a name"),
            ("name: a\nsubscriber: {uri: 'http://x/'}\nfilters: [{cesql: 'a ='}]", "spec.filters[0].cesql"),
            ("name: a\nsubscriber: {uri: 'http://x/'}\nfilter: {attributes: {type: [1]}}", "spec.filter.attributes.type"),
            ("name: a\nsubscriber: {uri: 'http://x/'}\ndelivery: {backoffDelay: 5s}", "spec.delivery.backoffDelay"),
            ("name: a\nsubscriber: {uri: 'http://x/'}\ndelivery: {retry: -1}", "spec.delivery.retry"),
            ("name: a\nsubscriber: {uri: 'http://x/'}\ndelivery: {backoffPolicy: random}", "backoffPolicy"),
            ("name: a\nsubscriber: {uri: 'http://x/'}\ndelivery: {deadLetterSink: {uri: 'x'}}", "deadLetterSink.uri"),
            ("name: a\nsubscriber: {uri: 'http://x/'}\nrateLimit: {unit: Day, requestsPerUnit: 1}", "spec.rateLimit.unit"),
            ("name: a\nsubscriber: {uri: 'http://x/'}\nrateLimit: {requestsPerUnit: 0}", "requestsPerUnit"),
            ("name: a\nsubscriber: {uri: 'http://x/'}\nfliter: {}", "spec.fliter: unknown key"),
            ("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}", "kind"),
            ("apiVersion: v1\nkind: Trigger\nmetadata: {name: b}", "apiVersion"),
            ("name: a\nsubscriber: {uri: 'http://x/'}\n---\nname: a\nsubscriber: {uri: 'http://y/'}", "also the name"),
            ("[unclosed", "not YAML or JSON"),
        ];
        for (i, (text, words)) in cases.into_iter().enumerate() {
            let file = dir.path().join(format!("t{i}.yaml"));
            std::fs::write(&file, text).expect("write");
            let e = load(&file).expect_err(text).to_string();
            assert!(e.contains(words), "{text}: {e}");
            assert!(e.contains(&format!("t{i}.yaml")), "{e}");
        }
    }
}
