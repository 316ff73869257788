//! Predictability (issue 8 items 2 and 6), against `callverify serve` (the built binary) on
//! loopback: the Call-IDs, From-tags and branches of many calls of one process, as a stranger
//! sees them on the wire, carry 128 random bits each, never repeat and show no structure; and
//! the old leak is gone: a stranger's INVITE gets no answer at all, the trunk's gets one
//! stateless 480 whose To-tag is 128 bits of ChaCha20.
//!
//! Ports: sipp SIP 31040, sipp RTP 51250, serve SIP 31045+n and API 31094+n, our RTP
//! 51800+20n, the trunk's stand-in 31048, the stranger 31049.

mod common_attack;
mod common_peers;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common_attack::*;
use common_peers::*;
use sip::message::{HeaderAccess as _, Message};

/// Calls placed by one process.
const CALLS: usize = 30;

/// The random part of one of our identifiers: what follows the shard's routing prefix
/// (`s<n>-`, `sip::route`: public by design, it only names which thread holds the call).
fn random_part(id: &str) -> &str {
    let (prefix, rest) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("{id}: no shard prefix"));
    assert!(
        prefix.starts_with('s') && prefix[1..].bytes().all(|b| b.is_ascii_digit()),
        "{id}: the prefix names a shard and nothing else"
    );
    rest
}

fn hex_bits(s: &str) -> Vec<bool> {
    s.chars()
        .flat_map(|c| {
            let v = c.to_digit(16).unwrap();
            (0..4).rev().map(move |i| v >> i & 1 == 1)
        })
        .collect()
}

#[test]
fn identifiers_of_many_calls_are_128_random_bits_without_structure() {
    let w = Work::new();
    let scenario = w.scenario(
        "uas_reject.xml",
        &[("STATUS", "486"), ("REASON", "Busy Here")],
    );
    let mut cmd = std::process::Command::new("sipp");
    cmd.arg("-sf")
        .arg(&scenario)
        .args(["-i", "127.0.0.1", "-p", "31040", "-mp", "51250"])
        .args(["-m", &CALLS.to_string(), "-nostdin", "-trace_err"]);
    let mut sipp = Peer::spawn("sipp", w.path(), &mut cmd);
    sipp.wait_udp(31040);
    let sniffer = Sniffer::start(w.path(), "tshark", "udp and dst port 31040");
    let api: SocketAddr = "127.0.0.1:31094".parse().unwrap();
    let config = serve_config(w.path(), api, "127.0.0.1:31045".parse().unwrap(), 51800, "");
    let serve = Serve::start(w.path(), &config, api, 4096);
    let ids: Vec<String> = (0..CALLS)
        .map(|i| serve.verify(&format!("sip:user{i}@127.0.0.1:31040")))
        .collect();
    for id in &ids {
        let v = serve.outcome(id, Duration::from_secs(120));
        assert_eq!(v["result"], "busy", "{v:#}");
    }
    sniffer.sync();

    let mut call_ids = HashSet::new();
    let mut values = Vec::new();
    for p in sniffer.packets() {
        let Some(Message::Request(r)) = p.sip() else {
            continue;
        };
        if r.method.as_str() != "INVITE" {
            continue;
        }
        let call_id = r.call_id().unwrap().to_string();
        if !call_ids.insert(call_id.clone()) {
            continue; // a retransmission
        }
        let random = random_part(call_id.split('@').next().unwrap()).to_string();
        let tag = random_part(r.header_from().unwrap().tag().unwrap()).to_string();
        let branch = r.top_via().unwrap().branch().unwrap().to_string();
        let branch = random_part(branch.strip_prefix("z9hG4bK").unwrap()).to_string();
        values.extend([random, tag, branch]);
    }
    assert_eq!(call_ids.len(), CALLS, "every call's INVITE seen");
    let distinct: HashSet<&String> = values.iter().collect();
    assert_eq!(distinct.len(), values.len(), "an identifier repeated");
    for v in &values {
        assert_eq!(v.len(), 32, "{v}: 128 bits in hex");
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()), "{v}");
    }
    // No structure: about half the bits set in every position across the calls (a counter,
    // a clock or a short generator would pin some positions), and no common prefixes.
    let bits: Vec<Vec<bool>> = values.iter().map(|v| hex_bits(v)).collect();
    let ones: usize = bits.iter().flatten().filter(|b| **b).count();
    let share = ones as f64 / (bits.len() * 128) as f64;
    assert!((0.45..0.55).contains(&share), "{share} of the bits set");
    for position in 0..128 {
        let set = bits.iter().filter(|b| b[position]).count();
        assert!(
            set > 0 && set < bits.len(),
            "bit {position} is the same in all {} identifiers",
            bits.len()
        );
    }
    for (i, a) in values.iter().enumerate() {
        for b in &values[i + 1..] {
            let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
            assert!(common < 8, "{a} and {b} share {common} leading digits");
        }
    }
    let status = sipp.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", sipp.log_text());
}

/// An INVITE to `to` from `from_port`, number `i`.
fn stray_invite(i: usize, to: SocketAddr, from_port: u16) -> Vec<u8> {
    format!(
        "INVITE sip:callverify@{to} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{from_port};branch=z9hG4bKstray{i}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:someone@127.0.0.1>;tag=s{i}\r\nTo: <sip:callverify@{to}>\r\n\
         Call-ID: stray{i}@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:someone@127.0.0.1:{from_port}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Everything that arrives on `socket` within `limit`.
fn drain(socket: &UdpSocket, limit: Duration) -> Vec<Vec<u8>> {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 65_536];
    while start.elapsed() < limit {
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

#[test]
fn stray_invites_get_one_stateless_480_from_the_trunk_and_nothing_from_strangers() {
    let w = Work::new();
    let trunk = UdpSocket::bind("127.0.0.1:31048").unwrap();
    let stranger = UdpSocket::bind("127.0.0.1:31049").unwrap();
    let api: SocketAddr = "127.0.0.1:31095".parse().unwrap();
    let sip: SocketAddr = "127.0.0.1:31046".parse().unwrap();
    let config = serve_config(
        w.path(),
        api,
        sip,
        51820,
        "trunk = \"sip:127.0.0.1:31048\"\ncaller_id = \"+14255550100\"",
    );
    let serve = Serve::start(w.path(), &config, api, 4096);

    for i in 0..20 {
        stranger.send_to(&stray_invite(i, sip, 31049), sip).unwrap();
    }
    for i in 0..5 {
        trunk
            .send_to(&stray_invite(100 + i, sip, 31048), sip)
            .unwrap();
    }
    // Long enough for three retransmissions of a 480 (T1 = 500 ms: 0.5, 1.5, 3.5 s).
    let to_trunk = drain(&trunk, Duration::from_secs(5));
    let to_stranger = drain(&stranger, Duration::from_millis(100));
    assert!(
        to_stranger.is_empty(),
        "{} answers to a stranger",
        to_stranger.len()
    );
    assert_eq!(
        to_trunk.len(),
        5,
        "one answer per INVITE, never retransmitted"
    );
    let mut tags = HashSet::new();
    for m in &to_trunk {
        let Ok(Message::Response(r)) = Message::parse(m, &Default::default()) else {
            panic!("{}", String::from_utf8_lossy(m))
        };
        assert_eq!(r.status, 480);
        let tag = random_part(r.header_to().unwrap().tag().unwrap()).to_string();
        assert_eq!(tag.len(), 32, "{tag}");
        assert!(tags.insert(tag));
    }
    assert!(
        serve.metric("callverify_sip_dropped_total{reason=\"untrusted_source\"}") >= 20,
        "the stranger's INVITEs are counted"
    );
}
