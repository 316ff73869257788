//! A runtime of several shards (issue 9 item 1): calls placed at once spread over the shards
//! (the least-loaded one takes each), every one reaches a real sipp callee, which presses `#`
//! (RFC 4733), and every one ends `confirmed`. The shard that owns a call names itself in the
//! Call-ID it made up (`s<shard>-…`), so sipp's message log shows where the calls went.
//!
//! Ports: sipp SIP 25480, sipp RTP 26800.., our RTP 41200-41299.

mod common_peers;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use callverify::config::Config;
use callverify::runtime::{CallOrder, Runtime, RuntimeConfig};
use common_peers::{Peer, Work};
use flow::{CallResult, Mode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const CALLS: usize = 6;
const SHARDS: u32 = 3;
const SIPP_PORT: u16 = 25480;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_several_shards_all_complete() {
    let w = Work::new();
    let keys = "  <nop><action><exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_pound.pcap\"/></action></nop>\n  <pause milliseconds=\"600\"/>\n";
    let scenario = w.scenario("uas_keys_rfc4733.xml", &[("KEYS", keys)]);
    let mut cmd = Command::new("sipp");
    cmd.arg("-sf")
        .arg(&scenario)
        .args(["-i", "127.0.0.1", "-p", &SIPP_PORT.to_string()])
        .args(["-mp", "26800"])
        .args([
            "-m",
            &CALLS.to_string(),
            "-nostdin",
            "-trace_err",
            "-trace_msg",
        ])
        .arg("-pause_msg_ign");
    let mut sipp = Peer::spawn("sipp", w.path(), &mut cmd);
    sipp.wait_udp(SIPP_PORT);

    let prompts = w.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    let mut config = Config::default();
    config.sip.listen = "127.0.0.1:0".parse().unwrap();
    config.sip.shards = SHARDS;
    config.media.rtp_ports = "41200-41299".into();
    config.media.prompts = prompts;
    let runtime_config = RuntimeConfig::from_config(&config).unwrap();
    assert_eq!(runtime_config.shards, SHARDS as usize);
    let runtime = Runtime::start(runtime_config).unwrap();

    let calls = (0..CALLS).map(|i| {
        let runtime = runtime.clone();
        let order = CallOrder {
            destination: format!("sip:callee{i}@127.0.0.1:{SIPP_PORT}"),
            extension: None,
            mode: Mode::Standard,
            expected_digits: None,
            language: "en".into(),
            call: config.call.clone(),
        };
        tokio::spawn(async move {
            let (progress, _progress_rx) = mpsc::unbounded_channel();
            runtime
                .call(order, progress, CancellationToken::new())
                .await
        })
    });
    let calls: Vec<_> = calls.collect();
    // Six calls on three shards: every shard's timers on time, so calls keep being placed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lateness = runtime.timer_lateness();
    assert_eq!(lateness.len(), SHARDS as usize);
    assert!(runtime.has_capacity(), "timers late: {lateness:?}");
    for (i, call) in calls.into_iter().enumerate() {
        let report = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("the call ends")
            .unwrap();
        assert_eq!(
            report.result,
            CallResult::Confirmed,
            "call {i}: {:#?}\n{}",
            report.timeline,
            sipp.log_text()
        );
    }

    // Where the INVITEs came from: the shard each Call-ID names.
    let mut shards = BTreeSet::new();
    for entry in std::fs::read_dir(w.path()).unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .ends_with("_messages.log")
        {
            continue;
        }
        let log = std::fs::read_to_string(entry.path()).unwrap();
        for line in log.lines() {
            if let Some(id) = line.strip_prefix("Call-ID: ") {
                shards.insert(sip::route::shard_of(
                    format!("BYE x SIP/2.0\r\nCall-ID: {id}\r\n\r\n").as_bytes(),
                ));
            }
        }
    }
    assert!(
        !shards.contains(&None),
        "every Call-ID names its shard: {shards:?}"
    );
    assert_eq!(
        shards.len(),
        SHARDS as usize,
        "{CALLS} calls at once spread over every shard: {shards:?}"
    );
}
