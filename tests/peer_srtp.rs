//! SRTP (SDES over SIP/TLS) with real peers: `callverify call` with `media.srtp` against
//! baresip 1.0 (its `srtp` module, `;mediaenc=srtp-mand`) and against a baresip without SRTP;
//! `require` over UDP refused before dialling. The RTP on the wire is captured with tshark and
//! run through `callverify replay`: the `#` that the live call decoded is not in the capture.
//! linphone (SDES mandatory) cannot accept TLS, so it registers over TLS to a Kamailio
//! registrar that relays our call to it.
//!
//! Ports of this suite: SIP 32000-32099, RTP 52000-52999 — baresip SIP
//! 32010+20n (TLS on the next port), ctrl_tcp 32012+20n, baresip RTP 52100+100n..+99, our RTP
//! 52000+20n..+19; Kamailio TLS 32051, linphone 32093 and RTP 52900-52910.

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

/// Kamailio and its worker processes: SIGTERM to the main process (by the pid it wrote), which
/// stops its workers too; a SIGKILL alone (the `Peer` fallback) would leave them holding the
/// port.
struct Kamailio {
    _peer: Peer,
    pid_file: PathBuf,
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
            let start = Instant::now();
            while Path::new(&format!("/proc/{}", pid.trim())).exists()
                && start.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Kamailio as a TLS registrar on `port` (tests/scenarios/kamailio-tls-registrar.cfg), with
/// the test certificate.
fn kamailio_tls(work: &Work, port: u16) -> Kamailio {
    let dir = work.path();
    let tls = dir.join("tls.cfg");
    std::fs::write(
        &tls,
        format!(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n\
             private_key = {}\ncertificate = {}\n\n[client:default]\nmethod = TLSv1.2+\n\
             verify_certificate = no\nrequire_certificate = no\n",
            dir.join("leaf.key").display(),
            dir.join("leaf.pem").display()
        ),
    )
    .unwrap();
    let cfg = work.scenario(
        "kamailio-tls-registrar.cfg",
        &[
            ("PORT", &port.to_string()),
            ("TLSCFG", tls.to_str().unwrap()),
        ],
    );
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let mut cmd = Command::new("kamailio");
    cmd.arg("-f")
        .arg(&cfg)
        .args(["-DD", "-E", "-m", "64", "-M", "8", "-Y"])
        .arg(&run)
        .arg("-P")
        .arg(run.join("kamailio.pid"));
    // Nothing may hold the port already (an earlier run's workers): the test would talk to it.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "TCP {port} is taken"
    );
    let peer = Peer::spawn("kamailio", dir, &mut cmd);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "kamailio did not listen: {}",
            peer.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Kamailio {
        _peer: peer,
        pid_file: run.join("kamailio.pid"),
    }
}

/// One linphone-daemon command (one per connection).
fn linphone_command(pipe: &str, cmd: &str) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(format!("/tmp/{pipe}")) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.write_all(format!("{cmd}\n").as_bytes());
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(2).any(|w| w == b"\n\n") || out.ends_with(b"\0") {
            break;
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

#[test]
fn linphone_sdes_over_tls_both_ways() {
    let w = Work::new();
    let (ca, _) = certificates(&w);
    let proxy_port = 32051;
    let _proxy = kamailio_tls(&w, proxy_port);
    let dir = w.path();
    std::fs::create_dir_all(dir.join("home/.local/share/linphone")).unwrap();
    // SDES mandatory; registered to the proxy over TLS (the proxy's certificate is not
    // checked by linphone: the TLS under test is ours, to the proxy).
    let rc = format!(
        "[sip]\nsip_port=-1\nsip_tcp_port=-1\nsip_tls_port=32093\ndefault_proxy=0\n\
         guess_hostname=0\nuse_ipv6=0\nuse_info=0\nuse_rfc2833=1\ninc_timeout=60\n\
         media_encryption=srtp\nmedia_encryption_mandatory=1\nverify_server_certs=0\n\
         verify_server_cn=0\n\
         [proxy_0]\nreg_proxy=<sip:127.0.0.1:{proxy_port};transport=tls>\n\
         reg_identity=sip:peer@127.0.0.1\nreg_expires=3600\nreg_sendregister=1\npublish=0\n\
         [rtp]\naudio_rtp_port=52900-52910\n\
         [net]\nfirewall_policy=1\nnat_address=127.0.0.1\nstun_server=\n\
         [sound]\nechocancellation=0\n\
         [audio_codec_0]\nmime=PCMU\nrate=8000\nchannels=1\nenabled=1\n\
         [audio_codec_1]\nmime=PCMA\nrate=8000\nchannels=1\nenabled=1\n"
    );
    std::fs::write(dir.join("linphonerc"), rc).unwrap();
    let pipe = format!("callverify_srtp_lpd_{}", std::process::id());
    let mut cmd = Command::new("linphone-daemon");
    cmd.env("HOME", dir.join("home"))
        .arg("--config")
        .arg(dir.join("linphonerc"))
        .args(["--auto-answer", "--pipe", &pipe, "--log"])
        .arg(dir.join("linphone.log"));
    let _linphone = Peer::spawn("linphone", dir, &mut cmd);
    let log = dir.join("linphone.log");
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("LinphoneRegistrationOk")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "linphone did not register over TLS: {}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let presser_pipe = pipe.clone();
    let presser = meanwhile(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if linphone_command(&presser_pipe, "call-status").contains("StreamsRunning") {
                std::thread::sleep(Duration::from_millis(1500));
                let reply = linphone_command(&presser_pipe, "dtmf #");
                assert!(reply.contains("Status: Ok"), "{reply}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("linphone never had the call up");
    });
    let cfg = config(&w, 3, &ca, "require");
    let out = call(
        &[&format!("sip:peer@127.0.0.1:{proxy_port};transport=tls")],
        Some(&cfg),
        &[],
    );
    presser.join().unwrap();
    // linphone's key protected its RFC 4733 `#`.
    out.assert_in(&w, "confirmed", Some("rfc4733"));
    let media = out.events("media_negotiated");
    assert_eq!(media[0]["srtp"], "AES_CM_128_HMAC_SHA1_80", "{out:#?}");
    // Our key protected what we sent: linphone counts what it unprotected when the call ends
    // (oRTP's statistics): our packets, each 12 + 160 bytes once its 10-byte tag is verified
    // and removed (182 on the wire).
    let start = Instant::now();
    let (packets, bytes) = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(stats) = received_rtp(&text) {
            break stats;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no RTP statistics from linphone: {}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(packets > 100, "{packets} packets");
    assert_eq!(
        bytes,
        packets * (12 + 160),
        "linphone did not unprotect our packets"
    );
    let _ = linphone_command(&pipe, "quit");
}

/// oRTP's end-of-call statistics in a linphone log: (packets, bytes) received.
fn received_rtp(log: &str) -> Option<(u64, u64)> {
    let block = &log[log.find("AUDIO SESSION'S RTP STATISTICS")?..];
    let mut lines = block.lines().skip_while(|l| !l.contains("-received "));
    let number =
        |line: Option<&str>| -> Option<u64> { line?.split_whitespace().rev().nth(1)?.parse().ok() };
    let packets = number(lines.next())?;
    let _duplicated = lines.next();
    let bytes = number(lines.next())?;
    Some((packets, bytes))
}
