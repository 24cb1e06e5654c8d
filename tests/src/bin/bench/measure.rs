//! One measurement: saturation, then latency at half of it, with the CPU every
//! process spent per event, for the HTTP and the gRPC load generators.

use super::*;

pub(super) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

pub(super) fn peak_rss_mib(pid: i32) -> f64 {
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
pub(super) fn cpu_secs(pid: i32) -> f64 {
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
pub(super) fn cpu_per_event(procs: &[(&str, f64)], events: u64) -> (String, f64) {
    let per = |secs: f64| secs * 1e6 / events.max(1) as f64;
    let text = procs
        .iter()
        .map(|(name, secs)| format!("{name} {}", micros(per(*secs))))
        .collect::<Vec<_>>()
        .join(" / ");
    (text, procs.iter().map(|(_, secs)| per(*secs)).sum())
}

/// A CPU figure in µs: to a tenth under 20, where a whole µs would hide
/// what the cheapest paths (batches into NATS) spend on one thing or another.
pub(super) fn micros(us: f64) -> String {
    if us < 20.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// CPU seconds this process (the load generator and the sensor or subscriber)
/// has used so far.
pub(super) fn own_cpu_secs() -> f64 {
    cpu_secs(std::process::id() as i32)
}

#[derive(Default)]
pub(super) struct Row {
    pub(super) cpu: String,
    /// CPU µs per event over every process involved, the load generator's too.
    pub(super) cpu_total: f64,
    pub(super) name: String,
    pub(super) rate: f64,
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) p999: f64,
    pub(super) rss: String,
    pub(super) note: String,
}

pub(super) struct Settings {
    pub(super) secs: f64,
    pub(super) workers: usize,
    pub(super) sources: usize,
}

/// Each process's CPU seconds so far, the benchmark's own first.
pub(super) fn cpu_now(procs: &[(&'static str, i32)]) -> Vec<(&'static str, f64)> {
    let mut v = vec![("load", own_cpu_secs())];
    v.extend(procs.iter().map(|(n, pid)| (*n, cpu_secs(*pid))));
    v
}

/// CPU per event of each process and of all, since `before`.
pub(super) fn cpu_since(
    before: &[(&'static str, f64)],
    procs: &[(&'static str, i32)],
    events: u64,
) -> (String, f64) {
    let used: Vec<(&str, f64)> = cpu_now(procs)
        .into_iter()
        .zip(before)
        .map(|((name, after), (_, before))| (name, after - before))
        .collect();
    cpu_per_event(&used, events)
}

/// Waits until `sink` has `n` more events than `before`; returns when, or None
/// if they never all arrive.
pub(super) async fn drained(
    sink: &Sink,
    before: u64,
    n: u64,
    started: Instant,
) -> Option<Duration> {
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
pub(super) async fn measure(
    name: &str,
    url: &str,
    sink: Option<&Sink>,
    size: usize,
    s: &Settings,
    procs: &[(&'static str, i32)],
) -> (Row, f64) {
    let before = sink.map_or(0, |k| k.received.load(Ordering::Relaxed));
    // CPU is counted over the saturated phase only, until the last event
    // arrived: per event, that is what bounds the rate.
    let cpu_before = cpu_now(procs);
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
    let (cpu, cpu_total) = cpu_since(&cpu_before, procs, sat.ok);
    if let Some(sink) = sink {
        sink.start_recording();
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
        Some(sink) => recorded_latencies(name, sink, &half.woke_late).await,
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

/// The latencies `sink` recorded of the paced phase; with `BENCH_METRICS`, where the slowest went and how late the
/// generator's own timers woke (`woke_late`).
async fn recorded_latencies(name: &str, sink: &Sink, woke_late: &[u64]) -> Vec<u64> {
    let pairs = sink.stop_recording().await;
    report_clustering(name, &pairs);
    if std::env::var_os("BENCH_METRICS").is_some() {
        let mut late = woke_late.to_vec();
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

/// [`measure`] with the gRPC load generator as the user server: its streams go
/// flat out for the saturated phase, then each is paced so that together they
/// send half the saturated rate. Saturation is what the processor-client read,
/// over the time until the last of it reached `sink`.
pub(super) async fn measure_grpc(
    name: &str,
    load: &grpc::GrpcLoad,
    sink: &Sink,
    streams: usize,
    s: &Settings,
    procs: &[(&'static str, i32)],
) -> Row {
    let before = sink.received.load(Ordering::Relaxed);
    let cpu_before = cpu_now(procs);
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
    let (cpu, cpu_total) = cpu_since(&cpu_before, procs, read);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.start_recording();
    let per_stream = (rate / 2.0).max(1.0) / streams as f64;
    load.set(grpc::Phase::Paced {
        period: Duration::from_secs_f64(1.0 / per_stream),
    });
    tokio::time::sleep(Duration::from_secs_f64(s.secs)).await;
    load.set(grpc::Phase::Idle);
    let pairs = sink.stop_recording().await;
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
pub(super) fn report_clustering(scenario: &str, pairs: &[(u64, u64, u64)]) {
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

/// Saturation of a user server posting `/events` batches of `batch` events
/// (with `ids`: each named), read at `sink`: events per second all the way
/// through, CPU per event of every process, and the batches' round trips
/// (p50 / p99 / p99.9 of a whole batch, at saturation).
#[allow(clippy::too_many_arguments)]
pub(super) async fn measure_batches(
    name: &str,
    url: &str,
    sink: &Sink,
    size: usize,
    batch: usize,
    ids: bool,
    s: &Settings,
    procs: &[(&'static str, i32)],
) -> Row {
    let before = sink.received.load(Ordering::Relaxed);
    let cpu_before = cpu_now(procs);
    let started = Instant::now();
    let workers = (s.workers / 4).max(2);
    let sat = generate_batches(url, s.sources, size, batch, workers, s.secs, ids).await;
    let rate = match drained(sink, before, sat.ok, started).await {
        Some(t) => sat.ok as f64 / t.as_secs_f64(),
        None => f64::NAN,
    };
    let (cpu, cpu_total) = cpu_since(&cpu_before, procs, sat.ok);
    let mut rtts = sat.rtts;
    rtts.sort_unstable();
    let mut note = format!(
        "{workers} producers, batch round trips at saturation; {:.2} cores busy",
        rate * cpu_total / 1e6
    );
    if sat.refused > 0 {
        note.push_str(&format!(", {} refused (503)", sat.refused));
    }
    Row {
        name: name.to_owned(),
        rate,
        p50: percentile(&rtts, 0.5),
        p99: percentile(&rtts, 0.99),
        p999: percentile(&rtts, 0.999),
        rss: String::new(),
        cpu,
        cpu_total,
        note,
    }
}
