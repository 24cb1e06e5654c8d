//! The socket side of a connection: what hyper reads and writes through
//! ([`Tracked`] notes when a request head starts arriving, and gives hyper's
//! bare answer to a request it cannot parse a JSON error, see [`malformed`]),
//! the lingering close that drains a client still sending its body so it reads
//! our answer instead of a reset, and the canned 503 for a connection over the
//! limit.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::malformed;
use super::{Conn, Shared};

/// How much of an unread request body is drained before a connection closes.
pub const LINGER_BYTES: usize = 64 * 1024 * 1024;
/// How long a closing connection is drained at most.
pub const LINGER_TIME: Duration = Duration::from_secs(10);
/// A drained connection that sends nothing for this long is closed.
const LINGER_QUIET: Duration = Duration::from_secs(2);

/// The socket as hyper sees it: notes when bytes arrive, and on drop hands the
/// socket to a lingering close.
pub(super) struct Tracked {
    pub(super) stream: Option<TcpStream>,
    pub(super) permit: Option<OwnedSemaphorePermit>,
    pub(super) conn: Arc<Conn>,
    pub(super) shared: Arc<Shared>,
    /// The requests handed to the service whose response has begun here: a
    /// response head written when there is none due is hyper's own.
    pub(super) heads: u64,
    /// hyper's answer to a request it could not parse, as a JSON error, and
    /// how much of it is written.
    pub(super) answer: Option<(Vec<u8>, usize)>,
    /// The connection's first bytes: `None` until they arrive, then whether
    /// they are the HTTP/2 preface (answered on close, see [`malformed::goaway`]).
    h2: Option<bool>,
}

impl Tracked {
    pub(super) fn new(
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        conn: Arc<Conn>,
        shared: Arc<Shared>,
    ) -> Self {
        Tracked {
            stream: Some(stream),
            permit: Some(permit),
            conn,
            shared,
            heads: 0,
            answer: None,
            h2: None,
        }
    }

    /// Notes the start of the service's response heads; takes hyper's own
    /// answer to an unparsable request (written when no response is due) to
    /// be sent as a JSON error instead. `Some(n)`: `n` bytes taken that way.
    fn take_write(&mut self, bufs: &[std::io::IoSlice<'_>]) -> Option<usize> {
        let first = bufs.iter().find(|b| !b.is_empty())?;
        if !first.starts_with(b"HTTP/1.1 ") || first.starts_with(b"HTTP/1.1 1") {
            return None;
        }
        if self.conn.requests.load(Ordering::Acquire) > self.heads {
            self.heads += 1;
            return None;
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        // hyper's own answer is a bare head of about a hundred bytes; a body
        // that merely begins the same way is not copied to find that out.
        if len > 256 {
            return None;
        }
        let head: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let answer = malformed::rewrite(&head)?;
        tracing::debug!(answer = %String::from_utf8_lossy(&answer), "a request that could not be parsed");
        self.answer = Some((answer, 0));
        Some(len)
    }

    /// Writes out what is left of the rewritten answer.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let (Some((answer, written)), Some(stream)) = (self.answer.as_mut(), self.stream.as_mut())
        else {
            return Poll::Ready(Ok(()));
        };
        while *written < answer.len() {
            match Pin::new(&mut *stream).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.answer = None;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let polled = Pin::new(stream).poll_read(cx, buf);
        if this.h2.is_none() && buf.filled().len() > before {
            this.h2 = Some(malformed::is_h2_preface(&buf.filled()[before..]));
        }
        if buf.filled().len() > before && !this.conn.busy() {
            let _ = this.conn.head_since.compare_exchange(
                0,
                this.shared.now_ms(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_answer(cx))?;
        if let Some(taken) = this.take_write(bufs) {
            // Taken whole; what the socket does not take now goes out on flush.
            if let Poll::Ready(Err(e)) = this.poll_answer(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(taken));
        }
        match this.stream.as_mut() {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_answer(cx))?;
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_answer(cx))?;
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // The connection's place is free from here; a drain holds a place of
        // its own, and without one the socket is simply closed.
        drop(self.permit.take());
        if self.conn.cut_off.load(Ordering::Acquire) {
            return;
        }
        let Ok(slot) = self.shared.lingering.clone().try_acquire_owned() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let closing = self.shared.closing.clone();
            if self.h2 == Some(true) {
                runtime.spawn(async move {
                    let mut stream = stream;
                    let answer = malformed::goaway();
                    let written =
                        tokio::time::timeout(LINGER_QUIET, stream.write_all(&answer)).await;
                    if matches!(written, Ok(Ok(()))) {
                        linger(stream, slot, closing).await;
                    }
                });
            } else {
                runtime.spawn(linger(stream, slot, closing));
            }
        }
    }
}

/// Closes our side, then reads and discards what the client still sends until
/// it closes too, or the bounds are reached. Closing a socket with unread data
/// sends a reset, which makes a client still writing its body lose our answer.
async fn linger(mut stream: TcpStream, _slot: OwnedSemaphorePermit, closing: CancellationToken) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match tokio::time::timeout(LINGER_QUIET, stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => return,
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(LINGER_TIME, drain) => {}
        _ = closing.cancelled() => {}
    }
}

/// The answer to a connection over the limit, before closing it.
pub(super) async fn refuse(mut stream: TcpStream, _slot: OwnedSemaphorePermit) {
    let body = format!(
        r#"{{"error":"{}","detail":"every connection this server allows is busy; retry later"}}"#,
        crate::error::ErrorCode::TooManyConnections
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let written = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        let mut buf = [0u8; 16 * 1024];
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}
