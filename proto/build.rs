//! Compiles the .proto files with protox, a pure-Rust protobuf compiler, so
//! that building Shoal needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/shoal/v1/objects.proto",
        "proto/shoal/v1/control.proto",
        "proto/shoal/v1/raft.proto",
        "proto/shoal/v1/dispatcher.proto",
        "proto/shoal/v1/ca.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
