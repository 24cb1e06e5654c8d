//! The Kafka gateway's row: a topic of a real Kafka-protocol broker (Tansu)
//! read by `kafka-gateway` through the processor-client and transformer into
//! NATS core, beside a bare consumer (rdkafka, the gateway's own client, in
//! this process) counting the same topic's messages in the same run. Both
//! read the whole topic from its oldest message; each rate runs from the
//! first message's arrival to the last, so a consumer group's join is not
//! counted.

use futures::StreamExt as _;
use gateway_tests::Tansu;
use rdkafka::consumer::{Consumer as _, StreamConsumer};

use super::*;

/// Partitions of the benchmark's topic.
const PARTITIONS: i32 = 4;

pub(super) async fn measure_kafka(smoke: bool, nats: &NatsServer, sink: &Arc<Sink>) -> Vec<Row> {
    let per_partition: usize = if smoke { 500 } else { 50_000 };
    let total = per_partition as u64 * PARTITIONS as u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Tansu::start(dir.path()).await;
    broker.create_topic("bench", PARTITIONS).await;
    for p in 0..PARTITIONS {
        let start = p as usize * per_partition;
        broker
            .produce("bench", p, start..start + per_partition)
            .await;
    }
    let mut rows = vec![bare_consumer(&broker.brokers(), total).await];

    let kafka_port = free_port();
    let pc_port = free_port();
    let config = format!(
        "url: {}\ntopic: bench\njsonBody: true\nconsumerGroup: {{groupName: gateway, oldest: true}}\n",
        broker.brokers()
    );
    let mut cmd = Command::new(bin("kafka-gateway"));
    cmd.env_clear()
        .env("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", kafka_port.to_string())
        .env("GATEWAY_PROCESSOR_CLIENT_HTTP_PORT", pc_port.to_string())
        .env("RUST_LOG", "warn");
    let user_server = Proc::spawn("kafka-gateway", cmd, dir.path());
    wait_port(kafka_port, "the Kafka user server").await;
    let env = [
        ("EVENT_PROTOCOL", "NATS".to_owned()),
        ("NATS_URL", nats.url()),
        ("NATS_TYPE", "Standard".to_owned()),
        ("NATS_CE_MODE", "binary".to_owned()),
    ];
    let configs = BTreeMap::from([("kafka".to_owned(), config)]);
    let before = sink.received.load(Ordering::Relaxed);
    let g = gateway_with(&env, &configs, UserServer::Http(kafka_port), pc_port).await;
    let mut procs = vec![("kafka", user_server.pid())];
    procs.extend(g.pids());
    procs.extend(nats.proc.as_ref().map(|p| ("nats", p.pid())));
    let name = "Kafka topic: kafka-gateway into NATS core";
    let mut row = match timed(sink, before, total, &procs).await {
        Some((rate, first, cpu_before)) => {
            let (cpu, cpu_total) = cpu_since(&cpu_before, &procs, total - first);
            Row {
                name: name.into(),
                rate,
                cpu,
                cpu_total,
                ..Row::default()
            }
        }
        None => Row {
            name: name.into(),
            note: "not every message arrived".into(),
            ..Row::default()
        },
    };
    row.rss = format!(
        "kafka {:.1} / {}",
        peak_rss_mib(user_server.pid()),
        rss_of(&g)
    );
    rows.push(row);
    rows
}

/// From the first arrival at `sink` until `total` have arrived: the rate,
/// how many had arrived at the first look, and every process's CPU then.
async fn timed(
    sink: &Sink,
    before: u64,
    total: u64,
    procs: &[(&'static str, i32)],
) -> Option<(f64, u64, Vec<(&'static str, f64)>)> {
    let waited = Instant::now();
    while sink.received.load(Ordering::Relaxed) == before {
        if waited.elapsed() > Duration::from_secs(120) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let first = sink.received.load(Ordering::Relaxed) - before;
    let cpu = cpu_now(procs);
    let t = drained(sink, before, total, started).await?;
    Some(((total - first) as f64 / t.as_secs_f64(), first, cpu))
}

/// The same client, counting: the topic's rate with no gateway behind it.
async fn bare_consumer(brokers: &str, total: u64) -> Row {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bare")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .expect("bare consumer");
    consumer.subscribe(&["bench"]).expect("subscribe");
    let mut stream = consumer.stream();
    let name = "Kafka topic: bare consumer (rdkafka, counting)".to_owned();
    let mut seen = 0u64;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < total && Instant::now() < deadline {
        if let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
            seen += 1;
            started.get_or_insert_with(|| (Instant::now(), own_cpu_secs()));
        }
    }
    let Some((t0, cpu0)) = started.filter(|_| seen == total) else {
        return Row {
            name,
            note: format!("{seen} of {total} read"),
            ..Row::default()
        };
    };
    let per = (own_cpu_secs() - cpu0) * 1e6 / (total - 1).max(1) as f64;
    Row {
        name,
        rate: (total - 1) as f64 / t0.elapsed().as_secs_f64(),
        cpu: format!("consumer {per:.0}"),
        cpu_total: per,
        ..Row::default()
    }
}
