//! Generates the gRPC clients of the two user-server contracts from the
//! `.proto` files in `openapi/proto/`, the same files the examples in other
//! languages are generated from. protox compiles them in Rust, so building
//! needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../openapi/proto";
    let files = ["eventing.proto", "gateway.proto"];
    println!("cargo:rerun-if-changed={dir}");
    for f in files {
        println!("cargo:rerun-if-changed={dir}/{f}");
    }
    let descriptors = protox::compile(files, [dir])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
