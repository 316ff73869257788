//! The spectral front end: an 8-bin DFT over 102-sample windows that overlap by half.
//!
//! Each 51-sample half block is transformed once (complex DFT at the eight Q.23
//! frequencies, as dot products against a table: no loop-carried recursion as in a Goertzel
//! filter, so the compiler vectorises it), and each window is the sum of two adjacent halves with the
//! second rotated into the first's time reference. One pass over the audio thus yields a
//! window every 51 samples (6.375 ms) at the cost of one non-overlapped Goertzel bank.
//!
//! Why 102 samples (12.75 ms): the rectangular window's nulls fall every 8000/102 = 78.4 Hz,
//! close to the 73..95 Hz spacing of the Q.23 row tones, so a row tone leaks little into its
//! neighbours' bins (SpanDSP, `DTMF_SAMPLES_PER_BLOCK`); and a 40 ms tone always covers
//! four whole half-block-aligned windows, so three consecutive windows (25.5 ms) can be
//! required before a digit is declared, which rejects 20 ms bursts.
//!
//! Each window's DC offset and linear drift are removed exactly (least squares, applied to
//! the DFT and energy sums after the fact): real captures carry tones on large, slowly
//! decaying offsets.

use std::sync::OnceLock;

use crate::SAMPLE_RATE;
use crate::digit::{COL_HZ, ROW_HZ};

/// Samples per half block (6.375 ms at 8 kHz).
pub(crate) const HALF: usize = 51;
/// Samples per analysis window (12.75 ms at 8 kHz).
pub const WINDOW_LEN: usize = 2 * HALF;
/// Samples between the starts of consecutive windows (6.375 ms at 8 kHz).
pub const WINDOW_HOP: usize = HALF;
/// The eight bands, rows (low group) then columns (high group), Hz (ITU-T Q.23).
pub const BAND_FREQUENCIES_HZ: [f64; 8] = [
    ROW_HZ[0], ROW_HZ[1], ROW_HZ[2], ROW_HZ[3], COL_HZ[0], COL_HZ[1], COL_HZ[2], COL_HZ[3],
];

/// Σ (n - n̄)² over one window, n = 0..102, n̄ = 50.5: N(N²-1)/12.
const CENTERED_N_SQ: f64 = (WINDOW_LEN * (WINDOW_LEN * WINDOW_LEN - 1)) as f64 / 12.0;
/// Mean sample index of a window, (N-1)/2.
const MEAN_N: f64 = (WINDOW_LEN - 1) as f64 / 2.0;

/// A half block padded to an even number of samples (the transform takes two at a time).
const PADDED: usize = HALF + 1;
/// Columns of the half-block transform: the real and imaginary parts of the eight bins, the
/// constant 1 (Σx) and the index n (Σn·x), padded to three 8-lane vectors.
const COLUMNS: usize = 24;

/// Constant tables shared by every receiver.
pub(crate) struct Tables {
    /// The transform, one row per sample n: `cos(ω_b n)` for the eight bands, `-sin(ω_b n)`,
    /// then 1 and n; zero past the half block's 51 samples.
    pub basis: [[f32; COLUMNS]; PADDED],
    /// `e^{-j ω_b HALF}`: moves a half block's DFT to the time reference 51 samples earlier.
    pub shift: [(f32, f32); 8],
    /// Σ_{n<102} e^{-j ω_b n}: what a constant of 1 adds to each bin.
    pub dc: [(f32, f32); 8],
    /// Σ_{n<102} (n - n̄) e^{-j ω_b n}: what a unit linear ramp adds to each bin.
    pub ramp: [(f32, f32); 8],
    /// Angular frequency of each band, radians per sample.
    pub omega: [f64; 8],
}

pub(crate) fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let omega =
            BAND_FREQUENCIES_HZ.map(|f| 2.0 * std::f64::consts::PI * f / SAMPLE_RATE as f64);
        let mut basis = [[0f32; COLUMNS]; PADDED];
        for (n, row) in basis.iter_mut().enumerate().take(HALF) {
            for b in 0..8 {
                let phase = omega[b] * n as f64;
                row[b] = phase.cos() as f32;
                row[b + 8] = -phase.sin() as f32;
            }
            row[16] = 1.0;
            row[17] = n as f32;
        }
        let mut shift = [(0f32, 0f32); 8];
        let mut dc = [(0f32, 0f32); 8];
        let mut ramp = [(0f32, 0f32); 8];
        for b in 0..8 {
            let w = omega[b];
            shift[b] = (
                ((w * HALF as f64).cos()) as f32,
                (-(w * HALF as f64).sin()) as f32,
            );
            let (mut dr, mut di, mut rr, mut ri) = (0f64, 0f64, 0f64, 0f64);
            for n in 0..WINDOW_LEN {
                let (c, s) = ((w * n as f64).cos(), -(w * n as f64).sin());
                let m = n as f64 - MEAN_N;
                dr += c;
                di += s;
                rr += m * c;
                ri += m * s;
            }
            dc[b] = (dr as f32, di as f32);
            ramp[b] = (rr as f32, ri as f32);
        }
        Tables {
            basis,
            shift,
            dc,
            ramp,
            omega,
        }
    })
}

/// Accumulated DFT and moments of one half block.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Half {
    /// Real parts of the eight bins, then imaginary parts.
    pub bins: [f32; 16],
    /// Σ x.
    pub sum: f64,
    /// Σ n·x, n counted from the half block's start.
    pub sum_n: f64,
    /// Σ x².
    pub sum_sq: f64,
}

impl Half {
    /// Transforms one whole half block.
    pub fn from_block(block: &[i16; HALF]) -> Half {
        let mut x = [0f32; PADDED];
        for (dst, &src) in x.iter_mut().zip(block) {
            *dst = src as f32;
        }
        let mut out = [0f32; COLUMNS];
        transform(&tables().basis, &x, &mut out);
        let mut bins = [0f32; 16];
        bins.copy_from_slice(&out[..16]);
        Half {
            bins,
            sum: out[16] as f64,
            sum_n: out[17] as f64,
            sum_sq: energy(&x) as f64,
        }
    }
}

/// `out[c] = Σ_n x[n]·basis[n][c]`: the hot loop of the receiver (18 multiply-adds per
/// sample).
///
/// Two samples per step into two accumulator sets, so consecutive additions do not wait on
/// each other; the order of every addition is fixed by the code, so the AVX2 build and the
/// baseline SSE2 build give bit-identical results (no FMA, which would round differently).
fn transform(basis: &[[f32; COLUMNS]; PADDED], x: &[f32; PADDED], out: &mut [f32; COLUMNS]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { transform_avx2(basis, x, out) };
            return;
        }
    }
    transform_generic(basis, x, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn transform_avx2(basis: &[[f32; COLUMNS]; PADDED], x: &[f32; PADDED], out: &mut [f32; COLUMNS]) {
    transform_generic(basis, x, out);
}

/// Σ x², in eight lanes summed in a fixed order (vectorised, and the same on every CPU).
fn energy(x: &[f32; PADDED]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for l in 0..8 {
            lanes[l] += chunk[l] * chunk[l];
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
        + tail
}

#[inline(always)]
fn transform_generic(
    basis: &[[f32; COLUMNS]; PADDED],
    x: &[f32; PADDED],
    out: &mut [f32; COLUMNS],
) {
    let mut even = [0f32; COLUMNS];
    let mut odd = [0f32; COLUMNS];
    for (rows, xs) in basis.chunks_exact(2).zip(x.chunks_exact(2)) {
        for c in 0..COLUMNS {
            even[c] += xs[0] * rows[0][c];
            odd[c] += xs[1] * rows[1][c];
        }
    }
    for c in 0..COLUMNS {
        out[c] = even[c] + odd[c];
    }
}

/// One analysed window.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Window {
    /// Sample position of the first sample of the window.
    pub start: u64,
    /// Detrended DFT: real parts of the eight bins, then imaginary parts.
    pub bins: [f32; 16],
    /// |X_b|² per band.
    pub energy: [f32; 8],
    /// Σ x² after removing the window's mean and linear drift.
    pub total: f32,
}

impl Window {
    /// Combines two adjacent half blocks into a window starting at `start`.
    pub fn combine(start: u64, first: &Half, second: &Half) -> Window {
        let t = tables();
        let n = WINDOW_LEN as f64;
        let sum = first.sum + second.sum;
        let sum_n = first.sum_n + second.sum_n + HALF as f64 * second.sum;
        let sum_sq = first.sum_sq + second.sum_sq;
        // Least-squares fit x ≈ a + b (n - n̄).
        let a = sum / n;
        let centered = sum_n - MEAN_N * sum;
        let b = centered / CENTERED_N_SQ;
        let total = (sum_sq - sum * a - centered * b).max(0.0) as f32;
        let (a, b) = (a as f32, b as f32);
        let mut bins = [0f32; 16];
        let mut energy = [0f32; 8];
        for k in 0..8 {
            let (sr, si) = t.shift[k];
            let (hr, hi) = (second.bins[k], second.bins[k + 8]);
            let re = first.bins[k] + hr * sr - hi * si - a * t.dc[k].0 - b * t.ramp[k].0;
            let im = first.bins[k + 8] + hr * si + hi * sr - a * t.dc[k].1 - b * t.ramp[k].1;
            bins[k] = re;
            bins[k + 8] = im;
            energy[k] = re * re + im * im;
        }
        Window {
            start,
            bins,
            energy,
            total,
        }
    }

    /// Bin `b` as a complex number (re, im).
    pub fn bin(&self, b: usize) -> (f32, f32) {
        (self.bins[b], self.bins[b + 8])
    }
}

/// The band energies of one window, for plots and diagnostics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowReport {
    /// Sample position of the first sample of the window.
    pub start: u64,
    /// Level of the tone each band sees, dBm0 (a Q.23 tone centred on the band at L dBm0
    /// reads L), in the order of [`BAND_FREQUENCIES_HZ`].
    pub band_dbm0: [f32; 8],
    /// Power of the whole window (mean and drift removed) as the dBm0 of an equally powerful
    /// sine.
    pub total_dbm0: f32,
}

impl WindowReport {
    pub(crate) fn new(w: &Window) -> WindowReport {
        WindowReport {
            start: w.start,
            band_dbm0: w.energy.map(bin_energy_to_dbm0),
            total_dbm0: total_energy_to_dbm0(w.total),
        }
    }
}

/// |X|² of a centred tone of peak amplitude A is (A·N/2)².
pub(crate) fn dbm0_to_bin_energy(dbm0: f64) -> f32 {
    let amplitude = crate::DBM0_PEAK * 10f64.powf(dbm0 / 20.0);
    let x = amplitude * WINDOW_LEN as f64 / 2.0;
    (x * x) as f32
}

fn bin_energy_to_dbm0(e: f32) -> f32 {
    let amplitude = 2.0 * (e as f64).sqrt() / WINDOW_LEN as f64;
    (20.0 * (amplitude.max(1e-3) / crate::DBM0_PEAK).log10()) as f32
}

fn total_energy_to_dbm0(total: f32) -> f32 {
    // A sine of peak A has mean power A²/2.
    let amplitude = (2.0 * total as f64 / WINDOW_LEN as f64).sqrt();
    (20.0 * (amplitude.max(1e-3) / crate::DBM0_PEAK).log10()) as f32
}
