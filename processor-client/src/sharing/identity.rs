//! The name a replica goes by in the bucket, and no other live process with it.
//!
//! A replica's name is `GATEWAY_PROCESSOR_REPLICA_ID`, by default the host
//! name. Several processor-clients on one host (a newcomer trying replicas on
//! a laptop, a test) all have the same host name; before this module they all
//! went by it, each took the others' claims as left over from an earlier run
//! of itself, and every configuration ran on all of them at once.
//!
//! Now a replica takes its name by creating its announcement
//! (`replicas.NAME`, create-if-absent: of two starting at once, one wins).
//! If the name is announced already, that is either an earlier run of this
//! replica that was killed (its entry is never written again and lapses
//! within a lease) or a live process (it writes the entry again every quarter
//! lease). Half a lease tells them apart: an entry left as it was is taken
//! over (compare-and-set on its revision), and the earlier run's claims with
//! it, as before; one written again belongs to a live namesake. A host name
//! then gives way to `HOST-PID` (and `HOST-PID-2`, ...); a name set in
//! `GATEWAY_PROCESSOR_REPLICA_ID` does not change, and the replica runs
//! nothing until its namesake is gone, saying so.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::keys::REPLICAS;
use super::{Settings, Sharing};

/// What became of a name someone announces already, after watching it.
enum Announced {
    /// Written again meanwhile: a live process goes by it.
    Live,
    /// Left as it was: taken over.
    Taken,
    /// Gone, or taken by another meanwhile: try again.
    Again,
}

/// Takes a name no live process goes by, sets it on `sharing`, and announces
/// it; `None` when cancelled first.
pub(super) async fn take_name(
    sharing: &Sharing,
    store: &kv::Store,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Option<()> {
    let configured = sharing.replica();
    let mut attempt = 0u32;
    let mut said = false;
    loop {
        let name = candidate(&configured, attempt, std::process::id());
        let key = format!("{REPLICAS}{name}");
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return None,
            created = store.create(&key, Bytes::new()) => match created {
                Ok(_) => Announced::Taken,
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        seen = watch(store, &key, settings.lease / 2) => seen,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot announce this replica; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(settings.lease / 4) => {}
                    }
                    Announced::Again
                }
            },
        };
        match outcome {
            Announced::Taken => {
                if name != configured {
                    tracing::warn!(
                        replica = %name,
                        "another live processor-client of this gateway goes by this host's name \
                         (several on one host?): this one goes by {name}; set \
                         GATEWAY_PROCESSOR_REPLICA_ID to choose"
                    );
                }
                sharing.set_replica(name);
                return Some(());
            }
            Announced::Live if !settings.replica_from_env => attempt += 1,
            Announced::Live => {
                if !said {
                    tracing::error!(
                        replica = %name,
                        "GATEWAY_PROCESSOR_REPLICA_ID: another live processor-client of this \
                         gateway goes by this name; this one runs nothing until that one is gone. \
                         Give each replica its own name"
                    );
                    said = true;
                }
            }
            // Not a tight loop while the bucket cannot be read.
            Announced::Again => {
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(settings.lease / 8) => {}
                }
            }
        }
    }
}

/// The name to try on the `attempt`th time: the configured one, then with
/// the process id, then with a count too.
fn candidate(configured: &str, attempt: u32, pid: u32) -> String {
    match attempt {
        0 => configured.to_owned(),
        1 => format!("{configured}-{pid}"),
        n => format!("{configured}-{pid}-{n}"),
    }
}

/// Watches an announced name for `window`: taken over if nobody wrote it meanwhile.
async fn watch(store: &kv::Store, key: &str, window: Duration) -> Announced {
    let revision = |entry: Result<Option<kv::Entry>, _>| match entry {
        Ok(Some(e)) if e.operation == Operation::Put => Some(e.revision),
        _ => None,
    };
    let Some(before) = revision(store.entry(key).await) else {
        return Announced::Again;
    };
    tokio::time::sleep(window).await;
    match revision(store.entry(key).await) {
        Some(after) if after == before => match store.update(key, Bytes::new(), before).await {
            Ok(_) => Announced::Taken,
            Err(_) => Announced::Again,
        },
        Some(_) => Announced::Live,
        None => Announced::Again,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tried_are_the_configured_one_then_with_the_process_id() {
        assert_eq!(candidate("host", 0, 42), "host");
        assert_eq!(candidate("host", 1, 42), "host-42");
        assert_eq!(candidate("host", 2, 42), "host-42-2");
    }
}
