//! Configuration identity: the contract's `id` (FNV-32a of key then value, decimal)
//! and a `timeID` that is fresh for every start.

use std::sync::Mutex;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// FNV-1a, 32 bits, over the key's bytes followed by the value's, in decimal.
pub fn config_id(src: &str, config: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for b in src.bytes().chain(config.bytes()) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.to_string()
}

static LAST_NANOS: Mutex<i128> = Mutex::new(0);

/// An RFC 3339 timestamp with nanoseconds, strictly increasing within the process, so
/// two starts never share a `timeID` even within one clock tick.
pub fn time_id() -> String {
    let now = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let nanos = {
        let mut last = LAST_NANOS.lock().unwrap_or_else(|p| p.into_inner());
        *last = now.max(*last + 1);
        *last
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| nanos.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv32a_reference_vectors() {
        assert_eq!(config_id("", ""), "2166136261");
        assert_eq!(config_id("a", ""), "3826002220");
        assert_eq!(config_id("foo", "bar"), "3214735720");
        assert_eq!(config_id("foobar", ""), config_id("foo", "bar"));
    }

    #[test]
    fn time_ids_are_unique_and_ordered() {
        let ids: Vec<String> = (0..1000).map(|_| time_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(OffsetDateTime::parse(&ids[0], &Rfc3339).is_ok());
    }
}
