//! The ingress as the tests run it: the binary, an h8s responder on nats-py
//! (tests/support/h8s_responder.py) answering www.example.com, and an HTTP
//! client; optionally with its NATS connection through a [`Cutter`].

use std::process::Command;

use serde_json::Value;

use crate::*;

/// The ingress binary on `port` (its admin port on `admin`), on loopback,
/// sending to `nats_url`, with nothing else of the environment.
pub fn ingress_command(port: u16, admin: u16, nats_url: &str) -> Command {
    let mut cmd = Command::new(bin("ingress"));
    cmd.env_clear()
        .env("INGRESS_PORT", port.to_string())
        .env("INGRESS_ADMIN_PORT", admin.to_string())
        .env("INGRESS_LISTEN_ADDRESS", "127.0.0.1")
        .env("NATS_URL", nats_url);
    cmd
}

/// The ingress binary with an h8s responder (nats-py) on `h8s.http.*.com.example.>`.
pub struct Ingress {
    pub port: u16,
    pub admin: u16,
    pub proc: Proc,
    responses: std::path::PathBuf,
    _responder: Proc,
    pub http: reqwest::Client,
}

impl Ingress {
    /// Starts the responder and the ingress on `nats` with `extra` variables,
    /// and waits until /readyz says it is connected.
    pub async fn start(
        dir: &std::path::Path,
        nats: &NatsServer,
        extra: &[(&str, &str)],
    ) -> Ingress {
        let responses = dir.join(format!("responder-{}.jsonl", free_port()));
        let mut r = Command::new("python3");
        r.arg(support("h8s_responder.py"))
            .arg("--nats")
            .arg(nats.url())
            .arg("--subject")
            .arg("h8s.http.*.com.example.>")
            .arg("--out")
            .arg(&responses);
        let responder = Proc::spawn("h8s-responder", r, dir);
        wait_for("the responder to subscribe", || async {
            responder.output().contains("subscribed").then_some(())
        })
        .await;
        let (port, admin) = (free_port(), free_port());
        let mut cmd = ingress_command(port, admin, &nats.url());
        cmd.env("INGRESS_REQUEST_TIMEOUT", "1s")
            .env("INGRESS_MAX_BODY_BYTES", "4096")
            .env("RUST_LOG", "info");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let proc = Proc::spawn("ingress", cmd, dir);
        wait_port(port, "the ingress to listen").await;
        let i = Ingress {
            port,
            admin,
            proc,
            responses,
            _responder: responder,
            http: http_client(),
        };
        wait_for("the ingress to be ready", || async {
            (i.get_admin("/readyz").await == 200).then_some(())
        })
        .await;
        i
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        host: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(
                method.parse().unwrap(),
                format!("http://127.0.0.1:{}{path}", self.port),
            )
            .header("host", host)
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request")
    }

    /// A WebSocket upgrade request with `key` as its `Sec-WebSocket-Key`,
    /// answered (101, or the ingress's refusal); the connection is not used.
    pub async fn upgrade(&self, path: &str, host: &str, key: &str) -> reqwest::Response {
        let headers = [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", key),
        ];
        self.send("GET", path, host, &headers, Vec::new()).await
    }

    pub async fn get_admin(&self, path: &str) -> u16 {
        match self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.admin))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Waits until a request for www.example.com gets through (200) again.
    pub async fn passes_again(&self) {
        wait_for("a request through again", || async {
            let r = self
                .send("GET", "/x", "www.example.com", &[], Vec::new())
                .await;
            (r.status() == 200).then_some(())
        })
        .await;
    }

    /// What the responder received, one JSON object per request.
    pub fn received(&self) -> Vec<Value> {
        read_jsonl(&self.responses)
    }

    /// An ingress whose connection to NATS goes through a relay that can cut it,
    /// with a request timeout (60 s) far longer than any test: a 504 would mean a
    /// request left waiting for a reply that could not come.
    pub async fn through_cutter(
        dir: &std::path::Path,
        nats: &NatsServer,
        extra: &[(&str, &str)],
    ) -> (Ingress, Cutter) {
        let cutter = Cutter::start(nats.port).await;
        let through_cutter = format!("nats://127.0.0.1:{}", cutter.port);
        let mut env = vec![
            ("NATS_URL", through_cutter.as_str()),
            ("INGRESS_REQUEST_TIMEOUT", "60s"),
        ];
        env.extend_from_slice(extra);
        (Ingress::start(dir, nats, &env).await, cutter)
    }
}

/// The WebSocket client (tests/support/ws_client.py) in `mode` against the
/// ingress, the host sent as `X-Forwarded-Host`.
pub fn ws_client(i: &Ingress, path: &str, host: &str, mode: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg(support("ws_client.py"))
        .arg(format!("ws://127.0.0.1:{}{path}", i.port))
        .arg(host)
        .arg(mode);
    c
}

/// Runs a client to its end and returns the JSON line it printed last.
pub async fn run_client(mut c: Command) -> Value {
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .expect("join")
        .expect("run the WebSocket client");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|_| {
        panic!(
            "client said {text:?} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
