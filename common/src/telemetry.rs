//! Structured logs through tracing: human text by default, JSON lines with
//! `LOG_FORMAT=json`; the level comes from `RUST_LOG` (default `info`, with
//! some libraries' own lines at `warn`: async-nats logs every connection event
//! that our callback in [`crate::nats`] already logs, with the server's
//! address, and the store's fjall/lsm-tree narrate every recovery step). The
//! warnings the reading of the settings left, and variables spelled almost like
//! the gateway's ([`crate::spelling`]), are logged first. An error that stops
//! a binary is reported here too ([`failed`]).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

/// Logs are JSON lines: an error that stops the binary is one of them.
static JSON: AtomicBool = AtomicBool::new(false);

pub fn init(json: bool) {
    JSON.store(json, Ordering::Relaxed);
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

/// Reports the error that stops a binary, on stderr, and gives its exit status
/// (1). In place of `main` returning the error, which prints anyhow's Debug
/// form: each cause a second time (the gateway's messages carry their causes)
/// and, with `RUST_BACKTRACE` set, a backtrace of the start-up code after the
/// message an operator needs. Causes a message does not already carry follow it.
/// With JSON logs (once they are set up) it is a JSON line like the others.
pub fn failed(error: &dyn std::error::Error) -> ExitCode {
    let text = crate::error::error_chain(error);
    if JSON.load(Ordering::Relaxed) {
        tracing::error!(error = %text, "stopped on an error");
    } else {
        eprintln!("Error: {text}");
    }
    ExitCode::FAILURE
}
