//! A live call's steady state allocates nothing per packet (issue 9: "no allocation per RTP
//! packet"): the session receives the callee's stream, runs the detector, paces a prompt,
//! and hands its packets out through a recycled buffer. A counting global
//! allocator measures this thread only, so the test harness's own threads do not count.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use common::*;
use media::{Codec, Prompt, Session, SessionConfig};

struct Counting;

thread_local! {
    /// Allocations made by this thread while counting is on (`None`: off).
    static COUNT: Cell<Option<u64>> = const { Cell::new(None) };
}

fn note() {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = COUNT.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
        }
    });
}

// SAFETY: every call goes straight to `System`; counting touches a const-initialised
// thread-local `Cell` only, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns how many allocations this thread made meanwhile.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(Some(0)));
    f();
    COUNT.with(|c| c.replace(None)).unwrap_or(0)
}

#[test]
fn receiving_detecting_and_sending_allocate_nothing_per_packet() {
    let t0 = Instant::now();
    let mut s = Session::new(
        t0,
        SessionConfig {
            remote: addr(PHONE),
            codec: Codec::Pcmu,
            audio_pt: 0,
            telephone_event_pt: Some(101),
            seed: [7; 32],
            srtp: None,
        },
    );
    // A 12 s prompt (a 400 Hz tone, no DTMF pair): its start and end report events, which
    // name it (an allocation per prompt, not per packet), outside the window counted.
    let samples: Vec<i16> = (0..96_000)
        .map(|i| (8000.0 * (f64::from(i) * 400.0 * std::f64::consts::TAU / 8000.0).sin()) as i16)
        .collect();
    s.play(t0, Arc::new(Prompt::from_samples("greeting", &samples)));
    // The callee's 20 ms stream: speech-like noise from the phone, no key.
    let mut phone = Phone::new(Codec::Pcmu, 0);
    let mut x: u32 = 1;
    let noise: Vec<i16> = (0..8 * 12_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            ((x >> 16) as i16) / 8
        })
        .collect();
    phone.audio(&noise);
    let incoming = phone.packets();

    let mut packet = Vec::new();
    let mut sent = 0usize;
    let mut step = |i: usize, packet: &mut Vec<u8>, sent: &mut usize| {
        let p = &incoming[i];
        let now = t0 + p.at;
        s.handle_datagram(now, addr(PHONE), &p.bytes);
        while let Some(t) = s.poll_timeout().filter(|t| *t <= now) {
            s.handle_timeout(t);
        }
        while let Some(to) = s.poll_transmit_into(packet) {
            assert_eq!(to, addr(PHONE));
            assert!(packet.len() >= 12 + 160, "an RTP header and 20 ms of PCMU");
            *sent += 1;
        }
        while s.poll_event().is_some() {}
    };
    // Warm-up: the detector's windows, the jitter buffer and the packet buffers fill.
    for i in 0..100 {
        step(i, &mut packet, &mut sent);
    }
    let before = sent;
    // 8 s of a live call in the middle of the prompt: 400 packets each way.
    let n = allocations(|| {
        for i in 100..500 {
            step(i, &mut packet, &mut sent);
        }
    });
    assert!(
        sent - before >= 395,
        "the session kept sending: {}",
        sent - before
    );
    assert_eq!(n, 0, "allocations in 400 packets each way");
}
