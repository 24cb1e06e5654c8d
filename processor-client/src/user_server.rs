//! The processor-client's side of the user server: `POST /start` and `POST /stop`,
//! each answer sorted as the contract reads it, and a liveness probe that notices a
//! user server that went away and came back (and so lost its configurations).

use std::time::Duration;

use gateway_common::error::error_chain;
use gateway_common::tls::ClientError;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::configs::ConfigData;

/// What one request to the user server came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Accepted,
    /// 4xx: the configuration is invalid; the body says why.
    Rejected { status: u16, body: String },
    /// 5xx, timeout or no connection: worth retrying. `refused` means nothing
    /// listens on the port, i.e. the user server is not running.
    Failed { message: String, refused: bool },
}

/// At most this many `/start` and `/stop` requests are in flight at once: starting
/// ten thousand configurations must not mean ten thousand connections.
const MAX_IN_FLIGHT: usize = 32;

#[derive(Clone)]
pub struct UserServer {
    client: reqwest::Client,
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    start_url: reqwest::Url,
    stop_url: reqwest::Url,
    host: String,
    port: u16,
    authorization: Option<reqwest::header::HeaderValue>,
}

impl UserServer {
    pub fn new(
        host: &str,
        port: u16,
        start_path: &str,
        stop_path: &str,
        timeout: Duration,
        token: Option<&str>,
        tls_ca: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let scheme = if tls_ca.is_some() { "https" } else { "http" };
        let base = format!(
            "{scheme}://{}",
            gateway_common::env::join_host_port(host, port)
        );
        let url = |path: &str| {
            reqwest::Url::parse(&format!("{base}{path}")).map_err(|source| ClientError::Url {
                var: "GATEWAY_PROCESSOR_SERVER_HOST",
                value: host.to_owned(),
                source,
            })
        };
        let mut builder = gateway_common::tls::client_builder();
        if let Some(ca) = tls_ca {
            for cert in gateway_common::tls::load_ca("GATEWAY_PROCESSOR_SERVER_TLS_CA", ca)
                .map_err(ClientError::Ca)?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .build()
            .map_err(|source| ClientError::Build {
                what: "the user server",
                source,
            })?;
        Ok(UserServer {
            client,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            start_url: url(start_path)?,
            stop_url: url(stop_path)?,
            host: host.to_owned(),
            port,
            authorization: gateway_common::tls::bearer("GATEWAY_PROCESSOR_CLIENT_TOKEN", token)?,
        })
    }

    pub async fn start(&self, data: &ConfigData) -> Outcome {
        self.post(&self.start_url, data).await
    }

    pub async fn stop(&self, data: &ConfigData) -> Outcome {
        self.post(&self.stop_url, data).await
    }

    async fn post(&self, url: &reqwest::Url, data: &ConfigData) -> Outcome {
        let _slot = self.in_flight.acquire().await;
        let mut request = self.client.post(url.clone()).json(data);
        if let Some(auth) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    refused: is_refused(&e),
                    message: explained(error_chain(&e)),
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Outcome::Accepted;
        }
        // The start of the answer is the phase's message; a longer one is cut.
        let body = gateway_common::answer::prefix(response, 8 * 1024).await;
        let body = crate::configs::clip(body.trim()).into_owned();
        if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
            Outcome::Rejected {
                status: status.as_u16(),
                body,
            }
        } else {
            Outcome::Failed {
                message: format!("{url} answered {status}: {body}"),
                refused: false,
            }
        }
    }

    /// Connects and closes: enough to tell whether anything listens on the port.
    /// Returns `Some(true)` up, `Some(false)` refused, `None` inconclusive.
    async fn probe(&self) -> Option<bool> {
        match tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        {
            Ok(Ok(_)) => Some(true),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(false),
            _ => None,
        }
    }
}

/// A failure's text, with where to look when hyper's words do not say: an
/// HTTP/2-only server (a gRPC user server on this port) answers HTTP/1.1 with
/// frames hyper reads as "invalid HTTP version", as it reads any answer that
/// is not HTTP/1.
fn explained(mut message: String) -> String {
    if message.contains("invalid HTTP version") {
        message.push_str(
            " (the server on GATEWAY_PROCESSOR_SERVER_HTTP_PORT does not answer in HTTP/1.1; \
             a gRPC user server, which speaks HTTP/2 only, needs \
             GATEWAY_PROCESSOR_SERVER_PROTOCOL=grpc or grpc-v06 and \
             GATEWAY_PROCESSOR_SERVER_GRPC_PORT)",
        );
    }
    message
}

fn is_refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = s.source();
    }
    e.is_connect() && error_chain(e).contains("refused")
}

/// Whether the user server is up, and how many times it has come up. A configuration
/// started in an earlier epoch was lost if the epoch has moved on since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthState {
    pub up: bool,
    pub epoch: u64,
}

/// The shared view of the user server's liveness; every change is broadcast.
pub struct Health {
    tx: watch::Sender<HealthState>,
    restarts: Counter,
}

impl Health {
    /// `restarts` counts each return of a user server that had been up before.
    pub fn new(restarts: Counter) -> Self {
        Health {
            tx: watch::channel(HealthState::default()).0,
            restarts,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<HealthState> {
        self.tx.subscribe()
    }

    /// Records that the user server answered. Returns the epoch it is in now.
    pub fn mark_up(&self) -> u64 {
        self.tx.send_if_modified(|s| {
            if s.up {
                false
            } else {
                if s.epoch > 0 {
                    self.restarts.inc();
                    tracing::warn!(
                        epoch = s.epoch + 1,
                        "user server is back; its configurations will be started again"
                    );
                } else {
                    tracing::info!("user server is up");
                }
                s.up = true;
                s.epoch += 1;
                true
            }
        });
        self.tx.borrow().epoch
    }

    /// Records that nothing listens on the user server's port. Returns true if that
    /// is news.
    pub fn mark_down(&self) -> bool {
        self.tx
            .send_if_modified(|s| std::mem::replace(&mut s.up, false))
    }

    pub fn state(&self) -> HealthState {
        *self.tx.borrow()
    }
}

/// How often a user server that stays away is mentioned again.
const STILL_DOWN_EVERY: Duration = Duration::from_secs(60);

/// Probes the user server's port every `interval` until cancelled. A refused connect
/// means the process is gone; the next successful one starts a new epoch, and the
/// supervisor's tasks start their configurations again. The one place that says
/// the user server is not listening (each configuration's refused `/start` is
/// logged at debug): at once, then each minute while it stays away.
pub async fn probe_loop(
    server: UserServer,
    health: std::sync::Arc<Health>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut said: Option<tokio::time::Instant> = None;
    loop {
        match server.probe().await {
            Some(true) => {
                health.mark_up();
                said = None;
            }
            Some(false) => {
                health.mark_down();
                if said.is_none_or(|at| at.elapsed() >= STILL_DOWN_EVERY) {
                    tracing::warn!(
                        host = %server.host,
                        port = server.port,
                        "user server is {}not listening; its configurations are started when it is",
                        if said.is_some() { "still " } else { "" },
                    );
                    said = Some(tokio::time::Instant::now());
                }
            }
            None => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_advance_only_on_the_way_up() {
        let restarts = Counter::default();
        let h = Health::new(restarts.clone());
        assert_eq!(h.mark_up(), 1);
        assert_eq!(h.mark_up(), 1);
        assert!(h.mark_down());
        assert!(!h.mark_down());
        assert_eq!(h.mark_up(), 2);
        assert_eq!(restarts.get(), 1);
    }
}
