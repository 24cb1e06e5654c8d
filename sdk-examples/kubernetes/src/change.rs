//! What becomes of a watched object's change: the event's JSON (Argo Events'
//! resource event data: `type`, `body`, `oldBody`, `group`, `version`,
//! `resource`, `metadata`) and its id. An add or update is named by the
//! object's uid and resourceVersion (one state of one object: listed again
//! after a restart or a relist it has the same name, and the gateway delivers
//! it once); a delete by the uid alone (an object is deleted once, whether the
//! watch saw it go or a relist found it gone).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use crate::known::{uid, version};
use crate::spec::{Change, Spec};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    #[serde(rename = "type")]
    change: &'static str,
    group: &'a str,
    version: &'a str,
    resource: &'a str,
    body: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_body: Option<&'a Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: &'a BTreeMap<String, String>,
}

/// The event's id.
pub fn id(change: Change, obj: &Value) -> String {
    match change {
        Change::Delete => format!("{}/deleted", uid(obj)),
        Change::Add | Change::Update => format!("{}/{}", uid(obj), version(obj)),
    }
}

/// The event's JSON.
pub fn payload(spec: &Spec, change: Change, obj: &Value, old: Option<&Value>) -> Vec<u8> {
    let p = Payload {
        change: change.name(),
        group: &spec.group,
        version: &spec.version,
        resource: &spec.resource,
        body: obj,
        old_body: old.filter(|_| change == Change::Update),
        metadata: &spec.metadata,
    };
    serde_json::to_vec(&p).unwrap_or_default()
}

/// Whether the configuration's filters (beyond the selectors the server
/// applied) and its event types let this change through.
pub fn wanted(spec: &Spec, change: Change, obj: &Value, started: OffsetDateTime) -> bool {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or("");
    let created = meta["creationTimestamp"].as_str().and_then(|t| {
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    });
    spec.changes.contains(&change)
        && name.starts_with(&spec.prefix)
        && spec
            .annotations
            .iter()
            .all(|(k, v)| meta["annotations"][k].as_str() == Some(v))
        && spec
            .created_before
            .is_none_or(|t| created.is_some_and(|c| c < t))
        && (!spec.after_start || created.is_some_and(|c| c > started))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Spec {
        Spec::parse(&format!("version: v1\nresource: pods\n{extra}")).expect("spec")
    }

    fn pod(name: &str, created: &str) -> Value {
        serde_json::json!({"metadata": {"name": name, "uid": "u", "resourceVersion": "9",
            "creationTimestamp": created, "annotations": {"owner": "shop"}}})
    }

    #[test]
    fn filters_beyond_the_selectors() {
        let started = OffsetDateTime::parse(
            "2026-06-01T00:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .expect("time");
        let old = pod("web-1", "2026-01-01T00:00:00Z");
        let new = pod("web-2", "2026-07-01T00:00:00Z");
        assert!(wanted(
            &spec("filter: {prefix: web-}"),
            Change::Add,
            &old,
            started
        ));
        assert!(!wanted(
            &spec("filter: {prefix: db-}"),
            Change::Add,
            &old,
            started
        ));
        assert!(wanted(
            &spec("filter: {annotations: {owner: shop}}"),
            Change::Add,
            &old,
            started
        ));
        assert!(!wanted(
            &spec("filter: {annotations: {owner: ops}}"),
            Change::Add,
            &old,
            started
        ));
        assert!(!wanted(
            &spec("filter: {afterStart: true}"),
            Change::Add,
            &old,
            started
        ));
        assert!(wanted(
            &spec("filter: {afterStart: true}"),
            Change::Add,
            &new,
            started
        ));
        let before = spec("filter: {createdBy: \"2026-03-01T00:00:00Z\"}");
        assert!(wanted(&before, Change::Update, &old, started));
        assert!(!wanted(&before, Change::Update, &new, started));
        assert!(!wanted(
            &spec("eventTypes: [DELETE]"),
            Change::Add,
            &old,
            started
        ));
    }

    #[test]
    fn ids_name_one_state_of_one_object() {
        let p = pod("a", "2026-01-01T00:00:00Z");
        assert_eq!(id(Change::Add, &p), "u/9");
        assert_eq!(id(Change::Update, &p), "u/9");
        assert_eq!(id(Change::Delete, &p), "u/deleted");
        let s = spec("metadata: {team: shop}");
        let v: Value =
            serde_json::from_slice(&payload(&s, Change::Update, &p, Some(&p))).expect("json");
        assert_eq!(v["type"], "UPDATE");
        assert_eq!(v["oldBody"]["metadata"]["name"], "a");
        assert_eq!(v["metadata"]["team"], "shop");
        assert_eq!(v["resource"], "pods");
    }
}
