//! The one place where failures become HTTP answers: a status code and a JSON body
//! `{"error": CODE, "detail": TEXT}`, plus `Retry-After` for backpressure. Both the
//! transformer and the processor-client answer through it.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// A short machine-readable code, e.g. `bad_request`, `unknown_src`.
    pub error: &'static str,
    pub detail: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
            retry_after_secs: None,
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }
    pub fn not_found(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error, detail)
    }
    /// 503 with `Retry-After`: the caller should try the same request again later.
    pub fn unavailable(
        error: &'static str,
        detail: impl Into<String>,
        retry_after_secs: u64,
    ) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, error, detail)
        }
    }
    /// Body-reading failures: 413 past the limit, 408 when the body did not
    /// arrive in time (the listener's body timeout), 400 otherwise.
    pub fn from_body(rejection: BytesRejection, limit: usize) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
        while let Some(e) = cause {
            if let Some(timed_out) = e.downcast_ref::<crate::server::BodyTimedOut>() {
                return Self::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    timed_out.to_string(),
                );
            }
            cause = e.source();
        }
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body exceeds the limit of {limit} bytes"),
            )
        } else {
            Self::new(rejection.status(), "bad_request", rejection.body_text())
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.error,
            self.detail
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.error, "detail": self.detail }));
        let mut response = (self.status, body).into_response();
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
    ApiError::not_found("not_found", format!("no such endpoint: {}", uri.path()))
}

/// JSON 405 for a known path with the wrong method.
pub async fn method_not_allowed_fallback(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// reqwest's top-level message hides the cause ("error sending request"); the
/// chain says "connection refused", which is what an operator needs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
