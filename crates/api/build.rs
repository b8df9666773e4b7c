//! Generates the dnsfence protobuf/gRPC code and the file descriptor set that the reflection
//! service serves.

use std::env;
use std::io;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let protos = [
        proto_root.join("dnsfence/store/v1/store.proto"),
        proto_root.join("dnsfence/grants/v1/grants.proto"),
    ];
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // The vendored protoc keeps builds independent of whatever (if any) protoc the machine has.
    // It is handed to prost through its config rather than the PROTOC variable: setting
    // process environment is `unsafe` in edition 2024, and the workspace denies unsafe code.
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| io::Error::other(format!("vendored protoc: {e}")))?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    tonic_prost_build::configure()
        // Labels are `BTreeMap` in the domain model; generating the same type makes the
        // conversions moves instead of re-collections.
        .btree_map(".")
        .file_descriptor_set_path(out_dir.join("dnsfence_descriptor.bin"))
        .compile_with_config(config, &protos, &[proto_root])?;
    Ok(())
}
