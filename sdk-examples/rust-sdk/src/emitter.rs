//! Posting a configuration's events and notices to the processor-client. An event is
//! sent until the processor-client takes it: 503 waits `Retry-After`, a connection
//! failure waits a moment; only a 4xx (the event itself is wrong) or a stop ends
//! the attempt without success.

use std::time::Duration;

use base64::Engine as _;
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
    pub(crate) client: reqwest::Client,
    pub(crate) base: String,
    pub(crate) event_path: String,
    pub(crate) running_path: String,
    pub(crate) error_path: String,
    pub(crate) config: ConfigData,
    pub(crate) stop: CancellationToken,
}

impl Emitter {
    /// Sends one event; returns the CloudEvent id the gateway gave it.
    pub async fn emit(&self, payload: &[u8]) -> Result<String, EmitError> {
        let body = serde_json::json!({
            "src": self.config.src,
            "payload": base64::engine::general_purpose::STANDARD.encode(payload),
        });
        let answer = self.post(&self.event_path, &body).await?;
        Ok(serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap_or_default())
    }

    /// Reports that the configuration runs.
    pub async fn running(&self) -> Result<(), EmitError> {
        let body = serde_json::to_value(&self.config).unwrap_or_default();
        self.post(&self.running_path, &body).await.map(|_| ())
    }

    /// Reports that the configuration failed; it shows as Error with `message`.
    pub async fn error(&self, message: &str) -> Result<(), EmitError> {
        let body = serde_json::json!({ "src": self.config.src, "message": message });
        self.post(&self.error_path, &body).await.map(|_| ())
    }

    pub fn config(&self) -> &ConfigData {
        &self.config
    }

    async fn post(&self, path: &str, body: &serde_json::Value) -> Result<String, EmitError> {
        let url = format!("{}{}", self.base, path);
        loop {
            if self.stop.is_cancelled() {
                return Err(EmitError::Stopped);
            }
            let wait = match self.client.post(&url).json(body).send().await {
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
