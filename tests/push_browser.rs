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
mod common_peers;
mod push_support;

use std::net::{TcpListener as StdListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use api_support::*;
use base64::Engine as _;
use common_peers::{Peer, Work};
use serde_json::{Value, json};

/// How long the browser test waits for anything visible.
const SEEN: Duration = Duration::from_secs(40);

/// The W3C WebDriver element key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver session over plain HTTP.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: Peer,
}

impl Browser {
    async fn start(work: &Work) -> Browser {
        let port = (9531..=9540)
            .find(|p| StdListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free chromedriver port in 9531-9540");
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"));
        let driver = Peer::spawn("chromedriver", work.path(), &mut cmd);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=900,1000", "--lang=en-US"]
            }
        }}});
        let v = request(
            &http,
            reqwest::Method::POST,
            &format!("{base}/session"),
            Some(caps),
        )
        .await;
        let session = v["value"]["sessionId"]
            .as_str()
            .expect("session")
            .to_owned();
        Browser {
            http,
            base,
            session,
            _driver: driver,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        request(&self.http, method, &self.url(path), body).await["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn current_url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn script(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    async fn text(&self, css: &str) -> String {
        match self.find(css).await {
            Some(e) => self
                .cmd(reqwest::Method::GET, &format!("/element/{e}/text"), None)
                .await
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            None => String::new(),
        }
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        let dir = std::env::var_os("PUSH_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/push-screenshots")
            });
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        path
    }

    async fn quit(&self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

async fn request(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Value {
    let mut req = http.request(method, url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let bytes = resp.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

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

impl Browser {
    /// Waits until `script` (returning a string) returns something `ok` accepts.
    async fn wait_for(&self, what: &str, script: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let v = self.script(script).await;
            let s = v.as_str().unwrap_or_default().to_owned();
            if ok(&s) {
                return s;
            }
            assert!(start.elapsed() < SEEN, "{what}: still {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    let browser = Browser::start(&work).await;
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
