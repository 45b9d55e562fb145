//! Compiles the .proto files with protox (pure Rust), so a fresh machine needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/envoy/service/discovery/v3/ads.proto",
        "proto/weft/mesh/v1/mesh.proto",
        "proto/weft/ca/v1/ca.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Ordered maps make encoding deterministic: equal config gives byte-equal resources,
        // which the control plane relies on to hash versions and skip pushes that change nothing.
        .btree_map(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
