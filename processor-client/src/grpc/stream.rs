//! One configuration on a gRPC user server: a task that owns its call. A new
//! value cancels the running call and opens one with the new value; removal
//! cancels it (the server sees CANCELLED). While the configuration should run,
//! the call is opened again after any end the contract calls transient (the
//! server gone, a reset, UNAVAILABLE, a stream closed with OK, no response
//! headers in time) with capped exponential backoff and jitter, for ever; the
//! codes [`super::is_permanent`] names put it in Error until its value changes.
//!
//! Backpressure: a stream's next message is read only once the transformer has
//! taken the one before. While the transformer answers 503 the message is
//! offered again after `Retry-After`, and nothing more is read, so HTTP/2 flow
//! control holds the server. A message the processor-client has read is never
//! dropped while it runs; one read but not yet taken when it dies is lost (the
//! contract has no acknowledgement).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_common::backoff::Backoff;
use gateway_common::error::{error_chain, ErrorCode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{is_permanent, GrpcServer};
use crate::command::Command;
use crate::configs::{ConfigData, Registry};
use crate::metrics::Metrics;
use crate::transformer_client::{SendError, TransformerClient};

/// What every configuration's task shares.
pub struct Shared {
    pub registry: Arc<Registry>,
    pub server: GrpcServer,
    pub transformer: TransformerClient,
    pub metrics: Arc<Metrics>,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// With sharing: events go on only while this replica holds the claim.
    pub sharing: Option<Arc<crate::sharing::Sharing>>,
}

/// The lifecycle of one key.
pub(crate) struct StreamTask {
    src: String,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Command>,
    stop_all: CancellationToken,
}

/// The call running for the current value.
struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn cancel(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

impl StreamTask {
    pub(crate) fn new(
        src: String,
        shared: Arc<Shared>,
        rx: mpsc::UnboundedReceiver<Command>,
        stop_all: CancellationToken,
    ) -> Self {
        StreamTask {
            src,
            shared,
            rx,
            stop_all,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut running: Option<Running> = None;
        loop {
            let command = tokio::select! {
                biased;
                _ = self.stop_all.cancelled() => None,
                command = self.rx.recv() => command,
            };
            if let Some(call) = running.take() {
                call.cancel().await;
            }
            match command {
                None => {
                    self.stopped("the processor-client is shutting down");
                    return;
                }
                // The call was cancelled above; the ticket goes with this arm.
                Some(Command::Remove(_stopping)) => self.stopped("removed"),
                Some(Command::Apply(value)) => {
                    let data = ConfigData::new(&self.src, &value);
                    self.shared.registry.starting(&data, "opening the stream");
                    let cancel = self.stop_all.child_token();
                    let call = Call {
                        shared: self.shared.clone(),
                        data,
                        cancel: cancel.clone(),
                    };
                    running = Some(Running {
                        cancel,
                        task: tokio::spawn(call.run()),
                    });
                }
            }
        }
    }

    fn stopped(&self, why: &str) {
        tracing::info!(src = %self.src, why, "configuration stopped");
        self.shared.registry.stopped(&self.src, why);
    }
}

/// How a call ended.
enum End {
    /// The call was cancelled (removed, changed, shutting down).
    Cancelled,
    /// Error until the value changes.
    Permanent(String),
    /// Open again after a backoff; `read` says whether messages came first.
    Transient { why: String, read: bool },
}

/// One value's call, opened again until it ends for good.
struct Call {
    shared: Arc<Shared>,
    data: ConfigData,
    cancel: CancellationToken,
}

impl Call {
    async fn run(self) {
        let src = &self.data.src;
        let mut backoff = Backoff::new(self.shared.retry_base, self.shared.retry_cap);
        loop {
            match self.once().await {
                End::Cancelled => return,
                End::Permanent(why) => {
                    tracing::warn!(%src, %why, "the user server refused the configuration");
                    self.shared.registry.error(src, &why);
                    return;
                }
                End::Transient { why, read } => {
                    if read {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    self.shared.metrics.grpc.reconnects.inc();
                    tracing::warn!(%src, %why, retry_in = ?delay, "stream ended; opening it again");
                    self.shared
                        .registry
                        .pending(src, &format!("{why}; opening the stream again"));
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Opens the call and forwards its messages until it ends.
    async fn once(&self) -> End {
        let server = &self.shared.server;
        let opened = tokio::select! {
            _ = self.cancel.cancelled() => return End::Cancelled,
            opened = tokio::time::timeout(
                server.open_timeout(),
                server.open(&self.data.src, &self.data.config),
            ) => opened,
        };
        let mut events = match opened {
            Err(_) => {
                return End::Transient {
                    // grpcio and grpc-js hold the headers back until the
                    // first message unless told: say what to do.
                    why: format!(
                        "no response headers within {:?}: a server must send them when the call opens, \
                         before its first event (grpcio: context.send_initial_metadata(()); \
                         grpc-js: call.sendMetadata(new Metadata())), or raise \
                         GATEWAY_PROCESSOR_SERVER_TIMEOUT",
                        server.open_timeout()
                    ),
                    read: false,
                };
            }
            Ok(Err(status)) => return ended(&status, false, self.shared.server.contract()),
            Ok(Ok(events)) => events,
        };
        let _open = OpenGuard::new(&self.shared.metrics);
        let _ = self.shared.registry.running(&self.data.src, None);
        tracing::info!(src = %self.data.src, id = %self.data.id, "stream open");
        let mut read = false;
        loop {
            let next = tokio::select! {
                _ = self.cancel.cancelled() => return End::Cancelled,
                next = events.next() => next,
            };
            match next {
                Ok(Some(payload)) => {
                    read = true;
                    self.shared.metrics.grpc.messages_read.inc();
                    if !self.forward(payload).await {
                        return End::Cancelled;
                    }
                }
                Ok(None) => {
                    return End::Transient {
                        why: "the server ended the stream".into(),
                        read,
                    }
                }
                Err(status) => return ended(&status, read, self.shared.server.contract()),
            }
        }
    }

    /// Hands one event to the transformer, offering it again while it is
    /// refused for now. False when cancelled first.
    async fn forward(&self, payload: Bytes) -> bool {
        let body = Bytes::from(gateway_common::wire::encode_event(&self.data.src, &payload));
        let mut backoff = None;
        loop {
            if let Some(sharing) = &self.shared.sharing {
                // Checked before each offer, as the event leaves, and by the
                // transformer on arrival.
                if !sharing.may_forward(&self.data.src) {
                    // The claim lapsed (this replica was frozen or cut off):
                    // the configuration may run elsewhere now, so nothing more
                    // of it goes on from here; the supervisor is cancelling
                    // the call.
                    tracing::warn!(src = %self.data.src, "not forwarded: this replica no longer holds the configuration");
                    return false;
                }
            }
            let wait = match self
                .shared
                .transformer
                .send(&self.data.src, body.clone(), Vec::new())
                .await
            {
                Ok(_) => {
                    self.shared.metrics.events_forwarded.inc();
                    return true;
                }
                Err(SendError::Rejected {
                    code: Some(ErrorCode::NotOwner),
                    ..
                }) => {
                    // The claim lapsed before the event reached the transformer.
                    self.shared.metrics.refused(ErrorCode::NotOwner);
                    tracing::warn!(src = %self.data.src, "not forwarded: the claim lapsed before the transformer had the event");
                    return false;
                }
                Err(SendError::Busy {
                    retry_after_secs, ..
                }) => Duration::from_secs(retry_after_secs.max(1)),
                Err(SendError::Unavailable(why)) => {
                    tracing::warn!(src = %self.data.src, %why, "transformer unreachable; holding the stream");
                    backoff
                        .get_or_insert_with(|| {
                            Backoff::new(self.shared.retry_base, self.shared.retry_cap)
                        })
                        .next_delay()
                }
                Err(e @ SendError::Rejected { code, .. }) => {
                    // The transformer will never take this event (too large,
                    // say): it is counted and logged, and the stream goes on.
                    self.shared
                        .metrics
                        .refused(code.unwrap_or(ErrorCode::BadRequest));
                    tracing::error!(src = %self.data.src, error = %error_chain(&e), "the transformer refused an event; it is dropped");
                    return true;
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

fn ended(status: &tonic::Status, read: bool, contract: super::Contract) -> End {
    let mut message = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    };
    // What an HTTP/1 server (the user server's HTTP port, a server that is
    // not gRPC) or a TLS one spoken to in plaintext makes of HTTP/2.
    if !read && (message.contains("h2 protocol error") || message == "Unknown: transport error") {
        message.push_str(
            " (does a gRPC server listen on GATEWAY_PROCESSOR_SERVER_GRPC_PORT? an HTTP/1 \
             server, or a TLS one without GATEWAY_PROCESSOR_SERVER_TLS_CA, answers so)",
        );
    }
    // A server of the other proto answers every call so, in its framework's
    // words (grpcio, grpc-js, grpc-go; tonic says nothing); a server's own
    // UNIMPLEMENTED for a kind of configuration it lacks says something else.
    let no_method = {
        let text = status.message().to_ascii_lowercase();
        text.is_empty()
            || [
                "method not found",
                "does not implement",
                "unknown service",
                "unknown method",
            ]
            .iter()
            .any(|words| text.contains(words))
    };
    if !read && status.code() == tonic::Code::Unimplemented && no_method {
        let (method, setting) = contract.method();
        let (other_method, other) = match contract {
            super::Contract::Generic => super::Contract::V06.method(),
            super::Contract::V06 => super::Contract::Generic.method(),
        };
        message.push_str(&format!(
            " (the user server does not serve {method}, which \
             GATEWAY_PROCESSOR_SERVER_PROTOCOL={setting} calls; a server of {other_method} \
             needs GATEWAY_PROCESSOR_SERVER_PROTOCOL={other})"
        ));
    }
    if is_permanent(status) {
        End::Permanent(message)
    } else {
        End::Transient { why: message, read }
    }
}

/// Counts a stream in `processor_grpc_streams_open` while it is open.
struct OpenGuard(prometheus_client::metrics::gauge::Gauge);

impl OpenGuard {
    fn new(metrics: &Metrics) -> Self {
        metrics.grpc.streams_open.inc();
        OpenGuard(metrics.grpc.streams_open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::Contract;

    fn permanent(status: tonic::Status, contract: Contract) -> String {
        match ended(&status, false, contract) {
            End::Permanent(message) => message,
            _ => panic!("{status:?} is permanent"),
        }
    }

    #[test]
    fn a_server_of_the_other_proto_is_named_and_a_servers_own_refusal_is_not() {
        // grpcio's words; tonic's (none); grpc-js's.
        for text in [
            "Method not found!",
            "",
            "The server does not implement the method /gateways.GatewayExecutor/RunGateway",
        ] {
            let message = permanent(tonic::Status::unimplemented(text), Contract::V06);
            assert!(
                message.contains("GATEWAY_PROCESSOR_SERVER_PROTOCOL=grpc)"),
                "{message}"
            );
        }
        let message = permanent(
            tonic::Status::unimplemented("kafka sources are not supported yet"),
            Contract::Generic,
        );
        assert_eq!(
            message,
            "Unimplemented: kafka sources are not supported yet"
        );
    }
}
