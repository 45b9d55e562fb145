//! Compiles the test-only gRPC service with protox (pure Rust), like the weft-api crate does.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/echo.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
