//! The servers the benchmark runs in its own process: the sensor that reads
//! latencies, the HTTP user server that counts starts, and the bare one-hop
//! server and forwarder the gateway is measured against.

use super::*;

/// Where latencies are read: the sensor (or NATS subscriber) of a scenario.
#[derive(Default)]
pub(super) struct Sink {
    pub(super) received: AtomicU64,
    pub(super) recording: AtomicBool,
    /// (arrival, latency, of which before the transformer took it) in ns.
    pub(super) latencies: Mutex<Vec<(u64, u64, u64)>>,
}

impl Sink {
    /// Forgets what was recorded and records from now on.
    pub(super) fn start_recording(&self) {
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.recording.store(true, Ordering::Relaxed);
    }

    /// What was recorded, once the last events sent have had 300 ms to
    /// arrive; records no more.
    pub(super) async fn stop_recording(&self) -> Vec<(u64, u64, u64)> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.recording.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `ce_time` is the CloudEvent's `time`, which the transformer sets when the
    /// event reaches it: it splits the latency into before and after.
    pub(super) fn take(&self, body: &[u8], ce_time: Option<&[u8]>) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if self.recording.load(Ordering::Relaxed) && body.len() >= 8 {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&body[..8]);
            let sent = u64::from_le_bytes(ts);
            let now = now_ns();
            let at_transformer = ce_time
                .and_then(|t| std::str::from_utf8(t).ok())
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map_or(sent, |t| t.unix_timestamp_nanos() as u64);
            self.latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((
                    now,
                    now.saturating_sub(sent),
                    at_transformer.saturating_sub(sent),
                ));
        }
    }
}

pub(super) async fn serve(router: Router, port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
}

/// An HTTP sensor in this process: any path, binary-mode CloudEvents.
pub(super) async fn start_sensor(port: u16) -> Arc<Sink> {
    let sink = Arc::new(Sink::default());
    let router = Router::new()
        .fallback(
            |State(s): State<Arc<Sink>>, headers: axum::http::HeaderMap, body: Bytes| async move {
                s.take(&body, headers.get("ce-time").map(|v| v.as_bytes()));
                "ok"
            },
        )
        .with_state(sink.clone());
    serve(router, port).await;
    wait_port(port, "the bench sensor").await;
    sink
}

/// The user server: accepts every start, and counts them.
pub(super) async fn start_user_server(port: u16) -> Arc<AtomicU64> {
    let starts = Arc::new(AtomicU64::new(0));
    let router =
        Router::new()
            .route(
                "/start",
                post(|State(n): State<Arc<AtomicU64>>| async move {
                    n.fetch_add(1, Ordering::Relaxed);
                    "ok"
                }),
            )
            .route("/stop", post(|| async { "ok" }))
            .route(
                "/count",
                get(|State(n): State<Arc<AtomicU64>>| async move {
                    n.load(Ordering::Relaxed).to_string()
                }),
            )
            .with_state(starts.clone());
    serve(router, port).await;
    wait_port(port, "the bench user server").await;
    starts
}

/// The limit's server: answers every POST with 200 and a small JSON, like the
/// processor-client does, in a process of its own.
pub(super) async fn bare_server(port: u16) {
    let router = Router::new().fallback(|_body: Bytes| async { r#"{"id":"x"}"# });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let _ = axum::serve(listener, router).await;
}

/// One hop of the bare chain: forwards each POST body to `next` and answers once
/// it has been answered, with no parsing, storage or queueing. Three of these
/// hops in a row are what the gateway's path costs before any of its own work.
pub(super) async fn bare_forwarder(port: u16, next: String) {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let next: reqwest::Url = next.parse().expect("--bare-forward URL");
    let router = Router::new()
        .fallback(|State((client, next)): State<(reqwest::Client, reqwest::Url)>, body: Bytes| async move {
            match client.post(next).body(body).send().await {
                Ok(r) if r.status().is_success() => (axum::http::StatusCode::OK, r#"{"id":"x"}"#),
                _ => (axum::http::StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"next hop"}"#),
            }
        })
        .with_state((client, next));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let _ = axum::serve(listener, router).await;
}

/// The ingress's shape with none of its work: each POST body as a NATS
/// request on one subject, the reply's data as the answer. No subject
/// mapping, headers, limits, checks or metrics: what HTTP in, NATS
/// request-reply out costs on this machine with the same crates.
pub(super) async fn bare_nats_forwarder(port: u16, nats: String) {
    let client = async_nats::connect(nats).await.expect("nats");
    let router = Router::new()
        .fallback(
            |State(client): State<async_nats::Client>, body: Bytes| async move {
                match client.request("h8s.bench", body).await {
                    Ok(m) => (axum::http::StatusCode::OK, m.payload),
                    Err(_) => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        Bytes::from_static(br#"{"error":"nats"}"#),
                    ),
                }
            },
        )
        .with_state(client);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let _ = axum::serve(listener, router).await;
}
