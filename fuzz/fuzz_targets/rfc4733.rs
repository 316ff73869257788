//! RFC 4733: payload parse/print round trip, and an event receiver fed a fuzzed packet
//! sequence: never panics, every start is ended at most once, no deadline is left in the past,
//! one sequence number never makes a key however often it repeats, and a schedule always ends.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use media::rfc4733::{EventChange, EventPayload, EventReceiver, EventSchedule};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = EventPayload::parse(data) {
        let b = e.to_bytes();
        assert_eq!(b[0], data[0]);
        assert_eq!(b[1], data[1] & 0xbf, "R bit dropped, rest kept");
        assert_eq!(b[2..], data[2..4]);
        assert_eq!(EventPayload::parse(&b), Ok(e));
    }
    if let Ok(blocks) = EventPayload::parse_all(data, 12345) {
        assert_eq!(blocks.count(), data.len() / 4);
    }

    let Some((&clock_sel, rest)) = data.split_first() else {
        return;
    };
    let clock = [8000, 16000, 48000, 1][usize::from(clock_sel % 4)];
    let mut rx = EventReceiver::new(clock);
    let t0 = Instant::now();
    let mut now = t0;
    let mut ts = 0u32;
    let mut seq = 0u16;
    let mut distinct = 0u32;
    let mut held = false;
    // 8 bytes per packet: time step, timestamp step, flags, event block.
    for chunk in rest.chunks_exact(8) {
        now += Duration::from_millis(u64::from(chunk[0]));
        ts = match chunk[1] % 4 {
            0 => ts,
            1 => ts.wrapping_add(u32::from(chunk[1]) * 40),
            2 => ts.wrapping_sub(u32::from(chunk[1])),
            _ => u32::from_be_bytes([chunk[1], chunk[2], chunk[0], chunk[3]]),
        };
        let marker = chunk[2] & 1 != 0;
        let Ok(event) = EventPayload::parse(&chunk[4..]) else {
            continue;
        };
        // Bit 2 keeps the last sequence number (a repeated packet), else the next one.
        if chunk[2] & 4 == 0 || distinct == 0 {
            seq = seq.wrapping_add(1);
            distinct += 1;
        }
        let mut check = |c: EventChange| match c {
            EventChange::Started { .. } => {
                assert!(distinct >= 2, "a key from one packet");
                assert!(
                    !held,
                    "a start while another event is held must end it first"
                );
                held = true;
            }
            EventChange::Ended { .. } => {
                assert!(held, "an end without a start");
                held = false;
            }
            _ => {}
        };
        if chunk[2] & 2 != 0 {
            if let Some(d) = rx.deadline() {
                now = now.max(d);
            }
            rx.handle_timeout(now, &mut check);
            assert!(rx.deadline().is_none_or(|d| d > now));
        }
        rx.on_event(now, ts, seq, marker, event, &mut check);
        assert_eq!(held, rx.active().is_some());
    }
    rx.finish(now, |c| {
        if let EventChange::Ended { .. } = c {
            assert!(held);
            held = false;
        }
    });
    assert!(!held);

    if let [a, b, c, d, ..] = *data {
        let digit = dtmf::Digit::ALL[usize::from(a % 16)];
        let mut s = EventSchedule::new(
            digit,
            Duration::from_millis(u64::from(b) * 40),
            Duration::from_millis(u64::from(c)),
            clock,
            d,
        );
        let mut n = 0;
        while s.next_packet().is_some() {
            n += 1;
            assert!(n <= 70_000, "a schedule ends");
        }
    }
});
