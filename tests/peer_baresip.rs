//! `callverify call` against baresip 1.0 auto-answering on 127.0.0.1 (recipe in
//! ../shared/peers): `#` in-band from its audio file, and `#` as RFC 4733 (`sndcode`).
//!
//! Ports: baresip SIP 25240+10n (TLS takes the next port), ctrl_tcp 25450+n, RTP 28000+100n..; our RTP 40400+20n.

mod common_peers;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common_peers::*;

/// baresip's configuration directory: auto-answer, G.711 only, audio from `source`.
fn baresip(work: &Work, n: u16, source_keys: bool) -> (Peer, u16, u16) {
    let sip = 25240 + 10 * n;
    let ctrl = 25450 + n;
    let rtp = 28000 + 100 * n;
    let dir = work.path();
    // 30 s of audio (baresip hangs up when its file source ends): '#' at 1.5 s, or silence.
    let wav = dir.join("source.wav");
    let mut sox = Command::new("sox");
    sox.args(["-n", "-r", "8000", "-b", "16", "-c", "1"])
        .arg(&wav);
    if source_keys {
        sox.args([
            "synth", "0.4", "sine", "941", "sine", "1477", "channels", "1", "gain", "-n", "-6",
            "pad", "1.5", "28",
        ]);
    } else {
        sox.args(["trim", "0", "30"]);
    }
    assert!(sox.status().unwrap().success());
    let config = format!(
        "poll_method\t\tepoll\nsip_listen\t\t127.0.0.1:{sip}\nnet_interface\t\t127.0.0.1\n\
         call_local_timeout\t120\ncall_max_calls\t\t4\naudio_path\t\t.\n\
         audio_source\t\taufile,{}\naudio_player\t\taufile,{}\naudio_alert\t\taufile,{}\n\
         rtp_ports\t\t{rtp}-{}\nrtcp_mux\t\tno\njitter_buffer_delay\t5-10\n\
         module_path\t\t/usr/lib/baresip/modules\nmodule\t\t\tg711.so\nmodule\t\t\taufile.so\n\
         module_tmp\t\taccount.so\nmodule_app\t\tmenu.so\nmodule_app\t\tctrl_tcp.so\n\
         ctrl_tcp_listen\t\t127.0.0.1:{ctrl}\n",
        wav.display(),
        dir.join("rx.wav").display(),
        dir.join("rx_alert.wav").display(),
        rtp + 99
    );
    std::fs::write(dir.join("config"), config).unwrap();
    std::fs::write(
        dir.join("accounts"),
        format!("<sip:peer@127.0.0.1:{sip}>;regint=0;answermode=auto;audio_codecs=pcmu,pcma\n"),
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
    (peer, sip, ctrl)
}

/// baresip ctrl_tcp: one netstring-framed JSON command.
fn ctrl(port: u16, command: &str, params: &str) -> String {
    let body = serde_json::json!({"command": command, "params": params, "token": "t1"}).to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("baresip ctrl_tcp");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(format!("{}:{body},", body.len()).as_bytes())
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

fn config(work: &Work, n: u16) -> std::path::PathBuf {
    work.config(40400 + 20 * n, "", "")
}

#[test]
fn baresip_pound_inband() {
    let w = Work::new();
    let (_peer, sip, _) = baresip(&w, 0, true);
    let out = call(
        &[&format!("sip:peer@127.0.0.1:{sip}")],
        Some(&config(&w, 0)),
        &[],
    );
    out.assert("confirmed", Some("inband"));
}

#[test]
fn baresip_pound_rfc4733() {
    let w = Work::new();
    let (peer, sip, ctrl_port) = baresip(&w, 1, false);
    let log = peer.log.clone();
    let presser = meanwhile(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let text = std::fs::read_to_string(Path::new(&log)).unwrap_or_default();
            if text.contains("Call established") {
                // Past our guard time after answer, while the prompt plays.
                std::thread::sleep(Duration::from_millis(1500));
                let reply = ctrl(ctrl_port, "sndcode", "#");
                assert!(reply.contains("\"ok\":true"), "{reply}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("baresip never established the call");
    });
    let out = call(
        &[&format!("sip:peer@127.0.0.1:{sip}")],
        Some(&config(&w, 1)),
        &[],
    );
    presser.join().unwrap();
    out.assert("confirmed", Some("rfc4733"));
}
