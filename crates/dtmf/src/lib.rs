//! A streaming DTMF receiver (Goertzel/DFT on 8 kHz linear PCM) and an ITU-T Q.23 tone
//! generator. No I/O, no clock, no allocation while receiving, no dependencies beyond `std`.
//!
//! Time is counted in samples at [`SAMPLE_RATE`]: the receiver reports digit starts and ends
//! as sample positions in the stream it was fed (including samples declared lost with
//! [`Receiver::fill_in`]), so a caller can turn them into milliseconds or RTP time.
//!
//! ```
//! use dtmf::{Digit, Event, Receiver, ToneSpec};
//!
//! let audio = dtmf::generate("1#", &ToneSpec::default());
//! let mut rx = Receiver::new();
//! let mut digits = Vec::new();
//! rx.process(&audio, |e| {
//!     if let Event::Start { digit, .. } = e {
//!         digits.push(digit);
//!     }
//! });
//! assert_eq!(digits, [Digit::D1, Digit::Pound]);
//! ```

mod digit;
mod generator;
mod receiver;
mod window;

pub use digit::{Digit, ParseDigitError};
pub use generator::{Generator, ToneSpec, generate, generate_digits, try_generate};
pub use receiver::{Event, MIN_LEVEL_DBM0, Receiver};
pub use window::{BAND_FREQUENCIES_HZ, WINDOW_HOP, WINDOW_LEN, WindowReport};

/// The sample rate of everything in this crate, in Hz (G.711 narrowband telephony).
pub const SAMPLE_RATE: u32 = 8000;

/// Amplitude (peak, 16-bit linear) of a sine at 0 dBm0.
///
/// G.711 convention (ITU-T G.711 Tables 1a/2a, as SpanDSP's `DBM0_MAX_SINE_POWER`): a
/// full-scale sine, peak 32767, is +3.14 dBm0, so 0 dBm0 peaks at 32767 / 10^(3.14/20).
pub const DBM0_PEAK: f64 = 32767.0 / 1.435_489_433_133_272; // 10^(3.14/20)

/// Converts milliseconds to samples at [`SAMPLE_RATE`].
pub const fn ms_to_samples(ms: u32) -> u64 {
    ms as u64 * SAMPLE_RATE as u64 / 1000
}

/// Converts a sample position to milliseconds at [`SAMPLE_RATE`] (rounded down).
pub const fn samples_to_ms(samples: u64) -> u64 {
    samples * 1000 / SAMPLE_RATE as u64
}
