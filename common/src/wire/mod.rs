//! The body that producers POST to the transformer (and user servers POST to the
//! processor-client's event endpoint): a configuration key and a base64 payload.
//! Both crates speak it, so it lives here, next to the transformer that owns it.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// `{"src": KEY, "payload": BASE64, "id"?: TEXT}` as the contract fixes it.
/// `id` is the user server's own name for the event: the same
/// (configuration, id) always becomes the same CloudEvent id, and the
/// transformer takes it once within its deduplication window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventRequest {
    pub src: String,
    pub payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The longest event id a user server may give, in characters.
pub const MAX_EVENT_ID_CHARS: usize = 256;

/// Why an event body was refused; every variant names the offending part so the
/// producer can fix it without reading our logs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("body is not a JSON object with \"src\" and \"payload\": {0}")]
    Malformed(String),
    #[error("\"src\" is missing or empty")]
    MissingSrc,
    #[error("\"payload\" is not valid base64: {0}")]
    BadBase64(String),
    #[error("\"id\" {0}")]
    BadId(&'static str),
    #[error("x-gateway-claim-until must be milliseconds since the Unix epoch, not {0:?}")]
    BadClaim(String),
}

/// Parses `{"src","payload"}` strictly enough to give a clear error, loosely enough
/// for real producers: `payload` may be absent or null (an empty event).
pub fn parse_event_request(body: &[u8]) -> Result<EventRequest, WireError> {
    #[derive(Deserialize)]
    struct Loose {
        src: Option<String>,
        payload: Option<String>,
        #[serde(default)]
        id: Option<String>,
    }
    // serde reads a struct from an array too (its fields in order), and then
    // complains about the first element: say what the body is instead.
    let found = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => None,
        Some(b'[') => Some("a JSON array (one event per request)"),
        Some(b'"') => Some("a JSON string"),
        Some(_) => Some("not a JSON object"),
    };
    if let Some(found) = found {
        return Err(WireError::Malformed(format!("the body is {found}")));
    }
    let loose: Loose =
        serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    let src = loose
        .src
        .filter(|s| !s.is_empty())
        .ok_or(WireError::MissingSrc)?;
    if let Some(id) = &loose.id {
        check_event_id(id)?;
    }
    Ok(EventRequest {
        src,
        payload: loose.payload.unwrap_or_default(),
        id: loose.id,
    })
}

/// An event id is 1 to [`MAX_EVENT_ID_CHARS`] characters, none of them a
/// control character: it is shown in logs and sent as a CloudEvent
/// extension's value, and a line break there would forge a log line.
pub fn check_event_id(id: &str) -> Result<(), WireError> {
    if id.is_empty() {
        return Err(WireError::BadId(
            "is empty; leave it out, or give 1 to 256 characters",
        ));
    }
    if id.chars().count() > MAX_EVENT_ID_CHARS {
        return Err(WireError::BadId("is longer than 256 characters"));
    }
    if id.chars().any(char::is_control) {
        return Err(WireError::BadId("holds a control character"));
    }
    Ok(())
}

/// Decodes a payload, accepting the standard alphabet first and then the padless and
/// URL-safe variants that hand-written producers in other languages tend to emit.
/// Line breaks and spaces inside are skipped, as Go's, Node's and Python's own
/// decoders do: MIME encoders (Python's `base64.encodebytes`, Java's
/// `getMimeEncoder`) break lines every 76 characters.
pub fn decode_payload(payload: &str) -> Result<Vec<u8>, WireError> {
    let trimmed = payload.trim().as_bytes();
    decode_any(trimmed)
        .or_else(|first| {
            if !trimmed.iter().any(u8::is_ascii_whitespace) {
                return Err(first);
            }
            let joined: Vec<u8> = trimmed
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            decode_any(&joined).map_err(|_| first)
        })
        .map_err(|e| WireError::BadBase64(e.to_string()))
}

/// The four alphabets in turn; the error is the standard one's.
fn decode_any(b: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(b).or_else(|first| {
        STANDARD_NO_PAD
            .decode(b)
            .or_else(|_| URL_SAFE.decode(b))
            .or_else(|_| URL_SAFE_NO_PAD.decode(b))
            .map_err(|_| first)
    })
}

/// Whether [`decode_payload`] would take `payload`, without holding the decoded
/// bytes: the processor-client checks each payload before it answers, and the
/// transformer decodes it again anyway, so a whole decoded copy there (1 MiB
/// for a 1 MiB event) was memory and time for nothing. Decodes in slices of
/// [`VALIDATE_CHUNK`] characters into a buffer on the stack; a slice boundary
/// at a multiple of 4 characters is a boundary of the encoding too, so each
/// engine takes the slices exactly when it takes the whole, once padding is
/// kept to the last slice.
pub fn validate_payload(payload: &str) -> Result<(), WireError> {
    let b = payload.trim().as_bytes();
    let takes = |engine: &base64::engine::GeneralPurpose| {
        let mut buf = [0u8; VALIDATE_CHUNK / 4 * 3];
        let mut rest = b;
        while rest.len() > VALIDATE_CHUNK {
            let (head, tail) = rest.split_at(VALIDATE_CHUNK);
            if head.ends_with(b"=") || engine.decode_slice(head, &mut buf).is_err() {
                return false;
            }
            rest = tail;
        }
        engine.decode_slice(rest, &mut buf).is_ok()
    };
    if [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .into_iter()
        .any(takes)
    {
        return Ok(());
    }
    // Refused in one piece: the rare path (broken lines, or an error), so
    // leave it to `decode_payload`, which also says why.
    decode_payload(payload).map(|_| ())
}

/// Characters per slice in [`validate_payload`]; a multiple of 4.
const VALIDATE_CHUNK: usize = 4096;

/// Standard base64 with padding, the form the contract's examples use.
pub fn encode_payload(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// The `{src, payload}` body for one event, written straight into its buffer:
/// the gRPC path builds one for every message it reads, and going through a
/// `serde_json::Value` showed in its profile.
pub fn encode_event(src: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() + data.len() * 4 / 3 + 32);
    out.extend_from_slice(b"{\"src\":");
    // A string always serializes, and writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, src);
    out.extend_from_slice(b",\"payload\":\"");
    let start = out.len();
    out.resize(
        start + base64::encoded_len(data.len(), true).unwrap_or(0),
        0,
    );
    let written = STANDARD.encode_slice(data, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
    out.extend_from_slice(b"\"}");
    out
}

/// Where the transformer takes many `{src, payload}` events in one request. Not in
/// the contract: an internal link between our two services, which the
/// processor-client uses only after the transformer has offered it (below).
pub const BATCH_PATH: &str = "/batch";

/// Sent with every answer to `POST /`: the transformer takes batches at
/// [`BATCH_PATH`], of at most this many bytes. A transformer that does not send
/// it (an older one, or another implementation) only ever gets single events.
pub const BATCH_HEADER: &str = "x-gateway-batch-max-bytes";

/// Sent by a processor-client that shares its configurations with other
/// replicas, with each event (a header of `POST /`, a field of a batch item):
/// the time, in milliseconds since the Unix epoch, until which it holds the
/// claim on the event's configuration. The transformer refuses an event that
/// arrives later (409 `not_owner`): the replica checked its claim when the
/// event came in, but a replica frozen (SIGSTOP, a paused VM) between that
/// check and the send would otherwise forward it after another replica took
/// the configuration over.
pub const CLAIM_HEADER: &str = "x-gateway-claim-until";

/// [`CLAIM_HEADER`]'s value for a claim held for `left` from now.
pub fn claim_until(left: std::time::Duration) -> u64 {
    unix_ms(std::time::SystemTime::now() + left)
}

/// Whether a [`CLAIM_HEADER`] value has passed: `Ok(None)` while the claim
/// holds, `Ok(Some(ms))` when it lapsed `ms` milliseconds ago, `Err` when the
/// value is not a time.
pub fn claim_lapsed(value: &str) -> Result<Option<u64>, WireError> {
    let until: u64 = value
        .trim()
        .parse()
        .map_err(|_| WireError::BadClaim(value.chars().take(40).collect()))?;
    let now = unix_ms(std::time::SystemTime::now());
    Ok((now > until).then(|| now - until))
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One event of a batch: the `{src, payload}` body as its producer sent it, and
/// the trace headers and claim that came with it.
#[derive(Debug, Deserialize)]
pub struct BatchItem<'a> {
    #[serde(borrow)]
    pub event: &'a serde_json::value::RawValue,
    #[serde(default)]
    pub traceparent: Option<String>,
    #[serde(default)]
    pub tracestate: Option<String>,
    /// [`CLAIM_HEADER`], when the processor-client shares its configurations.
    #[serde(default, rename = "x-gateway-claim-until")]
    pub claim_until: Option<String>,
}

/// Writes a batch body from events already encoded as `{src, payload}` JSON, so
/// no payload is parsed or copied twice. Each `event` must be valid JSON.
pub fn encode_batch<'a>(
    items: impl IntoIterator<Item = (&'a [u8], &'a [(&'a str, &'a str)])>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.push(b'[');
    for (n, (event, trace)) in items.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"event\":");
        out.extend_from_slice(event);
        for (name, value) in trace {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            // A string always serializes, and writing to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, value);
        }
        out.push(b'}');
    }
    out.push(b']');
    out
}

/// The answer to a batch: one result per event, in the batch's order.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchAnswer {
    pub results: Vec<BatchResult>,
}

/// What a single `POST /` of that event would have answered: its status, and
/// the CloudEvent id or the error with its `Retry-After`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchResult {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `Some(true)` when the event was taken before (its id within the
    /// transformer's deduplication window): answered, delivered nowhere again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// A refusal as the result of one event of a batch: its status, code and
/// detail, and `Retry-After` for a 503.
impl From<crate::error::ApiError> for BatchResult {
    fn from(e: crate::error::ApiError) -> BatchResult {
        BatchResult {
            status: e.status().as_u16(),
            id: None,
            duplicate: None,
            error: Some(e.code.as_str().to_owned()),
            detail: Some(e.detail),
            retry_after: e.retry_after_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_holds_until_its_time_and_its_field_reads_back_from_a_batch() {
        let ahead = claim_until(std::time::Duration::from_secs(60)).to_string();
        assert_eq!(claim_lapsed(&ahead).unwrap(), None);
        let behind = (unix_ms(std::time::SystemTime::now()) - 5_000).to_string();
        assert!(claim_lapsed(&behind).unwrap().is_some_and(|ms| ms >= 5_000));
        assert!(claim_lapsed("soon").is_err());
        let event: &[u8] = br#"{"src":"a","payload":""}"#;
        let body = encode_batch([(event, &[(CLAIM_HEADER, ahead.as_str())][..])]);
        let items: Vec<BatchItem> = serde_json::from_slice(&body).unwrap();
        assert_eq!(items[0].claim_until.as_deref(), Some(ahead.as_str()));
    }

    #[test]
    fn an_encoded_event_parses_back() {
        for (src, data) in [
            ("a", &b"hi"[..]),
            ("k \"q\" \\ \u{e9}", &[0u8, 255, 7][..]),
            ("e", &[][..]),
        ] {
            let body = encode_event(src, data);
            let r = parse_event_request(&body).unwrap();
            assert_eq!(r.src, src);
            assert_eq!(r.payload, encode_payload(data));
        }
    }

    #[test]
    fn parses_contract_body() {
        let r = parse_event_request(br#"{"src":"a","payload":"aGk="}"#).unwrap();
        assert_eq!(r.src, "a");
        assert_eq!(decode_payload(&r.payload).unwrap(), b"hi");
    }

    #[test]
    fn an_event_id_is_read_and_checked() {
        let r = parse_event_request(br#"{"src":"a","payload":"","id":"orders/0/42"}"#).unwrap();
        assert_eq!(r.id.as_deref(), Some("orders/0/42"));
        assert_eq!(parse_event_request(br#"{"src":"a"}"#).unwrap().id, None);
        let long = format!(r#"{{"src":"a","id":"{}"}}"#, "\u{e9}".repeat(256));
        assert!(
            parse_event_request(long.as_bytes()).is_ok(),
            "256 characters, not bytes"
        );
        for (body, why) in [
            (r#"{"src":"a","id":""}"#.to_owned(), "is empty"),
            (
                format!(r#"{{"src":"a","id":"{}"}}"#, "x".repeat(257)),
                "longer",
            ),
            (r#"{"src":"a","id":"a\nb"}"#.to_owned(), "control"),
        ] {
            let e = parse_event_request(body.as_bytes()).unwrap_err();
            assert!(matches!(e, WireError::BadId(_)), "{e}");
            assert!(
                e.to_string().contains(why) && e.to_string().contains("\"id\""),
                "{e}"
            );
        }
        assert!(matches!(
            parse_event_request(br#"{"src":"a","id":7}"#),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn missing_src_is_named() {
        assert_eq!(
            parse_event_request(br#"{"payload":"aGk="}"#),
            Err(WireError::MissingSrc)
        );
        assert_eq!(
            parse_event_request(br#"{"src":"","payload":""}"#),
            Err(WireError::MissingSrc)
        );
    }

    #[test]
    fn malformed_json_is_refused() {
        assert!(matches!(
            parse_event_request(b"{nope"),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            parse_event_request(br#"{"src":1}"#),
            Err(WireError::Malformed(_))
        ));
        let e = parse_event_request(br#" [{"src":"a","payload":""}]"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("a JSON array (one event per request)"),
            "{e}"
        );
        let e = parse_event_request(br#""a""#).unwrap_err();
        assert!(e.to_string().contains("a JSON string"), "{e}");
    }

    #[test]
    fn base64_variants_decode_and_garbage_does_not() {
        assert_eq!(decode_payload("aGk").unwrap(), b"hi");
        assert_eq!(decode_payload("-_8=").unwrap(), vec![0xfb, 0xff]);
        assert!(matches!(
            decode_payload("%%%"),
            Err(WireError::BadBase64(_))
        ));
        assert_eq!(decode_payload("").unwrap(), b"");
    }

    #[test]
    fn mime_line_breaks_are_skipped() {
        let data: Vec<u8> = (0..=255).collect();
        let flat = STANDARD.encode(&data);
        // What Python's base64.encodebytes and Java's MIME encoder send.
        let lines: Vec<&str> = flat
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        for broken in [lines.join("\n") + "\n", lines.join("\r\n")] {
            assert_eq!(decode_payload(&broken).unwrap(), data);
            assert!(validate_payload(&broken).is_ok());
        }
        let err = decode_payload("aGk=\n%%").unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
        assert!(validate_payload("aGk=\n%%").is_err());
    }

    #[test]
    fn a_batch_body_reads_back_item_by_item() {
        let trace = [("traceparent", "00-ab\"c-01")];
        let body = encode_batch([
            (&br#"{"src":"a","payload":"aGk="}"#[..], &trace[..]),
            (&br#"{"src":"b"}"#[..], &[][..]),
        ]);
        let items: Vec<BatchItem> = serde_json::from_slice(&body).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            parse_event_request(items[0].event.get().as_bytes())
                .unwrap()
                .src,
            "a"
        );
        assert_eq!(items[0].traceparent.as_deref(), Some("00-ab\"c-01"));
        assert_eq!(
            parse_event_request(items[1].event.get().as_bytes())
                .unwrap()
                .src,
            "b"
        );
        assert_eq!(items[1].traceparent, None);
    }
}

#[cfg(test)]
mod fuzz;
