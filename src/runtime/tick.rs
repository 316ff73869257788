//! A shard's wake-up timer with microsecond precision: a timerfd polled by the shard's
//! runtime, because tokio's timers round every deadline up to a whole millisecond and its
//! reactor then sleeps in whole milliseconds, which made prompt packets leave in bursts
//! one to two milliseconds late.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A one-shot timer re-armed for each deadline.
pub(crate) struct Tick {
    fd: AsyncFd<OwnedFd>,
    /// The deadline the timer is armed for (re-arming for the same one is skipped).
    armed: Option<Instant>,
}

impl Tick {
    /// A disarmed timer (inside the runtime that polls it).
    pub(crate) fn new() -> io::Result<Tick> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // SAFETY: the `OwnedFd` moves into the `AsyncFd` and is never taken out or replaced,
        // so its descriptor stays open and the same for the `AsyncFd`'s whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Tick { fd, armed: None })
    }

    /// Resolves at `deadline` (at once when it has passed).
    pub(crate) async fn until(&mut self, deadline: Instant) {
        if self.armed != Some(deadline) {
            // Relative to now: `Instant` and CLOCK_MONOTONIC are the same clock on Linux, but
            // `Instant` does not show its value; the difference is read a few ns apart.
            let wait = deadline
                .saturating_duration_since(Instant::now())
                // Zero would disarm the timer instead of firing it.
                .max(Duration::from_nanos(1));
            let spec = Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: Timespec {
                    tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: i64::from(wait.subsec_nanos()),
                },
            };
            if let Err(e) = timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec) {
                // Only a bad descriptor or value gets here; fall back to tokio's timer.
                tracing::error!(error = %e, "shard timer not armed");
                tokio::time::sleep_until(deadline.into()).await;
                return;
            }
            self.armed = Some(deadline);
        }
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                tokio::time::sleep_until(deadline.into()).await;
                break;
            };
            let mut expirations = [0u8; 8];
            match rustix::io::read(self.fd.get_ref(), &mut expirations) {
                Ok(_) => break,
                // Readiness from an earlier expiry already consumed: wait for this one.
                Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                Err(e) => {
                    tracing::error!(error = %e, "shard timer unreadable");
                    tokio::time::sleep_until(deadline.into()).await;
                    break;
                }
            }
        }
        self.armed = None;
    }
}

impl Tick {
    /// [`Tick::until`] `deadline`, or never without one.
    pub(crate) async fn until_some(&mut self, deadline: Option<Instant>) {
        match deadline {
            Some(d) => self.until(d).await,
            None => std::future::pending().await,
        }
    }
}
