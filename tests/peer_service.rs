//! The service with the real SIP runtime behind its dialer (`runtime_call_placer`): a
//! verification created through the API calls a sipp callee on 127.0.0.1 that presses `#`
//! (RFC 4733), and the stored outcome says `confirmed` by `rfc4733` with the call's timeline.
//! Also an API cancel while the phone rings: `cancelled`, with CANCEL on the wire.
//!
//! Ports: sipp SIP 25360+n, sipp RTP 26600+10n, our RTP 40800+20n.

mod api_support;
mod common_peers;

use std::time::{Duration, Instant};

use api_support::*;
use axum::http::Method;
use callverify::runtime::call_placer;
use common_peers::{Work, sipp_uas};

fn service_config(work: &Work, rtp_base: u16) -> callverify::config::Config {
    let prompts = work.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    config_with(&format!(
        "[sip]\nlisten = \"127.0.0.1:0\"\nallow_sip_uris = true\n\n\
         [limits]\nsip_uri_hosts = [\"127.0.0.1\"]\n\n\
         [media]\nrtp_ports = \"{rtp_base}-{}\"\nprompts = \"{}\"\n\n\
         [call]\nring_timeout_secs = 20\n",
        rtp_base + 19,
        prompts.display()
    ))
}

/// Polls until the verification is completed (or `limit` passes).
async fn completed(router: &axum::Router, id: &str, limit: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let r = get(router, &format!("{id}?wait=5")).await;
        if r.json["status"] == "completed" {
            return r.json;
        }
        assert!(start.elapsed() < limit, "not completed: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_through_the_api_is_confirmed_by_rfc4733() {
    let w = Work::new();
    let keys = "  <nop><action><exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_pound.pcap\"/></action></nop>\n  <pause milliseconds=\"600\"/>\n";
    let scenario = w.scenario("uas_keys_rfc4733.xml", &[("KEYS", keys)]);
    let _sipp = sipp_uas(&w, &scenario, 25360, 26600);
    let config = service_config(&w, 40800);
    let (state, router) = api(config.clone()).await;
    let placer = call_placer(&config).expect("the SIP runtime starts");
    let (stop, dialer) = spawn_dialer(&state, placer);
    let created = post(
        &router,
        r#"{"phone_number": "sip:peer@127.0.0.1:25360", "mode": "standard"}"#,
    )
    .await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_string();
    let v = completed(&router, &id, Duration::from_secs(60)).await;
    assert_eq!(v["result"], "confirmed", "{v:#}");
    assert_eq!(v["approved"], true, "{v:#}");
    assert_eq!(v["dtmf_method"], "rfc4733", "{v:#}");
    let text = v.to_string();
    for event in [
        "invite_sent",
        "answered",
        "prompt_started",
        "digit",
        "outcome",
    ] {
        assert!(text.contains(event), "{event} missing: {v:#}");
    }
    // The verdict came at the key: the closing prompt and the BYE are appended afterwards,
    // behind the outcome, without changing it.
    let start = Instant::now();
    let v = loop {
        let v = get(&router, &id).await.json;
        if v.to_string().contains("bye_sent") {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no BYE: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let events: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let outcome = events.iter().position(|e| *e == "outcome").unwrap();
    let bye = events.iter().position(|e| *e == "bye_sent").unwrap();
    assert!(outcome < bye, "{events:?}");
    assert_eq!(events.iter().filter(|e| **e == "outcome").count(), 1);
    assert_eq!(v["result"], "confirmed", "{v:#}");
    stop.cancel();
    let _ = dialer.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_cancel_while_ringing_sends_cancel() {
    let w = Work::new();
    let scenario = w.scenario("uas_ring_forever.xml", &[]);
    let mut sipp = sipp_uas(&w, &scenario, 25361, 26610);
    let config = service_config(&w, 40820);
    let (state, router) = api(config.clone()).await;
    let placer = call_placer(&config).expect("the SIP runtime starts");
    let (stop, dialer) = spawn_dialer(&state, placer);
    let created = post(&router, r#"{"phone_number": "sip:peer@127.0.0.1:25361"}"#).await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_string();
    // Wait until it rings, then cancel through the API.
    let start = Instant::now();
    loop {
        let r = get(&router, &id).await;
        if r.json["status"] == "ringing" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never rang: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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
    assert!(r.status.is_success(), "{}", r.text);
    let v = completed(&router, &id, Duration::from_secs(30)).await;
    assert_eq!(v["result"], "cancelled", "{v:#}");
    // sipp saw the CANCEL, answered 200 and 487, got the ACK: its scenario completed.
    let status = tokio::task::spawn_blocking(move || {
        let s = sipp.wait_exit(Duration::from_secs(10));
        (s, sipp.log_text())
    })
    .await
    .unwrap();
    assert!(status.0.is_some_and(|s| s.success()), "{}", status.1);
    stop.cancel();
    let _ = dialer.await;
}
