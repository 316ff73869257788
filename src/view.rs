//! The JSON of a verification: the API response and the webhook's `data`.

use flow::TimelineEntry;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::model::{UnixMs, Verification};

/// RFC 3339 UTC time of a stored timestamp (`1970-01-01T00:00:00Z` if out of range).
pub fn rfc3339(ms: UnixMs) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// A verification.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationView {
    #[schema(example = "vrf_3f2a9c0e4b1d8a7c6e5f4a3b2c1d0e9f")]
    pub id: String,
    /// `queued`, `calling`, `ringing`, `in_call`, `completed`.
    #[schema(example = "completed")]
    pub status: &'static str,
    /// What happened on the call, once completed (DESIGN.md "Outcome vocabulary"):
    /// `confirmed`, `fraud_reported`, `wrong_digits`, `no_input`, `incomplete_input`,
    /// `hung_up`, `no_answer`, `busy`, `rejected`, `unreachable`, `cancelled`, `expired`,
    /// `failed`.
    #[schema(example = "confirmed")]
    pub result: Option<&'static str>,
    /// The decision: true only for a completed, confirmed call.
    pub approved: bool,
    /// The destination as given: E.164 number (or SIP URI when allowed).
    #[schema(example = "+14255550123")]
    pub phone_number: String,
    pub extension: Option<String>,
    /// `standard`, `pin` or `challenge`.
    #[schema(example = "standard")]
    pub mode: &'static str,
    #[schema(example = "en")]
    pub language: String,
    pub callback_url: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// How the deciding key press arrived: `inband`, `rfc4733`, `sip_info`.
    pub dtmf_method: Option<&'static str>,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    /// Wall clock of the timeline's zero: when the call was handed to the trunk.
    pub call_started_at: Option<String>,
    pub completed_at: Option<String>,
    /// Events of the call: `{"at_ms": 0, "event": "invite_sent"}`, … (`at_ms` since
    /// `call_started_at`).
    #[schema(value_type = Vec<Object>)]
    pub timeline: Vec<TimelineEntry>,
    /// Challenge mode, in the response to `POST` only: the digits to show on the login page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "482913")]
    pub challenge: Option<String>,
}

fn mode_name(mode: flow::Mode) -> &'static str {
    match mode {
        flow::Mode::Standard => "standard",
        flow::Mode::Pin => "pin",
        flow::Mode::Challenge => "challenge",
    }
}

impl VerificationView {
    /// The view of a record. `challenge` stays `None`: only the `POST` response fills it in,
    /// with digits derived again from the store key (they are not stored).
    pub fn from_record(v: &Verification) -> VerificationView {
        VerificationView {
            id: v.id.as_str().to_owned(),
            status: v.status.as_str(),
            result: v.result.map(|r| r.as_str()),
            approved: v.approved(),
            phone_number: v.destination.expose().to_owned(),
            extension: v.extension.clone(),
            mode: mode_name(v.mode),
            language: v.language.clone(),
            callback_url: v.callback_url.clone(),
            metadata: v.metadata.clone(),
            dtmf_method: v.dtmf_method.map(|m| m.as_str()),
            created_at: rfc3339(v.created_at),
            updated_at: rfc3339(v.updated_at),
            call_started_at: v.call_started_at.map(rfc3339),
            completed_at: v.completed_at.map(rfc3339),
            timeline: v.timeline.clone(),
            challenge: None,
        }
    }
}
