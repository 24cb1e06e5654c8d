//! The seeds' artifact gateway as a user server on the Rust SDK: each
//! configuration watches one S3 bucket (AWS, MinIO, or any server speaking
//! ListObjectsV2) and every object created or removed becomes one event in
//! the S3 notification record shape. It polls the listing and keeps what it
//! reported on disk (`S3_STATE_DIR`), so a restart neither repeats nor skips
//! a change; where the server offers MinIO's ListenBucketNotification, a
//! change makes it list at once. Credentials come from the configuration or the environment and
//! are never logged.

mod listen;
mod poll;
pub mod record;
pub mod spec;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gateway_sdk::{CancellationToken, ConfigData, ConfigExecutor, Emitter};

pub use spec::Spec;

/// The variable naming where each configuration's state is kept.
pub const STATE_DIR_VAR: &str = "S3_STATE_DIR";
/// The default state directory, relative to the working directory.
pub const DEFAULT_STATE_DIR: &str = "s3-state";

/// The executor: a state directory and one HTTP client for every bucket.
#[derive(Clone)]
pub struct S3 {
    state_dir: Arc<PathBuf>,
    client: reqwest::Client,
}

impl S3 {
    /// Reads `S3_STATE_DIR` and checks that the directory can be written;
    /// an error names the variable.
    pub fn from_env() -> Result<S3, String> {
        let dir = std::env::var(STATE_DIR_VAR)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_STATE_DIR.to_owned());
        S3::new(PathBuf::from(dir))
    }

    pub fn new(state_dir: PathBuf) -> Result<S3, String> {
        let probe = state_dir.join(".writable");
        std::fs::create_dir_all(&state_dir)
            .and_then(|_| std::fs::write(&probe, b""))
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| format!("{STATE_DIR_VAR} {}: {e}", state_dir.display()))?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = client(Vec::new())?;
        Ok(S3 {
            state_dir: Arc::new(state_dir),
            client,
        })
    }
}

/// An HTTP client trusting the platform's roots plus `extra_roots` (or only
/// those, where the platform verifier cannot merge).
fn client(extra_roots: Vec<reqwest::Certificate>) -> Result<reqwest::Client, String> {
    let base = || {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
    };
    if extra_roots.is_empty() {
        return base()
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"));
    }
    base()
        .tls_certs_merge(extra_roots.clone())
        .build()
        .or_else(|_| base().tls_certs_only(extra_roots).build())
        .map_err(|e| format!("caFile: cannot build an HTTP client with it: {e}"))
}

impl ConfigExecutor for S3 {
    fn validate(&self, config: &ConfigData) -> Result<(), String> {
        Spec::parse(&config.config).map(|_| ())
    }

    fn start(
        &self,
        config: ConfigData,
        emitter: Emitter,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            let ready = Spec::parse(&config.config).and_then(|spec| {
                let client = match spec.roots.is_empty() {
                    true => this.client.clone(),
                    false => client(spec.roots.clone())?,
                };
                Ok((spec, client))
            });
            match ready {
                Ok((spec, client)) => poll::run(spec, emitter, stop, &this.state_dir, client).await,
                Err(why) => {
                    let _ = emitter.error(&why).await;
                }
            }
        }
    }
}
