//! WebSockets through NATS, as h8s carries them. Each frame from the client is
//! published on `{prefix}.ws.ws.{host reversed}.{path}` with the upgrade
//! request's headers and the reply subject `{inbox prefix}.{Sec-WebSocket-Key}`;
//! every message on that inbox goes to the client as a text frame
//! (a message that is not UTF-8 goes as a binary frame, bytes unchanged).
//! `h8s.control.ws.conn.established` is published when the connection opens and
//! `h8s.control.ws.conn.closed` when it closes, each with the upgrade request's
//! headers, `X-H8S-PublishSubject` and the inbox as reply subject.
//!
//! A client too slow to read its messages is not left behind silently (h8s
//! drops what does not fit its buffer): once [`BUFFERED`] messages wait for it,
//! it is closed with 1013 (try again later) and the `closed` control message
//! goes out. On shutdown every WebSocket is closed with 1001.

use std::sync::Arc;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::inbox::Inbox;
use crate::state::AppState;

/// Messages waiting for a slow client before it is closed.
const BUFFERED: usize = 256;

const ESTABLISHED: &str = "h8s.control.ws.conn.established";
const CLOSED: &str = "h8s.control.ws.conn.closed";
/// How long a closing session waits for its `closed` control message to go
/// out.
const CLOSING_TIME: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a client being closed has to take its close frame. One closed for
/// being slow has a full socket: the frame goes out only once it has read
/// what was written before it, and a client that reads again after a pause
/// of a few seconds should still learn why it was closed (1013). Bounded, so
/// a client that never reads again holds nothing for long; on SIGTERM the
/// shutdown deadline bounds it too.
const CLOSE_FRAME_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a session closes the WebSocket: its close code and reason.
type Closing = (u16, &'static str);

/// One WebSocket's life: from the upgrade to its close. `inbox`, `publish`
/// and the NATS `headers` (the upgrade request's) were made, and checked, at
/// the upgrade ([`crate::proxy`]).
pub async fn session(
    socket: WebSocket,
    st: Arc<AppState>,
    headers: async_nats::HeaderMap,
    claim: Inbox,
    publish: String,
    shutdown: CancellationToken,
) {
    let inbox = claim.subject.clone();
    let client = &st.client;
    let mut replies = match client.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to the WebSocket's inbox");
            return;
        }
    };
    let _ = client
        .publish_with_reply_and_headers(ESTABLISHED, inbox.clone(), headers.clone(), Bytes::new())
        .await;
    st.metrics.websockets_open.inc();
    let (to_client, mut from_client) = socket.split();
    let (tx, rx) = mpsc::channel::<Message>(BUFFERED);
    let (close_tx, close_rx) = oneshot::channel::<Closing>();
    let writer = spawn_writer(to_client, rx, close_rx);
    let closing = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Some((close_code::AWAY, "the ingress is shutting down")),
            reply = replies.next() => {
                let Some(reply) = reply else { break None };
                if tx.try_send(to_client_message(reply.payload)).is_err() {
                    // The client does not keep up: close it rather than drop
                    // what it would never know it missed.
                    tracing::warn!(%inbox, "WebSocket client too slow; closing it");
                    break Some((close_code::AGAIN, "too slow to read its messages"));
                }
            }
            frame = from_client.next() => {
                let data = match from_the_client(frame) {
                    Frame::Data(data) => data,
                    Frame::Skip => continue,
                    Frame::End(closing) => break closing,
                };
                let published = client
                    .publish_with_reply_and_headers(publish.clone(), inbox.clone(), headers.clone(), data)
                    .await;
                if let Err(e) = published {
                    break Some(if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded {
                        (close_code::SIZE, "the message with its headers is more than NATS takes")
                    } else {
                        (close_code::AGAIN, "NATS cannot be reached")
                    });
                }
            }
        }
    };
    if let Some(closing) = closing {
        let _ = close_tx.send(closing);
    }
    drop(tx);
    // The key is free again as soon as the client is gone, so a client that
    // reuses its key for its next connection finds it free; the closing
    // below may take a moment.
    drop(replies);
    drop(claim);
    // Bounded: with NATS away, a flush would wait for the reconnect.
    let closed = async {
        let _ = client
            .publish_with_reply_and_headers(CLOSED, inbox, headers, Bytes::new())
            .await;
        let _ = client.flush().await;
    };
    let _ = tokio::time::timeout(CLOSING_TIME, closed).await;
    let _ = tokio::time::timeout(CLOSE_FRAME_TIME + Duration::from_secs(1), writer).await;
    // Last: shutdown waits for this count to reach zero, then exits, so the
    // control message and the close frame must be out before it drops.
    st.metrics.websockets_open.dec();
}

/// The writer: messages in order, and a close frame when asked, even while
/// a message is stuck on a client that does not read.
fn spawn_writer(
    mut to_client: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
    mut close_rx: oneshot::Receiver<Closing>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut closing = None;
        loop {
            let next = tokio::select! {
                biased;
                c = &mut close_rx => { closing = c.ok(); break }
                m = rx.recv() => m,
            };
            let Some(message) = next else { break };
            tokio::select! {
                biased;
                c = &mut close_rx => { closing = c.ok(); break }
                sent = to_client.send(message) => if sent.is_err() { return },
            }
        }
        if let Some((code, reason)) = closing {
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(CLOSE_FRAME_TIME, to_client.send(frame)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), to_client.close()).await;
    })
}

/// What a frame from the client asks of the session.
enum Frame {
    /// Publish these bytes.
    Data(Bytes),
    /// Nothing (a ping or pong).
    Skip,
    /// The session ends, with a close frame of its own or none.
    End(Option<Closing>),
}

/// Reads a frame (or the end of the stream) from the client.
fn from_the_client(frame: Option<Result<Message, axum::Error>>) -> Frame {
    match frame {
        Some(Ok(Message::Text(text))) => Frame::Data(Bytes::from(text)),
        Some(Ok(Message::Binary(data))) => Frame::Data(data),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Frame::Skip,
        Some(Err(e)) if too_big(&e) => Frame::End(Some((
            close_code::SIZE,
            "the message is over the ingress's size limit",
        ))),
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Frame::End(None),
    }
}

/// A message from the inbox as a frame for the client: text, as h8s writes
/// it, when it is UTF-8 (no copy), else a binary frame with the bytes as they
/// are. A text frame must be UTF-8 (RFC 6455: a client fails the connection
/// on one that is not), so the only other ways would be to mangle the bytes
/// or to lose the connection.
fn to_client_message(payload: Bytes) -> Message {
    match axum::extract::ws::Utf8Bytes::try_from(payload.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(payload),
    }
}

/// Whether a read failed because the client's message is over
/// `INGRESS_MAX_BODY_BYTES` (which the upgrade set as the message limit).
fn too_big(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|inner| inner.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_goes_as_text_and_other_bytes_as_binary_unchanged() {
        let text = to_client_message(Bytes::from_static("José".as_bytes()));
        assert!(matches!(&text, Message::Text(t) if t.as_str() == "José"));
        let raw = Bytes::from_static(b"\xff\x00bin");
        let binary = to_client_message(raw.clone());
        assert!(matches!(binary, Message::Binary(b) if b == raw));
    }
}
