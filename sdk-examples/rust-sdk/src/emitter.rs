//! A configuration's events and notices, to the processor-client. Over HTTP an
//! event is posted until the processor-client takes it: 503 waits `Retry-After`,
//! a connection failure waits a moment; only a 4xx (the event itself is wrong) or
//! a stop ends the attempt without success. Events emitted while the last
//! request is in flight pile up and go together as one `POST /events` (no
//! timer: an idle emitter sends each event at once, to the event path). An
//! event may carry an id of its own: the gateway then takes it once, however
//! often it is sent. On a gRPC call an event is written to the call's stream,
//! waiting while the stream is full (the gateway is not reading: HTTP/2 flow
//! control); ids have no place there.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pile::{Pile, Waiting};
use crate::ConfigData;

/// Where the processor-client takes many events at once.
const EVENTS_PATH: &str = "/events";
/// Most events in one `POST /events` (the processor-client's default bound).
const MOST_EVENTS: usize = 1000;

/// One event: its data, and optionally the user server's own name for it
/// (a message id, `topic/partition/offset`), so that sending it again after
/// a crash or a lost answer does not deliver it twice.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub payload: Bytes,
    pub id: Option<String>,
}

impl Event {
    pub fn new(payload: impl Into<Bytes>) -> Event {
        Event {
            payload: payload.into(),
            id: None,
        }
    }

    /// The event named `id` (1 to 256 characters, no control characters).
    pub fn with_id(mut self, id: impl Into<String>) -> Event {
        self.id = Some(id.into());
        self
    }
}

/// An event's answer: its CloudEvent id.
type Answer = Result<String, EmitError>;

/// What [`Emitter::emit_all`] has to do once awaited: wait for the answers
/// of events already on the pile, or write events to a gRPC stream.
enum Work {
    Queued(
        HttpLine,
        Vec<Result<tokio::sync::oneshot::Receiver<Answer>, EmitError>>,
    ),
    Stream(Vec<Event>),
}

/// One event's JSON, written once: a batch is its events' texts side by side.
type Body = Box<serde_json::value::RawValue>;

/// What `/event` and each `/events` item carry.
#[derive(serde::Serialize)]
struct EventBody<'a> {
    src: &'a str,
    payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("the configuration was stopped before the event was taken")]
    Stopped,
    #[error("the processor-client refused the event with {status}: {body}")]
    Refused { status: u16, body: String },
}

/// A configuration's line to the processor-client. Cheap to clone.
#[derive(Clone)]
pub struct Emitter {
    pub(crate) line: Line,
    pub(crate) config: ConfigData,
    pub(crate) stop: CancellationToken,
}

/// Where events go.
#[derive(Clone)]
pub(crate) enum Line {
    /// Posted to the processor-client's HTTP endpoints.
    Http(HttpLine),
    /// Written to the configuration's gRPC call; an `Err` ends the call with
    /// that status.
    Stream(mpsc::Sender<Result<Bytes, tonic::Status>>),
}

#[derive(Clone)]
pub(crate) struct HttpLine {
    pub(crate) client: reqwest::Client,
    pub(crate) base: String,
    pub(crate) event_path: String,
    pub(crate) running_path: String,
    pub(crate) error_path: String,
    /// The configuration's events waiting for a request.
    pub(crate) pile: Arc<Pile<Body, Answer>>,
}

impl HttpLine {
    pub(crate) fn pile() -> Arc<Pile<Body, Answer>> {
        Arc::new(Pile::new(MOST_EVENTS))
    }
}

impl Emitter {
    /// Sends one event; returns the CloudEvent id the gateway gave it (over
    /// HTTP; a gRPC stream has no answer, and the id is empty).
    pub async fn emit(&self, payload: &[u8]) -> Result<String, EmitError> {
        self.emit_event(Event::new(Bytes::copy_from_slice(payload)))
            .await
    }

    /// [`Emitter::emit`] of an event named `id`: sent again (after a crash,
    /// say), it is answered with the same CloudEvent id and delivered once.
    pub async fn emit_with_id(&self, payload: &[u8], id: &str) -> Result<String, EmitError> {
        self.emit_event(Event::new(Bytes::copy_from_slice(payload)).with_id(id))
            .await
    }

    /// Sends one event. Events emitted concurrently (from several tasks, or
    /// with [`Emitter::emit_all`]) go together, in the order emitted.
    pub async fn emit_event(&self, event: Event) -> Result<String, EmitError> {
        let http = match &self.line {
            Line::Http(http) => http,
            Line::Stream(tx) => {
                self.write(tx, Ok(event.payload)).await?;
                return Ok(String::new());
            }
        };
        let body = self.body(event)?;
        http.pile
            .submit(body, |batch| self.send_batch(http, batch))
            .await
            .unwrap_or(Err(EmitError::Stopped))
    }

    /// Sends many events, in order, as few requests as the bounds allow;
    /// one answer each. Over HTTP the events are queued when this is
    /// called, so events of calls made one after another keep that order
    /// even when the returned futures run on different tasks (a reader
    /// with several batches in flight).
    pub fn emit_all(
        &self,
        events: impl IntoIterator<Item = Event>,
    ) -> impl std::future::Future<Output = Vec<Answer>> + Send + 'static {
        let me = self.clone();
        let work = match &self.line {
            Line::Http(http) => Work::Queued(
                http.clone(),
                events
                    .into_iter()
                    .map(|e| self.body(e).map(|b| http.pile.enqueue(b)))
                    .collect(),
            ),
            Line::Stream(_) => Work::Stream(events.into_iter().collect()),
        };
        async move {
            match work {
                Work::Queued(http, tickets) => {
                    let waits = tickets.into_iter().map(|t| {
                        let (me, http) = (&me, &http);
                        async move {
                            match t {
                                Ok(rx) => http
                                    .pile
                                    .wait(rx, |batch| me.send_batch(http, batch))
                                    .await
                                    .unwrap_or(Err(EmitError::Stopped)),
                                Err(e) => Err(e),
                            }
                        }
                    });
                    futures::future::join_all(waits).await
                }
                Work::Stream(events) => {
                    let mut answers = Vec::with_capacity(events.len());
                    for e in events {
                        answers.push(me.emit_event(e).await);
                    }
                    answers
                }
            }
        }
    }

    /// An event's JSON for `/event` and `/events`.
    fn body(&self, event: Event) -> Result<Body, EmitError> {
        serde_json::value::to_raw_value(&EventBody {
            src: &self.config.src,
            payload: base64::engine::general_purpose::STANDARD.encode(&event.payload),
            id: event.id,
        })
        .map_err(|e| EmitError::Refused {
            status: 0,
            body: format!("the event cannot be written as JSON: {e}"),
        })
    }

    /// Sends piled-up events: one alone to the event path, more as one
    /// `POST /events`, until each is taken or refused.
    async fn send_batch(&self, http: &HttpLine, batch: Vec<Waiting<Body, Answer>>) {
        if batch.len() == 1 {
            for (body, answer) in batch {
                let taken = self.post(http, &http.event_path, &body).await;
                let _ = answer.send(taken.map(|text| id_of(&text)));
            }
            return;
        }
        let mut pending = batch;
        while !pending.is_empty() {
            if self.stop.is_cancelled() {
                for (_, answer) in pending {
                    let _ = answer.send(Err(EmitError::Stopped));
                }
                return;
            }
            let bodies: Vec<&serde_json::value::RawValue> =
                pending.iter().map(|(b, _)| &**b).collect();
            let url = format!("{}{EVENTS_PATH}", http.base);
            let wait = match http.client.post(&url).json(&bodies).send().await {
                Ok(r) if r.status().is_success() => {
                    let answer: serde_json::Value = r.json().await.unwrap_or_default();
                    let results = answer["results"].as_array().cloned().unwrap_or_default();
                    let (again, wait) = settle(pending, &results);
                    pending = again;
                    wait
                }
                // A processor-client without /events: one by one.
                Ok(r) if matches!(r.status().as_u16(), 404 | 405) => {
                    for (body, answer) in pending {
                        let taken = self.post(http, &http.event_path, &body).await;
                        let _ = answer.send(taken.map(|text| id_of(&text)));
                    }
                    return;
                }
                Ok(r) if r.status().as_u16() == 503 || r.status().as_u16() == 429 => {
                    retry_after(r.headers())
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    for (_, answer) in pending {
                        let _ = answer.send(Err(EmitError::Refused {
                            status,
                            body: body.clone(),
                        }));
                    }
                    return;
                }
                Ok(_) | Err(_) => Duration::from_millis(200),
            };
            if !pending.is_empty() {
                tokio::select! {
                    _ = self.stop.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }

    /// Reports that the configuration runs (a gRPC call counts as running once
    /// it is open, so there it does nothing).
    pub async fn running(&self) -> Result<(), EmitError> {
        match &self.line {
            Line::Http(http) => {
                let body = serde_json::to_value(&self.config).unwrap_or_default();
                self.post(http, &http.running_path, &body).await.map(|_| ())
            }
            Line::Stream(_) => Ok(()),
        }
    }

    /// Reports that the configuration failed; it shows as Error with `message`.
    /// On a gRPC call this ends the call with FAILED_PRECONDITION.
    pub async fn error(&self, message: &str) -> Result<(), EmitError> {
        match &self.line {
            Line::Http(http) => {
                let body = serde_json::json!({ "src": self.config.src, "message": message });
                self.post(http, &http.error_path, &body).await.map(|_| ())
            }
            Line::Stream(tx) => {
                let status = tonic::Status::failed_precondition(message);
                self.write(tx, Err(status)).await
            }
        }
    }

    async fn write(
        &self,
        tx: &mpsc::Sender<Result<Bytes, tonic::Status>>,
        item: Result<Bytes, tonic::Status>,
    ) -> Result<(), EmitError> {
        tokio::select! {
            _ = self.stop.cancelled() => Err(EmitError::Stopped),
            sent = tx.send(item) => sent.map_err(|_| EmitError::Stopped),
        }
    }

    pub fn config(&self) -> &ConfigData {
        &self.config
    }

    async fn post(
        &self,
        http: &HttpLine,
        path: &str,
        body: &(impl serde::Serialize + ?Sized),
    ) -> Result<String, EmitError> {
        let url = format!("{}{}", http.base, path);
        loop {
            if self.stop.is_cancelled() {
                return Err(EmitError::Stopped);
            }
            let wait = match http.client.post(&url).json(body).send().await {
                Ok(r) if r.status().is_success() => return Ok(r.text().await.unwrap_or_default()),
                Ok(r) if r.status().as_u16() == 503 || r.status().as_u16() == 429 => {
                    retry_after(r.headers())
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status().as_u16();
                    return Err(EmitError::Refused {
                        status,
                        body: r.text().await.unwrap_or_default(),
                    });
                }
                Ok(_) | Err(_) => Duration::from_millis(200),
            };
            tokio::select! {
                _ = self.stop.cancelled() => return Err(EmitError::Stopped),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The CloudEvent id in an answer to one event.
fn id_of(answer: &str) -> String {
    serde_json::from_str::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `Retry-After` in seconds (1 to 60), 1 when absent.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    let secs = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(secs.clamp(1, 60))
}

/// Answers each event of a `/events` answer: taken, or refused for good; the
/// ones refused for now (503) are given back, in order, with how long to wait.
fn settle(
    pending: Vec<Waiting<Body, Answer>>,
    results: &[serde_json::Value],
) -> (Vec<Waiting<Body, Answer>>, Duration) {
    let mut again = Vec::new();
    let mut wait = Duration::from_millis(200);
    for (i, (body, answer)) in pending.into_iter().enumerate() {
        let Some(r) = results.get(i) else {
            again.push((body, answer));
            continue;
        };
        match r["status"].as_u64().unwrap_or(0) {
            200..=299 => {
                let _ = answer.send(Ok(r["id"].as_str().unwrap_or("").to_owned()));
            }
            0 | 429 | 500.. => {
                let secs = r["retry_after"].as_u64().unwrap_or(1).clamp(1, 60);
                wait = wait.max(Duration::from_secs(secs));
                again.push((body, answer));
            }
            status => {
                let _ = answer.send(Err(EmitError::Refused {
                    status: status as u16,
                    body: r.to_string(),
                }));
            }
        }
    }
    (again, wait)
}
