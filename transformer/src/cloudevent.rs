//! CloudEvents 1.0: building one from a gateway event, writing it in the HTTP binary
//! or structured mode, and reading one back from either mode so that one gateway can
//! watch another. Hand-written because it is small and sits on the per-event path.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub const SPEC_VERSION: &str = "1.0";
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
const JSON: &str = "application/json";
const OCTET_STREAM: &str = "application/octet-stream";

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

/// A header of the binary mode: `ce-` and an attribute's name, or `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryName<'a> {
    SpecVersion,
    Id,
    Source,
    Type,
    Subject,
    Time,
    DataSchema,
    /// An extension attribute, by its name without `ce-`.
    Extension(&'a str),
    ContentType,
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

    fn data_is_json(&self) -> bool {
        match self.datacontenttype.as_deref() {
            Some(ct) => is_json_media_type(ct) && is_json(&self.data),
            None => is_json(&self.data),
        }
    }

    /// Binary mode's headers, one call of `put` each, for either binding to
    /// name in its own header type: the attributes (values percent-encoded, as
    /// the HTTP binding requires) and `content-type` (as it is).
    pub fn binary_headers<'a>(&'a self, mut put: impl FnMut(BinaryName<'a>, Cow<'a, str>)) {
        put(BinaryName::SpecVersion, Cow::Borrowed(SPEC_VERSION));
        put(BinaryName::Id, percent_encode(&self.id));
        put(BinaryName::Source, percent_encode(&self.source));
        put(BinaryName::Type, percent_encode(&self.ty));
        if let Some(s) = &self.subject {
            put(BinaryName::Subject, percent_encode(s));
        }
        if let Some(t) = &self.time {
            put(BinaryName::Time, percent_encode(t));
        }
        if let Some(d) = &self.dataschema {
            put(BinaryName::DataSchema, percent_encode(d));
        }
        for (k, v) in &self.extensions {
            put(BinaryName::Extension(k), percent_encode(v));
        }
        if let Some(ct) = &self.datacontenttype {
            put(BinaryName::ContentType, Cow::Borrowed(ct));
        }
    }

    /// Binary mode over HTTP: attributes as `ce-` headers, data as the body.
    pub fn to_binary_headers(&self) -> HeaderMap {
        // The attributes' header names are built at compile time: parsing them
        // from strings for every event showed in the transformer's profile.
        const SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
        const ID: HeaderName = HeaderName::from_static("ce-id");
        const SOURCE: HeaderName = HeaderName::from_static("ce-source");
        const TYPE: HeaderName = HeaderName::from_static("ce-type");
        const SUBJECT: HeaderName = HeaderName::from_static("ce-subject");
        const TIME: HeaderName = HeaderName::from_static("ce-time");
        const DATASCHEMA: HeaderName = HeaderName::from_static("ce-dataschema");
        let mut headers = HeaderMap::with_capacity(8 + self.extensions.len());
        self.binary_headers(|name, value| {
            let name = match name {
                BinaryName::SpecVersion => SPECVERSION,
                BinaryName::Id => ID,
                BinaryName::Source => SOURCE,
                BinaryName::Type => TYPE,
                BinaryName::Subject => SUBJECT,
                BinaryName::Time => TIME,
                BinaryName::DataSchema => DATASCHEMA,
                BinaryName::ContentType => axum::http::header::CONTENT_TYPE,
                BinaryName::Extension(k) => {
                    match HeaderName::from_bytes(format!("ce-{k}").as_bytes()) {
                        Ok(n) => n,
                        Err(_) => return,
                    }
                }
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        });
        headers
    }

    /// Structured mode: one JSON document with the attributes and `data` (embedded
    /// JSON) or `data_base64`.
    pub fn to_structured_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Structured<'a> {
            specversion: &'static str,
            id: &'a str,
            source: &'a str,
            #[serde(rename = "type")]
            ty: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            subject: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            time: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            datacontenttype: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            dataschema: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            data: Option<&'a RawValue>,
            #[serde(skip_serializing_if = "Option::is_none")]
            data_base64: Option<String>,
            #[serde(flatten)]
            extensions: std::collections::BTreeMap<&'a str, &'a str>,
        }
        let raw: Option<&RawValue> = if self.data_is_json() {
            std::str::from_utf8(&self.data)
                .ok()
                .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
        } else {
            None
        };
        let data_base64 = match (&raw, self.data.is_empty()) {
            (None, false) => Some(gateway_common::wire::encode_payload(&self.data)),
            _ => None,
        };
        let doc = Structured {
            specversion: SPEC_VERSION,
            id: &self.id,
            source: &self.source,
            ty: &self.ty,
            subject: self.subject.as_deref(),
            time: self.time.as_deref(),
            datacontenttype: self.datacontenttype.as_deref(),
            dataschema: self.dataschema.as_deref(),
            data: raw,
            data_base64,
            extensions: self
                .extensions
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        };
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// Reads a binary-mode CloudEvent from request headers and body. Returns `None`
    /// when the request carries no `ce-specversion` header (it is not one).
    pub fn from_binary(headers: &HeaderMap, body: Bytes) -> Option<Result<Self, CloudEventError>> {
        let spec = headers.get("ce-specversion")?;
        Some(Self::read_binary(spec, headers, body))
    }

    fn read_binary(
        spec: &HeaderValue,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Self, CloudEventError> {
        let text = |name: &str, v: &HeaderValue| -> Result<String, CloudEventError> {
            v.to_str()
                .map(percent_decode)
                .map_err(|_| CloudEventError::Header(name.to_owned()))
        };
        let spec = text("ce-specversion", spec)?;
        if spec != SPEC_VERSION {
            return Err(CloudEventError::SpecVersion(spec));
        }
        let mut ev = CloudEvent {
            data: body,
            ..CloudEvent::default()
        };
        for (name, value) in headers {
            let Some(attr) = name.as_str().strip_prefix("ce-") else {
                continue;
            };
            let v = text(name.as_str(), value)?;
            match attr {
                "specversion" => {}
                "id" => ev.id = v,
                "source" => ev.source = v,
                "type" => ev.ty = v,
                "subject" => ev.subject = Some(v),
                "time" => ev.time = Some(v),
                "dataschema" => ev.dataschema = Some(v),
                other => {
                    check_name(other)?;
                    ev.extensions.push((other.to_owned(), v))
                }
            }
        }
        if let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE) {
            ev.datacontenttype = Some(text("content-type", ct)?);
        }
        ev.check_required()?;
        Ok(ev)
    }

    /// Reads a structured-mode CloudEvent (`application/cloudevents+json`).
    pub fn from_structured(body: &[u8]) -> Result<Self, CloudEventError> {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| CloudEventError::Json(e.to_string()))?;
        let mut ev = CloudEvent::default();
        let mut spec = None;
        let mut data = None;
        let mut has_base64 = false;
        for (k, v) in map {
            if k == "data" {
                data = Some(v);
                continue;
            }
            let s = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => continue,
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                // JSON Schema's integers include `3.0`: a whole float is that integer.
                serde_json::Value::Number(n)
                    if n.as_f64()
                        .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.0e15) =>
                {
                    (n.as_f64().unwrap_or_default() as i64).to_string()
                }
                _ => return Err(CloudEventError::NotAString(k)),
            };
            match k.as_str() {
                "specversion" => spec = Some(s),
                "id" => ev.id = s,
                "source" => ev.source = s,
                "type" => ev.ty = s,
                "subject" => ev.subject = Some(s),
                "time" => ev.time = Some(s),
                "datacontenttype" => ev.datacontenttype = Some(s),
                "dataschema" => ev.dataschema = Some(s),
                "data_base64" => {
                    has_base64 = true;
                    ev.data = Bytes::from(
                        gateway_common::wire::decode_payload(&s)
                            .map_err(|e| CloudEventError::Base64(e.to_string()))?,
                    )
                }
                _ => {
                    check_name(&k)?;
                    ev.extensions.push((k, s))
                }
            }
        }
        match data {
            Some(serde_json::Value::Null) | None => {}
            Some(_) if has_base64 => return Err(CloudEventError::DataTwice),
            // The JSON format: data that is not JSON (`text/plain`, XML) travels
            // as a JSON string, and the string's text is the data.
            Some(serde_json::Value::String(text))
                if ev
                    .datacontenttype
                    .as_deref()
                    .is_some_and(|ct| !is_json_media_type(ct)) =>
            {
                ev.data = Bytes::from(text)
            }
            Some(json) => ev.data = Bytes::from(serde_json::to_vec(&json).unwrap_or_default()),
        }
        match spec {
            None => return Err(CloudEventError::Missing("specversion")),
            Some(s) if s != SPEC_VERSION => return Err(CloudEventError::SpecVersion(s)),
            Some(_) => {}
        }
        if ev.datacontenttype.is_none() && is_json(&ev.data) && !ev.data.is_empty() {
            ev.datacontenttype = Some(JSON.to_owned());
        }
        ev.check_required()?;
        Ok(ev)
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
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == JSON || essence.ends_with("+json") || essence == "text/json"
}

/// The HTTP binding's header encoding: space, `"`, `%` and anything outside
/// printable ASCII are percent-encoded as UTF-8.
fn percent_encode(value: &str) -> Cow<'_, str> {
    let needs = |b: u8| !(0x21..=0x7e).contains(&b) || b == b'"' || b == b'%';
    if !value.bytes().any(needs) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for b in value.bytes() {
        if needs(b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    Cow::Owned(out)
}

fn percent_decode(value: &str) -> String {
    if !value.contains('%') {
        return value.to_owned();
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &'static [u8]) -> CloudEvent {
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
    fn binary_round_trip() {
        let mut ev = event(b"plain text");
        ev.subject = Some("caf\u{e9} key".into());
        ev.extensions
            .push(("traceparent".into(), "00-abc-def-01".into()));
        let headers = ev.to_binary_headers();
        assert_eq!(headers["ce-subject"], "caf%C3%A9%20key");
        let back = CloudEvent::from_binary(&headers, ev.data.clone())
            .unwrap()
            .unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn structured_round_trip_json_and_binary_data() {
        for data in [&br#"{"k":[1,2]}"#[..], &b"\xff\x00raw"[..]] {
            let ev = event(data);
            let doc = ev.to_structured_json();
            let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
            assert_eq!(v["specversion"], "1.0");
            if ev.data_is_json() {
                assert_eq!(v["data"]["k"][1], 2);
            } else {
                assert!(v["data_base64"].is_string());
            }
            assert_eq!(CloudEvent::from_structured(&doc).unwrap(), ev);
        }
    }

    #[test]
    fn structured_requires_attributes() {
        assert_eq!(
            CloudEvent::from_structured(br#"{"specversion":"1.0","source":"s","type":"t"}"#),
            Err(CloudEventError::Missing("id"))
        );
        assert_eq!(
            CloudEvent::from_structured(
                br#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#
            ),
            Err(CloudEventError::SpecVersion("0.3".into()))
        );
        assert!(matches!(
            CloudEvent::from_structured(b"[1,2]"),
            Err(CloudEventError::Json(_))
        ));
        assert_eq!(
            CloudEvent::from_structured(
                br#"{"specversion":"1.0","id":"1","source":"s","type":"t","n":2.5}"#
            ),
            Err(CloudEventError::NotAString("n".into()))
        );
    }

    #[test]
    fn structured_data_is_read_as_the_json_format_says() {
        let read = |extra: &str| {
            let body =
                format!(r#"{{"specversion":"1.0","id":"1","source":"s","type":"t",{extra}}}"#);
            CloudEvent::from_structured(body.as_bytes())
        };
        // Text that is not JSON travels as a JSON string; the string is the data.
        let e = read(r#""datacontenttype":"text/plain","data":"hello""#).unwrap();
        assert_eq!(&e.data[..], b"hello");
        // JSON data, a string among it, stays JSON, with or without a content type.
        let e = read(r#""datacontenttype":"application/json","data":"hello""#).unwrap();
        assert_eq!(&e.data[..], br#""hello""#);
        let e = read(r#""data":"hello""#).unwrap();
        assert_eq!(&e.data[..], br#""hello""#);
        let e = read(r#""datacontenttype":"text/plain","data":{"a":1}"#).unwrap();
        assert_eq!(&e.data[..], br#"{"a":1}"#);
        assert_eq!(
            read(r#""data":{"a":1},"data_base64":"AA==""#),
            Err(CloudEventError::DataTwice)
        );
        assert_eq!(
            &read(r#""data":null,"data_base64":"AA==""#).unwrap().data[..],
            b"\0"
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

    #[test]
    fn percent_decoding_tolerates_stray_percent() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("%\u{e9}x"), "%\u{e9}x");
    }
}
