//! Generates the Rust code for Tyk's coprocess protobuf interface (`protocol/proto/*.proto`).
//!
//! The protos are parsed by `protox` (a pure-Rust protobuf compiler) into a `FileDescriptorSet`,
//! and `tonic-prost-build` generates the prost messages and the `Dispatcher` client and server
//! from it. No system `protoc` is needed, so a fresh machine builds with cargo alone.

use std::process::ExitCode;

/// The directory the protos live in; also the include path, because `coprocess_object.proto`
/// imports the others by bare file name (as Tyk's do).
const PROTO_DIR: &str = "protocol/proto";

/// Every file of the interface, as Tyk splits it.
const PROTO_FILES: [&str; 6] = [
    "coprocess_common.proto",
    "coprocess_mini_request_object.proto",
    "coprocess_object.proto",
    "coprocess_response_object.proto",
    "coprocess_return_overrides.proto",
    "coprocess_session_state.proto",
];

fn main() -> ExitCode {
    println!("cargo:rerun-if-changed=build.rs");
    for f in PROTO_FILES {
        println!("cargo:rerun-if-changed={PROTO_DIR}/{f}");
    }
    let fds = match protox::compile(PROTO_FILES, [PROTO_DIR]) {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("error: cannot compile the protos in {PROTO_DIR}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let generated = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `connect()` helper: the client builds its own channel (unix sockets, backoff).
        .build_transport(false)
        // Ordered maps: deterministic wire bytes and iteration order on both sides.
        .btree_map(".")
        .compile_fds(fds);
    if let Err(e) = generated {
        eprintln!("error: cannot generate Rust code from the protos in {PROTO_DIR}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
