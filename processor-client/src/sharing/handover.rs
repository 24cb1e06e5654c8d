//! Giving a claim back to rebalance: the configuration is stopped here first
//! and only then is the claim deleted, so the replica that takes it never runs
//! it at the same time as this one. The claim is renewed meanwhile, however
//! long the stop takes: a user server slow to answer `/stop` must not let the
//! claim lapse under a configuration still running here.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::time::Instant;

use super::keys::claim_key;
use super::round::renew;
use super::Sharing;
use crate::activity::Activity;
use crate::configs::Registry;

/// How often a claim being given back checks whether its configuration has
/// stopped.
const POLL: Duration = Duration::from_millis(20);

/// Gives back each of `releases` (configuration and the claim's revision, no
/// longer held here, its configuration already being stopped), each as soon as
/// its configuration is quiet.
pub(super) async fn handover(
    sharing: Arc<Sharing>,
    store: kv::Store,
    registry: Arc<Registry>,
    activity: Arc<Activity>,
    releases: Vec<(String, u64)>,
) {
    let (sharing, store, registry, activity) = (&*sharing, &store, &*registry, &*activity);
    futures::future::join_all(
        releases
            .into_iter()
            .map(|(src, revision)| give_back(sharing, store, registry, activity, src, revision)),
    )
    .await;
}

async fn give_back(
    sharing: &Sharing,
    store: &kv::Store,
    registry: &Registry,
    activity: &Activity,
    src: String,
    mut revision: u64,
) {
    let period = sharing.lease / 4;
    let mut renew_at = Instant::now() + period;
    while !activity.is_quiet(&src) {
        if Instant::now() >= renew_at {
            renew_at = Instant::now() + period;
            let renewed = renew(sharing, store, registry, &[(src.clone(), revision)]).await;
            match renewed.get(&src) {
                Some(next) => revision = *next,
                None => tracing::warn!(%src, "cannot renew a claim being given back"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
    if store
        .delete_expect_revision(claim_key(&src), Some(revision))
        .await
        .is_ok()
    {
        sharing.metrics.sharing.handovers.inc();
        tracing::info!(%src, "handed over");
    }
    sharing
        .releasing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&src);
}
