//! The seeds' AMQP gateway as a user server on the Rust SDK: each
//! configuration consumes one RabbitMQ queue (declared, and bound to an
//! exchange if it names one), and every message becomes one event. A message
//! is acknowledged to the broker only after the processor-client answered 2xx
//! for it, so none is lost between the broker and the gateway: while the
//! gateway answers 503 the message waits unacknowledged (and the prefetch
//! window holds the rest on the broker); if the configuration stops or the
//! connection drops first, the broker gives it out again.

mod consume;
mod lost;
pub mod message;
pub mod spec;

use gateway_sdk::{CancellationToken, ConfigData, ConfigExecutor, Emitter};

pub use spec::Spec;

/// The executor: stateless, each configuration's consumer keeps its own.
#[derive(Default, Clone)]
pub struct Amqp;

impl ConfigExecutor for Amqp {
    fn validate(&self, config: &ConfigData) -> Result<(), String> {
        Spec::parse(&config.config).map(|_| ())
    }

    // Not an `async fn`: the future must not borrow `self` ('static).
    #[allow(clippy::manual_async_fn)]
    fn start(
        &self,
        config: ConfigData,
        emitter: Emitter,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        async move {
            // `validate` passed a moment ago; only a variable named by
            // urlFromEnv could have gone since.
            match Spec::parse(&config.config) {
                Ok(spec) => consume::run(spec, emitter, stop).await,
                Err(why) => {
                    let _ = emitter.error(&why).await;
                }
            }
        }
    }
}
