//! The nemesis: a schedule of faults drawn from the seed (the same seed, the
//! same faults in the same order at the same offsets; how long restarts take
//! moves the times a little), and the faults themselves. Faults begin every
//! 0.5 to 5 s and last 0.3 to 4 s (pauses up to 7 s), each ending on its own
//! time: so they often overlap (the transformer down while a replica is
//! paused and nats-server restarts).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::grpc::GrpcSource;
use crate::pieces::Pieces;
use crate::watchers::Watcher;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillTransformer,
    /// SIGKILL one replica of the HTTP gateway, restart it after a while.
    KillReplica(usize),
    /// SIGSTOP one replica, SIGCONT it after a while (often past its lease).
    PauseReplica(usize),
    KillGrpcProcessor,
    /// The gRPC user server: every call fails, nothing listens for a while.
    KillUserServer,
    KillNats,
    /// The HTTP sensor answers 503 for a while.
    SensorDown,
    /// Every connection from the processor-clients to the transformer reset.
    CutConnections,
    /// The next request to the transformer reset halfway.
    CutMidRequest,
}

const FAULTS: [Fault; 11] = [
    Fault::KillTransformer,
    Fault::KillReplica(0),
    Fault::KillReplica(1),
    Fault::PauseReplica(0),
    Fault::PauseReplica(1),
    Fault::KillGrpcProcessor,
    Fault::KillUserServer,
    Fault::KillNats,
    Fault::SensorDown,
    Fault::CutConnections,
    Fault::CutMidRequest,
];

/// The faults of a run of `seconds` from `seed`: (start, fault, how long).
pub fn schedule(seed: u64, seconds: u64) -> Vec<(Duration, Fault, Duration)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut at = Duration::from_secs(3);
    let mut out = Vec::new();
    while at < Duration::from_secs(seconds.saturating_sub(2)) {
        let fault = FAULTS[rng.usize(..FAULTS.len())];
        let lasts = match fault {
            // Half of them past the lease.
            Fault::PauseReplica(_) => Duration::from_millis(rng.u64(500..7000)),
            _ => Duration::from_millis(rng.u64(300..4000)),
        };
        out.push((at, fault, lasts));
        at += Duration::from_millis(rng.u64(500..5000));
    }
    out
}

/// What the nemesis acts on besides the processes.
pub struct Targets {
    pub sensor: Arc<Watcher>,
    pub grpc: Arc<GrpcSource>,
}

/// Runs the seed's faults, their offsets from `from`: each begins at its
/// time and ends (the process restarted, continued, the sensor up again)
/// `lasts` later, whatever began meanwhile, so faults overlap whenever the
/// next one comes before the last one ended. A fault of a piece already down
/// is skipped (it would only stretch the outage). Returns how many of each
/// began, and when the last ended. Each is printed with its time since
/// `started`, the clock of the rest of the report.
pub async fn run(
    p: &mut Pieces,
    t: &Targets,
    plan: Vec<(Duration, Fault, Duration)>,
    started: Instant,
    from: Instant,
) -> (BTreeMap<Fault, usize>, Instant) {
    let mut counts: BTreeMap<Fault, usize> = BTreeMap::new();
    // Faults begun and not yet ended: when each ends.
    let mut ending: Vec<(Instant, Fault)> = Vec::new();
    let mut plan = plan.into_iter().peekable();
    loop {
        let next_begin = plan.peek().map(|(at, _, _)| from + *at);
        let next_end = ending.iter().map(|(at, _)| *at).min();
        let ends_first = match (next_begin, next_end) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(b), Some(e)) => e <= b,
        };
        if ends_first {
            let (at, fault) = take_earliest(&mut ending);
            tokio::time::sleep_until(at.into()).await;
            end(p, t, fault).await;
            continue;
        }
        let Some((at, fault, lasts)) = plan.next() else {
            break;
        };
        tokio::time::sleep_until((from + at).into()).await;
        if ending.iter().any(|(_, f)| same_piece(*f, fault)) {
            continue;
        }
        *counts.entry(fault).or_default() += 1;
        let down: Vec<String> = ending.iter().map(|(_, f)| format!("{f:?}")).collect();
        let lasting = if lasts_a_while(fault) {
            format!(" for {:.1} s", lasts.as_secs_f64())
        } else {
            String::new()
        };
        let during = if down.is_empty() {
            String::new()
        } else {
            format!(" (during {})", down.join(", "))
        };
        println!(
            "{:>6.1} s  {fault:?}{lasting}{during}",
            started.elapsed().as_secs_f64()
        );
        begin(p, t, fault).await;
        if lasts_a_while(fault) {
            ending.push((Instant::now() + lasts, fault));
        }
    }
    (counts, Instant::now())
}

fn take_earliest(ending: &mut Vec<(Instant, Fault)>) -> (Instant, Fault) {
    let i = (0..ending.len())
        .min_by_key(|i| ending[*i].0)
        .unwrap_or_default();
    ending.swap_remove(i)
}

/// Whether two faults hit the same piece (one of them would only stretch
/// the other).
fn same_piece(a: Fault, b: Fault) -> bool {
    let piece = |f: Fault| match f {
        Fault::PauseReplica(i) => Fault::KillReplica(i),
        other => other,
    };
    piece(a) == piece(b)
}

/// Faults with an end; the connection cuts are over once done.
fn lasts_a_while(fault: Fault) -> bool {
    !matches!(fault, Fault::CutConnections | Fault::CutMidRequest)
}

/// A fault's beginning.
async fn begin(p: &mut Pieces, t: &Targets, fault: Fault) {
    match fault {
        Fault::KillTransformer => p.transformer.kill(),
        Fault::KillReplica(i) => p.replicas[i].kill(),
        Fault::PauseReplica(i) => p.replicas[i].signal(libc::SIGSTOP),
        Fault::KillGrpcProcessor => p.grpc_pc.kill(),
        Fault::KillUserServer => t.grpc.kill(),
        Fault::KillNats => p.nats.kill(),
        Fault::SensorDown => t.sensor.down.store(true, Ordering::Relaxed),
        Fault::CutConnections => p.cutter.cut(),
        Fault::CutMidRequest => {
            p.cutter.cut_mid_request().await;
        }
    }
}

/// A fault's end: what was killed started again, what was paused continued.
async fn end(p: &mut Pieces, t: &Targets, fault: Fault) {
    match fault {
        Fault::KillTransformer => p.restart_transformer().await,
        Fault::KillReplica(i) => p.restart_replica(i).await,
        Fault::PauseReplica(i) => p.replicas[i].signal(libc::SIGCONT),
        Fault::KillGrpcProcessor => p.restart_grpc_pc().await,
        Fault::KillUserServer => t.grpc.listen().await,
        Fault::KillNats => p.nats.restart().await,
        Fault::SensorDown => t.sensor.down.store(false, Ordering::Relaxed),
        Fault::CutConnections | Fault::CutMidRequest => {}
    }
}
