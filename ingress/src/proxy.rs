//! One HTTP request as one NATS request: the subject from the host and path,
//! every request header as a NATS header plus `X-H8S-PublishSubject`, the body
//! as the data, a reply subject under the inbox prefix. The reply's headers and
//! data are the response; its status is the reply's `X-H8S-Status`, else 200.
//! Where h8s answers every failure 504 after the whole timeout, here each gets
//! its own answer at once: 404 for a host not served, 413 for a body over the
//! limit, 503 when nothing listens on the subject or NATS is away, 504 only
//! when a responder did not answer in time.

use std::sync::Arc;
use std::time::Instant;

use async_nats::client::RequestErrorKind;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;

use crate::metrics::StatusLabel;
use crate::state::AppState;
use crate::subject;
use gateway_common::error::{ApiError, ErrorCode};
use gateway_common::nats::{max_subject_len, request_reply_len};

/// The header that carries the status of a reply.
const STATUS_HEADER: &str = "X-H8S-Status";
/// The header that tells a responder the subject the request was put on.
const SUBJECT_HEADER: &str = "X-H8S-PublishSubject";
/// The header that carries the request's path and query as the client sent
/// them: the subject keeps neither the query nor the path's exact spelling.
const TARGET_HEADER: &str = "X-H8S-Request-URI";
/// The headers that are the ingress's to set: a client's own copies are
/// dropped, in any case, so a case-insensitive responder cannot read them.
const OWN_HEADERS: [&str; 2] = [SUBJECT_HEADER, TARGET_HEADER];
/// Reply headers that describe one hop, not the response: hyper sets its own.
const HOP_BY_HOP: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "proxy-connection",
    "te",
    "trailer",
];

/// Every path and method goes to NATS.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .fallback(proxy)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn proxy(
    State(st): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Ok(upgrade) = upgrade {
        return websocket(st, upgrade, uri, headers);
    }
    let started = Instant::now();
    let response = match forward(&st, &method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    st.metrics
        .requests
        .get_or_create(&StatusLabel {
            status: response.status().as_u16(),
        })
        .inc();
    st.metrics.latency.observe(started.elapsed().as_secs_f64());
    response
}

/// An upgrade to a WebSocket, on any path of a host served.
fn websocket(
    st: Arc<AppState>,
    upgrade: WebSocketUpgrade,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let host = host_of(&headers, &uri).to_owned();
    if !st.config.hosts.serves(&host) {
        return ApiError::new(
            ErrorCode::UnknownHost,
            format!("this ingress does not serve host {host:?}"),
        )
        .into_response();
    }
    if st.client.connection_state() != async_nats::connection::State::Connected {
        return ApiError::new(
            ErrorCode::NatsUnavailable,
            "NATS cannot be reached now; retry later",
        )
        .into_response();
    }
    // The key becomes the last token of the connection's inbox: anything but
    // what RFC 6455 allows (16 bytes in base64) could be a wildcard, such as
    // `>`, subscribing this client to every other connection's replies.
    let Some(key) = websocket_key(&headers) else {
        return ApiError::bad_request(
            "Sec-WebSocket-Key must be 16 bytes in base64, as RFC 6455 says",
        )
        .into_response();
    };
    let inbox = format!("{}.{key}", st.config.inbox_prefix);
    let publish = subject::websocket_subject(&st.config.subject_prefix, &host, uri.path());
    if let Err(e) = check_subject(&publish, inbox.len()) {
        return e.into_response();
    }
    let Some(inbox) = crate::inbox::Inbox::claim(&st.inboxes, inbox) else {
        return ApiError::new(
            ErrorCode::KeyInUse,
            "a WebSocket with this Sec-WebSocket-Key is open, and the key names its inbox: \
             each connection needs a fresh random key, as RFC 6455 says",
        )
        .into_response();
    };
    let shutdown = st.shutdown.clone();
    let limit = st.config.max_body_bytes;
    let headers = nats_headers(&headers, &publish, &uri);
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| crate::ws::session(socket, st, headers, inbox, publish, shutdown))
}

/// The upgrade's `Sec-WebSocket-Key`, if it is what RFC 6455 asks for: 16
/// bytes in base64 (24 characters, none of them a subject wildcard or dot).
fn websocket_key(headers: &HeaderMap) -> Option<&str> {
    use base64::Engine as _;
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?.to_str().ok()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
    (bytes.len() == 16).then_some(key)
}

/// The host a request is for: `X-Forwarded-Host` when a proxy set it, else `Host`.
fn host_of<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> &'a str {
    headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .map(|h| h.split(',').next().unwrap_or(h).trim())
        .or_else(|| uri.host())
        .unwrap_or("")
}

/// A request's headers as NATS headers (names as Go writes them), plus the
/// subject they are published on, which is what h8s hands its responders,
/// and the request's path and query as sent (`X-H8S-Request-URI`), which h8s
/// drops: without it a responder could not see `?q=…`.
pub(crate) fn nats_headers(headers: &HeaderMap, subject: &str, uri: &Uri) -> async_nats::HeaderMap {
    let mut out = async_nats::HeaderMap::new();
    for (name, value) in headers {
        if OWN_HEADERS
            .iter()
            .any(|h| name.as_str().eq_ignore_ascii_case(h))
        {
            continue;
        }
        // UTF-8 too, not only visible ASCII (`to_str`): clients send names
        // and places as they are. Bytes that are not UTF-8 cannot be a NATS
        // header value here, and that header is left out.
        if let Ok(value) = std::str::from_utf8(value.as_bytes()) {
            // Handed over whole: async-nats keeps the String, not a copy.
            out.append(canonical(name.as_str()), value);
        }
    }
    out.insert(SUBJECT_HEADER, subject);
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    out.insert(TARGET_HEADER, target);
    out
}

async fn forward(
    st: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let host = host_of(headers, uri);
    if !st.config.hosts.serves(host) {
        return Err(ApiError::new(
            ErrorCode::UnknownHost,
            format!("this ingress does not serve host {host:?}"),
        ));
    }
    let body = body.map_err(|r| ApiError::from_body(r, st.config.max_body_bytes))?;
    if st.client.connection_state() != async_nats::connection::State::Connected {
        return Err(ApiError::new(
            ErrorCode::NatsUnavailable,
            "NATS cannot be reached now; retry later",
        ));
    }
    let subject = subject::request_subject(
        &st.config.subject_prefix,
        "http",
        method.as_str(),
        host,
        uri.path(),
    );
    check_subject(&subject, request_reply_len(&st.config.inbox_prefix))?;
    let nats_headers = nats_headers(headers, &subject, uri);
    let request = async_nats::Request::new()
        .headers(nats_headers)
        .payload(body)
        .timeout(Some(st.config.request_timeout));
    // A request in flight when the connection drops gets no reply: answer at
    // once rather than at the timeout.
    let sending = st.client.send_request(subject.clone(), request);
    let Some(sent) = st.metrics.nats.unless_lost(sending).await else {
        return Err(ApiError::new(
            ErrorCode::NatsUnavailable,
            format!("the NATS connection was lost while waiting for the reply on {subject}; retry"),
        ));
    };
    let reply = match sent {
        Ok(reply) => reply,
        Err(e) => {
            let (code, detail) = match e.kind() {
                RequestErrorKind::NoResponders => (
                    ErrorCode::NoResponders,
                    format!("nothing listens on {subject}"),
                ),
                RequestErrorKind::MaxPayloadExceeded => (
                    ErrorCode::TooLarge,
                    format!(
                        "the body with its headers is more than the {} bytes NATS takes in one message",
                        st.client.max_payload()
                    ),
                ),
                RequestErrorKind::TimedOut => (
                    ErrorCode::ReplyTimeout,
                    format!(
                        "no reply on {subject} within {:?}",
                        st.config.request_timeout
                    ),
                ),
                _ => (ErrorCode::NatsUnavailable, format!("NATS: {e}")),
            };
            return Err(ApiError::new(code, detail));
        }
    };
    response_of(reply)
}

/// Refuses a subject that, with its reply subject, would not fit on one NATS
/// protocol line: the server would close the connection, and every request in
/// flight on it would fail with this one.
pub(crate) fn check_subject(subject: &str, reply_len: usize) -> Result<(), ApiError> {
    let max = max_subject_len(reply_len);
    if subject.len() > max {
        return Err(ApiError::new(
            ErrorCode::UriTooLong,
            format!(
                "host and path make a NATS subject of {} bytes; at most {max} fit",
                subject.len()
            ),
        ));
    }
    Ok(())
}

/// A header name as Go's `net/http` writes it (`X-Custom`, `Content-Type`),
/// which is how h8s hands headers to its responders; HTTP/1.1 parsers give
/// them lower-cased.
fn canonical(name: &str) -> String {
    // Sized once: collecting chars would grow the string as it goes, and this
    // runs for every header of every request.
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// The reply as an HTTP response. A status that cannot end an HTTP exchange
/// (1xx: hyper would answer 500 for 100, and send a bare 101 as if the
/// connection were upgraded) is the responder's mistake: 502.
fn response_of(reply: async_nats::Message) -> Result<Response, ApiError> {
    let mut status = StatusCode::OK;
    let mut response = Response::new(Body::from(reply.payload));
    if let Some(nats_headers) = &reply.headers {
        for (name, values) in nats_headers.iter() {
            let name: &str = name.as_ref();
            if name.eq_ignore_ascii_case(STATUS_HEADER) {
                if let Some(s) = values
                    .first()
                    .and_then(|v| v.as_str().trim().parse::<u16>().ok())
                    .and_then(|s| StatusCode::from_u16(s).ok())
                {
                    if s.is_informational() {
                        return Err(ApiError::new(
                            ErrorCode::BadReply,
                            format!(
                                "the responder's {STATUS_HEADER} {} is not a final status",
                                s.as_u16()
                            ),
                        ));
                    }
                    status = s;
                }
                continue;
            }
            let hop_by_hop = HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h));
            let Ok(header_name) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            if hop_by_hop {
                continue;
            }
            for value in values {
                if let Ok(v) = HeaderValue::from_str(value.as_str()) {
                    response.headers_mut().append(header_name.clone(), v);
                }
            }
        }
    }
    *response.status_mut() = status;
    Ok(response)
}

pub async fn readyz(
    State(st): State<Arc<AppState>>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if st.client.connection_state() == async_nats::connection::State::Connected {
        Ok(axum::Json(serde_json::json!({ "status": "ready" })))
    } else {
        Err(ApiError::new(ErrorCode::NotReady, "not connected to NATS"))
    }
}

pub async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, gateway_common::metrics::CONTENT_TYPE)],
        st.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_canonical_as_in_go() {
        assert_eq!(canonical("x-custom"), "X-Custom");
        assert_eq!(canonical("content-type"), "Content-Type");
        assert_eq!(canonical("x-h8s-publishsubject"), "X-H8s-Publishsubject");
        assert_eq!(canonical("sec-websocket-key"), "Sec-Websocket-Key");
    }

    #[test]
    fn a_client_cannot_set_the_subject_header() {
        let mut h = HeaderMap::new();
        h.insert("x-h8s-publishsubject", HeaderValue::from_static("spoofed"));
        h.insert("x-h8s-request-uri", HeaderValue::from_static("/spoofed"));
        h.insert("x-custom", HeaderValue::from_static("kept"));
        let uri: Uri = "/search/a.b?q=x%20y&n=1".parse().unwrap();
        let out = nats_headers(&h, "h8s.http.GET.com.example", &uri);
        // Every value under `name`, in any case.
        let values = |name: &str| -> Vec<String> {
            out.iter()
                .filter(|(n, _)| {
                    let n: &str = n.as_ref();
                    n.eq_ignore_ascii_case(name)
                })
                .flat_map(|(_, values)| values.iter().map(|v| v.as_str().to_owned()))
                .collect()
        };
        assert_eq!(values(SUBJECT_HEADER), ["h8s.http.GET.com.example"]);
        assert_eq!(out.get("X-Custom").map(|v| v.as_str()), Some("kept"));
        let targets = values(TARGET_HEADER);
        assert_eq!(targets, ["/search/a.b?q=x%20y&n=1"]);
    }

    #[test]
    fn websocket_keys_must_be_sixteen_bytes_in_base64() {
        let key = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_str(v).unwrap());
            websocket_key(&h).is_some()
        };
        assert!(key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!key(">"));
        assert!(!key("*"));
        assert!(!key("a.b"));
        assert!(!key("dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(websocket_key(&HeaderMap::new()).is_none());
    }
}
