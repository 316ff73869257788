//! `callverify call` against linphone-daemon 5.1 auto-answering on 127.0.0.1 (recipe in
//! ../shared/peers): `#` as RFC 4733 telephone-event, and `#` as SIP INFO
//! (`application/dtmf-relay`). linphone sends no audio without a sound card: only events.
//!
//! Ports: linphone SIP 25290+n, RTP 29100+20n..; our RTP 40600+20n.

mod common_peers;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common_peers::*;

struct Linphone {
    _peer: Peer,
    pipe: String,
    sip: u16,
}

fn linphone(work: &Work, n: u16, info: bool) -> Linphone {
    let sip = 25290 + n;
    let rtp = 29100 + 20 * n;
    let dir = work.path();
    // Without a writable linphone.db the core never starts and every INVITE gets 503.
    std::fs::create_dir_all(dir.join("home/.local/share/linphone")).unwrap();
    let (rfc2833, use_info) = if info { (0, 1) } else { (1, 0) };
    let rc = format!(
        "[sip]\nsip_port={sip}\nsip_tcp_port=-1\nsip_tls_port=-1\ndefault_proxy=-1\n\
         guess_hostname=0\nuse_ipv6=0\nuse_info={use_info}\nuse_rfc2833={rfc2833}\ninc_timeout=60\n\
         [rtp]\naudio_rtp_port={rtp}-{}\n\
         [net]\nfirewall_policy=1\nnat_address=127.0.0.1\nstun_server=\n\
         [sound]\nechocancellation=0\n\
         [audio_codec_0]\nmime=PCMU\nrate=8000\nchannels=1\nenabled=1\n\
         [audio_codec_1]\nmime=PCMA\nrate=8000\nchannels=1\nenabled=1\n",
        rtp + 10
    );
    std::fs::write(dir.join("linphonerc"), rc).unwrap();
    let pipe = format!("callverify_lpd_{}_{n}", std::process::id());
    let mut cmd = Command::new("linphone-daemon");
    cmd.env("HOME", dir.join("home"))
        .arg("--config")
        .arg(dir.join("linphonerc"))
        .args(["--auto-answer", "--pipe", &pipe, "--log"])
        .arg(dir.join("linphone.log"));
    let mut peer = Peer::spawn("linphone", dir, &mut cmd);
    peer.wait_udp(sip);
    let start = Instant::now();
    while !std::path::Path::new(&format!("/tmp/{pipe}")).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no linphone pipe"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Linphone {
        _peer: peer,
        pipe,
        sip,
    }
}

/// One linphone-daemon command (one per connection).
fn command(pipe: &str, cmd: &str) -> String {
    let Ok(mut s) = UnixStream::connect(format!("/tmp/{pipe}")) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.write_all(format!("{cmd}\n").as_bytes());
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
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

/// Presses `#` once the call's streams run (past our guard time after answer).
fn press_pound_when_up(pipe: String) -> std::thread::JoinHandle<()> {
    meanwhile(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if command(&pipe, "call-status").contains("StreamsRunning") {
                std::thread::sleep(Duration::from_millis(1500));
                let reply = command(&pipe, "dtmf #");
                assert!(reply.contains("Status: Ok"), "{reply}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("linphone never had the call up");
    })
}

#[test]
fn linphone_pound_rfc4733() {
    let w = Work::new();
    let lp = linphone(&w, 0, false);
    let presser = press_pound_when_up(lp.pipe.clone());
    let cfg = w.config(40600, "", "");
    let out = call(
        &[&format!("sip:peer@127.0.0.1:{}", lp.sip)],
        Some(&cfg),
        &[],
    );
    presser.join().unwrap();
    out.assert_in(&w, "confirmed", Some("rfc4733"));
    let _ = command(&lp.pipe, "quit");
}

#[test]
fn linphone_pound_sip_info() {
    let w = Work::new();
    let lp = linphone(&w, 1, true);
    let presser = press_pound_when_up(lp.pipe.clone());
    let cfg = w.config(40620, "sip_info_dtmf = true", "");
    let out = call(
        &[&format!("sip:peer@127.0.0.1:{}", lp.sip)],
        Some(&cfg),
        &[],
    );
    presser.join().unwrap();
    out.assert_in(&w, "confirmed", Some("sip_info"));
    // linphone answered without telephone-event (use_rfc2833=0).
    let media = out.events("media_negotiated");
    assert!(media[0].get("telephone_event").is_none(), "{out:#?}");
    let _ = command(&lp.pipe, "quit");
}
