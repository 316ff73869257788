//! A small reorder buffer: packets that arrive ahead of a gap wait up to a window for the
//! missing ones, then the gap is given up as lost. Keyed by extended sequence number
//! ([`crate::stats::Sequence`]), so the wrap is not its concern.
//!
//! The caller offers every packet's number first; a packet that is next in line is handled at
//! once without being copied (the common case), and only packets behind a gap are stored.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Most packets held at once; beyond this the oldest gap is given up early. At 20 ms per packet
/// this is 640 ms of audio, ten times a 60 ms window, so it only bounds memory under attack.
pub const MAX_HELD: usize = 32;

/// Longest reorder window accepted: waiting longer for a packet is no use to a call, and
/// keeps deadline arithmetic far from `Instant` overflow whatever the configuration says.
pub const MAX_WINDOW: Duration = Duration::from_secs(10);

/// Where an offered packet stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Next in line: handle it now, then drain [`Reorder::pop_ready`].
    Now,
    /// Behind a gap: store it with [`Reorder::hold`].
    Hold,
    /// Its place was already passed (released or given up): too late.
    Late,
}

/// The reorder buffer of one SSRC.
#[derive(Clone, Debug)]
pub struct Reorder<T> {
    window: Duration,
    /// The next extended sequence number to release.
    next: Option<u64>,
    held: BTreeMap<u64, (Instant, T)>,
}

impl<T> Reorder<T> {
    /// A buffer that holds packets for at most `window` (capped at [`MAX_WINDOW`]).
    pub fn new(window: Duration) -> Reorder<T> {
        Reorder {
            window: window.min(MAX_WINDOW),
            next: None,
            held: BTreeMap::new(),
        }
    }

    /// Where packet `ext` stands; on [`Admit::Now`] it counts as released.
    pub fn offer(&mut self, ext: u64) -> Admit {
        match self.next {
            Some(next) if ext < next => Admit::Late,
            Some(next) if ext > next => {
                if self.held.contains_key(&ext) {
                    Admit::Late
                } else {
                    Admit::Hold
                }
            }
            _ => {
                self.next = Some(ext + 1);
                Admit::Now
            }
        }
    }

    /// Stores packet `ext` (after [`Admit::Hold`]).
    pub fn hold(&mut self, now: Instant, ext: u64, item: T) {
        self.held.insert(ext, (now, item));
    }

    /// The next packet if it is in line (no gap before it).
    pub fn pop_ready(&mut self) -> Option<(u64, T)> {
        let next = self.next?;
        let (_, item) = self.held.remove(&next)?;
        self.next = Some(next + 1);
        Some((next, item))
    }

    /// The first packet behind a gap, if the gap has been waited for long enough (or too many
    /// packets are held): the gap is given up as lost.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(u64, T)> {
        let overflow = self.held.len() > MAX_HELD;
        let expired = self.deadline().is_some_and(|d| d <= now);
        if overflow || expired {
            self.pop_first()
        } else {
            None
        }
    }

    /// The first packet held, whatever the gap before it (end of stream).
    pub fn pop_first(&mut self) -> Option<(u64, T)> {
        let (ext, (_, item)) = self.held.pop_first()?;
        self.next = Some(ext + 1);
        Some((ext, item))
    }

    /// When the longest-waiting packet's window runs out.
    pub fn deadline(&self) -> Option<Instant> {
        self.held
            .values()
            .map(|(at, _)| *at)
            .min()
            .map(|at| at + self.window)
    }

    /// Forgets the position (the source restarted its sequence); call after draining.
    pub fn reset(&mut self) {
        self.next = None;
        self.held.clear();
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_back_in_order_and_gives_up_gaps() {
        let t0 = Instant::now();
        let w = Duration::from_millis(60);
        let mut r = Reorder::new(w);
        let mut out = Vec::new();
        for (ms, ext) in [(0, 10), (20, 12), (25, 13), (30, 11), (40, 15), (60, 16)] {
            let now = t0 + Duration::from_millis(ms);
            while let Some((e, _)) = r.pop_expired(now) {
                out.push(e);
            }
            match r.offer(ext) {
                Admit::Now => out.push(ext),
                Admit::Hold => r.hold(now, ext, ()),
                Admit::Late => panic!("{ext} late"),
            }
            while let Some((e, _)) = r.pop_ready() {
                out.push(e);
            }
        }
        assert_eq!(out, [10, 11, 12, 13]);
        assert_eq!(r.deadline(), Some(t0 + Duration::from_millis(100)));
        assert_eq!(r.pop_expired(t0 + Duration::from_millis(99)), None);
        assert_eq!(
            r.pop_expired(t0 + Duration::from_millis(100)),
            Some((15, ()))
        );
        assert_eq!(r.pop_ready(), Some((16, ())));
        assert_eq!(r.offer(14), Admit::Late);
        assert!(r.is_empty());
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut r = Reorder::new(Duration::from_secs(1));
        assert_eq!(r.offer(0), Admit::Now);
        for ext in 2..100 {
            assert_eq!(r.offer(ext), Admit::Hold);
            r.hold(t0, ext, ());
            while r.pop_expired(t0).is_some() {}
            assert!(r.len() <= MAX_HELD);
        }
    }
}
