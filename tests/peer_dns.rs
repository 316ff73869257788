//! Real trunks: `sip.trunk` as a domain served by dnsmasq on 127.0.0.1 (NAPTR → SRV → A,
//! RFC 3263), two sipp trunk servers on 127.0.0.1 and 127.0.0.2, the preferred one down or
//! out of service: the call fails over and completes. And behind 1:1 NAT, the external
//! addresses are what sipp receives in Via, Contact and SDP.
//!
//! Ports: dnsmasq 25753+n, sipp SIP 25760+n, sipp RTP 26760+10n, our RTP 40760+20n.

mod common_peers;

use std::process::Command;
use std::time::{Duration, Instant};

use common_peers::*;

const DOMAIN: &str = "trunk.test";

/// dnsmasq on 127.0.0.1:`port` serving `DOMAIN`: NAPTR to `_sip._udp`, whose SRV records
/// name a.trunk.test (127.0.0.1:`first`, priority 10) and b.trunk.test (127.0.0.2:`second`,
/// priority 20).
fn dnsmasq(work: &Work, port: u16, first: u16, second: u16) -> Peer {
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--pid-file=",
        "--log-facility=-",
        "--log-queries",
    ])
    .arg(format!("--port={port}"))
    .arg(format!(
        "--naptr-record={DOMAIN},10,50,S,SIP+D2U,,_sip._udp.{DOMAIN}"
    ))
    .arg(format!(
        "--srv-host=_sip._udp.{DOMAIN},a.{DOMAIN},{first},10,50"
    ))
    .arg(format!(
        "--srv-host=_sip._udp.{DOMAIN},b.{DOMAIN},{second},20,50"
    ))
    .arg(format!("--host-record=a.{DOMAIN},127.0.0.1"))
    .arg(format!("--host-record=b.{DOMAIN},127.0.0.2"));
    let mut peer = Peer::spawn("dnsmasq", work.path(), &mut cmd);
    peer.wait_udp(port);
    peer
}

/// sipp as a trunk server on `ip:port` (one call), logging every message it receives.
fn sipp_at(
    work: &Work,
    name: &str,
    scenario: &std::path::Path,
    ip: &str,
    port: u16,
    media: u16,
) -> Peer {
    let mut cmd = Command::new("sipp");
    cmd.arg("-sf")
        .arg(scenario)
        .args(["-i", ip, "-p", &port.to_string()])
        .args(["-mp", &media.to_string()])
        .args(["-m", "1", "-nostdin", "-trace_err", "-trace_msg"])
        .arg("-pause_msg_ign");
    let peer = Peer::spawn(name, work.path(), &mut cmd);
    let start = Instant::now();
    while !udp_bound(port) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{name} did not bind {ip}:{port}: {}",
            peer.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    peer
}

/// Every SIP message sipp logged with `-trace_msg` in `work` (its `*_messages.log`).
fn sipp_messages(work: &Work) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(work.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with("_messages.log") {
            out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    out
}

fn trunk_config(work: &Work, n: u16, dns_port: u16) -> std::path::PathBuf {
    work.config(
        40760 + 20 * n,
        &format!(
            "trunk = \"sip:{DOMAIN}\"\ndns_servers = [\"127.0.0.1:{dns_port}\"]\n\
             t1_ms = 100\ncaller_id = \"+14255550100\""
        ),
        "",
    )
}

#[test]
fn a_silent_first_srv_target_is_skipped_and_the_second_confirms() {
    let n = 0;
    let w = Work::new();
    w.pound_ulaw();
    let (first, second) = (25760 + n, 25761 + n);
    let dns = dnsmasq(&w, 25753 + n, first, second);
    // Nothing listens on 127.0.0.1:first (the higher-priority target is down).
    let scenario = w.scenario("uas_pound.xml", &[]);
    let sipp = sipp_at(&w, "sipp_b", &scenario, "127.0.0.2", second, 26760);
    let cfg = trunk_config(&w, n, 25753 + n);
    let out = call(&["+14255550123"], Some(&cfg), &[]);
    out.assert_in(&w, "confirmed", Some("inband"));
    let rerouted = out.events("rerouted");
    assert_eq!(rerouted.len(), 1, "{out:#?}");
    assert_eq!(
        rerouted[0]["from"],
        format!("127.0.0.1:{first}"),
        "{out:#?}"
    );
    assert_eq!(rerouted[0]["to"], format!("127.0.0.2:{second}"), "{out:#?}");
    assert_eq!(rerouted[0]["reason"], "no response", "{out:#?}");
    // The Request-URI names the domain, not an SRV target or port (RFC 3263 §4.2).
    let messages = sipp_messages(&w);
    assert!(
        messages.contains(&format!(
            "INVITE sip:+14255550123@{DOMAIN};user=phone SIP/2.0"
        )),
        "{messages}"
    );
    // Resolved through DNS as RFC 3263 §4.1 says: NAPTR, then SRV, then the targets' A.
    let queries = dns.log_text();
    for q in [
        format!("query[NAPTR] {DOMAIN}"),
        format!("query[SRV] _sip._udp.{DOMAIN}"),
        format!("query[A] b.{DOMAIN}"),
    ] {
        assert!(queries.contains(&q), "{q} not asked:\n{queries}");
    }
    drop(sipp);
}

#[test]
fn a_503_from_the_first_srv_target_moves_the_call_to_the_second() {
    let n = 2;
    let w = Work::new();
    w.pound_ulaw();
    let (first, second) = (25760 + n, 25761 + n);
    let _dns = dnsmasq(&w, 25753 + n, first, second);
    let unavailable = w.scenario("uas_unavailable.xml", &[]);
    let mut sipp_a = sipp_at(&w, "sipp_a", &unavailable, "127.0.0.1", first, 26780);
    let pound = w.scenario("uas_pound.xml", &[]);
    let sipp_b = sipp_at(&w, "sipp_b", &pound, "127.0.0.2", second, 26790);
    let cfg = trunk_config(&w, n, 25753 + n);
    let out = call(&["+14255550123"], Some(&cfg), &[]);
    out.assert_in(&w, "confirmed", Some("inband"));
    let rerouted = out.events("rerouted");
    assert_eq!(rerouted.len(), 1, "{out:#?}");
    assert_eq!(rerouted[0]["reason"], "status 503", "{out:#?}");
    assert_eq!(rerouted[0]["to"], format!("127.0.0.2:{second}"), "{out:#?}");
    // The out-of-service server got its ACK and ended its scenario cleanly.
    let status = sipp_a.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "sipp_a: {status:?}\n{}",
        sipp_a.log_text()
    );
    drop(sipp_b);
}

#[test]
fn behind_nat_the_external_addresses_are_advertised() {
    let n = 4;
    let w = Work::new();
    let scenario = w.scenario(
        "uas_reject.xml",
        &[("STATUS", "486"), ("REASON", "Busy Here")],
    );
    let port = 25760 + n;
    let sipp = sipp_at(&w, "sipp", &scenario, "127.0.0.1", port, 26800);
    let cfg = w.config(
        40760 + 20 * n,
        "external_address = \"203.0.113.7:5999\"",
        "ring_timeout_secs = 5",
    );
    // The media section of `Work::config` is replaced by the environment override.
    let out = call(
        &[&format!("sip:peer@127.0.0.1:{port}")],
        Some(&cfg),
        &[("CALLVERIFY_MEDIA__EXTERNAL_ADDRESS", "198.51.100.9")],
    );
    let messages = sipp_messages(&w);
    let invite = messages
        .split("INVITE sip:")
        .nth(1)
        .unwrap_or_else(|| panic!("sipp got no INVITE: {messages}\n{out:#?}"));
    for needle in [
        "Via: SIP/2.0/UDP 203.0.113.7:5999;",
        "@203.0.113.7:5999>",
        "c=IN IP4 198.51.100.9",
    ] {
        assert!(invite.contains(needle), "{needle:?} missing in:\n{invite}");
    }
    assert!(
        invite.contains("o=")
            && invite
                .lines()
                .any(|l| l.starts_with("o=") && l.ends_with("198.51.100.9")),
        "o= shows the external media address:\n{invite}"
    );
    assert!(!invite.contains("Via: SIP/2.0/UDP 127.0.0.1"), "{invite}");
    drop(sipp);
}
