//! The embedded store: one SQLite file in WAL mode (or a private in-memory database), one
//! connection behind a mutex (SQLite has one writer anyway), every call on the blocking pool.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flow::{CallResult, Mode, TimelineEntry, TimelineEvent};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::*;
use crate::config::Secret;
use crate::user::{MethodId, MethodKind, MethodRef, UserId};

/// How long a writer waits for the file lock before failing, in milliseconds.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Schema migrations, applied in order; `PRAGMA user_version` is the number applied.
/// Append only: a released migration never changes.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE verifications (
    id              TEXT PRIMARY KEY,
    client          TEXT NOT NULL,
    destination     TEXT NOT NULL,
    extension       TEXT,
    mode            TEXT NOT NULL,
    expected_digits TEXT,
    language        TEXT NOT NULL,
    callback_url    TEXT,
    metadata        TEXT,
    status          TEXT NOT NULL
        CHECK (status IN ('queued', 'calling', 'ringing', 'in_call', 'completed')),
    result          TEXT,
    dtmf_method     TEXT,
    timeline        TEXT NOT NULL DEFAULT '[]',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    call_started_at INTEGER,
    completed_at    INTEGER
);
CREATE INDEX verifications_queued ON verifications (created_at) WHERE status = 'queued';
-- One live call per destination, whatever the code above does.
CREATE UNIQUE INDEX verifications_one_live_call ON verifications (destination)
    WHERE status IN ('calling', 'ringing', 'in_call');
CREATE INDEX verifications_open ON verifications (client, destination)
    WHERE status <> 'completed';

CREATE TABLE idempotency_keys (
    client          TEXT NOT NULL,
    key             TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    verification_id TEXT NOT NULL REFERENCES verifications (id),
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (client, key)
);

CREATE TABLE webhook_outbox (
    id              TEXT PRIMARY KEY,
    verification_id TEXT NOT NULL REFERENCES verifications (id),
    client          TEXT NOT NULL,
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL
        CHECK (state IN ('pending', 'delivered', 'gone', 'gave_up')),
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    leased          INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';

CREATE TABLE webhook_attempts (
    message_id  TEXT NOT NULL REFERENCES webhook_outbox (id),
    number      INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (message_id, number)
);
"#,
    // Sign-in methods (issue 11): users, their methods, hosted prompts, and verifications by user.
    // SQLite cannot change a CHECK constraint in place, so `verifications` is rebuilt (the SQLite
    // "12-step" procedure; `migrate` turns foreign keys off around it and checks them before
    // committing) to allow the `awaiting_user` status and no destination (an app-code attempt);
    // the new columns are nullable. PostgreSQL: ALTER the status CHECK, DROP NOT NULL on
    // destination, ADD the four columns.
    r#"
CREATE TABLE verifications_next (
    id              TEXT PRIMARY KEY,
    client          TEXT NOT NULL,
    destination     TEXT,
    extension       TEXT,
    mode            TEXT NOT NULL,
    expected_digits TEXT,
    language        TEXT NOT NULL,
    callback_url    TEXT,
    metadata        TEXT,
    status          TEXT NOT NULL
        CHECK (status IN ('queued', 'calling', 'ringing', 'in_call', 'completed',
                          'awaiting_user')),
    result          TEXT,
    dtmf_method     TEXT,
    timeline        TEXT NOT NULL DEFAULT '[]',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    call_started_at INTEGER,
    completed_at    INTEGER,
    user_id         TEXT,
    method_id       TEXT,
    method_type     TEXT,
    attempts        TEXT
);
INSERT INTO verifications_next
    (id, client, destination, extension, mode, expected_digits, language, callback_url,
     metadata, status, result, dtmf_method, timeline, created_at, updated_at,
     call_started_at, completed_at)
SELECT id, client, destination, extension, mode, expected_digits, language, callback_url,
     metadata, status, result, dtmf_method, timeline, created_at, updated_at,
     call_started_at, completed_at
FROM verifications;
DROP TABLE verifications;
ALTER TABLE verifications_next RENAME TO verifications;
CREATE INDEX verifications_queued ON verifications (created_at) WHERE status = 'queued';
CREATE UNIQUE INDEX verifications_one_live_call ON verifications (destination)
    WHERE status IN ('calling', 'ringing', 'in_call');
CREATE INDEX verifications_open ON verifications (client, destination)
    WHERE status <> 'completed';
CREATE INDEX verifications_awaiting ON verifications (created_at)
    WHERE status = 'awaiting_user';

CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    client       TEXT NOT NULL,
    external_id  TEXT NOT NULL,
    display_name TEXT,
    created_at   INTEGER NOT NULL,
    UNIQUE (client, external_id)
);

CREATE TABLE methods (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL CHECK (kind IN ('phone', 'app_code')),
    status         TEXT NOT NULL CHECK (status IN ('pending', 'active')),
    label          TEXT,
    position       INTEGER NOT NULL,
    destination    TEXT,
    extension      TEXT,
    secret         BLOB,
    last_code_step INTEGER,
    failed_codes   INTEGER NOT NULL DEFAULT 0,
    locked_until   INTEGER,
    created_at     INTEGER NOT NULL,
    confirmed_at   INTEGER
);
CREATE INDEX methods_of_user ON methods (user_id, position);

CREATE TABLE signin_prompts (
    verification_id    TEXT PRIMARY KEY REFERENCES verifications (id),
    client             TEXT NOT NULL,
    return_url         TEXT NOT NULL,
    token_hash         BLOB NOT NULL UNIQUE,
    token_expires_at   INTEGER NOT NULL,
    token_used_at      INTEGER,
    session_hash       BLOB UNIQUE,
    csrf_hash          BLOB,
    session_expires_at INTEGER
);
"#,
];

pub(super) const COLUMNS: &str = "id, client, destination, extension, mode, expected_digits, \
    language, callback_url, metadata, status, result, dtmf_method, timeline, created_at, \
    updated_at, call_started_at, completed_at, user_id, method_id, method_type, attempts";

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    pub(super) payload: PayloadFn,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, in WAL mode, and migrates it.
    pub async fn open(path: PathBuf, payload: PayloadFn) -> Result<SqliteStore, StoreError> {
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let open_err = |source| StoreError::Open {
                path: path.display().to_string(),
                source,
            };
            let conn = Connection::open(&path).map_err(open_err)?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(open_err)?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(open_err)?;
            Ok(conn)
        })
        .await??;
        SqliteStore::init(conn, payload).await
    }

    /// A private in-memory database: for tests and the demo; nothing survives the process.
    pub async fn memory(payload: PayloadFn) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: ":memory:".to_owned(),
            source,
        })?;
        SqliteStore::init(conn, payload).await
    }

    async fn init(conn: Connection, payload: PayloadFn) -> Result<SqliteStore, StoreError> {
        let store = SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            payload,
        };
        store
            .run(|conn| {
                conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
                conn.pragma_update(None, "foreign_keys", "ON")?;
                migrate(conn)
            })
            .await?;
        Ok(store)
    }

    /// Runs `f` with the connection on the blocking pool.
    pub(super) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves SQLite consistent (transactions roll back
            // on drop), so a poisoned mutex is still safe to use.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied >= MIGRATIONS.len() {
        return Ok(());
    }
    // A migration may rebuild a table that others reference (SQLite's "12-step" ALTER):
    // foreign keys are off while it runs (the pragma is a no-op inside a transaction) and
    // checked before each commit.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let result = (|| {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            let violations: i64 =
                tx.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                    r.get(0)
                })?;
            if violations > 0 {
                return Err(corrupt(
                    "schema",
                    format!(
                        "migration {} leaves {violations} foreign key violations",
                        i + 1
                    ),
                ));
            }
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    })();
    conn.pragma_update(None, "foreign_keys", "ON")?;
    result
}

fn mode_str(mode: Mode) -> &'static str {
    match mode {
        Mode::Standard => "standard",
        Mode::Pin => "pin",
        Mode::Challenge => "challenge",
    }
}

fn mode_parse(s: &str) -> Option<Mode> {
    [Mode::Standard, Mode::Pin, Mode::Challenge]
        .into_iter()
        .find(|m| mode_str(*m) == s)
}

pub(super) fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

/// The raw columns of a row, converted outside rusqlite's closure so errors can be typed.
struct RawRow {
    id: String,
    client: String,
    destination: Option<String>,
    extension: Option<String>,
    mode: String,
    expected_digits: Option<String>,
    language: String,
    callback_url: Option<String>,
    metadata: Option<String>,
    status: String,
    result: Option<String>,
    dtmf_method: Option<String>,
    timeline: String,
    created_at: i64,
    updated_at: i64,
    call_started_at: Option<i64>,
    completed_at: Option<i64>,
    user_id: Option<String>,
    method_id: Option<String>,
    method_type: Option<String>,
    attempts: Option<String>,
}

fn raw_row(row: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: row.get(0)?,
        client: row.get(1)?,
        destination: row.get(2)?,
        extension: row.get(3)?,
        mode: row.get(4)?,
        expected_digits: row.get(5)?,
        language: row.get(6)?,
        callback_url: row.get(7)?,
        metadata: row.get(8)?,
        status: row.get(9)?,
        result: row.get(10)?,
        dtmf_method: row.get(11)?,
        timeline: row.get(12)?,
        created_at: row.get(13)?,
        updated_at: row.get(14)?,
        call_started_at: row.get(15)?,
        completed_at: row.get(16)?,
        user_id: row.get(17)?,
        method_id: row.get(18)?,
        method_type: row.get(19)?,
        attempts: row.get(20)?,
    })
}

impl TryFrom<RawRow> for Verification {
    type Error = StoreError;

    fn try_from(r: RawRow) -> Result<Verification, StoreError> {
        Ok(Verification {
            id: VerificationId::parse(&r.id).ok_or_else(|| corrupt("id", &r.id))?,
            destination: r.destination.as_deref().map(Destination::from_stored),
            user_id: match r.user_id {
                Some(s) => Some(UserId::parse(&s).ok_or_else(|| corrupt("user_id", &s))?),
                None => None,
            },
            method: match (r.method_id, r.method_type) {
                (Some(id), Some(kind)) => Some(MethodRef {
                    id: MethodId::parse(&id).ok_or_else(|| corrupt("method_id", &id))?,
                    kind: MethodKind::parse(&kind).ok_or_else(|| corrupt("method_type", &kind))?,
                }),
                _ => None,
            },
            attempts: match r.attempts {
                Some(s) => serde_json::from_str(&s).map_err(|e| corrupt("attempts", e))?,
                None => Vec::new(),
            },
            mode: mode_parse(&r.mode).ok_or_else(|| corrupt("mode", &r.mode))?,
            status: Status::parse(&r.status).ok_or_else(|| corrupt("status", &r.status))?,
            result: match r.result {
                Some(s) => Some(CallResult::parse(&s).ok_or_else(|| corrupt("result", &s))?),
                None => None,
            },
            dtmf_method: match r.dtmf_method {
                Some(s) => Some(dtmf_method_parse(&s).ok_or_else(|| corrupt("dtmf_method", &s))?),
                None => None,
            },
            timeline: serde_json::from_str(&r.timeline).map_err(|e| corrupt("timeline", e))?,
            metadata: match r.metadata {
                Some(s) => Some(serde_json::from_str(&s).map_err(|e| corrupt("metadata", e))?),
                None => None,
            },
            client: r.client,
            extension: r.extension,
            expected_digits: r.expected_digits.map(Secret::new),
            language: r.language,
            callback_url: r.callback_url,
            created_at: r.created_at,
            updated_at: r.updated_at,
            call_started_at: r.call_started_at,
            completed_at: r.completed_at,
        })
    }
}

pub(super) fn fetch(conn: &Connection, id: &str) -> Result<Option<Verification>, StoreError> {
    let raw = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM verifications WHERE id = ?1"),
            [id],
            raw_row,
        )
        .optional()?;
    raw.map(Verification::try_from).transpose()
}

pub(super) fn timeline_json(timeline: &[TimelineEntry]) -> Result<String, StoreError> {
    serde_json::to_string(timeline).map_err(|e| corrupt("timeline", e))
}

/// Completes `id` (if not completed yet) and queues its webhook, inside the caller's
/// transaction. Only a verification that is queued or in a call completes here: one waiting
/// for its user on another method (`awaiting_user`: the user switched away from the call)
/// is not completed by that call's late report.
pub(super) fn complete_in(
    tx: &rusqlite::Transaction<'_>,
    payload: PayloadFn,
    id: &str,
    completion: &Completion,
    now: UnixMs,
) -> Result<Option<Verification>, StoreError> {
    let changed = tx.execute(
        "UPDATE verifications SET status = 'completed', result = ?2, dtmf_method = ?3, \
         timeline = ?4, completed_at = ?5, updated_at = ?5, expected_digits = NULL \
         WHERE id = ?1 AND status IN ('queued', 'calling', 'ringing', 'in_call')",
        params![
            id,
            completion.result.as_str(),
            completion.dtmf_method.map(|m| m.as_str()),
            timeline_json(&completion.timeline)?,
            now,
        ],
    )?;
    if changed == 0 {
        return Ok(None);
    }
    let v = fetch(tx, id)?.ok_or_else(|| corrupt("verification", "vanished in transaction"))?;
    enqueue_webhook(tx, payload, &v, now)?;
    Ok(Some(v))
}

/// Queues the webhook of the completed `v` (when it has a callback), inside the caller's
/// transaction.
pub(super) fn enqueue_webhook(
    tx: &rusqlite::Transaction<'_>,
    payload: PayloadFn,
    v: &Verification,
    now: UnixMs,
) -> Result<(), StoreError> {
    if let Some(url) = &v.callback_url {
        let message_id = format!("msg_{}", hex::encode(rand::random::<[u8; 16]>()));
        tx.execute(
            "INSERT INTO webhook_outbox \
             (id, verification_id, client, url, payload, state, created_at, next_attempt_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6)",
            params![message_id, v.id.as_str(), v.client, url, payload(v), now],
        )?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(
        &self,
        new: NewVerification,
        idempotency: Option<IdempotencyKey>,
        join: bool,
    ) -> Result<Created, StoreError> {
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
            let remember = |tx: &rusqlite::Transaction<'_>, vid: &str| -> Result<(), StoreError> {
                if let Some(key) = &idempotency {
                    tx.execute(
                        "INSERT INTO idempotency_keys \
                         (client, key, fingerprint, verification_id, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![new.client, key.key, key.fingerprint, vid, new.created_at],
                    )?;
                }
                Ok(())
            };
            let expected = new.expected_digits.as_ref().map(|s| s.expose().to_owned());
            if join {
                let open: Option<String> = tx
                    .query_row(
                        "SELECT id FROM verifications WHERE client = ?1 AND destination = ?2 \
                         AND status <> 'completed' AND extension IS ?3 AND mode = ?4 \
                         AND language = ?5 AND callback_url IS ?6 \
                         AND (mode <> 'pin' OR expected_digits IS ?7) AND user_id IS NULL \
                         ORDER BY created_at, rowid LIMIT 1",
                        params![
                            new.client,
                            new.destination.expose(),
                            new.extension,
                            mode_str(new.mode),
                            new.language,
                            new.callback_url,
                            expected,
                        ],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(vid) = open {
                    remember(&tx, &vid)?;
                    let v = fetch(&tx, &vid)?
                        .ok_or_else(|| corrupt("verification", "vanished in transaction"))?;
                    tx.commit()?;
                    return Ok(Created::Joined(v));
                }
            }
            let metadata = new
                .metadata
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| corrupt("metadata", e))?;
            tx.execute(
                &format!(
                    "INSERT INTO verifications ({COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', NULL, NULL, '[]', ?10, ?10, \
                     NULL, NULL, NULL, NULL, NULL, NULL)"
                ),
                params![
                    new.id.as_str(),
                    new.client,
                    new.destination.expose(),
                    new.extension,
                    mode_str(new.mode),
                    expected,
                    new.language,
                    new.callback_url,
                    metadata,
                    new.created_at,
                ],
            )?;
            remember(&tx, new.id.as_str())?;
            let v = fetch(&tx, new.id.as_str())?
                .ok_or_else(|| corrupt("verification", "vanished in transaction"))?;
            tx.commit()?;
            Ok(Created::New(v))
        })
        .await
    }

    async fn get(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError> {
        let id = id.clone();
        self.run(move |conn| fetch(conn, id.as_str())).await
    }

    async fn claim_next(&self, now: UnixMs) -> Result<Option<Verification>, StoreError> {
        // PostgreSQL: the inner SELECT gets `FOR UPDATE SKIP LOCKED`; the unique partial index
        // turns a race on the same destination into a constraint error, retried by the caller.
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let id: Option<String> = tx
                .query_row(
                    "UPDATE verifications SET status = 'calling', call_started_at = ?1, \
                     updated_at = ?1 \
                     WHERE id = (SELECT q.id FROM verifications q WHERE q.status = 'queued' \
                       AND NOT EXISTS (SELECT 1 FROM verifications l \
                         WHERE l.destination = q.destination \
                         AND l.status IN ('calling', 'ringing', 'in_call')) \
                       ORDER BY q.created_at, q.rowid LIMIT 1) \
                     RETURNING id",
                    [now],
                    |r| r.get(0),
                )
                .optional()?;
            let v = match id {
                Some(id) => fetch(&tx, &id)?,
                None => None,
            };
            tx.commit()?;
            Ok(v)
        })
        .await
    }

    async fn progress(
        &self,
        id: &VerificationId,
        status: Status,
        timeline: &[TimelineEntry],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        let timeline = timeline_json(timeline)?;
        self.run(move |conn| {
            conn.execute(
                "UPDATE verifications SET status = ?2, timeline = ?3, updated_at = ?4 \
                 WHERE id = ?1 AND status IN ('calling', 'ringing', 'in_call')",
                params![id.as_str(), status.as_str(), timeline, now],
            )?;
            Ok(())
        })
        .await
    }

    async fn complete(
        &self,
        id: &VerificationId,
        completion: Completion,
        now: UnixMs,
    ) -> Result<Option<Verification>, StoreError> {
        let id = id.clone();
        let payload = self.payload;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let v = complete_in(&tx, payload, id.as_str(), &completion, now)?;
            tx.commit()?;
            Ok(v)
        })
        .await
    }

    async fn dequeue(
        &self,
        id: &VerificationId,
        client: &str,
        now: UnixMs,
    ) -> Result<Dequeued, StoreError> {
        let id = id.clone();
        let client = client.to_owned();
        let payload = self.payload;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(v) = fetch(&tx, id.as_str())?.filter(|v| v.client == client) else {
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
            let done = complete_in(&tx, payload, id.as_str(), &completion, now)?
                .ok_or_else(|| corrupt("verification", "completed in transaction"))?;
            tx.commit()?;
            Ok(Dequeued::Cancelled(done))
        })
        .await
    }

    async fn recover(&self, now: UnixMs) -> Result<Recovery, StoreError> {
        let payload = self.payload;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let live: Vec<RawRow> = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT {COLUMNS} FROM verifications \
                     WHERE status IN ('calling', 'ringing', 'in_call')"
                ))?;
                stmt.query_map([], raw_row)?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut calls_failed = 0;
            for raw in live {
                let v = Verification::try_from(raw)?;
                let mut timeline = v.timeline.clone();
                let at_ms = v
                    .call_started_at
                    .map_or(0, |start| u64::try_from(now - start).unwrap_or(0));
                timeline.push(TimelineEntry {
                    at_ms,
                    event: TimelineEvent::Outcome {
                        result: CallResult::Failed,
                    },
                });
                let completion = Completion {
                    result: CallResult::Failed,
                    dtmf_method: v.dtmf_method,
                    timeline,
                };
                if complete_in(&tx, payload, v.id.as_str(), &completion, now)?.is_some() {
                    calls_failed += 1;
                }
            }
            let webhooks_released = tx.execute(
                "UPDATE webhook_outbox SET leased = 0, next_attempt_at = ?1 \
                 WHERE state = 'pending' AND leased = 1",
                [now],
            )?;
            let queued: i64 = tx.query_row(
                "SELECT COUNT(*) FROM verifications WHERE status = 'queued'",
                [],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(Recovery {
                calls_failed,
                webhooks_released,
                queued: u64::try_from(queued).unwrap_or(0),
            })
        })
        .await
    }

    async fn queue_depth(&self) -> Result<u64, StoreError> {
        self.run(|conn| {
            let n: i64 = conn.query_row(
                "SELECT COUNT(*) FROM verifications WHERE status = 'queued'",
                [],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn claim_webhook(
        &self,
        now: UnixMs,
        lease_until: UnixMs,
    ) -> Result<Option<OutboxMessage>, StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let msg = tx
                .query_row(
                    "UPDATE webhook_outbox SET leased = 1, next_attempt_at = ?2 \
                     WHERE id = (SELECT id FROM webhook_outbox \
                       WHERE state = 'pending' AND next_attempt_at <= ?1 \
                       ORDER BY next_attempt_at, rowid LIMIT 1) \
                     RETURNING id, verification_id, client, url, payload, created_at, attempts",
                    params![now, lease_until],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, i64>(6)?,
                        ))
                    },
                )
                .optional()?;
            tx.commit()?;
            msg.map(|(id, vid, client, url, payload, created_at, attempts)| {
                Ok(OutboxMessage {
                    verification_id: VerificationId::parse(&vid)
                        .ok_or_else(|| corrupt("outbox verification id", &vid))?,
                    id,
                    client,
                    url,
                    payload,
                    created_at,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                })
            })
            .transpose()
        })
        .await
    }

    async fn record_attempt(
        &self,
        attempt: Attempt,
        state: OutboxState,
        next_attempt_at: UnixMs,
    ) -> Result<(), StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO webhook_attempts \
                 (message_id, number, at, status_code, error, duration_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    attempt.message_id,
                    attempt.number,
                    attempt.at,
                    attempt.status_code,
                    attempt.error,
                    i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX),
                ],
            )?;
            tx.execute(
                "UPDATE webhook_outbox SET state = ?2, next_attempt_at = ?3, leased = 0, \
                 attempts = ?4 WHERE id = ?1",
                params![
                    attempt.message_id,
                    state.as_str(),
                    next_attempt_at,
                    attempt.number
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn outbox(&self, id: &VerificationId) -> Result<Vec<OutboxEntry>, StoreError> {
        let id = id.clone();
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, state, next_attempt_at FROM webhook_outbox \
                 WHERE verification_id = ?1 ORDER BY created_at, rowid",
            )?;
            let rows: Vec<(String, String, i64)> = stmt
                .query_map([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut attempts_stmt = conn.prepare(
                "SELECT number, at, status_code, error, duration_ms FROM webhook_attempts \
                 WHERE message_id = ?1 ORDER BY number",
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for (mid, state, next) in rows {
                let attempts = attempts_stmt
                    .query_map([&mid], |r| {
                        Ok(Attempt {
                            message_id: mid.clone(),
                            number: r.get(0)?,
                            at: r.get(1)?,
                            status_code: r.get(2)?,
                            error: r.get(3)?,
                            duration_ms: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                out.push(OutboxEntry {
                    state: OutboxState::parse(&state)
                        .ok_or_else(|| corrupt("outbox state", &state))?,
                    id: mid,
                    verification_id: id.clone(),
                    next_attempt_at: next,
                    attempts,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn next_webhook_due(&self) -> Result<Option<UnixMs>, StoreError> {
        self.run(|conn| {
            Ok(conn.query_row(
                "SELECT MIN(next_attempt_at) FROM webhook_outbox WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }

    fn directory(&self) -> Option<Arc<dyn Directory>> {
        Some(Arc::new(self.clone()))
    }
}
