//! Property tests over every parser of outside input: event bodies, CloudEvents in
//! both modes, and stored records. Whatever the bytes, they answer with a value or
//! an error, never a panic. CI runs proptest's default 256 cases per property; the
//! long run is `PROPTEST_CASES=1000000 cargo test -p transformer fuzz`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use proptest::prelude::*;

use crate::cloudevent::CloudEvent;
use crate::store;
use gateway_common::wire;

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

/// Payloads around the validator's 4096-character slices: valid encodings of
/// random bytes in each alphabet, with and without padding, sometimes with
/// one character changed or padding put where a slice ends.
fn payload_like() -> impl Strategy<Value = String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    let len = prop_oneof![0usize..16, 3060usize..3080, 6130usize..6150];
    (
        len,
        any::<u64>(),
        0usize..4,
        prop::option::of((any::<prop::sample::Index>(), "[A-Za-z0-9+/=_ -]")),
    )
        .prop_map(|(len, seed, engine, edit)| {
            let bytes: Vec<u8> = (0..len)
                .map(|i| (seed.wrapping_mul(i as u64 + 1).rotate_left(17) >> 7) as u8)
                .collect();
            let mut s = match engine {
                0 => STANDARD.encode(&bytes),
                1 => STANDARD_NO_PAD.encode(&bytes),
                2 => URL_SAFE.encode(&bytes),
                _ => URL_SAFE_NO_PAD.encode(&bytes),
            };
            if let Some((at, c)) = edit {
                if !s.is_empty() {
                    let i = at.index(s.len());
                    s.replace_range(i..=i, &c);
                }
            }
            s
        })
}

/// A valid encoding split by padding where a validator slice ends: the whole
/// is not base64, though each slice alone would be.
#[test]
fn padding_at_a_slice_boundary_is_refused() {
    let mut s = "QUJD".repeat(1023);
    s.push_str("QQ==");
    s.push_str("QUJD");
    assert_eq!(s.len(), 4100);
    assert!(wire::decode_payload(&s).is_err());
    assert!(wire::validate_payload(&s).is_err());
}

proptest! {
    #[test]
    fn fuzz_event_request(body in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(r) = wire::parse_event_request(&body) {
            let _ = wire::decode_payload(&r.payload);
        }
    }

    #[test]
    fn fuzz_event_request_json(body in json_object()) {
        if let Ok(r) = wire::parse_event_request(&body) {
            prop_assert!(!r.src.is_empty());
            let _ = wire::decode_payload(&r.payload);
        }
    }

    #[test]
    fn fuzz_payload(payload in ".{0,64}") {
        let _ = wire::decode_payload(&payload);
    }

    /// The processor-client's check and the transformer's decoding must agree,
    /// or an event the producer was told is fine would be refused later.
    #[test]
    fn validate_agrees_with_decode(payload in payload_like()) {
        prop_assert_eq!(
            wire::validate_payload(&payload).is_ok(),
            wire::decode_payload(&payload).is_ok(),
            "{:?}", payload
        );
    }

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
