//! The drivers, one per shard, each on its own thread: each holds a [`Switchboard`] for its
//! calls, fed by the SIP socket readers through its own bounded queues (trusted signalling,
//! then strangers), woken by one precise timer (the switchboard's earliest deadline, [`Tick`])
//! which goes before any input so that prompts keep their 20 ms grid under a flood, and
//! reading its calls' RTP sockets itself at every wake-up ([`RtpPoller`]). The shards share
//! the SIP socket (the reader routes each message to its shard, [`sip::route`]) and the
//! admission state (trusted peers, strangers' buckets, connection caps, counters); each owns
//! its calls' RTP sockets and timers.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flow::live::LiveFactory;
use flow::{CallId, Event, Switchboard, Transmit};
use sip::{CallHandle, Transport};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_rustls::rustls;

use super::admission::{
    ConnectionGate, Inlets, RateLimiter, SIGNAL_QUEUE, STRANGER_QUEUE, ShardInlet, Trusted,
};
use super::live::Prompts;
use super::load::{Change, Lag, ShardLoad};
use super::media_io::{RtpPoller, RtpSocket};
use super::net;
use super::tick::Tick;
use super::{RuntimeConfig, RuntimeError, advertised, not_placed, os_seed};
use crate::call::{CallProgress, CallReport};
use crate::metrics::{Dropped, SipCounters};

/// The driver never sleeps less than this after handling timers (a deadline stuck in the
/// past would otherwise spin the task).
const MIN_TIMER_STEP: Duration = Duration::from_millis(1);
/// When the next timer is nearer than this, readable RTP sockets wait for it instead of
/// waking the driver (prompts tick every 20 ms per call, RFC 3551 §4.5's default G.711
/// packetization, so under load a tick is never far; the jitter buffer absorbs the delay).
const MEDIA_COALESCE: Duration = Duration::from_millis(5);
/// Inputs taken from one queue before the timers are looked at again.
const BATCH: usize = 32;

/// Names one placed call between a `Runtime::call` future and the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Ticket(u64);

impl Ticket {
    pub(crate) fn next() -> Ticket {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Ticket(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What the call futures ask of the driver.
pub(crate) enum Command {
    Place {
        ticket: Ticket,
        spec: Box<flow::CallSpec>,
        progress: mpsc::UnboundedSender<CallProgress>,
        done: oneshot::Sender<CallReport>,
    },
    Cancel {
        ticket: Ticket,
    },
    /// The trunk was resolved again to other addresses: trust these instead.
    TrunkPeers {
        peers: Vec<SocketAddr>,
    },
}

/// What the socket tasks bring in.
pub(crate) enum Input {
    /// One SIP message (datagram, or framed from a stream).
    Sip {
        transport: Transport,
        source: SocketAddr,
        bytes: Vec<u8>,
    },
    /// The far end opened a connection to us.
    StreamOpened {
        transport: Transport,
        peer: SocketAddr,
        writer: mpsc::Sender<Vec<u8>>,
    },
    /// A connection failed or closed.
    StreamClosed {
        transport: Transport,
        peer: SocketAddr,
    },
}

struct LiveCall {
    id: CallId,
    ticket: Ticket,
    progress: mpsc::UnboundedSender<CallProgress>,
    done: Option<oneshot::Sender<CallReport>>,
    rtp: RtpSocket,
    /// The addresses this call made trusted (removed when it ends).
    peers: Vec<SocketAddr>,
}

struct Stream {
    writer: mpsc::Sender<Vec<u8>>,
    calls: BTreeSet<CallHandle>,
}

struct Driver {
    /// This driver's index among the shards (its identifiers carry it).
    shard: usize,
    board: Switchboard<LiveFactory>,
    config: Arc<RuntimeConfig>,
    /// None with a TLS-only trunk: nothing listens.
    sip_udp: Option<net::Udp>,
    rtp_bind: IpAddr,
    rtp_advertised: IpAddr,
    /// Keyed by the call's handle number, which is also its RTP socket's token in `rtp`.
    calls: HashMap<u64, LiveCall>,
    rtp: RtpPoller,
    tick: Tick,
    /// The last drain of `rtp` read something: drain again at the next millisecond rather
    /// than wait for a new packet's wake-up (a socket may hold a second datagram).
    rtp_busy: bool,
    tickets: HashMap<Ticket, CallId>,
    streams: HashMap<(Transport, SocketAddr), Stream>,
    inlets: Inlets,
    tls: Arc<rustls::ClientConfig>,
    /// The SIP socket readers on the ingress thread (shard 0 stops them when it goes).
    readers: Vec<AbortHandle>,
    /// How late this shard's timers fire, and where the runtime reads it.
    lag: Lag,
    load: Arc<ShardLoad>,
}

/// The driver's ends of the input queues.
struct Queues {
    signal: mpsc::Receiver<Input>,
    strangers: mpsc::Receiver<Input>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

/// Binds the SIP sockets and starts one driver per shard (inside a tokio runtime); returns
/// their command channels and the advertised SIP address. With a TLS-only trunk nothing
/// listens: the trunk talks to us over the connections we open.
/// What the runtime holds of a running shard: its command channel and its published load.
pub(crate) struct ShardEnds {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) load: Arc<ShardLoad>,
}

pub(crate) fn spawn(
    config: RuntimeConfig,
    prompts: Prompts,
    counters: Arc<SipCounters>,
) -> Result<(Vec<ShardEnds>, SocketAddr), RuntimeError> {
    let listen = config.listen;
    let bind_err = move |source| RuntimeError::Bind {
        addr: listen,
        source,
    };
    let shards = config.shards.max(1);
    let mut inlets_of_shards = Vec::with_capacity(shards);
    let mut queues = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (signal_tx, signal) = mpsc::channel(SIGNAL_QUEUE);
        let (strangers_tx, strangers) = mpsc::channel(STRANGER_QUEUE);
        inlets_of_shards.push(ShardInlet {
            signal: signal_tx,
            strangers: strangers_tx,
        });
        queues.push(Queues { signal, strangers });
    }
    let inlets = Inlets {
        shards: inlets_of_shards.into(),
        trusted: Arc::new(Trusted::new(config.trunk_peers.clone())),
        limiter: Arc::new(RateLimiter::new(
            config.stranger_rate_per_sec,
            config.stranger_burst,
        )),
        gate: ConnectionGate::new(config.max_connections, config.max_connections_per_ip),
        counters,
        idle: config.connection_idle,
    };
    let tls_only = config
        .trunk
        .as_ref()
        .is_some_and(|t| t.transport == Transport::Tls);
    // SIP comes in on a thread of its own: the readers only route bytes to the shards, and no
    // burst of HTTP requests or store work on the main runtime delays a 200 OK past T1.
    let ingress = ThreadRuntime::new()?;
    let mut readers = Vec::new();
    let (sip_udp, bound) = if tls_only {
        let port = match config.listen.port() {
            0 => 5061,
            p => p,
        };
        (None, SocketAddr::new(config.listen.ip(), port))
    } else {
        let _entered = ingress.get().enter();
        let std_socket = std::net::UdpSocket::bind(config.listen).map_err(bind_err)?;
        let udp = net::Udp::new(std_socket).map_err(bind_err)?;
        let bound = udp.local_addr().map_err(bind_err)?;
        readers.push(net::spawn_sip_reader(&udp, inlets.clone()));
        // TCP on the same port, for far ends that open a connection to our Contact.
        let tcp = std::net::TcpListener::bind(bound)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std);
        match tcp {
            Ok(listener) => readers.push(net::spawn_listener(listener, inlets.clone())),
            Err(e) => tracing::debug!(%bound, error = %e, "no SIP over TCP listener"),
        }
        (Some(udp), bound)
    };
    let stop_readers: Vec<AbortHandle> = readers.iter().map(JoinHandle::abort_handle).collect();
    if !readers.is_empty() {
        std::thread::Builder::new()
            .name("sip-ingress".into())
            .spawn(move || {
                ingress.get().block_on(async move {
                    for reader in readers {
                        let _ = reader.await;
                    }
                });
            })
            .map_err(RuntimeError::Thread)?;
    }
    // Behind 1:1 NAT the external addresses are what Via, Contact and SDP show (on every
    // shard); the sockets stay bound to the local ones.
    let local = config.public_sip(advertised(bound, config.route_probe));
    let rtp_advertised = config.public_rtp(local.ip());
    let tls = net::tls_config(config.tls_ca.as_deref())?;
    let config = Arc::new(config);
    let mut commands = Vec::with_capacity(shards);
    for (shard, q) in queues.into_iter().enumerate() {
        let mut sip_config = sip::Config::new(local);
        sip_config.timers.t1 = config.t1;
        sip_config.timers.t2 = sip_config.timers.t2.max(config.t1);
        sip_config.trusted_peers = config.trunk_peers.clone();
        sip_config.id_prefix = sip::route::prefix(u16::try_from(shard).unwrap_or(u16::MAX));
        let board = Switchboard::new(sip_config, os_seed()?, LiveFactory::new(prompts.book()));
        let sip_udp = match &sip_udp {
            Some(udp) => Some(udp.try_clone().map_err(bind_err)?),
            None => None,
        };
        let (tx, commands_rx) = mpsc::unbounded_channel();
        let load = Arc::new(ShardLoad::default());
        let shard_load = Arc::clone(&load);
        // Each shard runs on its own thread, in a runtime of its own: its calls' RTP sockets and
        // its timer share no scheduler with the other shards or with HTTP and the store, so a
        // busy neighbour never delays a prompt packet (a shared pool made the 20 ms grid
        // drift by tens of milliseconds at 800 calls).
        let shard_runtime = ThreadRuntime::new()?;
        let shard_readers = if shard == 0 {
            // The first shard stops the socket readers when it goes.
            stop_readers.clone()
        } else {
            Vec::new()
        };
        let (config, inlets, tls, rtp_bind) = (
            Arc::clone(&config),
            inlets.clone(),
            Arc::clone(&tls),
            bound.ip(),
        );
        let (started_tx, started) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("sip-shard-{shard}"))
            .spawn(move || {
                // The poll set registers with the shard's runtime and holds epoll's raw event
                // records, so it is made on the shard's thread and stays there.
                let polled = {
                    let _entered = shard_runtime.get().enter();
                    RtpPoller::new().and_then(|rtp| Ok((rtp, Tick::new()?)))
                };
                let (rtp, tick) = match polled {
                    Ok(polled) => polled,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                let driver = Driver {
                    shard,
                    board,
                    config,
                    sip_udp,
                    rtp_bind,
                    rtp_advertised,
                    calls: HashMap::new(),
                    rtp,
                    tick,
                    rtp_busy: false,
                    tickets: HashMap::new(),
                    streams: HashMap::new(),
                    inlets,
                    tls,
                    readers: shard_readers,
                    lag: Lag::default(),
                    load: shard_load,
                };
                shard_runtime.get().block_on(driver.run(commands_rx, q));
            })
            .map_err(RuntimeError::Thread)?;
        started
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the shard's thread ended at start")))
            .map_err(RuntimeError::Thread)?;
        commands.push(ShardEnds { commands: tx, load });
    }
    tracing::info!(sip = %local, tls_only, shards, "SIP runtime started");
    Ok((commands, local))
}

/// The event loop of one thread (a shard, the SIP ingress). Dropped anywhere, on an async
/// caller's error path too, it shuts down without blocking: tokio refuses to block in a
/// runtime's drop inside another runtime (a TLS-only trunk, whose ingress has nothing to run,
/// dropped it so).
struct ThreadRuntime(Option<tokio::runtime::Runtime>);

impl ThreadRuntime {
    fn new() -> Result<ThreadRuntime, RuntimeError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| ThreadRuntime(Some(rt)))
            .map_err(RuntimeError::Thread)
    }

    fn get(&self) -> &tokio::runtime::Runtime {
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl Drop for ThreadRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, mut q: Queues) {
        let mut commands_open = true;
        let mut last_timeout = Instant::now();
        loop {
            self.flush();
            if !commands_open && self.calls.is_empty() {
                return;
            }
            if self.calls.is_empty() && self.lag.overloaded() {
                // The last call ended: no timer may fire again to say the shard is idle.
                self.record_lateness(Instant::now(), Duration::ZERO);
            }
            // The earliest deadline as the calls want it: lateness is measured against this,
            // not against the step-limited wake-up (behind, that would hide the backlog).
            let due = self.board.poll_timeout();
            let mut deadline = due.map(|d| d.max(last_timeout + MIN_TIMER_STEP));
            let now = Instant::now();
            if self.rtp_busy {
                let again = now + MIN_TIMER_STEP;
                deadline = Some(deadline.map_or(again, |d| d.min(again)));
            }
            // Media waits for the next tick when one is near: a wake-up per tick drains every
            // socket that became readable meanwhile, instead of one wake-up per datagram.
            let wake_on_media = deadline.is_none_or(|d| d > now + MEDIA_COALESCE);
            let timer = self.tick.until_some(deadline);
            tokio::select! {
                biased;
                // Timers first: what arrives never delays a prompt packet's slot.
                () = timer => {
                    let now = Instant::now();
                    // Only wake-ups for a call's deadline count: the 1 ms steps of a busy RTP
                    // drain come early for the calls and would dilute the mean with zeros.
                    if let Some(d) = due.filter(|d| *d <= now) {
                        self.record_lateness(now, now - d);
                    }
                    last_timeout = now;
                    self.board.handle_timeout(now);
                    // The packets of this tick leave now, before the received ones are read
                    // and run through the detectors: that work never delays a send.
                    self.flush();
                }
                () = self.rtp.readable(), if wake_on_media => {}
                command = commands.recv(), if commands_open => match command {
                    Some(c) => self.command(c),
                    None => commands_open = false,
                },
                Some(input) = q.signal.recv() => self.take(input, &mut q.signal, Self::input),
                Some(input) = q.strangers.recv() => self.take(input, &mut q.strangers, Self::input),
            }
            self.receive_rtp();
        }
    }

    /// A timer fired at `now`, `late`: the shard's overload state, published for the call
    /// placers.
    fn record_lateness(&mut self, now: Instant, late: Duration) {
        let change = if self.calls.is_empty() {
            self.lag.idle()
        } else {
            self.lag.record(now, late)
        };
        self.load.publish(&self.lag);
        match change {
            Some(Change::Overloaded) => tracing::warn!(
                shard = self.shard,
                calls = self.calls.len(),
                mean_lateness_ms = self.lag.mean().as_secs_f64() * 1e3,
                "shard overloaded: its timers fire late; no new call is placed until they are on time"
            ),
            Some(Change::Recovered) => tracing::info!(
                shard = self.shard,
                calls = self.calls.len(),
                "shard's timers on time again: new calls are placed"
            ),
            None => {}
        }
    }

    /// Handles `first` and up to [`BATCH`] more already waiting in `queue`.
    fn take<T>(
        &mut self,
        first: T,
        queue: &mut mpsc::Receiver<T>,
        mut handle: impl FnMut(&mut Self, T),
    ) {
        handle(self, first);
        for _ in 1..BATCH {
            match queue.try_recv() {
                Ok(input) => handle(self, input),
                Err(_) => return,
            }
        }
    }

    /// Reads what every call socket that is readable now holds (up to the per-tick cap).
    fn receive_rtp(&mut self) {
        let ready = self.rtp.poll_ready();
        self.rtp_busy = false;
        if ready == 0 {
            return;
        }
        let now = Instant::now();
        for i in 0..ready {
            let Some(call) = self.calls.get(&self.rtp.token(i)) else {
                continue;
            };
            let (board, counters, busy) =
                (&mut self.board, &self.inlets.counters, &mut self.rtp_busy);
            self.rtp
                .receive(&call.rtp, |source, datagram| match datagram {
                    Some(bytes) => {
                        *busy = true;
                        board.handle_rtp(now, call.id, source, bytes);
                    }
                    None => counters.rtp_dropped(Dropped::Parse),
                });
        }
    }

    fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Place {
                ticket,
                mut spec,
                progress,
                done,
            } => {
                let (low, high) = self.config.rtp_ports;
                let Some(rtp) = RtpPoller::bind(self.rtp_bind, (low, high)) else {
                    let _ = done.send(not_placed(&RuntimeError::NoRtpPort { low, high }));
                    return;
                };
                let port = rtp.local_addr().map(|a| a.port()).unwrap_or(0);
                spec.local_rtp = SocketAddr::new(self.rtp_advertised, port);
                let target = spec.target.clone();
                let mut peers = spec.peers.clone();
                peers.push(spec.next_hop);
                let id = match self.board.place(now, *spec) {
                    Ok(id) => id,
                    Err(e) => {
                        let _ = done.send(not_placed(&RuntimeError::Spec(e)));
                        return;
                    }
                };
                tracing::info!(call = %id, %target, rtp = port, "INVITE sent");
                if let Err(e) = self.rtp.add(&rtp, id.sip().get()) {
                    // Without its socket in the set the call would hear nothing.
                    tracing::error!(call = %id, error = %e, "RTP socket not polled: call hung up");
                    self.board.cancel(now, id);
                }
                for p in &peers {
                    self.inlets.trusted.add(*p);
                }
                self.tickets.insert(ticket, id);
                self.calls.insert(
                    id.sip().get(),
                    LiveCall {
                        id,
                        ticket,
                        progress,
                        done: Some(done),
                        rtp,
                        peers,
                    },
                );
            }
            Command::TrunkPeers { peers } => {
                self.inlets.trusted.set_fixed(peers.clone());
                self.board.set_trusted_peers(peers);
            }
            Command::Cancel { ticket } => {
                if let Some(id) = self.tickets.get(&ticket) {
                    self.board.cancel(now, *id);
                }
            }
        }
    }

    fn input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Sip {
                transport,
                source,
                bytes,
            } => {
                if let Err(e) = self.board.handle_sip(now, transport, source, &bytes) {
                    self.inlets.counters.sip_dropped(Dropped::of(&e));
                    tracing::debug!(%source, error = %e, "SIP message dropped");
                }
            }
            Input::StreamOpened {
                transport,
                peer,
                writer,
            } => {
                // A connection we opened to that address keeps carrying our messages.
                self.streams.entry((transport, peer)).or_insert(Stream {
                    writer,
                    calls: BTreeSet::new(),
                });
            }
            Input::StreamClosed { transport, peer } => {
                if let Some(stream) = self.streams.remove(&(transport, peer)) {
                    for call in stream.calls {
                        self.board.handle_transport_error(now, call);
                    }
                }
            }
        }
    }

    /// Sends what the switchboard queued and hands its events to the calls.
    fn flush(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.board.poll_transmit() {
                moved = true;
                match t {
                    Transmit::Sip(t) => self.send_sip(t),
                    Transmit::Rtp {
                        call,
                        destination,
                        payload,
                    } => {
                        if let Some(c) = self.calls.get_mut(&call.sip().get())
                            && let Err(e) = c.rtp.send(&payload, destination)
                        {
                            tracing::debug!(%call, error = %e, "RTP packet not sent");
                        }
                        self.board.recycle(payload);
                    }
                }
            }
            while let Some((id, event)) = self.board.poll_event() {
                moved = true;
                self.event(id, event);
            }
            if !moved {
                return;
            }
        }
    }

    fn send_sip(&mut self, t: sip::Transmit) {
        match t.transport {
            Transport::Udp => {
                let Some(sip_udp) = &self.sip_udp else {
                    // A TLS-only trunk: the user agent never sends over UDP then.
                    tracing::warn!(destination = %t.destination, "no SIP over UDP with a TLS-only trunk");
                    return;
                };
                if let Err(e) = sip_udp.send_to(&t.payload, t.destination) {
                    tracing::warn!(destination = %t.destination, error = %e, "SIP datagram not sent");
                    if let Some(call) = t.call
                        && e.kind() != std::io::ErrorKind::WouldBlock
                    {
                        self.board.handle_transport_error(Instant::now(), call);
                    }
                }
            }
            Transport::Tcp | Transport::Tls => {
                let key = (t.transport, t.destination);
                if !self.streams.contains_key(&key) {
                    let tls = Arc::clone(&self.tls);
                    let server_name = self
                        .config
                        .trunk
                        .as_ref()
                        .map(|trunk| trunk.host.clone())
                        .unwrap_or_else(|| t.destination.ip().to_string());
                    let writer = net::spawn_stream(
                        self.shard,
                        t.transport,
                        t.destination,
                        server_name,
                        tls,
                        self.inlets.clone(),
                    );
                    self.streams.insert(
                        key,
                        Stream {
                            writer,
                            calls: BTreeSet::new(),
                        },
                    );
                }
                if let Some(stream) = self.streams.get_mut(&key) {
                    if let Some(call) = t.call {
                        stream.calls.insert(call);
                    }
                    match stream.writer.try_send(t.payload) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // The peer does not read: SIP retransmits or times out.
                            tracing::warn!(destination = %t.destination, "SIP connection backlogged: message dropped");
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            if let Some(stream) = self.streams.remove(&key) {
                                for call in stream.calls {
                                    self.board.handle_transport_error(Instant::now(), call);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn event(&mut self, id: CallId, event: Event) {
        let Some(call) = self.calls.get_mut(&id.sip().get()) else {
            return;
        };
        let progress = match event {
            Event::Ringing => CallProgress::Ringing,
            Event::Answered => CallProgress::Answered,
            Event::Timeline(entry) => CallProgress::Timeline(entry),
            Event::DetectorLatency(d) => CallProgress::DetectorLatency(d),
            Event::Decided(report) => CallProgress::Decided(report.into()),
            Event::Finished(report) => {
                tracing::info!(call = %id, result = %report.result, "call finished");
                if let Some(reason) = report.timeline.iter().find_map(|e| match &e.event {
                    flow::TimelineEvent::AuthFailed { reason, .. } => Some(reason),
                    _ => None,
                }) {
                    // Our configuration, not the callee: say it where operators look.
                    tracing::error!(call = %id, %reason, "digest authentication failed");
                }
                if let Some(done) = call.done.take() {
                    let _ = done.send(CallReport {
                        result: report.result,
                        dtmf_method: report.dtmf_method,
                        timeline: report.timeline,
                    });
                }
                self.rtp.remove(&call.rtp);
                for p in &call.peers {
                    self.inlets.trusted.remove(*p);
                }
                let ticket = call.ticket;
                self.calls.remove(&id.sip().get());
                self.tickets.remove(&ticket);
                for stream in self.streams.values_mut() {
                    stream.calls.remove(&id.sip());
                }
                return;
            }
        };
        let _ = call.progress.send(progress);
    }
}
