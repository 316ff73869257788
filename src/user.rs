//! Who signs in: users of an API client, their enrolled methods, and the attempts of a
//! verification by user (DESIGN.md "Sign-in methods").

use std::fmt;

use flow::{CallResult, TimelineEntry};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::model::{Destination, UnixMs, VerificationId};

/// A prefixed random id: the prefix, then 32 lowercase hex digits (128 random bits).
macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            const PREFIX: &'static str = $prefix;
            const HEX_LEN: usize = 32;

            /// A new random id.
            pub fn generate() -> $name {
                let bytes: [u8; 16] = rand::random();
                $name(format!("{}{}", Self::PREFIX, hex::encode(bytes)))
            }

            /// Accepts only the exact shape `generate` makes.
            pub fn parse(s: &str) -> Option<$name> {
                let hex_part = s.strip_prefix(Self::PREFIX)?;
                (hex_part.len() == Self::HEX_LEN
                    && hex_part
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
                .then(|| $name(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// `usr_` and 128 random bits in hex.
    UserId,
    "usr_"
);
prefixed_id!(
    /// `mth_` and 128 random bits in hex.
    MethodId,
    "mth_"
);

/// A user of one API client.
#[derive(Clone, Debug)]
pub struct User {
    pub id: UserId,
    /// The API client the user belongs to: another client never sees it.
    pub client: String,
    /// The auth server's own name for the user (unique per client).
    pub external_id: String,
    pub display_name: Option<String>,
    pub created_at: UnixMs,
}

/// The kinds of method a user can enrol. `push` (issue 12) will be the third.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    /// A call to a mobile or office phone: answer and press `#`.
    Phone,
    /// A code from an authenticator app (RFC 6238 TOTP) typed into the sign-in page.
    AppCode,
}

impl MethodKind {
    pub const ALL: [MethodKind; 2] = [MethodKind::Phone, MethodKind::AppCode];

    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Phone => "phone",
            MethodKind::AppCode => "app_code",
        }
    }

    pub fn parse(s: &str) -> Option<MethodKind> {
        MethodKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Whether a method can be used to sign in.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodStatus {
    /// Enrolment started, not proven yet (an app that has not shown a valid code).
    Pending,
    /// Usable.
    Active,
}

impl MethodStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MethodStatus::Pending => "pending",
            MethodStatus::Active => "active",
        }
    }

    pub fn parse(s: &str) -> Option<MethodStatus> {
        [MethodStatus::Pending, MethodStatus::Active]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A method's secret, sealed with the configured key (see `crate::seal`); opaque here.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret(pub Vec<u8>);

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedSecret({} bytes)", self.0.len())
    }
}

/// What a method holds, per kind.
#[derive(Clone, Debug)]
pub enum MethodDetail {
    /// The number to call (same destination policy as a verification) and the extension
    /// dialled after answer.
    Phone {
        destination: Destination,
        extension: Option<String>,
    },
    /// The TOTP secret, sealed.
    AppCode { secret: SealedSecret },
}

impl MethodDetail {
    pub fn kind(&self) -> MethodKind {
        match self {
            MethodDetail::Phone { .. } => MethodKind::Phone,
            MethodDetail::AppCode { .. } => MethodKind::AppCode,
        }
    }
}

/// An enrolled method.
#[derive(Clone, Debug)]
pub struct Method {
    pub id: MethodId,
    pub user_id: UserId,
    pub status: MethodStatus,
    /// The user's own name for it ("office", "my phone").
    pub label: Option<String>,
    /// 0 first: a verification by user uses the first active method.
    pub position: u32,
    pub detail: MethodDetail,
    /// app_code: the last RFC 6238 time step accepted (a code is never accepted twice).
    pub last_code_step: Option<u64>,
    /// Wrong codes in a row, across verifications (reset by a right one).
    pub failed_codes: u32,
    /// No code is checked before this time (too many wrong codes).
    pub locked_until: Option<UnixMs>,
    pub created_at: UnixMs,
    pub confirmed_at: Option<UnixMs>,
}

impl Method {
    pub fn kind(&self) -> MethodKind {
        self.detail.kind()
    }

    pub fn reference(&self) -> MethodRef {
        MethodRef {
            id: self.id.clone(),
            kind: self.kind(),
        }
    }
}

/// A method as a verification records it: `{"id": "mth_…", "type": "app_code"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodRef {
    pub id: MethodId,
    #[serde(rename = "type")]
    pub kind: MethodKind,
}

/// One method tried within a verification by user. The last one is the current attempt;
/// the ones before it ended when the user switched ("use a different verification option").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodAttempt {
    pub method: MethodRef,
    pub started_at: UnixMs,
    /// Set when the attempt ended (switch or completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<UnixMs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CallResult>,
    /// app_code: wrong codes entered in this attempt.
    #[serde(default)]
    pub wrong_codes: u32,
    /// phone: the call's timeline, kept when the attempt ended by a switch (the current
    /// attempt's call is the verification's own `timeline`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineEntry>,
}

/// A new user.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub id: UserId,
    pub client: String,
    pub external_id: String,
    pub display_name: Option<String>,
    pub created_at: UnixMs,
}

/// A new method, appended after the user's others.
#[derive(Clone, Debug)]
pub struct NewMethod {
    pub id: MethodId,
    pub user_id: UserId,
    pub status: MethodStatus,
    pub label: Option<String>,
    pub detail: MethodDetail,
    pub created_at: UnixMs,
}

/// A rename or a move in the user's order.
#[derive(Clone, Debug, Default)]
pub struct MethodPatch {
    /// `Some(None)` clears the label.
    pub label: Option<Option<String>>,
    /// The new 0-based index among the user's methods (clamped to the last).
    pub position: Option<u32>,
}

/// A verification by user, before it is stored.
#[derive(Clone, Debug)]
pub struct NewUserVerification {
    pub id: VerificationId,
    pub client: String,
    pub user_id: UserId,
    /// The method of the first attempt (active, the user's).
    pub method: Method,
    pub language: String,
    pub callback_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub created_at: UnixMs,
}

/// The hosted prompt of a verification, as stored: tokens only as SHA-256 hashes.
#[derive(Clone, Debug)]
pub struct NewPrompt {
    pub verification_id: VerificationId,
    pub client: String,
    pub return_url: String,
    /// SHA-256 of the single-use token in `prompt_url`.
    pub token_hash: [u8; 32],
    pub token_expires_at: UnixMs,
}

/// A stored hosted prompt.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub verification_id: VerificationId,
    pub client: String,
    pub return_url: String,
    pub token_expires_at: UnixMs,
    pub token_used: bool,
    /// The session the token was exchanged for (hashes), and when it ends.
    pub session_hash: Option<[u8; 32]>,
    pub csrf_hash: Option<[u8; 32]>,
    pub session_expires_at: Option<UnixMs>,
}

/// A session cookie value or a CSRF token in clear, as handed to the browser once.
#[derive(Clone)]
pub struct BrowserToken(Secret);

impl BrowserToken {
    /// 256 random bits, base64url without padding.
    pub fn generate() -> BrowserToken {
        use base64::Engine as _;
        let bytes: [u8; 32] = rand::random();
        BrowserToken(Secret::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        ))
    }

    pub fn from_presented(s: &str) -> BrowserToken {
        BrowserToken(Secret::new(s))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// What the store keeps.
    pub fn hash(&self) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(self.0.expose().as_bytes()).into()
    }
}

impl fmt::Debug for BrowserToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BrowserToken([redacted])")
    }
}

/// Masks a phone number for display to whoever holds the sign-in page: `••• ••23`.
pub fn mask_phone(destination: &Destination) -> String {
    // A SIP URI's number is its user part (`sip:+14255550123@host:5060`), not the host.
    let number = match destination {
        Destination::Phone(n) => n.as_str(),
        Destination::SipUri(uri) => {
            let rest = uri.split_once(':').map_or(uri.as_str(), |(_, r)| r);
            rest.split_once('@').map_or("", |(user, _)| user)
        }
    };
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let n = digits.len();
    let tail = if n >= 2 { &digits[n - 2..] } else { "" };
    format!("\u{2022}\u{2022}\u{2022} \u{2022}\u{2022}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_refuse_other_shapes() {
        let u = UserId::generate();
        assert_eq!(UserId::parse(u.as_str()), Some(u.clone()));
        assert!(MethodId::parse(u.as_str()).is_none());
        assert!(UserId::parse("usr_ABCDEF0123456789abcdef0123456789").is_none());
        assert!(UserId::parse("usr_").is_none());
    }

    #[test]
    fn phones_mask_to_the_last_two_digits() {
        let d = Destination::Phone("+14255550123".into());
        assert_eq!(mask_phone(&d), "••• ••23");
        let s = Destination::SipUri("sip:alice45@127.0.0.1:5060".into());
        assert_eq!(mask_phone(&s), "••• ••45");
    }
}
