//! The resource gateway (`sdk-examples/kubernetes`) against the API server
//! emulator of the test support (no real kube-apiserver can be installed
//! here), through the real processor-client and transformer to the sensor:
//! adds, updates and deletes once each, named by uid and resourceVersion;
//! selectors sent to the server and the gateway's own filters; a watch cut
//! and resumed; a 410 Gone relisted without duplicates; the gateway restarted
//! with objects changed meanwhile; refusals shown as the configuration's phase.

use std::process::Command;
use std::time::Duration;

use gateway_tests::*;
use serde_json::{json, Value};

/// The resource gateway's command, pointed at `api`, its state in `state`
/// when given.
fn resource_server(api: &KubeApi, state: Option<&std::path::Path>) -> Command {
    let mut server = Command::new(bin("resource-gateway"));
    server
        .env("KUBECONFIG", &api.kubeconfig)
        .env("RUST_LOG", "info,resource_gateway=debug,kube=debug");
    if let Some(dir) = state {
        server.env("RESOURCE_GATEWAY_STATE_DIR", dir);
    }
    server
}

async fn gateway(
    api: &KubeApi,
    configs: &[(&str, &str)],
    state: Option<&std::path::Path>,
) -> Gateway {
    let configs: Vec<(&str, String)> = configs.iter().map(|(k, v)| (*k, v.to_string())).collect();
    Gateway::up_with(&configs, |_| resource_server(api, state)).await
}

fn pod(name: &str, labels: Value, annotations: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "shop", "labels": labels, "annotations": annotations},
           "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
}

/// The sensor's events of `src`: (type, name, originid).
fn changes(g: &Gateway, src: &str) -> Vec<(String, String, String)> {
    g.sensor_events()
        .into_iter()
        .filter(|e| e["subject"] == src)
        .map(|e| {
            let d = payload(&e);
            (
                d["type"].as_str().unwrap_or("").to_owned(),
                d["body"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                e["originid"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

async fn wait_changes(g: &Gateway, src: &str, n: usize) -> Vec<(String, String, String)> {
    wait_for_within(
        &format!("{n} changes of {src}"),
        Duration::from_secs(30),
        || async {
            let got = changes(g, src);
            (got.len() >= n).then_some(got)
        },
    )
    .await
}

/// Nothing more than `n` arrives within a moment.
async fn settles_at(g: &Gateway, src: &str, n: usize) -> Vec<(String, String, String)> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = changes(g, src);
    assert_eq!(got.len(), n, "no more changes than {n}: {got:?}");
    got
}

/// Lists (not watches) of the shop's pods asked of the API so far.
async fn pod_lists(api: &KubeApi) -> usize {
    api.requests()
        .await
        .into_iter()
        .filter(|r| r["path"] == "/api/v1/namespaces/shop/pods" && r["query"]["watch"].is_null())
        .count()
}

/// Pods `keep`, `change` and `drop`, before the gateway sees them.
async fn three_pods(api: &KubeApi) {
    for name in ["keep", "change", "drop"] {
        api.apply("pods", pod(name, json!({}), json!({}))).await;
    }
}

/// `change` updated, `drop` deleted, `new` added, while the gateway looks away.
async fn change_while_away(api: &KubeApi) {
    api.apply("pods", pod("change", json!({"v": "2"}), json!({})))
        .await;
    api.delete("pods", "shop", "drop").await;
    api.apply("pods", pod("new", json!({}), json!({}))).await;
}

/// The three changes of [`change_while_away`] reported after the first
/// three adds, and nothing more.
async fn reports_what_changed(g: &Gateway) {
    let got = wait_changes(g, "pods", 6).await;
    settles_at(g, "pods", 6).await;
    let mut after: Vec<(&str, &str)> = got[3..]
        .iter()
        .map(|(t, n, _)| (t.as_str(), n.as_str()))
        .collect();
    after.sort_unstable();
    assert_eq!(
        after,
        vec![("ADD", "new"), ("DELETE", "drop"), ("UPDATE", "change")]
    );
}

const PODS: &str = "namespace: shop\nversion: v1\nresource: pods\n";

#[tokio::test]
async fn adds_updates_and_deletes_reach_the_sensor_once_each_named_by_uid_and_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = KubeApi::start(dir.path(), &[]).await;
    let before = api.apply("pods", pod("a", json!({}), json!({}))).await;
    // Another namespace: not this configuration's.
    let mut other = pod("x", json!({}), json!({}));
    other["metadata"]["namespace"] = "ops".into();
    api.apply("pods", other).await;
    let g = gateway(&api, &[("pods", PODS)], None).await;
    g.wait_phase("pods", "Running").await;
    wait_changes(&g, "pods", 1).await;
    let b = api.apply("pods", pod("b", json!({}), json!({}))).await;
    let a2 = api
        .apply("pods", pod("a", json!({"v": "2"}), json!({})))
        .await;
    let gone = api.delete("pods", "shop", "b").await;
    let got = wait_changes(&g, "pods", 4).await;
    let uid = |o: &Value| o["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    let rv = |o: &Value| {
        o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(
        got,
        vec![
            (
                "ADD".into(),
                "a".into(),
                format!("{}/{}", uid(&before), rv(&before))
            ),
            ("ADD".into(), "b".into(), format!("{}/{}", uid(&b), rv(&b))),
            (
                "UPDATE".into(),
                "a".into(),
                format!("{}/{}", uid(&a2), rv(&a2))
            ),
            (
                "DELETE".into(),
                "b".into(),
                format!("{}/deleted", uid(&gone))
            ),
        ]
    );
    settles_at(&g, "pods", 4).await;
    let events: Vec<Value> = g
        .sensor_events()
        .iter()
        .map(|e| payload(e).clone())
        .collect();
    let update = &events[2];
    assert_eq!(
        update["oldBody"]["metadata"]["resourceVersion"],
        rv(&before).as_str()
    );
    assert_eq!(update["body"]["metadata"]["labels"]["v"], "2");
    assert_eq!(
        (
            update["group"].as_str(),
            update["version"].as_str(),
            update["resource"].as_str()
        ),
        (Some(""), Some("v1"), Some("pods"))
    );
    assert!(events[0].get("oldBody").is_none());
    // Listed once, then watched from the list's version, with bookmarks.
    let asked = api.requests().await;
    let watch = asked
        .iter()
        .find(|r| r["query"]["watch"] == "true")
        .expect("a watch");
    assert_eq!(watch["path"], "/api/v1/namespaces/shop/pods");
    assert_eq!(watch["query"]["allowWatchBookmarks"], "true");
}

#[tokio::test]
async fn selectors_go_to_the_server_and_the_gateways_own_filters_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = KubeApi::start(dir.path(), &[]).await;
    let config = "namespace: shop\ngroup: apps\nversion: v1\nresource: deployments\n\
        eventTypes: [ADD, DELETE]\n\
        filter:\n  prefix: web-\n  labels: [{key: tier, operation: \"==\", value: front}, {key: env, operation: in, value: \"prod,stage\"}]\n  \
        fields: [{key: metadata.name, operation: \"!=\", value: web-old}]\n  annotations: {owner: shop}\n";
    let g = gateway(&api, &[("web", config)], None).await;
    g.wait_phase("web", "Running").await;
    let deploy = |name: &str, tier: &str, owner: &str| {
        json!({"metadata": {"name": name, "namespace": "shop",
            "labels": {"tier": tier, "env": "prod"}, "annotations": {"owner": owner}}})
    };
    api.apply("deployments", deploy("web-1", "front", "shop"))
        .await; // in
    api.apply("deployments", deploy("web-2", "back", "shop"))
        .await; // label
    api.apply("deployments", deploy("web-old", "front", "shop"))
        .await; // field
    api.apply("deployments", deploy("db-1", "front", "shop"))
        .await; // prefix
    api.apply("deployments", deploy("web-3", "front", "ops"))
        .await; // annotation
    api.apply("deployments", deploy("web-1", "front", "shop"))
        .await; // an update: not asked for
    api.delete("deployments", "shop", "web-1").await;
    let got = wait_changes(&g, "web", 2).await;
    let names: Vec<(&str, &str)> = got
        .iter()
        .map(|(t, n, _)| (t.as_str(), n.as_str()))
        .collect();
    assert_eq!(names, vec![("ADD", "web-1"), ("DELETE", "web-1")]);
    settles_at(&g, "web", 2).await;
    let asked = api.requests().await;
    let list = asked
        .iter()
        .find(|r| r["path"] == "/apis/apps/v1/namespaces/shop/deployments")
        .expect("a list");
    assert_eq!(
        list["query"]["labelSelector"],
        "tier==front,env in (prod,stage)"
    );
    assert_eq!(list["query"]["fieldSelector"], "metadata.name!=web-old");
}

/// Every watch ended by the server; what changed meanwhile arrives once
/// when the gateway watches again, from the last version it saw.
#[tokio::test]
async fn a_watch_cut_is_resumed_from_the_last_version_without_loss_or_repeat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = KubeApi::start(dir.path(), &[]).await;
    let g = gateway(&api, &[("pods", PODS)], None).await;
    g.wait_phase("pods", "Running").await;
    for round in 0..5 {
        let watching = api.watches().await.len();
        api.apply("pods", pod(&format!("p{round}"), json!({}), json!({})))
            .await;
        api.cut().await;
        api.apply("pods", pod(&format!("q{round}"), json!({}), json!({})))
            .await;
        wait_for("the watch resumed", || async {
            (api.watches().await.len() > watching).then_some(())
        })
        .await;
    }
    let got = wait_changes(&g, "pods", 10).await;
    settles_at(&g, "pods", 10).await;
    let mut names: Vec<&str> = got.iter().map(|(_, n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        vec!["p0", "p1", "p2", "p3", "p4", "q0", "q1", "q2", "q3", "q4"]
    );
    let watches = api.watches().await;
    assert!(
        watches.len() >= 6,
        "watched again after each cut: {watches:?}"
    );
    assert!(watches.iter().all(|w| w["query"]["resourceVersion"]
        .as_str()
        .is_some_and(|v| v != "0")));
}

/// The history compacted while the watch was down: the watch is answered 410
/// Gone, the gateway lists again and reports exactly what changed (an add,
/// an update, a delete it never saw as an event), nothing it had reported.
#[tokio::test]
async fn a_410_gone_relists_and_reports_only_what_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = KubeApi::start(dir.path(), &[]).await;
    three_pods(&api).await;
    let g = gateway(&api, &[("pods", PODS)], None).await;
    g.wait_phase("pods", "Running").await;
    wait_changes(&g, "pods", 3).await;
    // Changes while no watch is open, then the history they were in forgotten.
    api.hold().await;
    change_while_away(&api).await;
    api.compact().await;
    api.release().await;
    reports_what_changed(&g).await;
    let lists = pod_lists(&api).await;
    assert!(
        lists >= 3,
        "listed at the start, for the first look, and again after the 410: {lists}"
    );
}

/// The gateway SIGKILLed, objects changed while it is away, and started
/// again: with its state file it reports the add, the update and the delete;
/// the objects it had reported are not delivered again.
#[tokio::test]
async fn a_restarted_gateway_reports_what_changed_while_it_was_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let api = KubeApi::start(dir.path(), &[]).await;
    three_pods(&api).await;
    let mut g = gateway(&api, &[("pods", PODS)], Some(&state)).await;
    g.wait_phase("pods", "Running").await;
    wait_changes(&g, "pods", 3).await;
    // The state file holds the three once the gateway heard they were taken.
    let file = state.join("706f6473.json"); // "pods" in hex
    wait_for("the state file with three pods", || async {
        let known: Option<serde_json::Map<String, Value>> = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        known.filter(|k| k.len() == 3).map(|_| ())
    })
    .await;
    g.user_server.as_mut().expect("user server").kill();
    change_while_away(&api).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    g.start_user_server_with(resource_server(&api, Some(&state)))
        .await;
    reports_what_changed(&g).await;
}

/// Without a state file a restarted gateway lists every object as added:
/// the ones it had reported carry the same ids (uid and resourceVersion),
/// so the transformer delivers them nowhere again.
#[tokio::test]
async fn without_state_a_restart_delivers_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = KubeApi::start(dir.path(), &[]).await;
    for name in ["a", "b", "c"] {
        api.apply("pods", pod(name, json!({}), json!({}))).await;
    }
    let mut g = gateway(&api, &[("pods", PODS)], None).await;
    g.wait_phase("pods", "Running").await;
    wait_changes(&g, "pods", 3).await;
    g.user_server.as_mut().expect("user server").kill();
    api.apply("pods", pod("b", json!({"v": "2"}), json!({})))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    g.start_user_server_with(resource_server(&api, None)).await;
    let got = wait_changes(&g, "pods", 4).await;
    settles_at(&g, "pods", 4).await;
    assert_eq!(
        (got[3].0.as_str(), got[3].1.as_str()),
        ("ADD", "b"),
        "{got:?}"
    );
    let repeats = g
        .metric(&g.tr_url("/metrics"), "transformer_events_duplicate_total")
        .await;
    assert_eq!(repeats, 2.0, "a and c listed again, known by their ids");
}

/// What the API server refuses is the configuration's Error, in the server's
/// words; an API server away at the start is Pending until it comes.
#[tokio::test]
async fn refusals_are_errors_naming_the_cause_and_an_absent_server_is_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = KubeApi::start(dir.path(), &["--forbid", "configmaps"]).await;
    let g = gateway(
        &api,
        &[
            ("nothing", "version: v1\nresource: gadgets\n"),
            ("forbidden", "version: v1\nresource: configmaps\n"),
            (
                "bad-field",
                "version: v1\nresource: pods\nfilter: {fields: [{key: spec.color, value: red}]}\n",
            ),
            (
                "bad-spec",
                "version: v1\nresource: pods\neventTypes: [CREATE]\n",
            ),
        ],
        None,
    )
    .await;
    for (src, words) in [
        ("nothing", "no gadgets"),
        ("forbidden", "get, list and watch"),
        ("bad-field", "field label not supported: spec.color"),
        ("bad-spec", "eventTypes"),
    ] {
        let c = g.wait_phase(src, "Error").await;
        assert!(
            c["message"].as_str().is_some_and(|m| m.contains(words)),
            "{src}: {c}"
        );
    }

    // A kubeconfig naming a server that is not there yet.
    let port = free_port();
    let later = dir.path().join("later-kubeconfig");
    std::fs::write(&later, kubeconfig_text(port, KUBE_TOKEN)).expect("kubeconfig");
    let mut server = Command::new(bin("resource-gateway"));
    server.env("KUBECONFIG", &later);
    let g2 = Gateway::up_with(&[("pods", PODS.to_owned())], |_| server).await;
    wait_for("Pending, naming the API server away", || async {
        g2.configs().await.into_iter().find(|c| {
            c["phase"] == "Pending"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("cannot be reached"))
        })
    })
    .await;
    let mut cmd = Command::new("python3");
    cmd.arg(support("kube_apiserver.py")).args([
        "--port",
        &port.to_string(),
        "--token",
        KUBE_TOKEN,
    ]);
    let _late = Proc::spawn("kube-apiserver-late", cmd, dir.path());
    g2.wait_phase("pods", "Running").await;
}

/// Unusable settings stop the process at start, naming what is missing.
#[tokio::test]
async fn no_api_server_configured_stops_the_process_naming_kubeconfig() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(bin("resource-gateway"));
    cmd.env_clear()
        .env("KUBECONFIG", dir.path().join("missing"))
        .env(
            "GATEWAY_PROCESSOR_SERVER_HTTP_PORT",
            free_port().to_string(),
        );
    let out = run_ok_or_not(&mut cmd);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("KUBECONFIG"), "{text}");
}

fn run_ok_or_not(cmd: &mut Command) -> std::process::Output {
    cmd.output().expect("run the resource gateway")
}

/// Bookmarks carry the watch's version forward while nothing of its own
/// changes (other kinds move the server's version on), so a watch resumed
/// after the history was compacted starts late enough: no 410, no relist.
#[tokio::test]
async fn bookmarks_spare_a_resumed_watch_a_relist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = KubeApi::start(dir.path(), &["--bookmark-interval", "0.2"]).await;
    let g = gateway(&api, &[("pods", PODS)], None).await;
    g.wait_phase("pods", "Running").await;
    for i in 0..20 {
        let cm = json!({"metadata": {"name": format!("cm{i}"), "namespace": "shop"}});
        api.apply("configmaps", cm).await;
    }
    // Time for a bookmark past the configmaps' versions.
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.compact().await;
    api.cut().await;
    api.apply("pods", pod("after", json!({}), json!({}))).await;
    let got = wait_changes(&g, "pods", 1).await;
    assert_eq!(got[0].1, "after");
    assert_eq!(
        pod_lists(&api).await,
        2,
        "the first look and the first list only"
    );
}
