//! A request hyper cannot parse (a malformed request line or header, more
//! headers than it reads, a request line or head too long) never reaches the
//! service: hyper answers it itself, 400, 431 or 414, with an empty body, and
//! closes. hyper has no hook for that answer, so the socket ([`super::socket`])
//! recognises it by its exact shape, written when no response is due, and
//! sends this module's JSON error in its place, as every other error of the
//! gateway is sent.
//!
//! A client that speaks HTTP/2 with prior knowledge (`curl
//! --http2-prior-knowledge`, an h2c proxy) opens with the HTTP/2 preface,
//! which hyper's HTTP/1 reader refuses without a word. Such a connection gets
//! the answer HTTP/2 has for it ([`goaway`]): a GOAWAY with the error
//! HTTP_1_1_REQUIRED, whose debug data is the same JSON error.

use crate::error::ErrorCode;

/// The most request headers hyper reads (its default); one more is a 431.
const MAX_HEADERS: usize = 100;

/// The longest request head (request line and headers) read, in bytes; a
/// longer one is a 431. Set on hyper's builder: without it hyper stops at its
/// read buffer's size (about 400 KiB) only when a head has not arrived whole
/// by then, so a larger one that arrived in one read was taken, depending on
/// timing.
pub(super) const MAX_HEAD_BYTES: usize = 400 * 1024;

/// The JSON error to send in place of hyper's own `head`, or `None` when the
/// head is not one of hyper's answers to an unparsable request.
pub(super) fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let rest = text.strip_prefix("HTTP/1.1 ")?;
    let (status_line, rest) = rest.split_once("\r\n")?;
    let (code, detail) = match status_line {
        "400 Bad Request" => (
            ErrorCode::BadRequest,
            "the request could not be parsed: a malformed request line, header or Content-Length"
                .to_owned(),
        ),
        "414 URI Too Long" => (
            ErrorCode::UriTooLong,
            "the request line is longer than this server reads".to_owned(),
        ),
        "431 Request Header Fields Too Large" => (
            ErrorCode::HeadersTooLarge,
            format!(
                "the request has more than {MAX_HEADERS} headers, or its head is over {} KiB",
                MAX_HEAD_BYTES / 1024
            ),
        ),
        _ => return None,
    };
    // Exactly what hyper writes: these three headers, no body.
    let headers = rest.strip_suffix("\r\n\r\n")?;
    let mut seen = [false; 3];
    for line in headers.split("\r\n") {
        let (name, value) = line.split_once(": ")?;
        let slot = match (name, value) {
            ("connection", "close") => 0,
            ("content-length", "0") => 1,
            ("date", _) => 2,
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    if !seen[0] || !seen[1] {
        return None;
    }
    let body = serde_json::json!({ "error": code.as_str(), "detail": detail }).to_string();
    Some(
        format!(
            "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// The start of the HTTP/2 connection preface (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Whether a connection's first bytes are the HTTP/2 preface.
pub(super) fn is_h2_preface(first: &[u8]) -> bool {
    first.starts_with(H2_PREFACE)
}

/// HTTP/2's answer to a client that must use HTTP/1.1: the server's
/// (empty) SETTINGS, which must open its side of the connection, then a
/// GOAWAY with the error HTTP_1_1_REQUIRED and a JSON error as debug data.
pub(super) fn goaway() -> Vec<u8> {
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const HTTP_1_1_REQUIRED: u32 = 0xd;
    let detail =
        "this port speaks HTTP/1.1 only; send HTTP/1.1 requests, not HTTP/2 with prior knowledge";
    let debug = serde_json::json!({
        "error": ErrorCode::Http2Unsupported.as_str(),
        "detail": detail,
    })
    .to_string();
    let frame = |ty: u8, payload: &[u8]| {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[ty, 0, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    };
    let mut payload = 0u32.to_be_bytes().to_vec(); // the last stream: none
    payload.extend_from_slice(&HTTP_1_1_REQUIRED.to_be_bytes());
    payload.extend_from_slice(debug.as_bytes());
    let mut out = frame(SETTINGS, &[]);
    out.extend(frame(GOAWAY, &payload));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(answer: &[u8]) -> serde_json::Value {
        let text = std::str::from_utf8(answer).expect("utf-8");
        let (_, body) = text.split_once("\r\n\r\n").expect("head and body");
        serde_json::from_str(body).expect("JSON")
    }

    #[test]
    fn hypers_own_answers_become_json_errors() {
        for (status, code) in [
            ("400 Bad Request", "bad_request"),
            ("414 URI Too Long", "uri_too_long"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
        ] {
            let head = format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 21:05:10 GMT\r\n\r\n");
            let answer = rewrite(head.as_bytes()).expect("rewritten");
            let text = String::from_utf8_lossy(&answer);
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{text}"
            );
            assert!(
                text.contains("content-type: application/json\r\n"),
                "{text}"
            );
            let body = body_of(&answer);
            assert_eq!(body["error"], code);
            assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
            let length: usize = text
                .split("content-length: ")
                .nth(1)
                .and_then(|t| t.split("\r\n").next())
                .and_then(|n| n.parse().ok())
                .expect("content-length");
            assert_eq!(length, body.to_string().len());
        }
    }

    #[test]
    fn an_http2_client_is_told_to_use_http1_with_a_json_error() {
        assert!(is_h2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!is_h2_preface(b"PRIVATE / HTTP/1.1\r\n"));
        let out = goaway();
        // SETTINGS: length 0, type 4, no flags, stream 0.
        assert_eq!(&out[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let goaway = &out[9..];
        let len = u32::from_be_bytes([0, goaway[0], goaway[1], goaway[2]]) as usize;
        assert_eq!(goaway[3], 7);
        assert_eq!(&goaway[5..9], &[0, 0, 0, 0]);
        assert_eq!(goaway.len(), 9 + len);
        assert_eq!(&goaway[9..17], &[0, 0, 0, 0, 0, 0, 0, 0xd]);
        let body: serde_json::Value = serde_json::from_slice(&goaway[17..]).expect("JSON");
        assert_eq!(body["error"], "http2_unsupported");
    }

    #[test]
    fn anything_else_is_left_alone() {
        for head in [
            // A responder's own empty 400, with a header of its own.
            "HTTP/1.1 400 Bad Request\r\nx-reply: yes\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            // An empty 400 that keeps the connection.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            // With a body.
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
            "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        ] {
            assert_eq!(rewrite(head.as_bytes()), None, "{head}");
        }
    }
}
