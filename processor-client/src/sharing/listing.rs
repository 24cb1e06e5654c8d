//! `GET /configs` on a replica that shares its configurations: every
//! configuration of the gateway, each with the replica that runs it, from this
//! replica's own entries and the claims of the last sharing round.

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;

use super::ClaimValue;
use crate::configs::{ConfigStatus, Phase};

/// `GET /configs` of a replica that shares its configurations: one line for
/// each of the gateway's configurations (`all`, as of the last sharing round;
/// this replica's own list before the first), every one with its owner: its
/// own entry where it holds the claim, the owner's last reported phase where
/// another replica does, and Pending with no owner where none does yet.
pub fn with_owners(
    list: &mut Vec<ConfigStatus>,
    me: &str,
    owners: &BTreeMap<String, ClaimValue>,
    all: Option<&BTreeSet<String>>,
    holds: impl Fn(&str) -> bool,
) {
    let mut local: BTreeMap<String, ConfigStatus> =
        list.drain(..).map(|c| (c.src.clone(), c)).collect();
    let all: Vec<String> = match all {
        Some(all) => all.iter().cloned().collect(),
        None => local.keys().cloned().collect(),
    };
    let now = OffsetDateTime::now_utc();
    let line = |src: &str, phase: Phase, message: String, owner: Option<String>| ConfigStatus {
        src: src.to_owned(),
        id: String::new(),
        time_id: String::new(),
        phase,
        message,
        since: now,
        owner,
    };
    for src in all {
        let claim = owners.get(&src);
        if holds(&src) || claim.is_some_and(|o| o.owner == me) {
            let mut c = local
                .remove(&src)
                .unwrap_or_else(|| line(&src, Phase::Pending, "claimed here".into(), None));
            c.owner = Some(me.to_owned());
            list.push(c);
        } else if let Some(claim) = claim {
            let phase = Phase::ALL
                .into_iter()
                .find(|p| p.as_str() == claim.phase)
                .unwrap_or(Phase::Pending);
            let message = format!("runs on replica {}", claim.owner);
            list.push(line(&src, phase, message, Some(claim.owner.clone())));
        } else {
            let message = "waiting for a replica to claim it".to_owned();
            list.push(line(&src, Phase::Pending, message, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configs::{ConfigData, Registry};

    #[test]
    fn a_sharing_replica_lists_every_configuration_with_its_owner() {
        let r = Registry::default();
        r.starting(&ConfigData::new("mine", "v"), "starting");
        r.stopped("released", "removed");
        let mut list = r.list();
        let claim = |owner: &str, phase: &str| ClaimValue {
            owner: owner.into(),
            phase: phase.into(),
        };
        let owners = [
            ("mine".to_owned(), claim("me", "Pending")),
            ("theirs".to_owned(), claim("other", "Running")),
            ("released".to_owned(), claim("other", "Pending")),
        ]
        .into_iter()
        .collect();
        let all = ["mine", "theirs", "released", "nobodys"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        with_owners(&mut list, "me", &owners, Some(&all), |s| s == "mine");
        let got: Vec<(&str, Option<&str>, &str)> = list
            .iter()
            .map(|c| (c.src.as_str(), c.owner.as_deref(), c.phase.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("mine", Some("me"), "Pending"),
                ("nobodys", None, "Pending"),
                ("released", Some("other"), "Pending"),
                ("theirs", Some("other"), "Running"),
            ]
        );
    }
}
