//! Storage (DESIGN.md "Storage and scale"): verifications, timelines, the webhook outbox and
//! idempotency keys behind one trait, with an embedded SQLite implementation.
//!
//! The trait is shaped for several instances sharing one database later: work is *claimed*
//! (`claim_next`, `claim_webhook`) by one atomic statement each, which PostgreSQL implements
//! with `SELECT … FOR UPDATE SKIP LOCKED`; a partial unique index keeps one live call per
//! destination in either database.

use std::sync::Arc;

use async_trait::async_trait;

mod notify;
mod sqlite;
mod sqlite_users;
mod users;

pub use crate::model::*;
pub use notify::Completions;
pub use sqlite::SqliteStore;
pub use users::{Awaiting, CodeConfirmed, CodeRejected, Directory, PromptOpened, Switched};

use crate::config::{StoreBackend, StoreConfig};

/// Builds the webhook body for a completed verification (set by the service: the store does
/// not know the API's JSON shape).
pub type PayloadFn = fn(&Verification) -> String;

/// Store failures. Internal: the API logs them and answers 500 without details.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("store backend not available: {0}")]
    Backend(String),
}

/// The verification store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new verification as `queued`, honouring the idempotency key (scoped to the
    /// client) and, when `join` is set, returning an open verification of the same client with
    /// the same destination and parameters instead of queueing another.
    async fn create(
        &self,
        new: NewVerification,
        idempotency: Option<IdempotencyKey>,
        join: bool,
    ) -> Result<Created, StoreError>;

    /// One verification.
    async fn get(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError>;

    /// Atomically moves the oldest queued verification whose destination has no live call to
    /// `calling` and returns it (with its expected digits). `None`: nothing claimable.
    async fn claim_next(&self, now: UnixMs) -> Result<Option<Verification>, StoreError>;

    /// Records progress of a live call (status and the timeline so far).
    async fn progress(
        &self,
        id: &VerificationId,
        status: Status,
        timeline: &[flow::TimelineEntry],
        now: UnixMs,
    ) -> Result<(), StoreError>;

    /// Persists the outcome with its timeline and, in the same transaction, queues the webhook.
    /// Returns the completed record; `None` when it was already completed (nothing changed).
    async fn complete(
        &self,
        id: &VerificationId,
        completion: Completion,
        now: UnixMs,
    ) -> Result<Option<Verification>, StoreError>;

    /// Completes a *queued* verification as `cancelled` (and queues its webhook).
    async fn dequeue(
        &self,
        id: &VerificationId,
        client: &str,
        now: UnixMs,
    ) -> Result<Dequeued, StoreError>;

    /// Startup: calls in flight in a previous process become `failed` (webhooks queued), and
    /// webhook leases are released.
    async fn recover(&self, now: UnixMs) -> Result<Recovery, StoreError>;

    /// Verifications waiting for a channel.
    async fn queue_depth(&self) -> Result<u64, StoreError>;

    /// Leases the next due webhook message until `lease_until` (so a crash mid-attempt only
    /// delays it). `None`: nothing due.
    async fn claim_webhook(
        &self,
        now: UnixMs,
        lease_until: UnixMs,
    ) -> Result<Option<OutboxMessage>, StoreError>;

    /// Records an attempt and moves the message to `state` (`Pending` with `next_attempt_at`).
    async fn record_attempt(
        &self,
        attempt: Attempt,
        state: OutboxState,
        next_attempt_at: UnixMs,
    ) -> Result<(), StoreError>;

    /// The webhook messages of a verification with every attempt.
    async fn outbox(&self, id: &VerificationId) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Earliest `next_attempt_at` of a pending message (the worker sleeps until then).
    async fn next_webhook_due(&self) -> Result<Option<UnixMs>, StoreError>;

    /// Cheap liveness check for `/healthz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The sign-in directory (users, methods, verifications by user) of this backend, when it
    /// has one yet.
    fn directory(&self) -> Option<Arc<dyn Directory>> {
        None
    }
}

/// Opens the store that `store.url` names.
pub async fn open(config: &StoreConfig, payload: PayloadFn) -> Result<Arc<dyn Store>, StoreError> {
    let backend = config.backend().map_err(StoreError::Backend)?;
    let store = match backend {
        StoreBackend::SqliteFile(path) => SqliteStore::open(path, payload).await?,
        StoreBackend::SqliteMemory => SqliteStore::memory(payload).await?,
    };
    Ok(Arc::new(store))
}
