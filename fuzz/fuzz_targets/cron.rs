//! libFuzzer entry point of the `cron` target; the body is `harness::cron`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: hearth_fuzz::init(),
    |data: &[u8]| hearth_fuzz::harness::cron(data)
);
