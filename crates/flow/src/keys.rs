//! Matching what the callee keys in against what the verification expects (DESIGN.md "The
//! call", step 5): `#` alone (standard), PIN or challenge digits then `#`, and the fraud code
//! (default `0#`), which is checked first so that a collision always denies.

use crate::CallResult;

/// Most keys kept before `#`; a longer entry can match nothing we expect.
pub const MAX_ENTRY_KEYS: usize = 32;

/// What the callee must key in. Both strings exclude the final `#`.
#[derive(Clone, PartialEq, Eq)]
pub struct Expect {
    digits: String,
    fraud: String,
}

impl std::fmt::Debug for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The expected digits may be a PIN.
        f.debug_struct("Expect")
            .field("digits", &format_args!("[{} keys]", self.digits.len()))
            .field("fraud", &self.fraud)
            .finish()
    }
}

impl Expect {
    /// `digits`: what precedes `#` for a confirmation (empty in standard mode); `fraud_code`:
    /// the fraud code including its final `#`.
    pub fn new(digits: &str, fraud_code: &str) -> Self {
        Self {
            digits: digits.to_string(),
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
        Some(if self.keys == expect.fraud {
            CallResult::FraudReported
        } else if self.keys == expect.digits {
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

    fn run(keys: &str, expect: &Expect) -> Option<CallResult> {
        let mut e = Entry::default();
        keys.chars().find_map(|k| e.push(k, expect))
    }

    #[test]
    fn standard_pin_challenge_fraud() {
        let standard = Expect::new("", "0#");
        assert_eq!(run("#", &standard), Some(CallResult::Confirmed));
        assert_eq!(run("0#", &standard), Some(CallResult::FraudReported));
        assert_eq!(run("5#", &standard), Some(CallResult::WrongDigits));
        assert_eq!(run("5", &standard), None);
        let pin = Expect::new("1234", "0#");
        assert_eq!(run("1234#", &pin), Some(CallResult::Confirmed));
        assert_eq!(run("1243#", &pin), Some(CallResult::WrongDigits));
        assert_eq!(run("#", &pin), Some(CallResult::WrongDigits));
        assert_eq!(run("0#", &pin), Some(CallResult::FraudReported));
        // A PIN equal to the fraud code denies: fraud is checked first.
        let clash = Expect::new("0", "0#");
        assert_eq!(run("0#", &clash), Some(CallResult::FraudReported));
        let star = Expect::new("", "*9#");
        assert_eq!(run("*9#", &star), Some(CallResult::FraudReported));
    }

    #[test]
    fn abandoned_and_overlong() {
        let pin = Expect::new("1234", "0#");
        let mut e = Entry::default();
        assert_eq!(e.abandoned(), CallResult::NoInput);
        e.push('1', &pin);
        assert_eq!(e.abandoned(), CallResult::IncompleteInput);
        let long = "1".repeat(MAX_ENTRY_KEYS + 1);
        assert_eq!(run(&long, &pin), Some(CallResult::WrongDigits));
        assert!(!format!("{pin:?}").contains("1234"));
    }
}
