//! Structured logs through tracing: human text by default, JSON lines with
//! `LOG_FORMAT=json`; the level comes from `RUST_LOG` (default `info`, with
//! some libraries' own lines at `warn`: async-nats logs every connection event
//! that our callback in [`crate::nats`] already logs, with the server's
//! address, and the store's fjall/lsm-tree narrate every recovery step). The
//! warnings the reading of the settings left, and variables spelled almost like
//! the gateway's ([`crate::spelling`]), are logged first.

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn,fjall=warn,lsm_tree=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .collect();
    let misses = crate::spelling::near_misses(names.iter().map(String::as_str));
    for note in crate::env::take_notes().into_iter().chain(misses) {
        tracing::warn!("{note}");
    }
}
