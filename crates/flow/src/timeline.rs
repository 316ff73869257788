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
    /// Digest credentials were sent in answer to a 401/407 (`algorithm`: MD5, SHA-256, …).
    Authenticating { code: u16, algorithm: String },
    /// The trunk would not accept our credentials, or we could not answer its challenge:
    /// our configuration (`sip.username` / `sip.password`) is at fault.
    AuthFailed { code: u16, reason: String },
    /// No response at all to the INVITE (RFC 3261 Timer B) or the transport failed:
    /// the trunk (or the SIP URI's host) is unreachable.
    NoResponse { reason: String },
    /// The call was answered but the answer has no media we can use (no PCMU/PCMA, no
    /// address): the far end broke offer/answer; we hung up at once.
    MediaUnusable { reason: String },
    /// Media negotiated at answer.
    MediaNegotiated {
        codec: String,
        /// telephone-event payload type, when the far end accepted RFC 4733.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        telephone_event: Option<u8>,
        /// The SRTP suite protecting the media (`AES_CM_128_HMAC_SHA1_80`), when SDES was
        /// negotiated; absent for plain RTP.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        srtp: Option<String>,
    },
    /// A re-INVITE/UPDATE from the far end changed the media (hold or resume).
    MediaChanged { on_hold: bool },
    /// We sent CANCEL (ring timeout, API cancel, expiry before answer).
    CancelSent,
    /// A prompt finished playing.
    PromptFinished { prompt: String },
    /// A key press that did not count: before the prompt, within the guard time after
    /// answer, during extension dialling or after the decision, or a SIP INFO key while SIP
    /// INFO DTMF is off. `digit` is masked like [`TimelineEvent::Digit`].
    DigitIgnored {
        digit: String,
        method: String,
        reason: String,
    },
    /// The trunk target the INVITE went to failed before the phone rang (`reason`: no
    /// answer, transport error or 503) and the INVITE went to the next one (RFC 3263 §4.3).
    Rerouted {
        from: String,
        to: String,
        reason: String,
    },
    /// A call timer fired: `ring`, `response`, `inter_digit`, `challenge`.
    Timeout { timer: String },
    /// The process running the call died (crash, kill, lost host) before the call ended; the
    /// verification was completed as `failed` by a restart or a surviving instance.
    InstanceLost,
}
