//! DTMF carried in SIP INFO bodies: `application/dtmf-relay` and `application/dtmf`.
//!
//! Neither format has an RFC; what real devices send (Cisco, Linphone, Asterisk):
//! ```text
//!   application/dtmf-relay:  Signal=#\r\nDuration=250\r\n    (linphone, captured here)
//!                            signal= 1 / Signal=11 / no Duration line
//!   application/dtmf:        #                               (the key alone)
//! ```
//! Numeric signals 10–15 are RFC 4733 event codes (10 `*`, 11 `#`, 12–15 `A`–`D`), as
//! Asterisk's `chan_sip` reads them; 16 (flash) is not a key.

use std::time::Duration;

/// Largest INFO body we read (bytes); real ones are under 40.
pub const MAX_INFO_BODY_BYTES: usize = 1024;
/// Longest Duration we accept (ms); anything longer is not a key press.
pub const MAX_DURATION_MS: u64 = 60_000;

/// A key press carried in a SIP INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfInfo {
    /// One of `0-9 * # A-D`.
    pub key: char,
    /// How long the key was held, when the body says.
    pub duration: Option<Duration>,
}

/// Why an INFO body is not a key press. The sender is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    /// Content-Type is not a DTMF type.
    #[error("not a DTMF content type")]
    NotDtmf,
    /// Too large or not text.
    #[error("unreadable INFO body")]
    Unreadable,
    /// No `Signal=` line (dtmf-relay) or empty body (dtmf).
    #[error("no DTMF signal in the body")]
    MissingSignal,
    /// The signal is not a DTMF key.
    #[error("invalid DTMF signal")]
    InvalidSignal,
    /// Duration is not a number of milliseconds in range.
    #[error("invalid DTMF duration")]
    InvalidDuration,
}

/// Whether `content_type` (parameters allowed) is one we parse.
pub fn is_dtmf_content_type(content_type: &str) -> bool {
    let base = content_type.split(';').next().unwrap_or("").trim();
    base.eq_ignore_ascii_case("application/dtmf-relay")
        || base.eq_ignore_ascii_case("application/dtmf")
}

/// Parses a DTMF INFO body given its Content-Type.
pub fn parse_dtmf_info(content_type: &str, body: &[u8]) -> Result<DtmfInfo, InfoError> {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if body.len() > MAX_INFO_BODY_BYTES {
        return Err(InfoError::Unreadable);
    }
    let text = std::str::from_utf8(body).map_err(|_| InfoError::Unreadable)?;
    match base.as_str() {
        "application/dtmf-relay" => {
            let (mut signal, mut duration) = (None, None);
            for line in text.lines() {
                let Some((k, v)) = line.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "signal" => signal = Some(v.trim()),
                    "duration" => {
                        let ms: u64 = v.trim().parse().map_err(|_| InfoError::InvalidDuration)?;
                        if ms > MAX_DURATION_MS {
                            return Err(InfoError::InvalidDuration);
                        }
                        duration = Some(Duration::from_millis(ms));
                    }
                    _ => {}
                }
            }
            let key = key_from_signal(signal.ok_or(InfoError::MissingSignal)?)?;
            Ok(DtmfInfo { key, duration })
        }
        "application/dtmf" => {
            let signal = text.trim();
            if signal.is_empty() {
                return Err(InfoError::MissingSignal);
            }
            Ok(DtmfInfo {
                key: key_from_signal(signal)?,
                duration: None,
            })
        }
        _ => Err(InfoError::NotDtmf),
    }
}

fn key_from_signal(signal: &str) -> Result<char, InfoError> {
    let mut chars = signal.chars();
    let (first, rest) = (
        chars.next().ok_or(InfoError::MissingSignal)?,
        chars.as_str(),
    );
    if rest.is_empty() {
        return match first.to_ascii_uppercase() {
            c @ ('0'..='9' | '*' | '#' | 'A'..='D') => Ok(c),
            _ => Err(InfoError::InvalidSignal),
        };
    }
    match signal {
        "10" => Ok('*'),
        "11" => Ok('#'),
        "12" => Ok('A'),
        "13" => Ok('B'),
        "14" => Ok('C'),
        "15" => Ok('D'),
        _ => Err(InfoError::InvalidSignal),
    }
}

/// Builds an `application/dtmf-relay` body (what linphone sends).
pub fn dtmf_relay_body(key: char, duration: Duration) -> String {
    format!("Signal={key}\r\nDuration={}\r\n", duration.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linphone_body() {
        let d = parse_dtmf_info("application/dtmf-relay", b"Signal=#\r\nDuration=250\r\n").unwrap();
        assert_eq!(
            d,
            DtmfInfo {
                key: '#',
                duration: Some(Duration::from_millis(250))
            }
        );
    }

    #[test]
    fn tolerant_variants() {
        let p = |ct, b: &[u8]| parse_dtmf_info(ct, b).map(|d| d.key);
        assert_eq!(
            p(
                "Application/DTMF-Relay; charset=x",
                b"signal= 1\nduration=100"
            ),
            Ok('1')
        );
        assert_eq!(p("application/dtmf-relay", b"Signal=11"), Ok('#'));
        assert_eq!(p("application/dtmf-relay", b"Signal=10"), Ok('*'));
        assert_eq!(p("application/dtmf-relay", b"Signal=d"), Ok('D'));
        assert_eq!(p("application/dtmf", b"5\r\n"), Ok('5'));
        assert_eq!(
            p("application/dtmf-relay", b"Signal=16"),
            Err(InfoError::InvalidSignal)
        );
        assert_eq!(
            p("application/dtmf-relay", b"Duration=1"),
            Err(InfoError::MissingSignal)
        );
        assert_eq!(
            p("application/dtmf-relay", b"Signal=1\nDuration=x"),
            Err(InfoError::InvalidDuration)
        );
        assert_eq!(p("text/plain", b"1"), Err(InfoError::NotDtmf));
        assert_eq!(p("application/dtmf", b""), Err(InfoError::MissingSignal));
    }

    #[test]
    fn body_round_trip() {
        let b = dtmf_relay_body('#', Duration::from_millis(250));
        assert_eq!(b, "Signal=#\r\nDuration=250\r\n");
        assert_eq!(
            parse_dtmf_info("application/dtmf-relay", b.as_bytes())
                .unwrap()
                .key,
            '#'
        );
    }
}
