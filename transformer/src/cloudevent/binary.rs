//! The HTTP binding's binary mode: attributes as `ce-` headers (values
//! percent-encoded), the data as the body. Written for every delivery to a
//! sensor in binary mode, and read back when one gateway watches another.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use super::{check_name, CloudEvent, CloudEventError, SPEC_VERSION};

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

impl CloudEvent {
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
        const ORIGIN: HeaderName = HeaderName::from_static("ce-originid");
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
                // On every event a user server named.
                BinaryName::Extension(super::ORIGIN_ID) => ORIGIN,
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
    use crate::cloudevent::tests::event;

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
    fn percent_decoding_tolerates_stray_percent() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("%\u{e9}x"), "%\u{e9}x");
    }
}
