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

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Where latencies are read: the sensor (or NATS subscriber) of a scenario.
#[derive(Default)]
struct Sink {
    received: AtomicU64,
    recording: AtomicBool,
    /// (arrival, latency, of which before the transformer took it) in ns.
    latencies: Mutex<Vec<(u64, u64, u64)>>,
}

impl Sink {
    /// `ce_time` is the CloudEvent's `time`, which the transformer sets when the
    /// event reaches it: it splits the latency into before and after.
    fn take(&self, body: &[u8], ce_time: Option<&[u8]>) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if self.recording.load(Ordering::Relaxed) && body.len() >= 8 {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&body[..8]);
            let sent = u64::from_le_bytes(ts);
            let now = now_ns();
            let at_transformer = ce_time
                .and_then(|t| std::str::from_utf8(t).ok())
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map_or(sent, |t| t.unix_timestamp_nanos() as u64);
            self.latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((
                    now,
                    now.saturating_sub(sent),
                    at_transformer.saturating_sub(sent),
                ));
        }
    }
}

async fn serve(router: Router, port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
}

/// An HTTP sensor in this process: any path, binary-mode CloudEvents.
async fn start_sensor(port: u16) -> Arc<Sink> {
    let sink = Arc::new(Sink::default());
    let router = Router::new()
        .fallback(
            |State(s): State<Arc<Sink>>, headers: axum::http::HeaderMap, body: Bytes| async move {
                s.take(&body, headers.get("ce-time").map(|v| v.as_bytes()));
                "ok"
            },
        )
        .with_state(sink.clone());
    serve(router, port).await;
    wait_port(port, "the bench sensor").await;
    sink
}

/// The user server: accepts every start, and counts them.
async fn start_user_server(port: u16) -> Arc<AtomicU64> {
    let starts = Arc::new(AtomicU64::new(0));
    let router =
        Router::new()
            .route(
                "/start",
                post(|State(n): State<Arc<AtomicU64>>| async move {
                    n.fetch_add(1, Ordering::Relaxed);
                    "ok"
                }),
            )
            .route("/stop", post(|| async { "ok" }))
            .route(
                "/count",
                get(|State(n): State<Arc<AtomicU64>>| async move {
                    n.load(Ordering::Relaxed).to_string()
                }),
            )
            .with_state(starts.clone());
    serve(router, port).await;
    wait_port(port, "the bench user server").await;
    starts
}

/// `size` bytes whose first 8 are the send time, `sent_ns`.
fn stamped(size: usize, sent_ns: u64) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(8)];
    p[..8].copy_from_slice(&sent_ns.to_le_bytes());
    p
}

/// [`stamped`] as the `payload` of a `{src, payload}` body.
fn payload(size: usize, sent_ns: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(stamped(size, sent_ns))
}

struct Load {
    ok: u64,
    refused: u64,
    rtts: Vec<u64>,
    /// How late a paced producer's timer woke it, in ns, when its previous
    /// request had already finished: the generator's own scheduling delay on
    /// the shared cores, which the latency figures include.
    woke_late: Vec<u64>,
}

/// Lateness of a paced send that is put down to the timer, not counted.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// `workers` producers POST `{src, payload}` to `url` for `secs`; with a `rate`,
/// the total is paced to that many per second, otherwise they go flat out.
///
/// Paced producers are spread evenly over the period, not started in step (64
/// timers firing together are a burst of 64 every period, which measures how a
/// burst drains, not latency at a rate). Latency counts from when each event was
/// due, not when it was sent, once it is later than [`TIMER_SLACK`]: a producer
/// held up by a slow answer sends late, and that wait is part of the latency
/// (no coordinated omission).
async fn generate(
    url: &str,
    sources: usize,
    size: usize,
    workers: usize,
    secs: f64,
    rate: Option<f64>,
) -> Load {
    // One client for the whole run, so the half-load phase reuses the
    // saturated phase's connections: 64 new connections at once are a burst
    // the gateway would have to absorb, and would be measured as its latency.
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT
        .get_or_init(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .build()
                .expect("client")
        })
        .clone();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let (epoch, epoch_ns) = (tokio::time::Instant::now(), now_ns());
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = client.clone();
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut load = Load {
                ok: 0,
                refused: 0,
                rtts: Vec::new(),
                woke_late: Vec::new(),
            };
            let mut idle_since = tokio::time::Instant::now();
            let mut tick = rate.map(|r| {
                let period = Duration::from_secs_f64(workers as f64 / r);
                let phase = period.mul_f64(w as f64 / workers as f64);
                // Burst: a late producer catches up, so the rate holds.
                tokio::time::interval_at(epoch + phase, period)
            });
            let mut n = w;
            while Instant::now() < deadline {
                let due = match tick.as_mut() {
                    Some(t) => t.tick().await,
                    None => tokio::time::Instant::now(),
                };
                // The timer fires up to a millisecond after `due` (tokio's timer
                // resolution): that lag is the generator's, not the gateway's.
                // Later than that, the producer was held up, and it counts.
                let now = tokio::time::Instant::now();
                if tick.is_some() && idle_since <= due {
                    load.woke_late
                        .push(now.saturating_duration_since(due).as_nanos() as u64);
                }
                let due = if now.saturating_duration_since(due) > TIMER_SLACK {
                    due
                } else {
                    now
                };
                let due_ns = epoch_ns + due.saturating_duration_since(epoch).as_nanos() as u64;
                let body = format!(
                    r#"{{"src":"bench-{}","payload":"{}"}}"#,
                    n % sources,
                    payload(size, due_ns)
                );
                n += workers;
                let start = due.into_std();
                match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        load.ok += 1;
                        load.rtts.push(start.elapsed().as_nanos() as u64);
                    }
                    _ => {
                        load.refused += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                idle_since = tokio::time::Instant::now();
            }
            load
        }));
    }
    let mut total = Load {
        ok: 0,
        refused: 0,
        rtts: Vec::new(),
        woke_late: Vec::new(),
    };
    for t in tasks {
        if let Ok(l) = t.await {
            total.ok += l.ok;
            total.refused += l.refused;
            total.rtts.extend(l.rtts);
            total.woke_late.extend(l.woke_late);
        }
    }
    total
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

fn peak_rss_mib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_secs(pid: i32) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name, which may hold spaces.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(f64::NAN)
}

/// Microseconds of CPU per event for each named process (given the seconds it
/// used at saturation), and their sum: the cost of the path, which on a shared
/// 2-core machine is steadier than the rate itself. With both cores busy the
/// rate is 2 s / the sum, so the limit's sum over a scenario's sum is the
/// ratio it can reach.
fn cpu_per_event(procs: &[(&str, f64)], events: u64) -> (String, f64) {
    let per = |secs: f64| secs * 1e6 / events.max(1) as f64;
    let text = procs
        .iter()
        .map(|(name, secs)| format!("{name} {:.0}", per(*secs)))
        .collect::<Vec<_>>()
        .join(" / ");
    (text, procs.iter().map(|(_, secs)| per(*secs)).sum())
}

/// CPU seconds this process (the load generator and the sensor or subscriber)
/// has used so far.
fn own_cpu_secs() -> f64 {
    cpu_secs(std::process::id() as i32)
}

struct Row {
    cpu: String,
    /// CPU µs per event over every process involved, the load generator's too.
    cpu_total: f64,
    name: String,
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    rss: String,
    note: String,
}

struct Settings {
    secs: f64,
    workers: usize,
    sources: usize,
}

/// Waits until `sink` has `n` more events than `before`; returns when, or None
/// if they never all arrive.
async fn drained(sink: &Sink, before: u64, n: u64, started: Instant) -> Option<Duration> {
    while sink.received.load(Ordering::Relaxed) < before + n {
        if started.elapsed() > Duration::from_secs(120) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Some(started.elapsed())
}

/// Saturation, then latency at half of it, read at `sink`. Saturation is the rate
/// at which events get all the way through: what the producers had accepted,
/// over the time until the last of it reached the sensor (the durable queue can
/// accept faster than a sensor takes, and that backlog is not throughput).
async fn measure(
    name: &str,
    url: &str,
    sink: Option<&Sink>,
    size: usize,
    s: &Settings,
    procs: &[(&str, i32)],
) -> (Row, f64) {
    let before = sink.map_or(0, |k| k.received.load(Ordering::Relaxed));
    // CPU is counted over the saturated phase only, until the last event
    // arrived: per event, that is what bounds the rate.
    let cpu_now = || {
        let mut v = vec![("load", own_cpu_secs())];
        v.extend(procs.iter().map(|(n, pid)| (*n, cpu_secs(*pid))));
        v
    };
    let cpu_before = cpu_now();
    let started = Instant::now();
    let sat = generate(url, s.sources, size, s.workers, s.secs, None).await;
    let accepted_rate = sat.ok as f64 / s.secs;
    let rate = match sink {
        Some(k) => match drained(k, before, sat.ok, started).await {
            Some(t) => sat.ok as f64 / t.as_secs_f64(),
            None => f64::NAN,
        },
        None => accepted_rate,
    };
    let used: Vec<(&str, f64)> = cpu_now()
        .into_iter()
        .zip(&cpu_before)
        .map(|((name, after), (_, before))| (name, after - before))
        .collect();
    let (cpu, cpu_total) = cpu_per_event(&used, sat.ok);
    if let Some(sink) = sink {
        sink.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        sink.recording.store(true, Ordering::Relaxed);
    }
    let half = generate(
        url,
        s.sources,
        size,
        s.workers,
        s.secs,
        Some((rate / 2.0).max(1.0)),
    )
    .await;
    let mut lat = match sink {
        Some(sink) => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sink.recording.store(false, Ordering::Relaxed);
            let pairs =
                std::mem::take(&mut *sink.latencies.lock().unwrap_or_else(|p| p.into_inner()));
            report_clustering(name, &pairs);
            if std::env::var_os("BENCH_METRICS").is_some() {
                let mut late = half.woke_late.clone();
                late.sort_unstable();
                eprintln!(
                    "## {name}: the generator's own timer lateness p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms",
                    percentile(&late, 0.5),
                    percentile(&late, 0.99),
                    percentile(&late, 0.999)
                );
            }
            pairs.into_iter().map(|(_, l, _)| l).collect()
        }
        None => half.rtts,
    };
    lat.sort_unstable();
    let mut note = format!(
        "accepted {accepted_rate:.0}/s; {:.2} cores busy",
        rate * cpu_total / 1e6
    );
    if sat.refused > 0 {
        note.push_str(&format!(", {} refused (503)", sat.refused));
    }
    (
        Row {
            name: name.to_owned(),
            rate,
            p50: percentile(&lat, 0.5),
            p99: percentile(&lat, 0.99),
            p999: percentile(&lat, 0.999),
            rss: String::new(),
            cpu,
            cpu_total,
            note,
        },
        rate,
    )
}

/// [`measure`] with the gRPC load generator as the user server: its streams go
/// flat out for the saturated phase, then each is paced so that together they
/// send half the saturated rate. Saturation is what the processor-client read,
/// over the time until the last of it reached `sink`.
async fn measure_grpc(
    name: &str,
    load: &grpc::GrpcLoad,
    sink: &Sink,
    streams: usize,
    s: &Settings,
    procs: &[(&str, i32)],
) -> Row {
    let before = sink.received.load(Ordering::Relaxed);
    let cpu_now = || {
        let mut v = vec![("load", own_cpu_secs())];
        v.extend(procs.iter().map(|(n, pid)| (*n, cpu_secs(*pid))));
        v
    };
    let cpu_before = cpu_now();
    let sent_before = load.sent.load(Ordering::Relaxed);
    let started = Instant::now();
    load.set(grpc::Phase::Flat);
    tokio::time::sleep(Duration::from_secs_f64(s.secs)).await;
    load.set(grpc::Phase::Idle);
    let read = load.sent.load(Ordering::Relaxed) - sent_before;
    let accepted_rate = read as f64 / s.secs;
    // What was read and is still on its way is delivered; the few events left
    // in the streams' buffers are not counted, and may arrive later.
    let rate = match drained(
        sink,
        before,
        read.saturating_sub(8 * streams as u64),
        started,
    )
    .await
    {
        Some(t) => read as f64 / t.as_secs_f64().max(s.secs),
        None => f64::NAN,
    };
    let used: Vec<(&str, f64)> = cpu_now()
        .into_iter()
        .zip(&cpu_before)
        .map(|((name, after), (_, before))| (name, after - before))
        .collect();
    let (cpu, cpu_total) = cpu_per_event(&used, read);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    sink.recording.store(true, Ordering::Relaxed);
    let per_stream = (rate / 2.0).max(1.0) / streams as f64;
    load.set(grpc::Phase::Paced {
        period: Duration::from_secs_f64(1.0 / per_stream),
    });
    tokio::time::sleep(Duration::from_secs_f64(s.secs)).await;
    load.set(grpc::Phase::Idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sink.recording.store(false, Ordering::Relaxed);
    let pairs = std::mem::take(&mut *sink.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    report_clustering(name, &pairs);
    let mut lat: Vec<u64> = pairs.into_iter().map(|(_, l, _)| l).collect();
    lat.sort_unstable();
    Row {
        name: name.to_owned(),
        rate,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        p999: percentile(&lat, 0.999),
        rss: String::new(),
        cpu,
        cpu_total,
        note: format!(
            "read {accepted_rate:.0}/s from {streams} streams; {:.2} cores busy",
            rate * cpu_total / 1e6
        ),
    }
}

/// With `BENCH_METRICS=1`: whether the slowest 1% of a half-load run arrived
/// together (a stall of the whole path) or spread out (queueing here and there).
fn report_clustering(scenario: &str, pairs: &[(u64, u64, u64)]) {
    if std::env::var_os("BENCH_METRICS").is_none() || pairs.is_empty() {
        return;
    }
    let mut sorted: Vec<u64> = pairs.iter().map(|p| p.1).collect();
    sorted.sort_unstable();
    let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
    let start = pairs.iter().map(|p| p.0).min().unwrap_or(0);
    let mut windows: BTreeMap<u64, (usize, u64, u64)> = BTreeMap::new();
    for (at, lat, before) in pairs.iter().filter(|p| p.1 >= p99) {
        let w = windows.entry((at - start) / 10_000_000).or_default();
        w.0 += 1;
        if *lat > w.1 {
            w.1 = *lat;
            w.2 = *before;
        }
    }
    eprintln!(
        "## {scenario}: {} events at or over p99 {:.2} ms arrived in {} of {} 10 ms windows",
        sorted.len() / 100,
        p99 as f64 / 1e6,
        windows.len(),
        (pairs.iter().map(|p| p.0).max().unwrap_or(0) - start) / 10_000_000 + 1
    );
    for (w, (n, max, before)) in windows.iter().take(40) {
        eprintln!(
            "  at {} ms: {n} slow, max {:.1} ms ({:.1} ms of it before the transformer)",
            w * 10,
            *max as f64 / 1e6,
            *before as f64 / 1e6
        );
    }
}

struct Gateway {
    transformer: Proc,
    processor: Proc,
    pc_url: String,
    tr_metrics: String,
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
    let dir = tempfile::tempdir().expect("tempdir");
    let configs: BTreeMap<String, String> = (0..sources)
        .map(|i| (format!("bench-{i}"), "{}".to_owned()))
        .collect();
    let cfg_dir = dir.path().join("configs");
    write_configmap(&cfg_dir, &configs);
    let (tr_port, pc_port) = (free_port(), free_port());
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

impl Gateway {
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

/// The limit's server: answers every POST with 200 and a small JSON, like the
/// processor-client does, in a process of its own.
async fn bare_server(port: u16) {
    let router = Router::new().fallback(|_body: Bytes| async { r#"{"id":"x"}"# });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let _ = axum::serve(listener, router).await;
}

/// One hop of the bare chain: forwards each POST body to `next` and answers once
/// it has been answered, with no parsing, storage or queueing. Three of these
/// hops in a row are what the gateway's path costs before any of its own work.
async fn bare_forwarder(port: u16, next: String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let next: reqwest::Url = next.parse().expect("--bare-forward URL");
    let router = Router::new()
        .fallback(|State((client, next)): State<(reqwest::Client, reqwest::Url)>, body: Bytes| async move {
            match client.post(next).body(body).send().await {
                Ok(r) if r.status().is_success() => (axum::http::StatusCode::OK, r#"{"id":"x"}"#),
                _ => (axum::http::StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"next hop"}"#),
            }
        })
        .with_state((client, next));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let _ = axum::serve(listener, router).await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bare-forward") {
        let port = args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .expect("--bare-forward PORT URL");
        let next = args.get(i + 2).cloned().expect("--bare-forward PORT URL");
        return bare_forwarder(port, next).await;
    }
    if let Some(i) = args.iter().position(|a| a == "--bare-server") {
        let port = args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .expect("--bare-server PORT");
        return bare_server(port).await;
    }
    let smoke = std::env::args().any(|a| a == "--smoke");
    // `--only http,nats` runs just those parts (limit, chain, http, grpc, nats, series), for
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
        sources: 32,
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
        let bare_port = free_port();
        let mut cmd = Command::new(std::env::current_exe().expect("exe"));
        cmd.arg("--bare-server").arg(bare_port.to_string());
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = Proc::spawn("bare-axum", cmd, dir.path());
        wait_port(bare_port, "the bare server").await;
        let (mut row, l) = measure(
            "limit: bare axum, one hop (latency = round trip)",
            &format!("http://127.0.0.1:{bare_port}/"),
            None,
            size,
            &s,
            &[("server", bare.pid())],
        )
        .await;
        limit = l;
        row.rss = format!("{:.1}", peak_rss_mib(bare.pid()));
        rows.push(row);
        drop(bare);
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
    if want("nats") || want("grpc") {
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
            ("Standard", "into NATS core", false),
            ("Streaming", "into JetStream", false),
            ("Standard", "gRPC user server: into NATS core", true),
        ];
        for (ty, name, by_grpc) in scenarios {
            if !want(if by_grpc { "grpc" } else { "nats" }) {
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
            let mut row = if by_grpc {
                measure_grpc(name, &grpc_load, &nats_sink, s.sources, &s, &procs).await
            } else {
                measure(name, &g.pc_url, Some(&nats_sink), size, &s, &procs)
                    .await
                    .0
            };
            row.rss = rss_of(&g);
            dump_metrics(&g, name).await;
            rows.push(row);
        }
        drop(nats);
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
        let t0 = Instant::now();
        let g = gateway(
            &[("SENSOR_WATCHERS", sensor_url.clone())],
            n,
            UserServer::Http(us_port),
        )
        .await;
        wait_starts(&starts, before + n as u64).await;
        println!(
            "| configurations started | {n} | in {:.2} s | {} |",
            t0.elapsed().as_secs_f64(),
            rss_of(&g)
        );
    }
}
