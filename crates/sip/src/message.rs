//! SIP messages: parse and print (RFC 3261 §7, §20), behind this crate's own types.
//!
//! `rsip` validates the start line, the Request-URI and the header syntax; the values we keep
//! are the exact text received, so a header prints back as it came in (name case included)
//! and a Request-URI we send is byte-for-byte the one the digest covers. Header values we
//! need (Via, From/To, CSeq, Contact, Record-Route) are read by the small parsers at the
//! bottom of this module. Nothing in here panics on input: every problem is a [`ParseError`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::redact::UserPart;

/// Largest message accepted: a UDP datagram cannot be bigger (RFC 768: 65 535 bytes minus
/// headers); over streams the same limit keeps one message from eating memory.
pub const MAX_MESSAGE_BYTES: usize = 65_535;
/// Most header lines in one message. Real messages have 10–30; 128 leaves room for proxies.
pub const MAX_HEADERS: usize = 128;
/// Longest header line after unfolding (bytes).
pub const MAX_HEADER_LINE_BYTES: usize = 8_192;

/// Size limits applied while parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Whole message, start line to end of body, in bytes.
    pub max_message_bytes: usize,
    /// Header lines (after unfolding).
    pub max_headers: usize,
    /// One header line (after unfolding), in bytes.
    pub max_header_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_headers: MAX_HEADERS,
            max_header_line_bytes: MAX_HEADER_LINE_BYTES,
        }
    }
}

/// Why bytes from the network are not a SIP message. Always the sender's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but line breaks (a keep-alive, RFC 5626 §3.5.1), or nothing at all.
    #[error("empty message")]
    Empty,
    /// Bigger than [`Limits::max_message_bytes`].
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size received.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// More header lines than [`Limits::max_headers`].
    #[error("more than {max} header lines")]
    TooManyHeaders {
        /// Limit in force.
        max: usize,
    },
    /// A header line longer than [`Limits::max_header_line_bytes`].
    #[error("header line longer than {max} bytes")]
    HeaderTooLong {
        /// Limit in force.
        max: usize,
    },
    /// No empty line ends the header section.
    #[error("no blank line after the headers")]
    NoHeaderEnd,
    /// The start line or headers are not UTF-8.
    #[error("start line or headers are not UTF-8")]
    NotUtf8,
    /// The start line, a header line or the Request-URI does not follow the grammar.
    #[error("SIP syntax error in the {0}")]
    Syntax(Part),
    /// Version other than `SIP/2.0`.
    #[error("unsupported SIP version")]
    Version,
    /// Content-Length is not a number.
    #[error("invalid Content-Length")]
    ContentLength,
    /// The body is shorter than Content-Length says (RFC 3261 §18.3: discard).
    #[error("body of {got} bytes is shorter than Content-Length {declared}")]
    Truncated {
        /// Content-Length.
        declared: usize,
        /// Bytes present.
        got: usize,
    },
    /// A header every request/response needs (RFC 3261 §8.1.1) is missing.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header we need is present but unreadable.
    #[error("invalid {0} header")]
    InvalidHeader(&'static str),
    /// A URI does not parse.
    #[error("invalid URI")]
    Uri,
}

/// Which part of a message failed to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Request or status line.
    StartLine,
    /// A header line.
    Header,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::StartLine => "start line",
            Self::Header => "headers",
        })
    }
}

/// Transport a message came on or goes out on (RFC 3261 §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP: unreliable, the transactions retransmit.
    Udp,
    /// TCP: reliable, no retransmissions (RFC 3261 §17.1.1.2, §17.1.2.2).
    Tcp,
    /// TLS over TCP: reliable.
    Tls,
}

impl Transport {
    /// Reliable transports skip retransmissions and have zero wait timers D, I, J, K.
    pub fn is_reliable(self) -> bool {
        !matches!(self, Self::Udp)
    }

    /// Token used in the Via header.
    pub fn via_token(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }
}

/// A SIP request method.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// INVITE.
    Invite,
    /// ACK.
    Ack,
    /// BYE.
    Bye,
    /// CANCEL.
    Cancel,
    /// OPTIONS.
    Options,
    /// INFO (RFC 6086).
    Info,
    /// UPDATE (RFC 3311).
    Update,
    /// PRACK (RFC 3262).
    Prack,
    /// REGISTER.
    Register,
    /// Any other method token.
    Other(String),
}

impl Method {
    /// Parses a method token (case-sensitive, RFC 3261 §7.1).
    pub fn from_token(token: &str) -> Self {
        match token {
            "INVITE" => Self::Invite,
            "ACK" => Self::Ack,
            "BYE" => Self::Bye,
            "CANCEL" => Self::Cancel,
            "OPTIONS" => Self::Options,
            "INFO" => Self::Info,
            "UPDATE" => Self::Update,
            "PRACK" => Self::Prack,
            "REGISTER" => Self::Register,
            other => Self::Other(other.to_string()),
        }
    }

    /// The token on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Invite => "INVITE",
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Options => "OPTIONS",
            Self::Info => "INFO",
            Self::Update => "UPDATE",
            Self::Prack => "PRACK",
            Self::Register => "REGISTER",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SIP or SIPS URI, kept as the exact text it was parsed from or built as.
///
/// `Display` and `Debug` redact the user part (often a phone number); use
/// [`Uri::as_str`] to put it on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Uri {
    raw: String,
    host: String,
    port: Option<u16>,
    user: Option<UserPart>,
}

impl Uri {
    /// Parses a URI such as `sip:+14255550123@trunk.example.net:5060;user=phone`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let text = text.trim();
        if text.is_empty()
            || text.len() > MAX_HEADER_LINE_BYTES
            || text.contains(char::is_whitespace)
        {
            return Err(ParseError::Uri);
        }
        let lower = text.get(..4).map(str::to_ascii_lowercase);
        if lower.as_deref() != Some("sip:")
            && text.get(..5).map(str::to_ascii_lowercase).as_deref() != Some("sips:")
        {
            return Err(ParseError::Uri);
        }
        let parsed = rsip::Uri::try_from(text).map_err(|_| ParseError::Uri)?;
        let host = match &parsed.host_with_port.host {
            rsip::Host::Domain(d) => d.to_string(),
            rsip::Host::IpAddr(ip) => ip.to_string(),
        };
        if host.is_empty() {
            return Err(ParseError::Uri);
        }
        let port = parsed.host_with_port.port.map(|p| *p.value());
        let user = parsed.auth.as_ref().map(|a| UserPart::new(a.user.clone()));
        Ok(Self {
            raw: text.to_string(),
            host,
            port,
            user,
        })
    }

    /// The URI exactly as it goes on the wire.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Host name or address literal (without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Explicit port, if the URI has one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The user part (redacting wrapper).
    pub fn user(&self) -> Option<&UserPart> {
        self.user.as_ref()
    }

    /// Whether this is a `sips:` URI.
    pub fn is_sips(&self) -> bool {
        self.raw
            .get(..5)
            .is_some_and(|s| s.eq_ignore_ascii_case("sips:"))
    }

    /// A URI parameter (`;name` → `Some(None)`, `;name=value` → `Some(Some(value))`).
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        let after_user = match self.raw.rfind('@') {
            Some(at) => &self.raw[at + 1..],
            None => self.raw.split_once(':').map_or("", |(_, rest)| rest),
        };
        let without_headers = after_user.split('?').next().unwrap_or("");
        without_headers.split(';').skip(1).find_map(|p| {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (p, None),
            };
            k.trim().eq_ignore_ascii_case(name).then_some(v)
        })
    }

    /// Loose-routing flag `;lr` (RFC 3261 §19.1.1).
    pub fn is_loose_route(&self) -> bool {
        self.param("lr").is_some()
    }

    /// `;transport=` parameter mapped to a [`Transport`].
    pub fn transport(&self) -> Option<Transport> {
        match self.param("transport")?? {
            t if t.eq_ignore_ascii_case("udp") => Some(Transport::Udp),
            t if t.eq_ignore_ascii_case("tcp") => Some(Transport::Tcp),
            t if t.eq_ignore_ascii_case("tls") => Some(Transport::Tls),
            _ => None,
        }
    }

    /// The socket address if the host is an IP literal: port from the URI or the default
    /// (5060, 5061 for sips/TLS; RFC 3261 §19.1.2). Host names need the runtime's resolver.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        let default = if self.is_sips() || self.transport() == Some(Transport::Tls) {
            5061
        } else {
            5060
        };
        Some(SocketAddr::new(ip, self.port.unwrap_or(default)))
    }

    /// A displayable form with the user part redacted, for logs.
    pub fn redacted(&self) -> String {
        match &self.user {
            Some(user) => {
                let scheme = if self.is_sips() { "sips" } else { "sip" };
                match self.port {
                    Some(port) => format!("{scheme}:{user}@{}:{port}", self.host),
                    None => format!("{scheme}:{user}@{}", self.host),
                }
            }
            None => self.raw.clone(),
        }
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uri({})", self.redacted())
    }
}

/// One header line: the name as received and the value with surrounding whitespace trimmed.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name (case as received; compare with [`Header::is`]).
    pub name: String,
    /// Header value.
    pub value: String,
}

impl Header {
    /// Whether this header is `name`, ignoring case and compact forms (RFC 3261 §7.3.3).
    pub fn is(&self, name: &str) -> bool {
        canonical_name(&self.name).eq_ignore_ascii_case(canonical_name(name))
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values can carry phone numbers and credentials: names only.
        write!(f, "Header({})", self.name)
    }
}

/// Maps compact header names to their long form (RFC 3261 §7.3.3, RFC 3265, RFC 3515).
fn canonical_name(name: &str) -> &str {
    match name {
        "i" | "I" => "Call-ID",
        "m" | "M" => "Contact",
        "e" | "E" => "Content-Encoding",
        "l" | "L" => "Content-Length",
        "c" | "C" => "Content-Type",
        "f" | "F" => "From",
        "s" | "S" => "Subject",
        "k" | "K" => "Supported",
        "t" | "T" => "To",
        "v" | "V" => "Via",
        "o" | "O" => "Event",
        "u" | "U" => "Allow-Events",
        "r" | "R" => "Refer-To",
        other => other,
    }
}

/// The header lines of a message, in order.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct Headers(Vec<Header>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a header line.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push(Header {
            name: name.into(),
            value: value.into(),
        });
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|h| h.is(name)).map(|h| h.value.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| h.is(name))
            .map(|h| h.value.as_str())
    }

    /// Every comma-separated element of every `name` header (Via, Route, Record-Route…).
    pub fn list<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.get_all(name).flat_map(split_list)
    }

    /// Removes every `name` header.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|h| !h.is(name));
    }

    /// All header lines.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A SIP request.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Request-URI.
    pub uri: Uri,
    /// Headers.
    pub headers: Headers,
    /// Body (may be empty).
    pub body: Vec<u8>,
}

/// A SIP response.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code (100–699).
    pub status: u16,
    /// Reason phrase as received or chosen.
    pub reason: String,
    /// Headers.
    pub headers: Headers,
    /// Body (may be empty).
    pub body: Vec<u8>,
}

/// A SIP request or response.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("call_id", &self.headers.get("Call-ID"))
            .field("cseq", &self.headers.get("CSeq"))
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("call_id", &self.headers.get("Call-ID"))
            .field("cseq", &self.headers.get("CSeq"))
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The canonical reason phrase for a status code (RFC 3261 §21).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        420 => "Bad Extension",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => "Unknown",
    }
}

impl Request {
    /// A request with no headers yet.
    pub fn new(method: Method, uri: Uri) -> Self {
        Self {
            method,
            uri,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// The message as bytes; Content-Length is written from the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let start = format!("{} {} SIP/2.0\r\n", self.method, self.uri.as_str());
        write_message(start, &self.headers, &self.body)
    }
}

impl Response {
    /// A response with no headers yet and the standard reason phrase.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            reason: reason_phrase(status).to_string(),
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// The message as bytes; Content-Length is written from the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let start = format!("SIP/2.0 {} {}\r\n", self.status, self.reason);
        write_message(start, &self.headers, &self.body)
    }
}

/// Writes start line, headers (Content-Length replaced by the real length, placed last), body.
fn write_message(start: String, headers: &Headers, body: &[u8]) -> Vec<u8> {
    let mut out = start.into_bytes();
    let mut length_written = false;
    for h in headers.iter() {
        if h.is("Content-Length") {
            // Print the real length where the header stood (keeps received order intact).
            out.extend_from_slice(format!("{}: {}\r\n", h.name, body.len()).as_bytes());
            length_written = true;
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !length_written {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

impl Message {
    /// Parses one message from a datagram (or one frame cut by [`crate::framer`]).
    ///
    /// Over UDP a body longer than Content-Length is cut to it, a shorter one is an error
    /// (RFC 3261 §18.3). Without Content-Length the rest of the datagram is the body.
    pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Self, ParseError> {
        parse(bytes, limits)
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        match self {
            Self::Request(r) => &r.headers,
            Self::Response(r) => &r.headers,
        }
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        match self {
            Self::Request(r) => &r.body,
            Self::Response(r) => &r.body,
        }
    }

    /// The message as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Request(r) => r.to_bytes(),
            Self::Response(r) => r.to_bytes(),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse(bytes: &[u8], limits: &Limits) -> Result<Message, ParseError> {
    if bytes.len() > limits.max_message_bytes {
        return Err(ParseError::TooLarge {
            len: bytes.len(),
            max: limits.max_message_bytes,
        });
    }
    // RFC 3261 §7.5: ignore empty lines before the start line.
    let first = bytes
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .ok_or(ParseError::Empty)?;
    let bytes = &bytes[first..];
    let head_end = find(bytes, b"\r\n\r\n").ok_or(ParseError::NoHeaderEnd)?;
    let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| ParseError::NotUtf8)?;
    let raw_body = &bytes[head_end + 4..];

    // Unfold continuation lines (RFC 3261 §7.3.1) and apply the line limits.
    let mut lines: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            let last = lines
                .last_mut()
                .ok_or(ParseError::Syntax(Part::StartLine))?;
            last.push(' ');
            last.push_str(line.trim_start());
        } else {
            lines.push(line.to_string());
        }
        if lines
            .last()
            .is_some_and(|l| l.len() > limits.max_header_line_bytes)
        {
            return Err(ParseError::HeaderTooLong {
                max: limits.max_header_line_bytes,
            });
        }
        if lines.len() > limits.max_headers + 1 {
            return Err(ParseError::TooManyHeaders {
                max: limits.max_headers,
            });
        }
    }

    let mut headers = Headers::new();
    for line in lines.iter().skip(1) {
        let (name, value) = line
            .split_once(':')
            .ok_or(ParseError::Syntax(Part::Header))?;
        let name = name.trim_end();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ParseError::Syntax(Part::Header));
        }
        headers.push(name, value.trim());
    }

    // rsip checks the grammar of the start line, the URI and every header line.
    let mut canonical = lines.join("\r\n");
    canonical.push_str("\r\n\r\n");
    let checked = rsip::SipMessage::try_from(canonical.as_bytes())
        .map_err(|_| ParseError::Syntax(Part::StartLine))?;
    if *checked.version() != rsip::Version::V2 {
        return Err(ParseError::Version);
    }

    let body = match headers.get("Content-Length") {
        Some(v) => {
            let declared: usize = v.trim().parse().map_err(|_| ParseError::ContentLength)?;
            if declared > raw_body.len() {
                return Err(ParseError::Truncated {
                    declared,
                    got: raw_body.len(),
                });
            }
            raw_body[..declared].to_vec()
        }
        None => raw_body.to_vec(),
    };

    // lines[0] exists: `split` always yields at least one item.
    let start = lines.first().map(String::as_str).unwrap_or_default();
    let mut parts = start.splitn(3, ' ');
    let (a, b, c) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    match checked {
        rsip::SipMessage::Request(_) => {
            if c != "SIP/2.0" || a.is_empty() || !a.bytes().all(is_token_byte) {
                return Err(ParseError::Syntax(Part::StartLine));
            }
            Ok(Message::Request(Request {
                method: Method::from_token(a),
                uri: Uri::parse(b)?,
                headers,
                body,
            }))
        }
        rsip::SipMessage::Response(_) => {
            let status: u16 = b.parse().map_err(|_| ParseError::Syntax(Part::StartLine))?;
            if a != "SIP/2.0" || !(100..=699).contains(&status) || b.len() != 3 {
                return Err(ParseError::Syntax(Part::StartLine));
            }
            Ok(Message::Response(Response {
                status,
                reason: c.to_string(),
                headers,
                body,
            }))
        }
    }
}

/// RFC 3261 §25.1 `token` characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Splits a header value at top-level commas (not inside quotes or `<…>`).
pub fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_quotes, mut in_angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => in_angle = true,
            '>' if !in_quotes => in_angle = false,
            ',' if !in_quotes && !in_angle => {
                let item = value[start..i].trim();
                if !item.is_empty() {
                    out.push(item);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    let item = value[start..].trim();
    if !item.is_empty() {
        out.push(item);
    }
    out
}

/// Parses `;name=value;flag` header parameters (values may be quoted).
pub fn parse_params(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for part in split_unquoted(text, ';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        match part.split_once('=') {
            Some((k, v)) => out.push((
                k.trim().to_ascii_lowercase(),
                Some(unquote(v.trim()).to_string()),
            )),
            None => out.push((part.to_ascii_lowercase(), None)),
        }
    }
    out
}

/// Splits at `sep` outside double quotes.
pub(crate) fn split_unquoted(text: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_quotes, mut escaped, mut start) = (false, false, 0);
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            c if c == sep && !in_quotes => {
                out.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// Strips one pair of surrounding double quotes.
pub(crate) fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v)
}

/// `name-addr` or `addr-spec` with header parameters: From, To, Contact, Route entries.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NameAddr {
    /// Display name, unquoted (may itself be personal data; not printed by Debug of events).
    pub display: Option<String>,
    /// The URI.
    pub uri: Uri,
    /// Header parameters (lower-cased names).
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    /// Parses `"Name" <sip:…>;tag=…`, `<sip:…>` or `sip:…;tag=…`.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let value = value.trim();
        let (display, uri, rest) = match find_unquoted(value, '<') {
            Some(lt) => {
                let gt = value[lt..].find('>').ok_or(ParseError::Uri)? + lt;
                let display = unquote(value[..lt].trim());
                let display = (!display.is_empty()).then(|| display.to_string());
                (display, &value[lt + 1..gt], &value[gt + 1..])
            }
            None => match value.find(';') {
                Some(semi) => (None, &value[..semi], &value[semi..]),
                None => (None, value, ""),
            },
        };
        Ok(Self {
            display,
            uri: Uri::parse(uri)?,
            params: parse_params(rest),
        })
    }

    /// A header parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_deref())
    }

    /// The `tag` parameter (RFC 3261 §19.3).
    pub fn tag(&self) -> Option<&str> {
        self.param("tag")
    }
}

fn find_unquoted(text: &str, needle: char) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            c if c == needle && !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

/// One Via entry (RFC 3261 §20.42).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Via {
    /// Transport token (`UDP`, `TCP`, `TLS`, …).
    pub transport: String,
    /// `sent-by` host:port as written.
    pub sent_by: String,
    /// Parameters.
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    /// Parses `SIP/2.0/UDP host:port;branch=…`.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let value = value.trim();
        let (proto, rest) = value
            .split_once(|c: char| c.is_ascii_whitespace())
            .ok_or(ParseError::InvalidHeader("Via"))?;
        let mut p = proto.split('/');
        let (name, version, transport) = (p.next(), p.next(), p.next());
        if !name.is_some_and(|n| n.trim().eq_ignore_ascii_case("SIP"))
            || version.map(str::trim) != Some("2.0")
            || p.next().is_some()
        {
            return Err(ParseError::InvalidHeader("Via"));
        }
        let transport = transport
            .ok_or(ParseError::InvalidHeader("Via"))?
            .trim()
            .to_ascii_uppercase();
        let rest = rest.trim();
        let (sent_by, params) = match rest.find(';') {
            Some(i) => (rest[..i].trim(), &rest[i..]),
            None => (rest, ""),
        };
        if sent_by.is_empty() {
            return Err(ParseError::InvalidHeader("Via"));
        }
        Ok(Self {
            transport,
            sent_by: sent_by.to_string(),
            params: parse_params(params),
        })
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == "branch")
            .and_then(|(_, v)| v.as_deref())
    }
}

/// The CSeq header (RFC 3261 §20.16).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CSeq {
    /// Sequence number (< 2**31).
    pub seq: u32,
    /// Method.
    pub method: Method,
}

impl CSeq {
    /// Parses `42 INVITE`.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let mut parts = value.split_ascii_whitespace();
        let seq = parts
            .next()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|s| *s < 1 << 31)
            .ok_or(ParseError::InvalidHeader("CSeq"))?;
        let method = parts.next().ok_or(ParseError::InvalidHeader("CSeq"))?;
        if parts.next().is_some() {
            return Err(ParseError::InvalidHeader("CSeq"));
        }
        Ok(Self {
            seq,
            method: Method::from_token(method),
        })
    }
}

/// Typed access to the headers every SIP message has.
pub trait HeaderAccess {
    /// The headers.
    fn hdrs(&self) -> &Headers;

    /// Call-ID.
    fn call_id(&self) -> Result<&str, ParseError> {
        self.hdrs()
            .get("Call-ID")
            .filter(|v| !v.is_empty())
            .ok_or(ParseError::MissingHeader("Call-ID"))
    }
    /// CSeq.
    fn cseq(&self) -> Result<CSeq, ParseError> {
        CSeq::parse(
            self.hdrs()
                .get("CSeq")
                .ok_or(ParseError::MissingHeader("CSeq"))?,
        )
    }
    /// From.
    fn header_from(&self) -> Result<NameAddr, ParseError> {
        self.name_addr("From")
    }
    /// To.
    fn header_to(&self) -> Result<NameAddr, ParseError> {
        self.name_addr("To")
    }
    /// A name-addr header (From, To).
    fn name_addr(&self, name: &'static str) -> Result<NameAddr, ParseError> {
        let value = self
            .hdrs()
            .get(name)
            .ok_or(ParseError::MissingHeader(name))?;
        NameAddr::parse(value).map_err(|_| ParseError::InvalidHeader(name))
    }
    /// The topmost Via entry.
    fn top_via(&self) -> Result<Via, ParseError> {
        Via::parse(
            self.hdrs()
                .list("Via")
                .next()
                .ok_or(ParseError::MissingHeader("Via"))?,
        )
    }
    /// The first Contact, if any.
    fn contact(&self) -> Option<Result<NameAddr, ParseError>> {
        self.hdrs()
            .list("Contact")
            .next()
            .map(|c| NameAddr::parse(c).map_err(|_| ParseError::InvalidHeader("Contact")))
    }
    /// Content-Type without parameters, lower-cased.
    fn content_type(&self) -> Option<String> {
        self.hdrs().get("Content-Type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }
}

impl HeaderAccess for Request {
    fn hdrs(&self) -> &Headers {
        &self.headers
    }
}

impl HeaderAccess for Response {
    fn hdrs(&self) -> &Headers {
        &self.headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:+14255550123@127.0.0.1:25060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc;rport\r\n\
v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKdef\r\n\
From: \"Verifier, Inc\" <sip:verifier@127.0.0.1>;tag=1234\r\n\
To: <sip:+14255550123@127.0.0.1>\r\n\
i: abc@host\r\n\
CSeq: 1 INVITE\r\n\
Subject: folded\r\n  line\r\n\
Content-Length: 4\r\n\r\nbody";

    #[test]
    fn parses_request_with_compact_and_folded_headers() {
        let Message::Request(r) = Message::parse(INVITE, &Limits::default()).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.uri.as_str(), "sip:+14255550123@127.0.0.1:25060");
        assert_eq!(r.uri.to_string(), "sip:…0123@127.0.0.1:25060");
        assert_eq!(r.call_id().unwrap(), "abc@host");
        assert_eq!(r.headers.list("Via").count(), 2);
        assert_eq!(r.top_via().unwrap().branch(), Some("z9hG4bKabc"));
        assert_eq!(r.header_from().unwrap().tag(), Some("1234"));
        assert_eq!(
            r.header_from().unwrap().display.as_deref(),
            Some("Verifier, Inc")
        );
        assert_eq!(r.headers.get("Subject"), Some("folded line"));
        assert_eq!(r.body, b"body");
        assert_eq!(
            r.cseq().unwrap(),
            CSeq {
                seq: 1,
                method: Method::Invite
            }
        );
    }

    #[test]
    fn limits_and_errors() {
        let l = Limits::default();
        assert_eq!(Message::parse(b"\r\n\r\n", &l), Err(ParseError::Empty));
        assert_eq!(
            Message::parse(b"INVITE sip:a@b SIP/2.0\r\n", &l),
            Err(ParseError::NoHeaderEnd)
        );
        let small = Limits {
            max_message_bytes: 10,
            ..l
        };
        assert!(matches!(
            Message::parse(INVITE, &small),
            Err(ParseError::TooLarge { .. })
        ));
        let few = Limits {
            max_headers: 3,
            ..l
        };
        assert_eq!(
            Message::parse(INVITE, &few),
            Err(ParseError::TooManyHeaders { max: 3 })
        );
        let short = b"SIP/2.0 200 OK\r\nContent-Length: 9\r\n\r\nabc";
        assert_eq!(
            Message::parse(short, &l),
            Err(ParseError::Truncated {
                declared: 9,
                got: 3
            })
        );
        assert!(Message::parse(b"SIP/2.0 99 X\r\n\r\n", &l).is_err());
        assert!(Message::parse(b"garbage\r\n\r\n", &l).is_err());
    }

    #[test]
    fn uri_params_and_addr() {
        let u = Uri::parse("sip:127.0.0.1:25100;lr=on;ftag=x").unwrap();
        assert!(u.is_loose_route());
        assert_eq!(u.socket_addr(), Some("127.0.0.1:25100".parse().unwrap()));
        let u = Uri::parse("sip:gw@example.net;transport=tcp").unwrap();
        assert_eq!(u.transport(), Some(Transport::Tcp));
        assert_eq!(u.socket_addr(), None);
    }

    #[test]
    fn list_splitting_respects_quotes_and_angles() {
        assert_eq!(
            split_list("<sip:a;x=1,2>, \"b,c\" <sip:b>"),
            vec!["<sip:a;x=1,2>", "\"b,c\" <sip:b>"]
        );
    }
}
