//! A simulated far end for the flow: the sip crate's own user agent as the callee, a
//! scripted media stand-in on our side, and a simulated clock (STYLE.md 5). A whole call —
//! INVITE, ring, answer, prompt, keys, BYE — runs in microseconds.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dtmf::Digit;
use flow::media::{
    DialMethod, DtmfMethod, KeyPress, Media, MediaEvent, MediaFactory, MediaSetup, PromptKind,
};
use flow::spec::Rules;
use flow::{
    CallId, CallResult, CallSpec, Event, Mode, Report, Switchboard, TimelineEvent, Transmit,
};
use sip::message::Message;
use sip::sdp::LocalMedia;
use sip::{CallHandle, Config, Transport, Uri, UserAgent};

pub const US: &str = "127.0.0.1:5060";
pub const PHONE: &str = "127.0.0.1:5070";
pub const OUR_RTP: &str = "127.0.0.1:20000";
pub const PHONE_RTP: &str = "127.0.0.1:30000";
/// One-way network delay on the simulated wire.
pub const WIRE_DELAY: Duration = Duration::from_millis(5);
/// How long each scripted prompt plays.
pub const PROMPT_LEN: Duration = Duration::from_secs(4);

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// What the scripted media saw and will report, shared between the test and the session.
#[derive(Default)]
pub struct Script {
    /// Keys to report: (when, key, method).
    pub keys: VecDeque<(Duration, char, DtmfMethod)>,
    /// Prompts played, in order, with the time.
    pub played: Vec<(Duration, PromptKind)>,
    /// Extension dials: (time, keys, method).
    pub dialled: Vec<(Duration, String, DialMethod)>,
    /// Sessions created.
    pub setups: Vec<MediaSetup>,
    /// Datagrams fed in.
    pub datagrams: usize,
    /// Prompt length override per prompt.
    pub prompt_len: Option<Duration>,
    /// Where the far end last moved its media (re-INVITE).
    pub redirected: Option<SocketAddr>,
}

pub struct ScriptMedia {
    t0: Instant,
    script: Rc<RefCell<Script>>,
    playing: Option<(PromptKind, Instant)>,
    queue: VecDeque<PromptKind>,
    dialling: Option<Instant>,
    events: VecDeque<MediaEvent>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    remote: SocketAddr,
}

impl ScriptMedia {
    fn next_prompt(&mut self, now: Instant) {
        let Some(prompt) = self.queue.pop_front() else {
            return;
        };
        let len = self.script.borrow().prompt_len.unwrap_or(PROMPT_LEN);
        self.script
            .borrow_mut()
            .played
            .push((now - self.t0, prompt));
        self.playing = Some((prompt, now + len));
        self.events.push_back(MediaEvent::PromptStarted(prompt));
        self.transmits.push_back((self.remote, vec![0x80, 0, 0, 1]));
    }
}

impl Media for ScriptMedia {
    fn redirect(&mut self, _now: Instant, remote: SocketAddr) {
        self.script.borrow_mut().redirected = Some(remote);
    }

    fn handle_datagram(&mut self, _now: Instant, _source: SocketAddr, _bytes: &[u8]) {
        self.script.borrow_mut().datagrams += 1;
    }
    fn handle_sip_info(&mut self, now: Instant, digit: Digit, duration: Option<Duration>) {
        self.events.push_back(MediaEvent::Key(KeyPress {
            digit,
            method: DtmfMethod::SipInfo,
            at: now,
            duration,
            latency: None,
        }));
    }
    fn handle_timeout(&mut self, now: Instant) {
        if let Some((kind, end)) = self.playing
            && end <= now
        {
            self.playing = None;
            self.events.push_back(MediaEvent::PromptFinished(kind));
            self.next_prompt(end);
        }
        if self.dialling.is_some_and(|d| d <= now) {
            self.dialling = None;
            self.events.push_back(MediaEvent::DialFinished);
        }
        let mut s = self.script.borrow_mut();
        while let Some(&(at, key, method)) = s.keys.front() {
            if self.t0 + at > now {
                break;
            }
            s.keys.pop_front();
            self.events.push_back(MediaEvent::Key(KeyPress {
                digit: Digit::from_char(key).unwrap(),
                method,
                at: self.t0 + at,
                duration: Some(Duration::from_millis(100)),
                // What the Goertzel receiver takes on a clean key press.
                latency: Some(Duration::from_millis(27)),
            }));
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        let key = self.script.borrow().keys.front().map(|k| self.t0 + k.0);
        [self.playing.map(|p| p.1), self.dialling, key]
            .into_iter()
            .flatten()
            .min()
    }
    fn poll_transmit(&mut self, packet: &mut Vec<u8>) -> Option<SocketAddr> {
        let (destination, payload) = self.transmits.pop_front()?;
        *packet = payload;
        Some(destination)
    }
    fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }
    fn play(&mut self, now: Instant, prompts: &[PromptKind]) {
        self.stop_playback(now);
        self.queue.extend(prompts.iter().copied());
        self.next_prompt(now);
    }
    fn stop_playback(&mut self, _now: Instant) {
        self.queue.clear();
        if let Some((kind, _)) = self.playing.take() {
            self.events.push_back(MediaEvent::PromptFinished(kind));
        }
    }
    fn dial(&mut self, now: Instant, keys: &str, method: DialMethod) {
        self.script
            .borrow_mut()
            .dialled
            .push((now - self.t0, keys.to_string(), method));
        let pauses = keys.chars().filter(|c| *c == ',').count() as u32;
        let tones = keys.len() as u32 - pauses;
        self.dialling =
            Some(now + Duration::from_secs(1) * pauses + Duration::from_millis(200) * tones);
    }
}

pub struct ScriptFactory {
    pub t0: Instant,
    pub script: Rc<RefCell<Script>>,
}

impl MediaFactory for ScriptFactory {
    type Media = ScriptMedia;
    fn create(&mut self, _now: Instant, setup: &MediaSetup) -> ScriptMedia {
        self.script.borrow_mut().setups.push(setup.clone());
        ScriptMedia {
            t0: self.t0,
            script: Rc::clone(&self.script),
            playing: None,
            queue: VecDeque::new(),
            dialling: None,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            remote: setup.remote,
        }
    }
}

/// What the simulated phone does when called.
#[derive(Clone, Debug)]
pub enum Phone {
    /// 180 after `ring`, 200 after `answer` (from the INVITE).
    Answer { ring: Duration, answer: Duration },
    /// 180 then this final status after `after`.
    Reject { status: u16, after: Duration },
    /// 180 and never answers.
    RingForever,
    /// Says nothing at all (not even 100).
    Silent,
    /// 183 (session progress with early media), then 200 after `answer`.
    EarlyMediaThenAnswer { answer: Duration },
}

/// Edits a message on the wire.
pub type Rewrite = Box<dyn FnMut(&mut Vec<u8>)>;

pub struct Sim {
    pub t0: Instant,
    pub now: Instant,
    pub board: Switchboard<ScriptFactory>,
    pub phone: UserAgent,
    pub phone_does: Phone,
    pub script: Rc<RefCell<Script>>,
    /// (deliver at, from, transport, destination, payload)
    flight: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    pub events: Vec<(Duration, Event)>,
    pub phone_call: Option<CallHandle>,
    /// Pending phone actions: (when, action).
    actions: Vec<(Instant, Action)>,
    /// Rewrites the phone's 200 before it goes out.
    pub rewrite_200: Option<Rewrite>,
    pub rtp_sent: usize,
    pub sip_log: Vec<(Duration, String)>,
    /// Drop everything the phone sends.
    pub phone_mute: bool,
}

#[derive(Clone, Debug)]
pub enum Action {
    Ring,
    Progress183,
    Answer,
    Reject(u16),
    Hangup,
    Info(char),
}

/// Expected digits as the service hands them over: sealed under a key (a fixed one here).
pub fn seal(digits: &str) -> flow::keys::SealedDigits {
    flow::keys::DigitsKey::new([0x5a; flow::keys::SEAL_LEN])
        .seal_digits(b"test-verification", digits)
        .expect("digits")
}

pub fn spec(mode: Mode, digits: Option<&str>, rules: Rules) -> CallSpec {
    CallSpec {
        target: Uri::parse("sip:+14255550123@127.0.0.1:5070").unwrap(),
        from: Uri::parse("sip:+14255550100@127.0.0.1").unwrap(),
        display_name: None,
        next_hop: addr(PHONE),
        peers: Vec::new(),
        alternates: Vec::new(),
        transport: Transport::Udp,
        local_rtp: addr(OUR_RTP),
        credentials: None,
        mode,
        expected_digits: digits.map(seal),
        extension: None,
        language: "en".into(),
        rules,
        srtp: None,
    }
}

impl Sim {
    pub fn new(phone_does: Phone) -> Self {
        let t0 = Instant::now();
        let script = Rc::new(RefCell::new(Script::default()));
        let mut pc = Config::new(addr(PHONE));
        pc.accept_incoming = true;
        Self {
            t0,
            now: t0,
            board: Switchboard::new(
                Config::new(addr(US)),
                [42; 32],
                ScriptFactory {
                    t0,
                    script: Rc::clone(&script),
                },
            ),
            phone: UserAgent::new(pc, [7; 32]),
            phone_does,
            script,
            flight: Vec::new(),
            events: Vec::new(),
            phone_call: None,
            actions: Vec::new(),
            rewrite_200: None,
            rtp_sent: 0,
            sip_log: Vec::new(),
            phone_mute: false,
        }
    }

    /// Schedules a key press on our media at `at` (from the start of the test).
    pub fn key(&mut self, at_ms: u64, key: char, method: DtmfMethod) {
        self.script
            .borrow_mut()
            .keys
            .push_back((Duration::from_millis(at_ms), key, method));
    }

    /// Schedules a phone action at `at_ms`.
    pub fn phone_at(&mut self, at_ms: u64, action: Action) {
        self.actions
            .push((self.t0 + Duration::from_millis(at_ms), action));
    }

    pub fn place(&mut self, spec: CallSpec) -> CallId {
        self.board.place(self.now, spec).unwrap()
    }

    fn collect(&mut self) {
        while let Some(t) = self.board.poll_transmit() {
            match t {
                Transmit::Sip(t) => {
                    self.log(&t.payload, "→");
                    self.flight
                        .push((self.now + WIRE_DELAY, addr(US), t.destination, t.payload));
                }
                Transmit::Rtp { .. } => self.rtp_sent += 1,
            }
        }
        while let Some(t) = self.phone.poll_transmit() {
            if self.phone_mute {
                continue;
            }
            let mut payload = t.payload;
            if payload.starts_with(b"SIP/2.0 200")
                && payload.windows(6).any(|w| w == b"INVITE")
                && let Some(f) = self.rewrite_200.as_mut()
            {
                f(&mut payload);
            }
            self.log(&payload, "←");
            self.flight
                .push((self.now + WIRE_DELAY, addr(PHONE), t.destination, payload));
        }
        while let Some((id, e)) = self.board.poll_event() {
            let _ = id;
            self.events.push((self.now - self.t0, e));
        }
        while let Some(e) = self.phone.poll_event() {
            if let sip::Event::Incoming { call, .. } = e {
                self.phone_call = Some(call);
                self.on_incoming(call);
            }
        }
    }

    fn log(&mut self, payload: &[u8], dir: &str) {
        let line = payload
            .split(|b| *b == b'\r')
            .next()
            .map(|l| String::from_utf8_lossy(l).to_string())
            .unwrap_or_default();
        self.sip_log
            .push((self.now - self.t0, format!("{dir} {line}")));
    }

    fn on_incoming(&mut self, _call: CallHandle) {
        let now = self.now;
        let ms = |d: Duration| now + d;
        match self.phone_does.clone() {
            Phone::Answer { ring, answer } => {
                self.actions.push((ms(ring), Action::Ring));
                self.actions.push((ms(answer), Action::Answer));
            }
            Phone::Reject { status, after } => {
                self.actions.push((now, Action::Ring));
                self.actions.push((ms(after), Action::Reject(status)));
            }
            Phone::RingForever => self.actions.push((now, Action::Ring)),
            Phone::Silent => {}
            Phone::EarlyMediaThenAnswer { answer } => {
                self.actions.push((now, Action::Progress183));
                self.actions.push((ms(answer), Action::Answer));
            }
        }
    }

    fn run_action(&mut self, action: Action) {
        let Some(call) = self.phone_call else { return };
        let now = self.now;
        let _ = match action {
            Action::Ring => self.phone.ringing(now, call),
            Action::Progress183 => self.phone.provisional(now, call, 183),
            Action::Answer => self
                .phone
                .answer_with(now, call, LocalMedia::new(addr(PHONE_RTP), 9))
                .map(|_| ()),
            Action::Reject(s) => self.phone.reject(now, call, s),
            Action::Hangup => self.phone.hangup(now, call),
            Action::Info(k) => self
                .phone
                .send_dtmf_info(now, call, k, Duration::from_millis(250)),
        };
    }

    /// Advances to the next thing due, at most to `limit`. False when idle or at the limit.
    fn step(&mut self, limit: Instant) -> bool {
        self.collect();
        let next = [
            self.flight.iter().map(|f| f.0).min(),
            self.actions.iter().map(|a| a.0).min(),
            self.board.poll_timeout(),
            self.phone.poll_timeout(),
        ]
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
        for (_, from, to, payload) in due {
            if to == addr(PHONE) {
                let _ = self.phone.handle_input(now, Transport::Udp, from, &payload);
            } else if to == addr(US) {
                let _ = self.board.handle_sip(now, Transport::Udp, from, &payload);
            }
        }
        let (due, rest): (Vec<_>, Vec<_>) = self.actions.drain(..).partition(|a| a.0 <= now);
        self.actions = rest;
        for (_, a) in due {
            self.run_action(a);
        }
        self.board.handle_timeout(now);
        self.phone.handle_timeout(now);
        self.collect();
        true
    }

    /// Runs until the call reports its outcome (or `limit` of simulated time passes).
    pub fn run(&mut self, limit: Duration) -> Report {
        let end = self.t0 + limit;
        loop {
            if let Some(r) = self.report() {
                return r;
            }
            if !self.step(end) {
                panic!(
                    "no outcome after {:?}; events: {:#?}; sip: {:#?}",
                    self.now - self.t0,
                    self.events,
                    self.sip_log
                );
            }
        }
    }

    /// Runs on for `d` (e.g. to let the far end see the BYE).
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.step(end) {}
    }

    pub fn report(&self) -> Option<Report> {
        self.events.iter().find_map(|(_, e)| match e {
            Event::Finished(r) => Some(r.clone()),
            _ => None,
        })
    }

    pub fn sent(&self, prefix: &str) -> usize {
        self.sip_log
            .iter()
            .filter(|(_, l)| l.starts_with(&format!("→ {prefix}")))
            .count()
    }

    pub fn received(&self, prefix: &str) -> usize {
        self.sip_log
            .iter()
            .filter(|(_, l)| l.starts_with(&format!("← {prefix}")))
            .count()
    }
}

/// The timeline events of a report, without times.
pub fn events(r: &Report) -> Vec<TimelineEvent> {
    r.timeline.iter().map(|e| e.event.clone()).collect()
}

pub fn has(r: &Report, pred: impl Fn(&TimelineEvent) -> bool) -> bool {
    r.timeline.iter().any(|e| pred(&e.event))
}

/// Asserts the result and that the timeline ends with it.
pub fn assert_result(r: &Report, result: CallResult) {
    assert_eq!(r.result, result, "timeline: {:#?}", r.timeline);
    assert_eq!(
        r.timeline.last().map(|e| &e.event),
        Some(&TimelineEvent::Outcome { result })
    );
    assert_eq!(
        r.timeline.first().map(|e| &e.event),
        Some(&TimelineEvent::InviteSent)
    );
}

/// Replace the codecs of an SDP answer with G.729 only (no usable codec).
pub fn g729_only(payload: &mut Vec<u8>) {
    let Ok(Message::Response(mut resp)) = Message::parse(payload, &Default::default()) else {
        return;
    };
    let body = String::from_utf8_lossy(&resp.body).to_string();
    let mut out = String::new();
    for line in body.split("\r\n") {
        if line.starts_with("m=audio") {
            let port = line.split_whitespace().nth(1).unwrap();
            out.push_str(&format!("m=audio {port} RTP/AVP 18\r\n"));
        } else if line.starts_with("a=rtpmap") || line.starts_with("a=fmtp") {
            continue;
        } else if !line.is_empty() {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("a=rtpmap:18 G729/8000\r\n");
    resp.body = out.into_bytes();
    *payload = resp.to_bytes();
}
