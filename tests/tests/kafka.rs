//! The Kafka user server (`sdk-examples/kafka`) against a real Kafka-protocol
//! broker (Tansu) started here, through the real processor-client and
//! transformer to the sensor: every message once, in order per partition,
//! each offset committed only after the gateway took it; the same messages
//! read again after a crash are known by their ids and delivered nowhere
//! twice; faults (broker down at start or restarted, a missing topic, bad
//! credentials, the configuration removed) shown as the configuration's phase.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use gateway_tests::*;
use serde_json::Value;

/// The Kafka user server's command.
fn kafka_server() -> Command {
    let mut server = Command::new(bin("kafka-gateway"));
    server.env("RUST_LOG", "info,kafka_gateway=debug");
    server
}

/// A gateway whose user server is the Kafka server, with `configs`.
async fn gateway(configs: &[(&str, String)]) -> Gateway {
    Gateway::up_with(configs, |_| kafka_server()).await
}

/// A broker that keeps what it holds across its own SIGKILL, in the tests'
/// S3 server (which keeps its own state across restarts).
async fn lasting_broker(dir: &std::path::Path) -> (S3Server, Tansu) {
    let s3 = S3Server::start(dir).await;
    s3.run(&[S3Op::CreateBucket("tansu")]).await;
    let broker = Tansu::start_with(dir, Storage::S3(s3.url())).await;
    (s3, broker)
}

/// A configuration reading `topic` as a member of `group` from the oldest message.
fn group_config(brokers: &str, topic: &str, group: &str) -> String {
    format!(
        "url: {brokers}\ntopic: {topic}\njsonBody: true\n\
         consumerGroup: {{groupName: {group}, oldest: true}}\n"
    )
}

/// The events of `src` at the sensor.
fn events_of(g: &Gateway, src: &str) -> Vec<Value> {
    g.sensor_events()
        .into_iter()
        .filter(|e| e["subject"] == src)
        .collect()
}

/// `n` per partition, in arrival order.
fn numbers_by_partition(events: &[Value]) -> BTreeMap<i64, Vec<u64>> {
    let mut by: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for e in events {
        let d = payload(e);
        let p = d["partition"].as_i64().expect("partition");
        by.entry(p)
            .or_default()
            .push(d["body"]["n"].as_u64().expect("n"));
    }
    by
}

async fn wait_events(g: &Gateway, src: &str, n: usize, limit: Duration) -> Vec<Value> {
    wait_for_within(
        &format!("{n} events of {src} at the sensor"),
        limit,
        || async {
            let got = events_of(g, src);
            (got.len() >= n).then_some(got)
        },
    )
    .await
}

#[tokio::test]
async fn messages_arrive_once_in_order_named_topic_partition_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Tansu::start(dir.path()).await;
    broker.create_topic("orders", 2).await;
    let g = gateway(&[("orders", group_config(&broker.brokers(), "orders", "g1"))]).await;
    g.wait_phase("orders", "Running").await;
    broker.produce("orders", 0, 0..100).await;
    broker.produce("orders", 1, 100..150).await;
    let got = wait_events(&g, "orders", 150, DEADLINE).await;
    assert_eq!(got.len(), 150);
    let by = numbers_by_partition(&got);
    assert_eq!(by[&0], (0..100).collect::<Vec<_>>());
    assert_eq!(by[&1], (100..150).collect::<Vec<_>>());
    let first = got
        .iter()
        .find(|e| payload(e)["partition"] == 0 && payload(e)["offset"] == 0)
        .expect("offset 0 of partition 0");
    let d = payload(first);
    assert_eq!(d["topic"], "orders");
    assert_eq!(d["key"], "0");
    assert_eq!(d["body"], serde_json::json!({"n": 0}));
    assert!(
        d["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{d}"
    );
    assert_eq!(first["originid"], "orders/0/0");
}

/// Distinct `(partition, offset)` pairs among `events`, and how many events
/// there were in all.
fn distinct(events: &[Value]) -> (usize, usize) {
    let set: std::collections::HashSet<(i64, i64)> = events
        .iter()
        .map(|e| {
            let d = payload(e);
            (
                d["partition"].as_i64().unwrap_or(-1),
                d["offset"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    (set.len(), events.len())
}

/// Waits until the transformer took `n` events.
async fn taken_at_least(g: &Gateway, n: usize) {
    wait_for_within(
        &format!("{n} taken by the transformer"),
        Duration::from_secs(60),
        || async {
            let taken = g
                .metric(&g.tr_url("/metrics"), "transformer_events_received_total")
                .await;
            (taken >= n as f64).then_some(())
        },
    )
    .await;
}

/// The gateway's user server SIGKILLed while 10,000 messages stream, and
/// started again: every message reaches the sensor, and the ones it reads
/// again (their offsets were not committed yet) are known by their ids, so
/// the sensor sees each exactly once.
#[tokio::test]
async fn a_gateway_killed_mid_stream_loses_nothing_and_delivers_nothing_twice() {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Tansu::start(dir.path()).await;
    broker.create_topic("jobs", 3).await;
    // The first round once the gateway reads (its group joined), the rest
    // in small rounds while it reads, so that it is mid-stream (offsets
    // stored, not all committed) when killed.
    let mut g = gateway(&[("jobs", group_config(&broker.brokers(), "jobs", "g-kill"))]).await;
    broker.produce("jobs", 0, 0..N / 100).await;
    taken_at_least(&g, N / 100).await;
    let producing = {
        let client = broker.clone_client();
        tokio::spawn(async move {
            for round in 1..100 {
                let p = round % 3;
                client
                    .produce("jobs", p as i32, round * N / 100..(round + 1) * N / 100)
                    .await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    taken_at_least(&g, N / 3).await;
    g.user_server.as_mut().expect("user server").kill();
    let at_kill = g
        .metric(&g.tr_url("/metrics"), "transformer_events_received_total")
        .await;
    // Down for a moment, as a restarted container is: the processor-client
    // sees the port closed and starts the configuration again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    g.start_user_server_with(kafka_server()).await;
    producing.await.expect("producer");
    let got = wait_events(&g, "jobs", N, Duration::from_secs(120)).await;
    // A moment for any duplicate to arrive after the last new one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_after = events_of(&g, "jobs");
    let (unique, all) = distinct(&got_after);
    let repeats = g
        .metric(&g.tr_url("/metrics"), "transformer_events_duplicate_total")
        .await;
    eprintln!("killed with {at_kill} of {N} taken; {unique} distinct of {all} at the sensor; the transformer recognised {repeats} repeats");
    assert_eq!(unique, N, "every message once");
    assert_eq!(all, N, "no duplicate at the sensor");
    assert!(got.len() <= N);
    for (p, ns) in numbers_by_partition(&got_after) {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "partition {p} in order");
    }
}

/// Two gateways in one consumer group share the topic's partitions; when one
/// is SIGKILLed the other takes its partitions over (after the group's
/// session timeout) and reads from their last commit: nothing is lost.
#[tokio::test]
async fn a_consumer_group_of_two_gateways_shares_the_partitions_and_hands_them_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Tansu::start(dir.path()).await;
    broker.create_topic("shared", 4).await;
    let config = group_config(&broker.brokers(), "shared", "g-pair");
    let a = gateway(&[("shared", config.clone())]).await;
    let mut b = gateway(&[("shared", config)]).await;
    a.wait_phase("shared", "Running").await;
    b.wait_phase("shared", "Running").await;
    for p in 0..4 {
        broker
            .produce("shared", p, p as usize * 100..p as usize * 100 + 100)
            .await;
    }
    let union = |a: &Gateway, b: &Gateway| {
        let mut all = events_of(a, "shared");
        all.extend(events_of(b, "shared"));
        all
    };
    wait_for_within(
        "400 events at the two sensors",
        Duration::from_secs(90),
        || async { (distinct(&union(&a, &b)).0 >= 400).then_some(()) },
    )
    .await;
    let partitions = |g: &Gateway| {
        numbers_by_partition(&events_of(g, "shared"))
            .into_keys()
            .collect::<Vec<_>>()
    };
    let (pa, pb) = (partitions(&a), partitions(&b));
    eprintln!("partitions read: {pa:?} and {pb:?}");
    assert!(
        !pa.is_empty() && !pb.is_empty(),
        "both gateways read: {pa:?} {pb:?}"
    );

    b.user_server.as_mut().expect("user server").kill();
    for p in 0..4 {
        broker
            .produce(
                "shared",
                p,
                1000 + p as usize * 100..1000 + p as usize * 100 + 100,
            )
            .await;
    }
    wait_for_within(
        "800 distinct events at the two sensors",
        Duration::from_secs(120),
        || async { (distinct(&union(&a, &b)).0 >= 800).then_some(()) },
    )
    .await;
    let after = partitions(&a);
    assert_eq!(after, vec![0, 1, 2, 3], "the survivor read every partition");
}

/// `limitEventsPerSecond` paces the events (the transformer's CloudEvent
/// `time` is when it took each): within 10% of the limit.
#[tokio::test]
async fn limit_events_per_second_holds_within_ten_percent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Tansu::start(dir.path()).await;
    broker.create_topic("paced", 1).await;
    broker.produce("paced", 0, 0..500).await;
    let config = format!(
        "{}limitEventsPerSecond: 100\n",
        group_config(&broker.brokers(), "paced", "g-pace")
    );
    let g = gateway(&[("paced", config)]).await;
    let got = wait_events(&g, "paced", 500, Duration::from_secs(60)).await;
    let times: Vec<time::OffsetDateTime> = got
        .iter()
        .map(|e| {
            time::OffsetDateTime::parse(
                e["time"].as_str().expect("time"),
                &time::format_description::well_known::Rfc3339,
            )
            .expect("RFC 3339 time")
        })
        .collect();
    let first = *times.iter().min().expect("times");
    let last = *times.iter().max().expect("times");
    // The first burst (a tenth of a second's events) goes at once.
    let rate = (got.len() - 10) as f64 / (last - first).as_seconds_f64();
    eprintln!(
        "{} events in {:.2} s: {rate:.1}/s",
        got.len(),
        (last - first).as_seconds_f64()
    );
    assert!(
        (90.0..=110.0).contains(&rate),
        "{rate:.1} events/s against a limit of 100"
    );
}

/// The broker down when the configuration starts: Pending, naming the
/// broker; Running once it comes, and its messages arrive.
#[tokio::test]
async fn the_broker_down_at_start_is_pending_naming_it_then_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_s3, mut broker) = lasting_broker(dir.path()).await;
    broker.create_topic("late", 1).await;
    broker.kill();
    let brokers = broker.brokers();
    let g = gateway(&[("late", group_config(&brokers, "late", "g-late"))]).await;
    let c = wait_for("late to be Pending naming the broker", || async {
        g.configs().await.into_iter().find(|c| {
            c["src"] == "late"
                && c["phase"] == "Pending"
                && c["message"].as_str().is_some_and(|m| m.contains(&brokers))
        })
    })
    .await;
    eprintln!("while the broker is down: {}", c["message"]);
    broker.restart().await;
    wait_for_within("late to be Running", Duration::from_secs(90), || async {
        g.configs()
            .await
            .into_iter()
            .find(|c| c["src"] == "late" && c["phase"] == "Running")
    })
    .await;
    broker.produce("late", 0, 0..10).await;
    wait_events(&g, "late", 10, DEADLINE).await;
}

/// A topic or partition the broker does not have is an Error naming it.
#[tokio::test]
async fn a_missing_topic_or_partition_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Tansu::start(dir.path()).await;
    broker.create_topic("small", 2).await;
    let b = broker.brokers();
    let g = gateway(&[
        ("nothere", group_config(&b, "no-such-topic", "g-missing")),
        (
            "nopart",
            format!("url: {b}\ntopic: small\npartition: \"7\"\n"),
        ),
        (
            "badfield",
            format!("url: {b}\ntopic: small\npartition: 0\nfilter: {{}}\n"),
        ),
    ])
    .await;
    g.assert_errors(
        &[
            ("nothere", "no-such-topic"),
            ("nopart", "has 2 partitions"),
            ("badfield", "filter"),
        ],
        "no secret here",
    )
    .await;
}

/// One partition read alone (no group): from the newest message on, and
/// from its committed offset after a restart.
#[tokio::test]
async fn one_partition_alone_resumes_from_its_committed_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Tansu::start(dir.path()).await;
    broker.create_topic("solo", 2).await;
    // One by one: Tansu misreports the newest offset after a batched produce.
    for i in 0..5 {
        broker.produce("solo", 1, i..i + 1).await;
    }
    let config = format!(
        "url: {}\ntopic: solo\npartition: \"1\"\njsonBody: true\n",
        broker.brokers()
    );
    let mut g = gateway(&[("solo", config)]).await;
    g.wait_phase("solo", "Running").await;
    broker.produce("solo", 1, 5..25).await;
    broker.produce("solo", 0, 100..110).await;
    let got = wait_events(&g, "solo", 20, DEADLINE).await;
    let by = numbers_by_partition(&got);
    assert_eq!(
        by.keys().copied().collect::<Vec<_>>(),
        vec![1],
        "only partition 1"
    );
    assert_eq!(
        by[&1],
        (5..25).collect::<Vec<_>>(),
        "from the newest message on"
    );
    // Stopped with SIGTERM (offsets committed on close), then more messages.
    let us = g.user_server.as_mut().expect("user server");
    us.signal(libc::SIGTERM);
    us.exits_cleanly(Duration::from_secs(20)).await;
    broker.produce("solo", 1, 25..30).await;
    g.start_user_server_with(kafka_server()).await;
    let got = wait_events(&g, "solo", 25, DEADLINE).await;
    assert_eq!(numbers_by_partition(&got)[&1], (5..30).collect::<Vec<_>>());
}

/// Removing the configuration stops its consumer: it leaves the group with
/// every offset it took committed, so another member starts after them.
#[tokio::test]
async fn removing_the_configuration_commits_its_offsets_and_leaves_the_group() {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Tansu::start(dir.path()).await;
    broker.create_topic("leaving", 1).await;
    broker.produce("leaving", 0, 0..50).await;
    let g = gateway(&[(
        "leaving",
        group_config(&broker.brokers(), "leaving", "g-leave"),
    )])
    .await;
    wait_events(&g, "leaving", 50, DEADLINE).await;
    g.remove_config("leaving");
    wait_for("leaving to be gone", || async {
        let configs = g.configs().await;
        let running = configs
            .iter()
            .any(|c| c["src"] == "leaving" && c["phase"] != "Stopped");
        (!running).then_some(())
    })
    .await;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", "g-leave")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition("leaving", 0);
    let committed = wait_for("offset 50 committed for g-leave", || {
        let c = consumer.committed_offsets(tpl.clone(), Duration::from_secs(5));
        async move {
            let offset = c.ok()?.find_partition("leaving", 0)?.offset();
            (offset == rdkafka::Offset::Offset(50)).then_some(offset)
        }
    })
    .await;
    eprintln!("committed: {committed:?}");
    let groups = consumer
        .fetch_group_list(Some("g-leave"), Duration::from_secs(5))
        .expect("group list");
    let members: usize = groups.groups().iter().map(|g| g.members().len()).sum();
    assert_eq!(members, 0, "the consumer left the group");
}

/// The broker SIGKILLed mid-stream and restarted (its topics and offsets
/// kept in S3): the gateway reconnects by itself and every message arrives
/// once.
#[tokio::test]
async fn the_broker_killed_mid_stream_and_restarted_loses_nothing() {
    const N: usize = 3000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_s3, mut broker) = lasting_broker(dir.path()).await;
    broker.create_topic("lasting", 2).await;
    broker.produce("lasting", 0, 0..N / 2).await;
    let g = gateway(&[(
        "lasting",
        group_config(&broker.brokers(), "lasting", "g-last"),
    )])
    .await;
    wait_events(&g, "lasting", N / 4, Duration::from_secs(60)).await;
    broker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart().await;
    broker.produce("lasting", 1, N / 2..N).await;
    wait_events(&g, "lasting", N, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (unique, all) = distinct(&events_of(&g, "lasting"));
    assert_eq!((unique, all), (N, N), "every message once");
}

/// Credentials the broker refuses: Error, saying so, never showing the
/// password. (Only a refusal can be tested here: Tansu 0.6 keeps no SCRAM
/// user in memory or S3 storage, so no login succeeds against it.)
#[tokio::test]
async fn bad_credentials_are_an_error_that_never_shows_the_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Tansu::start(dir.path()).await;
    broker.require_login("alice", "unused").await;
    let config = format!(
        "{}sasl: {{mechanism: SCRAM-SHA-512, user: alice, passwordFromEnv: KAFKA_PASSWORD}}\n",
        group_config(&broker.brokers(), "guarded", "g-guard")
    );
    let g = Gateway::up_with(&[("wrong", config)], |_| {
        let mut c = kafka_server();
        c.env("KAFKA_PASSWORD", "wrong-password-2");
        c
    })
    .await;
    g.assert_errors(&[("wrong", "refused")], "wrong-password-2")
        .await;
    let log = std::fs::read_to_string(&g.user_server.as_ref().expect("user server").log)
        .unwrap_or_default();
    assert!(!log.contains("wrong-password-2"), "the password in the log");
}

/// A broker behind TLS with a private CA that asks for a client
/// certificate: read with `tls` (CA, certificate and key from files); without
/// the CA the certificate is not trusted, an Error saying so.
#[tokio::test]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = private_ca(dir.path());
    let (client, client_key) = client_cert(dir.path());
    let mut broker = Tansu::start(dir.path()).await;
    let (tls_brokers, _proxy) = broker.behind_tls(&ca, &cert, &key).await;
    let tls_client = || {
        broker
            .clone_client()
            .with("bootstrap.servers", &tls_brokers)
            .with("security.protocol", "ssl")
            .with("ssl.ca.location", &ca.display().to_string())
            .with("ssl.certificate.location", &client.display().to_string())
            .with("ssl.key.location", &client_key.display().to_string())
    };
    tls_client().create_topic("secure", 1).await;
    let trusted = format!(
        "{}tls: {{caCertFile: {}, clientCertFile: {}, clientKeyFile: {}}}\n",
        group_config(&tls_brokers, "secure", "g-tls"),
        ca.display(),
        client.display(),
        client_key.display()
    );
    let untrusted = format!(
        "{}tls: {{clientCertFile: {}, clientKeyFile: {}}}\n",
        group_config(&tls_brokers, "secure", "g-tls2"),
        client.display(),
        client_key.display()
    );
    let g = gateway(&[("trusted", trusted), ("untrusted", untrusted)]).await;
    g.wait_phase("trusted", "Running").await;
    tls_client().produce("secure", 0, 0..5).await;
    wait_events(&g, "trusted", 5, DEADLINE).await;
    g.assert_errors(&[("untrusted", "certificate")], "PRIVATE KEY")
        .await;
}
