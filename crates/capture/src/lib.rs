//! Reading recorded calls: pcap/pcapng bytes in, RTP streams with the meaning of their payload
//! types, SIP, SDP and SIP INFO key presses out — everything [`replay`] needs to run each
//! stream through the live media path ([`media::receive::ReceivePath`]). No I/O, no clock: the
//! caller reads the file and chooses the base instant.
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

pub use container::Format;
pub use net::{Datagram, FrameCounts, Transport};
pub use payload::{Encoding, Origin, PayloadType, RtpHeader};
pub use sipscan::{InfoDigit, SdpMedia, SipFacts, SipMessage};
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

/// Everything read from one capture file.
#[derive(Clone, Debug)]
pub struct Capture {
    /// Container format, when the magic number was recognised.
    pub format: Option<Format>,
    /// Every UDP datagram and TCP segment with payload, in capture order.
    pub datagrams: Vec<Datagram>,
    /// What became of the frames.
    pub counts: FrameCounts,
    /// SIP messages, SDP media and SIP INFO key presses.
    pub sip: SipFacts,
    /// RTP streams (and SIP-INFO-only dialog directions), by first packet time.
    pub streams: Vec<Stream>,
    /// Why reading stopped before the end of the file, if it did.
    pub error: Option<CaptureError>,
}

/// Reads a capture from its bytes. Never fails outright: a damaged file gives what was read
/// before the damage plus [`Capture::error`].
pub fn read(bytes: &[u8]) -> Capture {
    let mut decoder = net::Decoder::new();
    let mut datagrams = Vec::new();
    let (format, mut error) = container::read_frames(bytes, |frame| {
        if let Some(d) = decoder.frame(frame) {
            datagrams.push(d);
        }
    });
    let counts = decoder.counts;
    if error.is_none()
        && counts.frames > 0
        && counts.unsupported_link == counts.frames
        && let Some(link) = decoder.unsupported
    {
        error = Some(CaptureError::UnsupportedLinkType(link));
    }
    let sip = sipscan::scan(&datagrams);
    let streams = streams::find(&datagrams, &sip);
    Capture {
        format,
        datagrams,
        counts,
        sip,
        streams,
        error,
    }
}
