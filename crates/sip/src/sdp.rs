//! SDP offer/answer for one audio stream (RFC 4566, RFC 3264), G.711 plus RFC 4733 events.
//!
//! The parser is tolerant (unknown lines ignored, `\n` or `\r\n`, session- or media-level
//! `c=` and direction); the negotiation is strict about what matters: an audio stream with a
//! port, an address, and a codec we can send.
//!
//! SRTP keys travel as SDES `a=crypto` attributes ([`crate::sdes`]): our offer carries them
//! when [`LocalMedia::sdes`] is set, and [`Negotiated::sdes`] says what the other side's SDP
//! carried. Whether a call may go on without them is the call flow's policy, not this module's.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::sdes::{Crypto, LocalSdes, Sdes};

/// Largest SDP body we read (bytes).
pub const MAX_SDP_BYTES: usize = 16 * 1024;
/// Most `m=` sections we look at.
pub const MAX_MEDIA: usize = 16;
/// Packet time we offer and send (ms, RFC 4566 §6 `a=ptime`).
pub const PTIME_MS: u32 = 20;
/// Default dynamic payload type for telephone-event (RFC 4733; 101 is the de-facto choice).
pub const DEFAULT_TELEPHONE_EVENT_PT: u8 = 101;

/// Why an SDP body cannot be used. Malformed or unusable SDP is the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Bigger than [`MAX_SDP_BYTES`] or not UTF-8.
    #[error("SDP body too large or not text")]
    Unreadable,
    /// A line we need is malformed (1-based line number).
    #[error("malformed SDP line {0}")]
    Malformed(usize),
    /// No `m=audio` section with a non-zero port.
    #[error("no active audio stream")]
    NoAudio,
    /// The audio stream has no codec we support (PCMU/PCMA at 8000 Hz).
    #[error("no common audio codec")]
    NoCommonCodec,
    /// Neither the session nor the audio stream has a `c=` address.
    #[error("no connection address")]
    NoConnection,
}

/// Media direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both ways (default).
    SendRecv,
    /// The SDP's author only sends.
    SendOnly,
    /// The SDP's author only receives.
    RecvOnly,
    /// No media either way.
    Inactive,
}

impl Direction {
    fn from_attr(name: &str) -> Option<Self> {
        Some(match name {
            "sendrecv" => Self::SendRecv,
            "sendonly" => Self::SendOnly,
            "recvonly" => Self::RecvOnly,
            "inactive" => Self::Inactive,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// The direction an answer takes for this offered direction (RFC 3264 §6.1).
    pub fn reversed(self) -> Self {
        match self {
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            other => other,
        }
    }
}

/// `a=rtpmap` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type.
    pub pt: u8,
    /// Encoding name as written.
    pub encoding: String,
    /// Clock rate (Hz).
    pub clock_rate: u32,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, …
    pub kind: String,
    /// Port (0: rejected/disabled stream).
    pub port: u16,
    /// Transport protocol (`RTP/AVP`).
    pub proto: String,
    /// Payload types in preference order.
    pub formats: Vec<u8>,
    /// Media-level `c=` address.
    pub connection: Option<IpAddr>,
    /// rtpmap entries.
    pub rtpmaps: Vec<RtpMap>,
    /// fmtp entries (pt, parameters).
    pub fmtps: Vec<(u8, String)>,
    /// `a=ptime` (ms).
    pub ptime: Option<u32>,
    /// Media-level direction.
    pub direction: Option<Direction>,
    /// The `a=crypto` attributes (RFC 4568): the first usable one, or why none is.
    pub sdes: Sdes,
}

impl Media {
    /// Whether the transport is `RTP/SAVP` (SRTP, RFC 3711 §12).
    pub fn is_savp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("RTP/SAVP")
    }
}

/// A parsed session description (only what a voice call needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// `o=` session id.
    pub session_id: String,
    /// `o=` session version.
    pub session_version: String,
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Session-level direction.
    pub direction: Option<Direction>,
    /// Media sections.
    pub media: Vec<Media>,
}

/// The G.711 codecs we send and receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// G.711 µ-law (static PT 0).
    Pcmu,
    /// G.711 A-law (static PT 8).
    Pcma,
}

/// What the media engine needs after offer/answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Where to send RTP. `None` when the peer put us on hold with `0.0.0.0`.
    pub remote: Option<SocketAddr>,
    /// Codec to send.
    pub codec: Codec,
    /// Payload type of that codec in this session.
    pub codec_pt: u8,
    /// telephone-event payload type, if negotiated.
    pub telephone_event_pt: Option<u8>,
    /// Packet time the peer asked for (ms).
    pub ptime: Option<u32>,
    /// Direction from the remote side's point of view.
    pub direction: Direction,
    /// Whether the stream's transport is `RTP/SAVP`.
    pub savp: bool,
    /// What the SDP said about SRTP keys (the far end's key, when usable).
    pub sdes: Sdes,
}

impl Negotiated {
    /// Whether the far end holds the call (sendonly/inactive or 0.0.0.0, RFC 3264 §8.4).
    pub fn on_hold(&self) -> bool {
        self.remote.is_none() || matches!(self.direction, Direction::SendOnly | Direction::Inactive)
    }
}

/// Our side of the media session: what we put into offers and answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    /// RTP address we receive on.
    pub rtp: SocketAddr,
    /// telephone-event payload type to offer (dynamic, 96–127).
    pub telephone_event_pt: u8,
    /// `o=` session id (any number, stable for the call).
    pub session_id: u64,
    /// SRTP keys to offer (or answer with), when the call uses SDES.
    pub sdes: Option<LocalSdes>,
}

impl LocalMedia {
    /// Local media on `rtp` with the default telephone-event PT.
    pub fn new(rtp: SocketAddr, session_id: u64) -> Self {
        Self {
            rtp,
            telephone_event_pt: DEFAULT_TELEPHONE_EVENT_PT,
            session_id,
            sdes: None,
        }
    }
}

fn ip_line(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("IN IP4 {v4}"),
        IpAddr::V6(v6) => format!("IN IP6 {v6}"),
    }
}

/// Builds our offer: PCMU 0, PCMA 8, telephone-event/8000 0-16, ptime 20, sendrecv; with
/// [`LocalMedia::sdes`], one `a=crypto` per suite (tags 1 and 2) on `RTP/SAVP` or `RTP/AVP`.
pub fn build_offer(local: &LocalMedia, version: u64) -> String {
    let ip = local.rtp.ip();
    let te = local.telephone_event_pt;
    let proto = local.sdes.as_ref().map_or("RTP/AVP", LocalSdes::proto);
    let mut s = String::new();
    // `write!` to a String cannot fail.
    let _ = write!(
        s,
        "v=0\r\no=callverify {} {version} {}\r\ns=callverify\r\nc={}\r\nt=0 0\r\n\
m=audio {} {proto} 0 8 {te}\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\na=ptime:{PTIME_MS}\r\na=sendrecv\r\n",
        local.session_id,
        ip_line(ip),
        ip_line(ip),
        local.rtp.port()
    );
    for crypto in local.sdes.iter().flat_map(LocalSdes::offer) {
        let _ = write!(s, "a=crypto:{}\r\n", crypto.to_value());
    }
    s
}

/// Builds our answer to `offer` and returns it with what was negotiated.
pub fn build_answer(
    offer: &SessionDescription,
    local: &LocalMedia,
    version: u64,
) -> Result<(String, Negotiated), SdpError> {
    let negotiated = offer.negotiate()?;
    let ip = local.rtp.ip();
    // SRTP when we have keys and the offer has a usable attribute: the offer's tag and suite,
    // our key for that suite, the offer's transport (RFC 4568 §7.1.2).
    let crypto = match (&local.sdes, &negotiated.sdes) {
        (Some(ours), Sdes::Usable(theirs)) => Some(Crypto {
            tag: theirs.tag,
            suite: theirs.suite,
            key: ours.key(theirs.suite).clone(),
        }),
        _ => None,
    };
    let proto = if crypto.is_some() && negotiated.savp {
        "RTP/SAVP"
    } else {
        "RTP/AVP"
    };
    let (pt, name) = match negotiated.codec {
        Codec::Pcmu => (negotiated.codec_pt, "PCMU"),
        Codec::Pcma => (negotiated.codec_pt, "PCMA"),
    };
    let mut fmts = pt.to_string();
    let mut attrs = format!("a=rtpmap:{pt} {name}/8000\r\n");
    if let Some(te) = negotiated.telephone_event_pt {
        let _ = write!(fmts, " {te}");
        let _ = write!(
            attrs,
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
        );
    }
    if let Some(crypto) = &crypto {
        let _ = write!(attrs, "a=crypto:{}\r\n", crypto.to_value());
    }
    let mut s = String::new();
    let _ = write!(
        s,
        "v=0\r\no=callverify {} {version} {}\r\ns=callverify\r\nc={}\r\nt=0 0\r\nm=audio {} {proto} {fmts}\r\n{attrs}a=ptime:{PTIME_MS}\r\na={}\r\n",
        local.session_id,
        ip_line(ip),
        ip_line(ip),
        local.rtp.port(),
        negotiated.direction.reversed().as_str()
    );
    Ok((s, negotiated))
}

impl SessionDescription {
    /// Parses an SDP body tolerantly.
    pub fn parse(body: &[u8]) -> Result<Self, SdpError> {
        if body.len() > MAX_SDP_BYTES {
            return Err(SdpError::Unreadable);
        }
        let text = std::str::from_utf8(body).map_err(|_| SdpError::Unreadable)?;
        let mut sd = SessionDescription {
            session_id: String::new(),
            session_version: String::new(),
            connection: None,
            direction: None,
            media: Vec::new(),
        };
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim_end_matches('\r');
            let Some((kind, value)) = line.split_once('=') else {
                if line.trim().is_empty() {
                    continue;
                }
                return Err(SdpError::Malformed(line_no));
            };
            match kind.trim() {
                "o" => {
                    let f: Vec<&str> = value.split_whitespace().collect();
                    if f.len() >= 3 {
                        sd.session_id = f[1].to_string();
                        sd.session_version = f[2].to_string();
                    }
                }
                "c" => {
                    let ip = parse_connection(value).ok_or(SdpError::Malformed(line_no))?;
                    match sd.media.last_mut() {
                        Some(m) => m.connection = Some(ip),
                        None => sd.connection = Some(ip),
                    }
                }
                "m" => {
                    if sd.media.len() >= MAX_MEDIA {
                        break;
                    }
                    let f: Vec<&str> = value.split_whitespace().collect();
                    if f.len() < 3 {
                        return Err(SdpError::Malformed(line_no));
                    }
                    // `port/count` is allowed (RFC 4566 §5.14); we use the first port.
                    let port = f[1]
                        .split('/')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .ok_or(SdpError::Malformed(line_no))?;
                    sd.media.push(Media {
                        kind: f[0].to_ascii_lowercase(),
                        port,
                        proto: f[2].to_string(),
                        formats: f[3..].iter().filter_map(|p| p.parse().ok()).collect(),
                        connection: None,
                        rtpmaps: Vec::new(),
                        fmtps: Vec::new(),
                        ptime: None,
                        direction: None,
                        sdes: Sdes::Absent,
                    });
                }
                "a" => {
                    let (name, arg) = match value.split_once(':') {
                        Some((n, a)) => (n.trim().to_ascii_lowercase(), Some(a.trim())),
                        None => (value.trim().to_ascii_lowercase(), None),
                    };
                    if let Some(dir) = Direction::from_attr(&name) {
                        match sd.media.last_mut() {
                            Some(m) => m.direction = Some(dir),
                            None => sd.direction = Some(dir),
                        }
                        continue;
                    }
                    let Some(m) = sd.media.last_mut() else {
                        continue;
                    };
                    match (name.as_str(), arg) {
                        ("rtpmap", Some(arg)) => {
                            if let Some(map) = parse_rtpmap(arg) {
                                m.rtpmaps.push(map);
                            }
                        }
                        ("fmtp", Some(arg)) => {
                            if let Some((pt, params)) = arg.split_once(char::is_whitespace)
                                && let Ok(pt) = pt.parse()
                            {
                                m.fmtps.push((pt, params.trim().to_string()));
                            }
                        }
                        ("ptime", Some(arg)) => m.ptime = arg.parse().ok(),
                        // The first usable attribute counts; otherwise the first refusal.
                        ("crypto", Some(arg)) => match (&m.sdes, Crypto::parse(arg)) {
                            (Sdes::Usable(_), _) => {}
                            (_, Ok(c)) => m.sdes = Sdes::Usable(c),
                            (Sdes::Absent, Err(e)) => m.sdes = Sdes::Unusable(e),
                            (Sdes::Unusable(_), Err(_)) => {}
                        },
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        Ok(sd)
    }

    /// Picks the first active audio stream, the first codec in its list that we support,
    /// and its telephone-event PT. Used both on an answer (what to send) and on an offer
    /// (what to answer with).
    pub fn negotiate(&self) -> Result<Negotiated, SdpError> {
        let audio = self
            .media
            .iter()
            .find(|m| m.kind == "audio" && m.port != 0)
            .ok_or(SdpError::NoAudio)?;
        let mut codec = None;
        for &pt in &audio.formats {
            let found = match audio.rtpmaps.iter().find(|r| r.pt == pt) {
                Some(r) if r.clock_rate == 8000 && r.encoding.eq_ignore_ascii_case("PCMU") => {
                    Some(Codec::Pcmu)
                }
                Some(r) if r.clock_rate == 8000 && r.encoding.eq_ignore_ascii_case("PCMA") => {
                    Some(Codec::Pcma)
                }
                Some(_) => None,
                None if pt == 0 => Some(Codec::Pcmu),
                None if pt == 8 => Some(Codec::Pcma),
                None => None,
            };
            if let Some(c) = found {
                codec = Some((c, pt));
                break;
            }
        }
        let (codec, codec_pt) = codec.ok_or(SdpError::NoCommonCodec)?;
        let telephone_event_pt = audio
            .rtpmaps
            .iter()
            .find(|r| {
                r.encoding.eq_ignore_ascii_case("telephone-event")
                    && r.clock_rate == 8000
                    && audio.formats.contains(&r.pt)
            })
            .map(|r| r.pt);
        let ip = audio
            .connection
            .or(self.connection)
            .ok_or(SdpError::NoConnection)?;
        let remote = (!ip.is_unspecified()).then(|| SocketAddr::new(ip, audio.port));
        Ok(Negotiated {
            remote,
            codec,
            codec_pt,
            telephone_event_pt,
            ptime: audio.ptime,
            direction: audio
                .direction
                .or(self.direction)
                .unwrap_or(Direction::SendRecv),
            savp: audio.is_savp(),
            sdes: audio.sdes.clone(),
        })
    }
}

fn parse_connection(value: &str) -> Option<IpAddr> {
    let f: Vec<&str> = value.split_whitespace().collect();
    if f.len() < 3 || !f[0].eq_ignore_ascii_case("IN") {
        return None;
    }
    // Multicast `addr/ttl` (RFC 4566 §5.7): keep the address.
    let addr = f[2].split('/').next()?;
    match f[1].to_ascii_uppercase().as_str() {
        "IP4" => addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        "IP6" => addr.parse().ok().map(IpAddr::V6),
        _ => None,
    }
}

fn parse_rtpmap(arg: &str) -> Option<RtpMap> {
    let (pt, rest) = arg.split_once(char::is_whitespace)?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next()?.to_string();
    let clock_rate = parts.next()?.trim().parse().ok()?;
    Some(RtpMap {
        pt: pt.parse().ok()?,
        encoding,
        clock_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalMedia {
        LocalMedia::new("127.0.0.1:27000".parse().unwrap(), 42)
    }

    #[test]
    fn offer_is_byte_exact() {
        assert_eq!(
            build_offer(&local(), 1),
            "v=0\r\no=callverify 42 1 IN IP4 127.0.0.1\r\ns=callverify\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 27000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
        );
        let back = SessionDescription::parse(build_offer(&local(), 1).as_bytes())
            .unwrap()
            .negotiate()
            .unwrap();
        assert_eq!(back.codec, Codec::Pcmu);
        assert_eq!(back.telephone_event_pt, Some(101));
    }

    #[test]
    fn tolerant_answer_parsing() {
        let sdp = b"v=0\no=- 1 2 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\nm=video 0 RTP/AVP 96\n\
m=audio 4000 RTP/AVP 8 96\nc=IN IP4 10.0.0.2\na=rtpmap:96 Telephone-Event/8000\na=SENDONLY\nx=unknown\n";
        let n = SessionDescription::parse(sdp).unwrap().negotiate().unwrap();
        assert_eq!(n.remote, Some("10.0.0.2:4000".parse().unwrap()));
        assert_eq!((n.codec, n.codec_pt), (Codec::Pcma, 8));
        assert_eq!(n.telephone_event_pt, Some(96));
        assert_eq!(n.direction, Direction::SendOnly);
        assert!(n.on_hold());
    }

    #[test]
    fn hold_with_zero_address_and_errors() {
        let hold = b"v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert!(
            SessionDescription::parse(hold)
                .unwrap()
                .negotiate()
                .unwrap()
                .on_hold()
        );
        let g729 = b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 18\r\n";
        assert_eq!(
            SessionDescription::parse(g729).unwrap().negotiate(),
            Err(SdpError::NoCommonCodec)
        );
        let rejected = b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n";
        assert_eq!(
            SessionDescription::parse(rejected).unwrap().negotiate(),
            Err(SdpError::NoAudio)
        );
        let noc = b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(
            SessionDescription::parse(noc).unwrap().negotiate(),
            Err(SdpError::NoConnection)
        );
        assert_eq!(
            SessionDescription::parse(b"v=0\r\ngarbage\r\n"),
            Err(SdpError::Malformed(2))
        );
    }

    #[test]
    fn answer_mirrors_offer() {
        let offer = b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 8 0 100\r\na=rtpmap:100 telephone-event/8000\r\na=sendonly\r\n";
        let offer = SessionDescription::parse(offer).unwrap();
        let (answer, n) = build_answer(&offer, &local(), 3).unwrap();
        assert_eq!(n.codec, Codec::Pcma);
        assert!(answer.contains("m=audio 27000 RTP/AVP 8 100\r\n"));
        assert!(answer.contains("a=recvonly\r\n"));
    }

    fn sdes(savp: bool) -> LocalSdes {
        use crate::sdes::SdesKey;
        LocalSdes {
            savp,
            keys: [
                SdesKey::new(*b"0123456789abcdefghijklmnopqrst"),
                SdesKey::new(*b"ABCDEFGHIJKLMNOPQRSTUVWXYZ!?+-"),
            ],
        }
    }

    #[test]
    fn srtp_offer_carries_one_key_per_suite() {
        use crate::sdes::CryptoSuite;
        let mut local = local();
        local.sdes = Some(sdes(true));
        let offer = build_offer(&local, 1);
        assert!(
            offer.contains("m=audio 27000 RTP/SAVP 0 8 101\r\n"),
            "{offer}"
        );
        assert!(offer.ends_with(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1ub3BxcnN0\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVohPyst\r\n"
        ), "{offer}");
        // Best effort: the same keys on RTP/AVP, which a plain-RTP answerer simply accepts.
        local.sdes = Some(sdes(false));
        let offer = build_offer(&local, 1);
        assert!(
            offer.contains("m=audio 27000 RTP/AVP 0 8 101\r\n"),
            "{offer}"
        );
        // Read back as an offer: the first usable attribute is ours for the first suite.
        let n = SessionDescription::parse(offer.as_bytes())
            .unwrap()
            .negotiate()
            .unwrap();
        let Sdes::Usable(c) = n.sdes else {
            panic!("{n:?}")
        };
        assert_eq!((c.tag, c.suite), (1, CryptoSuite::AesCm128HmacSha1_80));
        assert!(!n.savp);
    }

    #[test]
    fn srtp_answers_rfc4568_style() {
        use crate::sdes::CryptoSuite;
        // An offer in the shape of RFC 4568 §8.1: an unusable (MKI) attribute, then two usable.
        let offer =
            b"v=0\r\no=sam 2890844526 2890842807 IN IP4 10.47.16.5\r\ns=SRTP Discussion\r\n\
c=IN IP4 168.2.17.12\r\nt=2873397496 2873404696\r\nm=audio 49170 RTP/SAVP 0\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20\r\n\
a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20\r\n";
        let offer = SessionDescription::parse(offer).unwrap();
        let mut local = local();
        local.sdes = Some(sdes(false));
        let (answer, n) = build_answer(&offer, &local, 2).unwrap();
        assert!(n.savp);
        let Sdes::Usable(theirs) = &n.sdes else {
            panic!("{n:?}")
        };
        assert_eq!(
            (theirs.tag, theirs.suite),
            (2, CryptoSuite::AesCm128HmacSha1_32)
        );
        assert!(answer.contains("m=audio 27000 RTP/SAVP 0\r\n"), "{answer}");
        assert!(
            answer.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVohPyst\r\n"),
            "{answer}"
        );
        assert_eq!(answer.matches("a=crypto").count(), 1);
        // Without keys of our own we answer plain RTP and no attribute.
        let (answer, _) = build_answer(&offer, &self::local(), 2).unwrap();
        assert!(
            answer.contains("RTP/AVP") && !answer.contains("crypto"),
            "{answer}"
        );
        // Only unusable attributes: the reason of the first.
        let bad = b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/SAVP 0\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:short\r\na=crypto:2 AES_256_CM_HMAC_SHA1_80 inline:x\r\n";
        let n = SessionDescription::parse(bad).unwrap().negotiate().unwrap();
        assert_eq!(n.sdes, Sdes::Unusable(crate::sdes::CryptoError::BadKey));
        let plain =
            SessionDescription::parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n")
                .unwrap()
                .negotiate()
                .unwrap();
        assert_eq!(plain.sdes, Sdes::Absent);
    }
}
