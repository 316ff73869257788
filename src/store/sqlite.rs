//! The embedded store: one SQLite file in WAL mode (or a private in-memory database), one
//! connection behind a mutex (SQLite has one writer anyway), every call on the blocking pool.
//!
//! Secrets at rest (issue 8 item 7): expected digits are stored only as a keyed tag (see
//! `crate::secrets`), cleared at completion; `secure_delete` zeroes what is deleted or
//! overwritten, and after a completion that cleared a tag the WAL is checkpointed and
//! truncated, so no old page image outlives the verification.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flow::keys::{DigitsTag, SEAL_LEN};
use flow::{CallResult, Mode, TimelineEntry, TimelineEvent};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::*;
use crate::user::{MethodId, MethodKind, MethodRef, UserId};

/// How long a writer waits for the file lock before failing, in milliseconds.
const BUSY_TIMEOUT_MS: u64 = 5_000;
/// Cap events older than this are deleted: the longest cap window (a day), in milliseconds.
const RATE_EVENTS_KEPT_MS: i64 = 24 * 3600 * 1000;

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
    r#"
-- Issue 8 item 7: expected digits are kept as a keyed tag (crate::secrets), never in clear.
-- Rows written before held clear digits: they are wiped here (with secure_delete on), and an
-- open pin/challenge verification from before fails, its digits no longer checkable.
UPDATE verifications SET expected_digits = NULL;
ALTER TABLE verifications RENAME COLUMN expected_digits TO digits_tag;
-- Idempotency fingerprints were plain SHA-256 of bodies that may hold a PIN: dropped.
DELETE FROM idempotency_keys;
-- Issue 9 item 3: completed at the decision, a call holds its line until its BYE.
ALTER TABLE verifications ADD COLUMN line_held INTEGER NOT NULL DEFAULT 0;
CREATE INDEX verifications_line_held ON verifications (destination) WHERE line_held = 1;
-- Issue 9 item 4: per-host delivery limits (host:port of the URL, filled in by Rust below).
ALTER TABLE webhook_outbox ADD COLUMN host TEXT NOT NULL DEFAULT '';
-- Issue 8 item 6: caps counted in the store (one row per key per created verification).
CREATE TABLE rate_events (key TEXT NOT NULL, at INTEGER NOT NULL);
CREATE INDEX rate_events_key_at ON rate_events (key, at);
CREATE INDEX rate_events_at ON rate_events (at);
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
    digits_tag      TEXT,
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
    line_held       INTEGER NOT NULL DEFAULT 0,
    user_id         TEXT,
    method_id       TEXT,
    method_type     TEXT,
    attempts        TEXT
);
INSERT INTO verifications_next
    (id, client, destination, extension, mode, digits_tag, language, callback_url,
     metadata, status, result, dtmf_method, timeline, created_at, updated_at,
     call_started_at, completed_at, line_held)
SELECT id, client, destination, extension, mode, digits_tag, language, callback_url,
     metadata, status, result, dtmf_method, timeline, created_at, updated_at,
     call_started_at, completed_at, line_held
FROM verifications;
DROP TABLE verifications;
ALTER TABLE verifications_next RENAME TO verifications;
CREATE INDEX verifications_queued ON verifications (created_at) WHERE status = 'queued';
CREATE UNIQUE INDEX verifications_one_live_call ON verifications (destination)
    WHERE status IN ('calling', 'ringing', 'in_call');
CREATE INDEX verifications_open ON verifications (client, destination)
    WHERE status <> 'completed';
CREATE INDEX verifications_line_held ON verifications (destination) WHERE line_held = 1;
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

pub(super) const COLUMNS: &str = "id, client, destination, extension, mode, digits_tag, \
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
                // Deleted and overwritten content is zeroed, not left in free space.
                conn.pragma_update(None, "secure_delete", "ON")?;
                migrate(conn)?;
                scrub(conn);
                Ok(())
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

impl SqliteStore {
    /// [`Store::complete`] (`hold_line` false) and [`Store::settle`] (true).
    async fn finish(
        &self,
        id: &VerificationId,
        completion: Completion,
        now: UnixMs,
        hold_line: bool,
    ) -> Result<Option<Verification>, StoreError> {
        let id = id.clone();
        let payload = self.payload;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let done = complete_in(&tx, payload, id.as_str(), &completion, now, hold_line)?;
            tx.commit()?;
            if done.cleared_tag {
                scrub(conn);
            }
            Ok(done.verification)
        })
        .await
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
            if i == 1 {
                backfill_outbox_hosts(&tx)?;
            }
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

/// Migration 2: the host of every queued webhook, which SQL cannot parse out of a URL.
fn backfill_outbox_hosts(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let rows: Vec<(String, String)> = {
        let mut stmt = tx.prepare("SELECT id, url FROM webhook_outbox WHERE host = ''")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    for (id, url) in rows {
        tx.execute(
            "UPDATE webhook_outbox SET host = ?2 WHERE id = ?1",
            params![id, callback_host(&url)],
        )?;
    }
    Ok(())
}

/// Copies the WAL into the database and truncates it to nothing, so old page images (a
/// digits tag before it was cleared) do not linger in the `-wal` file. Best effort: a reader
/// in another process may keep part of it until its next checkpoint.
fn scrub(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "WAL checkpoint failed");
    }
}

fn tag_hex(tag: Option<&DigitsTag>) -> Option<String> {
    tag.map(|t| hex::encode(t.to_bytes()))
}

fn tag_parse(text: &str) -> Option<DigitsTag> {
    let mut out = [0u8; SEAL_LEN];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(DigitsTag::from_bytes(out))
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
    digits_tag: Option<String>,
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
        digits_tag: row.get(5)?,
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
            digits_tag: match r.digits_tag {
                Some(t) => Some(tag_parse(&t).ok_or_else(|| corrupt("digits_tag", "not a tag"))?),
                None => None,
            },
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

/// What [`complete_in`] did.
struct Completed {
    /// The completed record; `None` when it was already completed.
    verification: Option<Verification>,
    /// A digits tag was cleared: the WAL should be scrubbed after commit.
    cleared_tag: bool,
}

/// Completes `id` (if not completed yet) and queues its webhook, inside the caller's
/// transaction. `hold_line`: the call goes on after the decision (closing prompts, BYE), so
/// no other call to the destination may start until [`Store::close_call`]. Only a
/// verification that is queued or in a call completes here: one waiting for its user on
/// another method (`awaiting_user`: the user switched away from the call) is not completed by
/// that call's late report.
fn complete_in(
    tx: &rusqlite::Transaction<'_>,
    payload: PayloadFn,
    id: &str,
    completion: &Completion,
    now: UnixMs,
    hold_line: bool,
) -> Result<Completed, StoreError> {
    let cleared_tag: bool = tx
        .query_row(
            "SELECT digits_tag IS NOT NULL FROM verifications WHERE id = ?1 \
             AND status <> 'completed'",
            [id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    let changed = tx.execute(
        "UPDATE verifications SET status = 'completed', result = ?2, dtmf_method = ?3, \
         timeline = ?4, completed_at = ?5, updated_at = ?5, digits_tag = NULL, line_held = ?6 \
         WHERE id = ?1 AND status IN ('queued', 'calling', 'ringing', 'in_call')",
        params![
            id,
            completion.result.as_str(),
            completion.dtmf_method.map(|m| m.as_str()),
            timeline_json(&completion.timeline)?,
            now,
            hold_line,
        ],
    )?;
    if changed == 0 {
        return Ok(Completed {
            verification: None,
            cleared_tag: false,
        });
    }
    let v = fetch(tx, id)?.ok_or_else(|| corrupt("verification", "vanished in transaction"))?;
    enqueue_webhook(tx, payload, &v, now)?;
    Ok(Completed {
        verification: Some(v),
        cleared_tag,
    })
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
             (id, verification_id, client, url, payload, state, created_at, next_attempt_at, \
             host) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6, ?7)",
            params![
                message_id,
                v.id.as_str(),
                v.client,
                url,
                payload(v),
                now,
                callback_host(url)
            ],
        )?;
    }
    Ok(())
}

/// The cap that is reached, if any (the one that lifts last), for a request at `now`.
pub(super) fn quota_reached(
    tx: &rusqlite::Transaction<'_>,
    quotas: &[Quota],
    now: UnixMs,
) -> Result<Option<Limited>, StoreError> {
    let mut worst: Option<Limited> = None;
    for q in quotas.iter().filter(|q| q.max > 0) {
        let window_ms = i64::try_from(q.window.as_millis()).unwrap_or(i64::MAX);
        let since = now.saturating_sub(window_ms);
        let count: i64 = tx.query_row(
            "SELECT COUNT(*) FROM rate_events WHERE key = ?1 AND at > ?2",
            params![q.key, since],
            |r| r.get(0),
        )?;
        if count < i64::from(q.max) {
            continue;
        }
        // The event whose leaving the window makes room: the (count - max + 1)-th oldest.
        let freeing: i64 = tx.query_row(
            "SELECT at FROM rate_events WHERE key = ?1 AND at > ?2 ORDER BY at \
             LIMIT 1 OFFSET ?3",
            params![q.key, since, count - i64::from(q.max)],
            |r| r.get(0),
        )?;
        let retry_ms = freeing.saturating_add(window_ms).saturating_sub(now).max(0);
        let retry_after = std::time::Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0));
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
pub(super) fn quota_take(
    tx: &rusqlite::Transaction<'_>,
    quotas: &[Quota],
    now: UnixMs,
) -> Result<(), StoreError> {
    let mut keys: Vec<&str> = quotas
        .iter()
        .filter(|q| q.max > 0)
        .map(|q| q.key.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        tx.execute(
            "INSERT INTO rate_events (key, at) VALUES (?1, ?2)",
            params![key, now],
        )?;
    }
    tx.execute(
        "DELETE FROM rate_events WHERE at <= ?1",
        [now.saturating_sub(RATE_EVENTS_KEPT_MS)],
    )?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(
        &self,
        new: NewVerification,
        idempotency: Option<IdempotencyKey>,
        join: bool,
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
            let tag = tag_hex(new.digits_tag.as_ref());
            if join {
                let open: Option<String> = tx
                    .query_row(
                        "SELECT id FROM verifications WHERE client = ?1 AND destination = ?2 \
                         AND status <> 'completed' AND extension IS ?3 AND mode = ?4 \
                         AND language = ?5 AND callback_url IS ?6 \
                         AND (mode <> 'pin' OR digits_tag IS ?7) AND user_id IS NULL \
                         ORDER BY created_at, rowid LIMIT 1",
                        params![
                            new.client,
                            new.destination.expose(),
                            new.extension,
                            mode_str(new.mode),
                            new.language,
                            new.callback_url,
                            tag,
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
            if let Some(limited) = quota_reached(&tx, &quotas, new.created_at)? {
                return Ok(Created::Limited(limited));
            }
            quota_take(&tx, &quotas, new.created_at)?;
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
                    tag,
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
                         AND (l.status IN ('calling', 'ringing', 'in_call') OR l.line_held = 1)) \
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
        self.finish(id, completion, now, false).await
    }

    async fn settle(
        &self,
        id: &VerificationId,
        completion: Completion,
        now: UnixMs,
    ) -> Result<Option<Verification>, StoreError> {
        self.finish(id, completion, now, true).await
    }

    async fn close_call(
        &self,
        id: &VerificationId,
        timeline: &[TimelineEntry],
        now: UnixMs,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        let timeline = timeline_json(timeline)?;
        self.run(move |conn| {
            conn.execute(
                "UPDATE verifications SET timeline = ?2, updated_at = ?3, line_held = 0 \
                 WHERE id = ?1 AND status = 'completed'",
                params![id.as_str(), timeline, now],
            )?;
            Ok(())
        })
        .await
    }

    async fn expire_queued(
        &self,
        created_before: UnixMs,
        now: UnixMs,
    ) -> Result<Vec<Verification>, StoreError> {
        let payload = self.payload;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ids: Vec<String> = {
                let mut stmt = tx.prepare(
                    "SELECT id FROM verifications WHERE status = 'queued' AND created_at < ?1 \
                     ORDER BY created_at, rowid",
                )?;
                stmt.query_map([created_before], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
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
            let mut cleared = false;
            for id in ids {
                let done = complete_in(&tx, payload, &id, &completion, now, false)?;
                cleared |= done.cleared_tag;
                expired.extend(done.verification);
            }
            tx.commit()?;
            if cleared {
                scrub(conn);
            }
            Ok(expired)
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
            let done = complete_in(&tx, payload, id.as_str(), &completion, now, false)?;
            let v = done
                .verification
                .ok_or_else(|| corrupt("verification", "completed in transaction"))?;
            tx.commit()?;
            if done.cleared_tag {
                scrub(conn);
            }
            Ok(Dequeued::Cancelled(v))
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
            let mut cleared = false;
            for raw in live {
                let v = Verification::try_from(raw)?;
                let mut timeline = v.timeline.clone();
                let at_ms = v
                    .call_started_at
                    .map_or(0, |start| u64::try_from(now - start).unwrap_or(0));
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
                let completion = Completion {
                    result: CallResult::Failed,
                    dtmf_method: v.dtmf_method,
                    timeline,
                };
                let done = complete_in(&tx, payload, v.id.as_str(), &completion, now, false)?;
                cleared |= done.cleared_tag;
                if done.verification.is_some() {
                    calls_failed += 1;
                }
            }
            // Calls that had decided and were closing when the process stopped: gone too.
            tx.execute(
                "UPDATE verifications SET line_held = 0 WHERE line_held = 1",
                [],
            )?;
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
            if cleared {
                scrub(conn);
            }
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
        busy_hosts: &[String],
    ) -> Result<Option<OutboxMessage>, StoreError> {
        let busy = serde_json::to_string(busy_hosts).map_err(|e| corrupt("busy hosts", e))?;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let msg = tx
                .query_row(
                    "UPDATE webhook_outbox SET leased = 1, next_attempt_at = ?2 \
                     WHERE id = (SELECT id FROM webhook_outbox \
                       WHERE state = 'pending' AND next_attempt_at <= ?1 \
                       AND host NOT IN (SELECT value FROM json_each(?3)) \
                       ORDER BY next_attempt_at, rowid LIMIT 1) \
                     RETURNING id, verification_id, client, url, payload, created_at, attempts, \
                       host",
                    params![now, lease_until, busy],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, i64>(6)?,
                            r.get::<_, String>(7)?,
                        ))
                    },
                )
                .optional()?;
            tx.commit()?;
            msg.map(
                |(id, vid, client, url, payload, created_at, attempts, host)| {
                    Ok(OutboxMessage {
                        verification_id: VerificationId::parse(&vid)
                            .ok_or_else(|| corrupt("outbox verification id", &vid))?,
                        id,
                        client,
                        url,
                        payload,
                        created_at,
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        host,
                    })
                },
            )
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
