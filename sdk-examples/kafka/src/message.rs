//! What one Kafka message becomes: the event's JSON and its id
//! `TOPIC/PARTITION/OFFSET`, under which the gateway takes it once however
//! often it is read again (after a crash, a rebalance, a lost commit).

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use gateway_sdk::Event;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use serde::Serialize;
use serde_json::value::RawValue;

/// The longest id the gateway takes.
const MOST_ID_CHARS: usize = 256;

/// Where a message sits: what its offset commit needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub partition: i32,
    pub offset: i64,
}

/// The event's JSON, written straight from the message's borrowed parts.
#[derive(Serialize)]
struct Shape<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: Option<&'a str>,
    #[serde(rename = "keyBase64", skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    timestamp: Option<String>,
    headers: BTreeMap<&'a str, Option<Cow<'a, str>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Body<'a>>,
    #[serde(rename = "bodyBase64", skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

/// `body`: the message as JSON, or as text.
#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

/// The event for `m`, and where it sits. The body is embedded as JSON when
/// `json_body` is set and it parses (checked, not rebuilt), as text when it
/// is UTF-8, and as `bodyBase64` otherwise.
pub fn event(m: &BorrowedMessage<'_>, json_body: bool) -> (Event, Place) {
    let place = Place {
        partition: m.partition(),
        offset: m.offset(),
    };
    let raw = m.payload().unwrap_or_default();
    let text = std::str::from_utf8(raw).ok();
    let json = text
        .filter(|_| json_body)
        .and_then(|t| serde_json::from_str::<&RawValue>(t).ok());
    let key = m.key();
    let key_text = key.and_then(|k| std::str::from_utf8(k).ok());
    let shape = Shape {
        topic: m.topic(),
        partition: place.partition,
        offset: place.offset,
        key: key_text,
        key_base64: key.filter(|_| key_text.is_none()).map(base64),
        timestamp: m.timestamp().to_millis().map(rfc3339),
        headers: headers(m),
        body: json.map(Body::Json).or(text.map(Body::Text)),
        body_base64: text.is_none().then(|| base64(raw)),
    };
    let payload = serde_json::to_vec(&shape).unwrap_or_default();
    (Event::new(payload).with_id(id(m.topic(), place)), place)
}

/// `TOPIC/PARTITION/OFFSET`, the topic cut from the front when the whole
/// would pass the gateway's 256 characters. A configuration reads one topic,
/// and ids are the configuration's own, so the cut never makes two alike.
pub fn id(topic: &str, place: Place) -> String {
    let tail = format!("/{}/{}", place.partition, place.offset);
    let room = MOST_ID_CHARS.saturating_sub(tail.len());
    let start = topic.len().saturating_sub(room);
    // Topic names are ASCII (Kafka's rule): any index is a boundary.
    format!("{}{tail}", topic.get(start..).unwrap_or(topic))
}

/// Headers as one map of text, as Argo's consumers expect: a value that is
/// not UTF-8 is given as its base64 prefixed `base64:`, an absent one as null.
fn headers<'a>(m: &'a BorrowedMessage<'_>) -> BTreeMap<&'a str, Option<Cow<'a, str>>> {
    let Some(hs) = m.headers() else {
        return BTreeMap::new();
    };
    hs.iter()
        .map(|h| {
            let v = h.value.map(|bytes| match std::str::from_utf8(bytes) {
                Ok(t) => Cow::Borrowed(t),
                Err(_) => Cow::Owned(format!("base64:{}", base64(bytes))),
            });
            (h.key, v)
        })
        .collect()
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The calendar date of a day count since 1970-01-01 (Howard Hinnant's
/// days-to-civil).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_topic_partition_offset_within_256_characters() {
        let p = Place {
            partition: 2,
            offset: 41,
        };
        assert_eq!(id("orders", p), "orders/2/41");
        let long = "t".repeat(249);
        assert_eq!(id(&long, p).len(), 254, "fits: not cut");
        let far = Place {
            partition: 2,
            offset: i64::MAX,
        };
        let cut = id(&long, far);
        assert_eq!(cut.chars().count(), 256);
        assert!(cut.ends_with("t/2/9223372036854775807"));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
