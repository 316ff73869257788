//! Crash recovery of a single instance on SQLite, with real processes: `serve` is killed
//! with SIGKILL while a call rings at a sipp callee; started again on the same file, it
//! completes that call as `failed` with `instance_lost` in the timeline and delivers its
//! webhook.
//!
//! Ports: sipp SIP 33060 (RTP 53690), serve SIP 33061, RTP 53600-53619.

mod api_support;
mod common_peers;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api_support::*;
use common_peers::{Work, sipp_uas};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn serve(config: &std::path::Path, base: &str) -> Serve {
    let child = Command::new(env!("CARGO_BIN_EXE_callverify"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let serve = Serve(child);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
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

async fn get_json(http: &reqwest::Client, url: String) -> serde_json::Value {
    let text = http
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ringing_at_a_sigkill_completes_as_instance_lost_after_restart() {
    let work = Work::new();
    let scenario = work.scenario("uas_ring_forever.xml", &[]);
    let _sipp = sipp_uas(&work, &scenario, 33060, 53690);
    let receiver = Receiver::start(vec![Answer::Status(200)]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let prompts = work.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    let config = work.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[api]
listen = "127.0.0.1:{port}"
[[api.clients]]
name = "auth"
key = "{KEY}"
webhook_secret = "{SECRET}"
callback_hosts = ["127.0.0.1"]
[sip]
listen = "127.0.0.1:33061"
allow_sip_uris = true
[media]
rtp_ports = "53600-53619"
prompts = "{prompts}"
[call]
ring_timeout_secs = 60
[store]
url = "sqlite://{db}"
[limits]
countries = ["US"]
[webhook]
allow_http = true
allow_private_networks = true
"#,
            prompts = prompts.display(),
            db = work.path().join("callverify.db").display(),
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let first = serve(&config, &base).await;
    let created: serde_json::Value = serde_json::from_str(
        &http
            .post(format!("{base}/v1/verifications"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"phone_number":"sip:peer@127.0.0.1:33060","callback_url":"{}"}}"#,
                receiver.url()
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_json(&http, format!("{base}/v1/verifications/{id}")).await["status"] != "ringing" {
        assert!(Instant::now() < deadline, "never rang");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut first = first;
    assert!(
        Command::new("kill")
            .args(["-KILL", &first.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let _ = first.0.wait();
    assert_eq!(receiver.count(), 0, "nothing was sent before the crash");

    let _second = serve(&config, &base).await;
    let v = get_json(&http, format!("{base}/v1/verifications/{id}")).await;
    assert_eq!(
        (&v["status"], &v["result"]),
        (&"completed".into(), &"failed".into()),
        "{v:#}"
    );
    let events: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"invite_sent"), "{events:?}");
    assert_eq!(&events[events.len() - 2..], ["instance_lost", "outcome"]);
    assert!(
        receiver.wait_for(1, Duration::from_secs(20)).await,
        "the webhook of the lost call is delivered"
    );
    let hook: serde_json::Value =
        serde_json::from_slice(&receiver.received.lock().unwrap()[0].body).unwrap();
    assert_eq!(hook["data"]["id"], id.as_str());
    assert_eq!(hook["data"]["result"], "failed");
}
