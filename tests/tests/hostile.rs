//! Hostile and careless clients against both listeners: half-sent requests,
//! silent connections, trickled bodies, more connections than allowed, a body
//! far over the limit from Python's urllib (which writes it all before reading),
//! and a SIGTERM while all of that is going on. Each gets a bounded answer.
//! Requests that cannot be parsed at all get a JSON error from every listener,
//! the ingress's too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use gateway_tests::*;

/// Which of the two listeners a test aims at.
#[derive(Clone, Copy, Debug)]
enum Target {
    Transformer,
    Processor,
}

impl Target {
    /// The prefix of its listener variables.
    fn prefix(self) -> &'static str {
        match self {
            Target::Transformer => "TRANSFORMER",
            Target::Processor => "GATEWAY_PROCESSOR_CLIENT",
        }
    }

    fn port(self, g: &Gateway) -> u16 {
        match self {
            Target::Transformer => g.tr_port,
            Target::Processor => g.pc_port,
        }
    }

    fn event_path(self) -> &'static str {
        match self {
            Target::Transformer => "/",
            Target::Processor => "/event",
        }
    }

    fn proc(self, g: &mut Gateway) -> &mut Proc {
        match self {
            Target::Transformer => g.transformer.as_mut(),
            Target::Processor => g.processor.as_mut(),
        }
        .expect("started")
    }

    fn set(self, g: &mut Gateway, suffix: &str, value: &str) {
        let var = format!("{}_{suffix}", self.prefix());
        match self {
            Target::Transformer => g.transformer_env.push((var, value.into())),
            Target::Processor => g.processor_env.push((var, value.into())),
        }
    }
}

/// A gateway with one configuration, `alpha`, Running.
async fn gateway(target: Target, settings: &[(&str, &str)]) -> Gateway {
    let mut g = Gateway::new(UserServerKind::Python);
    for (suffix, value) in settings {
        target.set(&mut g, suffix, value);
    }
    g.set_config("alpha", r#"{"count": 0}"#);
    g.start_all().await;
    g.wait_phase("alpha", "Running").await;
    g
}

/// Opens a connection that sends part of a request head and then nothing.
fn half_request(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    s
}

/// Whether the server closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

/// Everything the server sends until it closes, fails or stops for `limit`;
/// what arrived before a reset is kept.
fn read_answer(s: &mut TcpStream, limit: Duration) -> String {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Posts one event; `None` when the connection failed under the client, as a
/// kept-alive connection may when the server displaces it.
async fn post_event(g: &Gateway, target: Target) -> Option<Reply> {
    let url = format!("http://127.0.0.1:{}{}", target.port(g), target.event_path());
    let answer = g
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(event_body("alpha", "t", 0))
        .send()
        .await
        .ok()?;
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap_or_default();
    Some(Reply {
        status,
        retry_after: None,
        json: serde_json::from_str(&text).unwrap_or_default(),
        text,
    })
}

async fn slow_clients_are_cut_off(target: Target) {
    let mut g = gateway(
        target,
        &[("HEADER_TIMEOUT", "1s"), ("MAX_CONNECTIONS", "64")],
    )
    .await;
    let port = target.port(&g);
    let mut slow: Vec<TcpStream> = (0..400).map(|_| half_request(port)).collect();
    // Far more half-sent requests than the limit: producers still get through,
    // because a new connection displaces the one whose head has waited
    // longest (once it has waited a moment); meanwhile they get a JSON 503.
    // A producer's kept-alive connection, idle between its posts, may itself be
    // displaced as its next request goes out: like any client of a busy server
    // it then tries again, on a new connection.
    for _ in 0..5 {
        wait_for("a producer to get through", || async {
            let r = post_event(&g, target).await?;
            match r.status {
                200 => Some(()),
                503 => {
                    assert_eq!(r.json["error"], "too_many_connections", "{target:?}");
                    None
                }
                other => panic!("{target:?} answered {other}: {}", r.text),
            }
        })
        .await;
    }
    let pid = target.proc(&mut g).pid();
    let fds = open_fds(pid);
    assert!(
        fds < 64 + 60,
        "{target:?} holds {fds} descriptors with a limit of 64 connections"
    );
    // And every one of them is closed: displaced, or after the header timeout.
    let start = Instant::now();
    for s in &mut slow {
        let left = Duration::from_secs(15).saturating_sub(start.elapsed());
        assert!(
            closed_within(s, left.max(Duration::from_millis(10))),
            "{target:?} kept a half-sent request open"
        );
    }
    let closed = g
        .metric(
            &format!("http://127.0.0.1:{port}/metrics"),
            match target {
                Target::Transformer => "transformer_connections_closed_total",
                Target::Processor => "processor_connections_closed_total",
            },
        )
        .await;
    assert!(closed >= 300.0, "{target:?}: only {closed} closed");
}

#[tokio::test]
async fn transformer_cuts_off_half_sent_requests() {
    slow_clients_are_cut_off(Target::Transformer).await;
}

#[tokio::test]
async fn processor_client_cuts_off_half_sent_requests() {
    slow_clients_are_cut_off(Target::Processor).await;
}

async fn idle_connections_close(target: Target) {
    let g = gateway(target, &[("IDLE_TIMEOUT", "1s")]).await;
    let mut silent = TcpStream::connect(("127.0.0.1", target.port(&g))).expect("connect");
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)),
        "{target:?} kept a silent connection past its idle timeout"
    );
    // A keep-alive connection after a request too.
    let mut kept = TcpStream::connect(("127.0.0.1", target.port(&g))).expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(
        closed_within(&mut kept, Duration::from_secs(10)),
        "{target:?} kept an idle keep-alive connection past its idle timeout"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    idle_connections_close(Target::Transformer).await;
    idle_connections_close(Target::Processor).await;
}

async fn trickled_body_gets_408(target: Target) {
    let g = gateway(target, &[("BODY_TIMEOUT", "1s")]).await;
    let mut s = TcpStream::connect(("127.0.0.1", target.port(&g))).expect("connect");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"src\":",
        target.event_path()
    );
    s.write_all(head.as_bytes()).expect("write");
    let answer = read_answer(&mut s, Duration::from_secs(10));
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "{target:?} answered a trickled body with: {answer:?}"
    );
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    trickled_body_gets_408(Target::Transformer).await;
    trickled_body_gets_408(Target::Processor).await;
}

#[tokio::test]
async fn over_the_limit_with_every_connection_busy_is_a_json_503() {
    let g = gateway(Target::Transformer, &[("MAX_CONNECTIONS", "4")]).await;
    // Four requests whose bodies are still arriving: busy, not idle.
    let mut busy: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", g.tr_port)).expect("connect");
            s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
                .expect("write");
            s
        })
        .collect();
    // Once the server has them as requests (bodies being read), and any idle
    // connection (the processor-client's pool) was displaced, a fifth is refused.
    let answer = wait_for("a 503 for the fifth connection", || async {
        let mut s = TcpStream::connect(("127.0.0.1", g.tr_port)).ok()?;
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let answer = read_answer(&mut s, Duration::from_secs(5));
        answer.starts_with("HTTP/1.1 503").then_some(answer)
    })
    .await;
    assert!(answer.contains("retry-after: 1"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON error body");
    assert_eq!(v["error"], "too_many_connections");
    drop(busy.drain(..));
}

async fn sigterm_is_bounded(target: Target) {
    let mut g = gateway(
        target,
        &[("HEADER_TIMEOUT", "10m"), ("IDLE_TIMEOUT", "10m")],
    )
    .await;
    let port = target.port(&g);
    let _slow: Vec<TcpStream> = (0..300).map(|_| half_request(port)).collect();
    let _silent: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    // SHUTDOWN_TIMEOUT is 10 s by default.
    let started = Instant::now();
    let proc = target.proc(&mut g);
    proc.signal(libc::SIGTERM);
    proc.exits_cleanly(Duration::from_secs(12)).await;
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "{target:?} took {:?} to stop",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_with_slow_clients_open_exits_within_the_shutdown_timeout() {
    sigterm_is_bounded(Target::Transformer).await;
    sigterm_is_bounded(Target::Processor).await;
}

/// Python's urllib writes the whole body before it reads the answer; it must
/// read the 413 and its JSON error, not a broken pipe.
#[tokio::test]
async fn python_urllib_reads_the_413_of_a_20_mib_body() {
    let g = gateway(Target::Processor, &[]).await;
    let script = r#"
import json, sys, urllib.request, urllib.error
body = b'{"src":"alpha","payload":"' + b'A' * (20 * 1024 * 1024) + b'"}'
req = urllib.request.Request(sys.argv[1], data=body,
                             headers={"Content-Type": "application/json"}, method="POST")
try:
    urllib.request.urlopen(req, timeout=30)
    print("accepted")
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except Exception as e:
    print("failed", repr(e))
"#;
    for url in [g.pc_url("/event"), g.tr_url("/")] {
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&url)
            .output()
            .expect("python3");
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.starts_with("413 "), "{url}: urllib saw {out:?}");
        let v: serde_json::Value =
            serde_json::from_str(out.trim_start_matches("413 ").trim()).expect("JSON error");
        assert_eq!(v["error"], "too_large", "{url}");
    }
}

/// Requests the HTTP parser refuses, sent raw: each with the status and error
/// code it must get.
fn malformed() -> Vec<(Vec<u8>, u16, &'static str)> {
    let many: String = (0..150).map(|i| format!("X-{i}: a\r\n")).collect();
    vec![
        (
            b"GET /a/*/> HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nNo Colon\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (b"BLAH\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(500_000)
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
            "uri_too_long",
        ),
    ]
}

/// Sends each malformed request on a connection of its own, and once more
/// after a good request on a kept-alive connection; each answer must be the
/// status with a JSON error naming the problem.
fn malformed_requests_get_json_errors(port: u16, good: &[u8]) {
    for (request, status, code) in malformed() {
        for after_a_good_one in [false, true] {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let mut sent = Vec::new();
            if after_a_good_one {
                sent.extend_from_slice(good);
            }
            sent.extend_from_slice(&request);
            // The server may close before taking it all; its answer still comes.
            let _ = s.write_all(&sent);
            let answer = read_answer(&mut s, Duration::from_secs(10));
            let last = answer.rfind("HTTP/1.1 ").map_or("", |i| &answer[i..]);
            let what = String::from_utf8_lossy(&request[..request.len().min(30)]).into_owned();
            assert!(
                last.starts_with(&format!("HTTP/1.1 {status} ")),
                "{port} {what:?} (after a good one: {after_a_good_one}): {answer:?}"
            );
            assert!(
                last.contains("content-type: application/json"),
                "{what:?}: {last:?}"
            );
            let body = last.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            assert_eq!(json["error"], code, "{what:?}: {last:?}");
            assert!(
                json["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{last:?}"
            );
        }
    }
}

#[tokio::test]
async fn requests_that_cannot_be_parsed_get_a_json_error() {
    let g = gateway(Target::Transformer, &[]).await;
    let good = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    malformed_requests_get_json_errors(g.tr_port, good);
    malformed_requests_get_json_errors(g.pc_port, good);

    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let ingress = Ingress::start(dir.path(), &nats, &[]).await;
    malformed_requests_get_json_errors(
        ingress.port,
        b"GET /a HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
    );
    // A responder's own empty 400, on a connection the client closes, is
    // passed on as it is: only the parser's answers are rewritten.
    let mut s = TcpStream::connect(("127.0.0.1", ingress.port)).expect("connect");
    s.write_all(
        b"GET /bare HTTP/1.1\r\nHost: www.example.com\r\nX-Want-Status: 400\r\nX-Want-Bare: yes\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let answer = read_answer(&mut s, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    assert!(!answer.contains("application/json"), "{answer:?}");
    assert!(answer.ends_with("\r\n\r\n"), "an empty body: {answer:?}");
}

/// A client that opens with HTTP/2 (prior knowledge) on a port that speaks
/// HTTP/1.1 gets HTTP/2's own answer, a GOAWAY with HTTP_1_1_REQUIRED (13),
/// whose debug data is a JSON error; it was closed without a word.
fn http2_is_told_to_use_http1(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    // The preface, then the client's empty SETTINGS.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    // Frames: 3 bytes length, type, flags, 4 bytes stream, payload.
    let mut rest = &answer[..];
    let mut goaway = None;
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let (ty, payload) = (rest[3], &rest[9..(9 + len).min(rest.len())]);
        if ty == 7 {
            goaway = Some(payload.to_vec());
        }
        rest = &rest[(9 + len).min(rest.len())..];
    }
    let goaway = goaway.unwrap_or_else(|| panic!("{port}: no GOAWAY in {answer:?}"));
    assert_eq!(&goaway[4..8], &[0, 0, 0, 13], "{port}: HTTP_1_1_REQUIRED");
    let debug: serde_json::Value = serde_json::from_slice(&goaway[8..]).expect("JSON");
    assert_eq!(debug["error"], "http2_unsupported", "{port}");
}

#[tokio::test]
async fn an_http2_client_is_told_to_use_http1() {
    let g = gateway(Target::Transformer, &[]).await;
    http2_is_told_to_use_http1(g.tr_port);
    http2_is_told_to_use_http1(g.pc_port);
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let ingress = Ingress::start(dir.path(), &nats, &[]).await;
    http2_is_told_to_use_http1(ingress.port);
    http2_is_told_to_use_http1(ingress.admin);
    // The port still serves HTTP/1.1.
    let mut s = TcpStream::connect(("127.0.0.1", g.tr_port)).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    assert!(read_answer(&mut s, Duration::from_secs(10)).starts_with("HTTP/1.1 200 "));
}

/// A head over the limit that the server reads in one go (it was paused while
/// the client sent it, as a busy server is) is refused like one that arrives
/// in pieces: hyper's own bound applied only to a head still incomplete, so a
/// 450 KB head was taken or refused depending on timing.
#[tokio::test]
async fn a_head_over_the_limit_is_refused_however_it_arrives() {
    let g = gateway(Target::Transformer, &[]).await;
    let transformer = g.transformer.as_ref().expect("transformer");
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(450_000)
    );
    transformer.signal(libc::SIGSTOP);
    let mut s = TcpStream::connect(("127.0.0.1", g.tr_port)).expect("connect");
    let mut writer = s.try_clone().expect("clone");
    // The kernel's buffers take the head while the server is paused.
    let written = std::thread::spawn(move || writer.write_all(head.as_bytes()));
    std::thread::sleep(Duration::from_millis(500));
    transformer.signal(libc::SIGCONT);
    let answer = read_answer(&mut s, Duration::from_secs(10));
    let _ = written.join();
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");
    assert!(answer.contains("headers_too_large"), "{answer:?}");
}
