//! libFuzzer entry point of the `chat_frame` target; the body is `harness::chat_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: hearth_fuzz::init(),
    |data: &[u8]| hearth_fuzz::harness::chat_frame(data)
);
