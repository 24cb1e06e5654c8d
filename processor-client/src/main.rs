use processor_client::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    transformer::telemetry::init(config.json_logs);
    processor_client::run(config, transformer::shutdown::signal()).await?;
    Ok(())
}
