//! HTTP Digest authentication for SIP (RFC 2617, RFC 7616, RFC 8760; RFC 3261 §22).
//!
//! Our own challenge parser: rsip's typed auth headers reject `algorithm=SHA-256`.
//! When a 401/407 carries several challenges we answer the strongest one we support:
//! SHA-512-256 > SHA-256 > MD5 (RFC 8760 §2.4: the client uses the topmost one it
//! supports; servers list the preferred one first, so ties keep the order received).
//!
//! ```text
//!   A1       = username ":" realm ":" password            (-sess: H(A1) ":" nonce ":" cnonce)
//!   A2       = method ":" digest-uri                       (auth-int: ... ":" H(body))
//!   response = H( H(A1) ":" nonce ":" nc ":" cnonce ":" qop ":" H(A2) )
//!              H( H(A1) ":" nonce ":" H(A2) )                  (no qop, RFC 2069)
//! ```

use std::fmt;

use md5::{Digest, Md5};
use sha2::{Sha256, Sha512Trunc256};

use crate::message::{split_unquoted, unquote};
use crate::redact::Secret;

/// Why a challenge cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The response had no challenge header at all (peer broke RFC 3261 §22.1).
    #[error("401/407 without a challenge")]
    NoChallenge,
    /// The scheme is not Digest (peer lacks a feature we need).
    #[error("authentication scheme is not Digest")]
    NotDigest,
    /// A required parameter is missing (peer broke RFC 7616 §3.3).
    #[error("challenge lacks the {0} parameter")]
    MissingParam(&'static str),
    /// The algorithm is none we implement (peer lacks a feature we need).
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// The only qop offered is none we implement.
    #[error("unsupported qop")]
    UnsupportedQop,
    /// No credentials are configured for this call (our configuration).
    #[error("no credentials configured")]
    NoCredentials,
}

/// Digest hash algorithm (RFC 7616 §3.3, RFC 8760).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// MD5 (RFC 2617).
    Md5,
    /// MD5-sess.
    Md5Sess,
    /// SHA-256 (RFC 7616).
    Sha256,
    /// SHA-256-sess.
    Sha256Sess,
    /// SHA-512/256 (RFC 7616).
    Sha512_256,
    /// SHA-512-256-sess.
    Sha512_256Sess,
}

impl Algorithm {
    /// Parses the `algorithm` token (case-insensitive).
    pub fn from_token(token: &str) -> Option<Self> {
        let t = token.to_ascii_uppercase();
        Some(match t.as_str() {
            "MD5" => Self::Md5,
            "MD5-SESS" => Self::Md5Sess,
            "SHA-256" => Self::Sha256,
            "SHA-256-SESS" => Self::Sha256Sess,
            "SHA-512-256" => Self::Sha512_256,
            "SHA-512-256-SESS" => Self::Sha512_256Sess,
            _ => return None,
        })
    }

    /// The token as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Md5Sess => "MD5-sess",
            Self::Sha256 => "SHA-256",
            Self::Sha256Sess => "SHA-256-sess",
            Self::Sha512_256 => "SHA-512-256",
            Self::Sha512_256Sess => "SHA-512-256-sess",
        }
    }

    /// Preference rank: higher is stronger.
    fn strength(self) -> u8 {
        match self {
            Self::Md5 | Self::Md5Sess => 1,
            Self::Sha256 | Self::Sha256Sess => 2,
            Self::Sha512_256 | Self::Sha512_256Sess => 3,
        }
    }

    fn is_sess(self) -> bool {
        matches!(
            self,
            Self::Md5Sess | Self::Sha256Sess | Self::Sha512_256Sess
        )
    }

    /// Lower-case hex of the hash of `data`.
    fn hex(self, data: &[u8]) -> String {
        let bytes: Vec<u8> = match self {
            Self::Md5 | Self::Md5Sess => Md5::digest(data).to_vec(),
            Self::Sha256 | Self::Sha256Sess => Sha256::digest(data).to_vec(),
            Self::Sha512_256 | Self::Sha512_256Sess => Sha512Trunc256::digest(data).to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Quality of protection we answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    /// `auth`.
    Auth,
    /// `auth-int` (covers the body).
    AuthInt,
}

/// One parsed `Digest` challenge from WWW-Authenticate or Proxy-Authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Protection space.
    pub realm: String,
    /// Server nonce.
    pub nonce: String,
    /// Opaque value to echo.
    pub opaque: Option<String>,
    /// Hash algorithm (MD5 when absent).
    pub algorithm: Algorithm,
    /// Chosen qop (`None`: legacy RFC 2069 digest).
    pub qop: Option<Qop>,
    /// `stale=true`: the nonce expired, the password was fine (retry without asking).
    pub stale: bool,
    /// `userhash=true` (RFC 7616 §3.4.4).
    pub userhash: bool,
}

impl Challenge {
    /// Parses one `Digest …` challenge value.
    pub fn parse(value: &str) -> Result<Self, AuthError> {
        let value = value.trim();
        let (scheme, params) = value
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(AuthError::NotDigest);
        }
        let (mut realm, mut nonce, mut opaque, mut algorithm, mut qop_raw) =
            (None, None, None, None, None);
        let (mut stale, mut userhash) = (false, false);
        for item in split_unquoted(params, ',') {
            let Some((k, v)) = item.split_once('=') else {
                continue;
            };
            let v = unquote(v.trim()).to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "realm" => realm = Some(v),
                "nonce" => nonce = Some(v),
                "opaque" => opaque = Some(v),
                "algorithm" => algorithm = Some(v),
                "qop" => qop_raw = Some(v),
                "stale" => stale = v.eq_ignore_ascii_case("true"),
                "userhash" => userhash = v.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        let algorithm = match algorithm {
            None => Algorithm::Md5,
            Some(a) => Algorithm::from_token(&a).ok_or(AuthError::UnsupportedAlgorithm)?,
        };
        let qop = match qop_raw {
            None => None,
            Some(list) => {
                let tokens: Vec<String> = list
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect();
                if tokens.iter().any(|t| t == "auth") {
                    Some(Qop::Auth)
                } else if tokens.iter().any(|t| t == "auth-int") {
                    Some(Qop::AuthInt)
                } else {
                    return Err(AuthError::UnsupportedQop);
                }
            }
        };
        Ok(Self {
            realm: realm.ok_or(AuthError::MissingParam("realm"))?,
            nonce: nonce.ok_or(AuthError::MissingParam("nonce"))?,
            opaque,
            algorithm,
            qop,
            stale,
            userhash,
        })
    }

    /// Picks the strongest challenge we can answer from every challenge header value of a
    /// response (each value may hold one challenge; several values may be given).
    pub fn select<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, AuthError> {
        let mut best: Option<Challenge> = None;
        let mut first_error = None;
        for value in values {
            for one in split_challenges(value) {
                match Self::parse(one) {
                    Ok(c) => {
                        if best
                            .as_ref()
                            .is_none_or(|b| c.algorithm.strength() > b.algorithm.strength())
                        {
                            best = Some(c);
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        best.ok_or(first_error.unwrap_or(AuthError::NoChallenge))
    }
}

/// Splits a header value that may hold several challenges (`Digest a=1, Digest b=2`).
fn split_challenges(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for item in split_unquoted(value, ',') {
        let trimmed = item.trim_start();
        let first_word = trimmed
            .split(|c: char| c.is_ascii_whitespace() || c == '=')
            .next()
            .unwrap_or("");
        let is_scheme = !trimmed.is_empty()
            && trimmed.len() > first_word.len()
            && trimmed[first_word.len()..].starts_with(|c: char| c.is_ascii_whitespace());
        if is_scheme && offset > start {
            out.push(value[start..offset - 1].trim());
            start = offset;
        }
        offset += item.len() + 1;
    }
    out.push(value[start..].trim());
    out
}

/// Username and password for digest authentication. The password never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Authentication user name.
    pub username: String,
    /// Password.
    pub password: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// The request being authorized.
#[derive(Debug, Clone, Copy)]
pub struct DigestRequest<'a> {
    /// Method (e.g. `INVITE`).
    pub method: &'a str,
    /// The exact Request-URI (RFC 2617 §3.2.2.5).
    pub uri: &'a str,
    /// Body, for qop=auth-int.
    pub body: &'a [u8],
    /// Client nonce.
    pub cnonce: &'a str,
    /// Nonce count (1 for the first request with this nonce).
    pub nc: u32,
}

/// Computes the Authorization / Proxy-Authorization header value answering `challenge`.
pub fn authorization(
    challenge: &Challenge,
    credentials: &Credentials,
    request: &DigestRequest<'_>,
) -> String {
    let alg = challenge.algorithm;
    let nc = format!("{:08x}", request.nc);
    let a1 = format!(
        "{}:{}:{}",
        credentials.username,
        challenge.realm,
        credentials.password.expose()
    );
    let mut ha1 = alg.hex(a1.as_bytes());
    if alg.is_sess() {
        ha1 = alg.hex(format!("{ha1}:{}:{}", challenge.nonce, request.cnonce).as_bytes());
    }
    let a2 = match challenge.qop {
        Some(Qop::AuthInt) => format!(
            "{}:{}:{}",
            request.method,
            request.uri,
            alg.hex(request.body)
        ),
        _ => format!("{}:{}", request.method, request.uri),
    };
    let ha2 = alg.hex(a2.as_bytes());
    let qop_token = match challenge.qop {
        Some(Qop::Auth) => Some("auth"),
        Some(Qop::AuthInt) => Some("auth-int"),
        None => None,
    };
    let response = match qop_token {
        Some(q) => alg.hex(
            format!(
                "{ha1}:{}:{nc}:{}:{q}:{ha2}",
                challenge.nonce, request.cnonce
            )
            .as_bytes(),
        ),
        None => alg.hex(format!("{ha1}:{}:{ha2}", challenge.nonce).as_bytes()),
    };
    let username = if challenge.userhash {
        alg.hex(format!("{}:{}", credentials.username, challenge.realm).as_bytes())
    } else {
        credentials
            .username
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    };
    // Parameter order follows the examples of RFC 7616 §3.9.
    let mut out = format!(
        "Digest username=\"{username}\", realm=\"{}\", uri=\"{}\", algorithm={}, nonce=\"{}\"",
        challenge.realm, request.uri, alg, challenge.nonce
    );
    if let Some(q) = qop_token {
        out.push_str(&format!(
            ", nc={nc}, cnonce=\"{}\", qop={q}",
            request.cnonce
        ));
    }
    out.push_str(&format!(", response=\"{response}\""));
    if let Some(o) = &challenge.opaque {
        out.push_str(&format!(", opaque=\"{o}\""));
    }
    if challenge.userhash {
        out.push_str(", userhash=true");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const OPAQUE: &str = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS";
    const CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn rfc7616_challenges() -> [String; 2] {
        let c = |alg: &str| {
            format!(
                "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm={alg}, nonce=\"{NONCE}\", opaque=\"{OPAQUE}\""
            )
        };
        [c("SHA-256"), c("MD5")]
    }

    fn mufasa() -> Credentials {
        Credentials {
            username: "Mufasa".into(),
            password: Secret::new("Circle of Life"),
        }
    }

    fn get(c: &Challenge) -> String {
        let req = DigestRequest {
            method: "GET",
            uri: "/dir/index.html",
            body: b"",
            cnonce: CNONCE,
            nc: 1,
        };
        authorization(c, &mufasa(), &req)
    }

    /// RFC 7616 §3.9.1, MD5 answer, byte for byte.
    #[test]
    fn rfc7616_md5_example() {
        let [_, md5] = rfc7616_challenges();
        let c = Challenge::parse(&md5).unwrap();
        assert_eq!(
            get(&c),
            format!(
                "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", uri=\"/dir/index.html\", algorithm=MD5, nonce=\"{NONCE}\", nc=00000001, cnonce=\"{CNONCE}\", qop=auth, response=\"8ca523f5e9506fed4657c9700eebdbec\", opaque=\"{OPAQUE}\""
            )
        );
    }

    /// RFC 7616 §3.9.1, SHA-256 answer, byte for byte; SHA-256 wins over MD5.
    #[test]
    fn rfc7616_sha256_example_and_preference() {
        let [sha, md5] = rfc7616_challenges();
        let c = Challenge::select([md5.as_str(), sha.as_str()]).unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert_eq!(
            get(&c),
            format!(
                "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", uri=\"/dir/index.html\", algorithm=SHA-256, nonce=\"{NONCE}\", nc=00000001, cnonce=\"{CNONCE}\", qop=auth, response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\", opaque=\"{OPAQUE}\""
            )
        );
    }

    #[test]
    fn prefers_sha512_256_and_parses_combined_header() {
        let v = "Digest realm=\"r\", nonce=\"n\", algorithm=MD5, Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256-sess, qop=\"auth\"";
        let c = Challenge::select([v]).unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha512_256Sess);
        assert_eq!(c.qop, Some(Qop::Auth));
    }

    #[test]
    fn unsupported_and_malformed() {
        assert_eq!(
            Challenge::select(["Basic realm=\"x\""]),
            Err(AuthError::NotDigest)
        );
        assert_eq!(
            Challenge::select(["Digest realm=\"x\", nonce=\"y\", algorithm=SHA-1"]),
            Err(AuthError::UnsupportedAlgorithm)
        );
        assert_eq!(
            Challenge::select(["Digest nonce=\"y\""]),
            Err(AuthError::MissingParam("realm"))
        );
        assert_eq!(
            Challenge::select(Vec::<&str>::new()),
            Err(AuthError::NoChallenge)
        );
        let c = Challenge::parse("Digest realm=\"x\", nonce=\"y\", stale=TRUE").unwrap();
        assert!(c.stale);
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert_eq!(c.qop, None);
    }

    /// -sess and legacy (no qop) forms, checked against values computed by hand from the formulas.
    #[test]
    fn sess_and_legacy_forms() {
        let creds = mufasa();
        let req = DigestRequest {
            method: "INVITE",
            uri: "sip:a@b",
            body: b"",
            cnonce: "c",
            nc: 2,
        };
        let sess =
            Challenge::parse("Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess, qop=auth")
                .unwrap();
        let ha1 = Algorithm::Md5
            .hex(format!("{}:n:c", Algorithm::Md5.hex(b"Mufasa:r:Circle of Life")).as_bytes());
        let ha2 = Algorithm::Md5.hex(b"INVITE:sip:a@b");
        let expected = Algorithm::Md5.hex(format!("{ha1}:n:00000002:c:auth:{ha2}").as_bytes());
        assert!(authorization(&sess, &creds, &req).contains(&format!("response=\"{expected}\"")));
        let legacy = Challenge::parse("Digest realm=\"r\", nonce=\"n\"").unwrap();
        let ha1 = Algorithm::Md5.hex(b"Mufasa:r:Circle of Life");
        let expected = Algorithm::Md5.hex(format!("{ha1}:n:{ha2}").as_bytes());
        let header = authorization(&legacy, &creds, &req);
        assert!(header.contains(&format!("response=\"{expected}\"")));
        assert!(!header.contains("nc="));
    }

    #[test]
    fn credentials_debug_hides_password() {
        assert!(!format!("{:?}", mufasa()).contains("Circle"));
    }
}
