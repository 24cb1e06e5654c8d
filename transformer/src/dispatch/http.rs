//! HTTP destinations: sensors (`SENSOR_WATCHERS`) and other gateways
//! (`GATEWAY_WATCHERS`), in the binary or structured mode that `CE_MODE` names.

use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use futures::future::BoxFuture;
use gateway_common::tls::ClientError;

use super::{DeliveryError, Sink};
use crate::cloudevent::{CloudEvent, STRUCTURED_CONTENT_TYPE};
use crate::config::CeMode;

pub struct HttpSink {
    url: reqwest::Url,
    name: String,
    identity: String,
    mode: CeMode,
    client: reqwest::Client,
    timeout: Duration,
    authorization: Option<HeaderValue>,
    /// `Via`, so a gateway that gets an event back around a loop recognises
    /// it (`crate::loops`).
    via: HeaderValue,
}

impl HttpSink {
    pub fn new(
        url: reqwest::Url,
        mode: CeMode,
        client: reqwest::Client,
        timeout: Duration,
        via: HeaderValue,
    ) -> Self {
        HttpSink {
            // A metrics label, and in every log line and dead letter about
            // it: a password in the URL is hidden.
            name: gateway_common::redact::url(url.as_str()),
            identity: url.to_string(),
            url,
            mode,
            client,
            timeout,
            authorization: None,
            via,
        }
    }

    /// Sends `Authorization: Bearer TOKEN` (from `WATCHER_TOKEN`) with every
    /// delivery; a token that cannot be sent is an error at start.
    pub fn with_token(mut self, token: Option<&str>) -> Result<Self, ClientError> {
        self.authorization = gateway_common::tls::bearer("WATCHER_TOKEN", token)?;
        Ok(self)
    }

    /// One client for all HTTP sinks: connections are pooled per host, redirects
    /// are not followed (a POST must not silently become a GET), and HTTPS trusts
    /// the platform's roots plus `extra_roots` (or only those, where the platform
    /// verifier cannot merge).
    pub fn client(extra_roots: Vec<reqwest::Certificate>) -> Result<reqwest::Client, ClientError> {
        let base = || {
            gateway_common::tls::client_builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(30))
                .tcp_nodelay(true)
        };
        base()
            .tls_certs_merge(extra_roots.clone())
            .build()
            .or_else(|_| base().tls_certs_only(extra_roots).build())
            .map_err(|source| ClientError::Build {
                what: "the HTTP watchers (WATCHER_TLS_CA)",
                source,
            })
    }

    async fn post(&self, event: &CloudEvent) -> Result<(), DeliveryError> {
        let request = match self.mode {
            CeMode::Binary => self
                .client
                .post(self.url.clone())
                .headers(event.to_binary_headers())
                .body(event.data.clone()),
            CeMode::Structured => self
                .client
                .post(self.url.clone())
                .header(
                    CONTENT_TYPE,
                    HeaderValue::from_static(STRUCTURED_CONTENT_TYPE),
                )
                .body(event.to_structured_json()),
        };
        let mut request = request;
        if let Some(auth) = &self.authorization {
            request = request.header(axum::http::header::AUTHORIZATION, auth.clone());
        }
        request = request.header(axum::http::header::VIA, self.via.clone());
        // The distributed-tracing extension travels as the HTTP header too, so a
        // sensor's tracing joins the producer's trace without reading CloudEvents.
        for name in ["traceparent", "tracestate"] {
            if let Some((_, v)) = event.extensions.iter().find(|(k, _)| k == name) {
                if let Ok(v) = HeaderValue::from_str(v) {
                    request = request.header(name, v);
                }
            }
        }
        let response = request.timeout(self.timeout).send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else {
                "failed"
            };
            DeliveryError::retryable(format!(
                "POST {} {what}: {}",
                self.name,
                gateway_common::error::error_chain(&e.without_url())
            ))
        })?;
        let mut response = response;
        let status = response.status();
        if status.is_success() {
            // Reading the (short) answer to its end lets the connection go back to
            // the pool; a dropped unread body would close it. Past 64 KiB it is not
            // worth keeping.
            let mut read = 0usize;
            while let Ok(Some(chunk)) = response.chunk().await {
                read += chunk.len();
                if read > 64 * 1024 {
                    break;
                }
            }
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let raw = gateway_common::answer::prefix_bytes(response, super::ANSWER_BODY_BYTES).await;
        let body: String = String::from_utf8_lossy(&raw).chars().take(512).collect();
        let message = format!("POST {} answered {status}: {body}", self.name);
        let answer = super::Answer {
            status: status.as_u16(),
            body: raw,
            retry_after,
        };
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(DeliveryError::retryable(message).with_answer(answer))
        } else {
            Err(DeliveryError::permanent(message).with_answer(answer))
        }
    }
}

impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn identity(&self) -> &str {
        &self.identity
    }

    fn deliver<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.post(event))
    }
}
