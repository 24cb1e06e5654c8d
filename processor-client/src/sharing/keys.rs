//! The bucket's keys: `replicas.ID` for each live replica, and a claim per
//! configuration, `claims.k.KEY` when the configuration's key is a valid
//! bucket key and `claims.x.HEX` otherwise (`claims.e` for the empty key).

pub(super) const REPLICAS: &str = "replicas.";
pub(super) const CLAIMS: &str = "claims.";

/// The bucket key of a configuration's claim. Keys that are valid bucket keys
/// go as they are (`claims.k.KEY`); any other is hex-encoded (`claims.x.HEX`).
pub(super) fn claim_key(src: &str) -> String {
    let token = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '='))
    };
    if src.split('.').all(token) {
        format!("{CLAIMS}k.{src}")
    } else if src.is_empty() {
        format!("{CLAIMS}e")
    } else {
        let hex: String = src.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{CLAIMS}x.{hex}")
    }
}

/// The configuration a claim key names.
pub(super) fn src_of(key: &str) -> Option<String> {
    let rest = key.strip_prefix(CLAIMS)?;
    if rest == "e" {
        return Some(String::new());
    }
    if let Some(plain) = rest.strip_prefix("k.") {
        return Some(plain.to_owned());
    }
    let hex = rest.strip_prefix("x.")?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharing::bucket_name;

    #[test]
    fn claim_keys_round_trip_for_any_configuration_key() {
        for src in [
            "alpha",
            "webhook.foo",
            "a_b-c=d",
            "with space",
            "ünï",
            "a..b",
            ".x",
            "",
        ] {
            let key = claim_key(src);
            assert!(key.starts_with(CLAIMS));
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=./".contains(c)),
                "{key}"
            );
            assert!(!key.contains(".."), "{key}");
            assert_eq!(src_of(&key).as_deref(), Some(src), "{key}");
        }
        assert_eq!(bucket_name("default", "my gw"), "gateway_default_my_gw");
    }
}
