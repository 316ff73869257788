//! SIP in a capture: every UDP payload that looks like SIP (on any port) and every TCP stream
//! that starts like SIP is parsed with the project's own SIP parser; from the messages we keep
//! what a replay needs: the SDP media endpoints with their payload types, and the key presses
//! sent as SIP INFO.

use std::collections::HashMap;
use std::net::SocketAddr;

use sip::framer::StreamFramer;
use sip::message::{Limits, Message};
use sip::sdp::SessionDescription;

use crate::net::{Datagram, Transport};
use crate::payload::{Encoding, Origin, PayloadType};

/// Most bytes buffered for one TCP flow that never frames into messages.
const MAX_TCP_BUFFER: usize = 256 * 1024;

/// A SIP message seen in the capture.
#[derive(Clone, Debug)]
pub struct SipMessage {
    /// Capture time since the first frame, ns.
    pub at_ns: u64,
    /// 1-based frame number (of the last segment, for TCP).
    pub frame: u64,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// Method name (`INVITE`) or status code (`200`).
    pub summary: String,
    /// Call-ID, empty when missing.
    pub call_id: String,
    /// The parsed message.
    pub message: Message,
}

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
    /// Every SIP message, in capture order.
    pub messages: Vec<SipMessage>,
    /// Every audio media description, in capture order.
    pub media: Vec<SdpMedia>,
    /// Every DTMF INFO, in capture order (retransmissions removed).
    pub info_digits: Vec<InfoDigit>,
    /// UDP datagram indexes that were SIP (not to be taken for RTP).
    pub sip_datagrams: Vec<usize>,
    /// Messages that look like SIP but our parser refuses (kept for their SDP and INFO only).
    pub unparsed: u64,
    /// (Call-ID, sender, CSeq) of every DTMF INFO seen, to drop retransmissions.
    seen_info: Vec<(String, SocketAddr, String)>,
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

/// Finds the SIP in `datagrams`.
pub(crate) fn scan(datagrams: &[Datagram]) -> SipFacts {
    let limits = Limits::default();
    let mut facts = SipFacts::default();
    let mut tcp: HashMap<(SocketAddr, SocketAddr), TcpFlow> = HashMap::new();
    for (index, d) in datagrams.iter().enumerate() {
        match d.transport {
            Transport::Udp => {
                if !looks_like_sip(&d.payload) {
                    continue;
                }
                facts.sip_datagrams.push(index);
                match Message::parse(&d.payload, &limits) {
                    Ok(message) => facts.add(d, message),
                    Err(_) => facts.add_lenient(d, &d.payload),
                }
            }
            Transport::Tcp { seq } => {
                let flow = tcp.entry((d.src, d.dst)).or_insert_with(|| TcpFlow {
                    framer: None,
                    next_seq: seq,
                });
                if flow.framer.is_none() {
                    if !looks_like_sip(&d.payload) {
                        continue;
                    }
                    flow.framer = Some(StreamFramer::new(&limits));
                    flow.next_seq = seq;
                }
                // In-order segments only; retransmissions (seq behind) are skipped and a
                // gap restarts framing at the next segment that starts a message.
                let ahead = seq.wrapping_sub(flow.next_seq);
                if ahead != 0 {
                    if ahead > u32::MAX / 2 {
                        continue;
                    }
                    flow.framer = None;
                    if looks_like_sip(&d.payload) {
                        flow.framer = Some(StreamFramer::new(&limits));
                    } else {
                        flow.next_seq = seq.wrapping_add(d.payload.len() as u32);
                        continue;
                    }
                }
                flow.next_seq = seq.wrapping_add(d.payload.len() as u32);
                let Some(framer) = flow.framer.as_mut() else {
                    continue;
                };
                framer.push(&d.payload);
                let mut failed = false;
                while let Some(next) = framer.next_message() {
                    match next {
                        Ok(bytes) => match Message::parse(&bytes, &limits) {
                            Ok(message) => facts.add(d, message),
                            Err(_) => facts.add_lenient(d, &bytes),
                        },
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                if failed || framer.buffered() > MAX_TCP_BUFFER {
                    flow.framer = None;
                }
            }
        }
    }
    facts
}

struct TcpFlow {
    framer: Option<StreamFramer>,
    next_seq: u32,
}

impl SipFacts {
    fn add(&mut self, d: &Datagram, message: Message) {
        let call_id = message.headers().get("Call-ID").unwrap_or("").to_string();
        let (summary, is_info) = match &message {
            Message::Request(r) => (r.method.as_str().to_string(), r.method.as_str() == "INFO"),
            Message::Response(r) => (r.status.to_string(), false),
        };
        let content_type = message
            .headers()
            .get("Content-Type")
            .unwrap_or("")
            .to_string();
        let cseq = message.headers().get("CSeq").unwrap_or("").to_string();
        self.add_body(d, &call_id, is_info, &content_type, &cseq, message.body());
        self.messages.push(SipMessage {
            at_ns: d.at_ns,
            frame: d.frame,
            src: d.src,
            dst: d.dst,
            summary,
            call_id,
            message,
        });
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
        self.seen_info.push(key);
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
            if !self
                .media
                .iter()
                .any(|x| x.endpoint == media.endpoint && x.payload_types == media.payload_types)
            {
                self.media.push(media);
            }
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
