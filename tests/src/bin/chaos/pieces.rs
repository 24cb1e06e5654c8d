//! The processes of the run, each restartable with the same settings: a
//! nats-server with JetStream, one durable transformer (delivering to the
//! HTTP sensor and to JetStream), two processor-client replicas of the HTTP
//! gateway sharing its configurations over NATS, and the gRPC gateway's
//! processor-client. Every processor-client reaches the transformer through
//! the cutter relay, so the nemesis can reset their connections.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gateway_tests::Cutter;
use gateway_tests::{bin, free_port, wait_port, NatsServer, Proc};

/// A replica's lease: short, so a pause can outlast it in a short run.
pub const LEASE: Duration = Duration::from_secs(3);

/// Where everything listens.
pub struct Ports {
    pub transformer: u16,
    /// The HTTP gateway's replicas, and their user servers.
    pub replicas: Arc<Vec<u16>>,
    pub user_servers: Vec<u16>,
    pub grpc_pc: u16,
    pub grpc_user_server: u16,
    pub sensor: u16,
}

impl Ports {
    pub fn new(replicas: usize) -> Ports {
        Ports {
            transformer: free_port(),
            replicas: Arc::new((0..replicas).map(|_| free_port()).collect()),
            user_servers: (0..replicas).map(|_| free_port()).collect(),
            grpc_pc: free_port(),
            grpc_user_server: free_port(),
            sensor: free_port(),
        }
    }
}

pub struct Pieces {
    dir: PathBuf,
    pub ports: Ports,
    pub nats: NatsServer,
    pub cutter: Cutter,
    pub transformer: Proc,
    pub replicas: Vec<Proc>,
    pub grpc_pc: Proc,
}

impl Pieces {
    /// Starts nats-server, the transformer and every processor-client (the
    /// watchers and user servers run in this process, started before).
    pub async fn start(dir: &Path, ports: Ports) -> Pieces {
        let nats = NatsServer::start(dir).await;
        let cutter = Cutter::start(ports.transformer).await;
        let idle = || Proc::spawn("idle", Command::new("true"), dir);
        let mut p = Pieces {
            dir: dir.to_owned(),
            replicas: ports.replicas.iter().map(|_| idle()).collect(),
            ports,
            nats,
            cutter,
            transformer: idle(),
            grpc_pc: idle(),
        };
        p.restart_transformer().await;
        for i in 0..p.replicas.len() {
            p.restart_replica(i).await;
        }
        p.restart_grpc_pc().await;
        p
    }

    pub async fn restart_transformer(&mut self) {
        let mut c = Command::new(bin("transformer"));
        c.env_clear()
            .env("GATEWAY_NAME", "chaos")
            .env("TRANSFORMER_PORT", self.ports.transformer.to_string())
            .env("TRANSFORMER_LISTEN_ADDRESS", "127.0.0.1")
            .env(
                "SENSOR_WATCHERS",
                format!("http://127.0.0.1:{}/", self.ports.sensor),
            )
            .env("EVENT_PROTOCOL", "HTTP,NATS")
            .env("NATS_TYPE", "Streaming")
            .env("NATS_URL", self.nats.url())
            .env("NATS_PING_INTERVAL", "2s")
            .env("TRANSFORMER_DATA_DIR", self.dir.join("transformer-data"))
            .env("WATCHER_RETRY_CAP", "500ms")
            .env("RUST_LOG", "info");
        if let Ok(f) = std::env::var("TRANSFORMER_FSYNC") {
            c.env("TRANSFORMER_FSYNC", f);
        }
        self.transformer = Proc::spawn("transformer", c, &self.dir);
        wait_port(self.ports.transformer, "the transformer").await;
    }

    /// The settings every processor-client shares.
    fn processor(&self, name: &str, port: u16, configs: &str) -> Command {
        let mut c = Command::new(bin("processor-client"));
        c.env_clear()
            .env("GATEWAY_NAME", name)
            .env("GATEWAY_PROCESSOR_CONFIG_MAP", self.dir.join(configs))
            .env("GATEWAY_PROCESSOR_CLIENT_HTTP_PORT", port.to_string())
            .env("GATEWAY_PROCESSOR_CLIENT_LISTEN_ADDRESS", "127.0.0.1")
            .env("GATEWAY_PROCESSOR_RETRY_CAP", "1s")
            .env("TRANSFORMER_PORT", self.cutter.port.to_string())
            .env("RUST_LOG", "info");
        c
    }

    pub async fn restart_replica(&mut self, i: usize) {
        let port = self.ports.replicas[i];
        let mut c = self.processor("chaos", port, "configs");
        c.env(
            "GATEWAY_PROCESSOR_SERVER_HTTP_PORT",
            self.ports.user_servers[i].to_string(),
        )
        .env("GATEWAY_PROCESSOR_SHARING", "nats")
        .env("GATEWAY_PROCESSOR_REPLICA_ID", format!("r{i}"))
        .env(
            "GATEWAY_PROCESSOR_LEASE",
            format!("{}ms", LEASE.as_millis()),
        )
        .env("NATS_URL", self.nats.url())
        .env("NATS_PING_INTERVAL", "2s");
        self.replicas[i] = Proc::spawn(&format!("replica-{i}"), c, &self.dir);
        wait_port(port, "a processor-client replica").await;
    }

    pub async fn restart_grpc_pc(&mut self) {
        let port = self.ports.grpc_pc;
        let mut c = self.processor("chaos-grpc", port, "grpc-configs");
        c.env("GATEWAY_PROCESSOR_SERVER_PROTOCOL", "grpc").env(
            "GATEWAY_PROCESSOR_SERVER_GRPC_PORT",
            self.ports.grpc_user_server.to_string(),
        );
        self.grpc_pc = Proc::spawn("grpc-processor-client", c, &self.dir);
        wait_port(port, "the gRPC gateway's processor-client").await;
    }

    /// Kills every process (the run is over).
    pub fn stop(&mut self) {
        self.transformer.kill();
        self.grpc_pc.kill();
        for r in &mut self.replicas {
            r.kill();
        }
        self.nats.kill();
    }
}
