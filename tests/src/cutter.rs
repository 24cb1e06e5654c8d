//! A TCP relay in front of a server that a test can cut: every connection
//! through it is reset at once (RST both ways, as when the network between
//! them fails or a peer's socket is torn down), while the server keeps
//! running and new connections pass again. A connection-level fault that is
//! cheap enough to inflict many times in one test, where restarting the
//! server takes seconds each time. It can also cut one connection in the
//! middle of a request: the next bytes a client sends are dropped with its
//! connection, so the request is in flight when the connection dies.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The relay: listens on `port`, forwards to the upstream port it was given.
pub struct Cutter {
    pub port: u16,
    cuts: watch::Sender<u64>,
    /// Set: the next bytes from a client reset its connection instead.
    armed: Arc<AtomicBool>,
    /// Connections reset mid-request so far.
    mid_request: Arc<AtomicU64>,
    accept: JoinHandle<()>,
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
        let armed = Arc::new(AtomicBool::new(false));
        let mid_request = Arc::new(AtomicU64::new(0));
        let (a, m) = (armed.clone(), mid_request.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                // Subscribed before the relay starts: only later cuts reach it.
                let cut = sender.subscribe();
                tokio::spawn(relay(inbound, upstream, cut, a.clone(), m.clone()));
            }
        });
        Cutter {
            port,
            cuts,
            armed,
            mid_request,
            accept,
        }
    }

    /// Resets the connection of the next client that sends anything within
    /// 10 s, and drops what it sent; whether that happened (a client that
    /// had nothing more to send is not waited for).
    pub async fn cut_mid_request(&self) -> bool {
        let before = self.mid_request.load(Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.mid_request.load(Ordering::SeqCst) == before {
            if std::time::Instant::now() > deadline {
                // Disarmed, unless a cut took it meanwhile.
                return self
                    .armed
                    .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err();
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
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
    armed: Arc<AtomicBool>,
    mid_request: Arc<AtomicU64>,
) {
    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let cut_now = {
        let (mut from_client, mut to_client) = inbound.split();
        let (mut from_server, mut to_server) = outbound.split();
        // Either side closing ends the relay (a half-close is not kept).
        let up = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match from_client.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => {
                        if armed.swap(false, Ordering::SeqCst) {
                            mid_request.fetch_add(1, Ordering::SeqCst);
                            return true;
                        }
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            return false;
                        }
                    }
                }
            }
        };
        tokio::select! {
            cut_here = up => cut_here,
            _ = tokio::io::copy(&mut from_server, &mut to_client) => false,
            _ = cut.changed() => true,
        }
    };
    if cut_now {
        // Closing with a zero linger sends RST instead of FIN.
        let _ = inbound.set_zero_linger();
        let _ = outbound.set_zero_linger();
    }
}
