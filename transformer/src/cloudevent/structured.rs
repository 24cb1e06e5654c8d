//! The JSON event format (structured mode): one JSON document with the
//! attributes and the data, embedded when it is JSON, as text when it is text
//! the format carries as a JSON string, base64 otherwise.

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{
    check_name, is_json, is_json_media_type, CloudEvent, CloudEventError, JSON, SPEC_VERSION,
};

impl CloudEvent {
    /// Structured mode: one JSON document with the attributes and `data`
    /// (embedded JSON, or a string for text: `text/*`, XML) or `data_base64`.
    pub fn to_structured_json(&self) -> Vec<u8> {
        /// `data` as the JSON format carries it.
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Data<'a> {
            Json(&'a RawValue),
            Text(&'a str),
        }
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
            data: Option<Data<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            data_base64: Option<String>,
            #[serde(flatten)]
            extensions: std::collections::BTreeMap<&'a str, &'a str>,
        }
        let raw: Option<Data> = if self.data_is_json() {
            std::str::from_utf8(&self.data)
                .ok()
                .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
                .map(Data::Json)
        } else if self.data_is_text() {
            std::str::from_utf8(&self.data).ok().map(Data::Text)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevent::tests::event;

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
    fn text_data_is_written_as_a_string_and_read_back_as_that_text() {
        let mut ev = event(b"<a>1 & 2</a>");
        for ct in ["text/plain; charset=utf-8", "application/xml", "text/csv"] {
            ev.datacontenttype = Some(ct.to_owned());
            let doc = ev.to_structured_json();
            let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
            assert_eq!(v["data"], "<a>1 & 2</a>", "{ct}");
            assert!(v.get("data_base64").is_none(), "{ct}");
            assert_eq!(CloudEvent::from_structured(&doc).unwrap(), ev);
        }
        // Not UTF-8, or JSON by its type but not by its bytes: base64.
        for (data, ct) in [(&b"\xff"[..], "text/plain"), (&b"{"[..], "text/json")] {
            let mut ev = event(b"");
            ev.data = Bytes::copy_from_slice(data);
            ev.datacontenttype = Some(ct.to_owned());
            let v: serde_json::Value = serde_json::from_slice(&ev.to_structured_json()).unwrap();
            assert!(v["data_base64"].is_string(), "{ct}");
            assert_eq!(
                CloudEvent::from_structured(&ev.to_structured_json()).unwrap(),
                ev
            );
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
}
