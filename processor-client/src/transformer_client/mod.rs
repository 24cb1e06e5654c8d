//! The client side of the transformer's `POST /`, used by the processor-client. It
//! sorts every outcome into the three answers a producer needs: accepted, try again
//! later, or refused. Once the transformer offers batches, concurrent events go
//! together ([`batch`]); a transformer that does not only ever sees `POST /`.

mod batch;

pub use batch::Ordered;

use std::sync::Arc;
use std::time::Duration;

use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use bytes::Bytes;

use gateway_common::env::join_host_port;
use gateway_common::error::{error_chain, ErrorCode};
use gateway_common::tls::{bearer, ClientError};

#[derive(Clone)]
pub struct TransformerClient {
    url: reqwest::Url,
    /// Joined once: a join parses the URL again, IDNA host mapping included,
    /// which showed in profiles when it ran for every batch.
    batch_url: reqwest::Url,
    ready_url: reqwest::Url,
    client: reqwest::Client,
    authorization: Option<reqwest::header::HeaderValue>,
    batching: Arc<batch::Batching>,
    claims: Option<Arc<dyn Claims>>,
}

/// A producer's trace context, carried on to the transformer.
pub type Trace = Vec<(&'static str, reqwest::header::HeaderValue)>;

/// A header to send with one event.
type Header = (&'static str, reqwest::header::HeaderValue);

/// This replica's claims, when it shares its configurations with others: the
/// header that tells the transformer until when the claim on an event's
/// configuration holds ([`gateway_common::wire::CLAIM_HEADER`]), asked as the
/// event leaves, or `None` when the claim is no longer held. The transformer
/// refuses an event that arrives later: a replica frozen between the two
/// sends nothing another replica may also send.
pub trait Claims: Send + Sync {
    fn claim_header(&self, src: &str) -> Option<Header>;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The transformer is full or shutting down; retry after the given seconds.
    #[error("transformer busy: {detail}")]
    Busy {
        retry_after_secs: u64,
        detail: String,
    },
    /// The transformer refused the event; retrying the same body will not help.
    /// `code` is the error code its answer names (several share a status:
    /// 409 is `not_owner`, `stale_id`...), `None` for an answer that is not
    /// one of the gateway's JSON errors.
    #[error(
        "transformer refused the event with {status}: {}",
        String::from_utf8_lossy(body)
    )]
    Rejected {
        status: u16,
        code: Option<ErrorCode>,
        body: Bytes,
    },
    /// No answer: connection refused, reset or timed out.
    #[error("transformer unreachable: {0}")]
    Unavailable(String),
}

impl TransformerClient {
    /// A client of the transformer at `host:port`, sending `token` (from
    /// `TRANSFORMER_TOKEN`) as a bearer token when set.
    pub fn new(
        host: &str,
        port: u16,
        timeout: Duration,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let text = format!("http://{}/", join_host_port(host, port));
        let url_error = |source| ClientError::Url {
            var: "TRANSFORMER_HOST",
            value: host.to_owned(),
            source,
        };
        let base = reqwest::Url::parse(&text).map_err(url_error)?;
        let client = gateway_common::tls::client_builder()
            .timeout(timeout)
            .tcp_nodelay(true)
            // Below the transformer's idle timeout, so the pool never reuses
            // a connection the transformer is closing.
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| ClientError::Build {
                what: "the transformer",
                source,
            })?;
        Ok(TransformerClient {
            batch_url: base
                .join(gateway_common::wire::BATCH_PATH.trim_start_matches('/'))
                .map_err(url_error)?,
            ready_url: base.join("readyz").map_err(url_error)?,
            url: base,
            client,
            authorization: bearer("TRANSFORMER_TOKEN", token)?,
            batching: Arc::new(batch::Batching::new(true)),
            claims: None,
        })
    }

    /// Sends each event with its claim's header, asked of `claims` as it leaves.
    pub fn with_claims(mut self, claims: Arc<dyn Claims>) -> Self {
        self.claims = Some(claims);
        self
    }

    /// The claim header for an event of `src` leaving now; a 409 `not_owner`
    /// answer when the claim is no longer held.
    fn claim(&self, src: Option<&str>) -> Result<Option<Header>, SendError> {
        let (Some(claims), Some(src)) = (&self.claims, src) else {
            return Ok(None);
        };
        claims.claim_header(src).map(Some).ok_or_else(|| {
            let body = serde_json::json!({
                "error": ErrorCode::NotOwner.as_str(),
                "detail": format!("this replica no longer holds configuration {src:?}; it runs elsewhere"),
            });
            SendError::Rejected {
                status: 409,
                code: Some(ErrorCode::NotOwner),
                body: Bytes::from(body.to_string()),
            }
        })
    }

    /// `false`: only ever `POST /`, whatever the transformer offers.
    pub fn with_batching(mut self, enabled: bool) -> Self {
        self.batching = Arc::new(batch::Batching::new(enabled));
        self
    }

    /// Hands on an already-encoded `{src, payload}` body; returns the transformer's
    /// JSON answer (it carries the CloudEvent id) on success. `trace` carries the
    /// producer's `traceparent` / `tracestate` headers on.
    pub async fn send(&self, src: &str, body: Bytes, trace: Trace) -> Result<Bytes, SendError> {
        let src = self.claims.is_some().then(|| src.to_owned());
        match self.batching.offer(body, trace, src) {
            Ok(answer) => answer
                .await
                .unwrap_or_else(|_| Err(SendError::Unavailable("the batch sender stopped".into()))),
            Err((body, trace, src)) => self.send_one(body, &trace, src.as_deref()).await,
        }
    }

    /// Sends a user server's `POST /events` on, in order, with one result
    /// per event: what a single `POST /` would have answered for it.
    pub async fn send_in_order(
        &self,
        events: Vec<Ordered>,
        trace: Trace,
    ) -> Vec<gateway_common::wire::BatchResult> {
        batch::in_order(self, events, &trace).await
    }

    /// One `POST /`; notes whether the transformer offers batches.
    async fn send_one(
        &self,
        body: Bytes,
        trace: &Trace,
        src: Option<&str>,
    ) -> Result<Bytes, SendError> {
        let claim = self.claim(src)?;
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(auth) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        for (name, value) in trace.iter().chain(&claim) {
            request = request.header(*name, value.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|e| SendError::Unavailable(error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            let offered = response
                .headers()
                .get(gateway_common::wire::BATCH_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            self.batching.offered(self, offered.unwrap_or(0));
        }
        let retry_after = retry_after(response.headers());
        let body = response
            .bytes()
            .await
            .map_err(|e| SendError::Unavailable(error_chain(&e)))?;
        classify(status.as_u16(), retry_after, body)
    }

    /// True when the transformer answers its readiness probe.
    pub async fn ready(&self) -> bool {
        matches!(
            self.client.get(self.ready_url.clone()).timeout(Duration::from_secs(1)).send().await,
            Ok(r) if r.status().is_success()
        )
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Sorts an answer for one event into accepted, busy, or refused.
fn classify(status: u16, retry_after: Option<u64>, body: Bytes) -> Result<Bytes, SendError> {
    if (200..300).contains(&status) {
        Ok(body)
    } else if status >= 500 || status == 429 {
        Err(SendError::Busy {
            retry_after_secs: retry_after.unwrap_or(1),
            detail: String::from_utf8_lossy(&body).into_owned(),
        })
    } else {
        Err(SendError::Rejected {
            status,
            code: ErrorCode::of_body(&body),
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims that are all lapsed, and a count of how often they were asked.
    #[derive(Default)]
    struct Lapsed(std::sync::atomic::AtomicUsize);

    impl Claims for Lapsed {
        fn claim_header(&self, _: &str) -> Option<Header> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        }
    }

    #[tokio::test]
    async fn an_event_whose_claim_lapsed_is_answered_not_owner_and_not_sent() {
        // Nothing listens on port 1: an event sent would come back Unavailable.
        let claims = Arc::new(Lapsed::default());
        let client = TransformerClient::new("127.0.0.1", 1, Duration::from_secs(2), None)
            .expect("client")
            .with_claims(claims.clone());
        match client
            .send("a", Bytes::from_static(b"{}"), Vec::new())
            .await
        {
            Err(SendError::Rejected {
                status: 409,
                code: Some(ErrorCode::NotOwner),
                body,
            }) => {
                let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
                assert_eq!(body["error"], "not_owner");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(claims.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
