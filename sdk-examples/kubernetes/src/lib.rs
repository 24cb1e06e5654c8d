//! The seeds' Kubernetes resource gateway as a user server on the Rust SDK:
//! each configuration watches one kind of object (a group, version and
//! resource, in a namespace or all of them; Argo Events' field names) and
//! every add, update and delete that passes its filters becomes one event,
//! named by the object's uid and resourceVersion, so a restart or a relist
//! that reports an object again delivers it once.

mod change;
mod client;
mod known;
pub mod spec;
mod watch;

use std::path::PathBuf;

use gateway_sdk::{CancellationToken, ConfigData, ConfigExecutor, Emitter, Unready};

pub use known::STATE_DIR_VAR;
pub use spec::Spec;

/// The executor: one client for every configuration.
#[derive(Clone)]
pub struct Resources {
    client: kube::Client,
    state_dir: Option<PathBuf>,
}

impl Resources {
    /// Reads the API server's configuration (in the cluster, its service
    /// account; else `KUBECONFIG` or `~/.kube/config`) and
    /// `RESOURCE_GATEWAY_STATE_DIR`; the error names what is missing.
    pub async fn from_env() -> Result<Resources, String> {
        let config = kube::Config::infer().await.map_err(|e| {
            format!(
                "no Kubernetes API server configured: neither in a cluster \
                 (KUBERNETES_SERVICE_HOST and a service account) nor KUBECONFIG \
                 (or ~/.kube/config): {e}"
            )
        })?;
        let client = kube::Client::try_from(config)
            .map_err(|e| format!("KUBECONFIG: cannot make a client of it: {e}"))?;
        let state_dir = match std::env::var(STATE_DIR_VAR) {
            Ok(d) if !d.is_empty() => {
                let d = PathBuf::from(d);
                std::fs::create_dir_all(&d)
                    .map_err(|e| format!("{STATE_DIR_VAR}: cannot create {}: {e}", d.display()))?;
                Some(d)
            }
            _ => None,
        };
        Ok(Resources { client, state_dir })
    }
}

impl ConfigExecutor for Resources {
    fn validate(&self, config: &ConfigData) -> Result<(), String> {
        Spec::parse(&config.config).map(|_| ())
    }

    /// A first look at the API server before the start is answered: away is
    /// a 503 (Pending, tried again); no such resource, refused credentials or
    /// RBAC, or selectors it refuses are a 400 (Error).
    async fn prepare(&self, config: &ConfigData) -> Result<(), Unready> {
        let spec = Spec::parse(&config.config).map_err(Unready::Refused)?;
        client::look(self.client.clone(), &spec).await
    }

    // Not an `async fn`: the future must not borrow `self` ('static).
    #[allow(clippy::manual_async_fn)]
    fn start(
        &self,
        config: ConfigData,
        emitter: Emitter,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (client, state_dir) = (self.client.clone(), self.state_dir.clone());
        async move {
            match Spec::parse(&config.config) {
                Ok(spec) => watch::run(spec, client, state_dir, emitter, stop).await,
                Err(why) => {
                    let _ = emitter.error(&why).await;
                }
            }
        }
    }
}
