//! The AMQP user server (`sdk-examples/amqp`) against a real RabbitMQ broker
//! started here, through the real processor-client and transformer to the
//! sensor: every message once and in order, acknowledged only after the
//! gateway took it, nothing lost when the broker is stopped mid-stream, when
//! the connection to it is reset again and again or goes silent, or when the
//! gateway cannot take events (processor-client down, or answering 503 while
//! the transformer is down), and configurations the broker or the server
//! refuse shown as Error with the reason.

use std::process::Command;
use std::time::Duration;

use gateway_tests::*;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;

/// One test at a time: each boots an Erlang VM for its broker, which takes
/// both cores for seconds; in parallel they would slow each other past the
/// harness's deadlines on a loaded CI machine.
static ONE_BROKER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A gateway whose user server is the AMQP server, with `configs`.
async fn gateway(configs: &[(&str, String)]) -> Gateway {
    Gateway::up_with(configs, |_| {
        let mut server = Command::new(bin("amqp-gateway"));
        server.env("RUST_LOG", "info");
        server
    })
    .await
}

/// A configuration consuming `queue` from the broker at `url`.
fn queue_config(url: &str, queue: &str) -> String {
    format!("url: {url}\nqueue: {queue}\njsonBody: true\nconsume: {{prefetch: 32}}\n")
}

/// The two kinds of durable queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Classic,
    /// `x-queue-type: quorum`: a Raft log, whose crash durability RabbitMQ
    /// specifies.
    Quorum,
}

impl Kind {
    fn arguments(self) -> FieldTable {
        let mut args = FieldTable::default();
        if self == Kind::Quorum {
            args.insert(
                "x-queue-type".into(),
                lapin::types::AMQPValue::LongString("quorum".into()),
            );
        }
        args
    }
}

/// Publishes `{"n": i}` for each `i` in `range` to `queue` on the default
/// exchange, persistent, with message id `i`, each confirmed by the broker.
async fn publish(broker: &RabbitMq, queue: &str, range: std::ops::Range<usize>) {
    publish_to(broker, queue, Kind::Classic, range).await;
}

/// [`publish`] to a queue of `kind`.
async fn publish_to(broker: &RabbitMq, queue: &str, kind: Kind, range: std::ops::Range<usize>) {
    let (conn, channel) = broker.channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    declare_kind(&channel, queue, kind).await;
    for i in range {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(i.to_string().into())
            .with_content_type("application/json".into());
        let body = serde_json::json!({ "n": i }).to_string();
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Declares the durable queue the configurations consume (as they would).
async fn declare(channel: &lapin::Channel, queue: &str) -> lapin::Queue {
    declare_kind(channel, queue, Kind::Classic).await
}

async fn declare_kind(channel: &lapin::Channel, queue: &str, kind: Kind) -> lapin::Queue {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            kind.arguments(),
        )
        .await
        .expect("queue.declare")
}

/// Messages ready in `queue` (a passive declare: any kind), or why not:
/// the queue is gone.
async fn ready_in(broker: &RabbitMq, queue: &str) -> Result<u32, String> {
    let (conn, channel) = broker.channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    };
    let found = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    found.map(|q| q.message_count()).map_err(|e| e.to_string())
}

/// Messages waiting in `queue` and consumers on it, as the broker counts them.
async fn queue_state(broker: &RabbitMq, queue: &str) -> (u32, u32) {
    let (conn, channel) = broker.channel().await;
    let q = declare(&channel, queue).await;
    let _ = conn.close(200, "done".into()).await;
    (q.message_count(), q.consumer_count())
}

/// The `n` of each event at the sensor for `src`, in arrival order.
fn numbers(g: &Gateway, src: &str) -> Vec<u64> {
    g.sensor_events()
        .iter()
        .filter(|e| e["subject"] == src)
        .filter_map(|e| payload(e)["body"]["n"].as_u64())
        .collect()
}

async fn wait_numbers(g: &Gateway, src: &str, n: usize) -> Vec<u64> {
    wait_for(&format!("{n} messages of {src} at the sensor"), || async {
        let got = numbers(g, src);
        (got.len() >= n).then_some(got)
    })
    .await
}

fn assert_once_in_order(got: &[u64], n: u64) {
    let expected: Vec<u64> = (0..n).collect();
    assert_eq!(got, expected.as_slice(), "every message once, in order");
}

/// Waits (up to 120 s: the gateway reconnects with capped backoff, up to
/// 30 s between tries, and a broker's restart takes seconds more on a busy
/// machine) until `n` messages of jobs are at the sensor, and checks that
/// they are every message once, in order.
async fn all_arrive_once_in_order(g: &Gateway, n: usize) {
    let got = wait_for_within(
        &format!("{n} messages of jobs at the sensor"),
        Duration::from_secs(120),
        || async {
            let got = numbers(g, "jobs");
            (got.len() >= n).then_some(got)
        },
    )
    .await;
    assert_once_in_order(&got, n as u64);
}

#[tokio::test]
async fn messages_arrive_once_in_order_and_are_acknowledged_after_the_gateway_took_them() {
    let _one = ONE_BROKER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = RabbitMq::start(dir.path()).await;
    let mut g = gateway(&[("orders", queue_config(&broker.url(), "orders"))]).await;
    g.wait_phase("orders", "Running").await;
    publish(&broker, "orders", 0..200).await;
    let got = wait_numbers(&g, "orders", 200).await;
    assert_once_in_order(&got, 200);
    // The event carries the message's properties, and the body as JSON.
    let first = payload(&g.sensor_events()[0]).clone();
    assert_eq!(first["messageId"], "0");
    assert_eq!(first["routingKey"], "orders");
    assert_eq!(first["contentType"], "application/json");
    assert_eq!(first["redelivered"], false);
    wait_for("the queue to drain", || async {
        (queue_state(&broker, "orders").await == (0, 1)).then_some(())
    })
    .await;

    // The gateway cannot take events (processor-client gone): the messages
    // stay on the broker, unacknowledged, until it is back.
    g.processor.as_mut().expect("processor").kill();
    publish(&broker, "orders", 200..300).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Ready ones are counted; the prefetched (delivered, unacknowledged) are not.
    let (waiting, _) = queue_state(&broker, "orders").await;
    assert!(
        waiting >= 100 - 32,
        "only {waiting} of 100 left: acknowledged while the gateway could not take them"
    );
    assert_eq!(numbers(&g, "orders").len(), 200);
    g.start_processor().await;
    let got = wait_numbers(&g, "orders", 300).await;
    assert_once_in_order(&got, 300);

    // The transformer gone: the processor-client answers each event 503, and
    // the message stays unacknowledged until it is taken.
    g.transformer.as_mut().expect("transformer").kill();
    publish(&broker, "orders", 300..350).await;
    wait_for("the processor-client to refuse with 503", || async {
        let refused = g
            .metric(&g.pc_url("/metrics"), "processor_events_rejected_total")
            .await;
        (refused > 0.0).then_some(())
    })
    .await;
    let (waiting, _) = queue_state(&broker, "orders").await;
    assert!(
        waiting >= 50 - 32,
        "only {waiting} of 50 left while refused"
    );
    g.start_transformer().await;
    let got = wait_numbers(&g, "orders", 350).await;
    assert_once_in_order(&got, 350);

    // Removing the configuration cancels its consumer.
    g.remove_config("orders");
    wait_for("the consumer to go", || async {
        (queue_state(&broker, "orders").await.1 == 0).then_some(())
    })
    .await;
}

/// How a broker is stopped mid-stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BrokerStop {
    /// SIGTERM: it closes every connection (CONNECTION_FORCED) and writes
    /// what it holds.
    Term,
    /// SIGKILL of the Erlang VM: no connection is closed, nothing flushed.
    Kill,
}

/// The broker is stopped as `how` says while a thousand messages stream, and
/// comes back: the messages the gateway held unacknowledged go back to the
/// queue, and every one arrives once, in order. Prints what it saw, so that
/// a loss can be placed: how many were at the sensor and how many ready in
/// the queue before the stop.
async fn broker_stopped_mid_stream(how: BrokerStop) {
    let _one = ONE_BROKER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = RabbitMq::start(dir.path()).await;
    // Killed, a classic queue can be lost by the broker itself (see
    // declared_just_before_a_broker_sigkill): a quorum queue then.
    let kind = match how {
        BrokerStop::Term => Kind::Classic,
        BrokerStop::Kill => Kind::Quorum,
    };
    // A thousand messages wait before the configuration starts, so the
    // broker stops while they stream.
    publish_to(&broker, "jobs", kind, 0..1000).await;
    let mut config = queue_config(&broker.url(), "jobs");
    if kind == Kind::Quorum {
        config.push_str("queueDeclare: {durable: true, arguments: {x-queue-type: quorum}}\n");
    }
    let g = gateway(&[("jobs", config)]).await;
    wait_numbers(&g, "jobs", 50).await;
    let ready = ready_in(&broker, "jobs").await;
    match how {
        BrokerStop::Term => broker.stop().await,
        BrokerStop::Kill => broker.kill().await,
    }
    let at_stop = numbers(&g, "jobs").len();
    broker.restart().await;
    let ready_after = ready_in(&broker, "jobs").await;
    eprintln!(
        "{how:?}, {kind:?} queue: {at_stop} of 1000 at the sensor at the stop; ready in the \
         queue before it {ready:?}, right after the restart {ready_after:?}"
    );
    publish_to(&broker, "jobs", kind, 1000..1100).await;
    // What this test claims is nothing lost or repeated, not how soon.
    match how {
        BrokerStop::Term => all_arrive_once_in_order(&g, 1100).await,
        // A quorum queue that recovers from a crash hands the messages its
        // dead consumer held back in an order of its own (seen once in 20
        // runs: one message a prefetch window late): RabbitMQ promises no
        // order for redeliveries, so here only each message once.
        BrokerStop::Kill => {
            let got = wait_for_within(
                "1100 messages of jobs at the sensor",
                Duration::from_secs(120),
                || async {
                    let got = numbers(&g, "jobs");
                    (got.len() >= 1100).then_some(got)
                },
            )
            .await;
            let late = got.windows(2).filter(|w| w[1] < w[0]).count();
            eprintln!("{late} messages arrived after a later one (redelivered out of order)");
            let mut sorted = got.clone();
            sorted.sort_unstable();
            assert_once_in_order(&sorted, 1100);
        }
    }
    assert_eq!(g.wait_phase("jobs", "Running").await["phase"], "Running");
}

/// A reproduction with no gateway in it of what the broker-SIGKILL test
/// met on a classic queue: a durable queue is declared, 1,000 persistent
/// messages are published to it, each confirmed, and the broker is killed
/// (SIGKILL) and restarted. Prints what it found; fails when the queue or a
/// message is gone. On RabbitMQ 3.10 a classic queue so declared was gone
/// after the restart (NOT_FOUND, its messages with it) in some runs; counts in
/// docs/delivery.md, "The broker killed". Not a test of the gateway, so run by
/// hand: `cargo test -p gateway-tests --test amqp -- --ignored just_before`.
async fn declared_just_before_a_broker_sigkill(kind: Kind) {
    let _one = ONE_BROKER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = RabbitMq::start(dir.path()).await;
    publish_to(&broker, "fresh", kind, 0..1000).await;
    broker.kill().await;
    broker.restart().await;
    // Counted by taking them, not by the queue's own count: a quorum queue
    // counts its messages again as it replays its log after a restart.
    let started = std::time::Instant::now();
    let after = taken_within(&broker, "fresh", Duration::from_secs(30)).await;
    eprintln!(
        "{kind:?} queue, 1000 confirmed before the SIGKILL; after the restart: {after:?} \
         taken in {:?}",
        started.elapsed()
    );
    assert_eq!(after, Ok(1000), "the queue or its messages are gone");
}

/// The distinct messages (by message id) taken from `queue` until `limit`
/// passes or all 1,000 are in; an error when the queue is not there.
async fn taken_within(broker: &RabbitMq, queue: &str, limit: Duration) -> Result<usize, String> {
    use futures::StreamExt as _;
    ready_in(broker, queue).await?;
    let (conn, channel) = broker.channel().await;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "count".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut ids = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + limit;
    while ids.len() < 1000 {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                ids.insert(d.properties.message_id().as_ref().map(|s| s.to_string()));
            }
            _ => break,
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(ids.len())
}

#[tokio::test]
#[ignore = "a reproduction of a RabbitMQ fault without the gateway, run by hand (docs/delivery.md, The broker killed)"]
async fn a_classic_queue_declared_just_before_a_broker_sigkill_keeps_its_messages() {
    declared_just_before_a_broker_sigkill(Kind::Classic).await;
}

#[tokio::test]
#[ignore = "a reproduction of a RabbitMQ fault without the gateway, run by hand (docs/delivery.md, The broker killed)"]
async fn a_quorum_queue_declared_just_before_a_broker_sigkill_keeps_its_messages() {
    declared_just_before_a_broker_sigkill(Kind::Quorum).await;
}

/// SIGTERM: the broker's orderly stop.
#[tokio::test]
async fn a_broker_restarted_mid_stream_loses_nothing_and_repeats_nothing() {
    broker_stopped_mid_stream(BrokerStop::Term).await;
}

/// SIGKILL: the broker dies without a word. On a classic queue this lost
/// the whole queue in 1 run of 17 (2026-12-06: "0 ready right after the
/// restart"; the gateway had acknowledged only what it forwarded), and the
/// reproduction with no gateway (`declared_just_before_a_broker_sigkill`)
/// lost a classic queue, NOT_FOUND after the restart, in 1 run of 30: the
/// broker's fault, not the gateway's. On a quorum queue, 50 runs of 50 (most
/// of them beside a release build) lost nothing and repeated nothing; in 4 a
/// window of messages the dead consumer held came back one prefetch late.
/// Counts in docs/delivery.md, "Brokers killed".
#[tokio::test]
async fn a_broker_killed_mid_stream_loses_nothing_and_repeats_nothing() {
    broker_stopped_mid_stream(BrokerStop::Kill).await;
}

/// The connection to the broker is reset (RST both ways, as when the network
/// between them fails) again and again while messages stream, by a relay
/// between the gateway and the broker: the gateway reconnects after every cut,
/// and every message arrives once, in order. Many cuts, because what they hunt
/// is a race: lapin could leave an ack made in the moment its connection died
/// waiting forever, and the consumer, never reconnecting, with it.
#[tokio::test]
async fn connections_reset_again_and_again_lose_nothing_and_repeat_nothing() {
    const CUTS: usize = 30;
    const BATCH: usize = 100;
    let _one = ONE_BROKER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = RabbitMq::start(dir.path()).await;
    let cutter = Cutter::start(broker.port).await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", cutter.port);
    let g = gateway(&[("jobs", queue_config(&url, "jobs"))]).await;
    for round in 0..CUTS {
        let first = round * BATCH;
        publish(&broker, "jobs", first..first + BATCH).await;
        // Cut once this batch streams on the connection open now.
        wait_for(
            &format!("a message of batch {round} at the sensor"),
            || async {
                let got = numbers(&g, "jobs");
                got.iter().any(|&n| n >= first as u64).then_some(())
            },
        )
        .await;
        cutter.cut();
    }
    let total = CUTS * BATCH;
    all_arrive_once_in_order(&g, total).await;
    assert_eq!(g.wait_phase("jobs", "Running").await["phase"], "Running");
}

/// The connection to the broker goes silent (nothing passes either way and
/// nothing is closed: a partition, a paused broker) while messages stream:
/// the heartbeats (1 s here, `?heartbeat=1`; 10 s unless the URL says) find
/// it lost on both sides, the broker gives the unacknowledged messages out
/// again, the gateway connects anew once the broker is heard again, and every
/// message arrives once, in order.
#[tokio::test]
async fn a_silent_connection_is_found_by_its_heartbeats_and_nothing_is_lost_or_repeated() {
    let _one = ONE_BROKER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = RabbitMq::start(dir.path()).await;
    publish(&broker, "jobs", 0..1000).await;
    let cutter = Cutter::start(broker.port).await;
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=1",
        cutter.port
    );
    let g = gateway(&[("jobs", queue_config(&url, "jobs"))]).await;
    wait_numbers(&g, "jobs", 50).await;
    cutter.go_silent();
    let server = g.user_server.as_ref().expect("user server");
    wait_for("the server to find the connection lost", || async {
        server
            .output()
            .contains("AMQP connection lost")
            .then_some(())
    })
    .await;
    cutter.speak_again();
    publish(&broker, "jobs", 1000..1100).await;
    all_arrive_once_in_order(&g, 1100).await;
    assert_eq!(g.wait_phase("jobs", "Running").await["phase"], "Running");
}

#[tokio::test]
async fn configurations_the_server_or_the_broker_refuse_are_errors_that_say_why() {
    let _one = ONE_BROKER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = RabbitMq::start(dir.path()).await;
    let port = broker.port;
    let g = gateway(&[
        (
            "auto-ack",
            format!(
                "url: {}\nqueue: q\nconsume: {{autoAck: true}}",
                broker.url()
            ),
        ),
        (
            "no-such-queue",
            format!(
                "url: {}\nqueue: missing\nqueueDeclare: {{passive: true}}",
                broker.url()
            ),
        ),
        (
            "wrong-password",
            format!("url: amqp://guest:nope@127.0.0.1:{port}/%2f\nqueue: q"),
        ),
        ("not-yaml", "url: [".to_owned()),
    ])
    .await;
    g.assert_errors(
        &[
            ("auto-ack", "autoAck"),
            ("no-such-queue", "NOT_FOUND"),
            ("wrong-password", "credentials"),
            ("not-yaml", "invalid AMQP configuration"),
        ],
        "nope",
    )
    .await;
}

#[tokio::test]
async fn an_amqps_broker_with_a_private_ca_needs_ca_file() {
    let _one = ONE_BROKER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = private_ca(dir.path());
    let broker = RabbitMq::start_tls(dir.path(), &cert, &key).await;
    let url = broker.tls_url().expect("a TLS listener");
    let g = gateway(&[
        (
            "trusted",
            format!(
                "url: {url}\nqueue: secure\njsonBody: true\ncaFile: {}",
                ca.display()
            ),
        ),
        ("untrusted", format!("url: {url}\nqueue: secure")),
    ])
    .await;
    g.wait_phase("trusted", "Running").await;
    publish(&broker, "secure", 0..5).await;
    assert_once_in_order(&wait_numbers(&g, "trusted", 5).await, 5);
    // Without the CA the broker's certificate is refused, and it says so.
    g.assert_errors(&[("untrusted", "caFile")], "guest:guest")
        .await;
}
