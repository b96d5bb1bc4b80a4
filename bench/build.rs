//! Build script of raftkv-bench: compiles `proto/etcd_kv.proto` (the part of etcd's KV API that
//! `raftkv-bench --target etcd` speaks) with tonic/prost, taking `protoc` from the
//! `protoc-bin-vendored` crate so that the build needs nothing but cargo. Only the
//! `raftkv-bench` binary includes the generated code; the library (and so the `raftkv` CLI,
//! which links it) compiles none of it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto");
    // Safe here: a build script is single-threaded, and the variable is only read by the
    // protoc invocation below.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(false)
        .bytes(".")
        .compile_protos(&["proto/etcd_kv.proto"], &["proto"])?;
    Ok(())
}
