//! Several instances on one shared store: this instance's heartbeat, the take-over of dead
//! instances, and the notifications from the others relayed into this process's handles.
//!
//! Every `cluster.heartbeat_secs` the instance records that it is alive. An instance silent
//! for `cluster.dead_after_secs` is dead (kill -9, lost host): the first survivor to look
//! completes its calls in progress as `failed` with `instance_lost` in the timeline (their
//! webhooks are queued), releases its webhook leases and forgets it; its queued
//! verifications were never its own (any dialer claims them). A survivor judges others only
//! after it has itself been beating for a whole `dead_after` window, so a database restart
//! (everyone's heartbeat late at once) is not mistaken for deaths.
//!
//! The listener turns `LISTEN/NOTIFY` into in-process wake-ups: queued work wakes the
//! dialer, a completion anywhere wakes long-polls here, a queued webhook wakes the outbox
//! worker, a hang-up addressed to this instance hangs up its call. When the listener
//! reconnects it catches up on completions it may have missed.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::dialer::DialerHandle;
use crate::metrics::Metrics;
use crate::store::{Beat, ClusterEvent, Completions, SharedStore, Store, UnixMs, now_ms};
use crate::webhook::OutboxWake;

/// First pause before reconnecting the listener; doubled up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How far back a reconnected listener re-announces completions, in milliseconds: a
/// connection may die some time before we notice (TCP keepalive idle is 30 s).
const CATCH_UP_MARGIN_MS: UnixMs = 60_000;

/// The cluster side of one instance (only for a shared store).
pub struct Cluster {
    store: Arc<dyn Store>,
    config: ClusterConfig,
    dialer: DialerHandle,
    completions: Completions,
    outbox: OutboxWake,
    metrics: Arc<Metrics>,
}

impl Cluster {
    /// `None` when `store` is not shared (one process owns it: nothing to coordinate).
    pub fn new(
        store: Arc<dyn Store>,
        config: ClusterConfig,
        dialer: DialerHandle,
        completions: Completions,
        outbox: OutboxWake,
        metrics: Arc<Metrics>,
    ) -> Option<Cluster> {
        store.shared()?;
        Some(Cluster {
            store,
            config,
            dialer,
            completions,
            outbox,
            metrics,
        })
    }

    fn shared(&self) -> &dyn SharedStore {
        // Checked in `new`: a store does not stop being shared.
        self.store
            .shared()
            .expect("Cluster::new only accepts a shared store")
    }

    /// Heartbeats, takes over dead instances and relays notifications until `shutdown`;
    /// then leaves the cluster (this instance's webhook leases are released).
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::join!(self.beat(&shutdown), self.relay(&shutdown));
        if let Err(e) = self.shared().leave(now_ms()).await {
            tracing::warn!(error = %e, "could not leave the cluster; the others will take over");
        }
    }

    async fn beat(&self, shutdown: &CancellationToken) {
        let interval = Duration::from_secs(self.config.heartbeat_secs);
        let dead_after = Duration::from_secs(self.config.dead_after_secs);
        let dead_after_ms = i64::try_from(dead_after.as_millis()).unwrap_or(i64::MAX);
        // Since when our own heartbeats have been succeeding without a gap.
        let mut beating_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match self.shared().heartbeat(now_ms()).await {
                Ok(Beat::Alive) => {
                    beating_since.get_or_insert_with(Instant::now);
                }
                Ok(Beat::Rejoined) => {
                    // A survivor found us silent and failed our calls: their outcomes can no
                    // longer be recorded, so hang them up; new calls are ours again.
                    tracing::error!(
                        instance = %self.shared().instance(),
                        "this instance had been declared dead (silent too long) and its calls \
                         were failed by another instance: hanging them up, rejoining"
                    );
                    self.dialer.hang_up_live();
                    beating_since = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed");
                    beating_since = None;
                    continue;
                }
            }
            if beating_since.is_some_and(|since| since.elapsed() >= dead_after) {
                let now = now_ms();
                self.take_over(now.saturating_sub(dead_after_ms), now).await;
            }
        }
    }

    async fn take_over(&self, dead_before: UnixMs, now: UnixMs) {
        match self.shared().take_over(dead_before, now).await {
            Ok(t) => {
                if !t.instances.is_empty() || !t.calls_failed.is_empty() {
                    tracing::warn!(
                        instances = ?t.instances,
                        calls_failed = t.calls_failed.len(),
                        webhooks_released = t.webhooks_released,
                        "took over dead instances"
                    );
                }
                for id in &t.calls_failed {
                    self.metrics.completed(flow::CallResult::Failed, None);
                    self.completions.announce(id);
                }
                if !t.calls_failed.is_empty() || t.webhooks_released > 0 {
                    self.outbox.wake();
                }
            }
            Err(e) => tracing::warn!(error = %e, "take-over of dead instances failed"),
        }
    }

    async fn relay(&self, shutdown: &CancellationToken) {
        let mut backoff = RECONNECT_MIN;
        let mut lost_at: Option<UnixMs> = None;
        loop {
            let listener = tokio::select! {
                _ = shutdown.cancelled() => return,
                l = self.shared().listen() => l,
            };
            let mut listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot listen for cluster notifications");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    continue;
                }
            };
            backoff = RECONNECT_MIN;
            if let Some(since) = lost_at.take() {
                tracing::info!("cluster notifications back");
                self.catch_up(since.saturating_sub(CATCH_UP_MARGIN_MS))
                    .await;
            }
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = listener.recv() => e,
                };
                match event {
                    Some(event) => self.on_event(event).await,
                    None => break,
                }
            }
            tracing::warn!("cluster notifications lost; reconnecting");
            lost_at = Some(now_ms());
        }
    }

    async fn on_event(&self, event: ClusterEvent) {
        match event {
            ClusterEvent::Queued => self.dialer.wake(),
            ClusterEvent::Completed(id) => self.completions.announce(&id),
            ClusterEvent::OutboxQueued => self.outbox.wake(),
            ClusterEvent::HangUp(id) => {
                // Addressed to us as the owner. Live here: hang up. Not registered yet (claimed
                // a moment ago): leave the hang-up waiting for it, if it is still live.
                if self.dialer.is_live(&id) {
                    tracing::info!(%id, "hang-up requested through another instance");
                    self.dialer.hang_up(&id);
                    return;
                }
                match self.store.get(&id).await {
                    Ok(Some(v)) if v.status.is_live() => {
                        tracing::info!(%id, "hang-up requested through another instance");
                        self.dialer.hang_up(&id);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%id, error = %e, "cannot check a hang-up request"),
                }
            }
            ClusterEvent::Lagged => self.catch_up(now_ms() - CATCH_UP_MARGIN_MS).await,
        }
    }

    /// Re-announces recent completions and wakes the dialer and the outbox worker, after
    /// notifications may have been missed.
    async fn catch_up(&self, since: UnixMs) {
        match self.shared().completed_since(since).await {
            Ok(ids) => {
                for id in &ids {
                    self.completions.announce(id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot catch up on completions"),
        }
        self.dialer.wake();
        self.outbox.wake();
    }
}
