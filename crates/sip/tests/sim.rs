//! Two user agents of this crate wired together in memory on a simulated clock, with seeded
//! loss, duplication and reordering (STYLE.md 5). Every test runs in microseconds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip::auth::{Algorithm, Credentials};
use sip::message::{HeaderAccess, Limits, Message, Request};
use sip::redact::Secret;
use sip::sdp::{Codec, LocalMedia};
use sip::{
    AuthFailure, CallHandle, Config, EndReason, Event, Failure, InputError, OutgoingCall, Transmit,
    Transport, Uri, UserAgent,
};

const A: &str = "127.0.0.1:5060";
const B: &str = "127.0.0.1:5070";
/// Someone else on the network, who may have seen every packet between A and B.
const STRANGER: &str = "127.0.0.1:5099";

/// splitmix64: tiny seeded PRNG for the network impairments.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

#[derive(Default, Clone, Copy)]
struct Impairment {
    loss: u64,
    dup: u64,
    /// Extra random delay up to this many ms (reorders packets).
    jitter_ms: u64,
}

/// Sees each A→B transmit, may queue replies to A; returns false to drop the transmit.
type Interceptor = Box<dyn FnMut(&mut Vec<(SocketAddr, Vec<u8>)>, &Transmit) -> bool>;

struct Sim {
    t0: Instant,
    now: Instant,
    a: UserAgent,
    b: UserAgent,
    prng: Prng,
    net: Impairment,
    /// In flight: (deliver at, source, transmit).
    flight: Vec<(Instant, SocketAddr, Transmit)>,
    /// Everything ever sent: (time, from, payload).
    log: Vec<(Duration, SocketAddr, Vec<u8>)>,
    ev_a: Vec<Event>,
    ev_b: Vec<Event>,
    /// Drop everything sent to this address.
    blackhole: Option<SocketAddr>,
    /// Optional interceptor of A→B traffic: returns false to drop.
    intercept: Option<Interceptor>,
    transport: Transport,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A fixed 32-byte generator seed from a test number.
fn seed32(n: u64) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    seed
}

impl Sim {
    fn new(seed: u64, net: Impairment) -> Self {
        let t0 = Instant::now();
        let mut cb = Config::new(addr(B));
        cb.accept_incoming = true;
        Self {
            t0,
            now: t0,
            a: UserAgent::new(Config::new(addr(A)), seed32(seed)),
            b: UserAgent::new(cb, seed32(seed ^ 0xB)),
            prng: Prng(seed),
            net,
            flight: Vec::new(),
            log: Vec::new(),
            ev_a: Vec::new(),
            ev_b: Vec::new(),
            blackhole: None,
            intercept: None,
            transport: Transport::Udp,
        }
    }

    fn outgoing(&self, credentials: Option<Credentials>) -> OutgoingCall {
        OutgoingCall {
            target: Uri::parse("sip:+14255550123@127.0.0.1:5070").unwrap(),
            from: Uri::parse("sip:+14255550100@127.0.0.1").unwrap(),
            display_name: Some("Verifier".into()),
            next_hop: addr(B),
            peers: Vec::new(),
            alternates: Vec::new(),
            transport: self.transport,
            media: LocalMedia::new(addr("127.0.0.1:27000"), 7),
            credentials,
        }
    }

    fn call(&mut self) -> CallHandle {
        let o = self.outgoing(None);
        self.a.call(self.now, o)
    }

    fn collect(&mut self) {
        let mut injected = Vec::new();
        for (from, ua) in [(addr(A), 0), (addr(B), 1)] {
            loop {
                let t = if ua == 0 {
                    self.a.poll_transmit()
                } else {
                    self.b.poll_transmit()
                };
                let Some(t) = t else { break };
                self.log.push((self.now - self.t0, from, t.payload.clone()));
                if ua == 0
                    && let Some(f) = self.intercept.as_mut()
                    && !f(&mut injected, &t)
                {
                    continue;
                }
                if Some(t.destination) == self.blackhole || self.prng.chance(self.net.loss) {
                    continue;
                }
                let copies = if self.prng.chance(self.net.dup) { 2 } else { 1 };
                for _ in 0..copies {
                    let jitter = if self.net.jitter_ms > 0 {
                        self.prng.next() % self.net.jitter_ms
                    } else {
                        0
                    };
                    let at = self.now + Duration::from_millis(5 + jitter);
                    self.flight.push((at, from, t.clone()));
                }
            }
        }
        // Messages the interceptor sends back to A (e.g. a challenging proxy).
        for (dest, payload) in injected {
            let t = Transmit {
                call: None,
                transport: self.transport,
                destination: dest,
                payload,
            };
            self.flight
                .push((self.now + Duration::from_millis(5), addr(B), t));
        }
        while let Some(e) = self.a.poll_event() {
            self.ev_a.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.ev_b.push(e);
        }
    }

    /// Advances to the next delivery or timer, at most to `limit`. Returns false if idle.
    fn step(&mut self, limit: Instant) -> bool {
        self.collect();
        let next_flight = self.flight.iter().map(|f| f.0).min();
        let next = [next_flight, self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { return false };
        if next > limit {
            self.now = limit;
            return false;
        }
        self.now = self.now.max(next);
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) = self.flight.drain(..).partition(|f| f.0 <= now);
        self.flight = rest;
        for (_, from, t) in due {
            let ua = if t.destination == addr(A) {
                &mut self.a
            } else {
                &mut self.b
            };
            let _ = ua.handle_input(now, t.transport, from, &t.payload);
        }
        self.a.handle_timeout(now);
        self.b.handle_timeout(now);
        self.collect();
        true
    }

    fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        while self.step(limit) {}
        self.now = limit;
    }

    /// Runs until `cond` holds (checked after each step) or `d` passes.
    fn run_until(&mut self, d: Duration, mut cond: impl FnMut(&Sim) -> bool) -> bool {
        let limit = self.now + d;
        loop {
            if cond(self) {
                return true;
            }
            if !self.step(limit) {
                return cond(self);
            }
        }
    }

    fn incoming(&self) -> Option<CallHandle> {
        self.ev_b.iter().find_map(|e| match e {
            Event::Incoming { call, .. } => Some(*call),
            _ => None,
        })
    }

    fn terminated(events: &[Event], call: CallHandle) -> Option<EndReason> {
        events.iter().find_map(|e| match e {
            Event::Terminated { call: c, reason } if *c == call => Some(reason.clone()),
            _ => None,
        })
    }

    fn sent(&self, from: &str, start: &str) -> Vec<(Duration, String)> {
        self.log
            .iter()
            .filter(|(_, f, p)| *f == addr(from) && p.starts_with(start.as_bytes()))
            .map(|(t, _, p)| (*t, String::from_utf8_lossy(p).into_owned()))
            .collect()
    }

    /// Callee answers as soon as the INVITE arrives (180 then 200).
    fn answer_when_incoming(&mut self) -> CallHandle {
        assert!(
            self.run_until(Duration::from_secs(60), |s| s.incoming().is_some()),
            "no INVITE arrived"
        );
        let cb = self.incoming().unwrap();
        self.b.ringing(self.now, cb).unwrap();
        let media = LocalMedia::new(addr("127.0.0.1:26000"), 9);
        self.b.answer_with(self.now, cb, media).unwrap();
        cb
    }
}

fn answered(events: &[Event]) -> Option<&Event> {
    events.iter().find(|e| matches!(e, Event::Answered { .. }))
}

#[test]
fn call_answered_then_caller_hangs_up() {
    let mut s = Sim::new(1, Impairment::default());
    let ca = s.call();
    let cb = s.answer_when_incoming();
    assert!(s.run_until(Duration::from_secs(5), |s| answered(&s.ev_a).is_some()));
    let Some(Event::Answered { media, dialog, .. }) = answered(&s.ev_a) else {
        unreachable!()
    };
    let media = media.as_ref().unwrap();
    assert_eq!(media.codec, Codec::Pcmu);
    assert_eq!(media.telephone_event_pt, Some(101));
    assert_eq!(media.remote, Some(addr("127.0.0.1:26000")));
    assert_eq!(dialog.remote_target.as_str(), "sip:127.0.0.1:5070");
    assert!(
        s.ev_a
            .iter()
            .any(|e| matches!(e, Event::Progress { status: 180, .. }))
    );
    s.run_for(Duration::from_millis(100));
    assert!(s.ev_b.iter().any(|e| matches!(e, Event::Confirmed { .. })));
    s.a.hangup(s.now, ca).unwrap();
    s.run_for(Duration::from_secs(1));
    assert_eq!(Sim::terminated(&s.ev_a, ca), Some(EndReason::LocalHangup));
    assert_eq!(Sim::terminated(&s.ev_b, cb), Some(EndReason::RemoteHangup));
    assert!(
        s.ev_b
            .iter()
            .any(|e| matches!(e, Event::RemoteHangup { .. }))
    );
    // Ended calls linger 64·T1 for retransmissions, then are forgotten.
    s.run_for(Duration::from_secs(40));
    assert_eq!((s.a.call_count(), s.b.call_count()), (0, 0));
    assert_eq!(s.a.poll_timeout(), None);
}

#[test]
fn info_dtmf_from_callee_and_bye_from_callee() {
    let mut s = Sim::new(2, Impairment::default());
    let ca = s.call();
    let cb = s.answer_when_incoming();
    s.run_for(Duration::from_millis(200));
    s.b.send_dtmf_info(s.now, cb, '#', Duration::from_millis(250))
        .unwrap();
    s.run_for(Duration::from_millis(200));
    assert!(s.ev_a.iter().any(|e| matches!(e, Event::Dtmf { info, .. } if info.key == '#' && info.duration == Some(Duration::from_millis(250)))));
    assert!(s.ev_b.iter().any(|e| matches!(
        e,
        Event::InfoResponse {
            result: Ok(200),
            ..
        }
    )));
    // And the other way round.
    s.a.send_dtmf_info(s.now, ca, '5', Duration::from_millis(100))
        .unwrap();
    s.run_for(Duration::from_millis(200));
    assert!(
        s.ev_b
            .iter()
            .any(|e| matches!(e, Event::Dtmf { info, .. } if info.key == '5'))
    );
    s.b.hangup(s.now, cb).unwrap();
    s.run_for(Duration::from_secs(1));
    assert_eq!(Sim::terminated(&s.ev_a, ca), Some(EndReason::RemoteHangup));
    assert_eq!(Sim::terminated(&s.ev_b, cb), Some(EndReason::LocalHangup));
}

#[test]
fn completes_under_loss_duplication_and_reordering() {
    for seed in 0..40 {
        let mut s = Sim::new(
            seed,
            Impairment {
                loss: 200,
                dup: 100,
                jitter_ms: 40,
            },
        );
        let ca = s.call();
        let cb = s.answer_when_incoming();
        assert!(
            s.run_until(Duration::from_secs(30), |s| answered(&s.ev_a).is_some()),
            "seed {seed}: not answered"
        );
        s.run_until(Duration::from_secs(30), |s| {
            s.ev_b.iter().any(|e| matches!(e, Event::Confirmed { .. }))
        });
        s.b.send_dtmf_info(s.now, cb, '#', Duration::from_millis(250))
            .ok();
        s.run_for(Duration::from_secs(20));
        s.a.hangup(s.now, ca).unwrap();
        s.run_for(Duration::from_secs(40));
        assert_eq!(
            Sim::terminated(&s.ev_a, ca),
            Some(EndReason::LocalHangup),
            "seed {seed}"
        );
        let b_end = Sim::terminated(&s.ev_b, cb);
        assert!(
            matches!(b_end, Some(EndReason::RemoteHangup)),
            "seed {seed}: {b_end:?}"
        );
        // Exactly one of each, despite duplicates.
        assert_eq!(
            s.ev_a
                .iter()
                .filter(|e| matches!(e, Event::Answered { .. }))
                .count(),
            1,
            "seed {seed}"
        );
        assert!(
            s.ev_a
                .iter()
                .filter(|e| matches!(e, Event::Dtmf { .. }))
                .count()
                <= 1,
            "seed {seed}"
        );
    }
}

#[test]
fn busy_is_a_rejection_and_the_486_is_acked() {
    let mut s = Sim::new(3, Impairment::default());
    let ca = s.call();
    assert!(s.run_until(Duration::from_secs(1), |s| s.incoming().is_some()));
    let cb = s.incoming().unwrap();
    s.b.reject(s.now, cb, 486).unwrap();
    s.run_for(Duration::from_secs(1));
    assert!(s.ev_a.contains(&Event::Failed {
        call: ca,
        failure: Failure::Rejected { status: 486 }
    }));
    assert_eq!(
        Sim::terminated(&s.ev_a, ca),
        Some(EndReason::Failed(Failure::Rejected { status: 486 }))
    );
    assert_eq!(
        Sim::terminated(&s.ev_b, cb),
        Some(EndReason::LocalReject { status: 486 })
    );
    assert_eq!(s.sent(A, "ACK ").len(), 1);
    // No 486 retransmissions once the ACK arrived (Timer G stopped).
    s.run_for(Duration::from_secs(10));
    assert_eq!(s.sent(B, "SIP/2.0 486").len(), 1);
}

#[test]
fn timer_b_gives_a_distinct_timeout() {
    let mut s = Sim::new(4, Impairment::default());
    s.blackhole = Some(addr(B));
    let ca = s.call();
    s.run_for(Duration::from_secs(40));
    let invites: Vec<u128> = s
        .sent(A, "INVITE ")
        .iter()
        .map(|(t, _)| t.as_millis())
        .collect();
    assert_eq!(
        invites,
        vec![0, 500, 1500, 3500, 7500, 15500, 31500],
        "Timer A doubles"
    );
    assert!(s.ev_a.contains(&Event::Failed {
        call: ca,
        failure: Failure::Timeout
    }));
    assert_eq!(
        Sim::terminated(&s.ev_a, ca),
        Some(EndReason::Failed(Failure::Timeout))
    );
}

#[test]
fn reliable_transport_sends_once() {
    let mut s = Sim::new(5, Impairment::default());
    s.transport = Transport::Tcp;
    s.blackhole = Some(addr(B));
    let ca = s.call();
    s.run_for(Duration::from_secs(40));
    assert_eq!(s.sent(A, "INVITE ").len(), 1);
    assert_eq!(
        Sim::terminated(&s.ev_a, ca),
        Some(EndReason::Failed(Failure::Timeout))
    );
    assert!(s.sent(A, "INVITE ")[0].1.contains("Via: SIP/2.0/TCP "));
}

#[test]
fn cancel_while_ringing_gets_487() {
    let mut s = Sim::new(6, Impairment::default());
    let ca = s.call();
    assert!(s.run_until(Duration::from_secs(1), |s| s.incoming().is_some()));
    let cb = s.incoming().unwrap();
    s.b.ringing(s.now, cb).unwrap();
    assert!(s.run_until(Duration::from_secs(1), |s| {
        s.ev_a
            .iter()
            .any(|e| matches!(e, Event::Progress { status: 180, .. }))
    }));
    s.a.hangup(s.now, ca).unwrap();
    s.run_for(Duration::from_secs(1));
    assert_eq!(Sim::terminated(&s.ev_a, ca), Some(EndReason::Cancelled));
    assert_eq!(Sim::terminated(&s.ev_b, cb), Some(EndReason::Cancelled));
    assert_eq!(s.sent(B, "SIP/2.0 487").len(), 1);
    let cancel = &s.sent(A, "CANCEL ")[0].1;
    assert!(cancel.contains("CSeq: 1 CANCEL\r\n"));
    // The ACK for the 487 is hop-by-hop, inside the INVITE transaction.
    assert!(s.sent(A, "ACK ")[0].1.contains("CSeq: 1 ACK\r\n"));
    assert!(
        s.b.answer(s.now, cb).is_err(),
        "cannot answer a cancelled call"
    );
}

#[test]
fn cancel_waits_for_a_provisional() {
    let mut s = Sim::new(7, Impairment::default());
    s.blackhole = Some(addr(A)); // B's 100 Trying never arrives
    let ca = s.call();
    s.a.hangup(s.now, ca).unwrap();
    s.run_for(Duration::from_secs(2));
    assert!(
        s.sent(A, "CANCEL ").is_empty(),
        "RFC 3261 §9.1: no CANCEL before a provisional"
    );
    s.blackhole = None;
    s.run_for(Duration::from_secs(40));
    // INVITE retransmission made B resend 100; then CANCEL went out and 487 ended it.
    assert_eq!(s.sent(A, "CANCEL ").len(), 1);
    assert_eq!(Sim::terminated(&s.ev_a, ca), Some(EndReason::Cancelled));
}

#[test]
fn answer_racing_cancel_is_acked_and_hung_up() {
    let mut s = Sim::new(8, Impairment::default());
    let ca = s.call();
    assert!(s.run_until(Duration::from_secs(1), |s| s.incoming().is_some()));
    let cb = s.incoming().unwrap();
    s.b.ringing(s.now, cb).unwrap();
    assert!(s.run_until(Duration::from_secs(1), |s| {
        s.ev_a
            .iter()
            .any(|e| matches!(e, Event::Progress { status: 180, .. }))
    }));
    // Both act at the same instant: B's 200 and A's CANCEL cross on the wire.
    s.b.answer(s.now, cb).unwrap();
    s.a.hangup(s.now, ca).unwrap();
    s.run_for(Duration::from_secs(2));
    assert!(
        answered(&s.ev_a).is_none(),
        "the flow cancelled; no Answered event"
    );
    assert_eq!(s.sent(A, "ACK ").len(), 1);
    assert_eq!(s.sent(A, "BYE ").len(), 1);
    assert_eq!(
        s.sent(B, "SIP/2.0 487").len(),
        0,
        "INVITE already answered: CANCEL gets 200 only"
    );
    assert_eq!(Sim::terminated(&s.ev_a, ca), Some(EndReason::Cancelled));
    assert_eq!(Sim::terminated(&s.ev_b, cb), Some(EndReason::RemoteHangup));
}

#[test]
fn second_fork_2xx_is_acked_and_hung_up() {
    let mut s = Sim::new(9, Impairment::default());
    let ca = s.call();
    let _cb = s.answer_when_incoming();
    assert!(s.run_until(Duration::from_secs(1), |s| answered(&s.ev_a).is_some()));
    // A forking proxy would deliver another branch's 200 with a different To-tag.
    let (_, ok) = s
        .sent(B, "SIP/2.0 200")
        .into_iter()
        .find(|(_, m)| m.contains("INVITE\r\n"))
        .unwrap();
    let Message::Response(r) = Message::parse(ok.as_bytes(), &Limits::default()).unwrap() else {
        panic!()
    };
    let tag = r.header_to().unwrap().tag().unwrap().to_string();
    let fork = ok.replace(&tag, "forktag2");
    s.a.handle_input(s.now, Transport::Udp, addr(B), fork.as_bytes())
        .unwrap();
    s.run_for(Duration::from_secs(1));
    let acks = s.sent(A, "ACK ");
    assert_eq!(acks.len(), 2);
    assert!(acks[1].1.contains("tag=forktag2"));
    let byes = s.sent(A, "BYE ");
    assert_eq!(byes.len(), 1);
    assert!(byes[0].1.contains("tag=forktag2"));
    assert_eq!(
        s.ev_a
            .iter()
            .filter(|e| matches!(e, Event::Answered { .. }))
            .count(),
        1,
        "first 2xx wins"
    );
    assert_eq!(
        Sim::terminated(&s.ev_a, ca),
        None,
        "the winning dialog stays up"
    );
    // A retransmitted 2xx of the winner is ACKed again, not re-announced.
    s.a.handle_input(s.now, Transport::Udp, addr(B), ok.as_bytes())
        .unwrap();
    s.run_for(Duration::from_millis(100));
    assert_eq!(s.sent(A, "ACK ").len(), 3);
}

#[test]
fn callee_retransmits_2xx_until_ack_then_gives_up_with_bye() {
    let mut s = Sim::new(10, Impairment::default());
    // Drop every ACK from A.
    s.intercept = Some(Box::new(|_, t| !t.payload.starts_with(b"ACK ")));
    let _ca = s.call();
    let cb = s.answer_when_incoming();
    let answered_at = s.now - s.t0;
    s.run_for(Duration::from_secs(40));
    let oks: Vec<u128> = s
        .sent(B, "SIP/2.0 200")
        .iter()
        .filter(|(_, m)| m.contains(" INVITE\r\n"))
        .map(|(t, _)| (*t - answered_at).as_millis())
        .collect();
    // T1, doubling, capped at T2 = 4 s, until 64·T1 = 32 s.
    assert_eq!(
        oks,
        vec![
            0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert_eq!(Sim::terminated(&s.ev_b, cb), Some(EndReason::AckTimeout));
    assert_eq!(s.sent(B, "BYE ").len(), 1);
}

fn challenge_407(invite: &str, challenges: &[&str]) -> Vec<u8> {
    let Message::Request(r) = Message::parse(invite.as_bytes(), &Limits::default()).unwrap() else {
        panic!()
    };
    let mut resp = sip::message::Response::new(407);
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        let v = r.headers.get(name).unwrap().to_string();
        let v = if name == "To" {
            format!("{v};tag=proxy1")
        } else {
            v
        };
        resp.headers.push(name, v);
    }
    for c in challenges {
        resp.headers.push("Proxy-Authenticate", *c);
    }
    resp.to_bytes()
}

fn creds(password: &str) -> Credentials {
    Credentials {
        username: "verifier".into(),
        password: Secret::new(password),
    }
}

/// A proxy stand-in challenges the first `rounds` INVITEs with `challenges`.
fn challenging_sim(
    seed: u64,
    challenges: Vec<String>,
    rounds: usize,
    password: &str,
) -> (Sim, CallHandle) {
    let mut s = Sim::new(seed, Impairment::default());
    let mut seen = 0;
    s.intercept = Some(Box::new(move |back, t| {
        if t.payload.starts_with(b"INVITE ") && seen < rounds {
            seen += 1;
            let refs: Vec<&str> = challenges.iter().map(String::as_str).collect();
            back.push((
                addr(A),
                challenge_407(&String::from_utf8_lossy(&t.payload), &refs),
            ));
            return false;
        }
        !(t.payload.starts_with(b"ACK ")
            && String::from_utf8_lossy(&t.payload).contains("tag=proxy1"))
    }));
    let o = s.outgoing(Some(creds(password)));
    let ca = s.a.call(s.now, o);
    (s, ca)
}

#[test]
fn digest_prefers_sha256_and_uses_the_request_uri() {
    let ch = vec![
        "Digest realm=\"test.invalid\", nonce=\"n1\", qop=\"auth\", algorithm=MD5".to_string(),
        "Digest realm=\"test.invalid\", nonce=\"n1\", qop=\"auth\", algorithm=SHA-256".to_string(),
    ];
    let (mut s, ca) = challenging_sim(11, ch, 1, "s3cret");
    let _cb = s.answer_when_incoming();
    assert!(s.run_until(Duration::from_secs(2), |s| answered(&s.ev_a).is_some()));
    assert!(s.ev_a.iter().any(|e| matches!(
        e,
        Event::Authenticating {
            status: 407,
            algorithm: Algorithm::Sha256,
            ..
        }
    )));
    let invites = s.sent(A, "INVITE ");
    assert_eq!(invites.len(), 2);
    let second = &invites[1].1;
    assert!(second.contains("CSeq: 2 INVITE\r\n"));
    assert!(
        second.contains("uri=\"sip:+14255550123@127.0.0.1:5070\""),
        "digest uri is the exact Request-URI"
    );
    assert!(second.contains("algorithm=SHA-256") && second.contains("nc=00000001"));
    // The ACK for the 2xx carries the same credentials (§13.2.2.4); the call works.
    let ack = s
        .sent(A, "ACK ")
        .into_iter()
        .find(|(_, m)| m.contains("CSeq: 2 ACK"))
        .unwrap();
    assert!(ack.1.contains("Proxy-Authorization: Digest"));
    s.a.hangup(s.now, ca).unwrap();
    s.run_for(Duration::from_secs(1));
    assert_eq!(Sim::terminated(&s.ev_a, ca), Some(EndReason::LocalHangup));
}

#[test]
fn digest_wrong_password_is_a_config_failure() {
    let ch = vec!["Digest realm=\"r\", nonce=\"n1\", qop=\"auth\"".to_string()];
    let (mut s, ca) = challenging_sim(12, ch, 5, "wrong");
    s.run_for(Duration::from_secs(2));
    let expected = Failure::Auth {
        status: 407,
        error: AuthFailure::CredentialsRejected,
    };
    assert_eq!(
        Sim::terminated(&s.ev_a, ca),
        Some(EndReason::Failed(expected))
    );
    assert_eq!(s.sent(A, "INVITE ").len(), 2);
}

#[test]
fn digest_stale_nonce_retries_then_succeeds() {
    let ch = vec!["Digest realm=\"r\", nonce=\"n2\", algorithm=MD5-sess, qop=\"auth\", stale=true, opaque=\"op\"".to_string()];
    let (mut s, ca) = challenging_sim(13, ch, 2, "s3cret");
    let _cb = s.answer_when_incoming();
    assert!(s.run_until(Duration::from_secs(2), |s| answered(&s.ev_a).is_some()));
    let invites = s.sent(A, "INVITE ");
    assert_eq!(invites.len(), 3);
    assert!(
        invites[2].1.contains("nc=00000002"),
        "same nonce, next count"
    );
    assert!(invites[2].1.contains("opaque=\"op\"") && invites[2].1.contains("algorithm=MD5-sess"));
    assert!(Sim::terminated(&s.ev_a, ca).is_none());
}

#[test]
fn digest_without_credentials_or_support_fails_typed() {
    let mut s = Sim::new(14, Impairment::default());
    s.intercept = Some(Box::new(|back, t| {
        if t.payload.starts_with(b"INVITE ") {
            back.push((
                addr(A),
                challenge_407(
                    &String::from_utf8_lossy(&t.payload),
                    &["Digest realm=\"r\", nonce=\"n\", algorithm=SHA-1"],
                ),
            ));
        }
        false
    }));
    let o = s.outgoing(Some(creds("x")));
    let ca = s.a.call(s.now, o);
    s.run_for(Duration::from_secs(1));
    assert!(matches!(
        Sim::terminated(&s.ev_a, ca),
        Some(EndReason::Failed(Failure::Auth {
            error: AuthFailure::Unanswerable(sip::auth::AuthError::UnsupportedAlgorithm),
            ..
        }))
    ));
}

#[test]
fn re_invite_hold_is_answered_and_2xx_retransmitted_until_ack() {
    let mut s = Sim::new(15, Impairment::default());
    let ca = s.call();
    let _cb = s.answer_when_incoming();
    assert!(s.run_until(Duration::from_secs(1), |s| answered(&s.ev_a).is_some()));
    s.run_for(Duration::from_millis(100));
    // Build a re-INVITE from B's side of the dialog, putting A on hold.
    let ack = s.sent(A, "ACK ")[0].1.clone();
    let Message::Request(ack) = Message::parse(ack.as_bytes(), &Limits::default()).unwrap() else {
        panic!()
    };
    let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 26000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n";
    let reinvite = format!(
        "INVITE sip:+14255550100@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKre1\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 5 INVITE\r\nContact: <sip:127.0.0.1:5070>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        ack.headers.get("To").unwrap(),
        ack.headers.get("From").unwrap(),
        ack.call_id().unwrap(),
        sdp.len()
    );
    let t = s.now;
    s.a.handle_input(t, Transport::Udp, addr(B), reinvite.as_bytes())
        .unwrap();
    s.run_for(Duration::from_secs(2));
    let oks: Vec<_> = s
        .sent(A, "SIP/2.0 200")
        .into_iter()
        .filter(|(_, m)| m.contains("5 INVITE"))
        .collect();
    assert_eq!(oks.len(), 3, "200 at 0, 0.5, 1.5 s while no ACK");
    assert!(oks[0].1.contains("a=recvonly") && oks[0].1.contains("RTP/AVP 8 101"));
    assert!(s.ev_a.iter().any(|e| matches!(e, Event::MediaChanged { call, media } if *call == ca && media.on_hold() && media.codec == Codec::Pcma)));
    let ack2 = reinvite
        .replace("INVITE sip", "ACK sip")
        .replace("5 INVITE", "5 ACK")
        .replace("z9hG4bKre1", "z9hG4bKre2");
    let ack2 = ack2.split("Content-Type").next().unwrap().to_string() + "Content-Length: 0\r\n\r\n";
    let t = s.now;
    s.a.handle_input(t, Transport::Udp, addr(B), ack2.as_bytes())
        .unwrap();
    s.run_for(Duration::from_secs(10));
    let after: Vec<_> = s
        .sent(A, "SIP/2.0 200")
        .into_iter()
        .filter(|(_, m)| m.contains("5 INVITE"))
        .collect();
    assert_eq!(after.len(), 3, "ACK stopped the retransmissions");
    // A lower CSeq afterwards is refused with 500 (§12.2.2).
    let old = reinvite
        .replace("CSeq: 5 INVITE", "CSeq: 4 INVITE")
        .replace("z9hG4bKre1", "z9hG4bKre3");
    assert_eq!(
        s.a.handle_input(s.now, Transport::Udp, addr(B), old.as_bytes()),
        Err(InputError::CseqOrder)
    );
    s.run_for(Duration::from_millis(10));
    assert_eq!(s.sent(A, "SIP/2.0 500").len(), 1);
}

#[test]
fn stray_requests_from_a_trusted_peer_get_one_stateless_answer() {
    let mut s = Sim::new(16, Impairment::default());
    let mut trusting = Config::new(addr(A));
    trusting.trusted_peers = vec![addr(B)];
    s.a = UserAgent::new(trusting, seed32(16));
    let opt = "OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKo1\r\nFrom: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    s.a.handle_input(s.now, Transport::Udp, addr(B), opt.as_bytes())
        .unwrap();
    let bye = opt
        .replace("OPTIONS", "BYE")
        .replace("<sip:127.0.0.1>", "<sip:127.0.0.1>;tag=nope");
    assert_eq!(
        s.a.handle_input(s.now, Transport::Udp, addr(B), bye.as_bytes()),
        Err(InputError::NoTransaction)
    );
    let invite = opt
        .replace("OPTIONS", "INVITE")
        .replace("z9hG4bKo1", "z9hG4bKo2");
    s.a.handle_input(s.now, Transport::Udp, addr(B), invite.as_bytes())
        .unwrap();
    s.run_for(Duration::from_secs(40));
    assert_eq!(s.sent(A, "SIP/2.0 200").len(), 1);
    assert!(s.sent(A, "SIP/2.0 200")[0].1.contains("Allow: INVITE"));
    assert_eq!(s.sent(A, "SIP/2.0 481").len(), 1);
    let refusals = s.sent(A, "SIP/2.0 480");
    assert_eq!(
        refusals.len(),
        1,
        "unsolicited INVITE refused once, never retransmitted"
    );
    assert_eq!(s.a.server_transactions(), 0, "stateless: nothing kept");
    // The To-tag is 128 bits of ChaCha20, not a raw generator output of 64 bits.
    let Message::Response(r) =
        Message::parse(refusals[0].1.as_bytes(), &Limits::default()).unwrap()
    else {
        panic!()
    };
    let tag = r.header_to().unwrap().tag().unwrap().to_string();
    assert_eq!(tag.len(), 32, "{tag}");
    assert!(
        s.a.handle_input(s.now, Transport::Udp, addr(B), b"\x00\xffnot sip")
            .is_err()
    );
    let c = s.call();
    assert!(s.a.hangup(s.now, c).is_ok());
}

#[test]
fn strangers_get_nothing_and_cost_nothing() {
    let mut s = Sim::new(18, Impairment::default());
    let invite = "INVITE sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKx1\r\nFrom: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: x1\r\nCSeq: 1 INVITE\r\nContact: <sip:127.0.0.1:5099>\r\nContent-Length: 0\r\n\r\n";
    for i in 0..1000 {
        let m = invite.replace("z9hG4bKx1", &format!("z9hG4bKx{i}"));
        for method in ["INVITE", "OPTIONS", "BYE", "CANCEL"] {
            let m = m.replace("INVITE", method);
            assert_eq!(
                s.a.handle_input(s.now, Transport::Udp, addr(STRANGER), m.as_bytes()),
                Err(InputError::UntrustedSource)
            );
        }
    }
    s.run_for(Duration::from_secs(40));
    assert!(s.log.is_empty(), "not one packet back");
    assert_eq!(s.a.server_transactions(), 0);
    // Not even parsed: garbage from a stranger is the same drop.
    assert_eq!(
        s.a.handle_input(s.now, Transport::Udp, addr(STRANGER), b"\x00garbage"),
        Err(InputError::UntrustedSource)
    );
}

/// The INVITE A sent, parsed.
fn invite_of(s: &Sim) -> Request {
    let (_, invite) = s.sent(A, "INVITE ").pop().expect("an INVITE");
    let Message::Request(r) = Message::parse(invite.as_bytes(), &Limits::default()).unwrap() else {
        panic!()
    };
    r
}

/// A 200 OK for `invite` as an attacker would forge it: `branch` in the Via (None: the
/// INVITE's own), its own To-tag, and SDP pointing at its own RTP port.
fn forged_200(invite: &Request, branch: Option<&str>) -> Vec<u8> {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 26666 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    let mut r = sip::message::Response::new(200);
    let via = invite.headers.get("Via").unwrap().to_string();
    let via = match branch {
        Some(b) => {
            let old = invite.top_via().unwrap().branch().unwrap().to_string();
            via.replace(&old, b)
        }
        None => via,
    };
    r.headers.push("Via", via);
    r.headers.push("From", invite.headers.get("From").unwrap());
    r.headers.push(
        "To",
        format!("{};tag=evil", invite.headers.get("To").unwrap()),
    );
    r.headers.push("Call-ID", invite.call_id().unwrap());
    r.headers.push("CSeq", invite.headers.get("CSeq").unwrap());
    r.headers.push("Contact", format!("<sip:{STRANGER}>"));
    r.headers.push("Content-Type", "application/sdp");
    r.body = sdp.as_bytes().to_vec();
    r.to_bytes()
}

#[test]
fn a_forged_200_from_anywhere_but_the_next_hop_is_not_an_answer() {
    let mut s = Sim::new(19, Impairment::default());
    let ca = s.call();
    assert!(s.run_until(Duration::from_secs(1), |s| s.incoming().is_some()));
    let cb = s.incoming().unwrap();
    s.b.ringing(s.now, cb).unwrap();
    s.run_for(Duration::from_millis(100));
    let invite = invite_of(&s);
    let now = s.now;
    // The real branch, from the stranger's own port.
    assert_eq!(
        s.a.handle_input(
            now,
            Transport::Udp,
            addr(STRANGER),
            &forged_200(&invite, None)
        ),
        Err(InputError::UntrustedSource)
    );
    // A fresh branch and only the right Call-ID.
    assert_eq!(
        s.a.handle_input(
            now,
            Transport::Udp,
            addr(STRANGER),
            &forged_200(&invite, Some("z9hG4bKfresh"))
        ),
        Err(InputError::UntrustedSource)
    );
    // Even from the next hop's address (a spoofed source), over another transport.
    assert_eq!(
        s.a.handle_input(now, Transport::Tcp, addr(B), &forged_200(&invite, None)),
        Err(InputError::UntrustedSource)
    );
    // From the next hop with a fresh branch: no transaction, no dialog to re-ACK.
    assert_eq!(
        s.a.handle_input(
            now,
            Transport::Udp,
            addr(B),
            &forged_200(&invite, Some("z9hG4bKfresh"))
        ),
        Err(InputError::NoTransaction)
    );
    s.run_for(Duration::from_millis(100));
    assert!(answered(&s.ev_a).is_none(), "still ringing");
    assert!(s.sent(A, "ACK ").is_empty(), "nothing ACKed");
    // The real callee decides.
    s.b.answer_with(s.now, cb, LocalMedia::new(addr("127.0.0.1:26000"), 9))
        .unwrap();
    assert!(s.run_until(Duration::from_secs(1), |s| answered(&s.ev_a).is_some()));
    let Some(Event::Answered { media, .. }) = answered(&s.ev_a) else {
        unreachable!()
    };
    assert_eq!(
        media.as_ref().unwrap().remote,
        Some(addr("127.0.0.1:26000")),
        "media goes to the real callee"
    );
    assert!(Sim::terminated(&s.ev_a, ca).is_none());
}

/// An in-dialog request from B's side of the dialog (Call-ID and tags from A's ACK).
fn in_dialog(s: &Sim, method: &str, cseq: u32, extra: &str, body: &str) -> Vec<u8> {
    let ack = s.sent(A, "ACK ")[0].1.clone();
    let Message::Request(ack) = Message::parse(ack.as_bytes(), &Limits::default()).unwrap() else {
        panic!()
    };
    format!(
        "{method} sip:+14255550100@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{method}{cseq}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:{STRANGER}>\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        ack.headers.get("To").unwrap(),
        ack.headers.get("From").unwrap(),
        ack.call_id().unwrap(),
        body.len()
    )
    .into_bytes()
}

#[test]
fn in_dialog_requests_count_only_from_the_dialogs_peer_with_rising_cseq() {
    let mut s = Sim::new(20, Impairment::default());
    let ca = s.call();
    let cb = s.answer_when_incoming();
    assert!(s.run_until(Duration::from_secs(1), |s| answered(&s.ev_a).is_some()));
    s.run_for(Duration::from_millis(100));
    let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 26666 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    let forged = [
        in_dialog(&s, "BYE", 10, "", ""),
        in_dialog(&s, "INVITE", 11, "Content-Type: application/sdp\r\n", sdp),
        in_dialog(&s, "UPDATE", 12, "Content-Type: application/sdp\r\n", sdp),
        in_dialog(
            &s,
            "INFO",
            13,
            "Content-Type: application/dtmf-relay\r\n",
            "Signal=#\r\nDuration=250\r\n",
        ),
    ];
    let logged = s.log.len();
    for m in &forged {
        assert_eq!(
            s.a.handle_input(s.now, Transport::Udp, addr(STRANGER), m),
            Err(InputError::UntrustedSource)
        );
        // The peer's address over the wrong transport is no better.
        assert_eq!(
            s.a.handle_input(s.now, Transport::Tcp, addr(B), m),
            Err(InputError::UntrustedSource)
        );
    }
    s.run_for(Duration::from_millis(200));
    assert_eq!(s.log.len(), logged, "no answer to anyone");
    assert!(!s.ev_a.iter().any(|e| matches!(
        e,
        Event::RemoteHangup { .. } | Event::MediaChanged { .. } | Event::Dtmf { .. }
    )));
    assert!(Sim::terminated(&s.ev_a, ca).is_none());
    // The genuine peer's INFO counts.
    s.b.send_dtmf_info(s.now, cb, '5', Duration::from_millis(250))
        .unwrap();
    s.run_for(Duration::from_millis(100));
    assert_eq!(
        s.ev_a
            .iter()
            .filter(|e| matches!(e, Event::Dtmf { info, .. } if info.key == '5'))
            .count(),
        1
    );
    // Replayed from the right place (a new branch, the same CSeq): 500, no second key.
    let (_, info) = s.sent(B, "INFO ").pop().unwrap();
    let Message::Request(r) = Message::parse(info.as_bytes(), &Limits::default()).unwrap() else {
        panic!()
    };
    let branch = r.top_via().unwrap().branch().unwrap().to_string();
    let replay = info.replace(&branch, "z9hG4bKreplayed");
    assert_eq!(
        s.a.handle_input(s.now, Transport::Udp, addr(B), replay.as_bytes()),
        Err(InputError::CseqOrder)
    );
    s.run_for(Duration::from_millis(10));
    assert_eq!(s.sent(A, "SIP/2.0 500").len(), 1);
    assert_eq!(
        s.ev_a
            .iter()
            .filter(|e| matches!(e, Event::Dtmf { .. }))
            .count(),
        1
    );
    // The genuine BYE ends the call.
    s.b.hangup(s.now, cb).unwrap();
    s.run_for(Duration::from_secs(1));
    assert_eq!(Sim::terminated(&s.ev_a, ca), Some(EndReason::RemoteHangup));
}

#[test]
fn a_retransmitted_2xx_needs_both_tags_and_the_source() {
    let mut s = Sim::new(21, Impairment::default());
    let _ca = s.call();
    let _cb = s.answer_when_incoming();
    assert!(s.run_until(Duration::from_secs(1), |s| answered(&s.ev_a).is_some()));
    // Past Timer M: the INVITE transaction is gone.
    s.run_for(Duration::from_secs(40));
    let (_, ok) = s
        .sent(B, "SIP/2.0 200")
        .into_iter()
        .find(|(_, m)| m.contains("INVITE\r\n"))
        .unwrap();
    let acks = s.sent(A, "ACK ").len();
    s.a.handle_input(s.now, Transport::Udp, addr(B), ok.as_bytes())
        .unwrap();
    s.collect();
    assert_eq!(s.sent(A, "ACK ").len(), acks + 1, "re-ACKed (RFC 6026)");
    assert_eq!(
        s.a.handle_input(s.now, Transport::Udp, addr(STRANGER), ok.as_bytes()),
        Err(InputError::UntrustedSource)
    );
    let Message::Response(r) = Message::parse(ok.as_bytes(), &Limits::default()).unwrap() else {
        panic!()
    };
    let to_tag = r.header_to().unwrap().tag().unwrap().to_string();
    let other_dialog = ok.replace(&to_tag, "another");
    assert_eq!(
        s.a.handle_input(s.now, Transport::Udp, addr(B), other_dialog.as_bytes()),
        Err(InputError::NoTransaction),
        "no Call-ID-only matching"
    );
    s.collect();
    assert_eq!(s.sent(A, "ACK ").len(), acks + 1);
    assert!(s.sent(A, "BYE ").is_empty());
}

#[test]
fn a_callee_hears_bye_and_cancel_only_from_its_caller() {
    let mut s = Sim::new(22, Impairment::default());
    let _ca = s.call();
    assert!(s.run_until(Duration::from_secs(1), |s| s.incoming().is_some()));
    let cb = s.incoming().unwrap();
    s.b.ringing(s.now, cb).unwrap();
    s.run_for(Duration::from_millis(100));
    let invite = invite_of(&s);
    let mut cancel = sip::message::Request::new(sip::message::Method::Cancel, invite.uri.clone());
    for name in ["Via", "From", "To", "Call-ID"] {
        cancel.headers.push(name, invite.headers.get(name).unwrap());
    }
    let seq = invite.cseq().unwrap().seq;
    cancel.headers.push("CSeq", format!("{seq} CANCEL"));
    assert_eq!(
        s.b.handle_input(s.now, Transport::Udp, addr(STRANGER), &cancel.to_bytes()),
        Err(InputError::UntrustedSource)
    );
    s.run_for(Duration::from_millis(100));
    assert!(Sim::terminated(&s.ev_b, cb).is_none(), "still ringing");
    s.b.answer(s.now, cb).unwrap();
    assert!(s.run_until(Duration::from_secs(1), |s| {
        s.ev_b.iter().any(|e| matches!(e, Event::Confirmed { .. }))
    }));
    let ack = s.sent(A, "ACK ")[0].1.clone();
    let bye = ack
        .replace("ACK sip", "BYE sip")
        .replace(" ACK\r\n", " BYE\r\n")
        .replace("CSeq: 1 BYE", "CSeq: 9 BYE");
    assert_eq!(
        s.b.handle_input(s.now, Transport::Udp, addr(STRANGER), bye.as_bytes()),
        Err(InputError::UntrustedSource)
    );
    s.run_for(Duration::from_millis(100));
    assert!(Sim::terminated(&s.ev_b, cb).is_none(), "still up");
}

#[test]
fn identifiers_are_128_random_bits_and_never_repeat() {
    let mut s = Sim::new(23, Impairment::default());
    for _ in 0..200 {
        s.call();
    }
    s.collect();
    let mut seen = std::collections::HashSet::new();
    for (_, invite) in s.sent(A, "INVITE ") {
        let Message::Request(r) = Message::parse(invite.as_bytes(), &Limits::default()).unwrap()
        else {
            panic!()
        };
        let call_id = r.call_id().unwrap().split('@').next().unwrap().to_string();
        let tag = r.header_from().unwrap().tag().unwrap().to_string();
        let branch = r.top_via().unwrap().branch().unwrap().to_string();
        let branch = branch.strip_prefix("z9hG4bK").unwrap().to_string();
        for id in [call_id, tag, branch] {
            assert_eq!(id.len(), 32, "{id}: 128 bits in hex");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(seen.insert(id.clone()), "{id} repeated");
        }
    }
    assert_eq!(seen.len(), 600);
}

#[test]
fn many_concurrent_calls_in_one_agent() {
    let mut s = Sim::new(
        17,
        Impairment {
            loss: 50,
            dup: 20,
            jitter_ms: 10,
        },
    );
    let calls: Vec<CallHandle> = (0..50).map(|_| s.call()).collect();
    let mut answered_b = Vec::new();
    s.run_until(Duration::from_secs(20), |s| {
        s.ev_b
            .iter()
            .filter(|e| matches!(e, Event::Incoming { .. }))
            .count()
            == 50
    });
    for e in s.ev_b.clone() {
        if let Event::Incoming { call, .. } = e {
            s.b.answer(s.now, call).unwrap();
            answered_b.push(call);
        }
    }
    s.run_for(Duration::from_secs(20));
    assert_eq!(
        s.ev_a
            .iter()
            .filter(|e| matches!(e, Event::Answered { .. }))
            .count(),
        50
    );
    for c in &calls {
        s.a.hangup(s.now, *c).unwrap();
    }
    s.run_for(Duration::from_secs(40));
    for c in &calls {
        assert_eq!(Sim::terminated(&s.ev_a, *c), Some(EndReason::LocalHangup));
    }
    assert_eq!(
        s.ev_b
            .iter()
            .filter(|e| matches!(e, Event::RemoteHangup { .. }))
            .count(),
        50
    );
}

/// A trunk target that is down (nothing comes back).
const DOWN: &str = "127.0.0.1:5072";

/// The INVITEs A sent, in order, with their destination.
fn invites_sent(log: &[(SocketAddr, Vec<u8>)]) -> Vec<(SocketAddr, Request)> {
    log.iter()
        .filter(|(_, p)| p.starts_with(b"INVITE "))
        .map(|(d, p)| {
            let Message::Request(r) = Message::parse(p, &Limits::default()).unwrap() else {
                panic!()
            };
            (*d, r)
        })
        .collect()
}

fn branch_of(r: &Request) -> String {
    r.top_via().unwrap().branch().unwrap().to_string()
}

/// A response to `invite` with `status` (and a To-tag when given).
fn reply(invite: &Request, status: u16, to_tag: Option<&str>) -> Vec<u8> {
    let mut r = sip::message::Response::new(status);
    r.headers.push("Via", invite.headers.get("Via").unwrap());
    r.headers.push("From", invite.headers.get("From").unwrap());
    let to = invite.headers.get("To").unwrap();
    match to_tag {
        Some(t) => r.headers.push("To", format!("{to};tag={t}")),
        None => r.headers.push("To", to),
    }
    r.headers.push("Call-ID", invite.call_id().unwrap());
    r.headers.push("CSeq", invite.headers.get("CSeq").unwrap());
    r.to_bytes()
}

#[test]
fn a_silent_target_is_left_for_the_next_one_with_a_new_transaction() {
    let mut s = Sim::new(31, Impairment::default());
    s.blackhole = Some(addr(DOWN));
    let mut o = s.outgoing(None);
    o.next_hop = addr(DOWN);
    o.alternates = vec![addr(B)];
    o.peers = vec![addr(DOWN), addr(B)];
    let ca = s.a.call(s.now, o);
    let cb = s.answer_when_incoming();
    // RFC 3263 §4.3 with our silence limit: 8·T1 = 4 s of nothing, then B.
    let at = s.now - s.t0;
    assert!(
        at >= Duration::from_secs(4) && at < Duration::from_secs(5),
        "{at:?}"
    );
    assert!(s.run_until(Duration::from_secs(5), |s| answered(&s.ev_a).is_some()));
    assert!(s.ev_a.iter().any(|e| matches!(
        e,
        Event::Rerouted { call, from, to, failure: Failure::Timeout }
            if *call == ca && *from == addr(DOWN) && *to == addr(B)
    )));
    let invites: Vec<(SocketAddr, Request)> = s
        .log
        .iter()
        .filter(|(_, f, p)| *f == addr(A) && p.starts_with(b"INVITE "))
        .map(|(_, _, p)| {
            let Message::Request(r) = Message::parse(p, &Limits::default()).unwrap() else {
                panic!()
            };
            (addr(A), r)
        })
        .collect();
    let first = &invites[0].1;
    let last = &invites.last().unwrap().1;
    assert_ne!(
        branch_of(first),
        branch_of(last),
        "a new client transaction"
    );
    assert_eq!(first.call_id().unwrap(), last.call_id().unwrap());
    // The silent target wakes up and answers the INVITE it was sent: nothing counts.
    let now = s.now;
    assert_eq!(
        s.a.handle_input(now, Transport::Udp, addr(DOWN), &forged_200(first, None)),
        Err(InputError::NoTransaction)
    );
    assert_eq!(
        s.a.handle_input(
            now,
            Transport::Udp,
            addr(DOWN),
            &reply(first, 180, Some("x"))
        ),
        Err(InputError::NoTransaction)
    );
    s.run_for(Duration::from_millis(100));
    assert!(s.sent(A, "ACK ").len() == 1, "only B's 200 is ACKed");
    assert!(Sim::terminated(&s.ev_a, ca).is_none());
    let _ = cb;
}

/// One UA driven by hand: INVITE out, responses in.
fn caller(alternates: &[&str]) -> (UserAgent, CallHandle, Instant) {
    let now = Instant::now();
    let mut ua = UserAgent::new(Config::new(addr(A)), seed32(77));
    let mut peers = vec![addr(DOWN)];
    peers.extend(alternates.iter().map(|a| addr(a)));
    let call = ua.call(
        now,
        OutgoingCall {
            target: Uri::parse("sip:+14255550123@trunk.example.net").unwrap(),
            from: Uri::parse("sip:+14255550100@trunk.example.net").unwrap(),
            display_name: None,
            next_hop: addr(DOWN),
            peers,
            alternates: alternates.iter().map(|a| addr(a)).collect(),
            transport: Transport::Udp,
            media: LocalMedia::new(addr("127.0.0.1:27000"), 7),
            credentials: None,
        },
    );
    (ua, call, now)
}

fn drain(ua: &mut UserAgent) -> (Vec<(SocketAddr, Vec<u8>)>, Vec<Event>) {
    let mut tx = Vec::new();
    while let Some(t) = ua.poll_transmit() {
        tx.push((t.destination, t.payload));
    }
    let mut ev = Vec::new();
    while let Some(e) = ua.poll_event() {
        ev.push(e);
    }
    (tx, ev)
}

#[test]
fn a_503_moves_the_invite_to_the_next_target_and_the_last_503_fails_the_call() {
    let (mut ua, call, now) = caller(&[B, STRANGER]);
    let (tx, _) = drain(&mut ua);
    let first = invites_sent(&tx).remove(0);
    assert_eq!(first.0, addr(DOWN));
    // 100 Trying then 503 from the first target: hop-by-hop, nobody rang yet.
    ua.handle_input(now, Transport::Udp, addr(DOWN), &reply(&first.1, 100, None))
        .unwrap();
    ua.handle_input(
        now,
        Transport::Udp,
        addr(DOWN),
        &reply(&first.1, 503, Some("t1")),
    )
    .unwrap();
    let (tx, ev) = drain(&mut ua);
    assert!(
        tx.iter()
            .any(|(d, p)| *d == addr(DOWN) && p.starts_with(b"ACK ")),
        "the 503 is ACKed by its transaction"
    );
    let second = invites_sent(&tx).remove(0);
    assert_eq!(second.0, addr(B));
    assert_ne!(branch_of(&first.1), branch_of(&second.1));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Rerouted {
            failure: Failure::Rejected { status: 503 },
            ..
        }
    )));
    assert!(!ev.iter().any(|e| matches!(e, Event::Failed { .. })));
    // The second target answers 503 too (retransmission of the first's 503 changes nothing).
    assert!(
        ua.handle_input(
            now,
            Transport::Udp,
            addr(DOWN),
            &reply(&first.1, 503, Some("t1"))
        )
        .is_ok()
    );
    // A response to the second INVITE from the first target does not count.
    assert_eq!(
        ua.handle_input(
            now,
            Transport::Udp,
            addr(DOWN),
            &reply(&second.1, 180, Some("f"))
        ),
        Err(InputError::UntrustedSource)
    );
    ua.handle_input(
        now,
        Transport::Udp,
        addr(B),
        &reply(&second.1, 503, Some("t2")),
    )
    .unwrap();
    let (tx, _) = drain(&mut ua);
    let third = invites_sent(&tx).remove(0);
    assert_eq!(third.0, addr(STRANGER));
    ua.handle_input(
        now,
        Transport::Udp,
        addr(STRANGER),
        &reply(&third.1, 503, Some("t3")),
    )
    .unwrap();
    let (tx, ev) = drain(&mut ua);
    assert!(invites_sent(&tx).is_empty(), "nothing left to try");
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Failed { call: c, failure: Failure::Rejected { status: 503 } } if *c == call
    )));
}

#[test]
fn once_the_phone_rings_a_503_is_the_answer_and_other_statuses_never_fail_over() {
    // 180 then 503: the far end was reached; a second trunk would ring the phone twice.
    let (mut ua, call, now) = caller(&[B]);
    let (tx, _) = drain(&mut ua);
    let first = invites_sent(&tx).remove(0);
    ua.handle_input(
        now,
        Transport::Udp,
        addr(DOWN),
        &reply(&first.1, 180, Some("r")),
    )
    .unwrap();
    ua.handle_input(
        now,
        Transport::Udp,
        addr(DOWN),
        &reply(&first.1, 503, Some("r")),
    )
    .unwrap();
    let (tx, ev) = drain(&mut ua);
    assert!(invites_sent(&tx).is_empty());
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Failed { call: c, failure: Failure::Rejected { status: 503 } } if *c == call
    )));
    // 486 busy: a call outcome, not a failed server.
    let (mut ua, _, now) = caller(&[B]);
    let (tx, _) = drain(&mut ua);
    let first = invites_sent(&tx).remove(0);
    ua.handle_input(
        now,
        Transport::Udp,
        addr(DOWN),
        &reply(&first.1, 486, Some("b")),
    )
    .unwrap();
    let (tx, ev) = drain(&mut ua);
    assert!(invites_sent(&tx).is_empty());
    assert!(!ev.iter().any(|e| matches!(e, Event::Rerouted { .. })));
}

#[test]
fn a_transport_error_moves_on_at_once_and_timer_b_ends_the_last_target() {
    let (mut ua, call, now) = caller(&[B]);
    let _ = drain(&mut ua);
    ua.handle_transport_error(now, call);
    let (tx, ev) = drain(&mut ua);
    assert_eq!(invites_sent(&tx)[0].0, addr(B));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Rerouted {
            failure: Failure::Transport,
            ..
        }
    )));
    // The last target is silent: no silence limit any more, Timer B (64·T1) ends the call.
    let mut t = now;
    let mut failed_at = None;
    while t < now + Duration::from_secs(40) && failed_at.is_none() {
        t += Duration::from_millis(250);
        ua.handle_timeout(t);
        let (_, ev) = drain(&mut ua);
        if ev.iter().any(|e| {
            matches!(
                e,
                Event::Failed {
                    failure: Failure::Timeout,
                    ..
                }
            )
        }) {
            failed_at = Some(t - now);
        }
    }
    let at = failed_at.expect("Timer B fired");
    assert!(at >= Duration::from_secs(32), "{at:?}");
}
