//! A TCP relay in front of a server that a test can cut: every connection
//! through it is reset at once (RST both ways, as when the network between
//! them fails or a peer's socket is torn down), while the server keeps
//! running and new connections pass again. A connection-level fault that is
//! cheap enough to inflict many times in one test, where restarting the
//! server takes seconds each time.

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The relay: listens on `port`, forwards to the upstream port it was given.
pub struct Cutter {
    pub port: u16,
    cuts: watch::Sender<u64>,
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
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                // Subscribed before the relay starts: only later cuts reach it.
                let cut = sender.subscribe();
                tokio::spawn(relay(inbound, upstream, cut));
            }
        });
        Cutter { port, cuts, accept }
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

async fn relay(mut inbound: TcpStream, upstream: u16, mut cut: watch::Receiver<u64>) {
    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let cut_now = tokio::select! {
        _ = copy_bidirectional(&mut inbound, &mut outbound) => false,
        _ = cut.changed() => true,
    };
    if cut_now {
        // Closing with a zero linger sends RST instead of FIN.
        let _ = inbound.set_zero_linger();
        let _ = outbound.set_zero_linger();
    }
}
