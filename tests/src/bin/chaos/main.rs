//! The chaos run: the whole pipeline under a steady load while a nemesis
//! driven by a seed kills, pauses and cuts its pieces, one fault at a time
//! and overlapping, and a checker counts what was acknowledged against what
//! each watcher received.
//!
//! On free ports: nats-server with JetStream; one durable transformer
//! delivering to an HTTP sensor and to JetStream (read by a durable
//! consumer); the HTTP gateway on two processor-client replicas sharing forty
//! configurations over NATS, whose producers post `/events` batches named with
//! ids; a gRPC gateway (one processor-client, its user server streaming eight
//! configurations); every processor-client reaching the transformer through a
//! relay that can cut connections. The nemesis SIGKILLs and restarts the
//! transformer, either replica, the gRPC processor-client, the gRPC user
//! server and nats-server, SIGSTOPs a replica (often past its lease), takes
//! the sensor down and resets connections.
//!
//! The table: per watcher, events acknowledged, delivered, lost
//! (acknowledged, never delivered: must be 0), order violations within a
//! configuration (must be 0), ids delivered as two CloudEvents (must be 0),
//! redeliveries of one CloudEvent; events taken through a replica after the
//! other replica started their configuration (must be 0); faults by kind; the longest time nothing was
//! acknowledged; the time from the last fault until everything was delivered.
//!
//! The load: the producers go flat out for a few seconds first, then at half
//! of what they reached (or `--rate`), the gRPC streams at a quarter of that.
//!
//! `bash tests/chaos.sh [--minutes N | --seconds N] [--seed S] [--rate EVENTS_PER_SECOND]`.
//! The same seed gives the same schedule of faults; a failing run prints its
//! seed and what it lost, and keeps the components' logs.

mod check;
mod grpc;
mod nemesis;
mod pieces;
mod producers;
mod watchers;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use gateway_tests::{wait_port, write_configmap};

use check::WatcherVerdict;
use grpc::GrpcSource;
use nemesis::Fault;
use pieces::{Pieces, Ports};
use producers::{Owners, Pace, Producer, Told};

/// Configurations of the HTTP gateway, and of the gRPC one.
const HTTP_CONFIGS: usize = 40;
const GRPC_CONFIGS: usize = 8;
const REPLICAS: usize = 2;

/// Serves `app` on `port` in this process.
async fn serve(app: Router, port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    wait_port(port, "an in-process server").await;
}

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

/// The run's settings.
struct Settings {
    seconds: u64,
    seed: u64,
    /// Events per second from the HTTP gateway's producers (the gRPC
    /// configurations stream a quarter of it besides); unset: half of what
    /// they reach flat out at the start of the run.
    rate: Option<f64>,
}

/// What the run found.
struct Report {
    acked: usize,
    /// Events refused, and requests unanswered, as the producers were told.
    refused: u64,
    unanswered: u64,
    watchers: Vec<WatcherVerdict>,
    two_at_once: Vec<String>,
    /// Events the two-replicas check could place (taken, not as duplicates).
    two_at_once_checked: usize,
    grpc_sent: u64,
    /// HTTP events per second the producers were set to.
    rate: f64,
    counts: BTreeMap<Fault, usize>,
    silence: Duration,
    settled: Duration,
}

impl Report {
    fn failed(&self) -> bool {
        !self.two_at_once.is_empty()
            || self
                .watchers
                .iter()
                .any(|w| !w.missing.is_empty() || !w.disorder.is_empty() || !w.split.is_empty())
    }

    fn print(&self, s: &Settings) {
        self.print_watchers();
        self.print_run(s);
    }

    /// The table of what each watcher got.
    fn print_watchers(&self) {
        println!();
        println!(
            "| measure | {} |",
            self.watchers
                .iter()
                .map(|w| w.name)
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---|{}", "---|".repeat(self.watchers.len()));
        let row = |what: &str, f: &dyn Fn(&WatcherVerdict) -> String| {
            let cells: Vec<String> = self.watchers.iter().map(f).collect();
            println!("| {what} | {} |", cells.join(" | "));
        };
        row("events acknowledged (HTTP, with ids)", &|_| {
            self.acked.to_string()
        });
        row("events delivered (distinct, both gateways)", &|w| {
            w.delivered.to_string()
        });
        row("deliveries in all", &|w| w.deliveries.to_string());
        row("**lost** (acknowledged, never delivered)", &|w| {
            w.missing.len().to_string()
        });
        row(
            "**order violations** (first arrivals, per configuration)",
            &|w| w.disorder.len().to_string(),
        );
        row("**ids delivered as two CloudEvents**", &|w| {
            w.split.len().to_string()
        });
        row("redeliveries of one CloudEvent", &|w| {
            w.redelivered.to_string()
        });
        row("gRPC events put on a call / delivered", &|w| {
            format!("{} / {}", self.grpc_sent, w.grpc_delivered)
        });
        row("gRPC events (no ids) delivered as two CloudEvents", &|w| {
            w.grpc_split.to_string()
        });
    }

    /// The table of the run as a whole.
    fn print_run(&self, s: &Settings) {
        println!();
        println!("| run | value |");
        println!("|---|---|");
        println!("| seed | {} |", s.seed);
        println!(
            "| producers told: events refused (503, 409) / requests unanswered | {} / {} |",
            self.refused, self.unanswered
        );
        println!(
            "| length | {} s at {:.0} events/s (HTTP) and a quarter of that (gRPC) |",
            s.seconds, self.rate
        );
        println!(
            "| **events taken through a replica after the other started their configuration** (of {} placed) | {} |",
            self.two_at_once_checked,
            self.two_at_once.len()
        );
        for (fault, n) in &self.counts {
            println!("| faults: {fault:?} | {n} |");
        }
        println!(
            "| longest time nothing was acknowledged | {:.1} s |",
            self.silence.as_secs_f64()
        );
        println!(
            "| from the end of the last fault until all acknowledged by then was delivered | {:.1} s |",
            self.settled.as_secs_f64()
        );
    }

    fn print_failures(&self) {
        for w in &self.watchers {
            for id in w.missing.iter().take(10) {
                println!("lost at the {}: {id}", w.name);
            }
            for line in w.split.iter().take(5) {
                println!("two CloudEvents at the {}: {line}", w.name);
            }
            for d in w.disorder.iter().take(5) {
                println!("out of order at the {}: {d}", w.name);
            }
        }
        for line in &self.two_at_once {
            println!("two replicas at once: {line}");
        }
    }
}

fn write_configs(dir: &std::path::Path) {
    let http: BTreeMap<String, String> = (0..HTTP_CONFIGS)
        .map(|i| (format!("c{i:02}"), "{}".to_owned()))
        .collect();
    write_configmap(&dir.join("configs"), &http);
    let grpc: BTreeMap<String, String> = (0..GRPC_CONFIGS)
        .map(|i| (format!("g{i:02}"), "{}".to_owned()))
        .collect();
    write_configmap(&dir.join("grpc-configs"), &grpc);
}

async fn run(s: &Settings, dir: &std::path::Path) -> Report {
    write_configs(dir);
    let ports = Ports::new(REPLICAS);
    let started = Instant::now();
    let sensor = watchers::http_sensor(ports.sensor, started).await;
    let owners = Arc::new(Owners::default());
    for (i, port) in ports.user_servers.iter().enumerate() {
        producers::user_server(*port, i, owners.clone()).await;
    }
    let grpc = grpc::start(ports.grpc_user_server, Duration::from_millis(40)).await;
    let mut p = Pieces::start(dir, ports).await;
    let js = watchers::jetstream_consumer(p.nats.url(), "CHAOS".into(), started).await;

    let told = Arc::new(Mutex::new(Told::default()));
    let pace = Arc::new(Pace::default());
    let until = Instant::now() + CALIBRATION + Duration::from_secs(s.seconds);
    let producers: Vec<_> = (0..HTTP_CONFIGS)
        .map(|i| {
            tokio::spawn(
                Producer {
                    src: format!("c{i:02}"),
                    pc_ports: p.ports.replicas.clone(),
                    owners: owners.clone(),
                    pace: pace.clone(),
                    started,
                    until,
                    told: told.clone(),
                }
                .run(),
            )
        })
        .collect();
    let targets = nemesis::Targets {
        sensor: sensor.clone(),
        grpc: grpc.clone(),
    };
    let rate = calibrate(s, &told, &pace, &grpc).await;
    let plan = nemesis::schedule(s.seed, s.seconds);
    let (counts, last_fault_end) =
        nemesis::run(&mut p, &targets, plan, started, Instant::now()).await;
    for producer in producers {
        let _ = producer.await;
    }
    // The gRPC streams stop with the run: what was read by then is counted.
    grpc.kill();
    check::settle(&[&sensor, &js], &told).await;
    p.stop();
    let told = told.lock().unwrap_or_else(|p| p.into_inner());
    let (two_at_once, two_at_once_checked) = check::two_at_once(&sensor, &told, &owners.starts());
    Report {
        acked: told.acked.len(),
        refused: told.refused,
        unanswered: told.unanswered,
        watchers: vec![check::verdict(&sensor, &told), check::verdict(&js, &told)],
        two_at_once,
        two_at_once_checked,
        grpc_sent: grpc.sent().values().sum(),
        counts,
        rate,
        silence: told.longest_silence,
        settled: check::recovery(&[&sensor, &js], &told, last_fault_end - started),
    }
}

/// How long the producers go flat out first, before any fault.
const CALIBRATION: Duration = Duration::from_secs(8);

/// Lets the producers go flat out (the gRPC streams at 25 events a second
/// each meanwhile) and sets their pace to half of what they reached, unless
/// the rate was given, and the gRPC streams' to a quarter of that; returns
/// the HTTP events per second set.
async fn calibrate(s: &Settings, told: &Mutex<Told>, pace: &Pace, grpc: &GrpcSource) -> f64 {
    let acked = || told.lock().unwrap_or_else(|p| p.into_inner()).acked.len();
    let rate = match s.rate {
        Some(rate) => rate,
        None => {
            tokio::time::sleep(CALIBRATION / 2).await;
            let (n, t) = (acked(), Instant::now());
            tokio::time::sleep(CALIBRATION / 2).await;
            let flat_out = (acked() - n) as f64 / t.elapsed().as_secs_f64();
            println!("flat out: {flat_out:.0} events/s acknowledged; the run goes at half of that");
            flat_out / 2.0
        }
    };
    pace.set(rate / HTTP_CONFIGS as f64);
    grpc.pace(Duration::from_secs_f64(GRPC_CONFIGS as f64 / (rate / 4.0)));
    rate
}

#[tokio::main]
async fn main() {
    let s = Settings {
        seconds: arg("--seconds")
            .or_else(|| arg("--minutes").map(|m| m * 60))
            .unwrap_or(60),
        seed: arg("--seed").unwrap_or_else(|| fastrand::u64(..)),
        rate: arg("--rate").map(|r| r as f64),
    };
    println!(
        "chaos run: seed {}, {} s, {HTTP_CONFIGS} HTTP configurations on {REPLICAS} replicas, {GRPC_CONFIGS} gRPC ones",
        s.seed, s.seconds
    );
    let dir = tempfile::Builder::new()
        .prefix("chaos-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let report = run(&s, &dir).await;
    report.print(&s);
    if report.failed() {
        println!(
            "\nFAILED with seed {}; logs kept in {}",
            s.seed,
            dir.display()
        );
        report.print_failures();
        std::process::exit(1);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
