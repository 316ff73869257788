//! The dialer (DESIGN.md "The call, as data flows", step 2): claims queued verifications,
//! at most `sip.channels` at a time and one per destination, and drives each call through a
//! [`CallPlacer`] (the SIP runtime). Progress is stored as it happens; the outcome is persisted
//! with its timeline, and in the same transaction its webhook is queued.
//!
//! One call at a time per destination: the claim skips destinations with a live call, so a
//! second verification for the same number waits in the queue (the API may instead *join* an
//! identical open request, see `limits.duplicate`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flow::{CallResult, TimelineEntry, TimelineEvent};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::call::{CallPlacer, CallProgress, CallReport, CallRequest};
use crate::config::{CallConfig, Config};
use crate::metrics::Metrics;
use crate::store::{Completion, Completions, Status, Store, Verification, VerificationId, now_ms};
use crate::webhook::OutboxWake;

/// How often the dialer looks at the queue without being woken (other instances, missed wakes).
const QUEUE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// After the shutdown grace period, how long hung-up calls get to report before being dropped
/// (they are then completed as `failed` by the next start's recovery).
const HANGUP_SETTLE: Duration = Duration::from_secs(5);
/// Pause after a store error before claiming again.
const STORE_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Shared between the dialer and the API: wake-ups and the hang-up handles of live calls.
#[derive(Clone, Debug, Default)]
pub struct DialerHandle {
    shared: Arc<HandleShared>,
}

#[derive(Debug, Default)]
struct HandleShared {
    wake: Notify,
    live: Mutex<HashMap<VerificationId, CancellationToken>>,
    shutting_down: AtomicBool,
}

impl DialerHandle {
    pub fn new() -> DialerHandle {
        DialerHandle::default()
    }

    /// Something was queued: look at the queue now.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Hangs up the call of `id`. A call claimed but not started yet is hung up as soon as it
    /// starts (the token is left waiting for it).
    pub fn hang_up(&self, id: &VerificationId) {
        let mut live = self.live();
        live.entry(id.clone()).or_default().cancel();
    }

    /// Whether this process is placing (or about to place) a call for `id`.
    pub fn is_placing(&self, id: &VerificationId) -> bool {
        self.live().contains_key(id)
    }

    /// Hangs up the call of `id` if this process is placing one (unlike [`Self::hang_up`],
    /// leaves nothing behind for a call that already ended).
    pub fn hang_up_if_placing(&self, id: &VerificationId) -> bool {
        match self.live().get(id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Calls this process is placing now.
    pub fn live_calls(&self) -> usize {
        self.live().len()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<VerificationId, CancellationToken>> {
        // The map holds only tokens; a panic while holding it leaves nothing half-updated.
        self.shared.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, id: &VerificationId) -> CancellationToken {
        self.live().entry(id.clone()).or_default().clone()
    }

    fn unregister(&self, id: &VerificationId) {
        self.live().remove(id);
    }

    fn hang_up_all(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        for token in self.live().values() {
            token.cancel();
        }
    }

    fn shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }
}

/// Claims queued verifications and runs their calls.
pub struct Dialer {
    store: Arc<dyn Store>,
    placer: Arc<dyn CallPlacer>,
    handle: DialerHandle,
    metrics: Arc<Metrics>,
    completions: Completions,
    outbox: OutboxWake,
    channels: Arc<Semaphore>,
    call: CallConfig,
}

impl Dialer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        placer: Arc<dyn CallPlacer>,
        handle: DialerHandle,
        metrics: Arc<Metrics>,
        completions: Completions,
        outbox: OutboxWake,
    ) -> Dialer {
        let channels = usize::try_from(config.sip.channels).unwrap_or(usize::MAX);
        Dialer {
            store,
            placer,
            handle,
            metrics,
            completions,
            outbox,
            channels: Arc::new(Semaphore::new(channels)),
            call: config.call.clone(),
        }
    }

    /// Runs until `shutdown`: then stops claiming, lets calls in flight finish for `grace`,
    /// hangs up the rest and waits for their reports.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let this = Arc::new(self);
        let mut calls = JoinSet::new();
        loop {
            while calls.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = Arc::clone(&this.channels).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break, // closed: never, the dialer owns the semaphore
                },
            };
            match this.store.claim_next(now_ms()).await {
                Ok(Some(v)) => {
                    let this = Arc::clone(&this);
                    calls.spawn(async move {
                        this.drive(v).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = this.handle.shared.wake.notified() => {}
                        _ = tokio::time::sleep(QUEUE_POLL_INTERVAL) => {}
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::error!(error = %e, "dialer cannot claim work");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(STORE_ERROR_BACKOFF) => {}
                    }
                }
            }
        }
        if !calls.is_empty() {
            tracing::info!(calls = calls.len(), "shutdown: waiting for calls in flight");
            let drained =
                tokio::time::timeout(grace, async { while calls.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                tracing::warn!(calls = calls.len(), "shutdown: grace over, hanging up");
                this.handle.hang_up_all();
                let settled = tokio::time::timeout(HANGUP_SETTLE, async {
                    while calls.join_next().await.is_some() {}
                })
                .await;
                if settled.is_err() {
                    tracing::error!(
                        calls = calls.len(),
                        "calls did not report after hang-up; the next start completes them as failed"
                    );
                    calls.abort_all();
                }
            }
        }
    }

    /// One call: place it, record progress, persist the outcome.
    async fn drive(&self, v: Verification) {
        let id = v.id.clone();
        // Only calls are queued, so a claimed verification has a number; a row without one
        // (a damaged store) fails instead of being dialled.
        let Some(destination) = v.destination.clone() else {
            tracing::error!(%id, "claimed a verification without a number");
            let failed = Completion {
                result: CallResult::Failed,
                dtmf_method: None,
                timeline: Vec::new(),
            };
            if let Err(e) = self.store.complete(&id, failed, now_ms()).await {
                tracing::error!(%id, error = %e, "cannot store the outcome of a call");
            }
            self.completions.announce(&id);
            self.outbox.wake();
            return;
        };
        tracing::info!(%id, %destination, mode = ?v.mode, "call started");
        let request = CallRequest {
            id: id.clone(),
            destination,
            extension: v.extension.clone(),
            mode: v.mode,
            expected_digits: v.expected_digits.clone(),
            language: v.language.clone(),
            call: self.call.clone(),
        };
        let cancel = self.handle.register(&id);
        self.metrics.call_started();
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Its own task, so a panicking placer fails this call instead of wedging the dialer.
        let mut call =
            AbortOnDropHandle::new(tokio::spawn(self.placer.place(request, tx, cancel.clone())));
        let mut status = Status::Calling;
        let mut timeline = Vec::new();
        let report = loop {
            tokio::select! {
                report = &mut call => break report.unwrap_or_else(|e| {
                    tracing::error!(%id, error = %e, "the call task failed");
                    CallReport { result: CallResult::Failed, dtmf_method: None, timeline: Vec::new() }
                }),
                Some(event) = rx.recv() => {
                    self.on_progress(&id, event, &mut status, &mut timeline).await;
                }
            }
        };
        while let Ok(event) = rx.try_recv() {
            self.on_progress(&id, event, &mut status, &mut timeline)
                .await;
        }
        let mut completion = Completion {
            result: report.result,
            dtmf_method: report.dtmf_method,
            timeline: if report.timeline.is_empty() {
                timeline
            } else {
                report.timeline
            },
        };
        if cancel.is_cancelled()
            && self.handle.shutting_down()
            && completion.result == CallResult::Cancelled
        {
            // Hung up by our own shutdown, not by the client: an internal failure.
            completion.result = CallResult::Failed;
        }
        let last_outcome = completion
            .timeline
            .last()
            .is_some_and(|e| matches!(e.event, TimelineEvent::Outcome { .. }));
        if !last_outcome {
            let start = v.call_started_at.unwrap_or_else(now_ms);
            completion.timeline.push(TimelineEntry {
                at_ms: u64::try_from(now_ms() - start).unwrap_or(0),
                event: TimelineEvent::Outcome {
                    result: completion.result,
                },
            });
        }
        let (result, method) = (completion.result, completion.dtmf_method);
        match self.store.complete(&id, completion, now_ms()).await {
            Ok(Some(_)) => {
                self.metrics.completed(result, method);
                tracing::info!(%id, %result, "call completed");
            }
            Ok(None) => tracing::warn!(%id, "call completed twice; first outcome kept"),
            Err(e) => tracing::error!(%id, error = %e, "cannot store the outcome of a call"),
        }
        self.handle.unregister(&id);
        self.metrics.call_ended();
        self.completions.announce(&id);
        self.outbox.wake();
    }

    async fn on_progress(
        &self,
        id: &VerificationId,
        event: CallProgress,
        status: &mut Status,
        timeline: &mut Vec<TimelineEntry>,
    ) {
        match event {
            CallProgress::Ringing => *status = Status::Ringing,
            CallProgress::Answered => *status = Status::InCall,
            CallProgress::Timeline(entry) => timeline.push(entry),
            CallProgress::DetectorLatency(latency) => {
                self.metrics.detector_latency(latency);
                return;
            }
        }
        if let Err(e) = self.store.progress(id, *status, timeline, now_ms()).await {
            tracing::warn!(%id, error = %e, "cannot store call progress");
        }
    }
}
