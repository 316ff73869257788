//! SIP URI destinations: parsed strictly, and put in one canonical form, so that per-number
//! limits and one-call-per-number see `sip:Alice@Host:5060;transport=udp` and `sip:Alice@host`
//! as the same line (issue 8 item 6).
//!
//! Accepted (RFC 3261 §19.1.1, §25.1, a strict subset):
//!
//! ```text
//! sip:[user@]host[:port][;transport=udp|tcp|tls][;user=phone|ip]
//! sips:[user@]host[:port][;transport=…][;user=…]
//! ```
//!
//! Refused: a password in the userinfo, URI headers (`?…`, they would become headers of our
//! INVITE), any other parameter (`maddr` would send the call elsewhere), `%`-escapes that
//! decode to anything but a plain user character. Only std: the fuzz target includes this
//! file on its own.

use std::fmt;

/// Longest URI accepted, bytes.
pub const MAX_LEN: usize = 256;
/// Longest host name (RFC 1035 §2.3.4: 255 octets on the wire, 253 as text).
const MAX_HOST_LEN: usize = 253;
/// Default ports (RFC 3261 §19.1.2).
const SIP_PORT: u16 = 5060;
const SIPS_PORT: u16 = 5061;

/// Why a SIP URI destination is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SipUriError {
    /// Longer than [`MAX_LEN`].
    TooLong,
    /// Not `sip:` or `sips:`.
    Scheme,
    /// `user:password@`.
    Password,
    /// `?header=value`.
    Headers,
    /// A character or escape a user part may not hold.
    User,
    /// Not a host name, IPv4 address or bracketed IPv6 address.
    Host,
    /// Not a port number 1-65535.
    Port,
    /// A parameter other than `transport` and `user`, a repeated one, or a bad value.
    Parameter(String),
}

impl fmt::Display for SipUriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SipUriError::TooLong => write!(f, "longer than {MAX_LEN} characters"),
            SipUriError::Scheme => f.write_str("must start with sip: or sips:"),
            SipUriError::Password => f.write_str("must not carry a password"),
            SipUriError::Headers => f.write_str("must not carry headers (`?…`)"),
            SipUriError::User => f.write_str("the user part holds a character it may not"),
            SipUriError::Host => f.write_str("the host is not a host name or IP address"),
            SipUriError::Port => f.write_str("the port is not 1 to 65535"),
            SipUriError::Parameter(p) => write!(
                f,
                "parameter `{p}` is not accepted (only transport=udp|tcp|tls and user=phone|ip)"
            ),
        }
    }
}

/// The transport a URI asks for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UriTransport {
    Udp,
    Tcp,
    Tls,
}

/// A SIP URI destination in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri {
    /// `sips:`.
    pub secure: bool,
    /// The user part, `%`-escapes decoded (only plain user characters remain).
    pub user: Option<String>,
    /// Lowercase host name, IPv4 address, or `[IPv6]` (bracketed, lowercase).
    pub host: String,
    /// The port, `None` when it is the scheme's default.
    pub port: Option<u16>,
    /// The transport, `None` when it is the scheme's default (UDP for `sip:`, TLS for `sips:`).
    pub transport: Option<UriTransport>,
}

/// Characters a user part may hold, decoded (RFC 3261 §25.1 `unreserved` and the
/// `user-unreserved` set without `;`, `?` and `/`).
fn is_user_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,".contains(&c)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_user(raw: &str) -> Result<String, SipUriError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(SipUriError::User);
            };
            i += 3;
            hi * 16 + lo
        } else {
            i += 1;
            bytes[i - 1]
        };
        if !is_user_char(c) {
            return Err(SipUriError::User);
        }
        out.push(char::from(c));
    }
    if out.is_empty() {
        return Err(SipUriError::User);
    }
    Ok(out)
}

fn parse_host(raw: &str) -> Result<String, SipUriError> {
    if let Some(inner) = raw.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(SipUriError::Host)?;
        let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| SipUriError::Host)?;
        return Ok(format!("[{ip}]"));
    }
    if raw.is_empty() || raw.len() > MAX_HOST_LEN {
        return Err(SipUriError::Host);
    }
    if raw.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(raw.to_owned());
    }
    // RFC 3261 §25.1 hostname: labels of alphanumerics and `-`, not starting or ending with
    // `-`; an optional final dot.
    let name = raw.strip_suffix('.').unwrap_or(raw);
    let ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        // The top label of a name is not all digits (that would be a bad IPv4 address).
        && !name
            .rsplit('.')
            .next()
            .is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return Err(SipUriError::Host);
    }
    Ok(name.to_ascii_lowercase())
}

impl SipUri {
    /// Parses and checks `raw`.
    pub fn parse(raw: &str) -> Result<SipUri, SipUriError> {
        if raw.len() > MAX_LEN {
            return Err(SipUriError::TooLong);
        }
        let (scheme, rest) = raw.split_once(':').ok_or(SipUriError::Scheme)?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "sip" => false,
            "sips" => true,
            _ => return Err(SipUriError::Scheme),
        };
        if rest.contains('?') {
            return Err(SipUriError::Headers);
        }
        // The user part may hold `;` (telephone-subscriber parameters) only before `@`; we
        // refuse those (not a plain user character), so splitting at the last `@` is safe.
        let (user, hostport_params) = match rest.rsplit_once('@') {
            Some((userinfo, after)) => {
                if userinfo.contains(':') {
                    return Err(SipUriError::Password);
                }
                (Some(decode_user(userinfo)?), after)
            }
            None => (None, rest),
        };
        let mut parts = hostport_params.split(';');
        let hostport = parts.next().unwrap_or("");
        let (host, port) = if hostport.starts_with('[') {
            let end = hostport.find(']').ok_or(SipUriError::Host)?;
            let (h, p) = hostport.split_at(end + 1);
            if p.is_empty() {
                (h, None)
            } else {
                (h, Some(p.strip_prefix(':').ok_or(SipUriError::Port)?))
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let host = parse_host(host)?;
        let port = match port {
            None => None,
            Some(p) => {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SipUriError::Port);
                }
                match p.parse::<u16>() {
                    Ok(0) | Err(_) => return Err(SipUriError::Port),
                    Ok(n) => Some(n),
                }
            }
        };
        let mut transport = None;
        let mut user_param = false;
        for param in parts {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            let name = name.to_ascii_lowercase();
            let value = value.to_ascii_lowercase();
            let refused = || SipUriError::Parameter(name.chars().take(32).collect());
            match name.as_str() {
                "transport" if transport.is_none() => {
                    transport = Some(match value.as_str() {
                        "udp" => UriTransport::Udp,
                        "tcp" => UriTransport::Tcp,
                        "tls" => UriTransport::Tls,
                        _ => return Err(refused()),
                    });
                }
                "user" if !user_param && (value == "phone" || value == "ip") => user_param = true,
                _ => return Err(refused()),
            }
        }
        let default_port = if secure || transport == Some(UriTransport::Tls) {
            SIPS_PORT
        } else {
            SIP_PORT
        };
        let transport = match (secure, transport) {
            // sips: is TLS whatever the parameter says (RFC 3261 §26.2.2).
            (true, _) => None,
            (false, Some(UriTransport::Udp)) => None,
            (false, t) => t,
        };
        Ok(SipUri {
            secure,
            user,
            host,
            port: port.filter(|p| *p != default_port),
            transport,
        })
    }

    /// The user part as an E.164 number (`+` and digits, visual separators `-.()` of RFC 3966
    /// §5.1.1 removed), if it is one.
    pub fn e164_user(&self) -> Option<String> {
        let user = self.user.as_deref()?;
        let digits: String = user
            .strip_prefix('+')?
            .chars()
            .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
            .collect();
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| format!("+{digits}"))
    }

    /// The host, and the port a connection goes to (explicit or the scheme's default).
    pub fn host_port(&self) -> (&str, u16) {
        let default = if self.secure || self.transport == Some(UriTransport::Tls) {
            SIPS_PORT
        } else {
            SIP_PORT
        };
        (&self.host, self.port.unwrap_or(default))
    }
}

impl fmt::Display for SipUri {
    /// The canonical form: `sip:user@host[:port][;transport=tcp|tls]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        match self.transport {
            Some(UriTransport::Tcp) => f.write_str(";transport=tcp"),
            Some(UriTransport::Tls) => f.write_str(";transport=tls"),
            Some(UriTransport::Udp) | None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> String {
        SipUri::parse(raw)
            .unwrap_or_else(|e| panic!("{raw}: {e}"))
            .to_string()
    }

    #[test]
    fn equivalent_uris_have_one_canonical_form() {
        for raw in [
            "sip:alice@example.com",
            "SIP:alice@Example.COM",
            "sip:alice@example.com:5060",
            "sip:alice@example.com;transport=udp",
            "sip:alice@example.com:5060;transport=UDP;user=ip",
            "sip:%61lice@example.com.",
        ] {
            assert_eq!(canon(raw), "sip:alice@example.com", "{raw}");
        }
        assert_eq!(canon("sip:bob@10.0.0.1:5070"), "sip:bob@10.0.0.1:5070");
        assert_eq!(
            canon("sip:bob@host;transport=tcp"),
            "sip:bob@host;transport=tcp"
        );
        assert_eq!(
            canon("sip:bob@host:5061;transport=tls"),
            "sip:bob@host;transport=tls"
        );
        assert_eq!(canon("sips:bob@host:5061;transport=tcp"), "sips:bob@host");
        assert_eq!(canon("sip:[2001:DB8::1]:5080"), "sip:[2001:db8::1]:5080");
        assert_eq!(canon("sip:[::1]"), "sip:[::1]");
        assert_eq!(canon("sip:host"), "sip:host");
        // The user part is case-sensitive (RFC 3261 §19.1.4).
        assert_ne!(canon("sip:Alice@host"), canon("sip:alice@host"));
    }

    #[test]
    fn e164_users_are_found_through_separators_and_escapes() {
        let n = |raw: &str| SipUri::parse(raw).unwrap().e164_user();
        assert_eq!(n("sip:+447000000000@trunk"), Some("+447000000000".into()));
        assert_eq!(
            n("sip:%2B44-7000.000(000)@trunk;user=phone"),
            Some("+447000000000".into())
        );
        assert_eq!(n("sip:447000000000@trunk"), None);
        assert_eq!(n("sip:+44a@trunk"), None);
        assert_eq!(n("sip:+@trunk"), None);
        assert_eq!(n("sip:trunk"), None);
    }

    #[test]
    fn what_could_redirect_or_inject_is_refused() {
        use SipUriError as E;
        for (raw, err) in [
            ("tel:+14255550123", E::Scheme),
            ("sip:a:secret@host", E::Password),
            ("sip:a@host?Subject=x", E::Headers),
            ("sip:a@host;maddr=10.0.0.1", E::Parameter("maddr".into())),
            ("sip:a@host;lr", E::Parameter("lr".into())),
            (
                "sip:a@host;transport=sctp",
                E::Parameter("transport".into()),
            ),
            (
                "sip:a@host;transport=tcp;transport=udp",
                E::Parameter("transport".into()),
            ),
            ("sip:a%0d%0aVia@host", E::User),
            ("sip:a%0d%0aVia:@host", E::Password),
            ("sip:a%3bmaddr=x@host", E::User),
            ("sip:a b@host", E::User),
            ("sip:@host", E::User),
            ("sip:a%4@host", E::User),
            ("sip:a@", E::Host),
            ("sip:a@-host", E::Host),
            ("sip:a@ho_st", E::Host),
            ("sip:a@1.2.3.999", E::Host),
            ("sip:a@[::1", E::Host),
            ("sip:a@[zz]", E::Host),
            ("sip:a@host:0", E::Port),
            ("sip:a@host:65536", E::Port),
            ("sip:a@host:", E::Port),
            ("sip:a@host:+5", E::Port),
            ("sip:a@[::1]x", E::Port),
        ] {
            assert_eq!(SipUri::parse(raw), Err(err), "{raw}");
        }
        let long = format!("sip:{}@host", "a".repeat(MAX_LEN));
        assert_eq!(SipUri::parse(&long), Err(E::TooLong));
    }

    #[test]
    fn host_port_gives_the_effective_port() {
        assert_eq!(SipUri::parse("sip:a@h").unwrap().host_port(), ("h", 5060));
        assert_eq!(SipUri::parse("sips:a@h").unwrap().host_port(), ("h", 5061));
        assert_eq!(
            SipUri::parse("sip:a@h:7;transport=tcp")
                .unwrap()
                .host_port(),
            ("h", 7)
        );
    }
}
