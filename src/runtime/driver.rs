//! The driver task: one [`Switchboard`] for every call, fed by the socket readers through one
//! channel, woken by one timer (the switchboard's earliest deadline).

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
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

use super::live::Prompts;
use super::net;
use super::{RuntimeConfig, RuntimeError, advertised, not_placed};
use crate::call::{CallProgress, CallReport};

/// The driver never sleeps less than this after handling timers (a deadline stuck in the
/// past would otherwise spin the task).
const MIN_TIMER_STEP: Duration = Duration::from_millis(1);

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
}

/// What the socket tasks bring in.
pub(crate) enum Input {
    /// One SIP message (datagram, or framed from a stream).
    Sip {
        transport: Transport,
        source: SocketAddr,
        bytes: Vec<u8>,
    },
    /// One datagram on a call's RTP socket.
    Rtp {
        call: CallId,
        source: SocketAddr,
        bytes: Vec<u8>,
    },
    /// The far end opened a connection to us.
    StreamOpened {
        transport: Transport,
        peer: SocketAddr,
        writer: mpsc::UnboundedSender<Vec<u8>>,
    },
    /// A connection failed or closed.
    StreamClosed {
        transport: Transport,
        peer: SocketAddr,
    },
}

struct LiveCall {
    ticket: Ticket,
    progress: mpsc::UnboundedSender<CallProgress>,
    done: Option<oneshot::Sender<CallReport>>,
    rtp: net::Udp,
    reader: JoinHandle<()>,
}

struct Stream {
    writer: mpsc::UnboundedSender<Vec<u8>>,
    calls: BTreeSet<CallHandle>,
}

struct Driver {
    board: Switchboard<LiveFactory>,
    config: Arc<RuntimeConfig>,
    sip_udp: net::Udp,
    rtp_bind: IpAddr,
    rtp_advertised: IpAddr,
    calls: HashMap<CallId, LiveCall>,
    tickets: HashMap<Ticket, CallId>,
    streams: HashMap<(Transport, SocketAddr), Stream>,
    inputs: mpsc::UnboundedSender<Input>,
    tls: Arc<rustls::ClientConfig>,
    readers: Vec<JoinHandle<()>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
        for c in self.calls.values() {
            c.reader.abort();
        }
    }
}

/// Binds the SIP sockets and starts the driver (inside a tokio runtime); returns its command
/// channel and the advertised SIP address.
pub(crate) fn spawn(
    config: RuntimeConfig,
    prompts: Prompts,
) -> Result<(mpsc::UnboundedSender<Command>, SocketAddr), RuntimeError> {
    let bind_err = |source| RuntimeError::Bind {
        addr: config.listen,
        source,
    };
    let std_socket = std::net::UdpSocket::bind(config.listen).map_err(bind_err)?;
    let sip_udp = net::Udp::new(std_socket).map_err(bind_err)?;
    let bound = sip_udp.local_addr().map_err(bind_err)?;
    let local = advertised(bound, config.route_probe);
    let (inputs, inputs_rx) = mpsc::unbounded_channel();
    let mut readers = vec![net::spawn_udp_reader(
        Arc::clone(&sip_udp.tokio),
        inputs.clone(),
        |source, bytes| Input::Sip {
            transport: Transport::Udp,
            source,
            bytes,
        },
    )];
    // TCP on the same port, for far ends that open a connection to our Contact.
    let tcp = std::net::TcpListener::bind(bound)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(TcpListener::from_std);
    match tcp {
        Ok(listener) => {
            let inputs = inputs.clone();
            readers.push(tokio::spawn(async move {
                while let Ok((tcp, peer)) = listener.accept().await {
                    net::spawn_accepted(tcp, peer, inputs.clone());
                }
            }));
        }
        Err(e) => tracing::debug!(%bound, error = %e, "no SIP over TCP listener"),
    }
    let mut sip_config = sip::Config::new(local);
    sip_config.timers.t1 = config.t1;
    sip_config.timers.t2 = sip_config.timers.t2.max(config.t1);
    let board = Switchboard::new(sip_config, rand::random(), LiveFactory::new(prompts.book()));
    let tls = net::tls_config(config.tls_ca.as_deref())?;
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let driver = Driver {
        board,
        config: Arc::new(config),
        sip_udp,
        rtp_bind: bound.ip(),
        rtp_advertised: local.ip(),
        calls: HashMap::new(),
        tickets: HashMap::new(),
        streams: HashMap::new(),
        inputs,
        tls,
        readers,
    };
    tracing::info!(sip = %local, "SIP runtime started");
    tokio::spawn(driver.run(commands_rx, inputs_rx));
    Ok((commands, local))
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut inputs: mpsc::UnboundedReceiver<Input>,
    ) {
        let mut commands_open = true;
        let mut last_timeout = Instant::now();
        loop {
            self.flush();
            if !commands_open && self.calls.is_empty() {
                return;
            }
            let deadline = self
                .board
                .poll_timeout()
                .map(|d| d.max(last_timeout + MIN_TIMER_STEP));
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                command = commands.recv(), if commands_open => match command {
                    Some(c) => self.command(c),
                    None => commands_open = false,
                },
                Some(input) = inputs.recv() => {
                    self.input(input);
                    // Drain what else arrived before looking at the clock again.
                    while let Ok(input) = inputs.try_recv() {
                        self.input(input);
                    }
                }
                () = timer => {
                    let now = Instant::now();
                    last_timeout = now;
                    self.board.handle_timeout(now);
                }
            }
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
                let Some(rtp) = net::bind_rtp(self.rtp_bind, (low, high)) else {
                    let _ = done.send(not_placed(&RuntimeError::NoRtpPort { low, high }));
                    return;
                };
                let port = rtp.local_addr().map(|a| a.port()).unwrap_or(0);
                spec.local_rtp = SocketAddr::new(self.rtp_advertised, port);
                let target = spec.target.clone();
                let id = match self.board.place(now, *spec) {
                    Ok(id) => id,
                    Err(e) => {
                        let _ = done.send(not_placed(&RuntimeError::Spec(e)));
                        return;
                    }
                };
                tracing::info!(call = %id, %target, rtp = port, "INVITE sent");
                let reader = net::spawn_udp_reader(
                    Arc::clone(&rtp.tokio),
                    self.inputs.clone(),
                    move |source, bytes| Input::Rtp {
                        call: id,
                        source,
                        bytes,
                    },
                );
                self.tickets.insert(ticket, id);
                self.calls.insert(
                    id,
                    LiveCall {
                        ticket,
                        progress,
                        done: Some(done),
                        rtp,
                        reader,
                    },
                );
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
                    tracing::debug!(%source, error = %e, "unusable SIP message dropped");
                }
            }
            Input::Rtp {
                call,
                source,
                bytes,
            } => self.board.handle_rtp(now, call, source, &bytes),
            Input::StreamOpened {
                transport,
                peer,
                writer,
            } => {
                self.streams.insert(
                    (transport, peer),
                    Stream {
                        writer,
                        calls: BTreeSet::new(),
                    },
                );
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
                        if let Some(c) = self.calls.get(&call)
                            && let Err(e) = c.rtp.send_to(&payload, destination)
                        {
                            tracing::debug!(%call, error = %e, "RTP packet not sent");
                        }
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
                if let Err(e) = self.sip_udp.send_to(&t.payload, t.destination) {
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
                        t.transport,
                        t.destination,
                        server_name,
                        tls,
                        self.inputs.clone(),
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
                    let _ = stream.writer.send(t.payload);
                }
            }
        }
    }

    fn event(&mut self, id: CallId, event: Event) {
        let Some(call) = self.calls.get_mut(&id) else {
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
                call.reader.abort();
                let ticket = call.ticket;
                self.calls.remove(&id);
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
