//! libFuzzer entry point of the `csv_import` target; the body is `harness::csv_import`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: hearth_fuzz::init(),
    |data: &[u8]| hearth_fuzz::harness::csv_import(data)
);
