//! One shard's RTP sockets, read together: one epoll set that the driver drains at its ticks
//! (one wake-up per tick for every call, not one per packet), `recvmmsg` batches per ready
//! socket, and a cap on what one socket may bring per tick.
//!
//! The sockets are not registered with tokio: a reader task per call woke the shard's thread
//! for every datagram (50 a second per call) and copied each through a channel. Here the
//! kernel keeps the packets until the next tick of the driver's timer (at most
//! [`super::driver`]'s step apart while prompts play), and the set's own descriptor wakes the
//! driver only when no tick is near.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;

use rand::Rng;
use rustix::event::epoll;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::admission::RTP_MAX_DATAGRAM;

/// Ports tried in `media.rtp_ports` before a call is refused for want of one.
const RTP_BIND_ATTEMPTS: usize = 64;
/// Datagrams read from one socket by one `recvmmsg` (a flooded socket gets several calls).
pub(crate) const RTP_BATCH: usize = 8;
/// Batches one socket may bring per drain: at most 64 datagrams per socket per tick (64,000 a
/// second at 1 ms ticks, 1,280 times a 20 ms stream). A flood beyond overflows the socket's
/// kernel buffer, not our CPU; below it, every datagram is read, so the callee's packets are
/// not lost behind a stranger's (the receive path drops those by source, cheaply).
const RTP_BATCHES_PER_DRAIN: usize = 8;
/// Bytes of one receive buffer: room for a GRO-coalesced run of audio datagrams (the kernel
/// may join same-sized datagrams of one flow; quinn-udp reports their stride).
const RTP_BUFFER: usize = 16 * 1024;
/// Ready sockets taken from the set per drain; the rest are reported at the next one (the set
/// is level-triggered, so nothing is lost, and epoll hands them out in turn).
const READY_PER_DRAIN: usize = 1024;

/// One call's RTP socket.
#[derive(Debug)]
pub(crate) struct RtpSocket {
    socket: UdpSocket,
    state: quinn_udp::UdpSocketState,
    /// The address the socket is connected to: where the call's RTP goes.
    peer: Option<SocketAddr>,
}

impl RtpSocket {
    /// Sends a datagram now, or fails (a full send buffer drops it: RTP tolerates loss).
    ///
    /// The socket is connected to `to` first (again when the far end moves its media): the
    /// kernel then keeps its route instead of looking one up per packet, and drops datagrams
    /// from any other address before they cost us a read. That is the receive path's own rule
    /// (only the address of the SDP answer is heard, see `media::receive`), applied earlier;
    /// until the first packet goes out, at the answer, every source is read and filtered there.
    pub(crate) fn send(&mut self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
        if self.peer != Some(to) {
            self.socket.connect(to)?;
            self.peer = Some(to);
        }
        self.socket.send(payload).map(|_| ())
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// The epoll set of one shard's RTP sockets.
pub(crate) struct RtpPoller {
    set: AsyncFd<OwnedFd>,
    events: Vec<epoll::Event>,
    /// The receive buffers of the whole shard (one set, not one per call).
    storage: Box<[u8]>,
    meta: [quinn_udp::RecvMeta; RTP_BATCH],
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
            storage: vec![0; RTP_BATCH * RTP_BUFFER].into_boxed_slice(),
            meta: [quinn_udp::RecvMeta::default(); RTP_BATCH],
        })
    }

    /// Binds a socket on a free even port of `low..=high` (RTP uses even ports, RFC 3550
    /// §11), starting at a random one so that two processes sharing a range rarely collide.
    pub(crate) fn bind(ip: IpAddr, (low, high): (u16, u16)) -> Option<RtpSocket> {
        let evens = usize::from((high - low) / 2) + 1;
        let start = rand::rng().random_range(0..evens);
        for i in 0..evens.min(RTP_BIND_ATTEMPTS) {
            let port = low + u16::try_from((start + i) % evens).ok()? * 2;
            let Ok(socket) = UdpSocket::bind(SocketAddr::new(ip, port)) else {
                continue;
            };
            if socket.set_nonblocking(true).is_err() {
                continue;
            }
            if let Ok(state) = quinn_udp::UdpSocketState::new((&socket).into()) {
                return Some(RtpSocket {
                    socket,
                    state,
                    peer: None,
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

    /// Reads what `socket` holds, up to the per-drain cap, handing each datagram to `each`
    /// with its source (`None` for one larger than [`RTP_MAX_DATAGRAM`]: no audio of ours).
    pub(crate) fn receive(
        &mut self,
        socket: &RtpSocket,
        mut each: impl FnMut(SocketAddr, Option<&[u8]>),
    ) {
        for _ in 0..RTP_BATCHES_PER_DRAIN {
            let mut chunks = self.storage.chunks_mut(RTP_BUFFER);
            let mut bufs: [io::IoSliceMut<'_>; RTP_BATCH] =
                std::array::from_fn(|_| io::IoSliceMut::new(chunks.next().unwrap_or_default()));
            let n = match socket
                .state
                .recv((&socket.socket).into(), &mut bufs, &mut self.meta)
            {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!(error = %e, "RTP receive error");
                    }
                    return;
                }
            };
            for (i, m) in self.meta.iter().enumerate().take(n) {
                let start = i * RTP_BUFFER;
                let buf = &self.storage[start..start + m.len.min(RTP_BUFFER)];
                for datagram in buf.chunks(m.stride.max(1)) {
                    if datagram.len() > RTP_MAX_DATAGRAM {
                        each(m.addr, None);
                    } else {
                        each(m.addr, Some(datagram));
                    }
                }
            }
            if n < RTP_BATCH {
                // The socket is empty: a short batch is everything it held.
                return;
            }
        }
    }
}
