//! The NATS responder behind the ingress rows, speaking the client protocol
//! itself on one thread: it answers every request on `h8s.>` with a small
//! body, reading whole batches of messages and writing their replies in one
//! write. A responder built on a full client library costs about as much CPU
//! per request as the ingress itself, on the same two cores as everything
//! else; this one costs little, so the rows measure the ingress and
//! nats-server rather than the benchmark's own stand-in for a workload.

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::Bytes;

const REPLY: &[u8] = br#"{"id":"x"}"#;

/// Starts the responder on `nats_url` (`nats://host:port`) and returns once it
/// is subscribed: the minimal one, or with `BENCH_CLIENT_RESPONDER` set one
/// built on async-nats, for comparison.
pub(super) async fn start(nats_url: &str) {
    if std::env::var_os("BENCH_CLIENT_RESPONDER").is_none() {
        return spawn(nats_url);
    }
    let client = async_nats::connect(nats_url).await.expect("nats");
    let mut requests = client.subscribe("h8s.>").await.expect("subscribe");
    let responder = client.clone();
    tokio::spawn(async move {
        use futures::StreamExt as _;
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, Bytes::from_static(REPLY)).await;
            }
        }
    });
    client.flush().await.expect("flush");
}

/// The minimal responder: subscribes, then answers on its own thread until
/// the connection closes.
fn spawn(nats_url: &str) {
    let addr = nats_url.trim_start_matches("nats://").to_owned();
    let mut stream = TcpStream::connect(&addr).expect("responder connects");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n\
              SUB h8s.> 1\r\nPING\r\n",
        )
        .expect("responder subscribes");
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(1 << 16),
        out: Vec::with_capacity(1 << 16),
    };
    // The PONG to our PING: the subscription is in place.
    while !conn.handle_available(true) {}
    std::thread::spawn(move || while conn.read_more() && !conn.handle_available(false) {});
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Conn {
    /// Reads what is there into the buffer; false once the connection closed.
    fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 1 << 16];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Handles every whole message buffered, sends the replies; true if a PONG
    /// was seen and `until_pong` (reads first when the buffer is short).
    fn handle_available(&mut self, until_pong: bool) -> bool {
        if until_pong && !self.read_more() {
            panic!("nats closed the responder's connection");
        }
        let mut pos = 0;
        let mut ponged = false;
        while let Some(eol) = find_crlf(&self.buf[pos..]) {
            let line = &self.buf[pos..pos + eol];
            let after = pos + eol + 2;
            let mut parts = line.split(|&b| b == b' ');
            let op = parts.next().unwrap_or_default();
            let args: Vec<&[u8]> = parts.filter(|p| !p.is_empty()).collect();
            let (reply, total) = match op {
                b"MSG" if args.len() == 4 => (Some(args[2]), number(args[3])),
                b"MSG" => (None, number(args.last().copied().unwrap_or_default())),
                b"HMSG" if args.len() == 5 => (Some(args[2]), number(args[4])),
                b"HMSG" => (None, number(args.last().copied().unwrap_or_default())),
                b"PING" => {
                    self.out.extend_from_slice(b"PONG\r\n");
                    pos = after;
                    continue;
                }
                b"PONG" => {
                    ponged = true;
                    pos = after;
                    continue;
                }
                _ => {
                    pos = after;
                    continue;
                }
            };
            let end = after + total + 2;
            if self.buf.len() < end {
                break;
            }
            if let Some(reply) = reply {
                self.out.extend_from_slice(b"PUB ");
                self.out.extend_from_slice(reply);
                self.out
                    .extend_from_slice(format!(" {}\r\n", REPLY.len()).as_bytes());
                self.out.extend_from_slice(REPLY);
                self.out.extend_from_slice(b"\r\n");
            }
            pos = end;
        }
        self.buf.drain(..pos);
        if !self.out.is_empty() {
            let _ = self.stream.write_all(&self.out);
            self.out.clear();
        }
        until_pong && ponged
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn number(b: &[u8]) -> usize {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
