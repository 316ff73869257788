//! The PostgreSQL schema and its migrations, applied at start under an advisory lock so that
//! instances starting together migrate once.

use super::{StoreError, UnixMs};

/// Advisory lock key of the migration step (any constant; "cvmigrat" in ASCII).
const MIGRATION_LOCK: i64 = 0x6376_6d69_6772_6174;

/// Schema migrations, applied in order; `schema_migrations` records those applied.
/// Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[r#"
-- One row per running `serve` process (DESIGN.md "Storage and scale"): its heartbeat.
CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    started_at  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL
);

CREATE TABLE verifications (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY,
    id              TEXT PRIMARY KEY,
    client          TEXT NOT NULL,
    -- NULL while a verification by user is on a method without a call (an app code).
    destination     TEXT,
    extension       TEXT,
    mode            TEXT NOT NULL,
    -- Keyed tag of the PIN or challenge digits (crate::secrets), never the digits; cleared
    -- at completion.
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
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    call_started_at BIGINT,
    completed_at    BIGINT,
    -- The instance that claimed the call (its hang-up channel; taken over when it dies).
    owner           TEXT,
    -- Completed at the decision, the call still closing (prompts, BYE): its destination's
    -- line stays taken until the call ends (issue 9 item 3).
    line_held       BOOLEAN NOT NULL DEFAULT FALSE,
    -- Verifications by user (issue 11): the user, the method deciding now, every attempt.
    user_id         TEXT,
    method_id       TEXT,
    method_type     TEXT,
    attempts        TEXT
);
CREATE INDEX verifications_line_held ON verifications (destination) WHERE line_held;
CREATE INDEX verifications_queued ON verifications (created_at, seq) WHERE status = 'queued';
-- One live call per destination, whatever the instances do.
CREATE UNIQUE INDEX verifications_one_live_call ON verifications (destination)
    WHERE status IN ('calling', 'ringing', 'in_call');
CREATE INDEX verifications_open ON verifications (client, destination)
    WHERE status <> 'completed';
CREATE INDEX verifications_live_owner ON verifications (owner)
    WHERE status IN ('calling', 'ringing', 'in_call');
CREATE INDEX verifications_completed_at ON verifications (completed_at)
    WHERE status = 'completed';
CREATE INDEX verifications_awaiting ON verifications (created_at, seq)
    WHERE status = 'awaiting_user';

CREATE TABLE idempotency_keys (
    client          TEXT NOT NULL,
    key             TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    verification_id TEXT NOT NULL REFERENCES verifications (id),
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (client, key)
);

CREATE TABLE webhook_outbox (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY,
    id              TEXT PRIMARY KEY,
    verification_id TEXT NOT NULL REFERENCES verifications (id),
    client          TEXT NOT NULL,
    url             TEXT NOT NULL,
    -- The exact body, byte for byte the same on every attempt (TEXT, not JSONB).
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL
        CHECK (state IN ('pending', 'delivered', 'gone', 'gave_up')),
    created_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    -- The instance attempting it now; nobody else takes it while that instance lives.
    leased_by       TEXT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    -- host:port of the URL: deliveries in flight are limited per host.
    host            TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_outbox_verification ON webhook_outbox (verification_id);

CREATE TABLE webhook_attempts (
    message_id  TEXT NOT NULL REFERENCES webhook_outbox (id),
    number      BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (message_id, number)
);

-- Caps (limits.*_per_*), one row per key per created verification: they hold across
-- instances and restarts.
CREATE TABLE rate_events (
    key TEXT NOT NULL,
    at  BIGINT NOT NULL
);
CREATE INDEX rate_events_key_at ON rate_events (key, at);
CREATE INDEX rate_events_at ON rate_events (at);

-- Sign-in methods (issue 11; the same tables as SQLite's migration 3): users of a client,
-- their methods in the user's order, and the hosted prompts of verifications by user.
CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    client       TEXT NOT NULL,
    external_id  TEXT NOT NULL,
    display_name TEXT,
    created_at   BIGINT NOT NULL,
    UNIQUE (client, external_id)
);

CREATE TABLE methods (
    -- Insertion order: breaks ties between equal positions (SQLite's rowid).
    seq            BIGINT GENERATED ALWAYS AS IDENTITY,
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL CHECK (kind IN ('phone', 'app_code', 'push')),
    status         TEXT NOT NULL CHECK (status IN ('pending', 'active')),
    label          TEXT,
    position       BIGINT NOT NULL,
    destination    TEXT,
    extension      TEXT,
    -- The TOTP secret, sealed (crate::seal).
    secret         BYTEA,
    last_code_step BIGINT,
    failed_codes   BIGINT NOT NULL DEFAULT 0,
    locked_until   BIGINT,
    created_at     BIGINT NOT NULL,
    confirmed_at   BIGINT,
    -- A push method's device (issue 12): its P-256 public key (SEC1) and its Web Push
    -- subscription (endpoint, the keys of RFC 8291), the latter NULL once the push service
    -- said it is gone.
    device_key     BYTEA,
    push_endpoint  TEXT,
    push_p256dh    BYTEA,
    push_auth      BYTEA
);
CREATE INDEX methods_of_user ON methods (user_id, position);

-- The push method (issue 12; the same tables as SQLite's migration 4): one-time enrolment
-- tokens (their SHA-256) and one request per verification attempt that waits for the device.
CREATE TABLE push_enrolments (
    token_hash  BYTEA PRIMARY KEY,
    method_id   TEXT NOT NULL REFERENCES methods (id) ON DELETE CASCADE,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX push_enrolments_of_method ON push_enrolments (method_id);

CREATE TABLE push_requests (
    verification_id TEXT PRIMARY KEY REFERENCES verifications (id),
    method_id       TEXT NOT NULL,
    nonce           TEXT NOT NULL,
    number          BIGINT NOT NULL,
    -- The three numbers the app offers, as a JSON array.
    choices         TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    answered_at     BIGINT
);
CREATE INDEX push_requests_open ON push_requests (method_id, expires_at)
    WHERE answered_at IS NULL;

CREATE TABLE signin_prompts (
    verification_id    TEXT PRIMARY KEY REFERENCES verifications (id),
    client             TEXT NOT NULL,
    return_url         TEXT NOT NULL,
    -- SHA-256 of the link's token and of the session cookie, never the tokens.
    token_hash         BYTEA NOT NULL UNIQUE,
    token_expires_at   BIGINT NOT NULL,
    token_used_at      BIGINT,
    session_hash       BYTEA UNIQUE,
    csrf_hash          BYTEA,
    session_expires_at BIGINT
);
"#];

/// Applies the migrations not applied yet, in one transaction.
pub(super) async fn migrate(
    client: &mut tokio_postgres::Client,
    now: UnixMs,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations \
         (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await?;
    let applied: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        tracing::warn!(
            applied,
            known = MIGRATIONS.len(),
            "the database schema is newer than this binary (a rolling upgrade?)"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(sql).await?;
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &now],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
