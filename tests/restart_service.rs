//! Restarts: queued work and undelivered webhooks survive a crash of the whole service; a
//! graceful shutdown settles calls in flight; the `serve` binary stops on SIGTERM and comes
//! back with its data.

mod api_support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api_support::*;
use axum::http::{Method, StatusCode};
use callverify::api::app;
use callverify::config::Config;
use callverify::service::Service;
use callverify::store::Recovery;
use flow::CallResult;

fn file_config(dir: &std::path::Path) -> Config {
    let mut cfg = config_with("[limits]\nduplicate = \"queue\"\n");
    cfg.store.url = callverify::config::Secret::new(format!(
        "sqlite://{}",
        dir.join("callverify.db").display()
    ));
    cfg.sip.channels = 1;
    cfg.webhook.initial_backoff_secs = 1;
    cfg
}

async fn wait_status(router: &axum::Router, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(router, id).await;
        if r.json["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {status}: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn results(rx: &Receiver) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in rx.received.lock().unwrap().iter() {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        out.entry(body["data"]["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(body["data"]["result"].as_str().unwrap().to_owned());
    }
    out
}

#[test]
fn queued_work_and_undelivered_webhooks_survive_a_crash() {
    // The receiver lives on its own runtime, across both lives of the service.
    let receiver_rt = tokio::runtime::Runtime::new().unwrap();
    let rx = receiver_rt.block_on(Receiver::start(vec![Answer::Status(503)]));
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path());
    let callback = |n: &str| format!(r#"{{"phone_number":"{n}","callback_url":"{}"}}"#, rx.url());

    // First life: one call up (held), one queued behind it, one cancelled whose webhook fails.
    let first = tokio::runtime::Runtime::new().unwrap();
    let (a, b, c) = first.block_on(async {
        let placer = ScriptedPlacer::new(Script::UntilCancelled);
        let service = Service::open(cfg.clone(), placer).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = service.start_on(listener).await.unwrap();
        let router = app(running.state().clone());
        let a = post(&router, &callback("+12015550101")).await.json["id"]
            .as_str()
            .unwrap()
            .to_owned();
        wait_status(&router, &a, "in_call").await;
        let b = post(&router, &callback("+12015550102")).await.json["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let c = post(&router, &callback("+12015550103")).await.json["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            get(&router, &b).await.json["status"],
            "queued",
            "one channel, busy"
        );
        let d = send(
            &router,
            Method::DELETE,
            &format!("/v1/verifications/{c}"),
            Some(KEY),
            &[],
            None,
        )
        .await;
        assert_eq!(d.status, StatusCode::OK);
        assert!(
            rx.wait_for(1, Duration::from_secs(10)).await,
            "the cancellation webhook was tried"
        );
        // Crash only once the failed attempt is on record (a crash mid-attempt leaves it
        // leased, which recovery releases; this test wants the plain pending case).
        let cid = callverify::store::VerificationId::parse(&c).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while running.state().store.outbox(&cid).await.unwrap()[0]
            .attempts
            .is_empty()
        {
            assert!(Instant::now() < deadline, "the attempt was never recorded");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::mem::forget(running); // crash: nothing is shut down or flushed
        (a, b, c)
    });
    first.shutdown_timeout(Duration::from_secs(1));
    assert_eq!(
        results(&rx)[&c],
        vec!["cancelled"],
        "tried once, answered 503"
    );

    // Second life: the receiver is back; a phone that confirms.
    rx.set_answers(vec![Answer::Status(200)]);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let placer = ScriptedPlacer::new(Script::Immediate(CallResult::Confirmed));
        let service = Service::open(cfg.clone(), placer.clone()).await.unwrap();
        assert_eq!(
            *service.recovery(),
            Recovery {
                calls_failed: 1,
                webhooks_released: 0,
                queued: 1
            }
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = service.start_on(listener).await.unwrap();
        let router = app(running.state().clone());
        let rb = get(&router, &format!("{b}?wait=10")).await;
        assert_eq!(
            rb.json["result"], "confirmed",
            "queued work survived: {}",
            rb.text
        );
        let ra = get(&router, &a).await;
        assert_eq!(
            ra.json["result"], "failed",
            "the call in flight at the crash: {}",
            ra.text
        );
        assert!(
            rx.wait_for(4, Duration::from_secs(15)).await,
            "webhooks after restart"
        );
        let got = results(&rx);
        assert_eq!(got[&a], vec!["failed"]);
        assert_eq!(got[&b], vec!["confirmed"]);
        assert_eq!(
            got[&c],
            vec!["cancelled", "cancelled"],
            "the undelivered webhook arrived"
        );
        assert_eq!(placer.placed(), 1);
        running.shutdown().await.unwrap();
    });
}

#[tokio::test]
async fn graceful_shutdown_hangs_up_calls_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = file_config(dir.path());
    cfg.api.shutdown_grace_secs = 0;
    let placer = ScriptedPlacer::new(Script::UntilCancelled);
    let service = Service::open(cfg.clone(), placer).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = service.start_on(listener).await.unwrap();
    let router = app(running.state().clone());
    let id = post(
        &router,
        r#"{"phone_number":"+12015550101","callback_url":"https://auth.example.com/h"}"#,
    )
    .await
    .json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_status(&router, &id, "in_call").await;
    // A long-poll in progress answers at shutdown instead of holding it up.
    let poll = {
        let router = router.clone();
        let id = id.clone();
        tokio::spawn(async move { get(&router, &format!("{id}?wait=30")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    running.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(poll.await.unwrap().status, StatusCode::OK);

    let placer = ScriptedPlacer::new(Script::Immediate(CallResult::Confirmed));
    let service = Service::open(cfg, placer).await.unwrap();
    assert_eq!(
        service.recovery().calls_failed,
        0,
        "settled at shutdown, not left to recovery"
    );
    let router = app(service.state().clone());
    let r = get(&router, &id).await;
    assert_eq!(
        r.json["result"], "failed",
        "hung up by our shutdown: {}",
        r.text
    );
    let outbox = service
        .state()
        .store
        .outbox(&callverify::store::VerificationId::parse(&id).unwrap())
        .await
        .unwrap();
    assert_eq!(outbox.len(), 1, "its webhook is queued for the next start");
}

/// A running `callverify serve` child, killed if the test panics.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_serve(config: &std::path::Path, base: &str) -> Serve {
    let child = Command::new(env!("CARGO_BIN_EXE_callverify"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let serve = Serve(child);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status() == 200
        {
            return serve;
        }
        assert!(Instant::now() < deadline, "serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sigterm_and_wait(mut serve: Serve) {
    let pid = serve.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = serve.0.try_wait().unwrap() {
            assert!(status.success(), "serve exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_serve_binary_stops_on_sigterm_and_restarts_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("callverify.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[api]
listen = "127.0.0.1:{port}"
[[api.clients]]
name = "auth"
key = "{KEY}"
[sip]
listen = "127.0.0.1:0"
# Nobody answers there: with T1 = 20 ms Timer B ends the call as unreachable in 1.3 s.
trunk = "sip:127.0.0.1:9"
t1_ms = 20
[store]
url = "sqlite://{db}"
[limits]
countries = ["US"]
"#,
            db = dir.path().join("serve.db").display()
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let serve = start_serve(&config, &base).await;
    let created: serde_json::Value = http
        .post(format!("{base}/v1/verifications"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(format!(r#"{{"phone_number":"{US_NUMBER}"}}"#))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let done: serde_json::Value = http
        .get(format!("{base}/v1/verifications/{id}?wait=20"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    sigterm_and_wait(serve).await;

    let serve = start_serve(&config, &base).await;
    let again: serde_json::Value = http
        .get(format!("{base}/v1/verifications/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(again["status"], "completed");
    assert_eq!(again["result"], done["result"]);
    assert_eq!(again["timeline"], done["timeline"]);
    sigterm_and_wait(serve).await;
}
