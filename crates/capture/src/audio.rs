//! The decoded audio of one captured stream, laid out on its RTP timeline as the receive path
//! lays it out for the Goertzel receiver: packets in sequence order, duplicates dropped,
//! G.711 decoded, a timestamp gap (loss, a pause while events are sent, silence suppression)
//! kept as a gap of that many samples, an overlap trimmed.
//!
//! `media::ReceivePath` has no audio tap, so this mirrors its feeding rules (`receive.rs`,
//! `feed`) for plots; the digits themselves always come from the path.

use std::collections::BTreeMap;

use media::receive::Placement;

use crate::Capture;
use crate::payload::{Encoding, RtpHeader};
use crate::streams::Stream;

/// One piece of the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Decoded 8 kHz samples.
    Samples(Vec<i16>),
    /// This many samples of lost or absent audio.
    Gap(u64),
}

/// The audio of one SSRC of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAudio {
    /// The SSRC decoded.
    pub ssrc: u32,
    /// Capture time of the first audio packet, ns since the first frame.
    pub start_ns: u64,
    /// The timeline, from the first audio packet on.
    pub pieces: Vec<Piece>,
}

impl StreamAudio {
    /// Samples on the timeline, gaps included.
    pub fn len(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Samples(s) => s.len() as u64,
                Piece::Gap(n) => *n,
            })
            .sum()
    }

    /// Whether there is no audio at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes the G.711 audio of `stream`: the SSRC with the most G.711 packets. `None` when the
/// stream has no G.711 payload type or no such packet.
pub fn decode(capture: &Capture, stream: &Stream) -> Option<StreamAudio> {
    let g711: Vec<(u8, Encoding)> = stream
        .payload_types
        .iter()
        .filter(|p| p.encoding.is_g711())
        .map(|p| (p.pt, p.encoding.clone()))
        .collect();
    let ssrc = stream
        .ssrcs
        .iter()
        .map(|s| {
            let n: u64 = s
                .payload_types
                .iter()
                .filter(|(pt, _)| g711.iter().any(|(p, _)| p == pt))
                .map(|(_, n)| n)
                .sum();
            (n, s.ssrc)
        })
        .filter(|(n, _)| *n > 0)
        .max_by_key(|(n, _)| *n)?
        .1;

    // Packets by extended sequence number (the whole capture is at hand: no window needed).
    let mut packets: BTreeMap<i64, (u64, u32, &[u8], &Encoding)> = BTreeMap::new();
    let mut highest: Option<i64> = None;
    for &i in &stream.datagrams {
        let Some(d) = capture.datagrams.get(i) else {
            continue;
        };
        let Some(h) = RtpHeader::parse(&d.payload) else {
            continue;
        };
        let Some((_, encoding)) = g711.iter().find(|(pt, _)| *pt == h.pt) else {
            continue;
        };
        if h.ssrc != ssrc {
            continue;
        }
        let ext = match highest {
            None => i64::from(h.seq),
            Some(top) => top + i64::from(h.seq.wrapping_sub(top as u16) as i16),
        };
        highest = Some(highest.map_or(ext, |top| top.max(ext)));
        let payload = &d.payload[h.payload_offset..h.payload_offset + h.payload_len];
        packets
            .entry(ext)
            .or_insert((d.at_ns, h.timestamp, payload, encoding));
    }
    let start_ns = packets.values().map(|p| p.0).min()?;
    let mut pieces: Vec<Piece> = Vec::new();
    let mut next_ts: Option<u32> = None;
    for (_, timestamp, payload, encoding) in packets.into_values() {
        let samples: Vec<i16> = match encoding {
            Encoding::Pcmu => payload
                .iter()
                .map(|&b| media::g711::ulaw_to_linear(b))
                .collect(),
            _ => payload
                .iter()
                .map(|&b| media::g711::alaw_to_linear(b))
                .collect(),
        };
        let total = samples.len() as u32;
        // Laid out exactly as the live receive path feeds its Goertzel receiver.
        let start = match media::receive::place(next_ts, timestamp, total) {
            Placement::After { gap } | Placement::Restart { gap } => {
                if gap > 0 {
                    pieces.push(Piece::Gap(gap));
                }
                0
            }
            Placement::Overlapping { skip } => skip,
            Placement::Stale => continue,
        };
        next_ts = Some(timestamp.wrapping_add(total));
        match pieces.last_mut() {
            Some(Piece::Samples(s)) => s.extend_from_slice(&samples[start..]),
            _ => pieces.push(Piece::Samples(samples[start..].to_vec())),
        }
    }
    Some(StreamAudio {
        ssrc,
        start_ns,
        pieces,
    })
}
