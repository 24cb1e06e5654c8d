use ingress::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    gateway_common::telemetry::init(config.json_logs);
    ingress::run(config, gateway_common::shutdown::signal()).await?;
    Ok(())
}
