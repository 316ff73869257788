//! The trunk's targets from DNS: RFC 3263 lookups (NAPTR → SRV → A/AAAA) with hickory, the
//! choices made by [`sip::locate`], the result kept for its TTL and refreshed after.
//!
//! ```text
//!  Runtime::call ──▶ TrunkTargets::current ── fresh? ──▶ Located (cached)
//!                                 │ stale or none
//!                                 ▼
//!                     Dns::locate: plan(name) → NAPTR? → SRV? → A/AAAA per target
//!                                 │ failed: the stale answer is used again (RFC 8767)
//!                                 ▼
//!                     Located::hops(rng) → CallSpec { next_hop, alternates, peers }
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use sip::Transport;
use sip::locate::{self, Destination, Located, Name, Naptr, Plan, Srv};

/// Transports the runtime speaks, in the order it prefers them when DNS offers a choice of
/// equal standing (TLS protects the signalling; UDP needs no connection).
const SUPPORTED: [Transport; 3] = [Transport::Tls, Transport::Udp, Transport::Tcp];
/// A failed lookup is not asked again for this long when an older answer can be used (RFC
/// 8767 §5 suggests 30 s before retrying a failed refresh).
const STALE_RETRY: Duration = Duration::from_secs(30);
/// Per-query timeout and attempts: one ring timeout (30 s) must leave room for the call.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;

/// Why the trunk's name did not resolve (DNS or our configuration is at fault).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// `/etc/resolv.conf` cannot be read and `sip.dns_servers` is empty (the host).
    #[error("cannot read the system's DNS configuration: {0}")]
    System(#[source] NetError),
    /// A lookup failed (timeout, SERVFAIL, refused…).
    #[error("DNS lookup of {name} failed: {source}")]
    Lookup {
        name: String,
        #[source]
        source: NetError,
    },
    /// Every record was followed and no address came out.
    #[error("{0} has no SIP target with an address")]
    NoAddress(String),
}

/// A DNS stub resolver: `sip.dns_servers`, or the system's configuration.
#[derive(Clone)]
pub(crate) struct Dns {
    resolver: TokioResolver,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dns")
    }
}

impl Dns {
    /// A resolver asking `servers` (UDP, then TCP for truncated answers), or the system's
    /// name servers when the list is empty. Must be called inside a tokio runtime (the
    /// resolver runs its connections there).
    pub(crate) fn new(servers: &[SocketAddr]) -> Result<Dns, ResolveError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if servers.is_empty() {
            TokioResolver::builder(provider).map_err(ResolveError::System)?
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in &mut ns.connections {
                        c.port = s.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), name_servers),
                provider,
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = QUERY_ATTEMPTS;
        let resolver = builder.build().map_err(ResolveError::System)?;
        Ok(Dns { resolver })
    }

    /// RFC 3263 §4 for `name`: the transport (`transport` when already chosen, else what
    /// NAPTR says) and every destination, valid for the smallest TTL seen.
    pub(crate) async fn locate(
        &self,
        name: &Name,
        transport: Option<Transport>,
    ) -> Result<Located, ResolveError> {
        let now = Instant::now();
        match locate::plan(name) {
            Plan::Address(addr, t) => Ok(Located::address(addr, transport.unwrap_or(t), now)),
            Plan::Host {
                host,
                port,
                transport: t,
            } => {
                let (addrs, ttl) = self.addrs(&host).await?;
                let dest = Destination {
                    srv: plain(&host, port),
                    addrs,
                };
                finish(&host, transport.unwrap_or(t), vec![dest], now, ttl)
            }
            Plan::Srv { host, transport: t } => {
                let t = transport.unwrap_or(t);
                self.by_srv(&host, &locate::srv_name(&host, t), t, now, None)
                    .await
            }
            Plan::Naptr { host, secure } => {
                let (naptr, naptr_ttl) = self.naptr(&host).await?;
                let mut choices = locate::select_naptr(&naptr, secure, &SUPPORTED);
                if let Some(t) = transport {
                    choices.retain(|(c, _)| *c == t);
                }
                match choices.into_iter().next() {
                    Some((t, srv)) => self.by_srv(&host, &srv, t, now, naptr_ttl).await,
                    None => {
                        // §4.1: no NAPTR: SRV for each transport we speak, the first that
                        // answers wins (or the one already chosen).
                        let order: Vec<Transport> = match transport {
                            Some(t) => vec![t],
                            None if secure => vec![Transport::Tls],
                            None => vec![Transport::Udp, Transport::Tcp, Transport::Tls],
                        };
                        for t in &order {
                            let (srv, ttl) = self.srv(&locate::srv_name(&host, *t)).await?;
                            if !srv.is_empty() {
                                return self
                                    .follow(&host, srv, *t, now, min_ttl(naptr_ttl, ttl))
                                    .await;
                            }
                        }
                        // §4.2: no SRV either: A/AAAA at the default port.
                        let t = order[0];
                        let (addrs, ttl) = self.addrs(&host).await?;
                        let dest = Destination {
                            srv: plain(&host, locate::default_port(t)),
                            addrs,
                        };
                        finish(&host, t, vec![dest], now, min_ttl(naptr_ttl, ttl))
                    }
                }
            }
        }
    }

    /// SRV of `srv_name`, then A/AAAA of each target; without SRV, A/AAAA of `host` at the
    /// transport's default port (RFC 3263 §4.2).
    async fn by_srv(
        &self,
        host: &str,
        srv_name: &str,
        transport: Transport,
        now: Instant,
        ttl: Option<Duration>,
    ) -> Result<Located, ResolveError> {
        let (srv, srv_ttl) = self.srv(srv_name).await?;
        let ttl = min_ttl(ttl, srv_ttl);
        if srv.is_empty() {
            let (addrs, a_ttl) = self.addrs(host).await?;
            let dest = Destination {
                srv: plain(host, locate::default_port(transport)),
                addrs,
            };
            return finish(host, transport, vec![dest], now, min_ttl(ttl, a_ttl));
        }
        self.follow(host, srv, transport, now, ttl).await
    }

    /// A/AAAA of every SRV target (a target that does not resolve is skipped: the others
    /// may still answer).
    async fn follow(
        &self,
        host: &str,
        srv: Vec<Srv>,
        transport: Transport,
        now: Instant,
        mut ttl: Option<Duration>,
    ) -> Result<Located, ResolveError> {
        let mut dests = Vec::new();
        for s in srv
            .into_iter()
            .filter(|s| !s.is_unavailable())
            .take(locate::MAX_SRV)
        {
            let addrs = match s.target.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match self.addrs(&s.target).await {
                    Ok((addrs, a_ttl)) => {
                        ttl = min_ttl(ttl, a_ttl);
                        addrs
                    }
                    Err(e) => {
                        tracing::warn!(target = %s.target, error = %e, "SRV target does not resolve");
                        continue;
                    }
                },
            };
            dests.push(Destination { srv: s, addrs });
        }
        finish(host, transport, dests, now, ttl)
    }

    async fn naptr(&self, host: &str) -> Result<(Vec<Naptr>, Option<Duration>), ResolveError> {
        let mut ttl = None;
        let records = self
            .records(host, RecordType::NAPTR, |data, t| match data {
                RData::NAPTR(n) => {
                    ttl = min_ttl(ttl, Some(t));
                    Some(Naptr {
                        order: n.order,
                        preference: n.preference,
                        flags: String::from_utf8_lossy(&n.flags).into_owned(),
                        services: String::from_utf8_lossy(&n.services).into_owned(),
                        replacement: n.replacement.to_ascii(),
                    })
                }
                _ => None,
            })
            .await?;
        Ok((records, ttl))
    }

    async fn srv(&self, name: &str) -> Result<(Vec<Srv>, Option<Duration>), ResolveError> {
        let mut ttl = None;
        let records = self
            .records(name, RecordType::SRV, |data, t| match data {
                RData::SRV(s) => {
                    ttl = min_ttl(ttl, Some(t));
                    Some(Srv {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: s.target.to_ascii().trim_end_matches('.').to_string(),
                    })
                }
                _ => None,
            })
            .await?;
        Ok((records, ttl))
    }

    /// A and AAAA of `host`, in the resolver's order (never more than [`locate::MAX_ADDRS`]).
    async fn addrs(&self, host: &str) -> Result<(Vec<IpAddr>, Option<Duration>), ResolveError> {
        let lookup = self
            .resolver
            .lookup_ip(fqdn(host))
            .await
            .map_err(|source| lookup_error(host, source))?;
        let ttl = lookup
            .valid_until()
            .checked_duration_since(std::time::Instant::now());
        let addrs: Vec<IpAddr> = lookup.iter().take(locate::MAX_ADDRS).collect();
        if addrs.is_empty() {
            return Err(ResolveError::NoAddress(host.to_string()));
        }
        Ok((addrs, Some(ttl.unwrap_or(Duration::ZERO))))
    }

    /// Records of one type; no record at all is an empty list, not an error.
    async fn records<T>(
        &self,
        name: &str,
        kind: RecordType,
        mut take: impl FnMut(&RData, Duration) -> Option<T>,
    ) -> Result<Vec<T>, ResolveError> {
        match self.resolver.lookup(fqdn(name), kind).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| take(&r.data, Duration::from_secs(u64::from(r.ttl))))
                .take(locate::MAX_SRV)
                .collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(source) => Err(lookup_error(name, source)),
        }
    }
}

/// `name.` : the trunk's name is absolute (no search domains appended).
fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

fn lookup_error(name: &str, source: NetError) -> ResolveError {
    if source.is_no_records_found() {
        return ResolveError::NoAddress(name.to_string());
    }
    ResolveError::Lookup {
        name: name.to_string(),
        source,
    }
}

fn min_ttl(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A destination without SRV: the host at `port`.
fn plain(host: &str, port: u16) -> Srv {
    Srv {
        priority: 0,
        weight: 0,
        port,
        target: host.to_string(),
    }
}

fn finish(
    host: &str,
    transport: Transport,
    dests: Vec<Destination>,
    now: Instant,
    ttl: Option<Duration>,
) -> Result<Located, ResolveError> {
    let located = Located::new(transport, dests, now, ttl.unwrap_or(Duration::ZERO));
    if located.is_empty() {
        return Err(ResolveError::NoAddress(host.to_string()));
    }
    Ok(located)
}

/// The trunk's current resolution, shared by every call.
#[derive(Debug)]
pub(crate) struct TrunkTargets {
    dns: Dns,
    name: Name,
    transport: Transport,
    cache: tokio::sync::Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    located: Option<Located>,
    /// After a failed refresh: the stale answer is used until then.
    retry_at: Option<Instant>,
}

/// What one call gets: where to send, in order, and every address of the trunk.
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    pub(crate) hops: Vec<SocketAddr>,
    pub(crate) peers: Vec<SocketAddr>,
    /// The trunk's peers differ from the previous resolution (the driver must trust the new
    /// set).
    pub(crate) changed: bool,
}

impl TrunkTargets {
    /// Targets of `name` over `transport` (chosen at start), starting from `initial`.
    pub(crate) fn new(
        dns: Dns,
        name: Name,
        transport: Transport,
        initial: Option<Located>,
    ) -> TrunkTargets {
        TrunkTargets {
            dns,
            name,
            transport,
            cache: tokio::sync::Mutex::new(Cache {
                located: initial,
                retry_at: None,
            }),
        }
    }

    /// The trunk's targets for one call: the cached resolution while its TTL lasts, else a
    /// new one (a failed refresh keeps serving the stale one, RFC 8767, and is retried after
    /// [`STALE_RETRY`]). The SRV order is drawn anew for every call.
    pub(crate) async fn current(&self) -> Result<Targets, ResolveError> {
        let now = Instant::now();
        let mut cache = self.cache.lock().await;
        let fresh = cache.located.as_ref().is_some_and(|l| l.is_fresh(now));
        let waiting = cache.retry_at.is_some_and(|t| now < t) && cache.located.is_some();
        let mut changed = false;
        if !fresh && !waiting {
            match self.dns.locate(&self.name, Some(self.transport)).await {
                Ok(located) => {
                    changed = cache.located.as_ref().map(Located::peers) != Some(located.peers());
                    if changed {
                        tracing::info!(host = %self.name.host, peers = ?located.peers(), "trunk resolved");
                    }
                    cache.located = Some(located);
                    cache.retry_at = None;
                }
                Err(e) if cache.located.is_some() => {
                    tracing::warn!(host = %self.name.host, error = %e, "trunk refresh failed; using the previous answer");
                    cache.retry_at = Some(now + STALE_RETRY);
                }
                Err(e) => return Err(e),
            }
        }
        let located = cache
            .located
            .as_ref()
            .ok_or_else(|| ResolveError::NoAddress(self.name.host.clone()))?;
        Ok(Targets {
            hops: located.hops(&mut rand::rng()),
            peers: located.peers(),
            changed,
        })
    }
}

/// Resolves `name` once before the runtime starts (blocking the caller: start-up only), on
/// a thread of its own with a small tokio runtime, so it works inside or outside one.
pub(crate) fn locate_at_start(
    servers: &[SocketAddr],
    name: &Name,
) -> Result<Located, ResolveError> {
    if let Plan::Address(addr, t) = locate::plan(name) {
        return Ok(Located::address(addr, t, Instant::now()));
    }
    let servers = servers.to_vec();
    let host = name.host.clone();
    let name = name.clone();
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ResolveError::System(NetError::from(e)))?;
            rt.block_on(async {
                let dns = Dns::new(&servers)?;
                dns.locate(&name, None).await
            })
        })
        .join()
        .unwrap_or(Err(ResolveError::NoAddress(host)))
    })
}
