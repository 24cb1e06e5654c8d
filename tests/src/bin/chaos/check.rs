//! The checker: what the producers were told against what each watcher
//! received, once everything acknowledged has arrived (or two minutes passed).
//! It fails the run on an acknowledged event lost, an event of a configuration
//! first arriving after a later one of it, an id delivered as two CloudEvents,
//! or an event taken through a replica while the other ran its configuration; it counts the
//! rest (redeliveries of one CloudEvent, gRPC events read and never delivered).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::format_description::well_known::Rfc3339;

use crate::producers::{Start, Told};
use crate::watchers::{Received, Watcher};

/// What one watcher got, against what was acknowledged.
pub struct WatcherVerdict {
    pub name: &'static str,
    pub delivered: usize,
    pub deliveries: usize,
    pub missing: Vec<String>,
    /// Configuration, and the two sequence numbers out of order, with what
    /// the watcher and the producer saw of them.
    pub disorder: Vec<String>,
    /// Named events (the HTTP gateway's) that arrived as two CloudEvents.
    pub split: Vec<String>,
    /// Unnamed ones (the gRPC gateway's): a processor-client sending an
    /// event again after a lost answer makes a new CloudEvent of it, as
    /// nothing names it.
    pub grpc_split: usize,
    pub redelivered: usize,
    /// gRPC events (configurations `g…`) delivered.
    pub grpc_delivered: usize,
}

/// Two replicas at once: an event taken through one replica (answered
/// there, not as a duplicate) that the transformer stamped (its CloudEvent
/// `time`) after the other replica's user server was told to start its
/// configuration, and before this replica started it again. The other
/// replica starts a configuration only once it holds its claim, and claims
/// exclude each other: so the first replica forwarded the event without a
/// claim, which the transformer must refuse (a paused replica waking with an
/// old request, say). Returns each such event, described.
pub fn two_at_once(sensor: &Watcher, told: &Told, starts: &[Start]) -> (Vec<String>, usize) {
    // Each configuration's starts in time order, to find the latest before
    // an instant by bisection.
    let mut by_src: HashMap<&str, Vec<&Start>> = HashMap::new();
    for s in starts {
        by_src.entry(s.src.as_str()).or_default().push(s);
    }
    for list in by_src.values_mut() {
        list.sort_by_key(|s| s.at);
    }
    let got = sensor.received();
    let mut out = Vec::new();
    let mut checked = 0;
    for d in &got.log {
        let id = format!("{}-{}", d.subject, d.seq);
        let Some(ack) = told.acked.get(&id).filter(|a| !a.duplicate) else {
            continue;
        };
        let Ok(stamped) = time::OffsetDateTime::parse(&d.ce_time, &Rfc3339) else {
            continue;
        };
        let stamped = std::time::SystemTime::from(stamped);
        checked += 1;
        let list = by_src
            .get(d.subject.as_str())
            .map_or(&[][..], Vec::as_slice);
        let latest = list[..list.partition_point(|s| s.at <= stamped)].last();
        if let Some(s) = latest.filter(|s| s.replica != ack.replica) {
            out.push(format!(
                "{id}: taken through replica {} at {}, after replica {} started {} ({:.3} s earlier)",
                ack.replica,
                d.ce_time,
                s.replica,
                d.subject,
                stamped.duration_since(s.at).unwrap_or_default().as_secs_f64()
            ));
        }
    }
    out.sort();
    out.dedup();
    (out, checked)
}

/// Waits (two minutes at most) until every acknowledged event reached every
/// watcher.
pub async fn settle(watchers: &[&Watcher], told: &Mutex<Told>) {
    let acked: Vec<String> = told
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .acked
        .keys()
        .cloned()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = watchers.iter().all(|w| {
            let got = w.received();
            acked.iter().all(|id| got.by_event.contains_key(id))
        });
        if all || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How long after the last fault ended (`fault_end`, on the run's clock)
/// the last event acknowledged by then first reached a watcher: the time
/// the pipeline took to deliver what it had taken before it was left alone.
pub fn recovery(watchers: &[&Watcher], told: &Told, fault_end: Duration) -> Duration {
    let mut latest = Duration::ZERO;
    for w in watchers {
        let got = w.received();
        let mut first: HashMap<String, Duration> = HashMap::new();
        for d in &got.log {
            first
                .entry(format!("{}-{}", d.subject, d.seq))
                .or_insert(d.at);
        }
        for (id, _) in told.acked.iter().filter(|(_, a)| a.at <= fault_end) {
            if let Some(at) = first.get(id) {
                latest = latest.max(at.saturating_sub(fault_end));
            }
        }
    }
    latest
}

pub fn verdict(w: &Watcher, told: &Told) -> WatcherVerdict {
    let got = w.received();
    let mut missing: Vec<String> = told
        .acked
        .keys()
        .filter(|id| !got.by_event.contains_key(*id))
        .cloned()
        .collect();
    missing.sort();
    WatcherVerdict {
        name: w.name,
        delivered: got.by_event.len(),
        deliveries: got.log.len(),
        missing,
        disorder: disorder(&got, told),
        split: split(&got, |k| !k.contains('/')),
        grpc_split: split(&got, |k| k.contains('/')).len(),
        redelivered: got.by_event.values().map(|ids| ids.len() - 1).sum(),
        grpc_delivered: got.by_event.keys().filter(|k| k.starts_with('g')).count(),
    }
}

/// The events, of those `which` picks, that arrived as more than one
/// CloudEvent.
fn split(got: &Received, which: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = got
        .by_event
        .iter()
        .filter(|(k, ids)| which(k) && ids.iter().collect::<HashSet<_>>().len() > 1)
        .map(|(k, ids)| format!("{k}: {}", ids.join(", ")))
        .collect();
    out.sort();
    out
}

/// Every first arrival of a configuration's event after a later one of it,
/// described with each event's deliveries and acknowledgement.
fn disorder(got: &Received, told: &Told) -> Vec<String> {
    let mut out = Vec::new();
    for (src, seqs) in &got.first_order {
        for w in seqs.windows(2).filter(|w| w[0] > w[1]) {
            let mut line = format!("{src}: {} arrived before {}", w[0], w[1]);
            for seq in [w[0], w[1]] {
                for d in got.log.iter().filter(|d| d.subject == *src && d.seq == seq) {
                    line += &format!(
                        "\n    {seq} delivered at {:.3} s as {} (time {})",
                        d.at.as_secs_f64(),
                        d.ce_id,
                        d.ce_time
                    );
                }
                if let Some(ack) = told.acked.get(&format!("{src}-{seq}")) {
                    line += &format!(
                        "\n    {seq} acknowledged at {:.3} s through replica {}{}",
                        ack.at.as_secs_f64(),
                        ack.replica,
                        if ack.duplicate {
                            " (as a duplicate)"
                        } else {
                            ""
                        }
                    );
                }
            }
            out.push(line);
        }
    }
    out
}
