//! Per-number and per-client rate limits: sliding-window logs in memory (one instance; a
//! shared store would hold them when several instances serve one queue).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many tracked keys, empty windows are dropped.
const MAX_IDLE_KEYS: usize = 10_000;

/// One limit to check: at most `max` events per `window` for `key` (0: no limit).
#[derive(Clone, Debug)]
pub struct Limit {
    pub key: String,
    pub max: u32,
    pub window: Duration,
    /// Named in the 429 message.
    pub what: &'static str,
}

/// Events taken by [`RateLimiter::acquire`], to give back when nothing was created.
#[derive(Debug)]
pub struct Reservation {
    keys: Vec<String>,
    at: Instant,
}

/// A limit was reached.
#[derive(Debug, PartialEq, Eq)]
pub struct Limited {
    pub what: &'static str,
    pub retry_after: Duration,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter::default()
    }

    /// Takes one event from every limit, or none when any is exhausted.
    pub fn acquire(&self, limits: &[Limit], now: Instant) -> Result<Reservation, Limited> {
        // The map is consistent after every statement: a panic while holding it breaks nothing.
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > MAX_IDLE_KEYS {
            windows.retain(|_, w| {
                w.back()
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(3600))
            });
        }
        let mut worst: Option<Limited> = None;
        for limit in limits.iter().filter(|l| l.max > 0) {
            let window = windows.entry(limit.key.clone()).or_default();
            while window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= limit.window)
            {
                window.pop_front();
            }
            if window.len() >= limit.max as usize {
                let oldest = window[window.len() - limit.max as usize];
                let retry_after = (oldest + limit.window).saturating_duration_since(now);
                if worst.as_ref().is_none_or(|w| w.retry_after < retry_after) {
                    worst = Some(Limited {
                        what: limit.what,
                        retry_after,
                    });
                }
            }
        }
        if let Some(limited) = worst {
            return Err(limited);
        }
        let keys: Vec<String> = limits
            .iter()
            .filter(|l| l.max > 0)
            .map(|l| l.key.clone())
            .collect();
        for key in &keys {
            windows.entry(key.clone()).or_default().push_back(now);
        }
        Ok(Reservation { keys, at: now })
    }

    /// Gives back a reservation (the request created nothing).
    pub fn release(&self, reservation: Reservation) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        for key in reservation.keys {
            if let Some(window) = windows.get_mut(&key)
                && let Some(pos) = window.iter().rposition(|t| *t == reservation.at)
            {
                window.remove(pos);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_slides_and_release_gives_back() {
        let rl = RateLimiter::new();
        let t0 = Instant::now();
        let lim = |max| {
            vec![Limit {
                key: "n".into(),
                max,
                window: Duration::from_secs(60),
                what: "number",
            }]
        };
        rl.acquire(&lim(2), t0).unwrap();
        let r = rl.acquire(&lim(2), t0 + Duration::from_secs(10)).unwrap();
        let e = rl
            .acquire(&lim(2), t0 + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(e.retry_after, Duration::from_secs(40));
        rl.release(r);
        rl.acquire(&lim(2), t0 + Duration::from_secs(20)).unwrap();
        rl.acquire(&lim(2), t0 + Duration::from_secs(61)).unwrap();
        let e = rl
            .acquire(&lim(2), t0 + Duration::from_secs(62))
            .unwrap_err();
        assert_eq!(e.retry_after, Duration::from_secs(18));
        rl.acquire(&lim(0), t0).unwrap();
    }
}
