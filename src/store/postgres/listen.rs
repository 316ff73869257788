//! `LISTEN/NOTIFY`: the channels instances talk on, and the dedicated connection that hears
//! them.
//!
//! ```text
//!   instance A (API)                    PostgreSQL                   instance B (dialer)
//!   POST  → INSERT … NOTIFY queue  ──────────►  queue  ─────────────► claim_next
//!   GET ?wait (subscribed)  ◄─── completed ◄──  UPDATE … NOTIFY completed ◄── complete
//!   DELETE → NOTIFY hangup_<owner> ──────────►  hangup_ins_…  ───────► hang up the call
//! ```
//!
//! Payloads are checked like any input (a database user can `NOTIFY` anything): ids must
//! have the exact shape we generate, anything else is dropped.

use std::future::poll_fn;

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::task::AbortOnDropHandle;

use super::super::{ClusterEvent, InstanceId, Listener, StoreError, VerificationId};

/// A verification was queued (payload empty).
pub(super) const QUEUE: &str = "callverify_queue";
/// A verification was completed (payload: its id).
pub(super) const COMPLETED: &str = "callverify_completed";
/// A webhook was queued or released (payload empty).
pub(super) const OUTBOX: &str = "callverify_outbox";
/// Prefix of an instance's own channel: hang up a call (payload: the verification id).
pub(super) const HANGUP_PREFIX: &str = "callverify_hangup_";

/// Events buffered between the connection and the consumer before they are dropped (and a
/// [`ClusterEvent::Lagged`] tells the consumer to re-read the store).
const BUFFER: usize = 1024;

/// The hang-up channel of `instance` (an identifier of our own making: `ins_` and hex).
pub(super) fn hangup_channel(instance: &InstanceId) -> String {
    format!("{HANGUP_PREFIX}{instance}")
}

/// What a notification means to `instance`; `None`: not ours, or a payload we did not write.
pub(super) fn event(channel: &str, payload: &str, hangup: &str) -> Option<ClusterEvent> {
    match channel {
        QUEUE => Some(ClusterEvent::Queued),
        OUTBOX => Some(ClusterEvent::OutboxQueued),
        COMPLETED => VerificationId::parse(payload).map(ClusterEvent::Completed),
        c if c == hangup => VerificationId::parse(payload).map(ClusterEvent::HangUp),
        _ => None,
    }
}

/// Connects, subscribes to the channels of `instance`, and returns the listener.
pub(super) async fn listen(
    pg: &tokio_postgres::Config,
    instance: &InstanceId,
) -> Result<Listener, StoreError> {
    let (client, mut connection) = pg.connect(tokio_postgres::NoTls).await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let hangup = hangup_channel(instance);
    let channel = hangup.clone();
    // Drives the connection (the client's queries too) and forwards notifications; ends
    // when the connection does, which closes the channel.
    let task = tokio::spawn(async move {
        let mut lagged = false;
        loop {
            let message = poll_fn(|cx| connection.poll_message(cx)).await;
            match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let Some(ev) = event(n.channel(), n.payload(), &channel) else {
                        tracing::debug!(channel = n.channel(), "notification ignored");
                        continue;
                    };
                    if lagged && tx.try_send(ClusterEvent::Lagged).is_ok() {
                        lagged = false;
                    }
                    match tx.try_send(ev) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => lagged = true,
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cluster listener connection lost");
                    return;
                }
                None => return,
            }
        }
    });
    let task = AbortOnDropHandle::new(task);
    client
        .batch_execute(&format!(
            "LISTEN {QUEUE}; LISTEN {COMPLETED}; LISTEN {OUTBOX}; LISTEN \"{hangup}\""
        ))
        .await?;
    Ok(Listener::new(rx, Box::new((client, task))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_checked_and_channels_are_ours() {
        let me = InstanceId::from_stored("ins_0123456789abcdef".into());
        let hangup = hangup_channel(&me);
        let id = VerificationId::generate();
        assert_eq!(event(QUEUE, "", &hangup), Some(ClusterEvent::Queued));
        assert_eq!(
            event(OUTBOX, "x", &hangup),
            Some(ClusterEvent::OutboxQueued)
        );
        assert_eq!(
            event(COMPLETED, id.as_str(), &hangup),
            Some(ClusterEvent::Completed(id.clone()))
        );
        assert_eq!(
            event(&hangup, id.as_str(), &hangup),
            Some(ClusterEvent::HangUp(id.clone()))
        );
        assert_eq!(event(COMPLETED, "vrf_nothex", &hangup), None);
        assert_eq!(event(COMPLETED, &"x".repeat(8000), &hangup), None);
        assert_eq!(
            event(
                "callverify_hangup_ins_ffffffffffffffff",
                id.as_str(),
                &hangup
            ),
            None,
            "another instance's hang-up"
        );
    }
}
