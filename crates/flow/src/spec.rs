//! What a verification call is asked to do: whom to call, how, and the rules of the call.

use std::net::SocketAddr;
use std::time::Duration;

use sip::auth::Credentials;
use sip::{Transport, Uri};

use crate::Mode;
use crate::keys::SealedDigits;

/// DESIGN.md step 5: ring timeout, then CANCEL (`no_answer`).
pub const DEFAULT_RING_TIMEOUT: Duration = Duration::from_secs(30);
/// DESIGN.md step 5: wait for a first key after the prompt ended, before a replay.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// DESIGN.md step 5: longest pause between two keys before the entry counts as abandoned.
pub const DEFAULT_INTER_DIGIT_TIMEOUT: Duration = Duration::from_secs(3);
/// DESIGN.md step 5: the whole call, INVITE to outcome (`expired`).
pub const DEFAULT_CHALLENGE_TIMEOUT: Duration = Duration::from_secs(180);
/// DESIGN.md step 5: prompt replays when nothing is pressed.
pub const DEFAULT_PROMPT_REPLAYS: u32 = 1;
/// DESIGN.md outcome table: the default fraud code.
pub const DEFAULT_FRAUD_CODE: &str = "0#";
/// Keys in the first moments after answer do not count (DESIGN.md step 5): a key already
/// held when the phone was picked up, a voicemail beep, or tones from an auto-attendant.
/// One second is long enough for a pick-up click and short enough that nobody presses `#`
/// that fast after hearing the greeting start.
pub const DEFAULT_ANSWER_GUARD: Duration = Duration::from_secs(1);
/// Longest a closing prompt (thanks, goodbye) may play before we hang up anyway.
pub const CLOSING_PROMPT_LIMIT: Duration = Duration::from_secs(15);
/// After BYE/CANCEL, how long the outcome waits for SIP to finish before it is reported
/// anyway (the user agent keeps retransmitting in the background). 4 s covers three BYE
/// retransmissions at the default T1 (0.5 + 1 + 2 s, RFC 3261 §17.1.2.2).
pub const HANGUP_WAIT: Duration = Duration::from_secs(4);

/// Timeouts and codes of a call (`[call]` in the service's configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// INVITE to answer.
    pub ring_timeout: Duration,
    /// End of the prompt to the first key (then a replay, or `no_input`).
    pub response_timeout: Duration,
    /// Between two keys (then `incomplete_input`).
    pub inter_digit_timeout: Duration,
    /// The whole call (then `expired`).
    pub challenge_timeout: Duration,
    /// Prompt replays when nothing is pressed.
    pub prompt_replays: u32,
    /// Digits (or `*`) then `#` that report fraud.
    pub fraud_code: String,
    /// Keys within this time after answer are ignored.
    pub answer_guard: Duration,
    /// Whether keys by SIP INFO count.
    pub sip_info_dtmf: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            ring_timeout: DEFAULT_RING_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            inter_digit_timeout: DEFAULT_INTER_DIGIT_TIMEOUT,
            challenge_timeout: DEFAULT_CHALLENGE_TIMEOUT,
            prompt_replays: DEFAULT_PROMPT_REPLAYS,
            fraud_code: DEFAULT_FRAUD_CODE.to_string(),
            answer_guard: DEFAULT_ANSWER_GUARD,
            sip_info_dtmf: false,
        }
    }
}

/// One verification call to place.
#[derive(Clone, Debug)]
pub struct CallSpec {
    /// Request-URI and To (`sip:+14255550123@trunk.example.net`).
    pub target: Uri,
    /// From (`sip:+14255550100@trunk.example.net`).
    pub from: Uri,
    /// Optional From display name.
    pub display_name: Option<String>,
    /// Trunk or proxy address the INVITE goes to (resolved by the runtime). Responses count
    /// only from here.
    pub next_hop: SocketAddr,
    /// Other addresses the call's in-dialog requests may come from: every address the
    /// trunk's host resolves to, at its port (`next_hop` always counts).
    pub peers: Vec<SocketAddr>,
    /// Where the INVITE goes next, in order, when `next_hop` fails before the phone rings
    /// (RFC 3263 §4.3: the trunk's other SRV targets and addresses). Responses count only
    /// from the target tried at the time.
    pub alternates: Vec<SocketAddr>,
    /// Transport to the next hop.
    pub transport: Transport,
    /// Our RTP address (advertised in the SDP offer).
    pub local_rtp: SocketAddr,
    /// Digest credentials for 401/407.
    pub credentials: Option<Credentials>,
    /// What the callee must key in.
    pub mode: Mode,
    /// PIN (pin mode) or challenge digits (challenge mode), without the final `#`, sealed
    /// (never in clear: see [`crate::keys`]).
    pub expected_digits: Option<SealedDigits>,
    /// Digits, `*`, `#` and `,` (one second pause) sent after answer.
    pub extension: Option<String>,
    /// Prompt language.
    pub language: String,
    /// Timeouts and codes.
    pub rules: Rules,
    /// SRTP (`media.srtp`) with our keys; None: plain RTP.
    pub srtp: Option<crate::Srtp>,
}

/// The call cannot be placed as asked: the caller of the flow (API request or our
/// configuration) is at fault, not the network or the callee.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Pin or challenge mode without digits to expect.
    #[error("{0:?} mode needs the expected digits")]
    MissingDigits(Mode),
    /// Expected digits must be 0-9 only, at least one.
    #[error("the expected digits must be 0-9 only, at least one")]
    InvalidDigits,
    /// The extension has a character other than `0-9 * # A-D ,`.
    #[error("the extension may only hold 0-9, *, #, A-D and `,` (pause)")]
    InvalidExtension,
    /// The fraud code must be digits or `*`, then `#`.
    #[error("the fraud code must be digits or `*`, then `#` (e.g. `0#`)")]
    InvalidFraudCode,
    /// `media.srtp = "require"` over UDP or TCP: SDES keys in clear SIP protect nothing, so
    /// none are sent and the call is not placed.
    #[error("media.srtp = \"require\" needs SIP over TLS (sips: or ;transport=tls), not {}", .0.via_token())]
    SrtpNeedsTls(Transport),
}

impl CallSpec {
    /// Checks what the flow relies on; returns the sealed digits that confirm (before `#`),
    /// `None` in standard mode.
    pub(crate) fn validate(&self) -> Result<Option<SealedDigits>, SpecError> {
        let digits = match self.mode {
            Mode::Standard => None,
            Mode::Pin | Mode::Challenge => Some(
                self.expected_digits
                    .clone()
                    .ok_or(SpecError::MissingDigits(self.mode))?,
            ),
        };
        if let Some(ext) = &self.extension
            && !ext
                .chars()
                .all(|c| c == ',' || dtmf::Digit::from_char(c).is_some())
        {
            return Err(SpecError::InvalidExtension);
        }
        if let Some(srtp) = &self.srtp
            && srtp.policy == crate::SrtpPolicy::Require
            && self.transport != Transport::Tls
        {
            return Err(SpecError::SrtpNeedsTls(self.transport));
        }
        let fraud = &self.rules.fraud_code;
        let body = fraud.strip_suffix('#').ok_or(SpecError::InvalidFraudCode)?;
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit() || b == b'*') {
            return Err(SpecError::InvalidFraudCode);
        }
        Ok(digits)
    }
}
