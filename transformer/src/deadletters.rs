//! The operator's view of events that exhausted their retries: list, inspect,
//! replay (one, or all of a watcher's), delete. A replayed event goes back to its
//! watcher's queue with its CloudEvent id unchanged, after what is queued now.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};

use crate::state::{refused, AppState};
use crate::store::{DeadLetter, StoreError};
use gateway_common::endpoint::Endpoint;
use gateway_common::error::{ApiError, ErrorCode};

pub fn endpoints() -> Vec<Endpoint<Arc<AppState>>> {
    vec![
        Endpoint::get("/deadletters", list),
        Endpoint::post("/deadletters/replay", replay_all),
        Endpoint::get("/deadletters/{id}", show),
        Endpoint::delete("/deadletters/{id}", delete),
        Endpoint::post("/deadletters/{id}/replay", replay_one),
    ]
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::new(ErrorCode::StoreError, e.to_string())
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(ErrorCode::UnknownDeadLetter, format!("no dead letter {id}"))
}

/// A dead letter as JSON: why it died, and the CloudEvent in structured form.
fn render(d: &DeadLetter) -> Value {
    let event: Value = serde_json::from_slice(&d.event.to_structured_json()).unwrap_or(Value::Null);
    json!({
        "id": d.id(),
        "watcher": d.watcher_name,
        "error": d.error,
        "attempts": d.attempts,
        "dead_at": time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(d.dead_at_ms) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
        "event": event,
    })
}

fn parse_id(id: &str) -> Result<(u64, u64), ApiError> {
    DeadLetter::parse_id(id).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{id:?} is not a dead-letter id (32 hex digits, as GET /deadletters lists them)"
        ))
    })
}

async fn list(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("limit {l:?} is not a number")))?,
        None => 1000,
    };
    let dispatcher = st.intake.dispatcher()?;
    let store = dispatcher.store();
    // Counted from the same read as the list: counted apart, a letter added
    // in between made `total` one more than the letters listed.
    let (page, total) = store
        .dead_letters_page(limit, q.get("watcher").map(String::as_str))
        .map_err(store_error)?;
    let letters: Vec<Value> = page.iter().map(render).collect();
    Ok(Json(json!({ "total": total, "deadletters": letters })))
}

async fn show(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (w, seq) = parse_id(&id)?;
    let dispatcher = st.intake.dispatcher()?;
    match dispatcher
        .store()
        .dead_letter(w, seq)
        .map_err(store_error)?
    {
        Some(d) => Ok(Json(render(&d))),
        None => Err(unknown(&id)),
    }
}

async fn delete(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (w, seq) = parse_id(&id)?;
    let dispatcher = st.intake.dispatcher()?;
    if dispatcher
        .store()
        .delete_dead(w, seq)
        .map_err(store_error)?
    {
        Ok(Json(json!({ "deleted": id })))
    } else {
        Err(unknown(&id))
    }
}

async fn replay_one(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (w, seq) = parse_id(&id)?;
    let dispatcher = st.intake.dispatcher()?;
    let Some(letter) = dispatcher
        .store()
        .dead_letter(w, seq)
        .map_err(store_error)?
    else {
        return Err(unknown(&id));
    };
    let event_id = letter.event.id.clone();
    dispatcher.replay(letter).await.map_err(refused)?;
    st.metrics.replayed.inc();
    Ok(Json(json!({ "replayed": 1, "event": event_id })))
}

/// How many dead letters one `POST /deadletters/replay` reads: the default
/// queue capacity, so memory stays bounded however many there are.
const REPLAY_AT_ONCE: usize = 10_000;

/// Replays every dead letter (of one watcher with `?watcher=URL`) until the queue
/// is full, at most [`REPLAY_AT_ONCE`]; the answer says how many went and how
/// many remain.
async fn replay_all(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let dispatcher = st.intake.dispatcher()?;
    // At most a queue's worth at a time (no more fits): the rest is counted
    // as remaining, for the next call.
    let (letters, total) = dispatcher
        .store()
        .dead_letters_page(REPLAY_AT_ONCE, q.get("watcher").map(String::as_str))
        .map_err(store_error)?;
    let mut replayed = 0usize;
    let mut remaining = total - letters.len();
    let mut stopped_by = None;
    for letter in letters {
        if stopped_by.is_some() || st.intake.is_closed() {
            remaining += 1;
            continue;
        }
        match dispatcher.replay(letter).await {
            Ok(()) => replayed += 1,
            Err(e) => {
                remaining += 1;
                stopped_by = Some(e.to_string());
            }
        }
    }
    st.metrics.replayed.inc_by(replayed as u64);
    Ok(Json(
        json!({ "replayed": replayed, "remaining": remaining, "stopped_by": stopped_by }),
    ))
}
