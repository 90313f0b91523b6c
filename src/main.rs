//! The `hearth` binary: parse the command line and hand over to the library.

use clap::Parser;

/// mimalloc rather than glibc's malloc: see the note on the dependency in Cargo.toml. Only the
/// binary sets it; programs that use Hearth as a library choose their own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hearth::cli::run(hearth::cli::Cli::parse())
}
