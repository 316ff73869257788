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

fn new(number: &str, created_at: i64) -> NewVerification {
    NewVerification {
        id: VerificationId::generate(),
        client: "auth".into(),
        destination: Destination::Phone(number.into()),
        extension: None,
        mode: Mode::Pin,
        expected_digits: Some(Secret::new("2468")),
        language: "en".into(),
        callback_url: Some("https://auth.example.com/hook".into()),
        metadata: None,
        created_at,
    }
}

async fn queue(store: &dyn Store, number: &str, at: i64) -> VerificationId {
    match store.create(new(number, at), None, false).await.unwrap() {
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
    assert_eq!(v.expected_digits.as_ref().map(Secret::expose), Some("2468"));
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
        v.expected_digits.is_none(),
        "the PIN is dropped once it is no longer needed"
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
    let msg = store.claim_webhook(9, 100).await.unwrap().unwrap();
    let payload: serde_json::Value = serde_json::from_str(&msg.payload).unwrap();
    assert_eq!(payload["data"]["result"], "confirmed");
    assert!(!msg.payload.contains("2468"));
    // Leased: not handed out twice.
    assert!(store.claim_webhook(50, 200).await.unwrap().is_none());
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
    assert!(store.claim_webhook(8, 1_000_000).await.unwrap().is_some());
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
    while let Some(m) = store.claim_webhook(2_005, 3_000).await.unwrap() {
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
        .create(new(US_NUMBER, 1), key("fp-a"), false)
        .await
        .unwrap();
    let Created::New(a) = a else { panic!("{a:?}") };
    let again = store
        .create(new(US_NUMBER, 2), key("fp-a"), false)
        .await
        .unwrap();
    assert!(
        matches!(&again, Created::Replayed(v) if v.id == a.id),
        "{again:?}"
    );
    let other = store
        .create(new(US_NUMBER, 3), key("fp-b"), false)
        .await
        .unwrap();
    assert!(matches!(other, Created::IdempotencyConflict));
    // Join: an identical open request of the same client.
    let joined = store.create(new(US_NUMBER, 4), None, true).await.unwrap();
    assert!(
        matches!(&joined, Created::Joined(v) if v.id == a.id),
        "{joined:?}"
    );
    let mut other_pin = new(US_NUMBER, 5);
    other_pin.expected_digits = Some(Secret::new("1357"));
    assert!(matches!(
        store.create(other_pin, None, true).await.unwrap(),
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
        (v.status, v.expected_digits.as_ref().map(Secret::expose)),
        (Status::Queued, Some("2468"))
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2, "both migrations applied");
}
