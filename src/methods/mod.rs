//! Sign-in methods a user enrols (DESIGN.md "Sign-in methods"), one file per kind: `phone`
//! (a call; the dialer does the work) and `app_code` ([`totp`]). Each enrolment is a ceremony
//! type: the state the caller keeps and hands back, so a step cannot be skipped or replayed.
//! `push` (issue 12) joins as `push.rs` with its own ceremony.

pub mod phone;
pub mod totp;
