//! The event for one object change, in the S3 event notification shape that
//! AWS and MinIO send (`{"Records": [...]}`, one record per event), so that
//! sensors written for bucket notifications read it unchanged.

use serde_json::{json, Value};

use crate::state::Seen;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created,
    Removed,
}

/// One change to report.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: Kind,
    pub key: String,
    /// The object as listed (created), or as last seen (removed).
    pub seen: Seen,
    /// RFC 3339: the object's LastModified (created), or when the removal
    /// was noticed.
    pub time: String,
}

/// The notification for `change`, event number `seq` of configuration `src`.
pub fn notification(bucket: &str, region: &str, src: &str, change: &Change, seq: u64) -> Value {
    let name = match change.kind {
        Kind::Created => "ObjectCreated:Put",
        Kind::Removed => "ObjectRemoved:Delete",
    };
    json!({
        "Records": [{
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": region,
            "eventTime": change.time,
            "eventName": name,
            "userIdentity": {"principalId": ""},
            "requestParameters": {"sourceIPAddress": ""},
            "responseElements": {},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": src,
                "bucket": {
                    "name": bucket,
                    "ownerIdentity": {"principalId": ""},
                    "arn": format!("arn:aws:s3:::{bucket}"),
                },
                "object": {
                    "key": encode_key(&change.key),
                    "size": change.seen.size,
                    "eTag": change.seen.etag,
                    "sequencer": format!("{seq:016X}"),
                },
            },
        }]
    })
}

/// Keys are URL-encoded in notifications, as AWS does: unreserved characters
/// and `/` stay, a space is `+`, anything else is `%XX` of its UTF-8 bytes.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_as_aws_does() {
        assert_eq!(encode_key("up/a b+c.jpg"), "up/a+b%2Bc.jpg");
        assert_eq!(encode_key("é"), "%C3%A9");
    }

    #[test]
    fn a_record_carries_key_size_etag_time_and_order() {
        let c = Change {
            kind: Kind::Created,
            key: "k 1".into(),
            seen: Seen {
                etag: "abc".into(),
                size: 5,
            },
            time: "2026-11-30T00:00:00Z".into(),
        };
        let n = notification("bucket", "us-east-1", "cfg", &c, 10);
        let r = &n["Records"][0];
        assert_eq!(r["eventName"], "ObjectCreated:Put");
        assert_eq!(r["s3"]["object"]["key"], "k+1");
        assert_eq!(r["s3"]["object"]["size"], 5);
        assert_eq!(r["s3"]["object"]["eTag"], "abc");
        assert_eq!(r["s3"]["object"]["sequencer"], "000000000000000A");
        assert_eq!(r["s3"]["bucket"]["arn"], "arn:aws:s3:::bucket");
    }
}
