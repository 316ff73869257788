//! RTP packets (RFC 3550 §5.1): parse and build, with CSRC lists, a header extension and
//! padding, on top of `rtp-rs` (zero-copy reader, builder).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           timestamp                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           synchronization source (SSRC) identifier            |
//! +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//! |       contributing source (CSRC) identifiers (CC of them)     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  extension profile (X=1)      |  extension length (32-bit words)
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  payload ...                  | padding (P=1) ... | pad count |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The sequence number and timestamp wrap; [`SeqNo`] and [`timestamp_delta`] compare them
//! across the wrap, and [`crate::stats`] extends sequence numbers to 64 bits.

use rtp_rs::{RtpPacketBuilder, RtpReader, RtpReaderError};

/// RTP version 2 (RFC 3550 §5.1, `V`).
pub const VERSION: u8 = 2;
/// Fixed header length, bytes (RFC 3550 §5.1).
pub const HEADER_LEN: usize = 12;
/// Most CSRCs a header can list (the 4-bit CC field, RFC 3550 §5.1).
pub const MAX_CSRC: usize = 15;

/// A 16-bit RTP sequence number, compared modulo 2^16 (RFC 3550 §5.1 / appendix A.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeqNo(pub u16);

impl SeqNo {
    /// The next sequence number (wrapping).
    pub fn next(self) -> SeqNo {
        SeqNo(self.0.wrapping_add(1))
    }

    /// Signed distance from `earlier` to `self`, taking the shorter way round the wrap
    /// (-32768..=32767).
    pub fn since(self, earlier: SeqNo) -> i16 {
        self.0.wrapping_sub(earlier.0) as i16
    }
}

/// Signed distance from timestamp `earlier` to `later`, the shorter way round the 32-bit wrap
/// (RFC 3550 §5.1: timestamps wrap like sequence numbers).
pub fn timestamp_delta(later: u32, earlier: u32) -> i32 {
    later.wrapping_sub(earlier) as i32
}

/// Why a datagram is not an RTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the fixed 12-byte header (RFC 3550 §5.1).
    #[error("{len} bytes is shorter than an RTP header (12)")]
    TooShort { len: usize },
    /// Version field other than 2 (RFC 3550 §5.1); STUN, DTLS and RTP v1 land here.
    #[error("RTP version {version}, only 2 is understood")]
    Version { version: u8 },
    /// The CSRC list or header extension runs past the end of the datagram.
    #[error("RTP header needs {needed} bytes, the datagram has {len}")]
    Truncated { needed: usize, len: usize },
    /// The padding count is 0 or longer than what follows the header (RFC 3550 §5.1, `P`).
    #[error("RTP padding count {count} is impossible")]
    Padding { count: u8 },
    /// An RTCP packet (payload types 72-76 with the marker bit read as part of the type,
    /// RFC 5761 §4) arrived on the RTP port.
    #[error("an RTCP packet (type {packet_type}) on the RTP port")]
    Rtcp { packet_type: u8 },
}

impl From<RtpReaderError> for RtpError {
    fn from(e: RtpReaderError) -> Self {
        match e {
            RtpReaderError::BufferTooShort(len) => RtpError::TooShort { len },
            RtpReaderError::UnsupportedVersion(version) => RtpError::Version { version },
            RtpReaderError::HeadersTruncated {
                header_len,
                buffer_len,
            } => RtpError::Truncated {
                needed: header_len,
                len: buffer_len,
            },
            RtpReaderError::PaddingLengthInvalid(count) => RtpError::Padding { count },
        }
    }
}

/// Why a packet could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Payload types are 7 bits (RFC 3550 §5.1).
    #[error("payload type {0} does not fit in 7 bits")]
    PayloadType(u8),
    /// More than 15 CSRCs (RFC 3550 §5.1, CC is 4 bits).
    #[error("{0} CSRCs, at most 15 fit")]
    TooManyCsrcs(usize),
    /// A header extension must be a whole number of 32-bit words, at most 65535 of them
    /// (RFC 3550 §5.3.1).
    #[error("header extension of {0} bytes is not a whole number of 32-bit words")]
    Extension(usize),
    /// Padding is 1..=255 bytes including the count byte (RFC 3550 §5.1).
    #[error("padding of {0} bytes is impossible")]
    Padding(usize),
}

/// The RTP header extension (RFC 3550 §5.3.1): a profile-defined 16-bit id and its data
/// (a whole number of 32-bit words).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Extension<'a> {
    pub profile: u16,
    pub data: &'a [u8],
}

/// A parsed RTP packet, borrowing the datagram.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: SeqNo,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Contributing sources, 4 bytes each, big-endian (see [`RtpPacket::csrcs`]).
    csrc_bytes: &'a [u8],
    pub extension: Option<Extension<'a>>,
    /// The payload without padding.
    pub payload: &'a [u8],
    /// Padding bytes after the payload, including the count byte (0 when `P` is clear).
    pub padding: u8,
}

impl<'a> RtpPacket<'a> {
    /// Parses a datagram. Never panics; every malformed input is an [`RtpError`].
    pub fn parse(datagram: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        // RFC 5761 §4: with RTP and RTCP multiplexed, RTCP packet types 192-223 show up as
        // marker + payload types 64-95; 72-76 are SR, RR, SDES, BYE, APP (200-204).
        if datagram.len() >= 2 && datagram[0] >> 6 == VERSION {
            let pt = datagram[1] & 0x7f;
            if datagram[1] & 0x80 != 0 && (72..=76).contains(&pt) {
                return Err(RtpError::Rtcp {
                    packet_type: datagram[1],
                });
            }
        }
        let reader = RtpReader::new(datagram)?;
        let csrc_end = HEADER_LEN + 4 * reader.csrc_count() as usize;
        // `RtpReader::new` checked that the CSRC list, the extension and the padding fit.
        let csrc_bytes = datagram.get(HEADER_LEN..csrc_end).unwrap_or_default();
        Ok(RtpPacket {
            marker: reader.mark(),
            payload_type: reader.payload_type(),
            sequence: SeqNo(u16::from(reader.sequence_number())),
            timestamp: reader.timestamp(),
            ssrc: reader.ssrc(),
            csrc_bytes,
            extension: reader
                .extension()
                .map(|(profile, data)| Extension { profile, data }),
            payload: reader.payload(),
            padding: reader.padding().unwrap_or(0),
        })
    }

    /// The contributing sources (RFC 3550 §5.1, CSRC list).
    pub fn csrcs(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        self.csrc_bytes
            .chunks_exact(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// What to put in an RTP packet. [`PacketSpec::write`] appends the wire bytes to a buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacketSpec<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub csrcs: &'a [u32],
    pub extension: Option<Extension<'a>>,
    pub payload: &'a [u8],
    /// Total padding bytes to append (including the count byte), 0 for none.
    pub padding: usize,
}

impl PacketSpec<'_> {
    /// Appends the packet to `out`.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), BuildError> {
        if self.payload_type > 0x7f {
            return Err(BuildError::PayloadType(self.payload_type));
        }
        if self.csrcs.len() > MAX_CSRC {
            return Err(BuildError::TooManyCsrcs(self.csrcs.len()));
        }
        if let Some(ext) = self.extension
            && (ext.data.len() % 4 != 0 || ext.data.len() / 4 > u16::MAX as usize)
        {
            return Err(BuildError::Extension(ext.data.len()));
        }
        if self.padding > 255 {
            return Err(BuildError::Padding(self.padding));
        }
        let mut builder = RtpPacketBuilder::new()
            .payload_type(self.payload_type)
            .marked(self.marker)
            .sequence(rtp_rs::Seq::from(self.sequence))
            .timestamp(self.timestamp)
            .ssrc(self.ssrc)
            .set_csrc(self.csrcs)
            .payload(self.payload);
        if let Some(ext) = self.extension {
            builder = builder.extension(ext.profile, ext.data);
        }
        let start = out.len();
        out.resize(start + builder.target_length(), 0);
        let written = builder.build_into_unchecked(&mut out[start..]);
        out.truncate(start + written);
        if self.padding > 0 {
            // rtp-rs pads only to round the length up to a multiple; an exact count is
            // simpler written here (RFC 3550 §5.1: the last byte counts the padding bytes,
            // itself included).
            out[start] |= 0x20;
            out.resize(out.len() + self.padding - 1, 0);
            out.push(self.padding as u8);
        }
        Ok(())
    }

    /// The packet as a new buffer.
    pub fn to_vec(&self) -> Result<Vec<u8>, BuildError> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len() + 4 * self.csrcs.len());
        self.write(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PCMU packet as a softphone sends it: no CSRC, no extension.
    const PCMU: [u8; 16] = [
        0x80, 0x00, 0x1f, 0x40, // V=2, PT 0, seq 8000
        0x00, 0x01, 0xe2, 0x40, // ts 123456
        0xde, 0xad, 0xbe, 0xef, // SSRC
        0xff, 0xff, 0x7f, 0x00, // payload
    ];

    #[test]
    fn parses_plain_packet() {
        let p = RtpPacket::parse(&PCMU).unwrap();
        assert!(!p.marker);
        assert_eq!(p.payload_type, 0);
        assert_eq!(p.sequence, SeqNo(8000));
        assert_eq!(p.timestamp, 123_456);
        assert_eq!(p.ssrc, 0xdead_beef);
        assert_eq!(p.csrcs().count(), 0);
        assert_eq!(p.extension, None);
        assert_eq!(p.payload, &[0xff, 0xff, 0x7f, 0x00]);
        assert_eq!(p.padding, 0);
        let spec = PacketSpec {
            payload_type: 0,
            sequence: 8000,
            timestamp: 123_456,
            ssrc: 0xdead_beef,
            payload: p.payload,
            ..PacketSpec::default()
        };
        assert_eq!(spec.to_vec().unwrap(), PCMU);
    }

    /// Marker, two CSRCs, a one-word extension (RFC 8285 one-byte header profile 0xBEDE) and
    /// four bytes of padding.
    const FULL: [u8; 36] = [
        0xb2, 0xe5, 0xff, 0xff, // V=2 P X CC=2, M PT 101, seq 65535
        0xff, 0xff, 0xff, 0xf0, // ts
        0x00, 0x00, 0x00, 0x2a, // SSRC 42
        0x11, 0x11, 0x11, 0x11, // CSRC 1
        0x22, 0x22, 0x22, 0x22, // CSRC 2
        0xbe, 0xde, 0x00, 0x01, // extension profile, 1 word
        0x10, 0xaa, 0x00, 0x00, // extension data
        0x0b, 0x8a, 0x00, 0xa0, // payload: # E vol 10, duration 160
        0x00, 0x00, 0x00, 0x04, // padding, count 4
    ];

    #[test]
    fn parses_csrc_extension_padding() {
        let p = RtpPacket::parse(&FULL).unwrap();
        assert!(p.marker);
        assert_eq!(p.payload_type, 101);
        assert_eq!(p.sequence, SeqNo(65535));
        assert_eq!(p.timestamp, 0xffff_fff0);
        assert_eq!(p.ssrc, 42);
        assert_eq!(p.csrcs().collect::<Vec<_>>(), [0x1111_1111, 0x2222_2222]);
        assert_eq!(
            p.extension,
            Some(Extension {
                profile: 0xbede,
                data: &[0x10, 0xaa, 0, 0]
            })
        );
        assert_eq!(p.payload, &[0x0b, 0x8a, 0x00, 0xa0]);
        assert_eq!(p.padding, 4);
        let csrcs: Vec<u32> = p.csrcs().collect();
        let spec = PacketSpec {
            marker: true,
            payload_type: 101,
            sequence: 65535,
            timestamp: 0xffff_fff0,
            ssrc: 42,
            csrcs: &csrcs,
            extension: p.extension,
            payload: p.payload,
            padding: 4,
        };
        assert_eq!(spec.to_vec().unwrap(), FULL);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            RtpPacket::parse(&PCMU[..11]),
            Err(RtpError::TooShort { len: 11 })
        );
        let mut v1 = PCMU;
        v1[0] = 0x40;
        assert_eq!(RtpPacket::parse(&v1), Err(RtpError::Version { version: 1 }));
        // CC = 3 but only 4 bytes follow the header.
        let mut cc = PCMU;
        cc[0] = 0x83;
        assert!(matches!(
            RtpPacket::parse(&cc),
            Err(RtpError::Truncated { .. })
        ));
        // Extension length runs past the end.
        assert!(matches!(
            RtpPacket::parse(&FULL[..26]),
            Err(RtpError::Truncated { .. })
        ));
        // Padding count 0, and padding longer than the packet body.
        let mut pad = PCMU;
        pad[0] = 0xa0;
        pad[15] = 0;
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::Padding { count: 0 }));
        pad[15] = 5;
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::Padding { count: 5 }));
        pad[15] = 4;
        assert_eq!(RtpPacket::parse(&pad).unwrap().payload, &[] as &[u8]);
        // An RTCP receiver report (PT 201) multiplexed onto the RTP port.
        let rr = [0x80, 0xc9, 0x00, 0x01, 0, 0, 0, 1];
        assert_eq!(
            RtpPacket::parse(&rr),
            Err(RtpError::Rtcp { packet_type: 201 })
        );
    }

    #[test]
    fn rejects_unbuildable() {
        let spec = |f: fn(&mut PacketSpec<'static>)| {
            let mut s = PacketSpec::default();
            f(&mut s);
            s.to_vec()
        };
        assert_eq!(
            spec(|s| s.payload_type = 128),
            Err(BuildError::PayloadType(128))
        );
        assert_eq!(
            spec(|s| s.csrcs = &[0; 16]),
            Err(BuildError::TooManyCsrcs(16))
        );
        assert_eq!(
            spec(|s| s.extension = Some(Extension {
                profile: 1,
                data: &[1, 2, 3]
            })),
            Err(BuildError::Extension(3))
        );
        assert_eq!(spec(|s| s.padding = 256), Err(BuildError::Padding(256)));
    }

    #[test]
    fn sequence_and_timestamp_wrap() {
        assert_eq!(SeqNo(0).since(SeqNo(65535)), 1);
        assert_eq!(SeqNo(65535).since(SeqNo(0)), -1);
        assert_eq!(SeqNo(65535).next(), SeqNo(0));
        assert_eq!(timestamp_delta(80, u32::MAX - 79), 160);
        assert_eq!(timestamp_delta(u32::MAX - 79, 80), -160);
    }
}
