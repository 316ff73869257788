//! Many verification calls over one SIP user agent, sans-IO.
//!
//! ```text
//!  runtime ──handle_sip(now, transport, source, bytes)──▶ ┌─────────────┐ ──poll_transmit()──▶ SIP / RTP sockets
//!          ──handle_rtp(now, call, source, bytes)──────▶  │ Switchboard │ ──poll_event()─────▶ progress, outcome
//!          ──handle_timeout(now) / place / cancel──────▶  └─────────────┘ ──poll_timeout()───▶ one timer
//! ```
//! One runtime task can drive every call: the switchboard demultiplexes SIP through the user
//! agent (Call-ID, branches) and RTP by the call the runtime's socket belongs to.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore as _, SeedableRng as _};
use sip::{CallHandle, OutgoingCall, Transport, UserAgent};

use crate::call::{Core, CoreInit, Cx, Event, Input, Stage};
use crate::keys::Expect;
use crate::media::{Media, MediaFactory};
use crate::spec::{CallSpec, SpecError};

/// Sent RTP buffers kept for reuse: more than one drain of the queue holds (a tick sends one
/// packet for each call whose 20 ms slot fell in it), so the pool is not emptied in a burst.
const SPARE_PACKETS: usize = 4096;

/// Identifies a call of a [`Switchboard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(CallHandle);

impl CallId {
    /// The SIP user agent's handle of the call.
    pub fn sip(self) -> CallHandle {
        self.0
    }
}

impl From<CallHandle> for CallId {
    fn from(h: CallHandle) -> Self {
        Self(h)
    }
}

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Something to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A SIP message.
    Sip(sip::Transmit),
    /// An RTP packet of a call (send it from that call's RTP socket).
    Rtp {
        /// The call.
        call: CallId,
        /// Where to.
        destination: SocketAddr,
        /// The packet.
        payload: Vec<u8>,
    },
}

struct Entry<M> {
    core: Core,
    stage: Option<Stage<M>>,
    /// The call's deadline as filed in [`Switchboard::deadlines`].
    deadline: Option<Instant>,
}

/// 32 bytes of `rng` as a seed for another generator (never sent anywhere).
fn next_seed(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    seed
}

/// The verification calls of one SIP user agent.
pub struct Switchboard<F: MediaFactory> {
    ua: UserAgent,
    factory: F,
    calls: BTreeMap<CallHandle, Entry<F::Media>>,
    /// Calls fed since the last pump: only they can have packets or events waiting, and only
    /// their deadlines can have moved.
    touched: Vec<CallHandle>,
    /// Every call's next deadline, earliest first: the timer costs O(log calls) per change
    /// and nothing per wake-up, however many calls there are.
    deadlines: BTreeSet<(Instant, CallHandle)>,
    transmits: VecDeque<Transmit>,
    /// RTP packet buffers the runtime handed back after sending ([`Switchboard::recycle`]):
    /// the next packets are swapped into them, so sending allocates nothing per packet.
    spare: Vec<Vec<u8>>,
    events: VecDeque<(CallId, Event)>,
    /// Keys each call's media and SDP session id (ChaCha20, keyed by the seed given).
    rng: ChaCha20Rng,
}

impl<F: MediaFactory> std::fmt::Debug for Switchboard<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switchboard")
            .field("ua", &self.ua)
            .field("calls", &self.calls.len())
            .finish()
    }
}

impl<F: MediaFactory> Switchboard<F> {
    /// A switchboard over a new user agent. `seed` keys every identifier and media value the
    /// calls show the network (ChaCha20): 32 bytes from the OS in production.
    pub fn new(config: sip::Config, seed: [u8; 32], factory: F) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let ua_seed = next_seed(&mut rng);
        Self {
            ua: UserAgent::new(config, ua_seed),
            factory,
            calls: BTreeMap::new(),
            touched: Vec::new(),
            deadlines: BTreeSet::new(),
            transmits: VecDeque::new(),
            spare: Vec::new(),
            events: VecDeque::new(),
            rng,
        }
    }

    /// Calls not yet finished.
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Replaces the SIP addresses trusted outside any call (the trunk, resolved again).
    pub fn set_trusted_peers(&mut self, peers: Vec<SocketAddr>) {
        self.ua.set_trusted_peers(peers);
    }

    /// The media factory (e.g. to reload prompts).
    pub fn factory_mut(&mut self) -> &mut F {
        &mut self.factory
    }

    /// Places a call: the INVITE goes out at once.
    pub fn place(&mut self, now: Instant, spec: CallSpec) -> Result<CallId, SpecError> {
        let expect = Expect::new(spec.validate()?, &spec.rules.fraud_code);
        // Keys go into the offer only over TLS (SDES over clear SIP protects nothing);
        // `require` without TLS never gets here (`validate`).
        let srtp = spec
            .srtp
            .filter(|_| spec.transport == Transport::Tls)
            .map(crate::srtp::Offered::new);
        let mut media = sip::sdp::LocalMedia::new(spec.local_rtp, self.rng.next_u64() >> 1);
        media.sdes = srtp.as_ref().map(|s| s.sdes.clone());
        let handle = self.ua.call(
            now,
            OutgoingCall {
                target: spec.target,
                from: spec.from,
                display_name: spec.display_name,
                next_hop: spec.next_hop,
                peers: spec.peers,
                alternates: spec.alternates,
                transport: spec.transport,
                media,
                credentials: spec.credentials,
            },
        );
        let core = Core::new(CoreInit {
            sip: handle,
            started: now,
            mode: spec.mode,
            expect,
            rules: spec.rules,
            extension: spec.extension,
            language: spec.language,
            seed: next_seed(&mut self.rng),
            srtp,
        });
        let stage = Stage::dialing(&core);
        self.touched.push(handle);
        self.calls.insert(
            handle,
            Entry {
                core,
                stage: Some(stage),
                deadline: None,
            },
        );
        self.pump(now);
        Ok(CallId(handle))
    }

    /// Hangs up a call for the API (`cancelled`, unless already decided).
    pub fn cancel(&mut self, now: Instant, call: CallId) {
        self.feed(now, call.0, Input::Cancel);
        self.pump(now);
    }

    /// One SIP message from the network (a UDP datagram, or one framed stream message).
    pub fn handle_sip(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), sip::InputError> {
        let r = self.ua.handle_input(now, transport, source, bytes);
        self.pump(now);
        r
    }

    /// One datagram on a call's RTP socket.
    pub fn handle_rtp(&mut self, now: Instant, call: CallId, source: SocketAddr, bytes: &[u8]) {
        self.feed(now, call.0, Input::Datagram(source, bytes));
        self.pump(now);
    }

    /// The runtime could not deliver SIP for this call (connection refused, TLS failure, …).
    pub fn handle_transport_error(&mut self, now: Instant, call: CallHandle) {
        self.ua.handle_transport_error(now, call);
        self.pump(now);
    }

    /// Advances every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ua.poll_timeout().is_some_and(|t| t <= now) {
            self.ua.handle_timeout(now);
        }
        while let Some(&(t, h)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(entry) = self.calls.get_mut(&h) {
                entry.deadline = None;
            }
            self.feed(now, h, Input::Timeout);
        }
        self.pump(now);
    }

    /// When `handle_timeout` must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.deadlines.first().map(|(t, _)| *t);
        match (calls, self.ua.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Hands back the payload of a [`Transmit::Rtp`] once it is sent, for a later packet
    /// (kept up to [`SPARE_PACKETS`] buffers, see [`media::keep_packet_buffer`]).
    pub fn recycle(&mut self, payload: Vec<u8>) {
        media::keep_packet_buffer(&mut self.spare, payload, SPARE_PACKETS);
    }

    /// The next event of some call.
    pub fn poll_event(&mut self) -> Option<(CallId, Event)> {
        self.events.pop_front()
    }

    fn feed(&mut self, now: Instant, handle: CallHandle, input: Input<'_>) {
        let Some(entry) = self.calls.get_mut(&handle) else {
            return;
        };
        self.touched.push(handle);
        let Some(stage) = entry.stage.take() else {
            return;
        };
        let mut cx = Cx {
            ua: &mut self.ua,
            factory: &mut self.factory,
        };
        let stage = stage.handle(&mut entry.core, &mut cx, now, input);
        let stage = stage.pump_media(&mut entry.core, &mut cx, now);
        entry.stage = Some(stage);
    }

    /// Moves everything the user agent and the media sessions produced into the queues,
    /// feeding SIP events to their calls, until nothing moves.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            while let Some(t) = self.ua.poll_transmit() {
                self.transmits.push_back(Transmit::Sip(t));
                moved = true;
            }
            while let Some(e) = self.ua.poll_event() {
                let h = e.call();
                self.feed(now, h, Input::Sip(Box::new(e)));
                moved = true;
            }
            let mut finished = Vec::new();
            // A Vec kept between pumps, not a set: no allocation per packet. Nothing below
            // feeds a call, so `self.touched` stays empty until it is put back.
            let mut touched = std::mem::take(&mut self.touched);
            touched.sort_unstable();
            touched.dedup();
            for &h in &touched {
                let Some(entry) = self.calls.get_mut(&h) else {
                    continue;
                };
                if let Some(media) = entry.stage.as_mut().and_then(|s| s.media_mut()) {
                    let mut packet = self.spare.pop().unwrap_or_default();
                    while let Some(destination) = media.poll_transmit(&mut packet) {
                        self.transmits.push_back(Transmit::Rtp {
                            call: CallId(h),
                            destination,
                            payload: packet,
                        });
                        packet = self.spare.pop().unwrap_or_default();
                    }
                    media::keep_packet_buffer(&mut self.spare, packet, SPARE_PACKETS);
                }
                while let Some(e) = entry.core.events.pop_front() {
                    self.events.push_back((CallId(h), e));
                }
                let finished_now = entry.stage.as_ref().is_none_or(|s| s.is_finished());
                let due = if finished_now {
                    None
                } else {
                    entry
                        .stage
                        .as_ref()
                        .and_then(|s| s.poll_timeout(&entry.core))
                };
                if due != entry.deadline {
                    if let Some(old) = entry.deadline {
                        self.deadlines.remove(&(old, h));
                    }
                    if let Some(new) = due {
                        self.deadlines.insert((new, h));
                    }
                    entry.deadline = due;
                }
                if finished_now {
                    finished.push(h);
                }
            }
            touched.clear();
            self.touched = touched;
            for h in finished {
                self.calls.remove(&h);
            }
            if !moved {
                return;
            }
        }
    }
}
