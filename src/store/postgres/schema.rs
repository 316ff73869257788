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
