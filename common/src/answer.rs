//! Reading the body of another server's answer (a user server refusing a
//! configuration, a sensor failing a delivery) for a phase message or a log
//! line. `Response::text` reads all of it into memory first, however large: a
//! server that answers an error with an endless body would take the process's
//! memory with it, for the 512 characters kept in the end. Here at most
//! `limit` bytes are read; the rest goes with the connection.

/// The first `limit` bytes of `response`'s body, as text (invalid UTF-8, and a
/// character cut at the limit, become U+FFFD). A body that fails part-way
/// gives what arrived.
pub async fn prefix(response: reqwest::Response, limit: usize) -> String {
    String::from_utf8_lossy(&prefix_bytes(response, limit).await).into_owned()
}

/// [`prefix`] as the bytes themselves.
pub async fn prefix_bytes(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - out.len());
                out.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A server on a real socket for one request: reads its head, then lets
    /// `answer` write what it likes.
    async fn serve_once<F, Fut, T>(answer: F) -> (u16, tokio::task::JoinHandle<T>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send,
        T: Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let served = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut head = [0u8; 4096];
            let _ = s.read(&mut head).await;
            answer(s).await
        });
        (port, served)
    }

    async fn post(port: u16) -> reqwest::Response {
        crate::tls::client_builder()
            .build()
            .expect("client")
            .post(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .expect("answer")
    }

    #[tokio::test]
    async fn an_endless_error_body_is_read_only_to_the_limit() {
        // 500 with a chunked body that never ends, until the client goes away.
        let (port, served) = serve_once(|mut s| async move {
            let head = b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = s.write_all(head).await;
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
            let mut sent = 0u64;
            while sent < 100_000 && s.write_all(chunk.as_bytes()).await.is_ok() {
                sent += 1;
            }
            sent
        })
        .await;
        let response = post(port).await;
        assert_eq!(response.status().as_u16(), 500);
        let text = tokio::time::timeout(Duration::from_secs(10), prefix(response, 2048))
            .await
            .expect("returns although the body never ends");
        assert_eq!(text, "x".repeat(2048));
        let chunks = tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the server sees the client go")
            .expect("server task");
        assert!(
            chunks < 100_000,
            "the client read {chunks} chunks of 64 KiB"
        );
    }

    #[tokio::test]
    async fn a_short_body_is_read_whole() {
        let (port, _served) = serve_once(|mut s| async move {
            let answer = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 9\r\n\r\nbad \xc3\xa9tat";
            let _ = s.write_all(answer).await;
        })
        .await;
        assert_eq!(prefix(post(port).await, 2048).await, "bad état");
    }
}
