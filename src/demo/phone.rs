//! The demo's simulated phone: a small SIP callee built from the same sans-IO cores as the
//! service (the `sip` user agent as a callee, a `media` session), on loopback UDP.
//!
//! It behaves like a person: it rings, answers, listens until it hears the prompt, and then,
//! as asked, presses `#` or `0#` in-band (Q.23 tones through the tone generator), stays silent,
//! or is busy (486).

use std::net::SocketAddr;
use std::time::Duration;

use media::rtp::RtpPacket;
use media::{Codec, DialMethod, MediaEvent, Session, SessionConfig};
use sip::sdp::LocalMedia;
use sip::{CallHandle, Event, Transport, UserAgent};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the simulated phone does with a call.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PhoneMode {
    /// Answers and presses `#` when it hears the prompt.
    Confirm,
    /// Answers and presses `0#` (reports fraud).
    Fraud,
    /// Answers and presses nothing.
    Silent,
    /// Refuses with 486 Busy Here.
    Busy,
}

impl AsRef<str> for PhoneMode {
    fn as_ref(&self) -> &str {
        match self {
            PhoneMode::Confirm => "confirm",
            PhoneMode::Fraud => "fraud",
            PhoneMode::Silent => "silent",
            PhoneMode::Busy => "busy",
        }
    }
}

impl PhoneMode {
    /// The keys pressed after hearing the prompt.
    fn keys(self) -> Option<&'static str> {
        match self {
            PhoneMode::Confirm => Some("#"),
            PhoneMode::Fraud => Some("0#"),
            PhoneMode::Silent | PhoneMode::Busy => None,
        }
    }
}

/// How long the phone rings before answering.
const RING: Duration = Duration::from_millis(800);
/// Prompt audio heard before the "person" reacts: they listen to the start of the greeting.
const LISTEN: Duration = Duration::from_millis(1500);
/// Audio louder than this (dBm0, mean over a 20 ms packet) counts as the prompt playing.
const PROMPT_LEVEL_DBM0: f64 = -40.0;
/// Consecutive loud packets (20 ms each) that make a prompt, not a click.
const PROMPT_PACKETS: u32 = 10;

/// A running simulated phone.
pub struct Phone {
    /// Where it takes SIP (UDP).
    pub sip_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Phone {
    /// Binds the phone's SIP and RTP sockets on 127.0.0.1 and starts it; what it does is
    /// narrated on `log`.
    pub async fn start(
        mode: PhoneMode,
        log: mpsc::UnboundedSender<String>,
    ) -> std::io::Result<Phone> {
        let sip = UdpSocket::bind("127.0.0.1:0").await?;
        let rtp = UdpSocket::bind("127.0.0.1:0").await?;
        let sip_addr = sip.local_addr()?;
        let rtp_addr = rtp.local_addr()?;
        let mut config = sip::Config::new(sip_addr);
        config.accept_incoming = true;
        config.user_agent = "callverify-demo-phone".into();
        let ua = UserAgent::new(config, rand::random());
        let state = State {
            mode,
            ua,
            rtp_addr,
            log,
            call: None,
            media: None,
            answer_at: None,
        };
        let task = tokio::spawn(state.run(sip, rtp));
        Ok(Phone { sip_addr, task })
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answered call's media and what the "person" is doing.
struct Media {
    session: Session,
    codec: Codec,
    loud_packets: u32,
    press_at: Option<Instant>,
    pressed: bool,
}

struct State {
    mode: PhoneMode,
    ua: UserAgent,
    rtp_addr: SocketAddr,
    log: mpsc::UnboundedSender<String>,
    call: Option<CallHandle>,
    media: Option<Media>,
    answer_at: Option<Instant>,
}

impl State {
    fn say(&self, what: impl Into<String>) {
        let _ = self.log.send(what.into());
    }

    async fn run(mut self, sip: UdpSocket, rtp: UdpSocket) {
        let mut sip_buf = vec![0u8; 65_536];
        let mut rtp_buf = vec![0u8; 2048];
        loop {
            let now = Instant::now();
            self.step(now.into_std());
            self.flush(&sip, &rtp).await;
            let deadline = self.deadline().unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                received = sip.recv_from(&mut sip_buf) => {
                    if let Ok((n, from)) = received {
                        // Malformed SIP is the far end's problem; the phone carries on.
                        let _ = self.ua.handle_input(Instant::now().into_std(), Transport::Udp, from, &sip_buf[..n]);
                    }
                }
                received = rtp.recv_from(&mut rtp_buf) => {
                    if let Ok((n, from)) = received {
                        self.on_rtp(Instant::now(), from, &rtp_buf[..n]);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Runs every timer that is due and reacts to the user agent's events.
    fn step(&mut self, now: std::time::Instant) {
        self.ua.handle_timeout(now);
        while let Some(event) = self.ua.poll_event() {
            self.on_sip_event(now, event);
        }
        if self.answer_at.is_some_and(|t| t.into_std() <= now) {
            self.answer_at = None;
            self.answer(now);
        }
        let mut pressed = None;
        if let Some(m) = &mut self.media {
            let due = m.press_at.is_some_and(|at| at.into_std() <= now);
            if due && !m.pressed {
                if let Some(keys) = self.mode.keys() {
                    m.session.dial(now, keys, DialMethod::Inband);
                    pressed = Some(keys);
                }
                m.pressed = true;
            }
            m.session.handle_timeout(now);
            while let Some(event) = m.session.poll_event() {
                if let MediaEvent::DialFinished = event {
                    let _ = self.log.send("phone: keys sent".into());
                }
            }
        }
        if let Some(keys) = pressed {
            self.say(format!("phone: pressing {keys} (in-band tones)"));
        }
    }

    fn on_sip_event(&mut self, now: std::time::Instant, event: Event) {
        match event {
            Event::Incoming { call, .. } => {
                if self.call.is_some() {
                    let _ = self.ua.reject(now, call, 486);
                    return;
                }
                if self.mode == PhoneMode::Busy {
                    self.say("phone: busy, refusing the call (486)");
                    let _ = self.ua.reject(now, call, 486);
                    return;
                }
                self.say("phone: ringing");
                let _ = self.ua.ringing(now, call);
                self.call = Some(call);
                self.answer_at = Some(Instant::from_std(now) + RING);
            }
            Event::Terminated { call, reason } if Some(call) == self.call => {
                self.say(format!("phone: call ended ({})", describe(&reason)));
                self.call = None;
                self.media = None;
                self.answer_at = None;
            }
            _ => {}
        }
    }

    fn answer(&mut self, now: std::time::Instant) {
        let Some(call) = self.call else { return };
        let local = LocalMedia::new(self.rtp_addr, rand::random());
        match self.ua.answer_with(now, call, local) {
            Ok(Some(negotiated)) => {
                let Some(remote) = negotiated.remote else {
                    self.say("phone: the offer put us on hold; hanging up");
                    let _ = self.ua.hangup(now, call);
                    return;
                };
                let codec = match negotiated.codec {
                    sip::sdp::Codec::Pcmu => Codec::Pcmu,
                    sip::sdp::Codec::Pcma => Codec::Pcma,
                };
                let session = Session::new(
                    now,
                    SessionConfig {
                        remote,
                        codec,
                        audio_pt: negotiated.codec_pt,
                        telephone_event_pt: negotiated.telephone_event_pt,
                        seed: rand::random(),
                        srtp: None,
                    },
                );
                self.media = Some(Media {
                    session,
                    codec,
                    loud_packets: 0,
                    press_at: None,
                    pressed: false,
                });
                self.say(format!("phone: answered ({})", codec.as_str()));
            }
            Ok(None) => {
                self.say("phone: the INVITE had no SDP offer; hanging up");
                let _ = self.ua.hangup(now, call);
            }
            Err(e) => {
                self.say(format!("phone: cannot answer: {e}"));
                let _ = self.ua.reject(now, call, 488);
            }
        }
    }

    /// Feeds the session and listens for the prompt: some 200 ms of audio above the level
    /// of silence, then the "person" reacts after listening a little.
    fn on_rtp(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let Some(m) = &mut self.media else { return };
        m.session.handle_datagram(now.into_std(), from, datagram);
        if m.press_at.is_some() {
            return;
        }
        let Ok(packet) = RtpPacket::parse(datagram) else {
            return;
        };
        if packet.payload_type != m.session.config().audio_pt {
            return;
        }
        let level = level_dbm0(m.codec, packet.payload);
        m.loud_packets = if level > PROMPT_LEVEL_DBM0 {
            m.loud_packets + 1
        } else {
            0
        };
        if m.loud_packets >= PROMPT_PACKETS {
            m.press_at = Some(now + LISTEN);
            let reaction = match self.mode.keys() {
                Some(_) => "listening",
                None => "staying silent",
            };
            let _ = self
                .log
                .send(format!("phone: hearing the prompt, {reaction}"));
        }
    }

    async fn flush(&mut self, sip: &UdpSocket, rtp: &UdpSocket) {
        while let Some(t) = self.ua.poll_transmit() {
            // A lost datagram is retransmitted by the SIP transactions.
            let _ = sip.send_to(&t.payload, t.destination).await;
        }
        if let Some(m) = &mut self.media {
            while let Some(t) = m.session.poll_transmit() {
                let _ = rtp.send_to(&t.payload, t.destination).await;
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let media = self.media.as_ref().and_then(|m| {
            let press = m.press_at.filter(|_| !m.pressed);
            [m.session.poll_timeout().map(Instant::from_std), press]
                .into_iter()
                .flatten()
                .min()
        });
        [
            self.ua.poll_timeout().map(Instant::from_std),
            self.answer_at,
            media,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Mean level of a G.711 payload, dBm0 (a sine's equivalent).
fn level_dbm0(codec: Codec, payload: &[u8]) -> f64 {
    if payload.is_empty() {
        return f64::NEG_INFINITY;
    }
    let decode = match codec {
        Codec::Pcma => media::g711::alaw_to_linear,
        _ => media::g711::ulaw_to_linear,
    };
    let power: f64 = payload
        .iter()
        .map(|&b| (decode(b) as f64).powi(2))
        .sum::<f64>()
        / payload.len() as f64;
    // A sine of peak A has power A²/2; 0 dBm0 peaks at dtmf::DBM0_PEAK.
    10.0 * (2.0 * power / (dtmf::DBM0_PEAK * dtmf::DBM0_PEAK))
        .max(1e-12)
        .log10()
}

fn describe(reason: &sip::EndReason) -> &'static str {
    match reason {
        sip::EndReason::RemoteHangup => "the verifier hung up",
        sip::EndReason::LocalHangup => "the phone hung up",
        sip::EndReason::LocalReject { .. } => "refused",
        sip::EndReason::Cancelled => "cancelled",
        sip::EndReason::AckTimeout => "no ACK",
        sip::EndReason::Failed(_) => "failed",
    }
}
