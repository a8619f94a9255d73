//! Any bytes as a pipeline file: a pipeline or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = weir_core::pipeline::parse(std::path::Path::new("fuzz.yaml"), text, &[]);
    }
});
