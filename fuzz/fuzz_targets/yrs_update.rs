//! libFuzzer entry point of the `yrs_update` target; the body is `harness::yrs_update`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: hearth_fuzz::init(),
    |data: &[u8]| hearth_fuzz::harness::yrs_update(data)
);
