//! Optional bearer-token access control, shared by both services: when a token is
//! configured, every endpoint but health, readiness and metrics wants
//! `Authorization: Bearer TOKEN`, and anything else gets 401 with a JSON error
//! before its body is read, so nothing unauthenticated is ever dispatched.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorCode};

/// Paths that stay open: probes and scrapes come from the platform, not from
/// producers.
const OPEN: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The expected token, if any; `None` leaves every endpoint open.
#[derive(Clone, Default)]
pub struct Bearer(pub Option<Arc<str>>);

/// Puts `router` behind the token when one is configured. Without one the
/// router is returned as it is: the middleware would let every request through
/// anyway, and it boxes and clones the inner service on each request, which
/// profiles of the event path showed (~1% of each process).
pub fn guard(router: axum::Router, bearer: Bearer) -> axum::Router {
    match bearer.0 {
        Some(token) => router.layer(axum::middleware::from_fn_with_state(token, require)),
        None => router,
    }
}

/// The middleware [`guard`] adds, holding the expected token.
async fn require(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    if OPEN.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => next.run(request).await,
        Some(_) => unauthorized("the bearer token is wrong"),
        None => unauthorized("this endpoint wants an Authorization: Bearer token"),
    }
}

fn unauthorized(detail: &str) -> Response {
    let mut response = ApiError::new(ErrorCode::Unauthorized, detail).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_equal() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
    }
}
