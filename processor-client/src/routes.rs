//! The processor-client's HTTP surface: events, running and error notices from the
//! user server, the list of configurations, health, readiness and metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::transformer_client::{Ordered, SendError, Trace, TransformerClient};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use gateway_common::coding;
use gateway_common::endpoint::{self, Endpoint};
use gateway_common::error::{ApiError, ErrorCode};
use gateway_common::wire::{self, BatchAnswer, BatchResult, EventRequest};
use serde::Deserialize;

use crate::config::{Paths, EVENTS_PATH};
use crate::configs::{LookupError, Registry};
use crate::metrics::Metrics;

pub struct AppState {
    pub registry: Arc<Registry>,
    pub transformer: TransformerClient,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// `GATEWAY_PROCESSOR_MAX_BATCH_EVENTS`: most events in one `POST /events`.
    pub max_batch_events: usize,
    pub shutting_down: AtomicBool,
    /// With `GATEWAY_PROCESSOR_SHARING=nats`: which configurations this replica holds.
    pub sharing: Option<Arc<crate::sharing::Sharing>>,
}

/// Every endpoint of the processor-client, with the notice paths as configured.
pub fn endpoints(paths: &Paths) -> Vec<Endpoint<Arc<AppState>>> {
    vec![
        Endpoint::post(&paths.event, event),
        Endpoint::post(EVENTS_PATH, events),
        Endpoint::post(&paths.running, running),
        Endpoint::post(&paths.error, error),
        Endpoint::get("/configs", configs),
        Endpoint::get("/healthz", healthz),
        Endpoint::get("/readyz", readyz),
        Endpoint::get("/metrics", metrics),
    ]
}

pub fn router(paths: &Paths, state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    endpoint::router(endpoints(paths))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

type Params = Query<HashMap<String, String>>;

fn lookup_error(e: LookupError) -> ApiError {
    match e {
        LookupError::Unknown(_) => ApiError::new(ErrorCode::UnknownSrc, e.to_string()),
        LookupError::Stopped(_) => ApiError::new(ErrorCode::StoppedSrc, e.to_string()),
        LookupError::StaleId { .. } => ApiError::new(ErrorCode::StaleId, e.to_string()),
        LookupError::Ambiguous => ApiError::bad_request(e.to_string()),
    }
}

fn content_type(headers: &HeaderMap) -> String {
    gateway_common::media::essence(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    )
}

/// The `src` a request names outside its body: `?src=` or an `X-Gateway-Src` header.
fn src_outside_body<'a>(
    params: &'a HashMap<String, String>,
    headers: &'a HeaderMap,
) -> Option<&'a str> {
    params
        .get("src")
        .map(String::as_str)
        .or_else(|| headers.get("x-gateway-src").and_then(|v| v.to_str().ok()))
        .filter(|s| !s.is_empty())
}

/// An event ready to go on: its configuration, and the `{src, payload}` body the
/// transformer takes.
struct Outgoing {
    src: String,
    body: Bytes,
}

/// Reads an event: JSON `{src, payload}`; or, with `application/octet-stream`, either
/// that same JSON or the raw payload bytes with `src` given as `?src=` (or the only
/// configuration), which is how user servers written for Argo post. A JSON body is
/// checked here and passed on as it came: the transformer reads it with the same
/// parser, and not re-encoding it saves a copy of every payload.
fn read_event(
    st: &AppState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    body: Bytes,
) -> Result<Outgoing, ApiError> {
    let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(e.to_string());
    match wire::parse_event_request(&body) {
        Ok(req) => {
            wire::validate_payload(&req.payload).map_err(|e| bad(&e))?;
            return Ok(Outgoing { src: req.src, body });
        }
        // Raw bytes are Argo's form, and only with this content type.
        Err(_) if content_type(headers) == "application/octet-stream" => {}
        Err(e) => return Err(bad(&e)),
    }
    let src = st
        .registry
        .resolve(src_outside_body(params, headers))
        .map_err(lookup_error)?;
    let encoded = serde_json::to_vec(&EventRequest {
        payload: wire::encode_payload(&body),
        src: src.clone(),
        id: None,
    })
    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(Outgoing {
        src,
        body: Bytes::from(encoded),
    })
}

async fn event(
    State(st): State<Arc<AppState>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let result = forward_event(&st, &params, &headers, body).await;
    match &result {
        Ok(_) => {
            st.metrics.events_forwarded.inc();
        }
        Err(e) => st.metrics.refused(e.code),
    }
    result
}

/// The transformer's refusal of an event, answered to the user server as
/// the transformer said it: its code and detail (a refusal that is not one
/// of the gateway's JSON errors is a 400 quoting it), so that it is counted
/// as the refusal it is.
fn refusal(status: u16, code: Option<ErrorCode>, body: &[u8]) -> ApiError {
    #[derive(Deserialize)]
    struct Detail {
        detail: Option<String>,
    }
    let text = || {
        String::from_utf8_lossy(body)
            .chars()
            .take(1024)
            .collect::<String>()
    };
    match code {
        Some(code) => {
            let detail = serde_json::from_slice::<Detail>(body)
                .ok()
                .and_then(|d| d.detail)
                .unwrap_or_else(text);
            ApiError::new(code, detail)
        }
        None => ApiError::bad_request(format!(
            "the transformer refused the event with {status}: {}",
            text()
        )),
    }
}

async fn forward_event(
    st: &AppState,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = coding::read_body(headers, body, st.max_body_bytes)?;
    let event = read_event(st, headers, params, body)?;
    st.registry.admit_event(&event.src).map_err(lookup_error)?;
    check_claim(st, &event.src)?;
    match st
        .transformer
        .send(&event.src, event.body, trace_of(headers))
        .await
    {
        Ok(answer) => Ok(([(header::CONTENT_TYPE, "application/json")], answer).into_response()),
        Err(SendError::Busy {
            retry_after_secs,
            detail,
        }) => Err(ApiError::new(
            ErrorCode::Backpressure,
            format!("the transformer cannot take the event now: {detail}"),
        )
        .retry_after(retry_after_secs)),
        Err(SendError::Unavailable(why)) => Err(ApiError::new(
            ErrorCode::TransformerUnavailable,
            format!("the transformer did not take the event: {why}"),
        )),
        Err(SendError::Rejected { status, code, body }) => Err(refusal(status, code, &body)),
    }
}

/// `POST /events`: a JSON array of `{src, payload, id?}`, each answered in
/// `{"results": [...]}` as `POST /event` would have answered it alone. The
/// body as a whole is checked first (a JSON array, within the limits); one
/// that is not is refused whole, and nothing of it is taken.
async fn events(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchAnswer>, ApiError> {
    let answer = forward_events(&st, &headers, body).await;
    match &answer {
        Ok(Json(answer)) => {
            for r in &answer.results {
                match r.error.as_deref() {
                    None => {
                        st.metrics.events_forwarded.inc();
                    }
                    Some(code) => st
                        .metrics
                        .refused(ErrorCode::parse(code).unwrap_or(ErrorCode::BadRequest)),
                }
            }
        }
        Err(e) => st.metrics.refused(e.code),
    }
    answer
}

async fn forward_events(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchAnswer>, ApiError> {
    let body = coding::read_body(headers, body, st.max_body_bytes)?;
    let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of POST /events is a JSON array of {{\"src\", \"payload\", \"id\"?}} objects: {e}"
        ))
    })?;
    if let Some(at) = items
        .iter()
        .position(|item| !item.get().trim_start().starts_with('{'))
    {
        return Err(ApiError::bad_request(format!(
            "item {at} of POST /events is not a JSON object {{\"src\", \"payload\", \"id\"?}}; nothing of the request was taken"
        )));
    }
    if items.len() > st.max_batch_events {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "{} events in one request; at most {} (GATEWAY_PROCESSOR_MAX_BATCH_EVENTS)",
                items.len(),
                st.max_batch_events
            ),
        ));
    }
    let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(items.len());
    let mut ready = Vec::with_capacity(items.len());
    let mut slots = Vec::with_capacity(items.len());
    for item in items {
        let raw = item.get().as_bytes();
        match check_event(st, raw) {
            Ok(src) => {
                slots.push(results.len());
                results.push(None);
                ready.push(Ordered {
                    src,
                    body: body.slice_ref(raw),
                });
            }
            Err(e) => results.push(Some(BatchResult::from(e))),
        }
    }
    let answers = st.transformer.send_in_order(ready, trace_of(headers)).await;
    for (slot, answer) in slots.into_iter().zip(answers) {
        results[slot] = Some(answer);
    }
    Ok(Json(BatchAnswer {
        results: results.into_iter().flatten().collect(),
    }))
}

/// Checks one event of a batch as `POST /event` checks a JSON one: its body,
/// its payload, its configuration, and this replica's claim on it.
fn check_event(st: &AppState, raw: &[u8]) -> Result<String, ApiError> {
    let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(e.to_string());
    let req = wire::parse_event_request(raw).map_err(|e| bad(&e))?;
    wire::validate_payload(&req.payload).map_err(|e| bad(&e))?;
    st.registry.admit_event(&req.src).map_err(lookup_error)?;
    check_claim(st, &req.src)?;
    Ok(req.src)
}

/// The producer's trace context, to go on with its events.
fn trace_of(headers: &HeaderMap) -> Trace {
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| headers.get(name).map(|v| (name, v.clone())))
        .collect()
}

/// With sharing: refuses an event of a configuration this replica does not
/// hold now. Checked here, and again as the event leaves, and by the
/// transformer on arrival: this process may be frozen at any point between.
fn check_claim(st: &AppState, src: &str) -> Result<(), ApiError> {
    match &st.sharing {
        Some(sharing) if !sharing.may_forward(src) => Err(ApiError::new(
            ErrorCode::NotOwner,
            format!(
                "replica {} does not hold configuration {src:?} now; it runs elsewhere",
                sharing.replica(),
            ),
        )),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
struct Notice {
    src: Option<String>,
    id: Option<String>,
    message: Option<String>,
}

/// A notice body: JSON when it parses as a JSON object, otherwise plain text. A body
/// that says it is JSON must be an object (or empty).
fn read_notice(json: bool, body: &[u8]) -> Result<Notice, String> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(_)) => serde_json::from_slice::<Notice>(body)
            .map_err(|e| format!("notice fields have the wrong type: {e}")),
        _ if json && !body.trim_ascii().is_empty() => {
            Err("a JSON notice must be an object such as {\"src\": \"KEY\"}".into())
        }
        _ => Ok(Notice {
            src: None,
            id: None,
            message: Some(String::from_utf8_lossy(body).trim().to_owned()),
        }),
    }
}

/// Reads a notice and the configuration it is about: named in the body, by
/// `?src=` or `X-Gateway-Src`, or the only configuration.
fn notice_for(
    st: &AppState,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Notice, String), ApiError> {
    let body = coding::read_body(headers, body, st.max_body_bytes)?;
    let notice = read_notice(content_type(headers) == "application/json", &body)
        .map_err(ApiError::bad_request)?;
    let named = notice
        .src
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(src_outside_body(params, headers));
    let src = st.registry.resolve(named).map_err(lookup_error)?;
    Ok((notice, src))
}

async fn running(
    State(st): State<Arc<AppState>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (notice, src) = notice_for(&st, &params, &headers, body)?;
    st.registry
        .running(&src, notice.id.as_deref())
        .map_err(lookup_error)?;
    tracing::info!(%src, "configuration running");
    Ok(Json(serde_json::json!({ "src": src, "phase": "Running" })))
}

async fn error(
    State(st): State<Arc<AppState>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (notice, src) = notice_for(&st, &params, &headers, body)?;
    let message = notice
        .message
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "error reported by the user server".into());
    let message = crate::configs::clip(&message);
    tracing::warn!(%src, %message, "user server reported an error");
    st.registry.error(&src, &message);
    Ok(Json(
        serde_json::json!({ "src": src, "phase": "Error", "message": message }),
    ))
}

async fn configs(State(st): State<Arc<AppState>>) -> Json<Vec<crate::configs::ConfigStatus>> {
    let mut list = st.registry.list();
    if let Some(sharing) = &st.sharing {
        crate::sharing::with_owners(
            &mut list,
            &sharing.replica(),
            &sharing.owners(),
            sharing.configurations().as_deref(),
            |src| sharing.holds(src),
        );
    }
    Json(list)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    if st.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::shutting_down("processor-client"));
    }
    if !st.transformer.ready().await {
        return Err(ApiError::new(
            ErrorCode::NotReady,
            "the transformer is not reachable",
        ));
    }
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, gateway_common::metrics::CONTENT_TYPE)],
        st.metrics.encode(&st.registry),
    )
}

#[cfg(test)]
mod fuzz {
    //! Notice bodies are outside input: any bytes give a notice or an error.
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fuzz_notice(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = super::read_notice(true, &body);
            let _ = super::read_notice(false, &body);
        }

        #[test]
        fn fuzz_notice_json(src in prop::option::of(".{0,8}"), id in prop::option::of("[0-9]{0,10}"), n in any::<i64>()) {
            let body = serde_json::json!({ "src": src, "id": id, "message": n });
            let _ = super::read_notice(true, &serde_json::to_vec(&body).unwrap_or_default());
        }
    }
}
