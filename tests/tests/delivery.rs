//! Delivery that loses nothing: components killed with SIGKILL mid-stream, the
//! connections to the sensor reset again and again, a sensor that never
//! answers, dead letters and their replay, and a flood against a dead sensor
//! with memory staying bounded.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use gateway_tests::*;
use serde_json::Value;

/// Every (src, timeID, seq) the sensor got, with the CloudEvent ids it came under.
fn deliveries(g: &Gateway) -> HashMap<(String, String, i64), HashSet<String>> {
    let mut out: HashMap<(String, String, i64), HashSet<String>> = HashMap::new();
    for e in g.sensor_events() {
        let d = payload(&e);
        let key = (
            d["src"].as_str().unwrap_or("").to_owned(),
            d["timeID"].as_str().unwrap_or("").to_owned(),
            d["seq"].as_i64().unwrap_or(-1),
        );
        out.entry(key)
            .or_default()
            .insert(e["id"].as_str().unwrap_or("").to_owned());
    }
    out
}

async fn wait_all_acked_delivered(g: &Gateway) {
    wait_for("every acknowledged event at the sensor", || async {
        let got = deliveries(g);
        let missing = g
            .journal()
            .iter()
            .filter(|a| a["op"] == "acked")
            .filter(|a| {
                let key = (
                    a["src"].as_str().unwrap_or("").to_owned(),
                    a["timeID"].as_str().unwrap_or("").to_owned(),
                    a["seq"].as_i64().unwrap_or(-1),
                );
                !got.contains_key(&key)
            })
            .count();
        (missing == 0).then_some(())
    })
    .await;
}

/// The gateway's own redeliveries keep the CloudEvent id. A second id for the same
/// payload can only come from the producer resending a request it got no answer
/// for (the transformer died after storing it and before answering): at most one
/// such event per producer in flight at each kill.
fn assert_redeliveries_keep_their_id(g: &Gateway, producers_times_kills: usize) {
    let resent: Vec<_> = deliveries(g)
        .into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .collect();
    assert!(
        resent.len() <= producers_times_kills,
        "more events under several CloudEvent ids than unanswered requests could explain: {resent:?}"
    );
}

fn acked(g: &Gateway) -> usize {
    g.journal().iter().filter(|e| e["op"] == "acked").count()
}

#[tokio::test]
async fn transformer_killed_mid_stream_loses_nothing_acknowledged() {
    killed_mid_stream_with(None).await;
}

/// The same with an fsync before every 2xx: the store's writer syncs once per
/// group, and what it answered for must still all arrive.
#[tokio::test]
async fn transformer_killed_mid_stream_with_fsync_always_loses_nothing_acknowledged() {
    killed_mid_stream_with(Some("always")).await;
}

async fn killed_mid_stream_with(fsync: Option<&str>) {
    let mut g = Gateway::new(UserServerKind::Python);
    if let Some(f) = fsync {
        g.transformer_env
            .push(("TRANSFORMER_FSYNC".into(), f.into()));
    }
    g.start_all().await;
    std::fs::write(&g.fail_file, "x").expect("fail file");
    g.set_config("alpha", r#"{"count": 400, "interval_ms": 1}"#);
    g.set_config("beta", r#"{"count": 400, "interval_ms": 1}"#);
    wait_for("events queued behind a failing sensor", || async {
        (acked(&g) >= 150).then_some(())
    })
    .await;
    g.transformer.as_mut().expect("transformer").kill();
    std::fs::remove_file(&g.fail_file).expect("sensor recovers");
    g.start_transformer().await;
    g.wait_journal("acked", "alpha", 400).await;
    g.wait_journal("acked", "beta", 400).await;
    wait_all_acked_delivered(&g).await;
    let log = g.transformer.as_ref().expect("transformer").output();
    assert!(
        log.contains("recovered events stored by an earlier run"),
        "the restart redelivered from the store:\n{log}"
    );
    assert_ordered(&g.sensor_events());
    assert_redeliveries_keep_their_id(&g, 2);
}

#[tokio::test]
async fn transformer_killed_twice_while_sensor_flaps() {
    let mut g = Gateway::up(
        UserServerKind::Node,
        &[("alpha", r#"{"count": 300, "interval_ms": 1}"#)],
    )
    .await;
    for round in 0..2 {
        let before = acked(&g);
        wait_for("progress between kills", || async {
            (acked(&g) >= before + 60).then_some(())
        })
        .await;
        if round == 0 {
            std::fs::write(&g.fail_file, "x").expect("fail file");
        }
        g.transformer.as_mut().expect("transformer").kill();
        g.start_transformer().await;
    }
    let _ = std::fs::remove_file(&g.fail_file);
    g.wait_journal("acked", "alpha", 300).await;
    wait_all_acked_delivered(&g).await;
    assert_ordered(&g.sensor_events());
    assert_redeliveries_keep_their_id(&g, 2);
}

/// The transformer's connections to the sensor are reset (RST both ways) again
/// and again while events stream, by a relay between the two, every other
/// time in the middle of a delivery: every acknowledged event arrives, in
/// order, and a redelivery keeps its CloudEvent id.
#[tokio::test]
async fn connections_to_the_sensor_reset_again_and_again_lose_nothing_and_keep_order() {
    const EVENTS: usize = 400;
    let mut g = Gateway::new(UserServerKind::Python);
    let cutter = Cutter::start(g.sensor_port).await;
    g.transformer_env.push((
        "SENSOR_WATCHERS".into(),
        format!("http://127.0.0.1:{}/", cutter.port),
    ));
    g.set_config(
        "alpha",
        &format!(r#"{{"count": {EVENTS}, "interval_ms": 1}}"#),
    );
    g.start_all().await;
    let cuts = cutter
        .cut_as_it_streams(EVENTS, || g.sensor_events().len())
        .await;
    g.wait_journal("acked", "alpha", EVENTS).await;
    wait_all_acked_delivered(&g).await;
    assert_ordered(&g.sensor_events());
    assert_redeliveries_keep_their_id(&g, 0);
    eprintln!(
        "{cuts} cuts, {} deliveries for {EVENTS} events",
        g.sensor_events().len()
    );
}

/// The processor-client's connections to the transformer are reset (RST both
/// ways) again and again while events stream, every other time in the middle
/// of a request: every event the user server had acknowledged arrives, in
/// order.
#[tokio::test]
async fn connections_to_the_transformer_reset_again_and_again_lose_nothing_and_keep_order() {
    const EVENTS: usize = 400;
    let mut g = Gateway::new(UserServerKind::Python);
    let cutter = Cutter::start(g.tr_port).await;
    g.processor_env
        .push(("TRANSFORMER_PORT".into(), cutter.port.to_string()));
    g.set_config(
        "alpha",
        &format!(r#"{{"count": {EVENTS}, "interval_ms": 1}}"#),
    );
    g.start_all().await;
    let cuts = cutter.cut_as_it_streams(EVENTS, || acked(&g)).await;
    wait_all_acked_delivered(&g).await;
    assert_ordered(&g.sensor_events());
    eprintln!(
        "{cuts} cuts, {} deliveries for {EVENTS} events",
        g.sensor_events().len()
    );
}

#[tokio::test]
async fn processor_client_killed_mid_stream_loses_nothing_acknowledged() {
    let mut g = Gateway::up(
        UserServerKind::Python,
        &[("alpha", r#"{"count": 300, "interval_ms": 2}"#)],
    )
    .await;
    wait_for("events flowing", || async {
        (acked(&g) >= 60).then_some(())
    })
    .await;
    g.processor.as_mut().expect("processor-client").kill();
    g.start_processor().await;
    // The new processor-client starts the configuration again (fresh timeID).
    let starts = g.wait_journal("start", "alpha", 2).await;
    let restarted = starts[1]["timeID"].as_str().expect("timeID").to_owned();
    wait_for("the restarted configuration to finish", || async {
        let n = g
            .journal_of("acked", "alpha")
            .iter()
            .filter(|a| a["timeID"] == restarted.as_str())
            .count();
        (n >= 300).then_some(())
    })
    .await;
    wait_all_acked_delivered(&g).await;
    assert_ordered(&g.sensor_events());
}

#[tokio::test]
async fn sensor_that_never_answers_is_timed_out_and_holds_back_no_other() {
    let mut g = Gateway::new(UserServerKind::Python);
    let hole = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(support("blackhole.py"))
        .arg("--port")
        .arg(hole.to_string());
    let _blackhole = Proc::spawn("blackhole", cmd, g.dir.path());
    wait_port(hole, "the black hole to listen").await;
    g.transformer_env.push((
        "SENSOR_WATCHERS".into(),
        format!("http://127.0.0.1:{hole}/,{}", g.sensor_url()),
    ));
    g.transformer_env
        .push(("WATCHER_TIMEOUT".into(), "300ms".into()));
    g.set_config("alpha", r#"{"count": 200, "interval_ms": 1}"#);
    g.start_all().await;
    let events = g.wait_sensor(200).await;
    assert_ordered(&events);
    let watcher =
        format!("transformer_delivery_retries_total{{watcher=\"http://127.0.0.1:{hole}/\"}}");
    let retries = g.metric(&g.tr_url("/metrics"), &watcher).await;
    assert!(
        retries >= 1.0,
        "the silent sensor was timed out and retried"
    );
    let log = g.transformer.as_ref().expect("transformer").output();
    assert!(log.contains("timed out"), "timeouts are logged");
}

#[tokio::test]
async fn exhausted_events_become_dead_letters_and_replay_delivers_them() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.transformer_env
        .push(("WATCHER_RETRY_ATTEMPTS".into(), "3".into()));
    g.transformer_env
        .push(("WATCHER_RETRY_BASE".into(), "10ms".into()));
    g.transformer_env
        .push(("WATCHER_RETRY_CAP".into(), "20ms".into()));
    std::fs::write(&g.fail_file, "x").expect("fail file");
    g.set_config("alpha", r#"{"count": 20, "interval_ms": 1}"#);
    g.start_all().await;
    g.wait_journal("acked", "alpha", 20).await;
    let listing = g.wait_deadletters(20).await;
    let letters = listing["deadletters"].as_array().expect("array");
    let first = &letters[0];
    assert_eq!(first["watcher"], g.sensor_url());
    assert_eq!(first["attempts"], 3);
    assert!(
        first["error"].as_str().expect("error").contains("500"),
        "{first}"
    );
    assert_eq!(first["event"]["specversion"], "1.0");
    assert_eq!(first["event"]["subject"], "alpha");
    let one: Value = g
        .http
        .get(g.tr_url(&format!(
            "/deadletters/{}",
            first["id"].as_str().expect("id")
        )))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(one["event"]["id"], first["event"]["id"]);
    let ids: HashSet<String> = letters
        .iter()
        .map(|l| l["event"]["id"].as_str().unwrap_or("").to_owned())
        .collect();

    // The dead letters survive a restart of the transformer.
    g.transformer.as_mut().expect("transformer").kill();
    g.start_transformer().await;
    std::fs::remove_file(&g.fail_file).expect("sensor fixed");
    let r = g
        .post(&g.tr_url("/deadletters/replay"), "application/json", "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["replayed"], 20);
    let events = g.wait_sensor(20).await;
    let delivered: HashSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(delivered, ids, "replay delivers the same CloudEvents");
    assert_ordered(&events);
    let after: Value = g
        .http
        .get(g.tr_url("/deadletters"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(after["total"], 0);
    let r = g
        .post(
            &g.tr_url("/deadletters/nothex/replay"),
            "application/json",
            "",
        )
        .await;
    assert_eq!(r.status, 400);
    let r = g
        .post(
            &g.tr_url(&format!("/deadletters/{}/replay", "0".repeat(32))),
            "application/json",
            "",
        )
        .await;
    assert_eq!(r.status, 404);
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn flood_against_a_dead_sensor_stays_bounded_and_loses_nothing() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.transformer_env.push((
        "TRANSFORMER_QUEUE_MAX_BYTES".into(),
        (4 * 1024 * 1024).to_string(),
    ));
    g.transformer_env
        .push(("TRANSFORMER_QUEUE_CAPACITY".into(), "100000".into()));
    g.start_transformer().await; // no sensor: it is dead
    let payload = base64_16k();
    let mut producers = Vec::new();
    for p in 0..4 {
        let url = g.tr_url("/");
        let http = g.http.clone();
        let payload = payload.clone();
        producers.push(tokio::spawn(async move {
            let (mut accepted, mut refused) = (Vec::new(), 0u32);
            for i in 0..400 {
                let body = format!(r#"{{"src":"p{p}","payload":"{payload}"}}"#);
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("post");
                match r.status().as_u16() {
                    200 => accepted.push(
                        r.json::<Value>().await.expect("json")["id"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                    ),
                    503 => {
                        assert!(r.headers().contains_key("retry-after"));
                        refused += 1;
                    }
                    other => panic!("producer {p} event {i}: {other}"),
                }
            }
            (accepted, refused)
        }));
    }
    let mut accepted = HashSet::new();
    let mut refused = 0;
    for p in producers {
        let (a, r) = p.await.expect("producer");
        accepted.extend(a);
        refused += r;
    }
    assert!(refused > 0, "a flood against a dead sensor must meet 503s");
    let pid = g.transformer.as_ref().expect("transformer").pid();
    let peak_mib = peak_rss_kib(pid) / 1024;
    eprintln!(
        "flood: {} accepted, {refused} refused with 503, transformer peak RSS {peak_mib} MiB",
        accepted.len()
    );
    assert!(
        peak_mib < 96,
        "transformer peak RSS {peak_mib} MiB with a 4 MiB queue budget"
    );
    g.start_sensor().await;
    wait_for("every accepted event at the sensor", || async {
        let got: HashSet<String> = g
            .sensor_events()
            .iter()
            .map(|e| e["id"].as_str().unwrap_or("").to_owned())
            .collect();
        accepted.is_subset(&got).then_some(())
    })
    .await;
}

/// A full queue whose sensor is alive but slow holds the producer's request
/// until there is room, rather than answering 503 at once.
#[tokio::test]
async fn a_full_queue_holds_the_request_until_there_is_room() {
    let (g, second, tr) = a_second_request_waiting_for_room().await;
    std::fs::remove_file(&g.hold_file).expect("release the sensor");
    assert_eq!(second.await.expect("second request"), 200);
    let got = sensor_data(&g, 2, "both events at the sensor").await;
    assert_eq!(got, ["1", "2"], "delivered in the order accepted");
    assert_eq!(g.metric(&tr, "transformer_admission_waiting").await, 0.0);
}

/// A producer already waiting for room when the sensor starts failing is
/// refused then, not held for the rest of TRANSFORMER_ADMIT_WAIT.
#[tokio::test]
async fn a_waiting_request_is_refused_when_the_sensor_starts_failing() {
    let (g, second, tr) = a_second_request_waiting_for_room().await;
    // The held delivery now fails: the lane retries, and no room is coming.
    std::fs::write(&g.fail_file, "").expect("fail file");
    std::fs::remove_file(&g.hold_file).expect("release the sensor");
    let refused = tokio::time::timeout(Duration::from_secs(60), second)
        .await
        .expect("a refusal, not a wait")
        .expect("second request");
    assert_eq!(refused, 503);
    std::fs::remove_file(&g.fail_file).expect("the sensor recovers");
    let got = sensor_data(&g, 1, "the accepted event at the sensor").await;
    assert_eq!(got, ["1"]);
    assert_eq!(g.metric(&tr, "transformer_admission_waiting").await, 0.0);
}

/// A queue of one whose first event the sensor holds unanswered (until the
/// hold file goes), and a second request waiting for room behind it: the
/// gateway, that request's answer to come, and the transformer's metrics URL.
async fn a_second_request_waiting_for_room() -> (Gateway, tokio::task::JoinHandle<u16>, String) {
    let mut g = Gateway::new(UserServerKind::Python);
    for (k, v) in [
        ("TRANSFORMER_QUEUE_CAPACITY", "1"),
        ("WATCHER_CONCURRENCY", "1"),
        ("TRANSFORMER_ADMIT_WAIT", "10m"),
        // The held delivery must not time out: a timed-out attempt marks the
        // watcher failing, and then the second request is refused at once, which
        // a slow, loaded machine could reach before the request is even sent.
        ("WATCHER_TIMEOUT", "10m"),
    ] {
        g.transformer_env.push((k.into(), v.into()));
    }
    std::fs::write(&g.hold_file, "").expect("hold file");
    g.start_sensor().await; // alive, but holds every request for now
    g.start_transformer().await;
    assert_eq!(post_to_transformer(&g, "1").await, 200);
    let mut second = tokio::spawn({
        let (http, url) = (g.http.clone(), g.tr_url("/"));
        async move { post_with(&http, &url, "2").await }
    });
    let tr = g.tr_url("/metrics");
    wait_for("the second request waiting for room", || async {
        let waiting = g.metric(&tr, "transformer_admission_waiting").await == 1.0;
        (waiting || second.is_finished()).then_some(())
    })
    .await;
    assert!(
        !second.is_finished(),
        "the second request was answered, not held: {:?}",
        (&mut second).await
    );
    (g, second, tr)
}

/// A full queue whose sensor is failing will not make room soon: the producer
/// gets its 503 at once, however long TRANSFORMER_ADMIT_WAIT is.
#[tokio::test]
async fn a_full_queue_behind_a_failing_sensor_refuses_at_once() {
    let mut g = Gateway::new(UserServerKind::Python);
    for (k, v) in [
        ("TRANSFORMER_QUEUE_CAPACITY", "1"),
        ("WATCHER_CONCURRENCY", "1"),
        ("TRANSFORMER_ADMIT_WAIT", "10m"),
    ] {
        g.transformer_env.push((k.into(), v.into()));
    }
    g.start_transformer().await; // the sensor is down
    assert_eq!(post_to_transformer(&g, "1").await, 200);
    let tr = g.tr_url("/metrics");
    wait_for("a failed delivery attempt", || async {
        (g.metric(&tr, "transformer_delivery_retries_total").await >= 1.0).then_some(())
    })
    .await;
    // Were it held, this would wait ten minutes and the test's deadline would fail it.
    let refused = tokio::time::timeout(Duration::from_secs(60), post_to_transformer(&g, "2"))
        .await
        .expect("a refusal, not a wait");
    assert_eq!(refused, 503);
    g.start_sensor().await;
    let got = sensor_data(&g, 1, "the accepted event at the sensor").await;
    assert_eq!(got, ["1"]);
}

/// The data of the events at the sensor, once there are at least `n`.
async fn sensor_data(g: &Gateway, n: usize, what: &str) -> Vec<String> {
    wait_for(what, || async {
        let got: Vec<String> = g
            .sensor_events()
            .iter()
            .map(|e| e["data"].to_string())
            .collect();
        (got.len() >= n).then_some(got)
    })
    .await
}

async fn post_to_transformer(g: &Gateway, data: &str) -> u16 {
    post_with(&g.http, &g.tr_url("/"), data).await
}

async fn post_with(http: &reqwest::Client, url: &str, data: &str) -> u16 {
    http.post(url)
        .header("content-type", "application/json")
        .body(format!(r#"{{"src":"a","payload":"{}"}}"#, b64(data)))
        .send()
        .await
        .expect("post")
        .status()
        .as_u16()
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn base64_16k() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 16 * 1024])
}

#[tokio::test]
async fn sigterm_with_a_dead_sensor_keeps_the_queue_for_the_next_start() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.transformer_env
        .push(("SHUTDOWN_TIMEOUT".into(), "1s".into()));
    g.set_config("alpha", r#"{"count": 30, "interval_ms": 1}"#);
    g.start_transformer().await; // the sensor is down
    g.start_user_server().await;
    g.start_processor().await;
    g.wait_journal("acked", "alpha", 30).await;
    let tr = g.transformer.as_mut().expect("transformer");
    tr.signal(libc::SIGTERM);
    tr.exits_cleanly(Duration::from_secs(15)).await;
    g.start_sensor().await;
    g.start_transformer().await;
    let events = g.wait_sensor(30).await;
    let log = g.transformer.as_ref().expect("transformer").output();
    assert!(
        log.contains("requeued=30"),
        "all 30 came back from the store:\n{log}"
    );
    assert_ordered(&events);
    assert_acked_delivered(&g);
}
