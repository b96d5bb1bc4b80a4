//! Compiles `proto/*.proto` into Rust with tonic/prost. `protoc` comes from the
//! `protoc-bin-vendored` crate so that a fresh machine needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .bytes(".")
        // prost's codec, but an encoder that sizes its buffer first (src/wire/codec.rs).
        .codec_path("crate::wire::codec::SizedCodec")
        .compile_protos(&["proto/raftkv.proto", "proto/raft.proto"], &["proto"])?;
    Ok(())
}
