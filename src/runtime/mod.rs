//! The SIP runtime: sockets, timers and tasks around the sans-IO call flow
//! ([`flow::Switchboard`]).
//!
//! ```text
//!  CallPlacer::place ──Command::Place──▶ ┌──── shard: a thread, its own event loop ────┐
//!  (one future per call)  ◀──progress──  │ Switchboard (SIP user agent + its calls)     │
//!                         ◀──report────  │ one timer: a timerfd at poll_timeout()       │
//!                                        │ its calls' RTP sockets: one epoll set,       │
//!                                        │   drained at every tick ([`media_io`])       │
//!                                        └──▲─────────────────────────────┬─────────────┘
//!        reader tasks (SIP ingress thread): │ Input (datagrams, messages,  │ sendto /
//!        SIP UDP socket, TCP listener,      │ transport errors)            │ connection queues
//!        one per TCP/TLS connection ────────┘                              ▼
//! ```
//! `sip.shards` shards (default: one per core) each hold their calls on a thread of their own
//! (no task per call or per transaction, no scheduler shared with HTTP or another shard); a
//! new call goes to the shard with the fewest. The SIP socket readers, on an ingress thread
//! of their own, only move messages into the owning shard's bounded queues (by the shard its
//! Via branch or Call-ID names, [`sip::route`]), strangers' through a per-IP token bucket
//! ([`admission`]). RTP is read by each shard itself at its ticks, one wake-up for every
//! call's packets. RTP ports come from `media.rtp_ports`; prompts are loaded once. What is
//! dropped on the way is counted in [`SipCounters`] (docs/SECURITY.md).

mod admission;
mod driver;
mod live;
mod load;
mod media_io;
mod net;
mod resolve;
mod tick;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flow::{CallResult, Mode, TimelineEntry, TimelineEvent};
use futures::future::BoxFuture;
use sip::auth::Credentials;
use sip::{Transport, Uri};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::call::{CallPlacer, CallProgress, CallReport, CallRequest};
use crate::config::{CallConfig, Config, SrtpMode};
use crate::metrics::SipCounters;

pub use live::{PromptError, Prompts};
pub use resolve::ResolveError;

/// Why the runtime cannot start or a call cannot be placed. Each variant says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// `sip.trunk` is not a SIP URI (our configuration).
    #[error("configuration key `sip.trunk`: {0}")]
    Trunk(#[source] sip::message::ParseError),
    /// `sip.trunk` names a transport other than udp, tcp or tls (our configuration).
    #[error("configuration key `sip.trunk`: transport must be udp, tcp or tls")]
    TrunkTransport,
    /// `sip.caller_id` or the trunk host cannot form our From URI (our configuration).
    #[error("configuration key `sip.caller_id`: caller id or host unusable in From: {0}")]
    CallerId(#[source] sip::message::ParseError),
    /// `media.rtp_ports` is malformed (our configuration).
    #[error("configuration key `media.rtp_ports`: {0}")]
    RtpPorts(&'static str),
    /// The SIP socket cannot be bound (our configuration or another process on the port).
    #[error("cannot listen for SIP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The prompts cannot be loaded (our installation: `media.prompts`).
    #[error(transparent)]
    Prompts(#[from] PromptError),
    /// A phone number was given but no trunk is configured (our configuration).
    #[error("`sip.trunk` is not set: phone numbers can only be called through a trunk")]
    NoTrunk,
    /// The destination is neither an E.164 number nor a SIP URI (the request).
    #[error("destination is not an E.164 number or a sip:/sips: URI")]
    Destination,
    /// The SIP URI's host name does not resolve (DNS, or the request).
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    /// The trunk's name does not resolve to any target (DNS, or our configuration).
    #[error("cannot resolve the trunk: {0}")]
    Dns(#[from] ResolveError),
    /// `sip.external_address` or `media.external_address` is malformed (our configuration).
    #[error("configuration key `{key}`: {reason}")]
    External {
        key: &'static str,
        reason: &'static str,
    },
    /// No free RTP port in `media.rtp_ports` (too many calls for the range, or ports taken).
    #[error("no free RTP port in media.rtp_ports {low}-{high}")]
    NoRtpPort { low: u16, high: u16 },
    /// The call's parameters are invalid (the request).
    #[error(transparent)]
    Spec(#[from] flow::SpecError),
    /// `sip.tls_ca` cannot be used (our configuration).
    #[error(transparent)]
    TlsCa(#[from] net::TlsCaError),
    /// A shard's thread or its event loop cannot be created (the host: threads or
    /// descriptors exhausted).
    #[error("cannot start a SIP shard: {0}")]
    Thread(#[source] std::io::Error),
    /// The driver task is gone (shut down or panicked): internal.
    #[error("the SIP runtime has stopped")]
    Stopped,
    /// `media.srtp = "require"` with a trunk that is not TLS (our configuration): SDES keys
    /// over clear SIP protect nothing, so no call could ever be placed.
    #[error(
        "configuration key `media.srtp`: \"require\" needs a TLS trunk (sips: or ;transport=tls)"
    )]
    SrtpNeedsTls,
    /// The operating system's random source failed while drawing identifier seeds or SRTP
    /// keys (the host is at fault).
    #[error("cannot read random bytes from the operating system: {0}")]
    Entropy(#[source] rand::rand_core::OsError),
}

/// Where calls go: `sip.trunk` parsed.
#[derive(Clone, Debug)]
pub struct Trunk {
    /// Host (name or address literal).
    pub host: String,
    /// Port (the URI's, else 5060, 5061 for TLS; with SRV, each target has its own).
    pub port: u16,
    /// Transport (`;transport=` or `sips:`, else UDP until NAPTR says otherwise at start).
    pub transport: Transport,
    /// What the URI itself says, for RFC 3263 (explicit port and transport).
    pub name: sip::locate::Name,
}

impl Trunk {
    /// Parses `sip:host[:port][;transport=udp|tcp|tls]` (or `sips:`).
    pub fn parse(uri: &str) -> Result<Trunk, RuntimeError> {
        let parsed = Uri::parse(uri).map_err(RuntimeError::Trunk)?;
        let transport = match (parsed.is_sips(), parsed.transport()) {
            (true, _) | (_, Some(Transport::Tls)) => Transport::Tls,
            (false, Some(t)) => t,
            (false, None) => {
                if parsed.param("transport").is_some() {
                    return Err(RuntimeError::TrunkTransport);
                }
                Transport::Udp
            }
        };
        let default_port = if transport == Transport::Tls {
            5061
        } else {
            5060
        };
        let host = parsed
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let name = sip::locate::Name {
            host: host.clone(),
            port: parsed.port(),
            transport: parsed.transport(),
            secure: parsed.is_sips(),
        };
        Ok(Trunk {
            host,
            port: parsed.port().unwrap_or(default_port),
            transport,
            name,
        })
    }

    /// `host[:port]` as it goes into URIs: the port only when the URI gave one (a domain
    /// found through SRV is named without it, RFC 3263 §4.2).
    fn host_port(&self) -> String {
        let host = match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => self.host.clone(),
        };
        match (self.name.port, self.host.parse::<IpAddr>()) {
            (Some(p), _) => format!("{host}:{p}"),
            // An address literal always carries its port (nothing else could give it).
            (None, Ok(_)) => format!("{host}:{}", self.port),
            (None, Err(_)) => host,
        }
    }
}

/// Everything the runtime takes from the configuration.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// SIP socket address (`sip.listen`; port 0: any free port).
    pub listen: SocketAddr,
    /// `sip.trunk`, if set.
    pub trunk: Option<Trunk>,
    /// Digest credentials (`sip.username`/`sip.password`), if a username is set.
    pub credentials: Option<Credentials>,
    /// Caller id (`sip.caller_id`), the From user part.
    pub caller_id: String,
    /// RTP port range, inclusive.
    pub rtp_ports: (u16, u16),
    /// RFC 3261 T1.
    pub t1: Duration,
    /// Whether SIP INFO keys count.
    pub sip_info_dtmf: bool,
    /// Prompt folder and languages (the first is the default).
    pub prompts: PathBuf,
    pub languages: Vec<String>,
    /// Extra CA certificates for TLS trunks (`sip.tls_ca`).
    pub tls_ca: Option<PathBuf>,
    /// The address to advertise when `listen` is a wildcard: the local address that routes to
    /// this host (the trunk, or a SIP URI's host for one-off calls).
    pub route_probe: Option<SocketAddr>,
    /// Every address of the trunk's host at its port, resolved at start: trusted outside any
    /// call (its OPTIONS get one stateless answer; its connections are accepted).
    pub trunk_peers: Vec<SocketAddr>,
    /// `sip.max_connections`, `sip.max_connections_per_ip`: accepted SIP/TCP connections.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// `sip.connection_idle_secs`.
    pub connection_idle: Duration,
    /// `sip.stranger_rate_per_sec`, `sip.stranger_burst`: the per-IP bucket of strangers.
    pub stranger_rate_per_sec: u32,
    pub stranger_burst: u32,
    /// `media.srtp`.
    pub srtp: SrtpMode,
    /// `sip.shards` (0 there: one per available core), at least 1.
    pub shards: usize,
    /// `sip.dns_servers` (empty: the system's).
    pub dns_servers: Vec<SocketAddr>,
    /// The trunk resolved at start (RFC 3263), if it resolved.
    pub trunk_located: Option<sip::locate::Located>,
    /// `sip.external_address`: public IP and optional port shown in Via/Contact.
    pub external_sip: Option<(IpAddr, Option<u16>)>,
    /// `media.external_address` (else the SIP external IP): shown in the SDP.
    pub external_media: Option<IpAddr>,
}

impl RuntimeConfig {
    /// The SIP address to advertise: `sip.external_address` over the local one.
    pub(crate) fn public_sip(&self, local: SocketAddr) -> SocketAddr {
        match self.external_sip {
            Some((ip, port)) => SocketAddr::new(ip, port.unwrap_or(local.port())),
            None => local,
        }
    }

    /// The RTP address to advertise for `local` (the advertised SIP IP).
    pub(crate) fn public_rtp(&self, local: IpAddr) -> IpAddr {
        self.external_media
            .or(self.external_sip.map(|(ip, _)| ip))
            .unwrap_or(local)
    }
}

impl RuntimeConfig {
    /// From the service configuration.
    pub fn from_config(config: &Config) -> Result<RuntimeConfig, RuntimeError> {
        let mut trunk = if config.sip.trunk.is_empty() {
            None
        } else {
            Some(Trunk::parse(&config.sip.trunk)?)
        };
        let credentials = (!config.sip.username.is_empty()).then(|| Credentials {
            username: config.sip.username.clone(),
            password: sip::redact::Secret::new(config.sip.password.expose()),
        });
        let rtp_ports = config
            .media
            .rtp_port_range()
            .map_err(RuntimeError::RtpPorts)?;
        // RFC 3263 once at start: the transport (NAPTR may choose it) and the trusted peers.
        // A trunk that does not resolve yet is no reason to refuse to start: calls resolve
        // again and report it.
        let trunk_located = match &mut trunk {
            Some(t) => match resolve::locate_at_start(&config.sip.dns_servers, &t.name) {
                Ok(located) => {
                    t.transport = located.transport();
                    Some(located)
                }
                Err(e) => {
                    tracing::warn!(trunk = %config.sip.trunk, error = %e, "trunk does not resolve at start");
                    None
                }
            },
            None => None,
        };
        let trunk_peers = trunk_located
            .as_ref()
            .map(sip::locate::Located::peers)
            .unwrap_or_default();
        let route_probe = trunk_peers.first().copied();
        let external_sip = config
            .sip
            .external()
            .map_err(|reason| RuntimeError::External {
                key: "sip.external_address",
                reason,
            })?;
        let external_media = config
            .media
            .external()
            .map_err(|reason| RuntimeError::External {
                key: "media.external_address",
                reason,
            })?;
        let srtp = config.media.srtp;
        if let Some(t) = &trunk
            && t.transport != Transport::Tls
        {
            match srtp {
                SrtpMode::Require => return Err(RuntimeError::SrtpNeedsTls),
                SrtpMode::Offer => tracing::warn!(
                    "media.srtp = \"offer\" with a trunk that is not TLS: no SRTP keys are sent \
                     (they would travel in clear); calls use plain RTP"
                ),
                SrtpMode::Off => {}
            }
        }
        Ok(RuntimeConfig {
            listen: config.sip.listen,
            trunk,
            credentials,
            caller_id: config.sip.caller_id.clone(),
            rtp_ports,
            t1: Duration::from_millis(config.sip.t1_ms),
            sip_info_dtmf: config.sip.sip_info_dtmf,
            prompts: config.media.prompts.clone(),
            languages: config.media.languages.clone(),
            tls_ca: config.sip.tls_ca.clone(),
            route_probe,
            trunk_peers,
            max_connections: config.sip.max_connections as usize,
            max_connections_per_ip: config.sip.max_connections_per_ip as usize,
            connection_idle: Duration::from_secs(config.sip.connection_idle_secs),
            stranger_rate_per_sec: config.sip.stranger_rate_per_sec,
            stranger_burst: config.sip.stranger_burst,
            srtp,
            shards: match config.sip.shards {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n as usize,
            },
            dns_servers: config.sip.dns_servers.clone(),
            trunk_located,
            external_sip,
            external_media,
        })
    }
}

/// One call to place, in the service's terms.
#[derive(Clone, Debug)]
pub struct CallOrder {
    /// `+` E.164 number or `sip:`/`sips:` URI.
    pub destination: String,
    pub extension: Option<String>,
    pub mode: Mode,
    pub expected_digits: Option<flow::keys::SealedDigits>,
    pub language: String,
    pub call: CallConfig,
}

/// A running SIP runtime; cheap to clone. The driver stops when the last clone is dropped.
#[derive(Clone)]
pub struct Runtime {
    shards: Arc<[Shard]>,
    config: Arc<RuntimeConfig>,
    local_sip: SocketAddr,
    counters: Arc<SipCounters>,
    /// The trunk's targets when it is a name (RFC 3263, cached per TTL); None without a
    /// trunk or with an address literal.
    trunk_targets: Option<Arc<resolve::TrunkTargets>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("local_sip", &self.local_sip)
            .finish()
    }
}

/// One shard as the call futures see it: its driver's command channel and how many calls it
/// holds.
struct Shard {
    commands: mpsc::UnboundedSender<driver::Command>,
    calls: std::sync::atomic::AtomicUsize,
    /// Whether its timers fire late (`load`): new calls go elsewhere or wait.
    load: Arc<load::ShardLoad>,
}

/// A call counted on its shard until the call's future ends.
struct Seat<'a>(&'a Shard);

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        self.0
            .calls
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Runtime {
    /// Binds the SIP socket, loads the prompts and starts the driver tasks. Must be called
    /// inside a tokio runtime.
    pub fn start(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let prompts = Prompts::load(&config.prompts, &config.languages)?;
        let counters = Arc::new(SipCounters::new());
        let trunk_targets = match &config.trunk {
            Some(t) if t.host.parse::<IpAddr>().is_err() => {
                Some(Arc::new(resolve::TrunkTargets::new(
                    resolve::Dns::new(&config.dns_servers)?,
                    t.name.clone(),
                    t.transport,
                    config.trunk_located.clone(),
                )))
            }
            _ => None,
        };
        let (commands, local_sip) = driver::spawn(config.clone(), prompts, Arc::clone(&counters))?;
        let shards = commands
            .into_iter()
            .map(|ends| Shard {
                commands: ends.commands,
                calls: std::sync::atomic::AtomicUsize::new(0),
                load: ends.load,
            })
            .collect();
        Ok(Runtime {
            shards,
            config: Arc::new(config),
            local_sip,
            counters,
            trunk_targets,
        })
    }

    /// What the runtime dropped so far, by reason (for `/metrics`).
    pub fn counters(&self) -> Arc<SipCounters> {
        Arc::clone(&self.counters)
    }

    /// The SIP address advertised in Via/Contact.
    pub fn local_sip(&self) -> SocketAddr {
        self.local_sip
    }

    /// Places one call and waits for its report; `cancel` hangs it up (`cancelled`).
    pub async fn call(
        &self,
        order: CallOrder,
        progress: mpsc::UnboundedSender<CallProgress>,
        cancel: CancellationToken,
    ) -> CallReport {
        let spec = match self.spec(&order).await {
            Ok(spec) => spec,
            Err(e) => {
                tracing::error!(error = %e, "call not placed");
                return not_placed(&e);
            }
        };
        if cancel.is_cancelled() {
            // Hung up before anything went out (DNS was still resolving): nothing to CANCEL.
            return CallReport {
                result: CallResult::Cancelled,
                dtmf_method: None,
                timeline: vec![TimelineEntry {
                    at_ms: 0,
                    event: TimelineEvent::Outcome {
                        result: CallResult::Cancelled,
                    },
                }],
            };
        }
        let (done, report) = oneshot::channel();
        let ticket = driver::Ticket::next();
        let seat = self.seat();
        let shard = seat.0;
        if shard
            .commands
            .send(driver::Command::Place {
                ticket,
                spec: Box::new(spec),
                progress,
                done,
            })
            .is_err()
        {
            return not_placed(&RuntimeError::Stopped);
        }
        let mut report = report;
        tokio::select! {
            r = &mut report => return r.unwrap_or_else(|_| not_placed(&RuntimeError::Stopped)),
            _ = cancel.cancelled() => {}
        }
        let _ = shard.commands.send(driver::Command::Cancel { ticket });
        report
            .await
            .unwrap_or_else(|_| not_placed(&RuntimeError::Stopped))
    }

    /// Whether a new call can be placed without hurting the calls in flight: some shard's
    /// timers fire on time (`load`). The dialer claims no verification while this is false.
    pub fn has_capacity(&self) -> bool {
        self.shards.iter().any(|s| !s.load.overloaded())
    }

    /// The shards' mean timer lateness, as last published (for logs and tests).
    pub fn timer_lateness(&self) -> Vec<Duration> {
        self.shards.iter().map(|s| s.load.mean()).collect()
    }

    /// A seat on the shard holding the fewest calls among those not overloaded (among all
    /// when every one is: the call was claimed already). A scan of the shards, not of calls.
    fn seat(&self) -> Seat<'_> {
        use std::sync::atomic::Ordering;
        let shard = self
            .shards
            .iter()
            .min_by_key(|s| (s.load.overloaded(), s.calls.load(Ordering::Relaxed)))
            .unwrap_or_else(|| unreachable!("a runtime has at least one shard"));
        shard.calls.fetch_add(1, Ordering::Relaxed);
        Seat(shard)
    }

    /// What the flow needs to place `order`.
    async fn spec(&self, order: &CallOrder) -> Result<flow::CallSpec, RuntimeError> {
        let cfg = &self.config;
        let dest = order.destination.as_str();
        let target = if is_e164(dest) {
            let trunk = cfg.trunk.as_ref().ok_or(RuntimeError::NoTrunk)?;
            Uri::parse(&format!("sip:{dest}@{};user=phone", trunk.host_port()))
                .map_err(|_| RuntimeError::Destination)?
        } else if dest.starts_with("sip:") || dest.starts_with("sips:") {
            Uri::parse(dest).map_err(|_| RuntimeError::Destination)?
        } else {
            return Err(RuntimeError::Destination);
        };
        // Responses count only from the hop tried at the time (`next_hop`, then each of
        // `alternates` in turn, RFC 3263 §4.3); in-dialog requests from any address of the
        // trunk (one behind several addresses answers from one and may hang up from another).
        let (hops, peers, transport) = match (&cfg.trunk, &self.trunk_targets) {
            (Some(trunk), Some(targets)) => {
                let t = targets.current().await?;
                if t.changed {
                    // Re-resolved to other addresses: those are the trunk's trusted peers now.
                    // Every shard's agent answers the trunk's OPTIONS and strays.
                    for shard in self.shards.iter() {
                        let _ = shard.commands.send(driver::Command::TrunkPeers {
                            peers: t.peers.clone(),
                        });
                    }
                }
                (t.hops, t.peers, trunk.transport)
            }
            (Some(trunk), None) => {
                let peers = resolve(&trunk.host, trunk.port).await?;
                (peers.clone(), peers, trunk.transport)
            }
            (None, _) => {
                let t = Trunk::parse(dest).map_err(|_| RuntimeError::Destination)?;
                let peers = resolve(&t.host, t.port).await?;
                // A direct call goes to the host's first address only (as before).
                (peers[..1].to_vec(), peers, t.transport)
            }
        };
        let Some((&next_hop, alternates)) = hops.split_first() else {
            return Err(RuntimeError::Dns(ResolveError::NoAddress(
                order.destination.clone(),
            )));
        };
        let alternates = alternates.to_vec();
        let user = if !cfg.caller_id.is_empty() {
            cfg.caller_id.clone()
        } else if let Some(c) = &cfg.credentials {
            c.username.clone()
        } else {
            "callverify".to_string()
        };
        let from_host = cfg
            .trunk
            .as_ref()
            .map(|t| t.host_port())
            .unwrap_or_else(|| match self.local_sip {
                SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
                SocketAddr::V4(v4) => v4.ip().to_string(),
            });
        let from =
            Uri::parse(&format!("sip:{user}@{from_host}")).map_err(RuntimeError::CallerId)?;
        Ok(flow::CallSpec {
            target,
            from,
            display_name: None,
            next_hop,
            peers,
            alternates,
            transport,
            // Filled in by the driver when it binds the call's RTP socket.
            local_rtp: SocketAddr::new(self.local_sip.ip(), 0),
            credentials: cfg.credentials.clone(),
            mode: order.mode,
            expected_digits: order.expected_digits.clone(),
            extension: order.extension.clone(),
            language: order.language.clone(),
            rules: flow::Rules {
                ring_timeout: order.call.ring_timeout(),
                response_timeout: order.call.response_timeout(),
                inter_digit_timeout: order.call.inter_digit_timeout(),
                challenge_timeout: order.call.challenge_timeout(),
                prompt_replays: order.call.prompt_replays,
                fraud_code: order.call.fraud_code.clone(),
                answer_guard: order.call.answer_guard(),
                sip_info_dtmf: cfg.sip_info_dtmf,
            },
            srtp: srtp_keys(cfg.srtp)?,
        })
    }
}

/// `media.srtp` with fresh keys for one call, one per suite, from the operating system's
/// CSPRNG (the cores draw no randomness of their own).
fn srtp_keys(mode: SrtpMode) -> Result<Option<flow::Srtp>, RuntimeError> {
    use rand::TryRngCore as _;
    let policy = match mode {
        SrtpMode::Off => return Ok(None),
        SrtpMode::Offer => flow::SrtpPolicy::Offer,
        SrtpMode::Require => flow::SrtpPolicy::Require,
    };
    let draw = || {
        let mut bytes = [0u8; sip::sdes::KEY_SALT_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(RuntimeError::Entropy)?;
        Ok::<_, RuntimeError>(sip::sdes::SdesKey::new(bytes))
    };
    Ok(Some(flow::Srtp {
        policy,
        keys: [draw()?, draw()?],
    }))
}

/// `+` and 8 to 15 digits (E.164, already validated by the API for the service).
fn is_e164(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// A/AAAA lookup of a SIP URI's host called directly (no trunk), or of a trunk given as an
/// address literal: every address of the host at `port`, the first one being where the
/// INVITE goes. Never empty.
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, RuntimeError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| RuntimeError::Resolve {
            host: host.to_string(),
            reason: e.to_string(),
        })?;
    let mut all: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if !all.contains(&a) {
            all.push(a);
        }
    }
    if all.is_empty() {
        return Err(RuntimeError::Resolve {
            host: host.to_string(),
            reason: "no address".into(),
        });
    }
    Ok(all)
}

/// 32 bytes from the operating system's CSPRNG (getrandom): the key of every identifier,
/// SSRC and sequence origin the calls show the network.
fn os_seed() -> Result<[u8; 32], RuntimeError> {
    use rand::TryRngCore as _;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(RuntimeError::Entropy)?;
    Ok(seed)
}

/// The trunk's address for choosing which local address to advertise: an IP literal, or
/// the host name resolved once at start (blocking, like any start-up configuration read).
pub fn probe_address(host: &str, port: u16) -> Option<SocketAddr> {
    resolve_now(host, port).first().copied()
}

/// Every address of `host` at `port`, resolved now (blocking: start-up only); empty when it
/// does not resolve (calls resolve again and report it).
fn resolve_now(host: &str, port: u16) -> Vec<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, port)];
    }
    use std::net::ToSocketAddrs as _;
    let mut all: Vec<SocketAddr> = Vec::new();
    for a in (host, port).to_socket_addrs().into_iter().flatten() {
        if !all.contains(&a) {
            all.push(a);
        }
    }
    all
}

/// The report of a call that never reached the network.
fn not_placed(e: &RuntimeError) -> CallReport {
    let result = match e {
        RuntimeError::Resolve { .. } | RuntimeError::Dns(_) => CallResult::Unreachable,
        _ => CallResult::Failed,
    };
    CallReport {
        result,
        dtmf_method: None,
        timeline: vec![
            TimelineEntry {
                at_ms: 0,
                event: TimelineEvent::NoResponse {
                    reason: e.to_string(),
                },
            },
            TimelineEntry {
                at_ms: 0,
                event: TimelineEvent::Outcome { result },
            },
        ],
    }
}

/// The local address to advertise for a socket bound to `bound`: the bound address, or when
/// that is a wildcard, the address the kernel would use to reach `probe`.
fn advertised(bound: SocketAddr, probe: Option<SocketAddr>) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let ip = probe
        .and_then(|p| {
            let any: SocketAddr = if p.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = std::net::UdpSocket::bind(any).ok()?;
            s.connect(p).ok()?;
            s.local_addr().ok().map(|a| a.ip())
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, bound.port())
}

/// The placer `serve` uses: the SIP runtime. Must be called inside a tokio runtime. A
/// runtime that cannot start (SIP port taken, unreadable prompts, a bad `sip.trunk`) is an
/// error for the caller to report: a service that accepted verifications it could never place
/// would fail every sign-in quietly.
pub fn call_placer(config: &Config) -> Result<Arc<dyn CallPlacer>, RuntimeError> {
    Ok(counted_call_placer(config)?.0)
}

/// [`call_placer`], with the counters of what the runtime drops (attach them to the
/// service's metrics).
pub fn counted_call_placer(
    config: &Config,
) -> Result<(Arc<dyn CallPlacer>, Arc<SipCounters>), RuntimeError> {
    let runtime = RuntimeConfig::from_config(config).and_then(Runtime::start)?;
    let counters = runtime.counters();
    Ok((Arc::new(RuntimePlacer::new(runtime)), counters))
}

/// The [`CallPlacer`] the service uses.
#[derive(Clone, Debug)]
pub struct RuntimePlacer {
    runtime: Runtime,
}

impl RuntimePlacer {
    pub fn new(runtime: Runtime) -> RuntimePlacer {
        RuntimePlacer { runtime }
    }
}

impl CallPlacer for RuntimePlacer {
    fn place(
        &self,
        call: CallRequest,
        progress: mpsc::UnboundedSender<CallProgress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, CallReport> {
        let runtime = self.runtime.clone();
        let order = CallOrder {
            destination: call.destination.expose().to_string(),
            extension: call.extension,
            mode: call.mode,
            expected_digits: call.expected_digits,
            language: call.language,
            call: call.call,
        };
        Box::pin(async move { runtime.call(order, progress, cancel).await })
    }

    fn has_capacity(&self) -> bool {
        self.runtime.has_capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunk_uris() {
        let t = Trunk::parse("sip:trunk.example.net").unwrap();
        assert_eq!((t.port, t.transport), (5060, Transport::Udp));
        let t = Trunk::parse("sip:10.0.0.1:5080;transport=tcp").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.transport),
            ("10.0.0.1", 5080, Transport::Tcp)
        );
        let t = Trunk::parse("sips:trunk.example.net").unwrap();
        assert_eq!((t.port, t.transport), (5061, Transport::Tls));
        assert!(Trunk::parse("sip:x;transport=sctp").is_err());
        assert!(Trunk::parse("http://x").is_err());
    }

    #[test]
    fn e164() {
        assert!(is_e164("+14255550123"));
        assert!(!is_e164("14255550123"));
        assert!(!is_e164("+1425"));
    }
}
