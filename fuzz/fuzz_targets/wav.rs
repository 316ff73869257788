//! Arbitrary bytes as a WAV file: a typed error or audio, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(samples) = media::wav::decode(data) {
        assert!(!samples.is_empty());
    }
});
