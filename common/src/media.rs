//! Media types as requests name them. Both the processor-client (which body
//! form a user server sent) and the transformer (whether a CloudEvent's data
//! is JSON or text) compare types without their parameters or case.

/// A media type without its parameters, lower-cased: `text/plain` of
/// `Text/Plain; charset=utf-8`.
pub fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parameters_and_case_go() {
        assert_eq!(super::essence("Text/Plain; charset=utf-8"), "text/plain");
        assert_eq!(super::essence(" application/json "), "application/json");
        assert_eq!(super::essence(""), "");
    }
}
