//! The JSON of a verification: the API response and the webhook's `data`.

use flow::TimelineEntry;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::model::{UnixMs, Verification};
use crate::user::{MethodAttempt, MethodKind, MethodRef};

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
    /// `queued`, `calling`, `ringing`, `in_call`, `completed`; `awaiting_user` while a
    /// verification by user waits for its user on a method without a call (an app code).
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
    /// The destination: E.164 number (or SIP URI when allowed); for a verification by user,
    /// the number of the current phone method (null on an app code).
    #[schema(example = "+14255550123")]
    pub phone_number: Option<String>,
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
    /// A verification by user: whose (`usr_…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "usr_5b0c2e8f1a9d4c7e3b6a0f2d8c4e1a97")]
    pub user_id: Option<String>,
    /// A verification by user: the current method, and once completed the method that
    /// decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<MethodView>,
    /// A verification by user: every method tried, in order, the current one last.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptView>,
    /// With `hosted`, in the response to `POST` only: the single-use sign-in page link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_url: Option<String>,
}

/// A method as a verification names it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MethodView {
    #[schema(example = "mth_9e4b1c7a2d8f0e3b5a6c1d2e7f8a9b0c")]
    pub id: String,
    /// `phone` or `app_code`.
    #[serde(rename = "type")]
    #[schema(example = "phone")]
    pub kind: &'static str,
}

impl MethodView {
    pub fn of(m: &MethodRef) -> MethodView {
        MethodView {
            id: m.id.as_str().to_owned(),
            kind: m.kind.as_str(),
        }
    }
}

/// One method tried within a verification by user.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub method: MethodView,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// How the attempt ended: `cancelled` when the user switched to another method; the
    /// verification's result for the last one.
    pub result: Option<&'static str>,
    /// app_code: wrong codes entered in this attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrong_codes: Option<u32>,
    /// phone: the events of this attempt's call.
    #[schema(value_type = Vec<Object>)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineEntry>,
}

impl AttemptView {
    fn of(a: &MethodAttempt, v: &Verification, current: bool) -> AttemptView {
        // The current attempt's call and outcome are the verification's own.
        let (ended_at, result, timeline) = if current && a.ended_at.is_none() {
            (
                v.completed_at,
                v.result,
                if a.method.kind == MethodKind::Phone {
                    v.timeline.clone()
                } else {
                    Vec::new()
                },
            )
        } else {
            (a.ended_at, a.result, a.timeline.clone())
        };
        AttemptView {
            method: MethodView::of(&a.method),
            started_at: rfc3339(a.started_at),
            ended_at: ended_at.map(rfc3339),
            result: result.map(|r| r.as_str()),
            wrong_codes: (a.method.kind == MethodKind::AppCode).then_some(a.wrong_codes),
            timeline,
        }
    }
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
            phone_number: v.destination.as_ref().map(|d| d.expose().to_owned()),
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
            user_id: v.user_id.as_ref().map(|u| u.as_str().to_owned()),
            method: v.method.as_ref().map(MethodView::of),
            attempts: v
                .attempts
                .iter()
                .enumerate()
                .map(|(i, a)| AttemptView::of(a, v, i + 1 == v.attempts.len()))
                .collect(),
            prompt_url: None,
        }
    }
}
