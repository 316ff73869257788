//! Attacks on the signalling of `callverify call` (the built binary), performed on loopback by
//! a stranger who sees every packet (tshark on `lo`) and sends from its own ports, while a
//! sipp callee does what a real phone does. Issue 8 items 1 and 6.
//!
//! * a forged `200 OK` from the stranger's port, with the INVITE's real branch, and one with
//!   a fresh branch and only the right Call-ID, its SDP pointing at the stranger's RTP port:
//!   the call keeps ringing and ends as the real callee decides; the stranger's `#` never
//!   counts and the stranger is never answered;
//! * a forged BYE, re-INVITE, UPDATE and INFO `#` in the live dialog from the stranger's port:
//!   ignored; the genuine callee's `#` confirms.
//!
//! Ports: sipp SIP 31000+n, sipp RTP 51000+10n, our RTP 51500+20n, the stranger's SIP
//! 31060+n and RTP 51300+10n.

mod common_attack;
mod common_peers;

use std::net::UdpSocket;
use std::time::Duration;

use common_attack::*;
use common_peers::*;

fn uri(port: u16) -> String {
    format!("sip:peer@127.0.0.1:{port}")
}

/// The stranger's sockets.
struct Stranger {
    sip: UdpSocket,
    rtp: UdpSocket,
}

impl Stranger {
    fn bind(sip: u16, rtp: u16) -> Stranger {
        Stranger {
            sip: UdpSocket::bind(("127.0.0.1", sip)).unwrap(),
            rtp: UdpSocket::bind(("127.0.0.1", rtp)).unwrap(),
        }
    }

    fn sip_port(&self) -> u16 {
        self.sip.local_addr().unwrap().port()
    }

    fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().unwrap().port()
    }
}

/// The callee rings for 4 s and then says busy; meanwhile the stranger answers in its place
/// (retransmitting its 200 as a real UAS would) and presses `#` from its own RTP port.
fn forged_answer(n: u16, fresh_branch: bool) {
    let w = Work::new();
    let (sipp_sip, sipp_rtp) = (31000 + n, 51000 + 10 * n);
    let scenario = w.scenario(
        "uas_ring_then_reject.xml",
        &[
            ("STATUS", "486"),
            ("REASON", "Busy Here"),
            ("RING_MS", "4000"),
        ],
    );
    let mut sipp = sipp_uas(&w, &scenario, sipp_sip, sipp_rtp);
    let sniffer = Sniffer::start(
        w.path(),
        "tshark",
        &format!("udp and (port {sipp_sip} or portrange 51500-51599)"),
    );
    let stranger = Stranger::bind(31060 + n, 51300 + 10 * n);
    let cfg = w.config(51500 + 20 * n, "sip_info_dtmf = true", "");
    let target = uri(sipp_sip);
    let call = meanwhile_call(vec![target], cfg);

    let seen = sniff_invite(&sniffer, sipp_sip);
    let branch = fresh_branch.then_some("z9hG4bKstrangerfresh0001");
    let ok = forged_200(
        &seen.request,
        branch,
        stranger.sip_port(),
        stranger.rtp_port(),
    );
    // A UAS retransmits its 2xx until the ACK (RFC 3261 §13.3.1.4): T1, 2·T1, 4·T1 …
    for wait in [0, 500, 1000, 2000] {
        std::thread::sleep(Duration::from_millis(wait));
        stranger.sip.send_to(&ok, seen.sip).unwrap();
    }
    // The stranger's '#' at the address callverify offered, in-band and RFC 4733, twice.
    for round in 0..2u16 {
        let keys = key_packets('#', 0x5eed_0000, 1000 + 100 * round, 80_000);
        send_paced(&stranger.rtp, seen.rtp, &keys);
    }
    let answers = count_received(&stranger.sip, Duration::from_millis(200))
        + count_received(&stranger.rtp, Duration::from_millis(200));

    let out = call.join().unwrap();
    out.assert_in(&w, "busy", None);
    assert!(out.events("answered").is_empty(), "{out:#?}");
    assert!(out.events("digit").is_empty(), "{out:#?}");
    assert!(
        out.events("rejected").iter().any(|e| e["code"] == 486),
        "the real callee decided: {out:#?}"
    );
    assert_eq!(answers, 0, "the stranger got an ACK or RTP");
    // Counted (the last retransmission may come after the 486 on a slow machine).
    assert!(
        out.json["sip_dropped"]["untrusted_source"].as_u64() >= Some(1),
        "the forged answers are counted: {}",
        out.json["sip_dropped"]
    );
    // Nothing but the genuine exchange on the wire: no ACK to anyone but sipp.
    let acks: Vec<Captured> = sniffer
        .packets()
        .into_iter()
        .filter(|p| p.payload.starts_with(b"ACK "))
        .collect();
    assert!(
        acks.iter().all(|p| p.dst_port == sipp_sip),
        "an ACK went elsewhere"
    );
    let status = sipp.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{}", sipp.log_text());
}

/// `callverify call <args> --config cfg` on a thread (the attack runs meanwhile).
fn meanwhile_call(args: Vec<String>, cfg: std::path::PathBuf) -> std::thread::JoinHandle<Outcome> {
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        call(&args, Some(&cfg), &[])
    })
}

#[test]
fn forged_200_with_the_real_branch_from_another_port_is_not_an_answer() {
    forged_answer(0, false);
}

#[test]
fn forged_200_with_a_fresh_branch_and_the_right_call_id_is_not_an_answer() {
    forged_answer(1, true);
}

#[test]
fn forged_bye_reinvite_update_and_info_in_a_live_dialog_are_ignored() {
    let n = 2;
    let w = Work::new();
    let (sipp_sip, sipp_rtp) = (31000 + n, 51000 + 10 * n);
    // The callee's audio: continuous, its '#' at 5 s after answer (after the attack).
    let audio = w.path().join("stream.ulaw");
    ulaw(&audio, &[(None, 5000), (Some('#'), 250), (None, 6000)]);
    let scenario = w.scenario(
        "uas_stream.xml",
        &[("AUDIO", "stream.ulaw"), ("RING_MS", "300")],
    );
    let mut sipp = sipp_uas(&w, &scenario, sipp_sip, sipp_rtp);
    let sniffer = Sniffer::start(
        w.path(),
        "tshark",
        &format!("udp and (port {sipp_sip} or portrange 51500-51599)"),
    );
    let stranger = Stranger::bind(31060 + n, 51300 + 10 * n);
    let cfg = w.config(51500 + 20 * n, "sip_info_dtmf = true", "");
    let call = meanwhile_call(vec![uri(sipp_sip)], cfg);

    let seen = sniff_invite(&sniffer, sipp_sip);
    let answer = sniff_answer(&sniffer, sipp_sip);
    // Past the answer guard, the prompt playing: what a stranger's keys would need.
    std::thread::sleep(Duration::from_millis(1800));
    let sdp = attacker_sdp(stranger.rtp_port());
    let sip_port = stranger.sip_port();
    let forged = [
        forged_in_dialog(
            &seen.request,
            &answer,
            "INVITE",
            100,
            sip_port,
            "Content-Type: application/sdp\r\n",
            &sdp,
        ),
        forged_in_dialog(
            &seen.request,
            &answer,
            "UPDATE",
            101,
            sip_port,
            "Content-Type: application/sdp\r\n",
            &sdp,
        ),
        forged_in_dialog(
            &seen.request,
            &answer,
            "INFO",
            102,
            sip_port,
            "Content-Type: application/dtmf-relay\r\n",
            "Signal=#\r\nDuration=250\r\n",
        ),
        forged_in_dialog(&seen.request, &answer, "BYE", 103, sip_port, "", ""),
    ];
    for m in &forged {
        for _ in 0..3 {
            stranger.sip.send_to(m, seen.sip).unwrap();
        }
    }
    // Had the re-INVITE moved the media, this '#' would be heard.
    send_paced(
        &stranger.rtp,
        seen.rtp,
        &key_packets('#', 0x5eed_0001, 7000, 160_000),
    );
    let answers = count_received(&stranger.sip, Duration::from_millis(300))
        + count_received(&stranger.rtp, Duration::from_millis(100));

    let out = call.join().unwrap();
    out.assert_in(&w, "confirmed", Some("inband"));
    assert_eq!(out.events("digit").len(), 1, "{out:#?}");
    assert!(out.events("bye_received").is_empty(), "{out:#?}");
    assert!(out.events("media_changed").is_empty(), "{out:#?}");
    assert!(out.events("digit_ignored").is_empty(), "{out:#?}");
    assert_eq!(answers, 0, "the stranger was answered");
    assert!(
        out.json["sip_dropped"]["untrusted_source"].as_u64() >= Some(12),
        "{}",
        out.json["sip_dropped"]
    );
    let status = sipp.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{}", sipp.log_text());
}
