//! What the flow needs from the media path of a call, as a trait.
//!
//! The flow decides *what* to play and *which* keys count; the media path (RTP, G.711,
//! RFC 4733, the DTMF detector, the prompt pacer) does the audio. The trait keeps the flow's
//! states testable with a scripted media stand-in, and lets the real `media::Session`
//! (wrapped by [`crate::live`]) plug in unchanged. Same sans-IO shape as everything else:
//! input and `now` in, datagrams, events and a deadline out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dtmf::Digit;
pub use media::DtmfMethod;
use sip::sdp::Codec;

/// The recordings a verification call plays (`audio/<lang>/<name>.wav`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PromptKind {
    /// Standard mode: "… press the pound key; if you did not try to sign in, press zero then pound".
    Greeting,
    /// PIN mode: "enter your PIN, then pound".
    Pin,
    /// Challenge mode: "enter the digits shown on your screen, then pound".
    Challenge,
    /// After `confirmed`.
    Thanks,
    /// After `fraud_reported`.
    FraudAck,
    /// Last words of every call decided while the callee is on the line.
    Goodbye,
    /// "Sorry, we did not receive your answer" (before the replay, and on no input).
    NoInput,
    /// "Sorry, that is not correct" (wrong PIN or challenge digits).
    Invalid,
}

impl PromptKind {
    /// Every prompt.
    pub const ALL: [PromptKind; 8] = [
        PromptKind::Greeting,
        PromptKind::Pin,
        PromptKind::Challenge,
        PromptKind::Thanks,
        PromptKind::FraudAck,
        PromptKind::Goodbye,
        PromptKind::NoInput,
        PromptKind::Invalid,
    ];

    /// File stem in the prompts folder (`greeting` → `audio/en/greeting.wav`).
    pub fn name(self) -> &'static str {
        match self {
            PromptKind::Greeting => "greeting",
            PromptKind::Pin => "pin",
            PromptKind::Challenge => "challenge",
            PromptKind::Thanks => "thanks",
            PromptKind::FraudAck => "fraud-ack",
            PromptKind::Goodbye => "goodbye",
            PromptKind::NoInput => "no-input",
            PromptKind::Invalid => "invalid",
        }
    }
}

/// How extension digits are sent after answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DialMethod {
    /// RFC 4733 telephone-events (when the answer accepted telephone-event).
    Rfc4733,
    /// Q.23 tones in the audio.
    Inband,
}

/// One key press reported by the media path (any method; merged so that one press reported
/// by two methods arrives once).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct KeyPress {
    /// The key.
    pub digit: Digit,
    /// What carried it.
    pub method: DtmfMethod,
    /// When the key went down (as well as the method can tell).
    pub at: Instant,
    /// How long it was held, when known.
    pub duration: Option<Duration>,
    /// How long it had been down when it was recognised (detector latency), when known.
    pub latency: Option<Duration>,
}

/// What the media path tells the flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// A key press.
    Key(KeyPress),
    /// A prompt began playing (its first packet went out).
    PromptStarted(PromptKind),
    /// A prompt finished (or was stopped).
    PromptFinished(PromptKind),
    /// The keys given to [`Media::dial`] have all been sent.
    DialFinished,
}

/// The media of one answered call.
pub trait Media {
    /// An RTP (or stray) datagram arrived on the call's RTP socket.
    fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]);
    /// A key arrived by SIP INFO (merged with the other methods).
    fn handle_sip_info(&mut self, now: Instant, digit: Digit, duration: Option<Duration>);
    /// Advances timers due at `now` (pacing, end of events, detector flush).
    fn handle_timeout(&mut self, now: Instant);
    /// When `handle_timeout` must run next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next datagram to send, swapped into `packet` (the media may keep the buffer
    /// `packet` held for a later packet); returns the far end's RTP address it goes to.
    fn poll_transmit(&mut self, packet: &mut Vec<u8>) -> Option<SocketAddr>;
    /// The next event.
    fn poll_event(&mut self) -> Option<MediaEvent>;
    /// Plays these prompts one after the other, replacing whatever plays. Each reports
    /// [`MediaEvent::PromptStarted`] and [`MediaEvent::PromptFinished`]; the flow waits for
    /// the last one.
    fn play(&mut self, now: Instant, prompts: &[PromptKind]);
    /// Stops what plays now, queued prompts included (barge-in).
    fn stop_playback(&mut self, now: Instant);
    /// Sends keys (`,` = one second pause).
    fn dial(&mut self, now: Instant, keys: &str, method: DialMethod);
    /// The far end moved its media to `remote` (re-INVITE, UPDATE).
    fn redirect(&mut self, now: Instant, remote: SocketAddr);
}

/// What a media session is set up from, at answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaSetup {
    /// Where the far end receives RTP.
    pub remote: SocketAddr,
    /// Codec to send and expect.
    pub codec: Codec,
    /// Its payload type in this session.
    pub audio_pt: u8,
    /// telephone-event payload type, when negotiated.
    pub telephone_event_pt: Option<u8>,
    /// Prompt language (`en`, `en-US`).
    pub language: String,
    /// Key of the media's generator (SSRC, sequence and timestamp origins).
    pub seed: [u8; 32],
    /// SRTP keys and suite when the answer accepted our SDES offer (None: plain RTP).
    pub srtp: Option<media::SrtpConfig>,
}

/// Makes the media session of each answered call.
pub trait MediaFactory {
    /// The session type.
    type Media: Media;
    /// A session for a call just answered.
    fn create(&mut self, now: Instant, setup: &MediaSetup) -> Self::Media;
}
