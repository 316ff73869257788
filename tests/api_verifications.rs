//! API v1 through `app(state)` with `oneshot` (no socket): every route, every error status.

mod api_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use api_support::*;
use axum::http::{Method, StatusCode};
use flow::CallResult;

fn body(number: &str) -> String {
    format!(r#"{{"phone_number":"{number}"}}"#)
}

#[tokio::test]
async fn create_returns_201_with_the_queued_verification() {
    let (_, router) = api(config()).await;
    let r = post(
        &router,
        r#"{"phone_number":"+12015550123","extension":"12,,#*","language":"en",
            "callback_url":"http://127.0.0.1:9/hook","metadata":{"user":"ada"}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json["id"].as_str().unwrap();
    assert!(id.starts_with("vrf_"));
    assert_eq!(r.headers["location"], format!("/v1/verifications/{id}"));
    assert_eq!(r.json["status"], "queued");
    assert_eq!(r.json["result"], serde_json::Value::Null);
    assert_eq!(r.json["approved"], false);
    assert_eq!(r.json["phone_number"], US_NUMBER);
    assert_eq!(r.json["extension"], "12,,#*");
    assert_eq!(r.json["mode"], "standard");
    assert_eq!(r.json["metadata"]["user"], "ada");
    assert_eq!(r.json["timeline"], serde_json::json!([]));
    assert!(r.json.get("challenge").is_none());
}

#[tokio::test]
async fn challenge_mode_returns_the_digits_once() {
    let (_, router) = api(config()).await;
    let r = post(
        &router,
        r#"{"phone_number":"+12015550123","mode":"challenge"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let digits = r.json["challenge"].as_str().unwrap();
    assert_eq!(digits.len(), 6);
    assert!(digits.bytes().all(|b| b.is_ascii_digit()));
    let g = get(&router, r.json["id"].as_str().unwrap()).await;
    assert_eq!(g.status, StatusCode::OK);
    assert!(
        g.json.get("challenge").is_none(),
        "GET must not repeat the challenge"
    );
}

#[tokio::test]
async fn pin_mode_rules_and_the_pin_is_never_returned() {
    let (_, router) = api(config()).await;
    let r = post(
        &router,
        r#"{"phone_number":"+12015550123","mode":"pin","pin":"482913"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(!r.text.contains("482913"));
    let g = get(&router, r.json["id"].as_str().unwrap()).await;
    assert!(!g.text.contains("482913"));

    let r = refused(
        &router,
        r#"{"phone_number":"+12015550124","mode":"pin"}"#,
        StatusCode::BAD_REQUEST,
        "missing_field",
    )
    .await;
    assert!(r.message().contains("pin"));
    refused(
        &router,
        r#"{"phone_number":"+12015550124","mode":"pin","pin":"12a4"}"#,
        StatusCode::BAD_REQUEST,
        "invalid_pin",
    )
    .await;
    refused(
        &router,
        r#"{"phone_number":"+12015550124","mode":"pin","pin":"123"}"#,
        StatusCode::BAD_REQUEST,
        "invalid_pin",
    )
    .await;
    refused(
        &router,
        r#"{"phone_number":"+12015550124","pin":"1234"}"#,
        StatusCode::BAD_REQUEST,
        "unexpected_field",
    )
    .await;
    refused(
        &router,
        r#"{"phone_number":"+12015550124","mode":"challenge","pin":"1234"}"#,
        StatusCode::BAD_REQUEST,
        "unexpected_field",
    )
    .await;
}

#[tokio::test]
async fn malformed_requests_are_400_with_a_message_that_says_what() {
    let (_, router) = api(config()).await;
    let cases: &[(&str, &str, &str)] = &[
        ("{not json", "invalid_json", "not JSON"),
        ("[1,2]", "invalid_json", "JSON object"),
        (r#"{"extension":"1"}"#, "missing_field", "phone_number"),
        (r#"{"phone_number":5}"#, "invalid_field", "phone_number"),
        (
            r#"{"phone_number":"+12015550123","mode":"loud"}"#,
            "invalid_mode",
            "unknown mode `loud`",
        ),
        (
            r#"{"phone_number":"+12015550123","colour":"red"}"#,
            "unknown_field",
            "colour",
        ),
        (
            r#"{"phone_number":"12015550123"}"#,
            "invalid_phone_number",
            "E.164",
        ),
        (
            r#"{"phone_number":"+1 201 555 0123"}"#,
            "invalid_phone_number",
            "E.164",
        ),
        (
            r#"{"phone_number":"+1999"}"#,
            "invalid_phone_number",
            "E.164",
        ),
        (
            r#"{"phone_number":"+11115550123"}"#,
            "invalid_phone_number",
            "numbering plan",
        ),
        (
            r#"{"phone_number":"+12015550123","extension":"12a"}"#,
            "invalid_extension",
            "extension",
        ),
        (
            r#"{"phone_number":"+12015550123","extension":",,"}"#,
            "invalid_extension",
            "extension",
        ),
        (
            r#"{"phone_number":"+12015550123","language":"english"}"#,
            "invalid_language",
            "language",
        ),
        (
            r#"{"phone_number":"+12015550123","callback_url":"not a url"}"#,
            "invalid_callback_url",
            "callback_url",
        ),
        (
            r#"{"phone_number":"+12015550123","callback_url":"ftp://127.0.0.1/x"}"#,
            "invalid_callback_url",
            "scheme",
        ),
        (
            r#"{"phone_number":"+12015550123","callback_url":"http://u:p@127.0.0.1/x"}"#,
            "invalid_callback_url",
            "credentials",
        ),
        (
            r#"{"phone_number":"+12015550123","metadata":[1]}"#,
            "invalid_field",
            "metadata",
        ),
    ];
    for (body, code, needle) in cases {
        let r = post(&router, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.code(), *code, "{body}: {}", r.text);
        assert!(
            r.message().contains(needle),
            "{body}: message {:?} lacks {needle:?}",
            r.message()
        );
    }
}

#[tokio::test]
async fn policy_refusals_are_422() {
    let mut cfg = config_with(
        "[media]\nlanguages = [\"en\", \"de\"]\n[webhook]\nallow_http = false\nallow_private_networks = false\n",
    );
    cfg.api.metadata_max_bytes = 64;
    let (_, router) = api(cfg).await;
    let cases: &[(&str, &str)] = &[
        (r#"{"phone_number":"+33612345678"}"#, "country_not_allowed"),
        (
            r#"{"phone_number":"+18002345678"}"#,
            "number_type_not_allowed",
        ),
        (
            r#"{"phone_number":"+19002345678"}"#,
            "number_type_not_allowed",
        ),
        (
            r#"{"phone_number":"sip:alice@example.com"}"#,
            "sip_uri_not_allowed",
        ),
        (
            r#"{"phone_number":"+12015550123","language":"fr"}"#,
            "unsupported_language",
        ),
        (
            r#"{"phone_number":"+12015550123","callback_url":"https://evil.example.net/h"}"#,
            "callback_url_not_allowed",
        ),
        (
            r#"{"phone_number":"+12015550123","callback_url":"http://auth.example.com/h"}"#,
            "callback_url_not_allowed",
        ),
        (
            r#"{"phone_number":"+12015550123","callback_url":"https://127.0.0.1/h"}"#,
            "callback_url_not_allowed",
        ),
        (
            r#"{"phone_number":"+12015550123","metadata":{"blob":"0123456789012345678901234567890123456789012345678901234567890123456789"}}"#,
            "metadata_too_large",
        ),
    ];
    for (body, code) in cases {
        let r = post(&router, body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        assert_eq!(r.code(), *code, "{body}: {}", r.text);
        assert!(!r.message().is_empty());
    }
    // A client without webhook_secret cannot ask for callbacks.
    let r = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(OTHER_KEY),
        &[],
        Some(r#"{"phone_number":"+12015550123","callback_url":"https://auth.example.com/h"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    // GB is on the allowlist; a GB mobile is fine. The German language is offered.
    let r = post(
        &router,
        r#"{"phone_number":"+447400123456","language":"de"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn sip_uris_only_when_allowed() {
    let (_, router) = api(config_with(
        "[sip]\nallow_sip_uris = true\n[limits]\nsip_uri_hosts = [\"127.0.0.1\"]\n",
    ))
    .await;
    let r = post(&router, r#"{"phone_number":"sip:alice@127.0.0.1:5070"}"#).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["phone_number"], "sip:alice@127.0.0.1:5070");
    // Direct SIP URIs (no trunk) only to the listed hosts.
    refused(
        &router,
        r#"{"phone_number":"sip:alice@192.0.2.7"}"#,
        StatusCode::UNPROCESSABLE_ENTITY,
        "sip_uri_host_not_allowed",
    )
    .await;
    refused(
        &router,
        r#"{"phone_number":"sip:al ice@x"}"#,
        StatusCode::BAD_REQUEST,
        "invalid_phone_number",
    )
    .await;
}

#[tokio::test]
async fn wrong_content_type_is_415_and_big_bodies_413() {
    let mut cfg = config();
    cfg.api.body_max_bytes = 256;
    let (_, router) = api(cfg).await;
    let r = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(KEY),
        &[("content-type", "text/plain")],
        Some(&body(US_NUMBER)),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let big = format!(
        r#"{{"phone_number":"{US_NUMBER}","metadata":{{"x":"{}"}}}}"#,
        "a".repeat(1000)
    );
    let r = post(&router, &big).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
}

#[tokio::test]
async fn authentication_failures_are_401() {
    let (_, router) = api(config()).await;
    let b = body(US_NUMBER);
    let r = send(
        &router,
        Method::POST,
        "/v1/verifications",
        None,
        &[],
        Some(&b),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert!(r.headers.contains_key("www-authenticate"));
    assert!(r.message().contains("Authorization"));
    let r = send(
        &router,
        Method::POST,
        "/v1/verifications",
        None,
        &[("authorization", "Basic YTpi")],
        Some(&b),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.message().contains("Bearer"));
    let r = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some("cv_wrong_key_000000000000"),
        &[],
        Some(&b),
    )
    .await;
    assert_eq!(
        (r.status, r.message()),
        (StatusCode::UNAUTHORIZED, "invalid API key")
    );
    let r = send(
        &router,
        Method::GET,
        "/v1/verifications/vrf_00000000000000000000000000000000",
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        &router,
        Method::DELETE,
        "/v1/verifications/vrf_00000000000000000000000000000000",
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The client configured by key_sha256 authenticates with its key.
    let r = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(OTHER_KEY),
        &[],
        Some(&b),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn idempotency_key_replays_or_conflicts() {
    let (_, router) = api(config()).await;
    let idem = [("idempotency-key", "login-7f3a")];
    let first = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(KEY),
        &idem,
        Some(r#"{"phone_number":"+12015550123","mode":"challenge"}"#),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    // Same body, other key order and spacing: the same verification, 200, same challenge.
    let again = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(KEY),
        &idem,
        Some(r#"{ "mode": "challenge", "phone_number": "+12015550123" }"#),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json["id"], first.json["id"]);
    assert_eq!(again.json["challenge"], first.json["challenge"]);
    // Same key, other body: 409.
    let other = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(KEY),
        &idem,
        Some(r#"{"phone_number":"+12015550124"}"#),
    )
    .await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::CONFLICT, "idempotency_key_reused")
    );
    // Keys are per client: the other client may use the same key.
    let theirs = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(OTHER_KEY),
        &idem,
        Some(r#"{"phone_number":"+12015550125"}"#),
    )
    .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    let bad = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(KEY),
        &[("idempotency-key", "has space")],
        Some(&body(US_NUMBER)),
    )
    .await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::BAD_REQUEST, "invalid_idempotency_key")
    );
}

#[tokio::test]
async fn duplicate_requests_join_or_queue() {
    let (_, router) = api(config()).await;
    let a = post(&router, &body(US_NUMBER)).await;
    let b = post(&router, &body(US_NUMBER)).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(b.status, StatusCode::OK, "joined");
    assert_eq!(a.json["id"], b.json["id"]);
    // Other parameters: a new verification, queued behind the first.
    let c = post(
        &router,
        r#"{"phone_number":"+12015550123","extension":"9"}"#,
    )
    .await;
    assert_eq!(c.status, StatusCode::CREATED);
    assert_ne!(c.json["id"], a.json["id"]);

    let (_, router) = api(config_with("[limits]\nduplicate = \"queue\"\n")).await;
    let a = post(&router, &body(US_NUMBER)).await;
    let b = post(&router, &body(US_NUMBER)).await;
    assert_eq!(
        (a.status, b.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_ne!(a.json["id"], b.json["id"]);
}

#[tokio::test]
async fn get_errors() {
    let (_, router) = api(config()).await;
    let id = post(&router, &body(US_NUMBER)).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = get(&router, &id).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["id"], id.as_str());
    let r = get(&router, "vrf_00000000000000000000000000000000").await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let r = get(&router, "nonsense").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Another client's verification does not exist for you.
    let r = send(
        &router,
        Method::GET,
        &format!("/v1/verifications/{id}"),
        Some(OTHER_KEY),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(
        &router,
        Method::DELETE,
        &format!("/v1/verifications/{id}"),
        Some(OTHER_KEY),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get(&router, &format!("{id}?wait=abc")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_wait")
    );
    let r = get(&router, &format!("{id}?wait=31")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_wait")
    );
}

#[tokio::test]
async fn long_poll_is_woken_by_the_completion() {
    let (_, router) = api(config()).await;
    let id = post(&router, &body(US_NUMBER)).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let waiter = {
        let router = router.clone();
        let id = id.clone();
        tokio::spawn(async move { get(&router, &format!("{id}?wait=20")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the long-poll returned before completion"
    );
    let d = send(
        &router,
        Method::DELETE,
        &format!("/v1/verifications/{id}"),
        Some(KEY),
        &[],
        None,
    )
    .await;
    assert_eq!(d.status, StatusCode::OK);
    let r = waiter.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken, not timed out"
    );
    assert_eq!(r.json["status"], "completed");
    assert_eq!(r.json["result"], "cancelled");
}

#[tokio::test]
async fn long_poll_ends_with_the_wait() {
    let (_, router) = api(config()).await;
    let id = post(&router, &body(US_NUMBER)).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let r = get(&router, &format!("{id}?wait=1")).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        (r.status, r.json["status"].as_str()),
        (StatusCode::OK, Some("queued"))
    );
}

#[tokio::test]
async fn cancel_queued_then_409() {
    let (state, router) = api(config()).await;
    let id = post(&router, &body(US_NUMBER)).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = format!("/v1/verifications/{id}");
    let r = send(&router, Method::DELETE, &uri, Some(KEY), &[], None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "completed");
    assert_eq!(r.json["result"], "cancelled");
    assert_eq!(r.json["approved"], false);
    let r = send(&router, Method::DELETE, &uri, Some(KEY), &[], None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "already_completed")
    );
    let r = send(
        &router,
        Method::DELETE,
        "/v1/verifications/vrf_00000000000000000000000000000000",
        Some(KEY),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(state.metrics.calls(CallResult::Cancelled), 1);
}

#[tokio::test]
async fn cancel_live_call_hangs_up() {
    let (state, router) = api(config()).await;
    let placer = ScriptedPlacer::new(Script::UntilCancelled);
    let (stop, dialer) = spawn_dialer(&state, placer.clone());
    let id = post(&router, &body(US_NUMBER)).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Wait for the call to be up.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(&router, &id).await;
        if r.json["status"] == "in_call" {
            break;
        }
        assert!(Instant::now() < deadline, "call never answered: {}", r.text);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = send(
        &router,
        Method::DELETE,
        &format!("/v1/verifications/{id}"),
        Some(KEY),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let r = get(&router, &format!("{id}?wait=5")).await;
    assert_eq!(r.json["result"], "cancelled", "{}", r.text);
    stop.cancel();
    dialer.await.unwrap();
}

#[tokio::test]
async fn an_overloaded_runtime_gets_no_new_call_until_its_timers_are_on_time() {
    let (state, router) = api(config()).await;
    let placer = ScriptedPlacer::new(Script::Immediate(CallResult::Confirmed));
    placer.capacity.store(false, Ordering::SeqCst);
    let (stop, dialer) = spawn_dialer(&state, placer.clone());
    let id = post(&router, &body(US_NUMBER)).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Overloaded: the verification stays queued and nothing is dialled.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(placer.placed(), 0);
    let r = get(&router, &id).await;
    assert_eq!(r.json["status"], "queued", "{}", r.text);
    let m = send(&router, Method::GET, "/metrics", None, &[], None).await;
    let waits = m
        .text
        .lines()
        .find_map(|l| l.strip_prefix("callverify_dialer_overload_waits_total "))
        .and_then(|n| n.parse::<u64>().ok())
        .expect("the overload waits are counted");
    assert!(waits >= 2, "{waits} waits in 600 ms of overload");
    // On time again: the queued verification is claimed and called.
    placer.capacity.store(true, Ordering::SeqCst);
    let r = get(&router, &format!("{id}?wait=10")).await;
    assert_eq!(r.json["result"], "confirmed", "{}", r.text);
    assert_eq!(placer.placed(), 1);
    stop.cancel();
    dialer.await.unwrap();
}

#[tokio::test]
async fn the_dialer_completes_and_get_shows_the_outcome() {
    let (state, router) = api(config()).await;
    let placer = ScriptedPlacer::new(Script::Immediate(CallResult::Confirmed));
    let (stop, dialer) = spawn_dialer(&state, placer.clone());
    let id = post(
        &router,
        r#"{"phone_number":"+12015550123","mode":"pin","pin":"4321"}"#,
    )
    .await
    .json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = get(&router, &format!("{id}?wait=10")).await;
    assert_eq!(r.json["status"], "completed", "{}", r.text);
    assert_eq!(r.json["result"], "confirmed");
    assert_eq!(r.json["approved"], true);
    assert_eq!(r.json["dtmf_method"], "inband");
    assert!(r.json["call_started_at"].is_string());
    let timeline = r.json["timeline"].as_array().unwrap();
    assert_eq!(timeline.first().unwrap()["event"], "invite_sent");
    assert_eq!(timeline.last().unwrap()["event"], "outcome");
    assert_eq!(timeline.last().unwrap()["result"], "confirmed");
    // The placer got the PIN to expect, sealed; the API never shows it.
    let placed = placer.placed.lock().unwrap()[0].clone();
    let sealed = placed.expected_digits.as_ref().unwrap();
    assert!(sealed.matches("4321"));
    assert!(!sealed.matches("4322"));
    assert!(!format!("{placed:?}").contains("4321"));
    assert!(!format!("{placed:?}").contains("2015550123"));
    // The outcome is visible in the store a moment before the dialer counts it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = send(&router, Method::GET, "/metrics", None, &[], None).await;
        if m.text
            .contains("callverify_calls_total{result=\"confirmed\"} 1")
            || Instant::now() > deadline
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        m.text
            .contains("callverify_calls_total{result=\"confirmed\"} 1"),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains("callverify_dtmf_method_total{method=\"inband\"} 1")
    );
    assert!(
        m.text
            .contains("callverify_dtmf_detector_latency_seconds_count 1")
    );
    stop.cancel();
    dialer.await.unwrap();
}

#[tokio::test]
async fn the_dialer_respects_channels_and_one_call_per_number() {
    let mut cfg = config_with("[limits]\nduplicate = \"queue\"\n");
    cfg.sip.channels = 2;
    let (state, router) = api(cfg).await;
    let placer = ScriptedPlacer::new(Script::Held(CallResult::Confirmed));
    let (stop, dialer) = spawn_dialer(&state, placer.clone());
    let numbers = [
        "+12015550101",
        "+12015550102",
        "+12015550103",
        "+12015550101",
        "+12015550101",
    ];
    let mut ids = Vec::new();
    for n in numbers {
        let r = post(&router, &body(n)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        ids.push(r.json["id"].as_str().unwrap().to_owned());
    }
    for _ in 0..numbers.len() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        placer.release.add_permits(1);
    }
    for id in &ids {
        let r = get(&router, &format!("{id}?wait=10")).await;
        assert_eq!(r.json["result"], "confirmed", "{}", r.text);
    }
    assert_eq!(placer.placed(), 5);
    assert!(placer.max_active.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    assert_eq!(
        placer
            .same_number_overlaps
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    stop.cancel();
    dialer.await.unwrap();
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let (_, router) = api(config_with(
        "[limits]\nper_number_per_hour = 2\nduplicate = \"queue\"\n",
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(
            post(&router, &body(US_NUMBER)).await.status,
            StatusCode::CREATED
        );
    }
    let r = post(&router, &body(US_NUMBER)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&retry), "{retry}");
    assert!(r.message().contains("phone number"));
    // Another number is not limited.
    assert_eq!(
        post(&router, &body("+12015550199")).await.status,
        StatusCode::CREATED
    );

    let mut cfg = config();
    cfg.api.clients[0].rate_per_minute = 1;
    let (_, router) = api(cfg).await;
    assert_eq!(
        post(&router, &body(US_NUMBER)).await.status,
        StatusCode::CREATED
    );
    let r = post(&router, &body("+12015550199")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(r.message().contains("client"));
}

#[tokio::test]
async fn operations_routes() {
    let (_, router) = api(config()).await;
    let r = send(&router, Method::GET, "/healthz", None, &[], None).await;
    assert_eq!(
        (r.status, r.json["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );

    post(&router, &body(US_NUMBER)).await;
    let r = send(&router, Method::GET, "/metrics", None, &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    for name in [
        "callverify_calls_total{result=\"confirmed\"} 0",
        "callverify_calls_in_flight 0",
        "callverify_queue_depth 1",
        "callverify_webhook_deliveries_total 0",
        "callverify_webhook_failures_total 0",
        "callverify_dtmf_method_total{method=\"rfc4733\"} 0",
        "callverify_dtmf_detector_latency_seconds_bucket{le=\"+Inf\"} 0",
    ] {
        assert!(r.text.contains(name), "missing {name}\n{}", r.text);
    }

    let r = send(&router, Method::GET, "/openapi.json", None, &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.json["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        r.json["openapi"]
    );
    let paths = &r.json["paths"];
    assert!(paths["/v1/verifications"]["post"].is_object());
    assert!(paths["/v1/verifications/{id}"]["get"].is_object());
    assert!(paths["/v1/verifications/{id}"]["delete"].is_object());
    assert!(paths["/healthz"]["get"].is_object());
    assert!(r.json["components"]["securitySchemes"]["bearer"].is_object());
    assert!(r.json["components"]["schemas"]["VerificationView"].is_object());

    let r = send(&router, Method::GET, "/v2/nothing", None, &[], None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let r = send(
        &router,
        Method::PUT,
        "/v1/verifications",
        Some(KEY),
        &[],
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn a_panicking_placer_fails_the_call_and_the_dialer_goes_on() {
    let (state, router) = api(config()).await;
    let placer = ScriptedPlacer::new(Script::Panic);
    let (stop, dialer) = spawn_dialer(&state, placer.clone());
    let id = post(&router, &body(US_NUMBER)).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = get(&router, &format!("{id}?wait=10")).await;
    assert_eq!(r.json["result"], "failed", "{}", r.text);
    *placer.script.lock().unwrap() = Script::Immediate(CallResult::Busy);
    let id = post(&router, &body("+12015550199")).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = get(&router, &format!("{id}?wait=10")).await;
    assert_eq!(r.json["result"], "busy", "{}", r.text);
    stop.cancel();
    dialer.await.unwrap();
}

/// A store whose disk is gone: every call fails.
struct BrokenStore;

fn broken() -> callverify::store::StoreError {
    callverify::store::StoreError::Backend("secret internal detail: disk on fire".into())
}

#[async_trait::async_trait]
impl callverify::store::Store for BrokenStore {
    async fn create(
        &self,
        _: callverify::store::NewVerification,
        _: Option<callverify::store::IdempotencyKey>,
        _: bool,
        _: &[callverify::store::Quota],
    ) -> Result<callverify::store::Created, callverify::store::StoreError> {
        Err(broken())
    }
    async fn get(
        &self,
        _: &callverify::store::VerificationId,
    ) -> Result<Option<callverify::store::Verification>, callverify::store::StoreError> {
        Err(broken())
    }
    async fn claim_next(
        &self,
        _: i64,
    ) -> Result<Option<callverify::store::Verification>, callverify::store::StoreError> {
        Err(broken())
    }
    async fn progress(
        &self,
        _: &callverify::store::VerificationId,
        _: callverify::store::Status,
        _: &[flow::TimelineEntry],
        _: i64,
    ) -> Result<(), callverify::store::StoreError> {
        Err(broken())
    }
    async fn complete(
        &self,
        _: &callverify::store::VerificationId,
        _: callverify::store::Completion,
        _: i64,
    ) -> Result<Option<callverify::store::Verification>, callverify::store::StoreError> {
        Err(broken())
    }
    async fn settle(
        &self,
        _: &callverify::store::VerificationId,
        _: callverify::store::Completion,
        _: i64,
    ) -> Result<Option<callverify::store::Verification>, callverify::store::StoreError> {
        Err(broken())
    }
    async fn close_call(
        &self,
        _: &callverify::store::VerificationId,
        _: &[flow::TimelineEntry],
        _: i64,
    ) -> Result<(), callverify::store::StoreError> {
        Err(broken())
    }
    async fn expire_queued(
        &self,
        _: i64,
        _: i64,
    ) -> Result<Vec<callverify::store::Verification>, callverify::store::StoreError> {
        Err(broken())
    }
    async fn dequeue(
        &self,
        _: &callverify::store::VerificationId,
        _: &str,
        _: i64,
    ) -> Result<callverify::store::Dequeued, callverify::store::StoreError> {
        Err(broken())
    }
    async fn recover(
        &self,
        _: i64,
    ) -> Result<callverify::store::Recovery, callverify::store::StoreError> {
        Err(broken())
    }
    async fn queue_depth(&self) -> Result<u64, callverify::store::StoreError> {
        Err(broken())
    }
    async fn claim_webhook(
        &self,
        _: i64,
        _: i64,
        _: &[String],
    ) -> Result<Option<callverify::store::OutboxMessage>, callverify::store::StoreError> {
        Err(broken())
    }
    async fn record_attempt(
        &self,
        _: callverify::store::Attempt,
        _: callverify::store::OutboxState,
        _: i64,
    ) -> Result<(), callverify::store::StoreError> {
        Err(broken())
    }
    async fn outbox(
        &self,
        _: &callverify::store::VerificationId,
    ) -> Result<Vec<callverify::store::OutboxEntry>, callverify::store::StoreError> {
        Err(broken())
    }
    async fn next_webhook_due(&self) -> Result<Option<i64>, callverify::store::StoreError> {
        Err(broken())
    }
    async fn ping(&self) -> Result<(), callverify::store::StoreError> {
        Err(broken())
    }
}

#[tokio::test]
async fn store_failures_are_500_and_503_without_internals() {
    let state =
        callverify::api::AppState::new(config(), std::sync::Arc::new(BrokenStore), test_key())
            .unwrap();
    let router = callverify::api::app(state);
    let r = post(&router, &body(US_NUMBER)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::INTERNAL_SERVER_ERROR, "internal")
    );
    assert_eq!(r.message(), "internal error");
    let r = get(&router, "vrf_00000000000000000000000000000000").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!r.text.contains("disk on fire"));
    let r = send(&router, Method::GET, "/healthz", None, &[], None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert!(!r.text.contains("disk on fire"));
    let r = send(&router, Method::GET, "/metrics", None, &[], None).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
}
