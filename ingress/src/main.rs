use ingress::config::Config;

/// jemalloc, as in the other binaries: every request allocates its subject,
/// its NATS headers and its response across the runtime's threads.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match start().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => gateway_common::telemetry::failed(e.as_ref()),
    }
}

async fn start() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    gateway_common::telemetry::init(config.json_logs);
    ingress::run(config, gateway_common::shutdown::signal()).await?;
    Ok(())
}
