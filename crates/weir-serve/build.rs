//! Compiles the Open Inference Protocol's gRPC service (proto/inference.proto)
//! into its messages and a tonic server, with the protoc that ships in a
//! crate, so building needs no protoc installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC; a build script is one thread.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_client(false)
        .compile_protos(&["proto/inference.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/inference.proto");
    Ok(())
}
