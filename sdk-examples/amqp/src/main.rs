use amqp_gateway::Amqp;

#[tokio::main]
async fn main() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    gateway_sdk::run(Amqp).await
}
