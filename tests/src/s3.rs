//! A real S3-compatible server for the tests (moto's server mode, through
//! `tests/support/s3_server.py`, which keeps its state across a SIGKILL), and
//! boto3 (`tests/support/s3_client.py`) to put and delete objects in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{free_port, support, wait_port, Proc};

pub struct S3Server {
    pub port: u16,
    dir: PathBuf,
    pub proc: Option<Proc>,
    /// `(ca, cert, key)`: serve https with `cert`, which `ca` signed.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

/// One boto3 operation.
pub enum S3Op<'a> {
    CreateBucket(&'a str),
    Put(&'a str, &'a str, &'a str),
    Delete(&'a str, &'a str),
}

impl S3Server {
    pub async fn start(dir: &Path) -> S3Server {
        Self::start_with(dir, None).await
    }

    /// Serves https with the certificate and key of `private_ca`'s triple.
    pub async fn start_tls(dir: &Path, tls: (PathBuf, PathBuf, PathBuf)) -> S3Server {
        Self::start_with(dir, Some(tls)).await
    }

    async fn start_with(dir: &Path, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> S3Server {
        let mut s = S3Server {
            port: free_port(),
            dir: dir.to_owned(),
            proc: None,
            tls,
        };
        s.restart().await;
        s
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port, with every bucket and
    /// object it held.
    pub async fn restart(&mut self) {
        let mut cmd = Command::new("python3");
        cmd.arg(support("s3_server.py"))
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--record")
            .arg(self.dir.join("s3-record.jsonl"));
        if let Some((_, cert, key)) = &self.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        self.proc = Some(Proc::spawn("s3-server", cmd, &self.dir));
        wait_port(self.port, "the S3 server to listen").await;
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill();
        }
    }

    /// Runs `ops` in order with boto3; returns each put's ETag (`None` for
    /// the others).
    pub async fn run(&self, ops: &[S3Op<'_>]) -> Vec<Option<String>> {
        self.run_at(&self.url(), ops).await
    }

    /// [`S3Server::run`] through another endpoint in front of this server.
    pub async fn run_at(&self, endpoint: &str, ops: &[S3Op<'_>]) -> Vec<Option<String>> {
        let ops: Vec<serde_json::Value> = ops
            .iter()
            .map(|op| match op {
                S3Op::CreateBucket(b) => serde_json::json!(["create", b]),
                S3Op::Put(b, k, body) => serde_json::json!(["put", b, k, body]),
                S3Op::Delete(b, k) => serde_json::json!(["delete", b, k]),
            })
            .collect();
        let mut boto = tokio::process::Command::new("python3");
        boto.arg(support("s3_client.py"))
            .arg(endpoint)
            .arg(serde_json::Value::from(ops).to_string());
        if let Some((ca, _, _)) = &self.tls {
            boto.env("AWS_CA_BUNDLE", ca);
        }
        let out = boto.output().await.expect("run boto3");
        assert!(
            out.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<Option<String>>>(&out.stdout).expect("boto3 output")
    }
}

/// MinIO's ListenBucketNotification in front of an [`S3Server`]
/// (`tests/support/s3_listen.py`): no S3 server that runs here offers it.
pub struct ListenStandIn {
    pub port: u16,
    upstream: u16,
    dir: PathBuf,
    pub proc: Option<Proc>,
}

impl ListenStandIn {
    pub async fn start(dir: &Path, s3: &S3Server) -> ListenStandIn {
        let mut s = ListenStandIn {
            port: free_port(),
            upstream: s3.port,
            dir: dir.to_owned(),
            proc: None,
        };
        s.restart().await;
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port.
    pub async fn restart(&mut self) {
        let mut cmd = Command::new("python3");
        cmd.arg(support("s3_listen.py"))
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--upstream")
            .arg(format!("127.0.0.1:{}", self.upstream));
        self.proc = Some(Proc::spawn("s3-listen", cmd, &self.dir));
        wait_port(self.port, "the listen stand-in").await;
    }

    /// SIGKILL: every stream it served breaks.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill();
        }
    }

    /// How many listeners it has had since it started.
    pub fn listeners(&self) -> usize {
        self.proc
            .as_ref()
            .map(|p| p.output().matches("listener on").count())
            .unwrap_or(0)
    }
}
