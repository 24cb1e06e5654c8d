//! The benchmark's gRPC user server (a load generator that streams events into
//! the processor-client) is generated from `openapi/proto/eventing.proto`, the
//! contract's own file.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../openapi/proto";
    println!("cargo:rerun-if-changed={dir}/eventing.proto");
    let descriptors = protox::compile(["eventing.proto"], [dir])?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(descriptors)?;
    Ok(())
}
