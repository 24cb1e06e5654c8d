//! Logs for a user server, set up the way the gateway's own processes do it:
//! to stderr, the level from `RUST_LOG` (default `info`), colours only on a
//! terminal (a container's log collector would otherwise store escape codes).

/// Installs the log subscriber; call it once, first thing in `main`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
