//! Compiles the .proto files under `proto/` with protox (pure Rust, no `protoc`) and
//! generates prost messages, the tonic client of the COSI State service and the tonic
//! server of the grpctunnel service (the metal agent's reverse tunnel).

use std::io;

/// Messages that carry secrets (BMC passwords, the CA key, the join token): their
/// `Debug` is written by hand in lib.rs so the secrets never reach a log line.
const SECRET_MESSAGES: [&str; 5] = [
    ".baremetalproviderspecs.BMCConfigurationSpec.IPMI",
    ".baremetalproviderspecs.TLSConfigSpec",
    ".specs.InfraMachineBMCConfigSpec.IPMI",
    ".specs.ProviderJoinConfigSpec",
    ".specs.ConnectionParamsSpec",
];

fn main() -> io::Result<()> {
    let files = [
        "proto/cosi/resource.proto",
        "proto/cosi/state.proto",
        "proto/omni/specs.proto",
        "proto/baremetal/specs.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"]).map_err(io::Error::other)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .build_transport(false)
        .skip_debug(SECRET_MESSAGES)
        .compile_fds(fds)?;

    // The metal agent: the grpctunnel service (served by ironboot, so a server) and the
    // agent's messages (called over the tunnel by hand, so neither client nor server).
    let agent_files = [
        "proto/google/rpc/status.proto",
        "proto/grpctunnel/v1/tunnel.proto",
        "proto/agent/agent.proto",
    ];
    for f in &agent_files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(agent_files, ["proto"]).map_err(io::Error::other)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .build_transport(false)
        .skip_debug([".management.SetPowerManagementRequest.IPMI"])
        .compile_fds(fds)
}
