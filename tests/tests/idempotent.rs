//! Batches and idempotent events, end to end through the real binaries: a
//! user server's `POST /events` answered item by item and kept in order per
//! configuration, and an event named with an `id` taken once within the
//! transformer's window, at an HTTP sensor, a core NATS subscriber and a
//! JetStream stream, also after the transformer was SIGKILLed in between.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use gateway_tests::*;
use serde_json::{json, Value};

/// A configuration of the test user server that produces nothing itself:
/// the test posts the events.
const QUIET: &str = r#"{"count": 0}"#;

/// One `/events` item: event `seq` of `src` (the payload the order checks
/// read), named `id` when given.
fn item(src: &str, seq: usize, id: Option<&str>) -> Value {
    let data = json!({ "src": src, "seq": seq, "timeID": "batch" }).to_string();
    let mut v = json!({
        "src": src,
        "payload": base64::engine::general_purpose::STANDARD.encode(data),
    });
    if let Some(id) = id {
        v["id"] = json!(id);
    }
    v
}

/// POSTs `items` to `/events` and returns the per-item results.
async fn post_events(g: &Gateway, items: &[Value]) -> Vec<Value> {
    let r = g
        .post(
            &g.pc_url("/events"),
            "application/json",
            Value::from(items.to_vec()).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let results = r.json["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        results.len(),
        items.len(),
        "one result per item: {}",
        r.text
    );
    results
}

async fn gateway(configs: &[(&str, &str)], transformer_env: &[(&str, &str)]) -> Gateway {
    let mut g = Gateway::new(UserServerKind::Python);
    for (k, v) in transformer_env {
        g.transformer_env.push((k.to_string(), v.to_string()));
    }
    for (k, v) in configs {
        g.set_config(k, v);
    }
    g.start_all().await;
    for (k, _) in configs {
        g.wait_phase(k, "Running").await;
    }
    g
}

fn statuses(results: &[Value]) -> Vec<u64> {
    results
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test]
async fn a_mixed_batch_is_answered_item_by_item_and_a_refusal_holds_back_its_configuration() {
    // Three events fill the sensor's queue while the sensor holds them.
    let g = gateway(
        &[("alpha", QUIET), ("beta", QUIET)],
        &[
            ("TRANSFORMER_QUEUE_CAPACITY", "3"),
            ("TRANSFORMER_ADMIT_WAIT", "0s"),
        ],
    )
    .await;
    std::fs::write(&g.hold_file, "").expect("hold the sensor");
    let mut bad = item("alpha", 9, None);
    bad["payload"] = json!("%%% not base64");
    let batch = [
        item("alpha", 0, None),
        item("alpha", 1, None),
        item("alpha", 2, None),
        bad,
        item("ghost", 0, None),
        json!({ "src": "beta", "payload": "", "id": "" }),
        item("beta", 0, None),
        item("beta", 1, None),
    ];
    let results = post_events(&g, &batch).await;
    assert_eq!(
        statuses(&results),
        [200, 200, 200, 400, 404, 400, 503, 503],
        "{results:?}"
    );
    assert_eq!(results[3]["error"], "bad_request");
    assert!(results[3]["detail"]
        .as_str()
        .unwrap_or("")
        .contains("base64"));
    assert_eq!(results[4]["error"], "unknown_src");
    assert!(results[5]["detail"]
        .as_str()
        .unwrap_or("")
        .contains("\"id\""));
    assert_eq!(results[6]["error"], "backpressure");
    assert!(results[6]["retry_after"].as_u64().is_some_and(|s| s >= 1));
    // beta 1 was not taken, though room may have come: it would have
    // overtaken beta 0.
    assert_eq!(results[7]["status"], 503);
    let ids: HashSet<&str> = results[..3]
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3, "each taken event has its own CloudEvent id");
    std::fs::remove_file(&g.hold_file).expect("release the sensor");
    let got = g.wait_sensor(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_ids: HashSet<&str> = got.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(
        got_ids, ids,
        "exactly the events answered 200 are delivered"
    );
    bodies_that_are_not_batches_are_one_error(&g).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        g.sensor_events().len(),
        3,
        "nothing of a refused body is taken"
    );
}

/// A body that is not a batch, or one over the limit, is one error.
async fn bodies_that_are_not_batches_are_one_error(g: &Gateway) {
    for (body, status) in [
        (json!({ "src": "alpha", "payload": "" }).to_string(), 400),
        ("[{\"src\": \"alpha\"".to_owned(), 400),
        (
            json!([item("alpha", 7, None), "not an object"]).to_string(),
            400,
        ),
    ] {
        let r = g.post(&g.pc_url("/events"), "application/json", body).await;
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.json["error"], "bad_request", "{}", r.text);
    }
    let too_many: Vec<Value> = (0..1001).map(|i| item("alpha", 100 + i, None)).collect();
    let r = g
        .post(
            &g.pc_url("/events"),
            "application/json",
            Value::from(too_many).to_string(),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(
        r.text.contains("GATEWAY_PROCESSOR_MAX_BATCH_EVENTS"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn events_of_a_configuration_keep_their_order_across_batches() {
    let g = gateway(&[("alpha", QUIET), ("beta", QUIET)], &[]).await;
    let mut seq = 0;
    for _ in 0..5 {
        let batch: Vec<Value> = (0..100)
            .flat_map(|i| [item("alpha", seq + i, None), item("beta", seq + i, None)])
            .collect();
        let results = post_events(&g, &batch).await;
        assert!(statuses(&results).iter().all(|s| *s == 200), "{results:?}");
        seq += 100;
    }
    let got = g.wait_sensor(1000).await;
    assert_ordered(&got);
    for src in ["alpha", "beta"] {
        let seqs: Vec<i64> = got
            .iter()
            .filter(|e| e["subject"] == src)
            .map(|e| payload(e)["seq"].as_i64().unwrap_or(-1))
            .collect();
        assert_eq!(seqs, (0..500).collect::<Vec<i64>>(), "{src}");
    }
}

/// The same id twice (once alone, once in a batch with a repeat inside it):
/// one CloudEvent, the same id in every answer, the second marked duplicate.
async fn post_twice(g: &Gateway, id: &str) -> String {
    let first = g
        .post(
            &g.pc_url("/event"),
            "application/json",
            item("alpha", 0, Some(id)).to_string(),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(first.json.get("duplicate").is_none(), "{}", first.text);
    let ce_id = first.json["id"].as_str().expect("an id").to_owned();
    let results = post_events(
        g,
        &[
            item("alpha", 0, Some(id)),
            item("alpha", 1, Some(&format!("{id}-next"))),
            item("alpha", 1, Some(&format!("{id}-next"))),
        ],
    )
    .await;
    assert_eq!(statuses(&results), [200, 200, 200], "{results:?}");
    assert_eq!(results[0]["id"], ce_id.as_str());
    assert_eq!(results[0]["duplicate"], true);
    assert!(results[1].get("duplicate").is_none(), "{results:?}");
    assert_eq!(results[2]["duplicate"], true, "a repeat inside one batch");
    assert_eq!(results[2]["id"], results[1]["id"]);
    ce_id
}

#[tokio::test]
async fn a_repeated_id_reaches_an_http_sensor_and_jetstream_once() {
    let mut g = Gateway::new(UserServerKind::Python);
    let nats = NatsServer::start(g.dir.path()).await;
    for (k, v) in [
        ("EVENT_PROTOCOL", "HTTP,NATS".to_owned()),
        ("NATS_URL", nats.url()),
        ("NATS_TYPE", "Streaming".to_owned()),
    ] {
        g.transformer_env.push((k.into(), v));
    }
    g.set_config("alpha", QUIET);
    g.start_all().await;
    g.wait_phase("alpha", "Running").await;
    let ce_id = post_twice(&g, "orders/0/42").await;
    let got = g.wait_sensor(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = if got.len() < 3 {
        g.sensor_events()
    } else {
        got
    };
    assert_eq!(got.len(), 2, "each id once at the sensor: {got:?}");
    assert_eq!(got[0]["id"], ce_id.as_str());
    assert_eq!(
        got[0]["originid"], "orders/0/42",
        "the user server's id travels on"
    );
    let js = nats.jetstream().await;
    let stored = wait_for("both events in the stream", || async {
        let mut s = js.get_stream("TEST-GATEWAY").await.ok()?;
        let n = s.info().await.ok()?.state.messages;
        (n >= 2).then_some(n)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = js.get_stream("TEST-GATEWAY").await.expect("stream");
    assert_eq!(s.info().await.expect("info").state.messages, 2, "{stored}");
    assert_eq!(
        g.metric(&g.tr_url("/metrics"), "transformer_events_duplicate_total")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_repeated_id_reaches_a_core_nats_subscriber_once() {
    let mut g = Gateway::new(UserServerKind::Python);
    let nats = NatsServer::start(g.dir.path()).await;
    let (out, _sub) = into_core_nats(&mut g, &nats).await;
    g.set_config("alpha", QUIET);
    g.start_all().await;
    g.wait_phase("alpha", "Running").await;
    let ce_id = post_twice(&g, "core-1").await;
    wait_for("both events at the subscriber", || async {
        (read_jsonl(&out).len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = read_jsonl(&out);
    assert_eq!(got.len(), 2, "each id once: {got:?}");
    assert_eq!(got[0]["id"], ce_id.as_str());
    assert_eq!(got[0]["originid"], "core-1");
}

#[tokio::test]
async fn a_repeat_after_a_transformer_sigkill_is_still_a_duplicate() {
    let mut g = gateway(&[("alpha", QUIET), ("beta", QUIET)], &[]).await;
    let first = post_events(
        &g,
        &[item("alpha", 0, Some("k-1")), item("beta", 0, Some("k-1"))],
    )
    .await;
    assert_eq!(statuses(&first), [200, 200]);
    assert_ne!(
        first[0]["id"], first[1]["id"],
        "two configurations never share an id"
    );
    g.wait_sensor(2).await;
    // Killed only once the deliveries' acknowledgements are written (they
    // linger a moment): an event delivered but not yet acknowledged on disk
    // is delivered again after a crash (at least once, the same CloudEvent
    // id), which is not what this test is about.
    wait_for("the queue to drain", || async {
        (g.metric(&g.tr_url("/metrics"), "transformer_queue_depth")
            .await
            == 0.0)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    g.transformer.as_mut().expect("transformer").kill();
    g.start_transformer().await;
    let again = wait_for("the transformer to take events again", || async {
        let r = g
            .post(
                &g.pc_url("/events"),
                "application/json",
                json!([item("alpha", 0, Some("k-1")), item("beta", 0, Some("k-1"))]).to_string(),
            )
            .await;
        (r.status == 200 && r.json["results"][0]["status"] == 200).then_some(r.json)
    })
    .await;
    for i in 0..2 {
        assert_eq!(again["results"][i]["duplicate"], true, "{again}");
        assert_eq!(again["results"][i]["id"], first[i]["id"], "{again}");
    }
    assert_eq!(
        g.metric(&g.tr_url("/metrics"), "transformer_dedup_remembered")
            .await,
        2.0,
        "the two names, remembered across the crash"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(g.sensor_events().len(), 2, "nothing delivered twice");
}

#[tokio::test]
async fn a_repeat_after_the_window_is_delivered_again() {
    let g = gateway(&[("alpha", QUIET)], &[("TRANSFORMER_DEDUP_WINDOW", "1s")]).await;
    let first = post_events(&g, &[item("alpha", 0, Some("w-1"))]).await;
    g.wait_sensor(1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = post_events(&g, &[item("alpha", 0, Some("w-1"))]).await;
    assert!(second[0].get("duplicate").is_none(), "{second:?}");
    assert_eq!(
        second[0]["id"], first[0]["id"],
        "the same id, the same CloudEvent id"
    );
    let got = g.wait_sensor(2).await;
    assert_eq!(got[0]["id"], got[1]["id"]);
}

#[tokio::test]
async fn with_the_window_off_a_repeat_is_delivered_again() {
    let g = gateway(&[("alpha", QUIET)], &[("TRANSFORMER_DEDUP_WINDOW", "0")]).await;
    for _ in 0..2 {
        let r = post_events(&g, &[item("alpha", 0, Some("off-1"))]).await;
        assert!(r[0].get("duplicate").is_none(), "{r:?}");
    }
    g.wait_sensor(2).await;
}

/// A thousand events in one `/events` from Python's standard library, with
/// ids, then the same thousand again: 1,000 at the sensor, in order.
#[tokio::test]
async fn a_batch_of_a_thousand_from_python_urllib_is_taken_once() {
    let g = gateway(&[("alpha", QUIET)], &[]).await;
    let script = r#"
import base64, json, sys, urllib.request
url = sys.argv[1]
items = [{"src": "alpha", "id": f"py-{i}",
          "payload": base64.b64encode(json.dumps({"src": "alpha", "seq": i, "timeID": "py"}).encode()).decode()}
         for i in range(1000)]
for round in range(2):
    req = urllib.request.Request(url, json.dumps(items).encode(), {"Content-Type": "application/json"})
    results = json.load(urllib.request.urlopen(req, timeout=60))["results"]
    assert len(results) == 1000, len(results)
    assert all(r["status"] == 200 for r in results), [r for r in results if r["status"] != 200][:3]
    dup = sum(1 for r in results if r.get("duplicate"))
    print(f"round {round}: {dup} duplicates", flush=True)
"#;
    let out = run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(g.pc_url("/events")),
        "the Python batch client",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("round 0: 0 duplicates"), "{text}");
    assert!(text.contains("round 1: 1000 duplicates"), "{text}");
    let got = g.wait_sensor(1000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(g.sensor_events().len(), 1000);
    assert_ordered(&got);
}

/// A relayed CloudEvent is remembered by its `source` and `id`: the same
/// one posted twice (an upstream gateway retrying after a lost answer) is
/// delivered once; another source's event with the same id is another event.
#[tokio::test]
async fn a_relayed_cloudevent_posted_twice_is_delivered_once() {
    let g = gateway(&[], &[]).await;
    for (source, expect_duplicate) in [
        ("upstream", false),
        ("upstream", true),
        ("elsewhere", false),
    ] {
        let r = g
            .http
            .post(g.tr_url("/"))
            .header("ce-specversion", "1.0")
            .header("ce-id", "evt-1")
            .header("ce-source", source)
            .header("ce-type", "t")
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("POST a CloudEvent");
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.expect("JSON answer");
        assert_eq!(body["id"], "evt-1");
        assert_eq!(body.get("duplicate").is_some(), expect_duplicate, "{body}");
    }
    g.wait_sensor(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(g.sensor_events().len(), 2);
}

/// The Rust SDK's emitter, as a user server in this process: 300 events
/// emitted at once pile up into `/events` requests, each with its id; emitted
/// again, every one is answered with the same CloudEvent id, and the sensor
/// has each once, in order.
#[tokio::test]
async fn the_rust_sdks_emitter_sends_piled_up_events_together_and_with_ids() {
    use gateway_sdk::{CancellationToken, ConfigData, ConfigExecutor, Emitter, Event};

    struct Bulk(tokio::sync::mpsc::UnboundedSender<Vec<Result<String, String>>>);

    impl ConfigExecutor for Bulk {
        fn validate(&self, _: &ConfigData) -> Result<(), String> {
            Ok(())
        }
        fn start(
            &self,
            config: ConfigData,
            emitter: Emitter,
            _stop: CancellationToken,
        ) -> impl std::future::Future<Output = ()> + Send + 'static {
            let report = self.0.clone();
            async move {
                let _ = emitter.running().await;
                for _round in 0..2 {
                    let events = (0..300).map(|seq| {
                        let data = json!({ "src": config.src, "seq": seq, "timeID": "sdk" });
                        Event::new(data.to_string().into_bytes()).with_id(format!("sdk-{seq}"))
                    });
                    let answers = emitter.emit_all(events).await;
                    let _ = report.send(
                        answers
                            .into_iter()
                            .map(|a| a.map_err(|e| e.to_string()))
                            .collect(),
                    );
                }
            }
        }
    }

    let mut g = Gateway::new(UserServerKind::Python);
    g.set_config("bulk", "{}");
    g.start_sensor().await;
    g.start_transformer().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", g.us_port))
        .await
        .expect("bind the user server's port");
    let mut settings = gateway_sdk::Settings::from_env().expect("settings");
    settings.processor_client = g.pc_url("");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway_sdk::serve(Bulk(tx), settings, listener, async {
        let _ = stopped.await;
    }));
    g.start_processor().await;
    let first = rx.recv().await.expect("the first round's answers");
    let second = rx.recv().await.expect("the second round's answers");
    assert!(first.iter().all(Result::is_ok), "{first:?}");
    assert_eq!(first, second, "the same ids, the same CloudEvent ids");
    let got = g.wait_sensor(300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(g.sensor_events().len(), 300, "each once");
    assert_ordered(&got);
    assert!(
        g.metric(&g.tr_url("/metrics"), "transformer_batches_total")
            .await
            >= 1.0,
        "events went together"
    );
    let _ = stop.send(());
    let _ = server.await;
}

/// A producer that gives up on a request (a client timeout) while its named
/// event waits for room does not leave the name held: its retry is answered
/// (taken, or a duplicate), never "being taken" for ever.
#[tokio::test]
async fn a_request_given_up_halfway_does_not_hold_its_id() {
    let g = gateway(
        &[("alpha", QUIET)],
        &[
            ("TRANSFORMER_QUEUE_CAPACITY", "1"),
            ("TRANSFORMER_ADMIT_WAIT", "1s"),
        ],
    )
    .await;
    std::fs::write(&g.hold_file, "").expect("hold the sensor");
    let post = |id: &str, timeout: Duration| {
        let body = item("alpha", 0, Some(id)).to_string();
        g.http
            .post(g.tr_url("/"))
            .header("content-type", "application/json")
            .timeout(timeout)
            .body(body)
            .send()
    };
    let first = post("first", Duration::from_secs(5)).await.expect("first");
    assert_eq!(first.status(), 200);
    // The queue is full: this one waits for room, and its client gives up.
    assert!(post("second", Duration::from_millis(200)).await.is_err());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::remove_file(&g.hold_file).expect("release the sensor");
    wait_for("the retry to be answered 200", || async {
        let r = post("second", Duration::from_secs(5)).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    let got = g.wait_sensor(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(g.sensor_events().len(), 2, "each id once");
}

/// The Python batch example (standard library only): a thousand events in one
/// `/events`, each with its id, at the sensor once each and in order.
#[tokio::test]
async fn the_python_batch_example_sends_a_thousand_with_ids() {
    let g = Gateway::up_with(
        &[("bulk", r#"{"count": 1000, "batch": 1000}"#.to_owned())],
        |_| {
            let mut cmd = Command::new("python3");
            cmd.arg(root().join("sdk-examples/python-batch/user_server.py"));
            cmd
        },
    )
    .await;
    let got = g.wait_sensor(1000).await;
    assert_ordered(&got);
    let ids: HashSet<&str> = got.iter().filter_map(|e| e["originid"].as_str()).collect();
    assert_eq!(ids.len(), 1000, "each event carries its own id");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(g.sensor_events().len(), 1000);
}

/// Past its bound the memory never takes an id it cannot remember: a new id
/// is answered 503 with Retry-After (counted), one it holds is still a
/// duplicate, and unnamed events go through as ever.
#[tokio::test]
async fn a_full_memory_refuses_new_ids_and_still_knows_the_old() {
    let g = gateway(
        &[("alpha", QUIET)],
        &[
            ("TRANSFORMER_DEDUP_MAX_IDS", "2"),
            ("TRANSFORMER_DEDUP_WINDOW", "1h"),
        ],
    )
    .await;
    let results = post_events(
        &g,
        &[
            item("alpha", 0, Some("one")),
            item("alpha", 1, Some("two")),
            item("alpha", 2, Some("three")),
            item("alpha", 3, None),
        ],
    )
    .await;
    assert_eq!(statuses(&results), [200, 200, 503, 503], "{results:?}");
    assert!(results[2]["retry_after"].as_u64().is_some_and(|s| s >= 1));
    assert!(
        results[2]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("TRANSFORMER_DEDUP_MAX_IDS")),
        "{results:?}"
    );
    let again = post_events(&g, &[item("alpha", 0, Some("one")), item("alpha", 9, None)]).await;
    assert_eq!(statuses(&again), [200, 200], "{again:?}");
    assert_eq!(again[0]["duplicate"], true);
    assert!(
        g.metric(&g.tr_url("/metrics"), "transformer_dedup_full_total")
            .await
            >= 1.0
    );
    assert_eq!(
        g.metric(&g.tr_url("/metrics"), "transformer_dedup_remembered")
            .await,
        2.0,
        "a full memory holds its bound"
    );
    g.wait_sensor(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(g.sensor_events().len(), 3, "one, two and the unnamed one");
}
