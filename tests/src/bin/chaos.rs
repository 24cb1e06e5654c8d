//! The chaos run, first part: the pipeline (processor-client, durable
//! transformer, an HTTP sensor) under a steady load of `/events` batches
//! named with ids, from forty configurations, while a nemesis driven by a seed
//! SIGKILLs and restarts the transformer and the processor-client, SIGSTOPs
//! the processor-client, and takes the sensor down, one fault at a time or
//! overlapping. A checker keeps what each producer was told and what the
//! sensor received, and reports: events acknowledged, delivered, lost
//! (acknowledged, never delivered: must be 0), order violations within a
//! configuration (must be 0), ids that became two CloudEvents (must be 0),
//! redeliveries (the same CloudEvent again, after a transformer crash),
//! faults by kind, the longest time nothing was acknowledged, and the time
//! from the last fault until everything was delivered.
//!
//! `bash tests/chaos.sh [--seconds N] [--seed S]`. The same seed gives the
//! same schedule of faults; a failing run prints its seed, and keeps the
//! components' logs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use gateway_tests::{bin, free_port, wait_port, write_configmap, Proc};

const CONFIGS: usize = 40;
const BATCH: usize = 10;

/// What the sensor received: per user id, the CloudEvent ids it came as,
/// and per configuration the sequence numbers in order of first arrival.
#[derive(Default)]
struct Received {
    by_origin: HashMap<String, Vec<String>>,
    first_order: BTreeMap<String, Vec<u64>>,
    deliveries: u64,
}

struct Sensor {
    down: AtomicBool,
    got: Mutex<Received>,
}

async fn sensor(port: u16) -> Arc<Sensor> {
    let s = Arc::new(Sensor {
        down: AtomicBool::new(false),
        got: Mutex::new(Received::default()),
    });
    let app = Router::new()
        .fallback(
            |State(s): State<Arc<Sensor>>, headers: axum::http::HeaderMap, body: Bytes| async move {
                if s.down.load(Ordering::Relaxed) {
                    return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down");
                }
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let (id, origin, subject) = (h("ce-id"), h("ce-originid"), h("ce-subject"));
                let seq = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
                    .unwrap_or(u64::MAX);
                let mut got = s.got.lock().unwrap_or_else(|p| p.into_inner());
                got.deliveries += 1;
                let ids = got.by_origin.entry(origin).or_default();
                let first = ids.is_empty();
                ids.push(id);
                if first {
                    got.first_order.entry(subject).or_default().push(seq);
                }
                (axum::http::StatusCode::OK, "ok")
            },
        )
        .with_state(s.clone());
    serve(app, port).await;
    s
}

async fn serve(app: Router, port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    wait_port(port, "an in-process server").await;
}

/// A user server that takes every start and stop: the producers below post
/// the configurations' events themselves.
async fn user_server(port: u16) {
    let app = Router::new()
        .route("/start", post(|| async { "ok" }))
        .route("/stop", post(|| async { "ok" }));
    serve(app, port).await;
}

/// What the producers were told.
#[derive(Default)]
struct Told {
    /// Acknowledged user ids (`cNN-SEQ`).
    acked: HashSet<String>,
    last_ack: Option<Instant>,
    longest_silence: Duration,
}

/// Posts the configuration's events in batches, in order, each until it is
/// acknowledged (a 503 or no answer: the rest of the batch again, later).
async fn produce(src: String, url: String, rate: f64, until: Instant, told: Arc<Mutex<Told>>) {
    let client = gateway_tests::http_client();
    let mut seq = 0u64;
    let pause = Duration::from_secs_f64(BATCH as f64 / rate);
    while Instant::now() < until {
        let mut pending: Vec<u64> = (seq..seq + BATCH as u64).collect();
        seq += BATCH as u64;
        while !pending.is_empty() {
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
            let answer = client
                .post(&url)
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
            let taken = results
                .iter()
                .take_while(|r| r["status"].as_u64() == Some(200))
                .count();
            if taken > 0 {
                let mut t = told.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                if let Some(last) = t.last_ack {
                    t.longest_silence = t.longest_silence.max(now - last);
                }
                t.last_ack = Some(now);
                for n in pending.drain(..taken) {
                    t.acked.insert(format!("{src}-{n}"));
                }
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// The pieces a fault hits, restartable with the same settings.
struct Pieces {
    dir: std::path::PathBuf,
    transformer: Proc,
    processor: Proc,
    tr_port: u16,
    pc_port: u16,
    us_port: u16,
    sensor_port: u16,
}

impl Pieces {
    fn transformer(&self) -> Command {
        let mut c = Command::new(bin("transformer"));
        c.env_clear()
            .env("GATEWAY_NAME", "chaos")
            .env("TRANSFORMER_PORT", self.tr_port.to_string())
            .env("TRANSFORMER_LISTEN_ADDRESS", "127.0.0.1")
            .env(
                "SENSOR_WATCHERS",
                format!("http://127.0.0.1:{}/", self.sensor_port),
            )
            .env("TRANSFORMER_DATA_DIR", self.dir.join("transformer-data"))
            .env("WATCHER_RETRY_CAP", "500ms")
            .env("RUST_LOG", "warn");
        if let Ok(f) = std::env::var("TRANSFORMER_FSYNC") {
            c.env("TRANSFORMER_FSYNC", f);
        }
        c
    }

    fn processor(&self) -> Command {
        let mut c = Command::new(bin("processor-client"));
        c.env_clear()
            .env("GATEWAY_NAME", "chaos")
            .env("GATEWAY_PROCESSOR_CONFIG_MAP", self.dir.join("configs"))
            .env(
                "GATEWAY_PROCESSOR_CLIENT_HTTP_PORT",
                self.pc_port.to_string(),
            )
            .env(
                "GATEWAY_PROCESSOR_SERVER_HTTP_PORT",
                self.us_port.to_string(),
            )
            .env("TRANSFORMER_PORT", self.tr_port.to_string())
            .env("RUST_LOG", "warn");
        c
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillTransformer,
    KillProcessor,
    PauseProcessor,
    SensorDown,
}

const FAULTS: [Fault; 4] = [
    Fault::KillTransformer,
    Fault::KillProcessor,
    Fault::PauseProcessor,
    Fault::SensorDown,
];

/// The faults of the run, from the seed: (start, fault, how long), in order.
fn schedule(seed: u64, seconds: u64) -> Vec<(Duration, Fault, Duration)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut at = Duration::from_secs(2);
    let mut out = Vec::new();
    while at < Duration::from_secs(seconds.saturating_sub(2)) {
        let fault = FAULTS[rng.usize(..FAULTS.len())];
        let lasts = Duration::from_millis(rng.u64(300..4000));
        out.push((at, fault, lasts));
        // Sometimes the next fault overlaps this one.
        at += Duration::from_millis(rng.u64(500..5000));
    }
    out
}

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

/// What the checker found.
struct Verdict {
    acked: usize,
    delivered: usize,
    deliveries: u64,
    missing: Vec<String>,
    disorder: usize,
    /// The first few: configuration, and the sequence numbers out of order.
    disorder_examples: Vec<String>,
    split: usize,
    redelivered: usize,
    silence: Duration,
    settled: Duration,
}

impl Verdict {
    fn failed(&self) -> bool {
        !self.missing.is_empty() || self.disorder > 0 || self.split > 0
    }

    fn print(&self, seed: u64, counts: &BTreeMap<Fault, usize>) {
        println!();
        println!("| measure | value |");
        println!("|---|---|");
        println!("| seed | {seed} |");
        println!("| events acknowledged | {} |", self.acked);
        println!("| events delivered (distinct ids) | {} |", self.delivered);
        println!("| deliveries in all | {} |", self.deliveries);
        println!(
            "| **lost** (acknowledged, never delivered) | {} |",
            self.missing.len()
        );
        println!(
            "| **order violations** (first arrivals, within a configuration) | {} |",
            self.disorder
        );
        println!("| **ids delivered as two CloudEvents** | {} |", self.split);
        println!("| redeliveries of one CloudEvent (transformer crash between delivery and its record) | {} |", self.redelivered);
        for (fault, n) in counts {
            println!("| faults: {fault:?} | {n} |");
        }
        println!(
            "| longest time nothing was acknowledged | {:.1} s |",
            self.silence.as_secs_f64()
        );
        println!(
            "| from the last fault until all delivered | {:.1} s |",
            self.settled.as_secs_f64()
        );
    }
}

impl Pieces {
    /// Starts the transformer and the processor-client (the sensor and the
    /// user server run in this process).
    async fn start(dir: &std::path::Path, sensor_port: u16, us_port: u16) -> Pieces {
        let mut p = Pieces {
            transformer: Proc::spawn("transformer", Command::new("true"), dir),
            processor: Proc::spawn("processor-client", Command::new("true"), dir),
            dir: dir.to_owned(),
            tr_port: free_port(),
            pc_port: free_port(),
            us_port,
            sensor_port,
        };
        p.restart_transformer().await;
        p.restart_processor().await;
        p
    }

    async fn restart_transformer(&mut self) {
        self.transformer = Proc::spawn("transformer", self.transformer(), &self.dir);
        wait_port(self.tr_port, "the transformer").await;
    }

    async fn restart_processor(&mut self) {
        self.processor = Proc::spawn("processor-client", self.processor(), &self.dir);
        wait_port(self.pc_port, "the processor-client").await;
    }
}

/// Runs the seed's faults; returns how many of each, and when the last ended.
async fn nemesis(
    p: &mut Pieces,
    sensor: &Arc<Sensor>,
    seed: u64,
    seconds: u64,
    started: Instant,
) -> (BTreeMap<Fault, usize>, Instant) {
    let mut counts: BTreeMap<Fault, usize> = BTreeMap::new();
    // When the last fault ended (a sensor outage ends after the loop moves on).
    let mut last_fault_end = started;
    for (at, fault, lasts) in schedule(seed, seconds) {
        tokio::time::sleep_until((started + at).into()).await;
        *counts.entry(fault).or_default() += 1;
        println!(
            "{:>6.1} s  {fault:?} for {:.1} s",
            at.as_secs_f64(),
            lasts.as_secs_f64()
        );
        match fault {
            Fault::KillTransformer => {
                p.transformer.kill();
                tokio::time::sleep(lasts).await;
                p.restart_transformer().await;
            }
            Fault::KillProcessor => {
                p.processor.kill();
                tokio::time::sleep(lasts).await;
                p.restart_processor().await;
            }
            Fault::PauseProcessor => {
                p.processor.signal(libc::SIGSTOP);
                tokio::time::sleep(lasts).await;
                p.processor.signal(libc::SIGCONT);
            }
            Fault::SensorDown => {
                sensor.down.store(true, Ordering::Relaxed);
                last_fault_end = last_fault_end.max(Instant::now() + lasts);
                let s = sensor.clone();
                // Overlaps whatever comes next.
                tokio::spawn(async move {
                    tokio::time::sleep(lasts).await;
                    s.down.store(false, Ordering::Relaxed);
                });
            }
        }
        last_fault_end = last_fault_end.max(Instant::now());
    }
    (counts, last_fault_end)
}

/// Waits (two minutes at most) until every acknowledged event arrived, and
/// counts what arrived how.
async fn check(sensor: &Sensor, told: &Mutex<Told>, last_fault_end: Instant) -> Verdict {
    let (acked, silence) = {
        let t = told.lock().unwrap_or_else(|p| p.into_inner());
        (t.acked.clone(), t.longest_silence)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let missing = loop {
        let missing: Vec<String> = {
            let got = sensor.got.lock().unwrap_or_else(|p| p.into_inner());
            acked
                .iter()
                .filter(|id| !got.by_origin.contains_key(*id))
                .cloned()
                .collect()
        };
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let settled = Instant::now().saturating_duration_since(last_fault_end);
    let got = sensor.got.lock().unwrap_or_else(|p| p.into_inner());
    Verdict {
        acked: acked.len(),
        delivered: got.by_origin.len(),
        deliveries: got.deliveries,
        missing,
        disorder: got
            .first_order
            .values()
            .map(|seqs| seqs.windows(2).filter(|w| w[0] > w[1]).count())
            .sum(),
        disorder_examples: got
            .first_order
            .iter()
            .flat_map(|(src, seqs)| {
                seqs.windows(2)
                    .filter(|w| w[0] > w[1])
                    .map(move |w| format!("{src}: {} arrived before {}", w[0], w[1]))
            })
            .take(5)
            .collect(),
        split: got
            .by_origin
            .values()
            .filter(|ids| ids.iter().collect::<HashSet<_>>().len() > 1)
            .count(),
        redelivered: got.by_origin.values().map(|ids| ids.len() - 1).sum(),
        silence,
        settled,
    }
}

#[tokio::main]
async fn main() {
    let seconds = arg("--seconds").unwrap_or(60);
    let seed = arg("--seed").unwrap_or_else(|| fastrand::u64(..));
    let rate: f64 = arg("--rate").map_or(400.0, |r| r as f64);
    println!("chaos run: seed {seed}, {seconds} s, {rate} events/s over {CONFIGS} configurations");
    let dir = tempfile::Builder::new()
        .prefix("chaos-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let configs: BTreeMap<String, String> = (0..CONFIGS)
        .map(|i| (format!("c{i:02}"), "{}".to_owned()))
        .collect();
    write_configmap(&dir.join("configs"), &configs);
    let (us_port, sensor_port) = (free_port(), free_port());
    let sensor = sensor(sensor_port).await;
    user_server(us_port).await;
    let mut p = Pieces::start(&dir, sensor_port, us_port).await;

    let told = Arc::new(Mutex::new(Told::default()));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let url = format!("http://127.0.0.1:{}/events", p.pc_port);
    let producers: Vec<_> = configs
        .keys()
        .map(|src| {
            let rate = rate / CONFIGS as f64;
            tokio::spawn(produce(src.clone(), url.clone(), rate, until, told.clone()))
        })
        .collect();
    let (counts, last_fault_end) = nemesis(&mut p, &sensor, seed, seconds, started).await;
    for producer in producers {
        let _ = producer.await;
    }
    let verdict = check(&sensor, &told, last_fault_end).await;
    verdict.print(seed, &counts);
    p.transformer.kill();
    p.processor.kill();
    if verdict.failed() {
        println!("\nFAILED with seed {seed}; logs kept in {}", dir.display());
        for id in verdict.missing.iter().take(10) {
            println!("lost: {id}");
        }
        for example in &verdict.disorder_examples {
            println!("out of order: {example}");
        }
        std::process::exit(1);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
