//! Wrappers whose `Debug`/`Display` never show what they hold in full (STYLE.md 13).
//!
//! Passwords print as `[redacted]`; user parts that may be phone numbers print only their
//! last four characters, so logs can still tell calls apart without carrying the number.

use std::fmt;

/// A secret such as a digest password. `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it (the digest computation).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Characters of a [`UserPart`] that stay visible in logs.
const VISIBLE_TAIL_CHARS: usize = 4;

/// The user part of a SIP URI (often a phone number). `Debug`/`Display` show `…` and the
/// last four characters only, e.g. `…0123` for `+14255550123`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserPart(String);

impl UserPart {
    /// Wraps a user part.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The full user part, for building messages (never for logs).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chars: Vec<char> = self.0.chars().collect();
        let tail = chars.len().saturating_sub(VISIBLE_TAIL_CHARS);
        f.write_str("…")?;
        for c in &chars[tail..] {
            fmt::Write::write_char(f, *c)?;
        }
        Ok(())
    }
}

impl fmt::Debug for UserPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserPart({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("s3cret");
        assert_eq!(format!("{s}"), "[redacted]");
        assert!(!format!("{s:?}").contains("s3cret"));
        assert_eq!(s.expose(), "s3cret");
    }

    #[test]
    fn user_part_shows_last_four() {
        let u = UserPart::new("+14255550123");
        assert_eq!(u.to_string(), "…0123");
        assert_eq!(format!("{u:?}"), "UserPart(…0123)");
        assert_eq!(UserPart::new("12").to_string(), "…12");
    }
}
