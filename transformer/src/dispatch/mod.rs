//! Delivery of CloudEvents to their destinations. Every destination is a [`Sink`];
//! each sink gets its own bounded queue ([`admission`], [`dispatcher`]) and workers ([`lane`]), so a slow or dead
//! destination holds back no other. Adding a destination kind means one new file.

pub mod admission;
pub mod dispatcher;
pub mod forward;
pub mod http;
pub mod lane;
pub mod nats;
pub mod pacer;
pub mod routing;
pub mod writer;

use futures::future::BoxFuture;

use crate::cloudevent::CloudEvent;
pub use admission::Refused;
pub use dispatcher::{Dispatcher, Limits};
pub use routing::{Route, TriggerKey};

/// Why one delivery attempt failed, and whether trying again can help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// False for answers that will not change on retry (a 4xx from a sensor): the
    /// event goes straight to the dead letters instead of blocking its queue.
    pub retryable: bool,
    pub message: String,
    /// The destination's answer, when it gave one: its status and the start
    /// of its body (for a dead-letter sink's `knativeerrorcode` and
    /// `knativeerrordata`), and its `Retry-After` in seconds.
    pub answer: Option<Answer>,
}

/// What an HTTP destination answered to a failed delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// At most [`ANSWER_BODY_BYTES`].
    pub body: Vec<u8>,
    pub retry_after: Option<std::time::Duration>,
}

/// How much of a failed delivery's answer is kept (Knative's bound for
/// `knativeerrordata`).
pub const ANSWER_BODY_BYTES: usize = 1024;

impl DeliveryError {
    pub fn retryable(message: impl Into<String>) -> Self {
        DeliveryError {
            retryable: true,
            message: message.into(),
            answer: None,
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        DeliveryError {
            retryable: false,
            message: message.into(),
            answer: None,
        }
    }
    pub fn with_answer(mut self, answer: Answer) -> Self {
        self.answer = Some(answer);
        self
    }
}

/// A destination for CloudEvents: an HTTP sensor, another gateway, NATS.
/// `deliver` must return only once the destination has taken the event (2xx, or a
/// broker acknowledgement), since the queue forgets the event after it returns Ok.
pub trait Sink: Send + Sync + 'static {
    /// A stable name for logs and metric labels (the URL or subject), with
    /// any secret the URL carries hidden.
    fn name(&self) -> &str;
    /// What the durable queue knows this watcher by: the whole URL, so that
    /// two watchers that differ only in their credentials stay apart, and
    /// events queued before names were redacted still find their watcher.
    fn identity(&self) -> &str {
        self.name()
    }
    fn deliver<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<(), DeliveryError>>;
}

/// A sink known by another name: a trigger's subscriber, queued, counted and
/// dead-lettered under the trigger's name, so two triggers with one
/// subscriber keep two queues.
pub struct Named {
    pub name: String,
    identity: String,
    pub inner: std::sync::Arc<dyn Sink>,
}

impl Named {
    pub fn new(name: &str, inner: std::sync::Arc<dyn Sink>) -> Named {
        Named {
            name: name.to_owned(),
            identity: format!("trigger:{name}"),
            inner,
        }
    }
}

impl Sink for Named {
    fn name(&self) -> &str {
        &self.name
    }
    fn identity(&self) -> &str {
        &self.identity
    }
    fn deliver<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<(), DeliveryError>> {
        self.inner.deliver(event)
    }
}
