//! Triggers at run time: each trigger made a route (its subscriber under its
//! name, its filter, its delivery over the `WATCHER_*` defaults, its rate
//! limit and dead-letter sink), what `GET /triggers` shows of it, and the
//! watch on `TRANSFORMER_TRIGGERS` that takes a changed set while running.
//! A change that does not load (a bad file, a trigger that cannot be
//! reached) is refused, logged and counted; the last good set stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, NatsConfig};
use crate::dispatch::forward::DeadLetterSink;
use crate::dispatch::http::HttpSink;
use crate::dispatch::nats::{NatsSink, SubjectTemplate};
use crate::dispatch::pacer::Pacer;
use crate::dispatch::{Named, Route, Sink, TriggerKey};
use crate::error::RunError;
use crate::loops;
use crate::metrics::{Metrics, ResultLabel};
use crate::state::{AppState, TriggerView};
use crate::triggers::{self, BackoffPolicy, Subscriber, Trigger};

/// How often `TRANSFORMER_TRIGGERS` is read for changes. A mounted
/// ConfigMap changes by a swap of symbolic links, which file notifications
/// report unreliably; reading a few small files is cheap.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What a trigger's destinations are reached with.
pub struct Reach {
    config: Config,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    /// Connected when a trigger first needs it.
    nats: tokio::sync::Mutex<Option<async_nats::Client>>,
}

impl Reach {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Reach, RunError> {
        let extra_roots = match &config.watcher_tls_ca {
            Some(path) => {
                gateway_common::tls::load_ca("WATCHER_TLS_CA", path).map_err(RunError::Tls)?
            }
            None => Vec::new(),
        };
        Ok(Reach {
            config: config.clone(),
            metrics,
            client: HttpSink::client(extra_roots)?,
            nats: tokio::sync::Mutex::new(None),
        })
    }

    /// One route per trigger.
    pub async fn routes(&self, triggers: &[Trigger]) -> Result<Vec<Route>, RunError> {
        let mut routes = Vec::with_capacity(triggers.len());
        for t in triggers {
            let policy = policy(&self.config.retry, t);
            let sink = self.sink(&t.name, &t.subscriber, policy.timeout).await?;
            let dead_letter_sink = match &t.delivery.dead_letter_sink {
                Some(to) => Some(DeadLetterSink {
                    sink: self.sink(&t.name, to, policy.timeout).await?,
                    failed_destination: t.subscriber.shown(),
                }),
                None => None,
            };
            routes.push(Route {
                sink: Arc::new(Named::new(&t.name, sink)),
                filter: t.filter.clone(),
                pace: t
                    .rate_limit
                    .map(|r| Arc::new(Pacer::new(r.per, r.requests))),
                dead_letter_sink,
                policy,
                trigger: Some(key(t)),
            });
        }
        Ok(routes)
    }

    /// A sink for `to` (a subscriber or a dead-letter sink of `trigger`).
    async fn sink(
        &self,
        trigger: &str,
        to: &Subscriber,
        timeout: Duration,
    ) -> Result<Arc<dyn Sink>, RunError> {
        let config = &self.config;
        let refused = |why: String| RunError::Trigger {
            trigger: trigger.to_owned(),
            why,
        };
        Ok(match to {
            Subscriber::Http(url) => {
                let url = reqwest::Url::parse(url)
                    .map_err(|e| refused(format!("{}: {e}", to.shown())))?;
                Arc::new(
                    HttpSink::new(
                        url,
                        config.ce_mode,
                        self.client.clone(),
                        timeout,
                        loops::via(&config.gateway_name),
                    )
                    .with_token(config.watcher_token.as_deref())?,
                )
            }
            Subscriber::Nats(subject) => {
                let n = self.nats_config().ok_or_else(|| {
                    refused("a nats: destination, and no NATS settings were read".into())
                })?;
                let client = self.nats_client(n).await?;
                Arc::new(NatsSink::new(
                    client,
                    n,
                    SubjectTemplate::new(subject, &config.gateway_name, &config.namespace),
                    timeout,
                    self.metrics.nats.clone(),
                ))
            }
        })
    }

    fn nats_config(&self) -> Option<&NatsConfig> {
        self.config.trigger_nats.as_ref()
    }

    async fn nats_client(&self, n: &NatsConfig) -> Result<async_nats::Client, RunError> {
        let mut held = self.nats.lock().await;
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let c = gateway_common::nats::connect(
            &n.connection,
            "gateway-transformer-triggers",
            self.metrics.nats.connection.clone(),
        )
        .await?;
        *held = Some(c.clone());
        Ok(c)
    }
}

/// A trigger's `spec.delivery` over the `WATCHER_*` defaults: Knative's
/// `retry` counts retries, so attempts are one more.
fn policy(defaults: &config::RetryPolicy, t: &Trigger) -> config::RetryPolicy {
    let d = &t.delivery;
    let base = d.backoff_delay.unwrap_or(defaults.base);
    config::RetryPolicy {
        timeout: d.timeout.unwrap_or(defaults.timeout),
        base,
        cap: defaults.cap.max(base),
        attempts: d.retry.map_or(defaults.attempts, |r| r.saturating_add(1)),
        linear: d.backoff_policy == Some(BackoffPolicy::Linear),
        retry_after_max: d.retry_after_max,
    }
}

/// What tells this version of a trigger from another.
fn key(t: &Trigger) -> TriggerKey {
    TriggerKey {
        name: t.name.clone(),
        delivery: format!("{:?} {:?} {:?}", t.subscriber, t.delivery, t.rate_limit),
        filter: format!("{:?}", t.filter),
    }
}

/// What `GET /triggers` shows of each trigger.
pub fn views(triggers: &[Trigger], metrics: &Metrics) -> Vec<TriggerView> {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    triggers
        .iter()
        .map(|t| {
            TriggerView {
            name: t.name.clone(),
            subscriber: t.subscriber.shown(),
            filter: t.filter.as_ref().map_or(serde_json::Value::Null, |f| f.describe()),
            delivery: serde_json::json!({
                "retry": t.delivery.retry,
                "backoffPolicy": t.delivery.backoff_policy.map(|p| match p {
                    BackoffPolicy::Linear => "linear",
                    BackoffPolicy::Exponential => "exponential",
                }),
                "backoffDelaySeconds": secs(t.delivery.backoff_delay),
                "timeoutSeconds": secs(t.delivery.timeout),
                "retryAfterMaxSeconds": secs(t.delivery.retry_after_max),
                "deadLetterSink": t.delivery.dead_letter_sink.as_ref().map(Subscriber::shown),
            }),
            rate_limit: t.rate_limit.map_or(serde_json::Value::Null, |r| {
                serde_json::json!({"perSeconds": r.per.as_secs(), "requestsPerUnit": r.requests})
            }),
            queue_depth: metrics.watcher(&t.name).queue_depth,
        }
        })
        .collect()
}

/// Everything under `path`, to see that it changed.
fn contents(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let files = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
        _ => vec![path.to_owned()],
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read(&f).unwrap_or_default();
            (f, text)
        })
        .collect();
    out.sort();
    out
}

/// Watches `path` until `stop`, taking each change that loads.
pub async fn watch(path: PathBuf, reach: Reach, state: Arc<AppState>, stop: CancellationToken) {
    let mut seen = contents(&path);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
        let now = contents(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let result = match apply(&path, &reach, &state).await {
            Ok(n) => {
                tracing::info!(triggers = n, path = %path.display(), "TRANSFORMER_TRIGGERS changed: the new set is taken");
                "applied"
            }
            Err(why) => {
                tracing::warn!(%why, "TRANSFORMER_TRIGGERS changed but the change is refused; the last good set stays");
                "refused"
            }
        };
        state
            .metrics
            .trigger_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

/// Loads `path` and hands the new routes to the dispatcher; the number of
/// triggers, or why not.
async fn apply(path: &Path, reach: &Reach, state: &AppState) -> Result<usize, String> {
    let triggers = triggers::load(path).map_err(|e| format!("TRANSFORMER_TRIGGERS: {e}"))?;
    let routes = reach.routes(&triggers).await.map_err(|e| e.to_string())?;
    let dispatcher = state.intake.dispatcher().map_err(|e| e.to_string())?;
    dispatcher.reload(routes).await.map_err(|e| e.to_string())?;
    *state.triggers.write().unwrap_or_else(|p| p.into_inner()) = views(&triggers, &state.metrics);
    Ok(triggers.len())
}
