//! One configuration's watch on a bucket: list it every `pollInterval`,
//! compare with what was last reported, and forward each difference as one
//! event, recording it durably as soon as the gateway took it. Created (new
//! or changed ETag or size) objects go first, oldest LastModified first, then
//! removed ones by key. The first listing only sets the baseline: objects
//! already there are not reported. The server cannot be told by a listing
//! that an object was overwritten with identical content, nor see the
//! objects created and removed between two polls.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gateway_sdk::{CancellationToken, EmitError, Emitter};
use rusty_s3::actions::ListObjectsV2;
use rusty_s3::S3Action;

use crate::record::{notification, Change, Kind};
use crate::spec::Spec;
use crate::state::{Seen, State};

/// The longest wait between attempts while the server cannot be reached.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// One object as listed.
struct Listed {
    key: String,
    seen: Seen,
    modified: String,
}

/// Why a round did not finish.
enum Ended {
    Stopped,
    /// Retrying cannot help (no such bucket at the start, refused
    /// credentials): the configuration goes to Error with this.
    Refused(String),
    /// Try again after a backoff.
    Failed(String),
}

/// Runs the configuration until `stop` is cancelled or the server refuses it.
pub async fn run(
    spec: Spec,
    emitter: Emitter,
    stop: CancellationToken,
    state_dir: &Path,
    client: reqwest::Client,
) {
    let src = emitter.config().src.clone();
    let mut state = match State::load(state_dir, &state_name(&spec, &src)) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("cannot read the state in {}: {e}", state_dir.display());
            let _ = emitter.error(&why).await;
            return;
        }
    };
    // Where the server offers MinIO's notifications, a change wakes the
    // loop at once; the listener stops when this configuration does.
    let listening = stop.child_token();
    let _listening = listening.clone().drop_guard();
    let woken = spec
        .listen
        .then(|| crate::listen::spawn(Arc::new(spec.clone()), client.clone(), listening));
    let mut announced = false;
    let mut failures = 0u32;
    loop {
        let wait = match round(&spec, &emitter, &mut state, &client, &stop).await {
            Ok(()) => {
                failures = 0;
                if !announced {
                    if emitter.running().await.is_err() {
                        return;
                    }
                    announced = true;
                }
                spec.poll_interval
            }
            Err(Ended::Stopped) => return,
            Err(Ended::Refused(why)) => {
                tracing::warn!(%src, %why, "the S3 server refused the configuration");
                let _ = emitter.error(&why).await;
                return;
            }
            Err(Ended::Failed(why)) => {
                failures = failures.saturating_add(1);
                let wait = gateway_sdk::backoff(failures, spec.poll_interval, BACKOFF_CAP);
                tracing::warn!(%src, %why, retry_in = ?wait, "S3 poll failed");
                wait
            }
        };
        let wake = async {
            match &woken {
                Some(w) => w.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = wake => {}
        }
    }
}

/// A file name for the state of `src` watching what `spec` names: a change
/// of endpoint, bucket or filter starts from a new baseline.
fn state_name(spec: &Spec, src: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let parts = [
        src,
        spec.bucket.base_url().as_str(),
        spec.bucket.name(),
        &spec.filter.prefix,
        &spec.filter.suffix,
    ];
    for b in parts.iter().flat_map(|p| p.bytes().chain([0])) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let readable: String = src
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{readable}-{h:016x}")
}

async fn round(
    spec: &Spec,
    emitter: &Emitter,
    state: &mut State,
    client: &reqwest::Client,
    stop: &CancellationToken,
) -> Result<(), Ended> {
    // A stop does not wait for a listing (a server that accepts and never
    // answers would hold it until the request timeout); once changes are
    // being forwarded, each is finished and recorded first.
    let listed = tokio::select! {
        _ = stop.cancelled() => return Err(Ended::Stopped),
        listed = list(spec, client, state.known) => listed?,
    };
    let listed: Vec<Listed> = listed
        .into_iter()
        .filter(|l| spec.matches(&l.key))
        .collect();
    if !state.known {
        for l in listed {
            state.apply(&l.key, Some(l.seen));
        }
        return state
            .save()
            .map_err(|e| Ended::Failed(format!("saving the baseline: {e}")));
    }
    let mut created: Vec<&Listed> = listed
        .iter()
        .filter(|l| state.objects.get(&l.key) != Some(&l.seen))
        .collect();
    created.sort_by(|a, b| (&a.modified, &a.key).cmp(&(&b.modified, &b.key)));
    let present: HashSet<&str> = listed.iter().map(|l| l.key.as_str()).collect();
    let noticed = now();
    let removed: Vec<Change> = state
        .objects
        .iter()
        .filter(|(k, _)| !present.contains(k.as_str()))
        .map(|(k, seen)| Change {
            kind: Kind::Removed,
            key: k.clone(),
            seen: seen.clone(),
            time: noticed.clone(),
        })
        .collect();
    let changes = created
        .into_iter()
        .map(|l| Change {
            kind: Kind::Created,
            key: l.key.clone(),
            seen: l.seen.clone(),
            time: l.modified.clone(),
        })
        .chain(removed);
    for change in changes {
        forward(spec, emitter, state, change).await?;
    }
    state
        .save()
        .map_err(|e| Ended::Failed(format!("saving the state: {e}")))
}

/// Forwards one change (if watched) and records it.
async fn forward(
    spec: &Spec,
    emitter: &Emitter,
    state: &mut State,
    change: Change,
) -> Result<(), Ended> {
    let after = (change.kind == Kind::Created).then(|| change.seen.clone());
    let watched = match change.kind {
        Kind::Created => spec.watch.created,
        Kind::Removed => spec.watch.removed,
    };
    if !watched {
        state.apply(&change.key, after);
        return Ok(());
    }
    let seq = state.seq + 1;
    let src = &emitter.config().src;
    let body = notification(spec.bucket.name(), &spec.region, src, &change, seq).to_string();
    match emitter.emit(body.as_bytes()).await {
        Ok(_) => {}
        Err(EmitError::Stopped) => return Err(Ended::Stopped),
        Err(EmitError::Refused { status, body }) => {
            // The gateway will never take it: skip it rather than loop.
            tracing::warn!(%src, key = %change.key, status, %body, "the gateway refused a change; skipping it");
        }
    }
    state
        .record(&change.key, after, seq)
        .map_err(|e| Ended::Failed(format!("recording a forwarded change: {e}")))
}

/// The whole listing under the configuration's prefix, page by page.
async fn list(spec: &Spec, client: &reqwest::Client, known: bool) -> Result<Vec<Listed>, Ended> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut action = spec.bucket.list_objects_v2(spec.credentials.as_ref());
        if !spec.filter.prefix.is_empty() {
            action.with_prefix(spec.filter.prefix.as_str());
        }
        if let Some(t) = &token {
            action.with_continuation_token(t.as_str());
        }
        let url = action.sign(Duration::from_secs(300));
        // Without its URL, a request's error cannot leak the presigned
        // signature into a log line or the configuration's message.
        let response = client.get(url).send().await.map_err(|e| {
            let why = format!(
                "listing {}: {}",
                spec.bucket.name(),
                chain(&e.without_url())
            );
            // An untrusted certificate will not become trusted by waiting.
            if why.contains("certificate") {
                Ended::Refused(format!(
                    "{why} (an https endpoint with a private CA needs caFile)"
                ))
            } else {
                Ended::Failed(why)
            }
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            Ended::Failed(format!("reading the listing: {}", chain(&e.without_url())))
        })?;
        if !status.is_success() {
            return Err(refusal(spec, status.as_u16(), &text, known));
        }
        let page = ListObjectsV2::parse_response(&text)
            .map_err(|e| Ended::Failed(format!("the listing does not parse: {e}")))?;
        for c in page.contents {
            out.push(Listed {
                seen: Seen {
                    etag: c.etag.unwrap_or_default().trim_matches('"').to_owned(),
                    size: c.size.unwrap_or(0),
                },
                modified: c.last_modified.unwrap_or_default(),
                key: c.key,
            });
        }
        match page.next_continuation_token {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

/// An S3 error answer: refused for good, or worth another try.
fn refusal(spec: &Spec, status: u16, body: &str, known: bool) -> Ended {
    let code = tag(body, "Code").unwrap_or("");
    let message = tag(body, "Message").unwrap_or("");
    let words = format!("bucket {:?}: {status} {code} {message}", spec.bucket.name());
    let words = words.trim_end().to_owned();
    match (status, code) {
        (500..=599, _) | (429, _) => Ended::Failed(words),
        // A bucket that existed may come back (a server restarted empty);
        // one that never did is a mistake in the configuration.
        (404, "NoSuchBucket") if known => Ended::Failed(words),
        _ => Ended::Refused(words),
    }
}

/// The text of the first `<name>...</name>` in an XML error body.
fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(&xml[start..end])
}

/// An error and its causes, for a log line (a connection refused says why).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_decide_between_retry_and_error() {
        let spec = Spec::parse("endpoint: http://h:9000\nbucket: bucket").unwrap();
        let body = "<Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>";
        assert!(
            matches!(refusal(&spec, 404, body, false), Ended::Refused(m) if m.contains("NoSuchBucket gone"))
        );
        assert!(matches!(refusal(&spec, 404, body, true), Ended::Failed(_)));
        assert!(matches!(refusal(&spec, 503, "", true), Ended::Failed(_)));
        let denied = "<Error><Code>AccessDenied</Code></Error>";
        assert!(matches!(
            refusal(&spec, 403, denied, true),
            Ended::Refused(_)
        ));
    }

    #[tokio::test]
    async fn a_failed_listing_says_why_without_its_presigned_url() {
        let spec = Spec::parse(
            "endpoint: http://127.0.0.1:1\nbucket: bucket\naccessKey: AK\nsecretKey: SK",
        )
        .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = crate::client(Vec::new()).unwrap();
        let Err(Ended::Failed(why)) = list(&spec, &client, true).await else {
            panic!("a closed port is a failure to retry");
        };
        assert!(why.contains("listing bucket"), "{why}");
        assert!(
            !why.contains("X-Amz-Signature") && !why.contains("SK"),
            "{why}"
        );
    }

    #[test]
    fn state_names_are_file_safe_and_follow_the_filter() {
        let a = Spec::parse("endpoint: http://h\nbucket: bucket\nfilter: {prefix: a/}").unwrap();
        let b = Spec::parse("endpoint: http://h\nbucket: bucket\nfilter: {prefix: b/}").unwrap();
        let name = state_name(&a, "my/config key");
        assert!(name.starts_with("my_config_key-"), "{name}");
        assert_ne!(name, state_name(&b, "my/config key"));
    }
}
