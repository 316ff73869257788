//! The descriptor budget (issue 8 item 5): raise the open-files limit at start, reserve
//! descriptors for RTP sockets, the store and webhooks, and let connections from strangers
//! (HTTP, and SIP over TCP/TLS) take only what is left, so the process never reaches the limit
//! and never fails to open what a genuine call needs.
//!
//! ```text
//!  soft limit (raised to the hard one)
//!  ├── open at start (stdio, runtime, SIP sockets, store files)
//!  ├── reserve: RTP per channel, store, webhooks, SIP streams, slack for accept-then-close
//!  └── budget: connections accepted from the network, one permit each
//! ```
//! A connection takes an [`FdPermit`] before it is served and gives it back when dropped; when
//! [`FdBudget::try_acquire`] says no, the acceptor refuses (or sheds an idle connection first).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Config;

/// Descriptors per call channel: its RTP socket, and one for RTCP or SRTP's needs.
pub const RTP_FDS_PER_CHANNEL: u64 = 2;
/// The store: SQLite's database, `-wal`, `-shm`, journal and temporary files (a PostgreSQL
/// pool fits in the same allowance).
pub const STORE_FDS: u64 = 16;
/// Outbound SIP streams to the trunk and DNS lookups.
pub const SIP_FDS: u64 = 16;
/// Descriptors per webhook attempt in flight (its connection, a DNS socket), plus idle pooled
/// connections.
pub const WEBHOOK_FDS_PER_ATTEMPT: u64 = 2;
/// Headroom for the unforeseen: prompt files, `/proc` reads, a connection accepted only to be
/// closed when the budget is spent.
pub const SLACK_FDS: u64 = 64;

/// The open-files limit of the process.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NoFile {
    /// The limit in force (`None`: unlimited).
    pub soft: Option<u64>,
    /// What it may be raised to (`None`: unlimited).
    pub hard: Option<u64>,
}

/// Why the limit could not be raised.
#[derive(Debug, thiserror::Error)]
#[error("cannot raise the open-files limit from {from:?} to {to:?}: {source}")]
pub struct RaiseError {
    from: Option<u64>,
    to: Option<u64>,
    source: std::io::Error,
}

/// The limit now.
pub fn nofile() -> NoFile {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    NoFile {
        soft: l.current,
        hard: l.maximum,
    }
}

/// Raises the soft open-files limit to the hard one (a systemd service starts with 1024 soft,
/// 524288 hard); returns the limit in force afterwards.
pub fn raise_nofile() -> Result<NoFile, RaiseError> {
    let before = nofile();
    if before.soft == before.hard {
        return Ok(before);
    }
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: before.hard,
            maximum: before.hard,
        },
    )
    .map_err(|e| RaiseError {
        from: before.soft,
        to: before.hard,
        source: e.into(),
    })?;
    Ok(nofile())
}

/// Descriptors open in this process now (`/proc/self/fd`), `None` where that cannot be read.
pub fn open_now() -> Option<u64> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory handle itself is one of the entries: not counted.
    Some((dir.count() as u64).saturating_sub(1))
}

/// What the configuration needs kept aside, in descriptors: the SIP over TCP/TLS acceptor
/// has its own cap (`sip.max_connections`), so its connections are set aside whole and the
/// HTTP connections can never starve it (nor it them).
pub fn reserve(config: &Config) -> u64 {
    u64::from(config.sip.channels) * RTP_FDS_PER_CHANNEL
        + STORE_FDS
        + SIP_FDS
        + u64::from(config.sip.max_connections)
        + (config.webhook.concurrency as u64) * WEBHOOK_FDS_PER_ATTEMPT
        + SLACK_FDS
}

/// Descriptors connections may use: `limit − open − reserve` (0 when nothing is left; a
/// large number when the limit is unlimited).
pub fn connection_budget(limit: Option<u64>, open: u64, reserve: u64) -> usize {
    let Some(limit) = limit else {
        return usize::MAX;
    };
    usize::try_from(limit.saturating_sub(open).saturating_sub(reserve)).unwrap_or(usize::MAX)
}

/// Permits for network connections, shared by every acceptor. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FdBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    in_use: AtomicUsize,
}

impl FdBudget {
    /// A budget of `capacity` connections.
    pub fn new(capacity: usize) -> FdBudget {
        FdBudget {
            inner: Arc::new(Inner {
                capacity,
                in_use: AtomicUsize::new(0),
            }),
        }
    }

    /// At start: raises the limit (a failure is logged, the current limit is used), counts
    /// what is open and keeps [`reserve`] aside.
    pub fn for_process(config: &Config) -> FdBudget {
        let limit = match raise_nofile() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "open-files limit not raised");
                nofile()
            }
        };
        let open = open_now().unwrap_or(64);
        let reserve = reserve(config);
        let capacity = connection_budget(limit.soft, open, reserve);
        tracing::info!(
            soft_limit = ?limit.soft,
            hard_limit = ?limit.hard,
            open,
            reserve,
            connections = capacity,
            "descriptor budget"
        );
        if capacity < 16 {
            tracing::warn!(
                connections = capacity,
                "the open-files limit leaves almost nothing for connections: raise it (LimitNOFILE=)"
            );
        }
        FdBudget::new(capacity)
    }

    /// One descriptor for a connection, or `None` when the budget is spent.
    pub fn try_acquire(&self) -> Option<FdPermit> {
        let taken = self
            .inner
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.inner.capacity).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| FdPermit {
            inner: Arc::clone(&self.inner),
        })
    }

    /// Connections the budget allows in all.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Permits held now.
    pub fn in_use(&self) -> usize {
        self.inner.in_use.load(Ordering::Acquire)
    }
}

/// One connection's descriptor; given back on drop.
#[derive(Debug)]
pub struct FdPermit {
    inner: Arc<Inner>,
}

impl Drop for FdPermit {
    fn drop(&mut self) {
        self.inner.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_and_given_back() {
        let budget = FdBudget::new(2);
        let a = budget.try_acquire().unwrap();
        let b = budget.try_acquire().unwrap();
        assert!(budget.try_acquire().is_none());
        assert_eq!(budget.in_use(), 2);
        drop(a);
        let c = budget.try_acquire().unwrap();
        drop((b, c));
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn the_budget_is_what_the_limit_leaves() {
        assert_eq!(connection_budget(Some(1024), 30, 200), 794);
        assert_eq!(connection_budget(Some(100), 30, 200), 0);
        assert_eq!(connection_budget(None, 30, 200), usize::MAX);
        let mut config = Config::default();
        config.sip.channels = 10;
        config.webhook.concurrency = 16;
        config.sip.max_connections = 128;
        assert_eq!(reserve(&config), 20 + 16 + 16 + 128 + 32 + 64);
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_one_and_descriptors_are_counted() {
        let after = raise_nofile().unwrap();
        assert_eq!(after.soft, after.hard);
        // stdin, stdout, stderr at least (other tests open and close files meanwhile).
        assert!(open_now().unwrap() >= 3);
    }
}
