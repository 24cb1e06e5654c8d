use resource_gateway::Resources;

#[tokio::main]
async fn main() -> Result<(), String> {
    gateway_sdk::init_logging();
    let gateway = Resources::from_env().await?;
    gateway_sdk::run(gateway).await
}
