//! The SQLite store: atomic claims (also across two connections to one file, as two
//! processes would), one live call per destination, completion with outbox, recovery.

mod api_support;

use std::collections::HashSet;
use std::sync::Arc;

use api_support::*;
use callverify::config::Secret;
use callverify::store::{
    Completion, Created, Dequeued, Destination, IdempotencyKey, NewVerification, OutboxState,
    SqliteStore, Status, Store, VerificationId, now_ms,
};
use flow::{CallResult, Mode, TimelineEntry, TimelineEvent};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_take_each_verification_once_even_across_connections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claims.db");
    let a: Arc<dyn Store> = Arc::new(
        SqliteStore::open(path.clone(), callverify::webhook::payload)
            .await
            .unwrap(),
    );
    let b: Arc<dyn Store> = Arc::new(
        SqliteStore::open(path, callverify::webhook::payload)
            .await
            .unwrap(),
    );
    const N: usize = 40;
    for i in 0..N {
        queue(a.as_ref(), &format!("+1201555{i:04}"), 1_000 + i as i64).await;
    }
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = if t % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
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
    assert_eq!(
        all.len(),
        N,
        "claimed {} times for {N} verifications",
        all.len()
    );
    assert_eq!(unique.len(), N);
    assert_eq!(a.queue_depth().await.unwrap(), 0);
}

#[tokio::test]
async fn claims_are_fifo_and_one_live_call_per_destination() {
    let store = memory_store().await;
    let first = queue(store.as_ref(), US_NUMBER, 1).await;
    let second = queue(store.as_ref(), US_NUMBER, 2).await;
    let other = queue(store.as_ref(), "+12015550999", 3).await;
    let v = store.claim_next(10).await.unwrap().unwrap();
    assert_eq!(v.id, first);
    assert_eq!(v.call_started_at, Some(10));
    assert_eq!(v.digits_tag, Some(tag(US_NUMBER, "2468")));
    // The second call to the same number waits; the other number goes first.
    assert_eq!(store.claim_next(11).await.unwrap().unwrap().id, other);
    assert!(store.claim_next(12).await.unwrap().is_none());
    store
        .complete(&first, done(CallResult::Confirmed), 13)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.claim_next(14).await.unwrap().unwrap().id, second);
}

#[tokio::test]
async fn completion_persists_the_timeline_queues_the_webhook_and_forgets_the_pin() {
    let store = memory_store().await;
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
    let v = store.get(&id).await.unwrap().unwrap();
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
    // Completing twice changes nothing.
    assert!(
        store
            .complete(&id, done(CallResult::Failed), 10)
            .await
            .unwrap()
            .is_none()
    );
    let outbox = store.outbox(&id).await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(
        (outbox[0].state, outbox[0].next_attempt_at),
        (OutboxState::Pending, 9)
    );
    let msg = store.claim_webhook(9, 100, &[]).await.unwrap().unwrap();
    let payload: serde_json::Value = serde_json::from_str(&msg.payload).unwrap();
    assert_eq!(payload["data"]["result"], "confirmed");
    assert!(!msg.payload.contains("2468"));
    // Leased: not handed out twice.
    assert!(store.claim_webhook(50, 200, &[]).await.unwrap().is_none());
}

#[tokio::test]
async fn recovery_fails_calls_in_flight_and_releases_leases() {
    let store = memory_store().await;
    let live = queue(store.as_ref(), US_NUMBER, 1).await;
    let waiting = queue(store.as_ref(), "+12015550999", 2).await;
    let delivered = queue(store.as_ref(), "+12015550998", 3).await;
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
    let _ = delivered;

    let r = store.recover(2_005).await.unwrap();
    assert_eq!((r.calls_failed, r.webhooks_released, r.queued), (1, 1, 1));
    let v = store.get(&live).await.unwrap().unwrap();
    assert_eq!(
        (v.status, v.result),
        (Status::Completed, Some(CallResult::Failed))
    );
    assert_eq!(
        v.timeline.len(),
        3,
        "what happened before the crash is kept"
    );
    assert_eq!(
        v.timeline[2],
        TimelineEntry {
            at_ms: 2_000,
            event: TimelineEvent::Outcome {
                result: CallResult::Failed
            }
        }
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
async fn idempotency_and_dequeue_at_the_store() {
    let store = memory_store().await;
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
    let again = store
        .create(new(US_NUMBER, 2), key("fp-a"), false, &[])
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
    let Dequeued::Cancelled(v) = store.dequeue(&a.id, "auth", 6).await.unwrap() else {
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
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
}

#[tokio::test]
async fn a_settled_call_holds_its_line_until_it_is_closed() {
    let store = memory_store().await;
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

#[tokio::test]
async fn recovery_frees_the_lines_of_calls_that_were_closing() {
    let store = memory_store().await;
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
async fn queued_verifications_expire_but_calls_do_not() {
    let store = memory_store().await;
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

#[tokio::test]
async fn caps_are_counted_in_the_creating_transaction() {
    use callverify::store::Quota;
    use std::time::Duration;
    let store = memory_store().await;
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

#[tokio::test]
async fn webhook_claims_skip_hosts_at_their_limit() {
    let store = memory_store().await;
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
