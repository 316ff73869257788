//! `callverify call` against sipp as the callee on 127.0.0.1: every outcome a trunk or a
//! phone can produce, and the DTMF method that carried the keys.
//!
//! Ports: sipp SIP 25200+n, sipp RTP 26200+10n, our RTP 40000+20n (n: the test's number).

mod common_peers;

use std::time::Duration;

use common_peers::*;

fn uri(port: u16) -> String {
    format!("sip:peer@127.0.0.1:{port}")
}

/// Keys as RFC 4733 pcaps for uas_keys_rfc4733.xml.
fn pcaps(keys: &str) -> String {
    keys.chars()
        .map(|k| {
            let name = match k {
                '#' => "pound".to_string(),
                '*' => "star".to_string(),
                d => d.to_string(),
            };
            format!(
                "  <nop><action><exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_{name}.pcap\"/></action></nop>\n  <pause milliseconds=\"600\"/>\n"
            )
        })
        .collect()
}

fn sipp_exit_ok(peer: &mut Peer) {
    let status = peer.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "sipp: {status:?}\n{}",
        peer.log_text()
    );
}

#[test]
fn pound_inband_then_rfc4733_is_confirmed_inband() {
    let w = Work::new();
    w.pound_ulaw();
    let scenario = w.scenario("uas_pound.xml", &[]);
    let sipp = sipp_uas(&w, &scenario, 25200, 26200);
    let cfg = w.config(40000, "", "");
    let out = call(&[&uri(25200)], Some(&cfg), &[]);
    // In-band '#' comes first (the first tone falls in the guard time after answer, the
    // second counts); the RFC 4733 '#' after it arrives after the decision.
    out.assert_in(&w, "confirmed", Some("inband"));
    assert_eq!(out.events("digit").len(), 1, "{out:#?}");
    assert!(!out.events("bye_sent").is_empty());
    // Not sipp's exit status: the recipe only expects our BYE after its RFC 4733 replay, and
    // with short prompts our BYE can come first (sipp then counts an "unexpected BYE").
    drop(sipp);
}

#[test]
fn early_media_then_answer_confirmed_by_rfc4733() {
    let w = Work::new();
    let scenario = w.scenario("uas_early_rfc4733.xml", &[]);
    let mut sipp = sipp_uas(&w, &scenario, 25201, 26210);
    let cfg = w.config(40020, "", "");
    let out = call(&[&uri(25201)], Some(&cfg), &[]);
    out.assert_in(&w, "confirmed", Some("rfc4733"));
    assert!(
        out.events("provisional").iter().any(|e| e["code"] == 183),
        "{out:#?}"
    );
    sipp_exit_ok(&mut sipp);
}

fn refused(n: u16, status: &str, reason: &str, result: &str) {
    let w = Work::new();
    let scenario = w.scenario("uas_reject.xml", &[("STATUS", status), ("REASON", reason)]);
    let mut sipp = sipp_uas(&w, &scenario, 25200 + n, 26200 + 10 * n);
    let cfg = w.config(40000 + 20 * n, "", "");
    let out = call(&[&uri(25200 + n)], Some(&cfg), &[]);
    out.assert_in(&w, result, None);
    let code: u16 = status.parse().unwrap();
    assert!(
        out.events("rejected").iter().any(|e| e["code"] == code),
        "{out:#?}"
    );
    sipp_exit_ok(&mut sipp);
}

#[test]
fn busy_here_is_busy() {
    refused(2, "486", "Busy Here", "busy");
}

#[test]
fn busy_everywhere_is_busy() {
    refused(3, "600", "Busy Everywhere", "busy");
}

#[test]
fn decline_is_rejected() {
    refused(4, "603", "Decline", "rejected");
}

#[test]
fn not_found_is_unreachable() {
    refused(5, "404", "Not Found", "unreachable");
}

#[test]
fn service_unavailable_is_unreachable() {
    refused(6, "503", "Service Unavailable", "unreachable");
}

#[test]
fn temporarily_unavailable_is_no_answer() {
    refused(7, "480", "Temporarily Unavailable", "no_answer");
}

#[test]
fn ring_timeout_cancels_and_is_no_answer() {
    let w = Work::new();
    let scenario = w.scenario("uas_ring_forever.xml", &[]);
    let mut sipp = sipp_uas(&w, &scenario, 25208, 26280);
    let cfg = w.config(40160, "", "ring_timeout_secs = 3");
    let out = call(&[&uri(25208)], Some(&cfg), &[]);
    out.assert_in(&w, "no_answer", None);
    assert_eq!(out.events("cancel_sent").len(), 1, "{out:#?}");
    let at = out.events("cancel_sent")[0]["at_ms"].as_u64().unwrap();
    assert!((3000..5000).contains(&at), "{at}");
    sipp_exit_ok(&mut sipp);
}

#[test]
fn callee_hangs_up_before_confirming() {
    let w = Work::new();
    let scenario = w.scenario("uas_hangup.xml", &[]);
    let mut sipp = sipp_uas(&w, &scenario, 25209, 26290);
    let cfg = w.config(40180, "", "");
    let out = call(&[&uri(25209)], Some(&cfg), &[]);
    out.assert_in(&w, "hung_up", None);
    assert_eq!(out.events("bye_received").len(), 1, "{out:#?}");
    assert!(out.events("bye_sent").is_empty());
    sipp_exit_ok(&mut sipp);
}

#[test]
fn no_key_is_no_input_after_one_replay() {
    let w = Work::new();
    let scenario = w.scenario("uas_silent.xml", &[]);
    let mut sipp = sipp_uas(&w, &scenario, 25210, 26300);
    let cfg = w.config(40200, "", "response_timeout_secs = 2");
    let out = call(&[&uri(25210)], Some(&cfg), &[]);
    out.assert_in(&w, "no_input", None);
    let greetings = out
        .events("prompt_started")
        .iter()
        .filter(|e| e["prompt"] == "greeting")
        .count();
    assert_eq!(greetings, 2, "{out:#?}");
    sipp_exit_ok(&mut sipp);
}

fn keys_inband(n: u16, keys: &str, args: &[&str], result: &str) -> Outcome {
    let w = Work::new();
    w.keys_ulaw("keys.ulaw", keys);
    let scenario = w.scenario("uas_keys_inband.xml", &[]);
    let mut sipp = sipp_uas(&w, &scenario, 25200 + n, 26200 + 10 * n);
    let cfg = w.config(40000 + 20 * n, "", "");
    let target = uri(25200 + n);
    let mut all = vec![target.as_str()];
    all.extend_from_slice(args);
    let out = call(&all, Some(&cfg), &[]);
    out.assert_in(&w, result, Some("inband"));
    sipp_exit_ok(&mut sipp);
    out
}

fn keys_rfc4733(n: u16, keys: &str, args: &[&str], result: &str) -> Outcome {
    let w = Work::new();
    let scenario = w.scenario("uas_keys_rfc4733.xml", &[("KEYS", &pcaps(keys))]);
    let mut sipp = sipp_uas(&w, &scenario, 25200 + n, 26200 + 10 * n);
    let cfg = w.config(40000 + 20 * n, "", "");
    let target = uri(25200 + n);
    let mut all = vec![target.as_str()];
    all.extend_from_slice(args);
    let out = call(&all, Some(&cfg), &[]);
    out.assert_in(&w, result, Some("rfc4733"));
    sipp_exit_ok(&mut sipp);
    out
}

#[test]
fn fraud_code_inband() {
    keys_inband(11, "0#", &[], "fraud_reported");
}

#[test]
fn fraud_code_rfc4733() {
    let out = keys_rfc4733(12, "0#", &[], "fraud_reported");
    assert!(
        out.events("prompt_started")
            .iter()
            .any(|e| e["prompt"] == "fraud-ack"),
        "{out:#?}"
    );
}

#[test]
fn wrong_pin_is_wrong_digits() {
    let out = keys_inband(
        13,
        "1243#",
        &["--mode", "pin", "--pin", "1234"],
        "wrong_digits",
    );
    assert!(!out.stdout.contains("1243") && !out.stderr.contains("1243"));
}

#[test]
fn right_pin_is_confirmed_and_never_shown() {
    let out = keys_inband(
        14,
        "1234#",
        &["--mode", "pin", "--pin", "1234"],
        "confirmed",
    );
    assert!(!out.stdout.contains("1234"), "{}", out.stdout);
    assert!(!out.stderr.contains("1234"), "{}", out.stderr);
    let digits: Vec<&str> = out
        .events("digit")
        .iter()
        .map(|e| e["digit"].as_str().unwrap())
        .collect();
    assert_eq!(digits, ["*", "*", "*", "*", "#"]);
}

#[test]
fn challenge_digits_by_rfc4733() {
    keys_rfc4733(
        15,
        "57#",
        &["--mode", "challenge", "--digits", "57"],
        "confirmed",
    );
}

#[test]
fn digits_but_no_pound_is_incomplete_input() {
    keys_inband(
        16,
        "12",
        &["--mode", "pin", "--pin", "1234"],
        "incomplete_input",
    );
}

#[test]
fn phone_number_through_the_trunk_without_a_config_file() {
    let w = Work::new();
    w.pound_ulaw();
    let scenario = w.scenario("uas_pound.xml", &[]);
    let mut sipp = sipp_uas(&w, &scenario, 25217, 26370);
    let trunk = "sip:127.0.0.1:25217";
    let out = call(&["+14255550123", "--trunk", trunk], None, &[]);
    out.assert_in(&w, "confirmed", Some("inband"));
    // sipp writes its message trace as it goes; give it a moment to finish (see above for
    // why its exit status is not checked with this recipe).
    let _ = sipp.wait_exit(Duration::from_secs(5));
    let messages = std::fs::read_dir(w.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().ends_with("_messages.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .unwrap_or_default();
    assert!(
        messages.contains("INVITE sip:+14255550123@127.0.0.1:25217;user=phone SIP/2.0"),
        "{messages}"
    );
}

#[test]
fn nobody_there_is_unreachable() {
    // Nothing listens on 25218: no response at all within the ring time.
    let w = Work::new();
    let cfg = w.config(40360, "", "ring_timeout_secs = 2");
    let out = call(&[&uri(25218)], Some(&cfg), &[]);
    out.assert_in(&w, "unreachable", None);
    // Timer B with a short T1 (64 × 20 ms) comes before the ring timeout.
    let cfg = w.config(40360, "t1_ms = 20", "");
    let out = call(&[&uri(25218)], Some(&cfg), &[]);
    out.assert_in(&w, "unreachable", None);
    assert_eq!(out.events("no_response").len(), 1, "{out:#?}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["12345"],
        vec!["sip:peer@127.0.0.1:5060", "--mode", "pin"],
        vec!["sip:peer@127.0.0.1:5060", "--pin", "1234"],
        vec!["sip:peer@127.0.0.1:5060", "--extension", "12x"],
        vec!["+14255550123"],
        vec!["sip:peer@127.0.0.1:5060", "--trunk", "http://x"],
    ] {
        let out = call(&args, None, &[]);
        assert_eq!(out.code, 2, "{args:?}: {out:#?}");
    }
}

#[test]
fn sip_over_tcp() {
    let w = Work::new();
    let scenario = w.scenario("uas_keys_rfc4733.xml", &[("KEYS", &pcaps("#"))]);
    let mut cmd = std::process::Command::new("sipp");
    cmd.arg("-sf")
        .arg(&scenario)
        .args(["-t", "t1", "-i", "127.0.0.1", "-p", "25219", "-mp", "26390"])
        .args(["-m", "1", "-nostdin", "-trace_err", "-trace_msg"]);
    let _sipp = Peer::spawn("sipp", w.path(), &mut cmd);
    // sipp listens on TCP 25219: wait until it accepts.
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", 25219)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "sipp TCP never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cfg = w.config(40380, "", "");
    let out = call(&["sip:peer@127.0.0.1:25219;transport=tcp"], Some(&cfg), &[]);
    out.assert_in(&w, "confirmed", Some("rfc4733"));
    assert_eq!(out.events("bye_sent").len(), 1);
}

#[test]
fn callee_demanding_digest_auth() {
    let w = Work::new();
    let scenario = w.scenario("uas_auth_401.xml", &[("KEYS", &pcaps("#"))]);
    let mut sipp = sipp_uas(&w, &scenario, 25220, 26400);
    let cfg = w.config(40400, "username = \"verifier\"\npassword = \"s3cret\"", "");
    let out = call(&[&uri(25220)], Some(&cfg), &[]);
    out.assert_in(&w, "confirmed", Some("rfc4733"));
    let auth = out.events("authenticating");
    assert_eq!(auth.len(), 1, "{out:#?}");
    assert_eq!(auth[0]["code"], 401);
    sipp_exit_ok(&mut sipp);
}

#[test]
fn sip_info_application_dtmf() {
    let w = Work::new();
    let scenario = w.scenario("uas_info_dtmf.xml", &[]);
    let mut sipp = sipp_uas(&w, &scenario, 25221, 26410);
    let cfg = w.config(40420, "sip_info_dtmf = true", "");
    let out = call(&[&uri(25221)], Some(&cfg), &[]);
    out.assert_in(&w, "confirmed", Some("sip_info"));
    sipp_exit_ok(&mut sipp);
}
