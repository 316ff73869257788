//! Sockets: RTP ports from the configured range, SIP over TCP and TLS connections.
//!
//! Reader tasks only move bytes into the driver's bounded queues (through
//! [`Inlets`](super::admission::Inlets), which orders and limits them); the driver does
//! everything else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sip::Transport;
use sip::framer::StreamFramer;
use sip::message::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;

use super::admission::{Inlets, Permit, STREAM_QUEUE};
use super::driver::Input;
use crate::metrics::Dropped;

/// Largest datagram read (SIP over UDP stays under 64 KiB; RTP far less).
pub(crate) const MAX_DATAGRAM: usize = 65_535;
/// Connecting to the trunk over TCP/TLS: beyond this the transport has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed accept (out of descriptors), the listener waits this long before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// SIP datagrams taken from the socket in one `recvmmsg` call.
const SIP_RECV_BATCH: usize = 8;

/// A UDP socket read by a tokio task and written directly by the driver, both through
/// quinn-udp (`recvmmsg` and GRO in, `sendmsg` out; GSO where the kernel has it).
///
/// Sending goes through the std socket (non-blocking): the driver sends from synchronous
/// code, and tokio's `try_send_to` refuses until the socket was polled writable once.
pub(crate) struct Udp {
    pub(crate) tokio: Arc<UdpSocket>,
    pub(crate) state: Arc<quinn_udp::UdpSocketState>,
    send: std::net::UdpSocket,
}

impl Udp {
    /// Wraps a bound std socket (must run inside a tokio runtime).
    pub(crate) fn new(socket: std::net::UdpSocket) -> std::io::Result<Udp> {
        socket.set_nonblocking(true)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        // quinn-udp forbids fragmentation (QUIC sizes its own packets); a SIP message over
        // UDP larger than the path MTU must still go out, fragmented, as it did before.
        let _ = if socket.local_addr()?.is_ipv4() {
            rustix::net::sockopt::set_ip_mtu_discover(
                &socket,
                rustix::net::sockopt::Ipv4PathMtuDiscovery::DONT,
            )
        } else {
            rustix::net::sockopt::set_ipv6_mtu_discover(
                &socket,
                rustix::net::sockopt::Ipv6PathMtuDiscovery::DONT,
            )
        };
        let send = socket.try_clone()?;
        Ok(Udp {
            tokio: Arc::new(UdpSocket::from_std(socket)?),
            state: Arc::new(state),
            send,
        })
    }

    /// Another sender on the same socket (each shard sends SIP from its own thread).
    pub(crate) fn try_clone(&self) -> std::io::Result<Udp> {
        Ok(Udp {
            tokio: Arc::clone(&self.tokio),
            state: Arc::clone(&self.state),
            send: self.send.try_clone()?,
        })
    }

    /// Sends a datagram now, or fails (a full send buffer drops it: UDP, the protocols
    /// above retransmit or tolerate loss).
    pub(crate) fn send_to(&self, payload: &[u8], to: SocketAddr) -> std::io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        };
        self.state.try_send((&self.send).into(), &transmit)
    }

    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.send.local_addr()
    }
}

/// Reads up to `N` datagrams (several per buffer when the kernel coalesced them, GRO) and
/// hands each to `each` with its source; an error other than "nothing to read" is returned.
async fn recv_batch<const N: usize>(
    socket: &UdpSocket,
    state: &quinn_udp::UdpSocketState,
    storage: &mut [u8],
    mut each: impl FnMut(SocketAddr, &[u8]),
) -> std::io::Result<()> {
    let size = storage.len() / N;
    let mut meta = [quinn_udp::RecvMeta::default(); N];
    let n = loop {
        socket.readable().await?;
        let mut chunks = storage.chunks_mut(size);
        let mut bufs: [std::io::IoSliceMut<'_>; N] =
            std::array::from_fn(|_| std::io::IoSliceMut::new(chunks.next().unwrap_or_default()));
        match socket.try_io(tokio::io::Interest::READABLE, || {
            state.recv(socket.into(), &mut bufs, &mut meta)
        }) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    for (i, m) in meta.iter().enumerate().take(n) {
        let buf = &storage[i * size..i * size + m.len.min(size)];
        let stride = m.stride.max(1);
        for segment in buf.chunks(stride) {
            each(m.addr, segment);
        }
    }
    Ok(())
}

/// Reads SIP datagrams into the drivers (through [`Inlets::sip`], which picks the shard)
/// until every driver is gone.
pub(crate) fn spawn_sip_reader(udp: &Udp, inlets: Inlets) -> JoinHandle<()> {
    let (socket, state) = (Arc::clone(&udp.tokio), Arc::clone(&udp.state));
    tokio::spawn(async move {
        let mut storage = vec![0u8; SIP_RECV_BATCH * MAX_DATAGRAM];
        loop {
            let mut gone = false;
            let r = recv_batch::<SIP_RECV_BATCH>(&socket, &state, &mut storage, |source, bytes| {
                gone |= inlets
                    .sip(Transport::Udp, source, bytes.to_vec(), false)
                    .is_err();
            })
            .await;
            if gone {
                return;
            }
            if let Err(e) = r
                && receive_error(&e, &inlets).await
            {
                return;
            }
        }
    })
}

/// A receive error (ICMP errors surface here on some systems; transactions time out anyway).
/// True when the driver is gone.
async fn receive_error(e: &std::io::Error, inlets: &Inlets) -> bool {
    tracing::debug!(error = %e, "UDP receive error");
    if inlets.closed() {
        return true;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    false
}

/// `sip.tls_ca` cannot be used: our configuration is at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsCaError {
    #[error("cannot read sip.tls_ca {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("sip.tls_ca {}: no usable certificate ({reason})", path.display())]
    Certificate { path: PathBuf, reason: String },
}

/// TLS client configuration: the Mozilla root store (webpki-roots) plus the CA certificates
/// of `sip.tls_ca`, if given.
pub(crate) fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsCaError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| TlsCaError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| TlsCaError::Certificate {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| TlsCaError::Certificate {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsCaError::Certificate {
                path: path.to_owned(),
                reason: "no CERTIFICATE block".into(),
            });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(c) => Ok(Arc::new(c)),
        // ring supports the default protocol versions: this cannot fail.
        Err(e) => unreachable!("rustls rejected its own defaults: {e}"),
    }
}

/// A connection to `peer` over TCP or TLS, running in its own task: frames what it reads
/// into SIP messages for the driver, writes what the driver queues (at most
/// [`STREAM_QUEUE`] messages wait). Reports [`Input::StreamClosed`] when it fails or ends.
/// What arrives over it comes from `peer`: we opened it.
pub(crate) fn spawn_stream(
    shard: usize,
    transport: Transport,
    peer: SocketAddr,
    server_name: String,
    tls: Arc<rustls::ClientConfig>,
    inlets: Inlets,
) -> mpsc::Sender<Vec<u8>> {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    tokio::spawn(async move {
        let result = async {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let _ = tcp.set_nodelay(true);
            let link = Link {
                transport,
                peer,
                vouched: true,
                idle: None,
            };
            if transport == Transport::Tls {
                let name = rustls::pki_types::ServerName::try_from(server_name)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let stream = TlsConnector::from(tls).connect(name, tcp).await?;
                pump_stream(stream, link, rx, &inlets).await
            } else {
                pump_stream(tcp, link, rx, &inlets).await
            }
        }
        .await;
        if let Err(e) = &result {
            tracing::warn!(%peer, ?transport, error = %e, "SIP connection failed");
        }
        let _ = inlets.control(shard, Input::StreamClosed { transport, peer });
    });
    tx
}

/// Accepts SIP over TCP connections on `listener` for as long as the driver lives: each one
/// within the caps of [`ConnectionGate`](super::admission::ConnectionGate) and from the IP address of a trusted peer is served;
/// the others are closed at once and counted. An accept error (out of descriptors) pauses the
/// loop, never ends it.
pub(crate) fn spawn_listener(listener: TcpListener, inlets: Inlets) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    if inlets.closed() {
                        return;
                    }
                    if !inlets.trusted.has_ip(peer.ip()) {
                        inlets.counters.sip_dropped(Dropped::UntrustedSource);
                        continue;
                    }
                    match inlets.gate.admit(peer.ip()) {
                        Some(permit) => spawn_accepted(tcp, peer, permit, inlets.clone()),
                        None => inlets.counters.sip_dropped(Dropped::ConnectionLimit),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SIP over TCP: accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            }
        }
    })
}

/// Serves an accepted TCP connection (the far end opened it to send us requests) until it
/// closes, breaks framing or stays idle for `inlets.idle`.
fn spawn_accepted(tcp: TcpStream, peer: SocketAddr, permit: Permit, inlets: Inlets) {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let opened = || Input::StreamOpened {
        transport: Transport::Tcp,
        peer,
        writer: tx.clone(),
    };
    if inlets.control_all(opened).is_err() {
        return;
    }
    drop(tx);
    tokio::spawn(async move {
        let link = Link {
            transport: Transport::Tcp,
            peer,
            vouched: false,
            idle: Some(inlets.idle),
        };
        let _ = pump_stream(tcp, link, rx, &inlets).await;
        drop(permit);
        let _ = inlets.control_all(|| Input::StreamClosed {
            transport: Transport::Tcp,
            peer,
        });
    });
}

/// What the pump knows of its connection.
struct Link {
    transport: Transport,
    peer: SocketAddr,
    /// We opened it to `peer`.
    vouched: bool,
    /// Close when no complete message arrived for this long (accepted connections).
    idle: Option<Duration>,
}

async fn pump_stream<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    link: Link,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    inlets: &Inlets,
) -> std::io::Result<()> {
    let (mut read, mut write) = tokio::io::split(stream);
    let mut framer = StreamFramer::new(&Limits::default());
    let mut buf = vec![0u8; 16 * 1024];
    // An idle connection that is ours never times out here (a call may be silent for minutes).
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut deadline = link.idle.map_or(far, |idle| Instant::now() + idle);
    loop {
        tokio::select! {
            n = read.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                framer.push(&buf[..n]);
                while let Some(message) = framer.next_message() {
                    match message {
                        Ok(bytes) => {
                            if let Some(idle) = link.idle {
                                deadline = Instant::now() + idle;
                            }
                            if inlets.sip(link.transport, link.peer, bytes, link.vouched).is_err() {
                                return Ok(());
                            }
                        }
                        Err(e) => {
                            // The peer broke stream framing (RFC 3261 §18.3): close.
                            inlets.counters.sip_dropped(Dropped::Parse);
                            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                        }
                    }
                }
            }
            out = outgoing.recv() => match out {
                Some(bytes) => write.write_all(&bytes).await?,
                None => return Ok(()),
            },
            () = tokio::time::sleep_until(deadline.into()) => {
                inlets.counters.sip_dropped(Dropped::IdleTimeout);
                return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
            }
        }
    }
}
