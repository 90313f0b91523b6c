//! The `hearth` binary: the bundled apps on the platform, run by the library's command line.

/// mimalloc rather than glibc's malloc: see the note on the dependency in Cargo.toml. Only the
/// binary sets it; programs that use Hearth as a library choose their own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hearth::bundled::application().main()
}
