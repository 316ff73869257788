//! One store suite, run against SQLite and against a real PostgreSQL (tests/pg_support): atomic
//! claims (also across two handles on one database, as two processes or instances would), one
//! live call per destination, completion with outbox, idempotency across handles. Then what
//! only one backend has: SQLite's recovery at start and file reopening; PostgreSQL's
//! heartbeats, take-over of a dead instance, leases and notifications.

mod api_support;
mod pg_support;

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use api_support::*;
use callverify::config::{Secret, StoreBackend, StoreConfig};
use callverify::store::{
    Completion, Created, Dequeued, Destination, IdempotencyKey, InstanceId, NewVerification,
    OutboxState, PgStore, SqliteStore, Status, Store, VerificationId, now_ms,
};
use flow::{CallResult, Mode, TimelineEntry, TimelineEvent};

/// Two handles on one fresh database (two connections to one SQLite file; two instances on
/// one PostgreSQL database), and whatever keeps the database alive.
struct Db {
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
    _keep: Box<dyn Any + Send>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("suite.db");
    let open = || SqliteStore::open(path.clone(), callverify::webhook::payload);
    Db {
        a: Arc::new(open().await.unwrap()),
        b: Arc::new(open().await.unwrap()),
        _keep: Box::new(dir),
    }
}

async fn pg_store(url: &str) -> PgStore {
    let config = StoreConfig {
        url: Secret::new(url),
        ..StoreConfig::default()
    };
    let StoreBackend::Postgres(pg) = config.backend().unwrap() else {
        panic!("not a postgres URL")
    };
    PgStore::open(
        *pg,
        &config,
        callverify::webhook::payload,
        InstanceId::generate(),
    )
    .await
    .unwrap()
}

async fn postgres() -> Db {
    let url = pg_support::Pg::shared().database().await;
    Db {
        a: Arc::new(pg_store(&url).await),
        b: Arc::new(pg_store(&url).await),
        _keep: Box::new(()),
    }
}

/// The tag of a PIN for the client `auth` calling `number`, as the API seals it.
fn tag(number: &str, pin: &str) -> flow::keys::DigitsTag {
    test_key().seal("auth", number, &Secret::new(pin)).unwrap()
}

fn new(number: &str, created_at: i64) -> NewVerification {
    NewVerification {
        id: VerificationId::generate(),
        client: "auth".into(),
        destination: Destination::Phone(number.into()),
        extension: None,
        mode: Mode::Pin,
        digits_tag: Some(tag(number, "2468")),
        language: "en".into(),
        callback_url: Some("https://auth.example.com/hook".into()),
        metadata: None,
        created_at,
    }
}

async fn queue(store: &dyn Store, number: &str, at: i64) -> VerificationId {
    match store
        .create(new(number, at), None, false, &[])
        .await
        .unwrap()
    {
        Created::New(v) => v.id,
        other => panic!("{other:?}"),
    }
}

fn done(result: CallResult) -> Completion {
    Completion {
        result,
        dtmf_method: None,
        timeline: vec![TimelineEntry {
            at_ms: 0,
            event: TimelineEvent::Outcome { result },
        }],
    }
}

/// Each test of the suite, run once per backend.
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::sqlite().await).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::postgres().await).await
                }
            )*
        }
    };
}

suite!(
    concurrent_claims_take_each_verification_once_across_handles,
    claims_are_fifo_and_one_live_call_per_destination,
    completion_persists_the_timeline_queues_the_webhook_and_forgets_the_pin,
    idempotency_and_dequeue_at_the_store,
    the_same_idempotency_key_on_two_handles_at_once_creates_one_verification,
    identical_requests_on_two_handles_at_once_join_one_verification,
    a_leased_webhook_is_not_handed_out_twice,
    a_settled_call_holds_its_line_until_it_is_closed,
    queued_verifications_expire_but_calls_do_not,
    caps_are_counted_in_the_creating_transaction,
    webhook_claims_skip_hosts_at_their_limit,
);

async fn concurrent_claims_take_each_verification_once_across_handles(db: Db) {
    const N: usize = 40;
    for i in 0..N {
        queue(db.a.as_ref(), &format!("+1201555{i:04}"), 1_000 + i as i64).await;
    }
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = if t % 2 == 0 {
            Arc::clone(&db.a)
        } else {
            Arc::clone(&db.b)
        };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(v) = store.claim_next(now_ms()).await.unwrap() {
                assert_eq!(v.status, Status::Calling);
                mine.push(v.id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), N, "claimed {} times for {N}", all.len());
    assert_eq!(unique.len(), N);
    assert_eq!(db.a.queue_depth().await.unwrap(), 0);
}

async fn claims_are_fifo_and_one_live_call_per_destination(db: Db) {
    let store = &db.a;
    let first = queue(store.as_ref(), US_NUMBER, 1).await;
    let second = queue(store.as_ref(), US_NUMBER, 2).await;
    let other = queue(store.as_ref(), "+12015550999", 3).await;
    let v = store.claim_next(10).await.unwrap().unwrap();
    assert_eq!(v.id, first);
    assert_eq!(v.call_started_at, Some(10));
    assert_eq!(v.digits_tag, Some(tag(US_NUMBER, "2468")));
    // The second call to the same number waits, whichever handle asks; the other number goes.
    assert_eq!(db.b.claim_next(11).await.unwrap().unwrap().id, other);
    assert!(db.b.claim_next(12).await.unwrap().is_none());
    assert!(store.claim_next(12).await.unwrap().is_none());
    store
        .complete(&first, done(CallResult::Confirmed), 13)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(db.b.claim_next(14).await.unwrap().unwrap().id, second);
}

async fn completion_persists_the_timeline_queues_the_webhook_and_forgets_the_pin(db: Db) {
    let store = &db.a;
    let id = queue(store.as_ref(), US_NUMBER, 1).await;
    store.claim_next(2).await.unwrap().unwrap();
    let partial = vec![TimelineEntry {
        at_ms: 0,
        event: TimelineEvent::InviteSent,
    }];
    store
        .progress(&id, Status::Ringing, &partial, 3)
        .await
        .unwrap();
    let v = db.b.get(&id).await.unwrap().unwrap();
    assert_eq!((v.status, v.timeline.len()), (Status::Ringing, 1));
    let completion = Completion {
        result: CallResult::Confirmed,
        dtmf_method: Some(media::DtmfMethod::SipInfo),
        timeline: confirmed_timeline(),
    };
    let v = store.complete(&id, completion, 9).await.unwrap().unwrap();
    assert_eq!(v.status, Status::Completed);
    assert_eq!(v.result, Some(CallResult::Confirmed));
    assert!(v.approved());
    assert_eq!(v.dtmf_method, Some(media::DtmfMethod::SipInfo));
    assert_eq!(v.timeline, confirmed_timeline());
    assert_eq!(v.completed_at, Some(9));
    assert!(
        v.digits_tag.is_none(),
        "the PIN's tag is dropped once it is no longer needed"
    );
    // Completing twice, from either handle, changes nothing.
    for s in [&db.a, &db.b] {
        assert!(
            s.complete(&id, done(CallResult::Failed), 10)
                .await
                .unwrap()
                .is_none()
        );
    }
    let outbox = store.outbox(&id).await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(
        (outbox[0].state, outbox[0].next_attempt_at),
        (OutboxState::Pending, 9)
    );
    assert_eq!(store.next_webhook_due().await.unwrap(), Some(9));
    let msg = store.claim_webhook(9, 100, &[]).await.unwrap().unwrap();
    assert_eq!(msg.id, outbox[0].id);
    let payload: serde_json::Value = serde_json::from_str(&msg.payload).unwrap();
    assert_eq!(payload["data"]["result"], "confirmed");
    assert!(!msg.payload.contains("2468"));
}

async fn a_leased_webhook_is_not_handed_out_twice(db: Db) {
    let id = queue(db.a.as_ref(), US_NUMBER, 1).await;
    db.a.claim_next(2).await.unwrap().unwrap();
    db.a.complete(&id, done(CallResult::NoAnswer), 3)
        .await
        .unwrap()
        .unwrap();
    let msg = db.a.claim_webhook(3, 100, &[]).await.unwrap().unwrap();
    // Leased: neither handle gets it while the lease runs.
    assert!(db.a.claim_webhook(50, 200, &[]).await.unwrap().is_none());
    assert!(db.b.claim_webhook(50, 200, &[]).await.unwrap().is_none());
    db.a.record_attempt(
        callverify::store::Attempt {
            message_id: msg.id.clone(),
            number: 1,
            at: 3,
            status_code: Some(503),
            error: Some("HTTP 503".into()),
            duration_ms: 12,
        },
        OutboxState::Pending,
        60,
    )
    .await
    .unwrap();
    // Recorded and released: due again at 60, for anyone, with the same id and body.
    assert!(db.b.claim_webhook(59, 200, &[]).await.unwrap().is_none());
    let again = db.b.claim_webhook(60, 200, &[]).await.unwrap().unwrap();
    assert_eq!(
        (again.id, again.payload, again.attempts),
        (msg.id, msg.payload, 1)
    );
    let entry = &db.a.outbox(&id).await.unwrap()[0];
    assert_eq!(entry.attempts.len(), 1);
    assert_eq!(entry.attempts[0].status_code, Some(503));
    assert_eq!(entry.attempts[0].duration_ms, 12);
}

async fn idempotency_and_dequeue_at_the_store(db: Db) {
    let store = &db.a;
    let key = |fp: &str| {
        Some(IdempotencyKey {
            key: "k1".into(),
            fingerprint: fp.into(),
        })
    };
    let a = store
        .create(new(US_NUMBER, 1), key("fp-a"), false, &[])
        .await
        .unwrap();
    let Created::New(a) = a else { panic!("{a:?}") };
    let again =
        db.b.create(new(US_NUMBER, 2), key("fp-a"), false, &[])
            .await
            .unwrap();
    assert!(
        matches!(&again, Created::Replayed(v) if v.id == a.id),
        "{again:?}"
    );
    let other = store
        .create(new(US_NUMBER, 3), key("fp-b"), false, &[])
        .await
        .unwrap();
    assert!(matches!(other, Created::IdempotencyConflict));
    // Join: an identical open request of the same client.
    let joined = store
        .create(new(US_NUMBER, 4), None, true, &[])
        .await
        .unwrap();
    assert!(
        matches!(&joined, Created::Joined(v) if v.id == a.id),
        "{joined:?}"
    );
    let mut other_pin = new(US_NUMBER, 5);
    other_pin.digits_tag = Some(tag(US_NUMBER, "1357"));
    assert!(matches!(
        store.create(other_pin, None, true, &[]).await.unwrap(),
        Created::New(_)
    ));

    assert!(matches!(
        store.dequeue(&a.id, "someone-else", 6).await.unwrap(),
        Dequeued::NotFound
    ));
    let Dequeued::Cancelled(v) = db.b.dequeue(&a.id, "auth", 6).await.unwrap() else {
        panic!()
    };
    assert_eq!(v.result, Some(CallResult::Cancelled));
    assert!(matches!(
        store.dequeue(&a.id, "auth", 7).await.unwrap(),
        Dequeued::NotQueued(_)
    ));
    assert_eq!(
        store.outbox(&a.id).await.unwrap().len(),
        1,
        "the cancellation is announced by webhook"
    );
}

async fn the_same_idempotency_key_on_two_handles_at_once_creates_one_verification(db: Db) {
    for round in 0..20 {
        let key = Some(IdempotencyKey {
            key: format!("race-{round}"),
            fingerprint: "same-body".into(),
        });
        let number = format!("+1201555{round:04}");
        let (x, y) = tokio::join!(
            db.a.create(new(&number, round), key.clone(), false, &[]),
            db.b.create(new(&number, round), key.clone(), false, &[]),
        );
        let ids: Vec<(bool, VerificationId)> = [x.unwrap(), y.unwrap()]
            .into_iter()
            .map(|c| match c {
                Created::New(v) => (true, v.id),
                Created::Replayed(v) => (false, v.id),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids[0].1, ids[1].1, "round {round}: two verifications");
        assert_eq!(
            ids.iter().filter(|(fresh, _)| *fresh).count(),
            1,
            "round {round}: one created, one replayed"
        );
    }
    assert_eq!(db.a.queue_depth().await.unwrap(), 20);
}

async fn identical_requests_on_two_handles_at_once_join_one_verification(db: Db) {
    for round in 0..20 {
        let number = format!("+1201555{round:04}");
        let (x, y) = tokio::join!(
            db.a.create(new(&number, round), None, true, &[]),
            db.b.create(new(&number, round), None, true, &[]),
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        let id = |c: &Created| match c {
            Created::New(v) | Created::Joined(v) => v.id.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(id(&x), id(&y), "round {round}");
    }
    assert_eq!(db.a.queue_depth().await.unwrap(), 20);
}

async fn a_settled_call_holds_its_line_until_it_is_closed(db: Db) {
    let store = db.a;
    let first = queue(store.as_ref(), US_NUMBER, 1).await;
    let second = queue(store.as_ref(), US_NUMBER, 2).await;
    assert_eq!(store.claim_next(3).await.unwrap().unwrap().id, first);
    let at_decision = vec![
        TimelineEntry {
            at_ms: 0,
            event: TimelineEvent::InviteSent,
        },
        TimelineEntry {
            at_ms: 4_000,
            event: TimelineEvent::Outcome {
                result: CallResult::Confirmed,
            },
        },
    ];
    let v = store
        .settle(
            &first,
            Completion {
                result: CallResult::Confirmed,
                dtmf_method: Some(media::DtmfMethod::Inband),
                timeline: at_decision.clone(),
            },
            4,
        )
        .await
        .unwrap()
        .unwrap();
    // Completed at the decision: result, webhook, tag cleared…
    assert_eq!(
        (v.status, v.result),
        (Status::Completed, Some(CallResult::Confirmed))
    );
    assert!(v.digits_tag.is_none());
    assert_eq!(store.outbox(&first).await.unwrap().len(), 1);
    // …but the closing prompt still plays on that line: the next call to it waits.
    assert!(store.claim_next(5).await.unwrap().is_none());
    let mut closed = at_decision.clone();
    closed.push(TimelineEntry {
        at_ms: 6_500,
        event: TimelineEvent::ByeSent,
    });
    store.close_call(&first, &closed, 7).await.unwrap();
    let v = store.get(&first).await.unwrap().unwrap();
    assert_eq!(v.timeline, closed);
    assert_eq!(
        (v.result, v.completed_at),
        (Some(CallResult::Confirmed), Some(4))
    );
    let payload: serde_json::Value = serde_json::from_str(
        &store
            .claim_webhook(8, 100, &[])
            .await
            .unwrap()
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(
        payload["data"]["timeline"].as_array().unwrap().len(),
        2,
        "the webhook carries the record at the decision"
    );
    assert_eq!(store.claim_next(9).await.unwrap().unwrap().id, second);
    // A second decision changes nothing.
    assert!(
        store
            .settle(&first, done(CallResult::Failed), 10)
            .await
            .unwrap()
            .is_none()
    );
}

async fn queued_verifications_expire_but_calls_do_not(db: Db) {
    let store = db.a;
    let old_live = queue(store.as_ref(), US_NUMBER, 1).await;
    let old_queued = queue(store.as_ref(), "+12015550998", 2).await;
    let young = queue(store.as_ref(), "+12015550997", 50).await;
    assert_eq!(store.claim_next(3).await.unwrap().unwrap().id, old_live);
    let expired = store.expire_queued(10, 60).await.unwrap();
    assert_eq!(
        expired.iter().map(|v| v.id.clone()).collect::<Vec<_>>(),
        vec![old_queued.clone()]
    );
    let v = store.get(&old_queued).await.unwrap().unwrap();
    assert_eq!(
        (v.status, v.result, v.completed_at),
        (Status::Completed, Some(CallResult::Expired), Some(60))
    );
    assert!(v.digits_tag.is_none());
    assert_eq!(store.outbox(&old_queued).await.unwrap().len(), 1);
    assert_eq!(
        store.get(&old_live).await.unwrap().unwrap().status,
        Status::Calling
    );
    assert_eq!(
        store.get(&young).await.unwrap().unwrap().status,
        Status::Queued
    );
    assert!(store.expire_queued(10, 61).await.unwrap().is_empty());
}

async fn caps_are_counted_in_the_creating_transaction(db: Db) {
    use callverify::store::Quota;
    use std::time::Duration;
    let store = db.a;
    let hour = |key: &str, max| Quota {
        key: key.to_owned(),
        max,
        window: Duration::from_secs(3600),
        what: "per hour",
    };
    let quotas = [hour("global", 2), hour("client:auth", 0)];
    let t0 = 1_000_000;
    for (i, at) in [t0, t0 + 1_000].into_iter().enumerate() {
        let created = store
            .create(new(&format!("+1201555010{i}"), at), None, false, &quotas)
            .await
            .unwrap();
        assert!(matches!(created, Created::New(_)), "{created:?}");
    }
    let refused = store
        .create(new("+12015550109", t0 + 2_000), None, false, &quotas)
        .await
        .unwrap();
    let Created::Limited(limited) = refused else {
        panic!("{refused:?}")
    };
    // The first event leaves the window an hour after it: 3,598 s from now.
    assert_eq!(limited.what, "per hour");
    assert_eq!(
        limited.retry_after,
        Duration::from_millis(3_600_000 - 2_000)
    );
    assert_eq!(store.queue_depth().await.unwrap(), 2, "nothing stored");
    // An hour after the first, one fits again.
    let again = store
        .create(new("+12015550109", t0 + 3_600_000), None, false, &quotas)
        .await
        .unwrap();
    assert!(matches!(again, Created::New(_)), "{again:?}");
    // A refused request consumed nothing: the next slot frees with the second event.
    let refused = store
        .create(new("+12015550108", t0 + 3_600_001), None, false, &quotas)
        .await
        .unwrap();
    assert!(
        matches!(&refused, Created::Limited(l) if l.retry_after == Duration::from_millis(999)),
        "{refused:?}"
    );
}

async fn webhook_claims_skip_hosts_at_their_limit(db: Db) {
    let store = db.a;
    for (n, url) in [
        ("+12015550101", "https://slow.example.com/hook"),
        ("+12015550102", "https://SLOW.example.com:443/other"),
        ("+12015550103", "https://fast.example.com:8443/hook"),
    ] {
        let mut v = new(n, 1);
        v.callback_url = Some(url.to_owned());
        let Created::New(v) = store.create(v, None, false, &[]).await.unwrap() else {
            panic!()
        };
        store
            .complete(&v.id, done(CallResult::NoAnswer), 2)
            .await
            .unwrap();
    }
    let first = store.claim_webhook(3, 100, &[]).await.unwrap().unwrap();
    assert_eq!(first.host, "slow.example.com:443");
    let busy = vec![first.host.clone()];
    let next = store.claim_webhook(3, 100, &busy).await.unwrap().unwrap();
    assert_eq!(
        next.host, "fast.example.com:8443",
        "the busy host's second message waits"
    );
    assert!(store.claim_webhook(3, 100, &busy).await.unwrap().is_none());
    let last = store.claim_webhook(3, 100, &[]).await.unwrap().unwrap();
    assert_eq!(last.host, "slow.example.com:443");
}

mod sqlite_only {
    use super::*;

    #[tokio::test]
    async fn recovery_frees_the_lines_of_calls_that_were_closing() {
        let db = sqlite().await;
        let store = db.a;
        let first = queue(store.as_ref(), US_NUMBER, 1).await;
        let second = queue(store.as_ref(), US_NUMBER, 2).await;
        store.claim_next(3).await.unwrap().unwrap();
        store
            .settle(&first, done(CallResult::Confirmed), 4)
            .await
            .unwrap()
            .unwrap();
        assert!(store.claim_next(5).await.unwrap().is_none());
        store.recover(6).await.unwrap();
        let v = store.get(&first).await.unwrap().unwrap();
        assert_eq!(v.result, Some(CallResult::Confirmed), "the decision stands");
        assert_eq!(store.claim_next(7).await.unwrap().unwrap().id, second);
    }

    #[tokio::test]
    async fn migration_2_wipes_clear_digits_and_plain_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            // A version-1 database as the previous release wrote it: a PIN in clear.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE verifications (id TEXT PRIMARY KEY, client TEXT NOT NULL, \
                 destination TEXT NOT NULL, extension TEXT, mode TEXT NOT NULL, \
                 expected_digits TEXT, language TEXT NOT NULL, callback_url TEXT, metadata TEXT, \
                 status TEXT NOT NULL, result TEXT, dtmf_method TEXT, \
                 timeline TEXT NOT NULL DEFAULT '[]', created_at INTEGER NOT NULL, \
                 updated_at INTEGER NOT NULL, call_started_at INTEGER, completed_at INTEGER);
                 CREATE TABLE idempotency_keys (client TEXT NOT NULL, key TEXT NOT NULL, \
                 fingerprint TEXT NOT NULL, verification_id TEXT NOT NULL, \
                 created_at INTEGER NOT NULL, PRIMARY KEY (client, key));
                 CREATE TABLE webhook_outbox (id TEXT PRIMARY KEY, verification_id TEXT NOT NULL, \
                 client TEXT NOT NULL, url TEXT NOT NULL, payload TEXT NOT NULL, \
                 state TEXT NOT NULL, created_at INTEGER NOT NULL, \
                 next_attempt_at INTEGER NOT NULL, leased INTEGER NOT NULL DEFAULT 0, \
                 attempts INTEGER NOT NULL DEFAULT 0);
                 CREATE TABLE webhook_attempts (message_id TEXT NOT NULL, number INTEGER NOT NULL, \
                 at INTEGER NOT NULL, status_code INTEGER, error TEXT, \
                 duration_ms INTEGER NOT NULL, PRIMARY KEY (message_id, number));
                 INSERT INTO verifications VALUES ('vrf_00000000000000000000000000000001', 'auth', \
                 '+12015550123', NULL, 'pin', '918273645546', 'en', NULL, NULL, 'queued', NULL, \
                 NULL, '[]', 1, 1, NULL, NULL);
                 INSERT INTO idempotency_keys VALUES ('auth', 'k', 'abc', \
                 'vrf_00000000000000000000000000000001', 1);
                 INSERT INTO webhook_outbox (id, verification_id, client, url, payload, state, \
                 created_at, next_attempt_at) VALUES ('msg_1', \
                 'vrf_00000000000000000000000000000001', 'auth', 'https://Auth.Example.com/h', \
                 '{}', 'pending', 1, 1);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(path.clone(), callverify::webhook::payload)
            .await
            .unwrap();
        let id = VerificationId::parse("vrf_00000000000000000000000000000001").unwrap();
        let v = store.get(&id).await.unwrap().unwrap();
        assert!(v.digits_tag.is_none());
        let msg = store.claim_webhook(2, 100, &[]).await.unwrap().unwrap();
        assert_eq!(msg.host, "auth.example.com:443");
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes.windows(12).any(|w| w == b"918273645546"),
                "{file} still holds the clear PIN"
            );
        }
        let conn = rusqlite::Connection::open(&path).unwrap();
        let keys: i64 = conn
            .query_row("SELECT COUNT(*) FROM idempotency_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(keys, 0);
    }

    #[tokio::test]
    async fn recovery_fails_calls_in_flight_as_instance_lost_and_releases_leases() {
        let db = sqlite().await;
        let store = &db.a;
        let live = queue(store.as_ref(), US_NUMBER, 1).await;
        let waiting = queue(store.as_ref(), "+12015550999", 2).await;
        queue(store.as_ref(), "+12015550998", 3).await;
        assert_eq!(store.claim_next(5).await.unwrap().unwrap().id, live);
        let so_far = vec![
            TimelineEntry {
                at_ms: 0,
                event: TimelineEvent::InviteSent,
            },
            TimelineEntry {
                at_ms: 900,
                event: TimelineEvent::Answered,
            },
        ];
        store
            .progress(&live, Status::InCall, &so_far, 6)
            .await
            .unwrap();
        // Another verification completed with its webhook leased by a worker that then died.
        assert_eq!(store.claim_next(7).await.unwrap().unwrap().id, waiting);
        store
            .complete(&waiting, done(CallResult::NoAnswer), 8)
            .await
            .unwrap();
        assert!(
            store
                .claim_webhook(8, 1_000_000, &[])
                .await
                .unwrap()
                .is_some()
        );

        let r = store.recover(2_005).await.unwrap();
        assert_eq!((r.calls_failed, r.webhooks_released, r.queued), (1, 1, 1));
        let v = store.get(&live).await.unwrap().unwrap();
        assert_eq!(
            (v.status, v.result),
            (Status::Completed, Some(CallResult::Failed))
        );
        assert_eq!(
            &v.timeline[..2],
            &so_far[..],
            "what happened before is kept"
        );
        assert_eq!(
            &v.timeline[2..],
            &[
                TimelineEntry {
                    at_ms: 2_000,
                    event: TimelineEvent::InstanceLost
                },
                TimelineEntry {
                    at_ms: 2_000,
                    event: TimelineEvent::Outcome {
                        result: CallResult::Failed
                    }
                }
            ]
        );
        // Both webhooks are due now.
        let mut due = HashSet::new();
        while let Some(m) = store.claim_webhook(2_005, 3_000, &[]).await.unwrap() {
            due.insert(m.verification_id);
        }
        assert_eq!(due, HashSet::from([live, waiting]));
        // Recovery is idempotent.
        assert_eq!(store.recover(2_006).await.unwrap().calls_failed, 0);
    }

    #[tokio::test]
    async fn a_file_store_reopens_with_its_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reopen.db");
        let id = {
            let store = SqliteStore::open(path.clone(), callverify::webhook::payload)
                .await
                .unwrap();
            queue(&store, US_NUMBER, 1).await
        };
        let store = SqliteStore::open(path.clone(), callverify::webhook::payload)
            .await
            .unwrap();
        let v = store.get(&id).await.unwrap().unwrap();
        assert_eq!(
            (v.status, v.digits_tag),
            (Status::Queued, Some(tag(US_NUMBER, "2468")))
        );
        assert!(store.shared().is_none(), "SQLite is one process's store");
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3, "every migration applied");
    }
}

mod postgres_only {
    use super::*;
    use callverify::store::{Beat, ClusterEvent, SharedStore};

    fn shared(s: &PgStore) -> &dyn SharedStore {
        s.shared().expect("PostgreSQL is shared")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn instances_migrate_together_and_reopen_with_their_data() {
        let url = pg_support::Pg::shared().database().await;
        let stores = futures::future::join_all((0..4).map(|_| pg_store(&url))).await;
        let id = queue(&stores[0], US_NUMBER, 1).await;
        let again = pg_store(&url).await;
        let v = again.get(&id).await.unwrap().unwrap();
        assert_eq!(v.digits_tag, Some(tag(US_NUMBER, "2468")));
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let versions: Vec<i64> = client
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, vec![1], "applied once, whoever started first");
        let instances: i64 = client
            .query_one("SELECT COUNT(*) FROM instances", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(instances, 5, "every open store is an instance");
        let debug = format!("{:?}", shared(&again).instance());
        assert!(debug.starts_with("InstanceId(ins_"), "{debug}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_dead_instance_is_taken_over_by_a_survivor() {
        let url = pg_support::Pg::shared().database().await;
        let dead = pg_store(&url).await;
        let survivor = pg_store(&url).await;
        let live = queue(&dead, US_NUMBER, 1).await;
        let finished = queue(&dead, "+12015550999", 2).await;
        let waiting = queue(&dead, "+12015550998", 3).await;
        let t0 = now_ms();
        assert_eq!(dead.claim_next(t0).await.unwrap().unwrap().id, live);
        let so_far = vec![
            TimelineEntry {
                at_ms: 0,
                event: TimelineEvent::InviteSent,
            },
            TimelineEntry {
                at_ms: 900,
                event: TimelineEvent::Answered,
            },
        ];
        dead.progress(&live, Status::InCall, &so_far, t0)
            .await
            .unwrap();
        assert_eq!(dead.claim_next(t0).await.unwrap().unwrap().id, finished);
        dead.complete(&finished, done(CallResult::NoAnswer), t0)
            .await
            .unwrap();
        let leased = dead
            .claim_webhook(t0, t0 + 1_000, &[])
            .await
            .unwrap()
            .unwrap();
        // While the dead one is not known dead, its lease holds even past its end.
        assert!(
            survivor
                .claim_webhook(t0 + 60_000, t0 + 61_000, &[])
                .await
                .unwrap()
                .is_none(),
            "another live instance's lease is never taken"
        );
        // The survivor beats; the other stays silent.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cut = now_ms();
        assert_eq!(
            shared(&survivor).heartbeat(cut + 1).await.unwrap(),
            Beat::Alive
        );
        let nobody = shared(&survivor)
            .take_over(t0 - 1_000, cut + 2)
            .await
            .unwrap();
        assert!(nobody.instances.is_empty(), "{nobody:?}");

        let t = shared(&survivor).take_over(cut, cut + 2_000).await.unwrap();
        assert_eq!(t.instances, vec![shared(&dead).instance().clone()]);
        assert_eq!(t.calls_failed, vec![live.clone()]);
        assert_eq!(t.webhooks_released, 1);
        let v = survivor.get(&live).await.unwrap().unwrap();
        assert_eq!(
            (v.status, v.result),
            (Status::Completed, Some(CallResult::Failed))
        );
        assert_eq!(&v.timeline[..2], &so_far[..]);
        assert_eq!(v.timeline[2].event, TimelineEvent::InstanceLost);
        assert_eq!(
            v.timeline[3].event,
            TimelineEvent::Outcome {
                result: CallResult::Failed
            }
        );
        // Both webhooks are the survivor's to deliver now; the released one keeps its id.
        let mut due = HashSet::new();
        while let Some(m) = survivor
            .claim_webhook(cut + 2_000, cut + 3_000, &[])
            .await
            .unwrap()
        {
            if m.verification_id == finished {
                assert_eq!(m.id, leased.id);
                assert_eq!(m.payload, leased.payload);
            }
            due.insert(m.verification_id);
        }
        assert_eq!(due, HashSet::from([live.clone(), finished]));
        // The queued one was never the dead instance's: the survivor dials it.
        assert_eq!(
            survivor.claim_next(cut + 2_001).await.unwrap().unwrap().id,
            waiting
        );
        // The "dead" instance was only silent: it claims nothing until it beats again, and
        // then learns that it had been declared dead.
        queue(&survivor, "+12015550997", 9).await;
        assert!(dead.claim_next(cut + 3_000).await.unwrap().is_none());
        assert_eq!(
            shared(&dead).heartbeat(cut + 3_000).await.unwrap(),
            Beat::Rejoined
        );
        assert!(dead.claim_next(cut + 3_001).await.unwrap().is_some());
        // Taking over again finds nothing.
        let again = shared(&survivor).take_over(cut, cut + 4_000).await.unwrap();
        assert_eq!(again, Default::default());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn notifications_carry_queue_completion_outbox_and_hang_up() {
        let url = pg_support::Pg::shared().database().await;
        let a = pg_store(&url).await;
        let b = pg_store(&url).await;
        let mut hears_a = shared(&a).listen().await.unwrap();
        let mut hears_b = shared(&b).listen().await.unwrap();
        async fn next_event(l: &mut callverify::store::Listener) -> ClusterEvent {
            tokio::time::timeout(Duration::from_secs(10), l.recv())
                .await
                .expect("a notification within 10 s")
                .expect("the listener is connected")
        }
        let id = queue(&b, US_NUMBER, 1).await;
        assert_eq!(next_event(&mut hears_a).await, ClusterEvent::Queued);
        assert_eq!(next_event(&mut hears_b).await, ClusterEvent::Queued);
        assert_eq!(a.claim_next(now_ms()).await.unwrap().unwrap().id, id);
        // A DELETE on b: the request reaches a, the owner, and only a.
        assert!(shared(&b).request_hang_up(&id).await.unwrap());
        assert_eq!(
            next_event(&mut hears_a).await,
            ClusterEvent::HangUp(id.clone())
        );
        b.complete(&id, done(CallResult::Cancelled), now_ms())
            .await
            .unwrap()
            .unwrap();
        for l in [&mut hears_a, &mut hears_b] {
            let mut got = vec![next_event(l).await, next_event(l).await];
            got.sort_by_key(|e| format!("{e:?}"));
            assert_eq!(
                got,
                vec![
                    ClusterEvent::Completed(id.clone()),
                    ClusterEvent::OutboxQueued
                ]
            );
        }
        assert!(
            !shared(&b).request_hang_up(&id).await.unwrap(),
            "completed: nothing to hang up"
        );
        let since = shared(&a).completed_since(0).await.unwrap();
        assert_eq!(since, vec![id]);
    }
}
