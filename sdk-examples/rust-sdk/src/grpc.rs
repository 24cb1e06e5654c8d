//! The user server's gRPC side, for a processor-client with
//! `GATEWAY_PROCESSOR_SERVER_PROTOCOL=grpc` (the generic event source) or
//! `grpc-v06` (Argo v0.6's RunGateway): each call is one configuration, started
//! with the same [`ConfigExecutor`] as over HTTP. A configuration `validate`
//! refuses ends the call with INVALID_ARGUMENT; otherwise the response headers go
//! at once (the gateway shows the configuration Running) and each emitted event
//! is one message. The call's end (the gateway cancelled it: removed, changed,
//! shutting down) cancels the configuration's task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::emitter::Line;
use crate::{ConfigData, ConfigExecutor, Emitter, Unready};

/// The servers generated from `openapi/proto/`.
pub mod proto {
    pub mod generic {
        tonic::include_proto!("generic");
    }
    pub mod gateways {
        tonic::include_proto!("gateways");
    }
}

use proto::gateways::gateway_executor_server::{GatewayExecutor, GatewayExecutorServer};
use proto::generic::eventing_server::{Eventing, EventingServer};

/// Which contract to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `grpc`: `generic.Eventing/StartEventSource`.
    Generic,
    /// `grpc-v06`: `gateways.GatewayExecutor/RunGateway`.
    V06,
}

/// Events written before the gateway reads them; past this, `emit` waits.
const BUFFERED: usize = 16;

struct Service<E> {
    executor: Arc<E>,
    tasks: TaskTracker,
    /// Each source's latest run, so that a new call for it starts only once
    /// the previous call's task finished.
    runs: std::sync::Mutex<std::collections::HashMap<String, crate::tasks::Finished>>,
}

impl<E: ConfigExecutor> Service<E> {
    /// Validates and starts one configuration; its events come out of the
    /// returned stream, each made a message by `message`.
    async fn open<M>(
        &self,
        src: String,
        config: String,
        message: fn(&str, Bytes) -> M,
    ) -> Result<Events<M>, Status> {
        let config = ConfigData {
            id: contract_id(&src, &config),
            time_id: time_id(),
            src,
            config,
        };
        self.executor
            .validate(&config)
            .map_err(Status::invalid_argument)?;
        self.executor.prepare(&config).await.map_err(|e| match e {
            Unready::Later(why) => Status::unavailable(why),
            Unready::Refused(why) => Status::failed_precondition(why),
        })?;
        let (tx, rx) = mpsc::channel(BUFFERED);
        let stop = CancellationToken::new();
        let emitter = Emitter {
            line: Line::Stream(tx),
            config: config.clone(),
            stop: stop.clone(),
        };
        tracing::info!(src = %config.src, id = %config.id, "configuration started");
        let task = self.executor.start(config.clone(), emitter, stop.clone());
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let after = runs.get(&config.src).cloned();
        let finished = crate::tasks::supervise(&self.tasks, task, stop.clone(), after);
        runs.insert(config.src.clone(), finished);
        drop(runs);
        let executor = self.executor.clone();
        Ok(Events {
            rx,
            stop,
            src: config.src.clone(),
            message,
            on_stop: Some(Box::new(move || executor.stop(&config))),
        })
    }
}

/// A configuration's events as the call's response stream. Dropped when the
/// call ends, which stops the configuration.
pub struct Events<M> {
    rx: mpsc::Receiver<Result<Bytes, Status>>,
    stop: CancellationToken,
    src: String,
    message: fn(&str, Bytes) -> M,
    /// The executor's `stop`, called once when the call ends.
    on_stop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl<M> Stream for Events<M> {
    type Item = Result<M, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(payload))) => {
                Poll::Ready(Some(Ok((this.message)(&this.src, payload))))
            }
            Poll::Ready(Some(Err(status))) => Poll::Ready(Some(Err(status))),
            // The configuration's task ended by itself: the call stays open
            // (ending it would make the gateway call again) until cancelled.
            Poll::Ready(None) => Poll::Pending,
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<M> Drop for Events<M> {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(on_stop) = self.on_stop.take() {
            on_stop();
        }
        tracing::info!(src = %self.src, "configuration stopped");
    }
}

#[tonic::async_trait]
impl<E: ConfigExecutor> Eventing for Service<E> {
    type StartEventSourceStream = Events<proto::generic::Event>;

    async fn start_event_source(
        &self,
        request: Request<proto::generic::EventSource>,
    ) -> Result<Response<Self::StartEventSourceStream>, Status> {
        let source = request.into_inner();
        let config = String::from_utf8(source.config)
            .map_err(|_| Status::invalid_argument("the configuration is not UTF-8 text"))?;
        let events = self
            .open(source.name, config, |src, payload| proto::generic::Event {
                name: src.to_owned(),
                payload: payload.to_vec(),
            })
            .await?;
        Ok(Response::new(events))
    }
}

#[tonic::async_trait]
impl<E: ConfigExecutor> GatewayExecutor for Service<E> {
    type RunGatewayStream = Events<proto::gateways::Event>;

    async fn run_gateway(
        &self,
        request: Request<proto::gateways::GatewayConfig>,
    ) -> Result<Response<Self::RunGatewayStream>, Status> {
        let config = request.into_inner();
        let events = self
            .open(config.src, config.config, |_, payload| {
                proto::gateways::Event {
                    data: payload.to_vec(),
                }
            })
            .await?;
        Ok(Response::new(events))
    }
}

/// Serves `executor` as `contract` on a bound listener until `shutdown`.
pub async fn serve_grpc<E: ConfigExecutor>(
    executor: E,
    contract: Contract,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let tasks = TaskTracker::new();
    let service = Service {
        executor: Arc::new(executor),
        tasks: tasks.clone(),
        runs: Default::default(),
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let router = match contract {
        Contract::Generic => {
            tonic::transport::Server::builder().add_service(EventingServer::new(service))
        }
        Contract::V06 => {
            tonic::transport::Server::builder().add_service(GatewayExecutorServer::new(service))
        }
    };
    let served = router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    // The calls are gone, and with them every configuration's stop token.
    crate::tasks::drain(&tasks).await;
    served
}

/// The contract's `id`: FNV-32a of the key followed by the value, in decimal.
fn contract_id(src: &str, config: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in src.bytes().chain(config.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_string()
}

/// A fresh value for each start.
fn time_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}
