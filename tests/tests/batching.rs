//! The processor-client's link to the transformer carries concurrent events in
//! batches (`POST /batch`, offered by the transformer on its `POST /` answers).
//! Batching must change nothing a producer can see: each event keeps its own
//! answer, order per producer holds, nothing acknowledged is lost when the
//! transformer dies mid-batch, and a transformer that does not offer batches
//! (or stops taking them) still gets the contract's single events.

use std::collections::HashSet;
use std::process::Command;

use gateway_tests::*;
use serde_json::{json, Value};

const SRCS: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

/// Every configuration in SRCS, producing nothing by itself, Running.
async fn gateway_for_producers(g: &mut Gateway) {
    for src in SRCS {
        g.set_config(src, r#"{"count": 0}"#);
    }
    g.start_transformer().await;
    g.start_user_server().await;
    g.start_processor().await;
    for src in SRCS {
        g.wait_phase(src, "Running").await;
    }
}

/// `producers` concurrent producers, each posting `n` events in sequence to the
/// processor-client, producer k under configuration SRCS[k % 8] and timeID
/// `{round}-{k}`. Returns every (timeID, seq, answer).
async fn produce(
    g: &Gateway,
    round: usize,
    producers: usize,
    n: usize,
) -> Vec<(String, usize, Reply)> {
    let runs = (0..producers).map(|k| async move {
        let src = SRCS[k % SRCS.len()];
        let time_id = format!("{round}-{k}");
        let mut out = Vec::with_capacity(n);
        for seq in 0..n {
            let r = g
                .post(
                    &g.pc_url("/event"),
                    "application/json",
                    event_body(src, &time_id, seq),
                )
                .await;
            out.push((time_id.clone(), seq, r));
        }
        out
    });
    futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// (timeID, seq) of every event at the sensor.
fn delivered(g: &Gateway) -> Vec<(String, usize)> {
    g.sensor_events()
        .iter()
        .map(|e| {
            let d = payload(e);
            (
                d["timeID"].as_str().unwrap_or("").to_owned(),
                d["seq"].as_u64().unwrap_or(u64::MAX) as usize,
            )
        })
        .collect()
}

/// Rounds of [`produce`] with 16 producers until the transformer has seen a batch:
/// whether one forms depends on timing, so the bound is a count of rounds.
async fn produce_until_batched(g: &Gateway, n: usize) -> Vec<(String, usize, Reply)> {
    let mut answers = Vec::new();
    let mut round = 0;
    loop {
        round += 1;
        answers.extend(produce(g, round, 16, n).await);
        if batches(g).await > 0.0 {
            return answers;
        }
        assert!(
            round < 50,
            "no batch formed in {round} rounds of 16 concurrent producers"
        );
    }
}

async fn batches(g: &Gateway) -> f64 {
    g.metric(&g.tr_url("/metrics"), "transformer_batches_total")
        .await
}

#[tokio::test]
async fn concurrent_events_travel_in_batches_each_with_its_own_answer() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.start_sensor().await;
    gateway_for_producers(&mut g).await;
    let answers = produce_until_batched(&g, 20).await;
    let mut ids = HashSet::new();
    for (time_id, seq, r) in &answers {
        assert_eq!(r.status, 200, "event {time_id}/{seq}: {}", r.text);
        let id = r.json["id"]
            .as_str()
            .expect("a CloudEvent id in each answer");
        assert!(
            ids.insert(id.to_owned()),
            "two events answered with id {id}"
        );
    }
    let events = g.wait_sensor(answers.len()).await;
    let at_sensor: HashSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(at_sensor, ids, "exactly the answered ids reach the sensor");
    assert_ordered(&events);
}

#[tokio::test]
async fn a_full_queue_refuses_single_events_of_a_batch_and_keeps_the_rest() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.transformer_env.extend([
        ("TRANSFORMER_QUEUE_CAPACITY".into(), "24".into()),
        ("TRANSFORMER_ADMIT_WAIT".into(), "0s".into()),
    ]);
    gateway_for_producers(&mut g).await; // the sensor is down
    let answers = produce_until_batched(&g, 5).await;
    let mut accepted = HashSet::new();
    let mut refused = HashSet::new();
    for (time_id, seq, r) in answers {
        match r.status {
            200 => accepted.insert((time_id, seq)),
            503 => {
                assert_eq!(r.json["error"], "backpressure", "{}", r.text);
                assert!(r.retry_after.is_some(), "a 503 carries Retry-After");
                refused.insert((time_id, seq))
            }
            other => panic!("unexpected {other}: {}", r.text),
        };
    }
    assert!(!refused.is_empty(), "a queue of 24 cannot take every event");
    assert!(!accepted.is_empty());
    g.start_sensor().await;
    g.wait_sensor(accepted.len()).await;
    let got: HashSet<(String, usize)> = delivered(&g).into_iter().collect();
    assert_eq!(
        got, accepted,
        "the accepted events arrive, the refused never do"
    );
    assert_ordered(&g.sensor_events());
}

#[tokio::test]
async fn transformer_killed_mid_batch_loses_nothing_acknowledged() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.start_sensor().await;
    gateway_for_producers(&mut g).await;
    let acked = std::sync::Mutex::new(Vec::<(String, usize)>::new());
    let producers = (0..16).map(|k| {
        let (g, acked) = (&g, &acked);
        async move {
            let src = SRCS[k % SRCS.len()];
            let time_id = format!("kill-{k}");
            for seq in 0..60 {
                // A producer as the contract wants it: the same event again
                // until it is answered 2xx.
                wait_for("an event to be taken", || async {
                    let body = event_body(src, &time_id, seq);
                    let r = g.post(&g.pc_url("/event"), "application/json", body).await;
                    (r.status == 200).then_some(())
                })
                .await;
                acked.lock().expect("acked").push((time_id.clone(), seq));
            }
        }
    });
    let killer = async {
        wait_for("batches flowing", || async {
            let flowing = acked.lock().expect("acked").len() >= 200;
            (flowing && batches(&g).await > 0.0).then_some(())
        })
        .await;
        g.transformer
            .as_ref()
            .expect("transformer")
            .signal(libc::SIGKILL);
        wait_for("the killed transformer's port to close", || async {
            std::net::TcpStream::connect(("127.0.0.1", g.tr_port))
                .is_err()
                .then_some(())
        })
        .await;
        let again = Proc::spawn("transformer", g.transformer_command(), g.dir.path());
        wait_port(g.tr_port, "the transformer to listen again").await;
        again
    };
    let (_, again) = futures::join!(futures::future::join_all(producers), killer);
    g.transformer = Some(again);
    let acked: HashSet<(String, usize)> = acked.into_inner().expect("acked").into_iter().collect();
    assert_eq!(acked.len(), 16 * 60);
    wait_for("every acknowledged event at the sensor", || async {
        let got: HashSet<(String, usize)> = delivered(&g).into_iter().collect();
        acked.is_subset(&got).then_some(())
    })
    .await;
    assert_ordered(&g.sensor_events());
}

#[tokio::test]
async fn the_transformer_answers_each_event_of_a_batch() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.start_sensor().await;
    g.start_transformer().await;
    let single = g
        .http
        .post(g.tr_url("/"))
        .header("content-type", "application/json")
        .body(event_body("a", "t", 0))
        .send()
        .await
        .expect("POST /");
    assert_eq!(single.status(), 200);
    let offer = single
        .headers()
        .get("x-gateway-batch-max-bytes")
        .expect("the batch offer");
    assert_eq!(
        offer.to_str().ok(),
        Some("1052672"),
        "TRANSFORMER_MAX_BODY_BYTES"
    );

    let good: Value = serde_json::from_str(&event_body("a", "t", 1)).expect("json");
    let traced: Value = serde_json::from_str(&event_body("a", "t", 2)).expect("json");
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let batch = json!([
        {"event": good},
        {"event": {"src": "a", "payload": "%%%"}},
        {"event": {"payload": "aGk="}},
        {"event": traced, "traceparent": traceparent},
    ]);
    let r = g
        .post(&g.tr_url("/batch"), "application/json", batch.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let results = r.json["results"].as_array().expect("results");
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [200, 400, 400, 200], "{}", r.text);
    assert!(results[0]["id"].is_string());
    assert_eq!(results[1]["error"], "bad_request");
    assert!(
        results[1]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("payload"),
        "{}",
        r.text
    );
    assert!(
        results[2]["detail"].as_str().unwrap_or("").contains("src"),
        "{}",
        r.text
    );
    let events = g.wait_sensor(3).await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["id"], results[3]["id"]);
    assert_eq!(events[2]["traceparent"], traceparent);

    for (body, why) in [
        ("{\"event\": 1}", "an object"),
        ("[{\"src\": \"a\"}]", "items without event"),
        ("nope", "not JSON"),
    ] {
        let r = g.post(&g.tr_url("/batch"), "application/json", body).await;
        assert_eq!(r.status, 400, "{why}: {}", r.text);
        assert!(
            r.json["detail"].as_str().unwrap_or("").contains("batch"),
            "{why}: {}",
            r.text
        );
    }
    let r = g.post(&g.tr_url("/batch"), "application/json", "[]").await;
    assert_eq!((r.status, r.json.clone()), (200, json!({"results": []})));
}

#[tokio::test]
async fn a_batch_needs_the_token_like_any_event() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.transformer_env
        .push(("TRANSFORMER_TOKEN".into(), "s3cret".into()));
    g.start_sensor().await;
    g.start_transformer().await;
    let batch =
        json!([{"event": serde_json::from_str::<Value>(&event_body("a", "t", 0)).expect("json")}]);
    let r = g
        .post(&g.tr_url("/batch"), "application/json", batch.to_string())
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = g
        .http
        .post(g.tr_url("/batch"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer s3cret")
        .body(batch.to_string())
        .send()
        .await
        .expect("POST /batch");
    assert_eq!(r.status(), 200);
    g.wait_sensor(1).await;
}

#[tokio::test]
async fn batching_can_be_switched_off() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.processor_env
        .push(("GATEWAY_PROCESSOR_BATCH".into(), "false".into()));
    g.start_sensor().await;
    gateway_for_producers(&mut g).await;
    let mut answered = 0;
    for round in 0..3 {
        for (time_id, seq, r) in produce(&g, round, 16, 20).await {
            assert_eq!(r.status, 200, "event {time_id}/{seq}: {}", r.text);
            answered += 1;
        }
    }
    g.wait_sensor(answered).await;
    assert_eq!(
        batches(&g).await,
        0.0,
        "GATEWAY_PROCESSOR_BATCH=false sends no batch"
    );
}

/// The processor-client in front of a transformer of someone else's making.
async fn against_a_stub_transformer(offer_batch: bool) {
    let mut g = Gateway::new(UserServerKind::Python);
    let requests = g.dir.path().join("stub-requests.jsonl");
    let mut stub = Command::new("python3");
    stub.arg(support("stub_transformer.py"))
        .arg("--port")
        .arg(g.tr_port.to_string())
        .arg("--out")
        .arg(&requests);
    if offer_batch {
        stub.arg("--offer-batch");
    }
    g.transformer = Some(Proc::spawn("stub-transformer", stub, g.dir.path()));
    wait_port(g.tr_port, "the stub transformer to listen").await;
    for src in SRCS {
        g.set_config(src, r#"{"count": 0}"#);
    }
    g.start_user_server().await;
    g.start_processor().await;
    for src in SRCS {
        g.wait_phase(src, "Running").await;
    }
    let answers = produce(&g, 0, 16, 10).await;
    for (time_id, seq, r) in &answers {
        assert_eq!(r.status, 200, "event {time_id}/{seq}: {}", r.text);
        assert!(
            r.json["id"].as_str().unwrap_or("").starts_with("stub-"),
            "{}",
            r.text
        );
    }
    let seen = read_jsonl(&requests);
    let singles: Vec<&Value> = seen.iter().filter(|r| r["path"] == "/").collect();
    assert_eq!(singles.len(), answers.len(), "one POST / per event");
    for r in &singles {
        assert!(
            r["body"]["src"].is_string() && r["body"]["payload"].is_string(),
            "{r}"
        );
    }
    let others: Vec<&Value> = seen.iter().filter(|r| r["path"] != "/").collect();
    if offer_batch {
        assert!(others.iter().all(|r| r["path"] == "/batch"), "{others:?}");
        // Only the batches in flight when the first was refused (4 at most).
        assert!(
            others.len() <= 4,
            "a refused batch is not tried again: {others:?}"
        );
    } else {
        assert!(
            others.is_empty(),
            "only POST / without an offer: {others:?}"
        );
    }
}

#[tokio::test]
async fn a_transformer_that_offers_no_batches_gets_single_events() {
    against_a_stub_transformer(false).await;
}

#[tokio::test]
async fn a_transformer_that_offers_batches_but_has_none_gets_single_events() {
    against_a_stub_transformer(true).await;
}

/// A replica frozen between checking its claim and sending an event must not
/// have the event taken once the claim lapsed: the transformer checks the
/// claim's time (`x-gateway-claim-until`) on arrival, for single events and
/// each event of a batch.
#[tokio::test]
async fn an_event_whose_claim_lapsed_before_it_arrived_is_refused() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.start_sensor().await;
    g.start_transformer().await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let (past, ahead) = ((now_ms - 2_000).to_string(), (now_ms + 60_000).to_string());
    let mut answers = Vec::new();
    for (n, claim) in [past.as_str(), ahead.as_str(), "soon"]
        .into_iter()
        .enumerate()
    {
        let r = g
            .http
            .post(g.tr_url("/"))
            .header("content-type", "application/json")
            .header("x-gateway-claim-until", claim)
            .body(event_body("a", "t", n))
            .send()
            .await
            .expect("POST /");
        let status = r.status().as_u16();
        let json: Value = r.json().await.unwrap_or_default();
        answers.push((status, json["error"].as_str().unwrap_or("").to_owned()));
        if status == 409 {
            let detail = json["detail"].as_str().unwrap_or("");
            assert!(detail.contains("lapsed"), "{json}");
        }
    }
    assert_eq!(
        answers,
        [
            (409, "not_owner".to_owned()),
            (200, String::new()),
            (400, "bad_request".to_owned())
        ]
    );

    let event = |n| serde_json::from_str::<Value>(&event_body("a", "t", n)).expect("json");
    let batch = json!([
        {"event": event(10), "x-gateway-claim-until": ahead},
        {"event": event(11), "x-gateway-claim-until": past},
        {"event": event(12)},
    ]);
    let r = g
        .post(&g.tr_url("/batch"), "application/json", batch.to_string())
        .await;
    let statuses: Vec<u64> = r.json["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [200, 409, 200], "{}", r.text);
    assert_eq!(r.json["results"][1]["error"], "not_owner");
    let events = g.wait_sensor(3).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(g.sensor_events().len(), 3, "{events:?}");
}
