//! Build script of the `raftkv` CLI. It does nothing unless the `etcd` feature is on; then it
//! compiles `proto/etcd_kv.proto` (the part of etcd's KV API that `raftkv bench --target etcd`
//! speaks) with tonic/prost, taking `protoc` from the `protoc-bin-vendored` crate so that the
//! etcd build, like the default one, needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    compile_etcd_api()
}

#[cfg(feature = "etcd")]
fn compile_etcd_api() -> Result<(), Box<dyn std::error::Error>> {
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

#[cfg(not(feature = "etcd"))]
fn compile_etcd_api() -> Result<(), Box<dyn std::error::Error>> {
    Ok(())
}
