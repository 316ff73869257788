//! A live call's media: the [`ReceivePath`] for what arrives, and paced sending of prompts,
//! comfort silence and dialled digits.
//!
//! # Pacing
//!
//! Packet `n` is due at exactly `origin + n × 20 ms`, computed by multiplication from the fixed
//! origin (never by adding intervals, so there is no drift however long the call). Exactly one
//! packet is sent per slot, prompt or silence, because the far end expects continuous RTP.
//!
//! When the runtime wakes late (a stall: `handle_timeout` is called after more than one slot
//! has passed), the policy is **skip**: only the latest due slot is sent, the missed slots are
//! never sent, and the content (prompt, tones, events) advances past them as if they had been
//! played. So the send times stay on the grid, no burst ever leaves, the RTP timestamp stays
//! locked to the wall clock (it jumps by the skipped slots, which the far end's jitter buffer
//! treats as loss), and a prompt ends when it would have without the stall. The sequence
//! number still increases by one per packet sent (RFC 3550 §5.1), so the far end sees no loss
//! in the sequence, only a timestamp step. Skipped slots are counted in
//! [`MediaStats::skipped_slots`].
//!
//! The marker bit is set on the first packet of the session and on the first packet of each
//! prompt (a talkspurt start, RFC 3551 §4.1), and on the first packet of each RFC 4733 event
//! (RFC 4733 §2.2.2). SSRC, first sequence number and first timestamp are random (RFC 3550
//! §5.1), drawn from ChaCha20 keyed with the configured seed.
//!
//! # SRTP
//!
//! With [`SessionConfig::srtp`] set, every packet sent (RTP, and the RTCP reports) is protected
//! with our key, and every datagram from the far end's address is authenticated, replay-checked
//! and decrypted with its key before the receive path sees it ([`crate::srtp`]). A datagram
//! that fails is dropped and counted in [`MediaStats::srtp`]; plain RTP is never accepted in
//! its place.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtmf::{Digit, Generator, ToneSpec};

use crate::g711;
use crate::prompt::{FRAME_DURATION, FRAME_SAMPLES, Prompt};
use crate::receive::{Codec, DigitReport, ReceiveConfig, ReceivePath, ReceiveStats};
use crate::rfc4733::{EventSchedule, SEND_VOLUME};
use crate::rtcp::{self, RtcpPacket, SenderInfo};
use crate::rtp::PacketSpec;
use crate::srtp::{Srtp, SrtpConfig, SrtpStats};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore as _, SeedableRng as _};

/// Clock rate of the telephone-events this session sends and expects, Hz (RFC 4733 §7.1.1,
/// `telephone-event/8000` as offered).
pub const EVENT_CLOCK: u32 = 8000;
/// Length of a dialled key, and the pause after it (ITU-T Q.23 and Q.24 accept 40 ms; 100 ms
/// each way is the common default of phones and of `dtmf::ToneSpec`).
pub const DIAL_TONE: Duration = Duration::from_millis(100);
pub const DIAL_PAUSE: Duration = Duration::from_millis(100);
/// A `,` in the dial string pauses this long.
pub const DIAL_COMMA: Duration = Duration::from_secs(1);
/// How long received packets wait for missing ones before a gap is given up.
pub const REORDER_WINDOW: Duration = Duration::from_millis(60);
/// Packet buffers one session keeps for reuse: a tick sends one packet, a burst after a
/// stall a few (dial events go out three times at their end, RFC 4733 §2.5.1.4).
const SPARE_PACKETS: usize = 8;
/// Largest buffer kept for reuse, in bytes: an RTP packet of ours (12-byte header, 20 ms of
/// G.711 at 8 kHz, an SRTP tag) is about 200; a larger buffer handed in is freed instead.
const SPARE_CAPACITY: usize = 2048;

/// Keeps a sent packet's buffer in `spare` for a later packet, unless `spare` holds
/// `max_buffers` already or the buffer is empty or larger than an RTP packet needs.
pub fn keep_packet_buffer(spare: &mut Vec<Vec<u8>>, buffer: Vec<u8>, max_buffers: usize) {
    if (1..=SPARE_CAPACITY).contains(&buffer.capacity()) && spare.len() < max_buffers {
        spare.push(buffer);
    }
}

/// What a session sends and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Where RTP goes (from the SDP answer); also the latched source of received RTP.
    pub remote: SocketAddr,
    /// The negotiated audio codec: PCMU or PCMA (nothing is sent for codecs this crate does
    /// not encode).
    pub codec: Codec,
    /// Its payload type.
    pub audio_pt: u8,
    /// The negotiated telephone-event payload type (8 kHz), if any.
    pub telephone_event_pt: Option<u8>,
    /// Key of the ChaCha20 generator of the random initial SSRC, sequence number and
    /// timestamp (RFC 3550 §5.1): 32 bytes from a CSPRNG in production.
    pub seed: [u8; 32],
    /// SRTP keys and suite when the call negotiated SDES (None: plain RTP).
    pub srtp: Option<SrtpConfig>,
}

/// How to dial digits.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DialMethod {
    /// RFC 4733 telephone-events (in-band when no event payload type was negotiated).
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
    /// Our SSRC.
    pub ssrc: u32,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// Payload bytes sent (RFC 3550 §6.4.1 "sender's octet count").
    pub bytes_sent: u64,
    /// Event packets among them.
    pub event_packets_sent: u64,
    /// 20 ms slots not sent because `handle_timeout` came late (skip policy, module docs).
    pub skipped_slots: u64,
    pub receive: ReceiveStats,
    /// SRTP counters (None: plain RTP). Datagrams refused here never reach `receive`.
    pub srtp: Option<SrtpStats>,
}

/// One step of a dial string.
#[derive(Clone, Debug)]
enum DialStep {
    /// An RFC 4733 key press; the timestamp of its first slot once started.
    Event(EventSchedule, Option<u32>),
    /// Silence for this many slots.
    Pause(u32),
}

/// Something queued to send.
#[derive(Clone, Debug)]
enum Item {
    Prompt {
        prompt: Arc<Prompt>,
        /// Next frame to send.
        frame: usize,
    },
    /// Dialling by RFC 4733 events.
    Events(VecDeque<DialStep>),
    /// Dialling by tones in the audio.
    Tones(Box<Generator>),
}

/// What one slot carries.
enum Frame {
    Audio {
        samples: Option<[u8; FRAME_SAMPLES]>,
        marker: bool,
    },
    Event {
        timestamp: u32,
        marker: bool,
        payload: [u8; 4],
    },
}

/// A live call's media.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    receive: ReceivePath,
    /// Protection of what we send and receive, when SRTP was negotiated.
    srtp: Option<Srtp>,
    origin: Instant,
    /// The next slot to send.
    slot: u64,
    ssrc: u32,
    first_seq: u16,
    first_ts: u32,
    /// Packets sent (the sequence number is `first_seq + sent`).
    sent: u64,
    queue: VecDeque<Item>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MediaEvent>,
    stats: MediaStats,
    /// Packet buffers to write the next packets into: the ones [`Session::poll_transmit_into`]
    /// took back. A call sends 50 packets a second; none of them allocates once a few buffers
    /// circulate (SRTP aside: the `srtp` crate returns a fresh buffer per packet).
    spare: Vec<Vec<u8>>,
}

impl Session {
    /// Starts the media of a call at `now`: the first packet is due at once.
    pub fn new(now: Instant, config: SessionConfig) -> Self {
        let receive = ReceivePath::new(ReceiveConfig {
            audio: vec![(config.audio_pt, config.codec)],
            telephone_event: config.telephone_event_pt.map(|pt| (pt, EVENT_CLOCK)),
            source: Some(config.remote),
            reorder_window: REORDER_WINDOW,
        });
        let mut rng = ChaCha20Rng::from_seed(config.seed);
        let ssrc = rng.next_u32();
        let first_seq = rng.next_u32() as u16;
        let first_ts = rng.next_u32();
        let srtp = config.srtp.as_ref().map(Srtp::new);
        Session {
            config,
            receive,
            srtp,
            origin: now,
            slot: 0,
            ssrc,
            first_seq,
            first_ts,
            sent: 0,
            queue: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: MediaStats {
                ssrc,
                ..MediaStats::default()
            },
            spare: Vec::new(),
        }
    }

    /// Handles a datagram received on the RTP port.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) {
        match &mut self.srtp {
            // Only the far end's datagrams are worth a key; the receive path counts the others
            // as from the wrong source and drops them.
            Some(srtp) if source == self.config.remote => {
                if let Ok(plain) = srtp.unprotect_rtp(datagram) {
                    self.receive.handle_rtp(now, source, &plain);
                }
            }
            _ => self.receive.handle_rtp(now, source, datagram),
        }
    }

    /// Handles a DTMF key received by SIP INFO.
    pub fn handle_sip_info(&mut self, now: Instant, key: dtmf::Digit, duration: Option<Duration>) {
        self.receive.handle_sip_info(now, key, duration);
    }

    /// When slot `n` is due.
    fn due(&self, n: u64) -> Instant {
        // 2^32 slots of 20 ms are 2.7 years; a call never gets there.
        self.origin + FRAME_DURATION * u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Sends what is due (one packet at most: see the skip policy) and runs the receive timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.receive.handle_timeout(now);
        if now < self.due(self.slot) {
            return;
        }
        let elapsed = now.saturating_duration_since(self.origin);
        let latest = (elapsed.as_nanos() / FRAME_DURATION.as_nanos()) as u64;
        let latest = latest.max(self.slot);
        let skipped = latest - self.slot;
        self.stats.skipped_slots += skipped;
        // The skipped slots' content is consumed unsent, up to the end of what is queued.
        while self.slot < latest && !self.queue.is_empty() {
            self.next_frame();
            self.slot += 1;
        }
        self.slot = latest;
        let frame = self.next_frame();
        self.send(frame);
        self.slot += 1;
    }

    /// RTP timestamp of slot `n`.
    fn timestamp(&self, n: u64) -> u32 {
        self.first_ts
            .wrapping_add((n as u32).wrapping_mul(FRAME_SAMPLES as u32))
    }

    /// Produces the content of the current slot, advancing the queue.
    fn next_frame(&mut self) -> Frame {
        let codec = self.config.codec;
        let slot_ts = self.timestamp(self.slot);
        loop {
            let Some(item) = self.queue.front_mut() else {
                return Frame::Audio {
                    samples: silence(codec),
                    marker: false,
                };
            };
            match item {
                Item::Prompt { prompt, frame } => {
                    let Some(samples) = prompt.frame(codec, *frame).copied() else {
                        // An empty prompt (or a codec prompts are not encoded for) still
                        // starts and finishes, so that the call flow moves on.
                        let name = prompt.name().to_owned();
                        self.events
                            .push_back(MediaEvent::PromptStarted(name.clone()));
                        self.events.push_back(MediaEvent::PromptFinished(name));
                        self.queue.pop_front();
                        continue;
                    };
                    let marker = *frame == 0;
                    if marker {
                        self.events
                            .push_back(MediaEvent::PromptStarted(prompt.name().to_owned()));
                    }
                    *frame += 1;
                    if *frame == prompt.frames() {
                        self.events
                            .push_back(MediaEvent::PromptFinished(prompt.name().to_owned()));
                        self.queue.pop_front();
                    }
                    return Frame::Audio {
                        samples: Some(samples),
                        marker,
                    };
                }
                Item::Events(steps) => {
                    let Some(step) = steps.front_mut() else {
                        self.events.push_back(MediaEvent::DialFinished);
                        self.queue.pop_front();
                        continue;
                    };
                    match step {
                        DialStep::Pause(0) => {
                            steps.pop_front();
                        }
                        DialStep::Pause(n) => {
                            *n -= 1;
                            return Frame::Audio {
                                samples: silence(codec),
                                marker: false,
                            };
                        }
                        DialStep::Event(schedule, start) => match schedule.next_packet() {
                            None => {
                                steps.pop_front();
                            }
                            Some(p) => {
                                let timestamp = *start.get_or_insert(slot_ts);
                                return Frame::Event {
                                    timestamp,
                                    marker: p.marker,
                                    payload: p.payload.to_bytes(),
                                };
                            }
                        },
                    }
                }
                Item::Tones(generator) => {
                    let mut pcm = [0i16; FRAME_SAMPLES];
                    let n = generator.fill(&mut pcm);
                    if n == 0 {
                        self.events.push_back(MediaEvent::DialFinished);
                        self.queue.pop_front();
                        continue;
                    }
                    return Frame::Audio {
                        samples: encode(codec, &pcm),
                        marker: false,
                    };
                }
            }
        }
    }

    fn send(&mut self, frame: Frame) {
        let seq = self.first_seq.wrapping_add(self.sent as u16);
        let first = self.sent == 0;
        let (spec, event) = match &frame {
            Frame::Audio { samples: None, .. } => return,
            Frame::Audio {
                samples: Some(samples),
                marker,
            } => (
                PacketSpec {
                    marker: *marker || first,
                    payload_type: self.config.audio_pt,
                    sequence: seq,
                    timestamp: self.timestamp(self.slot),
                    ssrc: self.ssrc,
                    payload: samples,
                    ..PacketSpec::default()
                },
                false,
            ),
            Frame::Event {
                timestamp,
                marker,
                payload,
            } => (
                PacketSpec {
                    marker: *marker,
                    // Event frames exist only when an event PT was negotiated (`dial`).
                    payload_type: self
                        .config
                        .telephone_event_pt
                        .unwrap_or(self.config.audio_pt),
                    sequence: seq,
                    timestamp: *timestamp,
                    ssrc: self.ssrc,
                    payload,
                    ..PacketSpec::default()
                },
                true,
            ),
        };
        let mut packet = self.spare.pop().unwrap_or_default();
        packet.clear();
        if spec.write(&mut packet).is_err() {
            // Only a payload type above 127 in the configuration gets here.
            self.spare.push(packet);
            return;
        }
        let payload = match &mut self.srtp {
            None => packet,
            Some(srtp) => {
                let protected = srtp.protect_rtp(&packet);
                self.spare.push(packet);
                match protected {
                    Ok(protected) => protected,
                    // Only after 2^48 packets under one key (RFC 3711 §9.2): never sent in clear.
                    Err(_) => return,
                }
            }
        };
        self.sent += 1;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += spec.payload.len() as u64;
        self.stats.event_packets_sent += u64::from(event);
        self.transmits.push_back(Transmit {
            destination: self.config.remote,
            payload,
        });
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next = self.due(self.slot);
        Some(match self.receive.poll_timeout() {
            Some(t) => t.min(next),
            None => next,
        })
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next datagram to send, swapped into `packet`; returns where it goes. The buffer
    /// `packet` held is kept for a later packet, so a caller that passes its buffers round
    /// (a pool of sent ones) sends without an allocation per packet.
    pub fn poll_transmit_into(&mut self, packet: &mut Vec<u8>) -> Option<SocketAddr> {
        let mut t = self.transmits.pop_front()?;
        std::mem::swap(packet, &mut t.payload);
        keep_packet_buffer(&mut self.spare, t.payload, SPARE_PACKETS);
        Some(t.destination)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        self.receive.poll_digit().map(MediaEvent::Digit)
    }

    /// Queues a prompt; comfort silence is sent between prompts and while idle.
    pub fn play(&mut self, _now: Instant, prompt: Arc<Prompt>) {
        self.queue.push_back(Item::Prompt { prompt, frame: 0 });
    }

    /// Stops the prompt playing and drops the prompts queued (dialling goes on).
    pub fn stop_playback(&mut self, _now: Instant) {
        let events = &mut self.events;
        self.queue.retain(|item| match item {
            Item::Prompt { prompt, frame } => {
                if *frame > 0 {
                    events.push_back(MediaEvent::PromptStopped(prompt.name().to_owned()));
                }
                false
            }
            Item::Events(_) | Item::Tones(_) => true,
        });
    }

    /// Queues keys to dial (`0-9*#A-D`, `,` = 1 s pause; other characters are skipped). RFC
    /// 4733 falls back to in-band tones when no telephone-event payload type was negotiated.
    pub fn dial(&mut self, _now: Instant, keys: &str, method: DialMethod) {
        let slots = |d: Duration| (d.as_millis() / FRAME_DURATION.as_millis()) as u32;
        let item = match (method, self.config.telephone_event_pt) {
            (DialMethod::Rfc4733, Some(_)) => {
                let mut steps = VecDeque::new();
                for c in keys.chars() {
                    if c == ',' {
                        steps.push_back(DialStep::Pause(slots(DIAL_COMMA)));
                    } else if let Some(digit) = Digit::from_char(c) {
                        let schedule = EventSchedule::new(
                            digit,
                            DIAL_TONE,
                            FRAME_DURATION,
                            EVENT_CLOCK,
                            SEND_VOLUME,
                        );
                        steps.push_back(DialStep::Event(schedule, None));
                        steps.push_back(DialStep::Pause(slots(DIAL_PAUSE)));
                    }
                }
                Item::Events(steps)
            }
            _ => {
                let mut generator = Generator::new(ToneSpec {
                    on_ms: DIAL_TONE.as_millis() as u32,
                    off_ms: DIAL_PAUSE.as_millis() as u32,
                    ..ToneSpec::default()
                });
                for c in keys.chars() {
                    if c == ',' {
                        generator.push_pause_ms(DIAL_COMMA.as_millis() as u32);
                    } else if let Some(digit) = Digit::from_char(c) {
                        generator.push_digit(digit);
                    }
                }
                Item::Tones(Box::new(generator))
            }
        };
        self.queue.push_back(item);
    }

    /// Statistics so far.
    pub fn stats(&self) -> MediaStats {
        MediaStats {
            receive: self.receive.stats().clone(),
            srtp: self.srtp.as_ref().map(|s| s.stats().clone()),
            ..self.stats.clone()
        }
    }

    /// The far end moved its media (a re-INVITE or UPDATE with a new address): send there
    /// from now on, and accept RTP only from there.
    pub fn redirect(&mut self, remote: SocketAddr) {
        self.config.remote = remote;
        self.receive.set_source(Some(remote));
    }

    /// The configuration in force.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The receive path (statistics, latch changes).
    pub fn receive(&mut self) -> &mut ReceivePath {
        &mut self.receive
    }

    /// A compound RTCP report to send at `now` (RFC 3550 §6.4.1): an SR for our stream with a
    /// report block per SSRC received, and our CNAME (§6.5.1). `ntp` is the wall clock in NTP
    /// format (the core has no clock); the runtime sends it to the RTCP port about every 5 s
    /// (§6.2). With SRTP it is SRTCP (RFC 3711 §3.4); empty if it could not be protected.
    pub fn rtcp_report(&mut self, now: Instant, ntp: u64, cname: &str) -> Vec<u8> {
        let elapsed = now.saturating_duration_since(self.origin);
        let units =
            (elapsed.as_nanos() * u128::from(crate::prompt::SAMPLE_RATE) / 1_000_000_000) as u32;
        let sr = RtcpPacket::SenderReport {
            ssrc: self.ssrc,
            info: SenderInfo {
                ntp,
                rtp_timestamp: self.first_ts.wrapping_add(units),
                packets: self.stats.packets_sent as u32,
                octets: self.stats.bytes_sent as u32,
            },
            reports: self.receive.report_blocks(now),
        };
        let cname = RtcpPacket::Cname {
            ssrc: self.ssrc,
            cname: cname.to_owned(),
        };
        let compound = rtcp::write_compound(&[sr, cname]);
        self.protect_rtcp(compound)
    }

    /// A BYE for our SSRC (RFC 3550 §6.6), to send when the call ends (SRTCP with SRTP, empty
    /// if it could not be protected).
    pub fn rtcp_bye(&mut self) -> Vec<u8> {
        let compound = rtcp::write_compound(&[RtcpPacket::Bye {
            ssrcs: vec![self.ssrc],
        }]);
        self.protect_rtcp(compound)
    }

    fn protect_rtcp(&mut self, compound: Vec<u8>) -> Vec<u8> {
        match &mut self.srtp {
            None => compound,
            // Never sent in clear when SRTP was negotiated.
            Some(srtp) => srtp.protect_rtcp(&compound).unwrap_or_default(),
        }
    }

    /// The fixed origin of the send grid (packet `n` is due at `origin + n × 20 ms`).
    pub fn origin(&self) -> Instant {
        self.origin
    }
}

/// A silent frame in `codec` (None for codecs not encoded here): the code of a zero sample,
/// repeated (G.711 Tables 2a/2b: 0xFF in µ-law, 0xD5 in A-law), not encoded per packet.
fn silence(codec: Codec) -> Option<[u8; FRAME_SAMPLES]> {
    match codec {
        Codec::Pcmu => Some([SILENCE_ULAW; FRAME_SAMPLES]),
        Codec::Pcma => Some([SILENCE_ALAW; FRAME_SAMPLES]),
        Codec::G729 | Codec::Opus | Codec::Other { .. } => None,
    }
}

/// µ-law code of a zero sample (G.711 Table 2a).
const SILENCE_ULAW: u8 = 0xFF;
/// A-law code of a zero sample (G.711 Table 2b: 0x55 with even bits inverted).
const SILENCE_ALAW: u8 = 0xD5;

fn encode(codec: Codec, pcm: &[i16; FRAME_SAMPLES]) -> Option<[u8; FRAME_SAMPLES]> {
    let f: fn(i16) -> u8 = match codec {
        Codec::Pcmu => g711::linear_to_ulaw,
        Codec::Pcma => g711::linear_to_alaw,
        Codec::G729 | Codec::Opus | Codec::Other { .. } => return None,
    };
    Some(pcm.map(f))
}

#[cfg(test)]
mod silence_tests {
    use super::*;

    #[test]
    fn silence_is_the_encoded_zero_sample() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            assert_eq!(
                silence(codec),
                encode(codec, &[0; FRAME_SAMPLES]),
                "{codec:?}"
            );
        }
        assert_eq!(silence(Codec::G729), None);
    }
}
