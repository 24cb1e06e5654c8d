//! The gRPC configurations' user server (the generic event source contract):
//! one call per configuration, each streaming events paced at its rate, each
//! numbered in its configuration's sequence as the call takes it.
//! The nemesis can kill it: every call fails at once, nothing listens for a
//! while, then it listens again on the same port, each configuration going
//! on from its next number. The protocol has no acknowledgement, so what the
//! processor-client read and then lost (killed before the transformer took it)
//! is only counted, never called lost by the checker.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

pub mod proto {
    tonic::include_proto!("generic");
}

use proto::eventing_server::{Eventing, EventingServer};

/// The server's state across its restarts.
pub struct GrpcSource {
    port: u16,
    /// Between two events of a call.
    period: Mutex<Duration>,
    /// Per configuration, the next sequence number.
    next: Mutex<HashMap<String, u64>>,
    /// Bumped by a kill: every call of an earlier life fails.
    life: watch::Sender<u64>,
}

impl GrpcSource {
    /// Put on a call so far, per configuration (whether or not the
    /// processor-client read them before the call ended).
    pub fn sent(&self) -> HashMap<String, u64> {
        self.next.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn take_next(&self, src: &str) -> u64 {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let n = next.entry(src.to_owned()).or_default();
        *n += 1;
        *n - 1
    }

    /// Sets the pace of every call, from its next event on.
    pub fn pace(&self, period: Duration) {
        *self.period.lock().unwrap_or_else(|p| p.into_inner()) = period;
    }

    fn period(&self) -> Duration {
        *self.period.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts listening (again).
    pub async fn listen(self: &Arc<Self>) {
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let service = EventingServer::new(Service(self.clone()));
        let mut life = self.life.subscribe();
        let born = *life.borrow_and_update();
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let killed = async move {
                while *life.borrow_and_update() == born {
                    if life.changed().await.is_err() {
                        return;
                    }
                }
            };
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, killed)
                .await;
        });
    }

    /// Fails every call and stops listening.
    pub fn kill(&self) {
        self.life.send_modify(|n| *n += 1);
    }
}

/// Starts the server on `port`, each call sending one event per `period`
/// until paced otherwise.
pub async fn start(port: u16, period: Duration) -> Arc<GrpcSource> {
    let source = Arc::new(GrpcSource {
        port,
        period: Mutex::new(period),
        next: Mutex::new(HashMap::new()),
        life: watch::channel(0).0,
    });
    source.listen().await;
    gateway_tests::wait_port(port, "the gRPC user server").await;
    source
}

struct Service(Arc<GrpcSource>);

type Events = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

/// A call's state: its configuration, its pace, and the life it began in.
struct Call {
    src: String,
    source: Arc<GrpcSource>,
    life: watch::Receiver<u64>,
    ended: bool,
}

#[tonic::async_trait]
impl Eventing for Service {
    type StartEventSourceStream = Events;

    async fn start_event_source(
        &self,
        request: Request<proto::EventSource>,
    ) -> Result<Response<Events>, Status> {
        let src = request.into_inner().name;
        let mut life = self.0.life.subscribe();
        life.borrow_and_update();
        let call = Call {
            src,
            source: self.0.clone(),
            life,
            ended: false,
        };
        let stream = futures::stream::unfold(call, |mut call| async move {
            if call.ended {
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep(call.source.period()) => {
                    // Numbered as the call takes it.
                    let seq = call.source.take_next(&call.src);
                    let payload = serde_json::json!({ "src": call.src, "seq": seq }).to_string();
                    let event = proto::Event { name: call.src.clone(), payload: payload.into_bytes() };
                    Some((Ok(event), call))
                }
                _ = call.life.changed() => {
                    call.ended = true;
                    Some((Err(Status::unavailable("the user server was killed")), call))
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
