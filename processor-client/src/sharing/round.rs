//! One round of sharing, every quarter lease: announce, renew, read the
//! bucket, plan, claim.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::TryStreamExt as _;
use tokio::time::Instant;

use super::keys::{claim_key, src_of, CLAIMS, REPLICAS};
use super::{plan, ClaimValue, Held, Sharing};
use crate::configs::{Phase, Registry};
use crate::watch::Snapshot;

/// What a claim of this replica on `src` says: its owner, and its phase here.
fn claim_body(sharing: &Sharing, registry: &Registry, src: &str) -> Bytes {
    let phase = registry
        .phase_of(src)
        .unwrap_or(Phase::Pending)
        .as_str()
        .to_owned();
    let value = ClaimValue {
        owner: sharing.replica(),
        phase,
    };
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// Renews the claims `held` (each compare-and-set on its revision), all at
/// once; returns the new revisions of those renewed.
pub(super) async fn renew(
    sharing: &Sharing,
    store: &kv::Store,
    registry: &Registry,
    held: &[(String, u64)],
) -> HashMap<String, u64> {
    let renewals = futures::future::join_all(held.iter().map(|(src, revision)| {
        let body = claim_body(sharing, registry, src);
        async move { (src, store.update(claim_key(src), body, *revision).await) }
    }))
    .await;
    let mut renewed = HashMap::new();
    for (src, result) in renewals {
        if let Ok(revision) = result {
            renewed.insert(src.clone(), revision);
            sharing.metrics.sharing.renewals.inc();
        }
    }
    renewed
}

/// Why a round did not reach the bucket.
#[derive(Debug, thiserror::Error)]
pub(super) enum RoundError {
    #[error("announcing this replica: {0}")]
    Announce(String),
    #[error("listing the bucket's keys: {0}")]
    Keys(String),
}

/// The claims read in a round: per configuration, the claim and its revision.
type Claims = BTreeMap<String, (ClaimValue, u64)>;

/// One round: announce, read, renew, claim. The claims to hand over are
/// dropped locally and queued on `sharing` (see [`Sharing::take_released`]).
pub(super) async fn tick(
    sharing: &Sharing,
    store: &kv::Store,
    snapshot: &Snapshot,
    registry: &Registry,
) -> Result<(), RoundError> {
    let sent = Instant::now();
    let valid_until = sharing.valid_until(sent);
    let me = sharing.replica();
    // First and all at once: announce this replica and renew what it holds,
    // so that a slow read of the bucket below never delays a renewal.
    let held = sharing.held_revisions();
    let (announced, mut renewed) = tokio::join!(
        store.put(format!("{REPLICAS}{me}"), Bytes::new()),
        renew(sharing, store, registry, &held)
    );
    announced.map_err(|e| RoundError::Announce(e.to_string()))?;
    // Then the whole bucket: who is live, and who holds what.
    let (replicas, claim_keys) = read_keys(store).await?;
    let mut claims = read_claims(store, &claim_keys).await;
    let releasing = sharing
        .releasing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    // Claims of this replica it does not hold here (an earlier run of it made
    // them): renewed and taken on.
    let orphans: Vec<(String, u64)> = claims
        .iter()
        .filter(|(s, (v, _))| {
            v.owner == me && !renewed.contains_key(s.as_str()) && !releasing.contains(s.as_str())
        })
        .map(|(s, (_, r))| (s.clone(), *r))
        .collect();
    renewed.extend(renew(sharing, store, registry, &orphans).await);
    sharing.keep_renewed(&renewed, sent);
    let owners = owners(&claims, &me, &renewed, &releasing);
    let configs: Arc<BTreeSet<String>> = Arc::new(snapshot.keys().cloned().collect());
    *sharing
        .configurations
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(configs.clone());
    let share = plan::share(configs.len(), &replicas, &me);
    let moves = plan::moves(&me, &configs, &owners, share);
    // Queued on `sharing`, not returned: whoever runs the round hands them
    // over even if it gives up on the rest of it (a slow claim below).
    let releases = queue_releases(sharing, &moves.release);
    claim(
        sharing,
        store,
        &moves.claim,
        moves.wanted,
        valid_until,
        &mut claims,
    )
    .await;
    keep_view(sharing, claims, &configs, &releases);
    Ok(())
}

/// The bucket's keys: the live replicas, and each claim's (configuration, key).
async fn read_keys(
    store: &kv::Store,
) -> Result<(BTreeSet<String>, Vec<(String, String)>), RoundError> {
    let keys: Vec<String> = store
        .keys()
        .await
        .map_err(|e| RoundError::Keys(e.to_string()))?
        .try_collect()
        .await
        .map_err(|e| RoundError::Keys(e.to_string()))?;
    let replicas = keys
        .iter()
        .filter_map(|k| k.strip_prefix(REPLICAS).map(str::to_owned))
        .collect();
    let claim_keys = keys
        .iter()
        .filter(|k| k.starts_with(CLAIMS))
        .filter_map(|k| Some((src_of(k)?, k.clone())))
        .collect();
    Ok((replicas, claim_keys))
}

/// Who holds each configuration, for the plan: this replica's own claims only
/// where it renewed them, and claims being given back as nobody's (neither
/// claimable nor part of this replica's share).
fn owners(
    claims: &Claims,
    me: &str,
    renewed: &HashMap<String, u64>,
    releasing: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    claims
        .iter()
        .filter(|(src, (v, _))| v.owner != me || renewed.contains_key(src.as_str()))
        .map(|(s, (v, _))| {
            let owner = if releasing.contains(s) {
                String::new()
            } else {
                v.owner.clone()
            };
            (s.clone(), owner)
        })
        .collect()
}

/// Drops the held claims the plan gives up and queues them for handing over;
/// returns their configurations.
fn queue_releases(sharing: &Sharing, release: &[String]) -> Vec<String> {
    let mut releases = Vec::new();
    let mut held = sharing.held();
    let mut releasing = sharing.releasing.lock().unwrap_or_else(|p| p.into_inner());
    let mut queued = sharing.released.lock().unwrap_or_else(|p| p.into_inner());
    for src in release {
        if let Some(h) = held.remove(src) {
            releasing.insert(src.clone());
            queued.push((src.clone(), h.revision));
            releases.push(src.clone());
        }
    }
    releases
}

/// Keeps the round's view of who holds what (for `GET /configs`), without
/// what is being given back, and the count of what this replica holds.
fn keep_view(sharing: &Sharing, claims: Claims, configs: &BTreeSet<String>, releases: &[String]) {
    let mut view: BTreeMap<String, ClaimValue> = claims
        .into_iter()
        .filter(|(src, _)| configs.contains(src))
        .map(|(s, (v, _))| (s, v))
        .collect();
    for src in releases {
        view.remove(src);
    }
    *sharing.view.lock().unwrap_or_else(|p| p.into_inner()) = view;
    sharing
        .metrics
        .sharing
        .owned
        .set(sharing.held().len() as i64);
}

/// The claims in the bucket under `keys` (configuration, key), 16 read at
/// once: each one's value and revision.
async fn read_claims(store: &kv::Store, keys: &[(String, String)]) -> Claims {
    let mut claims = BTreeMap::new();
    for chunk in keys.chunks(16) {
        let got =
            futures::future::join_all(chunk.iter().map(|(_, key)| store.entry(key.clone()))).await;
        for ((src, _), entry) in chunk.iter().zip(got) {
            if let Ok(Some(entry)) = entry {
                if let Ok(value) = serde_json::from_slice::<ClaimValue>(&entry.value) {
                    claims.insert(src.clone(), (value, entry.revision));
                }
            }
        }
    }
    claims
}

/// Claims up to `wanted` of `candidates` (each a create: the first replica
/// to ask gets it), holding each until `valid_until`, and notes each in
/// `claims`.
async fn claim(
    sharing: &Sharing,
    store: &kv::Store,
    candidates: &[String],
    wanted: usize,
    valid_until: Instant,
    claims: &mut BTreeMap<String, (ClaimValue, u64)>,
) {
    let mut claimed = 0;
    for src in candidates {
        if claimed >= wanted {
            break;
        }
        let value = ClaimValue {
            owner: sharing.replica(),
            phase: Phase::Pending.as_str().into(),
        };
        let body = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        if let Ok(revision) = store.create(claim_key(src), body).await {
            claimed += 1;
            sharing.metrics.sharing.claims.inc();
            tracing::info!(%src, "claimed");
            sharing.held().insert(
                src.clone(),
                Held {
                    revision,
                    valid_until,
                },
            );
            claims.insert(src.clone(), (value, revision));
        }
    }
}
