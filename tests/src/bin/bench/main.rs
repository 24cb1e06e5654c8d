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
    let args: Vec<String> = std::env::args().collect();
    // The benchmark runs its own servers as processes of this binary:
    // `--bare-forward PORT URL`, `--bare-nats-forward PORT NATS_URL`,
    // `--bare-server PORT`.
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
        return bare_forwarder(port, target("--bare-forward", next)).await;
    }
    if let Some((port, nats)) = mode("--bare-nats-forward") {
        return bare_nats_forwarder(port, target("--bare-nats-forward", nats)).await;
    }
    if let Some((port, _)) = mode("--bare-server") {
        return bare_server(port).await;
    }
    let smoke = std::env::args().any(|a| a == "--smoke");
    // `--only http,nats` runs just those parts (limit, chain, http, triggers, batch, grpc, nats, kafka, ingress, series), for
    // profiling one path at a time.
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_owned).collect());
    let want = |part: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == part));
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
    let size = 100;
    let mut rows = Vec::new();
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

    // 1. The limit: a bare axum server, one hop.
    let mut limit = f64::NAN;
    if want("limit") {
        let (row, l) = bare_hop("limit: bare axum, one hop (latency = round trip)", size, &s).await;
        limit = l;
        rows.push(row);
    }

    // 2. End to end over HTTP.
    let us_port = free_port();
    let starts = start_user_server(us_port).await;
    let sensor_port = free_port();
    let sensor = start_sensor(sensor_port).await;
    let sensor_url = format!("http://127.0.0.1:{sensor_port}/");
    if want("chain") {
        // The ceiling for the gateway's shape: generator -> hop -> hop -> sensor,
        // three HTTP exchanges per event as in the gateway, but no work at all.
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (free_port(), free_port());
        let mut cmd = Command::new(std::env::current_exe().expect("exe"));
        cmd.arg("--bare-forward")
            .arg(b.to_string())
            .arg(&sensor_url);
        let hop_b = Proc::spawn("bare-hop-b", cmd, dir.path());
        let mut cmd = Command::new(std::env::current_exe().expect("exe"));
        cmd.arg("--bare-forward")
            .arg(a.to_string())
            .arg(format!("http://127.0.0.1:{b}/"));
        let hop_a = Proc::spawn("bare-hop-a", cmd, dir.path());
        wait_port(a, "the first bare hop").await;
        wait_port(b, "the second bare hop").await;
        // Each hop answers only once the next has, so the generator's round
        // trip is the end-to-end latency, and what it had answered has arrived.
        let (mut row, _) = measure(
            "ceiling: three bare axum hops, no work (latency = round trip)",
            &format!("http://127.0.0.1:{a}/"),
            None,
            size,
            &s,
            &[("a", hop_a.pid()), ("b", hop_b.pid())],
        )
        .await;
        row.rss = format!(
            "hops {:.1} / {:.1}",
            peak_rss_mib(hop_a.pid()),
            peak_rss_mib(hop_b.pid())
        );
        rows.push(row);
    }
    // Then the same with an fsync before every 2xx: what surviving a power
    // loss costs (the store's writer syncs once per group of writes).
    let http_rows = [
        ("end to end: HTTP sensor", None),
        (
            "end to end: HTTP sensor, TRANSFORMER_FSYNC=always",
            Some("always".to_owned()),
        ),
    ];
    for (name, fsync) in http_rows.into_iter().filter(|_| want("http")) {
        let mut env = vec![("SENSOR_WATCHERS", sensor_url.clone())];
        env.extend(fsync.map(|f| ("TRANSFORMER_FSYNC", f)));
        let before = starts.load(Ordering::Relaxed);
        let g = gateway(&env, s.sources, UserServer::Http(us_port)).await;
        wait_starts(&starts, before + s.sources as u64).await;
        let (mut row, _) = measure(name, &g.pc_url, Some(&sensor), size, &s, &g.pids()).await;
        row.rss = rss_of(&g);
        dump_metrics(&g, name).await;
        rows.push(row);
        drop(g);
    }

    // 32 triggers, each with a CESQL filter wanting 1/32 of the events (two
    // of the 64 configurations): each event still reaches one watcher, so
    // beside the one-watcher row this is what choosing it costs.
    if want("triggers") {
        let name = "32 triggers, CESQL filter each (1/32 of events): HTTP sensor";
        let dir = tempfile::tempdir().expect("tempdir");
        let half = s.sources.div_ceil(2).max(1);
        for i in 0..32 {
            let text = format!(
                "name: t{i}\nsubscriber: {{uri: '{sensor_url}t{i}'}}\n\
                 filters:\n  - cesql: \"subject IN ('bench-{i}', 'bench-{}')\"\n",
                i + half
            );
            std::fs::write(dir.path().join(format!("t{i}.yaml")), text).expect("trigger");
        }
        let env = [("TRANSFORMER_TRIGGERS", dir.path().display().to_string())];
        let before = starts.load(Ordering::Relaxed);
        let g = gateway(&env, s.sources, UserServer::Http(us_port)).await;
        wait_starts(&starts, before + s.sources as u64).await;
        let (mut row, _) = measure(name, &g.pc_url, Some(&sensor), size, &s, &g.pids()).await;
        row.rss = rss_of(&g);
        rows.push(row);
        drop(g);
    }

    // An HTTP user server posting `/events` batches, without and with ids
    // (deduplication remembering each).
    for ids in [false, true].into_iter().filter(|_| want("batch")) {
        let name = if ids {
            "batches of 100 with ids: HTTP sensor"
        } else {
            "batches of 100: HTTP sensor"
        };
        let env = [("SENSOR_WATCHERS", sensor_url.clone())];
        let before = starts.load(Ordering::Relaxed);
        let g = gateway(&env, s.sources, UserServer::Http(us_port)).await;
        wait_starts(&starts, before + s.sources as u64).await;
        let mut row = measure_batches(
            name,
            &g.events_url(),
            &sensor,
            size,
            100,
            ids,
            &s,
            &g.pids(),
        )
        .await;
        row.rss = rss_of(&g);
        rows.push(row);
        drop(g);
    }

    // The same with a gRPC user server streaming the events in.
    let grpc_port = free_port();
    let grpc_load = grpc::start(grpc_port, size).await;
    if want("grpc") {
        let name = "gRPC user server: HTTP sensor";
        let before = grpc_load.calls.load(Ordering::Relaxed);
        let env = [("SENSOR_WATCHERS", sensor_url.clone())];
        let g = gateway(&env, s.sources, UserServer::Grpc(grpc_port)).await;
        grpc::wait_calls(&grpc_load, before + s.sources as u64).await;
        let mut row = measure_grpc(name, &grpc_load, &sensor, s.sources, &s, &g.pids()).await;
        row.rss = rss_of(&g);
        dump_metrics(&g, name).await;
        rows.push(row);
        drop(g);
    }

    // 3. Into NATS core and JetStream.
    if want("nats") || want("grpc") || want("batch") || want("kafka") {
        let nats_dir = tempfile::tempdir().expect("tempdir");
        let nats = NatsServer::start(nats_dir.path()).await;
        let nats_sink = Arc::new(Sink::default());
        {
            let client = async_nats::connect(nats.url()).await.expect("nats");
            let mut sub = client.subscribe("bench.>").await.expect("subscribe");
            let sink = nats_sink.clone();
            tokio::spawn(async move {
                use futures::StreamExt as _;
                let _client = client;
                while let Some(m) = sub.next().await {
                    let time = m.headers.as_ref().and_then(|h| h.get("ce-time"));
                    sink.take(&m.payload, time.map(|v| v.as_str().as_bytes()));
                }
            });
        }
        let scenarios = [
            ("Standard", "into NATS core", Producer::Single),
            ("Streaming", "into JetStream", Producer::Single),
            (
                "Standard",
                "gRPC user server: into NATS core",
                Producer::Grpc,
            ),
            (
                "Standard",
                "batches of 100: into NATS core",
                Producer::Batches(false),
            ),
            (
                "Standard",
                "batches of 100 with ids: into NATS core",
                Producer::Batches(true),
            ),
        ];
        for (ty, name, producer) in scenarios {
            let by_grpc = matches!(producer, Producer::Grpc);
            let part = match producer {
                Producer::Grpc => "grpc",
                Producer::Batches(_) => "batch",
                Producer::Single => "nats",
            };
            if !want(part) {
                continue;
            }
            let starts_before = starts.load(Ordering::Relaxed);
            let env = [
                ("EVENT_PROTOCOL", "NATS".to_owned()),
                ("NATS_URL", nats.url()),
                ("NATS_TYPE", ty.to_owned()),
                ("NATS_CE_MODE", "binary".to_owned()),
            ];
            let calls_before = grpc_load.calls.load(Ordering::Relaxed);
            let us = if by_grpc {
                UserServer::Grpc(grpc_port)
            } else {
                UserServer::Http(us_port)
            };
            let g = gateway(&env, s.sources, us).await;
            if by_grpc {
                grpc::wait_calls(&grpc_load, calls_before + s.sources as u64).await;
            } else {
                wait_starts(&starts, starts_before + s.sources as u64).await;
            }
            let mut procs = g.pids();
            procs.extend(nats.proc.as_ref().map(|p| ("nats", p.pid())));
            let mut row = match producer {
                Producer::Grpc => {
                    measure_grpc(name, &grpc_load, &nats_sink, s.sources, &s, &procs).await
                }
                Producer::Batches(ids) => {
                    let url = g.events_url();
                    measure_batches(name, &url, &nats_sink, size, 100, ids, &s, &procs).await
                }
                Producer::Single => {
                    measure(name, &g.pc_url, Some(&nats_sink), size, &s, &procs)
                        .await
                        .0
                }
            };
            row.rss = rss_of(&g);
            dump_metrics(&g, name).await;
            rows.push(row);
        }
        if want("kafka") {
            rows.extend(kafka::measure_kafka(smoke, &nats, &nats_sink).await);
        }
        drop(nats);
    }

    // 4. The ingress: HTTP request-reply through it to a NATS responder in this
    // process, against the bare hop (latency = round trip).
    let mut ingress_rounds = None;
    if want("ingress") {
        let (more, summary) = ingress::measure_ingress(size, &s).await;
        rows.extend(more);
        ingress_rounds = Some(summary);
    }

    println!("| scenario | events/s at saturation | ratio to limit | p50 ms | p99 ms | p99.9 ms | peak RSS MiB | CPU µs per event | CPU µs per event, all | note |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.0} | {} |",
            r.name,
            r.rate,
            r.rate / limit,
            r.p50,
            r.p99,
            r.p999,
            r.rss,
            r.cpu,
            r.cpu_total,
            r.note
        );
    }
    if let Some(summary) = ingress_rounds {
        println!("\n{summary}");
    }

    // 4. Scaling series (saturation only).
    if !want("series") {
        return;
    }
    println!("\n| series | value | events/s | peak RSS MiB (pc / tr) |");
    println!("|---|---|---|---|");
    let sizes: &[usize] = if smoke {
        &[100, 10 * 1024]
    } else {
        &[100, 10 * 1024, 1024 * 1024]
    };
    for &size in sizes {
        let g = gateway(
            &[("SENSOR_WATCHERS", sensor_url.clone())],
            s.sources,
            UserServer::Http(us_port),
        )
        .await;
        let workers = if size >= 1 << 20 { 8 } else { s.workers };
        let before = sensor.received.load(Ordering::Relaxed);
        let started = Instant::now();
        let load = generate(&g.pc_url, s.sources, size, workers, s.secs, None).await;
        let rate = drained(&sensor, before, load.ok, started)
            .await
            .map_or(f64::NAN, |t| load.ok as f64 / t.as_secs_f64());
        println!("| payload | {} B | {:.0} | {} |", size, rate, rss_of(&g));
    }
    let watcher_counts: &[usize] = if smoke { &[1, 8] } else { &[1, 8, 32] };
    for &n in watcher_counts {
        let urls: Vec<String> = (0..n).map(|i| format!("{sensor_url}w{i}")).collect();
        let g = gateway(
            &[("SENSOR_WATCHERS", urls.join(","))],
            s.sources,
            UserServer::Http(us_port),
        )
        .await;
        let before = sensor.received.load(Ordering::Relaxed);
        let started = Instant::now();
        let load = generate(&g.pc_url, s.sources, 100, s.workers, s.secs, None).await;
        let rate = drained(&sensor, before, load.ok * n as u64, started)
            .await
            .map_or(f64::NAN, |t| load.ok as f64 / t.as_secs_f64());
        println!("| watchers | {n} | {:.0} | {} |", rate, rss_of(&g));
    }
    let config_counts: &[usize] = if smoke { &[1, 100] } else { &[1, 1000, 10_000] };
    for &n in config_counts {
        let before = starts.load(Ordering::Relaxed);
        // Timed from the processes' start: writing ten thousand files first
        // took up to 9 s on this virtual disk, and is not the gateway's.
        let g = gateway(
            &[("SENSOR_WATCHERS", sensor_url.clone())],
            n,
            UserServer::Http(us_port),
        )
        .await;
        wait_starts(&starts, before + n as u64).await;
        println!(
            "| configurations started | {n} | in {:.2} s | {} |",
            g.spawned.elapsed().as_secs_f64(),
            rss_of(&g)
        );
    }
}
