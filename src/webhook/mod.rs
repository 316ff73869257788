//! Webhooks (DESIGN.md "Webhooks"): Standard Webhooks signing and the outbox worker.

use std::sync::Arc;

use tokio::sync::Notify;

mod address;
mod deliver;
pub mod sign;

pub use deliver::{Delivery, GuardedResolver, OutboxWorker, WebhookError, backoff, is_public};

use crate::model::Verification;

/// The webhook event type of a completed verification.
pub const EVENT_COMPLETED: &str = "verification.completed";

/// The body of the webhook for a completed verification (Standard Webhooks payload shape:
/// `type`, `timestamp`, `data`), `data` being the same JSON as `GET /v1/verifications/{id}`.
pub fn payload(v: &Verification) -> String {
    let view = crate::view::VerificationView::from_record(v);
    let body = serde_json::json!({
        "type": EVENT_COMPLETED,
        "timestamp": crate::view::rfc3339(v.completed_at.unwrap_or(v.updated_at)),
        "data": view,
    });
    body.to_string()
}

/// Wakes the outbox worker when a webhook is queued.
#[derive(Clone, Debug, Default)]
pub struct OutboxWake(Arc<Notify>);

impl OutboxWake {
    pub fn new() -> OutboxWake {
        OutboxWake::default()
    }

    pub fn wake(&self) {
        self.0.notify_one();
    }

    pub async fn woken(&self) {
        self.0.notified().await
    }
}
