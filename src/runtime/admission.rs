//! Which network input reaches the driver: trusted peers' messages go straight in, strangers'
//! pass a per-IP token bucket first, and accepted TCP connections live under caps
//! (docs/SECURITY.md). Every queue into the driver is bounded; what does not fit is dropped
//! and counted, never buffered.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use sip::Transport;
use tokio::sync::mpsc;

use super::driver::Input;
use crate::metrics::{Dropped, SipCounters};

/// Strangers' IP addresses with a bucket at once: bounds the table a flood of spoofed
/// sources can grow (about 40 bytes each).
pub(crate) const MAX_TRACKED_SOURCES: usize = 4096;
/// How often a full table is swept of buckets that refilled (idle sources).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Trusted peers' messages (and connection events) waiting for the driver: a burst of every
/// live call's signalling fits many times over.
pub(crate) const SIGNAL_QUEUE: usize = 1024;
/// Strangers' messages that passed their bucket: the driver takes them last.
pub(crate) const STRANGER_QUEUE: usize = 64;
/// Largest RTP datagram kept: an Ethernet MTU (1500 bytes) less the IPv4 and UDP headers. Our
/// codecs' packets are ~200 bytes (12-byte header, 160 bytes of G.711, SRTP tag); anything
/// larger is no audio of ours and is dropped.
pub(crate) const RTP_MAX_DATAGRAM: usize = 1472;
/// Messages waiting to be written on one connection.
pub(crate) const STREAM_QUEUE: usize = 64;

/// The addresses (address and port) whose SIP skips the stranger bucket: the trunk's, and
/// every live call's peers. The user agent decides trust on its own; this only orders the
/// queues.
#[derive(Debug, Default)]
pub(crate) struct Trusted {
    /// The trunk's addresses (replaced when it is resolved again).
    fixed: RwLock<Vec<SocketAddr>>,
    calls: RwLock<HashMap<SocketAddr, u32>>,
}

impl Trusted {
    pub(crate) fn new(fixed: Vec<SocketAddr>) -> Trusted {
        Trusted {
            fixed: RwLock::new(fixed),
            calls: RwLock::default(),
        }
    }

    /// The trunk was resolved again: its addresses now.
    pub(crate) fn set_fixed(&self, fixed: Vec<SocketAddr>) {
        *self.fixed.write().unwrap_or_else(PoisonError::into_inner) = fixed;
    }

    fn fixed_has(&self, f: impl Fn(&SocketAddr) -> bool) -> bool {
        self.fixed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(f)
    }

    pub(crate) fn add(&self, addr: SocketAddr) {
        let mut calls = self.calls.write().unwrap_or_else(PoisonError::into_inner);
        *calls.entry(addr).or_default() += 1;
    }

    pub(crate) fn remove(&self, addr: SocketAddr) {
        let mut calls = self.calls.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = calls.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                calls.remove(&addr);
            }
        }
    }

    pub(crate) fn contains(&self, addr: SocketAddr) -> bool {
        self.fixed_has(|a| *a == addr)
            || self
                .calls
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&addr)
    }

    /// Some trusted peer has this IP address (at any port).
    pub(crate) fn has_ip(&self, ip: IpAddr) -> bool {
        self.fixed_has(|a| a.ip() == ip)
            || self
                .calls
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .any(|a| a.ip() == ip)
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Refills for the time since the last take, then takes one token if there is one.
    fn take(&mut self, now: Instant, per_sec: f64, burst: f64) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * per_sec;
        self.tokens = (self.tokens + refill).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Token buckets keyed by something (an IP address, a port), in a bounded table.
#[derive(Debug)]
pub(crate) struct RateLimiter<K> {
    per_sec: f64,
    burst: f64,
    state: Mutex<(HashMap<K, Bucket>, Option<Instant>)>,
}

impl<K: std::hash::Hash + Eq + Copy> RateLimiter<K> {
    /// `per_sec` tokens a second, up to `burst` (at least 1).
    pub(crate) fn new(per_sec: u32, burst: u32) -> RateLimiter<K> {
        RateLimiter {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            state: Mutex::new((HashMap::new(), None)),
        }
    }

    /// Takes one token for `key` at `now`; false when its bucket is empty (or the table is
    /// full of sources that are all still busy).
    pub(crate) fn allow(&self, key: K, now: Instant) -> bool {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (table, last_sweep) = &mut *guard;
        if !table.contains_key(&key) && table.len() >= MAX_TRACKED_SOURCES {
            if last_sweep.is_some_and(|t| now.saturating_duration_since(t) < SWEEP_INTERVAL) {
                return false;
            }
            *last_sweep = Some(now);
            let (per_sec, burst) = (self.per_sec, self.burst);
            table.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < burst
            });
            if table.len() >= MAX_TRACKED_SOURCES {
                return false;
            }
        }
        table
            .entry(key)
            .or_insert(Bucket {
                tokens: self.burst,
                at: now,
            })
            .take(now, self.per_sec, self.burst)
    }

    /// Buckets held (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .len()
    }
}

/// Caps on accepted connections, in total and per IP address.
#[derive(Debug)]
pub(crate) struct ConnectionGate {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Permit {
    gate: Arc<ConnectionGate>,
    ip: IpAddr,
}

impl ConnectionGate {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for one more connection from `ip`, if the caps allow.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let mut guard = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, per_ip) = &mut *guard;
        let n = per_ip.get(&ip).copied().unwrap_or(0);
        if *total >= self.max_total || n >= self.max_per_ip {
            return None;
        }
        *total += 1;
        per_ip.insert(ip, n + 1);
        Some(Permit {
            gate: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut guard = self
            .gate
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, per_ip) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// The queues into one shard's driver.
#[derive(Clone, Debug)]
pub(crate) struct ShardInlet {
    pub(crate) signal: mpsc::Sender<Input>,
    pub(crate) strangers: mpsc::Sender<Input>,
}

/// Everything a socket task needs to hand input to the drivers (one per shard).
#[derive(Clone, Debug)]
pub(crate) struct Inlets {
    pub(crate) shards: Arc<[ShardInlet]>,
    pub(crate) trusted: Arc<Trusted>,
    pub(crate) limiter: Arc<RateLimiter<IpAddr>>,
    pub(crate) gate: Arc<ConnectionGate>,
    pub(crate) counters: Arc<SipCounters>,
    /// Accepted connections without a complete message this long are closed.
    pub(crate) idle: Duration,
}

/// The driver has gone: the socket task should stop.
#[derive(Debug)]
pub(crate) struct Closed;

impl Inlets {
    /// Whether every driver is gone (the socket tasks then stop).
    pub(crate) fn closed(&self) -> bool {
        self.shards.iter().all(|s| s.signal.is_closed())
    }

    /// The shard a SIP message belongs to: the one its identifiers name
    /// ([`sip::route::shard_of`]); shard 0 for anything else, whose user agent answers the
    /// trunk's OPTIONS and drops (and counts) the rest as the single driver did.
    fn shard_for(&self, bytes: &[u8]) -> &ShardInlet {
        let index = if self.shards.len() == 1 {
            0
        } else {
            sip::route::shard_of(bytes)
                .map(usize::from)
                .filter(|i| *i < self.shards.len())
                .unwrap_or(0)
        };
        &self.shards[index]
    }

    /// One SIP message from `source`. `vouched`: it came over a connection we opened to that
    /// peer. Trusted peers' messages queue first; a stranger's only within its bucket.
    pub(crate) fn sip(
        &self,
        transport: Transport,
        source: SocketAddr,
        bytes: Vec<u8>,
        vouched: bool,
    ) -> Result<(), Closed> {
        let trusted = vouched || self.trusted.contains(source);
        if !trusted && !self.limiter.allow(source.ip(), Instant::now()) {
            self.counters.sip_dropped(Dropped::RateLimited);
            return Ok(());
        }
        // Only what passed its bucket is looked at for its shard.
        let shard = self.shard_for(&bytes);
        let queue = if trusted {
            &shard.signal
        } else {
            &shard.strangers
        };
        let input = Input::Sip {
            transport,
            source,
            bytes,
        };
        self.offer(queue, input, |c| c.sip_dropped(Dropped::ChannelFull))
    }

    /// A connection event (opened, closed) for shard `shard`: these are bounded by the
    /// connection caps.
    pub(crate) fn control(&self, shard: usize, input: Input) -> Result<(), Closed> {
        let queue = &self.shards[shard.min(self.shards.len() - 1)].signal;
        self.offer(queue, input, |c| c.sip_dropped(Dropped::ChannelFull))
    }

    /// A connection event for every shard (a connection the far end opened to us may carry
    /// any shard's requests).
    pub(crate) fn control_all(&self, input: impl Fn() -> Input) -> Result<(), Closed> {
        let mut open = false;
        for shard in self.shards.iter() {
            open |= self
                .offer(&shard.signal, input(), |c| {
                    c.sip_dropped(Dropped::ChannelFull)
                })
                .is_ok();
        }
        if open { Ok(()) } else { Err(Closed) }
    }

    fn offer<T>(
        &self,
        queue: &mpsc::Sender<T>,
        input: T,
        full: impl FnOnce(&SipCounters),
    ) -> Result<(), Closed> {
        match queue.try_send(input) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                full(&self.counters);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(10, 5);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let passed = (0..100).filter(|_| limiter.allow(ip, t0)).count();
        assert_eq!(passed, 5, "the burst");
        // One second later: ten more tokens, capped by the burst.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| limiter.allow(ip, t1)).count(), 5);
        // 100 ms later: one token.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!((0..100).filter(|_| limiter.allow(ip, t2)).count(), 1);
        // Another source has its own bucket.
        assert!(limiter.allow("192.0.2.2".parse().unwrap(), t2));
    }

    #[test]
    fn the_table_is_bounded_and_swept() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(1, 2);
        for i in 0..MAX_TRACKED_SOURCES as u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(limiter.allow(ip, t0));
        }
        assert_eq!(limiter.tracked(), MAX_TRACKED_SOURCES);
        // Full of busy sources: a new one waits.
        let newcomer: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(!limiter.allow(newcomer, t0));
        // Once the old buckets refilled, they are swept and the newcomer gets one.
        let later = t0 + Duration::from_secs(5);
        assert!(limiter.allow(newcomer, later));
        assert!(limiter.tracked() <= MAX_TRACKED_SOURCES);
    }

    #[test]
    fn gate_caps_total_and_per_ip_and_frees_on_drop() {
        let gate = ConnectionGate::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = gate.admit(a).unwrap();
        let _p2 = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "per IP");
        let _p3 = gate.admit(b).unwrap();
        assert!(gate.admit(b).is_none(), "total");
        drop(p1);
        assert_eq!(gate.open(), 2);
        assert!(gate.admit(b).is_some());
    }

    #[test]
    fn trusted_counts_references() {
        let t = Trusted::new(vec!["192.0.2.9:5060".parse().unwrap()]);
        let peer: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        t.add(peer);
        t.add(peer);
        t.remove(peer);
        assert!(t.contains(peer));
        t.remove(peer);
        assert!(!t.contains(peer));
        assert!(t.contains("192.0.2.9:5060".parse().unwrap()));
        assert!(t.has_ip("192.0.2.9".parse().unwrap()));
        assert!(!t.has_ip("192.0.2.1".parse().unwrap()));
    }
}
