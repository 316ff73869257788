//! SIP in a capture: every UDP payload that looks like SIP (on any port) and every TCP stream
//! that starts like SIP is parsed with the project's own SIP parser; from the messages we keep
//! what a replay needs: the SDP media endpoints with their payload types, and the key presses
//! sent as SIP INFO. Datagrams are taken one at a time ([`Scanner`]); the messages themselves
//! are not kept, and everything kept is bounded (a capture of a whole trunk's day stays small).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use sip::framer::StreamFramer;
use sip::message::{Limits, Message};
use sip::sdp::SessionDescription;

use crate::net::{Datagram, Transport};
use crate::payload::{Encoding, Origin, PayloadType};

/// Most bytes buffered for one TCP flow that never frames into messages.
const MAX_TCP_BUFFER: usize = 256 * 1024;
/// TCP flows framed at once; a new one beyond this replaces the one idle longest.
const MAX_TCP_FLOWS: usize = 16;
/// Audio media descriptions kept (distinct endpoint and payload types): two per call, so a
/// capture of thousands of calls; further SDPs are counted in [`SipFacts::dropped`].
pub const MAX_MEDIA: usize = 8192;
/// SIP INFO key presses kept; further ones are counted in [`SipFacts::dropped`].
pub const MAX_INFO_DIGITS: usize = 16_384;

/// One `m=audio` line of an SDP body seen in the capture: where its author receives RTP and
/// what the payload types mean there (RFC 3264 §5.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdpMedia {
    /// When the SDP was seen, ns since the first frame.
    pub at_ns: u64,
    /// Call-ID of the message that carried it.
    pub call_id: String,
    /// Who sent the SIP message (the SDP's author, seen from the capture point).
    pub author: SocketAddr,
    /// `c=` address and `m=` port: where the author receives RTP.
    pub endpoint: SocketAddr,
    /// Payload types of the `m=` line (rtpmap, or the static table for 0–34).
    pub payload_types: Vec<PayloadType>,
}

/// A key press carried by SIP INFO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoDigit {
    /// Capture time since the first frame, ns.
    pub at_ns: u64,
    /// 1-based frame number.
    pub frame: u64,
    /// Who sent the INFO (the party pressing the key).
    pub src: SocketAddr,
    /// Who received it.
    pub dst: SocketAddr,
    /// Call-ID.
    pub call_id: String,
    /// The key.
    pub digit: dtmf::Digit,
    /// Duration the body states.
    pub duration: Option<std::time::Duration>,
}

/// All SIP facts of a capture.
#[derive(Clone, Debug, Default)]
pub struct SipFacts {
    /// SIP messages our parser accepts.
    pub messages: u64,
    /// Every audio media description, in capture order (up to [`MAX_MEDIA`]).
    pub media: Vec<SdpMedia>,
    /// Every DTMF INFO, in capture order, retransmissions removed (up to [`MAX_INFO_DIGITS`]).
    pub info_digits: Vec<InfoDigit>,
    /// Messages that look like SIP but our parser refuses (kept for their SDP and INFO only).
    pub unparsed: u64,
    /// SDP media descriptions and INFO key presses beyond the bounds, not kept.
    pub dropped: u64,
    /// (Call-ID, sender, CSeq) of every DTMF INFO kept, to drop retransmissions.
    seen_info: HashSet<(String, SocketAddr, String)>,
}

/// Whether a UDP payload plausibly starts a SIP message: a request line ending in
/// `SIP/2.0` or a status line starting with it (RFC 3261 §7.1, §7.2).
pub(crate) fn looks_like_sip(payload: &[u8]) -> bool {
    let start = payload
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(payload.len());
    let rest = &payload[start..];
    let line_end = rest
        .iter()
        .take(1024)
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(rest.len().min(1024));
    let line = &rest[..line_end];
    line.starts_with(b"SIP/2.0 ") || (line.ends_with(b" SIP/2.0") && line.len() > 8)
}

/// Finds the SIP in datagrams taken one at a time.
#[derive(Debug, Default)]
pub(crate) struct Scanner {
    limits: Limits,
    pub facts: SipFacts,
    tcp: HashMap<(SocketAddr, SocketAddr), TcpFlow>,
}

impl Scanner {
    /// Takes one datagram; true when it is (part of) SIP, not to be taken for RTP.
    pub fn datagram(&mut self, d: &Datagram) -> bool {
        match d.transport {
            Transport::Udp => {
                if !looks_like_sip(&d.payload) {
                    return false;
                }
                match Message::parse(&d.payload, &self.limits) {
                    Ok(message) => self.facts.add(d, message),
                    Err(_) => self.facts.add_lenient(d, &d.payload),
                }
                true
            }
            Transport::Tcp { seq } => {
                self.segment(d, seq);
                false
            }
        }
    }

    fn segment(&mut self, d: &Datagram, seq: u32) {
        let key = (d.src, d.dst);
        if !self.tcp.contains_key(&key) {
            if !looks_like_sip(&d.payload) {
                return;
            }
            if self.tcp.len() >= MAX_TCP_FLOWS
                && let Some(idle) = self
                    .tcp
                    .iter()
                    .min_by_key(|(_, f)| f.last_frame)
                    .map(|(k, _)| *k)
            {
                self.tcp.remove(&idle);
            }
            self.tcp.insert(
                key,
                TcpFlow {
                    framer: StreamFramer::new(&self.limits),
                    next_seq: seq,
                    last_frame: d.frame,
                },
            );
        }
        let Some(flow) = self.tcp.get_mut(&key) else {
            return;
        };
        flow.last_frame = d.frame;
        // In-order segments only; retransmissions (seq behind) are skipped and a gap restarts
        // framing at the next segment that starts a message.
        let ahead = seq.wrapping_sub(flow.next_seq);
        if ahead != 0 {
            if ahead > u32::MAX / 2 {
                return;
            }
            if !looks_like_sip(&d.payload) {
                self.tcp.remove(&key);
                return;
            }
            flow.framer = StreamFramer::new(&self.limits);
        }
        flow.next_seq = seq.wrapping_add(d.payload.len() as u32);
        flow.framer.push(&d.payload);
        let mut failed = false;
        while let Some(next) = flow.framer.next_message() {
            match next {
                Ok(bytes) => match Message::parse(&bytes, &self.limits) {
                    Ok(message) => self.facts.add(d, message),
                    Err(_) => self.facts.add_lenient(d, &bytes),
                },
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed || flow.framer.buffered() > MAX_TCP_BUFFER {
            self.tcp.remove(&key);
        }
    }
}

#[derive(Debug)]
struct TcpFlow {
    framer: StreamFramer,
    next_seq: u32,
    /// Frame of its last segment (the flow idle longest is the one given up).
    last_frame: u64,
}

impl SipFacts {
    fn add(&mut self, d: &Datagram, message: Message) {
        self.messages += 1;
        let headers = message.headers();
        let call_id = headers.get("Call-ID").unwrap_or("");
        let is_info = matches!(&message, Message::Request(r) if r.method.as_str() == "INFO");
        let content_type = headers.get("Content-Type").unwrap_or("");
        let cseq = headers.get("CSeq").unwrap_or("");
        self.add_body(d, call_id, is_info, content_type, cseq, message.body());
    }

    /// The SDP and DTMF INFO facts of one message body.
    fn add_body(
        &mut self,
        d: &Datagram,
        call_id: &str,
        is_info: bool,
        content_type: &str,
        cseq: &str,
        body: &[u8],
    ) {
        let base_type = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if let Some(sdp) = sdp_body(&base_type, body) {
            self.add_sdp(d, call_id, &sdp);
        }
        if !is_info || !sip::info::is_dtmf_content_type(content_type) {
            return;
        }
        let Ok(info) = sip::info::parse_dtmf_info(content_type, body) else {
            return;
        };
        let Some(digit) = dtmf::Digit::from_char(info.key) else {
            return;
        };
        // A retransmitted INFO (same Call-ID, sender and CSeq) is one key press.
        let key = (
            call_id.to_string(),
            d.src,
            cseq.split_whitespace().collect::<Vec<_>>().join(" "),
        );
        if self.seen_info.contains(&key) {
            return;
        }
        if self.info_digits.len() >= MAX_INFO_DIGITS {
            self.dropped += 1;
            return;
        }
        self.seen_info.insert(key);
        self.info_digits.push(InfoDigit {
            at_ns: d.at_ns,
            frame: d.frame,
            src: d.src,
            dst: d.dst,
            call_id: call_id.to_string(),
            digit,
            duration: info.duration,
        });
    }

    /// A message our parser refuses (a missing mandatory header, a sloppy start line): its
    /// SDP and DTMF INFO still tell which streams exist and which keys were sent.
    fn add_lenient(&mut self, d: &Datagram, bytes: &[u8]) {
        self.unparsed += 1;
        let Some(split) = find(bytes, b"\r\n\r\n")
            .map(|i| (i, i + 4))
            .or_else(|| find(bytes, b"\n\n").map(|i| (i, i + 2)))
        else {
            return;
        };
        let Ok(head) = std::str::from_utf8(&bytes[..split.0]) else {
            return;
        };
        let mut lines = head.lines();
        let start = lines.next().unwrap_or("").trim_start();
        let is_info = start.starts_with("INFO ");
        let (mut call_id, mut content_type, mut cseq, mut length) = ("", "", "", None);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "call-id" | "i" => call_id = value,
                "content-type" | "c" => content_type = value,
                "cseq" => cseq = value,
                "content-length" | "l" => length = value.parse::<usize>().ok(),
                _ => {}
            }
        }
        let body = &bytes[split.1..];
        let body = &body[..length.unwrap_or(body.len()).min(body.len())];
        self.add_body(d, call_id, is_info, content_type, cseq, body);
    }

    fn add_sdp(&mut self, d: &Datagram, call_id: &str, sdp: &SessionDescription) {
        for m in &sdp.media {
            if m.kind != "audio" || m.port == 0 {
                continue;
            }
            let Some(ip) = m.connection.or(sdp.connection) else {
                continue;
            };
            let payload_types = m
                .formats
                .iter()
                .map(|&pt| match m.rtpmaps.iter().find(|r| r.pt == pt) {
                    Some(r) => PayloadType {
                        pt,
                        encoding: Encoding::from_name(&r.encoding),
                        clock_rate: r.clock_rate,
                        origin: Origin::Sdp,
                    },
                    None => PayloadType::from_static(pt, Origin::Sdp),
                })
                .collect();
            let media = SdpMedia {
                at_ns: d.at_ns,
                call_id: call_id.to_string(),
                author: d.src,
                endpoint: SocketAddr::new(ip, m.port),
                payload_types,
            };
            // Retransmitted INVITEs and 200s repeat the same SDP.
            if self
                .media
                .iter()
                .any(|x| x.endpoint == media.endpoint && x.payload_types == media.payload_types)
            {
                continue;
            }
            if self.media.len() >= MAX_MEDIA {
                self.dropped += 1;
                continue;
            }
            self.media.push(media);
        }
    }
}

/// The SDP in a body: `application/sdp` as is, or the SDP part of a `multipart/*` body
/// (SIP-I/SIP-T carry ISUP beside it).
fn sdp_body(content_type: &str, body: &[u8]) -> Option<SessionDescription> {
    if content_type == "application/sdp" {
        return SessionDescription::parse(body).ok();
    }
    if content_type.starts_with("multipart/") {
        let start = find(body, b"v=0")?;
        let rest = &body[start..];
        // The part ends at the next boundary delimiter line.
        let end = find(rest, b"\r\n--").unwrap_or(rest.len());
        return SessionDescription::parse(&rest[..end]).ok();
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
