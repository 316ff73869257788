//! Which UDP flows of a capture are RTP, and what their payload types mean.
//!
//! A flow is one (source, destination) address pair, as a live call's receive path sees it:
//! one source latched, any number of SSRCs (sipp sends its RFC 4733 events on a second SSRC).
//!
//! 1. With SIP in the capture: a flow whose destination (else source, for symmetric RTP) is
//!    the `c=`/`m=audio` endpoint of an SDP gets that SDP's payload types, exactly as a live
//!    call would negotiate them; PTs not in the SDP are not decoded (a live call drops them).
//! 2. Without SDP for it: a flow whose datagrams are nearly all RTP v2 with a consistent SSRC
//!    and small sequence steps is RTP. Static PTs mean what RFC 3551 says (0 PCMU, 8 PCMA,
//!    18 G.729 …); a dynamic PT whose payloads are all 4-byte RFC 4733 event blocks is taken
//!    for telephone-event at 8000 Hz (what every SDP in the real captures says, even the
//!    48 kHz Opus one).
//!
//! Flows are summed up datagram by datagram ([`Flows`]) and classified at the end, when every
//! SDP of the capture is known; nothing per packet is kept. Memory is bounded: at most
//! [`MAX_FLOWS`] flows and [`MAX_SSRCS`] SSRCs are followed (a busy trunk's capture has two
//! flows per call); datagrams of further flows are counted, not analysed.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::net::Datagram;
use crate::payload::{Encoding, NARROWBAND_HZ, Origin, PayloadType, RtpHeader};
use crate::sipscan::SipFacts;

/// Fewest RTP packets for a flow found by heuristics (the shortest real event-only capture,
/// one key without end packets, has 7).
const MIN_HEURISTIC_PACKETS: usize = 3;
/// Share of a flow's datagrams that must parse as RTP for heuristics to call it RTP.
const MIN_RTP_SHARE: f64 = 0.9;
/// Share of consecutive same-SSRC packet pairs whose sequence step must be small.
const MIN_SEQ_CONTINUITY: f64 = 0.8;
/// Largest forward sequence step taken as continuity (packets lost or filtered out between:
/// the event-only captures have their audio packets filtered, steps of ~10).
const MAX_SEQ_STEP: u16 = 200;
/// Share of a dynamic PT's packets that must look like RFC 4733 event blocks.
const MIN_EVENT_SHAPE_SHARE: f64 = 0.9;
/// RFC 4733 event block size, bytes (event, E/R/volume, duration).
const EVENT_BLOCK: usize = 4;
/// Most event blocks we accept in one packet (RFC 4733 §2.5.1.5 allows several).
const MAX_EVENT_BLOCKS: usize = 4;
/// UDP flows followed at once.
pub const MAX_FLOWS: usize = 4096;
/// SSRCs followed, over all flows (each costs a few hundred bytes).
pub const MAX_SSRCS: usize = 8192;
/// Sequence numbers behind the highest remembered for duplicate detection (a packet older
/// than this counts as reordered, not as a duplicate: 20 s of 20 ms packets).
const DUPLICATE_WINDOW: i64 = 1024;

/// How a stream was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// Described by SDP in the capture (the Call-ID of the SIP message carrying it).
    Sdp {
        /// Call-ID.
        call_id: String,
    },
    /// Recognised from the packets alone.
    Heuristic,
    /// No RTP: SIP INFO key presses of one direction of a dialog.
    SipInfoOnly {
        /// Call-ID.
        call_id: String,
    },
}

impl Discovery {
    /// `sdp`, `heuristic` or `sip_info`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Discovery::Sdp { .. } => "sdp",
            Discovery::Heuristic => "heuristic",
            Discovery::SipInfoOnly { .. } => "sip_info",
        }
    }
}

/// Sequence-number facts of one SSRC in one flow (RFC 3550 §A.3 style counting).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SsrcSummary {
    /// The SSRC.
    pub ssrc: u32,
    /// Packets received.
    pub packets: u64,
    /// Packets expected from the first to the highest extended sequence number.
    pub expected: u64,
    /// Expected minus received (never negative; duplicates make up for losses).
    pub lost: u64,
    /// Packets whose sequence number was seen before.
    pub duplicates: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// Payload types seen on this SSRC with their packet counts, ascending PT.
    pub payload_types: Vec<(u8, u64)>,
    /// First and last packet time, ns since the first frame.
    pub first_ns: u64,
    /// Last packet time, ns since the first frame.
    pub last_ns: u64,
}

/// One RTP flow (or, for SIP INFO without RTP, one direction of a dialog).
#[derive(Clone, Debug)]
pub struct Stream {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// How it was found.
    pub discovery: Discovery,
    /// What the payload types mean for the receive path (negotiated or assumed).
    pub payload_types: Vec<PayloadType>,
    /// Its RTP datagrams (what the receive path is fed, besides SIP INFO).
    pub packets: u64,
    /// Indexes into [`crate::sipscan::SipFacts::info_digits`] of the SIP INFO key presses
    /// fed into this stream's receive path (the INFOs of its sender in the same call).
    pub info: Vec<usize>,
    /// Per-SSRC figures, in order of first appearance.
    pub ssrcs: Vec<SsrcSummary>,
    /// Datagrams of the flow that are not RTP.
    pub non_rtp: u64,
    /// Time of its first packet or INFO, ns since the first frame.
    pub first_ns: u64,
}

impl Stream {
    /// `src->dst`, the stream's name in reports.
    pub fn name(&self) -> String {
        format!("{}->{}", self.src, self.dst)
    }

    /// The telephone-event PT and its clock rate, if any.
    pub fn telephone_event(&self) -> Option<(u8, u32)> {
        self.payload_types
            .iter()
            .find(|p| p.encoding == Encoding::TelephoneEvent)
            .map(|p| (p.pt, p.clock_rate))
    }

    /// Whether any payload type of the stream is G.711 audio.
    pub fn has_g711(&self) -> bool {
        self.payload_types.iter().any(|p| p.encoding.is_g711())
    }

    /// The SSRC with the most packets of a G.711 payload type of the stream (the audio a plot
    /// shows), if any.
    pub fn audio_ssrc(&self) -> Option<u32> {
        self.ssrcs
            .iter()
            .map(|s| {
                let n: u64 = s
                    .payload_types
                    .iter()
                    .filter(|(pt, _)| {
                        self.payload_types
                            .iter()
                            .any(|p| p.pt == *pt && p.encoding.is_g711())
                    })
                    .map(|(_, n)| n)
                    .sum();
                (n, s.ssrc)
            })
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, _)| *n)
            .map(|(_, ssrc)| ssrc)
    }
}

/// The flows of a capture, summed up datagram by datagram.
#[derive(Debug, Default)]
pub(crate) struct Flows {
    index: HashMap<(SocketAddr, SocketAddr), usize>,
    flows: Vec<Flow>,
    ssrcs: usize,
    /// Datagrams of flows beyond [`MAX_FLOWS`].
    pub untracked: u64,
}

/// What is known of one flow.
#[derive(Debug)]
struct Flow {
    src: SocketAddr,
    dst: SocketAddr,
    /// All its datagrams, those that are not STUN or RTCP, and those that parse as RTP.
    datagrams: u64,
    others: u64,
    rtp: u64,
    first_rtp_ns: u64,
    ssrcs: Vec<SsrcAcc>,
    /// RTP packets of SSRCs beyond [`MAX_SSRCS`] (never "recurring").
    untracked_ssrc_packets: u64,
    /// Consecutive same-SSRC packet pairs, and those with a small forward step.
    pairs: u64,
    continuous: u64,
    /// Payload types in order of appearance: packets, and packets shaped like events.
    pts: Vec<PtAcc>,
}

#[derive(Debug)]
struct PtAcc {
    pt: u8,
    packets: u64,
    event_shaped: u64,
}

/// Sequence accounting of one SSRC (RFC 3550 §A.3 style).
#[derive(Debug)]
struct SsrcAcc {
    summary: SsrcSummary,
    first_ext: i64,
    highest_ext: i64,
    last_seq: u16,
    /// Which of the last [`DUPLICATE_WINDOW`] extended numbers were seen (bit `ext % 1024`).
    seen: [u64; (DUPLICATE_WINDOW / 64) as usize],
}

impl SsrcAcc {
    fn new(ssrc: u32, seq: u16, at_ns: u64) -> SsrcAcc {
        SsrcAcc {
            summary: SsrcSummary {
                ssrc,
                first_ns: at_ns,
                ..SsrcSummary::default()
            },
            first_ext: i64::from(seq),
            highest_ext: i64::from(seq),
            last_seq: seq,
            seen: [0; (DUPLICATE_WINDOW / 64) as usize],
        }
    }

    /// Counts one packet; true when it had been seen before.
    fn packet(&mut self, h: &RtpHeader, at_ns: u64) -> bool {
        // Extend the 16-bit sequence number to the value closest to the highest so far.
        let base = self.highest_ext;
        let ext = base + i64::from(h.seq.wrapping_sub(base as u16) as i16);
        let s = &mut self.summary;
        s.packets += 1;
        s.last_ns = at_ns;
        match s.payload_types.binary_search_by_key(&h.pt, |(pt, _)| *pt) {
            Ok(k) => s.payload_types[k].1 += 1,
            Err(k) => s.payload_types.insert(k, (h.pt, 1)),
        }
        if ext > self.highest_ext {
            // Forget the numbers that fall out of the window.
            let step = ext - self.highest_ext;
            if step >= DUPLICATE_WINDOW {
                self.seen = [0; (DUPLICATE_WINDOW / 64) as usize];
            } else {
                for e in self.highest_ext + 1..=ext {
                    self.clear(e);
                }
            }
        }
        let duplicate = ext > self.highest_ext - DUPLICATE_WINDOW && self.is_seen(ext);
        if duplicate {
            self.summary.duplicates += 1;
        } else {
            if ext < self.highest_ext {
                self.summary.reordered += 1;
            }
            if ext > self.highest_ext - DUPLICATE_WINDOW {
                self.mark(ext);
            }
        }
        self.highest_ext = self.highest_ext.max(ext);
        self.first_ext = self.first_ext.min(ext);
        duplicate
    }

    fn bit(ext: i64) -> (usize, u64) {
        let slot = ext.rem_euclid(DUPLICATE_WINDOW) as usize;
        (slot / 64, 1 << (slot % 64))
    }

    fn is_seen(&self, ext: i64) -> bool {
        let (word, mask) = SsrcAcc::bit(ext);
        self.seen[word] & mask != 0
    }

    fn mark(&mut self, ext: i64) {
        let (word, mask) = SsrcAcc::bit(ext);
        self.seen[word] |= mask;
    }

    fn clear(&mut self, ext: i64) {
        let (word, mask) = SsrcAcc::bit(ext);
        self.seen[word] &= !mask;
    }

    fn finish(mut self) -> SsrcSummary {
        let expected = (self.highest_ext - self.first_ext + 1).max(0) as u64;
        self.summary.expected = expected;
        self.summary.lost = expected.saturating_sub(self.summary.packets - self.summary.duplicates);
        self.summary
    }
}

impl Flows {
    /// Takes one UDP datagram that is not SIP.
    pub fn datagram(&mut self, d: &Datagram) {
        let key = (d.src, d.dst);
        let index = match self.index.get(&key) {
            Some(&i) => i,
            None if self.flows.len() >= MAX_FLOWS => {
                self.untracked += 1;
                return;
            }
            None => {
                self.flows.push(Flow {
                    src: d.src,
                    dst: d.dst,
                    datagrams: 0,
                    others: 0,
                    rtp: 0,
                    first_rtp_ns: 0,
                    ssrcs: Vec::new(),
                    untracked_ssrc_packets: 0,
                    pairs: 0,
                    continuous: 0,
                    pts: Vec::new(),
                });
                self.index.insert(key, self.flows.len() - 1);
                self.flows.len() - 1
            }
        };
        let flow = &mut self.flows[index];
        flow.datagrams += 1;
        // STUN keep-alives and RTCP share the port with RTP (ICE, RFC 5761): they neither
        // make nor break a flow.
        if !is_stun_or_rtcp(&d.payload) {
            flow.others += 1;
        }
        let Some(h) = RtpHeader::parse(&d.payload) else {
            return;
        };
        if flow.rtp == 0 {
            flow.first_rtp_ns = d.at_ns;
        }
        flow.rtp += 1;
        let payload = &d.payload[h.payload_offset..h.payload_offset + h.payload_len];
        match flow.pts.iter_mut().find(|p| p.pt == h.pt) {
            Some(p) => {
                p.packets += 1;
                p.event_shaped += u64::from(is_event_shaped(payload));
            }
            None => flow.pts.push(PtAcc {
                pt: h.pt,
                packets: 1,
                event_shaped: u64::from(is_event_shaped(payload)),
            }),
        }
        let acc = match flow.ssrcs.iter().position(|s| s.summary.ssrc == h.ssrc) {
            Some(i) => {
                let acc = &mut flow.ssrcs[i];
                flow.pairs += 1;
                // Step 0 is a repeated packet (sipp repeats its end packets with one seq).
                if h.seq.wrapping_sub(acc.last_seq) <= MAX_SEQ_STEP {
                    flow.continuous += 1;
                }
                acc.last_seq = h.seq;
                acc
            }
            None if self.ssrcs >= MAX_SSRCS => {
                flow.untracked_ssrc_packets += 1;
                return;
            }
            None => {
                self.ssrcs += 1;
                flow.ssrcs.push(SsrcAcc::new(h.ssrc, h.seq, d.at_ns));
                let Some(acc) = flow.ssrcs.last_mut() else {
                    return;
                };
                acc
            }
        };
        acc.packet(&h, d.at_ns);
    }

    /// The RTP streams, with the SIP INFO key presses attached, by first packet time.
    pub fn finish(self, sip: &SipFacts) -> Vec<Stream> {
        let mut streams: Vec<Stream> = self
            .flows
            .into_iter()
            .filter_map(|flow| classify(flow, sip))
            .collect();
        attach_info(&mut streams, sip);
        streams.sort_by_key(|s| s.first_ns);
        streams
    }
}

fn classify(flow: Flow, sip: &SipFacts) -> Option<Stream> {
    if flow.rtp == 0 {
        return None;
    }
    let sdp = sdp_for(flow.dst, sip).or_else(|| sdp_for(flow.src, sip));
    let (discovery, payload_types) = match sdp {
        Some((call_id, pts)) => (Discovery::Sdp { call_id }, pts),
        None => {
            if !looks_like_rtp_flow(&flow) {
                return None;
            }
            (Discovery::Heuristic, guess_payload_types(&flow))
        }
    };
    Some(Stream {
        src: flow.src,
        dst: flow.dst,
        discovery,
        payload_types,
        packets: flow.rtp,
        info: Vec::new(),
        ssrcs: flow.ssrcs.into_iter().map(SsrcAcc::finish).collect(),
        non_rtp: flow.datagrams - flow.rtp,
        first_ns: flow.first_rtp_ns,
    })
}

/// The payload types the SDPs for `endpoint` give (later SDPs override earlier meanings of a
/// PT), with the Call-ID of the first.
fn sdp_for(endpoint: SocketAddr, sip: &SipFacts) -> Option<(String, Vec<PayloadType>)> {
    let mut found: Option<(String, Vec<PayloadType>)> = None;
    for media in sip.media.iter().filter(|m| m.endpoint == endpoint) {
        let (_, pts) = found.get_or_insert_with(|| (media.call_id.clone(), Vec::new()));
        for pt in &media.payload_types {
            match pts.iter_mut().find(|p| p.pt == pt.pt) {
                Some(existing) => *existing = pt.clone(),
                None => pts.push(pt.clone()),
            }
        }
    }
    found
}

/// Heuristic RTP test of a flow with no SDP: nearly every datagram RTP, enough packets, nearly
/// all of them in SSRCs that recur (any number of SSRCs: senders change it on re-INVITE, hold,
/// or a new call on the same ports), and each SSRC's sequence numbers mostly stepping forward
/// by small amounts.
fn looks_like_rtp_flow(flow: &Flow) -> bool {
    let rtp = flow.rtp as f64;
    if flow.rtp < MIN_HEURISTIC_PACKETS as u64 || rtp < MIN_RTP_SHARE * flow.others as f64 {
        return false;
    }
    let recurring: u64 = flow
        .ssrcs
        .iter()
        .map(|s| s.summary.packets)
        .filter(|n| *n >= MIN_HEURISTIC_PACKETS as u64)
        .sum();
    if (recurring as f64) < MIN_RTP_SHARE * rtp {
        return false;
    }
    flow.continuous as f64 >= MIN_SEQ_CONTINUITY * flow.pairs as f64
}

/// STUN magic cookie (RFC 5389 §6), bytes 4..8 of every STUN message.
const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// RTCP packet types (RFC 3550 §12.1 SR 200 … RFC 4585 PSFB 206, RFC 3611 XR 207).
const RTCP_PACKET_TYPES: std::ops::RangeInclusive<u8> = 200..=207;

/// Whether a datagram is a STUN message or an RTCP packet.
fn is_stun_or_rtcp(payload: &[u8]) -> bool {
    let stun = payload.len() >= 20 && payload[0] < 2 && payload[4..8] == STUN_MAGIC_COOKIE;
    let rtcp =
        payload.len() >= 8 && payload[0] >> 6 == 2 && RTCP_PACKET_TYPES.contains(&payload[1]);
    stun || rtcp
}

/// Payload types of a flow without SDP: the static table, and telephone-event for a dynamic
/// PT whose payloads are RFC 4733 event blocks.
fn guess_payload_types(flow: &Flow) -> Vec<PayloadType> {
    flow.pts
        .iter()
        .map(|acc| {
            let pt = acc.pt;
            let fixed = PayloadType::from_static(pt, Origin::Static);
            if !matches!(fixed.encoding, Encoding::Other(_)) {
                return fixed;
            }
            if acc.event_shaped as f64 >= MIN_EVENT_SHAPE_SHARE * acc.packets as f64 {
                PayloadType {
                    pt,
                    encoding: Encoding::TelephoneEvent,
                    clock_rate: NARROWBAND_HZ,
                    origin: Origin::Guessed,
                }
            } else {
                PayloadType {
                    pt,
                    encoding: Encoding::Other(format!("dynamic PT {pt}")),
                    clock_rate: NARROWBAND_HZ,
                    origin: Origin::Guessed,
                }
            }
        })
        .collect()
}

/// Whether a payload looks like RFC 4733 §2.3 event blocks: whole 4-byte blocks, reserved bit
/// clear.
///
/// ```text
///  |     event     |E|R| volume    |          duration             |
/// ```
fn is_event_shaped(p: &[u8]) -> bool {
    !p.is_empty()
        && p.len().is_multiple_of(EVENT_BLOCK)
        && p.len() <= EVENT_BLOCK * MAX_EVENT_BLOCKS
        && p.chunks(EVENT_BLOCK).all(|b| b[1] & 0x40 == 0)
}

/// Feeds each SIP INFO key press into the receive path of the RTP stream its sender sends
/// in the same call (the flow to an SDP endpoint the INFO's receiver announced); key presses
/// with no such stream get a stream of their own per direction of the dialog.
fn attach_info(streams: &mut Vec<Stream>, sip: &SipFacts) {
    for (k, info) in sip.info_digits.iter().enumerate() {
        // Where the INFO's receiver takes RTP in this call: the SDPs it sent from the SIP
        // address the INFO went to, else from the same host (a proxy or NAT between).
        let of_call = || sip.media.iter().filter(|m| m.call_id == info.call_id);
        let mut endpoints: Vec<SocketAddr> = of_call()
            .filter(|m| m.author == info.dst)
            .map(|m| m.endpoint)
            .collect();
        if endpoints.is_empty() {
            endpoints = of_call()
                .filter(|m| m.author.ip() == info.dst.ip())
                .map(|m| m.endpoint)
                .collect();
        }
        let mut candidates = streams
            .iter_mut()
            .filter(|s| matches!(s.discovery, Discovery::Sdp { .. }) && endpoints.contains(&s.dst));
        if let Some(stream) = candidates.next() {
            stream.info.push(k);
            continue;
        }
        let existing = streams.iter_mut().find(|s| {
            s.src == info.src
                && s.dst == info.dst
                && matches!(&s.discovery, Discovery::SipInfoOnly { call_id } if *call_id == info.call_id)
        });
        match existing {
            Some(stream) => stream.info.push(k),
            None => streams.push(Stream {
                src: info.src,
                dst: info.dst,
                discovery: Discovery::SipInfoOnly {
                    call_id: info.call_id.clone(),
                },
                payload_types: Vec::new(),
                packets: 0,
                info: vec![k],
                ssrcs: Vec::new(),
                non_rtp: 0,
                first_ns: info.at_ns,
            }),
        }
    }
}
