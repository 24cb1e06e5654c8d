//! Property tests over every parser of outside input the transformer has of its
//! own: CloudEvents in both modes, and stored records (the `{src, payload}` body
//! is fuzzed where it is parsed, in gateway-common's wire module). Whatever the bytes, they answer with a value or
//! an error, never a panic. CI runs proptest's default 256 cases per property; the
//! long run is `PROPTEST_CASES=1000000 cargo test -p transformer fuzz`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use proptest::prelude::*;

use crate::cloudevent::CloudEvent;
use crate::store;

/// JSON objects built from CloudEvent-ish keys and arbitrary values, so the
/// structured parser sees near-valid documents, not only noise.
fn json_object() -> impl Strategy<Value = Vec<u8>> {
    let key = prop::sample::select(vec![
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
        "data",
        "data_base64",
        "src",
        "payload",
        "ext1",
    ]);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        ".{0,12}".prop_map(serde_json::Value::String),
        Just(serde_json::json!("1.0")),
        Just(serde_json::json!("aGk=")),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,4}", inner, 0..3)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map(key, value, 0..10).prop_map(|m| {
        serde_json::to_vec(
            &m.into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<serde_json::Map<_, _>>(),
        )
        .unwrap_or_default()
    })
}

proptest! {
    #[test]
    fn fuzz_structured(body in prop_oneof![json_object(), prop::collection::vec(any::<u8>(), 0..256)]) {
        if let Ok(ev) = CloudEvent::from_structured(&body) {
            // Whatever was accepted can be written in both modes and read back.
            let again = CloudEvent::from_structured(&ev.to_structured_json());
            prop_assert!(again.is_ok(), "{:?}", again);
            let headers = ev.to_binary_headers();
            let _ = CloudEvent::from_binary(&headers, ev.data.clone());
        }
    }

    #[test]
    fn fuzz_binary(
        headers in prop::collection::vec(("ce-[a-z]{1,12}|content-type", "[ -~]{0,24}"), 0..10),
        spec in prop::option::of(prop_oneof![Just("1.0".to_owned()), "[ -~]{0,6}"]),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
                map.append(k, v);
            }
        }
        if let Some(s) = spec.and_then(|s| HeaderValue::from_str(&s).ok()) {
            map.insert("ce-specversion", s);
        }
        if let Some(Ok(ev)) = CloudEvent::from_binary(&map, Bytes::from(body)) {
            let back = CloudEvent::from_binary(&ev.to_binary_headers(), ev.data.clone());
            prop_assert!(matches!(back, Some(Ok(_))));
        }
    }

    #[test]
    fn fuzz_stored_records(record in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = store::decode_event(&record);
    }

    /// Segment files of the queue's log: any bytes, framed or not, and a
    /// well-framed record with any body, read without panicking.
    #[test]
    fn fuzz_log_records(
        raw in prop::collection::vec(any::<u8>(), 0..256),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let _ = store::log::read_record_len(&raw);
        let mut framed = Vec::new();
        framed.extend_from_slice(&(body.len() as u32).to_le_bytes());
        framed.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        framed.extend_from_slice(&body);
        if let Some(len) = store::log::read_record_len(&framed) {
            prop_assert_eq!(len, framed.len());
        }
    }
}
