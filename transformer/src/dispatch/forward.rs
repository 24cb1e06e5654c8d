//! A trigger's dead-letter sink (`spec.delivery.deadLetterSink`). An event
//! whose attempts ran out, or that its subscriber refused for good, is a
//! dead letter in the local store first; this task then sends it to the
//! sink as a CloudEvent carrying Knative's extensions (`knativeerrordest`,
//! `knativeerrorcode`, `knativeerrordata`), retrying until the sink takes
//! it, and only then removes the local letter. A sink that is down loses
//! nothing: the letters wait, and are sent after a restart too.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Sink, ANSWER_BODY_BYTES};
use crate::cloudevent::CloudEvent;
use crate::store::{DeadLetter, Store, WatcherId};
use gateway_common::backoff::Backoff;

/// Letters read from the store at once.
const AT_ONCE: usize = 64;
/// How often the store is looked at without being woken (letters buried
/// by an earlier run, or while the sink was failing).
const LOOK_EVERY: Duration = Duration::from_secs(30);

/// Where a trigger's dead letters go.
pub struct DeadLetterSink {
    pub sink: Arc<dyn Sink>,
    /// `knativeerrordest`: the subscriber the event failed to reach.
    pub failed_destination: String,
}

pub struct Forwarder {
    pub to: DeadLetterSink,
    pub watcher: WatcherId,
    pub store: Arc<Store>,
    /// Woken by the trigger's lanes when they bury a letter.
    pub wake: Arc<Notify>,
    pub base: Duration,
    pub cap: Duration,
    pub stop: CancellationToken,
}

impl Forwarder {
    pub async fn run(self) {
        loop {
            let letters = match self.store.dead_letters_of(self.watcher, AT_ONCE) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(sink = self.to.sink.name(), error = %e, "cannot read the dead letters to forward");
                    Vec::new()
                }
            };
            if letters.is_empty() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(LOOK_EVERY) => {}
                }
                continue;
            }
            for letter in letters {
                if !self.forward(&letter).await {
                    return;
                }
            }
        }
    }

    /// Sends one letter until the sink takes it, then forgets it; false once
    /// stopping.
    async fn forward(&self, letter: &DeadLetter) -> bool {
        let event = knative_error_event(letter, &self.to.failed_destination);
        let mut backoff = Backoff::new(self.base, self.cap);
        loop {
            let sent = tokio::select! {
                _ = self.stop.cancelled() => return false,
                r = self.to.sink.deliver(&event) => r,
            };
            match sent {
                Ok(()) => {
                    if let Err(e) = self.store.delete_dead(letter.watcher, letter.seq) {
                        tracing::error!(sink = self.to.sink.name(), error = %e, "a forwarded dead letter could not be removed; it will be sent again");
                    }
                    return true;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(sink = self.to.sink.name(), id = %letter.event.id, error = %e, retry_in = ?delay, "the dead-letter sink did not take a dead letter; it stays stored");
                    tokio::select! {
                        _ = self.stop.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// The dead letter's event with Knative's error extensions: the status of
/// the last answer (500 when none came, as Knative's dispatcher says) and
/// its body in base64, cut to 1,024 characters as Knative cuts it.
pub fn knative_error_event(letter: &DeadLetter, destination: &str) -> CloudEvent {
    let mut event = letter.event.clone();
    let (code, body) = if letter.code == 0 {
        (
            500,
            format!("dispatch error: {}", letter.error).into_bytes(),
        )
    } else {
        (letter.code, letter.data.clone())
    };
    let body = &body[..body.len().min(ANSWER_BODY_BYTES)];
    let mut data = base64::engine::general_purpose::STANDARD.encode(body);
    data.truncate(ANSWER_BODY_BYTES);
    event
        .extensions
        .retain(|(k, _)| !k.starts_with("knativeerror"));
    event.extensions.extend([
        ("knativeerrordest".to_owned(), destination.to_owned()),
        ("knativeerrorcode".to_owned(), code.to_string()),
        ("knativeerrordata".to_owned(), data),
    ]);
    event
}
