use amqp_gateway::Amqp;

#[tokio::main]
async fn main() -> Result<(), String> {
    gateway_sdk::init_logging();
    gateway_sdk::run(Amqp).await
}
