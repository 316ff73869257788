//! The flow with the real media path ([`flow::live::LiveFactory`] over `media::Session`)
//! against a simulated phone: the sip crate's user agent answers, a second `media::Session`
//! presses keys (RFC 4733 or in-band tones through G.711), every packet crosses a simulated
//! wire with a seeded delay. Proves the prompt → detector → decision path end to end in
//! simulated time (STYLE.md 5).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flow::live::{LiveFactory, PromptBook};
use flow::media::{DtmfMethod, PromptKind};
use flow::spec::Rules;
use flow::{CallResult, CallSpec, Event, Mode, Report, Switchboard, TimelineEvent, Transmit};
use media::{Prompt, Session, SessionConfig};
use sip::sdp::LocalMedia;
use sip::{CallHandle, Config, Transport, Uri, UserAgent};

const US: &str = "127.0.0.1:5060";
const PHONE: &str = "127.0.0.1:5070";
const OUR_RTP: &str = "127.0.0.1:20000";
const PHONE_RTP: &str = "127.0.0.1:30000";
/// One-way delay of the simulated wire.
const DELAY: Duration = Duration::from_millis(15);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A prompt of `secs` seconds of a quiet 300 Hz tone (no DTMF energy).
fn prompt(name: &str, secs: f64) -> Prompt {
    let n = (secs * 8000.0) as usize;
    let samples: Vec<i16> = (0..n)
        .map(|i| (2000.0 * (2.0 * std::f64::consts::PI * 300.0 * i as f64 / 8000.0).sin()) as i16)
        .collect();
    Prompt::from_samples(name, &samples)
}

fn book() -> Arc<PromptBook> {
    let mut b = PromptBook::new("en");
    for kind in PromptKind::ALL {
        b.insert("en", kind, prompt(kind.name(), 2.0));
    }
    Arc::new(b)
}

struct Phone {
    ua: UserAgent,
    call: Option<CallHandle>,
    media: Option<Session>,
    /// Keys to press: (time after answer, keys, method).
    press: Vec<(Duration, String, media::DialMethod)>,
    /// Hang up this long after answer.
    hangup: Option<Duration>,
    answered_at: Option<Instant>,
}

struct Live {
    t0: Instant,
    now: Instant,
    board: Switchboard<LiveFactory>,
    phone: Phone,
    wire: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>, bool)>,
    events: Vec<Event>,
    call: Option<flow::CallId>,
    /// SIP transport of the call (a label here: the wire is simulated).
    transport: Transport,
    /// `media.srtp` of the call, with our keys.
    srtp: Option<flow::Srtp>,
    /// The phone's SDES keys (None: it answers plain RTP).
    phone_sdes: Option<sip::sdes::LocalSdes>,
    /// Every RTP datagram the caller sent.
    sent_rtp: Vec<Vec<u8>>,
}

impl Live {
    fn new(press: Vec<(Duration, &str, media::DialMethod)>) -> Self {
        let t0 = Instant::now();
        let mut pc = Config::new(addr(PHONE));
        pc.accept_incoming = true;
        Self {
            t0,
            now: t0,
            board: Switchboard::new(Config::new(addr(US)), [1; 32], LiveFactory::new(book())),
            phone: Phone {
                ua: UserAgent::new(pc, [2; 32]),
                call: None,
                media: None,
                press: press
                    .into_iter()
                    .map(|(d, k, m)| (d, k.to_string(), m))
                    .collect(),
                hangup: None,
                answered_at: None,
            },
            wire: Vec::new(),
            events: Vec::new(),
            call: None,
            transport: Transport::Udp,
            srtp: None,
            phone_sdes: None,
            sent_rtp: Vec::new(),
        }
    }

    fn place(&mut self, mode: Mode, digits: Option<&str>) {
        self.try_place(mode, digits).unwrap();
    }

    fn try_place(&mut self, mode: Mode, digits: Option<&str>) -> Result<(), flow::SpecError> {
        let spec = CallSpec {
            target: Uri::parse("sip:+14255550123@127.0.0.1:5070").unwrap(),
            from: Uri::parse("sip:+14255550100@127.0.0.1").unwrap(),
            display_name: None,
            next_hop: addr(PHONE),
            peers: Vec::new(),
            alternates: Vec::new(),
            transport: self.transport,
            local_rtp: addr(OUR_RTP),
            credentials: None,
            mode,
            expected_digits: digits.map(|d| {
                flow::keys::DigitsKey::new([0x5a; flow::keys::SEAL_LEN])
                    .seal_digits(b"test-verification", d)
                    .expect("digits")
            }),
            extension: None,
            language: "en".into(),
            rules: Rules::default(),
            srtp: self.srtp.clone(),
        };
        self.call = Some(self.board.place(self.now, spec)?);
        Ok(())
    }

    fn collect(&mut self) {
        let now = self.now;
        while let Some(t) = self.board.poll_transmit() {
            match t {
                Transmit::Sip(t) => {
                    self.wire
                        .push((now + DELAY, addr(US), t.destination, t.payload, true))
                }
                Transmit::Rtp {
                    destination,
                    payload,
                    ..
                } => {
                    self.sent_rtp.push(payload.clone());
                    self.wire
                        .push((now + DELAY, addr(OUR_RTP), destination, payload, false))
                }
            }
        }
        while let Some(t) = self.phone.ua.poll_transmit() {
            self.wire
                .push((now + DELAY, addr(PHONE), t.destination, t.payload, true));
        }
        if let Some(m) = self.phone.media.as_mut() {
            while let Some(t) = m.poll_transmit() {
                self.wire.push((
                    now + DELAY,
                    addr(PHONE_RTP),
                    t.destination,
                    t.payload,
                    false,
                ));
            }
            while m.poll_event().is_some() {}
        }
        while let Some((_, e)) = self.board.poll_event() {
            self.events.push(e);
        }
        while let Some(e) = self.phone.ua.poll_event() {
            if let sip::Event::Incoming { call, .. } = e {
                self.phone.call = Some(call);
                let _ = self.phone.ua.ringing(now, call);
                let mut local = LocalMedia::new(addr(PHONE_RTP), 3);
                local.sdes = self.phone_sdes.clone();
                let negotiated = self
                    .phone
                    .ua
                    .answer_with(now, call, local)
                    .unwrap()
                    .unwrap();
                // The phone's key protects what it sends; ours (from the offer) what we send.
                let srtp = match (&self.phone_sdes, &negotiated.sdes) {
                    (Some(mine), sip::sdes::Sdes::Usable(theirs)) => Some(media::SrtpConfig {
                        suite: match theirs.suite {
                            sip::sdes::CryptoSuite::AesCm128HmacSha1_80 => {
                                media::Suite::AesCm128HmacSha1_80
                            }
                            sip::sdes::CryptoSuite::AesCm128HmacSha1_32 => {
                                media::Suite::AesCm128HmacSha1_32
                            }
                        },
                        local: media::MasterKey::new(*mine.key(theirs.suite).expose()),
                        remote: media::MasterKey::new(*theirs.key.expose()),
                    }),
                    _ => None,
                };
                self.phone.answered_at = Some(now);
                self.phone.media = Some(Session::new(
                    now,
                    SessionConfig {
                        remote: negotiated.remote.unwrap(),
                        codec: match negotiated.codec {
                            sip::sdp::Codec::Pcmu => media::Codec::Pcmu,
                            sip::sdp::Codec::Pcma => media::Codec::Pcma,
                        },
                        audio_pt: negotiated.codec_pt,
                        telephone_event_pt: negotiated.telephone_event_pt,
                        seed: [9; 32],
                        srtp,
                    },
                ));
            }
        }
    }

    fn run(&mut self, limit: Duration) -> Report {
        let end = self.t0 + limit;
        loop {
            self.collect();
            if let Some(Event::Finished(r)) = self.events.last() {
                return r.clone();
            }
            let press = self
                .phone
                .answered_at
                .and_then(|a| self.phone.press.first().map(|p| a + p.0));
            let hangup = self
                .phone
                .answered_at
                .and_then(|a| self.phone.hangup.map(|h| a + h));
            let next = [
                self.wire.iter().map(|w| w.0).min(),
                self.board.poll_timeout(),
                self.phone.ua.poll_timeout(),
                self.phone.media.as_ref().and_then(|m| m.poll_timeout()),
                press,
                hangup,
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("something to do");
            assert!(next <= end, "no outcome: {:#?}", self.events);
            self.now = self.now.max(next);
            let now = self.now;
            if hangup.is_some_and(|h| h <= now)
                && let Some(call) = self.phone.call
            {
                self.phone.hangup = None;
                let _ = self.phone.ua.hangup(now, call);
                // Silence from here on.
                self.phone.media = None;
            }
            if press.is_some_and(|p| p <= now) {
                let (_, keys, method) = self.phone.press.remove(0);
                if let Some(m) = self.phone.media.as_mut() {
                    m.dial(now, &keys, method);
                }
            }
            let (due, rest): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|w| w.0 <= now);
            self.wire = rest;
            for (_, from, to, payload, is_sip) in due {
                match (is_sip, to == addr(PHONE) || to == addr(PHONE_RTP)) {
                    (true, true) => {
                        let _ = self
                            .phone
                            .ua
                            .handle_input(now, self.transport, from, &payload);
                    }
                    (true, false) => {
                        let _ = self.board.handle_sip(now, self.transport, from, &payload);
                    }
                    (false, true) => {
                        if let Some(m) = self.phone.media.as_mut() {
                            m.handle_datagram(now, from, &payload);
                        }
                    }
                    (false, false) => {
                        // The runtime knows which call a socket belongs to; here there is one.
                        if let Some(call) = self.call {
                            self.board.handle_rtp(now, call, from, &payload);
                        }
                    }
                }
            }
            self.board.handle_timeout(now);
            self.phone.ua.handle_timeout(now);
            if let Some(m) = self.phone.media.as_mut() {
                m.handle_timeout(now);
            }
        }
    }
}

fn digits(r: &Report) -> Vec<(String, String)> {
    r.timeline
        .iter()
        .filter_map(|e| match &e.event {
            TimelineEvent::Digit { digit, method } => Some((digit.clone(), method.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn pound_by_rfc4733_through_the_real_media_path() {
    let mut live = Live::new(vec![(
        Duration::from_millis(2500),
        "#",
        media::DialMethod::Rfc4733,
    )]);
    live.place(Mode::Standard, None);
    let r = live.run(Duration::from_secs(120));
    assert_eq!(r.result, CallResult::Confirmed, "{:#?}", r.timeline);
    assert_eq!(r.dtmf_method, Some(DtmfMethod::Rfc4733));
    assert_eq!(digits(&r), [("#".into(), "rfc4733".into())]);
}

#[test]
fn pin_by_inband_tones_through_g711() {
    let mut live = Live::new(vec![(
        Duration::from_millis(2500),
        "1234#",
        media::DialMethod::Inband,
    )]);
    live.place(Mode::Pin, Some("1234"));
    let r = live.run(Duration::from_secs(120));
    assert_eq!(r.result, CallResult::Confirmed, "{:#?}", r.timeline);
    assert_eq!(r.dtmf_method, Some(DtmfMethod::Inband));
    assert_eq!(digits(&r).len(), 5, "{:#?}", r.timeline);
}

#[test]
fn keys_in_the_guard_time_do_not_count_then_fraud() {
    let mut live = Live::new(vec![
        (Duration::from_millis(100), "#", media::DialMethod::Rfc4733),
        (
            Duration::from_millis(3000),
            "0#",
            media::DialMethod::Rfc4733,
        ),
    ]);
    live.place(Mode::Standard, None);
    let r = live.run(Duration::from_secs(120));
    assert_eq!(r.result, CallResult::FraudReported, "{:#?}", r.timeline);
    assert!(r.timeline.iter().any(|e| matches!(
        &e.event,
        TimelineEvent::DigitIgnored { reason, .. } if reason.contains("guard")
    )));
}

#[test]
fn pound_just_before_hanging_up_still_counts() {
    // RFC 4733 '#' then BYE 60 ms later: the key is in the media path when the BYE lands.
    let mut live = Live::new(vec![(
        Duration::from_millis(2500),
        "#",
        media::DialMethod::Rfc4733,
    )]);
    live.phone.hangup = Some(Duration::from_millis(2560));
    live.place(Mode::Standard, None);
    let r = live.run(Duration::from_secs(120));
    assert_eq!(r.result, CallResult::Confirmed, "{:#?}", r.timeline);
    assert!(
        r.timeline
            .iter()
            .any(|e| e.event == TimelineEvent::ByeReceived)
    );
}

#[test]
fn inband_pound_just_before_hanging_up_still_counts() {
    let mut live = Live::new(vec![(
        Duration::from_millis(2500),
        "#",
        media::DialMethod::Inband,
    )]);
    live.phone.hangup = Some(Duration::from_millis(2580));
    live.place(Mode::Standard, None);
    let r = live.run(Duration::from_secs(120));
    assert_eq!(r.result, CallResult::Confirmed, "{:#?}", r.timeline);
}

fn keys(a: u8) -> [sip::sdes::SdesKey; 2] {
    [
        sip::sdes::SdesKey::new([a; 30]),
        sip::sdes::SdesKey::new([a + 1; 30]),
    ]
}

fn srtp_call(policy: flow::SrtpPolicy, phone: bool, transport: Transport) -> Live {
    let mut live = Live::new(vec![(
        Duration::from_millis(2500),
        "#",
        media::DialMethod::Inband,
    )]);
    live.transport = transport;
    live.srtp = Some(flow::Srtp {
        policy,
        keys: keys(10),
    });
    live.phone_sdes = phone.then(|| sip::sdes::LocalSdes {
        savp: false,
        keys: keys(20),
    });
    live
}

fn negotiated_srtp(r: &Report) -> Option<Option<String>> {
    r.timeline.iter().find_map(|e| match &e.event {
        TimelineEvent::MediaNegotiated { srtp, .. } => Some(srtp.clone()),
        _ => None,
    })
}

#[test]
fn srtp_both_ways_confirms_and_nothing_goes_out_in_clear() {
    for policy in [flow::SrtpPolicy::Require, flow::SrtpPolicy::Offer] {
        let mut live = srtp_call(policy, true, Transport::Tls);
        live.place(Mode::Standard, None);
        let r = live.run(Duration::from_secs(120));
        // The phone's in-band `#` crossed under its key; our prompt under ours (the phone's
        // session authenticated and decoded it).
        assert_eq!(r.result, CallResult::Confirmed, "{:#?}", r.timeline);
        assert_eq!(r.dtmf_method, Some(DtmfMethod::Inband));
        assert_eq!(
            negotiated_srtp(&r),
            Some(Some("AES_CM_128_HMAC_SHA1_80".into()))
        );
        let sent = &live.sent_rtp;
        assert!(sent.len() > 100);
        // Every packet carries a 10-byte tag after its 160 bytes of audio.
        assert!(
            sent.iter().all(|p| p.len() == 12 + 160 + 10),
            "{}",
            sent[0].len()
        );
        // The prompt is a 300 Hz tone: 80 samples are exactly three periods, so in clear the
        // two halves of a packet's G.711 payload are equal; encrypted, never.
        assert_eq!(halves_repeat(sent), 0, "payloads look like clear audio");
    }
    // The control: the same call in clear shows the repetition.
    let mut live = Live::new(vec![(
        Duration::from_millis(2500),
        "#",
        media::DialMethod::Inband,
    )]);
    live.place(Mode::Standard, None);
    live.run(Duration::from_secs(120));
    assert!(halves_repeat(&live.sent_rtp) > 100);
}

fn halves_repeat(sent: &[Vec<u8>]) -> usize {
    sent.iter()
        .filter(|p| p.len() >= 172 && p[12..92] == p[92..172])
        .count()
}

#[test]
fn srtp_require_refuses_a_plain_answer_and_offer_falls_back() {
    let mut live = srtp_call(flow::SrtpPolicy::Require, false, Transport::Tls);
    live.place(Mode::Standard, None);
    let r = live.run(Duration::from_secs(120));
    assert_eq!(r.result, CallResult::Unreachable, "{:#?}", r.timeline);
    assert!(
        r.timeline.iter().any(|e| matches!(
            &e.event,
            TimelineEvent::MediaUnusable { reason } if reason.contains("no SRTP keys")
        )),
        "{:#?}",
        r.timeline
    );
    assert!(live.sent_rtp.is_empty(), "no media before hanging up");

    let mut live = srtp_call(flow::SrtpPolicy::Offer, false, Transport::Tls);
    live.place(Mode::Standard, None);
    let r = live.run(Duration::from_secs(120));
    assert_eq!(r.result, CallResult::Confirmed, "{:#?}", r.timeline);
    assert_eq!(negotiated_srtp(&r), Some(None));
}

#[test]
fn srtp_keys_never_cross_clear_sip() {
    // require over UDP or TCP: not placed at all.
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut live = srtp_call(flow::SrtpPolicy::Require, true, transport);
        assert_eq!(
            live.try_place(Mode::Standard, None),
            Err(flow::SpecError::SrtpNeedsTls(transport))
        );
        assert!(live.board.poll_transmit().is_none(), "nothing was sent");
    }
    // offer over UDP: a plain offer (no key in the INVITE), a plain call.
    let mut live = srtp_call(flow::SrtpPolicy::Offer, true, Transport::Udp);
    live.place(Mode::Standard, None);
    let Some(Transmit::Sip(invite)) = live.board.poll_transmit() else {
        panic!("no INVITE")
    };
    let invite = String::from_utf8_lossy(&invite.payload).to_string();
    assert!(
        invite.contains("RTP/AVP") && !invite.contains("crypto"),
        "{invite}"
    );
    live.wire.push((
        live.now + DELAY,
        addr(US),
        addr(PHONE),
        invite.into_bytes(),
        true,
    ));
    let r = live.run(Duration::from_secs(120));
    assert_eq!(r.result, CallResult::Confirmed, "{:#?}", r.timeline);
    assert_eq!(negotiated_srtp(&r), Some(None));
}
