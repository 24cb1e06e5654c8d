use kafka_gateway::Kafka;

#[tokio::main]
async fn main() -> Result<(), String> {
    gateway_sdk::init_logging();
    gateway_sdk::run(Kafka).await
}
