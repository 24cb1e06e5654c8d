//! What one replica should do, decided from what the bucket says: the pure part
//! of sharing, so it can be tested without NATS. Every replica computes the same
//! fair shares from the same list of live replicas; which configurations each
//! one takes is decided by compare-and-set on the claims, never by this plan
//! alone, so replicas that disagree for a moment cannot both run a
//! configuration.

use std::collections::{BTreeMap, BTreeSet};

/// How many of `configs` configurations the replica `me` should run when
/// `replicas` (sorted, `me` among them) are live: `configs / replicas`, and one
/// more for the first `configs % replicas` of them. Zero if `me` is not listed
/// (it could not announce itself, so it should not take anything).
pub fn share(configs: usize, replicas: &BTreeSet<String>, me: &str) -> usize {
    let Some(index) = replicas.iter().position(|r| r == me) else {
        return 0;
    };
    let n = replicas.len();
    configs / n + usize::from(index < configs % n)
}

/// The order in which `me` tries unclaimed configurations: a hash of the
/// configuration and the replica (rendezvous hashing), so that replicas
/// claiming at the same moment mostly try different ones.
pub fn preference(me: &str, src: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain([0]).chain(src.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The changes that bring `me` to its share.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// Claims to give up (configurations removed, or more than the share).
    pub release: Vec<String>,
    /// Unclaimed configurations to try to claim, best first; more than needed,
    /// since others may win some.
    pub claim: Vec<String>,
    /// How many claims would bring `me` to its share.
    pub wanted: usize,
}

/// Plans the moves of `me`: `configs` are all configurations, `owners` the
/// current claims (configuration to owner), `share` this replica's share.
pub fn moves(
    me: &str,
    configs: &BTreeSet<String>,
    owners: &BTreeMap<String, String>,
    share: usize,
) -> Moves {
    let mine: Vec<&String> = owners
        .iter()
        .filter(|(_, o)| o.as_str() == me)
        .map(|(s, _)| s)
        .collect();
    let mut release: Vec<String> = mine
        .iter()
        .filter(|s| !configs.contains(s.as_str()))
        .map(|s| s.to_string())
        .collect();
    let mut kept: Vec<&String> = mine
        .iter()
        .copied()
        .filter(|s| configs.contains(s.as_str()))
        .collect();
    if kept.len() > share {
        // Give up the ones this replica likes least, so that which ones move
        // does not depend on timing.
        kept.sort_by_key(|s| std::cmp::Reverse(preference(me, s)));
        release.extend(kept.drain(share..).map(|s| s.to_string()));
    }
    let wanted = share.saturating_sub(kept.len());
    let mut claim: Vec<String> = configs
        .iter()
        .filter(|s| !owners.contains_key(s.as_str()))
        .cloned()
        .collect();
    claim.sort_by_key(|s| preference(me, s));
    Moves {
        release,
        claim,
        wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shares_add_up_and_differ_by_one_at_most() {
        for r in 1..6 {
            let replicas: BTreeSet<String> = (0..r).map(|i| format!("r{i}")).collect();
            for n in 0..70 {
                let shares: Vec<usize> =
                    replicas.iter().map(|me| share(n, &replicas, me)).collect();
                assert_eq!(shares.iter().sum::<usize>(), n);
                let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(hi - lo <= 1, "{shares:?}");
            }
        }
        assert_eq!(share(60, &set(&["a", "b", "c"]), "d"), 0);
    }

    #[test]
    fn a_replica_over_its_share_releases_the_excess_and_removed_ones() {
        let configs = set(&["a", "b", "c", "d"]);
        let owners: BTreeMap<String, String> =
            [("a", "me"), ("b", "me"), ("c", "me"), ("gone", "me")]
                .iter()
                .map(|(s, o)| (s.to_string(), o.to_string()))
                .collect();
        let m = moves("me", &configs, &owners, 2);
        assert!(m.release.contains(&"gone".to_string()));
        assert_eq!(m.release.len(), 2, "{m:?}");
        assert_eq!(m.wanted, 0);
        assert_eq!(
            m.claim,
            vec!["d".to_string()],
            "only unclaimed ones are candidates"
        );
    }

    #[test]
    fn a_replica_under_its_share_wants_the_difference_from_the_unclaimed() {
        let configs = set(&["a", "b", "c", "d", "e"]);
        let owners: BTreeMap<String, String> = [("a", "other"), ("b", "me")]
            .iter()
            .map(|(s, o)| (s.to_string(), o.to_string()))
            .collect();
        let m = moves("me", &configs, &owners, 3);
        assert!(m.release.is_empty());
        assert_eq!(m.wanted, 2);
        assert_eq!(m.claim.len(), 3);
        assert!(!m.claim.contains(&"a".to_string()) && !m.claim.contains(&"b".to_string()));
    }

    #[test]
    fn replicas_prefer_different_configurations() {
        let configs: Vec<String> = (0..60).map(|i| format!("cfg-{i}")).collect();
        let first = |me: &str| {
            configs
                .iter()
                .min_by_key(|s| preference(me, s))
                .cloned()
                .unwrap()
        };
        let firsts: BTreeSet<String> = ["r0", "r1", "r2", "r3"].iter().map(|r| first(r)).collect();
        assert!(firsts.len() >= 3, "{firsts:?}");
    }
}
