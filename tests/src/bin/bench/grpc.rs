//! The load generator as a gRPC user server (the generic event source
//! contract): the processor-client calls it once per configuration, and each
//! call streams events, flat out or paced, as the measurement's phase says.
//! Events are stamped with the time they were due, as the HTTP generator's are,
//! so latency is read the same way at the sensor or NATS subscriber.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

pub mod proto {
    tonic::include_proto!("generic");
}

use proto::eventing_server::{Eventing, EventingServer};

/// What every stream does now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Phase {
    Idle,
    /// As fast as the processor-client reads.
    Flat,
    /// One event per `period` on each stream, spread over the period.
    Paced {
        period: Duration,
    },
}

pub struct GrpcLoad {
    phase: watch::Sender<Phase>,
    /// Events the processor-client has read (taken from the streams' buffers).
    pub sent: AtomicU64,
    /// Calls opened (one per configuration).
    pub calls: AtomicU64,
    size: usize,
}

impl GrpcLoad {
    pub fn set(&self, phase: Phase) {
        let _ = self.phase.send(phase);
    }
}

struct Service(Arc<GrpcLoad>);

type Events = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Eventing for Service {
    type StartEventSourceStream = Events;

    async fn start_event_source(
        &self,
        request: Request<proto::EventSource>,
    ) -> Result<Response<Events>, Status> {
        let name = request.into_inner().name;
        let load = self.0.clone();
        let index = load.calls.fetch_add(1, Ordering::Relaxed);
        // A small buffer: what the processor-client has not read stays here,
        // so `sent` counts (within a few) what it has read.
        let (tx, mut rx) = mpsc::channel::<proto::Event>(4);
        let mut phase = load.phase.subscribe();
        let producer = load.clone();
        tokio::spawn(async move {
            loop {
                let now = *phase.borrow_and_update();
                match now {
                    Phase::Idle => {
                        if phase.changed().await.is_err() {
                            return;
                        }
                    }
                    Phase::Flat => {
                        while *phase.borrow() == Phase::Flat {
                            let event = event(&name, producer.size, super::now_ns());
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                    }
                    Phase::Paced { period } => {
                        // Streams spread over the period, not in step.
                        let offset = period.mul_f64((index % 64) as f64 / 64.0);
                        let epoch = tokio::time::Instant::now();
                        let epoch_ns = super::now_ns();
                        let mut tick = tokio::time::interval_at(epoch + offset, period);
                        while *phase.borrow() == now {
                            let due = tokio::select! {
                                due = tick.tick() => due,
                                _ = phase.changed() => break,
                            };
                            let due_ns =
                                epoch_ns + due.saturating_duration_since(epoch).as_nanos() as u64;
                            if tx.send(event(&name, producer.size, due_ns)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let counter = load.clone();
        let stream = async_stream(move |cx| {
            let polled = rx.poll_recv(cx);
            if let std::task::Poll::Ready(Some(_)) = &polled {
                counter.sent.fetch_add(1, Ordering::Relaxed);
            }
            polled.map(|e| e.map(Ok))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A stream from a poll function.
fn async_stream<T, F>(poll: F) -> impl Stream<Item = T>
where
    F: FnMut(&mut std::task::Context<'_>) -> std::task::Poll<Option<T>>,
{
    futures::stream::poll_fn(poll)
}

fn event(name: &str, size: usize, stamp_ns: u64) -> proto::Event {
    proto::Event {
        name: name.to_owned(),
        payload: super::stamped(size, stamp_ns),
    }
}

/// Starts the gRPC user server on `port`, idle until a phase is set.
pub async fn start(port: u16, size: usize) -> Arc<GrpcLoad> {
    let load = Arc::new(GrpcLoad {
        phase: watch::channel(Phase::Idle).0,
        sent: AtomicU64::new(0),
        calls: AtomicU64::new(0),
        size,
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the gRPC load generator");
    let service = EventingServer::new(Service(load.clone()));
    tokio::spawn(async move {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    load
}

/// Waits until `n` calls are open.
pub async fn wait_calls(load: &GrpcLoad, n: u64) {
    let t0 = Instant::now();
    while load.calls.load(Ordering::Relaxed) < n && t0.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
