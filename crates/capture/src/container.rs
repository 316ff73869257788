//! The capture file container: classic pcap (both byte orders, µs and ns timestamps, the
//! "modified" Kuznetzov variant) and pcapng (any number of sections and interfaces).
//!
//! ```text
//!  pcap:    [global header 24 B: magic, version, snaplen, link type]
//!           [record 16 B: ts_sec, ts_frac, caplen, origlen][caplen bytes] ...
//!  pcapng:  [SHB][IDB link type, if_tsresol, if_tsoffset]...[EPB if_id, ts, caplen][SPB]...
//! ```
//!
//! Read incrementally ([`Container`]): the file comes in pieces of any size and only an
//! incomplete record is kept between them. Whatever was read before a broken or truncated
//! record is handed out before the error.

use pcap_parser::nom;
use pcap_parser::pcapng::{Block, parse_block_be, parse_block_le};
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

/// Whether `bytes` start like a pcap or pcapng file.
pub fn is_capture(bytes: &[u8]) -> bool {
    bytes
        .get(..4)
        .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]))
        .is_some_and(|m| PCAP_MAGICS.contains(&m) || m == PCAPNG_SHB)
}

/// Largest record or block accepted, bytes: tcpdump's largest snapshot length (256 KiB) with
/// room for pcapng's block framing and options. A header announcing more is corrupt (and
/// would otherwise decide how much memory a stranger's file gets).
pub const MAX_RECORD: usize = 256 * 1024 + 4096;
/// Classic pcap: global header, record header, and record header of the "modified" format.
const PCAP_HEADER: usize = 24;
const PCAP_RECORD_HEADER: usize = 16;
const PCAP_MODIFIED_RECORD_HEADER: usize = 24;
/// pcapng: block type and total length come first in every block.
const PCAPNG_BLOCK_START: usize = 8;

/// Where the reader is in the file.
#[derive(Debug)]
enum Stage {
    /// The first four bytes decide the format.
    Magic,
    PcapHeader,
    Pcap {
        link_type: u32,
        nanos: bool,
        big_endian: bool,
        modified: bool,
    },
    PcapNg {
        big_endian: bool,
        interfaces: Vec<Interface>,
        last_ns: i128,
    },
    /// An error was found; nothing more is read.
    Stopped,
}

/// Frames from a capture file fed in pieces of any size: bytes are kept only while a record
/// is incomplete (at most [`MAX_RECORD`]). Whatever was read before damage is handed out
/// before the error.
#[derive(Debug)]
pub(crate) struct Container {
    stage: Stage,
    format: Option<Format>,
    /// Bytes of an incomplete header, record or block.
    pending: Vec<u8>,
    /// File offset of the first byte not yet consumed.
    offset: u64,
    frames: u64,
}

impl Container {
    pub fn new() -> Container {
        Container {
            stage: Stage::Magic,
            format: None,
            pending: Vec::new(),
            offset: 0,
            frames: 0,
        }
    }

    /// The format, once the magic number has been read.
    pub fn format(&self) -> Option<Format> {
        self.format
    }

    /// Reads the next `bytes` of the file, calling `on_frame` for every frame they complete.
    /// After an error nothing more is read (the error is returned once).
    pub fn push(
        &mut self,
        bytes: &[u8],
        mut on_frame: impl FnMut(Frame<'_>),
    ) -> Result<(), CaptureError> {
        if matches!(self.stage, Stage::Stopped) {
            return Ok(());
        }
        let result = if self.pending.is_empty() {
            // The usual case: records parsed where they lie, only a tail kept.
            let used = self.parse(bytes, &mut on_frame);
            if let Ok(used) = used {
                self.pending.extend_from_slice(&bytes[used..]);
            }
            used.map(|_| ())
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(bytes);
            let used = self.parse(&pending, &mut on_frame);
            if let Ok(used) = used {
                pending.drain(..used);
                self.pending = pending;
            }
            used.map(|_| ())
        };
        if result.is_err() {
            self.stage = Stage::Stopped;
            self.pending = Vec::new();
        }
        result
    }

    /// End of the file: an incomplete header or record is a truncation.
    pub fn finish(&mut self) -> Result<(), CaptureError> {
        let stage = std::mem::replace(&mut self.stage, Stage::Stopped);
        match stage {
            Stage::Stopped => Ok(()),
            Stage::Magic => Err(CaptureError::NotACapture),
            _ if !self.pending.is_empty() => Err(CaptureError::Truncated {
                offset: self.offset,
                frames: self.frames,
            }),
            Stage::PcapHeader => Err(CaptureError::Truncated {
                offset: 0,
                frames: 0,
            }),
            _ => Ok(()),
        }
    }

    /// Parses whole records from `buf` (which starts at `self.offset`); returns how many
    /// bytes were consumed.
    fn parse(
        &mut self,
        buf: &[u8],
        on_frame: &mut impl FnMut(Frame<'_>),
    ) -> Result<usize, CaptureError> {
        let mut at = 0usize;
        loop {
            let rest = &buf[at..];
            let used = match &mut self.stage {
                Stage::Stopped => return Ok(at),
                Stage::Magic => {
                    let Some(m) = rest.get(..4) else {
                        return Ok(at);
                    };
                    let magic = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
                    if PCAP_MAGICS.contains(&magic) {
                        self.format = Some(Format::Pcap);
                        self.stage = Stage::PcapHeader;
                    } else if magic == PCAPNG_SHB {
                        self.format = Some(Format::PcapNg);
                        self.stage = Stage::PcapNg {
                            big_endian: false,
                            interfaces: Vec::new(),
                            last_ns: 0,
                        };
                    } else {
                        return Err(CaptureError::NotACapture);
                    }
                    0
                }
                Stage::PcapHeader => {
                    if rest.len() < PCAP_HEADER {
                        return Ok(at);
                    }
                    let header = match pcap_parser::parse_pcap_header(rest) {
                        Ok((_, header)) => header,
                        Err(_) => return Err(CaptureError::NotACapture),
                    };
                    self.stage = Stage::Pcap {
                        // The link type is a 32-bit field whose upper bits may carry FCS flags
                        // (pcap spec §8.1).
                        link_type: (header.network.0 as u32) & 0x0fff_ffff,
                        nanos: header.is_nanosecond_precision(),
                        big_endian: header.is_bigendian(),
                        modified: header.is_modified_format(),
                    };
                    PCAP_HEADER
                }
                Stage::Pcap {
                    link_type,
                    nanos,
                    big_endian,
                    modified,
                } => {
                    let header = if *modified {
                        PCAP_MODIFIED_RECORD_HEADER
                    } else {
                        PCAP_RECORD_HEADER
                    };
                    if rest.len() < header {
                        return Ok(at);
                    }
                    let caplen = u32_at(rest, 8, *big_endian) as usize;
                    if caplen > MAX_RECORD {
                        return Err(malformed(
                            self.offset,
                            self.frames,
                            "record larger than 256 KiB",
                        ));
                    }
                    if rest.len() < header + caplen {
                        return Ok(at);
                    }
                    let parse = if *modified {
                        parse_pcap_frame_modified
                    } else if *big_endian {
                        parse_pcap_frame_be
                    } else {
                        parse_pcap_frame
                    };
                    let (next, block) = match parse(&rest[..header + caplen]) {
                        Ok(ok) => ok,
                        Err(e) => return Err(container_error(&e, self.offset, self.frames)),
                    };
                    let frac = if *nanos {
                        i128::from(block.ts_usec)
                    } else {
                        i128::from(block.ts_usec) * 1000
                    };
                    on_frame(Frame {
                        at_ns: i128::from(block.ts_sec) * NANOS_PER_SEC as i128 + frac,
                        link_type: *link_type,
                        data: block.data,
                    });
                    self.frames += 1;
                    header + caplen - next.len()
                }
                Stage::PcapNg {
                    big_endian,
                    interfaces,
                    last_ns,
                } => {
                    if rest.len() < PCAPNG_BLOCK_START {
                        return Ok(at);
                    }
                    // A Section Header Block says its own byte order (its magic 0x1a2b3c4d).
                    let kind = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    let big = if kind == PCAPNG_SHB {
                        match rest.get(8..12) {
                            Some(bom) => bom == [0x1a, 0x2b, 0x3c, 0x4d],
                            None => return Ok(at),
                        }
                    } else {
                        *big_endian
                    };
                    let len = u32_at(rest, 4, big) as usize;
                    if len > MAX_RECORD {
                        return Err(malformed(
                            self.offset,
                            self.frames,
                            "block larger than 256 KiB",
                        ));
                    }
                    if rest.len() < len.max(PCAPNG_BLOCK_START) {
                        return Ok(at);
                    }
                    let parse = if big { parse_block_be } else { parse_block_le };
                    let block = match parse(&rest[..len.max(PCAPNG_BLOCK_START)]) {
                        Ok((_, block)) => block,
                        Err(e) => return Err(container_error(&e, self.offset, self.frames)),
                    };
                    match block {
                        Block::SectionHeader(shb) => {
                            *big_endian = shb.big_endian();
                            interfaces.clear();
                        }
                        Block::InterfaceDescription(idb) => interfaces.push(Interface {
                            link_type: (idb.linktype.0 as u32) & 0x0fff_ffff,
                            resolution: idb.ts_resolution().unwrap_or(PCAPNG_DEFAULT_RESOLUTION),
                            offset_s: idb.ts_offset(),
                        }),
                        Block::EnhancedPacket(epb) => {
                            let Some(iface) = interfaces.get(epb.if_id as usize) else {
                                return Err(malformed(
                                    self.offset,
                                    self.frames,
                                    "packet block names an interface that was never described",
                                ));
                            };
                            let ticks = (u128::from(epb.ts_high) << 32) | u128::from(epb.ts_low);
                            let resolution = u128::from(iface.resolution.max(1));
                            let secs = ticks / resolution;
                            let frac_ns = (ticks % resolution) * NANOS_PER_SEC / resolution;
                            // ticks < 2^64, so secs and frac_ns fit an i128 with room to spare.
                            *last_ns = (secs as i128 + i128::from(iface.offset_s))
                                * NANOS_PER_SEC as i128
                                + frac_ns as i128;
                            on_frame(Frame {
                                at_ns: *last_ns,
                                link_type: iface.link_type,
                                data: epb.data.get(..epb.caplen as usize).unwrap_or(epb.data),
                            });
                            self.frames += 1;
                        }
                        Block::SimplePacket(spb) => {
                            // A Simple Packet Block belongs to interface 0 and has no timestamp.
                            let Some(iface) = interfaces.first() else {
                                return Err(malformed(
                                    self.offset,
                                    self.frames,
                                    "packet block before any interface description",
                                ));
                            };
                            on_frame(Frame {
                                at_ns: *last_ns,
                                link_type: iface.link_type,
                                data: spb.data.get(..spb.origlen as usize).unwrap_or(spb.data),
                            });
                            self.frames += 1;
                        }
                        _ => {}
                    }
                    len.max(PCAPNG_BLOCK_START)
                }
            };
            at += used;
            self.offset += used as u64;
        }
    }
}

fn malformed(offset: u64, frames: u64, what: &'static str) -> CaptureError {
    CaptureError::Malformed {
        offset,
        frames,
        what,
    }
}

/// A 32-bit field of a header in the file's byte order.
fn u32_at(b: &[u8], at: usize, big_endian: bool) -> u32 {
    let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if big_endian {
        u32::from_be_bytes(v)
    } else {
        u32::from_le_bytes(v)
    }
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
