//! The user agent core: many calls, their transactions and dialogs, in one sans-IO object.
//!
//! ```text
//!  runtime ──handle_input(now, transport, source, bytes)──▶ ┌───────────┐ ──poll_transmit()──▶ sockets
//!          ──handle_timeout(now)────────────────────────▶  │ UserAgent │ ──poll_event()─────▶ call flow
//!          ──call()/hangup()/answer()/send_info()──────▶  └───────────┘ ──poll_timeout()───▶ one timer
//! ```
//! Caller side (UAC): INVITE with an SDP offer, 1xx (early dialogs), digest retry, 2xx → ACK,
//! CANCEL (only after a provisional; 200-after-CANCEL → ACK + BYE), forked 2xx → ACK + BYE,
//! failover (RFC 3263 §4.3): a target that stays silent, fails its transport or answers 503
//! before anything rang is left for the next of [`OutgoingCall::alternates`], as a new
//! client transaction whose responses count only from that next target.
//! Callee side (UAS): 100, 180, 200 + answer retransmitted until ACK (§13.3.1.4), CANCEL → 487.
//! Both: BYE either way, INFO (DTMF), OPTIONS, UPDATE and re-INVITE from the far end.
//!
//! # Who is heard (docs/SECURITY.md)
//!
//! ```text
//!  input from `source` over `transport`
//!   ├─ source unknown (not a trusted peer, not a peer of a live call) and not a phone
//!   │  taking calls from anyone ─────────────────────────── dropped unparsed: UntrustedSource
//!   ├─ response: counts only from the address (and transport) its request went to;
//!   │  a 2xx without its transaction only re-ACKs a dialog it names by Call-ID, both tags
//!   │  and the INVITE's destination ───────────── else UntrustedSource / NoTransaction
//!   ├─ request in a dialog: only from the call's peers, over the call's transport, with a
//!   │  CSeq above the last one (RFC 3261 §12.2.2) ────── else UntrustedSource / CseqOrder
//!   └─ request outside a dialog: a phone (`accept_incoming`) takes INVITEs from anyone;
//!      otherwise a trusted peer gets one stateless answer (480, 200, 481, 405: no
//!      transaction, no retransmission) and anyone else nothing ── UntrustedSource
//! ```
//! A call's peers are where its INVITE went, the addresses the runtime vouches for
//! ([`OutgoingCall::peers`]: every address of the trunk), and the next hop of its dialog
//! (Record-Route or Contact of an answer that itself came from a peer). A callee's peers are
//! where its INVITE came from and that INVITE's next hop.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::{self, Challenge, Credentials, DigestRequest};
use crate::event::{AuthFailure, CallHandle, DialogInfo, EndReason, Event, Failure, Transmit};
use crate::info;
use crate::message::{
    HeaderAccess, Limits, Message, Method, NameAddr, ParseError, Request, Response, Transport, Uri,
};
use crate::rng::Rng;
use crate::sdp::{self, LocalMedia, Negotiated, SdpError, SessionDescription};
use crate::timer::TimerConfig;
use crate::transaction::{ClientTx, ServerTx, TxOutput};

/// RFC 3261 §8.1.1.6: Max-Forwards on requests we originate.
const MAX_FORWARDS: u32 = 70;
/// Most digest challenge rounds answered for one request (a stale nonce may need a second).
const MAX_AUTH_ROUNDS: u32 = 3;
/// Methods we answer (Allow header, RFC 3261 §20.5).
const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE";
/// Smallest T1 accepted (a zero T1 is clamped to this).
const MIN_T1: Duration = Duration::from_millis(1);
/// Bodies we accept (Accept header).
const ACCEPT: &str = "application/sdp, application/dtmf-relay, application/dtmf";
/// RFC 3261 §8.1.1.7 magic cookie starting every branch.
const BRANCH_COOKIE: &str = "z9hG4bK";
/// RFC 3263 §4.3 failover: a hop that has sent nothing at all, not even the 100 Trying a
/// stateful hop sends within 200 ms (RFC 3261 §16.2, §17.2.1), after this many T1 is taken as
/// down and the next target is tried (8·T1 = 4 s at the default T1: four INVITE
/// transmissions). Timer B (64·T1 = 32 s) would outlast the 30 s ring timeout, so no call
/// would ever fail over to the next trunk. Only used while there is a next target.
const FAILOVER_SILENCE_T1: u32 = 8;

/// Configuration of a user agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address advertised in Via and Contact (the runtime's bound/public SIP address).
    pub local_addr: SocketAddr,
    /// T1/T2/T4.
    pub timers: TimerConfig,
    /// Parser limits.
    pub limits: Limits,
    /// User-Agent / Server header value.
    pub user_agent: String,
    /// Whether unsolicited INVITEs from any source create callee calls (`Event::Incoming`):
    /// a phone. Otherwise they are refused: a trusted peer gets one stateless 480, anyone
    /// else nothing.
    pub accept_incoming: bool,
    /// Addresses (address and port) trusted outside any call: the trunk's, so its OPTIONS
    /// and stray requests get one stateless answer. Everything else unknown is dropped.
    pub trusted_peers: Vec<SocketAddr>,
    /// Starts every tag, branch (after the magic cookie) and Call-ID this agent makes up: a
    /// runtime with several agents (shards) names the owner there, so that it can route a
    /// message to its agent without parsing it ([`crate::route`]). Empty: none.
    pub id_prefix: String,
}

impl Config {
    /// Defaults for a UA advertising `local_addr`.
    pub fn new(local_addr: SocketAddr) -> Self {
        Self {
            local_addr,
            timers: TimerConfig::default(),
            limits: Limits::default(),
            user_agent: "callverify".into(),
            accept_incoming: false,
            trusted_peers: Vec::new(),
            id_prefix: String::new(),
        }
    }
}

/// An outgoing call to place.
#[derive(Debug, Clone)]
pub struct OutgoingCall {
    /// Request-URI and To (e.g. `sip:+14255550123@trunk.example.net`).
    pub target: Uri,
    /// Our identity (From), e.g. `sip:+14255550100@trunk.example.net`.
    pub from: Uri,
    /// Optional display name for From.
    pub display_name: Option<String>,
    /// Where to send the INVITE (trunk or outbound proxy), resolved by the runtime. Its
    /// responses count only from here.
    pub next_hop: SocketAddr,
    /// Other addresses whose in-dialog requests count for this call (every address the
    /// trunk's host resolves to, at its port). `next_hop` always counts.
    pub peers: Vec<SocketAddr>,
    /// Where the INVITE goes next, in order, when `next_hop` fails before the far end rings
    /// (RFC 3263 §4.3: no answer at all, a transport error, or 503): each try is a new
    /// client transaction (new branch) and only its own destination's responses count.
    /// Add them to `peers` too if their in-dialog requests should count.
    pub alternates: Vec<SocketAddr>,
    /// Transport to the next hop.
    pub transport: Transport,
    /// Our RTP address and payload types for the SDP offer.
    pub media: LocalMedia,
    /// Digest credentials for 401/407.
    pub credentials: Option<Credentials>,
}

/// Bytes from the network that were not used. The sender is at fault (or an attacker); the
/// runtime counts them by [`InputError::reason`] and carries on. Nothing here created state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Not a SIP message (or over the limits).
    #[error("unparseable SIP message: {0}")]
    Parse(#[from] ParseError),
    /// From an address (or over a transport) that is not a trusted peer of this agent, of the
    /// call it names, or of the transaction it answers: dropped unanswered.
    #[error("not from a trusted peer")]
    UntrustedSource,
    /// A response, ACK or CANCEL that matches no transaction (nor, for a 2xx, a dialog
    /// named by Call-ID, both tags and source), or a request for a dialog we do not have
    /// (answered 481 when it came from a trusted peer).
    #[error("no matching transaction or dialog")]
    NoTransaction,
    /// A request in a dialog whose CSeq is not above the last one (RFC 3261 §12.2.2):
    /// refused with 500, nothing done.
    #[error("CSeq not increasing in the dialog")]
    CseqOrder,
    /// A response with more than one Via (RFC 3261 §8.1.3.3): not for us.
    #[error("response with more than one Via (misrouted)")]
    Misrouted,
}

impl InputError {
    /// A short stable name for counters and logs (`parse`, `untrusted_source`,
    /// `no_transaction`, `cseq`, `misrouted`).
    pub fn reason(&self) -> &'static str {
        match self {
            InputError::Parse(_) => "parse",
            InputError::UntrustedSource => "untrusted_source",
            InputError::NoTransaction => "no_transaction",
            InputError::CseqOrder => "cseq",
            InputError::Misrouted => "misrouted",
        }
    }
}

/// The caller of the user agent asked for something impossible (local misuse).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// The call does not exist (ended and forgotten, or never existed).
    #[error("unknown {0}")]
    UnknownCall(CallHandle),
    /// The call is not in a state that allows this operation.
    #[error("{operation} is not possible on {call} in its current state")]
    InvalidState {
        /// The call.
        call: CallHandle,
        /// What was asked.
        operation: &'static str,
    },
    /// The status code is not allowed here (e.g. reject with a 2xx).
    #[error("status {0} is not valid here")]
    InvalidStatus(u16),
    /// The offer we must answer has no usable media (reject with 488).
    #[error("cannot answer the offer: {0}")]
    Sdp(#[from] SdpError),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ClientKey {
    branch: String,
    method: Method,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ServerKey {
    branch: String,
    sent_by: String,
    method: Method,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Invite,
    Cancel,
    Bye,
    /// BYE for a losing fork or a 2xx that raced our CANCEL on another dialog.
    ForkBye,
    Info,
}

#[derive(Debug)]
struct ClientEntry {
    tx: ClientTx,
    call: CallHandle,
    purpose: Purpose,
    dest: SocketAddr,
    transport: Transport,
}

#[derive(Debug)]
struct ServerEntry {
    tx: ServerTx,
    call: Option<CallHandle>,
    dest: SocketAddr,
    transport: Transport,
}

/// The far end of one dialog (RFC 3261 §12.1).
#[derive(Debug, Clone)]
struct Dialog {
    remote_tag: String,
    /// The far end's From/To value, tag included, as received.
    remote_hdr: String,
    remote_target: Uri,
    route_set: Vec<String>,
    remote_seq: Option<u32>,
    early_sdp: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Caller,
    Callee,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Caller: INVITE sent, no provisional yet.
    Calling,
    /// Caller: a provisional arrived. Callee: INVITE received, no final response yet.
    Early,
    /// Caller: CANCEL sent.
    Cancelling,
    /// Callee: 2xx sent, waiting for ACK.
    WaitAck,
    /// Dialog confirmed.
    Confirmed,
    /// BYE sent, waiting for its response.
    ByeSent,
    /// Over; kept a little while to answer retransmissions.
    Ended,
}

#[derive(Debug)]
struct Pending2xx {
    cseq: u32,
    bytes: Vec<u8>,
    interval: Duration,
    next: Instant,
    give_up: Instant,
    initial: bool,
}

#[derive(Debug)]
struct Call {
    role: Role,
    phase: Phase,
    call_id: String,
    local_tag: String,
    /// Our From (caller) or To (callee) value, tag included.
    local_hdr: String,
    transport: Transport,
    /// Caller: where the INVITE went. Callee: where it came from.
    peer: SocketAddr,
    /// Addresses whose in-dialog requests count (see the module documentation).
    peers: BTreeSet<SocketAddr>,
    media: LocalMedia,
    sdp_version: u64,
    local_cseq: u32,
    // Caller side.
    target: Option<Uri>,
    invite: Option<Request>,
    credentials: Option<Credentials>,
    /// Authorization headers answering the current challenges: (header name, realm, value).
    auth_headers: Vec<(String, String, String)>,
    auth_rounds: u32,
    nonce_counts: HashMap<String, u32>,
    provisional: bool,
    /// A provisional other than 100 arrived (the far end is reached): no more failover.
    rang: bool,
    /// Targets left to try (RFC 3263 §4.3), and when the current one counts as silent.
    alternates: VecDeque<SocketAddr>,
    failover_at: Option<Instant>,
    cancel_pending: bool,
    cancel_deadline: Option<Instant>,
    early: Vec<Dialog>,
    /// ACKs sent for 2xx, per remote tag, resent on 2xx retransmissions.
    acks: Vec<(String, Vec<u8>, SocketAddr)>,
    // Callee side.
    invite_key: Option<ServerKey>,
    remote_offer: Option<SessionDescription>,
    pending_2xx: Option<Pending2xx>,
    offer_in_2xx: bool,
    bye_after_ack: bool,
    // Both.
    dialog: Option<Dialog>,
    bye_reason: EndReason,
    linger_until: Option<Instant>,
}

/// Everything but the calls, so call handlers can borrow both.
struct Ctx {
    cfg: Config,
    rng: Rng,
    /// Every address of a call's peers or a client transaction's destination, with the number
    /// of calls and transactions naming it: the O(1) test that drops strangers unparsed.
    known: HashMap<SocketAddr, u32>,
    clients: BTreeMap<ClientKey, ClientEntry>,
    servers: BTreeMap<ServerKey, ServerEntry>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

/// A SIP user agent (caller and callee) for many concurrent calls. Sans-IO: see the module
/// documentation for the call sequence.
pub struct UserAgent {
    ctx: Ctx,
    calls: BTreeMap<CallHandle, Call>,
    /// The calls of each Call-ID (one, but for forked or colliding incoming calls): requests
    /// and stray responses find their call without a scan.
    by_call_id: HashMap<String, Vec<CallHandle>>,
    /// [`UserAgent::poll_timeout`] as last computed; cleared by every method that can move a
    /// timer, so the scan runs once per change, not once per wake-up of the runtime.
    next_timeout: std::cell::Cell<Option<Option<Instant>>>,
    next_handle: u64,
}

impl std::fmt::Debug for UserAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserAgent")
            .field("calls", &self.calls.len())
            .field("client_transactions", &self.ctx.clients.len())
            .field("server_transactions", &self.ctx.servers.len())
            .finish()
    }
}

impl Ctx {
    fn branch(&mut self) -> String {
        format!("{BRANCH_COOKIE}{}{}", self.cfg.id_prefix, self.rng.token())
    }

    /// A new tag or Call-ID local part: [`Config::id_prefix`] and 128 random bits.
    fn id(&mut self) -> String {
        format!("{}{}", self.cfg.id_prefix, self.rng.token())
    }

    fn know(&mut self, addr: SocketAddr) {
        *self.known.entry(addr).or_default() += 1;
    }

    fn forget(&mut self, addr: SocketAddr) {
        if let std::collections::hash_map::Entry::Occupied(mut e) = self.known.entry(addr) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// A trusted peer of this agent or of some live call or transaction.
    fn is_known(&self, addr: SocketAddr) -> bool {
        self.known.contains_key(&addr) || self.cfg.trusted_peers.contains(&addr)
    }

    /// Drops the client transactions `keep` refuses, forgetting their destinations.
    fn retain_clients(&mut self, mut keep: impl FnMut(&ClientEntry) -> bool) {
        let mut gone = Vec::new();
        self.clients.retain(|_, e| {
            let k = keep(e);
            if !k {
                gone.push(e.dest);
            }
            k
        });
        for dest in gone {
            self.forget(dest);
        }
    }

    /// One answer to a request, without a transaction: never retransmitted, so a peer that
    /// sends one request gets at most one packet back.
    fn answer_statelessly(
        &mut self,
        transport: Transport,
        source: SocketAddr,
        response: &Response,
    ) {
        self.push(None, transport, source, response.to_bytes());
    }

    fn via(&self, transport: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            transport.via_token(),
            self.cfg.local_addr
        )
    }

    fn contact(&self, user: Option<&str>, transport: Transport) -> String {
        let tp = match transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        match user {
            Some(u) => format!("<sip:{u}@{}{tp}>", self.cfg.local_addr),
            None => format!("<sip:{}{tp}>", self.cfg.local_addr),
        }
    }

    fn push(
        &mut self,
        call: Option<CallHandle>,
        transport: Transport,
        destination: SocketAddr,
        payload: Vec<u8>,
    ) {
        self.transmits.push_back(Transmit {
            call,
            transport,
            destination,
            payload,
        });
    }

    /// Starts a client transaction for `req` (which already has its Via).
    fn send_request(
        &mut self,
        now: Instant,
        call: CallHandle,
        purpose: Purpose,
        req: Request,
        dest: SocketAddr,
        transport: Transport,
    ) {
        let branch = req
            .top_via()
            .ok()
            .and_then(|v| v.branch().map(str::to_string))
            .unwrap_or_default();
        let key = ClientKey {
            branch,
            method: req.method.clone(),
        };
        let (tx, bytes) = ClientTx::start(now, req, transport.is_reliable(), self.cfg.timers);
        self.push(Some(call), transport, dest, bytes);
        self.know(dest);
        let old = self.clients.insert(
            key,
            ClientEntry {
                tx,
                call,
                purpose,
                dest,
                transport,
            },
        );
        if let Some(old) = old {
            self.forget(old.dest);
        }
    }

    /// Sends a response through the server transaction `key`.
    fn respond(&mut self, now: Instant, key: &ServerKey, response: &Response) {
        if let Some(entry) = self.servers.get_mut(key)
            && let Some(bytes) = entry.tx.respond(now, response)
        {
            let (call, transport, dest) = (entry.call, entry.transport, entry.dest);
            self.push(call, transport, dest, bytes);
        }
    }

    /// A response to `req` with the mandatory copied headers (RFC 3261 §8.2.6.2).
    fn response_to(&self, req: &Request, status: u16, to_tag: Option<&str>) -> Response {
        let mut r = Response::new(status);
        for via in req.headers.get_all("Via") {
            r.headers.push("Via", via);
        }
        if matches!(status, 101..=299) && req.method == Method::Invite {
            for rr in req.headers.get_all("Record-Route") {
                r.headers.push("Record-Route", rr);
            }
        }
        if let Some(v) = req.headers.get("From") {
            r.headers.push("From", v);
        }
        let to = req.headers.get("To").unwrap_or_default();
        let has_tag = NameAddr::parse(to).ok().is_some_and(|n| n.tag().is_some());
        match to_tag {
            Some(tag) if !has_tag && status > 100 => {
                r.headers.push("To", format!("{to};tag={tag}"))
            }
            _ => r.headers.push("To", to),
        }
        if let Some(v) = req.headers.get("Call-ID") {
            r.headers.push("Call-ID", v);
        }
        if let Some(v) = req.headers.get("CSeq") {
            r.headers.push("CSeq", v);
        }
        r.headers.push("Server", self.cfg.user_agent.clone());
        r
    }

    fn event(&mut self, e: Event) {
        self.events.push_back(e);
    }
}

impl UserAgent {
    /// A user agent. `seed` keys the ChaCha20 generator of tags, branches, Call-IDs and
    /// cnonces: 32 bytes from the OS in production; tests pass a constant.
    pub fn new(mut config: Config, seed: [u8; 32]) -> Self {
        // A zero T1 would make retransmission timers fire forever at the same instant.
        let t = &mut config.timers;
        t.t1 = t.t1.max(MIN_T1);
        t.t2 = t.t2.max(t.t1);
        Self {
            ctx: Ctx {
                cfg: config,
                rng: Rng::new(seed),
                known: HashMap::new(),
                clients: BTreeMap::new(),
                servers: BTreeMap::new(),
                transmits: VecDeque::new(),
                events: VecDeque::new(),
            },
            calls: BTreeMap::new(),
            by_call_id: HashMap::new(),
            next_timeout: std::cell::Cell::new(None),
            next_handle: 1,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.ctx.cfg
    }

    /// Number of calls still tracked (including ended ones lingering for retransmissions).
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Whether input from `addr` is heard at all: a trusted peer of this agent, or a peer of
    /// a live call or transaction. (A phone, `accept_incoming`, also hears new INVITEs from
    /// anyone.)
    pub fn knows(&self, addr: SocketAddr) -> bool {
        self.ctx.is_known(addr)
    }

    /// Replaces the addresses trusted outside any call ([`Config::trusted_peers`]): the trunk
    /// was resolved again. Live calls keep their own peers.
    pub fn set_trusted_peers(&mut self, peers: Vec<SocketAddr>) {
        self.ctx.cfg.trusted_peers = peers;
    }

    /// Server transactions kept (requests being answered, and their retransmission state).
    pub fn server_transactions(&self) -> usize {
        self.ctx.servers.len()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ctx.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.ctx.events.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some(cached) = self.next_timeout.get() {
            return cached;
        }
        let next = self.scan_timeouts();
        self.next_timeout.set(Some(next));
        next
    }

    /// Forgets the cached [`UserAgent::poll_timeout`]: a timer may have moved.
    fn touch(&mut self) {
        self.next_timeout.set(None);
    }

    fn insert_call(&mut self, handle: CallHandle, call: Call) {
        self.by_call_id
            .entry(call.call_id.clone())
            .or_default()
            .push(handle);
        self.calls.insert(handle, call);
    }

    fn remove_call(&mut self, handle: CallHandle) -> Option<Call> {
        let call = self.calls.remove(&handle)?;
        if let std::collections::hash_map::Entry::Occupied(mut e) =
            self.by_call_id.entry(call.call_id.clone())
        {
            e.get_mut().retain(|h| *h != handle);
            if e.get().is_empty() {
                e.remove();
            }
        }
        Some(call)
    }

    /// The earliest deadline of every transaction and call.
    fn scan_timeouts(&self) -> Option<Instant> {
        let tx = self
            .ctx
            .clients
            .values()
            .filter_map(|e| e.tx.next_timeout());
        let stx = self
            .ctx
            .servers
            .values()
            .filter_map(|e| e.tx.next_timeout());
        let calls = self.calls.values().flat_map(|c| {
            [
                c.pending_2xx.as_ref().map(|p| p.next),
                c.cancel_deadline,
                c.failover_at,
                c.linger_until,
            ]
            .into_iter()
            .flatten()
        });
        tx.chain(stx).chain(calls).min()
    }

    fn new_handle(&mut self) -> CallHandle {
        let h = CallHandle(self.next_handle);
        self.next_handle += 1;
        h
    }

    /// Places a call: sends the INVITE with our SDP offer.
    pub fn call(&mut self, now: Instant, call: OutgoingCall) -> CallHandle {
        self.touch();
        let handle = self.new_handle();
        let ctx = &mut self.ctx;
        let local_tag = ctx.id();
        let call_id = format!("{}@{}", ctx.id(), ctx.cfg.local_addr.ip());
        let local_hdr = match &call.display_name {
            Some(name) => format!(
                "\"{}\" <{}>;tag={local_tag}",
                name.replace('"', ""),
                call.from.as_str()
            ),
            None => format!("<{}>;tag={local_tag}", call.from.as_str()),
        };
        let header_to = format!("<{}>", call.target.as_str());
        let sdp = sdp::build_offer(&call.media, 1);
        let user = call.from.user().map(|u| u.expose().to_string());
        let mut req = Request::new(Method::Invite, call.target.clone());
        let branch = ctx.branch();
        req.headers.push("Via", ctx.via(call.transport, &branch));
        req.headers.push("Max-Forwards", MAX_FORWARDS.to_string());
        req.headers.push("From", local_hdr.clone());
        req.headers.push("To", header_to.clone());
        req.headers.push("Call-ID", call_id.clone());
        req.headers.push("CSeq", "1 INVITE");
        req.headers
            .push("Contact", ctx.contact(user.as_deref(), call.transport));
        req.headers.push("Allow", ALLOW);
        req.headers.push("User-Agent", ctx.cfg.user_agent.clone());
        req.headers.push("Content-Type", "application/sdp");
        req.body = sdp.into_bytes();
        ctx.send_request(
            now,
            handle,
            Purpose::Invite,
            req.clone(),
            call.next_hop,
            call.transport,
        );
        let peers: BTreeSet<SocketAddr> = std::iter::once(call.next_hop)
            .chain(call.peers.iter().copied())
            .collect();
        for p in &peers {
            ctx.know(*p);
        }
        let failover_at =
            (!call.alternates.is_empty()).then(|| now + ctx.cfg.timers.t1 * FAILOVER_SILENCE_T1);
        self.insert_call(
            handle,
            Call {
                role: Role::Caller,
                phase: Phase::Calling,
                call_id,
                local_tag,
                local_hdr,
                transport: call.transport,
                peer: call.next_hop,
                peers,
                media: call.media,
                sdp_version: 1,
                local_cseq: 1,
                target: Some(call.target),
                invite: Some(req),
                credentials: call.credentials,
                auth_headers: Vec::new(),
                auth_rounds: 0,
                nonce_counts: HashMap::new(),
                provisional: false,
                rang: false,
                alternates: call.alternates.into_iter().collect(),
                failover_at,
                cancel_pending: false,
                cancel_deadline: None,
                early: Vec::new(),
                acks: Vec::new(),
                invite_key: None,
                remote_offer: None,
                pending_2xx: None,
                offer_in_2xx: false,
                bye_after_ack: false,
                dialog: None,
                bye_reason: EndReason::LocalHangup,
                linger_until: None,
            },
        );
        handle
    }

    /// Hangs up: CANCEL before answer (deferred until a provisional arrives, RFC 3261 §9.1),
    /// BYE after; as callee before answering, rejects with 480. Idempotent once ending.
    pub fn hangup(&mut self, now: Instant, handle: CallHandle) -> Result<(), UsageError> {
        self.touch();
        let call = self
            .calls
            .get_mut(&handle)
            .ok_or(UsageError::UnknownCall(handle))?;
        match (call.role, call.phase) {
            (Role::Caller, Phase::Calling) => {
                call.cancel_pending = true;
                Ok(())
            }
            (Role::Caller, Phase::Early) => {
                send_cancel(&mut self.ctx, handle, call, now);
                Ok(())
            }
            (Role::Callee, Phase::Early) => self.reject(now, handle, 480),
            (Role::Callee, Phase::WaitAck) => {
                call.bye_after_ack = true;
                Ok(())
            }
            (_, Phase::Confirmed) => {
                send_bye(&mut self.ctx, handle, call, now, EndReason::LocalHangup);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Callee: sends 180 Ringing.
    pub fn ringing(&mut self, now: Instant, handle: CallHandle) -> Result<(), UsageError> {
        self.touch();
        self.provisional(now, handle, 180)
    }

    /// Callee: sends a provisional response (101–199).
    pub fn provisional(
        &mut self,
        now: Instant,
        handle: CallHandle,
        status: u16,
    ) -> Result<(), UsageError> {
        self.touch();
        if !(101..=199).contains(&status) {
            return Err(UsageError::InvalidStatus(status));
        }
        let (call, key, req) = callee_invite(&mut self.calls, &self.ctx, handle, "provisional")?;
        let mut resp = self.ctx.response_to(&req, status, Some(&call.local_tag));
        resp.headers
            .push("Contact", self.ctx.contact(None, call.transport));
        self.ctx.respond(now, &key, &resp);
        Ok(())
    }

    /// Callee: [`UserAgent::set_local_media`] then [`UserAgent::answer`] in one call.
    pub fn answer_with(
        &mut self,
        now: Instant,
        handle: CallHandle,
        media: LocalMedia,
    ) -> Result<Option<Negotiated>, UsageError> {
        self.touch();
        self.set_local_media(handle, media)?;
        self.answer(now, handle)
    }

    /// Callee: answers with 200 and our SDP answer (or an offer if the INVITE had none),
    /// retransmitted until the ACK (RFC 3261 §13.3.1.4). Returns the negotiated media
    /// (None when the INVITE had no offer: the answer comes in the ACK).
    pub fn answer(
        &mut self,
        now: Instant,
        handle: CallHandle,
    ) -> Result<Option<Negotiated>, UsageError> {
        self.touch();
        let (call, key, req) = callee_invite(&mut self.calls, &self.ctx, handle, "answer")?;
        call.sdp_version += 1;
        let (body, negotiated) = match &call.remote_offer {
            Some(offer) => {
                let (answer, n) = sdp::build_answer(offer, &call.media, call.sdp_version)?;
                (answer, Some(n))
            }
            None => {
                call.offer_in_2xx = true;
                (sdp::build_offer(&call.media, call.sdp_version), None)
            }
        };
        let mut resp = self.ctx.response_to(&req, 200, Some(&call.local_tag));
        resp.headers
            .push("Contact", self.ctx.contact(None, call.transport));
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Content-Type", "application/sdp");
        resp.body = body.into_bytes();
        self.ctx.respond(now, &key, &resp);
        let cfg = self.ctx.cfg.timers;
        let reliable = call.transport.is_reliable();
        let give_up = now + cfg.timeout();
        call.pending_2xx = Some(Pending2xx {
            cseq: req.cseq().map(|c| c.seq).unwrap_or(0),
            bytes: resp.to_bytes(),
            interval: cfg.t1,
            next: if reliable { give_up } else { now + cfg.t1 },
            give_up,
            initial: true,
        });
        call.phase = Phase::WaitAck;
        Ok(negotiated)
    }

    /// Callee: rejects the call with a final status (300–699, e.g. 486 busy, 603 decline).
    pub fn reject(
        &mut self,
        now: Instant,
        handle: CallHandle,
        status: u16,
    ) -> Result<(), UsageError> {
        self.touch();
        if !(300..=699).contains(&status) {
            return Err(UsageError::InvalidStatus(status));
        }
        let (call, key, req) = callee_invite(&mut self.calls, &self.ctx, handle, "reject")?;
        let resp = self.ctx.response_to(&req, status, Some(&call.local_tag));
        self.ctx.respond(now, &key, &resp);
        end(
            &mut self.ctx,
            handle,
            call,
            now,
            EndReason::LocalReject { status },
        );
        Ok(())
    }

    /// Sends an INFO in the confirmed dialog (e.g. `application/dtmf-relay`).
    pub fn send_info(
        &mut self,
        now: Instant,
        handle: CallHandle,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(), UsageError> {
        self.touch();
        let call = self
            .calls
            .get_mut(&handle)
            .ok_or(UsageError::UnknownCall(handle))?;
        if call.phase != Phase::Confirmed {
            return Err(UsageError::InvalidState {
                call: handle,
                operation: "send_info",
            });
        }
        let Some((mut req, dest)) = dialog_request(&mut self.ctx, call, Method::Info) else {
            return Err(UsageError::InvalidState {
                call: handle,
                operation: "send_info",
            });
        };
        req.headers.push("Content-Type", content_type);
        req.body = body;
        let transport = call.transport;
        self.ctx
            .send_request(now, handle, Purpose::Info, req, dest, transport);
        Ok(())
    }

    /// Sends one key as `application/dtmf-relay` INFO (what linphone does).
    pub fn send_dtmf_info(
        &mut self,
        now: Instant,
        handle: CallHandle,
        key: char,
        duration: Duration,
    ) -> Result<(), UsageError> {
        self.touch();
        let body = info::dtmf_relay_body(key, duration).into_bytes();
        self.send_info(now, handle, "application/dtmf-relay", body)
    }

    /// The runtime could not deliver to this call's peer (ICMP, TCP reset, TLS failure).
    pub fn handle_transport_error(&mut self, now: Instant, handle: CallHandle) {
        self.touch();
        let Some(call) = self.calls.get_mut(&handle) else {
            return;
        };
        self.ctx.retain_clients(|e| e.call != handle);
        if call.phase == Phase::Ended {
            return;
        }
        if fail_over(&mut self.ctx, handle, call, now, Failure::Transport) {
            return;
        }
        if call.role == Role::Caller
            && matches!(
                call.phase,
                Phase::Calling | Phase::Early | Phase::Cancelling
            )
        {
            self.ctx.event(Event::Failed {
                call: handle,
                failure: Failure::Transport,
            });
        }
        end(
            &mut self.ctx,
            handle,
            call,
            now,
            EndReason::Failed(Failure::Transport),
        );
    }

    /// Advances every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch();
        let due: Vec<ClientKey> = self
            .ctx
            .clients
            .iter()
            .filter(|(_, e)| e.tx.next_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let mut out = Vec::new();
            let Some(entry) = self.ctx.clients.get_mut(&key) else {
                continue;
            };
            entry.tx.on_timeout(now, &mut out);
            let (call, purpose, dest, transport) =
                (entry.call, entry.purpose, entry.dest, entry.transport);
            for o in out {
                match o {
                    TxOutput::Send(bytes) => self.ctx.push(Some(call), transport, dest, bytes),
                    TxOutput::Timeout => self.client_timeout(now, call, purpose),
                    TxOutput::Deliver(_) => {}
                }
            }
        }
        self.ctx.retain_clients(|e| !e.tx.is_terminated());

        let due: Vec<ServerKey> = self
            .ctx
            .servers
            .iter()
            .filter(|(_, e)| e.tx.next_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let mut out = Vec::new();
            let Some(entry) = self.ctx.servers.get_mut(&key) else {
                continue;
            };
            entry.tx.on_timeout(now, &mut out);
            let (call, dest, transport) = (entry.call, entry.dest, entry.transport);
            for o in out {
                match o {
                    TxOutput::Send(bytes) => self.ctx.push(call, transport, dest, bytes),
                    // Timer H: our non-2xx final response was never ACKed; the call is over anyway.
                    TxOutput::Timeout | TxOutput::Deliver(_) => {}
                }
            }
        }
        self.ctx.servers.retain(|_, e| !e.tx.is_terminated());

        let handles: Vec<CallHandle> = self.calls.keys().copied().collect();
        for handle in handles {
            let Some(call) = self.calls.get_mut(&handle) else {
                continue;
            };
            if let Some(p) = &mut call.pending_2xx
                && p.next <= now
            {
                if now >= p.give_up {
                    let initial = p.initial;
                    call.pending_2xx = None;
                    if initial {
                        // §13.3.1.4: no ACK in 64·T1 → confirm and end the dialog with BYE.
                        call.phase = Phase::Confirmed;
                        send_bye(&mut self.ctx, handle, call, now, EndReason::AckTimeout);
                    }
                } else {
                    let bytes = p.bytes.clone();
                    p.interval = p.interval.saturating_mul(2).min(self.ctx.cfg.timers.t2);
                    p.next = (now + p.interval).min(p.give_up);
                    self.ctx
                        .push(Some(handle), call.transport, call.peer, bytes);
                }
            }
            if call.failover_at.is_some_and(|d| d <= now) {
                call.failover_at = None;
                fail_over(&mut self.ctx, handle, call, now, Failure::Timeout);
            }
            if call.cancel_deadline.is_some_and(|d| d <= now) {
                // RFC 3261 §9.1: no final response 64·T1 after CANCEL; the INVITE is over.
                call.cancel_deadline = None;
                self.ctx
                    .retain_clients(|e| !(e.call == handle && e.purpose == Purpose::Invite));
                end(&mut self.ctx, handle, call, now, EndReason::Cancelled);
            }
            if call.linger_until.is_some_and(|d| d <= now)
                && let Some(call) = self.remove_call(handle)
            {
                for p in call.peers {
                    self.ctx.forget(p);
                }
            }
        }
    }

    fn client_timeout(&mut self, now: Instant, handle: CallHandle, purpose: Purpose) {
        let Some(call) = self.calls.get_mut(&handle) else {
            return;
        };
        match purpose {
            Purpose::Invite => {
                if call.phase == Phase::Ended {
                    return;
                }
                if call.cancel_pending || call.phase == Phase::Cancelling {
                    end(&mut self.ctx, handle, call, now, EndReason::Cancelled);
                } else if fail_over(&mut self.ctx, handle, call, now, Failure::Timeout) {
                } else {
                    self.ctx.event(Event::Failed {
                        call: handle,
                        failure: Failure::Timeout,
                    });
                    end(
                        &mut self.ctx,
                        handle,
                        call,
                        now,
                        EndReason::Failed(Failure::Timeout),
                    );
                }
            }
            Purpose::Bye => {
                let reason = call.bye_reason.clone();
                end(&mut self.ctx, handle, call, now, reason);
            }
            Purpose::Info => self.ctx.event(Event::InfoResponse {
                call: handle,
                result: Err(Failure::Timeout),
            }),
            Purpose::Cancel | Purpose::ForkBye => {}
        }
    }

    /// Feeds one message received on `transport` from `source` (a UDP datagram, or one
    /// message cut from a stream by [`crate::framer::StreamFramer`]; for streams, `source` is
    /// the peer of the connection it came over). An error says why the message was not used;
    /// nothing was sent or kept for it beyond what the error names.
    pub fn handle_input(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), InputError> {
        self.touch();
        // Strangers cost nothing: unless this agent takes calls from anyone (a phone), a
        // source that is no trusted peer of it or of any live call is not even parsed.
        if !self.ctx.cfg.accept_incoming && !self.ctx.is_known(source) {
            return Err(InputError::UntrustedSource);
        }
        match Message::parse(bytes, &self.ctx.cfg.limits)? {
            Message::Response(resp) => self.handle_response(now, transport, source, resp),
            Message::Request(req) => self.handle_request(now, transport, source, req),
        }
    }

    fn handle_response(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        resp: Response,
    ) -> Result<(), InputError> {
        let via = resp.top_via()?;
        let cseq = resp.cseq()?;
        // §8.1.3.3: more than one Via in a response means it was misrouted.
        if resp.headers.list("Via").count() != 1 {
            return Err(InputError::Misrouted);
        }
        let key = ClientKey {
            branch: via.branch().unwrap_or_default().to_string(),
            method: cseq.method.clone(),
        };
        let Some(entry) = self.ctx.clients.get_mut(&key) else {
            return self.stray_2xx(now, transport, source, &resp);
        };
        // A response counts only from where its request went (and, for streams, over the
        // connection to there): anyone who saw the INVITE knows its branch.
        if entry.dest != source || entry.transport != transport {
            return Err(InputError::UntrustedSource);
        }
        let mut out = Vec::new();
        entry.tx.on_response(now, resp, &mut out);
        let (call, purpose, dest, transport) =
            (entry.call, entry.purpose, entry.dest, entry.transport);
        let request = entry.tx.request.clone();
        for o in out {
            match o {
                TxOutput::Send(bytes) => self.ctx.push(Some(call), transport, dest, bytes),
                TxOutput::Deliver(r) => self.client_response(now, call, purpose, &request, dest, r),
                TxOutput::Timeout => self.client_timeout(now, call, purpose),
            }
        }
        Ok(())
    }

    /// A response without its transaction. Only a retransmitted 2xx of a dialog we already
    /// ACKed is used (RFC 6026 §8.4: ACK it again), and only when it names the dialog by
    /// Call-ID and both tags and comes from where the INVITE went.
    fn stray_2xx(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        resp: &Response,
    ) -> Result<(), InputError> {
        if resp.cseq()?.method != Method::Invite || resp.status / 100 != 2 {
            return Err(InputError::NoTransaction);
        }
        let call_id = resp.call_id()?;
        let from = resp.header_from()?;
        let to = resp.header_to()?;
        let (Some(local_tag), Some(remote_tag)) = (from.tag(), to.tag()) else {
            return Err(InputError::NoTransaction);
        };
        let Some((h, call)) = find_call(&self.by_call_id, &mut self.calls, call_id, |c| {
            c.role == Role::Caller
                && c.local_tag == local_tag
                && c.acks.iter().any(|(tag, _, _)| tag == remote_tag)
        }) else {
            return Err(InputError::NoTransaction);
        };
        if call.peer != source || call.transport != transport {
            return Err(InputError::UntrustedSource);
        }
        invite_2xx(&mut self.ctx, h, call, now, resp);
        Ok(())
    }

    fn client_response(
        &mut self,
        now: Instant,
        handle: CallHandle,
        purpose: Purpose,
        request: &Request,
        dest: SocketAddr,
        resp: Response,
    ) {
        let Some(call) = self.calls.get_mut(&handle) else {
            return;
        };
        let ctx = &mut self.ctx;
        match purpose {
            Purpose::Invite => invite_response(ctx, handle, call, now, request, resp),
            Purpose::Bye => {
                if resp.status < 200 {
                    return;
                }
                if matches!(resp.status, 401 | 407)
                    && retry_with_auth(ctx, handle, call, now, request, &resp, Purpose::Bye, dest)
                        .is_ok()
                {
                    return;
                }
                let reason = call.bye_reason.clone();
                end(ctx, handle, call, now, reason);
            }
            Purpose::Info => {
                if resp.status < 200 {
                    return;
                }
                if matches!(resp.status, 401 | 407)
                    && retry_with_auth(ctx, handle, call, now, request, &resp, Purpose::Info, dest)
                        .is_ok()
                {
                    return;
                }
                ctx.event(Event::InfoResponse {
                    call: handle,
                    result: Ok(resp.status),
                });
            }
            Purpose::Cancel | Purpose::ForkBye => {}
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        req: Request,
    ) -> Result<(), InputError> {
        let via = req.top_via()?;
        let cseq = req.cseq()?;
        let call_id = req.call_id()?.to_string();
        let from = req.header_from()?;
        let to = req.header_to()?;
        if cseq.method != req.method {
            return Err(InputError::Parse(ParseError::InvalidHeader("CSeq")));
        }
        let branch = via.branch().unwrap_or_default().to_string();
        let sent_by = via.sent_by.to_ascii_lowercase();
        if req.method == Method::Ack {
            let key = ServerKey {
                branch,
                sent_by,
                method: Method::Invite,
            };
            if let Some(e) = self.ctx.servers.get_mut(&key) {
                if e.dest != source || e.transport != transport {
                    return Err(InputError::UntrustedSource);
                }
                if e.tx.on_ack(now) {
                    return Ok(());
                }
            }
            let Some(to_tag) = to.tag() else {
                return Err(InputError::NoTransaction);
            };
            let Some((h, call)) = find_call(&self.by_call_id, &mut self.calls, &call_id, |c| {
                c.local_tag == to_tag
            }) else {
                return Err(InputError::NoTransaction);
            };
            if !call.admits(transport, source) {
                return Err(InputError::UntrustedSource);
            }
            ack_received(&mut self.ctx, h, call, now, &req, cseq.seq);
            return Ok(());
        }
        let key = ServerKey {
            branch,
            sent_by,
            method: req.method.clone(),
        };
        if let Some(e) = self.ctx.servers.get_mut(&key) {
            if e.dest != source || e.transport != transport {
                return Err(InputError::UntrustedSource);
            }
            if let Some(bytes) = e.tx.on_retransmission() {
                let (call, t, d) = (e.call, e.transport, e.dest);
                self.ctx.push(call, t, d, bytes);
            }
            return Ok(());
        }
        if req.method == Method::Cancel {
            return self.cancel_received(now, transport, source, &key, &req);
        }
        let Some(to_tag) = to.tag() else {
            return self.out_of_dialog_request(now, transport, source, &key, req, from);
        };
        let found = find_call(&self.by_call_id, &mut self.calls, &call_id, |c| {
            c.local_tag == to_tag && c.phase != Phase::Ended
        });
        match found {
            Some((h, call)) => {
                // Only the dialog's peer may hang up, move the media or send keys; a stranger
                // who saw the Call-ID and tags gets nothing, not even a transaction.
                if !call.admits(transport, source) {
                    return Err(InputError::UntrustedSource);
                }
                self.ctx.servers.insert(
                    key.clone(),
                    ServerEntry {
                        tx: ServerTx::new(
                            req.clone(),
                            transport.is_reliable(),
                            self.ctx.cfg.timers,
                        ),
                        call: Some(h),
                        dest: source,
                        transport,
                    },
                );
                in_dialog_request(
                    &mut self.ctx,
                    h,
                    call,
                    now,
                    &key,
                    &req,
                    from.tag().unwrap_or_default(),
                )
            }
            None if self.ctx.is_known(source) => {
                let resp = self.ctx.response_to(&req, 481, None);
                self.ctx.answer_statelessly(transport, source, &resp);
                Err(InputError::NoTransaction)
            }
            None => Err(InputError::UntrustedSource),
        }
    }

    fn cancel_received(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        key: &ServerKey,
        req: &Request,
    ) -> Result<(), InputError> {
        let invite_key = ServerKey {
            method: Method::Invite,
            ..key.clone()
        };
        let Some(invite) = self.ctx.servers.get(&invite_key) else {
            if self.ctx.is_known(source) {
                let resp = self.ctx.response_to(req, 481, None);
                self.ctx.answer_statelessly(transport, source, &resp);
                return Err(InputError::NoTransaction);
            }
            return Err(InputError::UntrustedSource);
        };
        // §9.2: a CANCEL matches the INVITE it cancels hop by hop: it comes from where the
        // INVITE came from.
        if invite.dest != source || invite.transport != transport {
            return Err(InputError::UntrustedSource);
        }
        let (invite_req, call, finished) =
            (invite.tx.request.clone(), invite.call, invite.tx.is_final());
        self.ctx.servers.insert(
            key.clone(),
            ServerEntry {
                tx: ServerTx::new(req.clone(), transport.is_reliable(), self.ctx.cfg.timers),
                call,
                dest: source,
                transport,
            },
        );
        let ok = self.ctx.response_to(req, 200, None);
        self.ctx.respond(now, key, &ok);
        if finished {
            return Ok(());
        }
        // §9.2: the INVITE gets 487 Request Terminated.
        let tag = call
            .and_then(|h| self.calls.get(&h))
            .map(|c| c.local_tag.clone());
        let resp = self.ctx.response_to(&invite_req, 487, tag.as_deref());
        self.ctx.respond(now, &invite_key, &resp);
        if let Some(h) = call
            && let Some(c) = self.calls.get_mut(&h)
        {
            end(&mut self.ctx, h, c, now, EndReason::Cancelled);
        }
        Ok(())
    }

    fn out_of_dialog_request(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        key: &ServerKey,
        req: Request,
        from: NameAddr,
    ) -> Result<(), InputError> {
        if req.method == Method::Invite && self.ctx.cfg.accept_incoming {
            self.incoming_invite(now, transport, source, key, req, from);
            return Ok(());
        }
        if !self.ctx.is_known(source) {
            return Err(InputError::UntrustedSource);
        }
        // A trusted peer outside any dialog: one stateless answer, no transaction.
        let ctx = &mut self.ctx;
        match req.method {
            Method::Invite => {
                // §8.2.6.2: a final response to an INVITE carries a To-tag (128 random bits
                // of ChaCha20: nothing about the generator's state).
                let tag = ctx.id();
                let resp = ctx.response_to(&req, 480, Some(&tag));
                ctx.answer_statelessly(transport, source, &resp);
                Ok(())
            }
            Method::Options => {
                let mut resp = ctx.response_to(&req, 200, None);
                resp.headers.push("Allow", ALLOW);
                resp.headers.push("Accept", ACCEPT);
                ctx.answer_statelessly(transport, source, &resp);
                Ok(())
            }
            Method::Bye | Method::Info | Method::Update | Method::Prack => {
                let resp = ctx.response_to(&req, 481, None);
                ctx.answer_statelessly(transport, source, &resp);
                Err(InputError::NoTransaction)
            }
            _ => {
                let mut resp = ctx.response_to(&req, 405, None);
                resp.headers.push("Allow", ALLOW);
                ctx.answer_statelessly(transport, source, &resp);
                Ok(())
            }
        }
    }

    /// A phone's new call: an INVITE from anyone (`accept_incoming`).
    fn incoming_invite(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        key: &ServerKey,
        req: Request,
        from: NameAddr,
    ) {
        if let Some(req_ext) = req.headers.get("Require") {
            // §8.2.2.3: we support no extensions.
            let mut resp = self.ctx.response_to(&req, 420, None);
            resp.headers.push("Unsupported", req_ext);
            self.ctx.answer_statelessly(transport, source, &resp);
            return;
        }
        let Some(Ok(contact)) = req.contact() else {
            let resp = self.ctx.response_to(&req, 400, None);
            self.ctx.answer_statelessly(transport, source, &resp);
            return;
        };
        let handle = self.new_handle();
        let ctx = &mut self.ctx;
        ctx.servers.insert(
            key.clone(),
            ServerEntry {
                tx: ServerTx::new(req.clone(), transport.is_reliable(), ctx.cfg.timers),
                call: Some(handle),
                dest: source,
                transport,
            },
        );
        let local_tag = ctx.id();
        let to_value = req.headers.get("To").unwrap_or_default().to_string();
        let offer = (!req.body.is_empty())
            .then(|| SessionDescription::parse(&req.body).ok())
            .flatten();
        let dialog = Dialog {
            remote_tag: from.tag().unwrap_or_default().to_string(),
            remote_hdr: req.headers.get("From").unwrap_or_default().to_string(),
            remote_target: contact.uri,
            route_set: req
                .headers
                .list("Record-Route")
                .map(str::to_string)
                .collect(),
            remote_seq: req.cseq().ok().map(|c| c.seq),
            early_sdp: None,
        };
        let peers: BTreeSet<SocketAddr> = [source, dialog_hop(&dialog, source)].into();
        for p in &peers {
            ctx.know(*p);
        }
        let trying = ctx.response_to(&req, 100, None);
        ctx.respond(now, key, &trying);
        let media_port = ctx.cfg.local_addr;
        let session_id = ctx.rng.next_u64() >> 1;
        ctx.event(Event::Incoming {
            call: handle,
            from: from.uri.clone(),
            to: req
                .header_to()
                .map(|t| t.uri)
                .unwrap_or_else(|_| req.uri.clone()),
            offer: offer.clone(),
        });
        self.insert_call(
            handle,
            Call {
                role: Role::Callee,
                phase: Phase::Early,
                call_id: req.call_id().unwrap_or_default().to_string(),
                local_hdr: format!("{to_value};tag={local_tag}"),
                local_tag,
                transport,
                peer: source,
                peers,
                media: LocalMedia::new(media_port, session_id),
                sdp_version: 0,
                local_cseq: 0,
                target: None,
                invite: None,
                credentials: None,
                auth_headers: Vec::new(),
                auth_rounds: 0,
                nonce_counts: HashMap::new(),
                provisional: false,
                rang: false,
                alternates: VecDeque::new(),
                failover_at: None,
                cancel_pending: false,
                cancel_deadline: None,
                early: Vec::new(),
                acks: Vec::new(),
                invite_key: Some(key.clone()),
                remote_offer: offer,
                pending_2xx: None,
                offer_in_2xx: false,
                bye_after_ack: false,
                dialog: Some(dialog),
                bye_reason: EndReason::LocalHangup,
                linger_until: None,
            },
        );
    }

    /// Sets the local media (RTP address, telephone-event PT) a callee answers with.
    /// Call it after `Event::Incoming` and before `answer`; until then the SDP would
    /// advertise the SIP address as the RTP address.
    pub fn set_local_media(
        &mut self,
        handle: CallHandle,
        media: LocalMedia,
    ) -> Result<(), UsageError> {
        self.touch();
        let call = self
            .calls
            .get_mut(&handle)
            .ok_or(UsageError::UnknownCall(handle))?;
        call.media = media;
        Ok(())
    }
}

/// The callee call `handle` with the INVITE it has not answered yet: its server transaction
/// and the request, for `operation` (a response to it).
fn callee_invite<'a>(
    calls: &'a mut BTreeMap<CallHandle, Call>,
    ctx: &Ctx,
    handle: CallHandle,
    operation: &'static str,
) -> Result<(&'a mut Call, ServerKey, Request), UsageError> {
    let call = calls
        .get_mut(&handle)
        .ok_or(UsageError::UnknownCall(handle))?;
    let invalid = UsageError::InvalidState {
        call: handle,
        operation,
    };
    let key = match (&call.invite_key, call.role, call.phase) {
        (Some(k), Role::Callee, Phase::Early) => k.clone(),
        _ => return Err(invalid),
    };
    let req = ctx
        .servers
        .get(&key)
        .map(|e| e.tx.request.clone())
        .ok_or(invalid)?;
    Ok((call, key, req))
}

/// Ends a call once: emits `Terminated` and keeps it 64·T1 for retransmissions.
fn end(ctx: &mut Ctx, handle: CallHandle, call: &mut Call, now: Instant, reason: EndReason) {
    if call.phase == Phase::Ended {
        return;
    }
    call.phase = Phase::Ended;
    call.cancel_deadline = None;
    call.failover_at = None;
    call.pending_2xx = None;
    call.linger_until = Some(now + ctx.cfg.timers.timeout());
    ctx.event(Event::Terminated {
        call: handle,
        reason,
    });
}

/// Builds a request inside the dialog (RFC 3261 §12.2.1.1) with a fresh Via and CSeq.
fn dialog_request(ctx: &mut Ctx, call: &mut Call, method: Method) -> Option<(Request, SocketAddr)> {
    let dialog = call.dialog.as_ref()?;
    call.local_cseq += 1;
    build_in_dialog(ctx, call, dialog, method, call.local_cseq)
}

/// Where in-dialog requests of `dialog` go (RFC 3261 §12.2.1.1): the first route, else the
/// remote target, when it is an address literal; else `fallback` (the call's peer).
fn dialog_hop(dialog: &Dialog, fallback: SocketAddr) -> SocketAddr {
    let first_route = dialog
        .route_set
        .first()
        .and_then(|r| NameAddr::parse(r).ok());
    first_route
        .as_ref()
        .map_or(&dialog.remote_target, |r| &r.uri)
        .socket_addr()
        .unwrap_or(fallback)
}

impl Call {
    /// Whether a request that arrived over `transport` from `source` may act in this call.
    fn admits(&self, transport: Transport, source: SocketAddr) -> bool {
        transport == self.transport && self.peers.contains(&source)
    }

    /// Trusts `addr` for this call's in-dialog requests from now on.
    fn add_peer(&mut self, ctx: &mut Ctx, addr: SocketAddr) {
        if self.peers.insert(addr) {
            ctx.know(addr);
        }
    }
}

fn build_in_dialog(
    ctx: &mut Ctx,
    call: &Call,
    dialog: &Dialog,
    method: Method,
    seq: u32,
) -> Option<(Request, SocketAddr)> {
    let first_route = dialog
        .route_set
        .first()
        .and_then(|r| NameAddr::parse(r).ok());
    let (ruri, routes): (Uri, Vec<String>) = match &first_route {
        Some(first) if !first.uri.is_loose_route() => {
            // Strict routing: the first route becomes the Request-URI, the target goes last.
            let mut rest: Vec<String> = dialog.route_set[1..].to_vec();
            rest.push(format!("<{}>", dialog.remote_target.as_str()));
            (first.uri.clone(), rest)
        }
        _ => (dialog.remote_target.clone(), dialog.route_set.clone()),
    };
    let dest = dialog_hop(dialog, call.peer);
    let mut req = Request::new(method.clone(), ruri);
    let branch = ctx.branch();
    req.headers.push("Via", ctx.via(call.transport, &branch));
    req.headers.push("Max-Forwards", MAX_FORWARDS.to_string());
    if !routes.is_empty() {
        req.headers.push("Route", routes.join(", "));
    }
    req.headers.push("From", call.local_hdr.clone());
    req.headers.push("To", dialog.remote_hdr.clone());
    req.headers.push("Call-ID", call.call_id.clone());
    req.headers.push("CSeq", format!("{seq} {method}"));
    req.headers.push("User-Agent", ctx.cfg.user_agent.clone());
    Some((req, dest))
}

fn send_bye(ctx: &mut Ctx, handle: CallHandle, call: &mut Call, now: Instant, reason: EndReason) {
    call.bye_reason = reason.clone();
    match dialog_request(ctx, call, Method::Bye) {
        Some((mut req, dest)) => {
            for (name, _, value) in &call.auth_headers {
                req.headers.push(name.clone(), value.clone());
            }
            ctx.send_request(now, handle, Purpose::Bye, req, dest, call.transport);
            call.phase = Phase::ByeSent;
        }
        None => end(ctx, handle, call, now, reason),
    }
}

/// RFC 3263 §4.3: the INVITE to `call.peer` failed (`why`: no answer, transport error or
/// 503) before the far end rang; sends the same request with a new branch (a new client
/// transaction) to the next target. The old transaction is dropped unless it already ended
/// (a 503 stays to absorb its retransmissions), so the old target's late answers match
/// nothing. Digest answers are not carried over (the next server has its own nonces).
/// False when there is nothing left to try or the call is past the point of failing over.
fn fail_over(
    ctx: &mut Ctx,
    handle: CallHandle,
    call: &mut Call,
    now: Instant,
    why: Failure,
) -> bool {
    if call.role != Role::Caller
        || !matches!(call.phase, Phase::Calling | Phase::Early)
        || call.rang
        || call.cancel_pending
        || call.dialog.is_some()
    {
        return false;
    }
    let Some(invite) = call.invite.clone() else {
        return false;
    };
    let Some(next) = call.alternates.pop_front() else {
        return false;
    };
    ctx.retain_clients(|e| {
        !(e.call == handle
            && e.purpose == Purpose::Invite
            && matches!(
                e.tx.state,
                crate::transaction::ClientState::Calling
                    | crate::transaction::ClientState::Proceeding
            ))
    });
    let branch = ctx.branch();
    let mut req = Request::new(Method::Invite, invite.uri.clone());
    for h in invite.headers.iter() {
        if h.is("Authorization") || h.is("Proxy-Authorization") || h.is("Content-Length") {
            continue;
        }
        if h.is("Via") {
            req.headers.push("Via", ctx.via(call.transport, &branch));
        } else {
            req.headers.push(h.name.clone(), h.value.clone());
        }
    }
    req.body = invite.body.clone();
    call.auth_headers.clear();
    call.auth_rounds = 0;
    call.early.clear();
    call.provisional = false;
    call.phase = Phase::Calling;
    let from = call.peer;
    call.peer = next;
    call.invite = Some(req.clone());
    call.failover_at =
        (!call.alternates.is_empty()).then(|| now + ctx.cfg.timers.t1 * FAILOVER_SILENCE_T1);
    ctx.event(Event::Rerouted {
        call: handle,
        from,
        to: next,
        failure: why,
    });
    ctx.send_request(now, handle, Purpose::Invite, req, next, call.transport);
    true
}

fn send_cancel(ctx: &mut Ctx, handle: CallHandle, call: &mut Call, now: Instant) {
    let Some(invite) = &call.invite else { return };
    // §9.1: same Request-URI, Call-ID, From, To, CSeq number and top Via as the INVITE.
    let mut req = Request::new(Method::Cancel, invite.uri.clone());
    for name in ["Via", "Max-Forwards", "Route", "From", "To", "Call-ID"] {
        for v in invite.headers.get_all(name) {
            req.headers.push(name, v);
        }
    }
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
    req.headers.push("CSeq", format!("{seq} CANCEL"));
    req.headers.push("User-Agent", ctx.cfg.user_agent.clone());
    ctx.send_request(now, handle, Purpose::Cancel, req, call.peer, call.transport);
    call.phase = Phase::Cancelling;
    call.cancel_pending = false;
    call.cancel_deadline = Some(now + ctx.cfg.timers.timeout());
}

/// A dialog from a response that carries a To-tag (§12.1.2).
fn dialog_from_response(call: &Call, resp: &Response) -> Option<Dialog> {
    let to = resp.header_to().ok()?;
    let tag = to.tag()?.to_string();
    let remote_target = match resp.contact() {
        Some(Ok(c)) => c.uri,
        _ => call.target.clone()?,
    };
    let mut route_set: Vec<String> = resp
        .headers
        .list("Record-Route")
        .map(str::to_string)
        .collect();
    route_set.reverse();
    Some(Dialog {
        remote_tag: tag,
        remote_hdr: resp.headers.get("To").unwrap_or_default().to_string(),
        remote_target,
        route_set,
        remote_seq: None,
        early_sdp: (!resp.body.is_empty()).then(|| resp.body.clone()),
    })
}

fn negotiate(body: &[u8]) -> Result<Negotiated, SdpError> {
    SessionDescription::parse(body)?.negotiate()
}

fn invite_response(
    ctx: &mut Ctx,
    handle: CallHandle,
    call: &mut Call,
    now: Instant,
    request: &Request,
    resp: Response,
) {
    // Responses to an INVITE we already replaced (auth retry) are stale.
    if call
        .invite
        .as_ref()
        .is_some_and(|i| i.headers.get("Via") != request.headers.get("Via"))
    {
        return;
    }
    match resp.status {
        100..=199 => {
            if call.phase == Phase::Ended {
                return;
            }
            call.provisional = true;
            // Heard from: the hop is alive. Ringing: the far end is reached, and a second
            // trunk would ring the phone twice.
            call.failover_at = None;
            call.rang |= resp.status > 100;
            if let Some(d) = dialog_from_response(call, &resp) {
                match call.early.iter_mut().find(|e| e.remote_tag == d.remote_tag) {
                    Some(e) => {
                        e.remote_target = d.remote_target;
                        if d.early_sdp.is_some() {
                            e.early_sdp = d.early_sdp;
                        }
                    }
                    None => call.early.push(d),
                }
            }
            let early_media = (!resp.body.is_empty()).then(|| negotiate(&resp.body));
            if call.phase == Phase::Calling {
                call.phase = Phase::Early;
            }
            ctx.event(Event::Progress {
                call: handle,
                status: resp.status,
                early_media,
            });
            if call.cancel_pending && call.phase == Phase::Early {
                send_cancel(ctx, handle, call, now);
            }
        }
        200..=299 => invite_2xx(ctx, handle, call, now, &resp),
        status => {
            call.early.clear();
            if call.phase == Phase::Ended {
                return;
            }
            if matches!(status, 401 | 407)
                && call.phase != Phase::Cancelling
                && !call.cancel_pending
            {
                match retry_with_auth(
                    ctx,
                    handle,
                    call,
                    now,
                    request,
                    &resp,
                    Purpose::Invite,
                    call.peer,
                ) {
                    Ok(()) => return,
                    Err(failure) => {
                        ctx.event(Event::Failed {
                            call: handle,
                            failure: failure.clone(),
                        });
                        end(ctx, handle, call, now, EndReason::Failed(failure));
                        return;
                    }
                }
            }
            if call.phase == Phase::Cancelling || call.cancel_pending {
                end(ctx, handle, call, now, EndReason::Cancelled);
            } else if status == 503
                && fail_over(ctx, handle, call, now, Failure::Rejected { status })
            {
            } else {
                let failure = Failure::Rejected { status };
                ctx.event(Event::Failed {
                    call: handle,
                    failure: failure.clone(),
                });
                end(ctx, handle, call, now, EndReason::Failed(failure));
            }
        }
    }
}

/// ACK for a 2xx (§13.2.2.4): a new transaction-less request in the dialog.
fn build_2xx_ack(ctx: &mut Ctx, call: &Call, dialog: &Dialog) -> Option<(Vec<u8>, SocketAddr)> {
    let seq = call.invite.as_ref()?.cseq().ok()?.seq;
    let (mut req, dest) = build_in_dialog(ctx, call, dialog, Method::Ack, seq)?;
    for (name, _, value) in &call.auth_headers {
        req.headers.push(name.clone(), value.clone());
    }
    Some((req.to_bytes(), dest))
}

fn invite_2xx(ctx: &mut Ctx, handle: CallHandle, call: &mut Call, now: Instant, resp: &Response) {
    let Some(mut dialog) = dialog_from_response(call, resp) else {
        return;
    };
    // A retransmitted 2xx: resend the same ACK.
    if let Some((_, bytes, dest)) = call
        .acks
        .iter()
        .find(|(tag, _, _)| *tag == dialog.remote_tag)
    {
        let (bytes, dest) = (bytes.clone(), *dest);
        ctx.push(Some(handle), call.transport, dest, bytes);
        return;
    }
    if let Some(early) = call
        .early
        .iter()
        .find(|e| e.remote_tag == dialog.remote_tag)
        && dialog.early_sdp.is_none()
    {
        dialog.early_sdp = early.early_sdp.clone();
    }
    let Some((ack, dest)) = build_2xx_ack(ctx, call, &dialog) else {
        return;
    };
    ctx.push(Some(handle), call.transport, dest, ack.clone());
    call.acks.push((dialog.remote_tag.clone(), ack, dest));
    let first = call.dialog.is_none()
        && matches!(
            call.phase,
            Phase::Calling | Phase::Early | Phase::Cancelling
        );
    if !first {
        // A second fork answered (or the call is already over): ACK it, then BYE it (§13.2.2.4).
        let (seq, transport) = (call.local_cseq + 1, call.transport);
        call.local_cseq = seq;
        if let Some((req, dest)) = build_in_dialog(ctx, call, &dialog, Method::Bye, seq) {
            ctx.send_request(now, handle, Purpose::ForkBye, req, dest, transport);
        }
        return;
    }
    call.early.clear();
    call.cancel_deadline = None;
    call.failover_at = None;
    let media = match dialog.early_sdp.as_deref() {
        Some(body) => negotiate(body),
        None => Err(SdpError::NoAudio),
    };
    let info = DialogInfo {
        call_id: call.call_id.clone(),
        local_tag: call.local_tag.clone(),
        remote_tag: dialog.remote_tag.clone(),
        remote_target: dialog.remote_target.clone(),
        route_set: dialog.route_set.clone(),
    };
    let cancelled = call.phase == Phase::Cancelling || call.cancel_pending;
    // The answer came from where the INVITE went: its dialog's next hop is a peer.
    let hop = dialog_hop(&dialog, call.peer);
    call.add_peer(ctx, hop);
    call.dialog = Some(dialog);
    call.phase = Phase::Confirmed;
    if cancelled {
        // The 200 won the race with our CANCEL: hang up at once (§9.1).
        send_bye(ctx, handle, call, now, EndReason::Cancelled);
        return;
    }
    ctx.event(Event::Answered {
        call: handle,
        media,
        dialog: info,
    });
}

/// Answers a 401/407 and re-sends `request` (new branch, CSeq + 1).
#[allow(clippy::too_many_arguments)]
fn retry_with_auth(
    ctx: &mut Ctx,
    handle: CallHandle,
    call: &mut Call,
    now: Instant,
    request: &Request,
    resp: &Response,
    purpose: Purpose,
    dest: SocketAddr,
) -> Result<(), Failure> {
    let status = resp.status;
    let (challenge_hdr, answer_hdr) = if status == 401 {
        ("WWW-Authenticate", "Authorization")
    } else {
        ("Proxy-Authenticate", "Proxy-Authorization")
    };
    let fail = |error| Failure::Auth { status, error };
    let creds = call
        .credentials
        .clone()
        .ok_or(fail(AuthFailure::Unanswerable(
            auth::AuthError::NoCredentials,
        )))?;
    let challenge = Challenge::select(resp.headers.get_all(challenge_hdr))
        .map_err(|e| fail(AuthFailure::Unanswerable(e)))?;
    if call.auth_rounds >= MAX_AUTH_ROUNDS {
        return Err(fail(AuthFailure::TooManyRounds));
    }
    // Challenged again for a realm we already answered: wrong password unless the nonce was stale.
    let answered_before = call
        .auth_headers
        .iter()
        .any(|(n, realm, _)| n == answer_hdr && *realm == challenge.realm)
        && request.headers.get(answer_hdr).is_some();
    if answered_before && !challenge.stale {
        return Err(fail(AuthFailure::CredentialsRejected));
    }
    call.auth_rounds += 1;
    let nc = {
        let n = call
            .nonce_counts
            .entry(challenge.nonce.clone())
            .or_insert(0);
        *n += 1;
        *n
    };
    let cnonce = ctx.rng.token();
    let digest = DigestRequest {
        method: request.method.as_str(),
        uri: request.uri.as_str(),
        body: &request.body,
        cnonce: &cnonce,
        nc,
    };
    let value = auth::authorization(&challenge, &creds, &digest);
    call.auth_headers
        .retain(|(n, realm, _)| !(n == answer_hdr && *realm == challenge.realm));
    call.auth_headers
        .push((answer_hdr.to_string(), challenge.realm.clone(), value));

    let mut next = Request::new(request.method.clone(), request.uri.clone());
    let branch = ctx.branch();
    call.local_cseq += 1;
    for h in request.headers.iter() {
        if h.is("Authorization") || h.is("Proxy-Authorization") || h.is("Content-Length") {
            continue;
        }
        if h.is("Via") {
            next.headers.push("Via", ctx.via(call.transport, &branch));
        } else if h.is("CSeq") {
            next.headers
                .push("CSeq", format!("{} {}", call.local_cseq, request.method));
        } else {
            next.headers.push(h.name.clone(), h.value.clone());
        }
    }
    for (name, _, value) in &call.auth_headers {
        next.headers.push(name.clone(), value.clone());
    }
    next.body = request.body.clone();
    if purpose == Purpose::Invite {
        call.invite = Some(next.clone());
        call.provisional = false;
        call.phase = Phase::Calling;
    }
    ctx.event(Event::Authenticating {
        call: handle,
        status,
        realm: challenge.realm.clone(),
        algorithm: challenge.algorithm,
    });
    ctx.send_request(now, handle, purpose, next, dest, call.transport);
    Ok(())
}

fn ack_received(
    ctx: &mut Ctx,
    handle: CallHandle,
    call: &mut Call,
    now: Instant,
    req: &Request,
    seq: u32,
) {
    let Some(p) = &call.pending_2xx else { return };
    if p.cseq != seq {
        return;
    }
    let initial = p.initial;
    call.pending_2xx = None;
    let media = (!req.body.is_empty()).then(|| negotiate(&req.body));
    if initial {
        call.phase = Phase::Confirmed;
        let media = if call.offer_in_2xx { media } else { None };
        ctx.event(Event::Confirmed {
            call: handle,
            media,
        });
        if call.bye_after_ack {
            send_bye(ctx, handle, call, now, EndReason::LocalHangup);
        }
    } else if let Some(Ok(m)) = media {
        ctx.event(Event::MediaChanged {
            call: handle,
            media: m,
        });
    }
}

fn in_dialog_request(
    ctx: &mut Ctx,
    handle: CallHandle,
    call: &mut Call,
    now: Instant,
    key: &ServerKey,
    req: &Request,
    from_tag: &str,
) -> Result<(), InputError> {
    let seq = req.cseq().map(|c| c.seq).unwrap_or(0);
    let confirmed = call
        .dialog
        .as_ref()
        .is_some_and(|d| d.remote_tag == from_tag);
    let early = call.early.iter().any(|d| d.remote_tag == from_tag);
    let early_ok = early
        && matches!(
            req.method,
            Method::Info | Method::Update | Method::Options | Method::Prack
        );
    if !(confirmed || early_ok) {
        let resp = ctx.response_to(req, 481, None);
        ctx.respond(now, key, &resp);
        return Err(InputError::NoTransaction);
    }
    let dialog = if confirmed {
        call.dialog.as_mut()
    } else {
        call.early.iter_mut().find(|d| d.remote_tag == from_tag)
    };
    let mut new_hop = None;
    if let Some(d) = dialog {
        // §12.2.2: a CSeq not above the last one is out of order → 500, nothing done.
        if d.remote_seq.is_some_and(|r| seq <= r) {
            let resp = ctx.response_to(req, 500, None);
            ctx.respond(now, key, &resp);
            return Err(InputError::CseqOrder);
        }
        d.remote_seq = Some(seq);
        if matches!(req.method, Method::Invite | Method::Update)
            && let Some(Ok(c)) = req.contact()
        {
            // A target refresh from the dialog's own peer (§12.2.2): in-dialog requests now
            // go to the new target, and may come from it.
            d.remote_target = c.uri;
            new_hop = Some(dialog_hop(d, call.peer));
        }
    }
    if let Some(hop) = new_hop {
        call.add_peer(ctx, hop);
    }
    match req.method {
        Method::Bye => {
            let resp = ctx.response_to(req, 200, None);
            ctx.respond(now, key, &resp);
            ctx.event(Event::RemoteHangup { call: handle });
            end(ctx, handle, call, now, EndReason::RemoteHangup);
        }
        Method::Info => {
            let content_type = req.content_type();
            let status = match content_type.as_deref() {
                Some(ct) if info::is_dtmf_content_type(ct) => {
                    match info::parse_dtmf_info(ct, &req.body) {
                        Ok(info) => {
                            ctx.event(Event::Dtmf { call: handle, info });
                            200
                        }
                        Err(_) => 400,
                    }
                }
                // An empty INFO is a keep-alive probe (RFC 6086 §4.2.2 legacy use): 200.
                None if req.body.is_empty() => 200,
                _ => {
                    ctx.event(Event::Info {
                        call: handle,
                        content_type,
                    });
                    415
                }
            };
            let mut resp = ctx.response_to(req, status, None);
            if status == 415 {
                resp.headers
                    .push("Accept", "application/dtmf-relay, application/dtmf");
            }
            ctx.respond(now, key, &resp);
        }
        Method::Options | Method::Prack => {
            let mut resp = ctx.response_to(req, 200, None);
            resp.headers.push("Allow", ALLOW);
            resp.headers.push("Accept", ACCEPT);
            ctx.respond(now, key, &resp);
        }
        Method::Update | Method::Invite => session_modification(ctx, handle, call, now, key, req),
        _ => {
            let mut resp = ctx.response_to(req, 501, None);
            resp.headers.push("Allow", ALLOW);
            ctx.respond(now, key, &resp);
        }
    }
    Ok(())
}

/// re-INVITE or UPDATE from the far end (RFC 3311, RFC 3261 §14.2).
fn session_modification(
    ctx: &mut Ctx,
    handle: CallHandle,
    call: &mut Call,
    now: Instant,
    key: &ServerKey,
    req: &Request,
) {
    call.sdp_version += 1;
    let (body, media) = if req.body.is_empty() {
        // Offerless re-INVITE: we offer in the 2xx, the answer comes in the ACK.
        (Some(sdp::build_offer(&call.media, call.sdp_version)), None)
    } else {
        match SessionDescription::parse(&req.body)
            .and_then(|offer| sdp::build_answer(&offer, &call.media, call.sdp_version))
        {
            Ok((answer, n)) => (Some(answer), Some(n)),
            Err(_) => {
                let resp = ctx.response_to(req, 488, None);
                ctx.respond(now, key, &resp);
                return;
            }
        }
    };
    let mut resp = ctx.response_to(req, 200, Some(&call.local_tag));
    resp.headers
        .push("Contact", ctx.contact(None, call.transport));
    if let Some(body) = body {
        resp.headers.push("Content-Type", "application/sdp");
        resp.body = body.into_bytes();
    }
    ctx.respond(now, key, &resp);
    if req.method == Method::Invite {
        let cfg = ctx.cfg.timers;
        let give_up = now + cfg.timeout();
        call.pending_2xx = Some(Pending2xx {
            cseq: req.cseq().map(|c| c.seq).unwrap_or(0),
            bytes: resp.to_bytes(),
            interval: cfg.t1,
            next: if call.transport.is_reliable() {
                give_up
            } else {
                now + cfg.t1
            },
            give_up,
            initial: false,
        });
    }
    if let Some(media) = media {
        ctx.event(Event::MediaChanged {
            call: handle,
            media,
        });
    }
}

/// The call of `call_id` (looked up in `index`) that `pred` accepts.
fn find_call<'a>(
    index: &HashMap<String, Vec<CallHandle>>,
    calls: &'a mut BTreeMap<CallHandle, Call>,
    call_id: &str,
    pred: impl Fn(&Call) -> bool,
) -> Option<(CallHandle, &'a mut Call)> {
    let h = *index
        .get(call_id)?
        .iter()
        .find(|h| calls.get(h).is_some_and(&pred))?;
    calls.get_mut(&h).map(|c| (h, c))
}
