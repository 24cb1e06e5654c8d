//! TLS for outgoing HTTPS (sensors, gateways): rustls with the ring provider, the
//! platform's trusted roots, and optionally a private CA named by `WATCHER_TLS_CA`.
//! Every reqwest client in the project is built through [`client_builder`], which
//! installs the provider first (reqwest refuses to build a client without one).

use std::sync::Once;

static PROVIDER: Once = Once::new();

/// Installs ring as the process's rustls provider, once.
pub fn install_provider() {
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A reqwest builder that can speak HTTPS.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_provider();
    reqwest::Client::builder()
}

/// Reads a PEM file of one or more CA certificates, named by `var` in errors.
pub fn load_ca(var: &str, path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{var} {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{var} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{var} {} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Why an outgoing HTTP client could not be made. Each stops the process at
/// start, naming what to fix, rather than leaving a client that silently lacks
/// its timeout, its CA or its token.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{var}: {value:?} does not make a URL ({source}); give the host name or IP address alone, without a scheme or a port")]
    Url {
        var: &'static str,
        value: String,
        source: url::ParseError,
    },
    #[error("cannot build the HTTP client for {what}: {source}")]
    Build {
        what: &'static str,
        source: reqwest::Error,
    },
    #[error("{var} cannot be sent in an Authorization header (visible ASCII without spaces only)")]
    Token { var: &'static str },
    #[error("{0}")]
    Ca(String),
}

/// `Authorization: Bearer TOKEN` for the token read from `var`, if one is set.
pub fn bearer(
    var: &'static str,
    token: Option<&str>,
) -> Result<Option<reqwest::header::HeaderValue>, ClientError> {
    token
        .map(|t| {
            reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| ClientError::Token { var })
        })
        .transpose()
}
