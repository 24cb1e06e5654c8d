//! The transformer's HTTP surface: `POST /` takes `{src, payload}` from the
//! processor-client and framework-independent producers, or a CloudEvent in binary
//! or structured mode from another gateway; plus health, readiness and metrics.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;

use crate::cloudevent::{CloudEvent, STRUCTURED_CONTENT_TYPE};
use crate::loops;
use crate::metrics::KindLabel;
use crate::state::{refused, AppState};
use gateway_common::coding;
use gateway_common::endpoint::{self, Endpoint};
use gateway_common::error::{ApiError, ErrorCode};
use gateway_common::wire::{self, BatchAnswer, BatchItem, BatchResult};

/// Every endpoint of the transformer, the dead-letter API's included.
pub fn endpoints() -> Vec<Endpoint<Arc<AppState>>> {
    let mut all = vec![
        Endpoint::post("/", ingest),
        Endpoint::post(wire::BATCH_PATH, batch),
        Endpoint::get("/healthz", healthz),
        Endpoint::get("/readyz", readyz),
        Endpoint::get("/metrics", metrics),
    ];
    all.extend(crate::deadletters::endpoints());
    all
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    endpoint::router(endpoints())
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn ingest(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let result = accept(&st, &headers, body).await;
    if let Err(e) = &result {
        st.metrics.reject(reject_reason(e));
    }
    let offer = [(wire::BATCH_HEADER, st.max_body_bytes)];
    result.map(|json| (offer, json).into_response())
}

/// The label of `transformer_rejected_total` for a refusal.
fn reject_reason(e: &ApiError) -> &'static str {
    match e.code {
        ErrorCode::TooLarge => "too_large",
        ErrorCode::ShuttingDown => "shutting_down",
        ErrorCode::NotOwner => "not_owner",
        c if c.status() == StatusCode::SERVICE_UNAVAILABLE => "backpressure",
        _ => "bad_request",
    }
}

/// `POST /batch`: many `{src, payload}` events in one request, each answered as
/// `POST /` would have answered it alone. The processor-client sends what its
/// producers posted while its last requests were in flight, so under load one
/// exchange and one store write carry many events. Whole-request failures
/// (shutdown, a body that is not a batch) answer for every event.
async fn batch(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let result = accept_batch(&st, &headers, body).await;
    if let Err(e) = &result {
        st.metrics.reject(reject_reason(e));
    }
    let offer = [(wire::BATCH_HEADER, st.max_body_bytes)];
    result.map(|json| (offer, json).into_response())
}

async fn accept_batch(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchAnswer>, ApiError> {
    let dispatcher = st.intake.dispatcher()?;
    let body = coding::read_body(headers, body, st.max_body_bytes)?;
    let items: Vec<BatchItem> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "a batch is a JSON array of {{\"event\": {{\"src\", \"payload\"}}}} objects: {e}"
        ))
    })?;
    st.metrics.batches.inc();
    let mut results = Vec::with_capacity(items.len());
    let mut events = Vec::with_capacity(items.len());
    let mut slots = Vec::with_capacity(items.len());
    for item in &items {
        if let Err(e) = claim_holds(item.claim_until.as_deref()) {
            st.metrics.reject(reject_reason(&e));
            results.push(failed(e));
            continue;
        }
        let trace = [
            ("traceparent", item.traceparent.as_deref()),
            ("tracestate", item.tracestate.as_deref()),
        ];
        let trace = trace.into_iter().filter_map(|(k, v)| Some((k, v?)));
        match gateway_event(st, item.event.get().as_bytes(), trace) {
            Ok(event) => {
                slots.push(results.len());
                results.push(BatchResult {
                    status: 200,
                    id: Some(event.id.clone()),
                    error: None,
                    detail: None,
                    retry_after: None,
                });
                events.push(event);
            }
            Err(e) => {
                st.metrics.reject(reject_reason(&e));
                results.push(failed(e));
            }
        }
    }
    st.seen
        .remember(events.iter().map(|e| (e.source.as_str(), e.id.as_str())));
    let outcomes = dispatcher.dispatch_many(events).await;
    for (slot, outcome) in slots.into_iter().zip(outcomes) {
        match outcome {
            Ok(()) => {
                st.metrics
                    .received
                    .get_or_create(&KindLabel { kind: "gateway" })
                    .inc();
            }
            Err(r) => {
                let e = refused(r);
                st.metrics.reject(reject_reason(&e));
                results[slot] = failed(e);
            }
        }
    }
    Ok(Json(BatchAnswer { results }))
}

/// Refuses an event whose replica's claim on its configuration lapsed before
/// it arrived ([`wire::CLAIM_HEADER`]): another replica may run it now.
fn claim_holds(claim_until: Option<&str>) -> Result<(), ApiError> {
    let Some(value) = claim_until else {
        return Ok(());
    };
    match wire::claim_lapsed(value) {
        Ok(None) => Ok(()),
        Ok(Some(ms)) => Err(ApiError::new(
            ErrorCode::NotOwner,
            format!(
                "the replica's claim on this configuration lapsed {ms} ms before the event arrived; another replica may run it now"
            ),
        )),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

fn failed(e: ApiError) -> BatchResult {
    BatchResult {
        status: e.status().as_u16(),
        id: None,
        error: Some(e.code.as_str().to_owned()),
        detail: Some(e.detail),
        retry_after: e.retry_after_secs,
    }
}

async fn accept(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let dispatcher = st.intake.dispatcher()?;
    let body = coding::read_body(headers, body, st.max_body_bytes)?;
    claim_holds(
        headers
            .get(wire::CLAIM_HEADER)
            .map(|v| v.to_str().unwrap_or("")),
    )?;
    let (event, kind) = decode(st, headers, body)?;
    let id = event.id.clone();
    // A CloudEvent another gateway delivers that was taken here before has
    // come back around a loop of GATEWAY_WATCHERS (or is an upstream's
    // repeat): it was delivered from here already, so it is answered as
    // taken and not queued again.
    let checked = kind == "cloudevent" && loops::from_a_gateway(headers);
    if !checked {
        st.seen.remember([(event.source.as_str(), id.as_str())]);
    } else if !st.seen.take(&event.source, &id) {
        came_back(st, &event);
        return Ok(Json(serde_json::json!({ "id": id })));
    }
    let source = checked.then(|| event.source.clone());
    if let Err(r) = dispatcher.dispatch(event).await {
        if let Some(source) = source {
            st.seen.forget(&source, &id);
        }
        return Err(refused(r));
    }
    st.metrics.received.get_or_create(&KindLabel { kind }).inc();
    Ok(Json(serde_json::json!({ "id": id })))
}

/// Counts an event that came back, and says so in the log at the 1st, 2nd,
/// 4th, 8th... time: a loop repeats for every event.
fn came_back(st: &AppState, event: &CloudEvent) {
    let n = st.metrics.returned.inc() + 1;
    if n.is_power_of_two() {
        tracing::warn!(
            id = %event.id,
            subject = event.subject.as_deref().unwrap_or(""),
            times = n,
            source = %event.source,
            "a gateway delivered an event taken here before (GATEWAY_WATCHERS form a loop, \
             or an upstream repeated it): answered as taken, not delivered again"
        );
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
            ErrorCode::UnsupportedMediaType,
            "batched CloudEvents are not accepted; send one event per request",
        ));
    }
    let trace = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            let value = headers.get(name)?.to_str().ok()?;
            Some((name, value))
        });
    gateway_event(st, &body, trace).map(|e| (e, "gateway"))
}

/// A new CloudEvent from a `{src, payload}` body, carrying the producer's
/// non-empty `traceparent` / `tracestate`.
fn gateway_event<'a>(
    st: &AppState,
    body: &[u8],
    trace: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<CloudEvent, ApiError> {
    let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(e.to_string());
    let request = wire::parse_event_request(body).map_err(|e| bad(&e))?;
    let data = wire::decode_payload(&request.payload).map_err(|e| bad(&e))?;
    let mut event = CloudEvent::from_gateway_event(
        &st.gateway_name,
        &st.event_type,
        &request.src,
        Bytes::from(data),
    );
    for (name, value) in trace.filter(|(_, v)| !v.is_empty()) {
        event.extensions.push((name.to_owned(), value.to_owned()));
    }
    Ok(event)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    st.intake.dispatcher()?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.metrics.encode(),
    )
}
