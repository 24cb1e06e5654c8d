//! The HTTP load generator: producers posting `{src, payload}` events, flat out
//! or paced, each stamped with the time it was due.

use super::*;

/// `size` bytes whose first 8 are the send time, `sent_ns`.
pub(super) fn stamped(size: usize, sent_ns: u64) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(8)];
    p[..8].copy_from_slice(&sent_ns.to_le_bytes());
    p
}

/// [`stamped`] as the `payload` of a `{src, payload}` body.
pub(super) fn payload(size: usize, sent_ns: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(stamped(size, sent_ns))
}

pub(super) struct Load {
    pub(super) ok: u64,
    pub(super) refused: u64,
    pub(super) rtts: Vec<u64>,
    /// How late a paced producer's timer woke it, in ns, when its previous
    /// request had already finished: the generator's own scheduling delay on
    /// the shared cores, which the latency figures include.
    pub(super) woke_late: Vec<u64>,
}

impl Load {
    fn new() -> Load {
        Load {
            ok: 0,
            refused: 0,
            rtts: Vec::new(),
            woke_late: Vec::new(),
        }
    }

    /// What the producers' tasks counted, together.
    async fn sum(tasks: Vec<tokio::task::JoinHandle<Load>>) -> Load {
        let mut total = Load::new();
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
}

/// Lateness of a paced send that is put down to the timer, not counted.
pub(super) const TIMER_SLACK: Duration = Duration::from_millis(2);

/// `workers` producers POST `{src, payload}` to `url` for `secs`; with a `rate`,
/// the total is paced to that many per second, otherwise they go flat out.
///
/// Paced producers are spread evenly over the period, not started in step (64
/// timers firing together are a burst of 64 every period, which measures how a
/// burst drains, not latency at a rate). Latency counts from when each event was
/// due, not when it was sent, once it is later than [`TIMER_SLACK`]: a producer
/// held up by a slow answer sends late, and that wait is part of the latency
/// (no coordinated omission).
pub(super) async fn generate(
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
            let mut load = Load::new();
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
    Load::sum(tasks).await
}

/// `workers` producers POST `/events` batches of `batch` events for `secs`,
/// flat out; each event's configuration is the next in turn, and with `ids`
/// each carries an id of its own (deduplication then remembers every one).
/// Counts events (not requests) the processor-client answered 200.
pub(super) async fn generate_batches(
    url: &str,
    sources: usize,
    size: usize,
    batch: usize,
    workers: usize,
    secs: f64,
    ids: bool,
) -> Load {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = client.clone();
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut load = Load::new();
            let mut n = 0usize;
            while Instant::now() < deadline {
                let mut body = String::with_capacity(batch * (size * 4 / 3 + 80));
                body.push('[');
                for i in 0..batch {
                    if i > 0 {
                        body.push(',');
                    }
                    let src = (w + n) % sources;
                    let id = if ids {
                        format!(r#","id":"w{w}-{n}""#)
                    } else {
                        String::new()
                    };
                    body.push_str(&format!(
                        r#"{{"src":"bench-{src}","payload":"{}"{id}}}"#,
                        payload(size, now_ns())
                    ));
                    n += 1;
                }
                body.push(']');
                let start = Instant::now();
                let answer = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let taken = match answer {
                    Ok(r) if r.status().is_success() => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| {
                            v["results"]
                                .as_array()
                                .map(|r| r.iter().filter(|r| r["status"] == 200).count())
                        })
                        .unwrap_or(0),
                    _ => 0,
                };
                load.ok += taken as u64;
                load.refused += (batch - taken) as u64;
                load.rtts.push(start.elapsed().as_nanos() as u64);
                if taken < batch {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            load
        }));
    }
    Load::sum(tasks).await
}
