//! The dialer (DESIGN.md "The call, as data flows", step 2): claims queued verifications,
//! at most `sip.channels` at a time and one per destination, and drives each call through a
//! [`CallPlacer`] (the SIP runtime). Progress is stored as it happens; the outcome is persisted
//! with its timeline, and in the same transaction its webhook is queued.
//!
//! One call at a time per destination: the claim skips destinations with a live call, so a
//! second verification for the same number waits in the queue (the API may instead *join* an
//! identical open request, see `limits.duplicate`).
//!
//! The verdict at the key (issue 9 item 3): when the call reports its decision
//! ([`CallProgress::Decided`]), the verification is completed at once (long-polls return, the
//! webhook goes out) with the line still held; the closing prompts and the BYE follow, and
//! their timeline entries are appended when the call is over.
//!
//! Queued verifications expire: one still queued `limits.queue_ttl_secs` after it was created
//! completes as `expired`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flow::keys::DigitsKey;
use flow::{CallResult, TimelineEntry, TimelineEvent};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::call::{CallPlacer, CallProgress, CallReport, CallRequest};
use crate::config::{CallConfig, Config};
use crate::metrics::Metrics;
use crate::secrets::digits_context;
use crate::store::{
    Completion, Completions, Status, Store, UnixMs, Verification, VerificationId, now_ms,
};
use crate::webhook::OutboxWake;

/// How often the dialer looks at the queue without being woken (other instances, missed wakes).
const QUEUE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// After the shutdown grace period, how long hung-up calls get to report before being dropped
/// (they are then completed as `failed` by the next start's recovery).
const HANGUP_SETTLE: Duration = Duration::from_secs(5);
/// Pause after a store error before claiming again.
const STORE_ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// How often the dialer asks again whether the runtime has capacity while it has none
/// (`CallPlacer::has_capacity`; a shard's lateness is averaged over about 1/8 s).
const OVERLOAD_RECHECK: Duration = Duration::from_millis(100);
/// How often queued verifications past `limits.queue_ttl_secs` are expired.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);
/// Retries of an outcome the store could not take (database unreachable): first pause,
/// doubled up to the cap, until it is stored or the service shuts down.
const OUTCOME_RETRY_MIN: Duration = Duration::from_millis(250);
const OUTCOME_RETRY_MAX: Duration = Duration::from_secs(5);

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

    /// The call of `id` runs in this process (or was asked to hang up before it started).
    pub fn is_live(&self, id: &VerificationId) -> bool {
        self.live().contains_key(id)
    }

    /// Hangs up every call of this process without shutting down (their outcomes were
    /// already recorded elsewhere: this instance had been declared dead).
    pub fn hang_up_live(&self) {
        for token in self.live().values() {
            token.cancel();
        }
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
    digits: DigitsKey,
    queue_ttl: Duration,
}

impl Dialer {
    /// `digits`: the key the calls check sealed PIN and challenge digits with
    /// (`crate::secrets::StoreKey::digits_key`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        placer: Arc<dyn CallPlacer>,
        handle: DialerHandle,
        metrics: Arc<Metrics>,
        completions: Completions,
        outbox: OutboxWake,
        digits: DigitsKey,
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
            digits,
            queue_ttl: Duration::from_secs(config.limits.queue_ttl_secs),
        }
    }

    /// Runs until `shutdown`: then stops claiming, lets calls in flight finish for `grace`,
    /// hangs up the rest and waits for their reports.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let this = Arc::new(self);
        let mut calls = JoinSet::new();
        let mut expiry = tokio::time::interval(EXPIRY_INTERVAL);
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while calls.try_join_next().is_some() {}
            // Expiry runs while every channel is busy too: that is when verifications queue.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = expiry.tick() => {
                    this.expire().await;
                    continue;
                }
                permit = Arc::clone(&this.channels).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break, // closed: never, the dialer owns the semaphore
                },
            };
            if !this.placer.has_capacity() {
                // The calls in flight come first: nothing is claimed (another instance may
                // take the queue) until the runtime's timers are on time again.
                drop(permit);
                this.metrics.dialer_deferred();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(OVERLOAD_RECHECK) => {}
                }
                continue;
            }
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

    /// Completes the verifications queued longer than `limits.queue_ttl_secs` as `expired`.
    async fn expire(&self) {
        let ttl_ms = i64::try_from(self.queue_ttl.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        match self
            .store
            .expire_queued(now.saturating_sub(ttl_ms), now)
            .await
        {
            Ok(expired) => {
                for v in &expired {
                    tracing::info!(id = %v.id, "queued too long: expired");
                    self.metrics.completed(CallResult::Expired, None);
                    self.completions.announce(&v.id);
                }
                if !expired.is_empty() {
                    self.outbox.wake();
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot expire queued verifications"),
        }
    }

    /// One call: place it, record progress, persist the decision at once and the rest of the
    /// timeline when the call is over.
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
        let expected_digits = v.digits_tag.map(|tag| {
            self.digits
                .sealed(&digits_context(&v.client, destination.expose()), tag)
        });
        let request = CallRequest {
            id: id.clone(),
            destination,
            extension: v.extension.clone(),
            mode: v.mode,
            expected_digits,
            language: v.language.clone(),
            call: self.call.clone(),
        };
        let cancel = self.handle.register(&id);
        self.metrics.call_started();
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Its own task, so a panicking placer fails this call instead of wedging the dialer.
        let mut call =
            AbortOnDropHandle::new(tokio::spawn(self.placer.place(request, tx, cancel.clone())));
        let mut live = LiveCall {
            status: Status::Calling,
            timeline: Vec::new(),
            decided: None,
        };
        let report = loop {
            tokio::select! {
                report = &mut call => break report.unwrap_or_else(|e| {
                    tracing::error!(%id, error = %e, "the call task failed");
                    CallReport { result: CallResult::Failed, dtmf_method: None, timeline: Vec::new() }
                }),
                Some(event) = rx.recv() => self.on_progress(&v, &cancel, event, &mut live).await,
            }
        };
        while let Ok(event) = rx.try_recv() {
            self.on_progress(&v, &cancel, event, &mut live).await;
        }
        match live.decided {
            Some(decision) => {
                // The call went on after the decision: append what followed, free the line.
                let timeline = decision.closed(&report.timeline);
                if let Err(e) = self.store.close_call(&id, &timeline, now_ms()).await {
                    tracing::error!(%id, error = %e, "cannot store the end of a decided call");
                }
            }
            None => {
                let completion = Completion {
                    result: report.result,
                    dtmf_method: report.dtmf_method,
                    timeline: if report.timeline.is_empty() {
                        live.timeline
                    } else {
                        report.timeline
                    },
                };
                self.persist(&v, &cancel, completion, false).await;
            }
        }
        self.handle.unregister(&id);
        self.metrics.call_ended();
    }

    /// Stores the outcome (`hold_line`: the call goes on after its decision), then wakes
    /// long-polls and the outbox. Returns the timeline as stored.
    async fn persist(
        &self,
        v: &Verification,
        cancel: &CancellationToken,
        mut completion: Completion,
        hold_line: bool,
    ) -> Vec<TimelineEntry> {
        let id = &v.id;
        if cancel.is_cancelled()
            && self.handle.shutting_down()
            && completion.result == CallResult::Cancelled
        {
            // Hung up by our own shutdown, not by the client: an internal failure.
            completion.result = CallResult::Failed;
            if let Some(TimelineEntry {
                event: TimelineEvent::Outcome { result },
                ..
            }) = completion.timeline.last_mut()
            {
                *result = CallResult::Failed;
            }
        }
        let last_outcome = completion
            .timeline
            .last()
            .is_some_and(|e| matches!(e.event, TimelineEvent::Outcome { .. }));
        if !last_outcome {
            completion.timeline.push(TimelineEntry {
                at_ms: since(v.call_started_at, now_ms()),
                event: TimelineEvent::Outcome {
                    result: completion.result,
                },
            });
        }
        let (result, method) = (completion.result, completion.dtmf_method);
        let timeline = completion.timeline.clone();
        match self.store_outcome(id, completion, hold_line).await {
            Ok(Some(_)) => {
                self.metrics.completed(result, method);
                tracing::info!(%id, %result, "verification completed");
            }
            Ok(None) => tracing::warn!(%id, "call completed twice; first outcome kept"),
            Err(e) => tracing::error!(%id, error = %e, "cannot store the outcome of a call"),
        }
        self.completions.announce(id);
        self.outbox.wake();
        timeline
    }

    /// Persists an outcome (`settle` while the call still holds its line for the goodbye);
    /// while the store is unreachable (a database restart) it retries,
    /// so the outcome is not lost, until it is stored or the service shuts down (then the next
    /// start, or a surviving instance, completes the call as `failed`).
    async fn store_outcome(
        &self,
        id: &VerificationId,
        completion: Completion,
        hold_line: bool,
    ) -> Result<Option<Verification>, crate::store::StoreError> {
        let mut pause = OUTCOME_RETRY_MIN;
        loop {
            let stored = if hold_line {
                self.store.settle(id, completion.clone(), now_ms()).await
            } else {
                self.store.complete(id, completion.clone(), now_ms()).await
            };
            match stored {
                Err(e) if e.is_unavailable() && !self.handle.shutting_down() => {
                    tracing::warn!(%id, error = %e, retry_in_ms = pause.as_millis() as u64, "store unreachable: outcome kept for a retry");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(OUTCOME_RETRY_MAX);
                }
                other => return other,
            }
        }
    }

    async fn on_progress(
        &self,
        v: &Verification,
        cancel: &CancellationToken,
        event: CallProgress,
        live: &mut LiveCall,
    ) {
        match event {
            CallProgress::Ringing => live.status = Status::Ringing,
            CallProgress::Answered => live.status = Status::InCall,
            CallProgress::Timeline(entry) => live.timeline.push(entry),
            CallProgress::DetectorLatency(latency) => {
                self.metrics.detector_latency(latency);
                return;
            }
            CallProgress::Decided(report) => {
                if live.decided.is_some() {
                    return;
                }
                let completion = Completion {
                    result: report.result,
                    dtmf_method: report.dtmf_method,
                    timeline: report.timeline,
                };
                let timeline = self.persist(v, cancel, completion, true).await;
                live.decided = Some(Decision { timeline });
                return;
            }
        }
        if live.decided.is_some() {
            // Completed already: the closing entries are stored when the call is over.
            return;
        }
        if let Err(e) = self
            .store
            .progress(&v.id, live.status, &live.timeline, now_ms())
            .await
        {
            tracing::warn!(id = %v.id, error = %e, "cannot store call progress");
        }
    }
}

/// What the dialer knows of a call while it runs.
struct LiveCall {
    status: Status,
    timeline: Vec<TimelineEntry>,
    decided: Option<Decision>,
}

/// The decision of a call that went on afterwards.
struct Decision {
    /// The record's timeline at the decision, ending with its outcome entry.
    timeline: Vec<TimelineEntry>,
}

impl Decision {
    /// The record's timeline once the call is over: the decision's, then every entry of the
    /// call's final timeline after the decision point (its own closing outcome entry left out:
    /// the outcome was recorded at the decision).
    fn closed(&self, final_timeline: &[TimelineEntry]) -> Vec<TimelineEntry> {
        let before = self.timeline.len().saturating_sub(1);
        let mut timeline = self.timeline.clone();
        timeline.extend(
            final_timeline
                .iter()
                .skip(before)
                .filter(|e| !matches!(e.event, TimelineEvent::Outcome { .. }))
                .cloned(),
        );
        timeline
    }
}

/// Milliseconds from `start` (the timeline's zero) to `now`; 0 without a start.
fn since(start: Option<UnixMs>, now: UnixMs) -> u64 {
    start.map_or(0, |s| u64::try_from(now - s).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_timeline_is_the_decision_then_what_followed() {
        let e = |at_ms, event| TimelineEntry { at_ms, event };
        let outcome = |at_ms| {
            e(
                at_ms,
                TimelineEvent::Outcome {
                    result: CallResult::Confirmed,
                },
            )
        };
        let digit = e(
            4_000,
            TimelineEvent::Digit {
                digit: "#".into(),
                method: "inband".into(),
            },
        );
        let decision = Decision {
            timeline: vec![
                e(0, TimelineEvent::InviteSent),
                digit.clone(),
                outcome(4_000),
            ],
        };
        let final_timeline = vec![
            e(0, TimelineEvent::InviteSent),
            digit.clone(),
            e(
                4_001,
                TimelineEvent::PromptStarted {
                    prompt: "thanks".into(),
                },
            ),
            e(6_500, TimelineEvent::ByeSent),
            outcome(6_520),
        ];
        let closed = decision.closed(&final_timeline);
        assert_eq!(
            closed,
            vec![
                e(0, TimelineEvent::InviteSent),
                digit,
                outcome(4_000),
                e(
                    4_001,
                    TimelineEvent::PromptStarted {
                        prompt: "thanks".into()
                    }
                ),
                e(6_500, TimelineEvent::ByeSent),
            ]
        );
    }
}
