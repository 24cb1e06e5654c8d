//! Knowing that a connection is gone, so that no wait on the broker outlives it.
//!
//! lapin (4.12) can leave a call waiting forever when it is made in the moment
//! the connection dies: an ack queued after the IO loop stopped, but before
//! the connection's error was recorded, is never written and never rejected.
//! Seen when RabbitMQ reset the connection mid-stream: the consumer then sat
//! on that ack and never reconnected. So every wait on the broker races a
//! token that the connection's error cancels.
//!
//! lapin also reports a channel the broker closed (a soft error: a queue
//! that does not exist, a declaration that does not match) as an error of
//! the connection's. The connection lives on, and the call that caused it
//! fails with the broker's reason; taking it for a loss would hide that
//! reason (a missing queue retried for ever as "the connection was lost").

use std::future::Future;

use futures::StreamExt as _;
use gateway_sdk::CancellationToken;
use lapin::protocol::AMQPErrorKind;
use lapin::{Connection, ErrorKind, Event};
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
                if matches!(&event, Event::Error(e) if !channel_only(e)) {
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

/// A channel the broker closed: its error is the broker's reason for that
/// channel's call, and the connection goes on.
fn channel_only(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPError, AMQPHardError, AMQPSoftError};

    fn protocol(kind: AMQPErrorKind) -> lapin::Error {
        ErrorKind::ProtocolError(AMQPError::new(kind, "from the broker".into())).into()
    }

    #[test]
    fn a_closed_channel_is_not_a_lost_connection() {
        assert!(channel_only(&protocol(AMQPErrorKind::Soft(
            AMQPSoftError::NOTFOUND
        ))));
        assert!(!channel_only(&protocol(AMQPErrorKind::Hard(
            AMQPHardError::CONNECTIONFORCED
        ))));
        let io: lapin::Error = ErrorKind::IOError(std::sync::Arc::new(
            std::io::ErrorKind::ConnectionReset.into(),
        ))
        .into();
        assert!(!channel_only(&io));
    }
}
