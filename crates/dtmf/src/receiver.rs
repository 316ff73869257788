//! The DTMF receiver: decisions on top of the windowed DFT of [`crate::window`].
//!
//! # How a digit is decided
//!
//! Every window (102 samples, a new one every 51) is first screened for a *candidate*:
//! the strongest row and column bins are above the level floor, stand out from the other
//! bins of their group (relative peak), have a plausible twist, and hold a fair share of the
//! window's energy. Screening is deliberately loose; it is cheap and runs on every window.
//!
//! A digit *starts* when three consecutive windows (k-2, k-1, k: 25.5 ms of audio, the first
//! and last not overlapping) hold the same candidate and pass the strict tests:
//!
//! * **frequency**: the phase advance of each tone between windows measures its actual
//!   frequency; both tones must be within ±2 % of nominal (Q.24: accept ±1.5 %, reject
//!   ±3.5 %) and steady, to within what the signal's noise allows (a glide is not a key);
//! * with both tones' amplitudes solved at those frequencies (so a ±1.5 % offset costs
//!   nothing and neither tone's sidelobes bias the other): **level** at least −45 dBm0 per
//!   tone, **twist** within 9 dB normal / 8 dB reverse (Q.24: accept 8 / 4 dB), every other
//!   bin 8 dB below its group's tone (**relative peak**), and the two tones carrying at least
//!   82 % (−0.85 dB) of each window's energy (SpanDSP `DTMF_TO_TOTAL_ENERGY`). This last
//!   test is what keeps speech and music out, and because
//!   a window only half filled with tone holds half the share, it also makes windows k-2 and
//!   k each need 84 of their 102 samples in tone: bursts of 21 ms and less never start a
//!   digit, 27.5 ms and more always can (Q.24: reject ≤ 20 ms, accept ≥ 40 ms).
//!
//! The start is reported at the end of window k: 23..30 ms after the tone's onset.
//!
//! A digit *ends* after four consecutive windows without its candidate. A dropout of up to
//! 17 ms fails at most three windows, so it never splits a digit; a pause of 27 ms or more
//! always fails four, so it always separates two presses of the same key (Q.24: ≤ 10 ms
//! dropouts bridged, ≥ 40 ms pauses separate).
//!
//! Start and end are placed to within a couple of milliseconds by the energy of the window
//! that straddles each edge: a window holding m samples of tone at one end holds (m/102)² of
//! the full tone's bin energy.

use crate::digit::Digit;
use crate::ms_to_samples;
use crate::window::{HALF, Half, WINDOW_LEN, Window, WindowReport, dbm0_to_bin_energy, tables};

/// Lowest accepted level per tone, dBm0 (after correcting for frequency offset). Q.24 asks for
/// acceptance down to −25 dBm0 (Table A-1, most administrations) and rejection at −55;
/// SpanDSP's `DTMF_THRESHOLD` sits at −42 dBm0.
pub const MIN_LEVEL_DBM0: f64 = -45.0;
/// Screening floor: the strict floor less the worst window-response loss inside the ±2.5 %
/// frequency tolerance and a partly filled window (dB).
const SCREEN_LEVEL_DBM0: f64 = MIN_LEVEL_DBM0 - 9.0;
/// Normal twist (low-group tone louder) accepted, dB. Q.24 Table A-1: accept up to 8 dB.
const NORMAL_TWIST_DB: f64 = 9.0;
/// Reverse twist (high-group tone louder) accepted, dB. Q.24 Table A-1: accept up to 4 dB;
/// real senders go further (Asterisk's in-band tones arrive with 6-7 dB), and the specification
/// here only asks to reject beyond about 10 dB.
const REVERSE_TWIST_DB: f64 = 8.0;
/// Extra twist allowed at screening, dB: an uncorrected offset bin loses up to 4.4 dB at
/// ±2.5 % on the 1633 Hz column.
const SCREEN_TWIST_SLACK_DB: f64 = 5.0;
/// Every other bin of a group must be this far below the group's tone, dB, once the two
/// tones' own leakage is taken out (SpanDSP `DTMF_RELATIVE_PEAK_ROW/COL`).
const RELATIVE_PEAK_DB: f64 = 8.0;
/// Screening's relative peak on the raw bins, dB: looser, as sidelobes of a tone 8 dB louder
/// in the other group can raise a bin to within 6 dB of the weaker tone.
const SCREEN_RELATIVE_PEAK_DB: f64 = 3.0;
/// Share of the window's energy the two tones must carry (−0.85 dB; SpanDSP
/// `DTMF_TO_TOTAL_ENERGY`).
const TONE_SHARE: f32 = 0.822;
/// Screening share: uncorrected, and partly filled windows still count while a digit is held
/// (a window holding 46 of its 102 samples in tone passes).
const SCREEN_TONE_SHARE: f32 = 0.45;
/// Largest accepted frequency error of either tone, as a fraction of nominal. Q.24 asks to
/// accept ±1.5 % and reject ±3.5 %; the measurement is good to about 0.2 % at 15 dB SNR, so
/// the line sits at 2 %, as close to the must-accept side as that allows: voices whose
/// harmonics fall near a key pair rarely land within 2 % of both tones.
const MAX_FREQUENCY_ERROR: f64 = 0.02;
/// Largest change of the measured frequency between the two window pairs, as a fraction of
/// nominal, however noisy the signal. A held key is a steady tone; a sweep or glide is not.
const MAX_FREQUENCY_DRIFT: f64 = 0.01;
/// The drift limit for a clean signal, as a fraction of nominal; noise widens it by
/// [`DRIFT_NOISE_FACTOR`] times the drift's standard deviation.
const MIN_DRIFT_LIMIT: f64 = 0.002;
const DRIFT_NOISE_FACTOR: f64 = 3.0;
/// Windows without the digit's candidate that end it.
const END_MISSES: u32 = 4;
/// The longest gap [`Receiver::fill_in`] bridges inside a digit, samples (60 ms). Longer gaps
/// end the digit at the gap: after that long nobody knows whether the key was still held.
const MAX_BRIDGE: u64 = ms_to_samples(60);

/// What the receiver reports. Positions are sample indices in the fed stream (including
/// [`Receiver::fill_in`] samples).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A key press was recognised.
    Start {
        digit: Digit,
        /// Estimated first sample of the tone.
        start: u64,
        /// Position at which the receiver became certain (the sample just fed when it fired).
        reported_at: u64,
    },
    /// The key was released (or the stream ended, or a long gap).
    End {
        digit: Digit,
        /// Estimated first sample of the tone (as in `Start`).
        start: u64,
        /// Estimated first sample after the tone.
        end: u64,
        /// Position at which the end was decided.
        reported_at: u64,
    },
}

impl Event {
    /// The key this event is about.
    pub fn digit(&self) -> Digit {
        match *self {
            Event::Start { digit, .. } | Event::End { digit, .. } => digit,
        }
    }
}

/// The screening result of one window.
#[derive(Copy, Clone, Debug, Default)]
struct Screened {
    window: Window,
    /// (row, col) band indices of the candidate, if the window passed screening.
    candidate: Option<(usize, usize)>,
}

/// A digit being held.
#[derive(Copy, Clone, Debug)]
struct Held {
    digit: Digit,
    row: usize,
    col: usize,
    start: u64,
    /// Combined row+col bin energy of a window fully in tone (the strongest seen).
    full_energy: f32,
    /// Start of the last window that held the candidate.
    last_hit: u64,
    misses: u32,
}

/// Windows kept for the three-window decision and the onset estimate.
const HISTORY: usize = 4;

/// A streaming DTMF receiver for 8 kHz 16-bit linear PCM.
///
/// Its state is fixed-size (a few hundred bytes) and nothing is allocated while receiving.
#[derive(Clone, Debug)]
pub struct Receiver {
    /// Samples consumed (including fill-in).
    position: u64,
    /// The half block being gathered and how many samples it holds.
    block: [i16; HALF],
    filled: usize,
    /// The last complete half block, if it is contiguous with `current`.
    previous: Option<Half>,
    /// The last windows, a ring: the newest at `newest`, the oldest just after it; `run` of
    /// them are contiguous and valid. (A ring, not a shifted array: shifting four windows per
    /// window was a tenth of the receiver's time.)
    history: [Screened; HISTORY],
    newest: usize,
    run: usize,
    held: Option<Held>,
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver::new()
    }
}

impl Receiver {
    /// A receiver at stream position 0.
    pub fn new() -> Receiver {
        Receiver {
            position: 0,
            block: [0; HALF],
            filled: 0,
            previous: None,
            history: [Screened::default(); HISTORY],
            newest: HISTORY - 1,
            run: 0,
            held: None,
        }
    }

    /// Samples consumed so far (including fill-in).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The digit currently held, if any.
    pub fn current_digit(&self) -> Option<Digit> {
        self.held.map(|h| h.digit)
    }

    /// Feeds samples; `on_event` is called for every digit start and end they complete.
    pub fn process(&mut self, samples: &[i16], on_event: impl FnMut(Event)) {
        self.run(samples, on_event, |_| {});
    }

    /// As [`Receiver::process`], also handing every analysed window to `on_window` (for
    /// plots and diagnostics).
    pub fn process_with_windows(
        &mut self,
        samples: &[i16],
        on_event: impl FnMut(Event),
        mut on_window: impl FnMut(&WindowReport),
    ) {
        self.run(samples, on_event, |w| on_window(&WindowReport::new(w)));
    }

    fn run(
        &mut self,
        mut samples: &[i16],
        mut on_event: impl FnMut(Event),
        mut on_window: impl FnMut(&Window),
    ) {
        while !samples.is_empty() {
            let done = match samples.split_first_chunk::<HALF>() {
                // A whole half block in the input (the usual case for long inputs):
                // transformed where it lies, without a copy.
                Some((block, rest)) if self.filled == 0 => {
                    samples = rest;
                    self.position += HALF as u64;
                    Half::from_block(block)
                }
                _ => {
                    let take = (HALF - self.filled).min(samples.len());
                    let (now, rest) = samples.split_at(take);
                    self.block[self.filled..self.filled + take].copy_from_slice(now);
                    self.filled += take;
                    self.position += take as u64;
                    samples = rest;
                    if self.filled < HALF {
                        continue;
                    }
                    self.filled = 0;
                    Half::from_block(&self.block)
                }
            };
            if let Some(previous) = self.previous.replace(done) {
                let start = self.position - WINDOW_LEN as u64;
                // Built in its place in the history: a window is copied nowhere.
                self.newest = (self.newest + 1) % HISTORY;
                let slot = &mut self.history[self.newest];
                slot.window = Window::combine(start, &previous, &done);
                slot.candidate = screen(&slot.window);
                on_window(&slot.window);
                self.on_window(&mut on_event);
            }
        }
    }

    /// Declares `samples` lost in transit (a missing RTP packet): time advances, nothing is
    /// analysed across the gap. A digit survives gaps of up to 60 ms; a longer gap ends it
    /// where the gap began.
    pub fn fill_in(&mut self, samples: u64, mut on_event: impl FnMut(Event)) {
        if samples == 0 {
            return;
        }
        let gap_start = self.position;
        self.position += samples;
        self.filled = 0;
        self.previous = None;
        self.run = 0;
        if samples > MAX_BRIDGE {
            self.release(gap_start, &mut on_event);
        }
    }

    /// Ends a held digit at its last hit, or at `limit` if that is earlier.
    fn release(&mut self, limit: u64, on_event: &mut impl FnMut(Event)) {
        if let Some(held) = self.held.take() {
            let end = (held.last_hit + WINDOW_LEN as u64).min(limit);
            on_event(Event::End {
                digit: held.digit,
                start: held.start,
                end,
                reported_at: self.position,
            });
        }
    }

    /// Ends the stream: a digit still held is reported as ended at the last sample that held
    /// it. The receiver can be fed again afterwards (positions continue).
    pub fn finish(&mut self, mut on_event: impl FnMut(Event)) {
        self.release(self.position, &mut on_event);
        self.filled = 0;
        self.previous = None;
        self.run = 0;
    }

    /// Decides on the newest window of the history (just screened).
    fn on_window(&mut self, on_event: &mut impl FnMut(Event)) {
        let screened = &self.history[self.newest];
        let (window, candidate) = (&screened.window, screened.candidate);
        self.run = (self.run + 1).min(HISTORY);

        if let Some(held) = &mut self.held {
            if candidate == Some((held.row, held.col)) {
                held.misses = 0;
                held.last_hit = window.start;
                let e = window.energy[held.row] + window.energy[4 + held.col];
                held.full_energy = held.full_energy.max(e);
            } else {
                held.misses += 1;
            }
        }

        // While a key is held its own windows need no strict test; only another key does.
        let holding_this = self.held.is_some_and(|h| candidate == Some((h.row, h.col)));
        let confirmed = if holding_this { None } else { self.confirm() };
        let held_ended = self.held.is_some_and(|h| h.misses >= END_MISSES);
        let replaced = match (confirmed, &self.held) {
            (Some((digit, ..)), Some(h)) => digit != h.digit,
            _ => false,
        };
        if held_ended || replaced {
            // `held` is Some in both cases.
            if let Some(h) = self.held.take() {
                let end = self.estimate_end(&h);
                on_event(Event::End {
                    digit: h.digit,
                    start: h.start,
                    end,
                    reported_at: self.position,
                });
            }
        }
        if let (Some((digit, row, col)), None) = (confirmed, &self.held) {
            let start = self.estimate_start(row, col);
            let newest = &self.window(HISTORY - 1).window;
            self.held = Some(Held {
                digit,
                row,
                col,
                start,
                full_energy: newest.energy[row] + newest.energy[4 + col],
                last_hit: newest.start,
                misses: 0,
            });
            on_event(Event::Start {
                digit,
                start,
                reported_at: self.position,
            });
        }
    }

    /// The `i`-th of the last windows, oldest (0) to newest (`HISTORY - 1`).
    fn window(&self, i: usize) -> &Screened {
        &self.history[(self.newest + 1 + i) % HISTORY]
    }

    /// The strict three-window test (module docs). Returns the digit and its bands.
    fn confirm(&self) -> Option<(Digit, usize, usize)> {
        if self.run < 3 {
            return None;
        }
        let windows = [
            &self.window(1).window,
            &self.window(2).window,
            &self.window(3).window,
        ];
        let (row, col) = self.window(3).candidate?;
        if (1..3)
            .map(|age| self.window(age))
            .any(|s| s.candidate != Some((row, col)))
        {
            return None;
        }
        let digit = Digit::from_position(row, col)?;
        // Energy tests first, on the tones solved at the frequencies the raw bins suggest:
        // they are cheap and reject most attempts that fail (a window only partly in tone).
        let omega = &tables().omega;
        let (d_row, _) = frequency_offset(windows.map(|w| to_f64(w.bin(row))), omega[row]);
        let (d_col, _) = frequency_offset(windows.map(|w| to_f64(w.bin(4 + col))), omega[4 + col]);
        let mut model = Model::new(row, col, d_row, d_col, FULL);
        let amps = windows.map(|w| model.solve(w));
        let floor = dbm0_to_bin_energy(MIN_LEVEL_DBM0) as f64;
        let n2 = (WINDOW_LEN * WINDOW_LEN) as f64;
        let (mut loudest, mut row_sum, mut col_sum) = (0f64, 0f64, 0f64);
        for (w, &(a, b)) in windows.iter().zip(&amps) {
            // A tone 2·Re(a·e^{jωn}) reads |a·N|² in its bin, the convention of `floor`.
            let (r, c) = (norm2(a) * n2, norm2(b) * n2);
            if model.energy(a, b) < TONE_SHARE as f64 * w.total as f64 {
                return None;
            }
            loudest = loudest.max(r.min(c));
            row_sum += r;
            col_sum += c;
        }
        model.prepare_other_bins();
        if !windows
            .iter()
            .zip(&amps)
            .all(|(w, &(a, b))| model.peaks_stand_out(w, a, b))
        {
            return None;
        }
        // Twist over the three windows together: noise moves a single window's weaker tone by
        // a dB or more at 15 dB SNR.
        if !twist_ok(row_sum as f32, col_sum as f32, 0.0) || loudest < floor {
            return None;
        }
        steady(windows, row, col, (d_row, d_col), &model, amps).then_some((digit, row, col))
    }

    /// Onset of the digit just confirmed on the last three windows: the window before them
    /// holds (m/102)² of the full energy when its last m samples are tone.
    fn estimate_start(&self, row: usize, col: usize) -> u64 {
        let first = &self.window(1).window;
        if self.run < 4 {
            return first.start;
        }
        let before = &self.window(0).window;
        let full = (1..HISTORY)
            .map(|age| &self.window(age).window)
            .map(|w| w.energy[row] + w.energy[4 + col])
            .fold(0f32, f32::max);
        let partial = before.energy[row] + before.energy[4 + col];
        let in_tone = tone_samples(partial, full);
        (before.start + WINDOW_LEN as u64).saturating_sub(in_tone)
    }

    /// Where the held tone stopped: the window after the last hit holds (m/102)² of the full
    /// energy when its first m samples are tone.
    fn estimate_end(&self, held: &Held) -> u64 {
        let after_start = held.last_hit + HALF as u64;
        let after = (0..HISTORY)
            .rev()
            .map(|age| self.window(age))
            .take(self.run)
            .find(|s| s.window.start == after_start);
        match after {
            Some(s) => {
                let partial = s.window.energy[held.row] + s.window.energy[4 + held.col];
                after_start + tone_samples(partial, held.full_energy)
            }
            None => held.last_hit + WINDOW_LEN as u64,
        }
    }
}

/// Samples of tone, at one end of a window, that give `partial` bin energy when a full window
/// gives `full`.
fn tone_samples(partial: f32, full: f32) -> u64 {
    if full <= 0.0 {
        return 0;
    }
    let fraction = (partial / full).clamp(0.0, 1.0).sqrt();
    (fraction * WINDOW_LEN as f32).round() as u64
}

/// The loose per-window test: strongest row and column, level, relative peak, twist, share.
fn screen(w: &Window) -> Option<(usize, usize)> {
    let e = &w.energy;
    let row = argmax(&e[..4]);
    let col = argmax(&e[4..]);
    let (r, c) = (e[row], e[4 + col]);
    let floor = dbm0_to_bin_energy(SCREEN_LEVEL_DBM0);
    if r < floor || c < floor {
        return None;
    }
    let peak = db_to_ratio(SCREEN_RELATIVE_PEAK_DB);
    for i in 0..4 {
        if (i != row && e[i] * peak > r) || (i != col && e[4 + i] * peak > c) {
            return None;
        }
    }
    if !twist_ok(r, c, SCREEN_TWIST_SLACK_DB) || !share_ok(r + c, w.total, SCREEN_TONE_SHARE) {
        return None;
    }
    Some((row, col))
}

fn argmax(e: &[f32]) -> usize {
    let mut best = 0;
    for i in 1..e.len() {
        if e[i] > e[best] {
            best = i;
        }
    }
    best
}

fn db_to_ratio(db: f64) -> f32 {
    10f64.powf(db / 10.0) as f32
}

/// Twist test on row energy `r` and column energy `c`, with `slack` dB added to both limits.
fn twist_ok(r: f32, c: f32, slack: f64) -> bool {
    r <= c * db_to_ratio(NORMAL_TWIST_DB + slack) && c <= r * db_to_ratio(REVERSE_TWIST_DB + slack)
}

/// Do tones of combined bin energy `tones` carry at least `share` of the window's `total`?
/// A centred tone of bin energy E has 2E/N of window energy.
fn share_ok(tones: f32, total: f32, share: f32) -> bool {
    2.0 * tones >= share * total * WINDOW_LEN as f32
}

type Complex = (f64, f64);

fn to_f64(z: (f32, f32)) -> Complex {
    (z.0 as f64, z.1 as f64)
}

fn norm2(z: Complex) -> f64 {
    z.0 * z.0 + z.1 * z.1
}

/// z · conj(a)
fn times_conj(z: Complex, a: Complex) -> Complex {
    (z.0 * a.0 + z.1 * a.1, z.1 * a.0 - z.0 * a.1)
}

fn times(a: Complex, b: Complex) -> Complex {
    (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0)
}

fn expj(phase: f64) -> Complex {
    (phase.cos(), phase.sin())
}

/// The frequency offset δ (radians per sample) of a tone near `omega`, from its complex
/// amplitude `z` in three consecutive windows (one hop apart), and the change of δ between
/// the two window pairs (a steady tone has none).
///
/// A tone at ω+δ advances its phase by (ω+δ)·hop from one window to the next. One hop
/// measures δ without ambiguity up to ±π/51 (±78 Hz); the first and last windows, two hops
/// apart, measure it twice as finely and are unwrapped next to the one-hop estimate.
fn frequency_offset(z: [Complex; 3], omega: f64) -> (f64, f64) {
    let hop = HALF as f64;
    let back = expj(-omega * hop);
    let p1 = times(times_conj(z[1], z[0]), back);
    let p2 = times(times_conj(z[2], z[1]), back);
    let drift = (p1.1.atan2(p1.0) - p2.1.atan2(p2.0)) / hop;
    let coarse = (p1.1 + p2.1).atan2(p1.0 + p2.0) / hop;
    let q = times(times_conj(z[2], z[0]), expj(-omega * 2.0 * hop));
    let fine = q.1.atan2(q.0);
    let turns = ((coarse * 2.0 * hop - fine) / std::f64::consts::TAU).round();
    ((fine + turns * std::f64::consts::TAU) / (2.0 * hop), drift)
}

/// Rounds of the offset/occupancy refinement (each shrinks the error about fivefold).
const REFINEMENTS: usize = 2;

/// The part of a window a tone occupies, as sample indices [from, to).
type Span = (usize, usize);
const FULL: Span = (0, WINDOW_LEN);

/// Measures both tones' frequency offsets over three consecutive windows, starting from the
/// raw estimate `(d_row, d_col)` (radians per sample) and the tones `full` solved with it by
/// `first`: true if both are within [`MAX_FREQUENCY_ERROR`] and steady.
///
/// The first window may hold the tone's onset and the last its end. Solving such a window as
/// if the tone filled it skews the phase (a tone δ off its bin reads with the phase of the
/// occupied part's centre) and the other tone's leakage (a cut tone leaks differently), enough
/// to fake half a percent of drift at ±1.5 %. So the occupancy of the outer windows is taken
/// from their amplitude relative to the middle window (which the tone always fills: the outer
/// ones hold 84 samples or more), and those windows are solved over the occupied part only.
/// The offsets and the occupancy model depend on each other; [`REFINEMENTS`] rounds settle
/// them.
///
/// "Steady" allows for noise: the drift limit widens with the phase noise the windows' residual
/// energy implies, so that a clean signal must be steady to a fraction of a percent (a dual
/// sweep of one octave per second drifts 0.44 % between window pairs) while a noisy one at the
/// specification's 15 dB SNR may wander by its noise.
fn steady(
    windows: [&Window; 3],
    row: usize,
    col: usize,
    (mut d_row, mut d_col): (f64, f64),
    first: &Model,
    full: [(Complex, Complex); 3],
) -> bool {
    let omega = &tables().omega;
    let (w_row, w_col) = (omega[row], omega[4 + col]);
    let strength = |z: (Complex, Complex)| (norm2(z.0) + norm2(z.1)).sqrt();
    let reference = strength(full[1]).max(1e-9);
    let missing =
        |z| (WINDOW_LEN as f64 * (1.0 - (strength(z) / reference).min(1.0))).round() as usize;
    let spans = [
        (missing(full[0]), WINDOW_LEN),
        FULL,
        (0, WINDOW_LEN - missing(full[2])),
    ];
    let (mut drift_row, mut drift_col) = (0.0, 0.0);
    let mut amps = full;
    for _ in 0..REFINEMENTS {
        amps = [0, 1, 2].map(|i| Model::new(row, col, d_row, d_col, spans[i]).solve(windows[i]));
        (d_row, drift_row) = frequency_offset(amps.map(|a| a.0), w_row);
        (d_col, drift_col) = frequency_offset(amps.map(|a| a.1), w_col);
    }
    // Phase noise of each tone in each window: σ² ≈ residual / (2·|a·N|²) (white noise puts
    // its window energy per sample into each bin); drift is a second difference of phases.
    let n2 = (WINDOW_LEN * WINDOW_LEN) as f64;
    let residual = [0, 1, 2].map(|i| {
        let (a, b) = full[i];
        (windows[i].total as f64 - first.energy(a, b)).max(0.0)
    });
    let drift_noise = |pick: fn(&(Complex, Complex)) -> Complex, w: f64| {
        let var = |i: usize| residual[i] / (2.0 * norm2(pick(&amps[i])).max(1e-9) * n2);
        (var(0) + 4.0 * var(1) + var(2)).sqrt() / (HALF as f64 * w)
    };
    let checks = [
        (d_row, drift_row, w_row, drift_noise(|a| a.0, w_row)),
        (d_col, drift_col, w_col, drift_noise(|a| a.1, w_col)),
    ];
    checks.into_iter().all(|(d, drift, w, noise)| {
        let limit = (MIN_DRIFT_LIMIT + DRIFT_NOISE_FACTOR * noise).min(MAX_FREQUENCY_DRIFT);
        (d / w).abs() <= MAX_FREQUENCY_ERROR && (drift / w).abs() <= limit
    })
}

/// Σ_{n∈span} e^{jΔn}: the response, at a bin, to a complex tone Δ away from it that occupies
/// `span` of the window.
fn response_over(delta: f64, span: Span) -> Complex {
    // With w = e^{jΔ/2}: Σ_{n=a}^{b-1} e^{jΔn} = w^{a+b-1} · sin(LΔ/2) / sin(Δ/2), L = b - a.
    // One sin_cos and complex powers cost a fraction of the four transcendental calls.
    let len = span.1 - span.0;
    let (sin, cos) = (delta / 2.0).sin_cos();
    let w = (cos, sin);
    let magnitude = if sin.abs() < 1e-12 {
        len as f64
    } else {
        power(w, len).1 / sin
    };
    let phase = power(w, span.0 + span.1 - 1);
    (magnitude * phase.0, magnitude * phase.1)
}

/// z^n by squaring (n ≤ 2·WINDOW_LEN here: at most eight squarings).
fn power(mut z: Complex, mut n: usize) -> Complex {
    let mut out = (1.0, 0.0);
    while n > 0 {
        if n & 1 == 1 {
            out = times(out, z);
        }
        z = times(z, z);
        n >>= 1;
    }
    out
}

/// The two-tone model of one window: x[n] = 2·Re(a·e^{j·f_r·n}) + 2·Re(b·e^{j·f_c·n}) for n
/// in `span` (zero elsewhere), with f_r and f_c the measured row and column frequencies.
///
/// Each bin sees its own tone through the window response at the tone's offset, and also the
/// other tone and both negative-frequency images through the response's sidelobes. With
/// 8 dB of twist the louder tone's sidelobe moves the weaker tone's bin by ±1.5 dB; solving
/// the 4×4 real system removes that, so twist and share are measured on the tones alone.
/// The responses depend only on the frequencies and the span, so one model serves all the
/// windows that share them.
struct Model {
    row: usize,
    col: usize,
    /// Per bin (the two tones' bins, and the other six after
    /// [`Model::prepare_other_bins`]): the response to [row tone, its image, column tone, its
    /// image].
    at_bin: [[Complex; 4]; 8],
    /// Frequencies of [row tone, its image, column tone, its image], radians per sample.
    freqs: [f64; 4],
    span: Span,
    /// Σ_{n∈span} e^{j(ν_i-ν_j)n} for the four tone frequencies ν: what the energy of the
    /// model is made of.
    cross: [[Complex; 4]; 4],
}

impl Model {
    /// The model for tones `d_row`/`d_col` off the row/column bins over `span`.
    fn new(row: usize, col: usize, d_row: f64, d_col: f64, span: Span) -> Model {
        let omega = &tables().omega;
        let (fr, fc) = (omega[row] + d_row, omega[4 + col] + d_col);
        let freqs = [fr, -fr, fc, -fc];
        let mut at_bin = [[(0.0, 0.0); 4]; 8];
        for bin in [row, 4 + col] {
            at_bin[bin] = freqs.map(|f| response_over(f - omega[bin], span));
        }
        let mut cross = [[(0.0, 0.0); 4]; 4];
        for i in 0..4 {
            for j in i..4 {
                let k = response_over(freqs[i] - freqs[j], span);
                cross[i][j] = k;
                cross[j][i] = (k.0, -k.1);
            }
        }
        Model {
            row,
            col,
            at_bin,
            cross,
            freqs,
            span,
        }
    }

    /// Adds the six other bins' responses, which only the relative peak test needs.
    fn prepare_other_bins(&mut self) {
        let omega = &tables().omega;
        for bin in (0..8).filter(|&b| b != self.row && b != 4 + self.col) {
            self.at_bin[bin] = self.freqs.map(|f| response_over(f - omega[bin], self.span));
        }
    }

    /// Solves a window's row and column bins for the complex amplitudes (a, b).
    fn solve(&self, w: &Window) -> (Complex, Complex) {
        let mut m = [[0f64; 5]; 4];
        for (eq, bin) in [(0usize, self.row), (2, 4 + self.col)] {
            let k = self.at_bin[bin];
            let observed = to_f64(w.bin(bin));
            // Coefficients of a, conj(a), b, conj(b): u·K + conj(u)·K' for u = ur + j·ui.
            for (unknown, (direct, image)) in [(0usize, (k[0], k[1])), (2, (k[2], k[3]))] {
                m[eq][unknown] = direct.0 + image.0;
                m[eq][unknown + 1] = -direct.1 + image.1;
                m[eq + 1][unknown] = direct.1 + image.1;
                m[eq + 1][unknown + 1] = direct.0 - image.0;
            }
            m[eq][4] = observed.0;
            m[eq + 1][4] = observed.1;
        }
        let u = solve4(m);
        ((u[0], u[1]), (u[2], u[3]))
    }

    /// The tones' complex exponentials with their coefficients, [a, ā, b, b̄].
    fn terms(a: Complex, b: Complex) -> [Complex; 4] {
        [a, (a.0, -a.1), b, (b.0, -b.1)]
    }

    /// Σ_{n∈span} x[n]² of the two solved tones: the energy they account for in the window.
    /// Exact, so that a window fully in tone has a share of 1 whatever the tones' phases (the
    /// plain 2|X|²/N estimate swings by ±5 % over 102 samples).
    fn energy(&self, a: Complex, b: Complex) -> f64 {
        let c = Model::terms(a, b);
        let mut energy = 0.0;
        for i in 0..4 {
            for j in 0..4 {
                energy += times(times_conj(c[i], c[j]), self.cross[i][j]).0;
            }
        }
        energy
    }

    /// Relative peak test on what the two solved tones leave in the other six bins: each must
    /// be [`RELATIVE_PEAK_DB`] below the tone of its group. (Raw bins cannot be used under
    /// strong twist: the louder tone's sidelobes land on the other group's bins.)
    fn peaks_stand_out(&self, w: &Window, a: Complex, b: Complex) -> bool {
        let n2 = (WINDOW_LEN * WINDOW_LEN) as f64;
        let limit = 10f64.powf(-RELATIVE_PEAK_DB / 10.0);
        let c = Model::terms(a, b);
        (0..8)
            .filter(|&i| i != self.row && i != 4 + self.col)
            .all(|i| {
                let mut residual = to_f64(w.bin(i));
                for (ci, k) in c.iter().zip(self.at_bin[i]) {
                    let leak = times(*ci, k);
                    residual = (residual.0 - leak.0, residual.1 - leak.1);
                }
                let own = if i < 4 { a } else { b };
                norm2(residual) <= limit * norm2(own) * n2
            })
    }
}

/// Gaussian elimination with partial pivoting on an augmented 4×5 matrix. The systems here
/// are dominated by their diagonal (each bin mostly sees its own tone), so they are well
/// conditioned; a singular one yields zeros.
fn solve4(mut m: [[f64; 5]; 4]) -> [f64; 4] {
    for i in 0..4 {
        let pivot = (i..4)
            .max_by(|&a, &b| m[a][i].abs().total_cmp(&m[b][i].abs()))
            .unwrap_or(i);
        m.swap(i, pivot);
        if m[i][i].abs() < 1e-9 {
            return [0.0; 4];
        }
        let pivot_row = m[i];
        for row in m.iter_mut().skip(i + 1) {
            let f = row[i] / pivot_row[i];
            for (x, p) in row.iter_mut().zip(pivot_row).skip(i) {
                *x -= f * p;
            }
        }
    }
    let mut x = [0f64; 4];
    for i in (0..4).rev() {
        let tail: f64 = (i + 1..4).map(|c| m[i][c] * x[c]).sum();
        x[i] = (m[i][4] - tail) / m[i][i];
    }
    x
}
