//! The transformer's HTTP surface in-process: the real router and listener on a
//! port-0 socket, a real (in-process) HTTP sensor, and a real HTTP client. Each
//! endpoint's answers, the JSON errors included, without starting processes;
//! the end-to-end tests in `tests/` run the binaries.

use gateway_common::start::Settings as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use transformer::config::Config;

/// Events the in-process sensor received: (ce-subject, body).
type Received = Arc<Mutex<Vec<(String, String)>>>;

struct Transformer {
    url: String,
    received: Received,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Transformer {
    async fn start(extra: &[(&str, &str)]) -> Transformer {
        let received: Received = Arc::default();
        let record = received.clone();
        let sensor = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: HeaderMap, body: String| async move {
                let subject = headers
                    .get("ce-subject")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                record.lock().unwrap().push((subject, body));
                "ok"
            }),
        );
        let sensor_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sensor_url = format!("http://{}/", sensor_listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(sensor_listener, sensor).await });

        let mut vars = vec![
            ("GATEWAY_NAME", "router-test"),
            ("TRANSFORMER_DURABLE", "false"),
            ("SENSOR_WATCHERS", sensor_url.as_str()),
            ("TRANSFORMER_MAX_BODY_BYTES", "4096"),
            ("SHUTDOWN_TIMEOUT", "2s"),
        ];
        vars.extend_from_slice(extra);
        let config = Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .expect("config");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel();
        let done = tokio::spawn(async move {
            transformer::serve(config, listener, async move {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        Transformer {
            url,
            received,
            http: gateway_common::tls::client_builder().build().unwrap(),
            stop: Some(stop),
            done,
        }
    }

    async fn send(&self, method: &str, path: &str, content_type: &str, body: &str) -> Answer {
        let r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        Answer {
            status,
            headers,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    async fn post(&self, path: &str, body: &str) -> Answer {
        self.send("POST", path, "application/json", body).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, "application/json", "").await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        tokio::time::timeout(Duration::from_secs(10), self.done)
            .await
            .expect("stops within its shutdown timeout")
            .unwrap();
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    json: Value,
    text: String,
}

impl Answer {
    /// Asserts the status and the JSON error code.
    fn error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.json["error"].as_str()),
            (status, Some(code)),
            "{}",
            self.text
        );
        assert!(self.json["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
}

fn event(src: &str, data: &str) -> String {
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::STANDARD.encode(data);
    json!({ "src": src, "payload": payload }).to_string()
}

#[tokio::test]
async fn an_event_is_answered_with_its_id_and_delivered_with_its_key_as_subject() {
    let t = Transformer::start(&[]).await;
    let a = t.post("/", &event("alpha", r#"{"n":1}"#)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.json["id"].as_str().is_some_and(|id| id.len() == 36));
    assert_eq!(a.headers["x-gateway-batch-max-bytes"], "4096");
    for _ in 0..500 {
        if !t.received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = t.received.lock().unwrap().clone();
    assert_eq!(got, [("alpha".to_owned(), r#"{"n":1}"#.to_owned())]);
    t.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_json_error_naming_the_problem() {
    let t = Transformer::start(&[]).await;
    t.post("/", "not json").await.error(400, "bad_request");
    t.post("/", r#"{"src":"a","payload":"!!"}"#)
        .await
        .error(400, "bad_request");
    t.post("/", &event("a", &"x".repeat(8000)))
        .await
        .error(413, "too_large");
    t.send("POST", "/", "application/cloudevents-batch+json", "[]")
        .await
        .error(415, "unsupported_media_type");
    t.get("/nowhere").await.error(404, "not_found");
    t.get("/").await.error(405, "method_not_allowed");
    t.post("/batch", r#"{"not": "a list"}"#)
        .await
        .error(400, "bad_request");
    t.stop().await;
}

#[tokio::test]
async fn a_batch_answers_each_event_on_its_own() {
    let t = Transformer::start(&[]).await;
    let body = format!(
        r#"[{{"event": {}}}, {{"event": {{"src": "b", "payload": "%%"}}}}]"#,
        event("a", "1")
    );
    let a = t.post("/batch", &body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let results = a.json["results"].as_array().expect("results");
    assert_eq!(results[0]["status"], 200);
    assert!(results[0]["id"].is_string());
    assert_eq!(results[1]["status"], 400);
    assert_eq!(results[1]["error"], "bad_request");
    t.stop().await;
}

#[tokio::test]
async fn health_readiness_metrics_and_the_dead_letter_api_answer() {
    let t = Transformer::start(&[]).await;
    assert_eq!(t.get("/healthz").await.status, 200);
    assert_eq!(t.get("/readyz").await.json["status"], "ready");
    let metrics = t.get("/metrics").await;
    assert!(
        metrics.text.contains("transformer_connections_open"),
        "{}",
        metrics.text
    );
    let dead = t.get("/deadletters").await;
    assert_eq!((dead.status, dead.json["total"].as_u64()), (200, Some(0)));
    t.get("/deadletters/xyz").await.error(400, "bad_request");
    let nobody = format!("/deadletters/{}", "0".repeat(32));
    t.get(&nobody).await.error(404, "unknown_dead_letter");
    t.send("DELETE", &nobody, "application/json", "")
        .await
        .error(404, "unknown_dead_letter");
    let replay = t.post("/deadletters/replay", "").await;
    assert_eq!(replay.json["replayed"], 0, "{}", replay.text);
    t.stop().await;
}

#[tokio::test]
async fn a_token_guards_every_endpoint_but_health() {
    let t = Transformer::start(&[("TRANSFORMER_TOKEN", "s3cret")]).await;
    t.post("/", &event("a", "1"))
        .await
        .error(401, "unauthorized");
    assert_eq!(t.get("/healthz").await.status, 200);
    let authorized = t
        .http
        .post(format!("{}/", t.url))
        .bearer_auth("s3cret")
        .header("content-type", "application/json")
        .body(event("a", "1"))
        .send()
        .await
        .unwrap();
    assert_eq!(authorized.status(), 200);
    t.stop().await;
}
