//! WebSockets through the ingress end to end: a real nats-server, the h8s
//! responder on nats-py (tests/support/h8s_responder.py) and real WebSocket
//! clients (Python's `websockets`, tests/support/ws_client.py, and raw
//! sockets where a test must choose the handshake's key). Frames both ways
//! with the control messages, binary messages, a slow client closed with
//! 1013, SIGTERM closing with 1001, many connections at once, quiet ones
//! outliving the idle timeout, and keys that two connections cannot share.

use std::time::Duration;

use gateway_tests::*;
use serde_json::Value;

#[tokio::test]
async fn websocket_frames_cross_nats_both_ways_with_control_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let i = Ingress::start(dir.path(), &nats, &[]).await;
    let result = run_client(ws_client(&i, "/room/1.a", "chat.example.com", "echo")).await;
    assert_eq!(
        result["replies"],
        serde_json::json!(["ONE", "TWO", "THREE"])
    );
    let got = wait_for("the closed control message", || async {
        let got = i.received();
        got.iter()
            .any(|m| m["subject"] == "h8s.control.ws.conn.closed")
            .then_some(got)
    })
    .await;
    let frames: Vec<&Value> = got
        .iter()
        .filter(|m| m["subject"] == "h8s.ws.ws.com.example.chat.room.1_a")
        .collect();
    assert_eq!(frames.len(), 3, "{got:?}");
    let inbox = frames[0]["reply"].as_str().unwrap_or("");
    assert!(inbox.starts_with("_INBOX.h8s."), "{inbox}");
    let key = frames[0]["headers"]["Sec-Websocket-Key"]
        .as_str()
        .unwrap_or("");
    assert!(!key.is_empty() && inbox.ends_with(key), "{inbox} / {key}");
    for control in [
        "h8s.control.ws.conn.established",
        "h8s.control.ws.conn.closed",
    ] {
        let m = got.iter().find(|m| m["subject"] == control).expect(control);
        assert_eq!(m["reply"], inbox);
        assert_eq!(
            m["headers"]["X-H8S-PublishSubject"],
            "h8s.ws.ws.com.example.chat.room.1_a"
        );
        assert_eq!(m["headers"]["X-H8S-Request-URI"], "/room/1.a", "{m}");
    }
    // A message that is not UTF-8 cannot be a text frame: it comes as a
    // binary one, bytes unchanged (it was mangled into U+FFFD before).
    let result = run_client(ws_client(&i, "/room/1", "chat.example.com", "binary")).await;
    assert_eq!(result["type"], "bytes", "{result}");
    assert_eq!(result["hex"], "ff0062696e", "{result}");
}

#[tokio::test]
async fn a_slow_websocket_client_is_closed_with_1013_and_sigterm_closes_with_1001() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let mut i = Ingress::start(dir.path(), &nats, &[("SHUTDOWN_TIMEOUT", "5s")]).await;
    let slow = run_client(ws_client(&i, "/feed", "www.example.com", "slow")).await;
    assert_eq!(slow["code"], 1013, "{slow}");
    let hold = ws_client(&i, "/feed", "www.example.com", "hold");
    let held = tokio::spawn(run_client(hold));
    wait_for("the WebSocket to open", || async {
        i.received()
            .iter()
            .filter(|m| m["subject"] == "h8s.control.ws.conn.established")
            .nth(1)
            .map(|_| ())
    })
    .await;
    i.proc.signal(libc::SIGTERM);
    let closed = held.await.expect("client");
    assert_eq!(closed["code"], 1001, "{closed}");
    i.proc.exits_cleanly(Duration::from_secs(15)).await;
    // Both the slow client closed with 1013 and the one closed by SIGTERM
    // were announced on the `closed` control subject, each with its inbox.
    let controls = |subject: &str| -> Vec<String> {
        i.received()
            .iter()
            .filter(|m| m["subject"] == subject)
            .filter_map(|m| m["reply"].as_str().map(str::to_owned))
            .collect()
    };
    let mut opened = controls("h8s.control.ws.conn.established");
    let mut closed = wait_for("two closed control messages", || async {
        let c = controls("h8s.control.ws.conn.closed");
        (c.len() >= 2).then_some(c)
    })
    .await;
    opened.sort();
    closed.sort();
    assert_eq!(opened, closed, "each connection announced open and closed");
}

#[tokio::test]
async fn a_hundred_websockets_at_once_each_get_their_own_replies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let i = Ingress::start(dir.path(), &nats, &[]).await;
    let result = run_client(ws_client(&i, "/room", "chat.example.com", "many100")).await;
    assert_eq!(result["ok"], 100, "{result}");
    let opened = i
        .received()
        .iter()
        .filter(|m| m["subject"] == "h8s.control.ws.conn.established")
        .count();
    assert_eq!(opened, 100);
}

#[tokio::test]
async fn a_websocket_may_stay_quiet_longer_than_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let i = Ingress::start(dir.path(), &nats, &[("INGRESS_IDLE_TIMEOUT", "1s")]).await;
    // The idle timeout is for HTTP connections between requests; an open
    // WebSocket with nothing to say (not even pings) stays open.
    let result = run_client(ws_client(&i, "/quiet", "chat.example.com", "idle3")).await;
    assert_eq!(result["reply"], "AFTER", "{result}");
}

/// Two connections at once with one `Sec-WebSocket-Key` would share the inbox
/// it names and each get the other's replies (a client that always sends RFC
/// 6455's sample key, or one that copies another's): the second is refused,
/// 409 `key_in_use`, while the first is open, and the key is free again once
/// the first is gone.
#[tokio::test]
async fn a_key_held_by_an_open_websocket_is_refused_to_a_second() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let i = Ingress::start(dir.path(), &nats, &[]).await;
    let mut first = tokio::net::TcpStream::connect(("127.0.0.1", i.port))
        .await
        .expect("connect");
    let handshake = format!(
        "GET /room HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    first
        .write_all(handshake.as_bytes())
        .await
        .expect("handshake");
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), first.read(&mut head))
        .await
        .expect("an answer in time")
        .expect("read");
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let second = i.upgrade("/room", "chat.example.com", KEY).await;
    assert_eq!(second.status().as_u16(), 409);
    let body: Value = second.json().await.expect("a JSON error");
    assert_eq!(body["error"], "key_in_use", "{body}");
    assert!(body["detail"]
        .as_str()
        .is_some_and(|d| d.contains("Sec-WebSocket-Key")));

    drop(first);
    wait_for("the key to be free once its connection is gone", || async {
        (i.upgrade("/room", "chat.example.com", KEY)
            .await
            .status()
            .as_u16()
            == 101)
            .then_some(())
    })
    .await;
}
