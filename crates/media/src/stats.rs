//! Per-source receive bookkeeping of RFC 3550 appendix A: sequence numbers extended across the
//! wrap and checked for jumps (A.1), loss (A.3), duplicates, and interarrival jitter (A.8).

use std::time::Instant;

/// A jump forward of this many sequence numbers or more is not believed until the next packet
/// confirms it (RFC 3550 A.1 `MAX_DROPOUT`).
pub const MAX_DROPOUT: u16 = 3000;
/// A packet this many numbers or fewer behind the highest is late or a duplicate, not a
/// restart (RFC 3550 A.1 `MAX_MISORDER`).
pub const MAX_MISORDER: u16 = 100;
/// Sequence number modulus (RFC 3550 A.1 `RTP_SEQ_MOD`).
const SEQ_MOD: u64 = 1 << 16;
/// Received sequence numbers remembered behind the highest, to tell duplicates from late
/// packets.
const SEEN_WINDOW: u64 = 128;

/// How a sequence number relates to what came before.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    /// The first packet, or the highest so far (possibly after a gap).
    Ahead,
    /// Behind the highest, not seen before: reordered.
    Reordered,
    /// Already received.
    Duplicate,
    /// Too far behind to know (more than 128 back).
    TooOld,
    /// A large jump not yet confirmed by a second packet (A.1 `bad_seq`): dropped.
    Jump,
    /// The second packet after a large jump: the source restarted its sequence (A.1).
    Restarted,
}

/// RFC 3550 A.1 per-source sequence state, with sequence numbers extended to 64 bits.
///
/// Internally the cycle count starts at one full cycle so that a packet from just before the
/// first one (across a wrap) still has a non-negative extended number.
#[derive(Clone, Debug)]
pub struct Sequence {
    max_seq: u16,
    /// Wrap count × 2^16, plus the initial offset of one cycle.
    cycles: u64,
    base: u64,
    bad_seq: Option<u16>,
    /// Packets received since the first (or the restart), not counting duplicates.
    received: u64,
    /// Bit i: extended number `highest - i` received.
    seen: u128,
}

impl Sequence {
    /// State after the first packet `seq`.
    pub fn new(seq: u16) -> Sequence {
        Sequence {
            max_seq: seq,
            cycles: SEQ_MOD,
            base: SEQ_MOD + u64::from(seq),
            bad_seq: None,
            received: 1,
            seen: 1,
        }
    }

    /// Highest extended sequence number (internal numbering).
    pub fn highest(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    /// Highest sequence number received, extended with the wrap count as RTCP reports it
    /// (RFC 3550 §6.4.1, 32 bits).
    pub fn extended_max(&self) -> u32 {
        (self.highest() - SEQ_MOD) as u32
    }

    /// Packets received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected from the first to the highest (A.3).
    pub fn expected(&self) -> u64 {
        self.highest().saturating_sub(self.base) + 1
    }

    /// Cumulative number of packets lost (A.3).
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// Takes in sequence number `seq`; returns its status and extended number.
    pub fn update(&mut self, seq: u16) -> (SeqStatus, u64) {
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta == 0 {
            return (SeqStatus::Duplicate, self.highest());
        }
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += SEQ_MOD;
            }
            self.max_seq = seq;
            let shift = u64::from(udelta);
            self.seen = if shift >= SEEN_WINDOW {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.received += 1;
            self.bad_seq = None;
            return (SeqStatus::Ahead, self.highest());
        }
        if udelta <= u16::MAX - MAX_MISORDER {
            // A.1: a big jump is believed only when the next packet follows it.
            if self.bad_seq == Some(seq) {
                *self = Sequence::new(seq);
                return (SeqStatus::Restarted, self.highest());
            }
            self.bad_seq = Some(seq.wrapping_add(1));
            return (SeqStatus::Jump, self.highest());
        }
        // Behind the highest by 1..=MAX_MISORDER (modulo 2^16).
        let back = u64::from(self.max_seq.wrapping_sub(seq));
        let ext = self.highest().saturating_sub(back);
        if back >= SEEN_WINDOW {
            return (SeqStatus::TooOld, ext);
        }
        let bit = 1u128 << back;
        if self.seen & bit != 0 {
            return (SeqStatus::Duplicate, ext);
        }
        self.seen |= bit;
        self.received += 1;
        (SeqStatus::Reordered, ext)
    }
}

/// RFC 3550 A.8 interarrival jitter, in timestamp units, kept ×16 as in the RFC's integer form.
#[derive(Clone, Debug, Default)]
pub struct Jitter {
    /// Arrival clock origin.
    base: Option<Instant>,
    /// Relative transit time of the last packet.
    transit: Option<u32>,
    /// Jitter × 16.
    scaled: u32,
}

impl Jitter {
    /// Accounts a packet with RTP `timestamp` arriving at `now`, on a `clock_hz` media clock.
    pub fn update(&mut self, now: Instant, timestamp: u32, clock_hz: u32) {
        let base = *self.base.get_or_insert(now);
        let elapsed = now.saturating_duration_since(base).as_nanos();
        let arrival = (elapsed * u128::from(clock_hz) / 1_000_000_000) as u64 as u32;
        let transit = arrival.wrapping_sub(timestamp);
        if let Some(prev) = self.transit.replace(transit) {
            let d = (transit.wrapping_sub(prev) as i32).unsigned_abs();
            // J += (|D| - J) / 16, with J kept × 16 (A.8).
            let j = i64::from(self.scaled) + i64::from(d) - ((i64::from(self.scaled) + 8) >> 4);
            self.scaled = j.clamp(0, i64::from(u32::MAX)) as u32;
        }
    }

    /// Restarts after a discontinuity (source restart, codec change).
    pub fn reset(&mut self) {
        self.transit = None;
    }

    /// Jitter in timestamp units.
    pub fn units(&self) -> u32 {
        self.scaled >> 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn extends_across_the_wrap() {
        let mut s = Sequence::new(65534);
        assert_eq!(s.update(65535).0, SeqStatus::Ahead);
        assert_eq!(s.update(0).0, SeqStatus::Ahead);
        assert_eq!(s.update(1).0, SeqStatus::Ahead);
        assert_eq!(s.extended_max(), 65536 + 1);
        assert_eq!(s.lost(), 0);
        // A late packet from before the wrap.
        let mut s = Sequence::new(65533);
        s.update(0);
        let (status, ext) = s.update(65535);
        assert_eq!(status, SeqStatus::Reordered);
        assert_eq!(ext + 1, s.highest());
        assert_eq!(s.lost(), 1); // 65534
        assert_eq!(s.update(65535).0, SeqStatus::Duplicate);
        // A packet from just before the first one ever seen.
        let mut s = Sequence::new(0);
        assert_eq!(s.update(65535).0, SeqStatus::Reordered);
    }

    #[test]
    fn loss_and_restart() {
        let mut s = Sequence::new(100);
        s.update(101);
        s.update(104);
        assert_eq!(s.lost(), 2);
        // A jump is believed on the second packet.
        assert_eq!(s.update(40_000).0, SeqStatus::Jump);
        assert_eq!(s.update(40_001).0, SeqStatus::Restarted);
        assert_eq!(s.update(40_002).0, SeqStatus::Ahead);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.received(), 2);
    }

    #[test]
    fn jitter_of_a_steady_stream_is_zero_and_grows_with_delay() {
        let t0 = Instant::now();
        let mut j = Jitter::default();
        for i in 0..50u32 {
            j.update(t0 + Duration::from_millis(20 * u64::from(i)), i * 160, 8000);
        }
        assert_eq!(j.units(), 0);
        // Alternate 0 and 10 ms of extra delay: |D| = 80 units, J converges to 80.
        for i in 50..1000u32 {
            let extra = if i % 2 == 0 { 10 } else { 0 };
            j.update(
                t0 + Duration::from_millis(20 * u64::from(i) + extra),
                i * 160,
                8000,
            );
        }
        assert!((78..=80).contains(&j.units()), "{}", j.units());
    }
}
