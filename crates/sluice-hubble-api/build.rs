//! Generates the flow/observer messages and the Observer service from proto/ with protox (a
//! pure-Rust protobuf compiler, so no protoc is needed).

fn main() {
    let files = ["proto/flow/flow.proto", "proto/observer/observer.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"]).expect("the protos compile");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)
        .expect("code generation succeeds");
}
