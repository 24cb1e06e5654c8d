//! The S3 user server (`sdk-examples/s3`) against a real S3-compatible server
//! (moto's server mode) started here, with boto3 putting and deleting
//! objects, through the real processor-client and transformer to the sensor:
//! each change once and in order as an S3 notification record, nothing
//! repeated or skipped across a restart of the user server or of the S3
//! server or connections to it reset, and configurations that cannot work
//! shown as Error with the reason.

use std::process::Command;

use gateway_tests::*;
use serde_json::Value;

const BUCKET: &str = "photos";

async fn gateway(configs: &[(&str, String)]) -> Gateway {
    Gateway::up_with(configs, server).await
}

fn server(g: &Gateway) -> Command {
    let mut cmd = Command::new(bin("s3-gateway"));
    cmd.env("S3_STATE_DIR", g.dir.path().join("s3-state"))
        .env("RUST_LOG", "info");
    cmd
}

fn config(s3: &S3Server, extra: &str) -> String {
    format!(
        "endpoint: {}\nbucket: {BUCKET}\npollInterval: 200ms\naccessKey: test-key\nsecretKey: hunter2-secret\n{extra}",
        s3.url()
    )
}

/// Each notification record at the sensor for `src`: (eventName, key, size, eTag, sequencer).
fn records(g: &Gateway, src: &str) -> Vec<(String, String, u64, String, String)> {
    g.sensor_events()
        .iter()
        .filter(|e| e["subject"] == src)
        .map(|e| {
            let r = &payload(e)["Records"][0];
            let o = &r["s3"]["object"];
            let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
            (
                s(&r["eventName"]),
                s(&o["key"]),
                o["size"].as_u64().unwrap_or(0),
                s(&o["eTag"]),
                s(&o["sequencer"]),
            )
        })
        .collect()
}

async fn wait_records(
    g: &Gateway,
    src: &str,
    n: usize,
) -> Vec<(String, String, u64, String, String)> {
    wait_for(&format!("{n} changes of {src} at the sensor"), || async {
        let got = records(g, src);
        (got.len() >= n).then_some(got)
    })
    .await
}

fn keys(n: std::ops::Range<usize>) -> Vec<String> {
    n.map(|i| format!("in/{i:03}.txt")).collect()
}

async fn put_all(s3: &S3Server, keys: &[String]) -> Vec<String> {
    let ops: Vec<S3Op> = keys
        .iter()
        .map(|k| S3Op::Put(BUCKET, k.as_str(), k.as_str()))
        .collect();
    s3.run(&ops).await.into_iter().flatten().collect()
}

/// Waits a few more polls, then checks nothing more arrived.
async fn assert_settled(g: &Gateway, src: &str, n: usize) {
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(records(g, src).len(), n, "no change repeated");
}

#[tokio::test]
async fn object_changes_arrive_once_and_in_order_across_a_restart_of_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(dir.path()).await;
    s3.run(&[
        S3Op::CreateBucket(BUCKET),
        S3Op::Put(BUCKET, "in/already-there.txt", "old"),
    ])
    .await;
    let src = "photos";
    let mut g = gateway(&[(src, config(&s3, "filter: {prefix: in/, suffix: .txt}"))]).await;
    g.wait_phase(src, "Running").await;

    // Thirty objects, and two the filter leaves out.
    let first = keys(0..30);
    let etags = put_all(&s3, &first).await;
    s3.run(&[
        S3Op::Put(BUCKET, "other/x.txt", "x"),
        S3Op::Put(BUCKET, "in/y.bin", "y"),
    ])
    .await;
    let got = wait_records(&g, src, 30).await;
    for (i, (name, key, size, etag, _)) in got.iter().enumerate() {
        assert_eq!(name, "ObjectCreated:Put");
        assert_eq!(key, &first[i], "in order");
        assert_eq!(*size, first[i].len() as u64);
        assert_eq!(etag, &etags[i]);
    }

    // An overwrite is a new creation; removals follow, by key.
    s3.run(&[S3Op::Put(BUCKET, "in/001.txt", "changed")]).await;
    let got = wait_records(&g, src, 31).await;
    assert_eq!(
        (got[30].0.as_str(), got[30].1.as_str()),
        ("ObjectCreated:Put", "in/001.txt")
    );
    s3.run(&[
        S3Op::Delete(BUCKET, "in/003.txt"),
        S3Op::Delete(BUCKET, "in/007.txt"),
    ])
    .await;
    let got = wait_records(&g, src, 33).await;
    assert_eq!(got[31].0, "ObjectRemoved:Delete");
    assert_eq!(
        (got[31].1.as_str(), got[32].1.as_str()),
        ("in/003.txt", "in/007.txt")
    );
    assert_settled(&g, src, 33).await;

    // The user server SIGKILLed; a change while it is down; started again,
    // it reports that change and nothing it reported before.
    g.user_server.as_mut().expect("user server").kill();
    s3.run(&[S3Op::Put(BUCKET, "in/100.txt", "late")]).await;
    let again = server(&g);
    g.start_user_server_with(again).await;
    let got = wait_records(&g, src, 34).await;
    assert_eq!(got[33].1, "in/100.txt");
    assert_settled(&g, src, 34).await;
    let sequencers: Vec<&String> = got.iter().map(|r| &r.4).collect();
    assert!(sequencers.windows(2).all(|w| w[0] < w[1]), "{sequencers:?}");
    // The secret key is never logged. moto does not offer MinIO's
    // notifications: the server noticed, and polled.
    let log = g.user_server.as_ref().map(Proc::output).unwrap_or_default();
    assert!(!log.contains("hunter2-secret"));
    assert!(log.contains("polling only"), "{log}");
}

#[tokio::test]
async fn where_the_server_offers_minio_notifications_a_change_is_listed_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(dir.path()).await;
    s3.run(&[S3Op::CreateBucket(BUCKET)]).await;
    let mut minio = ListenStandIn::start(dir.path(), &s3).await;
    let src = "listened";
    // Polled once an hour: only a notification can bring a change in time.
    let hourly = config(&s3, "filter: {prefix: in/}")
        .replace(&s3.url(), &minio.url())
        .replace("pollInterval: 200ms", "pollInterval: 1h");
    let g = gateway(&[(src, hourly)]).await;
    g.wait_phase(src, "Running").await;
    wait_for("the gateway to listen", || async {
        (minio.listeners() > 0).then_some(())
    })
    .await;

    let first = keys(0..5);
    let put_ops: Vec<S3Op> = first.iter().map(|k| S3Op::Put(BUCKET, k, k)).collect();
    s3.run_at(&minio.url(), &put_ops).await;
    let got = wait_records(&g, src, 5).await;
    let got_keys: Vec<&String> = got.iter().map(|r| &r.1).collect();
    assert_eq!(got_keys, first.iter().collect::<Vec<_>>(), "in order");
    s3.run_at(&minio.url(), &[S3Op::Delete(BUCKET, "in/002.txt")])
        .await;
    let got = wait_records(&g, src, 6).await;
    assert_eq!(
        (got[5].0.as_str(), got[5].1.as_str()),
        ("ObjectRemoved:Delete", "in/002.txt")
    );

    // The stream breaks, and a change is made where no notification can
    // tell of it: once the gateway listens again, it lists, and finds it.
    minio.kill();
    s3.run(&[S3Op::Put(BUCKET, "in/100.txt", "unannounced")])
        .await;
    minio.restart().await;
    let got = wait_records(&g, src, 7).await;
    assert_eq!(got[6].1, "in/100.txt");
    assert_settled(&g, src, 7).await;

    // SIGTERM does not wait for the open stream.
    let mut g = g;
    let us = g.user_server.as_mut().expect("user server");
    us.signal(libc::SIGTERM);
    us.exits_cleanly(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_s3_server_killed_mid_stream_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s3 = S3Server::start(dir.path()).await;
    s3.run(&[S3Op::CreateBucket(BUCKET)]).await;
    let src = "stream";
    // Polled once a second, so that the kill comes with changes not yet seen.
    let slow = config(&s3, "").replace("pollInterval: 200ms", "pollInterval: 1s");
    let g = gateway(&[(src, slow)]).await;
    g.wait_phase(src, "Running").await;
    put_all(&s3, &keys(0..20)).await;
    wait_records(&g, src, 20).await;
    // Forty more, and the server dies at once, before (or while) they are seen.
    put_all(&s3, &keys(20..60)).await;
    s3.kill();
    let at_kill = records(&g, src).len();
    s3.restart().await;
    put_all(&s3, &keys(60..80)).await;
    let got = wait_records(&g, src, 80).await;
    let got_keys: Vec<&String> = got.iter().map(|r| &r.1).collect();
    let expected = keys(0..80);
    assert_eq!(
        got_keys,
        expected.iter().collect::<Vec<_>>(),
        "every object once, in order"
    );
    assert_settled(&g, src, 80).await;
    eprintln!("{at_kill} of 60 at the sensor when the S3 server was killed");
    assert_eq!(g.wait_phase(src, "Running").await["phase"], "Running");
    // Failed requests are logged without their presigned URLs: a signature
    // lets anyone repeat the request until it expires (the poll module's
    // tests make a request fail for certain).
    let log = g.user_server.as_ref().map(Proc::output).unwrap_or_default();
    assert!(!log.contains("X-Amz-Signature"), "{log}");
}

/// The connections to the S3 server are reset (RST both ways) again and again
/// while objects change, every other time in the middle of a request, by a
/// relay between the gateway and the server: every object once, in order.
#[tokio::test]
async fn connections_to_the_s3_server_reset_again_and_again_lose_and_repeat_nothing() {
    const ROUNDS: usize = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(dir.path()).await;
    s3.run(&[S3Op::CreateBucket(BUCKET)]).await;
    let cutter = Cutter::start(s3.port).await;
    let src = "stream";
    let through_cutter = config(&s3, "").replace(
        &format!("endpoint: {}", s3.url()),
        &format!("endpoint: http://127.0.0.1:{}", cutter.port),
    );
    let g = gateway(&[(src, through_cutter)]).await;
    g.wait_phase(src, "Running").await;
    for round in 0..ROUNDS {
        put_all(&s3, &keys(round * 10..round * 10 + 10)).await;
        if round % 2 == 0 {
            cutter.cut();
        } else {
            assert!(cutter.cut_mid_request().await, "the gateway to poll");
        }
        wait_records(&g, src, round * 10 + 10).await;
    }
    let got = records(&g, src);
    let got_keys: Vec<&String> = got.iter().map(|r| &r.1).collect();
    let expected = keys(0..ROUNDS * 10);
    assert_eq!(
        got_keys,
        expected.iter().collect::<Vec<_>>(),
        "every object once, in order"
    );
    assert_settled(&g, src, ROUNDS * 10).await;
    assert_eq!(g.wait_phase(src, "Running").await["phase"], "Running");
}

#[tokio::test]
async fn a_bucket_longer_than_one_listing_page_is_read_to_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(dir.path()).await;
    // S3 lists at most 1,000 keys a page: 1,050 already there, and a new one
    // that sorts after all of them, on the second page.
    let many: Vec<String> = (0..1050).map(|i| format!("in/{i:04}.txt")).collect();
    let mut ops = vec![S3Op::CreateBucket(BUCKET)];
    ops.extend(many.iter().map(|k| S3Op::Put(BUCKET, k.as_str(), "x")));
    s3.run(&ops).await;
    let src = "paged";
    let g = gateway(&[(src, config(&s3, ""))]).await;
    g.wait_phase(src, "Running").await;
    s3.run(&[S3Op::Put(BUCKET, "in/zzzz.txt", "last")]).await;
    let got = wait_records(&g, src, 1).await;
    assert_eq!(
        got[0].1, "in/zzzz.txt",
        "only the new object, none of the baseline"
    );
    assert_settled(&g, src, 1).await;
}

#[tokio::test]
async fn configurations_that_cannot_work_are_errors_that_say_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(dir.path()).await;
    let url = s3.url();
    let g = gateway(&[
        ("no-bucket", config(&s3, "").replace(BUCKET, "no-such-bucket")),
        ("copy-events", config(&s3, "events: ['s3:ObjectCreated:Copy']")),
        (
            "unset-key",
            format!("endpoint: {url}\nbucket: {BUCKET}\naccessKeyFromEnv: SURELY_UNSET_KEY\nsecretKey: x"),
        ),
        ("ftp", "endpoint: ftp://127.0.0.1\nbucket: photos".to_owned()),
    ])
    .await;
    g.assert_errors(
        &[
            ("no-bucket", "NoSuchBucket"),
            ("copy-events", "ObjectCreated:Copy"),
            ("unset-key", "SURELY_UNSET_KEY"),
            ("ftp", "endpoint"),
        ],
        "hunter2-secret",
    )
    .await;

    // A state directory that cannot be written stops the server at start,
    // naming the variable.
    let out = Command::new(bin("s3-gateway"))
        .env("S3_STATE_DIR", "/proc/no-state-here")
        .env(
            "GATEWAY_PROCESSOR_SERVER_HTTP_PORT",
            free_port().to_string(),
        )
        .output()
        .expect("run s3-gateway");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("S3_STATE_DIR"), "{text}");
}

#[tokio::test]
async fn an_https_endpoint_with_a_private_ca_needs_ca_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = private_ca(dir.path());
    let s3 = S3Server::start_tls(dir.path(), (ca.clone(), cert, key)).await;
    s3.run(&[S3Op::CreateBucket(BUCKET)]).await;
    let trusted = config(&s3, &format!("caFile: {}", ca.display()));
    let g = gateway(&[("trusted", trusted), ("untrusted", config(&s3, ""))]).await;
    g.wait_phase("trusted", "Running").await;
    put_all(&s3, &keys(0..3)).await;
    let got = wait_records(&g, "trusted", 3).await;
    assert_eq!(got[2].1, "in/002.txt");
    // Without the CA the certificate is refused, and the configuration says so.
    g.assert_errors(&[("untrusted", "caFile")], "hunter2-secret")
        .await;
}
