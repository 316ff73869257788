//! Shared helpers for the receiver tests: detection into a list, G.711 round trips, seeded
//! noise.
#![allow(dead_code)]

use dtmf::{Digit, Event, Receiver};

/// One detected key press, in samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Press {
    pub digit: Digit,
    pub start: u64,
    pub end: u64,
    pub reported_at: u64,
}

/// Runs `samples` through a fresh receiver in chunks of `chunk` samples.
pub fn detect_chunked(samples: &[i16], chunk: usize) -> Vec<Press> {
    let mut rx = Receiver::new();
    let mut presses = Vec::new();
    let mut open: Option<(Digit, u64)> = None;
    let mut on_event = |e: Event| match e {
        Event::Start {
            digit, reported_at, ..
        } => {
            assert!(
                open.is_none(),
                "start of {digit} while another digit is held"
            );
            open = Some((digit, reported_at));
        }
        Event::End {
            digit, start, end, ..
        } => {
            let (d, reported_at) = open.take().expect("end without start");
            assert_eq!(d, digit);
            presses.push(Press {
                digit,
                start,
                end,
                reported_at,
            });
        }
    };
    for c in samples.chunks(chunk.max(1)) {
        rx.process(c, &mut on_event);
    }
    rx.finish(&mut on_event);
    presses
}

pub fn detect(samples: &[i16]) -> Vec<Press> {
    detect_chunked(samples, 160)
}

pub fn keys(presses: &[Press]) -> String {
    presses.iter().map(|p| p.digit.as_char()).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Linear,
    Ulaw,
    Alaw,
}

pub const CODECS: [Codec; 3] = [Codec::Linear, Codec::Ulaw, Codec::Alaw];

/// The audio as it arrives after a G.711 encode/decode.
pub fn through(codec: Codec, samples: &[i16]) -> Vec<i16> {
    use media::g711::*;
    match codec {
        Codec::Linear => samples.to_vec(),
        Codec::Ulaw => samples
            .iter()
            .map(|&s| ulaw_to_linear(linear_to_ulaw(s)))
            .collect(),
        Codec::Alaw => samples
            .iter()
            .map(|&s| alaw_to_linear(linear_to_alaw(s)))
            .collect(),
    }
}

/// A small seeded PRNG (xorshift64*), enough for test noise.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Mean power of the non-silent samples.
pub fn tone_power(samples: &[i16]) -> f64 {
    let loud: Vec<f64> = samples
        .iter()
        .filter(|&&s| s != 0)
        .map(|&s| s as f64 * s as f64)
        .collect();
    loud.iter().sum::<f64>() / loud.len().max(1) as f64
}

/// Adds white Gaussian noise `snr_db` below the tones' power.
pub fn add_noise(samples: &[i16], snr_db: f64, rng: &mut Rng) -> Vec<i16> {
    let sigma = (tone_power(samples) / 10f64.powf(snr_db / 10.0)).sqrt();
    samples
        .iter()
        .map(|&s| {
            (s as f64 + sigma * rng.gaussian())
                .round()
                .clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// `n` samples of silence.
pub fn silence(n: usize) -> Vec<i16> {
    vec![0; n]
}

/// One tone burst of `digit` lasting `samples`, through `ToneSpec`'s level/twist/offsets.
pub fn burst(digit: Digit, samples: usize, spec: &dtmf::ToneSpec) -> Vec<i16> {
    // Generate a long tone and cut it to length, so any length in samples is possible.
    let mut long = dtmf::Generator::new(dtmf::ToneSpec {
        on_ms: 1000,
        off_ms: 0,
        ..spec.clone()
    });
    long.push_digit(digit);
    let mut out = vec![0i16; samples];
    let n = long.fill(&mut out);
    assert_eq!(n, samples, "bursts are at most 1 s long");
    out
}
