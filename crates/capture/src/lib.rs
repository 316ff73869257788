//! Reading recorded calls: pcap/pcapng bytes in, RTP streams with the meaning of their payload
//! types, SIP, SDP and SIP INFO key presses out — everything [`replay`] needs to run each
//! stream through the live media path ([`media::receive::ReceivePath`]). No I/O, no clock: the
//! caller reads the file (in pieces, twice: [`Scanner`] then [`replay::Replay`]) and chooses
//! the base instant.
//!
//! ```text
//!  bytes ─ container (pcap | pcapng) ─ frames ─ net (link, IP, reassembly, UDP/TCP) ─ datagrams
//!  datagrams ─ sipscan (SIP on any port, SDP, INFO) ─┐
//!            └──────────── streams (SDP endpoints, else RTP heuristics) ─ replay ─ digits
//! ```
//!
//! A broken or truncated file still yields everything read before the damage, together with
//! the error ([`Capture::error`]).

pub mod audio;
mod container;
mod net;
pub mod payload;
pub mod replay;
pub mod sipscan;
pub mod streams;

pub use container::{Format, MAX_RECORD, is_capture};
pub use net::{Datagram, FrameCounts, Transport};
pub use payload::{Encoding, Origin, PayloadType, RtpHeader};
pub use sipscan::{InfoDigit, SdpMedia, SipFacts};
pub use streams::{Discovery, SsrcSummary, Stream};

/// Why a capture could not be read to its end. Whatever was read before is still returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    /// The bytes start with neither a pcap nor a pcapng magic number.
    #[error("not a pcap or pcapng capture (unknown magic number)")]
    NotACapture,
    /// The file ends inside a header, record or block: it was cut short (a capture still
    /// being written, or a copy that stopped).
    #[error("capture is truncated at byte {offset} after {frames} frames")]
    Truncated {
        /// Byte offset of the incomplete record or block.
        offset: u64,
        /// Frames read before it.
        frames: u64,
    },
    /// A record or block is structurally invalid.
    #[error("capture is corrupt at byte {offset} after {frames} frames: {what}")]
    Malformed {
        /// Byte offset of the bad record or block.
        offset: u64,
        /// Frames read before it.
        frames: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// Every frame is on a link layer we do not read (802.11, USB, …).
    #[error("link type {0} is not supported (Ethernet, Linux cooked, raw IP and BSD loopback are)")]
    UnsupportedLinkType(u32),
}

/// What one pass over a capture file found: everything but the packets themselves, which a
/// second pass ([`replay::Replay`]) feeds to the receive path.
#[derive(Clone, Debug)]
pub struct Capture {
    /// Container format, when the magic number was recognised.
    pub format: Option<Format>,
    /// What became of the frames.
    pub counts: FrameCounts,
    /// SDP media and SIP INFO key presses.
    pub sip: SipFacts,
    /// RTP streams (and SIP-INFO-only dialog directions), by first packet time.
    pub streams: Vec<Stream>,
    /// UDP datagrams of flows beyond those followed ([`streams::MAX_FLOWS`]): not analysed.
    pub untracked: u64,
    /// Why reading stopped before the end of the file, if it did.
    pub error: Option<CaptureError>,
}

/// The first pass over a capture file fed in pieces of any size ([`Scanner::push`], then
/// [`Scanner::finish`]). Memory does not grow with the file: records are parsed as they
/// complete and only per-flow and per-call facts are kept.
pub struct Scanner {
    frames: Frames,
    sip: sipscan::Scanner,
    flows: streams::Flows,
}

/// Container and network decoding: bytes in, datagrams out (shared by both passes).
pub(crate) struct Frames {
    container: container::Container,
    decoder: net::Decoder,
    error: Option<CaptureError>,
}

impl Frames {
    pub fn new() -> Frames {
        Frames {
            container: container::Container::new(),
            decoder: net::Decoder::new(),
            error: None,
        }
    }

    /// Decodes the next bytes, calling `on_datagram` for every datagram they complete.
    pub fn push(&mut self, bytes: &[u8], mut on_datagram: impl FnMut(&Datagram)) {
        let Frames {
            container, decoder, ..
        } = self;
        let result = container.push(bytes, |frame| {
            if let Some(d) = decoder.frame(frame) {
                on_datagram(&d);
            }
        });
        if let Err(e) = result {
            self.error.get_or_insert(e);
        }
    }

    /// End of the file; the error that stopped reading, if any.
    pub fn finish(&mut self) -> Option<CaptureError> {
        if let Err(e) = self.container.finish() {
            self.error.get_or_insert(e);
        }
        let counts = self.decoder.counts;
        if self.error.is_none()
            && counts.frames > 0
            && counts.unsupported_link == counts.frames
            && let Some(link) = self.decoder.unsupported
        {
            self.error = Some(CaptureError::UnsupportedLinkType(link));
        }
        self.error.clone()
    }
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("format", &self.frames.container.format())
            .field("counts", &self.frames.decoder.counts)
            .finish()
    }
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new()
    }
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner {
            frames: Frames::new(),
            sip: sipscan::Scanner::default(),
            flows: streams::Flows::default(),
        }
    }

    /// Reads the next `bytes` of the file.
    pub fn push(&mut self, bytes: &[u8]) {
        let Scanner { frames, sip, flows } = self;
        frames.push(bytes, |d| {
            if !sip.datagram(d) && d.transport == Transport::Udp {
                flows.datagram(d);
            }
        });
    }

    /// End of the file: what was found.
    pub fn finish(mut self) -> Capture {
        let error = self.frames.finish();
        let sip = self.sip.facts;
        let untracked = self.flows.untracked;
        let streams = self.flows.finish(&sip);
        Capture {
            format: self.frames.container.format(),
            counts: self.frames.decoder.counts,
            sip,
            streams,
            untracked,
            error,
        }
    }
}

/// Reads a whole capture from its bytes. Never fails outright: a damaged file gives what was
/// read before the damage plus [`Capture::error`].
pub fn read(bytes: &[u8]) -> Capture {
    let mut scanner = Scanner::new();
    scanner.push(bytes);
    scanner.finish()
}
