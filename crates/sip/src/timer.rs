//! RFC 3261 §17 timers as data: an enum and a small deadline table (quinn-proto style).
//!
//! | timer | role | value (unreliable) | reliable |
//! |---|---|---|---|
//! | A | INVITE client retransmit | T1, doubling | off |
//! | B | INVITE client timeout | 64·T1 | 64·T1 |
//! | D | wait for response retransmits | > 32 s | 0 |
//! | E | non-INVITE client retransmit | T1, doubling to T2 | off |
//! | F | non-INVITE client timeout | 64·T1 | 64·T1 |
//! | G | INVITE server final-response retransmit | T1, doubling to T2 | off |
//! | H | wait for ACK | 64·T1 | 64·T1 |
//! | I | wait for ACK retransmits | T4 | 0 |
//! | J | wait for non-INVITE request retransmits | 64·T1 | 0 |
//! | K | wait for non-INVITE response retransmits | T4 | 0 |
//! | L | INVITE server Accepted state (RFC 6026) | 64·T1 | 64·T1 |
//! | M | INVITE client Accepted state (RFC 6026) | 64·T1 | 64·T1 |

use std::time::{Duration, Instant};

/// RFC 3261 §17.1.1.2: T1 estimate of the round-trip time.
pub const DEFAULT_T1: Duration = Duration::from_millis(500);
/// RFC 3261 §17.1.2.2: T2 cap on non-INVITE retransmit interval.
pub const DEFAULT_T2: Duration = Duration::from_secs(4);
/// RFC 3261 §17.1.2.2: T4 maximum time a message stays in the network.
pub const DEFAULT_T4: Duration = Duration::from_secs(5);
/// RFC 3261 §17.1.1.2: Timer D is at least 32 s for unreliable transports.
pub const TIMER_D_UNRELIABLE: Duration = Duration::from_secs(32);

/// The base timer values. T1/T2/T4 are configurable (RFC 3261 §17: "MAY be changed").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// Round-trip estimate (default 500 ms).
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses (default 4 s).
    pub t2: Duration,
    /// Maximum lifetime of a message in the network (default 5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: DEFAULT_T1,
            t2: DEFAULT_T2,
            t4: DEFAULT_T4,
        }
    }
}

impl TimerConfig {
    /// 64·T1: transaction timeout (Timers B, F, H, J, L, M).
    pub fn timeout(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// One transaction timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// INVITE client retransmit.
    A,
    /// INVITE client timeout.
    B,
    /// INVITE client wait in Completed.
    D,
    /// Non-INVITE client retransmit.
    E,
    /// Non-INVITE client timeout.
    F,
    /// INVITE server response retransmit.
    G,
    /// INVITE server ACK timeout.
    H,
    /// INVITE server wait in Confirmed.
    I,
    /// Non-INVITE server wait in Completed.
    J,
    /// Non-INVITE client wait in Completed.
    K,
    /// INVITE server Accepted (RFC 6026).
    L,
    /// INVITE client Accepted (RFC 6026).
    M,
}

const TIMERS: [Timer; 12] = [
    Timer::A,
    Timer::B,
    Timer::D,
    Timer::E,
    Timer::F,
    Timer::G,
    Timer::H,
    Timer::I,
    Timer::J,
    Timer::K,
    Timer::L,
    Timer::M,
];

/// Deadlines of the timers of one transaction.
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; 12],
}

impl TimerTable {
    fn index(timer: Timer) -> usize {
        timer as usize
    }

    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[Self::index(timer)] = Some(at);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines[Self::index(timer)] = None;
    }

    pub(crate) fn stop_all(&mut self) {
        self.deadlines = [None; 12];
    }

    /// Earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Takes the earliest timer due at `now`, clearing it.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let (i, _) = self
            .deadlines
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.filter(|d| *d <= now).map(|d| (i, d)))
            .min_by_key(|(_, d)| *d)?;
        self.deadlines[i] = None;
        Some(TIMERS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pops_in_deadline_order() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        t.set(Timer::B, t0 + Duration::from_secs(32));
        t.set(Timer::A, t0 + Duration::from_millis(500));
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(500)));
        assert_eq!(t.pop_expired(t0), None);
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(40)), Some(Timer::A));
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(40)), Some(Timer::B));
        assert_eq!(t.next(), None);
        assert_eq!(TimerConfig::default().timeout(), Duration::from_secs(32));
    }
}
