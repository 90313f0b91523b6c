//! libFuzzer entry point of the `doc_frame` target; the body is `harness::doc_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: hearth_fuzz::init(),
    |data: &[u8]| hearth_fuzz::harness::doc_frame(data)
);
