//! MinIO's ListenBucketNotification, used as a wake-up for the poll: where the
//! server offers it, a change makes the next listing happen at once instead
//! of at the next `pollInterval`. The listing stays what decides what is
//! reported, with its persisted state: the stream is not durable (MinIO drops
//! events for a slow listener, and none arrive while it is reconnecting), so
//! it can only make changes arrive sooner, never cause one to be repeated or
//! skipped. A server that does not offer it (AWS, moto, most others) is
//! noticed on the first attempt, and the configuration simply polls.
//!
//! The request is MinIO's, as its SDKs send it: a signed
//! `GET /{bucket}?events=…&prefix=…&suffix=…`. The answer streams one JSON
//! object per line (`{"Records":[…]}`), with a single space every half second
//! to keep the connection alive.

use std::sync::Arc;
use std::time::Duration;

use gateway_sdk::CancellationToken;
use tokio::sync::Notify;

use crate::spec::Spec;

/// Silence this long (MinIO writes a space every 500 ms) means the stream is dead.
const IDLE: Duration = Duration::from_secs(15);
/// A stream is opened again after this long at most, and the request's
/// signature only has to be valid at the start.
const LIFETIME: Duration = Duration::from_secs(3600);
/// Longest wait before listening again after a broken stream.
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A line longer than this is not a notification.
const MAX_LINE: usize = 1 << 20;

/// How one attempt to listen ended.
#[derive(Debug, PartialEq)]
enum Ended {
    Stopped,
    /// The server does not offer the API: poll only, for good.
    NotOffered(String),
    /// Try again later; `opened` tells whether the stream was open first.
    Broken {
        why: String,
        opened: bool,
    },
}

/// Listens until `stop` is cancelled, waking `wake` at each notification and
/// each time a stream opens (changes made while none was open are seen then).
pub fn spawn(spec: Arc<Spec>, client: reqwest::Client, stop: CancellationToken) -> Arc<Notify> {
    let wake = Arc::new(Notify::new());
    let notify = wake.clone();
    tokio::spawn(async move {
        let bucket = spec.bucket.name().to_owned();
        let mut failures = 0u32;
        loop {
            match listen(&spec, &client, &notify, &stop).await {
                Ended::Stopped => return,
                Ended::NotOffered(why) => {
                    tracing::info!(%bucket, %why, "the S3 server does not offer ListenBucketNotification; polling only");
                    return;
                }
                Ended::Broken { why, opened } => {
                    failures = if opened {
                        1
                    } else {
                        failures.saturating_add(1)
                    };
                    let wait = gateway_sdk::backoff(failures, Duration::from_secs(1), BACKOFF_CAP);
                    tracing::info!(%bucket, %why, retry_in = ?wait, "bucket notifications interrupted; polling meanwhile");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    });
    wake
}

/// One stream, from the request to its end.
async fn listen(
    spec: &Spec,
    client: &reqwest::Client,
    wake: &Notify,
    stop: &CancellationToken,
) -> Ended {
    let broken = |why: String| Ended::Broken { why, opened: false };
    // The answer's head must come within IDLE, like any later byte.
    let request = tokio::time::timeout(IDLE, client.get(url(spec)).timeout(LIFETIME).send());
    let response = tokio::select! {
        _ = stop.cancelled() => return Ended::Stopped,
        r = request => match r {
            Ok(Ok(r)) => r,
            // Never the URL: it holds the presigned signature.
            Ok(Err(e)) => return broken(format!("connecting: {}", e.without_url())),
            Err(_) => return broken(format!("no answer within {IDLE:?}")),
        },
    };
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return match status {
            // The bucket may be created, the server may come back.
            404 | 408 | 429 | 500 | 502..=504 => broken(format!("answered {status}")),
            // NotImplemented, a route it does not know, no permission for it.
            _ => Ended::NotOffered(format!("answered {status}")),
        };
    }
    let xml = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("xml"));
    if xml {
        // A server that took the request for a listing.
        return Ended::NotOffered("answered with a listing".into());
    }
    let mut lines = Lines::default();
    let mut response = response;
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return Ended::Stopped,
            c = tokio::time::timeout(IDLE, response.chunk()) => c,
        };
        let bytes = match chunk {
            Err(_) => return lines.ended(format!("silent for {IDLE:?}")),
            Ok(Err(e)) => return lines.ended(format!("reading: {}", e.without_url())),
            Ok(Ok(None)) => return lines.ended("the server ended the stream".into()),
            Ok(Ok(Some(b))) => b,
        };
        match lines.feed(&bytes) {
            Feed::Open { first, changes } => {
                if first {
                    tracing::info!(
                        bucket = spec.bucket.name(),
                        "listening for bucket notifications"
                    );
                }
                // The first wake covers what changed while no stream was open.
                if first || changes {
                    wake.notify_one();
                }
            }
            Feed::Pending => {}
            Feed::NotOffered(why) => return Ended::NotOffered(why),
            Feed::Broken(why) => return lines.ended(why),
        }
    }
}

/// The signed request, as MinIO's SDKs send it.
fn url(spec: &Spec) -> url::Url {
    let mut query: Vec<(&str, &str)> = Vec::new();
    if spec.watch.created {
        query.push(("events", "s3:ObjectCreated:*"));
    }
    if spec.watch.removed {
        query.push(("events", "s3:ObjectRemoved:*"));
    }
    if !spec.filter.prefix.is_empty() {
        query.push(("prefix", &spec.filter.prefix));
    }
    if !spec.filter.suffix.is_empty() {
        query.push(("suffix", &spec.filter.suffix));
    }
    // Sorted by name, then value, as signing requires.
    query.sort();
    let base = spec.bucket.base_url().clone();
    match &spec.credentials {
        Some(c) => rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            rusty_s3::Method::Get,
            base,
            c.key(),
            c.secret(),
            c.token(),
            spec.bucket.region(),
            300,
            query.into_iter(),
            std::iter::empty(),
        ),
        None => {
            let mut url = base;
            url.query_pairs_mut().extend_pairs(query);
            url
        }
    }
}

/// What a piece of the stream told.
#[derive(Debug, PartialEq)]
enum Feed {
    /// Not yet enough to tell what the server is answering.
    Pending,
    /// A notification stream: `first` the first time this is known,
    /// `changes` when a notification came in this piece.
    Open {
        first: bool,
        changes: bool,
    },
    NotOffered(String),
    Broken(String),
}

/// The stream cut into lines; spaces (keep-alives) and blank lines skipped.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
    open: bool,
}

impl Lines {
    fn feed(&mut self, bytes: &[u8]) -> Feed {
        self.buf.extend_from_slice(bytes);
        let mut changes = false;
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
                return self.garbled();
            };
            if value["Records"].as_array().is_some_and(|r| !r.is_empty()) {
                changes = true;
            }
        }
        let rest = self.buf.trim_ascii_start();
        if rest.first().is_some_and(|&b| b != b'{') {
            return self.garbled();
        }
        if self.buf.len() > MAX_LINE {
            return Feed::Broken(format!("a line of more than {MAX_LINE} bytes"));
        }
        if bytes.is_empty() && !self.open {
            return Feed::Pending;
        }
        let first = !self.open;
        self.open = true;
        Feed::Open { first, changes }
    }

    /// Something that is not a notification stream: before the stream was
    /// known to be one, the server answered something else.
    fn garbled(&self) -> Feed {
        if self.open {
            Feed::Broken("a line that is not a notification".into())
        } else {
            Feed::NotOffered("its answer is not a notification stream".into())
        }
    }

    fn ended(&self, why: String) -> Ended {
        Ended::Broken {
            why,
            opened: self.open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(first: bool, changes: bool) -> Feed {
        Feed::Open { first, changes }
    }

    #[test]
    fn keep_alives_open_the_stream_and_records_wake() {
        let mut l = Lines::default();
        assert_eq!(l.feed(b" "), open(true, false));
        assert_eq!(
            l.feed(b"  {\"Records\":[{\"eventName\""),
            open(false, false)
        );
        assert_eq!(l.feed(b":\"s3:ObjectCreated:Put\"}]}\n"), open(false, true));
        assert_eq!(l.feed(b"{\"Records\":[]}\n "), open(false, false));
    }

    #[test]
    fn a_listing_or_html_is_not_a_stream() {
        let mut l = Lines::default();
        assert!(matches!(l.feed(b"<?xml version"), Feed::NotOffered(_)));
        let mut l = Lines::default();
        assert!(matches!(l.feed(b"not json\n"), Feed::NotOffered(_)));
        let mut l = Lines::default();
        assert_eq!(l.feed(b""), Feed::Pending);
        let mut l = Lines::default();
        l.feed(b" ");
        assert!(matches!(l.feed(b"garbage\n"), Feed::Broken(_)));
    }

    #[test]
    fn the_request_is_signed_with_its_filters() {
        let spec = Spec::parse(
            "endpoint: http://127.0.0.1:9000\nbucket: images\nfilter: {prefix: up/, suffix: .jpg}\naccessKey: AK\nsecretKey: SK",
        )
        .unwrap();
        let u = url(&spec);
        assert_eq!(u.path(), "/images/");
        let q: Vec<(String, String)> = u.query_pairs().map(|(k, v)| (k.into(), v.into())).collect();
        let has = |k: &str, v: &str| q.iter().any(|(a, b)| a == k && b == v);
        assert!(has("events", "s3:ObjectCreated:*") && has("events", "s3:ObjectRemoved:*"));
        assert!(has("prefix", "up/") && has("suffix", ".jpg"));
        assert!(q.iter().any(|(k, _)| k == "X-Amz-Signature"));
        assert!(!u.as_str().contains("SK"));
    }
}
