//! What an RTP payload type means in a capture, and the few RTP header facts the stream
//! finder needs (RFC 3550 §5.1).
//!
//! ```text
//!   0                   1                   2                   3
//!  |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//!  |                           timestamp                           |
//!  |           synchronization source (SSRC) identifier            |
//!  |            contributing source (CSRC) identifiers  (CC × 32)  |
//!  [ extension: profile 16 | length 16 (32-bit words) | ... ]   payload ... [padding, count]
//! ```

use std::fmt;

/// An audio or event encoding named in SDP or by the static table of RFC 3551 §6.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// G.711 µ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// G.729 (not decoded here).
    G729,
    /// G.722 (not decoded here).
    G722,
    /// GSM 06.10 (not decoded here).
    Gsm,
    /// G.723.1 (not decoded here).
    G723,
    /// Comfort noise (RFC 3389).
    Cn,
    /// RFC 4733 telephone-event.
    TelephoneEvent,
    /// Opus (not decoded here).
    Opus,
    /// Anything else, by name (`NSE`, `G726-32`, `PT 5` …).
    Other(String),
}

impl Encoding {
    /// The encoding for an rtpmap name, case-insensitively.
    pub fn from_name(name: &str) -> Encoding {
        match name.to_ascii_lowercase().as_str() {
            "pcmu" => Encoding::Pcmu,
            "pcma" => Encoding::Pcma,
            "g729" | "g729a" => Encoding::G729,
            "g722" => Encoding::G722,
            "gsm" => Encoding::Gsm,
            "g723" => Encoding::G723,
            "cn" => Encoding::Cn,
            "telephone-event" => Encoding::TelephoneEvent,
            "opus" => Encoding::Opus,
            _ => Encoding::Other(name.to_string()),
        }
    }

    /// Whether the receive path can decode it to PCM (G.711 only).
    pub fn is_g711(&self) -> bool {
        matches!(self, Encoding::Pcmu | Encoding::Pcma)
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Pcmu => "PCMU",
            Encoding::Pcma => "PCMA",
            Encoding::G729 => "G729",
            Encoding::G722 => "G722",
            Encoding::Gsm => "GSM",
            Encoding::G723 => "G723",
            Encoding::Cn => "CN",
            Encoding::TelephoneEvent => "telephone-event",
            Encoding::Opus => "opus",
            Encoding::Other(name) => name,
        })
    }
}

/// Where the meaning of a payload type came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// An SDP `m=`/`a=rtpmap` line in the capture.
    Sdp,
    /// The static table of RFC 3551 §6 (no SDP for this stream).
    Static,
    /// Guessed from the payloads (no SDP): four-byte RFC 4733 event payloads on a dynamic PT.
    Guessed,
}

impl Origin {
    /// `sdp`, `static` or `guessed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Sdp => "sdp",
            Origin::Static => "static",
            Origin::Guessed => "guessed",
        }
    }
}

/// One payload type and what it means in a stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PayloadType {
    /// The 7-bit payload type.
    pub pt: u8,
    /// Its encoding.
    pub encoding: Encoding,
    /// RTP clock rate, Hz.
    pub clock_rate: u32,
    /// Where we learned it.
    pub origin: Origin,
}

/// Clock rate of the narrowband codecs and of telephone-events by default, Hz.
pub const NARROWBAND_HZ: u32 = 8000;

impl PayloadType {
    /// The static assignment of RFC 3551 §6 Table 4 for `pt` (unknown for dynamic PTs).
    pub fn from_static(pt: u8, origin: Origin) -> PayloadType {
        let (encoding, clock_rate) = match pt {
            0 => (Encoding::Pcmu, NARROWBAND_HZ),
            3 => (Encoding::Gsm, NARROWBAND_HZ),
            4 => (Encoding::G723, NARROWBAND_HZ),
            8 => (Encoding::Pcma, NARROWBAND_HZ),
            // G.722's RTP clock is 8000 although it samples at 16 kHz (RFC 3551 §4.5.2).
            9 => (Encoding::G722, NARROWBAND_HZ),
            13 => (Encoding::Cn, NARROWBAND_HZ),
            18 => (Encoding::G729, NARROWBAND_HZ),
            _ => (Encoding::Other(format!("PT {pt}")), NARROWBAND_HZ),
        };
        PayloadType {
            pt,
            encoding,
            clock_rate,
            origin,
        }
    }
}

/// RTCP packet types 200–204 read as RTP marker + PT fall in 72–76 (RFC 5761 §4).
const RTCP_CONFLICT_PTS: std::ops::RangeInclusive<u8> = 72..=76;
/// Fixed RTP header length, bytes.
const RTP_HEADER: usize = 12;

/// The header fields of one RTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub pt: u8,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Payload length in bytes (after CSRCs, extension and padding).
    pub payload_len: usize,
    /// Offset of the payload in the datagram.
    pub payload_offset: usize,
}

impl RtpHeader {
    /// Reads an RTP header; `None` if the datagram cannot be RTP (version, lengths, or an
    /// RTCP packet type).
    pub fn parse(datagram: &[u8]) -> Option<RtpHeader> {
        if datagram.len() < RTP_HEADER || datagram[0] >> 6 != 2 {
            return None;
        }
        let padding = datagram[0] & 0x20 != 0;
        let extension = datagram[0] & 0x10 != 0;
        let csrcs = usize::from(datagram[0] & 0x0f);
        let pt = datagram[1] & 0x7f;
        if RTCP_CONFLICT_PTS.contains(&pt) {
            return None;
        }
        let mut offset = RTP_HEADER + 4 * csrcs;
        if extension {
            let words = datagram.get(offset + 2..offset + 4)?;
            offset += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
        }
        let mut end = datagram.len();
        if padding {
            let count = usize::from(*datagram.last()?);
            if count == 0 {
                return None;
            }
            end = end.checked_sub(count)?;
        }
        if offset > end {
            return None;
        }
        Some(RtpHeader {
            marker: datagram[1] & 0x80 != 0,
            pt,
            seq: u16::from_be_bytes([datagram[2], datagram[3]]),
            timestamp: u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]),
            ssrc: u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]),
            payload_len: end - offset,
            payload_offset: offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_header_byte_exact() {
        // sipp-dtmf_2833_pound.pcap, first event packet: M, PT 101, seq 8434, ts 92640,
        // SSRC 0x0e05384e, event 11 volume 10 duration 0.
        let bytes = [
            0x80, 0xe5, 0x20, 0xf2, 0x00, 0x01, 0x69, 0xe0, 0x0e, 0x05, 0x38, 0x4e, 0x0b, 0x0a,
            0x00, 0x00,
        ];
        let h = RtpHeader::parse(&bytes).unwrap();
        assert!(h.marker);
        assert_eq!(
            (h.pt, h.seq, h.timestamp, h.ssrc),
            (101, 8434, 92640, 0x0e05_384e)
        );
        assert_eq!((h.payload_offset, h.payload_len), (12, 4));
    }

    #[test]
    fn rtcp_and_text_are_not_rtp() {
        // RTCP SR: V=2, PT 200 → reads as M=1, PT 72.
        assert!(RtpHeader::parse(&[0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0]).is_none());
        assert!(RtpHeader::parse(b"INVITE sip:a@b SIP/2.0\r\n").is_none());
        // Padding count larger than the packet.
        assert!(RtpHeader::parse(&[0xa0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 200]).is_none());
        // Extension header cut short.
        assert!(RtpHeader::parse(&[0x90, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0]).is_none());
    }
}
