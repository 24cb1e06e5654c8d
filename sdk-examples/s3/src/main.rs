use s3_gateway::S3;

#[tokio::main]
async fn main() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    gateway_sdk::run(S3::from_env()?).await
}
