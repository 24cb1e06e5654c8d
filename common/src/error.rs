//! The one place where failures become HTTP answers: a status code and a JSON body
//! `{"error": CODE, "detail": TEXT}`, plus `Retry-After` for backpressure. Both the
//! transformer and the processor-client answer through it.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Every error code an HTTP surface of the gateway answers with: the `error`
/// field of the JSON body, stable for clients to match on. Each code has one
/// status, so a code says all a metric or a client needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: the body is malformed or names nothing.
    BadRequest,
    /// 408: the body did not arrive within the listener's body timeout.
    RequestTimeout,
    /// 413: the body is over the size limit.
    TooLarge,
    /// 414: the request line is longer than the listener reads, or (the
    /// ingress) the path makes a NATS subject longer than a server takes.
    UriTooLong,
    /// 431: more request headers than the listener reads, or a head too long.
    HeadersTooLarge,
    /// 505: an HTTP/2 connection (prior knowledge) to a port that speaks
    /// HTTP/1.1; sent as the debug data of an HTTP/2 GOAWAY.
    Http2Unsupported,
    /// 502: a responder's reply cannot be an HTTP response (a 1xx status).
    BadReply,
    /// 415: a content type the endpoint does not take.
    UnsupportedMediaType,
    /// 401: a token is configured and the request did not carry it.
    Unauthorized,
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint exists, the method does not.
    MethodNotAllowed,
    /// 404: no configuration has this `src`.
    UnknownSrc,
    /// 410: the configuration was removed and is stopped.
    StoppedSrc,
    /// 409: a notice names an older value of the configuration.
    StaleId,
    /// 409: a dead letter's watcher is no longer configured.
    UnknownWatcher,
    /// 409: this replica does not hold the configuration (sharing).
    NotOwner,
    /// 409: a WebSocket with this `Sec-WebSocket-Key` is open (the ingress):
    /// the key names the connection's inbox, so two would share replies.
    KeyInUse,
    /// 404: no dead letter has this id.
    UnknownDeadLetter,
    /// 503: a queue or the memory budget is full.
    Backpressure,
    /// 503: the event store cannot write (a full disk, an I/O error).
    StoreUnavailable,
    /// 503: the transformer did not take the event.
    TransformerUnavailable,
    /// 503: the process is shutting down.
    ShuttingDown,
    /// 503: a dependency is not reachable yet (`/readyz`).
    NotReady,
    /// 503: every connection the listener allows is busy.
    TooManyConnections,
    /// 404: the ingress does not serve this host.
    UnknownHost,
    /// 503: nothing listens on the request's subject.
    NoResponders,
    /// 504: no reply came in time.
    ReplyTimeout,
    /// 503: NATS cannot be reached now.
    NatsUnavailable,
    /// 500: the event store failed to read.
    StoreError,
    /// 500: a fault of the gateway's own.
    Internal,
}

impl ErrorCode {
    /// Every code, for reading one back from an answer ([`ErrorCode::parse`]).
    pub const ALL: [ErrorCode; 30] = [
        ErrorCode::BadRequest,
        ErrorCode::RequestTimeout,
        ErrorCode::TooLarge,
        ErrorCode::UriTooLong,
        ErrorCode::HeadersTooLarge,
        ErrorCode::Http2Unsupported,
        ErrorCode::BadReply,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UnknownSrc,
        ErrorCode::StoppedSrc,
        ErrorCode::StaleId,
        ErrorCode::UnknownWatcher,
        ErrorCode::NotOwner,
        ErrorCode::KeyInUse,
        ErrorCode::UnknownDeadLetter,
        ErrorCode::Backpressure,
        ErrorCode::StoreUnavailable,
        ErrorCode::TransformerUnavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::NotReady,
        ErrorCode::TooManyConnections,
        ErrorCode::UnknownHost,
        ErrorCode::NoResponders,
        ErrorCode::ReplyTimeout,
        ErrorCode::NatsUnavailable,
        ErrorCode::StoreError,
        ErrorCode::Internal,
    ];

    /// The code a JSON error answer names in its `error` field, when it is
    /// one of this gateway's: a client of another of its services (the
    /// processor-client of the transformer) matches on the code, not on the
    /// status, which several codes share.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// The code of a JSON error body `{"error": CODE, ...}`, if it has one.
    pub fn of_body(body: &[u8]) -> Option<ErrorCode> {
        #[derive(serde::Deserialize)]
        struct Named<'a> {
            #[serde(borrow)]
            error: Option<std::borrow::Cow<'a, str>>,
        }
        let named: Named = serde_json::from_slice(body).ok()?;
        ErrorCode::parse(named.error.as_deref()?)
    }

    /// The code as clients see it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::Http2Unsupported => "http2_unsupported",
            ErrorCode::BadReply => "bad_reply",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnknownSrc => "unknown_src",
            ErrorCode::StoppedSrc => "stopped_src",
            ErrorCode::StaleId => "stale_id",
            ErrorCode::UnknownWatcher => "unknown_watcher",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::KeyInUse => "key_in_use",
            ErrorCode::UnknownDeadLetter => "unknown_dead_letter",
            ErrorCode::Backpressure => "backpressure",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::TransformerUnavailable => "transformer_unavailable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::UnknownHost => "unknown_host",
            ErrorCode::NoResponders => "no_responders",
            ErrorCode::ReplyTimeout => "timeout",
            ErrorCode::NatsUnavailable => "nats_unavailable",
            ErrorCode::StoreError => "store_error",
            ErrorCode::Internal => "internal",
        }
    }

    pub const fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::Http2Unsupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ErrorCode::BadReply => StatusCode::BAD_GATEWAY,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound
            | ErrorCode::UnknownSrc
            | ErrorCode::UnknownDeadLetter
            | ErrorCode::UnknownHost => StatusCode::NOT_FOUND,
            ErrorCode::ReplyTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::StoppedSrc => StatusCode::GONE,
            ErrorCode::StaleId
            | ErrorCode::UnknownWatcher
            | ErrorCode::NotOwner
            | ErrorCode::KeyInUse => StatusCode::CONFLICT,
            ErrorCode::Backpressure
            | ErrorCode::StoreUnavailable
            | ErrorCode::TransformerUnavailable
            | ErrorCode::ShuttingDown
            | ErrorCode::NotReady
            | ErrorCode::TooManyConnections
            | ErrorCode::NoResponders
            | ErrorCode::NatsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreError | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error a request body gives when it has not fully arrived within the
/// listener's body timeout (the server's body wrapper raises it);
/// [`ApiError::from_body`] answers it with 408. Here, with the answers, so that
/// the listener depends on this module and not the other way round.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub std::time::Duration);

/// A failure as an HTTP answer: the code (which fixes the status), a detail for
/// humans, and for 503s how long to wait.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError {
            code,
            detail: detail.into(),
            retry_after_secs: code
                .status()
                .eq(&StatusCode::SERVICE_UNAVAILABLE)
                .then_some(1),
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, detail)
    }
    /// 503 `shutting_down`, the one answer of a process that is stopping.
    pub fn shutting_down(component: &str) -> Self {
        Self::new(
            ErrorCode::ShuttingDown,
            format!("the {component} is shutting down"),
        )
    }
    /// A 503 whose `Retry-After` is not the default second.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
    /// Body-reading failures: 413 past the limit, 408 when the body did not
    /// arrive in time (the listener's body timeout), 400 otherwise.
    pub fn from_body(rejection: BytesRejection, limit: usize) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
        while let Some(e) = cause {
            if let Some(timed_out) = e.downcast_ref::<BodyTimedOut>() {
                return Self::new(ErrorCode::RequestTimeout, timed_out.to_string());
            }
            cause = e.source();
        }
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                ErrorCode::TooLarge,
                format!("request body exceeds the limit of {limit} bytes"),
            )
        } else {
            Self::bad_request(rejection.body_text())
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status().as_u16(),
            self.code,
            self.detail
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.code.as_str(), "detail": self.detail }));
        let mut response = (self.status(), body).into_response();
        if let Some(secs) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// JSON 404 for any path no route serves.
pub async fn not_found_fallback(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no such endpoint: {}", uri.path()),
    )
}

/// JSON 405 for a known path with the wrong method.
pub async fn method_not_allowed_fallback(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// reqwest's top-level message hides the cause ("error sending request"); the
/// chain says "connection refused", which is what an operator needs. A cause
/// whose text the message already holds (the gateway's own errors carry
/// their causes, `"...: {source}"`) is not said again.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !out.contains(&said) {
            out.push_str(": ");
            out.push_str(&said);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case_and_every_503_says_when_to_retry() {
        const ALL: [ErrorCode; 30] = ErrorCode::ALL;
        let names: std::collections::HashSet<&str> = ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ALL.len());
        for code in ALL {
            let name = code.as_str();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
            let e = ApiError::new(code, "x");
            let unavailable = code.status() == StatusCode::SERVICE_UNAVAILABLE;
            assert_eq!(e.retry_after_secs.is_some(), unavailable, "{name}");
            let response = e.into_response();
            assert_eq!(response.status(), code.status());
            assert_eq!(
                response.headers().contains_key(header::RETRY_AFTER),
                unavailable,
                "{name}"
            );
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("GATEWAY_X /nowhere: {0}")]
    struct Carries(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Terse(#[source] std::io::Error);

    #[test]
    fn a_cause_is_said_once() {
        let e = Carries(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(error_chain(&e), "GATEWAY_X /nowhere: entity not found");
        let e = Terse(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(error_chain(&e), "cannot start: entity not found");
    }

    #[test]
    fn a_code_reads_back_from_its_name_and_from_an_answer() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
        let body = br#"{"error":"not_owner","detail":"elsewhere"}"#;
        assert_eq!(ErrorCode::of_body(body), Some(ErrorCode::NotOwner));
        assert_eq!(ErrorCode::of_body(b"<html>"), None);
        assert_eq!(ErrorCode::of_body(br#"{"error":7}"#), None);
    }

    #[test]
    fn shutting_down_names_the_component() {
        let e = ApiError::shutting_down("transformer");
        assert_eq!(e.code, ErrorCode::ShuttingDown);
        assert_eq!(e.detail, "the transformer is shutting down");
    }
}
