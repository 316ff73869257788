//! `callverify call` through Kamailio demanding proxy digest authentication (recipe in
//! ../shared/peers, tests/scenarios/kamailio-auth-proxy.cfg): MD5 and SHA-256 (RFC 8760)
//! challenges with qop=auth, Record-Route, and a sipp callee sending RFC 4733 `#` behind it.
//!
//! Ports: Kamailio 25320+n, sipp SIP 25340+n, sipp RTP 26500+10n, our RTP 40700+20n.

mod common_peers;

use common_peers::*;
use std::process::Command;

fn kamailio(work: &Work, port: u16, uas_port: u16, algorithm: Option<&str>) -> Peer {
    let cfg = work.scenario("kamailio-auth-proxy.cfg", &[]);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("127.0.0.1:25100", &format!("127.0.0.1:{port}"))
        .replace("sip:127.0.0.1:25060", &format!("sip:127.0.0.1:{uas_port}"));
    std::fs::write(&cfg, text).unwrap();
    let run = work.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let mut cmd = Command::new("kamailio");
    cmd.arg("-f").arg(&cfg);
    if let Some(alg) = algorithm {
        cmd.arg("-A").arg(format!("AUTH_ALG=\"{alg}\""));
    }
    cmd.args(["-DD", "-E", "-m", "64", "-M", "8", "-Y"])
        .arg(&run)
        .arg("-P")
        .arg(run.join("kamailio.pid"));
    let mut peer = Peer::spawn("kamailio", work.path(), &mut cmd);
    peer.wait_udp(port);
    peer
}

fn pound_rfc4733() -> String {
    "  <nop><action><exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_pound.pcap\"/></action></nop>\n  <pause milliseconds=\"600\"/>\n".to_string()
}

fn through_proxy(n: u16, algorithm: Option<&str>, password: &str) -> (Outcome, Peer, Work) {
    let w = Work::new();
    let (kport, uport) = (25320 + n, 25340 + n);
    let scenario = w.scenario("uas_keys_rfc4733.xml", &[("KEYS", &pound_rfc4733())]);
    let sipp = sipp_uas(&w, &scenario, uport, 26500 + 10 * n);
    let _proxy = kamailio(&w, kport, uport, algorithm);
    let sip = format!(
        "trunk = \"sip:127.0.0.1:{kport}\"\nusername = \"verifier\"\npassword = \"{password}\"\ncaller_id = \"+14255550100\""
    );
    let cfg = w.config(40700 + 20 * n, &sip, "");
    let out = call(&["+14255550123"], Some(&cfg), &[]);
    (out, sipp, w)
}

#[test]
fn kamailio_md5_digest() {
    let (out, _sipp, w) = through_proxy(0, None, "s3cret");
    out.assert_in(&w, "confirmed", Some("rfc4733"));
    let auth = out.events("authenticating");
    assert_eq!(auth.len(), 1, "{out:#?}");
    assert_eq!(auth[0]["code"], 407);
    assert_eq!(auth[0]["algorithm"], "MD5");
    assert!(!out.stderr.contains("s3cret") && !out.stdout.contains("s3cret"));
}

#[test]
fn kamailio_sha256_digest() {
    let (out, _sipp, w) = through_proxy(1, Some("SHA-256"), "s3cret");
    out.assert_in(&w, "confirmed", Some("rfc4733"));
    let auth = out.events("authenticating");
    assert_eq!(auth.len(), 1, "{out:#?}");
    assert_eq!(auth[0]["algorithm"], "SHA-256");
}

#[test]
fn kamailio_wrong_password_is_rejected_with_the_reason() {
    let (out, _sipp, w) = through_proxy(2, None, "wrong");
    out.assert_in(&w, "rejected", None);
    let failed = out.events("auth_failed");
    assert_eq!(failed.len(), 1, "{out:#?}");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("sip.password"),
        "{out:#?}"
    );
    assert!(!out.stderr.contains("wrong\""), "{}", out.stderr);
}
