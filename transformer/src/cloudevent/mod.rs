//! CloudEvents 1.0: building one from a gateway event, writing it in the HTTP binary
//! or structured mode, and reading one back from either mode so that one gateway can
//! watch another. Hand-written because it is small and sits on the per-event path.
//! Here the event and the rules every mode shares; each mode in a module of its own.

use bytes::Bytes;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub const SPEC_VERSION: &str = "1.0";
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// The extension attribute that carries a user server's own id for the
/// event (`id` of `POST /event` and `/events`).
pub const ORIGIN_ID: &str = "originid";
mod binary;
mod structured;

pub use binary::BinaryName;

const JSON: &str = "application/json";
const OCTET_STREAM: &str = "application/octet-stream";

/// Whether `name` is a CloudEvents attribute name: lower-case letters and
/// digits only.
pub fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// A configured attribute value as text (a string, or a number or boolean
/// written as its text); `None` for anything else.
pub fn attribute_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One CloudEvent. `data` is kept as raw bytes: JSON data is embedded verbatim in
/// structured mode, anything else travels as `data_base64`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub subject: Option<String>,
    pub time: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    /// Extension attributes (lower-case names), carried through unchanged.
    pub extensions: Vec<(String, String)>,
    pub data: Bytes,
}

/// Why an incoming CloudEvent was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloudEventError {
    #[error("missing required CloudEvent attribute \"{0}\"")]
    Missing(&'static str),
    #[error("unsupported specversion \"{0}\" (only 1.0 is accepted)")]
    SpecVersion(String),
    #[error("structured CloudEvent is not valid JSON: {0}")]
    Json(String),
    #[error("attribute \"{0}\" must be a string, an integer or a boolean")]
    NotAString(String),
    #[error("\"data_base64\" is not valid base64: {0}")]
    Base64(String),
    #[error("a structured CloudEvent carries \"data\" or \"data_base64\", not both")]
    DataTwice,
    #[error("header {0} is not valid text")]
    Header(String),
    #[error("attribute name {0:?} is invalid: CloudEvents attribute names are lower-case letters and digits")]
    AttributeName(String),
    #[error("attribute \"{0}\" must not be empty when present")]
    Empty(&'static str),
    #[error("attribute \"time\" is not an RFC 3339 timestamp: {0:?}")]
    Time(String),
}

/// CloudEvents attribute names: `[a-z0-9]+`.
fn check_name(name: &str) -> Result<(), CloudEventError> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(CloudEventError::AttributeName(name.to_owned()))
    }
}

impl CloudEvent {
    /// The contract's mapping of a `{src, payload}` event: a fresh UUID, the gateway
    /// as source, the configuration key as subject, arrival time, and a content type
    /// that says whether the payload is JSON.
    pub fn from_gateway_event(source: &str, ty: &str, src: &str, data: Bytes) -> Self {
        let datacontenttype = if is_json(&data) { JSON } else { OCTET_STREAM };
        CloudEvent {
            id: uuid::Uuid::now_v7().to_string(),
            source: source.to_owned(),
            ty: ty.to_owned(),
            subject: Some(src.to_owned()),
            time: Some(now_rfc3339()),
            datacontenttype: Some(datacontenttype.to_owned()),
            dataschema: None,
            extensions: Vec::new(),
            data,
        }
    }

    /// The key that orders delivery: events with the same key reach each watcher in
    /// the order they were accepted.
    pub fn ordering_key(&self) -> &str {
        self.subject.as_deref().unwrap_or(&self.source)
    }

    /// Text the JSON format carries as a string: a `text/*` or XML type, and
    /// not JSON (which is embedded as itself, see [`Self::data_is_json`]).
    fn data_is_text(&self) -> bool {
        self.datacontenttype.as_deref().is_some_and(|ct| {
            let essence = gateway_common::media::essence(ct);
            !is_json_essence(&essence) && (essence.starts_with("text/") || essence.ends_with("xml"))
        })
    }

    fn data_is_json(&self) -> bool {
        match self.datacontenttype.as_deref() {
            Some(ct) => is_json_media_type(ct) && is_json(&self.data),
            None => is_json(&self.data),
        }
    }

    /// The spec's rules for incoming events: required attributes present, optional
    /// ones non-empty when present, `time` in RFC 3339. Refusing here, with a 400,
    /// beats accepting an event every conforming sensor will refuse later.
    fn check_required(&self) -> Result<(), CloudEventError> {
        if self.id.is_empty() {
            return Err(CloudEventError::Missing("id"));
        }
        if self.source.is_empty() {
            return Err(CloudEventError::Missing("source"));
        }
        if self.ty.is_empty() {
            return Err(CloudEventError::Missing("type"));
        }
        for (name, value) in [
            ("subject", &self.subject),
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(CloudEventError::Empty(name));
            }
        }
        if let Some(t) = &self.time {
            if OffsetDateTime::parse(t, &Rfc3339).is_err() {
                return Err(CloudEventError::Time(t.clone()));
            }
        }
        Ok(())
    }
}

/// RFC 3339 time of now, in UTC, as CloudEvents' `time` wants it.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

fn is_json(data: &[u8]) -> bool {
    !data.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok()
}

fn is_json_media_type(ct: &str) -> bool {
    is_json_essence(&gateway_common::media::essence(ct))
}

/// [`is_json_media_type`] of a type already reduced to its essence.
fn is_json_essence(essence: &str) -> bool {
    essence == JSON || essence.ends_with("+json") || essence == "text/json"
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn event(data: &'static [u8]) -> CloudEvent {
        CloudEvent::from_gateway_event("gw", "gw-type", "cfg", Bytes::from_static(data))
    }

    #[test]
    fn gateway_event_maps_contract_attributes() {
        let ev = event(br#"{"a":1}"#);
        assert!(uuid::Uuid::parse_str(&ev.id).is_ok());
        assert_eq!(ev.source, "gw");
        assert_eq!(ev.ty, "gw-type");
        assert_eq!(ev.subject.as_deref(), Some("cfg"));
        assert_eq!(ev.datacontenttype.as_deref(), Some("application/json"));
        assert!(OffsetDateTime::parse(ev.time.as_deref().unwrap(), &Rfc3339).is_ok());
        assert_eq!(
            event(b"\x00\x01").datacontenttype.as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(
            event(b"").datacontenttype.as_deref(),
            Some("application/octet-stream")
        );
    }

    #[test]
    fn optional_attributes_must_be_well_formed_when_present() {
        let base = r#""specversion":"1.0","id":"1","source":"s","type":"t""#;
        for (extra, err) in [
            (r#""subject":"""#, CloudEventError::Empty("subject")),
            (
                r#""datacontenttype":"""#,
                CloudEventError::Empty("datacontenttype"),
            ),
            (
                r#""time":"yesterday""#,
                CloudEventError::Time("yesterday".into()),
            ),
        ] {
            let doc = format!("{{{base},{extra}}}");
            assert_eq!(CloudEvent::from_structured(doc.as_bytes()), Err(err));
        }
        let ok = format!(r#"{{{base},"time":"2026-11-22T10:00:00Z"}}"#);
        assert!(CloudEvent::from_structured(ok.as_bytes()).is_ok());
    }

    #[test]
    fn extension_names_must_be_lowercase_alphanumeric() {
        let doc = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","x-bad":"v"}"#;
        assert_eq!(
            CloudEvent::from_structured(doc),
            Err(CloudEventError::AttributeName("x-bad".into()))
        );
        let ok =
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","traceparent":"v","n":null}"#;
        assert_eq!(
            CloudEvent::from_structured(ok).unwrap().extensions,
            vec![("traceparent".to_owned(), "v".to_owned())]
        );
    }
}
