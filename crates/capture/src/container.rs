//! The capture file container: classic pcap (both byte orders, µs and ns timestamps, the
//! "modified" Kuznetzov variant) and pcapng (any number of sections and interfaces).
//!
//! ```text
//!  pcap:    [global header 24 B: magic, version, snaplen, link type]
//!           [record 16 B: ts_sec, ts_frac, caplen, origlen][caplen bytes] ...
//!  pcapng:  [SHB][IDB link type, if_tsresol, if_tsoffset]...[EPB if_id, ts, caplen][SPB]...
//! ```
//!
//! Whatever was read before a broken or truncated record is handed out before the error.

use pcap_parser::nom;
use pcap_parser::pcapng::{Block, PcapNGSlice};
use pcap_parser::{PcapError, parse_pcap_frame, parse_pcap_frame_be, parse_pcap_frame_modified};

use crate::CaptureError;

/// Nanoseconds per second.
const NANOS_PER_SEC: u128 = 1_000_000_000;
/// pcapng default timestamp resolution: microseconds (pcapng spec, `if_tsresol` absent).
const PCAPNG_DEFAULT_RESOLUTION: u64 = 1_000_000;

/// Which container the bytes were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Classic libpcap format.
    Pcap,
    /// pcapng.
    PcapNg,
}

impl Format {
    /// `pcap` or `pcapng`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pcap => "pcap",
            Format::PcapNg => "pcapng",
        }
    }
}

/// One captured frame, as the container holds it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame<'a> {
    /// Capture time, nanoseconds since the Unix epoch (may be anything the writer chose).
    pub at_ns: i128,
    /// LINKTYPE_* value of the interface.
    pub link_type: u32,
    pub data: &'a [u8],
}

/// Classic pcap magic numbers as read little-endian (µs, ns, modified).
const PCAP_MAGICS: [u32; 6] = [
    0xa1b2_c3d4,
    0xd4c3_b2a1,
    0xa1b2_3c4d,
    0x4d3c_b2a1,
    0xa1b2_cd34,
    0x34cd_b2a1,
];
/// pcapng Section Header Block type.
const PCAPNG_SHB: u32 = 0x0a0d_0d0a;

/// Reads every frame of `bytes`, calling `on_frame` for each in file order. Returns the
/// format, and the error that stopped reading early, if any.
pub(crate) fn read_frames<'a>(
    bytes: &'a [u8],
    mut on_frame: impl FnMut(Frame<'a>),
) -> (Option<Format>, Option<CaptureError>) {
    let Some(magic) = bytes
        .get(..4)
        .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]))
    else {
        return (None, Some(CaptureError::NotACapture));
    };
    if PCAP_MAGICS.contains(&magic) {
        (Some(Format::Pcap), read_pcap(bytes, &mut on_frame))
    } else if magic == PCAPNG_SHB {
        (Some(Format::PcapNg), read_pcapng(bytes, &mut on_frame))
    } else {
        (None, Some(CaptureError::NotACapture))
    }
}

fn read_pcap<'a>(bytes: &'a [u8], on_frame: &mut impl FnMut(Frame<'a>)) -> Option<CaptureError> {
    let (mut rest, header) = match pcap_parser::parse_pcap_header(bytes) {
        Ok(ok) => ok,
        Err(nom::Err::Incomplete(_)) => {
            return Some(CaptureError::Truncated {
                offset: 0,
                frames: 0,
            });
        }
        Err(_) => return Some(CaptureError::NotACapture),
    };
    // The link type is a 32-bit field whose upper bits may carry FCS flags (pcap spec §8.1).
    let link_type = (header.network.0 as u32) & 0x0fff_ffff;
    let nanos = header.is_nanosecond_precision();
    let parse = if header.is_modified_format() {
        parse_pcap_frame_modified
    } else if header.is_bigendian() {
        parse_pcap_frame_be
    } else {
        parse_pcap_frame
    };
    let mut frames = 0u64;
    while !rest.is_empty() {
        let offset = (bytes.len() - rest.len()) as u64;
        match parse(rest) {
            Ok((next, block)) => {
                let frac = if nanos {
                    i128::from(block.ts_usec)
                } else {
                    i128::from(block.ts_usec) * 1000
                };
                on_frame(Frame {
                    at_ns: i128::from(block.ts_sec) * NANOS_PER_SEC as i128 + frac,
                    link_type,
                    data: block.data,
                });
                frames += 1;
                rest = next;
            }
            Err(e) => return Some(container_error(&e, offset, frames)),
        }
    }
    None
}

/// Per-interface facts from an Interface Description Block.
#[derive(Clone, Copy, Debug)]
struct Interface {
    link_type: u32,
    /// Timestamp units per second.
    resolution: u64,
    /// Seconds added to every timestamp.
    offset_s: i64,
}

fn read_pcapng<'a>(bytes: &'a [u8], on_frame: &mut impl FnMut(Frame<'a>)) -> Option<CaptureError> {
    let slice = match PcapNGSlice::from_slice(bytes) {
        Ok(slice) => slice,
        Err(nom::Err::Incomplete(_)) => {
            return Some(CaptureError::Truncated {
                offset: 0,
                frames: 0,
            });
        }
        Err(_) => return Some(CaptureError::NotACapture),
    };
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut frames = 0u64;
    let mut consumed = 0usize;
    let mut last_ns = 0i128;
    for block in slice {
        let block = match block {
            Ok(block) => block,
            Err(e) => return Some(container_error(&e, consumed as u64, frames)),
        };
        let pcap_parser::PcapBlockOwned::NG(block) = block else {
            continue;
        };
        consumed += block_len(&block);
        match block {
            Block::SectionHeader(_) => interfaces.clear(),
            Block::InterfaceDescription(idb) => interfaces.push(Interface {
                link_type: (idb.linktype.0 as u32) & 0x0fff_ffff,
                resolution: idb.ts_resolution().unwrap_or(PCAPNG_DEFAULT_RESOLUTION),
                offset_s: idb.ts_offset(),
            }),
            Block::EnhancedPacket(epb) => {
                let Some(iface) = interfaces.get(epb.if_id as usize) else {
                    return Some(CaptureError::Malformed {
                        offset: consumed as u64,
                        frames,
                        what: "packet block names an interface that was never described",
                    });
                };
                let ticks = (u128::from(epb.ts_high) << 32) | u128::from(epb.ts_low);
                let resolution = u128::from(iface.resolution.max(1));
                let secs = ticks / resolution;
                let frac_ns = (ticks % resolution) * NANOS_PER_SEC / resolution;
                // ticks < 2^64, so secs and frac_ns fit an i128 with room to spare.
                last_ns = (secs as i128 + i128::from(iface.offset_s)) * NANOS_PER_SEC as i128
                    + frac_ns as i128;
                on_frame(Frame {
                    at_ns: last_ns,
                    link_type: iface.link_type,
                    data: epb.data.get(..epb.caplen as usize).unwrap_or(epb.data),
                });
                frames += 1;
            }
            Block::SimplePacket(spb) => {
                // A Simple Packet Block belongs to interface 0 and has no timestamp.
                let Some(iface) = interfaces.first() else {
                    return Some(CaptureError::Malformed {
                        offset: consumed as u64,
                        frames,
                        what: "packet block before any interface description",
                    });
                };
                on_frame(Frame {
                    at_ns: last_ns,
                    link_type: iface.link_type,
                    data: spb.data.get(..spb.origlen as usize).unwrap_or(spb.data),
                });
                frames += 1;
            }
            _ => {}
        }
    }
    None
}

/// The length a pcapng block occupied in the file (for error offsets).
fn block_len(block: &Block<'_>) -> usize {
    let len = match block {
        Block::SectionHeader(b) => b.block_len1,
        Block::InterfaceDescription(b) => b.block_len1,
        Block::EnhancedPacket(b) => b.block_len1,
        Block::SimplePacket(b) => b.block_len1,
        Block::NameResolution(b) => b.block_len1,
        Block::InterfaceStatistics(b) => b.block_len1,
        Block::SystemdJournalExport(b) => b.block_len1,
        Block::DecryptionSecrets(b) => b.block_len1,
        Block::ProcessInformation(b) => b.block_len1,
        Block::Custom(b) => b.block_len1,
        Block::Unknown(b) => b.block_len1,
    };
    len as usize
}

fn container_error(e: &nom::Err<PcapError<&[u8]>>, offset: u64, frames: u64) -> CaptureError {
    match e {
        nom::Err::Incomplete(_) => CaptureError::Truncated { offset, frames },
        nom::Err::Error(PcapError::Incomplete(_) | PcapError::UnexpectedEof)
        | nom::Err::Failure(PcapError::Incomplete(_) | PcapError::UnexpectedEof) => {
            CaptureError::Truncated { offset, frames }
        }
        nom::Err::Error(_) | nom::Err::Failure(_) => CaptureError::Malformed {
            offset,
            frames,
            what: "record or block structure is invalid",
        },
    }
}
