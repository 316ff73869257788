//! What the store keeps: verifications, their timelines, the webhook outbox.

use std::fmt;
use std::time::Duration;

use flow::keys::DigitsTag;
use flow::{CallResult, Mode, TimelineEntry};
use media::DtmfMethod;
use serde::{Deserialize, Serialize};

use crate::user::{MethodAttempt, MethodRef, UserId};

/// Milliseconds since the Unix epoch (wall clock), as stored.
pub type UnixMs = i64;

/// The wall clock now, in milliseconds since the Unix epoch.
pub fn now_ms() -> UnixMs {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `vrf_` followed by 32 lowercase hex digits (128 random bits).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VerificationId(String);

impl VerificationId {
    const PREFIX: &'static str = "vrf_";
    const HEX_LEN: usize = 32;

    /// A new random id.
    pub fn generate() -> VerificationId {
        let bytes: [u8; 16] = rand::random();
        VerificationId(format!("{}{}", Self::PREFIX, hex::encode(bytes)))
    }

    /// Accepts only the exact shape `generate` makes.
    pub fn parse(s: &str) -> Option<VerificationId> {
        let hex_part = s.strip_prefix(Self::PREFIX)?;
        (hex_part.len() == Self::HEX_LEN
            && hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| VerificationId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VerificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a verification progresses (DESIGN.md "Outcome vocabulary").
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Calling,
    Ringing,
    InCall,
    Completed,
    /// A verification by user waits for the user on a method without a call (an app code).
    AwaitingUser,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Calling,
        Status::Ringing,
        Status::InCall,
        Status::Completed,
        Status::AwaitingUser,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Calling => "calling",
            Status::Ringing => "ringing",
            Status::InCall => "in_call",
            Status::Completed => "completed",
            Status::AwaitingUser => "awaiting_user",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A call is being placed or is up.
    pub fn is_live(self) -> bool {
        matches!(self, Status::Calling | Status::Ringing | Status::InCall)
    }
}

/// The API/storage name of a DTMF method.
pub fn dtmf_method_parse(s: &str) -> Option<DtmfMethod> {
    [DtmfMethod::Inband, DtmfMethod::Rfc4733, DtmfMethod::SipInfo]
        .into_iter()
        .find(|m| m.as_str() == s)
}

/// Where a call goes: an E.164 number or (when allowed) a SIP URI.
///
/// `Debug` and `Display` redact to the last four digits (`+*******0123`,
/// `sip:****0123@host`); the full value is only read through [`Destination::expose`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// `+` and 8 to 15 digits, validated against the numbering plan.
    Phone(String),
    /// `sip:` or `sips:` URI.
    SipUri(String),
}

impl Destination {
    /// Parses what the store wrote (no policy checks: those happen at the API).
    pub fn from_stored(s: &str) -> Destination {
        if s.starts_with("sip:") || s.starts_with("sips:") {
            Destination::SipUri(s.to_owned())
        } else {
            Destination::Phone(s.to_owned())
        }
    }

    /// The full destination: for the SIP runtime and the API response, never for logs.
    pub fn expose(&self) -> &str {
        match self {
            Destination::Phone(s) | Destination::SipUri(s) => s,
        }
    }
}

/// Last four characters kept, the rest of `s` starred.
fn redact_tail(s: &str) -> String {
    let n = s.chars().count();
    s.chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < n { '*' } else { c })
        .collect()
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Phone(s) => {
                let digits = s.strip_prefix('+').unwrap_or(s);
                write!(f, "+{}", redact_tail(digits))
            }
            Destination::SipUri(s) => {
                let (scheme, rest) = s.split_once(':').unwrap_or(("sip", s));
                match rest.split_once('@') {
                    Some((user, host)) => write!(f, "{scheme}:{}@{host}", redact_tail(user)),
                    None => write!(f, "{scheme}:{rest}"),
                }
            }
        }
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Destination({self})")
    }
}

/// A verification as the API accepted it, before it is stored.
#[derive(Clone, Debug)]
pub struct NewVerification {
    pub id: VerificationId,
    /// Name of the API client that asked.
    pub client: String,
    pub destination: Destination,
    /// Digits, `*`, `#` and `,` (one-second pauses), sent after answer.
    pub extension: Option<String>,
    pub mode: Mode,
    /// The tag of the PIN (pin mode) or of the digits the service picked (challenge mode),
    /// sealed under the store secret key (`crate::secrets`): the digits themselves are never
    /// stored.
    pub digits_tag: Option<DigitsTag>,
    pub language: String,
    pub callback_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub created_at: UnixMs,
}

/// A stored verification.
#[derive(Clone, Debug)]
pub struct Verification {
    pub id: VerificationId,
    pub client: String,
    /// The number being called; `None` while a verification by user is on a method without
    /// a call (an app code).
    pub destination: Option<Destination>,
    pub extension: Option<String>,
    pub mode: Mode,
    /// Tag of the PIN or challenge digits; cleared once the verification is completed.
    pub digits_tag: Option<DigitsTag>,
    pub language: String,
    pub callback_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub status: Status,
    pub result: Option<CallResult>,
    pub dtmf_method: Option<DtmfMethod>,
    /// Times relative to `call_started_at`.
    pub timeline: Vec<TimelineEntry>,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
    /// Wall clock of the timeline's zero (the call was handed to the SIP runtime).
    pub call_started_at: Option<UnixMs>,
    pub completed_at: Option<UnixMs>,
    /// A verification by user: whose.
    pub user_id: Option<UserId>,
    /// A verification by user: the current method; once completed, the one that decided.
    pub method: Option<MethodRef>,
    /// A verification by user: every method tried, the current one last.
    pub attempts: Vec<MethodAttempt>,
}

impl Verification {
    /// The decision: only a completed, confirmed call approves.
    pub fn approved(&self) -> bool {
        self.result.is_some_and(CallResult::approved)
    }
}

/// How a call ended, as the dialer persists it.
#[derive(Clone, Debug)]
pub struct Completion {
    pub result: CallResult,
    pub dtmf_method: Option<DtmfMethod>,
    pub timeline: Vec<TimelineEntry>,
}

/// An `Idempotency-Key` with the fingerprint of the request body it came with.
#[derive(Clone, Debug)]
pub struct IdempotencyKey {
    pub key: String,
    /// SHA-256 hex of the canonical request body.
    pub fingerprint: String,
}

/// What [`crate::store::Store::create`] did.
#[derive(Clone, Debug)]
pub enum Created {
    /// Stored and queued.
    New(Verification),
    /// Same idempotency key and body as an earlier request: that verification.
    Replayed(Verification),
    /// A verification for the same client, destination and parameters was still open: it.
    Joined(Verification),
    /// Same idempotency key, different body.
    IdempotencyConflict,
    /// A cap was reached: nothing was stored or counted.
    Limited(Limited),
}

/// One cap a new verification counts against: at most `max` per `window` for `key`
/// (`number:+1…`, `client:NAME`, `country:US`, `global`). Counted in the store, so caps hold
/// across restarts and instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    pub key: String,
    /// 0: no limit (not counted).
    pub max: u32,
    pub window: Duration,
    /// Named in the 429 message (`"verifications of this phone number per hour"`).
    pub what: &'static str,
}

/// A cap was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    pub what: &'static str,
    /// When the request would next be accepted.
    pub retry_after: Duration,
}

/// What cancelling a queued verification did.
#[derive(Clone, Debug)]
pub enum Dequeued {
    /// It was queued; it is now completed as `cancelled`.
    Cancelled(Verification),
    /// It was not queued (live or completed): unchanged.
    NotQueued(Verification),
    /// No such verification.
    NotFound,
}

/// One webhook message from the outbox, leased to a worker for one attempt.
#[derive(Clone, Debug)]
pub struct OutboxMessage {
    /// The `webhook-id`: the same on every attempt.
    pub id: String,
    pub verification_id: VerificationId,
    pub client: String,
    pub url: String,
    /// The exact body, the same on every attempt.
    pub payload: String,
    pub created_at: UnixMs,
    /// Attempts made before this one.
    pub attempts: u32,
    /// [`callback_host`] of the URL: deliveries are limited per host.
    pub host: String,
}

/// The host a webhook URL delivers to, as delivery limits count it: lowercase `host:port`
/// (the scheme's default port when none is given); empty when the URL does not parse.
pub fn callback_host(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_ascii_lowercase();
            let port = u.port_or_known_default()?;
            Some(format!("{host}:{port}"))
        })
        .unwrap_or_default()
}

/// One delivery attempt, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub message_id: String,
    /// 1 for the first attempt.
    pub number: u32,
    pub at: UnixMs,
    /// HTTP status, when a response came.
    pub status_code: Option<u16>,
    /// Transport error, timeout, refused target, redirect…
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// Where a webhook message is after an attempt.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting for its next attempt.
    Pending,
    /// A 2xx came back.
    Delivered,
    /// `410 Gone`: the receiver asked us to stop.
    Gone,
    /// Retried for the whole retry window without success.
    GaveUp,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::Gone => "gone",
            OutboxState::GaveUp => "gave_up",
        }
    }

    pub fn parse(s: &str) -> Option<OutboxState> {
        [
            OutboxState::Pending,
            OutboxState::Delivered,
            OutboxState::Gone,
            OutboxState::GaveUp,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// The state of a message with its attempts (inspection, tests).
#[derive(Clone, Debug)]
pub struct OutboxEntry {
    pub id: String,
    pub verification_id: VerificationId,
    pub state: OutboxState,
    pub next_attempt_at: UnixMs,
    pub attempts: Vec<Attempt>,
}

/// What startup recovery did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Calls that were in flight when the previous process stopped, now `failed`.
    pub calls_failed: usize,
    /// Webhook messages whose lease was released so they are delivered now.
    pub webhooks_released: usize,
    /// Verifications still queued.
    pub queued: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_redact_to_the_last_four() {
        let d = Destination::Phone("+14255550123".into());
        assert_eq!(d.to_string(), "+*******0123");
        assert_eq!(format!("{d:?}"), "Destination(+*******0123)");
        let s = Destination::SipUri("sip:alice1234@example.com".into());
        assert_eq!(s.to_string(), "sip:*****1234@example.com");
        assert_eq!(d.expose(), "+14255550123");
    }

    #[test]
    fn ids_round_trip() {
        let id = VerificationId::generate();
        assert_eq!(VerificationId::parse(id.as_str()), Some(id));
        assert_eq!(VerificationId::parse("vrf_xyz"), None);
    }
}
