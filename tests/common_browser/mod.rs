//! A headless Chromium driven over WebDriver (chromedriver) for the page tests: sessions,
//! navigation, elements, scripts, waits and screenshots.
#![allow(dead_code)] // each test crate uses its own part

use std::net::{TcpListener as StdListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::common_peers::{Peer, Work};

pub const SEEN: Duration = Duration::from_secs(40);

/// The W3C WebDriver element key.
pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver session over plain HTTP.
pub struct Browser {
    http: reqwest::Client,
    /// `(environment variable, folder under target/)` of the screenshots.
    shots: (&'static str, &'static str),
    base: String,
    session: String,
    _driver: Peer,
}

impl Browser {
    /// Chromedriver on the first free port of `ports`, one headless Chromium session;
    /// screenshots go to `$<shots.0>` or `target/<shots.1>`.
    pub async fn start(
        work: &Work,
        ports: std::ops::RangeInclusive<u16>,
        shots: (&'static str, &'static str),
    ) -> Browser {
        let port = ports
            .clone()
            .find(|p| StdListener::bind(("127.0.0.1", *p)).is_ok())
            .unwrap_or_else(|| panic!("a free chromedriver port in {ports:?}"));
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
            shots,
            base,
            session,
            _driver: driver,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    pub async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        request(&self.http, method, &self.url(path), body).await["value"].clone()
    }

    pub async fn go(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub async fn current_url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn script(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    pub async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    pub async fn text(&self, css: &str) -> String {
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

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        let dir = std::env::var_os(self.shots.0)
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("target")
                    .join(self.shots.1)
            });
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        path
    }

    /// Waits until `ok(current url)`.
    pub async fn wait_url(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
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

    /// Waits until `script` (returning a string) returns something `ok` accepts.
    pub async fn wait_for(&self, what: &str, script: &str, ok: impl Fn(&str) -> bool) -> String {
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

    pub async fn quit(&self) {
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
