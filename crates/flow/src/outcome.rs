//! The outcome vocabulary (DESIGN.md "Outcome vocabulary"): what happened on the call
//! (`result`) and the decision (`approved`) are two fields, never one.

use serde::{Deserialize, Serialize};

/// What happened on the call.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallResult {
    /// Answered, expected digits then `#`.
    Confirmed,
    /// Answered, fraud code (default `0#`) entered.
    FraudReported,
    /// Answered, PIN/challenge digits did not match.
    WrongDigits,
    /// Answered, no key before the response timeout (often voicemail).
    NoInput,
    /// Answered, digits but never `#`.
    IncompleteInput,
    /// The callee hung up before confirming.
    HungUp,
    /// Ring timeout, or 408/480.
    NoAnswer,
    /// 486 / 600.
    Busy,
    /// 603 or other final refusal.
    Rejected,
    /// 404/484/5xx, transport failure, trunk unreachable.
    Unreachable,
    /// Cancelled through the API.
    Cancelled,
    /// The whole challenge ran out of time.
    Expired,
    /// The user refused in the authenticator app (push method: Deny).
    Denied,
    /// Internal error (should never be seen).
    Failed,
}

impl CallResult {
    /// Every result, in the order of the DESIGN.md table.
    pub const ALL: [CallResult; 14] = [
        CallResult::Confirmed,
        CallResult::FraudReported,
        CallResult::WrongDigits,
        CallResult::NoInput,
        CallResult::IncompleteInput,
        CallResult::HungUp,
        CallResult::NoAnswer,
        CallResult::Busy,
        CallResult::Rejected,
        CallResult::Unreachable,
        CallResult::Cancelled,
        CallResult::Expired,
        CallResult::Denied,
        CallResult::Failed,
    ];

    /// The decision: only `confirmed` approves a sign-in.
    pub fn approved(self) -> bool {
        matches!(self, CallResult::Confirmed)
    }

    /// The wire name (`confirmed`, `fraud_reported`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CallResult::Confirmed => "confirmed",
            CallResult::FraudReported => "fraud_reported",
            CallResult::WrongDigits => "wrong_digits",
            CallResult::NoInput => "no_input",
            CallResult::IncompleteInput => "incomplete_input",
            CallResult::HungUp => "hung_up",
            CallResult::NoAnswer => "no_answer",
            CallResult::Busy => "busy",
            CallResult::Rejected => "rejected",
            CallResult::Unreachable => "unreachable",
            CallResult::Cancelled => "cancelled",
            CallResult::Expired => "expired",
            CallResult::Denied => "denied",
            CallResult::Failed => "failed",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<CallResult> {
        CallResult::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for CallResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the callee is asked to enter.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Press `#`.
    #[default]
    Standard,
    /// Enter the user's PIN, then `#`.
    Pin,
    /// Enter the digits shown on the login page, then `#`.
    Challenge,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_confirmed_approves() {
        for r in CallResult::ALL {
            assert_eq!(r.approved(), r == CallResult::Confirmed, "{r}");
            assert_eq!(CallResult::parse(r.as_str()), Some(r));
        }
    }
}
