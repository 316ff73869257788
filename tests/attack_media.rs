//! Attacks on the media of `callverify call` (the built binary) on loopback, during a genuine
//! call to a sipp callee that streams audio all along and presses nothing. Issue 8 items 3
//! and 6: a stranger's `#` (in-band tones and RFC 4733 events)
//!
//! * from its own RTP port,
//! * from the callee's own address and port (source spoofed with a raw socket) on a second
//!   SSRC, while the callee's stream is alive,
//! * as one RFC 4733 packet with the callee's SSRC and next sequence number, repeated,
//!
//! is never a key: the call ends `no_input` with no digit in its timeline. And a flood of
//! junk and oversized datagrams at the call's RTP port does not drown the callee's own `#`.
//!
//! Ports: sipp SIP 31010+n, sipp RTP 51100+10n, our RTP 51600+20n, the stranger's RTP
//! 51340+10n (n = 0..=3).

mod common_attack;
mod common_peers;

use std::net::UdpSocket;
use std::time::Duration;

use common_attack::*;
use common_peers::*;
use media::rfc4733::EventPayload;

/// How the stranger sends its key.
#[derive(Clone, Copy, Debug)]
enum Attack {
    OwnPort,
    SpoofedSecondSsrc,
    SpoofedSinglePacket,
}

fn stranger_keys(n: u16, attack: Attack) {
    let w = Work::new();
    let (sipp_sip, sipp_rtp) = (31010 + n, 51100 + 10 * n);
    let audio = w.path().join("stream.ulaw");
    ulaw(&audio, &[(None, 20_000)]);
    let scenario = w.scenario(
        "uas_stream.xml",
        &[("AUDIO", "stream.ulaw"), ("RING_MS", "300")],
    );
    let mut sipp = sipp_uas(&w, &scenario, sipp_sip, sipp_rtp);
    let sniffer = Sniffer::start(
        w.path(),
        "tshark",
        &format!(
            "udp and (port {sipp_sip} or src port {sipp_rtp} or src port {})",
            51340 + 10 * n
        ),
    );
    let own = UdpSocket::bind(("127.0.0.1", 51340 + 10 * n)).unwrap();
    let spoofer = Spoofer::new();
    let cfg = w.config(
        51600 + 20 * n,
        "",
        "response_timeout_secs = 4\nprompt_replays = 0",
    );
    let target = format!("sip:peer@127.0.0.1:{sipp_sip}");
    let call = std::thread::spawn(move || call(&[&target], Some(&cfg), &[]));

    let seen = sniff_invite(&sniffer, sipp_sip);
    let _ = sniff_answer(&sniffer, sipp_sip);
    // Past the answer guard, during the prompt and the collection: when a key would count.
    std::thread::sleep(Duration::from_millis(1800));
    for round in 0..2u16 {
        match attack {
            Attack::OwnPort => {
                let keys = key_packets('#', 0x5eed_0000, 100 * round, 8000 * u32::from(round));
                send_paced(&own, seen.rtp, &keys);
            }
            Attack::SpoofedSecondSsrc => {
                let keys = key_packets('#', 0x5eed_0000, 100 * round, 8000 * u32::from(round));
                for p in &keys {
                    spoofer.send(sipp_rtp, seen.rtp, p);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Attack::SpoofedSinglePacket => {
                // The callee's SSRC, a sequence number just ahead of its stream and a
                // timestamp inside it: in step with the genuine stream, one packet, sent
                // five times.
                let (ssrc, seq, ts) = last_rtp(&sniffer, sipp_rtp).expect("the callee's RTP");
                let event = EventPayload {
                    event: 11,
                    end: true,
                    volume: 10,
                    duration: 1600,
                };
                let p = rtp(
                    101,
                    true,
                    seq.wrapping_add(10),
                    ts.wrapping_add(1600),
                    ssrc,
                    &event.to_bytes(),
                );
                for _ in 0..5 {
                    spoofer.send(sipp_rtp, seen.rtp, &p);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(600));
    }
    let answered_stranger = count_received(&own, Duration::from_millis(100));
    // The forgeries did reach callverify's RTP port, as the attack says they came (tshark
    // may print the last ones a little late).
    let sent = match attack {
        Attack::OwnPort | Attack::SpoofedSecondSsrc => 2 * key_packets('#', 0, 0, 0).len(),
        Attack::SpoofedSinglePacket => 10,
    };
    let on_the_wire = || {
        let forged: Vec<(u16, u32, u8)> = sniffer
            .packets()
            .iter()
            .filter(|p| p.dst_port == seen.rtp.port())
            .filter_map(|p| {
                let r = media::rtp::RtpPacket::parse(&p.payload).ok()?;
                Some((p.src_port, r.ssrc, r.payload_type))
            })
            .collect();
        match attack {
            Attack::OwnPort => forged
                .iter()
                .filter(|(port, ssrc, _)| *port == 51340 + 10 * n && *ssrc == 0x5eed_0000)
                .count(),
            Attack::SpoofedSecondSsrc => forged
                .iter()
                .filter(|(port, ssrc, _)| *port == sipp_rtp && *ssrc == 0x5eed_0000)
                .count(),
            Attack::SpoofedSinglePacket => forged
                .iter()
                .filter(|(port, _, pt)| *port == sipp_rtp && *pt == 101)
                .count(),
        }
    };
    let start = std::time::Instant::now();
    while on_the_wire() < sent && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        on_the_wire(),
        sent,
        "{attack:?}: the forged packets on the wire"
    );

    let out = call.join().unwrap();
    out.assert_in(&w, "no_input", None);
    assert!(out.events("digit").is_empty(), "{attack:?}: {out:#?}");
    assert!(
        out.events("digit_ignored").is_empty(),
        "{attack:?}: {out:#?}"
    );
    assert_eq!(answered_stranger, 0);
    let status = sipp.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{}", sipp.log_text());
}

#[test]
fn rtp_pound_from_another_port_is_no_key() {
    stranger_keys(0, Attack::OwnPort);
}

#[test]
fn rtp_pound_spoofed_from_the_callee_on_a_second_ssrc_is_no_key() {
    stranger_keys(1, Attack::SpoofedSecondSsrc);
}

#[test]
fn a_single_rfc4733_packet_in_the_callees_stream_is_no_key() {
    stranger_keys(2, Attack::SpoofedSinglePacket);
}

/// A stranger floods the call's RTP port from its own port at 10,000 datagrams a second (200
/// times the callee's stream; a tenth of them larger than any audio of ours) while the callee
/// presses `#` in-band: the shard reads up to 64 datagrams per socket per tick and drops the
/// stranger's by source, so the callee's key still confirms, once, in-band. (A flood beyond
/// what a socket is read at overflows its kernel buffer; that bounds our CPU, and there the
/// network's own filtering has to help: docs/SECURITY.md.)
#[test]
fn an_rtp_flood_at_the_calls_port_does_not_drown_the_callees_key() {
    let n = 3;
    let w = Work::new();
    let (sipp_sip, sipp_rtp) = (31010 + n, 51100 + 10 * n);
    let audio = w.path().join("stream.ulaw");
    ulaw(&audio, &[(None, 3000), (Some('#'), 400), (None, 6000)]);
    let scenario = w.scenario(
        "uas_stream.xml",
        &[("AUDIO", "stream.ulaw"), ("RING_MS", "300")],
    );
    let mut sipp = sipp_uas(&w, &scenario, sipp_sip, sipp_rtp);
    // Signalling only: the flood stays out of the capture.
    let sniffer = Sniffer::start(w.path(), "tshark", &format!("udp and port {sipp_sip}"));
    let flooder = UdpSocket::bind(("127.0.0.1", 51340 + 10 * n)).unwrap();
    let cfg = w.config(51600 + 20 * n, "", "response_timeout_secs = 8");
    let target = format!("sip:peer@127.0.0.1:{sipp_sip}");
    let call = std::thread::spawn(move || call(&[&target], Some(&cfg), &[]));

    let seen = sniff_invite(&sniffer, sipp_sip);
    let _ = sniff_answer(&sniffer, sipp_sip);
    // From just after the answer until past the key (3.0 to 3.4 s into the callee's stream).
    let junk = [0x80u8; 172];
    let oversized = [0x80u8; 1600];
    let start = std::time::Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_millis(4500) {
        // Ten per millisecond, in bursts (what a paced flooder on a fast link looks like).
        let due = start.elapsed().as_millis() as u64 * 10;
        while sent < due {
            let datagram: &[u8] = if sent.is_multiple_of(10) {
                &oversized
            } else {
                &junk
            };
            flooder.send_to(datagram, seen.rtp).unwrap();
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    assert!(sent >= 44_000, "a flood: {sent} datagrams in 4.5 s");

    let out = call.join().unwrap();
    out.assert_in(&w, "confirmed", Some("inband"));
    assert_eq!(out.events("digit").len(), 1, "{out:#?}");
    let status = sipp.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{}", sipp.log_text());
}
