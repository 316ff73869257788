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

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::net::{Datagram, Transport};
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
    /// Indexes into [`crate::Capture::datagrams`] of its RTP datagrams, in capture order.
    pub datagrams: Vec<usize>,
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
}

/// Finds the RTP streams of a capture and attaches the SIP INFO key presses.
pub(crate) fn find(datagrams: &[Datagram], sip: &SipFacts) -> Vec<Stream> {
    let mut is_sip = vec![false; datagrams.len()];
    for &i in &sip.sip_datagrams {
        if let Some(flag) = is_sip.get_mut(i) {
            *flag = true;
        }
    }
    // Flows in order of first datagram.
    let mut order: Vec<(SocketAddr, SocketAddr)> = Vec::new();
    let mut flows: HashMap<(SocketAddr, SocketAddr), Vec<usize>> = HashMap::new();
    for (i, d) in datagrams.iter().enumerate() {
        if d.transport != Transport::Udp || is_sip[i] {
            continue;
        }
        let key = (d.src, d.dst);
        flows
            .entry(key)
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(i);
    }
    let mut streams = Vec::new();
    for key in order {
        let Some(indexes) = flows.remove(&key) else {
            continue;
        };
        if let Some(stream) = classify(key, indexes, datagrams, sip) {
            streams.push(stream);
        }
    }
    attach_info(&mut streams, sip);
    streams.sort_by_key(|s| s.first_ns);
    streams
}

fn classify(
    (src, dst): (SocketAddr, SocketAddr),
    indexes: Vec<usize>,
    datagrams: &[Datagram],
    sip: &SipFacts,
) -> Option<Stream> {
    let headers: Vec<(usize, RtpHeader)> = indexes
        .iter()
        .filter_map(|&i| RtpHeader::parse(&datagrams[i].payload).map(|h| (i, h)))
        .collect();
    if headers.is_empty() {
        return None;
    }
    let non_rtp = (indexes.len() - headers.len()) as u64;
    let sdp = sdp_for(dst, sip).or_else(|| sdp_for(src, sip));
    let (discovery, payload_types) = match sdp {
        Some((call_id, pts)) => (Discovery::Sdp { call_id }, pts),
        None => {
            // STUN keep-alives and RTCP share the port with RTP (ICE, RFC 5761): they neither
            // make nor break a flow.
            let others = indexes
                .iter()
                .filter(|&&i| !is_stun_or_rtcp(&datagrams[i].payload))
                .count();
            if !looks_like_rtp_flow(others, &headers) {
                return None;
            }
            (
                Discovery::Heuristic,
                guess_payload_types(&headers, datagrams),
            )
        }
    };
    let ssrcs = summarise(&headers, datagrams);
    let first_ns = datagrams[headers[0].0].at_ns;
    Some(Stream {
        src,
        dst,
        discovery,
        payload_types,
        datagrams: headers.iter().map(|(i, _)| *i).collect(),
        info: Vec::new(),
        ssrcs,
        non_rtp,
        first_ns,
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
fn looks_like_rtp_flow(datagrams: usize, headers: &[(usize, RtpHeader)]) -> bool {
    if headers.len() < MIN_HEURISTIC_PACKETS
        || (headers.len() as f64) < MIN_RTP_SHARE * datagrams as f64
    {
        return false;
    }
    let mut per_ssrc: HashMap<u32, usize> = HashMap::new();
    for (_, h) in headers {
        *per_ssrc.entry(h.ssrc).or_default() += 1;
    }
    let recurring: usize = per_ssrc
        .values()
        .filter(|n| **n >= MIN_HEURISTIC_PACKETS)
        .sum();
    if (recurring as f64) < MIN_RTP_SHARE * headers.len() as f64 {
        return false;
    }
    let mut last_seq: HashMap<u32, u16> = HashMap::new();
    let (mut pairs, mut continuous) = (0usize, 0usize);
    for (_, h) in headers {
        if let Some(prev) = last_seq.insert(h.ssrc, h.seq) {
            pairs += 1;
            // Step 0 is a repeated packet (sipp repeats its end packets with one seq).
            if h.seq.wrapping_sub(prev) <= MAX_SEQ_STEP {
                continuous += 1;
            }
        }
    }
    continuous as f64 >= MIN_SEQ_CONTINUITY * pairs as f64
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
fn guess_payload_types(headers: &[(usize, RtpHeader)], datagrams: &[Datagram]) -> Vec<PayloadType> {
    let mut seen: Vec<u8> = Vec::new();
    for (_, h) in headers {
        if !seen.contains(&h.pt) {
            seen.push(h.pt);
        }
    }
    seen.into_iter()
        .map(|pt| {
            let fixed = PayloadType::from_static(pt, Origin::Static);
            if !matches!(fixed.encoding, Encoding::Other(_)) {
                return fixed;
            }
            let packets: Vec<&[u8]> = headers
                .iter()
                .filter(|(_, h)| h.pt == pt)
                .map(|(i, h)| {
                    let p = &datagrams[*i].payload;
                    &p[h.payload_offset..h.payload_offset + h.payload_len]
                })
                .collect();
            if looks_like_events(&packets) {
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

/// Whether payloads look like RFC 4733 §2.3 event blocks: whole 4-byte blocks, reserved bit
/// clear.
///
/// ```text
///  |     event     |E|R| volume    |          duration             |
/// ```
fn looks_like_events(payloads: &[&[u8]]) -> bool {
    if payloads.is_empty() {
        return false;
    }
    let shaped = payloads
        .iter()
        .filter(|p| {
            !p.is_empty()
                && p.len() % EVENT_BLOCK == 0
                && p.len() <= EVENT_BLOCK * MAX_EVENT_BLOCKS
                && p.chunks(EVENT_BLOCK).all(|b| b[1] & 0x40 == 0)
        })
        .count();
    shaped as f64 >= MIN_EVENT_SHAPE_SHARE * payloads.len() as f64
}

fn summarise(headers: &[(usize, RtpHeader)], datagrams: &[Datagram]) -> Vec<SsrcSummary> {
    struct Acc {
        summary: SsrcSummary,
        first_ext: i64,
        highest_ext: i64,
        seen: std::collections::HashSet<i64>,
    }
    let mut order: Vec<u32> = Vec::new();
    let mut accs: HashMap<u32, Acc> = HashMap::new();
    for (i, h) in headers {
        let at = datagrams[*i].at_ns;
        let acc = accs.entry(h.ssrc).or_insert_with(|| {
            order.push(h.ssrc);
            Acc {
                summary: SsrcSummary {
                    ssrc: h.ssrc,
                    first_ns: at,
                    ..SsrcSummary::default()
                },
                first_ext: i64::from(h.seq),
                highest_ext: i64::from(h.seq),
                seen: std::collections::HashSet::new(),
            }
        });
        // Extend the 16-bit sequence number to the value closest to the highest so far.
        let base = acc.highest_ext;
        let delta = i64::from(h.seq.wrapping_sub(base as u16) as i16);
        let ext = base + delta;
        let s = &mut acc.summary;
        s.packets += 1;
        s.last_ns = at;
        match s.payload_types.binary_search_by_key(&h.pt, |(pt, _)| *pt) {
            Ok(k) => s.payload_types[k].1 += 1,
            Err(k) => s.payload_types.insert(k, (h.pt, 1)),
        }
        if !acc.seen.insert(ext) {
            s.duplicates += 1;
        } else if ext < acc.highest_ext {
            s.reordered += 1;
        }
        acc.highest_ext = acc.highest_ext.max(ext);
        acc.first_ext = acc.first_ext.min(ext);
    }
    order
        .into_iter()
        .filter_map(|ssrc| accs.remove(&ssrc))
        .map(|mut acc| {
            let expected = (acc.highest_ext - acc.first_ext + 1).max(0) as u64;
            acc.summary.expected = expected;
            acc.summary.lost =
                expected.saturating_sub(acc.summary.packets - acc.summary.duplicates);
            acc.summary
        })
        .collect()
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
                datagrams: Vec::new(),
                info: vec![k],
                ssrcs: Vec::new(),
                non_rtp: 0,
                first_ns: info.at_ns,
            }),
        }
    }
}
