//! RTCP sender and receiver reports (RFC 3550 §6.4), SDES CNAME (§6.5.1) and BYE (§6.6):
//! enough to tell the far end how its stream arrives and to read how ours does.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|   RC    |   PT=SR=200   |      length (32-bit words − 1)|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         SSRC of sender                        |
//! +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//! |     NTP timestamp (64) | RTP timestamp | packets | octets     |  SR only (20 bytes)
//! +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//! | SSRC_n | fraction lost (8) cumulative lost (24) | ext. highest |  report block (24 bytes)
//! | seq | interarrival jitter | last SR (LSR) | delay since last SR |  × RC
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! A receiver report's `RC` is 0 to 31; PT 201. Several packets travel together as one
//! compound datagram (§6.1).

use std::time::{Duration, Instant};

use crate::receive::StreamStats;

/// Packet types (RFC 3550 §12.1).
pub const SR: u8 = 200;
pub const RR: u8 = 201;
pub const SDES: u8 = 202;
pub const BYE: u8 = 203;
/// SDES item CNAME (§6.5.1).
const CNAME: u8 = 1;
/// Common header, bytes (§6.4.1).
const HEADER_LEN: usize = 4;
/// Sender info in an SR, bytes (§6.4.1).
const SENDER_INFO_LEN: usize = 20;
/// One report block, bytes (§6.4.1).
const BLOCK_LEN: usize = 24;
/// Most report blocks in one packet (5-bit RC, §6.4.1).
pub const MAX_BLOCKS: usize = 31;

/// Why a datagram is not RTCP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    /// Shorter than a header, or a length field running past the datagram (§6.4.1).
    #[error("RTCP packet truncated at byte {at}")]
    Truncated { at: usize },
    /// Version other than 2 (§6.4.1).
    #[error("RTCP version {version}, only 2 is understood")]
    Version { version: u8 },
    /// A report count that does not fit the packet's length.
    #[error("RTCP packet type {packet_type} with {count} report blocks does not fit its length")]
    Count { packet_type: u8, count: u8 },
}

/// Reception statistics of one source, as one report block carries them (§6.4.1).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Fraction of packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed on the wire, clamped).
    pub cumulative_lost: i32,
    pub extended_max_seq: u32,
    /// Interarrival jitter, timestamp units (A.8).
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received from this source (0: none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// The sender info of an SR (§6.4.1).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SenderInfo {
    /// NTP timestamp (seconds since 1900 in the high 32 bits, fraction in the low 32).
    pub ntp: u64,
    pub rtp_timestamp: u32,
    pub packets: u32,
    pub octets: u32,
}

/// One packet of a compound RTCP datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport {
        ssrc: u32,
        info: SenderInfo,
        reports: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    /// SDES with one CNAME for one source (other items and chunks are skipped on reading).
    Cname {
        ssrc: u32,
        cname: String,
    },
    Bye {
        ssrcs: Vec<u32>,
    },
    /// Any other type (APP, feedback), not read.
    Other {
        packet_type: u8,
    },
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
        .unwrap_or(0)
}

fn read_blocks(body: &[u8], count: usize) -> Vec<ReportBlock> {
    body.chunks_exact(BLOCK_LEN)
        .take(count)
        .map(|b| {
            // 24-bit two's complement (§6.4.1).
            let lost = (i32::from(b[5]) << 16 | i32::from(b[6]) << 8 | i32::from(b[7])) << 8 >> 8;
            ReportBlock {
                ssrc: be32(b, 0),
                fraction_lost: b[4],
                cumulative_lost: lost,
                extended_max_seq: be32(b, 8),
                jitter: be32(b, 12),
                last_sr: be32(b, 16),
                delay_since_last_sr: be32(b, 20),
            }
        })
        .collect()
}

/// Parses a compound RTCP datagram. Never panics.
pub fn parse(datagram: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < datagram.len() {
        let header = datagram
            .get(at..at + HEADER_LEN)
            .ok_or(RtcpError::Truncated { at })?;
        let version = header[0] >> 6;
        if version != 2 {
            return Err(RtcpError::Version { version });
        }
        let count = header[0] & 0x1f;
        let packet_type = header[1];
        let len = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
        let packet = datagram
            .get(at..at + len)
            .ok_or(RtcpError::Truncated { at })?;
        // Padding (P bit) is only allowed on the last packet; its count is in the last byte.
        let pad = if header[0] & 0x20 != 0 {
            usize::from(packet[len - 1])
        } else {
            0
        };
        let body = packet
            .get(HEADER_LEN..len.saturating_sub(pad))
            .ok_or(RtcpError::Truncated { at })?;
        let blocks_fit = |offset: usize| body.len() >= offset + usize::from(count) * BLOCK_LEN;
        out.push(match packet_type {
            SR => {
                if !blocks_fit(4 + SENDER_INFO_LEN) {
                    return Err(RtcpError::Count { packet_type, count });
                }
                RtcpPacket::SenderReport {
                    ssrc: be32(body, 0),
                    info: SenderInfo {
                        ntp: u64::from(be32(body, 4)) << 32 | u64::from(be32(body, 8)),
                        rtp_timestamp: be32(body, 12),
                        packets: be32(body, 16),
                        octets: be32(body, 20),
                    },
                    reports: read_blocks(&body[24..], usize::from(count)),
                }
            }
            RR => {
                if !blocks_fit(4) {
                    return Err(RtcpError::Count { packet_type, count });
                }
                RtcpPacket::ReceiverReport {
                    ssrc: be32(body, 0),
                    reports: read_blocks(&body[4..], usize::from(count)),
                }
            }
            SDES if count >= 1 && body.len() >= 4 => {
                let ssrc = be32(body, 0);
                let mut items = &body[4..];
                let mut cname = None;
                while let [kind, n, rest @ ..] = items {
                    if *kind == 0 {
                        break;
                    }
                    let Some(value) = rest.get(..usize::from(*n)) else {
                        break;
                    };
                    if *kind == CNAME {
                        cname = Some(String::from_utf8_lossy(value).into_owned());
                    }
                    items = &rest[usize::from(*n)..];
                }
                match cname {
                    Some(cname) => RtcpPacket::Cname { ssrc, cname },
                    None => RtcpPacket::Other { packet_type },
                }
            }
            BYE => RtcpPacket::Bye {
                ssrcs: body
                    .chunks_exact(4)
                    .take(usize::from(count))
                    .map(|b| be32(b, 0))
                    .collect(),
            },
            _ => RtcpPacket::Other { packet_type },
        });
        at += len;
    }
    Ok(out)
}

fn write_blocks(out: &mut Vec<u8>, reports: &[ReportBlock]) {
    for r in reports.iter().take(MAX_BLOCKS) {
        out.extend_from_slice(&r.ssrc.to_be_bytes());
        let lost = r.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff);
        out.push(r.fraction_lost);
        out.extend_from_slice(&lost.to_be_bytes()[1..]);
        for v in [
            r.extended_max_seq,
            r.jitter,
            r.last_sr,
            r.delay_since_last_sr,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

impl RtcpPacket {
    /// Appends the packet to `out` (report lists beyond 31 blocks are cut, §6.4.1).
    pub fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let (count, packet_type) = match self {
            RtcpPacket::SenderReport { reports, .. } => (reports.len().min(MAX_BLOCKS), SR),
            RtcpPacket::ReceiverReport { reports, .. } => (reports.len().min(MAX_BLOCKS), RR),
            RtcpPacket::Cname { .. } => (1, SDES),
            RtcpPacket::Bye { ssrcs } => (ssrcs.len().min(MAX_BLOCKS), BYE),
            RtcpPacket::Other { .. } => return,
        };
        out.extend_from_slice(&[0x80 | count as u8, packet_type, 0, 0]);
        match self {
            RtcpPacket::SenderReport {
                ssrc,
                info,
                reports,
            } => {
                out.extend_from_slice(&ssrc.to_be_bytes());
                out.extend_from_slice(&info.ntp.to_be_bytes());
                for v in [info.rtp_timestamp, info.packets, info.octets] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                write_blocks(out, reports);
            }
            RtcpPacket::ReceiverReport { ssrc, reports } => {
                out.extend_from_slice(&ssrc.to_be_bytes());
                write_blocks(out, reports);
            }
            RtcpPacket::Cname { ssrc, cname } => {
                out.extend_from_slice(&ssrc.to_be_bytes());
                let bytes = &cname.as_bytes()[..cname.len().min(255)];
                out.extend_from_slice(&[CNAME, bytes.len() as u8]);
                out.extend_from_slice(bytes);
                // End of items, then zeros to the next 32-bit boundary (§6.5).
                out.push(0);
                while !(out.len() - start).is_multiple_of(4) {
                    out.push(0);
                }
            }
            RtcpPacket::Bye { ssrcs } => {
                for s in ssrcs.iter().take(MAX_BLOCKS) {
                    out.extend_from_slice(&s.to_be_bytes());
                }
            }
            RtcpPacket::Other { .. } => {}
        }
        let words = ((out.len() - start) / 4 - 1) as u16;
        out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
    }
}

/// Writes a compound datagram.
pub fn write_compound(packets: &[RtcpPacket]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in packets {
        p.write(&mut out);
    }
    out
}

/// The middle 32 bits of an NTP timestamp, as LSR carries it (§6.4.1).
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// A duration in 1/65536 s, as DLSR carries it (§6.4.1).
pub fn to_dlsr(d: Duration) -> u32 {
    (d.as_nanos() * 65536 / 1_000_000_000).min(u128::from(u32::MAX)) as u32
}

/// Per-source memory between two reports, for the "fraction lost" of the interval (A.3).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportInterval {
    expected_prior: u64,
    received_prior: u64,
}

impl ReportInterval {
    /// The report block for a source's statistics at `now`, and the start of a new interval.
    pub fn report(&mut self, now: Instant, stats: &StreamStats) -> ReportBlock {
        let expected = stats.expected - self.expected_prior.min(stats.expected);
        let received = stats.received - self.received_prior.min(stats.received);
        self.expected_prior = stats.expected;
        self.received_prior = stats.received;
        let lost = expected.saturating_sub(received);
        let fraction_lost = (lost << 8).checked_div(expected).unwrap_or(0).min(255) as u8;
        let (last_sr, delay_since_last_sr) = match stats.last_sender_report {
            Some((middle, at)) => (middle, to_dlsr(now.saturating_duration_since(at))),
            None => (0, 0),
        };
        ReportBlock {
            ssrc: stats.ssrc,
            fraction_lost,
            cumulative_lost: stats.lost.clamp(-0x80_0000, 0x7f_ffff) as i32,
            extended_max_seq: stats.extended_max_seq,
            jitter: stats.jitter,
            last_sr,
            delay_since_last_sr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SR with one report block, then SDES CNAME "cv@host": 28 + 24 + 20 bytes.
    const COMPOUND: [u8; 72] = [
        0x81, 0xc8, 0x00, 0x0c, // V=2 RC=1 SR, 12 words follow
        0x00, 0x00, 0x00, 0x2a, // SSRC 42
        0xe8, 0x00, 0x00, 0x01, 0x80, 0x00, 0x00, 0x00, // NTP
        0x00, 0x00, 0x3e, 0x80, // RTP timestamp 16000
        0x00, 0x00, 0x00, 0x64, // 100 packets
        0x00, 0x00, 0x3e, 0x80, // 16000 octets
        0x12, 0x34, 0x56, 0x78, // SSRC_1
        0x40, 0xff, 0xff, 0xfe, // fraction 64/256, cumulative −2
        0x00, 0x01, 0x00, 0x05, // ext. highest seq 65541
        0x00, 0x00, 0x00, 0x50, // jitter 80
        0x00, 0x01, 0x80, 0x00, // LSR
        0x00, 0x00, 0x80, 0x00, // DLSR 0.5 s
        0x81, 0xca, 0x00, 0x04, // V=2 SC=1 SDES, 4 words follow
        0x00, 0x00, 0x00, 0x2a, // SSRC 42
        0x01, 0x07, b'c', b'v', b'@', b'h', b'o', b's', b't', 0x00, // CNAME, end
        0x00, 0x00, // padding to 32 bits
    ];

    fn expected() -> Vec<RtcpPacket> {
        vec![
            RtcpPacket::SenderReport {
                ssrc: 42,
                info: SenderInfo {
                    ntp: 0xe800_0001_8000_0000,
                    rtp_timestamp: 16000,
                    packets: 100,
                    octets: 16000,
                },
                reports: vec![ReportBlock {
                    ssrc: 0x1234_5678,
                    fraction_lost: 64,
                    cumulative_lost: -2,
                    extended_max_seq: 65541,
                    jitter: 80,
                    last_sr: 0x0001_8000,
                    delay_since_last_sr: 0x8000,
                }],
            },
            RtcpPacket::Cname {
                ssrc: 42,
                cname: "cv@host".into(),
            },
        ]
    }

    #[test]
    fn compound_round_trip() {
        assert_eq!(parse(&COMPOUND).unwrap(), expected());
        assert_eq!(write_compound(&expected()), COMPOUND);
        assert_eq!(ntp_middle(0xe800_0001_8000_0000), 0x0001_8000);
        assert_eq!(to_dlsr(Duration::from_millis(500)), 0x8000);
    }

    #[test]
    fn receiver_report_and_bye() {
        let rr = vec![
            RtcpPacket::ReceiverReport {
                ssrc: 1,
                reports: vec![],
            },
            RtcpPacket::Bye { ssrcs: vec![1] },
        ];
        let bytes = write_compound(&rr);
        assert_eq!(
            bytes,
            [0x80, 0xc9, 0, 1, 0, 0, 0, 1, 0x81, 0xcb, 0, 1, 0, 0, 0, 1]
        );
        assert_eq!(parse(&bytes).unwrap(), rr);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse(&COMPOUND[..3]), Err(RtcpError::Truncated { at: 0 }));
        assert_eq!(parse(&COMPOUND[..60]), Err(RtcpError::Truncated { at: 52 }));
        let mut v = COMPOUND;
        v[0] = 0x41;
        assert_eq!(parse(&v), Err(RtcpError::Version { version: 1 }));
        // RC = 2 but room for one block.
        let mut v = COMPOUND;
        v[0] = 0x82;
        assert_eq!(
            parse(&v),
            Err(RtcpError::Count {
                packet_type: SR,
                count: 2
            })
        );
    }

    #[test]
    fn interval_fraction_lost() {
        let t0 = Instant::now();
        let mut stats = StreamStats {
            ssrc: 9,
            expected: 100,
            received: 90,
            lost: 10,
            ..StreamStats::default()
        };
        let mut interval = ReportInterval::default();
        let b = interval.report(t0, &stats);
        assert_eq!((b.fraction_lost, b.cumulative_lost), (25, 10)); // 10/100 × 256
        stats.expected = 200;
        stats.received = 190;
        stats.last_sender_report = Some((0xabcd, t0));
        let b = interval.report(t0 + Duration::from_secs(1), &stats);
        assert_eq!(b.fraction_lost, 0);
        assert_eq!((b.last_sr, b.delay_since_last_sr), (0xabcd, 65536));
    }
}
