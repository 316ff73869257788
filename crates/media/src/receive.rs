//! The receive path of one direction of RTP (one call, or one flow of a capture): latch, per-SSRC
//! statistics, reorder buffer, G.711 decoding, the Goertzel receiver, RFC 4733 events and SIP
//! INFO, merged into one digit stream.
//!
//! ```text
//!  datagram ─ latch (source) ─ RTP parse ─ per SSRC: sequence (A.1), jitter (A.8)
//!                                              │
//!        ┌──────────────── payload type ───────┼──────────────────────┐
//!  telephone-event PT                     audio PT (G.711)        anything else
//!  EventReceiver, at once                 reorder buffer           counted, dropped
//!  (no waiting on gaps)                   timestamp gap → fill_in   (Opus/G.729: counted
//!        │                                G.711 → dtmf::Receiver    as undecoded)
//!        └──────────── Merger (+ SIP INFO) ─────┘
//!                          │
//!                   one DigitReport per key press
//! ```
//!
//! A latched path (a live call) listens to one SSRC at a time: the first one from the latched
//! source is pinned, and another SSRC is dropped (never keys in parallel) until the pinned one
//! has been quiet for [`SSRC_QUIET`]; then the new one takes over and the old one is over
//! (real SBCs renumber mid-call; sipp replays RFC 4733 pcaps on their own SSRC after its audio
//! stream ended). A capture (no latch) keeps every SSRC, as it always did.
//!
//! Audio timing follows RTP timestamps, not sequence numbers: a gap in the timestamps (lost
//! packets, a pause in the audio while events are sent, silence suppression) is passed to the
//! Goertzel receiver as [`dtmf::Receiver::fill_in`], so digit timing stays right and no tone is
//! analysed across the gap. Event packets are not held behind gaps: an event is identified by
//! its timestamp, so its packets need no reordering, and the key press is reported as soon as
//! a second packet of it arrives (one packet alone is never a key: `rfc4733`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::DtmfMethod;
use crate::g711;
use crate::merge::{Merger, PressId};
use crate::reorder::{Admit, Reorder};
use crate::rfc4733::{EventChange, EventPayload, EventReceiver};
use crate::rtcp::{self, ReportBlock, ReportInterval, RtcpPacket};
use crate::rtp::{RtpError, RtpPacket, timestamp_delta};
use crate::stats::{Jitter, SeqStatus, Sequence};

/// SSRCs tracked per path: a call has one or two (sipp sends events on a second one); the
/// bound keeps a flood of forged SSRCs from growing memory.
pub const MAX_STREAMS: usize = 8;
/// How long the pinned SSRC of a latched path must have been silent before another SSRC from
/// the latched source may take over: ten packet times of 20 ms audio (RFC 3551 §4.2 default
/// packetization). A stream that is alive is never that quiet; sipp starts its RFC 4733 pcap
/// 300 ms after its audio ends, SBCs renumber at re-INVITEs with a longer pause.
pub const SSRC_QUIET: Duration = Duration::from_millis(200);
/// A backwards timestamp step of more than this (in audio samples, 1 s) is a discontinuity
/// (sender restart), not an overlap to trim.
const MAX_OVERLAP: u32 = 8000;
/// Samples declared lost at a timestamp discontinuity: more than the receiver bridges (60 ms),
/// so a digit held across it ends there.
const DISCONTINUITY_FILL: u64 = 8 * 100;
/// Longest timestamp gap passed to the receiver as lost audio, samples (10 s). Longer gaps
/// (a sender restarting its timestamps forward) are filled with this much: nothing is
/// analysed across a gap either way.
const MAX_FILL: u64 = 8000 * 10;

/// Where a packet's audio goes on the audio already played, by RTP timestamp.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Right after what was played; `gap` samples lost or absent before it (0: none).
    /// Gaps are capped at 10 s: nothing is analysed across one either way.
    After { gap: u64 },
    /// Its first `skip` samples were already played (overlapping senders): play the rest.
    Overlapping { skip: usize },
    /// Entirely in the past: a stale copy, nothing new.
    Stale,
    /// The sender restarted its timestamps: count `gap` samples lost (enough to end a held
    /// digit), then play it all.
    Restart { gap: u64 },
}

/// Places a packet of `len` samples at RTP `timestamp` after audio that ended at `expected`
/// (None: the first packet). The rule of the live receive path, also used to lay out a
/// capture's audio for plots.
pub fn place(expected: Option<u32>, timestamp: u32, len: u32) -> Placement {
    let Some(expected) = expected else {
        return Placement::After { gap: 0 };
    };
    let step = timestamp_delta(timestamp, expected);
    if step >= 0 {
        return Placement::After {
            gap: u64::from(step.unsigned_abs()).min(MAX_FILL),
        };
    }
    let overlap = step.unsigned_abs();
    if overlap < len {
        Placement::Overlapping {
            skip: overlap as usize,
        }
    } else if overlap <= MAX_OVERLAP {
        Placement::Stale
    } else {
        Placement::Restart {
            gap: DISCONTINUITY_FILL,
        }
    }
}

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
    /// How long the key had been down when it was reported (detector latency): from the
    /// tone's onset to the Goertzel receiver's decision (in-band), or the sender's duration in
    /// the event's first packet (RFC 4733). None for SIP INFO, which says nothing of it.
    pub latency: Option<Duration>,
}

/// Receive statistics of one SSRC.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamStats {
    pub ssrc: u32,
    /// Packets accepted from the latched source with this SSRC (all payload types).
    pub packets: u64,
    /// Payload bytes of those packets.
    pub bytes: u64,
    /// Cumulative packets lost, RFC 3550 A.3 (expected − received; duplicates are not
    /// counted as received, so this is never negative).
    pub lost: i64,
    /// Packets whose sequence number was already received (dropped; repeated RFC 4733 end
    /// packets are counted in `event_end_repeats` instead).
    pub duplicates: u64,
    /// Packets that arrived after a later one (put back in order when within the window).
    pub reordered: u64,
    /// Packets that arrived after their place had been given up as lost (dropped).
    pub late: u64,
    /// Sequence jumps of more than 3000 not (yet) confirmed by the next packet (dropped, RFC
    /// 3550 A.1), and restarts of the sequence they confirmed.
    pub sequence_jumps: u64,
    pub sequence_restarts: u64,
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
    /// Key presses reported first by this SSRC (in-band or RFC 4733).
    pub digits: u64,
    /// Packets expected and received since the first (or the sequence restart), RFC 3550 A.3:
    /// what an RTCP report's "fraction lost" is computed from.
    pub expected: u64,
    pub received: u64,
    /// The last RTCP sender report from this SSRC: middle 32 bits of its NTP timestamp, and
    /// when it arrived (for LSR/DLSR, RFC 3550 §6.4.1).
    pub last_sender_report: Option<(u32, Instant)>,
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
    /// RTCP datagrams, multiplexed on the RTP port (RFC 5761) or on their own.
    pub rtcp: u64,
    /// Packets of SSRCs beyond the number of streams tracked (dropped).
    pub dropped_streams: u64,
    /// Packets of another SSRC from the latched source while the pinned one was alive
    /// (dropped: one SSRC keys at a time).
    pub dropped_ssrc: u64,
    /// Times another SSRC took over after the pinned one went quiet.
    pub ssrc_changes: u64,
    /// SIP INFO digits received.
    pub sip_info: u64,
}

impl ReceiveStats {
    /// The statistics of one SSRC.
    pub fn stream(&self, ssrc: u32) -> Option<&StreamStats> {
        self.streams.iter().find(|s| s.ssrc == ssrc)
    }
}

/// The audio side of one SSRC.
#[derive(Clone, Debug)]
struct Audio {
    rx: dtmf::Receiver,
    /// Timestamp of the next sample expected.
    next_ts: Option<u32>,
    /// The press of the in-band digit held.
    press: Option<PressId>,
}

/// A packet waiting in the reorder buffer.
#[derive(Clone, Debug)]
enum Slot {
    /// G.711 audio to decode.
    Audio {
        timestamp: u32,
        codec: Codec,
        payload: Vec<u8>,
    },
    /// A packet handled on arrival (event) or not decoded: only its place in the sequence.
    Skip,
}

/// One SSRC.
#[derive(Clone, Debug)]
struct Stream {
    ssrc: u32,
    sequence: Sequence,
    jitter: Jitter,
    reorder: Reorder<Slot>,
    audio: Audio,
    events: Option<(EventReceiver, Option<PressId>)>,
    interval: ReportInterval,
}

/// What `handle_rtp` does with a payload type.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Audio(Codec),
    Event(u32),
    Other,
}

/// One direction of RTP for one call (or one captured flow), turned into digits.
#[derive(Debug)]
pub struct ReceivePath {
    config: ReceiveConfig,
    stats: ReceiveStats,
    streams: Vec<Stream>,
    /// Latched paths: the SSRC listened to and when its last packet arrived.
    pinned: Option<(u32, Instant)>,
    merger: Merger,
    /// Decoded samples of one packet (reused).
    scratch: Vec<i16>,
}

impl ReceivePath {
    /// A receive path for `config`.
    pub fn new(config: ReceiveConfig) -> Self {
        ReceivePath {
            config,
            stats: ReceiveStats::default(),
            streams: Vec::new(),
            pinned: None,
            merger: Merger::default(),
            scratch: Vec::with_capacity(320),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ReceiveConfig {
        &self.config
    }

    /// Changes the latched source (a re-INVITE moved the media; None accepts any). The new
    /// source's first SSRC is pinned afresh.
    pub fn set_source(&mut self, source: Option<SocketAddr>) {
        if source != self.config.source {
            self.pinned = None;
        }
        self.config.source = source;
    }

    fn kind(&self, pt: u8) -> Kind {
        if let Some((_, codec)) = self.config.audio.iter().find(|(p, _)| *p == pt) {
            return Kind::Audio(*codec);
        }
        match self.config.telephone_event {
            Some((p, clock)) if p == pt => Kind::Event(clock),
            _ => Kind::Other,
        }
    }

    /// Handles one UDP datagram received on the RTP port. Timers due at `now` run first, so a
    /// capture replayed packet by packet needs no separate timeout calls (they still help
    /// after the last packet: see [`ReceivePath::finish`]).
    pub fn handle_rtp(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) {
        self.handle_timeout(now);
        if self.config.source.is_some_and(|s| s != source) {
            self.stats.dropped_source += 1;
            return;
        }
        let packet = match RtpPacket::parse(datagram) {
            Ok(p) => p,
            Err(RtpError::Rtcp { .. }) => {
                self.on_rtcp(now, datagram);
                return;
            }
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        if self.config.source.is_some() && !self.pin(now, packet.ssrc) {
            self.stats.dropped_ssrc += 1;
            return;
        }
        let kind = self.kind(packet.payload_type);
        let Some(index) = self.stream_index(packet.ssrc, packet.sequence.0) else {
            self.stats.dropped_streams += 1;
            return;
        };
        let ReceivePath {
            stats,
            streams,
            merger,
            scratch,
            ..
        } = self;
        let stream = &mut streams[index];
        let st = &mut stats.streams[index];
        st.packets += 1;
        st.bytes += packet.payload.len() as u64;
        match st
            .payload_types
            .iter_mut()
            .find(|(pt, _)| *pt == packet.payload_type)
        {
            Some((_, n)) => *n += 1,
            None => st.payload_types.push((packet.payload_type, 1)),
        }

        let (status, ext) = if st.packets == 1 {
            (SeqStatus::Ahead, stream.sequence.highest())
        } else {
            stream.sequence.update(packet.sequence.0)
        };
        match status {
            SeqStatus::Jump => {
                st.sequence_jumps += 1;
                return;
            }
            SeqStatus::Restarted => {
                st.sequence_restarts += 1;
                // Release what waited under the old numbering, then start over.
                while let Some((_, slot)) = stream.reorder.pop_first() {
                    play(now, stream, st, merger, scratch, slot);
                }
                stream.reorder.reset();
                stream.jitter.reset();
            }
            SeqStatus::Reordered => st.reordered += 1,
            SeqStatus::Ahead | SeqStatus::Duplicate | SeqStatus::TooOld => {}
        }

        match kind {
            Kind::Event(clock) => {
                st.event_packets += 1;
                on_event_packet(now, stream, st, merger, &packet, clock);
            }
            Kind::Audio(codec) => {
                if st
                    .codec
                    .is_some_and(|c| c.clock_rate() != codec.clock_rate())
                {
                    // A.8 transit times at another clock are not comparable.
                    stream.jitter.reset();
                }
                st.codec = Some(codec);
                if !codec.is_decodable() {
                    st.undecoded += 1;
                }
                if !matches!(status, SeqStatus::Duplicate | SeqStatus::TooOld) {
                    stream
                        .jitter
                        .update(now, packet.timestamp, codec.clock_rate());
                }
            }
            Kind::Other => st.dropped_payload_type += 1,
        }

        match status {
            SeqStatus::Duplicate if !matches!(kind, Kind::Event(_)) => st.duplicates += 1,
            SeqStatus::TooOld if !matches!(kind, Kind::Event(_)) => st.late += 1,
            SeqStatus::Duplicate | SeqStatus::TooOld | SeqStatus::Jump => {}
            SeqStatus::Ahead | SeqStatus::Reordered | SeqStatus::Restarted => {
                let decode = match kind {
                    Kind::Audio(codec) if codec.is_decodable() => Some(codec),
                    _ => None,
                };
                match stream.reorder.offer(ext) {
                    Admit::Now => {
                        if let Some(codec) = decode {
                            decode_into(scratch, codec, packet.payload);
                            feed(now, stream, st, merger, scratch, packet.timestamp);
                        }
                        drain(now, stream, st, merger, scratch, false);
                    }
                    Admit::Hold => {
                        let slot = match decode {
                            Some(codec) => Slot::Audio {
                                timestamp: packet.timestamp,
                                codec,
                                payload: packet.payload.to_vec(),
                            },
                            None => Slot::Skip,
                        };
                        stream.reorder.hold(now, ext, slot);
                        drain(now, stream, st, merger, scratch, false);
                    }
                    Admit::Late => {
                        if !matches!(kind, Kind::Event(_)) {
                            st.late += 1;
                        }
                    }
                }
            }
        }
        st.lost = stream.sequence.lost();
        st.expected = stream.sequence.expected();
        st.received = stream.sequence.received();
        st.extended_max_seq = stream.sequence.extended_max();
        st.jitter = stream.jitter.units();
        st.jitter_ms = f64::from(st.jitter) * 1000.0
            / f64::from(st.codec.map(Codec::clock_rate).unwrap_or(8000).max(1));
    }

    /// Whether a packet of `ssrc` from the latched source is listened to (see the module
    /// documentation); a takeover ends what the old SSRC still held.
    fn pin(&mut self, now: Instant, ssrc: u32) -> bool {
        match self.pinned {
            Some((pinned, _)) if pinned == ssrc => {}
            Some((pinned, last)) => {
                if now.saturating_duration_since(last) < SSRC_QUIET {
                    return false;
                }
                self.stats.ssrc_changes += 1;
                self.retire(now, pinned);
            }
            None => {}
        }
        self.pinned = Some((ssrc, now));
        true
    }

    /// The stream of `ssrc` is over: release its held audio, end its held digits.
    fn retire(&mut self, now: Instant, ssrc: u32) {
        let ReceivePath {
            stats,
            streams,
            merger,
            scratch,
            ..
        } = self;
        let Some(i) = streams.iter().position(|s| s.ssrc == ssrc) else {
            return;
        };
        let (stream, st) = (&mut streams[i], &mut stats.streams[i]);
        drain(now, stream, st, merger, scratch, true);
        let Stream { audio, ssrc, .. } = stream;
        audio
            .rx
            .finish(|e| on_inband(now, merger, &mut audio.press, *ssrc, st, e));
        audio.next_ts = None;
        if let Some((events, press)) = &mut stream.events {
            events.finish(now, |change| on_change(now, merger, press, st, change));
        }
    }

    /// Handles a datagram received on the RTCP port (RTP port + 1). Sender reports are noted
    /// for the LSR/DLSR of our receiver reports; the latch compares the IP address only.
    pub fn handle_rtcp(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) {
        if self.config.source.is_some_and(|s| s.ip() != source.ip()) {
            self.stats.dropped_source += 1;
            return;
        }
        self.on_rtcp(now, datagram);
    }

    fn on_rtcp(&mut self, now: Instant, datagram: &[u8]) {
        let Ok(packets) = rtcp::parse(datagram) else {
            self.stats.malformed += 1;
            return;
        };
        self.stats.rtcp += 1;
        for p in packets {
            if let RtcpPacket::SenderReport { ssrc, info, .. } = p
                && let Some(st) = self.stats.streams.iter_mut().find(|s| s.ssrc == ssrc)
            {
                st.last_sender_report = Some((rtcp::ntp_middle(info.ntp), now));
            }
        }
    }

    /// Report blocks for every SSRC received, for an RTCP SR or RR sent at `now` (each call
    /// starts a new interval for "fraction lost").
    pub fn report_blocks(&mut self, now: Instant) -> Vec<ReportBlock> {
        self.streams
            .iter_mut()
            .zip(&self.stats.streams)
            .take(rtcp::MAX_BLOCKS)
            .map(|(stream, st)| stream.interval.report(now, st))
            .collect()
    }

    /// The stream of `ssrc`, created on first sight (None when too many are tracked).
    fn stream_index(&mut self, ssrc: u32, seq: u16) -> Option<usize> {
        if let Some(i) = self.streams.iter().position(|s| s.ssrc == ssrc) {
            return Some(i);
        }
        if self.streams.len() >= MAX_STREAMS {
            return None;
        }
        self.streams.push(Stream {
            ssrc,
            sequence: Sequence::new(seq),
            jitter: Jitter::default(),
            reorder: Reorder::new(self.config.reorder_window),
            audio: Audio {
                rx: dtmf::Receiver::new(),
                next_ts: None,
                press: None,
            },
            events: None,
            interval: ReportInterval::default(),
        });
        self.stats.streams.push(StreamStats {
            ssrc,
            ..StreamStats::default()
        });
        Some(self.streams.len() - 1)
    }

    /// Handles a DTMF key received by SIP INFO (already parsed by `sip::info`).
    pub fn handle_sip_info(&mut self, now: Instant, key: dtmf::Digit, duration: Option<Duration>) {
        self.handle_timeout(now);
        self.stats.sip_info += 1;
        self.merger
            .key_down(now, key, DtmfMethod::SipInfo, None, false, duration, None);
    }

    /// Runs the timers that are due at `now` (reorder window, event timeouts).
    pub fn handle_timeout(&mut self, now: Instant) {
        let ReceivePath {
            stats,
            streams,
            merger,
            scratch,
            ..
        } = self;
        for (stream, st) in streams.iter_mut().zip(stats.streams.iter_mut()) {
            drain(now, stream, st, merger, scratch, false);
            if let Some((events, press)) = &mut stream.events {
                events.handle_timeout(now, |change| on_change(now, merger, press, st, change));
            }
        }
    }

    /// When [`ReceivePath::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.streams
            .iter()
            .flat_map(|s| {
                [
                    s.reorder.deadline(),
                    s.events.as_ref().and_then(|(e, _)| e.deadline()),
                ]
            })
            .flatten()
            .min()
    }

    /// End of stream: releases held packets, ends held digits and events. The path can be fed
    /// again afterwards.
    pub fn finish(&mut self, now: Instant) {
        let ReceivePath {
            stats,
            streams,
            merger,
            scratch,
            ..
        } = self;
        for (stream, st) in streams.iter_mut().zip(stats.streams.iter_mut()) {
            drain(now, stream, st, merger, scratch, true);
            let Stream { audio, ssrc, .. } = stream;
            audio
                .rx
                .finish(|e| on_inband(now, merger, &mut audio.press, *ssrc, st, e));
            audio.next_ts = None;
            if let Some((events, press)) = &mut stream.events {
                events.finish(now, |change| on_change(now, merger, press, st, change));
            }
        }
    }

    /// The next digit, in order of report.
    pub fn poll_digit(&mut self) -> Option<DigitReport> {
        self.merger.poll()
    }

    /// Statistics so far.
    pub fn stats(&self) -> &ReceiveStats {
        &self.stats
    }
}

/// Releases what the reorder buffer has ready (and, with `all`, everything it holds).
fn drain(
    now: Instant,
    stream: &mut Stream,
    st: &mut StreamStats,
    merger: &mut Merger,
    scratch: &mut Vec<i16>,
    all: bool,
) {
    loop {
        let next = match stream.reorder.pop_ready() {
            Some(x) => Some(x),
            None if all => stream.reorder.pop_first(),
            None => stream.reorder.pop_expired(now),
        };
        let Some((_, slot)) = next else {
            return;
        };
        play(now, stream, st, merger, scratch, slot);
    }
}

/// Handles one released slot.
fn play(
    now: Instant,
    stream: &mut Stream,
    st: &mut StreamStats,
    merger: &mut Merger,
    scratch: &mut Vec<i16>,
    slot: Slot,
) {
    if let Slot::Audio {
        timestamp,
        codec,
        payload,
    } = slot
    {
        decode_into(scratch, codec, &payload);
        feed(now, stream, st, merger, scratch, timestamp);
    }
}

fn decode_into(out: &mut Vec<i16>, codec: Codec, payload: &[u8]) {
    out.clear();
    match codec {
        Codec::Pcmu => out.extend(payload.iter().map(|&b| g711::ulaw_to_linear(b))),
        Codec::Pcma => out.extend(payload.iter().map(|&b| g711::alaw_to_linear(b))),
        Codec::G729 | Codec::Opus | Codec::Other { .. } => {}
    }
}

/// Feeds decoded audio starting at RTP `timestamp` to the Goertzel receiver, passing timestamp
/// gaps as lost audio.
fn feed(
    now: Instant,
    stream: &mut Stream,
    st: &mut StreamStats,
    merger: &mut Merger,
    samples: &[i16],
    timestamp: u32,
) {
    let Stream { audio, ssrc, .. } = stream;
    let ssrc = *ssrc;
    // G.711 is one sample per byte; a UDP payload is under 65536 bytes.
    let total = samples.len() as u32;
    let mut on_event = |e| on_inband(now, merger, &mut audio.press, ssrc, st, e);
    let start = match place(audio.next_ts, timestamp, total) {
        Placement::After { gap } | Placement::Restart { gap } => {
            audio.rx.fill_in(gap, &mut on_event);
            0
        }
        Placement::Overlapping { skip } => skip,
        Placement::Stale => return,
    };
    audio.next_ts = Some(timestamp.wrapping_add(total));
    audio.rx.process(&samples[start..], on_event);
}

/// An in-band receiver event into the merger.
fn on_inband(
    now: Instant,
    merger: &mut Merger,
    press: &mut Option<PressId>,
    ssrc: u32,
    st: &mut StreamStats,
    event: dtmf::Event,
) {
    match event {
        dtmf::Event::Start {
            digit,
            start,
            reported_at,
        } => {
            let latency = Duration::from_micros(
                reported_at.saturating_sub(start) * 1_000_000 / u64::from(dtmf::SAMPLE_RATE),
            );
            let (id, new) = merger.key_down(
                now,
                digit,
                DtmfMethod::Inband,
                Some(ssrc),
                true,
                None,
                Some(latency),
            );
            st.digits += u64::from(new);
            if let Some(old) = press.replace(id) {
                merger.key_up(now, old);
            }
        }
        dtmf::Event::End { .. } => {
            if let Some(id) = press.take() {
                merger.key_up(now, id);
            }
        }
    }
}

/// One telephone-event packet.
fn on_event_packet(
    now: Instant,
    stream: &mut Stream,
    st: &mut StreamStats,
    merger: &mut Merger,
    packet: &RtpPacket<'_>,
    clock: u32,
) {
    let (events, press) = stream
        .events
        .get_or_insert_with(|| (EventReceiver::new(clock), None));
    let blocks = match EventPayload::parse_all(packet.payload, packet.timestamp) {
        Ok(blocks) => blocks,
        Err(_) => {
            st.malformed_events += 1;
            return;
        }
    };
    for (timestamp, event) in blocks {
        events.on_event(
            now,
            timestamp,
            packet.sequence.0,
            packet.marker,
            event,
            |change| on_change(now, merger, press, st, change),
        );
    }
}

/// An RFC 4733 receiver change into the merger.
fn on_change(
    now: Instant,
    merger: &mut Merger,
    press: &mut Option<PressId>,
    st: &mut StreamStats,
    change: EventChange,
) {
    match change {
        EventChange::Started { digit, elapsed, .. } => {
            let (id, new) = merger.key_down(
                now,
                digit,
                DtmfMethod::Rfc4733,
                Some(st.ssrc),
                true,
                None,
                Some(elapsed),
            );
            st.digits += u64::from(new);
            if let Some(old) = press.replace(id) {
                merger.key_up(now, old);
            }
        }
        EventChange::Ended { .. } => {
            if let Some(id) = press.take() {
                merger.key_up(now, id);
            }
        }
        EventChange::EndRepeat => st.event_end_repeats += 1,
        EventChange::NotDtmf => st.ignored_events += 1,
        EventChange::Stale | EventChange::Pending | EventChange::Duplicate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_placed_by_timestamp() {
        assert_eq!(place(None, 1234, 160), Placement::After { gap: 0 });
        assert_eq!(place(Some(1000), 1000, 160), Placement::After { gap: 0 });
        // One 20 ms packet lost.
        assert_eq!(place(Some(1000), 1160, 160), Placement::After { gap: 160 });
        // Across the 32-bit wrap.
        assert_eq!(
            place(Some(u32::MAX - 79), 80, 160),
            Placement::After { gap: 160 }
        );
        // A jump forward is capped at 10 s.
        assert_eq!(
            place(Some(0), 1 << 30, 160),
            Placement::After { gap: MAX_FILL }
        );
        // 80 samples already played.
        assert_eq!(
            place(Some(1000), 920, 160),
            Placement::Overlapping { skip: 80 }
        );
        // Old copies, up to a second back.
        assert_eq!(place(Some(10_000), 9_000, 160), Placement::Stale);
        assert_eq!(place(Some(10_000), 2_000, 160), Placement::Stale);
        // Further back: the sender restarted.
        assert_eq!(
            place(Some(100_000), 5_000, 160),
            Placement::Restart {
                gap: DISCONTINUITY_FILL
            }
        );
    }
}
