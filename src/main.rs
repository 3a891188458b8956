//! The `ironboot` binary: the whole command is [`ironboot::main`] in the library (so that
//! benchmarks can reach its modules), which composes configuration, logging and the
//! services.

fn main() -> std::process::ExitCode {
    ironboot::main()
}
