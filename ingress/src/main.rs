use ingress::config::Config;

/// jemalloc: the per-event path allocates many small short-lived buffers across
/// threads, where glibc's malloc showed as the largest single cost in profiles;
/// mimalloc was as fast but held ~10 MiB more resident.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    gateway_common::start::main(|config: Config, shutdown| ingress::run(config, shutdown)).await
}
