use calendar::Calendar;

#[tokio::main]
async fn main() -> Result<(), String> {
    gateway_sdk::init_logging();
    gateway_sdk::run(Calendar::default()).await
}
