//! The harness behind the end-to-end tests: real binaries, real Python and Node user
//! servers and a Python sensor that parses with the official CloudEvents SDK, each a
//! child process on a free port, killed when the test ends. Waits are on conditions
//! with a deadline, never on fixed sleeps.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any condition may take before a test fails. Generous: CI machines are
/// slow and shared, and the tests measure behaviour, not speed.
pub const DEADLINE: Duration = Duration::from_secs(40);

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// A gateway binary built by `cargo build` (the test command builds them first).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("GATEWAY_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("debug")))
        .unwrap_or_else(|| root().join("target").join("debug"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Runs a command to its end and fails the test, with everything it printed,
/// unless it succeeded; returns its output.
pub fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn support(file: &str) -> PathBuf {
    root().join("tests").join("support").join(file)
}

/// A port nothing listens on right now, taken below the kernel's ephemeral range
/// (32768 and up on Linux) so that the many outgoing connections of a running
/// gateway cannot take it as their source port before the child process binds it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let offset = u64::from(std::process::id()) * 7919;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((offset + n * 17) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            return port;
        }
    }
}

/// Polls `check` every 50 ms until it yields a value, or fails the test naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_for_within(what, DEADLINE, check).await
}

/// [`wait_for`] with a deadline of its own, for waits that include a broker's
/// restart and a client's capped reconnect backoff.
pub async fn wait_for_within<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_port(port: u16, what: &str) {
    wait_for(what, || async move {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    })
    .await
}

/// Reads a file of JSON lines, skipping a torn last line.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Writes configurations the way the kubelet updates a mounted ConfigMap: a new
/// timestamped directory, an atomic rename of the `..data` symlink onto it, and one
/// `key -> ..data/key` symlink per key.
pub fn write_configmap(dir: &Path, data: &BTreeMap<String, String>) {
    static GEN: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(dir).expect("config dir");
    let ts = format!(
        "..2026_11_22_{}_{}",
        std::process::id(),
        GEN.fetch_add(1, Ordering::Relaxed)
    );
    fs::create_dir(dir.join(&ts)).expect("timestamp dir");
    for (k, v) in data {
        fs::write(dir.join(&ts).join(k), v).expect("write key");
    }
    let old = fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp).expect("symlink");
    fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for k in data.keys() {
        let link = dir.join(k);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(k), &link).expect("key link");
        }
    }
    for entry in fs::read_dir(dir).expect("read dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && !data.contains_key(&name) {
            let _ = fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old {
        let _ = fs::remove_dir_all(dir.join(old));
    }
}

/// A reqwest client for tests; installs the TLS provider reqwest needs.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserServerKind {
    Python,
    Node,
}

/// A whole local gateway: transformer, processor-client, a user server and a sensor,
/// each a real process on its own free port, plus the files they share.
pub struct Gateway {
    pub config_dir: PathBuf,
    pub journal: PathBuf,
    pub sensor_out: PathBuf,
    pub fail_file: PathBuf,
    /// While this file exists the sensor holds every request: alive but slow.
    pub hold_file: PathBuf,
    pub name: String,
    pub pc_port: u16,
    pub tr_port: u16,
    pub us_port: u16,
    pub sensor_port: u16,
    pub kind: UserServerKind,
    /// Certificate and key for an HTTPS sensor; plain HTTP when `None`.
    pub sensor_tls: Option<(PathBuf, PathBuf)>,
    pub transformer_env: Vec<(String, String)>,
    pub processor_env: Vec<(String, String)>,
    pub transformer: Option<Proc>,
    pub processor: Option<Proc>,
    pub user_server: Option<Proc>,
    pub sensor: Option<Proc>,
    configs: Mutex<BTreeMap<String, String>>,
    pub http: reqwest::Client,
    /// Last, so it is removed after the processes above: a failing test
    /// prints their logs from it as they drop.
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Files and ports only; start the pieces with the `start_*` methods or [`Gateway::up`].
    pub fn new(kind: UserServerKind) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_dir = dir.path().join("configmap");
        write_configmap(&config_dir, &BTreeMap::new());
        Gateway {
            journal: dir.path().join("journal.jsonl"),
            sensor_out: dir.path().join("sensor.jsonl"),
            fail_file: dir.path().join("sensor-fails"),
            hold_file: dir.path().join("sensor-holds"),
            config_dir,
            dir,
            name: "test-gateway".into(),
            pc_port: free_port(),
            tr_port: free_port(),
            us_port: free_port(),
            sensor_port: free_port(),
            kind,
            sensor_tls: None,
            transformer_env: Vec::new(),
            processor_env: Vec::new(),
            transformer: None,
            processor: None,
            user_server: None,
            sensor: None,
            configs: Mutex::new(BTreeMap::new()),
            http: http_client(),
        }
    }

    /// Starts everything and waits until each piece listens.
    pub async fn up(kind: UserServerKind, configs: &[(&str, &str)]) -> Gateway {
        let mut g = Gateway::new(kind);
        for (k, v) in configs {
            g.set_config(k, v);
        }
        g.start_all().await;
        g
    }

    /// Starts everything, the user server being the command `server` makes
    /// (told its ports through the contract's variables), with `configs`.
    pub async fn up_with(
        configs: &[(&str, String)],
        server: impl FnOnce(&Gateway) -> Command,
    ) -> Gateway {
        let mut g = Gateway::new(UserServerKind::Python);
        for (k, v) in configs {
            g.set_config(k, v);
        }
        g.start_sensor().await;
        g.start_transformer().await;
        let cmd = server(&g);
        g.start_user_server_with(cmd).await;
        g.start_processor().await;
        g
    }

    /// Waits until each `(src, words)` is in Error with a message holding
    /// `words`, and checks that no message holds `secret`.
    pub async fn assert_errors(&self, cases: &[(&str, &str)], secret: &str) {
        for (src, words) in cases {
            let c = self.wait_phase(src, "Error").await;
            let message = c["message"].as_str().unwrap_or("");
            assert!(message.contains(words), "{src}: {message}");
            assert!(!message.contains(secret), "{src} tells a secret: {message}");
        }
    }

    /// Starts the sensor, the transformer, the user server and the
    /// processor-client, in that order, each once it listens: for tests that
    /// set environment variables on a [`Gateway::new`] first.
    pub async fn start_all(&mut self) {
        self.start_sensor().await;
        self.start_transformer().await;
        self.start_user_server().await;
        self.start_processor().await;
    }

    pub fn pc_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.pc_port)
    }

    pub fn tr_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.tr_port)
    }

    pub fn sensor_url(&self) -> String {
        let scheme = if self.sensor_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}/", self.sensor_port)
    }

    pub async fn start_sensor(&mut self) {
        let mut cmd = Command::new("python3");
        cmd.arg(support("sensor.py"))
            .arg("--port")
            .arg(self.sensor_port.to_string())
            .arg("--out")
            .arg(&self.sensor_out)
            .arg("--fail-file")
            .arg(&self.fail_file)
            .arg("--hold-file")
            .arg(&self.hold_file);
        if let Some((cert, key)) = &self.sensor_tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        self.sensor = Some(Proc::spawn("sensor", cmd, self.dir.path()));
        wait_port(self.sensor_port, "the sensor to listen").await;
    }

    pub fn transformer_command(&self) -> Command {
        let mut cmd = Command::new(bin("transformer"));
        cmd.env_clear()
            .env("GATEWAY_NAME", &self.name)
            .env("TRANSFORMER_PORT", self.tr_port.to_string())
            .env("TRANSFORMER_LISTEN_ADDRESS", "127.0.0.1")
            .env("SENSOR_WATCHERS", self.sensor_url())
            .env("WATCHER_RETRY_CAP", "500ms")
            .env(
                "TRANSFORMER_DATA_DIR",
                self.dir.path().join("transformer-data"),
            )
            .env("RUST_LOG", "info");
        for (k, v) in &self.transformer_env {
            cmd.env(k, v);
        }
        cmd
    }

    pub async fn start_transformer(&mut self) {
        let cmd = self.transformer_command();
        self.transformer = Some(Proc::spawn("transformer", cmd, self.dir.path()));
        wait_port(self.tr_port, "the transformer to listen").await;
    }

    pub fn processor_command(&self) -> Command {
        let mut cmd = Command::new(bin("processor-client"));
        cmd.env_clear()
            .env("GATEWAY_NAME", &self.name)
            .env("GATEWAY_PROCESSOR_CONFIG_MAP", &self.config_dir)
            .env(
                "GATEWAY_PROCESSOR_SERVER_HTTP_PORT",
                self.us_port.to_string(),
            )
            .env(
                "GATEWAY_PROCESSOR_CLIENT_HTTP_PORT",
                self.pc_port.to_string(),
            )
            .env("GATEWAY_PROCESSOR_CLIENT_LISTEN_ADDRESS", "127.0.0.1")
            .env("GATEWAY_PROCESSOR_RETRY_CAP", "1s")
            .env("TRANSFORMER_PORT", self.tr_port.to_string())
            .env("RUST_LOG", "info");
        for (k, v) in &self.processor_env {
            cmd.env(k, v);
        }
        cmd
    }

    pub async fn start_processor(&mut self) {
        let cmd = self.processor_command();
        self.processor = Some(Proc::spawn("processor-client", cmd, self.dir.path()));
        wait_port(self.pc_port, "the processor-client to listen").await;
    }

    pub async fn start_user_server(&mut self) {
        let processor = format!("http://127.0.0.1:{}", self.pc_port);
        let mut cmd = match self.kind {
            UserServerKind::Python => {
                let mut c = Command::new("python3");
                c.arg(support("user_server.py"));
                c
            }
            UserServerKind::Node => {
                let mut c = Command::new("node");
                c.arg(support("user_server.js"));
                c
            }
        };
        cmd.arg("--port")
            .arg(self.us_port.to_string())
            .arg("--processor")
            .arg(processor)
            .arg("--journal")
            .arg(&self.journal);
        self.user_server = Some(Proc::spawn("user-server", cmd, self.dir.path()));
        wait_port(self.us_port, "the user server to listen").await;
    }

    /// Starts a user server of the caller's making on `us_port`; it is told both
    /// ports through the contract's variables.
    pub async fn start_user_server_with(&mut self, mut cmd: Command) {
        cmd.env(
            "GATEWAY_PROCESSOR_SERVER_HTTP_PORT",
            self.us_port.to_string(),
        )
        .env(
            "GATEWAY_PROCESSOR_CLIENT_HTTP_PORT",
            self.pc_port.to_string(),
        );
        self.user_server = Some(Proc::spawn("user-server", cmd, self.dir.path()));
        wait_port(self.us_port, "the user server to listen").await;
    }

    /// Adds or changes one configuration, as a ConfigMap update would.
    pub fn set_config(&self, key: &str, value: &str) {
        let mut map = self.configs.lock().expect("configs");
        map.insert(key.to_owned(), value.to_owned());
        write_configmap(&self.config_dir, &map);
    }

    pub fn remove_config(&self, key: &str) {
        let mut map = self.configs.lock().expect("configs");
        map.remove(key);
        write_configmap(&self.config_dir, &map);
    }

    pub fn journal(&self) -> Vec<Value> {
        read_jsonl(&self.journal)
    }

    /// Journal entries of one operation (`start`, `stop`, `acked`) for one key.
    pub fn journal_of(&self, op: &str, src: &str) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|e| e["op"] == op && e["src"] == src)
            .collect()
    }

    pub fn sensor_events(&self) -> Vec<Value> {
        read_jsonl(&self.sensor_out)
    }

    pub async fn configs(&self) -> Vec<Value> {
        match self.http.get(self.pc_url("/configs")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits until `src` is listed with `phase`, returning its entry.
    pub async fn wait_phase(&self, src: &str, phase: &str) -> Value {
        wait_for(&format!("{src} to be {phase}"), || async {
            self.configs()
                .await
                .into_iter()
                .find(|c| c["src"] == src && c["phase"] == phase)
        })
        .await
    }

    /// Waits until the user server's journal holds `n` entries of `op` for `src`.
    pub async fn wait_journal(&self, op: &str, src: &str, n: usize) -> Vec<Value> {
        wait_for(&format!("{n} {op} of {src} at the user server"), || async {
            let v = self.journal_of(op, src);
            (v.len() >= n).then_some(v)
        })
        .await
    }

    /// Waits until the sensor has received at least `n` events.
    pub async fn wait_sensor(&self, n: usize) -> Vec<Value> {
        wait_for(&format!("{n} events at the sensor"), || async {
            let v = self.sensor_events();
            (v.len() >= n).then_some(v)
        })
        .await
    }

    /// The transformer's `GET /deadletters` once it lists `n` of them.
    pub async fn wait_deadletters(&self, n: usize) -> Value {
        wait_for(&format!("{n} dead letters"), || async {
            let v: Value = self
                .http
                .get(self.tr_url("/deadletters"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["total"] == n).then_some(v)
        })
        .await
    }

    /// POSTs a body with a content type to a URL; returns status, headers and JSON.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let r = self
            .http
            .post(url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = r.text().await.unwrap_or_default();
        Reply {
            status,
            retry_after,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    /// POSTs events `seqs` of `src` straight to the transformer, as a
    /// framework-independent producer would ([`event_body`], one `timeID`),
    /// asserting that each is taken.
    pub async fn produce(&self, src: &str, seqs: std::ops::Range<usize>) {
        for seq in seqs {
            let body = event_body(src, "t", seq);
            let r = self.post(&self.tr_url("/"), "application/json", body).await;
            assert_eq!(r.status, 200, "{src} {seq}: {}", r.text);
        }
    }

    /// POSTs a binary-mode CloudEvent to the transformer: `ce-specversion: 1.0`
    /// and a `ce-NAME` header for each attribute; returns the status.
    pub async fn post_binary_event(
        &self,
        attributes: &[(&str, &str)],
        content_type: &str,
        body: &'static str,
    ) -> u16 {
        let mut request = self
            .http
            .post(self.tr_url("/"))
            .header("ce-specversion", "1.0")
            .header("content-type", content_type);
        for (name, value) in attributes {
            request = request.header(format!("ce-{name}"), *value);
        }
        request
            .body(body)
            .send()
            .await
            .expect("POST a CloudEvent")
            .status()
            .as_u16()
    }

    /// The sum of every sample of a metrics page whose line starts with `prefix`
    /// (a name, or a name with labels), so tests can watch counters move.
    pub async fn metric(&self, url: &str, prefix: &str) -> f64 {
        let Ok(r) = self.http.get(url).send().await else {
            return 0.0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub json: Value,
    pub text: String,
}

mod checks;
mod cutter;
mod ingress;
mod kafka;
mod kube;
mod nats;
mod proc;
mod rabbitmq;
pub mod replicas;
mod s3;
mod tls;

pub use checks::{assert_acked_delivered, assert_ordered, event_body, payload};
pub use cutter::Cutter;
pub use ingress::{ingress_command, run_client, ws_client, Ingress};
pub use kafka::{KafkaClient, Storage, Tansu};
pub use kube::{kubeconfig_text, KubeApi, KUBE_TOKEN};
pub use nats::{into_core_nats, nats_sensor, NatsServer};
pub use proc::Proc;
pub use rabbitmq::RabbitMq;
pub use s3::{ListenStandIn, S3Op, S3Server};
pub use tls::{client_cert, private_ca};
