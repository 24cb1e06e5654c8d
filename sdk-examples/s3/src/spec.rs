//! One configuration of the S3 source, parsed and checked before anything
//! is listed, so that a mistake is a 400 naming the field. The shape follows
//! Argo Events' artifact (S3) event source where it can.
//!
//! ```yaml
//! endpoint: http://minio:9000     # omit for AWS (https://s3.REGION.amazonaws.com)
//! region: us-east-1
//! bucket: images
//! filter: {prefix: uploads/, suffix: .jpg}
//! events: ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
//! pollInterval: 5s
//! accessKeyFromEnv: AWS_ACCESS_KEY_ID       # the defaults; or accessKey/secretKey
//! secretKeyFromEnv: AWS_SECRET_ACCESS_KEY
//! caFile: /etc/minio/ca.pem       # for an https endpoint with a private CA
//! listen: true                    # MinIO's ListenBucketNotification, where offered
//! ```

use std::time::Duration;

use rusty_s3::{Bucket, Credentials, UrlStyle};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    endpoint: Option<String>,
    region: Option<String>,
    bucket: String,
    #[serde(default)]
    filter: Filter,
    events: Option<Vec<String>>,
    poll_interval: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    access_key_from_env: Option<String>,
    secret_key_from_env: Option<String>,
    /// Address the bucket as `BUCKET.host` rather than `host/BUCKET`.
    #[serde(default)]
    virtual_hosted_style: bool,
    /// PEM CA certificates to trust for an https endpoint, beside the
    /// platform's roots (a MinIO with a private CA).
    ca_file: Option<std::path::PathBuf>,
    /// Use MinIO's ListenBucketNotification, where offered, to list at
    /// once after a change.
    listen: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub suffix: String,
}

/// Which changes a configuration forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    pub created: bool,
    pub removed: bool,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Spec {
    pub bucket: Bucket,
    pub region: String,
    /// `None`: anonymous requests (a public bucket).
    pub credentials: Option<Credentials>,
    pub filter: Filter,
    pub watch: Watch,
    pub poll_interval: Duration,
    /// Extra roots from `caFile`: this configuration gets a client of its own.
    pub roots: Vec<reqwest::Certificate>,
    /// Listen for MinIO's bucket notifications where the server offers them.
    pub listen: bool,
}

const DEFAULT_POLL: Duration = Duration::from_secs(5);
const SHORTEST_POLL: Duration = Duration::from_millis(100);

impl Spec {
    /// Parses YAML or JSON; every error names the field at fault, and none
    /// repeats a credential.
    pub fn parse(text: &str) -> Result<Spec, String> {
        let raw: RawSpec =
            serde_norway::from_str(text).map_err(|e| format!("invalid S3 configuration: {e}"))?;
        let region = raw.region.unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = raw
            .endpoint
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = url::Url::parse(&endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or(format!(
                "endpoint {endpoint:?} is not an http:// or https:// URL"
            ))?;
        if !(3..=63).contains(&raw.bucket.len()) {
            return Err(format!(
                "bucket {:?}: a bucket name has 3 to 63 characters",
                raw.bucket
            ));
        }
        let style = if raw.virtual_hosted_style {
            UrlStyle::VirtualHost
        } else {
            UrlStyle::Path
        };
        let bucket = Bucket::new(endpoint, style, raw.bucket.clone(), region.clone())
            .map_err(|e| format!("bucket {:?}: {e}", raw.bucket))?;
        let credentials = credentials(
            raw.access_key,
            raw.secret_key,
            raw.access_key_from_env,
            raw.secret_key_from_env,
        )?;
        let watch = watch(raw.events.as_deref())?;
        let poll_interval = match raw.poll_interval {
            None => DEFAULT_POLL,
            Some(p) => {
                humantime::parse_duration(&p).map_err(|e| format!("pollInterval {p:?}: {e}"))?
            }
        };
        if poll_interval < SHORTEST_POLL {
            return Err(format!("pollInterval must be at least {SHORTEST_POLL:?}"));
        }
        let roots = match &raw.ca_file {
            None => Vec::new(),
            Some(path) => {
                let pem =
                    std::fs::read(path).map_err(|e| format!("caFile {}: {e}", path.display()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("caFile {}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!(
                        "caFile {} holds no PEM certificate",
                        path.display()
                    ));
                }
                certs
            }
        };
        Ok(Spec {
            bucket,
            region,
            credentials,
            filter: raw.filter,
            watch,
            poll_interval,
            roots,
            listen: raw.listen.unwrap_or(true),
        })
    }

    /// Whether `key` passes the prefix and suffix filters.
    pub fn matches(&self, key: &str) -> bool {
        key.starts_with(&self.filter.prefix) && key.ends_with(&self.filter.suffix)
    }
}

/// Literal keys, or the variables that hold them (by default the AWS ones);
/// none at all means anonymous requests.
fn credentials(
    key: Option<String>,
    secret: Option<String>,
    key_var: Option<String>,
    secret_var: Option<String>,
) -> Result<Option<Credentials>, String> {
    let from_env = |var: &str, field: &str, named: bool| -> Result<Option<String>, String> {
        match std::env::var(var).ok().filter(|v| !v.is_empty()) {
            Some(v) => Ok(Some(v)),
            None if named => Err(format!("{field}: the variable {var} is not set")),
            None => Ok(None),
        }
    };
    let key = match (key, key_var) {
        (Some(_), Some(_)) => return Err("give accessKey or accessKeyFromEnv, not both".into()),
        (Some(k), None) => Some(k),
        (None, Some(var)) => from_env(&var, "accessKeyFromEnv", true)?,
        (None, None) => from_env("AWS_ACCESS_KEY_ID", "", false)?,
    };
    let secret = match (secret, secret_var) {
        (Some(_), Some(_)) => return Err("give secretKey or secretKeyFromEnv, not both".into()),
        (Some(s), None) => Some(s),
        (None, Some(var)) => from_env(&var, "secretKeyFromEnv", true)?,
        (None, None) => from_env("AWS_SECRET_ACCESS_KEY", "", false)?,
    };
    match (key, secret) {
        (Some(k), Some(s)) => Ok(Some(match std::env::var("AWS_SESSION_TOKEN") {
            Ok(token) if !token.is_empty() => Credentials::new_with_token(k, s, token),
            _ => Credentials::new(k, s),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err("an access key without a secret key".into()),
        (None, Some(_)) => Err("a secret key without an access key".into()),
    }
}

/// The events a configuration names: created, removed, or both (the default).
fn watch(events: Option<&[String]>) -> Result<Watch, String> {
    let Some(events) = events else {
        return Ok(Watch {
            created: true,
            removed: true,
        });
    };
    let mut w = Watch {
        created: false,
        removed: false,
    };
    for e in events {
        match e.trim_start_matches("s3:") {
            "ObjectCreated:*" | "ObjectCreated:Put" => w.created = true,
            "ObjectRemoved:*" | "ObjectRemoved:Delete" => w.removed = true,
            other => {
                return Err(format!(
                    "events: {other:?} cannot be seen by polling a listing; \
                     use s3:ObjectCreated:* (or :Put) and s3:ObjectRemoved:* (or :Delete)"
                ))
            }
        }
    }
    if !w.created && !w.removed {
        return Err("events is empty: name s3:ObjectCreated:*, s3:ObjectRemoved:* or both".into());
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_alone_watches_everything_every_five_seconds() {
        let s = Spec::parse("endpoint: http://127.0.0.1:9000\nbucket: images").unwrap();
        assert_eq!(
            s.watch,
            Watch {
                created: true,
                removed: true
            }
        );
        assert_eq!(s.poll_interval, Duration::from_secs(5));
        assert!(s.matches("anything"));
    }

    #[test]
    fn filters_events_and_literal_keys() {
        let s = Spec::parse(
            r#"{"endpoint": "http://h:9000", "bucket": "images", "filter": {"prefix": "up/", "suffix": ".jpg"},
                "events": ["s3:ObjectCreated:Put"], "pollInterval": "250ms",
                "accessKey": "AK", "secretKey": "SK"}"#,
        )
        .unwrap();
        assert!(s.matches("up/a.jpg") && !s.matches("up/a.png") && !s.matches("down/a.jpg"));
        assert!(s.watch.created && !s.watch.removed);
        assert_eq!(s.credentials.unwrap().key(), "AK");
    }

    #[test]
    fn mistakes_name_the_field_and_never_a_secret() {
        for (text, needle) in [
            ("bucket: b", "3 to 63"),
            ("endpoint: ftp://h\nbucket: bucket", "endpoint"),
            (
                "bucket: bucket\nevents: ['s3:ObjectCreated:Copy']",
                "ObjectCreated:Copy",
            ),
            ("bucket: bucket\nevents: []", "events is empty"),
            ("bucket: bucket\npollInterval: 1ms", "pollInterval"),
            ("bucket: bucket\npollInterval: often", "pollInterval"),
            ("bucket: bucket\naccessKey: AK", "without a secret"),
            (
                "bucket: bucket\naccessKeyFromEnv: SURELY_UNSET_VAR\nsecretKey: x",
                "SURELY_UNSET_VAR",
            ),
            ("bucket: bucket\ncolour: red", "unknown field"),
            ("{}", "bucket"),
            (
                "bucket: bucket\ncaFile: /surely/not/here.pem",
                "caFile /surely/not/here.pem",
            ),
        ] {
            let e = Spec::parse(text).err().unwrap_or_default();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let e = Spec::parse("bucket: b\nsecretKey: hunter22").unwrap_err();
        assert!(!e.contains("hunter22"), "{e}");
    }
}
