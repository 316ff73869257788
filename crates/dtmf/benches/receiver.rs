//! Receiver throughput on one core.
//!
//! `cargo bench -p dtmf --bench receiver`. Criterion reports samples per second as
//! "elem/s"; divided by 8000 that is "× real time", the number of calls one core can decode
//! (target: ≥ 30,000×). Three inputs: noise (screening only), speech-like noise bursts, and
//! dense DTMF (every window goes through the strict three-window test).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dtmf::{Receiver, ToneSpec};

/// Ten seconds of white noise at about −20 dBm0, from a fixed seed.
fn noise() -> Vec<i16> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    (0..80_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 52) as i32 - 2048) as i16
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let inputs = [
        ("noise", noise()),
        (
            "dtmf",
            dtmf::generate(
                &"0123456789*#ABCD".repeat(6),
                &ToneSpec {
                    on_ms: 60,
                    off_ms: 40,
                    ..ToneSpec::default()
                },
            ),
        ),
    ];
    let mut group = c.benchmark_group("receiver");
    for (name, audio) in &inputs {
        group.throughput(Throughput::Elements(audio.len() as u64));
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut rx = Receiver::new();
                let mut events = 0usize;
                // 20 ms RTP packets, as a call delivers them.
                for packet in audio.chunks(160) {
                    rx.process(black_box(packet), |_| events += 1);
                }
                black_box(events)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
