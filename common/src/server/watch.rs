//! The listener's watch over its connections: what each connection's task
//! needs to know to close on time, and one sweep a tick that decides it.
//!
//! A connection's task only polls hyper and reads one atomic; it is woken when
//! the listener asks something of it. An earlier version had every connection
//! `select!` over hyper, the shutdown and displacement tokens and a fresh timer
//! on each wake: two locks on tokens every connection shares and a timer
//! inserted and removed, per wake, for a check that matters once a second.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::time::Instant;

use super::Shared;

/// What the listener asks of a connection, in [`Conn::asked`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Ask {
    /// Serve on.
    Nothing = 0,
    /// Shutting down: close once the request in flight is answered.
    WindDown = 1,
    /// Close now: a new connection takes this one's place.
    Displaced = 2,
    /// Close now: a request head took too long.
    HeaderTimeout = 3,
    /// Close now: nothing arrived for too long.
    IdleTimeout = 4,
    /// Close now: shutting down, and idle or past the deadline.
    Shutdown = 5,
}

impl Ask {
    fn from_u8(v: u8) -> Ask {
        match v {
            1 => Ask::WindDown,
            2 => Ask::Displaced,
            3 => Ask::HeaderTimeout,
            4 => Ask::IdleTimeout,
            5 => Ask::Shutdown,
            _ => Ask::Nothing,
        }
    }

    /// The reason a connection closed at this ask, for the metrics; `None`
    /// when it does not close the connection at once.
    pub(super) fn reason(self) -> Option<&'static str> {
        match self {
            Ask::Nothing | Ask::WindDown => None,
            Ask::Displaced => Some("displaced"),
            Ask::HeaderTimeout => Some("header_timeout"),
            Ask::IdleTimeout => Some("idle_timeout"),
            Ask::Shutdown => Some("shutdown"),
        }
    }
}

/// One connection's state, as the listener and the connection's task share it.
pub(super) struct Conn {
    /// Requests handed to the service so far.
    pub(super) requests: AtomicU64,
    pub(super) in_flight: AtomicUsize,
    /// When the last request finished (or the connection opened), in ms.
    pub(super) idle_since: AtomicU64,
    /// When the first byte after `idle_since` arrived (0: none yet), in ms.
    pub(super) head_since: AtomicU64,
    /// An [`Ask`]: what the listener wants of this connection.
    asked: AtomicU8,
    /// The connection's task, woken when `asked` changes.
    task: AtomicWaker,
    /// Set when the server cuts the connection off (a timeout, displaced, shut
    /// down): then it is closed at once, not drained.
    pub(super) cut_off: AtomicBool,
}

impl Conn {
    pub(super) fn new(shared: &Shared) -> Self {
        Conn {
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(shared.now_ms()),
            head_since: AtomicU64::new(0),
            asked: AtomicU8::new(Ask::Nothing as u8),
            task: AtomicWaker::new(),
            cut_off: AtomicBool::new(false),
        }
    }

    pub(super) fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Asks the connection's task for `ask`, and wakes it. A close asked
    /// before stays asked: only [`Ask::WindDown`] gives way to a close.
    pub(super) fn ask(&self, ask: Ask) {
        let raised = self
            .asked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now <= Ask::WindDown as u8 && ask as u8 > now).then_some(ask as u8)
            })
            .is_ok();
        if raised {
            self.task.wake();
        }
    }

    /// What is asked now; the task registers to be woken when it changes.
    pub(super) fn asked(&self, waker: &std::task::Waker) -> Ask {
        self.task.register(waker);
        Ask::from_u8(self.asked.load(Ordering::Acquire))
    }

    /// Whether anything at all has been asked (a displaced, closing or
    /// timed-out connection is no candidate to be displaced).
    pub(super) fn asked_anything(&self) -> bool {
        self.asked.load(Ordering::Acquire) != Ask::Nothing as u8
    }
}

/// How often the sweep runs: a quarter of the shorter timeout, within bounds.
pub(super) fn tick(shared: &Shared) -> Duration {
    (shared.limits.header_timeout.min(shared.limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Asks each connection that has waited too long to close; while shutting
/// down, each with no request in flight, and every one past the deadline.
pub(super) fn sweep(open: &Mutex<VecDeque<Weak<Conn>>>, shared: &Shared) {
    let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
    open.retain(|c| c.strong_count() > 0);
    let deadline = shared.deadline.get();
    let now = Instant::now();
    for conn in open.iter().filter_map(Weak::upgrade) {
        let ask = match deadline {
            Some(deadline) => (now >= *deadline || !conn.busy()).then_some(Ask::Shutdown),
            None => overdue(&conn, shared),
        };
        if let Some(ask) = ask {
            conn.ask(ask);
        }
    }
}

/// Asks every open connection to wind down: the idle ones close at once.
pub(super) fn wind_down(open: &Mutex<VecDeque<Weak<Conn>>>) {
    let open = open.lock().unwrap_or_else(|p| p.into_inner());
    for conn in open.iter().filter_map(Weak::upgrade) {
        conn.ask(Ask::WindDown);
    }
}

/// Whether a connection with no request in flight has waited too long: for the
/// rest of a request head, or for anything at all.
fn overdue(conn: &Conn, shared: &Shared) -> Option<Ask> {
    if conn.busy() {
        return None;
    }
    let now = shared.now_ms();
    let head_since = conn.head_since.load(Ordering::Acquire);
    if head_since != 0 {
        let waited = Duration::from_millis(now.saturating_sub(head_since));
        return (waited > shared.limits.header_timeout).then_some(Ask::HeaderTimeout);
    }
    let idle = Duration::from_millis(now.saturating_sub(conn.idle_since.load(Ordering::Acquire)));
    (idle > shared.limits.idle_timeout).then_some(Ask::IdleTimeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, OnceLock};
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;

    fn shared() -> Shared {
        Shared {
            limits: super::super::Limits::default(),
            metrics: super::super::ServerMetrics::register(
                &mut prometheus_client::registry::Registry::default(),
                "test",
            ),
            closing: CancellationToken::new(),
            deadline: OnceLock::new(),
            lingering: Arc::new(Semaphore::new(1)),
            started: Instant::now(),
        }
    }

    #[test]
    fn a_close_is_not_taken_back_and_wind_down_gives_way_to_a_close() {
        let conn = Conn::new(&shared());
        let waker = std::task::Waker::noop();
        assert_eq!(conn.asked(waker), Ask::Nothing);
        conn.ask(Ask::WindDown);
        assert_eq!(conn.asked(waker), Ask::WindDown);
        conn.ask(Ask::Displaced);
        assert_eq!(conn.asked(waker), Ask::Displaced);
        conn.ask(Ask::Shutdown);
        conn.ask(Ask::WindDown);
        assert_eq!(conn.asked(waker), Ask::Displaced);
    }

    #[tokio::test]
    async fn an_ask_wakes_the_connection_task() {
        let conn = Arc::new(Conn::new(&shared()));
        let waiting = tokio::spawn({
            let conn = conn.clone();
            std::future::poll_fn(move |cx| match conn.asked(cx.waker()) {
                Ask::Nothing => std::task::Poll::Pending,
                ask => std::task::Poll::Ready(ask),
            })
        });
        tokio::task::yield_now().await;
        conn.ask(Ask::IdleTimeout);
        let ask = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(ask.expect("woken").expect("task"), Ask::IdleTimeout);
    }

    #[test]
    fn the_sweep_closes_what_waited_too_long_and_on_shutdown_what_is_idle() {
        let mut shared = shared();
        shared.limits.idle_timeout = Duration::from_millis(0);
        let idle = Arc::new(Conn::new(&shared));
        let busy = Arc::new(Conn::new(&shared));
        busy.in_flight.store(1, Ordering::Release);
        let open = Mutex::new(VecDeque::from([
            Arc::downgrade(&idle),
            Arc::downgrade(&busy),
        ]));
        std::thread::sleep(Duration::from_millis(5));
        sweep(&open, &shared);
        let waker = std::task::Waker::noop();
        assert_eq!(idle.asked(waker), Ask::IdleTimeout);
        assert_eq!(busy.asked(waker), Ask::Nothing);

        let later = Arc::new(Conn::new(&shared));
        open.lock().unwrap().push_back(Arc::downgrade(&later));
        let _ = shared
            .deadline
            .set(Instant::now() + Duration::from_secs(60));
        wind_down(&open);
        assert_eq!(busy.asked(waker), Ask::WindDown);
        sweep(&open, &shared);
        assert_eq!(
            later.asked(waker),
            Ask::Shutdown,
            "idle on shutdown: closed"
        );
        assert_eq!(
            busy.asked(waker),
            Ask::WindDown,
            "busy: finishes its request"
        );
    }
}
