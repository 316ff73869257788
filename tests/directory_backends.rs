//! The sign-in directory (users, methods, verifications by user, hosted prompts) run against
//! SQLite and against a real PostgreSQL (tests/pg_support), each test with two handles on one
//! database (two instances): users scoped by client, the methods' order, a code step accepted
//! once, lockout, verifications by user queued or waiting, switching, single-use prompt tokens,
//! push enrolment tokens and push requests; and the races two instances run into, started on
//! both handles at once.

mod pg_support;

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use callverify::config::{Secret, StoreBackend, StoreConfig};
use callverify::store::{
    CodeConfirmed, Completion, Created, Destination, Directory, IdempotencyKey, InstanceId,
    PgStore, PromptOpened, PushAnswered, PushRegistered, Quota, SqliteStore, Status, Store,
    Switched, VerificationId,
};
use callverify::user::{
    Method, MethodDetail, MethodId, MethodKind, MethodPatch, MethodStatus, NewMethod, NewPrompt,
    NewUser, NewUserVerification, PushDevice, PushRequest, PushSubscription, SealedSecret, User,
    UserId,
};
use flow::{CallResult, TimelineEntry, TimelineEvent};

/// Two handles on one fresh database, each as a store and as its directory.
struct Db {
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
    da: Arc<dyn Directory>,
    db: Arc<dyn Directory>,
    _keep: Box<dyn Any + Send>,
}

impl Db {
    fn new(a: Arc<dyn Store>, b: Arc<dyn Store>, keep: Box<dyn Any + Send>) -> Db {
        Db {
            da: a.directory().expect("a directory"),
            db: b.directory().expect("a directory"),
            a,
            b,
            _keep: keep,
        }
    }

    /// Handle `i % 2` (to spread concurrent work over both).
    fn dir(&self, i: usize) -> Arc<dyn Directory> {
        Arc::clone(if i.is_multiple_of(2) {
            &self.da
        } else {
            &self.db
        })
    }
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("directory.db");
    let open = || SqliteStore::open(path.clone(), callverify::webhook::payload);
    Db::new(
        Arc::new(open().await.unwrap()),
        Arc::new(open().await.unwrap()),
        Box::new(dir),
    )
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
    Db::new(
        Arc::new(pg_store(&url).await),
        Arc::new(pg_store(&url).await),
        Box::new(()),
    )
}

/// Each test, run once per backend.
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
    users_are_scoped_by_client,
    methods_keep_the_users_order,
    an_app_code_step_is_accepted_once,
    wrong_codes_end_the_attempt_and_lock_the_method,
    verifications_by_user_queue_a_call_or_wait_for_the_user,
    switching_ends_the_attempt_and_a_late_call_report_changes_nothing,
    waiting_verifications_complete_once,
    a_prompt_token_opens_one_session,
    race_the_same_step_on_two_verifications_is_accepted_once,
    race_the_same_code_on_one_verification_confirms_once,
    race_failures_on_two_handles_all_count_and_lock_once,
    race_methods_added_at_once_stay_within_the_maximum_and_in_order,
    race_a_prompt_token_opened_on_both_handles_opens_once,
    race_a_switch_and_the_calls_completion_never_both_win,
    race_verifications_by_user_created_at_once_stay_within_the_cap,
    a_push_enrolment_token_registers_one_device_once,
    a_push_request_is_answered_once_before_it_expires,
    race_a_push_enrolment_token_used_on_both_handles_registers_once,
    race_a_push_registration_and_the_methods_deletion_never_deadlock,
    race_answers_to_one_push_request_complete_once,
);

const MAX_METHODS: u32 = 5;

async fn user(d: &dyn Directory, client: &str, external_id: &str) -> User {
    d.create_user(NewUser {
        id: UserId::generate(),
        client: client.into(),
        external_id: external_id.into(),
        display_name: Some("Alice".into()),
        created_at: 1,
    })
    .await
    .unwrap()
    .expect("a new user")
}

fn phone(number: &str) -> MethodDetail {
    MethodDetail::Phone {
        destination: Destination::Phone(number.into()),
        extension: None,
    }
}

fn app_code() -> MethodDetail {
    MethodDetail::AppCode {
        secret: SealedSecret(rand::random::<[u8; 40]>().to_vec()),
    }
}

async fn add(
    d: &dyn Directory,
    user: &UserId,
    detail: MethodDetail,
    status: MethodStatus,
) -> Method {
    d.add_method(
        NewMethod {
            id: MethodId::generate(),
            user_id: user.clone(),
            status,
            label: None,
            detail,
            created_at: 2,
        },
        MAX_METHODS,
    )
    .await
    .unwrap()
    .expect("room for a method")
}

fn by_user(user: &UserId, method: &Method, at: i64) -> NewUserVerification {
    NewUserVerification {
        id: VerificationId::generate(),
        client: "auth".into(),
        user_id: user.clone(),
        method: method.clone(),
        language: "en".into(),
        callback_url: Some("https://auth.example.com/hook".into()),
        metadata: None,
        created_at: at,
    }
}

async fn start(d: &dyn Directory, user: &UserId, method: &Method, at: i64) -> VerificationId {
    match d
        .create_user_verification(by_user(user, method, at), None, &[])
        .await
        .unwrap()
    {
        Created::New(v) => v.id,
        other => panic!("{other:?}"),
    }
}

/// A user of `auth` with an active app code (proved at step 100).
async fn with_app_code(d: &dyn Directory, external_id: &str) -> (User, Method) {
    let u = user(d, "auth", external_id).await;
    let m = add(d, &u.id, app_code(), MethodStatus::Pending).await;
    let m = d
        .activate_method(&u.id, &m.id, 100, 3)
        .await
        .unwrap()
        .unwrap();
    (u, m)
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

fn ids(methods: &[Method]) -> Vec<MethodId> {
    methods.iter().map(|m| m.id.clone()).collect()
}

async fn users_are_scoped_by_client(db: Db) {
    let alice = user(db.da.as_ref(), "auth", "alice").await;
    assert_eq!(
        (alice.client.as_str(), alice.external_id.as_str()),
        ("auth", "alice")
    );
    // The external id is unique per client, whichever handle asks.
    let again = db
        .db
        .create_user(NewUser {
            id: UserId::generate(),
            client: "auth".into(),
            external_id: "alice".into(),
            display_name: None,
            created_at: 5,
        })
        .await
        .unwrap();
    assert!(again.is_none());
    let theirs = user(db.db.as_ref(), "other", "alice").await;
    assert_ne!(theirs.id, alice.id);
    // Another client never sees the user.
    assert!(db.db.user("other", &alice.id).await.unwrap().is_none());
    assert_eq!(
        db.db.user("auth", &alice.id).await.unwrap().unwrap().id,
        alice.id
    );
    assert_eq!(
        db.da
            .user_by_external_id("other", "alice")
            .await
            .unwrap()
            .unwrap()
            .id,
        theirs.id
    );
    assert!(
        db.da
            .user_by_external_id("auth", "bob")
            .await
            .unwrap()
            .is_none()
    );
    let m = add(
        db.da.as_ref(),
        &alice.id,
        phone("+12015550123"),
        MethodStatus::Active,
    )
    .await;
    assert!(!db.db.delete_user("other", &alice.id).await.unwrap());
    assert!(db.db.user("auth", &alice.id).await.unwrap().is_some());
    assert!(db.db.delete_user("auth", &alice.id).await.unwrap());
    assert!(!db.da.delete_user("auth", &alice.id).await.unwrap());
    assert!(db.da.user("auth", &alice.id).await.unwrap().is_none());
    assert!(db.da.method(&alice.id, &m.id).await.unwrap().is_none());
    assert!(db.da.methods(&alice.id).await.unwrap().is_empty());
    // The other client's user is untouched; the external id is free again.
    assert!(db.da.user("other", &theirs.id).await.unwrap().is_some());
    user(db.da.as_ref(), "auth", "alice").await;
}

async fn methods_keep_the_users_order(db: Db) {
    let u = user(db.da.as_ref(), "auth", "alice").await;
    let first = add(
        db.da.as_ref(),
        &u.id,
        phone("+12015550001"),
        MethodStatus::Active,
    )
    .await;
    let second = add(db.db.as_ref(), &u.id, app_code(), MethodStatus::Pending).await;
    let third = add(
        db.da.as_ref(),
        &u.id,
        phone("+12015550003"),
        MethodStatus::Active,
    )
    .await;
    assert_eq!((first.position, second.position, third.position), (0, 1, 2));
    assert_eq!(first.confirmed_at, Some(2), "an active method is confirmed");
    assert_eq!(second.confirmed_at, None);
    assert_eq!(second.kind(), MethodKind::AppCode);
    let listed = db.db.methods(&u.id).await.unwrap();
    assert_eq!(
        ids(&listed),
        [first.id.clone(), second.id.clone(), third.id.clone()]
    );
    match &listed[0].detail {
        MethodDetail::Phone { destination, .. } => assert_eq!(destination.expose(), "+12015550001"),
        other => panic!("{other:?}"),
    }
    match (&listed[1].detail, &second.detail) {
        (MethodDetail::AppCode { secret }, MethodDetail::AppCode { secret: stored }) => {
            assert_eq!(secret, stored, "the sealed secret comes back byte for byte")
        }
        other => panic!("{other:?}"),
    }
    // The maximum holds.
    for _ in 3..MAX_METHODS {
        add(
            db.da.as_ref(),
            &u.id,
            phone("+12015550009"),
            MethodStatus::Active,
        )
        .await;
    }
    let over = db
        .db
        .add_method(
            NewMethod {
                id: MethodId::generate(),
                user_id: u.id.clone(),
                status: MethodStatus::Active,
                label: None,
                detail: phone("+12015550010"),
                created_at: 3,
            },
            MAX_METHODS,
        )
        .await
        .unwrap();
    assert!(over.is_none());
    let all = ids(&db.da.methods(&u.id).await.unwrap());
    let (fourth, fifth) = (all[3].clone(), all[4].clone());
    assert!(db.da.delete_method(&u.id, &fourth).await.unwrap());
    assert!(db.da.delete_method(&u.id, &fifth).await.unwrap());
    // Move the last to the front; rename the middle one.
    let moved = db
        .db
        .update_method(
            &u.id,
            &third.id,
            MethodPatch {
                label: None,
                position: Some(0),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.position, 0);
    let renamed = db
        .da
        .update_method(
            &u.id,
            &first.id,
            MethodPatch {
                label: Some(Some("office".into())),
                position: None,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.label.as_deref(), Some("office"));
    let listed = db.da.methods(&u.id).await.unwrap();
    assert_eq!(
        ids(&listed),
        [third.id.clone(), first.id.clone(), second.id.clone()]
    );
    assert_eq!(
        listed.iter().map(|m| m.position).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    // Beyond the end means last; clearing a label.
    db.db
        .update_method(
            &u.id,
            &third.id,
            MethodPatch {
                label: None,
                position: Some(99),
            },
        )
        .await
        .unwrap()
        .unwrap();
    let cleared = db
        .db
        .update_method(
            &u.id,
            &first.id,
            MethodPatch {
                label: Some(None),
                position: None,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cleared.label, None);
    assert_eq!(
        ids(&db.da.methods(&u.id).await.unwrap()),
        [first.id.clone(), second.id.clone(), third.id.clone()]
    );
    // Deleting renumbers the rest; unknown or foreign methods change nothing.
    assert!(db.db.delete_method(&u.id, &second.id).await.unwrap());
    assert!(!db.db.delete_method(&u.id, &second.id).await.unwrap());
    let listed = db.da.methods(&u.id).await.unwrap();
    assert_eq!(ids(&listed), [first.id.clone(), third.id.clone()]);
    assert_eq!(listed[1].position, 1);
    let stranger = user(db.da.as_ref(), "auth", "mallory").await;
    assert!(
        db.da
            .update_method(&stranger.id, &first.id, MethodPatch::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(!db.da.delete_method(&stranger.id, &first.id).await.unwrap());
    assert!(
        db.da
            .method(&stranger.id, &first.id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(db.da.methods(&u.id).await.unwrap().len(), 2);
}

async fn an_app_code_step_is_accepted_once(db: Db) {
    let u = user(db.da.as_ref(), "auth", "alice").await;
    let pending = add(db.da.as_ref(), &u.id, app_code(), MethodStatus::Pending).await;
    let active = db
        .db
        .activate_method(&u.id, &pending.id, 100, 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(active.status, MethodStatus::Active);
    assert_eq!(
        (active.last_code_step, active.confirmed_at),
        (Some(100), Some(3))
    );
    assert!(
        db.da
            .activate_method(&u.id, &pending.id, 101, 4)
            .await
            .unwrap()
            .is_none(),
        "activated once"
    );
    assert_eq!(
        db.da.sealed_secret_sample().await.unwrap().unwrap().0,
        pending.id
    );
    let id = start(db.da.as_ref(), &u.id, &active, 10).await;
    let v = db.b.get(&id).await.unwrap().unwrap();
    assert_eq!(v.status, Status::AwaitingUser);
    assert!(v.destination.is_none());
    // The step that proved the enrolment, or an older one: refused, nothing changes.
    for step in [100, 99] {
        let r = db.db.confirm_code(&id, &active.id, step, 11).await.unwrap();
        assert!(matches!(r, CodeConfirmed::Replayed), "{step}: {r:?}");
    }
    assert_eq!(
        db.a.get(&id).await.unwrap().unwrap().status,
        Status::AwaitingUser
    );
    // Another method's code is not what this verification waits for.
    let other = add(db.da.as_ref(), &u.id, app_code(), MethodStatus::Active).await;
    let r = db.da.confirm_code(&id, &other.id, 500, 12).await.unwrap();
    assert!(matches!(r, CodeConfirmed::NotAwaiting), "{r:?}");
    let CodeConfirmed::Confirmed(v) = db.da.confirm_code(&id, &active.id, 101, 13).await.unwrap()
    else {
        panic!("a fresh step confirms")
    };
    assert_eq!(
        (v.status, v.result),
        (Status::Completed, Some(CallResult::Confirmed))
    );
    assert_eq!(v.completed_at, Some(13));
    assert_eq!(v.attempts.len(), 1);
    assert_eq!(v.attempts[0].result, Some(CallResult::Confirmed));
    assert_eq!(v.attempts[0].ended_at, Some(13));
    assert_eq!(db.b.outbox(&id).await.unwrap().len(), 1, "webhook queued");
    let r = db.db.confirm_code(&id, &active.id, 102, 14).await.unwrap();
    assert!(matches!(r, CodeConfirmed::NotAwaiting), "{r:?}");
    // In a new verification the same step is still spent; the next one works.
    let id2 = start(db.db.as_ref(), &u.id, &active, 20).await;
    let r = db.da.confirm_code(&id2, &active.id, 101, 21).await.unwrap();
    assert!(matches!(r, CodeConfirmed::Replayed), "{r:?}");
    let r = db.db.confirm_code(&id2, &active.id, 102, 22).await.unwrap();
    assert!(matches!(r, CodeConfirmed::Confirmed(_)), "{r:?}");
    let m = db.da.method(&u.id, &active.id).await.unwrap().unwrap();
    assert_eq!(m.last_code_step, Some(102));
}

async fn wrong_codes_end_the_attempt_and_lock_the_method(db: Db) {
    const MAX_WRONG: u32 = 3;
    const LOCK_AFTER: u32 = 5;
    const LOCK_MS: i64 = 900_000;
    let (u, m) = with_app_code(db.da.as_ref(), "alice").await;
    let id = start(db.da.as_ref(), &u.id, &m, 10).await;
    for i in 1..=MAX_WRONG {
        let d = db.dir(i as usize);
        let r = d
            .reject_code(
                &id,
                &m.id,
                10 + i64::from(i),
                MAX_WRONG,
                LOCK_AFTER,
                LOCK_MS,
            )
            .await
            .unwrap();
        assert!(r.locked_until.is_none());
        let v = r.verification.expect("waiting for this method's code");
        assert_eq!(v.attempts[0].wrong_codes, i);
        if i < MAX_WRONG {
            assert_eq!(v.status, Status::AwaitingUser);
        } else {
            assert_eq!(
                (v.status, v.result),
                (Status::Completed, Some(CallResult::WrongDigits))
            );
            assert_eq!(db.a.outbox(&id).await.unwrap().len(), 1);
        }
    }
    // Completed: a wrong code still counts against the method, not in the verification.
    let r = db
        .db
        .reject_code(&id, &m.id, 20, MAX_WRONG, LOCK_AFTER, LOCK_MS)
        .await
        .unwrap();
    assert!(r.verification.is_none() && r.locked_until.is_none());
    assert_eq!(
        db.da
            .method(&u.id, &m.id)
            .await
            .unwrap()
            .unwrap()
            .failed_codes,
        4
    );
    // The fifth in a row locks (and starts counting again).
    let id2 = start(db.db.as_ref(), &u.id, &m, 30).await;
    let r = db
        .da
        .reject_code(&id2, &m.id, 31, MAX_WRONG, LOCK_AFTER, LOCK_MS)
        .await
        .unwrap();
    assert_eq!(r.locked_until, Some(31 + LOCK_MS));
    assert_eq!(r.verification.unwrap().status, Status::AwaitingUser);
    let locked = db.db.method(&u.id, &m.id).await.unwrap().unwrap();
    assert_eq!(
        (locked.failed_codes, locked.locked_until),
        (0, Some(31 + LOCK_MS))
    );
    // Enrolment failures count the same way; a right code resets count and lock.
    assert_eq!(
        db.db
            .record_code_failure(&m.id, 40, LOCK_AFTER, LOCK_MS)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        db.da
            .method(&u.id, &m.id)
            .await
            .unwrap()
            .unwrap()
            .failed_codes,
        1
    );
    let r = db.da.confirm_code(&id2, &m.id, 101, 41).await.unwrap();
    assert!(matches!(r, CodeConfirmed::Confirmed(_)), "{r:?}");
    let fresh = db.db.method(&u.id, &m.id).await.unwrap().unwrap();
    assert_eq!((fresh.failed_codes, fresh.locked_until), (0, None));
}

async fn verifications_by_user_queue_a_call_or_wait_for_the_user(db: Db) {
    let (u, code) = with_app_code(db.da.as_ref(), "alice").await;
    let call = add(
        db.da.as_ref(),
        &u.id,
        phone("+12015550123"),
        MethodStatus::Active,
    )
    .await;
    let waiting = start(db.da.as_ref(), &u.id, &code, 10).await;
    let queued = match db
        .db
        .create_user_verification(
            by_user(&u.id, &call, 11),
            Some(IdempotencyKey {
                key: "k1".into(),
                fingerprint: "f1".into(),
            }),
            &[],
        )
        .await
        .unwrap()
    {
        Created::New(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(queued.status, Status::Queued);
    assert_eq!(
        queued.destination.as_ref().unwrap().expose(),
        "+12015550123"
    );
    assert_eq!(queued.user_id.as_ref(), Some(&u.id));
    assert_eq!(queued.method.as_ref().unwrap().id, call.id);
    assert_eq!(queued.attempts.len(), 1);
    assert_eq!(queued.attempts[0].method.kind, MethodKind::Phone);
    // The idempotency key, on the other handle: replayed, or a conflict.
    let key = |fingerprint: &str| IdempotencyKey {
        key: "k1".into(),
        fingerprint: fingerprint.into(),
    };
    match db
        .da
        .create_user_verification(by_user(&u.id, &call, 12), Some(key("f1")), &[])
        .await
        .unwrap()
    {
        Created::Replayed(v) => assert_eq!(v.id, queued.id),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        db.da
            .create_user_verification(by_user(&u.id, &call, 12), Some(key("f2")), &[])
            .await
            .unwrap(),
        Created::IdempotencyConflict
    ));
    // Only the call is claimed; only the app code waits for its user.
    assert_eq!(db.a.queue_depth().await.unwrap(), 1);
    let claimed = db.b.claim_next(13).await.unwrap().unwrap();
    assert_eq!(claimed.id, queued.id);
    assert!(db.a.claim_next(14).await.unwrap().is_none());
    let awaiting = db.db.awaiting(10).await.unwrap();
    assert_eq!(awaiting.len(), 1);
    assert_eq!(
        (&awaiting[0].id, awaiting[0].kind, awaiting[0].created_at),
        (&waiting, MethodKind::AppCode, 10)
    );
    // Caps count verifications by user too, across handles.
    let quota = [Quota {
        key: format!("user:{}", u.id),
        max: 1,
        window: Duration::from_secs(3600),
        what: "verifications of this user per hour",
    }];
    assert!(matches!(
        db.da
            .create_user_verification(by_user(&u.id, &code, 20), None, &quota)
            .await
            .unwrap(),
        Created::New(_)
    ));
    match db
        .db
        .create_user_verification(by_user(&u.id, &code, 21), None, &quota)
        .await
        .unwrap()
    {
        Created::Limited(l) => assert_eq!(l.retry_after, Duration::from_millis(3_600_000 - 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(db.da.awaiting(10).await.unwrap().len(), 2);
    assert_eq!(
        db.da.awaiting(1).await.unwrap()[0].id,
        waiting,
        "oldest first"
    );
}

async fn switching_ends_the_attempt_and_a_late_call_report_changes_nothing(db: Db) {
    let (u, code) = with_app_code(db.da.as_ref(), "alice").await;
    let call = add(
        db.da.as_ref(),
        &u.id,
        phone("+12015550123"),
        MethodStatus::Active,
    )
    .await;
    let office = add(
        db.da.as_ref(),
        &u.id,
        phone("+12015550999"),
        MethodStatus::Active,
    )
    .await;
    let id = start(db.da.as_ref(), &u.id, &call, 10).await;
    db.a.claim_next(20).await.unwrap().unwrap();
    let partial = vec![TimelineEntry {
        at_ms: 0,
        event: TimelineEvent::InviteSent,
    }];
    db.a.progress(&id, Status::Ringing, &partial, 21)
        .await
        .unwrap();
    // Unknown to another client, or to another user's method.
    assert!(matches!(
        db.db.switch_method(&id, "other", &code, 25).await.unwrap(),
        Switched::NotFound
    ));
    let (_, foreign) = with_app_code(db.db.as_ref(), "bob").await;
    assert!(matches!(
        db.db
            .switch_method(&id, "auth", &foreign, 25)
            .await
            .unwrap(),
        Switched::NotFound
    ));
    let Switched::Switched {
        verification: v,
        was_in_call,
    } = db.db.switch_method(&id, "auth", &code, 30).await.unwrap()
    else {
        panic!("switched")
    };
    assert!(was_in_call);
    assert_eq!(v.status, Status::AwaitingUser);
    assert!(v.destination.is_none() && v.timeline.is_empty());
    assert_eq!(v.method.as_ref().unwrap().id, code.id);
    assert_eq!(v.attempts.len(), 2);
    let first = &v.attempts[0];
    assert_eq!(
        (first.result, first.ended_at),
        (Some(CallResult::Cancelled), Some(30))
    );
    assert_eq!(
        first.timeline.len(),
        2,
        "the call's timeline, then the outcome"
    );
    assert_eq!(first.timeline[1].at_ms, 10);
    assert_eq!(
        (v.attempts[1].started_at, v.attempts[1].ended_at),
        (30, None)
    );
    // The call's late report (it was hung up) does not complete the verification.
    assert!(
        db.a.complete(&id, done(CallResult::NoAnswer), 31)
            .await
            .unwrap()
            .is_none()
    );
    assert!(db.a.outbox(&id).await.unwrap().is_empty());
    // To the office phone: it waits, then its call is queued.
    let Switched::Switched {
        verification: v,
        was_in_call,
    } = db.da.switch_method(&id, "auth", &office, 40).await.unwrap()
    else {
        panic!("switched")
    };
    assert!(!was_in_call);
    assert_eq!((v.status, v.attempts.len()), (Status::AwaitingUser, 3));
    assert_eq!(
        v.attempts[1].timeline.len(),
        0,
        "an app code has no call timeline"
    );
    assert_eq!(db.a.queue_depth().await.unwrap(), 0);
    let q = db.db.start_phone_attempt(&id, 41).await.unwrap().unwrap();
    assert_eq!(q.status, Status::Queued);
    assert_eq!(q.destination.unwrap().expose(), "+12015550999");
    assert!(
        db.da.start_phone_attempt(&id, 42).await.unwrap().is_none(),
        "once"
    );
    let claimed = db.b.claim_next(43).await.unwrap().unwrap();
    assert_eq!(claimed.id, id);
    let v =
        db.a.complete(&id, done(CallResult::Confirmed), 44)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(v.result, Some(CallResult::Confirmed));
    assert!(matches!(
        db.db.switch_method(&id, "auth", &code, 45).await.unwrap(),
        Switched::Completed(_)
    ));
    // A phone method deleted before its attempt starts: the verification fails.
    let id2 = start(db.da.as_ref(), &u.id, &code, 50).await;
    db.db
        .switch_method(&id2, "auth", &office, 51)
        .await
        .unwrap();
    assert!(db.da.delete_method(&u.id, &office.id).await.unwrap());
    let failed = db.db.start_phone_attempt(&id2, 52).await.unwrap().unwrap();
    assert_eq!(
        (failed.status, failed.result),
        (Status::Completed, Some(CallResult::Failed))
    );
    assert_eq!(db.a.outbox(&id2).await.unwrap().len(), 1);
}

async fn waiting_verifications_complete_once(db: Db) {
    let (u, code) = with_app_code(db.da.as_ref(), "alice").await;
    let call = add(
        db.da.as_ref(),
        &u.id,
        phone("+12015550123"),
        MethodStatus::Active,
    )
    .await;
    let id = start(db.da.as_ref(), &u.id, &code, 10).await;
    let v = db
        .db
        .complete_awaiting(&id, CallResult::Expired, 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (v.status, v.result),
        (Status::Completed, Some(CallResult::Expired))
    );
    assert_eq!(v.attempts[0].result, Some(CallResult::Expired));
    assert!(
        db.da
            .complete_awaiting(&id, CallResult::Cancelled, 21)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(db.a.outbox(&id).await.unwrap().len(), 1);
    assert!(db.da.awaiting(10).await.unwrap().is_empty());
    // A queued call is not waiting for its user.
    let queued = start(db.da.as_ref(), &u.id, &call, 30).await;
    assert!(
        db.db
            .complete_awaiting(&queued, CallResult::Expired, 31)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        db.a.get(&queued).await.unwrap().unwrap().status,
        Status::Queued
    );
}

fn hash(tag: u8) -> [u8; 32] {
    let mut h = rand::random::<[u8; 32]>();
    h[0] = tag;
    h
}

async fn prompt_for(db: &Db, expires_at: i64) -> (VerificationId, [u8; 32]) {
    let (u, code) = with_app_code(db.da.as_ref(), &format!("u{}", hex::encode(hash(0)))).await;
    let id = start(db.da.as_ref(), &u.id, &code, 10).await;
    let token = hash(1);
    db.db
        .create_prompt(NewPrompt {
            verification_id: id.clone(),
            client: "auth".into(),
            return_url: "https://app.example.com/back".into(),
            token_hash: token,
            token_expires_at: expires_at,
        })
        .await
        .unwrap();
    (id, token)
}

async fn a_prompt_token_opens_one_session(db: Db) {
    let (id, token) = prompt_for(&db, 1_000).await;
    let (session, csrf) = (hash(2), hash(3));
    let PromptOpened::Opened(p) = db
        .da
        .open_prompt(token, session, csrf, 100, 5_000)
        .await
        .unwrap()
    else {
        panic!("a fresh token opens")
    };
    assert_eq!(p.verification_id, id);
    assert_eq!(p.return_url, "https://app.example.com/back");
    assert!(p.token_used);
    assert_eq!(
        (p.session_hash, p.csrf_hash, p.session_expires_at),
        (Some(session), Some(csrf), Some(5_000))
    );
    assert!(matches!(
        db.db
            .open_prompt(token, hash(4), hash(5), 101, 5_000)
            .await
            .unwrap(),
        PromptOpened::AlreadyUsed
    ));
    assert!(matches!(
        db.db
            .open_prompt(hash(6), hash(7), hash(8), 101, 5_000)
            .await
            .unwrap(),
        PromptOpened::Unknown
    ));
    // The session is bound to its verification, until it expires.
    let s = db
        .db
        .prompt_session(&id, session, 4_999)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.client, "auth");
    assert!(
        db.db
            .prompt_session(&id, session, 5_000)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.da
            .prompt_session(&id, hash(9), 200)
            .await
            .unwrap()
            .is_none()
    );
    let (other, _) = prompt_for(&db, 1_000).await;
    assert!(
        db.da
            .prompt_session(&other, session, 200)
            .await
            .unwrap()
            .is_none()
    );
    // A link not opened in time is expired.
    let (_, late) = prompt_for(&db, 1_000).await;
    assert!(matches!(
        db.da
            .open_prompt(late, hash(10), hash(11), 1_000, 5_000)
            .await
            .unwrap(),
        PromptOpened::Expired
    ));
}

/// Runs `f(handle i)` for i in 0..n at once, half on each handle; the results.
async fn at_once<T, F, Fut>(db: &Db, n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Arc<dyn Directory>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let gate = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let gate = Arc::clone(&gate);
            let work = f(i, db.dir(i));
            tokio::spawn(async move {
                gate.wait().await;
                work.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn race_the_same_step_on_two_verifications_is_accepted_once(db: Db) {
    let (u, m) = with_app_code(db.da.as_ref(), "alice").await;
    for round in 0..10u64 {
        let step = 200 + round;
        let mut vids = Vec::new();
        for i in 0..4 {
            vids.push(start(db.dir(i).as_ref(), &u.id, &m, 10).await);
        }
        let vids = Arc::new(vids);
        let results = at_once(&db, 4, |i, d| {
            let (vids, m) = (Arc::clone(&vids), m.id.clone());
            async move { d.confirm_code(&vids[i], &m, step, 20).await.unwrap() }
        })
        .await;
        let confirmed = results
            .iter()
            .filter(|r| matches!(r, CodeConfirmed::Confirmed(_)))
            .count();
        let replayed = results
            .iter()
            .filter(|r| matches!(r, CodeConfirmed::Replayed))
            .count();
        assert_eq!((confirmed, replayed), (1, 3), "round {round}: {results:?}");
        for v in vids.iter() {
            db.da
                .complete_awaiting(v, CallResult::Cancelled, 30)
                .await
                .unwrap();
        }
    }
    let m = db.db.method(&u.id, &m.id).await.unwrap().unwrap();
    assert_eq!(m.last_code_step, Some(209));
}

async fn race_the_same_code_on_one_verification_confirms_once(db: Db) {
    let (u, m) = with_app_code(db.da.as_ref(), "alice").await;
    for round in 0..10u64 {
        let id = start(db.da.as_ref(), &u.id, &m, 10).await;
        let results = at_once(&db, 4, |_, d| {
            let (id, m) = (id.clone(), m.id.clone());
            async move { d.confirm_code(&id, &m, 300 + round, 20).await.unwrap() }
        })
        .await;
        let confirmed = results
            .iter()
            .filter(|r| matches!(r, CodeConfirmed::Confirmed(_)))
            .count();
        assert_eq!(confirmed, 1, "round {round}: {results:?}");
        assert_eq!(db.a.outbox(&id).await.unwrap().len(), 1, "one webhook");
    }
}

async fn race_failures_on_two_handles_all_count_and_lock_once(db: Db) {
    const LOCK_AFTER: u32 = 5;
    let (u, m) = with_app_code(db.da.as_ref(), "alice").await;
    // 12 failures at once: locks at the 5th and the 10th, 2 counted after.
    let locks = at_once(&db, 12, |i, d| {
        let m = m.id.clone();
        async move {
            d.record_code_failure(&m, 100 + i as i64, LOCK_AFTER, 1_000)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(locks.iter().flatten().count(), 2, "{locks:?}");
    let after = db.db.method(&u.id, &m.id).await.unwrap().unwrap();
    assert_eq!(after.failed_codes, 2);
    assert!(after.locked_until.is_some());
    // Wrong codes in one verification at once: each counted once in the attempt.
    let id = start(db.da.as_ref(), &u.id, &m, 10).await;
    let rejected = at_once(&db, 6, |_, d| {
        let (id, m) = (id.clone(), m.id.clone());
        async move {
            d.reject_code(&id, &m, 20, 3, 100, 1_000)
                .await
                .unwrap()
                .verification
        }
    })
    .await;
    let mut counts: Vec<u32> = rejected
        .iter()
        .flatten()
        .map(|v| v.attempts[0].wrong_codes)
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        [1, 2, 3],
        "three counted, then completed: {rejected:?}"
    );
    let v = db.a.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (v.status, v.result),
        (Status::Completed, Some(CallResult::WrongDigits))
    );
    assert_eq!(db.b.outbox(&id).await.unwrap().len(), 1);
    assert_eq!(
        db.db
            .method(&u.id, &m.id)
            .await
            .unwrap()
            .unwrap()
            .failed_codes,
        8
    );
}

async fn race_methods_added_at_once_stay_within_the_maximum_and_in_order(db: Db) {
    let u = user(db.da.as_ref(), "auth", "alice").await;
    let added = at_once(&db, 12, |i, d| {
        let u = u.id.clone();
        async move {
            d.add_method(
                NewMethod {
                    id: MethodId::generate(),
                    user_id: u,
                    status: MethodStatus::Active,
                    label: None,
                    detail: phone(&format!("+120155501{i:02}")),
                    created_at: 2,
                },
                MAX_METHODS,
            )
            .await
            .unwrap()
        }
    })
    .await;
    assert_eq!(added.iter().flatten().count(), MAX_METHODS as usize);
    let listed = db.db.methods(&u.id).await.unwrap();
    assert_eq!(
        listed.iter().map(|m| m.position).collect::<Vec<_>>(),
        (0..MAX_METHODS).collect::<Vec<_>>()
    );
    // Moves and deletes at once keep positions 0..n without gaps or repeats.
    let listed = Arc::new(listed);
    at_once(&db, 6, |i, d| {
        let (u, listed) = (u.id.clone(), Arc::clone(&listed));
        async move {
            if i == 5 {
                d.delete_method(&u, &listed[2].id).await.unwrap();
            } else {
                let patch = MethodPatch {
                    label: None,
                    position: Some(u32::try_from(4 - i).unwrap()),
                };
                d.update_method(&u, &listed[i].id, patch).await.unwrap();
            }
        }
    })
    .await;
    let after = db.da.methods(&u.id).await.unwrap();
    assert_eq!(
        after.iter().map(|m| m.position).collect::<Vec<_>>(),
        (0..MAX_METHODS - 1).collect::<Vec<_>>()
    );
    let unique: HashSet<_> = ids(&after).into_iter().collect();
    assert_eq!(unique.len(), after.len());
    assert!(!unique.contains(&listed[2].id));
}

async fn race_a_prompt_token_opened_on_both_handles_opens_once(db: Db) {
    for round in 0..10 {
        let (_, token) = prompt_for(&db, 1_000).await;
        let results = at_once(&db, 4, |_, d| async move {
            d.open_prompt(token, hash(2), hash(3), 100, 5_000)
                .await
                .unwrap()
        })
        .await;
        let opened = results
            .iter()
            .filter(|r| matches!(r, PromptOpened::Opened(_)))
            .count();
        let used = results
            .iter()
            .filter(|r| matches!(r, PromptOpened::AlreadyUsed))
            .count();
        assert_eq!((opened, used), (1, 3), "round {round}: {results:?}");
    }
}

async fn race_a_switch_and_the_calls_completion_never_both_win(db: Db) {
    let (u, code) = with_app_code(db.da.as_ref(), "alice").await;
    let mut outcomes = HashSet::new();
    for round in 0..20 {
        let call = add(
            db.da.as_ref(),
            &u.id,
            phone("+12015550123"),
            MethodStatus::Active,
        )
        .await;
        let id = start(db.da.as_ref(), &u.id, &call, 10).await;
        db.a.claim_next(20).await.unwrap().unwrap();
        let gate = Arc::new(tokio::sync::Barrier::new(2));
        let completing = {
            let (store, id, gate) = (Arc::clone(&db.a), id.clone(), Arc::clone(&gate));
            tokio::spawn(async move {
                gate.wait().await;
                store
                    .complete(&id, done(CallResult::Confirmed), 30)
                    .await
                    .unwrap()
            })
        };
        let switching = {
            let (d, id, code, gate) = (Arc::clone(&db.db), id.clone(), code.clone(), gate);
            tokio::spawn(async move {
                gate.wait().await;
                d.switch_method(&id, "auth", &code, 30).await.unwrap()
            })
        };
        let completed = completing.await.unwrap();
        let switched = switching.await.unwrap();
        let v = db.b.get(&id).await.unwrap().unwrap();
        match (&completed, &switched) {
            (Some(_), Switched::Completed(_)) => {
                assert_eq!(v.result, Some(CallResult::Confirmed));
                outcomes.insert("completed");
            }
            (None, Switched::Switched { was_in_call, .. }) => {
                assert!(was_in_call);
                assert_eq!(v.status, Status::AwaitingUser);
                assert!(db.a.outbox(&id).await.unwrap().is_empty());
                db.da
                    .complete_awaiting(&id, CallResult::Cancelled, 40)
                    .await
                    .unwrap();
                outcomes.insert("switched");
            }
            other => panic!("round {round}: both or neither won: {other:?}"),
        }
        db.da.delete_method(&u.id, &call.id).await.unwrap();
    }
    eprintln!("outcomes seen: {outcomes:?}");
}

async fn race_verifications_by_user_created_at_once_stay_within_the_cap(db: Db) {
    const CAP: u32 = 3;
    let (u, code) = with_app_code(db.da.as_ref(), "alice").await;
    let quota = Arc::new([Quota {
        key: format!("user:{}", u.id),
        max: CAP,
        window: Duration::from_secs(3600),
        what: "verifications of this user per hour",
    }]);
    let created = at_once(&db, 10, |i, d| {
        let (u, code, quota) = (u.id.clone(), code.clone(), Arc::clone(&quota));
        async move {
            d.create_user_verification(by_user(&u, &code, 10 + i as i64), None, quota.as_ref())
                .await
                .unwrap()
        }
    })
    .await;
    let new = created
        .iter()
        .filter(|c| matches!(c, Created::New(_)))
        .count();
    let limited = created
        .iter()
        .filter(|c| matches!(c, Created::Limited(_)))
        .count();
    assert_eq!(
        (new, limited),
        (CAP as usize, 10 - CAP as usize),
        "{created:?}"
    );
    assert_eq!(db.db.awaiting(100).await.unwrap().len(), CAP as usize);
}

/// What only the shared store has to do: a switch reaches the call's instance, and the next
/// phone attempt waits until that call reported its end (on SQLite the dialer of the one
/// process knows that itself).
mod postgres_only {
    use super::*;
    use callverify::store::ClusterEvent;

    async fn next_event(
        listener: &mut callverify::store::Listener,
        wanted: impl Fn(&ClusterEvent) -> bool,
    ) -> ClusterEvent {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let e = listener.recv().await.expect("listening");
                if wanted(&e) {
                    return e;
                }
            }
        })
        .await
        .expect("the notification arrives")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_switch_hangs_up_the_call_on_its_instance_and_the_next_call_waits_for_its_end() {
        let db = postgres().await;
        let (u, _) = with_app_code(db.da.as_ref(), "alice").await;
        let call = add(
            db.da.as_ref(),
            &u.id,
            phone("+12015550123"),
            MethodStatus::Active,
        )
        .await;
        let office = add(
            db.da.as_ref(),
            &u.id,
            phone("+12015550999"),
            MethodStatus::Active,
        )
        .await;
        let mut on_a = db.a.shared().unwrap().listen().await.unwrap();
        let mut on_b = db.b.shared().unwrap().listen().await.unwrap();
        let id = start(db.db.as_ref(), &u.id, &call, 10).await;
        assert_eq!(
            next_event(&mut on_a, |e| *e == ClusterEvent::Queued).await,
            ClusterEvent::Queued
        );
        // Instance a places the call; the user switches through instance b.
        db.a.claim_next(20).await.unwrap().unwrap();
        let Switched::Switched { was_in_call, .. } =
            db.db.switch_method(&id, "auth", &office, 30).await.unwrap()
        else {
            panic!("switched")
        };
        assert!(was_in_call);
        assert_eq!(
            next_event(&mut on_a, |e| matches!(e, ClusterEvent::HangUp(_))).await,
            ClusterEvent::HangUp(id.clone())
        );
        // Long-polls on either instance re-read it.
        assert_eq!(
            next_event(&mut on_b, |e| matches!(e, ClusterEvent::Completed(_))).await,
            ClusterEvent::Completed(id.clone())
        );
        // The call on a is still hanging up: the office call waits, from either instance.
        assert!(db.db.start_phone_attempt(&id, 31).await.unwrap().is_none());
        assert!(db.da.start_phone_attempt(&id, 32).await.unwrap().is_none());
        assert_eq!(db.b.queue_depth().await.unwrap(), 0);
        // Its report ends it (and completes nothing); then the office call is queued.
        assert!(
            db.a.complete(&id, done(CallResult::Cancelled), 33)
                .await
                .unwrap()
                .is_none()
        );
        let q = db.db.start_phone_attempt(&id, 34).await.unwrap().unwrap();
        assert_eq!(q.status, Status::Queued);
        assert_eq!(q.destination.unwrap().expose(), "+12015550999");
        next_event(&mut on_a, |e| *e == ClusterEvent::Queued).await;
        let claimed = db.a.claim_next(35).await.unwrap().unwrap();
        assert_eq!(claimed.id, id);
        // A switch while that call is up, then its instance dies: the call waits no more
        // once the instance is taken over.
        db.db.switch_method(&id, "auth", &call, 40).await.unwrap();
        assert!(db.db.start_phone_attempt(&id, 41).await.unwrap().is_none());
        let gone =
            db.b.shared()
                .unwrap()
                .take_over(i64::MAX, 42)
                .await
                .unwrap();
        assert_eq!(gone.instances.len(), 1, "instance a is declared dead");
        let q = db.db.start_phone_attempt(&id, 43).await.unwrap().unwrap();
        assert_eq!(q.destination.unwrap().expose(), "+12015550123");
    }
}

fn push_device(tag: u8, subscribed: bool) -> PushDevice {
    PushDevice {
        public_key: vec![tag; 65],
        subscription: subscribed.then(|| PushSubscription {
            endpoint: format!("https://push.example.com/send/{tag}"),
            p256dh: vec![tag; 65],
            auth: vec![tag; 16],
        }),
    }
}

/// A pending push method of `user` and a fresh enrolment token for it (valid until 1 000).
async fn pending_push(d: &dyn Directory, user: &UserId) -> (Method, [u8; 32]) {
    let m = add(
        d,
        user,
        MethodDetail::Push { device: None },
        MethodStatus::Pending,
    )
    .await;
    let token = hash(4);
    d.create_push_enrolment(&m.id, token, 1_000).await.unwrap();
    (m, token)
}

/// A user of `auth` with an active push method (its device registered).
async fn with_push(d: &dyn Directory, external_id: &str) -> (User, Method) {
    let u = user(d, "auth", external_id).await;
    let (_, token) = pending_push(d, &u.id).await;
    let PushRegistered::Registered(m) = d
        .register_push_device(token, push_device(1, true), 10)
        .await
        .unwrap()
    else {
        panic!("registered")
    };
    (u, *m)
}

/// The request of verification `id`'s push attempt, `nonce` to sign, open until 1 000.
fn request(id: &VerificationId, method: &MethodId, nonce: &str, at: i64) -> PushRequest {
    PushRequest {
        verification_id: id.clone(),
        method_id: method.clone(),
        nonce: nonce.into(),
        number: 42,
        choices: [17, 42, 86],
        created_at: at,
        expires_at: 1_000,
        answered_at: None,
    }
}

async fn a_push_enrolment_token_registers_one_device_once(db: Db) {
    let u = user(db.da.as_ref(), "auth", "alice").await;
    let (m, token) = pending_push(db.da.as_ref(), &u.id).await;
    assert!(matches!(&m.detail, MethodDetail::Push { device: None }));
    assert_eq!(m.status, MethodStatus::Pending);
    // Unknown and late tokens change nothing.
    assert!(matches!(
        db.db
            .register_push_device(hash(9), push_device(1, true), 10)
            .await
            .unwrap(),
        PushRegistered::Unknown
    ));
    assert!(matches!(
        db.db
            .register_push_device(token, push_device(1, true), 1_000)
            .await
            .unwrap(),
        PushRegistered::Expired
    ));
    let still = db.da.method_by_id(&m.id).await.unwrap().unwrap();
    assert_eq!(still.status, MethodStatus::Pending);
    // In time, on the other handle: the device is stored and the method active.
    let PushRegistered::Registered(registered) = db
        .db
        .register_push_device(token, push_device(1, true), 999)
        .await
        .unwrap()
    else {
        panic!("registered")
    };
    assert_eq!(
        (registered.status, registered.confirmed_at),
        (MethodStatus::Active, Some(999))
    );
    let seen = db.da.method_by_id(&m.id).await.unwrap().unwrap();
    let MethodDetail::Push { device: Some(d) } = &seen.detail else {
        panic!("{seen:?}")
    };
    assert_eq!(d.public_key, vec![1; 65]);
    assert_eq!(d.subscription, push_device(1, true).subscription);
    assert_eq!(seen.user_id, u.id);
    // A link works once, even before it expires.
    assert!(matches!(
        db.da
            .register_push_device(token, push_device(2, false), 999)
            .await
            .unwrap(),
        PushRegistered::AlreadyUsed
    ));
    // A second token of an active method is spent without replacing its device.
    let second = hash(5);
    db.da
        .create_push_enrolment(&m.id, second, 1_000)
        .await
        .unwrap();
    assert!(matches!(
        db.db
            .register_push_device(second, push_device(3, false), 20)
            .await
            .unwrap(),
        PushRegistered::AlreadyUsed
    ));
    // The push service said the subscription is gone: the device key stays.
    db.db.drop_push_subscription(&m.id).await.unwrap();
    let dropped = db.da.method_by_id(&m.id).await.unwrap().unwrap();
    assert!(matches!(
        &dropped.detail,
        MethodDetail::Push { device: Some(d) } if d.public_key == vec![1; 65] && d.subscription.is_none()
    ));
    // A deleted method's tokens go with it.
    let (other, other_token) = pending_push(db.da.as_ref(), &u.id).await;
    assert!(db.db.delete_method(&u.id, &other.id).await.unwrap());
    assert!(matches!(
        db.da
            .register_push_device(other_token, push_device(4, false), 20)
            .await
            .unwrap(),
        PushRegistered::Unknown
    ));
    assert!(db.da.method_by_id(&other.id).await.unwrap().is_none());
}

async fn a_push_request_is_answered_once_before_it_expires(db: Db) {
    let (u, m) = with_push(db.da.as_ref(), "alice").await;
    let id = start(db.da.as_ref(), &u.id, &m, 20).await;
    let v = db.b.get(&id).await.unwrap().unwrap();
    assert_eq!(v.status, Status::AwaitingUser);
    assert_eq!(v.method.as_ref().map(|r| r.kind), Some(MethodKind::Push));
    assert!(db.db.push_request(&id).await.unwrap().is_none());
    db.da
        .create_push_request(request(&id, &m.id, "first", 20))
        .await
        .unwrap();
    // A new attempt's request replaces the earlier one; the earlier nonce is worthless.
    db.db
        .create_push_request(request(&id, &m.id, "second", 30))
        .await
        .unwrap();
    let stored = db.da.push_request(&id).await.unwrap().unwrap();
    assert_eq!(stored, request(&id, &m.id, "second", 30));
    assert_eq!(
        db.db.open_push_requests(&m.id, 40, 10).await.unwrap(),
        vec![stored.clone()]
    );
    assert!(
        db.db
            .open_push_requests(&m.id, 1_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "expired"
    );
    let answer = |nonce: &'static str, method: MethodId, at: i64| {
        let (d, id) = (Arc::clone(&db.db), id.clone());
        async move {
            d.answer_push(&id, &method, nonce, CallResult::Denied, at)
                .await
                .unwrap()
        }
    };
    assert!(matches!(
        answer("first", m.id.clone(), 40).await,
        PushAnswered::NotAwaiting
    ));
    assert!(matches!(
        answer("second", MethodId::generate(), 40).await,
        PushAnswered::NotAwaiting
    ));
    assert!(matches!(
        answer("second", m.id.clone(), 1_000).await,
        PushAnswered::Expired
    ));
    assert_eq!(
        db.a.get(&id).await.unwrap().unwrap().status,
        Status::AwaitingUser
    );
    let PushAnswered::Completed(done) = answer("second", m.id.clone(), 50).await else {
        panic!("completed")
    };
    assert_eq!(
        (done.status, done.result, done.completed_at),
        (Status::Completed, Some(CallResult::Denied), Some(50))
    );
    assert_eq!(done.attempts[0].result, Some(CallResult::Denied));
    assert_eq!(db.a.outbox(&id).await.unwrap().len(), 1, "one webhook");
    assert_eq!(
        db.da.push_request(&id).await.unwrap().unwrap().answered_at,
        Some(50)
    );
    assert!(matches!(
        answer("second", m.id.clone(), 60).await,
        PushAnswered::AlreadyAnswered
    ));
    assert!(
        db.da
            .open_push_requests(&m.id, 60, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A request whose verification switched to another method waits no more.
    let code = add(db.da.as_ref(), &u.id, app_code(), MethodStatus::Active).await;
    let switched = start(db.da.as_ref(), &u.id, &m, 70).await;
    db.da
        .create_push_request(request(&switched, &m.id, "third", 70))
        .await
        .unwrap();
    assert!(matches!(
        db.db
            .switch_method(&switched, "auth", &code, 80)
            .await
            .unwrap(),
        Switched::Switched { .. }
    ));
    assert!(
        db.da
            .open_push_requests(&m.id, 90, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        db.db
            .answer_push(&switched, &m.id, "third", CallResult::Confirmed, 90)
            .await
            .unwrap(),
        PushAnswered::NotAwaiting
    ));
    assert_eq!(
        db.a.get(&switched).await.unwrap().unwrap().status,
        Status::AwaitingUser
    );
}

async fn race_a_push_enrolment_token_used_on_both_handles_registers_once(db: Db) {
    let u = user(db.da.as_ref(), "auth", "alice").await;
    for round in 0..10 {
        let (m, token) = pending_push(db.da.as_ref(), &u.id).await;
        let results = at_once(&db, 4, |i, d| async move {
            d.register_push_device(token, push_device(10 + i as u8, true), 100)
                .await
                .unwrap()
        })
        .await;
        let winners: Vec<u8> = results
            .iter()
            .filter_map(|r| match r {
                PushRegistered::Registered(m) => match &m.detail {
                    MethodDetail::Push { device: Some(d) } => Some(d.public_key[0]),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let used = results
            .iter()
            .filter(|r| matches!(r, PushRegistered::AlreadyUsed))
            .count();
        assert_eq!((winners.len(), used), (1, 3), "round {round}: {results:?}");
        // The device stored is the winner's.
        let stored = db.db.method_by_id(&m.id).await.unwrap().unwrap();
        assert!(matches!(
            &stored.detail,
            MethodDetail::Push { device: Some(d) } if d.public_key[0] == winners[0]
        ));
        // Keep within the maximum for the next round.
        assert!(db.da.delete_method(&u.id, &m.id).await.unwrap());
    }
}

async fn race_a_push_registration_and_the_methods_deletion_never_deadlock(db: Db) {
    let u = user(db.da.as_ref(), "auth", "alice").await;
    let mut outcomes = HashSet::new();
    for round in 0..20 {
        let (m, token) = pending_push(db.da.as_ref(), &u.id).await;
        let gate = Arc::new(tokio::sync::Barrier::new(2));
        let registering = {
            let (d, gate) = (Arc::clone(&db.da), Arc::clone(&gate));
            tokio::spawn(async move {
                gate.wait().await;
                d.register_push_device(token, push_device(1, true), 100)
                    .await
                    .unwrap()
            })
        };
        let deleting = {
            let (d, user, id, gate) = (Arc::clone(&db.db), u.id.clone(), m.id.clone(), gate);
            tokio::spawn(async move {
                gate.wait().await;
                d.delete_method(&user, &id).await.unwrap()
            })
        };
        let registered = registering.await.unwrap();
        assert!(deleting.await.unwrap(), "round {round}: deleted");
        match registered {
            PushRegistered::Registered(_) => outcomes.insert("registered first"),
            PushRegistered::Unknown => outcomes.insert("deleted first"),
            other => panic!("round {round}: {other:?}"),
        };
        assert!(db.da.method_by_id(&m.id).await.unwrap().is_none());
    }
    assert!(!outcomes.is_empty());
}

async fn race_answers_to_one_push_request_complete_once(db: Db) {
    let (u, m) = with_push(db.da.as_ref(), "alice").await;
    for round in 0..10 {
        let id = start(db.da.as_ref(), &u.id, &m, 20).await;
        db.da
            .create_push_request(request(&id, &m.id, "nonce", 20))
            .await
            .unwrap();
        // Two approve, two deny: whichever is first decides.
        let results = at_once(&db, 4, |i, d| {
            let (id, m) = (id.clone(), m.id.clone());
            let result = if i < 2 {
                CallResult::Confirmed
            } else {
                CallResult::Denied
            };
            async move { d.answer_push(&id, &m, "nonce", result, 30).await.unwrap() }
        })
        .await;
        let won: Vec<Option<CallResult>> = results
            .iter()
            .filter_map(|r| match r {
                PushAnswered::Completed(v) => Some(v.result),
                _ => None,
            })
            .collect();
        let replays = results
            .iter()
            .filter(|r| matches!(r, PushAnswered::AlreadyAnswered))
            .count();
        assert_eq!((won.len(), replays), (1, 3), "round {round}: {results:?}");
        let v = db.b.get(&id).await.unwrap().unwrap();
        assert_eq!((v.status, v.result), (Status::Completed, won[0]));
        assert_eq!(db.a.outbox(&id).await.unwrap().len(), 1, "one webhook");
    }
}
