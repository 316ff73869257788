//! Storage (DESIGN.md "Storage and scale"): verifications, timelines, the webhook outbox and
//! idempotency keys behind one trait, with an embedded SQLite implementation and a PostgreSQL
//! one that several instances share.
//!
//! Work is *claimed* (`claim_next`, `claim_webhook`) by one atomic statement each, which
//! PostgreSQL implements with `SELECT … FOR UPDATE SKIP LOCKED`; a partial unique index keeps
//! one live call per destination in either database. A shared store also offers
//! [`SharedStore`]: instance heartbeats, the take-over of a dead instance's work, and the
//! notifications (`LISTEN/NOTIFY`) that carry completions, wake-ups and hang-ups between
//! instances.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

mod notify;
mod postgres;
mod sqlite;
mod sqlite_users;
mod users;

pub use crate::model::*;
pub use notify::Completions;
pub use postgres::PgStore;
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
    #[error("postgresql: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgresql connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("cannot build the postgresql connection pool: {0}")]
    PoolBuild(#[from] deadpool_postgres::BuildError),
}

impl StoreError {
    /// The database cannot be reached (down, restarting, network, pool exhausted): a
    /// transient condition callers wait out (the API answers 503), not a bug.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Postgres(e) => postgres::is_unavailable(e),
            StoreError::Pool(deadpool_postgres::PoolError::Backend(e)) => {
                postgres::is_unavailable(e)
            }
            StoreError::Pool(deadpool_postgres::PoolError::Timeout(_)) => true,
            _ => false,
        }
    }
}

/// The verification store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new verification as `queued`, honouring the idempotency key (scoped to the
    /// client) and, when `join` is set, returning an open verification of the same client with
    /// the same destination and parameters instead of queueing another. A new verification
    /// counts against every quota with a limit, in the same transaction; when one is reached,
    /// nothing is stored or counted ([`Created::Limited`]). Replays and joins count nothing.
    async fn create(
        &self,
        new: NewVerification,
        idempotency: Option<IdempotencyKey>,
        join: bool,
        quotas: &[Quota],
    ) -> Result<Created, StoreError>;

    /// One verification.
    async fn get(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError>;

    /// Atomically moves the oldest queued verification whose destination has no live call
    /// (and no call still closing after its decision, see [`Store::settle`]) to `calling` and
    /// returns it (with its digits tag). `None`: nothing claimable.
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

    /// The decision of a call that goes on (closing prompts, BYE): completes it like
    /// [`Store::complete`] (webhook queued, digits tag cleared) but keeps its destination's line
    /// held, so no other call to it starts until [`Store::close_call`].
    async fn settle(
        &self,
        id: &VerificationId,
        completion: Completion,
        now: UnixMs,
    ) -> Result<Option<Verification>, StoreError>;

    /// The call of a settled verification is over: replaces its timeline (the decision's, with
    /// the closing entries appended; result, webhook and `completed_at` unchanged) and frees its
    /// line.
    async fn close_call(
        &self,
        id: &VerificationId,
        timeline: &[flow::TimelineEntry],
        now: UnixMs,
    ) -> Result<(), StoreError>;

    /// Completes every verification still queued that was created before `created_before` as
    /// `expired` (webhooks queued); returns them.
    async fn expire_queued(
        &self,
        created_before: UnixMs,
        now: UnixMs,
    ) -> Result<Vec<Verification>, StoreError>;

    /// Completes a *queued* verification as `cancelled` (and queues its webhook).
    async fn dequeue(
        &self,
        id: &VerificationId,
        client: &str,
        now: UnixMs,
    ) -> Result<Dequeued, StoreError>;

    /// Startup: calls in flight in a previous process become `failed` (webhooks queued), lines
    /// held by settled calls are freed, and webhook leases are released.
    async fn recover(&self, now: UnixMs) -> Result<Recovery, StoreError>;

    /// Verifications waiting for a channel.
    async fn queue_depth(&self) -> Result<u64, StoreError>;

    /// Leases the next due webhook message until `lease_until` (so a crash mid-attempt only
    /// delays it), skipping messages whose host is in `busy_hosts` (at its concurrency
    /// limit). `None`: nothing due.
    async fn claim_webhook(
        &self,
        now: UnixMs,
        lease_until: UnixMs,
        busy_hosts: &[String],
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

    /// The cluster side of a store several instances share (PostgreSQL); `None` for a store
    /// one process owns (SQLite), whose [`Store::recover`] at start is all the recovery there is.
    fn shared(&self) -> Option<&dyn SharedStore> {
        None
    }

    /// The sign-in directory (users, methods, verifications by user) of this backend, when it
    /// has one yet.
    fn directory(&self) -> Option<Arc<dyn Directory>> {
        None
    }
}

/// One running `serve` process in a cluster: `ins_` and 16 lowercase hex digits, new at every
/// start (a restarted process is a new instance; its previous life is taken over).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    /// A new random id.
    pub fn generate() -> InstanceId {
        InstanceId(format!("ins_{}", hex::encode(rand::random::<[u8; 8]>())))
    }

    /// An id the store wrote (the store only holds ids made by [`InstanceId::generate`]).
    pub fn from_stored(s: String) -> InstanceId {
        InstanceId(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({})", self.0)
    }
}

/// What a heartbeat found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// Recorded: this instance is alive for the others.
    Alive,
    /// This instance had been declared dead (silent too long: a partition, a stalled
    /// process) and its calls failed by a survivor; it is registered again from now on.
    Rejoined,
}

/// What taking over dead instances did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TakeOver {
    /// The instances found dead and removed.
    pub instances: Vec<InstanceId>,
    /// Their calls in progress, now completed as `failed` (`instance_lost`).
    pub calls_failed: Vec<VerificationId>,
    /// Their webhook leases, released so any instance delivers them now.
    pub webhooks_released: usize,
}

/// A notification from another instance (or this one) through the shared store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A verification was queued: dialers look at the queue.
    Queued,
    /// A verification was completed: long-polls for it answer.
    Completed(VerificationId),
    /// A webhook was queued or released: outbox workers look.
    OutboxQueued,
    /// Hang up this call, which runs on this instance (a `DELETE` on another instance).
    HangUp(VerificationId),
    /// Notifications were dropped (a burst beyond the buffer): re-read what matters.
    Lagged,
}

/// The cluster side of a shared store (PostgreSQL): see [`Store::shared`].
#[async_trait]
pub trait SharedStore: Send + Sync + 'static {
    /// This process.
    fn instance(&self) -> &InstanceId;

    /// Records that this instance is alive at `now`.
    async fn heartbeat(&self, now: UnixMs) -> Result<Beat, StoreError>;

    /// Instances whose last heartbeat is before `dead_before` are dead: their calls in
    /// progress complete as `failed` with `instance_lost` in the timeline (webhooks queued),
    /// their webhook leases are released, and they are forgotten. Also completes live calls
    /// whose instance is gone. Safe to run on every instance at once (each dead instance is
    /// taken over by exactly one).
    async fn take_over(&self, dead_before: UnixMs, now: UnixMs) -> Result<TakeOver, StoreError>;

    /// Graceful exit: releases this instance's webhook leases and forgets it.
    async fn leave(&self, now: UnixMs) -> Result<(), StoreError>;

    /// Asks the instance running the call of `id` to hang it up. `false`: no call is live.
    async fn request_hang_up(&self, id: &VerificationId) -> Result<bool, StoreError>;

    /// Verifications completed at or after `since` (to catch up on notifications missed while
    /// the listener was reconnecting).
    async fn completed_since(&self, since: UnixMs) -> Result<Vec<VerificationId>, StoreError>;

    /// Opens a dedicated connection that receives the cluster's notifications. It ends
    /// (`recv` gives `None`) when the connection is lost; the caller reconnects.
    async fn listen(&self) -> Result<Listener, StoreError>;
}

/// A live subscription to the cluster's notifications (see [`SharedStore::listen`]).
pub struct Listener {
    events: tokio::sync::mpsc::Receiver<ClusterEvent>,
    /// Whatever keeps the connection open (dropped with the listener).
    _connection: Box<dyn std::any::Any + Send + Sync>,
}

impl Listener {
    pub(crate) fn new(
        events: tokio::sync::mpsc::Receiver<ClusterEvent>,
        connection: Box<dyn std::any::Any + Send + Sync>,
    ) -> Listener {
        Listener {
            events,
            _connection: connection,
        }
    }

    /// The next event; `None` once the connection is lost.
    pub async fn recv(&mut self) -> Option<ClusterEvent> {
        self.events.recv().await
    }
}

/// Opens the store that `store.url` names. `instance` is this process in a shared store (the
/// owner it records on the calls it claims); a SQLite store has one process and ignores it.
pub async fn open(
    config: &StoreConfig,
    payload: PayloadFn,
    instance: InstanceId,
) -> Result<Arc<dyn Store>, StoreError> {
    let backend = config.backend().map_err(StoreError::Backend)?;
    let store: Arc<dyn Store> = match backend {
        StoreBackend::SqliteFile(path) => Arc::new(SqliteStore::open(path, payload).await?),
        StoreBackend::SqliteMemory => Arc::new(SqliteStore::memory(payload).await?),
        StoreBackend::Postgres(pg) => {
            Arc::new(PgStore::open(*pg, config, payload, instance).await?)
        }
    };
    Ok(store)
}
