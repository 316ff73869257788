//! One shard's RTP sockets, read together: one epoll set that the driver drains at its ticks
//! (one wake-up per tick for every call, not one per packet), one datagram per ready socket
//! per drain, and a flood limit per call.
//!
//! The sockets are not registered with tokio: a reader task per call woke the shard's thread
//! for every datagram (50 a second per call) and copied each through a channel. Here the
//! kernel keeps the packets until the next tick of the driver's timer (at most
//! [`super::driver`]'s step apart while prompts play), and the set's own descriptor wakes the
//! driver only when no tick is near.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::Instant;

use rand::Rng;
use rustix::event::epoll;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::admission::{RTP_MAX_DATAGRAM, RTP_RATE_PER_SEC, TokenBucket};

/// Ports tried in `media.rtp_ports` before a call is refused for want of one.
const RTP_BIND_ATTEMPTS: usize = 64;
/// Ready sockets taken from the set per drain; the rest are reported at the next one (the set
/// is level-triggered, so nothing is lost, and epoll hands them out in turn).
const READY_PER_DRAIN: usize = 1024;

/// One call's RTP socket and its flood budget.
#[derive(Debug)]
pub(crate) struct RtpSocket {
    socket: UdpSocket,
    budget: TokenBucket,
}

impl RtpSocket {
    /// Sends a datagram now, or fails (a full send buffer drops it: RTP tolerates loss).
    pub(crate) fn send_to(&self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
        self.socket.send_to(payload, to).map(|_| ())
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// What one ready socket gave at a drain.
pub(crate) enum Received<'a> {
    /// A datagram within the call's budget.
    Datagram { source: SocketAddr, bytes: &'a [u8] },
    /// A datagram over [`RTP_MAX_DATAGRAM`] bytes: no audio of ours.
    Oversized,
    /// More than [`RTP_RATE_PER_SEC`] a second: a flood.
    RateLimited,
    /// Nothing after all, or a receive error (both are dropped quietly).
    Nothing,
}

/// The epoll set of one shard's RTP sockets.
pub(crate) struct RtpPoller {
    set: AsyncFd<OwnedFd>,
    events: Vec<epoll::Event>,
    /// One receive buffer for the whole shard: a byte longer than the largest datagram kept,
    /// so that a longer one shows as such instead of being cut.
    buf: Box<[u8; RTP_MAX_DATAGRAM + 1]>,
}

impl RtpPoller {
    /// A new, empty set (inside the shard's tokio runtime: its descriptor wakes the driver).
    pub(crate) fn new() -> io::Result<RtpPoller> {
        let set = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        // SAFETY: the `OwnedFd` moves into the `AsyncFd` and is never taken out or replaced,
        // so its descriptor stays open and the same for the `AsyncFd`'s whole life.
        let set = unsafe { AsyncFd::register_with_interest(set, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(RtpPoller {
            set,
            events: Vec::with_capacity(READY_PER_DRAIN),
            buf: Box::new([0; RTP_MAX_DATAGRAM + 1]),
        })
    }

    /// Binds a socket on a free even port of `low..=high` (RTP uses even ports, RFC 3550
    /// §11), starting at a random one so that two processes sharing a range rarely collide.
    pub(crate) fn bind(ip: IpAddr, (low, high): (u16, u16), now: Instant) -> Option<RtpSocket> {
        let evens = usize::from((high - low) / 2) + 1;
        let start = rand::rng().random_range(0..evens);
        for i in 0..evens.min(RTP_BIND_ATTEMPTS) {
            let port = low + u16::try_from((start + i) % evens).ok()? * 2;
            let Ok(socket) = UdpSocket::bind(SocketAddr::new(ip, port)) else {
                continue;
            };
            if socket.set_nonblocking(true).is_ok() {
                return Some(RtpSocket {
                    socket,
                    budget: TokenBucket::new(now, RTP_RATE_PER_SEC, RTP_RATE_PER_SEC),
                });
            }
        }
        None
    }

    /// Adds a call's socket to the set; its readiness is reported with `token`.
    pub(crate) fn add(&self, socket: &RtpSocket, token: u64) -> io::Result<()> {
        epoll::add(
            self.set.get_ref(),
            &socket.socket,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )?;
        Ok(())
    }

    /// Takes a call's socket out of the set (before it is closed).
    pub(crate) fn remove(&self, socket: &RtpSocket) {
        if let Err(e) = epoll::delete(self.set.get_ref(), &socket.socket) {
            tracing::debug!(error = %e, "RTP socket not in the poll set");
        }
    }

    /// Resolves when a socket of the set may have become readable since the last call.
    pub(crate) async fn readable(&self) {
        match self.set.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            // The set's descriptor cannot fail in a way waiting again would fix; the driver's
            // timer still drains the set.
            Err(e) => {
                tracing::error!(error = %e, "RTP poll set unusable");
                std::future::pending::<()>().await;
            }
        }
    }

    /// Asks the set which sockets are readable now (without waiting); returns how many.
    pub(crate) fn poll_ready(&mut self) -> usize {
        self.events.clear();
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if let Err(e) = epoll::wait(
            self.set.get_ref(),
            rustix::buffer::spare_capacity(&mut self.events),
            Some(&zero),
        ) {
            tracing::debug!(error = %e, "RTP poll failed");
            self.events.clear();
        }
        self.events.len()
    }

    /// The token of the `i`th socket the last [`RtpPoller::poll_ready`] reported.
    pub(crate) fn token(&self, i: usize) -> u64 {
        self.events[i].data.u64()
    }

    /// Reads one datagram of `socket` into the shard's buffer.
    pub(crate) fn receive<'a>(
        buf: &'a mut [u8; RTP_MAX_DATAGRAM + 1],
        socket: &mut RtpSocket,
        now: Instant,
    ) -> Received<'a> {
        match socket.socket.recv_from(&mut buf[..]) {
            Ok((n, _)) if n > RTP_MAX_DATAGRAM => Received::Oversized,
            Ok((n, source)) => {
                if socket.budget.take(now) {
                    Received::Datagram {
                        source,
                        bytes: &buf[..n],
                    }
                } else {
                    Received::RateLimited
                }
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, "RTP receive error");
                }
                Received::Nothing
            }
        }
    }

    /// The shard's receive buffer (for [`RtpPoller::receive`]).
    pub(crate) fn buffer(&mut self) -> &mut [u8; RTP_MAX_DATAGRAM + 1] {
        &mut self.buf
    }
}
