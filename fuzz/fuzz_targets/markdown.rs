//! libFuzzer entry point of the `markdown` target; the body is `harness::markdown`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: hearth_fuzz::init(),
    |data: &[u8]| hearth_fuzz::harness::markdown(data)
);
