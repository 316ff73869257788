//! The hosted sign-in page in a real browser: Debian's chromium driven by chromedriver over
//! W3C WebDriver (plain HTTP), against the service with the real SIP runtime calling a sipp
//! callee. First run: the page shows the call, its status changes live without a reload, the
//! callee presses `#`, and the browser lands on the auth server's return_url with a token that
//! Python's jwcrypto verifies against /v1/jwks.json. Second run: while the phone rings, "Use a
//! different verification option" → the authenticator app, and an oathtool code.
//!
//! Screenshots go to target/signin-screenshots/ (or $SIGNIN_SCREENSHOTS).
//! Ports: sipp SIP 34010/34011, sipp RTP 56100/56110, our RTP 56200-56219, chromedriver
//! 9521-9530 (the first free one).

mod api_support;
mod common_peers;
mod signin_support;

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_support::*;
use base64::Engine as _;
use common_peers::{Peer, Work, sipp_uas};
use serde_json::{Value, json};
use signin_support::{assert_accessible, oathtool, signing_pem, steady_now};

const SEAL: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
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
        let port = (9521..=9530)
            .find(|p| StdListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free chromedriver port in 9521-9530");
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

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        let dir = std::env::var_os("SIGNIN_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/signin-screenshots")
            });
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        path
    }

    /// Waits until `ok(current url)`.
    async fn wait_url(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let url = self.current_url().await;
            if ok(&url) {
                return url;
            }
            assert!(start.elapsed() < SEEN, "{what}: still at {url}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

/// The auth server's return_url receiver: records each `callverify_token`.
struct ReturnReceiver {
    addr: SocketAddr,
    tokens: Arc<Mutex<Vec<String>>>,
}

impl ReturnReceiver {
    async fn start() -> ReturnReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
        let t = Arc::clone(&tokens);
        let app = axum::Router::new().route(
            "/mfa/done",
            axum::routing::get(move |q: axum::extract::RawQuery| {
                let t = Arc::clone(&t);
                async move {
                    let token = url::form_urlencoded::parse(q.0.unwrap_or_default().as_bytes())
                        .find(|(k, _)| k == "callverify_token")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    t.lock().unwrap().push(token);
                    axum::response::Html(
                        "<!DOCTYPE html><html lang=\"en\"><title>App</title><h1>Signed in to the app</h1></html>",
                    )
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ReturnReceiver { addr, tokens }
    }

    fn url(&self) -> String {
        format!("http://{}/mfa/done?state=abc", self.addr)
    }
}

/// Verifies `token` with Python's jwcrypto against the service's JWKS; returns the claims.
fn jwcrypto_claims(jwks_url: &str, token: &str, audience: &str) -> Value {
    const VERIFY: &str = r#"
import json, sys, urllib.request
from jwcrypto import jwk, jwt
keys = jwk.JWKSet.from_json(urllib.request.urlopen(sys.argv[1]).read().decode())
tok = jwt.JWT(jwt=sys.argv[2], key=keys, algs=["EdDSA"],
              check_claims={"aud": sys.argv[3], "exp": None, "iat": None})
print(tok.claims)
"#;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let out = Command::new(&python)
        .args(["-c", VERIFY, jwks_url, token, audience])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "jwcrypto refused the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("claims are JSON")
}

struct Setup {
    base: String,
    service: callverify::service::Running,
    receiver: ReturnReceiver,
    http: reqwest::Client,
}

async fn start_service(work: &Work, receiver: ReturnReceiver) -> Setup {
    let prompts = work.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = config_with(&format!(
        "[sip]\nlisten = \"127.0.0.1:0\"\nallow_sip_uris = true\n\n\
         [media]\nrtp_ports = \"56200-56219\"\nprompts = \"{}\"\n\n\
         [call]\nring_timeout_secs = 30\nresponse_timeout_secs = 10\n\n\
         [methods]\nseal_key = \"{SEAL}\"\n\n\
         [signin]\npublic_url = \"http://{addr}\"\nsigning_key = '''{}'''\n",
        prompts.display(),
        signing_pem()
    ));
    config.api.clients[0].return_hosts = vec![receiver.addr.to_string()];
    let placer = callverify::runtime::call_placer(&config).expect("the SIP runtime starts");
    let service = callverify::service::Service::with_store(config, memory_store().await, placer)
        .await
        .unwrap()
        .start_on(listener)
        .await
        .unwrap();
    Setup {
        base: format!("http://{addr}"),
        service,
        receiver,
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

    async fn user(&self, external_id: &str, phone: &str) -> (String, String) {
        let user = self
            .api(
                reqwest::Method::POST,
                "/v1/users",
                Some(json!({"external_id": external_id})),
            )
            .await;
        let id = user["id"].as_str().unwrap().to_owned();
        let m = self
            .api(
                reqwest::Method::POST,
                &format!("/v1/users/{id}/methods"),
                Some(json!({"type": "phone", "phone_number": phone, "label": "mobile"})),
            )
            .await;
        (id, m["id"].as_str().unwrap().to_owned())
    }

    async fn hosted(&self, user: &str) -> (String, String) {
        let v = self
            .api(
                reqwest::Method::POST,
                "/v1/verifications",
                Some(json!({"user_id": user, "language": "en",
                            "hosted": {"return_url": self.receiver.url()}})),
            )
            .await;
        (
            v["id"].as_str().unwrap().to_owned(),
            v["prompt_url"].as_str().unwrap().to_owned(),
        )
    }
}

/// Watches the status line until `wanted` shows, collecting every text seen; asserts the page
/// never reloaded meanwhile (a marker set in the window survives).
async fn watch_status(browser: &Browser, wanted: &str, seen: &mut Vec<String>) {
    let start = Instant::now();
    loop {
        let text = browser.text("#status").await;
        if seen.last() != Some(&text) {
            seen.push(text.clone());
        }
        if text.contains(wanted) {
            let marker = browser.script("return window.__cvMarker === 42;").await;
            assert_eq!(
                marker,
                json!(true),
                "the page reloaded while the status changed: {seen:?}"
            );
            return;
        }
        assert!(start.elapsed() < SEEN, "never showed {wanted:?}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosted_prompt_in_chromium_call_then_switch_to_an_app_code() {
    let w = Work::new();
    let browser = Browser::start(&w).await;
    let setup = start_service(&w, ReturnReceiver::start().await).await;
    let jwks = format!("{}/v1/jwks.json", setup.base);

    // Run 1: the call. The callee rings 3 s, answers, listens 4 s, presses # (RFC 4733).
    let sipp_work = Work::new();
    let keys = "  <nop><action><exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_pound.pcap\"/></action></nop>\n  <pause milliseconds=\"600\"/>\n";
    let scenario = sipp_work.scenario(
        "uas_ring_keys_rfc4733.xml",
        &[("KEYS", keys), ("RING_MS", "3000"), ("LISTEN_MS", "4000")],
    );
    let _sipp = sipp_uas(&sipp_work, &scenario, 34010, 56100);
    let (user, phone) = setup
        .user("alice@example.com", "sip:alice23@127.0.0.1:34010")
        .await;
    let (id, prompt_url) = setup.hosted(&user).await;
    browser.go(&prompt_url).await;
    browser
        .wait_url("the link forwards to the page", |u| {
            u.contains("/prompt/s/")
        })
        .await;
    browser.script("window.__cvMarker = 42; return true;").await;
    let instructions = browser.text(".instructions").await;
    assert_eq!(
        instructions,
        "We're calling your phone ••• ••23. Answer it and press # to continue."
    );
    let html = browser
        .script("return document.documentElement.outerHTML;")
        .await;
    assert_accessible(html.as_str().unwrap());
    let mut seen = Vec::new();
    watch_status(&browser, "ringing", &mut seen).await;
    let ringing = browser.screenshot("1-phone-ringing").await;
    watch_status(&browser, "Press #", &mut seen).await;
    let answered = browser.screenshot("2-phone-answered").await;
    let landed = browser
        .wait_url("the page returns to the auth server", |u| {
            u.starts_with(&format!("http://{}/mfa/done", setup.receiver.addr))
        })
        .await;
    browser.screenshot("3-returned-to-app").await;
    assert!(
        landed.contains("state=abc") && landed.contains("callverify_token="),
        "{landed}"
    );
    let token = setup
        .receiver
        .tokens
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    let claims = jwcrypto_claims(&jwks, &token, "auth");
    assert_eq!(claims["verification_id"], id.as_str());
    assert_eq!(claims["user"], user.as_str());
    assert_eq!(claims["result"], "confirmed");
    assert_eq!(claims["approved"], true);
    assert_eq!(claims["method"], json!({"id": phone, "type": "phone"}));
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    assert!(
        seen.iter().any(|s| s.contains("ringing")) && seen.iter().any(|s| s.contains("Press #")),
        "{seen:?}"
    );
    eprintln!("run 1: statuses seen live {seen:?}; screenshots {ringing:?} {answered:?}");

    // Run 2: the phone rings forever; switch to the authenticator app and type its code.
    let ring_work = Work::new();
    let forever = ring_work.scenario("uas_ring_forever.xml", &[]);
    let mut ring_sipp = sipp_uas(&ring_work, &forever, 34011, 56110);
    let (user2, _phone2) = setup
        .user("bob@example.com", "sip:bob45@127.0.0.1:34011")
        .await;
    let enrolled = setup
        .api(
            reqwest::Method::POST,
            &format!("/v1/users/{user2}/methods"),
            Some(json!({"type": "app_code"})),
        )
        .await;
    let app = enrolled["id"].as_str().unwrap().to_owned();
    let uri = url::Url::parse(enrolled["otpauth_uri"].as_str().unwrap()).unwrap();
    let secret = uri
        .query_pairs()
        .find(|(k, _)| k == "secret")
        .unwrap()
        .1
        .into_owned();
    let now = steady_now().await;
    setup
        .api(
            reqwest::Method::POST,
            &format!("/v1/users/{user2}/methods/{app}/confirm"),
            Some(json!({"code": oathtool(&secret, now - 30)})),
        )
        .await;
    let (id2, prompt2) = setup.hosted(&user2).await;
    browser.go(&prompt2).await;
    browser
        .wait_url("the page", |u| u.contains("/prompt/s/"))
        .await;
    browser.script("window.__cvMarker = 42; return true;").await;
    let mut seen2 = Vec::new();
    watch_status(&browser, "ringing", &mut seen2).await;
    let alternates = browser.text(".alternates").await;
    assert!(
        alternates.contains("Use a different verification option"),
        "{alternates}"
    );
    assert!(
        alternates.contains("Use a code from my authenticator app"),
        "{alternates}"
    );
    browser.screenshot("4-ringing-with-alternates").await;
    browser.click(r#"button[data-method="app_code"]"#).await;
    let start = Instant::now();
    while browser.find("#code").await.is_none() {
        assert!(start.elapsed() < SEEN, "no code box after switching");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        browser
            .text(".instructions")
            .await
            .contains("authenticator app"),
        "{}",
        browser.text("main").await
    );
    let label = browser.text(r#"label[for="code"]"#).await;
    assert_eq!(label, "Verification code");
    let html = browser
        .script("return document.documentElement.outerHTML;")
        .await;
    assert_accessible(html.as_str().unwrap());
    // A wrong code first: the page says so and stays.
    let now = steady_now().await;
    let right = [
        oathtool(&secret, now - 30),
        oathtool(&secret, now),
        oathtool(&secret, now + 30),
    ];
    let wrong = ["000000", "111111", "222222"]
        .into_iter()
        .find(|c| !right.iter().any(|r| r == c))
        .unwrap();
    browser.type_into("#code", wrong).await;
    browser.click("form.code button").await;
    let start = Instant::now();
    while !browser.text("#notice").await.contains("didn't work") {
        assert!(start.elapsed() < SEEN, "no notice after a wrong code");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.screenshot("5-app-code-wrong").await;
    let now = steady_now().await;
    browser.type_into("#code", &oathtool(&secret, now)).await;
    browser.screenshot("6-app-code-typed").await;
    browser.click("form.code button").await;
    let landed = browser
        .wait_url("the page returns after the code", |u| {
            u.contains("/mfa/done")
        })
        .await;
    assert!(landed.contains("callverify_token="), "{landed}");
    let token = setup
        .receiver
        .tokens
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    let claims = jwcrypto_claims(&jwks, &token, "auth");
    assert_eq!(claims["verification_id"], id2.as_str());
    assert_eq!(claims["result"], "confirmed");
    assert_eq!(claims["method"], json!({"id": app, "type": "app_code"}));
    let record = setup
        .api(
            reqwest::Method::GET,
            &format!("/v1/verifications/{id2}"),
            None,
        )
        .await;
    let results: Vec<(&str, &str)> = record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["method"]["type"].as_str().unwrap(),
                a["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(results, [("phone", "cancelled"), ("app_code", "confirmed")]);
    assert_eq!(record["attempts"][1]["wrong_codes"], 1);
    // The ringing call was cancelled on the wire: sipp's ring-forever scenario completed.
    let status = tokio::task::spawn_blocking(move || {
        let s = ring_sipp.wait_exit(Duration::from_secs(15));
        (s, ring_sipp.log_text())
    })
    .await
    .unwrap();
    assert!(status.0.is_some_and(|s| s.success()), "{}", status.1);

    browser.quit().await;
    setup.service.shutdown().await.unwrap();
}
