//! The shutdown future every binary hands to `run`: it resolves on SIGTERM (what
//! Kubernetes and Docker send) or SIGINT (Ctrl-C), and from then on a second
//! one (more than half a second later) stops the process at once.
//!
//! A graceful stop may take up to `SHUTDOWN_TIMEOUT` (a transformer draining
//! to a sensor that is down, a user server slow to answer `/stop`), and
//! someone at a terminal who presses Ctrl-C again means "now", as with most
//! servers. Stopping at once loses nothing acknowledged: that is what the
//! durable queue is for, the same as after SIGKILL. The exit status is then
//! 128 plus the signal's number (130, 143), as a shell reports a process
//! stopped by a signal.

pub async fn signal() {
    let (name, _) = next_signal().await;
    let first = std::time::Instant::now();
    tracing::info!("{name} received; shutting down (another stops at once)");
    tokio::spawn(async move {
        loop {
            let (name, number) = next_signal().await;
            // A terminal signals the whole process group, and a script or a
            // process runner passes the signal on as well: one Ctrl-C can
            // arrive twice within milliseconds. That is not "now".
            if first.elapsed() < RELAYED {
                tracing::info!("{name} received again at once: taken for the same request");
                continue;
            }
            tracing::warn!(
                "{name} received again: stopping now, without finishing; what the transformer \
                 took stays stored for its next start"
            );
            std::process::exit(128 + number);
        }
    });
}

/// A second signal sooner than this after the first is the same one relayed.
const RELAYED: std::time::Duration = std::time::Duration::from_millis(500);

/// The next SIGINT or SIGTERM: its name and number.
async fn next_signal() -> (&'static str, i32) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => ("SIGINT", 2),
        _ = term => ("SIGTERM", 15),
    }
}
