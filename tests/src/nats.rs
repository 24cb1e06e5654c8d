//! A real `nats-server` for the tests, on a free port, that a test can kill
//! and start again on the same port and store.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{free_port, root, wait_for, wait_port, Gateway, Proc};

/// A real `nats-server` with JetStream, on a free port with its own store, that a
/// test can kill and start again on the same port and store.
pub struct NatsServer {
    pub port: u16,
    store: PathBuf,
    log_dir: PathBuf,
    args: Vec<String>,
    pub proc: Option<Proc>,
}

impl NatsServer {
    pub async fn start(dir: &Path) -> NatsServer {
        Self::start_with(dir, &[]).await
    }

    /// Starts with extra command-line arguments (e.g. `--auth TOKEN`).
    pub async fn start_with(dir: &Path, args: &[&str]) -> NatsServer {
        let mut n = NatsServer {
            port: free_port(),
            store: dir.join("nats-store"),
            log_dir: dir.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            proc: None,
        };
        n.restart().await;
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), with the same port and store.
    pub async fn restart(&mut self) {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nats-server");
        let mut cmd = Command::new(bin);
        cmd.arg("-js")
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.store)
            .args(&self.args);
        self.proc = Some(Proc::spawn("nats-server", cmd, &self.log_dir));
        wait_port(self.port, "nats-server to listen").await;
    }

    pub fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill();
        }
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let token = self
            .args
            .iter()
            .position(|a| a == "--auth")
            .and_then(|i| self.args.get(i + 1));
        let arg = |name: &str| {
            self.args
                .iter()
                .position(|a| a == name)
                .and_then(|i| self.args.get(i + 1))
                .cloned()
        };
        let options = match (token, arg("--user"), arg("--pass")) {
            (Some(t), _, _) => async_nats::ConnectOptions::with_token(t.clone()),
            (None, Some(u), Some(p)) => async_nats::ConnectOptions::with_user_and_password(u, p),
            _ => async_nats::ConnectOptions::new(),
        };
        let client = options
            .connect(self.url())
            .await
            .expect("connect to nats-server");
        async_nats::jetstream::new(client)
    }
}

/// The example JetStream sensor reading from `nats` with `args` (a stream, or
/// `--core --subject S`), writing each CloudEvent it reads to `out`.
pub fn nats_sensor(g: &Gateway, nats: &NatsServer, out: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("sdk-examples/jetstream-sensor/sensor.py"))
        .arg("--url")
        .arg(nats.url())
        .arg("--out")
        .arg(out)
        .args(args);
    Proc::spawn("nats-sensor", cmd, g.dir.path())
}

/// Points `g`'s transformer at core NATS, with a subscriber on every subject
/// of the gateway writing what it gets to the returned file.
pub async fn into_core_nats(g: &mut Gateway, nats: &NatsServer) -> (PathBuf, Proc) {
    let out = g.dir.path().join("core.jsonl");
    let sub = nats_sensor(g, nats, &out, &["--core", "--subject", "test-gateway.>"]);
    wait_for("the subscriber to subscribe", || async {
        sub.output().contains("subscribed").then_some(())
    })
    .await;
    g.transformer_env
        .push(("EVENT_PROTOCOL".into(), "NATS".into()));
    g.transformer_env.push(("NATS_URL".into(), nats.url()));
    (out, sub)
}
