//! Knowing that a connection is gone, so that no wait on the broker outlives it.
//!
//! lapin (4.12) can leave a call waiting forever when it is made in the moment
//! the connection dies: an ack queued after the IO loop stopped, but before
//! the connection's error was recorded, is never written and never rejected.
//! Seen when RabbitMQ reset the connection mid-stream: the consumer then sat
//! on that ack and never reconnected. So every wait on the broker races a
//! token that the connection's error cancels.

use std::future::Future;

use futures::StreamExt as _;
use gateway_sdk::CancellationToken;
use lapin::{Connection, Event};
use tokio_util::task::AbortOnDropHandle;

/// Cancelled once the connection it watches has failed; the watch ends with it.
pub struct Lost {
    token: CancellationToken,
    _watch: AbortOnDropHandle<()>,
}

impl Lost {
    /// Watches `conn` from now on.
    pub fn watch(conn: &Connection) -> Lost {
        let token = CancellationToken::new();
        let mut events = conn.events_listener();
        let on_error = token.clone();
        let watch = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if matches!(event, Event::Error(_)) {
                    break;
                }
            }
            on_error.cancel();
        });
        // lapin records the state before it sends the event: an error that
        // came before the listener existed shows here instead.
        let status = conn.status();
        if status.errored() || status.closed() {
            token.cancel();
        }
        Lost {
            token,
            _watch: AbortOnDropHandle::new(watch),
        }
    }

    /// `f`'s result, or `None` if the connection is lost first. `f` is polled
    /// first, so a broker's answer that came with the loss is still seen.
    pub async fn unless<T>(&self, f: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            r = f => Some(r),
            _ = self.token.cancelled() => None,
        }
    }
}
