//! The seeds' Kafka gateway as a user server on the Rust SDK: each
//! configuration reads one topic (as a member of a consumer group, or one
//! partition alone), and every message becomes one event named
//! `TOPIC/PARTITION/OFFSET`. An offset is committed only after the
//! processor-client took the message and every earlier one of its partition,
//! so nothing is lost; a message read again after a crash or a rebalance
//! carries the same name, and the gateway delivers it once.

mod client;
mod consume;
pub mod message;
mod pace;
pub mod spec;

use gateway_sdk::{CancellationToken, ConfigData, ConfigExecutor, Emitter, Unready};

pub use spec::Spec;

/// The executor: stateless, each configuration's reader keeps its own.
#[derive(Default, Clone)]
pub struct Kafka;

impl ConfigExecutor for Kafka {
    fn validate(&self, config: &ConfigData) -> Result<(), String> {
        Spec::parse(&config.config).map(|_| ())
    }

    /// A first look at the brokers before the start is answered: none
    /// reachable is a 503 (the configuration stays Pending, naming them, and
    /// the start is tried again); a missing topic or partition, or refused
    /// credentials, is a 400 (Error).
    async fn prepare(&self, config: &ConfigData) -> Result<(), Unready> {
        let spec = Spec::parse(&config.config).map_err(Unready::Refused)?;
        let src = config.src.clone();
        let look = tokio::task::spawn_blocking(move || client::look(&spec, &src))
            .await
            .map_err(|e| Unready::Later(format!("looking at the brokers: {e}")))?;
        match look {
            client::Look::Ready => Ok(()),
            client::Look::Unreachable(why) => Err(Unready::Later(why)),
            client::Look::Refused(why) => Err(Unready::Refused(why)),
        }
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
            match Spec::parse(&config.config) {
                Ok(spec) => consume::run(spec, emitter, stop).await,
                Err(why) => {
                    let _ = emitter.error(&why).await;
                }
            }
        }
    }
}
