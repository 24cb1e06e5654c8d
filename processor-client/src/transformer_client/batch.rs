//! Batching on the link from the processor-client to the transformer. Events that
//! producers post while earlier requests are in flight wait in a queue; the next
//! free request slot takes everything queued (group commit, no timer). An idle
//! gateway therefore sends each event at once, alone, and a loaded one sends
//! fewer, larger requests, which the transformer also stores with one write.
//! Every event still gets its own answer, exactly as a single `POST /` would.
//!
//! Batching starts only after a `POST /` answer carried the transformer's offer
//! (`x-gateway-batch-max-bytes`), and stops if `POST /batch` is not found, so a
//! processor-client in front of a transformer that does not batch keeps working.
//! After such a refusal, offers are ignored for [`COOL_DOWN`]: a transformer
//! that offers batches but has no endpoint for them is not asked again and again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{classify, retry_after, Header, SendError, Trace, TransformerClient};
use gateway_common::error::{error_chain, ErrorCode};
use gateway_common::wire::{self, BatchAnswer, BatchResult};

/// Batch requests in flight at once. Enough to keep both the transformer's cores
/// busy; beyond that, waiting events are better off joining the next batch.
const IN_FLIGHT: usize = 4;
/// Most events in one batch, so one slow admission holds back few answers.
const MAX_EVENTS: usize = 256;
/// Bytes a batch adds around each event (`{"event":…}`, and the names and
/// quotes of its trace and claim fields), besides the fields' values.
const FRAMING: usize = 128;
/// How long offers are ignored after `POST /batch` was refused.
const COOL_DOWN: Duration = Duration::from_secs(60);

/// An event waiting for a batch, and where its answer goes.
struct Pending {
    body: Bytes,
    trace: Trace,
    /// The event's configuration, when its claim goes with it (sharing).
    src: Option<String>,
    /// That claim, asked as the batch is put together.
    claim: Option<Header>,
    answer: oneshot::Sender<Result<Bytes, SendError>>,
}

impl Pending {
    /// About what the event adds to a batch body (the claim's value is 13
    /// digits, within the framing).
    fn cost(&self) -> usize {
        let fields: usize = self.trace.iter().map(|(_, v)| v.len()).sum();
        self.body.len() + FRAMING + fields
    }
}

/// Shared by every clone of a [`TransformerClient`].
pub(super) struct Batching {
    /// False when switched off (`GATEWAY_PROCESSOR_BATCH=false`): offers are ignored.
    enabled: bool,
    /// The largest batch the transformer takes, in bytes; 0 while it has not
    /// offered batches (or stopped taking them).
    max_bytes: AtomicUsize,
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
    /// Offers are ignored until this many milliseconds after `epoch`.
    ignore_until_ms: AtomicU64,
    epoch: OnceLock<Instant>,
}

pub(super) type Answer = oneshot::Receiver<Result<Bytes, SendError>>;

impl Batching {
    pub(super) fn new(enabled: bool) -> Self {
        Batching {
            enabled,
            max_bytes: AtomicUsize::new(0),
            queue: OnceLock::new(),
            ignore_until_ms: AtomicU64::new(0),
            epoch: OnceLock::new(),
        }
    }

    /// Queues the event for the next batch, or gives it back to be sent alone:
    /// when batching is off, or the event is big enough to fill a batch itself.
    pub(super) fn offer(
        &self,
        body: Bytes,
        trace: Trace,
        src: Option<String>,
    ) -> Result<Answer, (Bytes, Trace, Option<String>)> {
        let max = self.max_bytes.load(Ordering::Relaxed);
        let Some(queue) = self.queue.get() else {
            return Err((body, trace, src));
        };
        if max == 0 || body.len() + FRAMING > max / 4 {
            return Err((body, trace, src));
        }
        let (answer, rx) = oneshot::channel();
        match queue.send(Pending {
            body,
            trace,
            src,
            claim: None,
            answer,
        }) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::SendError(p)) => Err((p.body, p.trace, p.src)),
        }
    }

    /// Records what a `POST /` answer said about batches (`0`: not offered), and
    /// starts the batch sender the first time they are.
    pub(super) fn offered(&self, client: &TransformerClient, max_bytes: usize) {
        if !self.enabled || max_bytes == 0 || self.max_bytes.load(Ordering::Relaxed) == max_bytes {
            return;
        }
        if self.now_ms() < self.ignore_until_ms.load(Ordering::Relaxed) {
            return;
        }
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(collect(client.clone(), rx));
            tx
        });
    }

    fn is_on(&self) -> bool {
        self.max_bytes.load(Ordering::Relaxed) > 0
    }

    fn withdrawn(&self) {
        self.ignore_until_ms.store(
            self.now_ms() + COOL_DOWN.as_millis() as u64,
            Ordering::Relaxed,
        );
        self.max_bytes.store(0, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64
    }
}

/// Takes whatever is queued whenever a request slot is free, and sends it.
async fn collect(client: TransformerClient, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let max = client.batching.max_bytes.load(Ordering::Relaxed).max(1);
        let mut bytes = first.cost();
        let mut batch = vec![first];
        while batch.len() < MAX_EVENTS {
            let Ok(next) = rx.try_recv() else { break };
            bytes += next.cost();
            if bytes > max {
                carried = Some(next);
                break;
            }
            batch.push(next);
        }
        let client = client.clone();
        tokio::spawn(async move {
            send(&client, batch).await;
            drop(slot);
        });
    }
}

/// What became of a batch request as a whole.
enum Whole {
    /// One result per event.
    Answered(Vec<BatchResult>),
    /// No event was taken: send each alone, for its own exact answer.
    Singly,
    /// The transformer does not take batches (any more): send each alone, and
    /// stop batching.
    NotOffered,
    /// Every event gets this answer.
    Failed(SendError),
}

async fn send(client: &TransformerClient, batch: Vec<Pending>) {
    // Each claim is asked now, as the events leave; one no longer held is
    // answered here and goes no further.
    let batch: Vec<Pending> = batch
        .into_iter()
        .filter_map(|mut p| match client.claim(p.src.as_deref()) {
            Ok(claim) => {
                p.claim = claim;
                Some(p)
            }
            Err(e) => {
                let _ = p.answer.send(Err(e));
                None
            }
        })
        .collect();
    if batch.len() <= 1 {
        for p in batch {
            let answer = client.send_one(p.body, &p.trace, p.src.as_deref()).await;
            let _ = p.answer.send(answer);
        }
        return;
    }
    // Batching was withdrawn while these waited: they go alone.
    let whole = if client.batching.is_on() {
        post(client, &batch).await
    } else {
        Whole::Singly
    };
    let results = match whole {
        Whole::Answered(results) if results.len() == batch.len() => results,
        Whole::Answered(results) => {
            let why = format!(
                "the transformer answered a batch of {} events with {} results",
                batch.len(),
                results.len()
            );
            return fail_all(batch, SendError::Unavailable(why));
        }
        Whole::Failed(e) => return fail_all(batch, e),
        Whole::NotOffered | Whole::Singly => {
            if matches!(whole, Whole::NotOffered) && client.batching.is_on() {
                tracing::warn!(cool_down = ?COOL_DOWN, "the transformer does not take batches; sending events one by one");
                client.batching.withdrawn();
            }
            let singles = batch.into_iter().map(|p| async move {
                let answer = client.send_one(p.body, &p.trace, p.src.as_deref()).await;
                let _ = p.answer.send(answer);
            });
            futures::future::join_all(singles).await;
            return;
        }
    };
    for (p, r) in batch.into_iter().zip(results) {
        let _ = p.answer.send(answer_of(r));
    }
}

fn fail_all(batch: Vec<Pending>, e: SendError) {
    for p in batch {
        let _ = p.answer.send(Err(e.clone()));
    }
}

/// One event's result as the answer a single `POST /` would have given.
fn answer_of(r: BatchResult) -> Result<Bytes, SendError> {
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Body<'a> {
        Accepted {
            id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            duplicate: Option<bool>,
        },
        Failed {
            error: &'a str,
            detail: &'a str,
        },
    }
    let body = match &r.id {
        Some(id) if r.status < 300 => Body::Accepted {
            id,
            duplicate: r.duplicate,
        },
        _ => Body::Failed {
            error: r.error.as_deref().unwrap_or("error"),
            detail: r.detail.as_deref().unwrap_or(""),
        },
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    classify(r.status, r.retry_after, Bytes::from(body))
}

async fn post(client: &TransformerClient, batch: &[Pending]) -> Whole {
    post_items(
        client,
        batch.iter().map(|p| (&p.body[..], &p.trace, &p.claim)),
    )
    .await
}

/// A batch item's fields besides its event: name and value.
type Fields<'a> = Vec<(&'a str, &'a str)>;

/// `POST /batch` of events, each with its trace and claim headers as fields.
async fn post_items<'a>(
    client: &TransformerClient,
    items: impl Iterator<Item = (&'a [u8], &'a Trace, &'a Option<Header>)>,
) -> Whole {
    let items: Vec<(&[u8], Fields)> = items
        .map(|(body, trace, claim)| {
            let fields = trace
                .iter()
                .chain(claim)
                .filter_map(|(k, v)| Some((*k, v.to_str().ok()?)))
                .collect();
            (body, fields)
        })
        .collect();
    let body = wire::encode_batch(items.iter().map(|(b, t)| (*b, &t[..])));
    let mut request = client
        .client
        .post(client.batch_url.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(auth) = &client.authorization {
        request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Whole::Failed(SendError::Unavailable(error_chain(&e))),
    };
    let status = response.status().as_u16();
    let retry = retry_after(response.headers());
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return Whole::Failed(SendError::Unavailable(error_chain(&e))),
    };
    match status {
        200..=299 => match serde_json::from_slice::<BatchAnswer>(&body) {
            Ok(answer) => Whole::Answered(answer.results),
            Err(e) => Whole::Failed(SendError::Unavailable(format!(
                "the transformer's answer to a batch is not one: {e}"
            ))),
        },
        404 | 405 | 415 | 501 => Whole::NotOffered,
        429 | 500..=599 => Whole::Failed(SendError::Busy {
            retry_after_secs: retry.unwrap_or(1),
            detail: String::from_utf8_lossy(&body).into_owned(),
        }),
        _ => Whole::Singly,
    }
}

/// One event of a `POST /events` request, checked and ready to go on.
pub struct Ordered {
    pub src: String,
    /// Its `{src, payload, id?}` body, as the user server sent it.
    pub body: Bytes,
}

/// Sends a user server's batch on in its order, and answers each event as a
/// single `POST /` would have: in `POST /batch` requests of at most the
/// transformer's offer, one after another (so none overtakes another); one
/// by one while the transformer has not offered batches. Once an event of a
/// configuration is refused for now (503), the later events of that
/// configuration are answered the same without being sent, so that when the
/// user server sends them again they arrive in order.
pub(super) async fn in_order(
    client: &TransformerClient,
    events: Vec<Ordered>,
    trace: &Trace,
) -> Vec<BatchResult> {
    let mut results: Vec<Option<BatchResult>> = vec![None; events.len()];
    let mut held: HashMap<String, BatchResult> = HashMap::new();
    let mut next = 0;
    while next < events.len() {
        let max = client.batching.max_bytes.load(Ordering::Relaxed);
        let mut chunk: Vec<(usize, Option<Header>)> = Vec::new();
        let mut bytes = 0;
        while let Some(event) = events.get(next) {
            let cost = event.body.len() + FRAMING;
            if !chunk.is_empty() && (max == 0 || bytes + cost > max) {
                break;
            }
            next += 1;
            if let Some(r) = held.get(&event.src) {
                results[next - 1] = Some(r.clone());
                continue;
            }
            match client.claim(Some(&event.src)) {
                Ok(claim) => {
                    bytes += cost;
                    chunk.push((next - 1, claim));
                }
                Err(e) => results[next - 1] = Some(result_of(Err(e))),
            }
        }
        let answered = send_chunk(client, &events, &chunk, trace).await;
        for ((at, _), r) in chunk.iter().zip(answered) {
            if r.status == 429 || r.status >= 500 {
                held.entry(events[*at].src.clone())
                    .or_insert_with(|| r.clone());
            }
            results[*at] = Some(r);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| result_of(Err(SendError::Unavailable("not sent".into())))))
        .collect()
}

/// One request for the chunk when batches are offered, else one per event
/// in turn (each waiting for the one before, and none sent after a refusal
/// for now of its configuration).
async fn send_chunk(
    client: &TransformerClient,
    events: &[Ordered],
    chunk: &[(usize, Option<Header>)],
    trace: &Trace,
) -> Vec<BatchResult> {
    if chunk.len() > 1 && client.batching.is_on() {
        let items = chunk
            .iter()
            .map(|(at, claim)| (&events[*at].body[..], trace, claim));
        match post_items(client, items).await {
            Whole::Answered(results) if results.len() == chunk.len() => return results,
            Whole::Answered(results) => {
                let why = format!(
                    "the transformer answered a batch of {} events with {} results",
                    chunk.len(),
                    results.len()
                );
                return vec![result_of(Err(SendError::Unavailable(why))); chunk.len()];
            }
            Whole::Failed(e) => return vec![result_of(Err(e)); chunk.len()],
            Whole::NotOffered => client.batching.withdrawn(),
            Whole::Singly => {}
        }
    }
    let mut out = Vec::with_capacity(chunk.len());
    let mut held: HashMap<&str, BatchResult> = HashMap::new();
    for (at, _) in chunk {
        let event = &events[*at];
        if let Some(r) = held.get(event.src.as_str()) {
            out.push(r.clone());
            continue;
        }
        let claimed = Some(event.src.as_str()).filter(|_| client.claims.is_some());
        let r = result_of(client.send_one(event.body.clone(), trace, claimed).await);
        if r.status == 429 || r.status >= 500 {
            held.insert(&event.src, r.clone());
        }
        out.push(r);
    }
    out
}

/// A single event's outcome as a batch result.
fn result_of(outcome: Result<Bytes, SendError>) -> BatchResult {
    #[derive(serde::Deserialize, Default)]
    struct Answer {
        id: Option<String>,
        duplicate: Option<bool>,
        error: Option<String>,
        detail: Option<String>,
    }
    let answer = |body: &[u8]| serde_json::from_slice::<Answer>(body).unwrap_or_default();
    let failed =
        |status: u16, error: String, detail: String, retry_after: Option<u64>| BatchResult {
            status,
            id: None,
            duplicate: None,
            error: Some(error),
            detail: Some(detail),
            retry_after,
        };
    match outcome {
        Ok(body) => {
            let a = answer(&body);
            BatchResult {
                status: 200,
                id: a.id,
                duplicate: a.duplicate.filter(|d| *d),
                error: None,
                detail: None,
                retry_after: None,
            }
        }
        Err(SendError::Busy {
            retry_after_secs,
            detail,
        }) => {
            let a = answer(detail.as_bytes());
            failed(
                503,
                a.error
                    .unwrap_or_else(|| ErrorCode::Backpressure.as_str().into()),
                a.detail.unwrap_or(detail),
                Some(retry_after_secs.max(1)),
            )
        }
        Err(SendError::Unavailable(why)) => failed(
            503,
            ErrorCode::TransformerUnavailable.as_str().into(),
            format!("the transformer did not take the event: {why}"),
            Some(1),
        ),
        Err(SendError::Rejected { status, code, body }) => {
            let a = answer(&body);
            failed(
                status,
                code.map_or_else(|| "bad_request".into(), |c| c.as_str().into()),
                a.detail
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(1024).collect()),
                None,
            )
        }
    }
}
