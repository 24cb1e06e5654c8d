use s3_gateway::S3;

#[tokio::main]
async fn main() -> Result<(), String> {
    gateway_sdk::init_logging();
    gateway_sdk::run(S3::from_env()?).await
}
