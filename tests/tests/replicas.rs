//! One gateway on several replicas, sharing its configurations through a real
//! nats-server's JetStream key-value bucket. Each replica is a whole pod: its
//! own processor-client, user server (the Python test server, whose journal
//! records every start and stop with its time), transformer and sensor. The
//! lease is short (3 s) so the tests run in seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use gateway_tests::replicas::*;
use gateway_tests::*;
use serde_json::Value;

/// One test at a time: each runs a dozen processes, and their timing (leases,
/// takeovers) is what is tested, so they do not share the two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The replica `id` with the Python HTTP test server, started.
async fn replica(id: &str, nats: &NatsServer, configs: &[(String, String)]) -> Gateway {
    let mut g = sharing(id, nats, configs);
    g.start_all().await;
    g
}

/// A replica whose user server is the gRPC test server (grpcio, generic
/// contract): sharing decides what runs, whatever drives the user server.
async fn grpc_replica(id: &str, nats: &NatsServer, configs: &[(String, String)]) -> Gateway {
    let mut g = sharing(id, nats, configs);
    let port = g.us_port.to_string();
    g.processor_env.extend([
        (
            "GATEWAY_PROCESSOR_SERVER_PROTOCOL".to_owned(),
            "grpc".to_owned(),
        ),
        ("GATEWAY_PROCESSOR_SERVER_GRPC_PORT".to_owned(), port),
    ]);
    g.start_sensor().await;
    g.start_transformer().await;
    let mut server = Command::new("python3");
    server
        .arg(support("grpc_user_server.py"))
        .arg("--port")
        .arg(g.us_port.to_string())
        .arg("--journal")
        .arg(&g.journal)
        .arg("--proto-dir")
        .arg(root().join("openapi").join("proto"));
    g.start_user_server_with(server).await;
    g.start_processor().await;
    g
}

/// A gRPC server's journal in the HTTP servers' terms: a call's end is a stop.
fn calls(g: &Gateway) -> Vec<Value> {
    g.journal()
        .into_iter()
        .map(|mut e| {
            if e["op"] == "end" {
                e["op"] = "stop".into();
            }
            e
        })
        .collect()
}

/// The configurations `g` itself runs (owner is itself, phase Running).
async fn running_here(g: &Gateway, id: &str) -> BTreeSet<String> {
    g.configs()
        .await
        .into_iter()
        .filter(|c| c["owner"] == id && c["phase"] == "Running")
        .filter_map(|c| c["src"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until the live replicas run every one of `n` configurations between
/// them, none twice, each within `share` ±1 and settled (see below); returns
/// who runs what.
async fn balanced(
    live: &[(&str, &Gateway)],
    n: usize,
    share: usize,
) -> BTreeMap<String, BTreeSet<String>> {
    wait_for(
        &format!("{n} configurations balanced over {} replicas", live.len()),
        || async {
            let mut by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (id, g) in live {
                by.insert(id.to_string(), running_here(g, id).await);
            }
            let all: Vec<&String> = by.values().flatten().collect();
            let distinct: BTreeSet<&String> = all.iter().copied().collect();
            // Within ±1 of the share, and no two replicas more than one
            // apart: 21/20/19 is within ±1 but not settled (the 21 gives one
            // up), so a snapshot of it would not be what runs a moment later.
            let sizes: Vec<usize> = by.values().map(BTreeSet::len).collect();
            let spread = sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0);
            let fair = spread <= 1 && sizes.iter().all(|&s| s + 1 >= share && s <= share + 1);
            (all.len() == n && distinct.len() == n && fair).then_some(by)
        },
    )
    .await
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Kills a replica's whole pod: processor-client, user server, transformer.
fn kill_pod(g: &mut Gateway) -> f64 {
    for p in [&mut g.processor, &mut g.user_server, &mut g.transformer] {
        if let Some(p) = p.as_mut() {
            p.kill();
        }
    }
    now_secs()
}

#[tokio::test]
async fn three_replicas_share_sixty_configurations_and_a_killed_one_is_replaced() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let list = configs(60);
    let a = replica("r-a", &nats, &list).await;
    let b = replica("r-b", &nats, &list).await;
    let mut c = replica("r-c", &nats, &list).await;
    let before = balanced(&[("r-a", &a), ("r-b", &b), ("r-c", &c)], 60, 20).await;
    // Any replica lists every configuration, always; with its owner as of
    // its last round (a quarter lease), so the owners agree soon after.
    assert_eq!(a.configs().await.len(), 60);
    wait_for("r-a to list every configuration with its owner", || async {
        let listed = a.configs().await;
        let agree = listed.len() == 60
            && listed.iter().all(|entry| {
                let src = entry["src"].as_str().unwrap_or("");
                let owner = entry["owner"].as_str().unwrap_or("");
                before.get(owner).is_some_and(|mine| mine.contains(src))
            });
        agree.then_some(())
    })
    .await;
    // SIGKILL a whole replica: its share runs on the other two within two leases.
    let killed = kill_pod(&mut c);
    let started = Instant::now();
    let after = balanced(&[("r-a", &a), ("r-b", &b)], 60, 30).await;
    assert!(
        started.elapsed() < LEASE * 2 + Duration::from_secs(3),
        "took over in {:?}",
        started.elapsed()
    );
    for src in &before["r-c"] {
        assert!(after["r-a"].contains(src) || after["r-b"].contains(src));
    }
    let metrics = a.pc_url("/metrics");
    assert!(a.metric(&metrics, "processor_sharing_claims_total").await >= 20.0);
    assert_never_twice(&[
        ("r-a", a.journal(), None),
        ("r-b", b.journal(), None),
        ("r-c", c.journal(), Some(killed)),
    ]);
}

#[tokio::test]
async fn a_replica_that_joins_takes_its_share_and_one_that_leaves_hands_it_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let list = configs(60);
    let a = replica("r-a", &nats, &list).await;
    let b = replica("r-b", &nats, &list).await;
    let c = replica("r-c", &nats, &list).await;
    balanced(&[("r-a", &a), ("r-b", &b), ("r-c", &c)], 60, 20).await;
    let mut d = replica("r-d", &nats, &list).await;
    balanced(
        &[("r-a", &a), ("r-b", &b), ("r-c", &c), ("r-d", &d)],
        60,
        15,
    )
    .await;
    // SIGTERM: the claims go back at once, well before they would lapse.
    let pc = d.processor.as_mut().expect("processor");
    pc.signal(libc::SIGTERM);
    pc.exits_cleanly(Duration::from_secs(10)).await;
    balanced(&[("r-a", &a), ("r-b", &b), ("r-c", &c)], 60, 20).await;
    assert_never_twice(&[
        ("r-a", a.journal(), None),
        ("r-b", b.journal(), None),
        ("r-c", c.journal(), None),
        ("r-d", d.journal(), None),
    ]);
}

/// A user server whose `/stop` takes two leases (it drains something first):
/// the claim is renewed until the stop is done, whether the configuration is
/// given back to rebalance or the replica is shutting down, and only then does
/// another replica start it.
#[tokio::test]
async fn a_stop_slower_than_the_lease_keeps_the_claim_until_it_is_done() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let slow = LEASE * 2;
    let value = format!(
        r#"{{"interval_ms": 200, "stop_delay_ms": {}}}"#,
        slow.as_millis()
    );
    let list: Vec<(String, String)> = (0..2)
        .map(|i| (format!("slow-{i}"), value.clone()))
        .collect();
    let mut a = sharing("r-a", &nats, &list);
    a.processor_env
        .push(("SHUTDOWN_TIMEOUT".into(), "20s".into()));
    a.start_all().await;
    balanced(&[("r-a", &a)], 2, 2).await;
    // B joins: A gives one back, which B starts only once A's stop is done.
    let b = replica("r-b", &nats, &list).await;
    balanced(&[("r-a", &a), ("r-b", &b)], 2, 1).await;
    // SIGTERM: A stops the other one, renewing its claim meanwhile.
    let pc = a.processor.as_mut().expect("processor");
    pc.signal(libc::SIGTERM);
    pc.exits_cleanly(Duration::from_secs(30)).await;
    balanced(&[("r-b", &b)], 2, 2).await;
    let stops = a.journal().iter().filter(|e| e["op"] == "stop").count();
    assert_eq!(stops, 2, "A stopped both, slowly");
    assert_never_twice(&[("r-a", a.journal(), None), ("r-b", b.journal(), None)]);
}

#[tokio::test]
async fn a_frozen_replica_forwards_nothing_after_its_claims_lapsed_and_stops_at_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let list = configs(10);
    let a = replica("r-a", &nats, &list).await;
    let b = replica("r-b", &nats, &list).await;
    let before = balanced(&[("r-a", &a), ("r-b", &b)], 10, 5).await;
    let frozen = a.processor.as_ref().expect("processor");
    // The runs A's user server had when A froze (a start names its run by timeID).
    let frozen_runs: BTreeSet<String> = a
        .journal()
        .iter()
        .filter(|e| e["op"] == "start")
        .filter_map(|e| e["timeID"].as_str().map(str::to_owned))
        .collect();
    frozen.signal(libc::SIGSTOP);
    // B takes A's configurations once A's claims lapse in the bucket.
    balanced(&[("r-b", &b)], 10, 10).await;
    let takeover = now_secs();
    tokio::time::sleep(LEASE).await;
    frozen.signal(libc::SIGCONT);
    let woke = now_secs();
    // Within a second of waking, A has stopped each of them.
    for src in &before["r-a"] {
        let stops = a.wait_journal("stop", src, 1).await;
        let at = stops[0]["at"].as_f64().unwrap_or(0.0);
        assert!(
            at - woke < 1.5,
            "{src} stopped {:.2} s after waking",
            at - woke
        );
    }
    // Nothing of those runs reached A's transformer after the takeover: the
    // CloudEvent `time` is when the transformer took the event. (An event taken
    // just before A froze may be acknowledged to the user server only after it
    // wakes; once awake, A may also take a share again, in runs of its own.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    for e in a.sensor_events() {
        let run = payload(&e)["timeID"].as_str().unwrap_or("");
        if !frozen_runs.contains(run) {
            continue;
        }
        let taken = e["time"]
            .as_str()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map_or(0.0, |t| t.unix_timestamp_nanos() as f64 / 1e9);
        assert!(
            taken <= takeover,
            "an event of {} went through the frozen replica {:.2} s after the takeover: {e}",
            e["subject"],
            taken - takeover
        );
    }
    // (The journals do overlap here: A's user server ran on while A was frozen
    // and could not stop it, which is what the fence above is for.)
}

#[tokio::test]
async fn nats_restarted_nothing_runs_twice_and_everything_runs_again() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = NatsServer::start(dir.path()).await;
    let list = configs(10);
    let a = replica("r-a", &nats, &list).await;
    let b = replica("r-b", &nats, &list).await;
    balanced(&[("r-a", &a), ("r-b", &b)], 10, 5).await;
    nats.kill();
    // Cut off for longer than a lease: both stop everything they held.
    tokio::time::sleep(LEASE * 2).await;
    for g in [&a, &b] {
        wait_for("the cut-off replica to stop its configurations", || async {
            let running = g
                .configs()
                .await
                .into_iter()
                .filter(|c| c["phase"] == "Running" && c["message"] != "" && c["id"] != "")
                .count();
            (running == 0).then_some(())
        })
        .await;
    }
    nats.restart().await;
    balanced(&[("r-a", &a), ("r-b", &b)], 10, 5).await;
    assert_never_twice(&[("r-a", a.journal(), None), ("r-b", b.journal(), None)]);
}

/// One replica's connection to NATS is reset (RST both ways) again and again,
/// each time in the middle of a round (its next request dropped with the
/// connection), and then at random more often than a lease runs: whatever
/// claims and renewals the cuts lost, nothing ever runs on two replicas at
/// once, and the share settles again. (A round that loses its connection is
/// retried at once, so the claims usually outlive each cut: measured, not
/// asserted, since that depends on how fast this machine reconnects.)
#[tokio::test]
async fn a_replica_whose_nats_connection_is_reset_again_and_again_never_runs_anything_twice() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let cutter = Cutter::start(nats.port).await;
    let list = configs(10);
    let mut a = sharing("r-a", &nats, &list);
    a.processor_env.push((
        "NATS_URL".into(),
        format!("nats://127.0.0.1:{}", cutter.port),
    ));
    a.start_all().await;
    let b = replica("r-b", &nats, &list).await;
    balanced(&[("r-a", &a), ("r-b", &b)], 10, 5).await;
    for _ in 0..8 {
        assert!(cutter.cut_mid_request().await, "a round to cut");
        tokio::time::sleep(LEASE / 2).await;
    }
    for _ in 0..8 {
        cutter.cut();
        tokio::time::sleep(LEASE / 4).await;
    }
    balanced(&[("r-a", &a), ("r-b", &b)], 10, 5).await;
    let starts = |g: &Gateway| g.journal().iter().filter(|e| e["op"] == "start").count();
    eprintln!(
        "starts: r-a {} (10 without a restart), r-b {}",
        starts(&a),
        starts(&b)
    );
    assert_never_twice(&[("r-a", a.journal(), None), ("r-b", b.journal(), None)]);
}

#[tokio::test]
async fn replicas_driving_grpc_user_servers_share_the_same_way() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let list = configs(10);
    let a = grpc_replica("r-a", &nats, &list).await;
    let mut b = grpc_replica("r-b", &nats, &list).await;
    let before = balanced(&[("r-a", &a), ("r-b", &b)], 10, 5).await;
    // While both live, each runs (has a call open for) only its own share.
    // (A call's end is journaled when grpcio notices the cancel: wait for it.)
    for (id, g) in [("r-a", &a), ("r-b", &b)] {
        wait_for(&format!("{id}'s open calls to be its share"), || async {
            (open_calls(g) == before[id]).then_some(())
        })
        .await;
    }
    let killed = kill_pod(&mut b);
    balanced(&[("r-a", &a)], 10, 10).await;
    assert_never_twice(&[("r-a", calls(&a), None), ("r-b", calls(&b), Some(killed))]);
}
