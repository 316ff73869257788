//! Arbitrary bytes as a capture file: whatever can be read plus a typed error, never a panic;
//! every stream found is replayed through the receive path and its audio decoded for a plot.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let capture = capture::read(data);
    if capture.format.is_none() {
        assert!(capture.error.is_some());
    }
    let base = Instant::now();
    for stream in &capture.streams {
        let _ = capture::replay::replay_stream(&capture, stream, base);
        let _ = capture::audio::decode(&capture, stream);
    }
});
