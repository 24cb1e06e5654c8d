//! Generates the gRPC servers of the two user-server contracts from the
//! `.proto` files in `openapi/proto/` (protox compiles them in Rust, so no
//! `protoc` is needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../../openapi/proto";
    let files = ["eventing.proto", "gateway.proto"];
    println!("cargo:rerun-if-changed={dir}");
    for f in files {
        println!("cargo:rerun-if-changed={dir}/{f}");
    }
    let descriptors = protox::compile(files, [dir])?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(descriptors)?;
    Ok(())
}
