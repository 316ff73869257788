//! Floods against the SIP side, on loopback, with real peers (issue 8 items 5 and 6):
//!
//! * a stranger's INVITE flood (at least 3,000 a second, 2 KB each) at `callverify call`'s SIP
//!   port during a genuine call: the call is confirmed, the packets callverify sends keep
//!   their 20 ms grid within 2 ms (95 % of them, by kernel capture time: this machine's
//!   scheduler delays a few even without a flood), and the stranger gets nothing back;
//! * a TCP connection flood at `callverify serve`'s SIP port, the service running under the
//!   descriptor limit systemd gives it (1024): new calls still succeed, and the refused
//!   connections are counted in /metrics;
//! * slow and idle SIP/TCP connections (a header that never ends) are closed after
//!   `sip.connection_idle_secs`, and counted.
//!
//! Ports: sipp SIP 31020+n, sipp RTP 51200+10n, our RTP 51700+20n, the stranger's SIP 31080+n,
//! serve's SIP 31030+n and API 31090+n.

mod common_attack;
mod common_peers;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common_attack::*;
use common_peers::*;
use media::rtp::RtpPacket;

/// INVITEs a second from the stranger (issue 8: at least 3,000).
const FLOOD_RATE: u64 = 3_200;
/// Bytes per flooding INVITE.
const FLOOD_SIZE: usize = 2_048;
/// Where a packet may lie late of its 20 ms slot.
const GRID_TOLERANCE: Duration = Duration::from_millis(2);
/// The share of packets that must lie within [`GRID_TOLERANCE`].
const MIN_ON_GRID: f64 = 0.95;

/// A 2 KB INVITE, different each time (new branch, Call-ID and tag).
fn flood_invite(i: u64, to: SocketAddr, from_port: u16) -> Vec<u8> {
    let head = format!(
        "INVITE sip:victim@{to} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{from_port};branch=z9hG4bKflood{i}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:flood@127.0.0.1>;tag=f{i}\r\nTo: <sip:victim@{to}>\r\n\
         Call-ID: flood{i}@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@127.0.0.1:{from_port}>\r\n\
         Content-Type: application/sdp\r\n"
    );
    let body_len = FLOOD_SIZE - head.len() - "Content-Length: 0000\r\n\r\n".len();
    let body = "a".repeat(body_len);
    let m = format!("{head}Content-Length: {body_len:04}\r\n\r\n{body}");
    assert_eq!(m.len(), FLOOD_SIZE);
    m.into_bytes()
}

/// How late each packet `from` sent to `to_port` came after its slot on the 20 ms grid, by
/// capture time: the slot of a packet is its RTP timestamp over 160 (8 kHz, 20 ms), and the
/// grid's origin is where the earliest packet puts it. Packets captured in `window` only.
fn lateness(packets: &[Captured], to_port: u16, window: (f64, f64)) -> Vec<Duration> {
    let mut slots: Vec<(f64, i64)> = Vec::new();
    let mut first_ts: Option<u32> = None;
    for p in packets.iter().filter(|p| p.dst_port == to_port) {
        let Ok(r) = RtpPacket::parse(&p.payload) else {
            continue;
        };
        let ts0 = *first_ts.get_or_insert(r.timestamp);
        let slot = i64::from(r.timestamp.wrapping_sub(ts0) as i32) / 160;
        if p.time >= window.0 && p.time <= window.1 {
            slots.push((p.time, slot));
        }
    }
    let origin = slots
        .iter()
        .map(|(t, k)| t - *k as f64 * 0.020)
        .fold(f64::INFINITY, f64::min);
    slots
        .iter()
        .map(|(t, k)| Duration::from_secs_f64((t - *k as f64 * 0.020 - origin).max(0.0)))
        .collect()
}

#[test]
fn invite_flood_during_a_genuine_call() {
    let n = 0;
    let w = Work::new();
    let (sipp_sip, sipp_rtp) = (31020 + n, 51200 + 10 * n);
    // The callee presses '#' 4 s after answering, while the flood runs.
    let audio = w.path().join("stream.ulaw");
    ulaw(&audio, &[(None, 4000), (Some('#'), 250), (None, 8000)]);
    let scenario = w.scenario(
        "uas_stream.xml",
        &[("AUDIO", "stream.ulaw"), ("RING_MS", "300")],
    );
    let mut sipp = sipp_uas(&w, &scenario, sipp_sip, sipp_rtp);
    let our_rtp = 51700 + 20 * n;
    let sniffer = Sniffer::start(
        w.path(),
        "tshark",
        &format!(
            "udp and (port {sipp_sip} or (src portrange {our_rtp}-{} and dst port {sipp_rtp}))",
            our_rtp + 19
        ),
    );
    let flooder = UdpSocket::bind(("127.0.0.1", 31080 + n)).unwrap();
    let cfg = w.config(our_rtp, "", "");
    let target = format!("sip:peer@127.0.0.1:{sipp_sip}");
    let call = std::thread::spawn(move || call(&[&target], Some(&cfg), &[]));

    let seen = sniff_invite(&sniffer, sipp_sip);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        let socket = flooder.try_clone().unwrap();
        let to = seen.sip;
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = start.elapsed().as_micros() as u64 * FLOOD_RATE / 1_000_000;
                while i < due {
                    if socket.send_to(&flood_invite(i, to, 31080 + n), to).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            start.elapsed()
        })
    };
    let flood_began = unix_now();
    let received = {
        let socket = flooder.try_clone().unwrap();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0;
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                if socket.recv_from(&mut buf).is_ok() {
                    n += 1;
                }
            }
            n
        })
    };
    let out = call.join().unwrap();
    let flood_ended = unix_now();
    stop.store(true, Ordering::Relaxed);
    let flood_time = flood.join().unwrap();
    let got_back = received.join().unwrap() + count_received(&flooder, Duration::from_millis(300));
    let sent = sent.load(Ordering::Relaxed);

    let rate = sent as f64 / flood_time.as_secs_f64();
    // The grid: every packet callverify sent to the callee while the flood ran.
    sniffer.sync();
    let late = lateness(&sniffer.packets(), sipp_rtp, (flood_began, flood_ended));
    assert!(late.len() > 150, "{} packets captured", late.len());
    let mut sorted = late.clone();
    sorted.sort();
    let worst = sorted[sorted.len() - 1];
    let p99 = sorted[sorted.len() * 99 / 100];
    let median = sorted[sorted.len() / 2];
    let p90 = sorted[sorted.len() * 90 / 100];
    let p95 = sorted[sorted.len() * 95 / 100];
    let within =
        sorted.iter().filter(|l| **l <= GRID_TOLERANCE).count() as f64 / sorted.len() as f64;
    eprintln!(
        "flood: {sent} INVITEs at {rate:.0}/s; {} RTP packets during it: lateness median {median:?}, p90 {p90:?}, p95 {p95:?}, p99 {p99:?}, max {worst:?}; within 2 ms {:.1}%",
        late.len(),
        within * 100.0
    );
    out.assert_in(&w, "confirmed", Some("inband"));
    assert!(rate >= 3_000.0, "flood of {rate:.0} INVITEs/s only");
    assert!(
        got_back <= sent,
        "the stranger got {got_back} packets for {sent}"
    );
    assert_eq!(got_back, 0, "a stranger's INVITE is never answered");
    let dropped = &out.json["sip_dropped"];
    let counted = dropped["rate_limited"].as_u64().unwrap_or(0)
        + dropped["untrusted_source"].as_u64().unwrap_or(0)
        + dropped["channel_full"].as_u64().unwrap_or(0);
    assert!(
        counted as f64 >= 0.9 * sent as f64,
        "{sent} sent, counted {dropped}"
    );

    // The grid holds under the flood: the driver takes its timers before any input, and the
    // stranger's INVITEs die in its reader (bucket) or unparsed in the user agent. A few
    // packets may come late on a machine shared with compilers (without any flood, this VM
    // shows the same: medians near 0.6 ms, single packets up to 15 ms late), so the bound is
    // on the share of packets, not on the one the scheduler delayed.
    assert!(
        within >= MIN_ON_GRID,
        "{:.1}% of the packets within {GRID_TOLERANCE:?} of their slot (median {median:?}, p95 {p95:?}, max {worst:?})",
        within * 100.0
    );
    let status = sipp.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{}", sipp.log_text());
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn tcp_connection_flood_on_the_sip_port_does_not_stop_new_calls() {
    let n = 1;
    let w = Work::new();
    let (sipp_sip, sipp_rtp) = (31020 + n, 51200 + 10 * n);
    let keys = "  <nop><action><exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_pound.pcap\"/></action></nop>\n  <pause milliseconds=\"600\"/>\n";
    let scenario = w.scenario("uas_keys_rfc4733.xml", &[("KEYS", keys)]);
    let mut cmd = std::process::Command::new("sipp");
    cmd.arg("-sf")
        .arg(&scenario)
        .args(["-i", "127.0.0.1", "-p", &sipp_sip.to_string()])
        .args(["-mp", &sipp_rtp.to_string()])
        .args(["-m", "2", "-nostdin", "-trace_err", "-pause_msg_ign"]);
    let mut sipp = Peer::spawn("sipp", w.path(), &mut cmd);
    sipp.wait_udp(sipp_sip);
    let api: SocketAddr = format!("127.0.0.1:{}", 31090 + n).parse().unwrap();
    let sip: SocketAddr = format!("127.0.0.1:{}", 31030 + n).parse().unwrap();
    let config = serve_config(w.path(), api, sip, 51740, "");
    // systemd's default descriptor limit for a service.
    let serve = Serve::start(w.path(), &config, api, 1024);

    // The stranger opens connections as fast as it can and holds every one it gets.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if held.len() >= 3000 {
                    held.drain(..1000);
                }
                if let Ok(s) = TcpStream::connect_timeout(&sip, Duration::from_millis(200)) {
                    opened.fetch_add(1, Ordering::Relaxed);
                    held.push(s);
                }
            }
        })
    };
    while opened.load(Ordering::Relaxed) < 1500 {
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..2 {
        let id = serve.verify(&format!("sip:peer@127.0.0.1:{sipp_sip}"));
        let v = serve.outcome(&id, Duration::from_secs(90));
        assert_eq!(v["result"], "confirmed", "{v:#}\n{}", serve.log_text());
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let refused = serve.metric("callverify_sip_dropped_total{reason=\"untrusted_source\"}")
        + serve.metric("callverify_sip_dropped_total{reason=\"connection_limit\"}");
    assert!(
        refused >= 1000,
        "{} connections opened, {refused} refused and counted",
        opened.load(Ordering::Relaxed)
    );
    let status = sipp.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", sipp.log_text());
}

#[test]
fn a_slow_sip_tcp_connection_is_closed_after_the_idle_time() {
    use std::io::{Read as _, Write as _};
    let n = 2;
    let w = Work::new();
    let (sipp_sip, sipp_rtp) = (31020 + n, 51200 + 10 * n);
    // The callee rings 6 s, then refuses: time for the slow connection to be noticed.
    let scenario = w.scenario(
        "uas_ring_then_reject.xml",
        &[
            ("STATUS", "486"),
            ("REASON", "Busy Here"),
            ("RING_MS", "6000"),
        ],
    );
    let mut sipp = sipp_uas(&w, &scenario, sipp_sip, sipp_rtp);
    let sniffer = Sniffer::start(w.path(), "tshark", &format!("udp and port {sipp_sip}"));
    let cfg = w.config(51700 + 20 * n, "connection_idle_secs = 1", "");
    let target = format!("sip:peer@127.0.0.1:{sipp_sip}");
    let call = std::thread::spawn(move || call(&[&target], Some(&cfg), &[]));
    let seen = sniff_invite(&sniffer, sipp_sip);
    // A header that never ends, one byte a second (slowloris), and an idle connection.
    let mut slow = TcpStream::connect(seen.sip).expect("SIP over TCP listens");
    let idle = TcpStream::connect(seen.sip).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    let mut closed = None;
    for b in b"INVITE sip:victim@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP x\r\n" {
        if slow.write_all(&[*b]).is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 16];
        if let Ok(0) = slow.read(&mut buf) {
            closed = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let closed = closed.expect("the slow connection was never closed");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(5),
        "closed after {closed:?} (idle time 1 s)"
    );
    let mut buf = [0u8; 16];
    let mut idle = idle;
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        idle.read(&mut buf).ok(),
        Some(0),
        "the idle one is closed too"
    );
    let out = call.join().unwrap();
    out.assert_in(&w, "busy", None);
    assert!(
        out.json["sip_dropped"]["idle_timeout"].as_u64() >= Some(2),
        "{}",
        out.json["sip_dropped"]
    );
    let status = sipp.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{}", sipp.log_text());
}
