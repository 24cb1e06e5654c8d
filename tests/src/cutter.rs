//! A TCP relay in front of a server that a test can cut: every connection
//! through it is reset at once (RST both ways, as when the network between
//! them fails or a peer's socket is torn down), while the server keeps
//! running and new connections pass again. A connection-level fault that is
//! cheap enough to inflict many times in one test, where restarting the
//! server takes seconds each time. It can also cut one connection in the
//! middle of a request: the next bytes a client sends are dropped with its
//! connection, so the request is in flight when the connection dies. And it
//! can go silent: nothing passes either way, nothing is closed (a partition,
//! a paused peer), until it speaks again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The relay: listens on `port`, forwards to the upstream port it was given.
pub struct Cutter {
    pub port: u16,
    cuts: watch::Sender<u64>,
    faults: Arc<Faults>,
    accept: JoinHandle<()>,
}

/// What every relay of one cutter obeys.
#[derive(Default)]
struct Faults {
    /// Set: the next bytes from a client reset its connection instead.
    armed: AtomicBool,
    /// Connections reset mid-request so far.
    mid_request: AtomicU64,
    /// Set: nothing is forwarded either way.
    silent: AtomicBool,
}

impl Cutter {
    /// Relays 127.0.0.1:`port` (a free port) to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the cutter");
        let port = listener.local_addr().expect("cutter address").port();
        let (cuts, _) = watch::channel(0u64);
        let sender = cuts.clone();
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                // Subscribed before the relay starts: only later cuts reach it.
                let cut = sender.subscribe();
                tokio::spawn(relay(inbound, upstream, cut, f.clone()));
            }
        });
        Cutter {
            port,
            cuts,
            faults,
            accept,
        }
    }

    /// Nothing passes either way from now on, and nothing is closed.
    pub fn go_silent(&self) {
        self.faults.silent.store(true, Ordering::SeqCst);
    }

    /// Forwarding again, what was held first.
    pub fn speak_again(&self) {
        self.faults.silent.store(false, Ordering::SeqCst);
    }

    /// Resets the connection of the next client that sends anything within
    /// 10 s, and drops what it sent; whether that happened (a client that
    /// had nothing more to send is not waited for).
    pub async fn cut_mid_request(&self) -> bool {
        let (armed, mid_request) = (&self.faults.armed, &self.faults.mid_request);
        let before = mid_request.load(Ordering::SeqCst);
        armed.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while mid_request.load(Ordering::SeqCst) == before {
            if std::time::Instant::now() > deadline {
                // Disarmed, unless a cut took it meanwhile.
                return armed
                    .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err();
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }

    /// Cuts the connections through the relay each time `progress` has moved 30
    /// further, every other time in the middle of a request, until it reaches
    /// `total`; returns how many cuts there were.
    pub async fn cut_as_it_streams(&self, total: usize, progress: impl Fn() -> usize) -> usize {
        let mut cuts = 0;
        for round in 0.. {
            let next = (progress() + 30).min(total);
            crate::wait_for(&format!("{next} of {total} events through"), || async {
                (progress() >= next).then_some(())
            })
            .await;
            if next == total {
                break;
            }
            if round % 2 == 0 {
                self.cut();
            } else if !self.cut_mid_request().await {
                continue;
            }
            cuts += 1;
        }
        cuts
    }

    /// Resets every connection open through the relay now.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.accept.abort();
        // Ends the relays still running, as a cut does.
        self.cut();
    }
}

async fn relay(
    mut inbound: TcpStream,
    upstream: u16,
    mut cut: watch::Receiver<u64>,
    faults: Arc<Faults>,
) {
    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let cut_now = {
        let (mut from_client, mut to_client) = inbound.split();
        let (mut from_server, mut to_server) = outbound.split();
        // Either side closing ends the relay (a half-close is not kept).
        tokio::select! {
            cut_here = forward(&mut from_client, &mut to_server, &faults, true) => cut_here,
            _ = forward(&mut from_server, &mut to_client, &faults, false) => false,
            _ = cut.changed() => true,
        }
    };
    if cut_now {
        // Closing with a zero linger sends RST instead of FIN.
        let _ = inbound.set_zero_linger();
        let _ = outbound.set_zero_linger();
    }
}

/// Copies one direction until it closes (`false`), or until an armed
/// mid-request cut takes what a client sent (`true`, only `from_client`).
async fn forward(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    faults: &Faults,
    from_client: bool,
) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if from_client && faults.armed.swap(false, Ordering::SeqCst) {
            faults.mid_request.fetch_add(1, Ordering::SeqCst);
            return true;
        }
        while faults.silent.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
    }
}
