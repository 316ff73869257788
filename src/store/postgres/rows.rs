//! Rows to records: every column read with its type checked, every enum parsed; a value the
//! code did not write is reported as corrupt, never trusted.

use flow::{CallResult, Mode};
use tokio_postgres::Row;

use super::super::{
    Destination, OutboxMessage, Status, StoreError, Verification, VerificationId, dtmf_method_parse,
};
use flow::keys::{DigitsTag, SEAL_LEN};

use crate::user::{MethodId, MethodKind, MethodRef, UserId};

/// The columns of a verification, in the order [`verification`] reads them.
pub(super) const COLUMNS: &str = "id, client, destination, extension, mode, digits_tag, \
    language, callback_url, metadata, status, result, dtmf_method, timeline, created_at, \
    updated_at, call_started_at, completed_at, user_id, method_id, method_type, attempts";

/// The columns of an outbox message, in the order [`outbox_message`] reads them.
pub(super) const OUTBOX_COLUMNS: &str =
    "id, verification_id, client, url, payload, created_at, attempts, host";

pub(super) fn mode_str(mode: Mode) -> &'static str {
    match mode {
        Mode::Standard => "standard",
        Mode::Pin => "pin",
        Mode::Challenge => "challenge",
    }
}

/// A digits tag as stored (hex, the same as the SQLite store).
pub(super) fn tag_hex(tag: Option<&DigitsTag>) -> Option<String> {
    tag.map(|t| hex::encode(t.to_bytes()))
}

fn tag_parse(text: &str) -> Option<DigitsTag> {
    let mut out = [0u8; SEAL_LEN];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(DigitsTag::from_bytes(out))
}

fn mode_parse(s: &str) -> Option<Mode> {
    [Mode::Standard, Mode::Pin, Mode::Challenge]
        .into_iter()
        .find(|m| mode_str(*m) == s)
}

pub(super) fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

/// A verification from a row selected with [`COLUMNS`].
pub(super) fn verification(row: &Row) -> Result<Verification, StoreError> {
    let id: String = row.try_get(0)?;
    let mode: String = row.try_get(4)?;
    let status: String = row.try_get(9)?;
    let result: Option<String> = row.try_get(10)?;
    let dtmf_method: Option<String> = row.try_get(11)?;
    let timeline: String = row.try_get(12)?;
    let metadata: Option<String> = row.try_get(8)?;
    let tag: Option<String> = row.try_get(5)?;
    let destination: Option<String> = row.try_get(2)?;
    let user_id: Option<String> = row.try_get(17)?;
    let method_id: Option<String> = row.try_get(18)?;
    let method_type: Option<String> = row.try_get(19)?;
    let attempts: Option<String> = row.try_get(20)?;
    Ok(Verification {
        id: VerificationId::parse(&id).ok_or_else(|| corrupt("id", &id))?,
        client: row.try_get(1)?,
        destination: destination.as_deref().map(Destination::from_stored),
        user_id: match user_id {
            Some(s) => Some(UserId::parse(&s).ok_or_else(|| corrupt("user_id", &s))?),
            None => None,
        },
        method: match (method_id, method_type) {
            (Some(id), Some(kind)) => Some(MethodRef {
                id: MethodId::parse(&id).ok_or_else(|| corrupt("method_id", &id))?,
                kind: MethodKind::parse(&kind).ok_or_else(|| corrupt("method_type", &kind))?,
            }),
            _ => None,
        },
        attempts: match attempts {
            Some(s) => serde_json::from_str(&s).map_err(|e| corrupt("attempts", e))?,
            None => Vec::new(),
        },
        extension: row.try_get(3)?,
        mode: mode_parse(&mode).ok_or_else(|| corrupt("mode", &mode))?,
        digits_tag: match tag {
            Some(t) => Some(tag_parse(&t).ok_or_else(|| corrupt("digits_tag", "not a tag"))?),
            None => None,
        },
        language: row.try_get(6)?,
        callback_url: row.try_get(7)?,
        metadata: match metadata {
            Some(s) => Some(serde_json::from_str(&s).map_err(|e| corrupt("metadata", e))?),
            None => None,
        },
        status: Status::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        result: match result {
            Some(s) => Some(CallResult::parse(&s).ok_or_else(|| corrupt("result", &s))?),
            None => None,
        },
        dtmf_method: match dtmf_method {
            Some(s) => Some(dtmf_method_parse(&s).ok_or_else(|| corrupt("dtmf_method", &s))?),
            None => None,
        },
        timeline: serde_json::from_str(&timeline).map_err(|e| corrupt("timeline", e))?,
        created_at: row.try_get(13)?,
        updated_at: row.try_get(14)?,
        call_started_at: row.try_get(15)?,
        completed_at: row.try_get(16)?,
    })
}

/// An outbox message from a row selected with [`OUTBOX_COLUMNS`].
pub(super) fn outbox_message(row: &Row) -> Result<OutboxMessage, StoreError> {
    let vid: String = row.try_get(1)?;
    let attempts: i64 = row.try_get(6)?;
    Ok(OutboxMessage {
        id: row.try_get(0)?,
        verification_id: VerificationId::parse(&vid)
            .ok_or_else(|| corrupt("outbox verification id", &vid))?,
        client: row.try_get(2)?,
        url: row.try_get(3)?,
        payload: row.try_get(4)?,
        created_at: row.try_get(5)?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        host: row.try_get(7)?,
    })
}
