//! RFC 3263 server location, sans-IO: what to look up for a trunk's URI, and in which order the
//! answers (NAPTR → SRV → A/AAAA) are tried.
//!
//! ```text
//!  sip:host;transport=… / sips:host      plan()                     the runtime's lookups
//!  ──────────────────────────────────▶  Plan::Address ─ no DNS ─────────────────────────┐
//!                                       Plan::Host ──── A/AAAA at the port ─────────────┤
//!                                       Plan::Srv ───── SRV _sip._udp.host ─┐           │
//!                                       Plan::Naptr ─── NAPTR host ─────────┤           ▼
//!                                                      select_naptr()       ├──▶ Located (records
//!                                                      then SRV, else       │     + deadline)
//!                                                      A/AAAA at 5060/5061 ─┘  hops(rng): the
//!                                                                              order to try
//! ```
//! No socket, no clock, no randomness of its own: records come in from the runtime's resolver,
//! `now` and the generator are arguments. Every list a DNS answer can fill is bounded.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::RngCore;

use crate::message::Transport;

/// RFC 3261 §19.1.2: default port of `sip:` over UDP and TCP.
pub const SIP_PORT: u16 = 5060;
/// RFC 3261 §19.1.2: default port of `sips:` (TLS).
pub const SIPS_PORT: u16 = 5061;
/// SRV records kept from one answer (a trunk has a handful; the rest is not worth trying
/// within one ring timeout).
pub const MAX_SRV: usize = 16;
/// Addresses kept per host name (same reasoning).
pub const MAX_ADDRS: usize = 8;
/// Longest a resolution is reused, whatever the TTL says (a day: a trunk that moved is
/// found again by the next day at the latest).
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

/// The default port of a transport (RFC 3263 §4.2: when neither the URI nor SRV gives one).
pub fn default_port(transport: Transport) -> u16 {
    match transport {
        Transport::Tls => SIPS_PORT,
        Transport::Udp | Transport::Tcp => SIP_PORT,
    }
}

/// The NAPTR service field of a transport (RFC 3263 §4.1, RFC 3263 §10 registry).
pub fn naptr_service(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "SIP+D2U",
        Transport::Tcp => "SIP+D2T",
        Transport::Tls => "SIPS+D2T",
    }
}

/// The SRV name of `host` for a transport when no NAPTR names one (RFC 3263 §4.1).
pub fn srv_name(host: &str, transport: Transport) -> String {
    let prefix = match transport {
        Transport::Udp => "_sip._udp",
        Transport::Tcp => "_sip._tcp",
        Transport::Tls => "_sips._tcp",
    };
    format!("{prefix}.{}", host.trim_end_matches('.'))
}

/// What a trunk URI says about where it is (RFC 3263 §4.1, §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// Host: a domain name or an address literal (without brackets).
    pub host: String,
    /// Explicit port, if the URI has one.
    pub port: Option<u16>,
    /// Explicit `;transport=`, if the URI has one.
    pub transport: Option<Transport>,
    /// `sips:`.
    pub secure: bool,
}

/// What to look up, and what is already known without DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// §4.1/§4.2: a numeric address: this one target, no DNS at all.
    Address(SocketAddr, Transport),
    /// §4.2: a name with an explicit port: A/AAAA of the name at that port, no NAPTR or SRV.
    Host {
        host: String,
        port: u16,
        transport: Transport,
    },
    /// §4.2: a name whose transport is known (`;transport=`): SRV of that transport, then
    /// A/AAAA at its default port when there is no SRV.
    Srv { host: String, transport: Transport },
    /// §4.1: a name alone: NAPTR to choose the transport (only `SIPS+D2T` for `sips:`), then
    /// SRV for it, then A/AAAA.
    Naptr { host: String, secure: bool },
}

/// §4.1: the transport when nothing in DNS says: UDP for `sip:`, TLS for `sips:`.
fn fallback_transport(name: &Name) -> Transport {
    match (name.transport, name.secure) {
        (_, true) => Transport::Tls,
        (Some(t), false) => t,
        (None, false) => Transport::Udp,
    }
}

/// Decides what to look up for `name` (RFC 3263 §4.1 transport, §4.2 port and address).
pub fn plan(name: &Name) -> Plan {
    let transport = fallback_transport(name);
    if let Ok(ip) = name.host.parse::<IpAddr>() {
        let port = name.port.unwrap_or(default_port(transport));
        return Plan::Address(SocketAddr::new(ip, port), transport);
    }
    if let Some(port) = name.port {
        return Plan::Host {
            host: name.host.clone(),
            port,
            transport,
        };
    }
    if name.transport.is_some() {
        return Plan::Srv {
            host: name.host.clone(),
            transport,
        };
    }
    Plan::Naptr {
        host: name.host.clone(),
        secure: name.secure,
    }
}

/// One NAPTR record as the resolver returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    /// Flags (`S` for SIP: the replacement is an SRV name).
    pub flags: String,
    /// Service (`SIP+D2U`, `SIP+D2T`, `SIPS+D2T`).
    pub services: String,
    /// The SRV name to look up next.
    pub replacement: String,
}

/// §4.1: the NAPTR records a client that speaks `supported` may follow, best first: terminal
/// `S` records of a known SIP service (only `SIPS+D2T` for a `sips:` URI), ordered by order
/// then preference (RFC 3403 §4.1). Each gives the transport and the SRV name to look up.
pub fn select_naptr(
    records: &[Naptr],
    secure: bool,
    supported: &[Transport],
) -> Vec<(Transport, String)> {
    let mut usable: Vec<(u16, u16, Transport, String)> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter_map(|r| {
            let transport = supported
                .iter()
                .copied()
                .find(|t| r.services.eq_ignore_ascii_case(naptr_service(*t)))?;
            if secure && transport != Transport::Tls {
                return None;
            }
            let replacement = r.replacement.trim_end_matches('.');
            (!replacement.is_empty())
                .then(|| (r.order, r.preference, transport, replacement.to_string()))
        })
        .collect();
    usable.sort_by_key(|(order, preference, _, _)| (*order, *preference));
    usable.truncate(MAX_SRV);
    usable
        .into_iter()
        .map(|(_, _, t, name)| (t, name))
        .collect()
}

/// One SRV record as the resolver returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Host name (or address literal) of the target.
    pub target: String,
}

impl Srv {
    /// RFC 2782: a target of `.` means the service is decidedly not available.
    pub fn is_unavailable(&self) -> bool {
        self.target.trim_end_matches('.').is_empty()
    }
}

/// RFC 2782 "Usage rules": the order in which `records` are tried: by priority, lowest
/// first; within one priority, a weighted random order (each pick: a number in
/// `0..=sum of the weights left`, the first record whose running sum reaches it; weight-0
/// records first in the list so they win only on a draw of 0). `rng` comes from outside.
pub fn order_srv<R: RngCore + ?Sized>(records: &[Srv], rng: &mut R) -> Vec<Srv> {
    let mut left: Vec<&Srv> = records.iter().filter(|r| !r.is_unavailable()).collect();
    left.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(left.len());
    while let Some(first) = left.first() {
        let priority = first.priority;
        let end = left
            .iter()
            .position(|r| r.priority != priority)
            .unwrap_or(left.len());
        let mut group: Vec<&Srv> = left.drain(..end).collect();
        // Zero weights at the beginning (stable: the DNS order is kept otherwise).
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let sum: u64 = group.iter().map(|r| u64::from(r.weight)).sum();
            // At most 16 × 65535: the modulo bias of a 64-bit draw is below 2^-40.
            let draw = rng.next_u64() % (sum + 1);
            let mut running = 0u64;
            let pick = group
                .iter()
                .position(|r| {
                    running += u64::from(r.weight);
                    running >= draw
                })
                .unwrap_or(group.len() - 1);
            out.push(group.remove(pick).clone());
        }
    }
    out
}

/// One place a request may go: a port and the addresses of its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The SRV record (or, without SRV, priority 0 and weight 0 at the URI's or the default
    /// port).
    pub srv: Srv,
    /// The A/AAAA answers of `srv.target`, in the resolver's order.
    pub addrs: Vec<IpAddr>,
}

/// A finished resolution: the transport, every destination and how long it may be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    transport: Transport,
    destinations: Vec<Destination>,
    expires: Instant,
}

impl Located {
    /// A resolution of `destinations` made at `now`, valid for `ttl` (the smallest TTL of the
    /// records it used; capped at [`MAX_TTL`]). Destinations without addresses are dropped;
    /// lists are cut at [`MAX_SRV`] and [`MAX_ADDRS`].
    pub fn new(
        transport: Transport,
        destinations: Vec<Destination>,
        now: Instant,
        ttl: Duration,
    ) -> Located {
        let destinations = destinations
            .into_iter()
            .filter(|d| !d.addrs.is_empty() && !d.srv.is_unavailable())
            .take(MAX_SRV)
            .map(|mut d| {
                let mut seen = Vec::with_capacity(d.addrs.len().min(MAX_ADDRS));
                for a in d.addrs {
                    if !seen.contains(&a) && seen.len() < MAX_ADDRS {
                        seen.push(a);
                    }
                }
                d.addrs = seen;
                d
            })
            .collect();
        Located {
            transport,
            destinations,
            expires: now + ttl.min(MAX_TTL),
        }
    }

    /// A numeric address (§4.2): no DNS, never stale.
    pub fn address(addr: SocketAddr, transport: Transport, now: Instant) -> Located {
        Located::new(
            transport,
            vec![Destination {
                srv: Srv {
                    priority: 0,
                    weight: 0,
                    port: addr.port(),
                    target: addr.ip().to_string(),
                },
                addrs: vec![addr.ip()],
            }],
            now,
            MAX_TTL,
        )
    }

    /// The transport every destination is reached over.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.destinations.is_empty()
    }

    /// Whether the records are still within their TTL at `now`.
    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.expires
    }

    /// When the records expire.
    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// Every address of every destination (the trunk's trusted peers), without repeats, in
    /// a stable order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = Vec::new();
        for d in &self.destinations {
            for ip in &d.addrs {
                let a = SocketAddr::new(*ip, d.srv.port);
                if !all.contains(&a) {
                    all.push(a);
                }
            }
        }
        all
    }

    /// The order in which one request tries the destinations (RFC 3263 §4.3): SRV records in
    /// RFC 2782 order (a new weighted draw per request), and within one, each of its host's
    /// addresses in turn. Never repeats an address.
    pub fn hops<R: RngCore + ?Sized>(&self, rng: &mut R) -> Vec<SocketAddr> {
        let srv: Vec<Srv> = self.destinations.iter().map(|d| d.srv.clone()).collect();
        let mut out: Vec<SocketAddr> = Vec::new();
        // `order_srv` returns clones; match them back to their destination by position so
        // two records naming one target at one port stay distinct.
        let mut taken = vec![false; self.destinations.len()];
        for s in order_srv(&srv, rng) {
            let Some(i) =
                (0..self.destinations.len()).find(|&i| !taken[i] && self.destinations[i].srv == s)
            else {
                continue;
            };
            taken[i] = true;
            let d = &self.destinations[i];
            for ip in &d.addrs {
                let a = SocketAddr::new(*ip, d.srv.port);
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng as _;

    fn name(host: &str, port: Option<u16>, transport: Option<Transport>, secure: bool) -> Name {
        Name {
            host: host.into(),
            port,
            transport,
            secure,
        }
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    #[test]
    fn numeric_addresses_and_explicit_ports_skip_naptr_and_srv() {
        // §4.2: numeric IP: no DNS, port from the URI or the transport's default.
        assert_eq!(
            plan(&name("192.0.2.1", None, None, false)),
            Plan::Address("192.0.2.1:5060".parse().unwrap(), Transport::Udp)
        );
        assert_eq!(
            plan(&name(
                "2001:db8::1",
                Some(5080),
                Some(Transport::Tcp),
                false
            )),
            Plan::Address("[2001:db8::1]:5080".parse().unwrap(), Transport::Tcp)
        );
        assert_eq!(
            plan(&name("192.0.2.1", None, None, true)),
            Plan::Address("192.0.2.1:5061".parse().unwrap(), Transport::Tls)
        );
        // §4.2: a port given: A/AAAA only.
        assert_eq!(
            plan(&name("trunk.example.net", Some(5070), None, false)),
            Plan::Host {
                host: "trunk.example.net".into(),
                port: 5070,
                transport: Transport::Udp
            }
        );
        // §4.1: a transport given: SRV of it, no NAPTR.
        assert_eq!(
            plan(&name(
                "trunk.example.net",
                None,
                Some(Transport::Tcp),
                false
            )),
            Plan::Srv {
                host: "trunk.example.net".into(),
                transport: Transport::Tcp
            }
        );
        // Nothing given: NAPTR.
        assert_eq!(
            plan(&name("trunk.example.net", None, None, true)),
            Plan::Naptr {
                host: "trunk.example.net".into(),
                secure: true
            }
        );
        assert_eq!(
            srv_name("example.net.", Transport::Tls),
            "_sips._tcp.example.net"
        );
        assert_eq!(
            srv_name("example.net", Transport::Udp),
            "_sip._udp.example.net"
        );
    }

    #[test]
    fn naptr_by_order_then_preference_supported_and_terminal_only() {
        let r = |order, preference, flags: &str, services: &str, replacement: &str| Naptr {
            order,
            preference,
            flags: flags.into(),
            services: services.into(),
            replacement: replacement.into(),
        };
        let records = [
            r(20, 10, "s", "SIP+D2U", "_sip._udp.example.net."),
            r(10, 50, "S", "SIP+D2T", "_sip._tcp.example.net."),
            r(10, 10, "s", "SIPS+D2T", "_sips._tcp.example.net."),
            r(5, 10, "s", "SIP+D2S", "_sip._sctp.example.net."), // SCTP: not ours
            r(1, 10, "u", "SIP+D2U", "!^.*$!sip:x@y!"),          // not terminal S
            r(2, 10, "s", "SIP+D2U", "."),                       // no replacement
        ];
        let all = [Transport::Udp, Transport::Tcp, Transport::Tls];
        assert_eq!(
            select_naptr(&records, false, &all),
            vec![
                (Transport::Tls, "_sips._tcp.example.net".to_string()),
                (Transport::Tcp, "_sip._tcp.example.net".to_string()),
                (Transport::Udp, "_sip._udp.example.net".to_string()),
            ]
        );
        // sips: only SIPS+D2T.
        assert_eq!(
            select_naptr(&records, true, &all),
            vec![(Transport::Tls, "_sips._tcp.example.net".to_string())]
        );
        // A client without TLS never follows SIPS+D2T.
        assert_eq!(
            select_naptr(&records, false, &[Transport::Udp])[0].0,
            Transport::Udp
        );
    }

    #[test]
    fn srv_priority_first_and_dot_means_unavailable() {
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let records = [
            srv(20, 0, 5072, "b.example.net."),
            srv(10, 0, 5071, "a.example.net."),
            srv(30, 0, 5073, "."),
        ];
        for _ in 0..50 {
            let o = order_srv(&records, &mut rng);
            assert_eq!(
                o.iter().map(|s| s.port).collect::<Vec<_>>(),
                vec![5071, 5072]
            );
        }
    }

    #[test]
    fn srv_weights_spread_first_picks_in_proportion() {
        // RFC 2782 example shape: weights 60/30/10 (and a weight-0 record) at one priority.
        let mut rng = ChaCha20Rng::from_seed([42; 32]);
        let records = [
            srv(10, 60, 1, "a"),
            srv(10, 30, 2, "b"),
            srv(10, 10, 3, "c"),
            srv(10, 0, 4, "d"),
        ];
        let n = 20_000u32;
        let mut first = [0u32; 5];
        for _ in 0..n {
            let o = order_srv(&records, &mut rng);
            assert_eq!(o.len(), 4, "every record appears once");
            first[usize::from(o[0].port)] += 1;
        }
        let share = |k: usize| f64::from(first[k]) / f64::from(n);
        // Sum 100, draws 0..=100: a wins 60/101, b 30/101, c 10/101, d (weight 0, first in
        // the list) only on a draw of 0: 1/101. ±2 points is > 5 σ at n = 20 000.
        assert!((share(1) - 60.0 / 101.0).abs() < 0.02, "a {}", share(1));
        assert!((share(2) - 30.0 / 101.0).abs() < 0.02, "b {}", share(2));
        assert!((share(3) - 10.0 / 101.0).abs() < 0.02, "c {}", share(3));
        assert!(share(4) < 0.02, "d {}", share(4));
        // The same seed gives the same order: the randomness is the caller's.
        let a = order_srv(&records, &mut ChaCha20Rng::from_seed([7; 32]));
        let b = order_srv(&records, &mut ChaCha20Rng::from_seed([7; 32]));
        assert_eq!(a, b);
    }

    #[test]
    fn all_zero_weights_still_order_every_record() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let records = [srv(1, 0, 1, "a"), srv(1, 0, 2, "b"), srv(1, 0, 3, "c")];
        let o = order_srv(&records, &mut rng);
        let mut ports: Vec<u16> = o.iter().map(|s| s.port).collect();
        ports.sort_unstable();
        assert_eq!(ports, vec![1, 2, 3]);
    }

    #[test]
    fn hops_follow_srv_order_then_each_address_and_peers_are_all_addresses() {
        let now = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let located = Located::new(
            Transport::Udp,
            vec![
                Destination {
                    srv: srv(20, 0, 5072, "b.example.net"),
                    addrs: vec![ip("127.0.0.2")],
                },
                Destination {
                    srv: srv(10, 0, 5071, "a.example.net"),
                    addrs: vec![ip("127.0.0.1"), ip("::1"), ip("127.0.0.1")],
                },
                Destination {
                    srv: srv(5, 0, 5070, "gone.example.net"),
                    addrs: vec![],
                },
            ],
            now,
            Duration::from_secs(30),
        );
        let hops = located.hops(&mut ChaCha20Rng::from_seed([0; 32]));
        let want: Vec<SocketAddr> = ["127.0.0.1:5071", "[::1]:5071", "127.0.0.2:5072"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(hops, want);
        let mut peers = located.peers();
        peers.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(peers, want_sorted);
    }

    #[test]
    fn ttl_decides_freshness_and_is_capped() {
        let now = Instant::now();
        let l = Located::address("192.0.2.1:5060".parse().unwrap(), Transport::Udp, now);
        assert!(l.is_fresh(now + Duration::from_secs(3600)));
        let d = Destination {
            srv: srv(0, 0, 5060, "a"),
            addrs: vec!["192.0.2.1".parse().unwrap()],
        };
        let l = Located::new(
            Transport::Udp,
            vec![d.clone()],
            now,
            Duration::from_secs(30),
        );
        assert!(l.is_fresh(now + Duration::from_secs(29)));
        assert!(!l.is_fresh(now + Duration::from_secs(30)));
        let l = Located::new(Transport::Udp, vec![d.clone()], now, Duration::ZERO);
        assert!(!l.is_fresh(now), "TTL 0: resolved again on every use");
        let l = Located::new(
            Transport::Udp,
            vec![d],
            now,
            Duration::from_secs(u64::MAX / 4),
        );
        assert_eq!(l.expires(), now + MAX_TTL);
    }

    #[test]
    fn answers_are_bounded() {
        let now = Instant::now();
        let many: Vec<Destination> = (0..100u16)
            .map(|i| Destination {
                srv: srv(i, 1, 5000 + i, "t"),
                addrs: (0..50u8)
                    .map(|j| IpAddr::from([10, 0, (i % 250) as u8, j]))
                    .collect(),
            })
            .collect();
        let l = Located::new(Transport::Udp, many, now, Duration::from_secs(1));
        assert_eq!(l.peers().len(), MAX_SRV * MAX_ADDRS);
        assert_eq!(
            l.hops(&mut ChaCha20Rng::from_seed([0; 32])).len(),
            MAX_SRV * MAX_ADDRS
        );
    }
}
