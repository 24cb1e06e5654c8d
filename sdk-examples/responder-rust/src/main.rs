//! A workload behind the ingress, in Rust on async-nats: no inbound network,
//! only NATS. It answers every HTTP request the ingress puts on
//! `h8s.http.*.<reversed host>.>` with JSON naming the method and path; the
//! `X-H8S-Status` header sets the status.

use futures::StreamExt as _;

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    // Requests for any path of hello.example.com: the host is reversed by labels.
    let subject =
        std::env::var("H8S_SUBJECT").unwrap_or_else(|_| "h8s.http.*.com.example.hello.>".into());
    let client = async_nats::connect(url).await?;
    let mut requests = client
        .queue_subscribe(subject.clone(), "hello".into())
        .await?;
    println!("answering {subject}");
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else { continue };
        let tokens: Vec<&str> = request.subject.split('.').collect();
        let body = serde_json::json!({
            "method": tokens.get(2),
            "path": tokens.get(6..).unwrap_or_default(),
            "from": "rust",
        });
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        headers.insert("X-H8S-Status", "200");
        client
            .publish_with_headers(reply, headers, body.to_string().into())
            .await?;
    }
    Ok(())
}
