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
    let client = shared_client();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let (epoch, epoch_ns) = (tokio::time::Instant::now(), now_ns());
    let tasks = (0..workers)
        .map(|w| {
            let pace = Pace {
                w,
                workers,
                rate,
                epoch,
                epoch_ns,
            };
            let events = Events { sources, size };
            tokio::spawn(produce(
                client.clone(),
                url.to_owned(),
                pace,
                events,
                deadline,
            ))
        })
        .collect();
    Load::sum(tasks).await
}

/// One client for the whole run, so the half-load phase reuses the saturated
/// phase's connections: 64 new connections at once are a burst the gateway
/// would have to absorb, and would be measured as its latency.
fn shared_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .build()
                .expect("client")
        })
        .clone()
}

/// A producer's place among the others, and the pace of all of them.
#[derive(Clone, Copy)]
struct Pace {
    w: usize,
    workers: usize,
    rate: Option<f64>,
    epoch: tokio::time::Instant,
    epoch_ns: u64,
}

/// What a producer sends: events of `size` bytes over `sources` configurations.
#[derive(Clone, Copy)]
struct Events {
    sources: usize,
    size: usize,
}

impl Pace {
    /// The producer's timer when paced: its period, and its phase within it.
    fn ticker(&self) -> Option<tokio::time::Interval> {
        self.rate.map(|r| {
            let period = Duration::from_secs_f64(self.workers as f64 / r);
            let phase = period.mul_f64(self.w as f64 / self.workers as f64);
            // Burst: a late producer catches up, so the rate holds.
            tokio::time::interval_at(self.epoch + phase, period)
        })
    }
}

/// One producer's requests until `deadline`.
async fn produce(
    client: reqwest::Client,
    url: String,
    pace: Pace,
    events: Events,
    deadline: Instant,
) -> Load {
    let mut load = Load::new();
    let mut idle_since = tokio::time::Instant::now();
    let mut tick = pace.ticker();
    let mut n = pace.w;
    while Instant::now() < deadline {
        let due = next_due(tick.as_mut(), idle_since, &mut load).await;
        let due_ns = pace.epoch_ns + due.saturating_duration_since(pace.epoch).as_nanos() as u64;
        let body = format!(
            r#"{{"src":"bench-{}","payload":"{}"}}"#,
            n % events.sources,
            payload(events.size, due_ns)
        );
        n += pace.workers;
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
}

/// When the next event was due: its tick when paced (the latency counts from
/// there once the producer is later than [`TIMER_SLACK`]), else now. A tick
/// that found the producer idle records how late the timer woke it.
async fn next_due(
    tick: Option<&mut tokio::time::Interval>,
    idle_since: tokio::time::Instant,
    load: &mut Load,
) -> tokio::time::Instant {
    let Some(tick) = tick else {
        return tokio::time::Instant::now();
    };
    let due = tick.tick().await;
    // The timer fires up to a millisecond after `due` (tokio's timer
    // resolution): that lag is the generator's, not the gateway's. Later
    // than that, the producer was held up, and it counts.
    let now = tokio::time::Instant::now();
    if idle_since <= due {
        load.woke_late
            .push(now.saturating_duration_since(due).as_nanos() as u64);
    }
    if now.saturating_duration_since(due) > TIMER_SLACK {
        due
    } else {
        now
    }
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
