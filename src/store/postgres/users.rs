//! [`Directory`] for the shared PostgreSQL store: users, methods, verifications by user,
//! hosted prompts and the push method's enrolments and requests, safe with any number of
//! instances on one database.
//!
//! What SQLite gets from its single writer is held here by row locks: a verification is locked
//! (`SELECT … FOR UPDATE`) before anything decides on it, always before its method (so two
//! transactions never wait on each other in a circle); a user's row is locked while the order
//! of its methods changes; a code step, a failure count and a prompt token are changed by
//! conditional `UPDATE`s that a concurrent transaction re-checks after the first commits (so
//! are a push enrolment token and a push request's answer). A call's instance is recorded in
//! `owner`: after a switch away from a call, the next phone attempt waits until that call
//! reported its end (or its instance is gone), wherever it ran.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use flow::{CallResult, TimelineEntry, TimelineEvent};
use tokio_postgres::{Row, Transaction};

use super::rows::{self, COLUMNS, corrupt};
use super::{
    PgStore, completed_in, fetch, listen, lock_key, quota_reached, quota_take, timeline_json,
};
use crate::store::users::{
    Awaiting, CodeConfirmed, CodeRejected, Directory, PromptOpened, PushAnswered, PushRegistered,
    Switched,
};
use crate::store::*;
use crate::user::{
    Method, MethodAttempt, MethodDetail, MethodId, MethodKind, MethodPatch, MethodStatus,
    NewMethod, NewPrompt, NewUser, NewUserVerification, Prompt, PushDevice, PushRequest,
    PushSubscription, SealedSecret, User, UserId,
};

const USER_COLUMNS: &str = "id, client, external_id, display_name, created_at";
const METHOD_COLUMNS: &str = "id, user_id, kind, status, label, position, destination, \
    extension, secret, last_code_step, failed_codes, locked_until, created_at, confirmed_at, \
    device_key, push_endpoint, push_p256dh, push_auth";
const PUSH_REQUEST_COLUMNS: &str =
    "verification_id, method_id, nonce, number, choices, created_at, expires_at, answered_at";
const PROMPT_COLUMNS: &str = "verification_id, client, return_url, token_expires_at, \
    token_used_at, session_hash, csrf_hash, session_expires_at";

/// A user from a row selected with [`USER_COLUMNS`].
fn user(row: &Row) -> Result<User, StoreError> {
    let id: String = row.try_get(0)?;
    Ok(User {
        id: UserId::parse(&id).ok_or_else(|| corrupt("user id", &id))?,
        client: row.try_get(1)?,
        external_id: row.try_get(2)?,
        display_name: row.try_get(3)?,
        created_at: row.try_get(4)?,
    })
}

/// A method from a row selected with [`METHOD_COLUMNS`].
fn method(row: &Row) -> Result<Method, StoreError> {
    let id: String = row.try_get(0)?;
    let user_id: String = row.try_get(1)?;
    let kind: String = row.try_get(2)?;
    let status: String = row.try_get(3)?;
    let position: i64 = row.try_get(5)?;
    let destination: Option<String> = row.try_get(6)?;
    let secret: Option<Vec<u8>> = row.try_get(8)?;
    let last_code_step: Option<i64> = row.try_get(9)?;
    let failed_codes: i64 = row.try_get(10)?;
    let kind = MethodKind::parse(&kind).ok_or_else(|| corrupt("method kind", &kind))?;
    let detail = match kind {
        MethodKind::Phone => MethodDetail::Phone {
            destination: Destination::from_stored(
                destination
                    .as_deref()
                    .ok_or_else(|| corrupt("method", "phone without number"))?,
            ),
            extension: row.try_get(7)?,
        },
        MethodKind::AppCode => MethodDetail::AppCode {
            secret: SealedSecret(
                secret.ok_or_else(|| corrupt("method", "app_code without secret"))?,
            ),
        },
        MethodKind::Push => {
            let device_key: Option<Vec<u8>> = row.try_get(14)?;
            let endpoint: Option<String> = row.try_get(15)?;
            let p256dh: Option<Vec<u8>> = row.try_get(16)?;
            let auth: Option<Vec<u8>> = row.try_get(17)?;
            MethodDetail::Push {
                device: device_key.map(|public_key| PushDevice {
                    public_key,
                    subscription: match (endpoint, p256dh, auth) {
                        (Some(endpoint), Some(p256dh), Some(auth)) => Some(PushSubscription {
                            endpoint,
                            p256dh,
                            auth,
                        }),
                        _ => None,
                    },
                }),
            }
        }
    };
    Ok(Method {
        id: MethodId::parse(&id).ok_or_else(|| corrupt("method id", &id))?,
        user_id: UserId::parse(&user_id).ok_or_else(|| corrupt("user id", &user_id))?,
        status: MethodStatus::parse(&status).ok_or_else(|| corrupt("method status", &status))?,
        label: row.try_get(4)?,
        position: u32::try_from(position).unwrap_or(u32::MAX),
        detail,
        last_code_step: last_code_step.and_then(|s| u64::try_from(s).ok()),
        failed_codes: u32::try_from(failed_codes).unwrap_or(u32::MAX),
        locked_until: row.try_get(11)?,
        created_at: row.try_get(12)?,
        confirmed_at: row.try_get(13)?,
    })
}

fn hash32(what: &'static str, bytes: Option<Vec<u8>>) -> Result<Option<[u8; 32]>, StoreError> {
    bytes
        .map(|b| <[u8; 32]>::try_from(b.as_slice()).map_err(|_| corrupt(what, "not 32 bytes")))
        .transpose()
}

/// A prompt from a row selected with [`PROMPT_COLUMNS`].
fn prompt(row: &Row) -> Result<Prompt, StoreError> {
    let vid: String = row.try_get(0)?;
    let used: Option<i64> = row.try_get(4)?;
    Ok(Prompt {
        verification_id: VerificationId::parse(&vid)
            .ok_or_else(|| corrupt("prompt verification id", &vid))?,
        client: row.try_get(1)?,
        return_url: row.try_get(2)?,
        token_expires_at: row.try_get(3)?,
        token_used: used.is_some(),
        session_hash: hash32("session hash", row.try_get(5)?)?,
        csrf_hash: hash32("csrf hash", row.try_get(6)?)?,
        session_expires_at: row.try_get(7)?,
    })
}

/// A push request from a row selected with [`PUSH_REQUEST_COLUMNS`].
fn push_request(row: &Row) -> Result<PushRequest, StoreError> {
    let vid: String = row.try_get(0)?;
    let mid: String = row.try_get(1)?;
    let number: i64 = row.try_get(3)?;
    let choices: String = row.try_get(4)?;
    let choices: [u8; 3] =
        serde_json::from_str(&choices).map_err(|e| corrupt("push choices", e))?;
    Ok(PushRequest {
        verification_id: VerificationId::parse(&vid)
            .ok_or_else(|| corrupt("push request id", &vid))?,
        method_id: MethodId::parse(&mid).ok_or_else(|| corrupt("push method id", &mid))?,
        nonce: row.try_get(2)?,
        number: u8::try_from(number).map_err(|e| corrupt("push number", e))?,
        choices,
        created_at: row.try_get(5)?,
        expires_at: row.try_get(6)?,
        answered_at: row.try_get(7)?,
    })
}

async fn fetch_push_request(
    tx: &impl GenericClient,
    id: &str,
) -> Result<Option<PushRequest>, StoreError> {
    tx.query_opt(
        &format!("SELECT {PUSH_REQUEST_COLUMNS} FROM push_requests WHERE verification_id = $1"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(push_request)
    .transpose()
}

async fn fetch_method(
    tx: &impl GenericClient,
    user: &str,
    id: &str,
) -> Result<Option<Method>, StoreError> {
    tx.query_opt(
        &format!("SELECT {METHOD_COLUMNS} FROM methods WHERE id = $1 AND user_id = $2"),
        &[&id, &user],
    )
    .await?
    .as_ref()
    .map(method)
    .transpose()
}

async fn fetch_methods(tx: &impl GenericClient, user: &str) -> Result<Vec<Method>, StoreError> {
    tx.query(
        &format!("SELECT {METHOD_COLUMNS} FROM methods WHERE user_id = $1 ORDER BY position, seq"),
        &[&user],
    )
    .await?
    .iter()
    .map(method)
    .collect()
}

/// Locks the user's row: changes to the set or order of a user's methods are serialized.
async fn lock_user(tx: &Transaction<'_>, user: &str) -> Result<(), StoreError> {
    tx.query_opt("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user])
        .await?;
    Ok(())
}

/// Writes positions 0, 1, 2… in the given order.
async fn renumber(tx: &Transaction<'_>, user: &str, ids: &[MethodId]) -> Result<(), StoreError> {
    let ids: Vec<&str> = ids.iter().map(MethodId::as_str).collect();
    tx.execute(
        "UPDATE methods SET position = array_position($2::TEXT[], id) - 1 \
         WHERE user_id = $1 AND id = ANY($2)",
        &[&user, &ids],
    )
    .await?;
    Ok(())
}

/// One verification, locked until the end of the transaction.
async fn fetch_locked(tx: &Transaction<'_>, id: &str) -> Result<Option<Verification>, StoreError> {
    tx.query_opt(
        &format!("SELECT {COLUMNS} FROM verifications WHERE id = $1 FOR UPDATE"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(rows::verification)
    .transpose()
}

fn attempts_json(attempts: &[MethodAttempt]) -> Result<String, StoreError> {
    serde_json::to_string(attempts).map_err(|e| corrupt("attempts", e))
}

/// Ends the current (last) attempt of `v` with `result` at `now`.
fn close_attempt(v: &mut Verification, result: CallResult, now: UnixMs) {
    if let Some(last) = v.attempts.last_mut()
        && last.ended_at.is_none()
    {
        last.ended_at = Some(now);
        last.result = Some(result);
    }
}

/// Marks the (locked) verification completed with `result` (it must be `awaiting_user`),
/// closes its attempt, queues its webhook and announces both at commit.
async fn complete_awaiting_in(
    tx: &Transaction<'_>,
    payload: PayloadFn,
    mut v: Verification,
    result: CallResult,
    now: UnixMs,
) -> Result<Option<Verification>, StoreError> {
    close_attempt(&mut v, result, now);
    let row = tx
        .query_opt(
            &format!(
                "UPDATE verifications SET status = 'completed', result = $2, completed_at = $3, \
                 updated_at = $3, attempts = $4, digits_tag = NULL \
                 WHERE id = $1 AND status = 'awaiting_user' RETURNING {COLUMNS}"
            ),
            &[
                &v.id.as_str(),
                &result.as_str(),
                &now,
                &attempts_json(&v.attempts)?,
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let done = rows::verification(&row)?;
    completed_in(tx, payload, &done, now).await?;
    Ok(Some(done))
}

/// Counts a wrong code against the method; locks it at `lock_after`. The first `UPDATE` holds
/// the method's row until commit, so concurrent failures count one after the other.
async fn record_failure_in(
    tx: &Transaction<'_>,
    id: &str,
    now: UnixMs,
    lock_after: u32,
    lock_ms: i64,
) -> Result<Option<UnixMs>, StoreError> {
    let failures: Option<i64> = tx
        .query_opt(
            "UPDATE methods SET failed_codes = failed_codes + 1 WHERE id = $1 \
             RETURNING failed_codes",
            &[&id],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    match failures {
        Some(n) if n >= i64::from(lock_after) => {
            let until = now.saturating_add(lock_ms);
            tx.execute(
                "UPDATE methods SET failed_codes = 0, locked_until = $2 WHERE id = $1",
                &[&id, &until],
            )
            .await?;
            Ok(Some(until))
        }
        _ => Ok(None),
    }
}

/// Ends a transaction that decided to change nothing more and returns `out`. Committed, not
/// dropped: a dropped transaction's rollback is sent without waiting, so its row locks would
/// linger a moment after the call returns (and a claim's `SKIP LOCKED` would skip the row).
async fn end<T>(tx: deadpool_postgres::Transaction<'_>, out: T) -> Result<T, StoreError> {
    tx.commit().await?;
    Ok(out)
}

/// Whether `v` waits for its current method `method`, a push.
fn awaits_push(v: &Verification, method: &MethodId) -> bool {
    v.status == Status::AwaitingUser
        && v.method
            .as_ref()
            .is_some_and(|m| m.id == *method && m.kind == MethodKind::Push)
}

/// Whether `v` is waiting for a code of `method`.
fn awaits_code(v: &Verification, method: &MethodId) -> bool {
    v.status == Status::AwaitingUser
        && v.method
            .as_ref()
            .is_some_and(|m| m.id == *method && m.kind == MethodKind::AppCode)
}

#[async_trait]
impl Directory for PgStore {
    async fn create_user(&self, new: NewUser) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!(
                    "INSERT INTO users (id, client, external_id, display_name, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (client, external_id) DO NOTHING \
                     RETURNING {USER_COLUMNS}"
                ),
                &[
                    &new.id.as_str(),
                    &new.client,
                    &new.external_id,
                    &new.display_name,
                    &new.created_at,
                ],
            )
            .await?
            .as_ref()
            .map(user)
            .transpose()
    }

    async fn user(&self, client_name: &str, id: &UserId) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND client = $2"),
                &[&id.as_str(), &client_name],
            )
            .await?
            .as_ref()
            .map(user)
            .transpose()
    }

    async fn user_by_external_id(
        &self,
        client_name: &str,
        external_id: &str,
    ) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE client = $1 AND external_id = $2"),
                &[&client_name, &external_id],
            )
            .await?
            .as_ref()
            .map(user)
            .transpose()
    }

    async fn delete_user(&self, client_name: &str, id: &UserId) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM users WHERE id = $1 AND client = $2 FOR UPDATE",
                &[&id.as_str(), &client_name],
            )
            .await?
            .is_some();
        if exists {
            tx.execute("DELETE FROM methods WHERE user_id = $1", &[&id.as_str()])
                .await?;
            tx.execute("DELETE FROM users WHERE id = $1", &[&id.as_str()])
                .await?;
        }
        tx.commit().await?;
        Ok(exists)
    }

    async fn add_method(&self, new: NewMethod, max: u32) -> Result<Option<Method>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let user = new.user_id.as_str();
        lock_user(&tx, user).await?;
        let count: i64 = tx
            .query_one("SELECT COUNT(*) FROM methods WHERE user_id = $1", &[&user])
            .await?
            .try_get(0)?;
        if count >= i64::from(max) {
            return end(tx, None).await;
        }
        let (destination, extension, secret) = match &new.detail {
            MethodDetail::Phone {
                destination,
                extension,
            } => (
                Some(destination.expose().to_owned()),
                extension.clone(),
                None,
            ),
            MethodDetail::AppCode { secret } => (None, None, Some(secret.0.clone())),
            // The device registers later, through its enrolment link.
            MethodDetail::Push { .. } => (None, None, None),
        };
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO methods (id, user_id, kind, status, label, position, \
                     destination, extension, secret, created_at, confirmed_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     RETURNING {METHOD_COLUMNS}"
                ),
                &[
                    &new.id.as_str(),
                    &user,
                    &new.detail.kind().as_str(),
                    &new.status.as_str(),
                    &new.label,
                    &count,
                    &destination,
                    &extension,
                    &secret,
                    &new.created_at,
                    &(new.status == MethodStatus::Active).then_some(new.created_at),
                ],
            )
            .await?;
        let m = method(&row)?;
        tx.commit().await?;
        Ok(Some(m))
    }

    async fn methods(&self, user: &UserId) -> Result<Vec<Method>, StoreError> {
        let client = self.client().await?;
        fetch_methods(&client, user.as_str()).await
    }

    async fn method(&self, user: &UserId, id: &MethodId) -> Result<Option<Method>, StoreError> {
        let client = self.client().await?;
        fetch_method(&client, user.as_str(), id.as_str()).await
    }

    async fn update_method(
        &self,
        user: &UserId,
        id: &MethodId,
        patch: MethodPatch,
    ) -> Result<Option<Method>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_user(&tx, user.as_str()).await?;
        if fetch_method(&tx, user.as_str(), id.as_str())
            .await?
            .is_none()
        {
            return end(tx, None).await;
        }
        if let Some(label) = &patch.label {
            tx.execute(
                "UPDATE methods SET label = $2 WHERE id = $1",
                &[&id.as_str(), label],
            )
            .await?;
        }
        if let Some(position) = patch.position {
            let mut order: Vec<MethodId> = fetch_methods(&tx, user.as_str())
                .await?
                .into_iter()
                .map(|m| m.id)
                .filter(|m| m != id)
                .collect();
            let at = usize::try_from(position)
                .unwrap_or(usize::MAX)
                .min(order.len());
            order.insert(at, id.clone());
            renumber(&tx, user.as_str(), &order).await?;
        }
        let m = fetch_method(&tx, user.as_str(), id.as_str()).await?;
        tx.commit().await?;
        Ok(m)
    }

    async fn delete_method(&self, user: &UserId, id: &MethodId) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_user(&tx, user.as_str()).await?;
        let deleted = tx
            .execute(
                "DELETE FROM methods WHERE id = $1 AND user_id = $2",
                &[&id.as_str(), &user.as_str()],
            )
            .await?;
        let order: Vec<MethodId> = fetch_methods(&tx, user.as_str())
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect();
        renumber(&tx, user.as_str(), &order).await?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn activate_method(
        &self,
        user: &UserId,
        id: &MethodId,
        step: u64,
        now: UnixMs,
    ) -> Result<Option<Method>, StoreError> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let client = self.client().await?;
        // One statement: a second activation waits for the first and then finds it active.
        client
            .query_opt(
                &format!(
                    "UPDATE methods SET status = 'active', confirmed_at = $3, \
                     last_code_step = $4, failed_codes = 0, locked_until = NULL \
                     WHERE id = $1 AND user_id = $2 AND status = 'pending' \
                     RETURNING {METHOD_COLUMNS}"
                ),
                &[&id.as_str(), &user.as_str(), &now, &step],
            )
            .await?
            .as_ref()
            .map(method)
            .transpose()
    }

    async fn record_code_failure(
        &self,
        id: &MethodId,
        now: UnixMs,
        lock_after: u32,
        lock_ms: i64,
    ) -> Result<Option<UnixMs>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let locked = record_failure_in(&tx, id.as_str(), now, lock_after, lock_ms).await?;
        tx.commit().await?;
        Ok(locked)
    }

    async fn sealed_secret_sample(&self) -> Result<Option<(MethodId, SealedSecret)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, secret FROM methods WHERE secret IS NOT NULL \
                 ORDER BY created_at DESC, seq DESC LIMIT 1",
                &[],
            )
            .await?;
        row.map(|r| {
            let id: String = r.try_get(0)?;
            Ok((
                MethodId::parse(&id).ok_or_else(|| corrupt("method id", &id))?,
                SealedSecret(r.try_get(1)?),
            ))
        })
        .transpose()
    }

    async fn create_user_verification(
        &self,
        new: NewUserVerification,
        idempotency: Option<IdempotencyKey>,
        quotas: &[Quota],
    ) -> Result<Created, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(key) = &idempotency {
            // The same lock as `Store::create`: one key, one verification, on any instance.
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
                    return end(tx, Created::IdempotencyConflict).await;
                }
                let v = fetch(&tx, &vid)
                    .await?
                    .ok_or_else(|| corrupt("idempotency key", "points to nothing"))?;
                return end(tx, Created::Replayed(v)).await;
            }
        }
        if let Some(limited) = quota_reached(&tx, quotas, new.created_at).await? {
            return end(tx, Created::Limited(limited)).await;
        }
        quota_take(&tx, quotas, new.created_at).await?;
        let (status, destination, extension) = match &new.method.detail {
            MethodDetail::Phone {
                destination,
                extension,
            } => (
                Status::Queued,
                Some(destination.expose().to_owned()),
                extension.clone(),
            ),
            MethodDetail::AppCode { .. } | MethodDetail::Push { .. } => {
                (Status::AwaitingUser, None, None)
            }
        };
        let attempts = vec![MethodAttempt {
            method: new.method.reference(),
            started_at: new.created_at,
            ended_at: None,
            result: None,
            wrong_codes: 0,
            timeline: Vec::new(),
        }];
        let metadata = new
            .metadata
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| corrupt("metadata", e))?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO verifications (id, client, destination, extension, mode, \
                     language, callback_url, metadata, status, timeline, created_at, \
                     updated_at, user_id, method_id, method_type, attempts) \
                     VALUES ($1, $2, $3, $4, 'standard', $5, $6, $7, $8, '[]', $9, $9, $10, \
                     $11, $12, $13) RETURNING {COLUMNS}"
                ),
                &[
                    &new.id.as_str(),
                    &new.client,
                    &destination,
                    &extension,
                    &new.language,
                    &new.callback_url,
                    &metadata,
                    &status.as_str(),
                    &new.created_at,
                    &new.user_id.as_str(),
                    &new.method.id.as_str(),
                    &new.method.kind().as_str(),
                    &attempts_json(&attempts)?,
                ],
            )
            .await?;
        let v = rows::verification(&row)?;
        if status == Status::Queued {
            tx.execute(&format!("SELECT pg_notify('{}', '')", listen::QUEUE), &[])
                .await?;
        }
        if let Some(key) = &idempotency {
            tx.execute(
                "INSERT INTO idempotency_keys \
                 (client, key, fingerprint, verification_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &new.client,
                    &key.key,
                    &key.fingerprint,
                    &new.id.as_str(),
                    &new.created_at,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Created::New(v))
    }

    async fn confirm_code(
        &self,
        id: &VerificationId,
        method: &MethodId,
        step: u64,
        now: UnixMs,
    ) -> Result<CodeConfirmed, StoreError> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(v) = fetch_locked(&tx, id.as_str())
            .await?
            .filter(|v| awaits_code(v, method))
        else {
            return end(tx, CodeConfirmed::NotAwaiting).await;
        };
        // RFC 6238 §5.2: a verifier must not accept a code (time step) twice. A concurrent
        // confirmation of the same method (another verification, another instance) waits on
        // the method's row and then re-checks the step against the one just accepted.
        let fresh = tx
            .execute(
                "UPDATE methods SET last_code_step = $2, failed_codes = 0, locked_until = NULL \
                 WHERE id = $1 AND status = 'active' \
                 AND (last_code_step IS NULL OR last_code_step < $2)",
                &[&method.as_str(), &step],
            )
            .await?;
        if fresh == 0 {
            return end(tx, CodeConfirmed::Replayed).await;
        }
        let done = complete_awaiting_in(&tx, self.payload, v, CallResult::Confirmed, now)
            .await?
            .ok_or_else(|| corrupt("verification", "changed in transaction"))?;
        tx.commit().await?;
        Ok(CodeConfirmed::Confirmed(Box::new(done)))
    }

    async fn reject_code(
        &self,
        id: &VerificationId,
        method: &MethodId,
        now: UnixMs,
        max_wrong: u32,
        lock_after: u32,
        lock_ms: i64,
    ) -> Result<CodeRejected, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The verification first, then the method: the order `confirm_code` locks them in.
        let v = fetch_locked(&tx, id.as_str()).await?;
        let locked_until =
            record_failure_in(&tx, method.as_str(), now, lock_after, lock_ms).await?;
        let verification = match v.filter(|v| awaits_code(v, method)) {
            None => None,
            Some(mut v) => {
                let wrong = match v.attempts.last_mut() {
                    Some(last) => {
                        last.wrong_codes = last.wrong_codes.saturating_add(1);
                        last.wrong_codes
                    }
                    None => max_wrong,
                };
                if wrong >= max_wrong {
                    complete_awaiting_in(&tx, self.payload, v, CallResult::WrongDigits, now).await?
                } else {
                    tx.query_opt(
                        &format!(
                            "UPDATE verifications SET attempts = $2, updated_at = $3 \
                             WHERE id = $1 RETURNING {COLUMNS}"
                        ),
                        &[&id.as_str(), &attempts_json(&v.attempts)?, &now],
                    )
                    .await?
                    .as_ref()
                    .map(rows::verification)
                    .transpose()?
                }
            }
        };
        tx.commit().await?;
        Ok(CodeRejected {
            verification,
            locked_until,
        })
    }

    async fn switch_method(
        &self,
        id: &VerificationId,
        client_name: &str,
        to: &Method,
        now: UnixMs,
    ) -> Result<Switched, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Locked: a claim skips it, a call's completion waits and then finds it switched
        // (`complete_in` completes only a queued or live verification).
        let Some(mut v) = fetch_locked(&tx, id.as_str())
            .await?
            .filter(|v| v.client == client_name && v.user_id.as_ref() == Some(&to.user_id))
        else {
            return end(tx, Switched::NotFound).await;
        };
        if v.status == Status::Completed {
            return end(tx, Switched::Completed(v)).await;
        }
        let was_in_call = v.status.is_live();
        let call_timeline = std::mem::take(&mut v.timeline);
        let since_call = v
            .call_started_at
            .map_or(0, |start| u64::try_from(now - start).unwrap_or(0));
        close_attempt(&mut v, CallResult::Cancelled, now);
        if let Some(last) = v.attempts.last_mut()
            && last.method.kind == MethodKind::Phone
        {
            last.timeline = call_timeline;
            last.timeline.push(TimelineEntry {
                at_ms: since_call,
                event: TimelineEvent::Outcome {
                    result: CallResult::Cancelled,
                },
            });
        }
        v.attempts.push(MethodAttempt {
            method: to.reference(),
            started_at: now,
            ended_at: None,
            result: None,
            wrong_codes: 0,
            timeline: Vec::new(),
        });
        // `owner` stays: it names the instance whose call may still be up, which the next
        // phone attempt waits for.
        let row = tx
            .query_one(
                &format!(
                    "UPDATE verifications SET status = 'awaiting_user', destination = NULL, \
                     extension = NULL, timeline = '[]', call_started_at = NULL, \
                     dtmf_method = NULL, method_id = $2, method_type = $3, attempts = $4, \
                     updated_at = $5 WHERE id = $1 RETURNING {COLUMNS}"
                ),
                &[
                    &id.as_str(),
                    &to.id.as_str(),
                    &to.kind().as_str(),
                    &attempts_json(&v.attempts)?,
                    &now,
                ],
            )
            .await?;
        let switched = rows::verification(&row)?;
        if was_in_call {
            // The call runs on its owner, maybe another instance: ask it to hang up (as
            // `SharedStore::request_hang_up` does; the owner hangs up a call it is placing).
            tx.execute(
                &format!(
                    "SELECT pg_notify('{}' || owner, id) FROM verifications \
                     WHERE id = $1 AND owner IS NOT NULL",
                    listen::HANGUP_PREFIX
                ),
                &[&id.as_str()],
            )
            .await?;
        }
        // Long-polls and prompt pages on every instance re-read the status (the listener
        // announces the id as the API's own switch does locally).
        tx.execute(
            &format!("SELECT pg_notify('{}', $1)", listen::COMPLETED),
            &[&id.as_str()],
        )
        .await?;
        tx.commit().await?;
        Ok(Switched::Switched {
            verification: switched,
            was_in_call,
        })
    }

    async fn start_phone_attempt(
        &self,
        id: &VerificationId,
        now: UnixMs,
    ) -> Result<Option<Verification>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(v) = fetch_locked(&tx, id.as_str()).await?.filter(|v| {
            v.status == Status::AwaitingUser
                && v.method
                    .as_ref()
                    .is_some_and(|m| m.kind == MethodKind::Phone)
        }) else {
            return end(tx, None).await;
        };
        // A call of this verification that may still be up (switched away from, on any
        // instance) has not reported its end: wait for it (its report clears `owner`), unless
        // its instance is gone.
        let call_up = tx
            .query_opt(
                "SELECT 1 FROM verifications v WHERE id = $1 AND owner IS NOT NULL \
                 AND EXISTS (SELECT 1 FROM instances i WHERE i.id = v.owner)",
                &[&id.as_str()],
            )
            .await?
            .is_some();
        if call_up {
            return end(tx, None).await;
        }
        let method = match (&v.user_id, &v.method) {
            (Some(user), Some(m)) => fetch_method(&tx, user.as_str(), m.id.as_str()).await?,
            _ => None,
        };
        let out = match method {
            Some(Method {
                status: MethodStatus::Active,
                detail:
                    MethodDetail::Phone {
                        destination,
                        extension,
                    },
                ..
            }) => {
                let row = tx
                    .query_opt(
                        &format!(
                            "UPDATE verifications SET status = 'queued', destination = $2, \
                             extension = $3, timeline = $4, updated_at = $5, owner = NULL \
                             WHERE id = $1 AND status = 'awaiting_user' RETURNING {COLUMNS}"
                        ),
                        &[
                            &id.as_str(),
                            &destination.expose(),
                            &extension,
                            &timeline_json(&[])?,
                            &now,
                        ],
                    )
                    .await?;
                tx.execute(&format!("SELECT pg_notify('{}', '')", listen::QUEUE), &[])
                    .await?;
                row.as_ref().map(rows::verification).transpose()?
            }
            // Deleted (or no longer usable) while the call before it hung up.
            _ => complete_awaiting_in(&tx, self.payload, v, CallResult::Failed, now).await?,
        };
        tx.commit().await?;
        Ok(out)
    }

    async fn awaiting(&self, limit: u32) -> Result<Vec<Awaiting>, StoreError> {
        let client = self.client().await?;
        client
            .query(
                "SELECT id, method_type, created_at FROM verifications \
                 WHERE status = 'awaiting_user' ORDER BY created_at, seq LIMIT $1",
                &[&i64::from(limit)],
            )
            .await?
            .iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                let kind: Option<String> = r.try_get(1)?;
                let kind = kind.unwrap_or_default();
                Ok(Awaiting {
                    id: VerificationId::parse(&id).ok_or_else(|| corrupt("id", &id))?,
                    kind: MethodKind::parse(&kind).ok_or_else(|| corrupt("method_type", &kind))?,
                    created_at: r.try_get(2)?,
                })
            })
            .collect()
    }

    async fn complete_awaiting(
        &self,
        id: &VerificationId,
        result: CallResult,
        now: UnixMs,
    ) -> Result<Option<Verification>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let done = match fetch_locked(&tx, id.as_str()).await? {
            Some(v) if v.status == Status::AwaitingUser => {
                complete_awaiting_in(&tx, self.payload, v, result, now).await?
            }
            _ => None,
        };
        tx.commit().await?;
        Ok(done)
    }

    async fn create_prompt(&self, new: NewPrompt) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO signin_prompts \
                 (verification_id, client, return_url, token_hash, token_expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &new.verification_id.as_str(),
                    &new.client,
                    &new.return_url,
                    &new.token_hash.as_slice(),
                    &new.token_expires_at,
                ],
            )
            .await?;
        Ok(())
    }

    async fn open_prompt(
        &self,
        token_hash: [u8; 32],
        session_hash: [u8; 32],
        csrf_hash: [u8; 32],
        now: UnixMs,
        session_expires_at: UnixMs,
    ) -> Result<PromptOpened, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Locked: a second opening (another instance) waits, then sees the token used.
        let Some(row) = tx
            .query_opt(
                &format!(
                    "SELECT {PROMPT_COLUMNS} FROM signin_prompts WHERE token_hash = $1 \
                     FOR UPDATE"
                ),
                &[&token_hash.as_slice()],
            )
            .await?
        else {
            return end(tx, PromptOpened::Unknown).await;
        };
        let found = prompt(&row)?;
        if found.token_used {
            return end(tx, PromptOpened::AlreadyUsed).await;
        }
        if now >= found.token_expires_at {
            return end(tx, PromptOpened::Expired).await;
        }
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE signin_prompts SET token_used_at = $2, session_hash = $3, \
                     csrf_hash = $4, session_expires_at = $5 \
                     WHERE verification_id = $1 AND token_used_at IS NULL \
                     RETURNING {PROMPT_COLUMNS}"
                ),
                &[
                    &found.verification_id.as_str(),
                    &now,
                    &session_hash.as_slice(),
                    &csrf_hash.as_slice(),
                    &session_expires_at,
                ],
            )
            .await?;
        let Some(row) = row else {
            return end(tx, PromptOpened::AlreadyUsed).await;
        };
        let opened = prompt(&row)?;
        tx.commit().await?;
        Ok(PromptOpened::Opened(opened))
    }

    async fn method_by_id(&self, id: &MethodId) -> Result<Option<Method>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("SELECT {METHOD_COLUMNS} FROM methods WHERE id = $1"),
                &[&id.as_str()],
            )
            .await?
            .as_ref()
            .map(method)
            .transpose()
    }

    async fn create_push_enrolment(
        &self,
        method: &MethodId,
        token_hash: [u8; 32],
        expires_at: UnixMs,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO push_enrolments (token_hash, method_id, expires_at) \
                 VALUES ($1, $2, $3)",
                &[&token_hash.as_slice(), &method.as_str(), &expires_at],
            )
            .await?;
        Ok(())
    }

    async fn register_push_device(
        &self,
        token_hash: [u8; 32],
        device: PushDevice,
        now: UnixMs,
    ) -> Result<PushRegistered, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(method_id) = tx
            .query_opt(
                "SELECT method_id FROM push_enrolments WHERE token_hash = $1",
                &[&token_hash.as_slice()],
            )
            .await?
            .map(|r| r.try_get::<_, String>(0))
            .transpose()?
        else {
            return end(tx, PushRegistered::Unknown).await;
        };
        // The method's row before the token's: the order a deletion of the method (or its
        // user) takes them in, its cascade reaching the token last. A method deleted
        // meanwhile took its token with it.
        if tx
            .query_opt(
                "SELECT 1 FROM methods WHERE id = $1 FOR UPDATE",
                &[&method_id],
            )
            .await?
            .is_none()
        {
            return end(tx, PushRegistered::Unknown).await;
        }
        // Single use: a concurrent registration with the same token waits on this row, then
        // re-checks `used_at` and finds it set.
        let spent = tx
            .execute(
                "UPDATE push_enrolments SET used_at = $2 \
                 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
                &[&token_hash.as_slice(), &now],
            )
            .await?;
        if spent == 0 {
            let state = tx
                .query_opt(
                    "SELECT used_at IS NOT NULL FROM push_enrolments WHERE token_hash = $1",
                    &[&token_hash.as_slice()],
                )
                .await?
                .map(|r| r.try_get::<_, bool>(0))
                .transpose()?;
            let out = match state {
                None => PushRegistered::Unknown,
                Some(true) => PushRegistered::AlreadyUsed,
                Some(false) => PushRegistered::Expired,
            };
            return end(tx, out).await;
        }
        let sub = device.subscription.as_ref();
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE methods SET status = 'active', confirmed_at = $2, device_key = $3, \
                     push_endpoint = $4, push_p256dh = $5, push_auth = $6 \
                     WHERE id = $1 AND kind = 'push' AND status = 'pending' \
                     RETURNING {METHOD_COLUMNS}"
                ),
                &[
                    &method_id,
                    &now,
                    &device.public_key,
                    &sub.map(|s| s.endpoint.as_str()),
                    &sub.map(|s| s.p256dh.as_slice()),
                    &sub.map(|s| s.auth.as_slice()),
                ],
            )
            .await?;
        let out = match row {
            Some(row) => PushRegistered::Registered(Box::new(method(&row)?)),
            // The token is spent either way: a method already active keeps its device.
            None => PushRegistered::AlreadyUsed,
        };
        tx.commit().await?;
        Ok(out)
    }

    async fn drop_push_subscription(&self, method: &MethodId) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE methods SET push_endpoint = NULL, push_p256dh = NULL, push_auth = NULL \
                 WHERE id = $1",
                &[&method.as_str()],
            )
            .await?;
        Ok(())
    }

    async fn create_push_request(&self, request: PushRequest) -> Result<(), StoreError> {
        let choices =
            serde_json::to_string(&request.choices).map_err(|e| corrupt("push choices", e))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The verification first, as `answer_push` locks it before the request's row.
        fetch_locked(&tx, request.verification_id.as_str()).await?;
        tx.execute(
            &format!(
                "INSERT INTO push_requests ({PUSH_REQUEST_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL) \
                 ON CONFLICT (verification_id) DO UPDATE SET method_id = EXCLUDED.method_id, \
                 nonce = EXCLUDED.nonce, number = EXCLUDED.number, choices = EXCLUDED.choices, \
                 created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at, \
                 answered_at = NULL"
            ),
            &[
                &request.verification_id.as_str(),
                &request.method_id.as_str(),
                &request.nonce,
                &i64::from(request.number),
                &choices,
                &request.created_at,
                &request.expires_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn push_request(&self, id: &VerificationId) -> Result<Option<PushRequest>, StoreError> {
        let client = self.client().await?;
        fetch_push_request(&client, id.as_str()).await
    }

    async fn open_push_requests(
        &self,
        method: &MethodId,
        now: UnixMs,
        limit: u32,
    ) -> Result<Vec<PushRequest>, StoreError> {
        let client = self.client().await?;
        let columns = PUSH_REQUEST_COLUMNS
            .split(", ")
            .map(|c| format!("p.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        client
            .query(
                &format!(
                    "SELECT {columns} FROM push_requests p \
                     JOIN verifications v ON v.id = p.verification_id \
                     WHERE p.method_id = $1 AND p.answered_at IS NULL AND p.expires_at > $2 \
                     AND v.status = 'awaiting_user' AND v.method_id = $1 \
                     ORDER BY p.created_at, p.verification_id LIMIT $3"
                ),
                &[&method.as_str(), &now, &i64::from(limit)],
            )
            .await?
            .iter()
            .map(push_request)
            .collect()
    }

    async fn answer_push(
        &self,
        id: &VerificationId,
        method: &MethodId,
        nonce: &str,
        result: CallResult,
        now: UnixMs,
    ) -> Result<PushAnswered, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The verification first (the order every directory method locks in): a concurrent
        // answer (another instance) waits here, then finds the request answered.
        let v = fetch_locked(&tx, id.as_str()).await?;
        let Some(request) = fetch_push_request(&tx, id.as_str())
            .await?
            .filter(|r| r.method_id == *method && r.nonce == nonce)
        else {
            return end(tx, PushAnswered::NotAwaiting).await;
        };
        if request.answered_at.is_some() {
            return end(tx, PushAnswered::AlreadyAnswered).await;
        }
        if now >= request.expires_at {
            return end(tx, PushAnswered::Expired).await;
        }
        let Some(v) = v.filter(|v| awaits_push(v, method)) else {
            return end(tx, PushAnswered::NotAwaiting).await;
        };
        let spent = tx
            .execute(
                "UPDATE push_requests SET answered_at = $2 \
                 WHERE verification_id = $1 AND answered_at IS NULL",
                &[&id.as_str(), &now],
            )
            .await?;
        if spent == 0 {
            return end(tx, PushAnswered::AlreadyAnswered).await;
        }
        let done = complete_awaiting_in(&tx, self.payload, v, result, now)
            .await?
            .ok_or_else(|| corrupt("verification", "changed in transaction"))?;
        tx.commit().await?;
        Ok(PushAnswered::Completed(Box::new(done)))
    }

    async fn prompt_session(
        &self,
        id: &VerificationId,
        session_hash: [u8; 32],
        now: UnixMs,
    ) -> Result<Option<Prompt>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!(
                    "SELECT {PROMPT_COLUMNS} FROM signin_prompts WHERE verification_id = $1 \
                     AND session_hash = $2 AND session_expires_at > $3"
                ),
                &[&id.as_str(), &session_hash.as_slice(), &now],
            )
            .await?
            .as_ref()
            .map(prompt)
            .transpose()
    }
}
