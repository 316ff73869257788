//! Sign-in by user through the API (`oneshot`, no socket): users and methods, app codes
//! computed by an independent authenticator (Debian's `oathtool`), replay, window, lockout,
//! switching methods, the hosted prompt's link, session, headers and markup, and bad input
//! that changes nothing.

mod api_support;
mod signin_support;

use std::time::Duration;

use api_support::*;
use axum::Router;
use axum::http::{Method, StatusCode};
use base64::Engine as _;
use callverify::api::AppState;
use callverify::config::Config;
use callverify::store::now_ms;
use flow::CallResult;
use serde_json::{Value, json};
use signin_support::{assert_accessible, oathtool, signing_pem, steady_now};

const SEAL_KEY_BYTES: [u8; 32] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
    27, 28, 29, 30, 31, 32,
];

fn signin_config(extra: &str) -> Config {
    let seal = base64::engine::general_purpose::STANDARD.encode(SEAL_KEY_BYTES);
    let mut c = config_with(&format!(
        "[methods]\nseal_key = \"{seal}\"\ncode_attempts = 3\nlockout_failures = 5\n\n\
         [signin]\npublic_url = \"http://127.0.0.1:9\"\nsigning_key = '''{}'''\n{extra}",
        signing_pem()
    ));
    c.api.clients[0].return_hosts = vec!["127.0.0.1".into(), "app.example.com".into()];
    c
}

async fn signin_api() -> (AppState, Router) {
    api(signin_config("")).await
}

async fn call(router: &Router, method: Method, uri: &str, key: &str, body: Option<Value>) -> Reply {
    let text = body.map(|b| b.to_string());
    send(router, method, uri, Some(key), &[], text.as_deref()).await
}

async fn create_user(router: &Router, key: &str, external_id: &str) -> String {
    let r = call(
        router,
        Method::POST,
        "/v1/users",
        key,
        Some(json!({"external_id": external_id, "display_name": "Alice"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json["id"].as_str().unwrap().to_owned()
}

/// Enrols an app code; returns (method id, base32 secret from the otpauth URI).
async fn enrol_app_code(router: &Router, user: &str) -> (String, String) {
    let r = call(
        router,
        Method::POST,
        &format!("/v1/users/{user}/methods"),
        KEY,
        Some(json!({"type": "app_code", "label": "phone app"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["status"], "pending");
    let uri = r.json["otpauth_uri"].as_str().unwrap();
    assert!(r.json["qr_svg"].as_str().unwrap().starts_with("<svg"));
    let url = url::Url::parse(uri).unwrap();
    assert_eq!(url.scheme(), "otpauth");
    let secret = url
        .query_pairs()
        .find(|(k, _)| k == "secret")
        .unwrap()
        .1
        .into_owned();
    (r.json["id"].as_str().unwrap().to_owned(), secret)
}

async fn confirm(router: &Router, user: &str, method: &str, code: &str) -> Reply {
    call(
        router,
        Method::POST,
        &format!("/v1/users/{user}/methods/{method}/confirm"),
        KEY,
        Some(json!({"code": code})),
    )
    .await
}

async fn verify_user(router: &Router, body: Value) -> Reply {
    call(router, Method::POST, "/v1/verifications", KEY, Some(body)).await
}

async fn submit(router: &Router, id: &str, code: &str) -> Reply {
    call(
        router,
        Method::POST,
        &format!("/v1/verifications/{id}/code"),
        KEY,
        Some(json!({"code": code})),
    )
    .await
}

/// A user with an active app code: (user, method, secret), confirmed at step+1 so sign-in
/// codes must come later.
async fn user_with_app_code(router: &Router, external_id: &str) -> (String, String, String) {
    let user = create_user(router, KEY, external_id).await;
    let (method, secret) = enrol_app_code(router, &user).await;
    let now = steady_now().await;
    let r = confirm(router, &user, &method, &oathtool(&secret, now - 30)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "active");
    (user, method, secret)
}

#[tokio::test]
async fn users_and_methods_are_per_client_ordered_and_never_show_secrets() {
    let (_, router) = signin_api().await;
    let user = create_user(&router, KEY, "alice@example.com").await;
    assert!(user.starts_with("usr_") && user.len() == 36, "{user}");
    let again = call(
        &router,
        Method::POST,
        "/v1/users",
        KEY,
        Some(json!({"external_id": "alice@example.com"})),
    )
    .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "user_exists")
    );
    // The other client may use the same external id: its own user.
    let theirs = create_user(&router, OTHER_KEY, "alice@example.com").await;
    assert_ne!(theirs, user);

    let phone = call(
        &router,
        Method::POST,
        &format!("/v1/users/{user}/methods"),
        KEY,
        Some(json!({"type": "phone", "phone_number": "+12015550123", "extension": "12#", "label": "office"})),
    )
    .await;
    assert_eq!(phone.status, StatusCode::CREATED, "{}", phone.text);
    assert_eq!(phone.json["status"], "active");
    assert!(phone.json["id"].as_str().unwrap().starts_with("mth_"));
    let (code_method, secret) = enrol_app_code(&router, &user).await;

    let list = call(
        &router,
        Method::GET,
        &format!("/v1/users/{user}/methods"),
        KEY,
        None,
    )
    .await;
    let ids: Vec<&str> = list.json["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [phone.json["id"].as_str().unwrap(), code_method.as_str()]
    );
    let text = &list.text;
    assert!(!text.contains(&secret) && !text.contains("otpauth") && !text.contains("svg"));
    // Reorder and rename.
    let moved = call(
        &router,
        Method::PATCH,
        &format!("/v1/users/{user}/methods/{code_method}"),
        KEY,
        Some(json!({"position": 0, "label": "authenticator"})),
    )
    .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    assert_eq!(
        (
            moved.json["position"].as_u64(),
            moved.json["label"].as_str()
        ),
        (Some(0), Some("authenticator"))
    );
    let got = call(
        &router,
        Method::GET,
        &format!("/v1/users/{user}"),
        KEY,
        None,
    )
    .await;
    assert_eq!(got.json["methods"][0]["id"], code_method.as_str());
    assert_eq!(got.json["methods"][1]["position"], 1);
    assert!(!got.text.contains(&secret));
    let found = call(
        &router,
        Method::GET,
        "/v1/users?external_id=alice%40example.com",
        KEY,
        None,
    )
    .await;
    assert_eq!(found.json["users"][0]["id"], user.as_str());

    // Another client's user and methods are not found, and nothing changes.
    for (method, uri, body) in [
        (Method::GET, format!("/v1/users/{user}"), None),
        (Method::GET, format!("/v1/users/{user}/methods"), None),
        (
            Method::DELETE,
            format!("/v1/users/{user}/methods/{code_method}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/users/{user}/methods/{code_method}/confirm"),
            Some(json!({"code": "123456"})),
        ),
        (Method::DELETE, format!("/v1/users/{user}"), None),
    ] {
        let r = call(&router, method, &uri, OTHER_KEY, body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}: {}", r.text);
    }
    let still = call(
        &router,
        Method::GET,
        &format!("/v1/users/{user}/methods"),
        KEY,
        None,
    )
    .await;
    assert_eq!(still.json["methods"].as_array().unwrap().len(), 2);

    // Phone numbers obey the verification policy.
    for (number, status, code) in [
        (
            "+33612345678",
            StatusCode::UNPROCESSABLE_ENTITY,
            "country_not_allowed",
        ),
        ("+1201555", StatusCode::BAD_REQUEST, "invalid_phone_number"),
        (
            "sip:alice@example.com",
            StatusCode::UNPROCESSABLE_ENTITY,
            "sip_uri_not_allowed",
        ),
    ] {
        let r = call(
            &router,
            Method::POST,
            &format!("/v1/users/{user}/methods"),
            KEY,
            Some(json!({"type": "phone", "phone_number": number})),
        )
        .await;
        assert_eq!((r.status, r.code()), (status, code), "{number}: {}", r.text);
    }
    let bad_type = call(
        &router,
        Method::POST,
        &format!("/v1/users/{user}/methods"),
        KEY,
        Some(json!({"type": "carrier_pigeon"})),
    )
    .await;
    assert_eq!(
        (bad_type.status, bad_type.code()),
        (StatusCode::BAD_REQUEST, "invalid_type")
    );

    let deleted = call(
        &router,
        Method::DELETE,
        &format!("/v1/users/{user}/methods/{code_method}"),
        KEY,
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = call(
        &router,
        Method::DELETE,
        &format!("/v1/users/{user}"),
        KEY,
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let r = call(
        &router,
        Method::GET,
        &format!("/v1/users/{user}"),
        KEY,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The other client's user is untouched.
    let r = call(
        &router,
        Method::GET,
        &format!("/v1/users/{theirs}"),
        OTHER_KEY,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn app_code_enrolment_and_sign_in_with_oathtool_codes() {
    let (state, router) = signin_api().await;
    let user = create_user(&router, KEY, "bob@example.com").await;
    let (method, secret) = enrol_app_code(&router, &user).await;
    let now = steady_now().await;
    // Two steps away: not within the window.
    for offset in [-60, 60] {
        let r = confirm(&router, &user, &method, &oathtool(&secret, now + offset)).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "wrong_code"),
            "{offset}"
        );
    }
    // A pending method cannot sign in.
    let r = verify_user(&router, json!({"user_id": user, "method_id": method})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "method_not_active")
    );
    // One step early (a slow clock) is inside the window.
    let r = confirm(&router, &user, &method, &oathtool(&secret, now - 30)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "active");
    let again = confirm(&router, &user, &method, &oathtool(&secret, now)).await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "not_pending")
    );

    let created = verify_user(
        &router,
        json!({"user_id": user, "callback_url": "http://127.0.0.1:9/hook", "metadata": {"app": "mail"}}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.json["status"], "awaiting_user");
    assert_eq!(created.json["user_id"], user.as_str());
    assert_eq!(
        created.json["method"],
        json!({"id": method, "type": "app_code"})
    );
    assert_eq!(created.json["phone_number"], Value::Null);
    let id = created.json["id"].as_str().unwrap().to_owned();

    // The current step is fresh (only the step before was used to confirm).
    let code = oathtool(&secret, now);
    let done = submit(&router, &id, &code).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_eq!(done.json["status"], "completed");
    assert_eq!(done.json["result"], "confirmed");
    assert_eq!(done.json["approved"], true);
    assert_eq!(done.json["method"]["type"], "app_code");
    assert_eq!(done.json["attempts"][0]["result"], "confirmed");
    // The webhook names the method that decided.
    let msg = state
        .store
        .claim_webhook(now_ms() + 1, now_ms() + 60_000, &[])
        .await
        .unwrap()
        .expect("webhook queued");
    let payload: Value = serde_json::from_str(&msg.payload).unwrap();
    assert_eq!(
        payload["data"]["method"],
        json!({"id": method, "type": "app_code"})
    );
    assert_eq!(payload["data"]["result"], "confirmed");

    // The same code again, in a new verification: refused (RFC 6238 §5.2), nothing changes.
    let second = verify_user(&router, json!({"user_id": user})).await;
    let id2 = second.json["id"].as_str().unwrap().to_owned();
    let replay = submit(&router, &id2, &code).await;
    assert_eq!(
        (replay.status, replay.code()),
        (StatusCode::CONFLICT, "code_already_used"),
        "{}",
        replay.text
    );
    let after = get(&router, &id2).await;
    assert_eq!(after.json["status"], "awaiting_user");
    assert_eq!(after.json["attempts"][0]["wrong_codes"], 0);
    // The next step's code works.
    let next = submit(&router, &id2, &oathtool(&secret, now + 30)).await;
    assert_eq!(next.json["result"], "confirmed", "{}", next.text);
}

#[tokio::test]
async fn wrong_codes_end_the_verification_and_then_lock_the_method() {
    let (_, router) = signin_api().await;
    let (user, _method, secret) = user_with_app_code(&router, "carol@example.com").await;
    let now = steady_now().await;
    let right = [
        oathtool(&secret, now - 30),
        oathtool(&secret, now),
        oathtool(&secret, now + 30),
    ];
    let wrong: Vec<String> = (0..10)
        .map(|i| format!("{:06}", 111_111 * i % 1_000_000))
        .filter(|c| !right.contains(c))
        .collect();
    let first = verify_user(&router, json!({"user_id": user})).await;
    let id = first.json["id"].as_str().unwrap().to_owned();
    for (i, code) in wrong.iter().take(3).enumerate() {
        let r = submit(&router, &id, code).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["attempts"][0]["wrong_codes"], i as u64 + 1);
        if i < 2 {
            assert_eq!(r.json["status"], "awaiting_user");
        } else {
            assert_eq!(r.json["status"], "completed");
            assert_eq!(r.json["result"], "wrong_digits");
            assert_eq!(r.json["approved"], false);
        }
    }
    let late = submit(&router, &id, &right[1]).await;
    assert_eq!(
        (late.status, late.code()),
        (StatusCode::CONFLICT, "already_completed")
    );
    // Two more failures in a new verification reach lockout_failures = 5: the method locks.
    let second = verify_user(&router, json!({"user_id": user})).await;
    let id2 = second.json["id"].as_str().unwrap().to_owned();
    for code in wrong.iter().skip(3).take(2) {
        submit(&router, &id2, code).await;
    }
    let locked = submit(&router, &id2, &right[2]).await;
    assert_eq!(
        (locked.status, locked.code()),
        (StatusCode::TOO_MANY_REQUESTS, "method_locked"),
        "{}",
        locked.text
    );
    let retry: u64 = locked.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((800..=900).contains(&retry), "{retry}");
    let still = get(&router, &id2).await;
    assert_eq!(still.json["status"], "awaiting_user");
}

#[tokio::test]
async fn malformed_unknown_and_foreign_input_is_refused_and_changes_nothing() {
    let (state, router) = signin_api().await;
    let (user, method, _secret) = user_with_app_code(&router, "dave@example.com").await;
    let theirs = create_user(&router, OTHER_KEY, "eve@example.com").await;
    let their_method = call(
        &router,
        Method::POST,
        &format!("/v1/users/{theirs}/methods"),
        OTHER_KEY,
        Some(json!({"type": "phone", "phone_number": "+12015550199"})),
    )
    .await;
    let their_method = their_method.json["id"].as_str().unwrap().to_owned();
    let directory = state.store.directory().unwrap();
    let before = directory.awaiting(100).await.unwrap().len();
    for (body, status, code) in [
        (
            json!({"user_id": "usr_00000000000000000000000000000000"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"user_id": "usr_nope"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"user_id": theirs}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"user_id": user, "method_id": "mth_00000000000000000000000000000000"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"user_id": user, "method_id": their_method}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"user_id": user, "phone_number": "+12015550123"}),
            StatusCode::BAD_REQUEST,
            "unknown_field",
        ),
        (
            json!({"user_id": user, "hosted": {"return_url": "https://evil.example.net/done"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "return_url_not_allowed",
        ),
        (
            json!({"user_id": user, "hosted": {"return_url": "http://app.example.com/done"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "return_url_not_allowed",
        ),
        (
            json!({"user_id": user, "hosted": {"return_url": "javascript:alert(1)"}}),
            StatusCode::BAD_REQUEST,
            "invalid_return_url",
        ),
        (
            json!({"phone_number": US_NUMBER, "hosted": {"return_url": "https://evil.example.net/"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "return_url_not_allowed",
        ),
    ] {
        let r = verify_user(&router, body.clone()).await;
        assert_eq!((r.status, r.code()), (status, code), "{body}: {}", r.text);
    }
    assert_eq!(directory.awaiting(100).await.unwrap().len(), before);
    assert_eq!(state.store.queue_depth().await.unwrap(), 0);
    // The other client cannot list or use this client's user.
    let r = call(
        &router,
        Method::POST,
        "/v1/verifications",
        OTHER_KEY,
        Some(json!({"user_id": user})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let created = verify_user(&router, json!({"user_id": user, "method_id": method})).await;
    let id = created.json["id"].as_str().unwrap().to_owned();
    for bad in ["12345", "1234567", "12a456", "", "１２３４５６"] {
        let r = submit(&router, &id, bad).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_code"),
            "{bad:?}"
        );
    }
    let r = call(
        &router,
        Method::POST,
        &format!("/v1/verifications/{id}/code"),
        KEY,
        Some(json!({"code": 123456})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = call(
        &router,
        Method::POST,
        &format!("/v1/verifications/{id}/code"),
        OTHER_KEY,
        Some(json!({"code": "123456"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &router,
        Method::POST,
        &format!("/v1/verifications/{id}/switch"),
        KEY,
        Some(json!({"method_id": their_method})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let after = get(&router, &id).await;
    assert_eq!(after.json["status"], "awaiting_user");
    assert_eq!(after.json["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(after.json["attempts"][0]["wrong_codes"], 0);
    // A phone verification takes no code.
    let phone = post(&router, &format!(r#"{{"phone_number":"{US_NUMBER}"}}"#)).await;
    let pid = phone.json["id"].as_str().unwrap();
    let r = submit(&router, pid, "123456").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "not_awaiting_code")
    );
    // Cancel works on a verification waiting for a code.
    let r = send(
        &router,
        Method::DELETE,
        &format!("/v1/verifications/{id}"),
        Some(KEY),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["result"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_hangs_up_the_call_and_the_method_that_decided_is_reported() {
    let (state, router) = signin_api().await;
    let (user, code_method, secret) = user_with_app_code(&router, "frank@example.com").await;
    let phone = call(
        &router,
        Method::POST,
        &format!("/v1/users/{user}/methods"),
        KEY,
        Some(json!({"type": "phone", "phone_number": US_NUMBER, "label": "mobile"})),
    )
    .await;
    let phone = phone.json["id"].as_str().unwrap().to_owned();
    let placer = ScriptedPlacer::new(Script::UntilCancelled);
    let (stop, dialer) = spawn_dialer(&state, placer.clone());
    let sweeper_stop = tokio_util::sync::CancellationToken::new();
    let sweeper = tokio::spawn(state.signin.clone().run_sweeper(sweeper_stop.clone()));

    let created = verify_user(&router, json!({"user_id": user, "method_id": phone})).await;
    assert_eq!(created.json["status"], "queued", "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_owned();
    wait_for(&router, &id, |v| v["status"] == "in_call").await;
    let switched = call(
        &router,
        Method::POST,
        &format!("/v1/verifications/{id}/switch"),
        KEY,
        Some(json!({"method_id": code_method})),
    )
    .await;
    assert_eq!(switched.status, StatusCode::OK, "{}", switched.text);
    assert_eq!(switched.json["status"], "awaiting_user");
    assert_eq!(switched.json["method"]["type"], "app_code");
    assert_eq!(switched.json["attempts"][0]["result"], "cancelled");
    let timeline = switched.json["attempts"][0]["timeline"].to_string();
    assert!(
        timeline.contains("invite_sent") && timeline.contains("cancelled"),
        "{timeline}"
    );
    // The call was hung up through the dialer handle.
    let start = std::time::Instant::now();
    while state.dialer.live_calls() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the call was not hung up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its late report did not complete the verification.
    assert_eq!(get(&router, &id).await.json["status"], "awaiting_user");

    // Back to the phone: queued again and called again.
    let back = call(
        &router,
        Method::POST,
        &format!("/v1/verifications/{id}/switch"),
        KEY,
        Some(json!({"method_id": phone})),
    )
    .await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.text);
    wait_for(&router, &id, |v| v["status"] == "in_call").await;
    assert_eq!(placer.placed(), 2);
    // And to the app again, where a code decides.
    call(
        &router,
        Method::POST,
        &format!("/v1/verifications/{id}/switch"),
        KEY,
        Some(json!({"method_id": code_method})),
    )
    .await;
    let now = steady_now().await;
    let done = submit(&router, &id, &oathtool(&secret, now)).await;
    assert_eq!(done.json["result"], "confirmed", "{}", done.text);
    assert_eq!(
        done.json["method"],
        json!({"id": code_method, "type": "app_code"})
    );
    let kinds: Vec<&str> = done.json["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["method"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["phone", "app_code", "phone", "app_code"]);
    let results: Vec<&str> = done.json["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        ["cancelled", "cancelled", "cancelled", "confirmed"]
    );
    let r = call(
        &router,
        Method::POST,
        &format!("/v1/verifications/{id}/switch"),
        KEY,
        Some(json!({"method_id": phone})),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "already_completed")
    );
    stop.cancel();
    sweeper_stop.cancel();
    let _ = dialer.await;
    let _ = sweeper.await;
}

async fn wait_for(router: &Router, id: &str, ok: impl Fn(&Value) -> bool) {
    let start = std::time::Instant::now();
    loop {
        let r = get(router, id).await;
        if ok(&r.json) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{}", r.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn verifications_waiting_too_long_expire() {
    let (state, router) = signin_api().await;
    let (user, _, _) = user_with_app_code(&router, "gina@example.com").await;
    let created = verify_user(&router, json!({"user_id": user})).await;
    let id = created.json["id"].as_str().unwrap().to_owned();
    let later = now_ms() + callverify::signin::AWAITING_TIMEOUT.as_millis() as i64 + 1;
    state.signin.sweep_once(later).await.unwrap();
    let v = get(&router, &id).await;
    assert_eq!(
        (v.json["status"].as_str(), v.json["result"].as_str()),
        (Some("completed"), Some("expired"))
    );
    assert_eq!(state.metrics.calls(CallResult::Expired), 1);
}

/// The prompt link, the page's headers and markup, without a browser.
#[tokio::test]
async fn the_prompt_link_works_once_and_the_page_is_strict_and_accessible() {
    let (_, router) = api(signin_config("link_ttl_secs = 1\n")).await;
    let (user, _, _) = user_with_app_code(&router, "hank@example.com").await;
    let phone = call(
        &router,
        Method::POST,
        &format!("/v1/users/{user}/methods"),
        KEY,
        Some(json!({"type": "phone", "phone_number": US_NUMBER})),
    )
    .await;
    assert_eq!(phone.status, StatusCode::CREATED);
    let created = verify_user(
        &router,
        json!({"user_id": user, "language": "en",
        "hosted": {"return_url": "https://app.example.com/mfa/done?state=xyz"}}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_owned();
    let prompt_url = created.json["prompt_url"].as_str().unwrap();
    let path = prompt_url
        .strip_prefix("http://127.0.0.1:9")
        .unwrap()
        .to_owned();
    let token = path.strip_prefix("/prompt/").unwrap();
    assert_eq!(token.len(), 43, "256-bit token");
    assert!(
        get(&router, &id).await.json.get("prompt_url").is_none(),
        "shown once"
    );

    let first = send(&router, Method::GET, &path, None, &[], None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let cookie = first.headers["set-cookie"].to_str().unwrap().to_owned();
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        &format!("Path=/prompt/s/{id}"),
    ] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(
        first.text.contains(&format!("url=/prompt/s/{id}")),
        "{}",
        first.text
    );
    let reused = send(&router, Method::GET, &path, None, &[], None).await;
    assert_eq!(reused.status, StatusCode::GONE);
    assert!(reused.text.contains("already used"), "{}", reused.text);
    let unknown = send(
        &router,
        Method::GET,
        "/prompt/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let session = cookie.split(';').next().unwrap().to_owned();
    let page = send(
        &router,
        Method::GET,
        &format!("/prompt/s/{id}"),
        None,
        &[("cookie", &session)],
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self' https://app.example.com",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(page.headers["referrer-policy"], "no-referrer");
    assert_eq!(page.headers["cache-control"], "no-store");
    let html = &page.text;
    assert_accessible(html);
    assert!(html.contains(r#"<html lang="en">"#));
    assert!(html.contains("Open your authenticator app"), "{html}");
    assert!(html.contains("Use a different verification option"));
    assert!(html.contains("Call my phone ••• ••23"), "{html}");
    assert!(
        !html.contains(US_NUMBER),
        "the full number is never on the page"
    );

    // Without the cookie, or with another session's: refused.
    let none = send(
        &router,
        Method::GET,
        &format!("/prompt/s/{id}"),
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(none.status, StatusCode::FORBIDDEN);
    let forged = send(
        &router,
        Method::GET,
        &format!("/prompt/s/{id}"),
        None,
        &[(
            "cookie",
            "cv_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )],
        None,
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    // A form without the CSRF token: refused, nothing changes.
    let no_csrf = send(
        &router,
        Method::POST,
        &format!("/prompt/s/{id}/code"),
        None,
        &[
            ("cookie", &session),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        Some("code=123456"),
    )
    .await;
    assert_eq!(no_csrf.status, StatusCode::FORBIDDEN);
    assert_eq!(
        get(&router, &id).await.json["attempts"][0]["wrong_codes"],
        0
    );

    // An expired link (link_ttl_secs = 1).
    let late = verify_user(
        &router,
        json!({"user_id": user,
        "hosted": {"return_url": "https://app.example.com/mfa/done"}}),
    )
    .await;
    let late_path = late.json["prompt_url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://127.0.0.1:9")
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = send(&router, Method::GET, &late_path, None, &[], None).await;
    assert_eq!(expired.status, StatusCode::GONE);
    assert!(expired.text.contains("expired"), "{}", expired.text);

    // Localised: a Spanish verification speaks Spanish.
    let (_, router_es) = api(signin_config("").tap_languages()).await;
    let (user_es, _, _) = user_with_app_code(&router_es, "ines@example.com").await;
    let es = verify_user(
        &router_es,
        json!({"user_id": user_es, "language": "es",
        "hosted": {"return_url": "https://app.example.com/done"}}),
    )
    .await;
    assert_eq!(es.status, StatusCode::CREATED, "{}", es.text);
    let path = es.json["prompt_url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://127.0.0.1:9")
        .unwrap()
        .to_owned();
    let opened = send(&router_es, Method::GET, &path, None, &[], None).await;
    let session = opened.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let es_id = es.json["id"].as_str().unwrap();
    let page = send(
        &router_es,
        Method::GET,
        &format!("/prompt/s/{es_id}"),
        None,
        &[("cookie", &session)],
        None,
    )
    .await;
    assert!(
        page.text.contains(r#"<html lang="es">"#) && page.text.contains("Código de verificación"),
        "{}",
        page.text
    );
    assert_accessible(&page.text);
}

trait TapLanguages {
    fn tap_languages(self) -> Self;
}

impl TapLanguages for Config {
    fn tap_languages(mut self) -> Config {
        self.media.languages = vec!["en".into(), "es".into(), "fr".into(), "de".into()];
        self
    }
}

#[tokio::test]
async fn openapi_and_jwks_describe_the_sign_in_api() {
    let (_, router) = signin_api().await;
    let doc = send(&router, Method::GET, "/openapi.json", None, &[], None).await;
    for path in [
        "/v1/users",
        "/v1/users/{id}/methods/{mid}/confirm",
        "/v1/verifications/{id}/code",
        "/v1/verifications/{id}/switch",
        "/v1/jwks.json",
    ] {
        assert!(doc.json["paths"].get(path).is_some(), "{path} in OpenAPI");
    }
    assert!(doc.text.contains("awaiting_user"));
    let body = &doc.json["paths"]["/v1/verifications"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"]["oneOf"];
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
    for schema in [
        "UserVerificationRequest",
        "HostedRequest",
        "MethodView",
        "AttemptView",
    ] {
        assert!(
            doc.json["components"]["schemas"].get(schema).is_some(),
            "{schema}"
        );
    }
    let jwks = send(&router, Method::GET, "/v1/jwks.json", None, &[], None).await;
    assert_eq!(jwks.json["keys"][0]["kty"], "OKP");
    assert_eq!(jwks.json["keys"][0]["crv"], "Ed25519");
    assert_eq!(jwks.json["keys"][0]["alg"], "EdDSA");
}

#[tokio::test]
async fn without_a_seal_key_app_codes_are_refused_clearly() {
    let mut config = config();
    config.api.clients[0].return_hosts.clear();
    let (_, router) = api(config).await;
    let user = create_user(&router, KEY, "ivan@example.com").await;
    let r = call(
        &router,
        Method::POST,
        &format!("/v1/users/{user}/methods"),
        KEY,
        Some(json!({"type": "app_code"})),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_IMPLEMENTED, "not_configured"),
        "{}",
        r.text
    );
    assert!(r.message().contains("methods.seal_key"));
    // Phone methods need no key.
    let r = call(
        &router,
        Method::POST,
        &format!("/v1/users/{user}/methods"),
        KEY,
        Some(json!({"type": "phone", "phone_number": US_NUMBER})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // A client without return_hosts cannot ask for a hosted prompt.
    let r = verify_user(
        &router,
        json!({"user_id": user, "hosted": {"return_url": "https://app.example.com/"}}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "return_url_not_allowed")
    );
}

#[tokio::test]
async fn the_service_refuses_a_seal_key_that_cannot_open_the_stored_secrets() {
    let store = memory_store().await;
    let state =
        AppState::new(signin_config(""), std::sync::Arc::clone(&store), test_key()).unwrap();
    let router = callverify::api::app(state);
    let user = create_user(&router, KEY, "judy@example.com").await;
    enrol_app_code(&router, &user).await;
    let placer = ScriptedPlacer::new(Script::Immediate(CallResult::Confirmed));
    // The same key: starts.
    assert!(
        callverify::service::Service::with_store(
            signin_config(""),
            std::sync::Arc::clone(&store),
            placer.clone()
        )
        .await
        .is_ok()
    );
    // Another key, or none: refused, naming the key.
    let mut other = signin_config("");
    other.methods.seal_key = Some(callverify::config::Secret::new(
        base64::engine::general_purpose::STANDARD.encode([9u8; 32]),
    ));
    let mut none = signin_config("");
    none.methods.seal_key = None;
    for config in [other, none] {
        let e = callverify::service::Service::with_store(
            config,
            std::sync::Arc::clone(&store),
            placer.clone(),
        )
        .await
        .err()
        .expect("refused");
        assert!(e.to_string().contains("methods.seal_key"), "{e}");
    }
}
