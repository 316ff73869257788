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
use std::time::{Duration, Instant};

/// How far back the running mean looks: each wake-up's lateness weighs by the time since the
/// previous one over this (at most 1), so a 30 ms stall counts 30 times as much as the 1 ms
/// wake-ups after it, and the mean is lateness over time, not over wake-ups.
const HORIZON: Duration = Duration::from_millis(125);
/// A shard whose timers fire this late on average is overloaded. The load benchmark on 2
/// cores (scripts/bench-load.sh): every call confirmed at 0.2 ms of mean send jitter (200
/// calls) and 1 ms (800); at 10 ms (1,600 calls, both cores saturated) verifications began
/// to expire. 5 ms is a quarter of a 20 ms packet time (RFC 3551 §4.5), between the two.
const OVERLOAD_ENTER: Duration = Duration::from_millis(5);
/// ... and is not overloaded any more once they fire this late or less on average: the
/// distance between the two thresholds keeps the dialer from flapping at the edge.
const OVERLOAD_LEAVE: Duration = Duration::from_millis(2);

/// The running mean of a shard's timer lateness, with the overload state it implies.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lag {
    mean_us: f64,
    overloaded: bool,
    last: Option<Instant>,
}

/// A change of a shard's overload state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Overloaded,
    Recovered,
}

impl Lag {
    /// A wake-up at `now` came `late` after its deadline; a change of state, if this made one.
    pub(crate) fn record(&mut self, now: Instant, late: Duration) -> Option<Change> {
        // The first wake-up weighs as long as it was late.
        let since = self
            .last
            .map_or(late, |last| now.saturating_duration_since(last));
        self.last = Some(now);
        let weight = (since.as_secs_f64() / HORIZON.as_secs_f64()).min(1.0);
        let late_us = late.as_secs_f64() * 1e6;
        self.mean_us += (late_us - self.mean_us) * weight;
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
        self.last = None;
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

    /// A shard waking every `step`, each time `late`, for `total`; the changes seen.
    fn run(
        lag: &mut Lag,
        t: &mut Instant,
        step: Duration,
        late: Duration,
        total: Duration,
    ) -> Vec<Change> {
        let end = *t + total;
        let mut changes = Vec::new();
        while *t < end {
            *t += step;
            changes.extend(lag.record(*t, late));
        }
        changes
    }

    #[test]
    fn on_time_timers_are_no_overload() {
        let (mut lag, mut t) = (Lag::default(), Instant::now());
        for i in 0..10_000 {
            // Up to a millisecond late, as a busy but healthy shard wakes.
            t += ms(1);
            assert_eq!(lag.record(t, Duration::from_micros(i % 1000)), None);
        }
        assert!(!lag.overloaded());
        assert!(lag.mean() < ms(1));
    }

    #[test]
    fn overload_needs_sustained_lateness_and_ends_with_hysteresis() {
        let (mut lag, mut t) = (Lag::default(), Instant::now());
        // One long stall (a page fault, a slow tick) flags the shard for a moment only: a
        // fraction of a second of on-time wake-ups ends it.
        t += ms(40);
        assert_eq!(lag.record(t, ms(40)), Some(Change::Overloaded));
        assert_eq!(
            run(&mut lag, &mut t, ms(1), Duration::ZERO, ms(400)),
            [Change::Recovered]
        );
        // Timers 10 ms late, wake-up after wake-up, are; within about the horizon.
        let mut entered = None;
        for i in 0..1000 {
            t += ms(1);
            if lag.record(t, ms(10)).is_some() {
                entered = Some(i);
                break;
            }
        }
        let entered = entered.expect("10 ms late for a second is overload");
        assert!((10..=200).contains(&entered), "after {entered} ms");
        assert!(lag.overloaded());
        // 3 ms late is above the leave threshold: still overloaded, however long.
        assert!(run(&mut lag, &mut t, ms(1), ms(3), ms(5000)).is_empty());
        assert!(lag.overloaded());
        // On time again: recovered, once.
        assert_eq!(
            run(&mut lag, &mut t, ms(1), Duration::ZERO, ms(5000)),
            [Change::Recovered]
        );
        assert!(!lag.overloaded());
    }

    #[test]
    fn a_stall_every_few_wake_ups_counts_by_its_time() {
        // A loop that stalls 30 ms, then catches up with 29 quick wake-ups on time: late most
        // of the time, although most wake-ups are on time.
        let (mut lag, mut t) = (Lag::default(), Instant::now());
        let mut changes = Vec::new();
        for _ in 0..50 {
            t += ms(30);
            changes.extend(lag.record(t, ms(30)));
            changes.extend(run(&mut lag, &mut t, ms(1), Duration::ZERO, ms(29)));
        }
        assert_eq!(changes.first(), Some(&Change::Overloaded), "{changes:?}");
        assert!(lag.overloaded(), "{changes:?}, mean {:?}", lag.mean());
    }

    #[test]
    fn an_idle_shard_is_not_overloaded() {
        let (mut lag, mut t) = (Lag::default(), Instant::now());
        while lag.record(t, ms(20)).is_none() {
            t += ms(1);
        }
        assert!(lag.overloaded());
        assert_eq!(lag.idle(), Some(Change::Recovered));
        assert_eq!(lag.idle(), None);
        assert_eq!(lag.mean(), Duration::ZERO);
        let shared = ShardLoad::default();
        shared.publish(&lag);
        assert!(!shared.overloaded());
    }
}
