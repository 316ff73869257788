//! [`Directory`] for the SQLite store: users, methods, verifications by user and hosted
//! prompts (tables from the last migration in `sqlite.rs`).

use async_trait::async_trait;
use flow::{CallResult, TimelineEntry, TimelineEvent};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::sqlite::{
    COLUMNS, corrupt, enqueue_webhook, fetch, quota_reached, quota_take, timeline_json,
};
use super::users::{Awaiting, CodeConfirmed, CodeRejected, Directory, PromptOpened, Switched};
use super::*;
use crate::user::{
    Method, MethodAttempt, MethodDetail, MethodId, MethodKind, MethodPatch, MethodStatus,
    NewMethod, NewPrompt, NewUser, NewUserVerification, Prompt, SealedSecret, User, UserId,
};

const USER_COLUMNS: &str = "id, client, external_id, display_name, created_at";
const METHOD_COLUMNS: &str = "id, user_id, kind, status, label, position, destination, \
    extension, secret, last_code_step, failed_codes, locked_until, created_at, confirmed_at";
const PROMPT_COLUMNS: &str = "verification_id, client, return_url, token_expires_at, \
    token_used_at, session_hash, csrf_hash, session_expires_at";

fn user_row(r: &Row<'_>) -> rusqlite::Result<(String, String, String, Option<String>, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_user(raw: (String, String, String, Option<String>, i64)) -> Result<User, StoreError> {
    let (id, client, external_id, display_name, created_at) = raw;
    Ok(User {
        id: UserId::parse(&id).ok_or_else(|| corrupt("user id", &id))?,
        client,
        external_id,
        display_name,
        created_at,
    })
}

fn fetch_user(conn: &Connection, client: &str, id: &str) -> Result<Option<User>, StoreError> {
    conn.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1 AND client = ?2"),
        params![id, client],
        user_row,
    )
    .optional()?
    .map(to_user)
    .transpose()
}

/// The raw columns of a method row.
struct RawMethod {
    id: String,
    user_id: String,
    kind: String,
    status: String,
    label: Option<String>,
    position: i64,
    destination: Option<String>,
    extension: Option<String>,
    secret: Option<Vec<u8>>,
    last_code_step: Option<i64>,
    failed_codes: i64,
    locked_until: Option<i64>,
    created_at: i64,
    confirmed_at: Option<i64>,
}

fn method_row(r: &Row<'_>) -> rusqlite::Result<RawMethod> {
    Ok(RawMethod {
        id: r.get(0)?,
        user_id: r.get(1)?,
        kind: r.get(2)?,
        status: r.get(3)?,
        label: r.get(4)?,
        position: r.get(5)?,
        destination: r.get(6)?,
        extension: r.get(7)?,
        secret: r.get(8)?,
        last_code_step: r.get(9)?,
        failed_codes: r.get(10)?,
        locked_until: r.get(11)?,
        created_at: r.get(12)?,
        confirmed_at: r.get(13)?,
    })
}

impl TryFrom<RawMethod> for Method {
    type Error = StoreError;

    fn try_from(r: RawMethod) -> Result<Method, StoreError> {
        let kind = MethodKind::parse(&r.kind).ok_or_else(|| corrupt("method kind", &r.kind))?;
        let detail = match kind {
            MethodKind::Phone => MethodDetail::Phone {
                destination: Destination::from_stored(
                    r.destination
                        .as_deref()
                        .ok_or_else(|| corrupt("method", "phone without number"))?,
                ),
                extension: r.extension,
            },
            MethodKind::AppCode => MethodDetail::AppCode {
                secret: SealedSecret(
                    r.secret
                        .ok_or_else(|| corrupt("method", "app_code without secret"))?,
                ),
            },
        };
        Ok(Method {
            id: MethodId::parse(&r.id).ok_or_else(|| corrupt("method id", &r.id))?,
            user_id: UserId::parse(&r.user_id).ok_or_else(|| corrupt("user id", &r.user_id))?,
            status: MethodStatus::parse(&r.status)
                .ok_or_else(|| corrupt("method status", &r.status))?,
            label: r.label,
            position: u32::try_from(r.position).unwrap_or(u32::MAX),
            detail,
            last_code_step: r.last_code_step.and_then(|s| u64::try_from(s).ok()),
            failed_codes: u32::try_from(r.failed_codes).unwrap_or(u32::MAX),
            locked_until: r.locked_until,
            created_at: r.created_at,
            confirmed_at: r.confirmed_at,
        })
    }
}

fn fetch_method(conn: &Connection, user: &str, id: &str) -> Result<Option<Method>, StoreError> {
    conn.query_row(
        &format!("SELECT {METHOD_COLUMNS} FROM methods WHERE id = ?1 AND user_id = ?2"),
        params![id, user],
        method_row,
    )
    .optional()?
    .map(Method::try_from)
    .transpose()
}

fn fetch_methods(conn: &Connection, user: &str) -> Result<Vec<Method>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {METHOD_COLUMNS} FROM methods WHERE user_id = ?1 ORDER BY position, rowid"
    ))?;
    let raws: Vec<RawMethod> = stmt
        .query_map([user], method_row)?
        .collect::<rusqlite::Result<_>>()?;
    raws.into_iter().map(Method::try_from).collect()
}

/// Writes positions 0, 1, 2… in the given order.
fn renumber(tx: &Transaction<'_>, ids: &[MethodId]) -> Result<(), StoreError> {
    for (i, id) in ids.iter().enumerate() {
        tx.execute(
            "UPDATE methods SET position = ?2 WHERE id = ?1",
            params![id.as_str(), i as i64],
        )?;
    }
    Ok(())
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

/// Marks the verification completed with `result` (it must be `awaiting_user`), closes its
/// attempt and queues its webhook.
fn complete_awaiting_in(
    tx: &Transaction<'_>,
    payload: PayloadFn,
    mut v: Verification,
    result: CallResult,
    now: UnixMs,
) -> Result<Option<Verification>, StoreError> {
    close_attempt(&mut v, result, now);
    let changed = tx.execute(
        "UPDATE verifications SET status = 'completed', result = ?2, completed_at = ?3, \
         updated_at = ?3, attempts = ?4, digits_tag = NULL \
         WHERE id = ?1 AND status = 'awaiting_user'",
        params![
            v.id.as_str(),
            result.as_str(),
            now,
            attempts_json(&v.attempts)?
        ],
    )?;
    if changed == 0 {
        return Ok(None);
    }
    let done = fetch(tx, v.id.as_str())?
        .ok_or_else(|| corrupt("verification", "vanished in transaction"))?;
    enqueue_webhook(tx, payload, &done, now)?;
    Ok(Some(done))
}

/// Counts a wrong code against the method; locks it at `lock_after`.
fn record_failure_in(
    tx: &Transaction<'_>,
    id: &str,
    now: UnixMs,
    lock_after: u32,
    lock_ms: i64,
) -> Result<Option<UnixMs>, StoreError> {
    let failures: Option<i64> = tx
        .query_row(
            "UPDATE methods SET failed_codes = failed_codes + 1 WHERE id = ?1 \
             RETURNING failed_codes",
            [id],
            |r| r.get(0),
        )
        .optional()?;
    match failures {
        Some(n) if n >= i64::from(lock_after) => {
            let until = now.saturating_add(lock_ms);
            tx.execute(
                "UPDATE methods SET failed_codes = 0, locked_until = ?2 WHERE id = ?1",
                params![id, until],
            )?;
            Ok(Some(until))
        }
        _ => Ok(None),
    }
}

/// The verification if it is waiting for a code of `method`.
fn awaiting_code(
    conn: &Connection,
    id: &str,
    method: &MethodId,
) -> Result<Option<Verification>, StoreError> {
    Ok(fetch(conn, id)?.filter(|v| {
        v.status == Status::AwaitingUser
            && v.method
                .as_ref()
                .is_some_and(|m| m.id == *method && m.kind == MethodKind::AppCode)
    }))
}

fn prompt_row(r: &Row<'_>) -> rusqlite::Result<RawPrompt> {
    Ok(RawPrompt {
        verification_id: r.get(0)?,
        client: r.get(1)?,
        return_url: r.get(2)?,
        token_expires_at: r.get(3)?,
        token_used_at: r.get(4)?,
        session_hash: r.get(5)?,
        csrf_hash: r.get(6)?,
        session_expires_at: r.get(7)?,
    })
}

struct RawPrompt {
    verification_id: String,
    client: String,
    return_url: String,
    token_expires_at: i64,
    token_used_at: Option<i64>,
    session_hash: Option<Vec<u8>>,
    csrf_hash: Option<Vec<u8>>,
    session_expires_at: Option<i64>,
}

fn hash32(what: &'static str, bytes: Option<Vec<u8>>) -> Result<Option<[u8; 32]>, StoreError> {
    bytes
        .map(|b| <[u8; 32]>::try_from(b.as_slice()).map_err(|_| corrupt(what, "not 32 bytes")))
        .transpose()
}

impl TryFrom<RawPrompt> for Prompt {
    type Error = StoreError;

    fn try_from(r: RawPrompt) -> Result<Prompt, StoreError> {
        Ok(Prompt {
            verification_id: VerificationId::parse(&r.verification_id)
                .ok_or_else(|| corrupt("prompt verification id", &r.verification_id))?,
            client: r.client,
            return_url: r.return_url,
            token_expires_at: r.token_expires_at,
            token_used: r.token_used_at.is_some(),
            session_hash: hash32("session hash", r.session_hash)?,
            csrf_hash: hash32("csrf hash", r.csrf_hash)?,
            session_expires_at: r.session_expires_at,
        })
    }
}

#[async_trait]
impl Directory for SqliteStore {
    async fn create_user(&self, new: NewUser) -> Result<Option<User>, StoreError> {
        self.run(move |conn| {
            let changed = conn.execute(
                "INSERT INTO users (id, client, external_id, display_name, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (client, external_id) DO NOTHING",
                params![
                    new.id.as_str(),
                    new.client,
                    new.external_id,
                    new.display_name,
                    new.created_at
                ],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            fetch_user(conn, &new.client, new.id.as_str())
        })
        .await
    }

    async fn user(&self, client: &str, id: &UserId) -> Result<Option<User>, StoreError> {
        let (client, id) = (client.to_owned(), id.clone());
        self.run(move |conn| fetch_user(conn, &client, id.as_str()))
            .await
    }

    async fn user_by_external_id(
        &self,
        client: &str,
        external_id: &str,
    ) -> Result<Option<User>, StoreError> {
        let (client, external_id) = (client.to_owned(), external_id.to_owned());
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE client = ?1 AND external_id = ?2"),
                params![client, external_id],
                user_row,
            )
            .optional()?
            .map(to_user)
            .transpose()
        })
        .await
    }

    async fn delete_user(&self, client: &str, id: &UserId) -> Result<bool, StoreError> {
        let (client, id) = (client.to_owned(), id.clone());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists = fetch_user(&tx, &client, id.as_str())?.is_some();
            if exists {
                tx.execute("DELETE FROM methods WHERE user_id = ?1", [id.as_str()])?;
                tx.execute("DELETE FROM users WHERE id = ?1", [id.as_str()])?;
            }
            tx.commit()?;
            Ok(exists)
        })
        .await
    }

    async fn add_method(&self, new: NewMethod, max: u32) -> Result<Option<Method>, StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM methods WHERE user_id = ?1",
                [new.user_id.as_str()],
                |r| r.get(0),
            )?;
            if count >= i64::from(max) {
                return Ok(None);
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
            };
            tx.execute(
                "INSERT INTO methods (id, user_id, kind, status, label, position, destination, \
                 extension, secret, created_at, confirmed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    new.id.as_str(),
                    new.user_id.as_str(),
                    new.detail.kind().as_str(),
                    new.status.as_str(),
                    new.label,
                    count,
                    destination,
                    extension,
                    secret,
                    new.created_at,
                    (new.status == MethodStatus::Active).then_some(new.created_at),
                ],
            )?;
            let m = fetch_method(&tx, new.user_id.as_str(), new.id.as_str())?
                .ok_or_else(|| corrupt("method", "vanished in transaction"))?;
            tx.commit()?;
            Ok(Some(m))
        })
        .await
    }

    async fn methods(&self, user: &UserId) -> Result<Vec<Method>, StoreError> {
        let user = user.clone();
        self.run(move |conn| fetch_methods(conn, user.as_str()))
            .await
    }

    async fn method(&self, user: &UserId, id: &MethodId) -> Result<Option<Method>, StoreError> {
        let (user, id) = (user.clone(), id.clone());
        self.run(move |conn| fetch_method(conn, user.as_str(), id.as_str()))
            .await
    }

    async fn update_method(
        &self,
        user: &UserId,
        id: &MethodId,
        patch: MethodPatch,
    ) -> Result<Option<Method>, StoreError> {
        let (user, id) = (user.clone(), id.clone());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if fetch_method(&tx, user.as_str(), id.as_str())?.is_none() {
                return Ok(None);
            }
            if let Some(label) = &patch.label {
                tx.execute(
                    "UPDATE methods SET label = ?2 WHERE id = ?1",
                    params![id.as_str(), label],
                )?;
            }
            if let Some(position) = patch.position {
                let mut order: Vec<MethodId> = fetch_methods(&tx, user.as_str())?
                    .into_iter()
                    .map(|m| m.id)
                    .filter(|m| *m != id)
                    .collect();
                let at = usize::try_from(position)
                    .unwrap_or(usize::MAX)
                    .min(order.len());
                order.insert(at, id.clone());
                renumber(&tx, &order)?;
            }
            let m = fetch_method(&tx, user.as_str(), id.as_str())?;
            tx.commit()?;
            Ok(m)
        })
        .await
    }

    async fn delete_method(&self, user: &UserId, id: &MethodId) -> Result<bool, StoreError> {
        let (user, id) = (user.clone(), id.clone());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let deleted = tx.execute(
                "DELETE FROM methods WHERE id = ?1 AND user_id = ?2",
                params![id.as_str(), user.as_str()],
            )?;
            let order: Vec<MethodId> = fetch_methods(&tx, user.as_str())?
                .into_iter()
                .map(|m| m.id)
                .collect();
            renumber(&tx, &order)?;
            tx.commit()?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn activate_method(
        &self,
        user: &UserId,
        id: &MethodId,
        step: u64,
        now: UnixMs,
    ) -> Result<Option<Method>, StoreError> {
        let (user, id) = (user.clone(), id.clone());
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx.execute(
                "UPDATE methods SET status = 'active', confirmed_at = ?3, last_code_step = ?4, \
                 failed_codes = 0, locked_until = NULL \
                 WHERE id = ?1 AND user_id = ?2 AND status = 'pending'",
                params![id.as_str(), user.as_str(), now, step],
            )?;
            let m = if changed == 0 {
                None
            } else {
                fetch_method(&tx, user.as_str(), id.as_str())?
            };
            tx.commit()?;
            Ok(m)
        })
        .await
    }

    async fn record_code_failure(
        &self,
        id: &MethodId,
        now: UnixMs,
        lock_after: u32,
        lock_ms: i64,
    ) -> Result<Option<UnixMs>, StoreError> {
        let id = id.clone();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let locked = record_failure_in(&tx, id.as_str(), now, lock_after, lock_ms)?;
            tx.commit()?;
            Ok(locked)
        })
        .await
    }

    async fn sealed_secret_sample(&self) -> Result<Option<(MethodId, SealedSecret)>, StoreError> {
        self.run(|conn| {
            let row: Option<(String, Vec<u8>)> = conn
                .query_row(
                    "SELECT id, secret FROM methods WHERE secret IS NOT NULL \
                     ORDER BY created_at DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            row.map(|(id, secret)| {
                Ok((
                    MethodId::parse(&id).ok_or_else(|| corrupt("method id", &id))?,
                    SealedSecret(secret),
                ))
            })
            .transpose()
        })
        .await
    }

    async fn create_user_verification(
        &self,
        new: NewUserVerification,
        idempotency: Option<IdempotencyKey>,
        quotas: &[Quota],
    ) -> Result<Created, StoreError> {
        let quotas = quotas.to_vec();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(key) = &idempotency {
                let earlier: Option<(String, String)> = tx
                    .query_row(
                        "SELECT fingerprint, verification_id FROM idempotency_keys \
                         WHERE client = ?1 AND key = ?2",
                        params![new.client, key.key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((fingerprint, vid)) = earlier {
                    if fingerprint != key.fingerprint {
                        return Ok(Created::IdempotencyConflict);
                    }
                    let v = fetch(&tx, &vid)?
                        .ok_or_else(|| corrupt("idempotency key", "points to nothing"))?;
                    return Ok(Created::Replayed(v));
                }
            }
            if let Some(limited) = quota_reached(&tx, &quotas, new.created_at)? {
                return Ok(Created::Limited(limited));
            }
            quota_take(&tx, &quotas, new.created_at)?;
            let (status, destination, extension) = match &new.method.detail {
                MethodDetail::Phone {
                    destination,
                    extension,
                } => (
                    Status::Queued,
                    Some(destination.expose().to_owned()),
                    extension.clone(),
                ),
                MethodDetail::AppCode { .. } => (Status::AwaitingUser, None, None),
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
            tx.execute(
                &format!(
                    "INSERT INTO verifications ({COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, 'standard', NULL, ?5, ?6, ?7, ?8, NULL, NULL, '[]', ?9, ?9, \
                     NULL, NULL, ?10, ?11, ?12, ?13)"
                ),
                params![
                    new.id.as_str(),
                    new.client,
                    destination,
                    extension,
                    new.language,
                    new.callback_url,
                    metadata,
                    status.as_str(),
                    new.created_at,
                    new.user_id.as_str(),
                    new.method.id.as_str(),
                    new.method.kind().as_str(),
                    attempts_json(&attempts)?,
                ],
            )?;
            if let Some(key) = &idempotency {
                tx.execute(
                    "INSERT INTO idempotency_keys \
                     (client, key, fingerprint, verification_id, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        new.client,
                        key.key,
                        key.fingerprint,
                        new.id.as_str(),
                        new.created_at
                    ],
                )?;
            }
            let v = fetch(&tx, new.id.as_str())?
                .ok_or_else(|| corrupt("verification", "vanished in transaction"))?;
            tx.commit()?;
            Ok(Created::New(v))
        })
        .await
    }

    async fn confirm_code(
        &self,
        id: &VerificationId,
        method: &MethodId,
        step: u64,
        now: UnixMs,
    ) -> Result<CodeConfirmed, StoreError> {
        let (id, method) = (id.clone(), method.clone());
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let payload = self.payload;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(v) = awaiting_code(&tx, id.as_str(), &method)? else {
                return Ok(CodeConfirmed::NotAwaiting);
            };
            // RFC 6238 §5.2: a verifier must not accept a code (time step) twice.
            let fresh = tx.execute(
                "UPDATE methods SET last_code_step = ?2, failed_codes = 0, locked_until = NULL \
                 WHERE id = ?1 AND status = 'active' \
                 AND (last_code_step IS NULL OR last_code_step < ?2)",
                params![method.as_str(), step],
            )?;
            if fresh == 0 {
                return Ok(CodeConfirmed::Replayed);
            }
            let done = complete_awaiting_in(&tx, payload, v, CallResult::Confirmed, now)?
                .ok_or_else(|| corrupt("verification", "changed in transaction"))?;
            tx.commit()?;
            Ok(CodeConfirmed::Confirmed(Box::new(done)))
        })
        .await
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
        let (id, method) = (id.clone(), method.clone());
        let payload = self.payload;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let locked_until = record_failure_in(&tx, method.as_str(), now, lock_after, lock_ms)?;
            let verification = match awaiting_code(&tx, id.as_str(), &method)? {
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
                        complete_awaiting_in(&tx, payload, v, CallResult::WrongDigits, now)?
                    } else {
                        tx.execute(
                            "UPDATE verifications SET attempts = ?2, updated_at = ?3 \
                             WHERE id = ?1",
                            params![id.as_str(), attempts_json(&v.attempts)?, now],
                        )?;
                        fetch(&tx, id.as_str())?
                    }
                }
            };
            tx.commit()?;
            Ok(CodeRejected {
                verification,
                locked_until,
            })
        })
        .await
    }

    async fn switch_method(
        &self,
        id: &VerificationId,
        client: &str,
        to: &Method,
        now: UnixMs,
    ) -> Result<Switched, StoreError> {
        let (id, client, to) = (id.clone(), client.to_owned(), to.clone());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(mut v) = fetch(&tx, id.as_str())?
                .filter(|v| v.client == client && v.user_id.as_ref() == Some(&to.user_id))
            else {
                return Ok(Switched::NotFound);
            };
            if v.status == Status::Completed {
                return Ok(Switched::Completed(v));
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
            tx.execute(
                "UPDATE verifications SET status = 'awaiting_user', destination = NULL, \
                 extension = NULL, timeline = '[]', call_started_at = NULL, dtmf_method = NULL, \
                 method_id = ?2, method_type = ?3, attempts = ?4, updated_at = ?5 \
                 WHERE id = ?1 AND status <> 'completed'",
                params![
                    id.as_str(),
                    to.id.as_str(),
                    to.kind().as_str(),
                    attempts_json(&v.attempts)?,
                    now
                ],
            )?;
            let v = fetch(&tx, id.as_str())?
                .ok_or_else(|| corrupt("verification", "vanished in transaction"))?;
            tx.commit()?;
            Ok(Switched::Switched {
                verification: v,
                was_in_call,
            })
        })
        .await
    }

    async fn start_phone_attempt(
        &self,
        id: &VerificationId,
        now: UnixMs,
    ) -> Result<Option<Verification>, StoreError> {
        let id = id.clone();
        let payload = self.payload;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(v) = fetch(&tx, id.as_str())?.filter(|v| {
                v.status == Status::AwaitingUser
                    && v.method
                        .as_ref()
                        .is_some_and(|m| m.kind == MethodKind::Phone)
            }) else {
                return Ok(None);
            };
            let method = match (&v.user_id, &v.method) {
                (Some(user), Some(m)) => fetch_method(&tx, user.as_str(), m.id.as_str())?,
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
                    tx.execute(
                        "UPDATE verifications SET status = 'queued', destination = ?2, \
                         extension = ?3, timeline = ?4, updated_at = ?5 \
                         WHERE id = ?1 AND status = 'awaiting_user'",
                        params![
                            id.as_str(),
                            destination.expose(),
                            extension,
                            timeline_json(&[])?,
                            now
                        ],
                    )?;
                    fetch(&tx, id.as_str())?
                }
                // Deleted (or no longer usable) while the call before it hung up.
                _ => complete_awaiting_in(&tx, payload, v, CallResult::Failed, now)?,
            };
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn awaiting(&self, limit: u32) -> Result<Vec<Awaiting>, StoreError> {
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, method_type, created_at FROM verifications \
                 WHERE status = 'awaiting_user' ORDER BY created_at, rowid LIMIT ?1",
            )?;
            let rows: Vec<(String, Option<String>, i64)> = stmt
                .query_map([limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            rows.into_iter()
                .map(|(id, kind, created_at)| {
                    let kind = kind.unwrap_or_default();
                    Ok(Awaiting {
                        id: VerificationId::parse(&id).ok_or_else(|| corrupt("id", &id))?,
                        kind: MethodKind::parse(&kind)
                            .ok_or_else(|| corrupt("method_type", &kind))?,
                        created_at,
                    })
                })
                .collect()
        })
        .await
    }

    async fn complete_awaiting(
        &self,
        id: &VerificationId,
        result: CallResult,
        now: UnixMs,
    ) -> Result<Option<Verification>, StoreError> {
        let id = id.clone();
        let payload = self.payload;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let done = match fetch(&tx, id.as_str())? {
                Some(v) if v.status == Status::AwaitingUser => {
                    complete_awaiting_in(&tx, payload, v, result, now)?
                }
                _ => None,
            };
            tx.commit()?;
            Ok(done)
        })
        .await
    }

    async fn create_prompt(&self, new: NewPrompt) -> Result<(), StoreError> {
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO signin_prompts \
                 (verification_id, client, return_url, token_hash, token_expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    new.verification_id.as_str(),
                    new.client,
                    new.return_url,
                    new.token_hash.as_slice(),
                    new.token_expires_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn open_prompt(
        &self,
        token_hash: [u8; 32],
        session_hash: [u8; 32],
        csrf_hash: [u8; 32],
        now: UnixMs,
        session_expires_at: UnixMs,
    ) -> Result<PromptOpened, StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(raw) = tx
                .query_row(
                    &format!("SELECT {PROMPT_COLUMNS} FROM signin_prompts WHERE token_hash = ?1"),
                    [token_hash.as_slice()],
                    prompt_row,
                )
                .optional()?
            else {
                return Ok(PromptOpened::Unknown);
            };
            if raw.token_used_at.is_some() {
                return Ok(PromptOpened::AlreadyUsed);
            }
            if now >= raw.token_expires_at {
                return Ok(PromptOpened::Expired);
            }
            let changed = tx.execute(
                "UPDATE signin_prompts SET token_used_at = ?2, session_hash = ?3, csrf_hash = ?4, \
                 session_expires_at = ?5 WHERE verification_id = ?1 AND token_used_at IS NULL",
                params![
                    raw.verification_id,
                    now,
                    session_hash.as_slice(),
                    csrf_hash.as_slice(),
                    session_expires_at
                ],
            )?;
            if changed == 0 {
                return Ok(PromptOpened::AlreadyUsed);
            }
            let prompt = tx
                .query_row(
                    &format!(
                        "SELECT {PROMPT_COLUMNS} FROM signin_prompts WHERE verification_id = ?1"
                    ),
                    [&raw.verification_id],
                    prompt_row,
                )
                .map_err(StoreError::from)
                .and_then(Prompt::try_from)?;
            tx.commit()?;
            Ok(PromptOpened::Opened(prompt))
        })
        .await
    }

    async fn prompt_session(
        &self,
        id: &VerificationId,
        session_hash: [u8; 32],
        now: UnixMs,
    ) -> Result<Option<Prompt>, StoreError> {
        let id = id.clone();
        self.run(move |conn| {
            conn.query_row(
                &format!(
                    "SELECT {PROMPT_COLUMNS} FROM signin_prompts WHERE verification_id = ?1 \
                     AND session_hash = ?2 AND session_expires_at > ?3"
                ),
                params![id.as_str(), session_hash.as_slice(), now],
                prompt_row,
            )
            .optional()?
            .map(Prompt::try_from)
            .transpose()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    // Exercised through the API in tests/signin_api.rs; the migration over a database made by
    // the first schema is checked here.
    use super::*;

    #[tokio::test]
    async fn the_rebuild_migration_keeps_rows_and_references() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(super::super::sqlite::MIGRATIONS[0])
                .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute_batch(
                "INSERT INTO verifications (id, client, destination, mode, language, status, \
                 created_at, updated_at) VALUES ('vrf_0123456789abcdef0123456789abcdef', 'auth', \
                 '+12015550123', 'standard', 'en', 'queued', 1, 1); \
                 INSERT INTO idempotency_keys VALUES ('auth', 'k', 'f', \
                 'vrf_0123456789abcdef0123456789abcdef', 1);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(path.clone(), crate::webhook::payload)
            .await
            .unwrap();
        let id = VerificationId::parse("vrf_0123456789abcdef0123456789abcdef").unwrap();
        let v = Store::get(&store, &id).await.unwrap().unwrap();
        assert_eq!(v.status, Status::Queued);
        assert_eq!(v.destination.unwrap().expose(), "+12015550123");
        assert!(v.user_id.is_none() && v.attempts.is_empty());
        // Foreign keys are on again and still point at the rebuilt table.
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        let orphan = conn.execute(
            "INSERT INTO idempotency_keys VALUES ('auth', 'k2', 'f', 'vrf_nothing', 1)",
            [],
        );
        assert!(orphan.is_err(), "the reference to verifications survived");
    }
}
