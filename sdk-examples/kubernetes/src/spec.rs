//! One configuration of the resource source, parsed and checked before
//! anything connects, so that a mistake is a 400 naming the field (the
//! configuration shows as Error). The field names are those of Argo Events'
//! resource event source, so its configurations carry over; `annotations`
//! (the seed's filter on them) is this gateway's own.
//!
//! ```yaml
//! namespace: shop            # empty or absent: every namespace
//! group: apps                # empty or absent: the core group
//! version: v1
//! resource: deployments      # the plural name, as in the API's paths
//! eventTypes: [ADD, UPDATE, DELETE]
//! filter:
//!   prefix: web-
//!   labels: [{key: tier, operation: "==", value: front}]
//!   fields: [{key: metadata.name, operation: "!=", value: web-old}]
//!   annotations: {owner: shop}
//!   createdBy: "2026-01-01T00:00:00Z"   # only objects created before it
//!   afterStart: true                    # only objects created after the start
//! metadata: {team: shop}     # copied into every event
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use time::OffsetDateTime;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    group: String,
    version: Option<String>,
    resource: Option<String>,
    event_types: Option<Vec<String>>,
    #[serde(default)]
    filter: RawFilter,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFilter {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    labels: Vec<RawSelector>,
    #[serde(default)]
    fields: Vec<RawSelector>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    created_by: Option<String>,
    #[serde(default)]
    after_start: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    key: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    value: String,
}

/// The kinds of change a configuration reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Add,
    Update,
    Delete,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Add => "ADD",
            Change::Update => "UPDATE",
            Change::Delete => "DELETE",
        }
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Empty: every namespace.
    pub namespace: String,
    /// Empty: the core group.
    pub group: String,
    pub version: String,
    /// The plural name, as in the API's paths.
    pub resource: String,
    pub changes: Vec<Change>,
    /// Sent to the server as `labelSelector`, empty for none.
    pub label_selector: String,
    /// Sent to the server as `fieldSelector`, empty for none.
    pub field_selector: String,
    pub prefix: String,
    pub annotations: BTreeMap<String, String>,
    /// Only objects created before this.
    pub created_before: Option<OffsetDateTime>,
    /// Only objects created after the configuration started.
    pub after_start: bool,
    pub metadata: BTreeMap<String, String>,
}

impl Spec {
    /// Reads a configuration's value (YAML or JSON); the error names the field.
    pub fn parse(text: &str) -> Result<Spec, String> {
        let raw: RawSpec = serde_norway::from_str(text)
            .map_err(|e| format!("invalid resource configuration: {e}"))?;
        let version = required(raw.version, "version")?;
        let resource = required(raw.resource, "resource")?;
        // The core group is the empty one.
        let group = Some(&raw.group).filter(|g| !g.is_empty());
        let names = [
            ("group", group),
            ("version", Some(&version)),
            ("resource", Some(&resource)),
        ];
        for (field, value) in names {
            let Some(value) = value else { continue };
            if !is_path_segment(value, field == "group") {
                return Err(format!(
                    "\"{field}\" must be a lower-case DNS name such as the API's paths use, not {value:?}"
                ));
            }
        }
        if !raw.namespace.is_empty() && !is_path_segment(&raw.namespace, false) {
            return Err(format!(
                "\"namespace\" is not a namespace name: {:?}",
                raw.namespace
            ));
        }
        let created_before = match &raw.filter.created_by {
            Some(t) => Some(
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).map_err(
                    |e| format!("\"filter.createdBy\" must be an RFC 3339 time: {t:?}: {e}"),
                )?,
            ),
            None => None,
        };
        Ok(Spec {
            namespace: raw.namespace,
            group: raw.group,
            version,
            resource,
            changes: changes(raw.event_types)?,
            label_selector: selector(&raw.filter.labels, "filter.labels", true)?,
            field_selector: selector(&raw.filter.fields, "filter.fields", false)?,
            prefix: raw.filter.prefix,
            annotations: raw.filter.annotations,
            created_before,
            after_start: raw.filter.after_start,
            metadata: raw.metadata,
        })
    }

    /// `group/version`, or the version alone for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// What the configuration watches, for messages.
    pub fn describe(&self) -> String {
        let place = if self.namespace.is_empty() {
            "every namespace".to_owned()
        } else {
            format!("namespace {}", self.namespace)
        };
        format!("{} ({}) in {place}", self.resource, self.api_version())
    }
}

fn required(value: Option<String>, field: &str) -> Result<String, String> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(format!("\"{field}\" is required")),
    }
}

/// A name that can stand in an API path: lower-case letters, digits, `-`
/// (and `.` in a group).
fn is_path_segment(s: &str, dots: bool) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
}

fn changes(types: Option<Vec<String>>) -> Result<Vec<Change>, String> {
    let Some(types) = types.filter(|t| !t.is_empty()) else {
        return Ok(vec![Change::Add, Change::Update, Change::Delete]);
    };
    let mut out = Vec::new();
    for t in types {
        out.push(match t.to_ascii_uppercase().as_str() {
            "ADD" => Change::Add,
            "UPDATE" => Change::Update,
            "DELETE" => Change::Delete,
            _ => {
                return Err(format!(
                    "\"eventTypes\" takes ADD, UPDATE and DELETE, not {t:?}"
                ))
            }
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Argo's selectors as the server's selector text: labels take =, ==, !=,
/// in, notin (values comma-separated), exists, ! (does not exist), gt, lt;
/// fields take =, == and !=.
fn selector(items: &[RawSelector], field: &str, labels: bool) -> Result<String, String> {
    let mut parts = Vec::new();
    for s in items {
        let (key, value) = (s.key.trim(), s.value.trim());
        let bad = |what: &str| {
            format!(
                "\"{field}\": {what} in {{key: {key:?}, operation: {:?}, value: {value:?}}}",
                s.operation
            )
        };
        if key.is_empty() || key.contains([',', ' ', '(', ')', '=', '!']) {
            return Err(bad("a key that is empty or holds , = ! ( ) or a space"));
        }
        if value.contains([',', ' ', '(', ')']) && !matches!(s.operation.as_str(), "in" | "notin") {
            return Err(bad("a value that holds , ( ) or a space"));
        }
        let op = s.operation.trim();
        parts.push(match (op, labels) {
            ("" | "=", _) => format!("{key}={value}"),
            ("==", _) => format!("{key}=={value}"),
            ("!=", _) => format!("{key}!={value}"),
            ("in" | "notin", true) => {
                let values: Vec<&str> = value.split(',').map(str::trim).collect();
                if values
                    .iter()
                    .any(|v| v.is_empty() || v.contains([' ', '(', ')']))
                {
                    return Err(bad("values that are not a comma-separated list"));
                }
                format!("{key} {op} ({})", values.join(","))
            }
            ("exists", true) => key.to_owned(),
            ("!" | "doesnotexist", true) => format!("!{key}"),
            ("gt", true) => format!("{key}>{value}"),
            ("lt", true) => format!("{key}<{value}"),
            _ => {
                return Err(bad(if labels {
                    "an operation other than =, ==, !=, in, notin, exists, !, gt, lt"
                } else {
                    "an operation other than =, == and != (all a field selector takes)"
                }))
            }
        });
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argo_fields_become_selectors_sent_to_the_server() {
        let s = Spec::parse(
            "namespace: shop\ngroup: apps\nversion: v1\nresource: deployments\n\
             eventTypes: [UPDATE, ADD]\n\
             filter:\n  prefix: web-\n  labels:\n  - {key: tier, operation: \"==\", value: front}\n  \
             - {key: env, operation: in, value: \"prod, stage\"}\n  - {key: legacy, operation: \"!\"}\n  \
             fields:\n  - {key: metadata.name, operation: \"!=\", value: web-old}\n  \
             createdBy: \"2026-01-01T00:00:00Z\"\n",
        )
        .expect("parses");
        assert_eq!(s.api_version(), "apps/v1");
        assert_eq!(s.changes, vec![Change::Add, Change::Update]);
        assert_eq!(s.label_selector, "tier==front,env in (prod,stage),!legacy");
        assert_eq!(s.field_selector, "metadata.name!=web-old");
        assert!(s.created_before.is_some());
    }

    #[test]
    fn mistakes_name_their_field() {
        for (text, names) in [
            ("resource: pods", "\"version\""),
            ("version: v1", "\"resource\""),
            ("version: v1\nresource: Pods", "\"resource\""),
            ("version: v1\nresource: pods\neventTypes: [CREATE]", "eventTypes"),
            ("version: v1\nresource: pods\nfilter: {fields: [{key: a, operation: in, value: b}]}", "filter.fields"),
            ("version: v1\nresource: pods\nfilter: {labels: [{key: 'a b', value: c}]}", "filter.labels"),
            ("version: v1\nresource: pods\nfilter: {createdBy: yesterday}", "filter.createdBy"),
            ("version: v1\nresource: pods\nkind: Pod", "kind"),
            ("version: v1\nresource: pods\nnamespace: Shop", "namespace"),
        ] {
            let e = Spec::parse(text).expect_err(text);
            assert!(e.contains(names), "{text}: {e}");
        }
    }

    #[test]
    fn the_core_group_and_every_namespace_by_default() {
        let s = Spec::parse("version: v1\nresource: pods").expect("parses");
        assert_eq!(s.api_version(), "v1");
        assert_eq!(s.describe(), "pods (v1) in every namespace");
        assert_eq!(s.changes.len(), 3);
    }
}
