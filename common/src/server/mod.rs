//! The listener every HTTP port of the gateway is served by. `axum::serve` has no
//! header, idle or body timeout and no connection limit, and its graceful shutdown
//! waits for ever on a client that sent half a request; measured, 4,000 clients
//! that sent `POST / HTTP/1.1` and a Host header held 4,000 descriptors and kept
//! a SIGTERMed transformer alive for ten minutes. Here each connection is served
//! by hyper under a watch of our own ([`watch`]):
//!
//! - a request head must arrive within [`Limits::header_timeout`] of its first byte;
//! - a connection with no request in flight and nothing arriving is closed after
//!   [`Limits::idle_timeout`];
//! - a request body must arrive within [`Limits::body_timeout`] of the request, or
//!   the handler's read of it fails (answered 408 by [`crate::error::ApiError`]);
//! - at most [`Limits::max_connections`] are open; a new one beyond it first
//!   displaces the oldest connection that has no request in flight, and is
//!   answered 503 with a JSON error only when every open connection is busy;
//! - a connection closed with a request body still arriving is drained, up to
//!   [`LINGER_BYTES`] and [`LINGER_TIME`], before it is closed (nginx's lingering
//!   close), so a client that writes its whole body before reading (Python's
//!   urllib) reads the 413 instead of a broken pipe;
//! - on shutdown, accepting stops, connections with no request in flight close at
//!   once, the others finish theirs until the deadline the caller gives, and are
//!   cut off then.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

mod body;
mod malformed;
mod socket;
mod watch;

pub use body::BodyTimedOut;
use body::DeadlineBody;
use socket::{refuse, Tracked};
pub use socket::{LINGER_BYTES, LINGER_TIME};
use watch::{Ask, Conn};

/// Connections being drained before they close, at most.
const MAX_LINGERING: usize = 256;
/// Refusals (over the connection limit) being written at once; past this a
/// connection over the limit is closed without an answer.
const MAX_REFUSING: usize = 256;
/// A connection is displaced only once it has waited this long: a fresh
/// request head is most likely about to be served, and a keep-alive
/// connection that was just used is about to be used again.
const DISPLACE_MIN_AGE_MS: u64 = 250;
/// How long a displaced idle connection may take to give its place back.
const DISPLACE_WAIT: Duration = Duration::from_millis(200);

/// The listener's bounds, each a variable of the binary that serves (see its
/// config module and docs/environment.md).
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Why the listener closed a connection, for `*_connections_closed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The listener's metrics, registered in the serving binary's registry.
#[derive(Clone)]
pub struct ServerMetrics {
    open: Gauge,
    refused: Counter,
    closed: Family<ReasonLabel, Counter>,
}

impl ServerMetrics {
    /// Registers `{prefix}_connections_open`, `{prefix}_connections_refused`
    /// and `{prefix}_connections_closed{reason}`.
    pub fn register(registry: &mut Registry, prefix: &str) -> Self {
        let m = ServerMetrics {
            open: Gauge::default(),
            refused: Counter::default(),
            closed: Family::default(),
        };
        registry.register(
            format!("{prefix}_connections_open"),
            "HTTP connections open",
            m.open.clone(),
        );
        registry.register(
            format!("{prefix}_connections_refused"),
            "HTTP connections answered 503 because every allowed connection was busy",
            m.refused.clone(),
        );
        registry.register(
            format!("{prefix}_connections_closed"),
            "HTTP connections the server closed on its own: header_timeout, idle_timeout, displaced, shutdown",
            m.closed.clone(),
        );
        m
    }

    fn close(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// Serves `app` on `listener` until `stop` resolves with the deadline by which
/// requests in flight must finish; returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: ServerMetrics,
    stop: impl Future<Output = Instant> + Send,
) {
    let shared = Arc::new(Shared {
        limits,
        metrics,
        closing: CancellationToken::new(),
        deadline: OnceLock::new(),
        lingering: Arc::new(Semaphore::new(MAX_LINGERING)),
        started: Instant::now(),
    });
    let connections = Connections {
        permits: Arc::new(Semaphore::new(shared.limits.max_connections.max(1))),
        refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
        open: Mutex::new(VecDeque::new()),
        tracker: TaskTracker::new(),
        shared,
    };
    tokio::pin!(stop);
    let mut accept_error_logged: Option<Instant> = None;
    let mut ticks = tokio::time::interval(watch::tick(&connections.shared));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = loop {
        let accepted = tokio::select! {
            deadline = &mut stop => break deadline,
            accepted = listener.accept() => accepted,
            _ = ticks.tick() => {
                watch::sweep(&connections.open, &connections.shared);
                continue;
            }
        };
        match accepted {
            Ok((stream, _)) => connections.take(stream, &app).await,
            Err(e) => {
                // Out of descriptors, most likely: say so once a second, and give
                // the connections that are closing time to free some.
                if accept_error_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    tracing::error!(error = %e, "cannot accept a connection");
                    accept_error_logged = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    drop(listener);
    connections.close(deadline, ticks).await;
}

/// A listener's connections: the permits they hold, the ones open, and
/// their tasks.
struct Connections {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    /// Places for connections being answered 503 at the limit.
    refusing: Arc<Semaphore>,
    open: Mutex<VecDeque<Weak<Conn>>>,
    tracker: TaskTracker,
}

impl Connections {
    /// Serves an accepted connection, in the place of an idle one at the
    /// limit, or answers it 503 when every connection is busy.
    async fn take(&self, stream: TcpStream, app: &Router) {
        let _ = stream.set_nodelay(true);
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => displace_idle(&self.open, &self.permits, &self.shared).await,
        };
        let Some(permit) = permit else {
            self.shared.metrics.refused.inc();
            if let Ok(slot) = self.refusing.clone().try_acquire_owned() {
                self.tracker.spawn(refuse(stream, slot));
            }
            return;
        };
        let conn = Arc::new(Conn::new(&self.shared));
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.retain(|c| c.strong_count() > 0);
            open.push_back(Arc::downgrade(&conn));
        }
        self.tracker.spawn(connection(
            stream,
            permit,
            conn,
            app.clone(),
            self.shared.clone(),
        ));
    }

    /// Asks every connection to close (each once idle, all at `deadline`)
    /// and waits until they have.
    async fn close(&self, deadline: Instant, mut ticks: tokio::time::Interval) {
        let _ = self.shared.deadline.set(deadline);
        self.shared.closing.cancel();
        watch::wind_down(&self.open);
        self.tracker.close();
        // The sweep closes each connection once idle, and every one at the
        // deadline; this bound only guards against a bug keeping one alive.
        let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), async {
            loop {
                tokio::select! {
                    _ = self.tracker.wait() => break,
                    _ = ticks.tick() => watch::sweep(&self.open, &self.shared),
                }
            }
        })
        .await;
    }
}

/// What every connection of one listener shares.
struct Shared {
    limits: Limits,
    metrics: ServerMetrics,
    closing: CancellationToken,
    deadline: OnceLock<Instant>,
    /// Places for connections being drained before they close.
    lingering: Arc<Semaphore>,
    /// The origin of the millisecond clocks in [`Conn`].
    started: Instant,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }
}

/// At the limit: closes the connection with no request in flight that has
/// waited longest, and takes its place; or gives up when every connection is
/// serving a request. A connection part-way through a request head goes
/// before one that is merely idle, longest waiting first: that is what a
/// slow-header attack holds, while an idle keep-alive connection is a client's
/// pool. One that has waited less than [`DISPLACE_MIN_AGE_MS`] (a head about
/// to be served, a connection just used) is given that long first: accepting
/// pauses meanwhile, and new connections wait in the kernel's backlog.
async fn displace_idle(
    open: &Mutex<VecDeque<Weak<Conn>>>,
    permits: &Arc<Semaphore>,
    shared: &Shared,
) -> Option<OwnedSemaphorePermit> {
    for _ in 0..4 {
        let (since, victim) = {
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            open.retain(|c| c.strong_count() > 0);
            open.iter()
                .filter_map(Weak::upgrade)
                .filter(|c| !c.busy() && !c.asked_anything())
                .map(|c| {
                    let head_since = c.head_since.load(Ordering::Acquire);
                    let key = if head_since != 0 {
                        (0, head_since)
                    } else {
                        (1, c.idle_since.load(Ordering::Acquire))
                    };
                    (key, c)
                })
                .min_by_key(|(key, _)| *key)
                .map(|((_, since), c)| (since, c))
        }?;
        let age = shared.now_ms().saturating_sub(since);
        if age < DISPLACE_MIN_AGE_MS {
            tokio::time::sleep(Duration::from_millis(DISPLACE_MIN_AGE_MS - age)).await;
            if victim.busy() {
                continue;
            }
        }
        victim.ask(Ask::Displaced);
        drop(victim);
        return tokio::time::timeout(DISPLACE_WAIT, permits.clone().acquire_owned())
            .await
            .ok()?
            .ok();
    }
    None
}

/// Serves one connection until it ends or the listener asks it to close.
async fn connection(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    conn: Arc<Conn>,
    app: Router,
    shared: Arc<Shared>,
) {
    shared.metrics.open.inc();
    let io = Tracked::new(stream, permit, conn.clone(), shared.clone());
    let service = counted(conn.clone(), shared.clone(), app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Our watch bounds the head; hyper's own timer would also close idle
    // keep-alive connections at the header timeout.
    builder
        .header_read_timeout(None)
        .keep_alive(true)
        .max_header_size(malformed::MAX_HEAD_BYTES);
    // The connection lives in this block, so it is closed before it stops
    // being counted as open.
    {
        let served = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(served);
        let mut winding_down = false;
        let reason = std::future::poll_fn(|cx| {
            match conn.asked(cx.waker()) {
                Ask::Nothing => {}
                Ask::WindDown if !conn.busy() => return Poll::Ready(Some("shutdown")),
                Ask::WindDown => {
                    if !winding_down {
                        winding_down = true;
                        served.as_mut().graceful_shutdown();
                    }
                }
                ask => return Poll::Ready(ask.reason()),
            }
            served.as_mut().poll(cx).map(|result| {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                None
            })
        })
        .await;
        if let Some(reason) = reason {
            // Before the connection drops: a connection cut off is not lingered on.
            conn.cut_off.store(true, Ordering::Release);
            shared.metrics.close(reason);
        }
    }
    shared.metrics.open.dec();
}

/// `app` as the connection's service: each request counted while in
/// flight, and its body bounded by `body_timeout` from when it arrived.
fn counted(
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    app: Router,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Send
       + 'static {
    let body_timeout = shared.limits.body_timeout;
    hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        conn.requests.fetch_add(1, Ordering::AcqRel);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight {
            conn: conn.clone(),
            shared: shared.clone(),
        };
        let request: Request = request.map(|body| {
            Body::new(DeadlineBody {
                inner: body,
                deadline: Instant::now() + body_timeout,
                allowed: body_timeout,
                sleep: None,
            })
        });
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            drop(guard);
            response
        }
    })
}

/// Marks a request finished when its response is ready (or it is dropped).
struct InFlight {
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.head_since.store(0, Ordering::Release);
        self.conn
            .idle_since
            .store(self.shared.now_ms(), Ordering::Release);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
