//! The gateway's benchmark: one run measures the machine's own limit (a bare axum
//! server behind the same load generator, one HTTP hop) and the gateway end to end
//! (generator as user server -> processor-client -> transformer -> sensor), into
//! NATS core and into JetStream, and prints each as events per second at
//! saturation, latency at half that rate (stamped by the producer, read at the
//! sensor), peak resident memory of each component, and the ratio to the limit.
//! Then the scaling series: payload size, watchers, configurations.
//!
//! `bash tests/bench.sh` builds release binaries and runs it; `--smoke` runs every
//! scenario for a moment, which is what CI does to keep it working.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use gateway_tests::{bin, free_port, wait_port, write_configmap, NatsServer, Proc};

mod grpc;
mod ingress;
mod kafka;
mod load;
mod measure;
mod responder;
mod scenarios;
mod servers;

use load::*;
use measure::*;
use servers::*;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

struct Gateway {
    transformer: Proc,
    processor: Proc,
    pc_url: String,
    tr_metrics: String,
    /// When its processes were started, after its configurations were written.
    spawned: Instant,
    _dir: tempfile::TempDir,
}

/// With `BENCH_METRICS=1`, prints the transformer's store-write and delivery
/// histograms to stderr after a scenario: where the tail latency is spent.
async fn dump_metrics(g: &Gateway, scenario: &str) {
    if std::env::var_os("BENCH_METRICS").is_none() {
        return;
    }
    let Ok(answer) = reqwest::get(&g.tr_metrics).await else {
        return;
    };
    let text = answer.text().await.unwrap_or_default();
    eprintln!("## {scenario}");
    for line in text.lines().filter(|l| {
        l.starts_with("transformer_store_write") || l.starts_with("transformer_delivery_duration")
    }) {
        eprintln!("{line}");
    }
}

/// The user server a gateway drives: the HTTP one, or the gRPC load generator.
#[derive(Clone, Copy)]
enum UserServer {
    Http(u16),
    Grpc(u16),
}

async fn gateway(transformer_env: &[(&str, String)], sources: usize, us: UserServer) -> Gateway {
    let configs: BTreeMap<String, String> = (0..sources)
        .map(|i| (format!("bench-{i}"), "{}".to_owned()))
        .collect();
    gateway_with(transformer_env, &configs, us, free_port()).await
}

/// A gateway with these configurations, its processor-client on `pc_port`.
async fn gateway_with(
    transformer_env: &[(&str, String)],
    configs: &BTreeMap<String, String>,
    us: UserServer,
    pc_port: u16,
) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_dir = dir.path().join("configs");
    write_configmap(&cfg_dir, configs);
    let spawned = Instant::now();
    let tr_port = free_port();
    let mut t = Command::new(bin("transformer"));
    t.env_clear()
        .env("GATEWAY_NAME", "bench")
        .env("TRANSFORMER_PORT", tr_port.to_string())
        .env("TRANSFORMER_DATA_DIR", dir.path().join("data"))
        .env("TRANSFORMER_MAX_BODY_BYTES", (4 << 20).to_string())
        .env("RUST_LOG", "warn");
    for (k, v) in transformer_env {
        t.env(k, v);
    }
    // Allocator settings pass through, to compare them without rebuilding.
    let allocator: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MIMALLOC_"))
        .collect();
    t.envs(allocator.iter().cloned());
    // `BENCH_TR_X=v` sets the transformer's `X=v`, to try a setting without a rebuild.
    t.envs(
        std::env::vars()
            .filter_map(|(k, v)| k.strip_prefix("BENCH_TR_").map(|k| (k.to_owned(), v))),
    );
    let transformer = Proc::spawn("transformer", t, dir.path());
    wait_port(tr_port, "the transformer").await;
    let mut p = Command::new(bin("processor-client"));
    p.env_clear()
        .env("GATEWAY_NAME", "bench")
        .env("GATEWAY_PROCESSOR_CONFIG_MAP", &cfg_dir)
        .env("GATEWAY_PROCESSOR_CLIENT_HTTP_PORT", pc_port.to_string())
        .env("GATEWAY_PROCESSOR_MAX_BODY_BYTES", (4 << 20).to_string())
        .env("TRANSFORMER_PORT", tr_port.to_string())
        .env("RUST_LOG", "warn")
        .envs(allocator);
    match us {
        UserServer::Http(port) => p.env("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", port.to_string()),
        UserServer::Grpc(port) => p
            .env("GATEWAY_PROCESSOR_SERVER_PROTOCOL", "grpc")
            .env("GATEWAY_PROCESSOR_SERVER_GRPC_PORT", port.to_string()),
    };
    let processor = Proc::spawn("processor-client", p, dir.path());
    wait_port(pc_port, "the processor-client").await;
    Gateway {
        transformer,
        processor,
        pc_url: format!("http://127.0.0.1:{pc_port}/event"),
        tr_metrics: format!("http://127.0.0.1:{tr_port}/metrics"),
        spawned,
        _dir: dir,
    }
}

async fn wait_starts(starts: &AtomicU64, n: u64) -> Duration {
    let t0 = Instant::now();
    while starts.load(Ordering::Relaxed) < n && t0.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t0.elapsed()
}

/// How the events of a NATS scenario come in.
#[derive(Clone, Copy)]
enum Producer {
    /// The HTTP user server, one `POST /event` per event.
    Single,
    /// The gRPC load generator.
    Grpc,
    /// `/events` batches of 100, with ids or not.
    Batches(bool),
}

impl Gateway {
    /// The processor-client's `POST /events`.
    fn events_url(&self) -> String {
        self.pc_url.replace("/event", "/events")
    }

    fn pids(&self) -> Vec<(&'static str, i32)> {
        vec![("pc", self.processor.pid()), ("tr", self.transformer.pid())]
    }
}

fn rss_of(g: &Gateway) -> String {
    format!(
        "pc {:.1} / tr {:.1}",
        peak_rss_mib(g.processor.pid()),
        peak_rss_mib(g.transformer.pid())
    )
}

/// The bare hop measured: load generator to an axum server that answers at
/// once. Returns its row and its rate.
async fn bare_hop(name: &str, size: usize, s: &Settings) -> (Row, f64) {
    let bare_port = free_port();
    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    cmd.arg("--bare-server").arg(bare_port.to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = Proc::spawn("bare-axum", cmd, dir.path());
    wait_port(bare_port, "the bare server").await;
    let url = format!("http://127.0.0.1:{bare_port}/");
    let (mut row, rate) = measure(name, &url, None, size, s, &[("server", bare.pid())]).await;
    row.rss = format!("{:.1}", peak_rss_mib(bare.pid()));
    (row, rate)
}

#[tokio::main]
async fn main() {
    // Every client of the run (load, forwarders, metrics) uses ring, whichever
    // scenario comes first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    if serve_as_helper(&args).await {
        return;
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    // `--only http,nats` runs just those parts (limit, chain, http, triggers,
    // batch, grpc, nats, kafka, ingress, series), for profiling one path at a time.
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_owned).collect());
    let s = Settings {
        secs: if smoke { 0.5 } else { 5.0 },
        workers: if smoke { 8 } else { 64 },
        // As many configurations as producers: a gRPC user server streams on
        // each configuration, and the processor-client holds one of its events
        // at a time, so both kinds of user server have 64 events in flight.
        // `BENCH_SOURCES=n` tries another number.
        sources: std::env::var("BENCH_SOURCES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if smoke { 8 } else { 64 }),
    };
    print_machine(&s);
    let mut run = scenarios::Run::start(s, smoke, only).await;
    let limit = run.limit().await;
    run.chain().await;
    run.http().await;
    run.triggers().await;
    run.batches().await;
    run.grpc().await;
    run.nats().await;
    let ingress_rounds = run.ingress().await;
    print_table(&run.rows, limit);
    if let Some(summary) = ingress_rounds {
        println!("\n{summary}");
    }
    run.series().await;
}

/// The benchmark runs its own servers as processes of this binary:
/// `--bare-forward PORT URL`, `--bare-nats-forward PORT NATS_URL`,
/// `--bare-server PORT`. True when this process was one (and it ended).
async fn serve_as_helper(args: &[String]) -> bool {
    let mode = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        let port: u16 = args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a port"));
        Some((port, args.get(i + 2).cloned()))
    };
    let target = |flag: &str, t: Option<String>| t.unwrap_or_else(|| panic!("{flag} PORT TARGET"));
    if let Some((port, next)) = mode("--bare-forward") {
        bare_forwarder(port, target("--bare-forward", next)).await;
    } else if let Some((port, nats)) = mode("--bare-nats-forward") {
        bare_nats_forwarder(port, target("--bare-nats-forward", nats)).await;
    } else if let Some((port, _)) = mode("--bare-server") {
        bare_server(port).await;
    } else {
        return false;
    }
    true
}

fn print_machine(s: &Settings) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "machine: {} cores, {cpu}; {} s per measurement, {} producers, {} configurations\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s.secs,
        s.workers,
        s.sources
    );
}

fn print_table(rows: &[Row], limit: f64) {
    println!("| scenario | events/s at saturation | ratio to limit | p50 ms | p99 ms | p99.9 ms | peak RSS MiB | CPU µs per event | CPU µs per event, all | note |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
            r.name,
            r.rate,
            r.rate / limit,
            r.p50,
            r.p99,
            r.p999,
            r.rss,
            r.cpu,
            measure::micros(r.cpu_total),
            r.note
        );
    }
}
