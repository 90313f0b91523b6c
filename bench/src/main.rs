//! The `hearth-bench` binary: every bundled app, as `hearth` serves them, plus the bench app
//! (the protocol's routes, their seed table, the load clients, the floors and the soak).

/// mimalloc, as the `hearth` binary has it, so the measured server is the one that ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hearth::bundled::application()
        .app(hearth_bench::app())
        .main()
}
