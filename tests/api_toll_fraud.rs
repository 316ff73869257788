//! Toll fraud and call bombing (issue 8 item 6), through the API as an attacker holding a
//! client key would try them: SIP URIs that smuggle a number past the policy, number types
//! that bill us, and floods against the hour/day caps. Every refusal is a clear 422, or a 429
//! with Retry-After for caps; caps are counted in the store and survive a restart; queued
//! verifications expire with a webhook.

mod api_support;

use std::time::Duration;

use api_support::*;
use axum::http::{Method, StatusCode};
use flow::CallResult;

fn num(n: &str) -> String {
    format!(r#"{{"phone_number":"{n}"}}"#)
}

/// A service with a trunk and SIP URIs allowed: a SIP URI is another way to write a number.
fn trunk_config(extra: &str) -> callverify::config::Config {
    config_with(&format!(
        "[sip]\ntrunk = \"sip:trunk.example.net\"\nallow_sip_uris = true\n{extra}"
    ))
}

#[tokio::test]
async fn sip_uris_through_the_trunk_obey_the_number_policy() {
    let (_, router) = api(trunk_config("")).await;
    // The issue's example: a UK personal number (070) written as a SIP URI.
    refused(
        &router,
        &num("sip:+447000000000@trunk.example.net"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "number_type_not_allowed",
    )
    .await;
    // Percent-escaped `+` and visual separators are the same number.
    refused(
        &router,
        &num("sip:%2B44-70-1123-4567@anything.example;user=phone"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "number_type_not_allowed",
    )
    .await;
    refused(
        &router,
        &num("sip:+33612345678@trunk.example.net"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "country_not_allowed",
    )
    .await;
    refused(
        &router,
        &num("sip:+19002345678@trunk.example.net"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "number_type_not_allowed",
    )
    .await;
    let r = refused(
        &router,
        &num("sip:alice@trunk.example.net"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "sip_uri_not_e164",
    )
    .await;
    assert!(r.message().contains("E.164"), "{}", r.text);
    // Not a national number in disguise either.
    refused(
        &router,
        &num("sip:12015550123@trunk.example.net"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "sip_uri_not_e164",
    )
    .await;
    // What could redirect the INVITE or inject headers is refused outright.
    for uri in [
        "sip:+12015550123@trunk.example.net;maddr=192.0.2.1",
        "sip:+12015550123@trunk.example.net?Route=%3Csip:evil%3E",
        "sip:+12015550123:pw@trunk.example.net",
        "sip:+1201%0d%0a5550123@trunk.example.net",
    ] {
        refused(
            &router,
            &num(uri),
            StatusCode::BAD_REQUEST,
            "invalid_phone_number",
        )
        .await;
    }
    // An allowed number written as a URI is stored as that number.
    let r = post(
        &router,
        &num("sip:+1-201-555-0123@trunk.example.net;user=phone"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["phone_number"], "+12015550123");
}

#[tokio::test]
async fn direct_sip_uris_only_to_listed_hosts_in_canonical_form() {
    let (_, router) = api(config_with(
        "[sip]\nallow_sip_uris = true\n[limits]\nsip_uri_hosts = [\"pbx.example.com\", \"192.0.2.10:5070\"]\n",
    ))
    .await;
    for (uri, code) in [
        ("sip:alice@evil.example.com", "sip_uri_host_not_allowed"),
        ("sip:alice@192.0.2.10", "sip_uri_host_not_allowed"),
        ("sip:alice@192.0.2.10:5071", "sip_uri_host_not_allowed"),
        (
            "sip:alice@pbx.example.com.evil.net",
            "sip_uri_host_not_allowed",
        ),
    ] {
        refused(&router, &num(uri), StatusCode::UNPROCESSABLE_ENTITY, code).await;
    }
    let r = post(
        &router,
        &num("SIP:alice@PBX.Example.com:5060;transport=UDP"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["phone_number"], "sip:alice@pbx.example.com");
    let r = post(&router, &num("sip:bob@192.0.2.10:5070;transport=tcp")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.json["phone_number"],
        "sip:bob@192.0.2.10:5070;transport=tcp"
    );
}

#[tokio::test]
async fn number_types_that_bill_us_or_are_not_a_persons_line_are_refused() {
    let cfg = "[limits]\ncountries = [\"US\", \"GB\", \"CH\"]\nper_number_per_hour = 0\n";
    let (_, router) = api(config_with(cfg)).await;
    for (number, kind) in [
        ("+447011234567", "personal-number"),
        ("+447623456789", "pager"),
        ("+445512345678", "uan"),
        ("+445612345678", "voip"),
        ("+41860123456789", "voicemail"),
        ("+19002345678", "premium-rate"),
        ("+448431234567", "premium-rate"),
        ("+448001234567", "toll-free"),
        ("+41840123456", "shared-cost"),
    ] {
        let r = refused(
            &router,
            &num(number),
            StatusCode::UNPROCESSABLE_ENTITY,
            "number_type_not_allowed",
        )
        .await;
        assert!(r.message().contains(kind), "{number}: {}", r.text);
    }
    // A number of no known type is not valid in its plan: refused before its type is asked.
    refused(
        &router,
        &num("+4420812345678"),
        StatusCode::BAD_REQUEST,
        "invalid_phone_number",
    )
    .await;
    // Mobile and fixed lines pass.
    for number in ["+447400123456", "+441234567890", "+12015550123"] {
        assert_eq!(
            post(&router, &num(number)).await.status,
            StatusCode::CREATED,
            "{number}"
        );
    }
    // The list is the operator's: VoIP allowed here; premium-rate never.
    let (_, router) = api(config_with(&format!(
        "{cfg}refused_number_types = [\"pager\"]\n"
    )))
    .await;
    assert_eq!(
        post(&router, &num("+445612345678")).await.status,
        StatusCode::CREATED
    );
    refused(
        &router,
        &num("+448431234567"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "number_type_not_allowed",
    )
    .await;
}

/// Posts `body` and expects a 429 naming `what`, with a Retry-After within `retry`.
async fn capped(
    router: &axum::Router,
    body: &str,
    what: &str,
    retry: std::ops::RangeInclusive<u64>,
) {
    let r = post(router, body).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "{body}: {}",
        r.text
    );
    assert!(r.message().contains(what), "{}", r.text);
    let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry.contains(&after), "{what}: Retry-After {after}");
}

#[tokio::test]
async fn hourly_and_daily_caps_answer_429_with_retry_after() {
    // Global per hour.
    let (_, router) = api(config_with("[limits]\nglobal_per_hour = 2\n")).await;
    for n in ["+12015550101", "+12015550102"] {
        assert_eq!(post(&router, &num(n)).await.status, StatusCode::CREATED);
    }
    capped(
        &router,
        &num("+12015550103"),
        "per hour (all clients)",
        3500..=3600,
    )
    .await;
    // The other client is held by the global cap too.
    let r = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(OTHER_KEY),
        &[],
        Some(&num("+12015550104")),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);

    // Per client per day: one client stopped, the other goes on.
    let (_, router) = api(config_with("[limits]\nper_client_per_day = 2\n")).await;
    for n in ["+12015550101", "+12015550102"] {
        assert_eq!(post(&router, &num(n)).await.status, StatusCode::CREATED);
    }
    capped(
        &router,
        &num("+12015550103"),
        "client's verifications per day",
        86_000..=86_400,
    )
    .await;
    let r = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(OTHER_KEY),
        &[],
        Some(&num("+12015550104")),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // A client's own hourly limit overrides the default.
    let mut cfg = config();
    cfg.api.clients[0].rate_per_hour = 1;
    let (_, router) = api(cfg).await;
    assert_eq!(
        post(&router, &num("+12015550101")).await.status,
        StatusCode::CREATED
    );
    capped(
        &router,
        &num("+12015550102"),
        "client's verifications per hour",
        3500..=3600,
    )
    .await;

    // Per country per hour: GB stopped, US not.
    let (_, router) = api(config_with("[limits]\nper_country_per_hour = 1\n")).await;
    assert_eq!(
        post(&router, &num("+447400123456")).await.status,
        StatusCode::CREATED
    );
    capped(
        &router,
        &num("+447400123457"),
        "to this country per hour",
        3500..=3600,
    )
    .await;
    assert_eq!(
        post(&router, &num("+12015550101")).await.status,
        StatusCode::CREATED
    );

    // Per country per day, per number per day.
    let (_, router) = api(config_with(
        "[limits]\nper_country_per_day = 1\nper_number_per_day = 5\n",
    ))
    .await;
    assert_eq!(
        post(&router, &num("+447400123456")).await.status,
        StatusCode::CREATED
    );
    capped(
        &router,
        &num("+447400123457"),
        "to this country per day",
        86_000..=86_400,
    )
    .await;
    let (_, router) = api(config_with(
        "[limits]\nper_number_per_day = 1\nduplicate = \"queue\"\n",
    ))
    .await;
    assert_eq!(
        post(&router, &num(US_NUMBER)).await.status,
        StatusCode::CREATED
    );
    capped(
        &router,
        &num(US_NUMBER),
        "phone number per day",
        86_000..=86_400,
    )
    .await;
}

#[tokio::test]
async fn replays_and_joins_count_nothing_and_refusals_store_nothing() {
    let (state, router) = api(config_with("[limits]\nglobal_per_hour = 1\n")).await;
    let idem = [("idempotency-key", "login-1")];
    let first = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(KEY),
        &idem,
        Some(&num(US_NUMBER)),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    // The cap is reached, but a replay of the same request is not a new verification.
    let again = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(KEY),
        &idem,
        Some(&num(US_NUMBER)),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    // Nor is joining the open verification of the same number.
    let joined = post(&router, &num(US_NUMBER)).await;
    assert_eq!(joined.status, StatusCode::OK, "{}", joined.text);
    assert_eq!(joined.json["id"], first.json["id"]);
    let r = post(&router, &num("+12015550199")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(state.store.queue_depth().await.unwrap(), 1);
}

#[tokio::test]
async fn sip_uri_spellings_of_one_line_share_its_limits_and_its_one_call() {
    let (state, router) = api(config_with(
        "[sip]\nallow_sip_uris = true\n[limits]\nsip_uri_hosts = [\"pbx.example.com\"]\n\
         per_number_per_hour = 2\nduplicate = \"queue\"\n",
    ))
    .await;
    for uri in [
        "sip:alice@pbx.example.com",
        "SIP:alice@PBX.EXAMPLE.COM:5060;transport=udp",
    ] {
        assert_eq!(post(&router, &num(uri)).await.status, StatusCode::CREATED);
    }
    capped(
        &router,
        &num("sip:%61lice@pbx.example.com."),
        "phone number per hour",
        3500..=3600,
    )
    .await;
    // Both spellings queue on one line: the dialer never calls it twice at once.
    let placer = ScriptedPlacer::new(Script::Held(CallResult::Confirmed));
    let (stop, dialer) = spawn_dialer(&state, placer.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(placer.placed(), 1, "the second waits for the line");
    placer.release.add_permits(2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while placer.placed() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
async fn queued_verifications_expire_with_a_webhook() {
    let rx = Receiver::start(vec![Answer::Status(200)]).await;
    let mut cfg = config_with("[limits]\nqueue_ttl_secs = 1\n");
    cfg.sip.channels = 1;
    let (state, router) = api(cfg).await;
    // One channel, held by a call that never ends: the second verification stays queued.
    let placer = ScriptedPlacer::new(Script::UntilCancelled);
    let (stop, dialer) = spawn_dialer(&state, placer.clone());
    let with_hook = |n: &str| format!(r#"{{"phone_number":"{n}","callback_url":"{}"}}"#, rx.url());
    let busy = post(&router, &with_hook("+12015550101")).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while placer.placed() < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waiting = post(&router, &with_hook("+12015550102")).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = get(&router, &format!("{waiting}?wait=10")).await;
    assert_eq!(
        (r.json["status"].as_str(), r.json["result"].as_str()),
        (Some("completed"), Some("expired")),
        "{}",
        r.text
    );
    assert_eq!(r.json["approved"], false);
    assert!(r.text.contains(r#""timer":"queue""#), "{}", r.text);
    assert_eq!(
        placer.placed(),
        1,
        "an expired verification is never called"
    );
    // Its webhook goes out from the outbox.
    let worker = callverify::webhook::OutboxWorker::new(
        &state.config,
        std::sync::Arc::clone(&state.store),
        std::sync::Arc::clone(&state.metrics),
    )
    .unwrap();
    let delivery = worker
        .try_deliver(callverify::store::now_ms())
        .await
        .unwrap();
    assert!(
        matches!(delivery, callverify::webhook::Delivery::Delivered { .. }),
        "{delivery:?}"
    );
    assert!(rx.wait_for(1, Duration::from_secs(5)).await);
    let body: serde_json::Value =
        serde_json::from_slice(&rx.received.lock().unwrap()[0].body).unwrap();
    assert_eq!(body["data"]["id"], waiting.as_str());
    assert_eq!(body["data"]["result"], "expired");
    assert_eq!(state.metrics.calls(CallResult::Expired), 1);
    // The call in progress is not touched by expiry.
    assert_eq!(get(&router, &busy).await.json["status"], "in_call");
    state
        .dialer
        .hang_up(&callverify::store::VerificationId::parse(&busy).unwrap());
    let r = get(&router, &format!("{busy}?wait=10")).await;
    assert_eq!(r.json["result"], "cancelled", "{}", r.text);
    stop.cancel();
    dialer.await.unwrap();
}

#[tokio::test]
async fn caps_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_with("[limits]\nper_number_per_hour = 2\nduplicate = \"queue\"\n");
    cfg.store.url = callverify::config::Secret::new(format!(
        "sqlite://{}",
        dir.path().join("caps.db").display()
    ));
    let open = || async {
        callverify::store::open(
            &cfg.store,
            callverify::webhook::payload,
            callverify::store::InstanceId::generate(),
        )
        .await
        .unwrap()
    };
    {
        let state = callverify::api::AppState::new(cfg.clone(), open().await, test_key()).unwrap();
        let router = callverify::api::app(state);
        for _ in 0..2 {
            assert_eq!(
                post(&router, &num(US_NUMBER)).await.status,
                StatusCode::CREATED
            );
        }
    }
    // A new process over the same file: the two calls of the last hour still count.
    let state = callverify::api::AppState::new(cfg.clone(), open().await, test_key()).unwrap();
    let router = callverify::api::app(state);
    capped(
        &router,
        &num(US_NUMBER),
        "phone number per hour",
        3500..=3600,
    )
    .await;
    assert_eq!(
        post(&router, &num("+12015550199")).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn metrics_need_the_metrics_key_unless_public() {
    let metrics = |router: &axum::Router, key: Option<&'static str>| {
        let router = router.clone();
        async move { send(&router, Method::GET, "/metrics", key, &[], None).await }
    };
    let with = |public: bool, key: Option<&str>| {
        let mut cfg = config();
        cfg.api.metrics_public = public;
        cfg.api.metrics_key = key.map(callverify::config::Secret::new);
        cfg.validate().expect("valid");
        cfg
    };
    // No key configured, not public: nobody reads them, not even an API client.
    let (_, router) = api(with(false, None)).await;
    let r = metrics(&router, None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert!(r.message().contains("api.metrics_key"), "{}", r.text);
    assert_eq!(
        metrics(&router, Some(KEY)).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A key: only that key.
    let (_, router) = api(with(false, Some("scrape-key-0123456789"))).await;
    assert_eq!(
        metrics(&router, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        metrics(&router, Some(KEY)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        metrics(&router, Some("scrape-key-012345678")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = metrics(&router, Some("scrape-key-0123456789")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.text.contains("callverify_calls_total"));
    // Public: open.
    let (_, router) = api(with(true, None)).await;
    assert_eq!(metrics(&router, None).await.status, StatusCode::OK);
    // Both at once is a configuration error.
    let both = callverify::config::Config::from_toml(
        "[api]\nmetrics_public = true\nmetrics_key = \"scrape-key-0123456789\"\n",
        std::path::Path::new("x.toml"),
        Vec::new(),
    );
    assert!(
        both.unwrap_err().to_string().contains("api.metrics_public"),
        "both"
    );
}
