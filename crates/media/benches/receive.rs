//! The cost of one call's media: the whole receive path per RTP packet (parse, latch, sequence
//! and jitter bookkeeping, reorder buffer, G.711 decode, Goertzel receiver, RFC 4733 receiver,
//! merge), and the send side per 20 ms packet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dtmf::{Digit, ToneSpec};
use media::rfc4733::EventPayload;
use media::rng::SplitMix64;
use media::rtp::PacketSpec;
use media::{Codec, Prompt, ReceiveConfig, ReceivePath, Session, SessionConfig, g711};

const SECONDS: usize = 20;

/// 20 s of a caller: noise-like "speech", in-band key presses, and RFC 4733 events on the
/// same SSRC, as (arrival offset, datagram).
fn call() -> Vec<(Duration, Vec<u8>)> {
    let mut rng = SplitMix64::new(42);
    let mut audio: Vec<i16> = (0..SECONDS * 8000)
        .map(|_| (rng.below(4000) as i16) - 2000)
        .collect();
    // A key every second, 120 ms, in-band.
    for (i, d) in Digit::ALL.iter().cycle().take(SECONDS).enumerate() {
        let tone = dtmf::generate_digits(
            &[*d],
            &ToneSpec {
                on_ms: 120,
                off_ms: 0,
                ..ToneSpec::default()
            },
        );
        let at = i * 8000 + 4000;
        for (k, s) in tone.iter().enumerate() {
            if let Some(x) = audio.get_mut(at + k) {
                *x = *s;
            }
        }
    }
    let mut out = Vec::new();
    let mut seq = 1000u16;
    for (n, chunk) in audio.chunks(160).enumerate() {
        let payload: Vec<u8> = chunk.iter().map(|&s| g711::linear_to_ulaw(s)).collect();
        let at = Duration::from_millis(20 * n as u64);
        out.push((
            at,
            PacketSpec {
                payload_type: 0,
                sequence: seq,
                timestamp: 160 * n as u32,
                ssrc: 7,
                payload: &payload,
                ..PacketSpec::default()
            }
            .to_vec()
            .unwrap(),
        ));
        seq = seq.wrapping_add(1);
        // An RFC 4733 key press every second too (6 packets + 2 repeated ends), interleaved.
        let slot = n % 50;
        if (10..18).contains(&slot) {
            let k = (slot - 10).min(5) as u16;
            let e = EventPayload {
                event: (n / 50 % 16) as u8,
                end: slot >= 15,
                volume: 10,
                duration: 160 * (k + 1),
            };
            out.push((
                at + Duration::from_micros(500),
                PacketSpec {
                    marker: slot == 10,
                    payload_type: 101,
                    sequence: seq,
                    timestamp: 160 * (n - slot + 10) as u32,
                    ssrc: 7,
                    payload: &e.to_bytes(),
                    ..PacketSpec::default()
                }
                .to_vec()
                .unwrap(),
            ));
            seq = seq.wrapping_add(1);
        }
    }
    out
}

fn receive(c: &mut Criterion) {
    let packets = call();
    let source: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let mut group = c.benchmark_group("receive_path");
    group.throughput(Throughput::Elements(packets.len() as u64));
    group.bench_function("per_packet", |b| {
        b.iter(|| {
            let t0 = Instant::now();
            let mut path = ReceivePath::new(ReceiveConfig {
                audio: vec![(0, Codec::Pcmu), (8, Codec::Pcma)],
                telephone_event: Some((101, 8000)),
                source: Some(source),
                reorder_window: Duration::from_millis(60),
            });
            let mut digits = 0;
            for (at, bytes) in &packets {
                path.handle_rtp(t0 + *at, source, bytes);
                while path.poll_digit().is_some() {
                    digits += 1;
                }
            }
            assert!(digits >= SECONDS, "{digits}");
            digits
        })
    });
    group.finish();
}

fn send(c: &mut Criterion) {
    let samples: Vec<i16> = (0..8000 * SECONDS).map(|i| (i % 200) as i16 * 50).collect();
    let prompt = Arc::new(Prompt::from_samples("bench", &samples));
    let slots = SECONDS * 50;
    let mut group = c.benchmark_group("session_send");
    group.throughput(Throughput::Elements(slots as u64));
    group.bench_function("per_packet", |b| {
        b.iter(|| {
            let t0 = Instant::now();
            let mut s = Session::new(
                t0,
                SessionConfig {
                    remote: "192.0.2.1:4000".parse().unwrap(),
                    codec: Codec::Pcmu,
                    audio_pt: 0,
                    telephone_event_pt: Some(101),
                    seed: [1; 32],
                    srtp: None,
                },
            );
            s.play(t0, prompt.clone());
            let mut sent = 0;
            for _ in 0..slots {
                let Some(t) = s.poll_timeout() else { break };
                s.handle_timeout(t);
                while s.poll_transmit().is_some() {
                    sent += 1;
                }
            }
            sent
        })
    });
    group.finish();
}

criterion_group!(benches, receive, send);
criterion_main!(benches);
