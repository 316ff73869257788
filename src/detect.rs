//! The DTMF receiver over a whole recording on several cores, giving exactly the events one
//! receiver gives reading it from start to end (`callverify dtmf detect`).
//!
//! The audio is cut into segments of [`SEGMENT`] samples. Each segment goes to a worker
//! thread with a fresh receiver, started [`WARM_UP`] samples early so that its window history
//! is full when the segment begins. A fresh receiver and the one that read everything before
//! are in the same state wherever both hold no key: same position, same last windows, same
//! previous half block (the windows are a function of the samples alone), nothing held. So
//! the segments are joined in order like this:
//!
//! ```text
//!  truth (the state a single receiver has at the segment's start)
//!    │ while not (truth idle AND worker idle at the same half-block boundary q):
//!    │     truth reads one more half block of the segment (its events are the real ones)
//!    ▼
//!  q found: the worker's events reported after q are the real ones, and the worker's state
//!  at the segment's end is the truth for the next segment. No q in the whole segment (a key
//!  held across it): truth has read the segment itself and carries on.
//! ```
//!
//! In the usual case (no key held at the boundary) `truth` reads one half block per segment.
//! Memory is at most [`MAX_AHEAD`] + 2 segments of 128 KiB.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use dtmf::{Event, Receiver, WINDOW_HOP};

use crate::audio::{self, AudioError, InputFormat};

/// Samples per segment: 1,280 half blocks of 51 samples (8.2 s at 8 kHz). A multiple of the
/// half block, so that every receiver's windows fall where a single receiver's would.
pub const SEGMENT: usize = 1280 * WINDOW_HOP;
/// Samples a worker reads before its segment: 8 half blocks (51 ms), more than the 5 that
/// fill a receiver's history (its previous half block and four windows).
pub const WARM_UP: usize = 8 * WINDOW_HOP;
/// Segments queued for the workers at once (beyond those they hold and the one being
/// filled): enough to keep them busy while this thread reads, few enough to be no memory.
const IN_FLIGHT: usize = 4;
/// Segments dispatched beyond the oldest not yet joined, at most: bounds the memory held by
/// segments finished out of order.
const MAX_AHEAD: u64 = 8;

/// One segment's work.
struct Job {
    index: u64,
    /// Stream position of the segment's first sample (a multiple of the half block).
    start: u64,
    /// The warm-up samples, then the segment's own.
    samples: Vec<i16>,
    warm: usize,
}

/// What a worker found in one segment.
struct Done {
    job: Job,
    /// Every event, warm-up included.
    events: Vec<Event>,
    /// For each half-block boundary of the segment, from its start: whether the worker held
    /// no key there.
    idle: Vec<bool>,
    /// The worker's receiver at the segment's end.
    end: Receiver,
}

/// Detects digits in `path` with `workers` threads (1: a single receiver, no threads beyond
/// the reader), calling `on_event` with every receiver event in order, `finish` included.
/// Returns the number of samples read; events found before a read error are delivered
/// before it is returned.
pub fn detect(
    path: &Path,
    format: InputFormat,
    workers: usize,
    mut on_event: impl FnMut(Event),
) -> Result<u64, AudioError> {
    if workers <= 1 {
        let mut rx = Receiver::new();
        let read = audio::stream(path, format, |samples| rx.process(samples, &mut on_event));
        rx.finish(&mut on_event);
        return read;
    }
    let mut joiner = Joiner::default();
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(IN_FLIGHT);
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let read = std::thread::scope(|scope| {
        for _ in 0..workers {
            let jobs = Arc::clone(&jobs_rx);
            let done = done_tx.clone();
            scope.spawn(move || {
                loop {
                    // The lock is held only to take a job; a poisoned lock means another
                    // worker panicked, and the scope re-raises that panic.
                    let job = match jobs.lock() {
                        Ok(jobs) => jobs.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    if done.send(work(job)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut cutter = Cutter::default();
        // The file is read and cut on this thread; the workers have the cores.
        let read = audio::read(path, format, |mut samples| {
            while let Some(job) = cutter.push(&mut samples) {
                // A worker held up (the machine is busy) must not let the others run ahead
                // without bound: their segments would wait for its, in memory.
                while job.index >= joiner.next + MAX_AHEAD {
                    let Ok(done) = done_rx.recv() else { break };
                    joiner.add(done, &mut on_event, &mut cutter.free);
                }
                // Workers live as long as the scope; a send fails only if all panicked.
                let _ = jobs_tx.send(job);
                while let Ok(done) = done_rx.try_recv() {
                    joiner.add(done, &mut on_event, &mut cutter.free);
                }
            }
        });
        if let Some(job) = cutter.last() {
            let _ = jobs_tx.send(job);
        }
        drop(jobs_tx);
        for done in done_rx {
            joiner.add(done, &mut on_event, &mut cutter.free);
        }
        read
    });
    joiner.finish(&mut on_event);
    read
}

/// Cuts the stream into jobs of [`SEGMENT`] samples, each with its warm-up.
#[derive(Default)]
struct Cutter {
    index: u64,
    /// Position of the first sample of `current`'s segment.
    start: u64,
    current: Vec<i16>,
    warm: usize,
    /// Buffers of joined segments, reused (no fresh pages to fault in per segment).
    free: Vec<Vec<i16>>,
}

impl Cutter {
    /// Takes samples from the front of `samples` until a segment is complete (returned) or
    /// `samples` is used up (None).
    fn push(&mut self, samples: &mut &[i16]) -> Option<Job> {
        if self.current.capacity() == 0 {
            self.current = self.buffer();
        }
        let own = self.current.len() - self.warm;
        let take = (SEGMENT - own).min(samples.len());
        self.current.extend_from_slice(&samples[..take]);
        *samples = &samples[take..];
        if self.current.len() - self.warm < SEGMENT {
            return None;
        }
        let mut next = self.buffer();
        next.extend_from_slice(&self.current[self.current.len() - WARM_UP..]);
        let job = Job {
            index: self.index,
            start: self.start,
            samples: std::mem::replace(&mut self.current, next),
            warm: self.warm,
        };
        self.index += 1;
        self.start += SEGMENT as u64;
        self.warm = WARM_UP;
        Some(job)
    }

    fn buffer(&mut self) -> Vec<i16> {
        let mut b = self.free.pop().unwrap_or_default();
        b.clear();
        b.reserve_exact(WARM_UP + SEGMENT);
        b
    }

    /// The last, partial segment, if it has samples of its own.
    fn last(&mut self) -> Option<Job> {
        (self.current.len() > self.warm).then(|| Job {
            index: self.index,
            start: self.start,
            samples: std::mem::take(&mut self.current),
            warm: self.warm,
        })
    }
}

/// A worker's pass over one segment: a fresh receiver from the warm-up on, fed a half block
/// at a time so that its state at every boundary is known.
fn work(job: Job) -> Done {
    let mut rx = Receiver::new();
    let mut events = Vec::new();
    rx.fill_in(job.start - job.warm as u64, |e| events.push(e));
    let (warm, own) = job.samples.split_at(job.warm);
    rx.process(warm, |e| events.push(e));
    let mut idle = Vec::with_capacity(own.len() / WINDOW_HOP + 1);
    idle.push(rx.current_digit().is_none());
    for half in own.chunks(WINDOW_HOP) {
        rx.process(half, |e| events.push(e));
        // A partial last half ends on no boundary.
        if half.len() == WINDOW_HOP {
            idle.push(rx.current_digit().is_none());
        }
    }
    Done {
        job,
        events,
        idle,
        end: rx,
    }
}

/// Joins the segments in order (module docs).
#[derive(Default)]
struct Joiner {
    next: u64,
    /// Segments done out of order, waiting for their turn (at most the jobs in flight).
    waiting: BTreeMap<u64, Done>,
    /// A single receiver's state at the start of segment `next` (None before the first).
    truth: Option<Receiver>,
}

impl Joiner {
    /// Takes a finished segment; joins every segment now in turn, handing their buffers to
    /// `free`.
    fn add(&mut self, done: Done, on_event: &mut impl FnMut(Event), free: &mut Vec<Vec<i16>>) {
        self.waiting.insert(done.job.index, done);
        while let Some(done) = self.waiting.remove(&self.next) {
            let done = self.join(done, on_event);
            free.push(done.job.samples);
            self.next += 1;
        }
    }

    fn join(&mut self, done: Done, on_event: &mut impl FnMut(Event)) -> Done {
        let Some(mut truth) = self.truth.take() else {
            // The first segment has no warm-up: its worker is the single receiver.
            done.events.iter().copied().for_each(&mut *on_event);
            self.truth = Some(done.end.clone());
            return done;
        };
        let own = &done.job.samples[done.job.warm..];
        for (boundary, &worker_idle) in done.idle.iter().enumerate() {
            if worker_idle && truth.current_digit().is_none() {
                let q = done.job.start + (boundary * WINDOW_HOP) as u64;
                done.events
                    .iter()
                    .copied()
                    .filter(|e| reported_at(e) > q)
                    .for_each(&mut *on_event);
                self.truth = Some(done.end.clone());
                return done;
            }
            let at = boundary * WINDOW_HOP;
            if at >= own.len() {
                break;
            }
            truth.process(&own[at..(at + WINDOW_HOP).min(own.len())], &mut *on_event);
        }
        // A key held across the whole segment: the single receiver read it all itself.
        self.truth = Some(truth);
        done
    }

    fn finish(&mut self, on_event: &mut impl FnMut(Event)) {
        if let Some(truth) = self.truth.as_mut() {
            truth.finish(on_event);
        }
    }
}

fn reported_at(e: &Event) -> u64 {
    match *e {
        Event::Start { reported_at, .. } | Event::End { reported_at, .. } => reported_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events of one receiver over all of `samples`, fed in pieces of 160 (an RTP packet).
    fn single(samples: &[i16]) -> Vec<Event> {
        let mut rx = Receiver::new();
        let mut events = Vec::new();
        for piece in samples.chunks(160) {
            rx.process(piece, |e| events.push(e));
        }
        rx.finish(|e| events.push(e));
        events
    }

    /// Events of the segmented receiver fed in pieces of `pieces` samples; `reverse_pairs`
    /// hands the joiner every pair of segments in reverse order, as workers finishing out of
    /// order do.
    fn segmented(samples: &[i16], pieces: usize, reverse_pairs: bool) -> Vec<Event> {
        let mut cutter = Cutter::default();
        let mut jobs = Vec::new();
        for mut piece in samples.chunks(pieces) {
            while let Some(job) = cutter.push(&mut piece) {
                jobs.push(job);
            }
        }
        jobs.extend(cutter.last());
        let mut done: Vec<Done> = jobs.into_iter().map(work).collect();
        if reverse_pairs {
            for pair in done.chunks_mut(2) {
                pair.reverse();
            }
        }
        let mut joiner = Joiner::default();
        let mut events = Vec::new();
        let mut free = Vec::new();
        for d in done {
            joiner.add(d, &mut |e| events.push(e), &mut free);
        }
        joiner.finish(&mut |e| events.push(e));
        events
    }

    /// Noise with keys: short presses everywhere (some straddling segment boundaries), and
    /// one key held for longer than a whole segment.
    fn audio() -> Vec<i16> {
        let spec = dtmf::ToneSpec {
            on_ms: 90,
            off_ms: 60,
            ..dtmf::ToneSpec::default()
        };
        let mut samples = Vec::new();
        let keys = "159#*0D";
        while samples.len() < 3 * SEGMENT + 12_345 {
            samples.extend(dtmf::generate(keys, &spec));
        }
        // A key held for 20 s (longer than a segment).
        let long = dtmf::ToneSpec {
            on_ms: 20_000,
            off_ms: 100,
            ..dtmf::ToneSpec::default()
        };
        samples.extend(dtmf::generate("7", &long));
        while samples.len() < 6 * SEGMENT + 777 {
            samples.extend(dtmf::generate(keys, &spec));
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for s in &mut samples {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *s = s.saturating_add(((seed >> 54) as i16) - 512);
        }
        samples
    }

    #[test]
    fn segments_give_exactly_the_events_of_one_receiver() {
        let samples = audio();
        let want = single(&samples);
        let presses = want
            .iter()
            .filter(|e| matches!(e, Event::Start { .. }))
            .count();
        assert!(presses > 150, "{presses} presses");
        assert!(
            want.iter().any(|e| matches!(
                e,
                Event::End { start, end, .. } if end - start > SEGMENT as u64
            )),
            "no press longer than a segment"
        );
        for (pieces, reverse) in [(160, false), (100_003, true), (SEGMENT, false)] {
            assert_eq!(
                segmented(&samples, pieces, reverse),
                want,
                "{pieces} {reverse}"
            );
        }
    }

    #[test]
    fn a_file_shorter_than_a_segment_is_one_job() {
        let samples = dtmf::generate("12#", &dtmf::ToneSpec::default());
        let want = single(&samples);
        assert_eq!(want.len(), 6);
        assert_eq!(segmented(&samples, 1000, false), want);
    }

    #[test]
    fn threads_read_a_file_to_the_same_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.raw");
        let samples = audio();
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        let mut events = Vec::new();
        let n = detect(&path, InputFormat::S16le, 2, |e| events.push(e)).unwrap();
        assert_eq!(n, samples.len() as u64);
        assert_eq!(events, single(&samples));
    }
}
