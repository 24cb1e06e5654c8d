//! Request bodies sent compressed. Producers such as log shippers and
//! OpenTelemetry exporters gzip what they post, with `Content-Encoding: gzip`;
//! read as it came, such a body was answered "the body is not a JSON object",
//! which sent their authors looking for a fault in their JSON. Here a body in
//! `gzip` or `deflate` is decoded, with the decoded size held to the same limit
//! as an uncompressed body (so a small bomb cannot fill memory), and any other
//! coding is answered 415 naming it and the codings taken.
//!
//! The decoding is done on the buffered body in the handler's read of it, not by
//! a middleware: a middleware costs every request (boxing and cloning the inner
//! service), and almost no request is compressed.

use std::io::Read;

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap};
use bytes::Bytes;

use crate::error::{ApiError, ErrorCode};

/// The codings a body may come in, as an `Accept-Encoding` value would list them.
pub const ACCEPTED: &str = "gzip, deflate";

/// A request body, read within `limit` bytes and decoded from its
/// `Content-Encoding`: the read's refusal (413, 408, ...) as
/// [`ApiError::from_body`] answers it; 415 for a coding not taken; 400 for a
/// body that is not what its coding says; 413 when it decodes to more than `limit`.
pub fn read_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let body = body.map_err(|r| ApiError::from_body(r, limit))?;
    let Some(coding) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let coding = coding.to_str().unwrap_or("?").trim().to_ascii_lowercase();
    match coding.as_str() {
        "" | "identity" => Ok(body),
        // RFC 9110 8.4.1.3: x-gzip is gzip.
        "gzip" | "x-gzip" => decode(flate2::read::MultiGzDecoder::new(&body[..]), "gzip", limit),
        // HTTP's "deflate" is the zlib format; some clients send raw deflate.
        "deflate" => match decode(flate2::read::ZlibDecoder::new(&body[..]), "deflate", limit) {
            Err(e) if e.code == ErrorCode::BadRequest => {
                decode(flate2::read::DeflateDecoder::new(&body[..]), "deflate", limit)
            }
            decoded => decoded,
        },
        other => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "Content-Encoding {other:?} is not taken: send the body uncompressed, or in one of: {ACCEPTED}"
            ),
        )),
    }
}

/// Decodes all of `reader`, refusing once it passes `limit` bytes.
fn decode(reader: impl Read, coding: &str, limit: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(cap).read_to_end(&mut out).map_err(|e| {
        ApiError::bad_request(format!(
            "the body says Content-Encoding {coding} but does not decode as {coding}: {e}"
        ))
    })?;
    if out.len() > limit {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("request body, decoded from {coding}, exceeds the limit of {limit} bytes"),
        ));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use axum::http::HeaderValue;

    use super::*;

    fn with(coding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_str(coding).unwrap(),
        );
        h
    }

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    #[test]
    fn plain_bodies_pass_as_they_came() {
        let body = Bytes::from_static(b"{\"src\":\"a\"}");
        assert_eq!(
            read_body(&HeaderMap::new(), Ok(body.clone()), 100).unwrap(),
            body
        );
        assert_eq!(
            read_body(&with("identity"), Ok(body.clone()), 100).unwrap(),
            body
        );
    }

    #[test]
    fn gzip_and_deflate_are_decoded() {
        let json = b"{\"src\":\"a\",\"payload\":\"aGk=\"}";
        for coding in ["gzip", "GZip", "x-gzip"] {
            assert_eq!(
                read_body(&with(coding), Ok(gzip(json)), 100).unwrap(),
                &json[..]
            );
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(json).unwrap();
        let zlib = Bytes::from(z.finish().unwrap());
        assert_eq!(
            read_body(&with("deflate"), Ok(zlib), 100).unwrap(),
            &json[..]
        );
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(json).unwrap();
        let raw = Bytes::from(d.finish().unwrap());
        assert_eq!(
            read_body(&with("deflate"), Ok(raw), 100).unwrap(),
            &json[..]
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![b' '; 10 << 20]);
        assert!(bomb.len() < 20_000);
        let e = read_body(&with("gzip"), Ok(bomb), 1 << 20).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(e.detail.contains("decoded from gzip"), "{}", e.detail);
    }

    #[test]
    fn a_body_that_is_not_its_coding_or_an_unknown_coding_is_named() {
        let e = read_body(&with("gzip"), Ok(Bytes::from_static(b"{}")), 100).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.detail.contains("does not decode as gzip"), "{}", e.detail);
        let e = read_body(&with("br"), Ok(Bytes::from_static(b"x")), 100).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedMediaType);
        assert!(
            e.detail.contains("\"br\"") && e.detail.contains(ACCEPTED),
            "{}",
            e.detail
        );
        let e = read_body(&with("gzip, gzip"), Ok(Bytes::from_static(b"x")), 100).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedMediaType);
    }
}
