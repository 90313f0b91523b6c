//! The `hearth` binary: the bundled apps on the platform, run by the library's command line.

/// mimalloc rather than glibc's malloc: see the note on the dependency in Cargo.toml. Only the
/// binary sets it; programs that use Hearth as a library choose their own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    hearth::bundled::application().main()
}

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` says
/// otherwise. mimalloc asked for huge pages on its 1 GiB arena (`madvise`), and a 2 MiB page is
/// resident whole once one byte of it is touched: an idle server had 14 of its 17 MiB of
/// anonymous memory in seven such pages while using under 3 MiB of them (#36). The `no_thp`
/// feature (Cargo.toml) stops mimalloc asking; this covers hosts whose kernel gives huge pages
/// without being asked (`transparent_hugepage=always`), as mimalloc's `MIMALLOC_ALLOW_THP=0`
/// does. The flag is inherited by child processes (an embedded PostgreSQL, whose shared memory
/// is not subject to it).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        let _ = nix::sys::prctl::set_thp_disable(true);
    }
}
