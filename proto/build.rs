//! Compiles `coursewire/v1/*.proto` with protox (pure Rust, so no `protoc` is needed),
//! generates tonic/prost code plus serde impls (proto field names, for event payloads),
//! and keeps the encoded descriptor set (with comments and options) for server reflection,
//! the HTTP/JSON gateway and the OpenAPI document.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "coursewire/v1";
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed={dir}");

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true).open_files(&files)?;
    let descriptors = compiler.file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out.join("coursewire_descriptor.bin");
    // Encoded by protox rather than prost: prost drops the options it has no field for,
    // and `google.api.http` (an extension) is what the HTTP/JSON gateway routes by.
    fs::write(&descriptor_path, compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        // Ordered maps: a message encodes to the same bytes every time, so request
        // fingerprints (idempotency) are canonical.
        .btree_map(".")
        // Our codec answers undecodable requests with INVALID_ARGUMENT (see src/codec.rs).
        .codec_path("crate::codec::Codec")
        .skip_protoc_run()
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors)?;

    let set = fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .preserve_proto_field_names()
        .btree_map(["."])
        .build(&[".coursewire"])?;
    Ok(())
}
