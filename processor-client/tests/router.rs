//! The processor-client's HTTP surface in-process: the real router and listener
//! on a port-0 socket, a real configuration directory, a real (in-process) user
//! server, and no transformer listening, so that every answer that does not
//! need one (notices, lookups, errors, readiness) is checked without processes;
//! where a test needs the transformer's refusal, an in-process stand-in that
//! answers as the transformer does.
//! The end-to-end tests in `tests/` run the binaries with a transformer.

use gateway_common::start::Settings as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use processor_client::config::Config;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct ProcessorClient {
    url: String,
    /// Paths the user server was called on, with the `src` of each call.
    calls: Arc<Mutex<Vec<(String, String)>>>,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
    _configs: tempfile::TempDir,
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

impl ProcessorClient {
    async fn start(configs: &[(&str, &str)]) -> ProcessorClient {
        ProcessorClient::start_with(configs, closed_port().await).await
    }

    /// With its transformer at `transformer_port`.
    async fn start_with(configs: &[(&str, &str)], transformer_port: u16) -> ProcessorClient {
        let dir = tempfile::tempdir().unwrap();
        for (key, value) in configs {
            std::fs::write(dir.path().join(key), value).unwrap();
        }
        let calls: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let record = calls.clone();
        let user_server = axum::Router::new().fallback(
            move |uri: axum::http::Uri, body: axum::Json<Value>| async move {
                let src = body["src"].as_str().unwrap_or("").to_owned();
                record.lock().unwrap().push((uri.path().to_owned(), src));
                "ok"
            },
        );
        let us = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let us_port = us.local_addr().unwrap().port().to_string();
        tokio::spawn(async move { axum::serve(us, user_server).await });
        let transformer_port = transformer_port.to_string();
        let vars = [
            ("GATEWAY_NAME", "router-test"),
            ("GATEWAY_PROCESSOR_CONFIG_MAP", dir.path().to_str().unwrap()),
            ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", &us_port),
            ("TRANSFORMER_PORT", &transformer_port),
            ("TRANSFORMER_TIMEOUT", "1s"),
            ("GATEWAY_PROCESSOR_MAX_BODY_BYTES", "4096"),
            ("SHUTDOWN_TIMEOUT", "2s"),
        ];
        let config = Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .expect("config");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel();
        let done = tokio::spawn(async move {
            processor_client::serve(config, listener, async move {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        ProcessorClient {
            url,
            calls,
            http: gateway_common::tls::client_builder().build().unwrap(),
            stop: Some(stop),
            done,
            _configs: dir,
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
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let text = r.text().await.unwrap();
        Answer {
            status,
            retry_after,
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

    /// The entry of `/configs` for `src`, once `check` holds for it.
    async fn wait_config(&self, src: &str, check: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..500 {
            let list = self.get("/configs").await.json;
            if let Some(c) = list
                .as_array()
                .and_then(|l| l.iter().find(|c| c["src"] == src))
            {
                if check(c) {
                    return c.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{src} never reached the expected state");
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
    retry_after: Option<String>,
    json: Value,
    text: String,
}

impl Answer {
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

fn event(src: &str) -> String {
    json!({ "src": src, "payload": "e30=" }).to_string()
}

#[tokio::test]
async fn configurations_are_started_and_notices_set_their_phase() {
    let pc = ProcessorClient::start(&[("alpha", "{}"), ("beta", "{}")]).await;
    pc.wait_config("alpha", |c| c["phase"] == "Pending").await;
    for _ in 0..500 {
        if pc.calls.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut started = pc.calls.lock().unwrap().clone();
    started.sort();
    assert_eq!(
        started,
        [
            ("/start".to_owned(), "alpha".to_owned()),
            ("/start".to_owned(), "beta".to_owned())
        ]
    );
    assert_eq!(
        pc.post("/activated", r#"{"src":"alpha"}"#).await.status,
        200
    );
    pc.wait_config("alpha", |c| c["phase"] == "Running").await;
    let e = pc
        .post("/error", r#"{"src":"beta","message":"no such topic"}"#)
        .await;
    assert_eq!(e.status, 200, "{}", e.text);
    let beta = pc.wait_config("beta", |c| c["phase"] == "Error").await;
    assert_eq!(beta["message"], "no such topic");
    pc.stop().await;
}

#[tokio::test]
async fn events_that_cannot_be_taken_get_a_json_error_naming_why() {
    let pc = ProcessorClient::start(&[("alpha", "{}"), ("beta", "{}")]).await;
    pc.post("/event", &event("ghost"))
        .await
        .error(404, "unknown_src");
    pc.post("/event", "not json")
        .await
        .error(400, "bad_request");
    pc.post("/event", r#"{"src":"alpha","payload":"!!"}"#)
        .await
        .error(400, "bad_request");
    pc.send("POST", "/event", "application/octet-stream", "raw")
        .await
        .error(400, "bad_request");
    let big = json!({ "src": "alpha", "payload": "A".repeat(8000) }).to_string();
    pc.post("/event", &big).await.error(413, "too_large");
    // No transformer listens: the event is not taken, and the user server is
    // told to send it again later.
    let busy = pc.post("/event", &event("alpha")).await;
    busy.error(503, "transformer_unavailable");
    assert_eq!(busy.retry_after.as_deref(), Some("1"));
    pc.get("/nowhere").await.error(404, "not_found");
    pc.get("/event").await.error(405, "method_not_allowed");
    pc.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let pc = ProcessorClient::start(&[("alpha", "{}")]).await;
    assert_eq!(pc.get("/healthz").await.status, 200);
    pc.get("/readyz").await.error(503, "not_ready");
    let metrics = pc.get("/metrics").await;
    assert!(
        metrics.text.contains("processor_connections_open"),
        "{}",
        metrics.text
    );
    pc.stop().await;
}

/// A stand-in transformer that refuses every event as the real one refuses
/// an event whose replica's claim lapsed: 409 `not_owner`.
async fn refusing_transformer() -> u16 {
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::CONFLICT,
            axum::Json(json!({ "error": "not_owner", "detail": "the claim lapsed" })),
        )
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await });
    port
}

#[tokio::test]
async fn an_event_the_transformer_refuses_is_counted_as_rejected_not_forwarded() {
    let pc = ProcessorClient::start_with(&[("alpha", "{}")], refusing_transformer().await).await;
    pc.post("/event", &event("alpha"))
        .await
        .error(409, "not_owner");
    let metrics = pc.get("/metrics").await.text;
    assert!(
        metrics.contains("processor_events_rejected_total{reason=\"not_owner\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("processor_events_forwarded_total 0"),
        "{metrics}"
    );
    pc.stop().await;
}
