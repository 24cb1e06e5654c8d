//! Triggers (`TRANSFORMER_TRIGGERS`, Knative's Trigger documents) through the
//! real transformer to a real sensor and NATS: each event reaches exactly the
//! triggers whose filters want it, in every dialect; an event nobody wants is
//! taken and stored for nobody; each trigger's delivery settings hold; a bad
//! trigger stops the process naming the file, the trigger and the key.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use gateway_tests::*;
use serde_json::Value;

/// A gateway of a transformer and a sensor, its triggers in a ConfigMap-like
/// directory (one file per trigger), with `env` more for the transformer.
async fn transformer_with(triggers: &[(&str, String)], env: &[(&str, &str)]) -> Gateway {
    let mut g = Gateway::new(UserServerKind::Python);
    let dir = g.dir.path().join("triggers");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (name, text) in triggers {
        std::fs::write(dir.join(format!("{name}.yaml")), text).expect("write trigger");
    }
    g.transformer_env
        .push(("TRANSFORMER_TRIGGERS".into(), dir.display().to_string()));
    for (k, v) in env {
        g.transformer_env.push((k.to_string(), v.to_string()));
    }
    g.start_sensor().await;
    g.start_transformer().await;
    g
}

/// A Knative Trigger document sending to `uri`, with `spec` lines more.
fn trigger(name: &str, uri: &str, spec: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n\
         spec:\n  subscriber:\n    uri: {uri}\n{spec}"
    )
}

/// Posts `n` events of `src` to the transformer.
async fn post(g: &Gateway, src: &str, n: usize) {
    for seq in 0..n {
        let r = g
            .post(
                &g.tr_url("/"),
                "application/json",
                event_body(src, "t", seq),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

/// How many events each sensor path received, per subject.
fn by_path(g: &Gateway) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for e in g.sensor_events() {
        let path = e["path"].as_str().unwrap_or("?").to_owned();
        let subject = e["subject"].as_str().unwrap_or("?").to_owned();
        *out.entry(path).or_default().entry(subject).or_default() += 1;
    }
    out
}

/// One trigger per dialect (and one without filter), each sending to its own
/// path of the sensor at `base`.
fn one_per_dialect(base: &str) -> [(&'static str, String); 6] {
    [
        ("orders", trigger("orders", &format!("{base}/orders"), "  filters:\n    - exact: {subject: orders}\n")),
        (
            "payments",
            trigger(
                "payments",
                &format!("{base}/payments"),
                "  filters:\n    - cesql: \"subject IN ('orders', 'audit') AND team = 'payments'\"\n",
            ),
        ),
        (
            "not-audit",
            trigger("not-audit", &format!("{base}/not-audit"), "  filters:\n    - not: {exact: {subject: audit}}\n"),
        ),
        (
            "attributes",
            trigger("attributes", &format!("{base}/attributes"), "  filter:\n    attributes: {subject: audit, team: ''}\n"),
        ),
        (
            "mixed",
            trigger(
                "mixed",
                &format!("{base}/mixed"),
                "  filters:\n    - any: [{prefix: {subject: ord}}, {suffix: {subject: dit}}]\n    - all: [{not: {exact: {subject: orders}}}]\n",
            ),
        ),
        ("everything", trigger("everything", &format!("{base}/everything"), "")),
    ]
}

/// What each sensor path should get of 3 events of each of orders, audit
/// and other: the plain watcher (path /) everything, each trigger its share.
fn wanted_by_path() -> BTreeMap<String, BTreeMap<String, usize>> {
    [
        ("/", vec![("audit", 3), ("orders", 3), ("other", 3)]),
        ("/orders", vec![("orders", 3)]),
        ("/payments", vec![("audit", 3), ("orders", 3)]),
        ("/not-audit", vec![("orders", 3), ("other", 3)]),
        ("/attributes", vec![("audit", 3)]),
        ("/mixed", vec![("audit", 3)]),
        (
            "/everything",
            vec![("audit", 3), ("orders", 3), ("other", 3)],
        ),
    ]
    .into_iter()
    .map(|(p, v)| {
        (
            p.to_owned(),
            v.into_iter().map(|(s, n)| (s.to_owned(), n)).collect(),
        )
    })
    .collect()
}

#[tokio::test]
async fn each_event_reaches_exactly_the_triggers_whose_filters_want_it() {
    let port = free_port();
    // The sensor's port, chosen first: the triggers name it.
    let base = format!("http://127.0.0.1:{port}");
    let triggers = one_per_dialect(&base);
    let mut g = Gateway::new(UserServerKind::Python);
    g.sensor_port = port;
    let dir = g.dir.path().join("triggers");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (name, text) in &triggers {
        std::fs::write(dir.join(format!("{name}.yaml")), text).expect("write trigger");
    }
    g.transformer_env
        .push(("TRANSFORMER_TRIGGERS".into(), dir.display().to_string()));
    g.transformer_env.push((
        "K_CE_OVERRIDES".into(),
        r#"{"extensions": {"team": "payments"}}"#.into(),
    ));
    g.start_sensor().await;
    g.start_transformer().await;

    for src in ["orders", "audit", "other"] {
        post(&g, src, 3).await;
    }
    // SENSOR_WATCHERS (the harness sets it: path /) is a trigger without filter.
    let want = wanted_by_path();
    wait_for("every trigger's events at the sensor", || async {
        (by_path(&g) == want).then_some(())
    })
    .await;
    // Nothing more arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(by_path(&g), want);
    for e in g.sensor_events() {
        assert_eq!(e["extensions"]["team"], "payments", "K_CE_OVERRIDES: {e}");
    }

    // GET /triggers: each trigger, its subscriber, filter and queue depth.
    let listed: Value = g
        .http
        .get(g.tr_url("/triggers"))
        .send()
        .await
        .expect("GET /triggers")
        .json()
        .await
        .expect("JSON");
    let names: Vec<&str> = listed["triggers"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "attributes",
            "everything",
            "mixed",
            "not-audit",
            "orders",
            "payments"
        ]
    );
    let orders = &listed["triggers"][4];
    assert_eq!(orders["subscriber"], format!("{base}/orders"));
    assert_eq!(
        orders["filter"],
        serde_json::json!({"all": [{"exact": {"subject": "orders"}}]})
    );
    assert_eq!(orders["queueDepth"], 0);
    let filtered = g
        .metric(
            &g.tr_url("/metrics"),
            "transformer_events_filtered_total{watcher=\"orders\"}",
        )
        .await;
    assert_eq!(filtered, 6.0);
}

/// An event no trigger wants is answered 2xx and stored for nobody; a named
/// one is still remembered, so its repeat is a duplicate.
#[tokio::test]
async fn an_event_nobody_wants_is_taken_for_nobody_and_remembered() {
    let g = transformer_with(
        &[(
            "orders",
            trigger(
                "orders",
                "http://127.0.0.1:9/never",
                "  filters:\n    - exact: {subject: orders}\n",
            ),
        )],
        &[("SENSOR_WATCHERS", "")],
    )
    .await;
    let body = serde_json::json!({"src": "other", "payload": "e30=", "id": "one"}).to_string();
    let first = g
        .post(&g.tr_url("/"), "application/json", body.clone())
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json.get("duplicate"), None);
    let again = g.post(&g.tr_url("/"), "application/json", body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["duplicate"], true, "{}", again.text);
    assert_eq!(again.json["id"], first.json["id"]);
    let depth = g
        .metric(&g.tr_url("/metrics"), "transformer_queue_depth")
        .await;
    assert_eq!(depth, 0.0, "stored for nobody");
}

/// A trigger's `delivery` holds for it alone: one retry, then the event is a
/// dead letter under the trigger's name, while the plain watcher keeps
/// retrying.
#[tokio::test]
async fn a_triggers_delivery_settings_hold_for_it_alone() {
    let port = free_port();
    let mut g = Gateway::new(UserServerKind::Python);
    g.sensor_port = port;
    let dir = g.dir.path().join("triggers");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("impatient.yaml"),
        format!(
            "name: impatient\nsubscriber: {{uri: 'http://127.0.0.1:{port}/impatient'}}\n\
             delivery: {{retry: 1, backoffPolicy: linear, backoffDelay: PT0.1S, timeout: PT2S}}\n"
        ),
    )
    .expect("write");
    g.transformer_env
        .push(("TRANSFORMER_TRIGGERS".into(), dir.display().to_string()));
    g.start_sensor().await;
    g.start_transformer().await;
    std::fs::write(&g.fail_file, "").expect("fail");
    post(&g, "jobs", 1).await;
    let letters = wait_for("a dead letter of impatient", || async {
        let l = dead_letters(&g, "impatient").await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["attempts"], 2, "{}", letters[0]);
    // The plain watcher (SENSOR_WATCHERS) keeps retrying: it delivers once
    // the sensor is back.
    std::fs::remove_file(&g.fail_file).expect("unfail");
    let got = g.wait_sensor(1).await;
    assert_eq!(got[0]["path"], "/");
}

/// `nats:SUBJECT` subscribers publish on the transformer's NATS connection.
#[tokio::test]
async fn a_nats_subscriber_gets_its_events_on_its_subject() {
    use futures::StreamExt as _;
    let nats_dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(nats_dir.path()).await;
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let mut sub = client.subscribe("routed.orders").await.expect("subscribe");
    client.flush().await.expect("flush");
    let url = nats.url();
    let g = transformer_with(
        &[(
            "to-nats",
            trigger(
                "to-nats",
                "nats:routed.orders",
                "  filters:\n    - exact: {subject: orders}\n",
            ),
        )],
        &[("NATS_URL", url.as_str()), ("NATS_CE_MODE", "structured")],
    )
    .await;
    post(&g, "other", 1).await;
    post(&g, "orders", 2).await;
    for _ in 0..2 {
        let m = tokio::time::timeout(DEADLINE, sub.next())
            .await
            .expect("a message on routed.orders")
            .expect("subscription open");
        let e: Value = serde_json::from_slice(&m.payload).expect("structured CloudEvent");
        assert_eq!(e["subject"], "orders");
    }
    let more = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(more.is_err(), "only the wanted events");
}

/// A trigger that cannot be used stops the transformer at start, naming the
/// variable, the file, the trigger and the key.
#[test]
fn a_bad_trigger_stops_the_transformer_naming_file_trigger_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "broker.yaml",
            trigger("orders", "http://x/", "  broker: default\n"),
            "spec.broker",
        ),
        (
            "cesql.yaml",
            trigger("bad-sql", "http://x/", "  filters:\n    - cesql: 'a = '\n"),
            "spec.filters[0].cesql",
        ),
        (
            "ref.yaml",
            "name: by-ref\nsubscriber: {ref: {kind: Service, name: x}}\n".to_owned(),
            "spec.subscriber.ref",
        ),
    ];
    for (file, text, key) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).expect("write");
        let out = Command::new(bin("transformer"))
            .env_clear()
            .env("GATEWAY_NAME", "g")
            .env("TRANSFORMER_PORT", free_port().to_string())
            .env("TRANSFORMER_DURABLE", "false")
            .env("TRANSFORMER_TRIGGERS", &path)
            .output()
            .expect("run transformer");
        assert!(!out.status.success(), "{file}: started");
        let err = String::from_utf8_lossy(&out.stderr);
        for words in ["TRANSFORMER_TRIGGERS", file, key] {
            assert!(err.contains(words), "{file}: no {words:?} in: {err}");
        }
    }
    let out = Command::new(bin("transformer"))
        .env_clear()
        .env("GATEWAY_NAME", "g")
        .env("TRANSFORMER_PORT", free_port().to_string())
        .env("TRANSFORMER_DURABLE", "false")
        .env("K_CE_OVERRIDES", r#"{"extensions": {"Bad-Name": "x"}}"#)
        .output()
        .expect("run transformer");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("K_CE_OVERRIDES") && err.contains("Bad-Name"),
        "{err}"
    );
}

/// A gateway whose triggers name the sensor's port: `make(port)` gives them.
async fn with_sensor_triggers(make: impl Fn(u16) -> Vec<(String, String)>) -> Gateway {
    let port = free_port();
    let mut g = Gateway::new(UserServerKind::Python);
    g.sensor_port = port;
    let dir = g.dir.path().join("triggers");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (name, text) in make(port) {
        std::fs::write(dir.join(format!("{name}.yaml")), text).expect("write trigger");
    }
    g.transformer_env
        .push(("TRANSFORMER_TRIGGERS".into(), dir.display().to_string()));
    g.transformer_env
        .push(("SENSOR_WATCHERS".into(), String::new()));
    g.start_sensor().await;
    g.start_transformer().await;
    g
}

async fn dead_letters(g: &Gateway, watcher: &str) -> Vec<Value> {
    let page: Value = match g
        .http
        .get(g.tr_url(&format!("/deadletters?watcher={watcher}")))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    };
    page["deadletters"].as_array().cloned().unwrap_or_default()
}

/// An event its subscriber refuses for good goes to the dead-letter sink as
/// a CloudEvent with Knative's extensions (read here by the CloudEvents
/// SDK); while the sink is down too it stays in the local dead letters, and
/// goes once the sink is back.
#[tokio::test]
async fn dead_letters_reach_the_sink_with_knatives_extensions_and_wait_while_it_is_down() {
    let g = with_sensor_triggers(|port| {
        vec![(
            "refused".into(),
            trigger(
                "refused",
                &format!("http://127.0.0.1:{port}/refuse"),
                &format!(
                    "  delivery:\n    retry: 0\n    deadLetterSink: {{uri: 'http://127.0.0.1:{port}/dls'}}\n"
                ),
            ),
        )]
    })
    .await;
    post(&g, "orders", 1).await;
    let got = g.wait_sensor(1).await;
    let e = &got[0];
    assert_eq!(e["path"], "/dls");
    let x = &e["extensions"];
    assert_eq!(
        x["knativeerrordest"],
        format!("http://127.0.0.1:{}/refuse", g.sensor_port)
    );
    assert_eq!(x["knativeerrorcode"], "422");
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD
        .decode(x["knativeerrordata"].as_str().expect("knativeerrordata"))
        .expect("base64");
    assert_eq!(data, b"refused on purpose");
    assert_eq!(e["subject"], "orders");
    wait_for("the forwarded letter to leave the local store", || async {
        dead_letters(&g, "refused").await.is_empty().then_some(())
    })
    .await;

    // The sink down too: the letter stays stored, and goes when it is back.
    std::fs::write(&g.fail_file, "").expect("fail");
    post(&g, "audit", 1).await;
    let kept = wait_for("the letter kept while the sink fails", || async {
        let l = dead_letters(&g, "refused").await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(kept.len(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(dead_letters(&g, "refused").await.len(), 1, "still kept");
    std::fs::remove_file(&g.fail_file).expect("unfail");
    let got = g.wait_sensor(2).await;
    assert_eq!(got[1]["subject"], "audit");
    assert_eq!(got[1]["extensions"]["knativeerrorcode"], "500");
    wait_for("the second letter forwarded", || async {
        dead_letters(&g, "refused").await.is_empty().then_some(())
    })
    .await;
}

/// `rateLimit` paces a trigger's deliveries: 60 events at 20 a second
/// arrive over about three seconds, within 10%.
#[tokio::test]
async fn a_rate_limit_paces_deliveries_within_ten_percent() {
    let g = with_sensor_triggers(|port| {
        vec![(
            "paced".into(),
            trigger(
                "paced",
                &format!("http://127.0.0.1:{port}/paced"),
                "  rateLimit: {unit: Second, requestsPerUnit: 20}\n",
            ),
        )]
    })
    .await;
    post(&g, "jobs", 60).await;
    let got = wait_for_within("60 paced events", Duration::from_secs(60), || async {
        let v = g.sensor_events();
        (v.len() >= 60).then_some(v)
    })
    .await;
    let at: Vec<f64> = got
        .iter()
        .filter_map(|e| e["received_at"].as_f64())
        .collect();
    let spread =
        at.iter().cloned().fold(f64::MIN, f64::max) - at.iter().cloned().fold(f64::MAX, f64::min);
    let rate = 59.0 / spread;
    eprintln!("60 events over {spread:.2} s: {rate:.1}/s");
    assert!((18.0..=22.0).contains(&rate), "{rate:.1}/s against 20/s");
}

/// A 503 with `Retry-After: 30` is waited out as told, up to the trigger's
/// `retryAfterMax` (1 s here), not for 30 s.
#[tokio::test]
async fn retry_after_is_waited_as_told_up_to_retry_after_max() {
    let g = with_sensor_triggers(|port| {
        vec![(
            "busy".into(),
            trigger(
                "busy",
                &format!("http://127.0.0.1:{port}/busy"),
                "  delivery: {retry: 3, backoffDelay: PT0.01S, retryAfterMax: PT1S}\n",
            ),
        )]
    })
    .await;
    let sent = std::time::Instant::now();
    post(&g, "jobs", 1).await;
    g.wait_sensor(1).await;
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "waited only {took:?}: Retry-After ignored"
    );
    assert!(
        took < Duration::from_secs(20),
        "waited {took:?}: retryAfterMax ignored"
    );
}

/// The names `GET /triggers` lists.
async fn trigger_names(g: &Gateway) -> Vec<String> {
    let listed: Value = match g.http.get(g.tr_url("/triggers")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    };
    listed["triggers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn at_path(g: &Gateway, path: &str) -> Vec<Value> {
    g.sensor_events()
        .into_iter()
        .filter(|e| e["path"] == path)
        .collect()
}

/// The triggers changed while events stream: a changed subscriber takes
/// over its trigger's queue (every event reaches the old or the new one),
/// an added trigger gets the events from then on, a removed one gets
/// nothing once its removal is taken; a change that does not load is
/// refused and counted, and the last good set stays.
#[tokio::test]
async fn triggers_reload_live_under_load() {
    const N: usize = 400;
    let g = with_sensor_triggers(|port| {
        vec![
            (
                "a".into(),
                format!("name: a\nsubscriber: {{uri: 'http://127.0.0.1:{port}/a1'}}\n"),
            ),
            (
                "b".into(),
                format!("name: b\nsubscriber: {{uri: 'http://127.0.0.1:{port}/b'}}\n"),
            ),
        ]
    })
    .await;
    let producing = produce_slowly(&g, N);
    wait_for("some events through a and b", || async {
        (at_path(&g, "/a1").len() >= 50 && at_path(&g, "/b").len() >= 50).then_some(())
    })
    .await;
    // a: a new subscriber; b: removed; c: added.
    let dir = g.dir.path().join("triggers");
    let port = g.sensor_port;
    std::fs::write(
        dir.join("a.yaml"),
        format!("name: a\nsubscriber: {{uri: 'http://127.0.0.1:{port}/a2'}}\n"),
    )
    .expect("change a");
    std::fs::remove_file(dir.join("b.yaml")).expect("remove b");
    std::fs::write(
        dir.join("c.yaml"),
        format!("name: c\nsubscriber: {{uri: 'http://127.0.0.1:{port}/c'}}\n"),
    )
    .expect("add c");
    wait_for("the new set taken", || async {
        (trigger_names(&g).await == ["a", "c"]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_at_removal = at_path(&g, "/b").len();
    producing.await.expect("producer");
    let ids = |paths: &[&str]| -> std::collections::HashSet<String> {
        paths
            .iter()
            .flat_map(|p| at_path(&g, p))
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect()
    };
    wait_for("every event at a's old or new subscriber", || async {
        (ids(&["/a1", "/a2"]).len() >= N).then_some(())
    })
    .await;
    assert!(
        !at_path(&g, "/a2").is_empty(),
        "the new subscriber took over"
    );
    assert!(
        !at_path(&g, "/c").is_empty(),
        "the added trigger gets events"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        at_path(&g, "/b").len(),
        b_at_removal,
        "delivered to b after its removal"
    );
    a_bad_change_keeps_the_last_good_set(&g, &dir, &["a", "c"], "/c").await;
}

/// Events of configuration `jobs` posted one by one, 3 ms apart, each taken.
fn produce_slowly(g: &Gateway, n: usize) -> tokio::task::JoinHandle<()> {
    let url = g.tr_url("/");
    let http = g.http.clone();
    tokio::spawn(async move {
        for seq in 0..n {
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .body(event_body("jobs", "t", seq))
                .send()
                .await
                .expect("post");
            assert_eq!(r.status().as_u16(), 200);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    })
}

/// A trigger file that does not load is refused and counted, and the set
/// `names` stays, still delivering to `path`.
async fn a_bad_change_keeps_the_last_good_set(
    g: &Gateway,
    dir: &std::path::Path,
    names: &[&str],
    path: &str,
) {
    std::fs::write(
        dir.join("d.yaml"),
        "name: d\nsubscriber: {uri: 'ftp://nowhere/'}\n",
    )
    .expect("bad");
    wait_for("the bad change refused", || async {
        let refused = g
            .metric(
                &g.tr_url("/metrics"),
                "transformer_trigger_reloads_total{result=\"refused\"}",
            )
            .await;
        (refused >= 1.0).then_some(())
    })
    .await;
    assert_eq!(trigger_names(g).await, names);
    let before = at_path(g, path).len();
    post(g, "jobs", 1).await;
    wait_for("still delivered after the refused change", || async {
        (at_path(g, path).len() > before).then_some(())
    })
    .await;
}
