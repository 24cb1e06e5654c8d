//! The scenarios of one benchmark run, each a method of [`Run`], which holds
//! what they share: the settings, the HTTP user server and sensor every
//! gateway is wired to, the gRPC load generator, and the rows measured so far.
//! `--only` picks scenarios by part name (limit, chain, http, triggers, batch,
//! grpc, nats, kafka, ingress, series).

use super::*;

pub(super) struct Run {
    s: Settings,
    smoke: bool,
    only: Option<Vec<String>>,
    /// Bytes of each event.
    size: usize,
    us_port: u16,
    /// Configurations the HTTP user server was told to start, so far.
    starts: Arc<AtomicU64>,
    sensor: Arc<Sink>,
    sensor_url: String,
    grpc_port: u16,
    grpc_load: Arc<grpc::GrpcLoad>,
    pub(super) rows: Vec<Row>,
}

impl Run {
    /// Starts the servers every scenario shares.
    pub(super) async fn start(s: Settings, smoke: bool, only: Option<Vec<String>>) -> Run {
        let size = 100;
        let (us_port, sensor_port, grpc_port) = (free_port(), free_port(), free_port());
        Run {
            s,
            smoke,
            only,
            size,
            us_port,
            starts: start_user_server(us_port).await,
            sensor: start_sensor(sensor_port).await,
            sensor_url: format!("http://127.0.0.1:{sensor_port}/"),
            grpc_port,
            grpc_load: grpc::start(grpc_port, size).await,
            rows: Vec::new(),
        }
    }

    fn want(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == part))
    }

    /// A gateway driven by the HTTP user server, once it started every
    /// configuration.
    async fn http_gateway(&self, env: &[(&str, String)], sources: usize) -> Gateway {
        let before = self.starts.load(Ordering::Relaxed);
        let g = gateway(env, sources, UserServer::Http(self.us_port)).await;
        wait_starts(&self.starts, before + sources as u64).await;
        g
    }

    /// 1. The limit: a bare axum server, one hop. NaN when not measured.
    pub(super) async fn limit(&mut self) -> f64 {
        if !self.want("limit") {
            return f64::NAN;
        }
        let name = "limit: bare axum, one hop (latency = round trip)";
        let (row, limit) = bare_hop(name, self.size, &self.s).await;
        self.rows.push(row);
        limit
    }

    /// The ceiling for the gateway's shape: generator -> hop -> hop -> sensor,
    /// three HTTP exchanges per event as in the gateway, but no work at all.
    pub(super) async fn chain(&mut self) {
        if !self.want("chain") {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (free_port(), free_port());
        let hop = |name: &str, port: u16, next: &str| {
            let mut cmd = Command::new(std::env::current_exe().expect("exe"));
            cmd.arg("--bare-forward").arg(port.to_string()).arg(next);
            Proc::spawn(name, cmd, dir.path())
        };
        let hop_b = hop("bare-hop-b", b, &self.sensor_url);
        let hop_a = hop("bare-hop-a", a, &format!("http://127.0.0.1:{b}/"));
        wait_port(a, "the first bare hop").await;
        wait_port(b, "the second bare hop").await;
        // Each hop answers only once the next has, so the generator's round
        // trip is the end-to-end latency, and what it had answered has arrived.
        let (mut row, _) = measure(
            "ceiling: three bare axum hops, no work (latency = round trip)",
            &format!("http://127.0.0.1:{a}/"),
            None,
            self.size,
            &self.s,
            &[("a", hop_a.pid()), ("b", hop_b.pid())],
        )
        .await;
        row.rss = format!(
            "hops {:.1} / {:.1}",
            peak_rss_mib(hop_a.pid()),
            peak_rss_mib(hop_b.pid())
        );
        self.rows.push(row);
    }

    /// End to end over HTTP, then the same with an fsync before every 2xx:
    /// what surviving a power loss costs (the store's writer syncs once per
    /// group of writes).
    pub(super) async fn http(&mut self) {
        if !self.want("http") {
            return;
        }
        let http_rows = [
            ("end to end: HTTP sensor", None),
            (
                "end to end: HTTP sensor, TRANSFORMER_FSYNC=always",
                Some("always".to_owned()),
            ),
        ];
        for (name, fsync) in http_rows {
            let mut env = vec![("SENSOR_WATCHERS", self.sensor_url.clone())];
            env.extend(fsync.map(|f| ("TRANSFORMER_FSYNC", f)));
            self.sensor_row(name, &env).await;
        }
    }

    /// 32 triggers, each with a CESQL filter wanting 1/32 of the events (two
    /// of the 64 configurations): each event still reaches one watcher, so
    /// beside the one-watcher row this is what choosing it costs.
    pub(super) async fn triggers(&mut self) {
        if !self.want("triggers") {
            return;
        }
        let name = "32 triggers, CESQL filter each (1/32 of events): HTTP sensor";
        let dir = tempfile::tempdir().expect("tempdir");
        let half = self.s.sources.div_ceil(2).max(1);
        for i in 0..32 {
            let text = format!(
                "name: t{i}\nsubscriber: {{uri: '{}t{i}'}}\n\
                 filters:\n  - cesql: \"subject IN ('bench-{i}', 'bench-{}')\"\n",
                self.sensor_url,
                i + half
            );
            std::fs::write(dir.path().join(format!("t{i}.yaml")), text).expect("trigger");
        }
        let env = [("TRANSFORMER_TRIGGERS", dir.path().display().to_string())];
        self.sensor_row(name, &env).await;
    }

    /// One `POST /event` per event through a gateway with the transformer's
    /// `env`, into the HTTP sensor: its row.
    async fn sensor_row(&mut self, name: &str, env: &[(&str, String)]) {
        let g = self.http_gateway(env, self.s.sources).await;
        let (row, _) = measure(
            name,
            &g.pc_url,
            Some(&self.sensor),
            self.size,
            &self.s,
            &g.pids(),
        )
        .await;
        self.rows.push(finished(row, &g, name).await);
    }

    /// An HTTP user server posting `/events` batches, without and with ids
    /// (deduplication remembering each).
    pub(super) async fn batches(&mut self) {
        if !self.want("batch") {
            return;
        }
        for ids in [false, true] {
            let name = if ids {
                "batches of 100 with ids: HTTP sensor"
            } else {
                "batches of 100: HTTP sensor"
            };
            let env = [("SENSOR_WATCHERS", self.sensor_url.clone())];
            let g = self.http_gateway(&env, self.s.sources).await;
            let url = g.events_url();
            let procs = g.pids();
            let row = measure_batches(
                name,
                &url,
                &self.sensor,
                self.size,
                100,
                ids,
                &self.s,
                &procs,
            )
            .await;
            self.rows.push(finished(row, &g, name).await);
        }
    }

    /// The HTTP sensor fed by a gRPC user server streaming the events in.
    pub(super) async fn grpc(&mut self) {
        if !self.want("grpc") {
            return;
        }
        let name = "gRPC user server: HTTP sensor";
        let before = self.grpc_load.calls.load(Ordering::Relaxed);
        let env = [("SENSOR_WATCHERS", self.sensor_url.clone())];
        let g = gateway(&env, self.s.sources, UserServer::Grpc(self.grpc_port)).await;
        grpc::wait_calls(&self.grpc_load, before + self.s.sources as u64).await;
        let row = measure_grpc(
            name,
            &self.grpc_load,
            &self.sensor,
            self.s.sources,
            &self.s,
            &g.pids(),
        )
        .await;
        self.rows.push(finished(row, &g, name).await);
    }

    /// Into NATS core and JetStream: one `POST /event` each, a gRPC user
    /// server, batches without and with ids; and the Kafka gateway.
    pub(super) async fn nats(&mut self) {
        if !(self.want("nats") || self.want("grpc") || self.want("batch") || self.want("kafka")) {
            return;
        }
        let nats_dir = tempfile::tempdir().expect("tempdir");
        let nats = NatsServer::start(nats_dir.path()).await;
        let sink = nats_subscriber(&nats).await;
        let scenarios = [
            ("Standard", "into NATS core", Producer::Single),
            ("Streaming", "into JetStream", Producer::Single),
            (
                "Standard",
                "gRPC user server: into NATS core",
                Producer::Grpc,
            ),
            (
                "Standard",
                "batches of 100: into NATS core",
                Producer::Batches(false),
            ),
            (
                "Standard",
                "batches of 100 with ids: into NATS core",
                Producer::Batches(true),
            ),
        ];
        for (ty, name, producer) in scenarios {
            let part = match producer {
                Producer::Grpc => "grpc",
                Producer::Batches(_) => "batch",
                Producer::Single => "nats",
            };
            if self.want(part) {
                let row = self.nats_scenario(&nats, &sink, ty, name, producer).await;
                self.rows.push(row);
            }
        }
        if self.want("kafka") {
            let rows = kafka::measure_kafka(self.smoke, &nats, &sink).await;
            self.rows.extend(rows);
        }
    }

    /// One scenario into NATS (`NATS_TYPE` `ty`), read by `sink`.
    async fn nats_scenario(
        &self,
        nats: &NatsServer,
        sink: &Arc<Sink>,
        ty: &str,
        name: &str,
        producer: Producer,
    ) -> Row {
        let env = [
            ("EVENT_PROTOCOL", "NATS".to_owned()),
            ("NATS_URL", nats.url()),
            ("NATS_TYPE", ty.to_owned()),
            ("NATS_CE_MODE", "binary".to_owned()),
        ];
        let g = if let Producer::Grpc = producer {
            let before = self.grpc_load.calls.load(Ordering::Relaxed);
            let g = gateway(&env, self.s.sources, UserServer::Grpc(self.grpc_port)).await;
            grpc::wait_calls(&self.grpc_load, before + self.s.sources as u64).await;
            g
        } else {
            self.http_gateway(&env, self.s.sources).await
        };
        let mut procs = g.pids();
        procs.extend(nats.proc.as_ref().map(|p| ("nats", p.pid())));
        let (s, size) = (&self.s, self.size);
        let row = match producer {
            Producer::Grpc => measure_grpc(name, &self.grpc_load, sink, s.sources, s, &procs).await,
            Producer::Batches(ids) => {
                let url = g.events_url();
                measure_batches(name, &url, sink, size, 100, ids, s, &procs).await
            }
            Producer::Single => {
                measure(name, &g.pc_url, Some(sink), size, s, &procs)
                    .await
                    .0
            }
        };
        finished(row, &g, name).await
    }

    /// The ingress: HTTP request-reply through it to a NATS responder in this
    /// process, against the bare hop (latency = round trip); its summary of
    /// round trips.
    pub(super) async fn ingress(&mut self) -> Option<String> {
        if !self.want("ingress") {
            return None;
        }
        let (rows, summary) = ingress::measure_ingress(self.size, &self.s).await;
        self.rows.extend(rows);
        Some(summary)
    }

    /// The scaling series (saturation only): payload size, watchers,
    /// configurations.
    pub(super) async fn series(&self) {
        if !self.want("series") {
            return;
        }
        println!("\n| series | value | events/s | peak RSS MiB (pc / tr) |");
        println!("|---|---|---|---|");
        let sizes: &[usize] = if self.smoke {
            &[100, 10 * 1024]
        } else {
            &[100, 10 * 1024, 1024 * 1024]
        };
        for &size in sizes {
            let env = [("SENSOR_WATCHERS", self.sensor_url.clone())];
            let workers = if size >= 1 << 20 { 8 } else { self.s.workers };
            let (rate, rss) = self.saturate(&env, size, workers, 1).await;
            println!("| payload | {size} B | {rate:.0} | {rss} |");
        }
        let watcher_counts: &[usize] = if self.smoke { &[1, 8] } else { &[1, 8, 32] };
        for &n in watcher_counts {
            let urls: Vec<String> = (0..n).map(|i| format!("{}w{i}", self.sensor_url)).collect();
            let env = [("SENSOR_WATCHERS", urls.join(","))];
            let (rate, rss) = self.saturate(&env, 100, self.s.workers, n as u64).await;
            println!("| watchers | {n} | {rate:.0} | {rss} |");
        }
        let config_counts: &[usize] = if self.smoke {
            &[1, 100]
        } else {
            &[1, 1000, 10_000]
        };
        for &n in config_counts {
            // Timed from the processes' start: writing ten thousand files first
            // took up to 9 s on this virtual disk, and is not the gateway's.
            let g = self
                .http_gateway(&[("SENSOR_WATCHERS", self.sensor_url.clone())], n)
                .await;
            println!(
                "| configurations started | {n} | in {:.2} s | {} |",
                g.spawned.elapsed().as_secs_f64(),
                rss_of(&g)
            );
        }
    }

    /// Events per second through a fresh gateway at saturation, each event
    /// reaching `copies` watchers; and the gateway's peak memory.
    async fn saturate(
        &self,
        env: &[(&str, String)],
        size: usize,
        workers: usize,
        copies: u64,
    ) -> (f64, String) {
        let g = gateway(env, self.s.sources, UserServer::Http(self.us_port)).await;
        let before = self.sensor.received.load(Ordering::Relaxed);
        let started = Instant::now();
        let load = generate(&g.pc_url, self.s.sources, size, workers, self.s.secs, None).await;
        let rate = drained(&self.sensor, before, load.ok * copies, started)
            .await
            .map_or(f64::NAN, |t| load.ok as f64 / t.as_secs_f64());
        (rate, rss_of(&g))
    }
}

/// A scenario's row with the gateway's peak memory, its metrics dumped when
/// asked (`BENCH_METRICS=1`).
async fn finished(mut row: Row, g: &Gateway, name: &str) -> Row {
    row.rss = rss_of(g);
    dump_metrics(g, name).await;
    row
}

/// A core NATS subscriber to every subject of the benchmark's gateways.
async fn nats_subscriber(nats: &NatsServer) -> Arc<Sink> {
    let sink = Arc::new(Sink::default());
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let mut sub = client.subscribe("bench.>").await.expect("subscribe");
    let into = sink.clone();
    tokio::spawn(async move {
        use futures::StreamExt as _;
        let _client = client;
        while let Some(m) = sub.next().await {
            let time = m.headers.as_ref().and_then(|h| h.get("ce-time"));
            into.take(&m.payload, time.map(|v| v.as_str().as_bytes()));
        }
    });
    sink
}
