//! The ingress part of the benchmark: HTTP request-reply through the ingress
//! to a NATS responder in this process, beside the bare hop and beside a bare
//! forwarder of the ingress's shape (its ceiling on this machine).
//!
//! Its target is a ratio to the bare hop, and on a shared virtual machine the
//! bare hop alone moved by half within one run (43,000 and 65,000 requests/s a
//! minute apart). So besides one full row each, it measures the three in turn
//! for a few short rounds and reports the median of each round's ratio: drift
//! over the run then falls on both sides of a ratio alike.

use super::*;

/// Short saturated rounds of bare hop, ingress and ceiling, in turn.
const ROUNDS: usize = 5;
const ROUND_SECS: f64 = 3.0;

/// The rows, and a line on the alternating rounds to print under the table.
pub(super) async fn measure_ingress(size: usize, s: &Settings) -> (Vec<Row>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    super::responder::start(&nats.url()).await;
    let targets = start_targets(&nats, dir.path()).await;
    let rows = full_rows(&targets, &nats, size, s).await;
    let summary = alternating_rounds(&targets, size, s).await;
    (rows, summary)
}

/// One of the three servers measured, running.
struct Target {
    /// Its label in the CPU column.
    label: &'static str,
    /// Its row's name.
    name: &'static str,
    server: Proc,
    url: String,
}

/// The bare hop, the ingress and its ceiling, each on a free port.
async fn start_targets(nats: &NatsServer, dir: &std::path::Path) -> Vec<Target> {
    let this = || Command::new(std::env::current_exe().expect("exe"));
    let bare_port = free_port();
    let mut bare = this();
    bare.arg("--bare-server").arg(bare_port.to_string());
    let port = free_port();
    let ingress = bench_ingress(port, &nats.url());
    let ceiling_port = free_port();
    let mut ceiling = this();
    ceiling
        .arg("--bare-nats-forward")
        .arg(ceiling_port.to_string())
        .arg(nats.url());
    // (label for CPU, row name, process, port, path)
    let specs = [
        (
            "server",
            "limit again, beside the ingress: bare axum, one hop",
            bare,
            bare_port,
            "/",
        ),
        (
            "ingress",
            "ingress: HTTP to a NATS responder (latency = round trip)",
            ingress,
            port,
            "/bench/event",
        ),
        (
            "hop",
            "ceiling: bare axum to NATS request-reply, no work (latency = round trip)",
            ceiling,
            ceiling_port,
            "/",
        ),
    ];
    let mut targets = Vec::new();
    for (label, name, cmd, port, path) in specs {
        let server = Proc::spawn(label, cmd, dir);
        wait_port(port, label).await;
        targets.push(Target {
            label,
            name,
            server,
            url: format!("http://127.0.0.1:{port}{path}"),
        });
    }
    targets
}

/// The ingress on `port` (its admin port free too), sending to `nats_url`;
/// `BENCH_INGRESS_X=v` sets its `X=v`, to try a setting without a rebuild.
fn bench_ingress(port: u16, nats_url: &str) -> Command {
    let mut ingress = gateway_tests::ingress_command(port, free_port(), nats_url);
    ingress.env("RUST_LOG", "warn").envs(
        std::env::vars()
            .filter_map(|(k, v)| k.strip_prefix("BENCH_INGRESS_").map(|k| (k.to_owned(), v))),
    );
    ingress
}

/// A full row of each: the bare hop first, the two NATS rows read against it.
async fn full_rows(targets: &[Target], nats: &NatsServer, size: usize, s: &Settings) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut beside = f64::NAN;
    for (i, t) in targets.iter().enumerate() {
        let mut procs = vec![(t.label, t.server.pid())];
        let bare = i == 0;
        if !bare {
            procs.extend(nats.proc.as_ref().map(|p| ("nats", p.pid())));
        }
        let (mut row, rate) = measure(t.name, &t.url, None, size, s, &procs).await;
        row.rss = format!("{} {:.1}", t.label, peak_rss_mib(t.server.pid()));
        if bare {
            beside = rate;
        } else {
            row.note = format!(
                "{}; {:.2} of the bare hop beside it",
                row.note,
                rate / beside
            );
        }
        rows.push(row);
    }
    rows
}

/// Alternating rounds: each round's ratios to that round's bare hop, as a
/// line to print under the table.
async fn alternating_rounds(targets: &[Target], size: usize, s: &Settings) -> String {
    let rounds = if s.secs < 1.0 { 2 } else { ROUNDS };
    let secs = ROUND_SECS.min(s.secs);
    let (mut ingress_ratios, mut ceiling_ratios) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut rates = Vec::new();
        for t in targets {
            let load = generate(&t.url, s.sources, size, s.workers, secs, None).await;
            rates.push(load.ok as f64 / secs);
        }
        ingress_ratios.push(rates[1] / rates[0]);
        ceiling_ratios.push(rates[2] / rates[0]);
    }
    format!(
        "Alternating rounds ({rounds} of {secs} s each, bare hop, ingress and ceiling in turn): \
         the ingress at {} of the bare hop, the ceiling at {} (median, then range).",
        median_range(&mut ingress_ratios),
        median_range(&mut ceiling_ratios)
    )
}

/// `median (min–max)` of the ratios.
fn median_range(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => format!("{:.2} ({lo:.2}–{hi:.2})", v[v.len() / 2]),
        _ => "n/a".to_owned(),
    }
}
