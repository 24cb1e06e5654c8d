//! The ingress's HTTP surface in-process: the real router and listeners on
//! port-0 sockets, against a real `nats-server` the test starts, with an h8s
//! responder in this process. Every answer of its own (no responder, a body
//! over the limit, a host not served, a reply's status and headers, the admin
//! port) is checked without the binaries; the end-to-end tests in `tests/`
//! run the binary with the example responders.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt as _;
use gateway_common::start::Settings as _;
use ingress::config::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A `nats-server` on a free port, killed when dropped.
struct Nats {
    child: Child,
    port: u16,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn nats() -> Nats {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server");
    let nats = Nats {
        child: Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (tests/setup.sh installs it)"),
        port,
    };
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return nats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nats-server did not listen on {port}");
}

struct Ingress {
    url: String,
    admin: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Ingress {
    async fn start(nats: &Nats, extra: &[(&str, &str)]) -> Ingress {
        let url = format!("nats://127.0.0.1:{}", nats.port);
        let mut vars = vec![
            ("NATS_URL", url.as_str()),
            ("INGRESS_MAX_BODY_BYTES", "1024"),
            ("INGRESS_REQUEST_TIMEOUT", "500ms"),
            ("SHUTDOWN_TIMEOUT", "2s"),
        ];
        vars.extend_from_slice(extra);
        let config = Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .expect("config");
        let traffic = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (url, admin_url) = (
            format!("http://{}", traffic.local_addr().expect("addr")),
            format!("http://{}", admin.local_addr().expect("addr")),
        );
        let (stop, stopped) = oneshot::channel();
        let done = tokio::spawn(async move {
            ingress::serve(config, traffic, admin, async move {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        let ingress = Ingress {
            url,
            admin: admin_url,
            http: gateway_common::tls::client_builder()
                .build()
                .expect("client"),
            stop: Some(stop),
            done,
        };
        for _ in 0..500 {
            if ingress.get_admin("/readyz").await.0 == 200 {
                return ingress;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the ingress never got ready");
    }

    async fn get_admin(&self, path: &str) -> (u16, String) {
        match self.http.get(format!("{}{path}", self.admin)).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        tokio::time::timeout(Duration::from_secs(10), self.done)
            .await
            .expect("stops within its shutdown timeout")
            .expect("serve ended");
    }
}

/// The JSON error of an answer: its status and `error` code.
async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value =
        serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default();
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_their_subject_and_each_failure_has_its_own_answer() {
    let nats = nats().await;
    let ingress = Ingress::start(&nats, &[]).await;
    let client = async_nats::connect(format!("nats://127.0.0.1:{}", nats.port))
        .await
        .expect("connect");
    // A responder on the subject of POST http://127.0.0.1/orders/new.
    let subject =
        ingress::subject::request_subject("h8s", "http", "POST", "127.0.0.1", "/orders/new");
    let mut requests = client.subscribe(subject.clone()).await.expect("subscribe");
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("X-H8S-Status", "201");
            headers.insert("X-Seen-Subject", m.subject.as_str());
            let body = format!("got {}", String::from_utf8_lossy(&m.payload));
            if let Some(reply) = m.reply {
                let _ = responder
                    .publish_with_headers(reply, headers, body.into())
                    .await;
            }
        }
    });
    client.flush().await.expect("flush");
    // The responder answers on the server before the ingress asks it.
    for _ in 0..100 {
        let probe = client.request(subject.clone(), "probe".into()).await;
        if probe.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = ingress
        .http
        .post(format!("{}/orders/new", ingress.url))
        .body("order 42")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(
        r.headers()
            .get("x-seen-subject")
            .and_then(|v| v.to_str().ok()),
        Some(subject.as_str())
    );
    assert_eq!(r.text().await.expect("body"), "got order 42");

    let nobody = ingress
        .http
        .get(format!("{}/nobody/listens", ingress.url))
        .send()
        .await
        .expect("GET");
    assert_eq!(error_of(nobody).await, (503, "no_responders".into()));
    let big = ingress
        .http
        .post(format!("{}/orders/new", ingress.url))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("POST");
    assert_eq!(error_of(big).await.0, 413);

    let (status, metrics) = ingress.get_admin("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("ingress_"), "{metrics}");
    assert_eq!(ingress.get_admin("/healthz").await.0, 200);
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_not_served_is_404_and_a_silent_responder_504() {
    let nats = nats().await;
    let ingress = Ingress::start(&nats, &[("INGRESS_HOSTS", "shop.example")]).await;
    let elsewhere = ingress
        .http
        .get(format!("{}/x", ingress.url))
        .header("host", "other.example")
        .send()
        .await
        .expect("GET");
    assert_eq!(error_of(elsewhere).await, (404, "unknown_host".into()));
    // A responder that never answers.
    let client = async_nats::connect(format!("nats://127.0.0.1:{}", nats.port))
        .await
        .expect("connect");
    let subject = ingress::subject::request_subject("h8s", "http", "GET", "shop.example", "/slow");
    let _silent = client.subscribe(subject.clone()).await.expect("subscribe");
    // Registered on the server once a request there times out instead of
    // finding nobody.
    for _ in 0..100 {
        let probe = tokio::time::timeout(
            Duration::from_millis(100),
            client.request(subject.clone(), "probe".into()),
        )
        .await;
        if probe.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slow = ingress
        .http
        .get(format!("{}/slow", ingress.url))
        .header("host", "shop.example")
        .send()
        .await
        .expect("GET");
    assert_eq!(error_of(slow).await, (504, "timeout".into()));
    ingress.stop().await;
}
