//! libFuzzer entry point of the `config` target; the body is `harness::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: hearth_fuzz::init(),
    |data: &[u8]| hearth_fuzz::harness::config(data)
);
