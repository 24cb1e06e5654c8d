//! The nemesis: a schedule of faults drawn from the seed (the same seed, the
//! same faults in the same order at the same offsets; how long restarts take
//! moves the times a little), and the faults themselves. Faults follow each
//! other every 0.5 to 5 s and one may still last when the next begins (a
//! sensor outage overlaps whatever comes next; a kill lasts while the next
//! fault waits its turn).

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

/// Runs the seed's faults, their offsets from `from`; returns how many of
/// each, and when the last ended. Each is printed with its time since
/// `started`, the clock of the rest of the report.
pub async fn run(
    p: &mut Pieces,
    t: &Targets,
    plan: Vec<(Duration, Fault, Duration)>,
    started: Instant,
    from: Instant,
) -> (BTreeMap<Fault, usize>, Instant) {
    let mut counts: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut last_fault_end = from;
    for (at, fault, lasts) in plan {
        tokio::time::sleep_until((from + at).into()).await;
        *counts.entry(fault).or_default() += 1;
        println!(
            "{:>6.1} s  {fault:?} for {:.1} s",
            started.elapsed().as_secs_f64(),
            lasts.as_secs_f64()
        );
        let ends = inflict(p, t, fault, lasts).await;
        last_fault_end = last_fault_end.max(ends);
    }
    (counts, last_fault_end)
}

/// One fault; returns when it ends (a sensor outage ends later, by itself).
async fn inflict(p: &mut Pieces, t: &Targets, fault: Fault, lasts: Duration) -> Instant {
    match fault {
        Fault::KillTransformer => {
            p.transformer.kill();
            tokio::time::sleep(lasts).await;
            p.restart_transformer().await;
        }
        Fault::KillReplica(i) => {
            p.replicas[i].kill();
            tokio::time::sleep(lasts).await;
            p.restart_replica(i).await;
        }
        Fault::PauseReplica(i) => {
            p.replicas[i].signal(libc::SIGSTOP);
            tokio::time::sleep(lasts).await;
            p.replicas[i].signal(libc::SIGCONT);
        }
        Fault::KillGrpcProcessor => {
            p.grpc_pc.kill();
            tokio::time::sleep(lasts).await;
            p.restart_grpc_pc().await;
        }
        Fault::KillUserServer => {
            t.grpc.kill();
            tokio::time::sleep(lasts).await;
            t.grpc.listen().await;
        }
        Fault::KillNats => {
            p.nats.kill();
            tokio::time::sleep(lasts).await;
            p.nats.restart().await;
        }
        Fault::SensorDown => {
            t.sensor.down.store(true, Ordering::Relaxed);
            let s = t.sensor.clone();
            tokio::spawn(async move {
                tokio::time::sleep(lasts).await;
                s.down.store(false, Ordering::Relaxed);
            });
            return Instant::now() + lasts;
        }
        Fault::CutConnections => p.cutter.cut(),
        Fault::CutMidRequest => {
            p.cutter.cut_mid_request().await;
        }
    }
    Instant::now()
}
