//! libFuzzer entry point of the `names` target; the body is `harness::names`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: hearth_fuzz::init(),
    |data: &[u8]| hearth_fuzz::harness::names(data)
);
