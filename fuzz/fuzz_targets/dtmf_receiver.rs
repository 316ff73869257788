//! Arbitrary audio, chunking and lost-packet gaps into the DTMF receiver: no panic, and the
//! events stay consistent (starts and ends alternate, positions never go backwards).
#![no_main]

use dtmf::{Event, Receiver};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rx = Receiver::new();
    let mut held = None;
    let mut last = 0u64;
    let mut check = |e: Event| {
        match e {
            Event::Start { digit, start, reported_at } => {
                assert!(held.is_none());
                assert!(start <= reported_at);
                held = Some((digit, start));
                last = last.max(reported_at);
            }
            Event::End { digit, start, end, reported_at } => {
                assert_eq!(held.take(), Some((digit, start)));
                assert!(start <= end && end <= reported_at);
                last = last.max(reported_at);
            }
        }
    };
    // Each record: a control byte (chunk length / gap) and samples.
    let mut rest = data;
    while let Some((&control, tail)) = rest.split_first() {
        if control & 0x80 != 0 {
            rx.fill_in(u64::from(control & 0x7f) * 8, &mut check);
            rest = tail;
            continue;
        }
        let n = (usize::from(control) * 2 + 2).min(tail.len() & !1);
        let samples: Vec<i16> = tail[..n].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
        rx.process(&samples, &mut check);
        rest = &tail[n..];
        if n == 0 {
            break;
        }
    }
    rx.finish(&mut check);
    assert!(rx.position() >= last || last == 0);
});
