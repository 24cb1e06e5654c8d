//! The ingress end to end: a real nats-server, a real h8s responder on nats-py
//! (tests/support/h8s_responder.py), the ingress binary, and a real HTTP
//! client. Subject mapping, headers and bodies both ways, statuses from the
//! reply, and each failure's own answer: 503 with no responder or NATS away,
//! 504 on a slow reply, 413, 404 for a host not served; NATS killed, and its
//! connection reset again and again under traffic.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_tests::*;
use serde_json::Value;

async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    (status, v["error"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn requests_and_replies_cross_nats_with_headers_bodies_and_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let i = Ingress::start(dir.path(), &nats, &[]).await;
    let body: Vec<u8> = (0..=255u8).collect();
    let r = i
        .send(
            "POST",
            "/api/v1.2/items%20all?q=a%20b&n=1",
            "www.example.com:8080",
            &[("x-custom", "a"), ("x-name", "José")],
            body.clone(),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo"], "yes");
    let back = r.bytes().await.expect("body").to_vec();
    let mut reversed = body.clone();
    reversed.reverse();
    assert_eq!(back, reversed, "binary body both ways");
    let got = i.received();
    let req = &got[0];
    let subject = "h8s.http.POST.com.example.www.api.v1_2.items_all";
    assert_eq!(req["subject"], subject);
    assert_eq!(req["headers"]["X-H8S-PublishSubject"], subject);
    // The query, which the subject cannot hold, and the path as sent.
    assert_eq!(
        req["headers"]["X-H8S-Request-URI"],
        "/api/v1.2/items%20all?q=a%20b&n=1"
    );
    assert_eq!(req["headers"]["X-Custom"], "a");
    assert_eq!(req["headers"]["X-Name"], "José", "UTF-8 in a header value");
    assert!(
        req["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("_INBOX.h8s."),
        "{req}"
    );

    let r = i
        .send(
            "GET",
            "/teapot",
            "www.example.com",
            &[("x-want-status", "418")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status(), 418);
    // A proxy's X-Forwarded-Host names the host.
    let r = i
        .send(
            "GET",
            "/",
            "10.0.0.1",
            &[("x-forwarded-host", "api.example.com")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        i.received().last().unwrap()["subject"],
        "h8s.http.GET.com.example.api"
    );
    let metrics = i
        .http
        .get(format!("http://127.0.0.1:{}/metrics", i.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ingress_requests_total{status=\"418\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn each_failure_gets_its_own_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = NatsServer::start(dir.path()).await;
    let i = Ingress::start(dir.path(), &nats, &[]).await;
    // Nobody listens for this host: 503 at once, not after the timeout.
    let started = Instant::now();
    let (status, code) = error_of(
        i.send("GET", "/x", "nobody.example.org", &[], Vec::new())
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (503, "no_responders"));
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // A responder too slow: 504 after the timeout.
    let (status, code) = error_of(
        i.send("POST", "/x", "www.example.com", &[], b"slow".to_vec())
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (504, "timeout"));
    // Too large.
    let (status, code) = error_of(
        i.send("POST", "/x", "www.example.com", &[], vec![b'x'; 8192])
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (413, "too_large"));
    // NATS away: 503, readiness follows, and it comes back by itself.
    nats.kill();
    wait_for("readyz to fail", || async {
        (i.get_admin("/readyz").await == 503).then_some(())
    })
    .await;
    let (status, code) = error_of(
        i.send("GET", "/x", "www.example.com", &[], Vec::new())
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (503, "nats_unavailable"));
    nats.restart().await;
    wait_for("readyz to pass again", || async {
        (i.get_admin("/readyz").await == 200).then_some(())
    })
    .await;
    i.passes_again().await;
}

/// Posts `body` for www.example.com on a task of its own.
fn in_flight(i: &Ingress, body: &'static str) -> tokio::task::JoinHandle<(u16, String)> {
    let (http, port) = (i.http.clone(), i.port);
    tokio::spawn(async move {
        let r = http
            .post(format!("http://127.0.0.1:{port}/x"))
            .header("host", "www.example.com")
            .body(body)
            .send()
            .await
            .expect("an answer");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    })
}

/// Waits until the responder has received a request whose body is `body`.
async fn responder_has(i: &Ingress, body: &str) {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(body);
    wait_for(&format!("the responder to receive {body:?}"), || async {
        i.received()
            .iter()
            .any(|m| m["body"] == encoded.as_str())
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn requests_in_flight_fail_cleanly_when_nats_dies_and_are_finished_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = NatsServer::start(dir.path()).await;
    // A timeout far longer than the test, so no answer below is a timeout.
    let mut i = Ingress::start(
        dir.path(),
        &nats,
        &[
            ("INGRESS_REQUEST_TIMEOUT", "60s"),
            ("SHUTDOWN_TIMEOUT", "10s"),
        ],
    )
    .await;
    // NATS killed while a request waits for its reply: 503 at once, with
    // a JSON error, not a hang until the timeout.
    let waiting = in_flight(&i, "slow");
    responder_has(&i, "slow").await;
    nats.kill();
    let (status, text) = waiting.await.expect("join");
    assert_eq!(status, 503, "{text}");
    let error: Value = serde_json::from_str(&text).expect("a JSON error");
    assert_eq!(error["error"], "nats_unavailable", "{text}");
    // Back by itself once NATS is.
    nats.restart().await;
    i.passes_again().await;
    // SIGTERM while a request waits: it is answered, then the ingress exits 0.
    let waiting = in_flight(&i, "pause");
    responder_has(&i, "pause").await;
    i.proc.signal(libc::SIGTERM);
    let (status, text) = waiting.await.expect("join");
    assert_eq!((status, text.as_str()), (200, "esuap"));
    i.proc.exits_cleanly(Duration::from_secs(15)).await;
}

/// The ingress's connection to NATS is reset (RST both ways) again and again
/// under traffic, by a relay between the two: every request is answered, 200
/// or 503 with a JSON error (none waits out its 60 s timeout into a 504, and
/// no connection is dropped), and the ingress reconnects by itself each time.
#[tokio::test]
async fn connections_to_nats_reset_under_traffic_answer_every_request_and_reconnect() {
    const CUTS: u64 = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let (i, cutter) = Ingress::through_cutter(dir.path(), &nats, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let passed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (http, port, stop, passed) = (i.http.clone(), i.port, stop.clone(), passed.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = http
                        .get(format!("http://127.0.0.1:{port}/x"))
                        .header("host", "www.example.com")
                        .send()
                        .await
                        .expect("an answer, not a dropped connection");
                    let status = r.status().as_u16();
                    if status == 200 {
                        passed.fetch_add(1, Ordering::Relaxed);
                    }
                    answers.push((status, r.text().await.unwrap_or_default()));
                }
                answers
            })
        })
        .collect();
    for round in 0..CUTS {
        // Cut once requests pass on the connection open now.
        let before = passed.load(Ordering::Relaxed);
        wait_for(&format!("requests through before cut {round}"), || async {
            let now = passed.load(Ordering::Relaxed);
            (now >= before + 20).then_some(())
        })
        .await;
        // Every other cut drops a request on its way to NATS.
        if round % 2 == 0 {
            cutter.cut();
        } else {
            cutter.cut_mid_request().await;
        }
    }
    i.passes_again().await;
    stop.store(true, Ordering::Relaxed);
    let mut counts = std::collections::BTreeMap::new();
    for client in clients {
        for (status, text) in client.await.expect("join") {
            *counts.entry(status).or_insert(0u64) += 1;
            if status != 200 {
                assert_eq!(status, 503, "{text}");
                let error: Value = serde_json::from_str(&text).expect("a JSON error");
                assert_eq!(error["error"], "nats_unavailable", "{text}");
            }
        }
    }
    let metrics = i
        .http
        .get(format!("http://127.0.0.1:{}/metrics", i.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let connects: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ingress_nats_connects_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("ingress_nats_connects_total");
    assert!(connects > CUTS, "{connects} connects after {CUTS} cuts");
    eprintln!("answers by status: {counts:?}");
}

/// The ingress's NATS connection goes silent (nothing passes either way and
/// nothing is closed: a partition, a paused server) while a request waits for
/// its reply: the pings (`NATS_PING_INTERVAL`, 1 s here) find the connection
/// lost, the request is answered 503 rather than at its 60 s timeout, /readyz
/// says NATS is away, and once NATS is heard again the ingress connects anew.
#[tokio::test]
async fn a_silent_nats_connection_is_found_by_its_pings_and_made_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let (i, cutter) =
        Ingress::through_cutter(dir.path(), &nats, &[("NATS_PING_INTERVAL", "1s")]).await;
    i.passes_again().await;
    cutter.go_silent();
    let (status, text) = in_flight(&i, "unheard").await.expect("join");
    assert_eq!(status, 503, "{text}");
    let error: Value = serde_json::from_str(&text).expect("a JSON error");
    assert_eq!(error["error"], "nats_unavailable", "{text}");
    wait_for("/readyz to say NATS is away", || async {
        (i.get_admin("/readyz").await == 503).then_some(())
    })
    .await;
    cutter.speak_again();
    i.passes_again().await;
}

#[tokio::test]
async fn hosts_not_served_are_404_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let mut i = Ingress::start(
        dir.path(),
        &nats,
        &[("INGRESS_HOSTS", "www.example.com, *.apps.example.com")],
    )
    .await;
    let (status, code) = error_of(
        i.send("GET", "/", "evil.example.com", &[], Vec::new())
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "unknown_host"));
    assert!(i.received().is_empty(), "nothing was published for it");
    for (host, status) in [
        ("WWW.example.com:443", 200),
        ("shop.apps.example.com", 200),
        ("apps.example.com", 404),
        ("a.shop.apps.example.com", 404),
    ] {
        assert_eq!(
            i.send("GET", "/", host, &[], Vec::new()).await.status(),
            status,
            "{host}"
        );
    }
    i.proc.signal(libc::SIGTERM);
    i.proc.exits_cleanly(Duration::from_secs(15)).await;
}

/// Input that would make the ingress send NATS a protocol line longer than the
/// server takes (a long path), a message over its `max_payload`, or a
/// WebSocket inbox with a wildcard in it (a `Sec-WebSocket-Key` of `>` would
/// subscribe the client to every other connection's replies) is refused with
/// its own answer, and the connection to NATS (with a request in flight on
/// it) is never lost for it: the server would close it for everyone.
#[tokio::test]
async fn hostile_paths_bodies_and_keys_never_cost_the_nats_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    // Bodies up to 2 MiB pass the ingress's own limit; NATS takes 1 MiB.
    let i = Ingress::start(dir.path(), &nats, &[("INGRESS_MAX_BODY_BYTES", "2097152")]).await;
    let admin = format!("http://127.0.0.1:{}/metrics", i.admin);
    let pending = in_flight(&i, "pause");
    responder_has(&i, "pause").await;

    let long = format!("/{}", "a".repeat(5000));
    let (status, code) = error_of(
        i.send("GET", &long, "www.example.com", &[], Vec::new())
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (414, "uri_too_long"));
    let many = "/a".repeat(3000);
    let (status, code) = error_of(
        i.send("GET", &many, "www.example.com", &[], Vec::new())
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (414, "uri_too_long"));
    // A responder answering 1xx cannot end an HTTP exchange: 502.
    let (status, code) = error_of(
        i.send(
            "GET",
            "/x",
            "www.example.com",
            &[("x-want-status", "101")],
            Vec::new(),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (502, "bad_reply"));
    let big = vec![b'x'; 1536 * 1024];
    let (status, code) = error_of(i.send("POST", "/x", "www.example.com", &[], big).await).await;
    assert_eq!((status, code.as_str()), (413, "too_large"));

    for key in [">", "*", "a.b", ""] {
        let (status, code) = error_of(i.upgrade("/chat", "www.example.com", key).await).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "key {key:?}");
    }
    let (status, code) = error_of(
        i.upgrade(&long, "www.example.com", "dGhlIHNhbXBsZSBub25jZQ==")
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (414, "uri_too_long"));
    // A message over INGRESS_MAX_BODY_BYTES, and one under it but over
    // NATS's max_payload: each closes its WebSocket with 1009.
    for size in [3 * 1024 * 1024, 1536 * 1024] {
        let closed = run_client(ws_client(
            &i,
            "/chat",
            "www.example.com",
            &format!("big{size}"),
        ))
        .await;
        assert_eq!(closed["code"], 1009, "a message of {size} bytes");
    }

    let (status, body) = pending.await.expect("the request in flight");
    assert_eq!(status, 200, "{body}");
    let metrics = i.http.get(&admin).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("metrics text");
    let disconnects = metrics
        .lines()
        .find(|l| l.starts_with("ingress_nats_disconnects_total"))
        .unwrap_or_else(|| panic!("no disconnect counter in {metrics}"));
    assert!(
        disconnects.ends_with(" 0"),
        "the ingress lost its NATS connection: {disconnects}"
    );
    let server_log = nats.proc.as_ref().map(|p| p.output()).unwrap_or_default();
    assert!(!server_log.contains("maximum control line"), "{server_log}");
}
