//! A trigger's filter, as Knative Eventing defines it: `filter.attributes`
//! (every listed attribute equal), and `filters` in the dialects `exact`,
//! `prefix`, `suffix` (on context attributes and extensions), `all`, `any`,
//! `not` and `cesql`. Compiled once per load; matching an event reads its
//! attributes and allocates nothing but what a CESQL expression needs.

use serde_json::Value as Json;

use crate::cesql::{Attributes as _, Expression, Value};
use crate::cloudevent::CloudEvent;

/// A compiled filter.
#[derive(Debug)]
pub enum Filter {
    /// Every attribute equal to its value.
    Exact(Vec<(String, String)>),
    /// Every attribute starting with its value.
    Prefix(Vec<(String, String)>),
    /// Every attribute ending with its value.
    Suffix(Vec<(String, String)>),
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    /// The expression, and its text (for `GET /triggers`).
    Cesql(Box<Expression>, String),
}

impl Filter {
    /// Whether the event passes.
    pub fn matches(&self, event: &CloudEvent) -> bool {
        match self {
            Filter::Exact(pairs) => each(event, pairs, |a, v| a == v),
            Filter::Prefix(pairs) => each(event, pairs, |a, v| a.starts_with(v)),
            Filter::Suffix(pairs) => each(event, pairs, |a, v| a.ends_with(v)),
            Filter::All(fs) => fs.iter().all(|f| f.matches(event)),
            Filter::Any(fs) => fs.iter().any(|f| f.matches(event)),
            Filter::Not(f) => !f.matches(event),
            Filter::Cesql(e, _) => e.evaluate(event).passes(),
        }
    }

    /// `spec.filter.attributes`: exact matches, where Knative's empty value
    /// means "any value, as long as the attribute is there".
    pub fn attributes(map: &serde_json::Map<String, Json>, at: &str) -> Result<Filter, String> {
        let pairs = pairs(map, at)?;
        let (any, exact): (Vec<_>, Vec<_>) = pairs.into_iter().partition(|(_, v)| v.is_empty());
        let mut all = vec![Filter::Exact(exact)];
        // A prefix of "" passes any value the attribute has.
        all.extend(any.into_iter().map(|p| Filter::Prefix(vec![p])));
        Ok(Filter::All(all))
    }

    /// One element of `spec.filters`: an object with exactly one dialect.
    pub fn parse(v: &Json, at: &str) -> Result<Filter, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("{at}: a filter is an object with one dialect"))?;
        let mut dialects = obj.iter();
        let (Some((dialect, body)), None) = (dialects.next(), dialects.next()) else {
            return Err(format!(
                "{at}: a filter has exactly one dialect (exact, prefix, suffix, all, any, not, cesql); found {}",
                if obj.is_empty() { "none".to_owned() } else { obj.keys().cloned().collect::<Vec<_>>().join(", ") }
            ));
        };
        let here = format!("{at}.{dialect}");
        match dialect.as_str() {
            "exact" | "prefix" | "suffix" => {
                let map = body
                    .as_object()
                    .ok_or_else(|| format!("{here}: a map of attribute to value"))?;
                let p = pairs(map, &here)?;
                if p.is_empty() {
                    return Err(format!("{here}: names no attribute"));
                }
                Ok(match dialect.as_str() {
                    "exact" => Filter::Exact(p),
                    "prefix" => Filter::Prefix(p),
                    _ => Filter::Suffix(p),
                })
            }
            "all" | "any" => {
                let list = body
                    .as_array()
                    .ok_or_else(|| format!("{here}: a list of filters"))?;
                let fs = list
                    .iter()
                    .enumerate()
                    .map(|(i, f)| Filter::parse(f, &format!("{here}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(if dialect == "all" { Filter::All(fs) } else { Filter::Any(fs) })
            }
            "not" => Ok(Filter::Not(Box::new(Filter::parse(body, &here)?))),
            "cesql" => {
                let text = body
                    .as_str()
                    .ok_or_else(|| format!("{here}: a CESQL expression as a string"))?;
                let e = Expression::parse(text)
                    .map_err(|e| format!("{here}: {text:?} does not parse: {e}"))?;
                Ok(Filter::Cesql(Box::new(e), text.to_owned()))
            }
            other => Err(format!(
                "{at}: unknown filter dialect {other:?} (exact, prefix, suffix, all, any, not, cesql)"
            )),
        }
    }

    /// The filter as JSON, in Knative's shape, for `GET /triggers`.
    pub fn describe(&self) -> Json {
        let map = |pairs: &Vec<(String, String)>| {
            Json::Object(
                pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), Json::from(v.as_str())))
                    .collect(),
            )
        };
        match self {
            Filter::Exact(p) => serde_json::json!({ "exact": map(p) }),
            Filter::Prefix(p) => serde_json::json!({ "prefix": map(p) }),
            Filter::Suffix(p) => serde_json::json!({ "suffix": map(p) }),
            Filter::All(fs) => {
                serde_json::json!({ "all": fs.iter().map(Filter::describe).collect::<Vec<_>>() })
            }
            Filter::Any(fs) => {
                serde_json::json!({ "any": fs.iter().map(Filter::describe).collect::<Vec<_>>() })
            }
            Filter::Not(f) => serde_json::json!({ "not": f.describe() }),
            Filter::Cesql(_, text) => serde_json::json!({ "cesql": text }),
        }
    }
}

fn each(event: &CloudEvent, pairs: &[(String, String)], test: impl Fn(&str, &str) -> bool) -> bool {
    pairs.iter().all(|(name, want)| match event.get(name) {
        Some(Value::Str(have)) => test(&have, want),
        Some(other) => test(&other.to_string(), want),
        None => false,
    })
}

/// Attribute names (lower-case letters and digits, as CloudEvents has them)
/// and string values.
fn pairs(map: &serde_json::Map<String, Json>, at: &str) -> Result<Vec<(String, String)>, String> {
    map.iter()
        .map(|(k, v)| {
            if !crate::cloudevent::is_attribute_name(k) {
                return Err(format!(
                    "{at}: {k:?} is not a CloudEvents attribute name (a-z, 0-9)"
                ));
            }
            let v = crate::cloudevent::attribute_text(v)
                .ok_or_else(|| format!("{at}.{k}: the value is a string"))?;
            Ok((k.clone(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: &str, source: &str, ext: &[(&str, &str)]) -> CloudEvent {
        CloudEvent {
            id: "1".into(),
            source: source.into(),
            ty: ty.into(),
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            extensions: ext
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            data: bytes::Bytes::new(),
        }
    }

    fn filter(json: &str) -> Filter {
        Filter::parse(&serde_json::from_str(json).expect("json"), "filters[0]").expect("parses")
    }

    #[test]
    fn each_dialect_and_their_combinations() {
        let e = event(
            "com.example.order.placed",
            "/shop/eu",
            &[("region", "eu-west")],
        );
        let cases = [
            (r#"{"exact": {"type": "com.example.order.placed"}}"#, true),
            (r#"{"exact": {"type": "com.example.order"}}"#, false),
            (
                r#"{"exact": {"type": "com.example.order.placed", "region": "eu-west"}}"#,
                true,
            ),
            (
                r#"{"exact": {"type": "com.example.order.placed", "region": "us"}}"#,
                false,
            ),
            (r#"{"exact": {"missing": "x"}}"#, false),
            (r#"{"prefix": {"type": "com.example."}}"#, true),
            (r#"{"prefix": {"region": "us"}}"#, false),
            (r#"{"suffix": {"source": "/eu"}}"#, true),
            (r#"{"suffix": {"source": "/us"}}"#, false),
            (
                r#"{"all": [{"prefix": {"type": "com."}}, {"suffix": {"source": "eu"}}]}"#,
                true,
            ),
            (
                r#"{"all": [{"prefix": {"type": "com."}}, {"suffix": {"source": "us"}}]}"#,
                false,
            ),
            (r#"{"all": []}"#, true),
            (
                r#"{"any": [{"exact": {"type": "x"}}, {"suffix": {"source": "eu"}}]}"#,
                true,
            ),
            (
                r#"{"any": [{"exact": {"type": "x"}}, {"exact": {"type": "y"}}]}"#,
                false,
            ),
            (r#"{"any": []}"#, false),
            (r#"{"not": {"exact": {"type": "x"}}}"#, true),
            (r#"{"not": {"prefix": {"type": "com"}}}"#, false),
            (
                r#"{"not": {"any": [{"exact": {"region": "eu-west"}}, {"exact": {"type": "x"}}]}}"#,
                false,
            ),
            (
                r#"{"cesql": "type LIKE 'com.example.%' AND region = 'eu-west'"}"#,
                true,
            ),
            (r#"{"cesql": "region IN ('us', 'ap')"}"#, false),
            (r#"{"cesql": "missing = 'x'"}"#, false),
            (r#"{"cesql": "EXISTS region"}"#, true),
        ];
        for (json, want) in cases {
            assert_eq!(filter(json).matches(&e), want, "{json}");
        }
    }

    #[test]
    fn attributes_match_exactly_and_empty_means_present() {
        let e = event("t", "s", &[("region", "eu")]);
        let f = |json: &str| {
            let v: Json = serde_json::from_str(json).expect("json");
            Filter::attributes(v.as_object().expect("map"), "filter.attributes").expect("parses")
        };
        assert!(f(r#"{"type": "t", "region": "eu"}"#).matches(&e));
        assert!(!f(r#"{"type": "t", "region": "us"}"#).matches(&e));
        assert!(f(r#"{"region": ""}"#).matches(&e));
        assert!(!f(r#"{"other": ""}"#).matches(&e));
        assert!(f("{}").matches(&e));
    }

    #[test]
    fn mistakes_name_the_place() {
        let cases = [
            (
                r#"{"exact": {"type": "a"}, "prefix": {"type": "b"}}"#,
                "exactly one dialect",
            ),
            (r#"{}"#, "found none"),
            (
                r#"{"regex": {"type": "a"}}"#,
                "unknown filter dialect \"regex\"",
            ),
            (r#"{"exact": {}}"#, "filters[0].exact: names no attribute"),
            (r#"{"exact": {"Type": "a"}}"#, "\"Type\""),
            (
                r#"{"all": {"exact": {"type": "a"}}}"#,
                "filters[0].all: a list",
            ),
            (
                r#"{"any": [{"exact": {"type": "a"}}, {"cesql": "a = "}]}"#,
                "filters[0].any[1].cesql",
            ),
            (r#"{"not": []}"#, "filters[0].not"),
        ];
        for (json, words) in cases {
            let e = Filter::parse(&serde_json::from_str(json).expect("json"), "filters[0]")
                .expect_err(json);
            assert!(e.contains(words), "{json}: {e}");
        }
    }
}
