//! The session on a simulated clock: pacing, stalls, prompts, dialling, two peers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use media::rfc4733::EventPayload;
use media::rtp::RtpPacket;
use media::{
    Codec, DialMethod, DtmfMethod, MediaEvent, Prompt, ReceivePath, Session, SessionConfig,
};

const US: &str = "203.0.113.5:30000";

/// A fixed 32-byte generator seed from a test number.
fn seed32(n: u64) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    seed
}

fn session(t0: Instant, codec: Codec, event_pt: Option<u8>, seed: u64) -> Session {
    Session::new(
        t0,
        SessionConfig {
            remote: addr(PHONE),
            codec,
            audio_pt: if codec == Codec::Pcma { 8 } else { 0 },
            telephone_event_pt: event_pt,
            seed: seed32(seed),
            srtp: None,
        },
    )
}

/// A packet sent and when.
#[derive(Clone, Debug)]
struct Sent {
    at: Instant,
    bytes: Vec<u8>,
}

impl Sent {
    fn rtp(&self) -> RtpPacket<'_> {
        RtpPacket::parse(&self.bytes).expect("we send valid RTP")
    }
}

/// Drives a session exactly on its timers until `until`, collecting packets and events.
fn drive(s: &mut Session, until: Instant, sent: &mut Vec<Sent>, events: &mut Vec<MediaEvent>) {
    while let Some(t) = s.poll_timeout().filter(|t| *t <= until) {
        s.handle_timeout(t);
        while let Some(tx) = s.poll_transmit() {
            assert_eq!(tx.destination, addr(PHONE));
            sent.push(Sent {
                at: t,
                bytes: tx.payload,
            });
        }
        events.extend(std::iter::from_fn(|| s.poll_event()));
    }
}

fn tone_prompt(name: &str, ms_len: usize) -> Arc<Prompt> {
    // A 400 Hz tone: not a DTMF pair.
    let samples: Vec<i16> = (0..ms_len * 8)
        .map(|i| (8000.0 * (i as f64 * 400.0 * std::f64::consts::TAU / 8000.0).sin()) as i16)
        .collect();
    Arc::new(Prompt::from_samples(name, &samples))
}

#[test]
fn ten_minutes_of_pacing_without_drift() {
    let t0 = Instant::now();
    let mut s = session(t0, Codec::Pcmu, Some(101), 1);
    let prompt = tone_prompt("greeting", 3130);
    let mut sent = Vec::new();
    let mut events = Vec::new();
    let mut t = t0;
    // A prompt every 7 s, silence between.
    while t < t0 + Duration::from_secs(600) {
        s.play(t, prompt.clone());
        t += Duration::from_secs(7);
        drive(
            &mut s,
            t.min(t0 + Duration::from_secs(600)),
            &mut sent,
            &mut events,
        );
    }
    assert_eq!(sent.len(), 30_000 + 1);
    let first = sent[0].rtp();
    for (n, p) in sent.iter().enumerate() {
        // Exactly origin + n × 20 ms: no drift, no jitter of our own.
        assert_eq!(
            p.at,
            t0 + Duration::from_millis(20) * n as u32,
            "packet {n}"
        );
        let r = p.rtp();
        assert_eq!(r.sequence.0, first.sequence.0.wrapping_add(n as u16));
        assert_eq!(
            r.timestamp,
            first.timestamp.wrapping_add(160 * n as u32),
            "packet {n}"
        );
        assert_eq!(r.ssrc, first.ssrc);
        assert_eq!(r.payload.len(), 160);
        assert_eq!(r.payload_type, 0);
    }
    let started = events
        .iter()
        .filter(|e| matches!(e, MediaEvent::PromptStarted(_)))
        .count();
    let finished = events
        .iter()
        .filter(|e| matches!(e, MediaEvent::PromptFinished(_)))
        .count();
    assert_eq!((started, finished), (86, 86));
    // Markers: the first packet, and the first packet of each prompt (talkspurt start).
    let markers = sent.iter().filter(|p| p.rtp().marker).count();
    assert_eq!(markers, 86);
    let stats = s.stats();
    assert_eq!(stats.packets_sent, 30_001);
    assert_eq!(stats.skipped_slots, 0);
}

#[test]
fn a_stall_skips_slots_instead_of_bursting() {
    let t0 = Instant::now();
    let mut s = session(t0, Codec::Pcma, None, 2);
    let prompt = tone_prompt("pin", 1000);
    s.play(t0, prompt);
    let mut sent = Vec::new();
    let mut events = Vec::new();
    drive(
        &mut s,
        t0 + Duration::from_millis(200),
        &mut sent,
        &mut events,
    );
    assert_eq!(sent.len(), 11);
    // The runtime wakes 95 ms late: slots 11..=15 are due, only slot 15 is sent.
    let late = t0 + Duration::from_millis(220 + 95);
    s.handle_timeout(late);
    let burst: Vec<_> = std::iter::from_fn(|| s.poll_transmit()).collect();
    assert_eq!(burst.len(), 1);
    let p = RtpPacket::parse(&burst[0].payload).unwrap();
    let first = sent[0].rtp();
    assert_eq!(p.sequence.0, first.sequence.0.wrapping_add(11));
    assert_eq!(p.timestamp, first.timestamp.wrapping_add(160 * 15));
    assert!(!p.marker);
    assert_eq!(s.stats().skipped_slots, 4);
    // Back on the grid: the next packet is due at origin + 16 × 20 ms.
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_millis(320)));
    drive(
        &mut s,
        t0 + Duration::from_millis(1400),
        &mut sent,
        &mut events,
    );
    // The prompt ended on time (50 frames: the last one was slot 49, sent at 980 ms).
    assert!(events.contains(&MediaEvent::PromptFinished("pin".into())));
    let total = sent.len() + 1;
    assert_eq!(total, 71 - 4, "1400 ms = 71 slots, 4 skipped");
    // A repeated call at the same instant sends nothing more.
    s.handle_timeout(t0 + Duration::from_millis(1400));
    assert!(s.poll_transmit().is_none());
}

#[test]
fn initial_values_come_from_the_seed() {
    let t0 = Instant::now();
    let first = |seed| {
        let mut s = session(t0, Codec::Pcmu, None, seed);
        s.handle_timeout(t0);
        let p = s.poll_transmit().unwrap().payload;
        let r = RtpPacket::parse(&p).unwrap();
        (r.ssrc, r.sequence.0, r.timestamp, r.marker)
    };
    assert_eq!(first(7), first(7));
    let (a, b) = (first(7), first(8));
    assert!(a.0 != b.0 && a.1 != b.1 && a.2 != b.2);
    assert!(a.3, "marker on the first packet");
}

#[test]
fn comfort_silence_when_idle_and_between_prompts() {
    let t0 = Instant::now();
    let mut s = session(t0, Codec::Pcmu, None, 3);
    let mut sent = Vec::new();
    let mut events = Vec::new();
    drive(
        &mut s,
        t0 + Duration::from_millis(100),
        &mut sent,
        &mut events,
    );
    assert!(sent.iter().all(|p| p.rtp().payload == [0xff; 160]));
    s.play(t0 + Duration::from_millis(100), tone_prompt("a", 100));
    s.play(t0 + Duration::from_millis(100), tone_prompt("b", 60));
    drive(
        &mut s,
        t0 + Duration::from_millis(1000),
        &mut sent,
        &mut events,
    );
    assert_eq!(
        events,
        [
            MediaEvent::PromptStarted("a".into()),
            MediaEvent::PromptFinished("a".into()),
            MediaEvent::PromptStarted("b".into()),
            MediaEvent::PromptFinished("b".into()),
        ]
    );
    assert_eq!(sent.len(), 51);
    let markers: Vec<usize> = (0..sent.len()).filter(|&i| sent[i].rtp().marker).collect();
    assert_eq!(markers, [0, 6, 11]);
}

#[test]
fn stop_playback_cuts_the_prompt_and_drops_the_queue() {
    let t0 = Instant::now();
    let mut s = session(t0, Codec::Pcmu, None, 4);
    let mut sent = Vec::new();
    let mut events = Vec::new();
    s.play(t0, tone_prompt("greeting", 2000));
    s.play(t0, tone_prompt("goodbye", 500));
    drive(
        &mut s,
        t0 + Duration::from_millis(300),
        &mut sent,
        &mut events,
    );
    s.stop_playback(t0 + Duration::from_millis(300));
    drive(
        &mut s,
        t0 + Duration::from_millis(600),
        &mut sent,
        &mut events,
    );
    assert_eq!(
        events,
        [
            MediaEvent::PromptStarted("greeting".into()),
            MediaEvent::PromptStopped("greeting".into()),
        ]
    );
    assert!(sent[16..].iter().all(|p| p.rtp().payload == [0xff; 160]));
}

#[test]
fn rfc4733_dialling_on_the_wire() {
    let t0 = Instant::now();
    let mut s = session(t0, Codec::Pcmu, Some(101), 5);
    let mut sent = Vec::new();
    let mut events = Vec::new();
    s.dial(t0, "1#", DialMethod::Rfc4733);
    drive(
        &mut s,
        t0 + Duration::from_millis(1000),
        &mut sent,
        &mut events,
    );
    assert_eq!(events, [MediaEvent::DialFinished]);
    let first = sent[0].rtp();
    let rows: Vec<(u64, bool, u8, u32, EventPayload)> = sent
        .iter()
        .map(|p| {
            let r = p.rtp();
            (
                (p.at - t0).as_millis() as u64,
                r.marker,
                r.payload_type,
                r.timestamp.wrapping_sub(first.timestamp),
                EventPayload::parse(r.payload).unwrap_or(EventPayload {
                    event: 255,
                    end: false,
                    volume: 0,
                    duration: 0,
                }),
            )
        })
        .collect();
    // Key 1: slots 0..=6 (4 updates, 3 identical end packets), timestamp of slot 0.
    let expect_key = |from: usize, event: u8, ts: u32| {
        for i in 0..7 {
            let (at, marker, pt, t, e) = rows[from + i];
            assert_eq!(at, 20 * (from + i) as u64);
            assert_eq!(pt, 101);
            assert_eq!(marker, i == 0, "marker on the first packet only");
            assert_eq!(t, ts, "timestamp = event start");
            assert_eq!(e.event, event);
            assert_eq!(e.volume, 10);
            assert_eq!(e.end, i >= 4);
            assert_eq!(e.duration, 160 * (i.min(4) as u16 + 1));
        }
    };
    expect_key(0, 1, 0);
    // 100 ms of silent audio (5 slots), then '#'.
    for (i, row) in rows.iter().enumerate().take(12).skip(7) {
        assert_eq!(row.2, 0);
        assert_eq!(row.3, 160 * i as u32);
    }
    expect_key(12, 11, 160 * 12);
    // Sequence numbers are consecutive across events and audio.
    for (n, p) in sent.iter().enumerate() {
        assert_eq!(p.rtp().sequence.0, first.sequence.0.wrapping_add(n as u16));
    }
    assert_eq!(s.stats().event_packets_sent, 14);
}

/// What the far end hears when we dial.
fn far_end_digits(
    codec: Codec,
    event_pt: Option<u8>,
    keys: &str,
    method: DialMethod,
) -> Vec<media::DigitReport> {
    let t0 = Instant::now();
    let mut s = session(t0, codec, event_pt, 6);
    s.dial(t0, keys, method);
    let mut sent = Vec::new();
    let mut events = Vec::new();
    drive(&mut s, t0 + Duration::from_secs(8), &mut sent, &mut events);
    assert_eq!(events, [MediaEvent::DialFinished]);
    let pt = if codec == Codec::Pcma { 8 } else { 0 };
    let mut cfg = config(&[(pt, codec)], event_pt.map(|p| (p, 8000)));
    cfg.source = Some(addr(US));
    let mut far = ReceivePath::new(cfg);
    let packets: Vec<Timed> = sent
        .iter()
        .map(|p| Timed {
            at: p.at - t0,
            bytes: p.bytes.clone(),
        })
        .collect();
    run_from(&mut far, t0, &packets, addr(US))
}

#[test]
fn dialled_keys_are_heard_by_a_receive_path() {
    let all = "0123456789*#ABCD";
    let d = far_end_digits(Codec::Pcmu, Some(101), all, DialMethod::Rfc4733);
    assert_eq!(keys(&d), all);
    assert!(d.iter().all(|r| r.method == DtmfMethod::Rfc4733));
    let d = far_end_digits(Codec::Pcma, Some(101), all, DialMethod::Inband);
    assert_eq!(keys(&d), all);
    assert!(d.iter().all(|r| r.method == DtmfMethod::Inband));
    // No telephone-event negotiated: RFC 4733 falls back to tones.
    let d = far_end_digits(Codec::Pcmu, None, "55,5#", DialMethod::Rfc4733);
    assert_eq!(keys(&d), "555#");
    assert!(d.iter().all(|r| r.method == DtmfMethod::Inband));
}

#[test]
fn comma_pauses_one_second() {
    let t0 = Instant::now();
    let mut s = session(t0, Codec::Pcmu, Some(101), 9);
    s.dial(t0, "1,2", DialMethod::Rfc4733);
    let mut sent = Vec::new();
    let mut events = Vec::new();
    drive(&mut s, t0 + Duration::from_secs(3), &mut sent, &mut events);
    let starts: Vec<u128> = sent
        .iter()
        .filter(|p| p.rtp().payload_type == 101 && p.rtp().marker)
        .map(|p| (p.at - t0).as_millis())
        .collect();
    // Key (140 ms incl. end packets) + 100 ms pause + 1 s.
    assert_eq!(starts, [0, 1240]);
}

/// Two sessions on one simulated clock over a seeded lossy, reordering link: the callee's
/// digits arrive once each.
#[test]
fn two_sessions_over_an_impaired_link() {
    for seed in 0..20 {
        let t0 = Instant::now();
        let mut caller = Session::new(
            t0,
            SessionConfig {
                remote: addr(PHONE),
                codec: Codec::Pcmu,
                audio_pt: 0,
                telephone_event_pt: Some(101),
                seed: seed32(seed),
                srtp: None,
            },
        );
        let mut phone = Session::new(
            t0 + Duration::from_millis(7),
            SessionConfig {
                remote: addr(US),
                codec: Codec::Pcmu,
                audio_pt: 0,
                telephone_event_pt: Some(101),
                seed: seed32(seed + 1000),
                srtp: None,
            },
        );
        caller.play(t0, tone_prompt("greeting", 1500));
        let method = if seed % 2 == 0 {
            DialMethod::Rfc4733
        } else {
            DialMethod::Inband
        };
        phone.dial(t0, ",1234#", method);
        let mut rng = media::rng::SplitMix64::new(seed);
        // In flight: (arrival, to caller?, bytes).
        let mut link: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
        let mut digits = Vec::new();
        let end = t0 + Duration::from_secs(5);
        loop {
            let next = [
                caller.poll_timeout(),
                phone.poll_timeout(),
                link.iter().map(|l| l.0).min(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
            if next > end {
                break;
            }
            // Deliver what has arrived.
            let (due, rest): (Vec<_>, Vec<_>) = link.into_iter().partition(|l| l.0 <= next);
            link = rest;
            for (at, to_caller, bytes) in due {
                if to_caller {
                    caller.handle_datagram(at, addr(PHONE), &bytes);
                } else {
                    phone.handle_datagram(at, addr(US), &bytes);
                }
            }
            caller.handle_timeout(next);
            phone.handle_timeout(next);
            for (s, to_caller) in [(&mut caller, false), (&mut phone, true)] {
                while let Some(tx) = s.poll_transmit() {
                    // 3 % loss (never two in a row matters little here), 30 ms jitter.
                    if rng.chance(0.03) {
                        continue;
                    }
                    let delay = Duration::from_millis(20 + rng.below(30));
                    link.push((next + delay, to_caller, tx.payload));
                }
            }
            while let Some(e) = caller.poll_event() {
                if let MediaEvent::Digit(d) = e {
                    digits.push(d);
                }
            }
            while phone.poll_event().is_some() {}
        }
        assert_eq!(keys(&digits), "1234#", "seed {seed} {method:?}");
        let rx = &caller.stats().receive;
        assert_eq!(rx.streams.len(), 1);
        assert!(rx.streams[0].jitter_ms > 0.0);
    }
}

#[test]
fn rtcp_reports_what_arrives() {
    use media::rtcp::{self, RtcpPacket, SenderInfo};
    let t0 = Instant::now();
    let mut s = session(t0, Codec::Pcmu, Some(101), 10);
    // One second of the phone's audio with packet 10 lost, then its SR on the RTCP port.
    let mut phone = Phone::new(Codec::Pcmu, 0);
    phone.silence(1000);
    let mut packets = phone.packets();
    packets.remove(10);
    for p in &packets {
        s.handle_datagram(t0 + p.at, addr(PHONE), &p.bytes);
    }
    let sr = rtcp::write_compound(&[RtcpPacket::SenderReport {
        ssrc: phone.ssrc,
        info: SenderInfo {
            ntp: 0x0000_1234_5678_0000,
            ..SenderInfo::default()
        },
        reports: vec![],
    }]);
    let mut rtcp_port = addr(PHONE);
    rtcp_port.set_port(rtcp_port.port() + 1);
    s.receive().handle_rtcp(t0 + ms(1000), rtcp_port, &sr);
    let mut sent = Vec::new();
    let mut events = Vec::new();
    drive(&mut s, t0 + ms(1000), &mut sent, &mut events);
    let report = s.rtcp_report(t0 + ms(1500), 0xe000_0000_0000_0000, "callverify@test");
    let parsed = rtcp::parse(&report).unwrap();
    let RtcpPacket::SenderReport {
        ssrc,
        info,
        reports,
    } = &parsed[0]
    else {
        panic!("{parsed:?}");
    };
    assert_eq!(*ssrc, s.stats().ssrc);
    assert_eq!(info.packets, 51);
    assert_eq!(info.octets, 51 * 160);
    assert_eq!(reports.len(), 1);
    let b = reports[0];
    assert_eq!(b.ssrc, phone.ssrc);
    assert_eq!(b.cumulative_lost, 1);
    assert_eq!(b.fraction_lost, (256 / 50) as u8);
    assert_eq!(b.last_sr, 0x1234_5678);
    assert_eq!(b.delay_since_last_sr, 32768);
    assert_eq!(
        parsed[1],
        RtcpPacket::Cname {
            ssrc: s.stats().ssrc,
            cname: "callverify@test".into()
        }
    );
    assert_eq!(
        rtcp::parse(&s.rtcp_bye()).unwrap(),
        [RtcpPacket::Bye {
            ssrcs: vec![s.stats().ssrc]
        }]
    );
}

#[test]
fn an_empty_prompt_still_starts_and_finishes() {
    let t0 = Instant::now();
    let mut s = session(t0, Codec::Pcmu, None, 11);
    s.play(t0, Arc::new(Prompt::from_samples("empty", &[])));
    let mut sent = Vec::new();
    let mut events = Vec::new();
    drive(&mut s, t0 + ms(40), &mut sent, &mut events);
    assert_eq!(
        events,
        [
            MediaEvent::PromptStarted("empty".into()),
            MediaEvent::PromptFinished("empty".into())
        ]
    );
    assert_eq!(sent.len(), 3);
}

#[test]
fn a_re_invite_moves_the_media() {
    let t0 = Instant::now();
    let mut s = session(t0, Codec::Pcmu, Some(101), 5);
    let moved = addr("198.51.100.77:41000");
    s.redirect(moved);
    s.handle_timeout(t0);
    let tx = s.poll_transmit().expect("a packet is due at the origin");
    assert_eq!(tx.destination, moved);
    // RTP from the old address is dropped; from the new one it counts.
    let packet = media::rtp::PacketSpec {
        marker: false,
        payload_type: 0,
        sequence: 7,
        timestamp: 160,
        ssrc: 9,
        csrcs: &[],
        extension: None,
        payload: &[0xff; 160],
        padding: 0,
    }
    .to_vec()
    .unwrap();
    s.handle_datagram(t0, addr(PHONE), &packet);
    assert_eq!(s.stats().receive.dropped_source, 1);
    s.handle_datagram(t0, moved, &packet);
    assert_eq!(s.stats().receive.dropped_source, 1);
    assert_eq!(s.stats().receive.stream(9).map(|st| st.packets), Some(1));
}
