//! A live call's media: the [`ReceivePath`] for what arrives, and paced sending of prompts,
//! comfort silence and dialled digits.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::prompt::Prompt;
use crate::receive::{Codec, DigitReport, ReceiveConfig, ReceivePath, ReceiveStats};

/// What a session sends and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Where RTP goes (from the SDP answer); also the latched source of received RTP.
    pub remote: SocketAddr,
    /// The negotiated audio codec (PCMU or PCMA).
    pub codec: Codec,
    /// Its payload type.
    pub audio_pt: u8,
    /// The negotiated telephone-event payload type (8 kHz), if any.
    pub telephone_event_pt: Option<u8>,
    /// Seed of the random initial SSRC, sequence number and timestamp (RFC 3550 §5.1).
    pub seed: u64,
}

/// How to dial digits.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DialMethod {
    /// RFC 4733 telephone-events (falls back to in-band without a negotiated event PT).
    Rfc4733,
    /// Q.23 tones in the audio.
    Inband,
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
}

/// What happened, for the call flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// A key press from the far end.
    Digit(DigitReport),
    /// A prompt's first packet was sent.
    PromptStarted(String),
    /// A prompt's last packet was sent.
    PromptFinished(String),
    /// A prompt was cut short by [`Session::stop_playback`].
    PromptStopped(String),
    /// Every key of a [`Session::dial`] was sent.
    DialFinished,
}

/// Send and receive statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MediaStats {
    pub ssrc: u32,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// 20 ms slots not sent because `handle_timeout` came late (skip policy).
    pub skipped_slots: u64,
    pub receive: ReceiveStats,
}

/// A live call's media.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    receive: ReceivePath,
    origin: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MediaEvent>,
}

impl Session {
    /// Starts the media of a call at `now`: the first packet is due at once.
    pub fn new(now: Instant, config: SessionConfig) -> Self {
        let receive = ReceivePath::new(ReceiveConfig {
            audio: vec![(config.audio_pt, config.codec)],
            telephone_event: config.telephone_event_pt.map(|pt| (pt, 8000)),
            source: Some(config.remote),
            reorder_window: Duration::from_millis(60),
        });
        Session {
            config,
            receive,
            origin: now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Handles a datagram received on the RTP port.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) {
        self.receive.handle_rtp(now, source, datagram);
    }

    /// Handles a DTMF key received by SIP INFO.
    pub fn handle_sip_info(&mut self, now: Instant, key: dtmf::Digit, duration: Option<Duration>) {
        self.receive.handle_sip_info(now, key, duration);
    }

    /// Sends what is due and runs the receive timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.receive.handle_timeout(now);
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.origin)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        if let Some(d) = self.receive.poll_digit() {
            return Some(MediaEvent::Digit(d));
        }
        self.events.pop_front()
    }

    /// Queues a prompt; comfort silence is sent between prompts and while idle.
    pub fn play(&mut self, now: Instant, prompt: Arc<Prompt>) {
        let _ = (now, prompt);
    }

    /// Stops the prompt playing and drops the queued ones.
    pub fn stop_playback(&mut self, now: Instant) {
        let _ = now;
    }

    /// Queues keys to dial (`0-9*#A-D`, `,` = 1 s pause).
    pub fn dial(&mut self, now: Instant, keys: &str, method: DialMethod) {
        let _ = (now, keys, method);
    }

    /// Statistics so far.
    pub fn stats(&self) -> MediaStats {
        MediaStats {
            receive: self.receive.stats().clone(),
            ..MediaStats::default()
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }
}
