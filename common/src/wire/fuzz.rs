//! Property tests over the wire format, outside input for both binaries: any
//! bytes as a `{src, payload}` body, near-valid JSON objects, and payloads around
//! the validator's slice boundaries. Whatever the bytes, they answer with a value
//! or an error, never a panic; and the processor-client's check and the
//! transformer's decoding agree. The long run is
//! `PROPTEST_CASES=1000000 cargo test -p gateway-common fuzz`.

use proptest::prelude::*;

use super as wire;

/// JSON objects with the body's keys and arbitrary values.
fn json_object() -> impl Strategy<Value = Vec<u8>> {
    let key = prop::sample::select(vec!["src", "payload", "data", "extra"]);
    let value = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        ".{0,12}".prop_map(serde_json::Value::String),
        Just(serde_json::json!("aGk=")),
        prop::collection::vec(".{0,4}", 0..3).prop_map(|v| serde_json::json!(v)),
    ];
    prop::collection::btree_map(key, value, 0..5).prop_map(|m| {
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
}
