//! DTMF tone generation per ITU-T Q.23: the two frequencies of a key, at a chosen level,
//! twist, duration and pause. Used by the tests, by `callverify dtmf generate`, and to dial
//! office extensions in-band.

use std::collections::VecDeque;

use crate::digit::{Digit, ParseDigitError};
use crate::{DBM0_PEAK, SAMPLE_RATE, ms_to_samples};

/// How tones are shaped.
#[derive(Clone, Debug, PartialEq)]
pub struct ToneSpec {
    /// Level of the low-group (row) tone, dBm0. Default −10 dBm0 (a typical telephone sends
    /// −6..−10 dBm0 per tone; Q.23 leaves levels to national specifications).
    pub level_dbm0: f64,
    /// Twist, dB: the low-group level minus the high-group level. Positive is "normal" twist
    /// (low tone louder), negative "reverse" (high tone louder).
    pub twist_db: f64,
    /// Tone duration, ms. Default 100 ms.
    pub on_ms: u32,
    /// Silence after each tone, ms. Default 100 ms.
    pub off_ms: u32,
    /// Relative frequency error of the low-group tone (0.015 is +1.5 %).
    pub low_offset: f64,
    /// Relative frequency error of the high-group tone.
    pub high_offset: f64,
}

impl Default for ToneSpec {
    fn default() -> Self {
        ToneSpec {
            level_dbm0: -10.0,
            twist_db: 0.0,
            on_ms: 100,
            off_ms: 100,
            low_offset: 0.0,
            high_offset: 0.0,
        }
    }
}

impl ToneSpec {
    /// Peak amplitudes (low, high) of the two tones.
    fn amplitudes(&self) -> (f64, f64) {
        let low = DBM0_PEAK * 10f64.powf(self.level_dbm0 / 20.0);
        let high = DBM0_PEAK * 10f64.powf((self.level_dbm0 - self.twist_db) / 20.0);
        (low, high)
    }
}

#[derive(Clone, Debug)]
enum Item {
    Tone(Digit),
    Silence(u64),
}

/// A streaming tone generator: queue digits and pauses, pull samples.
#[derive(Clone, Debug)]
pub struct Generator {
    spec: ToneSpec,
    queue: VecDeque<Item>,
    /// The item being played and the samples left of it.
    playing: Option<(Item, u64)>,
    /// Oscillator phases (radians) and increments of the current tone.
    phase: (f64, f64),
    step: (f64, f64),
}

impl Generator {
    /// An empty generator.
    pub fn new(spec: ToneSpec) -> Generator {
        Generator {
            spec,
            queue: VecDeque::new(),
            playing: None,
            phase: (0.0, 0.0),
            step: (0.0, 0.0),
        }
    }

    /// Queues a key: `on_ms` of tone followed by `off_ms` of silence.
    pub fn push_digit(&mut self, digit: Digit) {
        self.queue.push_back(Item::Tone(digit));
        self.queue
            .push_back(Item::Silence(ms_to_samples(self.spec.off_ms)));
    }

    /// Queues `ms` of silence.
    pub fn push_pause_ms(&mut self, ms: u32) {
        self.queue.push_back(Item::Silence(ms_to_samples(ms)));
    }

    /// True when everything queued has been produced.
    pub fn is_done(&self) -> bool {
        self.playing.is_none() && self.queue.is_empty()
    }

    /// Fills `out` with the next samples; returns how many were written (less than
    /// `out.len()` only when the queue ran out).
    pub fn fill(&mut self, out: &mut [i16]) -> usize {
        let (amp_low, amp_high) = self.spec.amplitudes();
        let mut written = 0;
        while written < out.len() {
            let Some((item, left)) = self.playing.as_mut() else {
                let Some(next) = self.queue.pop_front() else {
                    break;
                };
                let len = match next {
                    Item::Tone(d) => {
                        let (fl, fh) = d.frequencies();
                        let w = 2.0 * std::f64::consts::PI / SAMPLE_RATE as f64;
                        self.step = (
                            w * fl * (1.0 + self.spec.low_offset),
                            w * fh * (1.0 + self.spec.high_offset),
                        );
                        self.phase = (0.0, 0.0);
                        ms_to_samples(self.spec.on_ms)
                    }
                    Item::Silence(n) => n,
                };
                self.playing = Some((next, len));
                continue;
            };
            let n = (*left).min((out.len() - written) as u64) as usize;
            let dst = &mut out[written..written + n];
            match item {
                Item::Tone(_) => {
                    for s in dst.iter_mut() {
                        let v = amp_low * self.phase.0.sin() + amp_high * self.phase.1.sin();
                        *s = v.round().clamp(i16::MIN as f64, i16::MAX as f64) as i16;
                        self.phase.0 = (self.phase.0 + self.step.0) % std::f64::consts::TAU;
                        self.phase.1 = (self.phase.1 + self.step.1) % std::f64::consts::TAU;
                    }
                }
                Item::Silence(_) => dst.fill(0),
            }
            *left -= n as u64;
            if *left == 0 {
                self.playing = None;
            }
            written += n;
        }
        written
    }
}

/// Tones for `keys` (DTMF keys; `,` is a one-second pause), each `on_ms` long and followed by
/// `off_ms` of silence, after an initial `off_ms` of silence.
pub fn generate(keys: &str, spec: &ToneSpec) -> Vec<i16> {
    try_generate(keys, spec).unwrap_or_default()
}

/// As [`generate`], rejecting characters that are neither keys nor `,`.
pub fn try_generate(keys: &str, spec: &ToneSpec) -> Result<Vec<i16>, ParseDigitError> {
    let mut g = Generator::new(spec.clone());
    g.push_pause_ms(spec.off_ms);
    for c in keys.chars() {
        match c {
            ',' => g.push_pause_ms(1000),
            _ => g.push_digit(Digit::from_char(c).ok_or(ParseDigitError(c))?),
        }
    }
    Ok(drain(g))
}

/// Tones for `digits`, laid out as [`generate`] does.
pub fn generate_digits(digits: &[Digit], spec: &ToneSpec) -> Vec<i16> {
    let mut g = Generator::new(spec.clone());
    g.push_pause_ms(spec.off_ms);
    for &d in digits {
        g.push_digit(d);
    }
    drain(g)
}

fn drain(mut g: Generator) -> Vec<i16> {
    let mut out = Vec::new();
    let mut buf = [0i16; 1024];
    loop {
        let n = g.fill(&mut buf);
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return out;
        }
    }
}
