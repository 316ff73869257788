//! The push method through the API and the app's device endpoints (`oneshot`, no socket for
//! callverify; a real local HTTP endpoint stands in for the push service): enrolment by a
//! one-time link, Web Push messages decrypted by Python's `http_ece` with subscription keys
//! made as a browser makes them and VAPID tokens verified by `jwcrypto`, number matching and
//! every answer, and forged approvals refused with nothing approved.

mod api_support;
mod push_support;
mod signin_support;

use std::time::Duration;

use api_support::*;
use axum::Router;
use axum::http::{Method, StatusCode};
use callverify::api::AppState;
use callverify::store::now_ms;
use push_support::{Device, UaKeys, enrol_token, push_config};
use serde_json::{Value, json};

async fn push_api(timeout_secs: u64) -> (AppState, Router) {
    api(config_with(&push_config(timeout_secs))).await
}

async fn call(router: &Router, method: Method, uri: &str, body: Option<Value>) -> Reply {
    let text = body.map(|b| b.to_string());
    send(router, method, uri, Some(KEY), &[], text.as_deref()).await
}

/// The app's requests carry no API key.
async fn device_post(router: &Router, uri: &str, body: &Value) -> Reply {
    send(
        router,
        Method::POST,
        uri,
        None,
        &[],
        Some(&body.to_string()),
    )
    .await
}

async fn user(router: &Router, external_id: &str) -> String {
    let r = call(
        router,
        Method::POST,
        "/v1/users",
        Some(json!({"external_id": external_id})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json["id"].as_str().unwrap().to_owned()
}

/// Enrols a push method for `user` with `device`; returns the method id.
async fn enrol(router: &Router, user: &str, device: &Device, sub: Option<Value>) -> String {
    let r = call(
        router,
        Method::POST,
        &format!("/v1/users/{user}/methods"),
        Some(json!({"type": "push", "label": "my phone"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["status"], "pending");
    assert!(r.json["qr_svg"].as_str().unwrap().starts_with("<svg"));
    let link = r.json["enrol_url"].as_str().unwrap();
    assert!(link.contains("/app/#enrol="), "{link}");
    let token = enrol_token(link);
    assert_eq!(token.len(), 43, "256 bits, base64url");
    let reg = device_post(
        router,
        "/app/v1/register",
        &device.registration(&token, sub),
    )
    .await;
    assert_eq!(reg.status, StatusCode::CREATED, "{}", reg.text);
    let method = reg.json["method_id"].as_str().unwrap().to_owned();
    assert_eq!(method, r.json["id"].as_str().unwrap());
    // The link works once.
    let again = device_post(
        router,
        "/app/v1/register",
        &Device::new().registration(&token, None),
    )
    .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::GONE, "enrolment_link_unusable")
    );
    method
}

async fn verify(router: &Router, user: &str) -> Value {
    let r = call(
        router,
        Method::POST,
        "/v1/verifications",
        Some(json!({"user_id": user,
        "metadata": {"application": "Payroll", "location": "Lyon, FR"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["status"], "awaiting_user");
    assert!(
        r.json["number"].is_u64(),
        "the 201 shows the number: {}",
        r.text
    );
    r.json
}

async fn verification(router: &Router, id: &str) -> Value {
    call(
        router,
        Method::GET,
        &format!("/v1/verifications/{id}"),
        None,
    )
    .await
    .json
}

/// The request as the device sees it: the open requests on its event stream are the same
/// data as the push payload; here read through the signed event-stream's source of truth.
async fn open_request(state: &AppState, method: &str) -> Value {
    let id = callverify::user::MethodId::parse(method).unwrap();
    let open = state.signin.open_requests(&id).await.unwrap();
    serde_json::to_value(open.last().expect("an open request")).unwrap()
}

fn header(got: &Received, name: &str) -> String {
    got.headers[name].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_push_is_encrypted_for_the_browser_keys_and_identified_by_vapid() {
    let (state, router) = push_api(60).await;
    let service = Receiver::start(vec![Answer::Status(201)]).await;
    let ua = UaKeys::generate();
    let alice = user(&router, "alice@example.com").await;
    let device = Device::new();
    let method = enrol(
        &router,
        &alice,
        &device,
        Some(ua.subscription(&service.url())),
    )
    .await;
    let m = call(
        &router,
        Method::GET,
        &format!("/v1/users/{alice}/methods/{method}"),
        None,
    )
    .await;
    assert_eq!(
        (
            m.json["status"].as_str(),
            m.json["push_subscribed"].as_bool()
        ),
        (Some("active"), Some(true))
    );
    assert!(m.json.get("enrol_url").is_none(), "shown once");

    let vapid = call(&router, Method::GET, "/v1/vapid", None).await;
    let vapid_key = vapid.json["public_key"].as_str().unwrap().to_owned();

    let v = verify(&router, &alice).await;
    let id = v["id"].as_str().unwrap();
    let number = v["number"].as_u64().unwrap();
    assert!(
        service.wait_for(1, Duration::from_secs(10)).await,
        "a push reached the push service"
    );
    let got = service.received.lock().unwrap()[0].clone();
    assert_eq!(header(&got, "content-encoding"), "aes128gcm");
    assert_eq!(header(&got, "urgency"), "high");
    let ttl: u64 = header(&got, "ttl").parse().unwrap();
    assert!((1..=60).contains(&ttl), "TTL {ttl}");
    assert!(got.body.len() <= 4096);

    let opened = ua
        .open(&got.body, &header(&got, "authorization"))
        .expect("http_ece and jwcrypto accept it");
    assert_eq!(
        opened["k"],
        vapid_key.as_str(),
        "k= is the key at /v1/vapid"
    );
    assert_eq!(opened["header"]["alg"], "ES256");
    let claims = &opened["claims"];
    assert_eq!(
        claims["aud"],
        format!("http://{}", service.addr),
        "aud is the endpoint's origin"
    );
    assert_eq!(claims["sub"], "mailto:ops@example.com");
    let exp = claims["exp"].as_i64().unwrap();
    let now = opened["now"].as_i64().unwrap();
    assert!(
        exp > now && exp <= now + 24 * 3600,
        "exp within 24 h: {exp} vs {now}"
    );
    let request: Value = serde_json::from_str(opened["plain"].as_str().unwrap()).unwrap();
    assert_eq!(request["type"], "sign_in_request");
    assert_eq!(request["verification_id"], id);
    assert_eq!(request["method_id"], method.as_str());
    assert_eq!(request["client"], "auth");
    assert_eq!(request["metadata"]["application"], "Payroll");
    let choices: Vec<u64> = request["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(choices.len(), 3);
    assert!(choices.contains(&number), "{choices:?} has {number}");
    // Another key cannot open it (the test's check can fail).
    let stranger = UaKeys::generate();
    assert!(
        stranger
            .open(&got.body, &header(&got, "authorization"))
            .is_err()
    );

    // The decrypted request, answered with the right number, signed by the device.
    let answer = device.answer(&request, "approve", Some(number as u8));
    let r = device_post(&router, "/app/v1/answer", &answer).await;
    assert_eq!(
        (r.status, r.json["result"].as_str()),
        (StatusCode::OK, Some("confirmed")),
        "{}",
        r.text
    );
    let done = verification(&router, id).await;
    assert_eq!(
        (
            done["status"].as_str(),
            done["result"].as_str(),
            done["approved"].as_bool()
        ),
        (Some("completed"), Some("confirmed"), Some(true))
    );
    assert_eq!(done["method"]["type"], "push");
    // Replayed: refused, nothing changes.
    let replay = device_post(&router, "/app/v1/answer", &answer).await;
    assert_eq!(
        (replay.status, replay.code()),
        (StatusCode::CONFLICT, "request_not_open"),
        "{}",
        replay.text
    );
    drop(state);
}

#[tokio::test]
async fn every_answer_has_its_result_and_silence_is_no_input() {
    let (state, router) = push_api(60).await;
    let alice = user(&router, "alice@example.com").await;
    let device = Device::new();
    let method = enrol(&router, &alice, &device, None).await;
    for (answer, expected) in [
        ("deny", "denied"),
        ("fraud", "fraud_reported"),
        ("wrong", "wrong_digits"),
    ] {
        let v = verify(&router, &alice).await;
        let request = open_request(&state, &method).await;
        assert_eq!(request["verification_id"], v["id"]);
        let number = v["number"].as_u64().unwrap() as u8;
        let body = match answer {
            "wrong" => {
                let wrong = request["choices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_u64().unwrap() as u8)
                    .find(|n| *n != number)
                    .unwrap();
                device.answer(&request, "approve", Some(wrong))
            }
            other => device.answer(&request, other, None),
        };
        let r = device_post(&router, "/app/v1/answer", &body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let done = verification(&router, v["id"].as_str().unwrap()).await;
        assert_eq!(
            (done["result"].as_str(), done["approved"].as_bool()),
            (Some(expected), Some(false))
        );
    }
    // No answer within push.timeout_secs: no_input.
    let (state, router) = push_api(1).await;
    let bob = user(&router, "bob@example.com").await;
    let device = Device::new();
    let method = enrol(&router, &bob, &device, None).await;
    let v = verify(&router, &bob).await;
    let request = open_request(&state, &method).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // After expiry: refused, nothing approved.
    let late = device.answer(
        &request,
        "approve",
        Some(v["number"].as_u64().unwrap() as u8),
    );
    let r = device_post(&router, "/app/v1/answer", &late).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "request_not_open"),
        "{}",
        r.text
    );
    assert!(r.message().contains("expired"), "{}", r.text);
    state.signin.sweep_once(now_ms()).await.unwrap();
    let done = verification(&router, v["id"].as_str().unwrap()).await;
    assert_eq!(
        (done["result"].as_str(), done["approved"].as_bool()),
        (Some("no_input"), Some(false))
    );
}

#[tokio::test]
async fn forged_approvals_are_refused_and_approve_nothing() {
    let (state, router) = push_api(60).await;
    let alice = user(&router, "alice@example.com").await;
    let bob = user(&router, "bob@example.com").await;
    let (alice_phone, bob_phone) = (Device::new(), Device::new());
    let alice_method = enrol(&router, &alice, &alice_phone, None).await;
    let bob_method = enrol(&router, &bob, &bob_phone, None).await;
    let v = verify(&router, &alice).await;
    let id = v["id"].as_str().unwrap();
    let number = v["number"].as_u64().unwrap() as u8;
    let request = open_request(&state, &alice_method).await;

    // Signed by another device's key, in Alice's name.
    let forged = bob_phone.answer(&request, "approve", Some(number));
    let r = device_post(&router, "/app/v1/answer", &forged).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "bad_signature"),
        "{}",
        r.text
    );
    // Bob's own device answering Alice's request (his method, his key).
    let mut theirs = request.clone();
    theirs["method_id"] = json!(bob_method);
    let r = device_post(
        &router,
        "/app/v1/answer",
        &bob_phone.answer(&theirs, "approve", Some(number)),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "request_not_open"),
        "{}",
        r.text
    );
    // A signed answer whose number was changed afterwards.
    let mut tampered = alice_phone.answer(
        &request,
        "approve",
        Some(number.wrapping_add(1).clamp(10, 99)),
    );
    tampered["number"] = json!(number);
    let r = device_post(&router, "/app/v1/answer", &tampered).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "bad_signature"),
        "{}",
        r.text
    );
    // A made-up nonce, properly signed.
    let mut guessed = request.clone();
    guessed["nonce"] = json!("0".repeat(32));
    let r = device_post(
        &router,
        "/app/v1/answer",
        &alice_phone.answer(&guessed, "approve", Some(number)),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "request_not_open"),
        "{}",
        r.text
    );
    // Garbage.
    for body in [json!({}), json!({"verification_id": id}), json!([1, 2])] {
        let r = device_post(&router, "/app/v1/answer", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    }
    let still = verification(&router, id).await;
    assert_eq!(
        (still["status"].as_str(), still["approved"].as_bool()),
        (Some("awaiting_user"), Some(false)),
        "{still}"
    );

    // The real answer still works once; its replay does not.
    let real = alice_phone.answer(&request, "approve", Some(number));
    let r = device_post(&router, "/app/v1/answer", &real).await;
    assert_eq!(r.json["result"], "confirmed", "{}", r.text);
    let r = device_post(&router, "/app/v1/answer", &real).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // An answer replayed onto the next request of the same user (new nonce) does not verify.
    let next = verify(&router, &alice).await;
    let mut moved = real.clone();
    moved["verification_id"] = next["id"].clone();
    let r = device_post(&router, "/app/v1/answer", &moved).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "bad_signature"),
        "{}",
        r.text
    );
    let after = verification(&router, next["id"].as_str().unwrap()).await;
    assert_eq!(after["status"], "awaiting_user");
}

#[tokio::test]
async fn enrolment_refuses_bad_links_keys_and_endpoints() {
    let (_state, router) = push_api(60).await;
    let alice = user(&router, "alice@example.com").await;
    let r = call(
        &router,
        Method::POST,
        &format!("/v1/users/{alice}/methods"),
        Some(json!({"type": "push"})),
    )
    .await;
    let token = enrol_token(r.json["enrol_url"].as_str().unwrap());
    let device = Device::new();
    let ua = UaKeys::generate();
    // Signature by another key than the one registered: refused, the link still unused.
    let mut body = device.registration(&token, None);
    body["signature"] = json!(Device::new().sign(&format!("callverify-enrol\n{token}")));
    let r = device_post(&router, "/app/v1/register", &body).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "bad_signature"),
        "{}",
        r.text
    );
    // Endpoints that point inside the network, or are not https: refused.
    for endpoint in [
        "https://10.1.2.3/push",
        "http://push.example.net/x",
        "https://169.254.169.254/x",
        "https://localhost/x",
        "ftp://127.0.0.1/x",
    ] {
        let r = device_post(
            &router,
            "/app/v1/register",
            &device.registration(&token, Some(ua.subscription(endpoint))),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{endpoint}: {}", r.text);
    }
    let long = format!("https://push.example.net/{}", "a".repeat(2000));
    let r = device_post(
        &router,
        "/app/v1/register",
        &device.registration(&token, Some(ua.subscription(&long))),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // An unknown token.
    let r = device_post(
        &router,
        "/app/v1/register",
        &device.registration(&"x".repeat(43), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::GONE);
    // The good one still works.
    let r = device_post(
        &router,
        "/app/v1/register",
        &device.registration(&token, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn a_gone_subscription_is_forgotten() {
    let (_state, router) = push_api(60).await;
    let service = Receiver::start(vec![Answer::Status(410)]).await;
    let ua = UaKeys::generate();
    let alice = user(&router, "alice@example.com").await;
    let method = enrol(
        &router,
        &alice,
        &Device::new(),
        Some(ua.subscription(&service.url())),
    )
    .await;
    verify(&router, &alice).await;
    assert!(service.wait_for(1, Duration::from_secs(10)).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = call(
            &router,
            Method::GET,
            &format!("/v1/users/{alice}/methods/{method}"),
            None,
        )
        .await;
        if m.json["push_subscribed"] == json!(false) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscription still kept: {}",
            m.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(service.count(), 1, "410 is not retried");
}

#[tokio::test]
async fn push_needs_a_vapid_key_and_the_app_is_served_with_a_strict_csp() {
    let (_state, router) = api(config()).await;
    let alice = user(&router, "alice@example.com").await;
    let r = call(
        &router,
        Method::POST,
        &format!("/v1/users/{alice}/methods"),
        Some(json!({"type": "push"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.text);
    for path in [
        "/app/",
        "/app/app.js",
        "/app/sw.js",
        "/app/app.css",
        "/app/manifest.webmanifest",
        "/app/icon.svg",
    ] {
        let r = send(&router, Method::GET, path, None, &[], None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let csp = r.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
    }
    let index = send(&router, Method::GET, "/app/", None, &[], None)
        .await
        .text;
    assert!(
        !index.contains("<script>") && !index.contains("style=") && !index.contains("http"),
        "no inline or third-party assets"
    );
}

/// Opens a hosted prompt link and returns the page's HTML (and the verification id).
async fn hosted_page(router: &Router, created: &Value) -> String {
    let id = created["id"].as_str().unwrap();
    let path = created["prompt_url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://127.0.0.1:9")
        .unwrap()
        .to_owned();
    let first = send(router, Method::GET, &path, None, &[], None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let cookie = first.headers["set-cookie"].to_str().unwrap();
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = send(
        router,
        Method::GET,
        &format!("/prompt/s/{id}"),
        None,
        &[("cookie", &session)],
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    page.text
}

#[tokio::test]
async fn the_hosted_prompt_shows_the_number_and_offers_push_as_an_alternate() {
    let mut config = config_with(&format!(
        "[signin]\npublic_url = \"http://127.0.0.1:9\"\nsigning_key = \'\'\'{}\'\'\'\n\n{}",
        signin_support::signing_pem(),
        push_config(60)
    ));
    config.api.clients[0].return_hosts = vec!["app.example.com".into()];
    let (state, router) = api(config).await;
    let alice = user(&router, "alice@example.com").await;
    let phone = call(
        &router,
        Method::POST,
        &format!("/v1/users/{alice}/methods"),
        Some(json!({"type": "phone", "phone_number": US_NUMBER})),
    )
    .await;
    assert_eq!(phone.status, StatusCode::CREATED, "{}", phone.text);
    let device = Device::new();
    let method = enrol(&router, &alice, &device, None).await;

    // The phone comes first: push is listed among the alternates.
    let created = call(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(json!({"user_id": alice,
        "language": "en", "hosted": {"return_url": "https://app.example.com/mfa/done"}})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert!(
        created.json.get("number").is_none(),
        "a phone attempt has no number"
    );
    let html = hosted_page(&router, &created.json).await;
    assert!(
        html.contains("Send a request to my authenticator app"),
        "{html}"
    );
    assert!(html.contains(&method), "the push method is a switch target");

    // Switching to push starts a request: the page says which number to choose.
    let id = created.json["id"].as_str().unwrap();
    let switched = call(
        &router,
        Method::POST,
        &format!("/v1/verifications/{id}/switch"),
        Some(json!({"method_id": method})),
    )
    .await;
    assert_eq!(switched.status, StatusCode::OK, "{}", switched.text);
    let request = open_request(&state, &method).await;
    assert_eq!(request["verification_id"], id);

    // Push named directly, hosted: the 201 and the page show the same number.
    let direct = call(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(json!({"user_id": alice,
        "method_id": method, "language": "en",
        "hosted": {"return_url": "https://app.example.com/mfa/done"}})),
    )
    .await;
    assert_eq!(direct.status, StatusCode::CREATED, "{}", direct.text);
    let number = direct.json["number"].as_u64().unwrap();
    let html = hosted_page(&router, &direct.json).await;
    assert!(
        html.contains(&format!("Open your authenticator app and choose {number}.")),
        "{html}"
    );
    assert!(
        html.contains("Call my phone ••• ••23"),
        "the phone is an alternate: {html}"
    );
    signin_support::assert_accessible(&html);
}
