//! Matching what the callee keys in against what the verification expects (DESIGN.md "The
//! call", step 5): `#` alone (standard), PIN or challenge digits then `#`, and the fraud code
//! (default `0#`), which is checked first so that a collision always denies.
//!
//! The expected digits never travel or rest in clear (issue 8 item 7): the service seals them
//! with HMAC-SHA256 under a key that is not in its database ([`DigitsKey::seal`]), stores only
//! the tag, and hands the flow a [`SealedDigits`]; an entry is checked by sealing what was
//! keyed in the same way and comparing the tags in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::CallResult;
use crate::spec::SpecError;

/// Most keys kept before `#`; a longer entry can match nothing we expect.
pub const MAX_ENTRY_KEYS: usize = 32;

/// Domain separation of the digits MAC: no other MAC under the same key can collide with it.
const SEAL_DOMAIN: &[u8] = b"callverify/expected-digits/v1";

/// Length of a key and of a tag, bytes (HMAC-SHA256, RFC 2104 with SHA-256: 32-byte output).
pub const SEAL_LEN: usize = 32;

/// The key that seals expected digits (32 random bytes). `Debug` never prints it.
#[derive(Clone)]
pub struct DigitsKey([u8; SEAL_LEN]);

impl std::fmt::Debug for DigitsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigitsKey([redacted])")
    }
}

/// The HMAC-SHA256 tag of expected digits: what the store keeps instead of them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DigitsTag([u8; SEAL_LEN]);

impl std::fmt::Debug for DigitsTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the digits, but nothing a log needs either.
        f.write_str("DigitsTag(..)")
    }
}

impl DigitsTag {
    /// The tag's bytes (for storage).
    pub fn to_bytes(self) -> [u8; SEAL_LEN] {
        self.0
    }

    /// A stored tag.
    pub fn from_bytes(bytes: [u8; SEAL_LEN]) -> Self {
        Self(bytes)
    }
}

impl DigitsKey {
    /// A key from its bytes (the service derives it from its store secret key).
    pub fn new(bytes: [u8; SEAL_LEN]) -> Self {
        Self(bytes)
    }

    fn mac(&self, context: &[u8], digits: &str) -> [u8; SEAL_LEN] {
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC-SHA256 takes keys of any length");
        mac.update(SEAL_DOMAIN);
        // Length-prefixed, so no (context, digits) pair reads as another.
        mac.update(&(context.len() as u64).to_be_bytes());
        mac.update(context);
        mac.update(digits.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Seals `digits` (0-9 only, at least one) for `context` (which verification they belong
    /// to, as the service names it; not secret).
    pub fn seal(&self, context: &[u8], digits: &str) -> Result<DigitsTag, SpecError> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SpecError::InvalidDigits);
        }
        Ok(DigitsTag(self.mac(context, digits)))
    }

    /// What the flow needs to check an entry against a stored `tag`.
    pub fn sealed(&self, context: &[u8], tag: DigitsTag) -> SealedDigits {
        SealedDigits {
            key: self.clone(),
            context: context.to_vec(),
            tag,
        }
    }

    /// [`DigitsKey::seal`] then [`DigitsKey::sealed`]: digits the flow can check without
    /// holding them.
    pub fn seal_digits(&self, context: &[u8], digits: &str) -> Result<SealedDigits, SpecError> {
        Ok(self.sealed(context, self.seal(context, digits)?))
    }
}

/// Expected digits as the flow holds them: a tag and the key to check an entry against it.
#[derive(Clone)]
pub struct SealedDigits {
    key: DigitsKey,
    context: Vec<u8>,
    tag: DigitsTag,
}

impl std::fmt::Debug for SealedDigits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedDigits([redacted])")
    }
}

impl SealedDigits {
    /// Whether `entered` (the keys before `#`) are the expected digits. Constant time in the
    /// tag comparison; the MAC itself does not depend on the expected digits.
    pub fn matches(&self, entered: &str) -> bool {
        let mac = self.key.mac(&self.context, entered);
        bool::from(mac.ct_eq(&self.tag.0))
    }
}

/// What the callee must key in. The fraud code excludes the final `#`.
#[derive(Clone)]
pub struct Expect {
    /// `None`: standard mode (`#` alone confirms).
    digits: Option<SealedDigits>,
    fraud: String,
}

impl std::fmt::Debug for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expect")
            .field("digits", &self.digits.as_ref().map(|_| "[sealed]"))
            .field("fraud", &self.fraud)
            .finish()
    }
}

impl Expect {
    /// `digits`: what must precede `#` for a confirmation (`None` in standard mode);
    /// `fraud_code`: the fraud code including its final `#`.
    pub fn new(digits: Option<SealedDigits>, fraud_code: &str) -> Self {
        Self {
            digits,
            fraud: fraud_code
                .strip_suffix('#')
                .unwrap_or(fraud_code)
                .to_string(),
        }
    }
}

/// The keys entered so far (before `#`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Entry {
    keys: String,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry([{} keys])", self.keys.len())
    }
}

impl Entry {
    /// Whether nothing has been keyed in yet.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds a key; returns the decision if this key settles the call.
    pub fn push(&mut self, key: char, expect: &Expect) -> Option<CallResult> {
        if key != '#' {
            if self.keys.len() >= MAX_ENTRY_KEYS {
                return Some(CallResult::WrongDigits);
            }
            self.keys.push(key);
            return None;
        }
        let confirmed = match &expect.digits {
            None => self.keys.is_empty(),
            Some(sealed) => sealed.matches(&self.keys),
        };
        Some(if self.keys == expect.fraud {
            CallResult::FraudReported
        } else if confirmed {
            CallResult::Confirmed
        } else {
            CallResult::WrongDigits
        })
    }

    /// The decision when the callee stops keying in before `#`.
    pub fn abandoned(&self) -> CallResult {
        if self.keys.is_empty() {
            CallResult::NoInput
        } else {
            CallResult::IncompleteInput
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; SEAL_LEN] = [7; SEAL_LEN];

    fn sealed(digits: &str) -> Option<SealedDigits> {
        Some(DigitsKey::new(KEY).seal_digits(b"vrf_1", digits).unwrap())
    }

    fn run(keys: &str, expect: &Expect) -> Option<CallResult> {
        let mut e = Entry::default();
        keys.chars().find_map(|k| e.push(k, expect))
    }

    #[test]
    fn standard_pin_challenge_fraud() {
        let standard = Expect::new(None, "0#");
        assert_eq!(run("#", &standard), Some(CallResult::Confirmed));
        assert_eq!(run("0#", &standard), Some(CallResult::FraudReported));
        assert_eq!(run("5#", &standard), Some(CallResult::WrongDigits));
        assert_eq!(run("5", &standard), None);
        let pin = Expect::new(sealed("1234"), "0#");
        assert_eq!(run("1234#", &pin), Some(CallResult::Confirmed));
        assert_eq!(run("1243#", &pin), Some(CallResult::WrongDigits));
        assert_eq!(run("#", &pin), Some(CallResult::WrongDigits));
        assert_eq!(run("0#", &pin), Some(CallResult::FraudReported));
        // A PIN equal to the fraud code denies: fraud is checked first.
        let clash = Expect::new(sealed("0"), "0#");
        assert_eq!(run("0#", &clash), Some(CallResult::FraudReported));
        let star = Expect::new(None, "*9#");
        assert_eq!(run("*9#", &star), Some(CallResult::FraudReported));
    }

    #[test]
    fn abandoned_and_overlong() {
        let pin = Expect::new(sealed("1234"), "0#");
        let mut e = Entry::default();
        assert_eq!(e.abandoned(), CallResult::NoInput);
        e.push('1', &pin);
        assert_eq!(e.abandoned(), CallResult::IncompleteInput);
        let long = "1".repeat(MAX_ENTRY_KEYS + 1);
        assert_eq!(run(&long, &pin), Some(CallResult::WrongDigits));
        assert!(!format!("{pin:?}").contains("1234"));
    }

    #[test]
    fn seals_are_keyed_bound_to_their_context_and_checked() {
        let key = DigitsKey::new(KEY);
        // HMAC-SHA256(key, domain || u64be(len(context)) || context || digits), as computed
        // independently with Python's hmac module.
        let tag = key.seal(b"vrf_1", "1234").unwrap();
        assert_eq!(
            tag.to_bytes(),
            [
                0x2e, 0x8c, 0x23, 0xd5, 0x84, 0xa2, 0xb0, 0x4c, 0x08, 0x8f, 0xd8, 0x27, 0xa7, 0x15,
                0xa5, 0x15, 0xa8, 0x57, 0x2a, 0x6c, 0xbe, 0xbe, 0x59, 0x55, 0xb1, 0x6d, 0x62, 0x10,
                0x3b, 0x92, 0xe3, 0x3b
            ]
        );
        assert!(key.sealed(b"vrf_1", tag).matches("1234"));
        assert!(
            !key.sealed(b"vrf_2", tag).matches("1234"),
            "bound to its context"
        );
        assert!(
            !DigitsKey::new([8; SEAL_LEN])
                .sealed(b"vrf_1", tag)
                .matches("1234")
        );
        assert!(!key.sealed(b"vrf_1", tag).matches("12345"));
        assert!(!key.sealed(b"vrf_1", tag).matches(""));
        assert_eq!(key.seal(b"x", ""), Err(SpecError::InvalidDigits));
        assert_eq!(key.seal(b"x", "12a4"), Err(SpecError::InvalidDigits));
        assert!(!format!("{key:?}{tag:?}{:?}", key.sealed(b"x", tag)).contains("07"));
    }
}
