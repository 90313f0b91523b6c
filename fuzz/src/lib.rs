//! The fuzz targets' bodies, as a library the `fuzz_targets/` binaries call. `harness.rs` is
//! also compiled into the API tests (`tests/api/parser_fuzz.rs`), so both run the same checks.
pub mod harness;

/// Puts back the standard panic hook in place of libfuzzer-sys's, which aborts on every panic,
/// even one the code under test catches: `documents::crdt` turns yrs panics on malformed
/// updates into errors, as the server needs. A panic that escapes a target still aborts the
/// run (libfuzzer-sys catches it), so it is reported as a crash with its message.
pub fn init() {
    drop(std::panic::take_hook());
}
