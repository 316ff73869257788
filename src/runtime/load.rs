//! How late a shard's timers fire, smoothed: the runtime's own measure of overload, which
//! stops new calls from being placed before the calls in flight lose their audio.
//!
//! A shard's timers are its prompt packets' slots. When the two programs on a 2-core box
//! need more CPU than there is, every wake-up comes late and the prompts of *every* call on
//! the shard skip packets, and the callees' keys are read late or not at all (the load
//! benchmark at 1,600 and 2,400 calls: 10 and 58 ms of mean send jitter, 3 and 229
//! verifications expired). An overloaded runtime therefore tells the dialer to claim nothing
//! new until its timers are on time again: a verification waits in the queue, where another
//! instance of a cluster may take it, instead of ruining the calls already up.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// Weight of one wake-up's lateness in the running mean: 1/128, about the last eighth of a
/// second at the 1,000 wake-ups per second of a shard carrying calls.
const WEIGHT: f64 = 1.0 / 128.0;
/// A shard whose timers fire this late on average is overloaded. The load benchmark on 2
/// cores (scripts/bench-load.sh): every call confirmed at 0.2 ms of mean send jitter (200
/// calls) and 1 ms (800); at 10 ms (1,600 calls, both cores saturated) verifications began
/// to expire. 5 ms is a quarter of a 20 ms packet time (RFC 3551 §4.5), between the two.
pub(crate) const OVERLOAD_ENTER: Duration = Duration::from_millis(5);
/// ... and is not overloaded any more once they fire this late or less on average: the
/// distance between the two thresholds keeps the dialer from flapping at the edge.
pub(crate) const OVERLOAD_LEAVE: Duration = Duration::from_millis(2);

/// The running mean of a shard's timer lateness, with the overload state it implies.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lag {
    mean_us: f64,
    overloaded: bool,
}

/// A change of a shard's overload state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Overloaded,
    Recovered,
}

impl Lag {
    /// One wake-up came `late` after its deadline; a change of state, if this made one.
    pub(crate) fn record(&mut self, late: Duration) -> Option<Change> {
        let late_us = late.as_secs_f64() * 1e6;
        self.mean_us += (late_us - self.mean_us) * WEIGHT;
        let mean = self.mean();
        if !self.overloaded && mean > OVERLOAD_ENTER {
            self.overloaded = true;
            Some(Change::Overloaded)
        } else if self.overloaded && mean <= OVERLOAD_LEAVE {
            self.overloaded = false;
            Some(Change::Recovered)
        } else {
            None
        }
    }

    /// The shard holds no call any more: nothing is late (its timers may not fire again).
    pub(crate) fn idle(&mut self) -> Option<Change> {
        self.mean_us = 0.0;
        std::mem::take(&mut self.overloaded).then_some(Change::Recovered)
    }

    /// The running mean.
    pub(crate) fn mean(&self) -> Duration {
        Duration::from_secs_f64(self.mean_us.max(0.0) / 1e6)
    }

    pub(crate) fn overloaded(&self) -> bool {
        self.overloaded
    }
}

/// What a shard publishes of its [`Lag`] for the threads placing calls.
#[derive(Debug, Default)]
pub(crate) struct ShardLoad {
    overloaded: AtomicBool,
    mean_us: AtomicU32,
}

impl ShardLoad {
    pub(crate) fn publish(&self, lag: &Lag) {
        let us = u32::try_from(lag.mean().as_micros()).unwrap_or(u32::MAX);
        self.mean_us.store(us, Ordering::Relaxed);
        self.overloaded.store(lag.overloaded(), Ordering::Relaxed);
    }

    pub(crate) fn overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// The shard's mean timer lateness, as last published.
    pub(crate) fn mean(&self) -> Duration {
        Duration::from_micros(u64::from(self.mean_us.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn on_time_timers_are_no_overload() {
        let mut lag = Lag::default();
        for i in 0..10_000 {
            // Up to a millisecond late, as a busy but healthy shard wakes.
            assert_eq!(lag.record(Duration::from_micros(i % 1000)), None);
        }
        assert!(!lag.overloaded());
        assert!(lag.mean() < ms(1));
    }

    #[test]
    fn overload_needs_sustained_lateness_and_ends_with_hysteresis() {
        let mut lag = Lag::default();
        // One long stall (a page fault, a slow tick) is not overload.
        assert_eq!(lag.record(ms(100)), None);
        for _ in 0..1000 {
            assert_eq!(lag.record(Duration::ZERO), None);
        }
        // Timers 10 ms late, wake-up after wake-up, are.
        let entered = (0..1000).position(|_| lag.record(ms(10)).is_some());
        let entered = entered.expect("10 ms late for a second is overload");
        assert!(entered > 10, "not on a handful of late wake-ups: {entered}");
        assert!(lag.overloaded());
        // 3 ms late is above the leave threshold: still overloaded, however long.
        for _ in 0..5000 {
            assert_eq!(lag.record(ms(3)), None);
        }
        assert!(lag.overloaded());
        // On time again: recovered, once.
        let changes: Vec<_> = (0..5000)
            .filter_map(|_| lag.record(Duration::ZERO))
            .collect();
        assert_eq!(changes, [Change::Recovered]);
        assert!(!lag.overloaded());
    }

    #[test]
    fn an_idle_shard_is_not_overloaded() {
        let mut lag = Lag::default();
        while lag.record(ms(20)).is_none() {}
        assert!(lag.overloaded());
        assert_eq!(lag.idle(), Some(Change::Recovered));
        assert_eq!(lag.idle(), None);
        assert_eq!(lag.mean(), Duration::ZERO);
        let shared = ShardLoad::default();
        shared.publish(&lag);
        assert!(!shared.overloaded());
    }
}
