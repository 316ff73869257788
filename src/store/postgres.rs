//! The shared store: one PostgreSQL database for any number of instances, each with its own
//! SIP/RTP/API addresses (DESIGN.md "Storage and scale").
//!
//! - the queue: claims are `UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)`, so
//!   instances never wait on each other's rows; the partial unique index keeps one live call
//!   per destination (a lost race is retried);
//! - the outbox: a message is leased to one instance (`leased_by`), which alone may attempt
//!   it until it records the attempt, leaves, or is found dead and taken over;
//! - idempotency keys and joins: serialized per key and per destination by transaction-scoped
//!   advisory locks, so two instances receiving the same request create one verification;
//! - `LISTEN/NOTIFY` (see `listen`) carries wake-ups, completions and hang-ups.
//!
//! Each [`Store`] method is one function below, one transaction where it writes.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use flow::{CallResult, TimelineEntry, TimelineEvent};
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;

use super::*;
use crate::config::StoreConfig;

mod listen;
mod rows;
mod schema;

use rows::{COLUMNS, OUTBOX_COLUMNS, corrupt, mode_str, tag_hex};

/// The SQL list of live statuses.
const LIVE: &str = "('calling', 'ringing', 'in_call')";
/// A claim that loses the one-live-call-per-destination race is retried this many times.
const CLAIM_RETRIES: usize = 3;
/// Most completions returned to a listener catching up (the rest: waiters re-read on lag).
const CATCH_UP_MAX: i64 = 10_000;
/// Cap events older than this are deleted: the longest cap window (a day), in milliseconds.
const RATE_EVENTS_KEPT_MS: i64 = 24 * 3600 * 1000;

/// The PostgreSQL store of one instance.
pub struct PgStore {
    pool: Pool,
    /// For the listener's dedicated connection (the pool's connections are shared).
    pg: tokio_postgres::Config,
    payload: PayloadFn,
    instance: InstanceId,
}

/// The database cannot be reached right now (as opposed to a bug or a constraint).
pub(super) fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        let code = code.code();
        // Class 08: connection exception; 57P01-57P03: admin/crash shutdown, cannot connect
        // now (PostgreSQL Appendix A); 53300: too many connections.
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300");
    }
    e.is_closed()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || e.to_string().starts_with("timeout")
}

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION))
}

/// A transaction-scoped advisory lock key for `parts` (64 bits of their SHA-256).
fn lock_key(parts: &[&str]) -> i64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

impl PgStore {
    /// Connects (the pool is bounded by `store.pool_size`, every wait by
    /// `store.timeout_secs`), applies the migrations and registers `instance`.
    pub async fn open(
        mut pg: tokio_postgres::Config,
        config: &StoreConfig,
        payload: PayloadFn,
        instance: InstanceId,
    ) -> Result<PgStore, StoreError> {
        let timeout = Duration::from_secs(config.timeout_secs);
        pg.connect_timeout(timeout)
            .application_name("callverify")
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let manager = Manager::from_config(
            pg.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()?;
        let store = PgStore {
            pool,
            pg,
            payload,
            instance,
        };
        let now = now_ms();
        let mut client = store.pool.get().await?;
        schema::migrate(&mut client, now).await?;
        client
            .execute(
                "INSERT INTO instances (id, started_at, last_seen) VALUES ($1, $2, $2) \
                 ON CONFLICT (id) DO UPDATE SET last_seen = EXCLUDED.last_seen",
                &[&store.instance.as_str(), &now],
            )
            .await?;
        tracing::info!(instance = %store.instance, "joined the cluster");
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    async fn try_create(
        &self,
        new: &NewVerification,
        idempotency: Option<&IdempotencyKey>,
        join: bool,
        quotas: &[Quota],
    ) -> Result<Created, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(key) = idempotency {
            let lock = lock_key(&["idempotency", &new.client, &key.key]);
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
                .await?;
            let earlier = tx
                .query_opt(
                    "SELECT fingerprint, verification_id FROM idempotency_keys \
                     WHERE client = $1 AND key = $2",
                    &[&new.client, &key.key],
                )
                .await?;
            if let Some(row) = earlier {
                let fingerprint: String = row.try_get(0)?;
                let vid: String = row.try_get(1)?;
                if fingerprint != key.fingerprint {
                    return Ok(Created::IdempotencyConflict);
                }
                let v = fetch(&tx, &vid)
                    .await?
                    .ok_or_else(|| corrupt("idempotency key", "points to nothing"))?;
                return Ok(Created::Replayed(v));
            }
        }
        let tag = tag_hex(new.digits_tag.as_ref());
        let mut vid = new.id.as_str().to_owned();
        let mut joined = false;
        if join {
            let lock = lock_key(&["destination", &new.client, new.destination.expose()]);
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
                .await?;
            let open = tx
                .query_opt(
                    "SELECT id FROM verifications WHERE client = $1 AND destination = $2 \
                     AND status <> 'completed' AND extension IS NOT DISTINCT FROM $3 \
                     AND mode = $4 AND language = $5 AND callback_url IS NOT DISTINCT FROM $6 \
                     AND (mode <> 'pin' OR digits_tag IS NOT DISTINCT FROM $7) \
                     ORDER BY created_at, seq LIMIT 1",
                    &[
                        &new.client,
                        &new.destination.expose(),
                        &new.extension,
                        &mode_str(new.mode),
                        &new.language,
                        &new.callback_url,
                        &tag,
                    ],
                )
                .await?;
            if let Some(row) = open {
                vid = row.try_get(0)?;
                joined = true;
            }
        }
        if !joined {
            if let Some(limited) = quota_reached(&tx, quotas, new.created_at).await? {
                return Ok(Created::Limited(limited));
            }
            quota_take(&tx, quotas, new.created_at).await?;
            let metadata = new
                .metadata
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| corrupt("metadata", e))?;
            tx.execute(
                "INSERT INTO verifications (id, client, destination, extension, mode, \
                 digits_tag, language, callback_url, metadata, status, timeline, \
                 created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', '[]', $10, $10)",
                &[
                    &new.id.as_str(),
                    &new.client,
                    &new.destination.expose(),
                    &new.extension,
                    &mode_str(new.mode),
                    &tag,
                    &new.language,
                    &new.callback_url,
                    &metadata,
                    &new.created_at,
                ],
            )
            .await?;
            tx.execute(&format!("SELECT pg_notify('{}', '')", listen::QUEUE), &[])
                .await?;
        }
        if let Some(key) = idempotency {
            tx.execute(
                "INSERT INTO idempotency_keys \
                 (client, key, fingerprint, verification_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &new.client,
                    &key.key,
                    &key.fingerprint,
                    &vid,
                    &new.created_at,
                ],
            )
            .await?;
        }
        let v = fetch(&tx, &vid)
            .await?
            .ok_or_else(|| corrupt("verification", "vanished in transaction"))?;
        tx.commit().await?;
        Ok(if joined {
            Created::Joined(v)
        } else {
            Created::New(v)
        })
    }

    async fn try_claim(&self, now: UnixMs) -> Result<Option<Verification>, StoreError> {
        let client = self.client().await?;
        // The claimer must be a registered instance: one declared dead claims nothing until
        // its heartbeat registers it again (so a survivor never misses its calls).
        let row = client
            .query_opt(
                &format!(
                    "UPDATE verifications SET status = 'calling', call_started_at = $1, \
                     updated_at = $1, owner = $2 \
                     WHERE id = (SELECT q.id FROM verifications q WHERE q.status = 'queued' \
                       AND NOT EXISTS (SELECT 1 FROM verifications l \
                         WHERE l.destination = q.destination \
                         AND (l.status IN {LIVE} OR l.line_held)) \
                       ORDER BY q.created_at, q.seq LIMIT 1 FOR UPDATE SKIP LOCKED) \
                     AND EXISTS (SELECT 1 FROM instances WHERE id = $2) \
                     RETURNING {COLUMNS}"
                ),
                &[&now, &self.instance.as_str()],
            )
            .await?;
        row.as_ref().map(rows::verification).transpose()
    }
}

impl PgStore {
    /// [`Store::complete`] (`hold_line` false) and [`Store::settle`] (true).
    async fn finish(
        &self,
        id: &VerificationId,
        completion: &Completion,
        now: UnixMs,
        hold_line: bool,
    ) -> Result<Option<Verification>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let v = complete_in(&tx, self.payload, id.as_str(), completion, now, hold_line).await?;
        tx.commit().await?;
        Ok(v)
    }
}

/// The keys of the quotas with a limit, sorted and distinct (locks are taken in this order,
/// so two transactions never wait on each other in a circle).
fn quota_keys(quotas: &[Quota]) -> Vec<&str> {
    let mut keys: Vec<&str> = quotas
        .iter()
        .filter(|q| q.max > 0)
        .map(|q| q.key.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The cap that is reached, if any (the one that lifts last), for a request at `now`. Takes
/// a transaction-scoped advisory lock per key first: two instances counting one key at once
/// are serialized, so a cap holds across the cluster.
async fn quota_reached(
    tx: &tokio_postgres::Transaction<'_>,
    quotas: &[Quota],
    now: UnixMs,
) -> Result<Option<Limited>, StoreError> {
    for key in quota_keys(quotas) {
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&lock_key(&["quota", key])],
        )
        .await?;
    }
    let mut worst: Option<Limited> = None;
    for q in quotas.iter().filter(|q| q.max > 0) {
        let window_ms = i64::try_from(q.window.as_millis()).unwrap_or(i64::MAX);
        let since = now.saturating_sub(window_ms);
        let count: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM rate_events WHERE key = $1 AND at > $2",
                &[&q.key, &since],
            )
            .await?
            .try_get(0)?;
        if count < i64::from(q.max) {
            continue;
        }
        // The event whose leaving the window makes room: the (count - max + 1)-th oldest.
        let freeing: i64 = tx
            .query_one(
                "SELECT at FROM rate_events WHERE key = $1 AND at > $2 ORDER BY at \
                 LIMIT 1 OFFSET $3",
                &[&q.key, &since, &(count - i64::from(q.max))],
            )
            .await?
            .try_get(0)?;
        let retry_ms = freeing.saturating_add(window_ms).saturating_sub(now).max(0);
        let retry_after = Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0));
        if worst.as_ref().is_none_or(|w| w.retry_after < retry_after) {
            worst = Some(Limited {
                what: q.what,
                retry_after,
            });
        }
    }
    Ok(worst)
}

/// Counts one verification against every cap that has a limit (one event per distinct key),
/// and forgets events older than any window.
async fn quota_take(
    tx: &tokio_postgres::Transaction<'_>,
    quotas: &[Quota],
    now: UnixMs,
) -> Result<(), StoreError> {
    for key in quota_keys(quotas) {
        tx.execute(
            "INSERT INTO rate_events (key, at) VALUES ($1, $2)",
            &[&key, &now],
        )
        .await?;
    }
    tx.execute(
        "DELETE FROM rate_events WHERE at <= $1",
        &[&now.saturating_sub(RATE_EVENTS_KEPT_MS)],
    )
    .await?;
    Ok(())
}

/// One verification, inside a transaction (locking nothing).
async fn fetch(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
) -> Result<Option<Verification>, StoreError> {
    let row = tx
        .query_opt(
            &format!("SELECT {COLUMNS} FROM verifications WHERE id = $1"),
            &[&id],
        )
        .await?;
    row.as_ref().map(rows::verification).transpose()
}

fn timeline_json(timeline: &[TimelineEntry]) -> Result<String, StoreError> {
    serde_json::to_string(timeline).map_err(|e| corrupt("timeline", e))
}

/// Completes `id` (if not completed yet), queues its webhook and announces both, inside the
/// caller's transaction (notifications go out at commit).
async fn complete_in(
    tx: &tokio_postgres::Transaction<'_>,
    payload: PayloadFn,
    id: &str,
    completion: &Completion,
    now: UnixMs,
    hold_line: bool,
) -> Result<Option<Verification>, StoreError> {
    let row = tx
        .query_opt(
            &format!(
                "UPDATE verifications SET status = 'completed', result = $2, dtmf_method = $3, \
                 timeline = $4, completed_at = $5, updated_at = $5, digits_tag = NULL, \
                 line_held = $6 \
                 WHERE id = $1 AND status <> 'completed' RETURNING {COLUMNS}"
            ),
            &[
                &id,
                &completion.result.as_str(),
                &completion.dtmf_method.map(|m| m.as_str()),
                &timeline_json(&completion.timeline)?,
                &now,
                &hold_line,
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let v = rows::verification(&row)?;
    if let Some(url) = &v.callback_url {
        let message_id = format!("msg_{}", hex::encode(rand::random::<[u8; 16]>()));
        tx.execute(
            "INSERT INTO webhook_outbox \
             (id, verification_id, client, url, payload, state, created_at, next_attempt_at, \
             host) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6, $7)",
            &[
                &message_id,
                &id,
                &v.client,
                url,
                &payload(&v),
                &now,
                &callback_host(url),
            ],
        )
        .await?;
        tx.execute(&format!("SELECT pg_notify('{}', '')", listen::OUTBOX), &[])
            .await?;
    }
    tx.execute(
        &format!("SELECT pg_notify('{}', $1)", listen::COMPLETED),
        &[&id],
    )
    .await?;
    Ok(Some(v))
}

/// The timeline of a call whose instance died: what was stored, then `instance_lost` and
/// the `failed` outcome at `now`.
fn lost(v: &Verification, now: UnixMs) -> Completion {
    let at_ms = v
        .call_started_at
        .map_or(0, |start| u64::try_from(now - start).unwrap_or(0));
    let mut timeline = v.timeline.clone();
    timeline.push(TimelineEntry {
        at_ms,
        event: TimelineEvent::InstanceLost,
    });
    timeline.push(TimelineEntry {
        at_ms,
        event: TimelineEvent::Outcome {
            result: CallResult::Failed,
        },
    });
    Completion {
        result: CallResult::Failed,
        dtmf_method: v.dtmf_method,
        timeline,
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create(
        &self,
        new: NewVerification,
        idempotency: Option<IdempotencyKey>,
        join: bool,
        quotas: &[Quota],
    ) -> Result<Created, StoreError> {
        self.try_create(&new, idempotency.as_ref(), join, quotas)
            .await
    }

    async fn get(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM verifications WHERE id = $1"),
                &[&id.as_str()],
            )
            .await?;
        row.as_ref().map(rows::verification).transpose()
    }

    async fn claim_next(&self, now: UnixMs) -> Result<Option<Verification>, StoreError> {
        // Two instances may pick two queued verifications of one destination at once; the
        // unique index refuses the second, which then looks again.
        let mut tries = 0;
        loop {
            match self.try_claim(now).await {
                Err(e) if is_unique_violation(&e) && tries < CLAIM_RETRIES => tries += 1,
                Err(e) if is_unique_violation(&e) => return Ok(None),
                other => return other,
            }
        }
    }

    async fn progress(
        &self,
        id: &VerificationId,
        status: Status,
        timeline: &[TimelineEntry],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &format!(
                    "UPDATE verifications SET status = $2, timeline = $3, updated_at = $4 \
                     WHERE id = $1 AND status IN {LIVE}"
                ),
                &[
                    &id.as_str(),
                    &status.as_str(),
                    &timeline_json(timeline)?,
                    &now,
                ],
            )
            .await?;
        Ok(())
    }

    async fn complete(
        &self,
        id: &VerificationId,
        completion: Completion,
        now: UnixMs,
    ) -> Result<Option<Verification>, StoreError> {
        self.finish(id, &completion, now, false).await
    }

    async fn settle(
        &self,
        id: &VerificationId,
        completion: Completion,
        now: UnixMs,
    ) -> Result<Option<Verification>, StoreError> {
        self.finish(id, &completion, now, true).await
    }

    async fn close_call(
        &self,
        id: &VerificationId,
        timeline: &[TimelineEntry],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let freed = tx
            .execute(
                "UPDATE verifications SET timeline = $2, updated_at = $3, line_held = FALSE \
                 WHERE id = $1 AND status = 'completed'",
                &[&id.as_str(), &timeline_json(timeline)?, &now],
            )
            .await?;
        if freed > 0 {
            // The line is free: a queued call to it may start (on any instance).
            tx.execute(&format!("SELECT pg_notify('{}', '')", listen::QUEUE), &[])
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn expire_queued(
        &self,
        created_before: UnixMs,
        now: UnixMs,
    ) -> Result<Vec<Verification>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // SKIP LOCKED: instances expiring at once (or claiming) take different rows.
        let ids: Vec<String> = tx
            .query(
                "SELECT id FROM verifications WHERE status = 'queued' AND created_at < $1 \
                 ORDER BY created_at, seq FOR UPDATE SKIP LOCKED",
                &[&created_before],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let completion = Completion {
            result: CallResult::Expired,
            dtmf_method: None,
            timeline: vec![
                TimelineEntry {
                    at_ms: 0,
                    event: TimelineEvent::Timeout {
                        timer: "queue".to_owned(),
                    },
                },
                TimelineEntry {
                    at_ms: 0,
                    event: TimelineEvent::Outcome {
                        result: CallResult::Expired,
                    },
                },
            ],
        };
        let mut expired = Vec::with_capacity(ids.len());
        for id in ids {
            expired.extend(complete_in(&tx, self.payload, &id, &completion, now, false).await?);
        }
        tx.commit().await?;
        Ok(expired)
    }

    async fn dequeue(
        &self,
        id: &VerificationId,
        client_name: &str,
        now: UnixMs,
    ) -> Result<Dequeued, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!("SELECT {COLUMNS} FROM verifications WHERE id = $1 FOR UPDATE"),
                &[&id.as_str()],
            )
            .await?;
        let Some(v) = row
            .as_ref()
            .map(rows::verification)
            .transpose()?
            .filter(|v| v.client == client_name)
        else {
            return Ok(Dequeued::NotFound);
        };
        if v.status != Status::Queued {
            return Ok(Dequeued::NotQueued(v));
        }
        let completion = Completion {
            result: CallResult::Cancelled,
            dtmf_method: None,
            timeline: vec![TimelineEntry {
                at_ms: 0,
                event: TimelineEvent::Outcome {
                    result: CallResult::Cancelled,
                },
            }],
        };
        let done = complete_in(&tx, self.payload, id.as_str(), &completion, now, false)
            .await?
            .ok_or_else(|| corrupt("verification", "completed in transaction"))?;
        tx.commit().await?;
        Ok(Dequeued::Cancelled(done))
    }

    async fn recover(&self, now: UnixMs) -> Result<Recovery, StoreError> {
        // Shared: the calls of a previous life of this process belong to another instance
        // id, which the heartbeat's take-over fails once it is silent long enough; here the
        // instance only shows it is alive.
        self.heartbeat(now).await?;
        Ok(Recovery {
            calls_failed: 0,
            webhooks_released: 0,
            queued: self.queue_depth().await?,
        })
    }

    async fn queue_depth(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM verifications WHERE status = 'queued'",
                &[],
            )
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn claim_webhook(
        &self,
        now: UnixMs,
        lease_until: UnixMs,
        busy_hosts: &[String],
    ) -> Result<Option<OutboxMessage>, StoreError> {
        // A message leased by another live instance is never taken; our own lease that ran
        // out (an attempt whose record was lost to a database outage) is taken again.
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE webhook_outbox SET leased_by = $3, next_attempt_at = $2 \
                     WHERE id = (SELECT id FROM webhook_outbox \
                       WHERE state = 'pending' AND next_attempt_at <= $1 \
                       AND (leased_by IS NULL OR leased_by = $3) \
                       AND NOT (host = ANY($4)) \
                       ORDER BY next_attempt_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) \
                     AND EXISTS (SELECT 1 FROM instances WHERE id = $3) \
                     RETURNING {OUTBOX_COLUMNS}"
                ),
                &[&now, &lease_until, &self.instance.as_str(), &busy_hosts],
            )
            .await?;
        row.as_ref().map(rows::outbox_message).transpose()
    }

    async fn record_attempt(
        &self,
        attempt: Attempt,
        state: OutboxState,
        next_attempt_at: UnixMs,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let number = i64::from(attempt.number);
        tx.execute(
            "INSERT INTO webhook_attempts \
             (message_id, number, at, status_code, error, duration_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &attempt.message_id,
                &number,
                &attempt.at,
                &attempt.status_code.map(i32::from),
                &attempt.error,
                &i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX),
            ],
        )
        .await?;
        tx.execute(
            "UPDATE webhook_outbox SET state = $2, next_attempt_at = $3, leased_by = NULL, \
             attempts = $4 WHERE id = $1",
            &[
                &attempt.message_id,
                &state.as_str(),
                &next_attempt_at,
                &number,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn outbox(&self, id: &VerificationId) -> Result<Vec<OutboxEntry>, StoreError> {
        let client = self.client().await?;
        let messages = client
            .query(
                "SELECT id, state, next_attempt_at FROM webhook_outbox \
                 WHERE verification_id = $1 ORDER BY created_at, seq",
                &[&id.as_str()],
            )
            .await?;
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let mid: String = m.try_get(0)?;
            let state: String = m.try_get(1)?;
            let attempts = client
                .query(
                    "SELECT number, at, status_code, error, duration_ms FROM webhook_attempts \
                     WHERE message_id = $1 ORDER BY number",
                    &[&mid],
                )
                .await?
                .iter()
                .map(|r| {
                    Ok(Attempt {
                        message_id: mid.clone(),
                        number: u32::try_from(r.try_get::<_, i64>(0)?).unwrap_or(u32::MAX),
                        at: r.try_get(1)?,
                        status_code: r
                            .try_get::<_, Option<i32>>(2)?
                            .and_then(|c| u16::try_from(c).ok()),
                        error: r.try_get(3)?,
                        duration_ms: u64::try_from(r.try_get::<_, i64>(4)?).unwrap_or(0),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            out.push(OutboxEntry {
                state: OutboxState::parse(&state).ok_or_else(|| corrupt("outbox state", &state))?,
                id: mid,
                verification_id: id.clone(),
                next_attempt_at: m.try_get(2)?,
                attempts,
            });
        }
        Ok(out)
    }

    async fn next_webhook_due(&self) -> Result<Option<UnixMs>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_one(
                "SELECT MIN(next_attempt_at) FROM webhook_outbox WHERE state = 'pending' \
                 AND (leased_by IS NULL OR leased_by = $1)",
                &[&self.instance.as_str()],
            )
            .await?
            .try_get(0)?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    fn shared(&self) -> Option<&dyn SharedStore> {
        Some(self)
    }
}

#[async_trait]
impl SharedStore for PgStore {
    fn instance(&self) -> &InstanceId {
        &self.instance
    }

    async fn heartbeat(&self, now: UnixMs) -> Result<Beat, StoreError> {
        let client = self.client().await?;
        let me = self.instance.as_str();
        let alive = client
            .execute(
                "UPDATE instances SET last_seen = $2 WHERE id = $1",
                &[&me, &now],
            )
            .await?;
        if alive == 1 {
            return Ok(Beat::Alive);
        }
        client
            .execute(
                "INSERT INTO instances (id, started_at, last_seen) VALUES ($1, $2, $2) \
                 ON CONFLICT (id) DO UPDATE SET last_seen = EXCLUDED.last_seen",
                &[&me, &now],
            )
            .await?;
        Ok(Beat::Rejoined)
    }

    async fn take_over(&self, dead_before: UnixMs, now: UnixMs) -> Result<TakeOver, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // SKIP LOCKED: survivors running this at once each take different dead instances.
        let dead: Vec<String> = tx
            .query(
                "SELECT id FROM instances WHERE last_seen < $1 AND id <> $2 \
                 FOR UPDATE SKIP LOCKED",
                &[&dead_before, &self.instance.as_str()],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        // Their live calls, and live calls whose instance is gone altogether (left without
        // settling them).
        let live = tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM verifications v WHERE status IN {LIVE} \
                     AND (owner = ANY($1) OR owner IS NULL \
                       OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = v.owner)) \
                     FOR UPDATE SKIP LOCKED"
                ),
                &[&dead],
            )
            .await?;
        let mut calls_failed = Vec::with_capacity(live.len());
        for row in &live {
            let v = rows::verification(row)?;
            if complete_in(&tx, self.payload, v.id.as_str(), &lost(&v, now), now, false)
                .await?
                .is_some()
            {
                calls_failed.push(v.id);
            }
        }
        // Calls that had decided and were closing when their instance died: gone too.
        let lines_freed = tx
            .execute(
                "UPDATE verifications v SET line_held = FALSE WHERE line_held \
                 AND (owner = ANY($1) OR owner IS NULL \
                   OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = v.owner))",
                &[&dead],
            )
            .await?;
        if lines_freed > 0 {
            tx.execute(&format!("SELECT pg_notify('{}', '')", listen::QUEUE), &[])
                .await?;
        }
        let webhooks_released = tx
            .execute(
                "UPDATE webhook_outbox SET leased_by = NULL, next_attempt_at = $2 \
                 WHERE state = 'pending' AND leased_by IS NOT NULL \
                 AND (leased_by = ANY($1) \
                   OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = leased_by))",
                &[&dead, &now],
            )
            .await?;
        if webhooks_released > 0 {
            tx.execute(&format!("SELECT pg_notify('{}', '')", listen::OUTBOX), &[])
                .await?;
        }
        tx.execute("DELETE FROM instances WHERE id = ANY($1)", &[&dead])
            .await?;
        tx.commit().await?;
        Ok(TakeOver {
            instances: dead.into_iter().map(InstanceId::from_stored).collect(),
            calls_failed,
            webhooks_released: usize::try_from(webhooks_released).unwrap_or(usize::MAX),
        })
    }

    async fn leave(&self, now: UnixMs) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let me = self.instance.as_str();
        let released = tx
            .execute(
                "UPDATE webhook_outbox SET leased_by = NULL, next_attempt_at = $2 \
                 WHERE state = 'pending' AND leased_by = $1",
                &[&me, &now],
            )
            .await?;
        if released > 0 {
            tx.execute(&format!("SELECT pg_notify('{}', '')", listen::OUTBOX), &[])
                .await?;
        }
        tx.execute("DELETE FROM instances WHERE id = $1", &[&me])
            .await?;
        tx.commit().await?;
        tracing::info!(instance = %self.instance, "left the cluster");
        Ok(())
    }

    async fn request_hang_up(&self, id: &VerificationId) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let sent = client
            .query(
                &format!(
                    "SELECT pg_notify('{}' || owner, id) FROM verifications \
                     WHERE id = $1 AND status IN {LIVE} AND owner IS NOT NULL",
                    listen::HANGUP_PREFIX
                ),
                &[&id.as_str()],
            )
            .await?;
        Ok(!sent.is_empty())
    }

    async fn completed_since(&self, since: UnixMs) -> Result<Vec<VerificationId>, StoreError> {
        let client = self.client().await?;
        client
            .query(
                "SELECT id FROM verifications WHERE status = 'completed' \
                 AND completed_at >= $1 ORDER BY completed_at LIMIT $2",
                &[&since, &CATCH_UP_MAX],
            )
            .await?
            .iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                VerificationId::parse(&id).ok_or_else(|| corrupt("id", &id))
            })
            .collect()
    }

    async fn listen(&self) -> Result<Listener, StoreError> {
        listen::listen(&self.pg, &self.instance).await
    }
}
