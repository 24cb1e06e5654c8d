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

use crate::cloudevent::{CloudEvent, ORIGIN_ID, STRUCTURED_CONTENT_TYPE};
use crate::dedup::{self, Check, Key};
use crate::dispatch::dispatcher::Name;
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
        Endpoint::get("/triggers", triggers),
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
    st: &Arc<AppState>,
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
    st.metrics.intake.batches.inc();
    let Checked {
        mut results,
        events,
        slots,
        repeats,
    } = check_items(st, &items);
    st.seen.remember(
        events
            .iter()
            .map(|(e, _)| (e.source.as_str(), e.id.as_str())),
    );
    let keys: Vec<Option<Key>> = slots.iter().map(|(_, key)| *key).collect();
    let outcomes = dispatch_settled(st, dispatcher, events, keys).await;
    for ((slot, _), outcome) in slots.into_iter().zip(outcomes) {
        match outcome {
            Ok(()) => {
                st.metrics
                    .intake
                    .received
                    .get_or_create(&KindLabel { kind: "gateway" })
                    .inc();
            }
            Err(r) => {
                let e = refused(r);
                st.metrics.reject(reject_reason(&e));
                results[slot] = BatchResult::from(e);
            }
        }
    }
    for (repeat, first) in repeats {
        results[repeat] = match &results[first] {
            r if r.status == 200 => {
                st.metrics.dedup.duplicates.inc();
                taken(r.id.clone().unwrap_or_default(), true)
            }
            r => r.clone(),
        };
    }
    Ok(Json(BatchAnswer { results }))
}

/// A batch's items read and checked, none dispatched yet.
struct Checked {
    /// One per item: taken (so far), a duplicate, or refused.
    results: Vec<BatchResult>,
    /// The events to dispatch, with their names when they have one.
    events: Vec<(CloudEvent, Option<Name>)>,
    /// For each event to dispatch: its result's place, and its name when
    /// it is held for it.
    slots: Vec<(usize, Option<Key>)>,
    /// Items naming an event that an earlier item of the batch names (the
    /// repeat's place, the first's): answered as the first is, as a
    /// duplicate when it was taken.
    repeats: Vec<(usize, usize)>,
}

/// Reads each item of a batch into its event, checking its claim and its
/// name; every refusal is answered in its place.
fn check_items(st: &AppState, items: &[BatchItem]) -> Checked {
    let mut c = Checked {
        results: Vec::with_capacity(items.len()),
        events: Vec::with_capacity(items.len()),
        slots: Vec::with_capacity(items.len()),
        repeats: Vec::new(),
    };
    // Read first, then every name looked up under one lock.
    let parsed: Vec<Result<(CloudEvent, bool), ApiError>> =
        items.iter().map(|item| read_item(st, item)).collect();
    let keys: Vec<Option<Key>> = parsed
        .iter()
        .map(|p| p.as_ref().ok().and_then(|(e, named)| key_of(st, e, *named)))
        .collect();
    let checks = match &st.dedup {
        Some(dedup) => dedup.check_many(&keys, dedup::now_secs()),
        None => keys.iter().map(|_| None).collect(),
    };
    // Configurations an item of which was refused for now: their later items
    // wait too, or they would overtake it when it is sent again.
    let mut held_back: Vec<String> = Vec::new();
    for ((event, key), check) in parsed.into_iter().zip(keys).zip(checks) {
        let checked = event.map(|(event, _)| {
            let name = match key {
                Some(key) => named_of(st, key, check),
                None => Ok(Named::Unnamed),
            };
            (event, name)
        });
        let checked = match checked {
            Ok((event, name))
                if held_back.iter().any(|s| s == event.ordering_key())
                    && !matches!(name, Ok(Named::Duplicate)) =>
            {
                if let (Ok(Named::New(key)), Some(dedup)) = (&name, &st.dedup) {
                    dedup.release(*key);
                }
                Err(refused(crate::dispatch::Refused::Behind))
            }
            other => other,
        };
        c.place(st, checked, &mut held_back);
    }
    c
}

/// One item of a batch as an event, its replica's claim checked.
fn read_item(st: &AppState, item: &BatchItem) -> Result<(CloudEvent, bool), ApiError> {
    claim_holds(item.claim_until.as_deref())?;
    let trace = [
        ("traceparent", item.traceparent.as_deref()),
        ("tracestate", item.tracestate.as_deref()),
    ];
    let trace = trace.into_iter().filter_map(|(k, v)| Some((k, v?)));
    gateway_event(st, item.event.get().as_bytes(), trace)
}

impl Checked {
    /// Answers an item in its place: an event to dispatch, a duplicate, a
    /// repeat of an earlier item, or a refusal (which holds back the later
    /// items of its configuration).
    fn place(
        &mut self,
        st: &AppState,
        checked: Result<(CloudEvent, Result<Named, NameError>), ApiError>,
        held_back: &mut Vec<String>,
    ) {
        let at = self.results.len();
        match checked {
            Ok((event, Ok(Named::New(key)))) => {
                self.slots.push((at, Some(key)));
                self.results.push(taken(event.id.clone(), false));
                self.events.push((event, Some(key.to_bytes())));
            }
            Ok((event, Ok(Named::Unnamed))) => {
                self.slots.push((at, None));
                self.results.push(taken(event.id.clone(), false));
                self.events.push((event, None));
            }
            Ok((event, Ok(Named::Duplicate))) => self.results.push(taken(event.id, true)),
            Ok((event, Err(e))) => {
                let repeat = match &e {
                    NameError::InFlight(key) => self.slots.iter().find(|(_, k)| *k == Some(*key)),
                    NameError::Full { .. } => None,
                };
                let e: ApiError = e.into();
                match repeat {
                    Some(&(first, _)) => self.repeats.push((at, first)),
                    None => {
                        st.metrics.reject(reject_reason(&e));
                        held_back.push(event.ordering_key().to_owned());
                    }
                }
                self.results.push(BatchResult::from(e));
            }
            Err(e) => {
                st.metrics.reject(reject_reason(&e));
                self.results.push(BatchResult::from(e));
            }
        }
    }
}

/// The answer for an event taken (now, or before when `duplicate`).
fn taken(id: String, duplicate: bool) -> BatchResult {
    BatchResult {
        status: 200,
        id: Some(id),
        duplicate: duplicate.then_some(true),
        error: None,
        detail: None,
        retry_after: None,
    }
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

/// What deduplication says of an event before it is dispatched.
enum Named {
    /// No name of its own (a fresh UUID), or deduplication is off.
    Unnamed,
    /// Named, and not taken within the window: held until settled.
    New(Key),
    /// Taken within the window.
    Duplicate,
}

/// Why a named event cannot be taken now.
enum NameError {
    /// Another request with the same name is being taken.
    InFlight(Key),
    /// The memory of names is full.
    Full { retry_after_secs: u64 },
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> ApiError {
        match e {
            NameError::InFlight(_) => ApiError::new(
                ErrorCode::Backpressure,
                "an event with this id is being taken by another request right now; send it \
                 again: it is answered as a duplicate if that one was taken",
            ),
            NameError::Full { retry_after_secs } => ApiError::new(
                ErrorCode::Backpressure,
                "the transformer remembers TRANSFORMER_DEDUP_MAX_IDS event ids within \
                 TRANSFORMER_DEDUP_WINDOW already; a new id is taken once the oldest expires",
            )
            .retry_after(retry_after_secs),
        }
    }
}

/// Looks an event's name up: `named` events (a user server's id, a relayed
/// CloudEvent) are remembered by their CloudEvent `source` and `id`.
fn check_name(st: &AppState, event: &CloudEvent, named: bool) -> Result<Named, NameError> {
    let Some(key) = key_of(st, event, named) else {
        return Ok(Named::Unnamed);
    };
    let check = st.dedup.as_ref().map(|d| d.check(key, dedup::now_secs()));
    named_of(st, key, check)
}

/// The key an event is remembered by, when it is named and memory is on.
fn key_of(st: &AppState, event: &CloudEvent, named: bool) -> Option<Key> {
    (named && st.dedup.is_some()).then(|| Key::of(&event.source, &event.id))
}

/// What the memory's answer for `key` means for its event.
fn named_of(st: &AppState, key: Key, check: Option<Check>) -> Result<Named, NameError> {
    let (Some(dedup), Some(check)) = (&st.dedup, check) else {
        return Ok(Named::Unnamed);
    };
    match check {
        Check::New => Ok(Named::New(key)),
        Check::Duplicate => {
            st.metrics.dedup.duplicates.inc();
            Ok(Named::Duplicate)
        }
        Check::InFlight => Err(NameError::InFlight(key)),
        Check::Full { retry_after_secs } => {
            let n = st.metrics.dedup.full.inc() + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    remembered = dedup.remembered(),
                    times = n,
                    "event ids refused: the memory of ids (TRANSFORMER_DEDUP_MAX_IDS) is full \
                     within TRANSFORMER_DEDUP_WINDOW; raise the one or shorten the other"
                );
            }
            Err(NameError::Full { retry_after_secs })
        }
    }
}

/// Dispatches events and settles the names held for them. With names held,
/// on a task of its own: a request dropped halfway (its client went away)
/// must neither leave a name held for ever (every retry answered 503) nor
/// let go of one whose event the store is writing (a retry taken twice).
async fn dispatch_settled(
    st: &Arc<AppState>,
    dispatcher: Arc<crate::dispatch::Dispatcher>,
    events: Vec<(CloudEvent, Option<Name>)>,
    keys: Vec<Option<Key>>,
) -> Vec<Result<(), crate::dispatch::Refused>> {
    if keys.iter().all(Option::is_none) {
        return dispatcher.dispatch_many(events).await;
    }
    let n = events.len();
    let st = st.clone();
    let task = tokio::spawn(async move {
        let outcomes = dispatcher.dispatch_many(events).await;
        if let Some(dedup) = &st.dedup {
            let settled = keys
                .into_iter()
                .zip(&outcomes)
                .filter_map(|(key, outcome)| Some((key?, outcome.is_ok())));
            dedup.settle_many(settled, dedup::now_secs());
        }
        outcomes
    });
    task.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "a dispatch task failed");
        (0..n)
            .map(|_| {
                Err(crate::dispatch::Refused::Store(Arc::new(
                    crate::store::StoreError::WriterStopped,
                )))
            })
            .collect()
    })
}

/// A held name was taken (`ok`), or not: a retry of it is then new.
fn settle_name(st: &AppState, key: Key, ok: bool) {
    if let Some(dedup) = &st.dedup {
        if ok {
            dedup.taken(key, dedup::now_secs());
        } else {
            dedup.release(key);
        }
    }
}

async fn accept(
    st: &Arc<AppState>,
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
    let (event, kind, named) = decode(st, headers, body)?;
    let id = event.id.clone();
    let key = match check_name(st, &event, named)? {
        Named::Duplicate => return Ok(Json(serde_json::json!({ "id": id, "duplicate": true }))),
        Named::New(key) => Some(key),
        Named::Unnamed => None,
    };
    // A CloudEvent another gateway delivers that was taken here before has
    // come back around a loop of GATEWAY_WATCHERS (or is an upstream's
    // repeat): it was delivered from here already, so it is answered as
    // taken and not queued again.
    let checked = kind == "cloudevent" && loops::from_a_gateway(headers);
    if !checked {
        st.seen.remember([(event.source.as_str(), id.as_str())]);
    } else if !st.seen.take(&event.source, &id) {
        came_back(st, &event);
        if let Some(key) = key {
            settle_name(st, key, true);
        }
        return Ok(Json(serde_json::json!({ "id": id })));
    }
    let source = checked.then(|| event.source.clone());
    let name = key.map(Key::to_bytes);
    let outcome = dispatch_settled(st, dispatcher, vec![(event, name)], vec![key])
        .await
        .pop()
        .unwrap_or(Ok(()));
    if let Err(r) = outcome {
        if let Some(source) = source {
            st.seen.forget(&source, &id);
        }
        return Err(refused(r));
    }
    st.metrics
        .intake
        .received
        .get_or_create(&KindLabel { kind })
        .inc();
    Ok(Json(serde_json::json!({ "id": id })))
}

/// Counts an event that came back, and says so in the log at the 1st, 2nd,
/// 4th, 8th... time: a loop repeats for every event.
fn came_back(st: &AppState, event: &CloudEvent) {
    let n = st.metrics.intake.returned.inc() + 1;
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
/// Says too whether the event has a name of its own to be remembered by: a
/// CloudEvent always (its `source` and `id`), a gateway event when its
/// producer gave an `id`.
fn decode(
    st: &AppState,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(CloudEvent, &'static str, bool), ApiError> {
    let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(e.to_string());
    if let Some(parsed) = CloudEvent::from_binary(headers, body.clone()) {
        return parsed.map(|e| (e, "cloudevent", true)).map_err(|e| bad(&e));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with(STRUCTURED_CONTENT_TYPE) {
        return CloudEvent::from_structured(&body)
            .map(|e| (e, "cloudevent", true))
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
    gateway_event(st, &body, trace).map(|(e, named)| (e, "gateway", named))
}

/// A new CloudEvent from a `{src, payload, id?}` body, carrying the producer's
/// non-empty `traceparent` / `tracestate`; and whether the producer named it.
/// A named event's CloudEvent id is derived from the gateway, the
/// configuration and the name (the same three, the same id), and the name
/// travels on as the extension attribute [`ORIGIN_ID`].
fn gateway_event<'a>(
    st: &AppState,
    body: &[u8],
    trace: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<(CloudEvent, bool), ApiError> {
    let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(e.to_string());
    let request = wire::parse_event_request(body).map_err(|e| bad(&e))?;
    let data = wire::decode_payload(&request.payload).map_err(|e| bad(&e))?;
    let mut event = CloudEvent::from_gateway_event(
        &st.gateway_name,
        &st.event_type,
        &request.src,
        Bytes::from(data),
    );
    let named = request.id.is_some();
    if let Some(origin) = request.id {
        event.id = dedup::cloudevent_id(&st.gateway_name, &request.src, &origin);
        event.extensions.push((ORIGIN_ID.to_owned(), origin));
    }
    for (name, value) in trace.filter(|(_, v)| !v.is_empty()) {
        event.extensions.push((name.to_owned(), value.to_owned()));
    }
    event.extensions.extend(st.ce_overrides.iter().cloned());
    Ok((event, named))
}

/// `GET /triggers`: every trigger, its subscriber (credentials as `***`),
/// filter, delivery, rate limit and queue depth.
async fn triggers(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let list: Vec<serde_json::Value> = st
        .triggers
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|t| t.describe())
        .collect();
    Json(serde_json::json!({ "triggers": list }))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    st.intake.dispatcher()?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    if let Some(dedup) = &st.dedup {
        let remembered = i64::try_from(dedup.remembered()).unwrap_or(i64::MAX);
        st.metrics.dedup.remembered.set(remembered);
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.metrics.encode(),
    )
}
