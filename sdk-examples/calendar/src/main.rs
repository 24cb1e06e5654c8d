use calendar::Calendar;

#[tokio::main]
async fn main() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    gateway_sdk::run(Calendar::default()).await
}
