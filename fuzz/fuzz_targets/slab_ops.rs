#![no_main]
use libfuzzer_sys::fuzz_target;

// Placeholder until this target is written.
fuzz_target!(|_data: &[u8]| {});
