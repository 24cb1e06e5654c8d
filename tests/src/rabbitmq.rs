//! A real RabbitMQ broker (Debian's `rabbitmq-server`) for the tests: its own
//! node name, AMQP and distribution ports, data and log directories, so that
//! several can run at once beside any system broker; a test can SIGKILL it and
//! start it again on the same port and data, as a crashed broker would restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{free_port, wait_for, Proc};

pub struct RabbitMq {
    pub port: u16,
    /// The `amqps://` port, when started with TLS.
    pub tls_port: Option<u16>,
    dist_port: u16,
    dir: PathBuf,
    pub proc: Option<Proc>,
}

/// Where Debian puts the broker's start script (the one in /usr/sbin switches
/// to the rabbitmq user, which cannot read a test's directories).
const SCRIPT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

impl RabbitMq {
    /// Starts a broker whose files live under `dir`; returns once it takes
    /// AMQP connections.
    pub async fn start(dir: &Path) -> RabbitMq {
        Self::start_with(dir, None).await
    }

    /// Also listens for `amqps://` with `cert` and `key` (`private_ca`'s).
    pub async fn start_tls(dir: &Path, cert: &Path, key: &Path) -> RabbitMq {
        Self::start_with(dir, Some((cert, key))).await
    }

    async fn start_with(dir: &Path, tls: Option<(&Path, &Path)>) -> RabbitMq {
        let dir = dir.join("rabbitmq");
        std::fs::create_dir_all(&dir).expect("rabbitmq dir");
        // The default user may log in from anywhere (tests only); no plugins.
        let mut conf = "loopback_users = none\n".to_owned();
        let tls_port = tls.map(|(cert, key)| {
            let port = free_port();
            conf.push_str(&format!(
                "listeners.ssl.default = {port}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
                cert.display(),
                key.display()
            ));
            port
        });
        std::fs::write(dir.join("rabbitmq.conf"), conf).expect("conf");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins");
        let mut r = RabbitMq {
            port: free_port(),
            tls_port,
            dist_port: free_port(),
            dir,
            proc: None,
        };
        r.restart().await;
        r
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `amqps://guest:guest@127.0.0.1:TLS_PORT/%2f`, when started with TLS.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|p| format!("amqps://guest:guest@127.0.0.1:{p}/%2f"))
    }

    /// Starts the broker (again) on the same port and data.
    pub async fn restart(&mut self) {
        let d = &self.dir;
        let mut cmd = Command::new(SCRIPT);
        cmd.env("HOME", d)
            .env(
                "RABBITMQ_NODENAME",
                format!("rabbit-{}@localhost", self.port),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"));
        self.proc = Some(Proc::spawn("rabbitmq", cmd, d));
        let url = self.url();
        wait_for("rabbitmq to take AMQP connections", || {
            let url = url.clone();
            async move {
                let c = lapin::Connection::connect(&url, lapin::ConnectionProperties::default());
                match tokio::time::timeout(Duration::from_secs(2), c).await {
                    Ok(Ok(conn)) => {
                        let _ = conn.close(200, "ready".into()).await;
                        Some(())
                    }
                    _ => None,
                }
            }
        })
        .await;
    }

    /// SIGTERM, and waits (up to 60 s) until the broker has stopped: it
    /// closes every connection (CONNECTION_FORCED) and writes what it holds.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.signal(libc::SIGTERM) {
            wait_gone(pid, Duration::from_secs(60)).await;
        }
        self.forget();
    }

    /// SIGKILL: the Erlang VM gets no chance to close anything. Returns once
    /// it is gone, so a restart does not race the dying VM for its port.
    pub async fn kill(&mut self) {
        if let Some(pid) = self.signal(libc::SIGKILL) {
            wait_gone(pid, Duration::from_secs(10)).await;
        }
        self.forget();
    }

    /// Sends `sig` to the broker (the pid it wrote, not the launcher's);
    /// returns that pid.
    fn signal(&self, sig: i32) -> Option<i32> {
        let pid = std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())?;
        // SAFETY: kill(2) on the broker's own pid; no memory is involved.
        unsafe {
            libc::kill(pid, sig);
        }
        Some(pid)
    }

    /// Forgets a stopped broker: its pid file, and the launcher process.
    fn forget(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("pid"));
        if let Some(p) = self.proc.as_mut() {
            p.kill();
        }
    }

    /// A fresh connection's channel.
    pub async fn channel(&self) -> (lapin::Connection, lapin::Channel) {
        let conn = lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect to rabbitmq");
        let channel = conn.create_channel().await.expect("channel");
        (conn, channel)
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        self.forget();
    }
}

/// Waits up to `limit` until process `pid` is gone, or a zombie waiting for
/// its parent to reap it.
async fn wait_gone(pid: i32, limit: Duration) {
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .map(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    let start = std::time::Instant::now();
    while !gone() && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
