//! The subject an HTTP request is put on, as h8s maps it, so that responders
//! written for h8s work unchanged:
//! `{prefix}.{scheme}.{METHOD}.{host reversed by labels}.{path segments}`.
//! The host comes from `X-Forwarded-Host` when present, else `Host`, with the
//! port dropped; an IP address is not reversed and its `:` become `_`. The path
//! is percent-decoded and split on `/`, empty segments dropped, and `.` inside a
//! segment becomes `_`. Where h8s would put a character no NATS subject may
//! hold (white space, `*`, `>`), `_` goes instead, and a request for `/` ends
//! the subject at the host (h8s leaves a trailing `.`, which is not a subject).

use std::net::IpAddr;

/// A `Host` value without its port and the brackets of an IPv6 address.
pub fn bare_host(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    }
}

/// The host as a run of subject tokens.
pub fn host_tokens(host: &str) -> String {
    let bare = bare_host(host);
    if bare.parse::<IpAddr>().is_ok() {
        return token(&bare.replace(':', "_"));
    }
    let labels: Vec<String> = bare
        .to_ascii_lowercase()
        .split('.')
        .filter(|l| !l.is_empty())
        .map(token)
        .collect();
    labels.into_iter().rev().collect::<Vec<_>>().join(".")
}

/// The path as a run of subject tokens; empty for `/`.
pub fn path_tokens(path: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| token(&s.replace('.', "_")))
        .collect::<Vec<_>>()
        .join(".")
}

/// One subject token: characters a subject may not hold become `_`.
fn token(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_whitespace() || c == '*' || c == '>' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The whole subject of a request.
pub fn request_subject(prefix: &str, scheme: &str, method: &str, host: &str, path: &str) -> String {
    join(&[
        prefix,
        scheme,
        method,
        &host_tokens(host),
        &path_tokens(path),
    ])
}

/// The subject a WebSocket's frames are published on.
pub fn websocket_subject(prefix: &str, host: &str, path: &str) -> String {
    join(&[prefix, "ws", "ws", &host_tokens(host), &path_tokens(path)])
}

fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_reversed_by_label_and_ips_are_not() {
        assert_eq!(host_tokens("www.example.com"), "com.example.www");
        assert_eq!(host_tokens("www.example.com:8080"), "com.example.www");
        assert_eq!(host_tokens("127.0.0.1:9000"), "127.0.0.1");
        assert_eq!(host_tokens("[2001:db8::1]:443"), "2001_db8__1");
        assert_eq!(host_tokens("::1"), "__1");
        assert_eq!(host_tokens("Api.Example.COM"), "com.example.api");
    }

    #[test]
    fn paths_are_decoded_split_and_made_tokens() {
        assert_eq!(path_tokens("/"), "");
        assert_eq!(path_tokens("/api//v1.2/items"), "api.v1_2.items");
        assert_eq!(path_tokens("/a%2Fb/c%20d"), "a.b.c_d");
        assert_eq!(path_tokens("/x*y/>"), "x_y._");
    }

    #[test]
    fn whole_subjects_match_h8s() {
        assert_eq!(
            request_subject("h8s", "http", "GET", "www.example.com", "/api/v1.2/items"),
            "h8s.http.GET.com.example.www.api.v1_2.items"
        );
        assert_eq!(
            request_subject("h8s", "http", "POST", "example.com", "/"),
            "h8s.http.POST.com.example"
        );
        assert_eq!(
            websocket_subject("h8s", "chat.example.com", "/room/1"),
            "h8s.ws.ws.com.example.chat.room.1"
        );
    }
}
