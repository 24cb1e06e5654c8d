//! The HTTP configurations' side: one user server per processor-client
//! replica (each told by its replica which configurations it runs, as a
//! sidecar is), and per configuration a producer posting `/events` batches
//! named with ids to the replica running it, each batch until every event of
//! it is acknowledged. What each producer was told is kept for the checker:
//! which ids were acknowledged, when, and through which replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;

/// Events per `/events` request.
pub const BATCH: usize = 10;

/// Which replica runs each configuration now, as the user servers were told
/// (the latest start wins; a stop from the replica running it clears it),
/// and every start, when it came.
#[derive(Default)]
pub struct Owners {
    now: Mutex<HashMap<String, usize>>,
    starts: Mutex<Vec<Start>>,
}

/// A replica starting a configuration, as its user server was told.
#[derive(Clone, Debug)]
pub struct Start {
    pub at: SystemTime,
    pub src: String,
    pub replica: usize,
}

impl Owners {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn of(&self, src: &str) -> Option<usize> {
        self.map().get(src).copied()
    }

    pub fn starts(&self) -> Vec<Start> {
        self.starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn started(&self, src: &str, replica: usize) {
        self.map().insert(src.to_owned(), replica);
        self.starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Start {
                at: SystemTime::now(),
                src: src.to_owned(),
                replica,
            });
    }
}

/// The user server of replica `replica`: takes every start and stop, and
/// notes them in `owners` (the producers post the events themselves).
pub async fn user_server(port: u16, replica: usize, owners: Arc<Owners>) {
    let (on_start, on_stop) = (owners.clone(), owners);
    let app = Router::new()
        .route(
            "/start",
            post(move |Json(body): Json<serde_json::Value>| async move {
                if let Some(src) = body["src"].as_str() {
                    on_start.started(src, replica);
                }
                "ok"
            }),
        )
        .route(
            "/stop",
            post(move |Json(body): Json<serde_json::Value>| async move {
                if let Some(src) = body["src"].as_str() {
                    let mut map = on_stop.map();
                    if map.get(src) == Some(&replica) {
                        map.remove(src);
                    }
                }
                "ok"
            }),
        );
    crate::serve(app, port).await;
}

/// An acknowledgement of one event.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    /// When the producer got it, since the run started.
    pub at: Duration,
    pub replica: usize,
    /// Answered as a duplicate: taken before, through whichever replica.
    pub duplicate: bool,
}

/// What the producers were told.
#[derive(Default)]
pub struct Told {
    /// Acknowledged user ids (`cNN-SEQ`).
    pub acked: HashMap<String, Ack>,
    /// Events answered with a refusal (503, 409 not_owner, ...).
    pub refused: u64,
    /// Requests with no answer (the connection refused or reset, a timeout)
    /// or refused whole.
    pub unanswered: u64,
    pub last_ack: Option<Instant>,
    pub longest_silence: Duration,
}

impl Told {
    fn ack(&mut self, acks: impl Iterator<Item = (String, Ack)>) {
        let now = Instant::now();
        if let Some(last) = self.last_ack {
            self.longest_silence = self.longest_silence.max(now - last);
        }
        self.last_ack = Some(now);
        self.acked.extend(acks);
    }
}

/// How fast each producer posts: flat out, or so many events a second.
#[derive(Default)]
pub struct Pace {
    /// Thousandths of an event per second, per producer; 0: flat out.
    milli_per_second: AtomicU64,
}

impl Pace {
    pub fn set(&self, events_per_second: f64) {
        self.milli_per_second
            .store((events_per_second * 1000.0) as u64, Ordering::Relaxed);
    }

    /// The pause after a batch.
    fn pause(&self) -> Duration {
        match self.milli_per_second.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            milli => Duration::from_secs_f64(BATCH as f64 * 1000.0 / milli as f64),
        }
    }
}

/// Where and how fast one configuration's producer posts.
pub struct Producer {
    pub src: String,
    /// The processor-client port of each replica.
    pub pc_ports: Arc<Vec<u16>>,
    pub owners: Arc<Owners>,
    /// The pace every producer keeps, changed as the run goes.
    pub pace: Arc<Pace>,
    pub started: Instant,
    pub until: Instant,
    pub told: Arc<Mutex<Told>>,
}

impl Producer {
    /// Posts the configuration's events in batches, in order, each until it
    /// is acknowledged (a refusal or no answer: the rest of the batch again,
    /// later, to whichever replica runs the configuration then).
    pub async fn run(self) {
        let client = gateway_tests::http_client();
        let mut seq = 0u64;
        while Instant::now() < self.until {
            let mut pending: Vec<u64> = (seq..seq + BATCH as u64).collect();
            seq += BATCH as u64;
            while !pending.is_empty() {
                let taken = match self.owners.of(&self.src) {
                    Some(replica) => self.post(&client, replica, &pending).await,
                    None => 0,
                };
                if taken == 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                pending.drain(..taken);
            }
            tokio::time::sleep(self.pace.pause()).await;
        }
    }

    /// One `/events` request; how many of its events, from the first, were
    /// taken.
    async fn post(&self, client: &reqwest::Client, replica: usize, pending: &[u64]) -> usize {
        let src = &self.src;
        let items: Vec<serde_json::Value> = pending
            .iter()
            .map(|n| {
                let data = serde_json::json!({ "src": src, "seq": n }).to_string();
                serde_json::json!({
                    "src": src,
                    "payload": base64::engine::general_purpose::STANDARD.encode(data),
                    "id": format!("{src}-{n}"),
                })
            })
            .collect();
        let url = format!("http://127.0.0.1:{}/events", self.pc_ports[replica]);
        let answer = client
            .post(url)
            .json(&items)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let results: Vec<serde_json::Value> = match answer {
            Ok(r) if r.status().is_success() => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["results"].as_array().cloned())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        {
            let mut told = self.told.lock().unwrap_or_else(|p| p.into_inner());
            if results.is_empty() {
                told.unanswered += 1;
            }
            told.refused += results
                .iter()
                .filter(|r| r["status"].as_u64() != Some(200))
                .count() as u64;
        }
        let taken = results
            .iter()
            .take_while(|r| r["status"].as_u64() == Some(200))
            .count()
            .min(pending.len());
        if taken > 0 {
            let at = self.started.elapsed();
            let acks = pending.iter().zip(&results).take(taken).map(|(n, r)| {
                let ack = Ack {
                    at,
                    replica,
                    duplicate: r["duplicate"].as_bool() == Some(true),
                };
                (format!("{src}-{n}"), ack)
            });
            let mut told = self.told.lock().unwrap_or_else(|p| p.into_inner());
            told.ack(acks);
        }
        taken
    }
}
