//! A configuration's events and notices, to the processor-client. Over HTTP an
//! event is posted until the processor-client takes it: 503 waits `Retry-After`,
//! a connection failure waits a moment; only a 4xx (the event itself is wrong) or
//! a stop ends the attempt without success. On a gRPC call an event is written to
//! the call's stream, waiting while the stream is full (the gateway is not
//! reading: HTTP/2 flow control).

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ConfigData;

#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("the configuration was stopped before the event was taken")]
    Stopped,
    #[error("the processor-client refused the event with {status}: {body}")]
    Refused { status: u16, body: String },
}

/// A configuration's line to the processor-client. Cheap to clone.
#[derive(Clone)]
pub struct Emitter {
    pub(crate) line: Line,
    pub(crate) config: ConfigData,
    pub(crate) stop: CancellationToken,
}

/// Where events go.
#[derive(Clone)]
pub(crate) enum Line {
    /// Posted to the processor-client's HTTP endpoints.
    Http(HttpLine),
    /// Written to the configuration's gRPC call; an `Err` ends the call with
    /// that status.
    Stream(mpsc::Sender<Result<Bytes, tonic::Status>>),
}

#[derive(Clone)]
pub(crate) struct HttpLine {
    pub(crate) client: reqwest::Client,
    pub(crate) base: String,
    pub(crate) event_path: String,
    pub(crate) running_path: String,
    pub(crate) error_path: String,
}

impl Emitter {
    /// Sends one event; returns the CloudEvent id the gateway gave it (over
    /// HTTP; a gRPC stream has no answer, and the id is empty).
    pub async fn emit(&self, payload: &[u8]) -> Result<String, EmitError> {
        let http = match &self.line {
            Line::Http(http) => http,
            Line::Stream(tx) => {
                self.write(tx, Ok(Bytes::copy_from_slice(payload))).await?;
                return Ok(String::new());
            }
        };
        let body = serde_json::json!({
            "src": self.config.src,
            "payload": base64::engine::general_purpose::STANDARD.encode(payload),
        });
        let answer = self.post(http, &http.event_path, &body).await?;
        Ok(serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap_or_default())
    }

    /// Reports that the configuration runs (a gRPC call counts as running once
    /// it is open, so there it does nothing).
    pub async fn running(&self) -> Result<(), EmitError> {
        match &self.line {
            Line::Http(http) => {
                let body = serde_json::to_value(&self.config).unwrap_or_default();
                self.post(http, &http.running_path, &body).await.map(|_| ())
            }
            Line::Stream(_) => Ok(()),
        }
    }

    /// Reports that the configuration failed; it shows as Error with `message`.
    /// On a gRPC call this ends the call with FAILED_PRECONDITION.
    pub async fn error(&self, message: &str) -> Result<(), EmitError> {
        match &self.line {
            Line::Http(http) => {
                let body = serde_json::json!({ "src": self.config.src, "message": message });
                self.post(http, &http.error_path, &body).await.map(|_| ())
            }
            Line::Stream(tx) => {
                let status = tonic::Status::failed_precondition(message);
                self.write(tx, Err(status)).await
            }
        }
    }

    async fn write(
        &self,
        tx: &mpsc::Sender<Result<Bytes, tonic::Status>>,
        item: Result<Bytes, tonic::Status>,
    ) -> Result<(), EmitError> {
        tokio::select! {
            _ = self.stop.cancelled() => Err(EmitError::Stopped),
            sent = tx.send(item) => sent.map_err(|_| EmitError::Stopped),
        }
    }

    pub fn config(&self) -> &ConfigData {
        &self.config
    }

    async fn post(
        &self,
        http: &HttpLine,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<String, EmitError> {
        let url = format!("{}{}", http.base, path);
        loop {
            if self.stop.is_cancelled() {
                return Err(EmitError::Stopped);
            }
            let wait = match http.client.post(&url).json(body).send().await {
                Ok(r) if r.status().is_success() => return Ok(r.text().await.unwrap_or_default()),
                Ok(r) if r.status().as_u16() == 503 || r.status().as_u16() == 429 => {
                    let secs = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(1);
                    Duration::from_secs(secs.clamp(1, 60))
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status().as_u16();
                    return Err(EmitError::Refused {
                        status,
                        body: r.text().await.unwrap_or_default(),
                    });
                }
                Ok(_) | Err(_) => Duration::from_millis(200),
            };
            tokio::select! {
                _ = self.stop.cancelled() => return Err(EmitError::Stopped),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
