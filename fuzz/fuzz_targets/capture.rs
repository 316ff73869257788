//! Arbitrary bytes as a capture file: whatever can be read plus a typed error, never a panic;
//! every stream found is replayed through the receive path (with its audio laid out for a
//! plot), and reading the bytes in two pieces finds exactly what reading them whole does.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let capture = capture::read(data);
    if capture.format.is_none() {
        assert!(capture.error.is_some());
    }
    let split = data.first().map_or(0, |b| usize::from(*b) * 7 % (data.len() + 1));
    let mut scanner = capture::Scanner::new();
    scanner.push(&data[..split]);
    scanner.push(&data[split..]);
    let pieces = scanner.finish();
    assert_eq!(pieces.streams.len(), capture.streams.len());
    assert_eq!(pieces.error, capture.error);
    assert_eq!(pieces.counts, capture.counts);

    let base = Instant::now();
    let mut layouts: Vec<_> = capture.streams.iter().map(capture::audio::Layout::new).collect();
    let mut replay = capture::replay::Replay::new(&capture, base);
    replay.push_observed(data, |i, d, h| {
        if let Some(Some(layout)) = layouts.get_mut(i) {
            layout.packet(d.at_ns, &d.payload, h, |_| {});
        }
    });
    let replays = replay.finish();
    assert_eq!(replays.len(), capture.streams.len());
    for layout in layouts.iter_mut().flatten() {
        layout.finish(|_| {});
    }
});
