//! The receive path on a simulated clock: real senders' habits, latching, impairment.

mod common;

use std::time::{Duration, Instant};

use common::*;
use dtmf::Digit;
use media::rfc4733::EventPayload;
use media::rtp::PacketSpec;
use media::{Codec, DtmfMethod, ReceivePath};

fn pcmu_events() -> ReceivePath {
    ReceivePath::new(config(&[(0, Codec::Pcmu)], Some((101, 8000))))
}

#[test]
fn inband_digits_pcmu_and_pcma() {
    for (codec, pt) in [(Codec::Pcmu, 0), (Codec::Pcma, 8)] {
        let mut phone = Phone::new(codec, pt);
        phone.silence(200);
        for d in [
            Digit::D1,
            Digit::Pound,
            Digit::D0,
            Digit::Pound,
            Digit::Star,
        ] {
            phone.tone(d, 100);
            phone.silence(100);
        }
        let mut path = ReceivePath::new(config(&[(pt, codec)], None));
        let digits = run(&mut path, Instant::now(), &phone.packets());
        assert_eq!(keys(&digits), "1#0#*", "{codec:?}");
        assert!(digits.iter().all(|d| d.method == DtmfMethod::Inband));
        assert!(digits.iter().all(|d| d.ssrc == Some(phone.ssrc)));
        let st = path.stats().stream(phone.ssrc).unwrap();
        assert_eq!(st.lost, 0);
        assert_eq!(st.codec, Some(codec));
        assert_eq!(st.digits, 5);
    }
}

#[test]
fn reported_at_key_down_not_key_up() {
    let t0 = Instant::now();
    // RFC 4733: reported on the second packet (one packet alone is never a key).
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.silence(100);
    phone.event(Digit::Pound, 400, Style::Standard);
    let mut path = pcmu_events();
    let digits = run(&mut path, t0, &phone.packets());
    assert_eq!(digits.len(), 1);
    assert_eq!(digits[0].at, t0 + ms(120));
    assert_eq!(digits[0].duration, None);
    // The sender's duration field in that packet is the sender's share of the latency.
    assert!(
        digits[0].latency.is_some_and(|l| l <= ms(40)),
        "{:?}",
        digits[0].latency
    );
    // In-band: within 40 ms of the tone's start, long before its end.
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.silence(100);
    phone.tone(Digit::Pound, 400);
    phone.silence(100);
    let mut path = pcmu_events();
    let digits = run(&mut path, t0, &phone.packets());
    assert_eq!(digits.len(), 1);
    let latency = digits[0].at - (t0 + ms(100));
    assert!(latency <= ms(40), "{latency:?}");
    // The receiver's own measure (tone onset to decision, in samples) agrees to a packet.
    let measured = digits[0]
        .latency
        .expect("in-band reports carry their latency");
    assert!(
        measured <= ms(35) && latency.abs_diff(measured) <= ms(20),
        "{measured:?} vs {latency:?}"
    );
}

#[test]
fn asterisk_event_then_inband_tail_counts_once() {
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.silence(500);
    for d in [Digit::D2, Digit::D0, Digit::D1, Digit::D3, Digit::D2] {
        phone.event(d, 200, Style::AsteriskTail);
        phone.silence(400);
    }
    let mut path = pcmu_events();
    let digits = run(&mut path, Instant::now(), &phone.packets());
    assert_eq!(keys(&digits), "20132");
    assert!(digits.iter().all(|d| d.method == DtmfMethod::Rfc4733));
}

#[test]
fn cisco_marker_on_every_packet_counts_once() {
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.silence(200);
    for d in [Digit::D6, Digit::D6, Digit::D8, Digit::D8, Digit::Pound] {
        phone.event(d, 100, Style::CiscoMarkers);
        phone.silence(300);
    }
    let mut path = pcmu_events();
    let digits = run(&mut path, Instant::now(), &phone.packets());
    assert_eq!(keys(&digits), "6688#");
    let st = path.stats().stream(phone.ssrc).unwrap();
    assert_eq!(st.event_end_repeats, 10);
    assert_eq!(st.duplicates, 0);
}

#[test]
fn sipp_triple_end_with_same_sequence_counts_once() {
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.send_audio = false;
    phone.event(Digit::Pound, 280, Style::SippSameSeq);
    let mut path = pcmu_events();
    let digits = run(&mut path, Instant::now(), &phone.packets());
    assert_eq!(keys(&digits), "#");
    let st = path.stats().stream(phone.ssrc).unwrap();
    assert_eq!(st.event_end_repeats, 2);
    assert_eq!(st.duplicates, 0);
    assert_eq!(st.lost, 0);
}

#[test]
fn events_on_a_second_ssrc_beside_audio() {
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.event_ssrc = Some((0x0e05_384e, 8436, 13280));
    phone.silence(200);
    for d in [Digit::D1, Digit::D2, Digit::D3] {
        phone.event(d, 120, Style::SippSameSeq);
        phone.silence(200);
    }
    // A capture keeps every SSRC.
    let mut cfg = config(&[(0, Codec::Pcmu)], Some((101, 8000)));
    cfg.source = None;
    let mut path = ReceivePath::new(cfg);
    let digits = run(&mut path, Instant::now(), &phone.packets());
    assert_eq!(keys(&digits), "123");
    assert!(digits.iter().all(|d| d.ssrc == Some(0x0e05_384e)));
    assert_eq!(path.stats().streams.len(), 2);
    // A live call listens to the SSRC it pinned: a second one while the first is alive
    // never keys (it is what a stranger spoofing the callee's address would send).
    let mut path = pcmu_events();
    let digits = run(&mut path, Instant::now(), &phone.packets());
    assert_eq!(keys(&digits), "");
    let st = path.stats();
    assert_eq!(st.streams.len(), 1);
    assert_eq!(st.streams[0].ssrc, phone.ssrc);
    assert!(st.dropped_ssrc > 0);
    assert_eq!(st.ssrc_changes, 0);
}

#[test]
fn a_second_ssrc_after_the_first_went_quiet_takes_over() {
    // sipp: in-band audio on its own SSRC, then 300 ms later an RFC 4733 pcap on another.
    let t0 = Instant::now();
    let mut audio = Phone::new(Codec::Pcmu, 0);
    audio.silence(1000);
    let mut pcap = Phone::new(Codec::Pcmu, 0);
    pcap.ssrc = 0x0e05_384e;
    pcap.send_audio = false;
    pcap.t = audio.t + ms(300);
    pcap.event(Digit::Pound, 280, Style::SippSameSeq);
    let mut packets = audio.packets();
    packets.extend(pcap.packets());
    let mut path = pcmu_events();
    let digits = run(&mut path, t0, &packets);
    assert_eq!(keys(&digits), "#");
    assert_eq!(digits[0].ssrc, Some(0x0e05_384e));
    assert_eq!(path.stats().ssrc_changes, 1);
    assert_eq!(path.stats().dropped_ssrc, 0);
    // While the first stream flows, the newcomer is dropped, whenever it comes.
    let mut alive = Phone::new(Codec::Pcmu, 0);
    alive.silence(3000);
    let mut pcap = Phone::new(Codec::Pcmu, 0);
    pcap.ssrc = 0x0e05_384e;
    pcap.send_audio = false;
    pcap.t = ms(1300);
    pcap.event(Digit::Pound, 280, Style::SippSameSeq);
    let mut packets = alive.packets();
    packets.extend(pcap.packets());
    packets.sort_by_key(|p| p.at);
    let mut path = pcmu_events();
    assert_eq!(keys(&run(&mut path, t0, &packets)), "");
    assert!(path.stats().dropped_ssrc > 0);
    assert_eq!(path.stats().ssrc_changes, 0);
}

#[test]
fn events_with_no_audio_at_all() {
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.send_audio = false;
    for d in [Digit::D1, Digit::D2, Digit::D3, Digit::D4] {
        phone.event(d, 160, Style::Standard);
        phone.t += ms(800);
        phone.ts = phone.ts.wrapping_add(6400);
    }
    let mut path = pcmu_events();
    let digits = run(&mut path, Instant::now(), &phone.packets());
    assert_eq!(keys(&digits), "1234");
}

#[test]
fn event_without_end_packet_is_reported_and_times_out() {
    let t0 = Instant::now();
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.send_audio = false;
    phone.event(Digit::D1, 140, Style::NoEnd);
    let packets = phone.packets();
    let mut path = pcmu_events();
    for p in &packets {
        path.handle_rtp(t0 + p.at, addr(PHONE), &p.bytes);
    }
    // Reported on its first packet, without waiting for an end.
    assert_eq!(path.poll_digit().map(|d| d.digit), Some(Digit::D1));
    let last = t0 + packets.last().unwrap().at;
    assert_eq!(
        path.poll_timeout(),
        Some(last + media::rfc4733::EVENT_TIMEOUT)
    );
    path.handle_timeout(last + media::rfc4733::EVENT_TIMEOUT);
    assert_eq!(path.poll_timeout(), None);
    // The same key again afterwards is a new press.
    let mut again = Phone::new(Codec::Pcmu, 0);
    again.send_audio = false;
    again.seq = phone.seq;
    again.ts = phone.ts.wrapping_add(8000);
    again.event(Digit::D1, 100, Style::Standard);
    let later = last + ms(2000);
    for p in again.packets() {
        path.handle_rtp(later + p.at, addr(PHONE), &p.bytes);
    }
    assert_eq!(path.poll_digit().map(|d| d.digit), Some(Digit::D1));
    assert_eq!(path.poll_digit(), None);
}

#[test]
fn event_clock_48k() {
    let mut phone = Phone::new(Codec::Opus, 96);
    phone.event_clock = 48_000;
    phone.send_audio = false;
    for d in [Digit::D3, Digit::D1, Digit::D2] {
        phone.event(d, 80, Style::Standard);
        phone.t += ms(500);
        phone.ts = phone.ts.wrapping_add(48_000);
    }
    let mut path = ReceivePath::new(config(&[(96, Codec::Opus)], Some((101, 48_000))));
    let digits = run(&mut path, Instant::now(), &phone.packets());
    assert_eq!(keys(&digits), "312");
}

#[test]
fn undecodable_audio_is_counted_and_events_still_work() {
    // Opus-like audio (random bytes) on PT 96, events on 101.
    let mut packets = Vec::new();
    let mut seq = 100u16;
    for i in 0..50u32 {
        let payload = [0x5a; 120];
        let bytes = PacketSpec {
            payload_type: 96,
            sequence: seq,
            timestamp: i * 960,
            ssrc: 7,
            payload: &payload,
            ..PacketSpec::default()
        }
        .to_vec()
        .unwrap();
        packets.push(Timed {
            at: ms(u64::from(i) * 20),
            bytes,
        });
        seq = seq.wrapping_add(1);
        if i == 20 {
            for k in 0..4u16 {
                let e = EventPayload {
                    event: 5,
                    end: k == 3,
                    volume: 10,
                    duration: 960 * (k + 1),
                };
                let bytes = PacketSpec {
                    marker: k == 0,
                    payload_type: 101,
                    sequence: seq,
                    timestamp: i * 960,
                    ssrc: 7,
                    payload: &e.to_bytes(),
                    ..PacketSpec::default()
                }
                .to_vec()
                .unwrap();
                packets.push(Timed {
                    at: ms(u64::from(i) * 20 + u64::from(k) * 5 + 1),
                    bytes,
                });
                seq = seq.wrapping_add(1);
            }
        }
    }
    packets.sort_by_key(|p| p.at);
    let mut path = ReceivePath::new(config(&[(96, Codec::Opus)], Some((101, 48_000))));
    let digits = run(&mut path, Instant::now(), &packets);
    assert_eq!(keys(&digits), "5");
    let st = path.stats().stream(7).unwrap();
    assert_eq!(st.undecoded, 50);
    assert_eq!(st.codec, Some(Codec::Opus));
    assert_eq!(st.lost, 0);
}

#[test]
fn payload_type_not_negotiated_is_ignored() {
    // Events sent on PT 100 when SDP said 102 (the fax capture), and tones on PT 8 when only
    // PCMU was negotiated.
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.event_pt = 100;
    phone.silence(100);
    phone.event(Digit::D1, 100, Style::Standard);
    let mut pcma = Phone::new(Codec::Pcma, 8);
    pcma.tone(Digit::D2, 200);
    let mut path = ReceivePath::new(config(&[(0, Codec::Pcmu)], Some((102, 8000))));
    let mut packets = phone.packets();
    packets.extend(pcma.packets().into_iter().map(|mut p| {
        p.at += ms(1000);
        p.bytes[8] ^= 0xff; // another SSRC
        p
    }));
    let digits = run(&mut path, Instant::now(), &packets);
    assert_eq!(keys(&digits), "");
    let st = &path.stats().streams;
    assert_eq!(st[0].dropped_payload_type, 7);
    assert_eq!(st[1].dropped_payload_type, 10);
    assert_eq!(st[0].payload_types, [(0, 10), (100, 7)]);
}

#[test]
fn non_dtmf_events_are_ignored() {
    // Fax answer tone (event 32), no end, and NSE 194 with ends, on the negotiated PT.
    let mut packets = Vec::new();
    for (i, (event, end)) in [(32u8, false), (194, true), (194, true)].iter().enumerate() {
        let e = EventPayload {
            event: *event,
            end: *end,
            volume: 10,
            duration: 883,
        };
        packets.push(Timed {
            at: ms(i as u64 * 20),
            bytes: PacketSpec {
                marker: true,
                payload_type: 102,
                sequence: i as u16,
                timestamp: 1000 * i as u32,
                ssrc: 1,
                payload: &e.to_bytes(),
                ..PacketSpec::default()
            }
            .to_vec()
            .unwrap(),
        });
    }
    let mut path = ReceivePath::new(config(&[(8, Codec::Pcma)], Some((102, 8000))));
    assert_eq!(keys(&run(&mut path, Instant::now(), &packets)), "");
    assert_eq!(path.stats().streams[0].ignored_events, 3);
}

#[test]
fn packets_from_another_source_are_dropped_and_counted() {
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.tone(Digit::Pound, 200);
    phone.event(Digit::Pound, 100, Style::Standard);
    let packets = phone.packets();
    let mut path = pcmu_events();
    let digits = run_from(&mut path, Instant::now(), &packets, addr(OTHER));
    assert!(digits.is_empty());
    assert_eq!(path.stats().dropped_source, packets.len() as u64);
    assert!(path.stats().streams.is_empty());
    // With no latch (a capture), the same packets are accepted.
    let mut cfg = config(&[(0, Codec::Pcmu)], Some((101, 8000)));
    cfg.source = None;
    let mut path = ReceivePath::new(cfg);
    assert_eq!(
        keys(&run_from(&mut path, Instant::now(), &packets, addr(OTHER))),
        "#"
    );
}

#[test]
fn malformed_and_rtcp_are_counted() {
    let mut path = pcmu_events();
    let t0 = Instant::now();
    for bytes in [
        &b"\x00\x01\x00\x00"[..],
        // An RTCP SR whose length runs past the datagram.
        &[0x80, 0xc8, 0, 6, 0, 0, 0, 1],
        &[0x40; 20],
        &[0x8f; 20],
        // A receiver report with no blocks (RFC 5761 multiplexing).
        &[0x80, 0xc9, 0, 1, 0, 0, 0, 1],
    ] {
        path.handle_rtp(t0, addr(PHONE), bytes);
    }
    assert_eq!(path.stats().malformed, 4);
    assert_eq!(path.stats().rtcp, 1);
}

#[test]
fn genuine_repeats_40_ms_apart_count_twice() {
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.silence(100);
    phone.tone(Digit::D5, 60);
    phone.silence(40);
    phone.tone(Digit::D5, 60);
    phone.silence(200);
    phone.event(Digit::D7, 60, Style::Standard);
    phone.silence(40);
    phone.event(Digit::D7, 60, Style::Standard);
    phone.silence(200);
    let mut path = pcmu_events();
    let digits = run(&mut path, Instant::now(), &phone.packets());
    assert_eq!(keys(&digits), "5577");
}

#[test]
fn same_press_by_three_methods_counts_once() {
    let t0 = Instant::now();
    // A gateway that sends events, leaves the tone in the audio, and also sends SIP INFO.
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.event_ssrc = Some((99, 1, 1));
    phone.silence(100);
    let start = phone.t;
    phone.event(Digit::D9, 120, Style::Standard);
    let mut tones = Phone::new(Codec::Pcmu, 0);
    tones.silence(100);
    tones.tone(Digit::D9, 120);
    tones.silence(300);
    let mut packets: Vec<Timed> = phone
        .out
        .iter()
        .filter(|p| p.bytes[1] & 0x7f == 101)
        .cloned()
        .collect();
    packets.extend(tones.packets());
    packets.sort_by_key(|p| p.at);
    // Events and audio on two SSRCs in parallel: a capture's rule (a live call would listen
    // to one of them only).
    let mut cfg = config(&[(0, Codec::Pcmu)], Some((101, 8000)));
    cfg.source = None;
    let mut path = ReceivePath::new(cfg);
    let mut digits = run(&mut path, t0, &packets);
    path.handle_sip_info(t0 + start + ms(80), Digit::D9, Some(ms(120)));
    digits.extend(std::iter::from_fn(|| path.poll_digit()));
    assert_eq!(keys(&digits), "9");
    assert_eq!(digits[0].method, DtmfMethod::Rfc4733);
    // And SIP INFO alone.
    let mut path = pcmu_events();
    path.handle_sip_info(t0, Digit::Pound, Some(ms(180)));
    path.handle_sip_info(t0 + ms(40), Digit::Pound, None);
    let d: Vec<_> = std::iter::from_fn(|| path.poll_digit()).collect();
    assert_eq!(methods(&d), [DtmfMethod::SipInfo, DtmfMethod::SipInfo]);
    assert_eq!(d[0].duration, Some(ms(180)));
}

#[test]
fn sequence_and_timestamp_wrap_mid_digit() {
    // Phone::new starts 35 packets before the sequence wrap and 4000 samples before the
    // timestamp wrap: both wrap inside the tone.
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.seq = 65_530;
    phone.silence(100);
    phone.tone(Digit::D8, 300);
    phone.silence(100);
    let mut path = pcmu_events();
    let digits = run(&mut path, Instant::now(), &phone.packets());
    assert_eq!(keys(&digits), "8");
    let st = path.stats().stream(phone.ssrc).unwrap();
    assert_eq!(st.lost, 0);
    assert_eq!(st.reordered, 0);
    assert_eq!(st.extended_max_seq, 65_530 + 25 - 1);
}

#[test]
fn reorder_within_window_is_repaired_and_counted() {
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.silence(100);
    phone.tone(Digit::D4, 200);
    phone.silence(100);
    let mut packets = phone.packets();
    // Swap packets 6 and 7 (inside the tone), and duplicate packet 8.
    packets[6].at += ms(30);
    let dup = Timed {
        at: packets[8].at + ms(5),
        bytes: packets[8].bytes.clone(),
    };
    packets.push(dup);
    packets.sort_by_key(|p| p.at);
    let mut path = pcmu_events();
    let digits = run(&mut path, Instant::now(), &packets);
    assert_eq!(keys(&digits), "4");
    let st = path.stats().stream(phone.ssrc).unwrap();
    assert_eq!(st.reordered, 1);
    assert_eq!(st.duplicates, 1);
    assert_eq!(st.lost, 0);
    assert_eq!(st.late, 0);
}

#[test]
fn jitter_reported_in_ms() {
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.silence(2000);
    let mut packets = phone.packets();
    for (i, p) in packets.iter_mut().enumerate() {
        if i % 2 == 1 {
            p.at += ms(10);
        }
    }
    let mut path = pcmu_events();
    run(&mut path, Instant::now(), &packets);
    let st = path.stats().stream(phone.ssrc).unwrap();
    assert!((8.0..=10.0).contains(&st.jitter_ms), "{}", st.jitter_ms);
}

/// Builds a call's worth of key presses for the impairment tests.
fn pressed(seed: u64, inband: bool) -> (Phone, String) {
    let mut rng = media::rng::SplitMix64::new(seed);
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.ssrc = rng.next_u64() as u32;
    phone.seq = rng.next_u64() as u16;
    phone.ts = rng.next_u64() as u32;
    phone.silence(200);
    let mut expected = String::new();
    for _ in 0..8 {
        let d = Digit::ALL[rng.below(16) as usize];
        expected.push(d.as_char());
        let on = 100 + 20 * rng.below(6) as u32;
        if inband {
            phone.tone(d, on);
        } else {
            let style =
                [Style::Standard, Style::CiscoMarkers, Style::SippSameSeq][rng.below(3) as usize];
            phone.event(d, on, style);
        }
        phone.silence(100 + 20 * rng.below(6) as u32);
    }
    (phone, expected)
}

/// Loss (at most one in five packets: a 100 ms tone keeps a 40 ms piece), duplication, and reordering within
/// the 60 ms window never split, double or lose a digit.
#[test]
fn impairment_never_splits_or_doubles_a_digit() {
    let imp = Impairment {
        loss: 0.05,
        duplicate: 0.05,
        reorder: 0.2,
        max_delay: ms(40),
        loss_spacing: 4,
        max_burst: 1,
    };
    for seed in 0..1000 {
        for inband in [true, false] {
            let (phone, expected) = pressed(seed, inband);
            let packets = impair(&phone.packets(), seed ^ 0xabcdef, imp);
            let mut path = pcmu_events();
            let digits = run(&mut path, Instant::now(), &packets);
            assert_eq!(
                keys(&digits),
                expected,
                "seed {seed}, inband {inband}: {:?}",
                path.stats()
            );
        }
    }
}

/// Heavier impairment, still within the receiver's limits (no gap over 60 ms: at most two
/// packets lost in a row, reordering within the window): digits may be lost, never doubled.
#[test]
fn heavy_impairment_never_doubles() {
    let imp = Impairment {
        loss: 0.2,
        duplicate: 0.2,
        reorder: 0.5,
        max_delay: ms(50),
        loss_spacing: 0,
        max_burst: 2,
    };
    for seed in 0..1000 {
        for inband in [true, false] {
            let (phone, expected) = pressed(seed, inband);
            let packets = impair(&phone.packets(), seed, imp);
            let mut path = pcmu_events();
            let got = keys(&run(&mut path, Instant::now(), &packets));
            // Every reported digit appears in order in the expected ones: a subsequence.
            let mut it = expected.chars();
            assert!(
                got.chars().all(|c| it.any(|e| e == c)),
                "seed {seed}, inband {inband}: got {got}, expected {expected}"
            );
        }
    }
}

#[test]
fn timers_are_optional_for_replays() {
    // A capture replayed without handle_timeout calls: handle_rtp runs due timers itself and
    // finish() flushes.
    let t0 = Instant::now();
    let (phone, expected) = pressed(7, true);
    let packets = impair(
        &phone.packets(),
        7,
        Impairment {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.3,
            max_delay: ms(30),
            loss_spacing: 4,
            max_burst: 1,
        },
    );
    let mut path = pcmu_events();
    let mut digits = Vec::new();
    for p in &packets {
        path.handle_rtp(t0 + p.at, addr(PHONE), &p.bytes);
        digits.extend(std::iter::from_fn(|| path.poll_digit()));
    }
    path.finish(t0 + packets.last().unwrap().at + Duration::from_secs(1));
    digits.extend(std::iter::from_fn(|| path.poll_digit()));
    assert_eq!(keys(&digits), expected);
}
