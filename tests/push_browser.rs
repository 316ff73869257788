//! The authenticator app in a real browser: Debian's chromium driven by chromedriver over W3C
//! WebDriver, against `serve` (the real service with its outbox and sweeper). The app opens
//! the enrolment link, makes its WebCrypto key (non-extractable, in IndexedDB) and registers;
//! a push verification arrives over its device-signed event stream; picking the number gives
//! a webhook `confirmed`; a second run denies (`denied`); a third picks a wrong number
//! (`wrong_digits`).
//!
//! Headless Chromium has no push service (no Firebase/Mozilla endpoint to reach), so the
//! browser enrols without a subscription and requests reach it over the live channel; Web Push
//! encryption and VAPID are checked against independent implementations in push_method.rs.
//! The service worker's push handler is not exercised here.
//!
//! Screenshots go to target/push-screenshots/ (or $PUSH_SCREENSHOTS). Ports: chromedriver
//! 9531-9540 (the first free one).

mod api_support;
mod common_browser;
mod common_peers;
mod push_support;

use std::time::{Duration, Instant};

use api_support::*;
use common_browser::{Browser, SEEN};
use common_peers::Work;
use serde_json::{Value, json};

struct Setup {
    base: String,
    _service: callverify::service::Running,
    http: reqwest::Client,
}

async fn start_service() -> Setup {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = config_with(&format!(
        "[sip]\nlisten = \"127.0.0.1:0\"\n\n[signin]\npublic_url = \"http://{addr}\"\n\n{}",
        push_support::push_config(60)
    ));
    let placer = callverify::runtime::call_placer(&config).expect("the SIP runtime starts");
    let service = callverify::service::Service::with_store(config, memory_store().await, placer)
        .await
        .unwrap()
        .start_on(listener)
        .await
        .unwrap();
    Setup {
        base: format!("http://{addr}"),
        _service: service,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(KEY);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }
}

/// The webhook of `id`, once delivered.
async fn webhook_result(hooks: &Receiver, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let found = hooks.received.lock().unwrap().iter().find_map(|r| {
            let v: Value = serde_json::from_slice(&r.body).ok()?;
            (v["data"]["id"] == id || v["id"] == id).then_some(v)
        });
        if let Some(v) = found {
            return v;
        }
        assert!(start.elapsed() < SEEN, "no webhook for {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authenticator_app_in_chromium_enrols_and_answers() {
    let work = Work::new();
    let setup = start_service().await;
    let hooks = Receiver::start(vec![Answer::Status(204)]).await;
    let user = setup
        .api(
            reqwest::Method::POST,
            "/v1/users",
            Some(json!({"external_id": "alice@example.com"})),
        )
        .await;
    let user = user["id"].as_str().unwrap().to_owned();
    let m = setup
        .api(
            reqwest::Method::POST,
            &format!("/v1/users/{user}/methods"),
            Some(json!({"type": "push", "label": "my phone"})),
        )
        .await;
    let method = m["id"].as_str().unwrap().to_owned();
    let link = m["enrol_url"].as_str().unwrap().to_owned();

    let browser =
        Browser::start(&work, 9531..=9540, ("PUSH_SCREENSHOTS", "push-screenshots")).await;
    browser.go(&link).await;
    browser
        .wait_for(
            "enrolled",
            "return document.getElementById('status').dataset.enrolled || ''",
            |s| s == "true",
        )
        .await;
    browser
        .wait_for(
            "listening",
            "return document.getElementById('status').textContent",
            |s| s.starts_with("Ready"),
        )
        .await;
    // The key is WebCrypto's, non-extractable, kept in IndexedDB; the link left the address bar.
    assert!(
        !browser.current_url().await.contains("enrol="),
        "the token is not kept in the URL"
    );
    let key = browser
        .cmd(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": "const done = arguments[0]; \
                const open = indexedDB.open('callverify-authenticator', 1); \
                open.onsuccess = () => { const r = open.result.transaction('device').objectStore('device').get('device'); \
                r.onsuccess = () => done(JSON.stringify({type: r.result.privateKey.type, \
                extractable: r.result.privateKey.extractable, alg: r.result.privateKey.algorithm.namedCurve, \
                method: r.result.methodId})); };", "args": []})),
        )
        .await;
    let key: Value = serde_json::from_str(key.as_str().unwrap()).unwrap();
    assert_eq!(
        key,
        json!({"type": "private", "extractable": false, "alg": "P-256", "method": method})
    );
    let active = setup
        .api(
            reqwest::Method::GET,
            &format!("/v1/users/{user}/methods/{method}"),
            None,
        )
        .await;
    assert_eq!(active["status"], "active");
    browser.screenshot("1-enrolled").await;

    for (run, expected) in [
        ("approve", "confirmed"),
        ("deny", "denied"),
        ("wrong", "wrong_digits"),
    ] {
        let v = setup
            .api(
                reqwest::Method::POST,
                "/v1/verifications",
                Some(json!({"user_id": user, "callback_url": hooks.url(),
                            "metadata": {"application": "Payroll", "location": "Lyon, FR"}})),
            )
            .await;
        let id = v["id"].as_str().unwrap().to_owned();
        let number = v["number"].as_u64().unwrap();
        browser
            .wait_for("the request", "return document.getElementById('request').hidden ? '' : document.getElementById('client').textContent", |s| s == "auth")
            .await;
        let shown = browser
            .script("return [...document.querySelectorAll('#choices button')].map(b => b.dataset.number).join(',')")
            .await;
        let shown: Vec<u64> = shown
            .as_str()
            .unwrap()
            .split(',')
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(shown.len(), 3);
        assert!(shown.contains(&number), "{shown:?} has {number}");
        let meta = browser.text("#metadata").await;
        assert!(
            meta.contains("Payroll") && meta.contains("Lyon, FR"),
            "{meta}"
        );
        browser.screenshot(&format!("2-request-{run}")).await;
        match run {
            "approve" => {
                browser
                    .click(&format!("#choices button[data-number='{number}']"))
                    .await
            }
            "deny" => browser.click("#deny").await,
            _ => {
                let wrong = shown.iter().find(|n| **n != number).unwrap();
                browser
                    .click(&format!("#choices button[data-number='{wrong}']"))
                    .await;
            }
        }
        browser
            .wait_for(
                "the answer",
                "return document.getElementById('result').dataset.result || ''",
                |s| s == expected,
            )
            .await;
        browser
            .script("document.getElementById('result').dataset.result = ''")
            .await;
        let hook = webhook_result(&hooks, &id).await;
        let text = hook.to_string();
        assert!(
            text.contains(&format!("\"result\":\"{expected}\"")),
            "{text}"
        );
        assert!(
            text.contains(&format!("\"approved\":{}", expected == "confirmed")),
            "{text}"
        );
        browser.screenshot(&format!("3-answered-{run}")).await;
    }
    browser.quit().await;
}
