//! The NATS connection every binary that talks to NATS shares: the variables
//! that describe it (server list, token, user and password, credentials file,
//! TLS), read once into [`NatsOptions`], and [`connect`], which makes the
//! connection, and remakes it, in the background, so that a NATS server that
//! is down stops nothing at start. The transformer publishes through it; the
//! ingress will serve requests through it.

use std::path::PathBuf;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::env::{ConfigError, Env, Var};

/// nats-server's default `max_control_line`. A message whose protocol line
/// (`HPUB subject reply sizes`) is longer is not refused on its own: the
/// server closes the whole connection, failing everything else in flight on
/// it. So subjects made from outside input are checked against it first.
pub const MAX_CONTROL_LINE: usize = 4096;

/// Room on the protocol line for the verb, the separators, both sizes and the
/// line end (`HPUB ` + 3 spaces + 2 × 10 digits + `\r\n`).
const CONTROL_LINE_OVERHEAD: usize = 5 + 3 + 20 + 2;

/// The longest subject that fits on one protocol line beside a reply subject
/// of `reply_len` bytes.
pub const fn max_subject_len(reply_len: usize) -> usize {
    MAX_CONTROL_LINE.saturating_sub(CONTROL_LINE_OVERHEAD + reply_len)
}

/// The length of the reply subjects async-nats makes for requests under
/// `inbox_prefix`: the prefix, then two NUIDs of 22 characters.
pub const fn request_reply_len(inbox_prefix: &str) -> usize {
    inbox_prefix.len() + 1 + 22 + 1 + 22
}

pub const NATS_URL: Var = Var::new(
    "NATS_URL",
    "nats://127.0.0.1:4222",
    "NATS server(s), comma-separated; `nats://user:password@host` or `nats://token@host` carry credentials, used when the variables below give none",
);
pub const NATS_TOKEN: Var = Var::optional("NATS_TOKEN", "token authentication");
pub const NATS_USER: Var = Var::optional(
    "NATS_USER",
    "user and password authentication (both or neither, with `NATS_PASSWORD`)",
);
pub const NATS_PASSWORD: Var = Var::optional("NATS_PASSWORD", "the password of `NATS_USER`");
pub const NATS_CREDS: Var = Var::optional("NATS_CREDS", "a `.creds` file (JWT and NKey)");
pub const NATS_TLS_CA: Var = Var::optional(
    "NATS_TLS_CA",
    "CA certificate file to verify the server; implies TLS",
);
pub const NATS_TLS_CERT: Var = Var::optional(
    "NATS_TLS_CERT",
    "client certificate for mutual TLS (both or neither, with `NATS_TLS_KEY`)",
);
pub const NATS_TLS_KEY: Var = Var::optional("NATS_TLS_KEY", "the key of `NATS_TLS_CERT`");
pub const NATS_TLS_REQUIRED: Var = Var::new(
    "NATS_TLS_REQUIRED",
    "false",
    "require TLS even without a custom CA",
);

pub const NATS_PING_INTERVAL: Var = Var::new(
    "NATS_PING_INTERVAL",
    "10s",
    "how long a connection may be quiet before a PING checks it; after two unanswered it counts as lost and is made again, so a connection gone silent (a partition, a paused server) is found within about three intervals",
);

/// The connection's variables, in the order the docs list them.
pub const VARS: [Var; 10] = [
    NATS_URL,
    NATS_TOKEN,
    NATS_USER,
    NATS_PASSWORD,
    NATS_CREDS,
    NATS_TLS_CA,
    NATS_TLS_CERT,
    NATS_TLS_KEY,
    NATS_TLS_REQUIRED,
    NATS_PING_INTERVAL,
];

/// How to reach and authenticate to NATS.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The servers, as `NATS_URL` lists them.
    pub url: String,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub creds: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_required: bool,
    pub ping_interval: Duration,
}

impl NatsOptions {
    pub fn read(env: &Env) -> Result<NatsOptions, ConfigError> {
        together(env, &NATS_USER, &NATS_PASSWORD)?;
        together(env, &NATS_TLS_CERT, &NATS_TLS_KEY)?;
        let url = env.text(&NATS_URL)?;
        if servers(&url).is_empty() {
            return Err(ConfigError::Invalid {
                var: NATS_URL.name,
                reason: "names no server".into(),
            });
        }
        let mut token = env.optional(&NATS_TOKEN);
        let mut user = env.optional(&NATS_USER);
        let mut password = env.optional(&NATS_PASSWORD);
        let creds = readable(env, &NATS_CREDS, None)?;
        // Credentials in the URL, as every NATS client takes them; async-nats
        // itself ignores them (nats-io/nats.rs#1623). The variables win.
        if token.is_none() && user.is_none() && creds.is_none() {
            match url_auth(&url)? {
                Some(UrlAuth::UserPassword(u, p)) => (user, password) = (Some(u), Some(p)),
                Some(UrlAuth::Token(t)) => token = Some(t),
                None => {}
            }
        }
        Ok(NatsOptions {
            url,
            token,
            user,
            password,
            creds,
            tls_ca: readable(env, &NATS_TLS_CA, Some("CERTIFICATE"))?,
            tls_cert: readable(env, &NATS_TLS_CERT, Some("CERTIFICATE"))?,
            tls_key: readable(env, &NATS_TLS_KEY, Some("PRIVATE KEY"))?,
            tls_required: env.bool(&NATS_TLS_REQUIRED)?,
            ping_interval: env.timeout(&NATS_PING_INTERVAL)?,
        })
    }
}

/// A file a variable names, checked at start: it can be read and, for PEM,
/// holds a block of `pem` kind. Without this, a wrong path only showed as
/// connection attempts failing for ever, each saying "IO error".
fn readable(env: &Env, var: &Var, pem: Option<&str>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = env.path(var) else {
        return Ok(None);
    };
    let invalid = |reason: String| ConfigError::Invalid {
        var: var.name,
        reason,
    };
    let text = std::fs::read(&path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    if let Some(kind) = pem {
        let text = String::from_utf8_lossy(&text);
        let holds = text.lines().any(|l| {
            l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{kind}-----"))
        });
        if !holds {
            return Err(invalid(format!("{} holds no PEM {kind}", path.display())));
        }
    }
    Ok(Some(path))
}

/// Credentials a server URL carries: `nats://user:password@host`, or
/// `nats://token@host`.
#[derive(Debug, PartialEq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// The one set of credentials `NATS_URL`'s servers carry, if any: the
/// client sends one set to whichever server it reaches, so servers that
/// carry different ones are refused (without repeating them).
fn url_auth(list: &str) -> Result<Option<UrlAuth>, ConfigError> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut found: Option<UrlAuth> = None;
    for server in servers(list) {
        let Ok(url) = url::Url::parse(&server) else {
            continue;
        };
        if url.username().is_empty() {
            continue;
        }
        let auth = match url.password() {
            Some(p) => UrlAuth::UserPassword(decode(url.username()), decode(p)),
            None => UrlAuth::Token(decode(url.username())),
        };
        match &found {
            Some(f) if *f != auth => {
                return Err(ConfigError::Invalid {
                    var: NATS_URL.name,
                    reason: "its servers carry different credentials; the client sends one set, so give all the same (or use NATS_USER and NATS_PASSWORD, or NATS_TOKEN)".into(),
                })
            }
            _ => found = Some(auth),
        }
    }
    Ok(found)
}

/// A server's URL with no user part (a URL that does not parse is left as
/// it is: the client will say what is wrong with it).
fn without_credentials(server: &str) -> String {
    match url::Url::parse(server) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        _ => server.to_owned(),
    }
}

/// Both or neither of two variables.
fn together(env: &Env, a: &Var, b: &Var) -> Result<(), ConfigError> {
    match (env.get(a).is_some(), env.get(b).is_some()) {
        (true, false) | (false, true) => Err(ConfigError::Invalid {
            var: if env.get(a).is_some() { b.name } else { a.name },
            reason: format!("{} and {} go together", a.name, b.name),
        }),
        _ => Ok(()),
    }
}

fn servers(url: &str) -> Vec<String> {
    url.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Counts the connection's comings and goings, and wakes whoever waits on
/// `lost` when it goes: a request in flight then cannot expect its reply.
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    pub connects: Counter,
    pub disconnects: Counter,
    pub lost: std::sync::Arc<tokio::sync::Notify>,
}

impl ConnectionMetrics {
    /// `f`'s output, or `None` if the connection drops first: a request in
    /// flight then gets no reply (it would go to an inbox nobody reads until
    /// the reconnect), so waiting for it would only wait out its timeout.
    /// The watch starts before `f` is first polled.
    pub async fn unless_lost<T>(&self, f: impl std::future::Future<Output = T>) -> Option<T> {
        let lost = self.lost.notified();
        tokio::pin!(lost);
        lost.as_mut().enable();
        tokio::select! {
            biased;
            out = f => Some(out),
            _ = lost => None,
        }
    }
}

/// Why no connection could be set up (a server that is down is not one of
/// them: the connection is retried in the background).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("NATS_CREDS {path}: {source}")]
    Creds {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("NATS_URL {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
}

/// What to add to a JetStream error that means the server runs without
/// JetStream (a plain `nats-server`, the first thing a newcomer starts):
/// async-nats says only "jetstream unavailable".
pub fn without_jetstream(error: &str) -> Option<&'static str> {
    (error.contains("jetstream unavailable") || error.contains("not enabled"))
        .then_some("the NATS server at NATS_URL runs without JetStream: start it with -js")
}

/// Connects as `name` with `options`; the connection is made, and remade, in
/// the background, with no limit on attempts.
pub async fn connect(
    options: &NatsOptions,
    name: &str,
    metrics: ConnectionMetrics,
) -> Result<async_nats::Client, ConnectError> {
    connect_with_inbox(options, name, metrics, None).await
}

/// [`connect`], with replies to requests coming back under `inbox_prefix`
/// instead of `_INBOX`.
pub async fn connect_with_inbox(
    options: &NatsOptions,
    name: &str,
    metrics: ConnectionMetrics,
    inbox_prefix: Option<&str>,
) -> Result<async_nats::Client, ConnectError> {
    // Shown in logs and errors: never a password or token it may carry.
    let shown = crate::redact::urls(&options.url);
    // TLS asked for: a server without it shows as an I/O error only.
    let tls = options.tls_required
        || options.tls_ca.is_some()
        || servers(&options.url)
            .iter()
            .any(|s| s.trim_start().to_ascii_lowercase().starts_with("tls://"));
    let connect = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(options.ping_interval)
        .event_callback(move |event| on_event(event, metrics.clone(), shown.clone(), tls));
    let mut connect = with_credentials(connect, options).await?;
    if let Some(prefix) = inbox_prefix {
        connect = connect.custom_inbox_prefix(prefix);
    }
    // The credentials went in above; the addresses go without them, so the
    // client's own logs cannot show them either.
    let addresses: Vec<String> = servers(&options.url)
        .iter()
        .map(|s| without_credentials(s))
        .collect();
    connect
        .connect(addresses)
        .await
        .map_err(|source| ConnectError::Connect {
            url: crate::redact::urls(&options.url),
            source,
        })
}

/// Counts and logs what becomes of the connection (`url` as shown).
async fn on_event(event: async_nats::Event, metrics: ConnectionMetrics, url: String, tls: bool) {
    match event {
        async_nats::Event::Connected => {
            metrics.connects.inc();
            tracing::info!("connected to NATS");
        }
        async_nats::Event::Disconnected => {
            metrics.disconnects.inc();
            metrics.lost.notify_waiters();
            tracing::warn!("disconnected from NATS; reconnecting");
        }
        async_nats::Event::ClientError(e) => {
            let e = e.to_string();
            tracing::warn!(nats = %url, error = %e, "{}", connect_failure(&e, tls))
        }
        async_nats::Event::ServerError(e) => {
            tracing::warn!(nats = %url, error = %e, "NATS server error")
        }
        other => tracing::info!(nats = %url, event = %other, "NATS"),
    }
}

/// The credentials and TLS `options` name: a token, a user and password, a
/// credentials file, a CA, a client certificate.
async fn with_credentials(
    mut connect: async_nats::ConnectOptions,
    options: &NatsOptions,
) -> Result<async_nats::ConnectOptions, ConnectError> {
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&options.user, &options.password) {
        connect = connect.user_and_password(user.clone(), password.clone());
    }
    if let Some(creds) = &options.creds {
        connect = connect
            .credentials_file(creds)
            .await
            .map_err(|source| ConnectError::Creds {
                path: creds.clone(),
                source,
            })?;
    }
    if let Some(ca) = &options.tls_ca {
        connect = connect.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&options.tls_cert, &options.tls_key) {
        connect = connect.add_client_certificate(cert.clone(), key.clone());
    }
    if options.tls_required {
        connect = connect.require_tls(true);
    }
    Ok(connect)
}

/// What a failed attempt to connect means, from async-nats's text for it
/// (its event carries no more): a server that refuses the credentials or
/// the TLS set-up is reached, and the variables to look at differ.
fn connect_failure(error: &str, tls: bool) -> &'static str {
    if error.contains("authorization violation") || error.contains("failed signing nonce") {
        "NATS refused this client's credentials (NATS_TOKEN, NATS_USER and NATS_PASSWORD, \
         or NATS_CREDS); retrying"
    } else if error.contains("TLS") {
        "cannot set up TLS with NATS (NATS_TLS_CA, NATS_TLS_CERT, NATS_TLS_KEY, \
         NATS_TLS_REQUIRED, or a tls:// URL to a server without TLS); retrying"
    } else if error.contains("DNS") {
        "cannot resolve the NATS host (NATS_URL); retrying"
    } else if tls {
        "cannot reach NATS, or it does not offer the TLS this client asks for \
         (NATS_TLS_REQUIRED, NATS_TLS_CA, or a tls:// URL); retrying"
    } else {
        "cannot reach NATS; retrying"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_told_from_a_server_away() {
        assert!(connect_failure("nats: authorization violation", false).contains("credentials"));
        assert!(connect_failure("nats: failed signing nonce", false).contains("NATS_CREDS"));
        assert!(connect_failure("nats: TLS error", false).contains("NATS_TLS_CA"));
        assert!(connect_failure("nats: DNS error", false).contains("NATS_URL"));
        assert_eq!(
            connect_failure("nats: IO error", false),
            "cannot reach NATS; retrying"
        );
        assert!(connect_failure("nats: IO error", true).contains("NATS_TLS_REQUIRED"));
    }

    #[test]
    fn a_server_without_jetstream_is_named_as_such() {
        assert!(without_jetstream("jetstream unavailable").is_some_and(|h| h.contains("-js")));
        assert!(without_jetstream("timed out").is_none());
    }

    fn env(list: &[(&str, &str)]) -> Env {
        Env::from_vars(list.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn the_longest_subject_leaves_room_for_the_reply_and_sizes() {
        let reply = request_reply_len("_INBOX");
        let subject = "s".repeat(max_subject_len(reply));
        let line = format!(
            "HPUB {subject} {} {} {}\r\n",
            "r".repeat(reply),
            u32::MAX,
            u32::MAX
        );
        assert!(line.len() <= MAX_CONTROL_LINE, "{}", line.len());
    }

    #[test]
    fn pairs_go_together_and_the_server_list_is_split() {
        let e = NatsOptions::read(&env(&[("NATS_USER", "u")])).unwrap_err();
        assert!(e.to_string().contains("NATS_PASSWORD"), "{e}");
        let e = NatsOptions::read(&env(&[("NATS_TLS_KEY", "k")])).unwrap_err();
        assert!(e.to_string().contains("NATS_TLS_CERT"), "{e}");
        let e = NatsOptions::read(&env(&[("NATS_URL", " , ")])).unwrap_err();
        assert!(e.to_string().contains("NATS_URL"), "{e}");
        let e = NatsOptions::read(&env(&[("NATS_TLS_CA", "/nonexistent/ca.pem")])).unwrap_err();
        assert!(e.to_string().contains("NATS_TLS_CA"), "{e}");
        let dir = std::env::temp_dir().join(format!("nats-options-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let not_pem = not_pem.to_str().unwrap();
        let e = NatsOptions::read(&env(&[("NATS_TLS_CA", not_pem)])).unwrap_err();
        assert!(e.to_string().contains("holds no PEM CERTIFICATE"), "{e}");
        let key = dir.join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN EC PRIVATE KEY-----\nx\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = NatsOptions::read(&env(&[
            ("NATS_TLS_CERT", not_pem),
            ("NATS_TLS_KEY", key.to_str().unwrap()),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("NATS_TLS_CERT"), "{e}");
        let e = NatsOptions::read(&env(&[("NATS_CREDS", "/nonexistent/x.creds")])).unwrap_err();
        assert!(e.to_string().contains("NATS_CREDS"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let o = NatsOptions::read(&env(&[("NATS_URL", "nats://a:1, nats://b:2")])).unwrap();
        assert_eq!(servers(&o.url), ["nats://a:1", "nats://b:2"]);
        assert!(!o.tls_required);
    }

    #[test]
    fn credentials_in_the_url_are_used_unless_variables_give_them() {
        let o =
            NatsOptions::read(&env(&[("NATS_URL", "nats://bob:p%40ss@h:1,nats://h2:2")])).unwrap();
        assert_eq!(
            (o.user.as_deref(), o.password.as_deref()),
            (Some("bob"), Some("p@ss"))
        );
        assert_eq!(without_credentials("nats://bob:p%40ss@h:1"), "nats://h:1");
        assert_eq!(without_credentials("h:1"), "h:1");
        let o = NatsOptions::read(&env(&[("NATS_URL", "nats://t0ken@h:1")])).unwrap();
        assert_eq!(o.token.as_deref(), Some("t0ken"));
        let o = NatsOptions::read(&env(&[
            ("NATS_URL", "nats://bob:pw@h:1"),
            ("NATS_TOKEN", "from-env"),
        ]))
        .unwrap();
        assert_eq!(
            (o.token.as_deref(), o.user.as_deref()),
            (Some("from-env"), None)
        );
        let e = NatsOptions::read(&env(&[("NATS_URL", "nats://a:pw1@h:1,nats://a:pw2@h:2")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("NATS_URL") && !e.contains("pw1") && !e.contains("pw2"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_wait_ends_when_the_connection_drops_and_not_otherwise() {
        let metrics = ConnectionMetrics::default();
        assert_eq!(metrics.unless_lost(async { 7 }).await, Some(7));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiting = {
            let metrics = metrics.clone();
            tokio::spawn(async move { metrics.unless_lost(rx).await })
        };
        // The loss after the wait began, as the connection's callback sends it.
        while !waiting.is_finished() {
            metrics.lost.notify_waiters();
            tokio::task::yield_now().await;
        }
        assert!(waiting.await.expect("join").is_none());
        drop(tx);
    }
}
