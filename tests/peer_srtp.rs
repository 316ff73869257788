//! SRTP (SDES over SIP/TLS) with real peers: `callverify call` with `media.srtp` against
//! baresip 1.0 (its `srtp` module, `;mediaenc=srtp-mand`) and against a baresip without SRTP;
//! `require` over UDP refused before dialling. The RTP on the wire is captured with tshark and
//! run through `callverify replay`: the `#` that the live call decoded is not in the capture.
//!
//! Ports (tests/README plan for this suite): SIP 32000-32099, RTP 52000-52999 — baresip SIP
//! 32010+20n (TLS on the next port), ctrl_tcp 32012+20n, baresip RTP 52100+100n..+99, our RTP
//! 52000+20n..+19.

mod common_peers;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common_peers::*;

/// baresip auto-answering over TLS on SIP port `32011 + 20n`, playing `#` in-band at 2.5 s
/// (from a 30 s file), with SRTP mandatory or without the SRTP module at all.
fn baresip(work: &Work, n: u16, srtp: bool, bundle: &Path) -> (Peer, u16) {
    let sip = 32010 + 20 * n;
    let ctrl = 32012 + 20 * n;
    let rtp = 52100 + 100 * n;
    let dir = work.path();
    let wav = dir.join("source.wav");
    let status = Command::new("sox")
        .args(["-n", "-r", "8000", "-b", "16", "-c", "1"])
        .arg(&wav)
        .args([
            "synth", "0.4", "sine", "941", "sine", "1477", "channels", "1", "gain", "-n", "-6",
            "pad", "2.5", "27",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let srtp_module = if srtp { "module\t\t\tsrtp.so\n" } else { "" };
    let config = format!(
        "poll_method\t\tepoll\nsip_listen\t\t127.0.0.1:{sip}\nnet_interface\t\t127.0.0.1\n\
         call_local_timeout\t120\ncall_max_calls\t\t4\naudio_path\t\t.\n\
         audio_source\t\taufile,{}\naudio_player\t\taufile,{}\n\
         rtp_ports\t\t{rtp}-{}\nrtcp_mux\t\tno\njitter_buffer_delay\t5-10\n\
         module_path\t\t/usr/lib/baresip/modules\nmodule\t\t\tg711.so\nmodule\t\t\taufile.so\n\
         {srtp_module}module_tmp\t\taccount.so\nmodule_app\t\tmenu.so\nmodule_app\t\tctrl_tcp.so\n\
         ctrl_tcp_listen\t\t127.0.0.1:{ctrl}\nsip_certificate\t\t{}\n",
        wav.display(),
        dir.join("rx.wav").display(),
        rtp + 99,
        bundle.display(),
    );
    std::fs::write(dir.join("config"), config).unwrap();
    let mediaenc = if srtp { ";mediaenc=srtp-mand" } else { "" };
    std::fs::write(
        dir.join("accounts"),
        format!(
            "<sip:peer@127.0.0.1:{sip}>;regint=0;answermode=auto;audio_codecs=pcmu,pcma{mediaenc}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("baresip");
    cmd.arg("-f").arg(dir).args(["-v", "-t", "120"]);
    let mut peer = Peer::spawn("baresip", dir, &mut cmd);
    peer.wait_udp(sip);
    assert!(
        wait_for_log(&peer, "baresip is ready", Duration::from_secs(15)),
        "{}",
        peer.log_text()
    );
    (peer, sip + 1)
}

/// Our configuration: RTP ports `52000 + 20n`, the test CA, `media.srtp = mode`.
fn config(work: &Work, n: u16, ca: &Path, mode: &str) -> PathBuf {
    let path = work.config(
        52000 + 20 * n,
        &format!("tls_ca = \"{}\"", ca.display()),
        "",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[media]\n", &format!("[media]\nsrtp = \"{mode}\"\n"));
    std::fs::write(&path, text).unwrap();
    path
}

/// tshark on `lo` writing UDP of the given port ranges to a pcap; stopped with SIGINT so the
/// file is complete.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(work: &Work, filter: &str) -> Capture {
        let file = work.path().join("rtp.pcapng");
        let log = work.path().join("tshark.log");
        let mut child = Command::new("tshark")
            .args(["-i", "lo", "-f", filter, "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tshark");
        let start = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Capture started")
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tshark exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "tshark did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Capture { child, file }
    }

    fn stop(mut self) -> PathBuf {
        // SIGINT to our own child, by its id: tshark closes the file properly.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.wait();
        self.file.clone()
    }
}

/// `callverify replay FILE --format jsonl`: the stream objects.
fn replay(file: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_callverify"))
        .arg("replay")
        .arg(file)
        .args(["--format", "jsonl"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "stream")
        .collect()
}

#[test]
fn baresip_srtp_mandatory_over_tls_both_ways() {
    let w = Work::new();
    let (ca, bundle) = certificates(&w);
    let (peer, tls) = baresip(&w, 0, true, &bundle);
    let capture = Capture::start(&w, "udp portrange 52000-52019 or udp portrange 52100-52199");
    let cfg = config(&w, 0, &ca, "require");
    let out = call(
        &[&format!("sip:peer@127.0.0.1:{tls};transport=tls")],
        Some(&cfg),
        &[],
    );
    let pcap = capture.stop();
    // baresip's key protected its in-band `#`: we authenticated, decrypted and heard it.
    out.assert_in(&w, "confirmed", Some("inband"));
    let media = out.events("media_negotiated");
    assert_eq!(media[0]["srtp"], "AES_CM_128_HMAC_SHA1_80", "{out:#?}");
    // Our key protected our prompt: baresip authenticated what we sent (it logs and drops any
    // packet it cannot unprotect, and it received our stream at full rate).
    let log = peer.log_text();
    assert!(log.contains("SRTP is Enabled"), "{log}");
    assert!(
        log.contains("incoming rtp for 'audio' established"),
        "{log}"
    );
    assert!(!log.contains("unprotect"), "{log}");

    // On the wire: both streams, and neither decodes as G.711 to the `#` that was sent.
    let streams = replay(&pcap);
    assert_eq!(streams.len(), 2, "{streams:#?}");
    for s in &streams {
        assert!(s["packets"].as_u64().unwrap() > 100, "{s:#}");
        assert_eq!(s["digits"], "", "plain audio on the wire: {s:#}");
    }
}

#[test]
fn a_peer_without_srtp_refuses_require_and_offer_falls_back() {
    let w = Work::new();
    let (ca, bundle) = certificates(&w);
    let (_peer, tls) = baresip(&w, 1, false, &bundle);
    let target = format!("sip:peer@127.0.0.1:{tls};transport=tls");
    // require: RTP/SAVP, which a plain-RTP phone refuses (baresip: 488): no call.
    let out = call(&[&target], Some(&config(&w, 1, &ca, "require")), &[]);
    out.assert_in(&w, "rejected", None);
    assert!(out.events("answered").is_empty(), "{out:#?}");
    // offer: keys on RTP/AVP, which the same phone answers plainly: a plain call.
    let out = call(&[&target], Some(&config(&w, 1, &ca, "offer")), &[]);
    out.assert_in(&w, "confirmed", Some("inband"));
    let media = out.events("media_negotiated");
    assert!(media[0].get("srtp").is_none(), "{out:#?}");
}

#[test]
fn require_over_udp_is_refused_before_dialling() {
    let w = Work::new();
    let (ca, _) = certificates(&w);
    let phone = UdpSocket::bind("127.0.0.1:32090").unwrap();
    phone
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let cfg = config(&w, 2, &ca, "require");
    for target in [
        "sip:peer@127.0.0.1:32090",
        "sip:peer@127.0.0.1:32090;transport=tcp",
    ] {
        let out = call(&[target], Some(&cfg), &[]);
        assert_eq!(out.code, 2, "{out:#?}");
        assert!(
            out.stderr.contains("media.srtp") && out.stderr.contains("TLS"),
            "{out:#?}"
        );
        let mut buf = [0u8; 2048];
        assert!(phone.recv_from(&mut buf).is_err(), "something was sent");
    }
    // The same through a trunk that is not TLS.
    let out = call(
        &["+14255550123", "--trunk", "sip:127.0.0.1:32090"],
        Some(&cfg),
        &[],
    );
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("TLS"), "{out:#?}");
}
