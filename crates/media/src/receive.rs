//! The receive path of one direction of RTP (one call, or one flow of a capture): latch, per-SSRC
//! statistics, reorder buffer, G.711 decoding, the Goertzel receiver, RFC 4733 events and SIP
//! INFO, merged into one digit stream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::DtmfMethod;

/// An audio codec negotiated in SDP.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 μ-law (static PT 0, RFC 3551 §6).
    Pcmu,
    /// G.711 A-law (static PT 8, RFC 3551 §6).
    Pcma,
    /// G.729 (static PT 18): counted, not decoded.
    G729,
    /// Opus (dynamic PT, 48 kHz RTP clock, RFC 7587): counted, not decoded.
    Opus,
    /// Anything else, with its RTP clock rate: counted, not decoded.
    Other { clock_rate: u32 },
}

impl Codec {
    /// The RTP clock rate, Hz (RFC 3551 §6; RFC 7587 §4.1 for Opus).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G729 => 8000,
            Codec::Opus => 48_000,
            Codec::Other { clock_rate } => clock_rate,
        }
    }

    /// True for the codecs this crate decodes (G.711).
    pub fn is_decodable(self) -> bool {
        matches!(self, Codec::Pcmu | Codec::Pcma)
    }

    /// The codec of an SDP `a=rtpmap` encoding name and clock rate (case-insensitive).
    pub fn from_rtpmap(name: &str, clock_rate: u32) -> Codec {
        match (name.to_ascii_uppercase().as_str(), clock_rate) {
            ("PCMU", 8000) => Codec::Pcmu,
            ("PCMA", 8000) => Codec::Pcma,
            ("G729", 8000) => Codec::G729,
            ("OPUS", 48_000) => Codec::Opus,
            _ => Codec::Other { clock_rate },
        }
    }

    /// The codec of a static payload type (RFC 3551 Table 4), for streams without SDP.
    pub fn from_static_pt(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            18 => Some(Codec::G729),
            _ => None,
        }
    }

    /// The SDP encoding name (`PCMU`, `PCMA`, `G729`, `opus`, `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G729 => "G729",
            Codec::Opus => "opus",
            Codec::Other { .. } => "other",
        }
    }
}

/// What the receive path accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveConfig {
    /// Negotiated audio payload types and their codecs.
    pub audio: Vec<(u8, Codec)>,
    /// Negotiated telephone-event payload type and its clock rate, Hz (8000; 48000 is seen
    /// with Opus).
    pub telephone_event: Option<(u8, u32)>,
    /// Latch: only packets from this address are accepted (None: any source, for captures).
    pub source: Option<SocketAddr>,
    /// How long a packet waits for the ones missing before it (e.g. 60 ms).
    pub reorder_window: Duration,
}

/// One key press, reported once whichever methods carried it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DigitReport {
    pub digit: dtmf::Digit,
    /// The method that reported it first.
    pub method: DtmfMethod,
    /// The SSRC that carried it (None for SIP INFO).
    pub ssrc: Option<u32>,
    /// When it was reported (the `now` of the call that produced it).
    pub at: Instant,
    /// Duration known at report time: SIP INFO's `Duration`; None for in-band and RFC 4733,
    /// which are reported when the key goes down.
    pub duration: Option<Duration>,
}

/// Receive statistics of one SSRC.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamStats {
    pub ssrc: u32,
    /// Packets accepted from the latched source with this SSRC (all payload types).
    pub packets: u64,
    /// Payload bytes of those packets.
    pub bytes: u64,
    /// Cumulative packets lost, RFC 3550 A.3 (expected − received; negative with duplicates).
    pub lost: i64,
    /// Packets whose sequence number was already received (dropped).
    pub duplicates: u64,
    /// Packets that arrived after a later one (put back in order when within the window).
    pub reordered: u64,
    /// Packets that arrived after their place had been given up as lost (dropped).
    pub late: u64,
    /// Interarrival jitter, RFC 3550 A.8, in RTP timestamp units of the audio clock.
    pub jitter: u32,
    /// Interarrival jitter in milliseconds.
    pub jitter_ms: f64,
    /// Highest sequence number received, extended with the wrap count (RFC 3550 A.1).
    pub extended_max_seq: u32,
    /// The audio codec last received on this SSRC.
    pub codec: Option<Codec>,
    /// Payload types seen and how many packets of each.
    pub payload_types: Vec<(u8, u64)>,
    /// Packets with a payload type not negotiated (counted, never decoded).
    pub dropped_payload_type: u64,
    /// Audio packets of a negotiated codec this crate does not decode (Opus, G.729).
    pub undecoded: u64,
    /// RFC 4733 packets on the negotiated telephone-event payload type.
    pub event_packets: u64,
    /// Repeated end packets of events already ended (RFC 4733 §2.5.1.4: usually 2 per event).
    pub event_end_repeats: u64,
    /// Events that are not DTMF keys (codes above 15: fax tones, NSE), ignored.
    pub ignored_events: u64,
    /// Telephone-event payloads too short to hold an event.
    pub malformed_events: u64,
}

/// Receive statistics of a [`ReceivePath`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReceiveStats {
    /// Per SSRC, in order of first appearance.
    pub streams: Vec<StreamStats>,
    /// Datagrams from another address than the latched source (dropped).
    pub dropped_source: u64,
    /// Datagrams that are not RTP (dropped).
    pub malformed: u64,
    /// RTCP packets multiplexed on the RTP port (RFC 5761; not used).
    pub rtcp: u64,
    /// Packets of SSRCs beyond the number of streams tracked (dropped).
    pub dropped_streams: u64,
    /// SIP INFO digits received.
    pub sip_info: u64,
}

impl ReceiveStats {
    /// The statistics of one SSRC.
    pub fn stream(&self, ssrc: u32) -> Option<&StreamStats> {
        self.streams.iter().find(|s| s.ssrc == ssrc)
    }
}

/// One direction of RTP for one call (or one captured flow), turned into digits.
#[derive(Debug)]
pub struct ReceivePath {
    config: ReceiveConfig,
    stats: ReceiveStats,
    digits: std::collections::VecDeque<DigitReport>,
}

impl ReceivePath {
    /// A receive path for `config`.
    pub fn new(config: ReceiveConfig) -> Self {
        ReceivePath {
            config,
            stats: ReceiveStats::default(),
            digits: Default::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ReceiveConfig {
        &self.config
    }

    /// Handles one UDP datagram received on the RTP port.
    pub fn handle_rtp(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) {
        let _ = (now, source, datagram);
    }

    /// Handles a DTMF key received by SIP INFO (already parsed by `sip::info`).
    pub fn handle_sip_info(&mut self, now: Instant, key: dtmf::Digit, duration: Option<Duration>) {
        self.stats.sip_info += 1;
        self.digits.push_back(DigitReport {
            digit: key,
            method: DtmfMethod::SipInfo,
            ssrc: None,
            at: now,
            duration,
        });
    }

    /// Runs the timers that are due at `now` (reorder window, event timeouts).
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// When [`ReceivePath::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// End of stream: releases held packets, ends held digits and events.
    pub fn finish(&mut self, now: Instant) {
        let _ = now;
    }

    /// The next digit, in order of report.
    pub fn poll_digit(&mut self) -> Option<DigitReport> {
        self.digits.pop_front()
    }

    /// Statistics so far.
    pub fn stats(&self) -> &ReceiveStats {
        &self.stats
    }
}
