#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| btx_fuzz::hf_config(data));
