//! The audit timeline of a call: timestamped events from INVITE to the outcome.
//!
//! Times are milliseconds since the call was started (the first INVITE); the service adds the
//! wall-clock start. The service stores the timeline as JSON, so variants can be added freely.

use serde::{Deserialize, Serialize};

/// One timestamped event of a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Milliseconds since the call started.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: TimelineEvent,
}

/// What happened on a call, for audit. Never carries secrets (PIN digits are masked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TimelineEvent {
    /// The INVITE went out.
    InviteSent,
    /// A provisional response (100, 180, 183).
    Provisional { code: u16 },
    /// The trunk asked for digest credentials (401/407).
    AuthChallenge { code: u16 },
    /// The call was answered (200 to the INVITE).
    Answered,
    /// A final non-2xx response to the INVITE.
    Rejected { code: u16 },
    /// Extension digits were sent after answer.
    ExtensionSent,
    /// A prompt started playing.
    PromptStarted { prompt: String },
    /// A key press was received; `digit` is masked (`*`) for PIN digits.
    Digit { digit: String, method: String },
    /// We hung up.
    ByeSent,
    /// The far end hung up.
    ByeReceived,
    /// The call ended with this result.
    Outcome { result: crate::CallResult },
}
