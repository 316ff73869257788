//! SDP security descriptions (SDES, RFC 4568): the `a=crypto` attribute that carries SRTP keys
//! in an offer or answer, parsed defensively and written byte-exactly.
//!
//! ```text
//! a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4 KDR=0
//!          │ │                       │      │                                       │    │   │
//!          │ crypto-suite (§6.2)      │      key||salt, 30 bytes in base64 (§6.1)   │    MKI  session
//!          tag (1-9 digits)           key-method                               lifetime       params (§6.3)
//! ```
//! We take one key per attribute, without MKI, from the two AES_CM_128 suites; KDR 0 or none;
//! no session parameter that weakens SRTP (`UNENCRYPTED_SRTP`, `UNENCRYPTED_SRTCP`,
//! `UNAUTHENTICATED_SRTP`) and none we do not know unless it is marked optional with `-`
//! (§6.3.7). Anything else makes the attribute unusable, with the reason as a typed error.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroize;

/// Master key plus master salt, bytes (RFC 3711 §8.2: 128-bit key, 112-bit salt; RFC 4568
/// §6.1 concatenates them in `inline:`).
pub const KEY_SALT_LEN: usize = 30;
/// Base64 characters of 30 bytes (no padding: 30 is a multiple of 3).
const KEY_SALT_BASE64_LEN: usize = 40;
/// Longest tag, digits (RFC 4568 §9.1: `1*9DIGIT`).
const MAX_TAG_DIGITS: usize = 9;
/// Largest key lifetime that means anything for SRTP, packets (RFC 3711 §9.2: 2^48).
const MAX_LIFETIME_LOG2: u32 = 48;
/// Smallest key lifetime we accept, packets: 2^16 packets are 21 minutes of 20 ms audio, more
/// than any verification call lasts (we do not re-key mid-call).
const MIN_LIFETIME: u64 = 1 << 16;
/// Longest `a=crypto` value we look at, bytes (a real one is under 150).
const MAX_ATTRIBUTE_LEN: usize = 1024;

/// The SRTP crypto suites we offer and accept (RFC 4568 §6.2).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CryptoSuite {
    /// AES-128 counter mode, 80-bit HMAC-SHA1 tag (§6.2.1).
    AesCm128HmacSha1_80,
    /// AES-128 counter mode, 32-bit HMAC-SHA1 tag on RTP (§6.2.2).
    AesCm128HmacSha1_32,
}

impl CryptoSuite {
    /// Both, in our order of preference (also the order of our offer's tags 1 and 2).
    pub const ALL: [CryptoSuite; 2] = [
        CryptoSuite::AesCm128HmacSha1_80,
        CryptoSuite::AesCm128HmacSha1_32,
    ];

    /// The registered name (RFC 4568 §10.3.2.1).
    pub fn name(self) -> &'static str {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            CryptoSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite registered as `name` (names are case-sensitive, RFC 4568 §9.2).
    pub fn from_name(name: &str) -> Option<CryptoSuite> {
        CryptoSuite::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Position in [`CryptoSuite::ALL`].
    fn index(self) -> usize {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 => 0,
            CryptoSuite::AesCm128HmacSha1_32 => 1,
        }
    }
}

impl fmt::Display for CryptoSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// SRTP master key and salt as SDES carries them: a secret. `Debug` shows no byte, there is no
/// `Display`, and the bytes are wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SdesKey([u8; KEY_SALT_LEN]);

impl SdesKey {
    /// Key (16 bytes) then salt (14 bytes).
    pub fn new(bytes: [u8; KEY_SALT_LEN]) -> SdesKey {
        SdesKey(bytes)
    }

    /// The bytes, for the SRTP context (never for logs).
    pub fn expose(&self) -> &[u8; KEY_SALT_LEN] {
        &self.0
    }
}

impl fmt::Debug for SdesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SdesKey(<redacted>)")
    }
}

impl Drop for SdesKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// One usable `a=crypto` attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crypto {
    /// Its tag: an answer names the offered attribute it accepts by this (RFC 4568 §5.1).
    pub tag: u32,
    pub suite: CryptoSuite,
    /// The key its author protects what it sends with.
    pub key: SdesKey,
}

/// Why an `a=crypto` attribute cannot be used. The SDP's author is at fault, or asks for
/// something we do not do.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Not `tag suite key-params [session-params]`, or a field out of its syntax.
    #[error("malformed crypto attribute")]
    Malformed,
    /// A crypto-suite other than AES_CM_128_HMAC_SHA1_80/_32.
    #[error("unsupported crypto suite")]
    UnsupportedSuite,
    /// A key method other than `inline`, or more than one key.
    #[error("unsupported key method or more than one key")]
    UnsupportedKeys,
    /// The key is not 30 bytes of base64.
    #[error("the key is not 30 bytes of base64")]
    BadKey,
    /// A master key identifier (MKI): we put none in packets and read none.
    #[error("master key identifiers are not supported")]
    Mki,
    /// A lifetime too short for a call, or beyond 2^48.
    #[error("unusable key lifetime")]
    Lifetime,
    /// A session parameter that weakens SRTP, a KDR other than 0, or an unknown mandatory one.
    #[error("unsupported session parameter")]
    SessionParam,
}

impl Crypto {
    /// Parses the value of an `a=crypto:` attribute (what follows the colon).
    pub fn parse(value: &str) -> Result<Crypto, CryptoError> {
        if value.len() > MAX_ATTRIBUTE_LEN {
            return Err(CryptoError::Malformed);
        }
        let mut fields = value.split_ascii_whitespace();
        let (Some(tag), Some(suite), Some(key_params)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(CryptoError::Malformed);
        };
        if tag.is_empty() || tag.len() > MAX_TAG_DIGITS || !tag.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(CryptoError::Malformed);
        }
        let tag: u32 = tag.parse().map_err(|_| CryptoError::Malformed)?;
        let suite = CryptoSuite::from_name(suite).ok_or(CryptoError::UnsupportedSuite)?;
        let key = parse_key_params(key_params)?;
        for param in fields {
            check_session_param(param)?;
        }
        Ok(Crypto { tag, suite, key })
    }

    /// The attribute value (`1 AES_CM_128_HMAC_SHA1_80 inline:…`), for `a=crypto:`.
    pub fn to_value(&self) -> String {
        format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.name(),
            STANDARD.encode(self.key.expose())
        )
    }
}

/// `inline:<key||salt>[|lifetime][|mki:length]`, exactly one (RFC 4568 §9.2).
fn parse_key_params(params: &str) -> Result<SdesKey, CryptoError> {
    if params.contains(';') {
        return Err(CryptoError::UnsupportedKeys);
    }
    let (method, info) = params.split_once(':').ok_or(CryptoError::Malformed)?;
    if method != "inline" {
        return Err(CryptoError::UnsupportedKeys);
    }
    let mut parts = info.split('|');
    let key_salt = parts.next().ok_or(CryptoError::Malformed)?;
    if key_salt.len() != KEY_SALT_BASE64_LEN {
        return Err(CryptoError::BadKey);
    }
    let bytes = STANDARD.decode(key_salt).map_err(|_| CryptoError::BadKey)?;
    let bytes: [u8; KEY_SALT_LEN] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
    let key = SdesKey::new(bytes);
    let mut lifetime_seen = false;
    for part in parts {
        // The MKI is `value:length`; a lifetime has no colon and comes first (§9.2).
        if part.contains(':') {
            return Err(CryptoError::Mki);
        }
        if lifetime_seen {
            return Err(CryptoError::Malformed);
        }
        lifetime_seen = true;
        check_lifetime(part)?;
    }
    Ok(key)
}

/// `["2^"] 1*DIGIT`, packets.
fn check_lifetime(text: &str) -> Result<(), CryptoError> {
    let (power, digits) = match text.strip_prefix("2^") {
        Some(d) => (true, d),
        None => (false, text),
    };
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CryptoError::Malformed);
    }
    let n: u64 = digits.parse().map_err(|_| CryptoError::Lifetime)?;
    let packets = if power {
        if n > u64::from(MAX_LIFETIME_LOG2) {
            return Err(CryptoError::Lifetime);
        }
        1u64 << n
    } else {
        n
    };
    if !(MIN_LIFETIME..=1u64 << MAX_LIFETIME_LOG2).contains(&packets) {
        return Err(CryptoError::Lifetime);
    }
    Ok(())
}

/// One session parameter (RFC 4568 §6.3).
fn check_session_param(param: &str) -> Result<(), CryptoError> {
    let (name, value) = match param.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (param, None),
    };
    match (name, value) {
        // KDR 0 (or none): keys derived once (§6.3.1); rtc-srtp derives no others.
        ("KDR", Some("0")) => Ok(()),
        // A hint for our replay window (§6.3.6); ours is fixed.
        ("WSH", Some(v))
            if !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok(())
        }
        // Where FEC goes relative to SRTP (§6.3.4): we send and expect no FEC.
        ("FEC_ORDER", Some("FEC_SRTP" | "SRTP_FEC")) => Ok(()),
        // Optional extensions may be ignored (§6.3.7).
        (n, _) if n.starts_with('-') && n.len() > 1 => Ok(()),
        // UNENCRYPTED_*, UNAUTHENTICATED_SRTP, FEC_KEY, other KDRs, anything unknown.
        _ => Err(CryptoError::SessionParam),
    }
}

/// Our side of SDES in a call: whether the offer says `RTP/SAVP` (SRTP required) or
/// `RTP/AVP` (SRTP offered, plain accepted), and one fresh key per suite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSdes {
    /// `RTP/SAVP` (RFC 4568 as written: a plain-RTP answerer refuses the stream) when true;
    /// `RTP/AVP` with `a=crypto` (best-effort SRTP, as Asterisk, FreeSWITCH and baresip
    /// offer it: a plain answerer ignores the attribute) when false.
    pub savp: bool,
    /// Our key for each of [`CryptoSuite::ALL`], in that order (independent keys, so that
    /// the suite the answer picks does not weaken the other's).
    pub keys: [SdesKey; 2],
}

impl LocalSdes {
    /// The transport protocol of our `m=` line.
    pub fn proto(&self) -> &'static str {
        if self.savp { "RTP/SAVP" } else { "RTP/AVP" }
    }

    /// Our key for `suite`.
    pub fn key(&self, suite: CryptoSuite) -> &SdesKey {
        &self.keys[suite.index()]
    }

    /// The attributes of our offer: tag 1 for the first suite, 2 for the second.
    pub fn offer(&self) -> Vec<Crypto> {
        CryptoSuite::ALL
            .into_iter()
            .map(|suite| Crypto {
                tag: suite.index() as u32 + 1,
                suite,
                key: self.key(suite).clone(),
            })
            .collect()
    }

    /// Whether `answer` accepts one of our offered attributes: same tag, same suite (RFC 4568
    /// §7.1.3).
    pub fn accepts(&self, answer: &Crypto) -> bool {
        answer.tag == answer.suite.index() as u32 + 1
    }
}

/// What a media section said about SRTP.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Sdes {
    /// No `a=crypto` at all.
    #[default]
    Absent,
    /// `a=crypto` attributes, none usable (the first one's reason).
    Unusable(CryptoError),
    /// The first usable attribute.
    Usable(Crypto),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4568_examples() {
        // §8.1 (keys of the RFC's own examples).
        let c = Crypto::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20",
        )
        .unwrap();
        assert_eq!((c.tag, c.suite), (1, CryptoSuite::AesCm128HmacSha1_80));
        assert_eq!(&c.key.expose()[..4], b"=-n@");
        // §4's example carries an MKI (`|1:32`): a valid attribute we cannot use.
        assert_eq!(
            Crypto::parse(
                "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32"
            ),
            Err(CryptoError::Mki)
        );
        // §5.1 / §8: the _32 suite, session parameters.
        let c = Crypto::parse(
            "2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20 KDR=0 WSH=128 -FOO",
        )
        .unwrap();
        assert_eq!((c.tag, c.suite), (2, CryptoSuite::AesCm128HmacSha1_32));
        // §6.1's F8 suite and multiple keys.
        assert_eq!(
            Crypto::parse("1 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm"),
            Err(CryptoError::UnsupportedSuite)
        );
        assert_eq!(
            Crypto::parse(
                "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4;inline:QUJjZGVmMTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5|2^20|2:4"
            ),
            Err(CryptoError::UnsupportedKeys)
        );
    }

    #[test]
    fn hostile_attributes_are_refused_with_their_reason() {
        let key = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
        let cases: &[(&str, CryptoError)] = &[
            ("", CryptoError::Malformed),
            ("1", CryptoError::Malformed),
            ("1 AES_CM_128_HMAC_SHA1_80", CryptoError::Malformed),
            (
                "1234567890 AES_CM_128_HMAC_SHA1_80 inline:K",
                CryptoError::Malformed,
            ),
            (
                "-1 AES_CM_128_HMAC_SHA1_80 inline:K",
                CryptoError::Malformed,
            ),
            (
                "1 aes_cm_128_hmac_sha1_80 inline:K",
                CryptoError::UnsupportedSuite,
            ),
            (
                "1 AES_CM_128_HMAC_SHA1_80 uri:http://x",
                CryptoError::UnsupportedKeys,
            ),
            ("1 AES_CM_128_HMAC_SHA1_80 inline", CryptoError::Malformed),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:", CryptoError::BadKey),
            (
                "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVB",
                CryptoError::BadKey,
            ),
            (
                "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaV!R",
                CryptoError::BadKey,
            ),
        ];
        for (value, err) in cases {
            assert_eq!(Crypto::parse(value), Err(*err), "{value:?}");
        }
        let with =
            |tail: &str| Crypto::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}{tail}"));
        assert!(with("").is_ok());
        assert!(with("|2^31").is_ok());
        assert!(with("|1048576").is_ok());
        assert_eq!(with("|2^10"), Err(CryptoError::Lifetime));
        assert_eq!(with("|2^49"), Err(CryptoError::Lifetime));
        assert_eq!(with("|2^99999999999999999999"), Err(CryptoError::Lifetime));
        assert_eq!(
            with("|99999999999999999999999"),
            Err(CryptoError::Malformed)
        );
        assert_eq!(with("|2^20|2^20"), Err(CryptoError::Malformed));
        assert_eq!(with("|"), Err(CryptoError::Malformed));
        for weakening in [
            "UNENCRYPTED_SRTP",
            "UNENCRYPTED_SRTCP",
            "UNAUTHENTICATED_SRTP",
            "KDR=24",
            "FEC_KEY=inline:x",
            "NEW_THING",
            "-",
        ] {
            assert_eq!(
                with(&format!(" {weakening}")),
                Err(CryptoError::SessionParam),
                "{weakening}"
            );
        }
        assert_eq!(
            Crypto::parse(&format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{key} {}",
                "x".repeat(2000)
            )),
            Err(CryptoError::Malformed)
        );
    }

    #[test]
    fn written_attributes_read_back_and_keys_never_print() {
        let c = Crypto {
            tag: 7,
            suite: CryptoSuite::AesCm128HmacSha1_32,
            key: SdesKey::new(*b"0123456789abcdefghijklmnopqrst"),
        };
        assert_eq!(
            c.to_value(),
            "7 AES_CM_128_HMAC_SHA1_32 inline:MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1ub3BxcnN0"
        );
        assert_eq!(Crypto::parse(&c.to_value()), Ok(c.clone()));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("0123") && !shown.contains("MDEy"),
            "{shown}"
        );
    }
}
