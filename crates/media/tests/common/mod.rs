//! Test helpers: a simulated clock, a phone that builds RTP the way real senders do, a seeded
//! impairment model, and a driver that runs packets through a `ReceivePath`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dtmf::{Digit, ToneSpec};
use media::rfc4733::EventPayload;
use media::rng::SplitMix64;
use media::rtp::PacketSpec;
use media::{Codec, DigitReport, DtmfMethod, ReceiveConfig, ReceivePath, g711};

pub const PHONE: &str = "192.0.2.10:4000";
pub const OTHER: &str = "198.51.100.7:4000";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A datagram and when it arrives, relative to the start of the test.
#[derive(Clone, Debug)]
pub struct Timed {
    pub at: Duration,
    pub bytes: Vec<u8>,
}

/// How a phone sends RFC 4733 events.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Style {
    /// Marker on the first packet, E on the last, sent three times with new sequence numbers
    /// (RFC 4733), audio carries on in parallel.
    Standard,
    /// Asterisk: audio pauses during the event; when it resumes it carries a tail of the tone.
    AsteriskTail,
    /// Cisco SPA: marker on every packet, 10 ms cadence.
    CiscoMarkers,
    /// sipp: the three end packets carry the same sequence number.
    SippSameSeq,
    /// No end packet at all (Asterisk testsuite `dtmf_2833_1_noend`).
    NoEnd,
}

/// A sending phone: one SSRC, 20 ms G.711 packets, events on its own or a second SSRC.
#[derive(Clone, Debug)]
pub struct Phone {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub codec: Codec,
    pub audio_pt: u8,
    pub event_pt: u8,
    /// Clock of the event timestamps/durations (8000, or 48000 with Opus).
    pub event_clock: u32,
    /// Events on a different SSRC with its own sequence/timestamps (sipp's replay).
    pub event_ssrc: Option<(u32, u16, u32)>,
    /// Time of the next audio packet.
    pub t: Duration,
    pub out: Vec<Timed>,
    pub send_audio: bool,
    pub tone: ToneSpec,
}

impl Phone {
    pub fn new(codec: Codec, audio_pt: u8) -> Phone {
        Phone {
            ssrc: 0x1234_5678,
            seq: 65_500,
            ts: u32::MAX - 4000,
            codec,
            audio_pt,
            event_pt: 101,
            event_clock: 8000,
            event_ssrc: None,
            t: Duration::ZERO,
            out: Vec::new(),
            send_audio: true,
            tone: ToneSpec::default(),
        }
    }

    fn packet(&mut self, at: Duration, spec: PacketSpec<'_>) {
        let bytes = spec.to_vec().expect("valid test packet");
        self.out.push(Timed { at, bytes });
    }

    /// Sends `samples` as 20 ms packets from the current time.
    pub fn audio(&mut self, samples: &[i16]) {
        for chunk in samples.chunks(160) {
            let payload: Vec<u8> = chunk
                .iter()
                .map(|&s| match self.codec {
                    Codec::Pcma => g711::linear_to_alaw(s),
                    _ => g711::linear_to_ulaw(s),
                })
                .collect();
            if self.send_audio {
                let spec = PacketSpec {
                    payload_type: self.audio_pt,
                    sequence: self.seq,
                    timestamp: self.ts,
                    ssrc: self.ssrc,
                    payload: &payload,
                    ..PacketSpec::default()
                };
                self.packet(self.t, spec);
                self.seq = self.seq.wrapping_add(1);
            }
            self.ts = self.ts.wrapping_add(chunk.len() as u32);
            self.t += ms(20);
        }
    }

    pub fn silence(&mut self, ms_len: u32) {
        self.audio(&vec![0; (ms_len * 8) as usize]);
    }

    /// A key pressed in-band for `on` ms.
    pub fn tone(&mut self, digit: Digit, on: u32) {
        let spec = ToneSpec {
            on_ms: on,
            off_ms: 0,
            ..self.tone.clone()
        };
        self.audio(&dtmf::generate_digits(&[digit], &spec));
    }

    /// A key pressed for `on` ms, sent as RFC 4733 events in `style`.
    pub fn event(&mut self, digit: Digit, on: u32, style: Style) {
        let cadence = if style == Style::CiscoMarkers { 10 } else { 20 };
        let scale = u64::from(self.event_clock) / 1000;
        let t0 = self.t;
        let ev_ts = match self.event_ssrc {
            Some((_, _, ts)) => ts,
            None => self.ts,
        };
        // (arrival, payload type, marker, timestamp, payload, takes a new sequence number)
        let mut packets: Vec<(Duration, u8, bool, u32, Vec<u8>, bool)> = Vec::new();
        let n = on / cadence;
        for i in 1..=n {
            let end = i == n && style != Style::NoEnd;
            let repeats = if end { 3 } else { 1 };
            for r in 0..repeats {
                let payload = EventPayload {
                    event: digit.event_code(),
                    end,
                    volume: 10,
                    duration: (u64::from(i * cadence) * scale) as u16,
                };
                let marker = i == 1 || style == Style::CiscoMarkers;
                let at = t0 + ms(u64::from((i - 1) * cadence + r * 2));
                let new_seq = !(style == Style::SippSameSeq && end && r > 0);
                packets.push((
                    at,
                    self.event_pt,
                    marker,
                    ev_ts,
                    payload.to_bytes().to_vec(),
                    new_seq,
                ));
            }
        }
        let shared = self.event_ssrc.is_none();
        if style != Style::AsteriskTail && shared && self.send_audio {
            // Silent audio goes on in parallel on the same SSRC, interleaved.
            let silence = vec![0i16; 160];
            for k in 0..(on / 20) {
                let payload: Vec<u8> = silence
                    .iter()
                    .map(|&s| match self.codec {
                        Codec::Pcma => g711::linear_to_alaw(s),
                        _ => g711::linear_to_ulaw(s),
                    })
                    .collect();
                let ts = self.ts.wrapping_add(k * 160);
                packets.push((
                    t0 + ms(u64::from(k * 20)) + Duration::from_micros(500),
                    self.audio_pt,
                    false,
                    ts,
                    payload,
                    true,
                ));
            }
        }
        packets.sort_by_key(|p| p.0);
        let (ssrc, mut seq) = match self.event_ssrc {
            Some((ssrc, seq, _)) => (ssrc, seq),
            None => (self.ssrc, self.seq),
        };
        let mut first = true;
        for (at, pt, marker, ts, payload, new_seq) in packets {
            if new_seq && !first {
                seq = seq.wrapping_add(1);
            }
            first = false;
            self.packet(
                at,
                PacketSpec {
                    marker,
                    payload_type: pt,
                    sequence: seq,
                    timestamp: ts,
                    ssrc,
                    payload: &payload,
                    ..PacketSpec::default()
                },
            );
        }
        seq = seq.wrapping_add(1);
        match &mut self.event_ssrc {
            Some((_, s, ts)) => {
                *s = seq;
                *ts = ts.wrapping_add(on * 8 + 8000);
            }
            None => self.seq = seq,
        }
        match style {
            Style::AsteriskTail => {
                // Audio paused during the event, then resumes with a 150 ms tail of the tone.
                self.ts = self.ts.wrapping_add(on * 8);
                self.t += ms(u64::from(on) + 20);
                self.tone(digit, 150);
            }
            _ if shared => {
                self.ts = self.ts.wrapping_add(on / 20 * 160);
                self.t += ms(u64::from(on / 20 * 20));
            }
            _ => self.silence(on),
        }
    }

    /// The packets in arrival order.
    pub fn packets(&self) -> Vec<Timed> {
        let mut v = self.out.clone();
        v.sort_by_key(|p| p.at);
        v
    }
}

/// Seeded network impairment: loss, duplication, reordering by random extra delay.
#[derive(Copy, Clone, Debug)]
pub struct Impairment {
    pub loss: f64,
    pub duplicate: f64,
    /// Probability that a packet is delayed by up to `max_delay`.
    pub reorder: f64,
    pub max_delay: Duration,
    /// At least this many packets arrive between two losses (4 keeps loss within what the
    /// receiver bridges: a 100 ms tone keeps 40 ms in one piece; 0 for no limit).
    pub loss_spacing: usize,
    /// At most this many packets lost in a row (0 for no limit).
    pub max_burst: usize,
}

pub fn impair(packets: &[Timed], seed: u64, imp: Impairment) -> Vec<Timed> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::new();
    let mut since_loss = usize::MAX;
    let mut burst = 0;
    for p in packets {
        let burst_ok = imp.max_burst == 0 || burst < imp.max_burst;
        if rng.chance(imp.loss) && since_loss >= imp.loss_spacing && burst_ok {
            since_loss = 0;
            burst += 1;
            continue;
        }
        burst = 0;
        since_loss = since_loss.saturating_add(1);
        let delay = if rng.chance(imp.reorder) {
            Duration::from_micros(rng.below(imp.max_delay.as_micros() as u64 + 1))
        } else {
            Duration::ZERO
        };
        out.push(Timed {
            at: p.at + delay,
            bytes: p.bytes.clone(),
        });
        if rng.chance(imp.duplicate) {
            out.push(Timed {
                at: p.at + delay + Duration::from_micros(rng.below(30_000)),
                bytes: p.bytes.clone(),
            });
        }
    }
    out.sort_by_key(|p| p.at);
    out
}

pub fn config(audio: &[(u8, Codec)], event: Option<(u8, u32)>) -> ReceiveConfig {
    ReceiveConfig {
        audio: audio.to_vec(),
        telephone_event: event,
        source: Some(addr(PHONE)),
        reorder_window: ms(60),
    }
}

/// Runs packets (all from `PHONE`) through a receive path on a simulated clock, firing timers
/// exactly when due, and finishes the stream 1 s after the last packet.
pub fn run(path: &mut ReceivePath, t0: Instant, packets: &[Timed]) -> Vec<DigitReport> {
    run_from(path, t0, packets, addr(PHONE))
}

pub fn run_from(
    path: &mut ReceivePath,
    t0: Instant,
    packets: &[Timed],
    from: SocketAddr,
) -> Vec<DigitReport> {
    let mut digits = Vec::new();
    for p in packets {
        let now = t0 + p.at;
        while let Some(t) = path.poll_timeout().filter(|t| *t <= now) {
            path.handle_timeout(t);
        }
        path.handle_rtp(now, from, &p.bytes);
        digits.extend(std::iter::from_fn(|| path.poll_digit()));
    }
    let end = t0 + packets.last().map(|p| p.at).unwrap_or_default() + ms(1000);
    while let Some(t) = path.poll_timeout().filter(|t| *t <= end) {
        path.handle_timeout(t);
        digits.extend(std::iter::from_fn(|| path.poll_digit()));
    }
    path.finish(end);
    digits.extend(std::iter::from_fn(|| path.poll_digit()));
    digits
}

pub fn keys(digits: &[DigitReport]) -> String {
    digits.iter().map(|d| d.digit.as_char()).collect()
}

pub fn methods(digits: &[DigitReport]) -> Vec<DtmfMethod> {
    digits.iter().map(|d| d.method).collect()
}
