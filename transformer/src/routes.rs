//! The transformer's HTTP surface: `POST /` takes `{src, payload}` from the
//! processor-client and framework-independent producers, or a CloudEvent in binary
//! or structured mode from another gateway; plus health, readiness and metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;

use crate::cloudevent::{CloudEvent, STRUCTURED_CONTENT_TYPE};
use crate::dispatch::{Dispatcher, Refused};
use crate::error::{method_not_allowed_fallback, not_found_fallback, ApiError};
use crate::metrics::{KindLabel, Metrics};
use crate::wire;

pub struct AppState {
    pub gateway_name: String,
    pub event_type: String,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    /// `None` once shutdown began: intake is closed and the workers are draining.
    pub dispatcher: RwLock<Option<Arc<Dispatcher>>>,
    pub shutting_down: AtomicBool,
}

impl AppState {
    /// The dispatcher, unless shutdown has closed intake.
    pub async fn dispatcher(&self) -> Result<Arc<Dispatcher>, ApiError> {
        self.dispatcher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                ApiError::unavailable("shutting_down", "the transformer is shutting down", 1)
            })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/", post(ingest))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::deadletters::router())
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed_fallback)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn ingest(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let result = accept(&st, &headers, body).await;
    if let Err(e) = &result {
        st.metrics.reject(match e.status {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::SERVICE_UNAVAILABLE if e.error == "shutting_down" => "shutting_down",
            StatusCode::SERVICE_UNAVAILABLE => "backpressure",
            _ => "bad_request",
        });
    }
    result
}

async fn accept(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if st.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable(
            "shutting_down",
            "the transformer is shutting down",
            1,
        ));
    }
    let body = body.map_err(|r| ApiError::from_body(r, st.max_body_bytes))?;
    let (event, kind) = decode(st, headers, body)?;
    let id = event.id.clone();
    let dispatcher = st.dispatcher().await?;
    dispatcher.dispatch(event).await.map_err(refused)?;
    st.metrics.received.get_or_create(&KindLabel { kind }).inc();
    Ok(Json(serde_json::json!({ "id": id })))
}

/// Every refusal is "try again later": the queue or the store cannot take it now.
pub fn refused(r: Refused) -> ApiError {
    match r {
        Refused::UnknownWatcher(_) => {
            ApiError::new(StatusCode::CONFLICT, "unknown_watcher", r.to_string())
        }
        Refused::Store(e) => {
            tracing::error!(error = %e, "event store write failed");
            ApiError::unavailable(
                "store_unavailable",
                format!("the event could not be stored: {e}"),
                1,
            )
        }
        other => ApiError::unavailable("backpressure", format!("{other}; retry later"), 1),
    }
}

/// Chooses the input form: a `ce-specversion` header means a binary CloudEvent, the
/// structured media type a structured one, anything else the `{src, payload}` body.
fn decode(
    st: &AppState,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(CloudEvent, &'static str), ApiError> {
    let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(e.to_string());
    if let Some(parsed) = CloudEvent::from_binary(headers, body.clone()) {
        return parsed.map(|e| (e, "cloudevent")).map_err(|e| bad(&e));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with(STRUCTURED_CONTENT_TYPE) {
        return CloudEvent::from_structured(&body)
            .map(|e| (e, "cloudevent"))
            .map_err(|e| bad(&e));
    }
    if content_type.starts_with("application/cloudevents-batch") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "batched CloudEvents are not accepted; send one event per request",
        ));
    }
    let request = wire::parse_event_request(&body).map_err(|e| bad(&e))?;
    let data = wire::decode_payload(&request.payload).map_err(|e| bad(&e))?;
    let mut event = CloudEvent::from_gateway_event(
        &st.gateway_name,
        &st.event_type,
        &request.src,
        Bytes::from(data),
    );
    for name in ["traceparent", "tracestate"] {
        if let Some(v) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        {
            event.extensions.push((name.to_owned(), v.to_owned()));
        }
    }
    Ok((event, "gateway"))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    if st.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable(
            "shutting_down",
            "the transformer is shutting down",
            1,
        ));
    }
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.metrics.encode(),
    )
}
