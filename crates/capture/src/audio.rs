//! The decoded audio of one captured stream, laid out on its RTP timeline as the receive path
//! lays it out for the Goertzel receiver: packets in sequence order, duplicates dropped,
//! G.711 decoded, a timestamp gap (loss, a pause while events are sent, silence suppression)
//! kept as a gap of that many samples, an overlap trimmed.
//!
//! `media::ReceivePath` has no audio tap, so this mirrors its feeding rules (`receive.rs`,
//! `feed`) for plots; the digits themselves always come from the path.
//!
//! Packets come one at a time ([`Layout::packet`], from [`crate::replay::Replay`]'s second
//! pass) and are put back in sequence order within [`REORDER_PACKETS`] packets, so the
//! timeline streams out as pieces while the file is read.

use std::collections::BTreeMap;

use media::receive::Placement;

use crate::payload::{Encoding, RtpHeader};
use crate::streams::Stream;

/// Packets held to put the stream back in sequence order (2.5 s of 20 ms packets: far more
/// disorder than any capture shows; a packet later than that is dropped as stale).
pub const REORDER_PACKETS: usize = 128;

/// One piece of the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Decoded 8 kHz samples.
    Samples(&'a [i16]),
    /// This many samples of lost or absent audio.
    Gap(u64),
}

/// Lays out the G.711 audio of one SSRC of a stream, a packet at a time.
#[derive(Debug)]
pub struct Layout {
    /// The SSRC laid out.
    ssrc: u32,
    g711: Vec<(u8, Encoding)>,
    /// Packets waiting, by extended sequence number: capture time, timestamp, codec, payload.
    held: BTreeMap<i64, (u64, u32, Encoding, Vec<u8>)>,
    /// Highest extended sequence number seen, and the last released.
    highest: Option<i64>,
    released: Option<i64>,
    next_ts: Option<u32>,
    start_ns: Option<u64>,
    samples: u64,
    scratch: Vec<i16>,
}

impl Layout {
    /// The layout of `stream`'s audio: the SSRC with the most G.711 packets. `None` when the
    /// stream has no G.711 payload type or no such packet.
    pub fn new(stream: &Stream) -> Option<Layout> {
        let ssrc = stream.audio_ssrc()?;
        Some(Layout {
            ssrc,
            g711: stream
                .payload_types
                .iter()
                .filter(|p| p.encoding.is_g711())
                .map(|p| (p.pt, p.encoding.clone()))
                .collect(),
            held: BTreeMap::new(),
            highest: None,
            released: None,
            next_ts: None,
            start_ns: None,
            samples: 0,
            scratch: Vec::with_capacity(320),
        })
    }

    /// The SSRC laid out.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Capture time of the first audio packet, ns since the first frame.
    pub fn start_ns(&self) -> Option<u64> {
        self.start_ns
    }

    /// Samples on the timeline so far, gaps included.
    pub fn len(&self) -> u64 {
        self.samples
    }

    /// Whether nothing has been laid out yet.
    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// Takes one RTP packet of the stream (any SSRC, any payload type: others are ignored),
    /// handing out the pieces of timeline it releases.
    pub fn packet(
        &mut self,
        at_ns: u64,
        datagram: &[u8],
        h: &RtpHeader,
        mut on_piece: impl FnMut(Piece<'_>),
    ) {
        if h.ssrc != self.ssrc {
            return;
        }
        let Some((_, encoding)) = self.g711.iter().find(|(pt, _)| *pt == h.pt) else {
            return;
        };
        let ext = match self.highest {
            None => i64::from(h.seq),
            Some(top) => top + i64::from(h.seq.wrapping_sub(top as u16) as i16),
        };
        self.highest = Some(self.highest.map_or(ext, |top| top.max(ext)));
        if self.released.is_some_and(|r| ext <= r) {
            return;
        }
        self.start_ns = Some(self.start_ns.map_or(at_ns, |s| s.min(at_ns)));
        let Some(payload) = datagram.get(h.payload_offset..h.payload_offset + h.payload_len) else {
            return;
        };
        let encoding = encoding.clone();
        self.held
            .entry(ext)
            .or_insert_with(|| (at_ns, h.timestamp, encoding, payload.to_vec()));
        while self.held.len() > REORDER_PACKETS {
            self.release_first(&mut on_piece);
        }
    }

    /// End of the stream: everything held.
    pub fn finish(&mut self, mut on_piece: impl FnMut(Piece<'_>)) {
        while !self.held.is_empty() {
            self.release_first(&mut on_piece);
        }
    }

    fn release_first(&mut self, on_piece: &mut impl FnMut(Piece<'_>)) {
        let Some((ext, (_, timestamp, encoding, payload))) = self.held.pop_first() else {
            return;
        };
        self.released = Some(ext);
        self.scratch.clear();
        match encoding {
            Encoding::Pcmu => self
                .scratch
                .extend(payload.iter().map(|&b| media::g711::ulaw_to_linear(b))),
            _ => self
                .scratch
                .extend(payload.iter().map(|&b| media::g711::alaw_to_linear(b))),
        }
        // G.711 is one sample per byte; a UDP payload is under 65536 bytes.
        let total = self.scratch.len() as u32;
        // Laid out exactly as the live receive path feeds its Goertzel receiver.
        let start = match media::receive::place(self.next_ts, timestamp, total) {
            Placement::After { gap } | Placement::Restart { gap } => {
                if gap > 0 {
                    self.samples += gap;
                    on_piece(Piece::Gap(gap));
                }
                0
            }
            Placement::Overlapping { skip } => skip,
            Placement::Stale => return,
        };
        self.next_ts = Some(timestamp.wrapping_add(total));
        let samples = &self.scratch[start..];
        self.samples += samples.len() as u64;
        if !samples.is_empty() {
            on_piece(Piece::Samples(samples));
        }
    }
}
